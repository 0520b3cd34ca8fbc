"""The stage contract and the generic runner: a stage graph (``--stages``/``--until`` run what is needed), the
camera without pose or GEM weights, a clip with nobody in it, the decode budget, one message for every
missing weight file, a fast CLI, and a new stage from one module plus one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import stages.video as video
from pipeline.cli import main
from pipeline.config import load_config
from stages import SPECS, STAGES, closure
from stages.spec import PixelJob, key_settings, run_pixel_jobs
from tests.media import default_people, detection_rows, ffmpeg_available, make_clip
from tests.shared import fixture_dir

REPO = Path(__file__).resolve().parents[1]
SIZE = (160, 120)
pytestmark = pytest.mark.skipif(not ffmpeg_available(), reason="ffmpeg/ffprobe not installed")


@pytest.fixture(autouse=True)
def no_weights(tmp_path, monkeypatch):
    """No weight file anywhere and no downloads: what a camera-only user has."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # a closed port: downloads fail at once
    monkeypatch.delenv("GENMOCAP_WEIGHTS", raising=False)
    monkeypatch.delenv("GENMOCAP_BODY_MODEL", raising=False)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    root = tmp_path_factory.mktemp("graph")
    people = default_people(SIZE)
    make_clip(root / "walk.mp4", seconds=1.5, fps=30, size=SIZE, people=people)
    dets = root / "dets.json"
    dets.write_text(json.dumps(detection_rows(people, np.arange(45) / 30.0)))
    empty = root / "nobody.json"
    empty.write_text(json.dumps({"walk": []}))
    return root / "walk.mp4", dets, empty


@pytest.fixture
def decodes(monkeypatch):
    """Counts launches of the pixel decoder (one ffmpeg process reading a clip's frames)."""
    calls: list[str] = []
    orig = video._iter_video

    def counting(info, *a, **k):
        calls.append(info.path)
        return orig(info, *a, **k)

    monkeypatch.setattr(video, "_iter_video", counting)
    return calls


def _report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())["clips"][0]


def test_graph_closure_follows_needs_not_the_list():
    assert closure(["camera"]) == ("probe", "track", "camera")
    assert closure(["features"]) == ("probe", "track", "features")
    assert closure(["export"]) == STAGES
    assert load_config(None, ["run.until=camera"]).planned_stages() == ("probe", "track", "camera")
    assert load_config(None, ["run.stages=[camera, keypoints]"]).planned_stages() == (
        "probe",
        "track",
        "keypoints",
        "camera",
    )
    for name, spec in SPECS.items():  # every need comes earlier in the order
        assert all(STAGES.index(n) < STAGES.index(name) for n in (*spec.needs, *spec.uses))


def test_key_settings_leave_out_resource_knobs():
    cfg = load_config(None, ["keypoints.batch=3", "track.detector.batch=5", "camera.droid.timeout_s=9"])
    base = load_config(None, [])
    for section in ("keypoints", "track", "camera", "decode"):
        assert key_settings(getattr(cfg, section)) == key_settings(getattr(base, section))
    assert "batch" not in key_settings(cfg.keypoints) and "weights" not in key_settings(cfg.keypoints)
    changed = load_config(None, ["keypoints.flip_test=false"])
    assert key_settings(changed.keypoints) != key_settings(base.keypoints)


def test_camera_without_pose_or_gem_weights(clip, tmp_path, decodes):
    """A matchmove user: --until camera with boxes needs no weights at all and decodes the clip twice
    (the tracks' timeline, then the solve); nothing of the people stages runs."""
    mp4, dets, _ = clip
    out = tmp_path / "out"
    args = ["run", str(mp4), "--out", str(out), "--detections", str(dets)]
    args += ["--until", "camera", "--set", "camera.backend=opencv", "--set", "run.orchestrator=local"]
    assert main(args) == 0
    e = _report(out)
    assert e["status"] == "ok"
    assert {s: v["status"] for s, v in e["stages"].items() if v["status"] != "skipped"} == {
        "probe": "computed",
        "track": "computed",
        "camera": "computed",
    }
    assert e["stages"]["keypoints"]["reason"] == "not needed for --until camera"
    assert e["stages"]["export"]["reason"] == "after --until camera"
    cam = np.load(out / e["id"] / "camera.npz")
    assert cam["R_w2c"].shape == (45, 3, 3)
    assert len(decodes) == 2
    # --stages camera is the same plan; everything is cached now: no decode at all
    decodes.clear()
    args[args.index("--until") : args.index("--until") + 2] = ["--stages", "camera"]
    assert main(args) == 0
    assert {v["status"] for s, v in _report(out)["stages"].items() if s in ("probe", "track", "camera")} == {
        "cached"
    }
    assert decodes == []


