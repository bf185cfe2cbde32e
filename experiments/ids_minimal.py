"""A minimal, independent instance-discrimination run (MoCo-v3 style: momentum teacher, predictor, queue InfoNCE)
on the same backbone and the same Mugs crops as ``recipes/mugs/vit_tiny_digits.yaml`` at 16 px, written without
vitlab's Mugs modules. It separates the training dynamics of the small-scale plan from faults of the Mugs code
(docs/mugs.md, "Diagnosis"): if this loop collapses too, the setting does.

    OMP_NUM_THREADS=1 python experiments/ids_minimal.py --epochs 10                 # the tiny ViT
    OMP_NUM_THREADS=1 python experiments/ids_minimal.py --epochs 10 --backbone resnet18
    OMP_NUM_THREADS=1 python experiments/ids_minimal.py --epochs 10 --simple-crops    # RandomResizedCrop only
    OMP_NUM_THREADS=1 python experiments/ids_minimal.py --epochs 10 --simple-crops --min-scale 1  # identical views
    OMP_NUM_THREADS=1 python experiments/ids_minimal.py --epochs 10 --bn              # MoCo-v3 BatchNorm in the heads
    OMP_NUM_THREADS=1 python experiments/ids_minimal.py --epochs 10 --batch 32        # 4x the steps per epoch

Prints the teacher's k-NN top-1 (k = 20, T = 0.05, train → test) and the mean cosine between the teacher features of
different test images, at initialisation and at the end.
"""

from __future__ import annotations

import argparse
import copy
import math

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitlab.config import load_config
from vitlab.evaluation.robust import collect
from vitlab.methods.mugs import Mugs

OVERRIDES = ["data.img_size=16", "method.crops.global_size=16", "method.crops.local_size=8",
             "method.crops.local_number=0"]


def mlp(dims: list[int], bn: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims, dims[1:])):
        layers.append(nn.Linear(a, b, bias=False))
        if i < len(dims) - 2:
            if bn:
                layers.append(nn.BatchNorm1d(b))
            layers.append(nn.GELU())
    return nn.Sequential(*layers)


class SimpleCrops(torch.utils.data.Dataset):
    """Two teacher and two student views of each image: RandomResizedCrop (scale 0.4-1) and nothing else."""

    def __init__(self, images: Tensor, scale: tuple[float, float] = (0.4, 1.0)) -> None:
        from torchvision.transforms import v2

        self.images = images
        self.crop = v2.RandomResizedCrop(images.shape[-1], scale=scale, ratio=(1.0, 1.0) if scale[0] == 1 else
                                         (3 / 4, 4 / 3), antialias=True)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        image = self.images[index]
        return {"teacher_globals": torch.stack([self.crop(image) for _ in range(2)]),
                "student_globals": torch.stack([self.crop(image) for _ in range(2)])}


def info_nce(pred: Tensor, key: Tensor, queue: Tensor, temperature: float) -> Tensor:
    logits = torch.cat([(pred * key).sum(1, keepdim=True), pred @ queue.T], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(pred.shape[0], dtype=torch.long))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--backbone", default="vit", choices=("vit", "resnet18"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=2.5e-4, help="peak AdamW lr (the plan: 5e-4 x 128 / 256)")
    parser.add_argument("--batch", type=int, default=128, help="batch size (the plan: 128)")
    parser.add_argument("--bn", action="store_true", help="BatchNorm in the hidden layers of the heads")
    parser.add_argument("--min-scale", type=float, default=0.4, help="simple crops: smallest crop area (1: no crop)")
    parser.add_argument("--simple-crops", action="store_true", help="RandomResizedCrop views instead of Mugs' crops")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    cfg = load_config("recipes/mugs/vit_tiny_digits.yaml", OVERRIDES)
    train_set = Mugs.build_datasets(cfg)["train"]
    evaluation = Mugs.eval_datasets(cfg)
    x_train, y_train = collect(evaluation["knn_train"])
    x_test, y_test = collect(evaluation["knn_test"])
    if args.backbone == "vit":
        backbone = timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, embed_dim=96, depth=4,
                                     num_heads=3, in_chans=1, num_classes=0, drop_path_rate=0.1)
    else:
        backbone = timm.create_model("resnet18", in_chans=1, num_classes=0)
    width = backbone.num_features
    student = nn.ModuleDict({"backbone": backbone, "projector": mlp([width, 256, 256, 64], args.bn),
                             "predictor": mlp([64, 256, 64], args.bn)})
    teacher = nn.ModuleDict({"backbone": copy.deepcopy(backbone), "projector": copy.deepcopy(student["projector"])})
    teacher.eval().requires_grad_(False)
    teacher["projector"].train(args.bn)  # MoCo v3: the momentum encoder's BatchNorm uses batch statistics
    queue, pointer = F.normalize(torch.randn(1024, 64), dim=1), 0

    def features(net: nn.ModuleDict, x: Tensor) -> Tensor:
        return net["backbone"]((x - 0.5) / 0.25)

    def report(tag: str) -> None:
        with torch.no_grad():
            train_f = F.normalize(features(teacher, x_train), dim=1)
            test_f = F.normalize(features(teacher, x_test), dim=1)
            values, index = (test_f @ train_f.T).topk(20, dim=1)
            votes = torch.zeros(test_f.shape[0], 10).scatter_add_(1, y_train[index], (values / 0.05).exp())
            knn = 100 * (votes.argmax(1) == y_test).float().mean().item()
            n = test_f.shape[0]
            cosine = ((test_f @ test_f.T).sum() - n) / (n * n - n)
        print(f"{tag}: k-NN {knn:.2f}  teacher mean cosine {cosine.item():.4f}", flush=True)

    report("init")
    optimizer = torch.optim.AdamW(student.parameters(), lr=args.lr, weight_decay=0.04)
    if args.simple_crops:
        train_set = SimpleCrops(x_train, (args.min_scale, 1.0))
    loader = torch.utils.data.DataLoader(train_set, batch_size=args.batch, shuffle=True, drop_last=True)
    total, warmup, step = args.epochs * len(loader), 2 * len(loader), 0
    for epoch in range(args.epochs):
        for batch in loader:
            lr = args.lr * step / warmup if step < warmup else \
                1e-6 + (args.lr - 1e-6) * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))
            for group in optimizer.param_groups:
                group["lr"] = lr
            with torch.no_grad():
                keys = [F.normalize(teacher["projector"](features(teacher, batch["teacher_globals"][:, v])), dim=1)
                        for v in range(2)]
            preds = [F.normalize(student["predictor"](F.normalize(
                student["projector"](features(student, batch["student_globals"][:, v])), dim=1)), dim=1)
                for v in range(2)]
            loss = 0.5 * (info_nce(preds[0], keys[1], queue, 0.2) + info_nce(preds[1], keys[0], queue, 0.2))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                for name in ("backbone", "projector"):
                    for t, s in zip(teacher[name].parameters(), student[name].parameters()):
                        t.mul_(0.99).add_(s.detach(), alpha=0.01)
                for key in keys:
                    queue[pointer:pointer + key.shape[0]] = key
                    pointer = (pointer + key.shape[0]) % queue.shape[0]
            step += 1
        print(f"epoch {epoch}: loss {loss.item():.3f}", flush=True)
    report("final")


if __name__ == "__main__":
    main()
