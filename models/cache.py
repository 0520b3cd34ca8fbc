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


def cached(key: tuple, build: Callable[[], Any]) -> Any:
    """The object built by ``build()`` for ``key``, built on first use (one build at a time)."""
    with _lock:
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
