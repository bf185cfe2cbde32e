from __future__ import annotations

import re
from pathlib import Path

import torch

DOC = Path(__file__).resolve().parents[2] / "docs" / "data.md"


def test_docs_example_runs_and_keeps_its_promises() -> None:
    (example,) = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    namespace: dict[str, object] = {}
    exec(compile(example, str(DOC), "exec"), namespace)
    images, soft_targets = namespace["images"], namespace["soft_targets"]
    assert isinstance(images, torch.Tensor) and isinstance(soft_targets, torch.Tensor)
    assert images.shape == (64, 3, 32, 32) and soft_targets.shape == (64, 136)
    assert images.min() >= 0 and images.max() <= 1
