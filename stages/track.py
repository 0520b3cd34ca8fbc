"""Stage ``track``: people detection (YOLO, batched over decoded chunks) or user-supplied boxes, then
multi-person tracking at the real frame rate, gap interpolation, smoothing and GEM's square box.

Timeline: frames are decoded once and, by default, resampled by timestamp to the model rate (30 fps), so
every track lives on the same sample timeline that later stages (keypoints, GEM) use. Each sample keeps the
source frame number and timestamp it came from.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import Field

from stages.detect import DetectorSettings, PersonDetector
from stages.files import remove_files, write_npz_json
from stages.results import Tracks
from stages.spec import ClipRun, StageEnv, StageFailure, StageSpec
from stages.tracking import TrackerSettings, finalize, track_detections, tracks_from_ids
from stages.video import MediaError, VideoInfo, count_samples, iter_chunks

VERSION = "1"

Progress = Callable[[int, int], None]  # (samples done, samples total)


class TrackSettings(TrackerSettings):
    """Tracker and post-processing options (inherited) plus the detector's."""

    detector: DetectorSettings = Field(default_factory=DetectorSettings)


# --------------------------------------------------------------------------------------------------------
# User-supplied detections


@dataclass
class UserDetections:
    """Boxes supplied by the user for one clip.

    ``frame`` counts source frames from 0 in presentation order; boxes are pixels in display orientation.
    """

    frame: np.ndarray  # (M,) int64
    xyxy: np.ndarray  # (M, 4) float32
    score: np.ndarray  # (M,) float32
    track_id: np.ndarray | None  # (M,) int64, or None when the file gives no ids
    source: str  # file they came from


_COLUMNS = ("frame", "x1", "y1", "x2", "y2")


def _rows_to_detections(rows: list[dict], source: str) -> UserDetections:
    for i, row in enumerate(rows):
        missing = [c for c in _COLUMNS if row.get(c) in (None, "")]
        if missing:
            raise ValueError(f"{source}: row {i + 1} lacks {', '.join(missing)} (need frame, x1, y1, x2, y2)")
    has_ids = bool(rows) and all(row.get("track_id") not in (None, "") for row in rows)
    try:
        frame = np.array([int(float(r["frame"])) for r in rows], dtype=np.int64)
        xyxy = np.array([[float(r[c]) for c in _COLUMNS[1:]] for r in rows], dtype=np.float32).reshape(-1, 4)
        score = np.array([float(r.get("score") or 1.0) for r in rows], dtype=np.float32)
        tid = np.array([int(float(r["track_id"])) for r in rows], dtype=np.int64) if has_ids else None
    except (TypeError, ValueError) as e:
        raise ValueError(f"{source}: non-numeric value ({e})") from e
    if (frame < 0).any():
        raise ValueError(f"{source}: negative frame numbers")
    if ((xyxy[:, 2] <= xyxy[:, 0]) | (xyxy[:, 3] <= xyxy[:, 1])).any():
        raise ValueError(f"{source}: boxes must have x2 > x1 and y2 > y1")
    return UserDetections(frame, xyxy, score, tid, source)


def _read_rows(path: Path) -> list[dict] | dict[str, list[dict]]:
    """Rows of a JSON (a list of rows, or ``{clip: [rows]}``) or CSV (header row) detections file."""
    if path.suffix.lower() == ".json":
        data = json.loads(path.read_text())
        if isinstance(data, dict) and "detections" in data:
            data = data["detections"]
        if isinstance(data, dict):
            return {str(k): list(v) for k, v in data.items()}
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a list of rows or an object mapping clip -> rows")
        return data
    if path.suffix.lower() == ".csv":
        with path.open(newline="") as f:
            return [
                {k.strip(): (v.strip() if isinstance(v, str) else v) for k, v in r.items()}
                for r in csv.DictReader(f)
            ]
    raise ValueError(f"{path}: detections must be a .json or .csv file")


