"""docs/api.md: every Python example runs, in order in one namespace, and prints what the page shows (issue 20)."""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def _examples() -> list[tuple[str, str]]:
    """(code, printed output) pairs: each python block and the text block right after it."""
    pairs = re.findall(r"```python\n(.*?)```\n\n```text\n(.*?)```", DOC.read_text(), re.DOTALL)
    assert len(pairs) == 5, "docs/api.md: expected the setup and one example per API function"
    return pairs


@pytest.mark.slow
def test_the_api_examples_print_what_the_page_shows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """About a minute on 2 CPU cores (a ResNet-18 attacked, filtered and embedded, a tiny ClusterQ run)."""
    monkeypatch.chdir(tmp_path)  # the quantize example writes runs/api here
    namespace: dict[str, object] = {}
    for code, expected in _examples():
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, str(DOC), "exec"), namespace)  # noqa: S102  (the page's own examples)
        printed = [line for line in out.getvalue().splitlines() if not line.startswith("[")]  # engine log lines
        assert printed == expected.strip().splitlines(), code


def test_import_vitlab_imports_no_api_module() -> None:
    """A fresh interpreter: ``import vitlab`` imports neither the API modules nor torch (a fraction of a second)."""
    modules = ("torch", "timm", "vitlab.models", "vitlab.api",
               "vitlab.attacks.command", "vitlab.quant.command", "vitlab.analysis.command",
               "vitlab.evaluation.episodes_command")
    code = f"import sys, vitlab; print([m for m in {modules!r} if m in sys.modules])"
    src = str(Path(__file__).resolve().parents[1] / "src")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={"PYTHONPATH": src, "PATH": "/usr/bin:/bin"})
    assert result.stdout.strip() == "[]"


def test_the_api_names_resolve_and_are_documented() -> None:
    import vitlab

    text = "".join(code for code, _ in _examples())
    for name in ("attack", "quantize", "frequency_analysis", "episodes"):
        assert callable(getattr(vitlab, name)) and name in dir(vitlab)
        assert f"vitlab.{name}(" in text, name
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        vitlab.nothing  # noqa: B018


def test_the_outside_model_run_on_the_page_is_the_recorded_one() -> None:
    """docs/api.md shows results/outside_model.txt, the output of experiments/outside_model.sh, as it is."""
    recorded = (DOC.parents[1] / "results" / "outside_model.txt").read_text().rstrip("\n")
    assert f"```console\n{recorded}\n```" in DOC.read_text()
    assert "bash experiments/outside_model.sh" in DOC.read_text()
    for line in ("error: --weights lenet5.pt: does not fit CifarResNet: ", "robust accuracy", "wrote int8/model_int8"):
        assert line in recorded
