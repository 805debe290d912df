"""`benchmarks/gpu_table.sh --dry-run`: every row of the GPU table for 1-2 steps at tiny shapes on the CPU, through
the device harness, so that the script a GPU session runs cannot rot (issue 21)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_gpu_table_dry_run_runs_every_row_on_the_stand_in_accelerator(tmp_path):
    out = tmp_path / "dry_run.txt"
    env = {**os.environ, "PY": sys.executable, "HPNB_CACHE": str(tmp_path / "cache")}
    run = subprocess.run(
        ["bash", "benchmarks/gpu_table.sh", "--dry-run", str(out)], cwd=ROOT, env=env, capture_output=True, text=True
    )
    text = out.read_text()
    assert run.returncode == 0, text[-4000:]
    rows = [line for line in text.splitlines() if line.startswith("$ ")]
    assert len(rows) == 5 and all("--device fake" in row for row in rows), rows
    assert text.count("(exit 0,") == 5
    assert "worst relative difference" in text and ": PASS" in text  # fused == reference on the stand-in device
    assert text.count("ms/iteration") == 3 and "loss path off" in text and "loss path on" in text
    assert "done:" in text and "(0 failed)" in text
