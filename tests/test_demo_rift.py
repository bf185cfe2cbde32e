"""The quick RIFT demo section: the attack surface of synth_sentiment and the per-method bars from results/rift."""

from pathlib import Path

from vitlab.cli import main


def test_quick_rift_section_reports_the_attack_surface_and_bars(tmp_path: Path) -> None:
    assert main(["demo", "--quick", "--out", str(tmp_path), "--only", "rift"]) == 0
    report = (tmp_path / "report.md").read_text()
    assert "substitution combinations each on average" in report and "Held-out words" in report
    if (Path(__file__).resolve().parents[1] / "results" / "rift" / "rift_s0.json").is_file():
        assert (tmp_path / "rift" / "rift_robust.png").stat().st_size > 1000
        assert "| RIFT |" in report
