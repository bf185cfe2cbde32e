"""``vitlab eval --ckpt PATH --episodes`` and ``vitlab.episodes(model, dataset)``: few-shot episodes on any model.

Both run the same code: every image of the split is embedded **once** by the model's backbone
(:func:`episode_feature_fn`), then :func:`~vitlab.evaluation.episodes.evaluate_episodes` scores ``episodes``
n-way k-shot episodes per shot count with each head, all heads and shot counts on the same seed (specs/sun.md §2.7).

The feature (``feature``):

- ``gap`` : the global average pool of the backbone's final spatial map
  (:func:`~vitlab.models.fewshot.feature_map` → :func:`~vitlab.models.fewshot.pooled_feature`), what SUN and
  Meta-Baseline use (spec §2.2 (b)); for a ViT it is the mean of the patch tokens after the final norm.
- ``pre_logits``: the model's own pooled pre-logit feature (``forward_head(..., pre_logits=True)``): a ViT's [CLS].
- ``auto`` (default): ``gap`` when the backbone has a final map, else ``pre_logits``; the choice is printed and
  written to the JSON.

Default data: the checkpoint's few-shot counterpart (:data:`FEWSHOT_COUNTERPARTS`), split ``novel``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from vitlab.errors import ConfigError
from vitlab.evaluation.episodes import HEADS, embed_dataset, evaluate_episodes

FEATURES = ("auto", "gap", "pre_logits")
CI_KINDS = ("normal", "t")
# data set a checkpoint trained on -> its few-shot set with class-disjoint base / val / novel splits
FEWSHOT_COUNTERPARTS = {"digits": "digits_fewshot", "glyphs": "glyphs_fewshot", "glyphs_novel": "glyphs_fewshot",
                        "cifar100": "cifar_fs"}
FEWSHOT_SETS = ("digits_fewshot", "glyphs_fewshot", "mini_imagenet", "tiered_imagenet", "cifar_fs")
_PROGRESS_MIN_BATCHES = 8  # a progress bar only when embedding takes this many batches or more


def fewshot_counterpart(name: str) -> str:
    """The few-shot set of a checkpoint's data set (itself when it is one); a set without one is an error."""
    if name in FEWSHOT_SETS:
        return name
    if name in FEWSHOT_COUNTERPARTS:
        return FEWSHOT_COUNTERPARTS[name]
    raise ConfigError(f"--data: the checkpoint trained on {name!r}, which has no few-shot counterpart; name a few-shot "
                      f"set ({', '.join(FEWSHOT_SETS)}) or any registered set with --data")


def _unwrap(model: nn.Module) -> tuple[Callable[[Tensor], Tensor], nn.Module]:
    """(input normalisation, the timm-contract backbone) of an :class:`~vitlab.models.ImageClassifier`, of a model
    that holds one as ``backbone`` (SUN's ``PatchClassifier``, Meta-Baseline's encoder), or of a bare timm model."""
    steps: list[Callable[[Tensor], Tensor]] = []
    core = model
    for _ in range(4):
        inner, normalize = getattr(core, "model", None), getattr(core, "normalize", None)
        backbone = getattr(core, "backbone", None) or getattr(core, "encoder", None)
        if isinstance(inner, nn.Module) and isinstance(normalize, nn.Module):
            steps.append(normalize)
            core = inner
        elif isinstance(backbone, nn.Module) and not callable(getattr(core, "forward_features", None)):
            core = backbone
        else:
            break

    def preprocess(x: Tensor) -> Tensor:
        for step in steps:
            x = step(x)
        return x

    return preprocess, core


def episode_feature_fn(model: nn.Module, feature: str = "auto",
                       example: Tensor | None = None) -> tuple[Callable[[Tensor], Tensor], str]:
    """A function (B, C, H, W) in [0, 1] -> (B, D) features of ``model`` and the name of the feature it gives.

    ``auto`` tries the final map on ``example`` (one image batch) and falls back to the pre-logits.
    """
    from vitlab.models.fewshot import NoFeatureMapError, feature_map, pooled_feature

    if feature not in FEATURES:
        raise ConfigError(f"--feature: got {feature!r}, expected one of {', '.join(FEATURES)}")
    preprocess, core = _unwrap(model)

    def gap(x: Tensor) -> Tensor:
        return pooled_feature(feature_map(core, preprocess(x)))

    def pre_logits(x: Tensor) -> Tensor:
        forward_head = getattr(core, "forward_head", None)
        if not callable(forward_head):
            raise ConfigError(f"--feature pre_logits: {type(core).__name__} has no forward_head; use --feature gap")
        return forward_head(core.forward_features(preprocess(x)), pre_logits=True)  # type: ignore[operator]

    if feature == "gap":
        return gap, "gap"
    if feature == "pre_logits":
        return pre_logits, "pre_logits"
    if example is None:
        raise ValueError("episode_feature_fn: feature='auto' needs an example batch")
    try:
        with torch.no_grad():
            gap(example)
        return gap, "gap"
    except NoFeatureMapError:
        return pre_logits, "pre_logits"


