"""Stage ``features``: HMR2's 1024-D ``token_out`` image feature per (sample, person), GEM's ``f_imgseq``.

The work runs in the shared pixel pass of :mod:`stages.perception`; this module holds the stage's settings
and its contract. ``enabled: false`` skips HMR2 entirely and GEM runs in its no-image-feature mode (every
``has_img_mask`` False), which is faster and somewhat less accurate on body shape and hard poses.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from stages.perception import auto_weights, perception_pass, precision_key
from stages.results import PersonArrays
from stages.spec import ClipRun, StageEnv, StageSpec, not_in_key
from stages.track import no_person

VERSION = "1"
ORIGINAL, ONNX = "epoch=10-step=25000.ckpt", "hmr2.onnx"


class FeaturesSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = not_in_key(True, description="false: no HMR2; GEM runs without image features")
    weights: str = not_in_key(
        "auto",
        description="HMR2 weights: registry name or path (see engine). auto: "
        "epoch=10-step=25000.ckpt when it is on disk, else GEM's ONNX export hmr2.onnx (downloaded)",
    )
    num_heads: int | None = Field(None, ge=1, description="backbone attention heads (None: ViT-H's 16)")
    decoder_heads: int | None = Field(None, ge=1, description="SMPL-head decoder heads (None: 8)")
    blur: bool = Field(True, description="GEM's anti-alias blur of strongly downscaled crops")
    batch: int = not_in_key(32, ge=1, le=4096, description="person crops per network pass (not a result)")
    # None: the measured default (bf16 on CUDA: f_imgseq cosine >= 0.99997 against fp32, 6.8x faster on an
    # H200; see the README); the precision used enters the key through key_inputs
    bf16: bool | None = not_in_key(
        None, description="bf16 autocast on CUDA (torch engine); None: bf16 on CUDA"
    )
    # like the device, the engine is not in the key: torch and onnxruntime agree to ~1e-5 on these networks
    engine: Literal["auto", "torch", "onnxruntime"] = not_in_key(
        "auto",
        description="auto: torch on a GPU (an .onnx file's weights are imported), onnxruntime for an .onnx "
        "file on the CPU; torch | onnxruntime: always that one",
    )


def _weights(cfg, env: StageEnv | None) -> dict[str, str]:
    return {"hmr2": auto_weights(cfg.features.weights, ORIGINAL, ONNX, env)} if cfg.features.enabled else {}


def _skip(run: ClipRun) -> str | None:
    if not run.cfg.features.enabled:
        return "disabled (features.enabled=false): GEM runs without image features"
    return no_person(run)


SPEC = StageSpec(
    name="features",
    gpu=True,
    version=VERSION,
    settings=FeaturesSettings,
    needs=("probe", "track"),
    reads=("decode",),
    weights=_weights,
    key_inputs=lambda run: {
        "hmr2": run.env.weights_hash("hmr2"),
        **precision_key("hmr2", run.cfg.features, run.env.device),
    },
    pixel_pass=perception_pass,
    save=lambda ft: ft.to_arrays(),
    load=PersonArrays.from_arrays,
    skip=_skip,
)
