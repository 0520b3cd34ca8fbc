"""Wall time and per-clip orchestration overhead of the four ways to run the same ``genmocap run`` job.

    python benchmarks/orchestration.py [--clips N] [--modes local,prefect-local,server-1,server-2] [--keep]

The job: N small synthetic two-person clips (``tests.media``, 320x240, 1 s at 30 fps, user detections from
``--detections``) up to ``postprocess`` with the reduced random-weight fixture models and the overrides of
``tests/test_scaleout.py`` (``SETTINGS``; ``GENMOCAP_BODY_MODEL`` = the fixture body model). Each mode
runs it twice into its own output folder: fresh (every stage computed), then again on the same folder
(every stage cached: what is left is mostly orchestration). Modes:

* ``local``: ``genmocap run ... --set run.orchestrator=local`` (plain Python, no Prefect);
* ``prefect-local``: ``genmocap run ...`` with no ``PREFECT_API_URL``: Prefect's local mode (a temporary
  API server on SQLite started by the CLI). Its ``PREFECT_HOME`` is a folder of this benchmark, its
  database migrated before the first timed run (untimed), so a shared ``~/.prefect`` is left alone;
* ``server-1`` / ``server-2``: PostgreSQL and a real Prefect server (``tools.services``),
  ``genmocap deploy --pool bench --gpu-slots 2``, one / two ``prefect worker start --pool bench --type
  process --limit 1`` workers polling every second (``PREFECT_WORKER_QUERY_SECONDS=1``), then
  ``genmocap run ... --pool bench``. Both share the server (their output folders differ, so do the clips'
  idempotency keys). A cached re-run on a server submits the same idempotency keys, so it maps every clip
  to its finished flow run and starts none: it measures the coordinator alone.

Every ``genmocap`` call is a fresh subprocess (``python -m flows.cli``, ``PYTHONPATH`` = the repo, cwd = the
repo) in its own process group, so each mode pays its real start-up; its output goes, each line stamped
with the seconds since the start, to ``WORKDIR/logs/<mode>-<fresh|cached>.log``. The table gives the wall
times and the overhead per clip against ``local``: ``(t_mode - t_local) / N``. Below it, for the Prefect
modes, a timeline from Prefect's own flow- and task-run records (the SQLite database of the local mode,
the server's REST API): process start -> coordinator flow running, the clip flow runs (created -> running
is the wait for a worker: its poll plus the flow process's start), coordinator end -> process exit; and for
every mode the sum of the stage seconds recorded in the ``clip.json`` files the run wrote.

Services (PostgreSQL, server, workers) are started after the local modes, so those do not compete with
them, and stopped in a ``finally``. The machine's 1-minute load average is printed with each mode: on a
shared CPU, compare rows taken under similar load. On the 2-core development CPU the default run (4 clips,
all modes) takes a few minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import psutil  # noqa: E402

from tests.media import default_people, detection_rows, ffmpeg_available, make_clip  # noqa: E402
from tests.test_model_stages import BODY, GEM_CKPT, HMR2, VITPOSE  # noqa: E402
from tests.test_scaleout import SETTINGS, SIZE  # noqa: E402
from tools import services  # noqa: E402

MODES = ("local", "prefect-local", "server-1", "server-2")
POOL = "bench"
SECONDS, FPS = 1.0, 30
TIMEOUT = 900.0  # per genmocap call
PREFECT = Path(sys.executable).parent / "prefect"  # the venv's CLI


@dataclass
class Run:
    """One timed ``genmocap`` call."""

    wall: float
    rc: int
    t0: float  # epoch seconds at the start
    t1: float  # epoch seconds at the exit
    log: Path
    leftovers: list[str] = field(default_factory=list)  # its processes still alive after it exited


@dataclass
class Result:
    mode: str
    cmd: list[str]
    load: float
    fresh: Run | None = None
    cached: Run | None = None


def make_footage(root: Path, n: int) -> tuple[Path, Path]:
    """``root/clips/clip<i>.mp4`` (N clips of two moving boxes) and ``root/dets.json`` (their boxes).

    The boxes start 3 px further right in each clip: the clips are alike in cost but not byte-identical
    (the artifact store is content-addressed, so identical clips would share every stage's results).
    """
    dets: dict[str, list] = {}
    for i in range(n):
        people = [replace(b, x=b.x + 3 * i) for b in default_people(SIZE)]
        make_clip(root / "clips" / f"clip{i}.mp4", seconds=SECONDS, fps=FPS, size=SIZE, people=people)
        dets[f"clip{i}"] = detection_rows(people, np.arange(int(SECONDS * FPS)) / FPS)
    (root / "dets.json").write_text(json.dumps(dets))
    return root / "clips", root / "dets.json"


def _base_env() -> dict[str, str]:
    """This environment without PREFECT_* (a profile or API URL of the caller must not leak in)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}


