"""models.geometry: conversions against known values and scipy, round trips, quaternion continuity, slerp,
SO(3) maps, projection, and forward kinematics against chains worked out by hand."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from scipy.spatial.transform import Rotation, Slerp

from models import geometry as g

RZ90 = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


def rand_aa(*shape: int, seed: int = 0, max_angle: float = 3.0) -> np.ndarray:
    """Random rotation vectors with angles in (0, max_angle)."""
    rng = np.random.default_rng(seed)
    axis = rng.normal(size=(*shape, 3))
    axis /= np.linalg.norm(axis, axis=-1, keepdims=True)
    return axis * rng.uniform(0.01, max_angle, size=(*shape, 1))


def rz(deg: float) -> np.ndarray:
    return Rotation.from_euler("z", deg, degrees=True).as_matrix()


# --------------------------------------------------------------------------------------------------------
# Conversions


def test_known_values_and_scalar_first_order():
    aa = np.array([0.0, 0.0, math.pi / 2])
    np.testing.assert_allclose(g.axis_angle_to_matrix(aa), RZ90, atol=1e-15)
    s = math.sqrt(0.5)
    np.testing.assert_allclose(g.axis_angle_to_quat(aa), [s, 0.0, 0.0, s], atol=1e-15)
    np.testing.assert_allclose(g.quat_to_matrix([s, 0.0, 0.0, s]), RZ90, atol=1e-15)
    np.testing.assert_allclose(g.matrix_to_axis_angle(RZ90), aa, atol=1e-15)
    # identity
    np.testing.assert_allclose(g.quat_to_matrix([1.0, 0, 0, 0]), np.eye(3))
    np.testing.assert_allclose(g.axis_angle_to_matrix(np.zeros(3)), np.eye(3))
    np.testing.assert_allclose(g.matrix_to_quat(np.eye(3)), [1.0, 0, 0, 0])
    # order converters
    q = np.array([0.1, 0.2, 0.3, 0.9])
    np.testing.assert_array_equal(g.quat_xyzw_to_wxyz(q), [0.9, 0.1, 0.2, 0.3])
    np.testing.assert_array_equal(g.quat_wxyz_to_xyzw(g.quat_xyzw_to_wxyz(q)), q)


def test_agreement_with_scipy_and_shapes():
    aa = rand_aa(4, 5, seed=1)
    rot = Rotation.from_rotvec(aa.reshape(-1, 3))
    R = g.axis_angle_to_matrix(aa)
    q = g.axis_angle_to_quat(aa)
    assert R.shape == (4, 5, 3, 3) and q.shape == (4, 5, 4) and R.dtype == np.float64
    np.testing.assert_allclose(R.reshape(-1, 3, 3), rot.as_matrix(), atol=1e-14)
    np.testing.assert_allclose(q.reshape(-1, 4), rot.as_quat()[:, [3, 0, 1, 2]], atol=1e-14)
    np.testing.assert_allclose(g.quat_to_matrix(q), R, atol=1e-14)
    assert g.matrix_to_axis_angle(R).shape == (4, 5, 3)
    assert g.matrix_to_quat(R).shape == (4, 5, 4)
    # float32 in, float64 out
    assert g.axis_angle_to_matrix(aa.astype(np.float32)).dtype == np.float64


def test_round_trips():
    aa = rand_aa(50, seed=2)  # angles below pi: axis-angle is unique
    np.testing.assert_allclose(g.matrix_to_axis_angle(g.axis_angle_to_matrix(aa)), aa, atol=1e-12)
    np.testing.assert_allclose(g.quat_to_axis_angle(g.axis_angle_to_quat(aa)), aa, atol=1e-12)
    R = g.axis_angle_to_matrix(aa)
    q = g.matrix_to_quat(R)
    np.testing.assert_allclose(np.linalg.norm(q, axis=-1), 1.0, atol=1e-14)
    np.testing.assert_allclose(g.quat_to_matrix(q), R, atol=1e-14)
    # q and -q: the same rotation; canonical picks w >= 0
    np.testing.assert_allclose(g.quat_to_matrix(-q), R, atol=1e-14)
    qc = g.matrix_to_quat(g.quat_to_matrix(-q), canonical=True)
    assert np.all(qc[:, 0] >= 0)
    np.testing.assert_allclose(np.abs(np.sum(qc * q, axis=-1)), 1.0, atol=1e-12)
    # non-unit quaternions are normalised
    np.testing.assert_allclose(g.quat_to_matrix(3.0 * q), R, atol=1e-14)


# --------------------------------------------------------------------------------------------------------
# Quaternion sequences and slerp


def test_quat_continuous_flips_into_one_hemisphere():
    aa = np.stack([np.zeros(40), np.linspace(0, 4 * np.pi, 40), np.zeros(40)], axis=1)  # two turns about y
    q = g.axis_angle_to_quat(aa)  # scipy wraps at pi: sign jumps
    q[::3] *= -1
    assert np.any(np.sum(q[1:] * q[:-1], axis=-1) < 0)
    c = g.quat_continuous(q)
    assert np.all(np.sum(c[1:] * c[:-1], axis=-1) > 0)
    np.testing.assert_array_equal(c[0], q[0])
    np.testing.assert_allclose(g.quat_to_matrix(c), g.quat_to_matrix(q), atol=1e-14)  # same rotations
    # per joint: (T, J, 4) flips each joint's curve on its own
    qj = np.stack([q, -q], axis=1)
    cj = g.quat_continuous(qj)
    assert np.all(np.sum(cj[1:] * cj[:-1], axis=-1) > 0)


def test_slerp_endpoints_midpoint_and_shorter_arc():
    q0 = g.axis_angle_to_quat(np.zeros(3))
    q1 = g.axis_angle_to_quat([0.0, 0.0, math.pi / 2])
    np.testing.assert_allclose(g.quat_slerp(q0, q1, 0.0), q0, atol=1e-15)
    np.testing.assert_allclose(g.quat_slerp(q0, q1, 1.0), q1, atol=1e-15)
    mid = g.quat_slerp(q0, q1, 0.5)
    np.testing.assert_allclose(g.quat_to_matrix(mid), rz(45.0), atol=1e-15)
    # -q1 is the same rotation: still the 45 degree midpoint, not the long way round
    np.testing.assert_allclose(g.quat_to_matrix(g.quat_slerp(q0, -q1, 0.5)), rz(45.0), atol=1e-15)
    np.testing.assert_allclose(g.quat_to_matrix(g.quat_slerp(q0, q1, 0.25)), rz(22.5), atol=1e-15)
    # batched weights (..., 1), and nearly equal quaternions stay finite and unit
    w = np.linspace(0, 1, 5)[:, None]
    out = g.quat_slerp(q0[None], q1[None], w)
    np.testing.assert_allclose(
        g.rotation_angle_deg(g.quat_to_matrix(out)), [0, 22.5, 45, 67.5, 90], atol=1e-12
    )
    qa = g.axis_angle_to_quat([0.0, 1e-12, 0.0])
    near = g.quat_slerp(q0, qa, 0.5)
    assert np.all(np.isfinite(near)) and abs(np.linalg.norm(near) - 1) < 1e-15


def test_slerp_agrees_with_scipy():
    aa = rand_aa(2, 30, seed=3)
    q0, q1 = g.axis_angle_to_quat(aa[0]), g.axis_angle_to_quat(aa[1])
    w = np.random.default_rng(4).uniform(size=(30, 1))
    got = g.quat_to_matrix(g.quat_slerp(q0, q1, w))
    for i in range(30):
        ref = Slerp([0.0, 1.0], Rotation.from_rotvec(aa[:, i]))([w[i, 0]]).as_matrix()[0]
        np.testing.assert_allclose(got[i], ref, atol=1e-12)


def test_slerp_resample_over_time():
    x = np.array([0.0, 1.0, 3.0])
    R = np.stack([rz(0), rz(90), rz(90 + 60)])
    xq = np.array([-1.0, 0.0, 0.5, 1.0, 2.0, 3.0, 7.0])
    out = g.slerp_resample(x, R, xq)
    want = [0, 0, 45, 90, 120, 150, 150]  # nearest key outside [0, 3]
    np.testing.assert_allclose(
        [math.degrees(Rotation.from_matrix(r).as_rotvec()[2]) for r in out], want, atol=1e-9
    )
    # same as scipy's Slerp inside the range
    inside = (xq >= x[0]) & (xq <= x[-1])
    ref = Slerp(x, Rotation.from_matrix(R))(xq[inside]).as_matrix()
    np.testing.assert_allclose(out[inside], ref, atol=1e-12)
    # one key: repeated
    np.testing.assert_allclose(g.slerp_resample(x[:1], R[:1], xq), np.broadcast_to(R[0], (7, 3, 3)))


# --------------------------------------------------------------------------------------------------------
# SO(3)


def test_so3_log_exp_and_angle():
    w = rand_aa(20, seed=5)
    np.testing.assert_allclose(g.so3_log(g.so3_exp(w)), w, atol=1e-12)
    np.testing.assert_allclose(g.so3_exp(np.zeros((2, 3))), np.broadcast_to(np.eye(3), (2, 3, 3)))
    # exp of a sum of parallel vectors = product of the exps (one-parameter subgroup)
    a = np.array([0.3, -0.2, 0.5])
    np.testing.assert_allclose(g.so3_exp(2.5 * a), g.so3_exp(a) @ g.so3_exp(1.5 * a), atol=1e-14)
    np.testing.assert_allclose(
        g.rotation_angle_deg(g.so3_exp(w)), np.degrees(np.linalg.norm(w, axis=-1)), atol=1e-9
    )
    assert g.rotation_angle_deg(rz(180.0)) == pytest.approx(180.0)
    assert np.linalg.norm(g.so3_log(rz(180.0))) == pytest.approx(math.pi)
    # tiny angles keep their precision (arccos of the trace would give 0 or ~1e-6 deg noise)
    tiny = g.rotation_angle_deg(g.so3_exp(np.array([0.0, 1e-9, 0.0])))
    assert tiny == pytest.approx(math.degrees(1e-9), rel=1e-6)


def test_project_so3():
    R = g.axis_angle_to_matrix(rand_aa(10, seed=6))
    np.testing.assert_allclose(g.project_so3(R), R, atol=1e-14)  # rotations are fixed points
    noisy = R + np.random.default_rng(7).normal(scale=1e-3, size=R.shape)
    P = g.project_so3(noisy)
    np.testing.assert_allclose(
        P @ np.transpose(P, (0, 2, 1)), np.broadcast_to(np.eye(3), P.shape), atol=1e-14
    )
    np.testing.assert_allclose(np.linalg.det(P), 1.0, atol=1e-14)
    assert np.abs(P - R).max() < 5e-3
    # a reflection gives a proper rotation (det +1), not the reflection itself
    assert np.linalg.det(g.project_so3(np.diag([1.0, 1.0, -1.0]))) == pytest.approx(1.0)


# --------------------------------------------------------------------------------------------------------
# Forward kinematics


def test_fk_hand_computed_chain():
    parents = [-1, 0, 1]
    offsets = np.array([[5.0, 5.0, 5.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])  # root offset replaced below
    R_local = np.stack([RZ90, RZ90, np.eye(3)])[None]  # (T=1, J=3, 3, 3)
    Rg, pos = g.forward_kinematics(parents, R_local, offsets, root_position=np.array([[1.0, 0.0, 0.0]]))
    # root at (1,0,0) turned 90 deg about z; joint 1 at root + Rz90 (1,0,0) = (1,1,0), turned 180 deg;
    # joint 2 at (1,1,0) + Rz180 (1,0,0) = (0,1,0)
    np.testing.assert_allclose(pos[0], [[1, 0, 0], [1, 1, 0], [0, 1, 0]], atol=1e-15)
    np.testing.assert_allclose(Rg[0, 0], RZ90, atol=1e-15)
    np.testing.assert_allclose(Rg[0, 1], rz(180), atol=1e-15)
    np.testing.assert_allclose(Rg[0, 2], rz(180), atol=1e-15)
    # without root_position the root sits at its own offset
    _, pos2 = g.forward_kinematics(parents, R_local, offsets)
    np.testing.assert_allclose(pos2[0, 0], [5, 5, 5])
    np.testing.assert_allclose(pos2[0, 2] - pos2[0, 0], pos[0, 2] - pos[0, 0], atol=1e-15)


def test_fk_branches_batches_and_rest_pose():
    # a root with two children, one of them with a child: identity rotations give the rest joints back
    rest = np.array([[0.0, 1.0, 0.0], [0.2, 0.9, 0.0], [-0.2, 0.9, 0.0], [0.2, 0.5, 0.1]])
    parents = np.array([-1, 0, 0, 1])
    off = g.joint_offsets(rest, parents)
    np.testing.assert_allclose(off, [[0, 1, 0], [0.2, -0.1, 0], [-0.2, -0.1, 0], [0, -0.4, 0.1]], atol=1e-15)
    eye = np.broadcast_to(np.eye(3), (2, 3, 4, 3, 3))
    Rg, pos = g.forward_kinematics(parents, eye, off)
    assert Rg.shape == (2, 3, 4, 3, 3) and pos.shape == (2, 3, 4, 3)
    np.testing.assert_allclose(pos, np.broadcast_to(rest, pos.shape), atol=1e-15)
    # a rotation of joint 1 moves only its child, about joint 1
    R = np.array(eye[0, 0])
    R[1] = RZ90
    _, p = g.forward_kinematics(parents, R, off)
    np.testing.assert_allclose(p[[0, 1, 2]], rest[[0, 1, 2]], atol=1e-15)
    np.testing.assert_allclose(p[3], rest[1] + RZ90 @ (rest[3] - rest[1]), atol=1e-15)
    # per-frame offsets (T, J, 3) and a root path (T, 3) broadcast together
    T = 5
    root = np.random.default_rng(8).normal(size=(T, 3))
    _, pt = g.forward_kinematics(
        parents, np.broadcast_to(R, (T, 4, 3, 3)), np.broadcast_to(off, (T, 4, 3)), root
    )
    np.testing.assert_allclose(pt - root[:, None], np.broadcast_to(p - p[0], pt.shape), atol=1e-14)
    with pytest.raises(ValueError, match="parents"):
        g.forward_kinematics([-1, 2, 0], eye[0, 0, :3], off[:3])


def test_fk_matches_a_chain_of_homogeneous_transforms():
    rng = np.random.default_rng(9)
    parents = [-1, 0, 1, 1, 3, 0]
    T, J = 7, len(parents)
    R = g.axis_angle_to_matrix(rand_aa(T, J, seed=10))
    off = rng.normal(size=(J, 3))
    root = rng.normal(size=(T, 3))
    Rg, pos = g.forward_kinematics(parents, R, off, root)
    M = np.tile(np.eye(4), (T, J, 1, 1))
    M[..., :3, :3] = R
    M[..., :3, 3] = off
    M[:, 0, :3, 3] = root
    W = np.empty_like(M)
    for i, p in enumerate(parents):
        W[:, i] = M[:, i] if p < 0 else W[:, p] @ M[:, i]
    np.testing.assert_allclose(pos, W[..., :3, 3], atol=1e-12)
    np.testing.assert_allclose(Rg, W[..., :3, :3], atol=1e-12)


def test_import_is_cheap():
    code = "import sys, models.geometry; print(sorted({'torch', 'cv2', 'bpy'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
