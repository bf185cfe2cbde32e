"""``vitlab analyze``: analyses of a trained checkpoint, one sub-command each.

``vitlab analyze frequency --ckpt PATH`` (or ``--model file.py:factory --weights W --data NAME``) writes, into
``--out`` (default: ``<run folder>/analysis/frequency``):

* ``filtered_accuracy.csv`` (radius, filter, top1) and ``filtered_accuracy.png``: top-1 on low-pass and high-pass
  filtered test images over a radius sweep (vitlab spec hat.md §2.6; radius -1 is the clean accuracy);
* ``spectrum.csv`` (layer, index, frequency, rel_log_amplitude) and ``spectrum.png``: the relative log amplitude of
  the input and of every layer's feature map (spec iformer.md §2.6), and of a HAT perturbation δ of the batch
  (``--delta-eps``; 0 skips it).
"""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Callable
from pathlib import Path

import torch

from vitlab.errors import ConfigError

#: analysis name -> (add its arguments, run it, help)
ANALYSES: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], str]] = {}


def _frequency_arguments(p: argparse.ArgumentParser) -> None:
    from vitlab.data.catalog import add_data_arguments
    from vitlab.models.external import add_model_arguments

    add_model_arguments(p, "a checkpoint written by vitlab train (last.ckpt / best.ckpt)")
    add_data_arguments(p, default="the checkpoint's; needed with --model")
    p.add_argument("--out", default=None, help="output folder (default: <run folder>/analysis/frequency)")
    p.add_argument("--radii", default=None,
                   help="comma-separated filter radii in frequency bins, e.g. 1,2,4,8 (default: 1,2,4,6,8,12,16 that "
                        "fit the image)")
    p.add_argument("--split", default="test", help="data split to evaluate (default: test)")
    p.add_argument("--n", type=int, default=None, help="use only the first N images (default: all)")
    p.add_argument("--spectrum-n", type=int, default=64, help="images used for the feature spectra (default: 64)")
    p.add_argument("--delta-eps", default="2/255",
                   help="ε of the HAT perturbation whose spectrum is plotted, normalised units (0: skip)")
    p.add_argument("--batch-size", type=int, default=256)


