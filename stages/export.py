"""Stage ``export``: the canonical per-person result ``smpl.npz`` and the files DCC tools open (FBX, BVH,
USD), the solved camera and an optional QC preview.

Input (per person, what the runner hands over; ``export_person``): ``motion``, a dict of arrays on the
*model-rate* sample timeline of the clip over the person's span of L samples:

- ``sample_index`` (L,) int increasing clip sample numbers; ``present`` (L,) bool (tracked at that sample);
- world ``global_orient`` (L, 3) axis-angle and ``transl`` (L, 3) metres, y up (the clip frame);
  ``body_pose`` (L, 63) axis-angle of the 21 SMPL-X body joints; ``betas`` (10,);
- in-camera ``incam_global_orient`` (L, 3), ``incam_transl`` (L, 3) (OpenCV camera frame);
- ``contacts`` (L, 6) probabilities; ``K`` (L, 3, 3); ``kp2d`` (L, 17, 3) COCO-17 (x, y, conf) or None;
  ``bbox_xyxy`` (L, 4) pixels;

plus the clip's ``ClipTimeline`` (source frame and time of each clip sample, model and source rates, VFR
timestamps, timecode) and optionally the solved camera (``CameraTrack``, in the same world frame).

Resampling to the source rate: every clip sample has a time (its source frame's timestamp, or ``k /
model_fps`` when the source is slower than the model rate and frames repeat); each output frame is placed on
that timeline by its own timestamp, rotations are slerped and everything else is interpolated linearly between
the two neighbouring samples. A frame that falls exactly on a sample gets that sample's values. Frames whose
neighbouring samples are not both ``present`` are kept with ``valid = False``; source frames outside the
person's span are not emitted.

Exports never raise for a missing body model or a failing writer: each format that could not be written gets a
one-line reason (``ExportResult.failed``), and ``summary_line`` folds them into one line for the clip report.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from models.body_model import JOINT_NAMES, NUM_BODY_JOINTS, NUM_JOINTS, BodyModel, BodyModelError
from models.geometry import (
    axis_angle_to_matrix,
    axis_angle_to_quat,
    matrix_to_quat,
    quat_continuous,
    quat_slerp,
    quat_to_axis_angle,
    quat_to_matrix,
)
from stages.files import atomic_write
from stages.rig import TO_Z_UP, CameraRig, Rig, axis_matrix, unit_scale
from stages.spec import ClipRun, StageSpec, not_in_key

VERSION = "1"
SCHEMA = "genmocap.smpl/1"
CAMERA_SCHEMA = "genmocap.camera/1"
FORMATS = ("fbx", "bvh", "usd")
NUM_KP = 17

#: Joints of the six contact probabilities (GEM's ``static_conf_logits`` order).
CONTACT_JOINTS = ("left_ankle", "left_foot", "right_ankle", "right_foot", "left_wrist", "right_wrist")

#: Frame rates that files must carry exactly; a measured rate within 2e-4 (relative) snaps to one of them.
STANDARD_RATES = (
    24000 / 1001,
    24.0,
    25.0,
    30000 / 1001,
    30.0,
    48000 / 1001,
    48.0,
    50.0,
    60000 / 1001,
    60.0,
    72.0,
    90.0,
    96.0,
    100.0,
    120000 / 1001,
    120.0,
    144.0,
    240.0,
)

FILE_NAMES = {"fbx": "motion.fbx", "bvh": "motion.bvh"}
#: The camera in the clip frame at the source rate, beside the people (the camera stage's own result, at the
#: model rate and relative to its first sample, is ``camera.npz``).
CAMERA_FILE = "camera_world.npz"


class ExportSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    formats: list[Literal["fbx", "bvh", "usd"]] = Field(
        default_factory=lambda: list(FORMATS),
        description="files written per person besides smpl.npz (each needs the SMPL-X body model)",
    )
    root_motion: Literal["world", "in_place"] = Field(
        "world", description="world: the pelvis travels; in_place: horizontal pelvis motion removed"
    )
    up: Literal["y", "z"] = Field(
        "y", description="up axis of the files (y: Maya, MotionBuilder; z: Blender, Unreal)"
    )
    units: Literal["cm", "m"] = Field("cm", description="length unit of the files (FBX, BVH, USD)")
    fps: Literal["source"] | float = Field(
        "source",
        description="rate of smpl.npz and files: 'source' (a key per source frame) or a number",
    )
    hands: bool = Field(False, description="add jaw, eyes and finger joints (at rest) to the skeleton")
    mesh: bool = Field(False, description="add the skinned SMPL-X mesh (shaped, rest pose) to FBX and USD")
    camera: bool = Field(True, description="add the solved camera to FBX and USD when it is known")
    usd_format: Literal["usda", "usdc"] = Field("usda", description="USD text (usda) or binary (usdc)")
    preview: bool = Field(False, description="QC video preview.mp4 per clip (slow: decodes and encodes)")
    preview_max_size: int = Field(1280, ge=64, description="longest side of the preview in pixels")
    timeout_s: float = not_in_key(600.0, gt=0, description="time limit of one Blender (FBX) export")
    verify: bool = not_in_key(
        False, description="read every file back and record the max joint error in mm (slow: FBX twice)"
    )

    @field_validator("formats")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(v))

    @field_validator("fps")
    @classmethod
    def _fps(cls, v: Any) -> Any:
        if v != "source" and not float(v) > 0:
            raise ValueError("must be 'source' or a positive number")
        return v


def standard_rate(fps: float) -> float:
    """``fps`` snapped to the nearest standard rate (24000/1001, 25, 30000/1001, ...) when within 2e-4
    (relative), else unchanged. Timestamps quantised by the container make measured rates slightly off."""
    best = min(STANDARD_RATES, key=lambda r: abs(r - fps))
    return float(best) if abs(best - fps) <= 2e-4 * fps else float(fps)


# --------------------------------------------------------------------------------------------------------
# Inputs


@dataclass
class ClipTimeline:
    """The clip's sample timeline and its source video.

    ``sample_frame_index`` (S,) int source frame of each clip sample; ``sample_time_s`` (S,) seconds of that
    frame (relative to the first frame; informational: times are taken from ``source_times`` or ``f / fps``
    so that every format agrees); ``model_fps`` the sampling rate; ``source_fps`` the video's average
    rate; ``source_frame_count``; ``source_times`` (N,) per-source-frame timestamps (seconds from the first
    frame) for VFR sources, else None (frame f is at ``f / source_fps``); ``timecode`` the SMPTE start
    timecode or None; ``image_wh`` the display size (for the camera and the preview).
    """

    sample_frame_index: np.ndarray
    sample_time_s: np.ndarray
    model_fps: float
    source_fps: float
    source_frame_count: int
    source_times: np.ndarray | None = None
    timecode: str | None = None
    image_wh: tuple[int, int] | None = None

    @property
    def fps(self) -> float:
        """The source rate snapped to a standard rate (``standard_rate``)."""
        return standard_rate(float(self.source_fps))

    def frame_times(self, frames: np.ndarray) -> np.ndarray:
        """Seconds (from the first frame) of source frames."""
        frames = np.asarray(frames, dtype=np.int64)
        if self.source_times is not None:
            return np.asarray(self.source_times, dtype=np.float64)[frames]
        return frames / self.fps

    def sample_times(self) -> np.ndarray:
        """(S,) strictly increasing time of every clip sample: the time of its source frame (computed like
        ``frame_times``, so a source frame that was sampled gets that sample's values exactly), or the
        sampling grid ``k / model_fps`` when frames repeat (a source slower than the model rate)."""
        t = self.frame_times(self.sample_frame_index)
        if len(t) < 2 or np.all(np.diff(t) > 0):
            return t
        return np.arange(len(t), dtype=np.float64) / float(self.model_fps)


@dataclass
class CameraTrack:
    """The solved camera on the clip's sample timeline, in the *export world frame* (the clip frame of
    ``stages.postprocess``: y up, metres): ``x_cam = R_w2c @ x_world + t_w2c`` in OpenCV camera axes (x right,
    y down, z forward). ``R_w2c`` (S, 3, 3); ``t_w2c`` (S, 3) or None (camera at the world origin); ``K``
    (3, 3) or (S, 3, 3) pixels. Use ``camera_in_clip_frame`` to build it from the camera stage's output."""

    R_w2c: np.ndarray
    t_w2c: np.ndarray | None
    K: np.ndarray


