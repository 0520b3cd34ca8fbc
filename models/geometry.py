"""One geometry layer: rotations, quaternions, slerp, SO(3) and forward kinematics in numpy float64.

Every numpy rotation helper of the project lives here (the torch code that reproduces the GEM reference
bit for bit stays in ``models.gem.rotations``). Pure functions; importing this module loads numpy and scipy's
``Rotation`` only (no torch, no cv2).

Conventions (all functions):

- **Rotation matrices** ``R`` have shape (..., 3, 3) and act on column vectors: ``x' = R @ x``. A chain
  ``R_a @ R_b`` applies ``R_b`` first.
- **Axis-angle** (rotation vectors) ``aa`` have shape (..., 3): the unit axis times the angle in radians
  (right-handed). This is SMPL-X's pose parameterisation and the tangent space of SO(3) (``so3_log`` /
  ``so3_exp``).
- **Quaternions** ``q`` have shape (..., 4), are unit and **scalar-first** ``(w, x, y, z)`` everywhere in the
  project (scipy's ``scalar_first=True``). ``q`` and ``-q`` are the same rotation. Files that store
  scalar-last ``(x, y, z, w)`` (TUM, DROID, USD, scipy's default) convert with ``quat_xyzw_to_wxyz`` /
  ``quat_wxyz_to_xyzw`` at the boundary.
- Leading dimensions ``...`` are any batch shape (possibly empty); outputs are float64.
- **Joint trees** are given by ``parents`` (J,), the parent index of each joint, -1 for a root, with
  ``parents[i] < i`` (every parent comes before its children, as in SMPL-X's ``kintree_table[0]``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.spatial.transform import Rotation

__all__ = [
    "axis_angle_to_matrix",
    "matrix_to_axis_angle",
    "axis_angle_to_quat",
    "quat_to_axis_angle",
    "quat_to_matrix",
    "matrix_to_quat",
    "quat_xyzw_to_wxyz",
    "quat_wxyz_to_xyzw",
    "quat_continuous",
    "quat_slerp",
    "slerp_resample",
    "so3_exp",
    "so3_log",
    "rotation_angle_deg",
    "project_so3",
    "joint_offsets",
    "forward_kinematics",
]


def _f64(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


# --------------------------------------------------------------------------------------------------------
# Conversions


def axis_angle_to_matrix(aa: np.ndarray) -> np.ndarray:
    """Axis-angle (..., 3) -> rotation matrices (..., 3, 3) (Rodrigues; the zero vector gives I)."""
    aa = _f64(aa)
    return Rotation.from_rotvec(aa.reshape(-1, 3)).as_matrix().reshape(*aa.shape[:-1], 3, 3)


def matrix_to_axis_angle(R: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) -> axis-angle (..., 3) with angle in [0, pi]."""
    R = _f64(R)
    return Rotation.from_matrix(R.reshape(-1, 3, 3)).as_rotvec().reshape(*R.shape[:-2], 3)


def axis_angle_to_quat(aa: np.ndarray) -> np.ndarray:
    """Axis-angle (..., 3) -> unit quaternions (..., 4) ``(w, x, y, z)``."""
    aa = _f64(aa)
    q = Rotation.from_rotvec(aa.reshape(-1, 3)).as_quat(scalar_first=True)
    return q.reshape(*aa.shape[:-1], 4)


def quat_to_axis_angle(q: np.ndarray) -> np.ndarray:
    """Quaternions (..., 4) ``(w, x, y, z)`` (normalised first) -> axis-angle (..., 3), angle in [0, pi]."""
    q = _f64(q)
    aa = Rotation.from_quat(q.reshape(-1, 4), scalar_first=True).as_rotvec()
    return aa.reshape(*q.shape[:-1], 3)


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """Quaternions (..., 4) ``(w, x, y, z)`` (normalised first) -> rotation matrices (..., 3, 3)."""
    q = _f64(q)
    R = Rotation.from_quat(q.reshape(-1, 4), scalar_first=True).as_matrix()
    return R.reshape(*q.shape[:-1], 3, 3)


