"""The foolbox-wheel images: one loader for `vitlab attack --data foolbox-*`, foolbox_cifar10 and the benchmarks."""

from __future__ import annotations

import pytest
import torch

from vitlab.data import DataError
from vitlab.data.foolbox import foolbox_images

pytest.importorskip("foolbox")


@pytest.mark.parametrize("kind, shape, first_labels", [
    ("cifar10", (20, 3, 32, 32), [3, 8, 8, 0, 6]),  # cifar10_00_3.png, cifar10_01_8.png, ...
    ("mnist", (20, 1, 28, 28), [7, 2, 1, 0, 4]),
])
def test_images_and_labels_in_file_order(kind, shape, first_labels):
    images, labels = foolbox_images(kind)
    assert images.shape == shape and images.dtype == torch.uint8
    assert labels.dtype == torch.int64 and labels[:5].tolist() == first_labels
    assert int(images.max()) > 200 and int(images.min()) < 50  # real images, not blanks


def test_cifar10_is_the_foolbox_cifar10_test_split():
    from vitlab.config import DataConfig
    from vitlab.data import build_dataset
    from vitlab.evaluation.robust import collect
    from vitlab.quant import data  # noqa: F401  (registers foolbox_cifar10)

    x, y = collect(build_dataset(DataConfig(name="foolbox_cifar10", img_size=32), "test", train=False))
    images, labels = foolbox_images("cifar10")
    assert torch.equal(y, labels) and torch.equal(x, images.float() / 255.0)


def test_unknown_set_is_a_one_line_data_error():
    with pytest.raises(DataError, match="unknown set 'imagenet', expected one of cifar10, cifar100, mnist"):
        foolbox_images("imagenet")
