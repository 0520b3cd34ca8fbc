"""Scheduled runs (nightly jobs over a drop folder): serve the ``genmocap-batch`` flow with a cron schedule.

    PREFECT_API_URL=http://server:4200/api python -m flows.deploy /srv/drop --out /srv/mocap \\
        --cron "0 2 * * *" [--config job.yaml] [--set track.select=largest]

Schedules need a persistent Prefect server (``docker compose up -d postgres prefect-server``); Prefect's
local mode forgets them when the process ends. The process keeps running and starts each scheduled run.
"""

from __future__ import annotations

import argparse
import sys

import flows  # noqa: F401  (Prefect defaults before prefect is imported)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.deploy", description=__doc__.splitlines()[0])
    p.add_argument("inputs", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--cron", default="0 2 * * *", help="schedule (default: every night at 02:00)")
    p.add_argument("--name", default="nightly")
    p.add_argument("--config")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--detections")
    args = p.parse_args(argv)

    from pipeline.config import ConfigError, load_config

    try:
        load_config(args.config, args.overrides)  # fail now, not at 02:00
    except ConfigError as e:
        print(f"genmocap: {e}", file=sys.stderr)
        return 2
    from flows.folder import batch

    batch.serve(
        name=args.name,
        cron=args.cron,
        parameters={
            "inputs": args.inputs,
            "out": args.out,
            "config": args.config,
            "overrides": args.overrides,
            "detections": args.detections,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
