"""AR lens small-scale demonstration (vitlab spec ar.md §6): does the CAM of a digits classifier sit on the ink, and
can a per-patch head on its frozen features segment the ink?

1. CAM ink share. For every test image: the normalised CAM of the predicted class, upsampled (bilinear) to the image,
   and the share of its mass on ink pixels (digit intensity > 0.5). Baseline: a uniform map, whose share is the
   image's ink fraction. Both are averaged over the digits test split.
2. Ink segmentation. Digits on a noise background (each pixel max(digit, u), u ~ U[0, 0.9), one grey noise field per
   image, seeded); target = the clean ink pixels. A per-patch linear head (spec §2.2 ``segmentation``) trained with
   BCE on the frozen backbone's final map of the noisy training split, against two baselines: an all-ones mask and
   an intensity threshold on the noisy image (threshold chosen on the training split). IoU pooled over the test
   split.

The classifier (``--model``, trained here unless ``--ckpt`` is given) must end in a map with a spatial grid and a
global-average-pooled linear head, so that the CAM is exact: ``resnet20`` is the ClusterQ teacher recipe
``recipes/quant/resnet20_digits_teacher.yaml`` (CIFAR ResNet-20, stride 4: a 4x4 map at its 16 px), cut to 5
epochs; ``vit_tiny`` is ``recipes/hat/vit_tiny_digits_baseline.yaml`` (patch 4: an 8x8 grid at 32 px) with
``global_pool=avg, fc_norm=false`` (LayerNorm per token before the mean) and no RandAugment, 5 epochs. The other
digits recipes (resnet18, test_iformer) end in a 1x1 map at 32 px, which has no spatial CAM.

Run:    python experiments/ar_lens.py                 (trains ResNet-20, then measures; writes the JSON)
        python experiments/ar_lens.py --model vit_tiny --out results/ar/cam_ink_vit_tiny.json
        python experiments/ar_lens.py --table         (prints the table of results/ar/cam_ink.json)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
# name -> (recipe, overrides, default epochs); both end in a map with a spatial grid and a GAP + linear head
CLASSIFIERS: dict[str, tuple[Path, list[str], int]] = {
    # ResNet-20 (CIFAR layout, stride 4): a 4x4 final map at the recipe's 16 px; the quickest digits recipe
    "resnet20": (ROOT / "recipes" / "quant" / "resnet20_digits_teacher.yaml", [], 5),
    # tiny ViT, patch 4: an 8x8 grid at 32 px; the LayerNorm per token before the mean (fc_norm off) keeps CAM exact
    "vit_tiny": (ROOT / "recipes" / "hat" / "vit_tiny_digits_baseline.yaml",
                 ["model.kwargs.global_pool=avg", "model.kwargs.fc_norm=false", "data.aug.rand_augment=null"], 5),
}
RESULT = ROOT / "results" / "ar" / "cam_ink.json"
NOISE_MAX = 0.9
INK_LEVEL = 0.5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--ckpt", default=None, help="a digits classifier checkpoint with a GAP + linear head "
                                                "(default: train one from the recipe into --run-dir)")
    p.add_argument("--model", default="resnet20", choices=sorted(CLASSIFIERS),
                   help="classifier trained when no --ckpt is given (default resnet20)")
    p.add_argument("--epochs", type=int, default=None,
                   help="training epochs when no --ckpt is given (default: resnet20 5, vit_tiny 5)")
    p.add_argument("--run-dir", default=None, help="where the classifier is trained (default runs/ar_lens_<model>)")
    p.add_argument("--retrain", action="store_true", help="train again even if --run-dir holds a checkpoint")
    p.add_argument("--seg-steps", type=int, default=200, help="steps of the segmentation head (default 200)")
    p.add_argument("--seed", type=int, default=0, help="seed of training and of the noise backgrounds")
    p.add_argument("--out", default=str(RESULT), help=f"result JSON (default {RESULT.relative_to(ROOT)})")
    p.add_argument("--table", action="store_true", help="only print the table of an existing --out file")
    return p.parse_args(argv)


def train_classifier(args: argparse.Namespace) -> Path:
    from vitlab.config import load_config
    from vitlab.engine.trainer import train

    recipe, overrides, default_epochs = CLASSIFIERS[args.model]
    epochs = args.epochs or default_epochs
    run_dir = Path(args.run_dir) if args.run_dir else ROOT / "runs" / f"ar_lens_{args.model}"
    ckpt = run_dir / "last.ckpt"
    if ckpt.is_file() and not args.retrain:
        print(f"using {ckpt} (--retrain to train again)")
        return ckpt
    cfg = load_config(recipe, [f"out_dir={run_dir.parent}", f"name={run_dir.name}", f"train.epochs={epochs}",
                               f"train.seed={args.seed}", "train.progress=false", *overrides])
    start = time.time()
    metrics = train(cfg, overwrite=True)
    print(f"trained {cfg.model.name} ({epochs} epochs) in {time.time() - start:.0f} s: "
          f"top1 {metrics.get('top1', float('nan')):.2f}")
    return ckpt


def noisy_background(x: torch.Tensor, seed: int) -> torch.Tensor:
    """Digits (N, 3, H, W) drawn on grey noise: max(x, u), u ~ U[0, NOISE_MAX) per pixel, shared by the channels."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(x.shape[0], 1, x.shape[2], x.shape[3], generator=g) * NOISE_MAX
    return torch.maximum(x, noise)


