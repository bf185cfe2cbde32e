from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitlab.config import AugConfig, DataConfig
from vitlab.data import DataError, build_dataset
from vitlab.data.cifar import CIFAR_STATS, rgb_to_grey

PER_BATCH = 3


def _pickle(path: Path, obj: object, protocol: int = 2) -> None:
    with path.open("wb") as handle:
        pickle.dump(obj, handle, protocol=protocol)


def _rows(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)


@pytest.fixture()
def cifar10_root(tmp_path: Path) -> Path:
    """A tiny copy of the official layout: bytes keys, as the archive's Python 2 pickles read under Python 3."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    names = [n.encode() for n in ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                                  "truck")]
    _pickle(folder / "batches.meta", {b"label_names": names, b"num_vis": 3072})
    for i in range(1, 6):
        _pickle(folder / f"data_batch_{i}", {b"data": _rows(i, PER_BATCH), b"labels": [i, (i + 3) % 10, 0],
                                              b"batch_label": f"training batch {i} of 5".encode()})
    _pickle(folder / "test_batch", {b"data": _rows(9, 4), b"labels": [9, 8, 7, 6]})
    return tmp_path


@pytest.fixture()
def cifar100_root(tmp_path: Path) -> Path:
    """Re-written by Python 3 (str keys, protocol 5), as users sometimes store it."""
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    _pickle(folder / "meta", {"fine_label_names": [f"class{k}" for k in range(100)],
                              "coarse_label_names": [f"super{k}" for k in range(20)]}, protocol=5)
    _pickle(folder / "train", {"data": _rows(1, 5), "fine_labels": [0, 99, 5, 5, 42], "coarse_labels": [0] * 5},
            protocol=5)
    _pickle(folder / "test", {"data": _rows(2, 2), "fine_labels": [1, 2], "coarse_labels": [0, 0]}, protocol=5)
    return tmp_path


def test_cifar10_values_labels_and_classes(cifar10_root: Path) -> None:
    train = build_dataset(DataConfig(name="cifar10", root=str(cifar10_root)), "train", train=False)
    assert len(train) == 5 * PER_BATCH and train.num_classes == 10 and train.classes[1] == "automobile"
    assert train.targets[:3] == [1, 4, 0] and train.targets[-3:] == [5, 8, 0]
    row = _rows(2, PER_BATCH)[1]  # second image of data_batch_2: R plane, G plane, B plane
    expected = torch.from_numpy(row.reshape(3, 32, 32).astype(np.float32) / 255.0)
    assert torch.equal(train[PER_BATCH + 1]["image"], expected)
    assert (train.mean, train.std) == CIFAR_STATS["cifar10"]
    test = build_dataset(DataConfig(name="cifar10", root=str(cifar10_root / "cifar-10-batches-py")), "test", False)
    assert test.targets == [9, 8, 7, 6]  # root may point at the batches folder itself


def test_cifar100_fine_labels(cifar100_root: Path) -> None:
    train = build_dataset(DataConfig(name="cifar100", root=str(cifar100_root)), "train", train=False)
    assert train.num_classes == 100 and train.targets == [0, 99, 5, 5, 42] and train.classes[99] == "class99"
    assert len(build_dataset(DataConfig(name="cifar100", root=str(cifar100_root)), "test", False)) == 2
    small = build_dataset(DataConfig(name="cifar100", root=str(cifar100_root), train_per_class=1), "train", False)
    assert sorted(small.targets) == [0, 5, 42, 99]


def test_grey_resize_and_augmentation(cifar10_root: Path) -> None:
    cfg = DataConfig(name="cifar10", root=str(cifar10_root), channels=1, img_size=40,
                     aug=AugConfig(random_crop_padding=4, hflip=0.5, random_erasing=0.5))
    train = build_dataset(cfg, "train", train=True)
    image = train[0]["image"]
    assert image.shape == (1, 40, 40) and image.min() >= 0 and image.max() <= 1
    assert len(train.mean) == 1 and 0 < train.std[0] < 1
    rgb = _rows(1, 1)[0].reshape(3, 32, 32).transpose(1, 2, 0)
    pil_grey = np.asarray(Image.fromarray(np.ascontiguousarray(rgb), mode="RGB").convert("L"))
    assert np.array_equal(rgb_to_grey(rgb.transpose(2, 0, 1)[None])[0, 0], pil_grey)


def test_missing_file_names_it(cifar10_root: Path) -> None:
    os.remove(cifar10_root / "cifar-10-batches-py" / "data_batch_3")
    with pytest.raises(DataError, match=r"data_batch_3: file not found; expected layout: ROOT/cifar-10-batches-py/"):
        build_dataset(DataConfig(name="cifar10", root=str(cifar10_root)), "train", False)
    assert len(build_dataset(DataConfig(name="cifar10", root=str(cifar10_root)), "test", False)) == 4
    with pytest.raises(DataError, match=r"nowhere: folder not found"):
        build_dataset(DataConfig(name="cifar10", root=str(cifar10_root / "nowhere")), "train", False)
    with pytest.raises(DataError, match=r"cifar-100-python/meta: file not found"):
        build_dataset(DataConfig(name="cifar100", root=str(cifar10_root)), "train", False)
    with pytest.raises(DataError, match="data.root"):
        build_dataset(DataConfig(name="cifar10"), "train", False)


def test_corrupt_pickle_names_it(cifar10_root: Path) -> None:
    (cifar10_root / "cifar-10-batches-py" / "test_batch").write_bytes(b"\x80\x02}q\x00(X\x04garbage")
    with pytest.raises(DataError, match=r"test_batch: not a readable CIFAR pickle"):
        build_dataset(DataConfig(name="cifar10", root=str(cifar10_root)), "test", False)


def test_wrong_content_names_the_file(cifar10_root: Path) -> None:
    _pickle(cifar10_root / "cifar-10-batches-py" / "test_batch", {b"data": np.zeros((2, 100), np.uint8),
                                                                  b"labels": [0, 1]})
    with pytest.raises(DataError, match=r"test_batch: 'data' is uint8 \(2, 100\)"):
        build_dataset(DataConfig(name="cifar10", root=str(cifar10_root)), "test", False)


def test_pickle_that_would_run_code_is_refused(cifar10_root: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    class WritesMarker:
        def __reduce__(self) -> tuple[object, tuple[str, str]]:
            return (Path.write_text, (marker, "x"))  # type: ignore[return-value]

    _pickle(cifar10_root / "cifar-10-batches-py" / "test_batch", {b"data": WritesMarker(), b"labels": [0]})
    with pytest.raises(DataError, match=r"test_batch: not a readable CIFAR pickle .*unexpected object"):
        build_dataset(DataConfig(name="cifar10", root=str(cifar10_root)), "test", False)
    assert not marker.exists()
