"""Nothing a user hands vitlab runs code, and nothing vitlab deletes lies outside its own run folder.

A scan of the source (its syntax tree, so comments and strings do not count): every ``torch.load`` passes
``weights_only=True``; no ``pickle.load(s)``, no unpickler that admits every class, no ``eval`` / ``exec`` /
``compile``, no unsafe YAML loader, no ``allow_pickle=True``, no marshal / shelve / dill / joblib. Then the behaviour:
a YAML tag that would run code is refused, and ``--overwrite`` / ``export --out`` leave everything else alone.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from vitlab.cli import main
from vitlab.config import ConfigError, load_config

SRC = Path(__file__).resolve().parents[1] / "src" / "vitlab"
RECIPE = str(Path(__file__).resolve().parents[1] / "recipes" / "supervised" / "resnet18_digits.yaml")
UNSAFE_YAML = {"load", "unsafe_load", "full_load", "load_all", "unsafe_load_all", "full_load_all"}
UNSAFE_MODULES = {"marshal", "shelve", "dill", "joblib", "cloudpickle"}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "?"


def _keyword_is(call: ast.Call, name: str, value: object) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is value for k in call.keywords)


def unsafe_loads(source: str, filename: str = "<source>") -> list[str]:
    """Every place in ``source`` that could run code from a file, as ``file:line: what``."""
    found = []
    tree = ast.parse(source, filename)
    for node in ast.walk(tree):
        where = f"{filename}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Call):
            name = _dotted(node.func)
            if name == "torch.load" and not _keyword_is(node, "weights_only", True):
                found.append(f"{where}: torch.load without weights_only=True")
            if name in ("pickle.load", "pickle.loads", "pickle._load", "pickle._loads"):
                found.append(f"{where}: {name}")
            if name in ("eval", "exec", "compile", "__import__"):
                found.append(f"{where}: {name}()")
            if name.startswith("yaml.") and name.split(".")[-1] in UNSAFE_YAML:
                found.append(f"{where}: {name} (use yaml.safe_load or OmegaConf.load)")
            if name.split(".")[-1] == "load" and _keyword_is(node, "allow_pickle", True):
                found.append(f"{where}: {name}(allow_pickle=True)")
        if isinstance(node, ast.Attribute) and node.attr in ("Loader", "UnsafeLoader", "FullLoader") \
                and _dotted(node.value) == "yaml":
            found.append(f"{where}: yaml.{node.attr}")
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for module in modules:
                if module.split(".")[0] in UNSAFE_MODULES:
                    found.append(f"{where}: import {module}")
        if isinstance(node, ast.ClassDef) and any(_dotted(b).endswith("Unpickler") for b in node.bases):
            if not any(isinstance(f, ast.FunctionDef) and f.name == "find_class" for f in node.body):
                found.append(f"{where}: unpickler {node.name} without find_class (admits every class)")
    return found


def test_the_scan_finds_each_kind_of_unsafe_load() -> None:
    bad = """
import torch, pickle, yaml, numpy as np
import marshal
class Open(pickle.Unpickler):
    pass
torch.load(p)
torch.load(p, weights_only=False)
pickle.load(f)
eval(text)
exec(text)
yaml.load(text, Loader=yaml.Loader)
yaml.unsafe_load(text)
np.load(p, allow_pickle=True)
"""
    found = unsafe_loads(bad)
    assert len(found) == 11, found
    good = "import torch, yaml\ntorch.load(p, weights_only=True)\nyaml.safe_load(t)\nmodel.eval()\n"
    assert unsafe_loads(good) == []


def test_the_source_loads_nothing_that_can_run_code() -> None:
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 50
    found = [hit for f in files for hit in unsafe_loads(f.read_text(), str(f.relative_to(SRC.parent)))]
    assert found == []


def test_a_yaml_tag_that_would_run_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    recipe = tmp_path / "evil.yaml"
    recipe.write_text(f'name: !!python/object/apply:os.system ["touch {marker}"]\n')
    with pytest.raises(ConfigError, match="evil.yaml"):
        load_config(recipe)
    assert not marker.exists()


def test_overwrite_deletes_only_vitlab_files_inside_the_run_folder(tmp_path: Path) -> None:
    """``--overwrite`` clears last/best checkpoints, logs and tb of the run folder; a user's file stays, and a link
    (``tb`` or ``export`` pointing elsewhere) is removed as a link, never followed."""
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    sets = ["--set", f"out_dir={tmp_path / 'runs'}", "--set", "name=r", "--set", "model.name=test_resnet",
            "--set", "data.img_size=16", "--set", "train.max_steps=1", "--set", "train.progress=false"]
    assert main(["train", "-c", RECIPE, *sets]) == 0
    run = tmp_path / "runs" / "r"
    (run / "notes.txt").write_text("my notes")
    (run / "export").symlink_to(outside, target_is_directory=True)
    assert main(["train", "-c", RECIPE, *sets, "--overwrite"]) == 0
    assert (outside / "keep.txt").read_text() == "mine" and (run / "notes.txt").read_text() == "my notes"
    assert not (run / "export").is_symlink()
    assert main(["train", "-c", RECIPE, *sets, "--set", "name=..", "--overwrite"]) == 2  # never the parent folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious", "runs"]


def test_export_out_writes_two_files_and_deletes_nothing(tmp_path: Path) -> None:
    from vitlab.config import load_config as load
    from vitlab.engine.checkpoint import save_checkpoint
    from vitlab.methods.base import DataInfo, build_method

    cfg = load(RECIPE, ["model.name=test_resnet", "data.img_size=16", f"out_dir={tmp_path}"])
    info = DataInfo(num_classes=10, channels=3, img_size=16, mean=(0.5,) * 3, std=(0.25,) * 3)
    ckpt = save_checkpoint(tmp_path / "run" / "last.ckpt", cfg, info, build_method(cfg, info).state_dict())
    out = tmp_path / "shared_folder"
    out.mkdir()
    (out / "other.txt").write_text("someone else's")
    torch.save({"x": 1}, out / "other.pt")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(["export", "--ckpt", str(ckpt), "--out", str(out)]) == 0
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(after) == set(before) | {"config.json", "model.safetensors"}
    assert all(after[k] == v for k, v in before.items())
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["last.ckpt"]
