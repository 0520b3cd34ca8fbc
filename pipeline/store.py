"""Content-addressed artifact store: every stage result is saved under a key that hashes what produced it.

Key = sha256(stage name, stage version, the config fields the stage reads, upstream artifact keys, weight
file hashes, input fingerprints). Same inputs -> same key -> cache hit; change one stage's config and only
that stage and its dependants get new keys.

Layout: ``ROOT/<stage>/<key>/{meta.json, arrays.npz}``. A save writes into ``ROOT/.tmp/``, fsyncs, then
renames the directory into place, so a reader sees a whole artifact or none, and a killed run leaves only
temp directories (swept on the next open).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stages.files import fsync_dir, fsync_file, npz_bytes

TMP_MAX_AGE_S = 24 * 3600  # temp dirs older than this belong to dead runs


@dataclass
class Artifact:
    """A stage result: JSON-safe metadata plus named numpy arrays."""

    meta: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def artifact_key(
    stage: str,
    version: str,
    config: Any,
    upstream: dict[str, str] | None = None,
    weights: dict[str, str] | None = None,
    inputs: dict[str, Any] | None = None,
) -> str:
    """The cache key of a stage result (32 hex chars)."""
    payload = {
        "stage": stage,
        "version": version,
        "config": config,
        "upstream": upstream or {},
        "weights": weights or {},
        "inputs": inputs or {},
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


class ArtifactStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.tmp = self.root / ".tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self._sweep()

    def _sweep(self) -> None:
        """Remove temp dirs left by killed runs (old enough not to belong to a live one)."""
        now = time.time()
        for d in self.tmp.iterdir():
            try:
                if now - d.stat().st_mtime > TMP_MAX_AGE_S:
                    shutil.rmtree(d, ignore_errors=True)
            except FileNotFoundError:
                pass

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def has(self, stage: str, key: str) -> bool:
        return (self.path(stage, key) / "meta.json").is_file()

    def load_meta(self, stage: str, key: str) -> dict | None:
        """The artifact's metadata alone (its arrays are not read), or None if absent or unreadable."""
        try:
            return json.loads((self.path(stage, key) / "meta.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def load(self, stage: str, key: str) -> Artifact | None:
        """The artifact, or None if absent (or unreadable, which is then treated as absent)."""
        d = self.path(stage, key)
        meta = self.load_meta(stage, key)
        if meta is None:
            return None
        arrays: dict[str, np.ndarray] = {}
        if (d / "arrays.npz").is_file():
            try:
                with np.load(d / "arrays.npz", allow_pickle=False) as z:
                    arrays = {k: z[k] for k in z.files}
            except (OSError, ValueError):
                return None
        return Artifact(meta=meta, arrays=arrays)

    def save(self, stage: str, key: str, artifact: Artifact) -> Path:
        """Save atomically; if another writer got there first, keep theirs (same key = same content)."""
        final = self.path(stage, key)
        staging = self.tmp / f"{stage}-{key}-{uuid.uuid4().hex[:8]}"
        staging.mkdir(parents=True)
        try:
            if artifact.arrays:
                (staging / "arrays.npz").write_bytes(npz_bytes(artifact.arrays))
                fsync_file(staging / "arrays.npz")
            # meta.json last: its presence marks a complete artifact.
            (staging / "meta.json").write_text(json.dumps(artifact.meta, indent=2, default=str))
            fsync_file(staging / "meta.json")
            fsync_dir(staging)
            final.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(staging, final)
            except OSError:
                if not self.has(stage, key):  # a broken leftover at the final name: replace it
                    shutil.rmtree(final, ignore_errors=True)
                    os.rename(staging, final)
            fsync_dir(final.parent)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return final
