"""Keypoints, features, estimate and postprocess end to end on a synthetic two-person clip, with the reduced
random-weight checkpoints of the shared fixtures (ViTPose, HMR2, GEM) and their synthetic body model."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from models.crops import cut_crops
from models.gem.rotations import axis_angle_to_matrix, matrix_to_axis_angle
from models.heatmap import decode_heatmaps
from models.hmr2 import load_hmr2
from models.vitpose import heatmaps_flip_test, load_vitpose
from pipeline.cli import main
from pipeline.config import load_config
from pipeline.discover import discover
from pipeline.runner import RunContext, run_batch
from stages.postprocess import place_in_clip_frame
from stages.video import iter_chunks, probe
from tests.media import default_people, detection_rows, ffmpeg_available, make_clip
from tests.shared import fixture_dir

PERCEPTION = fixture_dir("perception_parity")
GEM = fixture_dir("gem_parity")
VITPOSE = PERCEPTION / "vitpose_reduced.pth"
HMR2 = PERCEPTION / "hmr2_reduced.ckpt"
GEM_CKPT = GEM / "gem_smpl_reduced.ckpt"
BODY = GEM / "body_model" / "SMPLX_NEUTRAL.npz"

pytestmark = [
    pytest.mark.skipif(not ffmpeg_available(), reason="ffmpeg/ffprobe not installed"),
    pytest.mark.skipif(
        not (VITPOSE.is_file() and HMR2.is_file() and GEM_CKPT.is_file()),
        reason=f"reduced checkpoints not found under {PERCEPTION} and {GEM}",
    ),
]

SIZE = (320, 240)
REDUCED = [
    f"keypoints.weights={VITPOSE}",
    "keypoints.num_heads=4",
    "keypoints.batch=7",  # not a divisor of the items per chunk: batches straddle people
    f"features.weights={HMR2}",
    "features.num_heads=4",
    "features.decoder_heads=4",
    f"estimate.checkpoint={GEM_CKPT}",
    "estimate.num_heads=4",
    "estimate.steps=3",
    "run.orchestrator=local",
]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    root = tmp_path_factory.mktemp("model_stages")
    people = default_people(SIZE)
    make_clip(root / "two.mp4", seconds=2.0, fps=30, size=SIZE, people=people)
    dets = root / "dets.json"
    dets.write_text(json.dumps({"two": detection_rows(people, np.arange(60) / 30.0)}))
    return root / "two.mp4", dets


def _run(
    clip, out: Path, until: str, extra: list[str] = (), body: Path | None = BODY
) -> tuple[dict, RunContext]:
    video, dets = clip
    cfg = load_config(None, [*REDUCED, f"run.until={until}", *extra])
    ctx = RunContext.create(cfg, out, detections=dets, body_model=body)
    report = run_batch(discover([video]), ctx)
    entry = report["clips"][0]
    assert entry["status"] == "ok", entry["error"]
    return json.loads((out / entry["id"] / "clip.json").read_text()), ctx


def _artifact(ctx: RunContext, doc: dict, stage: str):
    return ctx.store.load(stage, doc["artifacts"][stage])


@pytest.fixture(scope="module")
def full(clip, tmp_path_factory):
    return _run(clip, tmp_path_factory.mktemp("out"), "export", ["camera.backend=opencv"])


def test_statuses_and_one_pixel_pass(full, clip, tmp_path_factory):
    doc, ctx = full
    status = {s: v["status"] for s, v in doc["stages"].items()}
    assert status == {
        "probe": "computed",
        "track": "computed",
        "keypoints": "computed",
        "features": "computed",
        "camera": "computed",
        "estimate": "computed",
        "postprocess": "computed",
        "export": "computed",
    }
    again, _ = _run(clip, ctx.out, "export", ["camera.backend=opencv"])
    assert {v["status"] for v in again["stages"].values()} == {"cached"}
    assert again["artifacts"] == doc["artifacts"]
    # an exported file removed by hand is written again; nothing upstream reruns
    fbx = ctx.out / doc["id"] / "person_1" / "motion.fbx"
    fbx.unlink()
    third, _ = _run(clip, ctx.out, "export", ["camera.backend=opencv"])
    assert third["stages"]["export"]["status"] == "computed" and fbx.is_file()
    assert third["stages"]["estimate"]["status"] == "cached"
    # a run that stops earlier leaves no exports of the earlier run under final names
    _run(clip, ctx.out, "track")
    assert (
        not list((ctx.out / doc["id"]).glob("person_*")) and not (ctx.out / doc["id"] / "camera.npz").exists()
    )
    _run(clip, ctx.out, "export", ["camera.backend=opencv"])


def test_keypoints_and_features_are_the_models_on_the_right_crops(full, clip):
    """Recompute a few (sample, person) items directly and compare with the stage outputs."""
    doc, ctx = full
    tracks = ctx.store.load("track", doc["artifacts"]["track"]).arrays
    kp = _artifact(ctx, doc, "keypoints").arrays
    ft = _artifact(ctx, doc, "features").arrays
    vitpose = load_vitpose(VITPOSE, num_heads=4)
    hmr2 = load_hmr2(HMR2, num_heads=4, decoder_heads=4)
    frames = np.concatenate([c.frames for c in iter_chunks(probe(clip[0]), chunk_frames=16, fps=30.0)])
    for pid in (0, 1):
        samples = tracks[f"person_{pid}/sample_index"]
        for i in (0, len(samples) // 2, len(samples) - 1):
            box = torch.from_numpy(tracks[f"person_{pid}/bbx_xys"][i : i + 1].astype(np.float32))
            crops = cut_crops(torch.from_numpy(frames), torch.tensor([int(samples[i])]), box)
            with torch.no_grad():
                want_kp = decode_heatmaps(heatmaps_flip_test(vitpose, crops.vitpose)[0], box)[0].numpy()
                want_ft = hmr2(crops.hmr2)[0].numpy()
            np.testing.assert_allclose(kp[f"person_{pid}/kp2d"][i], want_kp, atol=1e-4)
            np.testing.assert_allclose(ft[f"person_{pid}/f_imgseq"][i], want_ft, atol=1e-4)
        # keypoints lie inside the person's crop window (x: 0.75 s wide, y: s high)
        k, b = kp[f"person_{pid}/kp2d"], tracks[f"person_{pid}/bbx_xys"]
        assert (np.abs(k[..., 0] - b[:, None, 0]) <= 0.375 * b[:, None, 2] + 1).all()
        assert (np.abs(k[..., 1] - b[:, None, 1]) <= 0.5 * b[:, None, 2] + 1).all()
        assert ((k[..., 2] > 0) & (k[..., 2] < 1)).all()  # sigmoid confidence
        # features follow the picture: not the same vector at every frame
        assert np.ptp(ft[f"person_{pid}/f_imgseq"], axis=0).max() > 1e-3


def test_estimate_and_postprocess_outputs(full):
    doc, ctx = full
    est = _artifact(ctx, doc, "estimate")
    pp = _artifact(ctx, doc, "postprocess")
    assert est.meta["features"] is True
    assert pp.meta["body_model"] and pp.meta["contact_ik"]
    for pid in (0, 1):
        a = pp.arrays
        L = len(a[f"person_{pid}/sample_index"])
        assert L == 60 and a[f"person_{pid}/present"].all()
        for key, shape in [
            ("global_orient", (L, 3)),
            ("transl", (L, 3)),
            ("body_pose", (L, 63)),
            ("betas", (10,)),
            ("incam_global_orient", (L, 3)),
            ("incam_transl", (L, 3)),
            ("contacts", (L, 6)),
            ("K", (L, 3, 3)),
        ]:
            assert a[f"person_{pid}/{key}"].shape == shape and np.isfinite(a[f"person_{pid}/{key}"]).all(), (
                key
            )
        c = a[f"person_{pid}/contacts"]
        assert ((c >= 0) & (c <= 1)).all()
        # the in-camera result is the estimate's; the world one went through the contact post-process
        np.testing.assert_array_equal(
            a[f"person_{pid}/incam_transl"], est.arrays[f"person_{pid}/incam_transl"]
        )
        assert not np.allclose(a[f"person_{pid}/body_pose"], est.arrays[f"person_{pid}/body_pose"])


def test_without_features_and_without_body_model(full, clip, tmp_path):
    doc, ctx = full
    # also a camera solve that fails (demanding every sample measured): reported, and GEM told "unknown"
    extra = ["features.enabled=false", "camera.backend=opencv", "camera.min_valid_fraction=1.0"]
    doc2, ctx2 = _run(clip, tmp_path / "out", "export", extra, body=None)
    assert doc2["camera"]["status"] == "failed"
    assert any(w.startswith("camera unknown:") for w in doc2["warnings"])
    assert _artifact(ctx2, doc2, "estimate").meta["camera_known_fraction"] == 0.0
    # no body model: smpl.npz only, and the report says which files were not written and why
    assert any("no SMPL-X body model" in w for w in doc2["warnings"])
    assert doc2["stages"]["export"]["status"] == "computed"
    person = ctx2.out / doc2["id"] / "person_0"
    assert sorted(f.name for f in person.iterdir()) == ["smpl.npz"]
    assert doc2["stages"]["features"]["status"] == "skipped"
    assert "features.enabled=false" in doc2["stages"]["features"]["reason"]
    est, est2 = _artifact(ctx, doc, "estimate"), _artifact(ctx2, doc2, "estimate")
    assert est2.meta["features"] is False
    assert not np.allclose(est.arrays["person_0/pred_x"], est2.arrays["person_0/pred_x"])
    pp2 = _artifact(ctx2, doc2, "postprocess")
    assert pp2.meta["body_model"] is False and pp2.meta["contact_ik"] is False
    # no body model: the raw decoded pose is kept
    np.testing.assert_array_equal(pp2.arrays["person_0/body_pose"], est2.arrays["person_0/body_pose"])


def test_cli_stages_keypoints_and_features(clip, tmp_path, capsys, monkeypatch):
    """``--stages keypoints,features`` runs both (one decode for their crops); ``--until features`` runs
    features and what it needs, not keypoints."""
    import stages.video as video

    launches: list[str] = []
    orig = video._iter_video
    monkeypatch.setattr(
        video, "_iter_video", lambda info, *a, **k: launches.append(info.path) or orig(info, *a, **k)
    )
    video_path, dets = clip
    args = ["run", str(video_path), "--out", str(tmp_path / "o"), "--detections", str(dets)]
    for item in REDUCED:
        args += ["--set", item]
    assert main([*args, "--stages", "keypoints,features"]) == 0
    stages = json.loads((tmp_path / "o" / "report.json").read_text())["clips"][0]["stages"]
    assert stages["keypoints"]["status"] == stages["features"]["status"] == "computed"
    assert stages["estimate"]["status"] == stages["camera"]["status"] == "skipped"
    assert len(launches) == 2  # the tracks' timeline, then one crops decode for both models
    assert main([*args, "--until", "features"]) == 0
    stages = json.loads((tmp_path / "o" / "report.json").read_text())["clips"][0]["stages"]
    assert stages["features"]["status"] == "cached" and stages["keypoints"]["status"] == "skipped"


def _aa(R: np.ndarray) -> np.ndarray:
    return matrix_to_axis_angle(torch.from_numpy(R)).numpy()


def _R(aa) -> np.ndarray:
    return axis_angle_to_matrix(torch.as_tensor(aa, dtype=torch.float64)).numpy()


def test_place_in_clip_frame_recovers_a_known_layout():
    """Two people in a known clip frame, seen by a tilted camera that pans; each person's GEM world has a
    yaw and origin of its own. Placement must bring both back to where they stand."""
    rng = np.random.default_rng(0)
    L = 20
    # clip frame (x right, y up, z back) -> camera-0 (OpenCV: x right, y down, z forward), camera pitched
    tilt = _R([0.3, 0.0, 0.0])
    to_cam0 = tilt @ np.diag([1.0, -1.0, -1.0])
    cam_height = 1.6
    pan = np.stack([_R([0.0, 0.02 * t, 0.0]) for t in range(L)])  # R_w2c of camera t vs camera 0
    people = []
    truth = []
    for k, start in enumerate([np.array([-1.0, 0.9, -4.0]), np.array([1.5, 0.95, -6.0])]):
        yaw_clip = _R([0.0, 0.4 * k - 0.2, 0.0])
        R_clip = np.stack([yaw_clip @ _R(0.1 * rng.normal(size=3)) for _ in range(L)])
        pelvis = start + np.cumsum(np.full((L, 3), [0.02, 0.0, 0.03]), axis=0)
        truth.append((R_clip, pelvis))
        # GEM's own world: another yaw and origin, same height
        G = _R([0.0, 1.0 + k, 0.0])
        R_gem = G @ R_clip
        pelvis_gem = (pelvis - pelvis[0]) @ G.T + np.array([3.0, pelvis[0, 1], -2.0])
        # in camera t: camera-0 coordinates of the point, then the camera's rotation
        p_cam0 = (pelvis - np.array([0.0, cam_height, 0.0])) @ to_cam0.T
        R_cam0 = to_cam0 @ R_clip
        people.append(
            {
                "sample_index": np.arange(L),
                "present": np.ones(L, bool),
                "global_orient": _aa(R_gem),
                "transl": pelvis_gem,
                "incam_global_orient": _aa(pan @ R_cam0),
                "incam_transl": np.einsum("tij,tj->ti", pan, p_cam0),
                "betas": np.zeros(10, np.float32),
            }
        )
    placed, info = place_in_clip_frame(people, pan, skeleton=None)
    assert info["camera_height_m"] == pytest.approx(cam_height, abs=1e-6)
    for p, (R_clip, pelvis) in zip(placed, truth, strict=True):
        np.testing.assert_allclose(p["transl"], pelvis, atol=1e-5)
        np.testing.assert_allclose(_R(p["global_orient"]), R_clip, atol=1e-5)


def test_onnx_backend_gives_the_torch_results(full, clip, tmp_path):
    """The same reduced models exported to ONNX (GEM's signature) run through onnxruntime in the stages."""
    from models.onnx_runner import export_onnx

    doc, ctx = full
    vit = export_onnx(load_vitpose(VITPOSE, num_heads=4), tmp_path / "vitpose_coco17.onnx")
    hmr = export_onnx(load_hmr2(HMR2, num_heads=4, decoder_heads=4), tmp_path / "hmr2.onnx")
    doc2, ctx2 = _run(
        clip,
        tmp_path / "out",
        "features",
        [f"keypoints.weights={vit}", f"features.weights={hmr}", "run.stages=[keypoints, features]"],
    )
    assert doc2["artifacts"]["keypoints"] != doc["artifacts"]["keypoints"]  # other weight file, other key
    for stage, name, tol in (("keypoints", "kp2d", 1e-3), ("features", "f_imgseq", 1e-3)):
        a, b = _artifact(ctx, doc, stage).arrays, _artifact(ctx2, doc2, stage).arrays
        for pid in (0, 1):
            np.testing.assert_allclose(b[f"person_{pid}/{name}"], a[f"person_{pid}/{name}"], atol=tol)


def test_exports_and_camera_files(full):
    doc, ctx = full
    clip_dir = ctx.out / doc["id"]
    assert doc["camera"]["backend"] == "opencv" and doc["exports"]["reason"] is None
    cam = np.load(clip_dir / "camera.npz")
    assert cam["R_w2c"].shape == (60, 3, 3) and cam["frame_index"].tolist() == list(range(60))
    est = _artifact(ctx, doc, "estimate")
    for pid in (0, 1):
        rec = np.load(clip_dir / f"person_{pid}" / "smpl.npz")
        assert str(rec["schema"]) == "genmocap.smpl/1" and float(rec["fps"]) == 30.0
        assert rec["frame_index"].tolist() == list(range(60)) and rec["valid"].all()
        assert rec["kp2d"].shape == (60, 17, 3) and rec["bbox_xyxy"].shape == (60, 4)
        for fmt in ("motion.fbx", "motion.bvh", "motion.usda"):
            assert (clip_dir / f"person_{pid}" / fmt).stat().st_size > 0
        # GEM was given the solved camera, not a static one
        angvel = est.arrays[f"person_{pid}/cam_angvel"]
        np.testing.assert_allclose(angvel, cam_angvel_of(cam["R_w2c"]), atol=1e-6)
    assert (clip_dir / "camera_world.npz").is_file()


def cam_angvel_of(R_w2c: np.ndarray) -> np.ndarray:
    from stages.camera import cam_angvel

    return cam_angvel(R_w2c)


def test_only_gpu_stages_hold_a_gpu_slot(clip, tmp_path):
    """The GPU slot (a Prefect global concurrency limit on a server) is held exactly while a network stage
    computes: never by probe, the camera solve, postprocess or export, nor by track with user boxes."""
    video, dets = clip
    held: list[str] = []

    @contextmanager
    def slot(stage: str):
        held.append(stage)
        yield

    cfg = load_config(None, [*REDUCED, "run.until=postprocess", "camera.backend=opencv"])
    ctx = RunContext.create(cfg, tmp_path / "out", detections=dets, body_model=BODY)
    ctx.gpu_slot = slot
    assert run_batch(discover([video]), ctx)["summary"]["ok"] == 1
    assert sorted(held) == ["estimate", "features", "keypoints"]
    held.clear()
    assert run_batch(discover([video]), ctx)["summary"]["ok"] == 1  # all cached: no GPU work, no slot
    assert held == []
