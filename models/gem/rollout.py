"""Gravity-view world rollout: per-frame root orientation and velocity -> world trajectory.

The network predicts, per frame t, the root orientation in the gravity-view frame GV_t of that frame (y up,
z = the camera's forward axis projected on the ground) and the root velocity in the root's own frame. GV_t
differs from GV_0 only by a yaw about y that follows the camera's heading. The rollout estimates the per-frame
yaw increment from the camera's relative rotation, smooths it, accumulates it into ``R_acc[t]`` (GV_t -> GV_0)
and integrates the root velocity. The world frame is GV_0: y up, z the initial camera heading on the ground.

Rounding: the yaw increment is ``acos`` of a dot product near 1, so rounding in any input moves it by up to
~5e-4 rad per frame and the error accumulates along the sequence; compare this stage with
loose tolerances. Here the cross product is computed without fused multiply-add, so a static camera (relative
rotation snapped to the identity) gives exactly zero increments.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .rotations import axis_angle_to_matrix, cross, matrix_to_axis_angle, normalize, rot6d_to_matrix

__all__ = [
    "IDENTITY_6D",
    "static_cam_angvel",
    "gaussian_kernel",
    "gaussian_smooth",
    "snap_to_identity",
    "world_rollout",
]

#: 6D of the identity rotation: the camera angular velocity of a static camera
IDENTITY_6D = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def static_cam_angvel(length: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(length, 6) camera angular velocity of a static camera (identity 6D in every frame)."""
    return torch.tensor(IDENTITY_6D, dtype=dtype).expand(length, 6).clone()


def gaussian_kernel(sigma: float = 3.0, radius: int | None = None) -> torch.Tensor:
    """Normalised 1-D Gaussian, (2 * radius + 1,) float32; radius defaults to ``int(4 sigma + 0.5)``.

    Computed in float64 then rounded, like scipy's ``gaussian_filter1d`` kernel (order 0)."""
    if radius is None:
        radius = int(4 * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 / (sigma * sigma) * x**2)
    return torch.from_numpy(w / w.sum()).float()


def gaussian_smooth(x: torch.Tensor, dim: int = -1, sigma: float = 3.0) -> torch.Tensor:
    """Gaussian smoothing along ``dim`` with replicate padding (output has the input's shape)."""
    k = gaussian_kernel(sigma).to(x)
    r = k.numel() // 2
    xt = x.transpose(dim, -1)
    shape = xt.shape
    flat = xt.reshape(-1, 1, shape[-1])
    flat = F.pad(flat, (r, r), mode="replicate")
    out = F.conv1d(flat, k[None, None]).reshape(shape)
    return out.transpose(-1, dim)


def snap_to_identity(R: torch.Tensor, angle_eps: float = 1e-5) -> torch.Tensor:
    """Replace rotations (..., 3, 3) whose angle is below ``angle_eps`` rad by the exact identity."""
    small = matrix_to_axis_angle(R).norm(dim=-1) < angle_eps
    eye = torch.eye(3, dtype=R.dtype, device=R.device)
    return torch.where(small[..., None, None], eye, R)


def world_rollout(
    global_orient_gv: torch.Tensor,
    local_transl_vel: torch.Tensor,
    global_orient_c: torch.Tensor,
    cam_angvel: torch.Tensor,
    torch_cross: bool = False,
) -> dict[str, torch.Tensor]:
    """Batch rollout to the world (GV_0) frame (fixture group ``world/``), float32 recommended.

    Args:
        global_orient_gv: (B, L, 3) root axis-angle in GV_t (``dec/global_orient_gv``).
        local_transl_vel: (B, L, 3) root velocity, metres/frame, root frame (``dec/local_transl_vel``).
        global_orient_c: (B, L, 3) root axis-angle in the camera frame (``dec/global_orient``).
        cam_angvel: (B, L, 6) raw (un-normalised) 6D of ``R_w2c[t+1] R_w2c[t]^T``, last frame repeated.
        torch_cross: take the yaw axis from ``torch.linalg.cross`` as the reference does. Its kernel may
            use fused multiply-add, leaving rounding residue for identical axes, i.e. a spurious ~5e-4 rad
            yaw step on some frames of a static camera; on a CPU whose kernels match the reference's this
            reproduces the reference bit for bit. Default False: component-wise cross, exactly zero for a
            static camera.
    Returns:
        ``R_rel`` (B, L, 3, 3) camera relative rotation, snapped to I below 1e-5 rad;
        ``yaw_aa_raw`` (B, L, 3) per-frame yaw increment (axis-angle about +-y);
        ``yaw_aa_smooth`` (B, L, 3) the same after Gaussian smoothing (sigma 3, radius 12);
        ``R_step`` (B, L, 3, 3) = ``aa_to_matrix(yaw_aa_smooth)^T``;
        ``R_acc`` (B, L, 3, 3) with ``R_acc[0] = I`` and ``R_acc[t] = R_acc[t-1] R_step[t]`` (frame t uses
        step t, as the reference), snapped to I;
        ``global_orient`` (B, L, 3) world root axis-angle ``R_acc R_gv``;
        ``transl`` (B, L, 3) world root translation, ``transl[0] = 0``, exclusive cumulative sum of
        ``R_world[t] v[t]``.
    """
    R_rel = snap_to_identity(rot6d_to_matrix(cam_angvel))
    R_gv = axis_angle_to_matrix(global_orient_gv)
    R_c = axis_angle_to_matrix(global_orient_c)
    R_c2gv = R_gv @ R_c.transpose(-1, -2)

    # Camera optical axis in GV_t now and after the camera's relative rotation, flattened onto the ground.
    view = R_c2gv[..., :, 2].clone()
    view_next = (R_c2gv @ R_rel.transpose(-1, -2))[..., :, 2].clone()
    view[..., 1] = 0
    view_next[..., 1] = 0
    v1 = normalize(view)
    v2 = normalize(view_next)
    angle = torch.acos(torch.clamp((v1 * v2).sum(-1, keepdim=True), -1.0, 1.0))
    axis = torch.linalg.cross(v2, v1, dim=-1) if torch_cross else cross(v2, v1)
    yaw_raw = normalize(axis) * angle

    yaw_smooth = gaussian_smooth(yaw_raw, dim=-2)
    R_step = axis_angle_to_matrix(yaw_smooth).transpose(-1, -2)

    acc = [torch.eye(3, dtype=R_step.dtype, device=R_step.device).expand(R_step.shape[0], 3, 3)]
    for t in range(1, R_step.shape[1]):
        acc.append(acc[-1] @ R_step[:, t])
    R_acc = snap_to_identity(torch.stack(acc, dim=1))

    global_orient = matrix_to_axis_angle(R_acc @ R_gv)
    vel_w = (axis_angle_to_matrix(global_orient) @ local_transl_vel[..., None])[..., 0]
    transl = torch.cumsum(torch.cat((torch.zeros_like(vel_w[:, :1]), vel_w[:, :-1]), dim=1), dim=1)
    # The reference re-expresses the result in its target frame through an identity rotation: this only
    # re-encodes the orientation (axis-angle -> matrix -> axis-angle), changing its last bits.
    global_orient = matrix_to_axis_angle(axis_angle_to_matrix(global_orient))
    return {
        "R_rel": R_rel,
        "yaw_aa_raw": yaw_raw,
        "yaw_aa_smooth": yaw_smooth,
        "R_step": R_step,
        "R_acc": R_acc,
        "global_orient": global_orient,
        "transl": transl,
    }
