"""Export stage: canonical smpl.npz (resampling to the source rate), FBX/BVH/USD round trips, camera, preview,
the missing-body-model path and the ``genmocap export`` command.

Accuracy: random smooth motions on a synthetic SMPL-X-layout body model (``tests/body_model.py``) are
written, re-imported (FBX with Blender and with assimp, BVH with bvhio, USD with pxr) and compared per joint
and frame with forward kinematics computed here, independently of the exporters (the expected positions come
straight from the npz arrays and scipy rotations).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation, Slerp

from models.body_model import JOINT_NAMES, SMPLX_PARENTS, BodyModel, BodyModelError
from stages.export import (
    SCHEMA,
    CameraTrack,
    ClipTimeline,
    ExportSettings,
    build_record,
    camera_in_clip_frame,
    camera_record,
    export_clip,
    export_files,
    load_record,
    standard_rate,
)
from tests.body_model import make_body_model

TOL_MM = 0.5


# --------------------------------------------------------------------------------------------------------
# Fixtures and independent reference maths


@pytest.fixture(scope="module")
def body_file(tmp_path_factory) -> Path:
    return make_body_model(tmp_path_factory.mktemp("body_model"), seed=3)


def smooth(rng, L: int, d: int, amp: float, fps: float = 30.0) -> np.ndarray:
    """(L, d) sums of three random sinusoids per channel (smooth at any sampling rate)."""
    t = np.arange(L)[:, None] / fps
    out = np.zeros((L, d))
    for _ in range(3):
        f = rng.uniform(0.1, 1.2, size=d)
        ph = rng.uniform(0, 2 * np.pi, size=d)
        out += amp / 3 * np.sin(2 * np.pi * f * t + ph)
    return out


def random_motion(L: int, seed: int, s0: int = 0) -> dict:
    """A person's model-rate motion (the runner's per-person dict) over samples s0..s0+L-1."""
    rng = np.random.default_rng(seed)
    K = np.array([[900.0, 0, 330], [0, 900.0, 250], [0, 0, 1]])
    go = smooth(rng, L, 3, 2.5)  # root: large angles (beyond pi at times)
    transl = smooth(rng, L, 3, 1.5) + [0.0, 1.0, 0.0]
    return {
        "sample_index": np.arange(s0, s0 + L),
        "present": np.ones(L, bool),
        "global_orient": go.astype(np.float32),
        "transl": transl.astype(np.float32),
        "body_pose": smooth(rng, L, 63, 0.9).astype(np.float32),
        "betas": rng.normal(size=10).astype(np.float32),
        "incam_global_orient": (smooth(rng, L, 3, 0.3) + [np.pi, 0, 0]).astype(np.float32),
        "incam_transl": (smooth(rng, L, 3, 0.3) + [0.0, 0.2, 4.0]).astype(np.float32),
        "contacts": rng.uniform(size=(L, 6)).astype(np.float32),
        "K": np.tile(K, (L, 1, 1)).astype(np.float32),
        "kp2d": np.concatenate(
            [rng.uniform(50, 250, size=(L, 17, 2)), rng.uniform(0.5, 1, size=(L, 17, 1))], axis=2
        ).astype(np.float32),
        "bbox_xyxy": np.tile([100.0, 60.0, 220.0, 230.0], (L, 1)).astype(np.float32),
    }


def timeline(source_fps: float, n_frames: int, model_fps: float = 30.0, **kw) -> ClipTimeline:
    """The clip sample timeline exactly as the decoder builds it (nearest source frame per k / model_fps)."""
    from stages.video import resample_plan

    times = np.arange(n_frames) / source_fps
    plan = resample_plan(times, model_fps)
    return ClipTimeline(
        sample_frame_index=plan,
        sample_time_s=times[plan],
        model_fps=model_fps,
        source_fps=source_fps,
        source_frame_count=n_frames,
        **kw,
    )


def expected_joints(rec: dict, body_file: Path, num_joints: int = 22, in_place: bool = False) -> np.ndarray:
    """(T, J, 3) world joints (metres, y up) straight from the npz arrays: J = J_regressor (v_template +
    shapedirs . betas), local rotations from axis-angle, FK chained through kintree_table."""
    z = np.load(body_file)
    betas = rec["betas"].astype(np.float64)
    v = z["v_template"].astype(np.float64) + z["shapedirs"][:, :, :10].astype(np.float64) @ betas
    J = (z["J_regressor"].astype(np.float64) @ v)[:num_joints]
    parents = z["kintree_table"][0].astype(np.int64)[:num_joints]
    T = len(rec["frame_index"])
    aa = np.zeros((T, num_joints, 3))
    aa[:, 0] = rec["global_orient"]
    aa[:, 1:22] = rec["body_pose"].reshape(T, 21, 3)
    R = Rotation.from_rotvec(aa.reshape(-1, 3)).as_matrix().reshape(T, num_joints, 3, 3)
    root = J[0] + rec["transl"].astype(np.float64)
    if in_place:
        root[:, [0, 2]] = J[0, [0, 2]]
    Rg = np.zeros_like(R)
    pos = np.zeros((T, num_joints, 3))
    for i in range(num_joints):
        p = parents[i] if i else -1
        if p < 0:
            Rg[:, i], pos[:, i] = R[:, i], root
        else:
            Rg[:, i] = Rg[:, p] @ R[:, i]
            pos[:, i] = pos[:, p] + Rg[:, p] @ (J[i] - J[p])
    return pos


def to_file(p: np.ndarray, up: str, units: str) -> np.ndarray:
    """y-up metres -> the file's axes and units."""
    q = p if up == "y" else np.stack([p[..., 0], -p[..., 2], p[..., 1]], axis=-1)
    return q * (100.0 if units == "cm" else 1.0)


