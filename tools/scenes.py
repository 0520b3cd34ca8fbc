"""Synthetic shots with exactly known cameras, for the camera stage's tests and accuracy benchmark.

A shot is rendered by ray casting a closed, textured box "room" (six textured planes, grey-level textures
with mip-mapping so distant and grazing surfaces do not alias) from a camera with known rotation and
position, plus optional textured rectangles moving in the image that stand in for people (their boxes are
known), sensor noise, and nothing else. With the camera centre fixed the rendering is exactly the warp of
each wall texture by the homography of the camera's rotation (``H = K R K^-1`` per plane): the "pure
rotation" shots. With a moving centre the near floor and walls give real parallax: the "walk" shots.
``homography_shot`` warps one flat textured image by ``K R^T K^-1`` directly (small rotations only).

Conventions (as in ``stages.camera``): world and camera axes are OpenCV's (x right, y down, z forward); the
world is the room's frame; ``R_w2c[t]`` maps world directions to camera t, ``C[t]`` is camera t's centre
(metres); pixel (row i, column j) has its centre at image coordinates (u, v) = (j, i); intrinsics ``K`` act on
(u, v, 1). Ground truth is compared after re-anchoring to frame 0 (``R_w2c[t] R_w2c[0]^T``), which is what
the camera stage outputs.

Everything is deterministic given the seeds. Frames are (T, H, W, 3) uint8 RGB, in memory (a 640x360 shot of
10 s is 207 MB); ``write_video`` encodes them with the ffmpeg binary for end-to-end tests.
"""

from __future__ import annotations

import math
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from scipy.spatial.transform import Rotation

from stages.camera_opencv import rotation_angle_deg
from stages.video import FFMPEG

__all__ = [
    "Person",
    "Room",
    "Shot",
    "default_K",
    "homography_shot",
    "make_room",
    "make_texture",
    "render_shot",
    "rotation_errors",
    "trajectory",
    "tracks_for_shot",
    "write_video",
]


# --------------------------------------------------------------------------------------------------------
# Textures and the room


