"""End to end through tracking: a folder of good and bad clips, user-supplied detections, statuses and
reasons, published outputs, cache reuse, config-change invalidation and resume after a kill."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.discover import discover
from pipeline.runner import RunContext, run_batch
from stages import STAGES
from tests.media import (
    Box,
    box_at,
    default_people,
    detection_rows,
    ffmpeg_available,
    make_bad_inputs,
    make_clip,
    vfr_kept_frames,
)
from tests.shared import genmocap

pytestmark = pytest.mark.skipif(not ffmpeg_available(), reason="ffmpeg/ffprobe not installed")
REPO = Path(__file__).resolve().parents[1]

SIZE = (320, 240)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A footage folder with good clips (30, 60, 24 fps, VFR, rotated) and the bad-input corpus, plus a
    detections file giving the true boxes of every good clip by clip file stem."""
    root = tmp_path_factory.mktemp("footage")
    people = default_people(SIZE)
    truth: dict[str, tuple[list[Box], np.ndarray]] = {}
    det: dict[str, list[dict]] = {}
    for name, fps in [("good30.mp4", 30), ("good60.mov", 60), ("good24.mkv", 24)]:
        make_clip(root / name, seconds=2.0, fps=fps, size=SIZE, people=people)
        t = np.arange(int(2.0 * fps)) / fps
        det[Path(name).stem] = detection_rows(people, t)
        truth[Path(name).stem] = (people, t)
    make_clip(root / "vfr_people.mp4", seconds=3.0, fps=30, size=SIZE, people=people, vfr=True)
    t = vfr_kept_frames(3.0, 30) / 30.0
    det["vfr_people"] = detection_rows(people, t)
    truth["vfr_people"] = (people, t)

    bad = make_bad_inputs(root / "bad")
    shutil.copy(bad.pop("audio_only"), root / "bad" / "audio_only.mp4")  # audio-only under a video name
    (root / "bad" / "audio_only.m4a").unlink()
    small_people = default_people((160, 120))
    det["rotated"] = detection_rows(small_people, np.arange(30) / 30.0, rot_h=120)
    det["no_person"] = []
    det["corrupt"] = detection_rows(
        small_people, np.arange(60) / 30.0
    )  # boxes given: the decode must fail first
    dets = root.parent / f"{root.name}-detections.json"
    dets.write_text(json.dumps(det))
    return root, dets, truth


EXPECTED_FAIL = {
    "zero_byte": ("probe", "empty file"),
    "text_as_mp4": ("probe", "invalid data"),
    "truncated": ("probe", "moov atom not found"),
    "audio_only": ("probe", "no video stream"),
    "one_frame": ("probe", "too short: 1 frame"),
    "truncated_faststart": ("probe", "truncated or corrupt"),
    "no_frames": ("probe", "no decodable video frames"),
    "corrupt": ("track", "truncated or corrupt"),
}


def _run(corpus, out, overrides=()):
    root, dets, _ = corpus
    cfg = load_config(None, ["run.until=track", *overrides])
    return run_batch(discover([str(root)]), RunContext.create(cfg, out, detections=dets))


def _by_stem(report):
    return {Path(e["source"]).stem: e for e in report["clips"]}


