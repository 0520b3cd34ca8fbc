"""Import the weights of a ViTPose or HMR2 ONNX export (GEM's ``vitpose_coco17.onnx`` / ``hmr2.onnx`` with
their ``.onnx.data`` sidecar, or our own :func:`models.onnx_runner.export_onnx`) into our torch modules, so
that the published files run in torch (GPU, bf16 autocast) with the parity proven for
:mod:`models.vitpose` and :mod:`models.hmr2`.

Signature of the files: input ``imgs`` (B, 3, 256, 192) for ViTPose / (B, 3, 256, 256) for HMR2 (the 256→192
column crop 32..223 is inside the graph, as in :class:`models.hmr2.HMR2`), output ``heatmaps``
(B, 17, 64, 48) / ``f_imgseq`` (B, 1024).

How the parameter names are recovered (never by comparing values with original weights):

0. Initializers that the TorchScript exporter de-duplicated (equal values) are aliases
   ``name = Identity(kept initializer)``: each alias counts as an initializer of its own name.
1. Initializers that still carry a parameter name (``backbone.blocks.0.norm1.weight``, or with a wrapper
   prefix such as ``model.``) are matched to our state-dict keys by the longest dotted suffix.
2. Initializers that the exporter folded into new constants (TorchScript exporter with
   ``do_constant_folding=True``: ``onnx::MatMul_123`` = a Linear weight transposed, ``onnx::Add_45`` = the
   two slices ``pos_embed[:, 1:]`` and ``pos_embed[:, :1]``; dynamo exporter: ``val_54``) are named after
   the node consuming them. The node's module scope (TorchScript: the node name
   ``/backbone/blocks.0/attn/qkv/MatMul``; dynamo: the ``pkg.torch.onnx.name_scopes`` metadata) is matched
   against our module tree, and the operator and input slot give the parameter and the inverse transform
   (``MatMul(x, W)`` of a Linear → ``weight = W.T``; ``Gemm`` per ``transB``; Conv/ConvTranspose,
   LayerNormalization and BatchNormalization by input slot; the ViT's ``Add`` of a (1, 1, C) / (1, N, C)
   constant → the class slot / token rows of ``pos_embed``).
3. A BatchNorm folded into the (transposed) convolution before it (the dynamo exporter's optimizer does
   this to ViTPose's head; the fused node carries the BatchNorm's scope and a new bias): the convolution
   gets the folded weight and the BatchNorm becomes an exact ``x + bias`` (weight 1, mean 0, variance
   ``1 - eps``), the same function as the file's, no longer the original split into two layers.
4. BatchNorm's ``num_batches_tracked`` is not in an ONNX graph; it is set to 0 (unused in eval).

Anything else in the graph (shape constants, scalars) is ignored. Strict loading then requires every
parameter and buffer of the module with its exact shape and rejects any leftover named initializer, so an
unrecognised layout fails loudly instead of running with missing weights.
"""

from __future__ import annotations

import ast
import logging
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import torch
from google.protobuf.message import DecodeError
from onnx import numpy_helper
from torch import nn

from .hmr2 import HMR2, DecoderDims
from .vit import CheckpointError, ViT, ViTDims, load_strict
from .vitpose import HeadDims, ViTPose

__all__ = ["OnnxImportError", "Kind", "load_onnx_as_torch", "onnx_kind", "state_dict_from_onnx"]

log = logging.getLogger(__name__)

Kind = Literal["vitpose", "hmr2"]
KINDS: tuple[str, ...] = ("vitpose", "hmr2")
#: graph input width and output name of each kind (GEM's export signature)
SIGNATURE: dict[str, tuple[int, str]] = {"vitpose": (192, "heatmaps"), "hmr2": (256, "f_imgseq")}

_NAME_SCOPES = "pkg.torch.onnx.name_scopes"  # dynamo exporter's node metadata
_PARAM_NAME = re.compile(r"[A-Za-z_]\w*(\.\w+)+")  # a dotted module path; excludes onnx::X_1, val_1, a/b
_VIT_BLOCK = re.compile(r"(?:^|[./])blocks\.(\d+)(?:$|[./])")
_POS_PIECES = ("class", "tokens")  # transforms of the two folded slices of the ViT's pos_embed
_DEC_LAYER = re.compile(r"(?:^|[./])layers\.(\d+)(?:$|[./])")


class OnnxImportError(CheckpointError):
    """The file is not an importable ViTPose/HMR2 ONNX export; the message names the file and the problem."""


