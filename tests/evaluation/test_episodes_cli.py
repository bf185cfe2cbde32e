"""`vitlab eval --ckpt PATH --episodes` and `vitlab.episodes`: few-shot episodes on any checkpoint's features."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vitlab.cli import main

RECIPE = "recipes/supervised/resnet18_digits.yaml"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ResNet trained for two steps on 16-px digits (its few-shot counterpart: digits_fewshot, novel 5..9)."""
    out = tmp_path_factory.mktemp("episodes_cli")
    sets = ["--set", f"out_dir={out}", "--set", "name=tiny", "--set", "model.name=test_resnet",
            "--set", "data.img_size=16", "--set", "train.max_steps=2", "--set", "train.progress=false"]
    assert main(["train", "-c", RECIPE, *sets]) == 0
    return out / "tiny" / "last.ckpt"


def test_episodes_print_and_json(ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    capsys.readouterr()
    out = tmp_path / "fewshot.json"
    argv = ["eval", "--ckpt", str(ckpt), "--episodes", "--n-episodes", "300", "--heads", "cosine", "euclidean",
            "logistic", "--out", str(out)]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    report = json.loads(out.read_text())
    assert report["data"] == "digits_fewshot" and report["split"] == "novel"
    assert report["classes"] == 5 and report["feature"] == "gap"  # a CNN: the pooled final map
    assert report["episodes"] == 300 and report["seed"] == 12345 and report["ci"] == "normal"
    assert [(r["head"], r["shots"]) for r in report["results"]] == [
        ("cosine", 1), ("euclidean", 1), ("logistic", 1), ("cosine", 5), ("euclidean", 5), ("logistic", 5)]
    for r in report["results"]:
        assert 20.0 <= r["mean"] <= 100.0 and 0.0 < r["ci95"] < 5.0  # two steps: features above chance, not random
    assert lines[0].startswith("digits_fewshot / novel: 5-way, 15 queries, 300 episodes (seed 12345);")
    assert lines[1].split() == ["head", "1-shot", "5-shot"]
    by_head = {line.split()[0]: line for line in lines[2:]}
    assert set(by_head) == {"cosine", "euclidean", "logistic"}
    cosine = {r["shots"]: r for r in report["results"] if r["head"] == "cosine"}
    assert by_head["cosine"].split() == ["cosine", f"{cosine[1]['mean']:.2f}", "±", f"{cosine[1]['ci95']:.2f}",
                                         f"{cosine[5]['mean']:.2f}", "±", f"{cosine[5]['ci95']:.2f}"]


def test_the_api_gives_the_cli_numbers_and_t_ci_is_wider(ckpt: Path, tmp_path: Path) -> None:
    import vitlab
    from vitlab.data import build_dataset
    from vitlab.engine.checkpoint import load_eval_model, load_run_config

    out = tmp_path / "t.json"
    assert main(["eval", "--ckpt", str(ckpt), "--episodes", "--n-episodes", "200", "--shots", "1", "--ci", "t",
                 "--out", str(out)]) == 0
    cli = json.loads(out.read_text())["results"][0]
    data = load_run_config(ckpt).data
    data.name = "digits_fewshot"
    dataset = build_dataset(data, "novel", train=False)
    model = load_eval_model(ckpt)
    normal = vitlab.episodes(model, dataset, shots=(1,), n_episodes=200)["results"][0]
    student = vitlab.episodes(str(ckpt), dataset, shots=(1,), n_episodes=200, ci="t")["results"][0]
    assert student == cli
    assert normal["mean"] == pytest.approx(cli["mean"])
    from scipy.stats import t

    assert student["ci95"] / normal["ci95"] == pytest.approx(t.ppf(0.975, 199) / 1.96, rel=1e-9)


def test_pre_logits_feature_and_auto_fallback() -> None:
    from vitlab.evaluation.episodes_command import episode_feature_fn

    class NoMap(torch.nn.Module):  # forward_features gives pooled vectors: no spatial map
        num_features = 4

        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean(dim=(2, 3)).repeat(1, 2)[:, :4]

        def forward_head(self, f: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
            return f * 2

    x = torch.rand(3, 2, 8, 8)
    fn, used = episode_feature_fn(NoMap(), "auto", x[:1])
    assert used == "pre_logits"
    torch.testing.assert_close(fn(x), 2 * x.mean(dim=(2, 3)).repeat(1, 2)[:, :4])


@pytest.mark.parametrize("extra, needle", [
    (["--heads", "knn"], "--heads: unknown head 'knn'"),
    (["--ways", "6"], "5 classes, fewer than the 6 ways"),
    (["--shots", "1", "--queries", "2000"], "images, fewer than shots + queries = 1 + 2000"),
    (["--ci", "z"], "--ci: got 'z'"),
    (["--data", "digits"], None),  # a classification set is fine as a source of classes (10 digits)
])
def test_bad_input_is_one_line_exit_2(ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                      extra: list[str], needle: str | None) -> None:
    out = tmp_path / "bad.json"
    code = main(["eval", "--ckpt", str(ckpt), "--episodes", "--n-episodes", "20", *extra, "--out", str(out)])
    err = capsys.readouterr().err
    if needle is None:
        assert code == 0 and json.loads(out.read_text())["classes"] == 10
        return
    assert code == 2 and err.startswith("error:") and err.count("\n") == 1 and needle in err, err
    assert not out.exists()


def test_a_set_without_few_shot_counterpart_is_an_error(ckpt: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["eval", "--ckpt", str(ckpt), "--episodes", "--set", "data.name=cifar10"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'cifar10'" in err and "--data" in err


def test_import_vitlab_config_stays_light() -> None:
    import subprocess
    import sys

    code = "import sys, vitlab.config; print(any(m.startswith('vitlab.methods') for m in sys.modules))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "False"
