"""The run report: ``OUT/report.json`` (one entry per clip of a run, plus totals) and its short text form."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pipeline import __version__
from stages.files import atomic_write_json

REPORT_SCHEMA = "genmocap.report/1"
CLIP_SCHEMA = "genmocap.clip/1"


def now() -> str:
    """UTC time of day, ISO 8601 to the second (report timestamps)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_report(ctx: Any, entries: list[dict], started: str) -> dict:
    """``OUT/report.json``: one entry per clip of this run, plus totals."""
    ok = sum(e["status"] == "ok" for e in entries)
    report = {
        "schema": REPORT_SCHEMA,
        "genmocap_version": __version__,
        "started": started,
        "finished": now(),
        "config_digest": ctx.cfg.digest(),
        "until": ctx.cfg.run.until,
        "stages": list(ctx.cfg.planned_stages()),
        "summary": {"clips": len(entries), "ok": ok, "failed": len(entries) - ok},
        "clips": entries,
    }
    atomic_write_json(ctx.out / "report.json", report)
    return report


def summary_text(report: dict) -> str:
    """A short human summary of a run report."""
    s = report["summary"]
    lines = [f"{s['clips']} clip(s): {s['ok']} ok, {s['failed']} failed"]
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
