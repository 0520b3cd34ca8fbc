"""Pipeline stages: one module per stage; no Prefect here.

Each stage is a plain function from typed inputs to a typed result, so it runs the same from a test, the CLI
or a Prefect flow. ``STAGES`` is the fixed order in which a clip goes through them.
"""

STAGES: tuple[str, ...] = (
    "probe",
    "track",
    "keypoints",
    "features",
    "camera",
    "estimate",
    "postprocess",
    "export",
)