def pooled_iou(pred: torch.Tensor, truth: torch.Tensor) -> float:
    return float((pred & truth).sum()) / max(float((pred | truth).sum()), 1.0)


def batched(fn: Any, x: torch.Tensor, size: int = 128) -> torch.Tensor:
    return torch.cat([fn(x[i:i + size]) for i in range(0, x.shape[0], size)])


def measure(ckpt: Path, args: argparse.Namespace) -> dict[str, Any]:
    from vitlab.analysis.overlay import postprocess, token_map, train_segmentation_head, upsample_map
    from vitlab.data import build_dataset
    from vitlab.engine.checkpoint import load_method
    from vitlab.evaluation.robust import collect

    method, _ = load_method(ckpt)
    model = method.eval_model().eval()
    cfg = method.cfg
    x_test, y_test = collect(build_dataset(cfg.data, "test", train=False))
    x_train, _ = collect(build_dataset(cfg.data, "train", train=False))
    size = x_test.shape[-2:]

    # 1. CAM ink share against the uniform map
    with torch.no_grad():
        top1 = float((batched(model, x_test).argmax(1) == y_test).float().mean()) * 100
    cams = batched(lambda t: token_map(model, t, "cam"), x_test)
    m = postprocess(cams, size)[:, 0]  # (N, H, W), bilinear
    ink = x_test.mean(dim=1) > INK_LEVEL
    cam_share = (m * ink).sum(dim=(1, 2)) / m.sum(dim=(1, 2)).clamp_min(1e-12)
    uniform_share = ink.float().mean(dim=(1, 2))

    # 2. ink segmentation on a noise background
    train_noisy, test_noisy = noisy_background(x_train, args.seed), noisy_background(x_test, args.seed + 1)
    train_ink, test_ink = x_train.mean(dim=1) > INK_LEVEL, ink
    head = train_segmentation_head(model, train_noisy, train_ink.float(), steps=args.seg_steps)
    probs = batched(lambda t: token_map(model, t, "segmentation", head=head), test_noisy)
    iou_nearest = pooled_iou(upsample_map(probs, size, "nearest")[:, 0] > 0.5, test_ink)
    iou_bilinear = pooled_iou(upsample_map(probs, size, "bilinear")[:, 0] > 0.5, test_ink)
    levels = [round(0.05 * i, 2) for i in range(1, 20)]
    train_grey, test_grey = train_noisy.mean(dim=1), test_noisy.mean(dim=1)
    best = max(levels, key=lambda t: pooled_iou(train_grey > t, train_ink))
    return {
        "spec": "specs/ar.md §6 (a measurable effect on bundled data, not a paper claim)",
        "command": " ".join(["python experiments/ar_lens.py", *sys.argv[1:]]),
        "checkpoint": str(ckpt),
        "model": cfg.model.name,
        "model_kwargs": dict(cfg.model.kwargs),
        "epochs": int(cfg.train.epochs),
        "test_top1": round(top1, 2),
        "grid": list(cams.shape[1:]),
        "cam_ink": {
            "n_test": int(x_test.shape[0]),
            "ink": f"digit intensity (channel mean) > {INK_LEVEL}",
            "cam_share": round(float(cam_share.mean()), 4),
            "uniform_share": round(float(uniform_share.mean()), 4),
            "images_cam_above_uniform": round(float((cam_share > uniform_share).float().mean()), 4),
        },
        "ink_segmentation": {
            "background": f"max(digit, u), u ~ U[0, {NOISE_MAX}) grey, seeds {args.seed} (train) / {args.seed + 1} "
                          "(test)",
            "head_steps": args.seg_steps,
            "iou_head_nearest": round(iou_nearest, 4),
            "iou_head_bilinear": round(iou_bilinear, 4),
            "iou_all_ones": round(pooled_iou(torch.ones_like(test_ink), test_ink), 4),
            "iou_threshold": round(pooled_iou(test_grey > best, test_ink), 4),
            "threshold": best,
        },
    }


