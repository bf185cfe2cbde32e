"""The static model list of ``vitlab models`` (vitlab/model_catalog.py) equals the registry, so it cannot go stale."""

from __future__ import annotations

import pytest

from vitlab import model_catalog
from vitlab.models import list_vitlab_models
from vitlab.models.catalog import CATALOG_FILE, catalog_entries, render_catalog
from vitlab.models.profile import model_info

REGENERATE = "out of date: run `python -m vitlab.models.catalog`"


def test_the_catalog_names_every_registered_model() -> None:
    assert model_catalog.list_models() == list_vitlab_models(), REGENERATE
    assert model_catalog.list_models("iformer_*") == list_vitlab_models("iformer_*")


def test_a_row_is_what_model_info_gives() -> None:
    for name in ("test_iformer", "iformer_small", "test_dualformer"):
        assert model_catalog.model_row(name) == model_info(name, flops=False), name


@pytest.mark.slow
def test_the_catalog_file_is_the_registry_rendered() -> None:
    """Builds every registered model (on the meta device where it can): seconds."""
    assert CATALOG_FILE.read_text() == render_catalog(catalog_entries()), REGENERATE
