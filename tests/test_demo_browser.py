"""The demo report in a real browser: two cheap sections in quick mode, then report.html opened in headless Chromium
(every section present, every image loaded and inlined) and a screenshot saved. Marked ``browser``: skipped without
Chromium, required by ``make test-all`` (which installs it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vitlab.cli import main
from vitlab.demo.browser import check_report, problems

SECTIONS = ["hat", "ar"]  # both quick (a few seconds each) and both with a plot


@pytest.mark.browser
def test_report_opens_in_chromium_with_every_section_and_image(tmp_path: Path, chromium: str) -> None:
    assert main(["demo", "--quick", "--out", str(tmp_path), *(f"--only={s}" for s in SECTIONS)]) == 0
    shot = tmp_path / "report.png"
    seen = check_report(tmp_path / "report.html", screenshot=shot, chromium=chromium)
    assert [s["name"] for s in seen["sections"]] == SECTIONS
    assert all(s["status"] == "ok" and s["images"] >= 1 for s in seen["sections"])
    assert len(seen["images"]) == 2 and all(img["naturalWidth"] > 100 for img in seen["images"])
    assert problems(seen, SECTIONS) == []
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")


@pytest.mark.browser
def test_the_browser_check_sees_a_broken_image(tmp_path: Path, chromium: str) -> None:
    (tmp_path / "report.html").write_text(
        '<html><body><section class="demo-section" data-section="x" data-status="ok"><h2>x</h2>'
        '<img alt="gone" src="gone.png"></section></body></html>')
    seen = check_report(tmp_path / "report.html", chromium=chromium)
    assert problems(seen, ["x", "y"]) == ["section y missing", "image 0 ('gone') not loaded",
                                          "image 0 ('gone') not inlined as a data: URI"]
