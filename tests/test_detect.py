"""The YOLO path with a tiny random-weight model built by ultralytics from its yaml: the real batched code."""

from __future__ import annotations

import numpy as np
import pytest

from stages.detect import DetectorSettings, PersonDetector
from stages.track import TrackSettings, run_track
from stages.video import frame_timestamps, iter_chunks, probe, resample_plan
from tests.media import default_people, ffmpeg_available, make_clip

pytestmark = pytest.mark.skipif(not ffmpeg_available(), reason="ffmpeg/ffprobe not installed")


def _detector(batch: int, conf: float = 0.0) -> PersonDetector:
    # random weights give scores ~1e-4: conf 0 lets boxes through so the whole path has data to carry
    return PersonDetector(
        "yolov8n.yaml", "cpu", DetectorSettings(conf=conf, imgsz=160, batch=batch, max_det=20)
    )


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_clip(
        tmp_path_factory.mktemp("det") / "c24.mp4",
        seconds=1.0,
        fps=24,
        size=(192, 144),
        people=default_people((192, 144)),
    )


def test_batched_detection_equals_frame_by_frame(clip):
    info = probe(clip)
    frames = next(iter_chunks(info, chunk_frames=7)).frames
    one = _detector(batch=1)(frames)
    many = _detector(batch=4)(frames)  # 7 frames: batches of 4 and 3
    assert len(one) == len(many) == 7
    for (b1, s1), (b4, s4) in zip(one, many, strict=True):
        assert b1.shape == b4.shape and b1.shape[1] == 4 and s1.shape == (b1.shape[0],)
        assert b1.dtype == np.float32
        np.testing.assert_allclose(b1, b4, atol=1e-2)
        np.testing.assert_allclose(s1, s4, atol=1e-6)
        assert (b1[:, 0] >= 0).all() and (b1[:, 2] <= 192 + 1e-3).all() and (b1[:, 3] <= 144 + 1e-3).all()


def test_conf_threshold_filters(clip):
    frames = next(iter_chunks(probe(clip), chunk_frames=2)).frames
    assert all(len(s) == 0 for _, s in _detector(batch=2, conf=0.5)(frames))


class CountingDetector:
    """Wraps the real detector to count the frames it is given."""

    def __init__(self, det: PersonDetector):
        self.det, self.frames = det, 0

    def __call__(self, frames):
        self.frames += len(frames)
        return self.det(frames)


def test_track_stage_with_detector_runs_each_source_frame_once(clip):
    info = probe(clip)
    det = CountingDetector(_detector(batch=8))
    settings = TrackSettings(high_thresh=0.0, low_thresh=0.0, new_track_thresh=0.0, min_seconds=0.1)
    tracks = run_track(info, settings, fps=30.0, chunk_frames=8, detector=det, total=None)
    # 24 fps -> 30 fps repeats source frames; each source frame is still detected only once
    assert len(tracks.sample_frame_index) > info.frame_count
    expected = resample_plan(frame_timestamps(clip), 30.0)
    assert np.array_equal(tracks.sample_frame_index, expected)
    assert det.frames == len(np.unique(expected))
    assert tracks.source == "detector" and tracks.fps == 30.0 and tracks.people
    for p in tracks.people:
        assert p.xyxy.shape == (len(p.sample_index), 4) and p.bbx_xys.shape == (len(p.sample_index), 3)
        assert (np.diff(p.sample_index) > 0).all()