def to_blender(p: np.ndarray) -> np.ndarray:
    """y-up metres -> Blender's world (z up, metres), where its FBX importer puts any file."""
    return np.stack([p[..., 0], -p[..., 2], p[..., 1]], axis=-1)


def max_err_mm(got: dict, want: np.ndarray, names: list[str], mm_per_unit: float) -> float:
    idx = [list(got["names"]).index(n) for n in names]
    return float(np.max(np.linalg.norm(got["positions"][:, idx] - want, axis=-1)) * mm_per_unit)


# --------------------------------------------------------------------------------------------------------
# Body model and settings


def test_synthetic_body_model_has_the_official_layout(body_file, tmp_path):
    with np.load(body_file) as z:
        keys = set(z.files)
        assert {"v_template", "f", "J_regressor", "kintree_table", "weights", "posedirs", "shapedirs"} <= keys
        assert z["J_regressor"].shape[0] == 55 and z["weights"].shape[1] == 55
        assert z["posedirs"].shape[1:] == (3, 486) and z["shapedirs"].shape[1:] == (3, 20)
        assert z["kintree_table"][0, 0] == 4294967295
    bm = BodyModel.load(body_file.parent)  # folder or file
    assert tuple(bm.parents) == SMPLX_PARENTS and len(JOINT_NAMES) == 55
    assert JOINT_NAMES[:3] == ("pelvis", "left_hip", "right_hip") and JOINT_NAMES[-1] == "right_thumb3"
    # the exporters' rest joints agree with GEM's body skeleton (torch, float32)
    import torch

    from models.gem.skeleton import Skeleton

    betas = np.random.default_rng(0).normal(size=10)
    ref = Skeleton.from_npz(body_file).rest_joints(torch.tensor(betas, dtype=torch.float32)).numpy()
    assert np.abs(bm.rest_joints(betas)[:22] - ref).max() < 1e-5
    w = bm.skin_weights(22)
    assert w.shape[1] == 22 and np.allclose(w.sum(1), 1.0)
    bad = tmp_path / "SMPLX_NEUTRAL.npz"
    np.savez(bad, v_template=np.zeros((4, 3)))
    with pytest.raises(BodyModelError, match="missing key"):
        BodyModel.load(bad)
    with pytest.raises(BodyModelError, match="no SMPL-X body model"):
        BodyModel.load(tmp_path / "nowhere")


def test_settings_validate():
    s = ExportSettings()
    assert s.formats == ["fbx", "bvh", "usd"] and s.up == "y" and s.units == "cm" and not s.preview
    assert ExportSettings(formats=["bvh", "bvh"]).formats == ["bvh"]
    for bad in ({"formats": ["obj"]}, {"fps": -1}, {"up": "x"}, {"nope": 1}):
        with pytest.raises(ValueError):
            ExportSettings(**bad)
    assert standard_rate(29.97) == 30000 / 1001 and standard_rate(29.9700299) == 30000 / 1001
    assert standard_rate(30.0) == 30.0 and standard_rate(27.5) == 27.5


