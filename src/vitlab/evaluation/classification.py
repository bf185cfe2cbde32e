"""Top-k accuracy and the confusion matrix, summed across processes (each evaluates a disjoint share)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


def topk_correct(logits: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, int]:
    """Number of samples whose label is among the top-k logits. logits (B, K), labels (B,)."""
    maxk = min(max(ks), logits.shape[-1])
    top = logits.topk(maxk, dim=-1).indices  # (B, maxk)
    hit = top.eq(labels.unsqueeze(-1))
    return {k: int(hit[:, : min(k, maxk)].any(dim=-1).sum()) for k in ks}


def confusion_matrix(preds: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """(K, K) counts; row = true class, column = predicted class."""
    idx = labels.long() * num_classes + preds.long()
    return torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes)


def _input_of(batch: Any) -> Tensor:
    if "image" in batch:
        return batch["image"]
    if "video" in batch:
        return batch["video"]
    raise KeyError("batch has neither 'image' nor 'video'")


@torch.no_grad()
def evaluate_classifier(model: nn.Module, loader: Any, fabric: Any | None, num_classes: int,
                        return_confusion: bool = False) -> dict[str, Any]:
    """Top-1/top-5 accuracy (in %) and mean cross-entropy of ``model`` on ``loader``.

    With a Fabric of several processes, counts are summed across processes before dividing.
    """
    was_training = model.training
    model.eval()
    first = next(model.parameters(), None)  # int8 models have no float parameters: they run on the CPU
    device = fabric.device if fabric is not None else (first.device if first is not None else torch.device("cpu"))
    stats = torch.zeros(4, dtype=torch.float64, device=device)  # n, top1, top5, loss sum
    cm = torch.zeros(num_classes, num_classes, dtype=torch.long, device=device)
    for batch in loader:
        x, y = _input_of(batch).to(device), batch["label"].to(device)
        logits = model(x).float()
        hits = topk_correct(logits, y)
        stats += torch.tensor([len(y), hits[1], hits[5],
                               float(nn.functional.cross_entropy(logits, y, reduction="sum"))],
                              dtype=torch.float64, device=device)
        if return_confusion:
            cm += confusion_matrix(logits.argmax(-1), y, num_classes)
    if fabric is not None and fabric.world_size > 1:
        stats = fabric.all_reduce(stats, reduce_op="sum")
        if return_confusion:
            cm = fabric.all_reduce(cm, reduce_op="sum")
    model.train(was_training)
    n = max(float(stats[0]), 1.0)
    out: dict[str, Any] = {"top1": 100.0 * float(stats[1]) / n, "top5": 100.0 * float(stats[2]) / n,
                           "loss": float(stats[3]) / n}
    if return_confusion:
        out["confusion"] = cm.cpu()
    return out


def run_model_eval(args: Any) -> int:
    """``vitlab eval --model file.py:factory|NAME [--weights W] --data NAME``: top-1 / top-5 / loss on ``--split``."""
    import json

    from vitlab.data import build_dataset
    from vitlab.data.catalog import data_config
    from vitlab.data.loader import build_loader
    from vitlab.models.external import method_from_args

    if args.data is None:
        raise ValueError("--data: needed with --model (e.g. digits, foolbox-mnist, image_folder --data-root DIR)")
    method = method_from_args(args, data_config(args))
    dataset = build_dataset(method.cfg.data, args.split, train=False)
    loader = build_loader(dataset, method.cfg.data.num_workers, batch_size=method.cfg.data.eval_batch_size)
    with torch.no_grad():
        metrics = evaluate_classifier(method.eval_model(), loader, None, method.data.num_classes,
                                      return_confusion=args.confusion)
    printable = {"model": method.source, "data": args.data, "split": args.split, "images": len(dataset)}  # type: ignore[arg-type]
    printable.update({k: (round(v, 4) if isinstance(v, float) else v.tolist() if isinstance(v, torch.Tensor) else v)
                      for k, v in metrics.items()})
    print(json.dumps(printable))
    if args.out:
        from vitlab.engine.checkpoint import atomic_write_bytes

        atomic_write_bytes(json.dumps(printable, indent=2).encode(), args.out)
    return 0
