"""benchmarks/bench_iformer.py compares the official and vitlab outputs in full float32, whatever the defaults."""

import importlib.util
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def _bench_iformer():
    spec = importlib.util.spec_from_file_location("bench_iformer", ROOT / "benchmarks" / "bench_iformer.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def test_full_fp32_precision_sets_and_restores_the_settings():
    bench = _bench_iformer()
    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32,
              torch.get_float32_matmul_precision())
    try:
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.set_float32_matmul_precision("medium")
        with bench.full_fp32_precision():
            assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
            assert torch.get_float32_matmul_precision() == "highest"
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before[:2]
        torch.set_float32_matmul_precision(before[2])


def test_output_difference_of_a_model_with_itself_is_zero():
    bench = _bench_iformer()
    model = torch.nn.Linear(4, 3)
    assert bench.output_difference(model, model, torch.randn(2, 4)) == 0.0