def _check_source(dataset: Dataset[dict[str, Any]], ways: int, shots: Sequence[int], queries: int,
                  source: str) -> None:
    """The one-line errors of ``check_episode_source`` before anything is embedded (needs ``targets``)."""
    from vitlab.data.episodes import EpisodeShape, check_episode_source, class_members

    targets = getattr(dataset, "targets", None)
    if targets is None:
        return  # checked after embedding instead
    members = class_members(targets)
    names = getattr(dataset, "classes", None)
    for shot in shots:
        check_episode_source(members, EpisodeShape(ways, shot, queries), names, source=source)


def _progress(total: int, description: str) -> tuple[Any, Callable[[int], None] | None]:
    if total < _PROGRESS_MIN_BATCHES or not sys.stderr.isatty():
        return None, None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   transient=True)
    bar.start()
    task = bar.add_task(description, total=total)
    return bar, lambda n: bar.advance(task, n)


def episodes(model: nn.Module | str | Path, dataset: Dataset[dict[str, Any]], ways: int = 5,
             shots: Sequence[int] = (1, 5), queries: int = 15, n_episodes: int = 2000, seed: int = 12345,
             heads: Sequence[str] = ("cosine",), ci: str = "normal", feature: str = "auto", batch_size: int = 256,
             device: torch.device | str | None = None, progress: bool = False) -> dict[str, Any]:
    """Few-shot accuracy of ``model``'s features on ``dataset``'s classes: mean ± 95% CI per head and shot count.

    Args:
        model: an image model taking (B, C, H, W) in [0, 1] (a vitlab ``ImageClassifier``, e.g. a checkpoint's
            ``load_eval_model``, or a timm model), or the path of a vitlab checkpoint.
        dataset: items ``{"image", "label"}``, e.g. ``build_dataset(cfg.data, "novel", train=False)``.
        ways, shots, queries: the episode shapes (one per shot count); n_episodes, seed: how many, which.
        heads: any of cosine (Meta-Baseline), euclidean (ProtoNet), logistic.
        ci: "normal" (1.96 · std / √n) or "t" (t_{0.975, n−1}: 1.9612 for 2000 episodes).
        feature: "auto", "gap" or "pre_logits" (see the module docstring).
        device: where the images are embedded (default: the model's device); episodes are scored on the CPU.
        progress: a progress bar while embedding (on a terminal, for 8 batches or more).
    Returns:
        ``{"feature", "images", "classes", "ways", "queries", "episodes", "seed", "ci", "results": [{"head",
        "ways", "shots", "queries", "episodes", "mean", "ci95"}, ...]}`` with accuracies in %.
    """
    if isinstance(model, (str, Path)):
        from vitlab.engine.checkpoint import load_eval_model

        model = load_eval_model(model)
    for head in heads:
        if head not in HEADS:
            raise ConfigError(f"--heads: unknown head {head!r} (allowed: {', '.join(HEADS)})")
    if ci not in CI_KINDS:
        raise ConfigError(f"--ci: got {ci!r}, expected one of {', '.join(CI_KINDS)}")
    if not shots:
        raise ConfigError("--shots: give at least one shot count")
    _check_source(dataset, ways, shots, queries, source="episodes")
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval().to(device)
    try:
        example = dataset[0]["image"].unsqueeze(0).to(device)
        feature_fn, used = episode_feature_fn(model, feature, example)
        total = -(-len(dataset) // batch_size)  # type: ignore[arg-type]
        bar, advance = _progress(total, "embedding") if progress else (None, None)
        try:
            features, labels = embed_dataset(feature_fn, dataset, batch_size, device, on_batch=advance)
        finally:
            if bar is not None:
                bar.stop()
    finally:
        model.train(was_training)
    from vitlab.data.episodes import EpisodeShape

    rows = []
    for shot in shots:
        scored = evaluate_episodes(features, labels, EpisodeShape(ways, shot, queries), n_episodes, seed,
                                   tuple(heads), ci, getattr(dataset, "classes", None))  # type: ignore[arg-type]
        rows += [scored[head].summary() for head in heads]
    return {"feature": used, "images": int(labels.numel()), "classes": int(labels.unique().numel()),
            "dim": int(features.shape[1]), "ways": ways, "queries": queries, "episodes": n_episodes, "seed": seed,
            "ci": ci, "results": rows}


def format_table(report: dict[str, Any]) -> list[str]:
    """The printed table: one row per head, one column per shot count, ``mean ± CI``."""
    shots = sorted({r["shots"] for r in report["results"]})
    heads = list(dict.fromkeys(r["head"] for r in report["results"]))
    cell = {(r["head"], r["shots"]): f"{r['mean']:.2f} ± {r['ci95']:.2f}" for r in report["results"]}
    ci = "1.96·std/√n" if report["ci"] == "normal" else "t·std/√n"
    lines = [f"{report['ways']}-way, {report['queries']} queries, {report['episodes']} episodes (seed "
             f"{report['seed']}); {report['images']} images of {report['classes']} classes; feature "
             f"{report['feature']} ({report['dim']}-d); 95% CI {ci}",
             f"{'head':<12}" + "".join(f"{f'{s}-shot':>18}" for s in shots)]
    for head in heads:
        lines.append(f"{head:<12}" + "".join(f"{cell[(head, s)]:>18}" for s in shots))
    return lines


def add_episode_arguments(p: argparse.ArgumentParser) -> None:
    """The ``--episodes`` options of ``vitlab eval``."""
    g = p.add_argument_group("few-shot episodes (--episodes)")
    g.add_argument("--episodes", action="store_true",
                   help="few-shot episodes on the checkpoint's backbone features instead of the task metrics")
    from vitlab.data.catalog import data_names_help

    g.add_argument("--data", default=None,
                   help="data set of the episodes (default: the checkpoint's few-shot counterpart, e.g. digits -> "
                        "digits_fewshot), and of the metrics of --model; " + data_names_help())
    g.add_argument("--ways", type=int, default=5)
    g.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    g.add_argument("--queries", type=int, default=15)
    g.add_argument("--n-episodes", type=int, default=2000)
    g.add_argument("--episode-seed", type=int, default=12345)
    g.add_argument("--heads", nargs="+", default=["cosine"], help=f"any of {', '.join(HEADS)}")
    g.add_argument("--ci", default="normal", help="normal: 1.96·std/√n (default); t: Student's t (1.9612 at 2000)")
    g.add_argument("--feature", default="auto", help="auto | gap (pooled final map, SUN's) | pre_logits")


def run_episodes(args: argparse.Namespace) -> int:
    """``vitlab eval --ckpt PATH --episodes``: print the table, write the JSON to ``--out`` atomically."""
    from vitlab.config import apply_overrides, load_config
    from vitlab.data import build_dataset
    from vitlab.engine.checkpoint import atomic_write_bytes

    for head in args.heads:  # before loading anything
        if head not in HEADS:
            raise ConfigError(f"--heads: unknown head {head!r} (allowed: {', '.join(HEADS)})")
    if args.ci not in CI_KINDS:
        raise ConfigError(f"--ci: got {args.ci!r}, expected one of {', '.join(CI_KINDS)}")
    from vitlab.data.catalog import data_config
    from vitlab.models.external import method_from_args

    if args.model is not None and args.data is None:
        raise ConfigError(f"--data: needed with --model (a few-shot set: {', '.join(FEWSHOT_SETS)}, or any set)")
    method = method_from_args(args, data_config(args) if args.model is not None else None)
    cfg = method.cfg
    if args.config is not None:
        cfg.data = load_config(args.config, args.set).data
    elif args.set:
        cfg = apply_overrides(cfg, args.set)
    cfg.data = data_config(args, cfg.data, name=cfg.data.name)
    name = args.data or fewshot_counterpart(cfg.data.name)
    from vitlab.data.build import FEWSHOT_ALIASES

    # eval's default split "test" is the novel classes of a few-shot set (the builders accept both names)
    split = FEWSHOT_ALIASES.get(args.split, args.split) if name in FEWSHOT_SETS else args.split
    data_cfg = dataclasses.replace(cfg.data, name=name)
    dataset = build_dataset(data_cfg, split, train=False)
    report = episodes(method.eval_model(), dataset, args.ways, args.shots, args.queries, args.n_episodes,
                      args.episode_seed, args.heads, args.ci, args.feature, cfg.data.eval_batch_size,
                      device="cuda" if torch.cuda.is_available() else "cpu", progress=True)
    report = {"ckpt": str(args.ckpt or method.source), "data": name, "split": split, **report}
    print(f"{name} / {split}: " + format_table(report)[0])
    for line in format_table(report)[1:]:
        print(line)
    if args.out:
        atomic_write_bytes((json.dumps(report, indent=2) + "\n").encode(), args.out)
    return 0
