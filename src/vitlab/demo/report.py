"""The ``vitlab demo`` report: the sections' Markdown joined into ``report.md``, and a self-contained ``report.html``.

Sections return Markdown (headings, paragraphs, tables, images, code, emphasis, lists) whose image paths are relative
to the report's folder. The HTML is rendered with markdown-it-py (CommonMark plus tables; it ships with rich, a vitlab
dependency) and every image is inlined as a ``data:`` URI, so the file can be mailed or opened anywhere. Each section
becomes ``<section class="demo-section" id="section-NAME" data-status="ok|failed">``, which the browser test reads.
"""

from __future__ import annotations

import base64
import html
import mimetypes
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitlab.engine.checkpoint import atomic_write_bytes

INTRO = "Every section trains on bundled data, offline, on this machine."
CSS = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; color: #222;
       line-height: 1.45; }
h1 { border-bottom: 2px solid #ddd; }
section.demo-section { border-top: 1px solid #ddd; margin-top: 2rem; }
section.demo-section[data-status=failed] { border-left: 6px solid #c0392b; padding-left: 1rem; }
table { border-collapse: collapse; margin: 1rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: left; }
th { background: #f3f3f3; }
img { max-width: 100%; border: 1px solid #eee; }
pre { background: #f6f6f6; padding: 0.6rem; overflow-x: auto; font-size: 0.85rem; }
code { background: #f6f6f6; }
.failed { color: #c0392b; font-weight: bold; }
.time { color: #777; font-size: 0.85rem; }
"""


@dataclass
class SectionResult:
    """One section of the report: its Markdown body (or the error it raised) and its wall time."""

    name: str
    title: str
    body: str
    seconds: float
    error: str | None = None  # the exception's one-line summary when the section failed
    cpu_seconds: float | None = None  # CPU time of the process during the section (all threads)

    @property
    def status(self) -> str:
        return "ok" if self.error is None else "failed"


def _summary_rows(results: list[SectionResult]) -> list[str]:
    rows = ["| section | status | time (s) | CPU time (s) |", "|---|---|---|---|"]
    for r in results:
        status = "ok" if r.error is None else f"**FAILED**: {r.error.replace('|', '/')}"
        cpu = "-" if r.cpu_seconds is None else f"{r.cpu_seconds:.0f}"
        rows.append(f"| [{r.name}](#section-{r.name}) | {status} | {r.seconds:.0f} | {cpu} |")
    total, cpu_total = sum(r.seconds for r in results), sum(r.cpu_seconds or 0.0 for r in results)
    rows.append(f"| total | {sum(r.error is None for r in results)} of {len(results)} ok | {total:.0f} | "
                f"{cpu_total:.0f} |")
    return rows


def render_markdown(results: list[SectionResult]) -> str:
    """``report.md``: a title, the summary table, then every section under ``## title``."""
    parts = ["# vitlab demo\n", INTRO + "\n", "\n".join(_summary_rows(results)) + "\n"]
    for r in results:
        parts.append(f'<a id="section-{r.name}"></a>\n\n## {r.title}\n\n{r.body.rstrip()}\n\n_{r.seconds:.0f} s_\n')
    return "\n".join(parts)


def _markdown_renderer() -> Any:
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": True}).enable("table")


def data_uri(path: Path) -> str:
    """The file as a ``data:`` URI (its type guessed from the suffix)."""
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def inline_images(md: Any, text: str, base: Path) -> tuple[str, list[str]]:
    """Render Markdown to HTML with every local image replaced by its data URI; returns (html, missing images)."""
    tokens = md.parse(text)
    missing: list[str] = []
    for token in tokens:
        for child in token.children or []:
            if child.type != "image":
                continue
            src = str(child.attrGet("src") or "")
            if src.startswith(("data:", "http:", "https:")):
                continue
            path = base / src
            if path.is_file():
                child.attrSet("src", data_uri(path))
            else:
                missing.append(src)
    return md.renderer.render(tokens, md.options, {}), missing


def render_html(results: list[SectionResult], base: Path) -> tuple[str, list[str]]:
    """``report.html`` as one string (images inlined from ``base``) and the image paths that were not found."""
    md = _markdown_renderer()
    summary, _ = inline_images(md, "\n".join(_summary_rows(results)), base)
    body, missing = [], []
    for r in results:
        inner, lost = inline_images(md, r.body, base)
        missing += lost
        if lost:
            inner += "".join(f'<p class="failed">missing image: {html.escape(src)}</p>' for src in lost)
        body.append(f'<section class="demo-section" id="section-{html.escape(r.name)}" '
                    f'data-section="{html.escape(r.name)}" data-status="{r.status}">\n'
                    f"<h2>{html.escape(r.title)}</h2>\n{inner}\n"
                    f'<p class="time">{r.seconds:.0f} s</p>\n</section>')
    page = ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>vitlab demo</title>\n"
            f"<style>{CSS}</style>\n</head>\n<body>\n<h1>vitlab demo</h1>\n<p>{html.escape(INTRO)}</p>\n"
            + summary + "\n" + "\n".join(body) + "\n</body>\n</html>\n")
    return page, missing


def timings(results: list[SectionResult]) -> dict[str, Any]:
    """``report.json``: every section's status, wall and CPU seconds, with the machine's load and torch's threads."""
    import os

    import torch

    return {"threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
            "sections": [{"name": r.name, "status": r.status, "seconds": round(r.seconds, 1),
                          "cpu_seconds": None if r.cpu_seconds is None else round(r.cpu_seconds, 1),
                          "error": r.error} for r in results]}


def write_report(out: Path, results: list[SectionResult]) -> tuple[Path, Path, list[str]]:
    """Write ``out/report.md``, ``out/report.html`` and ``out/report.json`` (:func:`timings`) atomically; returns the
    first two paths and the missing images."""
    import json

    md_path, html_path = out / "report.md", out / "report.html"
    page, missing = render_html(results, out)
    for path, text in ((md_path, render_markdown(results)), (html_path, page),
                       (out / "report.json", json.dumps(timings(results), indent=2) + "\n")):
        atomic_write_bytes(text.encode(), path)
        path.chmod(0o644)  # readable like any other file of the run (the temporary file was private)
    return md_path, html_path, missing
