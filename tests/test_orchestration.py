"""What the coordinator decides without a server: the clip ledger (new / changed / cached / re-tried / given
up / settling), idempotency keys, reports rebuilt from clip.json with dated copies, and the per-clip lock."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from pipeline import ledger
from pipeline.config import load_config
from pipeline.discover import Clip
from pipeline.report import build_report, write_report
from stages.files import atomic_write_json, file_lock


def _clip(folder: Path, name: str, data: bytes = b"x" * 4096, age: float = 3600) -> Clip:
    path = folder / name
    path.write_bytes(data)
    t = time.time() - age
    os.utime(path, (t, t))
    return Clip(id=f"{path.stem}-00000000", source=path, kind="video")


def _outcome(out: Path, clip: Clip, status: str) -> None:
    error = None if status == "ok" else "probe: bad"
    doc = {"id": clip.id, "source": str(clip.source), "status": status, "error": error}
    atomic_write_json(out / clip.id / "clip.json", doc)


def _categories(planned: list[ledger.Planned]) -> dict[str, str]:
    return {p.clip.id.split("-")[0]: p.category for p in planned}


def test_ledger_takes_only_new_changed_and_failed_clips(tmp_path):
    cfg = load_config()
    out, src = tmp_path / "out", tmp_path / "drop"
    src.mkdir()
    a, b = _clip(src, "a.mp4"), _clip(src, "b.mp4", b"y" * 4096)
    first = ledger.plan([a, b], out, cfg, only_new=True)
    assert _categories(first) == {"a": "new", "b": "new"} and all(p.runs for p in first)
    _outcome(out, a, "ok")
    _outcome(out, b, "failed")
    ledger.record(out, cfg, first, "2026-12-04T02:00:00+00:00")

    c = _clip(src, "c.mp4", b"z" * 4096, age=5)  # still being copied in
    again = ledger.plan([a, b, c], out, cfg, only_new=True, settle_seconds=60)
    assert _categories(again) == {"a": "cached", "b": "retried", "c": "settling"}
    assert [p.clip.id for p in again if p.runs] == [b.id]
    # the failed clip gets a new generation, so a new flow run (a re-submission of a success does not)
    keys = {p.clip.id: ledger.idempotency_key(p, out, cfg) for p in again if p.fingerprint}
    assert keys[a.id] == ledger.idempotency_key(first[0], out, cfg)
    assert keys[b.id] != ledger.idempotency_key(first[1], out, cfg)
    assert ledger.idempotency_key(again[0], out, cfg, attempt=1) != keys[a.id]  # a crash re-run
    # without only_new (genmocap run), every settled clip runs; its cached stages cost little
    assert _categories(ledger.plan([a, b], out, cfg)) == {"a": "rerun", "b": "retried"}

    # b fails three runs in a row: given up on nightly runs
    for night in range(2):
        ledger.record(out, cfg, [p for p in ledger.plan([b], out, cfg, only_new=True)], f"night {night}")
    assert ledger.read_ledger(out)[b.id]["failed_runs"] == 3
    assert _categories(ledger.plan([b], out, cfg, only_new=True, max_failed_runs=3)) == {"b": "given_up"}

    # a changed file, a changed result setting, removed outputs: each runs again
    a.source.write_bytes(b"w" * 4096)
    assert _categories(ledger.plan([a], out, cfg, only_new=True)) == {"a": "changed"}
    _clip(src, "a.mp4")
    other = load_config(None, ["track.select=largest"])
    assert _categories(ledger.plan([a], out, other, only_new=True)) == {"a": "changed"}
    assert (
        ledger.plan([a], out, load_config(None, ["run.concurrency=4"]), only_new=True)[0].category == "cached"
    )
    (out / a.id / "clip.json").unlink()
    again = ledger.plan([a], out, cfg, only_new=True)
    assert again[0].category == "rerun" and again[0].generation == first[0].generation + 1


def test_report_is_rebuilt_from_clip_json_with_a_dated_copy(tmp_path):
    cfg = load_config()
    out = tmp_path / "out"
    clips = [_clip(tmp_path, "a.mp4"), _clip(tmp_path, "b.mp4"), _clip(tmp_path, "c.mp4")]
    _outcome(out, clips[0], "ok")
    _outcome(out, clips[1], "failed")
    started = "2026-12-04T02:00:00+00:00"
    rep = build_report(out, cfg, clips, started, missing={clips[2].id: "its flow run crashed 3 time(s)"})
    assert rep["summary"] == {"clips": 3, "ok": 1, "failed": 2}
    assert [e["error"] for e in rep["clips"]] == [None, "probe: bad", "its flow run crashed 3 time(s)"]
    write_report(out, rep)
    write_report(out, build_report(out, cfg, clips[:1], started))  # another run, same second
    assert sorted(p.name for p in (out / "reports").iterdir()) == [
        "20261204T020000Z-2.json",
        "20261204T020000Z.json",
    ]
    assert json.loads((out / "report.json").read_text())["summary"]["clips"] == 1  # the latest run
    assert json.loads((out / "reports" / "20261204T020000Z.json").read_text())["summary"]["clips"] == 3


def test_clip_lock_makes_a_second_holder_wait(tmp_path):
    lock = tmp_path / "locks" / "clip.lock"
    order: list[str] = []
    waited = threading.Event()
    with file_lock(lock):
        t = threading.Thread(target=lambda: _hold(lock, order, waited))
        t.start()
        assert waited.wait(5)  # the second holder found the lock taken
        time.sleep(0.2)
        order.append("first done")
    t.join(5)
    assert order == ["first done", "second in"]


def _hold(lock: Path, order: list[str], waited: threading.Event) -> None:
    with file_lock(lock, on_wait=waited.set):
        order.append("second in")
