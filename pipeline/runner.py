"""Run clips through the stages: cache keys, artifact reuse, failures, publishing and the run report.

This is the plain-Python engine. ``run_stage`` and ``finish_clip`` are what the Prefect tasks in ``flows/``
call; ``process_clip`` / ``run_batch`` chain them without Prefect (tests, ``run.orchestrator=local``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import __version__
from pipeline.config import Config
from pipeline.discover import Clip
from pipeline.progress import Progress
from pipeline.registry import cache_dir, file_hash, locate, resolve
from pipeline.store import (
    Artifact,
    ArtifactStore,
    artifact_key,
    atomic_write_bytes,
    atomic_write_json,
    npz_bytes,
)
from stages import STAGES, camera, estimate, export, features, keypoints, postprocess, probe, track
from stages.camera import Camera
from stages.perception import PersonArrays, run_perception
from stages.track import DetectionsSource, Tracks
from stages.video import MediaError, VideoInfo, count_samples

REPORT_SCHEMA = "genmocap.report/1"
CLIP_SCHEMA = "genmocap.clip/1"

# Stages later issues build; until then a clip reports them as skipped with this reason.
NOT_BUILT: dict[str, str] = {}  # stage -> reason, for stages not built yet

# Weight roles: (config value "auto" ->) the original checkpoint when it is on disk, else GEM's ONNX export
# (public, downloaded when online), so a user with internet needs no manual download.
AUTO_WEIGHTS = {
    "vitpose": ("vitpose-h-multi-coco.pth", "vitpose_coco17.onnx"),
    "hmr2": ("epoch=10-step=25000.ckpt", "hmr2.onnx"),
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

    def _get(self, key: tuple, build: Callable[[], Any]) -> Any:
        with self._lock:
            if key not in self._cache:
                self._cache[key] = build()
            return self._cache[key]

    def detector(self, settings, weights: Path):
        from stages.detect import PersonDetector

        key = ("detector", str(weights), self.device, settings.model_dump_json())
        return self._get(key, lambda: PersonDetector(weights, self.device, settings))

    def image_model(self, kind: str, weights: Path, settings) -> Any:
        """ViTPose (``kind="vitpose"``) or HMR2 (``"hmr2"``) in eval mode: torch from the original
        checkpoint, or onnxruntime for an ``.onnx`` file (GEM's published exports)."""
        key = (kind, str(weights), self.device, settings.model_dump_json())

        def build() -> Any:
            if weights.suffix == ".onnx":
                from models.onnx_runner import OnnxModel

                return OnnxModel(weights, self.device)
            if kind == "vitpose":
                from models.vitpose import load_vitpose

                return load_vitpose(weights, self.device, num_heads=settings.num_heads, bf16=settings.bf16)
            from models.hmr2 import load_hmr2

            return load_hmr2(
                weights,
                self.device,
                num_heads=settings.num_heads,
                decoder_heads=settings.decoder_heads,
                bf16=settings.bf16,
            )

        return self._get(key, build)

    def gem(self, weights: Path, num_heads: int | None) -> Any:
        from models.gem.checkpoint import load_gem

        key = ("gem", str(weights), self.device, num_heads)
        return self._get(key, lambda: load_gem(weights, self.device, num_heads=num_heads))

    def skeleton(self, path: Path) -> Any:
        from models.gem.skeleton import Skeleton

        return self._get(("skeleton", str(path)), lambda: Skeleton.from_npz(path))


@dataclass
class RunContext:
    cfg: Config
    out: Path
    store: ArtifactStore
    models: Models
    progress: Progress
    detections: DetectionsSource | None = None
    body_model: Path | None = None  # SMPL-X neutral .npz (licence-gated; optional)

    @classmethod
    def create(
        cls,
        cfg: Config,
        out: Path,
        detections: Path | None = None,
        progress: Progress | None = None,
        body_model: Path | None = None,
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
            body_model=body_model if body_model is not None else body_model_path(),
        )

    def required_weights(self) -> dict[str, str]:
        """Weight files the configured stages need: {role: file name or path}."""
        return needed_weights(self.cfg, user_detections=self.detections is not None)

    def weights(self, role: str) -> Path:
        return resolve(self.required_weights()[role])


def needed_weights(cfg: Config, user_detections: bool = False) -> dict[str, str]:
    """Weight files the stages up to ``cfg.run.until`` need: {role: file name or path}."""
    need = {}
    until = STAGES.index(cfg.run.until)
    if until >= STAGES.index("track") and not user_detections:
        need["detector"] = cfg.track.detector.weights
    if until >= STAGES.index("keypoints"):
        need["vitpose"] = _auto_weights("vitpose", cfg.keypoints.weights)
    if until >= STAGES.index("features") and cfg.features.enabled:
        need["hmr2"] = _auto_weights("hmr2", cfg.features.weights)
    cam = cfg.camera
    if until >= STAGES.index("camera") and cam.backend == "droid" and not cam.fallback:
        need["droid"] = cam.droid.weights  # else a missing DROID falls back to opencv, with a warning
    if until >= STAGES.index("estimate"):
        need["gem"] = cfg.estimate.checkpoint
    return need


def _auto_weights(role: str, setting: str) -> str:
    if setting != "auto":
        return setting
    original, onnx = AUTO_WEIGHTS[role]
    return original if locate(original) else onnx


def body_model_path() -> Path | None:
    """The SMPL-X neutral model, if present: $GENMOCAP_BODY_MODEL (file or folder) or the user cache."""
    candidates = []
    env = os.environ.get("GENMOCAP_BODY_MODEL")
    if env:
        p = Path(env).expanduser()
        candidates += [p, p / "SMPLX_NEUTRAL.npz", p / "smplx" / "SMPLX_NEUTRAL.npz"]
    candidates.append(cache_dir() / "body_models" / "smplx" / "SMPLX_NEUTRAL.npz")
    return next((c for c in candidates if c.is_file()), None)


def weights_hash(path: Path) -> str:
    """Content hash of a weight file; an ONNX graph's external-data sidecar is part of its weights."""
    h = file_hash(path)
    data = path.with_name(path.name + ".data")
    return f"{h}+{file_hash(data)}" if path.suffix == ".onnx" and data.is_file() else h


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
    pending: dict[str, Artifact] = field(default_factory=dict)  # computed early by a shared pass
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
    skip: Callable[[Config], str | None] = lambda cfg: None  # a reason to skip the stage by config
    # for stages whose result lives in OUT: is a stored artifact's output still there? (else recompute)
    present: Callable[[ClipRun, Artifact], bool] = lambda run, art: True


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


# --- keypoints + features: one pixel pass serves both (the features artifact is kept as pending)


def _no_result_fields(settings, *extra: str) -> dict:
    """A stage's settings for its key, without the ones that do not change results."""
    d = settings.model_dump(mode="json")
    for k in ("weights", "batch", *extra):
        d.pop(k, None)
    return d


def _keypoints_inputs(run: ClipRun) -> dict:
    return {"vitpose": weights_hash(run.ctx.weights("vitpose"))}


def _features_inputs(run: ClipRun) -> dict:
    return {"hmr2": weights_hash(run.ctx.weights("hmr2"))}


def _perception(
    run: ClipRun, with_keypoints: bool, with_features: bool
) -> tuple[Artifact | None, Artifact | None]:
    ctx, cfg = run.ctx, run.ctx.cfg
    info: VideoInfo = run.results["probe"]
    tracks: Tracks = run.results["track"]
    models = ctx.models
    vitpose = models.image_model("vitpose", ctx.weights("vitpose"), cfg.keypoints) if with_keypoints else None
    hmr2 = models.image_model("hmr2", ctx.weights("hmr2"), cfg.features) if with_features else None
    total = len(tracks.sample_frame_index)
    label = (
        "keypoints+features"
        if with_keypoints and with_features
        else ("keypoints" if with_keypoints else "features")
    )
    bar = ctx.progress.stage(run.clip.id, label, total)
    kp, ft = run_perception(
        info,
        tracks,
        fps=cfg.decode.fps,
        chunk_frames=cfg.decode.chunk_frames,
        device=models.device,
        vitpose=vitpose,
        keypoints=cfg.keypoints,
        hmr2=hmr2,
        features=cfg.features,
        progress=bar,
        total=total,
    )
    return tuple(None if r is None else Artifact(*r.to_arrays()) for r in (kp, ft))  # type: ignore[return-value]


def _keypoints_compute(run: ClipRun) -> Artifact:
    # Also compute the features in the same decode when that stage will run and is not cached.
    cfg = run.ctx.cfg
    with_features = False
    if cfg.features.enabled and STAGES.index(cfg.run.until) >= STAGES.index("features"):
        key = stage_key(run, "features")
        with_features = not run.ctx.store.has("features", key)
    kp, ft = _perception(run, True, with_features)
    if ft is not None:
        run.pending["features"] = ft
    assert kp is not None
    return kp


def _features_compute(run: ClipRun) -> Artifact:
    if "features" in run.pending:
        return run.pending.pop("features")
    ft = _perception(run, False, True)[1]
    assert ft is not None
    return ft


# --- estimate + postprocess


def _estimate_inputs(run: ClipRun) -> dict:
    return {"gem": weights_hash(run.ctx.weights("gem"))}


def _estimate_compute(run: ClipRun) -> Artifact:
    ctx, cfg = run.ctx, run.ctx.cfg
    tracks: Tracks = run.results["track"]
    kp: PersonArrays | None = run.results.get("keypoints")
    ft: PersonArrays | None = run.results.get("features")
    people = []
    for p in tracks.people:
        f = ft.arrays[p.person_id]["f_imgseq"] if ft is not None else None
        people.append(
            estimate.PersonInput(
                person_id=p.person_id,
                sample_index=p.sample_index,
                bbx_xys=p.bbx_xys,
                kp2d=kp.arrays[p.person_id]["kp2d"] if kp is not None else None,
                f_imgseq=f,
                has_img=None if f is None else np.ones(len(p.sample_index), bool),
            )
        )
    cam: Camera | None = run.results.get("camera")
    S = len(tracks.sample_frame_index)
    K = angvel = None
    known: bool | np.ndarray = True
    if cam is not None:
        K = np.repeat(cam.K[None].astype(np.float32), S, axis=0)
        angvel = cam.cam_angvel()
        known = cam.has_cam_mask
    net = ctx.models.gem(ctx.weights("gem"), cfg.estimate.num_heads)
    ctx.progress.stage(run.clip.id, "estimate")
    results = estimate.estimate_people(
        net, people, tracks.image_wh, cfg.estimate, skeleton=None, K=K, cam_angvel=angvel, camera_known=known
    )
    meta = {
        "people": [p.person_id for p in people],
        "features": ft is not None,
        "camera": "static (no camera stage)" if cam is None else cam.backend,
        "camera_known_fraction": float(np.mean(known)),
    }
    arrays = {
        f"person_{p.person_id}/{k}": v for p, r in zip(people, results, strict=True) for k, v in r.items()
    }
    return Artifact(meta=meta, arrays=arrays)


def _postprocess_inputs(run: ClipRun) -> dict:
    bm = run.ctx.body_model
    return {"body_model": file_hash(bm) if bm else None}


def _postprocess_compute(run: ClipRun) -> Artifact:
    ctx, cfg = run.ctx, run.ctx.cfg
    est: PersonArrays = run.results["estimate"]
    skeleton = ctx.models.skeleton(ctx.body_model) if ctx.body_model else None
    people = [
        postprocess.refine_person(est.arrays[pid], skeleton, cfg.postprocess.contact_ik)
        for pid in sorted(est.arrays)
    ]
    info: dict = {"body_model": bool(skeleton), "contact_ik": bool(skeleton) and cfg.postprocess.contact_ik}
    if cfg.postprocess.shared_world:
        cam: Camera | None = run.results.get("camera")
        R_w2c = cam.R_w2c if cam is not None and cam.solved else None
        people, placed = postprocess.place_in_clip_frame(people, R_w2c, skeleton)
        info.update(placed)
    info["contact_joints"] = list(postprocess.CONTACT_JOINTS)
    keep = (
        "sample_index",
        "present",
        "global_orient",
        "transl",
        "body_pose",
        "betas",
        "incam_global_orient",
        "incam_transl",
        "contacts",
        "K",
    )
    arrays = {
        f"person_{pid}/{k}": r[k] for pid, r in zip(sorted(est.arrays), people, strict=True) for k in keep
    }
    return Artifact(meta={"people": sorted(est.arrays), **info}, arrays=arrays)


# --- camera


def _camera_config(cfg: Config) -> dict:
    d = cfg.camera.model_dump(mode="json")
    d["droid"].pop("timeout_s", None)  # a time limit, not a result
    return {"camera": d, "decode": cfg.decode.model_dump(mode="json")}


def _camera_inputs(run: ClipRun) -> dict:
    cfg = run.ctx.cfg.camera
    inputs: dict[str, Any] = {}
    if cfg.backend == "file":
        inputs["file"] = camera.camera_file_fingerprint(cfg, run.results["probe"])
    if cfg.backend == "droid" or (cfg.backend == "auto" and cfg.droid.in_auto):
        w = locate(cfg.droid.weights)
        inputs["droid"] = file_hash(w) if w else None
    return inputs


def _camera_compute(run: ClipRun) -> Artifact:
    ctx, cfg = run.ctx, run.ctx.cfg
    tracks: Tracks = run.results["track"]
    total = len(tracks.sample_frame_index)
    cam = camera.run_camera(
        run.results["probe"],
        tracks,
        cfg.camera,
        fps=cfg.decode.fps,
        chunk_frames=cfg.decode.chunk_frames,
        progress=ctx.progress.stage(run.clip.id, "camera", total),
        total=total,
        droid_weights=locate(cfg.camera.droid.weights),
    )
    return Artifact(*cam.to_arrays())


def _camera_load(a: Artifact) -> Camera:
    return Camera.from_arrays(a.meta, a.arrays)


# --- export: files under OUT/<clip>/, checked on reuse


def _export_config(cfg: Config) -> dict:
    return {"export": cfg.export.model_dump(mode="json", exclude={"timeout_s", "verify"})}


def _timeline(info: VideoInfo, tracks: Tracks) -> export.ClipTimeline:
    from fractions import Fraction

    from stages.video import frame_timestamps

    src_fps = info.fps
    if info.fps_nominal and not info.vfr:
        nominal = float(Fraction(info.fps_nominal))
        src_fps = nominal if abs(nominal - info.fps) < 1e-3 * nominal else info.fps
    times = frame_timestamps(Path(info.path)) if info.vfr and info.kind == "video" else None
    return export.ClipTimeline(
        sample_frame_index=tracks.sample_frame_index,
        sample_time_s=tracks.sample_time_s,
        model_fps=tracks.fps,
        source_fps=src_fps,
        source_frame_count=info.frame_count,
        source_times=times,
        timecode=info.timecode,
        image_wh=tracks.image_wh,
    )


def _export_compute(run: ClipRun) -> Artifact:
    ctx, cfg = run.ctx, run.ctx.cfg
    info: VideoInfo = run.results["probe"]
    tracks: Tracks = run.results["track"]
    pp: PersonArrays = run.results["postprocess"]
    kp: PersonArrays | None = run.results.get("keypoints")
    cam: Camera | None = run.results.get("camera")
    by_id = {p.person_id: p for p in tracks.people}
    people = {}
    for pid, arrays in pp.arrays.items():
        motion = dict(arrays)
        track = by_id[pid]
        s0, L = int(arrays["sample_index"][0]), len(arrays["sample_index"])
        rel = track.sample_index - s0
        motion["bbox_xyxy"] = estimate.span_rows(track.xyxy, rel, L, interpolate=True)
        motion["kp2d"] = estimate.span_rows(kp.arrays[pid]["kp2d"], rel, L) if kp else None
        people[pid] = motion
    camera_track = None
    if "clip_from_cam0" in pp.meta:  # people placed in the clip frame: the camera can join them there
        S = len(tracks.sample_frame_index)
        R0 = cam.R_w2c if cam is not None and cam.solved else np.broadcast_to(np.eye(3), (S, 3, 3))
        B = np.asarray(pp.meta["clip_from_cam0"])
        R, t = export.camera_in_clip_frame(R0, B, pp.meta["camera_height_m"])
        K = cam.K if cam is not None else np.asarray(next(iter(pp.arrays.values()))["K"][0])
        camera_track = export.CameraTrack(R_w2c=R, t_w2c=t, K=K)
    clip_dir = ctx.out / run.clip.id
    clip_dir.mkdir(parents=True, exist_ok=True)
    ctx.progress.stage(run.clip.id, "export")
    result = export.export_clip(
        people, _timeline(info, tracks), clip_dir, cfg.export, ctx.body_model, camera=camera_track, video=info
    )
    return Artifact(meta=_relative(result.to_dict(), ctx.out))


def _relative(doc: Any, root: Path) -> Any:
    """Paths under OUT made relative to it, so a moved output folder still matches its artifact."""
    if isinstance(doc, dict):
        return {k: _relative(v, root) for k, v in doc.items()}
    if isinstance(doc, str) and doc.startswith(str(root) + os.sep):
        return os.path.relpath(doc, root)
    return doc


def _export_files(meta: dict) -> list[str]:
    files = [meta.get("camera_npz"), meta.get("preview")]
    for person in meta.get("people", {}).values():
        files += [person.get("smpl_npz"), *person.get("files", {}).values()]
    return [f for f in files if f]


def _export_present(run: ClipRun, art: Artifact) -> bool:
    return all((run.ctx.out / f).is_file() for f in _export_files(art.meta))


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
    "keypoints": StageImpl(
        version=keypoints.VERSION,
        needs=("track",),
        config=lambda cfg: {
            "keypoints": _no_result_fields(cfg.keypoints),
            "decode": cfg.decode.model_dump(mode="json"),
        },
        key_inputs=_keypoints_inputs,
        compute=_keypoints_compute,
        load=lambda a: PersonArrays.from_arrays(a.meta, a.arrays),
    ),
    "features": StageImpl(
        version=features.VERSION,
        needs=("track",),
        config=lambda cfg: {
            "features": _no_result_fields(cfg.features, "enabled"),
            "decode": cfg.decode.model_dump(mode="json"),
        },
        key_inputs=_features_inputs,
        compute=_features_compute,
        load=lambda a: PersonArrays.from_arrays(a.meta, a.arrays),
        skip=lambda cfg: (
            None
            if cfg.features.enabled
            else "disabled (features.enabled=false): GEM runs without image features"
        ),
    ),
    "camera": StageImpl(
        version=camera.VERSION,
        needs=("track",),
        config=_camera_config,
        key_inputs=_camera_inputs,
        compute=_camera_compute,
        load=_camera_load,
    ),
    "estimate": StageImpl(
        version=estimate.VERSION,
        needs=("track", "keypoints", "features", "camera"),
        config=lambda cfg: {"estimate": _no_result_fields(cfg.estimate, "checkpoint", "batch_people")},
        key_inputs=_estimate_inputs,
        compute=_estimate_compute,
        load=lambda a: PersonArrays.from_arrays(a.meta, a.arrays),
    ),
    "postprocess": StageImpl(
        version=postprocess.VERSION,
        needs=("estimate",),
        config=lambda cfg: {"postprocess": cfg.postprocess.model_dump(mode="json")},
        key_inputs=_postprocess_inputs,
        compute=_postprocess_compute,
        load=lambda a: PersonArrays.from_arrays(a.meta, a.arrays),
    ),
    "export": StageImpl(
        version=export.VERSION,
        needs=("probe", "track", "keypoints", "camera", "postprocess"),
        config=_export_config,
        key_inputs=lambda run: {"body_model": file_hash(run.ctx.body_model) if run.ctx.body_model else None},
        compute=_export_compute,
        load=lambda a: a.meta,
        present=_export_present,
    ),
}


