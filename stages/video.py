"""Probe and stream-decode clips: video files (via the ffmpeg/ffprobe binaries) and image-sequence folders.

Conventions used throughout:

* Frames are ``uint8`` RGB arrays shaped ``(H, W, 3)`` in *display* orientation: the rotation stored in the
  container (phone portrait clips) is already applied, so ``W x H`` is what a player shows.
* Frame numbers are 0-based in presentation order.
* ``time_s`` values are seconds relative to the first presented frame (the first frame is at 0.0).
* Pixel aspect ratio is not corrected: frames keep their stored pixel grid (square pixels in practice).

``probe`` reads timestamps from packets (cheap, no decoding) to get the real frame count and rate;
``iter_chunks`` runs a single ffmpeg process per clip and reads fixed-size blocks from its pipe, so memory
stays bounded by ``chunk_frames`` no matter how long the clip is (about two chunks: the one the consumer
holds and the one being filled; see ``benchmarks/decode_memory.py``).
"""

from __future__ import annotations

import collections
import math
import re
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import ffmpeg
import numpy as np

# Besides the usual containers: camcorder AVCHD (.mts/.m2ts), broadcast .ts/.mpg, older .wmv/.flv/.3gp.
_VIDEO_EXT_LIST = ".mp4 .mov .m4v .avi .mkv .webm .mxf .mts .m2ts .ts .mpg .mpeg .wmv .flv .3gp .ogv"
VIDEO_EXTS = frozenset(_VIDEO_EXT_LIST.split())
IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg"})

FFMPEG = "ffmpeg"
FFPROBE = "ffprobe"

_TEMP_SUFFIXES = frozenset({".tmp", ".part", ".partial", ".crdownload", ".download"})
# Image codec names as ffprobe would report them, so ``VideoInfo.codec`` reads the same for both kinds.
_IMAGE_CODECS = {".png": "png", ".jpg": "mjpeg", ".jpeg": "mjpeg"}
# Tolerance (seconds) when comparing frame distances in the nearest-frame rule; it absorbs float rounding
# of timestamps so that exact ties (e.g. 25 -> 30 fps) always resolve to the earlier frame.
_TIE_EPS = 1e-5


class MediaError(Exception):
    """The clip cannot be used; ``str(e)`` is a one-line, human reason for the run report."""


# --------------------------------------------------------------------------------------------------------
# Files and folders


def is_hidden_or_temp(path: Path) -> bool:
    """True for files a batch run must skip: hidden, AppleDouble, editor backups and partial downloads.

    Matches names starting with ``.`` (this includes macOS ``._x`` AppleDouble files) or ``~$`` (Office
    lock files), names ending with ``~``, and the suffixes ``.tmp .part .partial .crdownload .download``.
    """
    name = Path(path).name
    if name.startswith((".", "~$")) or name.endswith("~"):
        return True
    return Path(name).suffix.lower() in _TEMP_SUFFIXES


def _natural_key(name: str) -> list[Any]:
    # Digit runs compare as numbers so that frame2 sorts before frame10.
    parts = re.split(r"(\d+)", name.lower())
    return [(0, int(p), p) if p.isdigit() else (1, 0, p) for p in parts]


def list_image_frames(folder: Path) -> list[Path]:
    """Image files (``IMAGE_EXTS``, any case) directly inside ``folder``, skipping hidden/temp files.

    Returns the paths in natural order (``frame2.png`` before ``frame10.png``); not recursive.
    """
    folder = Path(folder)
    frames = [
        p
        for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_EXTS and not is_hidden_or_temp(p) and p.is_file()
    ]
    return sorted(frames, key=lambda p: _natural_key(p.name))


# --------------------------------------------------------------------------------------------------------
# Probe


