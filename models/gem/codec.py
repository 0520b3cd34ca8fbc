"""The 151-D GEM motion vector: layout, normalisation statistics, de-normalisation and decode.

Layout of one frame (``encode_type = gvhmr``), all rotations as 6D (first two rows of the matrix):

========== ============================================================================
[0:126]    body_pose: 21 joints x 6D, local rotations of SMPL-X body joints 1..21
[126:136]  betas (10), SMPL-X neutral shape
[136:142]  global_orient in the camera frame (OpenCV: x right, y down, z forward), 6D
[142:148]  global_orient in the gravity-view frame of the current frame (y up), 6D
[148:151]  local_transl_vel: root velocity in metres per frame, in the root's own frame
========== ============================================================================

The network predicts the normalised vector ``x_n``; ``x = x_n * std + mean`` with the statistics below.
"""

from __future__ import annotations

import warnings

import torch

from .camera import default_intrinsics, incam_params
from .ik import contact_ik
from .postprocess import static_joint_postprocess
from .rollout import static_cam_angvel, world_rollout
from .rotations import rot6d_to_axis_angle
from .skeleton import Skeleton

__all__ = [
    "MOTION_DIM",
    "SLICES",
    "motion_mean",
    "motion_std",
    "normalize",
    "denormalize",
    "decode",
    "decode_all",
]

MOTION_DIM = 151

#: name -> (start, stop) in the 151-D vector
SLICES: dict[str, tuple[int, int]] = {
    "body_pose": (0, 126),
    "betas": (126, 136),
    "global_orient": (136, 142),
    "global_orient_gv": (142, 148),
    "local_transl_vel": (148, 151),
}

