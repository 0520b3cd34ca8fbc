"""Parity checks of the decoding stages against a golden scenario (groups dec, incam, world, pp, ik, pred).

Tolerances (sized from the rounding spread of the reference itself):

- ``dec/*``, ``incam/*``, ``pred/incam/{global_orient,transl,betas}``, ``pred/global/betas`` and
  ``pred/K_fullimg``: max |err| <= 1e-4 * max(1, max |ref|);
- ``world/*`` teacher-forced from ``dec/*`` + ``input/cam_angvel``: 2e-2 absolute (``yaw_aa_raw``: 1e-3 rad),
  because the reference rollout amplifies float rounding (it is ill-conditioned);
- ``pp/*`` teacher-forced from ``dec/body_pose``, ``dec/betas``, ``world/*``, ``out/static_conf_logits`` and
  ``ik/*`` teacher-forced from the same with ``pp/transl``: 1e-4 absolute; the masks ``pp/static_label`` and
  ``pp/is_static`` must match exactly (reported error = number of differing entries, tolerance 0);
- every other ``pred/*`` key, computed end to end from ``out/*`` and ``input/*``: 2e-2 absolute.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from .camera import transl_from_weak_perspective
from .codec import decode, decode_all
from .ik import contact_ik
from .postprocess import static_joint_postprocess
from .rollout import world_rollout
from .skeleton import Skeleton

__all__ = ["TOL_ABS_STAGE", "TOL_WORLD", "TOL_YAW_RAW", "TOL_REL", "check_decode"]

TOL_REL = 1e-4  # scaled by max(1, max |ref|)
TOL_ABS_STAGE = 1e-4  # teacher-forced static-joint step and IK
TOL_WORLD = 2e-2  # world rollout and everything downstream of it end to end
TOL_YAW_RAW = 1e-3  # radians, world/yaw_aa_raw

_PRED_TIGHT = (
    "pred/incam/global_orient",
    "pred/incam/transl",
    "pred/incam/betas",
    "pred/global/betas",
    "pred/K_fullimg",
)

Row = tuple[str, float, float, bool]


def _compare(key: str, got: torch.Tensor, ref: torch.Tensor, tol: float | None) -> Row:
    """tol None: relative rule 1e-4 * max(1, max|ref|)."""
    got = got.reshape(ref.shape)
    if ref.dtype == torch.bool:
        err = float((got != ref).sum())
        return key, err, 0.0, err == 0
    ref = ref.float()
    if tol is None:
        tol = TOL_REL * max(1.0, float(ref.abs().max()) if ref.numel() else 1.0)
    err = float((got.float() - ref).abs().max()) if ref.numel() else 0.0
    return key, err, tol, bool(err <= tol)  # NaN fails


def _rows(group: str, values: dict[str, torch.Tensor], scenario: dict, tol: float | None) -> list[Row]:
    rows = []
    for name, got in values.items():
        key = f"{group}/{name}"
        if key in scenario:
            t = TOL_YAW_RAW if key == "world/yaw_aa_raw" else tol
            rows.append(_compare(key, got, scenario[key], t))
    return rows


def check_decode(scenario: dict, body_model_dir: str | Path | None) -> list[Row]:
    """Run the decoding stages on one scenario and compare with its stored tensors.

    Args:
        scenario: a loaded scenario file (flat dict of ``group/name`` tensors, fixture format).
        body_model_dir: directory holding ``SMPLX_NEUTRAL.npz``; None or missing skips everything that needs
            the skeleton (``dec/offset``, ``pp/*``, ``ik/*`` and the pose/translation keys of ``pred/*`` that
            depend on post-processing).
    Returns:
        ``(key, max abs error, tolerance, passed)`` per compared key, in stage order.
    """
    sc = scenario
    skeleton = None
    if body_model_dir is not None and (Path(body_model_dir) / "SMPLX_NEUTRAL.npz").is_file():
        skeleton = Skeleton.from_dir(body_model_dir)
    rows: list[Row] = []

    dec = decode(sc["out/pred_x"], skeleton)
    rows += _rows("dec", dec, sc, None)
    transl_c = transl_from_weak_perspective(
        sc["out/pred_cam"], sc["input/bbx_xys"][None], sc["input/K_fullimg"][None]
    )
    rows += _rows("incam", {"transl": transl_c}, sc, None)

    world = world_rollout(
        sc["dec/global_orient_gv"],
        sc["dec/local_transl_vel"],
        sc["dec/global_orient"],
        sc["input/cam_angvel"][None],
    )
    rows += _rows("world", world, sc, TOL_WORLD)

    if skeleton is not None:
        pose, betas, logits = sc["dec/body_pose"], sc["dec/betas"], sc["out/static_conf_logits"]
        orient = sc["world/global_orient"]
        pp = static_joint_postprocess(skeleton, pose, betas, orient, sc["world/transl"], logits)
        rows += _rows("pp", pp, sc, TOL_ABS_STAGE)
        ik = contact_ik(skeleton, pose, betas, orient, sc["pp/transl"], logits)
        rows += _rows("ik", ik, sc, TOL_ABS_STAGE)

    out = {k: sc[f"out/{k}"] for k in ("pred_x", "pred_cam", "static_conf_logits")}
    inputs = {k: sc[f"input/{k}"] for k in ("bbx_xys", "K_fullimg", "cam_angvel")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pred = decode_all(out, inputs, skeleton)
    for key, got in pred.items():
        if key not in sc:
            continue
        if skeleton is None and key not in _PRED_TIGHT and key != "pred/global/global_orient":
            continue  # these depend on post-processing, which needs the body model
        rows.append(_compare(key, got[0], sc[key], None if key in _PRED_TIGHT else TOL_WORLD))
    return rows
