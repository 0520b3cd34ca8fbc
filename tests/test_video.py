"""Tests for stages.video: probing, streaming decode, resampling, bad inputs, image sequences."""

from __future__ import annotations

import json
import math
import subprocess
from fractions import Fraction
from pathlib import Path

import numpy as np
import psutil
import pytest

from stages.video import (
    FrameChunk,
    MediaError,
    VideoInfo,
    count_samples,
    frame_timestamps,
    is_hidden_or_temp,
    iter_chunks,
    list_image_frames,
    probe,
    resample_plan,
)
from tests.media import (
    Box,
    ffmpeg_available,
    image_frame,
    make_bad_inputs,
    make_clip,
    make_image_sequence,
    vfr_kept_frames,
)

pytestmark = pytest.mark.skipif(not ffmpeg_available(), reason="ffmpeg/ffprobe not installed")

SMALL = (160, 120)


# ---------------------------------------------------------------------------------------------- helpers


def decode_all(info: VideoInfo, **kw) -> FrameChunk:
    """Concatenate every chunk of iter_chunks into one FrameChunk."""
    chunks = list(iter_chunks(info, **kw))
    return FrameChunk(
        frames=np.concatenate([c.frames for c in chunks]),
        frame_index=np.concatenate([c.frame_index for c in chunks]),
        time_s=np.concatenate([c.time_s for c in chunks]),
        sample_index=np.concatenate([c.sample_index for c in chunks]),
    )


def ffmpeg_oneshot(path: Path, w: int, h: int) -> np.ndarray:
    """Decode a whole clip in one go with plain ffmpeg: independent reference for the chunked decoder."""
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-map", "0:v:0", "-fps_mode", "passthrough"]
        + ["-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:"],
        capture_output=True,
        check=True,
    ).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, h, w, 3)


def nearest_bruteforce(times: np.ndarray, fps: float) -> np.ndarray:
    """Nearest source frame per output sample by exhaustive search (ties -> earlier)."""
    m = int(math.floor(times[-1] * fps + 1e-6)) + 1
    out = []
    for k in range(m):
        d = np.abs(times - k / fps)
        out.append(int(np.flatnonzero(d <= d.min() + 1e-9)[0]))
    return np.array(out)


def n_frames(seconds: float, fps: Fraction) -> int:
    # testsrc2 emits frames n with n / fps < seconds.
    return math.ceil(seconds * fps)


def ffmpeg_children() -> list[psutil.Process]:
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.name() == "ffmpeg" and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> dict[str, Path]:
    return make_bad_inputs(tmp_path_factory.mktemp("bad"))


@pytest.fixture(scope="module")
def clip2s(tmp_path_factory) -> Path:
    """2 s, 30 fps, 160x120 H.264 clip with B-frames and moving boxes."""
    from tests.media import default_people

    d = tmp_path_factory.mktemp("clip")
    return make_clip(d / "c.mp4", seconds=2.0, fps=30, size=SMALL, people=default_people(SMALL))


# -------------------------------------------------------------------------------------------- file names


def test_hidden_and_temp_names():
    for name in [".DS_Store", "._clip.mp4", "~$notes.docx", "clip.mp4~", "a.tmp", "b.MP4.part", "c.partial"]:
        assert is_hidden_or_temp(Path(name)), name
    for name in ["c.crdownload", "d.download"]:
        assert is_hidden_or_temp(Path("/x") / name), name
    for name in ["clip.mp4", "frame_0001.png", "my.clip.mov", "tmp.mp4", "partial.mp4"]:
        assert not is_hidden_or_temp(Path(name)), name


def test_list_image_frames_natural_order_and_filters(tmp_path):
    for n in ["frame10.png", "frame2.png", "frame1.PNG", "frame3.jpg", "frame11.jpeg"]:
        (tmp_path / n).write_bytes(b"x")
    for n in [".frame0.png", "._frame4.png", "frame5.png.part", "frame6.png~", "notes.txt", "clip.mp4"]:
        (tmp_path / n).write_bytes(b"x")
    (tmp_path / "frame7.png").mkdir()  # a folder named like an image is not a frame
    names = [p.name for p in list_image_frames(tmp_path)]
    assert names == ["frame1.PNG", "frame2.png", "frame3.jpg", "frame10.png", "frame11.jpeg"]


