"""A per-process model cache: each model is built once per process and shared by every clip and thread.

A long-lived worker that runs clips back to back loads each network once. Keys name everything the built
object depends on (kind, weight path, device, settings), so a different setting builds a second model.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

_lock = threading.Lock()
_models: dict[tuple, Any] = {}


def torch_defaults() -> None:
    """Numerics every model runs with: TF32 off for matmuls and convolutions (it measurably worsens pose
    accuracy: EMDB-2 jitter 16.1 -> 24.9 and PA-MPJPE 42.7 -> 46.0 in GVHMR-style pipelines, no speed gain
    with bf16 available). Set again before every model build, whatever other code did."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")


def cached(key: tuple, build: Callable[[], Any]) -> Any:
    """The object built by ``build()`` for ``key``, built on first use (one build at a time)."""
    with _lock:
        torch_defaults()
        if key not in _models:
            _models[key] = build()
        return _models[key]


def clear() -> None:
    """Forget every cached model (frees memory between unrelated runs in one process)."""
    with _lock:
        _models.clear()


def resolve_device(setting: str) -> str:
    """``auto`` -> ``cuda`` when a CUDA device is present, else ``cpu``; other values as given."""
    if setting != "auto":
        return setting
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