def _parse_radii(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        radii = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ConfigError(f"--radii: cannot parse {text!r} (expected comma-separated numbers, e.g. 1,2,4,8)") from None
    if not radii:
        raise ConfigError("--radii: expected at least one radius")
    return radii


def hat_delta(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, num_classes: int) -> torch.Tensor:
    """HAT's perturbation (K = 3, α = ε/2, normalised units, no parameter update) of a batch, in pixels. -> x.shape.

    The model runs in eval mode here (an analysis, not a training step); its mode is restored.
    """
    import torch.nn.functional as F

    from vitlab.attacks.threat import model_mode
    from vitlab.methods.hat import hat_accumulate, input_scale

    scale = input_scale(model, "normalized", x.shape[1])
    target = F.one_hot(y, num_classes).to(x.dtype)
    with model_mode(model, "eval"), torch.enable_grad():
        params = [p for p in model.parameters() if p.requires_grad]
        for p in params:
            p.requires_grad_(False)  # only ∇δ is needed
        try:
            step = hat_accumulate(model, x, target, iters=3, eps=eps, step_size=eps / 2, ce_weight=3.0,
                                  kl_weight=0.01, scale=scale, backward=lambda loss: loss.backward())
        finally:
            for p in params:
                p.requires_grad_(True)
    view = (1, -1) + (1,) * (x.dim() - 2)
    return step.deltas[-1] * scale.view(view).to(x.dtype)


def frequency_points(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, radii: list[float] | None = None,
                     batch_size: int = 256, spectrum_n: int = 64, delta_eps: float = 0.0,
                     num_classes: int | None = None
                     ) -> tuple[list[dict[str, float]], dict[str, torch.Tensor], list[str]]:
    """What ``vitlab analyze frequency`` measures on images x (N, C, H, W) in [0, 1] and labels y (N,): the rows of
    :func:`~vitlab.analysis.frequency.filtered_accuracy` and the spectra of the first ``spectrum_n`` images (input,
    every feature map, and HAT's perturbation when ``delta_eps`` > 0), and warnings: a model that shows no feature
    map gets the input's spectrum only."""
    from vitlab.analysis.frequency import NoFeatureMapsError, filtered_accuracy, relative_log_amplitude, spectra

    rows = filtered_accuracy(model, x, y, radii, batch_size=batch_size)
    xs, ys = x[:spectrum_n], y[:spectrum_n]
    warnings: list[str] = []
    try:
        curves = spectra(model, xs)
    except NoFeatureMapsError as exc:
        curves = {"input": relative_log_amplitude(xs)}
        warnings.append(f"{exc}; only the input spectrum is plotted")
    if delta_eps > 0:
        classes = num_classes if num_classes is not None else int(y.max()) + 1
        curves["delta (HAT)"] = relative_log_amplitude(hat_delta(model, xs, ys, delta_eps, classes))
    return rows, curves, warnings


def run_frequency(args: argparse.Namespace) -> int:
    from vitlab.analysis.frequency import plot_filtered_accuracy, plot_spectra
    from vitlab.attacks.threat import parse_eps
    from vitlab.data import build_dataset
    from vitlab.data.catalog import data_config
    from vitlab.evaluation.robust import collect
    from vitlab.models.external import method_from_args

    radii = _parse_radii(args.radii)
    delta_eps = parse_eps(args.delta_eps)
    if args.model is not None and args.data is None:
        raise ValueError("--data: needed with --model (e.g. digits, foolbox-mnist, image_folder --data-root DIR)")
    method = method_from_args(args, data_config(args) if args.model is not None else None)
    model = method.eval_model().eval()
    cfg = method.cfg
    if args.ckpt is not None:
        cfg.data = data_config(args, cfg.data)
    dataset = build_dataset(cfg.data, args.split, train=False)
    x, y = collect(dataset, args.n)
    if x.dim() != 4:
        raise ConfigError(f"analyze frequency: expected images (N, C, H, W), got {tuple(x.shape)} from data.name "
                          f"{cfg.data.name!r}")
    beside = Path(args.ckpt).parent if args.ckpt else Path(".")
    out = Path(args.out) if args.out else beside / "analysis" / "frequency"
    out.mkdir(parents=True, exist_ok=True)
    label = f"{cfg.model.name} ({cfg.method.name})"

    rows, curves, warnings = frequency_points(model, x, y, radii, args.batch_size, args.spectrum_n, delta_eps,
                                    method.data.num_classes)
    with (out / "filtered_accuracy.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["radius", "filter", "top1"])
        for r in rows:
            if r["radius"] < 0:
                writer.writerow([-1, "none", f"{r['lowpass']:.4f}"])
                continue
            writer.writerow([r["radius"], "lowpass", f"{r['lowpass']:.4f}"])
            writer.writerow([r["radius"], "highpass", f"{r['highpass']:.4f}"])
    plot_filtered_accuracy({label: rows}, out / "filtered_accuracy.png", f"{cfg.data.name} {args.split}")

    with (out / "spectrum.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["layer", "index", "frequency_pi", "rel_log_amplitude"])
        for name, curve in curves.items():
            n = len(curve)
            for i, v in enumerate(curve.tolist()):
                writer.writerow([name, i, f"{i / max(n - 1, 1):.4f}", f"{v:.6f}"])
    plot_spectra(curves, out / "spectrum.png", f"{label}: feature-map spectra")
    summary = {"out": str(out), "clean_top1": rows[0]["lowpass"],
               "lowpass": {r["radius"]: round(r["lowpass"], 2) for r in rows[1:]},
               "highpass": {r["radius"]: round(r["highpass"], 2) for r in rows[1:]},
               "layers": [k for k in curves if k != "input" and not k.startswith("delta")]}
    if warnings:
        summary["warnings"] = warnings
    print(json.dumps(summary))
    return 0


ANALYSES["frequency"] = (_frequency_arguments, run_frequency,
                         "low/high-pass filtered accuracy and feature-map Fourier spectra of a checkpoint")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``vitlab analyze <analysis> ...``: one sub-parser per entry of :data:`ANALYSES`."""
    sub = parser.add_subparsers(dest="analysis", required=True, metavar="ANALYSIS")
    for name, (add, run_fn, help_text) in ANALYSES.items():
        p = sub.add_parser(name, help=help_text)
        add(p)
        p.set_defaults(analysis_run=run_fn)


def run(args: argparse.Namespace) -> int:
    return int(args.analysis_run(args))
