"""SMPL-X body skeleton (22 body joints) and forward kinematics, for post-processing and IK.

Only the shaped rest skeleton is needed, never the mesh. It is built from the one SMPL-X body model
(``models.body_model.BodyModel``) with the ``smplx`` package's joint regression, in float32 exactly as the
reference does (every array cast to float32 before the products):

- ``J_template`` (J, 3) = ``J_regressor @ v_template`` (``smplx.lbs.vertices2joints``),
- ``J_shapedirs`` (J, 3, 10) = ``J_regressor`` applied to ``shapedirs[..., :10]``,
- ``parents`` (J,) int64 with the root's parent = -1,

then cut to the first 22 joints (pelvis + 21 body joints; hands, jaw and eyes are not used). Rest joints for
shape ``betas`` are ``J_template + J_shapedirs . betas``.

Forward kinematics follows the SMPL convention: joint ``i``'s local transform is ``(R_i, J_i - J_parent(i))``
(the root's offset is its absolute rest position plus ``transl``), global transforms chain parent-first in
the reference's order of products, and the joint positions are the global translations. World frame: y up.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from smplx.lbs import vertices2joints

from models.body_model import BodyModel

from .rotations import axis_angle_to_matrix

__all__ = ["NUM_BODY_JOINTS", "Skeleton", "fk"]

#: pelvis + 21 body joints
NUM_BODY_JOINTS = 22

_NPZ_NAME = "SMPLX_NEUTRAL.npz"


@dataclass(frozen=True)
class Skeleton:
    """Shape-dependent rest skeleton of the 22 SMPL-X body joints.

    Attributes:
        J_template: (22, 3) float32 rest joint positions for betas = 0 (metres, SMPL-X rest frame).
        J_shapedirs: (22, 3, 10) float32 joint shape blend directions.
        parents: (22,) int64, parent index of each joint, -1 for the root; parents[i] < i.
    """

    J_template: torch.Tensor
    J_shapedirs: torch.Tensor
    parents: torch.Tensor

    @classmethod
    def from_body_model(cls, body: BodyModel, num_joints: int = NUM_BODY_JOINTS) -> Skeleton:
        """The first ``num_joints`` joints of a body model's rest skeleton, regressed in float32."""
        J_regressor = torch.from_numpy(body.J_regressor.astype(np.float32))
        v_template = torch.from_numpy(body.v_template.astype(np.float32))
        shapedirs = torch.from_numpy(body.shapedirs.astype(np.float32))  # (V, 3, 10)
        J_template = vertices2joints(J_regressor, v_template[None])[0]
        J_shapedirs = vertices2joints(J_regressor, shapedirs.permute(2, 0, 1)).permute(1, 2, 0)
        parents = torch.from_numpy(body.parents.copy())
        n = num_joints
        return cls(J_template[:n].contiguous(), J_shapedirs[:n].contiguous(), parents[:n].contiguous())

    @classmethod
    def from_npz(cls, path: str | Path, num_joints: int = NUM_BODY_JOINTS) -> Skeleton:
        """Build from an SMPL-X ``.npz`` (file or folder) read by ``BodyModel.load`` (BodyModelError if it is
        not one)."""
        return cls.from_body_model(BodyModel.load(path), num_joints)

    @classmethod
    def from_dir(cls, body_model_dir: str | Path) -> Skeleton:
        """Load ``SMPLX_NEUTRAL.npz`` from a body-model directory (FileNotFoundError if absent)."""
        path = Path(body_model_dir) / _NPZ_NAME
        if not path.is_file():
            raise FileNotFoundError(f"no SMPL-X body model at {path}")
        return cls.from_npz(path)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Skeleton:
        """Copy onto a device and/or float dtype (parents stay int64)."""
        return Skeleton(
            self.J_template.to(device=device, dtype=dtype),
            self.J_shapedirs.to(device=device, dtype=dtype),
            self.parents.to(device=device),
        )

    def rest_joints(self, betas: torch.Tensor) -> torch.Tensor:
        """Rest joint positions for betas (..., 10) -> (..., 22, 3)."""
        Jt = self.J_template.to(betas)
        Js = self.J_shapedirs.to(betas)
        return Jt + torch.einsum("...k,jck->...jc", betas, Js)

    def local_offsets(self, betas: torch.Tensor, transl: torch.Tensor | None = None) -> torch.Tensor:
        """Bone offsets (..., 22, 3): ``J_i - J_parent(i)``; the root keeps ``J_0`` (plus ``transl`` (..., 3)
        when given)."""
        J = self.rest_joints(betas)
        par = self.parents.clamp_min(0).to(J.device)
        off = J - J[..., par, :]
        root = J[..., :1, :] if transl is None else J[..., :1, :] + transl[..., None, :]
        return torch.cat((root, off[..., 1:, :]), dim=-2)


def fk(
    skeleton: Skeleton,
    body_pose: torch.Tensor,
    betas: torch.Tensor,
    global_orient: torch.Tensor,
    transl: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """SMPL-X body forward kinematics (22 joints), like the reference's ``fk_v2``.

    Args:
        skeleton: the rest skeleton.
        body_pose: (..., 63) axis-angle of joints 1..21 relative to their parents.
        betas: (..., 10) shape.
        global_orient: (..., 3) axis-angle of the root in the target frame.
        transl: (..., 3) root translation (added to the rest pelvis position).
    Returns:
        dict with ``joints`` (..., 22, 3), ``R_local`` (..., 22, 3, 3), ``offsets`` (..., 22, 3) (root
        includes transl) and ``R_global`` (..., 22, 3, 3).
    """
    aa = torch.cat((global_orient, body_pose), dim=-1).reshape(*body_pose.shape[:-1], NUM_BODY_JOINTS, 3)
    R_local = axis_angle_to_matrix(aa)
    offsets = skeleton.local_offsets(betas, transl)
    # The parent-first chain in the reference's own order of float32 products (not smplx's 4x4 transforms,
    # which round differently): IK iterates on these joints, so the last digits reach the exported poses.
    Rg: list[torch.Tensor] = []
    tg: list[torch.Tensor] = []
    for i, p in enumerate(int(p) for p in skeleton.parents):
        if p < 0:
            Rg.append(R_local[..., i, :, :])
            tg.append(offsets[..., i, :])
        else:
            Rg.append(Rg[p] @ R_local[..., i, :, :])
            tg.append((Rg[p] @ offsets[..., i, :, None])[..., 0] + tg[p])
    R_global, joints = torch.stack(Rg, dim=-3), torch.stack(tg, dim=-2)
    return {"joints": joints, "R_local": R_local, "offsets": offsets, "R_global": R_global}
