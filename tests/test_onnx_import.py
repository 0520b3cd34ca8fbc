"""Importing ONNX exports of ViTPose and HMR2 into our torch modules (:mod:`models.onnx_import`).

The reduced fixture checkpoints are exported exactly as GEM's ``tools/export/export_{vitpose,hmr2}_onnx.py``
do (TorchScript exporter, opset 18, constant folding, batch-1 dummy, dynamic ``B``, re-saved with one
``<name>.onnx.data`` sidecar); the import must give back every tensor bit for bit and the same outputs, and
onnxruntime on the same file proves it is a real export. Our own dynamo export (:func:`export_onnx`) and the
error cases follow.
"""

from __future__ import annotations

import shutil
import tempfile
import types
import warnings
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from models.hmr2 import load_hmr2
from models.onnx_import import OnnxImportError, load_onnx_as_torch, state_dict_from_onnx
from models.onnx_runner import OnnxModel, export_onnx
from models.vitpose import load_vitpose
from tests.shared import fixture_dir

PERCEPTION = fixture_dir("perception_parity")
VITPOSE = PERCEPTION / "vitpose_reduced.pth"
HMR2 = PERCEPTION / "hmr2_reduced.ckpt"

pytestmark = pytest.mark.skipif(
    not (VITPOSE.is_file() and HMR2.is_file()), reason=f"reduced checkpoints not found under {PERCEPTION}"
)

KINDS = ("vitpose", "hmr2")
FILE = {"vitpose": "vitpose_coco17.onnx", "hmr2": "hmr2.onnx"}  # GEM's file names
SIZE = {"vitpose": (256, 192), "hmr2": (256, 256)}
OUTPUT = {"vitpose": "heatmaps", "hmr2": "f_imgseq"}
HEADS = {"vitpose": {"num_heads": 4}, "hmr2": {"num_heads": 4, "decoder_heads": 4}}  # the reduced models'


def original(kind: str) -> nn.Module:
    if kind == "vitpose":
        return load_vitpose(VITPOSE, **HEADS[kind])
    return load_hmr2(HMR2, **HEADS[kind])