# ---- public API -------------------------------------------------------------------------------------------


def state_dict_from_onnx(path: str | Path, kind: Kind | None = None) -> dict[str, torch.Tensor]:
    """Our module's state dict (``backbone.*`` + ``keypoint_head.*`` for ViTPose, ``backbone.*`` +
    ``smpl_head.transformer.*`` for HMR2) recovered from an ONNX export.

    ``kind``: ``"vitpose"`` or ``"hmr2"``; ``None`` tells it from the graph's signature (:func:`onnx_kind`).
    Tensors keep the file's dtype (float32 for the published files); external data is memory-mapped
    copy-on-write from the sidecar, and recovered Linear weights are transposed views, so nothing is copied
    until the tensors are loaded into a module. Shapes are those of the module, e.g. ViT-H
    ``backbone.pos_embed`` (1, 193, 1280), ``backbone.blocks.0.attn.qkv.weight`` (3840, 1280).

    A BatchNorm that the exporter folded into the convolution before it comes back as an exact shift (see
    the module docstring), so those keys hold the file's function, not the original split. Named
    initializers that are not parameters of our module are returned under their name without the wrapper
    prefix (strict loading rejects them); unrecognised constants are dropped. Raises
    :class:`OnnxImportError` for a missing, truncated or foreign file or a missing/truncated sidecar.
    """
    path = Path(path)
    model = _read_model(path)
    graph = model.graph
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    try:
        detected = onnx_kind(model, path)
    except OnnxImportError:
        if kind is None:
            raise
        detected = kind  # an unusual signature: the weights decide (strict loading)
    if kind is None:
        kind = detected
    elif kind != detected:
        width, output = SIGNATURE[kind]
        raise OnnxImportError(
            f"{path}: this is a {detected} export, not {kind} (input width / output name "
            f"{_signature(graph)}, expected {width} / {output!r})"
        )
    template = _Template(kind, graph)
    inits = {t.name: t for t in graph.initializer}
    for node in graph.node:  # the TorchScript exporter replaces equal initializers by Identity(first one)
        if node.op_type == "Identity" and node.input and node.input[0] in inits:
            inits[node.output[0]] = inits[node.input[0]]
    sources: dict[str, list[tuple[str, str]]] = defaultdict(list)  # key -> [(initializer, transform)]
    used: set[str] = set()
    prefixes: set[str] = set()

    # 1. initializers that kept a parameter name
    for name in inits:
        key = template.key_for_name(name) if _PARAM_NAME.fullmatch(name) else None
        if key is not None:
            sources[key].append((name, ""))
            used.add(name)
            if name.endswith(key):
                prefixes.add(name[: len(name) - len(key)])

    # 2. every (initializer → consuming node) edge, resolved through the node's module scope
    folded: dict[str, str] = {}
    for node in graph.node:
        slots = [(i, n) for i, n in enumerate(node.input) if n in inits]
        if not slots:
            continue
        module = template.module_for_scopes(*_scopes(node))
        if module is None:
            continue
        for index, name in slots:
            role = _role(template, module, node, index, list(inits[name].dims))
            if role is None:
                continue
            key, transform = role
            if (name, transform) not in sources[key]:
                sources[key].append((name, transform))
            if name not in used:
                folded[name] = key + (f" ({transform})" if transform else "")
            used.add(name)

    read = _Reader(path)
    sd = _assemble(path, sources, inits, template, read)
    # 3. a BatchNorm folded into the convolution before it (the dynamo exporter's optimizer does this): the
    # convolution holds the folded weight, the BatchNorm becomes x + bias exactly (scale 1: fl(var + eps) = 1)
    for key, srcs in sources.items():
        if any(t == "bn" for _, t in srcs):
            bn = key.rsplit(".", 1)[0]
            if any(f"{bn}.{b}" in sources for b in ("weight", "running_mean", "running_var")):
                raise OnnxImportError(
                    f"{path}: {bn} is both folded into a convolution and present in the graph"
                )
            bias, eps = sd[key], template.modules[bn].eps
            sd[f"{bn}.weight"] = torch.ones_like(bias)
            sd[f"{bn}.running_mean"] = torch.zeros_like(bias)
            sd[f"{bn}.running_var"] = torch.full_like(bias, 1.0 - eps)
            log.info("%s: %s was folded into the convolution before it; imported as a shift", path.name, bn)
    # 4. BatchNorm's step counter is not part of an inference graph
    for q, m in template.modules.items():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and f"{q}.running_mean" in sd:
            sd.setdefault(f"{q}.num_batches_tracked", torch.tensor(0, dtype=torch.long))

    # leftover named initializers: report them to strict loading under their unwrapped name
    prefix = next(iter(prefixes)) if len(prefixes) == 1 else ""
    leftovers = [n for n in inits if n not in used and _PARAM_NAME.fullmatch(n)]
    for name in leftovers:
        stripped = name[len(prefix) :] if prefix and name.startswith(prefix) else name
        sd.setdefault(stripped, read(inits[name]))
    dropped = len(inits) - len(used) - len(leftovers)
    if folded:
        log.info(
            "%s: %d weights recovered from folded constants, e.g. %s",
            path.name,
            len(folded),
            ", ".join(f"{n} -> {k}" for n, k in list(folded.items())[:2]),
        )
    log.debug("%s: %d constants that are no parameters ignored", path.name, dropped)
    return sd