def camera_in_clip_frame(
    R_w2c_cam0: np.ndarray, clip_from_cam0: np.ndarray, camera_height_m: float
) -> tuple[np.ndarray, np.ndarray]:
    """World-to-camera ``(R_w2c, t_w2c)`` in the clip frame from the camera stage's rotations (world = camera
    of the first sample) and the clip frame of ``stages.postprocess`` (``clip_from_cam0`` = its rotation B;
    the first camera stands ``camera_height_m`` above the clip origin, a rotation-only camera)."""
    R = np.asarray(R_w2c_cam0, dtype=np.float64) @ np.asarray(clip_from_cam0, dtype=np.float64).T
    C = np.array([0.0, float(camera_height_m), 0.0])
    return R, -(R @ C)


# --------------------------------------------------------------------------------------------------------
# The canonical record (smpl.npz)


@dataclass
class _Interp:
    """Where output frames fall on a person's samples: between rows i0 and i0 + 1 with weight w."""

    i0: np.ndarray
    w: np.ndarray
    n: int

    @property
    def i1(self) -> np.ndarray:
        return np.minimum(self.i0 + 1, self.n - 1)

    def lerp(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        w = self.w.reshape(-1, *([1] * (x.ndim - 1)))
        out = (1.0 - w) * x[self.i0] + w * x[self.i1]
        exact = self.w == 0
        out[exact] = x[self.i0[exact]]
        return out

    def slerp_aa(self, aa: np.ndarray) -> np.ndarray:
        """Axis-angle (L, ..., 3) slerped; rows that fall on a sample keep its value exactly."""
        aa = np.asarray(aa, dtype=np.float64)
        q = axis_angle_to_quat(aa)
        w = self.w.reshape(-1, *([1] * (q.ndim - 1)))
        out = quat_to_axis_angle(quat_slerp(q[self.i0], q[self.i1], w))
        exact = self.w == 0
        out[exact] = aa[self.i0[exact]]
        return out


def _interp(times: np.ndarray, sample_t: np.ndarray) -> _Interp:
    n = len(sample_t)
    if n == 1:
        z = np.zeros(len(times), dtype=np.int64)
        return _Interp(z, np.zeros(len(times)), 1)
    u = np.interp(times, sample_t, np.arange(n, dtype=np.float64))
    i0 = np.minimum(np.floor(u).astype(np.int64), n - 2)
    w = u - i0
    w[np.abs(w) < 1e-9] = 0.0
    hit1 = np.abs(w - 1.0) < 1e-9
    i0[hit1] += 1
    w[hit1] = 0.0
    return _Interp(np.minimum(i0, n - 1), w, n)


def _output_timeline(
    tl: ClipTimeline, s_first: int, s_last: int, sample_t: np.ndarray, fps: Literal["source"] | float
) -> tuple[np.ndarray, np.ndarray, float]:
    """Output frame numbers, their times and rate for a person spanning clip samples s_first..s_last."""
    if fps == "source":
        f0 = int(tl.sample_frame_index[s_first])
        f1 = int(tl.sample_frame_index[s_last])
        frames = np.arange(f0, f1 + 1, dtype=np.int64)
        return frames, tl.frame_times(frames), tl.fps
    rate = standard_rate(float(fps))
    t0, t1 = sample_t[0], sample_t[-1]
    frames = np.arange(math.ceil(t0 * rate - 1e-6), math.floor(t1 * rate + 1e-6) + 1, dtype=np.int64)
    return frames, frames / rate, rate


def build_record(
    motion: Mapping[str, Any],
    timeline: ClipTimeline,
    person_id: int = 0,
    fps: Literal["source"] | float = "source",
) -> dict[str, Any]:
    """The canonical result of one person (schema ``genmocap.smpl/1``, see the README) from its model-rate
    ``motion`` (module docstring) resampled onto source frames (``fps="source"``) or a uniform rate."""
    s = np.asarray(motion["sample_index"], dtype=np.int64)
    if s.ndim != 1 or len(s) == 0 or np.any(np.diff(s) <= 0):
        raise ValueError(f"person {person_id}: sample_index must be non-empty and increasing")
    L = len(s)
    present = np.asarray(motion.get("present", np.ones(L, bool)), dtype=bool)
    sample_t = timeline.sample_times()[s]
    frames, times, rate = _output_timeline(timeline, int(s[0]), int(s[-1]), sample_t, fps)
    ip = _interp(times, sample_t)

    body = np.asarray(motion["body_pose"], dtype=np.float64).reshape(L, NUM_BODY_JOINTS - 1, 3)
    T = len(frames)
    valid = np.where(ip.w == 0, present[ip.i0], present[ip.i0] & present[ip.i1])
    contacts = motion.get("contacts")
    contacts = np.zeros((L, 0)) if contacts is None else np.asarray(contacts, dtype=np.float64)
    kp2d = motion.get("kp2d")
    kp = np.zeros((T, NUM_KP, 3)) if kp2d is None else ip.lerp(np.asarray(kp2d).reshape(L, NUM_KP, 3))
    kp[~valid, :, 2] = 0.0
    bbox = motion.get("bbox_xyxy")
    K = motion.get("K")
    rec: dict[str, Any] = {
        "schema": SCHEMA,
        "model_type": "smplx",
        "gender": "neutral",
        "person_id": int(person_id),
        "fps": float(rate),
        "source_fps": float(timeline.fps),
        "timecode": timeline.timecode or "",
        "frame_index": frames,
        "time_s": times.astype(np.float64),
        "betas": np.asarray(motion["betas"], dtype=np.float32).reshape(-1)[:10],
        "global_orient": ip.slerp_aa(motion["global_orient"]).astype(np.float32),
        "transl": ip.lerp(motion["transl"]).astype(np.float32),
        "body_pose": ip.slerp_aa(body).reshape(T, 63).astype(np.float32),
        "incam_global_orient": ip.slerp_aa(motion["incam_global_orient"]).astype(np.float32),
        "incam_transl": ip.lerp(motion["incam_transl"]).astype(np.float32),
        "contacts": ip.lerp(contacts).astype(np.float32),
        "contact_joints": np.array(CONTACT_JOINTS if contacts.shape[1] == 6 else [], dtype=str),
        "kp2d": kp.astype(np.float32),
        "bbox_xyxy": (np.zeros((T, 4)) if bbox is None else ip.lerp(bbox)).astype(np.float32),
        "K": (np.zeros((T, 3, 3)) if K is None else ip.lerp(np.asarray(K).reshape(L, 3, 3))).astype(
            np.float32
        ),
        "valid": valid,
    }
    return rec


def write_npz(path: Path, arrays: Mapping[str, Any]) -> Path:
    """Atomic ``np.savez_compressed`` (strings become 0-d unicode arrays: no pickle needed to read)."""

    def w(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **{k: np.asarray(v) for k, v in arrays.items()})

    return atomic_write(path, w)


def load_record(path: str | Path) -> dict[str, Any]:
    """Read a ``smpl.npz`` (schema checked; scalars come back as Python str/int/float)."""
    with np.load(Path(path), allow_pickle=False) as z:
        rec: dict[str, Any] = {k: z[k] for k in z.files}
    schema = str(rec.get("schema", ""))
    if schema.split("/")[0] != SCHEMA.split("/")[0]:
        raise ValueError(f"{path}: not a genmocap SMPL result (schema {schema!r})")
    for k in ("schema", "model_type", "gender", "timecode"):
        if k in rec:
            rec[k] = str(rec[k])
    for k in ("fps", "source_fps"):
        if k in rec:
            rec[k] = float(rec[k])
    if "person_id" in rec:
        rec["person_id"] = int(rec["person_id"])
    return rec


def camera_record(camera: CameraTrack, timeline: ClipTimeline, fps: Literal["source"] | float = "source"):
    """The camera resampled like the people (slerp / lerp) over the whole clip: schema
    ``genmocap.camera/1`` with ``frame_index``, ``time_s``, ``fps``, ``R_w2c`` (N, 3, 3), ``t_w2c`` (N, 3),
    ``K`` (N, 3, 3), ``image_wh`` (2,), ``timecode``."""
    S = len(timeline.sample_frame_index)
    sample_t = timeline.sample_times()
    frames, times, rate = _output_timeline(timeline, 0, S - 1, sample_t, fps)
    ip = _interp(times, sample_t)
    q = matrix_to_quat(np.asarray(camera.R_w2c, dtype=np.float64))
    R = quat_to_matrix(quat_slerp(q[ip.i0], q[ip.i1], ip.w[:, None]))
    t = np.zeros((S, 3)) if camera.t_w2c is None else np.asarray(camera.t_w2c, dtype=np.float64)
    K = np.asarray(camera.K, dtype=np.float64)
    K = ip.lerp(K) if K.ndim == 3 else np.broadcast_to(K, (len(frames), 3, 3))
    wh = timeline.image_wh or (int(round(2 * K[0, 0, 2])), int(round(2 * K[0, 1, 2])))
    return {
        "schema": CAMERA_SCHEMA,
        "fps": float(rate),
        "timecode": timeline.timecode or "",
        "frame_index": frames,
        "time_s": times,
        "R_w2c": R.astype(np.float32),
        "t_w2c": ip.lerp(t).astype(np.float32),
        "K": np.asarray(K, dtype=np.float32),
        "image_wh": np.asarray(wh, dtype=np.int64),
    }


def load_camera(path: str | Path) -> dict[str, Any]:
    with np.load(Path(path), allow_pickle=False) as z:
        cam = {k: z[k] for k in z.files}
    if str(cam.get("schema", "")).split("/")[0] != CAMERA_SCHEMA.split("/")[0]:
        raise ValueError(f"{path}: not a genmocap camera (schema {cam.get('schema')!r})")
    cam["fps"] = float(cam["fps"])
    cam["timecode"] = str(cam.get("timecode", ""))
    return cam


# --------------------------------------------------------------------------------------------------------
# The writers' input (``stages.rig``) from the record


def build_rig(
    rec: Mapping[str, Any], body: BodyModel, settings: ExportSettings, name: str | None = None
) -> Rig:
    """The record's world motion as a ``Rig`` in the settings' axes, units and root-motion mode."""
    J = NUM_JOINTS if settings.hands else NUM_BODY_JOINTS
    T = len(rec["frame_index"])
    A = axis_matrix(settings.up)
    k = unit_scale(settings.units)
    J_rest = body.rest_joints(rec["betas"])[:J]
    aa = np.zeros((T, J, 3))
    aa[:, 0] = rec["global_orient"]
    aa[:, 1:NUM_BODY_JOINTS] = np.asarray(rec["body_pose"], dtype=np.float64).reshape(T, 21, 3)
    R = A @ axis_angle_to_matrix(aa) @ A.T
    root = J_rest[0] + np.asarray(rec["transl"], dtype=np.float64)
    if settings.root_motion == "in_place":
        root[:, [0, 2]] = J_rest[0, [0, 2]]  # horizontal pelvis motion removed, height kept
    mesh = None
    if settings.mesh:
        verts = (body.rest_vertices(rec["betas"]) @ A.T) * k
        mesh = (verts, body.faces, body.skin_weights(J))
    pid = int(rec.get("person_id", 0))
    return Rig(
        name=name or f"person_{pid}",
        names=list(JOINT_NAMES[:J]),
        parents=body.parents[:J].copy(),
        rest=(J_rest @ A.T) * k,
        rotations=quat_continuous(matrix_to_quat(R)),
        root_positions=(root @ A.T) * k,
        frames=np.asarray(rec["frame_index"], dtype=np.int64),
        fps=float(rec["fps"]),
        up=settings.up,
        units=settings.units,
        timecode=str(rec.get("timecode", "")),
        meta={
            "schema": str(rec.get("schema", SCHEMA)),
            "person_id": pid,
            "source_fps": float(rec.get("source_fps", rec["fps"])),
            "root_motion": settings.root_motion,
            "body_model": body.path.name,
        },
        mesh=mesh,
    )


_CV_TO_GL = np.diag([1.0, -1.0, -1.0])
SENSOR_WIDTH_MM = 36.0


def build_camera_rig(cam: Mapping[str, Any], frames: np.ndarray, up: str, units: str) -> CameraRig | None:
    """The camera record's rows at ``frames`` (None when it does not cover them all)."""
    idx = np.searchsorted(cam["frame_index"], frames)
    if len(frames) == 0 or idx.max() >= len(cam["frame_index"]) or np.any(cam["frame_index"][idx] != frames):
        return None
    A = axis_matrix(up)
    k = unit_scale(units)
    R = np.asarray(cam["R_w2c"], dtype=np.float64)[idx]
    t = np.asarray(cam["t_w2c"], dtype=np.float64)[idx]
    K = np.asarray(cam["K"], dtype=np.float64)[idx]
    C = -np.einsum("nji,nj->ni", R, t)  # -R^T t
    R_c2w = A @ np.transpose(R, (0, 2, 1)) @ _CV_TO_GL
    W, H = (int(v) for v in cam["image_wh"])
    focal = K[:, 0, 0] / W * SENSOR_WIDTH_MM
    shift = np.stack([(W / 2 - K[:, 0, 2]) / W, (K[:, 1, 2] - H / 2) / W], axis=1)
    return CameraRig(
        frames=np.asarray(frames, dtype=np.int64),
        positions=(C @ A.T) * k,
        rotations=quat_continuous(matrix_to_quat(R_c2w)),
        focal_mm=focal,
        sensor_mm=(SENSOR_WIDTH_MM, SENSOR_WIDTH_MM * H / W),
        shift=shift,
        image_wh=(W, H),
    )


# --------------------------------------------------------------------------------------------------------
# Writing the files


@dataclass
class ExportResult:
    """What one person's export wrote: ``files`` format -> path, ``failed`` format -> one-line reason,
    ``verified`` format -> max joint error in mm after re-reading (when asked), ``seconds`` per format."""

    person_dir: Path
    smpl_npz: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    verified: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "person_dir": str(self.person_dir),
            "smpl_npz": str(self.smpl_npz) if self.smpl_npz else None,
            "files": {k: str(v) for k, v in self.files.items()},
            "failed": dict(self.failed),
            "verified_max_error_mm": dict(self.verified),
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }


