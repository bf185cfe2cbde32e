from __future__ import annotations

import re
from pathlib import Path

import torch

DOC = Path(__file__).resolve().parents[2] / "docs" / "data.md"
ROOT = DOC.parents[1]


def _examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_docs_example_runs_and_keeps_its_promises() -> None:
    example = _examples()[0]
    namespace: dict[str, object] = {}
    exec(compile(example, str(DOC), "exec"), namespace)
    images, soft_targets = namespace["images"], namespace["soft_targets"]
    assert isinstance(images, torch.Tensor) and isinstance(soft_targets, torch.Tensor)
    assert images.shape == (64, 3, 32, 32) and soft_targets.shape == (64, 136)
    assert images.min() >= 0 and images.max() <= 1


def test_the_batched_multicrop_example_runs_and_prints_what_it_says(monkeypatch, capsys) -> None:
    (example,) = [e for e in _examples() if "BatchMultiCrop" in e]
    monkeypatch.chdir(ROOT)  # the example names the recipe relative to the repository
    exec(compile(example, str(DOC), "exec"), {})
    printed = capsys.readouterr().out.strip()
    promised = " ".join(line.lstrip("# ").strip() for line in example.strip().splitlines() if line.startswith("#"))
    assert printed == promised