def load_onnx_as_torch(
    path: str | Path,
    kind: Kind,
    device: torch.device | str = "cpu",
    *,
    bf16: bool = False,
    num_heads: int | None = None,
    decoder_heads: int | None = None,
) -> ViTPose | HMR2:
    """A :class:`models.vitpose.ViTPose` (``kind="vitpose"``: ``imgs`` (B, 3, 256, 192) → (B, 17, 64, 48)) or
    :class:`models.hmr2.HMR2` (``"hmr2"``: (B, 3, 256, 256) → (B, 1024)) in eval mode on ``device``, with the
    weights of the ONNX export at ``path`` (its ``.onnx.data`` sidecar next to it).

    Dimensions come from the weights as in :func:`models.vitpose.load_vitpose` /
    :func:`models.hmr2.load_hmr2`; the head counts are not recorded in the weights: ``num_heads`` (backbone,
    default ViT-H's 16, required for other widths) and, for HMR2 only, ``decoder_heads`` (default 8 of 64).
    ``bf16``: bf16 autocast when the input is on CUDA. Loading is strict: a missing or mis-shaped weight or a
    named initializer that is not ours raises :class:`OnnxImportError` naming the keys.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    if kind == "vitpose" and decoder_heads is not None:
        raise ValueError("decoder_heads applies to HMR2 only")
    sd = state_dict_from_onnx(path, kind)
    try:
        vit = ViTDims.from_state_dict(sd, num_heads)
        if kind == "vitpose":
            dims = HeadDims.from_state_dict(sd)
        else:
            dims = DecoderDims.from_state_dict(sd, decoder_heads)
    except KeyError as e:
        raise OnnxImportError(
            f"{path}: not a complete {kind} export: weight {e} could not be recovered from the graph"
        ) from None
    except ValueError as e:
        raise OnnxImportError(f"{path}: {e}") from None
    with torch.device("meta"):
        model = ViTPose(vit, dims, bf16=bf16) if kind == "vitpose" else HMR2(vit, dims, bf16=bf16)
    try:
        return load_strict(model, sd, (), str(path), device)
    except CheckpointError as e:
        raise OnnxImportError(str(e)) from None


def onnx_kind(model: onnx.ModelProto, path: str | Path = "<model>") -> Kind:
    """``"vitpose"`` or ``"hmr2"`` from an ``onnx.ModelProto``'s signature: input width 192 / 256 (a static
    last input axis), else output name ``heatmaps`` / ``f_imgseq``."""
    width, output = _signature(model.graph)
    by_width = [k for k, (w, _) in SIGNATURE.items() if w == width]
    by_output = [k for k, (_, out) in SIGNATURE.items() if out == output]
    if by_width or (width is None and by_output):
        return (by_width or by_output)[0]  # type: ignore[return-value]
    raise OnnxImportError(
        f"{path}: not a ViTPose or HMR2 export: input width / output name {width} / {output!r}, "
        f"expected 192 / 'heatmaps' or 256 / 'f_imgseq'"
    )


# ---- reading the file -------------------------------------------------------------------------------------


def _read_model(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise OnnxImportError(f"{path}: no such ONNX file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, OSError) as e:
        raise OnnxImportError(
            f"{path}: not a readable ONNX model (truncated or another format): {e}"
        ) from None
    if not model.graph.node or not model.graph.input or not model.graph.output:
        raise OnnxImportError(f"{path}: not a readable ONNX model (truncated or another format): empty graph")
    return model


def _signature(graph: onnx.GraphProto) -> tuple[int | None, str | None]:
    """(static width of the first input or None, name of the first output)."""
    width = None
    if graph.input:
        dims = graph.input[0].type.tensor_type.shape.dim
        if len(dims) == 4 and dims[3].HasField("dim_value"):
            width = dims[3].dim_value
    return width, graph.output[0].name if graph.output else None


class _Reader:
    """Initializers as tensors; external data is memory-mapped copy-on-write, one map per sidecar file."""

    def __init__(self, path: Path):
        self.path = path
        self._maps: dict[Path, np.memmap] = {}

    def __call__(self, t: onnx.TensorProto) -> torch.Tensor:
        path = self.path
        if t.data_location != onnx.TensorProto.EXTERNAL:
            return torch.from_numpy(np.array(numpy_helper.to_array(t)))
        info = {e.key: e.value for e in t.external_data}
        location = info.get("location", "")
        data = path.parent / location
        if not location or Path(location).is_absolute() or ".." in Path(location).parts:
            raise OnnxImportError(
                f"{path}: tensor {t.name!r} has an unsafe external data location {location!r}"
            )
        if not data.is_file():
            raise OnnxImportError(
                f"{path}: external data file {data.name} (tensor {t.name!r}) not found in {data.parent}"
            )
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type))  # ONNX stores little-endian
        shape = tuple(int(d) for d in t.dims)
        nbytes = math.prod(shape) * dtype.itemsize
        offset = int(info.get("offset", 0))
        length = int(info.get("length", nbytes))
        if length != nbytes:
            raise OnnxImportError(
                f"{path}: tensor {t.name!r} {shape} needs {nbytes} bytes, its external data {length}"
            )
        size = data.stat().st_size
        if offset + nbytes > size:
            raise OnnxImportError(
                f"{path}: external data file {data.name} is truncated: tensor {t.name!r} needs bytes "
                f"{offset}..{offset + nbytes}, the file has {size}"
            )
        if nbytes == 0:
            return torch.from_numpy(np.zeros(shape, dtype))
        if data not in self._maps:
            self._maps[data] = np.memmap(data, dtype=np.uint8, mode="c")
        arr = self._maps[data][offset : offset + nbytes].view(dtype).reshape(shape)
        if not arr.flags.aligned:
            arr = np.array(arr)
        return torch.from_numpy(arr)


# ---- module scopes → our module tree ----------------------------------------------------------------------


def _unqualified(name: str) -> str:
    """The exporter's per-module scope name: the last non-numeric atom and the indices after it
    (``backbone.blocks.0`` → ``blocks.0``, ``smpl_head.transformer.transformer.layers.0.0`` →
    ``layers.0.0``)."""
    atoms = name.split(".")
    for i in range(len(atoms) - 1, -1, -1):
        if not atoms[i].isnumeric():
            return ".".join(atoms[i:])
    return name


def _scopes(node: onnx.NodeProto) -> tuple[list[str], bool]:
    """Module scopes of a node, outermost first ([] when the exporter recorded none), and whether they are
    qualified module paths.

    dynamo exporter: metadata ``pkg.torch.onnx.name_scopes`` (``['', 'backbone', 'backbone.blocks.0', ...,
    'linear']``) or ``namespace`` (``: HMR2/backbone: ViT/.../linear: aten.linear.default``), qualified;
    TorchScript exporter: the node name (``/backbone/blocks.0/attn/qkv/MatMul``), one unqualified name per
    called module. The last entry (the op) is dropped.
    """
    meta = {p.key: p.value for p in node.metadata_props}
    if _NAME_SCOPES in meta:
        try:
            value = ast.literal_eval(meta[_NAME_SCOPES])
        except (ValueError, SyntaxError):
            value = None
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return [n for n in value[:-1] if n], True
    if "namespace" in meta:
        names = [part.split(":")[0].strip() for part in meta["namespace"].split("/")][:-1]
        return [n for n in names if n], True
    if node.name.startswith("/"):
        return [n for n in node.name.split("/")[1:-1] if n], False
    return [], False


class _Template:
    """Names and module types of our model for the file's depths (other sizes are dummies: only the module
    tree and the state-dict keys are used, on the meta device)."""

    def __init__(self, kind: str, graph: onnx.GraphProto):
        words = [t.name for t in graph.initializer] + [n.name for n in graph.node]
        words += [p.value for n in graph.node for p in n.metadata_props if p.key == _NAME_SCOPES]
        vit_depth = _count(_VIT_BLOCK, words)
        vit = ViTDims(embed_dim=8, depth=max(vit_depth, 1), num_heads=1, mlp_dim=8)
        with torch.device("meta"):
            if kind == "vitpose":
                model: nn.Module = ViTPose(vit, HeadDims(8, (8, 8), 1))
            else:
                dec = DecoderDims(8, max(_count(_DEC_LAYER, words), 1), 1, 8, 8, 8)
                model = HMR2(vit, dec)
        self.modules: dict[str, nn.Module] = dict(model.named_modules())
        self.keys: list[str] = list(model.state_dict().keys())
        self._by_suffix: dict[str, list[str]] = defaultdict(list)
        for key in self.keys:
            atoms = key.split(".")
            for i in range(len(atoms)):
                self._by_suffix[".".join(atoms[i:])].append(key)
        self._chains: dict[str, list[str]] = {}
        self._by_unqualified: defaultdict[str, list[str]] = defaultdict(list)
        for q in self.modules:
            if q:
                atoms = q.split(".")
                self._chains[q] = [_unqualified(".".join(atoms[: i + 1])) for i in range(len(atoms))]
                self._by_unqualified[self._chains[q][-1]].append(q)
        self._cache: dict[tuple, str | None] = {}

    def key_for_name(self, name: str) -> str | None:
        """Our state-dict key for an initializer name, allowing a wrapper prefix (``model.backbone.x`` →
        ``backbone.x``) or a missing outer prefix (``transformer.x`` → ``smpl_head.transformer.x``);
        None when unknown or ambiguous."""
        atoms = name.split(".")
        for i in range(len(atoms)):
            suffix = ".".join(atoms[i:])
            keys = self._by_suffix.get(suffix)
            if keys:
                if suffix in keys:
                    return suffix
                return keys[0] if len(keys) == 1 else None
        return None

    def sibling(self, q: str, step: int) -> str | None:
        """The module ``step`` places after ``q`` in the same Sequential, if it is a convolution (step -1)
        or a BatchNorm (step +1): the pair an exporter may fuse."""
        parent, _, idx = q.rpartition(".")
        if not idx.isnumeric():
            return None
        other = f"{parent}.{int(idx) + step}" if parent else str(int(idx) + step)
        kind = nn.modules.conv._ConvNd if step < 0 else nn.modules.batchnorm._BatchNorm
        return other if isinstance(self.modules.get(other), kind) else None

    def module_for_scopes(self, scopes: list[str], qualified: bool) -> str | None:
        """The qualified name of our module a node belongs to, from its scopes (:func:`_scopes`).

        A qualified innermost scope is our module name after stripping a wrapper prefix
        (``model.smpl_head.transformer`` → ``smpl_head.transformer``). Otherwise (or if that finds none) the
        innermost scope must be the module's own unqualified name and the longest tail of the scopes must
        follow the module's ancestors in order (the exporter omits modules that are not called, a wrapper
        adds outer scopes); ties go to the module with fewer ancestors, and a remaining tie to None."""
        if not scopes:
            return None
        cache_key = (qualified, *scopes)
        if cache_key in self._cache:
            return self._cache[cache_key]
        found = None
        if qualified:
            atoms = scopes[-1].split(".")
            found = next((q for i in range(len(atoms)) if (q := ".".join(atoms[i:])) in self._chains), None)
        if found is None:
            names = [_unqualified(s) for s in scopes]
            ranked = sorted(
                (
                    (-_tail_match(names, self._chains[q]), len(self._chains[q]), q)
                    for q in self._by_unqualified[names[-1]]
                ),
            )
            if ranked and (len(ranked) == 1 or ranked[0][:2] != ranked[1][:2]):
                found = ranked[0][2]
        self._cache[cache_key] = found
        return found


def _count(pattern: re.Pattern, words: Iterable[str]) -> int:
    """1 + the largest index the pattern captures in any of the words (0 if none)."""
    return max((int(m.group(1)) + 1 for w in words for m in pattern.finditer(w)), default=0)


def _tail_match(scopes: list[str], chain: list[str]) -> int:
    """How many of the last scopes appear, in order, in ``chain`` (matching from the end)."""
    j, n = len(chain) - 1, 0
    for s in reversed(scopes):
        while j >= 0 and chain[j] != s:
            j -= 1
        if j < 0:
            break
        n, j = n + 1, j - 1
    return n


# ---- operator slot → parameter ----------------------------------------------------------------------------


def _role(
    template: _Template, q: str, node: onnx.NodeProto, index: int, dims: list[int]
) -> tuple[str, str] | None:
    """(state-dict key, transform) of the initializer in input slot ``index`` of ``node``, which belongs to
    our module ``q``; None if the slot holds no parameter of ours.

    Transforms: ``""`` as stored, ``"T"`` transposed (ONNX ``MatMul(x, W)`` of a Linear holds ``weight.T``),
    ``"class"`` / ``"tokens"``: rows ``[:1]`` / ``[1:]`` of the ViT's ``pos_embed`` (its forward adds both
    slices, which constant folding turns into two constants), ``"bn"``: the bias of a convolution into which
    the BatchNorm after it was folded (the key is the BatchNorm's bias).
    """
    module, op = template.modules[q], node.op_type
    key = f"{q}.{{}}".format
    if isinstance(module, nn.Linear):
        if op == "MatMul" and index == 1 and len(dims) == 2:
            return key("weight"), "T"
        if op == "Gemm":
            attrs = {a.name: a for a in node.attribute}
            if attrs.get("transA") and attrs["transA"].i:
                return None
            if any(k in attrs and attrs[k].f != 1.0 for k in ("alpha", "beta")):
                return None
            if index == 1:
                return key("weight"), "" if attrs.get("transB") and attrs["transB"].i else "T"
            if index == 2:
                return key("bias"), ""
        if op == "Add" and len(dims) == 1:
            return key("bias"), ""
        return None
    if isinstance(module, nn.modules.conv._ConvNd):
        if op in ("Conv", "ConvTranspose") and index == 1:
            return key("weight"), ""
        if op in ("Conv", "ConvTranspose") and index == 2:
            if module.bias is not None:
                return key("bias"), ""
            bn = template.sibling(q, +1)
            return (f"{bn}.bias", "bn") if bn is not None else None
        return None
    if isinstance(module, nn.LayerNorm):
        if op == "LayerNormalization" and index in (1, 2):
            return key(("weight", "bias")[index - 1]), ""
        return None
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        if op == "BatchNormalization" and 1 <= index <= 4:
            return key(("weight", "bias", "running_mean", "running_var")[index - 1]), ""
        if op in ("Conv", "ConvTranspose"):  # the fused node carries the BatchNorm's scope
            conv = template.sibling(q, -1)
            if conv is not None and index == 1:
                return f"{conv}.weight", ""
            if conv is not None and index == 2:
                return key("bias"), "bn"
        return None
    if isinstance(module, ViT):
        if op == "Add" and len(dims) == 3 and dims[0] == 1:
            return key("pos_embed"), "class" if dims[1] == 1 else "tokens"
        return None
    own = list(module.named_parameters(recurse=False))
    if op == "Add" and len(own) == 1 and own[0][1].dim() == len(dims):
        return key(own[0][0]), ""  # e.g. the decoder's pos_embedding (a no-op slice [:, :1] folded)
    return None


def _assemble(
    path: Path,
    sources: Mapping[str, list[tuple[str, str]]],
    inits: Mapping[str, onnx.TensorProto],
    template: _Template,
    read: _Reader,
) -> dict[str, torch.Tensor]:
    """One tensor per key from its sources; several sources must agree exactly."""
    sd: dict[str, torch.Tensor] = {}
    for key in template.keys:
        found = sources.get(key)
        if not found:
            continue
        pieces = {t: read(inits[n]) for n, t in found if t in _POS_PIECES}
        values = [(n, _transform(read(inits[n]), t)) for n, t in found if t not in _POS_PIECES]
        if pieces:
            if set(pieces) != {"class", "tokens"}:
                if not values:
                    raise OnnxImportError(
                        f"{path}: only the {next(iter(pieces))} rows of {key} were found in the graph"
                    )
            else:
                values.append(("slices of " + key, torch.cat([pieces["class"], pieces["tokens"]], dim=1)))
        name, value = values[0]
        for other, v in values[1:]:
            if v.shape != value.shape or not torch.equal(v, value):
                raise OnnxImportError(
                    f"{path}: {key} is ambiguous: initializers {name!r} and {other!r} disagree"
                )
        sd[key] = value
    return sd


def _transform(t: torch.Tensor, transform: str) -> torch.Tensor:
    if transform == "T":
        return t.T
    return t
