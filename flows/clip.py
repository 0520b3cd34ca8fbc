"""``process_clip``: one Prefect task per stage, chained in stage order."""

from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from pipeline.discover import Clip
from pipeline.runner import RunContext, finish_clip, new_run, run_stage
from stages import STAGES
from stages.spec import ClipRun


@task(name="stage", cache_policy=NO_CACHE, persist_result=False)
def stage_task(run: ClipRun, name: str, ctx: RunContext) -> str:
    """One stage of one clip; caching is our artifact store's job, not Prefect's."""
    return run_stage(run, name, ctx).status


@task(name="finish", cache_policy=NO_CACHE, persist_result=False)
def finish_task(run: ClipRun, ctx: RunContext) -> dict:
    return finish_clip(run, ctx)


@flow(name="process_clip", persist_result=False, validate_parameters=False)
def process_clip(clip: Clip, ctx: RunContext) -> dict:
    """Run every stage of ``clip`` (cached or after ``run.until``: skipped); returns its report entry."""
    run = new_run(clip, ctx)
    for name in STAGES:
        stage_task.with_options(name=name, task_run_name=f"{name}[{clip.id}]")(run, name, ctx)
    return finish_task(run, ctx)