# --------------------------------------------------------------------------------------------------------
# The canonical record


def test_record_schema_and_resampling_60_to_30(tmp_path):
    tl = timeline(60.0, 200, timecode="01:02:03:04")
    m = random_motion(40, seed=1, s0=10)
    rec = build_record(m, tl, person_id=2)
    f0, f1 = tl.sample_frame_index[10], tl.sample_frame_index[49]
    assert (f0, f1) == (20, 98)
    assert np.array_equal(rec["frame_index"], np.arange(20, 99)) and rec["fps"] == 60.0
    assert np.allclose(rec["time_s"], rec["frame_index"] / 60.0)
    # sampled frames keep the sample's values exactly; frames between are slerped / interpolated
    even = (rec["frame_index"] - 20) // 2
    on = (rec["frame_index"] % 2) == 0
    assert np.array_equal(rec["global_orient"][on], m["global_orient"][even[on]])
    mid = ~on
    i0 = even[mid]
    key = Rotation.from_rotvec(m["global_orient"].astype(np.float64))
    for k, i in zip(np.flatnonzero(mid)[:5], i0[:5], strict=True):
        ref = Slerp([0, 1], key[[i, i + 1]])([0.5])
        got = Rotation.from_rotvec(rec["global_orient"][k].astype(np.float64))
        assert (got * ref.inv()).magnitude()[0] < 1e-5
    assert np.allclose(rec["transl"][mid], 0.5 * (m["transl"][i0] + m["transl"][i0 + 1]), atol=1e-6)
    # schema
    path = tmp_path / "smpl.npz"
    from stages.export import write_npz

    write_npz(path, rec)
    back = load_record(path)
    T = len(back["frame_index"])
    assert back["schema"] == SCHEMA and back["model_type"] == "smplx" and back["gender"] == "neutral"
    assert back["timecode"] == "01:02:03:04" and back["person_id"] == 2
    shapes = {
        "time_s": (T,), "betas": (10,), "global_orient": (T, 3), "transl": (T, 3), "body_pose": (T, 63),
        "incam_global_orient": (T, 3), "incam_transl": (T, 3), "contacts": (T, 6), "kp2d": (T, 17, 3),
        "bbox_xyxy": (T, 4), "valid": (T,), "K": (T, 3, 3),
    }  # fmt: skip
    for k, shp in shapes.items():
        assert back[k].shape == shp, k
    assert back["valid"].dtype == bool and back["frame_index"].dtype.kind == "i"
    assert list(back["contact_joints"])[:2] == ["left_ankle", "left_foot"]
    assert not list(tmp_path.glob(".*"))  # no temp files left


def test_record_24fps_source_uses_the_sampling_grid():
    """A 24 fps source sampled at 30 repeats frames; the record maps each source frame by its own time onto
    the k / 30 grid: a motion linear in time comes out linear in source time."""
    tl = timeline(24.0, 100)
    assert np.any(np.diff(tl.sample_frame_index) == 0)
    L = len(tl.sample_frame_index)
    m = random_motion(L, seed=2)
    m["transl"] = (np.arange(L)[:, None] / 30.0 * [1.0, 0.0, -2.0]).astype(np.float32)
    rec = build_record(m, tl)
    last = tl.sample_frame_index[-1]  # 98: frame 99 (4.125 s) lies after the last sample (4.1 s)
    assert np.array_equal(rec["frame_index"], np.arange(last + 1)) and rec["fps"] == 24.0
    t = np.arange(last + 1) / 24.0
    inside = t <= (L - 1) / 30.0
    assert np.allclose(rec["transl"][inside], (t[inside, None] * [1.0, 0.0, -2.0]), atol=1e-5)


def test_record_validity_and_rates():
    tl = timeline(30000 / 1001, 120)
    m = random_motion(60, seed=3, s0=5)
    m["present"][20:23] = False
    m["kp2d"][20:23] = 0
    rec = build_record(m, tl)
    assert rec["fps"] == 30000 / 1001 and rec["frame_index"][0] == tl.sample_frame_index[5]
    bad = ~rec["valid"]
    assert 3 <= bad.sum() <= 5 and np.all(rec["kp2d"][bad][..., 2] == 0)
    rec24 = build_record(m, tl, fps=24)
    assert rec24["fps"] == 24.0 and np.allclose(np.diff(rec24["time_s"]), 1 / 24)
    with pytest.raises(ValueError):
        build_record({**m, "sample_index": m["sample_index"][::-1]}, tl)


