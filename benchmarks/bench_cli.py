"""Start-up time of the ``vitlab`` command: the same commands at an earlier commit and at this working tree (issue 18).

Each command runs as ``python -m vitlab ...`` in a fresh interpreter, the earlier commit checked out into a temporary
``git worktree`` and put first on ``PYTHONPATH``, this checkout's ``src`` for the other. The two take turns command by
command (which goes first alternates between runs), so that load from other processes hits both alike; the record
gives each command's median wall time at both, their ratio, the exit codes, and whether the output is the same.

The commands are those a user types to find their way or to get a recipe right, which should answer at once:
``--help``, ``train --help``, ``models``, three recipe errors (a missing file, a bad value, an unknown key) and an
unknown key in a recipe's ``method`` section (checked against the method's schema, tests/test_cli_startup.py).

    python benchmarks/bench_cli.py --before dcef215 --runs 5 --threads 2 --out results/benchmarks/cli.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RECIPE = "recipes/supervised/resnet18_digits.yaml"
COMMANDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("--help", ("--help",)),
    ("train --help", ("train", "--help")),
    ("models", ("models",)),
    ("missing recipe", ("train", "-c", "recipes/no_such_recipe.yaml")),
    ("bad value", ("train", "-c", RECIPE, "--set", "optim.lr=-1")),
    ("unknown key", ("train", "-c", RECIPE, "--set", "optim.lrr=0.1")),
    ("method-section error",
     ("train", "-c", "recipes/mugs/vit_tiny_glyphs.yaml", "--set", "method.loss_weightz=[1,1,1]")),
)


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def _environment(src: Path, threads: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(src), OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               CUDA_VISIBLE_DEVICES="", VITLAB_DEBUG="")
    return env


def _cpus(threads: int) -> set[int] | None:
    """The first ``threads`` CPUs this process may use (the command is pinned to them), or None where unsupported."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    return set(sorted(os.sched_getaffinity(0))[:threads])


def time_command(argv: tuple[str, ...], src: Path, threads: int) -> tuple[float, int, str]:
    """(seconds, exit code, stdout + stderr) of ``python -m vitlab *argv`` with ``src`` on the path, from the root."""
    cpus = _cpus(threads)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "vitlab", *argv], cwd=ROOT, capture_output=True, text=True,
                            env=_environment(src, threads), timeout=600,
                            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
    seconds = time.perf_counter() - start
    return seconds, result.returncode, result.stdout + result.stderr


def measure(before_src: Path, after_src: Path, runs: int, threads: int) -> list[dict[str, Any]]:
    """Each command ``runs`` times at both trees, alternating; one row per command with medians and the ratio."""
    times: dict[str, dict[str, list[float]]] = {name: {"before": [], "after": []} for name, _ in COMMANDS}
    codes: dict[str, dict[str, set[int]]] = {name: {"before": set(), "after": set()} for name, _ in COMMANDS}
    outputs: dict[str, dict[str, str]] = {name: {} for name, _ in COMMANDS}
    for run in range(runs):
        for name, argv in COMMANDS:
            order = (("before", before_src), ("after", after_src))
            for which, src in order if run % 2 == 0 else order[::-1]:
                seconds, code, output = time_command(argv, src, threads)
                times[name][which].append(seconds)
                codes[name][which].add(code)
                outputs[name][which] = output
                print(f"run {run + 1}/{runs}  {name:<20} {which:<6} {seconds:7.3f} s  exit {code}", file=sys.stderr)
    rows = []
    for name, argv in COMMANDS:
        before, after = statistics.median(times[name]["before"]), statistics.median(times[name]["after"])
        rows.append({"name": name, "argv": ["vitlab", *argv], "before_s": round(before, 4),
                     "after_s": round(after, 4), "speedup": round(before / after, 2),
                     "before_runs_s": [round(t, 4) for t in times[name]["before"]],
                     "after_runs_s": [round(t, 4) for t in times[name]["after"]],
                     "exit_before": sorted(codes[name]["before"]), "exit_after": sorted(codes[name]["after"]),
                     "same_output": outputs[name]["before"] == outputs[name]["after"]})
    return rows


def write_atomically(text: str, path: Path) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp",
                                     delete=False) as handle:
        handle.write(text)
        tmp = Path(handle.name)
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="the git commit to compare against (e.g. dcef215)")
    parser.add_argument("--runs", type=int, default=5, help="runs of each command at each tree (medians reported)")
    parser.add_argument("--threads", type=int, default=2, help="CPUs the commands are pinned to (and OMP threads)")
    parser.add_argument("--out", type=Path, default=None, help="write the record as JSON here (atomically)")
    args = parser.parse_args()

    before = _git("rev-parse", "--short", args.before)
    after = _git("rev-parse", "--short", "HEAD")
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no", "src"))
    with tempfile.TemporaryDirectory(prefix="vitlab-bench-cli-") as tmp:
        tree = Path(tmp) / "before"
        _git("worktree", "add", "--detach", str(tree), before)
        try:
            load_before = os.getloadavg()
            rows = measure(tree / "src", ROOT / "src", args.runs, args.threads)
            load_after = os.getloadavg()
        finally:
            _git("worktree", "remove", "--force", str(tree))
    record = {"command": "python benchmarks/bench_cli.py " + " ".join(sys.argv[1:]),
              "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
              "before": before, "after": after + ("+working tree" if dirty else ""), "threads": args.threads,
              "cpu_count": os.cpu_count(), "python": platform.python_version(), "runs": args.runs,
              "load_average_before": [round(v, 2) for v in load_before],
              "load_average_after": [round(v, 2) for v in load_after], "rows": rows}
    text = json.dumps(record, indent=2) + "\n"
    if args.out is not None:
        write_atomically(text, args.out)
    print(text, end="")


if __name__ == "__main__":
    main()
