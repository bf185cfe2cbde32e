"""Test-session settings: a private data cache (bundled sets are built once per session), few threads, no GPU."""

from __future__ import annotations

import os
import tempfile

import pytest

_CACHE = tempfile.mkdtemp(prefix="vitlab-test-cache-")
os.environ.setdefault("VITLAB_CACHE", _CACHE)
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


@pytest.fixture(autouse=True)
def _deterministic_threads():
    import torch

    torch.set_num_threads(2)
    yield
