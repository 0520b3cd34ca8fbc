"""The clip ledger of an output folder: how each clip's last run ended, so re-submitted folders and nightly
runs take only new, changed or failed clips, and a re-submission never duplicates work.

``OUT/.genmocap/ledger.json`` maps clip ids to ``{source, fingerprint, result_digest, status, generation,
failed_runs, last_run}``. ``generation`` counts the clip's unsuccessful runs: it is part of the clip's
idempotency key, so a clip that failed gets a fresh Prefect flow run next time while a clip that succeeded
(or is running now for another coordinator) maps to the flow run that already exists.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import __version__
from pipeline.discover import Clip
from pipeline.report import read_clip_doc
from stages.files import atomic_write_json, file_lock
from stages.probe import source_fingerprint
from stages.video import list_image_frames

SUBMITTED = ("new", "changed", "retried", "rerun")  # categories that run


@dataclass
class Planned:
    """One discovered clip and what this run does with it."""

    clip: Clip
    category: str  # new | changed | retried | rerun (all run) | cached | given_up | settling | unreadable
    fingerprint: str | None
    generation: int

    @property
    def runs(self) -> bool:
        return self.category in SUBMITTED


def _ledger_path(out: Path) -> Path:
    return Path(out) / ".genmocap" / "ledger.json"


def read_ledger(out: Path) -> dict[str, dict]:
    try:
        return json.loads(_ledger_path(out).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def newest_mtime(source: Path) -> float:
    """The newest modification time of a clip's file (or of any frame of an image-sequence folder)."""
    if source.is_dir():
        return max([source.stat().st_mtime] + [f.stat().st_mtime for f in list_image_frames(source)])
    return source.stat().st_mtime


def plan(
    clips: list[Clip],
    out: Path,
    cfg: Any,
    only_new: bool = False,
    settle_seconds: float = 0.0,
    max_failed_runs: int = 3,
    now: float | None = None,
) -> list[Planned]:
    """What to do with each clip.

    A clip modified less than ``settle_seconds`` ago may still be copying in: ``settling`` (left for the next
    run). With ``only_new`` (nightly runs), a clip whose fingerprint and result digest match a successful
    run with its outputs in place is ``cached`` and not run, and one that failed ``max_failed_runs`` times in
    a row is ``given_up``; otherwise every clip runs (its cached stages cost little).
    """
    now = time.time() if now is None else now
    ledger = read_ledger(out)
    digest = cfg.result_digest()
    planned = []
    for clip in clips:
        prev = ledger.get(clip.id) or {}
        gen = int(prev.get("generation", 0))
        try:
            if settle_seconds > 0 and now - newest_mtime(clip.source) < settle_seconds:
                planned.append(Planned(clip, "settling", None, gen))
                continue
            fp = source_fingerprint(clip.source)
        except OSError:  # vanished or unreadable: the clip's run fails with the reason
            planned.append(Planned(clip, "unreadable", None, gen))
            continue
        same = prev.get("fingerprint") == fp and prev.get("result_digest") == digest
        doc = read_clip_doc(out, clip.id)
        outputs_ok = doc is not None and doc.get("status") == "ok"
        if not prev:
            category = "new"
        elif not same:
            category = "changed"
        elif prev.get("status") == "ok" and outputs_ok:
            category = "cached" if only_new else "rerun"
        elif prev.get("status") == "ok":  # its outputs were removed since: make them again
            category, gen = "rerun", gen + 1
        elif only_new and int(prev.get("failed_runs", 0)) >= max_failed_runs:
            category = "given_up"
        else:
            category = "retried"
        planned.append(Planned(clip, category, fp, gen))
    return planned


def idempotency_key(p: Planned, out: Path, cfg: Any, attempt: int = 0) -> str:
    """The key of a clip's flow run: same footage, settings, version, output folder and generation ->
    the same flow run (Prefect returns the existing one). ``attempt`` counts re-runs after a crash."""
    parts = [p.clip.id, p.fingerprint, cfg.result_digest(), __version__, str(Path(out).resolve())]
    blob = "|".join(str(x) for x in parts) + f"|g{p.generation}|a{attempt}"
    return "genmocap-" + hashlib.sha256(blob.encode()).hexdigest()[:32]


def record(out: Path, cfg: Any, ran: list[Planned], started: str) -> None:
    """After a run: each clip that ran gets its outcome from its clip.json (missing: failed)."""
    path = _ledger_path(out)
    with file_lock(path.with_suffix(".lock")):  # two coordinators on one folder
        ledger = read_ledger(out)
        for p in ran:
            doc = read_clip_doc(out, p.clip.id)
            ok = doc is not None and doc.get("status") == "ok"
            prev = ledger.get(p.clip.id) or {}
            same = (
                prev.get("fingerprint") == p.fingerprint and prev.get("result_digest") == cfg.result_digest()
            )
            failed_before = int(prev.get("failed_runs", 0)) if same else 0
            ledger[p.clip.id] = {
                "source": str(p.clip.source),
                "fingerprint": p.fingerprint,
                "result_digest": cfg.result_digest(),
                "status": "ok" if ok else "failed",
                "generation": p.generation + (0 if ok else 1),
                "failed_runs": 0 if ok else failed_before + 1,
                "last_run": started,
            }
        atomic_write_json(path, ledger)
