"""``process_folder``: fan clips out to ``process_clip`` runs with bounded concurrency."""

from __future__ import annotations

from prefect import flow, task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from flows.clip import process_clip
from pipeline.discover import Clip
from pipeline.report import now, write_report
from pipeline.runner import RunContext


@task(name="clip", cache_policy=NO_CACHE, persist_result=False)
def clip_task(clip: Clip, ctx: RunContext) -> dict:
    return process_clip.with_options(flow_run_name=clip.id)(clip, ctx)


@flow(name="process_folder", persist_result=False, validate_parameters=False)
def process_folder(clips: list[Clip], ctx: RunContext) -> list[dict]:
    """Every clip through ``process_clip``, at most ``run.concurrency`` at once; one clip's failure never
    stops the others (stage failures are recorded, not raised)."""
    futures = clip_task.map(clips, unmapped(ctx))
    return [f.result() for f in futures]


def run_with_prefect(clips: list[Clip], ctx: RunContext) -> dict:
    """Orchestrator for ``genmocap run``: the folder flow in Prefect's local mode, then the run report."""
    started = now()
    runner = ThreadPoolTaskRunner(max_workers=ctx.cfg.run.concurrency)
    entries = process_folder.with_options(task_runner=runner)(clips, ctx)
    return write_report(ctx, entries, started)


@flow(name="genmocap-batch", persist_result=False)
def batch(
    inputs: list[str],
    out: str,
    config: str | None = None,
    overrides: list[str] | None = None,
    detections: str | None = None,
) -> dict:
    """The whole job from plain parameters (what a deployment or schedule stores): discover the clips, run
    them through ``process_folder`` and write ``OUT/report.json``; returns the report."""
    from pathlib import Path

    from pipeline.config import load_config
    from pipeline.discover import discover
    from pipeline.registry import resolve

    cfg = load_config(Path(config) if config else None, overrides or [])
    ctx = RunContext.create(cfg, Path(out), detections=Path(detections) if detections else None)
    for name in ctx.required_weights().values():
        resolve(name)
    return run_with_prefect(discover(inputs), ctx)
