"""``vitlab demo`` section: RIFT, robust fine-tuning of a pre-trained language model, on ``synth_sentiment``.

1. The attack surface of the bundled set: how many sentences the synonym table allows per test sentence, and which
   words are held out of training (only attacks use them).
2. Robust accuracy bars per method (standard fine-tuning, RIFT, ASCC + KL without MI) from the committed result files
   of the 3-seed plan (``results/rift/*.json``, written by ``experiments/rift_plan.py``): clean accuracy and exact
   worst-case robust accuracy, mean ± seed std.
3. Full mode only: the bundled MiniLM fine-tuned for a few standard steps here, then attacked with the exact
   worst-case enumeration on a few test sentences, to show the attack run live.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from vitlab.demo.sections import demo_section

METHODS = {"standard": "standard FT", "rift": "RIFT", "ascc_kl": "ASCC+KL (no MI)"}


def _results_dir() -> Path | None:
    for base in (Path(__file__).resolve().parents[3] / "results" / "rift", Path.cwd() / "results" / "rift"):
        if base.is_dir() and any(base.glob("*.json")):
            return base
    return None


def _bars(folder: Path, out_png: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, labels, clean, robust = [], [], [], []
    for key, label in METHODS.items():
        runs = [json.loads(p.read_text()) for p in sorted(folder.glob(f"{key}_s*.json"))]
        if not runs:
            continue
        c = torch.tensor([100 * r["clean_accuracy"] for r in runs])
        rb = torch.tensor([100 * r["exact_robust_accuracy"] for r in runs])
        sd = (lambda t: float(t.std()) if len(t) > 1 else 0.0)  # noqa: E731
        labels.append(label)
        clean.append((float(c.mean()), sd(c)))
        robust.append((float(rb.mean()), sd(rb)))
        rows.append(f"| {label} | {len(runs)} | {clean[-1][0]:.1f} ± {clean[-1][1]:.1f} | "
                    f"{robust[-1][0]:.1f} ± {robust[-1][1]:.1f} |")
    fig, ax = plt.subplots(figsize=(6, 3.2))
    x = torch.arange(len(labels)).float()
    ax.bar(x - 0.2, [m for m, _ in clean], 0.4, yerr=[s for _, s in clean], label="clean")
    ax.bar(x + 0.2, [m for m, _ in robust], 0.4, yerr=[s for _, s in robust], label="exact worst case")
    ax.set_xticks(x.tolist(), labels)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.legend(loc="lower right")
    ax.set_title("synth_sentiment, MiniLM, 3 seeds")
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return rows


@demo_section("rift", "RIFT: robust fine-tuning of a pre-trained language model (synth_sentiment, MiniLM)")
def run(folder: Path, quick: bool) -> str:
    from vitlab.data.text import combinations, synth_held_out_words, synth_sentiment, synth_synonyms

    synonyms = synth_synonyms()
    test = synth_sentiment("test")
    counts = torch.tensor([combinations(e.text, synonyms) for e in test]).float()
    held = sorted(synth_held_out_words())
    parts = [f"`synth_sentiment`: 500 test sentences, {counts.mean():.0f} substitution combinations each on average "
             f"(max {counts.max():.0f}); e.g. \"{test[1].text}\". Held-out words (never in training, used by attacks): "
             f"{', '.join(held[:8])}, … ({len(held)} in all).\n"]
    results = _results_dir()
    if results is None:
        parts.append("No result files under results/rift/ (write them with `python experiments/rift_plan.py`).\n")
    else:
        rows = _bars(results, folder / "rift_robust.png")
        parts += ["Committed results of `experiments/rift_plan.py` (clean: 500 test sentences; exact worst case: the "
                  "first 40, every combination):\n", "| method | seeds | clean (%) | exact worst case (%) |",
                  "|---|---|---|---|", *rows, "", "![robust accuracy per method](rift/rift_robust.png)\n"]
    if not quick:
        parts.append(_live(folder))
    return "\n".join(parts)


def _live(folder: Path) -> str:
    """A few standard fine-tuning steps of the bundled MiniLM, then the exact attack on 8 test sentences."""
    from vitlab.attacks.text import attack_text_model
    from vitlab.config import load_config
    from vitlab.data.text import collate_groups
    from vitlab.demo.sections import recipe_path
    from vitlab.methods.base import DataInfo
    from vitlab.methods.rift import RIFT, load_tokenizer

    start = time.time()
    cfg = load_config(recipe_path("rift/minilm_synth_sentiment_standard.yaml"))
    data = RIFT.build_datasets(cfg)
    torch.manual_seed(0)
    method: Any = RIFT(cfg, DataInfo(2, 3, 32, (0.0,), (1.0,))).train()
    opt = torch.optim.AdamW(method.param_groups(), lr=1e-4)
    for i in range(8):
        batch = collate_groups([data["train"][16 * i + j] for j in range(16)])
        method(batch)["loss"].backward()
        opt.step()
        opt.zero_grad()
    test = data["test"].tensors  # type: ignore[attr-defined]
    report = attack_text_model(method.eval_model(), {k: v[:8] for k, v in test.items()}, "exact",
                               int(load_tokenizer("minilm").unk_token_id))
    return (f"Live: MiniLM after 8 standard fine-tuning steps (batch 32): clean {100 * report['clean_accuracy']:.0f}%, "
            f"exact worst case {100 * report['robust_accuracy']:.0f}% on 8 test sentences "
            f"({report['combinations_mean']:.0f} combinations each; {time.time() - start:.0f} s in all).\n")
