"""The pass criteria of specs/mugs.md §6 as ``experiments/mugs_accuracy.py`` computes them."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench(load_script):
    return load_script("experiments/mugs_accuracy.py")


def _row(mean, std):
    return {"mean": mean, "std": std, "values": []}


def test_gate_uses_three_times_the_larger_std(bench):
    summary = {"mugs": {"knn_top1": _row(60.0, 1.0), "probe_top1": _row(85.0, 2.0)},
               "random_init": {"knn_top1": _row(50.0, 3.0), "probe_top1": _row(79.0, 1.0)},
               "gds_only": {"knn_top1": _row(61.5, 2.0), "probe_top1": _row(86.0, 0.5)}}
    out = bench.gates(summary)
    knn = out["knn_top1/mugs_minus_random"]
    assert knn["diff"] == pytest.approx(10.0) and knn["three_std"] == pytest.approx(9.0) and knn["pass"]
    probe = out["probe_top1/mugs_minus_random"]
    assert probe["diff"] == pytest.approx(6.0) and probe["three_std"] == pytest.approx(6.0) and not probe["pass"]
    # Mugs >= GDS-only - one GDS seed std: -1.5 against 2.0 passes, -1.0 against 0.5 does not
    assert out["knn_top1/mugs_minus_gds_only"]["pass"]
    assert not out["probe_top1/mugs_minus_gds_only"]["pass"]


def test_gate_without_mugs_rows_is_empty(bench):
    assert bench.gates({"random_init": {"knn_top1": _row(50.0, 1.0), "probe_top1": _row(80.0, 1.0)}}) == {}


def test_markdown_table_from_runs(bench):
    runs = {"mugs/seed0": {"knn_top1": 60.0, "probe_top1": 85.0}, "mugs/seed1": {"knn_top1": 62.0, "probe_top1": 87.0},
            "random_init/seed0": {"knn_top1": 50.0, "probe_top1": 80.0},
            "random_init/seed1": {"knn_top1": 50.0, "probe_top1": 80.0},
            "raw_pixels": {"knn_top1": 97.0, "probe_top1": 96.0}}
    table = bench.markdown_table(bench.summarize(runs))
    assert "| Mugs (IDS + LGDS + GDS) | 2 | 61.0 ± 1.4 (60.0, 62.0) | 86.0 ± 1.4 (85.0, 87.0) |" in table
    assert "| raw pixels (reference) | – | 97.0 | 96.0 |" in table
    # 3 x std 1.41 = 4.2 < 11 and < 6: both gates pass
    assert "- k-NN: Mugs − random init = +11.0 points; 3 × the larger seed std = 4.2 → passes." in table
    assert "- probe: Mugs − random init = +6.0 points; 3 × the larger seed std = 4.2 → passes." in table


def test_merge_runs_orders_seeds_and_rejects_conflicts(bench, tmp_path, capsys):
    import json

    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"runs": {"mugs/seed2": {"knn_top1": 70.0, "probe_top1": 90.0},
                                      "random_init/seed2": {"knn_top1": 48.0, "probe_top1": 79.0}}}))
    b.write_text(json.dumps({"runs": {"mugs/seed0": {"knn_top1": 60.0, "probe_top1": 80.0},
                                      "random_init/seed2": {"knn_top1": 48.0, "probe_top1": 79.0},
                                      "random_init/seed0": {"knn_top1": 46.0, "probe_top1": 77.0}}}))
    summary = bench.summarize(bench.merge_runs([a, b]))
    assert summary["mugs"]["knn_top1"]["values"] == [60.0, 70.0]  # seed order, not file order
    assert summary["random_init"]["probe_top1"]["values"] == [77.0, 79.0]
    assert bench.main(["--out", str(a), "--table", str(b)]) == 0
    table = capsys.readouterr().out
    assert "| Mugs (IDS + LGDS + GDS) | 2 | 65.0 ± 7.1 (60.0, 70.0) | 85.0 ± 7.1 (80.0, 90.0) |" in table
    b.write_text(json.dumps({"runs": {"mugs/seed2": {"knn_top1": 71.0, "probe_top1": 90.0}}}))
    with pytest.raises(ValueError, match="mugs/seed2 differs"):
        bench.merge_runs([a, b])


def test_table_from_a_missing_or_foreign_file_is_a_one_line_error(bench, tmp_path, capsys):
    missing = tmp_path / "missing.json"
    assert bench.main(["--out", str(missing), "--table"]) == 2
    assert f"{missing}: no such result file" in capsys.readouterr().err
    foreign = tmp_path / "speed.json"
    foreign.write_text('{"mugs_over_gds_time": 1.1}')
    assert bench.main(["--out", str(foreign), "--table"]) == 2
    assert "not an accuracy result file" in capsys.readouterr().err


def test_along_training_table_means_over_seeds(bench):
    def history(knn30, knn60, probe60):
        return {"30": {"knn_top1": knn30, "probe_top1": 10.0}, "60": {"knn_top1": knn60, "probe_top1": probe60}}

    runs = {"mugs/seed1": {"knn_top1": 0.0, "along_training": history(40.0, 50.0, 70.0)},
            "mugs/seed0": {"knn_top1": 0.0, "along_training": history(42.0, 54.0, 74.0)},
            "gds_only/seed0": {"knn_top1": 0.0, "along_training": history(30.0, 31.0, 60.0)},
            "random_init/seed0": {"knn_top1": 20.0}}
    lines = bench.along_training_table(runs).splitlines()
    assert lines[0] == "| backbone | seeds | k-NN @ 30 | k-NN @ 60 | probe @ 60 |"
    assert lines[2] == "| Mugs (IDS + LGDS + GDS) | 2 | 41.0 ± 1.4 | 52.0 ± 2.8 | 72.0 ± 2.8 |"
    assert lines[3] == "| GDS-only (DINO-equivalent, same budget) | 1 | 30.0 ± 0.0 | 31.0 ± 0.0 | 60.0 ± 0.0 |"
    assert "- Mugs (IDS + LGDS + GDS), seed0: 42.0 / 54.0" in lines  # seeds in order, whatever the dict order
    assert lines.index("- Mugs (IDS + LGDS + GDS), seed0: 42.0 / 54.0") < lines.index(
        "- Mugs (IDS + LGDS + GDS), seed1: 40.0 / 50.0")


def test_summaries_load_without_torch():
    import subprocess
    import sys

    code = ("import importlib.util, sys; spec = importlib.util.spec_from_file_location('m', sys.argv[1]); "
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
            "m.markdown_table(m.summarize({})); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(ROOT / "experiments" / "mugs_accuracy.py")],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_plot_along_training_writes_a_png(bench, tmp_path):
    history = {"30": {"knn_top1": 40.0}, "60": {"knn_top1": 50.0}}
    runs = {"mugs/seed0": {"along_training": history}, "gds_only/seed0": {"along_training": history},
            "random_init/seed0": {"knn_top1": 30.0}, "raw_pixels": {"knn_top1": 80.0}}
    path = tmp_path / "img" / "knn.png"
    bench.plot_along_training(runs, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_plot_to_an_unwritable_path_is_one_line_and_exit_2(bench, tmp_path, capsys):
    import json

    result = tmp_path / "a.json"
    result.write_text(json.dumps({"runs": {"mugs/seed0": {"knn_top1": 60.0, "probe_top1": 80.0,
                                                          "along_training": {"30": {"knn_top1": 60.0}}}}}))
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert bench.main(["--out", str(result), "--table", "--plot", str(blocker / "knn.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --plot {blocker / 'knn.png'}: cannot write it") and err.count("\n") == 1
    assert blocker.read_text() == "" and sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "file"]
