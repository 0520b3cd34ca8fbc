"""Person crops for ViTPose and HMR2, bit-exact with GEM's demo, in torch (CPU or GPU).

A box ``bbx_xys = (cx, cy, s)`` is a square of side ``s``. The reference maps its top-left corner, top-right
corner and centre (as float32) to crop pixels (0, 0), (255, 0), (127.5, 127.5) with
``cv2.getAffineTransform`` and cuts a 256×256 crop with ``cv2.warpAffine(INTER_LINEAR)`` (constant-0 border);
ViTPose keeps columns 32..223, HMR2 the whole crop (its model drops the columns itself). HMR2 first blurs the
frame (``cv2.GaussianBlur`` 5×5, σ = (d−1)/2, reflect-101 border) when d = s/512 > 1.1.

What is reproduced exactly (found by comparing with the fixture; OpenCV ≥ 5 / the 2024 warp rewrite):

* warpAffine of uint8: the inverted matrix is rounded to float32; per output row ``float32(y·M1) + M2``
  (two roundings), per pixel ``sx = fma(M0, x, row)``; ``floor`` and fraction in float32; bilinear as
  ``fma(a, p01 − p00, p00)`` per row then ``fma(b, f1 − f0, f0)`` in float32; round half to even, saturate.
  (OpenCV ≤ 4.11 instead uses 1/32-pixel fixed point and differs by up to 3 levels.) FMAs are evaluated in
  float64 and rounded once, which equals a true FMA except in astronomically rare double-rounding cases.
* GaussianBlur of uint8 (unchanged across OpenCV versions): 8-bit fixed-point kernel (error-diffused rounding
  of the normalised Gaussian), separable integer sums, ``(v + 2^15) >> 16``. Only the window a crop reads is
  blurred (border pixels of the frame reflect as in OpenCV), so the frame is never blurred as a whole.

The 2×3 matrices themselves come from ``cv2.getAffineTransform`` (a tiny CPU solve per box) so that they match
the reference to the last bit, including its ~1e-17 round-off terms.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import cv2
import numpy as np
import torch

__all__ = [
    "Crops",
    "blur_decision",
    "crop_matrices",
    "cut_crops",
    "normalize",
    "square_boxes",
    "warp_crops",
]

# ---- ImageNet normalisation (RGB order), used by both ViTPose and HMR2 -------------------------------------
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# ---- crop geometry -----------------------------------------------------------------------------------------
CROP_SIZE = 256  # square crop side in pixels; the box's square maps onto pixels 0..255
VITPOSE_COLS = (32, 224)  # central 192 columns = the 256×192 model input
BOX_ASPECT = 192 / 256  # width / height the detector box is padded to before enlarging
# ---- HMR2 anti-alias rule (GEM reads frames at full resolution, img_ds = 1) --------------------------------
BLUR_MIN_DOWNSCALE = 1.1  # blur when d = s / 256 / 2 exceeds this
BLUR_KSIZE = 5
BLUR_FRACTION_BITS = 8  # OpenCV's uint8 Gaussian uses an 8-bit fixed-point kernel


def square_boxes(xyxy: torch.Tensor, enlarge: float = 1.2, aspect: float = BOX_ASPECT) -> torch.Tensor:
    """GEM's square box (``get_bbx_xys_from_xyxy``) from (N, 4) corner boxes, in float32 like the
    reference: box centre; pad to aspect 192:256 (too wide → taller, then too narrow → wider); ×1.2."""
    b = torch.as_tensor(xyxy, dtype=torch.float32)
    lo, hi = torch.minimum(b[:, :2], b[:, 2:]), torch.maximum(b[:, :2], b[:, 2:])
    centre = (lo + hi) / 2
    w, h = hi[:, 0] - lo[:, 0], hi[:, 1] - lo[:, 1]
    h = torch.where(w > aspect * h, w / aspect, h)
    w = torch.where(w < aspect * h, h * aspect, w)
    return torch.stack([centre[:, 0], centre[:, 1], torch.maximum(h, w) * enlarge], -1)


def crop_matrices(bbx_xys: torch.Tensor) -> torch.Tensor:
    """(N, 3) boxes → (N, 2, 3) float64 frame→crop affine matrices, exactly as the reference builds them."""
    dst = np.array([[0, 0], [CROP_SIZE - 1, 0], [CROP_SIZE / 2 - 0.5, CROP_SIZE / 2 - 0.5]], np.float32)
    out = []
    for cx, cy, s in torch.as_tensor(bbx_xys).detach().cpu().double().tolist():
        hs = s / 2
        src = np.array([[cx - hs, cy - hs], [cx + hs, cy - hs], [cx, cy]], dtype=np.float32)
        out.append(cv2.getAffineTransform(src, dst))
    return torch.from_numpy(np.stack(out)) if out else torch.zeros(0, 2, 3, dtype=torch.float64)


def blur_decision(bbx_xys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """HMR2 anti-alias rule: (d = s/256/2 as float32, d > 1.1). The comparison is done in float64 as under
    the reference's pinned numpy 1.x (numpy 2 compares in float32; they differ only at d == float32(1.1))."""
    d = torch.as_tensor(bbx_xys)[:, 2].float() / CROP_SIZE / 2.0
    return d, d.double() > BLUR_MIN_DOWNSCALE


