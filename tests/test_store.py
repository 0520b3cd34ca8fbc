"""Artifact store: keys, atomic saves, reuse, and leftovers of killed runs."""

import os
import time

import numpy as np

from pipeline.store import Artifact, ArtifactStore, artifact_key


def test_key_depends_on_every_part():
    base = dict(stage="track", version="1", config={"a": 1}, upstream={"probe": "k"}, inputs={"src": "h"})
    k = artifact_key(**base)
    assert k == artifact_key(**base)
    for change in [
        {"stage": "probe"},
        {"version": "2"},
        {"config": {"a": 2}},
        {"upstream": {"probe": "j"}},
        {"inputs": {"src": "g"}},
        {"weights": {"det": "w"}},
    ]:
        assert artifact_key(**{**base, **change}) != k
    # key order in dicts does not matter
    assert artifact_key(**{**base, "config": {"b": 1, "a": 2}}) == artifact_key(
        **{**base, "config": {"a": 2, "b": 1}}
    )


def test_save_load_roundtrip(tmp_path):
    s = ArtifactStore(tmp_path)
    arrays = {"x": np.arange(6, dtype=np.float32).reshape(2, 3), "person_0/ids": np.array([1, 2])}
    s.save("track", "k1", Artifact({"fps": 30.0}, arrays))
    a = s.load("track", "k1")
    assert a.meta == {"fps": 30.0}
    assert set(a.arrays) == set(arrays) and np.array_equal(a.arrays["x"], arrays["x"])
    assert s.load("track", "missing") is None
    assert list((tmp_path / ".tmp").iterdir()) == []


def test_incomplete_artifact_is_not_a_hit(tmp_path):
    s = ArtifactStore(tmp_path)
    d = s.path("track", "k2")
    d.mkdir(parents=True)
    (d / "arrays.npz").write_bytes(b"partial")  # a crash before meta.json
    assert s.load("track", "k2") is None
    s.save("track", "k2", Artifact({"ok": True}))  # replaces the broken leftover
    assert s.load("track", "k2").meta == {"ok": True}


def test_old_temp_dirs_are_swept(tmp_path):
    old = tmp_path / ".tmp" / "track-dead"
    old.mkdir(parents=True)
    past = time.time() - 3 * 24 * 3600
    os.utime(old, (past, past))
    fresh = tmp_path / ".tmp" / "track-live"
    fresh.mkdir()
    ArtifactStore(tmp_path)
    assert not old.exists() and fresh.exists()
