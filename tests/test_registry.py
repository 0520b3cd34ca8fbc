"""Model registry: lookup order, clear errors for missing files, downloads, hashes."""

import hashlib
import http.server
import threading
from functools import partial

import pytest

from pipeline import registry
from pipeline.registry import MissingWeightsError, WeightSpec, download, file_hash, locate, resolve


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


@pytest.fixture
def http_dir(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a, **k: None
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield served, f"http://127.0.0.1:{srv.server_address[1]}/"
    srv.shutdown()


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
    } <= files
    assert all(r["path"] is None for r in rows)
