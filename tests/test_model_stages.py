"""Keypoints, features, estimate and postprocess end to end on a synthetic two-person clip, with the reduced
random-weight checkpoints of the shared fixtures (ViTPose, HMR2, GEM) and their synthetic body model."""

from __future__ import annotations

import json
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
    return _run(clip, tmp_path_factory.mktemp("out"), "postprocess")


def test_statuses_and_one_pixel_pass(full, clip, tmp_path_factory):
    doc, ctx = full
    status = {s: v["status"] for s, v in doc["stages"].items()}
    assert status == {
        "probe": "computed",
        "track": "computed",
        "keypoints": "computed",
        "features": "computed",
        "camera": "skipped",
        "estimate": "computed",
        "postprocess": "computed",
        "export": "skipped",
    }
    again, _ = _run(clip, ctx.out, "postprocess")
    assert {v["status"] for s, v in again["stages"].items() if s not in ("camera", "export")} == {"cached"}
    assert again["artifacts"] == doc["artifacts"]


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
    doc2, ctx2 = _run(clip, tmp_path / "out", "postprocess", ["features.enabled=false"], body=None)
    assert doc2["stages"]["features"]["status"] == "skipped"
    assert "features.enabled=false" in doc2["stages"]["features"]["reason"]
    est, est2 = _artifact(ctx, doc, "estimate"), _artifact(ctx2, doc2, "estimate")
    assert est2.meta["features"] is False
    assert not np.allclose(est.arrays["person_0/pred_x"], est2.arrays["person_0/pred_x"])
    pp2 = _artifact(ctx2, doc2, "postprocess")
    assert pp2.meta["body_model"] is False and pp2.meta["contact_ik"] is False
    # no body model: the raw decoded pose is kept
    np.testing.assert_array_equal(pp2.arrays["person_0/body_pose"], est2.arrays["person_0/body_pose"])


def test_cli_until_features(clip, tmp_path, capsys):
    video, dets = clip
    args = ["run", str(video), "--out", str(tmp_path / "o"), "--until", "features", "--detections", str(dets)]
    for item in REDUCED:
        args += ["--set", item]
    assert main(args) == 0
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    stages = report["clips"][0]["stages"]
    assert stages["keypoints"]["status"] == stages["features"]["status"] == "computed"
    assert stages["estimate"]["status"] == "skipped"


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
    vit = export_onnx(load_vitpose(VITPOSE, num_heads=4), tmp_path / "vitpose.onnx")
    hmr = export_onnx(load_hmr2(HMR2, num_heads=4, decoder_heads=4), tmp_path / "hmr2.onnx")
    doc2, ctx2 = _run(
        clip, tmp_path / "out", "features", [f"keypoints.weights={vit}", f"features.weights={hmr}"]
    )
    assert doc2["artifacts"]["keypoints"] != doc["artifacts"]["keypoints"]  # other weight file, other key
    for stage, name, tol in (("keypoints", "kp2d", 1e-3), ("features", "f_imgseq", 1e-3)):
        a, b = _artifact(ctx, doc, stage).arrays, _artifact(ctx2, doc2, stage).arrays
        for pid in (0, 1):
            np.testing.assert_allclose(b[f"person_{pid}/{name}"], a[f"person_{pid}/{name}"], atol=tol)