def matrix_to_quat(R: np.ndarray, canonical: bool = False) -> np.ndarray:
    """Rotation matrices (..., 3, 3) -> unit quaternions (..., 4) ``(w, x, y, z)``.

    ``canonical``: pick the sign with ``w >= 0`` (else scipy's choice, which may have ``w < 0``)."""
    R = _f64(R)
    q = Rotation.from_matrix(R.reshape(-1, 3, 3)).as_quat(canonical=canonical, scalar_first=True)
    return q.reshape(*R.shape[:-2], 4)


def quat_xyzw_to_wxyz(q: np.ndarray) -> np.ndarray:
    """Scalar-last quaternions (..., 4) ``(x, y, z, w)`` -> scalar-first ``(w, x, y, z)`` (a reorder)."""
    return _f64(q)[..., [3, 0, 1, 2]]


def quat_wxyz_to_xyzw(q: np.ndarray) -> np.ndarray:
    """Scalar-first quaternions (..., 4) ``(w, x, y, z)`` -> scalar-last ``(x, y, z, w)`` (a reorder)."""
    return _f64(q)[..., [1, 2, 3, 0]]


# --------------------------------------------------------------------------------------------------------
# Quaternion sequences and interpolation


def quat_continuous(q: np.ndarray) -> np.ndarray:
    """Quaternions (T, ..., 4) with signs flipped along axis 0 (time) so that every quaternion lies in the
    hemisphere of the previous one (``<q[t], q[t-1]> >= 0``): curves without jumps for keyframed files and
    interpolation. The rotations are unchanged; ``q[0]`` is kept."""
    q = np.array(q, dtype=np.float64, copy=True)
    for t in range(1, len(q)):
        flip = np.sum(q[t] * q[t - 1], axis=-1) < 0
        q[t][flip] *= -1
    return q


def quat_slerp(q0: np.ndarray, q1: np.ndarray, w: np.ndarray | float) -> np.ndarray:
    """Spherical linear interpolation of unit quaternions.

    Args:
        q0, q1: (..., 4) ``(w, x, y, z)`` unit quaternions (broadcastable).
        w: weights broadcastable to (..., 1): 0 gives ``q0``, 1 gives ``q1`` (up to sign).
    Returns:
        (..., 4) unit quaternions on the shorter arc from ``q0`` to ``q1`` (``q1`` is negated where
        ``<q0, q1> < 0``); nearly equal quaternions are interpolated linearly and renormalised.
    """
    q0, q1 = _f64(q0), _f64(q1)
    w = _f64(w)
    d = np.sum(q0 * q1, axis=-1, keepdims=True)
    q1 = np.where(d < 0, -q1, q1)
    d = np.clip(np.abs(d), 0.0, 1.0)
    theta = np.arccos(d)
    s = np.sin(theta)
    small = s < 1e-9
    s_safe = np.where(small, 1.0, s)
    a = np.where(small, 1.0 - w, np.sin((1.0 - w) * theta) / s_safe)
    b = np.where(small, w, np.sin(w * theta) / s_safe)
    q = a * q0 + b * q1
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


def slerp_resample(x: np.ndarray, R: np.ndarray, xq: np.ndarray) -> np.ndarray:
    """Rotations resampled over time: slerp between keys, the nearest key outside their range.

    Args:
        x: (N,) strictly increasing key times (any unit).
        R: (N, 3, 3) key rotations.
        xq: (Q,) query times.
    Returns:
        (Q, 3, 3) rotations at ``xq``; a query equal to a key time gets that key's rotation (up to rounding).
    """
    x, R, xq = _f64(x), _f64(R), _f64(xq)
    if len(x) == 1:
        return np.repeat(R, len(xq), axis=0)
    u = np.interp(np.clip(xq, x[0], x[-1]), x, np.arange(len(x), dtype=np.float64))
    i0 = np.minimum(np.floor(u).astype(np.int64), len(x) - 2)
    w = (u - i0)[:, None]
    q = matrix_to_quat(R)
    return quat_to_matrix(quat_slerp(q[i0], q[i0 + 1], w))


# --------------------------------------------------------------------------------------------------------
# SO(3)

