"""The generic runner: stage keys, artifact reuse, shared decodes, failures, publishing and the run report.

It knows no stage by name: every stage is a ``StageSpec`` (``stages.SPECS``) that says what it needs and how
to compute, save, load and publish its result. ``run_stage`` and ``finish_clip`` are what the Prefect tasks
in ``flows/`` call; ``process_clip`` / ``run_batch`` chain them without Prefect (tests, ``run.orchestrator
=local``).
"""

from __future__ import annotations

import dataclasses
import errno
import os
import socket
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import __version__
from pipeline.config import Config
from pipeline.discover import Clip
from pipeline.progress import Progress
from pipeline.registry import body_model_path, file_hash, locate, require, weights_hash
from pipeline.report import CLIP_SCHEMA, build_report, clip_entry, now, write_report
from pipeline.store import Artifact, ArtifactStore, artifact_key
from stages import SPECS, STAGES
from stages.files import atomic_write_json, file_lock
from stages.spec import ClipRun, PixelJob, StageEnv, StageFailure, key_settings, run_pixel_jobs


@dataclass
class RunContext:
    """What every clip of a run shares: config, output folder, artifact store, services for the stages."""

    cfg: Config
    out: Path
    store: ArtifactStore
    progress: Progress
    detections: Any = None  # stages.track.DetectionsSource
    body_model: Path | None = None  # SMPL-X neutral .npz (licence-gated; optional)
    # gpu_slot(stage) is held while a GPU stage computes (flows: a Prefect global concurrency slot)
    gpu_slot: Callable[[str], AbstractContextManager] = nullcontext

    @classmethod
    def create(cls, cfg: Config, out: Path, detections: Path | None = None, progress: Progress | None = None,
               body_model: Path | None = None) -> RunContext:  # fmt: skip
        from stages.track import DetectionsSource

        out = Path(out)
        return cls(
            cfg=cfg,
            out=out,
            store=ArtifactStore(cfg.run.cache_dir or (out / ".genmocap" / "artifacts")),
            progress=progress or Progress("off"),
            detections=DetectionsSource(detections) if detections else None,
            body_model=body_model if body_model is not None else body_model_path(),
        )

    def required_weights(self) -> dict[str, str]:
        """Weight files the planned stages need: {role: registry name or path}."""
        return needed_weights(self.cfg, self.detections)

    def env(self) -> StageEnv:
        from models.cache import resolve_device

        names = self.required_weights()
        paths: dict[str, Path] = {}

        def weights(role: str) -> Path:  # resolved on first use, then kept
            if role not in paths:
                paths[role] = require({role: names[role]})[role]
            return paths[role]

        return StageEnv(
            cfg=self.cfg,
            out=self.out,
            device=resolve_device(self.cfg.run.device),
            weights=weights,
            weights_hash=lambda role: weights_hash(weights(role)),
            locate=locate,
            file_hash=file_hash,
            progress=self.progress,
            detections=self.detections,
            body_model=self.body_model,
        )


def needed_weights(cfg: Config, detections: Any = None) -> dict[str, str]:
    """{role: file} of every weight file the stages planned by ``cfg`` need (``detections``: user boxes)."""
    # the stages' weights() read only the config, env.detections and env.locate: nothing is resolved here
    env = StageEnv(
        cfg=cfg, out=Path("."), device="cpu", weights=Path, weights_hash=str, locate=locate, file_hash=str,
        progress=None, detections=detections,
    )  # fmt: skip
    need: dict[str, str] = {}
    for name in cfg.planned_stages():
        need.update(SPECS[name].weights(cfg, env))
    return need


@dataclass
class StageOutcome:
    status: str  # computed | cached | skipped | failed
    seconds: float = 0.0
    reason: str | None = None
    ran_on: dict | None = None  # {"host", "pid", "flow_run"}: where the stage ran (or was found cached)
    attempts: int = 1
    error: BaseException | None = field(default=None, repr=False)  # what made it fail (not reported)

    @property
    def transient(self) -> bool:
        """Did it fail for a reason worth a re-try (CUDA out of memory, a flaky filesystem)?"""
        return self.error is not None and is_transient(self.error)

    def to_json(self) -> dict:
        d: dict[str, Any] = {"status": self.status, "seconds": round(self.seconds, 3)}
        if self.reason:
            d["reason"] = self.reason
        if self.attempts > 1:
            d["attempts"] = self.attempts
        d["ran_on"] = self.ran_on
        return d


# errno values of I/O errors that a second attempt can get past (network filesystems, busy devices)
_TRANSIENT_ERRNO = {errno.EIO, errno.EAGAIN, errno.EBUSY, errno.ETIMEDOUT, errno.EINTR, errno.ESTALE,
                    errno.ECONNRESET, errno.ECONNABORTED, errno.EHOSTUNREACH}  # fmt: skip


def is_out_of_memory(e: BaseException) -> bool:
    """A CUDA (or other accelerator) out-of-memory error, which a smaller batch may avoid."""
    return type(e).__name__ == "OutOfMemoryError" or "out of memory" in str(e).lower()