def stage_key(run: ClipRun, name: str) -> str:
    """The artifact key of one stage of one clip (upstream stages that did not run this time, e.g. disabled
    features, are simply absent from it)."""
    impl = STAGE_IMPL[name]
    return artifact_key(
        name,
        impl.version,
        impl.config(run.ctx.cfg),
        upstream={u: run.keys[u] for u in impl.needs if u in run.keys},
        inputs=impl.key_inputs(run),
    )


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
    elif reason := impl.skip(ctx.cfg):
        out = StageOutcome("skipped", reason=reason)
    else:
        try:
            key = stage_key(run, name)
            art = ctx.store.load(name, key)
            status = "cached"
            if art is not None and not impl.present(run, art):
                art = None  # its files under OUT were removed: write them again
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


def _published_camera(run: ClipRun, clip_dir: Path) -> None:
    """``camera.npz`` / ``camera.json``: the camera stage's result at the model rate (``Camera.to_arrays``)"""
    meta, arrays = run.results["camera"].to_arrays()
    atomic_write_bytes(clip_dir / "camera.npz", npz_bytes(arrays))
    atomic_write_json(clip_dir / "camera.json", meta)


PUBLISHERS: dict[str, tuple[tuple[str, ...], Callable[[ClipRun, Path], None]]] = {
    "track": (("tracks.npz", "tracks.json"), _published_tracks),
    "camera": (("camera.npz", "camera.json"), _published_camera),
}


