"""Camera helpers: default intrinsics and the weak-perspective -> full-image translation of the GEM reference.

Camera convention: OpenCV (x right, y down, z forward), pixels with the origin at the top-left image corner.
A person box is ``bbx_xys = (cx, cy, s)``: centre and side of the square crop, in full-image pixels.
The network's camera ``pred_cam = (s, tx, ty)`` is a weak-perspective camera of the crop: scale ``s`` maps the
crop to [-1, 1] and ``(tx, ty)`` is the body translation in that normalised crop space.
"""

from __future__ import annotations

import torch

__all__ = ["default_intrinsics", "transl_from_weak_perspective", "incam_params"]


def default_intrinsics(
    width: int, height: int, length: int | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The reference demo's intrinsics for an image of ``width`` x ``height`` pixels.

    f = max(W, H) (both axes), principal point (W/2, H/2), no skew.

    Returns:
        (3, 3), or (length, 3, 3) repeated per frame when ``length`` is given.
    """
    f = float(max(width, height))
    K = torch.tensor([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]], dtype=dtype)
    return K if length is None else K.expand(length, 3, 3).clone()


def transl_from_weak_perspective(
    pred_cam: torch.Tensor, bbx_xys: torch.Tensor, K: torch.Tensor
) -> torch.Tensor:
    """Root translation in the camera frame from the crop's weak-perspective camera.

    With ``sb = s * b + 1e-9`` (b = box side) and ``f = K[0, 0]`` (fy is not used):
    ``t = (tx + 2 (cx - K[0, 2]) / sb, ty + 2 (cy - K[1, 2]) / sb, 2 f / sb)``.

    Args:
        pred_cam: (..., 3) ``(s, tx, ty)``.
        bbx_xys: (..., 3) ``(cx, cy, b)`` in pixels.
        K: (..., 3, 3) intrinsics.
    Returns:
        (..., 3) translation in metres (the SMPL-X ``transl`` of the in-camera parameters).
    """
    s, tx, ty = pred_cam.unbind(-1)
    cx, cy, b = bbx_xys.unbind(-1)
    sb = s * b + 1e-9
    x = 2 * (cx - K[..., 0, 2]) / sb
    y = 2 * (cy - K[..., 1, 2]) / sb
    z = 2 * K[..., 0, 0] / sb
    return torch.stack((tx + x, ty + y, z), dim=-1)


def incam_params(
    dec: dict[str, torch.Tensor], pred_cam: torch.Tensor, bbx_xys: torch.Tensor, K: torch.Tensor
) -> dict[str, torch.Tensor]:
    """SMPL-X parameters in the camera frame (before IK), from the decoded motion (``codec.decode``).

    Args:
        dec: decoded dict with ``body_pose`` (B, L, 63), ``betas`` (B, L, 10), ``global_orient`` (B, L, 3).
        pred_cam: (B, L, 3); bbx_xys: (B, L, 3); K: (B, L, 3, 3).
    Returns:
        ``body_pose`` (B, L, 63), ``global_orient`` (B, L, 3), ``transl`` (B, L, 3) (fixture
        ``incam/transl``), ``betas`` (B, L, 10). The root rotates about the rest pelvis and ``transl`` moves
        the whole body.
    """
    return {
        "body_pose": dec["body_pose"],
        "global_orient": dec["global_orient"],
        "transl": transl_from_weak_perspective(pred_cam, bbx_xys, K),
        "betas": dec["betas"],
    }
