from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vitlab.data import cache_dir
from vitlab.data.cache import cache_key, cached_arrays, read_arrays, write_arrays


class CountingBuilder:
    def __init__(self, seed: int = 0) -> None:
        self.calls = 0
        self.seed = seed

    def __call__(self) -> dict[str, np.ndarray]:
        self.calls += 1
        rng = np.random.default_rng(self.seed)
        return {"images": rng.integers(0, 255, (5, 1, 4, 4), dtype=np.uint8), "labels": np.arange(5)}


def test_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VITLAB_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("VITLAB_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "vitlab"


def test_built_once_then_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VITLAB_CACHE", str(tmp_path))
    build = CountingBuilder()
    params = {"version": 1, "size": 4}
    first = cached_arrays("toy", params, build)
    second = cached_arrays("toy", params, build)
    assert build.calls == 1
    assert all(np.array_equal(first[k], second[k]) for k in first)
    assert [p.name for p in tmp_path.iterdir()] == [f"toy-{cache_key(params)}.npz"]


def test_new_version_or_parameters_build_a_new_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VITLAB_CACHE", str(tmp_path))
    build = CountingBuilder()
    cached_arrays("toy", {"version": 1}, build)
    cached_arrays("toy", {"version": 2}, build)
    cached_arrays("toy", {"version": 1, "size": 8}, build)
    assert build.calls == 3 and len(list(tmp_path.iterdir())) == 3
    assert cache_key({"a": 1, "b": (1, 2)}) == cache_key({"b": [1, 2], "a": 1})


@pytest.mark.parametrize("damage", ["truncate", "flip_byte", "garbage", "stale_header"])
def test_damaged_or_stale_file_is_rebuilt(damage: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("VITLAB_CACHE", str(tmp_path))
    params = {"version": 1}
    good = cached_arrays("toy", params, CountingBuilder())
    path = tmp_path / f"toy-{cache_key(params)}.npz"
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "flip_byte":
        # Flip a byte of the "images" payload: the zip still opens, only the checksum can tell.
        offset = bytes(data).index(good["images"].tobytes()[:16])
        data[offset] ^= 0x01
        path.write_bytes(bytes(data))
    elif damage == "garbage":
        path.write_bytes(b"not a cache file")
    else:  # a file at the right name whose header says it was built with other parameters
        write_arrays(path, {"version": 0}, good)
    assert read_arrays(path, params)[0] is None
    build = CountingBuilder()
    rebuilt = cached_arrays("toy", params, build)
    assert build.calls == 1 and "rebuilding" in capsys.readouterr().err
    assert np.array_equal(rebuilt["images"], good["images"])
    assert read_arrays(path, params)[0] is not None


def test_unwritable_cache_still_returns_the_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv("VITLAB_CACHE", str(blocker / "cache"))  # a folder inside a file cannot be created
    arrays = cached_arrays("toy", {"version": 1}, CountingBuilder())
    assert arrays["images"].shape == (5, 1, 4, 4)
    assert "cannot write the cache file" in capsys.readouterr().err


def test_interrupted_write_leaves_neither_file_nor_temporary(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VITLAB_CACHE", str(tmp_path))
    target = tmp_path / "toy.npz"
    write_arrays(target, {"version": 1}, CountingBuilder(seed=1)())
    before = target.read_bytes()

    def interrupted(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("vitlab.data.cache.os.replace", interrupted)
    with pytest.raises(OSError, match="disk full"):
        write_arrays(target, {"version": 1}, CountingBuilder(seed=2)())
    assert [p.name for p in tmp_path.iterdir()] == ["toy.npz"] and target.read_bytes() == before
