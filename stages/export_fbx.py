"""FBX export through Blender's own FBX writer (``bpy`` 4.5 LTS), run in a child process.

Blender's Python module keeps one global scene, is not thread-safe and can take the process down with it, so
every export (and every verification read) runs ``python -m stages.export_fbx`` in a fresh process; the parent
hands over one ``.npz`` job and gets the file back under a temp name, then renames it. The child imports only
numpy, scipy and bpy (about 1 s of start-up).

What the file holds (see ``stages.rig.Rig``):

- an armature node named after the person (``person_0``) with identity transform, and one bone per joint
  named as in SMPL-X (``pelvis``, ``left_hip``, ...). Every bone's rest orientation is the identity in the
  file's axes, so a bone's animated local rotation *is* the SMPL-X joint rotation; bone rest positions are the
  body model's joints for the person's betas; no leaf (``_end``) bones;
- one key per frame (baked, no key reduction), keyed at the frame numbers of the record (source frames) at
  its rate: FBX time = frame / fps. 24, 25, 30, 50, 60 and 24000/1001, 30000/1001, 60000/1001 are written as
  FBX's own time modes, any other rate as a custom rate;
- axes and units in GlobalSettings (UpAxis, UnitScaleFactor 1 = cm or 100 = m) with the data in those
  axes and units (no scale or rotation on the root node);
- user properties ``genmocap_timecode``, ``genmocap_fps``, ``genmocap_first_frame``, ... on the armature;
- optionally the skinned mesh (shaped rest mesh, linear blend skinning; no pose correctives) and the solved
  camera as an animated camera (focal length on a 36 mm filmback, principal point as lens shift).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from models.geometry import forward_kinematics, matrix_to_quat, quat_continuous, quat_to_matrix
from stages.files import atomic_path
from stages.rig import CameraRig, Rig, bone_lengths

__all__ = ["write_fbx", "read_fbx_blender", "read_fbx_assimp", "blender_rate"]


def blender_rate(fps: float) -> tuple[int, float]:
    """Blender's ``(render.fps, render.fps_base)`` for a rate: 30000/1001 -> (30, 1.001), 25 -> (25, 1.0)."""
    n = max(1, int(round(fps)))
    if abs(fps - n) <= 1e-9 * n:
        return n, 1.0
    if abs(fps - n / 1.001) <= 1e-6 * n:
        return n, 1.001
    return n, n / fps


def _job_arrays(rig: Rig, cam: CameraRig | None) -> dict[str, Any]:
    fps_i, fps_base = blender_rate(rig.fps)
    meta = {
        "name": rig.name,
        "up": rig.up,
        "units": rig.units,
        "fps_int": fps_i,
        "fps_base": fps_base,
        "props": {
            "genmocap_schema": rig.meta.get("schema", ""),
            "genmocap_timecode": rig.timecode,
            "genmocap_fps": float(rig.fps),
            "genmocap_source_fps": float(rig.meta.get("source_fps", rig.fps)),
            "genmocap_first_frame": int(rig.frames[0]),
            "genmocap_root_motion": rig.meta.get("root_motion", ""),
            "genmocap_person_id": int(rig.meta.get("person_id", 0)),
        },
        "camera": cam is not None,
        "mesh": rig.mesh is not None,
    }
    arrays: dict[str, Any] = {
        "meta": json.dumps(meta),
        "names": np.array(rig.names),
        "parents": rig.parents.astype(np.int64),
        "rest": rig.rest.astype(np.float64),
        "lengths": bone_lengths(rig),
        "rotations": rig.rotations.astype(np.float64),
        "root_positions": rig.root_positions.astype(np.float64),
        "frames": rig.frames.astype(np.int64),
    }
    if cam is not None:
        arrays.update(
            cam_positions=cam.positions,
            cam_rotations=cam.rotations,
            cam_focal=cam.focal_mm,
            cam_shift=cam.shift,
            cam_sensor=np.asarray(cam.sensor_mm),
            cam_wh=np.asarray(cam.image_wh),
        )
    if rig.mesh is not None:
        verts, faces, weights = rig.mesh
        arrays.update(mesh_verts=verts, mesh_faces=faces.astype(np.int64), mesh_weights=weights)
    return arrays