# ---------------------------------------------------------------------------------------------------------
# Normalisation statistics: data, not code. These are the 151 means and 151 stds of
# `MM_V1_AMASS_LOCAL_BEDLAM_CAM` in the reference (NVlabs/GENMO @ b7d3b6b, gem/network/stats_compose.py),
# which reuse GVHMR's per-component statistics (AMASS for body pose, betas and velocity; BEDLAM for the two
# orientations). They are needed verbatim for numerical parity with the official checkpoint. The reference
# runs with clip_std = True: every std below 1 is raised to 1 (see `motion_std`).
# ---------------------------------------------------------------------------------------------------------
# fmt: off
_MM_V1_MEAN = (
    # body_pose 6D, joints 1..21 (AMASS)
    0.96969, -0.059719, -0.0377, 0.058256, 0.908, 0.10972,
    0.97636, 0.043401, 0.004311, -0.043032, 0.90261, 0.14478,
    0.99288, 0.0035673, 0.016264, -0.002226, 0.9347, -0.23495,
    0.97147, 0.052553, -0.093666, -0.05455, 0.83321, -0.24246,
    0.97971, -0.038429, 0.0053575, 0.015537, 0.81449, -0.30926,
    0.99532, -0.0094398, -0.038328, 0.0085141, 0.9888, 0.0001998,
    0.95602, -0.039528, 0.20017, 0.010363, 0.95965, 0.1377,
    0.96223, -0.046278, -0.15177, 0.066705, 0.95545, 0.12519,
    0.99767, -0.012616, -0.0002544, 0.011661, 0.99376, -0.036222,
    0.99511, -0.010583, 0.01213, 0.0076461, 0.99137, 0.020029,
    0.99295, 0.0072917, 0.0049454, -0.0080286, 0.99137, 0.0023707,
    0.97698, 0.019943, 0.0013808, -0.022006, 0.97375, -0.067936,
    0.92804, 0.25005, -0.057167, -0.24047, 0.94246, 0.025863,
    0.92957, -0.21329, 0.11112, 0.20741, 0.94876, 0.029901,
    0.97683, -0.04121, 0.0023248, 0.040967, 0.97365, 0.0057309,
    0.64513, 0.61999, -0.25469, -0.62342, 0.68177, 0.035524,
    0.66192, -0.59341, 0.27136, 0.59269, 0.68966, 0.031309,
    0.68946, -0.11676, -0.49859, 0.040969, 0.93656, -0.14875,
    0.62787, 0.13793, 0.54289, -0.091946, 0.92868, -0.11927,
    0.93012, -0.08381, -0.11951, 0.097211, 0.89118, 0.059887,
    0.93033, 0.071047, 0.075264, -0.080679, 0.88562, 0.04896,
    # betas (AMASS)
    0.231, 0.175, 0.2931, -0.1859, -1.1163,
    -1.1028, -0.2573, 0.3555, 0.3732, 0.2852,
    # global_orient (camera) 6D, global_orient_gv 6D (BEDLAM)
    -0.0049862, -0.0008714, -0.0014187, 0.014825, -0.94419, -0.051653,
    0.0003602, -0.0002233, 0.0022316, -0.044879, -0.97435, 0.10021,
    # local_transl_vel (AMASS)
    -0.0002, -0.0006, 0.0069,
)
_MM_V1_STD_RAW = (
    # body_pose 6D, joints 1..21 (AMASS)
    0.0612, 0.139, 0.1779, 0.1415, 0.1826, 0.3268,
    0.044, 0.1382, 0.1542, 0.1348, 0.193, 0.3272,
    0.0132, 0.0801, 0.0855, 0.0729, 0.1255, 0.2238,
    0.0554, 0.1088, 0.1727, 0.0939, 0.3294, 0.3559,
    0.0532, 0.1082, 0.1554, 0.0768, 0.3446, 0.3407,
    0.012, 0.065, 0.0584, 0.0632, 0.0198, 0.1335,
    0.0631, 0.125, 0.1574, 0.1047, 0.073, 0.2091,
    0.0759, 0.1241, 0.1667, 0.1112, 0.0831, 0.2185,
    0.006, 0.0441, 0.0502, 0.0441, 0.0102, 0.0946,
    0.0237, 0.0722, 0.061, 0.0738, 0.0479, 0.0949,
    0.0369, 0.0943, 0.061, 0.0966, 0.0498, 0.0729,
    0.0425, 0.1001, 0.1824, 0.0972, 0.0408, 0.1887,
    0.0594, 0.1842, 0.1884, 0.202, 0.0457, 0.1018,
    0.064, 0.199, 0.1854, 0.2133, 0.0467, 0.091,
    0.0392, 0.1049, 0.1776, 0.1037, 0.0413, 0.1945,
    0.1733, 0.2612, 0.1905, 0.2963, 0.1512, 0.1861,
    0.171, 0.2663, 0.1896, 0.3135, 0.1568, 0.2219,
    0.3976, 0.1594, 0.281, 0.1855, 0.0845, 0.2398,
    0.4398, 0.1629, 0.2685, 0.199, 0.0998, 0.2556,
    0.1137, 0.2837, 0.1419, 0.2761, 0.1678, 0.2973,
    0.1172, 0.301, 0.1394, 0.291, 0.1724, 0.3039,
    # betas (AMASS)
    0.8831, 0.7965, 1.0899, 1.1788, 1.2128,
    1.1081, 0.978, 1.1434, 0.8498, 1.1462,
    # global_orient (camera) 6D, global_orient_gv 6D (BEDLAM)
    0.7048, 0.1713, 0.6884, 0.1548, 0.1546, 0.2403,
    0.607, 0.5355, 0.5873, 0.6285, 0.2336, 0.7675,
    # local_transl_vel (AMASS)
    0.0064, 0.007, 0.0138,
)
# fmt: on