# ------------------------------------------------------------------------------------------------ probe


@pytest.mark.parametrize("fps", ["24", "25", "30000/1001", "30", "50", "60"])
def test_probe_cfr(tmp_path, fps):
    rate = Fraction(fps)
    clip = make_clip(tmp_path / "c.mp4", seconds=1.0, fps=fps, size=SMALL)
    info = probe(clip)
    n = n_frames(1.0, rate)
    assert info.kind == "video" and info.codec == "h264" and "mp4" in info.container
    assert info.frame_count == n
    assert info.fps == pytest.approx(float(rate), rel=1e-4)
    assert Fraction(info.fps_nominal) == rate
    assert info.duration_s == pytest.approx(n / float(rate), abs=1e-3)
    assert (info.width, info.height, info.coded_width, info.coded_height) == (160, 120, 160, 120)
    assert info.rotation == 0 and not info.vfr and not info.has_audio and info.timecode is None
    assert info.start_time_s == pytest.approx(0.0, abs=1e-6)
    assert info.size_bytes == clip.stat().st_size and info.path == str(clip.resolve())
    ts = frame_timestamps(clip)
    np.testing.assert_allclose(ts - ts[0], np.arange(n) / float(rate), atol=1e-4)
    assert count_samples(info, None) == n


def test_videoinfo_json_roundtrip(clip2s):
    info = probe(clip2s)
    d = json.loads(json.dumps(info.to_dict()))
    assert VideoInfo.from_dict(d) == info
    assert VideoInfo.from_dict({**d, "added_later": 1}) == info


def test_ntsc_in_millisecond_clock_is_not_vfr(tmp_path):
    # Matroska stores ms timestamps: 29.97 fps intervals alternate 33/34 ms, which is rounding, not VFR.
    clip = make_clip(tmp_path / "c.mkv", seconds=1.0, fps="30000/1001", size=SMALL)
    info = probe(clip)
    assert set(np.diff(np.round(frame_timestamps(clip) * 1000)).astype(int)) == {33, 34}
    assert not info.vfr
    assert info.container == "matroska,webm"
    assert info.fps == pytest.approx(29.97, abs=0.02)


def test_mpegts_start_time_and_audio(tmp_path):
    # MPEG-TS starts its clock at 1.4 s: start_time_s reports it, decoded times still start at 0.
    clip = make_clip(tmp_path / "c.ts", seconds=1.0, fps=25, size=SMALL, audio=True)
    info = probe(clip)
    assert info.has_audio and info.frame_count == 25
    assert info.start_time_s > 1.0
    got = decode_all(info)
    assert len(got.frame_index) == 25
    np.testing.assert_allclose(got.time_s, np.arange(25) / 25, atol=1e-4)


