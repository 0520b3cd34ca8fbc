"""HMR2 image feature (GEM's ``f_imgseq``): ViT backbone + the SMPL transformer decoder up to ``token_out``.

Input (B, 3, 256, 256) normalised crops; the forward keeps columns 32..223 itself (as the reference model and
GEM's ONNX export do) → ViT (B, C, 16, 12) → 192 context tokens → decoder → (B, 1024) float32.

Decoder (the reference's ``smpl_head.transformer``): one query token = ``to_token_embedding`` (Linear
1 → 1024) of a zero input plus ``pos_embedding``; per layer pre-LayerNorm (eps 1e-5) self-attention,
cross-attention to the context, MLP (Linear, GELU, Linear), each added back; no final norm. Attention
projections have no bias; heads split ``(heads, dim_head)`` along the last axis; ``to_qkv`` → q, k, v and
``to_kv`` → k, v in that order; scale ``dim_head^-0.5``. The SMPL read-outs (pose/shape/camera) are not built.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .vit import CheckpointError, ViT, ViTDims, autocast_for, load_strict, read_state_dict

__all__ = ["IGNORED", "DecoderDims", "HMR2", "load_hmr2"]

HMR2_COLS = (32, 224)  # the 256×192 backbone input inside the 256×256 crop
PREFIX = "smpl_head.transformer."

#: (key regex, reason) of checkpoint keys that are deliberately not loaded
IGNORED: tuple[tuple[str, str], ...] = (
    (r"smpl_head\.(decpose|decshape|deccam)\.", "SMPL read-outs after token_out; GEM uses token_out"),
    (r"smpl_head\.init_(body_pose|betas|cam)$", "SMPL mean-parameter buffers, used only by the read-outs"),
    (
        r"(?!backbone\.|smpl_head\.)",
        "not under backbone/smpl_head: training-only modules (discriminator, losses, body model, ...), "
        "dropped by the reference's loader as well",
    ),
)


@dataclass(frozen=True)
class DecoderDims:
    dim: int  # token width (1024)
    depth: int
    heads: int
    dim_head: int
    mlp_dim: int
    context_dim: int  # = ViT width
    token_dim: int = 1

    @classmethod
    def from_state_dict(cls, sd: dict[str, torch.Tensor], heads: int | None) -> DecoderDims:
        """Sizes from the ``smpl_head.transformer.*`` keys; ``heads=None`` = the official 8 (of 64)."""
        emb = sd[PREFIX + "to_token_embedding.weight"]
        layer = PREFIX + "transformer.layers.{}."
        depth = 0
        while layer.format(depth) + "0.norm.weight" in sd:
            depth += 1
        if depth == 0:
            raise KeyError(layer.format(0) + "0.norm.weight")
        first = layer.format(0)
        inner = sd[first + "0.fn.to_qkv.weight"].shape[0] // 3
        if heads is None:
            if inner != 512:
                raise ValueError(f"decoder attention width {inner} is not HMR2's 512: heads must be given")
            heads = 8
        if inner % heads:
            raise ValueError(f"decoder attention width {inner} is not divisible by {heads} heads")
        return cls(
            dim=emb.shape[0],
            depth=depth,
            heads=heads,
            dim_head=inner // heads,
            mlp_dim=sd[first + "2.fn.net.0.weight"].shape[0],
            context_dim=sd[first + "1.fn.to_kv.weight"].shape[1],
            token_dim=emb.shape[1],
        )


def _heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, _ = t.shape
    return t.reshape(b, n, heads, -1).transpose(1, 2)


def _merge(t: torch.Tensor) -> torch.Tensor:
    b, h, n, d = t.shape
    return t.transpose(1, 2).reshape(b, n, h * d)


class _SelfAttention(nn.Module):
    def __init__(self, d: DecoderDims):
        super().__init__()
        self.heads = d.heads
        self.to_qkv = nn.Linear(d.dim, 3 * d.heads * d.dim_head, bias=False)
        self.to_out = nn.Sequential(nn.Linear(d.heads * d.dim_head, d.dim))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        q, k, v = (_heads(t, self.heads) for t in self.to_qkv(x).chunk(3, dim=-1))
        return self.to_out(_merge(F.scaled_dot_product_attention(q, k, v)))


class _CrossAttention(nn.Module):
    def __init__(self, d: DecoderDims):
        super().__init__()
        self.heads = d.heads
        self.to_kv = nn.Linear(d.context_dim, 2 * d.heads * d.dim_head, bias=False)
        self.to_q = nn.Linear(d.dim, d.heads * d.dim_head, bias=False)
        self.to_out = nn.Sequential(nn.Linear(d.heads * d.dim_head, d.dim))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        k, v = (_heads(t, self.heads) for t in self.to_kv(context).chunk(2, dim=-1))
        q = _heads(self.to_q(x), self.heads)
        return self.to_out(_merge(F.scaled_dot_product_attention(q, k, v)))


class _FeedForward(nn.Module):
    def __init__(self, d: DecoderDims):
        super().__init__()
        # indices 0 and 3 carry the weights (the reference's dropouts sit at 2 and 4)
        fc1, fc2 = nn.Linear(d.dim, d.mlp_dim), nn.Linear(d.mlp_dim, d.dim)
        self.net = nn.Sequential(fc1, nn.GELU(), nn.Identity(), fc2)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _PreNorm(nn.Module):
    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.fn(self.norm(x), context)


class _Layers(nn.Module):
    def __init__(self, d: DecoderDims):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList(_PreNorm(d.dim, f(d)) for f in (_SelfAttention, _CrossAttention, _FeedForward))
            for _ in range(d.depth)
        )


class TransformerDecoder(nn.Module):
    """One query token attending to the ViT tokens; returns the token (B, 1, dim)."""

    def __init__(self, d: DecoderDims):
        super().__init__()
        self.to_token_embedding = nn.Linear(d.token_dim, d.dim)
        self.pos_embedding = nn.Parameter(torch.zeros(1, 1, d.dim))
        self.transformer = _Layers(d)

    def forward(self, context: torch.Tensor, taps: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        zero = context.new_zeros(context.shape[0], 1, self.to_token_embedding.in_features)
        x = self.to_token_embedding(zero)
        if taps is not None:
            taps["token_embed"] = x
        x = x + self.pos_embedding
        for i, layer in enumerate(self.transformer.layers):
            for name, block in zip(("sa", "ca", "ff"), layer, strict=True):
                branch = block(x, context)
                if taps is not None:
                    taps[f"dec{i}_{name}"] = branch
                x = x + branch
        return x


class _SMPLHead(nn.Module):
    def __init__(self, d: DecoderDims):
        super().__init__()
        self.transformer = TransformerDecoder(d)


class HMR2(nn.Module):
    """``imgs`` (B, 3, 256, 256) → ``f_imgseq`` (B, 1024) float32 (the GEM ONNX export's signature).

    ``bf16``: run under bf16 autocast when the input is on CUDA (fp32 otherwise and on CPU).
    """

    def __init__(self, vit: ViTDims, decoder: DecoderDims, bf16: bool = False):
        super().__init__()
        self.backbone = ViT(vit)
        self.smpl_head = _SMPLHead(decoder)
        self.bf16 = bf16

    def forward(self, imgs: torch.Tensor, taps: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """``taps``: if a dict is given, the backbone output and every decoder branch are stored in it."""
        lo, hi = HMR2_COLS
        with autocast_for(imgs, self.bf16):
            feats = self.backbone(imgs[:, :, :, lo:hi])
            if taps is not None:
                taps["backbone"] = feats
            context = feats.flatten(2).transpose(1, 2)  # (B, 192, C), row-major over the 16×12 grid
            return self.smpl_head.transformer(context, taps)[:, 0].float()


def load_hmr2(
    path: str | Path,
    device: torch.device | str = "cpu",
    *,
    num_heads: int | None = None,
    decoder_heads: int | None = None,
    bf16: bool = False,
) -> HMR2:
    """Strictly load HMR2 from a Lightning checkpoint (``epoch=10-step=25000.ckpt`` or a reduced one).

    Only ``backbone.*`` and the decoder under ``smpl_head.transformer.*`` are used; every other key must match
    :data:`IGNORED`. ``num_heads`` / ``decoder_heads``: not recorded in the file (defaults: the official 16
    and 8). Errors raise :class:`models.vit.CheckpointError`.
    """
    sd = read_state_dict(path)
    try:
        vit = ViTDims.from_state_dict(sd, num_heads)
        dec = DecoderDims.from_state_dict(sd, decoder_heads)
    except KeyError as e:
        raise CheckpointError(f"{path}: not an HMR2 checkpoint: key {e} missing") from None
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    with torch.device("meta"):
        model = HMR2(vit, dec, bf16=bf16)
    return load_strict(model, sd, IGNORED, str(path), device)
