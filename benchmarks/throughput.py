"""Person-frames per second of the pipeline's compute after tracking, on synthetic 1080p footage.

    python benchmarks/throughput.py --device cpu|cuda [--precision fp32|bf16] [--frames N] [--people 1,2,5]
                                    [--json] [--budget-s S] [--cpu-bf16]

Footage: synthetic 1920×1080 RGB frames built in memory chunk by chunk (``stages.video.FrameChunk`` of
``--chunk-frames`` frames, uint8), with N people boxes (heights 700…400 px, so boxes both above and below
HMR2's anti-alias blur threshold) walking sideways at 30 fps. Tracks: our tracking post-processing
(``stages.tracking.tracks_from_ids`` + ``finalize``) on those boxes, one person per box, present in every
frame. Networks: full size with random weights, built by our code: ViTPose-H and HMR2 from
``benchmarks/perception.py`` (``build``) and GEM at the official dimensions (``benchmarks/gem_denoiser.py``
``FULL``), so no weight file is needed. Frames are generated before any timing; generation is never timed.

What is timed, for each people count N of ``--people`` (T = ``--frames``, N·T person-frames each):
* ``end_to_end``: ``stages.perception.run_perception`` fed the in-memory chunks (frame upload, crops cut on
  the device, ViTPose-H keypoints with flip test + ``decode_heatmaps``, HMR2 features, in the stages'
  default batches of 32), then ``stages.estimate.estimate_people`` with all N people in one batched GEM call
  (``batch_people`` = N), 50-step DDIM, and the decode without body model — the keypoints, features and
  estimate stages' compute of one clip, wall time. Decode and tracking are not included. The perception
  and estimate parts are timed on their own (``perception_s``, ``estimate_s``).
* per stage: ``estimate`` is the end-to-end run's estimate part (``estimate_people``, 50-step DDIM; not run
  twice); after it, same inputs, each timed on its own: ``crops`` (frame upload + ``cut_crops`` as
  ``stages.perception._run_items`` does, groups of 128 items), ``keypoints`` (the stage's ViTPose function
  on those crops), ``features`` (the stage's HMR2 function), ``estimate_regression`` (``estimate_people`` in
  1-pass regression mode); ``decode`` (``stages.video.iter_chunks``
  over a synthetic 1080p H.264 clip made by ffmpeg, ``--decode-frames`` frames) when the ffmpeg/ffprobe
  binaries and the ffmpeg-python package exist; its ``person_frames_per_s`` is ``decode_fps`` × N (one decode
  serves everybody).
The top-level ``end_to_end`` and ``stages`` sum person-frames and seconds over all people counts;
``per_people`` has each count on its own.

Warm-up (untimed): one pass of the crop/keypoint/feature code over the first chunk (CPU: one person-frame)
and, per people count, one GEM regression pass at that count's shapes. CUDA is synchronised around every timed
section. TF32 is off (``torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False``,
recorded in the output). ``peak_gpu_mb`` is ``torch.cuda.max_memory_allocated`` over the run (models
included); ``gpu_busy_fraction`` is the mean of ``nvidia-smi`` ``utilization.gpu`` sampled every 100 ms during
the end-to-end sections (null when nvidia-smi is absent); both are null on a CPU.

Precision: ``fp32``, or ``bf16`` = the models' own ``bf16=True`` (bf16 autocast on CUDA; RoPE, sampler and
outputs stay float32). The models apply bf16 on CUDA only, so on a CPU ``bf16`` is reported as not applicable
(nothing is measured) unless ``--cpu-bf16`` is given, which wraps the calls in ``torch.autocast("cpu",
bfloat16)`` (GEM's denoiser sets its own autocast region and still runs float32 there).

Defaults: CUDA 300 frames, people 1,2,5, decode clip 120 frames; CPU 4 frames, people 1,2, decode clip 30
frames (about 3.5 minutes and 8 GB of memory on the 2-core development machine with other jobs running).
``--budget-s`` skips the remaining people counts once the time since the start of ``main`` plus the
predicted time of the next count (from the previous count's seconds per person-frame) would exceed it, so
the JSON is still printed under an outer time limit. With ``--json`` the last line of stdout is one JSON
object; progress lines precede it.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import types
import warnings
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

try:
    from benchmarks.gem_denoiser import FULL as GEM_FULL
    from benchmarks.perception import build as build_image_model
except ImportError:  # an installed top-level ``benchmarks`` package shadows this folder: load the files
    import importlib.util

    def _sibling(name: str) -> types.ModuleType:
        path = Path(__file__).with_name(f"{name}.py")
        spec = importlib.util.spec_from_file_location(f"genmocap_benchmarks_{name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    GEM_FULL = _sibling("gem_denoiser").FULL
    build_image_model = _sibling("perception").build

W, H = 1920, 1080
FPS = 30.0
HEIGHTS = (700, 600, 520, 460, 400)  # box heights (px) of persons 0, 1, ...; cycled beyond 5
STAGES = ("decode", "crops", "keypoints", "features", "estimate", "estimate_regression")
CROP_GROUP = 128  # items cut at once per chunk, as stages.perception (max(128, batch))


def _ffmpeg_python(notes: list[str]) -> bool:
    """``stages.video`` imports the ffmpeg-python package at module level; without it a stub stands in so
    the perception and estimate code (which only use decoded chunks) still import; decode is then skipped."""
    try:
        import ffmpeg  # noqa: F401

        return True
    except ImportError as e:
        stub = types.ModuleType("ffmpeg")
        stub.Error = type("Error", (Exception,), {})  # type: ignore[attr-defined]
        sys.modules["ffmpeg"] = stub
        notes.append(f"ffmpeg-python not importable ({e}): stubbed, decode not measured")
        return False


# --------------------------------------------------------------------------------------------------------
# Synthetic footage and tracks


def person_boxes(n: int, frames: int) -> np.ndarray:
    """(n, T, 4) float32 xyxy boxes: person k walks sideways around its own slot of the image width."""
    t = np.arange(frames) / FPS
    out = np.empty((n, frames, 4), np.float32)
    for k in range(n):
        h = HEIGHTS[k % len(HEIGHTS)]
        w = 0.4 * h
        cx = (k + 0.5) * W / n + 0.6 * W / max(n, 2) / 2 * np.sin(2 * np.pi * t / (4.0 + k) + k)
        bottom = H - 40 - 15 * k
        out[k] = np.stack([cx - w / 2, np.full_like(t, bottom - h), cx + w / 2, np.full_like(t, bottom)], -1)
    return out


def _background() -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    bg = np.stack(
        [xx / W * 180 + 40, yy / H * 150 + 60, 120 + 60 * np.sin(xx / 37.0) * np.cos(yy / 53.0)], -1
    )
    return bg.astype(np.uint8)


def synthetic_chunks(boxes: np.ndarray, chunk_frames: int) -> list:
    """The clip as decoded chunks: (≤ chunk_frames, 1080, 1920, 3) uint8 RGB each, people drawn as boxes."""
    from stages.video import FrameChunk

    n, T = boxes.shape[:2]
    bg = _background()
    colors = np.random.default_rng(0).integers(0, 256, size=(max(n, 1), 3), dtype=np.uint8)
    chunks = []
    for a in range(0, T, chunk_frames):
        idx = np.arange(a, min(T, a + chunk_frames), dtype=np.int64)
        frames = np.empty((len(idx), H, W, 3), np.uint8)
        for r, f in enumerate(idx):
            frames[r] = np.roll(bg, 3 * int(f), axis=1)  # a panning background
            for k in range(n):
                x1, y1, x2, y2 = (int(round(v)) for v in boxes[k, f])
                x1, x2 = max(x1, 0), min(x2, W)
                frames[r, y1:y2, x1:x2] = colors[k]
                head = (y2 - y1) // 7
                frames[r, y1 : y1 + head, x1 + (x2 - x1) // 3 : x2 - (x2 - x1) // 3] = 255 - colors[k]
        chunks.append(FrameChunk(frames=frames, frame_index=idx, time_s=idx / FPS, sample_index=idx.copy()))
    return chunks


def make_tracks(boxes: np.ndarray):
    """``stages.results.Tracks`` for the boxes through our offline track post-processing (no detector)."""
    from stages.results import Tracks
    from stages.tracking import TrackerSettings, finalize, tracks_from_ids

    n, T = boxes.shape[:2]
    dets = [(boxes[:, f], np.full(n, 0.9), np.arange(n)) for f in range(T)]
    people = finalize(tracks_from_ids(dets), FPS, (W, H), T, TrackerSettings(min_seconds=0.0))
    if len(people) != n:
        raise RuntimeError(f"tracking kept {len(people)} of {n} synthetic people")
    idx = np.arange(T, dtype=np.int64)
    return Tracks(FPS, (W, H), idx, idx / FPS, people, source="detector")


def video_info(frames: int):
    from stages.video import VideoInfo

    return VideoInfo(
        path="<synthetic>", kind="video", container=None, codec="rawvideo", pix_fmt="rgb24", width=W,
        height=H, coded_width=W, coded_height=H, rotation=0, fps=FPS, fps_nominal="30/1", vfr=False,
        frame_count=frames, duration_s=frames / FPS, start_time_s=0.0, timecode=None, has_audio=False,
        size_bytes=frames * W * H * 3,
    )  # fmt: skip


def chunk_items(chunk, tracks) -> list[tuple[int, int, int]]:
    """(person_id, position in track, chunk row) of every tracked sample in a chunk, as run_perception."""
    rows = {int(s): r for r, s in enumerate(chunk.sample_index)}
    items = []
    for p in tracks.people:
        lo, hi = chunk.sample_index[0], chunk.sample_index[-1]
        pos = np.flatnonzero((p.sample_index >= lo) & (p.sample_index <= hi))
        items += [(p.person_id, int(i), rows[int(p.sample_index[i])]) for i in pos]
    return items


# --------------------------------------------------------------------------------------------------------
# Timing helpers and the GPU utilisation sampler


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn: Callable[[], Any]) -> tuple[float, Any]:
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - t0, out


def _die_with_parent() -> None:  # runs in the child before exec: SIGKILL it if this process dies
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class GpuSampler:
    """``nvidia-smi --query-gpu=timestamp,utilization.gpu -lms 100`` in the background, into a temp file."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.proc: subprocess.Popen | None = None
        self.file = None
        self.note: str | None = None
        self.window = (0.0, 0.0)

    def __enter__(self) -> GpuSampler:
        exe = shutil.which("nvidia-smi")
        if exe is None:
            self.note = "nvidia-smi not found: gpu_busy_fraction not measured"
            return self
        cmd = [exe, "--query-gpu=timestamp,utilization.gpu", "--format=csv,noheader,nounits", "-lms", "100"]
        cmd += self._select(exe)
        if shutil.which("stdbuf"):
            cmd = ["stdbuf", "-oL", *cmd]
        self.file = tempfile.TemporaryFile(mode="w+")
        try:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=self.file, stderr=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )  # fmt: skip
        except OSError as e:
            self.note = f"nvidia-smi did not start ({e}): gpu_busy_fraction not measured"
        self.window = (time.time(), 0.0)
        return self

    def _select(self, exe: str) -> list[str]:
        """``-i GPU-<uuid>`` of the torch device when nvidia-smi accepts it, else all GPUs (averaged)."""
        try:
            uuid = str(torch.cuda.get_device_properties(self.device).uuid)
        except Exception:
            return []
        sel = ["-i", uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"]
        try:
            ok = subprocess.run([exe, "--query-gpu=uuid", "--format=csv,noheader", *sel], capture_output=True,
                                stdin=subprocess.DEVNULL, timeout=20).returncode == 0  # fmt: skip
        except (OSError, subprocess.TimeoutExpired):
            ok = False
        return sel if ok else []

    def __exit__(self, *exc: object) -> None:
        self.window = (self.window[0], time.time())
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)  # lets nvidia-smi flush its last lines
                try:
                    self.proc.wait(timeout=1)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()

    def busy_fraction(self) -> tuple[float | None, int]:
        """(mean utilisation / 100 over the samples inside the window, number of samples)."""
        if self.file is None:
            return None, 0
        self.file.seek(0)
        lines = self.file.read().splitlines()
        self.file.close()
        samples = []
        for line in lines:
            parts = [p.strip() for p in line.split(",")]
            if len(parts) != 2 or not parts[1].isdigit():
                continue
            try:
                t = datetime.strptime(parts[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()
            except ValueError:
                t = None
            samples.append((t, int(parts[1])))
        lo, hi = self.window
        inside = [u for t, u in samples if t is None or lo - 0.05 <= t <= hi + 0.05]
        if not inside:
            self.note = self.note or f"nvidia-smi gave no usable samples ({len(lines)} lines)"
            return None, 0
        return sum(inside) / len(inside) / 100.0, len(inside)


# --------------------------------------------------------------------------------------------------------
# What is measured


class Pipeline:
    """The three networks and the stages' settings for one precision on one device."""

    def __init__(
        self, device: torch.device, bf16: bool | None, cpu_bf16: bool, batch: int, steps: int
    ) -> None:
        """``bf16`` True/False for every network; None: each network at its default precision on ``device``
        (``stages.perception.BF16_ON_CUDA``; GEM's ``estimate.bf16`` default)."""
        from models.gem.dims import GemDims
        from models.gem.network import GemNetwork
        from stages.estimate import EstimateSettings
        from stages.features import FeaturesSettings
        from stages.keypoints import KeypointsSettings
        from stages.perception import uses_bf16

        self.device, self.cpu_bf16 = device, cpu_bf16
        ks, fs = KeypointsSettings(bf16=bf16), FeaturesSettings(bf16=bf16)
        kp16, ft16 = uses_bf16("vitpose", ks, str(device)), uses_bf16("hmr2", fs, str(device))
        gem16 = EstimateSettings().bf16 if bf16 is None else bf16
        self.applied = {"vitpose": kp16, "hmr2": ft16, "gem": gem16}
        self.vitpose = build_image_model("keypoints", device, bf16=kp16)
        self.hmr2 = build_image_model("features", device, bf16=ft16)
        torch.manual_seed(0)
        with torch.device(device):
            self.gem = GemNetwork(GemDims(**GEM_FULL))
        self.gem = self.gem.to(device).eval()
        self.ks = KeypointsSettings(batch=batch, bf16=kp16)
        self.fs = FeaturesSettings(batch=batch, bf16=ft16)
        self.ddim = EstimateSettings(mode="ddim", steps=steps, bf16=gem16)
        self.regression = EstimateSettings(mode="regression", steps=1, bf16=gem16)

    def precision(self) -> contextlib.AbstractContextManager:
        return torch.autocast("cpu", dtype=torch.bfloat16) if self.cpu_bf16 else contextlib.nullcontext()

    def perceive(self, info, tracks, chunks: list) -> tuple:
        """The keypoints + features stages' pixel pass (``run_perception``) over in-memory chunks."""
        from stages.perception import run_perception

        with self.precision():
            return run_perception(
                info, tracks, fps=None, chunk_frames=len(chunks[0]), chunks=iter(chunks), device=self.device,
                vitpose=self.vitpose, keypoints=self.ks, hmr2=self.hmr2, features=self.fs,
            )  # fmt: skip

    def estimate(self, tracks, kp, ft, settings) -> list[dict]:
        """The estimate stage's compute (as ``stages.estimate._compute``, static camera), all people in one
        batch."""
        from stages.estimate import PersonInput, estimate_people

        people = [
            PersonInput(
                person_id=p.person_id, sample_index=p.sample_index, bbx_xys=p.bbx_xys,
                kp2d=kp.arrays[p.person_id]["kp2d"], f_imgseq=ft.arrays[p.person_id]["f_imgseq"],
                has_img=np.ones(len(p.sample_index), bool),
            )
            for p in tracks.people
        ]  # fmt: skip
        one_call = settings.model_copy(update={"batch_people": max(1, len(people))})
        with self.precision():
            return estimate_people(self.gem, people, tracks.image_wh, one_call, skeleton=None)

    def stage_pass(self, tracks, chunks: list) -> dict[str, float]:
        """Seconds of crops, keypoints and features, each timed on its own (synchronised between them)."""
        from models.crops import cut_crops
        from stages.perception import _features_fn, _keypoints_fn

        kp_run, ft_run = _keypoints_fn(self.vitpose, self.ks), _features_fn(self.hmr2)
        by_id = {p.person_id: p for p in tracks.people}
        group = max(CROP_GROUP, self.ks.batch, self.fs.batch)
        secs = {"crops": 0.0, "keypoints": 0.0, "features": 0.0}
        dev = self.device
        with torch.inference_mode(), self.precision():
            for chunk in chunks:
                items = chunk_items(chunk, tracks)
                for a in range(0, len(items), group):
                    part = items[a : a + group]

                    def crops(part=part, chunk=chunk):  # as stages.perception._run_items
                        bbx = np.stack([by_id[pid].bbx_xys[i] for pid, i, _ in part]).astype(np.float32)
                        bbx = torch.from_numpy(bbx)
                        rows = torch.tensor([r for _, _, r in part], dtype=torch.long)
                        frames_t = torch.from_numpy(chunk.frames).to(dev)
                        return bbx, cut_crops(frames_t, rows.to(dev), bbx, hmr2=True, hmr2_blur=self.fs.blur)

                    s, (bbx, c) = timed(dev, crops)
                    secs["crops"] += s
                    for name, run, x, b in (
                        ("keypoints", kp_run, c.vitpose, self.ks.batch),
                        ("features", ft_run, c.hmr2, self.fs.batch),
                    ):
                        s, _ = timed(dev, lambda run=run, x=x, b=b, bbx=bbx: _in_batches(run, x, bbx, b))
                        secs[name] += s
        return secs


def _in_batches(run: Callable, x: torch.Tensor, bbx: torch.Tensor, b: int) -> list:
    return [run(x[i : i + b], bbx[i : i + b]) for i in range(0, len(x), b)]


def measure_decode(frames: int, chunk_frames: int, notes: list[str]) -> dict | None:
    """Frames/s of ``stages.video.iter_chunks`` over a synthetic 1080p clip that ffmpeg encodes first
    (the encode and the probe are not timed); None, with a note, when that cannot be done."""
    ffmpeg_bin, ffprobe_bin = shutil.which("ffmpeg"), shutil.which("ffprobe")
    if ffmpeg_bin is None or ffprobe_bin is None:
        notes.append("ffmpeg/ffprobe not found: decode not measured (decode_fps null)")
        return None
    from stages.video import iter_chunks, probe

    encoders = subprocess.run(
        [ffmpeg_bin, "-hide_banner", "-encoders"], capture_output=True, text=True, stdin=subprocess.DEVNULL
    ).stdout
    codec = (
        ["-c:v", "libx264", "-preset", "veryfast"]
        if " libx264 " in encoders
        else ["-c:v", "mpeg4", "-q:v", "3"]
    )
    with tempfile.TemporaryDirectory(prefix="genmocap-throughput-") as tmp:
        clip = Path(tmp) / "synthetic_1080p.mp4"
        cmd = [ffmpeg_bin, "-nostdin", "-hide_banner", "-loglevel", "error", "-f", "lavfi",
               "-i", f"testsrc2=size={W}x{H}:rate={FPS:g}", "-frames:v", str(frames), *codec,
               "-pix_fmt", "yuv420p", str(clip)]  # fmt: skip
        t0 = time.perf_counter()
        enc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)
        if enc.returncode != 0:
            notes.append(f"ffmpeg could not make the decode clip: {enc.stderr.strip()[-200:]}")
            return None
        encode_s = time.perf_counter() - t0
        try:
            info = probe(clip)
            n = 0
            t0 = time.perf_counter()
            for chunk in iter_chunks(info, chunk_frames=chunk_frames):
                n += len(chunk)
            seconds = time.perf_counter() - t0
        except Exception as e:  # a decode problem is a finding, not a reason to lose the other figures
            notes.append(f"decode failed: {type(e).__name__}: {e}"[:300])
            return None
    return {
        "frames": n, "seconds": round(seconds, 3), "frames_per_s": round(n / seconds, 2),
        "clip": f"ffmpeg testsrc2 {W}x{H} {info.codec} {info.pix_fmt}", "encode_s": round(encode_s, 1),
    }  # fmt: skip


def _rate(person_frames: int, seconds: float) -> dict:
    return {
        "person_frames": person_frames,
        "seconds": round(seconds, 4),
        "person_frames_per_s": round(person_frames / seconds, 3) if seconds > 0 else None,
    }


def measure_people(
    pipe: Pipeline, n: int, frames: int, chunk_frames: int, decode: dict | None, log: Callable[[str], None]
) -> dict:
    """Everything timed for one people count (see the module docstring)."""
    from stages.results import PersonArrays

    dev = pipe.device
    boxes = person_boxes(n, frames)
    chunks = synthetic_chunks(boxes, chunk_frames)
    tracks = make_tracks(boxes)
    info = video_info(frames)
    pf = n * frames
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    # warm-up at this count's GEM shapes (one regression pass); needs keypoints/features of the right length
    zero = {"kp2d": np.zeros((frames, 17, 3), np.float32), "f_imgseq": np.zeros((frames, 1024), np.float32)}
    zeros = PersonArrays({}, {p.person_id: zero for p in tracks.people})
    pipe.estimate(tracks, zeros, zeros, pipe.regression)

    sampler = GpuSampler(dev) if dev.type == "cuda" else None
    with sampler if sampler is not None else contextlib.nullcontext():
        t_perc, (kp, ft) = timed(dev, lambda: pipe.perceive(info, tracks, chunks))
        t_est, _ = timed(dev, lambda: pipe.estimate(tracks, kp, ft, pipe.ddim))
    busy, n_samples = sampler.busy_fraction() if sampler is not None else (None, 0)
    e2e = {**_rate(pf, t_perc + t_est), "perception_s": round(t_perc, 4), "estimate_s": round(t_est, 4)}
    log(f"people {n}: end-to-end {e2e['person_frames_per_s']} person-frames/s ({pf} in {e2e['seconds']} s)")

    secs = pipe.stage_pass(tracks, chunks)
    secs["estimate"] = t_est  # the end-to-end run's estimate part, timed on its own
    secs["estimate_regression"], _ = timed(dev, lambda: pipe.estimate(tracks, kp, ft, pipe.regression))
    stages = {}
    if decode is not None:
        stages["decode"] = _rate(pf, frames / decode["frames_per_s"])
    stages.update({k: _rate(pf, v) for k, v in secs.items()})
    log(
        f"people {n}: "
        + ", ".join(f"{k} {v['person_frames_per_s']}" for k, v in stages.items())
        + " person-frames/s"
    )
    out = {"people": n, "frames": frames, "end_to_end": e2e, "stages": stages}
    out["gpu_busy_fraction"] = None if busy is None else round(busy, 3)
    out["gpu_util_samples"] = n_samples
    if sampler is not None and sampler.note:
        out["gpu_note"] = sampler.note
    if dev.type == "cuda":
        out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
    return out


def warm_up(pipe: Pipeline, n: int, frames: int, chunk_frames: int) -> float:
    """Untimed pass of the crop/keypoint/feature code: first chunk, n people (CPU: one person-frame)."""
    k = 1 if pipe.device.type == "cpu" else min(frames, chunk_frames)
    n = 1 if pipe.device.type == "cpu" else n
    boxes = person_boxes(n, max(k, 2))
    tracks = make_tracks(boxes)
    chunks = synthetic_chunks(boxes[:, :k], k)
    s, _ = timed(pipe.device, lambda: pipe.stage_pass(tracks, chunks))
    return s


def _total(results: list[dict], key: Callable[[dict], dict | None]) -> dict | None:
    parts = [key(r) for r in results]
    parts = [p for p in parts if p is not None]
    if not parts:
        return None
    return _rate(sum(p["person_frames"] for p in parts), sum(p["seconds"] for p in parts))


def environment(device: torch.device) -> dict:
    env = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch_cuda": torch.version.cuda,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "loadavg_start": [round(v, 2) for v in os.getloadavg()],
    }
    if device.type == "cuda":
        env["cudnn"] = torch.backends.cudnn.version()
        env["gpu_capability"] = list(torch.cuda.get_device_capability(device))
    return env