def test_edit_list_trim_counts_presented_frames(tmp_path):
    # Stream-copy trimming between keyframes (what phone "trim" does) keeps the earlier packets of the GOP
    # and hides them with an edit list; they are demuxed flagged as discard and never presented.
    src = make_clip(tmp_path / "src.mp4", seconds=3.0, fps=30, size=SMALL)
    trim = tmp_path / "trim.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-ss", "1.5", "-i", str(src), "-c", "copy", str(trim)],
        check=True,
    )
    flags = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "packet=flags",
            "-of",
            "csv=p=0",
        ]
        + [str(trim)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert sum("D" in f for f in flags) > 10  # the case under test really has discarded packets
    info = probe(trim)
    ref = ffmpeg_oneshot(trim, info.width, info.height)
    assert info.frame_count == len(ref) < len(flags)
    got = decode_all(info)
    np.testing.assert_array_equal(got.frames, ref)
    assert got.time_s[0] == 0.0 and not info.vfr
    assert info.duration_s == pytest.approx(len(ref) / 30, abs=0.002)


@pytest.mark.parametrize(("suffix", "tc", "fps"), [(".mp4", "01:00:00:00", 30), (".mkv", "10:20:30:12", 25)])
def test_timecode(tmp_path, suffix, tc, fps):
    info = probe(make_clip(tmp_path / f"c{suffix}", seconds=0.5, fps=fps, size=SMALL, timecode=tc))
    assert info.timecode == tc


# --------------------------------------------------------------------------------------------- rotation


@pytest.mark.parametrize(
    ("rotation", "corner"),
    # Where the stored top-left corner lands on screen after a clockwise display rotation.
    [(90, "top_right"), (180, "bottom_right"), (270, "bottom_left")],
)
def test_rotation(tmp_path, rotation, corner):
    marker = Box(x=0, y=0, w=24, h=24, color="red")
    clip = make_clip(
        tmp_path / "r.mp4", seconds=0.5, size=SMALL, rotation=rotation, people=[marker], background="black"
    )
    info = probe(clip)
    assert info.rotation == rotation
    assert (info.coded_width, info.coded_height) == SMALL
    assert (info.width, info.height) == ((120, 160) if rotation in (90, 270) else (160, 120))
    frame = next(iter_chunks(info, chunk_frames=1)).frames[0]
    h, w = frame.shape[:2]
    assert (w, h) == (info.width, info.height)
    corners = {
        "top_left": frame[6, 6],
        "top_right": frame[6, w - 7],
        "bottom_left": frame[h - 7, 6],
        "bottom_right": frame[h - 7, w - 7],
    }
    for name, px in corners.items():
        is_red = px[0] > 180 and px[1] < 60 and px[2] < 60
        assert is_red == (name == corner), (name, px.tolist())


def test_rotated_bad_input_is_portrait(bad):
    info = probe(bad["rotated"])
    assert info.rotation == 90 and (info.width, info.height) == (120, 160)
    got = decode_all(info)
    assert got.frames.shape == (info.frame_count, 160, 120, 3)


# ----------------------------------------------------------------------------------------------- VFR


def test_vfr_probe_and_timestamps(bad):
    info = probe(bad["vfr"])
    expected = vfr_kept_frames(2.0, 30) / 30.0
    assert info.vfr
    assert info.frame_count == len(expected)
    assert info.fps_nominal == "30/1"
    assert info.fps == pytest.approx((len(expected) - 1) / expected[-1], rel=1e-6)
    ts = frame_timestamps(bad["vfr"])
    np.testing.assert_allclose(ts - ts[0], expected, atol=1e-6)
    got = decode_all(info)  # no resampling: every source frame once, at its own time
    np.testing.assert_array_equal(got.frame_index, np.arange(len(expected)))
    np.testing.assert_allclose(got.time_s, expected, atol=1e-6)


def test_vfr_resampled_to_30_picks_nearest_frames(bad):
    info = probe(bad["vfr"])
    src = decode_all(info)
    expected_times = vfr_kept_frames(2.0, 30) / 30.0
    res = decode_all(info, fps=30.0, chunk_frames=8)
    plan = nearest_bruteforce(expected_times, 30.0)
    np.testing.assert_array_equal(res.frame_index, plan)
    np.testing.assert_array_equal(res.sample_index, np.arange(len(plan)))
    np.testing.assert_allclose(res.time_s, expected_times[plan], atol=1e-6)
    # The sparse part (every 3rd frame, 0.1 s apart) must be filled with duplicates of real frames.
    assert len(res.frame_index) == count_samples(info, 30.0) == 58  # t_last = 57/30
    assert np.any(np.diff(res.frame_index) == 0)
    np.testing.assert_array_equal(res.frames, src.frames[res.frame_index])


# ----------------------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("zero_byte", ["empty file (0 bytes)"]),
        ("text_as_mp4", ["not a readable media file", "Invalid data found when processing input"]),
        ("truncated", ["moov atom not found"]),
        ("truncated_faststart", ["truncated or corrupt", "of 60 frames", "partial file"]),
        ("audio_only", ["no video stream (audio-only file)"]),
        ("no_frames", ["no decodable video frames"]),
    ],
)
def test_bad_inputs_fail_probe(bad, name, words):
    with pytest.raises(MediaError) as e:
        probe(bad[name])
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg


def test_missing_file(tmp_path):
    with pytest.raises(MediaError, match="file not found"):
        probe(tmp_path / "nope.mp4")


def test_corrupt_media_fails_decode(bad):
    info = probe(bad["corrupt"])  # index and packets are intact ...
    assert info.frame_count == 60
    with pytest.raises(MediaError, match=r"truncated or corrupt: decoded \d+ of 60 frames") as e:
        for _ in iter_chunks(info):  # ... but half of the frames do not decode
            pass
    assert "\n" not in str(e.value)
    assert not ffmpeg_children()


