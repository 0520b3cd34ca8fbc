"""Scale-out on Prefect's own machinery, all real: PostgreSQL, a Prefect server, process work pools and
worker subprocesses, the reduced fixture models, ffmpeg-made clips.

- a folder of 6 clips is spread over two workers, each clip run exactly once, with outputs identical to a
  ``run.orchestrator=local`` run and one merged report; re-submitting the folder starts nothing new;
- a worker and its flow process SIGKILLed mid-clip: the zombie automation marks the run Crashed, the
  coordinator re-runs the clip on the other worker, and its outputs are byte-identical;
- a schedule every minute over a drop folder takes only the new complete clip (not a half-copied one).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from tests.media import default_people, detection_rows, ffmpeg_available, make_clip
from tests.shared import genmocap
from tests.test_model_stages import BODY, GEM_CKPT, HMR2, REDUCED, VITPOSE
from tools import services

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not ffmpeg_available(), reason="ffmpeg/ffprobe not installed"),
    pytest.mark.skipif(
        not (VITPOSE.is_file() and HMR2.is_file() and GEM_CKPT.is_file() and BODY.is_file()),
        reason="reduced fixture checkpoints not found",
    ),
]

REPO = Path(__file__).resolve().parents[1]
SIZE = (320, 240)
POOL = "test-gpu"
HEARTBEAT, ZOMBIE = 30, 60  # seconds: Prefect's shortest heartbeat, and silence before a run is a zombie
SETTINGS = [
    *[s for s in REDUCED if not s.startswith("run.orchestrator")],
    "camera.backend=opencv",
    "run.until=postprocess",
    "run.retry_delay=1",
]


def _sets() -> list[str]:
    return [a for s in SETTINGS for a in ("--set", s)]


def _clip(folder: Path, name: str, seconds: float, dets: dict) -> Path:
    people = default_people(SIZE)
    path = make_clip(folder / name, seconds=seconds, fps=30, size=SIZE, people=people)
    dets[Path(name).stem] = detection_rows(people, np.arange(int(round(seconds * 30))) / 30.0)
    return path


@pytest.fixture(scope="module")
def footage(tmp_path_factory):
    """``shots/`` (6 clips of different lengths), ``long/`` (one 4 s clip for the crash), detections."""
    root = tmp_path_factory.mktemp("scaleout")
    dets: dict[str, list] = {}
    for i in range(6):
        _clip(root / "shots", f"shot{i}.mp4", 1.0 + 0.2 * i, dets)
    _clip(root / "long", "long.mp4", 4.0, dets)
    for name in ("n1", "n2"):
        _clip(root / "pending", f"{name}.mp4", 1.0 + 0.1 * len(name) + (0.3 if name == "n2" else 0), dets)
    det_file = root / "dets.json"
    det_file.write_text(json.dumps(dets))
    return root, det_file


def _genmocap(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return genmocap(*args, env={"GENMOCAP_BODY_MODEL": str(BODY), **(env or {})})


def _digests(clip_dir: Path) -> dict[str, str]:
    """sha256 of every published file of a clip except its run record (clip.json has times and hosts)."""
    return {
        p.relative_to(clip_dir).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(clip_dir.rglob("*"))
        if p.is_file() and p.name != "clip.json"
    }


@pytest.fixture(scope="module")
def local_outputs(footage, tmp_path_factory):
    """The reference: every clip run with ``run.orchestrator=local`` (no Prefect at all)."""
    root, dets = footage
    out = tmp_path_factory.mktemp("local-out")
    for folder in ("shots", "long"):
        r = _genmocap("run", str(root / folder), "--out", str(out), "--detections", str(dets), *_sets(),
                      "--set", "run.orchestrator=local")  # fmt: skip
        assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="module")
def cluster(prefect_server, tmp_path_factory):
    """``genmocap deploy`` on the server, then two process workers on the pool (stopped at the end)."""
    env = {**prefect_server.env(), "PREFECT_WORKER_QUERY_SECONDS": "1", "GENMOCAP_BODY_MODEL": str(BODY)}
    r = _genmocap("deploy", "--pool", POOL, "--gpu-slots", "2", "--heartbeat", str(HEARTBEAT),
                  "--zombie-seconds", str(ZOMBIE), env=env)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"deployment process_clip/{POOL}" in r.stdout
    logs = tmp_path_factory.mktemp("workers")
    workers = {}

    def start(name: str, pool: str = POOL) -> subprocess.Popen:
        workers[name] = services.start_worker(pool, env, logs / f"{name}.log", name, limit=1, cwd=logs)
        return workers[name]

    start("w1")
    start("w2")
    try:
        yield env, workers, logs, start
    finally:
        for p in workers.values():
            services.stop_process_group(p)


def _api(env: dict, path: str, body: dict) -> list[dict]:
    """POST a filter to the server's REST API (this test process never switches its own Prefect settings)."""
    import httpx

    r = httpx.post(env["PREFECT_API_URL"] + path, json=body, timeout=30, trust_env=False)
    r.raise_for_status()
    return r.json()


