"""Faults that lose nothing: kill -9 during a checkpoint write, a disk that fills during a save, Ctrl-C mid-epoch,
a NaN loss. Each leaves the last good checkpoint loadable, and a resumed run ends where an uninterrupted one does.

The writers and trainers that get killed are forked from the test process (no interpreter start, no re-import), so
the ten kills cost about as much as ten checkpoint writes.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from vitlab.cli import main
from vitlab.config import load_config
from vitlab.engine.checkpoint import load_checkpoint, load_method, save_checkpoint
from vitlab.engine.logging import read_metrics
from vitlab.engine.trainer import train
from vitlab.methods.base import DataInfo, build_method, register_method
from vitlab.methods.supervised import Supervised, SupervisedConfig

REPO = Path(__file__).resolve().parents[1]
RECIPE = str(REPO / "recipes" / "supervised" / "resnet18_digits.yaml")
TINY = ["model.name=test_resnet", "data.img_size=16", "data.batch_size=32", "train.progress=false",
        "optim.warmup_epochs=0", "train.log_every=1"]
FORK = multiprocessing.get_context("fork")


def _sets(*overrides: str) -> list[str]:
    return sum((["--set", o] for o in overrides), [])


def _final_eval(run_dir: Path) -> dict[str, float]:
    rows = read_metrics(run_dir)
    last = max(r["step"] for r in rows if r["phase"] == "eval")
    return {r["name"]: r["value"] for r in rows if r["phase"] == "eval" and r["step"] == last}


# ---- kill -9 during a checkpoint write ---------------------------------------------------------------------------
def _write_on_request(path: Path, conn: object) -> None:
    """Write the checkpoint of step 1, then of step 2, 3, ... each time the parent asks, saying when the temporary
    file of a write is opened and how long the file write took (the writer waits for the parent between writes, so
    the parent never reads a stale message)."""
    import tempfile

    torch.set_num_threads(1)
    cfg = load_config(RECIPE, ["model.name=test_resnet", "data.img_size=16", "name=writer"])
    info = DataInfo(num_classes=10, channels=3, img_size=16, mean=(0.5,) * 3, std=(0.25,) * 3)
    state = build_method(cfg, info).state_dict()
    padding = {"main": {"state": {0: {"exp_avg": torch.randn(1_000_000)}}, "param_groups": []}}  # a 4 MB write
    mkstemp, opened = tempfile.mkstemp, [0.0]

    def announce(*args, **kwargs):  # type: ignore[no-untyped-def]
        handle = mkstemp(*args, **kwargs)
        opened[0] = time.perf_counter()
        conn.send(("open", step))  # type: ignore[attr-defined]
        return handle

    tempfile.mkstemp = announce  # this forked process's own module: the parent's is untouched
    step = 0
    while True:
        step += 1
        if step > 1:
            conn.recv()  # type: ignore[attr-defined]
        save_checkpoint(path, cfg, info, state, optimizers=padding, step=step)
        conn.send(("done", step, time.perf_counter() - opened[0]))  # type: ignore[attr-defined]


def test_kill9_at_ten_moments_of_a_checkpoint_write_keeps_the_previous_one(tmp_path: Path) -> None:
    path = tmp_path / "run" / "last.ckpt"
    survived = []
    for moment in range(10):
        parent, child = FORK.Pipe()
        proc = FORK.Process(target=_write_on_request, args=(path, child), daemon=True)
        proc.start()
        assert parent.recv() == ("open", 1)
        write_time = parent.recv()[2]  # one whole write first: its duration places the kill
        parent.send("go")
        assert parent.recv() == ("open", 2)
        time.sleep(write_time * moment / 10)  # 0%, 10%, ..., 90% into the file write of step 2
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        ckpt = load_checkpoint(path)
        assert ckpt["step"] in (1, 2), (moment, ckpt["step"])
        load_method(path)  # the weights load into the model
        torn = [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]  # a write cut short by the kill
        survived.append((ckpt["step"], len(torn)))
        for p in [path, *torn]:
            p.unlink()
    assert len(survived) == 10
    assert any(step == 1 and torn == 1 for step, torn in survived), survived  # kills that cut a write short


def test_kill9_during_a_training_checkpoint_write_then_resume_matches_uninterrupted(tmp_path: Path) -> None:
    """The real trainer, writing last.ckpt every step, is killed while a temporary checkpoint file exists (a write
    under way); --resume then ends with exactly the metrics of an uninterrupted run."""
    common = [f"out_dir={tmp_path}", "train.epochs=2", "train.steps_per_epoch=6", "train.ckpt_every_steps=1", *TINY]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the killed child trains on one thread: the same float reductions
    try:
        full = train(load_config(RECIPE, [*common, "name=full"]))
    finally:
        torch.set_num_threads(threads)
    run_dir = tmp_path / "killed"
    argv = ["train", "-c", RECIPE, *_sets(*common, "name=killed")]

    def child() -> None:
        torch.set_num_threads(1)
        sys.stderr = open(os.devnull, "w")  # the process ends with os._exit or a kill
        os._exit(main(argv))

    proc = FORK.Process(target=child, daemon=True)
    proc.start()
    seen = None
    deadline = time.time() + 120
    while proc.is_alive() and time.time() < deadline:
        if (run_dir / "last.ckpt").exists():
            tmp = [p.name for p in run_dir.iterdir() if p.name.startswith(".last.ckpt.")]
            if tmp:
                os.kill(proc.pid, signal.SIGKILL)
                seen = tmp
                break
    proc.join()
    assert seen is not None, "the run ended before a checkpoint write could be caught"
    step = load_checkpoint(run_dir / "last.ckpt")["step"]
    assert 1 <= step
    resumed = train(load_config(RECIPE, [*common, "name=killed"]), resume="last")
    assert resumed == full
    assert _final_eval(run_dir) == _final_eval(tmp_path / "full")
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]  # the killed write's file is gone


# ---- a disk that fills during a save -------------------------------------------------------------------------------
def test_a_disk_that_fills_during_a_save_keeps_the_previous_checkpoint_and_says_so(tmp_path: Path) -> None:
    common = [f"out_dir={tmp_path}", "name=full_disk", *TINY]
    train(load_config(RECIPE, [*common, "train.max_steps=1"]))
    last = tmp_path / "full_disk" / "last.ckpt"
    before = last.read_bytes()
    limit = len(before) // 2  # the next checkpoint hits the file-size limit half-way, like a disk that fills
    stderr = tmp_path / "stderr.txt"
    argv = ["train", "-c", RECIPE, *_sets(*common, "train.max_steps=2"), "--resume"]

    def limited() -> None:  # a forked process: the limit is its own
        torch.set_num_threads(1)
        sys.stderr = open(stderr, "w", buffering=1)  # the process ends with os._exit
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        code = main(argv)
        sys.stderr.flush()
        os._exit(code)

    proc = FORK.Process(target=limited)
    proc.start()
    proc.join()
    err = stderr.read_text()
    assert proc.exitcode == 2, err
    assert err.strip().splitlines()[-1] == (f"error: checkpoint {last}: cannot be written (file too large (a "
                                            "file-size limit was reached)); the previous last.ckpt is intact"), err
    assert "Traceback" not in err
    assert last.read_bytes() == before and load_checkpoint(last)["step"] == 1
    assert not [p for p in last.parent.iterdir() if p.name.endswith(".tmp")]


# ---- Ctrl-C mid-epoch --------------------------------------------------------------------------------------------
@dataclass
class _SigintConfig(SupervisedConfig):
    name: str = "sigint_at"
    sigint_step: int = -1  # send SIGINT to this process during this step (-1: never)


@register_method("sigint_at")
class _SigintAt(Supervised):
    """Supervised, but the process sends itself SIGINT (a Ctrl-C) in the middle of a given step."""

    config_class = _SigintConfig

    def forward(self, batch, progress):  # type: ignore[no-untyped-def]
        if progress.step == self.cfg.method.sigint_step and self.training:
            os.kill(os.getpid(), signal.SIGINT)
        return super().forward(batch, progress)


def test_sigint_mid_epoch_stops_after_the_step_and_resume_matches_uninterrupted(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = [f"out_dir={tmp_path}", "method.name=sigint_at", "train.epochs=2", "train.steps_per_epoch=4", *TINY]
    train(load_config(RECIPE, [*common, "name=full"]))
    argv = ["train", "-c", RECIPE, *_sets(*common, "name=stopped")]
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN under nohup, the default handler in a terminal
    assert main([*argv, *_sets("method.sigint_step=5")]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"interrupted: stopped at epoch 1 step 6; {tmp_path / 'stopped' / 'last.ckpt'} holds it: "
                       "continue with --resume"), err
    ckpt = load_checkpoint(tmp_path / "stopped" / "last.ckpt")
    assert (ckpt["epoch"], ckpt["batch_in_epoch"], ckpt["step"]) == (1, 2, 6)  # mid-epoch, after the whole step
    assert signal.getsignal(signal.SIGINT) is before  # the handler is given back
    assert main([*argv, "--resume"]) == 0
    assert _final_eval(tmp_path / "stopped") == _final_eval(tmp_path / "full")
    a = load_checkpoint(tmp_path / "full" / "last.ckpt")["method"]
    b = load_checkpoint(tmp_path / "stopped" / "last.ckpt")["method"]
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---- a NaN loss --------------------------------------------------------------------------------------------------
def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", "-c", RECIPE, *_sets(f"out_dir={tmp_path}", "name=nan", "method.name=nan_after",
                                         "method.bad_step=3", "train.ckpt_every_steps=2", *TINY)]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: non-finite loss at epoch 0 step 3 (") and str(tmp_path / "nan" / "last.ckpt") \
        in err[-1], err
    ckpt = load_checkpoint(tmp_path / "nan" / "last.ckpt")
    assert ckpt["step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["method"].values() if v.is_floating_point())
    method, _ = load_method(tmp_path / "nan" / "last.ckpt")
    assert method is not None
