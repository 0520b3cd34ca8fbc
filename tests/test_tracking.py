"""Tests of stages.tracking on synthetic detection sequences (no models, no video)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from stages.tracking import (
    OnlineTracker,
    RawTrack,
    TrackerSettings,
    bbx_xys_from_xyxy,
    finalize,
    moving_average,
    track_detections,
    tracks_from_ids,
)

FPS = 30.0
IMAGE_WH = (1280, 720)
EMPTY = (np.zeros((0, 4)), np.zeros(0))


def box(cx: float, cy: float, h: float, aspect: float = 0.4) -> np.ndarray:
    """(4,) xyxy box of a standing person: centre (cx, cy), height h, width aspect*h."""
    w = aspect * h
    return np.array([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h])


def frame(*boxes_scores: tuple[np.ndarray, float]) -> tuple[np.ndarray, np.ndarray]:
    """One sample's detections from (box, score) pairs."""
    if not boxes_scores:
        return EMPTY
    return (
        np.array([b for b, _ in boxes_scores], dtype=np.float64),
        np.array([s for _, s in boxes_scores], dtype=np.float64),
    )


def run_tracker(dets: list[tuple[np.ndarray, np.ndarray]], fps: float, **kw: object) -> list[np.ndarray]:
    tracker = OnlineTracker(TrackerSettings(**kw), fps)
    return [tracker.update(*d) for d in dets]


# ---------------------------------------------------------------------------------------------------------
# Settings and helpers
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"smooth_window": 4},
        {"smooth_window": 0},
        {"high_thresh": 1.5},
        {"low_thresh": -0.1},
        {"low_thresh": 0.7, "high_thresh": 0.5},
        {"lost_seconds": -1.0},
        {"max_people": 0},
        {"enlarge": 0.0},
        {"select": "biggest"},
        {"unknown_option": 1},
    ],
)
def test_settings_reject_bad_values(bad: dict) -> None:
    with pytest.raises(ValidationError):
        TrackerSettings(**bad)


def test_settings_defaults_valid() -> None:
    s = TrackerSettings(smooth_window=1, max_people=3)
    assert s.smooth_window == 1 and s.max_people == 3 and s.select == "all"


def test_bbx_xys_wide_and_tall() -> None:
    xyxy = np.array(
        [
            [0.0, 0.0, 200.0, 100.0],  # wide: h -> 200 / 0.75, s = 1.2 * 266.67 = 320
            [10.0, 20.0, 40.0, 220.0],  # tall: w -> 150 (< h), s = 1.2 * 200 = 240
            [0.0, 0.0, 75.0, 100.0],  # exactly 3:4: s = 1.2 * 100
        ]
    )
    out = bbx_xys_from_xyxy(xyxy)
    assert out.dtype == np.float32 and out.shape == (3, 3)
    np.testing.assert_allclose(out[0], [100.0, 50.0, 320.0], rtol=1e-6)
    np.testing.assert_allclose(out[1], [25.0, 120.0, 240.0], rtol=1e-6)
    np.testing.assert_allclose(out[2], [37.5, 50.0, 120.0], rtol=1e-6)
    np.testing.assert_allclose(
        bbx_xys_from_xyxy(xyxy, enlarge=1.0)[:, 2], [800.0 / 3.0, 200.0, 100.0], rtol=1e-6
    )
    # A square crop with aspect=1 is simply the longer side.
    np.testing.assert_allclose(bbx_xys_from_xyxy(xyxy, enlarge=1.0, aspect=1.0)[:, 2], [200.0, 200.0, 100.0])


