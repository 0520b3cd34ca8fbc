"""The plain ViT backbone shared by ViTPose-H and HMR2, as in the GEM reference.

Input (B, 3, 256, 192) normalised crops → output (B, C, 16, 12) feature map after the final LayerNorm.
Parameter names are those of the reference checkpoints under ``backbone.``: ``patch_embed.proj``,
``pos_embed``, ``blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}`` (exactly timm's ``Block``
layout, so timm's blocks are used) and ``last_norm``.

Two quirks of the reference are reproduced: the 16×16 patch convolution has padding 2 (a 256×192 input still
gives a 16×12 grid), and ``pos_embed`` has one more row than there are tokens — a class slot without a class
token — which is added to *every* token together with the token's own row.

The head count is not recorded in the weights; it comes from the caller (16 for the official ViT-H).
Attention uses ``F.scaled_dot_product_attention`` (timm's fused path); the model wrappers switch bf16 autocast
on CUDA with their ``bf16`` flag (:func:`autocast_for`). Strict checkpoint loading shared by both models is at
the end (:func:`load_strict`).
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from timm.models.vision_transformer import Block
from torch import nn

from .gem.checkpoint import GemCheckpointError, read_checkpoint

__all__ = ["VIT_H", "CheckpointError", "ViT", "ViTDims", "autocast_for", "load_strict", "read_state_dict"]

log = logging.getLogger(__name__)

# ---- reference architecture constants (ViTPose-H / HMR2 backbone) -----------------------------------------
IMG_SIZE = (256, 192)  # (H, W) of the backbone input
PATCH_SIZE = 16
PATCH_PADDING = 2  # reference: padding = 4 + 2 * (ratio // 2 - 1) with ratio 1
LN_EPS = 1e-6


@dataclass(frozen=True)
class ViTDims:
    """Sizes of a ViT; everything but ``num_heads`` can be read from a state dict."""

    embed_dim: int
    depth: int
    num_heads: int
    mlp_dim: int
    qkv_bias: bool = True

    @property
    def grid(self) -> tuple[int, int]:
        """Token grid (rows, cols) for the 256×192 input."""
        return tuple((s + 2 * PATCH_PADDING - PATCH_SIZE) // PATCH_SIZE + 1 for s in IMG_SIZE)

    @classmethod
    def from_state_dict(
        cls, sd: Mapping[str, torch.Tensor], num_heads: int | None, prefix: str = "backbone."
    ) -> ViTDims:
        """Read the dimensions from ``{prefix}*`` keys. ``num_heads=None`` means the official ViT-H (16 heads
        of 80), accepted only for width 1280. Raises ``KeyError``/``ValueError`` with the offending key."""
        embed_dim = sd[prefix + "patch_embed.proj.weight"].shape[0]
        depth = 0
        while f"{prefix}blocks.{depth}.norm1.weight" in sd:
            depth += 1
        if depth == 0:
            raise KeyError(f"{prefix}blocks.0.norm1.weight")
        mlp_dim = sd[prefix + "blocks.0.mlp.fc1.weight"].shape[0]
        if num_heads is None:
            if embed_dim != VIT_H.embed_dim:
                raise ValueError(f"width {embed_dim} is not ViT-H's: the number of heads must be given")
            num_heads = VIT_H.num_heads
        if embed_dim % num_heads:
            raise ValueError(f"width {embed_dim} is not divisible by {num_heads} heads")
        return cls(embed_dim, depth, num_heads, mlp_dim, qkv_bias=prefix + "blocks.0.attn.qkv.bias" in sd)


VIT_H = ViTDims(embed_dim=1280, depth=32, num_heads=16, mlp_dim=5120)


class _PatchEmbed(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=PATCH_SIZE, stride=PATCH_SIZE, padding=PATCH_PADDING)


class ViT(nn.Module):
    """Plain ViT (pre-norm timm blocks, exact GELU, LayerNorm eps 1e-6), eval-only (no drop-path)."""

    def __init__(self, dims: ViTDims):
        super().__init__()
        self.dims = dims
        rows, cols = dims.grid
        self.patch_embed = _PatchEmbed(dims.embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, rows * cols + 1, dims.embed_dim))
        norm = partial(nn.LayerNorm, eps=LN_EPS)
        self.blocks = nn.ModuleList(
            Block(
                dims.embed_dim,
                dims.num_heads,
                mlp_ratio=dims.mlp_dim / dims.embed_dim,
                qkv_bias=dims.qkv_bias,
                norm_layer=norm,
            )
            for _ in range(dims.depth)
        )
        for blk in self.blocks:
            blk.attn.fused_attn = True  # F.scaled_dot_product_attention, whatever TIMM_FUSED_ATTN says
        self.last_norm = norm(dims.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 256, 192) → (B, C, 16, 12)."""
        x = self.patch_embed.proj(x)
        b, c, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)
        x = x + self.pos_embed[:, 1:] + self.pos_embed[:, :1]  # class slot added to every token (see above)
        for blk in self.blocks:
            x = blk(x)
        x = self.last_norm(x)
        return x.transpose(1, 2).reshape(b, c, h, w)


