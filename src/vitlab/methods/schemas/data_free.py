"""The ``method`` section of ZeroQ, GDFQ and ClusterQ (:mod:`vitlab.methods.data_free`; one schema for the three): its
schema, without torch, so that a recipe's mistake is reported before the methods load (docs/engine.md, "Methods and
their schemas"). The bit widths it allows come from :mod:`vitlab.options`, shared with :mod:`vitlab.quant.quantizer`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from vitlab.config import ConfigError, MethodConfig, require
from vitlab.options import MAX_BITS, MIN_BITS


@dataclass
class DataFreeQuantConfig(MethodConfig):
    """Hyper-parameters of ZeroQ, GDFQ and ClusterQ (one schema, so one recipe serves ``--method`` of each).

    Defaults are the official ImageNet settings (spec §3); ``None`` means "the method's own default" where the methods
    differ (``kd_reduction``: GDFQ mean, ClusterQ batchmean; ``augment_prob``: GDFQ 0, ClusterQ 0.5).
    """

    name: str = "gdfq"
    teacher_ckpt: str | None = None  # the FP teacher: a vitlab checkpoint, or a bare state dict for model.name
    wbits: int = 4  # weight bits (per output channel), 2..8
    abits: int = 4  # activation bits (per tensor, after ReLU/ReLU6), 2..8
    skip: list[str] = field(default_factory=list)  # module-name patterns kept full precision (default: none)
    act_after: list[str] = field(default_factory=lambda: ["relu", "relu6"])  # gelu / silu are an extension
    # bare state-dict teachers only (a vitlab checkpoint carries these in its data_info):
    num_classes: int | None = None
    input_mean: list[float] | None = None  # statistics mapping the generator's normalised images to [0, 1] inputs
    input_std: list[float] | None = None
    # generator and loop (GDFQ)
    iters_per_epoch: int = 200
    warmup_epochs: int = 50  # generator-only epochs; the student is stepped from this epoch on
    calib_epochs: int = 4  # activation ranges move in epochs 0 .. calib_epochs-1, then freeze
    generator: Literal["auto", "cifar", "imagenet"] = "auto"  # auto (imagenet for >= 64 px) | cifar | imagenet
    latent_dim: int = 100
    generator_bn_eps: float = 0.8  # the reference's BatchNorm2d(C, 0.8): eps, kept for fidelity
    generator_lr: float = 1e-3  # Adam; multiplied by optim.step_gamma at optim.step_milestones like the student
    generator_betas: list[float] = field(default_factory=lambda: [0.5, 0.999])
    bns_weight: float = 0.1
    kd_temperature: float = 20.0
    kd_alpha: float = 1.0
    kd_reduction: Literal["mean", "batchmean"] | None = None  # GDFQ: mean, ClusterQ: batchmean; None = method default
    augment_prob: float | None = None  # ClusterQ only: per-batch RandomResizedCrop + flip probability; None = 0.5
    augment_hflip: bool = True  # ClusterQ only
    # ClusterQ (spec §2.2, §2.3)
    soft_stat_epoch: int = 50  # centroids initialised at the start of this epoch; alignment in later epochs
    centroid_samples: int = 1  # generated samples per class per centroid update (released soft_stat_batchsize)
    centroid_decay: float = 0.2  # EMA weight of the new statistics
    cbns_weight: float = 0.9
    diversity_weight: float = 0.1
    mean_jitter: float = 0.03
    var_jitter: float = 0.05
    # generated (intent) | running_buffers (released)
    centroid_source: Literal["generated", "running_buffers"] = "generated"
    diversity: Literal["jitter", "constant"] = "jitter"  # jitter (intent) | constant (released, no gradient)
    cbns_reduction: Literal["per_class", "released"] = "per_class"  # per_class (intent) | released
    align_start: int | None = None  # first aligned BN index; None = floor((n_BN + 1) / 2) - 2
    # ZeroQ (spec §2.5)
    distill_images: int = 32
    distill_steps: int = 500
    distill_lr: float = 0.5
    distill_min_lr: float = 1e-4
    distill_patience: int = 100

    def validate(self) -> None:
        for key in ("wbits", "abits"):
            value = getattr(self, key)
            require(not isinstance(value, bool) and MIN_BITS <= value <= MAX_BITS, f"method.{key}",
                    f"an integer bit width from {MIN_BITS} to {MAX_BITS}", value)
        require(all(a in ("relu", "relu6", "gelu", "silu") for a in self.act_after), "method.act_after",
                "activations among relu, relu6, gelu, silu", self.act_after)
        require(self.augment_prob is None or 0.0 <= self.augment_prob <= 1.0, "method.augment_prob",
                "null or a probability in [0, 1]", self.augment_prob)
        for key in ("iters_per_epoch", "latent_dim", "centroid_samples", "distill_images", "distill_steps"):
            require(getattr(self, key) >= 1, f"method.{key}", "an integer >= 1", getattr(self, key))
        require(0.0 < self.centroid_decay <= 1.0, "method.centroid_decay", "a value in (0, 1]", self.centroid_decay)
        if (self.input_mean is None) != (self.input_std is None):  # a dependency between keys
            raise ConfigError("method.input_mean / method.input_std: give both or neither")