def is_transient(e: BaseException) -> bool:
    """Errors a re-try may get past: accelerator out of memory, time-outs and flaky I/O (not a bad file)."""
    if is_out_of_memory(e) or isinstance(e, TimeoutError):
        return True
    return isinstance(e, OSError) and e.errno in _TRANSIENT_ERRNO


def ran_on(run: ClipRun) -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "flow_run": run.flow_run}


def reset_stage(run: ClipRun, name: str) -> None:
    """Forget a failed attempt at ``name`` before a re-try; after an out-of-memory error, the clip's batch
    sizes are halved (they never change results, so the stage's key stays the same)."""
    out = run.outcomes.pop(name, None)
    if out is None or out.status != "failed":
        return
    run.error = run.error_detail = None
    run.pending.pop(name, None)
    if out.error is not None and is_out_of_memory(out.error):
        run.env = dataclasses.replace(run.env, cfg=_halve_batches(run.cfg))
    run.facts[f"attempts.{name}"] = run.facts.get(f"attempts.{name}", 1) + 1


def _halve_batches(cfg: Config) -> Config:
    """``cfg`` with every ``batch*`` setting of every section halved (at least 1)."""
    update = {}
    for section in type(cfg).model_fields:
        settings = getattr(cfg, section)
        fields = getattr(type(settings), "model_fields", {})
        batch = {f: max(1, getattr(settings, f) // 2) for f in fields if f.startswith("batch")}
        if batch:
            update[section] = settings.model_copy(update=batch)
    return cfg.model_copy(update=update)


def new_run(clip: Clip, ctx: RunContext) -> ClipRun:
    return ClipRun(clip.id, clip.source, clip.names(), ctx.env(), plan=ctx.cfg.planned_stages())


def stage_key(run: ClipRun, name: str) -> str:
    """The artifact key of one stage of one clip: its version, the settings that change its result, the
    upstream keys (a skipped optional input is simply absent) and its input fingerprints."""
    spec, cfg = SPECS[name], run.cfg
    sections = ([name] if spec.settings is not None else []) + list(spec.reads)
    return artifact_key(
        name,
        spec.version,
        {s: key_settings(getattr(cfg, s)) for s in sections},
        upstream={u: run.keys[u] for u in (*spec.needs, *spec.uses) if u in run.keys},
        inputs=spec.key_inputs(run),
    )


def _skip_reason(run: ClipRun, name: str) -> str | None:
    """Why ``name`` does not run for this clip, or None."""
    spec, cfg = SPECS[name], run.cfg
    failed = next((s for s, o in run.outcomes.items() if o.status == "failed"), None)
    if failed:
        return f"stage {failed} failed"
    if name not in run.plan:
        if cfg.run.stages:
            return f"not requested (--stages {','.join(cfg.run.stages)})"
        after = STAGES.index(name) > STAGES.index(cfg.run.until)
        return f"after --until {cfg.run.until}" if after else f"not needed for --until {cfg.run.until}"
    for need in spec.needs:
        if need not in run.results:
            return run.outcomes[need].reason if need in run.outcomes else f"needs {need}"
    return spec.skip(run)


def _due_in_pass(run: ClipRun, name: str, ctx: RunContext) -> bool:
    """Will ``name`` be computed now (planned, not skipped, inputs done, not cached)?"""
    spec = SPECS[name]
    if any(u in run.plan and u not in run.outcomes for u in (*spec.needs, *spec.uses)):
        return False
    if name in run.outcomes or _skip_reason(run, name):
        return False
    meta = ctx.store.load_meta(name, stage_key(run, name))  # its arrays are read when its turn comes
    return meta is None or not spec.present(run, meta)


def _shared_pass(run: ClipRun, name: str, ctx: RunContext) -> None:
    """Compute ``name`` together with every other pixel stage due now, from one decode per timeline."""
    from stages.video import iter_chunks

    pixel = [s for s in run.plan if SPECS[s].pixel_pass is not None]
    due = [s for s in pixel if s == name or _due_in_pass(run, s, ctx)]
    by_pass: dict[Any, list[str]] = {}
    for s in due:
        by_pass.setdefault(SPECS[s].pixel_pass, []).append(s)
    jobs: dict[tuple, list[PixelJob]] = {}
    for fn, names in by_pass.items():
        job = fn(run, tuple(names))
        if job is not None:
            jobs.setdefault((str(job.info.path), job.fps, job.chunk_frames), []).append(job)
    for group in jobs.values():
        run.pending.update(run_pixel_jobs(group, iter_chunks))


def _compute(run: ClipRun, name: str, ctx: RunContext) -> Any:
    spec = SPECS[name]
    if spec.pixel_pass is not None and name not in run.pending:
        _shared_pass(run, name, ctx)
    if name in run.pending:
        result = run.pending.pop(name)
        if isinstance(result, Exception):
            raise result
        return result
    assert spec.compute is not None, f"stage {name} has neither compute nor a pixel pass result"
    return spec.compute(run)


def _one_line(e: BaseException) -> str:
    from stages.video import MediaError

    first = (str(e).strip() or type(e).__name__).splitlines()[0]
    plain = (StageFailure, MediaError, ValueError, FileNotFoundError)
    return first if isinstance(e, plain) else f"{type(e).__name__}: {first}"


def run_stage(run: ClipRun, name: str, ctx: RunContext) -> StageOutcome:
    """Run (or reuse) one stage of one clip and record its outcome. Never raises for clip-level problems."""
    from stages.video import MediaError

    spec, t0 = SPECS[name], time.perf_counter()
    try:
        if reason := _skip_reason(run, name):
            out = StageOutcome("skipped", reason=reason)
        else:
            key = stage_key(run, name)
            art = ctx.store.load(name, key)
            status = "cached"
            if art is not None and not spec.present(run, art.meta):
                art = None  # its files under OUT were removed: write them again
            if art is None:
                ctx.progress.stage(run.clip_id, name)
                with ctx.gpu_slot(name) if spec.uses_gpu(run) else nullcontext():
                    result = _compute(run, name, ctx)
                meta, arrays = spec.save(result)
                art = Artifact(meta, arrays)
                ctx.store.save(name, key, art)
                status = "computed"
            run.results[name] = spec.load(art.meta, art.arrays)
            run.keys[name] = key
            out = StageOutcome(status)
    except Exception as e:  # a clip's failure must never stop the batch
        out = StageOutcome("failed", reason=_one_line(e), error=e)
        run.error = f"{name}: {out.reason}"
        if not isinstance(e, (StageFailure, MediaError)):
            run.error_detail = traceback.format_exc()
    out.seconds = time.perf_counter() - t0
    out.ran_on = ran_on(run)
    out.attempts = run.facts.get(f"attempts.{name}", 1)
    run.outcomes[name] = out
    ctx.progress.stage_done(run.clip_id, name, out.status, out.seconds, out.reason)
    return out


def finish_clip(run: ClipRun, ctx: RunContext) -> dict:
    """Publish the clip's outputs under ``OUT/<clip>/`` (atomic writes; outputs of stages that did not
    succeed this time are removed so no stale file sits under a final name) and return its report entry."""
    clip_dir = ctx.out / run.clip_id
    clip_dir.mkdir(parents=True, exist_ok=True)
    ok = run.error is None
    doc_parts: dict[str, Any] = {}
    for name, spec in SPECS.items():
        result = run.results.get(name) if ok else None
        if result is not None:
            run.warnings += spec.warnings(run, result)
            if spec.publish is not None:
                spec.publish(run, result, clip_dir)
        elif spec.unpublish is not None:
            spec.unpublish(run, clip_dir)
        doc_parts.update(spec.report(run.results.get(name)))
    run.warnings = list(dict.fromkeys(run.warnings))
    status = "ok" if ok else "failed"
    stages = {s: run.outcomes[s].to_json() for s in STAGES if s in run.outcomes}
    doc = {
        "schema": CLIP_SCHEMA,
        "id": run.clip_id,
        "source": str(run.source),
        "source_fingerprint": run.facts.get("source_fingerprint"),
        "status": status,
        "error": run.error,
        "warnings": run.warnings,
        **doc_parts,
        "stages": stages,
        "artifacts": dict(run.keys),
        "config_digest": ctx.cfg.digest(),
        "genmocap_version": __version__,
    }
    if run.error_detail:
        doc["traceback"] = run.error_detail
    atomic_write_json(clip_dir / "clip.json", doc)
    ctx.progress.clip_done(run.clip_id, status)
    return clip_entry(doc)


def clip_lock(out: Path, clip_id: str, progress: Progress | None = None) -> AbstractContextManager:
    """The lock a process holds while it runs a clip into ``out`` (another run of the same clip, on this
    machine or another worker sharing the folder, waits and then finds its stages cached)."""

    def waiting() -> None:
        if progress is not None:
            progress.note(f"{clip_id}: another run holds this clip; waiting for it")

    return file_lock(Path(out) / ".genmocap" / "locks" / f"{clip_id}.lock", on_wait=waiting)


def process_clip(clip: Clip, ctx: RunContext) -> dict:
    """All stages of one clip, in order, without Prefect (transient errors re-tried as the Prefect flow
    does); returns the clip's report entry."""
    with clip_lock(ctx.out, clip.id, ctx.progress):
        run = new_run(clip, ctx)
        for name in STAGES:
            out = run_stage(run, name, ctx)
            for attempt in range(ctx.cfg.run.retries):
                if not out.transient:
                    break
                time.sleep(ctx.cfg.run.retry_delay * 2**attempt)
                reset_stage(run, name)
                out = run_stage(run, name, ctx)
        return finish_clip(run, ctx)


def run_batch(clips: list[Clip], ctx: RunContext) -> dict:
    """Process clips with ``run.concurrency`` threads (plain Python) and write ``OUT/report.json``."""
    started = now()
    with ThreadPoolExecutor(max_workers=ctx.cfg.run.concurrency) as pool:
        list(pool.map(lambda c: process_clip(c, ctx), clips))
    return write_report(ctx.out, build_report(ctx.out, ctx.cfg, clips, started))
