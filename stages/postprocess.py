"""Stage ``postprocess``: GEM's contact correction and foot IK, then all people of a clip in one world frame.

GEM gives each person a gravity-aligned trajectory of its own: y up, on the ground (y = 0, after the contact
post-process), but with a yaw and a horizontal origin of its own. Two people walking side by side would land
on top of each other in a DCC tool. The clip frame fixes that (all people of one clip share one world
frame):

- **Clip frame**: right-handed, y up (gravity, as GEM estimates it), metres; the camera at the first sample
  looks down -z (x to its right, the OpenGL/DCC convention); the origin is on the ground right below that
  camera. A person facing the camera therefore faces +z.
- Each person keeps GEM's world motion exactly up to one rotation about y and a horizontal shift, chosen from
  the person's first tracked sample: its orientation and pelvis position in the camera (GEM's in-camera
  estimate) and the camera's rotation at that sample (camera stage) say where it stands in the clip frame.

Poses: axis-angle; the root rotates about the pelvis joint ``J0(betas)``, so a rigid move of the body is
``transl' = Y (J0 + transl) + o - J0``. Without a body model ``J0`` is taken as 0 (a few cm of error in the
horizontal placement; the motion itself is unchanged).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from models.geometry import axis_angle_to_matrix, matrix_to_axis_angle
from stages.results import PersonArrays
from stages.spec import ClipRun, StageSpec

if TYPE_CHECKING:  # torch and GEM are imported where they are used: importing the stage stays cheap
    from models.gem.skeleton import Skeleton

VERSION = "1"

#: SMPL-X joints of GEM's six contact probabilities (``static_conf_logits``), in order.
CONTACT_JOINTS = ("left_ankle", "left_foot", "right_ankle", "right_foot", "left_wrist", "right_wrist")


class PostprocessSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    contact_ik: bool = Field(
        True, description="GEM's static-joint correction and foot IK (needs a body model)"
    )
    shared_world: bool = Field(True, description="place every person of a clip in one clip frame")


def refine_person(
    est: dict[str, np.ndarray], skeleton: Skeleton | None, contact_ik: bool
) -> dict[str, np.ndarray]:
    """GEM's decode with the contact post-process (and IK) from one person's stored network outputs.

    ``est``: the estimate stage's per-person arrays (``pred_x`` (L, 151), ``pred_cam`` (L, 3),
    ``static_conf_logits`` (L, 6), ``bbx_xys`` (L, 3), ``K`` (L, 3, 3), ``cam_angvel`` (L, 6), ...). Returns a
    copy with world ``global_orient`` / ``transl`` / ``body_pose`` replaced by the post-processed ones (when a
    skeleton is given and ``contact_ik``) and ``contacts`` (L, 6) = sigmoid of the logits.
    """
    res = dict(est)
    res["contacts"] = (1 / (1 + np.exp(-est["static_conf_logits"]))).astype(np.float32)
    if skeleton is None or not contact_ik:
        return res
    import torch

    from models.gem import codec

    out = {k: torch.from_numpy(est[k])[None] for k in ("pred_x", "pred_cam", "static_conf_logits")}
    inputs = {k: torch.from_numpy(est[k]) for k in ("bbx_xys", "K", "cam_angvel")}
    inputs["K_fullimg"] = inputs.pop("K")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pred = codec.decode_all(out, inputs, skeleton, postprocess=True)
    for key, name in (("global_orient", "global"), ("transl", "global"), ("body_pose", "global")):
        res[key] = pred[f"pred/{name}/{key}"][0].numpy().astype(np.float32)
    res["incam_body_pose"] = pred["pred/incam/body_pose"][0].numpy().astype(np.float32)
    return res


def _yaw_only(M: np.ndarray) -> np.ndarray:
    """The rotation about y closest to M (3, 3)."""
    theta = np.arctan2(M[0, 2] - M[2, 0], M[0, 0] + M[2, 2])
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def clip_frame(
    people: list[dict[str, np.ndarray]], R_w2c: np.ndarray | None
) -> tuple[np.ndarray, list[np.ndarray]]:
    """The rotation B (3, 3) from camera-0 coordinates (OpenCV) to the clip frame, and per person the rotation
    A (3, 3) from its GEM world frame to camera-0 coordinates, from its first present sample.

    ``R_w2c``: (S, 3, 3) camera rotations on the clip's sample timeline, relative to the first sample (the
    camera stage's convention), or None for a static / unknown camera.
    """
    A_list, ups = [], []
    for p in people:
        t0 = int(np.flatnonzero(p["present"])[0])
        s = int(p["sample_index"][t0])
        Rc = axis_angle_to_matrix(p["incam_global_orient"][t0])
        Rw = axis_angle_to_matrix(p["global_orient"][t0])
        Rcam = np.eye(3) if R_w2c is None else R_w2c[s].astype(np.float64)
        A = Rcam.T @ Rc @ Rw.T
        A_list.append(A)
        ups.append(A[:, 1])
    up = np.mean(ups, axis=0)
    up /= np.linalg.norm(up)
    back = -np.array([0.0, 0.0, 1.0])  # camera-0 looks down +z (OpenCV); the clip's z points back at it
    z = back - up * (back @ up)
    if np.linalg.norm(z) < 1e-6:  # camera looking straight down or up: any horizontal axis will do
        z = np.cross(up, [1.0, 0.0, 0.0])
    z /= np.linalg.norm(z)
    x = np.cross(up, z)
    return np.stack([x, up, z]), A_list


def place_in_clip_frame(
    people: list[dict[str, np.ndarray]], R_w2c: np.ndarray | None, skeleton: Skeleton | None
) -> tuple[list[dict[str, np.ndarray]], dict]:
    """Move every person's world motion into the clip frame (module docstring). Returns (people, info) with
    ``info``: ``camera_height_m`` (median over people, from their first samples), ``up_in_camera`` (3,) and
    ``clip_from_cam0`` (3, 3), the rotation B from camera-0 (OpenCV) to clip coordinates."""
    if not people:
        return people, {}
    B, A_list = clip_frame(people, R_w2c)
    placed, heights = [], []
    for p, A in zip(people, A_list, strict=True):
        t0 = int(np.flatnonzero(p["present"])[0])
        s = int(p["sample_index"][t0])
        J0 = np.zeros(3)
        if skeleton is not None:
            import torch

            J0 = (
                skeleton.rest_joints(torch.as_tensor(p["betas"][None], dtype=torch.float32))[0, 0]
                .double()
                .numpy()
            )
        Y = _yaw_only(B @ A)
        Rcam = np.eye(3) if R_w2c is None else R_w2c[s].astype(np.float64)
        pelvis_cam0 = Rcam.T @ (J0 + p["incam_transl"][t0])
        q = B @ pelvis_cam0
        pelvis_w = J0 + p["transl"].astype(np.float64)
        start = np.array([q[0], pelvis_w[t0, 1], q[2]])
        heights.append(pelvis_w[t0, 1] - q[1])
        moved = (pelvis_w - pelvis_w[t0]) @ Y.T + start
        out = dict(p)
        out["transl"] = (moved - J0).astype(np.float32)
        out["global_orient"] = matrix_to_axis_angle(
            Y[None] @ axis_angle_to_matrix(p["global_orient"])
        ).astype(np.float32)
        placed.append(out)
    info = {
        "camera_height_m": float(np.median(heights)),
        "up_in_camera": B[1].tolist(),
        "clip_from_cam0": B.tolist(),
    }
    return placed, info


# --------------------------------------------------------------------------------------------------------
# The stage contract


def skeleton(body_model) -> Skeleton:
    """GEM's skeleton of the SMPL-X body model, loaded once per process."""
    from models.cache import cached
    from models.gem.skeleton import Skeleton

    return cached(("skeleton", str(body_model)), lambda: Skeleton.from_npz(body_model))


