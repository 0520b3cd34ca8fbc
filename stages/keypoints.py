"""Stage ``keypoints``: COCO-17 2D keypoints per (sample, person) from ViTPose-H with GEM's flip test.

The work itself runs in the shared pixel pass of :mod:`stages.perception` (one decode for keypoints and
features); this module holds the stage's settings and its contract.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from stages.perception import auto_weights, perception_pass, precision_key
from stages.results import PersonArrays
from stages.spec import StageEnv, StageSpec, not_in_key
from stages.track import no_person

VERSION = "1"
ORIGINAL, ONNX = "vitpose-h-multi-coco.pth", "vitpose_coco17.onnx"


class KeypointsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    weights: str = not_in_key(
        "auto",
        description="ViTPose weights: registry name or path (see engine). auto: "
        "vitpose-h-multi-coco.pth when it is on disk, else GEM's ONNX export vitpose_coco17.onnx "
        "(downloaded when online)",
    )
    num_heads: int | None = Field(None, ge=1, description="backbone attention heads (None: ViT-H's 16)")
    flip_test: bool = Field(True, description="average with the flipped crop, as the reference does")
    confidence: Literal["sigmoid", "raw"] = Field(
        "sigmoid",
        description="sigmoid(heatmap max): GEM's convention, what its visibility threshold 0.5 expects; "
        "raw: the plain heatmap maximum",
    )
    batch: int = not_in_key(32, ge=1, le=4096, description="person crops per network pass (not a result)")
    # None: the measured default (fp32: on random weights bf16 moved 5.7 % of heatmap maxima, mean 8.7 px,
    # on an H200; see the README); the precision used enters the key through key_inputs
    bf16: bool | None = not_in_key(None, description="bf16 autocast on CUDA (torch engine); None: fp32")
    # like the device, the engine is not in the key: torch and onnxruntime agree to ~1e-5 on these networks
    engine: Literal["auto", "torch", "onnxruntime"] = not_in_key(
        "auto",
        description="auto: torch on a GPU (an .onnx file's weights are imported), onnxruntime for an .onnx "
        "file on the CPU; torch | onnxruntime: always that one",
    )


def _weights(cfg, env: StageEnv | None) -> dict[str, str]:
    return {"vitpose": auto_weights(cfg.keypoints.weights, ORIGINAL, ONNX, env)}


SPEC = StageSpec(
    name="keypoints",
    gpu=True,
    version=VERSION,
    settings=KeypointsSettings,
    needs=("probe", "track"),
    reads=("decode",),
    weights=_weights,
    key_inputs=lambda run: {
        "vitpose": run.env.weights_hash("vitpose"),
        **precision_key("vitpose", run.cfg.keypoints, run.env.device),
    },
    pixel_pass=perception_pass,
    save=lambda kp: kp.to_arrays(),
    load=PersonArrays.from_arrays,
    skip=no_person,
)
