from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from vitlab.config import AugConfig, DataConfig
from vitlab.data import DataError, build_dataset, dataset_names, load_digits_split
from vitlab.data.digits import _digits_source, stratified_split


def _stack(ds) -> tuple[torch.Tensor, list[int]]:
    items = [ds[i] for i in range(len(ds))]
    return torch.stack([it["image"] for it in items]), [it["label"] for it in items]


def test_split_sizes_and_stratification() -> None:
    labels = load_digits().target
    train = build_dataset(DataConfig(name="digits"), "train", train=False)
    test = build_dataset(DataConfig(name="digits"), "test", train=False)
    assert len(train) + len(test) == 1797
    counts = Counter(labels.tolist())
    expected_test = sum(int(0.2 * n + 0.5) for n in counts.values())
    assert len(test) == expected_test
    test_counts = Counter(test.targets)
    for label, n in counts.items():
        assert abs(test_counts[label] - 0.2 * n) <= 0.5 + 1e-9  # every class holds its own 20%
    assert train.classes == [str(d) for d in range(10)] and train.num_classes == 10


def test_split_indices_are_disjoint_and_cover_everything() -> None:
    _, labels = _digits_source()
    train_idx, test_idx = stratified_split(labels, 0.2, 0)
    assert not set(train_idx) & set(test_idx)
    assert sorted(train_idx + test_idx) == list(range(1797))
    assert stratified_split(labels, 0.2, 0) == (train_idx, test_idx)
    assert stratified_split(labels, 0.2, 1) != (train_idx, test_idx)


def test_images_are_the_real_digits_at_native_size() -> None:
    bunch = load_digits()
    _, labels = _digits_source()
    train_idx, test_idx = stratified_split(labels, 0.2, 0)
    split = load_digits_split(8)
    assert torch.equal(split.test_images[:, 0], torch.from_numpy(bunch.images[test_idx] / 16.0).float())
    assert split.train_labels.tolist() == bunch.target[train_idx].tolist()


@pytest.mark.parametrize("img_size", [16, 32, 48])
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_range_and_channels(img_size: int, channels: int) -> None:
    ds = build_dataset(DataConfig(name="digits", img_size=img_size, channels=channels), "test", train=False)
    images, labels = _stack(ds)
    assert images.shape == (len(ds), channels, img_size, img_size) and images.dtype == torch.float32
    assert images.min() >= 0.0 and images.max() <= 1.0 and images.max() > 0.9
    assert labels == ds.targets
    assert len(ds.mean) == len(ds.std) == channels
    if channels == 3:
        grey = build_dataset(DataConfig(name="digits", img_size=img_size, channels=1), "test", train=False)
        assert torch.equal(images, _stack(grey)[0].expand(-1, 3, -1, -1))


def test_upsampling_is_bilinear_from_the_8x8_source() -> None:
    source = load_digits_split(8).test_images
    expected = torch.nn.functional.interpolate(source, size=(32, 32), mode="bilinear", align_corners=False)
    assert torch.allclose(load_digits_split(32).test_images, expected)


def test_mean_std_come_from_the_training_split() -> None:
    cfg = DataConfig(name="digits", channels=1)
    train_images, _ = _stack(build_dataset(cfg, "train", train=False))
    test = build_dataset(cfg, "test", train=False)
    assert test.mean[0] == pytest.approx(train_images.double().mean().item(), abs=1e-6)
    assert test.std[0] == pytest.approx(train_images.double().std(unbiased=False).item(), abs=1e-6)


def test_deterministic_across_builds() -> None:
    first = _stack(build_dataset(DataConfig(name="digits"), "train", train=False))
    load_digits_split.cache_clear()
    _digits_source.cache_clear()
    second = _stack(build_dataset(DataConfig(name="digits"), "train", train=False))
    assert torch.equal(first[0], second[0]) and first[1] == second[1]


def test_items_are_copies() -> None:
    ds = build_dataset(DataConfig(name="digits", channels=1), "test", train=False)
    ds[0]["image"].fill_(7.0)
    assert ds[0]["image"].max() <= 1.0


def test_train_per_class_keeps_n_per_class_deterministically() -> None:
    cfg = DataConfig(name="digits", train_per_class=5, channels=1)
    small = build_dataset(cfg, "train", train=False)
    assert Counter(small.targets) == {label: 5 for label in range(10)}
    again = build_dataset(cfg, "train", train=False)
    assert torch.equal(small.images, again.images)
    full = build_dataset(DataConfig(name="digits", channels=1), "train", train=False).images
    training_images = {image.numpy().tobytes() for image in full}
    assert all(image.numpy().tobytes() in training_images for image in small.images)
    full_test = build_dataset(DataConfig(name="digits"), "test", train=False)
    assert len(build_dataset(cfg, "test", train=False)) == len(full_test)  # the test split is never reduced


def test_no_augmentation_means_no_per_item_transform() -> None:
    ds = build_dataset(DataConfig(name="digits"), "train", train=True)
    assert ds.transform is None
    augmented = build_dataset(DataConfig(name="digits", aug=AugConfig(random_crop_padding=2)), "train", train=True)
    assert augmented.transform is not None
    evaluation = build_dataset(DataConfig(name="digits", aug=AugConfig(random_crop_padding=2)), "test", train=False)
    assert evaluation.transform is None


def test_unknown_name_and_split_are_errors() -> None:
    with pytest.raises(DataError, match="allowed: .*cifar10.*digits.*glyphs") as info:
        build_dataset(DataConfig(name="mnist"), "train", train=False)
    assert "'mnist'" in str(info.value)
    assert {"digits", "glyphs", "glyphs_fewshot", "image_folder", "cifar10", "cifar100"} <= set(dataset_names())
    with pytest.raises(DataError, match="unknown split 'val'"):
        build_dataset(DataConfig(name="digits"), "val", train=False)
    with pytest.raises(DataError, match="data.channels"):
        build_dataset(DataConfig(name="digits", channels=2), "train", train=False)


def test_source_arrays_are_read_only() -> None:
    images, labels = _digits_source()
    assert not images.flags.writeable and not labels.flags.writeable
    assert np.unique(labels).tolist() == list(range(10))
