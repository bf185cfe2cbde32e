"""``vitlab lens`` on a checkpoint written by ``vitlab train``: any PNG / JPEG size, one line per file, exit 2 on bad
input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitlab.cli import main


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, one_step_checkpoint) -> Path:
    """A one-step ViT (patch 4 at 16 px: a 4x4 grid) whose head averages its normed tokens: CAM and attention."""
    return one_step_checkpoint("hat/vit_tiny_digits_baseline.yaml", tmp_path_factory.mktemp("lens_runs"), 16,
                               "model.kwargs.global_pool=avg", "model.kwargs.fc_norm=false")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("lens_images")
    rng = np.random.default_rng(0)
    paths = {"jpg": folder / "wide.jpg", "png": folder / "tall.png", "bad": folder / "notes.png"}
    Image.fromarray(rng.integers(0, 256, (45, 70, 3), dtype=np.uint8)).save(paths["jpg"])
    Image.fromarray(rng.integers(0, 256, (61, 23), dtype=np.uint8), mode="L").save(paths["png"])
    paths["bad"].write_text("not an image")
    return paths


@pytest.mark.parametrize(("extra", "name"), [(["--mode", "tint"], "wide_tint.png"),
                                             (["--mode", "heatmap", "--alpha", "0.7"], "wide_heat.jpg"),
                                             (["--lens", "cartoon"], "wide_cartoon.png"),
                                             (["--lens", "lut", "--lut", "invert"], "wide_lut.png"),
                                             (["--lens", "sticker"], "wide_sticker.png"),
                                             (["--source", "attention", "--mode", "background"], "wide_attn.png")])
def test_lens_writes_the_overlay_at_the_image_size(checkpoint: Path, images: dict[str, Path], tmp_path: Path,
                                                   extra: list[str], name: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / name
    rc = main(["lens", "--ckpt", str(checkpoint), "--image", str(images["jpg"]), "--out", str(out), *extra])
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"wrote {out} (70x45")
    with Image.open(out) as written:
        assert written.size == (70, 45) and written.mode == "RGB"
        result = np.asarray(written, dtype=np.int16)
    with Image.open(images["jpg"]) as original:
        assert np.abs(result - np.asarray(original, dtype=np.int16)).max() > 0  # the overlay changed something


def test_lens_several_images_into_a_folder(checkpoint: Path, images: dict[str, Path], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["lens", "--ckpt", str(checkpoint), "--image", str(images["jpg"]), str(images["png"]),
               "--out", str(tmp_path / "gallery"), "--mode", "tint"])
    assert rc == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2
    assert Image.open(tmp_path / "gallery" / "tall_cam_tint.png").size == (23, 61)
    assert Image.open(tmp_path / "gallery" / "wide_cam_tint.png").size == (70, 45)


@pytest.mark.parametrize(("args", "message"), [
    (["--image", "missing.png"], "--image: missing.png not found"),
    (["--image", "BAD"], "cannot read"),
    (["--image", "JPG", "--source", "segmentation"], "--source segmentation"),
    (["--image", "JPG", "--source", "attribute"], "TransZero++"),
    (["--image", "JPG", "--alpha", "2"], "--alpha"),
    (["--image", "JPG", "--color", "red"], "--color"),
    (["--image", "JPG", "--lens", "cartoon", "--mode", "tint"], "recolor"),
])
def test_lens_bad_input_is_one_line_exit_2(checkpoint: Path, images: dict[str, Path], tmp_path: Path,
                                           args: list[str], message: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    args = [{"BAD": str(images["bad"]), "JPG": str(images["jpg"])}.get(a, a) for a in args]
    rc = main(["lens", "--ckpt", str(checkpoint), "--out", str(tmp_path / "o.png"), *args])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and message in err
    assert not (tmp_path / "o.png").exists()


def test_lens_cam_on_a_cls_token_model_is_one_line_exit_2(images: dict[str, Path], tmp_path: Path, one_step_checkpoint,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = one_step_checkpoint("hat/vit_tiny_digits_baseline.yaml", tmp_path / "runs", 16)
    capsys.readouterr()
    rc = main(["lens", "--ckpt", str(ckpt), "--image", str(images["jpg"]),
               "--out", str(tmp_path / "o.png"), "--source", "cam"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "use source 'attention'" in err
