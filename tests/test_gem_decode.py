"""GEM decoding stages against the golden reference fixtures (groups dec, incam, world, pp, ik, pred).

Tolerances: decode and camera 1e-4 * max(1, max|ref|); the world rollout
teacher-forced 2e-2 absolute (yaw_aa_raw 1e-3 rad) because the reference amplifies rounding there; the
static-joint step and IK teacher-forced 1e-4 absolute; masks exact; end-to-end world-dependent keys 2e-2.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from models.body_model import BodyModel
from models.gem import codec, rotations
from models.gem.camera import default_intrinsics, transl_from_weak_perspective
from models.gem.ik import ccd_solve_chain, contact_ik
from models.gem.parity_decode import check_decode
from models.gem.postprocess import static_joint_postprocess
from models.gem.rollout import gaussian_smooth, static_cam_angvel, world_rollout
from models.gem.skeleton import Skeleton, fk
from models.geometry import axis_angle_to_matrix, forward_kinematics, joint_offsets
from tests.shared import fixture_dir

FIXTURES = fixture_dir("gem_parity")
BODY_MODEL = FIXTURES / "body_model"
SCENARIOS = sorted(p.stem for p in FIXTURES.glob("S*.pt")) or ["S1"]
needs_fixtures = pytest.mark.skipif(
    not (FIXTURES / "S1.pt").is_file(), reason=f"GEM parity fixtures not found at {FIXTURES}"
)

_cache: dict[str, dict] = {}


def load(name: str) -> dict:
    if name not in _cache:
        _cache[name] = torch.load(FIXTURES / f"{name}.pt", weights_only=True)
    return _cache[name]


@pytest.fixture(scope="module")
def skeleton() -> Skeleton:
    if not (BODY_MODEL / "SMPLX_NEUTRAL.npz").is_file():
        pytest.skip(f"synthetic body model not found at {BODY_MODEL}")
    return Skeleton.from_dir(BODY_MODEL)


def rel_tol(ref: torch.Tensor) -> float:
    return 1e-4 * max(1.0, float(ref.abs().max()))


def assert_close(key: str, got: torch.Tensor, ref: torch.Tensor, tol: float) -> None:
    assert got.shape == ref.shape, (key, got.shape, ref.shape)
    err = float((got - ref).abs().max())
    assert err <= tol, f"{key}: max |err| {err:.3e} > {tol:.1e}"


# ----------------------------------------------------------------------------------------------- rotations


def _random_rotations(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, 4, generator=g, dtype=torch.float64)
    return rotations.quaternion_to_matrix(q / q.norm(dim=-1, keepdim=True))


def _rodrigues(aa: torch.Tensor) -> torch.Tensor:
    theta = aa.norm(dim=-1, keepdim=True)[..., None]
    k = aa / aa.norm(dim=-1, keepdim=True)
    z = torch.zeros_like(k[..., 0])
    Kx = torch.stack((z, -k[..., 2], k[..., 1], k[..., 2], z, -k[..., 0], -k[..., 1], k[..., 0], z), -1)
    Kx = Kx.reshape(*aa.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=aa.dtype)
    return eye + torch.sin(theta) * Kx + (1 - torch.cos(theta)) * (Kx @ Kx)


def test_rotation_matrices_are_proper_and_match_rodrigues():
    g = torch.Generator().manual_seed(1)
    aa = torch.randn(500, 3, generator=g, dtype=torch.float64)
    R = rotations.axis_angle_to_matrix(aa)
    eye = torch.eye(3, dtype=torch.float64)
    assert torch.allclose(R @ R.transpose(-1, -2), eye.expand_as(R), atol=1e-12)
    assert torch.allclose(torch.linalg.det(R), torch.ones(500, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(R, _rodrigues(aa), atol=1e-12)
    # x' = R x: a quarter turn about +z takes x to y
    Rz = rotations.axis_angle_to_matrix(torch.tensor([0.0, 0.0, math.pi / 2], dtype=torch.float64))
    assert torch.allclose(
        Rz @ torch.tensor([1.0, 0, 0], dtype=torch.float64), torch.tensor([0.0, 1, 0]).double()
    )


def test_rotation_round_trips():
    R = _random_rotations(1000)
    aa = rotations.matrix_to_axis_angle(R)
    assert float(aa.norm(dim=-1).max()) <= math.pi + 1e-12
    assert torch.allclose(rotations.axis_angle_to_matrix(aa), R, atol=1e-10)
    assert torch.allclose(rotations.rot6d_to_matrix(rotations.matrix_to_rot6d(R)), R, atol=1e-12)
    # 6D = first two rows, row-major
    assert torch.equal(rotations.matrix_to_rot6d(R)[:, :3], R[:, 0]) and torch.equal(
        rotations.matrix_to_rot6d(R)[:, 3:], R[:, 1]
    )
    q = rotations.matrix_to_quaternion(R)
    assert bool((q[:, 0] >= 0).all())
    assert torch.allclose(rotations.quaternion_to_matrix(q), R, atol=1e-12)
    assert torch.allclose(
        rotations.quaternion_to_axis_angle(rotations.axis_angle_to_quaternion(aa)), aa, atol=1e-10
    )
    # small angles and angles close to pi
    small = torch.tensor([[1e-8, -2e-8, 3e-9], [0.0, 0.0, 0.0], [1e-3, 0, 0]], dtype=torch.float64)
    assert torch.allclose(
        rotations.matrix_to_axis_angle(rotations.axis_angle_to_matrix(small)), small, atol=1e-14
    )
    axis = torch.nn.functional.normalize(torch.randn(50, 3, dtype=torch.float64), dim=-1)
    near_pi = axis * (math.pi - 1e-4)
    back = rotations.matrix_to_axis_angle(rotations.axis_angle_to_matrix(near_pi))
    assert torch.allclose(back, near_pi, atol=1e-8)


def test_rot6d_gram_schmidt_and_quaternion_ops():
    g = torch.Generator().manual_seed(2)
    d6 = torch.randn(200, 6, generator=g, dtype=torch.float64)
    R = rotations.rot6d_to_matrix(d6)
    assert torch.allclose(R @ R.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand_as(R), atol=1e-12)
    assert torch.allclose(R[:, 0], d6[:, :3] / d6[:, :3].norm(dim=-1, keepdim=True), atol=1e-12)
    # the second row lies in the plane of the two input vectors
    assert torch.allclose((R[:, 2] * d6[:, 3:]).sum(-1), torch.zeros(200, dtype=torch.float64), atol=1e-12)
    R1, R2 = _random_rotations(100, 3), _random_rotations(100, 4)
    q1, q2 = rotations.matrix_to_quaternion(R1), rotations.matrix_to_quaternion(R2)
    assert torch.allclose(rotations.quaternion_to_matrix(rotations.quat_mul(q1, q2)), R1 @ R2, atol=1e-12)
    v = torch.randn(100, 3, generator=g, dtype=torch.float64)
    assert torch.allclose(rotations.quat_rotate(q1, v), (R1 @ v[..., None])[..., 0], atol=1e-12)
    assert torch.equal(rotations.cross(v, v), torch.zeros_like(v))
    assert torch.allclose(rotations.cross(v, R1[:, 0]), torch.linalg.cross(v, R1[:, 0]), atol=1e-12)


# ---------------------------------------------------------------------------------------------- codec etc.


def test_codec_statistics_and_round_trip():
    assert codec.motion_mean().shape == (151,) and codec.motion_std().shape == (151,)
    above = torch.nonzero(codec.motion_std() > 1).flatten().tolist()
    assert above == [128, 129, 130, 131, 133, 135]
    assert bool((codec.motion_std(clip=False) < 1).any())
    mean = codec.motion_mean()
    assert mean[126:136].tolist() == pytest.approx(
        [0.231, 0.175, 0.2931, -0.1859, -1.1163, -1.1028, -0.2573, 0.3555, 0.3732, 0.2852]
    )
    assert mean[148:].tolist() == pytest.approx([-0.0002, -0.0006, 0.0069])
    x = torch.randn(2, 5, 151)
    assert torch.allclose(codec.normalize(codec.denormalize(x)), x, atol=1e-5)
    with pytest.raises(ValueError):
        codec.decode(torch.zeros(1, 4, 150))


def test_gaussian_smooth_matches_scipy():
    from scipy.ndimage import gaussian_filter1d

    x = torch.randn(2, 40, 3, dtype=torch.float64)
    ref = gaussian_filter1d(x.numpy(), 3.0, axis=1, mode="nearest", truncate=4.0)
    assert np.allclose(gaussian_smooth(x, dim=1).numpy(), ref, atol=1e-6)


def test_default_intrinsics_and_weak_perspective():
    K = default_intrinsics(1280, 720, 4)
    assert K.shape == (4, 3, 3) and K[0].tolist() == [[1280, 0, 640], [0, 1280, 360], [0, 0, 1]]
    # a body centred in the image, box of 256 px, crop scale 1: depth 2 f / 256
    t = transl_from_weak_perspective(
        torch.tensor([1.0, 0.1, -0.2]), torch.tensor([640.0, 360.0, 256.0]), K[0]
    )
    assert t.tolist() == pytest.approx([0.1, -0.2, 10.0])


# ------------------------------------------------------------------------------------------------ skeleton


@needs_fixtures
def test_skeleton_equals_reference_file(skeleton):
    ref = torch.load(BODY_MODEL / "body_skeleton.pt", weights_only=True)
    assert torch.equal(skeleton.J_template, ref["J_template_22"])
    assert torch.equal(skeleton.J_shapedirs, ref["J_shapedirs_22"])
    assert torch.equal(skeleton.parents, ref["parents_22"])
    full = Skeleton.from_npz(BODY_MODEL / "SMPLX_NEUTRAL.npz", num_joints=55)
    for k in ("J_template", "J_shapedirs", "parents"):
        assert torch.equal(getattr(full, k), ref[k]), k


@needs_fixtures
def test_fk_rest_pose(skeleton):
    betas = torch.randn(2, 3, 10)
    transl = torch.randn(2, 3, 3)
    zero = torch.zeros(2, 3, 63)
    out = fk(skeleton, zero, betas, torch.zeros(2, 3, 3), transl)
    assert torch.allclose(out["joints"], skeleton.rest_joints(betas) + transl[..., None, :], atol=1e-5)
    # a root rotation rotates every joint about the pelvis
    aa = torch.tensor([0.0, 0.7, 0.0]).expand(2, 3, 3)
    rot = fk(skeleton, zero, betas, aa, transl)["joints"]
    rest = skeleton.rest_joints(betas)
    expect = (rotations.axis_angle_to_matrix(aa)[..., None, :, :] @ (rest - rest[..., :1, :])[..., None])[
        ..., 0
    ]
    assert torch.allclose(rot, expect + rest[..., :1, :] + transl[..., None, :], atol=1e-5)


@needs_fixtures
def test_skeleton_comes_from_the_body_model_and_fk_agrees_with_geometry(skeleton):
    body = BodyModel.load(BODY_MODEL)
    from_body = Skeleton.from_body_model(body)
    for k in ("J_template", "J_shapedirs", "parents"):
        assert torch.equal(getattr(from_body, k), getattr(skeleton, k)), k
    g = torch.Generator().manual_seed(0)
    pose, orient = torch.randn(2, 4, 63, generator=g) * 0.5, torch.randn(2, 4, 3, generator=g)
    betas = torch.randn(2, 1, 10, generator=g).expand(2, 4, 10)
    transl = torch.randn(2, 4, 3, generator=g)
    out = fk(skeleton, pose, betas, orient, transl)
    # the same motion through the float64 numpy chain (models.geometry) and the float64 body model
    aa = torch.cat((orient, pose), -1).reshape(2, 4, 22, 3).double().numpy()
    rest = skeleton.rest_joints(betas.double()).numpy()
    par = skeleton.parents.tolist()
    root = rest[..., 0, :] + transl.double().numpy()
    Rg, pos = forward_kinematics(par, axis_angle_to_matrix(aa), joint_offsets(rest, par), root)
    assert np.abs(out["joints"].numpy() - pos).max() < 1e-5
    assert np.abs(out["R_global"].numpy() - Rg).max() < 1e-5
    b, o, p, t = (x[0].double().numpy() for x in (betas, orient, pose, transl))
    np.testing.assert_allclose(body.posed_joints(o, p, b[0], t), pos[0], atol=1e-5)


def test_missing_body_model(tmp_path):
    with pytest.raises(FileNotFoundError):
        Skeleton.from_dir(tmp_path)


# ------------------------------------------------------------------------------------- fixture parity


@needs_fixtures
@pytest.mark.parametrize("name", SCENARIOS)
def test_dec_and_incam(name, skeleton):
    sc = load(name)
    dec = codec.decode(sc["out/pred_x"], skeleton)
    for k, v in dec.items():
        assert_close(f"dec/{k}", v, sc[f"dec/{k}"], rel_tol(sc[f"dec/{k}"]))
    t = transl_from_weak_perspective(
        sc["out/pred_cam"], sc["input/bbx_xys"][None], sc["input/K_fullimg"][None]
    )
    assert_close("incam/transl", t, sc["incam/transl"], rel_tol(sc["incam/transl"]))


@needs_fixtures
@pytest.mark.parametrize("name", SCENARIOS)
def test_world_teacher_forced(name):
    sc = load(name)
    w = world_rollout(
        sc["dec/global_orient_gv"],
        sc["dec/local_transl_vel"],
        sc["dec/global_orient"],
        sc["input/cam_angvel"][None],
    )
    for k, v in w.items():
        assert_close(f"world/{k}", v, sc[f"world/{k}"], 1e-3 if k == "yaw_aa_raw" else 2e-2)
    assert torch.equal(w["R_rel"], sc["world/R_rel"])
    if bool((sc["input/cam_angvel"] == static_cam_angvel(1)).all()):
        # static camera: no spurious yaw from rounding, the world frame is the gravity-view frame
        assert torch.equal(w["yaw_aa_raw"], torch.zeros_like(w["yaw_aa_raw"]))
        assert torch.equal(w["R_acc"], torch.eye(3).expand_as(w["R_acc"]))


@needs_fixtures
@pytest.mark.parametrize("name", SCENARIOS)
def test_static_joint_and_ik_teacher_forced(name, skeleton):
    sc = load(name)
    pose, betas, logits, orient = (
        sc["dec/body_pose"],
        sc["dec/betas"],
        sc["out/static_conf_logits"],
        sc["world/global_orient"],
    )
    pp = static_joint_postprocess(skeleton, pose, betas, orient, sc["world/transl"], logits)
    for k, v in pp.items():
        ref = sc[f"pp/{k}"]
        if ref.dtype == torch.bool:
            assert torch.equal(v, ref), k
        else:
            assert_close(f"pp/{k}", v, ref, 1e-4)
    ik = contact_ik(skeleton, pose, betas, orient, sc["pp/transl"], logits)
    for k, v in ik.items():
        assert_close(f"ik/{k}", v, sc[f"ik/{k}"], 1e-4)
    # the IK really moves the pose (so the comparison is meaningful)
    assert float((sc["ik/body_pose"] - pose).abs().max()) > 1e-2


def _out_inputs(sc: dict) -> tuple[dict, dict]:
    out = {k: sc[f"out/{k}"] for k in ("pred_x", "pred_cam", "static_conf_logits")}
    inputs = {k: sc[f"input/{k}"] for k in ("bbx_xys", "K_fullimg", "cam_angvel")}
    return out, inputs


@needs_fixtures
@pytest.mark.parametrize("name", SCENARIOS)
def test_pred_end_to_end(name, skeleton):
    sc = load(name)
    out, inputs = _out_inputs(sc)
    pred = codec.decode_all(out, inputs, skeleton, intermediates=True)
    tight = {
        "pred/incam/global_orient",
        "pred/incam/transl",
        "pred/incam/betas",
        "pred/global/betas",
        "pred/K_fullimg",
    }
    for k in [k for k in sc if k.startswith("pred/")]:
        got = pred[k][0]
        assert_close(k, got, sc[k], rel_tol(sc[k]) if k in tight else 2e-2)
    for k in ("pp/static_label", "pp/is_static"):
        assert torch.equal(pred[k], sc[k]), k
    for k in [k for k in sc if k.split("/")[0] in ("world", "pp", "ik") and sc[k].dtype != torch.bool]:
        tol = 1e-3 if k == "world/yaw_aa_raw" else 2e-2
        assert_close(k, pred[k], sc[k], tol)


@needs_fixtures
@pytest.mark.parametrize("name", SCENARIOS)
def test_check_decode_reports_all_groups(name):
    rows = check_decode(load(name), BODY_MODEL)
    groups = {k.split("/")[0] for k, *_ in rows}
    assert groups == {"dec", "incam", "world", "pp", "ik", "pred"}
    failed = [r for r in rows if not r[3]]
    assert not failed, failed


# ---------------------------------------------------------------------------------- batch, no body model


@needs_fixtures
def test_batch_of_people_matches_single(skeleton):
    a, b = load("S1"), load("S1n")
    out_a, inp = _out_inputs(a)
    out_b, _ = _out_inputs(b)
    out = {k: torch.cat((out_a[k], out_b[k])) for k in out_a}
    # bbx per person; K and cam_angvel (L, ...) shared by both people
    inputs = {**inp, "bbx_xys": torch.stack((a["input/bbx_xys"], b["input/bbx_xys"]))}
    both = codec.decode_all(out, inputs, skeleton)
    one_a = codec.decode_all(out_a, inp, skeleton)
    one_b = codec.decode_all(out_b, {**inp, "bbx_xys": b["input/bbx_xys"]}, skeleton)
    for k in both:
        assert both[k].shape[0] == 2
        assert torch.allclose(both[k][0], one_a[k][0], atol=1e-5), k
        assert torch.allclose(both[k][1], one_b[k][0], atol=1e-5), k


@needs_fixtures
def test_default_camera_inputs(skeleton):
    sc = load("S1")
    out, inputs = _out_inputs(sc)
    W, H = sc["meta"]["image_wh"]
    assert torch.equal(default_intrinsics(W, H, sc["input/K_fullimg"].shape[0]), sc["input/K_fullimg"])
    ref = codec.decode_all(out, inputs, skeleton)
    implied = codec.decode_all(out, {"bbx_xys": inputs["bbx_xys"], "image_wh": (W, H)}, skeleton)
    for k in ref:
        assert torch.equal(ref[k], implied[k]), k
    with pytest.raises(ValueError):
        codec.decode_all(out, {**inputs, "bbx_xys": inputs["bbx_xys"][:-1]}, skeleton)


@needs_fixtures
def test_without_body_model():
    sc = load("S2")
    out, inputs = _out_inputs(sc)
    with pytest.warns(UserWarning, match="no body model"):
        pred = codec.decode_all(out, inputs, None, intermediates=True)
    assert not any(k.startswith(("pp/", "ik/", "dec/offset")) for k in pred)
    assert torch.equal(pred["pred/global/transl"], pred["world/transl"])
    assert torch.equal(pred["pred/global/body_pose"], pred["dec/body_pose"])
    assert torch.equal(pred["pred/incam/body_pose"], pred["dec/body_pose"])
    assert_close("world/transl", pred["world/transl"], sc["world/transl"], 2e-2)
    # explicitly disabled post-processing does not warn
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        codec.decode_all(out, inputs, None, postprocess=False)
    rows = check_decode(sc, None)
    assert rows and all(r[3] for r in rows)
    assert not any(k.startswith(("pp/", "ik/")) or k == "pred/global/transl" for k, *_ in rows)


def test_ccd_reaches_a_reachable_target():
    # planar 3-bone chain along x; target reachable by bending
    n = 5
    R_local = torch.eye(3).expand(1, n, 3, 3).clone()
    offsets = torch.tensor([[0.0, 0, 0], [1, 0, 0], [1, 0, 0], [1, 0, 0], [1, 0, 0]])[None]
    target = torch.tensor([[2.5, 1.2, 0.3]])
    before = float((torch.tensor([3.0, 0, 0]) - target[0]).norm())
    R = R_local
    for _ in range(10):
        R = ccd_solve_chain(torch.eye(3)[None], torch.zeros(1, 3), R, offsets, 3, target)
    _, p = forward_kinematics([-1, 0, 1, 2, 3], R.numpy(), offsets.numpy())
    assert float(np.linalg.norm(p[0, 3] - target[0].numpy())) < 0.05 * before
    assert torch.allclose(R @ R.transpose(-1, -2), torch.eye(3).expand_as(R), atol=1e-5)
