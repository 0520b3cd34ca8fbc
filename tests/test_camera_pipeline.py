"""The camera stage through the product: ``genmocap run CLIP --until ... --set camera.backend=opencv`` on
rendered shots with known cameras writes an accurate ``camera.npz``, and GEM receives that camera."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.store import ArtifactStore
from stages.camera import cam_angvel
from tests.media import ffmpeg_available
from tests.shared import fixture_dir
from tools.scenes import Person, make_room, render_shot, rotation_errors, write_video

PERCEPTION = fixture_dir("perception_parity")
GEM = fixture_dir("gem_parity")
pytestmark = [
    pytest.mark.skipif(not ffmpeg_available(), reason="ffmpeg/ffprobe not installed"),
    pytest.mark.skipif(not (GEM / "gem_smpl_reduced.ckpt").is_file(), reason=f"fixtures not found in {GEM}"),
]
REDUCED = [
    f"keypoints.weights={PERCEPTION / 'vitpose_reduced.pth'}",
    "keypoints.num_heads=4",
    f"features.weights={PERCEPTION / 'hmr2_reduced.ckpt'}",
    "features.num_heads=4",
    "features.decoder_heads=4",
    f"estimate.checkpoint={GEM / 'gem_smpl_reduced.ckpt'}",
    "estimate.num_heads=4",
    "estimate.steps=2",
    "run.orchestrator=local",
]
IDENTITY_6D = np.array([1.0, 0, 0, 0, 1, 0], np.float32)


def _shot_files(shot, root, name):
    video = write_video(root / f"{name}.mp4", shot.frames, shot.fps, crf=12)
    rows = [
        {"frame": f, **dict(zip(("x1", "y1", "x2", "y2"), map(float, b), strict=True)), "score": 0.9}
        for boxes in shot.boxes
        for f, b in enumerate(boxes)
        if b is not None
    ]
    dets = root / f"{name}.json"
    dets.write_text(json.dumps(rows))
    return video, dets


def _run(video, dets, out, until, extra=()):
    args = ["run", str(video), "--out", str(out), "--until", until, "--detections", str(dets)]
    for item in [*REDUCED, "camera.backend=opencv", *extra]:
        args += ["--set", item]
    assert main(args) == 0
    entry = json.loads((out / "report.json").read_text())["clips"][0]
    return out / entry["id"]


@pytest.fixture(scope="module")
def room():
    return make_room(res=512, seed=3)


def test_moving_shot_camera_npz_is_accurate_and_reaches_gem(room, tmp_path):
    shot = render_shot(
        "handheld", seconds=3.0, size=(320, 240), room=room, people=[Person(40, 60, 60, 140, vx=40.0)], seed=1
    )
    video, dets = _shot_files(shot, tmp_path, "handheld")
    clip_dir = _run(video, dets, tmp_path / "out", "estimate", [f"camera.focal_px={float(shot.K[0, 0])}"])
    cam = np.load(clip_dir / "camera.npz")
    assert str(cam["backend"]) == "opencv" and not bool(cam["is_static"]) and cam["valid"].all()
    assert cam["frame_index"].tolist() == list(range(90))
    err = rotation_errors(cam["R_w2c"], shot.R_w2c)
    assert err["frame_median_deg"] <= 0.02 and err["drift_max_deg"] <= 0.5, err
    doc = json.loads((clip_dir / "clip.json").read_text())
    assert doc["camera"]["K_source"] == "focal_px" and doc["camera"]["status"] == "ok"
    # GEM got this camera: its angular velocity (not the static identity) and its focal length
    store = ArtifactStore(tmp_path / "out" / ".genmocap" / "artifacts")
    est = store.load("estimate", doc["artifacts"]["estimate"])
    rows = est.arrays["person_0/sample_index"]
    angvel = est.arrays["person_0/cam_angvel"]
    np.testing.assert_allclose(angvel, cam_angvel(cam["R_w2c"])[rows], atol=1e-6)
    assert np.abs(angvel - IDENTITY_6D).max() > 1e-3
    assert est.arrays["person_0/K"][0, 0, 0] == pytest.approx(shot.K[0, 0], rel=1e-5)
    assert est.meta["camera"] == "opencv" and est.meta["camera_known_fraction"] == 1.0


def test_static_shot_is_reported_static(room, tmp_path):
    shot = render_shot(
        "static",
        seconds=2.0,
        size=(320, 240),
        room=room,
        people=[Person(60, 40, 90, 180, vx=50.0, vy=5.0)],
        noise=2.0,
        seed=4,
    )
    video, dets = _shot_files(shot, tmp_path, "static")
    clip_dir = _run(video, dets, tmp_path / "out", "camera", ["camera.backend=auto"])
    cam = np.load(clip_dir / "camera.npz")
    assert bool(cam["is_static"]) and str(cam["backend"]) == "static"
    assert np.abs(cam["R_w2c"] - np.eye(3)).max() == 0.0
