"""Synthetic test media, written with the ffmpeg binary (and OpenCV for still images).

Everything here is small and quick to generate so that any test can make the clips it needs in ``tmp_path``:

* ``make_clip``: a video of a test pattern (or a plain colour) with optional moving boxes standing in for
  people, display rotation, variable frame rate, audio and a start timecode.
* ``make_image_sequence``: a folder of numbered PNG/JPEG frames whose content encodes the frame number.
* ``make_bad_inputs``: one file per failure mode the probe/decode code must report.

Conventions: sizes are ``(width, height)`` of the stored (unrotated) picture; ``rotation`` is the clockwise
angle a player turns the picture for display, as in ``stages.video.VideoInfo.rotation``.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

FFMPEG = "ffmpeg"
FFPROBE = "ffprobe"


@dataclass(frozen=True)
class Box:
    """A filled rectangle moving at constant speed: a stand-in for a person.

    Position of the top-left corner at time t (seconds) is ``(x + vx * t, y + vy * t)`` in pixels of the
    stored picture; ``color`` is any ffmpeg colour name or ``0xRRGGBB``.
    """

    x: float
    y: float
    w: int
    h: int
    vx: float = 0.0
    vy: float = 0.0
    color: str = "red"


def default_people(size: tuple[int, int]) -> list[Box]:
    """Two boxes crossing the frame in opposite directions, scaled to ``size``."""
    w, h = size
    bw, bh = max(8, w // 8), max(16, h // 3)
    return [
        Box(x=0.1 * w, y=0.4 * h, w=bw, h=bh, vx=0.25 * w, vy=0.0, color="red"),
        Box(x=0.8 * w, y=0.3 * h, w=bw, h=bh, vx=-0.2 * w, vy=0.05 * h, color="blue"),
    ]


def box_at(b: Box, t: np.ndarray) -> np.ndarray:
    """(T,4) xyxy of a drawn box at times t (stored picture coordinates)."""
    x1 = b.x + b.vx * t
    y1 = b.y + b.vy * t
    return np.stack([x1, y1, x1 + b.w, y1 + b.h], axis=1)


def _rot90_cw(xyxy: np.ndarray, stored_h: int) -> np.ndarray:
    """Boxes of the stored picture -> boxes of the picture displayed after a 90 degree clockwise turn."""
    x1, y1, x2, y2 = xyxy.T
    return np.stack([stored_h - y2, x1, stored_h - y1, x2], axis=1)


def detection_rows(people: list[Box], times: np.ndarray, rot_h: int | None = None) -> list[dict]:
    rows = []
    for b in people:
        boxes = box_at(b, times)
        if rot_h is not None:
            boxes = _rot90_cw(boxes, rot_h)
        for f, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
            rows.append({"frame": f, "x1": x1, "y1": y1, "x2": x2, "y2": y2, "score": 0.9})
    return rows


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}\n{proc.stderr.decode(errors='replace')[-2000:]}")


def _rate(fps: float | str) -> Fraction:
    return Fraction(str(fps)).limit_denominator(100000)


def vfr_kept_frames(seconds: float, fps: float | str) -> np.ndarray:
    """Source frame numbers kept by ``make_clip(vfr=True)``.

    The first third of the clip keeps every frame, the rest keeps every 3rd frame (n % 3 == 0), so the rate
    drops from ``fps`` to ``fps / 3``. Timestamps of the kept frames are ``kept / fps`` seconds.
    """
    r = _rate(fps)
    n = int(math.floor(seconds * r + 1e-9))
    frames = np.arange(n)
    t = frames / float(r)
    return frames[(t < seconds / 3.0) | (frames % 3 == 0)]


def _rotate_metadata(src: Path, dst: Path, rotation: int, timecode: str | None) -> None:
    """Stream-copy ``src`` to ``dst`` with a display rotation of ``rotation`` degrees clockwise.

    ffmpeg 5.1 turns the legacy ``rotate`` tag into a display matrix whose ffprobe ``rotation`` equals the
    tag, i.e. counter-clockwise, so a clockwise 90 needs ``rotate=270`` there; ffmpeg 4 read the tag as
    clockwise and ffmpeg >= 6 prefers ``-display_rotation`` (counter-clockwise). The candidates are tried in
    turn and the result is checked with ffprobe.
    """
    ccw = (-rotation) % 360
    tc = ["-timecode", timecode] if timecode else []
    attempts = [
        ["-i", str(src), "-map", "0", "-c", "copy", "-metadata:s:v:0", f"rotate={ccw}", *tc],
        ["-i", str(src), "-map", "0", "-c", "copy", "-metadata:s:v:0", f"rotate={rotation}", *tc],
        ["-display_rotation", str(ccw), "-i", str(src), "-map", "0", "-c", "copy", *tc],
    ]
    for args in attempts:
        try:
            _run([FFMPEG, "-nostdin", "-y", "-loglevel", "error", *args, str(dst)])
        except RuntimeError:
            continue
        if probe_rotation(dst) == rotation:
            return
    raise RuntimeError(f"could not write rotation {rotation} with this ffmpeg")


def probe_rotation(path: Path) -> int:
    """Clockwise display rotation of the first video stream, read straight from ffprobe's display matrix."""
    out = subprocess.run(
        [FFPROBE, "-v", "error", "-select_streams", "v:0", "-show_streams", "-of", "json", str(path)],
        capture_output=True,
        check=True,
    ).stdout
    stream = json.loads(out)["streams"][0]
    for sd in stream.get("side_data_list") or []:
        if "rotation" in sd:
            return int(-float(sd["rotation"])) % 360
    return int(float((stream.get("tags") or {}).get("rotate", 0))) % 360


