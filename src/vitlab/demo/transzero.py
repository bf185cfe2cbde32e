"""``vitlab demo`` section: TransZero++ zero-shot learning on ``digits_zsl`` (seen 0 1 3 4 6 7 9, unseen 2 5 8).

A small CNN trained on the seen digits only gives 4×4 region features; TransZero++ (AVT + VAT, d 32) learns from the
seen classes and the 12 class attributes, and is scored by CZSL accuracy and GZSL U / S / H. The figure shows, for one
test image of every unseen digit, the AVT attention of the attributes that score highest on it: where each attribute
looks, on a class the model never saw.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vitlab.demo.sections import demo_section

FULL = {"backbone_epochs": 4, "steps": 300}
QUICK = {"backbone_epochs": 1, "steps": 20}


def train_demo_model(quick: bool, seed: int = 0) -> dict[str, Any]:
    """Features, a trained TransZero++ and its metrics on digits_zsl (the section's work, without the figure)."""
    from vitlab.data.digits_zsl import ATTRIBUTE_NAMES, digits_zsl_features, digits_zsl_splits, word_vectors
    from vitlab.evaluation.zsl import zsl_metrics
    from vitlab.losses.transzero import TransZeroLossWeights, transzero_loss
    from vitlab.models.transzero import TransZeroPP

    plan = QUICK if quick else FULL
    splits, images = digits_zsl_splits()
    store = digits_zsl_features(backbone_epochs=plan["backbone_epochs"])
    features = torch.stack([store[i] for i in range(len(store))])
    labels = torch.as_tensor(splits.labels)
    torch.manual_seed(seed)
    model = TransZeroPP(torch.as_tensor(splits.class_attributes, dtype=torch.float32),
                        torch.as_tensor(word_vectors(), dtype=torch.float32), splits.unseen.tolist(), (4, 4),
                        features.shape[1], dim=32, ffn_dim=64, dropout=0.3, alpha=0.9)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    trainval = torch.as_tensor(splits.trainval)
    generator = torch.Generator().manual_seed(seed)
    weights = TransZeroLossWeights()
    model.train()
    for _ in range(plan["steps"]):
        idx = trainval[torch.randint(len(trainval), (50,), generator=generator)]
        out = model(features[idx])
        loss = transzero_loss(out, labels[idx], model.class_vectors, model.calibration, model.unseen, weights,
                              ("avt", "vat"))["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        seen_idx, unseen_idx = torch.as_tensor(splits.test_seen), torch.as_tensor(splits.test_unseen)
        metrics = zsl_metrics(model(features[seen_idx])["scores"], labels[seen_idx],
                              model(features[unseen_idx])["scores"], labels[unseen_idx],
                              torch.as_tensor(splits.seen), torch.as_tensor(splits.unseen))
    return {"model": model, "features": features, "images": images, "splits": splits, "metrics": metrics,
            "attribute_names": ATTRIBUTE_NAMES, "plan": plan}


def plot_attention(result: dict[str, Any], out_png: Path, top: int = 3) -> list[tuple[int, list[str]]]:
    """One row per unseen digit: the test image and the attention maps of its ``top`` highest-scoring attributes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits, model = result["splits"], result["model"]
    picks = [int(next(i for i in splits.test_unseen if splits.labels[i] == c)) for c in splits.unseen]
    x = result["features"][picks]
    maps = model.attribute_attention_maps(x)  # (U, A, 4, 4)
    with torch.no_grad():
        scores = model(x)["embedding_avt"]  # ψ_AVT (U, A)
    rows = []
    fig, axes = plt.subplots(len(picks), top + 1, figsize=(2.0 * (top + 1), 2.1 * len(picks)))
    for r, index in enumerate(picks):
        order = scores[r].argsort(descending=True)[:top].tolist()
        names = [result["attribute_names"][a] for a in order]
        rows.append((int(splits.labels[index]), names))
        image = result["images"][index, 0].numpy()
        axes[r, 0].imshow(image, cmap="gray")
        axes[r, 0].set_title(f"unseen digit {splits.labels[index]}", fontsize=8)
        for k, a in enumerate(order):
            heat = torch.nn.functional.interpolate(maps[r, a][None, None], size=image.shape, mode="nearest")[0, 0]
            axes[r, k + 1].imshow(image, cmap="gray")
            axes[r, k + 1].imshow(heat.numpy(), cmap="jet", alpha=0.5)
            axes[r, k + 1].set_title(names[k], fontsize=8)
        for ax in axes[r]:
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return rows


@demo_section("transzero", "TransZero++ zero-shot learning (digits_zsl: seen 0 1 3 4 6 7 9 → unseen 2 5 8)")
def transzero_section(folder: Path, quick: bool) -> str:
    result = train_demo_model(quick)
    rows = plot_attention(result, folder / "transzero_attention.png")
    m, plan = result["metrics"], result["plan"]
    table = ["| unseen digit | top attributes (AVT score) |", "|---|---|"]
    table += [f"| {digit} | {', '.join(names)} |" for digit, names in rows]
    chance = 100 / len(result["splits"].unseen)
    return "\n".join([
        f"TransZero++ (AVT + VAT, d 32) trained for {plan['steps']} steps of 50 seen-class images on 4×4 region "
        f"features of a CNN trained {plan['backbone_epochs']} epochs on the seen digits only.",
        "",
        f"CZSL accuracy on the unseen digits {m['acc']:.1f}% (chance {chance:.1f}%); GZSL U {m['U']:.1f}%, "
        f"S {m['S']:.1f}%, H {m['H']:.1f}% (per-class means, calibration ±1 as published).",
        "",
        *table,
        "",
        "![attribute attention maps of unseen-class images](transzero/transzero_attention.png)"])
