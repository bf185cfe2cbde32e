"""The ``method`` sections of SUN's three stages (:mod:`vitlab.methods.sun`: ``sun_teacher``, ``sun``,
``meta_baseline``): their schemas, without torch, so that a recipe's mistake is reported before the methods load
(docs/engine.md, "Methods and their schemas").

The choices of the patch loss (:mod:`vitlab.losses.sun`) and the SCA settings (:mod:`vitlab.data.sca`), parts of
``sun``'s schema, come from :mod:`vitlab.options`, which those modules share.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from vitlab.config import MethodConfig, require
from vitlab.methods.schemas.supervised import SupervisedConfig
from vitlab.options import PatchReduction, PatchTarget, SCAConfig  # noqa: F401  (parts of the schema)

# token_label_weight of the official configs, used only with use_config_weight (pitfall 1).
CONFIG_PATCH_WEIGHTS = {"mini_imagenet": 0.5, "cifar_fs": 0.75, "tiered_imagenet": 0.75}

@dataclass
class EpisodeEvalConfig:
    """The episodes every stage is evaluated (and best.ckpt chosen) by: ``ways``-way, each of ``shots``, ``queries``
    queries, ``episodes`` episodes with ``seed``, cosine prototypes, on ``split`` of the data set."""

    split: str = "test"  # "test" = the novel classes of the few-shot sets; "val" where the set has one
    ways: int = 5
    shots: list[int] = field(default_factory=lambda: [1, 5])
    queries: int = 15
    episodes: int = 500  # during training; the final report uses 2000 (experiments/sun_plan.py)
    seed: int = 12345

    def check(self, prefix: str) -> None:
        require(self.ways >= 2, f"{prefix}.ways", "an integer >= 2", self.ways)
        require(bool(self.shots) and all(k >= 1 for k in self.shots), f"{prefix}.shots", "a list of integers >= 1",
                self.shots)
        require(self.queries >= 1, f"{prefix}.queries", "an integer >= 1", self.queries)
        require(self.episodes >= 2, f"{prefix}.episodes", "an integer >= 2", self.episodes)


@dataclass
class SUNConfig(MethodConfig):
    """Stage-2 settings (specs/sun.md §2.2, §2.3, §7). Defaults: the official code's numbers."""

    name: str = "sun"
    teacher_ckpt: str = ""  # the stage-1 checkpoint (sun_teacher or supervised), loaded weights-only and frozen
    views: Literal["sca", "shared"] = "sca"  # shared: no SCA, both networks see the student's augmented view (ablation)
    top_k: int = 5  # teacher classes marked `on` per foreground patch; must be < C (2 for the 5-class digits plan)
    bg_ratio: float = 0.4  # background patches per image = round(bg_ratio · N): 10 of 25, 6 of 16
    smoothing: float = 0.1  # on = 1 − s + s/C, off = s/C
    patch_weight: float = 0.5  # λ, hard-coded 0.5 in the official code
    use_config_weight: bool = False  # true: λ from the official per-data-set configs (0.75 for CIFAR-FS / tiered)
    patch_reduction: PatchReduction = "mean"  # mean over B·N patches (code); "sum" over patches (paper)
    patch_target: PatchTarget = "multi_hot"  # code's smoothed multi-hot; "teacher_prob_topk" (paper reading)
    official_background_index: bool = False  # true: background `on` at class 1, as the official code does
    sca: SCAConfig = field(default_factory=SCAConfig)
    fewshot: EpisodeEvalConfig = field(default_factory=EpisodeEvalConfig)

    def validate(self) -> None:
        require(bool(self.teacher_ckpt), "method.teacher_ckpt", "the path of a stage-1 checkpoint", self.teacher_ckpt)
        require(self.top_k >= 1, "method.top_k", "an integer >= 1 (and < the number of base classes)", self.top_k)
        require(0.0 <= self.bg_ratio < 1.0, "method.bg_ratio", "a value in [0, 1)", self.bg_ratio)
        require(0.0 <= self.smoothing < 1.0, "method.smoothing", "a value in [0, 1)", self.smoothing)
        require(self.patch_weight >= 0, "method.patch_weight", "a weight >= 0", self.patch_weight)
        self.fewshot.check("method.fewshot")

    def weight_for(self, dataset: str) -> float:
        return CONFIG_PATCH_WEIGHTS.get(dataset, self.patch_weight) if self.use_config_weight else self.patch_weight


@dataclass
class SUNTeacherConfig(SupervisedConfig):
    """Stage 1 (§2.1): the ``supervised`` method's settings plus the few-shot episodes it is evaluated by."""

    name: str = "sun_teacher"
    fewshot: EpisodeEvalConfig = field(default_factory=EpisodeEvalConfig)

    def validate(self) -> None:
        super().validate()
        self.fewshot.check("method.fewshot")


@dataclass
class MetaBaselineConfig(MethodConfig):
    """Stage 3 (§2.5): episodes of the base split, cosine prototypes, learnable temperature."""

    name: str = "meta_baseline"
    init_ckpt: str = ""  # a stage-2 (sun) or stage-1 (sun_teacher / supervised) checkpoint: its backbone is the encoder
    ways: int = 10  # training episodes (the spec's 10-way; 5 for the 5 base digits)
    shots: int = 1
    queries: int = 5  # per class, training (the test protocol's 15 is method.fewshot.queries)
    episodes_per_epoch: int = 800  # 100 batches of data.batch_size = 8 episodes
    episode_seed: int = 0
    temperature: float = 10.0  # γ₀
    fewshot: EpisodeEvalConfig = field(default_factory=EpisodeEvalConfig)

    def validate(self) -> None:
        require(bool(self.init_ckpt), "method.init_ckpt", "the path of a stage-2 or stage-1 checkpoint",
                self.init_ckpt)
        require(self.ways >= 2, "method.ways", "an integer >= 2", self.ways)
        require(self.shots >= 1, "method.shots", "an integer >= 1", self.shots)
        require(self.queries >= 1, "method.queries", "an integer >= 1", self.queries)
        require(self.episodes_per_epoch >= 1, "method.episodes_per_epoch", "an integer >= 1",
                self.episodes_per_epoch)
        require(self.temperature > 0, "method.temperature", "a temperature > 0", self.temperature)
        self.fewshot.check("method.fewshot")
