"""The method registry (entry points, no import of the methods from the config) and the schemas' fixed choices."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path
from typing import Any, get_type_hints

import pytest

from vitlab.config import (
    ConfigError,
    MethodConfig,
    RunConfig,
    check_choices,
    from_container,
    literal_choices,
    load_config,
    method_config_class,
    to_container,
    validate,
)
from vitlab.methods import METHODS
from vitlab.methods.base import Method
from vitlab.methods.hat import HAT, HATConfig
from vitlab.methods.supervised import SupervisedConfig
from vitlab.methods.video import VideoSupervised, VideoSupervisedConfig

ROOT = Path(__file__).resolve().parents[1]
# one recipe of each method family with Literal fields
RECIPES = [ROOT / "recipes" / p for p in (
    "hat/vit_tiny_digits.yaml", "mugs/vit_tiny_digits.yaml", "quant/clusterq_resnet20_digits.yaml",
    "robust/trades_digits.yaml", "supervised/resnet18_digits.yaml", "video/test_dualformer_moving_digits.yaml")]


def run_python(code: str, tmp_path: Path | None = None) -> str:
    """``code`` in a fresh interpreter (this checkout's sources first on the path); its stdout."""
    path = [str(ROOT / "src")] + ([str(tmp_path)] if tmp_path is not None else [])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path + [os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                         cwd=ROOT)
    assert res.returncode == 0, res.stderr
    return res.stdout


# ---- the registry ----------------------------------------------------------------------------------------------------
def test_methods_load_on_first_use_through_the_entry_point_group(tmp_path: Path) -> None:
    """One fresh interpreter (imports are slow here): config without methods; a built-in method's schema without the
    methods; the fallback; a plugin's method."""
    (tmp_path / "toy_vitlab_plugin.py").write_text(textwrap.dedent("""
        from dataclasses import dataclass
        from typing import Literal

        from vitlab.config import MethodConfig
        from vitlab.methods import Method, register_method


        @dataclass
        class ToyConfig(MethodConfig):
            name: str = "toy"
            mode: Literal["a", "b"] = "a"
            alpha: float = 1.0


        @register_method("toy")
        class Toy(Method[ToyConfig]):
            pass
    """))
    out = run_python("""
        import sys
        from importlib.metadata import EntryPoint

        import vitlab.config
        print('vitlab.methods' in sys.modules)

        # a checkout on PYTHONPATH (or an editable install older than the entry point) has no metadata for the group
        import vitlab.plugins as plugins
        plugins.entry_points = lambda group: []
        from vitlab.config import ConfigError, load_config
        cfg = load_config("recipes/mugs/vit_tiny_digits.yaml")  # the schema module only (tests/test_cli_startup.py)
        print(type(cfg.method).__name__, 'vitlab.methods.mugs' in sys.modules, 'torch' in sys.modules)
        print(plugins.load_method_plugins(), 'vitlab.methods.mugs' in sys.modules)

        # an installed plugin package names its module in the group
        plugins._loaded = None
        plugins.entry_points = lambda group: [EntryPoint("builtin", "vitlab.methods", group),
                                              EntryPoint("toy", "toy_vitlab_plugin", group)]
        cfg = load_config(None, ["method.name=toy", "method.alpha=2", "method.mode=b"])
        print(type(cfg.method).__name__, cfg.method.alpha, cfg.method.mode)
        from toy_vitlab_plugin import Toy
        print(Toy.config_class.__name__, plugins.load_method_plugins())
        try:
            load_config(None, ["method.name=toy", "method.mode=c"])
        except ConfigError as exc:
            print(exc)
    """, tmp_path)
    assert out.strip().splitlines() == [
        "False",
        "MugsConfig False False",
        "['vitlab.methods'] True",
        "ToyConfig 2.0 b",
        "ToyConfig ['vitlab.methods', 'toy_vitlab_plugin']",
        "method.mode: got 'c', expected one of a, b",
    ]


def test_pyproject_declares_the_builtin_entry_point() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["vitlab.methods"] == {"builtin": "vitlab.methods"}


def test_every_registered_method_has_its_config_registered() -> None:
    for name, cls in METHODS.items():
        assert method_config_class(name) is cls.config_class, name


# ---- generic configs -------------------------------------------------------------------------------------------------
def test_the_config_class_comes_from_the_generic_base() -> None:
    assert HAT.config_class is HATConfig
    assert VideoSupervised.config_class is VideoSupervisedConfig  # declared: it narrows Supervised[SupervisedConfig]
    assert METHODS["supervised"].config_class is SupervisedConfig


def test_a_method_refuses_another_methods_section() -> None:
    cfg = RunConfig(method=SupervisedConfig())
    with pytest.raises(ConfigError, match="^method: HAT needs a HATConfig section, got SupervisedConfig"):
        HAT.method_config(cfg)
    assert Method.method_config(cfg) is cfg.method


def test_no_method_asserts_its_config_type() -> None:
    for path in (ROOT / "src/vitlab/methods").glob("*.py"):
        text = path.read_text()
        assert "assert isinstance(mcfg" not in text and "cfg.method.crops  # type: ignore" not in text, path


# ---- fixed choices ---------------------------------------------------------------------------------------------------
def _literal_fields(schema: Any, prefix: str) -> list[tuple[str, tuple[Any, ...]]]:
    hints = get_type_hints(type(schema))
    out = []
    for f in dataclasses.fields(schema):
        choices = literal_choices(hints[f.name])
        value = getattr(schema, f.name)
        if choices is not None:
            out.append((prefix + f.name, choices))
        elif dataclasses.is_dataclass(value):
            out.extend(_literal_fields(value, f"{prefix}{f.name}."))
    return out


def _all_literal_fields() -> list[tuple[str, str, tuple[Any, ...]]]:
    cases = [("supervised", key, choices) for key, choices in _literal_fields(RunConfig(), "")
             if not key.startswith("method.")]
    for name, cls in sorted(METHODS.items()):
        config: MethodConfig = cls.config_class(name=name)
        cases += [(name, "method." + key, choices) for key, choices in _literal_fields(config, "")]
    return cases


LITERALS = _all_literal_fields()


def test_the_fixed_choices_are_literal_fields() -> None:
    keys = {key for _, key, _ in LITERALS}
    for key in ("train.precision", "optim.name", "optim.schedule", "data.channels", "data.video.label",
                "method.eps_space", "method.distill_type", "method.attack_mode", "method.lgds.query", "method.engine",
                "method.kd_reduction", "method.param_grouping"):
        assert key in keys, key


@pytest.mark.parametrize("method, key, choices", LITERALS, ids=[f"{m}:{k}" for m, k, _ in LITERALS])
def test_a_value_outside_a_literal_field_is_a_one_line_error(method: str, key: str, choices: tuple[Any, ...]) -> None:
    """Through the schema check of a built config (fast); load_config and the CLI take the same path below."""
    allowed = ", ".join("null" if c is None else str(c) for c in choices)
    cfg = RunConfig(method=METHODS[method].config_class(name=method))
    *parents, leaf = key.split(".")
    node: Any = cfg
    for part in parents:
        node = getattr(node, part)
    for value in choices:  # every allowed value passes the schema
        setattr(node, leaf, value)
        check_choices(cfg, "")
    setattr(node, leaf, "bogus")
    with pytest.raises(ConfigError) as info:
        check_choices(cfg, "")
    assert str(info.value) == f"{key}: got 'bogus', expected one of {allowed}"


def test_load_config_rejects_a_value_outside_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"^method.lgds.query: got 'cls', expected one of prenorm_all_tokens, "
                                          r"postnorm_patch_mean$"):
        load_config("recipes/mugs/vit_tiny_digits.yaml", ["method.lgds.query=cls"])
    with pytest.raises(ConfigError, match=r"^method.attack_mode: got 'test', expected one of eval, train_frozen_bn, "
                                          r"train$"):
        load_config("recipes/robust/trades_digits.yaml", ["method.attack_mode=test"])


