"""Multi-person tracking and track post-processing (pure numpy/scipy).

Two halves:

* Online: :class:`ByteTracker`, a ByteTrack-style tracker (constant-velocity Kalman filter per track,
  two-stage Hungarian association on IoU). :func:`track_detections` runs it over a whole clip and returns
  per-id observations (:class:`RawTrack`); :func:`tracks_from_ids` does the same grouping for detections
  that already carry ids.
* Offline: :func:`finalize` turns raw tracks into the :class:`Track` objects later stages consume:
  re-linking of broken tracks, clamping, dropping short tracks, interpolating short gaps, GEM's square
  ``bbx_xys`` boxes, smoothing, ordering by size.

Conventions: boxes are ``xyxy`` = (x1, y1, x2, y2) in pixels of the original image; a "sample" is one frame
of the stream, indexed 0..n_samples-1 at the stream's real ``fps``. All durations in the settings are in
seconds and are converted to samples with that fps, so 30 and 60 fps clips behave the same in time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from scipy.optimize import linear_sum_assignment

from models.crops import square_boxes

__all__ = [
    "ByteTracker",
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
        0.1, ge=0.0, le=1.0, description="detections in [low_thresh, high_thresh) only in the second one"
    )
    new_track_thresh: float = Field(
        0.6, ge=0.0, le=1.0, description="an unmatched high detection starts a track only if score >= this"
    )
    match_iou: float = Field(0.2, ge=0.0, le=1.0, description="minimum IoU in the first association")
    low_match_iou: float = Field(0.5, ge=0.0, le=1.0, description="minimum IoU in the second association")
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
# Box helpers
# --------------------------------------------------------------------------------------------------------


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
    b = torch.from_numpy(np.asarray(xyxy, dtype=np.float32).reshape(-1, 4))
    return square_boxes(b, enlarge, aspect).numpy()


def moving_average(x: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average along axis 0 with replicate padding.

    Args:
        x: (T, D) (or (T,)) samples.
        window: odd window length; 1 returns a copy.
    Returns:
        Same shape as ``x``; floating inputs keep their dtype, others become float64. Each end is padded
        with ``window // 2`` copies of the first/last sample, so a constant signal stays constant and a
        ramp is unchanged except within ``window // 2`` of the ends.
    """
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be odd and >= 1, got {window}")
    x = np.asarray(x)
    out_dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64
    if window == 1 or x.shape[0] <= 1:
        return x.astype(out_dtype, copy=True)
    half = window // 2
    xd = x.astype(np.float64)
    padded = np.concatenate([np.repeat(xd[:1], half, axis=0), xd, np.repeat(xd[-1:], half, axis=0)], axis=0)
    # Window sums from a cumulative sum (with a leading zero row), accumulated in float64.
    c = np.cumsum(padded, axis=0)
    c = np.concatenate([np.zeros_like(c[:1]), c], axis=0)
    return ((c[window:] - c[:-window]) / window).astype(out_dtype)


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (N, 4) and (M, 4) xyxy boxes -> (N, M); degenerate boxes give 0."""
    ix1 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy1 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix2 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix2 - ix1, 0.0, None) * np.clip(iy2 - iy1, 0.0, None)
    area_a = np.clip(a[:, 2] - a[:, 0], 0.0, None) * np.clip(a[:, 3] - a[:, 1], 0.0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0.0, None) * np.clip(b[:, 3] - b[:, 1], 0.0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0.0, inter / np.where(union > 0.0, union, 1.0), 0.0)


def _seconds_to_samples(seconds: float, fps: float) -> int:
    return int(round(seconds * fps))


def _check_fps(fps: float) -> float:
    fps = float(fps)
    if not math.isfinite(fps) or fps <= 0.0:
        raise ValueError(f"fps must be a positive finite number, got {fps}")
    return fps


# --------------------------------------------------------------------------------------------------------
# Online tracker
# --------------------------------------------------------------------------------------------------------

# Kalman noise as fractions of the box size (ByteTrack/DeepSORT-style weighting): uncertainty scales with
# how large the person appears, so one set of numbers works for near and far people.
_STD_POS = 1.0 / 20.0
_STD_VEL = 1.0 / 160.0
_MIN_SIZE = 1.0  # pixels; keeps noise and predicted boxes positive for degenerate detections


class _BoxKalman:
    """Constant-velocity Kalman filter of one box, time step = one sample.

    State (8,): ``[cx, cy, w, h, vcx, vcy, vw, vh]`` in pixels and pixels/sample; measurement (4,):
    ``[cx, cy, w, h]``. Width and height are filtered independently (rather than an aspect ratio) so that
    both noise terms are plain pixel scales: the cx/w entries scale with the box width, cy/h with its height.
    """

    _F = np.block([[np.eye(4), np.eye(4)], [np.zeros((4, 4)), np.eye(4)]])  # x += v per sample
    _H = np.eye(4, 8)  # observe the box, not its velocity

    def __init__(self, z: np.ndarray):
        self.mean = np.concatenate([z, np.zeros(4)])
        scale = self._scale(z)
        std = np.concatenate([2.0 * _STD_POS * scale, 10.0 * _STD_VEL * scale])
        self.cov = np.diag(std**2)

    @staticmethod
    def _scale(z: np.ndarray) -> np.ndarray:
        w = max(float(z[2]), _MIN_SIZE)
        h = max(float(z[3]), _MIN_SIZE)
        return np.array([w, h, w, h])

    def predict(self) -> None:
        scale = self._scale(self.mean[:4])
        q = np.diag(np.concatenate([_STD_POS * scale, _STD_VEL * scale]) ** 2)
        self.mean = self._F @ self.mean
        self.cov = self._F @ self.cov @ self._F.T + q

    def update(self, z: np.ndarray) -> None:
        r = np.diag((_STD_POS * self._scale(self.mean[:4])) ** 2)
        s = self._H @ self.cov @ self._H.T + r
        pht = self.cov @ self._H.T
        gain = np.linalg.solve(s, pht.T).T  # K = P H^T S^-1, S symmetric
        self.mean = self.mean + gain @ (z - self._H @ self.mean)
        self.cov = self.cov - gain @ s @ gain.T

    def freeze_size(self) -> None:
        """Stop the size from drifting while the track coasts without measurements."""
        self.mean[6:] = 0.0

    def xyxy(self) -> np.ndarray:
        cx, cy = self.mean[0], self.mean[1]
        w = max(self.mean[2], _MIN_SIZE)
        h = max(self.mean[3], _MIN_SIZE)
        return np.array([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h])


def _xyxy_to_cxcywh(b: np.ndarray) -> np.ndarray:
    return np.array([0.5 * (b[0] + b[2]), 0.5 * (b[1] + b[3]), b[2] - b[0], b[3] - b[1]])


class _OnlineTrack:
    """One live track: its filter, id and the number of consecutive samples without a match."""

    def __init__(self, track_id: int, xyxy: np.ndarray):
        self.track_id = track_id
        self.kf = _BoxKalman(_xyxy_to_cxcywh(xyxy))
        self.missed = 0  # 0 = matched in the latest sample ("tracked"); > 0 = lost for that many samples

    def mark_missed(self) -> None:
        if self.missed == 0:
            self.kf.freeze_size()
        self.missed += 1

    def mark_matched(self, xyxy: np.ndarray) -> None:
        self.kf.update(_xyxy_to_cxcywh(xyxy))
        self.missed = 0


def _associate(
    track_boxes: np.ndarray, det_boxes: np.ndarray, min_iou: float
) -> tuple[list[tuple[int, int]], np.ndarray, np.ndarray]:
    """Hungarian matching on 1 - IoU, accepting pairs with IoU >= min_iou.

    Leaving a track and a detection unmatched costs ``1 - min_iou`` in total (half each, via dummy rows and
    columns), i.e. exactly the cost of the weakest acceptable match. So a strong match is never broken up to
    make two weak ones, and a pair below the threshold can never displace an acceptable one.

    Args:
        track_boxes: (N, 4) predicted track boxes; det_boxes: (M, 4) detections.
    Returns:
        (pairs of (track row, det row), unmatched track rows, unmatched det rows).
    """
    n, m = len(track_boxes), len(det_boxes)
    if n == 0 or m == 0:
        return [], np.arange(n), np.arange(m)
    iou = _iou_matrix(track_boxes, det_boxes)
    valid = iou >= min_iou
    forbidden = 1e6
    half_limit = 0.5 * (1.0 - min_iou)
    # (N+M, M+N): [[pairs, track->dummy], [dummy->det, dummy->dummy (free)]].
    cost = np.full((n + m, m + n), forbidden)
    cost[:n, :m] = np.where(valid, 1.0 - iou, forbidden)
    cost[np.arange(n), m + np.arange(n)] = half_limit
    cost[n + np.arange(m), np.arange(m)] = half_limit
    cost[n:, m:] = 0.0
    rows, cols = linear_sum_assignment(cost)
    keep = (rows < n) & (cols < m)
    rows, cols = rows[keep], cols[keep]
    pairs = [(int(r), int(c)) for r, c in zip(rows, cols, strict=True) if valid[r, c]]
    used_t = {p[0] for p in pairs}
    used_d = {p[1] for p in pairs}
    return (
        pairs,
        np.array([i for i in range(n) if i not in used_t], dtype=np.int64),
        np.array([j for j in range(m) if j not in used_d], dtype=np.int64),
    )


class ByteTracker:
    """ByteTrack-style online multi-person tracker, fed one sample (frame) at a time.

    Per sample: every track is predicted with its constant-velocity Kalman filter; (1) all live tracks
    (tracked and recently lost) are matched to high-score detections (score >= ``high_thresh``) by the
    Hungarian algorithm on 1 - IoU, accepting IoU >= ``match_iou``; (2) the still unmatched *tracked* tracks
    (matched in the previous sample) are matched to low-score detections (``low_thresh <= score <
    high_thresh``) with IoU >= ``low_match_iou``; (3) unmatched high detections with score >=
    ``new_track_thresh`` start new tracks, ids 0, 1, 2, ... in order of creation (detection order within a
    sample). A track unmatched for more than ``round(lost_seconds * fps)`` consecutive samples is removed.

    New tracks are confirmed immediately (no probation sample); short spurious tracks are removed offline by
    :func:`finalize` instead.
    """

    def __init__(self, settings: TrackerSettings, fps: float):
        self.settings = settings
        self.fps = _check_fps(fps)
        self.lost_frames = _seconds_to_samples(settings.lost_seconds, self.fps)
        self._tracks: list[_OnlineTrack] = []
        self._next_id = 0

    def update(self, xyxy: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """Advance one sample.

        Args:
            xyxy: (N, 4) detection boxes in pixels (N may be 0).
            scores: (N,) detection confidences in [0, 1].
        Returns:
            (N,) int64 track id per detection, -1 where the detection was not assigned to a track.
        """
        boxes = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
        conf = np.asarray(scores, dtype=np.float64).reshape(-1)
        if len(boxes) != len(conf):
            raise ValueError(f"{len(boxes)} boxes but {len(conf)} scores")
        s = self.settings
        ids = np.full(len(conf), -1, dtype=np.int64)

        for t in self._tracks:
            t.kf.predict()
        pred = np.array([t.kf.xyxy() for t in self._tracks]).reshape(-1, 4)

        high = np.flatnonzero(conf >= s.high_thresh)
        low = np.flatnonzero((conf >= s.low_thresh) & (conf < s.high_thresh))

        # 1st association: every live track vs high-score detections.
        pairs, free_t, free_h = _associate(pred, boxes[high], s.match_iou)
        matched: set[int] = set()
        for ti, dj in pairs:
            self._tracks[ti].mark_matched(boxes[high[dj]])
            ids[high[dj]] = self._tracks[ti].track_id
            matched.add(ti)

        # 2nd association: only tracks seen in the previous sample may take low-score detections; a lost
        # track's prediction is too uncertain to trust a weak box.
        tracked = np.array([ti for ti in free_t if self._tracks[ti].missed == 0], dtype=np.int64)
        pairs2, _, _ = _associate(pred[tracked], boxes[low], s.low_match_iou)
        for ti, dj in pairs2:
            track = self._tracks[tracked[ti]]
            track.mark_matched(boxes[low[dj]])
            ids[low[dj]] = track.track_id
            matched.add(int(tracked[ti]))

        for ti, t in enumerate(self._tracks):
            if ti not in matched:
                t.mark_missed()
        self._tracks = [t for t in self._tracks if t.missed <= self.lost_frames]

        for dj in free_h:
            d = high[dj]
            if conf[d] >= s.new_track_thresh:
                self._tracks.append(_OnlineTrack(self._next_id, boxes[d]))
                ids[d] = self._next_id
                self._next_id += 1
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
    dets: Sequence[tuple[np.ndarray, np.ndarray]], fps: float, settings: TrackerSettings
) -> list[RawTrack]:
    """Track a whole clip.

    Args:
        dets: per sample i (the i-th frame at ``fps``), ``(xyxy (N_i, 4), scores (N_i,))``.
        fps: the stream's real frame rate (sets the lost window).
    Returns:
        One :class:`RawTrack` per tracker id, sorted by id, holding the raw detection boxes it was given.
    """
    tracker = ByteTracker(settings, fps)
    groups: dict[int, list[tuple[int, np.ndarray, float]]] = {}
    for i, (xyxy, scores) in enumerate(dets):
        boxes = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
        conf = np.asarray(scores, dtype=np.float64).reshape(-1)
        ids = tracker.update(boxes, conf)
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
    cands: list[tuple[float, int, int, int, int, int]] = []
    for a in range(n):
        ra = pieces[a]
        end_a = int(ra.sample_index[-1])
        last = ra.xyxy[-1].astype(np.float64)
        h_a = max(float(last[3] - last[1]), _MIN_SIZE)
        c_a = 0.5 * (last[:2] + last[2:])
        for b in range(n):
            rb = pieces[b]
            gap = int(rb.sample_index[0]) - end_a
            if gap <= 0 or gap > max_gap:
                continue
            first = rb.xyxy[0].astype(np.float64)
            h_b = max(float(first[3] - first[1]), _MIN_SIZE)
            ratio = h_b / h_a
            if not _RELINK_HEIGHT_RATIO[0] <= ratio <= _RELINK_HEIGHT_RATIO[1]:
                continue
            dist = float(np.linalg.norm(0.5 * (first[:2] + first[2:]) - c_a)) / max(h_a, h_b)
            if dist > _RELINK_DIST_HEIGHTS + _RELINK_DIST_HEIGHTS_PER_SECOND * gap / fps:
                continue
            cands.append((dist, gap, ra.track_id, rb.track_id, a, b))
    cands.sort()
    nxt: dict[int, int] = {}
    prev: dict[int, int] = {}
    for *_, a, b in cands:
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
    idx = raw.sample_index.astype(np.int64)
    parts = [idx[:1]]
    for k in range(1, len(idx)):
        missing = int(idx[k] - idx[k - 1] - 1)
        if 0 < missing <= max_gap:
            parts.append(np.arange(idx[k - 1] + 1, idx[k], dtype=np.int64))
        parts.append(idx[k : k + 1])
    full = np.concatenate(parts)
    # Interpolation only ever evaluates inside short gaps, so np.interp never bridges a long one.
    xyxy = np.stack([np.interp(full, idx, raw.xyxy[:, c]) for c in range(4)], axis=1).astype(np.float32)
    observed = np.isin(full, idx)
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