def test_record_vfr_source_keeps_real_timestamps():
    from stages.video import resample_plan

    times = np.r_[np.arange(30) / 30.0, 1.0 + np.arange(1, 21) * 0.1]  # 30 fps, then 10 fps
    plan = resample_plan(times, 30.0)
    tl = ClipTimeline(plan, times[plan], 30.0, (len(times) - 1) / times[-1], len(times), source_times=times)
    m = random_motion(len(plan), seed=8)
    rec = build_record(m, tl)
    assert np.array_equal(rec["frame_index"], np.arange(len(times))) and np.allclose(rec["time_s"], times)
    first = np.unique(plan, return_index=True)[1]  # the first sample of each sampled frame
    assert np.array_equal(rec["transl"][:30], m["transl"][first[:30]])


# --------------------------------------------------------------------------------------------------------
# Round trips


def _check_files(res, rec, body_file, settings: ExportSettings, num_joints: int = 22) -> dict[str, float]:
    """Re-read every written file; assert timing; return the max joint error per reader in mm."""
    from stages.export_bvh import read_bvh
    from stages.export_fbx import read_fbx_assimp, read_fbx_blender
    from stages.export_usd import read_usd

    up, units = settings.up, settings.units
    mm_per_unit = 10.0 if units == "cm" else 1000.0
    names = list(JOINT_NAMES[:num_joints])
    want = expected_joints(rec, body_file, num_joints, in_place=settings.root_motion == "in_place")
    frames, fps, T = rec["frame_index"], rec["fps"], len(rec["frame_index"])
    err: dict[str, float] = {}
    if "fbx" in settings.formats:
        b = read_fbx_blender(res.files["fbx"])
        # Blender keeps render.fps_base in float32 (1.001 -> 1.00100005); the file's time mode is exact
        assert b["positions"].shape[0] == T and abs(b["fps"] - fps) < 1e-7 * fps
        assert np.abs(b["frames"] - frames).max() < 1e-3
        err["fbx-blender"] = max_err_mm(b, to_blender(want), names, 1000.0)
        a = read_fbx_assimp(res.files["fbx"])
        assert a["positions"].shape[0] == T
        assert np.abs(a["frames"] - (frames - frames[0])).max() < 1e-3
        assert abs(a["fps"] - fps) < 2e-7 * fps  # assimp's NTSC constant is 29.9700262
        mode = {24.0: 11, 25.0: 10, 30000 / 1001: 9, 30.0: 6, 50.0: 4, 60.0: 3}
        if fps in mode:
            assert a["meta"]["FrameRate"] == mode[fps]  # FBX's own time mode: exact by definition
        assert a["meta"]["UpAxis"] == (1 if up == "y" else 2)
        assert a["meta"]["UnitScaleFactor"] == (1.0 if units == "cm" else 100.0)
        err["fbx-assimp"] = max_err_mm(a, to_file(want, up, units), names, mm_per_unit)
        res.blender = b
    if "bvh" in settings.formats:
        v = read_bvh(res.files["bvh"])
        assert v["positions"].shape[0] == T and abs(v["fps"] - fps) < 1e-12 * fps
        err["bvh"] = max_err_mm(v, to_file(want, up, units), names, mm_per_unit)
    if "usd" in settings.formats:
        u = read_usd(res.files["usd"])
        assert np.array_equal(u["frames"], frames) and u["fps"] == fps
        assert u["up_axis"] == up.upper() and u["meters_per_unit"] == (0.01 if units == "cm" else 1.0)
        err["usd"] = max_err_mm(u, to_file(want, up, units), names, mm_per_unit)
        res.usd = u
    return err