@pytest.mark.skipif(
    not (fixture_dir("gem_parity") / "gem_smpl_reduced.ckpt").is_file(),
    reason=f"reduced checkpoints not found under {fixture_dir('gem_parity').parent}",
)
def test_clip_with_nobody_still_gets_its_camera(clip, tmp_path, capsys):
    """A full run (the reduced fixture checkpoints stand in for the real weights) on a clip with nobody."""
    mp4, _, empty = clip
    perception, gem = fixture_dir("perception_parity"), fixture_dir("gem_parity")
    out = tmp_path / "out"
    args = ["run", str(mp4), "--out", str(out), "--detections", str(empty)]
    for item in (
        f"keypoints.weights={perception / 'vitpose_reduced.pth'}",
        f"features.weights={perception / 'hmr2_reduced.ckpt'}",
        f"estimate.checkpoint={gem / 'gem_smpl_reduced.ckpt'}",
        "camera.backend=opencv",
        "run.orchestrator=local",
    ):
        args += ["--set", item]
    assert main(args) == 0  # every requested stage did what it could: exit 0
    e = _report(out)
    assert e["status"] == "ok" and e["people"] == 0
    assert e["stages"]["camera"]["status"] == "computed"
    for s in ("keypoints", "features", "estimate", "postprocess", "export"):
        assert e["stages"][s]["status"] == "skipped" and e["stages"][s]["reason"].startswith("no person"), s
    assert any(w.startswith("no person") for w in e["warnings"])
    files = {p.name for p in (out / e["id"]).iterdir()}
    assert {"clip.json", "tracks.npz", "camera.npz"} <= files and not any(
        f.startswith("person_") for f in files
    )
    assert "1 ok" in capsys.readouterr().out


def test_every_missing_weight_file_in_one_message(clip, tmp_path, capsys):
    mp4, _, _ = clip
    rc = main(["run", str(mp4), "--out", str(tmp_path / "o"), "--set", "run.orchestrator=local"])
    assert rc == 2
    err = capsys.readouterr().err
    for name in ("yolov8x.pt", "vitpose_coco17.onnx", "hmr2.onnx", "gem_smpl.ckpt"):
        assert name in err, (name, err)
    assert not (tmp_path / "o" / "report.json").exists()


def test_cli_starts_without_torch_cv2_or_bpy():
    code = (
        "import sys, io, contextlib; from pipeline.cli import main\n"
        "for argv in (['config'], ['models'], ['doctor']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        main(argv)\n"
        "heavy = sorted({'torch', 'cv2', 'bpy', 'ultralytics', 'onnxruntime'} & set(sys.modules))\n"
        "print(','.join(heavy))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "", f"imported by the light commands: {r.stdout.strip()}"


def test_a_new_stage_is_one_module_and_one_line(clip, tmp_path):
    """``tests.toy_stage`` through the real CLI: its config section, key, publish and report work."""
    mp4, dets, _ = clip
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO), "GENMOCAP_EXTRA_STAGES": "tests.toy_stage"}

    def run(*extra: str) -> dict:
        args = ["run", str(mp4), "--out", str(out), "--stages", "toy", "--set", "run.orchestrator=local"]
        r = subprocess.run(
            [sys.executable, "-m", "flows.cli", *args, *extra], capture_output=True, text=True, env=env
        )
        assert r.returncode == 0, r.stderr
        return _report(out)

    e = run()
    assert e["stages"]["toy"]["status"] == "computed" and e["stages"]["track"]["status"] == "skipped"
    doc = json.loads((out / e["id"] / "clip.json").read_text())
    assert doc["toy"] == {"frames_times_factor": 90} and "toy: 90" in doc["warnings"]
    assert json.loads((out / e["id"] / "toy.json").read_text()) == {"frames_times_factor": 90}
    assert run("--set", "toy.workers=4")["stages"]["toy"]["status"] == "cached"  # not a result
    assert run("--set", "toy.factor=3")["stages"]["toy"]["status"] == "computed"
    cfg = subprocess.run(
        [sys.executable, "-m", "flows.cli", "config"], capture_output=True, text=True, env=env
    ).stdout
    assert "toy:" in cfg and "factor: 2" in cfg
    ran_on = json.loads((out / e["id"] / "clip.json").read_text())["stages"]["toy"]["ran_on"]
    assert ran_on["host"] and ran_on["pid"] > 0 and ran_on["flow_run"] is None  # no Prefect here


