"""Static-joint post-processing of the world trajectory (as in the GEM reference, NVlabs/GENMO).

Where the network says a foot or hand is in contact (positive contact logit), the root trajectory is
corrected so that the contact joint does not slide, the horizontal components are smoothed, and the whole
sequence is put on the ground (lowest joint at y = 0; world y is up).
"""

from __future__ import annotations

import torch

from .rollout import gaussian_smooth
from .skeleton import Skeleton, fk

__all__ = ["CONTACT_JOINTS", "static_joint_postprocess"]

#: SMPL-X body joints of the 6 contact logits: L-ankle, L-foot, R-ankle, R-foot, L-wrist, R-wrist
CONTACT_JOINTS = (7, 10, 8, 11, 20, 21)


def static_joint_postprocess(
    skeleton: Skeleton,
    body_pose: torch.Tensor,
    betas: torch.Tensor,
    global_orient: torch.Tensor,
    transl: torch.Tensor,
    static_conf_logits: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Remove contact-joint sliding from the root translation and put the sequence on the ground.

    Args:
        skeleton: body skeleton for FK.
        body_pose: (B, L, 63) axis-angle (before IK); betas: (B, L, 10).
        global_orient: (B, L, 3) world root orientation; transl: (B, L, 3) world root translation
            (``world/*``).
        static_conf_logits: (B, L, 6) contact logits for ``CONTACT_JOINTS`` (``out/static_conf_logits``).
    Returns:
        ``joints_w`` (B, L, 22, 3) FK joints before correction;
        ``static_label`` (B, L-1, 6) bool, logit > 0 (frames 0..L-2);
        ``is_static`` (B, L-1) bool, any contact in the frame;
        ``disp_corr`` (B, L-1, 3) the displacement removed between frames t and t+1: softmax over the labelled
        joints' logits (unlabelled ones get -1e6) weighting their displacements, zero without contact;
        ``transl_presmooth`` (B, L, 3) re-integrated translation before smoothing (y column set to 0, as the
        fixture stores it; y is not smoothed);
        ``ground_y`` (B,) lowest joint height after correction, subtracted from transl y;
        ``transl`` (B, L, 3) the corrected translation.
    """
    joints = fk(skeleton, body_pose, betas, global_orient, transl)["joints"]
    cj = joints[:, :, list(CONTACT_JOINTS)]
    disp = cj[:, 1:] - cj[:, :-1]  # (B, L-1, 6, 3)

    logits = static_conf_logits[:, :-1].float()
    label = logits > 0
    weights = torch.where(label, logits, logits - 1e6).softmax(dim=-1)
    is_static = label.any(dim=-1)
    corr = (disp * weights[..., None] * is_static[..., None, None]).sum(dim=-2)

    root_disp = transl[:, 1:] - transl[:, :-1] - corr
    new = torch.cumsum(torch.cat((transl[:, :1], root_disp), dim=1), dim=1)
    presmooth = new.clone()
    presmooth[..., 1] = 0
    new[..., 0] = gaussian_smooth(new[..., 0], dim=-1)
    new[..., 2] = gaussian_smooth(new[..., 2], dim=-1)

    shifted = joints - transl[..., None, :] + new[..., None, :]
    ground_y = shifted[..., 1].flatten(1).min(dim=-1).values
    new[..., 1] = new[..., 1] - ground_y[:, None]
    return {
        "joints_w": joints,
        "static_label": label,
        "is_static": is_static,
        "disp_corr": corr,
        "transl_presmooth": presmooth,
        "ground_y": ground_y,
        "transl": new,
    }