def _run_child(args: list[str], timeout_s: float) -> None:
    cmd = [sys.executable, "-m", "stages.export_fbx", *args]
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"Blender FBX step took more than {timeout_s:.0f} s") from None
    if p.returncode != 0:
        lines = [ln for ln in (p.stderr or p.stdout).splitlines() if ln.strip()]
        raise RuntimeError(f"Blender FBX step failed: {lines[-1] if lines else f'exit code {p.returncode}'}")


def write_fbx(path: str | Path, rig: Rig, cam: CameraRig | None = None, timeout_s: float = 600.0) -> Path:
    """Write ``rig`` (and the camera) to an FBX file with Blender, in a child process; atomic."""
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="genmocap-fbx-") as td, atomic_path(path) as tmp_out:
        job = Path(td) / "job.npz"
        np.savez(job, **_job_arrays(rig, cam))
        _run_child(["write", str(job), str(tmp_out)], timeout_s)
    return path


def read_fbx_blender(path: str | Path, timeout_s: float = 600.0) -> dict[str, Any]:
    """Import an FBX with Blender (``anim_offset=0``) in a child process and return, per imported key:
    ``names`` (J), ``positions`` (T, J, 3) bone heads in Blender's world (z up, metres), ``frames`` (T,) the
    keys' FBX times x the file's rate, ``blender_frames`` (T,) where Blender put the keys, ``fps`` the rate
    Blender set, and the camera (``camera_matrices`` (T, 4, 4) world, ``camera_lens`` (T,)) when there is one.

    Blender's importer converts key times with the *rounded* rate (``scene.render.fps``), so at 30000/1001 its
    keys land on frame x 1.001; ``frames`` undoes that from the times the file holds.
    """
    with tempfile.TemporaryDirectory(prefix="genmocap-fbx-") as td:
        out = Path(td) / "read.npz"
        _run_child(["read", str(Path(path).resolve()), str(out)], timeout_s)
        with np.load(out, allow_pickle=False) as z:
            res = {k: z[k] for k in z.files}
    res["names"] = [str(n) for n in res["names"]]
    res["fps"] = float(res["fps"])
    return res


def read_fbx_assimp(path: str | Path) -> dict[str, Any]:
    """Read an FBX with assimp (Debian's ``libassimp5`` through ``pyassimp``'s ctypes bindings), an FBX reader
    independent of Blender, and compute joint world positions from its node tree and animation channels:
    ``names``, ``positions`` (T, J, 3) in the file's axes and units, ``frames`` (T,) key times in frames
    relative to the first key (assimp drops the start time), ``relative`` True, ``fps`` (ticks per second:
    assimp's own table value for NTSC rates, e.g. 29.9700262 for 30000/1001), ``meta`` (GlobalSettings as
    assimp reports them: ``UnitScaleFactor``, ``UpAxis``, ...).

    Only nodes, animations and metadata are read (pyassimp's full scene conversion trips over skinned meshes
    with libassimp 5.2)."""
    import ctypes

    try:
        from pyassimp import structs
        from pyassimp.core import _assimp_lib
    except ImportError:
        raise
    except BaseException as e:  # pyassimp raises AssimpError (a BaseException) when libassimp is missing
        if isinstance(e, KeyboardInterrupt | SystemExit):
            raise
        raise ImportError(f"assimp not available: {e}") from None

    ptr = _assimp_lib.load(str(Path(path)).encode(), 0)
    if not ptr:
        raise ValueError(f"assimp could not read {path}")
    try:
        scene = ptr.contents
        if scene.mNumAnimations < 1:
            raise ValueError("assimp: no animation in the file")
        anim = scene.mAnimations[0].contents
        tps = float(anim.mTicksPerSecond) or 25.0
        chans = {}
        for i in range(anim.mNumChannels):
            c = anim.mChannels[i].contents
            chans[_ai_str(c.mNodeName)] = c
        nodes: list[tuple[str, int, np.ndarray]] = []

        def walk(node: Any, parent: int) -> None:
            m = node.mTransformation
            M = np.array([getattr(m, f"{r}{c}") for r in "abcd" for c in "1234"], dtype=np.float64)
            nodes.append((_ai_str(node.mName), parent, M.reshape(4, 4)))
            me = len(nodes) - 1
            for k in range(node.mNumChildren):
                walk(node.mChildren[k].contents, me)

        walk(scene.mRootNode.contents, -1)
        n_keys = max(int(c.mNumRotationKeys) for c in chans.values())
        times = np.zeros(n_keys)
        local = np.tile(np.eye(4), (n_keys, len(nodes), 1, 1))  # node transforms (column-vector convention)
        for i, (name, _, M) in enumerate(nodes):
            c = chans.get(name)
            if c is None:
                local[:, i] = M
                continue
            if c.mNumRotationKeys != n_keys or c.mNumPositionKeys != n_keys:
                raise ValueError(f"assimp: channel {name} has {c.mNumRotationKeys} keys, expected {n_keys}")
            rk = [c.mRotationKeys[k] for k in range(n_keys)]
            pk = [c.mPositionKeys[k] for k in range(n_keys)]
            q = np.array([(k.mValue.w, k.mValue.x, k.mValue.y, k.mValue.z) for k in rk], dtype=np.float64)
            p = np.array([(k.mValue.x, k.mValue.y, k.mValue.z) for k in pk], dtype=np.float64)
            sc = np.ones((n_keys, 3))
            if c.mNumScalingKeys == n_keys:
                sc = np.array([(k.mValue.x, k.mValue.y, k.mValue.z) for k in c.mScalingKeys[:n_keys]])
            times = np.array([k.mTime for k in rk], dtype=np.float64)
            local[:, i, :3, :3] = quat_to_matrix(q) * sc[:, None, :]
            local[:, i, :3, 3] = p
        parents = [par for _, par, _ in nodes]
        _, positions = forward_kinematics(parents, local[..., :3, :3], local[..., :3, 3])
        meta = _ai_metadata(scene, ctypes, structs)
    finally:
        _assimp_lib.release(ptr)
    return {
        "names": [n for n, _, _ in nodes],
        "positions": positions,
        "frames": times,
        "relative": True,
        "fps": tps,
        "meta": meta,
    }


