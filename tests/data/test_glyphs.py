from __future__ import annotations

import random
import shutil
import unicodedata
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from fontTools.ttLib import TTFont

from vitlab.config import DataConfig
from vitlab.data import DataError, build_dataset, cache_dir
from vitlab.data.glyphs import (
    GLYPH_CLASSES,
    GLYPH_FONTS,
    TEST_FONTS,
    GlyphRenders,
    font_coverage,
    font_path,
    fonts_dir,
    load_glyph_renders,
    render_glyph,
)


def test_classes_fonts_and_cmap_coverage() -> None:
    assert len(GLYPH_CLASSES) == len(set(GLYPH_CLASSES)) == 136
    scripts = Counter(unicodedata.name(c).split()[0] for c in GLYPH_CLASSES)
    assert scripts == {"LATIN": 52, "DIGIT": 10, "GREEK": 29, "CYRILLIC": 45}
    assert len(GLYPH_FONTS) == 22 and set(TEST_FONTS) <= set(GLYPH_FONTS)
    coverage = font_coverage()
    for char in GLYPH_CLASSES:
        expected = 22 if unicodedata.name(char).split()[0] in ("LATIN", "DIGIT") else 16
        assert len(coverage[char]) == expected, char
    # The excluded fonts are in matplotlib's folder but not used.
    present = {p.stem for p in fonts_dir().glob("*.ttf")}
    assert {"LastResortHE-Regular", "cmsy10", "cmex10", "DejaVuSansDisplay", "STIXNonUni"} <= present
    assert not {"LastResortHE-Regular", "cmsy10", "cmex10", "DejaVuSansDisplay", "STIXNonUni"} & set(GLYPH_FONTS)


def test_coverage_matches_a_direct_cmap_read() -> None:
    coverage = font_coverage()
    for font in ("cmr10", "DejaVuSansMono-Bold"):
        cmap = TTFont(str(font_path(font)), lazy=True)["cmap"].getBestCmap()
        for char in GLYPH_CLASSES:
            assert (font in coverage[char]) == (ord(char) in cmap)


def test_render_counts_per_class_and_font(glyph_renders: GlyphRenders) -> None:
    coverage = font_coverage()
    images, labels = glyph_renders.images, glyph_renders.labels
    assert images.dtype == np.uint8 and images.shape[1:] == (1, 32, 32)
    per_class = Counter(labels.tolist())
    for label, char in enumerate(GLYPH_CLASSES):
        assert per_class[label] == 4 * len(coverage[char])
    assert (images.reshape(len(images), -1).max(axis=1) > 128).all()  # every render has ink


def test_font_disjoint_classification_split(glyph_renders: GlyphRenders) -> None:
    train = build_dataset(DataConfig(name="glyphs"), "train", train=False)
    test = build_dataset(DataConfig(name="glyphs"), "test", train=False)
    assert train.num_classes == test.num_classes == 136 and train.classes == list(GLYPH_CLASSES)
    assert not set(train.fonts) & set(test.fonts)
    assert set(test.fonts) == set(TEST_FONTS) and len(set(train.fonts)) == 18
    coverage = font_coverage()
    expected_train = sum(4 * len(set(coverage[c]) - set(TEST_FONTS)) for c in GLYPH_CLASSES)
    expected_test = sum(2 * len(set(coverage[c]) & set(TEST_FONTS)) for c in GLYPH_CLASSES)
    assert (len(train), len(test)) == (expected_train, expected_test)
    assert set(train.targets) == set(test.targets) == set(range(136))


