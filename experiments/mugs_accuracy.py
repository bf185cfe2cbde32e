"""The Mugs small-scale accuracy plan (specs/mugs.md §6) on digits or glyphs: Mugs and GDS-only pretraining over
several seeds, plus the random-init backbone, a supervised reference and raw pixels, all scored by the same k-NN and
linear probe. Speed and memory: ``benchmarks/bench_mugs.py``.

    python experiments/mugs_accuracy.py --data digits --seeds 0 1 2 --out runs/mugs_bench/digits.json
    python experiments/mugs_accuracy.py --out runs/mugs_bench/digits.json --table   # the table, no training
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vitlab.methods.mugs import Mugs

# torch and vitlab are imported where runs are made, so that the summaries and tables of this file load without them
# (experiments/tables.py prints the Mugs tables of docs/ through summarize, markdown_table and along_training_table)

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "mugs" / "vit_tiny_digits.yaml"
GLYPHS_RECIPE = ROOT / "recipes" / "mugs" / "vit_tiny_glyphs.yaml"
GDS_ONLY = "method.loss_weights=[0,0,1]"


def _mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}  # type: ignore[dict-item]


def _scores(method: Mugs) -> dict[str, float]:
    import torch
    from torch.utils.data import DataLoader

    from vitlab.methods.mugs import Mugs

    loaders = {k: DataLoader(ds, batch_size=512) for k, ds in Mugs.eval_datasets(method.cfg).items()}
    with torch.no_grad():
        return method.eval().evaluate(loaders, None)


def _backbone_scores(model: Any, cfg: Any) -> dict[str, float]:
    """The Mugs k-NN and probe protocol on any classifier's features (supervised reference, raw pixels)."""
    from torch.utils.data import DataLoader

    from vitlab.evaluation.frozen_features import evaluate_frozen_features
    from vitlab.methods.mugs import Mugs

    loaders = {k: DataLoader(ds, batch_size=512) for k, ds in Mugs.eval_datasets(cfg).items()}
    scores = evaluate_frozen_features(model, loaders, Mugs.method_config(cfg).eval, seed=cfg.train.seed, ks=[20])
    return {"knn_top1": scores["knn_top1"], "probe_top1": scores["probe_top1"]}


def _eval_history(metrics_csv: Path) -> dict[str, dict[str, float]]:
    """The evaluation rows of a run's metrics.csv (every ``train.eval_every`` epochs), keyed by epoch."""
    history: dict[str, dict[str, float]] = {}
    with metrics_csv.open() as f:
        for row in csv.DictReader(f):
            if row["phase"] == "eval":
                history.setdefault(str(int(row["epoch"]) + 1), {})[row["name"]] = float(row["value"])
    return history


def gates(summary: dict[str, Any]) -> dict[str, Any]:
    """The pass criteria of specs/mugs.md §6 from a summary: Mugs − random init against 3 × the larger of the two seed
    stds, and Mugs − GDS-only against one GDS-only seed std."""
    out: dict[str, Any] = {}
    for metric in ("knn_top1", "probe_top1"):
        if "mugs" not in summary:
            break
        mugs = summary["mugs"][metric]
        if "random_init" in summary:
            rand = summary["random_init"][metric]
            margin, bar = mugs["mean"] - rand["mean"], 3 * max(mugs["std"], rand["std"])
            out[f"{metric}/mugs_minus_random"] = {"diff": margin, "three_std": bar, "pass": margin > bar}
        if "gds_only" in summary:
            gds = summary["gds_only"][metric]
            diff = mugs["mean"] - gds["mean"]
            out[f"{metric}/mugs_minus_gds_only"] = {"diff": diff, "gds_std": gds["std"], "pass": diff >= -gds["std"]}
    return out


