"""A fast command line: the parser, ``vitlab models`` and the recipe checks never import torch (benchmarks/bench_cli.py
measures the time); ``import vitlab`` still registers the models in timm, whichever is imported first.

The built-in methods' schemas live in torch-free modules (``src/vitlab/methods/schemas/``): the table that
``vitlab.config`` finds them by is the registry, and loading one imports no torch, so a mistake in a recipe's
``method`` section is reported in a fraction of a second too."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from vitlab.config import BUILTIN_METHOD_SCHEMAS, method_config_class

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


SCHEMA_RECIPE = "recipes/mugs/vit_tiny_glyphs.yaml"


def test_the_builtin_schema_table_is_the_registry() -> None:
    """Every method ``vitlab.methods`` registers has its schema in the table (the same class object), and the table
    names no other method."""
    from vitlab.methods import METHODS
    from vitlab.plugins import load_method_plugins

    load_method_plugins()
    builtin = {name: cls for name, cls in METHODS.items() if cls.__module__.startswith("vitlab.methods.")}
    assert sorted(builtin) == sorted(BUILTIN_METHOD_SCHEMAS)
    for name, cls in builtin.items():
        module, _, class_name = BUILTIN_METHOD_SCHEMAS[name].partition(":")
        assert module.startswith("vitlab.methods.schemas."), name
        assert getattr(importlib.import_module(module), class_name) is cls.config_class, name
        assert method_config_class(name) is cls.config_class, name


@pytest.mark.parametrize("name", sorted(BUILTIN_METHOD_SCHEMAS))
def test_a_builtin_schema_loads_without_torch(name: str) -> None:
    """A fresh interpreter finds the schema through the table, without a method module, and checks a recipe of the
    method with it (``validate()`` included) without torch."""
    code = (f"import sys\nfrom vitlab.config import ConfigError, load_config, method_config_class\n"
            f"cls = method_config_class({name!r})\n"
            f"try:\n    load_config(None, ['method.name={name}'])\nexcept ConfigError:\n    pass\n"
            f"print(cls.__module__ + ':' + cls.__qualname__, "
            f"[m for m in {(*HEAVY, 'vitlab.methods.base')!r} if m in sys.modules])")
    result = _fresh(code)
    assert result.stdout.strip().splitlines()[-1:] == [f"{BUILTIN_METHOD_SCHEMAS[name]} []"], result.stderr


@pytest.mark.parametrize("setting, message", [
    ("method.loss_weightz=[1,1,1]", "error: method.loss_weightz: unknown key (allowed in method: name, loss_weights, "),
    ("method.crops.global_size=abc", "error: method.crops.global_size: Value 'abc' of type 'str' could not be "
                                     "converted to Integer"),
])
def test_a_method_section_error_is_one_line_and_exit_2_without_torch(setting: str, message: str) -> None:
    """``vitlab train -c SCHEMA_RECIPE --set <mistake in method>``, run as the tests above run the command line."""
    argv = ["train", "-c", SCHEMA_RECIPE, "--set", setting]
    check = (f"import sys\nimport vitlab.cli\ntry:\n    rc = vitlab.cli.main({argv!r})\nexcept SystemExit as exc:\n"
             f"    rc = exc.code\nprint('RC', rc, [m for m in {HEAVY!r} if m in sys.modules])")
    result = _fresh(check)
    assert result.stdout.strip().splitlines()[-1:] == ["RC 2 []"], result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), result.stderr


def test_the_methods_package_imports_its_methods_on_first_use() -> None:
    """``import vitlab.methods`` (which every schema module's import runs) imports no method; its names do, and
    register every built-in method."""
    result = _fresh(f"import sys, vitlab.methods\nprint([m for m in {HEAVY!r} if m in sys.modules])\n"
                    "from vitlab.methods import METHODS\nprint(sorted(METHODS))")
    assert result.stdout.strip().splitlines() == ["[]", str(sorted(BUILTIN_METHOD_SCHEMAS))], result.stderr
