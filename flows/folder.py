"""``process_folder``: the coordinator. It discovers clips, runs one ``process_clip`` per clip and merges
the report.

Without a pool (``genmocap run``, Prefect's local mode or a server) the clip flows run in this process,
``run.concurrency`` at a time. With ``pool`` (``genmocap run --pool gpu``, or a scheduled run) each clip
becomes a flow run of the ``process_clip/<pool>`` deployment, started with ``run_deployment`` under an
idempotency key (``pipeline.ledger``), and any worker of the pool picks it up. The coordinator waits for
every clip's final state; a clip whose run *crashed* (worker lost, marked by the zombie automation that
``genmocap deploy`` installs) is started again, up to ``run.crash_retries`` times. The report is rebuilt from
the clips' ``clip.json`` files.
"""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from flows.clip import process_clip, register_context
from pipeline import ledger
from pipeline.config import Config, load_config
from pipeline.discover import Clip, discover
from pipeline.report import build_report, now, write_report
from pipeline.runner import RunContext

POLL_SECONDS = 2.0


def clip_parameters(clip: Clip, out: str, settings: dict, detections: str | None) -> dict:
    """The JSON parameters of one ``process_clip`` run."""
    return {
        "source": str(clip.source),
        "out": out,
        "clip": clip.id,
        "kind": clip.kind,
        "settings": settings,
        "detections": detections,
    }


@task(name="clip", cache_policy=NO_CACHE, persist_result=False)
def clip_task(params: dict) -> str:
    state = process_clip.with_options(flow_run_name=params["clip"])(**params, return_state=True)
    return state.type.value


def _run_here(params: list[dict]) -> dict[str, str]:
    """Clip flows in this process, as sub-flows (``run.concurrency`` at a time: the flow's task runner)."""
    for f in clip_task.map(params):
        f.wait()
    return {}


def _run_on_pool(
    todo: list[ledger.Planned], params: list[dict], pool: str, out: str, cfg: Config
) -> dict[str, str]:
    """One deployment run per clip on ``pool``; waits for all. Returns {clip id: why it has no outcome}."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    def submit(p: ledger.Planned, prm: dict, attempt: int):
        return run_deployment(
            f"process_clip/{pool}",
            parameters=prm,
            flow_run_name=p.clip.id if attempt == 0 else f"{p.clip.id} (re-run {attempt})",
            idempotency_key=ledger.idempotency_key(p, Path(out), cfg, attempt),
            timeout=0,
            as_subflow=True,
            tags=["genmocap"],
        ).id

    waiting = {p.clip.id: (p, prm, 0, submit(p, prm, 0)) for p, prm in zip(todo, params, strict=True)}
    missing: dict[str, str] = {}
    with get_client(sync_client=True) as client:
        while waiting:
            time.sleep(POLL_SECONDS)
            for cid, (p, prm, attempt, run_id) in list(waiting.items()):
                state = client.read_flow_run(run_id).state
                if state is None or not state.is_final():
                    continue
                if state.is_crashed() and attempt < cfg.run.crash_retries:
                    waiting[cid] = (p, prm, attempt + 1, submit(p, prm, attempt + 1))
                    continue
                del waiting[cid]
                if state.is_crashed():
                    missing[cid] = (
                        f"its flow run crashed {attempt + 1} time(s) (worker lost): {state.message}"
                    )
                elif state.is_cancelled():
                    missing[cid] = f"its flow run was cancelled: {state.message}"
    return missing


@flow(name="process_folder", persist_result=False)
def process_folder(
    out: str,
    inputs: list[str] | None = None,
    clips: list[dict] | None = None,
    config: str | None = None,
    overrides: list[str] | None = None,
    settings: dict | None = None,
    detections: str | None = None,
    pool: str | None = None,
    only_new: bool = False,
    settle_seconds: float = 0.0,
    max_failed_runs: int = 3,
) -> dict:
    """Every clip of ``inputs`` (or the given ``clips``: ``{id, source, kind}``) into ``out``; returns the
    run report (also written to ``out/report.json`` and ``out/reports/<start>.json``).

    ``pool``: run each clip as a ``process_clip/<pool>`` deployment run (``genmocap deploy --pool``); None: in
    this process. ``only_new`` (nightly runs): only new, changed or failed clips, files modified within
    ``settle_seconds`` left for the next run, clips that failed ``max_failed_runs`` runs given up.
    """
    started = now()
    cfg = Config.model_validate(settings) if settings is not None else load_config(
        Path(config) if config else None, overrides or []
    )  # fmt: skip
    found = [Clip(c["id"], Path(c["source"]), c["kind"]) for c in clips] if clips else discover(inputs or [])
    planned = ledger.plan(found, Path(out), cfg, only_new, settle_seconds, max_failed_runs)
    todo = [p for p in planned if p.runs or p.category == "unreadable"]
    dumped = cfg.model_dump(mode="json")
    params = [clip_parameters(p.clip, out, dumped, detections) for p in todo]
    if pool:
        missing = _run_on_pool(todo, params, pool, out, cfg)
    else:
        missing = _run_here(params)
    ledger.record(Path(out), cfg, todo, started)
    extra = {"orchestrator": f"prefect pool {pool}" if pool else "prefect"}
    if only_new:  # the night's news: which clips were new, changed, re-tried, skipped, failed
        after = ledger.read_ledger(Path(out))
        by: dict[str, list[str]] = {
            k: [] for k in ("new", "changed", "retried", "cached", "given_up", "settling")
        }
        for p in planned:
            by.setdefault(p.category, []).append(p.clip.id)
        by["failed"] = [p.clip.id for p in todo if (after.get(p.clip.id) or {}).get("status") != "ok"]
        extra["nightly"] = by
    report = build_report(Path(out), cfg, [p.clip for p in todo], started, missing, extra)
    return write_report(Path(out), report)


def run_with_prefect(clips: list[Clip], ctx: RunContext) -> dict:
    """Orchestrator for ``genmocap run``: the coordinator flow over the discovered clips, in this process
    (Prefect's local mode or a server) or, with ``run.pool``, on that work pool's workers."""
    detections = str(ctx.detections.path) if ctx.detections is not None else None
    register_context(ctx, detections)  # the clip flows run here use the CLI's context and progress display
    runner = ThreadPoolTaskRunner(max_workers=ctx.cfg.run.concurrency)
    return process_folder.with_options(task_runner=runner)(
        out=str(ctx.out),
        clips=[{"id": c.id, "source": str(c.source), "kind": c.kind} for c in clips],
        settings=ctx.cfg.model_dump(mode="json"),
        detections=detections,
        pool=ctx.cfg.run.pool,
    )
