"""The stage contract: what a stage module declares so that one generic runner can run it.

Each stage module exports ``SPEC = StageSpec(...)``: its name and version, the stages it needs, its settings
model (the config section named after the stage), which settings change its result (marked on the fields
with :func:`not_in_key`), and how to compute, save, load and publish its result and which warnings it adds.
The runner (``pipeline.runner``) knows no stage by name: it orders the stages by their needs, computes each
stage's cache key, looks it up in the artifact store, computes, saves atomically, publishes and reports.

Stages that read the clip's pixels (after tracking) can share one decode: a ``pixel_pass`` returns a
:class:`PixelJob` (a consumer of decoded chunks) instead of computing directly; the runner gathers the jobs of
every pixel stage that is due and not cached and feeds them from one decode (:func:`run_pixel_jobs`).

Nothing here imports torch, cv2 or a stage: importing the stage modules must stay cheap (the CLI's
``config``, ``doctor`` and ``models`` commands import them to build the config).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

NOT_IN_KEY = {"in_key": False}


def not_in_key(default: Any = ..., **kw: Any) -> Any:
    """A settings field that does not change the stage's result (batch sizes, time limits, weight *names*
    whose file hash enters the key instead): left out of the cache key. Takes ``pydantic.Field``'s
    arguments."""
    return Field(default, json_schema_extra=NOT_IN_KEY, **kw)


def key_settings(settings: BaseModel) -> dict[str, Any]:
    """The fields of ``settings`` that change results (recursively), JSON-safe, for a cache key."""
    out: dict[str, Any] = {}
    for name, info in type(settings).model_fields.items():
        if isinstance(info.json_schema_extra, dict) and info.json_schema_extra.get("in_key") is False:
            continue
        value = getattr(settings, name)
        out[name] = key_settings(value) if isinstance(value, BaseModel) else _json(value)
    return out


def _json(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json(v) for k, v in value.items()}
    return value


class StageFailure(Exception):
    """A stage could not produce its result; the message is the one-line reason for the report."""


@dataclass
class StageEnv:
    """Per-run services the runner hands to every stage (so stages never import ``pipeline``).

    ``weights(role)``/``weights_hash(role)`` resolve the weight files the run's stages declared;
    ``locate(name)`` finds a file by registry name or path without downloading (None if absent);
    ``file_hash(path)`` hashes an input file such as the body model;
    ``progress`` has ``stage(clip, label, total) -> (done, total) callback``.
    """

    cfg: Any
    out: Path
    device: str
    weights: Callable[[str], Path]
    weights_hash: Callable[[str], str]
    locate: Callable[[str], Path | None]
    file_hash: Callable[[Path], str]  # content hash of any input file (cached per path, size and mtime)
    progress: Any
    detections: Any = None  # stages.track.DetectionsSource or None
    body_model: Path | None = None  # SMPL-X neutral .npz (licence-gated; optional)


@dataclass
class ClipRun:
    """One clip's progress through the stages: what a stage's functions receive.

    ``results[stage]`` holds the loaded result of each stage that succeeded so far, ``keys[stage]`` its
    artifact key; ``plan`` is the set of stages this run computes.
    """

    clip_id: str
    source: Path
    names: list[str]  # the clip's id, file name, stem and path (to match user detections)
    env: StageEnv
    plan: tuple[str, ...] = ()
    outcomes: dict[str, Any] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    pending: dict[str, Any] = field(default_factory=dict)  # results computed early by a shared pixel pass
    error: str | None = None
    error_detail: str | None = None
    warnings: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)  # clip facts found on the way (e.g. fingerprint)
    flow_run: str | None = None  # the Prefect flow run processing the clip (None without Prefect)

    @property
    def cfg(self) -> Any:
        return self.env.cfg

    def body_model_input(self) -> dict[str, str | None]:
        """The body model's content hash, for the keys of stages that read it (None: no body model)."""
        bm = self.env.body_model
        return {"body_model": self.env.file_hash(bm) if bm else None}


@dataclass
class PixelJob:
    """A consumer of one clip's decoded chunks (``stages.video.FrameChunk``) that returns stage results.

    ``consume(chunks)`` reads the chunk iterator to its end and returns ``{stage name: result}``. Jobs that
    agree on ``(info.path, fps, chunk_frames)`` share one decode.
    """

    info: Any  # stages.video.VideoInfo
    fps: float | None
    chunk_frames: int
    stages: tuple[str, ...]
    consume: Callable[[Iterable[Any]], dict[str, Any]]


def _nothing(*_: Any) -> Any:
    return None


def _no_weights(cfg: Any, env: StageEnv | None) -> dict[str, str]:
    return {}


def _empty(*_: Any) -> dict:
    return {}


def _no_warnings(run: ClipRun, result: Any) -> list[str]:
    return []


def _always(run: ClipRun, meta: dict) -> bool:
    return True


