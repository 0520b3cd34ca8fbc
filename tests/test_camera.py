"""The camera stage: GEM's cam_angvel convention, intrinsics precedence, the opencv solve's accuracy on
synthetic shots with exactly known cameras (pure rotation, parallax, static, wrong focal), the run_camera
entry point on encoded video, the file backend, failure honesty, and the DROID adapter's conversions.

CI-sized: 320x240, 2-3 s shots. The 10 s figures are in ``benchmarks/camera_accuracy.py``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from scipy.spatial.transform import Rotation

from models.gem.rollout import IDENTITY_6D, world_rollout
from models.gem.rotations import matrix_to_axis_angle
from stages.camera import (
    Camera,
    CameraError,
    CameraSettings,
    FileCameraSettings,
    cam_angvel,
    camera_file_fingerprint,
    load_camera_file,
    resolve_intrinsics,
    run_camera,
)
from stages.camera_droid import (
    DroidJob,
    anchor_to_first,
    droid_available,
    droid_size,
    scaled_intrinsics,
    tum_to_w2c,
    w2c_to_tum,
)
from stages.camera_opencv import OpenCVSettings, RotationSolver, fit_rotation
from stages.estimate import PersonInput, span_inputs
from stages.track import Tracks
from stages.video import probe
from tests.media import ffmpeg_available
from tools.scenes import (
    Person,
    Shot,
    homography_shot,
    make_room,
    render_shot,
    rotation_errors,
    tracks_for_shot,
    write_video,
)

SIZE = (320, 240)
FPS = 30.0
needs_ffmpeg = pytest.mark.skipif(not ffmpeg_available(), reason="ffmpeg/ffprobe not installed")


def _rand_R(n: int, seed: int) -> np.ndarray:
    return Rotation.random(n, random_state=seed).as_matrix()


def _solve(shot: Shot, K: np.ndarray | None = None, **cfg) -> tuple:
    sol = RotationSolver(shot.K if K is None else K, shot.size, OpenCVSettings(**cfg))
    for i, fr in enumerate(shot.frames):
        boxes = [b[i] for b in shot.boxes if b[i] is not None]
        sol.push(fr, np.array(boxes, np.float32).reshape(-1, 4))
    return sol.finish()


def _tracks_for(shot: Shot, frame_index: np.ndarray | None = None, fps: float = FPS) -> Tracks:
    return tracks_for_shot(shot, frame_index, fps)


# --------------------------------------------------------------------------------------------------------
# Fixtures: rendered once per module


@pytest.fixture(scope="module")
def room():
    return make_room(res=512, seed=3)


@pytest.fixture(scope="module")
def handheld(room):
    """Pan 30 deg/s peak, tilt and roll 10 deg/s, hand jitter, one person crossing."""
    people = [Person(40, 60, 60, 140, vx=40.0)]
    return render_shot("handheld", seconds=3.0, size=SIZE, room=room, people=people, seed=1)


@pytest.fixture(scope="module")
def walk(room):
    """1.2 m/s walk with a 30 deg/s pan: strong parallax from the floor 1.6 m below."""
    people = [Person(200, 50, 55, 150, vx=-30.0)]
    return render_shot("walk", seconds=3.0, size=SIZE, room=room, people=people, seed=2)


@pytest.fixture(scope="module")
def static_shot(room):
    people = [Person(60, 40, 90, 180, vx=50.0, vy=5.0)]
    return render_shot("static", seconds=2.0, size=SIZE, room=room, people=people, noise=2.0, seed=4)


@pytest.fixture(scope="module")
def handheld_video(handheld, tmp_path_factory):
    if not ffmpeg_available():
        pytest.skip("ffmpeg/ffprobe not installed")
    return write_video(tmp_path_factory.mktemp("cam") / "handheld.mp4", handheld.frames, FPS, crf=12)


# --------------------------------------------------------------------------------------------------------
# GEM convention


def test_cam_angvel_matches_gem_definition():
    R = _rand_R(20, 0)
    av = cam_angvel(R)
    assert av.shape == (20, 6) and av.dtype == np.float32
    for t in range(19):
        rel = R[t + 1] @ R[t].T
        np.testing.assert_allclose(av[t], rel[:2].reshape(6), atol=1e-6)  # first two ROWS
    np.testing.assert_array_equal(av[-1], av[-2])  # last row repeated
    # a static camera is exactly the identity 6D; one sample too
    eye = np.broadcast_to(np.eye(3), (5, 3, 3))
    assert (cam_angvel(eye) == np.array(IDENTITY_6D, np.float32)).all()
    assert (cam_angvel(np.eye(3)[None]) == np.array(IDENTITY_6D, np.float32)).all()
    # slightly non-orthonormal input (0.1 % scale) is projected first: R00 / R11 matter at 1e-3 in GEM
    av2 = cam_angvel(R * 1.001)
    np.testing.assert_allclose(av2, av, atol=1e-6)
    # the world frame does not matter: right-multiplying every R_w2c by one rotation changes nothing
    np.testing.assert_allclose(cam_angvel(R @ _rand_R(1, 1)[0]), av, atol=1e-6)
    with pytest.raises(ValueError):
        cam_angvel(np.full((3, 3, 3), np.nan))


def test_cam_angvel_sign_through_gem_rollout():
    """A pure yaw pan past a body that faces one fixed world direction: GEM's world rollout must keep the
    body's world orientation constant. A transposed or reversed camera would make it turn twice as fast."""
    T = 90
    yaw = np.radians(np.linspace(0.0, 45.0, T))  # constant 15 deg/s pan
    level = np.diag([-1.0, -1.0, 1.0])  # camera (y down, z fwd) -> gravity-view (y up, z fwd, x left)
    Ry = Rotation.from_euler("y", yaw[:, None]).as_matrix()
    R_c2w = Ry @ level  # camera t in the world (= GV_0) frame
    R_w2c = np.transpose(R_c2w, (0, 2, 1))
    R_body = Rotation.from_euler("y", 30, degrees=True).as_matrix()  # fixed in the world
    R_gv = np.transpose(Ry, (0, 2, 1)) @ R_body  # body in GV_t (GV_t = world turned by the camera's yaw)
    R_c = np.transpose(R_c2w, (0, 2, 1)) @ R_body  # body in camera t

    def aa(R):
        return matrix_to_axis_angle(torch.from_numpy(R).float())[None]

    out = world_rollout(aa(R_gv), torch.zeros(1, T, 3), aa(R_c), torch.from_numpy(cam_angvel(R_w2c))[None])
    got = Rotation.from_rotvec(out["global_orient"][0].double().numpy()).as_matrix()
    err = np.degrees(Rotation.from_matrix(got @ R_body.T).magnitude())
    assert err[:-1].max() < 0.2, err.max()  # (the last sample sees the repeated last step)


