"""``glyphs``: 136 character classes rendered from the 22 text fonts that ship inside matplotlib.

specs/data.md, "glyphs". Every image is drawn from a seed derived from (class, font, index), so the set is the same
on every machine with the same wheels; it is rendered once and cached (:mod:`vitlab.data.cache`).

Splits:
- ``glyphs``: font-disjoint classification. 4 renders per (class, training font) train; the first 2 renders per
  (class, test font) test.
- ``glyphs_fewshot``: class-disjoint base / val / novel classes (80 / 16 / 40, fixed by seed) with every render of
  every font.
"""

from __future__ import annotations

import functools
import hashlib
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from vitlab.data.cache import cached_arrays
from vitlab.data.dataset import DataError, ImageTransform, TensorImageDataset

GLYPHS_VERSION = 1  # bump whenever the rendering or the class / font lists change: it is part of the cache key

LATIN = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
# Greek and Cyrillic letters that are not homoglyphs of a Latin letter.
GREEK = "ΓΔΘΛΞΠΣΦΨΩαβγδεζηθλμξπρστφχψω"
CYRILLIC = "БГДЖЗИЙЛПФЦЧШЩЪЫЬЭЮЯбвгджзийклмнптфцчшщъыьэюя"
GLYPH_CLASSES = LATIN + GREEK + CYRILLIC  # label k is the character GLYPH_CLASSES[k]

# The text fonts of matplotlib's mpl-data/fonts/ttf (file stems). Excluded: LastResortHE (a placeholder for every
# code point), the symbol fonts cmsy10 / cmex10, the *Display fonts, STIXNonUni* and STIXSiz*.
GLYPH_FONTS = (
    "DejaVuSans", "DejaVuSans-Bold", "DejaVuSans-Oblique", "DejaVuSans-BoldOblique",
    "DejaVuSansMono", "DejaVuSansMono-Bold", "DejaVuSansMono-Oblique", "DejaVuSansMono-BoldOblique",
    "DejaVuSerif", "DejaVuSerif-Bold", "DejaVuSerif-Italic", "DejaVuSerif-BoldItalic",
    "STIXGeneral", "STIXGeneralBol", "STIXGeneralItalic", "STIXGeneralBolIta",
    "cmr10", "cmss10", "cmtt10", "cmb10", "cmti10", "cmmi10",
)
TEST_FONTS = ("DejaVuSerif-Italic", "DejaVuSansMono-Bold", "STIXGeneralBol", "cmss10")

CANVAS = 64  # rendering canvas side, pixels
OUTPUT_SIZE = 32  # stored side after Lanczos down-sampling
FONT_FRACTION = (0.55, 0.80)  # font size as a fraction of the canvas
MAX_SHIFT = 3  # pixels, each axis
MAX_ROTATION = 12.0  # degrees, each way
RENDERS_PER_FONT = 4  # renders per (class, font) in the cache
TRAIN_RENDERS = 4  # of them, used per (class, training font) by the classification split
TEST_RENDERS = 2  # of them, used per (class, test font)

FEWSHOT_SIZES = {"base": 80, "val": 16, "novel": 40}
FEWSHOT_SEED = 0


def fonts_dir() -> Path:
    """matplotlib's bundled TrueType folder."""
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def font_path(font: str) -> Path:
    path = fonts_dir() / f"{font}.ttf"
    if not path.is_file():
        raise DataError(f"font file {path} not found: glyphs needs matplotlib's bundled fonts "
                        f"(mpl-data/fonts/ttf/{{{', '.join(GLYPH_FONTS)}}}.ttf)")
    return path


@functools.lru_cache(maxsize=1)
def font_coverage() -> dict[str, tuple[str, ...]]:
    """For every class character, the fonts whose cmap (read with fontTools) contains its code point."""
    from fontTools.ttLib import TTFont

    code_points: dict[str, set[int]] = {}
    for font in GLYPH_FONTS:
        path = font_path(font)
        try:
            code_points[font] = set(TTFont(str(path), lazy=True)["cmap"].getBestCmap())
        except Exception as exc:  # fontTools raises many types on a damaged file
            raise DataError(f"font file {path}: cannot read its cmap ({type(exc).__name__}: {exc})") from None
    return {char: tuple(f for f in GLYPH_FONTS if ord(char) in code_points[f]) for char in GLYPH_CLASSES}


