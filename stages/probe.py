"""Stage ``probe``: describe a clip (fps from real timestamps, frames, size, rotation, timecode, codec).

The result is the clip's ``VideoInfo``; the pipeline writes it into ``OUT/<clip>/clip.json``. A clip that
cannot feed the model (unreadable, no video stream, too few frames) fails here with a one-line reason.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

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
