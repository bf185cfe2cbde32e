"""Every data test uses a private cache folder: glyphs renders at most once per session, ~/.cache stays untouched."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from vitlab.data.glyphs import GlyphRenders, load_glyph_renders


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("vitlab_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VITLAB_CACHE", str(folder))
        yield folder


@pytest.fixture(scope="session")
def glyph_renders(session_cache: Path) -> GlyphRenders:
    """Every glyph render, built (once) into the session cache."""
    return load_glyph_renders()
