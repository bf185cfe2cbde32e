"""A fast command line: the parser, ``vitlab models`` and the recipe checks never import torch (benchmarks/bench_cli.py
measures the time); ``import vitlab`` still registers the models in timm, whichever is imported first."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[1] / "src")
RECIPE = "recipes/supervised/resnet18_digits.yaml"
HEAVY = ("torch", "timm", "numpy", "lightning_fabric")


def _fresh(code: str) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter on this checkout, run from the repository root."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(SRC).parent, env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize("argv, code", [
    (["--help"], 0),
    (["train", "--help"], 0),
    (["models"], 0),
    (["models", "iformer*", "--json"], 0),
    (["models", "no_such_model*"], 2),
    (["train", "-c", "recipes/nope.yaml"], 2),
    (["train", "-c", RECIPE, "--set", "optim.lr=-1"], 2),
    (["train", "-c", RECIPE, "--set", "optim.lrr=1"], 2),
    (["train", "-c", RECIPE, "--set", "train.matmul_precision=fast"], 2),
])
def test_the_fast_commands_import_no_torch(argv: list[str], code: int) -> None:
    check = (f"import sys\nimport vitlab.cli\ntry:\n    rc = vitlab.cli.main({argv!r})\nexcept SystemExit as exc:\n"
             f"    rc = exc.code\nprint('RC', rc, [m for m in {HEAVY!r} if m in sys.modules])")
    result = _fresh(check)
    assert result.stdout.strip().splitlines()[-1] == f"RC {code} []", result.stderr


def test_import_vitlab_cli_and_help_leave_torch_out() -> None:
    """The check the issue asks for, literally: ``import vitlab.cli`` and parsing ``--help``."""
    result = _fresh("import sys, contextlib, io, vitlab.cli\nwith contextlib.redirect_stdout(io.StringIO()):\n"
                    "    try:\n        vitlab.cli.build_parser().parse_args(['--help'])\n    except SystemExit:\n"
                    "        pass\nprint('torch' in sys.modules)")
    assert result.stdout.strip() == "False", result.stderr


def test_import_vitlab_then_timm_registers_the_models() -> None:
    """``import vitlab`` before ``import timm``: the models register right after timm is imported."""
    result = _fresh("import sys, vitlab\nassert 'timm' not in sys.modules\nimport timm\n"
                    "print(timm.is_model('iformer_small'), timm.is_model('test_dualformer'))")
    assert result.stdout.strip() == "True True", result.stderr


def test_vitlab_models_is_lazy_and_complete() -> None:
    import vitlab

    assert "models" in dir(vitlab)
    assert vitlab.models.list_vitlab_models("iformer_small") == ["iformer_small"]
