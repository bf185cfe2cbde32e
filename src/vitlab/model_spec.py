"""How the command line names a model: ``--model path/to/file.py:factory | NAME`` and ``--model-args``, and
``vitlab train``'s model and data flags as recipe overrides.

Nothing here imports torch or timm, so ``vitlab train`` can read and check a recipe before the library loads;
:mod:`vitlab.models.external` builds the models these names stand for.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vitlab.errors import ConfigError

__all__ = ["MEMORY_PREFIX", "absolute_spec", "is_model_file", "parse_model_args", "recipe_overrides"]

MEMORY_PREFIX = "memory:"


def is_model_file(spec: str) -> bool:
    """Whether ``spec`` names a user's model (``file.py:factory``, ``file.py``, or a module the Python API was handed:
    ``memory:...``) rather than a registered name."""
    return spec.endswith(".py") or ".py:" in spec or spec.startswith(MEMORY_PREFIX)


def parse_model_args(items: Sequence[str] | str | None, flag: str = "--model-args") -> dict[str, Any]:
    """``key=value`` items (values read as YAML scalars / lists: 10, 0.5, true, [1, 2], text) or one JSON object."""
    import yaml

    if items is None:
        return {}
    items = [items] if isinstance(items, str) else list(items)
    if len(items) == 1 and items[0].lstrip().startswith("{"):
        try:
            value = json.loads(items[0])
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{flag}: not a JSON object ({exc.msg} at character {exc.pos})") from None
        if not isinstance(value, dict):
            raise ConfigError(f"{flag}: expected a JSON object, got {type(value).__name__}")
        return value
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.isidentifier():
            raise ConfigError(f"{flag}: expected key=value (e.g. num_classes=10), got {item!r}")
        try:
            out[key] = yaml.safe_load(text) if text else ""
        except yaml.YAMLError:
            out[key] = text
    return out


def absolute_spec(spec: str) -> str:
    """``file.py:factory`` with the file's absolute path (what a checkpoint stores, so it loads from anywhere)."""
    if ".py:" not in spec:
        return spec
    path, _, name = spec.rpartition(":")
    return f"{Path(path).expanduser().resolve()}:{name}"


def recipe_overrides(args: argparse.Namespace) -> list[str]:
    """``vitlab train``'s ``--model`` / ``--model-args`` / ``--data`` / ``--data-root`` as recipe overrides
    (``model.name``, ``model.kwargs.*``, ``data.name``, ``data.root``), applied before ``--set``."""
    sets = []
    if getattr(args, "model", None):
        sets.append(f"model.name={absolute_spec(args.model)}")
    for key, value in parse_model_args(getattr(args, "model_args", None)).items():
        sets.append(f"model.kwargs.{key}={value if isinstance(value, str) else json.dumps(value)}")
    if getattr(args, "data", None):
        sets.append(f"data.name={args.data}")
    if getattr(args, "data_root", None):
        sets.append(f"data.root={args.data_root}")
    return sets
