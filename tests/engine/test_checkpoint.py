from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vitlab.engine.checkpoint import CheckpointError, atomic_torch_save, load_checkpoint
from vitlab.engine.seeding import capture_rng_state, restore_rng_state


def test_atomic_save_keeps_previous_file_on_error(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"format": "vitlab-ckpt", "step": 1}, path)

    class Unpicklable:
        def __reduce__(self):  # noqa: D105
            raise RuntimeError("boom in the middle of the write")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_torch_save({"format": "vitlab-ckpt", "step": 2, "payload": torch.zeros(1000), "bad": Unpicklable()},
                          path)
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="nope.ckpt: file not found"):
        load_checkpoint(tmp_path / "nope.ckpt")
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="garbage.ckpt"):
        load_checkpoint(garbage)
    foreign = tmp_path / "state_dict.pt"
    torch.save({"weight": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="not a vitlab checkpoint"):
        load_checkpoint(foreign)


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    import argparse

    path = tmp_path / "pickled.ckpt"
    torch.save({"format": "vitlab-ckpt", "args": argparse.Namespace(lr=1)}, path)
    with pytest.raises(CheckpointError, match="weights-only"):
        load_checkpoint(path)


def test_rng_state_round_trip_through_weights_only(tmp_path: Path) -> None:
    import random

    import numpy as np

    state = capture_rng_state()
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    atomic_torch_save({"format": "vitlab-ckpt", "rng": state}, tmp_path / "r.ckpt")
    restore_rng_state(load_checkpoint(tmp_path / "r.ckpt")["rng"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected


def test_ema_matches_loop_and_takes_a_per_step_decay() -> None:
    from vitlab.engine.ema import ModelEma

    model = torch.nn.Linear(3, 2)
    ema = ModelEma(model, decay=0.9)
    start = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    for e, s, p in zip(ema.module.parameters(), start, model.parameters()):
        torch.testing.assert_close(e, 0.9 * s + 0.1 * p)
    ema.update(model, decay=0.0)  # a scheduled decay of 0 copies the weights
    for e, p in zip(ema.module.parameters(), model.parameters()):
        torch.testing.assert_close(e, p)


def test_save_checkpoint_round_trips_through_load_method(tmp_path: Path) -> None:
    from vitlab.config import load_config
    from vitlab.engine.checkpoint import load_method, load_run_config, save_checkpoint
    from vitlab.methods.base import DataInfo, build_method

    cfg = load_config(None, ["model.name=test_cifar_resnet", "data.img_size=8", "name=saved"])
    info = DataInfo(num_classes=10, channels=3, img_size=8, mean=(0.5,) * 3, std=(0.25,) * 3,
                    classes=[str(k) for k in range(10)])
    torch.manual_seed(0)
    method = build_method(cfg, info)
    path = save_checkpoint(tmp_path / "run" / "last.ckpt", cfg, info, method.state_dict(), step=7,
                           metrics={"top1": 12.5})
    ckpt = load_checkpoint(path)
    assert ckpt["step"] == 7 and ckpt["metrics"] == {"top1": 12.5} and ckpt["ema"] is None
    assert ckpt["data_info"]["num_classes"] == 10 and load_run_config(path).name == "saved"
    loaded, _ = load_method(path)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), method.state_dict().values()))
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["last.ckpt"]  # written through a temporary file
