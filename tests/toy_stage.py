"""A toy stage kept outside ``stages/``: proof that a new stage is one module plus one line.

It is loaded through ``GENMOCAP_EXTRA_STAGES=tests.toy_stage`` (the "one line"); tests then run it through the
real CLI. It needs ``probe``, has a settings section of its own with one result field and resource knobs,
and publishes one file. ``oom_above`` makes it fail with a real CUDA out-of-memory error while its batch is
larger than that, to test the re-try policy (a re-try after out-of-memory halves the batch).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from stages.files import atomic_write_json
from stages.spec import ClipRun, StageSpec, not_in_key


class ToySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    factor: int = Field(2, description="multiplies the clip's frame count (changes the result)")
    workers: int = not_in_key(1, description="a resource knob: not part of the cache key")
    batch: int = not_in_key(8, ge=1, description="items per pass (not a result)")
    oom_above: int = not_in_key(0, ge=0, description="out of memory while batch > this (0: never)")


def _compute(run: ClipRun) -> dict:
    s = run.cfg.toy
    if s.oom_above and s.batch > s.oom_above:
        import torch

        raise torch.cuda.OutOfMemoryError(f"CUDA out of memory with batch {s.batch} (toy)")
    return {"frames_times_factor": run.results["probe"].frame_count * run.cfg.toy.factor}


def _publish(run: ClipRun, result: dict, clip_dir: Path) -> None:
    atomic_write_json(clip_dir / "toy.json", result)


def _unpublish(run: ClipRun, clip_dir: Path) -> None:
    (clip_dir / "toy.json").unlink(missing_ok=True)


SPEC = StageSpec(
    name="toy",
    version="1",
    settings=ToySettings,
    needs=("probe",),
    compute=_compute,
    publish=_publish,
    unpublish=_unpublish,
    report=lambda result: {"toy": result},
    warnings=lambda run, result: [f"toy: {result['frames_times_factor']}"],
)
