"""Model registry: where every weight file comes from and where it is looked for.

Resolution order for a name such as ``yolov8x.pt``:
1. an existing path as given (absolute, or relative to the working directory);
2. each folder of ``$GENMOCAP_WEIGHTS`` (``os.pathsep``-separated);
3. the user cache ``$XDG_CACHE_HOME/genmocap/weights`` (default ``~/.cache/genmocap/weights``);
4. a download into the user cache when the file has a public source and downloads are allowed.
A file that cannot be found raises ``MissingWeightsError`` naming the file, the folders searched and how to
get it; :func:`require` checks a whole set of files and raises one error that lists every missing file.
Weights never enter the repository.

Public sources: YOLO from the Ultralytics release assets (plain HTTPS); GEM's checkpoint and GEM's ONNX
exports of ViTPose-H and HMR2 from the Hugging Face repository ``nvidia/GEM-X`` (``gem_smpl.ckpt``,
``gem_smpl/onnx/*``), each at the revision its registry entry names, downloaded with ``huggingface_hub``
(a dropped connection is resumed; ``$HF_ENDPOINT`` replaces ``https://huggingface.co`` for a mirror). Hub
files land in the same weights folder as the others, by file name (``huggingface_hub``'s ``local_dir``
mode, not its cache layout; it keeps its bookkeeping in the hidden ``.cache/huggingface`` folder there).
An ONNX export larger than 2 GB comes as two files, ``<name>.onnx`` and its external-data sidecar
``<name>.onnx.data``, which must lie in the same folder: resolving the ``.onnx`` also fetches (or demands)
the sidecar next to it.

Hashes: a file with a pinned sha256 is checked when downloaded. Any other registered file has its sha256
recorded on first use (download or first hash), per file name, in ``<cache>/recorded_sha256.json``; a later
file of that name with other contents is reported (logged warning) and the record updated. Artifact keys
hash the weight files themselves (:func:`file_hash`), so a changed file never reuses stale results.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import threading
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from pipeline import __version__

# stages.files (atomic writes) is imported where used: importing the stages package loads every stage
# module, torch included, which `genmocap --help` and `genmocap models` do not need.

log = logging.getLogger(__name__)

_ULTRA = "https://github.com/ultralytics/assets/releases/download/v8.3.0/"
HF_HOME_URL = "https://huggingface.co"
GEM_HUB_REPO = "nvidia/GEM-X"
GEM_HUB_ONNX = "gem_smpl/onnx"


def hub_endpoint() -> str:
    """The Hugging Face hub to download from: ``$HF_ENDPOINT`` (a mirror) when set, else huggingface.co.

    Read at every call: ``huggingface_hub`` reads the variable once, when it is first imported.
    """
    return os.environ.get("HF_ENDPOINT", "").rstrip("/") or HF_HOME_URL


def hub_url(path: str, repo: str = GEM_HUB_REPO, revision: str = "main") -> str:
    """Public address of ``path`` in a Hugging Face model repository, at ``revision``."""
    return f"{HF_HOME_URL}/{repo}/resolve/{revision}/{path}"


def source_url(url: str) -> str:
    """``url`` with the hub host replaced by ``$HF_ENDPOINT`` when that is set (mirrors, air-gapped hubs)."""
    if url.startswith(HF_HOME_URL + "/"):
        return hub_endpoint() + url[len(HF_HOME_URL) :]
    return url


@dataclass(frozen=True)
class HubFile:
    """A file of a Hugging Face model repository: ``repo`` (owner/name), its ``path`` there, and the
    ``revision`` (branch, tag or commit) to take it from."""

    repo: str
    path: str
    revision: str = "main"

    @property
    def url(self) -> str:
        return hub_url(self.path, self.repo, self.revision)


@dataclass(frozen=True)
class WeightSpec:
    filename: str
    stage: str
    description: str
    url: str | None  # public download, if any (for a hub file: its address on huggingface.co)
    how_to_get: str
    licence: str
    sha256: str | None = None  # pinned when known
    size_mb: float | None = None
    sidecar: str | None = None  # a file that must lie in the same folder (ONNX external data)
    hub: HubFile | None = None  # set: downloaded with huggingface_hub (url is then hub.url)


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


def _gem_hub(path: str, stage: str, description: str, how_to_get: str, licence: str, **kw) -> WeightSpec:
    """A file of GEM's hub repository, from its main branch: no commit of it is pinned yet, and the sha256
    recorded on first use notices when a file changes there."""
    hub = HubFile(GEM_HUB_REPO, path)
    return WeightSpec(Path(path).name, stage, description, hub.url, how_to_get, licence, hub=hub, **kw)


def _gem_onnx(stem: str, stage: str, description: str, licence: str, data_mb: float) -> list[WeightSpec]:
    """GEM's published ONNX export ``<stem>.onnx`` and its external-data sidecar ``<stem>.onnx.data``."""
    graph, data = f"{stem}.onnx", f"{stem}.onnx.data"
    how = (
        "downloaded automatically when online (`genmocap models fetch`) from the Hugging Face repository "
        f"{GEM_HUB_REPO}, folder {GEM_HUB_ONNX}; by hand: download {graph} and {data} from there and put "
        "both in the same weights folder"
    )
    return [
        _gem_hub(f"{GEM_HUB_ONNX}/{graph}", stage, description, how, licence, sidecar=data),
        _gem_hub(
            f"{GEM_HUB_ONNX}/{data}",
            stage,
            f"weights of {graph} (ONNX external data; must lie next to it)",
            how,
            licence,
            size_mb=data_mb,  # approximate: parameters x 4 bytes
        ),
    ]


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
        *_gem_onnx(
            "vitpose_coco17",
            "keypoints",
            "GEM's ONNX export of ViTPose-H COCO-17 (imgs (B,3,256,192) -> heatmaps (B,17,64,48))",
            "Apache-2.0 ViTPose weights, as published in nvidia/GEM-X (see its model card)",
            2550.0,
        ),
        *_gem_onnx(
            "hmr2",
            "features",
            "GEM's ONNX export of HMR2.0a to token_out (imgs (B,3,256,256) -> f_imgseq (B,1024))",
            "MIT 4D-Humans weights, as published in nvidia/GEM-X (see its model card)",
            2680.0,
        ),
        _gem_hub(
            "gem_smpl.ckpt",
            "estimate",
            "GEM (GENMO) estimation-mode denoiser",
            "downloaded automatically when online (`genmocap models fetch`) from the Hugging Face repository "
            f"{GEM_HUB_REPO} (file gem_smpl.ckpt), or download it there by hand",
            f"NVIDIA's licence of the GEM release (see the {GEM_HUB_REPO} model card)",
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


@dataclass(frozen=True)
class MissingFile:
    """One absent weight file, as listed by :class:`MissingWeightsError`."""

    name: str  # as asked for: a registry file name or a path
    put_in: str  # where it goes
    reason: str | None = None  # why it could not be had (a failed download), if tried
    role: str | None = None  # what it is for, when the caller said (see :func:`require`)

    def lines(self) -> list[str]:
        """``weight file not found: NAME`` and indented lines: where it goes, how to get it, the source."""
        head = f"weight file not found: {self.name}" + (f" ({self.role})" if self.role else "")
        lines = [head, f"  put it in: {self.put_in}"]
        spec = REGISTRY.get(Path(self.name).name)
        if spec:
            lines.append(f"  how to get it: {spec.how_to_get}")
            if spec.url:
                lines.append(f"  source: {source_url(spec.url)}")
        else:
            lines.append(
                "  how to get it: not a registered weight file (`genmocap models` lists those); check the "
                "name, or give the path of a file of your own"
            )
        if self.reason:
            lines.append(f"  {self.reason}")
        return lines


class MissingWeightsError(FileNotFoundError):
    """Weight files are not present; the message says which, where each goes and how to get it.

    ``files`` lists them, one :class:`MissingFile` each.
    """

    def __init__(self, files: list[MissingFile] | str):
        if isinstance(files, str):  # a plain message
            self.files: list[MissingFile] = []
            super().__init__(files)
            return
        self.files = list(files)
        where = ", ".join(str(d) for d in search_dirs())
        looked = f"  looked in: the path as given, {where}"
        if len(self.files) == 1:
            first, *rest = self.files[0].lines()
            lines = [first, looked, *rest]
        else:
            names = ", ".join(f.name for f in self.files)
            lines = [f"{len(self.files)} weight files not found: {names}", looked]
            for f in self.files:
                lines += f.lines()
        super().__init__("\n".join(lines))

    def __reduce__(self):  # pickled by process pools and orchestrators: the same message and files
        return type(self), (str(self),), {"files": self.files}


def _anywhere(name: str) -> str:
    """Where a file that is not found goes: a path given with folders is only looked for there."""
    if Path(name).name != name:
        return f"{name} (the path given)"
    return "one of the folders looked in (or set GENMOCAP_WEIGHTS=/path/to/weights)"


def _next_to(graph: Path, sidecar: str) -> str:
    return (
        f"{graph.parent}, next to {graph.name} found there (an ONNX graph reads its external weights "
        f"{sidecar} from its own folder)"
    )


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "genmocap"


def search_dirs() -> list[Path]:
    dirs = [Path(p).expanduser() for p in os.environ.get("GENMOCAP_WEIGHTS", "").split(os.pathsep) if p]
    return dirs + [cache_dir() / "weights"]


def _candidates(name: str) -> Iterator[Path]:
    p = Path(name).expanduser()
    if p.is_file():
        yield p.resolve()
        return
    if p.name != name:  # a path with folders that does not exist: nothing else to search
        return
    for d in search_dirs():
        if (d / name).is_file():
            yield (d / name).resolve()


def locate(name: str) -> Path | None:
    """The local file for ``name`` (a path or a registry file name), or None.

    For a file with a sidecar (an ONNX graph and its ``.onnx.data``), the first folder holding both wins over
    an earlier one holding the graph alone.
    """
    found = list(_candidates(name))
    if not found:
        return None
    spec = REGISTRY.get(found[0].name)
    if spec and spec.sidecar:
        return next((f for f in found if (f.parent / spec.sidecar).is_file()), found[0])
    return found[0]


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _check_pinned(spec: WeightSpec, digest: str, url: str) -> None:
    if spec.sha256 and digest != spec.sha256:
        reason = (
            f"downloaded file has the wrong sha256 (corrupt download?): expected {spec.sha256}, got {digest} "
            f"({url})"
        )
        raise MissingWeightsError([MissingFile(spec.filename, _anywhere(spec.filename), reason)])


def _download_url(spec: WeightSpec, url: str, dest: Path, timeout: float) -> str:
    """Stream ``url`` into ``dest`` (atomically, checking a pinned sha256); returns the file's sha256."""
    from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

    from stages.files import atomic_path

    h = hashlib.sha256()
    request = urllib.request.Request(url, headers={"User-Agent": f"genmocap/{__version__}"})
    with atomic_path(dest) as tmp:
        with urllib.request.urlopen(request, timeout=timeout) as r, open(tmp, "wb") as f:
            total = int(r.headers.get("Content-Length") or 0) or None
            done = 0
            with Progress(*Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn()) as bar:
                task = bar.add_task(f"download {spec.filename}", total=total)
                while chunk := r.read(1 << 20):
                    f.write(chunk)
                    h.update(chunk)
                    done += len(chunk)
                    bar.advance(task, len(chunk))
            if total is not None and done != total:
                raise OSError(f"connection closed after {done} of {total} bytes")
        _check_pinned(spec, h.hexdigest(), url)  # a mismatch leaves no file behind
    return h.hexdigest()


def _download_hub(spec: WeightSpec, hub: HubFile, dest: Path, timeout: float) -> str:
    """Fetch ``hub`` with ``huggingface_hub`` into ``dest``'s folder as ``dest``; returns the file's sha256.

    The client resumes a dropped transfer, checks the size and moves the finished file into place itself.
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url

    from stages.files import atomic_path

    endpoint, client = hub_endpoint(), {"library_name": "genmocap", "library_version": __version__}
    # hf_hub_download retries an unanswered metadata request for about 25 s before it gives up; one request
    # without retries first makes an offline run fail at once instead of after that wait per file.
    url = hf_hub_url(hub.repo, hub.path, revision=hub.revision, endpoint=endpoint)
    get_hf_file_metadata(url, timeout=timeout, endpoint=endpoint, **client)
    got = Path(
        hf_hub_download(
            hub.repo,
            hub.path,
            revision=hub.revision,
            local_dir=dest.parent,
            endpoint=endpoint,
            etag_timeout=timeout,
            **client,
        )
    )
    if got != dest:  # a file in a hub folder (gem_smpl/onnx/...) lands in that folder below local_dir
        with atomic_path(dest) as tmp:  # also fsyncs, which the client's own move does not
            os.replace(got, tmp)
        for folder in got.relative_to(dest.parent).parents[:-1]:  # the emptied hub folders, deepest first
            try:
                (dest.parent / folder).rmdir()
            except OSError:
                break
    digest = sha256_file(dest)
    try:
        _check_pinned(spec, digest, source_url(hub.url))
    except MissingWeightsError:
        dest.unlink(missing_ok=True)
        raise
    return digest


def download(spec: WeightSpec, dest_dir: Path | None = None, timeout: float = 30.0) -> Path:
    """Download ``spec`` into ``dest_dir`` (default: the user cache) as ``dest_dir / spec.filename``.

    A hub file (``spec.hub``) comes through ``huggingface_hub`` from ``spec.hub.revision`` at
    :func:`hub_endpoint`; any other through a plain HTTPS request to ``spec.url``. ``timeout`` bounds the
    connection and the metadata request (``$HF_HUB_DOWNLOAD_TIMEOUT`` bounds the hub client's reads). A
    pinned sha256 is checked; otherwise the file's sha256 is recorded (see the module docstring).

    Raises:
        MissingWeightsError: no public source, a network error, a short read or a wrong pinned sha256; no
            partial file is left at ``dest_dir / spec.filename``.
    """
    put_in = _anywhere(spec.filename) if dest_dir is None else str(dest_dir)
    if not spec.url:
        raise MissingWeightsError([MissingFile(spec.filename, put_in)])
    url = source_url(spec.url)
    dest = (dest_dir or cache_dir() / "weights") / spec.filename
    # the hub client raises OSError subclasses, but also errors of its HTTP library that are not OSErrors
    errors = (Exception,) if spec.hub else (OSError, http.client.HTTPException)
    try:
        if spec.hub:
            digest = _download_hub(spec, spec.hub, dest, timeout)
        else:
            digest = _download_url(spec, url, dest, timeout)
    except MissingWeightsError:
        raise
    except errors as e:
        reason = f"download failed: {_one_line(e)} ({url})"
        raise MissingWeightsError([MissingFile(spec.filename, put_in, reason)]) from e
    _remember(dest, digest)
    return dest


def resolve(name: str, *, allow_download: bool = True) -> Path:
    """Path of the weight file ``name`` (see module docstring for the order).

    A registered file with a sidecar (``vitpose_coco17.onnx`` → ``vitpose_coco17.onnx.data``), asked for by
    its bare name, is only returned with the sidecar next to it; a missing sidecar is downloaded into that
    folder when allowed. A path (``/x/hmr2.onnx``) is taken as given.

    Raises:
        MissingWeightsError: not found and not downloadable (the message says what to do).
    """
    if name.endswith(ARCHITECTURE_SUFFIXES):
        return Path(name)  # an architecture, built with random weights by its loader
    spec = REGISTRY.get(Path(name).name)
    found = locate(name)
    if found is None:
        if not (allow_download and spec and spec.url and Path(name).name == name):
            raise MissingWeightsError([MissingFile(name, _anywhere(name))])
        found = download(spec)
    # only for the registry's own name: a path the user gives may be a single-file export of their own
    if spec and spec.sidecar and Path(name).name == name and not (found.parent / spec.sidecar).is_file():
        side = REGISTRY.get(spec.sidecar)
        if not (allow_download and side and side.url):
            raise MissingWeightsError([MissingFile(spec.sidecar, _next_to(found, spec.sidecar))])
        try:
            download(side, dest_dir=found.parent)
        except MissingWeightsError as e:
            reason = e.files[0].reason if e.files else None
            raise MissingWeightsError(
                [MissingFile(spec.sidecar, _next_to(found, spec.sidecar), reason)]
            ) from e
    return found


def require(files: Mapping[str, str], *, allow_download: bool = True) -> dict[str, Path]:
    """Resolve a set of weight files at once: ``{role: file name or path}`` → ``{role: path}``.

    Every file is tried (and downloaded when it can be and ``allow_download``), so one error names them all.

    Raises:
        MissingWeightsError: one error listing every file that is still missing (with its role, where it goes
            and how to get it).
    """
    roles: dict[str, list[str]] = {}
    for role, name in files.items():
        roles.setdefault(name, []).append(role)
    paths: dict[str, Path] = {}
    missing: list[MissingFile] = []
    for name, named_roles in roles.items():
        try:
            paths[name] = resolve(name, allow_download=allow_download)
        except MissingWeightsError as e:
            role = ", ".join(named_roles)
            found = e.files or [MissingFile(name, _anywhere(name), str(e))]
            missing += [replace(f, role=role) for f in found]
    if missing:
        raise MissingWeightsError(missing)
    return {role: paths[name] for role, name in files.items()}


def fetch_all(names: list[str] | None = None) -> Iterator[tuple[str, Path | None, str | None]]:
    """Download every registered file (or the ``names`` given) that has a public source and is not present.

    Yields ``(file name, path, None)`` per file now present (downloaded or already there) and
    ``(file name, None, error message)`` per failure. Sidecars are fetched next to their ONNX graph.
    """
    sidecars = {s.sidecar for s in REGISTRY.values() if s.sidecar}
    unknown = [n for n in names or [] if n not in REGISTRY]
    for n in unknown:
        yield n, None, f"{n}: not a registered weight file (known: {', '.join(sorted(REGISTRY))})"
    for spec in REGISTRY.values():
        if not spec.url or spec.filename in sidecars or (names and spec.filename not in names):
            continue
        try:
            path = resolve(spec.filename)
        except MissingWeightsError as e:
            yield spec.filename, None, str(e)
            continue
        yield spec.filename, path, None
        if spec.sidecar:
            yield spec.sidecar, path.parent / spec.sidecar, None


# ---------------------------------------------------------------------------------------------------------
# Hashes: cached by (path, size, mtime) so a 2.5 GB checkpoint is hashed once, and recorded per registered
# file name on first use so a changed file is noticed.

_hash_lock = threading.Lock()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _ident(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: dict) -> None:
    from stages.files import atomic_write_json

    try:
        atomic_write_json(path, data)
    except OSError:
        pass  # a read-only cache only costs re-hashing and an unrecorded hash


def recorded_hashes() -> dict[str, str]:
    """sha256 recorded on first use, per registered file name."""
    return _read_json(cache_dir() / "recorded_sha256.json")


def _remember(path: Path, digest: str) -> None:
    """Cache ``digest`` for this exact file and check/record it under the file's registry name."""
    with _hash_lock:
        index_path = cache_dir() / "hashes.json"
        index = _read_json(index_path)
        index[_ident(path)] = digest
        _write_json(index_path, index)
        spec = REGISTRY.get(path.name)
        if spec is None:
            return
        if spec.sha256:
            if digest != spec.sha256:
                log.warning("%s: sha256 %s is not the published %s; right file?", path, digest, spec.sha256)
            return
        rec_path = cache_dir() / "recorded_sha256.json"
        recorded = _read_json(rec_path)
        before = recorded.get(spec.filename)
        if before == digest:
            return
        if before is not None:
            log.warning(
                "%s: contents differ from the %s first used here (sha256 %s, now %s); results made with the "
                "old file are recomputed",
                path,
                spec.filename,
                before[:12],
                digest[:12],
            )
        recorded[spec.filename] = digest
        _write_json(rec_path, recorded)


def file_hash(path: Path) -> str:
    """sha256 of a weight file (or of a model yaml's text), cached in the user cache.

    The first hash of a registered file is also recorded under its name (module docstring).
    """
    path = Path(path)
    if path.suffix in ARCHITECTURE_SUFFIXES and not path.is_file():
        return "arch:" + hashlib.sha256(path.name.encode()).hexdigest()
    with _hash_lock:
        cached = _read_json(cache_dir() / "hashes.json").get(_ident(path))
    if cached:
        return cached
    digest = sha256_file(path)
    _remember(path, digest)
    return digest


def _hash_check(expected: str | None, found: Path | None, index: dict) -> str | None:
    """ok | changed | unchecked (not hashed yet) for a present file, None for an absent one; never hashes."""
    if found is None:
        return None
    try:
        digest = index.get(_ident(found))
    except OSError:
        return "unchecked"
    if digest is None or expected is None:
        return "unchecked"
    return "ok" if digest == expected else "changed"


def status() -> list[dict]:
    """One row per registered weight file: where it is (or None), how to get it, its hash check.

    ``sha256`` is the pinned hash or else the one recorded on first use; ``hash_check`` compares it with the
    cached hash of the file found (``unchecked`` until the file was first used); nothing is hashed here.
    """
    rows = []
    recorded, index = recorded_hashes(), _read_json(cache_dir() / "hashes.json")
    for spec in REGISTRY.values():
        found = locate(spec.filename)
        expected = spec.sha256 or recorded.get(spec.filename)
        rows.append(
            {
                "file": spec.filename,
                "stage": spec.stage,
                "description": spec.description,
                "path": str(found) if found else None,
                "downloadable": bool(spec.url),
                "source": source_url(spec.url) if spec.url else None,
                "how_to_get": spec.how_to_get,
                "licence": spec.licence,
                "size_mb": spec.size_mb,
                "sidecar": spec.sidecar,
                "sha256": expected,
                "sha256_pinned": bool(spec.sha256),
                "hash_check": _hash_check(expected, found, index),
            }
        )
    return rows


def body_model_path() -> Path | None:
    """The SMPL-X neutral model, if present: $GENMOCAP_BODY_MODEL (file or folder) or the user cache."""
    candidates = []
    env = os.environ.get("GENMOCAP_BODY_MODEL")
    if env:
        p = Path(env).expanduser()
        candidates += [p, p / "SMPLX_NEUTRAL.npz", p / "smplx" / "SMPLX_NEUTRAL.npz"]
    candidates.append(cache_dir() / "body_models" / "smplx" / "SMPLX_NEUTRAL.npz")
    return next((c for c in candidates if c.is_file()), None)


def weights_hash(path: Path) -> str:
    """Content hash of a weight file; an ONNX graph's external-data sidecar is part of its weights."""
    h = file_hash(path)
    data = path.with_name(path.name + ".data")
    return f"{h}+{file_hash(data)}" if path.suffix == ".onnx" and data.is_file() else h
