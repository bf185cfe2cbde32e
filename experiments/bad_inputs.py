"""The mistakes of issue 19, re-run through the real ``vitlab`` command: each one's exit code and what it prints.

Builds a scratch workspace (a tiny 10-class checkpoint of ``test_resnet``, a run folder holding it, an 11-class image
folder, an empty recipe, an unwritable folder: a 0o555 folder, or under root, which ignores permissions, a sysfs path
nobody may write), runs each case as its own ``python -m vitlab`` process (and one ``torchrun`` launch of 2 CPU
processes), writes the exit code and stderr of each to results/reliability/bad_inputs.json and prints them as a
Markdown table; docs/reliability.md shows ``python experiments/tables.py reliability_bad_inputs`` of that file.

Run:    python experiments/bad_inputs.py            (about a minute on 2 CPU cores)
        python experiments/bad_inputs.py --no-torchrun --out /tmp/bad_inputs.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = str(ROOT / "recipes" / "supervised" / "resnet18_digits.yaml")
TINY = ["--set", "model.name=test_resnet", "--set", "data.img_size=16", "--set", "train.progress=false"]


def _workspace(ws: Path) -> Path:
    """The checkpoint, run folder, image folder and recipe the cases misuse; returns the unwritable folder."""
    import numpy as np
    import torch
    from PIL import Image

    from vitlab.config import load_config
    from vitlab.engine.checkpoint import save_checkpoint
    from vitlab.methods.base import DataInfo, build_method

    info = DataInfo(num_classes=10, channels=3, img_size=16, mean=(0.5,) * 3, std=(0.25,) * 3,
                    classes=[str(k) for k in range(10)])
    for path, name in ((ws / "good.ckpt", "good"), (ws / "runs" / "existing" / "last.ckpt", "existing")):
        cfg = load_config(RECIPE, ["model.name=test_resnet", "data.img_size=16", f"name={name}",
                                   f"out_dir={ws / 'runs'}"])
        torch.manual_seed(0)
        save_checkpoint(path, cfg, info, build_method(cfg, info).state_dict(), step=3)
    for split in ("train", "val"):
        for k in range(11):
            folder = ws / "folder11" / split / f"c{k:02d}"
            folder.mkdir(parents=True)
            Image.fromarray(np.full((8, 8, 3), 10 * k, dtype=np.uint8)).save(folder / "a.png")
    (ws / "empty.yaml").write_text("")
    if os.geteuid() == 0:
        return Path("/sys/vitlab-read-only")
    ro = ws / "read_only"
    ro.mkdir()
    ro.chmod(0o555)
    return ro


def _cases(ws: Path, ro: Path) -> list[tuple[str, list[str]]]:
    out = ["--set", f"out_dir={ws / 'runs'}"]
    return [
        ("`vitlab train` into a read-only folder", ["train", "-c", RECIPE, *TINY, "--set", f"out_dir={ro}"]),
        ("`vitlab eval --out` into a read-only folder",
         ["eval", "--ckpt", str(ws / "good.ckpt"), "--out", str(ro / "metrics.json")]),
        ("`vitlab export` into a read-only folder",
         ["export", "--ckpt", str(ws / "good.ckpt"), "--out", str(ro / "export")]),
        ("`vitlab train --resume` with another architecture's recipe",
         ["train", "-c", RECIPE, *TINY, *out, "--set", "name=existing", "--set", "model.name=test_vit", "--resume"]),
        ("`vitlab eval` of a 10-class checkpoint on 11-class data",
         ["eval", "--ckpt", str(ws / "good.ckpt"), "--set", "data.name=image_folder",
          "--set", f"data.root={ws / 'folder11'}"]),
        ("`vitlab train` with an empty recipe file", ["train", "-c", str(ws / "empty.yaml")]),
    ]


def _run(cmd: list[str], cwd: Path) -> tuple[int, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    env.pop("VITLAB_DEBUG", None)
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    return res.returncode, res.stderr


def _internal_fault() -> tuple[int, str]:
    """A ValueError raised by a bug inside vitlab (simulated: ``model_info`` replaced by a failing one) is no longer
    shortened into a user error: the command exits with 1 and its traceback."""
    code = ("import sys, vitlab.models.profile as p\n"
            "def broken(*a, **k):\n    raise ValueError('an internal bug')\n"
            "p.model_info = broken\nfrom vitlab.cli import main\nsys.exit(main(['info', 'resnet18']))\n")
    return _run([sys.executable, "-c", code], ROOT)


def _cell(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    if not lines:
        return "(nothing)"
    if len(lines) == 1:
        return f"`{lines[0]}`"
    tail = next((line for line in reversed(lines) if "Error" in line), lines[-1])
    return f"{len(lines)} lines, ending `{tail.strip()[:160]}`"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--no-torchrun", action="store_true", help="skip the 2-process torchrun case")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "reliability" / "bad_inputs.json",
                        help="the result file (default: results/reliability/bad_inputs.json)")
    args = parser.parse_args(argv)
    options = argv if argv is not None else sys.argv[1:]
    command = " ".join(["python experiments/bad_inputs.py", *options])
    sys.path.insert(0, str(ROOT / "src"))
    with tempfile.TemporaryDirectory(prefix="vitlab-bad-inputs-") as tmp:
        ws = Path(tmp)
        ro = _workspace(ws)
        rows = []
        for title, cmd in _cases(ws, ro):
            code, err = _run([sys.executable, "-m", "vitlab", *cmd], ws)
            rows.append((title, code, _cell(err.replace(str(ws), "$WS").replace(str(ro), "$RO"))))
        if not args.no_torchrun:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                   "-m", "vitlab", "train", "-c", RECIPE, *TINY, "--set", "optim.lrr=1"]
            code, err = _run(cmd, ws)
            lines = err.strip().splitlines()
            errors = [line for line in lines if line.startswith("error: ")]
            root_cause = next((line.split(":", 1)[1].split("(")[0].strip() for line in reversed(lines)
                               if line.strip().startswith("exitcode")), "?")
            rows.append(("`torchrun --nproc-per-node 2` with a config error", code,
                         f"{len(errors)} `error:` line (rank 0): {_cell(errors[0] if errors else '')}; then "
                         f"torchrun's own report ({len(lines) - len(errors)} lines, root cause exitcode {root_cause})"))
        code, err = _internal_fault()
        rows.append(("an internal `ValueError` (a bug, simulated)", code, _cell(err)))
    result = {"command": command, "rows": [{"mistake": t, "exit": c, "stderr": cell} for t, c, cell in rows]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("| mistake | exit | stderr |")
    print("| --- | --- | --- |")
    for row in result["rows"]:
        print(f"| {row['mistake']} | {row['exit']} | {row['stderr'].replace('|', '/')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
