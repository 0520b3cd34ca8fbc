"""Small building blocks shared by the condition embedders and the denoiser."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["Mlp", "framewise"]

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "gelu": nn.GELU,  # exact (erf) GELU: timm Mlp default, used by the embedders and output heads
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),  # the transformer blocks' MLPs
    "silu": nn.SiLU,  # the two-layer condition embedders
}


class Mlp(nn.Module):
    """Linear → activation → Linear (dropout layers of the reference are inactive in eval and omitted)."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int, act: str = "gelu"):
        super().__init__()
        self.fc1 = nn.Linear(d_in, d_hidden)
        self.act = _ACTIVATIONS[act]()
        self.fc2 = nn.Linear(d_hidden, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def framewise(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, chunk: int) -> torch.Tensor:
    """``fn(x)`` for a per-frame ``fn`` on x (B, L, ...), run over frame chunks when L > chunk.

    Bounds the memory of wide intermediate activations (the 4×-wide MLP hidden layer) on long clips.
    """
    L = x.shape[1]
    if L <= chunk:
        return fn(x)
    parts = [fn(x[:, s : s + chunk]) for s in range(0, L, chunk)]
    return torch.cat(parts, dim=1)
