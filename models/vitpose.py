"""ViTPose (ViT backbone + classic top-down heatmap head) and strict loading of mmpose-0.x checkpoints.

mmpose itself does not install on current torch, so its checkpoint format is read directly: the file is a
dict whose ``state_dict`` holds ``backbone.*`` (see :mod:`models.vit`) and ``keypoint_head.*``:
``deconv_layers.{0,3}`` ConvTranspose 4×4 stride 2 padding 1 without bias (weight (in, out, 4, 4)),
``deconv_layers.{1,4}`` BatchNorm (eval, eps 1e-5), ReLU after each, and ``final_layer`` 1×1 conv to 17
heatmaps. Input (B, 3, 256, 192) normalised crops → (B, 17, 64, 48) heatmaps (float32).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .heatmap import merge_flip
from .vit import CheckpointError, ViT, ViTDims, autocast_for, load_strict, read_state_dict

__all__ = ["IGNORED", "HeadDims", "ViTPose", "heatmaps_flip_test", "load_vitpose"]

#: (key regex, reason) of checkpoint keys that are deliberately not loaded
IGNORED: tuple[tuple[str, str], ...] = (
    (r"backbone\.cls_token$", "class token of the pre-training; ViTPose's forward never uses one"),
    (r"associate_keypoint_heads\.", "heads of the other datasets of multi-task training; COCO-17 only"),
)


@dataclass(frozen=True)
class HeadDims:
    in_channels: int
    deconv_filters: tuple[int, int]
    num_joints: int

    @classmethod
    def from_state_dict(cls, sd: dict[str, torch.Tensor], prefix: str = "keypoint_head.") -> HeadDims:
        w0, w3 = sd[prefix + "deconv_layers.0.weight"], sd[prefix + "deconv_layers.3.weight"]
        return cls(w0.shape[0], (w0.shape[1], w3.shape[1]), sd[prefix + "final_layer.weight"].shape[0])


class HeatmapHead(nn.Module):
    """2 × [ConvTranspose 4×4 s2 (no bias), BatchNorm, ReLU] + 1×1 conv; upsamples the 16×12 grid 4×."""

    def __init__(self, dims: HeadDims):
        super().__init__()
        layers, ch = [], dims.in_channels
        for planes in dims.deconv_filters:
            layers += [
                nn.ConvTranspose2d(ch, planes, kernel_size=4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(planes),
                nn.ReLU(inplace=True),
            ]
            ch = planes
        self.deconv_layers = nn.Sequential(*layers)
        self.final_layer = nn.Conv2d(ch, dims.num_joints, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_layer(self.deconv_layers(x))


class ViTPose(nn.Module):
    """``imgs`` (B, 3, 256, 192) → ``heatmaps`` (B, 17, 64, 48) float32 (the GEM ONNX export's signature).

    ``bf16``: run under bf16 autocast when the input is on CUDA (fp32 otherwise and on CPU).
    """

    def __init__(self, vit: ViTDims, head: HeadDims, bf16: bool = False):
        super().__init__()
        self.backbone = ViT(vit)
        self.keypoint_head = HeatmapHead(head)
        self.bf16 = bf16

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        with autocast_for(imgs, self.bf16):
            return self.keypoint_head(self.backbone(imgs)).float()


def heatmaps_flip_test(model, imgs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flip test in one batch of 2B: returns (average, normal, flipped-back) heatmaps, each (B, 17, 64, 48).

    ``model`` is anything mapping (B, 3, 256, 192) crops to heatmaps: :class:`ViTPose` or an ONNX runner.
    """
    b = imgs.shape[0]
    both = model(torch.cat([imgs, imgs.flip(-1)], 0))
    normal, flipped = both[:b], both[b:]
    avg, back = merge_flip(normal, flipped)
    return avg, normal, back


def load_vitpose(
    path: str | Path,
    device: torch.device | str = "cpu",
    *,
    num_heads: int | None = None,
    bf16: bool = False,
) -> ViTPose:
    """Strictly load an mmpose-0.x ViTPose checkpoint (``vitpose-h-multi-coco.pth`` or a reduced one).

    ``num_heads``: attention heads of the backbone (not recorded in the file; default ViT-H's 16, required
    for other widths). Raises :class:`models.vit.CheckpointError` for a missing, truncated or wrong file, a
    missing or mis-shaped weight, or any key that is neither used nor in :data:`IGNORED`.
    """
    sd = read_state_dict(path)
    try:
        vit, head = ViTDims.from_state_dict(sd, num_heads), HeadDims.from_state_dict(sd)
    except KeyError as e:
        raise CheckpointError(f"{path}: not a ViTPose checkpoint: key {e} missing") from None
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    with torch.device("meta"):
        model = ViTPose(vit, head, bf16=bf16)
    return load_strict(model, sd, IGNORED, str(path), device)
