"""``vitlab data``: the data sets ``--data`` accepts, with their splits, sizes and classes (nothing is loaded)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("The bundled data sets (sizes and classes as recorded; nothing is loaded) and the formats "
                          "you bring with --data-root.")


def run(args: argparse.Namespace) -> int:
    from vitlab.data.catalog import catalog_lines

    for line in catalog_lines():
        print(line)
    return 0
