"""`vitlab lens` on scikit-image's bundled photos with a digits checkpoint (vitlab spec ar.md §2.7): any image a user
gives, of any size and aspect, gets an overlay at its own size.

The photos ship inside the scikit-image wheel (nothing is downloaded): ``astronaut`` (512x512) saved as a PNG, and
``chelsea`` (451x300, not square) saved as a JPEG. The checkpoint is a ResNet-20 digits classifier (the ClusterQ teacher
recipe, 16 px, a 4x4 final map), trained here for a few epochs unless ``--ckpt`` is given. A digits CAM on a photo is
an input the model never saw: the point is that the command takes any picture, not that the map means anything there.
Each ``vitlab lens`` command runs in this process (as ``vitlab.cli.main``) and its one line of output is kept.

Run:    python experiments/ar_lens_photos.py          (writes runs/ar_lens_photos/ and results/ar/lens_photos.json)
        python experiments/ar_lens_photos.py --show   (prints every command and its output line from the JSON)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "results" / "ar" / "lens_photos.json"
RECIPE = "recipes/quant/resnet20_digits_teacher.yaml"
EPOCHS = 3
PHOTOS = (("astronaut", "astronaut.png"), ("chelsea", "chelsea.jpg"))  # (skimage.data function, file written)
# (photo file, output file, extra arguments): one `vitlab lens` command each
LENSES: tuple[tuple[str, str, list[str]], ...] = (
    ("astronaut.png", "astronaut_cam_tint.png", ["--source", "cam", "--mode", "tint"]),
    ("astronaut.png", "astronaut_cam_heatmap.jpg", ["--source", "cam", "--mode", "heatmap"]),
    ("astronaut.png", "astronaut_cartoon.png", ["--lens", "cartoon"]),
    ("chelsea.jpg", "chelsea_cam_tint.png", ["--source", "cam", "--mode", "tint"]),
    ("chelsea.jpg", "chelsea_sticker.jpg", ["--lens", "sticker"]),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", default=None, help="a digits checkpoint (default: train the ResNet-20 recipe into "
                                                "OUT_DIR/resnet20_digits)")
    p.add_argument("--epochs", type=int, default=EPOCHS, help=f"training epochs without --ckpt (default {EPOCHS})")
    p.add_argument("--out-dir", default="runs/ar_lens_photos", help="photos, overlays and the trained checkpoint")
    p.add_argument("--result", default=str(RESULT), help="the JSON written (default results/ar/lens_photos.json)")
    p.add_argument("--show", action="store_true", help="print the commands and outputs of --result and exit")
    return p.parse_args(argv)


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def save_photos(folder: Path) -> list[dict[str, Any]]:
    """The bundled photos as files (PNG / JPEG quality 95); returns their names and sizes."""
    import skimage.data
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for function, name in PHOTOS:
        image = Image.fromarray(getattr(skimage.data, function)())
        image.save(folder / name, **({"quality": 95} if name.endswith(".jpg") else {}))
        written.append({"skimage.data": function, "file": name, "width": image.width, "height": image.height})
    return written


def train_checkpoint(folder: Path, epochs: int) -> Path:
    from vitlab.cli import main

    sets = [f"out_dir={folder}", "name=resnet20_digits", f"train.epochs={epochs}", f"train.eval_every={epochs}",
            "train.progress=false"]
    if main(["train", "-c", str(ROOT / RECIPE), "--overwrite", *[a for s in sets for a in ("--set", s)]]) != 0:
        raise RuntimeError(f"training {RECIPE} failed")
    return folder / "resnet20_digits" / "last.ckpt"


def run_lens(arguments: list[str]) -> tuple[int, str]:
    """``vitlab lens ARGUMENTS`` in this process; returns its exit code and what it printed."""
    from vitlab.cli import main

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        rc = main(["lens", *arguments])
    return rc, printed.getvalue().strip()


def show(result: dict[str, Any], path: Path) -> None:
    print(f"# {result['command']}  (checkpoint: {result['checkpoint']}; from {_relative(path)})")
    for run in result["runs"]:
        print(f"$ {run['command']}")
        print(run["output"])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result_path = Path(args.result)
    if args.show:
        if not result_path.is_file():
            print(f"error: {result_path} not found; run python experiments/ar_lens_photos.py first", file=sys.stderr)
            return 2
        show(json.loads(result_path.read_text()), result_path)
        return 0
    if args.ckpt is not None and not Path(args.ckpt).is_file():
        print(f"error: --ckpt {args.ckpt} not found", file=sys.stderr)
        return 2
    from vitlab.engine.checkpoint import atomic_write_bytes

    out = Path(args.out_dir)
    photos = save_photos(out)
    ckpt = Path(args.ckpt) if args.ckpt else train_checkpoint(out, args.epochs)
    runs = []
    for photo, name, extra in LENSES:
        arguments = ["--ckpt", _relative(ckpt), "--image", _relative(out / photo), "--out", _relative(out / name),
                     *extra]
        rc, printed = run_lens(arguments)
        if rc != 0:
            print(f"error: vitlab lens {' '.join(arguments)} exited {rc}", file=sys.stderr)
            return 1
        runs.append({"command": "vitlab lens " + " ".join(arguments), "output": printed,
                     "bytes": (out / name).stat().st_size})
    result = {"spec": "specs/ar.md §2.7 (vitlab lens on any image)",
              "command": " ".join(["python experiments/ar_lens_photos.py", *(argv if argv is not None else
                                                                              sys.argv[1:])]),
              "checkpoint": _relative(ckpt) if args.ckpt else f"{RECIPE}, {args.epochs} epochs",
              "photos": photos, "runs": runs}
    atomic_write_bytes((json.dumps(result, indent=2) + "\n").encode(), result_path)
    show(result, result_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
