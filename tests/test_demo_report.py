"""The demo report without training: report.md and a self-contained report.html from the sections' Markdown, a
failing section shown with its error while the others still run (exit 1), a missing image or a broken section module
counted as a failure."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest

import vitlab.demo as demo
from vitlab.cli import main
from vitlab.demo import DemoSection
from vitlab.demo.report import SectionResult, render_html, render_markdown


def _png(path: Path, size: tuple[int, int] = (6, 4)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, (255, 0, 0)).save(buffer, format="PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


BODY = ("Some *emphasis*, `code` and a list:\n\n- one\n- two\n\n| method | top-1 (%) |\n|---|---|\n| ours | 91.0 |\n"
        "| baseline | 80.5 |\n\n```\nvitlab train -c x.yaml\n```\n\n### A subheading\n\n![a plot](good/plot.png)\n")


def _good(folder: Path, quick: bool) -> str:
    _png(folder / "plot.png")
    return BODY.replace("good/plot.png", f"{folder.name}/plot.png")


def _broken(folder: Path, quick: bool) -> str:
    raise RuntimeError("the broken section's message")


def _no_image(folder: Path, quick: bool) -> str:
    return "A plot that was never written:\n\n![lost](no_image/lost.png)\n"


def _sections(monkeypatch: pytest.MonkeyPatch, *sections: DemoSection) -> None:
    monkeypatch.setattr(demo, "load_sections", lambda: list(sections))


def test_html_inlines_images_and_renders_the_markdown_subset(tmp_path: Path) -> None:
    png = _png(tmp_path / "good" / "plot.png")
    results = [SectionResult("good", "A good section", BODY, 3.2)]
    page, missing = render_html(results, tmp_path)
    assert missing == []
    assert f'src="data:image/png;base64,{base64.b64encode(png).decode()}"' in page
    assert "good/plot.png" not in page  # nothing points outside the file
    for fragment in ("<em>emphasis</em>", "<code>code</code>", "<li>one</li>", "<th>method</th>", "<td>80.5</td>",
                     "<pre><code>vitlab train -c x.yaml", "<h3>A subheading</h3>", "<h2>A good section</h2>",
                     '<section class="demo-section" id="section-good" data-section="good" data-status="ok">'):
        assert fragment in page, fragment
    markdown = render_markdown(results)
    assert "## A good section" in markdown and "| [good](#section-good) | ok | 3 | - |" in markdown


def test_a_failing_section_is_reported_and_the_others_still_run(tmp_path: Path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    _sections(monkeypatch, DemoSection("first", "First", _good), DemoSection("broken", "Broken", _broken),
              DemoSection("good", "Good after the failure", _good))
    assert main(["demo", "--out", str(tmp_path)]) == 1
    assert "broken" in capsys.readouterr().err.splitlines()[-1]
    report = (tmp_path / "report.md").read_text()
    page = (tmp_path / "report.html").read_text()
    assert "## First" in report and "## Good after the failure" in report
    assert "RuntimeError: the broken section's message" in report  # in the summary and the traceback
    assert "| [broken](#section-broken) | **FAILED**: RuntimeError: the broken section's message |" in report
    assert 'data-section="broken" data-status="failed"' in page and page.count('data-status="ok"') == 2
    assert "the broken section&#x27;s message" in page or "the broken section's message" in page
    timings = json.loads((tmp_path / "report.json").read_text())
    assert [(t["name"], t["status"]) for t in timings["sections"]] == [("first", "ok"), ("broken", "failed"),
                                                                      ("good", "ok")]
    assert all(t["seconds"] >= 0 and t["cpu_seconds"] >= 0 for t in timings["sections"])


def test_a_missing_image_fails_its_section(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    _sections(monkeypatch, DemoSection("no_image", "No image", _no_image))
    tour = demo.run_tour(tmp_path)
    assert tour.failed == ["no_image"]
    assert "no_image/lost.png" in tour.sections[0].error  # type: ignore[operator]


def test_a_section_module_that_fails_to_import_is_a_failed_section(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(demo, "SECTION_MODULES", ("no_such_section_module",))
    names = [s.name for s in demo.load_sections()]
    assert "no_such_section_module" in names
    broken = next(s for s in demo.load_sections() if s.name == "no_such_section_module")
    with pytest.raises(ImportError, match="no_such_section_module"):
        broken.run(tmp_path, True)
