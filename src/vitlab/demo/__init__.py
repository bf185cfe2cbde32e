"""``vitlab demo``: a tour of the methods on bundled data, written as ``report.md`` and a self-contained
``report.html``.

One module per section (``vitlab.demo.<section>``); each registers itself with :func:`demo_section`, trains briefly
with a bundled recipe and returns Markdown (images as paths relative to the report folder). ``quick`` shortens every
section (the tests use it). :data:`SECTION_MODULES` fixes the order of the report. A section that raises (or whose
module fails to import, or whose Markdown names an image it did not write) is shown in the report with its error;
the other sections still run, and :func:`run_tour` lists the failures (``vitlab demo`` then exits 1).
"""

from __future__ import annotations

import importlib
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from vitlab.demo.report import SectionResult, write_report
from vitlab.demo.sections import SECTIONS, DemoSection, demo_section, plot_training_curves, recipe_path
from vitlab.errors import ConfigError

__all__ = ["SECTIONS", "SECTION_MODULES", "DemoSection", "TourResult", "demo_section", "load_sections",
           "plot_training_curves", "recipe_path", "run_demo", "run_tour"]

SECTION_MODULES = ("supervised", "iformer", "robust", "hat", "video", "clusterq", "mugs", "sun", "transzero", "rift",
                   "ar")


def _import_failure(name: str, trace: str) -> DemoSection:
    def run(folder: Path, quick: bool) -> str:
        raise ImportError(f"vitlab.demo.{name} failed to import:\n{trace}")

    return DemoSection(name, f"{name} (module failed to import)", run)


def load_sections() -> list[DemoSection]:
    """Import every section module (each registers itself) and return the sections in report order; a module that
    fails to import becomes a section that fails with its traceback."""
    broken = []
    for name in SECTION_MODULES:
        try:
            importlib.import_module(f"vitlab.demo.{name}")
        except Exception:
            broken.append(_import_failure(name, traceback.format_exc(limit=5)))
    order = {name: i for i, name in enumerate(SECTION_MODULES)}
    return sorted([*SECTIONS, *broken], key=lambda s: order.get(s.name, len(order)))


@dataclass
class TourResult:
    report_md: Path
    report_html: Path
    sections: list[SectionResult] = field(default_factory=list)

    @property
    def failed(self) -> list[str]:
        return [s.name for s in self.sections if s.error is not None]


def _missing_images(body: str, out: Path) -> list[str]:
    from markdown_it import MarkdownIt

    tokens = MarkdownIt("commonmark").enable("table").parse(body)
    srcs = [str(c.attrGet("src")) for t in tokens for c in (t.children or []) if c.type == "image"]
    return [s for s in srcs if not s.startswith(("data:", "http:", "https:")) and not (out / s).is_file()]


def _run_section(section: DemoSection, out: Path, quick: bool) -> SectionResult:
    folder = out / section.name
    folder.mkdir(parents=True, exist_ok=True)
    t0, cpu0 = time.time(), time.process_time()
    try:
        body = section.run(folder, quick)
        missing = _missing_images(body, out)
        if missing:
            raise FileNotFoundError(f"section {section.name} names image(s) it did not write: {', '.join(missing)}")
        return SectionResult(section.name, section.title, body, time.time() - t0,
                             cpu_seconds=time.process_time() - cpu0)
    except Exception as exc:
        seconds = time.time() - t0
        error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
        body = ("<p class=\"failed\">This section failed.</p>\n\n```\n" + traceback.format_exc(limit=8) + "```\n")
        return SectionResult(section.name, section.title, body, seconds, error=error,
                             cpu_seconds=time.process_time() - cpu0)


def run_tour(out: Path, quick: bool = False, sections: list[str] | None = None) -> TourResult:
    """Run the tour (or the named sections), one progress bar per section; writes ``out/report.md`` and
    ``out/report.html`` after every section (so an interrupted tour leaves a report of what ran)."""
    from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

    sections_in_order = load_sections()
    known = [s.name for s in sections_in_order]
    if sections:
        unknown = [s for s in sections if s not in known]
        if unknown:
            raise ConfigError(f"--only: unknown section(s) {unknown} (available: {', '.join(known)})")
        sections_in_order = [s for s in sections_in_order if s.name in sections]
    out.mkdir(parents=True, exist_ok=True)
    result = TourResult(out / "report.md", out / "report.html")
    columns = (SpinnerColumn(), TextColumn("{task.description:<12}"), BarColumn(), TextColumn("{task.fields[note]}"),
               TimeElapsedColumn())
    with Progress(*columns) as progress:
        # the bar of a running section advances with its wall time against the section's expected seconds
        tasks = {s.name: progress.add_task(s.name, total=s.seconds, note=f"~{s.seconds:.0f} s", start=False)
                 for s in sections_in_order}
        for section in sections_in_order:
            task = tasks[section.name]
            progress.start_task(task)
            done = threading.Event()
            t0 = time.time()

            def tick(task: TaskID = task, expected: float = section.seconds, t0: float = t0,
                     done: threading.Event = done) -> None:
                while not done.wait(0.5):
                    progress.update(task, completed=min(time.time() - t0, 0.99 * expected))

            ticker = threading.Thread(target=tick, daemon=True)
            ticker.start()
            try:
                outcome = _run_section(section, out, quick)
            finally:
                done.set()
                ticker.join()
            note = f"ok, {outcome.seconds:.0f} s" if outcome.error is None else f"FAILED: {outcome.error}"[:60]
            progress.update(task, total=section.seconds, completed=section.seconds, note=note)
            progress.stop_task(task)
            progress.console.print(f"{section.name}: {note}")
            result.sections.append(outcome)
            write_report(out, result.sections)
    if not result.sections:
        write_report(out, [])
    return result


def run_demo(out: Path, quick: bool = False, sections: list[str] | None = None) -> Path:
    """Run the tour (or the named sections) and write ``out/report.md`` and ``out/report.html``; returns the
    Markdown's path. Failed sections are in the report (see :func:`run_tour` for the list)."""
    return run_tour(out, quick, sections).report_md
