"""Where the golden fixtures live: ``$GENMOCAP_SHARED`` if set, else ``../shared`` beside the clone (CI)."""

from __future__ import annotations

import os
from pathlib import Path


def fixture_dir(name: str) -> Path:
    """``<shared>/fixtures/<name>`` (it may not exist: callers skip with its path in the reason)."""
    shared = os.environ.get("GENMOCAP_SHARED")
    base = Path(shared) if shared else Path(__file__).resolve().parents[2] / "shared"
    return base / "fixtures" / name


REPO = Path(__file__).resolve().parents[1]


def genmocap(*args: str, env: dict | None = None, timeout: float = 600):
    """Run the real console entry point (``genmocap`` = ``flows.cli:main``) in a subprocess from the
    checkout, with ``env`` laid over this process's environment; returns the ``CompletedProcess``."""
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        cwd=REPO,
    )
