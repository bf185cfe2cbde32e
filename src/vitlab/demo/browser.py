"""Open a ``vitlab demo`` report in headless Chromium: check that every section and every image is there and loaded,
and save a screenshot.

The report's folder is served on 127.0.0.1 (an ephemeral port, this process only). A small checking page, served
from memory, loads ``report.html`` in a same-origin iframe and, once it has loaded
(images included), writes what it finds (every ``section.demo-section`` with its status and heading, every ``<img>``
with ``complete``, ``naturalWidth`` and whether its source is an inlined ``data:`` URI) into its own DOM, which
Chromium prints with ``--dump-dom``. No browser-automation package is needed; Debian's ``chromium`` is enough
(``make browser`` installs it).

Run: ``python -m vitlab.demo.browser runs/demo/report.html --screenshot runs/demo/report.png``
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import html
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHECK_PAGE = "_vitlab_browser_check.html"
CHECK_HTML = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>report check</title></head><body>
<pre id="result">pending</pre>
<iframe id="report" src="REPORT" style="width:1200px;height:900px"></iframe>
<script>
document.getElementById("report").addEventListener("load", function () {
  var doc = this.contentDocument;
  var sections = Array.prototype.map.call(doc.querySelectorAll("section.demo-section"), function (s) {
    var h = s.querySelector("h2");
    return {name: s.dataset.section, status: s.dataset.status, title: h ? h.textContent : null,
            images: s.querySelectorAll("img").length};
  });
  var images = Array.prototype.map.call(doc.images, function (img) {
    return {alt: img.alt, complete: img.complete, naturalWidth: img.naturalWidth, naturalHeight: img.naturalHeight,
            inlined: img.getAttribute("src").indexOf("data:") === 0};
  });
  document.getElementById("result").textContent = JSON.stringify({title: doc.title, sections: sections,
                                                                   images: images});
});
</script></body></html>
"""


class BrowserError(RuntimeError):
    """Chromium is missing, failed, or printed no result."""


def find_chromium() -> str | None:
    """The Chromium executable: ``$VITLAB_CHROMIUM``, else the first of :data:`CANDIDATES` on the PATH."""
    explicit = os.environ.get("VITLAB_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


class _ReportHandler(SimpleHTTPRequestHandler):
    """Files of the report's folder, plus the checking page (from memory: nothing is written next to the report)."""

    def __init__(self, *args: Any, check_page: bytes, **kwargs: Any) -> None:
        self.check_page = check_page
        super().__init__(*args, **kwargs)

    def do_GET(self) -> None:  # noqa: N802 - the base class's name
        if self.path != "/" + CHECK_PAGE:
            return super().do_GET()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(self.check_page)))
        self.end_headers()
        self.wfile.write(self.check_page)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass


@contextlib.contextmanager
def serve(folder: Path, check_page: bytes = b"") -> Iterator[str]:
    """Serve ``folder`` (and ``/_vitlab_browser_check.html``) on 127.0.0.1 while the context is open; yields the
    base URL."""
    handler = functools.partial(_ReportHandler, directory=str(folder), check_page=check_page)
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _chromium(chromium: str, *args: str, timeout: float) -> str:
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--no-first-run", "--disable-extensions", "--hide-scrollbars", *args]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise BrowserError(f"{chromium} did not finish in {timeout:.0f} s") from exc
    if done.returncode != 0:
        raise BrowserError(f"{chromium} exited {done.returncode}: {done.stderr.strip()[-500:]}")
    return done.stdout


def check_report(report: Path, screenshot: Path | None = None, chromium: str | None = None,
                 timeout: float = 60.0) -> dict[str, Any]:
    """Load ``report`` (an HTML file) in headless Chromium; returns ``{"title", "sections": [{"name", "status",
    "title", "images"}], "images": [{"alt", "complete", "naturalWidth", "naturalHeight", "inlined"}]}`` as the
    browser saw it, and writes a full-page-width screenshot to ``screenshot`` if given."""
    chromium = chromium or find_chromium()
    if chromium is None:
        raise BrowserError("no Chromium found (tried $VITLAB_CHROMIUM, " + ", ".join(CANDIDATES)
                           + "); `make browser` installs Debian's chromium")
    report = report.resolve()
    if not report.is_file():
        raise FileNotFoundError(f"{report} not found")
    page = CHECK_HTML.replace("REPORT", html.escape(report.name)).encode()
    with serve(report.parent, page) as base:
        dom = _chromium(chromium, "--virtual-time-budget=20000", "--dump-dom", base + CHECK_PAGE, timeout=timeout)
        if screenshot is not None:
            screenshot = screenshot.resolve()
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            _chromium(chromium, "--window-size=1280,2400", f"--screenshot={screenshot}", base + report.name,
                      timeout=timeout)
            if not screenshot.is_file():
                raise BrowserError(f"{chromium} wrote no screenshot to {screenshot}")
    start, end = dom.find('<pre id="result">'), dom.find("</pre>")
    text = html.unescape(dom[start + len('<pre id="result">'):end]) if 0 <= start < end else ""
    if not text or text == "pending":
        raise BrowserError(f"the check page printed no result (report {report}); DOM: {dom[:300]!r}")
    return json.loads(text)  # type: ignore[no-any-return]


def problems(seen: dict[str, Any], expected_sections: list[str] | None = None) -> list[str]:
    """What is wrong with a report as :func:`check_report` saw it: missing or failed sections, images not loaded
    or not inlined. Empty when all is well."""
    found = [s["name"] for s in seen["sections"]]
    issues = [f"section {name} missing" for name in (expected_sections or []) if name not in found]
    issues += [f"section {s['name']} failed" for s in seen["sections"] if s["status"] != "ok"]
    for i, img in enumerate(seen["images"]):
        if not (img["complete"] and img["naturalWidth"] > 0):
            issues.append(f"image {i} ({img['alt']!r}) not loaded")
        if not img["inlined"]:
            issues.append(f"image {i} ({img['alt']!r}) not inlined as a data: URI")
    if not found:
        issues.append("no section in the report")
    return issues


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("report", help="report.html written by vitlab demo")
    p.add_argument("--screenshot", default=None, help="PNG file for a screenshot of the report")
    args = p.parse_args(argv)
    try:
        seen = check_report(Path(args.report), Path(args.screenshot) if args.screenshot else None)
    except (BrowserError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    issues = problems(seen)
    loaded = sum(img["complete"] and img["naturalWidth"] > 0 for img in seen["images"])
    print(f"{args.report}: {len(seen['sections'])} sections ({', '.join(s['name'] for s in seen['sections'])}), "
          f"{loaded} of {len(seen['images'])} images loaded" + (f"; screenshot {args.screenshot}" if args.screenshot
                                                               else ""))
    for issue in issues:
        print(f"error: {issue}", file=sys.stderr)
    return 1 if issues else 0


if __name__ == "__main__":
    sys.exit(main())
