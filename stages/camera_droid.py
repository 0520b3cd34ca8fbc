"""Backend ``droid`` of the camera stage: DROID-SLAM (GPU) in a worker process, and the conversions of its
output to the stage's contract.

DROID-SLAM needs compiled CUDA extensions (``lietorch``, ``droid_backends``, and upstream's
``torch_scatter``) built against one exact torch/CUDA pair, so it never runs inside the pipeline's process:

* The main process (``DroidJob``) writes the clip's unique frames, resized to DROID's working size (area
  about 384 x 512, sides multiples of 8) with every person box blacked out (upstream DROID has no mask
  input), as JPEG files plus ``meta.json`` into a scratch folder, then runs this file as a script
  (``python stages/camera_droid.py --worker DIR``) with the configured interpreter, whose environment has
  DROID-SLAM installed. The script imports nothing from this project.
* The worker tracks every frame, refuses clips on which DROID does not initialise (fewer keyframes than its
  warm-up: a static or nearly static camera, on which DROID's backend crashes), runs the final global
  bundle adjustment and the trajectory filler, and writes ``traj.npz``: ``traj`` (N, 7) rows
  ``[tx, ty, tz, qx, qy, qz, qw]`` (camera-to-world, scalar-last quaternion, arbitrary scale), ``keyframes``
  and ``kf_tstamps``; or ``error.json`` with a one-line ``reason``.
* ``tum_to_w2c`` / ``anchor_to_first`` turn those rows into world-to-camera rotations with
  ``R_w2c[0] = I`` (OpenCV axes, as DROID itself uses).

Pure numpy at import time (the worker side imports torch/cv2/DROID inside ``_worker_main``).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "DroidJob",
    "DroidResult",
    "anchor_to_first",
    "droid_available",
    "droid_size",
    "scaled_intrinsics",
    "tum_to_w2c",
    "w2c_to_tum",
]

WORKER = Path(__file__).resolve()


# --------------------------------------------------------------------------------------------------------
# Conversions (numpy, ``models.geometry``; unit-tested without DROID). The geometry module is imported inside
# them: the worker script runs outside this project.


def tum_to_w2c(traj: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """TUM/DROID rows ``[tx, ty, tz, qx, qy, qz, qw]`` of camera-to-world poses (N, 7) ->
    (R_w2c (N, 3, 3), t_w2c (N, 3)) with ``x_cam = R_w2c x_world + t_w2c``."""
    from models.geometry import quat_to_matrix, quat_xyzw_to_wxyz

    traj = np.asarray(traj, dtype=np.float64)
    if traj.ndim != 2 or traj.shape[1] != 7:
        raise ValueError(f"expected (N, 7) TUM rows, got {traj.shape}")
    R_c2w = quat_to_matrix(quat_xyzw_to_wxyz(traj[:, 3:7]))
    R_w2c = np.transpose(R_c2w, (0, 2, 1))
    t_w2c = -np.einsum("nij,nj->ni", R_w2c, traj[:, :3])
    return R_w2c, t_w2c


def w2c_to_tum(R_w2c: np.ndarray, t_w2c: np.ndarray) -> np.ndarray:
    """Inverse of ``tum_to_w2c``: (N, 7) camera-to-world rows ``[tx, ty, tz, qx, qy, qz, qw]`` (qw >= 0)."""
    from models.geometry import matrix_to_quat, quat_wxyz_to_xyzw

    R_w2c = np.asarray(R_w2c, dtype=np.float64)
    R_c2w = np.transpose(R_w2c, (0, 2, 1))
    C = -np.einsum("nij,nj->ni", R_c2w, np.asarray(t_w2c, dtype=np.float64))
    return np.concatenate([C, quat_wxyz_to_xyzw(matrix_to_quat(R_c2w, canonical=True))], axis=1)


def anchor_to_first(
    R_w2c: np.ndarray, t_w2c: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Re-express poses in the world of camera 0 (GEM's ``normalize_T_w2c``): ``R'_t = R_t R_0^T``,
    ``t'_t = t_t - R'_t t_0``; rotations are projected onto SO(3) (SVD, det +1).

    Raises:
        ValueError: NaN/inf values.
    """
    from models.geometry import project_so3

    R = np.asarray(R_w2c, dtype=np.float64)
    if not np.isfinite(R).all():
        raise ValueError("non-finite rotations")
    Rn = project_so3(R @ R[0].T)
    Rn[0] = np.eye(3)
    if t_w2c is None:
        return Rn, None
    t = np.asarray(t_w2c, dtype=np.float64)
    if not np.isfinite(t).all():
        raise ValueError("non-finite translations")
    return Rn, t - np.einsum("nij,j->ni", Rn, t[0])


def droid_size(width: int, height: int, area: int = 384 * 512) -> tuple[int, int, int, int]:
    """DROID's working image for a (width, height) frame: resized to about ``area`` pixels with the aspect
    kept (w1, h1), then cropped to multiples of 8 (wc, hc) from the top-left. Returns (w1, h1, wc, hc)."""
    s = math.sqrt(area / (width * height))
    w1, h1 = int(width * s), int(height * s)
    return w1, h1, w1 - w1 % 8, h1 - h1 % 8