def file_name(fmt: str, settings: ExportSettings) -> str:
    return f"motion.{settings.usd_format}" if fmt == "usd" else FILE_NAMES[fmt]


def _one_line(e: BaseException) -> str:
    msg = " ".join(str(e).split()) or type(e).__name__
    return msg if len(msg) <= 300 else msg[:297] + "..."


def _load_body(body_model: BodyModel | str | Path | None) -> tuple[BodyModel | None, str | None]:
    if isinstance(body_model, BodyModel):
        return body_model, None
    if body_model is None:
        return None, "no SMPL-X body model: licence-gated, set GENMOCAP_BODY_MODEL to SMPLX_NEUTRAL.npz"
    try:
        return BodyModel.load(body_model), None
    except BodyModelError as e:
        return None, _one_line(e)


def export_files(
    record: Mapping[str, Any] | str | Path,
    out_dir: str | Path,
    settings: ExportSettings,
    body_model: BodyModel | str | Path | None,
    camera: Mapping[str, Any] | str | Path | None = None,
    verify: bool | None = None,
) -> ExportResult:
    """Write ``settings.formats`` for one person from its canonical record (dict or ``smpl.npz`` path) into
    ``out_dir``. ``camera``: a camera record or ``camera_world.npz`` path (used when ``settings.camera``).
    Never raises for a missing body model or a failing writer: see ``ExportResult.failed``. With ``verify``
    (default ``settings.verify``) each file is read back (Blender and assimp for FBX, bvhio, pxr) and its
    joints compared with forward kinematics; the max error in mm goes to ``ExportResult.verified``."""
    out_dir = Path(out_dir)
    verify = settings.verify if verify is None else verify
    res = ExportResult(person_dir=out_dir)
    rec = load_record(record) if isinstance(record, str | Path) else record
    if not settings.formats:
        return res
    body, why = _load_body(body_model)
    if body is None:
        res.failed = {fmt: why or "no body model" for fmt in settings.formats}
        return res
    try:
        rig = build_rig(rec, body, settings)
    except Exception as e:  # a corrupt record: every format fails the same way
        res.failed = {fmt: f"bad record: {_one_line(e)}" for fmt in settings.formats}
        return res
    cam_rig = None
    if settings.camera and camera is not None:
        try:
            cam = load_camera(camera) if isinstance(camera, str | Path) else camera
            cam_rig = build_camera_rig(cam, rig.frames, settings.up, settings.units)
        except Exception:  # the camera is an extra: never lose the person's files over it
            cam_rig = None
    out_dir.mkdir(parents=True, exist_ok=True)
    for fmt in settings.formats:
        path = out_dir / file_name(fmt, settings)
        t0 = time.perf_counter()
        try:
            _write(fmt, path, rig, cam_rig, settings)
            res.files[fmt] = path
        except Exception as e:
            res.failed[fmt] = _one_line(e)
        res.seconds[fmt] = time.perf_counter() - t0
        if verify and fmt in res.files:
            try:
                res.verified.update(verify_file(fmt, path, rig))
            except Exception as e:
                res.failed[f"verify-{fmt}"] = _one_line(e)
    return res


