"""USD export with ``usd-core`` (UsdSkel): ``SkelRoot`` > ``Skeleton`` bound to a ``SkelAnimation``, the
optional skinned mesh, and the solved camera as a ``UsdGeom.Camera``.

Stage metadata: ``upAxis`` (Y or Z) and ``metersPerUnit`` (0.01 for cm, 1 for m) as chosen, with the data in
those axes and units; ``timeCodesPerSecond`` = ``framesPerSecond`` = the record's rate; time codes are the
record's frame numbers (source frames), ``startTimeCode`` / ``endTimeCode`` its first and last;
``customLayerData["genmocap"]`` holds the schema, timecode, source rate, person id and root-motion mode.

Joints are named by path (``pelvis/spine1/spine2/...``), the last element being the SMPL-X joint name; rest
and bind transforms have identity rotations (rest orientations are the identity, as in the FBX), so a joint's
animated rotation is its SMPL-X local rotation. Lens and filmback values are in tenths of a scene unit
(millimetres on a centimetre stage), as UsdGeom specifies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from models.geometry import quat_to_matrix, quat_wxyz_to_xyzw
from stages.rig import CameraRig, Rig

__all__ = ["write_usd", "read_usd"]


def _joint_paths(rig: Rig) -> list[str]:
    paths: list[str] = []
    for i, n in enumerate(rig.names):
        p = int(rig.parents[i])
        paths.append(n if p < 0 else f"{paths[p]}/{n}")
    return paths


def _matrix(R: np.ndarray, t: np.ndarray):
    """Gf.Matrix4d (row-vector convention) of ``x' = R x + t``."""
    from pxr import Gf

    M = np.eye(4)
    M[:3, :3] = R.T
    M[3, :3] = t
    return Gf.Matrix4d(M.tolist())


def write_usd(path: str | Path, rig: Rig, cam: CameraRig | None = None) -> Path:
    """Write ``rig`` (and the camera) as a USD layer (``.usda`` text or ``.usdc`` binary by extension)."""
    from pxr import Gf, Tf, Usd, UsdGeom, UsdSkel, Vt

    path = Path(path)
    stage = Usd.Stage.CreateNew(str(path))
    UsdGeom.SetStageUpAxis(stage, UsdGeom.Tokens.y if rig.up == "y" else UsdGeom.Tokens.z)
    UsdGeom.SetStageMetersPerUnit(stage, 0.01 if rig.units == "cm" else 1.0)
    stage.SetTimeCodesPerSecond(float(rig.fps))
    stage.SetFramesPerSecond(float(rig.fps))
    frames = [float(f) for f in rig.frames]
    stage.SetStartTimeCode(frames[0])
    stage.SetEndTimeCode(frames[-1])
    layer = stage.GetRootLayer()
    layer.customLayerData = {
        "genmocap": {
            "schema": str(rig.meta.get("schema", "")),
            "timecode": rig.timecode,
            "fps": float(rig.fps),
            "source_fps": float(rig.meta.get("source_fps", rig.fps)),
            "first_frame": int(rig.frames[0]),
            "person_id": int(rig.meta.get("person_id", 0)),
            "root_motion": str(rig.meta.get("root_motion", "")),
        }
    }

    name = Tf.MakeValidIdentifier(rig.name)
    root = UsdSkel.Root.Define(stage, f"/{name}")
    stage.SetDefaultPrim(root.GetPrim())
    skel = UsdSkel.Skeleton.Define(stage, f"/{name}/Skeleton")
    joints = _joint_paths(rig)
    J = len(joints)
    skel.CreateJointsAttr(Vt.TokenArray(joints))
    skel.CreateJointNamesAttr(Vt.TokenArray(rig.names))
    offsets = rig.offsets
    eye = np.eye(3)
    skel.CreateRestTransformsAttr(Vt.Matrix4dArray([_matrix(eye, offsets[i]) for i in range(J)]))
    skel.CreateBindTransformsAttr(Vt.Matrix4dArray([_matrix(eye, rig.rest[i]) for i in range(J)]))

    anim = UsdSkel.Animation.Define(stage, f"/{name}/Skeleton/Motion")
    anim.CreateJointsAttr(Vt.TokenArray(joints))
    tr_attr = anim.CreateTranslationsAttr()
    rot_attr = anim.CreateRotationsAttr()
    anim.CreateScalesAttr(Vt.Vec3hArray([Gf.Vec3h(1, 1, 1)] * J))
    tr = np.repeat(offsets[None].astype(np.float32), len(frames), axis=0)
    tr[:, 0] = rig.root_positions
    q_xyzw = quat_wxyz_to_xyzw(rig.rotations).astype(np.float32)
    for t, f in enumerate(frames):
        tr_attr.Set(Vt.Vec3fArray.FromNumpy(tr[t]), f)
        rot_attr.Set(Vt.QuatfArray.FromNumpy(q_xyzw[t]), f)
    binding = UsdSkel.BindingAPI.Apply(skel.GetPrim())
    binding.CreateAnimationSourceRel().SetTargets([anim.GetPath()])

    if rig.mesh is not None:
        verts, faces, weights = rig.mesh
        mesh = UsdGeom.Mesh.Define(stage, f"/{name}/Body")
        mesh.CreatePointsAttr(Vt.Vec3fArray.FromNumpy(np.asarray(verts, dtype=np.float32)))
        mesh.CreateFaceVertexCountsAttr(Vt.IntArray([3] * len(faces)))
        mesh.CreateFaceVertexIndicesAttr(Vt.IntArray(np.asarray(faces, dtype=np.int64).ravel().tolist()))
        mesh.CreateSubdivisionSchemeAttr(UsdGeom.Tokens.none)
        k = int(max(1, (weights > 1e-6).sum(axis=1).max()))
        idx = np.argsort(-weights, axis=1)[:, :k]
        w = np.take_along_axis(weights, idx, axis=1)
        w = np.where(w > 1e-6, w, 0.0)
        w = w / np.maximum(w.sum(axis=1, keepdims=True), 1e-12)
        mb = UsdSkel.BindingAPI.Apply(mesh.GetPrim())
        mb.CreateSkeletonRel().SetTargets([skel.GetPath()])
        mb.CreateJointIndicesPrimvar(False, k).Set(Vt.IntArray(idx.ravel().astype(int).tolist()))
        mb.CreateJointWeightsPrimvar(False, k).Set(Vt.FloatArray(w.ravel().astype(float).tolist()))
        mb.CreateGeomBindTransformAttr(Gf.Matrix4d(1))

    if cam is not None:
        _camera(stage, cam, rig)
    layer.Save()
    return path