def test_moving_average_ramp_and_step() -> None:
    ramp = np.arange(10, dtype=np.float32)[:, None]
    out = moving_average(ramp, 5)
    assert out.dtype == np.float32 and out.shape == (10, 1)
    np.testing.assert_allclose(out[2:-2, 0], ramp[2:-2, 0], atol=1e-6)  # linear interior unchanged
    np.testing.assert_allclose(out[:2, 0], [(0 + 0 + 0 + 1 + 2) / 5, (0 + 0 + 1 + 2 + 3) / 5], atol=1e-6)
    np.testing.assert_allclose(out[-2:, 0], [(6 + 7 + 8 + 9 + 9) / 5, (7 + 8 + 9 + 9 + 9) / 5], atol=1e-6)

    step = np.repeat(np.array([[0.0, 10.0], [1.0, 20.0]]), 5, axis=0)  # (10, 2)
    out = moving_average(step, 3)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out[:, 0], [0, 0, 0, 0, 1 / 3, 2 / 3, 1, 1, 1, 1])
    np.testing.assert_allclose(out[:, 1], [10, 10, 10, 10, 40 / 3, 50 / 3, 20, 20, 20, 20])

    one = np.array([[3.0, 4.0]])
    np.testing.assert_array_equal(moving_average(one, 5), one)
    np.testing.assert_array_equal(moving_average(step, 1), step)
    # Window longer than the signal: replicate padding still gives a finite, bounded result.
    short = moving_average(np.array([[0.0], [3.0]]), 7)
    np.testing.assert_allclose(short[:, 0], [(4 * 0 + 3 * 3) / 7, (3 * 0 + 4 * 3) / 7])
    with pytest.raises(ValueError):
        moving_average(step, 4)


# ---------------------------------------------------------------------------------------------------------
# Online tracker
# ---------------------------------------------------------------------------------------------------------


def crossing_scene(
    rng: np.random.Generator, occlude_b: bool
) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray, np.ndarray]:
    """Person A walks right, person B walks left; their boxes overlap for several frames mid-clip.

    Returns dets (with detections in shuffled order) and ground-truth centre x of A and B, (T,) each.
    """
    n = 90
    t = np.arange(n)
    xa = 100.0 + 12.0 * t
    xb = 1180.0 - 12.0 * t
    dets = []
    for i in range(n):
        items = [(box(xa[i], 380.0, 300.0) + rng.normal(0, 1.5, 4), 0.9)]
        if not (occlude_b and abs(xa[i] - xb[i]) < 60.0):  # A walks in front of B
            items.append((box(xb[i], 400.0, 260.0) + rng.normal(0, 1.5, 4), 0.85))
        if rng.random() < 0.5:
            items.reverse()  # the detector's output order must not matter
        dets.append(frame(*items))
    return dets, xa, xb


@pytest.mark.parametrize("occlude_b", [False, True])
def test_crossing_people_keep_identities(occlude_b: bool) -> None:
    rng = np.random.default_rng(7)
    dets, xa, xb = crossing_scene(rng, occlude_b)
    overlapping = [i for i in range(len(xa)) if abs(xa[i] - xb[i]) < 0.4 * 300.0]
    assert len(overlapping) >= 5  # the scene really has boxes overlapping for several frames

    settings = TrackerSettings()
    raw = track_detections(dets, FPS, settings)
    assert [r.track_id for r in raw] == [0, 1]
    tracks = finalize(raw, FPS, IMAGE_WH, len(dets), settings)
    assert len(tracks) == 2
    matched_gt = set()
    for tr in tracks:
        cx = 0.5 * (tr.xyxy[:, 0] + tr.xyxy[:, 2])
        errs = {name: np.abs(cx - gt[tr.sample_index]).max() for name, gt in (("a", xa), ("b", xb))}
        name = min(errs, key=errs.get)
        assert errs[name] < 10.0, errs  # an identity swap would give errors of hundreds of pixels
        matched_gt.add(name)
        np.testing.assert_array_equal(tr.sample_index, np.arange(len(dets)))
    assert matched_gt == {"a", "b"}
    if occlude_b:
        b = next(tr for tr in tracks if tr.track_id == 1)
        assert not b.observed.all()  # B's occluded frames were bridged by interpolation


def test_ids_start_at_zero_in_creation_order_and_empty_frames() -> None:
    tracker = OnlineTracker(TrackerSettings(), FPS)
    empty = tracker.update(np.zeros((0, 4)), np.zeros(0))
    assert empty.shape == (0,) and empty.dtype == np.int64
    ids = tracker.update(*frame((box(300, 300, 200), 0.9), (box(900, 300, 200), 0.8)))
    np.testing.assert_array_equal(ids, [0, 1])
    ids = tracker.update(
        *frame((box(600, 300, 200), 0.9), (box(901, 300, 200), 0.8), (box(301, 300, 200), 0.9))
    )
    np.testing.assert_array_equal(ids, [2, 1, 0])
    with pytest.raises(ValueError):
        tracker.update(np.zeros((2, 4)), np.zeros(3))


