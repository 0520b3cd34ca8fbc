"""Run clips through the stages: cache keys, artifact reuse, failures, publishing and the run report.

This is the plain-Python engine. ``run_stage`` and ``finish_clip`` are what the Prefect tasks in ``flows/``
call; ``process_clip`` / ``run_batch`` chain them without Prefect (tests, ``run.orchestrator=local``).
"""

from __future__ import annotations

import hashlib
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline import __version__
from pipeline.config import Config
from pipeline.discover import Clip
from pipeline.progress import Progress
from pipeline.registry import file_hash, resolve
from pipeline.store import (
    Artifact,
    ArtifactStore,
    artifact_key,
    atomic_write_bytes,
    atomic_write_json,
    npz_bytes,
)
from stages import STAGES, probe, track
from stages.track import DetectionsSource, Tracks
from stages.video import MediaError, VideoInfo, count_samples

REPORT_SCHEMA = "genmocap.report/1"
CLIP_SCHEMA = "genmocap.clip/1"

# Stages later issues build; until then a clip reports them as skipped with this reason.
NOT_BUILT = {
    "keypoints": "not built yet (ViTPose-H keypoints, issue #4)",
    "features": "not built yet (HMR2 image features, issue #4)",
    "camera": "not built yet (camera motion, issue #5)",
    "estimate": "not built yet (GEM estimation engine, issue #3)",
    "postprocess": "not built yet (GEM contact post-process and IK, issue #3)",
    "export": "not built yet (NPZ/FBX/BVH/USD exports, issue #6)",
}


class StageFailure(Exception):
    """A stage could not produce its result; the message is the one-line reason for the report."""


# ---------------------------------------------------------------------------------------------------------
# Shared per-run state


class Models:
    """Models loaded once per process and shared by all clips (and threads) of a run."""

    def __init__(self, device: str):
        self.device_setting = device
        self._lock = threading.Lock()
        self._cache: dict[Any, Any] = {}

    @property
    def device(self) -> str:
        if self.device_setting != "auto":
            return self.device_setting
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def detector(self, settings, weights: Path):
        from stages.detect import PersonDetector

        key = ("detector", str(weights), self.device, settings.model_dump_json())
        with self._lock:
            if key not in self._cache:
                self._cache[key] = PersonDetector(weights, self.device, settings)
            return self._cache[key]


@dataclass
class RunContext:
    cfg: Config
    out: Path
    store: ArtifactStore
    models: Models
    progress: Progress
    detections: DetectionsSource | None = None

    @classmethod
    def create(
        cls, cfg: Config, out: Path, detections: Path | None = None, progress: Progress | None = None
    ) -> RunContext:
        out = Path(out)
        store_root = cfg.run.cache_dir or (out / ".genmocap" / "artifacts")
        return cls(
            cfg=cfg,
            out=out,
            store=ArtifactStore(store_root),
            models=Models(cfg.run.device),
            progress=progress or Progress("off"),
            detections=DetectionsSource(detections) if detections else None,
        )

    def required_weights(self) -> dict[str, str]:
        """Weight files the configured stages need: {role: file name or path}."""
        need = {}
        until = STAGES.index(self.cfg.run.until)
        if until >= STAGES.index("track") and self.detections is None:
            need["detector"] = self.cfg.track.detector.weights
        return need

    def weights(self, role: str) -> Path:
        return resolve(self.required_weights()[role])


@dataclass
class StageOutcome:
    status: str  # computed | cached | skipped | failed
    seconds: float = 0.0
    reason: str | None = None
    key: str | None = None

    def to_json(self) -> dict:
        d: dict[str, Any] = {"status": self.status, "seconds": round(self.seconds, 3)}
        if self.reason:
            d["reason"] = self.reason
        return d


@dataclass
class ClipRun:
    """One clip's progress through the stages."""

    clip: Clip
    ctx: RunContext
    outcomes: dict[str, StageOutcome] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)  # typed stage results
    error: str | None = None
    error_detail: str | None = None
    warnings: list[str] = field(default_factory=list)
    fingerprint: str | None = None  # of the source, taken once by the probe key (None: unreadable)


# ---------------------------------------------------------------------------------------------------------
# Stage table


@dataclass(frozen=True)
class StageImpl:
    version: str
    needs: tuple[str, ...]
    config: Callable[[Config], Any]  # the config fields the stage reads (JSON-safe), for its key
    key_inputs: Callable[[ClipRun], dict]  # input fingerprints and weight hashes, for its key
    compute: Callable[[ClipRun], Artifact]
    load: Callable[[Artifact], Any]