def _ai_str(s: Any) -> str:
    return bytes(s.data[: s.length]).decode("utf-8", "replace")


def _ai_metadata(scene: Any, ctypes: Any, structs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if not scene.mMetadata:
        return out
    md = scene.mMetadata.contents
    kinds = {1: ctypes.c_int32, 2: ctypes.c_uint64, 3: ctypes.c_float, 4: ctypes.c_double, 0: ctypes.c_bool}
    for i in range(md.mNumProperties):
        key = _ai_str(md.mKeys[i])
        entry = md.mValues[i]
        if entry.mType in kinds and entry.mData:
            out[key] = ctypes.cast(entry.mData, ctypes.POINTER(kinds[entry.mType])).contents.value
        elif entry.mType == 5 and entry.mData:
            out[key] = _ai_str(ctypes.cast(entry.mData, ctypes.POINTER(structs.String)).contents)
    return out


# --------------------------------------------------------------------------------------------------------
# The child process (bpy lives only here)


def _scene_reset():
    import bpy

    bpy.ops.wm.read_factory_settings(use_empty=True)
    return bpy.context.scene


def _set_fcurves(action, data_path: str, values: np.ndarray, frames: np.ndarray, group: str, id_obj) -> None:
    """One F-curve per component of ``values`` (T, C) keyed at ``frames``, linear interpolation."""
    import bpy  # noqa: F401

    T, C = values.shape
    for k in range(C):
        try:
            fc = action.fcurves.new(data_path, index=k, action_group=group)
        except AttributeError:  # Blender 5 layered actions
            fc = action.fcurve_ensure_for_datablock(id_obj, data_path, index=k)
        fc.keyframe_points.add(T)
        co = np.empty(2 * T, dtype=np.float32)
        co[0::2] = frames
        co[1::2] = values[:, k]
        fc.keyframe_points.foreach_set("co", co)
        fc.keyframe_points.foreach_set("interpolation", np.full(T, 1, dtype=np.int32))  # LINEAR
        fc.update()


def _assign(id_obj, action) -> None:
    id_obj.animation_data_create()
    id_obj.animation_data.action = action
    slots = getattr(action, "slots", None)
    if slots is not None and len(slots) and getattr(id_obj.animation_data, "action_slot", None) is None:
        id_obj.animation_data.action_slot = slots[0]


def _child_write(job: str, out: str) -> None:
    import bpy
    from bpy_extras.io_utils import axis_conversion
    from mathutils import Matrix

    z = np.load(job, allow_pickle=False)
    meta = json.loads(str(z["meta"]))
    names = [str(n) for n in z["names"]]
    parents = z["parents"]
    rest = z["rest"]
    lengths = z["lengths"]
    frames = z["frames"].astype(np.float64)
    T, J = z["rotations"].shape[:2]

    scene = _scene_reset()
    scene.name = meta["name"]
    scene.unit_settings.system = "METRIC"
    scene.unit_settings.scale_length = 0.01 if meta["units"] == "cm" else 1.0
    scene.render.fps = int(meta["fps_int"])
    scene.render.fps_base = float(meta["fps_base"])
    scene.frame_start = int(frames[0])
    scene.frame_end = int(frames[-1])
    axis_up, axis_forward = ("Y", "-Z") if meta["up"] == "y" else ("Z", "Y")
    G = axis_conversion(to_forward=axis_forward, to_up=axis_up).to_4x4()
    G_inv = G.inverted()  # the exporter writes G @ matrix_world for root objects: cancel it

    arm = bpy.data.armatures.new(meta["name"])
    ob = bpy.data.objects.new(meta["name"], arm)
    scene.collection.objects.link(ob)
    ob.matrix_world = G_inv
    for k, v in meta["props"].items():
        ob[k] = v
    bpy.context.view_layer.objects.active = ob
    bpy.ops.object.mode_set(mode="EDIT")
    for i, n in enumerate(names):
        eb = arm.edit_bones.new(n)
        eb.head = rest[i].tolist()
        eb.tail = (rest[i] + np.array([0.0, lengths[i], 0.0])).tolist()
        eb.roll = 0.0
        eb.use_connect = False
        if parents[i] >= 0:
            eb.parent = arm.edit_bones[names[parents[i]]]
    bpy.ops.object.mode_set(mode="OBJECT")

    # Pose: with rest rotation B (armature space), basis = B^T R B; root location = B^T (p - head).
    B = np.array([np.array(arm.bones[n].matrix_local.to_3x3(), dtype=np.float64) for n in names])
    R = quat_to_matrix(z["rotations"])
    Rb = np.einsum("jba,tjbc,jcd->tjad", B, R, B)
    qb = quat_continuous(matrix_to_quat(Rb))
    loc = np.einsum("ba,tb->ta", B[0], z["root_positions"] - rest[0])
    for pb in ob.pose.bones:
        pb.rotation_mode = "QUATERNION"
    action = bpy.data.actions.new(f"{meta['name']}_motion")
    _assign(ob, action)
    for i, n in enumerate(names):
        _set_fcurves(action, f'pose.bones["{n}"].rotation_quaternion', qb[:, i], frames, n, ob)
    _set_fcurves(action, f'pose.bones["{names[0]}"].location', loc, frames, names[0], ob)
    _assign(ob, action)

    if meta["mesh"]:
        me = bpy.data.meshes.new(f"{meta['name']}_body")
        me.from_pydata(z["mesh_verts"].tolist(), [], z["mesh_faces"].tolist())
        me.update()
        mo = bpy.data.objects.new(f"{meta['name']}_body", me)
        scene.collection.objects.link(mo)
        mo.parent = ob
        mo.matrix_parent_inverse = Matrix.Identity(4)
        w = z["mesh_weights"]
        for j, n in enumerate(names):
            vg = mo.vertex_groups.new(name=n)
            for v in np.flatnonzero(w[:, j] > 1e-6):
                vg.add([int(v)], float(w[v, j]), "REPLACE")
        mod = mo.modifiers.new("Armature", "ARMATURE")
        mod.object = ob

    if meta["camera"]:
        W, H = (int(v) for v in z["cam_wh"])
        scene.render.resolution_x, scene.render.resolution_y = W, H
        cd = bpy.data.cameras.new("camera")
        cd.sensor_fit = "HORIZONTAL"
        cd.sensor_width = float(z["cam_sensor"][0])
        cd.sensor_height = float(z["cam_sensor"][1])
        k = 100.0 if meta["units"] == "cm" else 1.0
        cd.clip_start = 0.01 * k
        cd.clip_end = 1000.0 * k
        focal = z["cam_focal"]
        shift = z["cam_shift"]
        cd.lens = float(focal[0])
        cd.shift_x, cd.shift_y = float(shift[0, 0]), float(shift[0, 1])
        co = bpy.data.objects.new("camera", cd)
        scene.collection.objects.link(co)
        co.rotation_mode = "QUATERNION"
        Gi = np.array(G_inv, dtype=np.float64)[:3, :3]
        pos = z["cam_positions"] @ Gi.T
        rot = quat_continuous(matrix_to_quat(Gi[None] @ quat_to_matrix(z["cam_rotations"])))
        cact = bpy.data.actions.new("camera_motion")
        _assign(co, cact)
        _set_fcurves(cact, "location", pos, frames, "camera", co)
        _set_fcurves(cact, "rotation_quaternion", rot, frames, "camera", co)
        _assign(co, cact)
        if np.ptp(focal) > 1e-6 or np.ptp(shift) > 1e-9:
            dact = bpy.data.actions.new("camera_lens")
            _assign(cd, dact)
            _set_fcurves(dact, "lens", focal[:, None], frames, "camera", cd)
            _set_fcurves(dact, "shift_x", shift[:, :1], frames, "camera", cd)
            _set_fcurves(dact, "shift_y", shift[:, 1:], frames, "camera", cd)
            _assign(cd, dact)

    bpy.ops.export_scene.fbx(
        filepath=out,
        use_selection=False,
        object_types={"ARMATURE", "MESH", "CAMERA"},
        axis_up=axis_up,
        axis_forward=axis_forward,
        apply_unit_scale=True,
        apply_scale_options="FBX_SCALE_ALL",
        global_scale=1.0,
        bake_space_transform=False,
        add_leaf_bones=False,
        primary_bone_axis="Y",
        secondary_bone_axis="X",
        armature_nodetype="NULL",
        use_armature_deform_only=False,
        use_custom_props=True,
        mesh_smooth_type="OFF",
        bake_anim=True,
        bake_anim_use_all_bones=True,
        bake_anim_use_nla_strips=False,
        bake_anim_use_all_actions=False,
        bake_anim_force_startend_keying=True,
        bake_anim_step=1.0,
        bake_anim_simplify_factor=0.0,
        path_mode="AUTO",
    )
    if not Path(out).is_file():
        raise RuntimeError("Blender wrote no file")


def _child_read(fbx: str, out: str) -> None:
    import bpy

    scene = _scene_reset()
    bpy.ops.import_scene.fbx(filepath=fbx, anim_offset=0.0)
    arms = [o for o in scene.objects if o.type == "ARMATURE"]
    if len(arms) != 1:
        raise RuntimeError(f"expected one armature, found {len(arms)}")
    ob = arms[0]
    act = ob.animation_data.action if ob.animation_data else None
    if act is None:
        raise RuntimeError("the armature has no animation")
    keys = sorted({round(float(kp.co[0]), 6) for fc in act.fcurves for kp in fc.keyframe_points})
    names = [b.name for b in ob.pose.bones]
    cams = [o for o in scene.objects if o.type == "CAMERA"]
    pos = np.empty((len(keys), len(names), 3))
    cam_m = np.empty((len(keys), 4, 4))
    lens = np.empty(len(keys))
    for t, b in enumerate(keys):
        fi = int(np.floor(b))
        scene.frame_set(fi, subframe=b - fi)
        M = np.array(ob.matrix_world, dtype=np.float64)
        for j, pb in enumerate(ob.pose.bones):
            h = np.array(pb.head, dtype=np.float64)
            pos[t, j] = M[:3, :3] @ h + M[:3, 3]
        if cams:
            cam_m[t] = np.array(cams[0].matrix_world, dtype=np.float64)
            lens[t] = cams[0].data.lens
    fps_real = scene.render.fps / scene.render.fps_base
    keys_arr = np.asarray(keys, dtype=np.float64)
    res = {
        "names": np.array(names),
        "positions": pos,
        "blender_frames": keys_arr,
        "frames": keys_arr / scene.render.fps * fps_real,  # undo the importer's rounded-rate time mapping
        "fps": np.float64(fps_real),
        "props": np.array(json.dumps({k: _plain(ob[k]) for k in ob.keys() if k.startswith("genmocap_")})),
        "n_meshes": np.int64(sum(o.type == "MESH" for o in scene.objects)),
    }
    if cams:
        res.update(camera_matrices=cam_m, camera_lens=lens)
    np.savez(out, **res)


def _plain(v: Any) -> Any:
    return v if isinstance(v, str | int | float | bool) else str(v)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 3 or argv[0] not in ("write", "read"):
        print(
            "usage: python -m stages.export_fbx write JOB.npz OUT.fbx | read IN.fbx OUT.npz", file=sys.stderr
        )
        return 2
    if argv[0] == "write":
        _child_write(argv[1], argv[2])
    else:
        _child_read(argv[1], argv[2])
    return 0


if __name__ == "__main__":
    sys.exit(main())
