"""Model dimensions of the GEM estimation network, read from a checkpoint's tensor shapes.

Everything that has a tensor in the state dict is derived from that tensor's shape, so the official
``gem_smpl.ckpt`` (latent 1024, 16 layers, MLP ratio 4) and the reduced parity checkpoint (latent 64, 2
layers, MLP ratio 2) go through the same code. Four numbers have no tensor and come from the reference
configuration:

* ``num_heads``: a reshape, invisible in the weights. The reference config
  (``configs/network/diffusion_lg.yaml``) sets 8 heads whatever the latent width, i.e. 8 heads of 128 channels
  for the official model. That is the default here; pass ``num_heads=`` for any other checkpoint
  (the reduced parity checkpoint was built with 4, recorded in its fixture ``manifest.json``).
* ``max_len`` = 120: the attention window length (constructor default, no config overrides it).
* ``text_tokens`` = 50: the zero text context length (``text_encoder.max_text_len``).
* ``num_timesteps`` = 1000: the original diffusion length that the timestep index refers to.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch

__all__ = ["GemDims", "DENOISER_PREFIX", "DEFAULT_NUM_HEADS"]

#: namespace of the denoiser's weights in the checkpoint (top-level keys hold the condition embedders)
DENOISER_PREFIX = "pipeline.denoiser3d.denoiser."
#: heads of the reference configuration (configs/network/diffusion_lg.yaml: num_heads 8)
DEFAULT_NUM_HEADS = 8


@dataclass(frozen=True)
class GemDims:
    latent_dim: int  # D, width of the transformer and of every condition embedding
    num_layers: int  # self-attention blocks
    text_layers: tuple[int, ...]  # indices i whose text cross-attention block runs before block i
    num_heads: int
    mlp_hidden: int  # hidden width of the transformer MLPs (= D * mlp_ratio)
    motion_dim: int  # 151, the normalised motion vector x
    pred_cam_dim: int  # 3
    static_conf_dim: int  # 6
    head_hidden: int  # hidden width of the output heads (= D)
    text_dim: int  # 1024, width of the (zero) encoded text
    img_dim: int  # 1024, image feature width
    obs_joints: int  # 17 COCO keypoints
    obs_embed: int  # 32, per-joint embedding width
    obs_hidden: int  # hidden width of embed_noisyobs (= 2D)
    cliffcam_dim: int  # 3
    cam_angvel_dim: int  # 6
    pe_len: int  # rows of the sinusoidal table (5000)
    max_len: int = 120
    text_tokens: int = 50
    num_timesteps: int = 1000
    betas_slice: tuple[int, int] = (126, 136)  # betas in the 151-D motion vector, averaged by avgbeta

    @property
    def head_dim(self) -> int:
        return self.latent_dim // self.num_heads

    @property
    def mlp_ratio(self) -> float:
        return self.mlp_hidden / self.latent_dim

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, torch.Tensor], num_heads: int | None = None) -> GemDims:
        """Dimensions from a (remapped, see ``checkpoint.remap_keys``) GEM state dict.

        Raises ``KeyError`` naming the first tensor that is needed to size the model but absent.
        """

        def shape(key: str) -> tuple[int, ...]:
            if key not in sd:
                raise KeyError(f"checkpoint has no '{key}', needed to size the model")
            return tuple(sd[key].shape)

        den = DENOISER_PREFIX
        latent, cond_in = shape(den + "add_cond_linear.weight")
        motion_dim = shape(den + "final_layer.fc2.weight")[0]
        blocks = _indices(sd, re.compile(re.escape(den) + r"blocks\.(\d+)\."))
        text = _indices(sd, re.compile(re.escape(den) + r"text_encoder_layers\.(\d+)\."))
        if not blocks or blocks != list(range(len(blocks))):
            raise KeyError(f"checkpoint has no contiguous '{den}blocks.N' (found indices {blocks})")
        if cond_in != latent + motion_dim:
            raise ValueError(f"add_cond_linear takes {cond_in} inputs, expected {latent} + {motion_dim}")
        heads = DEFAULT_NUM_HEADS if num_heads is None else int(num_heads)
        if heads <= 0 or latent % heads or (latent // heads) % 2:
            raise ValueError(f"{heads} heads do not split latent width {latent} into even-sized heads")
        obs_joints, obs_embed = shape("learned_pos_params")
        dims = cls(
            latent_dim=latent,
            num_layers=len(blocks),
            text_layers=tuple(i for i in text if i < len(blocks)),
            num_heads=heads,
            mlp_hidden=shape(den + "blocks.0.mlp.fc1.weight")[0],
            motion_dim=motion_dim,
            pred_cam_dim=shape(den + "pred_cam_head.fc2.weight")[0],
            static_conf_dim=shape(den + "static_conf_head.fc2.weight")[0],
            head_hidden=shape(den + "final_layer.fc1.weight")[0],
            text_dim=shape(den + "embed_text.weight")[1],
            img_dim=shape("imgseq_embedder.1.weight")[1],
            obs_joints=obs_joints,
            obs_embed=obs_embed,
            obs_hidden=shape("embed_noisyobs.fc1.weight")[0],
            cliffcam_dim=shape("cliffcam_embedder.0.weight")[1],
            cam_angvel_dim=shape("cam_angvel_embedder.0.weight")[1],
            pe_len=shape(den + "sequence_pos_encoder.pe")[0],
        )
        if len(text) != len(dims.text_layers):
            raise KeyError(f"text blocks {text} do not match the {dims.num_layers} self-attention blocks")
        if dims.pe_len < max(dims.num_timesteps, dims.text_tokens):
            raise ValueError(f"sinusoidal table has {dims.pe_len} rows, fewer than {dims.num_timesteps}")
        if dims.betas_slice[1] > motion_dim:
            raise ValueError(f"motion vector of width {motion_dim} has no betas slice {dims.betas_slice}")
        return dims


def _indices(sd: Mapping[str, torch.Tensor], pattern: re.Pattern) -> list[int]:
    return sorted({int(m.group(1)) for k in sd if (m := pattern.match(k))})
