"""The method contract.

A method is an ``nn.Module`` that owns its models (student, teachers, generators, frozen copies) and turns a batch
into a dict of scalars with a ``loss``. The engine runs it:

* **automatic optimisation** (the default): the engine calls ``method(batch, progress)``, back-propagates
  ``out["loss"]``, clips, steps the optimizer built from :meth:`Method.param_groups`, then calls
  :meth:`Method.on_optimizer_step` (EMA teachers, momentum updates).
* **manual optimisation** (``automatic_optimization = False``, as Lightning's manual mode): the engine calls
  :meth:`Method.training_step` with a :class:`StepHelper`; the method back-propagates and steps its own optimizers,
  declared by :meth:`Method.configure_optimizers` (with the engine's optimizer builder), through the helper: it steps
  ``helper.optimizers[name]``, the engine-wrapped ones, so precision and DDP stay the engine's job.

Schedules (learning rate, weight decay, and any the method declares in :meth:`Method.schedules`) are arrays computed
by the engine before training and handed in per step through :class:`Progress`; a method keeps no schedule state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Protocol, TypeVar, cast, get_args, get_origin

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from vitlab.config import ConfigError, MethodConfig, RunConfig, register_method_config

#: the engine's optimizer builder, bound to the run's ``optim`` section: parameter groups -> SGD or AdamW
OptimizerBuilder = Callable[[Iterable[Any]], torch.optim.Optimizer]


@dataclass
class DataInfo:
    """What a method needs to know about its data to build its models."""

    num_classes: int
    channels: int
    img_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: list[str] = field(default_factory=list)


@dataclass
class Progress:
    """Where training is, and this step's scheduled values (``lr``, ``weight_decay`` and the method's own)."""

    step: int  # optimizer steps done so far
    epoch: int
    total_steps: int
    steps_per_epoch: int
    values: dict[str, float] = field(default_factory=dict)

    def __getitem__(self, key: str) -> float:
        return self.values[key]


def data_info_from(cfg: RunConfig, train_set: Any) -> DataInfo:
    """The :class:`DataInfo` of a training set (it carries ``num_classes``, ``mean``, ``std``, maybe ``classes``)."""
    for attr in ("num_classes", "mean", "std"):
        if not hasattr(train_set, attr):
            raise ConfigError(f"data.name: the {cfg.data.name!r} training set has no {attr!r} attribute")
    return DataInfo(num_classes=int(train_set.num_classes), channels=cfg.data.channels, img_size=cfg.data.img_size,
                    mean=tuple(float(m) for m in train_set.mean), std=tuple(float(s) for s in train_set.std),
                    classes=[str(c) for c in getattr(train_set, "classes", [])])


class StepHelper(Protocol):
    """What the engine lends a manual-optimisation method: precision- and DDP-aware backward and step.

    ``optimizers`` holds the engine-wrapped optimizers (by the names :meth:`Method.configure_optimizers` returned);
    step those, so mixed-precision gradient scaling is applied. ``step`` clips to ``optim.clip_grad`` (if set), steps
    and zeroes the gradients; a method that clips on its own calls ``unscale_gradients`` first.
    """

    optimizers: dict[str, torch.optim.Optimizer]

    def backward(self, loss: Tensor, model: nn.Module | None = None) -> None: ...

    def unscale_gradients(self, optimizer: torch.optim.Optimizer) -> None: ...

    def step(self, optimizer: torch.optim.Optimizer) -> None: ...

    def set_lr(self, optimizer: torch.optim.Optimizer, lr: float, weight_decay: float | None = None) -> None: ...


C = TypeVar("C", bound=MethodConfig)


class Method(nn.Module, Generic[C]):
    """Base class of every training method; subclasses are registered with :func:`register_method`.

    A method is generic over its config schema: ``class HAT(Method[HATConfig])`` makes ``HATConfig`` the schema of
    the ``method`` section (:attr:`config_class`) and types :attr:`mcfg`, the run's ``method`` section, as one.
    """

    name: ClassVar[str] = ""
    #: the schema of the ``method`` section; set from the ``Method[XConfig]`` base (or explicitly)
    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    automatic_optimization: ClassVar[bool] = True
    #: the metric ``best.ckpt`` is chosen by, and whether larger is better
    monitor: ClassVar[tuple[str, bool]] = ("top1", True)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "config_class" in cls.__dict__:
            return
        for base in cls.__dict__.get("__orig_bases__", ()):  # its own bases only: subclasses inherit the class
            origin = get_origin(base)
            if isinstance(origin, type) and issubclass(origin, Method):
                arg = get_args(base)[0]
                if isinstance(arg, type) and issubclass(arg, MethodConfig):
                    cls.config_class = arg

    def __init__(self, cfg: RunConfig, data: DataInfo) -> None:
        super().__init__()
        self.cfg = cfg
        self.data = data
        self.mcfg: C = self.method_config(cfg)

    @classmethod
    def method_config(cls, cfg: RunConfig) -> C:
        """``cfg.method``, checked to be this method's schema (:attr:`config_class`) and typed as it."""
        mcfg = cfg.method
        if not isinstance(mcfg, cls.config_class):
            raise ConfigError(f"method: {cls.__name__} needs a {cls.config_class.__name__} section, got "
                              f"{type(mcfg).__name__} (load the recipe with vitlab.config.load_config)")
        return cast(C, mcfg)  # config_class is C: set from the Method[C] base

    # ---- data -----------------------------------------------------------------------------------------------------
    @classmethod
    def build_datasets(cls, cfg: RunConfig) -> dict[str, Dataset]:
        """``{"train": ..., "test": ...}``; the train set carries ``num_classes``, ``mean``, ``std``."""
        from vitlab.data import build_dataset

        return {"train": build_dataset(cfg.data, "train", train=True),
                "test": build_dataset(cfg.data, "test", train=False)}

    def collate(self) -> Callable[[list[Any]], Any] | None:
        """A custom collate function for the training loader, or None for the default."""
        return None

    # ---- training -------------------------------------------------------------------------------------------------
    def forward(self, batch: dict[str, Tensor], progress: Progress) -> dict[str, Tensor]:  # pragma: no cover
        raise NotImplementedError(f"{type(self).__name__} must implement forward(batch, progress)")

    def training_step(self, batch: dict[str, Tensor], progress: Progress, helper: StepHelper) -> dict[str, Tensor]:
        """Manual optimisation: back-propagate and step through ``helper``; return the scalars to log."""
        raise NotImplementedError(f"{type(self).__name__} sets automatic_optimization=False but has no training_step")

    def schedules(self, total_steps: int, steps_per_epoch: int) -> dict[str, np.ndarray]:
        """Per-step arrays of the method's own scheduled values (e.g. teacher momentum), length ``total_steps``."""
        return {}

    def ema_decay_schedule(self, total_steps: int, steps_per_epoch: int) -> np.ndarray | None:
        """Per-step decay of the engine's weight EMA (``ema.enabled``), length ``total_steps``; None keeps the
        constant ``ema.decay``."""
        return None

    def batch_items(self, batch: Any) -> int:
        """How many items (images, clips) a training batch holds, for the logged throughput; 0 if unknown."""
        return len(batch["label"]) if isinstance(batch, Mapping) and "label" in batch else 0

    def on_optimizer_step(self, progress: Progress) -> None:
        """Called after every optimizer step (EMA teachers, momentum encoders, centroid updates)."""

    def trainable_model(self) -> nn.Module:
        """The module whose parameters the default optimizer trains."""
        return self.eval_model()

    def compiled_modules(self) -> list[nn.Module]:
        """The modules ``train.compile`` compiles (``nn.Module.compile``, in place): by default the trained model. A
        method whose step runs other heavy modules (a teacher, a generator) lists them too. Compilation applies to a
        module's call, ``module(x)``: a method that reaches inside (``module.forward_features(x)``) gains nothing."""
        return [self.trainable_model()]

    def param_groups(self) -> list[dict[str, Any]]:
        """Parameter groups for the default optimizer: no weight decay on 1-D parameters and ``no_weight_decay()``."""
        return param_groups_weight_decay(self.trainable_model(), self.cfg.optim.weight_decay,
                                         decay_pos_embed=self.cfg.optim.decay_pos_embed)

    def configure_optimizers(self, build_optimizer: OptimizerBuilder) -> dict[str, torch.optim.Optimizer]:
        """Manual optimisation only: the method's own optimizers, by name; ``build_optimizer(groups)`` builds the
        run's ``optim`` optimizer."""
        return {}

    # ---- evaluation and export ----------------------------------------------------------------------------------
    def eval_model(self) -> nn.Module:
        """The model that evaluation, attacks and export use (an :class:`~vitlab.models.ImageClassifier`)."""
        raise NotImplementedError(f"{type(self).__name__} must implement eval_model()")

    def evaluate(self, loaders: Mapping[str, Any], fabric: Any, model: nn.Module | None = None) -> dict[str, float]:
        """The metrics of the method's task; by default top-1/top-5 accuracy of ``eval_model()`` on ``test``."""
        from vitlab.evaluation.classification import evaluate_classifier

        return evaluate_classifier(model if model is not None else self.eval_model(), loaders["test"], fabric,
                                   self.data.num_classes)