def test_validate_checks_the_literal_fields_of_a_config_built_in_code() -> None:
    cfg = RunConfig()
    cfg.train.precision = "64-true"  # type: ignore[assignment]
    with pytest.raises(ConfigError, match=r"^train.precision: got '64-true', expected one of 32-true, 32, bf16"):
        validate(cfg)
    cfg = RunConfig(method=HATConfig(eps_space="pixels"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^method.eps_space: got 'pixels', expected one of normalized, pixel$"):
        validate(cfg)


def test_literal_choices_are_exact() -> None:
    with pytest.raises(ConfigError, match="^data.channels: got True, expected one of 1, 3$"):
        load_config(None, ["data.channels=true"])
    with pytest.raises(ConfigError, match="^method.kd_reduction: got 'sum', expected one of mean, batchmean, null$"):
        load_config("recipes/quant/gdfq_resnet20_digits.yaml", ["method.kd_reduction=sum"])
    assert load_config(None, ["data.channels=1"]).data.channels == 1
    assert load_config(None, ["train.precision=32"]).train.precision == "32"  # YAML reads 32 as a number


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.name for p in RECIPES])
def test_saved_configs_load_back(recipe: Path) -> None:
    """Checkpoints store ``to_container``'s plain dict: Literal values are plain strings, read back unchanged."""
    cfg = load_config(recipe)
    data = to_container(cfg)
    assert all(isinstance(v, str) for v in (data["train"]["precision"], data["optim"]["name"]))
    assert from_container(data) == cfg
