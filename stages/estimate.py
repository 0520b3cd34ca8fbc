"""Stage ``estimate``: GEM on every person of a clip, from the person's track, 2D keypoints, image features
and the clip's camera to SMPL-X parameters in the camera frame and in a gravity-aligned world frame.

A person is estimated over the contiguous span of samples from its first to its last track sample. Samples
inside the span where the track is absent (a gap longer than the tracker interpolates) are *masked*, not
invented: no 2D keypoints (``has_2d_mask`` False) and no image feature there; only the box is interpolated so
that the crop geometry GEM normalises keypoints with stays defined. Several people are batched through the
network; each gets noise drawn from its own seed, so a person's result never depends on who shares its batch.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from stages.results import PersonArrays, Tracks
from stages.spec import ClipRun, StageEnv, StageSpec, not_in_key
from stages.track import no_person

if TYPE_CHECKING:  # torch and GEM are imported where they are used: importing the stage stays cheap
    import torch

    from models.gem.network import GemNetwork
    from models.gem.skeleton import Skeleton

VERSION = "1"
NUM_KP = 17  # COCO-17
IMG_DIM = 1024  # HMR2 token width


class EstimateSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    checkpoint: str = not_in_key("gem_smpl.ckpt", description="GEM checkpoint: registry name or path")
    num_heads: int | None = Field(None, ge=1, description="attention heads (None: the official model's 8)")
    mode: Literal["ddim", "regression"] = Field("ddim", description="ddim: the reference demo (50 steps)")
    steps: int = Field(50, ge=1, le=1000)
    seed: int | None = Field(0, description="initial-noise seed per person; None: zero noise")
    bf16: bool = Field(False, description="bf16 autocast (CUDA only)")
    batch_people: int = not_in_key(4, ge=1, description="people per network pass (does not change results)")


@dataclass
class PersonInput:
    """What the pixel stages know about one person, on the clip's sample timeline.

    ``sample_index`` (T,) int64 increasing sample numbers where the track exists (gaps allowed);
    ``bbx_xys`` (T, 3) GEM's square box (cx, cy, s) in pixels; ``kp2d`` (T, 17, 3) COCO-17 (x, y, conf) in
    full-image pixels, or None; ``f_imgseq`` (T, 1024) HMR2 features or None, ``has_img`` (T,) bool.
    """

    person_id: int
    sample_index: np.ndarray
    bbx_xys: np.ndarray
    kp2d: np.ndarray | None = None
    f_imgseq: np.ndarray | None = None
    has_img: np.ndarray | None = None


def span_rows(values: np.ndarray, rel: np.ndarray, L: int, interpolate: bool = False) -> np.ndarray:
    """Rows per track sample (T, ...) -> float32 rows over the person's span (L, ...).

    ``rel`` (T,) increasing positions of the rows in the span; the other rows are zero, or with
    ``interpolate`` linear between their neighbouring rows (held constant beyond the ends).
    """
    out = np.zeros((L, *values.shape[1:]), dtype=np.float32)
    if interpolate:
        flat = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
        grid = np.arange(L)
        cols = [np.interp(grid, rel, flat[:, c]) for c in range(flat.shape[1])]
        out[:] = np.stack(cols, 1).reshape(out.shape)
    out[rel] = values
    return out


def span_inputs(
    p: PersonInput,
    image_wh: tuple[int, int],
    K: np.ndarray | None = None,
    cam_angvel: np.ndarray | None = None,
    camera_known: bool | np.ndarray = True,
) -> tuple[int, np.ndarray, dict[str, torch.Tensor]]:
    """GEM inputs for one person over its span.

    Args:
        K: (S, 3, 3) clip intrinsics per sample, or None for GEM's default from the image size.
        cam_angvel: (S, 6) clip camera angular velocity per sample (GEM's 6D convention), or None for a
            static camera.
        camera_known: False tells GEM the camera motion is unknown (``has_cam_mask`` False); or (S,) bool
            per clip sample.
    Returns:
        (first sample s0, present (L,) bool, inputs dict of (L, ...) tensors) with L = last - s0 + 1.
    """
    import torch

    from models.gem.camera import default_intrinsics
    from models.gem.rollout import static_cam_angvel

    idx = np.asarray(p.sample_index, dtype=np.int64)
    if len(idx) < 2 or np.any(np.diff(idx) <= 0):
        raise ValueError(f"person {p.person_id}: needs >= 2 increasing samples")
    s0, L = int(idx[0]), int(idx[-1] - idx[0] + 1)
    rel = idx - s0
    present = np.zeros(L, dtype=bool)
    present[rel] = True
    bbx = span_rows(p.bbx_xys, rel, L, interpolate=True)
    kp = span_rows(p.kp2d, rel, L) if p.kp2d is not None else np.zeros((L, NUM_KP, 3), dtype=np.float32)
    has_2d = present.copy() if p.kp2d is not None else np.zeros(L, dtype=bool)
    img = np.zeros((L, IMG_DIM), dtype=np.float32)
    has_img = np.zeros(L, dtype=bool)
    if p.f_imgseq is not None:
        ok = np.ones(len(idx), dtype=bool) if p.has_img is None else np.asarray(p.has_img, dtype=bool)
        img[rel[ok]] = p.f_imgseq[ok]
        has_img[rel[ok]] = True
    span = slice(s0, s0 + L)
    K_t = default_intrinsics(*image_wh, L) if K is None else torch.tensor(K[span], dtype=torch.float32)
    av = (
        static_cam_angvel(L) if cam_angvel is None else torch.as_tensor(cam_angvel[span], dtype=torch.float32)
    )
    inputs = {
        "kp2d": torch.from_numpy(kp),
        "bbx_xys": torch.from_numpy(bbx),
        "K_fullimg": K_t,
        "cam_angvel": av,
        "f_imgseq": torch.from_numpy(img),
        "has_img_mask": torch.from_numpy(has_img),
        "has_2d_mask": torch.from_numpy(has_2d),
        "has_cam_mask": torch.from_numpy(np.asarray(camera_known, dtype=bool)[span].copy())
        if np.ndim(camera_known)
        else torch.full((L,), bool(camera_known), dtype=torch.bool),
    }
    return s0, present, inputs


def _pad(x: torch.Tensor, L: int) -> torch.Tensor:
    """Pad dim 0 to L by repeating the last row (finite values; the network masks them by length)."""
    import torch

    return x if x.shape[0] == L else torch.cat([x, x[-1:].expand(L - x.shape[0], *x.shape[1:])])


def estimate_people(
    net: GemNetwork,
    people: list[PersonInput],
    image_wh: tuple[int, int],
    settings: EstimateSettings,
    skeleton: Skeleton | None,
    K: np.ndarray | None = None,
    cam_angvel: np.ndarray | None = None,
    camera_known: bool | np.ndarray = True,
) -> list[dict[str, np.ndarray]]:
    """Run GEM for every person (batched ``settings.batch_people`` at a time) and decode each.

    Returns, per person, float32 arrays over its span of L samples: ``sample_index`` (L,), ``present``
    (L,) bool, ``global_orient`` / ``transl`` (L, 3) world (y up, metres), ``body_pose`` (L, 63),
    ``betas`` (10,), ``incam_global_orient`` / ``incam_transl`` (L, 3) camera frame (OpenCV),
    ``static_conf_logits`` (L, 6), ``K`` (L, 3, 3); and the raw network outputs with the decode inputs
    ``pred_x`` (L, 151), ``pred_cam`` (L, 3), ``bbx_xys`` (L, 3), ``cam_angvel`` (L, 6). With ``skeleton``
    None the contact post-process and IK are skipped (see :mod:`stages.postprocess`).
    """
    import torch

    from models.gem import codec

    results: list[dict[str, np.ndarray]] = []
    device = net.device
    for start in range(0, len(people), settings.batch_people):
        group = people[start : start + settings.batch_people]
        spans = [span_inputs(p, image_wh, K, cam_angvel, camera_known) for p in group]
        Lmax = max(len(present) for _, present, _ in spans)
        batch = {k: torch.stack([_pad(inp[k], Lmax) for _, _, inp in spans]) for k in spans[0][2]}
        batch["length"] = torch.tensor([len(present) for _, present, _ in spans])
        if settings.mode == "ddim" and settings.seed is not None:
            # one generator per person: results do not depend on batch composition
            seeds = [settings.seed + p.person_id for p in group]
            noise = torch.stack(
                [_pad(_noise(s, len(pr)), Lmax) for s, (_, pr, _) in zip(seeds, spans, strict=True)]
            )
        else:
            noise = "zero"
        out = net.estimate(
            {k: v.to(device) for k, v in batch.items()},
            mode=settings.mode,
            steps=settings.steps,
            noise=noise,
            bf16=settings.bf16,
        )
        for b, (s0, present, inp) in enumerate(spans):
            L = len(present)
            one = {k: out[k][b : b + 1, :L] for k in ("pred_x", "pred_cam", "static_conf_logits")}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the caller reports a missing body model once per clip
                pred = codec.decode_all(one, {k: v[None] for k, v in inp.items()}, skeleton)
            results.append(
                {
                    "sample_index": np.arange(s0, s0 + L, dtype=np.int64),
                    "present": present,
                    "global_orient": _np(pred["pred/global/global_orient"][0]),
                    "transl": _np(pred["pred/global/transl"][0]),
                    "body_pose": _np(pred["pred/global/body_pose"][0]),
                    "betas": _np(pred["pred/global/betas"][0, 0]),
                    "incam_global_orient": _np(pred["pred/incam/global_orient"][0]),
                    "incam_transl": _np(pred["pred/incam/transl"][0]),
                    "static_conf_logits": _np(one["static_conf_logits"][0]),
                    "K": _np(pred["pred/K_fullimg"][0]),
                    # what the postprocess stage needs to decode again with the body model
                    "pred_x": _np(one["pred_x"][0]),
                    "pred_cam": _np(one["pred_cam"][0]),
                    "bbx_xys": _np(inp["bbx_xys"]),
                    "cam_angvel": _np(inp["cam_angvel"]),
                }
            )
    return results


def _noise(seed: int, length: int) -> torch.Tensor:
    """(length, 151) standard normal x_T of one person, drawn on the CPU (same on every device)."""
    import torch

    from models.gem import codec

    return torch.randn(length, codec.MOTION_DIM, generator=torch.Generator().manual_seed(seed))


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


# --------------------------------------------------------------------------------------------------------
# The stage contract


def gem_network(weights, settings: EstimateSettings, device: str) -> GemNetwork:
    """GEM's network from its checkpoint, loaded once per process."""
    from models.cache import cached
    from models.gem.checkpoint import load_gem

    key = ("gem", str(weights), device, settings.num_heads)
    return cached(key, lambda: load_gem(weights, device, num_heads=settings.num_heads))


def _compute(run: ClipRun) -> PersonArrays:
    env, cfg = run.env, run.cfg
    tracks: Tracks = run.results["track"]
    kp: PersonArrays = run.results["keypoints"]
    ft: PersonArrays | None = run.results.get("features")
    people = []
    for p in tracks.people:
        f = ft.arrays[p.person_id]["f_imgseq"] if ft is not None else None
        people.append(
            PersonInput(
                person_id=p.person_id,
                sample_index=p.sample_index,
                bbx_xys=p.bbx_xys,
                kp2d=kp.arrays[p.person_id]["kp2d"],
                f_imgseq=f,
                has_img=None if f is None else np.ones(len(p.sample_index), bool),
            )
        )
    cam = run.results.get("camera")  # stages.camera.Camera
    S = len(tracks.sample_frame_index)
    K = angvel = None
    known: bool | np.ndarray = True
    if cam is not None:
        K = np.repeat(cam.K[None].astype(np.float32), S, axis=0)
        angvel = cam.cam_angvel()
        known = cam.has_cam_mask
    net = gem_network(env.weights("gem"), cfg.estimate, env.device)
    env.progress.stage(run.clip_id, "estimate")
    results = estimate_people(
        net, people, tracks.image_wh, cfg.estimate, skeleton=None, K=K, cam_angvel=angvel, camera_known=known
    )
    meta = {
        "features": ft is not None,
        "camera": "static (no camera stage)" if cam is None else cam.backend,
        "camera_known_fraction": float(np.mean(known)),
    }
    return PersonArrays(meta, {p.person_id: r for p, r in zip(people, results, strict=True)})


def _warnings(run: ClipRun, result: PersonArrays) -> list[str]:
    fps = run.results["track"].fps
    return (
        [f"estimate: GEM expects 30 fps samples, got {fps:.3f} (decode.resample=false)"]
        if abs(fps - 30) > 0.5
        else []
    )


def _weights(cfg, env: StageEnv | None) -> dict[str, str]:
    return {"gem": cfg.estimate.checkpoint}


SPEC = StageSpec(
    name="estimate",
    gpu=True,
    version=VERSION,
    settings=EstimateSettings,
    needs=("track", "keypoints"),
    uses=("features", "camera"),
    weights=_weights,
    key_inputs=lambda run: {"gem": run.env.weights_hash("gem")},
    compute=_compute,
    save=lambda r: r.to_arrays(),
    load=PersonArrays.from_arrays,
    skip=no_person,
    warnings=_warnings,
)
