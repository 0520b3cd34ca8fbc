"""A synthetic SMPL-X-layout body model for tests: same keys, shapes (except the vertex count) and joint tree
as the licence-gated ``SMPLX_NEUTRAL.npz``, with made-up human-like proportions.

Each of the 55 joints gets a small cloud of vertices (an octahedron plus a cube) centred on it, so the
regressor (uniform weights over the cloud) returns the joint exactly; extra vertices along every bone are
skinned to both ends. Shape directions move whole clouds, so betas change the skeleton (and a beta 0 that
scales the body). ``posedirs`` are zeros. Nothing here comes from the real model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.body_model import JOINT_NAMES, SMPLX_PARENTS

_BODY = {  # metres, y up, model rest frame (pelvis a bit below the origin like SMPL-X)
    "pelvis": (0.0, -0.35, 0.01),
    "left_hip": (0.06, -0.44, 0.0),
    "right_hip": (-0.06, -0.44, 0.0),
    "spine1": (0.0, -0.24, -0.01),
    "left_knee": (0.11, -0.82, 0.01),
    "right_knee": (-0.11, -0.82, 0.01),
    "spine2": (0.0, -0.10, 0.0),
    "left_ankle": (0.09, -1.22, -0.03),
    "right_ankle": (-0.09, -1.22, -0.03),
    "spine3": (0.0, -0.05, 0.02),
    "left_foot": (0.12, -1.28, 0.09),
    "right_foot": (-0.12, -1.28, 0.09),
    "neck": (0.0, 0.17, -0.02),
    "left_collar": (0.07, 0.11, -0.01),
    "right_collar": (-0.07, 0.11, -0.01),
    "head": (0.0, 0.26, 0.02),
    "left_shoulder": (0.18, 0.13, -0.02),
    "right_shoulder": (-0.18, 0.13, -0.02),
    "left_elbow": (0.44, 0.10, -0.04),
    "right_elbow": (-0.44, 0.10, -0.04),
    "left_wrist": (0.70, 0.11, -0.03),
    "right_wrist": (-0.70, 0.11, -0.03),
    "jaw": (0.0, 0.22, 0.05),
    "left_eye_smplhf": (0.03, 0.30, 0.09),
    "right_eye_smplhf": (-0.03, 0.30, 0.09),
}
_FINGER_BASE = {  # offset of the first phalanx from the wrist and the direction of the finger (left hand)
    "index": ((0.09, 0.0, 0.03), (1.0, 0.0, 0.0)),
    "middle": ((0.095, 0.0, 0.01), (1.0, 0.0, 0.0)),
    "pinky": ((0.08, 0.0, -0.04), (1.0, -0.05, -0.1)),
    "ring": ((0.09, 0.0, -0.015), (1.0, -0.02, -0.05)),
    "thumb": ((0.03, -0.01, 0.04), (0.6, -0.2, 0.8)),
}


def joint_template() -> np.ndarray:
    """(55, 3) rest joints for betas = 0."""
    J = np.zeros((55, 3))
    for i, n in enumerate(JOINT_NAMES):
        if n in _BODY:
            J[i] = _BODY[n]
    for side, sx in (("left", 1.0), ("right", -1.0)):
        wrist = J[JOINT_NAMES.index(f"{side}_wrist")]
        for f, (base, d) in _FINGER_BASE.items():
            d = np.array(d) / np.linalg.norm(d)
            p = wrist + np.array(base) * [sx, 1, 1]
            for k in (1, 2, 3):
                J[JOINT_NAMES.index(f"{side}_{f}{k}")] = p + (k - 1) * 0.028 * d * [sx, 1, 1]
    return J


def make_body_model(path: str | Path, seed: int = 0, bone_verts: int = 3) -> Path:
    """Write a synthetic ``SMPLX_NEUTRAL.npz`` at ``path`` (a file path or a folder) and return the file."""
    rng = np.random.default_rng(seed)
    path = Path(path)
    if path.suffix != ".npz":
        path.mkdir(parents=True, exist_ok=True)
        path = path / "SMPLX_NEUTRAL.npz"
    J0 = joint_template()
    parents = np.array(SMPLX_PARENTS)
    r = 0.012
    cloud = np.concatenate(
        [np.eye(3), -np.eye(3), np.array(np.meshgrid([-1, 1], [-1, 1], [-1, 1])).reshape(3, 8).T]
    )
    cloud = cloud * r
    n_cloud = len(cloud)
    verts, owner = [], []
    for j in range(55):
        verts.append(J0[j] + cloud)
        owner += [(j, j, 0.0)] * n_cloud
    for j in range(1, 55):  # vertices along the bone, skinned to both ends
        p = parents[j]
        for k in range(bone_verts):
            a = (k + 1) / (bone_verts + 1)
            off = rng.normal(size=3) * 0.02
            verts.append((J0[p] * (1 - a) + J0[j] * a + off)[None])
            owner.append((p, j, a))
    v = np.concatenate(verts)
    V = len(v)
    Jreg = np.zeros((55, V))
    for j in range(55):
        Jreg[j, j * n_cloud : (j + 1) * n_cloud] = 1.0 / n_cloud
    weights = np.zeros((V, 55))
    for i, (a, b, t) in enumerate(owner):
        weights[i, a] += 1.0 - t
        weights[i, b] += t
    # shape: per-cloud displacements (the joint moves with its cloud), beta 0 scales the body about the pelvis
    shapedirs = np.zeros((V, 3, 20))
    cloud_of = np.array([o[0] if o[2] == 0.0 else -1 for o in owner])
    for k in range(20):
        if k == 0:
            field = (J0 - J0[0]) * 0.06
        else:
            field = rng.normal(size=(55, 3)) * 0.004 / (1 + 0.3 * k)
        for i in range(V):
            a, b, t = owner[i]
            shapedirs[i, :, k] = field[cloud_of[i]] if cloud_of[i] >= 0 else (1 - t) * field[a] + t * field[b]
    faces = []
    octa = [(0, 1, 2), (0, 2, 4), (0, 4, 5), (0, 5, 1), (3, 2, 1), (3, 4, 2), (3, 5, 4), (3, 1, 5)]
    for j in range(55):
        base = j * n_cloud
        faces += [(base + a, base + b, base + c) for a, b, c in octa]
    kintree = np.stack([parents, np.arange(55)]).astype(np.int64)
    kintree[0, 0] = 4294967295  # the official files store the root's parent as uint32 -1
    np.savez_compressed(
        path,
        v_template=v.astype(np.float32),
        f=np.asarray(faces, dtype=np.uint32),
        J_regressor=Jreg.astype(np.float32),
        kintree_table=kintree,
        weights=weights.astype(np.float32),
        posedirs=np.zeros((V, 3, 486), dtype=np.float32),
        shapedirs=shapedirs.astype(np.float32),
        hands_meanl=(rng.normal(size=45) * 0.1).astype(np.float32),
        hands_meanr=(rng.normal(size=45) * 0.1).astype(np.float32),
        hands_componentsl=rng.normal(size=(45, 45)).astype(np.float32),
        hands_componentsr=rng.normal(size=(45, 45)).astype(np.float32),
    )
    return path
