"""``vitlab attack``: clean and robust accuracy of a model under PGD, APGD or the AutoAttack protocol.

The model is a vitlab checkpoint (``--ckpt``) or any model (``--model path/to/file.py:factory`` or a timm / vitlab
name, ``--weights`` a state dict, safetensors file or checkpoint; :mod:`vitlab.models.external`). Data: the
checkpoint's test split by default, or ``--data NAME``: any set ``vitlab data`` lists (``foolbox-mnist`` and the other
foolbox sets at their own size, converted to the model's ``--input-size``), or your own with ``--data-root``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vitlab.attacks.threat import check_norm, check_unit_range, max_perturbation, model_mode, parse_eps
from vitlab.data.foolbox import FOOLBOX_CLASSES, foolbox_images
from vitlab.errors import ConfigError

ATTACK_CHOICES = ("autoattack", "apgd-ce", "apgd-t", "pgd", "exact", "pwws", "genetic", "ascc")  # the last 4: text
FOOLBOX_SETS = {f"foolbox-{kind.lower()}": (kind, classes) for kind, classes in FOOLBOX_CLASSES.items()}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from vitlab.data.catalog import add_data_arguments
    from vitlab.models.external import add_model_arguments

    add_model_arguments(parser)
    add_data_arguments(parser, default="the checkpoint's test split")
    parser.add_argument("--attack", required=True, choices=ATTACK_CHOICES)
    parser.add_argument("--norm", default="Linf", help="Linf or L2")
    parser.add_argument("--eps", default=None, help="budget, e.g. 8/255 or 0.031 (default 8/255 Linf, 0.5 L2)")
    parser.add_argument("--n", type=int, default=None, help="attack the first N test points (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--steps", type=int, default=None, help="iterations (default: PGD 20, APGD 100)")
    parser.add_argument("--version", default="standard", choices=("standard", "custom"),
                        help="autoattack: standard (APGD-CE, APGD-T, FAB-T, Square) or custom (--attacks)")
    parser.add_argument("--attacks", nargs="+", default=None, help="autoattack --version custom: e.g. apgd-ce apgd-t")
    parser.add_argument("--backend", default="reference", choices=("reference", "native"),
                        help="autoattack: the official code (pyautoattack) or vitlab's native cascade")
    parser.add_argument("--out", default=None, help="JSON report path (default: attack_<attack>_<norm>.json beside "
                                                    "the checkpoint or weights)")
    from vitlab.attacks.text import add_text_arguments

    add_text_arguments(parser)


def _vitlab_images(cfg: Any, n: int | None) -> tuple[Tensor, Tensor]:
    from vitlab.data import build_dataset
    from vitlab.evaluation.robust import collect

    return collect(build_dataset(cfg, "test", train=False), n)


def _to_input_size(x: Tensor, size: tuple[int, int, int] | None) -> Tensor:
    """Images (N, C, H, W) in [0, 1] as the model's (C', H', W'): grey <-> RGB (luma), bilinear resize."""
    if size is None:
        return x
    c, h, w = size
    if x.shape[1] == 3 and c == 1:
        x = (0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    elif x.shape[1] == 1 and c == 3:
        x = x.expand(-1, 3, -1, -1)
    if tuple(x.shape[-2:]) != (h, w):
        x = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    return x.clamp(0, 1).contiguous()


def load_target(args: argparse.Namespace) -> tuple[nn.Module, Tensor, Tensor, str]:
    """The model (eval mode) and the points (x in [0, 1], y) the command attacks, and a description of the source."""
    from vitlab.data.catalog import data_config
    from vitlab.models.external import build_outside_model, check_model_choice

    check_model_choice(args)
    if args.ckpt is not None:
        from vitlab.engine.checkpoint import load_eval_model, load_run_config

        model = load_eval_model(args.ckpt)
        cfg = data_config(args, load_run_config(args.ckpt).data)
        x, y = _vitlab_images(cfg, args.n)
        source = str(args.ckpt)
    else:
        if args.data is None:
            raise ConfigError("--data: needed with --model (e.g. foolbox-mnist, digits, image_folder --data-root DIR)")
        if args.data in FOOLBOX_SETS:  # the images at their own size; the model's --input-size converts them
            images, y = foolbox_images(FOOLBOX_SETS[args.data][0])
            x = images.float() / 255.0
            x, y = (x[: args.n], y[: args.n]) if args.n else (x, y)
            outside = build_outside_model(args, x.shape[1], x.shape[-1], FOOLBOX_SETS[args.data][1])
        else:
            cfg = data_config(args)
            from vitlab.models.external import parse_input_size

            size = parse_input_size(args.input_size)
            if size is not None:
                cfg.channels, cfg.img_size = size[0], size[1]  # type: ignore[assignment]
            x, y = _vitlab_images(cfg, args.n)
            outside = build_outside_model(args, x.shape[1], x.shape[-1], int(y.max()) + 1)
        x = _to_input_size(x, outside.convention.input_size)
        model, source = outside.model, outside.source
    check_unit_range(x, f"--data {args.data}")
    return model.eval(), x, y, source


def run(args: argparse.Namespace) -> int:
    from vitlab.attacks.text import TEXT_ATTACKS

    if args.attack in TEXT_ATTACKS:
        from vitlab.attacks.text import run_command

        return run_command(args)
    norm = check_norm(args.norm)
    eps = parse_eps(args.eps) if args.eps is not None else (8 / 255 if norm == "Linf" else 0.5)
    if args.n is not None and args.n < 1:
        raise ConfigError(f"--n: got {args.n}, expected a number of points >= 1")
    if args.steps is not None and args.steps < 1:
        raise ConfigError(f"--steps: got {args.steps}, expected >= 1")
    if args.attacks and (args.attack != "autoattack" or args.version != "custom"):
        raise ConfigError("--attacks goes with --attack autoattack --version custom")
    model, x, y, source = load_target(args)
    _, report = attack_points(model, x, y, args.attack, norm, eps, seed=args.seed, steps=args.steps,
                              version=args.version, attacks=args.attacks, backend=args.backend,
                              batch_size=args.batch_size)
    report["source"] = source
    print(f"{source}: {report['n']} points, {norm} eps {eps:.6g}, seed {args.seed}")
    print(f"  clean accuracy          {100 * report['clean_accuracy']:6.2f}%")
    for name, value in report["per_attack"].items():
        print(f"  robust after {name:<10} {100 * value:6.2f}%")
    print(f"  robust accuracy         {100 * report['robust_accuracy']:6.2f}%   (max {norm} perturbation "
          f"{report['max_perturbation']:.6f})")
    for message in report.get("warnings", []):
        print(f"  warning: {message}")
    beside = args.ckpt or args.weights or "."
    out = Path(args.out) if args.out else Path(beside).with_name(f"attack_{args.attack}_{norm}.json")
    from vitlab.engine.checkpoint import atomic_write_bytes

    atomic_write_bytes(json.dumps(report, indent=2).encode(), out)
    print(f"  report: {out}")
    return 0


def attack_points(model: nn.Module, x: Tensor, y: Tensor, attack: str = "autoattack", norm: str = "Linf",
                  eps: float = 8 / 255, seed: int = 0, steps: int | None = None, version: str = "standard",
                  attacks: list[str] | None = None, backend: str = "reference",
                  batch_size: int = 250) -> tuple[Tensor, dict[str, Any]]:
    """Attack (x (N, C, H, W) in [0, 1], y (N,)) and report clean / robust accuracy: what ``vitlab attack`` runs.

    Returns the adversarial inputs (N, C, H, W) (on the CPU) and the report (accuracies as fractions, the
    largest perturbation, seconds, warnings). The model runs on the GPU when there is one; its mode is restored.
    """
    if attack not in ATTACK_CHOICES:
        raise ValueError(f"attack: got {attack!r}, expected one of {', '.join(ATTACK_CHOICES)}")
    norm = check_norm(norm)
    check_unit_range(x, "x")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    from vitlab.attacks.autoattack import AutoAttackProtocol, output_range_check

    output_range_check(model, x[:batch_size].to(device))
    start = time.perf_counter()
    if attack == "autoattack":
        protocol = AutoAttackProtocol(model, norm=norm, eps=eps, version=version, attacks=attacks, seed=seed,
                                      backend=backend, batch_size=batch_size, apgd_steps=steps or 100)
        x_adv, report_obj = protocol.run(x, y)
        report = report_obj.to_dict()
    else:
        x_adv, report = _single_attack(model, x.to(device), y.to(device), attack, norm, eps, seed, steps, batch_size)
    report.update({"attack": attack, "seconds_total": time.perf_counter() - start})
    return x_adv.cpu(), report


def _single_attack(model: nn.Module, x: Tensor, y: Tensor, attack: str, norm: str, eps: float, seed: int,
                   steps: int | None, bs: int) -> tuple[Tensor, dict[str, Any]]:
    from vitlab.attacks.apgd import apgd, apgd_targeted
    from vitlab.attacks.pgd import pgd

    adv = []
    start = time.perf_counter()
    for i in range(0, x.shape[0], bs):
        xb, yb = x[i:i + bs], y[i:i + bs]
        if attack == "pgd":
            n_steps = steps or 20
            adv.append(pgd(model, xb, yb, eps=eps, norm=norm, steps=n_steps,
                           step_size=eps / 4 if norm == "Linf" else 2.5 * eps / n_steps, seed=seed))
        elif attack == "apgd-ce":
            adv.append(apgd(model, xb, yb, eps=eps, norm=norm, steps=steps or 100, seed=seed))
        else:
            adv.append(apgd_targeted(model, xb, yb, eps=eps, norm=norm, steps=steps or 100, seed=seed))
    x_adv = torch.cat(adv)
    seconds = time.perf_counter() - start
    with torch.no_grad(), model_mode(model, "eval"):
        clean = torch.cat([model(x[i:i + bs]).argmax(1) == y[i:i + bs] for i in range(0, x.shape[0], bs)])
        robust = torch.cat([model(x_adv[i:i + bs]).argmax(1) == y[i:i + bs] for i in range(0, x.shape[0], bs)])
    robust &= clean
    return x_adv, {"n": int(x.shape[0]), "norm": norm, "eps": eps, "seed": seed, "version": attack, "backend": "native",
            "attacks": [attack], "clean_accuracy": float(clean.float().mean()),
            "robust_accuracy": float(robust.float().mean()), "per_attack": {attack: float(robust.float().mean())},
            "seconds": {attack: seconds}, "max_perturbation": max_perturbation(x_adv, x, norm), "warnings": []}
