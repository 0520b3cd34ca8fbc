"""Decode-memory benchmark: peak RSS of a full ``iter_chunks`` pass must not grow with clip length.

Generates a short and a long 1080p 30 fps H.264 clip (testsrc2, libx264 ultrafast), then decodes each in a
fresh Python process (``--child``) with ``iter_chunks(info, chunk_frames=32, fps=30)`` and reports:

* ``python_peak_mb``: peak RSS of that Python process (``getrusage(RUSAGE_SELF).ru_maxrss``), the part
  bounded by ``chunk_frames``;
* ``ffmpeg_peak_mb``: peak RSS of the ffmpeg decoder it spawned (sampled with psutil every 20 ms, so a
  slight underestimate); ``children_peak_mb`` is the kernel's exact max over all reaped children
  (ffprobe included);
* frames decoded, wall time and decode fps;
* ``ratio``: python peak of the longest clip / python peak of the shortest (target <= 1.3), and the same
  for python + ffmpeg.

Usage::

    python benchmarks/decode_memory.py [--workdir DIR] [--durations 10,120] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def make_test_clip(path: Path, seconds: float, size: str = "1920x1080", fps: int = 30) -> Path:
    """testsrc2 H.264 clip; reused when already present (generation dominates the benchmark's time)."""
    if path.exists() and path.stat().st_size > 0:
        return path
    tmp = path.with_suffix(".partial.mp4")
    cmd = ["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-f", "lavfi"]
    cmd += ["-i", f"testsrc2=size={size}:rate={fps}:duration={seconds}"]
    cmd += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-movflags", "+faststart"]
    subprocess.run([*cmd, str(tmp)], check=True)
    tmp.rename(path)
    return path


def _peak_ffmpeg_rss(stop: threading.Event, out: dict[str, float]) -> None:
    # Sample the ffmpeg grandchild(ren) of this process; they come and go with iter_chunks.
    import psutil

    me = psutil.Process()
    while not stop.is_set():
        for p in me.children(recursive=True):
            try:
                if p.name() == "ffmpeg":
                    out["ffmpeg"] = max(out.get("ffmpeg", 0.0), p.memory_info().rss / 2**20)
            except psutil.Error:
                pass
        stop.wait(0.02)


def child(path: Path, chunk_frames: int, fps: float | None) -> dict[str, float]:
    """Decode ``path`` once; runs inside the fresh process. Returns the measurements."""
    sys.path.insert(0, str(REPO))
    import numpy as np

    from stages.video import iter_chunks, probe

    rss_after_import = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    info = probe(path)
    peaks: dict[str, float] = {}
    stop = threading.Event()
    sampler = threading.Thread(target=_peak_ffmpeg_rss, args=(stop, peaks), daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    n = 0
    checksum = 0
    for chunk in iter_chunks(info, chunk_frames=chunk_frames, fps=fps):
        n += len(chunk)
        checksum += int(np.asarray(chunk.frames[:, ::64, ::64]).sum())  # touch the data like a consumer
    wall = time.perf_counter() - t0
    stop.set()
    sampler.join()
    return {
        "clip_s": info.duration_s,
        "source_frames": info.frame_count,
        "frames": n,
        "wall_s": wall,
        "decode_fps": n / wall if wall > 0 else float("nan"),
        "python_baseline_mb": rss_after_import,
        "python_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "ffmpeg_peak_mb": peaks.get("ffmpeg", float("nan")),
        "children_peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "checksum": checksum,
    }


def run_child(path: Path, chunk_frames: int, fps: float | None) -> dict[str, float]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(path)]
    cmd += ["--chunk-frames", str(chunk_frames), "--fps", str(fps if fps else 0)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=REPO).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, help="where to write/reuse the clips (default: a temp dir)")
    ap.add_argument("--durations", default="10,120", help="clip lengths in seconds, comma-separated")
    ap.add_argument("--size", default="1920x1080")
    ap.add_argument("--chunk-frames", type=int, default=32)
    ap.add_argument("--fps", type=float, default=30.0, help="resample rate; 0 = no resampling")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    fps = args.fps or None

    if args.child:
        print(json.dumps(child(args.child, args.chunk_frames, fps)))
        return 0

    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="decode_memory_")
        workdir = Path(tmp.name)
    else:
        workdir = args.workdir
        workdir.mkdir(parents=True, exist_ok=True)
    try:
        results = {}
        for d in [float(x) for x in args.durations.split(",")]:
            t0 = time.perf_counter()
            clip = make_test_clip(workdir / f"testsrc2_{args.size}_{d:g}s.mp4", d, args.size)
            gen_s = time.perf_counter() - t0
            r = run_child(clip, args.chunk_frames, fps)
            r["generate_s"] = gen_s
            r["file_mb"] = clip.stat().st_size / 2**20
            results[f"{d:g}s"] = r
            if not args.json:
                speed = f"{r['frames']:>5} frames in {r['wall_s']:6.1f} s ({r['decode_fps']:5.1f} fps)"
                py = (
                    f"python peak {r['python_peak_mb']:7.1f} MB (after imports {r['python_baseline_mb']:.1f})"
                )
                print(
                    f"{d:>6g} s clip: {speed} | {py} | ffmpeg peak {r['ffmpeg_peak_mb']:7.1f} MB", flush=True
                )
        keys = list(results)
        first, last = results[keys[0]], results[keys[-1]]
        summary = {
            "size": args.size,
            "chunk_frames": args.chunk_frames,
            "fps": fps,
            "clips": results,
            "ratio_python_peak": last["python_peak_mb"] / first["python_peak_mb"],
            "ratio_total_peak": (last["python_peak_mb"] + last["ffmpeg_peak_mb"])
            / (first["python_peak_mb"] + first["ffmpeg_peak_mb"]),
            "target_ratio": 1.3,
        }
        summary["ok"] = summary["ratio_python_peak"] <= 1.3
        if args.json:
            print(json.dumps(summary, indent=2))
        else:
            print(
                f"peak ratio {keys[-1]}/{keys[0]}: python {summary['ratio_python_peak']:.3f}, "
                f"python+ffmpeg {summary['ratio_total_peak']:.3f} (target <= 1.3) -> "
                + ("OK" if summary["ok"] else "FAIL")
            )
        return 0 if summary["ok"] else 1
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
