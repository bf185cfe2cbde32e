"""``vitlab lens``: an AR-lens overlay of a checkpoint's map on any image (vitlab spec ar.md).

Inspired by the image-filter category of the AR survey (Minaee, Liang and Yan, arXiv 2202.09450); not an
implementation of it. Example::

    vitlab lens --ckpt runs/ar_lens_vit/last.ckpt --image photo.jpg --source cam --mode tint --out photo_cam.png
    vitlab lens --model my_net.py:build --weights my_net.pt --input-size 3,64,64 --image photo.jpg --out cam.png

The image (PNG or JPEG, any size) is resized to ``data.img_size`` × ``data.img_size`` of the checkpoint's config (the
whole image, aspect not kept, so the map covers all of it; grey when ``data.channels`` is 1) for the model; the map is
normalised, upsampled back to the image's own size and blended there, in [0, 1] RGB. One line is printed per file
written; bad input is a one-line error (exit 2).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from vitlab.analysis.overlay import BLEND_MODES, LUTS, MAP_SOURCES
from vitlab.errors import ConfigError

LENSES = ("cartoon", "lut", "sticker")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("Overlay a map of a trained model on an image (an 'AR lens', inspired by the AR survey's "
                     "image-filter category).")
    from vitlab.models.external import add_model_arguments

    add_model_arguments(p, "a checkpoint written by vitlab train (last.ckpt / best.ckpt)")
    p.add_argument("--image", required=True, nargs="+", help="PNG or JPEG file(s), any size")
    p.add_argument("--out", required=True,
                   help="output .png/.jpg for one image; a folder for several (<stem>_<source>_<mode>.png)")
    p.add_argument("--source", default="cam", choices=MAP_SOURCES,
                   help="cam: class activation map (GAP + linear heads); attention: CLS attention of the last block "
                        "(ViTs); segmentation / attribute: need a trained head / TransZero++ (not from this command)")
    p.add_argument("--mode", default=None, choices=BLEND_MODES,
                   help="how the map is blended (default heatmap; recolor when --lens cartoon|lut is given)")
    p.add_argument("--lens", default=None, choices=LENSES,
                   help="a classical lens applied through the map: cartoon / lut (recolor mode), or a sticker at the "
                        "map's centroid")
    p.add_argument("--lut", default="sepia", choices=sorted(LUTS), help="table of --lens lut (default sepia)")
    p.add_argument("--alpha", type=float, default=0.5, help="opacity of heatmap / tint (default 0.5)")
    p.add_argument("--color", default="1,0,0", help="tint colour r,g,b in [0, 1] (default 1,0,0)")
    p.add_argument("--background", default="0,0,0", help="background colour r,g,b of --mode background")
    p.add_argument("--threshold", type=float, default=None, help="binarise the normalised map at this value")
    p.add_argument("--upsample", default="bilinear", choices=("bilinear", "nearest"))
    p.add_argument("--target", type=int, default=None, help="class of the CAM (default: the predicted class)")
    p.add_argument("--sticker", default=None, help="RGBA PNG for --lens sticker (default: a built-in disc)")
    p.add_argument("--sticker-scale", type=float, default=0.25, help="sticker size as a fraction of the image side")


def _parse_colour(text: str, flag: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(0.0 <= v <= 1.0 for v in values):
        raise ConfigError(f"{flag}: expected r,g,b with values in [0, 1], e.g. 1,0,0; got {text!r}")
    return values[0], values[1], values[2]


def read_image(path: Path, mode: str = "RGB", flag: str = "--image") -> torch.Tensor:
    """An image file as a (C, H, W) tensor in [0, 1]; a missing or unreadable file is a one-line error."""
    from PIL import Image, UnidentifiedImageError

    from vitlab.data.transforms import pil_to_unit_tensor

    if not path.is_file():
        raise FileNotFoundError(f"{flag}: {path} not found")
    try:
        with Image.open(path) as image:
            return pil_to_unit_tensor(image.convert(mode))
    except (UnidentifiedImageError, OSError) as exc:
        raise ConfigError(f"{flag}: cannot read {path} as an image ({type(exc).__name__}); expected PNG or "
                          "JPEG") from None


def _model_input(path: Path, size: int, channels: int) -> torch.Tensor:
    """The image resized (PIL bilinear, like the image-folder pipeline) to size x size, as (1, 3, size, size)."""
    from PIL import Image

    from vitlab.data.transforms import pil_to_unit_tensor

    with Image.open(path) as image:
        resized = image.convert("L" if channels == 1 else "RGB").resize((size, size), Image.Resampling.BILINEAR)
    return pil_to_unit_tensor(resized).unsqueeze(0)


def _outputs(images: list[Path], out: Path, source: str, mode: str) -> list[Path]:
    if len(images) == 1 and out.suffix.lower() in IMAGE_SUFFIXES:
        return [out]
    if len(images) == 1 and out.suffix:
        raise ConfigError(f"--out: {out} must end in .png, .jpg or .jpeg (or be a folder)")
    return [out / f"{p.stem}_{source}_{mode}.png" for p in images]


def run(args: argparse.Namespace) -> int:
    from vitlab.analysis.overlay import (
        apply_lut,
        blend,
        cartoon,
        place_sticker,
        postprocess,
        token_map,
    )
    from vitlab.data.transforms import unit_tensor_to_pil

    if not 0.0 <= args.alpha <= 1.0:
        raise ConfigError(f"--alpha: expected a value in [0, 1], got {args.alpha}")
    if args.lens in ("cartoon", "lut") and args.mode not in (None, "recolor"):
        raise ConfigError(f"--lens {args.lens} is applied through the map in mode recolor; drop --mode {args.mode}")
    if args.lens == "sticker" and args.mode is not None:
        raise ConfigError("--lens sticker places a sticker at the map's centroid; it takes no --mode")
    if args.source in ("segmentation", "attribute"):
        raise ConfigError(f"--source {args.source}: needs a trained segmentation head / a TransZero++ model, which "
                          "this command does not take; use cam or attention (Python: vitlab.analysis.overlay)")
    colour = _parse_colour(args.color, "--color")
    background = _parse_colour(args.background, "--background")
    mode = args.mode or ("recolor" if args.lens in ("cartoon", "lut") else "heatmap")
    images = [Path(p) for p in args.image]
    originals = [read_image(p) for p in images]  # every input checked before any work
    sticker = read_image(Path(args.sticker), "RGBA", "--sticker") if args.sticker else None
    outputs = _outputs(images, Path(args.out), args.source, args.lens or mode)
    from vitlab.models.external import method_from_args

    method = method_from_args(args)
    model = method.eval_model().eval()
    size, channels = int(method.cfg.data.img_size), int(method.cfg.data.channels)

    for path, original, out in zip(images, originals, outputs):
        x_model = _model_input(path, size, channels)
        raw = token_map(model, x_model, args.source, target=args.target)
        x = original.unsqueeze(0)
        m = postprocess(raw, x.shape[-2:], mode=args.upsample, threshold=args.threshold)
        if args.lens == "sticker":
            result = place_sticker(x, m, sticker, scale=args.sticker_scale)
        elif args.lens == "lut":
            result = blend(x, m, "recolor", lens=lambda t: apply_lut(t, args.lut))
        else:
            result = blend(x, m, mode, alpha=args.alpha, color=colour, background=background,
                           lens=cartoon if args.lens == "cartoon" else None)
        out.parent.mkdir(parents=True, exist_ok=True)
        # the blend modes stay in [0, 1] for inputs in range; the clamp only guards the 8-bit conversion
        image = unit_tensor_to_pil(result[0].clamp(0, 1))
        if out.suffix.lower() in (".jpg", ".jpeg"):
            image.save(out, quality=95)
        else:
            image.save(out)
        with torch.no_grad():
            predicted = int(model(x_model).argmax(1))
        target = args.target if args.target is not None else predicted
        what = f"{args.source} map of class {target}" if args.source == "cam" else f"{args.source} map"
        grid = "x".join(str(d) for d in raw.shape[1:])
        print(f"wrote {out} ({image.width}x{image.height}; {what} on a {grid} grid, {args.lens or mode}; "
              f"predicted class {predicted})")
    return 0
