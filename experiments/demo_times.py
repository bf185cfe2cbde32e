"""Time every `vitlab demo` section: wall and CPU seconds per section, from the report.json of each run.

The sections are dealt round-robin into ``--groups`` groups, each run as one ``vitlab demo --only ...`` process with
``--threads`` torch threads, the groups side by side (one group = the whole tour in one process, as ``make demo``
runs it). CPU seconds (the process's, all threads) stay meaningful on a shared machine where wall seconds do not, so
both are kept, with the load average at the end of each run.

Run:    python experiments/demo_times.py                         (one process, 2 threads: the tour as make demo runs)
        python experiments/demo_times.py --groups 3 --threads 1  (three processes side by side, one thread each)
        python experiments/tables.py demo_times                  (the table of results/demo/times.json)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "results" / "demo" / "times.json"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--groups", type=int, default=1, help="processes side by side (default 1)")
    p.add_argument("--threads", type=int, default=2, help="torch / OpenMP threads per process (default 2)")
    p.add_argument("--out-dir", default="runs/demo_times", help="the demo runs' folders")
    p.add_argument("--result", default=str(RESULT), help="the JSON written (default results/demo/times.json)")
    args = p.parse_args(argv)
    if args.groups < 1 or args.threads < 1:
        print(f"error: --groups and --threads must be >= 1 (got {args.groups}, {args.threads})", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT / "src"))
    from vitlab.demo import SECTION_MODULES
    from vitlab.engine.checkpoint import atomic_write_bytes

    groups = [list(SECTION_MODULES[i::args.groups]) for i in range(args.groups)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    started, processes = time.time(), []
    for k, group in enumerate(groups):
        out = Path(args.out_dir) / f"group{k}"
        command = [sys.executable, "-m", "vitlab", "demo", "--out", str(out), *(f"--only={s}" for s in group)]
        log = open(Path(args.out_dir) / f"group{k}.log", "w")  # noqa: SIM115 - closed after the process ends
        processes.append((out, subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    runs = []
    for out, process, log in processes:
        rc = process.wait()
        log.close()
        runs.append({"exit_code": rc, **json.loads((out / "report.json").read_text())})
    result = {"command": " ".join(["python experiments/demo_times.py", *(argv if argv is not None else sys.argv[1:])]),
              "groups": args.groups, "threads": args.threads, "cpu_count": os.cpu_count(),
              "wall_seconds": round(time.time() - started, 1), "runs": runs}
    atomic_write_bytes((json.dumps(result, indent=2) + "\n").encode(), Path(args.result))
    for run in runs:
        for s in run["sections"]:
            print(f"{s['name']:<12} {s['status']:<7} wall {s['seconds']:>6.0f} s  CPU {s['cpu_seconds']:>6.0f} s")
    print(f"all groups: {result['wall_seconds']:.0f} s wall; wrote {args.result}")
    return 0 if all(run["exit_code"] == 0 for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