def source_fingerprint(path: Path) -> str:
    """A cheap content fingerprint: sha256 over size and three 1 MiB samples (head, middle, tail); for an
    image-sequence folder, over every frame's name and size plus the first and last frame's bytes."""
    h = hashlib.sha256()
    if path.is_dir():
        from stages.video import list_image_frames

        frames = list_image_frames(path)
        for f in frames:
            h.update(f"{f.name}:{f.stat().st_size};".encode())
        for f in frames[:1] + frames[-1:]:
            h.update(f.read_bytes())
        return h.hexdigest()
    size = path.stat().st_size
    h.update(str(size).encode())
    with open(path, "rb") as f:
        for off in sorted({0, max(0, size // 2 - (1 << 19)), max(0, size - (1 << 20))}):
            f.seek(off)
            h.update(f.read(1 << 20))
    return h.hexdigest()


def _probe_inputs(run: ClipRun) -> dict:
    try:
        run.fingerprint = source_fingerprint(run.clip.source)
        return {"source": run.fingerprint}
    except OSError as e:
        raise StageFailure(f"cannot read {run.clip.source}: {e.strerror or e}") from e


def _probe_compute(run: ClipRun) -> Artifact:
    info = probe.run_probe(run.clip.source, run.ctx.cfg.probe)
    return Artifact(meta=info.to_dict())


def _track_config(cfg: Config) -> dict:
    d = cfg.track.model_dump(mode="json")
    for k in (
        "weights",
        "batch",
    ):  # the weight file's hash stands in for its name; batch size is not a result
        d["detector"].pop(k)
    return {"track": d, "fps": cfg.decode.fps}


def _track_inputs(run: ClipRun) -> dict:
    ctx = run.ctx
    if ctx.detections is not None:
        return {"detections": ctx.detections.fingerprint(run.clip.names())}
    return {"detector": file_hash(ctx.weights("detector"))}


def _track_compute(run: ClipRun) -> Artifact:
    ctx, cfg = run.ctx, run.ctx.cfg
    info: VideoInfo = run.results["probe"]
    total = count_samples(info, cfg.decode.fps)
    bar = ctx.progress.stage(run.clip.id, "track", total)
    detections = detector = None
    if ctx.detections is not None:
        detections = ctx.detections.for_clip(run.clip.names())
        if detections is None:
            raise StageFailure(
                f"no detections for this clip in {ctx.detections.path} (matched by clip id, name or stem)"
            )
    else:
        detector = ctx.models.detector(cfg.track.detector, ctx.weights("detector"))
    result = track.run_track(
        info,
        cfg.track,
        fps=cfg.decode.fps,
        chunk_frames=cfg.decode.chunk_frames,
        detector=detector,
        detections=detections,
        progress=bar,
        total=total,
    )
    meta, arrays = result.to_arrays()
    return Artifact(meta=meta, arrays=arrays)


STAGE_IMPL: dict[str, StageImpl] = {
    "probe": StageImpl(
        version=probe.VERSION,
        needs=(),
        config=lambda cfg: cfg.probe.model_dump(mode="json"),
        key_inputs=_probe_inputs,
        compute=_probe_compute,
        load=lambda a: VideoInfo.from_dict(a.meta),
    ),
    "track": StageImpl(
        version=track.VERSION,
        needs=("probe",),
        config=_track_config,
        key_inputs=_track_inputs,
        compute=_track_compute,
        load=lambda a: Tracks.from_arrays(a.meta, a.arrays),
    ),
}


# ---------------------------------------------------------------------------------------------------------
# Running


def _one_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    first = text.splitlines()[0]
    return (
        first
        if isinstance(e, (StageFailure, MediaError, ValueError, FileNotFoundError))
        else f"{type(e).__name__}: {first}"
    )


def run_stage(run: ClipRun, name: str) -> StageOutcome:
    """Run (or reuse) one stage of one clip and record its outcome. Never raises for clip-level problems."""
    ctx = run.ctx
    t0 = time.perf_counter()
    until = ctx.cfg.run.until
    failed_before = next((s for s, o in run.outcomes.items() if o.status == "failed"), None)
    impl = STAGE_IMPL.get(name)
    if failed_before:
        out = StageOutcome("skipped", reason=f"stage {failed_before} failed")
    elif STAGES.index(name) > STAGES.index(until):
        out = StageOutcome("skipped", reason=f"after --until {until}")
    elif impl is None:
        out = StageOutcome("skipped", reason=NOT_BUILT[name])
    else:
        try:
            inputs = impl.key_inputs(run)
            key = artifact_key(
                name,
                impl.version,
                impl.config(ctx.cfg),
                upstream={u: run.keys[u] for u in impl.needs},
                inputs=inputs,
            )
            art = ctx.store.load(name, key)
            status = "cached"
            if art is None:
                ctx.progress.stage(run.clip.id, name)
                art = impl.compute(run)
                ctx.store.save(name, key, art)
                status = "computed"
            run.results[name] = impl.load(art)
            run.keys[name] = key
            out = StageOutcome(status, key=key)
        except Exception as e:  # a clip's failure must never stop the batch
            out = StageOutcome("failed", reason=_one_line(e))
            run.error = f"{name}: {out.reason}"
            if not isinstance(e, (StageFailure, MediaError)):
                run.error_detail = traceback.format_exc()
    out.seconds = time.perf_counter() - t0
    run.outcomes[name] = out
    ctx.progress.stage_done(run.clip.id, name, out.status, out.seconds, out.reason)
    return out


def _published_tracks(run: ClipRun, clip_dir: Path) -> None:
    """``tracks.npz`` (arrays per person, see ``Tracks.to_arrays``) and its summary in ``tracks.json``."""
    tracks: Tracks = run.results["track"]
    meta, arrays = tracks.to_arrays()
    atomic_write_bytes(clip_dir / "tracks.npz", npz_bytes(arrays))
    atomic_write_json(clip_dir / "tracks.json", meta)


PUBLISHERS: dict[str, tuple[tuple[str, ...], Callable[[ClipRun, Path], None]]] = {
    "track": (("tracks.npz", "tracks.json"), _published_tracks),
}


def finish_clip(run: ClipRun) -> dict:
    """Publish the clip's outputs under ``OUT/<clip>/`` (atomic writes; outputs of stages that did not
    succeed this time are removed so no stale file sits under a final name) and return its report entry."""
    ctx = run.ctx
    clip_dir = ctx.out / run.clip.id
    clip_dir.mkdir(parents=True, exist_ok=True)
    for stage, (names, publish) in PUBLISHERS.items():
        if stage in run.results and run.error is None:
            publish(run, clip_dir)
        else:
            for n in names:
                (clip_dir / n).unlink(missing_ok=True)
    tracks: Tracks | None = run.results.get("track")
    info: VideoInfo | None = run.results.get("probe")
    status = "failed" if run.error else "ok"
    stages = {s: run.outcomes[s].to_json() for s in STAGES if s in run.outcomes}
    doc = {
        "schema": CLIP_SCHEMA,
        "id": run.clip.id,
        "source": str(run.clip.source),
        "source_fingerprint": run.fingerprint,
        "status": status,
        "error": run.error,
        "warnings": run.warnings,
        "video": info.to_dict() if info else None,
        "people": [tracks.summary(p) for p in tracks.people] if tracks else [],
        "stages": stages,
        "artifacts": dict(run.keys),
        "config_digest": ctx.cfg.digest(),
        "genmocap_version": __version__,
    }
    if run.error_detail:
        doc["traceback"] = run.error_detail
    atomic_write_json(clip_dir / "clip.json", doc)
    ctx.progress.clip_done(run.clip.id, status)
    return {
        "id": run.clip.id,
        "source": str(run.clip.source),
        "status": status,
        "error": run.error,
        "people": len(tracks.people) if tracks and not run.error else 0,
        "stages": stages,
        "out": run.clip.id,
    }


def process_clip(clip: Clip, ctx: RunContext) -> dict:
    """All stages of one clip, in order, without Prefect; returns the clip's report entry."""
    run = ClipRun(clip, ctx)
    for name in STAGES:
        run_stage(run, name)
    return finish_clip(run)


def run_batch(clips: list[Clip], ctx: RunContext) -> dict:
    """Process clips with ``run.concurrency`` threads (plain Python) and write ``OUT/report.json``."""
    started = _now()
    with ThreadPoolExecutor(max_workers=ctx.cfg.run.concurrency) as pool:
        entries = list(pool.map(lambda c: process_clip(c, ctx), clips))
    return write_report(ctx, entries, started)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_report(ctx: RunContext, entries: list[dict], started: str) -> dict:
    """``OUT/report.json``: one entry per clip of this run, plus totals."""
    ok = sum(e["status"] == "ok" for e in entries)
    report = {
        "schema": REPORT_SCHEMA,
        "genmocap_version": __version__,
        "started": started,
        "finished": _now(),
        "config_digest": ctx.cfg.digest(),
        "until": ctx.cfg.run.until,
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
