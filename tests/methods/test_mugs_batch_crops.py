"""Mugs with ``method.crops.backend``: a training step with the batched crops and with the per-image (PIL) crops, the
crops' determinism per step, and one-line errors for a bad backend or a string the batched crops cannot take."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import default_collate

from vitlab.config import ConfigError, load_config
from vitlab.methods.base import Progress, data_info_from
from vitlab.methods.mugs import CropConfig, Mugs, MugsConfig

RECIPE = "recipes/mugs/vit_tiny_glyphs.yaml"
TINY = ["data.batch_size=8", "data.train_per_class=2", "method.crops.local_number=2", "method.ids.queue_size=32",
        "method.lgds.queue_size=32", "method.lgds.memory_size=32", "method.lgds.top_k=4", "method.gds.prototypes=64",
        "method.head_hidden_dim=32", "method.predictor_hidden_dim=32", "method.head_out_dim=16",
        "method.gds.bottleneck_dim=16", "model.kwargs.depth=2", "model.drop_path_rate=0"]


def _method(backend: str) -> tuple[Mugs, dict]:
    cfg = load_config(RECIPE, [*TINY, f"method.crops.backend={backend}"])
    datasets = Mugs.build_datasets(cfg)
    torch.manual_seed(0)
    return Mugs(cfg, data_info_from(cfg, datasets["train"])), datasets


def _progress(step: int = 0) -> Progress:
    return Progress(step=step, epoch=0, total_steps=10, steps_per_epoch=5,
                    values={"lr": 1e-3, "weight_decay": 0.04, "teacher_temp": 0.04, "teacher_momentum": 0.99})


@pytest.mark.parametrize("backend", ["batch", "pil"])
def test_a_training_step_runs_with_either_backend(backend: str, step_helper) -> None:
    method, datasets = _method(backend)
    batch = default_collate([datasets["train"][i] for i in range(8)])
    if backend == "batch":  # plain images from the loader: no per-image crops
        assert set(batch) == {"image", "label"} and batch["image"].dtype == torch.uint8
        assert batch["image"].shape == (8, 1, 16, 16)
    else:
        assert batch["teacher_globals"].shape == (8, 2, 1, 16, 16) and batch["student_locals"].shape == (8, 2, 1, 8, 8)
    helper = step_helper(method)
    out = method.training_step(batch, _progress(), helper)
    assert set(out) >= {"loss", "ids", "lgds", "gds"} and torch.isfinite(out["loss"])
    assert int(method.teacher_memory.pointer) == 8
    assert helper.optimizers["main"].state  # AdamW stepped


def test_batched_crops_are_drawn_per_step_and_reproducible() -> None:
    method, datasets = _method("batch")
    images = default_collate([datasets["train"][i] for i in range(8)])["image"]
    first, micro, later = (method.make_crops(images, _progress(s)) for s in (3, 3, 4))
    assert first["teacher_globals"].shape == (8, 2, 1, 16, 16) and first["student_locals"].shape == (8, 2, 1, 8, 8)
    assert first["student_globals"].dtype == torch.float32 and first["weak_flag"].dtype == torch.bool
    # a second batch of the same step (gradient accumulation) and the next step draw other crops
    assert not torch.equal(first["teacher_globals"], micro["teacher_globals"])
    assert not torch.equal(first["teacher_globals"], later["teacher_globals"])
    # a fresh method (a resumed run) at the same step crops exactly alike
    again = _method("batch")[0].make_crops(images, _progress(3))
    assert all(torch.equal(first[k], again[k]) for k in first)


def test_bad_backend_is_a_config_error_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"method\.crops\.backend"):
        load_config(RECIPE, ["method.crops.backend=gpu"])
    with pytest.raises(ConfigError, match=r"^method\.crops\.backend: got 'gpu', expected 'batch' or 'pil'$"):
        MugsConfig(crops=CropConfig(backend="gpu")).validate()  # type: ignore[arg-type]


def test_a_rand_augment_string_the_batched_crops_cannot_take_names_the_key() -> None:
    cfg = load_config(RECIPE, [*TINY, "method.crops.rand_augment=rand-m9-mstd0.5"])  # inc0: not batched
    with pytest.raises(ConfigError, match=r"^method\.crops\.rand_augment: got 'rand-m9-mstd0\.5'.*backend=pil$"):
        Mugs(cfg, data_info_from(cfg, Mugs.build_datasets(cfg)["train"]))
