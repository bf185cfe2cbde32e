"""The on-disk cache of generated data sets: keyed by generator version and parameters, verified, written atomically.

A cache file is an uncompressed ``.npz`` holding the arrays plus a JSON header with the key parameters and a SHA-256
of every array. A file whose header, key or checksums do not match is rebuilt, never used.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

_HEADER = "__header__"


def cache_dir() -> Path:
    """Where generated data sets are cached: ``$VITLAB_CACHE`` or ``~/.cache/vitlab``."""
    env = os.environ.get("VITLAB_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "vitlab"


def cache_key(params: dict[str, Any]) -> str:
    """A short stable hash of JSON-serialisable ``params`` (which include the generator's version)."""
    blob = json.dumps(params, sort_keys=True, ensure_ascii=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _header(params: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    return {
        "params": json.loads(json.dumps(params, sort_keys=True)),  # tuples become lists, as after a round trip
        "arrays": {name: {"dtype": str(a.dtype), "shape": list(a.shape), "sha256": _digest(a)}
                   for name, a in sorted(arrays.items())},
    }


def write_arrays(path: Path, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` and their header to ``path`` atomically (a temporary file, then ``os.replace``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = np.frombuffer(json.dumps(_header(params, arrays), sort_keys=True).encode(), dtype=np.uint8)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            # numpy's stub types the keyword arrays as its own `allow_pickle` flag.
            np.savez(handle, **{_HEADER: header, **arrays})  # type: ignore[arg-type]
        os.chmod(tmp, 0o644)  # mkstemp makes the file private; the cache is plain data, readable like any other
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_arrays(path: Path, params: dict[str, Any]) -> tuple[dict[str, np.ndarray] | None, str]:
    """The arrays cached at ``path`` if its header matches ``params`` and every checksum holds.

    Returns ``(arrays, "")`` or ``(None, reason)`` where the reason says why the file cannot be used.
    """
    if not path.is_file():
        return None, "not built yet"
    try:
        with np.load(path, allow_pickle=False) as archive:
            loaded = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        return None, f"unreadable ({type(exc).__name__}: {exc})"
    raw_header = loaded.pop(_HEADER, None)
    if raw_header is None:
        return None, "no header"
    try:
        header = json.loads(raw_header.tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None, "corrupt header"
    expected = _header(params, loaded)
    if header.get("params") != expected["params"]:
        return None, "built with other parameters"
    if header != expected:
        return None, "checksum or shape mismatch"
    return loaded, ""


def cached_arrays(name: str, params: dict[str, Any],
                  build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Load the arrays of the generated set ``name`` from the cache, or build, verify-write and return them.

    The file name carries a hash of ``params`` (generator version included), so a new version or new parameters
    build a new file; a file that fails verification is rebuilt with a note on stderr.
    """
    path = cache_dir() / f"{name}-{cache_key(params)}.npz"
    arrays, reason = read_arrays(path, params)
    if arrays is not None:
        return arrays
    if path.exists():
        print(f"vitlab: cache file {path} is {reason}; rebuilding it", file=sys.stderr, flush=True)
    arrays = build()
    try:
        write_arrays(path, params, arrays)
    except OSError as exc:  # a read-only or full disk costs a rebuild next time, not the run
        print(f"vitlab: cannot write the cache file {path} ({exc}); set VITLAB_CACHE to a writable folder",
              file=sys.stderr, flush=True)
    return arrays