@dataclass
class VideoInfo:
    """What ``probe`` learned about a clip; JSON-safe through ``to_dict``/``from_dict``.

    Sizes are in pixels; ``width``/``height`` are the display size (the size of decoded frames), i.e.
    ``coded_width``/``coded_height`` swapped when ``rotation`` is 90 or 270. Times are in seconds.
    """

    path: str  # absolute path of the file (or of the folder for image sequences)
    kind: Literal["video", "images"]
    container: str | None  # ffprobe format_name, e.g. "mov,mp4,m4a,3gp,3g2,mj2"; None for images
    codec: str | None  # video codec name ("h264", "png", ...)
    pix_fmt: str | None  # stored pixel format (ffprobe); None for images
    width: int  # display width (rotation applied)
    height: int  # display height
    coded_width: int  # frame width as stored (before rotation; not padded to macroblocks)
    coded_height: int
    rotation: int  # clockwise rotation in degrees a player applies for display: 0, 90, 180 or 270
    fps: float  # real average rate (n-1)/(t_last-t_first) from frame timestamps; nominal if n == 1
    fps_nominal: str | None  # ffprobe r_frame_rate "num/den", e.g. "30000/1001"
    vfr: bool  # frame intervals vary beyond timestamp rounding (see _is_vfr)
    frame_count: int  # presented frames, counted from packet timestamps
    duration_s: float  # t_last - t_first + the last frame interval
    start_time_s: float  # presentation time of the first frame in the file's own clock
    timecode: str | None  # SMPTE start timecode "HH:MM:SS:FF" (";" before FF for drop-frame) or None
    has_audio: bool
    size_bytes: int  # file size; summed over all frames for image sequences

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of JSON types (str/int/float/bool/None)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VideoInfo:
        """Inverse of ``to_dict``; unknown keys are ignored so older/newer files still load."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _short_ffmpeg_error(stderr: bytes | str, path: str | None = None) -> str:
    """Condense ffmpeg/ffprobe stderr into one line: unique messages without the ``[demuxer @ 0x..]`` tags."""
    text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else stderr
    msgs: list[str] = []
    for line in text.splitlines():
        line = re.sub(r"^(\[[^\]]*\]\s*)+", "", line.strip())
        if path and line.startswith(path + ":"):
            line = line[len(path) + 1 :].strip()
        if line and line not in msgs:
            msgs.append(line)
    return "; ".join(msgs[-3:]) if msgs else "unknown ffprobe error"


def _fraction(s: Any) -> Fraction | None:
    try:
        f = Fraction(str(s))
    except (ValueError, ZeroDivisionError):
        return None
    return f if f > 0 else None


def _rotation_cw(stream: dict[str, Any]) -> int:
    """Clockwise display rotation of a video stream, normalised to 0/90/180/270.

    ffprobe >= 5 reports the display matrix as ``side_data_list[].rotation``, the *counter-clockwise* angle
    (``av_display_rotation_get``), so a phone portrait clip reads -90. Older ffprobe instead exposes the
    legacy ``rotate`` tag, which is already clockwise.
    """
    for sd in stream.get("side_data_list") or []:
        if "rotation" in sd:
            return int(round(-float(sd["rotation"]) / 90.0)) * 90 % 360
    tag = (stream.get("tags") or {}).get("rotate")
    if tag is not None:
        try:
            return int(round(float(tag) / 90.0)) * 90 % 360
        except ValueError:
            pass
    return 0


def _find_timecode(meta: dict[str, Any]) -> str | None:
    # The start timecode can sit on the video stream, on a tmcd data track, or at format level.
    candidates = [s for s in meta.get("streams", []) if s.get("codec_type") == "video"]
    candidates += [s for s in meta.get("streams", []) if s.get("codec_type") != "video"]
    candidates.append(meta.get("format", {}))
    for obj in candidates:
        tags = obj.get("tags") or {}
        for k, v in tags.items():
            if k.lower() == "timecode" and re.fullmatch(r"\d{2}:\d{2}:\d{2}[:;.]\d{2,3}", str(v).strip()):
                return str(v).strip()
    return None


def _ffprobe_meta(spath: str) -> dict[str, Any]:
    """ffprobe's format and stream description (JSON) of a file."""
    try:
        return ffmpeg.probe(spath, cmd=FFPROBE, v="error")
    except ffmpeg.Error as e:
        raise MediaError(f"not a readable media file: {_short_ffmpeg_error(e.stderr, spath)}") from None


def _main_video_stream(meta: dict[str, Any]) -> dict[str, Any] | None:
    # First video stream that is not embedded cover art (what ffmpeg's "V:0" selects when decoding).
    for s in meta.get("streams", []):
        if s.get("codec_type") == "video" and not (s.get("disposition") or {}).get("attached_pic"):
            return s
    return None