def _group(pgid: int) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid:
                found.append(p)
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
    return found


def genmocap(args: list[str], env: dict[str, str], log: Path) -> Run:
    """``python -m flows.cli ARGS`` in its own process group; every output line stamped into ``log``."""
    full = _base_env() | {"PYTHONPATH": str(REPO), "GENMOCAP_BODY_MODEL": str(BODY)}
    full |= {"PYTHONUNBUFFERED": "1", **env}
    log.parent.mkdir(parents=True, exist_ok=True)
    t0, start = time.time(), time.perf_counter()
    p = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", *args],
        env=full,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    timer = threading.Timer(TIMEOUT, lambda: os.killpg(p.pid, signal.SIGKILL))
    timer.start()
    try:
        with open(log, "w") as f:
            f.write(f"# {shlex.join(p.args)}\n")  # type: ignore[arg-type]
            for line in p.stdout:  # type: ignore[union-attr]
                f.write(f"{time.perf_counter() - start:8.2f} {line}")
        rc = p.wait()
        wall = time.perf_counter() - start
        left = [f"{q.pid} {' '.join(q.cmdline())[:100]}" for q in _group(p.pid) if q.is_running()]
    finally:
        timer.cancel()
        services.stop_process_group(p)  # type: ignore[arg-type]
    return Run(wall=wall, rc=rc, t0=t0, t1=time.time(), log=log, leftovers=left)


# ------------------------------------------------------------------------------------- Prefect's records


def _ts(v: str | None) -> float | None:
    """Epoch seconds of a Prefect timestamp (ISO 8601 from the API; naive UTC text in SQLite)."""
    if not v:
        return None
    d = datetime.fromisoformat(v)
    return (d if d.tzinfo else d.replace(tzinfo=UTC)).timestamp()


