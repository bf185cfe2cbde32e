"""experiments/sun_plan.py's command line and the ``sun_fewshot`` table printer (mean ± CI, seed spread, the gate)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(f"experiments_{name}", ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[spec.name] = module  # type: ignore[union-attr]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def _record(row: str, seed: int, one: float, ci: float) -> dict[str, object]:
    return {"command": "python experiments/sun_plan.py --seeds 0 1 2 --scale 0.2", "row": row, "seed": seed,
            "episodes": 2000, "episode_seed": 12345, "queries": 15, "before_meta": {"1shot": {"mean": one - 5}},
            "1shot": {"mean": one, "ci95": ci}, "5shot": {"mean": one + 10, "ci95": ci / 2}}


def test_sun_fewshot_prints_rows_and_the_gate(tmp_path: Path) -> None:
    tables = _load("tables")
    (tmp_path / "sun").mkdir()
    values = {"baseline": (40.0, 41.0, 42.0), "sun": (50.0, 52.0, 54.0), "sun_patch": (45.0,) * 3,
              "sun_bgf": (46.0,) * 3, "cnn": (44.0,) * 3}
    for row, accs in values.items():
        for seed, acc in enumerate(accs):
            (tmp_path / "sun" / f"{row}_s{seed}.json").write_text(json.dumps(_record(row, seed, acc, 0.4)))
    lines = tables.render("sun_fewshot", tmp_path).splitlines()
    assert lines[2].startswith("| Meta-Baseline without SUN")
    assert lines[2].endswith("| 0, 1, 2 | 41.00 ± 0.40; 1.00 | 51.00 ± 0.20; 1.00 | 36.00 |")
    assert lines[3].endswith("| 0, 1, 2 | 45.00 ± 0.40; 0.00 | 55.00 ± 0.20; 0.00 | 40.00 |")
    assert "| 52.00 ± 0.40; 2.00 |" in lines[5]
    assert lines[-1] == "Gate (1-shot): SUN 52.00 − 0.40 = 51.60 vs baseline 41.00 + 0.40 = 41.40: holds."
    for seed in range(3):  # SUN at 41.5 ± 0.4: 41.1 is not above 41.4
        (tmp_path / "sun" / f"sun_s{seed}.json").write_text(json.dumps(_record("sun", seed, 41.5, 0.4)))
    assert tables.render("sun_fewshot", tmp_path).endswith("does not hold.")


def test_plan_help_and_bad_scale() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "experiments" / "sun_plan.py"), "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert "--seeds" in out and "--scale" in out and "results/sun/<row>_s<seed>.json" in out
    plan = _load("sun_plan")
    with pytest.raises(SystemExit) as caught:
        plan.main(["--scale", "0"])
    assert caught.value.code == 2


def test_finished_rows_are_skipped(tmp_path: Path) -> None:
    plan = _load("sun_plan")
    (tmp_path / "sun_s0.json").write_text("{}")
    assert plan.run_row("sun", 0, tmp_path / "runs", tmp_path, 0.2) == tmp_path / "sun_s0.json"
    assert not (tmp_path / "runs").exists()  # nothing trained


def test_glyphs_plan_paths_and_bad_data(tmp_path: Path) -> None:
    plan = _load("sun_plan")
    (tmp_path / "cnn_s1.json").write_text("{}")  # finished: nothing is trained
    assert plan.main(["--data", "glyphs", "--rows", "cnn", "--seeds", "1", "--results", str(tmp_path),
                      "--out", str(tmp_path / "runs")]) == 0
    assert not (tmp_path / "runs").exists()
    with pytest.raises(SystemExit) as caught:
        plan.main(["--data", "cifar"])
    assert caught.value.code == 2
    from vitlab.models import list_vitlab_models

    assert plan.CNN_MODEL in list_vitlab_models()
    for row in ("teacher", "sun", "sun_patch", "sun_bgf", "baseline_pretrain", "meta"):  # every stage has a recipe
        for data in plan.DATA:
            assert (plan.RECIPES / f"{data}_{row}.yaml").is_file()


def test_sun_fewshot_cnn_row(tmp_path: Path) -> None:
    tables = _load("tables")
    (tmp_path / "sun").mkdir()
    for row, acc in {"baseline": 40.0, "sun": 50.0, "cnn": 44.0}.items():
        for seed in range(3):
            (tmp_path / "sun" / f"{row}_s{seed}.json").write_text(json.dumps(_record(row, seed, acc + seed, 0.4)))
    lines = tables.sun_fewshot([json.loads(p.read_text()) for p in sorted((tmp_path / "sun").iterdir())]).splitlines()
    assert lines[-3].startswith("| Meta-Baseline with a ResNet-12-like CNN")
    assert lines[-3].endswith("| 0, 1, 2 | 45.00 ± 0.40; 1.00 | 55.00 ± 0.20; 1.00 | 40.00 |")


def test_cli_record_is_the_docs_block() -> None:
    """docs/sun.md "From the command line" is results/sun/cli.txt, the output of experiments/sun_cli.sh."""
    subprocess.run(["bash", "-n", str(ROOT / "experiments" / "sun_cli.sh")], check=True)
    record = (ROOT / "results" / "sun" / "cli.txt").read_text()
    assert record.count("(exit code 0)") == 4 and record.rstrip().endswith("(exit code 2)")
    assert [line.split()[2] for line in record.splitlines() if line.startswith("$ vitlab")] == [
        "train", "train", "train", "eval", "eval"]
    assert f"```text\n{record}```" in (ROOT / "docs" / "sun.md").read_text()