def normalize(crops: torch.Tensor) -> torch.Tensor:
    """(N, h, w, 3) uint8 RGB → (N, 3, h, w) float32: ``(u8 / 255 − mean) / std`` in float32."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=crops.device)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=crops.device)
    return ((crops.float() / 255.0 - mean) / std).permute(0, 3, 1, 2).contiguous()


class Crops(NamedTuple):
    vitpose: torch.Tensor  # (N, 3, 256, 192) float32, ViTPose input
    hmr2: torch.Tensor | None  # (N, 3, 256, 256) float32, HMR2 input (None when not requested)
    hmr2_blurred: torch.Tensor  # (N,) bool: the HMR2 crop was cut from the blurred frame


def cut_crops(
    frames: torch.Tensor | np.ndarray,
    frame_index: torch.Tensor,
    bbx_xys: torch.Tensor,
    *,
    hmr2: bool = True,
    hmr2_blur: bool = True,
) -> Crops:
    """Both models' inputs for N (frame, box) items, warping each item once (twice only when HMR2 blurs).

    ``frames``: (F, H, W, 3) uint8 RGB on the device to work on; ``frame_index``: (N,) into ``frames``;
    ``bbx_xys``: (N, 3) float32. The crops are on the frames' device, ``hmr2_blurred`` on the boxes'.
    ``hmr2_blur=False`` skips GEM's anti-alias blur (e.g. to feed both models the very same crop).
    """
    frames = torch.as_tensor(frames)
    u8 = warp_crops(frames, frame_index, bbx_xys)
    lo, hi = VITPOSE_COLS
    vit = normalize(u8[:, :, lo:hi])
    blurred = blur_decision(bbx_xys)[1] & hmr2_blur
    if not hmr2:
        return Crops(vit, None, blurred)
    if bool(blurred.any()):
        u8 = u8.clone()
        sel = blurred.nonzero()[:, 0]
        u8[sel.to(u8.device)] = warp_crops(frames, torch.as_tensor(frame_index)[sel], bbx_xys[sel], blur=True)
    return Crops(vit, normalize(u8), blurred)


def warp_crops(
    frames: torch.Tensor,
    frame_index: torch.Tensor,
    bbx_xys: torch.Tensor,
    blur: bool = False,
    chunk: int = 32,
) -> torch.Tensor:
    """(N, 256, 256, 3) uint8 crops (``cv2.warpAffine`` replica); ``blur=True``: from the Gaussian-blurred
    frame with each box's σ = (d − 1)/2 (the caller decides which boxes; see :func:`blur_decision`)."""
    frames = torch.as_tensor(frames)
    dev = frames.device
    n = len(bbx_xys)
    out = torch.empty(n, CROP_SIZE, CROP_SIZE, 3, dtype=torch.uint8, device=dev)
    if n == 0:
        return out
    inv = _invert(crop_matrices(bbx_xys).to(dev)).float()
    fidx = torch.as_tensor(frame_index, device=dev).long()
    _, height, width, _ = frames.shape
    if not blur:
        zero = torch.zeros(n, dtype=torch.long, device=dev)
        for a in range(0, n, chunk):
            sx, sy = _source_coords(inv[a : a + chunk])
            out[a : a + chunk] = _bilinear(
                frames, fidx[a : a + chunk], zero[a : a + chunk], zero[a : a + chunk], width, height, sx, sy
            )
        return out
    d = blur_decision(bbx_xys)[0].tolist()
    if min(d) <= 1.0:
        raise ValueError("blur=True needs boxes with s > 512 (σ = (s/512 − 1)/2 > 0)")
    first = torch.zeros(1, dtype=torch.long, device=dev)
    for i in range(n):
        sx, sy = _source_coords(inv[i : i + 1])
        x0, x1 = (int(v.clamp(0, width - 1)) for v in (sx.min().floor(), sx.max().floor() + 1))
        y0, y1 = (int(v.clamp(0, height - 1)) for v in (sy.min().floor(), sy.max().floor() + 1))
        window = _blur_window(frames[fidx[i]], x0, x1, y0, y1, (d[i] - 1) / 2)
        off = torch.tensor([[x0], [y0]], device=dev)
        out[i] = _bilinear(window[None], first, off[0], off[1], width, height, sx, sy)[0]
    return out


# ---- internals ---------------------------------------------------------------------------------------------


