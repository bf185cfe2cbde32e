"""Every experiment driver and benchmark answers ``--help`` (exit 0, its usage) without training anything.

One subprocess runs every script's ``--help`` in turn (``runpy``), so torch and vitlab are imported once."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted([*ROOT.glob("experiments/*.py"), *ROOT.glob("benchmarks/*.py")])
EXPERIMENTS = {"robust_plan.py", "hat_experiments.py", "mugs_diagnose.py", "ids_minimal.py", "mugs_accuracy.py",
               "tables.py", "complexity.py", "ar_lens.py",
               "bad_inputs.py",
               "sun_plan.py", "ar_lens_photos.py", "demo_times.py", "transzero_plan.py", "rift_plan.py"}
RUN_HELP = """
import contextlib, io, json, runpy, sys
out = {}
for path in sys.argv[1:]:
    sys.argv = [path, "--help"]
    buffer = io.StringIO()
    code = None
    try:
        with contextlib.redirect_stdout(buffer):
            runpy.run_path(path, run_name="__main__")
    except SystemExit as exit_:
        code = exit_.code
    out[path] = [code, buffer.getvalue()[:200]]
print(json.dumps(out))
"""


def test_the_experiment_drivers_left_benchmarks():
    assert not {p.name for p in ROOT.glob("benchmarks/*.py")} & EXPERIMENTS
    assert EXPERIMENTS == {p.name for p in ROOT.glob("experiments/*.py")}
    assert all(p.name.startswith("bench_") for p in ROOT.glob("benchmarks/*.py"))


def test_help_of_every_script():
    done = subprocess.run([sys.executable, "-c", RUN_HELP, *map(str, SCRIPTS)], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    bad = {Path(p).name: r for p, r in results.items() if r[0] not in (0, None) or not r[1].startswith("usage:")}
    assert not bad and len(results) == len(SCRIPTS) >= 13, bad
    bench_mugs = results[str(ROOT / "benchmarks" / "bench_mugs.py")][1]
    assert "--batch" in bench_mugs and "accuracy" not in bench_mugs and "--seeds" not in bench_mugs  # speed only