@pytest.mark.slow
@pytest.mark.parametrize("fps", [24.0, 25.0, 30000 / 1001, 30.0, 50.0, 60.0])
def test_round_trip_accuracy_and_exact_rates(fps, body_file, tmp_path, record_property):
    tl = timeline(fps, int(round(2.5 * fps)))
    L = len(tl.sample_frame_index) - 6
    rec = build_record(random_motion(L, seed=int(fps * 10), s0=3), tl)
    settings = ExportSettings()
    res = export_files(rec, tmp_path, settings, body_file)
    assert not res.failed and set(res.files) == {"fbx", "bvh", "usd"}
    err = _check_files(res, rec, body_file, settings)
    print(f"fps {fps:.5f}: " + ", ".join(f"{k} {v:.5f} mm" for k, v in err.items()))
    for k, v in err.items():
        record_property(f"max_error_mm_{k}", v)
    assert max(err.values()) <= TOL_MM, err


@pytest.mark.slow
def test_z_up_metres_in_place_hands_mesh_camera(body_file, tmp_path):
    tl = timeline(25.0, 60, timecode="10:00:00:00", image_wh=(640, 480))
    S = len(tl.sample_frame_index)
    rec = build_record(random_motion(S - 4, seed=7, s0=2), tl)
    yaw = Rotation.from_euler("y", np.linspace(0, 0.6, S)[:, None]).as_matrix()
    B = Rotation.from_euler("x", 0.1).as_matrix()  # clip frame tilted from camera 0
    R, t = camera_in_clip_frame(yaw, B, 1.6)
    K = np.array([[800.0, 0, 330], [0, 800.0, 230], [0, 0, 1]])
    cam = camera_record(CameraTrack(R, t, K), tl)
    settings = ExportSettings(up="z", units="m", root_motion="in_place", hands=True, mesh=True)
    res = export_files(rec, tmp_path, settings, body_file, camera=cam)
    assert not res.failed, res.failed
    err = _check_files(res, rec, body_file, settings, num_joints=55)
    assert max(err.values()) <= TOL_MM, err
    b = res.blender
    assert int(b["n_meshes"]) == 1 and len(b["names"]) == 55
    props = json.loads(str(b["props"]))
    assert props["genmocap_timecode"] == "10:00:00:00"
    assert props["genmocap_first_frame"] == rec["frame_index"][0]
    pelvis = b["positions"][:, b["names"].index("pelvis")]
    assert np.ptp(pelvis[:, 0]) < 1e-5 and np.ptp(pelvis[:, 1]) < 1e-5  # in place (Blender x, y horizontal)
    # camera: centre and viewing direction in Blender's world, focal length on a 36 mm back
    idx = np.searchsorted(cam["frame_index"], rec["frame_index"])
    Rw = cam["R_w2c"][idx].astype(np.float64)
    C = -np.einsum("nji,nj->ni", Rw, cam["t_w2c"][idx].astype(np.float64))
    fwd = Rw[:, 2, :]  # OpenCV +z in world = row 2 of R_w2c
    M = b["camera_matrices"]
    assert np.abs(M[:, :3, 3] - to_blender(C)).max() < 1e-4
    assert np.abs(-M[:, :3, 2] - to_blender(fwd)).max() < 1e-4  # Blender cameras look down -z
    assert np.allclose(b["camera_lens"], 800.0 / 640 * 36.0, atol=1e-4)
    u = res.usd
    assert u["custom"]["genmocap"]["timecode"] == "10:00:00:00"
    Mu = u["camera_matrices"]
    assert np.abs(Mu[:, :3, 3] - to_file(C, "z", "m")).max() < 1e-4
    assert np.abs(-Mu[:, :3, 2] - to_file(fwd, "z", "m")).max() < 1e-4
    assert np.allclose(u["camera_focal"], 800.0 / 640 * 36.0 / 100.0, atol=1e-5)  # tenths of a metre


def test_bvh_angles_stay_continuous(body_file, tmp_path):
    tl = timeline(30.0, 90)
    S = len(tl.sample_frame_index)
    m = random_motion(S, seed=9)
    spin = np.linspace(0, 6 * np.pi, S)
    m["global_orient"] = np.stack([np.zeros(S), spin, np.zeros(S)], 1).astype(np.float32)
    rec = build_record(m, tl)
    res = export_files(rec, tmp_path, ExportSettings(formats=["bvh"]), body_file)
    lines = res.files["bvh"].read_text().splitlines()
    data = np.array([[float(x) for x in ln.split()] for ln in lines[lines.index("MOTION") + 3 :]])
    assert len(data) == len(rec["frame_index"])
    assert np.abs(np.diff(data[:, 3:], axis=0)).max() < 60.0  # no +-360 jumps; the yaw winds up
    assert np.ptp(data[:, 5]) > 1000.0