# --------------------------------------------------------------------------------------------------------
# Intrinsics


def _info(tmp_path: Path, size=(320, 240), **meta) -> object:
    from tests.media import make_clip

    p = make_clip(tmp_path / "clip.mp4", seconds=0.4, size=size)
    if meta:
        q = tmp_path / "tagged.mov"
        args = ["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-i", str(p), "-c", "copy"]
        args += ["-movflags", "use_metadata_tags"]
        for k, v in meta.items():
            args += ["-metadata", f"{k}={v}"]
        subprocess.run([*args, str(q)], check=True, capture_output=True)
        p = q
    return probe(p)


@needs_ffmpeg
def test_intrinsics_precedence_and_source(tmp_path):
    info = _info(tmp_path)
    d = resolve_intrinsics(info, CameraSettings())
    assert d.source == "default" and d.K[0, 0] == 320 and d.K[1, 1] == 320
    assert (d.K[0, 2], d.K[1, 2]) == (160, 120)
    px = resolve_intrinsics(info, CameraSettings(focal_px=250))
    assert px.source == "focal_px" and px.K[0, 0] == 250
    mm = resolve_intrinsics(info, CameraSettings(focal_mm=26))
    assert mm.source == "focal_mm_35mm" and math.isclose(mm.K[0, 0], 26 * 400 / 43.27, rel_tol=1e-9)
    sens = resolve_intrinsics(info, CameraSettings(focal_mm=4.0, sensor_width_mm=6.4))
    assert sens.source == "focal_mm" and math.isclose(sens.K[0, 0], 4.0 * 320 / 6.4)
    fk = resolve_intrinsics(info, CameraSettings(), file_K=np.diag([300.0, 300.0, 1.0]))
    assert fk.source == "file"
    with pytest.raises(ValidationError):
        CameraSettings(focal_px=100, focal_mm=20)
    with pytest.raises(ValidationError):
        CameraSettings(sensor_width_mm=6.0)
    with pytest.raises(ValidationError):
        CameraSettings(backend="file")
    with pytest.raises(ValidationError):
        CameraSettings(opencv={"nope": 1})


