"""``vitlab analyze frequency --ckpt`` on a checkpoint written by ``vitlab train``."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from vitlab.cli import main


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, one_step_checkpoint) -> Path:
    return one_step_checkpoint("hat/vit_tiny_digits.yaml", tmp_path_factory.mktemp("hat_runs"), 8)


def test_analyze_frequency_writes_csv_and_plots(checkpoint: Path, tmp_path: Path) -> None:
    rc = main(["analyze", "frequency", "--ckpt", str(checkpoint), "--out", str(tmp_path), "--n", "16",
               "--spectrum-n", "4", "--radii", "0,1,2,4"])
    assert rc == 0
    for name in ("filtered_accuracy.csv", "filtered_accuracy.png", "spectrum.csv", "spectrum.png"):
        assert (tmp_path / name).stat().st_size > 0
    rows = list(csv.DictReader((tmp_path / "filtered_accuracy.csv").open()))
    assert [(r["radius"], r["filter"]) for r in rows[:3]] == [("-1", "none"), ("0.0", "lowpass"), ("0.0", "highpass")]
    layers = {r["layer"] for r in csv.DictReader((tmp_path / "spectrum.csv").open())}
    assert {"input", "layer0", "delta (HAT)"} <= layers


def test_analyze_frequency_bad_radius_is_a_clear_error(checkpoint: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["analyze", "frequency", "--ckpt", str(checkpoint), "--out", str(tmp_path), "--n", "4",
               "--radii", "1,50"])
    assert rc == 2
    assert "radius 50.0 is outside the 8x8 spectrum" in capsys.readouterr().err
