"""The run report: ``OUT/report.json`` (one entry per clip of a run, plus totals), its dated copy under
``OUT/reports/``, and its short text form.

Per-clip outcomes live in ``OUT/<clip>/clip.json`` (written by the process that ran the clip, wherever that
was); a report is rebuilt from those files, so runs that share an output folder, or clips run on different
workers, never overwrite each other's outcomes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline import __version__
from stages.files import atomic_write_json

REPORT_SCHEMA = "genmocap.report/1"
CLIP_SCHEMA = "genmocap.clip/1"


def now() -> str:
    """UTC time of day, ISO 8601 to the second (report timestamps)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def clip_entry(doc: dict) -> dict:
    """A clip's entry in the run report, from its ``clip.json``."""
    ok = doc.get("status") == "ok"
    return {
        "id": doc["id"],
        "source": doc.get("source"),
        "status": doc.get("status", "failed"),
        "error": doc.get("error"),
        "people": len(doc.get("people") or []) if ok else 0,
        "warnings": doc.get("warnings") or [],
        "stages": doc.get("stages") or {},
        "out": doc["id"],
    }


def read_clip_doc(out: Path, clip_id: str) -> dict | None:
    """``OUT/<clip>/clip.json``, or None when absent or unreadable."""
    try:
        return json.loads((Path(out) / clip_id / "clip.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def build_report(
    out: Path,
    cfg: Any,
    clips: Iterable[Any],
    started: str,
    missing: dict[str, str] | None = None,
    extra: dict | None = None,
) -> dict:
    """The report of one run over ``clips`` (objects with ``id`` and ``source``), from their clip.json.

    ``missing[id]`` is the reason a clip has no outcome of this run (e.g. its flow run crashed past its
    re-runs); such a clip, or one with no readable clip.json, is reported failed with that reason.
    """
    entries = []
    for clip in clips:
        doc = None if clip.id in (missing or {}) else read_clip_doc(out, clip.id)
        if doc is None:
            reason = (missing or {}).get(clip.id) or "no outcome recorded (clip.json missing)"
            doc = {"id": clip.id, "source": str(clip.source), "status": "failed", "error": reason}
        entries.append(clip_entry(doc))
    ok = sum(e["status"] == "ok" for e in entries)
    return {
        "schema": REPORT_SCHEMA,
        "genmocap_version": __version__,
        "started": started,
        "finished": now(),
        "config_digest": cfg.digest(),
        "until": cfg.run.until,
        "stages": list(cfg.planned_stages()),
        **(extra or {}),
        "summary": {"clips": len(entries), "ok": ok, "failed": len(entries) - ok},
        "clips": entries,
    }


def write_report(out: Path, report: dict) -> dict:
    """Write ``OUT/report.json`` (the latest run) and ``OUT/reports/<start time>.json`` (kept per run)."""
    out = Path(out)
    stamp = report["started"].replace("-", "").replace(":", "").replace("+0000", "Z").replace("+00:00", "Z")
    dated = out / "reports" / f"{stamp}.json"
    n = 1
    while dated.exists():  # two runs started in the same second
        n += 1
        dated = out / "reports" / f"{stamp}-{n}.json"
    atomic_write_json(dated, report)
    atomic_write_json(out / "report.json", report)
    return report


def summary_text(report: dict) -> str:
    """A short human summary of a run report."""
    s = report["summary"]
    lines = [f"{s['clips']} clip(s): {s['ok']} ok, {s['failed']} failed"]
    for kind, ids in (report.get("nightly") or {}).items():
        if ids:
            lines.append(f"  {kind}: {len(ids)}")
    for e in report["clips"]:
        counts: dict[str, int] = {}
        for st in e["stages"].values():
            counts[st["status"]] = counts.get(st["status"], 0) + 1
        stage_txt = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        if e["status"] == "ok":
            lines.append(f"  ok      {e['id']}: {e['people']} person(s); stages {stage_txt}")
        else:
            lines.append(f"  FAILED  {e['id']}: {e['error']}")
    return "\n".join(lines)
