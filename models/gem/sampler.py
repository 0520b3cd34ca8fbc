"""Samplers of GEM's estimation mode: 50-step DDIM (η = 0) and the single-pass regression.

The denoiser predicts x̂₀ directly. DDIM over the respaced cosine schedule, for k = K-1 … 0:
    ε = (x/√ᾱ'_k − x̂₀) / √(1/ᾱ'_k − 1),   x ← √ᾱ'_{k−1}·x̂₀ + √(1 − ᾱ'_{k−1})·ε   (ᾱ'_{−1} = 1)
with the schedule built in float64 and each coefficient rounded to float32 where it is used, as the reference
does. With η = 0 no noise is added, so only the initial x_T is random; the outputs (x̂₀, pred_cam, contact
logits) are those of the last denoiser call (t = 0), whose x̂₀ equals the final DDIM sample.

Classifier-free guidance: the reference wraps the denoiser in a CFG sampler (scale 2.5) that runs a
conditional pass (f_cond, encoded text) and an unconditional pass (f_uncond, zero text) and returns
out_u + 2.5·(out_c − out_u). In estimation mode both passes get identical inputs: f_uncond == f_cond (every
condition is reused and the music/audio flags are 0 in both), the text is zeros either way (no
text encoder), and x is shared. The two outputs are therefore identical and the combination returns out_u
exactly (the fixtures confirm it bitwise at all 50 steps), so one pass per step is run here. A second pass is
only needed if text, music or audio conditioning is ever added.

The regression mode makes one call with x_t = 0 at the last original timestep (999) and no CFG.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

__all__ = ["DdimSchedule", "ddim_schedule", "respaced_timesteps", "ddim_sample", "regression"]

#: denoise(x_t, t_original, taps) -> {"pred_x", "pred_cam", "static_conf_logits"}
DenoiseFn = Callable[[torch.Tensor, int, dict | None], dict[str, torch.Tensor]]


def cosine_alpha_bar(u: float) -> float:
    return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2


def respaced_timesteps(num_timesteps: int, count: int) -> list[int]:
    """``count`` original timesteps, evenly strided over [0, num_timesteps): round(k·(N−1)/(count−1)).

    The stride is accumulated by repeated float addition and rounded with Python's round(), as the reference's
    space_timesteps does (this decides e.g. 20 vs 21 for k = 1).
    """
    stride = 1 if count <= 1 else (num_timesteps - 1) / (count - 1)
    steps, position = [], 0.0
    for _ in range(count):
        steps.append(round(position))
        position += stride
    return sorted(set(steps))


@dataclass(frozen=True)
class DdimSchedule:
    timesteps: tuple[int, ...]  # original timestep of respaced index k = 0..K-1 (ascending)
    alpha_bar: tuple[float, ...]  # float64 ᾱ' of the respaced process
    alpha_bar_prev: tuple[float, ...]  # ᾱ'_{k-1}, 1.0 at k = 0

    def coefficients(self, k: int, device) -> tuple[torch.Tensor, ...]:
        """(√(1/ᾱ), √(1/ᾱ − 1), √ᾱ_prev, √(1 − ᾱ_prev)) in float32 on device, rounded like the reference."""
        ab = self.alpha_bar[k]
        f32 = [math.sqrt(1.0 / ab), math.sqrt(1.0 / ab - 1), self.alpha_bar_prev[k]]
        recip, recipm1, prev = (torch.tensor(v, dtype=torch.float64).float().to(device) for v in f32)
        return recip, recipm1, torch.sqrt(prev), torch.sqrt(1 - prev)


def ddim_schedule(steps: int = 50, num_timesteps: int = 1000) -> DdimSchedule:
    """Cosine schedule of ``num_timesteps`` steps (β clipped at 0.999), respaced to ``steps`` steps."""
    alpha_bar, running = [], 1.0
    for i in range(num_timesteps):
        beta = min(1 - cosine_alpha_bar((i + 1) / num_timesteps) / cosine_alpha_bar(i / num_timesteps), 0.999)
        running *= 1 - beta
        alpha_bar.append(running)
    kept = respaced_timesteps(num_timesteps, steps)
    # the respaced process is rebuilt from its own betas, then its cumulative product is taken again
    spaced, last, running = [], 1.0, 1.0
    for t in kept:
        beta = 1 - alpha_bar[t] / last
        last = alpha_bar[t]
        running *= 1 - beta
        spaced.append(running)
    return DdimSchedule(tuple(kept), tuple(spaced), (1.0, *spaced[:-1]))


def _stats(x: torch.Tensor) -> torch.Tensor:
    x64 = x.double()
    return torch.stack([x64.sum(), x64.abs().sum(), x64.min(), x64.max()]).float()


def ddim_sample(
    denoise: DenoiseFn,
    noise: torch.Tensor,
    schedule: DdimSchedule,
    record: dict | None = None,
    keep_steps: Sequence[int] = (),
) -> dict[str, torch.Tensor]:
    """DDIM from x_T = ``noise``. With ``record``: the ``den1/*``, ``denL/*`` and ``ddim/*`` fixture tensors
    (``keep_steps``: execution-order step indices whose x_t and x̂₀ are kept in full)."""
    K = len(schedule.timesteps)
    x, out = noise, {}
    stats_in, stats_x0, kept_in, kept_x0 = [], [], [], []
    for n, k in enumerate(range(K - 1, -1, -1)):
        taps = None
        if record is not None:
            taps = {} if n in (0, K - 1) else None
            stats_in.append(_stats(x))
            if n == K - 1:
                record["denL/xt"] = x
        out = denoise(x, schedule.timesteps[k], taps)
        x0 = out["pred_x"]
        if record is not None:
            stats_x0.append(_stats(x0))
            if n in keep_steps:
                kept_in.append(x)
                kept_x0.append(x0)
            if taps is not None:
                record.update({f"{'den1' if n == 0 else 'denL'}/{name}": v for name, v in taps.items()})
        recip, recipm1, sqrt_prev, sqrt_one_minus_prev = schedule.coefficients(k, x.device)
        eps = (recip * x - x0) / recipm1
        x = x0 * sqrt_prev + sqrt_one_minus_prev * eps
    if record is not None:
        order = list(range(K - 1, -1, -1))
        record["ddim/t_respaced"] = torch.tensor(order)
        record["ddim/t_orig"] = torch.tensor([schedule.timesteps[k] for k in order])
        record["ddim/alpha_bar"] = torch.tensor([schedule.alpha_bar[k] for k in order]).float()
        record["ddim/alpha_bar_prev"] = torch.tensor([schedule.alpha_bar_prev[k] for k in order]).float()
        record["ddim/sel_steps"] = torch.tensor(list(keep_steps), dtype=torch.long)
        if kept_in:
            record["ddim/x_in_sel"], record["ddim/x0_sel"] = torch.stack(kept_in), torch.stack(kept_x0)
        record["ddim/x_in_stats"], record["ddim/x0_stats"] = torch.stack(stats_in), torch.stack(stats_x0)
        # one pass per step: the conditional and unconditional passes are identical by construction (above)
        record["ddim/cfg_exact"] = torch.ones(K, dtype=torch.bool)
        record["ddim/sample_final"] = x
    return {**out, "sample": x}


def regression(
    denoise: DenoiseFn, shape: Sequence[int], device, num_timesteps: int = 1000, record: dict | None = None
) -> dict[str, torch.Tensor]:
    """One denoiser call with x_t = 0 at t = num_timesteps − 1."""
    taps = {} if record is not None else None
    out = denoise(torch.zeros(*shape, device=device), num_timesteps - 1, taps)
    if record is not None:
        record.update({f"den1/{name}": v for name, v in taps.items()})
    return out
