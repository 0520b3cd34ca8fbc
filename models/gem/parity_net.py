"""Parity of the network part (inputs → denoiser outputs) against one golden scenario recorded from the
GEM reference: groups prep, mask, cond, attn, den1, denL, ddim, out.

Tolerances: booleans and integers exact; values before the transformer (``prep/*``,
``cond/*``, ``den*/temb``, ``den*/ctx``, ``den*/h_in``) ≤ 1e-5 absolute; transformer taps, sampler and outputs
(``den*/*``, ``ddim/*``, ``out/*``) ≤ 1e-4 · max(1, max|ref|).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .checkpoint import load_gem
from .network import GemNetwork

__all__ = ["GROUPS", "check_network", "tolerance", "heads_from_manifest"]

GROUPS = ("prep", "mask", "cond", "attn", "den1", "denL", "ddim", "out")
_PRE_TRANSFORMER = ("temb", "ctx", "h_in")


def tolerance(key: str, ref: torch.Tensor) -> float:
    """Allowed max |Δ| for a fixture key (0 for booleans and integers: they must match exactly)."""
    if ref.dtype == torch.bool or not ref.is_floating_point():
        return 0.0
    group, name = key.split("/", 1)
    if group in ("prep", "cond") or (group in ("den1", "denL") and name in _PRE_TRANSFORMER):
        return 1e-5
    return 1e-4 * max(1.0, float(ref.abs().max()))


def heads_from_manifest(ckpt_path: str | Path) -> int | None:
    """Head count recorded by the fixture generator (``manifest.json`` beside the checkpoint), if any."""
    manifest = Path(ckpt_path).with_name("manifest.json")
    if not manifest.is_file():
        return None
    return json.loads(manifest.read_text()).get("reduced", {}).get("num_heads")


def check_network(
    scenario: dict, ckpt_path: str | Path | GemNetwork, num_heads: int | None = None
) -> list[tuple[str, float, float, bool]]:
    """Run the scenario's inputs through the network and compare every key of the network groups.

    Returns ``(key, max abs error, tolerance, passed)`` per key; booleans/integers report the number of
    differing elements as the error. ``ckpt_path`` may also be an already loaded ``GemNetwork``.
    """
    if isinstance(ckpt_path, GemNetwork):
        net = ckpt_path
    else:
        heads = num_heads or scenario.get("meta", {}).get("num_heads") or heads_from_manifest(ckpt_path)
        net = load_gem(ckpt_path, num_heads=heads)
    meta = scenario.get("meta", {})
    inputs = {k.split("/", 1)[1]: v for k, v in scenario.items() if k.startswith("input/")}
    mode = meta.get("mode", "ddim")
    noise = inputs.pop("noise", "zero")  # x_T as handed to the reference's sampler (zeros or the Gaussian)
    keep = scenario["ddim/sel_steps"].tolist() if "ddim/sel_steps" in scenario else ()
    record: dict[str, torch.Tensor] = {}
    net.estimate(inputs, mode=mode, noise=noise, record=record, keep_steps=keep)

    results = []
    for key, ref in scenario.items():
        if not isinstance(ref, torch.Tensor) or key.split("/", 1)[0] not in GROUPS:
            continue
        tol = tolerance(key, ref)
        mine = record.get(key)
        if mine is None or tuple(mine.shape) != tuple(ref.shape):
            results.append((key, float("inf"), tol, False))
            continue
        mine = mine.detach().cpu()
        if tol == 0.0:
            err = float((mine != ref).sum())
        else:
            err = float((mine.float() - ref.float()).abs().max()) if ref.numel() else 0.0
        results.append((key, err, tol, err <= tol))
    return results