def test_decode_of_file_cut_after_probe(tmp_path, clip2s):
    # The file shrinks between probe and decode (e.g. still being copied): decode must not pass silently.
    clip = tmp_path / "c.mp4"
    clip.write_bytes(clip2s.read_bytes())
    info = probe(clip)
    data = clip.read_bytes()
    clip.write_bytes(data[: len(data) // 2])
    with pytest.raises(MediaError, match=r"truncated or corrupt: decoded \d+ of 60 frames"):
        list(iter_chunks(info))


def test_one_frame(bad):
    info = probe(bad["one_frame"])
    assert info.frame_count == 1 and info.fps == pytest.approx(30.0) and not info.vfr
    assert info.duration_s == pytest.approx(1 / 30, abs=1e-3)
    for fps in (None, 30.0):
        got = decode_all(info, fps=fps)
        assert got.frames.shape == (1, 120, 160, 3) and got.time_s.tolist() == [0.0]
        assert count_samples(info, fps) == 1


def test_no_person_clip_is_normal(bad):
    info = probe(bad["no_person"])
    assert info.frame_count == 30 and not info.vfr and info.rotation == 0
    got = decode_all(info)
    mean = got.frames.reshape(-1, 3).mean(axis=0)
    np.testing.assert_allclose(mean, [0x33, 0x66, 0x99], atol=6)  # plain 0x336699 background
    assert got.frames.std(axis=(1, 2)).max() < 3  # per frame and channel: flat


# ------------------------------------------------------------------------------------------- chunking


@pytest.mark.parametrize("chunk_frames", [1, 7, 32, 100])
def test_chunks_equal_oneshot_decode(clip2s, chunk_frames):
    info = probe(clip2s)
    ref = ffmpeg_oneshot(clip2s, info.width, info.height)
    chunks = list(iter_chunks(info, chunk_frames=chunk_frames))
    sizes = [len(c) for c in chunks]
    assert all(s <= chunk_frames for s in sizes) and all(s == chunk_frames for s in sizes[:-1])
    assert sum(sizes) == info.frame_count == 60
    for c in chunks:
        assert c.frames.dtype == np.uint8 and c.frames.shape[1:] == (120, 160, 3)
        assert c.frame_index.dtype == np.int64 and c.sample_index.dtype == np.int64
        assert c.time_s.dtype == np.float64
    got = np.concatenate([c.frames for c in chunks])
    np.testing.assert_array_equal(got, ref)
    fi = np.concatenate([c.frame_index for c in chunks])
    np.testing.assert_array_equal(fi, np.arange(60))
    np.testing.assert_array_equal(np.concatenate([c.sample_index for c in chunks]), fi)
    # Decoder timestamps agree with the probe's packet timestamps (same clock ticks).
    ts = frame_timestamps(clip2s)
    np.testing.assert_allclose(np.concatenate([c.time_s for c in chunks]), ts - ts[0], atol=1e-9)


def test_frames_move(clip2s):
    # Guard against a decoder that repeats one frame: the boxes move, so consecutive frames differ.
    got = decode_all(probe(clip2s))
    diffs = np.abs(np.diff(got.frames.astype(np.int16), axis=0)).mean(axis=(1, 2, 3))
    assert np.all(diffs > 0.5)


@pytest.mark.parametrize(("src_fps", "expected_n"), [(60, 30), (24, 29)])
def test_resample_counts_and_indices(tmp_path, src_fps, expected_n):
    clip = make_clip(tmp_path / "c.mp4", seconds=1.0, fps=src_fps, size=SMALL)
    info = probe(clip)
    ts = frame_timestamps(clip)
    plan = resample_plan(ts - ts[0], 30.0)
    res = decode_all(info, fps=30.0, chunk_frames=5)
    assert len(plan) == expected_n == count_samples(info, 30.0) == len(res.frame_index)
    np.testing.assert_array_equal(res.frame_index, plan)
    np.testing.assert_array_equal(res.sample_index, np.arange(expected_n))
    np.testing.assert_allclose(res.time_s, (ts - ts[0])[plan], atol=1e-9)
    src = decode_all(info)
    np.testing.assert_array_equal(res.frames, src.frames[plan])
    if src_fps == 60:
        np.testing.assert_array_equal(plan, np.arange(30) * 2)  # every other frame
    else:
        # Samples end at floor(t_last * 30) = 28 (t = 0.933 s), nearer to frame 22 than to the last one.
        np.testing.assert_array_equal(np.unique(plan), np.arange(23))
        assert np.count_nonzero(np.diff(plan) == 0) == 6
        np.testing.assert_array_equal(plan, nearest_bruteforce(ts - ts[0], 30.0))


def test_resample_plan_rules():
    # Tie at 0.05 between 0.0 and 0.1 goes to the earlier frame.
    np.testing.assert_array_equal(resample_plan(np.array([0.0, 0.1]), 20.0), [0, 0, 1])
    # 25 -> 30 fps has exact ties (t = 0.1 lies midway between 0.08 and 0.12).
    t25 = np.arange(25) / 25
    plan = resample_plan(t25, 30.0)
    np.testing.assert_array_equal(plan, nearest_bruteforce(t25, 30.0))
    assert plan[3] == 2
    # Same rate: identity. Single frame: one sample.
    np.testing.assert_array_equal(resample_plan(np.arange(10) / 30, 30.0), np.arange(10))
    np.testing.assert_array_equal(resample_plan(np.array([0.0]), 30.0), [0])
    assert resample_plan(np.array([]), 30.0).shape == (0,)
    rng = np.random.default_rng(0)
    jitter = np.sort(np.concatenate([[0.0], rng.uniform(0, 3, 200)]))
    np.testing.assert_array_equal(resample_plan(jitter, 30.0), nearest_bruteforce(jitter, 30.0))


# ------------------------------------------------------------------------------------- image sequences


def test_image_sequence_probe_and_decode(tmp_path):
    size = (64, 48)
    make_image_sequence(tmp_path, 12, size)
    (tmp_path / "._frame1.png").write_bytes(b"\0\0")  # AppleDouble junk must be ignored
    (tmp_path / "frame13.png.part").write_bytes(b"")
    info = probe(tmp_path, image_fps=25.0)
    assert info.kind == "images" and info.frame_count == 12 and info.codec == "png"
    assert (info.width, info.height, info.fps, info.vfr, info.timecode) == (64, 48, 25.0, False, None)
    assert info.duration_s == pytest.approx(12 / 25) and info.container is None
    got = decode_all(info, chunk_frames=5)
    np.testing.assert_array_equal(got.frame_index, np.arange(12))
    np.testing.assert_allclose(got.time_s, np.arange(12) / 25)
    for i in range(12):
        np.testing.assert_array_equal(got.frames[i], image_frame(i, size))
    res = decode_all(info, fps=30.0)
    plan = resample_plan(np.arange(12) / 25, 30.0)
    np.testing.assert_array_equal(res.frame_index, plan)
    assert len(plan) == count_samples(info, 30.0)
    np.testing.assert_array_equal(res.frames, got.frames[plan])


def test_image_sequence_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MediaError, match="no image frames"):
        probe(empty)
    mixed = tmp_path / "mixed"
    make_image_sequence(mixed, 3, (64, 48))
    make_image_sequence(mixed, 1, (32, 32), prefix="frame9")  # frame91.png, a different size
    info = probe(mixed)
    with pytest.raises(MediaError, match="image size changes at frame91.png"):
        list(iter_chunks(info))


# ------------------------------------------------------------------------------------ process hygiene


def test_early_close_kills_ffmpeg(tmp_path):
    clip = make_clip(tmp_path / "long.mp4", seconds=3.0, size=SMALL)
    info = probe(clip)
    assert not ffmpeg_children()
    gen = iter_chunks(info, chunk_frames=2)
    first = next(gen)
    assert len(first) == 2
    running = ffmpeg_children()
    assert len(running) == 1  # the decoder is alive mid-clip (the pipe holds it back)
    pid = running[0].pid
    gen.close()
    assert not ffmpeg_children()
    assert not psutil.pid_exists(pid)  # killed and reaped, not left as a zombie

    # Leaving a for-loop early and dropping the generator has the same effect.
    for c in iter_chunks(info, chunk_frames=2, fps=30.0):
        assert len(c) == 2
        assert len(ffmpeg_children()) == 1
        break
    assert not ffmpeg_children()


def test_bad_arguments(clip2s):
    info = probe(clip2s)
    with pytest.raises(ValueError):
        iter_chunks(info, chunk_frames=0)
    with pytest.raises(ValueError):
        iter_chunks(info, fps=0)
