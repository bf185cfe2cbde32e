"""Rank-0 run logging: ``log.txt``, ``metrics.csv`` (long format: step, epoch, phase, name, value), TensorBoard."""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path
from typing import Any


class RunLogger:
    """Writes to the run folder on rank 0; on other ranks every call is a no-op."""

    FIELDS = ("step", "epoch", "phase", "name", "value")

    def __init__(self, run_dir: Path, enabled: bool, resume_step: int | None = None, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.run_dir = run_dir
        self._tb: Any = None
        self._t0 = time.time()
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = run_dir / "metrics.csv"
        if resume_step is not None and self.csv_path.exists():
            self._truncate_after(resume_step)
        new = not self.csv_path.exists()
        self._csv_file = open(self.csv_path, "a", newline="")
        self._csv = csv.writer(self._csv_file)
        if new:
            self._csv.writerow(self.FIELDS)
        self._log_file = open(run_dir / "log.txt", "a")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(run_dir / "tb"), purge_step=resume_step)
            except ImportError:
                self._tb = None

    def _truncate_after(self, step: int) -> None:
        """Drop rows written after ``step`` by a run that was killed, so a resumed run's CSV has no duplicates."""
        with open(self.csv_path, newline="") as f:
            rows = list(csv.reader(f))
        if not rows:
            return
        keep = [rows[0]] + [r for r in rows[1:] if len(r) == len(self.FIELDS) and r[0].isdigit() and int(r[0]) <= step
                            and _is_number(r[4])]
        with open(self.csv_path, "w", newline="") as f:
            csv.writer(f).writerows(keep)

    def info(self, message: str) -> None:
        if not self.enabled:
            return
        line = f"[{time.strftime('%H:%M:%S')}] {message}"
        print(line, file=sys.stderr, flush=True)
        self._log_file.write(line + "\n")
        self._log_file.flush()

    def metrics(self, step: int, epoch: int, phase: str, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        for name, value in values.items():
            self._csv.writerow((step, epoch, phase, name, f"{float(value):.6g}"))
            if self._tb is not None:
                self._tb.add_scalar(f"{phase}/{name}", float(value), step)
        self._csv_file.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        self._csv_file.close()
        self._log_file.close()
        if self._tb is not None:
            self._tb.close()


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """Rows of a run's ``metrics.csv`` as dicts with typed values."""
    with open(Path(run_dir) / "metrics.csv", newline="") as f:
        return [{"step": int(r["step"]), "epoch": int(r["epoch"]), "phase": r["phase"], "name": r["name"],
                 "value": float(r["value"])} for r in csv.DictReader(f)]
