"""Strict loading of a GEM checkpoint (official ``gem_smpl.ckpt`` or the reduced parity one) as
``GemNetwork``.

Procedure:

1. Read the file (``read_checkpoint``): a Lightning checkpoint ``{"state_dict": ...}`` or a bare state dict.
2. ``remap_keys``: strip a leading ``model.`` when every key has it; if an embedder exists only under the
   legacy ``pipeline.denoiser3d.denoiser.<embedder>`` namespace, move it back to the top level (the reference
   would silently keep random weights there).
3. Translate every key to this implementation's parameter names (``_RENAMES``), or classify it as
   deliberately ignored (``IGNORED``, each with its reason). A key that is neither is an error, and so is a
   needed key that is missing or has the wrong shape: no parameter is ever left at its initial value.
"""

from __future__ import annotations

import io
import logging
import math
import pickle
import re
import types
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch

from .dims import DENOISER_PREFIX, GemDims
from .network import GemNetwork

__all__ = ["GemCheckpointError", "load_gem", "read_checkpoint", "remap_keys", "IGNORED"]

log = logging.getLogger(__name__)
DEN = re.escape(DENOISER_PREFIX)
#: embedders the reference's loader dual-writes under the denoiser namespace (gem/utils/ckpt_compat.py)
_EMBEDDERS = (
    "learned_pos_params",
    "learned_pos_linear.",
    "embed_noisyobs.",
    "cliffcam_embedder.",
    "imgseq_embedder.",
    "cam_angvel_embedder.",
    "cond_exists_embedder.",
)

#: (checkpoint key pattern, reason) of keys that are present in a checkpoint but deliberately not used
IGNORED: tuple[tuple[str, str], ...] = (
    (r"music_embedder\.", "no music input in estimation (the music exists-embedder bias is used)"),
    (r"audio_(encoder|embedder)\.", "no audio input in estimation (the audio exists-embedder bias is used)"),
    (r"text_encoder\.", "T5 text encoder: not loaded by gem_smpl (load_llm false); text is zeros"),
    (DEN + r"text_encoder_layers\.\d+\.motion_pos_encoder\.pe$", "per-text-block PE, unused (no motion PE)"),
    (DEN + r"embed_timestep\.sequence_pos_encoder\.pe$", "duplicate of sequence_pos_encoder.pe (shared)"),
    (
        DEN + "(" + "|".join(re.escape(p) for p in _EMBEDDERS) + ")",
        "dual-written copy of a top-level embedder",
    ),
    (
        r"(pipeline\.(denoiser3d\.)?endecoder|endecoder|body_model|feature_extractor)[.]",
        "reference's ignored prefixes: statistics/body-model buffers rebuilt from code",
    ),
)

#: checkpoint key → parameter name of GemNetwork (regex, replacement); the first match wins
_RENAMES: tuple[tuple[str, str], ...] = (
    (DEN + r"sequence_pos_encoder\.pe$", "denoiser.pos_table"),
    (DEN + r"embed_timestep\.time_embed\.0\.", "denoiser.time_embed.fc1."),
    (DEN + r"embed_timestep\.time_embed\.2\.", "denoiser.time_embed.fc2."),
    (DEN + r"(blocks|text_encoder_layers)\.(\d+)\.", r"denoiser.\1.\2."),
    (DEN + r"(embed_text|add_cond_linear|final_layer|pred_cam_head|static_conf_head)\.", r"denoiser.\1."),
    (r"(learned_pos_linear\.|learned_pos_params$|embed_noisyobs\.)", r"conditions.\1"),
    (r"(cliffcam|cam_angvel)_embedder\.0\.", r"conditions.\1.fc1."),
    (r"(cliffcam|cam_angvel)_embedder\.3\.", r"conditions.\1.fc2."),
    (r"imgseq_embedder\.0\.", "conditions.imgseq_norm."),
    (r"imgseq_embedder\.1\.", "conditions.imgseq_proj."),
    (r"cond_exists_embedder\.(\w+)\.0\.", r"conditions.exists.\1.fc1."),
    (r"cond_exists_embedder\.(\w+)\.2\.", r"conditions.exists.\1.fc2."),
)


class GemCheckpointError(RuntimeError):
    """The file is not a usable GEM checkpoint; the message says why."""