@needs_ffmpeg
def test_intrinsics_from_container_metadata(tmp_path):
    info = _info(tmp_path, **{"com.apple.quicktime.camera.focal_length.35mm_equivalent": "26"})
    got = resolve_intrinsics(info, CameraSettings())
    assert got.source == "metadata", got
    assert math.isclose(got.K[0, 0], 26 * 400 / 43.27, rel_tol=1e-6)
    assert resolve_intrinsics(info, CameraSettings(use_metadata=False)).source == "default"
    assert resolve_intrinsics(info, CameraSettings(focal_px=111)).source == "focal_px"  # the user wins


def test_intrinsics_from_image_exif(tmp_path):
    from PIL import Image

    for i in range(3):
        exif = Image.Exif()
        exif.get_ifd(0x8769)[0xA405] = 28  # FocalLengthIn35mmFilm
        Image.new("RGB", (160, 120), (90, 90, 90)).save(tmp_path / f"f{i:03d}.jpg", exif=exif)
    got = resolve_intrinsics(probe(tmp_path), CameraSettings())
    assert got.source == "metadata" and math.isclose(got.K[0, 0], 28 * 200 / 43.27, rel_tol=1e-9)


# --------------------------------------------------------------------------------------------------------
# The opencv solve on synthetic shots


def test_fit_rotation_recovers_rotation_with_outliers():
    rng = np.random.default_rng(0)
    b1 = rng.normal(size=(300, 3)) * [0.5, 0.4, 0.0] + [0, 0, 1]
    b1 /= np.linalg.norm(b1, axis=1, keepdims=True)
    R = Rotation.from_rotvec([0.01, -0.02, 0.005]).as_matrix()
    b2 = b1 @ R.T + rng.normal(scale=1e-4, size=b1.shape)
    b2[:90] = rng.normal(size=(90, 3)) * 0.3 + [0, 0, 1]  # 30 % outliers
    b2 /= np.linalg.norm(b2, axis=1, keepdims=True)
    Rh, inl, _ = fit_rotation(b1, b2, 1e-3, 200, np.random.default_rng(1))
    assert np.degrees(Rotation.from_matrix(Rh @ R.T).magnitude()) < 0.005
    assert inl[90:].mean() > 0.95 and inl[:90].mean() < 0.1
    assert fit_rotation(b1[:2], b2[:2], 1e-3, 10, np.random.default_rng(1)) is None


def test_homography_warp_pure_rotation():
    """A flat textured image warped by K R^T K^-1: small pan/tilt/roll at up to 30 deg/s."""
    t = np.arange(45) / FPS
    eul = np.stack(
        [
            np.radians(8) * np.sin(2 * np.pi * t / 1.5),
            np.radians(3) * np.sin(2 * np.pi * t / 1.1),
            np.radians(2) * np.sin(2 * np.pi * t / 0.9),
        ],
        1,
    )
    R_c2w = Rotation.from_euler("YXZ", eul).as_matrix()
    shot = homography_shot(np.transpose(R_c2w, (0, 2, 1)), size=SIZE)
    e = rotation_errors(_solve(shot).R_w2c, shot.R_w2c)
    assert e["gt_max_rate_deg_s"] > 25
    assert e["frame_median_deg"] <= 0.02 and e["drift_max_deg"] <= 0.1, e


def test_rotation_only_accuracy(handheld):
    res = _solve(handheld)
    e = rotation_errors(res.R_w2c, handheld.R_w2c)
    print("handheld", e)
    assert e["gt_max_rate_deg_s"] >= 29.0  # the shot really moves at ~30 deg/s
    assert e["frame_median_deg"] <= 0.02, e
    assert e["drift_max_deg"] <= 0.5 * 3.0 / 10.0, e  # 0.5 deg per 10 s, pro rata over 3 s
    assert res.valid.all() and res.stats["essential_edges"] == 0
    assert (res.quality["masked_fraction"] > 0.05).all()  # the person was masked


