"""``data.glyphs``: render seed and test fonts (issue 20). The defaults are the recorded sets, byte for byte."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from vitlab.config import DataConfig, GlyphsConfig, load_config
from vitlab.data import DataError, build_dataset
from vitlab.data.cache import cache_key
from vitlab.data.glyphs import (
    TEST_FONTS,
    GlyphRenders,
    _cache_params,
    classification_indices,
    glyph_seed,
    load_glyph_renders,
    render_glyph,
)

# sha256 (first 16 hex) of images + labels + font names of every split, recorded before data.glyphs existed
RECORDED = {
    ("glyphs", "train"): "b08b58efac8c8628", ("glyphs", "test"): "ad05abc88285138a",
    ("glyphs_fewshot", "base"): "8506a21ec8c6ab7d", ("glyphs_fewshot", "val"): "02d025806713cde7",
    ("glyphs_fewshot", "novel"): "05a753c0f3892714",
    ("glyphs_novel", "train"): "bbf9fe43ddfa4203", ("glyphs_novel", "test"): "7c7edbf961089ed8",
}


def _digest(dataset) -> str:
    blob = (dataset.images.numpy().tobytes() + np.asarray(dataset.targets, dtype=np.int64).tobytes()
            + "|".join(dataset.fonts).encode())
    return hashlib.sha256(blob).hexdigest()[:16]


def _sha(*arrays: np.ndarray) -> str:
    return hashlib.sha256(b"".join(np.ascontiguousarray(a).tobytes() for a in arrays)).hexdigest()[:16]


def test_the_default_renders_cache_key_and_font_split_are_the_recorded_ones(glyph_renders: GlyphRenders) -> None:
    """Same cache key, same renders, same train / test indices as before data.glyphs existed: the same sets (the
    session's renders, made once for every glyphs test, are load_glyph_renders(render_seed=0))."""
    renders = glyph_renders
    assert _sha(load_glyph_renders(render_seed=0).images) == _sha(renders.images)
    assert cache_key(_cache_params(0)) == "f1076c37f60f16f8"
    assert _sha(renders.images, renders.labels, renders.fonts, renders.renders) == "2de5931cad890cd5"
    assert _sha(classification_indices(renders, "train", None)) == "e253bb04116d4a00"
    assert _sha(classification_indices(renders, "test", list(TEST_FONTS))) == "8bfb3f6e86747a19"


@pytest.mark.slow
def test_the_default_splits_are_byte_identical_to_the_recorded_ones() -> None:
    """Every glyphs split built through build_dataset (about 15 s)."""
    for (name, split), digest in RECORDED.items():
        cfg = DataConfig(name=name, glyphs=GlyphsConfig(render_seed=0, test_fonts=None))
        assert _digest(build_dataset(cfg, split, train=False)) == digest, (name, split)


def test_render_seed_zero_is_the_recorded_hash_and_another_redraws() -> None:
    recorded = int.from_bytes(hashlib.sha256(b"glyphs-v1|U+0041|cmr10|0").digest()[:8], "big")
    assert glyph_seed("A", "cmr10", 0) == glyph_seed("A", "cmr10", 0, render_seed=0) == recorded
    assert glyph_seed("A", "cmr10", 0, render_seed=7) != recorded
    assert not np.array_equal(render_glyph("A", "cmr10", 0), render_glyph("A", "cmr10", 0, render_seed=7))


def test_test_fonts_move_the_font_disjoint_split() -> None:
    cfg = load_config(None, ["data.name=glyphs", "data.glyphs.test_fonts=[cmr10, DejaVuSans]"]).data
    test, train = build_dataset(cfg, "test", train=False), build_dataset(cfg, "train", train=False)
    assert set(test.fonts) == {"cmr10", "DejaVuSans"}
    assert not set(train.fonts) & {"cmr10", "DejaVuSans"}
    assert set(TEST_FONTS) <= set(train.fonts)


def test_an_unknown_test_font_is_a_one_line_error() -> None:
    cfg = DataConfig(name="glyphs", glyphs=GlyphsConfig(test_fonts=["Comic Sans"]))
    with pytest.raises(DataError, match=r"data.glyphs.test_fonts: got \['Comic Sans'\].*\(Comic Sans unknown\)"):
        build_dataset(cfg, "test", train=False)


@pytest.mark.slow
def test_another_render_seed_renders_another_set_of_the_same_shape() -> None:
    """Renders every glyph again (about 10,000 images; seconds to a minute)."""
    default = build_dataset(DataConfig(name="glyphs"), "test", train=False)
    other = build_dataset(DataConfig(name="glyphs", glyphs=GlyphsConfig(render_seed=1)), "test", train=False)
    assert other.targets == default.targets and other.fonts == default.fonts
    assert not np.array_equal(other.images.numpy(), default.images.numpy())
