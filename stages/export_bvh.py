"""BVH export: the skeleton and one line of channels per frame, written in float64 by this module and read
back with ``bvhio`` (a maintained BVH library) for verification.

BVH has no place for axes, units, start frame or timecode: the data is in the file's axes and units as
chosen (default y up, centimetres, what BVH tools assume), frame k of the file is the k-th frame of the
record (``smpl.npz`` ``frame_index[k]``), and ``Frame Time`` is ``1 / fps`` to 17 significant digits.

Layout: ``ROOT pelvis`` with ``OFFSET 0 0 0`` and channels ``Xposition Yposition Zposition Zrotation Xrotation
Yrotation`` holding the pelvis's absolute position (so readers that add the root offset and readers that do
not agree); every other joint has its rest offset from its parent and ``Zrotation Xrotation Yrotation``
(intrinsic Z, then X, then Y: ``R = Rz Rx Ry``), in degrees, unwrapped over time so curves have no 360-degree
jumps; leaves end in an ``End Site`` along their bone. Rest orientations are the identity, so a joint's
channels are its SMPL-X local rotation.

Why not bvhio's writer: it works in float32, converts every frame to Euler angles independently (curves can
jump by 360 degrees) and decides channels per joint from the data; writing the format directly is short.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

from models.geometry import forward_kinematics, quat_to_matrix
from stages.rig import Rig, bone_lengths

__all__ = ["write_bvh", "read_bvh", "euler_zxy_continuous"]


def euler_zxy_continuous(R: np.ndarray) -> np.ndarray:
    """Rotation matrices (T, ..., 3, 3) -> intrinsic ZXY Euler angles (T, ..., 3) in degrees ``(z, x, y)``
    with ``R = Rz(z) Rx(x) Ry(y)``, choosing per frame between the two equivalent solutions and adding
    multiples of 360 so that each frame is closest to the previous one (frame 0: the canonical solution)."""
    R = np.asarray(R, dtype=np.float64)
    lead = R.shape[:-2]
    e = Rotation.from_matrix(R.reshape(-1, 3, 3)).as_euler("ZXY", degrees=True).reshape(*lead, 3)
    alt = np.stack([e[..., 0] + 180.0, 180.0 - e[..., 1], e[..., 2] + 180.0], axis=-1)
    out = np.empty_like(e)
    if len(e) == 0:
        return out
    out[0] = e[0]
    for t in range(1, len(e)):
        prev = out[t - 1]
        a = prev + (e[t] - prev + 180.0) % 360.0 - 180.0
        b = prev + (alt[t] - prev + 180.0) % 360.0 - 180.0
        use_b = np.sum(np.abs(b - prev), axis=-1) < np.sum(np.abs(a - prev), axis=-1) - 1e-9
        out[t] = np.where(use_b[..., None], b, a)
    return out


def write_bvh(path: str | Path, rig: Rig) -> Path:
    """Write ``rig`` as BVH (module docstring)."""
    path = Path(path)
    J = len(rig.names)
    children: dict[int, list[int]] = {i: [] for i in range(J)}
    for i, p in enumerate(rig.parents):
        if p >= 0:
            children[int(p)].append(i)
    offsets = rig.offsets
    lengths = bone_lengths(rig)
    lines = ["HIERARCHY"]
    order: list[int] = []

    def joint(i: int, depth: int) -> None:
        ind = "  " * depth
        order.append(i)
        if rig.parents[i] < 0:
            lines.append(f"{ind}ROOT {rig.names[i]}")
            off = np.zeros(3)
            chans = "CHANNELS 6 Xposition Yposition Zposition Zrotation Xrotation Yrotation"
        else:
            lines.append(f"{ind}JOINT {rig.names[i]}")
            off = offsets[i]
            chans = "CHANNELS 3 Zrotation Xrotation Yrotation"
        lines.extend([f"{ind}{{", f"{ind}  OFFSET {_f(off[0])} {_f(off[1])} {_f(off[2])}", f"{ind}  {chans}"])
        for c in children[i]:
            joint(c, depth + 1)
        if not children[i]:
            p = rig.parents[i]
            d = offsets[i] if p >= 0 else np.array([0.0, 1.0, 0.0])
            n = np.linalg.norm(d)
            end = d / n * 0.5 * lengths[i] if n > 0 else np.array([0.0, 0.5 * lengths[i], 0.0])
            lines.extend(
                [
                    f"{ind}  End Site",
                    f"{ind}  {{",
                    f"{ind}    OFFSET {_f(end[0])} {_f(end[1])} {_f(end[2])}",
                    f"{ind}  }}",
                ]
            )
        lines.append(f"{ind}}}")

    roots = [i for i in range(J) if rig.parents[i] < 0]
    if len(roots) != 1:
        raise ValueError("BVH needs exactly one root joint")
    joint(roots[0], 0)
    T = len(rig.frames)
    R = quat_to_matrix(rig.rotations)  # (T, J, 3, 3)
    eul = euler_zxy_continuous(R)  # (T, J, 3)
    cols = [rig.root_positions] + [eul[:, j] for j in order]
    data = np.concatenate(cols, axis=1)
    lines += ["MOTION", f"Frames: {T}", f"Frame Time: {1.0 / rig.fps!r}"]
    body = "\n".join(" ".join(_f(v) for v in row) for row in data)
    path.write_text("\n".join(lines) + "\n" + body + "\n")
    return path


def _f(v: float) -> str:
    s = f"{float(v):.6f}"
    return "0.000000" if s == "-0.000000" else s


def read_bvh(path: str | Path) -> dict[str, Any]:
    """Read a BVH with ``bvhio`` and compute joint world positions per frame: ``names``, ``positions``
    (T, J, 3) in the file's axes and units, ``fps`` (1 / Frame Time), ``frame_time``."""
    with warnings.catch_warnings():  # PyGLM's "import glm" deprecation notice, inside bvhio
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        import bvhio

    bvh = bvhio.readAsBvh(str(path))
    names: list[str] = []
    parents: list[int] = []
    quats: list[np.ndarray] = []  # per joint: local quaternions (T, 4) (w, x, y, z)
    local_pos: list[np.ndarray] = []  # per joint: position in the parent's frame (T, 3)

    def walk(j: Any, parent: int) -> None:
        names.append(j.Name)
        parents.append(parent)
        me = len(names) - 1
        keys = j.Keyframes
        quats.append(np.array([[k.Rotation.w, k.Rotation.x, k.Rotation.y, k.Rotation.z] for k in keys]))
        local_pos.append(np.array([[k.Position.x, k.Position.y, k.Position.z] for k in keys]))
        for c in j.Children:
            walk(c, me)

    walk(bvh.Root, -1)
    R_local = quat_to_matrix(np.stack(quats, axis=1))  # (T, J, 3, 3)
    _, pos = forward_kinematics(parents, R_local, np.stack(local_pos, axis=1))
    ft = float(bvh.FrameTime)
    return {"names": names, "positions": pos, "fps": 1.0 / ft, "frame_time": ft}