def test_strong_match_is_not_split_into_two_weak_ones() -> None:
    """Track 0 sits exactly on a detection; swapping partners would give two matches of IoU 0.25 each."""
    t0, t1 = np.array([100.0, 100, 200, 300]), np.array([160.0, 100, 260, 300])
    d1, d2 = t0.copy(), np.array([40.0, 100, 140, 300])  # IoU(t1, d1) = IoU(t0, d2) = 0.25, IoU(t1, d2) = 0
    out = run_tracker([frame((t0, 0.9), (t1, 0.9)), frame((d1, 0.9), (d2, 0.9))], FPS, match_iou=0.2)
    np.testing.assert_array_equal(out[0], [0, 1])
    np.testing.assert_array_equal(out[1], [0, 2])  # d2 starts a new track; track 1 is lost, not swapped


def test_lost_track_keeps_its_size_while_coasting() -> None:
    """Someone walking away (box shrinking 4 px/frame) is hidden for 25 frames and reappears unchanged: the
    coasting prediction must not keep shrinking the box to nothing."""
    shrinking = [frame((box(640, 360, 300 - 4.0 * i), 0.9)) for i in range(30)]
    out = run_tracker(shrinking + [EMPTY] * 25 + [frame((box(640, 360, 184), 0.9))], FPS)
    assert out[-1][0] == 0


@pytest.mark.parametrize("fps", [24.0, 30.0, 60.0])
def test_lost_window_scales_with_fps(fps: float) -> None:
    """A stationary person vanishes and comes back: 0.8 s is within lost_seconds=1, 1.3 s is not."""
    person = frame((box(640, 360, 300), 0.9))

    def ids_after_absence(seconds: float) -> tuple[int, int]:
        n_before, n_absent = int(fps), int(round(seconds * fps))
        out = run_tracker([person] * n_before + [EMPTY] * n_absent + [person], fps, lost_seconds=1.0)
        return int(out[0][0]), int(out[-1][0])

    first, back = ids_after_absence(0.8)  # 48 missing frames at 60 fps: more than 30, less than 60
    assert first == back == 0
    first, back = ids_after_absence(1.3)
    assert (first, back) == (0, 1)
    assert OnlineTracker(TrackerSettings(lost_seconds=1.0), fps).lost_frames == int(fps)


@pytest.mark.parametrize(("fps", "window"), [(30.0, 15), (24.0, 12), (60.0, 30)])
def test_lost_window_boundary_in_frames(fps: float, window: int) -> None:
    """Removed after more than round(lost_seconds*fps) unmatched frames, kept at exactly that many (0.5 s
    at every rate: ultralytics' track_buffer is fed samples, not rescaled by fps/30)."""
    person = frame((box(640, 360, 300), 0.9))
    kept = run_tracker([person] * 10 + [EMPTY] * window + [person], fps, lost_seconds=0.5)
    gone = run_tracker([person] * 10 + [EMPTY] * (window + 1) + [person], fps, lost_seconds=0.5)
    assert kept[-1][0] == 0 and gone[-1][0] == 1