def _write(fmt: str, path: Path, rig: Rig, cam: CameraRig | None, settings: ExportSettings) -> None:
    # The writers (they import stages.rig, never this module) are imported when used: ``python -m
    # stages.export_fbx`` imports the stages package, hence this module, before it runs the FBX writer.
    if fmt == "fbx":
        from stages.export_fbx import write_fbx

        write_fbx(path, rig, cam, timeout_s=settings.timeout_s)
    elif fmt == "bvh":
        from stages.export_bvh import write_bvh

        atomic_write(path, lambda tmp: write_bvh(tmp, rig))
    elif fmt == "usd":
        from stages.export_usd import write_usd

        atomic_write(path, lambda tmp: write_usd(tmp, rig, cam))
    else:  # pragma: no cover - settings validation keeps this out
        raise ValueError(f"unknown format {fmt}")


def _to_blender_world(p: np.ndarray, rig: Rig) -> np.ndarray:
    """File-axes positions -> Blender's world (z up, metres), where Blender's importer puts them."""
    y_up = (p @ axis_matrix(rig.up)) / unit_scale(rig.units)  # inverse rotation: row vectors times A
    return y_up @ TO_Z_UP.T


def verify_file(fmt: str, path: Path, rig: Rig) -> dict[str, float]:
    """Read a written file back and compare its joint world positions per frame with forward kinematics of
    the rig: ``{"fbx-blender": mm, "fbx-assimp": mm}``, ``{"bvh": mm}`` or ``{"usd": mm}``. Raises when
    frame count, frame numbers, rate or joint names do not match."""
    want = rig.joint_positions()
    mm = 1000.0 / unit_scale(rig.units)
    out: dict[str, float] = {}
    if fmt == "fbx":
        from stages.export_fbx import read_fbx_assimp, read_fbx_blender

        got = read_fbx_blender(path)
        _check_timing("fbx-blender", got, rig)
        err = _max_err(got, rig, _to_blender_world(want, rig))
        out["fbx-blender"] = err * 1000.0
        try:
            got = read_fbx_assimp(path)
        except ImportError:
            pass
        else:
            _check_timing("fbx-assimp", got, rig)
            out["fbx-assimp"] = _max_err(got, rig, want) * mm
    elif fmt == "bvh":
        from stages.export_bvh import read_bvh

        got = read_bvh(path)
        _check_timing("bvh", got, rig)
        out["bvh"] = _max_err(got, rig, want) * mm
    elif fmt == "usd":
        from stages.export_usd import read_usd

        got = read_usd(path)
        _check_timing("usd", got, rig)
        out["usd"] = _max_err(got, rig, want) * mm
    return out


