"""Model inputs → per-frame condition vector ``f_cond``.

``prepare_inputs`` turns the per-frame inputs of one or several people into the derived tensors and effective
masks (fixture groups ``prep/*`` and ``mask/*``); ``ConditionEncoder`` embeds them and sums the six condition
embeddings into ``f_cond`` (``cond/*``).

Inputs (a mapping; unbatched arrays are (L, ...), batched ones (B, L, ...)):

=================== ============ ======================================================================
``kp2d``            (L, 17, 3)   COCO-17 keypoints in full-image pixels + confidence
``bbx_xys``         (L, 3)       square person box (cx, cy, s) in pixels
``K_fullimg``       (L, 3, 3)    intrinsics
``cam_angvel``      (L, 6)       raw camera relative rotation R_w2c[t+1]·R_w2c[t]ᵀ as 6D (identity = static)
``f_imgseq``        (L, 1024)    image features (any finite values where ``has_img_mask`` is False)
``has_img_mask``    (L,) bool    image feature present
``has_2d_mask``     (L,) bool    keypoints present
``has_cam_mask``    (L,) bool    camera motion known
``has_audio_mask``, ``has_music_mask``  optional, must be all False (no audio/music input is supported)
``length``          () or (B,)   optional number of valid frames (default L); frames beyond are padding
=================== ============ ======================================================================

The masks may also sit in a nested ``mask`` dict, as in the reference's data dict. Every input of a valid
frame must be finite (a frame where the person is absent is signalled by the masks, not by NaN).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from .dims import GemDims
from .layers import Mlp

__all__ = ["Prepared", "prepare_inputs", "ConditionEncoder", "CAM_ANGVEL_MEAN", "CAM_ANGVEL_STD"]

# ---- constants from the reference code (not in the checkpoint) ---------------------------------------------
# Normalisation of the camera angular velocity: gem/network/stats_compose.py, cam_angvel["manual"]
# (NVlabs/GENMO b7d3b6b). The mean is the identity rotation's 6D, so a static camera normalises to 0.
CAM_ANGVEL_MEAN = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
CAM_ANGVEL_STD = (0.001, 0.1, 0.1, 0.1, 0.001, 0.1)
VISIBLE_CONF = 0.5  # a joint is visible when its confidence is > 0.5
MIN_VISIBLE_JOINTS = 3  # a frame's 2D condition exists when more than 3 joints are visible
MIN_BOX_SCALE = 1e-2  # the box size is clamped to this before dividing (normalize_kp2d)

#: condition order of the reference (pipeline.args.in_attr of exp gem_smpl); f_cond sums in this order
CONDITIONS = ("obs", "f_cliffcam", "f_imgseq", "f_cam_angvel", "encoded_music", "encoded_audio")
_FLAGS = {"f_cliffcam": "has_2d", "f_imgseq": "has_img", "f_cam_angvel": "has_cam"}


@dataclass
class Prepared:
    """Derived inputs and effective masks, all batched (B, L, ...)."""

    obs: torch.Tensor  # (B, L, J, 3) keypoints normalised by the box; conf zeroed outside the box
    f_cliffcam: torch.Tensor  # (B, L, 3) ((cx - K02)/f, (cy - K12)/f, s/f)
    f_cam_angvel: torch.Tensor  # (B, L, 6) normalised camera angular velocity, zeroed nowhere
    f_imgseq: torch.Tensor  # (B, L, img_dim)
    j2d_visible_raw: torch.Tensor  # (B, L, J) raw conf > 0.5
    j2d_vis: torch.Tensor  # (B, L, J) raw visibility AND the frame's has_2d_mask input
    has_2d: torch.Tensor  # (B, L) more than 3 visible joints: gates f_cliffcam
    has_img: torch.Tensor  # (B, L)
    has_cam: torch.Tensor  # (B, L)
    has_audio: torch.Tensor  # (B, L) all False
    has_music: torch.Tensor  # (B, L) all False
    obs_vis: torch.Tensor  # (B, L, J) joints embedded from their position (the others: learned_pos_params)
    length: torch.Tensor  # (B,) int64 valid frames

    @property
    def valid(self) -> torch.Tensor:
        return torch.arange(self.obs.shape[1], device=self.length.device)[None] < self.length[:, None]

    def to_fixture(self) -> dict[str, torch.Tensor]:
        """The ``prep/*`` and ``mask/*`` tensors under their fixture names."""
        out = {
            f"prep/{k}": getattr(self, k) for k in ("obs", "f_cliffcam", "f_cam_angvel", "j2d_visible_raw")
        }
        for k in ("j2d_vis", "has_2d", "has_img", "has_cam", "has_audio", "has_music", "obs_vis"):
            out[f"mask/{k}"] = getattr(self, k)
        return out


def normalize_kp2d(kp2d: torch.Tensor, bbx_xys: torch.Tensor) -> torch.Tensor:
    """xy → 2·(xy − centre)/max(s, 0.01); conf → 0 for joints strictly outside the (unclamped) box."""
    xy, conf = kp2d[..., :2], kp2d[..., 2]
    centre, s = bbx_xys[..., None, :2], bbx_xys[..., None, 2:3]
    outside = ((xy < centre - s / 2) | (xy > centre + s / 2)).any(-1)
    xy_n = 2 * (xy - centre) / s.clamp(min=MIN_BOX_SCALE)
    return torch.cat([xy_n, (conf * ~outside)[..., None]], dim=-1)


def cliffcam(bbx_xys: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """BEDLAM-style box info: box centre relative to the principal point and box size, all over fx."""
    rel = torch.stack([bbx_xys[..., 0] - K[..., 0, 2], bbx_xys[..., 1] - K[..., 1, 2], bbx_xys[..., 2]], -1)
    return rel / K[..., 0, 0, None]


def prepare_inputs(inputs: Mapping, device: torch.device | str = "cpu") -> Prepared:
    """Validate, batch and derive the model inputs (see the module docstring for the accepted keys)."""
    masks = {**inputs, **inputs.get("mask", {})}
    kp2d = _tensor(inputs, "kp2d", device)
    batched = kp2d.dim() == 4
    if not batched:
        kp2d = kp2d[None]
    B, L = kp2d.shape[:2]

    def get(key: str, src: Mapping = inputs, default=None) -> torch.Tensor:
        value = _tensor(src, key, device, default)
        return value if batched or value is None else value[None]

    bbx, K, angvel, img = get("bbx_xys"), get("K_fullimg"), get("cam_angvel"), get("f_imgseq")
    has = {k: get(f"has_{k}_mask", masks).bool() for k in ("img", "2d", "cam")}
    for k in ("audio", "music"):
        m = get(f"has_{k}_mask", masks, torch.zeros(L, dtype=torch.bool))
        if m.any():
            raise NotImplementedError(f"has_{k}_mask is set: {k} conditions are not supported")
        has[k] = m.bool().expand(B, L)
    length = _tensor(inputs, "length", device, torch.tensor(L)).long().reshape(-1).expand(B).contiguous()
    if not ((length >= 1) & (length <= L)).all():
        raise ValueError(f"length {length.tolist()} outside [1, {L}]")

    valid = torch.arange(L, device=device)[None] < length[:, None]
    shapes = {"bbx_xys": (bbx, (3,)), "K_fullimg": (K, (3, 3)), "cam_angvel": (angvel, (6,))}
    shapes |= {"kp2d": (kp2d, (kp2d.shape[2], 3)), "f_imgseq": (img, img.shape[2:])}
    for name, (value, tail) in shapes.items():
        if tuple(value.shape) != (B, L, *tail):
            raise ValueError(f"{name} has shape {tuple(value.shape)}, expected {(B, L, *tail)}")
        if not torch.isfinite(value[valid]).all():
            raise ValueError(f"{name} has non-finite values in valid frames")
    for name, m in has.items():
        if tuple(m.shape) != (B, L):
            raise ValueError(f"has_{name}_mask has shape {tuple(m.shape)}, expected {(B, L)}")

    mean, std = angvel.new_tensor(CAM_ANGVEL_MEAN), angvel.new_tensor(CAM_ANGVEL_STD)
    obs = normalize_kp2d(kp2d.float(), bbx.float())
    raw_vis = kp2d[..., 2] > VISIBLE_CONF
    j2d_vis = raw_vis & has["2d"][..., None]
    masked_obs = obs * j2d_vis[..., None]
    return Prepared(
        obs=obs,
        f_cliffcam=cliffcam(bbx.float(), K.float()),
        f_cam_angvel=(angvel.float() - mean) / std,
        f_imgseq=img.float(),
        j2d_visible_raw=raw_vis,
        j2d_vis=j2d_vis,
        has_2d=j2d_vis.sum(-1) > MIN_VISIBLE_JOINTS,
        has_img=has["img"],
        has_cam=has["cam"],
        has_audio=has["audio"],
        has_music=has["music"],
        obs_vis=masked_obs[..., 2] > VISIBLE_CONF,
        length=length,
    )


def _tensor(src: Mapping, key: str, device, default=None) -> torch.Tensor:
    value = src.get(key, default)
    if value is None:
        raise KeyError(f"GEM input '{key}' is missing")
    return torch.as_tensor(value, device=device)


class ConditionEncoder(nn.Module):
    """The six condition embeddings and their sum f_cond."""

    def __init__(self, dims: GemDims):
        super().__init__()
        D, J, E = dims.latent_dim, dims.obs_joints, dims.obs_embed
        self.learned_pos_linear = nn.Linear(2, E)
        self.learned_pos_params = nn.Parameter(torch.zeros(J, E))
        self.embed_noisyobs = Mlp(J * E, dims.obs_hidden, D, act="gelu")
        self.cliffcam = Mlp(dims.cliffcam_dim, D, D, act="silu")
        self.cam_angvel = Mlp(dims.cam_angvel_dim, D, D, act="silu")
        self.imgseq_norm = nn.LayerNorm(dims.img_dim, eps=1e-5)
        self.imgseq_proj = nn.Linear(dims.img_dim, D)
        # exists-embedders: Linear(D + 1 → D), SiLU, Linear(D → D) on [embedding, flag]
        self.exists = nn.ModuleDict({k: Mlp(D + 1, D, D, act="silu") for k in CONDITIONS[1:]})

    def forward(self, p: Prepared, record: dict | None = None) -> torch.Tensor:
        """f_cond (B, L, D); with ``record``, the summands under their fixture names (``cond/E_*``)."""
        vis = p.obs_vis[..., None]
        xy = torch.where(vis, p.obs[..., :2] * p.j2d_vis[..., None], 0.0)
        per_joint = torch.where(vis, self.learned_pos_linear(xy), self.learned_pos_params)
        terms = {"obs": self.embed_noisyobs(per_joint.flatten(-2))}
        raw = {
            "f_cliffcam": self.cliffcam(p.f_cliffcam),
            "f_imgseq": self.imgseq_proj(self.imgseq_norm(p.f_imgseq)),
            "f_cam_angvel": self.cam_angvel(p.f_cam_angvel),
        }
        for key, embedding in raw.items():
            flag = getattr(p, _FLAGS[key])[..., None].float()
            terms[key] = self.exists[key](torch.cat([embedding * flag, flag], dim=-1))
        B, L = p.length.shape[0], p.obs.shape[1]
        for key in ("encoded_music", "encoded_audio"):
            # no music/audio input: embedding 0 and flag 0, a constant W₂·SiLU(b₁) + b₂ (evaluated once)
            zeros = p.obs.new_zeros(1, 1, self.exists[key].fc1.in_features)
            terms[key] = self.exists[key](zeros).expand(B, L, -1)
        f_cond = sum(terms[k] for k in CONDITIONS)
        if record is not None:
            record.update({f"cond/E_{k}": v for k, v in terms.items()})
            # f_uncond is the same tensor: every condition is reused, music/audio flags are 0 in both
            record["cond/f_cond"] = record["cond/f_uncond"] = f_cond
        return f_cond
