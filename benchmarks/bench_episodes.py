"""Speed of episodic evaluation on cached features (issue 14, specs/sun.md §2.7): 2000 episodes of 5-way 5-shot,
15 queries, from features computed once per image, with the vectorised heads of ``vitlab.evaluation.episodes``.

Features are synthetic (the timing does not depend on their values): ``--classes`` classes of ``--per-class``
images, ``--dim``-dimensional (defaults: miniImageNet's 20 novel classes of 600 images, Visformer's 512). Reports
the median wall time over ``--reps`` runs of sampling + scoring, per head, and the thread count.

    python benchmarks/bench_episodes.py [--threads 2] [--shots 5] [--heads cosine euclidean logistic]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from vitlab.data.episodes import EpisodeShape, class_members, sample_episodes
from vitlab.engine.checkpoint import atomic_write_bytes
from vitlab.evaluation.episodes import HEADS, evaluate_episodes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--episodes", type=int, default=2000)
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--queries", type=int, default=15)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--per-class", type=int, default=600)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--heads", nargs="+", default=list(HEADS), choices=HEADS)
    parser.add_argument("--out", type=Path, help="also write the timings as JSON here (docs/benchmarks.md prints "
                        "results/benchmarks/episodes.json with `python experiments/tables.py episodes_speed`)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(args.classes).repeat_interleave(args.per_class)
    features = torch.randn(len(labels), args.dim, generator=generator)
    shape = EpisodeShape(args.ways, args.shots, args.queries)

    def timed(fn: object) -> float:
        times = []
        for _ in range(args.reps):
            start = time.perf_counter()
            fn()  # type: ignore[operator]
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.episodes} episodes of "
          f"{args.ways}-way {args.shots}-shot, {args.queries} queries; features {tuple(features.shape)}; "
          f"median of {args.reps}\n")
    print("| part | seconds |")
    print("|---|---|")
    members = class_members(labels)
    sampling = timed(lambda: sample_episodes(members, shape, range(args.episodes), seed=12345))
    print(f"| sampling only | {sampling:.3f} |")
    heads = {}
    for head in args.heads:
        heads[head] = timed(lambda head=head: evaluate_episodes(features, labels, shape, args.episodes, 12345, (head,)))
        print(f"| {head} (sampling + scoring) | {heads[head]:.3f} |")
    if args.out is not None:
        record = {"command": "python benchmarks/bench_episodes.py " + " ".join(sys.argv[1:]),
                  "torch": torch.__version__, "threads": torch.get_num_threads(), "episodes": args.episodes,
                  "ways": args.ways, "shots": args.shots, "queries": args.queries,
                  "features": list(features.shape), "reps": args.reps, "sampling_s": sampling, "heads_s": heads}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(json.dumps(record, indent=2).encode(), args.out)


if __name__ == "__main__":
    main()
