"""benchmarks/gpu_check.sh end to end in its --dry-run mode (every check on the CPU at tiny sizes), and the table of
benchmarks/bench_gpu_report.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def report(load_script):
    return load_script("benchmarks/bench_gpu_report.py")


def _expected_first_cells(report) -> list[str]:
    cells = []
    for name in report.CHECKS:
        cells += [f"train step {m}" for m in report.TRAIN_STEP_MODELS] if name == "train_step" else [name]
    return cells + ["loader"]


@pytest.mark.slow
def test_dry_run_runs_every_check_and_reports_every_row(report, tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "2",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=900, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert table[0] == "| check | precision | status | seconds | result |"
    rows = {line.split(" | ")[0][2:]: line for line in table[1:]}
    assert list(rows) == _expected_first_cells(report)
    for name, line in rows.items():
        if name != "loader" or (ROOT / "benchmarks" / "bench_loader.py").is_file():
            assert " | ok | " in line, line
    assert "16-mixed (ran as bf16-mixed" in rows["hat_16-mixed"]
    assert "img/s" in rows["train step iformer_small"]
    assert "top1" in rows["resnet18_digits"]
    record = json.loads((tmp_path / "hat_bf16-mixed.check.json").read_text())
    assert record["dry_run"] is True and record["precision_used"] == "bf16-mixed"


def test_report_marks_missing_and_failed_checks(report, tmp_path):
    (tmp_path / "hat_16-mixed.check.json").write_text(json.dumps(
        {"check": "hat_16-mixed", "precision": "16-mixed", "precision_used": "16-mixed", "status": "failed",
         "exit": 1, "seconds": 3.25, "log": "logs/hat_16-mixed.log", "dry_run": False}))
    run = tmp_path / "runs" / "resnet18_digits"
    run.mkdir(parents=True)
    (tmp_path / "resnet18_digits.check.json").write_text(json.dumps(
        {"check": "resnet18_digits", "precision": "32-true", "precision_used": "32-true", "status": "ok",
         "exit": 0, "seconds": 60.0, "log": "logs/resnet18_digits.log", "dry_run": False}))
    (run / "metrics.csv").write_text("step,epoch,phase,name,value\n10,0,train,loss,2.1\n10,0,eval,top1,0.5\n"
                                     "20,1,train,loss,1.2\n20,1,eval,top1,0.975\n20,1,eval,loss,0.1\n")
    rows = {line.split(" | ")[0][2:]: line for line in report.rows(tmp_path)[2:]}
    assert list(rows) == _expected_first_cells(report)
    assert rows["resnet18_digits"] == "| resnet18_digits | 32-true | ok | 60.0 | top1 0.975 |"
    assert rows["hat_16-mixed"] == ("| hat_16-mixed | 16-mixed | failed (exit 1, logs/hat_16-mixed.log) | 3.2 | — |")
    assert "not run" in rows["mugs_bf16-mixed"] and "not run" in rows["train step iformer_small"]
    assert "no benchmarks/bench_loader.py" in rows["loader"]
