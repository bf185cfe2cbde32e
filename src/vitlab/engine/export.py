"""Export a trained model as ``config.json`` + ``model.safetensors`` (the layout timm reads from the Hugging Face hub).

The weights are the backbone's own state dict (timm key names); the normalisation statistics go into
``pretrained_cfg.mean/std`` so ``timm.create_model(..., pretrained=True, pretrained_cfg_overlay={"file": ...})``
rebuilds the same network, and :func:`load_exported` rebuilds the [0, 1]-input :class:`ImageClassifier`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors.torch import load_file, save_file

from vitlab.engine.checkpoint import CheckpointError, atomic_write_bytes, check_writable, load_method
from vitlab.errors import writing
from vitlab.models.classifier import ImageClassifier, InputNormalize


def export_safetensors(ckpt_path: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write ``config.json`` and ``model.safetensors`` for the checkpoint's eval model; returns the folder."""
    method, ckpt = load_method(ckpt_path)
    model = method.eval_model()
    if not isinstance(model, ImageClassifier):
        raise CheckpointError(f"checkpoint {ckpt_path}: its model is a {type(model).__name__}, not an image classifier")
    cfg, info = method.cfg, ckpt["data_info"]
    out = Path(out_dir) if out_dir is not None else Path(ckpt_path).parent / "export"
    check_writable(out, "export folder")
    backbone = model.model
    norm = model.normalize
    mean = norm.mean.tolist() if isinstance(norm, InputNormalize) else [0.0] * info["channels"]
    std = norm.std.tolist() if isinstance(norm, InputNormalize) else [1.0] * info["channels"]
    model_args: dict[str, Any] = dict(cfg.model.kwargs)
    model_args.update(num_classes=model.num_classes, in_chans=info["channels"])
    if "img_size" in _init_args(backbone):
        model_args.setdefault("img_size", info["img_size"])
    config = {"architecture": cfg.model.name, "num_classes": model.num_classes,
              "num_features": int(getattr(backbone, "num_features", 0)), "model_args": model_args,
              "label_names": info.get("classes") or None,
              "pretrained_cfg": {"input_size": [info["channels"], info["img_size"], info["img_size"]],
                                 "mean": mean, "std": std, "num_classes": model.num_classes,
                                 "interpolation": "bilinear", "crop_pct": 1.0}}
    state = {k: v.detach().contiguous().clone() for k, v in backbone.state_dict().items()}
    tmp = out / ".model.safetensors.tmp"
    kept = "the previous export is intact" if (out / "model.safetensors").exists() else "nothing was written"
    with writing(out / "model.safetensors", "export", kept):
        out.mkdir(parents=True, exist_ok=True)
        try:
            save_file(state, str(tmp), metadata={"format": "pt"})
            tmp.replace(out / "model.safetensors")
        finally:
            tmp.unlink(missing_ok=True)
    atomic_write_bytes(json.dumps(config, indent=2).encode(), out / "config.json")
    return out


def _init_args(module: torch.nn.Module) -> set[str]:
    import inspect

    return set(inspect.signature(type(module).__init__).parameters)


def load_exported(folder: str | Path) -> ImageClassifier:
    """Rebuild the [0, 1]-input classifier from an export folder."""
    import vitlab.models  # noqa: F401

    folder = Path(folder)
    for name in ("config.json", "model.safetensors"):
        if not (folder / name).is_file():
            raise CheckpointError(f"export folder {folder}: {name} is missing (expected config.json and "
                                  "model.safetensors written by `vitlab export`)")
    config = json.loads((folder / "config.json").read_text())
    backbone = timm.create_model(config["architecture"], pretrained=False, **config["model_args"])
    backbone.load_state_dict(load_file(str(folder / "model.safetensors")))
    pc = config["pretrained_cfg"]
    return ImageClassifier(backbone, pc["mean"], pc["std"]).eval()
