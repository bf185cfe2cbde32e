"""``vitlab attack``: clean and robust accuracy of a model under PGD, APGD or the AutoAttack protocol.

The model is a vitlab checkpoint (``--ckpt``) or a bare state dict loaded into a registered model
(``--model cifar_resnet18 --weights PATH``). Data: the checkpoint's test split by default, or ``--data NAME``: a vitlab
data set name, or ``foolbox-cifar10`` (the 20 real CIFAR-10 test images that ship in foolbox's wheel).
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

ATTACK_CHOICES = ("autoattack", "apgd-ce", "apgd-t", "pgd")
FOOLBOX_SETS = {f"foolbox-{kind.lower()}": (kind, classes) for kind, classes in FOOLBOX_CLASSES.items()}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_argument_group("model")
    src.add_argument("--ckpt", default=None, help="a vitlab checkpoint (its EMA weights when the run evaluated them)")
    src.add_argument("--model", default=None, help="a registered model name, with --weights (e.g. cifar_resnet18)")
    src.add_argument("--weights", default=None, help="a state dict file for --model")
    src.add_argument("--num-classes", type=int, default=None, help="classes of --model (default: from --data)")
    src.add_argument("--mean", type=float, nargs="+", default=None, help="per-channel mean normalised inside --model")
    src.add_argument("--std", type=float, nargs="+", default=None, help="per-channel std normalised inside --model")
    parser.add_argument("--data", default=None, help="vitlab data set name or foolbox-cifar10 (default: the ckpt's)")
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


def _vitlab_images(name: str, base: Any, n: int | None) -> tuple[Tensor, Tensor]:
    import dataclasses

    from vitlab.config import DataConfig
    from vitlab.data import build_dataset
    from vitlab.evaluation.robust import collect

    cfg = dataclasses.replace(base, name=name) if base is not None else DataConfig(name=name)
    return collect(build_dataset(cfg, "test", train=False), n)


def load_target(args: argparse.Namespace) -> tuple[nn.Module, Tensor, Tensor, str]:
    """The model (eval mode) and the points (x in [0, 1], y) the command attacks, and a description of the source."""
    from vitlab.models.classifier import ImageClassifier

    if (args.ckpt is None) == (args.model is None):
        raise ConfigError("give either --ckpt PATH or --model NAME --weights PATH")
    data_cfg = None
    if args.ckpt is not None:
        from vitlab.engine.checkpoint import load_eval_model, load_run_config

        model = load_eval_model(args.ckpt)
        data_cfg = load_run_config(args.ckpt).data
        source = str(args.ckpt)
    else:
        import timm

        import vitlab.models  # noqa: F401  (registers vitlab models)
        from vitlab.models.cifar_resnet import load_state_dict_file

        if args.weights is None:
            raise ConfigError("--model needs --weights PATH (a state dict; nothing is downloaded)")
        if not timm.is_model(args.model):
            raise ConfigError(f"--model: unknown model {args.model!r} (`vitlab models` lists them)")
        num_classes = args.num_classes or (FOOLBOX_SETS[args.data][1] if args.data in FOOLBOX_SETS else 10)
        backbone = timm.create_model(args.model, num_classes=num_classes)
        load_state_dict_file(backbone, args.weights)
        if (args.mean is None) != (args.std is None):
            raise ConfigError("--mean and --std go together")
        model = ImageClassifier(backbone, args.mean, args.std)
        source = f"{args.model}:{args.weights}"
    data = args.data
    if data is None and data_cfg is None:
        raise ConfigError("--data: needed with --model (e.g. foolbox-cifar10, digits)")
    if data in FOOLBOX_SETS:
        images, y = foolbox_images(FOOLBOX_SETS[data][0])
        x = images.float() / 255.0
        x, y = (x[: args.n], y[: args.n]) if args.n else (x, y)
    else:
        x, y = _vitlab_images(data or data_cfg.name, data_cfg, args.n)  # type: ignore[union-attr]
    check_unit_range(x, f"--data {data or data_cfg.name}")  # type: ignore[union-attr]
    return model.eval(), x, y, source


def run(args: argparse.Namespace) -> int:
    norm = check_norm(args.norm)
    eps = parse_eps(args.eps) if args.eps is not None else (8 / 255 if norm == "Linf" else 0.5)
    if args.n is not None and args.n < 1:
        raise ConfigError(f"--n: got {args.n}, expected a number of points >= 1")
    if args.steps is not None and args.steps < 1:
        raise ConfigError(f"--steps: got {args.steps}, expected >= 1")
    if args.attacks and (args.attack != "autoattack" or args.version != "custom"):
        raise ConfigError("--attacks goes with --attack autoattack --version custom")
    model, x, y, source = load_target(args)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    from vitlab.attacks.autoattack import AutoAttackProtocol, output_range_check

    output_range_check(model, x[: args.batch_size].to(device))
    start = time.perf_counter()
    if args.attack == "autoattack":
        protocol = AutoAttackProtocol(model, norm=norm, eps=eps, version=args.version, attacks=args.attacks,
                                      seed=args.seed, backend=args.backend, batch_size=args.batch_size,
                                      apgd_steps=args.steps or 100)
        _, report_obj = protocol.run(x, y)
        report = report_obj.to_dict()
    else:
        report = _single_attack(model, x.to(device), y.to(device), args.attack, norm, eps, args)
    report.update({"source": source, "attack": args.attack, "seconds_total": time.perf_counter() - start})
    print(f"{source}: {report['n']} points, {norm} eps {eps:.6g}, seed {args.seed}")
    print(f"  clean accuracy          {100 * report['clean_accuracy']:6.2f}%")
    for name, value in report["per_attack"].items():
        print(f"  robust after {name:<10} {100 * value:6.2f}%")
    print(f"  robust accuracy         {100 * report['robust_accuracy']:6.2f}%   (max {norm} perturbation "
          f"{report['max_perturbation']:.6f})")
    for message in report.get("warnings", []):
        print(f"  warning: {message}")
    out = Path(args.out) if args.out else Path(args.ckpt or args.weights).with_name(
        f"attack_{args.attack}_{norm}.json")
    from vitlab.engine.checkpoint import atomic_write_bytes

    atomic_write_bytes(json.dumps(report, indent=2).encode(), out)
    print(f"  report: {out}")
    return 0


def _single_attack(model: nn.Module, x: Tensor, y: Tensor, attack: str, norm: str, eps: float,
                   args: argparse.Namespace) -> dict[str, Any]:
    from vitlab.attacks.apgd import apgd, apgd_targeted
    from vitlab.attacks.pgd import pgd

    bs = args.batch_size
    adv = []
    start = time.perf_counter()
    for i in range(0, x.shape[0], bs):
        xb, yb = x[i:i + bs], y[i:i + bs]
        if attack == "pgd":
            steps = args.steps or 20
            adv.append(pgd(model, xb, yb, eps=eps, norm=norm, steps=steps,
                           step_size=eps / 4 if norm == "Linf" else 2.5 * eps / steps, seed=args.seed))
        elif attack == "apgd-ce":
            adv.append(apgd(model, xb, yb, eps=eps, norm=norm, steps=args.steps or 100, seed=args.seed))
        else:
            adv.append(apgd_targeted(model, xb, yb, eps=eps, norm=norm, steps=args.steps or 100, seed=args.seed))
    x_adv = torch.cat(adv)
    seconds = time.perf_counter() - start
    with torch.no_grad(), model_mode(model, "eval"):
        clean = torch.cat([model(x[i:i + bs]).argmax(1) == y[i:i + bs] for i in range(0, x.shape[0], bs)])
        robust = torch.cat([model(x_adv[i:i + bs]).argmax(1) == y[i:i + bs] for i in range(0, x.shape[0], bs)])
    robust &= clean
    return {"n": int(x.shape[0]), "norm": norm, "eps": eps, "seed": args.seed, "version": attack, "backend": "native",
            "attacks": [attack], "clean_accuracy": float(clean.float().mean()),
            "robust_accuracy": float(robust.float().mean()), "per_attack": {attack: float(robust.float().mean())},
            "seconds": {attack: seconds}, "max_perturbation": max_perturbation(x_adv, x, norm), "warnings": []}
