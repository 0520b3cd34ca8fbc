"""Stage ``camera``: the camera's rotation on the clip's sample timeline, its intrinsics, whether it moved.

GEM reads only the camera's *relative rotation* between consecutive samples (``cam_angvel``: the 6D of
``R_w2c[t+1] R_w2c[t]^T``, at the model rate) and the intrinsics ``K`` (``K_fullimg``), as in the GEM
reference's demo (NVlabs/GENMO). This stage produces both, honestly:

* **Backends** (``camera.backend``): ``static`` (identity), ``opencv`` (CPU visual odometry, rotation-only
  with keyframe parallax correction: ``stages.camera_opencv``), ``droid`` (DROID-SLAM on the GPU in a worker
  process: ``stages.camera_droid``), ``file`` (a camera the user supplies), ``auto`` (the default: the
  ``opencv`` solve, which detects static shots explicitly; a static shot gets the exact identity camera; a
  moving one keeps the ``opencv`` camera, or DROID's when ``camera.droid.in_auto`` is set and DROID is
  installed).
* **Intrinsics**, first that applies: ``camera.focal_px``; ``camera.focal_mm`` (with
  ``camera.sensor_width_mm``, or as a 35 mm-equivalent focal with the diagonal rule); the ``K`` of a
  ``file`` camera; a 35 mm-equivalent focal in the container's metadata (QuickTime/MP4 tags, EXIF of image
  sequences); GEM's default ``f = max(W, H)``. The principal point is the image centre (W/2, H/2). The
  same ``K`` goes to the solve and to GEM, and ``K_source`` records which rule gave it.
* **Honesty**: a moving shot is never silently made static. When the solve fails (too few samples with a
  measurable motion) the camera's ``status`` is ``"failed"`` with a one-line ``reason``, its rotations are
  the identity and ``has_cam_mask`` is all False: GEM is told the camera is unknown.

Conventions: world = the camera of sample 0 (``R_w2c[0] = I``); OpenCV camera axes (x right, y down, z
forward); ``R_w2c[t]`` maps world coordinates to camera t's; rotations are exactly in SO(3). ``valid[t]`` is
True when the motion from sample t to t+1 (what ``cam_angvel[t]`` carries) was measured; the last sample
repeats the one before. Unmeasured samples hold interpolated motion.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.geometry import project_so3, quat_to_matrix, quat_xyzw_to_wxyz, rotation_angle_deg, slerp_resample
from stages.camera_opencv import OpenCVSettings, RotationSolver, SolveResult
from stages.files import remove_files, write_npz_json
from stages.results import Tracks
from stages.spec import ClipRun, PixelJob, StageEnv, StageSpec, not_in_key
from stages.video import FFPROBE, FrameChunk, MediaError, VideoInfo, iter_chunks, list_image_frames

if TYPE_CHECKING:
    from stages.camera_droid import DroidJob

VERSION = "1"

Progress = Callable[[int, int], None]  # (samples done, samples total)

__all__ = [
    "VERSION",
    "Camera",
    "CameraError",
    "CameraFile",
    "CameraSettings",
    "DroidSettings",
    "FileCameraSettings",
    "Intrinsics",
    "cam_angvel",
    "camera_file_fingerprint",
    "load_camera_file",
    "metadata_focal",
    "resolve_intrinsics",
    "run_camera",
]

#: 35 mm film diagonal (mm): 35 mm-equivalent focal lengths convert with f_px = f35 * diag_px / 43.27
FILM_DIAGONAL_MM = 43.27


class CameraError(MediaError):
    """The camera input is unusable (a bad ``file`` camera, a decode that disagrees with the tracks)."""


# --------------------------------------------------------------------------------------------------------
# Settings


class DroidSettings(BaseModel):
    """Options of the ``droid`` backend (DROID-SLAM in a worker process; see ``stages.camera_droid``)."""

    model_config = ConfigDict(extra="forbid")

    weights: str = Field("droid.pth", description="DROID-SLAM weights: registry name or path")
    repo: str | None = Field(
        None, description="DROID-SLAM checkout (holds droid_slam/); default $GENMOCAP_DROID_REPO"
    )
    python: str | None = Field(
        None, description="interpreter of the environment where DROID-SLAM is built; default this one"
    )
    in_auto: bool = Field(False, description="let backend 'auto' use DROID for moving shots when installed")
    filter_thresh: float = Field(
        2.4, gt=0, description="DROID motion filter (lower: more keyframes; 1.0 for slow hand-held)"
    )
    buffer: int | None = Field(
        None, ge=16, description="keyframe slots on the GPU; default min(frames, 2048)"
    )
    timeout_s: float = not_in_key(3600.0, gt=0, description="worker time limit per clip (seconds)")


class FileCameraSettings(BaseModel):
    """A camera supplied by the user (backend ``file``).

    ``path`` is one file (used for every clip) or a folder holding ``<clip file stem>.npz|json|txt``.
    Formats:

    * ``.npz`` / ``.json`` (an object of arrays): exactly one of ``R_w2c`` / ``R_c2w`` (N, 3, 3) or
      ``q_w2c`` / ``q_c2w`` (N, 4, order ``quat_order``); optional ``frame_index`` (N,) source frame
      numbers (0-based, presentation order), or ``time_s`` (N,) seconds from the first frame; optional ``K``
      (3, 3) in display pixels; optional ``valid`` (N,) bool.
    * ``.txt`` / ``.tum``: TUM trajectory rows ``time tx ty tz qx qy qz qw`` (camera-to-world, scalar-last;
      ``#`` comments), ``time`` in seconds from the clip's first frame.

    Without ``frame_index``/``time_s``, N must equal the number of samples (model-rate timeline) or the
    clip's source frame count. Samples between given frames are interpolated (slerp) and stay valid; samples
    outside the given range take the nearest pose and are marked invalid. ``axes: opengl`` converts cameras
    with y up / z backwards (Blender, Maya, USD, ...) to OpenCV's.
    """

    model_config = ConfigDict(extra="forbid")

    path: str | None = Field(None, description="camera file, or folder of <clip stem>.npz|json|txt")
    axes: Literal["opencv", "opengl"] = Field("opencv", description="camera axes of the file")
    quat_order: Literal["xyzw", "wxyz"] = Field("xyzw", description="order of q_w2c / q_c2w components")


class CameraSettings(BaseModel):
    """The camera stage's options (``camera.*``).

    Backend ``file`` reads ``camera.file.path``: a ``.npz`` or ``.json`` holding per-frame world-to-camera
    rotations ``R_w2c`` (N, 3, 3) (or ``R_c2w``, or quaternions ``q_w2c`` / ``q_c2w`` (N, 4) in
    ``camera.file.quat_order``), optionally ``frame_index`` (N,) source frame numbers or ``time_s`` (N,),
    ``K`` (3, 3) and ``valid`` (N,); or a TUM text file (``time tx ty tz qx qy qz qw``, camera-to-world).
    Full rules in ``FileCameraSettings``.
    """

    model_config = ConfigDict(extra="forbid")

    backend: Literal["auto", "static", "opencv", "droid", "file"] = Field(
        "auto",
        description="auto: opencv with static-shot detection (DROID for moving shots if droid.in_auto); "
        "static: identity; opencv: CPU visual odometry; droid: DROID-SLAM (GPU); file: camera.file.path",
    )
    static_mode: Literal["assert", "unknown"] = Field(
        "assert",
        description="a static camera tells GEM 'known, not moving' (assert) or 'unknown' (the demo's -s)",
    )
    focal_px: float | None = Field(None, gt=0, description="focal length in pixels of the displayed picture")
    focal_mm: float | None = Field(
        None, gt=0, description="focal length in mm: real with sensor_width_mm, else 35 mm-equivalent"
    )
    sensor_width_mm: float | None = Field(
        None, gt=0, description="width of the recorded sensor area (mm), along the stored picture's width"
    )
    use_metadata: bool = Field(True, description="read a 35 mm-equivalent focal from the clip's metadata")
    static_max_deg: float = Field(
        0.25, ge=0, description="a shot is static when no sample turns further than this from sample 0"
    )
    static_max_rate_deg: float = Field(
        0.02, ge=0, description="... and no sample-to-sample rotation exceeds this (degrees)"
    )
    min_valid_fraction: float = Field(
        0.5, ge=0, le=1, description="fewer samples with a measured motion: the solve failed (camera unknown)"
    )
    fallback: bool = Field(True, description="droid failing or not installed: fall back to opencv")
    opencv: OpenCVSettings = Field(default_factory=OpenCVSettings)
    droid: DroidSettings = Field(default_factory=DroidSettings)
    file: FileCameraSettings = Field(default_factory=FileCameraSettings)

    @model_validator(mode="after")
    def _check(self) -> CameraSettings:
        if self.focal_px is not None and self.focal_mm is not None:
            raise ValueError("give focal_px or focal_mm, not both")
        if self.sensor_width_mm is not None and self.focal_mm is None:
            raise ValueError("sensor_width_mm needs focal_mm")
        if self.backend == "file" and not self.file.path:
            raise ValueError("backend 'file' needs camera.file.path")
        return self


# --------------------------------------------------------------------------------------------------------
# Intrinsics


@dataclass
class Intrinsics:
    """``K`` (3, 3) float64 in display pixels, the rule that gave it, and a readable detail."""

    K: np.ndarray
    source: Literal["focal_px", "focal_mm", "focal_mm_35mm", "file", "metadata", "default"]
    detail: str

    @property
    def hfov_deg(self) -> float:
        return math.degrees(2 * math.atan(self.K[0, 2] / self.K[0, 0]))


def _K(f: float, w: int, h: int) -> np.ndarray:
    return np.array([[f, 0.0, w / 2.0], [0.0, f, h / 2.0], [0.0, 0.0, 1.0]])


_TAG_35MM = re.compile(r"focal.?length.?in.?35|focal.?length.*35.?mm|35.?mm.?equiv|focal.?35", re.I)


def _first_number(v: Any) -> float | None:
    m = re.search(r"[-+]?\d+(?:\.\d+)?", str(v))
    return float(m.group()) if m else None


def metadata_focal(info: VideoInfo) -> tuple[float, str] | None:
    """A 35 mm-equivalent focal length (mm) from the clip's metadata, with the tag it came from.

    Videos: any container or video-stream tag whose name says "focal length ... 35 mm" (e.g. Apple's
    ``com.apple.quicktime.camera.focal_length.35mm_equivalent``). Image sequences: the first image's EXIF
    ``FocalLengthIn35mmFilm``. None when absent or not a positive number.
    """
    tags: dict[str, Any] = {}
    if info.kind == "images":
        try:
            from PIL import Image

            first = list_image_frames(Path(info.path))[0]
            with Image.open(first) as im:
                exif = im.getexif()
                sub = exif.get_ifd(0x8769) if hasattr(exif, "get_ifd") else {}
                val = sub.get(0xA405) or exif.get(0xA405)
            if val:
                tags["EXIF FocalLengthIn35mmFilm"] = val
        except Exception:  # noqa: BLE001  (no EXIF, unreadable image: no metadata)
            return None
    else:
        try:
            out = subprocess.run(
                [
                    FFPROBE,
                    "-v",
                    "error",
                    "-show_entries",
                    "format_tags:stream_tags",
                    "-of",
                    "json",
                    info.path,
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            meta = json.loads(out.stdout or "{}")
        except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError):
            return None
        tags.update((meta.get("format") or {}).get("tags") or {})
        for s in meta.get("streams") or []:
            tags.update(s.get("tags") or {})
    for k, v in tags.items():
        if _TAG_35MM.search(k):
            f = _first_number(v)
            if f is not None and 4.0 <= f <= 2000.0:
                return f, k
    return None


def resolve_intrinsics(
    info: VideoInfo, settings: CameraSettings, file_K: np.ndarray | None = None
) -> Intrinsics:
    """The clip's ``K`` by the precedence in the module doc (display pixels; principal point at centre)."""
    W, H = info.width, info.height
    diag = math.hypot(W, H)
    if settings.focal_px is not None:
        return Intrinsics(_K(settings.focal_px, W, H), "focal_px", f"camera.focal_px = {settings.focal_px:g}")
    if settings.focal_mm is not None:
        if settings.sensor_width_mm is not None:
            # The sensor's width runs along the stored picture's width (before display rotation).
            f = settings.focal_mm * info.coded_width / settings.sensor_width_mm
            return Intrinsics(
                _K(f, W, H),
                "focal_mm",
                f"{settings.focal_mm:g} mm on a {settings.sensor_width_mm:g} mm wide sensor = {f:.1f} px",
            )
        f = settings.focal_mm * diag / FILM_DIAGONAL_MM
        return Intrinsics(
            _K(f, W, H), "focal_mm_35mm", f"{settings.focal_mm:g} mm (35 mm equiv.) = {f:.1f} px"
        )
    if file_K is not None:
        K = np.asarray(file_K, dtype=np.float64)
        return Intrinsics(K, "file", f"K of the camera file (f = {K[0, 0]:.1f} px)")
    if settings.use_metadata:
        got = metadata_focal(info)
        if got is not None:
            f35, tag = got
            f = f35 * diag / FILM_DIAGONAL_MM
            return Intrinsics(_K(f, W, H), "metadata", f"{tag} = {f35:g} mm (35 mm equiv.) = {f:.1f} px")
    f = float(max(W, H))
    return Intrinsics(_K(f, W, H), "default", f"GEM default f = max(W, H) = {f:g} px")


# --------------------------------------------------------------------------------------------------------
# GEM's camera angular velocity


def cam_angvel(R_w2c: np.ndarray) -> np.ndarray:
    """GEM's ``cam_angvel`` (T, 6) float32 from world-to-camera rotations (T, 3, 3).

    Row t < T-1 is the 6D (first two *rows*, row-major: R00, R01, R02, R10, R11, R12) of
    ``R_w2c[t+1] R_w2c[t]^T``; the last row repeats row T-2 (T = 1 gives the identity 6D). Every rotation is
    projected onto SO(3) first (GEM normalises R00 and R11 with a std of 0.001, so a 0.1 % scale error would
    be a unit input error), and relative rotations within 1e-12 of the identity are the exact identity, so a
    static camera gives exactly (1, 0, 0, 0, 1, 0). Raw values: GEM normalises them itself.
    """
    R = np.asarray(R_w2c, dtype=np.float64)
    if R.ndim != 3 or R.shape[1:] != (3, 3) or len(R) == 0:
        raise ValueError(f"R_w2c must be (T, 3, 3) with T >= 1, got {R.shape}")
    if not np.isfinite(R).all():
        raise ValueError("R_w2c has non-finite values")
    import torch

    from models.gem.rollout import static_cam_angvel
    from models.gem.rotations import matrix_to_rot6d

    if len(R) == 1:
        return static_cam_angvel(1).numpy()
    R = project_so3(R)
    rel = project_so3(R[1:] @ np.transpose(R[:-1], (0, 2, 1)))
    eye = np.abs(rel - np.eye(3)).max(axis=(1, 2)) < 1e-12
    rel[eye] = np.eye(3)
    d6 = matrix_to_rot6d(torch.from_numpy(rel)).numpy()
    return np.concatenate([d6, d6[-1:]]).astype(np.float32)


# --------------------------------------------------------------------------------------------------------
# Result


@dataclass
class Camera:
    """The clip's camera on its sample timeline (T samples; see the module doc for the conventions).

    ``status`` is ``"ok"`` (a camera was measured, imported or the shot is static) or ``"failed"`` (camera
    unknown: identity rotations, ``valid`` all False, ``reason`` says why). ``backend`` is the backend whose
    rotations these are (``static`` when ``auto`` found a static shot), ``requested`` the configured one.
    """

    fps: float
    image_wh: tuple[int, int]
    frame_index: np.ndarray  # (T,) int64 source frame numbers
    time_s: np.ndarray  # (T,) float64 source timestamps
    R_w2c: np.ndarray  # (T, 3, 3) float32
    K: np.ndarray  # (3, 3) float32, also GEM's K_fullimg
    K_source: str
    valid: np.ndarray  # (T,) bool
    backend: str
    requested: str
    status: Literal["ok", "failed"]
    is_static: bool
    static_mode: str = "assert"
    reason: str | None = None
    K_detail: str = ""
    quality: dict[str, np.ndarray] = field(default_factory=dict)  # per-sample arrays
    stats: dict[str, Any] = field(default_factory=dict)  # JSON-safe scalars
    warnings: list[str] = field(default_factory=list)

    @property
    def solved(self) -> bool:
        return self.status == "ok"

    @property
    def has_cam_mask(self) -> np.ndarray:
        """(T,) bool for GEM's ``has_cam_mask``: the camera motion at sample t is known."""
        if not self.solved or (self.is_static and self.static_mode == "unknown"):
            return np.zeros(len(self.valid), dtype=bool)
        return self.valid.copy()

    @property
    def camera_known(self) -> bool:
        """One flag for the whole clip (today's ``estimate_people(camera_known=...)``): the camera was
        solved and GEM may be told so. Samples with ``valid`` False then carry interpolated motion; prefer
        the per-sample ``has_cam_mask`` where the caller accepts it."""
        return bool(self.has_cam_mask.any())

    def cam_angvel(self) -> np.ndarray:
        """(T, 6) float32 GEM ``cam_angvel`` (see the module function)."""
        return cam_angvel(self.R_w2c)

    def summary(self) -> dict[str, Any]:
        """JSON-safe digest for clip.json and batch triage."""
        R = self.R_w2c.astype(np.float64)
        fwd = np.transpose(R, (0, 2, 1))[:, :, 2]  # optical axis in world (camera 0) coordinates
        yaw = np.degrees(np.unwrap(np.arctan2(fwd[:, 0], fwd[:, 2])))
        rel = R[1:] @ np.transpose(R[:-1], (0, 2, 1)) if len(R) > 1 else np.eye(3)[None]
        gaps = _runs(~self.valid)
        inl = self.quality.get("inliers")
        return {
            "backend": self.backend,
            "requested": self.requested,
            "status": self.status,
            "reason": self.reason,
            "is_static": self.is_static,
            "static_mode": self.static_mode,
            "camera_known": self.camera_known,
            "K_source": self.K_source,
            "K_detail": self.K_detail,
            "focal_px": round(float(self.K[0, 0]), 3),
            "hfov_deg": round(math.degrees(2 * math.atan(self.K[0, 2] / self.K[0, 0])), 3),
            "samples": int(len(self.valid)),
            "valid_fraction": round(float(self.valid.mean()), 4) if len(self.valid) else 0.0,
            "largest_invalid_gap": int(max(gaps, default=0)),
            "median_inliers": float(np.median(inl)) if inl is not None and len(inl) else None,
            "net_yaw_deg": round(float(yaw[-1]), 3),
            "max_abs_yaw_deg": round(float(np.abs(yaw).max()), 3),
            "max_rotation_deg": round(float(rotation_angle_deg(R).max()), 4),
            "max_rate_deg_s": round(float(rotation_angle_deg(rel).max() * self.fps), 3),
            "stats": self.stats,
            "warnings": list(self.warnings),
        }

    def to_arrays(self) -> tuple[dict, dict[str, np.ndarray]]:
        """(JSON-safe meta, arrays) for the artifact store and ``camera.npz``."""
        arrays: dict[str, np.ndarray] = {
            "R_w2c": self.R_w2c.astype(np.float32),
            "K": self.K.astype(np.float32),
            "frame_index": self.frame_index.astype(np.int64),
            "time_s": self.time_s.astype(np.float64),
            "valid": self.valid.astype(bool),
            "has_cam_mask": self.has_cam_mask,
            "fps": np.array(self.fps, dtype=np.float64),
            "backend": np.array(self.backend),
            "is_static": np.array(self.is_static),
            "status": np.array(self.status),
            "K_source": np.array(self.K_source),
        }
        for k, v in self.quality.items():
            arrays[f"quality/{k}"] = np.asarray(v)
        meta = {
            "fps": self.fps,
            "image_wh": list(self.image_wh),
            "backend": self.backend,
            "requested": self.requested,
            "status": self.status,
            "is_static": self.is_static,
            "static_mode": self.static_mode,
            "reason": self.reason,
            "K_source": self.K_source,
            "K_detail": self.K_detail,
            "stats": self.stats,
            "warnings": list(self.warnings),
            "summary": self.summary(),
        }
        return meta, arrays

    @classmethod
    def from_arrays(cls, meta: dict, arrays: dict[str, np.ndarray]) -> Camera:
        quality = {k.split("/", 1)[1]: np.asarray(v) for k, v in arrays.items() if k.startswith("quality/")}
        return cls(
            fps=float(meta["fps"]),
            image_wh=(int(meta["image_wh"][0]), int(meta["image_wh"][1])),
            frame_index=np.asarray(arrays["frame_index"], dtype=np.int64),
            time_s=np.asarray(arrays["time_s"], dtype=np.float64),
            R_w2c=np.asarray(arrays["R_w2c"], dtype=np.float32),
            K=np.asarray(arrays["K"], dtype=np.float32),
            K_source=str(meta["K_source"]),
            valid=np.asarray(arrays["valid"], dtype=bool),
            backend=str(meta["backend"]),
            requested=str(meta["requested"]),
            status=meta["status"],
            is_static=bool(meta["is_static"]),
            static_mode=str(meta.get("static_mode", "assert")),
            reason=meta.get("reason"),
            K_detail=str(meta.get("K_detail", "")),
            quality=quality,
            stats=dict(meta.get("stats") or {}),
            warnings=list(meta.get("warnings") or []),
        )


def _runs(mask: np.ndarray) -> list[int]:
    """Lengths of the runs of True in a bool array."""
    out, n = [], 0
    for v in np.asarray(mask, dtype=bool).tolist():
        if v:
            n += 1
        elif n:
            out.append(n)
            n = 0
    if n:
        out.append(n)
    return out


# --------------------------------------------------------------------------------------------------------
# The file backend


@dataclass
class CameraFile:
    """A user camera as read: ``R_w2c`` (N, 3, 3) in OpenCV axes, and how its rows map to the clip."""

    R_w2c: np.ndarray
    frame_index: np.ndarray | None
    time_s: np.ndarray | None
    K: np.ndarray | None
    valid: np.ndarray | None
    source: str


_GL = np.diag([1.0, -1.0, -1.0])


def load_camera_file(path: Path, settings: FileCameraSettings) -> CameraFile:
    """Read a user camera (formats in ``FileCameraSettings``) and convert it to OpenCV world-to-camera.

    Raises:
        CameraError: unreadable file, unknown keys, wrong shapes, non-finite or non-rotation matrices.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    data: dict[str, Any]
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        elif suffix == ".json":
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                raise CameraError(f"{path}: expected an object of arrays (R_w2c, frame_index, ...)")
        elif suffix in (".txt", ".tum"):
            rows = np.loadtxt(path, comments="#", ndmin=2)
            if rows.shape[1] != 8:
                raise CameraError(f"{path}: TUM rows need 8 columns (time tx ty tz qx qy qz qw)")
            data = {"time_s": rows[:, 0], "q_c2w": rows[:, 4:8]}
            settings = settings.model_copy(update={"quat_order": "xyzw"})
        else:
            raise CameraError(f"{path}: camera files are .npz, .json or .txt/.tum (TUM)")
    except CameraError:
        raise
    except (OSError, ValueError) as e:
        raise CameraError(f"{path}: cannot read camera file: {e}") from e

    keys = [k for k in ("R_w2c", "R_c2w", "q_w2c", "q_c2w") if k in data]
    if len(keys) != 1:
        raise CameraError(f"{path}: give exactly one of R_w2c, R_c2w, q_w2c, q_c2w (found {keys or 'none'})")
    key = keys[0]
    try:
        raw = np.asarray(data[key], dtype=np.float64)
        if key.startswith("q"):
            if raw.ndim != 2 or raw.shape[1] != 4:
                raise CameraError(f"{path}: {key} must be (N, 4), got {raw.shape}")
            R = quat_to_matrix(raw if settings.quat_order == "wxyz" else quat_xyzw_to_wxyz(raw))
        else:
            if raw.ndim != 3 or raw.shape[1:] != (3, 3):
                raise CameraError(f"{path}: {key} must be (N, 3, 3), got {raw.shape}")
            R = raw
    except (TypeError, ValueError) as e:
        raise CameraError(f"{path}: {key} is not numeric: {e}") from e
    if len(R) == 0 or not np.isfinite(R).all():
        raise CameraError(f"{path}: {key} is empty or has non-finite values")
    if key.endswith("c2w"):
        R = np.transpose(R, (0, 2, 1))
    err = np.abs(R @ np.transpose(R, (0, 2, 1)) - np.eye(3)).max()
    if err > 1e-3 or (np.linalg.det(R) < 0).any():
        raise CameraError(f"{path}: {key} holds matrices that are not rotations (|R R^T - I| = {err:.2g})")
    R = project_so3(R)
    if settings.axes == "opengl":
        R = _GL @ R  # camera axes y up / z back -> y down / z forward
    n = len(R)

    def opt(name: str, shape_tail: tuple, dtype) -> np.ndarray | None:
        if name not in data:
            return None
        a = np.asarray(data[name], dtype=dtype)
        want = shape_tail if name == "K" else (n, *shape_tail)
        if a.shape != want:
            raise CameraError(f"{path}: {name} must have shape {want}, got {a.shape}")
        return a

    fi = opt("frame_index", (), np.float64)
    ts = opt("time_s", (), np.float64)
    K = opt("K", (3, 3), np.float64)
    valid = opt("valid", (), bool)
    for name, a in (("frame_index", fi), ("time_s", ts)):
        if a is not None and (not np.isfinite(a).all() or np.any(np.diff(a) <= 0)):
            raise CameraError(f"{path}: {name} must be finite and strictly increasing")
    return CameraFile(R, None if fi is None else fi.astype(np.int64), ts, K, valid, str(path))


def _find_camera_file(settings: FileCameraSettings, info: VideoInfo) -> Path:
    p = Path(settings.path or "").expanduser()
    if p.is_file():
        return p
    if p.is_dir():
        stem = Path(info.path).stem if info.kind == "video" else Path(info.path).name
        for ext in (".npz", ".json", ".txt", ".tum"):
            if (p / f"{stem}{ext}").is_file():
                return p / f"{stem}{ext}"
        raise CameraError(f"no camera file for this clip in {p} (looked for {stem}.npz|json|txt|tum)")
    raise CameraError(f"camera file not found: {p}")


def camera_file_fingerprint(settings: CameraSettings, info: VideoInfo) -> str | None:
    """sha256 of the user camera file this clip would read (for cache keys), None unless backend ``file``.

    Raises:
        CameraError: no camera file for this clip.
    """
    if settings.backend != "file":
        return None
    import hashlib

    return hashlib.sha256(_find_camera_file(settings.file, info).read_bytes()).hexdigest()


def _slerp_at(R: np.ndarray, x: np.ndarray, xq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotations at positions ``xq`` from keys (x, R) (x increasing): slerp inside, nearest outside;
    returns (R (Q, 3, 3), inside (Q,) bool)."""
    return slerp_resample(x, R, xq), (xq >= x[0]) & (xq <= x[-1])


def _camera_from_file(cf: CameraFile, info: VideoInfo, tracks: Tracks) -> tuple[np.ndarray, np.ndarray, str]:
    """(R_w2c (T,3,3) anchored to sample 0, valid (T,), how rows were matched)."""
    sfi, sts = tracks.sample_frame_index, tracks.sample_time_s
    T, n = len(sfi), len(cf.R_w2c)
    valid_rows = np.ones(n, bool) if cf.valid is None else cf.valid
    if cf.frame_index is not None:
        R, inside = _slerp_at(cf.R_w2c, cf.frame_index.astype(np.float64), sfi.astype(np.float64))
        # A sample is measured when its frame is given (or lies between given frames) and is valid.
        vi = np.interp(sfi, cf.frame_index, valid_rows.astype(np.float64)) > 0.999
        valid, how = inside & vi, "frame_index"
    elif cf.time_s is not None:
        R, inside = _slerp_at(cf.R_w2c, cf.time_s, sts)
        vi = np.interp(sts, cf.time_s, valid_rows.astype(np.float64)) > 0.999
        valid, how = inside & vi, "time_s"
    elif n == T:
        R, valid, how = cf.R_w2c, valid_rows.copy(), "one row per sample"
    elif n == info.frame_count:
        R, valid, how = cf.R_w2c[sfi], valid_rows[sfi], "one row per source frame"
    else:
        raise CameraError(
            f"{cf.source}: {n} rows match neither the {T} samples nor the {info.frame_count} source frames; "
            "give frame_index or time_s"
        )
    R = project_so3(R @ R[0].T)
    R[0] = np.eye(3)
    # valid[t] is about the motion t -> t+1: both ends must be known.
    v = valid.copy()
    v[:-1] &= valid[1:]
    if T > 1:
        v[-1] = v[-2]
    return R, v, how


# --------------------------------------------------------------------------------------------------------
# The stage


def _boxes_per_sample(tracks: Tracks) -> list[np.ndarray]:
    T = len(tracks.sample_frame_index)
    per: list[list[np.ndarray]] = [[] for _ in range(T)]
    for p in tracks.people:
        for si, box in zip(np.asarray(p.sample_index).tolist(), np.asarray(p.xyxy), strict=True):
            if 0 <= si < T:
                per[si].append(box)
    return [np.asarray(b, dtype=np.float32).reshape(-1, 4) for b in per]


def _static_check(R: np.ndarray, settings: CameraSettings) -> tuple[bool, float, float]:
    """(static?, largest rotation from sample 0, largest sample-to-sample rotation), degrees."""
    if len(R) < 2:
        return True, 0.0, 0.0
    rel = R[1:] @ np.transpose(R[:-1], (0, 2, 1))
    max_rot = float(rotation_angle_deg(R).max())
    max_rate = float(rotation_angle_deg(rel).max())
    return (
        (max_rot <= settings.static_max_deg and max_rate <= settings.static_max_rate_deg),
        max_rot,
        max_rate,
    )


class _Builder:
    """Shared pieces of every result of one clip."""

    def __init__(self, info: VideoInfo, tracks: Tracks, settings: CameraSettings, intr: Intrinsics):
        self.info, self.tracks, self.settings, self.intr = info, tracks, settings, intr
        self.T = len(tracks.sample_frame_index)
        self.warnings: list[str] = []

    def make(
        self,
        R: np.ndarray,
        valid: np.ndarray,
        backend: str,
        *,
        is_static: bool,
        status: Literal["ok", "failed"] = "ok",
        reason: str | None = None,
        quality: dict[str, np.ndarray] | None = None,
        stats: dict[str, Any] | None = None,
    ) -> Camera:
        return Camera(
            fps=float(self.tracks.fps),
            image_wh=(int(self.info.width), int(self.info.height)),
            frame_index=np.asarray(self.tracks.sample_frame_index, dtype=np.int64),
            time_s=np.asarray(self.tracks.sample_time_s, dtype=np.float64),
            R_w2c=np.asarray(R, dtype=np.float32),
            K=self.intr.K.astype(np.float32),
            K_source=self.intr.source,
            K_detail=self.intr.detail,
            valid=np.asarray(valid, dtype=bool),
            backend=backend,
            requested=self.settings.backend,
            status=status,
            is_static=is_static,
            static_mode=self.settings.static_mode,
            reason=reason,
            quality=quality or {},
            stats=stats or {},
            warnings=list(self.warnings),
        )

    def static(self, backend: str = "static", **kw: Any) -> Camera:
        eye = np.broadcast_to(np.eye(3), (self.T, 3, 3)).copy()
        return self.make(eye, np.ones(self.T, bool), backend, is_static=True, **kw)

    def failed(self, backend: str, reason: str, **kw: Any) -> Camera:
        eye = np.broadcast_to(np.eye(3), (self.T, 3, 3)).copy()
        return self.make(
            eye, np.zeros(self.T, bool), backend, is_static=False, status="failed", reason=reason, **kw
        )

    def from_solve(self, res: SolveResult, backend: str) -> Camera:
        """A backend's solve -> Camera: the failure rule, then explicit static detection."""
        s = self.settings
        frac = float(res.valid.mean()) if len(res.valid) else 0.0
        stats = dict(res.stats)
        stats["valid_fraction"] = round(frac, 4)
        if self.T > 1 and frac < s.min_valid_fraction:
            med = stats.get("median_inliers")
            why = (
                f"{backend}: the camera motion was measurable on only {100 * frac:.0f}% of samples"
                + (f" (median {med:g} inliers)" if med is not None else "")
                + f", below camera.min_valid_fraction = {s.min_valid_fraction:g}; camera unknown to GEM"
            )
            return self.failed(backend, why, quality=res.quality, stats=stats)
        static, max_rot, max_rate = _static_check(res.R_w2c, s)
        stats["measured_max_rotation_deg"] = round(max_rot, 5)
        stats["measured_max_rate_deg"] = round(max_rate, 5)
        if static:
            stats["static_detected_by"] = backend
            return self.static(backend, quality=res.quality, stats=stats)
        return self.make(res.R_w2c, res.valid, backend, is_static=False, quality=res.quality, stats=stats)


def run_camera(
    info: VideoInfo,
    tracks: Tracks,
    settings: CameraSettings,
    *,
    fps: float | None,
    chunk_frames: int,
    progress: Progress | None = None,
    total: int | None = None,
    droid_weights: Path | None = None,
    chunks: Iterable[FrameChunk] | None = None,
) -> Camera:
    """The camera of one clip on the track stage's sample timeline.

    Args:
        info: the probed clip.
        tracks: the clip's tracks: their sample timeline is the camera's (the clip is decoded again with the
            same ``fps`` and must give the same samples), and every person box is masked out of the solve.
        fps: model rate the tracks were resampled to (None: every source frame), as for ``run_track``.
        chunk_frames: frames decoded per chunk.
        progress: called with (samples done, ``total``) after each chunk.
        droid_weights: resolved path of ``camera.droid.weights`` (the pipeline's registry resolves it).
        chunks: decoded chunks from a decode shared with other stages (default: decode the clip here).
    Returns:
        The Camera; ``status == "failed"`` (with ``reason``) when no camera could be measured.
    Raises:
        CameraError: a bad ``file`` camera, or a decode whose samples differ from the tracks';
        MediaError: the clip cannot be decoded.
    """
    T = len(tracks.sample_frame_index)
    if T == 0:
        raise CameraError("the tracks have no samples")
    s = settings
    cf: CameraFile | None = None
    if s.backend == "file":
        cf = load_camera_file(_find_camera_file(s.file, info), s.file)
    intr = resolve_intrinsics(info, s, cf.K if cf is not None else None)
    b = _Builder(info, tracks, s, intr)

    if s.backend == "static":
        return b.static("static", stats={"note": "camera.backend = static: the camera is declared static"})
    if cf is not None:
        R, valid, how = _camera_from_file(cf, info, tracks)
        is_static = bool(np.abs(R - np.eye(3)).max() < 1e-9)
        stats = {"file": cf.source, "matched_by": how, "rows": int(len(cf.R_w2c))}
        return b.make(R, valid, "file", is_static=is_static, stats=stats)
    if T == 1:
        return b.static(s.backend if s.backend != "auto" else "static", stats={"note": "a single sample"})

    # Which pixel backends run on this decode.
    want_droid = s.backend == "droid" or (s.backend == "auto" and s.droid.in_auto)
    droid_ok, droid_why = False, ""
    if want_droid:
        from stages.camera_droid import droid_available

        if droid_weights is None and Path(s.droid.weights).expanduser().is_file():
            droid_weights = Path(s.droid.weights).expanduser()
        droid_ok, droid_why = droid_available(s.droid.python, s.droid.repo, droid_weights)
        if not droid_ok:
            if s.backend == "droid" and not s.fallback:
                return b.failed("droid", f"droid backend unavailable: {droid_why}")
            b.warnings.append(f"droid unavailable ({droid_why}); used opencv")
    run_opencv = s.backend in ("opencv", "auto") or (s.backend == "droid" and (s.fallback or not droid_ok))
    solver = RotationSolver(intr.K, (info.width, info.height), s.opencv) if run_opencv else None
    job = None
    if droid_ok:
        from stages.camera_droid import DroidJob

        job = DroidJob(
            intr.K,
            (info.width, info.height),
            weights=Path(droid_weights or s.droid.weights),
            repo=s.droid.repo,
            python=s.droid.python,
            filter_thresh=s.droid.filter_thresh,
            buffer=s.droid.buffer,
            box_margin=s.opencv.box_margin,
            timeout_s=s.droid.timeout_s,
        )

    try:
        return _solve_pixels(
            info,
            tracks,
            s,
            b,
            solver,
            job,
            fps=fps,
            chunk_frames=chunk_frames,
            progress=progress,
            total=total,
            chunks=chunks,
        )
    finally:
        if job is not None:
            job.close()


def _solve_pixels(
    info: VideoInfo,
    tracks: Tracks,
    s: CameraSettings,
    b: _Builder,
    solver: RotationSolver | None,
    job: DroidJob | None,
    *,
    fps: float | None,
    chunk_frames: int,
    progress: Progress | None,
    total: int | None,
    chunks: Iterable[FrameChunk] | None = None,
) -> Camera:
    """Decode once, feed the pixel backends, and choose the result (see ``run_camera``)."""
    T = b.T
    boxes = _boxes_per_sample(tracks)
    sfi = np.asarray(tracks.sample_frame_index, dtype=np.int64)
    k = 0
    if chunks is None:
        chunks = iter_chunks(info, chunk_frames=chunk_frames, fps=fps)
    for chunk in chunks:
        n = len(chunk)
        if k + n > T or not np.array_equal(chunk.frame_index, sfi[k : k + n]):
            raise CameraError(
                f"the decode gives other samples than the tracks (sample {k}): re-run the track stage"
            )
        for j in range(n):
            dup = k > 0 and sfi[k] == sfi[k - 1]
            if solver is not None:
                solver.push(chunk.frames[j], boxes[k], duplicate=dup, time_s=float(chunk.time_s[j]))
            if job is not None:
                job.add(chunk.frames[j], boxes[k], duplicate=dup)
            k += 1
        if progress is not None:
            progress(k, total or T)
    if k != T:
        raise CameraError(f"the decode gave {k} samples, the tracks have {T}: re-run the track stage")

    cam_cv = b.from_solve(solver.finish(), "opencv") if solver is not None else None
    if job is None:
        assert cam_cv is not None
        if s.backend == "auto" and cam_cv.solved and cam_cv.is_static:
            cam_cv.backend = "static"
        return cam_cv
    if s.backend == "auto" and cam_cv is not None and cam_cv.solved and cam_cv.is_static:
        cam_cv.backend = "static"  # DROID does not initialise on static shots; nothing to ask it
        return cam_cv

    res = job.run()
    if res.R_w2c is None:
        why = f"droid failed: {res.reason}"
        if cam_cv is not None:
            b.warnings.append(why + "; fell back to opencv")
            cam_cv.warnings = list(b.warnings)
            return cam_cv
        return b.failed("droid", why)
    R = job.expand(res.R_w2c)
    quality = {"droid_keyframes": np.full(T, res.keyframes, dtype=np.int32)}
    stats: dict[str, Any] = {"keyframes": res.keyframes}
    if cam_cv is not None and cam_cv.solved:
        diff = rotation_angle_deg(R @ np.transpose(cam_cv.R_w2c.astype(np.float64), (0, 2, 1)))
        stats["max_diff_vs_opencv_deg"] = round(float(diff.max()), 4)
    solve = SolveResult(project_so3(R), np.ones(T, bool), quality, stats)
    return b.from_solve(solve, "droid")


# --------------------------------------------------------------------------------------------------------
# The stage contract


def _weights(cfg, env: StageEnv | None) -> dict[str, str]:
    cam = cfg.camera
    # a missing DROID falls back to opencv (with a warning) unless fallback is off
    return {"droid": cam.droid.weights} if cam.backend == "droid" and not cam.fallback else {}


def _key_inputs(run: ClipRun) -> dict:
    s: CameraSettings = run.cfg.camera
    inputs: dict[str, Any] = {}
    if s.backend == "file":
        inputs["file"] = camera_file_fingerprint(s, run.results["probe"])
    if s.backend == "droid" or (s.backend == "auto" and s.droid.in_auto):
        w = run.env.locate(s.droid.weights)
        inputs["droid"] = run.env.file_hash(w) if w else None
    return inputs


def _solve(run: ClipRun, chunks: Iterable[FrameChunk] | None = None) -> Camera:
    env, cfg = run.env, run.cfg
    tracks: Tracks = run.results["track"]
    total = len(tracks.sample_frame_index)
    return run_camera(
        run.results["probe"],
        tracks,
        cfg.camera,
        fps=cfg.decode.fps,
        chunk_frames=cfg.decode.chunk_frames,
        progress=env.progress.stage(run.clip_id, "camera", total),
        total=total,
        droid_weights=env.locate(cfg.camera.droid.weights),
        chunks=chunks,
    )


def _pixel_pass(run: ClipRun, names: tuple[str, ...]) -> PixelJob | None:
    """The solve as a consumer of the crops decode (static and file cameras need no pixels)."""
    cfg = run.cfg
    if cfg.camera.backend in ("static", "file"):
        return None
    return PixelJob(
        run.results["probe"],
        cfg.decode.fps,
        cfg.decode.chunk_frames,
        names,
        lambda chunks: {"camera": _solve(run, chunks)},
    )


def _warnings(run: ClipRun, cam: Camera) -> list[str]:
    out = [] if cam.solved else [f"camera unknown: {cam.reason} (GEM was told the camera is unknown)"]
    return out + [f"camera: {w}" for w in cam.warnings]


SPEC = StageSpec(
    name="camera",
    version=VERSION,
    settings=CameraSettings,
    needs=("probe", "track"),
    reads=("decode",),
    weights=_weights,
    key_inputs=_key_inputs,
    compute=_solve,
    pixel_pass=_pixel_pass,
    save=lambda cam: cam.to_arrays(),
    load=Camera.from_arrays,
    # ``camera.npz`` / ``camera.json``: the result at the model rate (``Camera.to_arrays``)
    publish=lambda run, result, clip_dir: write_npz_json(clip_dir, "camera", *result.to_arrays()),
    unpublish=lambda run, clip_dir: remove_files(clip_dir, "camera.npz", "camera.json"),
    report=lambda cam: {"camera": cam.summary() if cam is not None else None},
    warnings=_warnings,
)