def glyph_seed(char: str, font: str, index: int, render_seed: int = 0) -> int:
    """The seed of one render: a hash of (class, font, index), identical on every machine and Python version.

    ``render_seed`` 0 gives the recorded renders; any other value a different, equally fixed, draw.
    """
    extra = f"|seed{render_seed}" if render_seed else ""
    digest = hashlib.sha256(f"glyphs-v{GLYPHS_VERSION}|U+{ord(char):04X}|{font}|{index}{extra}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


@functools.lru_cache(maxsize=512)
def _truetype(font: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(font_path(font)), size)


def render_glyph(char: str, font: str, index: int, render_seed: int = 0) -> np.ndarray:
    """One render (OUTPUT_SIZE, OUTPUT_SIZE) uint8: white glyph on black, as specs/data.md "Rendering" says.

    Font size a random 55-80% of the 64 px canvas; the glyph's ink box centred, then shifted by up to 3 px each
    way; rotated by up to 12 degrees (bilinear); Lanczos down-sampled to 32 px.
    """
    rng = random.Random(glyph_seed(char, font, index, render_seed))
    size = round(rng.uniform(*FONT_FRACTION) * CANVAS)
    shift_x = rng.randint(-MAX_SHIFT, MAX_SHIFT)
    shift_y = rng.randint(-MAX_SHIFT, MAX_SHIFT)
    angle = rng.uniform(-MAX_ROTATION, MAX_ROTATION)

    typeface = _truetype(font, size)
    # The text box of getbbox includes side bearings; the ink box of a scratch render is what must be centred.
    scratch = Image.new("L", (3 * size, 3 * size), 0)
    ImageDraw.Draw(scratch).text((size, size), char, fill=255, font=typeface)
    ink_box = scratch.getbbox()
    if ink_box is None:
        raise DataError(f"font {font_path(font)}: the glyph of {char!r} (U+{ord(char):04X}) has no ink")
    ink = scratch.crop(ink_box)
    canvas = Image.new("L", (CANVAS, CANVAS), 0)
    canvas.paste(ink, ((CANVAS - ink.width) // 2 + shift_x, (CANVAS - ink.height) // 2 + shift_y))
    canvas = canvas.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=0)
    small = canvas.resize((OUTPUT_SIZE, OUTPUT_SIZE), resample=Image.Resampling.LANCZOS)
    return np.asarray(small, dtype=np.uint8)


def _render_all(render_seed: int = 0) -> dict[str, np.ndarray]:
    coverage = font_coverage()
    images, labels, fonts, renders = [], [], [], []
    start = time.perf_counter()
    for label, char in enumerate(GLYPH_CLASSES):
        for font in coverage[char]:
            for index in range(RENDERS_PER_FONT):
                images.append(render_glyph(char, font, index, render_seed))
                labels.append(label)
                fonts.append(GLYPH_FONTS.index(font))
                renders.append(index)
    seconds = time.perf_counter() - start
    print(f"vitlab: rendered {len(images):,} glyph images in {seconds:.1f} s (cached for later runs)",
          file=sys.stderr, flush=True)
    return {
        "images": np.stack(images)[:, None],  # (N, 1, 32, 32) uint8
        "labels": np.asarray(labels, dtype=np.int16),
        "fonts": np.asarray(fonts, dtype=np.int8),
        "renders": np.asarray(renders, dtype=np.int8),
    }


def _cache_params(render_seed: int = 0) -> dict[str, object]:
    import PIL

    seed: dict[str, object] = {"render_seed": render_seed} if render_seed else {}  # the recorded key stays as it was
    return {**seed,
        "generator": "glyphs", "version": GLYPHS_VERSION, "classes": GLYPH_CLASSES, "fonts": list(GLYPH_FONTS),
        "canvas": CANVAS, "output_size": OUTPUT_SIZE, "font_fraction": list(FONT_FRACTION), "max_shift": MAX_SHIFT,
        "max_rotation": MAX_ROTATION, "renders_per_font": RENDERS_PER_FONT,
        # The rasteriser is part of the result: another Pillow (and so FreeType) may draw other pixels.
        "pillow": PIL.__version__,
    }


@dataclass(frozen=True)
class GlyphRenders:
    """Every cached render: images (N, 1, 32, 32) uint8; labels, font indices (into GLYPH_FONTS), render indices."""

    images: np.ndarray
    labels: np.ndarray
    fonts: np.ndarray
    renders: np.ndarray


class GlyphDataset(TensorImageDataset):
    """A glyph split; as :class:`TensorImageDataset`, plus ``fonts``: the font name of every image."""

    def __init__(self, images: Tensor, targets: Sequence[int], classes: Sequence[str], img_size: int, channels: int,
                 mean: Sequence[float], std: Sequence[float], transform: ImageTransform | None,
                 fonts: Sequence[str]) -> None:
        super().__init__(images, targets, classes, img_size, channels, mean, std, transform)
        if len(fonts) != len(self.targets):
            raise DataError(f"glyphs: {len(fonts)} font names for {len(self.targets)} images")
        self.fonts = list(fonts)


def load_glyph_renders(render_seed: int = 0) -> GlyphRenders:
    """All renders, from the cache or rendered now (about 10,000 images, a few seconds); ``render_seed`` as in
    :func:`glyph_seed`."""
    arrays = cached_arrays("glyphs", _cache_params(render_seed), lambda: _render_all(render_seed))
    return GlyphRenders(arrays["images"], arrays["labels"].astype(np.int64), arrays["fonts"].astype(np.int64),
                        arrays["renders"].astype(np.int64))


def check_test_fonts(fonts: Sequence[str] | None) -> tuple[str, ...]:
    """``data.glyphs.test_fonts`` checked against :data:`GLYPH_FONTS` (None: the recorded :data:`TEST_FONTS`)."""
    if fonts is None:
        return TEST_FONTS
    unknown = [f for f in fonts if f not in GLYPH_FONTS]
    if unknown or not fonts or len(set(fonts)) == len(GLYPH_FONTS):
        raise DataError(f"data.glyphs.test_fonts: got {list(fonts)}; expected some (not all) of "
                        f"{', '.join(GLYPH_FONTS)}" + (f" ({', '.join(unknown)} unknown)" if unknown else ""))
    return tuple(fonts)


def classification_indices(renders: GlyphRenders, split: str, test_fonts: Sequence[str] | None = None) -> np.ndarray:
    """Indices of the font-disjoint ``glyphs`` split: "train" (training fonts) or "test" (the test fonts: the 4 of
    :data:`TEST_FONTS` unless ``test_fonts`` names others)."""
    test_font_ids = [GLYPH_FONTS.index(f) for f in check_test_fonts(test_fonts)]
    is_test_font = np.isin(renders.fonts, test_font_ids)
    if split == "train":
        keep = ~is_test_font & (renders.renders < TRAIN_RENDERS)
    elif split == "test":
        keep = is_test_font & (renders.renders < TEST_RENDERS)
    else:
        raise DataError(f"glyphs: unknown split {split!r} (allowed: train, test)")
    return np.flatnonzero(keep)


def fewshot_classes() -> dict[str, list[int]]:
    """The class-disjoint few-shot splits: base / val / novel lists of class indices (80 / 16 / 40).

    The classes are ordered by a hash of (seed, character), which is the same on every machine, then cut in order.
    """
    def rank(label: int) -> str:
        return hashlib.sha256(f"glyphs-fewshot|{FEWSHOT_SEED}|U+{ord(GLYPH_CLASSES[label]):04X}".encode()).hexdigest()

    order = sorted(range(len(GLYPH_CLASSES)), key=rank)
    out, start = {}, 0
    for name, count in FEWSHOT_SIZES.items():
        out[name] = sorted(order[start:start + count])
        start += count
    return out
