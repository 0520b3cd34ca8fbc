"""Perception models (issue #4): parity with the reference fixtures, crops, decode, strict loading, flip test,
ONNX backend. Everything but the fixture tests uses small random-weight models built by our own code."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch

from models.crops import _blur_window, cut_crops, square_boxes, warp_crops
from models.heatmap import decode_heatmaps, flip_back
from models.hmr2 import HMR2, DecoderDims, load_hmr2
from models.onnx_runner import OnnxModel, export_onnx
from models.vit import CheckpointError, ViTDims
from models.vitpose import HeadDims, ViTPose, heatmaps_flip_test, load_vitpose
from tests.shared import fixture_dir
from tools.perception_parity import main

REPO = Path(__file__).resolve().parents[1]
FIXTURES = fixture_dir("perception_parity")
needs_fixtures = pytest.mark.skipif(
    not FIXTURES.is_dir(), reason=f"perception parity fixtures not found at {FIXTURES}"
)

SMALL_VIT = ViTDims(embed_dim=64, depth=2, num_heads=4, mlp_dim=256)
SMALL_HEAD = HeadDims(in_channels=64, deconv_filters=(48, 40), num_joints=17)
SMALL_DEC = DecoderDims(dim=1024, depth=2, heads=4, dim_head=8, mlp_dim=32, context_dim=64)


def _randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if "pos_emb" in name else 0.2))
    return model.eval()


@pytest.fixture(scope="module")
def small_vitpose() -> ViTPose:
    return _randomise(ViTPose(SMALL_VIT, SMALL_HEAD))


@pytest.fixture(scope="module")
def small_hmr2() -> HMR2:
    return _randomise(HMR2(SMALL_VIT, SMALL_DEC), seed=1)


# ---- parity with the reference fixtures --------------------------------------------------------------------


@needs_fixtures
def test_parity_cli_passes_on_public_fixtures():
    run = subprocess.run(
        [sys.executable, "-m", "tools.perception_parity", str(FIXTURES)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    for name in ("boxes.pt", "decode.pt", "vitpose.pt", "hmr2.pt"):
        assert name in run.stdout
    for group in ("boxes", "crop", "net", "heatmap", "decode", "kp2d", "feature", "e2e"):
        assert f"  {group} " in run.stdout
    assert "FAIL" not in run.stdout and run.stdout.rstrip().endswith("ALL PASS")


@needs_fixtures
def test_parity_cli_fails_on_a_perturbed_copy(tmp_path, capsys):
    folder = tmp_path / "fx"
    shutil.copytree(FIXTURES, folder, copy_function=shutil.copyfile)  # fixture files are read-only
    folder.chmod(0o755)
    vp = torch.load(folder / "vitpose.pt", weights_only=True)
    vp["kp2d"][1, 3, 0] += 0.01  # 10x the keypoint tolerance
    torch.save(vp, folder / "vitpose.pt")
    hm = torch.load(folder / "hmr2.pt", weights_only=True)
    hm["feature"][2, 7] += 1e-3
    torch.save(hm, folder / "hmr2.pt")
    assert main([str(folder)]) == 1
    out = capsys.readouterr().out
    failed = {tuple(line.split()[:1]) for line in out.splitlines() if line.rstrip().endswith("FAIL")}
    assert {("kp2d",), ("e2e",), ("feature",)} <= failed
    assert ("boxes",) not in failed and out.rstrip().endswith("SOME FAIL")


# ---- crops and decode --------------------------------------------------------------------------------------


def test_unit_scale_crop_copies_pixels_and_pads_black():
    frame = torch.randint(0, 256, (300, 400, 3), dtype=torch.uint8)
    # with s = 255 crop pixel u samples frame x = cx − 127.5 + u exactly
    boxes = torch.tensor([[200.5, 150.5, 255.0], [10.5, 20.5, 255.0]])
    crops = warp_crops(frame[None], torch.zeros(2, dtype=torch.long), boxes)
    assert torch.equal(crops[0], frame[23:279, 73:329])
    assert torch.equal(crops[1, 107:, 117:], frame[: 256 - 107, : 256 - 117])
    assert crops[1, :107].max() == 0 and crops[1, :, :117].max() == 0


def test_blur_matches_opencv():
    rng = np.random.default_rng(0)
    for sigma in (0.06, 0.379, 0.477, 1.3):
        frame = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
        ours = _blur_window(torch.from_numpy(frame), 0, 52, 0, 36, sigma).numpy()
        assert np.array_equal(ours, cv2.GaussianBlur(frame, (5, 5), sigma)), sigma


def test_cut_crops_shares_the_unblurred_crop():
    frames = torch.randint(0, 256, (2, 120, 160, 3), dtype=torch.uint8)
    boxes = torch.tensor([[80.0, 60.0, 100.0], [70.0, 50.0, 1500.0]])  # d = 0.2 (no blur), 2.9 (σ 0.96)
    c = cut_crops(frames, torch.tensor([0, 1]), boxes)
    assert c.vitpose.shape == (2, 3, 256, 192) and c.hmr2.shape == (2, 3, 256, 256)
    assert c.hmr2_blurred.tolist() == [False, True]
    assert torch.equal(c.hmr2[0, :, :, 32:224], c.vitpose[0])
    assert not torch.equal(c.hmr2[1, :, :, 32:224], c.vitpose[1])


def test_square_boxes_pads_to_aspect_then_enlarges():
    out = square_boxes(torch.tensor([[0.0, 0.0, 30.0, 100.0], [0.0, 0.0, 300.0, 100.0]]))
    assert torch.allclose(out, torch.tensor([[15.0, 50.0, 120.0], [150.0, 50.0, 480.0]]))


def test_decode_quarter_offsets_borders_and_confidence():
    hm = torch.full((1, 17, 64, 48), -5.0)
    hm[0, 0, 10, 20], hm[0, 0, 10, 21], hm[0, 0, 11, 20] = 2.0, 1.0, 0.5  # right and below are higher
    hm[0, 1, 0, 1], hm[0, 1, 0, 2] = 3.0, 1.0  # x = 1, y = 0: no step at all
    box = torch.tensor([[100.0, 200.0, 64.0]])
    kp = decode_heatmaps(hm, box)
    assert kp[0, 0, 0].item() == pytest.approx(20.25 / 48 * 64 * 0.75 + 100 - 24)
    assert kp[0, 0, 1].item() == pytest.approx(10.25 / 64 * 64 + 200 - 32)
    assert kp[0, 1, :2].tolist() == pytest.approx([1 / 48 * 48 + 76, 168.0])
    assert kp[0, 0, 2].item() == pytest.approx(1 / (1 + np.exp(-2.0)))
    assert decode_heatmaps(hm, box, confidence="raw")[0, :2, 2].tolist() == [2.0, 3.0]
    with pytest.raises(ValueError):
        decode_heatmaps(hm, box, confidence="max")


# ---- networks ----------------------------------------------------------------------------------------------


def test_flip_test_batched_equals_unbatched_and_is_mirror_symmetric(small_vitpose):
    imgs = torch.randn(5, 3, 256, 192, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        batched = heatmaps_flip_test(small_vitpose, imgs)[0]
        single = torch.cat([heatmaps_flip_test(small_vitpose, imgs[i : i + 1])[0] for i in range(5)])
        mirrored = heatmaps_flip_test(small_vitpose, imgs.flip(-1))[0]
    assert batched.shape == (5, 17, 64, 48)
    assert torch.allclose(batched, single, atol=1e-5)
    assert torch.allclose(mirrored, flip_back(batched), atol=1e-5)


def test_bf16_flag_is_ignored_on_cpu(small_hmr2):
    imgs = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        ref = small_hmr2(imgs)
        small_hmr2.bf16 = True
        try:
            assert torch.equal(small_hmr2(imgs), ref) and ref.dtype == torch.float32
        finally:
            small_hmr2.bf16 = False


@pytest.mark.slow
def test_onnx_round_trip_has_gem_signature(tmp_path, small_vitpose, small_hmr2):
    for model, in_shape, out_name, out_shape in (
        (small_vitpose, (3, 3, 256, 192), "heatmaps", ["B", 17, 64, 48]),
        (small_hmr2, (3, 3, 256, 256), "f_imgseq", ["B", 1024]),
    ):
        path = export_onnx(model, tmp_path / f"{out_name}.onnx")
        graph = onnx.load(str(path))
        assert [o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")] == [18]
        runner = OnnxModel(path, threads=2)
        assert (runner.input_name, runner.output_name) == ("imgs", out_name)
        assert runner.input_shape == ["B", *in_shape[1:]] and runner.output_shape == out_shape
        imgs = torch.randn(in_shape)  # another batch size than the export example (2)
        with torch.no_grad():
            assert torch.allclose(runner(imgs), model(imgs), atol=1e-4)


# ---- strict loading ----------------------------------------------------------------------------------------


class _HyperParams:  # stands in for the config objects a Lightning checkpoint pickles
    def __init__(self):
        self.lr = 1e-4


def _save(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


def test_vitpose_loads_strictly(tmp_path, small_vitpose):
    sd = dict(small_vitpose.state_dict())
    with_cls = {**sd, "backbone.cls_token": torch.zeros(1)}  # ignored on purpose
    good = _save(tmp_path / "ok.pth", {"meta": {"epoch": 1}, "state_dict": with_cls})
    loaded = load_vitpose(good, num_heads=4)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in sd.items())

    cases = {
        "missing": ({k: v for k, v in sd.items() if k != "keypoint_head.final_layer.bias"}, "missing"),
        "unknown": ({**sd, "keypoint_head.extra.weight": torch.zeros(1)}, "unrecognised"),
        "shape": ({**sd, "backbone.last_norm.bias": torch.zeros(3)}, "shape"),
        "no_head": ({k: v for k, v in sd.items() if k.startswith("backbone.")}, "not a ViTPose"),
    }
    for name, (state, message) in cases.items():
        with pytest.raises(CheckpointError, match=message):
            load_vitpose(_save(tmp_path / f"{name}.pth", {"state_dict": state}), num_heads=4)
    with pytest.raises(CheckpointError, match="heads"):
        load_vitpose(good)  # width 64 is not ViT-H: the head count cannot be guessed

    blob = good.read_bytes()
    (tmp_path / "cut.pth").write_bytes(blob[: len(blob) // 2])
    (tmp_path / "text.pth").write_text("not a checkpoint")
    for bad in ("cut.pth", "text.pth", "absent.pth"):
        with pytest.raises(CheckpointError):
            load_vitpose(tmp_path / bad, num_heads=4)


def test_hmr2_loads_lightning_checkpoints_strictly(tmp_path, small_hmr2):
    sd = dict(small_hmr2.state_dict())
    extra = {
        "smpl_head.decpose.weight": torch.zeros(144, 1024),
        "smpl_head.init_betas": torch.zeros(1, 10),
        "discriminator.layer.weight": torch.zeros(4, 4),
    }
    ckpt = {"epoch": 10, "hyper_parameters": _HyperParams(), "state_dict": {**sd, **extra}}
    loaded = load_hmr2(_save(tmp_path / "ok.ckpt", ckpt), num_heads=4, decoder_heads=4)
    imgs = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        assert torch.equal(loaded(imgs), small_hmr2(imgs))

    bad = {**sd, "smpl_head.transformer.unknown": torch.zeros(1)}
    with pytest.raises(CheckpointError, match="unrecognised"):
        load_hmr2(_save(tmp_path / "bad.ckpt", {"state_dict": bad}), num_heads=4, decoder_heads=4)
    drop = {k: v for k, v in sd.items() if "layers.1.1" not in k}
    with pytest.raises(CheckpointError, match="missing"):
        load_hmr2(_save(tmp_path / "drop.ckpt", {"state_dict": drop}), num_heads=4, decoder_heads=4)