def make_clip(
    path: Path,
    *,
    seconds: float = 2.0,
    fps: float | str = 30,
    size: tuple[int, int] = (320, 240),
    rotation: int = 0,
    vfr: bool = False,
    audio: bool = False,
    codec: str = "libx264",
    people: list[Box] | None = None,
    background: str = "testsrc2",
    timecode: str | None = None,
    faststart: bool = True,
) -> Path:
    """Write a synthetic clip and return its path; the container follows the suffix of ``path``.

    Args:
        fps: frame rate, a number or an exact ``"num/den"`` string such as ``"30000/1001"``.
        size: (width, height) of the stored picture.
        rotation: clockwise display rotation (0/90/180/270) written as container metadata; the pixels are
            stored unrotated, exactly like a phone held upright records them.
        vfr: keep every frame in the first third, then only every 3rd (see ``vfr_kept_frames``).
        audio: add a 440 Hz AAC (Opus for .webm) track.
        codec: ffmpeg video encoder (``libx264``, ``mpeg4``, ``libvpx-vp9``, ``mjpeg``, ``ffv1``...).
        people: moving boxes drawn over the background; ``None`` for none.
        background: ``"testsrc2"`` or an ffmpeg colour ("black", "0x336699") for a plain clip.
        timecode: SMPTE start timecode such as ``"01:00:00:00"`` (mp4/mov write a tmcd track).
        faststart: mp4/mov only: put the index (moov) before the media data.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    r = _rate(fps)
    rate = f"{r.numerator}/{r.denominator}"
    if background == "testsrc2":
        graph = [f"testsrc2=size={w}x{h}:rate={rate}:duration={seconds}[bg0]"]
    else:
        graph = [f"color=c={background}:size={w}x{h}:rate={rate}:duration={seconds}[bg0]"]
    last = "bg0"
    for i, b in enumerate(people or []):
        # overlay (not drawbox) because overlay evaluates x/y per frame with t = time in seconds.
        graph.append(f"color=c={b.color}:size={b.w}x{b.h}:rate={rate}:duration={seconds}[p{i}]")
        graph.append(
            f"[{last}][p{i}]overlay=x='{b.x}+{b.vx}*t':y='{b.y}+{b.vy}*t':eval=frame:shortest=1[bg{i + 1}]"
        )
        last = f"bg{i + 1}"
    post = []
    if vfr:
        post.append(f"select='lt(t\\,{seconds / 3.0})+not(mod(n\\,3))'")
    post.append("format=yuv420p" if codec in ("libx264", "mpeg4", "libvpx-vp9", "libvpx") else "null")
    graph.append(f"[{last}]{','.join(post)}[vout]")

    suffix = path.suffix.lower()
    cmd = [FFMPEG, "-nostdin", "-y", "-loglevel", "error", "-filter_complex", ";".join(graph)]
    if audio:
        cmd += ["-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}"]
    cmd += ["-map", "[vout]"]
    if audio:
        cmd += ["-map", "0:a", "-c:a", "libopus" if suffix == ".webm" else "aac", "-shortest"]
    # passthrough keeps the select filter's gaps (VFR) instead of re-filling them to a constant rate.
    cmd += ["-c:v", codec, "-fps_mode", "passthrough"]
    if codec == "libx264":
        cmd += ["-preset", "veryfast"]
    if timecode and suffix in (".mp4", ".mov", ".m4v", ".mxf", ".mkv"):
        cmd += ["-timecode", timecode]
    if faststart and suffix in (".mp4", ".mov", ".m4v"):
        cmd += ["-movflags", "+faststart"]
    if rotation % 360:
        tmp = path.with_name(path.stem + ".unrotated" + path.suffix)
        _run([*cmd, str(tmp)])
        _rotate_metadata(tmp, path, rotation % 360, timecode)
        tmp.unlink()
    else:
        _run([*cmd, str(path)])
    return path


def image_frame(i: int, size: tuple[int, int]) -> np.ndarray:
    """Content of frame ``i`` of ``make_image_sequence``: (H, W, 3) uint8 RGB.

    The background colour encodes the frame number (R = 10*i mod 256, G = 255 - R) and a white square
    moves right by 4 px per frame, so order and identity of decoded frames can be checked exactly.
    """
    w, h = size
    img = np.zeros((h, w, 3), np.uint8)
    red = (10 * i) % 256
    img[..., 0] = red
    img[..., 1] = 255 - red
    img[..., 2] = 64
    s = max(4, min(w, h) // 6)
    x = (4 * i) % max(1, w - s)
    img[h // 2 - s // 2 : h // 2 - s // 2 + s, x : x + s] = 255
    return img


def make_image_sequence(
    folder: Path, n: int, size: tuple[int, int] = (160, 120), *, ext: str = ".png", prefix: str = "frame"
) -> list[Path]:
    """Write ``n`` frames ``<prefix><i><ext>`` (i = 1..n, no zero padding, so only natural sort orders them).

    Frame file ``<prefix><i>`` holds ``image_frame(i - 1, size)``. Returns the paths in frame order.
    """
    import cv2

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"{prefix}{i + 1}{ext}"
        rgb = image_frame(i, size)
        if not cv2.imwrite(str(p), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
            raise RuntimeError(f"cv2 could not write {p}")
        paths.append(p)
    return paths


def _corrupt_middle(src: Path, dst: Path, fraction: float = 0.5) -> None:
    """Copy ``src`` with a span of its second half overwritten by a byte pattern.

    For a faststart mp4 the index stays intact, so the file probes normally, but the packets in that span
    no longer decode.
    """
    data = bytearray(src.read_bytes())
    start = len(data) // 2
    stop = start + int(len(data) * fraction / 2)
    data[start:stop] = bytes((i * 37 + 11) % 256 for i in range(stop - start))
    dst.write_bytes(bytes(data))


def make_bad_inputs(folder: Path) -> dict[str, Path]:
    """One small file per failure mode (and a few unusual but valid clips), keyed by name.

    * ``zero_byte``: an empty ``.mp4``.
    * ``text_as_mp4``: a text file named ``.mp4``.
    * ``truncated``: mp4 with its index at the end, cut in half: the index is gone ("moov atom not found").
    * ``truncated_faststart``: faststart mp4 cut in half: probes, but half the packets are missing.
    * ``corrupt``: faststart mp4 whose media data is overwritten in the second half: index and packets
      are intact, the decoder fails on the damaged frames.
    * ``audio_only``: ``.m4a`` with a sine AAC stream and no video.
    * ``no_frames``: ``.mkv`` with a video stream that has no packets (and an audio stream).
    * ``one_frame``: a 1-frame mp4.
    * ``rotated``: phone-like portrait clip, 160x120 stored with 90 degrees clockwise display rotation.
    * ``vfr``: variable frame rate clip (see ``vfr_kept_frames``), 2 s at 30 fps nominal.
    * ``no_person``: a valid plain-colour clip with nothing in it.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}

    out["zero_byte"] = folder / "zero_byte.mp4"
    out["zero_byte"].write_bytes(b"")

    out["text_as_mp4"] = folder / "text_as_mp4.mp4"
    out["text_as_mp4"].write_text("this is not a video\n" * 20)

    small = (160, 120)
    end = make_clip(folder / "_moov_end.mp4", seconds=2.0, size=small, faststart=False)
    data = end.read_bytes()
    out["truncated"] = folder / "truncated.mp4"
    out["truncated"].write_bytes(data[: len(data) // 2])
    end.unlink()

    fast = make_clip(folder / "_faststart.mp4", seconds=2.0, size=small, faststart=True)
    data = fast.read_bytes()
    out["truncated_faststart"] = folder / "truncated_faststart.mp4"
    out["truncated_faststart"].write_bytes(data[: len(data) // 2])
    out["corrupt"] = folder / "corrupt.mp4"
    _corrupt_middle(fast, out["corrupt"])
    fast.unlink()

    out["audio_only"] = folder / "audio_only.m4a"
    _run(
        [FFMPEG, "-nostdin", "-y", "-loglevel", "error", "-f", "lavfi", "-i", "sine=frequency=440:duration=1"]
        + ["-c:a", "aac", str(out["audio_only"])]
    )

    # A video track with no packets at all: encode video+audio, then drop every video packet on remux.
    av = make_clip(folder / "_av.mkv", seconds=0.5, size=small, audio=True)
    out["no_frames"] = folder / "no_frames.mkv"
    _run(
        [FFMPEG, "-nostdin", "-y", "-loglevel", "error", "-i", str(av), "-map", "0", "-c", "copy"]
        + ["-bsf:v", "noise=drop=1", str(out["no_frames"])]
    )
    av.unlink()

    out["one_frame"] = make_clip(folder / "one_frame.mp4", seconds=1 / 30, fps=30, size=small)
    out["rotated"] = make_clip(
        folder / "rotated.mp4", seconds=1.0, size=small, rotation=90, people=default_people(small)
    )
    out["vfr"] = make_clip(folder / "vfr.mp4", seconds=2.0, fps=30, size=small, vfr=True)
    out["no_person"] = make_clip(folder / "no_person.mp4", seconds=1.0, size=small, background="0x336699")
    return out


def ffmpeg_available() -> bool:
    """True when both ffmpeg and ffprobe are on PATH (tests skip media generation otherwise)."""
    return shutil.which(FFMPEG) is not None and shutil.which(FFPROBE) is not None