def _max_err(got: Mapping[str, Any], rig: Rig, want: np.ndarray) -> float:
    names = list(got["names"])
    missing = [n for n in rig.names if n not in names]
    if missing:
        raise ValueError(f"joints missing after re-reading: {', '.join(missing[:5])}")
    idx = [names.index(n) for n in rig.names]
    pos = np.asarray(got["positions"])[:, idx]
    return float(np.max(np.linalg.norm(pos - want, axis=-1)))


def _check_timing(what: str, got: Mapping[str, Any], rig: Rig) -> None:
    n = len(got["positions"])
    if n != len(rig.frames):
        raise ValueError(f"{what}: {n} frames read back, {len(rig.frames)} written")
    if abs(float(got["fps"]) - rig.fps) > 1e-5 * rig.fps:
        raise ValueError(f"{what}: rate {got['fps']} read back, {rig.fps} written")
    frames = got.get("frames")
    if frames is not None:
        # readers that lose the start (assimp) report frames from 0
        f = np.asarray(frames, dtype=np.float64)
        ref = rig.frames - (rig.frames[0] if got.get("relative") else 0)
        if np.max(np.abs(f - ref)) > 1e-3:
            raise ValueError(f"{what}: frame numbers differ (read {f[:3]}..., wrote {ref[:3]}...)")


