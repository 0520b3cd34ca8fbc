"""Rotation conversions with the conventions of the GEM reference (NVlabs/GENMO).

Conventions used everywhere in ``models.gem``:

- A rotation matrix ``R`` (..., 3, 3) acts on column vectors: ``x' = R @ x``.
- **6D** is the first two **rows** of ``R`` flattened row-major: ``(R00, R01, R02, R10, R11, R12)``; the
  inverse map rebuilds the rows by Gram-Schmidt (Zhou et al. 2019).
- **Quaternions** are ``(w, x, y, z)`` with the real part first. Conversions from matrices return the
  representative with ``w >= 0``.
- **Axis-angle** is a 3-vector whose direction is the axis and whose norm is the angle in radians
  (right-handed). Matrix -> axis-angle goes through the quaternion (the route of pytorch3d that the reference
  uses), so the angle lies in [0, pi].

All functions are pure tensor functions that broadcast over any leading dimensions and keep the input dtype.
"""

from __future__ import annotations

import torch

__all__ = [
    "rot6d_to_matrix",
    "matrix_to_rot6d",
    "matrix_to_quaternion",
    "quaternion_to_matrix",
    "axis_angle_to_quaternion",
    "quaternion_to_axis_angle",
    "axis_angle_to_matrix",
    "matrix_to_axis_angle",
    "rot6d_to_axis_angle",
    "quat_mul",
    "quat_conj",
    "quat_rotate",
    "normalize",
    "cross",
]


def normalize(v: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``v / max(|v|, eps)`` along the last dimension (zero vectors stay zero)."""
    return v / v.norm(dim=-1, keepdim=True).clamp_min(eps)


def cross(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cross product over the last dimension (size 3), written out component-wise.

    Each component is the difference of two separately rounded products, so ``cross(v, v)`` is exactly zero
    (``torch.cross`` may use fused multiply-add and leave rounding residue).
    """
    ax, ay, az = a.unbind(-1)
    bx, by, bz = b.unbind(-1)
    return torch.stack((ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx), dim=-1)


def rot6d_to_matrix(d6: torch.Tensor) -> torch.Tensor:
    """6D (..., 6) -> rotation matrix (..., 3, 3).

    Rows: ``b1 = n(a1)``, ``b2 = n(a2 - (b1.a2) b1)``, ``b3 = b1 x b2`` with ``a1 = d6[:3]``, ``a2 = d6[3:]``
    and ``n`` the normalisation with eps 1e-12.
    """
    a1, a2 = d6[..., :3], d6[..., 3:]
    b1 = normalize(a1)
    b2 = normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1)
    b3 = torch.linalg.cross(b1, b2, dim=-1)
    return torch.stack((b1, b2, b3), dim=-2)


def matrix_to_rot6d(R: torch.Tensor) -> torch.Tensor:
    """Rotation matrix (..., 3, 3) -> 6D (..., 6): the first two rows, row-major."""
    return R[..., :2, :].reshape(*R.shape[:-2], 6)


def matrix_to_quaternion(R: torch.Tensor) -> torch.Tensor:
    """Rotation matrix (..., 3, 3) -> unit quaternion (..., 4), (w, x, y, z) with w >= 0.

    Numerically stable branch selection: the four candidates ``4 q_k q`` are formed from sums and differences
    of entries, and the one with the largest ``|q_k|`` is used (denominator floored at 2 * 0.1).
    """
    m = R.reshape(*R.shape[:-2], 9)
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = m.unbind(-1)
    sq = torch.stack(
        (1.0 + m00 + m11 + m22, 1.0 + m00 - m11 - m22, 1.0 - m00 + m11 - m22, 1.0 - m00 - m11 + m22), dim=-1
    )
    q_abs = torch.sqrt(sq.clamp_min(0))
    # Row k is the candidate computed from the k-th component: every entry equals 4 * q_k * q_i.
    cand = torch.stack(
        (
            torch.stack((q_abs[..., 0] ** 2, m21 - m12, m02 - m20, m10 - m01), dim=-1),
            torch.stack((m21 - m12, q_abs[..., 1] ** 2, m10 + m01, m02 + m20), dim=-1),
            torch.stack((m02 - m20, m10 + m01, q_abs[..., 2] ** 2, m12 + m21), dim=-1),
            torch.stack((m10 - m01, m20 + m02, m21 + m12, q_abs[..., 3] ** 2), dim=-1),
        ),
        dim=-2,
    )
    cand = cand / (2.0 * q_abs[..., None].clamp_min(0.1))
    best = q_abs.argmax(dim=-1)[..., None, None].expand(*q_abs.shape[:-1], 1, 4)
    q = torch.gather(cand, -2, best).squeeze(-2)
    return torch.where(q[..., :1] < 0, -q, q)


