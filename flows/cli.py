"""Console script ``genmocap``: the pipeline CLI with the Prefect orchestrator plugged in."""

from __future__ import annotations

import sys

import flows  # noqa: F401  (Prefect defaults before prefect is imported)


def _prefect(clips, ctx):
    from flows.folder import run_with_prefect  # imported on use: `genmocap doctor` need not start Prefect

    return run_with_prefect(clips, ctx)


def main(argv: list[str] | None = None) -> int:
    from pipeline.cli import main as cli_main

    return cli_main(argv, orchestrators={"prefect": _prefect})


if __name__ == "__main__":
    sys.exit(main())