def param_groups_weight_decay(model: nn.Module, weight_decay: float, decay_pos_embed: bool = False
                              ) -> list[dict[str, Any]]:
    """Two groups: decayed weights, and 1-D parameters / the model's ``no_weight_decay()`` names without decay."""
    skip: set[str] = set()
    inner = model
    while True:
        fn = getattr(inner, "no_weight_decay", None)
        if callable(fn):
            prefix = _prefix_of(model, inner)
            skip = {prefix + n for n in fn()}
            break
        nxt = getattr(inner, "model", None)
        if not isinstance(nxt, nn.Module):
            break
        inner = nxt
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        in_skip = name in skip or any(name.startswith(s + ".") for s in skip)
        if decay_pos_embed and "pos_embed" in name:
            in_skip = False
        (no_decay if p.ndim <= 1 or in_skip else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, "lr_scale": 1.0, "apply_wd": True},
              {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0, "apply_wd": False}]
    return [g for g in groups if g["params"]]


def _prefix_of(root: nn.Module, sub: nn.Module) -> str:
    for name, module in root.named_modules():
        if module is sub:
            return name + "." if name else ""
    return ""


METHODS: dict[str, type[Method[Any]]] = {}


M = TypeVar("M", bound="Method[Any]")


def register_method(name: str) -> Callable[[type[M]], type[M]]:
    """Class decorator: ``@register_method("score")`` makes ``method.name: score`` select the class and its config."""

    def wrap(cls: type[M]) -> type[M]:
        cls.name = name
        METHODS[name] = cls
        register_method_config(name, cls.config_class)
        return cls

    return wrap


def build_method(cfg: RunConfig, data: DataInfo) -> Method[Any]:
    from vitlab.plugins import load_method_plugins

    load_method_plugins()  # the built-in methods and those of installed plugins
    return METHODS[cfg.method.name](cfg, data)
