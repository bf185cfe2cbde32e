"""``python -m vitlab`` (and ``torchrun -m vitlab``) runs the command line."""

from vitlab.cli import entry

entry()
