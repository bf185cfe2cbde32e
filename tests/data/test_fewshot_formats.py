"""Readers of the few-shot benchmark layouts, each on a tiny fixture written in that exact layout."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitlab.config import DataConfig
from vitlab.data.build import build_dataset
from vitlab.data.dataset import DataError

WNIDS = ["n01532829", "n01558993", "n01704323"]


def _pickle(path: Path, obj: object, protocol: int = 2) -> None:
    with path.open("wb") as handle:
        pickle.dump(obj, handle, protocol=protocol)


def _colour(k: int, i: int) -> tuple[int, int, int]:
    return (40 * k + 10, 5 * i, 200 - 30 * k)


@pytest.fixture()
def csv_root(tmp_path: Path) -> Path:
    """Ravi & Larochelle's miniImageNet layout: images/ + {train,val,test}.csv, 'filename,label'."""
    (tmp_path / "images").mkdir()
    for stem, wnids in (("train", WNIDS[:2]), ("val", WNIDS[2:]), ("test", WNIDS[2:])):
        lines = ["filename,label"]
        for k, wnid in enumerate(wnids):
            for i in range(3):
                name = f"{wnid}{i + 1:08d}.jpg"
                Image.new("RGB", (84, 84), _colour(k, i)).save(tmp_path / "images" / name, quality=100)
                lines.append(f"{name},{wnid}")
        (tmp_path / f"{stem}.csv").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_csv_layout_mini_and_tiered(csv_root: Path) -> None:
    for name in ("mini_imagenet", "tiered_imagenet"):
        cfg = DataConfig(name=name, root=str(csv_root), img_size=16)
        base = build_dataset(cfg, "base", train=False)
        assert base.classes == WNIDS[:2] and len(base) == 6 and base.targets == [0, 0, 0, 1, 1, 1]
        item = base[4]
        assert item["image"].shape == (3, 16, 16) and item["label"] == 1
        assert torch.allclose(item["image"][:, 8, 8] * 255, torch.tensor(_colour(1, 1), dtype=torch.float), atol=3)
        assert build_dataset(cfg, "novel", False).classes == WNIDS[2:]
        assert build_dataset(cfg, "test", False).classes == WNIDS[2:]


def test_csv_missing_image_and_missing_file_are_one_line_errors(csv_root: Path) -> None:
    cfg = DataConfig(name="mini_imagenet", root=str(csv_root), img_size=16)
    (csv_root / "images" / f"{WNIDS[2]}00000002.jpg").unlink()
    with pytest.raises(DataError, match=f"{WNIDS[2]}00000002.jpg: image not found \\(listed on line 3 of .*val.csv\\)"):
        build_dataset(cfg, "val", False)
    (csv_root / "train.csv").unlink()
    with pytest.raises(DataError, match="train.csv: file not found") as err:
        build_dataset(cfg, "base", False)
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="unknown split 'support'"):
        build_dataset(cfg, "support", False)


def test_mini_imagenet_pickle_cache(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 84, 84, 3), dtype=np.uint8)
    # the cache's class_dict lists rows per class; rows need not be grouped
    _pickle(tmp_path / "mini-imagenet-cache-train.pkl",
            {"image_data": images, "class_dict": {WNIDS[1]: [0, 2, 4], WNIDS[0]: [1, 3]}}, protocol=4)
    cfg = DataConfig(name="mini_imagenet", root=str(tmp_path), img_size=84)
    base = build_dataset(cfg, "train", False)
    assert base.classes == WNIDS[:2] and base.targets == [1, 0, 1, 0, 1]
    assert torch.equal(base[2]["image"], torch.from_numpy(images[2]).permute(2, 0, 1).float() / 255)
    with pytest.raises(DataError, match="mini-imagenet-cache-val.pkl: file not found"):
        build_dataset(cfg, "val", False)
    _pickle(tmp_path / "mini-imagenet-cache-test.pkl", {"image_data": images})
    with pytest.raises(DataError, match="mini-imagenet-cache-test.pkl: expected a dict with 'image_data' and"):
        build_dataset(cfg, "novel", False)


def test_tiered_imagenet_npz(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (4, 84, 84, 3), dtype=np.uint8)
    np.savez(tmp_path / "val_images.npz", images=images)
    _pickle(tmp_path / "val_labels.pkl", {"label_specific": np.array([3, 5, 3, 5]), "label_general": np.zeros(4),
                                          "label_specific_str": [f"wnid{k}" for k in range(8)]})
    cfg = DataConfig(name="tiered_imagenet", root=str(tmp_path), img_size=84)
    val = build_dataset(cfg, "val", False)
    assert val.classes == ["wnid3", "wnid5"] and val.targets == [0, 1, 0, 1]
    assert torch.equal(val[1]["image"], torch.from_numpy(images[1]).permute(2, 0, 1).float() / 255)
    with pytest.raises(DataError, match="train_images.npz: file not found"):
        build_dataset(cfg, "base", False)
    np.savez(tmp_path / "test_images.npz", images=images)
    with pytest.raises(DataError, match="test_labels.pkl: file not found"):
        build_dataset(cfg, "novel", False)


def test_cifar_fs_from_cifar100_pickles(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    names = [f"class{k}" for k in range(100)]
    rows = np.random.default_rng(2).integers(0, 256, (6, 3072), dtype=np.uint8)
    _pickle(folder / "meta", {b"fine_label_names": [n.encode() for n in names]})
    _pickle(folder / "train", {b"data": rows[:4], b"fine_labels": [7, 3, 7, 50]})
    _pickle(folder / "test", {b"data": rows[4:], b"fine_labels": [3, 99]})
    splits = tmp_path / "splits" / "bertinetto"
    splits.mkdir(parents=True)
    (splits / "train.txt").write_text("class7\nclass3\n")
    (splits / "test.txt").write_text("class99\nclass42\n")
    cfg = DataConfig(name="cifar_fs", root=str(tmp_path), img_size=32)
    base = build_dataset(cfg, "base", False)
    assert base.classes == ["class3", "class7"] and base.targets == [1, 0, 1, 0]  # train rows 0, 1, 2 then test row 4
    assert torch.equal(base[3]["image"], torch.from_numpy(rows[4]).view(3, 32, 32).float() / 255)
    novel = build_dataset(cfg, "novel", False)
    assert novel.classes == ["class42", "class99"] and novel.targets == [1]
    with pytest.raises(DataError, match="val.txt: file not found"):
        build_dataset(cfg, "val", False)
    (splits / "test.txt").write_text("class99\nplatypus\n")
    with pytest.raises(DataError, match="test.txt: class 'platypus' is not a CIFAR-100 fine label"):
        build_dataset(cfg, "novel", False)


def test_missing_root_names_the_key() -> None:
    with pytest.raises(DataError, match="data.root: cifar_fs needs"):
        build_dataset(DataConfig(name="cifar_fs"), "base", False)
