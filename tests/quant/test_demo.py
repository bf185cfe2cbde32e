"""The ClusterQ demo section runs end to end in quick mode and writes its plot."""

from __future__ import annotations

from pathlib import Path

import pytest

from vitlab.demo import run_demo


@pytest.mark.slow
def test_clusterq_demo_quick(tmp_path: Path) -> None:
    report = run_demo(tmp_path, quick=True, sections=["clusterq"])
    text = report.read_text()
    assert "| gdfq |" in text and "| clusterq |" in text
    assert (tmp_path / "clusterq" / "generated_features.png").is_file()