def _camera(stage: Any, cam: CameraRig, rig: Rig) -> None:
    from pxr import Gf, UsdGeom

    tenth = 100.0 * (0.01 if rig.units == "cm" else 1.0)  # mm per "tenth of a scene unit"
    c = UsdGeom.Camera.Define(stage, "/camera")
    c.CreateProjectionAttr(UsdGeom.Tokens.perspective)
    w_mm, h_mm = cam.sensor_mm
    c.CreateHorizontalApertureAttr(float(w_mm / tenth))
    c.CreateVerticalApertureAttr(float(h_mm / tenth))
    k = 100.0 if rig.units == "cm" else 1.0
    c.CreateClippingRangeAttr(Gf.Vec2f(0.01 * k, 1000.0 * k))
    op = c.AddTransformOp()
    fl = c.CreateFocalLengthAttr()
    hx = c.CreateHorizontalApertureOffsetAttr()
    vy = c.CreateVerticalApertureOffsetAttr()
    R = quat_to_matrix(cam.rotations)
    varying = np.ptp(cam.focal_mm) > 1e-6 or np.ptp(cam.shift) > 1e-9
    for t, f in enumerate(cam.frames):
        op.Set(_matrix(R[t], cam.positions[t]), float(f))
    if varying:
        for t, f in enumerate(cam.frames):
            fl.Set(float(cam.focal_mm[t] / tenth), float(f))
            hx.Set(float(cam.shift[t, 0] * w_mm / tenth), float(f))
            vy.Set(float(cam.shift[t, 1] * w_mm / tenth), float(f))
    else:
        fl.Set(float(cam.focal_mm[0] / tenth))
        hx.Set(float(cam.shift[0, 0] * w_mm / tenth))
        vy.Set(float(cam.shift[0, 1] * w_mm / tenth))


def read_usd(path: str | Path) -> dict[str, Any]:
    """Open a USD file with pxr and compute joint positions per time sample through ``UsdSkel``:
    ``names`` (last path element of each joint), ``positions`` (T, J, 3) in the stage's axes and units,
    ``frames`` (the time codes), ``fps`` (timeCodesPerSecond), ``up_axis``, ``meters_per_unit``,
    ``custom`` (customLayerData), and the camera's ``camera_matrices`` (T, 4, 4, column-vector convention) and
    ``camera_focal`` when there is one."""
    from pxr import Usd, UsdGeom, UsdSkel

    stage = Usd.Stage.Open(str(path))
    skels = [p for p in stage.Traverse() if p.IsA(UsdSkel.Skeleton)]
    if len(skels) != 1:
        raise ValueError(f"expected one Skeleton, found {len(skels)}")
    skel = UsdSkel.Skeleton(skels[0])
    cache = UsdSkel.Cache()
    query = cache.GetSkelQuery(skel)
    anim = query.GetAnimQuery()
    if not anim:
        raise ValueError("the Skeleton has no animation source")
    times = list(anim.GetJointTransformTimeSamples())
    xf = UsdGeom.Xformable(skels[0])
    names = [str(j).split("/")[-1] for j in query.GetJointOrder()]
    pos = np.empty((len(times), len(names), 3))
    for t, tc in enumerate(times):
        M = np.array(query.ComputeJointSkelTransforms(tc))  # (J, 4, 4) row-vector
        W = np.array(xf.ComputeLocalToWorldTransform(tc))
        pos[t] = (M @ W)[:, 3, :3]
    res: dict[str, Any] = {
        "names": names,
        "positions": pos,
        "frames": np.asarray(times, dtype=np.float64),
        "fps": float(stage.GetTimeCodesPerSecond()),
        "up_axis": str(UsdGeom.GetStageUpAxis(stage)),
        "meters_per_unit": float(UsdGeom.GetStageMetersPerUnit(stage)),
        "custom": dict(stage.GetRootLayer().customLayerData),
    }
    cams = [p for p in stage.Traverse() if p.IsA(UsdGeom.Camera)]
    if cams:
        c = UsdGeom.Camera(cams[0])
        mats, focal = [], []
        for tc in times:
            mats.append(np.array(c.ComputeLocalToWorldTransform(tc)).T)
            focal.append(float(c.GetFocalLengthAttr().Get(tc)))
        res["camera_matrices"] = np.asarray(mats)
        res["camera_focal"] = np.asarray(focal)
    return res
