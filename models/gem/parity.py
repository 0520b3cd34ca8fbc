"""Parity tool: ``python -m models.gem.parity DIR`` runs every scenario of a golden fixture directory
(``*.pt`` scenarios recorded from the GEM reference) through our GEM and compares each recorded tensor.

Prints, per scenario and comparison group, the max abs error, the tightest error/tolerance ratio and
PASS/FAIL against the parity tolerances; exit status 0 only if every key passes. ``-v`` lists every
key. The network groups (prep … out) come from ``parity_net``; the decode groups (dec … pred) from
``parity_decode``, teacher-forced where the reference is ill-conditioned.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from models.gem.checkpoint import load_gem
from models.gem.parity_decode import check_decode
from models.gem.parity_net import check_network, heads_from_manifest

Row = tuple[str, float, float, bool]  # key, max abs error (or count of differing booleans), tolerance, passed


def find_scenarios(folder: Path) -> list[Path]:
    """Scenario files: ``*.pt`` holding a ``meta`` entry (the body-model helpers do not)."""
    out = []
    for p in sorted(folder.glob("*.pt")):
        obj = torch.load(p, map_location="cpu", weights_only=True)
        if isinstance(obj, dict) and "meta" in obj:
            out.append(p)
    return out


def find_checkpoint(folder: Path) -> Path:
    ckpts = sorted(folder.glob("*.ckpt"))
    if len(ckpts) != 1:
        raise SystemExit(f"parity: expected one .ckpt in {folder}, found {[c.name for c in ckpts]}")
    return ckpts[0]


def summarise(rows: list[Row]) -> dict[str, tuple[float, float, bool, int]]:
    """Per group: (max error, max error/tolerance ratio, all passed, number of keys)."""
    groups: dict[str, tuple[float, float, bool, int]] = {}
    for key, err, tol, ok in rows:
        g = key.split("/", 1)[0]
        ratio = (0.0 if err == 0 else float("inf")) if tol == 0 else err / tol
        e0, r0, ok0, n0 = groups.get(g, (0.0, 0.0, True, 0))
        groups[g] = (max(e0, err), max(r0, ratio), ok0 and ok, n0 + 1)
    return groups


def run(folder: Path, only: list[str] | None = None, verbose: bool = False) -> bool:
    ckpt = find_checkpoint(folder)
    net = load_gem(ckpt, num_heads=heads_from_manifest(ckpt))
    body = folder / "body_model"
    all_ok = True
    for path in find_scenarios(folder):
        if only and path.stem not in only:
            continue
        scenario = torch.load(path, map_location="cpu", weights_only=True)
        rows = check_network(scenario, net) + check_decode(scenario, body if body.is_dir() else None)
        print(f"{path.stem}  (L={scenario['meta'].get('L', '?')}, {scenario['meta'].get('mode', '?')})")
        for g, (err, ratio, ok, n) in summarise(rows).items():
            verdict = "PASS" if ok else "FAIL"
            print(f"  {g:<6} {n:>3} keys  max|err| {err:9.2e}  err/tol {ratio:6.3f}  {verdict}")
        if verbose:
            for key, err, tol, ok in rows:
                print(f"    {key:<40} {err:9.2e} <= {tol:8.1e}  {'ok' if ok else 'FAIL'}")
        all_ok &= all(r[3] for r in rows)
    print("ALL PASS" if all_ok else "SOME FAIL")
    return all_ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.gem.parity", description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path, help="fixture directory (scenarios *.pt, one *.ckpt, body_model/)")
    p.add_argument("--scenario", action="append", help="only these scenarios (file stems); repeatable")
    p.add_argument("-v", "--verbose", action="store_true", help="list every key")
    args = p.parse_args(argv)
    return 0 if run(args.folder, args.scenario, args.verbose) else 1


if __name__ == "__main__":
    sys.exit(main())