def test_parallax_accuracy(walk):
    res = _solve(walk)
    e = rotation_errors(res.R_w2c, walk.R_w2c)
    print("walk", e)
    assert res.stats["essential_edges"] >= 0.8 * res.stats["keyframe_edges"]  # parallax was seen
    assert e["drift_max_deg"] <= 3.0 * 3.0 / 10.0, e  # 3 deg per 10 s, pro rata
    # without the keyframe correction the translation leaks into the rotation
    e_rot = rotation_errors(_solve(walk, parallax_px=1e9).R_w2c, walk.R_w2c)
    print("walk, rotation-only", e_rot)
    assert e_rot["drift_max_deg"] > 2 * e["drift_max_deg"]


def test_wrong_focal_error_grows(handheld):
    errs = {}
    for scale in (0.8, 1.0, 1.3):
        K = handheld.K.copy()
        K[0, 0] *= scale
        K[1, 1] *= scale
        errs[scale] = rotation_errors(_solve(handheld, K).R_w2c, handheld.R_w2c)
    print({k: (round(v["frame_median_deg"], 4), round(v["drift_max_deg"], 3)) for k, v in errs.items()})
    for scale in (0.8, 1.3):
        assert errs[scale]["drift_max_deg"] > 10 * errs[1.0]["drift_max_deg"]
        assert errs[scale]["frame_median_deg"] > 5 * errs[1.0]["frame_median_deg"]


def test_shot_cut_is_marked_not_invented(room, handheld):
    """An edit cut: the motion across it is not measurable (invalid, interpolated); both sides stay exact."""
    other = render_shot("pan", seconds=1.0, size=SIZE, room=make_room(res=512, seed=9), seed=2)
    frames = np.concatenate([handheld.frames[:45], other.frames])
    sol = RotationSolver(handheld.K, SIZE, OpenCVSettings())
    for f in frames:
        sol.push(f)
    res = sol.finish()
    assert np.nonzero(~res.valid)[0].tolist() == [44]  # the edge 44 -> 45 crosses the cut
    assert res.quality["inlier_ratio"][44] < 0.3
    assert rotation_errors(res.R_w2c[:45], handheld.R_w2c[:45])["drift_max_deg"] < 0.05
    assert rotation_errors(res.R_w2c[45:], other.R_w2c)["drift_max_deg"] < 0.05


def test_duplicated_samples_are_exact_identity(handheld):
    """24 -> 30 fps resampling repeats source frames: the repeated picture gives exactly no motion."""
    sol = RotationSolver(handheld.K, handheld.size, OpenCVSettings())
    order = [0, 1, 1, 2, 3, 4, 4, 5, 6, 7, 8, 8, 9]
    for k, f in enumerate(order):
        sol.push(handheld.frames[f], None, duplicate=k > 0 and order[k - 1] == f)
    res = sol.finish()
    assert np.array_equal(res.R_w2c[2], res.R_w2c[1]) and np.array_equal(res.R_w2c[6], res.R_w2c[5])
    idx = np.array(order)
    e = rotation_errors(res.R_w2c[np.r_[0, 1, 3, 4, 5, 7, 8, 9, 10, 12]], handheld.R_w2c[np.unique(idx)])
    assert e["drift_max_deg"] < 0.02, e


# --------------------------------------------------------------------------------------------------------
# run_camera


@needs_ffmpeg
def test_run_camera_on_video_and_artifact_round_trip(handheld, handheld_video):
    info = probe(handheld_video)
    tracks = _tracks_for(handheld)
    st = CameraSettings(backend="opencv", focal_px=float(handheld.K[0, 0]))
    calls = []
    cam = run_camera(info, tracks, st, fps=FPS, chunk_frames=16, progress=lambda d, n: calls.append((d, n)))
    assert calls[-1] == (90, 90)
    assert cam.solved and not cam.is_static and cam.backend == "opencv" and cam.K_source == "focal_px"
    np.testing.assert_array_equal(cam.frame_index, tracks.sample_frame_index)
    assert cam.R_w2c.shape == (90, 3, 3) and cam.R_w2c.dtype == np.float32
    e = rotation_errors(cam.R_w2c, handheld.R_w2c)
    assert e["frame_median_deg"] <= 0.02 and e["drift_max_deg"] <= 0.15, e  # through H.264
    # the camera artifact round-trips and is JSON-safe
    meta, arrays = cam.to_arrays()
    json.dumps(meta)
    assert {"R_w2c", "K", "frame_index", "time_s", "fps", "backend", "is_static", "valid"} <= set(arrays)
    back = Camera.from_arrays(json.loads(json.dumps(meta)), arrays)
    np.testing.assert_array_equal(back.cam_angvel(), cam.cam_angvel())
    assert back.summary() == cam.summary()
    s = cam.summary()
    assert s["K_source"] == "focal_px" and s["valid_fraction"] == 1.0 and s["status"] == "ok"
    # what GEM gets: a non-identity camera, marked known
    av = cam.cam_angvel()
    assert np.abs(av - np.array(IDENTITY_6D)).max() > 1e-3
    p = PersonInput(0, np.arange(10, 60), np.tile([160.0, 120.0, 150.0], (50, 1)).astype(np.float32))
    K = np.repeat(cam.K[None], 90, axis=0)
    s0, _, inp = span_inputs(p, cam.image_wh, K, av, cam.camera_known)
    np.testing.assert_allclose(inp["cam_angvel"].numpy(), av[10:60])
    assert inp["has_cam_mask"].all() and float(inp["K_fullimg"][0, 0, 0]) == pytest.approx(cam.K[0, 0])