def _parse_people(text: str) -> list[int]:
    people = sorted({int(v) for v in text.split(",") if v.strip()})
    if not people or people[0] < 1:
        raise argparse.ArgumentTypeError("--people: comma-separated counts >= 1, e.g. 1,2,5")
    return people


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument(
        "--precision",
        choices=["default", "fp32", "bf16"],
        default="default",
        help="default: each network at the pipeline's default precision on this device",
    )
    p.add_argument("--cpu-bf16", action="store_true", help="with bf16 on a CPU: torch.autocast('cpu')")
    p.add_argument("--frames", type=int, help="frames of the clip (default: CUDA 300, CPU 4)")
    p.add_argument("--people", type=_parse_people, help="people counts (default: CUDA 1,2,5; CPU 1,2)")
    p.add_argument("--chunk-frames", type=int, default=32, help="frames per decoded chunk (pipeline default)")
    p.add_argument("--batch", type=int, default=32, help="ViTPose/HMR2 crops per pass (stage default 32)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps of the estimate stage (default 50)")
    p.add_argument("--decode-frames", type=int, help="frames of the decode clip (default: CUDA 120, CPU 30)")
    p.add_argument("--budget-s", type=float, help="skip people counts predicted to end past this (seconds)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--json", action="store_true", help="last line of stdout: one JSON object")
    args = p.parse_args(argv)
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    cuda = device.type == "cuda"
    frames = args.frames or (300 if cuda else 4)
    people = args.people or ([1, 2, 5] if cuda else [1, 2])
    decode_frames = args.decode_frames or (120 if cuda else 30)
    if frames < 2 or args.chunk_frames < 1 or args.batch < 1 or args.steps < 1:
        p.error("--frames must be >= 2; --chunk-frames, --batch, --steps >= 1")

    # a `timeout` (SIGTERM) still runs the finally blocks: samplers and temp dirs are cleaned up
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cpu":
        torch.set_flush_denormal(True)  # random weights: keep denormals from slowing the CPU down
        # numpy's finfo then finds no subnormals and warns about it on first use
        warnings.filterwarnings("ignore", message="The value of the smallest subnormal")
    notes: list[str] = []
    has_ffmpeg_python = _ffmpeg_python(notes)

    def log(line: str) -> None:
        print(line, flush=True)

    report: dict[str, Any] = {
        "benchmark": "throughput",
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if cuda else None,
        "precision": args.precision,
        "torch": torch.__version__,
        "frames": frames,
        "people": people,
        "image_wh": [W, H],
        "chunk_frames": args.chunk_frames,
        "batch": args.batch,
        "ddim_steps": args.steps,
        "tf32": {
            "cuda_matmul": torch.backends.cuda.matmul.allow_tf32,
            "cudnn": torch.backends.cudnn.allow_tf32,
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
        },
        "environment": environment(device),
    }
    bf16 = None if args.precision == "default" else (args.precision == "bf16" and cuda)
    cpu_bf16 = args.precision == "bf16" and not cuda and args.cpu_bf16
    if args.precision == "bf16" and not cuda and not cpu_bf16:
        notes.append("bf16 not applicable on CPU: the models autocast to bf16 on CUDA only (--cpu-bf16)")
        report.update(status="not_applicable", end_to_end=None, stages={}, per_people={}, decode_fps=None,
                      gpu_busy_fraction=None, peak_gpu_mb=None, notes=notes)  # fmt: skip
        log(notes[-1])
        if args.json:
            print(json.dumps(report), flush=True)
        return 0
    report["precision_applied"] = "bf16 (cpu autocast)" if cpu_bf16 else args.precision

    t_start = time.perf_counter()
    decode = measure_decode(decode_frames, args.chunk_frames, notes) if has_ffmpeg_python else None
    if decode is not None:
        log(f"decode: {decode['frames_per_s']} frames/s ({decode['frames']} frames, {decode['clip']})")
    t0 = time.perf_counter()
    pipe = Pipeline(device, bf16, cpu_bf16, args.batch, args.steps)
    report["bf16_per_network"] = pipe.applied
    report["build_s"] = round(time.perf_counter() - t0, 1)
    report["warmup_s"] = round(warm_up(pipe, max(people), frames, args.chunk_frames), 1)
    log(f"models built in {report['build_s']} s, warm-up {report['warmup_s']} s")

    results: list[dict] = []
    skipped: list[int] = []
    t_measure = time.perf_counter()
    per_pf_s: float | None = None  # measured seconds per person-frame of the previous count
    for n in people:
        spent = time.perf_counter() - t_start
        if (
            args.budget_s is not None
            and per_pf_s is not None
            and spent + per_pf_s * n * frames > args.budget_s
        ):
            skipped.append(n)
            continue
        t0 = time.perf_counter()
        results.append(measure_people(pipe, n, frames, args.chunk_frames, decode, log))
        per_pf_s = (time.perf_counter() - t0) / (n * frames)
    if skipped:
        notes.append(f"people {skipped} skipped: predicted to end past --budget-s {args.budget_s}")

    busy = [
        (r["gpu_busy_fraction"], r["end_to_end"]["seconds"])
        for r in results
        if r["gpu_busy_fraction"] is not None
    ]
    report.update(
        status="ok" if results else "nothing_measured",
        end_to_end=_total(results, lambda r: r["end_to_end"]),
        stages={s: t for s in STAGES if (t := _total(results, lambda r, s=s: r["stages"].get(s)))},
        per_people={str(r["people"]): r for r in results},
        decode_fps=decode["frames_per_s"] if decode else None,
        decode=decode,
        gpu_busy_fraction=round(sum(b * s for b, s in busy) / sum(s for _, s in busy), 3) if busy else None,
        peak_gpu_mb=round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if cuda else None,
        measure_s=round(time.perf_counter() - t_measure, 1),
        total_s=round(time.perf_counter() - t_start, 1),
        skipped_people=skipped,
        notes=notes,
    )  # fmt: skip
    if cuda and results:
        report["peak_gpu_mb"] = max(report["peak_gpu_mb"], *(r["peak_gpu_mb"] for r in results))
    if cuda and not busy:
        notes.extend(r["gpu_note"] for r in results[:1] if "gpu_note" in r)
    report["environment"]["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    e2e = report["end_to_end"]
    if e2e:
        log(
            f"end-to-end, all counts: {e2e['person_frames_per_s']} person-frames/s; run {report['total_s']} s"
        )
    for note in notes:
        log(f"note: {note}")
    if args.json:
        print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
