"""Robustness benchmarks: native APGD-CE against the reference (pyautoattack) APGD-CE, and SCORE vs TRADES step time.

1. APGD-CE, same model, points and seed: robust accuracy of both side by side and the wall-time ratio. The default
   model is a vitlab checkpoint (``--ckpt``, e.g. an adversarially trained digits model, which leaves a non-trivial
   robust accuracy) on its test split, or the pretrained CIFAR-10 ResNet-18 of the AutoAttack wheel on foolbox's 20
   images (``--pretrained-resnet``). Agreement goal: within 1 point on >= 500 points.
2. One training step of ``score`` and of ``trades`` (same model, batch and attack) and their ratio.

Run: python benchmarks/bench_robust.py --ckpt runs/robust_small/trades_s0/last.ckpt --n 500
     python benchmarks/bench_robust.py --pretrained-resnet
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch


def _points(args: argparse.Namespace) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, str]:
    if args.pretrained_resnet:
        import pyautoattack

        from vitlab.data.foolbox import foolbox_images
        from vitlab.models.cifar_resnet import cifar_resnet18, load_state_dict_file

        model = cifar_resnet18(num_classes=10)
        load_state_dict_file(model, os.path.join(os.path.dirname(pyautoattack.__file__), "examples", "model_test.pt"))
        images, y = foolbox_images("cifar10")
        x = images.float() / 255.0
        return model.eval(), x, y, "cifar_resnet18 (pyautoattack example) on foolbox CIFAR-10"
    import dataclasses

    from vitlab.data import build_dataset
    from vitlab.engine.checkpoint import load_eval_model, load_run_config
    from vitlab.evaluation.robust import collect

    model = load_eval_model(args.ckpt)
    cfg = load_run_config(args.ckpt)
    x, y = collect(build_dataset(cfg.data, "test", train=False))
    if args.n and args.n > x.shape[0]:
        # the test split is small (digits: 360): add the training split, without augmentation
        xt, yt = collect(build_dataset(dataclasses.replace(cfg.data), "train", train=False))
        x, y = torch.cat([x, xt]), torch.cat([y, yt])
    return model.eval(), x[: args.n], y[: args.n], f"{args.ckpt} ({cfg.model.name}, {cfg.data.name})"


def bench_apgd(args: argparse.Namespace) -> dict[str, float | int | str]:
    from pyautoattack.autopgd_base import APGDAttack

    from vitlab.attacks.apgd import apgd

    model, x, y, what = _points(args)
    eps = args.eps
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()
    times: dict[str, list[float]] = {"native": [], "native_nchw": [], "reference": []}
    points: dict[str, torch.Tensor] = {}

    def run(kind: str) -> None:
        start = time.perf_counter()
        if kind == "reference":
            attack = APGDAttack(model, n_iter=100, eps=eps, norm="Linf", n_restarts=1, seed=0, device="cpu")
            chunks = [attack.perturb(x[i:i + args.batch_size], y[i:i + args.batch_size])
                      for i in range(0, x.shape[0], args.batch_size)]
        else:
            chunks = [apgd(model, x[i:i + args.batch_size], y[i:i + args.batch_size], eps=eps, steps=100, seed=0,
                           channels_last=kind == "native") for i in range(0, x.shape[0], args.batch_size)]
        times[kind].append(time.perf_counter() - start)
        points[kind] = torch.cat(chunks)

    for repeat in range(args.repeats):  # alternate the order so that a drifting machine load favours neither side
        order = ["native", "native_nchw", "reference"]
        for kind in order if repeat % 2 == 0 else order[::-1]:
            run(kind)
    with torch.no_grad():
        robust = {k: (model(v).argmax(1) == y).float().mean().item() for k, v in points.items()}
    best = {k: min(v) for k, v in times.items()}
    return {"model": what, "n": int(x.shape[0]), "eps": eps, "clean": clean, "robust_native": robust["native"],
            "robust_native_nchw": robust["native_nchw"], "robust_reference": robust["reference"],
            "seconds_native": best["native"], "seconds_native_nchw": best["native_nchw"],
            "seconds_reference": best["reference"], "speedup": best["reference"] / best["native"],
            "speedup_nchw": best["reference"] / best["native_nchw"], "threads": torch.get_num_threads()}


def bench_steps(args: argparse.Namespace) -> dict[str, float]:
    from vitlab.config import RunConfig
    from vitlab.methods.adversarial import TRADES, TRADESConfig
    from vitlab.methods.base import DataInfo, Progress
    from vitlab.methods.score import SCORE, SCOREConfig

    info = DataInfo(num_classes=10, channels=3, img_size=32, mean=(0.5,) * 3, std=(0.25,) * 3)
    batch = {"image": torch.rand(args.step_batch, 3, 32, 32), "label": torch.randint(0, 10, (args.step_batch,))}
    progress = Progress(step=0, epoch=0, total_steps=1, steps_per_epoch=1)
    out = {}
    for name, cls, config_cls in (("score", SCORE, SCOREConfig), ("trades", TRADES, TRADESConfig)):
        cfg = RunConfig(method=config_cls())
        cfg.model.name = args.step_model
        torch.manual_seed(0)
        method = cls(cfg, info).train()
        times = []
        for _ in range(args.repeats + 1):
            start = time.perf_counter()
            method(batch, progress)["loss"].backward()
            times.append(time.perf_counter() - start)
        out[f"step_seconds_{name}"] = min(times[1:])
    out["score_over_trades"] = out["step_seconds_score"] / out["step_seconds_trades"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", default=None)
    parser.add_argument("--pretrained-resnet", action="store_true")
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--eps", type=float, default=8 / 255)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--step-model", default="preact_resnet_small")
    parser.add_argument("--step-batch", type=int, default=128)
    parser.add_argument("--skip-apgd", action="store_true")
    parser.add_argument("--skip-steps", action="store_true")
    args = parser.parse_args()
    if not args.skip_apgd and not (args.ckpt or args.pretrained_resnet):
        parser.error("give --ckpt PATH or --pretrained-resnet (or --skip-apgd)")
    results: dict[str, object] = {}
    if not args.skip_apgd:
        results["apgd_ce"] = bench_apgd(args)
    if not args.skip_steps:
        results["steps"] = bench_steps(args)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