@dataclass(frozen=True)
class StageSpec:
    """What a stage declares. All callables are plain functions of the stage module.

    Attributes:
        name: the stage's name, also its config section and artifact folder.
        version: bump when the stage's results change for the same inputs (invalidates cached artifacts).
        settings: the pydantic model of its config section (None: no settings).
        needs: stages whose results ``compute`` requires; they are planned and must succeed.
        uses: stages whose results ``compute`` reads when present; they are planned too, but a skipped one
            (e.g. disabled features) is simply absent from ``run.results`` and from the key.
        reads: other config sections whose result-changing fields enter this stage's key (e.g. "decode").
        weights(cfg, env): {role: registry name or path} of the weight files this stage needs with ``cfg``
            (``env`` None: a default run, for ``doctor``).
        key_inputs(run): fingerprints of inputs other than config and upstream keys (source, weight hashes).
        compute(run): the result (raise ``StageFailure`` with a one-line reason when there can be none).
        pixel_pass(run, names): a :class:`PixelJob` computing the stages ``names`` (a subset of the stages
            sharing this function, all due and not cached) from shared decoded chunks; None to compute
            through ``compute`` instead.
        save(result) -> (meta, arrays); load(meta, arrays) -> result.
        skip(run): a reason to skip the stage for this clip (by config, or e.g. no person in the clip).
        present(run, meta): for results that live in OUT: are its files still there (else recompute)?
        publish(run, result, clip_dir): write the clip's published files; unpublish(run, clip_dir): remove
            them when the stage did not succeed in this run (no stale file under a final name).
        report(result): entries for ``clip.json`` (called with None when the stage has no result).
        warnings(run, result): warnings the result carries (a cached result reports them too).
        gpu: the stage runs networks on the accelerator (a bool, or a function of the clip run), so computing
            it holds a GPU slot (the Prefect global concurrency limit ``run.gpu_limit``); CPU-only stages
            never hold one.
    """

    name: str
    version: str
    settings: type[BaseModel] | None = None
    needs: tuple[str, ...] = ()
    uses: tuple[str, ...] = ()
    reads: tuple[str, ...] = ()
    weights: Callable[[Any, StageEnv | None], dict[str, str]] = _no_weights
    key_inputs: Callable[[ClipRun], dict] = _empty
    compute: Callable[[ClipRun], Any] | None = None
    pixel_pass: Callable[[ClipRun, tuple[str, ...]], PixelJob | None] | None = None
    save: Callable[[Any], tuple[dict, dict]] = lambda r: (r, {})
    load: Callable[[dict, dict], Any] = lambda meta, arrays: meta
    skip: Callable[[ClipRun], str | None] = _nothing
    present: Callable[[ClipRun, dict], bool] = _always
    publish: Callable[[ClipRun, Any, Path], None] | None = None
    unpublish: Callable[[ClipRun, Path], None] | None = None
    report: Callable[[Any], dict] = _empty
    warnings: Callable[[ClipRun, Any], list[str]] = _no_warnings
    gpu: bool | Callable[[ClipRun], bool] = False

    def uses_gpu(self, run: ClipRun) -> bool:
        return self.gpu(run) if callable(self.gpu) else self.gpu


# ---------------------------------------------------------------------------------------------------------
# One decode for several consumers


_DONE = object()


def run_pixel_jobs(jobs: list[PixelJob], decode: Callable[..., Iterator[Any]]) -> dict[str, Any]:
    """Feed every job from one ``decode(info, chunk_frames=, fps=)``; returns ``{stage: result}``, where a
    stage whose job failed (or whose decode failed) maps to the exception instead.

    Each job runs in its own thread on a bounded queue (2 chunks), so memory stays bounded by the chunk
    size; a chunk is shared read-only by all jobs. A failing job stops being fed; the others go on.
    """
    results: dict[str, Any] = {}
    if len(jobs) == 1:  # no threads needed
        j = jobs[0]
        try:
            return j.consume(decode(j.info, chunk_frames=j.chunk_frames, fps=j.fps))
        except Exception as e:
            return dict.fromkeys(j.stages, e)
    head = jobs[0]
    queues = [queue.Queue(maxsize=2) for _ in jobs]
    alive = [True] * len(jobs)
    finished = [False] * len(jobs)  # the job's queue has delivered its end marker

    def chunks(i: int) -> Iterator[Any]:
        while (item := queues[i].get()) is not _DONE:
            yield item
        finished[i] = True

    def work(i: int, job: PixelJob) -> None:
        try:
            results.update(job.consume(chunks(i)))
        except Exception as e:
            results.update(dict.fromkeys(job.stages, e))
        alive[i] = False
        # a job may stop reading early (it failed, or needed no more pixels): drain its queue so the
        # decoder never blocks on it
        while not finished[i] and queues[i].get() is not _DONE:
            pass

    threads = [threading.Thread(target=work, args=(i, j), daemon=True) for i, j in enumerate(jobs)]
    for t in threads:
        t.start()
    decode_error: Exception | None = None
    try:
        for chunk in decode(head.info, chunk_frames=head.chunk_frames, fps=head.fps):
            for i, q in enumerate(queues):
                if alive[i]:
                    q.put(chunk)
    except Exception as e:
        decode_error = e
    finally:
        for q in queues:
            q.put(_DONE)
        for t in threads:
            t.join()
    if decode_error is not None:  # the decode's reason beats the jobs' "decode ended early"
        results.update({s: decode_error for j in jobs for s in j.stages})
    return results
