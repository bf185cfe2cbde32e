"""Zero-shot data (specs/transzero.md §2.2, §6): xlsa17 readers on fixtures in the real layout, word vectors,
region-feature shards, digits_zsl attributes."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.io import loadmat, savemat

from vitlab.data.dataset import DataError
from vitlab.data.digits_zsl import ATTRIBUTE_NAMES, SEEN_DIGITS, UNSEEN_DIGITS, digits_zsl_splits, image_attributes
from vitlab.data.zsl import (
    RegionFeatures,
    clean_attribute_name,
    extract_region_features,
    load_word_vectors,
    load_xlsa17,
    read_attribute_names,
    strip_prefix,
    write_xlsa17,
)


def _fixture(root: Path, classes: int = 6, attributes: int = 4, per_class: int = 5, negative: bool = False) -> None:
    rng = np.random.default_rng(0)
    att = rng.random((classes, attributes)) - (0.3 if negative else 0.0)
    labels = np.repeat(np.arange(classes), per_class)
    unseen = labels >= classes - 2
    idx = np.arange(len(labels))
    seen_test = (~unseen) & (idx % per_class == 0)
    splits = {"trainval": idx[~unseen & ~seen_test], "test_seen": idx[seen_test], "test_unseen": idx[unseen],
              "train": idx[~unseen & ~seen_test][:3], "val": idx[~unseen & ~seen_test][3:6]}
    files = [f"/BS/xian/work/data/CUB/images/{c:03d}/{i}.jpg" for i, c in enumerate(labels)]
    write_xlsa17(root, att, labels, splits, files)


def test_xlsa17_layout_and_reader(tmp_path: Path) -> None:
    _fixture(tmp_path)
    res, att = loadmat(str(tmp_path / "res101.mat")), loadmat(str(tmp_path / "att_splits.mat"))
    assert res["features"].shape == (2048, 30) and res["labels"].shape == (30, 1) and res["labels"].min() == 1
    assert res["image_files"].shape == (30, 1) and att["att"].shape == (4, 6)
    assert att["trainval_loc"].shape[1] == 1 and att["allclasses_names"].shape == (6, 1)
    splits = load_xlsa17(tmp_path, "CUB")
    assert splits.class_attributes.shape == (6, 4)
    assert np.allclose(np.linalg.norm(splits.class_attributes, axis=1), 1)
    assert splits.labels.min() == 0 and splits.labels.max() == 5
    assert splits.seen.tolist() == [0, 1, 2, 3] and splits.unseen.tolist() == [4, 5]
    assert len(splits.trainval) + len(splits.test_seen) + len(splits.test_unseen) == 30
    assert splits.trainval.min() >= 0 and splits.test_unseen.max() == 29
    assert splits.image_files[0] == "images/000/0.jpg"  # CUB drops 6 components: "", BS, xian, work, data, CUB
    assert splits.classes[0] == "class_000"


def test_awa2_negatives_clipped(tmp_path: Path) -> None:
    _fixture(tmp_path, negative=True)
    assert load_xlsa17(tmp_path, "CUB").class_attributes.min() < 0
    assert load_xlsa17(tmp_path, "AWA2").class_attributes.min() == 0


def test_strip_prefix() -> None:
    assert strip_prefix("/a/b/c/d/x.jpg", 3) == "c/d/x.jpg"


def test_bad_xlsa17_files(tmp_path: Path) -> None:
    _fixture(tmp_path)
    att = loadmat(str(tmp_path / "att_splits.mat"))
    del att["test_unseen_loc"]
    savemat(str(tmp_path / "att_splits.mat"), {k: v for k, v in att.items() if not k.startswith("__")})
    with pytest.raises(DataError, match=r"att_splits\.mat: no 'test_unseen_loc' field"):
        load_xlsa17(tmp_path)
    _fixture(tmp_path)
    att = loadmat(str(tmp_path / "att_splits.mat"))
    att["att"], att["allclasses_names"] = att["att"][:, :4], att["allclasses_names"][:4]  # 4 classes, labels to 6
    savemat(str(tmp_path / "att_splits.mat"), {k: v for k, v in att.items() if not k.startswith("__")})
    with pytest.raises(DataError, match="att has 4 classes"):
        load_xlsa17(tmp_path)
    with pytest.raises(DataError, match="res101.mat: not found"):
        load_xlsa17(tmp_path / "missing")


def test_word_vectors_official_layout(tmp_path: Path) -> None:
    vectors = np.random.default_rng(0).standard_normal((4, 300))
    path = tmp_path / "CUB_attribute.pkl"
    path.write_bytes(pickle.dumps(vectors, protocol=3))
    assert np.array_equal(load_word_vectors(path, 4), vectors)
    with pytest.raises(DataError, match=r"CUB_attribute\.pkl: word vectors of shape \(4, 300\), expected \(5, D\)"):
        load_word_vectors(path, 5)
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"x": print}))
    with pytest.raises(DataError, match="not a pickled numpy array"):
        load_word_vectors(evil, 4)


def test_attribute_names(tmp_path: Path) -> None:
    assert clean_attribute_name("has_bill_shape::curved_(up_or_down)") == "bill shape curved"
    (tmp_path / "attributes.txt").write_text("1 has_bill_shape::dagger\n2 has_wing_color::blue\n")
    assert read_attribute_names(tmp_path / "attributes.txt", 2) == ["has_bill_shape::dagger", "has_wing_color::blue"]
    with pytest.raises(DataError, match="2 attribute names, the attribute matrix has 3"):
        read_attribute_names(tmp_path / "attributes.txt", 3)


class _Images(torch.utils.data.Dataset):
    def __len__(self):
        return 10

    def __getitem__(self, i):
        return {"image": torch.full((3, 8, 8), float(i))}


def test_region_feature_shards_are_reused(tmp_path: Path) -> None:
    calls = []

    def backbone(x):
        calls.append(len(x))
        return x[:, :2, ::4, ::4] * 2  # (B, 2, 2, 2)

    extract_region_features(backbone, _Images(), tmp_path, batch_size=3, shard_size=4, source={"m": "toy"},
                            progress=False)
    assert sorted(p.name for p in tmp_path.glob("shard_*")) == [f"shard_0000{i}.safetensors" for i in range(3)]
    store = RegionFeatures(tmp_path)
    assert len(store) == 10 and store.shape == (2, 2, 2)
    assert torch.equal(store[9], torch.full((2, 2, 2), 18.0))
    n = sum(calls)
    (tmp_path / "shard_00001.safetensors").unlink()  # an interrupted run: only the missing shard is redone
    extract_region_features(backbone, _Images(), tmp_path, batch_size=3, shard_size=4, source={"m": "toy"},
                            progress=False)
    assert sum(calls) - n == 4
    with pytest.raises(DataError, match="other settings"):
        extract_region_features(backbone, _Images(), tmp_path, shard_size=4, source={"m": "other"}, progress=False)


def test_image_attributes_and_digits_zsl_splits() -> None:
    ring = np.zeros((1, 8, 8))
    ring[0, 1:7, 1:7] = 1
    ring[0, 3:5, 3:5] = 0
    attrs = image_attributes(ring)
    assert attrs.shape == (1, 12) and attrs[0, -1] == 1  # one enclosed hole
    assert attrs[0, 9] == pytest.approx(1.0) and attrs[0, 10] == pytest.approx(1.0)  # symmetric
    splits, images = digits_zsl_splits()
    assert splits.class_attributes.shape == (10, len(ATTRIBUTE_NAMES))
    assert np.allclose(np.linalg.norm(splits.class_attributes, axis=1), 1)
    assert splits.seen.tolist() == list(SEEN_DIGITS) and splits.unseen.tolist() == list(UNSEEN_DIGITS)
    assert not set(splits.labels[splits.test_seen]) & set(UNSEEN_DIGITS)
    assert images.shape[1:] == (1, 32, 32) and len(images) == len(splits.labels)


@pytest.mark.slow  # loads the bundled MiniLM through transformers: 12 s on the loaded 2-core machine
def test_minilm_word_vectors_offline() -> None:
    from vitlab.data.zsl import minilm_word_vectors

    vectors = minilm_word_vectors(["bill shape curved", "wing color blue", "bill shape curved"])
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert np.allclose(vectors[0], vectors[2]) and not np.allclose(vectors[0], vectors[1])
