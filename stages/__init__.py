"""Pipeline stages: one module per stage, each exporting a ``SPEC`` (:class:`stages.spec.StageSpec`).

Adding a stage is one new module plus one line in ``STAGE_MODULES`` (or, for a studio's own stage kept
outside this package, its module name in ``$GENMOCAP_EXTRA_STAGES``, comma-separated, appended after these).
The order is the order in which a clip goes through the stages; a stage may only need stages before it.
Importing this package is cheap (no torch, cv2 or bpy): the stage modules import their heavy parts inside the
functions that use them.
"""

from __future__ import annotations

import os
from importlib import import_module

from stages.spec import StageSpec

STAGE_MODULES: tuple[str, ...] = (
    "stages.probe",
    "stages.track",
    "stages.keypoints",
    "stages.features",
    "stages.camera",
    "stages.estimate",
    "stages.postprocess",
    "stages.export",
)


def _load_specs(modules: tuple[str, ...]) -> dict[str, StageSpec]:
    specs: dict[str, StageSpec] = {}
    for mod in modules:
        spec: StageSpec = import_module(mod).SPEC
        unknown = [s for s in (*spec.needs, *spec.uses) if s not in specs]
        if unknown:
            raise ImportError(f"stage {spec.name} needs {unknown}, which are not listed before it")
        specs[spec.name] = spec
    return specs


_EXTRA = tuple(m.strip() for m in os.environ.get("GENMOCAP_EXTRA_STAGES", "").split(",") if m.strip())
SPECS: dict[str, StageSpec] = _load_specs(STAGE_MODULES + _EXTRA)
STAGES: tuple[str, ...] = tuple(SPECS)


def closure(names: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """``names`` plus every stage they need or use, transitively, in stage order."""
    want: set[str] = set()
    todo = list(names)
    while todo:
        n = todo.pop()
        if n not in want:
            want.add(n)
            todo += [*SPECS[n].needs, *SPECS[n].uses]
    return tuple(s for s in STAGES if s in want)
