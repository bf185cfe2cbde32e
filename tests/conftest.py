"""Test-session settings: a private data cache (bundled sets are built once per session), few threads, no GPU."""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

_CACHE = tempfile.mkdtemp(prefix="vitlab-test-cache-")
os.environ.setdefault("VITLAB_CACHE", _CACHE)
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

from dataclasses import dataclass  # noqa: E402
from functools import partial  # noqa: E402

from vitlab.engine.optim import PlainStepHelper, build_optimizer  # noqa: E402
from vitlab.methods.base import register_method  # noqa: E402
from vitlab.methods.supervised import Supervised, SupervisedConfig  # noqa: E402


@dataclass
class NanAfterConfig(SupervisedConfig):
    name: str = "nan_after"
    bad_step: int = 4


@register_method("nan_after")
class NanAfter(Supervised):
    """Supervised, but the loss is NaN from ``method.bad_step`` on (the engine's non-finite stop, in
    tests/engine/test_trainer.py and tests/test_faults.py)."""

    config_class = NanAfterConfig

    def forward(self, batch, progress):  # type: ignore[no-untyped-def]
        out = super().forward(batch, progress)
        if progress.step >= self.cfg.method.bad_step:
            out["loss"] = out["loss"] * float("nan")
        return out


class FakeStepHelper(PlainStepHelper):
    """The step helper tests hand a manual-optimisation method: the engine's contract without Fabric (plain backward,
    optional global-norm clip, step, ``lr × lr_scale``), counting backward passes and optimizer steps."""

    def __init__(self, optimizers=None, clip_grad=None):
        super().__init__(optimizers, clip_grad)
        self.backwards, self.steps = 0, 0

    @classmethod
    def for_method(cls, method, clip_grad=None):
        """A helper over ``method``'s own optimizers, built as the engine builds them (its ``optim`` section)."""
        return cls(method.configure_optimizers(partial(build_optimizer, method.cfg)), clip_grad)

    def backward(self, loss, model=None):
        self.backwards += 1
        super().backward(loss, model)

    def step(self, optimizer):
        self.steps += 1
        super().step(optimizer)


@pytest.fixture
def step_helper():
    """``step_helper(method)``: a :class:`FakeStepHelper` over the method's optimizers (``.optimizers[name]``)."""
    return FakeStepHelper.for_method


@pytest.fixture
def chromium(request: pytest.FixtureRequest) -> str:
    """The headless browser of ``browser`` tests: skipped when there is none, a failure under ``make test-all``
    (``VITLAB_REQUIRE_BROWSER=1``, or ``-m ''``), which installs it first."""
    from vitlab.demo.browser import find_chromium

    path = find_chromium()
    if path is None:
        message = "no Chromium (set VITLAB_CHROMIUM, or `make browser` installs Debian's chromium)"
        if os.environ.get("VITLAB_REQUIRE_BROWSER") == "1" or request.config.getoption("markexpr") == "":
            pytest.fail(message + ": browser tests are required here")
        pytest.skip(message)
    return path


def _threads() -> int:
    """Two intra-op threads on a quiet 2-core machine; one when the CPU is oversubscribed (spinning OpenMP threads
    that get preempted make every op many times slower)."""
    cores = os.cpu_count() or 1
    return 1 if os.getloadavg()[0] > cores else min(2, cores)


@pytest.fixture(autouse=True)
def _threads_per_test():
    import torch

    torch.set_num_threads(_threads())
    yield


def write_mp4(path: Path, frames: np.ndarray, fps: int = 10) -> None:
    """uint8 (T, H, W, 3) → an mp4 (mpeg4, lossy) written with PyAV."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _make_video_folder(root: Path, num_frames: int = 12, size: tuple[int, int] = (40, 48)) -> dict[str, int]:
    """Four tiny videos in two classes (bright / dark), with train.csv (names, header) and val.txt (indices)."""
    rng = np.random.default_rng(0)
    levels = {"bright": 200, "dark": 40}
    for split, count in (("train", 2), ("val", 1)):
        for name, level in levels.items():
            for k in range(count):
                noise = rng.integers(-20, 20, size=(num_frames, *size, 3))
                write_mp4(root / "videos" / split / f"{name}{k}.mp4", np.clip(level + noise, 0, 255).astype(np.uint8))
    (root / "train.csv").write_text("path,label\n" + "".join(
        f"{split}/{name}{k}.mp4,{name}\n" for split in ("train",) for name in levels for k in range(2)))
    (root / "val.txt").write_text("val/dark0.mp4 1\nval/bright0.mp4 0\n")
    return {"bright": 0, "dark": 1}


@pytest.fixture
def make_video_folder():
    """``make_video_folder(root, num_frames=12, size=(40, 48))``: a tiny Kinetics-style video folder (see above)."""
    return _make_video_folder


@pytest.fixture(scope="session")
def load_script():
    """``load_script("experiments/x.py")``: a script of this repository loaded as a module, without running its main."""
    root = Path(__file__).resolve().parents[1]

    def load(relpath: str):
        path = root / relpath
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