def _pixels() -> Any:
    """A 'backbone' whose features are the raw pixels."""
    import torch

    class Pixels(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.flatten(1)

    return Pixels()


def run_accuracy(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from vitlab.config import load_config
    from vitlab.engine.checkpoint import atomic_write_bytes
    from vitlab.engine.trainer import train
    from vitlab.methods.base import data_info_from
    from vitlab.methods.mugs import Mugs

    torch.set_num_threads(args.threads)
    recipe = GLYPHS_RECIPE if args.data == "glyphs" else RECIPE
    out_path = Path(args.out)
    results: dict[str, Any] = json.loads(out_path.read_text()) if out_path.exists() else {}
    results.setdefault("runs", {})
    results["command"] = args.command

    def save() -> None:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(json.dumps(results, indent=2).encode(), out_path)  # hours of runs: never half-written

    runs_dir = Path(args.runs_dir) if args.runs_dir else out_path.parent / args.data  # checkpoints, metrics.csv
    base = [f"out_dir={runs_dir}", "train.progress=false", *args.set]
    if args.rescore:  # score the trained checkpoints again with the recipe's current evaluation settings
        from vitlab.engine.checkpoint import load_method

        for key in [k for k in results["runs"] if k.split("/")[0] in ("random_init", "raw_pixels", "supervised")]:
            del results["runs"][key]
        for key in list(results["runs"]):
            label, seed = key.split("/")
            recipe_cfg = load_config(recipe, [*base, f"train.seed={seed[4:]}"])
            method, _ = load_method(Path(base[0].split("=", 1)[1]) / f"{label}_s{seed[4:]}" / "last.ckpt")
            method.mcfg.eval = Mugs.method_config(recipe_cfg).eval
            results["runs"][key] = {**_scores(method), "train_s": results["runs"][key].get("train_s", 0.0)}
            print("rescored", key, results["runs"][key], flush=True)
        save()
    for seed in args.seeds:
        for label, extra in (("mugs", []), ("gds_only", [GDS_ONLY])):
            if args.baselines_only:
                break
            if label not in args.methods:
                continue
            key = f"{label}/seed{seed}"
            if key in results["runs"]:
                continue
            cfg = load_config(recipe, [*base, f"name={label}_s{seed}", f"train.seed={seed}", *extra])
            start = time.time()
            metrics = train(cfg, overwrite=True)
            results["runs"][key] = {**metrics, "train_s": time.time() - start,
                                    "along_training": _eval_history(cfg.run_dir / "metrics.csv")}
            save()
            print(key, results["runs"][key], flush=True)
        key = f"random_init/seed{seed}"
        if key not in results["runs"]:
            cfg = load_config(recipe, [*base, f"train.seed={seed}"])
            torch.manual_seed(seed)
            datasets = Mugs.build_datasets(cfg)
            results["runs"][key] = _scores(Mugs(cfg, data_info_from(cfg, datasets["train"])))
            save()
        key = f"supervised/seed{seed}"
        if args.supervised and key not in results["runs"]:
            mugs_cfg = load_config(recipe, [*base, f"train.seed={seed}"])
            plain = [o for o in base if not o.startswith("method.")]
            sup = load_config(None, [*plain, f"name=supervised_s{seed}", f"train.seed={seed}", "method.name=supervised",
                                     f"data.name={mugs_cfg.data.name}", f"data.img_size={mugs_cfg.data.img_size}",
                                     f"data.channels={mugs_cfg.data.channels}",
                                     f"data.batch_size={mugs_cfg.data.batch_size}",
                                     *(["data.train_per_class=" + str(mugs_cfg.data.train_per_class)]
                                       if mugs_cfg.data.train_per_class else []),
                                     f"model.name={mugs_cfg.model.name}",
                                     *[f"model.kwargs.{k}={v}" for k, v in mugs_cfg.model.kwargs.items()],
                                     f"optim.lr={2 * mugs_cfg.optim.lr}", f"train.epochs={mugs_cfg.train.epochs}",
                                     f"train.eval_every={mugs_cfg.train.epochs}", "optim.weight_decay=0.05"])
            train(sup, overwrite=True)
            from vitlab.engine.checkpoint import load_eval_model

            model = load_eval_model(sup.run_dir / "last.ckpt")
            results["runs"][key] = _backbone_scores(model, mugs_cfg)
            save()
    if "raw_pixels" not in results["runs"]:
        cfg = load_config(recipe, base)
        results["runs"]["raw_pixels"] = _backbone_scores(_pixels(), cfg)
    results["summary"] = summarize(results["runs"])
    save()
    return results


def _seed_order(key: str) -> tuple[str, int]:
    label, _, seed = key.partition("/seed")
    return label, int(seed) if seed.isdigit() else -1


def merge_runs(paths: list[str | Path]) -> dict[str, Any]:
    """The ``runs`` of several ``accuracy`` result files (e.g. seeds or methods run in separate processes), merged; a
    key found in two files must hold the same scores."""
    loaded = []
    for path in paths:
        if not Path(path).is_file():
            raise ValueError(f"{path}: no such result file (write one with `mugs_accuracy.py --out {path}`)")
        loaded.append((str(path), json.loads(Path(path).read_text())))
    return merge_loaded(loaded)


def merge_loaded(loaded: list[tuple[str, Any]]) -> dict[str, Any]:
    """:func:`merge_runs` on result files already read: (name, parsed JSON) pairs."""
    runs: dict[str, Any] = {}
    for path, data in loaded:
        if not isinstance(data, dict) or not isinstance(data.get("runs"), dict):
            raise ValueError(f"{path}: not an accuracy result file (expected a JSON object with a 'runs' object)")
        for key, value in data["runs"].items():
            scores = {m: value.get(m) for m in ("knn_top1", "probe_top1")}
            if key in runs and scores != {m: runs[key].get(m) for m in scores}:
                raise ValueError(f"{path}: {key} differs from an earlier file: {scores}")
            runs[key] = value
    return runs


def summarize(runs: dict[str, Any]) -> dict[str, Any]:
    """Mean, std and values per backbone over the seeds in ``runs``, the raw-pixel row and the gates."""
    summary: dict[str, Any] = {}
    for label in ("mugs", "gds_only", "random_init", "supervised"):
        rows = [runs[k] for k in sorted(runs, key=_seed_order) if k.startswith(label + "/")]
        if rows:
            summary[label] = {m: _mean_std([r[m] for r in rows]) for m in ("knn_top1", "probe_top1")}
    if "raw_pixels" in runs:
        summary["raw_pixels"] = runs["raw_pixels"]
    summary["gates"] = gates(summary)
    return summary


LABELS = {"mugs": "Mugs (IDS + LGDS + GDS)", "gds_only": "GDS-only (DINO-equivalent, same budget)",
          "random_init": "random-init backbone", "supervised": "supervised reference (labels)"}


def markdown_table(summary: dict[str, Any]) -> str:
    """The summary of an ``accuracy`` run as the markdown table of docs/mugs.md, then its gate lines."""
    def cell(row: dict[str, Any]) -> str:
        values = ", ".join(f"{v:.1f}" for v in row["values"])
        return f"{row['mean']:.1f} ± {row['std']:.1f} ({values})"

    lines = ["| backbone | seeds | k-NN top-1 (%) (k = 20) | linear probe top-1 (%) |", "|---|---|---|---|"]
    for label, name in LABELS.items():
        if label in summary:
            row = summary[label]
            lines.append(f"| {name} | {len(row['knn_top1']['values'])} | {cell(row['knn_top1'])} | "
                         f"{cell(row['probe_top1'])} |")
    if "raw_pixels" in summary:
        pixels = summary["raw_pixels"]
        lines.append(f"| raw pixels (reference) | – | {pixels['knn_top1']:.1f} | {pixels['probe_top1']:.1f} |")
    lines.append("")
    for key, gate in gates(summary).items():
        metric, test = key.split("/")
        name = "k-NN" if metric == "knn_top1" else "probe"
        if test == "mugs_minus_random":
            lines.append(f"- {name}: Mugs − random init = {gate['diff']:+.1f} points; 3 × the larger seed std = "
                         f"{gate['three_std']:.1f} → {'passes' if gate['pass'] else 'does NOT pass'}.")
        else:
            lines.append(f"- {name}: Mugs − GDS-only = {gate['diff']:+.1f} points (GDS-only seed std "
                         f"{gate['gds_std']:.1f}) → Mugs {'≥' if gate['pass'] else '<'} GDS-only − 1 std.")
    return "\n".join(lines)


def along_training_table(runs: dict[str, Any]) -> str:
    """k-NN (k = 20) on the novel classes at each evaluation of the pretraining runs, mean ± std over the seeds, then
    each seed's values, and the probe at the last evaluation: one row per backbone with an ``along_training`` record."""
    labels = [label for label in ("mugs", "gds_only") if any(k.startswith(label + "/") and "along_training" in v
                                                              for k, v in runs.items())]
    epochs = sorted({int(e) for k, v in runs.items() for e in v.get("along_training", {})})
    lines = ["| backbone | seeds | " + " | ".join(f"k-NN @ {e}" for e in epochs) + " | probe @ "
             f"{epochs[-1] if epochs else '–'} |", "|---|---|" + "---|" * (len(epochs) + 1)]
    for label in labels:
        rows = [runs[k]["along_training"] for k in sorted(runs, key=_seed_order)
                if k.startswith(label + "/") and "along_training" in runs[k]]
        cells = []
        for e in epochs:
            values = [r[str(e)]["knn_top1"] for r in rows if str(e) in r]
            stats = _mean_std(values)
            cells.append(f"{stats['mean']:.1f} ± {stats['std']:.1f}" if values else "–")
        probes = [r[str(epochs[-1])]["probe_top1"] for r in rows if str(epochs[-1]) in r]
        probe = _mean_std(probes)
        cells.append(f"{probe['mean']:.1f} ± {probe['std']:.1f}" if probes else "–")
        lines.append(f"| {LABELS[label]} | {len(rows)} | " + " | ".join(cells) + " |")
    seed_lines = []
    for label in labels:
        for key in sorted(runs, key=_seed_order):
            if key.startswith(label + "/") and "along_training" in runs[key]:
                history = runs[key]["along_training"]
                values = " / ".join(f"{history[str(e)]['knn_top1']:.1f}" if str(e) in history else "–"
                                    for e in epochs)
                seed_lines.append(f"- {LABELS[label]}, {key.split('/')[1]}: {values}")
    return "\n".join([*lines, "", "k-NN of each seed at the same epochs:", *seed_lines])


def plot_along_training(runs: dict[str, Any], path: Path) -> None:
    """k-NN on the novel classes against epochs: each seed thin, the seed mean thick, for Mugs and GDS-only, with the
    random-init and raw-pixel levels as dashed lines; written atomically as a PNG."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=120)
    for label, colour in (("mugs", "tab:blue"), ("gds_only", "tab:orange")):
        histories = [runs[k]["along_training"] for k in sorted(runs, key=_seed_order)
                     if k.startswith(label + "/") and "along_training" in runs[k]]
        epochs = sorted({int(e) for h in histories for e in h})
        for h in histories:
            points = [(e, h[str(e)]["knn_top1"]) for e in epochs if str(e) in h]
            ax.plot(*zip(*points), color=colour, alpha=0.35, linewidth=0.8)
        means = [(e, statistics.fmean(h[str(e)]["knn_top1"] for h in histories))
                 for e in epochs if all(str(e) in h for h in histories)]
        if means:
            ax.plot(*zip(*means), color=colour, linewidth=2.2, marker="o", markersize=3,
                    label=f"{LABELS[label].split(' (')[0]} (mean of {len(histories)} seeds)")
    for label, style in (("random_init", "grey"), ("raw_pixels", "black")):
        values = [v["knn_top1"] for k, v in runs.items() if k.split("/")[0] == label]
        if values:
            name = "random-init backbone" if label == "random_init" else "raw pixels"
            ax.axhline(statistics.fmean(values), color=style, linestyle="--", linewidth=1, label=name)
    ax.set_xlabel("pretraining epoch")
    ax.set_ylabel("k-NN top-1 on the novel classes (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(0.01, 0.92))
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    from vitlab.engine.checkpoint import atomic_write_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(buffer.getvalue(), path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data", default="digits", choices=("digits", "glyphs"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--supervised", action="store_true", help="also train the supervised reference")
    parser.add_argument("--baselines-only", action="store_true",
                        help="only the random-init, supervised (with --supervised) and raw-pixel rows")
    parser.add_argument("--rescore", action="store_true", help="evaluate the trained checkpoints of --out again")
    parser.add_argument("--methods", nargs="+", default=["mugs", "gds_only"], choices=("mugs", "gds_only"),
                        help="which pretraining runs to make (split them across processes with different --out)")
    parser.add_argument("--out", default="runs/mugs_bench/digits.json")
    parser.add_argument("--runs-dir", default=None,
                        help="where the runs (checkpoints, metrics.csv) go; default: <--out's folder>/<--data>, so "
                             "that a result file under results/ can keep its checkpoints under runs/")
    parser.add_argument("--table", nargs="*", metavar="MORE_JSON",
                        help="print the markdown table of --out and of these result files, merged (no training)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe overrides")
    parser.add_argument("--plot", type=Path, default=None, metavar="PNG",
                        help="with --table: also draw the k-NN along training of the merged runs into this PNG")
    args = parser.parse_args(argv)
    args.command = shlex.join(["python", "experiments/mugs_accuracy.py", *(sys.argv[1:] if argv is None else argv)])
    if args.table is not None:
        try:
            runs = merge_runs([args.out, *args.table])
        except (ValueError, json.JSONDecodeError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(markdown_table(summarize(runs)))
        if args.plot is not None:
            try:
                plot_along_training(runs, args.plot)
            except OSError as err:
                print(f"error: --plot {args.plot}: cannot write it ({err.strerror or err})", file=sys.stderr)
                return 2
            print(f"wrote {args.plot}")
        return 0
    print(json.dumps(run_accuracy(args)["summary"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
