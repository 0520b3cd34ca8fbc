"""Model registry: where every weight file comes from and where it is looked for.

Resolution order for a name such as ``yolov8x.pt``:
1. an existing path as given (absolute, or relative to the working directory);
2. each folder of ``$GENMOCAP_WEIGHTS`` (``os.pathsep``-separated);
3. the user cache ``$XDG_CACHE_HOME/genmocap/weights`` (default ``~/.cache/genmocap/weights``);
4. a download into the user cache when the file has a public URL and downloads are allowed.
A file that cannot be found raises ``MissingWeightsError`` naming the file, where it goes and how to get it.
Weights never enter the repository.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from pipeline.store import atomic_write_json

_ULTRA = "https://github.com/ultralytics/assets/releases/download/v8.3.0/"


@dataclass(frozen=True)
class WeightSpec:
    filename: str
    stage: str
    description: str
    url: str | None  # public download, if any
    how_to_get: str
    licence: str
    sha256: str | None = None  # pinned when known
    size_mb: float | None = None


def _yolo(name: str, size_mb: float) -> WeightSpec:
    return WeightSpec(
        filename=name,
        stage="track",
        description=f"Ultralytics {name.removesuffix('.pt')} person detector",
        url=_ULTRA + name,
        how_to_get="downloaded automatically when online (`genmocap models fetch`), or copy it from the "
        "Ultralytics assets releases",
        licence="AGPL-3.0 (Ultralytics; commercial licence sold separately)",
        size_mb=size_mb,
    )


REGISTRY: dict[str, WeightSpec] = {
    s.filename: s
    for s in [
        _yolo("yolov8x.pt", 131.0),
        _yolo("yolov8l.pt", 83.7),
        _yolo("yolov8m.pt", 49.7),
        _yolo("yolov8s.pt", 21.5),
        _yolo("yolov8n.pt", 6.2),
        _yolo("yolo11x.pt", 109.3),
        WeightSpec(
            "vitpose-h-multi-coco.pth",
            "keypoints",
            "ViTPose-H (multi-dataset) COCO-17 keypoints",
            None,
            "download from the ViTPose project's model zoo (see README, 'Weights')",
            "Apache-2.0",
            size_mb=2440.0,
        ),
        WeightSpec(
            "epoch=10-step=25000.ckpt",
            "features",
            "HMR2.0a image features (f_imgseq)",
            None,
            "download the HMR2/4D-Humans data archive (see README, 'Weights')",
            "MIT (4D-Humans)",
            size_mb=2700.0,
        ),
        WeightSpec(
            "gem_smpl.ckpt",
            "estimate",
            "GEM (GENMO) estimation-mode denoiser",
            None,
            "download from NVIDIA's GEM release (see README, 'Weights')",
            "NVIDIA licence of the GEM release",
        ),
        WeightSpec(
            "droid.pth",
            "camera",
            "DROID-SLAM weights (camera backend 'droid')",
            None,
            "download from the DROID-SLAM project (see README, 'Weights')",
            "BSD-3-Clause",
        ),
    ]
}

# Ultralytics model yamls build a random-weight network (for smoke tests); they are not files we look up.
ARCHITECTURE_SUFFIXES = (".yaml", ".yml")


class MissingWeightsError(FileNotFoundError):
    """A weight file is not present; the message says which, where it goes and how to get it."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "genmocap"


def search_dirs() -> list[Path]:
    dirs = [Path(p).expanduser() for p in os.environ.get("GENMOCAP_WEIGHTS", "").split(os.pathsep) if p]
    return dirs + [cache_dir() / "weights"]


def locate(name: str) -> Path | None:
    """The local file for ``name`` (a path or a registry file name), or None."""
    p = Path(name).expanduser()
    if p.is_file():
        return p.resolve()
    if p.name != name:  # a path with folders that does not exist: nothing else to search
        return None
    for d in search_dirs():
        if (d / name).is_file():
            return (d / name).resolve()
    return None


