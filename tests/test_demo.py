"""`vitlab demo --quick`: every registered section runs and lands in report.md."""

from __future__ import annotations

from pathlib import Path

from vitlab.cli import main
from vitlab.demo import SECTIONS


def test_quick_demo_writes_every_section(tmp_path: Path) -> None:
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    report = (tmp_path / "report.md").read_text()
    assert SECTIONS, "no demo sections registered"
    for section in SECTIONS:
        assert f"## {section.title}" in report
    assert "failed" not in report
    assert (tmp_path / "supervised" / "resnet18_digits_curve.png").stat().st_size > 1000


def test_unknown_section_is_an_error(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["demo", "--quick", "--out", str(tmp_path), "--only", "nope"]) == 2
    assert "nope" in capsys.readouterr().err
