"""``GemNetwork``: condition embedders + denoiser + sampler, from model inputs to the denoiser outputs.

    net = load_gem("gem_smpl.ckpt", device="cuda")
    out = net.estimate(inputs)                      # 50-step DDIM from seeded Gaussian noise (seed 0)
    out["pred_x"], out["pred_cam"], out["static_conf_logits"]   # (B, L, 151), (B, L, 3), (B, L, 6)

The outputs are the fixture's ``out/*`` tensors: the normalised motion vector x̂₀ (de-normalisation and
decoding belong to ``codec.py``), the de-normalised weak-perspective camera (s, tx, ty) and the contact
logits, always with a batch dimension.

Batching: several people of one clip go in as (B, L, ...) arrays padded to a common L with ``length`` (B,);
each person's result equals a B = 1 run on its own valid frames (own attention windows, betas averaged over
its own frames, f_cond zeroed on padding so padding cannot leak in). Frames ≥ length are returned as zeros.
Seeded noise is drawn for the whole (B, L, 151) batch from one CPU generator, so a person's noise depends on
its batch position and the padded length; pass a tensor to control it exactly.

Devices: one code path; move the network with ``.to(device)`` (``load_gem(device=...)``), inputs follow it.
``bf16=True`` runs the denoiser under CUDA bfloat16 autocast (RoPE, the sampler arithmetic and the outputs
stay float32); the default is float32 throughout. Keep TF32 off for parity (PyTorch's default for matmuls).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .attention import make_plan, window_mask
from .conditions import ConditionEncoder, prepare_inputs
from .denoiser import Denoiser
from .dims import GemDims
from .sampler import ddim_sample, ddim_schedule, regression

__all__ = ["GemNetwork", "NoiseSpec"]

#: "zero", a seed (int) or an explicit x_T tensor (B, L, 151) / (L, 151)
NoiseSpec = str | int | torch.Tensor


class GemNetwork(nn.Module):
    def __init__(self, dims: GemDims):
        super().__init__()
        self.dims = dims
        self.conditions = ConditionEncoder(dims)
        self.denoiser = Denoiser(dims)

    @property
    def device(self) -> torch.device:
        return self.denoiser.pos_table.device

    @torch.no_grad()
    def estimate(
        self,
        inputs: Mapping,
        mode: str = "ddim",
        steps: int = 50,
        noise: NoiseSpec = 0,
        *,
        bf16: bool = False,
        attention: str = "banded",
        query_block: int = 256,
        record: dict | None = None,
        keep_steps: Sequence[int] = (),
    ) -> dict[str, torch.Tensor]:
        """Run estimation mode on one or several people (see ``conditions`` for ``inputs``).

        mode: "ddim" (the reference demo: ``steps``-step DDIM, η = 0, from ``noise``) or "regression" (one
        pass from x_t = 0 at t = 999; ``noise`` and ``steps`` unused). attention: "banded" (linear memory) or
        "dense" (the reference's (L, L) mask; for comparisons). ``record``, if given, is filled with the
        intermediate tensors under the parity fixture's key names.
        """
        if mode not in ("ddim", "regression"):
            raise ValueError(f"mode must be 'ddim' or 'regression', not {mode!r}")
        if attention not in ("banded", "dense"):
            raise ValueError(f"attention must be 'banded' or 'dense', not {attention!r}")
        device = self.device
        if bf16 and device.type != "cuda":
            raise ValueError("bf16 autocast is only offered on CUDA")
        dims = self.dims
        prepared = prepare_inputs(inputs, device)
        B, L = prepared.obs.shape[:2]
        valid = prepared.valid
        f_cond = self.conditions(prepared, record)
        f_cond = torch.where(valid[..., None], f_cond, 0.0)
        plan = make_plan(
            prepared.length, L, dims.head_dim, dims.max_len, query_block, dense=attention == "dense"
        )
        taps = {} if record is not None else None
        text_kv = self.denoiser.text_context(taps)

        def denoise(x_t: torch.Tensor, t: int, call_taps: dict | None) -> dict[str, torch.Tensor]:
            t_batch = torch.full((B,), t, dtype=torch.long, device=device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                out = self.denoiser(x_t, t_batch, f_cond, prepared.length, plan, text_kv, call_taps)
            if call_taps is not None:
                call_taps.update(t=t_batch, ctx=taps["ctx"])
            return out

        shape = (B, L, dims.motion_dim)
        if mode == "regression":
            out = regression(denoise, shape, device, dims.num_timesteps, record)
        else:
            x_T = self._initial_noise(noise, shape)
            out = ddim_sample(denoise, x_T, ddim_schedule(steps, dims.num_timesteps), record, keep_steps)
        names = ("pred_x", "pred_cam", "static_conf_logits")
        result = {k: torch.where(valid[..., None], out[k], 0.0) for k in names}
        result["length"] = prepared.length
        if record is not None:
            record.update(prepared.to_fixture())
            record["attn/pad_mask"] = ~valid
            if L > dims.max_len and B == 1:
                record["attn/window_mask"] = window_mask(L, dims.max_len)
            if mode == "ddim":
                record["input/noise"] = x_T
            record.update({f"out/{k}": v for k, v in result.items() if k != "length"})
        return result

    def _initial_noise(self, noise: NoiseSpec, shape: tuple[int, int, int]) -> torch.Tensor:
        if isinstance(noise, torch.Tensor):
            x = noise if noise.dim() == 3 else noise[None]
            if tuple(x.shape) != shape:
                raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {shape}")
            return x.to(self.device, torch.float32)
        if noise == "zero":
            return torch.zeros(shape, device=self.device)
        if isinstance(noise, int) and not isinstance(noise, bool):
            # drawn on the CPU so that a seed gives the same x_T on every device
            generator = torch.Generator().manual_seed(noise)
            return torch.randn(shape, generator=generator).to(self.device)
        raise ValueError(f"noise must be 'zero', an int seed or a tensor, not {noise!r}")
