"""Where the golden fixtures live: ``$GENMOCAP_SHARED`` if set, else ``../shared`` beside the clone (CI)."""

from __future__ import annotations

import os
from pathlib import Path


def fixture_dir(name: str) -> Path:
    """``<shared>/fixtures/<name>`` (it may not exist: callers skip with its path in the reason)."""
    shared = os.environ.get("GENMOCAP_SHARED")
    base = Path(shared) if shared else Path(__file__).resolve().parents[2] / "shared"
    return base / "fixtures" / name
