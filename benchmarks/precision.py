"""bf16 versus fp32 deviations of ViTPose, HMR2 and GEM, to choose each network's default precision.

    python benchmarks/precision.py --device cuda --json                       # GPU: both sets, 120 frames
    python benchmarks/precision.py --device cpu --sizes reduced               # CPU rehearsal, fixtures
    python benchmarks/precision.py --device cpu --sizes full --crops 2 --frames 24 --steps 5

Every network runs twice on the same inputs with the same weights, once in float32 and once in bf16, and the
two outputs are compared where the pipeline consumes them:

* ViTPose (keypoints stage): flip test as the stage runs it (``models.vitpose.heatmaps_flip_test``: crops +
  mirrored crops in one batch, merged heatmaps), decoded by ``models.heatmap.decode_heatmaps`` with the crops'
  boxes ``bbx_xys`` of a 1920×1080 picture, so distances are full-image pixels. Figures: Euclidean |Δ(x, y)|
  per keypoint (max, mean over crops × 17), the fraction of keypoints whose heatmap argmax moved
  (``decode_details(...).argmax``), the largest confidence change and the largest heatmap change (next to the
  largest fp32 heatmap value, for scale).
* HMR2 (features stage): ``f_imgseq`` (B, 1024): cosine similarity per crop (min, mean) and the largest
  absolute element difference (next to the largest fp32 magnitude).
* GEM (estimate + postprocess stages), one person over the whole clip: ``GemNetwork.estimate`` with the
  estimate stage's settings (DDIM ``--steps`` steps (default 50), η = 0, initial noise from the person's own
  CPU generator seeded 0 as ``stages.estimate`` draws it; and the single-pass ``regression`` mode), then
  ``models.gem.codec.decode_all`` on the CPU as the postprocess stage runs it (contact correction + foot IK
  with the body model), then SMPL-X forward kinematics of the 22 body joints (``models.gem.skeleton.fk`` of
  the decoded ``pred/global/*`` with the skeleton of ``--body-model``): **world joints** in GEM's world frame
  (before the clip-frame placement, which is a rigid move per person). The engine does not return joints, so
  they always come from this FK. Figures in mm: |Δ| per joint (max, mean over frames × 22) after the
  post-process (``world_joints_mm``) and without it (raw decode: ``world_joints_raw_mm``, so the effect of
  flipped contact labels on the IK can be told apart), pelvis-relative joints of the raw decode
  (``pose_mm``), the root translation; plus the largest |Δ| of ``pred_x`` / ``pred_cam`` and the fraction of
  contact labels (logit > 0) that flipped. Without a body model only the root translation is reported.

Model sets (``--sizes``):

* ``full``: the released architectures with random weights, built by the other benchmarks' code:
  ``benchmarks/perception.py`` ``build`` (ViTPose-H, HMR2 with ViT-H, weights N(0, 0.02²), norms at
  identity) and ``benchmarks/gem_denoiser.py`` ``FULL`` (GEM D 1024, 16 + 16 blocks, 8 heads). GEM's own
  initialisation leaves the residual gates at zero (every transformer block an identity) and the sinusoidal
  table empty, so here its weights are redrawn as the gem_parity fixture's were (Linear weights
  N(0, 1/fan_in), biases and LayerNorm shifts N(0, 0.1²), LayerNorm scales 1 + N(0, 0.1²),
  ``learned_pos_params`` N(0, 1), the fixture's head adjustments, the closed-form sinusoidal table) with the
  gates N(0, σ²), σ = 0.5·√(2/16), so that the residual stream grows over the 16 layers as over the
  fixture's 2 with σ = 0.5.
* ``reduced``: the fixture checkpoints with random weights (``perception_parity/vitpose_reduced.pth`` and
  ``hmr2_reduced.ckpt``: 4 heads, decoder 4 heads; ``gem_parity/gem_smpl_reduced.ckpt``: 4 heads), loaded
  by ``load_vitpose`` / ``load_hmr2`` / ``load_gem``. Skipped with the reason when the files are missing.

Random weights are stand-ins: they show how bf16 rounding propagates through these depths and widths, not
the trained models' sensitivity (a trained ViTPose has sharp heatmap peaks, random ones are flat, so the
argmax figure is pessimistic). Rerun with the real weights when deciding for good.

Inputs (seeded): ``--crops`` people (default 32 on CUDA, 4 on CPU) drawn as filled stick figures (head,
torso, limbs in random poses, 150 to 900 px tall, log-uniform, some cut by the border) on textured
1920×1080 frames, four per frame; GEM's square boxes (``models.crops.square_boxes``) around them; crops cut
as the stages cut them (``models.crops.cut_crops``, HMR2's anti-alias blur for boxes over 563 px).
GEM ``full``: the denoiser benchmark's ``synthetic_inputs`` for ``--frames`` frames (default 120 on CUDA,
30 on CPU); GEM ``reduced``: the inputs of fixture scenario ``--scenario`` (default S2: 150 frames, panning
camera, occlusions, masked frames, longer than the 120-frame attention window).

Precision: TF32 is switched off first (``torch.backends.cuda.matmul.allow_tf32 = False``,
``torch.backends.cudnn.allow_tf32 = False``; both printed). bf16 on CUDA is the models' own flag (ViTPose /
HMR2 ``bf16=True``, ``GemNetwork.estimate(bf16=True)``), i.e. CUDA bf16 autocast of exactly the regions the
stages autocast. On a CPU those flags do nothing (ViTPose/HMR2) or are refused (GEM), so there bf16 means
``torch.autocast("cpu", dtype=torch.bfloat16)`` around the same regions: the ViTPose/HMR2 forward, GEM's
denoiser forward (not the condition embedders, the sampler arithmetic or the decode). CPU figures are a
rehearsal: the kernels and their accumulation differ from the GPU's.

Output: one line per measurement; with ``--json`` the last stdout line is one JSON object with every figure
(``environment``, ``settings``, ``results[size][network]``). Timings are of single calls (no warm-up).

Dependencies: torch, numpy (1 or 2), SciPy, OpenCV, smplx, and timm for ViTPose/HMR2 (``models/vit.py``
builds on timm's ``Block``; without it those two are reported as skipped and GEM still runs); nothing from
``stages/`` (importing that package imports every stage, including the video decode and the exporters),
``flows/``, bpy, ultralytics, pydantic or ffmpeg.
CPU rehearsal on the 2-core development machine: ``--sizes reduced`` about 20 s, ``--sizes full --crops 2
--frames 24 --steps 5`` about a minute (building the networks included).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import math
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import cv2  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from models.crops import cut_crops, square_boxes  # noqa: E402
from models.gem import codec  # noqa: E402
from models.gem.checkpoint import load_gem  # noqa: E402
from models.gem.dims import GemDims  # noqa: E402
from models.gem.network import GemNetwork  # noqa: E402
from models.gem.skeleton import Skeleton, fk  # noqa: E402
from models.heatmap import decode_details, decode_heatmaps  # noqa: E402
from tests.shared import fixture_dir  # noqa: E402

SEED = 0
IMAGE_WH = (1920, 1080)
PEOPLE_PER_FRAME = 4
REDUCED_HEADS = {"vitpose": 4, "hmr2": 4, "hmr2_decoder": 4, "gem": 4}
#: the fixture recipe's residual-gate std (2 layers), scaled by sqrt(2 / layers) for deeper networks
FIXTURE_GATE_STD, FIXTURE_LAYERS = 0.5, 2


def _sibling(name: str) -> ModuleType:
    """Another benchmark script as a module (``benchmarks/`` is not a package)."""
    key = f"_genmocap_benchmark_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, Path(__file__).with_name(f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[key]
            raise
    return sys.modules[key]


# ---- precision ---------------------------------------------------------------------------------------------


def precision_flags() -> dict:
    """TF32 off for matmuls and cuDNN (read back for the record)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    flags = {
        "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
    for name, obj in (("cuda.matmul", torch.backends.cuda.matmul), ("cudnn", torch.backends.cudnn)):
        with contextlib.suppress(AttributeError, RuntimeError):
            flags[f"{name}.fp32_precision"] = obj.fp32_precision  # torch >= 2.9
    return flags


def bf16_description(device: torch.device) -> str:
    if device.type == "cuda":
        return "the models' own bf16 flag (CUDA bf16 autocast of the regions the stages autocast)"
    return (
        "torch.autocast('cpu', dtype=torch.bfloat16) around the same regions (ViTPose/HMR2 forward, "
        "GEM denoiser forward); the models' bf16 flag is CUDA-only"
    )


@contextlib.contextmanager
def image_model(model: nn.Module, bf16: bool, device: torch.device) -> Iterator[Callable]:
    """ViTPose/HMR2 as the stage calls it, in fp32 or bf16 (its own flag on CUDA, CPU autocast otherwise)."""
    if not bf16:
        yield model
    elif device.type == "cuda":
        model.bf16 = True
        try:
            yield model
        finally:
            model.bf16 = False
    else:

        def call(x: torch.Tensor) -> torch.Tensor:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return model(x).float()

        yield call


@contextlib.contextmanager
def gem_cpu_bf16(net: GemNetwork) -> Iterator[None]:
    """CPU bf16 autocast around the denoiser forward: the region ``estimate(bf16=True)`` autocasts on CUDA."""
    forward = net.denoiser.forward

    def autocast_forward(*args, **kwargs):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return forward(*args, **kwargs)

    net.denoiser.forward = autocast_forward
    try:
        yield
    finally:
        del net.denoiser.forward


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---- inputs ------------------------------------------------------------------------------------------------


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Textured RGB frame: smooth colour field, two gratings, translucent shapes, pixel noise (uint8)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.empty((h, w, 3), np.float32)
    for c in range(3):
        a, b, p = rng.uniform(0.5, 3.0), rng.uniform(0.5, 3.0), rng.uniform(0, 2 * np.pi)
        img[..., c] = 110 + 50 * np.sin(a * x / w * np.pi + p) * np.cos(b * y / h * np.pi)
    for _ in range(2):
        ang, period = rng.uniform(0, np.pi), rng.uniform(8, 40)
        img += 12 * np.sin((x * np.cos(ang) + y * np.sin(ang)) * 2 * np.pi / period)[..., None]
    out = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(12):
        layer = out.copy()
        color = tuple(int(v) for v in rng.integers(0, 256, 3))
        cx, cy, r = int(rng.integers(0, w)), int(rng.integers(0, h)), int(rng.integers(20, 200))
        if rng.random() < 0.5:
            cv2.circle(layer, (cx, cy), r, color, -1, cv2.LINE_AA)
        else:
            cv2.rectangle(layer, (cx - r, cy - r // 2), (cx + r, cy + r // 2), color, -1)
        out = cv2.addWeighted(layer, 0.6, out, 0.4, 0)
    noise = rng.integers(-6, 7, out.shape)
    return np.clip(out.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def _draw_person(img: np.ndarray, rng: np.random.Generator, cx: float, top: float, height: float) -> list:
    """A filled stick figure in a random pose; returns its (x1, y1, x2, y2) extent (may leave the frame)."""
    u = height / 8.0  # head height
    skin = tuple(int(v) for v in rng.integers(90, 230, 3))
    shirt, trousers = (tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(2))
    neck, pelvis = np.array([cx, top + 1.2 * u]), np.array([cx + rng.uniform(-0.3, 0.3) * u, top + 4.0 * u])
    pts = [np.array([cx, top])]
    shoulders = [neck + [s * 0.95 * u, 0.3 * u] for s in (-1, 1)]
    hips = [pelvis + [s * 0.5 * u, 0.0] for s in (-1, 1)]
    torso = np.array([shoulders[0], shoulders[1], hips[1], hips[0]]).round().astype(np.int32)
    cv2.fillConvexPoly(img, torso, shirt, cv2.LINE_AA)
    pts += [*torso.astype(float)]

    def limb(
        start: np.ndarray, lengths: tuple[float, float], base: float, color: tuple, width: float
    ) -> None:
        a1 = base + rng.uniform(-0.9, 0.9)
        a2 = a1 + rng.uniform(-1.2, 1.2)
        mid = start + lengths[0] * u * np.array([np.sin(a1), np.cos(a1)])
        end = mid + lengths[1] * u * np.array([np.sin(a2), np.cos(a2)])
        t = max(1, int(round(width * u)))
        for p, q in ((start, mid), (mid, end)):
            cv2.line(img, tuple(int(v) for v in p), tuple(int(v) for v in q), color, t, cv2.LINE_AA)
        cv2.circle(img, tuple(int(v) for v in end), max(1, t // 2 + 1), skin, -1, cv2.LINE_AA)
        pts.extend([mid, end])

    for s, sh in zip((-1, 1), shoulders, strict=True):
        limb(sh, (1.5, 1.3), s * 0.3, shirt, 0.35)
    for s, hp in zip((-1, 1), hips, strict=True):
        limb(hp, (2.0, 2.0), s * 0.15, trousers, 0.45)
    cv2.line(img, tuple(int(v) for v in neck), tuple(int(v) for v in neck - [0, 0.4 * u]), skin, int(0.3 * u))
    cv2.circle(img, (int(cx), int(top + 0.5 * u)), int(0.45 * u), skin, -1, cv2.LINE_AA)
    xy = np.array(pts)
    pad = 0.3 * u
    return [xy[:, 0].min() - pad, top, xy[:, 0].max() + pad, xy[:, 1].max() + pad]


def person_frames(n: int, seed: int = SEED) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """``n`` people, 4 per 1920×1080 frame: (frames (F, H, W, 3) uint8, frame_index (n,), bbx_xys (n, 3))."""
    rng = np.random.default_rng(seed)
    w, h = IMAGE_WH
    frames, index, xyxy = [], [], []
    for f in range(math.ceil(n / PEOPLE_PER_FRAME)):
        img = _background(rng, w, h)
        count = min(PEOPLE_PER_FRAME, n - f * PEOPLE_PER_FRAME)
        for k in range(count):
            height = float(np.exp(rng.uniform(np.log(150), np.log(900))))
            cx = (k + 0.5) * w / count + rng.uniform(-0.15, 0.15) * w / count
            top = rng.uniform(-0.1 * height, h - 0.8 * height)  # some cut by the top or bottom border
            xyxy.append(_draw_person(img, rng, cx, top, height))
            index.append(f)
        frames.append(img)
    boxes = square_boxes(torch.tensor(xyxy, dtype=torch.float32))
    return np.stack(frames), torch.tensor(index), boxes


def fixture_gem_inputs(path: Path) -> dict[str, torch.Tensor]:
    """The (L, ...) model inputs of a gem_parity scenario file."""
    data = torch.load(path, weights_only=True)
    keys = ("kp2d", "bbx_xys", "K_fullimg", "cam_angvel", "f_imgseq", "has_img_mask", "has_2d_mask")
    return {k: data[f"input/{k}"] for k in (*keys, "has_cam_mask")}


# ---- models ------------------------------------------------------------------------------------------------


def _sinusoid(n: int, d: int) -> torch.Tensor:
    """The closed-form interleaved sin/cos table GEM's checkpoints hold (``sequence_pos_encoder.pe``)."""
    position = torch.arange(n, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    return torch.stack([torch.sin(position * freq), torch.cos(position * freq)], dim=-1).flatten(1)


def randomize_gem(net: GemNetwork, seed: int = SEED) -> GemNetwork:
    """Redraw every weight as the gem_parity fixture did (see the module docstring), gates scaled by depth."""
    g = torch.Generator().manual_seed(seed)
    norms = {
        id(p): kind for m in net.modules() if isinstance(m, nn.LayerNorm) for kind, p in m.named_parameters()
    }
    gate_std = FIXTURE_GATE_STD * math.sqrt(FIXTURE_LAYERS / net.dims.num_layers)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.rsplit(".", 1)[-1].startswith("gate_"):
                p.normal_(0.0, gate_std, generator=g)
            elif name.endswith("learned_pos_params"):
                p.normal_(0.0, 1.0, generator=g)
            elif id(p) in norms:
                p.normal_(1.0 if norms[id(p)] == "weight" else 0.0, 0.1, generator=g)
            elif p.ndim >= 2:
                p.normal_(0.0, 1.0 / math.sqrt(p[0].numel()), generator=g)
            else:
                p.normal_(0.0, 0.1, generator=g)
        den = net.denoiser
        den.pos_table.copy_(_sinusoid(*den.pos_table.shape))
        fc2 = den.final_layer.fc2
        fc2.weight.mul_(0.5)
        fc2.bias.mul_(0.5)
        fc2.weight[148:151].mul_(0.1)  # root velocity channels
        fc2.bias[148:151].mul_(0.1)
        den.pred_cam_head.fc2.weight[0].mul_(4.0)
        den.pred_cam_head.fc2.bias[0] = -3.0
        den.static_conf_head.fc2.bias.sub_(0.4)
    return net


def perception_builders(
    size: str, device: torch.device, fixtures: Path
) -> dict[str, Callable[[], nn.Module]]:
    """Builders of ViTPose and HMR2 (called one at a time, to hold one network in memory).

    Raises ImportError where the ViT cannot be imported (``models/vit.py`` builds on timm's ``Block``)."""
    from models.hmr2 import load_hmr2
    from models.vitpose import load_vitpose

    if size == "full":
        perception = _sibling("perception")
        return {
            "vitpose": lambda: perception.build("keypoints", device, bf16=False),
            "hmr2": lambda: perception.build("features", device, bf16=False),
        }
    pp, h = fixtures / "perception_parity", REDUCED_HEADS
    return {
        "vitpose": lambda: load_vitpose(pp / "vitpose_reduced.pth", device, num_heads=h["vitpose"]),
        "hmr2": lambda: load_hmr2(
            pp / "hmr2_reduced.ckpt", device, num_heads=h["hmr2"], decoder_heads=h["hmr2_decoder"]
        ),
    }


def build_gem(size: str, device: torch.device, fixtures: Path) -> GemNetwork:
    """GEM of a set: the reduced fixture checkpoint, or the full architecture with redrawn random weights."""
    if size == "reduced":
        return load_gem(
            fixtures / "gem_parity" / "gem_smpl_reduced.ckpt", device, num_heads=REDUCED_HEADS["gem"]
        )
    with torch.device("meta"):
        net = GemNetwork(GemDims(**_sibling("gem_denoiser").FULL))
    return randomize_gem(net.to_empty(device="cpu")).eval().to(device)


def reduced_missing(fixtures: Path, scenario: str) -> list[str]:
    need = [
        fixtures / "perception_parity" / "vitpose_reduced.pth",
        fixtures / "perception_parity" / "hmr2_reduced.ckpt",
        fixtures / "gem_parity" / "gem_smpl_reduced.ckpt",
        fixtures / "gem_parity" / f"{scenario}.pt",
    ]
    return [str(p) for p in need if not p.is_file()]


# ---- measurements ------------------------------------------------------------------------------------------


def _stats(x: torch.Tensor, digits: int = 4) -> dict:
    x = x.double().flatten()
    return {"max": round(float(x.max()), digits), "mean": round(float(x.mean()), digits)}


def _timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    """(fn(), its wall seconds), CUDA synchronised around the call."""
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return out, round(time.perf_counter() - t0, 3)


def measure_vitpose(model: nn.Module, crops: torch.Tensor, boxes: torch.Tensor, device: torch.device) -> dict:
    from models.vitpose import heatmaps_flip_test

    res, seconds = {}, {}
    for prec in ("fp32", "bf16"):
        with image_model(model, prec == "bf16", device) as call, torch.inference_mode():

            def run(call=call):
                avg = heatmaps_flip_test(call, crops)[0].float()
                return avg, decode_heatmaps(avg, boxes.to(avg.device))

            (avg, kp), seconds[prec] = _timed(run, device)
            res[prec] = (avg.cpu(), kp.cpu(), decode_details(avg, boxes.to(avg.device)).argmax.cpu())
    (h32, k32, a32), (h16, k16, a16) = res["fp32"], res["bf16"]
    dist = (k16[..., :2] - k32[..., :2]).norm(dim=-1)
    return {
        "keypoints": int(dist.numel()),
        "kp_px": _stats(dist),
        "kp_px_median": round(float(dist.median()), 4),
        "argmax_moved_fraction": round(float((a16 != a32).double().mean()), 4),
        "conf_max_abs": float(f"{(k16[..., 2] - k32[..., 2]).abs().max():.3g}"),
        "heatmap_max_abs": float(f"{(h16 - h32).abs().max():.3g}"),
        "heatmap_fp32_abs_max": float(f"{h32.abs().max():.3g}"),
        "seconds": seconds,
    }


def measure_hmr2(model: nn.Module, crops: torch.Tensor, device: torch.device) -> dict:
    out, seconds = {}, {}
    for prec in ("fp32", "bf16"):
        with image_model(model, prec == "bf16", device) as call, torch.inference_mode():
            f, seconds[prec] = _timed(lambda call=call: call(crops).float(), device)
            out[prec] = f.cpu().double()
    f32, f16 = out["fp32"], out["bf16"]
    cos = torch.nn.functional.cosine_similarity(f16, f32, dim=-1)
    return {
        "crops": int(f32.shape[0]),
        "cosine": {"min": round(float(cos.min()), 6), "mean": round(float(cos.mean()), 6)},
        "max_abs": float(f"{(f16 - f32).abs().max():.3g}"),
        "fp32_abs_max": float(f"{f32.abs().max():.3g}"),
        "seconds": seconds,
    }


def run_gem(
    net: GemNetwork, inputs: dict[str, torch.Tensor], mode: str, steps: int, bf16: bool, device: torch.device
) -> dict[str, torch.Tensor]:
    """One person through ``estimate`` as ``stages.estimate.estimate_people`` calls it (B = 1, person 0)."""
    L = inputs["bbx_xys"].shape[0]
    batch = {k: v[None].to(device) for k, v in inputs.items()}
    batch["length"] = torch.tensor([L], device=device)
    # stages.estimate._noise(seed + person_id, L): drawn on the CPU from the person's own generator
    noise = torch.randn(L, codec.MOTION_DIM, generator=torch.Generator().manual_seed(SEED))[None]
    cpu_bf16 = bf16 and device.type != "cuda"
    with gem_cpu_bf16(net) if cpu_bf16 else contextlib.nullcontext():
        out = net.estimate(
            batch,
            mode=mode,
            steps=steps,
            noise=noise if mode == "ddim" else "zero",
            bf16=bf16 and device.type == "cuda",
        )
    return {k: out[k][:, :L].float().cpu() for k in ("pred_x", "pred_cam", "static_conf_logits")}


def world_joints(
    out: dict[str, torch.Tensor], inputs: dict[str, torch.Tensor], skeleton: Skeleton | None
) -> dict[str, torch.Tensor]:
    """Decode on the CPU as the postprocess stage does; FK of the world pose (metres, (1, L, 22, 3))."""
    dec_in = {k: inputs[k].cpu() for k in ("bbx_xys", "K_fullimg", "cam_angvel")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no body model" is reported in the results instead
        raw = codec.decode_all(out, dec_in, None, postprocess=False)
        result = {"root": raw["pred/global/transl"]}
        if skeleton is None:
            return result
        pp = codec.decode_all(out, dec_in, skeleton, postprocess=True)

    def joints(pred: dict[str, torch.Tensor]) -> torch.Tensor:
        g = "pred/global/"
        return fk(
            skeleton, pred[g + "body_pose"], pred[g + "betas"], pred[g + "global_orient"], pred[g + "transl"]
        )["joints"]

    result["joints"], result["joints_raw"] = joints(pp), joints(raw)
    result["pose"] = result["joints_raw"] - result["joints_raw"][..., :1, :]
    return result


def measure_gem(
    net: GemNetwork,
    inputs: dict[str, torch.Tensor],
    mode: str,
    steps: int,
    skeleton: Skeleton | None,
    device: torch.device,
) -> dict:
    outs, seconds = {}, {}
    for prec in ("fp32", "bf16"):
        outs[prec], seconds[prec] = _timed(
            lambda prec=prec: run_gem(net, inputs, mode, steps, prec == "bf16", device), device
        )
    o32, o16 = outs["fp32"], outs["bf16"]
    w32, w16 = world_joints(o32, inputs, skeleton), world_joints(o16, inputs, skeleton)
    res: dict = {"mode": mode, "steps": steps if mode == "ddim" else 1, "frames": int(o32["pred_x"].shape[1])}
    for key, name in (
        ("joints", "world_joints_mm"),
        ("joints_raw", "world_joints_raw_mm"),
        ("pose", "pose_mm"),
    ):
        if key in w32:
            res[name] = _stats((w16[key] - w32[key]).norm(dim=-1) * 1000.0, 2)
    res["root_transl_mm"] = _stats((w16["root"] - w32["root"]).norm(dim=-1) * 1000.0, 2)
    # scale of the fp32 world trajectory: the farthest the root gets from its first position
    res["root_range_fp32_m"] = round(float((w32["root"] - w32["root"][:, :1]).norm(dim=-1).max()), 3)
    res["pred_x_max_abs"] = float(f"{(o16['pred_x'] - o32['pred_x']).abs().max():.3g}")
    res["pred_cam_max_abs"] = float(f"{(o16['pred_cam'] - o32['pred_cam']).abs().max():.3g}")
    flips = (o16["static_conf_logits"] > 0) != (o32["static_conf_logits"] > 0)
    res["contact_flipped_fraction"] = round(float(flips.double().mean()), 4)
    res["seconds"] = seconds
    return res


# ---- driver ------------------------------------------------------------------------------------------------


def _line(size: str, name: str, r: dict) -> str:
    head = f"{size:<8}{name:<17}"
    if "skipped" in r:
        return f"{head}skipped: {r['skipped']}"
    t = f"[fp32 {r['seconds']['fp32']} s, bf16 {r['seconds']['bf16']} s]"
    if name == "vitpose":
        return (
            f"{head}kp |Δ| px max {r['kp_px']['max']:.3f} mean {r['kp_px']['mean']:.4f} "
            f"median {r['kp_px_median']:.3f}; argmax moved {100 * r['argmax_moved_fraction']:.2f}% of "
            f"{r['keypoints']}; conf max {r['conf_max_abs']:.3g}; heatmap max {r['heatmap_max_abs']:.3g} "
            f"(fp32 peak {r['heatmap_fp32_abs_max']:.3g}) {t}"
        )
    if name == "hmr2":
        return (
            f"{head}f_imgseq cosine min {r['cosine']['min']:.6f} mean {r['cosine']['mean']:.6f}; "
            f"max |Δ| {r['max_abs']:.3g} (fp32 max {r['fp32_abs_max']:.3g}) over {r['crops']} crops {t}"
        )
    parts = [
        f"{label} max {r[k]['max']:.2f} mean {r[k]['mean']:.2f}"
        for k, label in (
            ("world_joints_mm", "world joints mm"),
            ("world_joints_raw_mm", "raw"),
            ("pose_mm", "pose"),
            ("root_transl_mm", "root"),
        )
        if k in r
    ]
    return (
        f"{head}{r['frames']} frames: {'; '.join(parts)} (fp32 root range {r['root_range_fp32_m']} m); "
        f"pred_x max {r['pred_x_max_abs']:.3g}; "
        f"contacts flipped {100 * r['contact_flipped_fraction']:.2f}% {t}"
    )


def environment(device: torch.device, flags: dict) -> dict:
    env = {
        "device": str(device),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "loadavg_start": [round(v, 2) for v in os.getloadavg()],
        "precision_flags": flags,
        "bf16": bf16_description(device),
        "seed": SEED,
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    return env


def run_perception(size: str, builders: dict, n_crops: int, device: torch.device, emit: Callable) -> None:
    frames, index, boxes = person_frames(n_crops)
    crops = cut_crops(torch.from_numpy(frames).to(device), index.to(device), boxes)
    del frames
    side = [round(float(boxes[:, 2].min()), 1), round(float(boxes[:, 2].max()), 1)]
    emit(
        size, "inputs", {"crops": n_crops, "box_side_px": side, "hmr2_blurred": int(crops.hmr2_blurred.sum())}
    )
    model = builders["vitpose"]()
    emit(size, "vitpose", measure_vitpose(model, crops.vitpose, boxes, device))
    del model
    _free(device)
    model = builders["hmr2"]()
    emit(size, "hmr2", measure_hmr2(model, crops.hmr2, device))
    del model, crops
    _free(device)


def run_size(size: str, args: argparse.Namespace, device: torch.device, emit: Callable) -> None:
    if size == "reduced":
        missing = reduced_missing(args.fixtures, args.scenario)
        if missing:
            for name in ("vitpose", "hmr2", "gem_ddim", "gem_regression"):
                emit(size, name, {"skipped": f"fixture files missing: {', '.join(missing)}"})
            return
    try:
        builders = perception_builders(size, device, args.fixtures)
    except ImportError as e:
        reason = f"ViTPose/HMR2 not importable: {type(e).__name__}: {e} (models/vit.py builds on timm)"
        for name in ("vitpose", "hmr2"):
            emit(size, name, {"skipped": reason})
    else:
        run_perception(size, builders, args.crops, device, emit)

    if size == "full":
        inputs = _sibling("gem_denoiser").synthetic_inputs(args.frames)
        source = f"benchmarks/gem_denoiser.py synthetic_inputs({args.frames})"
    else:
        inputs = fixture_gem_inputs(args.fixtures / "gem_parity" / f"{args.scenario}.pt")
        source = f"gem_parity/{args.scenario}.pt inputs"
    skeleton = None
    joints = "none: no body model (root translation only)"
    if args.body_model is not None and Path(args.body_model).exists():
        skeleton = Skeleton.from_npz(args.body_model)
        joints = f"SMPL-X FK (models.gem.skeleton.fk) of the decode, body model {args.body_model}"
    net = build_gem(size, device, args.fixtures)
    for mode in ("ddim", "regression"):
        r = measure_gem(net, inputs, mode, args.steps, skeleton, device)
        emit(size, f"gem_{mode}", {**r, "inputs": source, "joints_source": joints})
    del net
    _free(device)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--sizes", default="full,reduced", help="comma list of full, reduced (default both)")
    p.add_argument("--crops", type=int, help="people cropped for ViTPose/HMR2 (default 32 CUDA, 4 CPU)")
    p.add_argument("--frames", type=int, help="frames of the full-size GEM input (default 120 CUDA, 30 CPU)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50, the estimate stage's)")
    p.add_argument("--scenario", default="S2", help="gem_parity scenario for the reduced GEM (default S2)")
    p.add_argument(
        "--fixtures",
        type=Path,
        default=fixture_dir("perception_parity").parent,
        help="the shared fixtures folder (default $GENMOCAP_SHARED/fixtures, else ../shared/fixtures)",
    )
    p.add_argument("--body-model", help="SMPLX_NEUTRAL.npz for FK (default: the gem_parity fixture's)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--json", action="store_true", help="last stdout line: one JSON object with every figure")
    args = p.parse_args(argv)
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    if not sizes or any(s not in ("full", "reduced") for s in sizes):
        p.error("--sizes takes a comma list of 'full' and 'reduced'")
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    cuda = device.type == "cuda"
    args.crops = args.crops or (32 if cuda else 4)
    args.frames = args.frames or (120 if cuda else 30)
    if args.crops < 1 or args.frames < 2 or args.steps < 1:
        p.error("--crops >= 1, --frames >= 2 and --steps >= 1 please")
    if args.body_model is None:
        args.body_model = str(args.fixtures / "gem_parity" / "body_model" / "SMPLX_NEUTRAL.npz")
    if args.threads:
        torch.set_num_threads(args.threads)
    flags = precision_flags()
    torch.manual_seed(SEED)

    env = environment(device, flags)
    print(f"environment {json.dumps(env)}", flush=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "json"}
    settings["sizes"] = sizes
    results: dict[str, dict] = {s: {} for s in sizes}

    def emit(size: str, name: str, r: dict) -> None:
        results[size][name] = r
        if name == "inputs":
            print(f"{size:<8}inputs: {json.dumps(r)}", flush=True)
        else:
            print(_line(size, name, r), flush=True)

    t0 = time.perf_counter()
    for size in sizes:
        run_size(size, args, device, emit)
    env["total_s"] = round(time.perf_counter() - t0, 1)
    env["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    if cuda:
        env["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20)
    print(f"total {env['total_s']} s", flush=True)
    if args.json:
        print(json.dumps({"environment": env, "settings": settings, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