#: per-person arrays the postprocess result keeps (the export stage reads them)
KEEP = (
    "sample_index",
    "present",
    "global_orient",
    "transl",
    "body_pose",
    "betas",
    "incam_global_orient",
    "incam_transl",
    "contacts",
    "K",
)


def _compute(run: ClipRun) -> PersonArrays:
    env, cfg = run.env, run.cfg
    est: PersonArrays = run.results["estimate"]
    skel = skeleton(env.body_model) if env.body_model else None
    pids = sorted(est.arrays)
    people = [refine_person(est.arrays[pid], skel, cfg.postprocess.contact_ik) for pid in pids]
    info: dict = {"body_model": bool(skel), "contact_ik": bool(skel) and cfg.postprocess.contact_ik}
    if cfg.postprocess.shared_world:
        cam = run.results.get("camera")
        R_w2c = cam.R_w2c if cam is not None and cam.solved else None
        people, placed = place_in_clip_frame(people, R_w2c, skel)
        info.update(placed)
    info["contact_joints"] = list(CONTACT_JOINTS)
    return PersonArrays(info, {pid: {k: r[k] for k in KEEP} for pid, r in zip(pids, people, strict=True)})


def _warnings(run: ClipRun, pp: PersonArrays) -> list[str]:
    if pp.meta.get("body_model"):
        return []
    return ["postprocess: no SMPL-X body model: contact correction and IK skipped (raw trajectory)"]


SPEC = StageSpec(
    name="postprocess",
    version=VERSION,
    settings=PostprocessSettings,
    needs=("estimate",),
    uses=("camera",),
    key_inputs=ClipRun.body_model_input,
    compute=_compute,
    save=lambda r: r.to_arrays(),
    load=PersonArrays.from_arrays,
    warnings=_warnings,
)