def _clip_runs(env: dict, deployment: str = POOL) -> list[dict]:
    """Every flow run of the deployments named ``deployment`` (``process_clip/<POOL>``: by its flow)."""
    body = {"deployments": {"name": {"any_": [deployment]}}, "limit": 200}
    if deployment == POOL:
        body["flows"] = {"name": {"any_": ["process_clip"]}}
    return _api(env, "/flow_runs/filter", body)


def test_folder_spread_over_two_workers(footage, local_outputs, cluster, tmp_path):
    root, dets = footage
    env, workers, logs, _ = cluster
    out = tmp_path / "out"
    args = [
        "run",
        str(root / "shots"),
        "--out",
        str(out),
        "--pool",
        POOL,
        "--detections",
        str(dets),
        *_sets(),
    ]
    r = _genmocap(*args, env=env)
    assert r.returncode == 0, r.stdout + r.stderr

    report = json.loads((out / "report.json").read_text())
    assert report["summary"] == {"clips": 6, "ok": 6, "failed": 0}
    assert report["orchestrator"] == f"prefect pool {POOL}"
    assert len(list((out / "reports").glob("*.json"))) == 1  # the dated copy of this run

    every = _clip_runs(env)
    runs = [fr for fr in every if fr["parameters"]["out"] == str(out)]
    assert len(runs) == 6, [(fr["name"], fr["parameters"].get("out")) for fr in every]
    assert all(fr["state"]["type"] == "COMPLETED" for fr in runs)  # each clip exactly once
    by_clip = {fr["parameters"]["clip"]: fr["id"] for fr in runs}
    assert sorted(by_clip) == sorted(e["id"] for e in report["clips"])
    # every stage records where it ran: the clip's own flow run, on a worker's child process
    for cid, run_id in by_clip.items():
        doc = json.loads((out / cid / "clip.json").read_text())
        assert {s["ran_on"]["flow_run"] for s in doc["stages"].values() if s["ran_on"]} == {run_id}
        assert _digests(out / cid) == _digests(local_outputs / cid), cid  # identical to a local run
    # spread: each worker's log names the flow runs it submitted; both workers may try to submit one run,
    # and the server then aborts the second submission ("Aborted submission of flow run '<id>'")
    taken = {name: sum(_ran(logs / f"{name}.log", run_id) for run_id in by_clip.values()) for name in workers}
    assert sum(taken.values()) == 6 and min(taken.values()) >= 1, taken

    # the same folder again: the idempotency keys map every clip to its finished run, nothing new starts
    r = _genmocap(*args, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert len([fr for fr in _clip_runs(env) if fr["parameters"]["out"] == str(out)]) == 6


def _ran(log: Path, run_id: str) -> bool:
    """Did the worker writing ``log`` run the flow run ``run_id`` (submitted, and not aborted)?"""
    text = log.read_text()
    aborted = f"Aborted submission of flow run '{run_id}'" in text
    return f"submitting flow run '{run_id}'" in text and not aborted


def test_killed_worker_clip_is_rerun_elsewhere(footage, local_outputs, cluster, tmp_path):
    root, dets = footage
    env, workers, logs, start = cluster
    out = tmp_path / "out"
    args = ["run", str(root / "long"), "--out", str(out), "--pool", POOL, "--detections", str(dets), *_sets()]
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "GENMOCAP_BODY_MODEL": str(BODY), **env}
    coordinator = subprocess.Popen([sys.executable, "-m", "flows.cli", *args], env=full_env, cwd=REPO,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        # wait until the clip's flow run is mid-clip: running, with its first stage done
        victim = None
        deadline = time.time() + 300
        while victim is None and time.time() < deadline:
            time.sleep(0.3)
            for fr in _clip_runs(env):
                running = fr["state"]["type"] == "RUNNING" and fr["infrastructure_pid"]
                if fr["parameters"]["out"] != str(out) or not running:
                    continue
                tasks = _api(env, "/task_runs/filter", {"flow_runs": {"id": {"any_": [fr["id"]]}}})
                if any(t["state"] and t["state"]["type"] == "COMPLETED" for t in tasks):
                    victim = fr
        assert victim is not None, "the clip never got going"
        flow_pid = int(victim["infrastructure_pid"].rsplit(":", 1)[-1])  # "pid" or "host:pid"
        owner = next(n for n, p in workers.items() if p.poll() is None and
                     flow_pid in {c.pid for c in psutil.Process(p.pid).children(recursive=True)})  # fmt: skip
        # the worker *and* its flow process (Prefect gives each flow run its own process group), at once
        flow_group = os.getpgid(flow_pid)
        os.killpg(workers[owner].pid, signal.SIGKILL)
        os.killpg(flow_group, signal.SIGKILL)
        rc = coordinator.wait(timeout=ZOMBIE * 3 + 300)
        stdout, stderr = coordinator.communicate()
    finally:
        if coordinator.poll() is None:
            coordinator.kill()
    assert rc == 0, stdout + stderr
    start(owner)  # the pool has two workers again for the tests after this one

    runs = sorted(
        (fr for fr in _clip_runs(env) if fr["parameters"]["out"] == str(out)), key=lambda f: f["created"]
    )
    assert [fr["state"]["type"] for fr in runs] == ["CRASHED", "COMPLETED"]  # re-run once, completed once
    assert "heartbeat" in (runs[0]["state"]["message"] or "")
    cid = runs[0]["parameters"]["clip"]
    doc = json.loads((out / cid / "clip.json").read_text())
    assert doc["status"] == "ok"
    assert {s["ran_on"]["flow_run"] for s in doc["stages"].values()} == {runs[1]["id"]}
    assert _digests(out / cid) == _digests(local_outputs / cid)  # byte-identical to an undisturbed run
    # nothing partial under a final name: every published file is complete (equal digests above), and the
    # artifact store holds only whole artifacts (meta.json is written last)
    store = out / ".genmocap" / "artifacts"
    for d in store.glob("*/*"):
        if d.parent.name != ".tmp":
            assert (d / "meta.json").is_file(), d


def test_nightly_schedule_takes_only_new_complete_clips(footage, cluster, tmp_path):
    root, dets = footage
    env, workers, logs, start = cluster
    drop, out = tmp_path / "drop", tmp_path / "mocap"
    drop.mkdir()
    old = time.time() - 3600  # copied in long ago: settled
    (drop / "n1.mp4").write_bytes((root / "pending" / "n1.mp4").read_bytes())
    os.utime(drop / "n1.mp4", (old, old))
    start("control", "genmocap-control")  # the pool scheduled coordinators run on
    when = ["--cron", "* * * * *", "--name", "every-minute", "--settle", "60"]
    r = _genmocap("schedule", str(drop), "--out", str(out), "--pool", POOL, *when, "--detections", str(dets),
                  *_sets(), env=env)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    try:
        first = _wait_scheduled_run(env, after=time.time() - 5)
        rep1 = json.loads(Path(_latest_report(out)).read_text())
        assert rep1["nightly"]["new"] and rep1["summary"]["ok"] == 1, rep1

        (drop / "n2.mp4").write_bytes((root / "pending" / "n2.mp4").read_bytes())
        os.utime(drop / "n2.mp4", (old, old))
        half = (root / "pending" / "n1.mp4").read_bytes()
        (drop / "copying.mp4").write_bytes(half[: len(half) // 2])  # still being copied: fresh mtime
        added = time.time()
        _wait_scheduled_run(env, after=added, not_id=first)
        rep2 = json.loads(Path(_latest_report(out)).read_text())
        assert [e["source"] for e in rep2["clips"]] == [str(drop / "n2.mp4")], rep2
        assert rep2["summary"] == {"clips": 1, "ok": 1, "failed": 0}
        night = rep2["nightly"]
        assert len(night["new"]) == 1 and night["new"][0].startswith("n2-")
        assert len(night["cached"]) == 1 and night["cached"][0].startswith("n1-")
        assert len(night["settling"]) == 1 and night["settling"][0].startswith("copying-"), night

        listed = _genmocap("schedule", "--list", env=env)
        assert listed.returncode == 0 and '"every-minute"' in listed.stdout and "* * * * *" in listed.stdout
        assert _genmocap("schedule", "--pause", "every-minute", env=env).returncode == 0
        assert '"active": false' in _genmocap("schedule", "--list", env=env).stdout
    finally:
        _genmocap("schedule", "--delete", "every-minute", env=env)
    assert "every-minute" not in _genmocap("schedule", "--list", env=env).stdout


def _latest_report(out: Path) -> Path:
    return max((out / "reports").glob("*.json"), key=lambda p: p.stat().st_mtime)


def _wait_scheduled_run(env: dict, after: float, not_id: str | None = None, timeout: float = 240) -> str:
    """Wait for a scheduled ``process_folder/every-minute`` run that started after ``after`` to finish."""
    from datetime import datetime

    deadline = time.time() + timeout
    while time.time() < deadline:
        time.sleep(2)
        for fr in _clip_runs(env, "every-minute"):
            started = fr["start_time"] and datetime.fromisoformat(fr["start_time"]).timestamp()
            if fr["id"] == not_id or not started or started < after:
                continue
            if fr["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                assert fr["state"]["type"] == "COMPLETED", fr["state"]
                return fr["id"]
    raise AssertionError("no scheduled run finished in time")
