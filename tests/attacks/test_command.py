import json
import os

import pytest

pyautoattack = pytest.importorskip("pyautoattack")
from vitlab.cli import main  # noqa: E402

WEIGHTS = os.path.join(os.path.dirname(pyautoattack.__file__), "examples", "model_test.pt")


def _attack_pretrained(tmp_path, *args: str) -> dict:
    """``vitlab attack`` on the pretrained CIFAR-10 ResNet-18 and foolbox's real images; its exit code must be 0."""
    out = tmp_path / "report.json"
    code = main(["attack", "--model", "cifar_resnet18", "--weights", WEIGHTS, "--data", "foolbox-cifar10", *args,
                 "--out", str(out)])
    assert code == 0
    return json.loads(out.read_text())


def test_attack_pretrained_resnet18_on_foolbox_images(tmp_path, capsys):
    report = _attack_pretrained(tmp_path, "--attack", "pgd", "--steps", "5", "--n", "6")
    assert report["clean_accuracy"] == 1.0  # the real standard-trained network classifies these real images
    assert report["robust_accuracy"] == 0.0  # and is not robust at 8/255
    assert report["max_perturbation"] <= 8 / 255 + 1e-6
    assert "robust accuracy" in capsys.readouterr().out


@pytest.mark.parametrize("extra,message", [
    (["--attack", "pgd", "--norm", "L7"], "unknown norm"),
    (["--attack", "pgd", "--eps", "eight/255"], "eps"),
    (["--attack", "pgd", "--n", "0"], "--n"),
])
def test_bad_input_exits_2(tmp_path, capsys, extra, message):
    code = main(["attack", "--model", "cifar_resnet18", "--weights", WEIGHTS, "--data", "foolbox-cifar10",
                 "--out", str(tmp_path / "r.json"), *extra])
    assert code == 2
    assert message in capsys.readouterr().err


def test_unknown_attack_exits_2():
    with pytest.raises(SystemExit) as exc:
        main(["attack", "--model", "cifar_resnet18", "--weights", WEIGHTS, "--attack", "deepfool"])
    assert exc.value.code == 2


@pytest.mark.slow
def test_standard_autoattack_reference_on_pretrained_resnet18(tmp_path, capsys):
    """The full standard cascade through the official code (pyautoattack) on the 20 real CIFAR-10 images (~90 s)."""
    report = _attack_pretrained(tmp_path, "--attack", "autoattack", "--version", "standard", "--backend", "reference")
    assert report["clean_accuracy"] == 1.0
    assert report["robust_accuracy"] == 0.0
    assert report["max_perturbation"] <= 8 / 255 + 1e-6
    assert "robust after apgd-ce" in capsys.readouterr().out