#: SO(3) exponential map: axis-angle (tangent vector) (..., 3) -> rotation (..., 3, 3).
so3_exp = axis_angle_to_matrix
#: SO(3) logarithm: rotation (..., 3, 3) -> axis-angle (tangent vector) (..., 3), angle in [0, pi].
so3_log = matrix_to_axis_angle


def rotation_angle_deg(R: np.ndarray) -> np.ndarray:
    """Rotation angle (...) in degrees, in [0, 180], of rotation matrices (..., 3, 3).

    Accurate near 0: ``atan2`` of the axial (skew) part and the trace (``arccos`` of the trace alone loses
    about 0.01 degree to rounding)."""
    R = _f64(R)
    s = 0.5 * np.stack(
        [R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]], -1
    )
    c = (np.trace(R, axis1=-2, axis2=-1) - 1.0) / 2.0
    return np.degrees(np.arctan2(np.linalg.norm(s, axis=-1), c))


def project_so3(M: np.ndarray) -> np.ndarray:
    """Nearest rotation (Frobenius norm) to each matrix (..., 3, 3), by SVD, with det +1 (a reflection is
    turned into the nearest proper rotation)."""
    U, _, Vt = np.linalg.svd(_f64(M))
    d = np.sign(np.linalg.det(U @ Vt))
    d = np.where(d == 0, 1.0, d)
    U = U.copy()
    U[..., :, 2] *= d[..., None]
    return U @ Vt


# --------------------------------------------------------------------------------------------------------
# Forward kinematics


def joint_offsets(rest: np.ndarray, parents: Sequence[int] | np.ndarray) -> np.ndarray:
    """Bone offsets (..., J, 3) ``rest_i - rest_parent(i)`` from rest joint positions (..., J, 3); a root
    keeps its rest position (the SMPL-X local translation of every joint)."""
    rest = _f64(rest)
    par = np.asarray(parents, dtype=np.int64)
    off = rest - rest[..., np.maximum(par, 0), :]
    off[..., par < 0, :] = rest[..., par < 0, :]
    return off


def forward_kinematics(
    parents: Sequence[int] | np.ndarray,
    R_local: np.ndarray,
    offsets: np.ndarray,
    root_position: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Global rotations and positions of the joints of a tree (float64).

    Joint ``i``'s local transform is ``(R_local[i], offsets[i])`` relative to its parent: its global
    rotation is ``G_i = G_parent(i) @ R_local[i]`` and its position ``p_i = p_parent(i) + G_parent(i) @
    offsets[i]``. A root's global transform is ``(R_local[root], root_position or offsets[root])``.

    Args:
        parents: (J,) parent indices, -1 for a root; ``parents[i] < i``.
        R_local: (..., J, 3, 3) local rotations (any invertible linear parts work, e.g. rotation x scale).
        offsets: (..., J, 3) or (J, 3) translation of each joint in its parent's frame (``joint_offsets`` of
            the rest joints for SMPL-X); broadcast against ``R_local``'s leading dimensions.
        root_position: (..., 3) world position of the root joint(s), or None to use ``offsets[root]``.
    Returns:
        ``R_global`` (..., J, 3, 3) and ``positions`` (..., J, 3) in the world frame.
    """
    par = [int(p) for p in parents]
    R = _f64(R_local)
    lead, J = R.shape[:-3], R.shape[-3]
    if len(par) != J or any(p >= i for i, p in enumerate(par)):
        raise ValueError(f"parents must list {J} joints with parents[i] < i")
    off = np.broadcast_to(_f64(offsets), (*lead, J, 3))
    root = None if root_position is None else np.broadcast_to(_f64(root_position), (*lead, 3))
    Rg = np.empty_like(R)
    pos = np.empty((*lead, J, 3))
    for i, p in enumerate(par):
        if p < 0:
            Rg[..., i, :, :] = R[..., i, :, :]
            pos[..., i, :] = off[..., i, :] if root is None else root
        else:
            Rg[..., i, :, :] = Rg[..., p, :, :] @ R[..., i, :, :]
            pos[..., i, :] = pos[..., p, :] + (Rg[..., p, :, :] @ off[..., i, :, None])[..., 0]
    return Rg, pos
