"""RIFT step time / standard fine-tuning step time on the same batch, and the exact-enumeration attack's sentences/s.

A RIFT step is what the engine runs for ``method.name: rift`` with the small plan's recipe (bundled MiniLM,
synth_sentiment, 16 groups = 32 sentences): ASCC (10 Adam steps through the encoder, eval mode), the clean and
adversarial forwards, the frozen teacher's forward, the per-class InfoNCE, backward and an AdamW step. The standard
step is the same method with ``w_kl 0, w_mi 0`` (CE only). Steps alternate, so that load on a shared machine hits both
alike; the medians and their ratio are reported. The attack is timed on the first ``--n-exact`` test sentences.

Run: python benchmarks/bench_rift.py [--steps 5] [--threads 2] [--out results/benchmarks/rift_step.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from vitlab.attacks.text import attack_text_model
from vitlab.config import load_config
from vitlab.data.text import collate_groups
from vitlab.engine.checkpoint import atomic_write_bytes
from vitlab.methods.base import DataInfo
from vitlab.methods.rift import RIFT, load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "rift" / "minilm_synth_sentiment.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps of each kind (after 1 warm-up step)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n-exact", type=int, default=20, help="test sentences the exact attack is timed on")
    parser.add_argument("--out", type=Path, help="also write the timings as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(RECIPE)
    data = RIFT.build_datasets(cfg)
    info = DataInfo(num_classes=2, channels=3, img_size=32, mean=(0.0,), std=(1.0,))
    torch.manual_seed(0)
    methods = {"rift": RIFT(cfg, info).train(),
               "standard": RIFT(load_config(RECIPE, ["method.w_kl=0", "method.w_mi=0"]), info).train()}
    optimizers = {k: torch.optim.AdamW(m.param_groups(), lr=2e-5) for k, m in methods.items()}
    batch = collate_groups([data["train"][i] for i in range(cfg.data.batch_size)])

    def step(name: str) -> float:
        start = time.perf_counter()
        out = methods[name](batch)
        out["loss"].backward()
        optimizers[name].step()
        optimizers[name].zero_grad(set_to_none=True)
        return time.perf_counter() - start

    times: dict[str, list[float]] = {"rift": [], "standard": []}
    for i in range(args.steps + 1):
        for name in ("standard", "rift"):
            seconds = step(name)
            if i >= 1:
                times[name].append(seconds)
    median = {name: statistics.median(values) for name, values in times.items()}
    ratio = median["rift"] / median["standard"]
    model = methods["standard"].eval_model().eval()
    test = data["test"].tensors  # type: ignore[attr-defined]
    report = attack_text_model(model, {k: v[: args.n_exact] for k, v in test.items()}, "exact",
                               int(load_tokenizer("minilm").unk_token_id))
    n_batch = int(batch["label"].shape[0])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; MiniLM (all-MiniLM-L6-v2), batch {n_batch} "
          f"synth_sentiment sentences; median of {args.steps} alternating steps")
    print(f"standard step {median['standard']:.2f} s, RIFT step {median['rift']:.2f} s: ratio {ratio:.2f}")
    print(f"exact enumeration: {report['n']} sentences ({report['combinations_mean']:.0f} combinations each on "
          f"average) in {report['seconds']:.1f} s: {report['sentences_per_s']:.3f} sentences/s, "
          f"{report['sentences_per_s'] * report['combinations_mean']:.0f} combinations/s")
    if args.out is not None:
        record = {"command": "python benchmarks/bench_rift.py " + " ".join(sys.argv[1:]), "torch": torch.__version__,
                  "threads": torch.get_num_threads(), "batch": n_batch, "steps": args.steps,
                  "standard_s": median["standard"], "rift_s": median["rift"], "ratio": ratio,
                  "exact_n": report["n"], "exact_seconds": report["seconds"],
                  "exact_sentences_per_s": report["sentences_per_s"],
                  "exact_combinations_mean": report["combinations_mean"]}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(json.dumps(record, indent=2).encode(), args.out)


if __name__ == "__main__":
    main()