@dataclass
class _Packets:
    ticks: np.ndarray  # (n,) int64 presentation timestamps in stream time-base ticks, sorted
    time_base: Fraction
    last_duration: int  # duration in ticks of the last presented packet (0 if unknown)
    n_listed: int  # packets the demuxer returned, including discarded ones
    errors: str  # ffprobe's condensed stderr ("" when clean)


def _ffprobe_entries(path: str, stream_index: int, entries: str, fmt: str) -> subprocess.CompletedProcess:
    """Run ffprobe ``-show_entries`` on one stream; raise MediaError if it fails.

    ffmpeg-python's probe() forces JSON and drops stderr; we need stderr ("partial file") and a compact line
    format for clips with hundreds of thousands of packets, so this runs ffprobe directly.
    """
    cmd = [FFPROBE, "-v", "error", "-select_streams", str(stream_index), "-show_entries", entries]
    proc = subprocess.run([*cmd, "-of", fmt, path], capture_output=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise MediaError(f"not a readable media file: {_short_ffmpeg_error(proc.stderr, path)}")
    return proc


def _probe_packets(path: str, stream_index: int) -> _Packets:
    """Presentation timestamps of every packet of one stream, without decoding.

    Packets flagged ``D`` (discard: outside the edit list, e.g. encoder priming frames) are skipped because
    the decoder never presents them. Packets are in decode order, so timestamps are sorted to get
    presentation order. If some packets carry no pts (raw streams, some AVI), falls back to decoding with
    ``-show_frames`` and using ``best_effort_timestamp``.
    """
    proc = _ffprobe_entries(path, stream_index, "stream=time_base:packet=pts,duration,flags", "compact=p=0")
    tb: Fraction | None = None
    pts: list[int] = []
    durations: list[int] = []
    missing = 0
    n_listed = 0
    for line in proc.stdout.decode("utf-8", "replace").splitlines():
        kv = dict(item.split("=", 1) for item in line.split("|") if "=" in item)
        if not kv:
            continue  # ffprobe prints blank lines around sections
        if "time_base" in kv and "pts" not in kv:
            tb = _fraction(kv["time_base"])
            continue
        n_listed += 1
        if "D" in kv.get("flags", ""):
            continue
        p = kv.get("pts", "N/A")
        if p == "N/A":
            missing += 1
            continue
        pts.append(int(p))
        d = kv.get("duration", "N/A")
        durations.append(int(d) if d not in ("N/A", "") else 0)
    if tb is None:
        raise MediaError("not a readable media file: ffprobe reported no time base")
    errors = _short_ffmpeg_error(proc.stderr, path) if proc.stderr.strip() else ""
    if missing:
        return _decoded_frame_ticks(path, stream_index, tb, errors, n_listed)
    order = np.argsort(np.asarray(pts, dtype=np.int64), kind="stable")
    ticks = np.asarray(pts, dtype=np.int64)[order]
    last = int(np.asarray(durations, dtype=np.int64)[order][-1]) if len(pts) else 0
    return _Packets(ticks=ticks, time_base=tb, last_duration=last, n_listed=n_listed, errors=errors)


def _decoded_frame_ticks(path: str, stream_index: int, tb: Fraction, errors: str, n_listed: int) -> _Packets:
    # Slow path (decodes every frame) for streams whose packets lack pts.
    proc = _ffprobe_entries(path, stream_index, "frame=best_effort_timestamp", "csv=p=0")
    # One line per frame ("pts," when the frame has side data); side-data lines have no leading number.
    firsts = (line.split(",", 1)[0].strip() for line in proc.stdout.decode().splitlines())
    vals = [int(v) for v in firsts if v.lstrip("-").isdigit()]
    ticks = np.sort(np.asarray(vals, dtype=np.int64))
    return _Packets(ticks=ticks, time_base=tb, last_duration=0, n_listed=n_listed, errors=errors)


def _ticks_to_seconds(ticks: np.ndarray, tb: Fraction) -> np.ndarray:
    # One shared formula for probe and decode so both timelines round identically.
    return ticks.astype(np.float64) * tb.numerator / tb.denominator


def _is_vfr(ticks: np.ndarray, tb: Fraction) -> bool:
    """Variable frame rate test on integer timestamps.

    A constant-rate clip stored in a time base that does not divide the frame interval (29.97 fps in a
    1/1000 or 1/15360 clock) has intervals differing by one tick, so the test allows the larger of 2 ticks
    and 0.5 % of the median interval around the median before calling the clip VFR.
    """
    if len(ticks) < 3:
        return False
    d = np.diff(ticks)
    med = float(np.median(d))
    tol = max(2.0, 0.005 * med)
    return bool(np.any(np.abs(d - med) > tol))


def _fmt_rate(f: Fraction | None) -> str | None:
    return None if f is None else f"{f.numerator}/{f.denominator}"


def _probe_images(folder: Path, image_fps: float) -> VideoInfo:
    import cv2  # imported lazily: a video-only run never pays for OpenCV

    frames = list_image_frames(folder)
    if not frames:
        raise MediaError(f"no image frames ({', '.join(sorted(IMAGE_EXTS))}) in folder")
    # cv2.imread applies the JPEG EXIF orientation, so this is the size decoded frames will have.
    first = cv2.imread(str(frames[0]), cv2.IMREAD_COLOR)
    if first is None:
        raise MediaError(f"cannot read image {frames[0].name}")
    h, w = first.shape[:2]
    n = len(frames)
    ext = frames[0].suffix.lower()
    return VideoInfo(
        path=str(folder.resolve()),
        kind="images",
        container=None,
        codec=_IMAGE_CODECS.get(ext, ext.lstrip(".")),
        pix_fmt=None,
        width=w,
        height=h,
        coded_width=w,  # orientation is already applied by the reader; there is no separate stored size
        coded_height=h,
        rotation=0,
        fps=float(image_fps),
        fps_nominal=_fmt_rate(Fraction(image_fps).limit_denominator(1001)),
        vfr=False,
        frame_count=n,
        duration_s=n / float(image_fps),
        start_time_s=0.0,
        timecode=None,
        has_audio=False,
        size_bytes=sum(p.stat().st_size for p in frames),
    )


def probe(path: Path, *, image_fps: float = 30.0) -> VideoInfo:
    """Describe a video file or an image-sequence folder.

    Frame count, rate and duration come from the presentation timestamps of the video packets rather than
    container metadata: ``nb_frames`` is absent in Matroska/WebM, ignores edit lists, and a nominal rate
    says nothing about variable-rate phone footage.

    Raises:
        MediaError: missing/empty file, not a media file or corrupt (with ffprobe's message), truncated,
            no video stream, or no frames.
    """
    p = Path(path)
    if not p.exists():
        raise MediaError(f"file not found: {p}")
    if p.is_dir():
        return _probe_images(p, image_fps)
    size = p.stat().st_size
    if size == 0:
        raise MediaError("empty file (0 bytes)")
    spath = str(p.resolve())
    meta = _ffprobe_meta(spath)
    has_audio = any(s.get("codec_type") == "audio" for s in meta.get("streams", []))
    vs = _main_video_stream(meta)
    if vs is None:
        raise MediaError("no video stream (audio-only file)" if has_audio else "no video stream")
    pk = _probe_packets(spath, int(vs["index"]))
    n = len(pk.ticks)
    if n == 0:
        why = f" ({pk.errors})" if pk.errors else ""
        raise MediaError(f"no decodable video frames{why}")
    # A file cut short after its index (moov at the front) still probes; the demuxer then reports a
    # "partial file" and returns fewer packets than the index lists. Packets hidden by an edit list (a
    # trimmed phone clip) are still returned, flagged discard, so they count as present here.
    indexed = int(vs.get("nb_frames") or 0)
    if "partial file" in pk.errors or (indexed and pk.n_listed < indexed - max(2, 0.02 * indexed)):
        of = f" of {indexed}" if indexed else ""
        raise MediaError(f"truncated or corrupt: {n}{of} frames present in file ({pk.errors or 'short'})")

    nominal = _fraction(vs.get("r_frame_rate")) or _fraction(vs.get("avg_frame_rate"))
    t = _ticks_to_seconds(pk.ticks, pk.time_base)
    span = float(t[-1] - t[0])
    if n > 1 and span > 0:
        fps = (n - 1) / span
        last_interval = float(t[-1] - t[-2])
    else:
        fps = float(nominal) if nominal else 30.0
        last_interval = 1.0 / fps
    if n == 1 and pk.last_duration > 0:
        last_interval = float(pk.last_duration * pk.time_base)
    rotation = _rotation_cw(vs)
    cw, ch = int(vs.get("width") or 0), int(vs.get("height") or 0)
    w, h = (ch, cw) if rotation in (90, 270) else (cw, ch)
    return VideoInfo(
        path=spath,
        kind="video",
        container=meta.get("format", {}).get("format_name"),
        codec=vs.get("codec_name"),
        pix_fmt=vs.get("pix_fmt"),
        width=w,
        height=h,
        coded_width=cw,
        coded_height=ch,
        rotation=rotation,
        fps=fps,
        fps_nominal=_fmt_rate(nominal),
        vfr=_is_vfr(pk.ticks, pk.time_base),
        frame_count=n,
        duration_s=span + last_interval,
        start_time_s=float(t[0]),
        timecode=_find_timecode(meta),
        has_audio=has_audio,
        size_bytes=size,
    )


def frame_timestamps(path: Path) -> np.ndarray:
    """Presentation timestamps of the video frames of a file, from packets (no decoding).

    Returns:
        (n,) float64 seconds in the file's own clock (not shifted to start at 0), presentation order.
    """
    spath = str(Path(path).resolve())
    vs = _main_video_stream(_ffprobe_meta(spath))
    if vs is None:
        raise MediaError("no video stream")
    pk = _probe_packets(spath, int(vs["index"]))
    return _ticks_to_seconds(pk.ticks, pk.time_base)


# --------------------------------------------------------------------------------------------------------
# Resampling


def resample_plan(times: np.ndarray, fps: float) -> np.ndarray:
    """Source frame for each output sample of a constant-rate timeline.

    Args:
        times: (n,) sorted source timestamps in seconds relative to the first frame (``times[0] == 0``).
        fps: target rate.

    Returns:
        (m,) int64 source indices, one per output sample k at time ``k / fps`` for
        ``k = 0 .. floor(times[-1] * fps + 1e-6)``: the nearest source frame, ties going to the earlier one.
        Sources slower than ``fps`` get duplicated indices, faster ones get skipped indices.
    """
    times = np.asarray(times, dtype=np.float64)
    n = len(times)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    m = int(math.floor(times[-1] * fps + 1e-6)) + 1
    target = np.arange(m, dtype=np.float64) / fps
    # j = first source at or after the target; the answer is j or j-1 (same rule as _Resampler).
    j = np.searchsorted(times, target, side="left")
    prev = np.maximum(j - 1, 0)
    jc = np.minimum(j, n - 1)
    use_prev = (j >= 1) & ((j >= n) | (target - times[prev] <= times[jc] - target + _TIE_EPS))
    return np.where(use_prev, prev, jc).astype(np.int64)


class _Resampler:
    """Online form of ``resample_plan``: feed source times one by one, get the samples they settle.

    ``push(t)`` for source frame j returns ``[(k, src), ...]`` for every output sample k decided once a
    source at or after ``k / fps`` is known (src is j-1 or j). ``finish()`` returns the samples after the
    last source frame. With ``fps=None`` every source frame is one sample.
    """

    def __init__(self, fps: float | None) -> None:
        self.fps = fps
        self.k = 0
        self.j = -1
        self.t_prev = 0.0

    def push(self, t: float) -> list[tuple[int, int]]:
        self.j += 1
        j = self.j
        if self.fps is None:
            return [(j, j)]
        out: list[tuple[int, int]] = []
        while self.k / self.fps <= t:
            tk = self.k / self.fps
            src = j - 1 if j >= 1 and tk - self.t_prev <= t - tk + _TIE_EPS else j
            out.append((self.k, src))
            self.k += 1
        self.t_prev = t
        return out

    def finish(self) -> list[tuple[int, int]]:
        if self.fps is None or self.j < 0:
            return []
        last_k = int(math.floor(self.t_prev * self.fps + 1e-6))
        out = [(k, self.j) for k in range(self.k, last_k + 1)]
        self.k = last_k + 1
        return out


def count_samples(info: VideoInfo, fps: float | None) -> int:
    """Number of frames ``iter_chunks(info, fps=fps)`` yields, for progress bars.

    Uses the probe's timestamps (``(frame_count - 1) / info.fps`` is the last frame's time), so it is exact
    when the decoder presents the frames the packets announce, and can be off by a few for damaged files.
    """
    if fps is None:
        return info.frame_count
    if info.frame_count <= 1:
        return max(info.frame_count, 0)
    span = (info.frame_count - 1) / info.fps
    return int(math.floor(span * fps + 1e-6)) + 1


# --------------------------------------------------------------------------------------------------------
# Decoding


@dataclass
class FrameChunk:
    """A block of consecutive output samples."""

    frames: np.ndarray  # (N, H, W, 3) uint8 RGB, display orientation
    frame_index: np.ndarray  # (N,) int64 source frame numbers, 0-based presentation order
    time_s: np.ndarray  # (N,) float64 source timestamps, seconds relative to the first frame
    sample_index: np.ndarray  # (N,) int64 position on the output timeline (== frame_index without fps)

    def __len__(self) -> int:
        return len(self.frame_index)


class _ChunkBuilder:
    """Fills one preallocated chunk at a time; ``take()`` hands it out and starts a new one."""

    def __init__(self, chunk_frames: int, h: int, w: int) -> None:
        self.cap, self.h, self.w = chunk_frames, h, w
        self._new()

    def _new(self) -> None:
        self.frames = np.empty((self.cap, self.h, self.w, 3), dtype=np.uint8)
        self.fi = np.empty(self.cap, dtype=np.int64)
        self.ts = np.empty(self.cap, dtype=np.float64)
        self.si = np.empty(self.cap, dtype=np.int64)
        self.n = 0

    @property
    def full(self) -> bool:
        return self.n == self.cap

    def add(self, frame: np.ndarray | None, src: int, t: float, k: int) -> None:
        # frame=None means the caller already wrote the pixels into self.frames[self.n].
        if frame is not None:
            self.frames[self.n] = frame
        self.fi[self.n], self.ts[self.n], self.si[self.n] = src, t, k
        self.n += 1

    def take(self) -> FrameChunk:
        n = self.n
        # Slicing a fresh array keeps the tail chunk's unused rows alive only until the consumer drops it.
        chunk = FrameChunk(self.frames[:n], self.fi[:n], self.ts[:n], self.si[:n])
        self._new()
        return chunk


_SHOWINFO_FRAME = re.compile(
    r"\[Parsed_showinfo_\d+ @ [^\]]*\] (?:\[\w+\] )?n:\s*\d+\s+pts:\s*(\S+).*?\bs:(\d+)x(\d+)"
)
_SHOWINFO_TB = re.compile(r"\[Parsed_showinfo_\d+ @ [^\]]*\] (?:\[\w+\] )?config in time_base:\s*(\d+)/(\d+)")
_LEVEL = re.compile(r"\[(error|fatal|panic|warning)\]")


class _StderrReader(threading.Thread):
    """Drains ffmpeg's stderr (so the process never blocks on a full pipe) and collects per-frame pts.

    ``showinfo`` logs each frame before ffmpeg writes that frame to stdout, so by the time a frame has been
    read from the pipe its line has been written; ``next_pts()`` blocks until it has been parsed.
    """

    def __init__(self, stream: Any) -> None:
        super().__init__(daemon=True)
        self.stream = stream
        self.pts: collections.deque[int | None] = collections.deque()  # reported, not yet taken
        self.time_base: Fraction | None = None
        self.size: tuple[int, int] | None = None  # (w, h) of the first frame as ffmpeg outputs it
        self.errors: collections.deque[str] = collections.deque(maxlen=5)
        self.done = False
        self.cond = threading.Condition()

    def run(self) -> None:
        try:
            for raw in self.stream:
                line = raw.decode("utf-8", "replace").rstrip()
                m = _SHOWINFO_FRAME.search(line)
                if m:
                    v = m.group(1)
                    if self.size is None:
                        self.size = (int(m.group(2)), int(m.group(3)))
                    with self.cond:
                        self.pts.append(int(v) if v.lstrip("-").isdigit() else None)
                        self.cond.notify_all()
                    continue
                m = _SHOWINFO_TB.search(line)
                if m:
                    self.time_base = Fraction(int(m.group(1)), int(m.group(2)))
                elif _LEVEL.search(line):
                    self.errors.append(re.sub(r"^(\[[^\]]*\]\s*)+", "", line))
        except (OSError, ValueError):
            pass  # pipe closed under us when the generator is shut down early
        finally:
            with self.cond:
                self.done = True
                self.cond.notify_all()

    def next_pts(self) -> int | None:
        """pts (ticks) of the next decoded frame, or None if ffmpeg did not report one.

        Entries are removed as they are taken, so this stays small however long the clip is.
        """
        with self.cond:
            while not self.pts and not self.done:
                self.cond.wait(timeout=1.0)
            return self.pts.popleft() if self.pts else None

    def last_error(self) -> str:
        # Prefer the decoder's/demuxer's words over the muxer's follow-up complaints about timestamps.
        useful = [e for e in self.errors if "monoton" not in e.lower()]
        return (useful or list(self.errors) or [""])[-1]


def _read_exact(stream: Any, buf: memoryview) -> int:
    """Fill ``buf`` from ``stream``; returns bytes read (less than len(buf) only at end of stream)."""
    got = 0
    total = len(buf)
    while got < total:
        r = stream.readinto(buf[got:])
        if not r:
            break
        got += r
    return got


def _ffmpeg_cmd(info: VideoInfo) -> list[str]:
    inp = ffmpeg.input(info.path)
    # "V:0" is the first video stream that is not cover art, the same stream probe() describes. showinfo
    # sits after the automatic rotation filters, so it sees the frames exactly as they are piped.
    v = inp["V:0"].filter("showinfo", checksum=0)
    out = ffmpeg.output(
        v,
        "pipe:",
        format="rawvideo",
        pix_fmt="rgb24",
        fps_mode="passthrough",
        # The default encoder clock is 1/frame_rate; VFR frames closer than that would collide there and
        # make the muxer complain. A microsecond clock keeps every source timestamp distinct.
        **{"enc_time_base:v": "1/1000000"},
    )
    out = out.global_args("-nostdin", "-nostats", "-hide_banner", "-loglevel", "repeat+level+info")
    return out.compile(cmd=FFMPEG)


def _iter_video(info: VideoInfo, chunk_frames: int, fps: float | None) -> Iterator[FrameChunk]:
    h, w = info.height, info.width
    frame_bytes = h * w * 3
    proc = subprocess.Popen(
        _ffmpeg_cmd(info),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,
    )
    reader = _StderrReader(proc.stderr)
    reader.start()
    rs = _Resampler(fps)
    builder = _ChunkBuilder(chunk_frames, h, w)
    # With resampling a source frame may be needed after the next one arrives (nearest rule), so the last
    # two decoded frames are kept; without it frames are read straight into the chunk.
    prev_frame = np.empty((h, w, 3), np.uint8)
    cur_frame = np.empty((h, w, 3), np.uint8)
    prev_t = 0.0
    t0_ticks: int | None = None
    n_decoded = 0
    finished = False
    try:
        while True:
            if fps is None:
                target = builder.frames[builder.n]
            else:
                prev_frame, cur_frame = cur_frame, prev_frame
                target = cur_frame
            got = _read_exact(proc.stdout, memoryview(target).cast("B"))
            if got == 0:
                if fps is not None:
                    prev_frame, cur_frame = cur_frame, prev_frame  # undo: cur_frame is the last frame again
                break
            if got < frame_bytes:
                raise MediaError(f"truncated or corrupt: partial frame {n_decoded} from ffmpeg")
            pts = reader.next_pts()
            if reader.size is not None and reader.size != (w, h):
                sw, sh = reader.size
                raise MediaError(f"decoder frame size {sw}x{sh} differs from the probed {w}x{h}")
            tb = reader.time_base
            if pts is None or tb is None:
                # No timestamp (should not happen with showinfo); fall back to the probed mean rate.
                t = prev_t + 1.0 / info.fps if n_decoded else 0.0
            else:
                if t0_ticks is None:
                    t0_ticks = pts
                t = float(_ticks_to_seconds(np.array([pts - t0_ticks]), tb)[0])
            j = n_decoded
            n_decoded += 1
            for k, src in rs.push(t):
                if fps is None:
                    builder.add(None, src, t, k)
                else:
                    builder.add(prev_frame if src < j else cur_frame, src, prev_t if src < j else t, k)
                if builder.full:
                    yield builder.take()
            prev_t = t
        for k, src in rs.finish():
            builder.add(cur_frame, src, prev_t, k)
            if builder.full:
                yield builder.take()
        rc = proc.wait()
        reader.join(timeout=5.0)
        finished = True
        if builder.n:
            yield builder.take()
        missing = info.frame_count - n_decoded
        if rc != 0 or missing > max(2, 0.02 * info.frame_count):
            err = reader.last_error()
            raise MediaError(
                f"truncated or corrupt: decoded {n_decoded} of {info.frame_count} frames"
                + (f" (ffmpeg exit {rc})" if rc != 0 else "")
                + (f": {err}" if err else "")
            )
    finally:
        if not finished and proc.poll() is None:
            proc.kill()
        proc.wait()
        for s in (proc.stdout, proc.stderr):
            if s is not None:
                s.close()
        reader.join(timeout=5.0)


def _iter_images(info: VideoInfo, chunk_frames: int, fps: float | None) -> Iterator[FrameChunk]:
    import cv2

    frames = list_image_frames(Path(info.path))
    h, w = info.height, info.width
    rs = _Resampler(fps)
    builder = _ChunkBuilder(chunk_frames, h, w)
    prev = cur = None
    prev_t = 0.0
    for j, p in enumerate(frames):
        bgr = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if bgr is None:
            raise MediaError(f"cannot read image {p.name} (frame {j})")
        if bgr.shape[:2] != (h, w):
            raise MediaError(
                f"image size changes at {p.name}: {bgr.shape[1]}x{bgr.shape[0]}, expected {w}x{h}"
            )
        prev, cur = cur, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        t = j / info.fps
        for k, src in rs.push(t):
            builder.add(prev if src < j else cur, src, prev_t if src < j else t, k)
            if builder.full:
                yield builder.take()
        prev_t = t
    for k, src in rs.finish():
        builder.add(cur, src, prev_t, k)
        if builder.full:
            yield builder.take()
    if builder.n:
        yield builder.take()


def iter_chunks(info: VideoInfo, *, chunk_frames: int = 32, fps: float | None = None) -> Iterator[FrameChunk]:
    """Decode a probed clip as a stream of ``FrameChunk`` s of at most ``chunk_frames`` frames.

    Videos are decoded by one ffmpeg process writing rgb24 to a pipe with ``-fps_mode passthrough`` (no
    duplication to a constant rate); ffmpeg applies the display rotation. Each frame's timestamp is the one
    ffmpeg reports for it (``showinfo``), not the probe's. With ``fps`` the output is resampled on the fly
    to a constant rate with the nearest-frame rule of ``resample_plan``; duplicated samples are copies of
    the same source frame. Each chunk is a fresh array the consumer may keep; if it does not, memory stays
    around two chunks (the one held, the one being filled) whatever the clip length.

    Image sequences are read one file at a time with OpenCV in natural file order (JPEG EXIF orientation
    applied, BGR converted to RGB), frame i at ``i / info.fps`` seconds.

    Closing the generator early kills and reaps the ffmpeg process.

    Raises:
        MediaError: ffmpeg failed or decoded clearly fewer frames than probed (more than max(2, 2 %)
            missing): "truncated or corrupt: decoded X of Y frames: <ffmpeg's last error>". The frames
            decoded before the problem have been yielded by then.
    """
    if chunk_frames < 1:
        raise ValueError("chunk_frames must be >= 1")
    if fps is not None and fps <= 0:
        raise ValueError("fps must be > 0")
    if info.kind == "images":
        return _iter_images(info, chunk_frames, fps)
    return _iter_video(info, chunk_frames, fps)