def motion_mean(device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(151,) means of the 151-D motion vector."""
    return torch.tensor(_MM_V1_MEAN, dtype=torch.float32).to(device=device, dtype=dtype)


def motion_std(
    device: torch.device | str | None = None, dtype: torch.dtype = torch.float32, clip: bool = True
) -> torch.Tensor:
    """(151,) stds of the 151-D motion vector; with ``clip`` (the reference setting) stds < 1 become 1,
    leaving six betas channels (128, 129, 130, 131, 133, 135) above 1."""
    std = torch.tensor(_MM_V1_STD_RAW, dtype=torch.float32)
    if clip:
        std = std.clamp_min(1.0)
    return std.to(device=device, dtype=dtype)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """De-normalised (..., 151) -> normalised (..., 151): ``(x - mean) / std``."""
    return (x - motion_mean(x.device, x.dtype)) / motion_std(x.device, x.dtype)


def denormalize(x_n: torch.Tensor) -> torch.Tensor:
    """Normalised (..., 151) -> de-normalised (..., 151): ``x_n * std + mean``."""
    return x_n * motion_std(x_n.device, x_n.dtype) + motion_mean(x_n.device, x_n.dtype)


def decode(pred_x: torch.Tensor, skeleton: Skeleton | None = None) -> dict[str, torch.Tensor]:
    """Decode the network's normalised motion (fixture group ``dec/``).

    Args:
        pred_x: (B, L, 151) normalised motion vector (``out/pred_x``); any leading dims work.
        skeleton: optional body skeleton; only needed for ``offset``.
    Returns:
        dict of (B, L, ·) tensors:
        ``x_denorm`` (151) de-normalised vector; ``body_pose`` (63) axis-angle of joints 1..21;
        ``betas`` (10); ``global_orient`` (3) root axis-angle in the camera frame; ``global_orient_gv`` (3)
        root axis-angle in the current frame's gravity-view frame; ``local_transl_vel`` (3) metres/frame;
        ``offset`` (3, only with a skeleton) the rest pelvis position for these betas (unused downstream).
    """
    if pred_x.shape[-1] != MOTION_DIM:
        raise ValueError(f"expected a {MOTION_DIM}-D motion vector, got shape {tuple(pred_x.shape)}")
    x = denormalize(pred_x)

    def part(name: str) -> torch.Tensor:
        a, b = SLICES[name]
        return x[..., a:b]

    body6d = part("body_pose").reshape(*x.shape[:-1], 21, 6)
    out = {
        "x_denorm": x,
        "body_pose": rot6d_to_axis_angle(body6d).flatten(-2),
        "betas": part("betas"),
        "global_orient": rot6d_to_axis_angle(part("global_orient")),
        "global_orient_gv": rot6d_to_axis_angle(part("global_orient_gv")),
        "local_transl_vel": part("local_transl_vel"),
    }
    if skeleton is not None:
        out["offset"] = skeleton.rest_joints(out["betas"])[..., 0, :]
    return out


def _batched(x: torch.Tensor, shape: tuple[int, int], item_dims: int, device: torch.device) -> torch.Tensor:
    """(L, ...) -> (B, L, ...) by broadcasting; (B, L, ...) is returned as is (float32 on ``device``)."""
    batch = shape[0]
    x = torch.as_tensor(x).to(device=device, dtype=torch.float32)
    if x.dim() == item_dims + 1:
        x = x[None].expand(batch, *x.shape)
    if x.dim() != item_dims + 2 or tuple(x.shape[:2]) != tuple(shape):
        raise ValueError(
            f"expected ({shape[1]}, ...) or {tuple(shape)} + {item_dims} item dims, got {tuple(x.shape)}"
        )
    return x


def decode_all(
    out: dict[str, torch.Tensor],
    inputs: dict[str, torch.Tensor],
    skeleton: Skeleton | None,
    *,
    postprocess: bool = True,
    intermediates: bool = False,
) -> dict[str, torch.Tensor]:
    """From the denoiser outputs to the final SMPL-X parameters, like the reference ``predict``.

    Decode -> in-camera translation -> world rollout -> static-joint correction -> contact IK (the reference's
    ``decode_gvhmr``, ``compute_transl_full_cam``, ``get_body_params_w_Rt_v2``, ``pp_static_joint``,
    ``process_ik``). Everything runs in float32. Several people (B > 1) are decoded at once; each row is
    a full-length track (no padding: the ground height and the rollout use every frame).

    Args:
        out: ``pred_x`` (B, L, 151) normalised motion, ``pred_cam`` (B, L, 3) ``(s, tx, ty)``,
            ``static_conf_logits`` (B, L, 6).
        inputs: ``bbx_xys`` (B, L, 3) or (L, 3); ``K_fullimg`` (B, L, 3, 3) or (L, 3, 3), or instead
            ``image_wh`` (2,) to use the demo's default intrinsics; optional ``cam_angvel`` (B, L, 6) or
            (L, 6), raw 6D, default: static camera. (L, ...) tensors are shared by all B people.
        skeleton: body skeleton for post-processing; with None (or ``postprocess=False``) the contact
            correction and IK are skipped (None also warns) and the raw world trajectory and decoded pose are
            returned.
        intermediates: also return the stage outputs under their fixture keys (``dec/*``, ``incam/transl``,
            ``world/*``, ``pp/*``, ``ik/*``; shapes as documented by `decode`, `world_rollout`,
            `static_joint_postprocess` and `contact_ik`).
    Returns:
        Flat dict, every tensor with the batch dim (the reference's ``predict`` drops B = 1):

        - ``pred/incam/body_pose`` (B, L, 63): axis-angle of joints 1..21 (after IK when it ran);
        - ``pred/incam/global_orient`` (B, L, 3): root axis-angle in the camera frame (OpenCV);
        - ``pred/incam/transl`` (B, L, 3): root translation in the camera frame, metres;
        - ``pred/incam/betas`` (B, L, 10);
        - ``pred/global/body_pose`` (B, L, 63): same pose as in camera;
        - ``pred/global/global_orient`` (B, L, 3): root axis-angle in the world frame (GV_0, y up);
        - ``pred/global/transl`` (B, L, 3): world root translation (post-processed when it ran: on the
          ground, y up; otherwise the raw rollout starting at 0);
        - ``pred/global/betas`` (B, L, 10);
        - ``pred/K_fullimg`` (B, L, 3, 3): the intrinsics used.
    """
    pred_x = out["pred_x"].float()
    if pred_x.dim() != 3:
        raise ValueError(f"pred_x must be (B, L, 151), got {tuple(pred_x.shape)}")
    B, L = pred_x.shape[:2]
    dev = pred_x.device
    pred_cam = out["pred_cam"].float()
    logits = out["static_conf_logits"].float()
    bbx = _batched(inputs["bbx_xys"], (B, L), 1, dev)
    if "K_fullimg" in inputs:
        K = _batched(inputs["K_fullimg"], (B, L), 2, dev)
    else:
        w, h = (int(v) for v in inputs["image_wh"])
        K = _batched(default_intrinsics(w, h, L), (B, L), 2, dev)
    angvel = inputs.get("cam_angvel")
    angvel = _batched(static_cam_angvel(L) if angvel is None else angvel, (B, L), 1, dev)

    dec = decode(pred_x, skeleton)
    incam = incam_params(dec, pred_cam, bbx, K)
    world = world_rollout(dec["global_orient_gv"], dec["local_transl_vel"], dec["global_orient"], angvel)
    body_pose, transl_w = dec["body_pose"], world["transl"]
    stages: dict[str, dict[str, torch.Tensor]] = {"dec": dec, "incam": {"transl": incam["transl"]}}
    stages["world"] = world
    if postprocess and skeleton is None:
        warnings.warn(
            "no body model: contact post-processing and IK skipped, raw world trajectory kept", stacklevel=2
        )
    if postprocess and skeleton is not None:
        pp = static_joint_postprocess(
            skeleton, body_pose, dec["betas"], world["global_orient"], transl_w, logits
        )
        ik = contact_ik(skeleton, body_pose, dec["betas"], world["global_orient"], pp["transl"], logits)
        body_pose, transl_w = ik["body_pose"], pp["transl"]
        stages.update(pp=pp, ik=ik)

    result = {
        "pred/incam/body_pose": body_pose,
        "pred/incam/global_orient": incam["global_orient"],
        "pred/incam/transl": incam["transl"],
        "pred/incam/betas": dec["betas"],
        "pred/global/body_pose": body_pose,
        "pred/global/global_orient": world["global_orient"],
        "pred/global/transl": transl_w,
        "pred/global/betas": dec["betas"],
        "pred/K_fullimg": K,
    }
    if intermediates:
        for group, values in stages.items():
            result.update({f"{group}/{k}": v for k, v in values.items()})
    return result
