"""What every export writer takes: a posed joint tree (``Rig``) and the camera (``CameraRig``), already in the
file's axes and units.

``stages.export`` builds them from the canonical record; the writers (``stages.export_bvh``,
``stages.export_fbx``, ``stages.export_usd``) only read them. This module depends on numpy and
``models.geometry`` only, so the writers never import the export stage (and Blender's child process stays
light).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.geometry import forward_kinematics, joint_offsets, quat_to_matrix

__all__ = ["CameraRig", "Rig", "axis_matrix", "bone_lengths", "unit_scale", "TO_Z_UP"]

#: y-up world -> z-up axes: (x, y, z) -> (x, -z, y)
TO_Z_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


def axis_matrix(up: str) -> np.ndarray:
    """Rotation from the y-up world to the file's axes (identity for y; x kept for z up)."""
    return np.eye(3) if up == "y" else TO_Z_UP.copy()


def unit_scale(units: str) -> float:
    """File units per metre."""
    return 100.0 if units == "cm" else 1.0


@dataclass
class Rig:
    """A skeleton and its animation in the file's axes and units (``up``, ``units``).

    ``names`` (J) joint names; ``parents`` (J,) (-1 root); ``rest`` (J, 3) rest joint positions;
    ``offsets`` (J, 3) ``rest_i - rest_parent(i)`` (the root's = its rest position); every joint's rest
    orientation is the identity. ``rotations`` (T, J, 4) local quaternions (w, x, y, z), hemisphere-continuous
    in time; ``root_positions`` (T, 3) world position of the root joint; ``frames`` (T,) frame numbers at
    ``fps``. ``mesh`` is ``(vertices (V, 3), faces (F, 3), weights (V, J))`` or None.
    """

    name: str
    names: list[str]
    parents: np.ndarray
    rest: np.ndarray
    rotations: np.ndarray
    root_positions: np.ndarray
    frames: np.ndarray
    fps: float
    up: str
    units: str
    timecode: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    mesh: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    @property
    def offsets(self) -> np.ndarray:
        return joint_offsets(self.rest, self.parents)

    def joint_positions(self) -> np.ndarray:
        """(T, J, 3) world joint positions by forward kinematics (file axes and units)."""
        _, pos = forward_kinematics(
            self.parents, quat_to_matrix(self.rotations), self.offsets, self.root_positions
        )
        return pos


_LINK_NAMES = {  # which child a bone's length is measured to when it has several
    "pelvis": "spine1",
    "spine3": "neck",
    "left_wrist": "left_middle1",
    "right_wrist": "right_middle1",
}


def bone_lengths(rig: Rig) -> np.ndarray:
    """Display length of every bone: distance to its main child, else 60 % of its parent's (min 1 cm)."""
    J = len(rig.names)
    k = unit_scale(rig.units)
    length = np.zeros(J)
    children: dict[int, list[int]] = {}
    for i, p in enumerate(rig.parents):
        if p >= 0:
            children.setdefault(int(p), []).append(i)
    for i in range(J):
        kids = children.get(i, [])
        if kids:
            want = _LINK_NAMES.get(rig.names[i])
            c = next((c for c in kids if rig.names[c] == want), kids[0])
            length[i] = np.linalg.norm(rig.rest[c] - rig.rest[i])
    for i in range(J):
        if length[i] == 0 and rig.parents[i] >= 0:
            length[i] = 0.6 * length[rig.parents[i]]
    return np.maximum(length, 0.01 * k)


@dataclass
class CameraRig:
    """The camera in the file's axes and units: ``positions`` (N, 3), ``rotations`` (N, 4) (w, x, y, z) of the
    camera-to-world rotation of a DCC camera (looks down its -z, y up), ``focal_mm`` (N,) on a
    ``sensor_mm`` (width, height) filmback, ``shift`` (N, 2) principal-point offset as a fraction of the
    filmback width (x right, y up), ``frames`` (N,), ``image_wh``."""

    frames: np.ndarray
    positions: np.ndarray
    rotations: np.ndarray
    focal_mm: np.ndarray
    sensor_mm: tuple[float, float]
    shift: np.ndarray
    image_wh: tuple[int, int]