class DetectionsSource:
    """``--detections`` input: one file (rows optionally carrying a ``clip`` column/key) or a folder of
    per-clip files named ``<clip file stem>.json|csv`` or ``<clip id>.json|csv``.

    A file whose rows name no clip applies to every clip of the run (meant for single-clip runs).
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"detections not found: {self.path}")
        self._table: dict[str | None, list[dict]] | None = None
        if self.path.is_file():
            rows = _read_rows(self.path)
            table: dict[str | None, list[dict]] = {}
            if isinstance(rows, dict):
                table = dict(rows)
            else:
                for row in rows:
                    table.setdefault(row.get("clip") or None, []).append(row)
            self._table = table
            for (
                key,
                rs,
            ) in table.items():  # validate the whole file up front: a usage error, not a clip failure
                _rows_to_detections(rs, f"{self.path} ({key})" if key else str(self.path))

    def for_clip(self, names: list[str]) -> UserDetections | None:
        """Detections for a clip known under any of ``names`` (id, file name, stem, path); None if none."""
        if self._table is None:
            for name in names:
                for ext in (".json", ".csv"):
                    f = self.path / f"{name}{ext}"
                    if f.is_file():
                        rows = _read_rows(f)
                        if isinstance(rows, dict):
                            raise ValueError(f"{f}: a per-clip file must hold a list of rows")
                        return _rows_to_detections(rows, str(f))
            return None
        for name in names:
            if name in self._table:
                return _rows_to_detections(self._table[name], f"{self.path} ({name})")
        if set(self._table) == {None}:
            return _rows_to_detections(self._table[None], str(self.path))
        return None

    def fingerprint(self, names: list[str]) -> str | None:
        """A stable digest of what ``for_clip(names)`` returns (for cache keys)."""
        import hashlib

        d = self.for_clip(names)
        if d is None:
            return None
        h = hashlib.sha256()
        for a in (d.frame, d.xyxy, d.score) + ((d.track_id,) if d.track_id is not None else ()):
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()


# --------------------------------------------------------------------------------------------------------
# The stage


def run_track(
    info: VideoInfo,
    settings: TrackSettings,
    *,
    fps: float | None,
    chunk_frames: int,
    detector: PersonDetector | None = None,
    detections: UserDetections | None = None,
    progress: Progress | None = None,
    total: int | None = None,
) -> Tracks:
    """Detect (or take the user's boxes) and track every person of a clip.

    Args:
        info: the probed clip.
        fps: model rate to resample to by timestamp; None keeps every source frame.
        chunk_frames: frames decoded per chunk (bounds memory).
        detector: used when ``detections`` is None.
        detections: user boxes in source frame numbers; they replace the detector.
        progress: called with (samples done, ``total``) after each chunk.
    Returns:
        the tracks; when no track survives, ``people`` is empty and ``no_person`` says why.
    Raises:
        MediaError: the clip cannot be decoded.
    """
    if detector is None and detections is None:
        raise ValueError("run_track needs a detector or user detections")
    by_frame: dict[int, np.ndarray] = {}
    if detections is not None and len(detections.frame):
        order = np.argsort(detections.frame, kind="stable")
        frames_sorted = detections.frame[order]
        uniq, starts = np.unique(frames_sorted, return_index=True)
        for f, rows in zip(uniq.tolist(), np.split(order, starts[1:]), strict=True):
            by_frame[f] = rows

    per_sample: list[tuple] = []
    frame_idx: list[np.ndarray] = []
    times: list[np.ndarray] = []
    done = 0
    last: tuple[int, tuple] = (-1, ())  # (source frame, its detections) at the end of the previous chunk
    empty = (np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0,), np.int64))
    for chunk in iter_chunks(info, chunk_frames=chunk_frames, fps=fps):
        frame_idx.append(chunk.frame_index)
        times.append(chunk.time_s)
        if detections is not None:
            for f in chunk.frame_index.tolist():
                rows = by_frame.get(f)
                if rows is None:
                    per_sample.append(empty)
                else:
                    tid = detections.track_id[rows] if detections.track_id is not None else empty[2]
                    per_sample.append((detections.xyxy[rows], detections.score[rows], tid))
        else:
            # Resampling up (24 -> 30 fps) repeats source frames, also across chunk boundaries: detect each
            # source frame once.
            uniq, first, inverse = np.unique(chunk.frame_index, return_index=True, return_inverse=True)
            todo = [j for j, f in enumerate(uniq.tolist()) if f != last[0]]
            found = dict(zip(todo, detector(chunk.frames[first[todo]]) if todo else [], strict=True))
            dets = [found.get(j, last[1]) for j in range(len(uniq))]
            per_sample.extend(dets[j] for j in inverse.reshape(-1).tolist())
            last = (int(uniq[-1]), dets[-1])
        done += len(chunk.frame_index)
        if progress is not None:
            progress(done, total or done)

    if not per_sample:
        raise MediaError("no frames could be decoded")
    sample_frame_index = np.concatenate(frame_idx).astype(np.int64)
    sample_time_s = np.concatenate(times).astype(np.float64)
    rate = float(fps) if fps else float(info.fps)
    n = len(per_sample)

    if detections is not None and detections.track_id is not None:
        raw = tracks_from_ids(per_sample)
    else:
        raw = track_detections([(d[0], d[1]) for d in per_sample], rate, settings)
    people = finalize(raw, rate, (info.width, info.height), n, settings)
    return Tracks(
        fps=rate,
        image_wh=(info.width, info.height),
        sample_frame_index=sample_frame_index,
        sample_time_s=sample_time_s,
        people=people,
        source="user" if detections is not None else "detector",
        no_person=None if people else _why_no_person(per_sample, n, settings, detections),
    )


def _why_no_person(
    per_sample: list[tuple], n: int, settings: TrackSettings, detections: UserDetections | None
) -> str:
    n_boxes = sum(len(d[1]) for d in per_sample)
    if detections is not None and n_boxes == 0:
        return f"no person: the supplied detections ({detections.source}) have no box on any frame"
    if n_boxes == 0:
        return (
            f"no person detected in {n} frames (detector {Path(settings.detector.weights).name}, "
            f"conf >= {settings.detector.conf})"
        )
    return (
        f"no person track long enough: {n_boxes} boxes in {n} frames but no track of "
        f">= {settings.min_seconds:g} s (track.min_seconds)"
    )


# --------------------------------------------------------------------------------------------------------
# The stage contract


def detector(settings: DetectorSettings, weights: Path, device: str) -> PersonDetector:
    """The YOLO detector, loaded once per process (``models.cache``)."""
    from models.cache import cached

    key = ("detector", str(weights), device, settings.model_dump_json())
    return cached(key, lambda: PersonDetector(weights, device, settings))


def _weights(cfg, env: StageEnv | None) -> dict[str, str]:
    return {} if env is not None and env.detections is not None else {"detector": cfg.track.detector.weights}


def _key_inputs(run: ClipRun) -> dict:
    env = run.env
    if env.detections is not None:
        return {"detections": env.detections.fingerprint(run.names)}
    return {"detector": env.weights_hash("detector")}


def _compute(run: ClipRun) -> Tracks:
    env, cfg = run.env, run.cfg
    info: VideoInfo = run.results["probe"]
    total = count_samples(info, cfg.decode.fps)
    detections = det = None
    if env.detections is not None:
        detections = env.detections.for_clip(run.names)
        if detections is None:
            raise StageFailure(
                f"no detections for this clip in {env.detections.path} (matched by clip id, name or stem)"
            )
    else:
        det = detector(cfg.track.detector, env.weights("detector"), env.device)
    return run_track(
        info,
        cfg.track,
        fps=cfg.decode.fps,
        chunk_frames=cfg.decode.chunk_frames,
        detector=det,
        detections=detections,
        progress=env.progress.stage(run.clip_id, "track", total),
        total=total,
    )


def no_person(run: ClipRun) -> str | None:
    """Why stages that work on people skip this clip: it has no person track (None: it has people)."""
    tracks: Tracks | None = run.results.get("track")
    return tracks.no_person if tracks is not None and not tracks.people else None


SPEC = StageSpec(
    name="track",
    gpu=lambda run: run.env.detections is None,  # the detector; user boxes need no GPU
    version=VERSION,
    settings=TrackSettings,
    needs=("probe",),
    reads=("decode",),
    weights=_weights,
    key_inputs=_key_inputs,
    compute=_compute,
    save=lambda tracks: tracks.to_arrays(),
    load=Tracks.from_arrays,
    # ``tracks.npz`` (arrays per person, see ``Tracks.to_arrays``) and its summary in ``tracks.json``.
    publish=lambda run, result, clip_dir: write_npz_json(clip_dir, "tracks", *result.to_arrays()),
    unpublish=lambda run, clip_dir: remove_files(clip_dir, "tracks.npz", "tracks.json"),
    report=lambda tracks: {"people": [tracks.summary(p) for p in tracks.people] if tracks else []},
    warnings=lambda run, tracks: [tracks.no_person] if tracks.no_person else [],
)