@needs_ffmpeg
def test_run_camera_resampled_timeline(handheld, handheld_video):
    """The camera lives on exactly the track stage's samples (here 30 -> 20 fps)."""
    info = probe(handheld_video)
    from stages.video import iter_chunks

    fi = np.concatenate([c.frame_index for c in iter_chunks(info, chunk_frames=32, fps=20.0)])
    cam = run_camera(
        info,
        _tracks_for(handheld, fi, fps=20.0),
        CameraSettings(focal_px=float(handheld.K[0, 0])),
        fps=20.0,
        chunk_frames=7,
    )
    np.testing.assert_array_equal(cam.frame_index, fi)
    assert cam.fps == 20.0 and cam.backend == "opencv"
    e = rotation_errors(cam.R_w2c, handheld.R_w2c[fi], fps=20.0)
    assert e["drift_max_deg"] <= 0.2, e
    # a decode that does not match the tracks is an error, not a silent misalignment
    with pytest.raises(CameraError):
        run_camera(
            info, _tracks_for(handheld, np.arange(len(fi))), CameraSettings(), fps=20.0, chunk_frames=32
        )


@needs_ffmpeg
def test_static_shot_is_reported_static(static_shot, tmp_path):
    res = _solve(static_shot)
    assert rotation_errors(res.R_w2c, static_shot.R_w2c)["max_rotation_deg"] < 0.05
    video = write_video(tmp_path / "static.mp4", static_shot.frames, FPS, crf=18)
    cam = run_camera(probe(video), _tracks_for(static_shot), CameraSettings(), fps=FPS, chunk_frames=32)
    assert cam.solved and cam.is_static and cam.backend == "static" and cam.requested == "auto"
    assert (cam.R_w2c == np.eye(3, dtype=np.float32)).all()  # no rotation at all, exactly
    assert cam.stats["static_detected_by"] == "opencv" and cam.stats["measured_max_rotation_deg"] < 0.05
    assert cam.has_cam_mask.all() and cam.camera_known
    unknown = run_camera(
        probe(video),
        _tracks_for(static_shot),
        CameraSettings(static_mode="unknown"),
        fps=FPS,
        chunk_frames=32,
    )
    assert unknown.is_static and not unknown.has_cam_mask.any() and not unknown.camera_known


@needs_ffmpeg
def test_moving_shot_is_never_static_and_auto_uses_opencv(handheld, handheld_video):
    cam = run_camera(probe(handheld_video), _tracks_for(handheld), CameraSettings(), fps=FPS, chunk_frames=32)
    assert cam.backend == "opencv" and cam.requested == "auto" and not cam.is_static
    assert cam.K_source == "default"  # GEM's default focal (wrong for this shot, but moving is moving)
    assert cam.summary()["max_abs_yaw_deg"] > 5


@needs_ffmpeg
def test_textureless_shot_fails_honestly(tmp_path):
    """Nothing to track: the camera is unknown (not static), GEM is told so, the reason is given."""
    frames = np.full((40, 120, 160, 3), 128, np.uint8)
    shot = Shot(frames, np.broadcast_to(np.eye(3), (40, 3, 3)), np.zeros((40, 3)), np.eye(3), FPS, [])
    video = write_video(tmp_path / "flat.mp4", frames, FPS)
    cam = run_camera(probe(video), _tracks_for(shot), CameraSettings(), fps=FPS, chunk_frames=32)
    assert cam.status == "failed" and not cam.solved and not cam.is_static
    assert "unknown" in cam.reason and not cam.has_cam_mask.any() and not cam.camera_known
    assert (cam.cam_angvel() == np.array(IDENTITY_6D, np.float32)).all()
    assert cam.summary()["status"] == "failed"