def download(spec: WeightSpec, dest_dir: Path | None = None, timeout: float = 30.0) -> Path:
    """Download ``spec`` into the user cache (temp file + rename), checking sha256 when pinned."""
    if not spec.url:
        raise MissingWeightsError(_missing_message(spec.filename))
    dest_dir = dest_dir or cache_dir() / "weights"
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / spec.filename
    tmp = dest.with_name(dest.name + ".part")
    try:
        from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

        with urllib.request.urlopen(spec.url, timeout=timeout) as r, open(tmp, "wb") as f:
            total = int(r.headers.get("Content-Length") or 0) or None
            with Progress(*Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn()) as bar:
                task = bar.add_task(f"download {spec.filename}", total=total)
                while chunk := r.read(1 << 20):
                    f.write(chunk)
                    bar.advance(task, len(chunk))
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        tmp.unlink(missing_ok=True)
        raise MissingWeightsError(_missing_message(spec.filename, f"download failed: {e}")) from e
    if spec.sha256 and sha256_file(tmp) != spec.sha256:
        tmp.unlink(missing_ok=True)
        raise MissingWeightsError(
            f"{spec.filename}: downloaded file has the wrong sha256 (corrupt download?)"
        )
    os.replace(tmp, dest)
    return dest


def _missing_message(name: str, extra: str | None = None) -> str:
    spec = REGISTRY.get(Path(name).name)
    where = ", ".join(str(d) for d in search_dirs())
    lines = [f"weight file not found: {name}", f"  looked in: the path as given, {where}"]
    lines.append("  put it in one of those folders (or set GENMOCAP_WEIGHTS=/path/to/weights)")
    if spec:
        lines.append(f"  how to get it: {spec.how_to_get}")
        if spec.url:
            lines.append(f"  source: {spec.url}")
    if extra:
        lines.append(f"  {extra}")
    return "\n".join(lines)


def resolve(name: str, *, allow_download: bool = True) -> Path:
    """Path of the weight file ``name`` (see module docstring for the order).

    Raises:
        MissingWeightsError: not found and not downloadable (the message says what to do).
    """
    if name.endswith(ARCHITECTURE_SUFFIXES):
        return Path(name)  # an architecture, built with random weights by its loader
    found = locate(name)
    if found:
        return found
    spec = REGISTRY.get(Path(name).name)
    if allow_download and spec and spec.url and Path(name).name == name:
        return download(spec)
    raise MissingWeightsError(_missing_message(name))


# ---------------------------------------------------------------------------------------------------------
# Hashes: cached by (path, size, mtime) so a 2.5 GB checkpoint is hashed once, and remembered per file name
# so a changed file is noticed.

_hash_lock = threading.Lock()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def file_hash(path: Path) -> str:
    """sha256 of a weight file (or of a model yaml's text), cached in the user cache."""
    path = Path(path)
    if path.suffix in ARCHITECTURE_SUFFIXES and not path.is_file():
        return "arch:" + hashlib.sha256(path.name.encode()).hexdigest()
    st = path.stat()
    ident = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    index_path = cache_dir() / "hashes.json"
    with _hash_lock:
        try:
            index = json.loads(index_path.read_text())
        except (OSError, json.JSONDecodeError):
            index = {}
        if ident in index:
            return index[ident]
        digest = sha256_file(path)
        index[ident] = digest
        try:
            atomic_write_json(index_path, index)
        except OSError:
            pass  # a read-only cache only costs re-hashing
    return digest


def status() -> list[dict]:
    """One row per registered weight file: where it is (or None) and how to get it."""
    rows = []
    for spec in REGISTRY.values():
        found = locate(spec.filename)
        rows.append(
            {
                "file": spec.filename,
                "stage": spec.stage,
                "description": spec.description,
                "path": str(found) if found else None,
                "downloadable": bool(spec.url),
                "how_to_get": spec.how_to_get,
                "licence": spec.licence,
                "size_mb": spec.size_mb,
            }
        )
    return rows
