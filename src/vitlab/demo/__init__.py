"""``vitlab demo``: a tour of the methods on bundled data, written as ``report.md`` with tables and plots.

One module per section (``vitlab.demo.<section>``); each trains briefly with a bundled recipe and returns Markdown.
``quick`` shortens every section (the tests use it). :data:`SECTION_MODULES` fixes the order of the report.
"""

from __future__ import annotations

import importlib
import time
import traceback
from pathlib import Path

from vitlab.demo.sections import SECTIONS, DemoSection, demo_section, plot_training_curves, recipe_path
from vitlab.errors import ConfigError

__all__ = ["SECTIONS", "SECTION_MODULES", "DemoSection", "demo_section", "load_sections", "plot_training_curves",
           "recipe_path", "run_demo"]

SECTION_MODULES = ("supervised", "iformer", "robust", "hat", "video", "clusterq", "mugs", "sun")


def load_sections() -> list[DemoSection]:
    """Import every section module (each registers itself) and return the sections in report order."""
    for name in SECTION_MODULES:
        importlib.import_module(f"vitlab.demo.{name}")
    return sorted(SECTIONS, key=lambda s: SECTION_MODULES.index(s.name) if s.name in SECTION_MODULES else
                  len(SECTION_MODULES))


def run_demo(out: Path, quick: bool = False, sections: list[str] | None = None) -> Path:
    """Run the tour (or the named sections) and write ``out/report.md``; returns its path."""
    sections_in_order = load_sections()
    known = [s.name for s in sections_in_order]
    if sections:
        unknown = [s for s in sections if s not in known]
        if unknown:
            raise ConfigError(f"--only: unknown section(s) {unknown} (available: {', '.join(known)})")
    out.mkdir(parents=True, exist_ok=True)
    parts = ["# vitlab demo\n", "Every section trains on bundled data, offline, on this machine.\n"]
    for section in sections_in_order:
        if sections and section.name not in sections:
            continue
        folder = out / section.name
        folder.mkdir(parents=True, exist_ok=True)
        print(f"== {section.title}", flush=True)
        t0 = time.time()
        try:
            body = section.run(folder, quick)
        except Exception:
            body = "**This section failed:**\n\n```\n" + traceback.format_exc(limit=5) + "```\n"
            (out / "report.md").write_text("\n".join(parts + [f"## {section.title}\n", body]))
            raise
        parts.append(f"## {section.title}\n\n{body}\n_{time.time() - t0:.0f} s_\n")
    report = out / "report.md"
    report.write_text("\n".join(parts))
    return report