@needs_ffmpeg
def test_static_backend_needs_no_decode(tmp_path, handheld):
    info = probe(write_video(tmp_path / "x.mp4", handheld.frames[:5], FPS))
    cam = run_camera(info, _tracks_for(handheld), CameraSettings(backend="static"), fps=FPS, chunk_frames=32)
    assert cam.is_static and cam.backend == "static" and cam.valid.all() and len(cam.valid) == 90


# --------------------------------------------------------------------------------------------------------
# The file backend


@needs_ffmpeg
def test_file_backend_formats_and_timeline(handheld, handheld_video, tmp_path):
    info = probe(handheld_video)
    R = handheld.R_w2c
    tracks = _tracks_for(handheld, np.arange(0, 90, 2), fps=15.0)  # every other source frame
    K = handheld.K

    def run(path, **kw):
        st = CameraSettings(backend="file", file=FileCameraSettings(path=str(path), **kw))
        return run_camera(info, tracks, st, fps=15.0, chunk_frames=32)

    def check(cam, tol=1e-5):
        assert cam.backend == "file" and cam.solved and cam.valid.all()
        e = rotation_errors(cam.R_w2c, R[::2])
        assert e["drift_max_deg"] < tol, e

    np.savez(tmp_path / "a.npz", R_w2c=R, K=K)  # one row per source frame
    cam = run(tmp_path / "a.npz")
    check(cam)
    fst = CameraSettings(backend="file", file=FileCameraSettings(path=str(tmp_path / "a.npz")))
    assert (
        len(camera_file_fingerprint(fst, info)) == 64
        and camera_file_fingerprint(CameraSettings(), info) is None
    )
    assert cam.K_source == "file" and cam.K[0, 0] == pytest.approx(K[0, 0])
    # c2w quaternions, scalar first, only every 3rd frame given (slerp in between), OpenGL camera axes
    gl = np.diag([1.0, -1.0, -1.0])
    R_gl = gl @ R
    q = Rotation.from_matrix(np.transpose(R_gl, (0, 2, 1))).as_quat()[:, [3, 0, 1, 2]]
    given = [*range(0, 90, 3), 89]
    (tmp_path / "b.json").write_text(json.dumps({"q_c2w": q[given].tolist(), "frame_index": given}))
    check(run(tmp_path / "b.json", axes="opengl", quat_order="wxyz"), tol=0.25)  # slerp over jitter
    # TUM text (camera-to-world, time in seconds), found in a folder by the clip's stem
    folder = tmp_path / "cams"
    folder.mkdir()
    rows = w2c_to_tum(R, np.zeros((90, 3)))
    np.savetxt(
        folder / "handheld.txt", np.column_stack([np.arange(90) / FPS, rows]), header="t tx ty tz qx qy qz qw"
    )
    check(run(folder))
    # frames outside the given range are not invented
    np.savez(tmp_path / "c.npz", R_w2c=R[:40], frame_index=np.arange(40))
    cam = run(tmp_path / "c.npz")
    assert cam.valid[:19].all() and not cam.valid[20:].any()
    # bad inputs are errors that name the problem
    np.savez(tmp_path / "bad.npz", R_w2c=R[:7])
    with pytest.raises(CameraError, match="rows match neither"):
        run(tmp_path / "bad.npz")
    np.savez(tmp_path / "bad2.npz", R_w2c=R * 2)
    with pytest.raises(CameraError, match="not rotations"):
        run(tmp_path / "bad2.npz")
    np.savez(tmp_path / "d.npz", R_w2c=R, R_c2w=R)
    with pytest.raises(CameraError, match="exactly one"):
        load_camera_file(tmp_path / "d.npz", FileCameraSettings())


# --------------------------------------------------------------------------------------------------------
# DROID adapter