def test_folder_statuses_tracks_and_cache(corpus, tmp_path):
    root, dets, truth = corpus
    out = tmp_path / "out"
    report = _run(corpus, out)
    entries = _by_stem(report)
    assert json.loads((out / "report.json").read_text()) == report

    for stem, (stage, words) in EXPECTED_FAIL.items():
        e = entries[stem]
        assert e["status"] == "failed", (stem, e)
        assert e["error"].startswith(f"{stage}:") and words in e["error"].lower(), (stem, e["error"])
        assert e["stages"][stage]["status"] == "failed"
        later = STAGES[STAGES.index(stage) + 1 :]
        assert all(e["stages"][s]["status"] == "skipped" for s in later)
        # nothing partial under a final name: only a complete clip.json saying why
        files = sorted(p.name for p in (out / e["id"]).iterdir())
        assert files == ["clip.json"], (stem, files)
        assert json.loads((out / e["id"] / "clip.json").read_text())["status"] == "failed"

    for stem in ("good30", "good60", "good24", "vfr_people", "rotated"):
        e = entries[stem]
        assert e["status"] == "ok" and e["error"] is None, (stem, e)
        assert e["people"] == 2
        assert e["stages"]["probe"]["status"] == "computed" and e["stages"]["track"]["status"] == "computed"
        for s in STAGES[2:]:
            assert e["stages"][s]["status"] == "skipped" and e["stages"][s]["reason"] == "after --until track"
        clip_dir = out / e["id"]
        assert {"clip.json", "tracks.npz", "tracks.json"} <= {p.name for p in clip_dir.iterdir()}

    # Nobody in the clip is an outcome, not a failure: the clip is ok with no people and says why.
    e = entries["no_person"]
    assert e["status"] == "ok" and e["people"] == 0 and e["stages"]["track"]["status"] == "computed"
    assert any(w.startswith("no person") for w in e["warnings"]), e["warnings"]

    # Tracks follow the true boxes, on the 30 fps model timeline, with source frame numbers kept.
    for stem, (people, t_src) in truth.items():
        e = entries[stem]
        z = np.load(out / e["id"] / "tracks.npz")
        frames = z["sample_frame_index"]
        steps = np.diff(z["sample_time_s"])
        assert np.all(steps >= 0) and (
            np.all(steps > 0) or stem in ("good24", "vfr_people")
        )  # slower: repeats
        n_model = int(np.floor(t_src[-1] * 30 + 1e-6)) + 1
        assert len(frames) == n_model, stem
        for pid in (0, 1):
            fi = z[f"person_{pid}/frame_index"]
            xyxy = z[f"person_{pid}/xyxy"]
            errs = [np.abs(xyxy - box_at(b, t_src[fi])).max() for b in people]
            assert min(errs) < 6.0, (stem, pid, errs)  # smoothing bends only the ends of linear motion
            bbx = z[f"person_{pid}/bbx_xys"]
            w, h = xyxy[:, 2] - xyxy[:, 0], xyxy[:, 3] - xyxy[:, 1]
            assert np.allclose(bbx[:, 2], 1.2 * np.maximum(h, w / 0.75), rtol=0.05)
        # the two identities never swap although the boxes cross
        x0 = z["person_0/xyxy"][:, 0]
        assert np.all(np.diff(x0) > 0) or np.all(np.diff(x0) < 0), stem

    # A second run reuses every artifact.
    again = _by_stem(_run(corpus, out))
    for stem in ("good30", "good60", "good24", "vfr_people", "rotated"):
        assert again[stem]["stages"]["probe"]["status"] == "cached"
        assert again[stem]["stages"]["track"]["status"] == "cached"
        assert again[stem]["people"] == 2
    assert {k: v["status"] for k, v in again.items()} == {k: v["status"] for k, v in entries.items()}

    # Changing one track option recomputes only the track stage; probe stays cached.
    changed = _by_stem(_run(corpus, out, ["track.select=largest"]))
    for stem in ("good30", "good60"):
        assert changed[stem]["stages"]["probe"]["status"] == "cached"
        assert changed[stem]["stages"]["track"]["status"] == "computed"
        assert changed[stem]["people"] == 1


def test_clip_json_describes_the_clip(corpus, tmp_path):
    out = tmp_path / "out"
    root, dets, _ = corpus
    cfg = load_config(None, ["run.until=track"])
    clips = discover([str(root / "good60.mov"), str(root / "bad" / "rotated.mp4")])
    run_batch(clips, RunContext.create(cfg, out, detections=dets))
    doc = json.loads((out / clips[0].id / "clip.json").read_text())
    assert doc["schema"] == "genmocap.clip/1" and doc["status"] == "ok"
    assert doc["video"]["fps"] == pytest.approx(60.0) and doc["video"]["frame_count"] == 120
    assert doc["source_fingerprint"] and doc["config_digest"] == cfg.digest()
    assert [p["person_id"] for p in doc["people"]] == [0, 1]
    rot = json.loads((out / clips[1].id / "clip.json").read_text())
    assert rot["video"]["rotation"] == 90 and (rot["video"]["width"], rot["video"]["height"]) == (120, 160)


def test_failed_rerun_removes_stale_outputs(corpus, tmp_path):
    """A clip that was ok and now fails (here: its detections withdrawn) must not keep old tracks."""
    root, dets, _ = corpus
    out = tmp_path / "out"
    clip = discover([str(root / "good30.mp4")])
    cfg = load_config(None, ["run.until=track"])
    assert run_batch(clip, RunContext.create(cfg, out, detections=dets))["summary"]["ok"] == 1
    assert (out / clip[0].id / "tracks.npz").exists()
    empty = tmp_path / "none.json"
    empty.write_text(json.dumps({"other_clip": []}))
    r = run_batch(clip, RunContext.create(cfg, out, detections=empty))
    assert r["clips"][0]["status"] == "failed" and "no detections for this clip" in r["clips"][0]["error"]
    assert sorted(p.name for p in (out / clip[0].id).iterdir()) == ["clip.json"]


