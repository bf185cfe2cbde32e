from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitlab.config import AugConfig, DataConfig
from vitlab.data import DataError, build_dataset
from vitlab.data.image_folder import IMAGENET_MEAN, resize_and_centre_crop


def _write(path: Path, size: tuple[int, int], colour: tuple[int, int, int], mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).convert(mode).save(path)


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "shapes"
    for k in range(3):
        _write(root / "train" / "cat" / f"c{k}.png", (40, 30), (200, 10, 10))
        _write(root / "train" / "dog" / f"d{k}.jpg", (20, 50), (10, 200, 10))
    _write(root / "train" / "dog" / "nested" / "d9.png", (16, 16), (10, 200, 10), mode="L")
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    _write(root / "val" / "cat" / "v0.png", (64, 64), (200, 10, 10))
    _write(root / "val" / "dog" / "v1.bmp", (33, 21), (10, 200, 10))
    return root


def test_reads_classes_labels_and_images(folder: Path) -> None:
    cfg = DataConfig(name="image_folder", root=str(folder), img_size=24)
    train = build_dataset(cfg, "train", train=False)
    assert train.classes == ["cat", "dog"] and train.num_classes == 2
    assert train.targets == [0, 0, 0, 1, 1, 1, 1]  # notes.txt skipped, nested/ image found
    item = train[0]
    assert item["image"].shape == (3, 24, 24) and item["label"] == 0
    assert torch.allclose(item["image"][:, 12, 12], torch.tensor([200, 10, 10]) / 255.0, atol=1 / 255)
    grey = train[6]["image"]  # an L image converted to RGB: three equal channels
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    assert train.mean == IMAGENET_MEAN and len(train.std) == 3
    test = build_dataset(cfg, "test", train=False)  # no test/ folder: falls back to val/
    assert test.targets == [0, 1] and test.classes == train.classes


def test_one_channel_and_train_per_class(folder: Path) -> None:
    cfg = DataConfig(name="image_folder", root=str(folder), img_size=16, channels=1, train_per_class=2)
    train = build_dataset(cfg, "train", train=False)
    assert sorted(train.targets) == [0, 0, 1, 1]
    assert train[0]["image"].shape == (1, 16, 16) and len(train.mean) == 1
    expected_grey = np.asarray(Image.new("RGB", (1, 1), (200, 10, 10)).convert("L"))[0, 0] / 255.0
    assert train[0]["image"][0, 8, 8].item() == pytest.approx(expected_grey, abs=1e-6)


def test_training_transform_runs_on_pil(folder: Path) -> None:
    aug = AugConfig(rand_augment="rand-m9-mstd0.5-inc1", hflip=0.5, random_crop_padding=2, random_erasing=1.0)
    train = build_dataset(DataConfig(name="image_folder", root=str(folder), img_size=20, aug=aug), "train", True)
    for index in range(len(train)):
        image = train[index]["image"]
        assert image.shape == (3, 20, 20) and image.min() >= 0 and image.max() <= 1


def test_resize_and_centre_crop_keeps_the_aspect() -> None:
    image = Image.new("L", (100, 50), 0)
    image.paste(255, (45, 0, 55, 50))  # a centred vertical bar
    out = np.asarray(resize_and_centre_crop(image, 20))
    assert out.shape == (20, 20)
    assert out[:, 10].min() > 200 and out[:, 0].max() == 0  # the bar stays centred and thin: no squashing


def test_missing_root_and_folders_name_the_path(tmp_path: Path, folder: Path) -> None:
    with pytest.raises(DataError, match=r"missing_root.*expected layout: ROOT/train/<class>"):
        build_dataset(DataConfig(name="image_folder", root=str(tmp_path / "missing_root")), "train", False)
    with pytest.raises(DataError, match="data.root"):
        build_dataset(DataConfig(name="image_folder"), "train", False)
    (tmp_path / "only_val" / "val").mkdir(parents=True)
    with pytest.raises(DataError, match=r"only_val/train: folder not found"):
        build_dataset(DataConfig(name="image_folder", root=str(tmp_path / "only_val")), "test", False)
    (folder / "train" / "empty_class").mkdir()
    with pytest.raises(DataError, match=r"empty_class: no images"):
        build_dataset(DataConfig(name="image_folder", root=str(folder)), "train", False)


def test_unknown_class_in_val_is_an_error(folder: Path) -> None:
    _write(folder / "val" / "horse" / "h.png", (8, 8), (0, 0, 0))
    with pytest.raises(DataError, match=r"val/horse: class 'horse' is not among the training classes"):
        build_dataset(DataConfig(name="image_folder", root=str(folder)), "val", False)


def test_unreadable_image_names_the_file(folder: Path) -> None:
    bad = folder / "train" / "cat" / "c1.png"
    bad.write_bytes(b"\x89PNG but truncated")
    train = build_dataset(DataConfig(name="image_folder", root=str(folder)), "train", False)
    index = train.paths.index(bad)
    with pytest.raises(DataError, match=r"c1\.png: cannot read this image.*expected layout"):
        train[index]
    assert train[index + 1]["image"].shape == (3, 32, 32)  # the other files still read
