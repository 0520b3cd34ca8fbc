"""Model registry: lookup order, clear errors for missing files, downloads, hashes."""

import hashlib
import http.server
import json
import logging
import pickle
import re
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from pipeline import registry
from pipeline.cli import main
from pipeline.registry import (
    HubFile,
    MissingWeightsError,
    WeightSpec,
    download,
    file_hash,
    locate,
    require,
    resolve,
)

REPO = Path(__file__).resolve().parents[1]
HUB_FILES = {  # registry name -> path inside the hub repository nvidia/GEM-X
    "gem_smpl.ckpt": "gem_smpl.ckpt",
    "vitpose_coco17.onnx": "gem_smpl/onnx/vitpose_coco17.onnx",
    "vitpose_coco17.onnx.data": "gem_smpl/onnx/vitpose_coco17.onnx.data",
    "hmr2.onnx": "gem_smpl/onnx/hmr2.onnx",
    "hmr2.onnx.data": "gem_smpl/onnx/hmr2.onnx.data",
}


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("GENMOCAP_WEIGHTS", raising=False)
    monkeypatch.chdir(tmp_path)


def _weights_folder(tmp_path: Path, monkeypatch, files: dict[str, bytes]) -> Path:
    """A folder holding ``files`` ({name: contents}), made the one ``$GENMOCAP_WEIGHTS`` folder."""
    mine = tmp_path / "mine"
    mine.mkdir()
    for name, data in files.items():
        (mine / name).write_bytes(data)
    monkeypatch.setenv("GENMOCAP_WEIGHTS", str(mine))
    return mine


def test_lookup_order(tmp_path, monkeypatch):
    w1, w2 = tmp_path / "w1", tmp_path / "w2"
    for d in (w1, w2):
        d.mkdir()
    (w2 / "yolov8x.pt").write_bytes(b"two")
    monkeypatch.setenv("GENMOCAP_WEIGHTS", f"{w1}:{w2}")
    assert resolve("yolov8x.pt", allow_download=False) == (w2 / "yolov8x.pt").resolve()
    (w1 / "yolov8x.pt").write_bytes(b"one")
    assert resolve("yolov8x.pt", allow_download=False) == (w1 / "yolov8x.pt").resolve()
    cache = tmp_path / "cache" / "genmocap" / "weights"
    cache.mkdir(parents=True)
    (cache / "gem_smpl.ckpt").write_bytes(b"gem")
    assert locate("gem_smpl.ckpt") == (cache / "gem_smpl.ckpt").resolve()
    explicit = tmp_path / "mine.pt"
    explicit.write_bytes(b"x")
    assert resolve(str(explicit)) == explicit.resolve()


def test_missing_file_message_names_file_place_and_source():
    with pytest.raises(MissingWeightsError) as e:
        resolve("vitpose-h-multi-coco.pth")
    msg = str(e.value)
    assert "vitpose-h-multi-coco.pth" in msg and "GENMOCAP_WEIGHTS" in msg and "how to get it" in msg
    with pytest.raises(MissingWeightsError, match="yolov8x.pt"):
        resolve("yolov8x.pt", allow_download=False)
    with pytest.raises(MissingWeightsError, match="nowhere/model.pt"):
        resolve("nowhere/model.pt")


def test_architecture_yaml_passes_through():
    assert str(resolve("yolov8n.yaml")) == "yolov8n.yaml"
    assert file_hash(resolve("yolov8n.yaml")).startswith("arch:")


def test_file_hash_is_cached_and_notices_changes(tmp_path):
    f = tmp_path / "w.pt"
    f.write_bytes(b"abc")
    assert file_hash(f) == hashlib.sha256(b"abc").hexdigest()
    assert (tmp_path / "cache" / "genmocap" / "hashes.json").is_file()
    f.write_bytes(b"abcd")
    assert file_hash(f) == hashlib.sha256(b"abcd").hexdigest()


