"""QC preview ``OUT/<clip>/preview.mp4``: the source video with, per person, its box and track id, its 2D
keypoints (COCO-17, as tracked) and its 3D skeleton projected into the image from the in-camera parameters
and K of ``smpl.npz``, so that misfits (wrong depth, flipped limbs, identity swaps) are seen at a glance.

Frames are decoded once (``stages.video.iter_chunks``, every source frame), drawn with OpenCV at most
``max_size`` pixels on the longest side and encoded by ffmpeg (H.264, yuv420p) at the source's rate. A
person is drawn on the frames its record covers (matched by timestamp); frames where its record is not
``valid`` get a thin grey box. Without a body model the 3D skeleton is left out.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from models.body_model import NUM_BODY_JOINTS, SMPLX_PARENTS, BodyModel
from stages.files import atomic_path

__all__ = ["write_preview", "project_skeleton"]

FFMPEG = "ffmpeg"

COCO_EDGES = (
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7),
    (6, 8), (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4),
)  # fmt: skip

_PALETTE = ((230, 80, 60), (60, 170, 230), (90, 200, 90), (230, 190, 50), (190, 90, 220), (240, 130, 180))


def project_skeleton(rec: Mapping[str, Any], body: BodyModel) -> tuple[np.ndarray, np.ndarray]:
    """Project a record's 22 body joints into the image: ((T, 22, 2) pixels, (T, 22) in front of the camera),
    from ``incam_global_orient``, ``incam_transl``, ``body_pose``, ``betas`` and ``K`` (OpenCV camera)."""
    X = body.posed_joints(rec["incam_global_orient"], rec["body_pose"], rec["betas"], rec["incam_transl"])
    K = np.asarray(rec["K"], dtype=np.float64)
    uvw = np.einsum("tab,tjb->tja", K, X)
    front = uvw[..., 2] > 1e-6
    uv = uvw[..., :2] / np.where(front, uvw[..., 2], 1.0)[..., None]
    return uv, front


def _rows_for(rec: Mapping[str, Any], times: np.ndarray) -> np.ndarray:
    """Row of the record at each frame time (-1 where the record does not cover it)."""
    t = np.asarray(rec["time_s"], dtype=np.float64)
    if len(t) == 0:
        return np.full(len(times), -1)
    half = 0.5 / float(rec["fps"])
    hi = np.clip(np.searchsorted(t, times), 0, len(t) - 1)
    lo = np.clip(hi - 1, 0, len(t) - 1)
    j = np.where(np.abs(t[lo] - times) <= np.abs(t[hi] - times), lo, hi)
    return np.where(np.abs(t[j] - times) <= half + 1e-6, j, -1)


def write_preview(
    video: Any,
    records: Sequence[Mapping[str, Any]],
    out: str | Path,
    body: BodyModel | None = None,
    max_size: int = 1280,
    chunk_frames: int = 16,
) -> Path:
    """Draw ``records`` (``smpl.npz`` contents) over the probed source ``video`` (``stages.video.VideoInfo``)
    and encode ``out`` (atomic: temp name, then rename). Returns ``out``."""
    from stages.video import iter_chunks

    out = Path(out)
    W, H = int(video.width), int(video.height)
    s = min(1.0, max_size / max(W, H))
    w2, h2 = max(2, int(round(W * s / 2)) * 2), max(2, int(round(H * s / 2)) * 2)
    sx, sy = w2 / W, h2 / H
    proj = [project_skeleton(r, body) if body is not None else None for r in records]
    rate = _rate(video)
    with atomic_path(out) as tmp:
        cmd = [
            FFMPEG, "-nostdin", "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
            "-s", f"{w2}x{h2}", "-r", rate, "-i", "-", "-c:v", "libx264", "-preset", "veryfast", "-crf", "23",
            "-pix_fmt", "yuv420p", "-movflags", "+faststart", str(tmp),
        ]  # fmt: skip
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            for chunk in iter_chunks(video, chunk_frames=chunk_frames, fps=None):
                rows = [_rows_for(r, chunk.time_s) for r in records]
                for n in range(len(chunk)):
                    img = chunk.frames[n]
                    if (w2, h2) != (W, H):
                        img = cv2.resize(img, (w2, h2), interpolation=cv2.INTER_AREA)
                    img = np.ascontiguousarray(img)
                    for r, rr, pj in zip(records, rows, proj, strict=True):
                        if rr[n] >= 0:
                            _draw_person(img, r, int(rr[n]), pj, sx, sy)
                    cv2.putText(
                        img, f"frame {int(chunk.frame_index[n])}", (6, h2 - 8), cv2.FONT_HERSHEY_SIMPLEX,
                        0.45, (255, 255, 255), 1, cv2.LINE_AA,
                    )  # fmt: skip
                    proc.stdin.write(img.tobytes())
            proc.stdin.close()
            err = proc.stderr.read().decode(errors="replace")
            if proc.wait() != 0:
                raise RuntimeError(f"ffmpeg could not encode the preview: {err.strip().splitlines()[-1:]}")
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    return out


def _rate(video: Any) -> str:
    nominal = getattr(video, "fps_nominal", None)
    if nominal and not getattr(video, "vfr", False):
        return str(nominal)
    return f"{float(video.fps):.6f}"


def _draw_person(img: np.ndarray, rec: Mapping[str, Any], t: int, pj: Any, sx: float, sy: float) -> None:
    pid = int(rec.get("person_id", 0))
    color = _PALETTE[pid % len(_PALETTE)]
    valid = bool(rec["valid"][t])
    box_color = color if valid else (150, 150, 150)
    x1, y1, x2, y2 = (float(v) for v in rec["bbox_xyxy"][t])
    p1, p2 = (int(x1 * sx), int(y1 * sy)), (int(x2 * sx), int(y2 * sy))
    cv2.rectangle(img, p1, p2, box_color, 2 if valid else 1)
    cv2.putText(img, f"id {pid}", (p1[0], max(12, p1[1] - 5)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, box_color, 1)
    if pj is not None:
        uv, front = pj
        par = SMPLX_PARENTS[:NUM_BODY_JOINTS]
        bone = (255, 255, 255)
        for j, p in enumerate(par):
            if p >= 0 and front[t, j] and front[t, p]:
                a = (int(uv[t, j, 0] * sx), int(uv[t, j, 1] * sy))
                b = (int(uv[t, p, 0] * sx), int(uv[t, p, 1] * sy))
                cv2.line(img, a, b, bone, 2, cv2.LINE_AA)
    kp = rec["kp2d"][t]
    for a, b in COCO_EDGES:
        if kp[a, 2] > 0.3 and kp[b, 2] > 0.3:
            cv2.line(img, (int(kp[a, 0] * sx), int(kp[a, 1] * sy)), (int(kp[b, 0] * sx), int(kp[b, 1] * sy)),
                     color, 1, cv2.LINE_AA)  # fmt: skip
    for x, y, c in kp:
        if c > 0.3:
            cv2.circle(img, (int(x * sx), int(y * sy)), 2, color, -1, cv2.LINE_AA)
