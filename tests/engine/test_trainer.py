"""The engine end to end: training improves, resume after kill -9 is exact, NaN stops, 2 ranks equal 1 rank."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vitlab.config import load_config
from vitlab.data.loader import resolve_num_workers
from vitlab.engine.checkpoint import load_checkpoint
from vitlab.engine.logging import read_metrics
from vitlab.engine.trainer import NonFiniteLossError, train

RECIPE = "recipes/supervised/resnet18_digits.yaml"
TINY = ["model.name=test_resnet", "data.img_size=16", "data.batch_size=32", "train.progress=false",
        "optim.warmup_epochs=0", "train.log_every=5"]


def _vitlab(*args: str) -> list[str]:
    return [sys.executable, "-m", "vitlab", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _final_eval(run_dir: Path) -> dict[str, float]:
    rows = read_metrics(run_dir)
    last = max(r["step"] for r in rows if r["phase"] == "eval")
    return {r["name"]: r["value"] for r in rows if r["phase"] == "eval" and r["step"] == last}


def test_training_beats_chance_and_writes_artifacts(tmp_path: Path) -> None:
    cfg = load_config(RECIPE, [f"out_dir={tmp_path}", "name=e2e", "train.epochs=3", *TINY])
    metrics = train(cfg)
    assert metrics["top1"] > 60.0, metrics  # chance is 10%
    run = tmp_path / "e2e"
    for name in ("config.yaml", "metrics.csv", "log.txt", "last.ckpt", "best.ckpt"):
        assert (run / name).is_file(), name
    assert any((run / "tb").iterdir())
    ckpt = load_checkpoint(run / "last.ckpt")
    assert ckpt["config"]["model"]["name"] == "test_resnet" and ckpt["epoch"] == 3
    written = load_config(run / "config.yaml")  # the resolved config is a valid recipe ...
    assert written.data.num_workers == resolve_num_workers("auto", cuda=False)  # ... with the worker count it used
    assert (written.train.compile, written.train.matmul_precision, written.train.channels_last) == (False, "highest",
                                                                                                   False)
    autos = {"compile": "auto", "matmul_precision": "auto", "channels_last": "auto"}
    assert dataclasses.replace(written, data=dataclasses.replace(written.data, num_workers="auto"),
                               train=dataclasses.replace(written.train, **autos)) == cfg
    with pytest.raises(Exception, match="already holds last.ckpt"):
        train(cfg)


@pytest.mark.slow  # three fresh interpreters (about 55 s); tests/test_faults.py kills a forked trainer mid-write
def test_kill9_mid_epoch_then_resume_matches_uninterrupted(tmp_path: Path) -> None:
    common = ["train", "-c", RECIPE, "--set", f"out_dir={tmp_path}", *sum((["--set", o] for o in TINY), []),
              "--set", "train.epochs=3", "--set", "train.ckpt_every_steps=3", "--set", "data.aug.mixup=0.2"]
    full = subprocess.run(_vitlab(*common, "--set", "name=full"), env=_env(), capture_output=True, text=True)
    assert full.returncode == 0, full.stderr
    proc = subprocess.Popen(_vitlab(*common, "--set", "name=killed"), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpt_path = tmp_path / "killed" / "last.ckpt"
    deadline = time.time() + 120
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        if ckpt_path.exists():
            ckpt = load_checkpoint(ckpt_path)
            if ckpt["epoch"] >= 1 and ckpt["batch_in_epoch"] > 0:  # mid-epoch, after one full epoch
                proc.send_signal(signal.SIGKILL)
                killed_at = (ckpt["epoch"], ckpt["batch_in_epoch"])
                break
        time.sleep(0.02)
    proc.wait()
    assert killed_at is not None, "the run finished before it could be killed mid-epoch"
    resumed = subprocess.run(_vitlab(*common, "--set", "name=killed", "--resume"), env=_env(), capture_output=True,
                             text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert _final_eval(tmp_path / "killed") == _final_eval(tmp_path / "full")
    a = load_checkpoint(tmp_path / "full" / "last.ckpt")["method"]
    b = load_checkpoint(ckpt_path)["method"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path: Path) -> None:
    cfg = load_config(None, [f"out_dir={tmp_path}", "name=nan", "method.name=nan_after", "train.ckpt_every_steps=2",
                             "train.epochs=2", *TINY])
    with pytest.raises(NonFiniteLossError, match="non-finite loss at epoch 0 step 4"):
        train(cfg)
    ckpt = load_checkpoint(tmp_path / "nan" / "last.ckpt")
    assert ckpt["step"] == 4
    assert all(torch.isfinite(v).all() for v in ckpt["method"].values() if v.is_floating_point())


def test_two_gloo_processes_equal_one_process_with_double_batch(tmp_path: Path) -> None:
    base = ["train", "-c", RECIPE, "--set", f"out_dir={tmp_path}", "--set", "model.name=test_vit",
            "--set", "data.img_size=32", "--set", "train.max_steps=3", "--set", "train.progress=false",
            "--set", "train.log_every=1", "--set", "data.aug.random_crop_padding=2", "--set", "optim.clip_grad=1.0"]
    one = subprocess.run(_vitlab(*base, "--set", "name=one", "--set", "data.batch_size=32"), env=_env(),
                         capture_output=True, text=True)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "vitlab", *base, "--set", "name=two", "--set", "data.batch_size=16"], env=_env(),
                         capture_output=True, text=True)
    assert two.returncode == 0, two.stderr
    a = load_checkpoint(tmp_path / "one" / "last.ckpt")
    b = load_checkpoint(tmp_path / "two" / "last.ckpt")
    assert a["step"] == b["step"] == 3
    for k in a["method"]:
        torch.testing.assert_close(a["method"][k], b["method"][k], rtol=0, atol=1e-5, msg=k)
    # logged once: only rank 0 writes, so every step appears once
    train_steps = [r["step"] for r in read_metrics(tmp_path / "two") if r["phase"] == "train" and r["name"] == "loss"]
    assert train_steps == [1, 2, 3]
    assert two.stderr.count("starting two") == 1
    ea, eb = _final_eval(tmp_path / "one"), _final_eval(tmp_path / "two")
    assert abs(ea["top1"] - eb["top1"]) < 1e-6 and abs(ea["loss"] - eb["loss"]) < 1e-4


def test_steps_per_epoch_caps_every_epoch_and_the_schedules(tmp_path: Path) -> None:
    """``train.steps_per_epoch`` (SCORE's epoch counted on the real part of a mixed batch): each epoch is cut to that
    many optimizer steps, a different random subset each epoch, and the schedules span epochs x steps_per_epoch."""
    cfg = load_config(RECIPE, [f"out_dir={tmp_path}", "name=cap", "train.epochs=2", "train.steps_per_epoch=3",
                               "train.log_every=1", *TINY[:-1]])
    train(cfg)
    rows = [r for r in read_metrics(tmp_path / "cap") if r["phase"] == "train" and r["name"] == "loss"]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r["epoch"] for r in rows] == [0, 0, 0, 1, 1, 1]
    ckpt = load_checkpoint(tmp_path / "cap" / "last.ckpt")
    assert ckpt["step"] == 6 and ckpt["epoch"] == 2