def autocast_for(x: torch.Tensor, bf16: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when asked; fp32 everywhere else (CPU always runs fp32)."""
    if bf16 and x.is_cuda:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ---- strict checkpoint loading (shared by ViTPose and HMR2) -----------------------------------------------


class CheckpointError(RuntimeError):
    """The file is not a usable checkpoint for the requested model; the message says why."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of ``checkpoint["state_dict"]`` (or of a bare state dict).

    Uses the project's GEM reader: ``torch.load(weights_only=True, mmap=True)`` first; a Lightning checkpoint
    that also pickles hyper-parameter objects (HMR2's) is re-read through a restricted unpickler that imports
    and runs nothing from the file. Missing, empty, truncated or non-checkpoint files raise
    :class:`CheckpointError`.
    """
    try:
        return read_checkpoint(path)
    except GemCheckpointError as e:
        raise CheckpointError(str(e)) from None


def load_strict(
    model: nn.Module,
    sd: Mapping[str, torch.Tensor],
    ignored: Sequence[tuple[str, str]],
    name: str,
    device: torch.device | str = "cpu",
) -> nn.Module:
    """Fill a model built on the ``meta`` device from ``sd`` and move it to ``device``, in eval mode.

    Every key of ``sd`` must be either a parameter/buffer of ``model`` with the same shape, or match one of
    the ``ignored`` ``(regex, reason)`` rules; every parameter/buffer of ``model`` must be present. Anything
    else raises :class:`CheckpointError` naming the keys, so a wrong file never runs with random weights.
    """
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    params, dropped, unknown, problems = {}, {}, [], []
    for key, value in sd.items():
        if key in expected:
            if tuple(value.shape) != expected[key]:
                problems.append(f"'{key}' has shape {tuple(value.shape)}, expected {expected[key]}")
            params[key] = value
            continue
        reason = next((r for pattern, r in ignored if re.match(pattern, key)), None)
        if reason is None:
            unknown.append(key)
        else:
            dropped.setdefault(reason, []).append(key)
    missing = sorted(set(expected) - set(params))
    if missing:
        problems.append(f"{len(missing)} needed weights missing, e.g. {_first(missing)}")
    if unknown:
        problems.append(f"{len(unknown)} unrecognised keys, e.g. {_first(unknown)}")
    if problems:
        raise CheckpointError(f"{name}: " + "; ".join(problems))
    model = model.to_empty(device=device)
    model.load_state_dict(params, strict=True)
    for reason, keys in dropped.items():
        log.info("%s: ignored %d keys (%s), e.g. %s", name, len(keys), reason, _first(keys, 1))
    return model.eval()


def _first(keys: Sequence[str], n: int = 3) -> str:
    return ", ".join(f"'{k}'" for k in keys[:n]) + (", ..." if len(keys) > n else "")
