"""Outside models and data through every command: ``--model file.py:factory``, ``--weights``, ``--data-root``,
``vitlab data`` (issue 20). Tiny models defined in a file written to tmp_path, in-process ``main([...])`` calls."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from vitlab.cli import main
from vitlab.config import ConfigError
from vitlab.models.external import input_convention, parse_model_args

TINY = '''
import torch
from torch import nn


class Tiny(nn.Module):
    """conv-BN-ReLU then global pooling and a linear head; timm's feature API, inputs in [0, 1]."""

    def __init__(self, num_classes=10, width=4, in_chans=1):
        super().__init__()
        self.layers = nn.Sequential(nn.Conv2d(in_chans, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.linear = nn.Linear(width, num_classes)
        self.num_features = width

    def forward_features(self, x):
        return self.layers(x)

    def forward_head(self, x, pre_logits=False):
        x = x.mean((2, 3))
        return x if pre_logits else self.linear(x)

    def get_classifier(self):
        return self.linear

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def tiny(num_classes=10, width=4):
    return Tiny(num_classes, width)


def grey28(width=4):
    model = Tiny(10, width)
    model.input_size = (1, 28, 28)
    return model


def not_a_module():
    return 3
'''


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The model file, a state dict of ``grey28`` (.pt and .safetensors), and a state dict that does not fit."""
    folder = tmp_path_factory.mktemp("outside")
    (folder / "tiny_net.py").write_text(TINY)
    import importlib.util

    spec = importlib.util.spec_from_file_location("tiny_net_for_weights", folder / "tiny_net.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    state = module.grey28().state_dict()
    torch.save(state, folder / "tiny.pt")
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "tiny.safetensors"))
    torch.save(module.Tiny(10, 8).state_dict(), folder / "wide.pt")
    return {"file": str(folder / "tiny_net.py"), "pt": str(folder / "tiny.pt"),
            "safetensors": str(folder / "tiny.safetensors"), "wide": str(folder / "wide.pt"), "dir": str(folder)}


def _attack(outside: dict[str, str], tmp_path: Path, *extra: str) -> dict:
    out = tmp_path / "report.json"
    rc = main(["attack", "--model", f"{outside['file']}:grey28", "--attack", "pgd", "--steps", "2", "--eps", "0.1",
               "--out", str(out), *extra])
    assert rc == 0
    return json.loads(out.read_text())


@pytest.mark.parametrize("weights", ["pt", "safetensors"])
def test_attack_a_file_model_on_foolbox_mnist(outside: dict[str, str], tmp_path: Path, weights: str) -> None:
    report = _attack(outside, tmp_path, "--weights", outside[weights], "--data", "foolbox-mnist", "--n", "6")
    assert report["n"] == 6
    assert report["source"] == f"{outside['file']}:grey28 + {outside[weights]}"
    assert 0.0 < report["max_perturbation"] <= 0.1 + 1e-6


def test_attack_a_file_model_on_a_test_only_image_folder(outside: dict[str, str], tmp_path: Path) -> None:
    """ROOT/<class>/*.png alone is a test set; the sorted class folders give the labels (an empty one is allowed)."""
    from PIL import Image

    root = tmp_path / "images"
    for label in range(3):
        (root / str(label)).mkdir(parents=True)
        if label != 1:
            Image.new("L", (40, 30), 80 * label).save(root / str(label) / f"im{label}.png")
    report = _attack(outside, tmp_path, "--weights", outside["pt"], "--data", "image_folder", "--data-root", str(root))
    assert report["n"] == 2


def test_a_state_dict_that_does_not_fit_names_the_first_keys_and_shapes(outside: dict[str, str], tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["attack", "--model", f"{outside['file']}:grey28", "--weights", outside["wide"], "--data",
               "foolbox-mnist", "--attack", "pgd", "--out", str(tmp_path / "r.json")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"error: --weights {outside['wide']}: does not fit Tiny: mis-shaped keys (")
    assert "layers.0.weight: checkpoint (8, 1, 3, 3) vs model (4, 1, 3, 3)" in err
    assert err.count("; ") == 3 and err.endswith("; ...")  # the first three named, the rest counted (7)


@pytest.mark.parametrize("argv,needle", [
    (["--model", "{file}:nowhere"], "has no callable 'nowhere' (found: Tiny, grey28, not_a_module, tiny)"),
    (["--model", "{file}:not_a_module"], "returned a int, expected a torch.nn.Module"),
    (["--model", "{dir}/missing.py:f"], "missing.py not found"),
    (["--model", "{file}:tiny", "--model-args", "depth=3"], "does not take these arguments"),
    (["--model", "no_such_model_xyz"], "unknown model 'no_such_model_xyz'"),
    (["--model", "{file}:grey28", "--weights", "{dir}/nothing.pt"], "nothing.pt not found"),
    (["--ckpt", "x.ckpt", "--model", "{file}:tiny"], "give either --ckpt"),
])
def test_bad_model_flags_are_one_line_exit_2(outside: dict[str, str], argv: list[str], needle: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    argv = [a.format(**outside) for a in argv]
    rc = main(["attack", *argv, "--data", "foolbox-mnist", "--attack", "pgd"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and needle in err


def test_model_args_and_eval_of_a_file_model(outside: dict[str, str], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """--model-args reach the factory (width 8 takes wide.pt); eval --model prints the metrics of --data."""
    rc = main(["eval", "--model", f"{outside['file']}:tiny", "--model-args", "width=8", "--weights", outside["wide"],
               "--input-size", "1,28,28", "--data", "foolbox-mnist", "--out", str(tmp_path / "m.json")])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["images"] == 20 and 0.0 <= printed["top1"] <= 100.0
    assert json.loads((tmp_path / "m.json").read_text()) == printed


def test_parse_model_args_and_the_input_convention() -> None:
    assert parse_model_args(["num_classes=10", "name=net", "drop=0.5", "dims=[1, 2]"]) == {
        "num_classes": 10, "name": "net", "drop": 0.5, "dims": [1, 2]}
    assert parse_model_args(['{"width": 8}']) == {"width": 8}
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_model_args(["width"])
    # a model that wants [-1, 1]: x01 -> 2 x01 - 1, i.e. mean 0.5, std 0.5 on [0, 1] inputs
    assert input_convention(input_range="-1,1").mean == (0.5,)
    conv = input_convention(input_range="0,255", mean=[127.5], std=[63.75], input_size="3,32,32")
    assert conv.mean == pytest.approx((0.5,)) and conv.std == pytest.approx((0.25,)) and conv.input_size == (3, 32, 32)
    model = torch.nn.Linear(2, 2)
    model.pretrained_cfg = {"mean": (0.1, 0.2, 0.3), "std": (0.5, 0.5, 0.5), "input_size": (3, 16, 16)}
    conv = input_convention(model)
    assert conv.mean == (0.1, 0.2, 0.3) and conv.input_size == (3, 16, 16)
    with pytest.raises(ConfigError, match="go together"):
        input_convention(mean=[0.5])


def test_export_int8_of_a_file_model_calibrated_on_data(outside: dict[str, str], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["export", "--model", f"{outside['file']}:grey28", "--weights", outside["pt"], "--format", "int8",
               "--data", "foolbox-mnist", "--out", str(tmp_path / "int8")])
    assert rc == 0
    assert "calibrated on foolbox-mnist test images" in capsys.readouterr().out
    rc = main(["eval", "--ckpt", str(tmp_path / "int8" / "model_int8.ckpt"), "--data", "foolbox-mnist"])
    assert rc == 0
    assert 0.0 <= json.loads(capsys.readouterr().out.strip().splitlines()[-1])["top1"] <= 100.0


def test_a_file_model_is_a_recipe_backbone(outside: dict[str, str]) -> None:
    """model.name = file.py:factory with model.kwargs; the data's classes and channels reach a factory that takes
    them (what every method builds through)."""
    from vitlab.config import load_config
    from vitlab.models.classifier import create_backbone

    cfg = load_config(None, [f"model.name={outside['file']}:Tiny", "model.kwargs.width=6"])
    backbone = create_backbone(cfg.model, num_classes=5, in_chans=3, img_size=16)
    assert type(backbone).__name__ == "Tiny"
    assert backbone.linear.out_features == 5 and backbone.layers[0].in_channels == 3 and backbone.num_features == 6


def test_export_a_file_model_and_use_the_checkpoint_as_weights(outside: dict[str, str], tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """export --model writes model.ckpt (a vitlab checkpoint) and the safetensors export; both load as --weights."""
    rc = main(["export", "--model", f"{outside['file']}:grey28", "--weights", outside["pt"], "--out",
               str(tmp_path / "exp")])
    assert rc == 0 and (tmp_path / "exp" / "model.ckpt").is_file()
    config = json.loads((tmp_path / "exp" / "config.json").read_text())
    assert config["architecture"] == f"{Path(outside['file']).resolve()}:grey28"
    capsys.readouterr()
    for weights in ("model.ckpt", "model.safetensors"):
        report = _attack(outside, tmp_path, "--weights", str(tmp_path / "exp" / weights), "--data", "foolbox-mnist",
                         "--n", "4")
        assert report["n"] == 4


@pytest.mark.slow
def test_train_a_file_model_as_a_backbone_and_reuse_its_checkpoint(outside: dict[str, str], tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """model.name = file.py:factory trains (num_classes from the data); the checkpoint is --weights elsewhere
    (about 15 s: a training step and an evaluation on digits)."""
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "supervised" / "resnet18_digits.yaml"
    sets = [f"out_dir={tmp_path}", "name=tiny", f"model.name={outside['file']}:tiny", "model.kwargs.width=4",
            "data.channels=1", "data.img_size=16", "train.max_steps=1", "train.epochs=1", "train.progress=false"]
    assert main(["train", "-c", str(recipe), *[a for s in sets for a in ("--set", s)]]) == 0
    ckpt = tmp_path / "tiny" / "last.ckpt"
    rc = main(["analyze", "frequency", "--model", f"{outside['file']}:tiny", "--weights", str(ckpt), "--input-size",
               "1,16,16", "--data", "digits", "--n", "16", "--radii", "2,4", "--delta-eps", "0",
               "--out", str(tmp_path / "freq")])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(summary["lowpass"]) == {"2.0", "4.0"}  # JSON keys
    assert (tmp_path / "freq" / "filtered_accuracy.csv").is_file()


def test_lens_of_a_file_model(outside: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "photo.png")
    rc = main(["lens", "--model", f"{outside['file']}:grey28", "--weights", outside["pt"], "--image",
               str(tmp_path / "photo.png"), "--out", str(tmp_path / "cam.png")])
    assert rc == 0
    assert re.search(r"wrote .*cam.png \(40x30; cam map of class \d+ on a 28x28 grid", capsys.readouterr().out)


def test_data_lists_every_bundled_set_and_help_names_them(capsys: pytest.CaptureFixture[str]) -> None:
    from vitlab.data.catalog import BUNDLED, USER_FORMATS

    assert main(["data"]) == 0
    out = capsys.readouterr().out
    for entry in BUNDLED + USER_FORMATS:
        assert re.search(rf"^{re.escape(entry.name)} ", out, re.MULTILINE)
    assert re.search(r"^foolbox-mnist\s+test 20\s+10\s+1x28x28", out, re.MULTILINE)
    for command in (["attack"], ["eval"], ["analyze", "frequency"]):
        with pytest.raises(SystemExit):
            main([*command, "--help"])
        text = re.sub(r"-\s+", "-", " ".join(capsys.readouterr().out.split()))  # argparse wraps after a hyphen
        for name in ("foolbox-cifar10", "foolbox-cifar100", "foolbox-mnist", "foolbox-fashionmnist", "digits",
                     "glyphs", "image_folder"):
            assert name in text, (command, name)
        assert "--data-root" in text and "--model-args" in text


def test_the_catalog_counts_are_the_builders(tmp_path: Path) -> None:
    """The recorded sizes of ``vitlab data`` for the sets that build in a blink (digits, foolbox, synth_sentiment's
    table; digits_zsl's are the seen / unseen digits of the digits split)."""
    from vitlab.config import DataConfig
    from vitlab.data import build_dataset
    from vitlab.data.catalog import BUNDLED
    from vitlab.data.text import SYNTH_SIZES

    sizes = {e.name: e.splits for e in BUNDLED}
    assert sizes["synth_sentiment"] == SYNTH_SIZES
    for entry in BUNDLED:
        if entry.name in ("digits", "digits_fewshot") or entry.name.startswith("foolbox-"):
            for split, size in (entry.splits or {}).items():
                dataset = build_dataset(DataConfig(name=entry.name, img_size=8), split, train=False)
                assert len(dataset) == size, (entry.name, split)
    from vitlab.data.digits import load_digits_split
    from vitlab.data.digits_zsl import SEEN_DIGITS, UNSEEN_DIGITS

    digits = load_digits_split(8)
    seen, unseen = torch.tensor(SEEN_DIGITS), torch.tensor(UNSEEN_DIGITS)
    assert sizes["digits_zsl"] == {"trainval": int(torch.isin(digits.train_labels, seen).sum()),
                                   "test_seen": int(torch.isin(digits.test_labels, seen).sum()),
                                   "test_unseen": int(torch.isin(digits.test_labels, unseen).sum())}


def test_data_root_reads_cifar_pickles_for_a_timm_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--data cifar10 --data-root DIR with a registered name (num_classes from the data, random weights)."""
    import pickle

    import numpy as np

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    names = [n.encode() for n in ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                                  "truck")]
    rows = np.random.default_rng(0).integers(0, 256, (4, 3072), dtype=np.uint8)
    files = [("batches.meta", {b"label_names": names}), ("test_batch", {b"data": rows, b"labels": [1, 2, 3, 4]})]
    files += [(f"data_batch_{i}", {b"data": rows, b"labels": [0, 1, 2, 3]}) for i in range(1, 6)]
    for name, obj in files:
        with (folder / name).open("wb") as handle:
            pickle.dump(obj, handle, protocol=2)
    rc = main(["eval", "--model", "test_cifar_resnet", "--data", "cifar10", "--data-root", str(tmp_path)])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["images"] == 4 and printed["model"] == "test_cifar_resnet"


@pytest.mark.slow
def test_quantize_a_file_model(outside: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """vitlab quantize --model: the file's BN network becomes the teacher checkpoint of a (tiny) GDFQ run (about
    10 s: the digits test split is evaluated twice)."""
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "quant" / "gdfq_resnet20_digits.yaml"
    sets = [f"out_dir={tmp_path}", "train.epochs=2", "method.iters_per_epoch=1", "method.warmup_epochs=1",
            "data.batch_size=8"]
    rc = main(["quantize", "-c", str(recipe), "--model", f"{outside['file']}:grey28", "--weights", outside["pt"],
               "--input-size", "1,16,16", "--wbits", "8", "--abits", "8", *[a for s in sets for a in ("--set", s)]])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["method"] == "gdfq" and summary["quantized_bytes"] < summary["fp32_bytes"]
    assert (tmp_path / "tiny_net_teacher" / "teacher.ckpt").is_file()


def test_analyze_a_plain_module_without_feature_maps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """examples/lenet5.py (no timm feature API): filtered accuracy, the input's spectrum only, and a warning."""
    lenet = Path(__file__).resolve().parents[2] / "examples" / "lenet5.py"
    rc = main(["analyze", "frequency", "--model", f"{lenet}:LeNet5", "--data", "foolbox-mnist", "--radii", "2,4",
               "--delta-eps", "0", "--out", str(tmp_path)])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["layers"] == [] and "exposes no feature maps" in summary["warnings"][0]
    assert (tmp_path / "filtered_accuracy.csv").read_text().count("\n") == 1 + 1 + 2 * 2
    assert {row.split(",")[0] for row in (tmp_path / "spectrum.csv").read_text().splitlines()[1:]} == {"input"}
