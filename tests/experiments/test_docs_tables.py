"""No figure typed in by hand: every measured table in docs/ is the output of ``python experiments/tables.py NAME``
on the committed result files under results/, and the docs say so beside it."""

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MARKER = re.compile(r"`python experiments/tables\.py (\w+)`")
# Tables that describe the code (settings, files, plans, deviations), not measurements: they hold no measured figure.
DESCRIPTIVE = {
    "| what | flags (every command that takes a model: `attack`, `eval`, `quantize`, `analyze frequency`, `lens`, "
    "`export`, and `train`) |",
    "| step | function | definition (spec §) |",
    "| source | works for | what it is |",
    "| method | paper | what it does |",
    "| # | released code | vitlab default | flag for the released behaviour |",
    "| name | source | classes | split | images |",
    "| key | what | where |",
    "| recipe | what |",
    "| key | default | meaning |",
    "| section | what | examples |",
    "| file | content |",
    "| key | default | meaning (official flag) |",
    "| regime | training set | epochs (HAT epochs) |",
    "| stage | what it trains | loss | vitlab |",
    "| data set | splits | layout under `data.root` |",
    "| what happened | what you see | exit code |",
    "| fault | test (`tests/test_faults.py`) | shown |",
}


@pytest.fixture(scope="module")
def tables():
    spec = importlib.util.spec_from_file_location("experiments_tables", ROOT / "experiments" / "tables.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def _doc_tables():
    """(doc, 1-based line, the table's text, the tables.py name marked in the prose before it or None)."""
    found = []
    for doc in sorted([*ROOT.glob("docs/*.md"), ROOT / "README.md"]):
        lines = doc.read_text().split("\n")
        name, i = None, 0
        while i < len(lines):
            if lines[i].startswith("|"):
                j = i
                while j < len(lines) and lines[j].startswith("|"):
                    j += 1
                found.append((doc.relative_to(ROOT), i + 1, "\n".join(lines[i:j]), name))
                name, i = None, j
                continue
            match = MARKER.search(lines[i])
            if match:
                name = match.group(1)
            i += 1
    return found


DOC_TABLES = _doc_tables()
MARKED = [t for t in DOC_TABLES if t[3] is not None]


def test_some_tables_are_marked():
    assert {t[3] for t in MARKED} >= {"iformer_sizes", "dualformer_sizes"}


@pytest.mark.parametrize("doc,line,text,name", MARKED, ids=[f"{t[0]}:{t[1]}" for t in MARKED])
def test_marked_table_is_the_printer_output(tables, doc, line, text, name):
    printed = tables.render(name).split("\n")
    table = "\n".join(row for row in printed if row.startswith("|"))
    assert text == table, f"{doc}:{line} differs from `python experiments/tables.py {name}`"
    for extra in (row for row in printed if row.strip() and not row.startswith("|")):  # e.g. a gate line
        assert extra in (ROOT / doc).read_text(), f"{doc}: missing `{extra}` printed by tables.py {name}"


def test_every_unmarked_table_is_descriptive():
    stray = [f"{doc}:{line}: {text.splitlines()[0]}" for doc, line, text, name in DOC_TABLES
             if name is None and text.splitlines()[0] not in DESCRIPTIVE]
    assert not stray, "measured tables without a `python experiments/tables.py NAME` beside them:\n" + "\n".join(stray)


def test_every_printer_is_used_in_the_docs(tables):
    assert set(tables.TABLES) == {t[3] for t in MARKED}


def test_the_result_files_name_their_writer(tables):
    for name, table in tables.TABLES.items():
        for rel in table.files:
            data = json.loads((ROOT / "results" / rel).read_text())
            # the same script; a table's second file may record the options of its own run
            assert data["command"].split()[:2] == table.writer.split()[:2], (name, rel)
            if rel == table.files[0]:
                assert data["command"] == table.writer, (name, rel)


def test_unknown_name_and_missing_file_are_one_line_errors(tables, tmp_path, capsys):
    assert tables.main(["no_such_table"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown table 'no_such_table'") and err.count("\n") == 1
    assert tables.main(["iformer_sizes", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no such result file" in err and "experiments/complexity.py iformer" in err and err.count("\n") == 1
    (tmp_path / "iformer").mkdir()
    (tmp_path / "iformer" / "complexity.json").write_text('{"rows": [{"model": "iformer_small"}]}')
    assert tables.main(["iformer_sizes", "--results", str(tmp_path)]) == 2
    assert "wrong shape" in capsys.readouterr().err


def test_iformer_sizes_formats_a_result_file(tables, tmp_path):
    (tmp_path / "iformer").mkdir()
    rows = [{"model": "iformer_small", "params": 19866344, "flops": 4848012345},
            {"model": "test_iformer", "params": 1173482, "flops": 8961234}]
    (tmp_path / "iformer" / "complexity.json").write_text(json.dumps({"rows": rows}))
    lines = tables.render("iformer_sizes", tmp_path).splitlines()
    assert lines[2] == "| `iformer_small` | 19,866,344 | 19,866,344 | 4.8480 | 4.8485 | 83.4 |"
    assert lines[3] == "| `test_iformer` (32×32, 10 classes) | 1,173,482 | 1,173,482 | 0.00896 | — | — |"
