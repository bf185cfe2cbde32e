"""Comparing a state dict with the one a model expects: one report of every missing, unexpected and mis-shaped key."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any


def state_dict_mismatch(given: Mapping[str, Any], expected: Mapping[str, Any],
                        may_be_missing: Callable[[str], bool] = lambda _key: False,
                        limit: int | None = None) -> str | None:
    """None when ``given`` fits ``expected`` (same keys, same shapes); else one line listing every difference.

    Args:
        given: the state dict to load (tensors).
        expected: the model's own ``state_dict()``.
        may_be_missing: keys of ``expected`` that ``given`` may leave out (e.g. a classifier head the model keeps).
        limit: name at most this many keys of each kind (the count stays exact); None names them all.
    """
    missing = [k for k in expected if k not in given and not may_be_missing(k)]
    unexpected = [k for k in given if k not in expected]
    misshaped = [f"{k}: checkpoint {tuple(given[k].shape)} vs model {tuple(expected[k].shape)}"
                 for k in given if k in expected and tuple(given[k].shape) != tuple(expected[k].shape)]

    def shown(keys: list[str], sep: str) -> str:
        return sep.join(keys) if limit is None or len(keys) <= limit else sep.join(keys[:limit]) + f"{sep}..."

    parts = [f"{label} ({len(keys)}): {shown(keys, sep)}" for label, keys, sep in
             (("missing keys", missing, ", "), ("unexpected keys", unexpected, ", "),
              ("mis-shaped keys", misshaped, "; ")) if keys]
    return " | ".join(parts) if parts else None
