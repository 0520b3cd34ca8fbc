"""Contact IK: pin feet and hands to blended contact targets with CCD (as in the GEM reference, NVlabs/GENMO).

For each contact joint the target position is a recursive blend of its previous target and its current FK
position, weighted by the contact probability of the previous frame. Four short chains (legs from the pelvis,
arms from the spine) are then solved with cyclic coordinate descent: 2 sweeps, one position target at the
chain's ankle or wrist, the chain root fixed, and each joint's update damped by a slerp of weight
``(k + 1) / chain_length`` (k = index in the chain). Only the local rotations change; the root orientation and
translation are kept, and the resulting body pose replaces the decoded one in both camera and world params.
"""

from __future__ import annotations

import torch

from .postprocess import CONTACT_JOINTS
from .rotations import matrix_to_axis_angle, matrix_to_quaternion, quat_conj, quat_mul, quat_rotate
from .skeleton import Skeleton, fk

__all__ = ["CHAINS", "contact_targets", "ccd_solve_chain", "contact_ik"]

#: (joints from the fixed chain root to the tip, chain index of the one active target)
CHAINS: tuple[tuple[tuple[int, ...], int], ...] = (
    ((0, 1, 4, 7, 10), 3),  # left leg -> L-ankle 7
    ((0, 2, 5, 8, 11), 3),  # right leg -> R-ankle 8
    ((9, 13, 16, 18, 20), 4),  # left arm -> L-wrist 20
    ((9, 14, 17, 19, 21), 4),  # right arm -> R-wrist 21
)


def contact_targets(joints: torch.Tensor, contact_prob: torch.Tensor) -> torch.Tensor:
    """Recursively blended targets for ``CONTACT_JOINTS``.

    ``target[0] = J[0]``, ``target[t] = target[t-1] c[t-1] + J[t] (1 - c[t-1])`` (sequential in t).

    Args:
        joints: (B, L, 22, 3) FK joints; contact_prob: (B, L, 6) sigmoid of the contact logits.
    Returns:
        (B, L, 6, 3).
    """
    J = joints[:, :, list(CONTACT_JOINTS)]
    c = contact_prob[..., None]
    out = [J[:, 0]]
    for t in range(1, J.shape[1]):
        out.append(out[-1] * c[:, t - 1] + J[:, t] * (1 - c[:, t - 1]))
    return torch.stack(out, dim=1)


def _unit_columns(R: torch.Tensor) -> torch.Tensor:
    return R / (R.norm(dim=-2, keepdim=True) + 1e-9)


def _quat_unit(q: torch.Tensor) -> torch.Tensor:
    return q / q.norm(dim=-1, keepdim=True).clamp_min(1e-8)