# --------------------------------------------------------------------------------------------------------
# The stage: one person, one clip


def export_person(
    motion: Mapping[str, Any],
    timeline: ClipTimeline,
    person_dir: str | Path,
    settings: ExportSettings,
    body_model: BodyModel | str | Path | None,
    person_id: int = 0,
    camera: Mapping[str, Any] | None = None,
) -> ExportResult:
    """Build and write ``person_dir/smpl.npz``, then the files of ``settings.formats``.

    ``motion``: the model-rate arrays of the module docstring; ``camera``: the clip's camera record
    (``camera_record``) or None. Raises only for bad input (ValueError); per-format problems go to
    ``ExportResult.failed``.
    """
    person_dir = Path(person_dir)
    rec = build_record(motion, timeline, person_id=person_id, fps=settings.fps)
    npz = write_npz(person_dir / "smpl.npz", rec)
    res = export_files(rec, person_dir, settings, body_model, camera=camera)
    res.smpl_npz = npz
    return res


@dataclass
class ClipExport:
    """Result of ``export_clip``: per-person results, the camera and preview files, and one report line."""

    people: dict[int, ExportResult]
    camera_npz: Path | None = None
    preview: Path | None = None
    preview_error: str | None = None

    @property
    def reason(self) -> str | None:
        """One line naming what could not be written and why (None when everything was written)."""
        return summary_line(self.people.values(), self.preview_error)

    def to_dict(self) -> dict[str, Any]:
        return {
            "people": {str(k): v.to_dict() for k, v in self.people.items()},
            "camera_npz": str(self.camera_npz) if self.camera_npz else None,
            "preview": str(self.preview) if self.preview else None,
            "reason": self.reason,
        }