def _remove_exports(clip_dir: Path) -> None:
    """Exported files of an earlier run, when this run did not export (failed, or stopped earlier)."""
    for d in clip_dir.glob("person_*"):
        if d.is_dir():
            shutil.rmtree(d, ignore_errors=True)
    for name in (export.CAMERA_FILE, "preview.mp4"):
        (clip_dir / name).unlink(missing_ok=True)


def _result_warnings(run: ClipRun) -> list[str]:
    """Warnings carried by the stage results (so a cached result reports them as well as a fresh one)."""
    out = []
    tracks: Tracks | None = run.results.get("track")
    if "estimate" in run.results and tracks is not None and abs(tracks.fps - 30.0) > 0.5:
        out.append(f"estimate: GEM expects 30 fps samples, got {tracks.fps:.3f} (decode.resample=false)")
    cam: Camera | None = run.results.get("camera")
    if cam is not None:
        if not cam.solved:
            out.append(f"camera unknown: {cam.reason} (GEM was told the camera is unknown)")
        out += [f"camera: {w}" for w in cam.warnings]
    pp: PersonArrays | None = run.results.get("postprocess")
    if pp is not None and not pp.meta.get("body_model"):
        out.append("postprocess: no SMPL-X body model: contact correction and IK skipped (raw trajectory)")
    reason = (run.results.get("export") or {}).get("reason")
    if reason:
        out.append(f"export: {reason}")
    return out


def finish_clip(run: ClipRun) -> dict:
    """Publish the clip's outputs under ``OUT/<clip>/`` (atomic writes; outputs of stages that did not
    succeed this time are removed so no stale file sits under a final name) and return its report entry."""
    ctx = run.ctx
    clip_dir = ctx.out / run.clip.id
    clip_dir.mkdir(parents=True, exist_ok=True)
    run.warnings = [*dict.fromkeys(run.warnings + _result_warnings(run))]
    for stage, (names, publish) in PUBLISHERS.items():
        if stage in run.results and run.error is None:
            publish(run, clip_dir)
        else:
            for n in names:
                (clip_dir / n).unlink(missing_ok=True)
    if "export" not in run.results or run.error is not None:
        _remove_exports(clip_dir)
    cam: Camera | None = run.results.get("camera")
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
        "camera": cam.summary() if cam is not None else None,
        "exports": run.results.get("export"),
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
        "warnings": run.warnings,
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
