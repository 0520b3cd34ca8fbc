"""CLI commands that need no clips: doctor, models, config, usage errors."""

import json

import pytest

from pipeline.cli import main


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("GENMOCAP_WEIGHTS", raising=False)
    monkeypatch.delenv("GENMOCAP_BODY_MODEL", raising=False)


def test_models_lists_every_weight_and_where(capsys, tmp_path, monkeypatch):
    weights = tmp_path / "w"
    weights.mkdir()
    (weights / "yolov8x.pt").write_bytes(b"x")
    monkeypatch.setenv("GENMOCAP_WEIGHTS", str(weights))
    assert main(["models", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["search_dirs"][0] == str(weights)
    rows = {r["file"]: r for r in out["weights"]}
    assert rows["yolov8x.pt"]["path"] == str((weights / "yolov8x.pt").resolve())
    assert rows["gem_smpl.ckpt"]["path"] is None and rows["gem_smpl.ckpt"]["stage"] == "estimate"
    assert main(["models"]) == 0
    text = capsys.readouterr().out
    assert "looked for" in text and "how to get it" in text


def test_doctor_reports_tools_weights_and_body_model(capsys, tmp_path, monkeypatch):
    rc = main(["doctor", "--json"])
    checks = {c["check"]: c for c in json.loads(capsys.readouterr().out)}
    assert checks["ffmpeg"]["ok"] and checks["ffprobe"]["ok"]
    assert rc == 0
    assert not checks["body model SMPL-X"]["ok"] and "licence" in checks["body model SMPL-X"]["fix"]
    assert not checks["weights yolov8x.pt"]["ok"]
    bm = tmp_path / "SMPLX_NEUTRAL.npz"
    bm.write_bytes(b"x")
    monkeypatch.setenv("GENMOCAP_BODY_MODEL", str(bm))
    main(["doctor", "--json"])
    assert {c["check"]: c for c in json.loads(capsys.readouterr().out)}["body model SMPL-X"]["ok"]


def test_config_prints_defaults(capsys):
    assert main(["config"]) == 0
    assert "track:" in capsys.readouterr().out


def test_unknown_orchestrator_without_plugin_is_usage_error(tmp_path, capsys):
    (tmp_path / "a.mp4").write_bytes(b"")
    assert main(["run", str(tmp_path / "a.mp4"), "--out", str(tmp_path / "o")]) == 2
    assert "run.orchestrator" in capsys.readouterr().err


def test_doctor_needs_the_onnx_exports_only_without_the_originals(capsys, tmp_path, monkeypatch):
    main(["doctor", "--json"])
    checks = {c["check"]: c for c in json.loads(capsys.readouterr().out)}
    assert checks["weights vitpose_coco17.onnx"]["required"] and checks["weights hmr2.onnx.data"]["required"]
    assert not checks["weights vitpose-h-multi-coco.pth"]["required"]
    weights = tmp_path / "w"
    weights.mkdir()
    (weights / "vitpose-h-multi-coco.pth").write_bytes(b"x")
    monkeypatch.setenv("GENMOCAP_WEIGHTS", str(weights))
    main(["doctor", "--json"])
    checks = {c["check"]: c for c in json.loads(capsys.readouterr().out)}
    assert (
        checks["weights vitpose-h-multi-coco.pth"]["required"]
        and checks["weights vitpose-h-multi-coco.pth"]["ok"]
    )
    assert not checks["weights vitpose_coco17.onnx"]["required"] and checks["weights hmr2.onnx"]["required"]