@pytest.mark.parametrize("orchestrator", ["local", "prefect"])
def test_out_of_memory_is_retried_with_half_the_batch(clip, tmp_path, orchestrator):
    """A CUDA out-of-memory error is transient: re-tried (by Prefect's task retries in Prefect mode) with
    the batch halved each time, up to ``run.retries``; past that the clip fails with the reason."""
    mp4, _, _ = clip
    env = {**os.environ, "PYTHONPATH": str(REPO), "GENMOCAP_EXTRA_STAGES": "tests.toy_stage"}

    def run(out: Path, retries: int) -> subprocess.CompletedProcess:
        args = [
            "run",
            str(mp4),
            "--out",
            str(out),
            "--stages",
            "toy",
            "--set",
            f"run.orchestrator={orchestrator}",
        ]
        args += ["--set", "toy.batch=8", "--set", "toy.oom_above=2", "--set", f"run.retries={retries}"]
        args += ["--set", "run.retry_delay=0.1"]
        return subprocess.run(
            [sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, env=env
        )

    r = run(tmp_path / "a", retries=2)  # batch 8: OOM, 4: OOM, 2: fits
    assert r.returncode == 0, r.stderr
    toy = _report(tmp_path / "a")["stages"]["toy"]
    assert toy["status"] == "computed" and toy["attempts"] == 3, toy
    r = run(tmp_path / "b", retries=1)  # batch 8: OOM, 4: OOM, no more re-tries
    assert r.returncode == 1
    e = _report(tmp_path / "b")
    assert e["status"] == "failed" and "out of memory with batch 4" in e["error"], e


class _Chunk:
    def __init__(self, i: int):
        self.i = i


def _decode(n: int, fail_at: int | None = None):
    def decode(info, chunk_frames, fps):
        for i in range(n):
            if i == fail_at:
                raise video.MediaError("truncated or corrupt at chunk 3")
            yield _Chunk(i)

    return decode


def _job(stage: str, take: int | None = None, fail: bool = False) -> PixelJob:
    def consume(chunks):
        seen = []
        for c in chunks:
            if fail and c.i == 2:
                raise RuntimeError("model broke")
            seen.append(c.i)
            if take is not None and len(seen) == take:
                break  # needs no more pixels
        return {stage: (seen, threading.current_thread().name)}

    return PixelJob(None, 30.0, 8, (stage,), consume)


def test_one_decode_feeds_every_pixel_job():
    res = run_pixel_jobs([_job("a"), _job("b", take=3), _job("c", fail=True)], _decode(40))
    assert res["a"][0] == list(range(40)) and res["b"][0] == [0, 1, 2]
    assert isinstance(res["c"], RuntimeError)  # its failure is its own; the others finished
    assert res["a"][1] != res["b"][1]  # each consumer in its own thread
    res = run_pixel_jobs([_job("a"), _job("b")], _decode(10, fail_at=3))
    assert all(isinstance(res[s], video.MediaError) for s in "ab")  # the decode's reason, not "ended early"
    single = run_pixel_jobs([_job("a")], _decode(5))
    assert single["a"][0] == [0, 1, 2, 3, 4]
