"""SMPL-X body model: the one loader of ``SMPLX_NEUTRAL.npz`` and the one place that shapes and poses the
skeleton, for the exporters (float64 numpy) and for GEM's post-processing (``models.gem.skeleton.Skeleton`` is
built from a ``BodyModel``).

The model file is the licence-gated ``SMPLX_NEUTRAL.npz`` (official layout; the keys read here are
``v_template`` (V, 3), ``f`` (F, 3), ``J_regressor`` (55, V), ``kintree_table`` (2, 55), ``weights``
(V, 55) and ``shapedirs`` (V, 3, >=10)); other keys (``posedirs``, the face landmarks ``lmk_faces_idx`` /
``lmk_bary_coords``, hand PCA, ...) are not needed and may be missing. The arrays are read once and kept in
float64; the shape blend and the joint regression are the ``smplx`` package's own (``smplx.lbs.blend_shapes``
and ``smplx.lbs.vertices2joints``, torch imported when first used), posing is ``models.geometry``.

Conventions: SMPL-X rest frame, y up, metres. A joint's local transform is ``(R_i, J_i - J_parent(i))``; every
rest joint frame is aligned with the model axes (the rest pose has identity rotations), so a joint's local
rotation is simply its axis-angle parameter. Rotation matrices act on column vectors. The pose of the body is
the root rotation (``global_orient``), 21 body joint rotations (``body_pose``) and, for the full tree, jaw,
eyes and 2 x 15 finger joints (kept at identity by the exporters: "at rest").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.geometry import axis_angle_to_matrix, forward_kinematics, joint_offsets

__all__ = [
    "JOINT_NAMES",
    "SMPLX_PARENTS",
    "NUM_BODY_JOINTS",
    "NUM_BETAS",
    "NUM_JOINTS",
    "BodyModel",
    "BodyModelError",
    "find_model_file",
]

#: pelvis + 21 body joints (what GEM estimates)
NUM_BODY_JOINTS = 22
#: body + jaw + 2 eyes + 2 x 15 finger joints
NUM_JOINTS = 55
#: shape coefficients used (GEM estimates the first 10)
NUM_BETAS = 10

_FINGERS = ("index", "middle", "pinky", "ring", "thumb")

#: The 55 SMPL-X skeleton joints in model order, with the names the ``smplx`` package uses.
JOINT_NAMES: tuple[str, ...] = (
    "pelvis",
    "left_hip",
    "right_hip",
    "spine1",
    "left_knee",
    "right_knee",
    "spine2",
    "left_ankle",
    "right_ankle",
    "spine3",
    "left_foot",
    "right_foot",
    "neck",
    "left_collar",
    "right_collar",
    "head",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "jaw",
    "left_eye_smplhf",
    "right_eye_smplhf",
    *(f"left_{f}{k}" for f in _FINGERS for k in (1, 2, 3)),
    *(f"right_{f}{k}" for f in _FINGERS for k in (1, 2, 3)),
)
assert len(JOINT_NAMES) == NUM_JOINTS


def _smplx_parents() -> tuple[int, ...]:
    body = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19)
    face = (15, 15, 15)  # jaw and eyes hang off the head
    hands: list[int] = []
    for wrist, first in ((20, 25), (21, 40)):
        for f in range(5):
            j = first + 3 * f
            hands += [wrist, j, j + 1]
    return body + face + tuple(hands)


#: Parent of each of the 55 joints (-1 for the pelvis), the official ``kintree_table[0]``.
SMPLX_PARENTS: tuple[int, ...] = _smplx_parents()

_NPZ_NAME = "SMPLX_NEUTRAL.npz"


class BodyModelError(ValueError):
    """The body model is missing or not an SMPL-X model; ``str(e)`` is one line for a report."""


def find_model_file(path: str | Path) -> Path:
    """The ``.npz`` for a path that is the file itself or a folder holding ``SMPLX_NEUTRAL.npz`` (directly or
    in ``smplx/``). Raises BodyModelError naming where it looked."""
    p = Path(path).expanduser()
    candidates = [p] if p.suffix == ".npz" else [p / _NPZ_NAME, p / "smplx" / _NPZ_NAME]
    for c in candidates:
        if c.is_file():
            return c
    raise BodyModelError(f"no SMPL-X body model at {' or '.join(str(c) for c in candidates)}")


@dataclass(frozen=True)
class BodyModel:
    """The SMPL-X model as read from its ``.npz`` (float64, model order of the 55 joints).

    Attributes:
        v_template: (V, 3) template vertices (metres, y up).
        faces: (F, 3) int64 triangle vertex indices.
        J_regressor: (55, V) joint regressor.
        weights: (V, 55) linear-blend-skinning weights (rows sum to 1).
        shapedirs: (V, 3, 10) shape blend directions of the first 10 betas.
        parents: (55,) int64, -1 for the root; parents[i] < i.
        path: the file it was read from.
    """

    v_template: np.ndarray
    faces: np.ndarray
    J_regressor: np.ndarray
    weights: np.ndarray
    shapedirs: np.ndarray
    parents: np.ndarray
    path: Path

    @classmethod
    def load(cls, path: str | Path) -> BodyModel:
        """Read an ``SMPLX_NEUTRAL.npz`` (file or folder, see ``find_model_file``).

        Raises:
            BodyModelError: no file, a missing key, or not the SMPL-X layout (55 joints, its joint tree).
        """
        f = find_model_file(path)
        try:
            with np.load(f, allow_pickle=False) as z:
                arrays = {k: np.asarray(z[k]) for k in ("v_template", "f", "J_regressor", "kintree_table")}
                arrays["weights"] = np.asarray(z["weights"])
                arrays["shapedirs"] = np.asarray(z["shapedirs"][:, :, :NUM_BETAS])
        except KeyError as e:
            raise BodyModelError(f"{f}: not an SMPL-X model (missing key {e})") from None
        except (OSError, ValueError) as e:
            raise BodyModelError(f"{f}: unreadable ({e})") from None
        v = arrays["v_template"].astype(np.float64)
        parents = arrays["kintree_table"][0].astype(np.int64)
        parents[0] = -1
        n_v = len(v)
        shapes_ok = (
            v.ndim == 2
            and v.shape[1] == 3
            and arrays["J_regressor"].shape == (NUM_JOINTS, n_v)
            and arrays["weights"].shape == (n_v, NUM_JOINTS)
            and arrays["shapedirs"].shape == (n_v, 3, NUM_BETAS)
            and len(parents) == NUM_JOINTS
        )
        if not shapes_ok:
            raise BodyModelError(
                f"{f}: not an SMPL-X layout (expected 55 joints; got J_regressor "
                f"{arrays['J_regressor'].shape}, v_template {v.shape}, shapedirs {arrays['shapedirs'].shape})"
            )
        if tuple(int(p) for p in parents) != SMPLX_PARENTS:
            raise BodyModelError(f"{f}: kintree_table is not the SMPL-X joint tree")
        return cls(
            v_template=v,
            faces=arrays["f"].astype(np.int64),
            J_regressor=arrays["J_regressor"].astype(np.float64),
            weights=arrays["weights"].astype(np.float64),
            shapedirs=arrays["shapedirs"].astype(np.float64),
            parents=parents,
            path=f,
        )

    def rest_vertices(self, betas: np.ndarray) -> np.ndarray:
        """Shaped rest mesh (V, 3) for betas (10,): ``v_template + shapedirs . betas`` (smplx's
        ``blend_shapes``; no pose blend shapes: the rest pose has none)."""
        import torch
        from smplx.lbs import blend_shapes

        b = torch.from_numpy(np.asarray(betas, dtype=np.float64).reshape(1, NUM_BETAS))
        v = torch.from_numpy(self.v_template) + blend_shapes(b, torch.from_numpy(self.shapedirs))
        return v[0].numpy()

    def rest_joints(self, betas: np.ndarray) -> np.ndarray:
        """Shaped rest joint positions (55, 3) for betas (10,): ``J_regressor @ rest_vertices`` (smplx's
        ``vertices2joints``)."""
        import torch
        from smplx.lbs import vertices2joints

        v = torch.from_numpy(self.rest_vertices(betas))[None]
        return vertices2joints(torch.from_numpy(self.J_regressor), v)[0].numpy()

    def posed_joints(
        self,
        global_orient: np.ndarray,
        body_pose: np.ndarray,
        betas: np.ndarray,
        transl: np.ndarray,
        num_joints: int = NUM_BODY_JOINTS,
    ) -> np.ndarray:
        """World joint positions (T, num_joints, 3) of a motion by forward kinematics (float64).

        Args:
            global_orient: (T, 3) axis-angle of the root; body_pose: (T, 63) axis-angle of joints 1..21;
            betas: (10,); transl: (T, 3) added to the rest pelvis position. Joints beyond the 22 body joints
            (``num_joints`` up to 55) are at rest relative to their parents.
        """
        T = len(global_orient)
        rest = self.rest_joints(betas)[:num_joints]
        aa = np.zeros((T, num_joints, 3))
        aa[:, 0] = global_orient
        aa[:, 1:NUM_BODY_JOINTS] = np.asarray(body_pose, dtype=np.float64).reshape(T, NUM_BODY_JOINTS - 1, 3)
        par = self.parents[:num_joints]
        root = rest[0] + np.asarray(transl, dtype=np.float64)
        _, pos = forward_kinematics(par, axis_angle_to_matrix(aa), joint_offsets(rest, par), root)
        return pos

    def skin_weights(self, num_joints: int) -> np.ndarray:
        """Skinning weights (V, num_joints) onto the first ``num_joints`` joints: the weight of every later
        joint (hands, jaw, eyes when only the body is kept) is added to its nearest kept ancestor."""
        w = self.weights.copy()
        for j in range(NUM_JOINTS - 1, num_joints - 1, -1):
            p = int(self.parents[j])
            w[:, p] += w[:, j]
        return w[:, :num_joints]