# --------------------------------------------------------------------------------------------------------
# Without a body model, the CLI, the preview


def test_without_body_model_only_npz_and_a_one_line_reason(tmp_path):
    tl = timeline(30.0, 40)
    m = random_motion(len(tl.sample_frame_index), seed=4)
    out = export_clip({0: m, 1: m}, tl, tmp_path / "clip", ExportSettings(), None)
    for pid in (0, 1):
        assert (tmp_path / "clip" / f"person_{pid}" / "smpl.npz").is_file()
        assert set(out.people[pid].failed) == {"fbx", "bvh", "usd"} and not out.people[pid].files
    assert out.reason.startswith("not written: fbx, bvh, usd (no SMPL-X body model")
    assert "\n" not in out.reason
    out = export_clip({0: m}, tl, tmp_path / "clip2", ExportSettings(), tmp_path / "missing")
    assert "missing" in out.reason and (tmp_path / "clip2" / "person_0" / "smpl.npz").is_file()


def test_cli_export(body_file, tmp_path, monkeypatch, capsys):
    from pipeline import cli

    tl = timeline(30.0, 50)
    m = random_motion(len(tl.sample_frame_index), seed=5)
    export_clip({0: m}, tl, tmp_path / "run" / "clipA", ExportSettings(formats=[]), None)
    npz = tmp_path / "run" / "clipA" / "person_0" / "smpl.npz"
    rc = cli.main(
        ["export", str(tmp_path / "run"), "--body-model", str(body_file), "--out", str(tmp_path / "re"),
         "--formats", "bvh,usd", "--units", "m", "--verify", "--json"]
    )  # fmt: skip
    assert rc == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["input"] == str(npz)
    assert max(rows[0]["verified_max_error_mm"].values()) <= TOL_MM
    assert (tmp_path / "re" / "clipA" / "person_0" / "motion.bvh").is_file()
    assert (tmp_path / "re" / "clipA" / "person_0" / "motion.usda").is_file()
    # usage errors: no body model, bad format, missing input
    monkeypatch.setattr(cli, "body_model_path", lambda: None)
    assert cli.main(["export", str(npz)]) == 2 and "body model" in capsys.readouterr().err
    assert cli.main(["export", str(npz), "--body-model", str(body_file), "--formats", "obj"]) == 2
    assert cli.main(["export", str(tmp_path / "nope.npz"), "--body-model", str(body_file)]) == 2
    # a broken result fails that person (exit 1), never the command
    rec = dict(np.load(npz))
    del rec["body_pose"]
    np.savez(tmp_path / "run" / "clipA" / "person_0" / "smpl.npz", **rec)
    capsys.readouterr()
    assert cli.main(["export", str(npz), "--body-model", str(body_file), "--formats", "bvh"]) == 1


@pytest.mark.slow
def test_preview_draws_people_over_the_source(body_file, tmp_path):
    from stages.video import iter_chunks, probe
    from tests.media import make_clip

    clip = make_clip(tmp_path / "c.mp4", seconds=1.0, fps=25, size=(320, 240), background="black")
    info = probe(clip)
    tl = timeline(25.0, info.frame_count, image_wh=(320, 240))
    m = random_motion(len(tl.sample_frame_index) - 4, seed=6, s0=2)
    settings = ExportSettings(formats=[], preview=True)
    out = export_clip({0: m}, tl, tmp_path / "clip", settings, body_file, video=info)
    assert out.preview_error is None and out.preview.is_file()
    pv = probe(out.preview)
    assert pv.frame_count == info.frame_count and (pv.width, pv.height) == (320, 240)
    frames = np.concatenate([c.frames for c in iter_chunks(pv, chunk_frames=64)])
    lit = frames[:, :215].max(axis=3) > 60  # black source: anything bright is an overlay (frame number below)
    assert not lit[0].any() and not lit[-1].any()  # first and last frames are outside the person's span
    assert lit[5, 60:231, 100].mean() > 0.8  # the box's left edge
    r = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_name", str(out.preview)],
                       capture_output=True, text=True)  # fmt: skip
    assert "h264" in r.stdout
