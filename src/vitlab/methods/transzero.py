"""TransZero++ (Chen et al., TPAMI 2022; specs/transzero.md): zero-shot learning on frozen region features.

The registered method ``transzero`` trains :class:`~vitlab.models.transzero.TransZeroPP` (or one of its sub-nets, or
the global-feature baseline) with the losses of :mod:`vitlab.losses.transzero`, and is evaluated by conventional and
generalised ZSL (:mod:`vitlab.evaluation.zsl`): ``acc``, ``U``, ``S``, ``H`` in %; best.ckpt is chosen by ``H``.

Data (``data.name``):

- ``digits_zsl``: the bundled zero-shot digits (§6), features from a seen-class CNN, extracted once into the cache;
- ``xlsa17``: ``data.root`` holds ``res101.mat`` and ``att_splits.mat``; ``method.features`` the region-feature
  shards (extracted on first use from ``method.images`` with ``method.extract``'s backbone when absent);
  ``method.word_vectors`` the official ``<DS>_attribute.pkl`` or ``minilm`` (phrases embedded by the bundled MiniLM).

``method.branches``: ``[avt, vat]`` TransZero++, ``[avt]`` TransZero (AAAI'22), ``[vat]`` VAT alone, ``[global]``
the global-feature compatibility baseline.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from vitlab.config import ConfigError, RunConfig
from vitlab.data.dataset import DataError
from vitlab.data.zsl import (
    RegionFeatures,
    ZSLFeatureDataset,
    ZSLSplits,
    clean_attribute_name,
    load_word_vectors,
    load_xlsa17,
    minilm_word_vectors,
    read_attribute_names,
)
from vitlab.losses.transzero import transzero_loss
from vitlab.methods.base import DataInfo, Method, Progress, register_method
from vitlab.methods.schemas.transzero import BRANCH_SETS, ExtractConfig, TransZeroConfig  # noqa: F401  (re-exported)
from vitlab.models.transzero import GlobalCompatibility, RegionGridError, TransZeroPP


# ---- data ---------------------------------------------------------------------------------------------------------
@dataclass
class ZSLData:
    """Everything the model and the data sets need: splits, word vectors, the lazy region features."""

    splits: ZSLSplits
    word_vectors: np.ndarray
    features: Any
    feature_shape: tuple[int, int, int]  # (channels, rows, cols)


@functools.lru_cache(maxsize=4)
def _load_zsl(data_name: str, root: str, dataset: str, features: str, images: str, word_vectors: str,
              extract: tuple[Any, ...]) -> ZSLData:
    if data_name == "digits_zsl":
        from vitlab.data import digits_zsl

        splits, _ = digits_zsl.digits_zsl_splits()
        store: Any = digits_zsl.digits_zsl_features()
        return ZSLData(splits, digits_zsl.word_vectors(), store, tuple(store.shape))  # type: ignore[arg-type]
    if data_name != "xlsa17":
        raise ConfigError(f"data.name: transzero needs a zero-shot set (digits_zsl or xlsa17), got {data_name!r}")
    if not root:
        raise ConfigError("data.root: the folder of the xlsa17 files res101.mat and att_splits.mat")
    splits = load_xlsa17(root, dataset)
    if not word_vectors:
        raise ConfigError("method.word_vectors: the attribute word-vector file (<DS>_attribute.pkl) or minilm")
    if word_vectors == "minilm":
        names = read_attribute_names(Path(root) / "attributes.txt", splits.class_attributes.shape[1])
        splits.attribute_names = names
        vectors = minilm_word_vectors([clean_attribute_name(n) for n in names])
    else:
        vectors = load_word_vectors(word_vectors, splits.class_attributes.shape[1])
    if not features:
        raise ConfigError("method.features: the folder of the region-feature shards (written on first use)")
    if not (Path(features) / "meta.json").is_file():
        _extract_xlsa17(splits, images, features, extract)
    store = RegionFeatures(features)
    if len(store) != len(splits.labels):
        raise DataError(f"{features}: {len(store)} region features, res101.mat lists {len(splits.labels)} images")
    return ZSLData(splits, vectors, store, tuple(store.shape))  # type: ignore[arg-type]


def _extract_xlsa17(splits: ZSLSplits, images: str, out: str, extract: tuple[Any, ...]) -> None:
    """Extract the region features of every xlsa17 image with the configured backbone (§2.2.2)."""
    import timm

    from vitlab.data.zsl import CenterCropImages, extract_region_features
    from vitlab.models import feature_map

    model_name, checkpoint, img_size, batch_size, shard_size = extract
    if not images:
        raise ConfigError(f"method.images: region features {out} are missing; give the image folder to extract them")
    backbone = timm.create_model(model_name, pretrained=False, num_classes=0)
    if checkpoint:
        backbone.load_state_dict(_backbone_weights(checkpoint), strict=False)
    backbone.eval()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    files = [str(Path(images) / f) for f in splits.image_files]
    extract_region_features(lambda x: feature_map(backbone, (x - mean) / std), CenterCropImages(files, img_size),
                            out, batch_size=batch_size, shard_size=shard_size,
                            source={"model": model_name, "checkpoint": checkpoint, "img_size": img_size})


def _backbone_weights(path: str) -> dict[str, Tensor]:
    """A backbone state dict from a ``.safetensors`` file or a tensors-only torch file (``weights_only=True``)."""
    if not Path(path).is_file():
        raise ConfigError(f"method.extract.checkpoint: {path} not found (the backbone's ImageNet weights)")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


def load_zsl(cfg: RunConfig) -> ZSLData:
    """The zero-shot data of a run; region features whose grid differs from ``method.grid`` are a ConfigError."""
    m = cfg.method
    assert isinstance(m, TransZeroConfig)
    e = m.extract
    zsl = _load_zsl(cfg.data.name, cfg.data.root or "", m.dataset, m.features, m.images, m.word_vectors,
                    (e.model, e.checkpoint, e.img_size, e.batch_size, e.shard_size))
    if m.grid and list(zsl.feature_shape[1:]) != list(m.grid):
        where = m.features or cfg.data.name
        raise ConfigError(f"method.grid: the region features {where} have a {zsl.feature_shape[1]}x"
                          f"{zsl.feature_shape[2]} grid, the model expects {m.grid[0]}x{m.grid[1]}")
    return zsl


class BalancedBatches(Dataset):
    """One item = one class-balanced batch of trainval (§3): min(#seen, size) distinct seen classes, max(size //
    #seen, 1) images each, drawn with replacement (SUN: 50 × 1; AWA2: 40 × 1). Draws come from torch's generator,
    which the engine seeds per (seed, epoch, item)."""

    def __init__(self, base: ZSLFeatureDataset, size: int) -> None:
        self.base = base
        labels = torch.as_tensor(base.targets)
        self.classes = torch.unique(labels)
        self.members = [torch.nonzero(labels == c).flatten() for c in self.classes]
        self.n_classes = min(len(self.classes), size)
        self.per_class = max(size // len(self.classes), 1)
        self.length = max(len(base) // size, 1)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        chosen = torch.randperm(len(self.classes))[:self.n_classes]
        picks = [self.members[int(c)][torch.randint(len(self.members[int(c)]), (self.per_class,))] for c in chosen]
        items = [self.base[int(i)] for i in torch.cat(picks)]
        return {"features": torch.stack([it["features"] for it in items]),
                "label": torch.tensor([it["label"] for it in items])}

    def __getattr__(self, name: str) -> Any:
        if name in ("base", "classes", "members", "n_classes", "per_class", "length"):
            raise AttributeError(name)
        return getattr(self.base, name)


def _single_batch(items: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    if len(items) != 1:
        raise ConfigError(f"data.batch_size: the balanced sampler makes whole batches; set data.batch_size: 1 "
                          f"(got {len(items)}) and the batch size in method.balanced_batch")
    return items[0]


# ---- the method ---------------------------------------------------------------------------------------------------
def build_zsl_model(mcfg: TransZeroConfig, zsl: ZSLData) -> TransZeroPP | GlobalCompatibility:
    """The network of ``mcfg.branches`` over ``zsl``'s attributes, word vectors and region grid."""
    splits = zsl.splits
    channels, rows, cols = zsl.feature_shape
    attributes = torch.as_tensor(splits.class_attributes, dtype=torch.float32)
    unseen = splits.unseen.tolist()
    if mcfg.branches == ["global"]:
        return GlobalCompatibility(attributes, unseen, (rows, cols), channels)
    return TransZeroPP(attributes, torch.as_tensor(zsl.word_vectors, dtype=torch.float32), unseen, (rows, cols),
                       channels, mcfg.dim, mcfg.ffn_dim, mcfg.dropout, mcfg.self_attention, mcfg.normalize_v,
                       mcfg.vat_init, mcfg.alpha, tuple(mcfg.branches), mcfg.legacy_params,  # type: ignore[arg-type]
                       aux_embed=mcfg.legacy_params and mcfg.self_attention)


@register_method("transzero")
class TransZero(Method[TransZeroConfig]):
    """TransZero++ on the method contract: batches ``{"features": (B, C, rows, cols), "label": (B,)}``."""

    monitor = ("H", True)

    def __init__(self, cfg: RunConfig, data: DataInfo) -> None:
        super().__init__(cfg, data)
        zsl = load_zsl(cfg)
        self.net: TransZeroPP | GlobalCompatibility = build_zsl_model(self.mcfg, zsl)
        self.seen_ids = zsl.splits.seen.tolist()
        self.weights = self.mcfg.loss_weights()

    @classmethod
    def build_datasets(cls, cfg: RunConfig) -> dict[str, Dataset]:
        zsl = load_zsl(cfg)
        make = functools.partial(ZSLFeatureDataset, zsl.features, zsl.splits, word_vectors=zsl.word_vectors,
                                 attribute_names=zsl.splits.attribute_names)
        train: Dataset = make("trainval")
        mcfg = cls.method_config(cfg)
        if mcfg.sampler == "balanced":
            train = BalancedBatches(train, mcfg.balanced_batch)  # type: ignore[arg-type]
        return {"train": train, "test_seen": make("test_seen"), "test_unseen": make("test_unseen")}

    def collate(self) -> Any:
        return _single_batch if self.mcfg.sampler == "balanced" else None

    def batch_items(self, batch: Any) -> int:
        return int(batch["label"].numel())

    def eval_model(self) -> nn.Module:
        return self.net

    def param_groups(self) -> list[dict[str, Any]]:
        """One group: the official code decays every trainable tensor (V, biases and norms included)."""
        params = [p for p in self.net.parameters() if p.requires_grad]
        return [{"params": params, "weight_decay": self.cfg.optim.weight_decay, "lr_scale": 1.0, "apply_wd": True}]

    def forward(self, batch: dict[str, Tensor], progress: Progress) -> dict[str, Tensor]:
        net = self.net
        try:
            out = net(batch["features"])
        except RegionGridError as exc:
            raise ConfigError(f"method.features: {exc}") from None
        branches = tuple(net.branches)
        losses = transzero_loss(out, batch["label"], net.class_vectors, net.calibration, net.unseen, self.weights,
                                branches)
        result = {k: v.detach() for k, v in losses.items() if k != "loss"}
        with torch.no_grad():
            result["acc"] = (out["scores"].argmax(-1) == batch["label"]).float().mean()
        result["loss"] = losses["loss"]
        return result

    def evaluate(self, loaders: Mapping[str, Any], fabric: Any, model: nn.Module | None = None) -> dict[str, float]:
        """CZSL ``acc`` and GZSL ``U`` / ``S`` / ``H`` (%) on test_seen and test_unseen (§2.5)."""
        from vitlab.evaluation.zsl import collect_scores, zsl_metrics

        net: Any = model if model is not None else self.net
        device = getattr(fabric, "device", "cpu")
        was_training = net.training
        net.eval()
        try:
            seen_scores, seen_labels = collect_scores(lambda x: net(x)["scores"], loaders["test_seen"], device)
            unseen_scores, unseen_labels = collect_scores(lambda x: net(x)["scores"], loaders["test_unseen"], device)
        finally:
            net.train(was_training)
        if torch.distributed.is_available() and torch.distributed.is_initialized():  # every rank scored a share
            shares: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(shares, (seen_scores, seen_labels, unseen_scores, unseen_labels))
            seen_scores, seen_labels, unseen_scores, unseen_labels = (torch.cat([s[k] for s in shares])
                                                                      for k in range(4))
        seen = torch.as_tensor(self.seen_ids)
        return zsl_metrics(seen_scores, seen_labels, unseen_scores, unseen_labels, seen, net.unseen.cpu())


def initial_losses(num_classes: int, num_unseen: int, num_attributes: int) -> dict[str, float]:
    """The exact VAT losses at init with W₁′ = 0 (ψ = 0, S = β; specs/transzero.md §5): L_ACE = ln C,
    L_SC = −ln(n_u e² / (n_u e² + n_s)), L_AR = 1/A."""
    seen = num_classes - num_unseen
    mass = num_unseen * math.e ** 2 / (num_unseen * math.e ** 2 + seen)
    return {"ace": math.log(num_classes), "sc": -math.log(mass), "ar": 1.0 / num_attributes}