def scaled_intrinsics(K: np.ndarray, width: int, height: int, w1: int, h1: int) -> list[float]:
    """(fx, fy, cx, cy) of ``K`` (full-image pixels) for the image resized to (w1, h1); the top-left crop
    to multiples of 8 does not move them."""
    sx, sy = w1 / width, h1 / height
    return [float(K[0, 0] * sx), float(K[1, 1] * sy), float(K[0, 2] * sx), float(K[1, 2] * sy)]


# --------------------------------------------------------------------------------------------------------
# Availability


def droid_available(python: str | None, repo: str | None, weights: Path | None) -> tuple[bool, str]:
    """Whether the ``droid`` backend can run here: (ok, the reason when not).

    Checks the weights file, the DROID-SLAM checkout (``repo/droid_slam/droid.py``), and that the worker
    interpreter imports torch (with CUDA available), lietorch and droid_backends.
    """
    if weights is None or not Path(weights).is_file():
        return False, f"DROID weights not found ({weights or 'droid.pth'})"
    repo = repo or os.environ.get("GENMOCAP_DROID_REPO")
    if not repo or not (Path(repo) / "droid_slam" / "droid.py").is_file():
        return False, "DROID-SLAM checkout not found (set camera.droid.repo or GENMOCAP_DROID_REPO)"
    py = python or sys.executable
    code = (
        "import sys, torch; sys.path.insert(0, sys.argv[1]); import lietorch, droid_backends; "
        "assert torch.cuda.is_available(), 'no CUDA device'"
    )
    try:
        proc = subprocess.run(
            [py, "-c", code, str(Path(repo) / "droid_slam")], capture_output=True, text=True, timeout=120
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"DROID worker interpreter {py} does not run: {e}"
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return False, f"DROID-SLAM is not importable by {py}: {last}"
    return True, ""


# --------------------------------------------------------------------------------------------------------
# Main-process side


@dataclass
class DroidResult:
    """Poses of the unique frames the job was given (``R_w2c`` anchored so that frame 0 is identity), or
    ``reason`` when DROID did not produce them."""

    R_w2c: np.ndarray | None  # (N, 3, 3)
    t_w2c: np.ndarray | None  # (N, 3), arbitrary scale
    keyframes: int
    reason: str | None


class DroidJob:
    """Collects the frames of one clip for the worker, then runs it.

    Frames are added in sample order; samples that repeat the previous source frame are not written
    (``duplicate=True``) and get that frame's pose back in ``expand``.
    """

    def __init__(
        self,
        K: np.ndarray,
        image_wh: tuple[int, int],
        *,
        weights: Path,
        repo: str | None,
        python: str | None,
        filter_thresh: float = 2.4,
        buffer: int | None = None,
        area: int = 384 * 512,
        box_margin: float = 0.15,
        timeout_s: float = 3600.0,
        workdir: str | None = None,
    ):
        import cv2  # noqa: F401  (fail early in the main process if OpenCV is missing)

        self.W, self.H = image_wh
        self.w1, self.h1, self.wc, self.hc = droid_size(self.W, self.H, area)
        self.intr = scaled_intrinsics(np.asarray(K, float), self.W, self.H, self.w1, self.h1)
        self.weights, self.repo, self.python = Path(weights), repo, python
        self.filter_thresh, self.buffer, self.margin = filter_thresh, buffer, box_margin
        self.timeout_s = timeout_s
        self.dir = Path(tempfile.mkdtemp(prefix="genmocap-droid-", dir=workdir))
        (self.dir / "frames").mkdir()
        self.n = 0
        self.sample_to_frame: list[int] = []

    def add(self, frame_rgb: np.ndarray, boxes: np.ndarray, *, duplicate: bool = False) -> None:
        import cv2

        if duplicate and self.n:
            self.sample_to_frame.append(self.n - 1)
            return
        img = cv2.resize(frame_rgb, (self.w1, self.h1), interpolation=cv2.INTER_AREA)
        sx, sy = self.w1 / self.W, self.h1 / self.H
        for x1, y1, x2, y2 in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
            dw, dh = (x2 - x1) * self.margin, (y2 - y1) * self.margin
            a, c = max(0, int((x1 - dw) * sx)), max(0, int((y1 - dh) * sy))
            b, d = int(math.ceil((x2 + dw) * sx)), int(math.ceil((y2 + dh) * sy))
            img[c:d, a:b] = 0
        img = img[: self.hc, : self.wc, ::-1]  # BGR, as DROID reads it
        cv2.imwrite(str(self.dir / "frames" / f"{self.n:06d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
        self.sample_to_frame.append(self.n)
        self.n += 1

    def close(self) -> None:
        """Remove the scratch folder (``run`` does it too)."""
        shutil.rmtree(self.dir, ignore_errors=True)

    def run(self) -> DroidResult:
        """Run the worker on the collected frames; never raises for DROID's own failures."""
        try:
            if self.n < 2:
                return DroidResult(None, None, 0, "fewer than 2 distinct frames")
            repo = self.repo or os.environ.get("GENMOCAP_DROID_REPO") or ""
            meta = {
                "n": self.n,
                "image_size": [self.hc, self.wc],
                "intrinsics": self.intr,
                "weights": str(self.weights),
                "repo": repo,
                "buffer": int(self.buffer or min(max(self.n, 64), 2048)) + 16,  # +16: the filler's batch
                "filter_thresh": float(self.filter_thresh),
            }
            (self.dir / "meta.json").write_text(json.dumps(meta))
            py = self.python or sys.executable
            try:
                proc = subprocess.run(
                    [py, str(WORKER), "--worker", str(self.dir)],
                    capture_output=True,
                    text=True,
                    timeout=self.timeout_s,
                )
            except subprocess.TimeoutExpired:
                return DroidResult(None, None, 0, f"DROID worker timed out after {self.timeout_s:g} s")
            except OSError as e:
                return DroidResult(None, None, 0, f"DROID worker could not start: {e}")
            err = self.dir / "error.json"
            if err.is_file():
                info = json.loads(err.read_text())
                return DroidResult(None, None, int(info.get("keyframes", 0)), str(info["reason"]))
            out = self.dir / "traj.npz"
            if proc.returncode != 0 or not out.is_file():
                tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                return DroidResult(None, None, 0, f"DROID worker failed (exit {proc.returncode}): {tail}")
            with np.load(out) as z:
                traj, kf = z["traj"], int(z["keyframes"])
            if traj.shape != (self.n, 7):
                return DroidResult(
                    None, None, kf, f"DROID returned {traj.shape[0]} poses for {self.n} frames"
                )
            try:
                R, t = tum_to_w2c(traj)
                R, t = anchor_to_first(R, t)
            except ValueError as e:
                return DroidResult(None, None, kf, f"DROID poses unusable: {e}")
            return DroidResult(R, t, kf, None)
        finally:
            self.close()

    def expand(self, per_frame: np.ndarray) -> np.ndarray:
        """Per unique frame values -> per sample (duplicates repeat their frame)."""
        return per_frame[np.asarray(self.sample_to_frame, dtype=np.int64)]


# --------------------------------------------------------------------------------------------------------
# Worker side (runs in DROID's environment)


def _worker_main(folder: str) -> int:
    folder_p = Path(folder)

    def fail(reason: str, keyframes: int = 0) -> int:
        (folder_p / "error.json").write_text(json.dumps({"reason": reason, "keyframes": keyframes}))
        return 0

    meta = json.loads((folder_p / "meta.json").read_text())
    sys.path.insert(0, str(Path(meta["repo"]) / "droid_slam"))
    try:
        import argparse

        import cv2
        import torch
        from droid import Droid  # type: ignore[import-not-found]
    except Exception as e:  # noqa: BLE001  (report any import problem as the reason)
        return fail(f"cannot import DROID-SLAM: {type(e).__name__}: {e}")

    n = int(meta["n"])
    intr = torch.as_tensor(meta["intrinsics"], dtype=torch.float32)
    args = argparse.Namespace(
        weights=meta["weights"],
        buffer=int(meta["buffer"]),
        image_size=list(meta["image_size"]),
        disable_vis=True,
        stereo=False,
        upsample=False,
        beta=0.3,
        filter_thresh=meta["filter_thresh"],
        warmup=8,
        keyframe_thresh=4.0,
        frontend_thresh=16.0,
        frontend_window=25,
        frontend_radius=2,
        frontend_nms=1,
        backend_thresh=22.0,
        backend_radius=2,
        backend_nms=3,
        asynchronous=False,
        frontend_device="cuda",
        backend_device="cuda",
    )

    def stream():
        for i in range(n):
            img = cv2.imread(str(folder_p / "frames" / f"{i:06d}.jpg"), cv2.IMREAD_COLOR)
            yield i, torch.as_tensor(img).permute(2, 0, 1)[None], intr.clone()

    try:
        droid = Droid(args)
        for t, image, k in stream():
            droid.track(t, image, intrinsics=k)
        count = int(droid.video.counter.value)
        if count >= args.buffer - 16:
            return fail(f"keyframe buffer full ({count}); raise camera.droid.buffer", count)
        if count < args.warmup:
            return fail(f"DROID did not initialise: {count} keyframes (static or too little motion)", count)
        kf_t = droid.video.tstamp[:count].cpu().numpy()
        traj = droid.terminate(stream())
    except torch.cuda.OutOfMemoryError as e:
        return fail(f"CUDA out of memory: {e}")
    except Exception as e:  # noqa: BLE001  (DROID's backend raises plain errors on degenerate clips)
        return fail(f"DROID failed: {type(e).__name__}: {e}")
    np.savez(folder_p / "traj.npz", traj=np.asarray(traj, dtype=np.float64), keyframes=count, kf_tstamps=kf_t)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        sys.exit(_worker_main(sys.argv[2]))
    print("usage: camera_droid.py --worker FOLDER", file=sys.stderr)
    sys.exit(2)