def reference_decoder_forward(self: nn.Module, token: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """The reference ``TransformerDecoder.forward`` (HMR2's pose transformer) on our decoder's modules: the
    embedded zero token plus ``pos_embedding[:, :n]`` (a slice an exporter may fold or rename), then the
    layers. (B, 1, 1), (B, 192, C) → (B, 1, dim)."""
    x = self.to_token_embedding(token)
    x = x + self.pos_embedding[:, : x.shape[1]]
    for layer in self.transformer.layers:
        for block in layer:
            x = x + block(x, context)
    return x


class GemHMR2Wrapper(nn.Module):
    """GEM's ``HMR2FeatureWrapper``: the whole model as ``self.model`` (initializers ``model.*``), the crop
    ``imgs[:, :, :, 32:-32]`` in the wrapper, the backbone, then the SMPL head's decoder in token mode with
    the reference's forward (bound to the decoder, so its operations keep the decoder's scope)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        decoder = model.smpl_head.transformer
        decoder.forward = types.MethodType(reference_decoder_forward, decoder)

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        feats = self.model.backbone(imgs[:, :, :, 32:-32])
        context = feats.flatten(2).transpose(1, 2)
        token = imgs.new_zeros(imgs.shape[0], 1, 1)  # the reference: torch.zeros(batch_size, 1, 1)
        return self.model.smpl_head.transformer(token, context)[:, 0]


def gem_export(model: nn.Module, kind: str, path: Path, dynamo: bool = False) -> Path:
    """``torch.onnx.export`` with GEM's options, into a temporary folder, then ``onnx.save_model`` with one
    ``<stem>.onnx.data`` sidecar (size threshold 1024), as GEM's export scripts do.

    GEM's scripts pass no ``dynamo`` argument: with the torch of their time (< 2.9) that is the TorchScript
    exporter; this torch defaults to the dynamo exporter, so ``dynamo=False`` selects the same one here
    (``dynamo=True``: what the same script does with torch >= 2.9).
    """
    module = model if kind == "vitpose" else GemHMR2Wrapper(model)
    out = OUTPUT[kind]
    dummy = torch.randn(1, 3, *SIZE[kind], generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated in this torch
        tmp_path = str(Path(tmp) / "model.onnx")
        torch.onnx.export(
            module.eval(),
            (dummy,),
            tmp_path,
            opset_version=18,
            do_constant_folding=True,
            input_names=["imgs"],
            output_names=[out],
            dynamic_axes={"imgs": {0: "B"}, out: {0: "B"}},
            dynamo=dynamo,
        )
        loaded = onnx.load(tmp_path, load_external_data=True)
        onnx.save_model(
            loaded,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=path.stem + ".onnx.data",
            size_threshold=1024,
            convert_attribute=False,
        )
    return path


@pytest.fixture(scope="module")
def gem_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gem_onnx")
    return {kind: gem_export(original(kind), kind, root / FILE[kind]) for kind in KINDS}


def crops(kind: str, n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, *SIZE[kind], generator=torch.Generator().manual_seed(1))


def initializer_names(path: Path) -> set[str]:
    return {t.name for t in onnx.load(str(path), load_external_data=False).graph.initializer}


@pytest.mark.parametrize("kind", KINDS)
def test_gem_export_is_imported_bit_for_bit(gem_files, kind):
    path = gem_files[kind]
    assert sorted(p.name for p in path.parent.glob(f"{path.stem}*")) == [path.name, path.name + ".data"]
    ref = original(kind)
    # the hard case is really there: folded constants under generated names, no pos_embed, a wrapper prefix
    names = initializer_names(path)
    assert any(n.startswith("onnx::MatMul_") for n in names) and "backbone.pos_embed" not in names
    assert kind == "vitpose" or any(n.startswith("model.backbone.") for n in names)

    model = load_onnx_as_torch(path, kind, "cpu", **HEADS[kind])
    assert type(model) is type(ref) and not model.training
    got, want = model.state_dict(), ref.state_dict()
    assert list(got) == list(want)
    for key, value in want.items():
        assert got[key].dtype == value.dtype and torch.equal(got[key], value), key

    x = crops(kind)
    with torch.no_grad():
        out, expected = model(x), ref(x)
    assert tuple(out.shape) == ((3, 17, 64, 48) if kind == "vitpose" else (3, 1024))
    assert torch.equal(out, expected)
    # the file is a valid export of the same network: onnxruntime agrees with torch
    torch.testing.assert_close(OnnxModel(path, threads=1)(x), expected, atol=1e-4, rtol=1e-4)


def test_state_dict_from_onnx_tells_the_kind(gem_files):
    for kind in KINDS:
        sd = state_dict_from_onnx(gem_files[kind])
        assert set(sd) == set(original(kind).state_dict())


@pytest.mark.parametrize("kind", KINDS)
def test_our_dynamo_export_is_imported(tmp_path, kind):
    """:func:`export_onnx` (dynamo exporter) folds Linear transposes into ``val_*`` constants, and for ViTPose
    its optimizer (onnxscript 0.7) folds each BatchNorm into the ConvTranspose before it: the import then
    holds the folded convolution and a BatchNorm that only adds the bias (same function, up to the folding's
    rounding). Everything else is bit-equal."""
    ref = original(kind)
    path = export_onnx(ref, tmp_path / FILE[kind])
    model = load_onnx_as_torch(path, kind, "cpu", **HEADS[kind])
    got, want = model.state_dict(), ref.state_dict()
    assert list(got) == list(want)
    head = {k for k in want if k.startswith("keypoint_head.deconv_layers.")}
    for key in set(want) - head:
        assert torch.equal(got[key], want[key]), key
    fused = any(not torch.equal(got[k], want[k]) for k in head)
    x = crops(kind)
    with torch.no_grad():
        out, expected = model(x), ref(x)
    if fused:
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    else:
        assert torch.equal(out, expected)
    torch.testing.assert_close(OnnxModel(path, threads=1)(x), out, atol=1e-4, rtol=1e-4)


def test_gem_script_under_the_dynamo_exporter_is_imported(tmp_path):
    """GEM's HMR2 export call with torch >= 2.9's default (dynamo) exporter: Linear weights become
    transposed ``val_*`` constants and (torch 2.15) the decoder's ``pos_embedding[:, :1]`` an initializer
    named ``alias``, placed through the qualified module scopes the dynamo exporter records. (Its batch-1
    dummy specialises the graph: onnxruntime then fails on B > 1, so it is not run here.)"""
    ref = original("hmr2")
    try:
        path = gem_export(original("hmr2"), "hmr2", tmp_path / FILE["hmr2"], dynamo=True)
    except Exception as e:  # the dynamo exporter's coverage depends on the torch version
        pytest.skip(f"torch {torch.__version__}'s dynamo exporter cannot run GEM's call: {e}")
    assert "model.backbone.blocks.0.attn.qkv.weight" not in initializer_names(path)
    model = load_onnx_as_torch(path, "hmr2", **HEADS["hmr2"])
    got, want = model.state_dict(), ref.state_dict()
    assert list(got) == list(want)
    for key, value in want.items():
        assert torch.equal(got[key], value), key
    x = crops("hmr2")
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", KINDS)
def test_imported_model_runs_bf16_on_cuda(gem_files, kind):
    model = load_onnx_as_torch(gem_files[kind], kind, "cuda", bf16=True, **HEADS[kind])
    ref = original(kind).cuda()
    ref.bf16 = True
    x = crops(kind).cuda()
    with torch.no_grad():
        out, expected = model(x), ref(x)
    assert out.dtype == torch.float32 and out.is_cuda
    # same weights, same kernels: normally bit-identical; the tolerance only absorbs a kernel choice
    torch.testing.assert_close(out, expected, atol=1e-3, rtol=1e-3)


def test_weights_the_exporter_deduplicated_are_recovered(tmp_path):
    """The TorchScript exporter keeps one initializer for equal tensors and feeds the others through
    ``Identity`` nodes: equal LayerNorm weights (all ones), equal Linear weights (folded, transposed)."""
    ref = original("vitpose")
    blocks = ref.backbone.blocks
    with torch.no_grad():
        blocks[0].norm1.weight.fill_(1.0)
        blocks[1].norm1.weight.fill_(1.0)
        blocks[1].mlp.fc2.weight.copy_(blocks[0].mlp.fc2.weight)
    path = gem_export(ref, "vitpose", tmp_path / FILE["vitpose"])
    assert "backbone.blocks.1.norm1.weight" not in initializer_names(path)
    got = load_onnx_as_torch(path, "vitpose", **HEADS["vitpose"]).state_dict()
    for key, value in ref.state_dict().items():
        assert torch.equal(got[key], value), key


# ---- errors ---------------------------------------------------------------------------------------------


@pytest.fixture
def vitpose_copy(gem_files, tmp_path) -> Path:
    src = gem_files["vitpose"]
    for p in (src, src.with_name(src.name + ".data")):
        shutil.copy(p, tmp_path / p.name)
    return tmp_path / src.name


def test_truncated_or_foreign_files_are_named(vitpose_copy, tmp_path):
    path = vitpose_copy
    with pytest.raises(OnnxImportError, match="no such ONNX file"):
        load_onnx_as_torch(tmp_path / "absent.onnx", "vitpose", **HEADS["vitpose"])

    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n" * 10)
    with pytest.raises(OnnxImportError, match=r"notes\.onnx: not a readable ONNX model"):
        state_dict_from_onnx(text)

    cut = tmp_path / "cut.onnx"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(OnnxImportError, match=r"cut\.onnx: not a readable ONNX model"):
        state_dict_from_onnx(cut)

    with pytest.raises(OnnxImportError, match=r"is a vitpose export, not hmr2"):
        load_onnx_as_torch(path, "hmr2", **HEADS["hmr2"])

    other = tmp_path / "linear.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(nn.Linear(4, 2), (torch.zeros(1, 4),), str(other), opset_version=18, dynamo=False)
    with pytest.raises(OnnxImportError, match=r"linear\.onnx: not a ViTPose or HMR2 export"):
        state_dict_from_onnx(other)
    with pytest.raises(
        OnnxImportError, match=r"not a complete vitpose export: weight 'backbone\.patch_embed"
    ):
        load_onnx_as_torch(other, "vitpose", **HEADS["vitpose"])


def test_missing_or_truncated_sidecar_is_named(vitpose_copy):
    data = vitpose_copy.with_name(vitpose_copy.name + ".data")
    full = data.read_bytes()
    data.write_bytes(full[: len(full) // 2])
    with pytest.raises(OnnxImportError, match=r"vitpose_coco17\.onnx\.data is truncated"):
        load_onnx_as_torch(vitpose_copy, "vitpose", **HEADS["vitpose"])
    data.unlink()
    with pytest.raises(OnnxImportError, match=r"vitpose_coco17\.onnx\.data .*not found"):
        load_onnx_as_torch(vitpose_copy, "vitpose", **HEADS["vitpose"])


def test_unrecoverable_weights_fail_strict_loading(vitpose_copy):
    """Without the module scopes in the node names the folded Linear weights cannot be placed: the import
    names a missing weight instead of running without it."""
    m = onnx.load(str(vitpose_copy), load_external_data=False)
    for node in m.graph.node:
        node.name = ""
    onnx.save(m, str(vitpose_copy))
    with pytest.raises(
        OnnxImportError, match=r"'backbone\.blocks\.0\.mlp\.fc1\.weight' could not be recovered"
    ):
        load_onnx_as_torch(vitpose_copy, "vitpose", **HEADS["vitpose"])