def _flow_runs_sqlite(db: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as c:
        c.row_factory = sqlite3.Row
        runs = [
            dict(r) for r in c.execute("select id, created, start_time, end_time, parameters from flow_run")
        ]
        tasks = c.execute("select flow_run_id, start_time, end_time from task_run").fetchall()
    for r in runs:
        r["parameters"] = json.loads(r["parameters"] or "{}")
        r["tasks"] = [(_ts(t[1]), _ts(t[2])) for t in tasks if t[0] == r["id"]]
    return runs


def _api(api_url: str, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    import httpx

    r = httpx.post(api_url + path, json=body, timeout=30, trust_env=False)
    r.raise_for_status()
    return r.json()


def _flow_runs_api(api_url: str, t0: float) -> list[dict[str, Any]]:
    since = datetime.fromtimestamp(t0 - 1, UTC).isoformat()
    body = {"flow_runs": {"start_time": {"after_": since}}, "sort": "START_TIME_ASC", "limit": 200}
    runs = _api(api_url, "/flow_runs/filter", body)
    for r in runs:
        tasks = _api(api_url, "/task_runs/filter", {"flow_runs": {"id": {"any_": [r["id"]]}}, "limit": 200})
        r["tasks"] = [(_ts(t["start_time"]), _ts(t["end_time"])) for t in tasks]
    return runs


def timeline(runs: list[dict[str, Any]], run: Run, out: Path) -> str:
    """Where the wall time of ``run`` went, from the flow runs (of output folder ``out``) it started."""
    mine = [
        r
        for r in runs
        if r["parameters"].get("out") == str(out)
        and (_ts(r["start_time"]) or 0) >= run.t0 - 1
        and (_ts(r["start_time"]) or 0) <= run.t1
    ]
    coord = [r for r in mine if "source" not in r["parameters"]]
    clips = [r for r in mine if "source" in r["parameters"]]
    parts = []
    if coord and coord[0]["start_time"] and coord[0]["end_time"]:
        c0, c1 = _ts(coord[0]["start_time"]), _ts(coord[0]["end_time"])
        parts.append(
            f"start->coordinator running {c0 - run.t0:5.1f} s, coordinator {c1 - c0:5.1f} s, "
            f"coordinator end->exit {run.t1 - c1:4.1f} s"
        )
    if clips:
        waits = [_ts(r["start_time"]) - _ts(r["created"]) for r in clips]
        lengths = [_ts(r["end_time"]) - _ts(r["start_time"]) for r in clips if r["end_time"]]
        tasks = [e - s for r in clips for s, e in r["tasks"] if s and e]
        parts.append(
            f"{len(clips)} clip flow runs: created->running {np.mean(waits):4.1f} s, running "
            f"{np.mean(lengths):5.1f} s each; {len(tasks)} task runs {sum(tasks):5.1f} s in all"
        )
    else:
        parts.append("no clip flow run started (the idempotency keys map the clips to finished runs)")
    return "; ".join(parts)


def stage_seconds(out: Path, since: float) -> tuple[int, int, float]:
    """(clips, stages computed, sum of stage seconds) of the ``clip.json`` files written since ``since``."""
    n, computed, total = 0, 0, 0.0
    for doc in out.glob("*/clip.json"):
        if doc.stat().st_mtime >= since:
            stages = json.loads(doc.read_text())["stages"].values()
            n += 1
            computed += sum(s.get("status") == "computed" for s in stages)
            total += sum(s.get("seconds", 0.0) for s in stages)
    return n, computed, total


# ----------------------------------------------------------------------------------------------- the modes


def job_args(clips: Path, out: Path, dets: Path) -> list[str]:
    sets = [a for s in SETTINGS for a in ("--set", s)]
    return ["run", str(clips), "--out", str(out), "--detections", str(dets), "--until", "postprocess", *sets]


def run_mode(
    res: Result, env: dict[str, str], out: Path, logs: Path, api: str | None, db: Path | None
) -> None:
    """The fresh and the cached run of one mode, with their timelines printed as they finish."""
    for phase in ("fresh", "cached"):
        run = genmocap(res.cmd[1:], env, logs / f"{res.mode}-{phase}.log")
        setattr(res, phase, run)
        n, computed, secs = stage_seconds(out, run.t0)
        line = f"  {res.mode:13s} {phase:6s} {run.wall:6.1f} s (rc {run.rc}); {n} clip.json written, "
        line += f"{computed} stages computed, stage seconds {secs:5.1f}"
        print(line, flush=True)
        if run.rc != 0:
            print("    FAILED; log tail:\n" + "\n".join(run.log.read_text().splitlines()[-40:]), flush=True)
        if run.leftovers:
            print(f"    still alive after exit (then stopped): {run.leftovers}", flush=True)
        try:
            records = _flow_runs_api(api, run.t0) if api else _flow_runs_sqlite(db) if db else None
            if records is not None:
                print("    " + timeline(records, run, out), flush=True)
        except Exception as e:  # the timeline is a diagnostic: never lose the timings over it
            print(f"    (no timeline: {type(e).__name__}: {e})", flush=True)


def wait_workers(api_url: str, names: set[str], timeout: float = 180) -> float:
    """Seconds until every worker in ``names`` is ONLINE on the pool."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        rows = _api(api_url, f"/work_pools/{POOL}/workers/filter", {})
        if names <= {w["name"] for w in rows if w.get("status") == "ONLINE"}:
            return time.perf_counter() - t0
        time.sleep(0.5)
    raise RuntimeError(f"workers {sorted(names)} not online after {timeout:.0f} s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--clips", type=int, default=4, metavar="N")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    p.add_argument("--workdir", type=Path, help="where clips, outputs, logs and services go (default: temp)")
    p.add_argument("--keep", action="store_true", help="keep the work folder (a temp one is removed)")
    args = p.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    if bad := [m for m in modes if m not in MODES]:
        p.error(f"unknown modes {bad}; choose from {MODES}")
    missing = [str(f) for f in (VITPOSE, HMR2, GEM_CKPT, BODY) if not f.is_file()]
    if missing or not ffmpeg_available():
        print(f"needs ffmpeg and the reduced fixture models; missing: {missing or 'ffmpeg'}", file=sys.stderr)
        return 2
    servers = [m for m in modes if m.startswith("server")]
    if servers and services.find_postgres_bin() is None:
        print(services.INSTALL_HINT, file=sys.stderr)
        return 2

    temp = args.workdir is None
    work = Path(tempfile.mkdtemp(prefix="genmocap-orch-")) if temp else args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    logs = work / "logs"
    n = args.clips
    print(f"benchmark: {shlex.join([Path(sys.executable).name, *sys.argv])}")
    print(
        f"work folder: {work}; {n} clips of {SECONDS:g} s {SIZE[0]}x{SIZE[1]} @ {FPS} fps; "
        f"{os.cpu_count()} CPUs; load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    clips, dets = make_footage(work, n)
    base = job_args(clips, Path("OUT"), dets)
    print(
        f"job: genmocap {shlex.join(base)}\n  local: + --set run.orchestrator=local; "
        f"server-N: + --pool {POOL}; OUT = {work}/out-<mode>",
        flush=True,
    )

    results: list[Result] = []
    pg = server = None
    wenv: dict[str, str] = {}
    workers: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for mode in modes:
            out = work / f"out-{mode}"
            cmd = ["genmocap", *job_args(clips, out, dets)]
            env: dict[str, str] = {}
            api = db = None
            if mode == "local":
                cmd += ["--set", "run.orchestrator=local"]
            elif mode == "prefect-local":
                home = work / "prefect-local-home"
                env = {"PREFECT_HOME": str(home)}
                t = time.perf_counter()
                subprocess.run(
                    [str(PREFECT), "server", "database", "upgrade", "-y"],
                    env=_base_env() | env,
                    capture_output=True,
                    check=True,
                    timeout=300,
                )
                print(f"prefect-local: SQLite database migrated in {time.perf_counter() - t:.1f} s (untimed)")
                db = home / "prefect.db"
            else:
                if server is None:
                    t = time.perf_counter()
                    pg = services.start_postgres(work / "services")
                    server = services.start_prefect_server(pg.url, work / "services")
                    print(
                        f"services: PostgreSQL + Prefect server {server.api_url} up in "
                        f"{time.perf_counter() - t:.1f} s",
                        flush=True,
                    )
                    wenv = {**server.env(), "PREFECT_WORKER_QUERY_SECONDS": "1"}
                    wenv["GENMOCAP_BODY_MODEL"] = str(BODY)
                    dep = genmocap(["deploy", "--pool", POOL, "--gpu-slots", "2"], wenv, logs / "deploy.log")
                    if dep.rc != 0:
                        raise RuntimeError("genmocap deploy failed:\n" + dep.log.read_text()[-3000:])
                    print(
                        f"deploy: genmocap deploy --pool {POOL} --gpu-slots 2 in {dep.wall:.1f} s", flush=True
                    )
                want = {f"w{i + 1}" for i in range(int(mode.split("-")[1]))}
                for name in sorted(want - set(workers)):
                    workers[name] = services.start_worker(POOL, wenv, logs / f"{name}.log", name, 1, logs)
                online = wait_workers(server.api_url, want)
                print(
                    f"workers {sorted(want)} online (prefect worker start --pool {POOL} --type process "
                    f"--limit 1, PREFECT_WORKER_QUERY_SECONDS=1) after {online:.1f} s",
                    flush=True,
                )
                env = server.env()
                api = server.api_url
                cmd += ["--pool", POOL]
            res = Result(mode, cmd, os.getloadavg()[0])
            results.append(res)
            run_mode(res, env, out, logs, api, db)
    except Exception:  # a set-up step failed: still print what was measured
        traceback.print_exc()
    finally:
        for w in workers.values():
            services.stop_process_group(w)
        if server is not None:
            server.stop()
        if pg is not None:
            pg.stop()

    local = next((r for r in results if r.mode == "local"), None)

    def per_clip(r: Result, phase: str) -> str:
        mine, ref = getattr(r, phase), getattr(local, phase) if local else None
        if mine is None or ref is None or mine.rc or ref.rc:
            return "n/a"
        return f"{(mine.wall - ref.wall) / n:+.2f}"

    def wall(run: Run | None) -> str:
        return "n/a" if run is None else f"{run.wall:.1f}" + ("" if run.rc == 0 else f" (rc {run.rc})")

    print(f"\n{n} clips; overhead per clip = (t_mode - t_local) / {n}")
    head = f"{'mode':14s} {'load':>5s} {'fresh s':>12s} {'cached s':>12s} {'fresh +s/clip':>14s}"
    print(head + f" {'cached +s/clip':>15s}")
    print("-" * (len(head) + 16))
    for r in results:
        print(
            f"{r.mode:14s} {r.load:5.2f} {wall(r.fresh):>12s} {wall(r.cached):>12s} "
            f"{per_clip(r, 'fresh'):>14s} {per_clip(r, 'cached'):>15s}"
        )
    print(
        "(server modes: workers poll every 1 s, PREFECT_WORKER_QUERY_SECONDS=1; the coordinator polls "
        "its clips' runs every 2 s; load = 1-min load average at the mode's start)"
    )
    print(f"logs: {logs}" if not temp or args.keep else "(work folder removed; --keep keeps it)")
    if temp and not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(r.fresh and r.cached and not r.fresh.rc and not r.cached.rc for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