@pytest.mark.slow
def test_cli_prefect_folder_run_exit_codes_and_cache(corpus, tmp_path):
    """The real entry point in Prefect's local mode: exit 1 when a clip fails, a report, then all cached."""
    root, dets, _ = corpus
    out = tmp_path / "out"
    args = ["run", str(root), "--out", str(out), "--until", "track", "--detections", str(dets)]
    r1 = genmocap(*args)
    assert r1.returncode == 1, r1.stdout + r1.stderr
    assert "Traceback" not in r1.stderr, r1.stderr
    rep = json.loads((out / "report.json").read_text())
    ok = [e for e in rep["clips"] if e["status"] == "ok"]
    assert len(ok) >= 5 and rep["summary"]["failed"] == len(rep["clips"]) - len(ok)
    assert "failed" in r1.stdout and "ok" in r1.stdout
    r2 = genmocap(*args)
    assert r2.returncode == 1
    rep2 = json.loads((out / "report.json").read_text())
    for e in rep2["clips"]:
        if e["status"] == "ok":
            assert e["stages"]["probe"]["status"] == e["stages"]["track"]["status"] == "cached"
    # only good clips: exit 0
    r3 = genmocap(
        "run", str(root / "good30.mp4"), "--out", str(out), "--until", "track", "--detections", str(dets)
    )
    assert r3.returncode == 0, r3.stdout + r3.stderr


def test_cli_usage_errors_exit_2(tmp_path):
    r = genmocap("run", str(tmp_path / "missing"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "no such file" in r.stderr
    (tmp_path / "empty").mkdir()
    r = genmocap("run", str(tmp_path / "empty"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "no clips found" in r.stderr
    r = genmocap("run", str(tmp_path), "--out", str(tmp_path / "o"), "--set", "track.select=biggest")
    assert r.returncode == 2 and "track.select" in r.stderr and "'largest'" in r.stderr
    r = genmocap("run", str(tmp_path), "--out", str(tmp_path / "o"), "--until", "render")
    assert r.returncode == 2


def test_missing_detector_weights_is_a_clear_setup_error(corpus, tmp_path):
    root, _, _ = corpus
    r = genmocap(
        "run",
        str(root / "good30.mp4"),
        "--out",
        str(tmp_path / "o"),
        "--set",
        "track.detector.weights=nothere.pt",
        "--set",
        "run.orchestrator=local",
        env={"XDG_CACHE_HOME": str(tmp_path / "cache")},
    )
    assert r.returncode == 2
    assert "weight file not found: nothere.pt" in r.stderr and "GENMOCAP_WEIGHTS" in r.stderr
    assert not (tmp_path / "o" / "report.json").exists()  # nothing was started


@pytest.mark.slow
def test_resume_after_kill(tmp_path):
    """Kill a run in the middle of the track stage; the re-run reuses the probe and finishes the rest."""
    clip = make_clip(
        tmp_path / "long.mp4", seconds=4.0, fps=30, size=(320, 240), people=default_people((320, 240))
    )
    out = tmp_path / "out"
    args = [
        "run",
        str(clip),
        "--out",
        str(out),
        "--until",
        "track",
        "--set",
        "run.orchestrator=local",
        "--set",
        "track.detector.weights=yolov8n.yaml",  # random weights: the real batched detector path
        "--set",
        "track.detector.imgsz=160",
        "--set",
        "track.detector.batch=4",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    store = out / ".genmocap" / "artifacts"
    deadline = time.time() + 240
    while time.time() < deadline and not any((store / "probe").glob("*/meta.json")):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    time.sleep(1.0)  # well inside the track stage (model load + detection take several seconds)
    assert proc.poll() is None, "run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not any((store / "track").glob("*/meta.json"))
    assert not (out / "report.json").exists()

    r = subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    rep = json.loads((out / "report.json").read_text())
    stages = rep["clips"][0]["stages"]
    assert stages["probe"]["status"] == "cached", (r.stdout, r.stderr)
    assert stages["track"]["status"] == "computed", stages
    if not rep["clips"][0]["people"]:  # random weights may find nobody: then it must say so
        assert any(w.startswith("no person") for w in rep["clips"][0]["warnings"])
    assert r.returncode == 0, r.stderr


@pytest.mark.slow
def test_batch_flow_from_plain_parameters(corpus, tmp_path):
    """The deployable flow (what a nightly schedule runs) from JSON-able parameters, in local mode."""
    root, dets, _ = corpus
    out = tmp_path / "out"
    code = (
        "import json, sys; from flows.folder import process_folder; "
        f"r = process_folder(inputs=[{str(root / 'good30.mp4')!r}, {str(root / 'bad' / 'zero_byte.mp4')!r}], "
        f"out={str(out)!r}, overrides=['run.until=track'], detections={str(dets)!r}); "
        "print(json.dumps(r['summary']))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env, cwd=REPO
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {"clips": 2, "ok": 1, "failed": 1}
    assert json.loads((out / "report.json").read_text())["summary"]["ok"] == 1
