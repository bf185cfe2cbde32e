"""Every mistake a user can make ends in one clear line: the bad-input table, through the real command line.

Each case runs ``vitlab.cli.main`` in-process on a workspace of bad files (recipes, checkpoints, image and CIFAR
folders, output paths) and asserts: exit code 2, exactly one ``error:`` line on stderr naming the key, flag or file,
no traceback, and nothing written or changed in the workspace (the current folder is the workspace too, so a
stray ``runs/`` would show). A few cases also run as real processes, and under ``RANK=1`` (a torchrun rank) the error
is printed by rank 0 only.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitlab.cli import main

REPO = Path(__file__).resolve().parents[1]
RECIPE = str(REPO / "recipes" / "supervised" / "resnet18_digits.yaml")
TINY = ["--set", "model.name=test_resnet", "--set", "data.img_size=16", "--set", "train.progress=false"]


class _Evil:
    """A pickle that runs a command when loaded: it must be refused, and the marker file never appear."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: D105
        return (os.system, (f"touch {self.marker}",))


def _png(path: Path, value: int = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(path)


def _image_folder(root: Path, classes: list[str]) -> None:
    for split in ("train", "val"):
        for k, name in enumerate(classes):
            _png(root / split / name / "a.png", 10 * k)


def _unwritable(ws: Path) -> Path:
    """A folder no process can write into: a read-only (0o555) folder; as root (which ignores permissions) a
    folder of sysfs, where nobody may create files."""
    if os.geteuid() == 0:
        return Path("/sys/vitlab-read-only")
    ro = ws / "read_only"
    ro.mkdir(exist_ok=True)
    ro.chmod(0o555)
    return ro


def _good_checkpoint(path: Path, name: str, out_dir: Path) -> None:
    from vitlab.config import load_config
    from vitlab.engine.checkpoint import save_checkpoint
    from vitlab.methods.base import DataInfo, build_method

    cfg = load_config(RECIPE, ["model.name=test_resnet", "data.img_size=16", f"name={name}", f"out_dir={out_dir}"])
    info = DataInfo(num_classes=10, channels=3, img_size=16, mean=(0.5,) * 3, std=(0.25,) * 3,
                    classes=[str(k) for k in range(10)])
    torch.manual_seed(0)
    save_checkpoint(path, cfg, info, build_method(cfg, info).state_dict(), step=3)


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The workspace of bad inputs (and one good checkpoint and run folder to misuse)."""
    ws = tmp_path_factory.mktemp("bad_inputs")
    _good_checkpoint(ws / "good.ckpt", "good", ws / "runs")
    _good_checkpoint(ws / "runs" / "existing" / "last.ckpt", "existing", ws / "runs")
    good = (ws / "good.ckpt").read_bytes()
    (ws / "truncated.ckpt").write_bytes(good[: len(good) // 2])
    (ws / "garbage.ckpt").write_bytes(b"this is not a torch file\n" * 10)
    (ws / "empty.ckpt").write_bytes(b"")
    (ws / "dir.ckpt").mkdir()
    torch.save({"weight": torch.zeros(2)}, ws / "foreign.pt")
    torch.save({"format": "vitlab-ckpt", "payload": _Evil(ws / "PWNED")}, ws / "evil.ckpt")
    (ws / "afile").write_text("a file, not a folder\n")

    recipes = ws / "recipes"
    recipes.mkdir()
    for name, text in {
        "empty.yaml": "", "comments.yaml": "# nothing but a comment\n", "list.yaml": "- data\n- model\n",
        "malformed.yaml": "data:\n  name: [digits\n", "unknown_top.yaml": "name: x\nfoo: 1\n",
        "unknown_data_key.yaml": "data:\n  nmae: digits\n", "wrong_type.yaml": "train:\n  epochs: many\n",
        "method_scalar.yaml": "method: 3\n", "section_scalar.yaml": "optim: 5\n",
        "bad_choice.yaml": "optim:\n  name: adamax\n", "negative_lr.yaml": "optim:\n  lr: -0.1\n",
        "python_tag.yaml": 'name: !!python/object/apply:os.system ["touch ' + str(ws / "PWNED") + '"]\n',
    }.items():
        (recipes / name).write_text(text)
    (recipes / "binary.yaml").write_bytes(b"\xff\xfe\x00\x01data")
    (recipes / "folder.yaml").mkdir()

    _image_folder(ws / "folder11", [f"c{k:02d}" for k in range(11)])
    _image_folder(ws / "folder_extra_val", ["cat"])
    _png(ws / "folder_extra_val" / "val" / "bird" / "a.png")
    (ws / "folder_no_classes" / "train").mkdir(parents=True)
    (ws / "folder_empty_class" / "train" / "cat").mkdir(parents=True)
    _png(ws / "folder_empty_class" / "train" / "dog" / "a.png")
    (ws / "folder_no_val" / "train" / "cat").mkdir(parents=True)
    _png(ws / "folder_no_val" / "train" / "cat" / "a.png")
    for split in ("train", "val"):
        (ws / "folder_corrupt" / split / "cat").mkdir(parents=True)
        (ws / "folder_corrupt" / split / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")

    (ws / "cifar_no_meta" / "cifar-10-batches-py").mkdir(parents=True)
    for name in ("cifar_truncated", "cifar_evil"):
        folder = ws / name / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        with (folder / "batches.meta").open("wb") as f:
            pickle.dump({b"label_names": [f"c{k}".encode() for k in range(10)]}, f, protocol=2)
    batch = pickle.dumps({b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 1, 2]}, protocol=2)
    (ws / "cifar_truncated" / "cifar-10-batches-py" / "data_batch_1").write_bytes(batch[: len(batch) // 2])
    with (ws / "cifar_evil" / "cifar-10-batches-py" / "data_batch_1").open("wb") as f:
        pickle.dump(_Evil(ws / "PWNED"), f)
    _unwritable(ws)
    return ws


def _train(*sets: str, recipe: str = RECIPE) -> list[str]:
    """``vitlab train`` on the tiny recipe, out_dir in the workspace, with extra ``--set`` overrides."""
    return ["train", "-c", recipe, *TINY, "--set", "out_dir={ws}/runs", *sum((["--set", s] for s in sets), [])]


# (id, argv with {ws} / {ro} placeholders, what the one line must name)
CASES: list[tuple[str, list[str], str]] = [
    # ---- recipe keys, types and values (--set and recipe files)
    ("set-unknown-key", _train("optim.lrr=1"), "optim.lrr"),
    ("set-unknown-section", _train("optimizer.lr=1"), "optimizer"),
    ("set-wrong-type", _train("optim.lr=abc"), "optim.lr"),
    ("set-negative-lr", _train("optim.lr=-1"), "optim.lr"),
    ("set-zero-epochs", _train("train.epochs=0"), "train.epochs"),
    ("set-zero-batch", _train("data.batch_size=0"), "data.batch_size"),
    ("set-tiny-img", _train("data.img_size=4"), "data.img_size"),
    ("set-precision", _train("train.precision=fp8"), "train.precision"),
    ("set-channels", _train("data.channels=2"), "data.channels"),
    ("set-hflip", _train("data.aug.hflip=1.5"), "data.aug.hflip"),
    ("set-betas", _train("optim.betas=[0.9]"), "optim.betas"),
    ("set-ema-decay", _train("ema.decay=1.5"), "ema.decay"),
    ("set-accum", _train("optim.accum_steps=0"), "optim.accum_steps"),
    ("set-workers-word", _train("data.num_workers=many"), "data.num_workers"),
    ("set-workers-negative", _train("data.num_workers=-1"), "data.num_workers"),
    ("set-max-steps", _train("train.max_steps=0"), "train.max_steps"),
    ("set-train-per-class", _train("data.train_per_class=0"), "data.train_per_class"),
    ("set-rrc-scale", _train("data.aug.rrc_scale=[0.5,0.1]"), "data.aug.rrc_scale"),
    ("set-optim-name", _train("optim.name=adamax"), "optim.name"),
    ("set-unknown-method", _train("method.name=nope"), "method.name"),
    ("set-unknown-model", _train("model.name=not_a_model"), "model.name"),
    ("set-unknown-data", _train("data.name=nope"), "data.name"),
    ("set-fewer-model-classes", _train("model.num_classes=5"), "model.num_classes: got 5, but data.name digits has 10"),
    ("set-teacher-missing", _train("method.teacher_ckpt={ws}/missing.ckpt"), "method.teacher_ckpt"),
    ("set-teacher-other-classes", _train("method.teacher_ckpt={ws}/good.ckpt", "data.name=image_folder",
                                         "data.root={ws}/folder11"), "the teacher has 10 classes"),
    ("set-method-key", _train("method.beta=6"), "method.beta"),
    ("set-no-equals", _train("optim.lr"), "--set"),
    ("set-name-slash", _train("name=a/b"), "name"),
    ("set-name-dotdot", _train("name=.."), "name"),
    ("set-fp16-on-cpu", _train("train.precision=16-mixed", "train.accelerator=cpu"), "train.precision"),
    ("batch-larger-than-data", _train("data.batch_size=100000"), "data.batch_size"),
    ("recipe-missing", ["train", "-c", "{ws}/recipes/nope.yaml"], "nope.yaml"),
    ("recipe-empty", ["train", "-c", "{ws}/recipes/empty.yaml"], "empty.yaml"),
    ("recipe-only-comments", ["train", "-c", "{ws}/recipes/comments.yaml"], "comments.yaml"),
    ("recipe-a-list", ["train", "-c", "{ws}/recipes/list.yaml"], "list.yaml"),
    ("recipe-malformed", ["train", "-c", "{ws}/recipes/malformed.yaml"], "malformed.yaml"),
    ("recipe-binary", ["train", "-c", "{ws}/recipes/binary.yaml"], "binary.yaml"),
    ("recipe-a-folder", ["train", "-c", "{ws}/recipes/folder.yaml"], "folder.yaml"),
    ("recipe-unknown-top", ["train", "-c", "{ws}/recipes/unknown_top.yaml"], "foo"),
    ("recipe-unknown-data-key", ["train", "-c", "{ws}/recipes/unknown_data_key.yaml"], "data.nmae"),
    ("recipe-wrong-type", ["train", "-c", "{ws}/recipes/wrong_type.yaml"], "train.epochs"),
    ("recipe-method-scalar", ["train", "-c", "{ws}/recipes/method_scalar.yaml"], "method"),
    ("recipe-section-scalar", ["train", "-c", "{ws}/recipes/section_scalar.yaml"], "optim"),
    ("recipe-bad-choice", ["train", "-c", "{ws}/recipes/bad_choice.yaml"], "optim.name"),
    ("recipe-negative-lr", ["train", "-c", "{ws}/recipes/negative_lr.yaml"], "optim.lr"),
    ("recipe-python-tag", ["train", "-c", "{ws}/recipes/python_tag.yaml"], "python_tag.yaml"),
    # ---- run folders, resume and output paths
    ("run-exists", _train("name=existing"), "already holds last.ckpt"),
    ("resume-nothing", _train("name=fresh") + ["--resume"], "fresh/last.ckpt"),
    ("resume-garbage", _train("name=fresh") + ["--resume", "{ws}/garbage.ckpt"], "garbage.ckpt"),
    ("resume-other-architecture", _train("name=existing", "model.name=test_vit", "data.img_size=16") + ["--resume"],
     "model.name test_resnet with 10 classes, but this run builds method supervised, model.name test_vit"),
    ("resume-other-class-count", _train("name=existing", "data.name=image_folder", "data.root={ws}/folder11")
     + ["--resume"], "test_resnet with 10 classes, but this run builds method supervised, model.name test_resnet "
                     "with 11 classes"),
    ("train-read-only-out-dir", _train("out_dir={ro}"), "run folder {ro}/"),
    ("train-out-dir-under-a-file", _train("out_dir={ws}/afile/runs"), "afile is a file"),
    # ---- data folders (image folder, CIFAR, video)
    ("image-folder-no-root", _train("data.name=image_folder"), "data.root"),
    ("image-folder-missing", _train("data.name=image_folder", "data.root={ws}/nope"), "nope"),
    ("image-folder-no-classes", _train("data.name=image_folder", "data.root={ws}/folder_no_classes"),
     "folder_no_classes/train"),
    ("image-folder-empty-class", _train("data.name=image_folder", "data.root={ws}/folder_empty_class"),
     "folder_empty_class/train/cat"),
    ("image-folder-no-val", _train("data.name=image_folder", "data.root={ws}/folder_no_val"), "folder_no_val/"),
    ("image-folder-extra-val-class", _train("data.name=image_folder", "data.root={ws}/folder_extra_val"),
     "'bird'"),
    ("cifar-no-root", _train("data.name=cifar10"), "data.root"),
    ("cifar-missing", _train("data.name=cifar10", "data.root={ws}/nope"), "nope"),
    ("cifar-no-meta", _train("data.name=cifar10", "data.root={ws}/cifar_no_meta"), "batches.meta"),
    ("cifar-truncated", _train("data.name=cifar10", "data.root={ws}/cifar_truncated"), "data_batch_1"),
    ("cifar-malicious-pickle", _train("data.name=cifar10", "data.root={ws}/cifar_evil"), "data_batch_1"),
    ("video-folder-missing", _train("data.name=video_folder", "data.root={ws}/nope"), "data.root"),
    ("video-clip-len", _train("data.name=moving_digits", "data.video.clip_len=0"), "data.video.clip_len"),
    # ---- checkpoints
    ("eval-missing", ["eval", "--ckpt", "{ws}/missing.ckpt"], "missing.ckpt"),
    ("eval-garbage", ["eval", "--ckpt", "{ws}/garbage.ckpt"], "garbage.ckpt"),
    ("eval-truncated", ["eval", "--ckpt", "{ws}/truncated.ckpt"], "truncated.ckpt"),
    ("eval-empty-file", ["eval", "--ckpt", "{ws}/empty.ckpt"], "empty.ckpt"),
    ("eval-a-folder", ["eval", "--ckpt", "{ws}/dir.ckpt"], "dir.ckpt"),
    ("eval-foreign-state-dict", ["eval", "--ckpt", "{ws}/foreign.pt"], "foreign.pt"),
    ("eval-malicious-pickle", ["eval", "--ckpt", "{ws}/evil.ckpt"], "evil.ckpt"),
    ("eval-more-classes", ["eval", "--ckpt", "{ws}/good.ckpt", "--set", "data.name=image_folder",
                           "--set", "data.root={ws}/folder11"], "11 classes, but checkpoint"),
    ("eval-other-channels", ["eval", "--ckpt", "{ws}/good.ckpt", "--set", "data.channels=1"], "data.channels"),
    ("eval-corrupt-image", ["eval", "--ckpt", "{ws}/good.ckpt", "--set", "data.name=image_folder",
                            "--set", "data.root={ws}/folder_corrupt"], "broken.png"),
    ("eval-bad-set", ["eval", "--ckpt", "{ws}/good.ckpt", "--set", "optim.lrr=1"], "optim.lrr"),
    ("eval-recipe-missing", ["eval", "--ckpt", "{ws}/good.ckpt", "-c", "{ws}/recipes/nope.yaml"], "nope.yaml"),
    ("eval-recipe-empty", ["eval", "--ckpt", "{ws}/good.ckpt", "-c", "{ws}/recipes/empty.yaml"], "empty.yaml"),
    ("eval-out-read-only", ["eval", "--ckpt", "{ws}/good.ckpt", "--out", "{ro}/metrics.json"], "{ro}"),
    ("eval-out-under-a-file", ["eval", "--ckpt", "{ws}/good.ckpt", "--out", "{ws}/afile/m.json"], "afile"),
    ("export-missing", ["export", "--ckpt", "{ws}/missing.ckpt"], "missing.ckpt"),
    ("export-garbage", ["export", "--ckpt", "{ws}/garbage.ckpt"], "garbage.ckpt"),
    ("export-format", ["export", "--ckpt", "{ws}/good.ckpt", "--format", "tflite", "--out", "{ws}/exp"], "--format"),
    ("export-read-only", ["export", "--ckpt", "{ws}/good.ckpt", "--out", "{ro}/export"], "{ro}/export"),
    ("export-under-a-file", ["export", "--ckpt", "{ws}/good.ckpt", "--out", "{ws}/afile/export"], "afile"),
    # ---- command-line flags
    ("flag-missing-config", ["train"], "-c/--config"),
    ("flag-unknown-command", ["trian"], "'trian'"),
    ("flag-unknown-option", ["train", "-c", RECIPE, "--bogus"], "--bogus"),
    ("flag-not-an-int", ["info", "resnet18", "--img-size", "big"], "--img-size"),
    ("flag-missing-ckpt", ["eval"], "--ckpt"),
    ("info-unknown-model", ["info", "not_a_model"], "not_a_model"),
    ("models-no-match", ["models", "zzz*"], "zzz*"),
]


def _snapshot(root: Path) -> dict[str, tuple[bool, int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            out[str(p.relative_to(root))] = (p.is_dir(), st.st_size, st.st_mtime_ns)
    return out


def _fill(argv: list[str], ws: Path) -> list[str]:
    ro = str(_unwritable(ws))
    return [a.replace("{ws}", str(ws)).replace("{ro}", ro) for a in argv]


def test_the_table_has_at_least_60_cases() -> None:
    assert len(CASES) >= 60 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("argv, needle", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(ws: Path, argv: list[str], needle: str,
                                                         capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ws)  # a default output folder (runs/) would land in the workspace and show
    monkeypatch.delenv("VITLAB_DEBUG", raising=False)
    before = _snapshot(ws)
    try:
        code = main(_fill(argv, ws))
    except SystemExit as exc:  # argparse
        code = exc.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert _fill([needle], ws)[0] in lines[0], err
    assert "Traceback" not in err
    assert _snapshot(ws) == before
    assert not (ws / "PWNED").exists()


def test_a_library_fault_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    """A ValueError that is not a user error (a bug) is not shortened: it propagates with its traceback."""
    import vitlab.models.profile as profile

    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("an internal shape bug")

    monkeypatch.setattr(profile, "model_info", broken)
    with pytest.raises(ValueError, match="an internal shape bug"):
        main(["info", "resnet18"])


@pytest.mark.parametrize("error, code, line", [
    (PermissionError(13, "Permission denied", "/data/out.csv"), 2, "error: /data/out.csv: permission denied"),
    (OSError(28, "No space left on device", "/data/out.csv"), 2, "error: /data/out.csv: no space left on the device"),
    (OSError(22, "Invalid argument", "/data/out.csv"), None, ""),  # not the user's environment: a traceback
], ids=["permission", "disk-full", "other-os-error"])
def test_a_file_system_error_from_any_command_is_one_line(error: OSError, code: int | None, line: str,
                                                          capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The safety net behind the boundaries: a command that writes with plain ``open`` still ends in one line when
    the folder is read-only or the disk is full; any other OSError keeps its traceback."""
    import vitlab.cli as cli

    def writes(args: object) -> int:
        raise error

    monkeypatch.setattr(cli, "_cmd_info", writes)
    if code is None:
        with pytest.raises(OSError, match="Invalid argument"):
            main(["info", "resnet18"])
        return
    assert main(["info", "resnet18"]) == code
    assert capsys.readouterr().err == line + "\n"


def test_only_rank_0_prints_and_every_rank_exits_2(ws: Path, capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    argv = _fill(_train("optim.lrr=1"), ws)
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank, printed in (("1", ""), ("0", "error: optim.lrr: unknown key")):
        monkeypatch.setenv("RANK", rank)
        assert main(argv) == 2
        assert capsys.readouterr().err[: len(printed)] == printed
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(SystemExit) as exc:
        main(["train"])
    assert exc.value.code == 2 and capsys.readouterr().err == ""


@pytest.mark.parametrize("argv, needle", [
    pytest.param(["train", "-c", "{ws}/recipes/empty.yaml"], "empty.yaml: the file is empty", id="empty-recipe",
                 marks=pytest.mark.slow),  # a fresh interpreter importing torch: seconds (tests/test_cli.py has one)
    pytest.param(["eval", "--ckpt", "{ws}/good.ckpt", "--out", "{ro}/metrics.json"], "cannot be written",
                 id="eval-out-read-only", marks=pytest.mark.slow),
])
def test_as_a_real_process(ws: Path, argv: list[str], needle: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    env.pop("VITLAB_DEBUG", None)
    before = _snapshot(ws)
    res = subprocess.run([sys.executable, "-m", "vitlab", *_fill(argv, ws)], capture_output=True, text=True, env=env,
                         cwd=ws)
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("error: ") and needle in res.stderr, res.stderr
    assert _snapshot(ws) == before


@pytest.mark.slow  # two processes under torchrun (about 10 s)
def test_under_torchrun_one_rank_reports(ws: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "vitlab", *_fill(_train("optim.lrr=1"), ws)], capture_output=True, text=True, env=env,
                         cwd=ws)
    assert res.returncode != 0
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: optim.lrr: unknown key"), res.stderr
    assert "exitcode  : 2" in res.stderr  # the root cause torchrun reports is the user error's exit code
