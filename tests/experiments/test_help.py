"""Every experiment driver and benchmark answers ``--help`` (exit 0, its usage) without training anything."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted([*ROOT.glob("experiments/*.py"), ROOT / "benchmarks" / "bench_mugs.py"])


def test_the_experiment_drivers_left_benchmarks():
    names = {p.name for p in ROOT.glob("benchmarks/*.py")}
    assert not names & {"robust_plan.py", "hat_experiments.py", "mugs_diagnose.py", "ids_minimal.py"}
    assert {"robust_plan.py", "hat_experiments.py", "mugs_diagnose.py", "ids_minimal.py", "mugs_accuracy.py",
            "tables.py"} <= {p.name for p in SCRIPTS}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_help(script):
    out = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=300,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage:"), out.stdout


def test_bench_mugs_has_no_accuracy_mode():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_mugs.py"), "accuracy"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 2 and "unrecognized arguments: accuracy" in out.stderr
