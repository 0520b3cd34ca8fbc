"""Find the clips of a run: files, folders (recursive), glob patterns and manifest files.

A clip is a video file or a folder of image frames. Clip ids are ``<stem>-<8 hex>``: readable, stable across
runs and across machines that mount the footage at different places (the hex hashes the path relative to the
folder above the input root, never the absolute path), and unique when two folders hold files of one name.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from stages.video import IMAGE_EXTS, VIDEO_EXTS, is_hidden_or_temp, list_image_frames

MANIFEST_EXTS = frozenset({".txt", ".list", ".lst", ".csv"})
MIN_SEQUENCE_FRAMES = 2  # one lone image in a folder is not a clip


class DiscoveryError(ValueError):
    """An input names nothing usable (missing path, empty glob, unreadable manifest)."""


@dataclass(frozen=True)
class Clip:
    id: str
    source: Path  # absolute; a file, or a folder for image sequences
    kind: str  # "video" | "images"

    def names(self) -> list[str]:
        """Names a user may refer to this clip by (detections files, manifests)."""
        out = [self.id, self.source.name, self.source.stem, str(self.source)]
        return list(dict.fromkeys(out))


def clip_id(path: Path, root: Path | None = None) -> str:
    """``<stem>-<8 hex>`` for the clip at ``path`` found under the input ``root`` (default: its own folder).

    The hex hashes the path relative to ``root``'s parent, e.g. ``footage/day1/take1.mp4`` for the folder
    input ``/mnt/nas/footage``: the same footage mounted at ``/data/footage`` on another worker gets the same
    id, and two folders holding ``take1.mp4`` get different ones.
    """
    path = Path(os.path.abspath(path))
    base = Path(os.path.abspath(root if root is not None else path.parent)).parent
    try:
        rel = path.relative_to(base).as_posix()
    except ValueError:
        rel = path.as_posix()
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem if path.is_file() else path.name).strip("._") or "clip"
    digest = hashlib.sha1(rel.encode()).hexdigest()[:8]
    return f"{stem[:48]}-{digest}"


def _make_clip(path: Path, kind: str, root: Path | None = None) -> Clip:
    path = path.resolve()
    return Clip(id=clip_id(path, root.resolve() if root is not None else None), source=path, kind=kind)


def _is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTS and not is_hidden_or_temp(path)


def _walk(folder: Path) -> list[Clip]:
    """Videos anywhere below ``folder``; every folder with >= 2 image frames is one image-sequence clip."""
    clips: list[Clip] = []
    top = folder
    for root, dirs, files in os.walk(folder):
        root_p = Path(root)
        dirs[:] = sorted(d for d in dirs if not is_hidden_or_temp(root_p / d))
        for name in sorted(files):
            if _is_video(root_p / name):
                clips.append(_make_clip(root_p / name, "video", top))
        if sum(Path(f).suffix.lower() in IMAGE_EXTS for f in files) >= MIN_SEQUENCE_FRAMES:
            if len(list_image_frames(root_p)) >= MIN_SEQUENCE_FRAMES:
                clips.append(_make_clip(root_p, "images", top))
    return clips


def _read_manifest(path: Path) -> list[str]:
    """Paths listed in a manifest: one per line (``#`` comments), or a CSV with a ``path`` column.
    Relative paths are relative to the manifest's folder."""
    text = path.read_text()
    if path.suffix.lower() == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
        if rows and "path" not in rows[0]:
            raise DiscoveryError(f"manifest {path}: CSV needs a 'path' column (has {', '.join(rows[0])})")
        entries = [r["path"].strip() for r in rows if (r.get("path") or "").strip()]
    else:
        entries = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    return [str((path.parent / e) if not Path(e).is_absolute() else Path(e)) for e in entries]


def _expand(item: str, depth: int) -> list[Clip]:
    path = Path(item).expanduser()
    if path.is_dir():
        frames = list_image_frames(path)
        has_subdirs_or_videos = any(
            p.is_dir() or _is_video(p) for p in path.iterdir() if not is_hidden_or_temp(p)
        )
        if len(frames) >= MIN_SEQUENCE_FRAMES and not has_subdirs_or_videos:
            return [_make_clip(path, "images")]
        return _walk(path)
    if path.is_file():
        if path.suffix.lower() in MANIFEST_EXTS:
            if depth > 2:
                raise DiscoveryError(f"manifest {path}: manifests nested too deeply")
            out: list[Clip] = []
            for entry in _read_manifest(path):
                out.extend(_expand(entry, depth + 1))
            return out
        # An explicitly named file is taken even with an unusual extension: the probe says if it is a video.
        return [_make_clip(path, "video")]
    if glob.has_magic(item):
        matches = sorted(glob.glob(os.path.expanduser(item), recursive=True))
        out = []
        for m in matches:
            mp = Path(m)
            if is_hidden_or_temp(mp):
                continue
            if mp.is_dir() or _is_video(mp):
                out.extend(_expand(m, depth))
        if not out:
            raise DiscoveryError(f"pattern matches no video or frame folder: {item}")
        return out
    raise DiscoveryError(f"no such file or folder: {item}")


def discover(inputs: list[str]) -> list[Clip]:
    """All clips named by ``inputs`` (files, folders, globs, manifests), de-duplicated, in a stable order.

    Raises:
        DiscoveryError: an input does not exist or a pattern matches nothing.
    """
    seen: dict[Path, Clip] = {}
    for item in inputs:
        for clip in _expand(item, 0):
            seen.setdefault(clip.source, clip)
    return list(seen.values())
