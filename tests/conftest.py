"""Test-session settings: a private data cache (bundled sets are built once per session), few threads, no GPU."""

from __future__ import annotations

import os
import tempfile

import pytest

_CACHE = tempfile.mkdtemp(prefix="vitlab-test-cache-")
os.environ.setdefault("VITLAB_CACHE", _CACHE)
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


def _threads() -> int:
    """Two intra-op threads on a quiet 2-core machine; one when the CPU is oversubscribed (spinning OpenMP threads
    that get preempted make every op many times slower)."""
    cores = os.cpu_count() or 1
    return 1 if os.getloadavg()[0] > cores else min(2, cores)


@pytest.fixture(autouse=True)
def _threads_per_test():
    import torch

    torch.set_num_threads(_threads())
    yield