def panning_scene() -> tuple[list[tuple[np.ndarray, np.ndarray]], list[np.ndarray]]:
    """A person standing still while the camera jerks 60 px sideways at sample 10 (640x360 frames cut from
    a textured panorama). In the image the person's 80 px wide box jumps 60 px: IoU 0.14 with the
    prediction, below match_iou=0.2, unless the prediction follows the camera."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)
    world = gaussian_filter(rng.random((360, 900)), 2.0)
    world = (255.0 * (world - world.min()) / np.ptp(world)).astype(np.uint8)
    offsets = [0] * 10 + [60] * 10
    frames = [np.repeat(world[:, o : o + 640, None], 3, axis=2) for o in offsets]
    dets = [frame((box(320.0 - o, 180.0, 200.0), 0.9)) for o in offsets]
    return dets, frames


def test_camera_motion_compensation_keeps_identity_through_a_pan() -> None:
    dets, frames = panning_scene()
    with_gmc = track_detections(dets, FPS, TrackerSettings(), frames=iter(frames))
    assert [(r.track_id, len(r.sample_index)) for r in with_gmc] == [(0, 20)]
    # Without frames (or with GMC off) the tracker alone loses the person at the jerk.
    for blind in (
        track_detections(dets, FPS, TrackerSettings()),
        track_detections(dets, FPS, TrackerSettings(gmc_method="none"), frames=frames),
    ):
        assert [(r.track_id, r.sample_index[0]) for r in blind] == [(0, 0), (1, 10)]


def test_raw_tracks_hold_the_detection_boxes() -> None:
    """Observed samples keep the detector's boxes and scores exactly, not the tracker's Kalman estimates."""
    rng = np.random.default_rng(5)
    boxes = np.array([box(300 + 6.0 * i, 360, 300) for i in range(30)]) + rng.normal(0, 3.0, (30, 4))
    scores = rng.uniform(0.6, 1.0, 30)
    dets = [(b[None], s[None]) for b, s in zip(boxes, scores, strict=True)]
    (raw,) = track_detections(dets, FPS, TrackerSettings())
    np.testing.assert_array_equal(raw.xyxy, boxes.astype(np.float32))
    np.testing.assert_array_equal(raw.score, scores.astype(np.float32))


def test_import_is_light() -> None:
    """The CLI imports this module: torch, cv2 and ultralytics load only when tracking runs. The file is
    loaded on its own (not through the ``stages`` package, whose other modules are not under test here)."""
    path = Path(__file__).resolve().parents[1] / "stages" / "tracking.py"
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('tracking_alone', {str(path)!r})\n"
        "mod = sys.modules['tracking_alone'] = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(mod)\n"
        "print(sorted({'torch', 'cv2', 'ultralytics', 'scipy.ndimage'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_low_score_detections_continue_but_do_not_start() -> None:
    settings = dict(high_thresh=0.5, low_thresh=0.1, new_track_thresh=0.6)
    dets = []
    for i in range(30):
        main = box(300 + 3 * i, 360, 300)
        score = 0.9 if i < 10 else 0.3  # person becomes hard to see (low confidence)
        items = [(main, score), (box(1000, 360, 250), 0.3)]  # a weak box nobody tracks yet
        if i == 15:
            items.append((box(700, 360, 250), 0.55))  # high but below new_track_thresh
        if i == 20:
            items.append((box(300 + 3 * i + 2, 360, 300), 0.05))  # below low_thresh: ignored
        dets.append(frame(*items))
    out = run_tracker(dets, FPS, **settings)
    assert all(ids[0] == 0 for ids in out)  # low-score boxes keep the existing track alive
    assert all(ids[1] == -1 for ids in out)  # ... but never start one
    assert out[15][2] == -1
    assert out[20][2] == -1

    # The second association is for tracked (not lost) tracks only: after one empty frame, a low-score box
    # cannot revive the lost track, while a high-score one can.
    base = [frame((box(300, 360, 300), 0.9))] * 5 + [EMPTY]
    weak = run_tracker(base + [frame((box(300, 360, 300), 0.3))], FPS, **settings)
    strong = run_tracker(base + [frame((box(300, 360, 300), 0.7))], FPS, **settings)
    assert weak[-1][0] == -1 and strong[-1][0] == 0


# ---------------------------------------------------------------------------------------------------------
# Post-processing
# ---------------------------------------------------------------------------------------------------------


def test_missed_detections_give_one_interpolated_track() -> None:
    n = 91
    truth = np.array([box(200 + 8.0 * i, 360 + 0.5 * i, 300) for i in range(n)])
    missing = {i for i in range(n) if i % 3 == 2} | set(range(40, 45))  # every 3rd + a 5-frame hole
    dets = [EMPTY if i in missing else frame((truth[i], 0.9)) for i in range(n)]
    settings = TrackerSettings(smooth_window=1)
    raw = track_detections(dets, FPS, settings)
    assert len(raw) == 1
    (tr,) = finalize(raw, FPS, IMAGE_WH, n, settings)
    np.testing.assert_array_equal(tr.sample_index, np.arange(n))
    expected_observed = np.array([i not in missing for i in range(n)])
    np.testing.assert_array_equal(tr.observed, expected_observed)
    assert np.all(tr.score[~expected_observed] == 0.0)
    np.testing.assert_allclose(tr.score[expected_observed], 0.9, rtol=1e-6)
    np.testing.assert_allclose(tr.xyxy, truth, atol=1e-3)  # linear motion: interpolation is exact
    assert tr.xyxy.dtype == np.float32 and tr.bbx_xys.dtype == np.float32

    # Same with noisy detections and default smoothing: still one track close to the truth.
    rng = np.random.default_rng(3)
    noisy = [d if i in missing else (d[0] + rng.normal(0, 2.0, (1, 4)), d[1]) for i, d in enumerate(dets)]
    raw = track_detections(noisy, FPS, TrackerSettings())
    tracks = finalize(raw, FPS, IMAGE_WH, n, TrackerSettings())
    assert len(tracks) == 1
    # Away from the ends (where replicate padding lags a moving box by design) smoothing stays on the truth.
    assert np.abs(tracks[0].xyxy - truth)[2:-2].max() < 5.0


def leave_and_return_scene(return_x: float, return_h: float = 300.0) -> list[tuple[np.ndarray, np.ndarray]]:
    """A person walks right to the image edge, is gone for 1.5 s (45 frames), and reappears walking back."""
    dets = [frame((box(1000 + 5.0 * i, 360, 300), 0.9)) for i in range(40)]  # last centre x = 1195
    dets += [EMPTY] * 45
    dets += [frame((box(return_x - 5.0 * i, 360, return_h), 0.9)) for i in range(40)]
    return dets


def test_person_leaving_frame_is_relinked() -> None:
    dets = leave_and_return_scene(return_x=1190.0)
    n = len(dets)
    settings = TrackerSettings()
    raw = track_detections(dets, FPS, settings)
    assert [r.track_id for r in raw] == [0, 1]  # 45 missing frames > 30-frame lost window: tracker splits
    tracks = finalize(raw, FPS, IMAGE_WH, n, settings)
    assert len(tracks) == 1
    tr = tracks[0]
    assert tr.track_id == 0
    expected = np.r_[np.arange(40), np.arange(85, 125)]
    np.testing.assert_array_equal(tr.sample_index, expected)  # 1.5 s gap > max_gap_seconds: left absent
    assert tr.observed.all()

    unlinked = finalize(raw, FPS, IMAGE_WH, n, TrackerSettings(relink_seconds=0.0))
    assert sorted(t.track_id for t in unlinked) == [0, 1]

    # Gap beyond relink_seconds: not linked either.
    short_relink = finalize(raw, FPS, IMAGE_WH, n, TrackerSettings(relink_seconds=1.0))
    assert len(short_relink) == 2


@pytest.mark.parametrize(
    ("return_x", "return_h"),
    [(150.0, 300.0), (1190.0, 150.0)],  # comes back at the other edge / someone half as tall
)
def test_incompatible_return_is_not_relinked(return_x: float, return_h: float) -> None:
    dets = leave_and_return_scene(return_x, return_h)
    settings = TrackerSettings()
    tracks = finalize(track_detections(dets, FPS, settings), FPS, IMAGE_WH, len(dets), settings)
    assert sorted(t.track_id for t in tracks) == [0, 1]


def test_relink_prefers_nearest_candidate_and_links_each_end_once() -> None:
    """Two pieces could continue track 0; the nearer one wins, the other stays separate."""

    def piece(tid: int, start: int, stop: int, cx: float) -> RawTrack:
        idx = np.arange(start, stop)
        return RawTrack(
            tid,
            idx,
            np.array([box(cx, 360, 300)] * len(idx), dtype=np.float32),
            np.full(len(idx), 0.9, dtype=np.float32),
        )

    # Gaps of 20 and 30 samples (> max_gap 15, so they stay absent); the farther piece starts first.
    raw = [piece(0, 0, 40, 600), piece(1, 60, 110, 800), piece(2, 70, 110, 640)]
    tracks = finalize(raw, FPS, IMAGE_WH, 110, TrackerSettings())
    by_id = {t.track_id: t for t in tracks}
    assert sorted(by_id) == [0, 1]
    np.testing.assert_array_equal(by_id[0].sample_index, np.r_[np.arange(40), np.arange(70, 110)])
    np.testing.assert_array_equal(by_id[1].sample_index, np.arange(60, 110))


def test_long_gap_is_absent_and_not_smoothed_across() -> None:
    """One user id, static at x=300 then at x=400 after a 20-frame gap (> 15 = 0.5 s at 30 fps)."""
    b1, b2 = box(300, 360, 300), box(400, 360, 300)
    dets = []
    for i in range(80):
        if i < 30:
            dets.append((b1[None], np.array([0.8]), np.array([7])))
        elif i >= 50:
            dets.append((b2[None], np.array([0.8]), np.array([7])))
        else:
            dets.append((np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64)))
    (tr,) = finalize(tracks_from_ids(dets), FPS, IMAGE_WH, 80, TrackerSettings(smooth_window=9))
    np.testing.assert_array_equal(tr.sample_index, np.r_[np.arange(30), np.arange(50, 80)])
    assert tr.observed.all()
    # Static runs stay exactly static up to the gap: no sample of one run leaks into the other.
    np.testing.assert_allclose(tr.xyxy[:30], np.tile(b1, (30, 1)), atol=1e-4)
    np.testing.assert_allclose(tr.xyxy[30:], np.tile(b2, (30, 1)), atol=1e-4)
    np.testing.assert_allclose(tr.bbx_xys[29], bbx_xys_from_xyxy(b1[None])[0], atol=1e-4)
    np.testing.assert_allclose(tr.bbx_xys[30], bbx_xys_from_xyxy(b2[None])[0], atol=1e-4)

    # A gap of exactly max_gap (15 frames) is filled and then smoothed as one run.
    gap = (np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64))
    dets2 = dets[:30] + [gap] * 15 + dets[50:]
    (tr2,) = finalize(tracks_from_ids(dets2), FPS, IMAGE_WH, 75, TrackerSettings(smooth_window=9))
    np.testing.assert_array_equal(tr2.sample_index, np.arange(75))
    assert tr2.observed.sum() == 60 and np.all(tr2.score[30:45] == 0.0)
    assert tr2.xyxy[29, 0] > b1[0] + 1.0  # smoothing now crosses the (filled) gap


def test_boxes_are_clamped_to_image() -> None:
    idx = np.arange(40)
    xyxy = np.array([[-50.0, -10.0, 100.0, 300.0], [1200.0, 500.0, 1400.0, 900.0]], dtype=np.float32)
    raw = [
        RawTrack(0, idx, np.tile(xyxy[0], (40, 1)), np.full(40, 0.9, np.float32)),
        RawTrack(1, idx, np.tile(xyxy[1], (40, 1)), np.full(40, 0.9, np.float32)),
    ]
    tracks = finalize(raw, FPS, IMAGE_WH, 40, TrackerSettings(relink_seconds=0.0))
    by_id = {t.track_id: t for t in tracks}
    np.testing.assert_allclose(by_id[0].xyxy[0], [0.0, 0.0, 100.0, 300.0])
    np.testing.assert_allclose(by_id[1].xyxy[0], [1200.0, 500.0, 1279.0, 719.0])
    np.testing.assert_allclose(by_id[1].bbx_xys[0], bbx_xys_from_xyxy(np.array([[1200, 500, 1279, 719]]))[0])


def test_min_seconds_drops_short_spurious_track() -> None:
    n = 90
    dets = []
    for i in range(n):
        items = [(box(300 + 2.0 * i, 360, 300), 0.9)]
        if 20 <= i < 30:
            items.append((box(1000, 300, 200), 0.8))  # 10-frame false positive
        dets.append(frame(*items))
    settings = TrackerSettings()
    raw = track_detections(dets, FPS, settings)
    assert len(raw) == 2
    tracks = finalize(raw, FPS, IMAGE_WH, n, settings)
    assert [t.track_id for t in tracks] == [0]
    kept = finalize(raw, FPS, IMAGE_WH, n, TrackerSettings(min_seconds=0.3))  # 9 frames: spurious one kept
    assert [t.track_id for t in kept] == [0, 1]


def test_min_observations_is_capped_for_short_clips() -> None:
    def raw_with(k: int, tid: int = 0) -> RawTrack:
        return RawTrack(tid, np.arange(k), np.tile(box(500, 360, 300), (k, 1)).astype(np.float32), np.ones(k))

    s = TrackerSettings(min_seconds=1.0)  # 30 frames, but the clip has only 20 samples -> need 10
    assert len(finalize([raw_with(10)], FPS, IMAGE_WH, 20, s)) == 1
    assert len(finalize([raw_with(9)], FPS, IMAGE_WH, 20, s)) == 0
    # Never fewer than 2 observations, even when min_seconds is 0.
    s0 = TrackerSettings(min_seconds=0.0)
    assert len(finalize([raw_with(1)], FPS, IMAGE_WH, 1, s0)) == 0
    assert len(finalize([raw_with(2)], FPS, IMAGE_WH, 2, s0)) == 1


def four_people() -> list[RawTrack]:
    idx = np.arange(40)
    heights = {0: 200.0, 1: 300.0, 2: 250.0, 3: 200.0}  # 3 ties with 0 in area
    xs = {0: 150.0, 1: 450.0, 2: 750.0, 3: 1050.0}
    return [
        RawTrack(
            tid, idx, np.tile(box(xs[tid], 360, h), (40, 1)).astype(np.float32), np.full(40, 0.9, np.float32)
        )
        for tid, h in heights.items()
    ]


def test_ordering_select_and_max_people() -> None:
    s = TrackerSettings(relink_seconds=0.0)
    tracks = finalize(four_people(), FPS, IMAGE_WH, 40, s)
    assert [t.track_id for t in tracks] == [1, 2, 0, 3]  # by area, tie -> lower track_id
    assert [t.person_id for t in tracks] == [0, 1, 2, 3]

    largest = finalize(
        four_people(), FPS, IMAGE_WH, 40, TrackerSettings(relink_seconds=0.0, select="largest")
    )
    assert [(t.person_id, t.track_id) for t in largest] == [(0, 1)]

    two = finalize(four_people(), FPS, IMAGE_WH, 40, TrackerSettings(relink_seconds=0.0, max_people=2))
    assert [(t.person_id, t.track_id) for t in two] == [(0, 1), (1, 2)]


def test_tracks_from_ids_groups_and_keeps_best_duplicate() -> None:
    a, b, c = box(200, 300, 200), box(600, 300, 200), box(610, 300, 200)
    dets = [
        (np.array([a, b]), np.array([0.9, 0.8]), np.array([5, 2])),
        (np.array([b, c, a]), np.array([0.4, 0.7, 0.95]), np.array([2, 2, 5])),  # id 2 twice: keep c (0.7)
        (np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64)),
        (np.array([a, b]), np.array([0.9, 0.6]), np.array([5, -1])),  # -1: unassigned
    ]
    raw = tracks_from_ids(dets)
    assert [r.track_id for r in raw] == [2, 5]
    r2, r5 = raw
    np.testing.assert_array_equal(r2.sample_index, [0, 1])
    np.testing.assert_allclose(r2.xyxy, np.array([b, c]))
    np.testing.assert_allclose(r2.score, [0.8, 0.7], rtol=1e-6)
    np.testing.assert_array_equal(r5.sample_index, [0, 1, 3])
    np.testing.assert_allclose(r5.score, [0.9, 0.95, 0.9], rtol=1e-6)
    assert r5.sample_index.dtype == np.int64 and r5.xyxy.dtype == np.float32 and r5.score.dtype == np.float32


def test_empty_inputs() -> None:
    s = TrackerSettings()
    assert track_detections([], FPS, s) == []
    assert track_detections([EMPTY] * 10, FPS, s) == []
    assert tracks_from_ids([]) == []
    assert finalize([], FPS, IMAGE_WH, 0, s) == []
    with pytest.raises(ValueError):
        OnlineTracker(s, 0.0)