def test_droid_tum_conversion_round_trip():
    # deliberately asymmetric: 30 deg about x then 20 deg about y catches transposes and quaternion order
    R_c2w = Rotation.from_euler("xy", [30, 20], degrees=True).as_matrix()
    C = np.array([1.0, -2.0, 0.5])
    q = w2c_to_tum(R_c2w.T[None], (-R_c2w.T @ C)[None])[0, 3:]  # scalar-last, as TUM stores it
    assert q[3] >= 0 and np.isclose(np.linalg.norm(q), 1.0)
    np.testing.assert_allclose(q, Rotation.from_matrix(R_c2w).as_quat(canonical=True), atol=1e-12)
    traj = np.concatenate([C, q])[None]
    R_w2c, t_w2c = tum_to_w2c(traj)
    np.testing.assert_allclose(R_w2c[0], R_c2w.T, atol=1e-12)
    np.testing.assert_allclose(t_w2c[0], -R_c2w.T @ C, atol=1e-12)
    np.testing.assert_allclose(R_w2c[0] @ C + t_w2c[0], 0, atol=1e-12)  # the centre maps to the origin
    # random trajectories round-trip, and anchoring gives R_w2c[0] = I with relative motion unchanged
    R = _rand_R(12, 5)
    t = np.random.default_rng(0).normal(size=(12, 3))
    R2, t2 = tum_to_w2c(w2c_to_tum(R, t))
    np.testing.assert_allclose(R2, R, atol=1e-10)
    np.testing.assert_allclose(t2, t, atol=1e-10)
    Ra, ta = anchor_to_first(R, t)
    assert np.array_equal(Ra[0], np.eye(3)) and np.allclose(ta[0], 0)
    np.testing.assert_allclose(cam_angvel(Ra), cam_angvel(R), atol=1e-6)
    # a point in the new world maps to the same camera coordinates as before
    X = np.array([0.3, -0.1, 2.0])
    Xw_old = R[0].T @ (X - t[0])  # the point that camera 0 sees at X
    np.testing.assert_allclose(Ra[5] @ X + ta[5], R[5] @ Xw_old + t[5], atol=1e-10)
    with pytest.raises(ValueError):
        tum_to_w2c(np.zeros((3, 6)))
    with pytest.raises(ValueError):
        anchor_to_first(np.full((2, 3, 3), np.nan))


def test_droid_sizes_and_intrinsics():
    w1, h1, wc, hc = droid_size(1920, 1080)
    assert abs(w1 * h1 - 384 * 512) < 0.01 * 384 * 512 and wc % 8 == 0 and hc % 8 == 0
    assert abs(w1 / h1 - 1920 / 1080) < 0.01
    K = np.array([[1500.0, 0, 960], [0, 1500, 540], [0, 0, 1]])
    fx, fy, cx, cy = scaled_intrinsics(K, 1920, 1080, w1, h1)
    assert fx == pytest.approx(1500 * w1 / 1920) and cy == pytest.approx(540 * h1 / 1080)


