"""The ``method`` section of RIFT (:mod:`vitlab.methods.rift`): its schema, without torch, so that a recipe's mistake
is reported before the method loads (docs/engine.md, "Methods and their schemas")."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from vitlab.config import MethodConfig, require


@dataclass
class TextConfig:
    """Text data for RIFT (``data.name`` picks the set; ``data.root`` holds user files)."""

    max_len: int = 32  # tokens with [CLS]/[SEP] (IMDB 300, SNLI 80, synth_sentiment 32)
    slots: int = 10  # substitution slots per position: the word + <= 9 synonyms (the official 10)
    synonyms: str = "synth"  # "synth" (synth_sentiment's table), "glove" (GloVe-50d neighbours) or a RIFT JSON path
    multi_piece: Literal["first", "error"] = "first"  # a synonym the tokenizer splits: keep its first piece, or fail
    truncation: Literal["truncate", "error"] = "truncate"  # a text longer than max_len: cut its end, or fail
    classes: list[str] = field(default_factory=list)  # jsonl / csv: the class names (labels are indices or names)
    train_file: str = "train.jsonl"  # jsonl / csv: files under data.root
    val_file: str = ""  # jsonl / csv: "" = carve val_fraction of the training file
    test_file: str = "test.jsonl"
    text_key: str = "text"
    text_b_key: str = ""  # pairs (NLI): the hypothesis column; only its words are substituted
    label_key: str = "label"
    val_fraction: float = 0.1  # imdb / sst2 / snli / jsonl / csv without val_file: held out of the training data
    select_on: Literal["val", "test"] = "val"  # best.ckpt by the validation split (honest) or the test split
    eval_attack: Literal["none", "ascc"] = "none"  # add ASCC-attack accuracy to every evaluation (slower)
    eval_limit: int = 0  # evaluate the attack on the first N examples of each split only (0 = all)


@dataclass
class RIFTConfig(MethodConfig):
    """RIFT (§2); defaults: the official IMDB settings."""

    name: str = "rift"
    backbone: str = "minilm"  # "minilm" (the bundled all-MiniLM-L6-v2) or a Hugging Face model folder
    random_config: dict[str, Any] = field(default_factory=dict)  # non-empty: a random BERT of this config (tests)
    pool: Literal["pooler", "cls", "mean"] = "pooler"  # the features of the classifier and the InfoNCE
    w_clean: float = 1.0
    w_kl: float = 10.0  # IMDB 10, SNLI 5; 0 (and w_mi 0, w_adv_ce 0) = standard fine-tuning
    w_mi: float = 0.1  # IMDB 0.1, SNLI 0.7; 0 = ASCC + KL without the MI term
    w_adv_ce: float = 0.0  # optional plain adversarial CE (official default 0)
    temperature: float = 0.2  # InfoNCE τ
    proj_hidden: int = 512
    proj_dim: int = 256
    head_hidden: int = 256  # classifier MLP hidden -> 256 -> classes
    ascc_steps: int = 10
    ascc_lr: float = 1.0
    ascc_weight_decay: float = 2e-5
    entropy_weight: float = 15.0
    text: TextConfig = field(default_factory=TextConfig)

    def validate(self) -> None:
        for key in ("w_clean", "w_kl", "w_mi", "w_adv_ce", "entropy_weight", "ascc_weight_decay"):
            require(getattr(self, key) >= 0, f"method.{key}", "a weight >= 0", getattr(self, key))
        require(self.temperature > 0, "method.temperature", "a temperature > 0", self.temperature)
        require(self.ascc_steps >= 1, "method.ascc_steps", "an integer >= 1", self.ascc_steps)
        require(self.text.max_len >= 4, "method.text.max_len", "an integer >= 4", self.text.max_len)
        require(2 <= self.text.slots, "method.text.slots", "an integer >= 2", self.text.slots)
        require(0 < self.text.val_fraction < 1, "method.text.val_fraction", "a fraction in (0, 1)",
                self.text.val_fraction)

    @property
    def adversarial(self) -> bool:
        return self.w_kl > 0 or self.w_mi > 0 or self.w_adv_ce > 0
