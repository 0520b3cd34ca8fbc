"""Multi-person tracking and track post-processing.

Two halves:

* Online: :class:`OnlineTracker` runs ultralytics' BoT-SORT (``ultralytics.trackers.bot_sort.BOTSORT``:
  ByteTrack's two-stage association plus optional camera-motion compensation) one sample at a time, with the
  lost window converted from seconds to samples at the stream's real rate. :func:`track_detections` runs it
  over a whole clip and returns per-id observations (:class:`RawTrack`) holding the *detection* boxes, not
  the tracker's Kalman boxes; :func:`tracks_from_ids` does the same grouping for detections that already
  carry ids.
* Offline: :func:`finalize` turns raw tracks into the :class:`Track` objects later stages consume:
  re-linking of broken tracks, clamping, dropping short tracks, interpolating short gaps, GEM's square
  ``bbx_xys`` boxes, smoothing, ordering by size.

Conventions: boxes are ``xyxy`` = (x1, y1, x2, y2) in pixels of the original image; a "sample" is one frame
of the stream, indexed 0..n_samples-1 at the stream's real ``fps``. All durations in the settings are in
seconds and are converted to samples with that fps, so 30 and 60 fps clips behave the same in time.

Importing this module is cheap: torch, cv2, scipy.ndimage and ultralytics are imported inside the functions
that use them.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "OnlineTracker",
    "RawTrack",
    "Track",
    "TrackerSettings",
    "bbx_xys_from_xyxy",
    "finalize",
    "moving_average",
    "track_detections",
    "tracks_from_ids",
]


class TrackerSettings(BaseModel):
    """Tracker and post-processing options. Durations are seconds (converted with the stream's real fps)."""

    model_config = ConfigDict(extra="forbid")

    high_thresh: float = Field(
        0.5, ge=0.0, le=1.0, description="detections >= this take part in the first association"
    )
    low_thresh: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="detections in (low_thresh, high_thresh) only in the second one (IoU >= 0.5, fixed by "
        "ultralytics)",
    )
    new_track_thresh: float = Field(
        0.6, ge=0.0, le=1.0, description="an unmatched high detection starts a track only if score >= this"
    )
    match_iou: float = Field(0.2, ge=0.0, le=1.0, description="minimum IoU in the first association")
    fuse_score: bool = Field(
        False, description="first association on 1 - IoU * score instead of 1 - IoU (ultralytics' fuse_score)"
    )
    gmc_method: Literal["sparseOptFlow", "orb", "sift", "ecc", "none"] = Field(
        "sparseOptFlow",
        description="BoT-SORT camera-motion compensation; only applied when the tracker is given the frames",
    )
    lost_seconds: float = Field(1.0, ge=0.0, description="how long an unmatched track is kept (predicted)")
    relink_seconds: float = Field(3.0, ge=0.0, description="largest gap bridged by re-linking; 0 = off")
    min_seconds: float = Field(1.0, ge=0.0, description="drop tracks observed for less than this")
    max_gap_seconds: float = Field(0.5, ge=0.0, description="interpolate interior gaps up to this long")
    smooth_window: int = Field(5, ge=1, description="centred moving-average window (odd); 1 = off")
    select: Literal["all", "largest"] = Field("all", description="'largest' keeps only person 0")
    max_people: int | None = Field(None, ge=1, description="keep at most this many people; None = all")
    enlarge: float = Field(1.2, gt=0.0, description="GEM's square-box enlarge factor")

    @field_validator("smooth_window")
    @classmethod
    def _odd_window(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError(f"smooth_window must be odd (centred window), got {v}")
        return v

    @model_validator(mode="after")
    def _ordered_thresholds(self) -> TrackerSettings:
        if self.low_thresh > self.high_thresh:
            raise ValueError(
                f"low_thresh ({self.low_thresh}) must not exceed high_thresh ({self.high_thresh})"
            )
        return self


# --------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------

_MIN_SIZE = 1.0  # pixels; keeps box heights positive for degenerate boxes


def bbx_xys_from_xyxy(xyxy: np.ndarray, enlarge: float = 1.2, aspect: float = 0.75) -> np.ndarray:
    """GEM's square box from corner boxes (one implementation: ``models.crops.square_boxes``, in float32
    like the reference, so the pipeline's boxes equal the demo's bit for bit).

    Args:
        xyxy: (N, 4) x1, y1, x2, y2 in pixels.
        enlarge: factor applied to the side of the square.
        aspect: width/height ratio the box is first padded to (0.75 = GEM's 192x256 crops).
    Returns:
        (N, 3) float32 (cx, cy, s): box centre and side of the square crop,
        ``s = enlarge * max(h, w / aspect)``.
    """
    import torch

    from models.crops import square_boxes

    b = torch.from_numpy(np.asarray(xyxy, dtype=np.float32).reshape(-1, 4))
    return square_boxes(b, enlarge, aspect).numpy()


def moving_average(x: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average along axis 0 with replicate padding.

    Args:
        x: (T, D) (or (T,)) samples.
        window: odd window length; 1 returns a copy.
    Returns:
        Same shape as ``x``; floating inputs keep their dtype, others become float64. Each end is padded
        with copies of the first/last sample (``mode="nearest"``), so a constant signal stays constant and a
        ramp is unchanged except within ``window // 2`` of the ends.
    """
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be odd and >= 1, got {window}")
    x = np.asarray(x)
    out_dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64
    if window == 1 or x.shape[0] <= 1:
        return x.astype(out_dtype, copy=True)
    from scipy.ndimage import uniform_filter1d

    # Accumulated in float64 whatever the input dtype; an odd window with origin 0 is centred.
    return uniform_filter1d(x.astype(np.float64), window, axis=0, mode="nearest").astype(out_dtype)


def _seconds_to_samples(seconds: float, fps: float) -> int:
    return int(round(seconds * fps))


def _check_fps(fps: float) -> float:
    fps = float(fps)
    if not math.isfinite(fps) or fps <= 0.0:
        raise ValueError(f"fps must be a positive finite number, got {fps}")
    return fps


# --------------------------------------------------------------------------------------------------------
# Online tracker (ultralytics BoT-SORT)
# --------------------------------------------------------------------------------------------------------


@functools.cache
def _botsort_class() -> type:
    """ultralytics' BOTSORT with two changes (imported on first use: pulls in torch and cv2).

    * New tracks are confirmed at once. Upstream only confirms (and reports) a new track once it is matched
      again in the next sample, except in the very first sample; we keep every observation, also a track's
      first, so clean detections give the same boxes as before. Short spurious tracks are dropped offline by
      :func:`finalize` (``min_seconds``).
    * A lost track is gone as soon as it exceeds ``track_buffer``. Upstream leaves it in the lost pool for
      one more sample, where it can still be matched, which made the window one sample longer.
    """
    from stages.detect import configure_ultralytics

    configure_ultralytics()  # before the first ultralytics import: offline, quiet, no pip installs
    from ultralytics.trackers.basetrack import TrackState
    from ultralytics.trackers.bot_sort import BOTSORT

    class ExactBOTSORT(BOTSORT):
        def _init_new_tracks(
            self, u_detection: list[int], detections: list, activated: list, refind: list | None = None
        ) -> None:
            super()._init_new_tracks(u_detection, detections, activated, refind)
            for track in activated:  # the new ones; matched tracks in the list are activated already
                track.is_activated = True

        def _remove_stale_lost(self, removed: list) -> None:
            super()._remove_stale_lost(removed)
            self.lost_stracks = [t for t in self.lost_stracks if t.state != TrackState.Removed]

    return ExactBOTSORT


class OnlineTracker:
    """ultralytics' BoT-SORT (no ReID), fed one sample (frame) at a time at the stream's real rate.

    Per sample: the Kalman filter (state ``[cx, cy, w, h]`` + velocities) predicts every track; if a frame is
    given and ``gmc_method != "none"``, predictions are warped by the estimated camera motion; (1) all live
    tracks (tracked and lost) are matched to high-score detections (score >= ``high_thresh``) by linear
    assignment on 1 - IoU (1 - IoU * score if ``fuse_score``), accepting IoU >= ``match_iou``; (2) the still
    unmatched *tracked* tracks are matched to low-score detections (``low_thresh < score < high_thresh``)
    with IoU >= 0.5; (3) unmatched high detections with score >= ``new_track_thresh`` start new tracks. A
    track unmatched for more than ``round(lost_seconds * fps)`` samples is removed (ultralytics'
    ``track_buffer``, which in 8.4 counts samples and is not rescaled by a frame rate; a window that rounds
    to 0 still bridges one missing sample, as removal starts with the second).

    Our ids are 0, 1, 2, ... in order of creation (detection order within a sample), whatever ultralytics
    numbers them. Boxes with zero width or height are ignored by ultralytics (id -1).
    """

    def __init__(self, settings: TrackerSettings, fps: float):
        self.settings = settings
        self.fps = _check_fps(fps)
        self.lost_frames = _seconds_to_samples(settings.lost_seconds, self.fps)
        args = SimpleNamespace(
            track_high_thresh=settings.high_thresh,
            track_low_thresh=settings.low_thresh,
            new_track_thresh=settings.new_track_thresh,
            track_buffer=self.lost_frames,
            match_thresh=1.0 - settings.match_iou,  # a cost limit on 1 - IoU
            fuse_score=settings.fuse_score,
            gmc_method=settings.gmc_method,
            # ReID off: its thresholds are read but unused.
            proximity_thresh=0.5,
            appearance_thresh=0.8,
            with_reid=False,
            model="auto",
        )
        self._tracker = _botsort_class()(args)
        if self._tracker.max_frames_lost != self.lost_frames:  # an ultralytics that rescales by fps/30
            got = self._tracker.max_frames_lost
            raise RuntimeError(f"ultralytics keeps lost tracks {got} samples, expected {self.lost_frames}")
        self._ids: dict[int, int] = {}  # ultralytics track id -> ours

    def update(self, xyxy: np.ndarray, scores: np.ndarray, frame: np.ndarray | None = None) -> np.ndarray:
        """Advance one sample.

        Args:
            xyxy: (N, 4) detection boxes in pixels (N may be 0).
            scores: (N,) detection confidences in [0, 1].
            frame: (H, W, 3) uint8 image of this sample (pixels matching the boxes) for camera-motion
                compensation; None = none.
        Returns:
            (N,) int64 track id per detection, -1 where the detection was not assigned to a track.
        """
        from ultralytics.engine.results import Boxes

        boxes = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
        conf = np.asarray(scores, dtype=np.float64).reshape(-1)
        if len(boxes) != len(conf):
            raise ValueError(f"{len(boxes)} boxes but {len(conf)} scores")
        data = np.concatenate([boxes, conf[:, None], np.zeros((len(conf), 1))], axis=1)  # class 0 = person
        orig_hw = frame.shape[:2] if frame is not None else (0, 0)  # only used for normalised boxes
        # Rows: [x1, y1, x2, y2, track_id, score, cls, detection index] of tracks matched in this sample.
        out = self._tracker.update(Boxes(data, orig_hw), frame).reshape(-1, 8)
        ids = np.full(len(conf), -1, dtype=np.int64)
        det = out[:, 7].astype(np.int64)
        order = np.argsort(det, kind="stable")  # new tracks get our ids in detection order
        for d, uid in zip(det[order].tolist(), out[order, 4].astype(np.int64).tolist(), strict=True):
            ids[d] = self._ids.setdefault(uid, len(self._ids))
        return ids


# --------------------------------------------------------------------------------------------------------
# Raw tracks
# --------------------------------------------------------------------------------------------------------


@dataclass
class RawTrack:
    """Observations of one track id, before post-processing.

    Attributes:
        track_id: id from the tracker or the user.
        sample_index: (K,) int64 strictly increasing sample indices where the track has a detection.
        xyxy: (K, 4) float32 detection boxes in pixels.
        score: (K,) float32 detection scores.
    """

    track_id: int
    sample_index: np.ndarray
    xyxy: np.ndarray
    score: np.ndarray


def _raw_from_lists(groups: dict[int, list[tuple[int, np.ndarray, float]]]) -> list[RawTrack]:
    out = []
    for tid in sorted(groups):
        obs = sorted(groups[tid], key=lambda o: o[0])
        out.append(
            RawTrack(
                track_id=int(tid),
                sample_index=np.array([o[0] for o in obs], dtype=np.int64),
                xyxy=np.array([o[1] for o in obs], dtype=np.float32).reshape(-1, 4),
                score=np.array([o[2] for o in obs], dtype=np.float32),
            )
        )
    return out


def track_detections(
    dets: Sequence[tuple[np.ndarray, np.ndarray]],
    fps: float,
    settings: TrackerSettings,
    frames: Iterable[np.ndarray] | None = None,
) -> list[RawTrack]:
    """Track a whole clip.

    Args:
        dets: per sample i (the i-th frame at ``fps``), ``(xyxy (N_i, 4), scores (N_i,))``.
        fps: the stream's real frame rate (sets the lost window).
        frames: optional (H, W, 3) uint8 images, one per sample in the same order (consumed lazily, so a
            generator does not hold the clip in memory); they enable BoT-SORT's camera-motion compensation
            (``settings.gmc_method``). None = no compensation.
    Returns:
        One :class:`RawTrack` per tracker id, sorted by id, holding the raw detection boxes it was given
        (never the tracker's filtered boxes).
    """
    tracker = OnlineTracker(settings, fps)
    images = iter(frames) if frames is not None else None
    groups: dict[int, list[tuple[int, np.ndarray, float]]] = {}
    for i, (xyxy, scores) in enumerate(dets):
        boxes = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
        conf = np.asarray(scores, dtype=np.float64).reshape(-1)
        ids = tracker.update(boxes, conf, next(images) if images is not None else None)
        for d in np.flatnonzero(ids >= 0):
            groups.setdefault(int(ids[d]), []).append((i, boxes[d], float(conf[d])))
    return _raw_from_lists(groups)


def tracks_from_ids(dets: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> list[RawTrack]:
    """Group detections that already carry track ids (no filtering, no Kalman).

    Args:
        dets: per sample i, ``(xyxy (N_i, 4), scores (N_i,), ids (N_i,) int)``. Negative ids mean
            "unassigned" and are ignored. If one id has several boxes in a sample, the highest score wins.
    Returns:
        One :class:`RawTrack` per id, sorted by id.
    """
    best: dict[int, dict[int, tuple[np.ndarray, float]]] = {}
    for i, (xyxy, scores, ids) in enumerate(dets):
        boxes = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
        conf = np.asarray(scores, dtype=np.float64).reshape(-1)
        tid = np.asarray(ids).reshape(-1).astype(np.int64)
        if not len(boxes) == len(conf) == len(tid):
            raise ValueError(f"sample {i}: {len(boxes)} boxes, {len(conf)} scores, {len(tid)} ids")
        for d in range(len(tid)):
            if tid[d] < 0:
                continue
            per_sample = best.setdefault(int(tid[d]), {})
            if i not in per_sample or conf[d] > per_sample[i][1]:
                per_sample[i] = (boxes[d], float(conf[d]))
    groups = {k: [(i, b, c) for i, (b, c) in v.items()] for k, v in best.items()}
    return _raw_from_lists(groups)


# --------------------------------------------------------------------------------------------------------
# Offline post-processing
# --------------------------------------------------------------------------------------------------------


@dataclass
class Track:
    """A finished person track.

    Attributes:
        person_id: rank after ordering, 0 = greatest summed box area over observed samples.
        track_id: tracker/user id; after re-linking the id of the earliest piece.
        sample_index: (T,) int64 strictly increasing sample indices; samples in gaps longer than
            ``max_gap_seconds`` are not listed.
        xyxy: (T, 4) float32 boxes in pixels, clamped to the image, smoothed.
        bbx_xys: (T, 3) float32 (cx, cy, s) GEM square boxes from the clamped unsmoothed xyxy, then smoothed.
        score: (T,) float32 detection score, 0 for interpolated samples.
        observed: (T,) bool, True where a real detection exists.
    """

    person_id: int
    track_id: int
    sample_index: np.ndarray
    xyxy: np.ndarray
    bbx_xys: np.ndarray
    score: np.ndarray
    observed: np.ndarray


# Re-link compatibility: a re-entering person has about the same height and appears near where they left.
_RELINK_HEIGHT_RATIO = (0.67, 1.5)
_RELINK_DIST_HEIGHTS = 1.5
# Extra centre distance allowed per second of absence, in box heights: people keep walking while unseen,
# ~0.5 heights/s is a slow walk across the image plane and keeps far-apart re-entries separate.
_RELINK_DIST_HEIGHTS_PER_SECOND = 0.5


def _centre_height(xyxy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 4) boxes -> centres (N, 2) and heights (N,) (at least ``_MIN_SIZE``), float64."""
    b = np.asarray(xyxy, dtype=np.float64)
    return 0.5 * (b[:, :2] + b[:, 2:]), np.maximum(b[:, 3] - b[:, 1], _MIN_SIZE)


def _relink(raw: list[RawTrack], fps: float, max_gap: int) -> list[RawTrack]:
    """Greedily merge track pieces that belong to the same person.

    Piece B may continue piece A when B starts after A ends, ``start_B - end_A <= max_gap`` samples, the
    height ratio of B's first box to A's last box is within [0.67, 1.5], and their centre distance is at most
    ``(1.5 + 0.5 * gap_seconds) * max(h_A, h_B)``. Candidate pairs are taken in order of normalised distance
    (centre distance / max height; ties: smaller gap, then lower ids); each piece is linked at most once at
    its end and once at its start, which forms time-ordered chains. A chain keeps the id of its first piece.
    """
    pieces = sorted(
        (r for r in raw if len(r.sample_index) > 0), key=lambda r: (r.sample_index[0], r.track_id)
    )
    n = len(pieces)
    if n < 2 or max_gap <= 0:
        return pieces
    # All (A = row, B = column) pairs at once.
    ends = np.array([p.sample_index[-1] for p in pieces], dtype=np.int64)
    starts = np.array([p.sample_index[0] for p in pieces], dtype=np.int64)
    ids = np.array([p.track_id for p in pieces], dtype=np.int64)
    c_end, h_end = _centre_height(np.stack([p.xyxy[-1] for p in pieces]))
    c_start, h_start = _centre_height(np.stack([p.xyxy[0] for p in pieces]))
    gap = starts[None, :] - ends[:, None]
    ratio = h_start[None, :] / h_end[:, None]
    dist = np.linalg.norm(c_start[None, :, :] - c_end[:, None, :], axis=-1) / np.maximum(
        h_end[:, None], h_start[None, :]
    )
    ok = (
        (gap > 0)
        & (gap <= max_gap)
        & (ratio >= _RELINK_HEIGHT_RATIO[0])
        & (ratio <= _RELINK_HEIGHT_RATIO[1])
        & (dist <= _RELINK_DIST_HEIGHTS + _RELINK_DIST_HEIGHTS_PER_SECOND * gap / fps)
    )
    a_idx, b_idx = np.nonzero(ok)
    order = np.lexsort((ids[b_idx], ids[a_idx], gap[a_idx, b_idx], dist[a_idx, b_idx]))  # last key first
    nxt: dict[int, int] = {}
    prev: dict[int, int] = {}
    for a, b in zip(a_idx[order].tolist(), b_idx[order].tolist(), strict=True):
        if a in nxt or b in prev:
            continue
        nxt[a] = b
        prev[b] = a
    out = []
    for head in range(n):
        if head in prev:
            continue
        chain = [head]
        while chain[-1] in nxt:
            chain.append(nxt[chain[-1]])
        out.append(
            RawTrack(
                track_id=pieces[head].track_id,
                sample_index=np.concatenate([pieces[k].sample_index for k in chain]),
                xyxy=np.concatenate([pieces[k].xyxy for k in chain]),
                score=np.concatenate([pieces[k].score for k in chain]),
            )
        )
    return out


def _clamp(raw: RawTrack, image_wh: tuple[int, int]) -> RawTrack:
    """Clamp boxes to the pixel grid [0, W-1] x [0, H-1]."""
    w, h = image_wh
    lo = np.zeros(4, dtype=np.float32)
    hi = np.array([w - 1, h - 1, w - 1, h - 1], dtype=np.float32)
    return RawTrack(raw.track_id, raw.sample_index, np.clip(raw.xyxy, lo, hi), raw.score)


def _min_observations(fps: float, n_samples: int, min_seconds: float) -> int:
    """Observations a track needs to survive: ``min_seconds`` of samples, but at most half the clip (so
    short clips are not emptied), and never fewer than 2."""
    return max(2, min(_seconds_to_samples(min_seconds, fps), math.ceil(0.5 * n_samples)))


def _fill_gaps(raw: RawTrack, max_gap: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Linearly interpolate interior gaps of at most ``max_gap`` missing samples.

    Returns:
        sample_index (T,) int64, xyxy (T, 4) float32, score (T,) float32 (0 where interpolated),
        observed (T,) bool. Samples inside longer gaps are not included.
    """
    from scipy.ndimage import label

    idx = raw.sample_index.astype(np.int64)
    span = np.arange(idx[0], idx[-1] + 1, dtype=np.int64)
    seen = np.zeros(len(span), dtype=bool)
    seen[idx - idx[0]] = True
    holes, _ = label(~seen)  # each run of missing samples gets its own label; 0 = observed
    hole_len = np.bincount(holes)
    keep = seen | (hole_len[holes] <= max_gap)
    full, observed = span[keep], seen[keep]
    # Interpolation only ever evaluates inside short gaps, so np.interp never bridges a long one.
    xyxy = np.stack([np.interp(full, idx, raw.xyxy[:, c]) for c in range(4)], axis=1).astype(np.float32)
    score = np.zeros(len(full), dtype=np.float32)
    score[observed] = raw.score
    return full, xyxy, score, observed


def _smooth_runs(sample_index: np.ndarray, x: np.ndarray, window: int) -> np.ndarray:
    """Moving average applied separately to each run of consecutive samples (never across a gap)."""
    if window <= 1 or len(x) == 0:
        return x.copy()
    breaks = np.flatnonzero(np.diff(sample_index) > 1) + 1
    return np.concatenate([moving_average(run, window) for run in np.split(x, breaks)], axis=0)


def finalize(
    raw: list[RawTrack], fps: float, image_wh: tuple[int, int], n_samples: int, settings: TrackerSettings
) -> list[Track]:
    """Post-process raw tracks into person tracks.

    Steps: re-link broken pieces (:func:`_relink`, if ``relink_seconds > 0``); clamp boxes to the image;
    drop tracks with fewer observations than ``min(round(min_seconds*fps), ceil(n_samples/2))`` (at least 2);
    interpolate interior gaps up to ``round(max_gap_seconds*fps)`` samples; compute ``bbx_xys`` from the
    clamped boxes; smooth ``bbx_xys`` and ``xyxy`` per contiguous run; order by summed observed box area
    (descending, ties by lower track_id) and apply ``select`` / ``max_people``.

    Args:
        raw: tracks from :func:`track_detections` or :func:`tracks_from_ids`.
        fps: the stream's real frame rate.
        image_wh: (W, H) image size in pixels.
        n_samples: number of samples in the clip.
    Returns:
        Tracks sorted by ``person_id`` (0, 1, ...).
    """
    fps = _check_fps(fps)
    if settings.relink_seconds > 0:
        raw = _relink(raw, fps, _seconds_to_samples(settings.relink_seconds, fps))
    raw = [_clamp(r, image_wh) for r in raw]
    need = _min_observations(fps, n_samples, settings.min_seconds)
    raw = [r for r in raw if len(r.sample_index) >= need]

    max_gap = _seconds_to_samples(settings.max_gap_seconds, fps)
    built: list[tuple[float, Track]] = []
    for r in raw:
        sample_index, xyxy, score, observed = _fill_gaps(r, max_gap)
        bbx_xys = bbx_xys_from_xyxy(xyxy, enlarge=settings.enlarge)
        obs_box = r.xyxy.astype(np.float64)
        area = float(np.sum((obs_box[:, 2] - obs_box[:, 0]) * (obs_box[:, 3] - obs_box[:, 1])))
        track = Track(
            person_id=-1,
            track_id=r.track_id,
            sample_index=sample_index,
            xyxy=_smooth_runs(sample_index, xyxy, settings.smooth_window),
            bbx_xys=_smooth_runs(sample_index, bbx_xys, settings.smooth_window),
            score=score,
            observed=observed,
        )
        built.append((area, track))

    built.sort(key=lambda at: (-at[0], at[1].track_id))
    keep = 1 if settings.select == "largest" else len(built)
    if settings.max_people is not None:
        keep = min(keep, settings.max_people)
    out = []
    for rank, (_, track) in enumerate(built[:keep]):
        track.person_id = rank
        out.append(track)
    return out
