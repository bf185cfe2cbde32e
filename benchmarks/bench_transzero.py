"""TransZero++ speed on the CPU (issue 15): region-feature extraction images/s and the CUB training step time.

- Extraction: ``vitlab.data.zsl.extract_region_features`` with timm's ResNet-101 (random weights: the cost does not
  depend on them) on 448×448 images, the published setting, into safetensors shards; images/s over the whole call.
- Training step: the ``transzero`` method built from ``recipes/transzero/cub_gzsl.yaml`` (d 300, FFN 512, 312
  attributes, 200 classes, both sub-nets) on a random batch of 50 region maps (2048×14×14): forward, the full loss,
  backward and the Adam step; the median over the timed steps. The same step with the geometry bias recomputed per
  image (the official code's way, B×196×196×64) is timed alternately beside it.

The load average of the machine is recorded: on a shared machine the figures are upper bounds.

Run: python benchmarks/bench_transzero.py [--threads 2] [--steps 5] [--images 8]
         [--out results/benchmarks/transzero.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from vitlab.engine.checkpoint import atomic_write_bytes

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "transzero" / "cub_gzsl.yaml"


class _RandomImages(torch.utils.data.Dataset):
    def __init__(self, n: int, size: int) -> None:
        self.n, self.size = n, size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": torch.rand(3, self.size, self.size, generator=torch.Generator().manual_seed(i))}


def extraction_speed(images: int, batch: int) -> dict[str, float]:
    import timm

    from vitlab.data.zsl import extract_region_features
    from vitlab.models import feature_map

    backbone = timm.create_model("resnet101", pretrained=False, num_classes=0).eval()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        extract_region_features(lambda x: feature_map(backbone, x), _RandomImages(images, 448), tmp,
                                batch_size=batch, shard_size=images, progress=False)
        seconds = time.perf_counter() - start
    return {"images": images, "batch": batch, "seconds": seconds, "images_per_s": images / seconds}


def _per_image_geometry(encoder: torch.nn.Module, batch: int) -> torch.Tensor:
    """The official cost: the 64-d embedding of every region pair repeated per image before the linear map."""
    return F.relu(encoder.geometry_weight(encoder.geometry.expand(batch, -1, -1, -1))).squeeze(-1)


def step_time(steps: int) -> dict[str, float]:
    from vitlab.config import load_config
    from vitlab.losses.transzero import transzero_loss
    from vitlab.methods.transzero import TransZeroConfig
    from vitlab.models.transzero import TransZeroPP

    cfg = load_config(RECIPE)
    m = cfg.method
    assert isinstance(m, TransZeroConfig)
    torch.manual_seed(0)
    attributes, classes = 312, 200
    unseen = list(range(150, 200))
    net = TransZeroPP(torch.rand(classes, attributes), torch.randn(attributes, 300), unseen, (14, 14), 2048, m.dim,
                      m.ffn_dim, m.dropout, m.self_attention, m.normalize_v, m.vat_init, m.alpha,
                      tuple(m.branches)).train()  # type: ignore[arg-type]
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4, weight_decay=1e-4)
    x, labels = torch.rand(50, 2048, 14, 14), torch.randint(0, 150, (50,))
    weights = m.loss_weights()
    once = {sub.encoder: sub.encoder.geometry_bias for sub in (net.avt, net.vat)}

    def step(per_image: bool) -> float:
        for encoder, bias in once.items():
            encoder.geometry_bias = (lambda e=encoder: _per_image_geometry(e, 50)) if per_image else bias
        start = time.perf_counter()
        out = net(x)
        loss = transzero_loss(out, labels, net.class_vectors, net.calibration, net.unseen, weights,
                              ("avt", "vat"))["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    step(False)  # warm-up
    times: dict[str, list[float]] = {"once": [], "per_image": []}
    for _ in range(steps):
        times["once"].append(step(False))
        times["per_image"].append(step(True))
    return {"batch": 50, "steps": steps, "step_s": statistics.median(times["once"]),
            "step_per_image_geometry_s": statistics.median(times["per_image"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="timed training steps of each kind (after a warm-up)")
    parser.add_argument("--images", type=int, default=8, help="images for the extraction timing")
    parser.add_argument("--out", type=Path, help="also write the timings as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    extraction = extraction_speed(args.images, batch=4)
    print(f"region features (ResNet-101, 448 px, 14x14): {extraction['images_per_s']:.2f} images/s "
          f"({args.images} images in {extraction['seconds']:.1f} s)", flush=True)
    step = step_time(args.steps)
    print(f"TransZero++ CUB step (batch 50): {step['step_s']:.2f} s; with the geometry per image "
          f"{step['step_per_image_geometry_s']:.2f} s", flush=True)
    if args.out is not None:
        record = {"command": "python benchmarks/bench_transzero.py " + " ".join(sys.argv[1:]),
                  "torch": torch.__version__, "threads": torch.get_num_threads(),
                  "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
                  "extraction": extraction, "step": step}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(json.dumps(record, indent=2).encode(), args.out)


if __name__ == "__main__":
    main()
