"""The transzero method on the contract (specs/transzero.md): training and `vitlab eval` on a fixture in the real
xlsa17 layout, the recipes, bad input as one `error:` line with exit code 2, the full-scale CUB recipe (slow)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.io import loadmat, savemat

from vitlab.cli import main
from vitlab.config import load_config
from vitlab.data.zsl import extract_region_features, write_xlsa17
from vitlab.methods.transzero import BalancedBatches, _load_zsl


class _Maps(torch.utils.data.Dataset):
    def __init__(self, n: int, channels: int, grid: int, labels: np.ndarray) -> None:
        g = torch.Generator().manual_seed(0)
        self.maps = torch.rand(n, channels, grid, grid, generator=g)
        self.maps[torch.arange(n), torch.as_tensor(labels) % channels] += 2.0  # a class signal in one channel

    def __len__(self) -> int:
        return len(self.maps)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.maps[i]}


def make_fixture(root: Path, classes: int = 6, attributes: int = 5, per_class: int = 6, channels: int = 16,
                 grid: int = 2, word_dim: int = 300) -> dict[str, str]:
    """xlsa17 files, an official-layout word-vector pickle and region-feature shards under ``root``."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(classes), per_class)
    idx = np.arange(len(labels))
    unseen = labels >= classes - max(2, classes // 4)
    if per_class > 1:
        test_seen = ~unseen & (idx % per_class == 0)
        trainval = ~unseen & ~test_seen
    else:  # one image per class (the CUB-size fixture): test_seen re-uses every 10th seen class's image
        test_seen, trainval = ~unseen & (labels % 10 == 0), ~unseen
    write_xlsa17(root / "xlsa17", rng.random((classes, attributes)), labels,
                 {"trainval": idx[trainval], "test_seen": idx[test_seen], "test_unseen": idx[unseen]})
    (root / "w2v.pkl").write_bytes(pickle.dumps(rng.standard_normal((attributes, word_dim)), protocol=3))
    extract_region_features(lambda x: x, _Maps(len(labels), channels, grid, labels), root / "features",
                            shard_size=16, progress=False)
    return {"data.root": str(root / "xlsa17"), "method.word_vectors": str(root / "w2v.pkl"),
            "method.features": str(root / "features")}


RECIPE = "recipes/transzero/cub_gzsl.yaml"
TINY = ["data.batch_size=8", "method.dim=8", "method.ffn_dim=16", "method.grid=[2,2]", "train.epochs=1",
        "train.max_steps=2", "train.progress=false", "method.dataset=CUB"]


def _sets(paths: dict[str, str], *extra: str) -> list[str]:
    out: list[str] = []
    for item in [f"{k}={v}" for k, v in paths.items()] + list(extra):
        out += ["--set", item]
    return out


def test_train_then_eval_prints_zsl_metrics(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _load_zsl.cache_clear()
    paths = make_fixture(tmp_path)
    assert main(["train", "-c", RECIPE, *_sets(paths, *TINY, f"out_dir={tmp_path}/runs", "name=tz")]) == 0
    train_out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(train_out) == {"acc", "U", "S", "H"}
    assert main(["eval", "-c", RECIPE, "--ckpt", str(tmp_path / "runs" / "tz" / "last.ckpt"),
                 *_sets(paths)]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics == pytest.approx(train_out, abs=1e-3)
    assert all(0 <= metrics[k] <= 100 for k in ("acc", "U", "S", "H"))


@pytest.mark.parametrize("breakage, needle", [
    ("split", "att_splits.mat: no 'test_unseen_loc' field"),
    ("classes", "att has 4 classes but the labels run from 1 to 6"),
    ("word_vectors", "w2v.pkl: word vectors of shape (4, 300), expected (5, D)"),
    ("grid", "method.grid: the region features"),
])
def test_bad_input_is_one_line_exit_2(breakage: str, needle: str, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    _load_zsl.cache_clear()
    paths = make_fixture(tmp_path)
    extra = list(TINY)
    att_path = tmp_path / "xlsa17" / "att_splits.mat"
    mat = {k: v for k, v in loadmat(str(att_path)).items() if not k.startswith("__")}
    if breakage == "split":
        del mat["test_unseen_loc"]
    elif breakage == "classes":
        mat["att"], mat["allclasses_names"] = mat["att"][:, :4], mat["allclasses_names"][:4]
    elif breakage == "word_vectors":
        (tmp_path / "w2v.pkl").write_bytes(pickle.dumps(np.zeros((4, 300)), protocol=3))
    else:
        extra[3] = "method.grid=[14,14]"
    savemat(str(att_path), mat)
    code = main(["train", "-c", RECIPE, *_sets(paths, *extra, f"out_dir={tmp_path}/runs")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and needle in err, err


def test_balanced_batches(tmp_path: Path) -> None:
    from vitlab.data.zsl import RegionFeatures, ZSLFeatureDataset, load_xlsa17

    paths = make_fixture(tmp_path)
    base = ZSLFeatureDataset(RegionFeatures(paths["method.features"]), load_xlsa17(paths["data.root"]), "trainval",
                             np.zeros((5, 300)))
    batch = BalancedBatches(base, 3)[0]  # 3 of the 4 seen classes, 1 image each
    assert batch["features"].shape == (3, 16, 2, 2) and len(set(batch["label"].tolist())) == 3
    batch = BalancedBatches(base, 8)[0]  # 4 classes x 2 images
    assert batch["label"].bincount(minlength=4)[:4].tolist() == [2, 2, 2, 2]


@pytest.mark.parametrize("recipe", sorted(p.name for p in Path("recipes/transzero").glob("*.yaml")))
def test_every_recipe_loads(recipe: str) -> None:
    cfg = load_config(f"recipes/transzero/{recipe}")
    assert cfg.method.name == "transzero" and cfg.optim.name == "adam"
    if recipe.startswith(("cub", "sun", "awa2")):
        assert cfg.method.grid == [14, 14] and cfg.method.extract.img_size == 448  # type: ignore[attr-defined]


@pytest.mark.slow  # a CUB-size step: 2048 x 14 x 14 regions, d 300, 312 attributes, 200 classes; 15-70 s a step
@pytest.mark.timeout(1800)  # the step and two evaluation passes on a loaded 2-core machine
def test_full_scale_cub_recipe_steps_on_an_xlsa17_fixture(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    _load_zsl.cache_clear()
    paths = make_fixture(tmp_path, classes=200, attributes=312, per_class=1, channels=2048, grid=14)
    code = main(["train", "-c", RECIPE, *_sets(paths, f"out_dir={tmp_path}/runs", "train.max_steps=1",
                                              "train.progress=false", "data.batch_size=50")])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(metrics) == {"acc", "U", "S", "H"}
