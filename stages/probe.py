"""Stage ``probe``: describe a clip (fps from real timestamps, frames, size, rotation, timecode, codec).

The result is the clip's ``VideoInfo``; the pipeline writes it into ``OUT/<clip>/clip.json``. A clip that
cannot feed the model (unreadable, no video stream, too few frames) fails here with a one-line reason.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from stages.spec import ClipRun, StageFailure, StageSpec
from stages.video import MediaError, VideoInfo, probe

VERSION = "1"


class ProbeSettings(BaseModel):
    """What the probe stage reads from the config."""

    model_config = ConfigDict(extra="forbid")

    image_fps: float = Field(30.0, gt=0, description="frame rate given to image-sequence folders")
    min_frames: int = Field(2, ge=1, description="clips with fewer frames fail (GEM needs at least 2)")


def run_probe(path: Path, settings: ProbeSettings) -> VideoInfo:
    """Probe ``path`` (a video file or an image-sequence folder) and check it can feed the pipeline.

    Raises:
        MediaError: with a one-line reason when the clip is unusable.
    """
    info = probe(path, image_fps=settings.image_fps)
    if info.frame_count < settings.min_frames:
        n = info.frame_count
        raise MediaError(
            f"too short: {n} frame{'s' if n != 1 else ''} (at least {settings.min_frames} needed)"
        )
    if info.width < 16 or info.height < 16:
        raise MediaError(f"frame size {info.width}x{info.height} is too small to find people in")
    return info


# --------------------------------------------------------------------------------------------------------
# The stage contract


def source_fingerprint(path: Path) -> str:
    """A cheap content fingerprint: sha256 over size and three 1 MiB samples (head, middle, tail); for an
    image-sequence folder, over every frame's name and size plus the first and last frame's bytes."""
    import hashlib

    from stages.video import list_image_frames

    h = hashlib.sha256()
    if path.is_dir():
        frames = list_image_frames(path)
        for f in frames:
            h.update(f"{f.name}:{f.stat().st_size};".encode())
        for f in frames[:1] + frames[-1:]:
            h.update(f.read_bytes())
        return h.hexdigest()
    size = path.stat().st_size
    h.update(str(size).encode())
    with open(path, "rb") as f:
        for off in sorted({0, max(0, size // 2 - (1 << 19)), max(0, size - (1 << 20))}):
            f.seek(off)
            h.update(f.read(1 << 20))
    return h.hexdigest()


def _key_inputs(run: ClipRun) -> dict:
    try:
        run.facts["source_fingerprint"] = source_fingerprint(run.source)
    except OSError as e:
        raise StageFailure(f"cannot read {run.source}: {e.strerror or e}") from e
    return {"source": run.facts["source_fingerprint"]}


SPEC = StageSpec(
    name="probe",
    version=VERSION,
    settings=ProbeSettings,
    key_inputs=_key_inputs,
    compute=lambda run: run_probe(run.source, run.cfg.probe),
    save=lambda info: (info.to_dict(), {}),
    load=lambda meta, arrays: VideoInfo.from_dict(meta),
    report=lambda info: {"video": info.to_dict() if info is not None else None},
)
