"""``process_clip``: the deployable per-clip flow, one Prefect task per stage.

Its parameters are plain JSON (what a deployment stores and a worker receives), so it runs the same in the
CLI's process, in Prefect's local mode and on any worker of a work pool. The context (config, artifact store,
detections) is built inside and kept per process, like the models (``models.cache``): a process that runs
clips back to back loads each network once.

A stage task raises when its stage fails, so Prefect's states tell the truth; the clip's outcome is still
written to ``OUT/<clip>/clip.json``. Transient errors (accelerator out of memory, flaky I/O) are re-tried by
Prefect with ``run.retries`` and a doubling delay; an out-of-memory re-try halves the batch sizes.
"""

from __future__ import annotations

import threading
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed

from pipeline.config import Config, load_config
from pipeline.discover import Clip, clip_id
from pipeline.progress import Progress
from pipeline.runner import RunContext, clip_lock, finish_clip, new_run, reset_stage, run_stage
from stages import STAGES
from stages.spec import ClipRun

_contexts: dict[tuple, RunContext] = {}
_contexts_lock = threading.Lock()


class StageError(RuntimeError):
    """A stage failed (its reason is in clip.json too); ``transient``: a re-try may get past it."""

    def __init__(self, clip: str, stage: str, reason: str | None, transient: bool):
        super().__init__(f"{clip}: stage {stage} failed: {reason}")
        self.transient = transient


def server_mode() -> bool:
    """Is this process talking to a Prefect server (not Prefect's temporary local one)?"""
    from prefect.settings import get_current_settings

    return get_current_settings().api.url is not None


def _gpu_slot(cfg: Config) -> Any:
    """What a GPU stage holds while it computes: one slot of the global concurrency limit ``run.gpu_limit``
    on a server (a missing limit does not block), nothing in local mode."""
    if not cfg.run.gpu_limit or not server_mode():
        return nullcontext
    from prefect.concurrency.sync import concurrency

    name = cfg.run.gpu_limit
    return lambda stage: concurrency(name, occupy=1, strict=False)


def _context_key(out: str, cfg: Config, detections: str | None) -> tuple:
    return (str(Path(out).resolve()), cfg.digest(), detections)


def register_context(ctx: RunContext, detections: str | None) -> None:
    """Let ``process_clip`` runs in this process use ``ctx`` (the CLI's, with its progress display)."""
    with _contexts_lock:
        _contexts[_context_key(str(ctx.out), ctx.cfg, detections)] = ctx


def context_for(
    out: str,
    config: str | None = None,
    overrides: list[str] | None = None,
    settings: dict | None = None,
    detections: str | None = None,
) -> RunContext:
    """The run context of these parameters, built once per process. ``settings`` (a whole config, as
    ``Config.model_dump(mode="json")``) wins over ``config`` + ``overrides``."""
    if settings is not None:
        cfg = Config.model_validate(settings)
    else:
        cfg = load_config(Path(config) if config else None, overrides or [])
    key = _context_key(out, cfg, detections)
    with _contexts_lock:
        if key not in _contexts:
            ctx = RunContext.create(
                cfg,
                Path(out),
                detections=Path(detections) if detections else None,
                progress=Progress("off" if cfg.run.progress == "off" else "auto"),
            )
            ctx.gpu_slot = _gpu_slot(cfg)
            _contexts[key] = ctx
        return _contexts[key]


def _is_transient(task: Any, task_run: Any, state: Any) -> bool:
    return bool(getattr(state.data, "transient", False))


@task(name="stage", cache_policy=NO_CACHE, persist_result=False, retry_condition_fn=_is_transient)
def stage_task(run: ClipRun, name: str, ctx: RunContext) -> str:
    """One stage of one clip; caching is our artifact store's job, not Prefect's. Raises when it fails."""
    reset_stage(run, name)  # a re-try: forget the failed attempt
    out = run_stage(run, name, ctx)
    if out.status == "failed":
        raise StageError(run.clip_id, name, out.reason, out.transient)
    return out.status


@task(name="finish", cache_policy=NO_CACHE, persist_result=False)
def finish_task(run: ClipRun, ctx: RunContext) -> dict:
    return finish_clip(run, ctx)


@flow(name="process_clip", persist_result=False)
def process_clip(
    source: str,
    out: str,
    clip: str | None = None,
    kind: str | None = None,
    config: str | None = None,
    overrides: list[str] | None = None,
    settings: dict | None = None,
    detections: str | None = None,
) -> dict:
    """Every stage of one clip (cached or left out by the plan: skipped); returns its report entry.

    Args:
        source: the clip's video file or image-sequence folder (the same path on every worker).
        out: the output root (shared by all workers); the clip's files go to ``out/<clip>/``.
        clip: its id (the coordinator's, stable across mount points); default: from ``source``.
        kind: "video" | "images"; default: "images" for a folder.
        config, overrides: a YAML config file and ``K=V`` overrides; or ``settings``: a whole config.
        detections: user boxes instead of the detector (file or folder).
    """
    from prefect.runtime import flow_run

    ctx = context_for(out, config, overrides, settings, detections)
    src = Path(source)
    item = Clip(id=clip or clip_id(src), source=src, kind=kind or ("images" if src.is_dir() else "video"))
    with clip_lock(ctx.out, item.id, ctx.progress):
        run = new_run(item, ctx)
        run.flow_run = flow_run.get_id()
        for name in STAGES:
            stage = stage_task.with_options(
                name=name,
                task_run_name=f"{name}[{item.id}]",
                retries=ctx.cfg.run.retries,
                retry_delay_seconds=[ctx.cfg.run.retry_delay * 2**i for i in range(ctx.cfg.run.retries)] or 0,
            )
            try:
                stage(run, name, ctx)
            except StageError:
                pass  # recorded in run.outcomes; the stages after it are skipped with the reason
        entry = finish_task(run, ctx)
    if entry["status"] != "ok":
        return Failed(message=f"{item.id}: {entry['error']}", data=entry)
    return entry