def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Quaternion (..., 4), (w, x, y, z), not necessarily unit -> rotation matrix (..., 3, 3)."""
    w, x, y, z = q.unbind(-1)
    s = 2.0 / (q * q).sum(-1)
    R = torch.stack(
        (
            1 - s * (y * y + z * z),
            s * (x * y - z * w),
            s * (x * z + y * w),
            s * (x * y + z * w),
            1 - s * (x * x + z * z),
            s * (y * z - x * w),
            s * (x * z - y * w),
            s * (y * z + x * w),
            1 - s * (x * x + y * y),
        ),
        dim=-1,
    )
    return R.reshape(*q.shape[:-1], 3, 3)


def axis_angle_to_quaternion(aa: torch.Tensor) -> torch.Tensor:
    """Axis-angle (..., 3) -> unit quaternion (..., 4), (w, x, y, z).

    ``q = (cos(a/2), aa * sin(a/2)/a)`` with ``a = |aa|``; below a = 1e-6 the ratio uses its Taylor series
    ``1/2 - a^2/48``.
    """
    angle = aa.norm(dim=-1, keepdim=True)
    half = 0.5 * angle
    small = angle.abs() < 1e-6
    safe = torch.where(small, torch.ones_like(angle), angle)
    ratio = torch.where(small, 0.5 - angle * angle / 48, torch.sin(half) / safe)
    return torch.cat((torch.cos(half), aa * ratio), dim=-1)


def quaternion_to_axis_angle(q: torch.Tensor) -> torch.Tensor:
    """Quaternion (..., 4), (w, x, y, z) -> axis-angle (..., 3).

    ``aa = v / (0.5 * sinc(h / pi))`` with ``v = q[1:]`` and ``h = atan2(|v|, w)`` (the half angle); for
    ``w >= 0`` the angle is in [0, pi].
    """
    v = q[..., 1:]
    half = torch.atan2(v.norm(dim=-1, keepdim=True), q[..., :1])
    return v / (0.5 * torch.sinc(half / torch.pi))


def axis_angle_to_matrix(aa: torch.Tensor) -> torch.Tensor:
    """Axis-angle (..., 3) -> rotation matrix (..., 3, 3), via the quaternion."""
    return quaternion_to_matrix(axis_angle_to_quaternion(aa))


def matrix_to_axis_angle(R: torch.Tensor) -> torch.Tensor:
    """Rotation matrix (..., 3, 3) -> axis-angle (..., 3), via the quaternion (angle in [0, pi])."""
    return quaternion_to_axis_angle(matrix_to_quaternion(R))


def rot6d_to_axis_angle(d6: torch.Tensor) -> torch.Tensor:
    """6D (..., 6) -> axis-angle (..., 3)."""
    return matrix_to_axis_angle(rot6d_to_matrix(d6))


def quat_mul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamilton product ``a * b`` of quaternions (..., 4), (w, x, y, z); broadcasts. No standardisation."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        (
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ),
        dim=-1,
    )


def quat_conj(q: torch.Tensor) -> torch.Tensor:
    """Conjugate (the inverse for unit quaternions) of (..., 4), (w, x, y, z)."""
    return torch.cat((q[..., :1], -q[..., 1:]), dim=-1)


def quat_rotate(q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Rotate vectors v (..., 3) by unit quaternions q (..., 4): ``v + 2 (w u x v + u x (u x v))``."""
    u = q[..., 1:]
    uv = torch.linalg.cross(u, v, dim=-1)
    uuv = torch.linalg.cross(u, uv, dim=-1)
    return v + 2 * (q[..., :1] * uv + uuv)
