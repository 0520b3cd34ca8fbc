"""Model registry: lookup order, clear errors for missing files, downloads, hashes."""

import hashlib
import http.server
import json
import logging
import threading
from functools import partial

import pytest

from pipeline import registry
from pipeline.cli import main
from pipeline.registry import MissingWeightsError, WeightSpec, download, file_hash, locate, resolve

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


@pytest.fixture
def http_requests() -> list[str]:
    """Paths requested from the ``http_dir`` server, in order."""
    return []


@pytest.fixture
def http_dir(tmp_path, http_requests):
    served = tmp_path / "served"
    served.mkdir()
    handler = partial(type("H", (_Handler,), {"requests": http_requests}), directory=str(served))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield served, f"http://127.0.0.1:{srv.server_address[1]}/"
    srv.shutdown()


@pytest.fixture
def hub(http_dir, http_requests, monkeypatch):
    """A local stand-in for huggingface.co holding nvidia/GEM-X's public files (via $HF_ENDPOINT)."""
    served, base = http_dir
    payloads = {}
    for name, path in HUB_FILES.items():
        f = served / "nvidia/GEM-X/resolve/main" / path
        f.parent.mkdir(parents=True, exist_ok=True)
        payloads[name] = f"{name} contents".encode() * 100
        f.write_bytes(payloads[name])
    monkeypatch.setenv("HF_ENDPOINT", base.rstrip("/"))
    return http_requests, payloads


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
    assert not list(weights.glob("*.part")) and not list(weights.glob(".*.part"))
    assert len(requests) == 2
    assert resolve("vitpose_coco17.onnx") == path and len(requests) == 2  # present: no download


def test_missing_sidecar_is_named_with_the_folder_it_belongs_in(tmp_path, hub, monkeypatch):
    _, payloads = hub
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "hmr2.onnx").write_bytes(b"graph")
    monkeypatch.setenv("GENMOCAP_WEIGHTS", str(mine))
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
    assert len(requests) == len(HUB_FILES)
    assert main(["models", "fetch"]) == 0 and len(requests) == len(HUB_FILES)
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
    mine = tmp_path / "mine"
    mine.mkdir()
    ckpt = mine / "gem_smpl.ckpt"
    ckpt.write_bytes(b"first")
    monkeypatch.setenv("GENMOCAP_WEIGHTS", str(mine))
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
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ShortHandler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        spec = WeightSpec("cut.pt", "track", "t", f"http://127.0.0.1:{srv.server_address[1]}/cut.pt", "", "")
        with pytest.raises(MissingWeightsError, match="download failed"):
            download(spec, timeout=5)
    finally:
        srv.shutdown()
    weights = registry.cache_dir() / "weights"
    assert not (weights / "cut.pt").exists() and not list(weights.glob(".*.part"))


def test_models_fetch_named_files_only(hub, monkeypatch, capsys):
    requests, payloads = hub
    assert main(["models", "fetch", "hmr2.onnx"]) == 0  # the graph brings its sidecar
    weights = registry.cache_dir() / "weights"
    assert sorted(p.name for p in weights.iterdir() if not p.name.startswith(".")) == [
        "hmr2.onnx",
        "hmr2.onnx.data",
    ]
    assert len(requests) == 2
    assert main(["models", "fetch", "nope.pt"]) == 1
    assert "not a registered weight file" in capsys.readouterr().err
