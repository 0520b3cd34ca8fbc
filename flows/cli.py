"""Console script ``genmocap``: the pipeline CLI with Prefect (orchestrator, deploy, schedule) plugged in."""

from __future__ import annotations

import argparse
import json
import sys

import flows  # noqa: F401  (Prefect defaults before prefect is imported)


def _prefect(clips, ctx):
    from flows.folder import run_with_prefect  # imported on use: `genmocap doctor` need not start Prefect

    return run_with_prefect(clips, ctx)


def _err(msg: str) -> int:
    print(f"genmocap: {msg}", file=sys.stderr)
    return 2


def cmd_deploy(args: argparse.Namespace) -> int:
    from flows.deploy import DeployError, deploy

    try:
        done = deploy(args.pool, args.control_pool, args.gpu_slots, args.heartbeat, args.zombie_seconds)
    except DeployError as e:
        return _err(str(e))
    print("\n".join(done))
    print(
        f"next: on each GPU `CUDA_VISIBLE_DEVICES=N prefect worker start --pool {args.pool} --type process "
        f"--limit 1`; for schedules `prefect worker start --pool {args.control_pool} --type process`"
    )
    return 0


def cmd_schedule(args: argparse.Namespace) -> int:
    from flows.deploy import DeployError, change_schedule, list_schedules, schedule
    from pipeline.config import ConfigError, load_config

    try:
        if args.list:
            rows = list_schedules()
            print(json.dumps(rows, indent=2) if rows else "no genmocap schedules")
            return 0
        for action in ("pause", "resume", "delete"):
            if getattr(args, action):
                print(change_schedule(getattr(args, action), action))
                return 0
        if not args.inputs or args.out is None:
            return _err("schedule needs FOLDER... and --out (or one of --list, --pause, --resume, --delete)")
        try:
            cfg = load_config(args.config, args.overrides)  # fail now, not at 02:00
        except ConfigError as e:
            return _err(str(e))
        from pathlib import Path

        inputs = [str(Path(i).resolve()) for i in args.inputs]
        line = schedule(
            args.name,
            inputs,
            str(args.out.resolve()),
            args.cron,
            args.pool,
            timezone=args.timezone,
            settings=cfg.model_dump(mode="json"),
            detections=str(args.detections.resolve()) if args.detections else None,
            settle_seconds=args.settle,
            max_failed_runs=args.max_nights,
        )
    except DeployError as e:
        return _err(str(e))
    print(line)
    return 0


def main(argv: list[str] | None = None) -> int:
    from pipeline.cli import main as cli_main

    return cli_main(
        argv, orchestrators={"prefect": _prefect}, commands={"deploy": cmd_deploy, "schedule": cmd_schedule}
    )


if __name__ == "__main__":
    sys.exit(main())