class _Handler(http.server.SimpleHTTPRequestHandler):
    requests: list[str]

    def log_message(self, *args, **kwargs):
        self.requests.append(self.path)


@contextmanager
def _serving(handler) -> Iterator[str]:
    """Serve ``handler`` on a free loopback port; yields the base address (no trailing slash)."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def http_requests() -> list[str]:
    """Paths requested from the ``http_dir`` server, in order."""
    return []


@pytest.fixture
def http_dir(tmp_path, http_requests):
    served = tmp_path / "served"
    served.mkdir()
    handler = partial(type("H", (_Handler,), {"requests": http_requests}), directory=str(served))
    with _serving(handler) as base:
        yield served, base + "/"


class _HubHandler(http.server.BaseHTTPRequestHandler):
    """Enough of the Hugging Face hub's file protocol for the real ``hf_hub_download``: HEAD and GET (with a
    ``Range``) on ``/{repo}/resolve/{revision}/{path}``, answered with ``X-Repo-Commit``, ``ETag`` and
    ``Content-Length`` and never a redirect; an unknown file is a 404 with the hub's ``X-Error-Code``."""

    files: dict[tuple[str, str, str], bytes]  # (repo, revision, path) -> contents
    requests: list[tuple[str, str, str | None]]  # (method, path, Range header)
    drop_first_get: set[str]  # paths whose first GET stops short (a dropped connection)

    def do_HEAD(self):
        self._answer(send_body=False)

    def do_GET(self):
        self._answer(send_body=True)

    def _answer(self, send_body: bool) -> None:
        self.requests.append((self.command, self.path, self.headers.get("Range")))
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", urllib.parse.unquote(self.path))
        data = self.files.get(m.groups()) if m else None
        if data is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start = (
            int(self.headers["Range"].removeprefix("bytes=").split("-")[0]) if "Range" in self.headers else 0
        )
        self.send_response(206 if start else 200)
        self.send_header("X-Repo-Commit", hashlib.sha1(m.group(2).encode()).hexdigest())
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(data) - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if send_body:
            body = data[start:]
            if self.command == "GET" and self.path in self.drop_first_get:
                self.drop_first_get.discard(self.path)
                body = body[: len(body) * 9 // 10]
                self.close_connection = True
            self.wfile.write(body)

    def log_message(self, *args, **kwargs):
        pass


def _gets(requests: list[tuple[str, str, str | None]], method: str = "GET") -> list[str]:
    """The file requests (``/resolve/``) among ``requests`` made with ``method`` (the hub client also asks
    the endpoint for other things, such as its list of agent harnesses)."""
    return [path for m, path, _ in requests if m == method and "/resolve/" in path]


@pytest.fixture
def hub_server(monkeypatch):
    """A local hub (via ``$HF_ENDPOINT``): ``(files, requests, drop_first_get)``, empty to start with."""
    files: dict[tuple[str, str, str], bytes] = {}
    requests: list[tuple[str, str, str | None]] = []
    drops: set[str] = set()
    handler = type("Hub", (_HubHandler,), {"files": files, "requests": requests, "drop_first_get": drops})
    with _serving(handler) as base:
        monkeypatch.setenv("HF_ENDPOINT", base)
        yield files, requests, drops


@pytest.fixture
def hub(hub_server):
    """The local hub holding nvidia/GEM-X's public files at ``main``: ``(requests, payloads)``."""
    files, requests, _ = hub_server
    payloads = {}
    for name, path in HUB_FILES.items():
        payloads[name] = f"{name} contents".encode() * 100
        files["nvidia/GEM-X", "main", path] = payloads[name]
    return requests, payloads


def _leftovers(folder: Path) -> list[Path]:
    """Temp or partial files anywhere below ``folder`` (the hub client's bookkeeping aside)."""
    return [p for p in folder.rglob("*") if p.suffix in (".tmp", ".part", ".incomplete") or ".tmp." in p.name]


def test_download_with_checksum(http_dir, tmp_path):
    served, base = http_dir
    payload = b"weights" * 1000
    (served / "tiny.pt").write_bytes(payload)
    good = WeightSpec(
        "tiny.pt", "track", "t", base + "tiny.pt", "", "", sha256=hashlib.sha256(payload).hexdigest()
    )
    path = download(good)
    assert path.read_bytes() == payload and path.parent == registry.cache_dir() / "weights"
    bad = WeightSpec("tiny2.pt", "track", "t", base + "tiny.pt", "", "", sha256="0" * 64)
    with pytest.raises(MissingWeightsError, match="wrong sha256"):
        download(bad)
    assert not (registry.cache_dir() / "weights" / "tiny2.pt").exists()
    gone = WeightSpec("gone.pt", "track", "t", base + "gone.pt", "", "")
    with pytest.raises(MissingWeightsError, match="download failed"):
        download(gone)


def test_status_lists_every_stage_weight():
    rows = registry.status()
    files = {r["file"] for r in rows}
    assert {
        "yolov8x.pt",
        "vitpose-h-multi-coco.pth",
        "epoch=10-step=25000.ckpt",
        "gem_smpl.ckpt",
        "droid.pth",
        *HUB_FILES,
    } <= files
    assert all(r["path"] is None and r["hash_check"] is None for r in rows)


def test_gem_hub_files_are_registered_with_their_published_addresses():
    for name, path in HUB_FILES.items():
        spec = registry.REGISTRY[name]
        assert spec.url == f"https://huggingface.co/nvidia/GEM-X/resolve/main/{path}"
        assert "nvidia/GEM-X" in spec.how_to_get
    assert registry.REGISTRY["vitpose_coco17.onnx"].sidecar == "vitpose_coco17.onnx.data"
    assert registry.REGISTRY["hmr2.onnx"].sidecar == "hmr2.onnx.data"
    assert registry.REGISTRY["vitpose_coco17.onnx"].stage == "keypoints"
    assert registry.REGISTRY["hmr2.onnx"].stage == "features"
    assert registry.REGISTRY["gem_smpl.ckpt"].stage == "estimate"


def test_onnx_graph_is_resolved_with_its_sidecar_from_the_hub(hub):
    requests, payloads = hub
    path = resolve("vitpose_coco17.onnx")
    weights = registry.cache_dir() / "weights"
    assert path == (weights / "vitpose_coco17.onnx").resolve()
    assert path.read_bytes() == payloads["vitpose_coco17.onnx"]
    assert (weights / "vitpose_coco17.onnx.data").read_bytes() == payloads["vitpose_coco17.onnx.data"]
    # by file name in our weights folder, not in the hub's folder layout; nothing partial left
    assert sorted(p.name for p in weights.iterdir() if not p.name.startswith(".")) == [
        "vitpose_coco17.onnx",
        "vitpose_coco17.onnx.data",
    ]
    assert not _leftovers(weights)
    assert len(_gets(requests)) == 2
    assert resolve("vitpose_coco17.onnx") == path  # present: no request at all
    assert len(_gets(requests)) == 2 and len(_gets(requests, "HEAD")) == 4


def test_missing_sidecar_is_named_with_the_folder_it_belongs_in(tmp_path, hub, monkeypatch):
    _, payloads = hub
    mine = _weights_folder(tmp_path, monkeypatch, {"hmr2.onnx": b"graph"})
    with pytest.raises(MissingWeightsError) as e:
        resolve("hmr2.onnx", allow_download=False)
    msg = str(e.value)
    assert "hmr2.onnx.data" in msg and str(mine) in msg and "nvidia/GEM-X" in msg
    # allowed to download: the sidecar goes next to the graph, not into the cache
    assert resolve("hmr2.onnx") == (mine / "hmr2.onnx").resolve()
    assert (mine / "hmr2.onnx.data").read_bytes() == payloads["hmr2.onnx.data"]
    assert not (registry.cache_dir() / "weights" / "hmr2.onnx.data").exists()


def test_locate_prefers_the_folder_with_graph_and_sidecar(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        (d / "hmr2.onnx").write_bytes(b"graph")
    (b / "hmr2.onnx.data").write_bytes(b"weights")
    monkeypatch.setenv("GENMOCAP_WEIGHTS", f"{a}:{b}")
    assert locate("hmr2.onnx") == (b / "hmr2.onnx").resolve()
    assert resolve("hmr2.onnx", allow_download=False) == (b / "hmr2.onnx").resolve()


def test_offline_error_names_file_folders_and_source(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(MissingWeightsError) as e:
        resolve("gem_smpl.ckpt")
    msg = str(e.value)
    assert "gem_smpl.ckpt" in msg
    assert str(registry.cache_dir() / "weights") in msg and "GENMOCAP_WEIGHTS" in msg
    assert "how to get it" in msg and "nvidia/GEM-X" in msg
    assert "http://127.0.0.1:9/nvidia/GEM-X/resolve/main/gem_smpl.ckpt" in msg and "download failed" in msg


def test_models_fetch_downloads_every_public_file_once(hub, monkeypatch, capsys):
    requests, payloads = hub
    # only the hub's files are public here (the YOLO entries would reach for github.com)
    hub_only = {k: v for k, v in registry.REGISTRY.items() if k in HUB_FILES or not v.url}
    monkeypatch.setattr(registry, "REGISTRY", hub_only)
    assert main(["models", "fetch"]) == 0
    weights = registry.cache_dir() / "weights"
    for name, payload in payloads.items():
        assert (weights / name).read_bytes() == payload
    out = capsys.readouterr().out
    assert all(f"{name}: " in out for name in HUB_FILES)
    assert len(_gets(requests)) == len(HUB_FILES)
    assert main(["models", "fetch"]) == 0 and len(_gets(requests)) == len(HUB_FILES)
    capsys.readouterr()
    assert main(["models", "--json"]) == 0
    rows = {r["file"]: r for r in json.loads(capsys.readouterr().out)["weights"]}
    for name, payload in payloads.items():
        row = rows[name]
        assert row["path"] == str((weights / name).resolve())
        assert row["sha256"] == hashlib.sha256(payload).hexdigest()  # recorded on download
        assert row["hash_check"] == "ok" and not row["sha256_pinned"]
    assert rows["vitpose_coco17.onnx"]["sidecar"] == "vitpose_coco17.onnx.data"
    assert rows["droid.pth"]["path"] is None


def test_models_fetch_offline_fails_with_one_full_message(hub, monkeypatch, capsys):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    hub_only = {k: v for k, v in registry.REGISTRY.items() if k in HUB_FILES or not v.url}
    monkeypatch.setattr(registry, "REGISTRY", hub_only)
    assert main(["models", "fetch"]) == 1
    err = capsys.readouterr().err
    assert err.count("looked in:") == 1 and "hmr2.onnx: download failed" in err


def test_hash_is_recorded_on_first_use_and_a_change_is_reported(tmp_path, monkeypatch, caplog):
    ckpt = _weights_folder(tmp_path, monkeypatch, {"gem_smpl.ckpt": b"first"}) / "gem_smpl.ckpt"
    first = hashlib.sha256(b"first").hexdigest()
    assert registry.status()[-1]["file"] == "droid.pth"
    row = next(r for r in registry.status() if r["file"] == "gem_smpl.ckpt")
    assert row["hash_check"] == "unchecked" and row["sha256"] is None  # status never hashes
    assert file_hash(resolve("gem_smpl.ckpt")) == first
    assert registry.recorded_hashes() == {"gem_smpl.ckpt": first}
    row = next(r for r in registry.status() if r["file"] == "gem_smpl.ckpt")
    assert row["hash_check"] == "ok" and row["sha256"] == first
    ckpt.write_bytes(b"second")
    with caplog.at_level(logging.WARNING, logger="pipeline.registry"):
        assert file_hash(ckpt) == hashlib.sha256(b"second").hexdigest()
    assert "differ" in caplog.text and first[:12] in caplog.text
    assert registry.recorded_hashes()["gem_smpl.ckpt"] == hashlib.sha256(b"second").hexdigest()
    other = tmp_path / "unregistered.pt"
    other.write_bytes(b"x")
    file_hash(other)
    assert "unregistered.pt" not in registry.recorded_hashes()


class _ShortHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(b"only a part")

    def log_message(self, *args, **kwargs):
        pass


def test_truncated_download_is_not_kept():
    with _serving(_ShortHandler) as base:
        spec = WeightSpec("cut.pt", "track", "t", f"{base}/cut.pt", "", "")
        with pytest.raises(MissingWeightsError, match="download failed"):
            download(spec, timeout=5)
    weights = registry.cache_dir() / "weights"
    assert not (weights / "cut.pt").exists() and not _leftovers(weights)


def test_models_fetch_named_files_only(hub, monkeypatch, capsys):
    requests, payloads = hub
    assert main(["models", "fetch", "hmr2.onnx"]) == 0  # the graph brings its sidecar
    weights = registry.cache_dir() / "weights"
    assert sorted(p.name for p in weights.iterdir() if not p.name.startswith(".")) == [
        "hmr2.onnx",
        "hmr2.onnx.data",
    ]
    assert len(_gets(requests)) == 2
    assert main(["models", "fetch", "nope.pt"]) == 1
    assert "not a registered weight file" in capsys.readouterr().err


def test_hub_file_comes_from_the_revision_of_its_entry(hub_server, tmp_path):
    files, requests, _ = hub_server
    files["org/models", "main", "nets/w.bin"] = b"main branch"
    files["org/models", "v1.0", "nets/w.bin"] = b"tagged"
    hub = HubFile("org/models", "nets/w.bin", revision="v1.0")
    spec = WeightSpec("w.bin", "track", "t", hub.url, "", "", hub=hub)
    dest = tmp_path / "weights"
    assert download(spec, dest_dir=dest) == dest / "w.bin"
    assert (dest / "w.bin").read_bytes() == b"tagged"
    assert _gets(requests) == ["/org/models/resolve/v1.0/nets/w.bin"]
    assert not (dest / "nets").exists()  # the hub's folder is emptied and removed
    pinned = WeightSpec("w2.bin", "track", "t", hub.url, "", "", sha256="0" * 64, hub=hub)
    with pytest.raises(MissingWeightsError, match="wrong sha256"):
        download(pinned, dest_dir=dest)
    assert not (dest / "w2.bin").exists() and not (dest / "nets").exists()


def test_hub_download_resumes_a_dropped_connection(hub_server):
    files, requests, drops = hub_server
    # big enough that the client has written a part (it writes in chunks of several MB) when the line drops
    payload = np.random.default_rng(0).bytes(12 << 20)
    files["nvidia/GEM-X", "main", "gem_smpl.ckpt"] = payload
    drops.add("/nvidia/GEM-X/resolve/main/gem_smpl.ckpt")
    path = resolve("gem_smpl.ckpt")
    assert path.read_bytes() == payload
    ranges = [r for m, p, r in requests if m == "GET" and p.endswith("gem_smpl.ckpt")]
    assert len(ranges) == 2 and ranges[0] is None
    start = int(ranges[1].removeprefix("bytes=").rstrip("-"))  # the second request asks only for the rest
    assert 0 < start < len(payload)
    assert not _leftovers(registry.cache_dir() / "weights")


def test_hub_file_absent_from_the_hub_is_reported(hub_server):
    with pytest.raises(MissingWeightsError) as e:
        resolve("gem_smpl.ckpt")  # the local hub holds no files
    assert "download failed" in str(e.value) and "/nvidia/GEM-X/resolve/main/gem_smpl.ckpt" in str(e.value)


def test_require_resolves_a_set_and_downloads_what_it_can(hub, tmp_path, monkeypatch):
    requests, payloads = hub
    mine = _weights_folder(tmp_path, monkeypatch, {"yolov8x.pt": b"yolo"})
    paths = require(
        {"detector": "yolov8x.pt", "gem": "gem_smpl.ckpt", "hmr2": "hmr2.onnx", "gem2": "gem_smpl.ckpt"}
    )
    weights = registry.cache_dir() / "weights"
    assert paths == {
        "detector": (mine / "yolov8x.pt").resolve(),
        "gem": (weights / "gem_smpl.ckpt").resolve(),
        "hmr2": (weights / "hmr2.onnx").resolve(),
        "gem2": (weights / "gem_smpl.ckpt").resolve(),
    }
    assert (weights / "hmr2.onnx.data").read_bytes() == payloads["hmr2.onnx.data"]
    assert len(_gets(requests)) == 3  # gem_smpl.ckpt once for both roles


def test_require_lists_every_missing_file_in_one_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # offline: nothing listens on the discard port
    # hmr2.onnx without its sidecar
    mine = _weights_folder(tmp_path, monkeypatch, {"hmr2.onnx": b"graph", "yolov8x.pt": b"yolo"})
    wanted = {
        "detector": "yolov8x.pt",
        "vitpose": "vitpose-h-multi-coco.pth",
        "hmr2": "hmr2.onnx",
        "gem": "gem_smpl.ckpt",
        "droid": "nowhere/droid.pth",
    }
    started = time.monotonic()
    with pytest.raises(MissingWeightsError) as e:
        require(wanted)
    assert time.monotonic() - started < 10  # an unreachable hub fails at once, not after the client's retries
    assert [(f.name, f.role) for f in e.value.files] == [
        ("vitpose-h-multi-coco.pth", "vitpose"),
        ("hmr2.onnx.data", "hmr2"),
        ("gem_smpl.ckpt", "gem"),
        ("nowhere/droid.pth", "droid"),
    ]
    msg = str(e.value)
    assert msg.startswith("4 weight files not found: ") and msg.count("looked in:") == 1
    assert str(registry.cache_dir() / "weights") in msg and "GENMOCAP_WEIGHTS" in msg
    for name, role in [
        ("vitpose-h-multi-coco.pth", "vitpose"),
        ("hmr2.onnx.data", "hmr2"),
        ("gem_smpl.ckpt", "gem"),
        ("nowhere/droid.pth", "droid"),
    ]:
        assert f"weight file not found: {name} ({role})" in msg
    assert msg.count("how to get it:") == 4 and msg.count("put it in:") == 4
    assert f"put it in: {mine}, next to hmr2.onnx" in msg
    assert "download failed" in msg and "http://127.0.0.1:9/nvidia/GEM-X/resolve/main/gem_smpl.ckpt" in msg
    assert "yolov8x.pt" not in msg
    # without downloads the hub files are listed too, with where to get them
    with pytest.raises(MissingWeightsError) as e:
        require({"gem": "gem_smpl.ckpt", "vitpose": "vitpose_coco17.onnx"}, allow_download=False)
    assert [f.name for f in e.value.files] == ["gem_smpl.ckpt", "vitpose_coco17.onnx"]
    assert str(e.value).count("source: http://127.0.0.1:9/nvidia/GEM-X/resolve/main/") == 2
    again = pickle.loads(pickle.dumps(e.value))  # crosses process pools and orchestrators intact
    assert str(again) == str(e.value) and again.files == e.value.files


def test_registry_imports_without_heavy_modules():
    code = (
        "import sys, pipeline.registry; "
        "print(sorted({'huggingface_hub', 'torch', 'cv2', 'bpy'} & set(sys.modules)))"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"
