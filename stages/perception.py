"""The pixel pass after tracking: one decode of the clip feeding ViTPose keypoints and HMR2 features.

For every decoded chunk, the (sample, person) items of all tracks in it are gathered, their crops are cut
once on the model's device (:func:`models.crops.cut_crops`, bit-exact with GEM's demo) and run through the
models in batches of the configured size. Results land in per-person arrays aligned with each track's
samples, so they share the track stage's timeline (``Track.sample_index``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from models.crops import cut_crops
from models.heatmap import decode_heatmaps
from models.vitpose import heatmaps_flip_test
from stages.features import FeaturesSettings
from stages.keypoints import KeypointsSettings
from stages.track import Tracks
from stages.video import VideoInfo, iter_chunks

Progress = Callable[[int, int], None]
ImageModel = Callable[[torch.Tensor], torch.Tensor]  # torch module or ONNX runner: crops -> outputs


@dataclass
class PersonArrays:
    """One stage's per-person arrays, each (T, ...) aligned with that person's track samples.

    ``arrays[person_id][name]``; ``meta`` is JSON-safe stage information.
    """

    meta: dict
    arrays: dict[int, dict[str, np.ndarray]]

    def to_arrays(self) -> tuple[dict, dict[str, np.ndarray]]:
        flat = {f"person_{pid}/{k}": v for pid, d in self.arrays.items() for k, v in d.items()}
        return {**self.meta, "people": sorted(self.arrays)}, flat

    @classmethod
    def from_arrays(cls, meta: dict, arrays: dict[str, np.ndarray]) -> PersonArrays:
        per: dict[int, dict[str, np.ndarray]] = {int(p): {} for p in meta["people"]}
        for key, v in arrays.items():
            head, name = key.split("/", 1)
            per[int(head.removeprefix("person_"))][name] = v
        return cls({k: v for k, v in meta.items() if k != "people"}, per)


@dataclass
class _Task:
    """One model applied to crops, writing rows of per-person outputs."""

    run: Callable[[torch.Tensor, torch.Tensor], np.ndarray]  # (crops, bbx_xys) -> (n, ...) float32
    batch: int
    outputs: dict[int, np.ndarray]


def _keypoints_fn(
    model: ImageModel, s: KeypointsSettings
) -> Callable[[torch.Tensor, torch.Tensor], np.ndarray]:
    def run(crops: torch.Tensor, bbx: torch.Tensor) -> np.ndarray:
        heat = heatmaps_flip_test(model, crops)[0] if s.flip_test else model(crops).float()
        return decode_heatmaps(heat.float(), bbx.to(heat.device), s.confidence).cpu().numpy()

    return run


def _features_fn(model: ImageModel) -> Callable[[torch.Tensor, torch.Tensor], np.ndarray]:
    def run(crops: torch.Tensor, bbx: torch.Tensor) -> np.ndarray:
        return model(crops).float().cpu().numpy()

    return run


@torch.inference_mode()
def run_perception(
    info: VideoInfo,
    tracks: Tracks,
    *,
    fps: float | None,
    chunk_frames: int,
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
        device: where crops are cut (the models' device).
        vitpose + keypoints: ViTPose (B, 3, 256, 192) -> (B, 17, 64, 48) heatmaps, and its settings; None
            skips keypoints.
        hmr2 + features: HMR2 (B, 3, 256, 256) -> (B, 1024), and its settings; None skips features.
    Returns:
        (keypoints, features): ``kp2d`` (T, 17, 3) float32 (x, y, confidence) in full-image pixels and
        ``f_imgseq`` (T, 1024) float32 per person, or None for a model not given.
    """
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
    for chunk in iter_chunks(info, chunk_frames=chunk_frames, fps=fps) if tasks else ():
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
