"""The pixel pass after tracking: one decode of the clip feeding ViTPose keypoints and HMR2 features.

For every decoded chunk, the (sample, person) items of all tracks in it are gathered, their crops are cut
once on the model's device (:func:`models.crops.cut_crops`, bit-exact with GEM's demo) and run through the
models in batches of the configured size. Results land in per-person arrays aligned with each track's
samples, so they share the track stage's timeline (``Track.sample_index``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stages.results import PersonArrays, Tracks
from stages.spec import ClipRun, PixelJob
from stages.video import FrameChunk, VideoInfo, iter_chunks

if TYPE_CHECKING:  # torch is imported where it is used: importing the stage modules must stay cheap
    import torch

    from stages.features import FeaturesSettings
    from stages.keypoints import KeypointsSettings

Progress = Callable[[int, int], None]
ImageModel = Callable[["torch.Tensor"], "torch.Tensor"]  # torch module or ONNX runner: crops -> outputs


@dataclass
class _Task:
    """One model applied to crops, writing rows of per-person outputs."""

    run: Callable[[torch.Tensor, torch.Tensor], np.ndarray]  # (crops, bbx_xys) -> (n, ...) float32
    batch: int
    outputs: dict[int, np.ndarray]


def _keypoints_fn(
    model: ImageModel, s: KeypointsSettings
) -> Callable[[torch.Tensor, torch.Tensor], np.ndarray]:
    from models.heatmap import decode_heatmaps
    from models.vitpose import heatmaps_flip_test

    def run(crops: torch.Tensor, bbx: torch.Tensor) -> np.ndarray:
        heat = heatmaps_flip_test(model, crops)[0] if s.flip_test else model(crops).float()
        return decode_heatmaps(heat.float(), bbx.to(heat.device), s.confidence).cpu().numpy()

    return run


def _features_fn(model: ImageModel) -> Callable[[torch.Tensor, torch.Tensor], np.ndarray]:
    def run(crops: torch.Tensor, bbx: torch.Tensor) -> np.ndarray:
        return model(crops).float().cpu().numpy()

    return run


def run_perception(
    info: VideoInfo,
    tracks: Tracks,
    *,
    fps: float | None,
    chunk_frames: int,
    chunks: Iterable[FrameChunk] | None = None,
    device: str | torch.device = "cpu",
    vitpose: ImageModel | None = None,
    keypoints: KeypointsSettings | None = None,
    hmr2: ImageModel | None = None,
    features: FeaturesSettings | None = None,
    progress: Progress | None = None,
    total: int | None = None,
) -> tuple[PersonArrays | None, PersonArrays | None]:
    """Decode the clip once and run the given models on every tracked (sample, person).

    Args:
        fps, chunk_frames: the decode settings the track stage used (same sample timeline).
        chunks: decoded chunks from a decode shared with other stages (default: decode the clip here).
        device: where crops are cut (the models' device).
        vitpose + keypoints: ViTPose (B, 3, 256, 192) -> (B, 17, 64, 48) heatmaps, and its settings; None
            skips keypoints.
        hmr2 + features: HMR2 (B, 3, 256, 256) -> (B, 1024), and its settings; None skips features.
    Returns:
        (keypoints, features): ``kp2d`` (T, 17, 3) float32 (x, y, confidence) in full-image pixels and
        ``f_imgseq`` (T, 1024) float32 per person, or None for a model not given.
    """
    import torch

    with torch.inference_mode():
        return _run_perception(info, tracks, fps, chunk_frames, chunks, device, vitpose, keypoints, hmr2,
                               features, progress, total)  # fmt: skip


def _run_perception(
    info, tracks, fps, chunk_frames, chunks, device, vitpose, keypoints, hmr2, features, progress, total
) -> tuple[PersonArrays | None, PersonArrays | None]:
    from stages.features import FeaturesSettings
    from stages.keypoints import KeypointsSettings

    tasks: dict[str, _Task] = {}
    if vitpose is not None:
        s = keypoints or KeypointsSettings()
        out = {p.person_id: np.zeros((len(p.sample_index), 17, 3), np.float32) for p in tracks.people}
        tasks["kp2d"] = _Task(_keypoints_fn(vitpose, s), s.batch, out)
    if hmr2 is not None:
        f = features or FeaturesSettings()
        out = {p.person_id: np.zeros((len(p.sample_index), 1024), np.float32) for p in tracks.people}
        tasks["f_imgseq"] = _Task(_features_fn(hmr2), f.batch, out)
    blur = bool(features.blur) if features is not None else True
    filled = {p.person_id: np.zeros(len(p.sample_index), bool) for p in tracks.people}
    done = 0
    if chunks is None:
        chunks = iter_chunks(info, chunk_frames=chunk_frames, fps=fps) if tasks else ()
    for chunk in chunks:
        rows_of_sample = {int(s): r for r, s in enumerate(chunk.sample_index)}
        items = []  # (person_id, position in track, chunk row)
        for p in tracks.people:
            pos = np.flatnonzero(
                (p.sample_index >= chunk.sample_index[0]) & (p.sample_index <= chunk.sample_index[-1])
            )
            items += [(p.person_id, int(i), rows_of_sample[int(p.sample_index[i])]) for i in pos]
        # crops of at most `group` items exist at once (~1.4 MB each for both models), whatever the crowd
        group = max(128, *(t.batch for t in tasks.values()))
        for a in range(0, len(items), group):
            _run_items(chunk.frames, items[a : a + group], tracks, tasks, device, hmr2 is not None, blur)
        for pid, i, _ in items:
            filled[pid][i] = True
        done += len(chunk)
        if progress is not None:
            progress(done, total or done)
    missing = [pid for pid, f in filled.items() if not f.all()]
    if missing and tasks:
        raise RuntimeError(f"decode ended before every tracked sample was seen (people {missing})")
    kp = (
        PersonArrays(
            {"confidence": keypoints.confidence if keypoints else "sigmoid"},
            {pid: {"kp2d": a} for pid, a in tasks["kp2d"].outputs.items()},
        )
        if "kp2d" in tasks
        else None
    )
    ft = (
        PersonArrays({"blur": blur}, {pid: {"f_imgseq": a} for pid, a in tasks["f_imgseq"].outputs.items()})
        if ("f_imgseq" in tasks)
        else None
    )
    return kp, ft


def _run_items(
    frames: np.ndarray,
    items: list[tuple[int, int, int]],
    tracks: Tracks,
    tasks: dict[str, _Task],
    device: str | torch.device,
    with_hmr2: bool,
    blur: bool,
) -> None:
    import torch

    from models.crops import cut_crops

    by_id = {p.person_id: p for p in tracks.people}
    bbx = torch.from_numpy(np.stack([by_id[pid].bbx_xys[i] for pid, i, _ in items]).astype(np.float32))
    rows = torch.tensor([r for _, _, r in items], dtype=torch.long)
    frames_t = torch.from_numpy(frames).to(device)
    crops = cut_crops(frames_t, rows.to(device), bbx, hmr2=with_hmr2, hmr2_blur=blur)
    inputs = {"kp2d": crops.vitpose, "f_imgseq": crops.hmr2}
    for name, task in tasks.items():
        x = inputs[name]
        for a in range(0, len(items), task.batch):
            res = task.run(x[a : a + task.batch], bbx[a : a + task.batch])
            for (pid, i, _), value in zip(items[a : a + task.batch], res, strict=True):
                task.outputs[pid][i] = value


# --------------------------------------------------------------------------------------------------------
# Models and the shared pixel pass of the keypoints and features stages


def resolve_engine(setting: str, weights: Path | str, device: str) -> str:
    """``torch`` or ``onnxruntime`` for a network. ``auto`` runs torch on a GPU whatever the weight file
    (GEM's ONNX exports are imported into our torch modules: :mod:`models.onnx_import`); on the CPU an
    ``.onnx`` file with onnxruntime (as GEM's demo does) and a checkpoint with torch."""
    if setting != "auto":
        return setting
    if str(device).startswith("cuda") or Path(weights).suffix != ".onnx":
        return "torch"
    return "onnxruntime"


# bf16 by default on CUDA, per network, as measured (benchmarks/precision.py on an H200, README "Precision")
BF16_ON_CUDA = {"vitpose": False, "hmr2": True}


def uses_bf16(kind: str, settings: Any, device: str) -> bool:
    """Does ``kind`` ("vitpose" | "hmr2") run under bf16 autocast: ``settings.bf16`` when set, else the
    measured default on CUDA; never on the CPU (the models autocast on CUDA only)."""
    if not str(device).startswith("cuda"):
        return False
    return BF16_ON_CUDA[kind] if settings.bf16 is None else bool(settings.bf16)


def precision_key(kind: str, settings: Any, device: str) -> dict[str, str]:
    """The precision a network runs at, for its stage's key (a bf16 result is not an fp32 one)."""
    return {"precision": "bf16" if uses_bf16(kind, settings, device) else "fp32"}


def image_model(kind: str, weights: Path, settings: Any, device: str) -> Any:
    """ViTPose (``kind="vitpose"``) or HMR2 (``"hmr2"``) in eval mode, loaded once per process, on the engine
    :func:`resolve_engine` picks: torch from the original checkpoint or from GEM's ONNX export (imported),
    or onnxruntime for an ``.onnx`` file."""
    from models.cache import cached

    engine = resolve_engine(settings.engine, weights, device)
    bf16 = uses_bf16(kind, settings, device)
    heads = {"num_heads": settings.num_heads}
    if kind == "hmr2":
        heads["decoder_heads"] = settings.decoder_heads

    def build() -> Any:
        if engine == "onnxruntime":
            if weights.suffix != ".onnx":
                raise ValueError(f"engine onnxruntime needs an .onnx file, not {weights.name}")
            from models.onnx_runner import OnnxModel

            return OnnxModel(weights, device)
        if weights.suffix == ".onnx":
            from models.onnx_import import load_onnx_as_torch

            return load_onnx_as_torch(weights, kind, device, bf16=bf16, **heads)
        if kind == "vitpose":
            from models.vitpose import load_vitpose

            return load_vitpose(weights, device, bf16=bf16, **heads)
        from models.hmr2 import load_hmr2

        return load_hmr2(weights, device, bf16=bf16, **heads)

    return cached((kind, str(weights), device, engine, bf16, settings.model_dump_json()), build)


def auto_weights(setting: str, original: str, onnx: str, env: Any) -> str:
    """``auto``: the original checkpoint when it is on disk, else GEM's ONNX export (public, downloaded when
    online), so a user with internet needs no manual download; any other value as given."""
    if setting != "auto":
        return setting
    return original if env is not None and env.locate(original) else onnx


def perception_pass(run: ClipRun, names: tuple[str, ...]) -> PixelJob:
    """The keypoints and/or features stages (``names``) as one consumer of decoded chunks: every (sample,
    person) crop is cut once and fed to ViTPose and HMR2."""
    env, cfg = run.env, run.cfg
    info: VideoInfo = run.results["probe"]
    tracks: Tracks = run.results["track"]
    vitpose = (
        image_model("vitpose", env.weights("vitpose"), cfg.keypoints, env.device)
        if "keypoints" in names
        else None
    )
    hmr2 = image_model("hmr2", env.weights("hmr2"), cfg.features, env.device) if "features" in names else None
    total = len(tracks.sample_frame_index)
    bar = env.progress.stage(run.clip_id, "+".join(names), total)

    def consume(chunks: Iterable[FrameChunk]) -> dict[str, Any]:
        kp, ft = run_perception(
            info, tracks, fps=cfg.decode.fps, chunk_frames=cfg.decode.chunk_frames, chunks=chunks,
            device=env.device, vitpose=vitpose, keypoints=cfg.keypoints, hmr2=hmr2, features=cfg.features,
            progress=bar, total=total,
        )  # fmt: skip
        return {k: v for k, v in (("keypoints", kp), ("features", ft)) if v is not None}

    return PixelJob(info, cfg.decode.fps, cfg.decode.chunk_frames, names, consume)
