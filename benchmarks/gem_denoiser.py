"""Memory and time of GEM denoiser passes at the full architecture (random weights) versus clip length.

    python benchmarks/gem_denoiser.py --frames 120 480 1920 --steps 1 --json [--attention banded|dense]

Each length runs in a fresh process. Prints per length ``{"frames", "seconds", "peak_mb", "activation_mb"}``:
the peak memory of the estimation call (process RSS on CPU, CUDA peak allocated on GPU) and the part of it
above what is held once the model and inputs are loaded. ``--steps 1`` is one denoiser pass (the single-pass
regression mode); more steps run DDIM. On CPU the RSS high-water mark is reset right before the call
(``/proc/self/clear_refs``), so model construction does not hide the pass's peak.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# The official gem_smpl network (reference diffusion_lg.yaml): D 1024, 16 blocks + 16 text blocks,
# 8 heads of 128, MLP 4096; the condition embedders at their full widths.
FULL = dict(
    latent_dim=1024, num_layers=16, text_layers=tuple(range(16)), num_heads=8, mlp_hidden=4096,
    motion_dim=151, pred_cam_dim=3, static_conf_dim=6, head_hidden=1024, text_dim=1024, img_dim=1024,
    obs_joints=17, obs_embed=32, obs_hidden=2048, cliffcam_dim=3, cam_angvel_dim=6, pe_len=5000,
)  # fmt: skip


def _rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"{field} not in /proc/self/status")


def synthetic_inputs(L: int, W: int = 1280, H: int = 720):
    """Plausible per-frame inputs for one person (values do not change the cost)."""
    import torch

    g = torch.Generator().manual_seed(0)
    bbx = torch.tensor([W / 2, H / 2, 400.0]).repeat(L, 1)
    kp = torch.rand(L, 17, 3, generator=g)
    kp[..., :2] = kp[..., :2] * 300 + torch.tensor([W / 2 - 150, H / 2 - 150])
    f = max(W, H)
    K = torch.tensor([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1.0]]).repeat(L, 1, 1)
    ones = torch.ones(L, dtype=torch.bool)
    return {
        "kp2d": kp, "bbx_xys": bbx, "K_fullimg": K,
        "cam_angvel": torch.tensor([1.0, 0, 0, 0, 1, 0]).repeat(L, 1),
        "f_imgseq": torch.randn(L, 1024, generator=g),
        "has_img_mask": ones, "has_2d_mask": ones, "has_cam_mask": ones,
    }  # fmt: skip


def measure(frames: int, steps: int, attention: str, device: str) -> dict:
    import torch

    sys.path.insert(0, str(REPO))
    from models.gem.dims import GemDims
    from models.gem.network import GemNetwork

    torch.manual_seed(0)
    net = GemNetwork(GemDims(**FULL)).eval().to(device)
    inputs = synthetic_inputs(frames)
    mode = "regression" if steps == 1 else "ddim"
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
    else:
        base = _rss_mb("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset the RSS high-water mark
    t0 = time.perf_counter()
    net.estimate(inputs, mode=mode, steps=steps, attention=attention)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else _rss_mb("VmHWM")
    return {
        "frames": frames,
        "seconds": round(seconds, 3),
        "peak_mb": round(peak, 1),
        "activation_mb": round(max(0.0, peak - base), 1),
        "attention": attention,
        "device": device,
        "threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, nargs="+", default=[120, 480, 1920])
    p.add_argument("--steps", type=int, default=1, help="1: one denoiser pass; N: N-step DDIM")
    p.add_argument("--attention", choices=["banded", "dense"], default="banded")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--json", action="store_true")
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    device = args.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.child is not None:
        print(json.dumps(measure(args.child, args.steps, args.attention, device)))
        return 0
    results = []
    for n in args.frames:
        cmd = [sys.executable, __file__, "--child", str(n), "--steps", str(args.steps)]
        cmd += ["--attention", args.attention, "--device", device]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            results.append({"frames": n, "error": out.stderr.strip().splitlines()[-1]})
        else:
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        if not args.json:
            print(results[-1], flush=True)
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        ok = [r for r in results if "error" not in r]
        by = {r["frames"]: r for r in ok}
        if 480 in by and 1920 in by and by[480]["activation_mb"] > 0:
            print(f"activation ratio 1920/480: {by[1920]['activation_mb'] / by[480]['activation_mb']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