def summary_line(results: Iterable[ExportResult], preview_error: str | None = None) -> str | None:
    """``"not written: fbx, bvh, usd (no SMPL-X body model ...)"``: failures grouped by reason, one line."""
    by_reason: dict[str, list[str]] = {}
    for r in results:
        for fmt, why in r.failed.items():
            if fmt not in by_reason.setdefault(why, []):
                by_reason[why].append(fmt)
    parts = [f"{', '.join(fmts)} ({why})" for why, fmts in by_reason.items()]
    if preview_error:
        parts.append(f"preview ({preview_error})")
    return ("not written: " + "; ".join(parts)) if parts else None


def export_clip(
    people: Mapping[int, Mapping[str, Any]],
    timeline: ClipTimeline,
    clip_dir: str | Path,
    settings: ExportSettings,
    body_model: BodyModel | str | Path | None,
    camera: CameraTrack | None = None,
    video: Any = None,
) -> ClipExport:
    """Export every person of a clip into ``clip_dir/person_<id>/``, the camera into
    ``clip_dir/camera_world.npz`` (when given) and, with ``settings.preview``, ``clip_dir/preview.mp4`` from
    ``video`` (a ``stages.video.VideoInfo``). ``people`` maps person id -> model-rate motion (module
    docstring)."""
    clip_dir = Path(clip_dir)
    body, why = _load_body(body_model)
    cam_rec = cam_path = None
    if camera is not None:
        cam_rec = camera_record(camera, timeline, settings.fps)
        cam_path = write_npz(clip_dir / CAMERA_FILE, cam_rec)
    results: dict[int, ExportResult] = {}
    for pid, motion in people.items():
        results[int(pid)] = export_person(
            motion,
            timeline,
            clip_dir / f"person_{int(pid)}",
            settings,
            body if body is not None else body_model,
            person_id=int(pid),
            camera=cam_rec,
        )
    out = ClipExport(results, camera_npz=cam_path)
    if settings.preview:
        if video is None:
            out.preview_error = "no source video given"
        else:
            from stages.preview import write_preview

            try:
                recs = [load_record(r.smpl_npz) for r in results.values() if r.smpl_npz]
                out.preview = write_preview(
                    video, recs, clip_dir / "preview.mp4", body, max_size=settings.preview_max_size
                )
            except Exception as e:
                out.preview_error = _one_line(e)
    return out