def test_droid_job_frames_masked_and_expanded(tmp_path, handheld):
    job = DroidJob(
        handheld.K,
        handheld.size,
        weights=tmp_path / "none.pth",
        repo=None,
        python=None,
        workdir=str(tmp_path),
    )
    for k, f in enumerate([0, 1, 1, 2]):
        job.add(handheld.frames[f], np.array([[0, 0, 100, 100]], np.float32), duplicate=k == 2)
    import cv2

    assert job.n == 3 and job.sample_to_frame == [0, 1, 1, 2]
    img = cv2.imread(str(job.dir / "frames" / "000000.jpg"))
    assert img.shape[:2] == (job.hc, job.wc) and img[: job.hc // 4, : job.wc // 4].max() < 30  # blacked out
    np.testing.assert_array_equal(job.expand(np.arange(3)), [0, 1, 1, 2])
    shutil.rmtree(job.dir)


def test_droid_unavailable_falls_back_to_opencv(handheld, handheld_video, tmp_path):
    ok, why = droid_available(None, None, tmp_path / "missing.pth")
    assert not ok and "weights" in why
    st = CameraSettings(backend="droid", focal_px=float(handheld.K[0, 0]))
    cam = run_camera(
        probe(handheld_video),
        _tracks_for(handheld),
        st,
        fps=FPS,
        chunk_frames=32,
        droid_weights=tmp_path / "missing.pth",
    )
    assert cam.backend == "opencv" and cam.requested == "droid" and cam.solved
    assert any("droid unavailable" in w and "opencv" in w for w in cam.warnings)
    st = CameraSettings(backend="droid", fallback=False)
    cam = run_camera(probe(handheld_video), _tracks_for(handheld), st, fps=FPS, chunk_frames=32)
    assert cam.status == "failed" and "droid" in cam.reason


_FAKE_DROID = """
import numpy as np, torch
from pathlib import Path

class _Counter:
    value = 0

class _Video:
    def __init__(self):
        self.counter = _Counter()
        self.tstamp = torch.zeros(4096)

class Droid:
    def __init__(self, args):
        self.args, self.video = args, _Video()
        assert Path(args.weights).is_file() and args.image_size[0] % 8 == 0 and args.image_size[1] % 8 == 0

    def track(self, t, image, intrinsics=None):
        assert image.shape[:2] == (1, 3) and image.dtype == torch.uint8 and intrinsics.shape == (4,)
        if t % 3 == 0:  # a keyframe every third frame
            self.video.tstamp[self.video.counter.value] = t
            self.video.counter.value += 1

    def terminate(self, stream):
        n = sum(1 for _ in stream)
        traj = np.load(Path(__file__).with_name("traj.npy"))
        assert len(traj) == n
        return traj
"""


def test_droid_worker_protocol_with_a_stand_in(walk, tmp_path):
    """The real worker script and adapter, in a subprocess, with a stand-in ``droid`` module that returns
    known camera-to-world TUM rows (arbitrary scale): the stage must recover the true rotations."""
    repo = tmp_path / "DROID-SLAM"
    (repo / "droid_slam").mkdir(parents=True)
    (repo / "droid_slam" / "droid.py").write_text(_FAKE_DROID)
    t_w2c = -np.einsum("nij,nj->ni", walk.R_w2c, walk.C) * 0.37  # any scale
    np.save(repo / "droid_slam" / "traj.npy", w2c_to_tum(walk.R_w2c, t_w2c))
    weights = tmp_path / "droid.pth"
    weights.write_bytes(b"stand-in")
    job = DroidJob(
        walk.K, walk.size, weights=weights, repo=str(repo), python=sys.executable, workdir=str(tmp_path)
    )
    for fr in walk.frames:
        job.add(fr, np.zeros((0, 4)))
    res = job.run()
    assert res.reason is None and res.keyframes == 30
    assert not job.dir.exists()  # scratch removed
    e = rotation_errors(job.expand(res.R_w2c), walk.R_w2c)
    assert e["drift_max_deg"] < 1e-4, e
    assert np.array_equal(res.R_w2c[0], np.eye(3)) and np.allclose(res.t_w2c[0], 0)
    # a clip on which DROID does not initialise is reported, not crashed on
    np.save(repo / "droid_slam" / "traj.npy", w2c_to_tum(walk.R_w2c[:6], t_w2c[:6]))
    job = DroidJob(
        walk.K, walk.size, weights=weights, repo=str(repo), python=sys.executable, workdir=str(tmp_path)
    )
    for fr in walk.frames[:6]:
        job.add(fr, np.zeros((0, 4)))
    res = job.run()
    assert res.R_w2c is None and "did not initialise" in res.reason


def _droid_env() -> tuple[str | None, Path | None, str]:
    repo = os.environ.get("GENMOCAP_DROID_REPO")
    weights = os.environ.get("GENMOCAP_DROID_WEIGHTS")
    if not torch.cuda.is_available():
        return None, None, "no CUDA GPU"
    ok, why = droid_available(
        os.environ.get("GENMOCAP_DROID_PYTHON"), repo, Path(weights) if weights else None
    )
    return (repo, Path(weights), "") if ok else (None, None, why)


def test_droid_real_run(walk, tmp_path):
    """The real DROID-SLAM on the parallax shot (needs a GPU, a DROID-SLAM build and droid.pth:
    GENMOCAP_DROID_REPO, GENMOCAP_DROID_WEIGHTS, optionally GENMOCAP_DROID_PYTHON)."""
    repo, weights, why = _droid_env()
    if repo is None:
        print(f"DROID test skipped: {why}", file=sys.stderr)
        pytest.skip(f"DROID-SLAM not runnable here: {why}")
    job = DroidJob(
        walk.K,
        walk.size,
        weights=weights,
        repo=repo,
        python=os.environ.get("GENMOCAP_DROID_PYTHON"),
        workdir=str(tmp_path),
        filter_thresh=1.0,
    )
    for i, fr in enumerate(walk.frames):
        job.add(fr, np.array([b[i] for b in walk.boxes if b[i] is not None]).reshape(-1, 4))
    res = job.run()
    assert res.reason is None, res.reason
    e = rotation_errors(job.expand(res.R_w2c), walk.R_w2c)
    print("droid walk", e)
    assert e["drift_max_deg"] < 3.0, e
