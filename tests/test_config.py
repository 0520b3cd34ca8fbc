"""Config: defaults, YAML, --set overrides, and error messages that name the key and the allowed values."""

import pytest

from pipeline.config import Config, ConfigError, dump_default_yaml, load_config, parse_override


def test_defaults_serve_a_single_machine():
    cfg = load_config()
    assert cfg.run.orchestrator == "prefect"
    assert cfg.run.concurrency == 1
    assert cfg.decode.model_fps == 30.0 and cfg.decode.fps == 30.0
    assert cfg.track.detector.weights == "yolov8x.pt"
    assert cfg.track.select == "all"


def test_yaml_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("track:\n  select: largest\n  detector:\n    conf: 0.3\ndecode:\n  resample: false\n")
    cfg = load_config(f, ["track.detector.conf=0.45", "run.concurrency=3", "track.max_people=2"])
    assert cfg.track.select == "largest"
    assert cfg.track.detector.conf == pytest.approx(0.45)
    assert cfg.run.concurrency == 3 and cfg.track.max_people == 2
    assert cfg.decode.fps is None


def test_override_values_are_typed():
    assert parse_override("a.b=0.5") == ("a.b", 0.5)
    assert parse_override("a.b=null") == ("a.b", None)
    assert parse_override("a.b=yolo11x.pt") == ("a.b", "yolo11x.pt")
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("a.b")


def test_bad_literal_names_key_and_allowed_values():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["track.select=biggest"])
    msg = str(e.value)
    assert "track.select" in msg and "'all'" in msg and "'largest'" in msg and "biggest" in msg


def test_unknown_key_lists_known_keys():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["decode.chunk=8"])
    msg = str(e.value)
    assert "decode.chunk: unknown key" in msg and "chunk_frames" in msg


def test_range_and_device_errors():
    with pytest.raises(ConfigError, match=r"run\.concurrency"):
        load_config(None, ["run.concurrency=0"])
    with pytest.raises(ConfigError, match=r"run\.device.*'cuda:N'"):
        load_config(None, ["run.device=gpu"])
    with pytest.raises(ConfigError, match=r"run\.until"):
        load_config(None, ["run.until=render"])


def test_bad_yaml_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("track: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(f)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_default_yaml_round_trips(tmp_path):
    f = tmp_path / "d.yaml"
    f.write_text(dump_default_yaml())
    assert load_config(f) == Config()


def test_digest_changes_with_config():
    assert Config().digest() == load_config().digest()
    assert Config().digest() != load_config(None, ["track.select=largest"]).digest()