def print_table(result: dict[str, Any], path: Path) -> None:
    cam, seg = result["cam_ink"], result["ink_segmentation"]
    print(f"AR lens on digits ({result['model']}, {result['epochs']} epochs, test top-1 {result['test_top1']:.2f}%, "
          f"{'x'.join(map(str, result['grid']))} map); from {path}")
    print(f"{'measure':<52}{'value':>8}")
    print(f"{'CAM mass on ink (mean over ' + str(cam['n_test']) + ' test images)':<52}{cam['cam_share']:>8.4f}")
    print(f"{'  baseline: uniform map (= ink fraction)':<52}{cam['uniform_share']:>8.4f}")
    print(f"{'  images where CAM share > uniform':<52}{cam['images_cam_above_uniform']:>8.4f}")
    print(f"{'ink IoU, per-patch head (nearest upsampling)':<52}{seg['iou_head_nearest']:>8.4f}")
    print(f"{'ink IoU, per-patch head (bilinear upsampling)':<52}{seg['iou_head_bilinear']:>8.4f}")
    print(f"{'  baseline: all-ones mask':<52}{seg['iou_all_ones']:>8.4f}")
    print(f"{'  baseline: intensity > ' + str(seg['threshold']) + ' (best on train)':<52}{seg['iou_threshold']:>8.4f}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    if args.table:
        if not out.is_file():
            print(f"error: {out} not found; run python experiments/ar_lens.py first", file=sys.stderr)
            return 2
        print_table(json.loads(out.read_text()), out)
        return 0
    from vitlab.engine.checkpoint import atomic_write_bytes

    torch.manual_seed(args.seed)
    if args.ckpt is not None and not Path(args.ckpt).is_file():
        print(f"error: --ckpt {args.ckpt} not found", file=sys.stderr)
        return 2
    ckpt = Path(args.ckpt) if args.ckpt else train_classifier(args)
    try:
        result = measure(ckpt, args)
    except ValueError as exc:  # e.g. a checkpoint whose head has no CAM
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        result["checkpoint"] = str(ckpt.resolve().relative_to(ROOT))
    except ValueError:
        pass
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes((json.dumps(result, indent=2) + "\n").encode(), out)
    print_table(result, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
