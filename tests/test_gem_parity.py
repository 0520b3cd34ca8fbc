"""The parity tool on the public GEM fixtures (CI has ../shared beside the clone)."""

from __future__ import annotations

import shutil

import pytest
import torch

from models.gem.parity import main
from tests.shared import fixture_dir

FIXTURES = fixture_dir("gem_parity")
pytestmark = pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"GEM parity fixtures not found at {FIXTURES}")


def test_all_public_scenarios_pass(capsys):
    assert main([str(FIXTURES)]) == 0
    out = capsys.readouterr().out
    for name in ("S1", "S1n", "S2", "S3", "S4"):
        assert f"{name}  (L=" in out
    assert "FAIL" not in out and out.rstrip().endswith("ALL PASS")


def test_a_wrong_reference_value_fails(tmp_path, capsys):
    """The tool must notice a difference: perturb one recorded decoder tensor in a copy of the fixtures."""
    folder = tmp_path / "fx"
    shutil.copytree(FIXTURES, folder)
    s = torch.load(folder / "S3.pt", weights_only=True)
    s["dec/betas"] = s["dec/betas"] + 1e-2
    torch.save(s, folder / "S3.pt")
    assert main([str(folder), "--scenario", "S3"]) == 1
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.strip()]
    assert any(r[0] == "dec" and r[-1] == "FAIL" for r in rows)
    assert "SOME FAIL" in out
