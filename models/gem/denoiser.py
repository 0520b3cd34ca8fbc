"""The RoPE transformer denoiser of GEM: x_t, t, f_cond → x̂₀, pred_cam, static-contact logits.

Forward (B, L frames, D = latent width):

1. temb = time_embed(PE[t]) (B, 1, D), PE the checkpoint's sinusoidal table indexed by the original timestep.
2. h = add_cond_linear([f_cond + temb, x_t]) (condition first).
3. For each layer i: the text cross-attention block i (if present), then the self-attention block i.
   Text blocks attend to ctx = embed_text(0) + PE[0:50]: text is never encoded in estimation mode (no T5), so
   ctx and every text block's keys/values are constants of the weights, computed once per sampling run by
   ``text_context`` and reused at every step; only the queries depend on h.
4. Heads on the last h (no final norm): final_layer → x̂₀ with the betas averaged over valid frames (avgbeta),
   pred_cam_head → de-normalised camera with scale clamped ≥ 0.25, static_conf_head → 6 contact logits.

Parameter names follow the checkpoint's ``pipeline.denoiser3d.denoiser.*`` keys (see ``checkpoint.py`` for the
few renamed ones) so that loading is a plain, strict key match.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import AttentionPlan, apply_rope, attend
from .dims import GemDims
from .layers import Mlp, framewise

__all__ = ["Denoiser", "PRED_CAM_MEAN", "PRED_CAM_STD"]

# ---- constants from the reference code (not in the checkpoint) ---------------------------------------------
# pred_cam de-normalisation, non-persistent buffers of NetworkEncoderRoPE in gem/network/gem_denoiser.py
# (NVlabs/GENMO b7d3b6b); layout (s, tx, ty).
PRED_CAM_MEAN = (1.0606, -0.0027, 0.2702)
PRED_CAM_STD = (0.1784, 0.0956, 0.0764)
PRED_CAM_MIN_SCALE = 0.25
LN_EPS = 1e-6  # LayerNorms inside the transformer blocks

#: frames per chunk for the per-frame MLPs on long clips (bounds the 4D-wide hidden activation)
FRAME_CHUNK = 4096


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value, self.proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor, plan: AttentionPlan) -> torch.Tensor:
        def split(t: torch.Tensor) -> torch.Tensor:  # (B, L, D) -> (B, H, L, d)
            return t.unflatten(-1, (self.heads, -1)).transpose(1, 2)

        q = apply_rope(split(self.query(x)), plan.cos, plan.sin)
        k = apply_rope(split(self.key(x)), plan.cos, plan.sin)
        return self.proj(attend(q, k, split(self.value(x)), plan))


class SelfAttentionBlock(nn.Module):
    """h + g_msa ⊙ RoPEAttn(LN₁ h), then h + g_mlp ⊙ MLP(LN₂ h) (tanh GELU)."""

    def __init__(self, dims: GemDims):
        super().__init__()
        D = dims.latent_dim
        self.norm1 = nn.LayerNorm(D, eps=LN_EPS)
        self.attn = SelfAttention(D, dims.num_heads)
        self.norm2 = nn.LayerNorm(D, eps=LN_EPS)
        self.mlp = Mlp(D, dims.mlp_hidden, D, act="gelu_tanh")
        self.gate_msa = nn.Parameter(torch.zeros(1, 1, D))
        self.gate_mlp = nn.Parameter(torch.zeros(1, 1, D))

    def forward(self, h: torch.Tensor, plan: AttentionPlan) -> torch.Tensor:
        h = h + self.gate_msa * self.attn(self.norm1(h), plan)
        return framewise(lambda x: x + self.gate_mlp * self.mlp(self.norm2(x)), h, FRAME_CHUNK)


class CrossAttention(nn.Module):
    """Multi-head attention to a fixed context, with torch.nn.MultiheadAttention's parameter layout."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))  # rows [q; k; v]
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)  # only matters for randomly initialised networks

    def context_kv(self, ctx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values (1, H, T, d) of a context (1, T, D)."""
        _, wk, wv = self.in_proj_weight.chunk(3)
        _, bk, bv = self.in_proj_bias.chunk(3)
        k, v = F.linear(ctx, wk, bk), F.linear(ctx, wv, bv)
        return tuple(t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (k, v))

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        D = x.shape[-1]
        q = F.linear(x, self.in_proj_weight[:D], self.in_proj_bias[:D])
        q = q.unflatten(-1, (self.heads, -1)).transpose(1, 2)
        k, v = (t.expand(x.shape[0], -1, -1, -1) for t in kv)
        return self.out_proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2))


class TextBlock(nn.Module):
    """h + g_ca ⊙ MHA(LN₂ h, ctx, ctx), then h + g_mlp ⊙ MLP(LN₃ h); no self-attention, no mask."""

    def __init__(self, dims: GemDims):
        super().__init__()
        D = dims.latent_dim
        self.norm2 = nn.LayerNorm(D, eps=LN_EPS)
        self.cross_attn = CrossAttention(D, dims.num_heads)
        self.norm3 = nn.LayerNorm(D, eps=LN_EPS)
        self.mlp = Mlp(D, dims.mlp_hidden, D, act="gelu_tanh")
        self.gate_cross_attn = nn.Parameter(torch.zeros(1, 1, D))
        self.gate_mlp = nn.Parameter(torch.zeros(1, 1, D))

    def forward(self, h: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        h = h + self.gate_cross_attn * self.cross_attn(self.norm2(h), kv)
        return framewise(lambda x: x + self.gate_mlp * self.mlp(self.norm3(x)), h, FRAME_CHUNK)


class Denoiser(nn.Module):
    def __init__(self, dims: GemDims):
        super().__init__()
        self.dims = dims
        D, Hh = dims.latent_dim, dims.head_hidden
        self.register_buffer("pos_table", torch.zeros(dims.pe_len, D))  # sinusoidal PE, from the checkpoint
        self.time_embed = Mlp(D, D, D, act="silu")
        self.embed_text = nn.Linear(dims.text_dim, D)
        self.add_cond_linear = nn.Linear(D + dims.motion_dim, D)
        self.text_encoder_layers = nn.ModuleDict({str(i): TextBlock(dims) for i in dims.text_layers})
        self.blocks = nn.ModuleList(SelfAttentionBlock(dims) for _ in range(dims.num_layers))
        self.final_layer = Mlp(D, Hh, dims.motion_dim)
        self.pred_cam_head = Mlp(D, Hh, dims.pred_cam_dim)
        self.static_conf_head = Mlp(D, Hh, dims.static_conf_dim)

    def text_context(self, taps: dict | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Keys/values of every text block for the all-zero encoded text (constant for given weights)."""
        T = self.dims.text_tokens
        zeros = self.pos_table.new_zeros(1, T, self.dims.text_dim)
        ctx = self.embed_text(zeros) + self.pos_table[:T]
        if taps is not None:
            taps["ctx"] = ctx
        return {i: blk.cross_attn.context_kv(ctx) for i, blk in self.text_encoder_layers.items()}

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        f_cond: torch.Tensor,
        length: torch.Tensor,
        plan: AttentionPlan,
        text_kv: dict[str, tuple[torch.Tensor, torch.Tensor]],
        taps: dict | None = None,
    ) -> dict[str, torch.Tensor]:
        """x_t (B, L, 151), t (B,) original timestep indices, f_cond (B, L, D), length (B,) valid frames."""

        def tap(name: str, value: torch.Tensor) -> None:
            if taps is not None:
                taps[name] = value.float()

        temb = self.time_embed(self.pos_table[t].unsqueeze(1))
        tap("temb", temb)
        h = self.add_cond_linear(torch.cat([f_cond + temb, x_t.to(f_cond.dtype)], dim=-1))
        tap("h_in", h)
        for i, block in enumerate(self.blocks):
            if str(i) in self.text_encoder_layers:
                h = self.text_encoder_layers[str(i)](h, text_kv[str(i)])
                tap(f"text_block_{i}", h)
            h = block(h, plan)
            tap(f"enc_block_{i}", h)

        def heads(x: torch.Tensor) -> torch.Tensor:
            return torch.cat([self.final_layer(x), self.pred_cam_head(x), self.static_conf_head(x)], dim=-1)

        out = framewise(heads, h, FRAME_CHUNK).float()
        d = self.dims
        x0, cam_raw, contact = out.split([d.motion_dim, d.pred_cam_dim, d.static_conf_dim], dim=-1)
        tap("final_raw", x0)
        x0 = self._average_betas(x0, length)
        tap("pred_x", x0)
        tap("pred_cam_raw", cam_raw)
        pred_cam = cam_raw * cam_raw.new_tensor(PRED_CAM_STD) + cam_raw.new_tensor(PRED_CAM_MEAN)
        pred_cam[..., 0].clamp_(min=PRED_CAM_MIN_SCALE)
        tap("pred_cam", pred_cam)
        tap("static_conf_logits", contact)
        return {"pred_x": x0, "pred_cam": pred_cam, "static_conf_logits": contact}

    def _average_betas(self, x0: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
        """avgbeta: every frame's betas become their mean over the valid frames."""
        s, e = self.dims.betas_slice
        valid = torch.arange(x0.shape[1], device=x0.device)[None] < length[:, None]
        betas = (x0[..., s:e] * valid[..., None]).sum(1) / length[:, None]
        return torch.cat([x0[..., :s], betas[:, None].expand(-1, x0.shape[1], -1), x0[..., e:]], dim=-1)
