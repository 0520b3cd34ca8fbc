"""Person-frames per second of the keypoints and features stages' networks at the full architecture.

    python benchmarks/perception.py [--batch 1 32] [--precision fp32 bf16] [--backend torch onnx] [--json]

What one call is, per batch of B person-frames (crops already cut and normalised; cropping and decoding of
video are not included):
* keypoints: ViTPose-H with flip test as the stage runs it, i.e. one forward of 2B images (crops + mirrored
  crops, ``models.vitpose.heatmaps_flip_test``), merge of the two heatmap sets, then ``decode_heatmaps``;
* features: HMR2 (ViT-H backbone + SMPL decoder) to ``token_out`` (``f_imgseq``) for B 256×256 crops.

Both networks are built by our own code with random weights (``models.vit.VIT_H``, ViTPose head 2×256
deconvolutions → 17 heatmaps, HMR2 decoder 6 layers × 8 heads of 64), so no weight file is needed.

Precision: ``fp32`` (PyTorch defaults; ``--tf32`` allows TF32 matmuls on CUDA) and ``bf16`` = the models'
own ``bf16=True`` flag, i.e. bf16 autocast, which they apply on CUDA only. On a CPU the bf16 cases are
reported as skipped (the stage would run them in fp32) unless ``--cpu-bf16`` is given, which measures
``torch.autocast("cpu", bfloat16)`` around the same calls.

Backend ``onnx``: our random-weight model exported with ``models.onnx_runner.export_onnx`` (GEM's
signature: input ``imgs``, output ``heatmaps`` / ``f_imgseq``, dynamic batch ``B``, opset 18, fp32, weights
in a ``.onnx.data`` sidecar) and run by ``models.onnx_runner.OnnxModel`` (CUDA execution provider when
onnxruntime has it and the device is CUDA, else CPU). Only fp32 exists for this backend.

Timing: per (stage, backend, precision, batch): ``--warmup`` untimed calls (default 1), then timed calls
until ``--iters`` (default 3) are done or ``--budget-s`` seconds (default 30) of timed calls have passed,
at least one. Where one call is predicted (from the smaller batch just measured) to take longer than the
budget, the warm-up at that batch size is skipped (the model was already warmed up at the smaller batch)
and a single call is timed; ``warmup`` and ``iters`` in the output say what was done. CUDA is synchronised
around every timed call. ``min_seconds_per_call`` is the fastest timed call; on a shared CPU it is the
figure least disturbed by other processes (the load average is recorded at the start and the end).
On the 2-core development CPU the default run (torch, fp32, batches 1 and 32) takes about 4 minutes on an
otherwise idle machine (7 minutes were measured with other jobs competing); ``--backend onnx`` adds about a
minute of export and session set-up per network (each export writes ~2.7 GB under ``--tmpdir``).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from models.heatmap import decode_heatmaps  # noqa: E402
from models.hmr2 import HMR2, DecoderDims  # noqa: E402
from models.vit import VIT_H  # noqa: E402
from models.vitpose import HeadDims, ViTPose, heatmaps_flip_test  # noqa: E402

# ---- the official architectures (ViTPose-H, HMR2 as released) --------------------------------------------
VITPOSE_HEAD = HeadDims(in_channels=VIT_H.embed_dim, deconv_filters=(256, 256), num_joints=17)
HMR2_DECODER = DecoderDims(
    dim=1024, depth=6, heads=8, dim_head=64, mlp_dim=1024, context_dim=VIT_H.embed_dim, token_dim=1
)
INPUT_SHAPE = {"keypoints": (3, 256, 192), "features": (3, 256, 256)}
MODEL_NAME = {"keypoints": "ViTPose-H (flip test) + decode", "features": "HMR2 token_out"}


def build(stage: str, device: torch.device, bf16: bool) -> torch.nn.Module:
    """The full-size network with random weights (normal 0.02; LayerNorm/BatchNorm at identity)."""
    with torch.device("meta"):
        if stage == "keypoints":
            model = ViTPose(VIT_H, VITPOSE_HEAD, bf16=bf16)
        else:
            model = HMR2(VIT_H, HMR2_DECODER, bf16=bf16)
    model = model.to_empty(device=device)
    g = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim > 1 or "pos_embed" in name or "pos_embedding" in name:
                p.normal_(0.0, 0.02, generator=g)
            elif name.endswith("weight"):
                p.fill_(1.0)  # norm scales
            else:
                p.zero_()
        for name, b in model.named_buffers():
            b.fill_(1 if name.endswith("running_var") else 0)
    return model.eval()


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def make_call(stage: str, model: Callable, device: torch.device, batch: int, cpu_bf16: bool) -> Callable:
    """One stage call on a fixed random batch: what is timed."""
    g = torch.Generator(device=device).manual_seed(1)
    imgs = torch.randn((batch, *INPUT_SHAPE[stage]), generator=g, device=device)
    boxes = torch.tensor([[640.0, 360.0, 400.0]], device=device).expand(batch, 3)
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if cpu_bf16 else contextlib.nullcontext

    if stage == "keypoints":

        def call():
            with torch.inference_mode(), ctx():
                avg, _, _ = heatmaps_flip_test(model, imgs)
                return decode_heatmaps(avg.float(), boxes)

    else:

        def call():
            with torch.inference_mode(), ctx():
                return model(imgs)

    return call


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(call: Callable, device: torch.device, warmup: int, iters: int, budget_s: float) -> dict:
    for _ in range(warmup):
        call()
    _sync(device)
    times: list[float] = []
    while len(times) < max(1, iters) and (not times or sum(times) < budget_s):
        t0 = time.perf_counter()
        call()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return {"warmup": warmup, "iters": len(times), "seconds": times}


def _onnx_model(stage: str, model: torch.nn.Module, device: torch.device, workdir: Path):
    from models.onnx_runner import OnnxModel, export_onnx

    name = "vitpose_coco17.onnx" if stage == "keypoints" else "hmr2.onnx"
    t0 = time.perf_counter()
    path = export_onnx(model, workdir / name)
    export_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    runner = OnnxModel(path, device=device)
    load_s = time.perf_counter() - t0
    info = {
        "export_s": round(export_s, 1),
        "session_s": round(load_s, 1),
        "providers": runner.session.get_providers(),
        "onnx_input": [runner.input_name, runner.input_shape],
        "onnx_output": [runner.output_name, runner.output_shape],
    }
    return runner, info


def run_case_group(
    stage: str, backend: str, precision: str, device: torch.device, args: argparse.Namespace, emit
) -> None:
    """All batch sizes of one (stage, backend, precision); one model build."""
    base = {"stage": stage, "model": MODEL_NAME[stage], "backend": backend, "precision": precision}
    cpu_bf16 = False
    if precision == "bf16":
        if backend == "onnx":
            reason = "the ONNX export is fp32 only"
            for b in args.batch:
                emit({**base, "batch": b, "status": "skipped", "reason": reason})
            return
        if device.type != "cuda":
            if not args.cpu_bf16:
                reason = (
                    "the models use bf16 autocast on CUDA only (fp32 on CPU); --cpu-bf16 measures CPU bf16"
                )
                for b in args.batch:
                    emit({**base, "batch": b, "status": "skipped", "reason": reason})
                return
            cpu_bf16 = True
            base["precision"] = "bf16 (cpu autocast)"
    t0 = time.perf_counter()
    model = build(stage, device, bf16=precision == "bf16" and device.type == "cuda")
    extra = {"params_m": round(n_params(model) / 1e6, 1), "build_s": round(time.perf_counter() - t0, 1)}
    runner: Callable = model
    tmp = None
    if backend == "onnx":
        tmp = tempfile.TemporaryDirectory(prefix="genmocap-bench-", dir=args.tmpdir)
        try:
            runner, info = _onnx_model(stage, model, device, Path(tmp.name))
        except Exception as e:  # export/runtime problems are a result worth reporting, not a crash
            for b in args.batch:
                emit({**base, "batch": b, "status": "failed", "reason": f"{type(e).__name__}: {e}"[:300]})
            tmp.cleanup()
            return
        extra.update(info)
        del model
        gc.collect()
    per_image_s = None  # seconds per person-frame of the last measured batch, to predict the next
    try:
        for b in sorted(args.batch):
            call = make_call(stage, runner, device, b, cpu_bf16)
            warmup = args.warmup
            if per_image_s is not None and per_image_s * b > args.budget_s:
                warmup = 0  # one call alone is over budget; already warmed up at the smaller batch
            try:
                r = time_calls(call, device, warmup, args.iters, args.budget_s)
            except torch.cuda.OutOfMemoryError as e:
                emit({**base, "batch": b, "status": "failed", "reason": f"out of memory: {e}"[:300]})
                torch.cuda.empty_cache()
                continue
            mean = sum(r["seconds"]) / len(r["seconds"])
            per_image_s = mean / b
            images = 2 * b if stage == "keypoints" else b
            emit(
                {
                    **base,
                    "batch": b,
                    "status": "ok",
                    "warmup": r["warmup"],
                    "iters": r["iters"],
                    "seconds_per_call": round(mean, 4),
                    "min_seconds_per_call": round(min(r["seconds"]), 4),
                    "person_frames_per_s": round(b / mean, 3),
                    "best_person_frames_per_s": round(b / min(r["seconds"]), 3),
                    "network_images_per_s": round(images / mean, 3),
                    **extra,
                }
            )
    finally:
        del runner
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if tmp is not None:
            tmp.cleanup()


def environment(device: torch.device) -> dict:
    env = {
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "matmul_precision": torch.get_float32_matmul_precision(),
        "loadavg_start": [round(v, 2) for v in os.getloadavg()],
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    try:
        import onnxruntime as ort

        env["onnxruntime"] = ort.__version__
        env["onnxruntime_providers"] = ort.get_available_providers()
    except ImportError:
        env["onnxruntime"] = None
    return env


def _line(r: dict) -> str:
    head = f"{r['stage']:<9} {r['backend']:<5} {r['precision']:<5} B={r['batch']:<3}"
    if r["status"] != "ok":
        return f"{head} {r['status']}: {r['reason']}"
    return (
        f"{head} {r['person_frames_per_s']:>8.3f} person-frames/s (best {r['best_person_frames_per_s']:.3f}) "
        f"{r['network_images_per_s']:>9.3f} images/s  "
        f"{r['seconds_per_call'] * 1000:>10.1f} ms/call  (warm-up {r['warmup']}, {r['iters']} timed)"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stage", nargs="+", choices=["keypoints", "features"], default=["keypoints", "features"])
    p.add_argument("--batch", type=int, nargs="+", default=[1, 32], help="person-frames per call")
    p.add_argument("--precision", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    p.add_argument("--backend", nargs="+", choices=["torch", "onnx"], default=["torch"])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls before timing (default 1)")
    p.add_argument("--iters", type=int, default=3, help="timed calls at most (default 3)")
    p.add_argument("--budget-s", type=float, default=30.0, help="stop timing a case after this (default 30)")
    p.add_argument("--tf32", action="store_true", help="allow TF32 matmuls for fp32 on CUDA")
    p.add_argument("--cpu-bf16", action="store_true", help="measure bf16 on CPU with torch.autocast('cpu')")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--tmpdir", help="where the ONNX exports are written (about 2.7 GB each)")
    p.add_argument("--json", action="store_true", help="print one JSON document at the end instead of lines")
    args = p.parse_args(argv)
    if min(args.batch) < 1:
        p.error("--batch values must be >= 1")
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.tf32:
        torch.set_float32_matmul_precision("high")
    if device.type == "cpu":
        torch.set_flush_denormal(True)

    results: list[dict] = []

    def emit(r: dict) -> None:
        results.append(r)
        if not args.json:
            print(_line(r), flush=True)

    env = environment(device)
    if not args.json:
        print(json.dumps(env), flush=True)
    t0 = time.perf_counter()
    for stage in args.stage:
        for backend in args.backend:
            for precision in args.precision:
                run_case_group(stage, backend, precision, device, args, emit)
    env["total_s"] = round(time.perf_counter() - t0, 1)
    env["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]  # other processes skew CPU timings
    if args.json:
        print(json.dumps({"environment": env, "results": results}, indent=1))
    else:
        print(f"total {env['total_s']} s, load average at the end {env['loadavg_end']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