def load_gem(
    source: str | Path | Mapping[str, torch.Tensor],
    device: torch.device | str = "cpu",
    *,
    num_heads: int | None = None,
) -> GemNetwork:
    """Build a ``GemNetwork`` in eval mode from a checkpoint file or an already loaded state dict.

    ``num_heads``: attention heads, not recorded in the weights (default 8, the official model's; see dims).
    """
    name = str(source) if isinstance(source, str | Path) else "state dict"
    raw = read_checkpoint(source) if isinstance(source, str | Path) else _state_dict_of(source, name)
    sd = remap_keys(raw)
    try:
        dims = GemDims.from_state_dict(sd, num_heads)
    except (KeyError, ValueError) as e:
        raise GemCheckpointError(f"{name}: not a GEM estimation checkpoint: {e.args[0]}") from None
    with torch.device("meta"):
        net = GemNetwork(dims)
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    params, ignored, unknown = {}, [], []
    for key, value in sd.items():
        if _ignore_reason(key):
            ignored.append(key)
            continue
        target = _translate(key)
        if target in expected:
            if target == "denoiser.pos_table" and value.numel() == expected[target][0] * expected[target][1]:
                value = value.reshape(expected[target])  # stored as (rows, 1, D)
            params[target] = value
        else:
            unknown.append(key)
    missing = sorted(set(expected) - set(params))
    problems = []
    if missing:
        problems.append(f"{len(missing)} needed weights missing, e.g. {_first(missing)}")
    if unknown:
        problems.append(f"{len(unknown)} unrecognised keys, e.g. {_first(unknown)}")
    for key, value in params.items():
        if tuple(value.shape) != expected[key]:
            problems.append(f"'{key}' has shape {tuple(value.shape)}, expected {expected[key]}")
        elif not value.is_floating_point():
            problems.append(f"'{key}' has dtype {value.dtype}, expected floating point")
    if problems:
        raise GemCheckpointError(f"{name}: " + "; ".join(problems))
    net = net.to_empty(device=device)
    net.load_state_dict(params, strict=True)
    for reason in sorted({_ignore_reason(k) for k in ignored}):
        keys = [k for k in ignored if _ignore_reason(k) == reason]
        log.info("%s: ignored %d keys (%s), e.g. %s", name, len(keys), reason, keys[0])
    _check_pos_table(net.denoiser.pos_table, name)
    return net.eval()


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of a checkpoint file, loaded with ``weights_only=True`` wherever possible.

    A Lightning checkpoint also pickles non-tensor objects (hyper-parameters as OmegaConf containers, callback
    and loop states, ...). torch ≥ 2.6 loads with ``weights_only=True`` by default and refuses any class
    outside its allow-list, so such a file fails there even though only its tensors are wanted. For that case
    only, and only for the file the caller pointed at, it is read again with ``weights_only=False`` but
    through our own restricted unpickler (``_OpaqueUnpickler``): it resolves nothing but the tensor-rebuild
    functions and plain containers and turns every other class into an inert placeholder, so no code from the
    file or from the classes it names is imported or run. The placeholders are dropped; only tensors are used.
    """
    path = Path(path)
    if not path.is_file():
        raise GemCheckpointError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise GemCheckpointError(f"{path}: empty file")
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):  # legacy (non-zip) format cannot be memory-mapped: read it normally
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        obj = _load_restricted(path)
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as e:
        raise GemCheckpointError(f"{path}: unreadable, truncated or not a torch checkpoint ({e})") from None
    return _state_dict_of(obj, str(path))


def remap_keys(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Legacy key remaps of the reference: strip ``model.``; embedders only under the denoiser → top level."""
    keys = list(sd)
    strip = bool(keys) and all(k.startswith("model.") for k in keys)
    out = {(k[6:] if strip else k): v for k, v in sd.items()}
    for key in list(out):
        if key.startswith(DENOISER_PREFIX):
            short = key[len(DENOISER_PREFIX) :]
            if short.startswith(_EMBEDDERS) and short not in out:
                out[short] = out[key]
    return out


def _translate(key: str) -> str | None:
    for pattern, repl in _RENAMES:
        if re.match(pattern, key):
            return re.sub(pattern, repl, key, count=1)
    return None


def _ignore_reason(key: str) -> str | None:
    return next((reason for pattern, reason in IGNORED if re.match(pattern, key)), None)


def _first(keys: list[str], n: int = 3) -> str:
    return ", ".join(f"'{k}'" for k in keys[:n]) + (", ..." if len(keys) > n else "")


def _state_dict_of(obj: object, name: str) -> dict[str, torch.Tensor]:
    sd = obj.get("state_dict", obj) if isinstance(obj, Mapping) else obj
    if not isinstance(sd, Mapping) or not sd:
        raise GemCheckpointError(
            f"{name}: expected a checkpoint dict with a 'state_dict', got {type(obj).__name__}"
        )
    tensors = {k: v for k, v in sd.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if len(tensors) != len(sd):
        raise GemCheckpointError(f"{name}: the state dict holds non-tensor entries; not a model checkpoint")
    return tensors


def _check_pos_table(table: torch.Tensor, name: str) -> None:
    """The stored PE table should be the closed-form sinusoid; warn if it is not."""
    n, d = table.shape
    position = torch.arange(n, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    ref = torch.stack([torch.sin(position * freq), torch.cos(position * freq)], dim=-1).flatten(1)
    err = float((table.detach().cpu() - ref).abs().max())
    if err > 1e-3:
        warnings.warn(f"{name}: sequence_pos_encoder.pe differs from the sinusoid by {err:.2e}", stacklevel=3)


# ---- restricted unpickler for checkpoints with non-tensor objects ------------------------------------------
_SAFE_GLOBALS = {
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch", "Size"),
    *{(m, n) for m in ("builtins", "__builtin__") for n in ("set", "frozenset", "complex", "slice")},
}


class _Opaque:
    """Placeholder for any pickled object whose class is not on the allow-list; records nothing."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, value):
        pass

    def extend(self, values):
        pass


class _OpaqueUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype | torch.layout):
            return getattr(torch, name)
        return type(name, (_Opaque,), {"__module__": f"opaque.{module}"})


_RESTRICTED = types.SimpleNamespace(
    __name__="gem_restricted_pickle",
    Unpickler=_OpaqueUnpickler,
    load=lambda f, **kw: _OpaqueUnpickler(f, **kw).load(),
    loads=lambda b, **kw: _OpaqueUnpickler(io.BytesIO(b), **kw).load(),
)


def _load_restricted(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_RESTRICTED)
    except Exception as e:  # noqa: BLE001 - any failure here means the file is unusable
        raise GemCheckpointError(f"{path}: could not read its tensors ({type(e).__name__}: {e})") from None