@pytest.mark.parametrize("channels,img_size", [(1, 32), (3, 32), (3, 40)])
def test_items_shape_and_range(glyph_renders: GlyphRenders, channels: int, img_size: int) -> None:
    ds = build_dataset(DataConfig(name="glyphs", channels=channels, img_size=img_size), "test", train=False)
    for index in (0, len(ds) // 2, len(ds) - 1):
        item = ds[index]
        assert item["image"].shape == (channels, img_size, img_size)
        assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0
        assert item["label"] == ds.targets[index]
    assert len(ds.mean) == len(ds.std) == channels


def test_mean_std_from_the_training_fonts(glyph_renders: GlyphRenders) -> None:
    train = build_dataset(DataConfig(name="glyphs", channels=1), "train", train=False)
    pixels = train.images.double() / 255.0
    test = build_dataset(DataConfig(name="glyphs", channels=1), "test", train=False)
    assert test.mean[0] == pytest.approx(pixels.mean().item(), abs=1e-6)
    assert test.std[0] == pytest.approx(pixels.std(unbiased=False).item(), abs=1e-6)


def test_fewshot_splits_are_class_disjoint(glyph_renders: GlyphRenders) -> None:
    splits = {name: build_dataset(DataConfig(name="glyphs_fewshot"), name, train=False)
              for name in ("base", "val", "novel")}
    chars = {name: set(ds.classes) for name, ds in splits.items()}
    assert [len(chars[n]) for n in ("base", "val", "novel")] == [80, 16, 40]
    assert not chars["base"] & chars["val"] and not chars["base"] & chars["novel"] and not chars["val"] & chars["novel"]
    assert chars["base"] | chars["val"] | chars["novel"] == set(GLYPH_CLASSES)
    coverage = font_coverage()
    for ds in splits.values():
        assert set(ds.targets) == set(range(ds.num_classes))
        for k in (0, len(ds) - 1):  # the label names the character that was rendered
            source = int(np.flatnonzero((glyph_renders.images == ds.images[k].numpy()).all(axis=(1, 2, 3)))[0])
            assert GLYPH_CLASSES[glyph_renders.labels[source]] == ds.classes[ds.targets[k]]
        for label, char in enumerate(ds.classes):  # every font, every render
            assert ds.targets.count(label) == 4 * len(coverage[char])
    # Fixed by seed: a second build gives the same classes in the same order.
    assert build_dataset(DataConfig(name="glyphs_fewshot"), "novel", False).classes == splits["novel"].classes
    assert build_dataset(DataConfig(name="glyphs_fewshot"), "train", False).classes == splits["base"].classes
    with pytest.raises(DataError, match="allowed: base, val, novel"):
        build_dataset(DataConfig(name="glyphs_fewshot"), "support", train=False)


def test_train_per_class_on_glyphs(glyph_renders: GlyphRenders) -> None:
    ds = build_dataset(DataConfig(name="glyphs", train_per_class=3), "train", train=False)
    assert Counter(ds.targets) == {label: 3 for label in range(136)}
    assert len(ds.fonts) == len(ds)


def test_renders_are_deterministic_and_seeded_per_index(glyph_renders: GlyphRenders) -> None:
    rng = random.Random(1)
    for position in rng.sample(range(len(glyph_renders.labels)), 25):
        char = GLYPH_CLASSES[glyph_renders.labels[position]]
        font = GLYPH_FONTS[glyph_renders.fonts[position]]
        again = render_glyph(char, font, int(glyph_renders.renders[position]))
        assert np.array_equal(again, glyph_renders.images[position, 0])
    assert not np.array_equal(render_glyph("A", "cmr10", 0), render_glyph("A", "cmr10", 1))


def test_glyph_is_centred_on_its_ink(glyph_renders: GlyphRenders) -> None:
    # Shift <= 3 px on the 64 px canvas is <= 1.5 px at 32 px; rotation about the centre moves the centroid little.
    images = glyph_renders.images[:, 0].astype(np.float64)
    grid = np.arange(32) + 0.5
    mass = images.sum(axis=(1, 2))
    centre_y = (images.sum(axis=2) * grid).sum(axis=1) / mass
    centre_x = (images.sum(axis=1) * grid).sum(axis=1) / mass
    # The ink centroid differs from the ink-box centre by the glyph's own asymmetry; bound it loosely.
    assert np.abs(centre_x - 16).max() < 8 and np.abs(centre_y - 16).max() < 8
    assert abs(np.median(centre_x) - 16) < 1 and abs(np.median(centre_y) - 16) < 1.5


def test_corrupt_cache_is_rebuilt_identically(glyph_renders: GlyphRenders, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    (cached,) = cache_dir().glob("glyphs-*.npz")
    monkeypatch.setenv("VITLAB_CACHE", str(tmp_path))
    copy = tmp_path / cached.name
    shutil.copy(cached, copy)
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside the image array
    copy.write_bytes(bytes(data))
    rebuilt = load_glyph_renders()
    assert "rebuilding" in capsys.readouterr().err
    for name in ("images", "labels", "fonts", "renders"):
        assert np.array_equal(getattr(rebuilt, name), getattr(glyph_renders, name))
    assert copy.read_bytes() == cached.read_bytes()  # the repaired file is the same file
    assert sorted(p.name for p in tmp_path.iterdir()) == [cached.name]  # no temporary file left behind
    assert torch.from_numpy(rebuilt.images).float().max() == 255.0
