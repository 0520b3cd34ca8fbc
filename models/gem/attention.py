"""Rotary self-attention over frames with the reference's 120-frame window, in memory linear in length.

Window rule. For a sequence of ``n`` frames and window ``W`` (``max_len`` = 120, ``h = W // 2``),
query frame ``i`` may attend to the keys ``[lo(i), hi(i))`` with

    lo(i) = min(n - W, max(0, i - h)),   hi(i) = max(W, min(n, i + h))      when n > W,
    lo(i) = 0,                           hi(i) = n                          when n <= W (no window).

So each query sees exactly ``W`` keys (W even), clamped to the first/last ``W`` frames near the ends. Both
bounds are non-decreasing in ``i``, hence a block of queries ``[q0, q1)`` needs only the key slab ``[lo(q0),
hi(q1 - 1))``, at most ``(q1 - q0) + W`` keys. ``AttentionPlan`` cuts the queries into blocks of ``block``
frames and keeps, per block, the slab bounds and the boolean mask within the slab; attention then runs one
``scaled_dot_product_attention`` per block. Scores never exceed ``B·H·block·(block + 1.5W)`` elements, so
memory is linear in length, and the result equals dense attention with the reference's (L, L) −inf mask up to
float summation order (``tests/test_gem_network.py`` checks both on random inputs).

Batches (B > 1) with different valid lengths (``lengths``, frames ≥ length are padding) use, for every valid
query of sequence b, the window computed from *its own* length ``n_b``: each person gets exactly what a B = 1
run of that person alone gives (the reference only ever runs B = 1; with padding its (L, L) mask would
follow the padded length instead). Padded queries attend to the window of the padded length without a padding
mask, so they stay finite; valid frames never read them (padded keys are outside every valid window).

RoPE: absolute frame positions p = 0..L-1, angle p·ω_i with ω_i = 1/10000^(2i/d) per head channel
pair (2i, 2i+1) (interleaved), computed in float32 exactly as the reference does (outer product of float32
positions and frequencies, then cos/sin on the compute device).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "rope_tables",
    "apply_rope",
    "window_bounds",
    "window_mask",
    "AttentionPlan",
    "make_plan",
    "attend",
]


def rope_tables(length: int, head_dim: int, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) of shape (length, head_dim), each angle repeated for its channel pair."""
    positions = torch.arange(length).float()
    freqs = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    angles = torch.outer(positions, freqs).repeat_interleave(2, dim=-1).to(device)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (2i, 2i+1) of x (..., L, head_dim) by the tabled angles; computed in float32."""
    x = x.float()
    pairs = x.unflatten(-1, (-1, 2))
    rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
    return x * cos + rotated * sin


def window_bounds(lengths: torch.Tensor, total: int, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Allowed key range [lo, hi) per (sequence, query frame), each (B, total) int64; see the module doc."""
    half = window // 2
    i = torch.arange(total, device=lengths.device)

    def bounds(n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = n[:, None]
        lo = torch.minimum((i - half).clamp(min=0), n - window)
        hi = torch.maximum(torch.minimum(i + half, n), torch.full_like(n, window))
        windowed = n > window
        return torch.where(windowed, lo, 0), torch.where(windowed, hi, n)

    lo, hi = bounds(lengths)
    padded = i[None] >= lengths[:, None]
    if padded.any():
        lo_pad, hi_pad = bounds(torch.full_like(lengths, total))
        lo, hi = torch.where(padded, lo_pad, lo), torch.where(padded, hi_pad, hi)
    return lo, hi


def window_mask(length: int, window: int = 120) -> torch.Tensor:
    """The reference's dense (L, L) window mask for one sequence, True = key masked out (−inf)."""
    lo, hi = window_bounds(torch.tensor([length]), length, window)
    j = torch.arange(length)
    return ~((j >= lo[0, :, None]) & (j < hi[0, :, None]))


@dataclass
class AttentionPlan:
    """Everything self-attention needs that depends only on the lengths: built once per estimate call."""

    length: int
    cos: torch.Tensor  # (L, head_dim)
    sin: torch.Tensor
    # per query block: (q0, q1, k0, k1, allowed) with allowed (B or 1, 1, q1-q0, k1-k0) bool, or None = all
    blocks: list[tuple[int, int, int, int, torch.Tensor | None]]


def make_plan(
    lengths: torch.Tensor,
    total: int,
    head_dim: int,
    window: int = 120,
    block: int = 256,
    dense: bool = False,
) -> AttentionPlan:
    """Attention plan for sequences of valid ``lengths`` (B,) padded to ``total`` frames.

    ``dense=True`` builds one block with the full (B, 1, L, L) mask: the reference's O(L²) formulation, kept
    for tests and memory comparisons.
    """
    device = lengths.device
    cos, sin = rope_tables(total, head_dim, device)
    uniform = bool((lengths == total).all())
    if uniform and total <= window:
        return AttentionPlan(total, cos, sin, [(0, total, 0, total, None)])
    lo, hi = window_bounds(lengths[:1] if uniform else lengths, total, window)
    step = total if dense else max(1, block)
    blocks = []
    for q0 in range(0, total, step):
        q1 = min(total, q0 + step)
        k0, k1 = int(lo[:, q0:q1].min()), int(hi[:, q0:q1].max())
        j = torch.arange(k0, k1, device=device)
        allowed = (j >= lo[:, q0:q1, None]) & (j < hi[:, q0:q1, None])
        blocks.append((q0, q1, k0, k1, None if bool(allowed.all()) else allowed[:, None]))
    return AttentionPlan(total, cos, sin, blocks)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: AttentionPlan) -> torch.Tensor:
    """Windowed attention of q, k, v (B, H, L, d) (RoPE already applied); returns (B, L, H·d)."""
    if len(plan.blocks) == 1:
        _, _, _, _, allowed = plan.blocks[0]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed).transpose(1, 2).flatten(2)
    out = None
    for q0, q1, k0, k1, allowed in plan.blocks:
        o = F.scaled_dot_product_attention(q[:, :, q0:q1], k[:, :, k0:k1], v[:, :, k0:k1], attn_mask=allowed)
        if out is None:
            B, H, _, d = o.shape
            out = o.new_empty(B, plan.length, H, d)
        out[:, q0:q1] = o.transpose(1, 2)
    return out.flatten(2)
