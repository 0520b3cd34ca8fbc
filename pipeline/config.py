"""One typed config for a run: defaults serve a single machine; YAML file and ``--set key=value`` override.

Each stage's section is the settings model its ``SPEC`` declares (``stages.probe.ProbeSettings``, ...), so a
stage never imports the pipeline and adding a stage adds its section here without touching this module.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator

from stages import SPECS, STAGES
from stages.spec import not_in_key

StageName = Literal[STAGES]  # type: ignore[valid-type]


class ConfigError(ValueError):
    """A config value is wrong; the message names the key and what is allowed."""


class RunSettings(BaseModel):
    """How the run is executed. Nothing here enters stage keys; only ``until``/``stages``/``device`` enter
    :meth:`Config.result_digest` (what a re-submitted clip is recognised by)."""

    model_config = ConfigDict(extra="forbid")

    until: StageName = Field("export", description="the stage to run up to (with every stage it needs)")
    stages: list[StageName] | None = Field(
        None, description="run these stages and what they need (instead of everything up to 'until')"
    )
    concurrency: int = not_in_key(1, ge=1, le=64, description="clips processed at once (in this process)")
    orchestrator: Literal["prefect", "local"] = not_in_key(
        "prefect",
        description="prefect: Prefect flows (local mode, or a server with --pool); local: plain Python",
    )
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    cache_dir: Path | None = not_in_key(None, description="artifact store; default OUT/.genmocap/artifacts")
    progress: Literal["auto", "on", "off"] = not_in_key("auto")
    retries: int = not_in_key(
        2,
        ge=0,
        le=10,
        description="re-tries of a stage after a transient error (CUDA out of memory: half batch)",
    )
    retry_delay: float = not_in_key(
        5.0, ge=0, description="seconds before the first re-try; doubles each time"
    )
    crash_retries: int = not_in_key(
        2, ge=0, le=10, description="re-runs of a clip whose flow run crashed (worker lost), on a server"
    )
    pool: str | None = not_in_key(
        None, description="Prefect work pool whose workers run the clips (genmocap deploy --pool); None: here"
    )
    gpu_limit: str | None = not_in_key(
        "gpu", description="Prefect global concurrency limit a GPU stage holds while computing (on a server)"
    )

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
    chunk_frames: int = not_in_key(32, ge=1, le=1024, description="frames decoded at a time (bounds memory)")

    @property
    def fps(self) -> float | None:
        return self.model_fps if self.resample else None


class _ConfigBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def digest(self) -> str:
        """Short hash of the whole config (recorded in clip.json and the report)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def result_digest(self) -> str:
        """Short hash of the settings that change results (``not_in_key`` fields left out): two runs with
        the same result digest produce the same outputs from the same footage and weights."""
        from stages.spec import key_settings

        parts = {name: key_settings(getattr(self, name)) for name in type(self).model_fields}
        blob = json.dumps(parts, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def planned_stages(self) -> tuple[str, ...]:
        """The stages this config runs: ``run.stages`` (or ``run.until``) and what they need, in order."""
        from stages import closure

        return closure(self.run.stages or [self.run.until])


def _section(model: type[BaseModel]) -> Any:
    return (model, Field(default_factory=model))


# run, decode, then one section per stage that has settings, in stage order
Config = create_model(
    "Config",
    __base__=_ConfigBase,
    run=_section(RunSettings),
    decode=_section(DecodeSettings),
    **{name: _section(spec.settings) for name, spec in SPECS.items() if spec.settings is not None},
)


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
