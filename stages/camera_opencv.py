"""Backend ``opencv`` of the camera stage: the camera's rotation from image motion on the CPU.

Per sample (frames at the model rate, streamed one at a time, so memory does not grow with the clip):

1. Grey image, downscaled so its long side is at most ``max_side`` (the "working image"; every pixel
   threshold below is in working pixels). Geometry is done in full-image pixels with the clip's K.
2. Exclusion mask: every person box grown by ``box_margin`` on each side, and a border band.
3. Shi-Tomasi corners outside the mask (bucketed over a grid), tracked with pyramidal Lucas-Kanade to the
   next sample with a forward-backward check; tracks that enter a person box are dropped. New corners are
   only added on keyframes.
4. Rotation-only fit of each pair of consecutive samples (the infinite homography, 3 degrees of freedom):
   RANSAC with a 2-point minimal solver (Wahba/Kabsch on unit bearings), then Huber-weighted refinement.
5. Keyframes every ``keyframe_every`` samples (earlier when tracks thin out). The tracks are re-tracked from
   the keyframe image straight to the current one (LK seeded with the chained positions, so tracking error
   does not accumulate), and the keyframe-to-current rotation is fitted again. When the residual of the
   rotation-only model (the parallax) exceeds ``parallax_px`` the camera translated in front of near
   scenery: the rotation then comes from the essential matrix (RANSAC), taking the decomposition closest to
   the rotation-only estimate (never ``recoverPose``'s cheirality vote, which flips on short baselines).
   The difference between the chained per-sample rotations and the keyframe rotation is spread evenly over
   the segment as a geodesic correction.
6. In the tangent space (per-sample rotation vectors): unmeasured samples are interpolated, a Hampel filter
   removes spikes, a zero-phase Gaussian smooths (this keeps the integral, so it adds no drift); then the
   rotations are chained from ``R_w2c[0] = I`` and projected onto SO(3).

Samples that repeat the previous source frame (resampling a slower source up to the model rate) get exactly
the identity relative rotation: the picture did not change.

Rotations follow ``stages.camera``: ``R_w2c`` maps world (= camera of sample 0) to camera coordinates, OpenCV
axes (x right, y down, z forward); ``rel[t] = R_w2c[t+1] R_w2c[t]^T``.

OpenCV is imported where the solver uses it, so the settings can be imported (by ``stages.camera``, the
config) without it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy.ndimage import gaussian_filter1d

from models.geometry import project_so3, rotation_angle_deg, so3_exp, so3_log

__all__ = [
    "OpenCVSettings",
    "RotationSolver",
    "SolveResult",
    "fit_rotation",
    "kabsch",
]


class OpenCVSettings(BaseModel):
    """Options of the ``opencv`` backend. Pixel thresholds are in pixels of the working image (long side at
    most ``max_side``), so they mean the same at any source resolution."""

    model_config = ConfigDict(extra="forbid")

    max_side: int = Field(640, ge=160, le=4096, description="long side of the working image (pixels)")
    max_corners: int = Field(300, ge=20, le=5000, description="corners tracked at once")
    min_distance: int = Field(8, ge=1, description="minimum distance between corners (pixels)")
    quality_level: float = Field(0.005, gt=0, lt=1, description="Shi-Tomasi quality, relative to the best")
    lk_window: int = Field(11, ge=5, le=61, description="Lucas-Kanade window (pixels, odd)")
    lk_levels: int = Field(3, ge=0, le=6, description="Lucas-Kanade pyramid levels above the base")
    fb_threshold_px: float = Field(0.5, gt=0, description="forward-backward tracking check (pixels)")
    box_margin: float = Field(0.15, ge=0, le=1, description="person boxes grow by this fraction per side")
    border: float = Field(0.03, ge=0, lt=0.4, description="band along the image edges kept free of corners")
    ransac_threshold_px: float = Field(1.0, gt=0, description="rotation-fit inlier threshold (pixels)")
    ransac_iters: int = Field(200, ge=10, le=10000, description="RANSAC hypotheses per fit")
    keyframe_every: int = Field(
        5, ge=2, le=60, description="samples between keyframes (parallax check and drift correction)"
    )
    parallax_px: float = Field(
        1.0, gt=0, description="keyframe residual above which the essential matrix gives the rotation"
    )
    min_inliers: int = Field(30, ge=5, description="fewer inliers: the sample's motion is not measured")
    min_inlier_ratio: float = Field(0.3, ge=0, le=1, description="lower inlier ratio: not measured")
    max_residual_px: float = Field(1.5, gt=0, description="higher median inlier residual: not measured")
    hampel_window: int = Field(4, ge=0, description="Hampel filter half-window (samples); 0 turns it off")
    hampel_sigmas: float = Field(3.0, gt=0, description="Hampel threshold in robust standard deviations")
    smooth_sigma: float = Field(
        0.0,
        ge=0,
        description="Gaussian smoothing of the per-sample rotation (samples); 0: off (the fast "
        "components of hand-held motion are real)",
    )
    seed: int = Field(0, description="RANSAC random seed (results are deterministic)")


# --------------------------------------------------------------------------------------------------------
# Rotation fits (numpy, float64; SO(3) maps in ``models.geometry``)


def kabsch(b1: np.ndarray, b2: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """The rotation R minimising sum w_i |b2_i - R b1_i|^2 (Wahba's problem, by SVD)."""
    if w is None:
        B = b2.T @ b1
    else:
        B = (b2 * w[:, None]).T @ b1
    return project_so3(B)


def fit_rotation(
    b1: np.ndarray,
    b2: np.ndarray,
    thr: float,
    iters: int,
    rng: np.random.Generator,
    *,
    guess: np.ndarray | None = None,
    confidence: float = 0.999,
    refine_iters: int = 4,
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Robust rotation with ``b2 ~ R b1`` from unit bearings (N, 3): 2-point RANSAC with an MSAC score and
    adaptive stopping (at most ``iters`` hypotheses; ``guess``, e.g. the previous sample's rotation, is
    scored first), then Huber-weighted refinement on the inliers.

    Args:
        thr: inlier threshold on the chord |b2 - R b1| (about the angle in radians).
    Returns:
        (R (3, 3), inlier mask (N,), residual chord (N,)), or None with fewer than 3 bearings.
    """
    n = len(b1)
    if n < 3:
        return None
    thr2 = thr * thr
    best_R, best_cost, best_in = np.eye(3), np.inf, 0

    def score(Rs: np.ndarray) -> None:
        nonlocal best_R, best_cost, best_in
        pred = np.matmul(b1[None], np.transpose(Rs, (0, 2, 1)))  # (k, n, 3)
        d = pred - b2[None]
        e2 = np.einsum("kni,kni->kn", d, d)
        cost = np.minimum(e2, thr2).sum(1)
        k = int(np.argmin(cost))
        if cost[k] < best_cost:
            best_R, best_cost, best_in = Rs[k], float(cost[k]), int((e2[k] < thr2).sum())

    if guess is not None:
        score(np.asarray(guess, dtype=np.float64)[None])
    done, need, batch = 0, iters, 16
    while done < min(need, iters):
        k = min(batch, iters - done)
        i = rng.integers(0, n, k)
        j = rng.integers(0, n - 1, k)
        j = j + (j >= i)
        # Near-parallel pairs do not fix the rotation about their common direction.
        ok = np.einsum("ki,ki->k", np.cross(b1[i], b1[j]), np.cross(b1[i], b1[j])) > 1e-6
        if ok.any():
            i, j = i[ok], j[ok]
            M = b2[i, :, None] * b1[i, None, :] + b2[j, :, None] * b1[j, None, :]
            score(project_so3(M))
        done += k
        w = best_in / n
        if w >= 1.0:
            break
        if w > 0:
            need = int(math.ceil(math.log(1 - confidence) / math.log(max(1e-12, 1 - w * w))))
    R = best_R
    for _ in range(refine_iters):
        r = np.sqrt(((b1 @ R.T - b2) ** 2).sum(-1))
        inl = r < thr
        if inl.sum() < 3:
            break
        c = 0.5 * thr  # Huber scale
        wts = np.where(r[inl] <= c, 1.0, c / np.maximum(r[inl], 1e-12))
        R = kabsch(b1[inl], b2[inl], wts)
    r = np.sqrt(((b1 @ R.T - b2) ** 2).sum(-1))
    return R, r < thr, r


# --------------------------------------------------------------------------------------------------------
# The solver


def _essential_method(cv2):
    return getattr(cv2, "USAC_MAGSAC", cv2.RANSAC)


@dataclass
class SolveResult:
    """What a backend's solve gives the stage (arrays over the T samples).

    ``R_w2c`` (T, 3, 3) float64, ``R_w2c[0] = I``; ``valid`` (T,) bool: the motion from sample t to t+1 was
    measured (the last sample copies the one before); ``quality``: per-sample arrays; ``stats``: scalars.
    """

    R_w2c: np.ndarray
    valid: np.ndarray
    quality: dict[str, np.ndarray] = field(default_factory=dict)
    stats: dict[str, float | int] = field(default_factory=dict)


@dataclass
class _KeyEdge:
    a: int  # keyframe sample
    b: int  # sample reached
    R: np.ndarray  # rel rotation camera a -> camera b
    kind: int  # 1 rotation-only, 2 essential
    parallax_px: float
    inliers: int


class RotationSolver:
    """Streaming rotation-only visual odometry with keyframe parallax correction (see the module doc).

    Feed every sample in order with ``push`` (frame + the person boxes of that sample), then ``finish``.
    """

    def __init__(self, K: np.ndarray, image_wh: tuple[int, int], settings: OpenCVSettings):
        import cv2

        self.K = np.asarray(K, dtype=np.float64)
        self.Kinv = np.linalg.inv(self.K)
        self.W, self.H = int(image_wh[0]), int(image_wh[1])
        self.s = min(1.0, settings.max_side / max(self.W, self.H))
        self.w = max(16, int(round(self.W * self.s)))
        self.h = max(16, int(round(self.H * self.s)))
        self.sx, self.sy = self.w / self.W, self.h / self.H
        self.cfg = settings
        self.rng = np.random.default_rng(settings.seed)
        self.f = 0.5 * (self.K[0, 0] + self.K[1, 1])
        # A working pixel is 1/s full-image pixels; chord thresholds are full pixels / f.
        self.px = 1.0 / (self.s * self.f)
        win = settings.lk_window | 1
        self.win = (win, win)
        self.lk = {
            "winSize": self.win,
            "maxLevel": settings.lk_levels,
            "criteria": (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 30, 0.01),
        }
        self.lk_back = dict(self.lk, maxLevel=min(1, settings.lk_levels))
        b = settings.border
        self.base_mask = np.zeros((self.h, self.w), np.uint8)
        bx, by = int(round(b * self.w)), int(round(b * self.h))
        self.base_mask[by : self.h - by, bx : self.w - bx] = 255

        self.t = 0  # samples pushed
        self.prev_img: np.ndarray | None = None
        self.kf_img: np.ndarray | None = None
        self.kf_t = 0
        self.pts = np.zeros((0, 2), np.float32)  # working-image positions in the previous sample
        self.pts_kf = np.zeros((0, 2), np.float32)  # positions of the same tracks in the keyframe
        self.n_at_kf = 0
        # per edge (t -> t+1)
        self.rel: list[np.ndarray] = []
        self.ok: list[bool] = []
        self.dup: list[bool] = []
        self.inliers: list[int] = []
        self.ratio: list[float] = []
        self.resid: list[float] = []
        # per sample
        self.tracks: list[int] = []
        self.masked: list[float] = []
        self.keyedges: list[_KeyEdge] = []
        self.times: list[float] = []

    # -- image helpers -----------------------------------------------------------------------------------

    def _gray(self, frame: np.ndarray) -> np.ndarray:
        import cv2

        g = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        if (g.shape[1], g.shape[0]) != (self.w, self.h):
            g = cv2.resize(g, (self.w, self.h), interpolation=cv2.INTER_AREA)
        return g

    def _mask(self, boxes: np.ndarray) -> np.ndarray:
        m = self.base_mask.copy()
        mg = self.cfg.box_margin
        for x1, y1, x2, y2 in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
            dw, dh = (x2 - x1) * mg, (y2 - y1) * mg
            a = int(math.floor((x1 - dw) * self.sx))
            c = int(math.floor((y1 - dh) * self.sy))
            b = int(math.ceil((x2 + dw) * self.sx))
            d = int(math.ceil((y2 + dh) * self.sy))
            m[max(0, c) : max(0, d), max(0, a) : max(0, b)] = 0
        return m

    def _full(self, p: np.ndarray) -> np.ndarray:
        """Working-image points -> full-image pixel coordinates (pixel centres at integers)."""
        q = np.empty_like(p, dtype=np.float64)
        q[:, 0] = (p[:, 0] + 0.5) / self.sx - 0.5
        q[:, 1] = (p[:, 1] + 0.5) / self.sy - 0.5
        return q

    def _bearings(self, p: np.ndarray) -> np.ndarray:
        q = self._full(p)
        b = np.column_stack([q, np.ones(len(q))]) @ self.Kinv.T
        return b / np.linalg.norm(b, axis=1, keepdims=True)

    def _detect(self, g: np.ndarray, mask: np.ndarray, existing: np.ndarray, want: int) -> np.ndarray:
        import cv2

        if want <= 0:
            return np.zeros((0, 2), np.float32)
        m = mask.copy()
        for x, y in existing:
            cv2.circle(m, (int(round(x)), int(round(y))), self.cfg.min_distance, 0, -1)
        c = cv2.goodFeaturesToTrack(
            g,
            maxCorners=want * 3,
            qualityLevel=self.cfg.quality_level,
            minDistance=self.cfg.min_distance,
            mask=m,
            blockSize=5,
        )
        if c is None:
            return np.zeros((0, 2), np.float32)
        c = c.reshape(-1, 2)
        # Bucket over a 6x4 grid so that one textured corner of the picture cannot hold every corner.
        gx = np.minimum((c[:, 0] * 6 / self.w).astype(int), 5)
        gy = np.minimum((c[:, 1] * 4 / self.h).astype(int), 3)
        cell = gy * 6 + gx
        cap = max(2, int(math.ceil(want / 24 * 1.5)))
        keep = np.zeros(len(c), dtype=bool)
        counts = np.zeros(24, dtype=int)
        for k in range(len(c)):  # sorted by quality already
            if counts[cell[k]] < cap:
                counts[cell[k]] += 1
                keep[k] = True
        return c[keep][:want].astype(np.float32)

    def _track(
        self, img0: np.ndarray, img1: np.ndarray, p0: np.ndarray, init: np.ndarray | None = None
    ) -> np.ndarray:
        """Forward-backward checked LK; returns the new positions with NaN rows for lost tracks."""
        import cv2

        out = np.full_like(p0, np.nan)
        if len(p0) == 0:
            return out
        if init is None:
            p1, st, _ = cv2.calcOpticalFlowPyrLK(img0, img1, p0, None, **self.lk)
        else:
            p1, st, _ = cv2.calcOpticalFlowPyrLK(
                img0, img1, p0, init.copy(), flags=cv2.OPTFLOW_USE_INITIAL_FLOW, **self.lk_back
            )
        # Backward from the forward result, seeded at the start point: a correct track returns within a
        # fraction of a pixel, so one pyramid level is enough (about half the cost of the forward pass).
        pb, st2, _ = cv2.calcOpticalFlowPyrLK(
            img1, img0, p1, p0.copy(), flags=cv2.OPTFLOW_USE_INITIAL_FLOW, **self.lk_back
        )
        good = (st.reshape(-1) == 1) & (st2.reshape(-1) == 1)
        good &= np.linalg.norm(pb - p0, axis=1) < self.cfg.fb_threshold_px
        good &= (p1[:, 0] >= 0) & (p1[:, 0] <= self.w - 1) & (p1[:, 1] >= 0) & (p1[:, 1] <= self.h - 1)
        out[good] = p1[good]
        return out

    # -- streaming -----------------------------------------------------------------------------------------

    def push(
        self,
        frame: np.ndarray,
        boxes: np.ndarray | None = None,
        *,
        duplicate: bool = False,
        time_s: float | None = None,
    ) -> None:
        """Add the next sample: ``frame`` (H, W, 3) RGB or (H, W) grey at the clip's display size,
        ``boxes`` (n, 4) xyxy person boxes in full-image pixels, ``duplicate`` when the sample repeats the
        previous sample's source frame, ``time_s`` its source timestamp (default: the sample number), so
        that the filters see angular *rates* when source frames are unevenly spaced (60 -> 30 fps is even,
        25 -> 30 or 30 -> 20 fps is not)."""
        boxes = np.zeros((0, 4)) if boxes is None else boxes
        t = self.t
        self.t += 1
        self.times.append(float(t if time_s is None else time_s))
        if duplicate and t > 0:
            self.rel.append(np.eye(3))
            self.ok.append(self.ok[-1] if self.ok else True)
            self.dup.append(True)
            self.inliers.append(self.inliers[-1] if self.inliers else 0)
            self.ratio.append(self.ratio[-1] if self.ratio else 0.0)
            self.resid.append(self.resid[-1] if self.resid else 0.0)
            self.tracks.append(self.tracks[-1])
            self.masked.append(self.masked[-1])
            return
        g = self._gray(frame)
        mask = self._mask(boxes)
        self.masked.append(float(1.0 - (mask > 0).mean()))
        if t == 0 or self.prev_img is None:
            self._new_keyframe(t, g, mask)
            self.tracks.append(len(self.pts))
            self.prev_img = g
            return

        p1 = self._track(self.prev_img, g, self.pts)
        alive = ~np.isnan(p1[:, 0])
        if alive.any():
            ix = np.clip(np.round(p1[alive]).astype(int), 0, [self.w - 1, self.h - 1])
            inside = mask[ix[:, 1], ix[:, 0]] == 0
            idx = np.nonzero(alive)[0]
            alive[idx[inside & (self.base_mask[ix[:, 1], ix[:, 0]] > 0)]] = False
        p0, p1 = self.pts[alive], p1[alive]
        self.pts_kf = self.pts_kf[alive]
        self.pts = p1
        self.tracks.append(len(p1))

        guess = self.rel[-1] if self.rel else None
        fit = fit_rotation(
            self._bearings(p0),
            self._bearings(p1),
            self.cfg.ransac_threshold_px * self.px,
            self.cfg.ransac_iters,
            self.rng,
            guess=guess,
        )
        if fit is None:
            self.rel.append(np.eye(3))
            self.ok.append(False)
            self.inliers.append(0)
            self.ratio.append(0.0)
            self.resid.append(float("nan"))
        else:
            R, inl, r = fit
            n_in = int(inl.sum())
            ratio = n_in / max(1, len(inl))
            res = float(np.median(r[inl]) / self.px) if n_in else float("nan")
            self.rel.append(R)
            self.inliers.append(n_in)
            self.ratio.append(ratio)
            self.resid.append(res)
            self.ok.append(
                n_in >= self.cfg.min_inliers
                and ratio >= self.cfg.min_inlier_ratio
                and res <= self.cfg.max_residual_px
            )
        self.dup.append(False)

        few = len(self.pts) < max(self.cfg.min_inliers, self.n_at_kf // 2)
        if t - self.kf_t >= self.cfg.keyframe_every or few:
            self._key_edge(t, g)
            self._new_keyframe(t, g, mask)
        self.prev_img = g

    def _new_keyframe(self, t: int, g: np.ndarray, mask: np.ndarray) -> None:
        want = self.cfg.max_corners - len(self.pts)
        new = self._detect(g, mask, self.pts, want)
        self.pts = np.concatenate([self.pts, new]).astype(np.float32)
        self.pts_kf = self.pts.copy()
        self.n_at_kf = len(self.pts)
        self.kf_img = g
        self.kf_t = t

    def _key_edge(self, t: int, g: np.ndarray) -> None:
        """Keyframe -> current rotation from tracks re-tracked straight from the keyframe image."""
        if len(self.pts) < self.cfg.min_inliers or self.kf_img is None:
            return
        p1 = self._track(self.kf_img, g, self.pts_kf, init=self.pts)
        good = ~np.isnan(p1[:, 0])
        good[good] &= np.linalg.norm(p1[good] - self.pts[good], axis=1) < 2.0
        if good.sum() < self.cfg.min_inliers:
            return
        q0, q1 = self.pts_kf[good], p1[good]
        b0, b1 = self._bearings(q0), self._bearings(q1)
        fit = fit_rotation(b0, b1, self.cfg.ransac_threshold_px * self.px, self.cfg.ransac_iters, self.rng)
        if fit is None:
            return
        R, inl, r = fit
        parallax = float(np.median(r) / self.px)
        kind, n_in = 1, int(inl.sum())
        if parallax > self.cfg.parallax_px:
            R_e, n_e = self._essential(q0, q1, R)
            if R_e is not None:
                R, kind, n_in = R_e, 2, n_e
        if n_in < self.cfg.min_inliers:
            return
        self.keyedges.append(_KeyEdge(self.kf_t, t, R, kind, parallax, n_in))

    def _essential(self, q0: np.ndarray, q1: np.ndarray, R_rot: np.ndarray) -> tuple[np.ndarray | None, int]:
        """(R, inliers) of the keyframe pair from the essential matrix, or (None, 0)."""
        import cv2

        a, b = self._full(q0), self._full(q1)
        thr = self.cfg.ransac_threshold_px / self.s
        method = _essential_method(cv2)
        if method == cv2.RANSAC:  # (MAGSAC++ has its own fixed seed; RANSAC a global RNG)
            cv2.setRNGSeed(self.cfg.seed + len(self.keyedges))
        try:
            # MAGSAC++ refines the model on its inliers: plain RANSAC's minimal-sample E is ~3x noisier.
            E, inl = cv2.findEssentialMat(
                a, b, self.K, method=method, prob=0.999, threshold=thr, maxIters=2000
            )
        except cv2.error:
            return None, 0
        if E is None or E.shape[0] < 3 or inl is None:
            return None, 0
        inl = inl.reshape(-1).astype(bool)
        best, best_d = None, np.inf
        for k in range(0, E.shape[0] - 2, 3):
            R1, R2, _ = cv2.decomposeEssentialMat(E[k : k + 3])
            for Rc in (R1, R2):
                d = float(rotation_angle_deg(Rc @ R_rot.T))
                if d < best_d:
                    best, best_d = Rc, d
        # A decomposition far from the rotation-only estimate is a degenerate fit, not parallax.
        if best is None or best_d > 3.0 + 0.5 * float(rotation_angle_deg(R_rot)):
            return None, 0
        return project_so3(best), int(inl.sum())

    # -- the end ---------------------------------------------------------------------------------------------

    def finish(self) -> SolveResult:
        T = self.t
        cfg = self.cfg
        if T == 0:
            raise ValueError("no samples pushed")
        # The samples after the last keyframe get their keyframe edge too (else parallax bias would stay).
        last = max(t for t in range(T) if t == 0 or not self.dup[t - 1])
        if last > self.kf_t and self.prev_img is not None:
            self._key_edge(last, self.prev_img)
            self.kf_t = last
        if T == 1:
            return SolveResult(np.eye(3)[None], np.ones(1, bool), {}, {"samples": 1})
        rel = np.stack(self.rel)
        ok = np.array(self.ok, dtype=bool)
        dup = np.array(self.dup, dtype=bool)
        w = so3_log(rel)
        w[dup] = 0.0
        # Only non-duplicate edges carry motion; they form the timeline the filters run on.
        real = np.nonzero(~dup)[0]
        meas = ok[real]
        # Filters work on rates (per unit of source time), so uneven source steps are not "spikes".
        times = np.asarray(self.times, dtype=np.float64)
        dt = np.diff(times)[real]
        dt = np.where(dt > 0, dt, np.median(dt[dt > 0]) if (dt > 0).any() else 1.0)
        wr = w[real] / dt[:, None]
        if meas.any() and not meas.all():
            x = np.arange(len(real))
            for c in range(3):
                wr[~meas, c] = np.interp(x[~meas], x[meas], wr[meas, c])
        elif not meas.any():
            wr[:] = 0.0
        if cfg.hampel_window > 0 and len(wr) > 2 * cfg.hampel_window:
            wr = _hampel(wr, cfg.hampel_window, cfg.hampel_sigmas, floor=1e-5 / float(np.median(dt)))
        w[real] = wr * dt[:, None]

        # Keyframe correction: each segment's chained rotation is made equal to its keyframe rotation.
        corr_deg = []
        n_ess = 0
        covered = np.zeros(T - 1, dtype=bool)
        parallax = np.full(T - 1, np.nan, dtype=np.float32)
        for e in self.keyedges:
            seg = np.arange(e.a, e.b)
            A = [np.eye(3)]
            for k in seg:
                A.append(so3_exp(w[k]) @ A[-1])
            D = e.R @ A[-1].T
            phi = so3_log(D)
            corr_deg.append(float(np.degrees(np.linalg.norm(phi))))
            steps = (~dup[seg]).astype(np.float64)
            if steps.sum() == 0:
                continue
            c = np.concatenate([[0.0], np.cumsum(steps) / steps.sum()])
            Ac = [so3_exp(c[i] * phi) @ A[i] for i in range(len(A))]
            for i, k in enumerate(seg):
                if not dup[k]:
                    w[k] = so3_log(Ac[i + 1] @ Ac[i].T)
            covered[seg] = True
            parallax[seg] = e.parallax_px
            n_ess += e.kind == 2

        if cfg.smooth_sigma > 0 and len(real) > 1:
            w[real] = gaussian_filter1d(w[real] / dt[:, None], cfg.smooth_sigma, axis=0, mode="nearest")
            w[real] *= dt[:, None]

        R = np.empty((T, 3, 3))
        R[0] = np.eye(3)
        steps_R = so3_exp(w)
        for k in range(T - 1):
            R[k + 1] = steps_R[k] @ R[k]
        R = project_so3(R)

        tracks = np.array(self.tracks, dtype=np.int32)
        # An edge is measured when its own fit passed, or when a keyframe edge covers it and the tracking
        # went on through it (parallax can fail the per-sample rotation-only fit but not the keyframe).
        edge_valid = ok | (covered & (tracks[1:] >= cfg.min_inliers))
        for k in np.nonzero(dup)[0]:  # a repeated picture is as well measured as the sample before it
            edge_valid[k] = edge_valid[k - 1] if k > 0 else True
        valid = np.append(edge_valid, edge_valid[-1])

        def per_sample(a, dtype):
            a = np.asarray(a, dtype=dtype)
            return np.append(a, a[-1])

        quality = {
            "tracks": tracks,
            "inliers": per_sample(self.inliers, np.int32),
            "inlier_ratio": per_sample(self.ratio, np.float32),
            "residual_px": per_sample(self.resid, np.float32),
            "parallax_px": per_sample(parallax, np.float32),
            "masked_fraction": np.array(self.masked, dtype=np.float32),
        }
        rate = np.degrees(np.linalg.norm(w, axis=1))
        stats = {
            "samples": int(T),
            "keyframe_edges": len(self.keyedges),
            "essential_edges": int(n_ess),
            "max_keyframe_correction_deg": round(max(corr_deg), 5) if corr_deg else 0.0,
            "median_parallax_px": round(float(np.nanmedian(parallax)), 4) if covered.any() else 0.0,
            "median_inliers": float(np.median(np.asarray(self.inliers)[~dup])) if (~dup).any() else 0.0,
            "median_residual_px": round(float(np.nanmedian(np.asarray(self.resid)[~dup])), 4)
            if (~dup).any() and np.isfinite(np.asarray(self.resid)[~dup]).any()
            else None,
            "max_rate_deg_per_sample": round(float(rate.max()), 5),
            "max_rotation_deg": round(float(rotation_angle_deg(R).max()), 5),
        }
        return SolveResult(R, valid, quality, stats)


def _hampel(x: np.ndarray, half: int, k: float, floor: float) -> np.ndarray:
    """Replace values further than k robust sigmas (and ``floor``) from their window's median by that median
    (per column)."""
    n = len(x)
    pad = np.pad(x, ((half, half), (0, 0)), mode="edge")
    win = np.lib.stride_tricks.sliding_window_view(pad, 2 * half + 1, axis=0)  # (n, 3, 2h+1)
    med = np.median(win, axis=-1)
    mad = 1.4826 * np.median(np.abs(win - med[..., None]), axis=-1)
    out = x.copy()
    bad = np.abs(x - med) > k * np.maximum(mad, 1e-9)
    # Tiny absolute deviations are never spikes (a static camera's noise would otherwise be all "outliers").
    bad &= np.abs(x - med) > floor
    out[bad] = med[bad]
    assert out.shape == (n, 3)
    return out