def _fma(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """float32 a·b + c with one rounding (as a hardware FMA), via float64."""
    return (a.double() * b.double() + c.double()).float()


def _invert(m: torch.Tensor) -> torch.Tensor:
    """Inverse of (N, 2, 3) float64 affine maps, with ``cv2.invertAffineTransform``'s operation order."""
    det = m[:, 0, 0] * m[:, 1, 1] - m[:, 0, 1] * m[:, 1, 0]
    det = torch.where(det != 0, 1.0 / det, torch.zeros_like(det))
    a11, a22, a12, a21 = m[:, 1, 1] * det, m[:, 0, 0] * det, -m[:, 0, 1] * det, -m[:, 1, 0] * det
    b1 = -a11 * m[:, 0, 2] - a12 * m[:, 1, 2]
    b2 = -a21 * m[:, 0, 2] - a22 * m[:, 1, 2]
    return torch.stack([torch.stack([a11, a12, b1], -1), torch.stack([a21, a22, b2], -1)], 1)


def _source_coords(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame coordinates (N, 256, 256) float32 sampled by each crop pixel, given float32 crop→frame maps."""
    r = torch.arange(CROP_SIZE, dtype=torch.float32, device=m.device)
    row_x = r * m[:, 0, 1:2] + m[:, 0, 2:3]  # (N, rows): float32(y·M1) + M2, two roundings
    row_y = r * m[:, 1, 1:2] + m[:, 1, 2:3]
    sx = _fma(m[:, 0, 0, None, None], r[None, None, :], row_x[:, :, None])
    sy = _fma(m[:, 1, 0, None, None], r[None, None, :], row_y[:, :, None])
    return sx, sy


def _bilinear(src, sidx, ox, oy, width, height, sx, sy) -> torch.Tensor:
    """Bilinear uint8 sampling with a constant-0 border outside the (width, height) frame. ``src``
    (S, h, w, 3) holds the frames, or a window of one whose top-left frame pixel is (ox, oy) per item."""
    _, h, w, _ = src.shape
    fx, fy = sx.floor(), sy.floor()
    ix, iy = fx.long(), fy.long()
    flat = src.reshape(-1, 3)
    base = (sidx * h)[:, None, None]

    def pixel(dy: int, dx: int) -> torch.Tensor:
        x, y = ix + dx, iy + dy
        inside = (x >= 0) & (x < width) & (y >= 0) & (y < height)
        lx = (x - ox[:, None, None]).clamp(0, w - 1)
        ly = (y - oy[:, None, None]).clamp(0, h - 1)
        return flat[(base + ly) * w + lx].float() * inside[..., None]

    a, b = (sx - fx)[..., None], (sy - fy)[..., None]
    p00, p01, p10, p11 = pixel(0, 0), pixel(0, 1), pixel(1, 0), pixel(1, 1)
    top, bottom = _fma(a, p01 - p00, p00), _fma(a, p11 - p10, p10)
    return _fma(b, bottom - top, top).round().clamp(0, 255).to(torch.uint8)


def _gaussian_kernel_q8(sigma: float) -> list[int]:
    """OpenCV's 5-tap uint8 Gaussian kernel: normalised Gaussian, then 8-bit fixed point with the rounding
    error carried from the outer taps inwards; the centre tap takes the remainder so the taps sum to 256."""
    n, half = BLUR_KSIZE, BLUR_KSIZE // 2
    scale = -0.125 / (sigma * sigma)  # = -1 / (2 σ²) for offsets measured in half-pixels (x = 2·i)
    outer = [math.exp((x * x) * scale) for x in range(1 - n, 0, 2)]
    norm = 1.0 / (2 * sum(outer) + 1.0)
    unit, err, taps = 1 << BLUR_FRACTION_BITS, 0.0, [0] * n
    for i, v in enumerate(outer):
        adj = v * norm * unit + err
        taps[i] = taps[n - 1 - i] = round(adj)  # half to even, like cvRound
        err = adj - taps[i]
    taps[half] = unit - 2 * sum(taps[:half])
    return taps


def _reflect101(idx: torch.Tensor, size: int) -> torch.Tensor:
    if size == 1:
        return torch.zeros_like(idx)
    period = 2 * (size - 1)
    idx = idx.remainder(period)
    return torch.where(idx < size, idx, period - idx)


def _blur_window(frame: torch.Tensor, x0: int, x1: int, y0: int, y1: int, sigma: float) -> torch.Tensor:
    """Pixels [y0..y1] × [x0..x1] of ``cv2.GaussianBlur(frame, (5, 5), sigma)`` (uint8, reflect-101)."""
    height, width, _ = frame.shape
    half = BLUR_KSIZE // 2
    dev = frame.device
    rows = _reflect101(torch.arange(y0 - half, y1 + half + 1, device=dev), height)
    cols = _reflect101(torch.arange(x0 - half, x1 + half + 1, device=dev), width)
    win = frame[rows][:, cols].to(torch.int32)
    k = _gaussian_kernel_q8(sigma)
    nx, ny = x1 - x0 + 1, y1 - y0 + 1
    horiz = sum(k[i] * win[:, i : i + nx] for i in range(BLUR_KSIZE))
    both = sum(k[j] * horiz[j : j + ny] for j in range(BLUR_KSIZE))
    return ((both + (1 << 15)) >> 16).clamp(0, 255).to(torch.uint8)
