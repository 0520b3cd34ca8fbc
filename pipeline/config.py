"""One typed config for a run: defaults serve a single machine; YAML file and ``--set key=value`` override.

Sections that belong to a stage are defined next to that stage (``stages.probe.ProbeSettings``, ...), so a
stage never imports the pipeline; this module only composes them.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from stages import STAGES
from stages.camera import CameraSettings
from stages.estimate import EstimateSettings
from stages.export import ExportSettings
from stages.features import FeaturesSettings
from stages.keypoints import KeypointsSettings
from stages.postprocess import PostprocessSettings
from stages.probe import ProbeSettings
from stages.track import TrackSettings

StageName = Literal["probe", "track", "keypoints", "features", "camera", "estimate", "postprocess", "export"]
assert tuple(StageName.__args__) == STAGES  # one list of stage names  # type: ignore[attr-defined]


class ConfigError(ValueError):
    """A config value is wrong; the message names the key and what is allowed."""


class RunSettings(BaseModel):
    """How the run is executed. Nothing here changes results, so none of it enters cache keys."""

    model_config = ConfigDict(extra="forbid")

    until: StageName = Field("export", description="last stage to run")
    concurrency: int = Field(1, ge=1, le=64, description="clips processed at once")
    orchestrator: Literal["prefect", "local"] = Field(
        "prefect", description="prefect: local Prefect flows (no server needed); local: plain Python"
    )
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    cache_dir: Path | None = Field(None, description="artifact store; default OUT/.genmocap/artifacts")
    progress: Literal["auto", "on", "off"] = "auto"

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", v):
            raise ValueError("must be one of 'auto', 'cpu', 'cuda', 'cuda:N'")
        return v


class DecodeSettings(BaseModel):
    """How frames reach the pixel stages."""

    model_config = ConfigDict(extra="forbid")

    model_fps: float = Field(
        30.0, gt=0, description="rate GEM was trained at; frames are sampled by timestamp"
    )
    resample: bool = Field(True, description="resample to model_fps (False: every source frame)")
    chunk_frames: int = Field(32, ge=1, le=1024, description="frames decoded at a time (bounds memory)")

    @property
    def fps(self) -> float | None:
        return self.model_fps if self.resample else None


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run: RunSettings = Field(default_factory=RunSettings)
    probe: ProbeSettings = Field(default_factory=ProbeSettings)
    decode: DecodeSettings = Field(default_factory=DecodeSettings)
    track: TrackSettings = Field(default_factory=TrackSettings)
    keypoints: KeypointsSettings = Field(default_factory=KeypointsSettings)
    features: FeaturesSettings = Field(default_factory=FeaturesSettings)
    camera: CameraSettings = Field(default_factory=CameraSettings)
    estimate: EstimateSettings = Field(default_factory=EstimateSettings)
    postprocess: PostprocessSettings = Field(default_factory=PostprocessSettings)
    export: ExportSettings = Field(default_factory=ExportSettings)

    def digest(self) -> str:
        """Short hash of the whole config (recorded in clip.json and the report)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _set_path(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    if not all(parts):
        raise ConfigError(f"--set {dotted}=...: empty key part")
    node = tree
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {dotted}: '{p}' is a value, not a section")
        node = nxt
    node[parts[-1]] = value


def parse_override(item: str) -> tuple[str, Any]:
    """``"track.select=largest"`` -> ``("track.select", "largest")``; values are parsed as YAML scalars."""
    if "=" not in item:
        raise ConfigError(f"--set expects KEY=VALUE, got '{item}'")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _known_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        ann = field.annotation if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return sorted(model.model_fields)


def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            known = _known_keys(Config, e["loc"])
            lines.append(f"{key}: unknown key" + (f" (known here: {', '.join(known)})" if known else ""))
        else:
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"{key} = {e.get('input')!r}: {msg}")
    return "invalid config:\n  " + "\n  ".join(lines)


def load_config(path: Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file, then ``--set`` overrides (``section.key=value``, dots for nesting).

    Raises:
        ConfigError: unreadable file or invalid values; the message names each bad key and what is allowed.
    """
    tree: dict = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as e:
            raise ConfigError(f"cannot read config {path}: {e.strerror}") from e
        except yaml.YAMLError as e:
            raise ConfigError(f"config {path} is not valid YAML: {e}") from e
        if not isinstance(loaded, dict):
            raise ConfigError(f"config {path}: the top level must be a mapping of sections")
        tree = loaded
    for item in overrides or []:
        key, value = parse_override(item)
        _set_path(tree, key, value)
    try:
        return Config.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_errors(e)) from None


def dump_default_yaml() -> str:
    """The default config as YAML (``genmocap config``), for users to copy and edit."""
    return yaml.safe_dump(Config().model_dump(mode="json"), sort_keys=False)
