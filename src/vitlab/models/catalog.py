"""Writes :mod:`vitlab.model_catalog`, the static list that ``vitlab models`` prints without importing torch.

Run ``python -m vitlab.models.catalog`` after adding, removing or changing a registered vitlab model;
tests/models/test_catalog.py fails while the written list differs from the registry.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from vitlab.models import list_vitlab_models
from vitlab.models.profile import model_info

CATALOG_FILE = Path(__file__).resolve().parents[1] / "model_catalog.py"
_HEADER = '''"""The registered vitlab models with their parameters and default input sizes (``vitlab models``).

Written by ``python -m vitlab.models.catalog`` from timm's registry (do not edit by hand);
tests/models/test_catalog.py checks that it equals the registry. A plain table, so that ``vitlab models`` answers
without importing torch.
"""

from __future__ import annotations

import fnmatch
from typing import Any

MODELS: dict[str, dict[str, Any]] = {
'''
_FOOTER = '''}


def list_models(pattern: str = "*") -> list[str]:
    """Names of the vitlab models matching a shell-style pattern, sorted (like ``list_vitlab_models``)."""
    return sorted(name for name in MODELS if fnmatch.fnmatch(name, pattern))


def model_row(name: str) -> dict[str, Any]:
    """``{"model", "params", "backbone_params", "input_size"}`` of a vitlab model, like
    ``vitlab.models.profile.model_info(name, flops=False)``."""
    return {"model": name, **MODELS[name], "input_size": list(MODELS[name]["input_size"])}
'''


def catalog_entries() -> dict[str, dict[str, Any]]:
    """Every registered vitlab model: ``{name: {"params", "backbone_params", "input_size"}}`` from the registry."""
    entries = {}
    for name in list_vitlab_models():
        info = model_info(name, flops=False)
        entries[name] = {"params": info["params"], "backbone_params": info["backbone_params"],
                         "input_size": tuple(info["input_size"])}
    return entries


def render_catalog(entries: dict[str, dict[str, Any]] | None = None) -> str:
    """The text of ``vitlab/model_catalog.py`` for ``entries`` (default: the registry now)."""
    entries = catalog_entries() if entries is None else entries
    rows = "".join(f'    "{name}": {{"params": {e["params"]}, "backbone_params": {e["backbone_params"]}, '
                   f'"input_size": {tuple(e["input_size"])!r}}},\n' for name, e in sorted(entries.items()))
    return _HEADER + rows + _FOOTER


def main() -> int:
    CATALOG_FILE.write_text(render_catalog())
    print(f"wrote {CATALOG_FILE}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
