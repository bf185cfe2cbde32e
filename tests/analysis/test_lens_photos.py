"""experiments/ar_lens_photos.py: `vitlab lens` on scikit-image's bundled photos (a square PNG and a non-square JPEG),
one output line per file written, recorded in a JSON that ``--show`` prints back."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def photos_script():
    spec = importlib.util.spec_from_file_location("experiments_ar_lens_photos", ROOT / "experiments" /
                                                  "ar_lens_photos.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, one_step_checkpoint) -> Path:
    return one_step_checkpoint("hat/vit_tiny_digits_baseline.yaml", tmp_path_factory.mktemp("photo_runs"), 16,
                               "model.kwargs.global_pool=avg", "model.kwargs.fc_norm=false")


def test_lens_on_the_bundled_photos(photos_script, checkpoint: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    result_path = tmp_path / "lens_photos.json"
    assert photos_script.main(["--ckpt", str(checkpoint), "--out-dir", str(tmp_path / "out"),
                               "--result", str(result_path)]) == 0
    printed = capsys.readouterr().out.splitlines()
    result = json.loads(result_path.read_text())
    assert [p["file"] for p in result["photos"]] == ["astronaut.png", "chelsea.jpg"]
    assert len(result["runs"]) == len(photos_script.LENSES) == 5
    sizes = {"astronaut.png": (512, 512), "chelsea.jpg": (451, 300)}
    for (photo, name, _), run in zip(photos_script.LENSES, result["runs"]):
        width, height = sizes[photo]
        assert run["output"].count("\n") == 0 and run["output"].startswith("wrote ")  # one line per file
        assert f"{name} ({width}x{height};" in run["output"]
        assert run["command"].startswith("vitlab lens --ckpt ") and f"{photo} --out " in run["command"]
        with Image.open(tmp_path / "out" / name) as written:
            assert written.size == (width, height)
        assert f"$ {run['command']}" in printed and run["output"] in printed
    assert photos_script.main(["--show", "--result", str(result_path)]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == printed[1:]


def test_missing_checkpoint_is_a_one_line_error(photos_script, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert photos_script.main(["--ckpt", str(tmp_path / "none.ckpt"), "--out-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"error: --ckpt {tmp_path / 'none.ckpt'} not found"


def test_docs_show_the_committed_runs(photos_script, capsys: pytest.CaptureFixture[str]) -> None:
    """docs/ar.md holds exactly what `python experiments/ar_lens_photos.py --show` prints from the committed JSON."""
    assert photos_script.main(["--show"]) == 0
    printed = capsys.readouterr().out.splitlines()
    docs = (ROOT / "docs" / "ar.md").read_text()
    assert len(printed) == 1 + 2 * len(photos_script.LENSES)
    block = "\n".join(f"    {line}" for line in printed)
    assert block in docs
    assert "`python experiments/ar_lens_photos.py --show`" in docs
