"""Prefect flows wrapping ``pipeline`` + ``stages``.

With no ``PREFECT_API_URL`` set, Prefect runs in its local mode: a temporary API server on SQLite, started
in-process, no set-up. The defaults below keep that mode quiet and robust on a busy machine; any value the
user sets in the environment wins. Imported before ``prefect`` so the settings take effect.
"""

import os

_DEFAULTS = {
    # a telemetry heartbeat races the local SQLite database and prints tracebacks
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # the default 20 s is too short when the CPU is busy decoding/detecting
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    # our artifact store is the cache; Prefect must not pickle stage results
    "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "false",
}
for _k, _v in _DEFAULTS.items():
    os.environ.setdefault(_k, _v)
