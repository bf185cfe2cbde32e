"""Comparing a state dict with the one a model expects: one report of every missing, unexpected and mis-shaped key."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any


def state_dict_mismatch(given: Mapping[str, Any], expected: Mapping[str, Any],
                        may_be_missing: Callable[[str], bool] = lambda _key: False) -> str | None:
    """None when ``given`` fits ``expected`` (same keys, same shapes); else one line listing every difference.

    Args:
        given: the state dict to load (tensors).
        expected: the model's own ``state_dict()``.
        may_be_missing: keys of ``expected`` that ``given`` may leave out (e.g. a classifier head the model keeps).
    """
    missing = [k for k in expected if k not in given and not may_be_missing(k)]
    unexpected = [k for k in given if k not in expected]
    misshaped = [f"{k}: checkpoint {tuple(given[k].shape)} vs model {tuple(expected[k].shape)}"
                 for k in given if k in expected and tuple(given[k].shape) != tuple(expected[k].shape)]
    parts = [f"{label} ({len(keys)}): {sep.join(keys)}" for label, keys, sep in
             (("missing keys", missing, ", "), ("unexpected keys", unexpected, ", "),
              ("mis-shaped keys", misshaped, "; ")) if keys]
    return " | ".join(parts) if parts else None