# --------------------------------------------------------------------------------------------------------
# The stage contract: files under OUT/<clip>/, checked on reuse


def clip_timeline(info: Any, tracks: Any) -> ClipTimeline:
    """The clip's sample timeline (``stages.results.Tracks``) and source facts (``stages.video.VideoInfo``)
    the exports resample to: the nominal rate when the real one matches it, real timestamps for VFR."""
    from fractions import Fraction

    from stages.video import frame_timestamps

    src_fps = info.fps
    if info.fps_nominal and not info.vfr:
        nominal = float(Fraction(info.fps_nominal))
        src_fps = nominal if abs(nominal - info.fps) < 1e-3 * nominal else info.fps
    times = frame_timestamps(Path(info.path)) if info.vfr and info.kind == "video" else None
    return ClipTimeline(
        sample_frame_index=tracks.sample_frame_index,
        sample_time_s=tracks.sample_time_s,
        model_fps=tracks.fps,
        source_fps=src_fps,
        source_frame_count=info.frame_count,
        source_times=times,
        timecode=info.timecode,
        image_wh=tracks.image_wh,
    )


def _compute(run: ClipRun) -> dict:
    from stages.estimate import span_rows

    env, cfg = run.env, run.cfg
    tracks = run.results["track"]
    pp = run.results["postprocess"]  # stages.results.PersonArrays
    kp = run.results.get("keypoints")
    cam = run.results.get("camera")
    by_id = {p.person_id: p for p in tracks.people}
    people = {}
    for pid, arrays in pp.arrays.items():
        motion = dict(arrays)
        track = by_id[pid]
        s0, L = int(arrays["sample_index"][0]), len(arrays["sample_index"])
        rel = track.sample_index - s0
        motion["bbox_xyxy"] = span_rows(track.xyxy, rel, L, interpolate=True)
        motion["kp2d"] = span_rows(kp.arrays[pid]["kp2d"], rel, L) if kp else None
        people[pid] = motion
    camera_track = None
    if "clip_from_cam0" in pp.meta:  # people placed in the clip frame: the camera can join them there
        S = len(tracks.sample_frame_index)
        R0 = cam.R_w2c if cam is not None and cam.solved else np.broadcast_to(np.eye(3), (S, 3, 3))
        B = np.asarray(pp.meta["clip_from_cam0"])
        R, t = camera_in_clip_frame(R0, B, pp.meta["camera_height_m"])
        K = cam.K if cam is not None else np.asarray(next(iter(pp.arrays.values()))["K"][0])
        camera_track = CameraTrack(R_w2c=R, t_w2c=t, K=K)
    clip_dir = env.out / run.clip_id
    clip_dir.mkdir(parents=True, exist_ok=True)
    env.progress.stage(run.clip_id, "export")
    result = export_clip(
        people,
        clip_timeline(run.results["probe"], tracks),
        clip_dir,
        cfg.export,
        env.body_model,
        camera=camera_track,
        video=run.results["probe"],
    )
    return _relative(result.to_dict(), env.out)


def _relative(doc: Any, root: Path) -> Any:
    """Paths under OUT made relative to it, so a moved output folder still matches its artifact."""
    if isinstance(doc, dict):
        return {k: _relative(v, root) for k, v in doc.items()}
    if isinstance(doc, str) and doc.startswith(str(root) + os.sep):
        return os.path.relpath(doc, root)
    return doc


def _files(meta: dict) -> list[str]:
    files = [meta.get("camera_npz"), meta.get("preview")]
    for person in meta.get("people", {}).values():
        files += [person.get("smpl_npz"), *person.get("files", {}).values()]
    return [f for f in files if f]


def _unpublish(run: ClipRun, clip_dir: Path) -> None:
    """Exported files of an earlier run, when this run did not export (failed, or stopped earlier)."""
    import shutil

    for d in clip_dir.glob("person_*"):
        if d.is_dir():
            shutil.rmtree(d, ignore_errors=True)
    for name in (CAMERA_FILE, "preview.mp4"):
        (clip_dir / name).unlink(missing_ok=True)


SPEC = StageSpec(
    name="export",
    version=VERSION,
    settings=ExportSettings,
    needs=("probe", "track", "postprocess"),
    uses=("keypoints", "camera"),
    key_inputs=ClipRun.body_model_input,
    compute=_compute,
    present=lambda run, meta: all((run.env.out / f).is_file() for f in _files(meta)),
    unpublish=_unpublish,
    report=lambda meta: {"exports": meta},
    warnings=lambda run, meta: [f"export: {meta['reason']}"] if meta.get("reason") else [],
)
