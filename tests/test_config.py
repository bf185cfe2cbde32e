from __future__ import annotations

from pathlib import Path

import pytest

from vitlab.config import ConfigError, RunConfig, apply_overrides, from_container, load_config, to_container

RECIPES = sorted(Path("recipes").rglob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=[str(p) for p in RECIPES])
def test_every_recipe_loads(recipe: Path) -> None:
    cfg = load_config(recipe)
    assert isinstance(cfg, RunConfig)
    assert cfg.name


def test_defaults_and_override_types() -> None:
    cfg = load_config(None, ["optim.lr=0.01", "data.batch_size=7", "optim.betas=[0.5,0.6]", "optim.clip_grad=1"])
    assert cfg.optim.lr == 0.01 and isinstance(cfg.optim.lr, float)
    assert cfg.data.batch_size == 7
    assert cfg.optim.betas == [0.5, 0.6]
    assert cfg.optim.clip_grad == 1.0


@pytest.mark.parametrize("override, key", [
    ("optim.lrr=1", "optim.lrr"),
    ("model.nme=x", "model.nme"),
    ("method.beta=3", "method.beta"),
    ("optim.lr=abc", "optim.lr"),
    ("data.batch_size=1.5", "data.batch_size"),
    ("optim.lr=-1", "optim.lr"),
    ("data.channels=2", "data.channels"),
    ("optim.name=lamb", "optim.name"),
    ("method.name=nope", "method.name"),
    ("data.aug.hflip=2", "data.aug.hflip"),
])
def test_errors_name_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config("recipes/supervised/resnet18_digits.yaml", [override])
    message = str(info.value)
    assert message.startswith(key + ":"), message
    assert "\n" not in message


def test_malformed_override_and_missing_recipe(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(None, ["optim.lr"])
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    unknown_top = tmp_path / "top.yaml"
    unknown_top.write_text("trainer: {epochs: 3}\n")
    with pytest.raises(ConfigError, match="^trainer: unknown key"):
        load_config(unknown_top)


def test_container_round_trip_is_plain() -> None:
    cfg = load_config("recipes/supervised/resnet18_digits.yaml", ["method.label_smoothing=0.2"])
    data = to_container(cfg)

    def plain(x: object) -> bool:
        if isinstance(x, dict):
            return all(isinstance(k, str) and plain(v) for k, v in x.items())
        if isinstance(x, list):
            return all(plain(v) for v in x)
        return x is None or isinstance(x, (str, int, float, bool))

    assert plain(data)
    back = from_container(data)
    assert back == cfg
    assert apply_overrides(cfg, ["optim.lr=0.5"]).optim.lr == 0.5
    with pytest.raises(ConfigError, match="^optim.lrr"):
        apply_overrides(cfg, ["optim.lrr=0.5"])