def _quat_between(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Shortest-arc unit quaternion rotating direction a (..., 3) onto b; opposite vectors turn about y."""
    v = torch.linalg.cross(a, b, dim=-1)
    w = torch.sqrt((a * a).sum(-1, keepdim=True) * (b * b).sum(-1, keepdim=True)) + (a * b).sum(
        -1, keepdim=True
    )
    opposite = (v.norm(dim=-1) == 0) & (w[..., 0].abs() <= 1e-4)
    v = torch.where(opposite[..., None], torch.tensor([0.0, 1.0, 0.0], dtype=v.dtype, device=v.device), v)
    return _quat_unit(torch.cat((w, v), dim=-1))


def _quat_slerp(q0: torch.Tensor, q1: torch.Tensor, t: float) -> torch.Tensor:
    """``(q1 q0^-1)^t q0`` without hemisphere correction (the reference's slerp)."""
    q0 = _quat_unit(q0)
    d = _quat_unit(quat_mul(_quat_unit(q1), quat_conj(q0)))
    theta = torch.acos(d[..., :1].clamp(-1.0, 1.0))
    theta = torch.where(theta.abs() <= 1e-9, torch.full_like(theta, 1e-9), theta)
    axis = d[..., 1:] / torch.sin(theta)
    return quat_mul(torch.cat((torch.cos(t * theta), axis * torch.sin(t * theta)), dim=-1), q0)


def ccd_solve_chain(
    R_root: torch.Tensor,
    p_root: torch.Tensor,
    R_local: torch.Tensor,
    offsets: torch.Tensor,
    end: int,
    target: torch.Tensor,
    iterations: int = 2,
) -> torch.Tensor:
    """CCD position IK on a serial chain whose root is fixed.

    Args:
        R_root: (..., 3, 3) and p_root (..., 3): global rotation and position of chain joint 0.
        R_local: (..., n, 3, 3) local rotations of the chain joints (entry 0 is ignored).
        offsets: (..., n, 3) bone offsets in the parent's frame (entry 0 is ignored).
        end: chain index of the joint that must reach ``target``; joints 1..end-1 are optimised.
        target: (..., 3) world position.
    Returns:
        (..., n, 3, 3) solved local rotations (entry 0 = R_root).
    """
    n = R_local.shape[-3]
    R = [R_root] + list(R_local[..., 1:, :, :].unbind(-3))
    off = [p_root] + list(offsets[..., 1:, :].unbind(-2))
    Rg, pg = [R_root], [p_root]
    for k in range(1, n):  # global frames along the chain
        Rg.append(Rg[k - 1] @ R[k])
        pg.append((Rg[k - 1] @ off[k][..., None])[..., 0] + pg[k - 1])
    ex = torch.zeros_like(p_root)
    ex[..., 0] = 1
    ey = torch.zeros_like(p_root)
    ey[..., 1] = 1
    for _ in range(iterations):
        for i in range(1, min(end, n - 1)):
            q = matrix_to_quaternion(Rg[i])
            turn = _quat_between(pg[end] - pg[i], target - pg[i])
            q = _quat_slerp(q, quat_mul(turn, q), (i + 1) / n)
            x = quat_rotate(q, ex)
            y = quat_rotate(q, ey)
            x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-9)
            y = y / y.norm(dim=-1, keepdim=True).clamp_min(1e-9)
            solved = torch.stack((x, y, torch.linalg.cross(x, y, dim=-1)), dim=-1)  # columns
            R[i] = _unit_columns(_unit_columns(torch.linalg.inv(Rg[i - 1])) @ solved)
            for k in range(i, n):  # the joints below i move
                Rg[k] = Rg[k - 1] @ R[k]
                if k > i:
                    pg[k] = (Rg[k - 1] @ off[k][..., None])[..., 0] + pg[k - 1]
    return torch.stack(R, dim=-3)


def _global_frame(
    R_local: torch.Tensor, offsets: torch.Tensor, parents: list[int], joint: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Global rotation (..., 3, 3) and position (..., 3) of one joint, composing only its ancestors."""
    path = [joint]
    while parents[path[-1]] >= 0:
        path.append(parents[path[-1]])
    R, p = R_local[..., path[-1], :, :], offsets[..., path[-1], :]
    for j in reversed(path[:-1]):
        R, p = R @ R_local[..., j, :, :], (R @ offsets[..., j, :, None])[..., 0] + p
    return R, p


def contact_ik(
    skeleton: Skeleton,
    body_pose: torch.Tensor,
    betas: torch.Tensor,
    global_orient: torch.Tensor,
    transl: torch.Tensor,
    static_conf_logits: torch.Tensor,
    iterations: int = 2,
) -> dict[str, torch.Tensor]:
    """Contact IK on the post-processed world parameters.

    Args:
        skeleton: body skeleton.
        body_pose: (B, L, 63) decoded pose (before IK); betas: (B, L, 10).
        global_orient: (B, L, 3) world root orientation; transl: (B, L, 3) post-processed world translation
            (``pp/transl``).
        static_conf_logits: (B, L, 6) contact logits.
    Returns:
        ``static_conf`` (B, L, 6) contact probabilities; ``joints_w`` (B, L, 22, 3) FK joints before IK;
        ``targets`` (B, L, 6, 3) blended targets of ``CONTACT_JOINTS``; ``body_pose`` (B, L, 63) solved
        axis-angle of joints 1..21.
    """
    prob = static_conf_logits.sigmoid()
    f = fk(skeleton, body_pose, betas, global_orient, transl)
    targets = contact_targets(f["joints"], prob)
    R_local, offsets = f["R_local"], f["offsets"]
    parents = skeleton.parents.tolist()
    for chain, end in CHAINS:
        R_root, p_root = _global_frame(R_local, offsets, parents, chain[0])
        idx = list(chain)
        solved = ccd_solve_chain(
            R_root,
            p_root,
            R_local[..., idx, :, :],
            offsets[..., idx, :],
            end,
            targets[..., CONTACT_JOINTS.index(chain[end]), :],
            iterations,
        )
        R_local = R_local.clone()
        R_local[..., idx[1:], :, :] = solved[..., 1:, :, :]
    pose = matrix_to_axis_angle(R_local[..., 1:, :, :]).flatten(-2)
    return {"static_conf": prob, "joints_w": f["joints"], "targets": targets, "body_pose": pose}
