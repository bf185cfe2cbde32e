"""The training engine: loop, checkpoints, schedules, EMA, logging, seeding."""

from vitlab.engine.checkpoint import CheckpointError, load_checkpoint, load_eval_model, load_run_config
from vitlab.engine.trainer import NonFiniteLossError, train

__all__ = ["CheckpointError", "NonFiniteLossError", "load_checkpoint", "load_eval_model", "load_run_config", "train"]
