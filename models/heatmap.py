"""ViTPose heatmaps → COCO-17 keypoints in full-image pixels, decoded like GEM's demo.

* Flip test: the flipped crop's heatmaps are flipped back along the width axis and the left/right channels
  swapped (:data:`COCO17_FLIP_PAIRS`); **no** one-pixel shift; the two maps are averaged.
* Decode per joint: argmax of the flattened 64×48 map (row-major, first maximum on ties); then a quarter
  pixel toward the larger neighbour on each axis separately (``sign`` of the neighbour difference, 0 on a
  tie), only for 1 < x < W−1 and 1 < y < H−1.
* To the image, in float32 and in this order: ``x = px / W · s · 0.75 + (cx − s · 0.75 / 2)``,
  ``y = py / H · s + (cy − s / 2)``. (Not the exact inverse of the crop — a heatmap pixel is taken as s/64
  although the crop maps s to 255 pixels, and no half-pixel offset — but it is what GEM's inputs were made
  with, so it is reproduced as is.)
* Confidence, ``confidence="sigmoid"`` (reference): ``1 / (1 + exp(−max))`` of the raw maximum, float32 (an
  overflowing exp gives 0). GEM counts a joint as visible when confidence > 0.5, i.e. any positive raw peak.
  ``confidence="raw"``: the raw maximum itself (GVHMR / mmpose convention, where > 0.5 is a real threshold).

Everything is vectorised torch and runs on the heatmaps' device.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch

__all__ = ["COCO17_FLIP_PAIRS", "Decoded", "decode_heatmaps", "decode_details", "flip_back", "merge_flip"]

# ---- COCO-17 left/right pairs (eyes, ears, shoulders, elbows, wrists, hips, knees, ankles); 0 = nose -------
COCO17_FLIP_PAIRS = ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16))
# ---- crop window aspect of the 256×192 model input (width / height) ----------------------------------------
WINDOW_ASPECT = 192.0 / 256.0

Confidence = Literal["sigmoid", "raw"]


def _flip_permutation(k: int) -> list[int]:
    perm = list(range(k))
    for a, b in COCO17_FLIP_PAIRS:
        perm[a], perm[b] = b, a
    return perm


def flip_back(heatmaps: torch.Tensor) -> torch.Tensor:
    """Heatmaps of a horizontally flipped crop (N, 17, H, W) → the unflipped frame: flip W, swap pairs."""
    return heatmaps.flip(-1)[:, _flip_permutation(heatmaps.shape[1])]


def merge_flip(normal: torch.Tensor, flipped: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(average, flipped-back) of the normal and the raw flipped-input heatmaps: ``(normal + back) * 0.5``."""
    back = flip_back(flipped)
    return (normal + back) * 0.5, back


class Decoded(NamedTuple):
    """Intermediate values of the decode (the fixture's ``decode/*`` keys) and the result."""

    argmax: torch.Tensor  # (N, K) int64 flat index y * W + x
    hm_xy: torch.Tensor  # (N, K, 2) float32 heatmap coordinates after the quarter-pixel step
    maxval: torch.Tensor  # (N, K) float32 raw maximum
    kp2d: torch.Tensor  # (N, K, 3) float32 (x, y, confidence) in full-image pixels


def decode_details(
    heatmaps: torch.Tensor, bbx_xys: torch.Tensor, confidence: Confidence = "sigmoid"
) -> Decoded:
    """Decode (N, K, H, W) heatmaps of crops cut around ``bbx_xys`` (N, 3) = (cx, cy, s); see module doc."""
    if confidence not in ("sigmoid", "raw"):
        raise ValueError(f"confidence must be 'sigmoid' or 'raw', got {confidence!r}")
    n, k, h, w = heatmaps.shape
    hm = heatmaps.float()
    flat = hm.reshape(n, k, h * w)
    maxval = flat.amax(-1)
    idx = flat.argmax(-1)  # documented to return the first maximum on ties, as numpy's argmax
    ix, iy = idx % w, idx // w

    def at(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return flat.gather(-1, (y.clamp(0, h - 1) * w + x.clamp(0, w - 1))[..., None])[..., 0]

    step_x = torch.sign(at(iy, ix + 1) - at(iy, ix - 1)) * 0.25
    step_y = torch.sign(at(iy + 1, ix) - at(iy - 1, ix)) * 0.25
    px = ix.float() + torch.where((ix > 1) & (ix < w - 1), step_x, 0.0)
    py = iy.float() + torch.where((iy > 1) & (iy < h - 1), step_y, 0.0)

    box = bbx_xys.to(device=hm.device, dtype=torch.float32)
    cx, cy, s = box[:, 0:1], box[:, 1:2], box[:, 2:3]
    x = px / w * s * WINDOW_ASPECT + (cx - s * WINDOW_ASPECT / 2)
    y = py / h * s + (cy - s / 2)
    conf = 1 / (1 + torch.exp(-maxval)) if confidence == "sigmoid" else maxval
    return Decoded(idx, torch.stack([px, py], -1), maxval, torch.stack([x, y, conf], -1))


def decode_heatmaps(
    heatmaps: torch.Tensor, bbx_xys: torch.Tensor, confidence: Confidence = "sigmoid"
) -> torch.Tensor:
    """(N, 17, 64, 48) heatmaps + (N, 3) boxes → (N, 17, 3) float32 (x, y, confidence), same device."""
    return decode_details(heatmaps, bbx_xys, confidence).kp2d