def make_texture(res: int, seed: int, *, shapes: int = 400) -> np.ndarray:
    """(res, res) float32 grey texture in [20, 235]: band-limited noise of several octaves plus random
    rectangles, discs and lines (corners for a feature tracker), slightly blurred."""
    rng = np.random.default_rng(seed)
    # 1/f noise made in the Fourier domain (periodic), weighted towards the middle frequencies.
    fy = np.fft.fftfreq(res)[:, None]
    fx = np.fft.fftfreq(res)[None, :]
    f = np.sqrt(fx * fx + fy * fy)
    amp = np.where(f > 0, 1.0 / np.maximum(f, 1.0 / res) ** 0.9, 0.0) * np.exp(-((f / 0.25) ** 2))
    spec = amp * np.exp(2j * np.pi * rng.random((res, res)))
    noise = np.real(np.fft.ifft2(spec))
    noise = (noise - noise.mean()) / (noise.std() + 1e-9)
    img = np.ascontiguousarray(128.0 + 28.0 * noise, dtype=np.float32)
    for _ in range(shapes):
        val = float(rng.uniform(20, 235))
        kind = rng.integers(0, 3)
        x, y = (int(v) for v in rng.integers(0, res, size=2))
        s = int(rng.integers(res // 128 + 2, res // 16 + 3))
        if kind == 0:
            cv2.rectangle(img, (x, y), (x + s, y + int(s * rng.uniform(0.4, 2.0))), val, -1)
        elif kind == 1:
            cv2.circle(img, (x, y), s // 2, val, -1)
        else:
            x2, y2 = (int(v) for v in rng.integers(-s, s, size=2))
            cv2.line(img, (x, y), (x + 2 * x2, y + 2 * y2), val, max(1, s // 8))
    img = cv2.GaussianBlur(img, (0, 0), 0.8)
    return np.clip(img, 20, 235).astype(np.float32)


def _pyramid(tex: np.ndarray, levels: int) -> list[np.ndarray]:
    out = [tex]
    while len(out) < levels and min(out[-1].shape) >= 8:
        out.append(cv2.pyrDown(out[-1], borderType=cv2.BORDER_WRAP))
    return out


@dataclass
class Room:
    """An axis-aligned box seen from inside. Face order: x=lo, x=hi, y=lo (ceiling), y=hi (floor), z=lo,
    z=hi. Each face tiles its texture every ``tile_m`` metres along its two in-plane axes."""

    lo: np.ndarray  # (3,) metres
    hi: np.ndarray  # (3,)
    pyramids: list[list[np.ndarray]]  # per face: mip levels, level 0 = (res, res)
    tile_m: float
    shade: np.ndarray  # (6,) brightness factor per face (so faces differ)

    @property
    def res(self) -> int:
        return self.pyramids[0][0].shape[0]


def make_room(
    lo: tuple[float, float, float] = (-6.0, -3.0, -6.0),
    hi: tuple[float, float, float] = (6.0, 1.6, 30.0),
    *,
    res: int = 1024,
    tile_m: float = 4.0,
    seed: int = 0,
) -> Room:
    """A textured room; the default is 12 m wide, the floor 1.6 m below the origin, 36 m long."""
    pyr = [_pyramid(make_texture(res, seed * 10 + i), 9) for i in range(6)]
    shade = np.array([0.95, 1.0, 0.85, 0.9, 1.05, 0.8], dtype=np.float32)
    return Room(np.asarray(lo, float), np.asarray(hi, float), pyr, tile_m, shade)


# --------------------------------------------------------------------------------------------------------
# Cameras


def default_K(size: tuple[int, int], hfov_deg: float = 72.0) -> np.ndarray:
    """Pinhole K for ``size`` = (W, H) with the given horizontal field of view; principal point (W/2, H/2)
    like GEM's default. 72 deg is a typical phone main camera (f = 0.69 W)."""
    w, h = size
    f = (w / 2.0) / math.tan(math.radians(hfov_deg) / 2.0)
    return np.array([[f, 0.0, w / 2.0], [0.0, f, h / 2.0], [0.0, 0.0, 1.0]])


def _rot(yaw: np.ndarray, pitch: np.ndarray, roll: np.ndarray) -> np.ndarray:
    """Camera-to-world rotations Ry(yaw) Rx(pitch) Rz(roll), radians (OpenCV camera: yaw about y (down),
    pitch about x, roll about the optical axis)."""
    return Rotation.from_euler("YXZ", np.stack([yaw, pitch, roll], axis=1)).as_matrix()


def _smooth_walk(n: int, step_deg: float, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """A smoothed random walk (radians), starting at 0: hand jitter."""
    x = np.cumsum(rng.normal(0.0, math.radians(step_deg), n))
    r = int(4 * sigma + 0.5)
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    x = np.convolve(np.pad(x, r, mode="edge"), k, mode="valid")
    return x - x[0]


def _osc(t: np.ndarray, peak_rate_deg: float, period: float, phase: float = 0.0) -> np.ndarray:
    """A sinusoid starting at 0 whose peak angular rate is ``peak_rate_deg``/s (radians)."""
    amp = math.radians(peak_rate_deg) * period / (2 * math.pi)
    return amp * (np.sin(2 * math.pi * t / period + phase) - math.sin(phase))


def trajectory(
    kind: str, seconds: float, fps: float = 30.0, *, rate_deg: float = 30.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(R_w2c (T,3,3), C (T,3)) of a named camera move, T = round(seconds * fps).

    Kinds: ``static``; ``pan`` / ``tilt`` / ``roll`` (one axis, sinusoid of one period over the shot with a
    peak rate of ``rate_deg``/s); ``handheld`` (pan at ``rate_deg`` peak, tilt and roll at a third of it, plus
    jitter); ``walk`` (1.2 m/s forward with sway and bob, a pan of ``rate_deg`` peak, slight look-down with
    wobble: strong parallax from the floor 1.6 m below and walls 6 m away).
    """
    n = int(round(seconds * fps))
    t = np.arange(n) / fps
    rng = np.random.default_rng(seed)
    z = np.zeros(n)
    C = np.zeros((n, 3))
    period = max(seconds, 1.0)
    if kind == "static":
        R = _rot(z, z, z)
    elif kind == "pan":
        R = _rot(_osc(t, rate_deg, period), z, z)
    elif kind == "tilt":
        R = _rot(z, _osc(t, rate_deg, period), z)
    elif kind == "roll":
        R = _rot(z, z, _osc(t, rate_deg, period))
    elif kind == "handheld":
        yaw = _osc(t, rate_deg, period) + _smooth_walk(n, 0.08, 2.0, rng)
        pitch = _osc(t, rate_deg / 3, period * 0.7, 0.5) + _smooth_walk(n, 0.08, 2.0, rng)
        roll = _osc(t, rate_deg / 3, period * 0.55, 1.0) + _smooth_walk(n, 0.05, 2.0, rng)
        R = _rot(yaw, pitch, roll)
    elif kind == "walk":
        yaw = _osc(t, rate_deg, period) + _smooth_walk(n, 0.05, 2.0, rng)
        pitch = -math.radians(8.0) + _osc(t, rate_deg / 4, 1.1) + _smooth_walk(n, 0.05, 2.0, rng)
        roll = _osc(t, rate_deg / 6, 1.3, 0.3)
        R = _rot(yaw, pitch, roll)
        C[:, 0] = 0.3 * np.sin(2 * math.pi * t / 4.0)
        C[:, 1] = 0.03 * np.sin(2 * math.pi * t * 1.8)
        C[:, 2] = 1.2 * t
    else:
        raise ValueError(f"unknown trajectory kind {kind!r}")
    return np.ascontiguousarray(np.transpose(R, (0, 2, 1))), C


# --------------------------------------------------------------------------------------------------------
# People


@dataclass(frozen=True)
class Person:
    """A textured rectangle moving in the image at constant speed (a stand-in for a person): top-left at
    ``(x + vx t, y + vy t)`` pixels, size ``w`` x ``h``; its texture scrolls too (limbs move)."""

    x: float
    y: float
    w: int
    h: int
    vx: float = 0.0
    vy: float = 0.0
    seed: int = 99

    def box(self, t: float, size: tuple[int, int]) -> np.ndarray:
        """xyxy clipped to the image (may be empty)."""
        W, H = size
        x0, y0 = self.x + self.vx * t, self.y + self.vy * t
        return np.array([max(0, x0), max(0, y0), min(W, x0 + self.w), min(H, y0 + self.h)], np.float32)


def _paste_person(img: np.ndarray, p: Person, t: float, tex: np.ndarray) -> None:
    H, W = img.shape[:2]
    x0, y0 = int(round(p.x + p.vx * t)), int(round(p.y + p.vy * t))
    x1, y1 = max(0, x0), max(0, y0)
    x2, y2 = min(W, x0 + p.w), min(H, y0 + p.h)
    if x2 <= x1 or y2 <= y1:
        return
    shift = int(t * 40) % tex.shape[0]
    patch = np.roll(tex, shift, axis=0)[y1 - y0 : y2 - y0, x1 - x0 : x2 - x0]
    img[y1:y2, x1:x2] = patch


# --------------------------------------------------------------------------------------------------------
# Rendering


@dataclass
class Shot:
    """Frames and their exact cameras."""

    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    R_w2c: np.ndarray  # (T, 3, 3) float64, room frame
    C: np.ndarray  # (T, 3) camera centres, metres
    K: np.ndarray  # (3, 3) true intrinsics
    fps: float
    boxes: list[list[np.ndarray | None]] = field(default_factory=list)  # per person, per frame xyxy or None

    @property
    def size(self) -> tuple[int, int]:
        return (self.frames.shape[2], self.frames.shape[1])

    @property
    def R_rel0(self) -> np.ndarray:
        """Ground truth as the camera stage reports it: ``R_w2c[t] R_w2c[0]^T`` (world = camera 0)."""
        return self.R_w2c @ self.R_w2c[0].T


def _sample(tex: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear, wrapping lookup of ``tex`` at the points (x, y) (any count: remap maps must stay < 32767
    wide, so the points are laid out in rows of 1024)."""
    n = len(x)
    rows = -(-n // 1024)
    mx = np.zeros(rows * 1024, np.float32)
    my = np.zeros(rows * 1024, np.float32)
    mx[:n], my[:n] = x, y
    out = cv2.remap(
        tex, mx.reshape(rows, 1024), my.reshape(rows, 1024), cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP
    )
    return out.reshape(-1)[:n]


def _render_room(room: Room, R_w2c: np.ndarray, C: np.ndarray, K: np.ndarray, size: tuple[int, int]):
    W, H = size
    u, v = np.meshgrid(np.arange(W, dtype=np.float64), np.arange(H, dtype=np.float64))
    rays_c = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1).reshape(-1, 3)
    d = rays_c @ R_w2c  # world directions (R_c2w @ ray), z_cam = 1 scaling kept
    n = d.shape[0]
    best_t = np.full(n, np.inf)
    face = np.full(n, -1, dtype=np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        for a in range(3):
            for side, plane in ((0, room.lo[a]), (1, room.hi[a])):
                tt = (plane - C[a]) / d[:, a]
                ok = (tt > 0) & (tt < best_t)
                best_t[ok] = tt[ok]
                face[ok] = 2 * a + side
    P = C[None, :] + best_t[:, None] * d
    dist = best_t * np.linalg.norm(d, axis=1)
    f = 0.5 * (K[0, 0] + K[1, 1])
    out = np.zeros(n, dtype=np.float32)
    texel = room.tile_m / room.res
    for fi in range(6):
        sel = np.nonzero(face == fi)[0]
        if len(sel) == 0:
            continue
        a = fi // 2
        b, c = [x for x in range(3) if x != a]
        cos_inc = np.abs(d[sel, a]) / np.linalg.norm(d[sel], axis=1)
        # Pixel footprint on the surface (metres): distance x angle per pixel, stretched at grazing angles
        # along one axis only (the geometric mean of the two axes: a little aliasing, not much blur).
        foot = dist[sel] / f / np.sqrt(np.maximum(cos_inc, 0.02))
        level = np.clip(np.log2(np.maximum(foot / texel, 1e-6)), 0.0, len(room.pyramids[fi]) - 1.001)
        l0 = np.floor(level).astype(np.int64)
        frac = (level - l0).astype(np.float32)
        ub = P[sel, b] / room.tile_m * room.res
        vc = P[sel, c] / room.tile_m * room.res
        vals = np.zeros(len(sel), dtype=np.float32)
        for lv in np.unique(l0):
            m = l0 == lv
            acc = np.zeros(int(m.sum()), dtype=np.float32)
            for dl, wgt in ((0, 1.0 - frac[m]), (1, frac[m])):
                tex = room.pyramids[fi][lv + dl]
                r = tex.shape[0]
                s = 2.0 ** (lv + dl)
                mx = np.mod(ub[m] / s - 0.5 * (1 - 1 / s), r)
                my = np.mod(vc[m] / s - 0.5 * (1 - 1 / s), r)
                acc += wgt * _sample(tex, mx, my)
            vals[m] = acc
        out[sel] = vals * room.shade[fi]
    return out.reshape(H, W)


def render_shot(
    kind: str,
    *,
    seconds: float = 3.0,
    fps: float = 30.0,
    size: tuple[int, int] = (320, 240),
    hfov_deg: float = 72.0,
    rate_deg: float = 30.0,
    people: list[Person] | None = None,
    noise: float = 1.0,
    room: Room | None = None,
    seed: int = 0,
) -> Shot:
    """Render a shot of ``trajectory(kind, ...)`` in a textured room.

    Pure-rotation kinds (``static``, ``pan``, ``tilt``, ``roll``, ``handheld``) keep the camera at the
    room's origin; ``walk`` translates it. ``people`` are pasted over the render (their boxes are recorded
    in ``Shot.boxes``); ``noise`` is the sensor noise std in grey levels.
    """
    R, C = trajectory(kind, seconds, fps, rate_deg=rate_deg, seed=seed)
    K = default_K(size, hfov_deg)
    room = room or make_room(seed=seed)
    rng = np.random.default_rng(seed + 1000)
    people = people or []
    ptex = [
        make_texture(max(256, 1 << int(max(p.w, p.h) - 1).bit_length()), p.seed, shapes=150) for p in people
    ]
    T = len(R)
    frames = np.empty((T, size[1], size[0], 3), dtype=np.uint8)
    boxes: list[list[np.ndarray | None]] = [[] for _ in people]
    for i in range(T):
        img = _render_room(room, R[i], C[i], K, size)
        if noise > 0:
            img = img + rng.normal(0.0, noise, img.shape).astype(np.float32)
        t = i / fps
        for j, p in enumerate(people):
            _paste_person(img, p, t, ptex[j])
            bx = p.box(t, size)
            boxes[j].append(bx if (bx[2] > bx[0] and bx[3] > bx[1]) else None)
        g = np.clip(img + 0.5, 0, 255).astype(np.uint8)
        frames[i] = np.stack([g, (g * 0.97).astype(np.uint8), (g * 0.92).astype(np.uint8)], -1)
    return Shot(frames, R, C, K, fps, boxes)


def homography_shot(
    R_w2c: np.ndarray, *, size: tuple[int, int] = (320, 240), hfov_deg: float = 72.0, seed: int = 0
) -> Shot:
    """Warp one large flat textured image (a plane far in front of camera 0, seen by camera 0 through K)
    by the homography ``K R_w2c[t]^T K^-1`` of each frame's rotation: an exact pure-rotation shot for small
    rotations (the plane must cover the view: keep rotations under ~15 deg)."""
    K = default_K(size, hfov_deg)
    W, H = size
    # The source image is a 2048^2 virtual view with focal f_s = 2 f around the same optical axis, so the
    # frames are 2x minified: blurred first (anti-aliasing), as a camera's optics would.
    big = cv2.GaussianBlur(make_texture(2048, seed), (0, 0), 1.2)
    f_s = K[0, 0] * 2.0
    Ks = np.array([[f_s, 0, 1024.0], [0, f_s, 1024.0], [0, 0, 1]])
    frames = np.empty((len(R_w2c), H, W, 3), np.uint8)
    for i, R in enumerate(R_w2c):
        Hm = Ks @ R.T @ np.linalg.inv(K)  # frame pixel -> source pixel
        img = cv2.warpPerspective(big, Hm, (W, H), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
        g = np.clip(img + 0.5, 0, 255).astype(np.uint8)
        frames[i] = g[..., None]
    return Shot(frames, np.asarray(R_w2c, float), np.zeros((len(R_w2c), 3)), K, 30.0, [])


# --------------------------------------------------------------------------------------------------------
# Metrics


def rotation_errors(R_est: np.ndarray, R_gt: np.ndarray, fps: float = 30.0) -> dict[str, float]:
    """Accuracy of estimated ``R_w2c`` (T,3,3) against ground truth (any world; both re-anchored to frame 0).

    ``frame_median/mean/p95_deg``: error of each relative rotation ``R[t+1] R[t]^T`` (deg per frame);
    ``drift_end_deg`` / ``drift_max_deg``: absolute orientation error at the last frame / worst frame;
    ``drift_per_10s_deg``: the worst absolute error scaled to 10 s of shot; ``max_rotation_deg``: the largest
    estimated rotation from frame 0 (for static shots); ``gt_max_rate_deg_s``: fastest true motion.
    """
    Re = np.asarray(R_est, float) @ np.asarray(R_est[0], float).T
    Rg = np.asarray(R_gt, float) @ np.asarray(R_gt[0], float).T
    rel_e = Re[1:] @ np.transpose(Re[:-1], (0, 2, 1))
    rel_g = Rg[1:] @ np.transpose(Rg[:-1], (0, 2, 1))
    fe = rotation_angle_deg(rel_e @ np.transpose(rel_g, (0, 2, 1)))
    ab = rotation_angle_deg(Re @ np.transpose(Rg, (0, 2, 1)))
    seconds = max((len(Re) - 1) / fps, 1e-9)
    return {
        "frames": int(len(Re)),
        "frame_median_deg": float(np.median(fe)) if len(fe) else 0.0,
        "frame_mean_deg": float(np.mean(fe)) if len(fe) else 0.0,
        "frame_p95_deg": float(np.percentile(fe, 95)) if len(fe) else 0.0,
        "drift_end_deg": float(ab[-1]),
        "drift_max_deg": float(ab.max()),
        "drift_per_10s_deg": float(ab.max() * 10.0 / seconds),
        "max_rotation_deg": float(rotation_angle_deg(Re).max()),
        "gt_max_rate_deg_s": float(rotation_angle_deg(rel_g).max() * fps) if len(rel_g) else 0.0,
    }


# --------------------------------------------------------------------------------------------------------
# Video


def write_video(path: Path, frames: np.ndarray, fps: float = 30.0, *, crf: int = 12) -> Path:
    """Encode (T, H, W, 3) uint8 RGB frames to H.264 (yuv420p, ``crf``) with the ffmpeg binary."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    T, H, W, _ = frames.shape
    cmd = [
        FFMPEG,
        "-nostdin",
        "-y",
        "-loglevel",
        "error",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-s",
        f"{W}x{H}",
        "-r",
        f"{fps:g}",
        "-i",
        "pipe:",
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-crf",
        str(crf),
        "-pix_fmt",
        "yuv420p",
        str(path),
    ]
    proc = subprocess.run(cmd, input=np.ascontiguousarray(frames).tobytes(), capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.decode(errors="replace")[-2000:])
    return path


def tracks_for_shot(shot: Shot, frame_index: np.ndarray | None = None, fps: float | None = None):
    """``stages.track.Tracks`` whose sample timeline is ``frame_index`` (default: every frame, at the shot's
    rate) and whose people are the shot's person boxes (samples where a person is out of view left out)."""
    from stages.track import Tracks
    from stages.tracking import Track

    T = len(shot.frames)
    fi = np.arange(T) if frame_index is None else np.asarray(frame_index, dtype=np.int64)
    people = []
    for pid, boxes in enumerate(shot.boxes):
        si = np.array([k for k, f in enumerate(fi.tolist()) if boxes[f] is not None], dtype=np.int64)
        if len(si) == 0:
            continue
        xyxy = np.stack([boxes[fi[k]] for k in si]).astype(np.float32)
        n = len(si)
        bbx = np.column_stack(
            [(xyxy[:, 0] + xyxy[:, 2]) / 2, (xyxy[:, 1] + xyxy[:, 3]) / 2, xyxy[:, 3] - xyxy[:, 1]]
        )
        people.append(
            Track(pid, pid + 1, si, xyxy, bbx.astype(np.float32), np.ones(n, np.float32), np.ones(n, bool))
        )
    return Tracks(float(fps or shot.fps), shot.size, fi, fi / shot.fps, people, "user")
