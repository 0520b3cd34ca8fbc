"""Which engine and device the perception networks run on by default, and the numerics they run with.

With the weights a user can download (GEM's ONNX exports, here our reduced models exported the same way and
named like them), ``auto`` runs ViTPose and HMR2 in torch on CUDA when a GPU is present (the ONNX weights
imported into our modules), and with onnxruntime on the CPU otherwise. TF32 stays off whatever came before.
"""

from __future__ import annotations

import pytest
import torch

from models.hmr2 import load_hmr2
from models.onnx_runner import OnnxModel
from models.vitpose import load_vitpose
from pipeline.config import load_config
from pipeline.runner import RunContext, needed_weights
from stages.perception import image_model, resolve_engine
from tests.test_model_stages import HMR2, VITPOSE
from tests.test_onnx_import import gem_export

pytestmark = pytest.mark.skipif(
    not (VITPOSE.is_file() and HMR2.is_file()), reason=f"reduced checkpoints not found beside {VITPOSE}"
)
HEADS = ["keypoints.num_heads=4", "features.num_heads=4", "features.decoder_heads=4"]
CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    """A weights folder holding only ONNX files exported as GEM's scripts do (graph + one ``.onnx.data``
    sidecar each) under GEM's published names, as after a download."""
    d = tmp_path_factory.mktemp("weights")
    gem_export(load_vitpose(VITPOSE, num_heads=4), "vitpose", d / "vitpose_coco17.onnx")
    gem_export(load_hmr2(HMR2, num_heads=4, decoder_heads=4), "hmr2", d / "hmr2.onnx")
    return d


def _models(weights_dir, monkeypatch, tmp_path, extra=()):
    monkeypatch.setenv("GENMOCAP_WEIGHTS", str(weights_dir))
    cfg = load_config(None, [*HEADS, *extra])
    roles = needed_weights(cfg)
    assert (roles["vitpose"], roles["hmr2"]) == ("vitpose_coco17.onnx", "hmr2.onnx")  # auto: the downloads
    env = RunContext.create(cfg, tmp_path / "out").env()
    return env, (
        image_model("vitpose", env.weights("vitpose"), cfg.keypoints, env.device),
        image_model("hmr2", env.weights("hmr2"), cfg.features, env.device),
    )


def test_engine_rules():
    assert resolve_engine("auto", "vitpose_coco17.onnx", "cuda") == "torch"
    assert resolve_engine("auto", "vitpose_coco17.onnx", "cuda:1") == "torch"
    assert resolve_engine("auto", "vitpose_coco17.onnx", "cpu") == "onnxruntime"
    assert resolve_engine("auto", "vitpose-h-multi-coco.pth", "cpu") == "torch"
    assert resolve_engine("onnxruntime", "x.onnx", "cuda") == "onnxruntime"


@pytest.mark.skipif(CUDA, reason="this machine has a GPU: see test_default_perception_runs_on_cuda")
def test_default_perception_runs_on_the_cpu_without_a_gpu(weights_dir, monkeypatch, tmp_path):
    env, models = _models(weights_dir, monkeypatch, tmp_path)
    assert env.device == "cpu"
    assert all(isinstance(m, OnnxModel) for m in models)


@pytest.mark.skipif(not CUDA, reason="no CUDA GPU here (the CPU case is tested)")
def test_default_perception_runs_on_cuda(weights_dir, monkeypatch, tmp_path):
    env, models = _models(weights_dir, monkeypatch, tmp_path)
    assert env.device == "cuda"
    for m in models:
        assert isinstance(m, torch.nn.Module) and all(p.is_cuda for p in m.parameters())


def test_torch_engine_on_onnx_weights_reproduces_the_checkpoint(weights_dir, monkeypatch, tmp_path):
    """engine=torch on the ONNX files gives the original torch modules' outputs exactly (same device)."""
    _, (vitpose, hmr2) = _models(weights_dir, monkeypatch, tmp_path, ["keypoints.engine=torch",
                                                                      "features.engine=torch"])  # fmt: skip
    device = next(vitpose.parameters()).device
    originals = (
        load_vitpose(VITPOSE, device, num_heads=4),
        load_hmr2(HMR2, device, num_heads=4, decoder_heads=4),
    )
    saved = vitpose.bf16, hmr2.bf16  # the models are the process-wide cached ones: restored below
    for imported, original in zip((vitpose, hmr2), originals, strict=True):
        imported.bf16 = original.bf16 = False  # compared in fp32 (HMR2 defaults to bf16 on CUDA)
        ours, theirs = imported.state_dict(), original.state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for model, original, size in zip((vitpose, hmr2), originals, (192, 256), strict=True):
            x = torch.rand(3, 3, 256, size, generator=g).to(device)
            if device.type == "cpu":
                assert torch.equal(model(x), original(x))
            else:  # same weights, but two instances may get different CUDA kernels (cuDNN algorithm choice)
                torch.testing.assert_close(model(x), original(x), rtol=1e-4, atol=1e-4)
    vitpose.bf16, hmr2.bf16 = saved


def test_tf32_stays_off_after_a_model_is_built(weights_dir, monkeypatch, tmp_path):
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    try:
        _models(weights_dir, monkeypatch, tmp_path, ["keypoints.batch=3"])  # a new cache key: a new build
        assert torch.backends.cuda.matmul.allow_tf32 is False
        assert torch.backends.cudnn.allow_tf32 is False
        assert torch.get_float32_matmul_precision() == "highest"
    finally:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
