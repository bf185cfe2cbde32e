"""Typed run configuration: dataclass schemas, YAML recipes and dotted ``--set`` overrides.

A recipe is a YAML file whose keys mirror :class:`RunConfig`. The ``method`` section is typed by the
method named in ``method.name``: every method registers a dataclass that extends :class:`MethodConfig`
with its own hyper-parameters, so ``--set method.beta=6`` is checked against that method's schema.

Every problem (unknown key, wrong type, impossible value) raises :class:`ConfigError` with one line that
names the key and what is allowed; the command line turns it into exit code 2.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, OmegaConfBaseException

from vitlab.errors import ConfigError as ConfigError  # re-exported: `from vitlab.config import ConfigError`
from vitlab.errors import os_reason


@dataclass
class AugConfig:
    """Training-time augmentation, applied by the data pipeline (per image) and the method (per batch)."""

    rand_augment: str | None = None  # timm RandAugment string, e.g. "rand-m9-mstd0.5-inc1"; None = off
    hflip: float = 0.0  # horizontal flip probability (0 for digits and glyphs: flips change the class)
    random_crop_padding: int = 0  # pad-and-crop translation, in pixels (4 is the CIFAR standard)
    rrc_scale: list[float] | None = None  # random-resized crop area range, e.g. [0.08, 1.0]; None = off
    random_erasing: float = 0.0  # timm RandomErasing probability
    mixup: float = 0.0  # mixup alpha (0 = off); applied per batch by the method
    cutmix: float = 0.0  # cutmix alpha (0 = off)
    mixup_prob: float = 1.0  # probability to apply mixup or cutmix to a batch
    mixup_switch_prob: float = 0.5  # probability to use cutmix instead of mixup when both are on


@dataclass
class VideoConfig:
    """Clips of the video sets (``moving_digits``, ``video_folder``): sampling, transforms and test views.

    A clip is ``clip_len`` frames every ``frame_interval`` frames, resized/cropped to ``data.img_size``; the model is
    built for (clip_len, img_size, img_size). Test videos are seen as ``num_clips`` temporal clips ×
    ``num_crops`` spatial crops (views), scored by averaging over the views.
    """

    clip_len: int = 8  # frames per clip (T of the model's video_size); DualFormer K400: 32
    frame_interval: int = 1  # stride between the sampled frames; DualFormer K400: 2
    num_clips: int = 1  # temporal clips per test video (uniform, deterministic); K400: 4
    num_crops: int = 1  # spatial crops per test clip: 1 (centre) or 3 (ThreeCrop); K400: 1
    short_side: int | None = None  # training: resize the short side to this first (K400: 256); null = no resize
    crop_scale: list[float] | None = None  # training random-resized-crop area range (K400: [0.08, 1.0]); null = off
    hflip: float = 0.0  # training horizontal flip probability (K400: 0.5; 0 when a flip changes the label)
    test_short_side: int | None = None  # test: resize the short side to this before cropping (K400: 224)
    label: Literal["motion", "digit"] = "motion"  # moving_digits: the class of a video
    num_frames: int = 16  # moving_digits: frames of each generated video
    digit_size: int = 16  # moving_digits: side of the digit sprite on the img_size canvas
    train_videos_per_digit: int = 4  # moving_digits: training videos per training digit (random start and motion)
    test_videos_per_digit: int = 1  # moving_digits: test videos per test digit
    train_list: str = "train.csv"  # video_folder: annotation list of the training split (relative to data.root)
    test_list: str = "val.csv"  # video_folder: annotation list of the test split (relative to data.root)
    videos_dir: str = ""  # video_folder: folder the listed paths are relative to, under data.root
    skip_corrupt: bool = False  # video_folder: skip (and count) missing or undecodable videos instead of failing
    max_test_videos: int | None = None  # evaluate on the first N test videos only (quick checks); null = all


@dataclass
class GlyphsConfig:
    """The ``glyphs`` sets' renders and font split; the defaults are the recorded sets (every figure in docs/)."""

    render_seed: int = 0  # 0: the recorded renders; another value re-draws every render's size, shift and rotation
    test_fonts: list[str] | None = None  # the held-out fonts of glyphs / glyphs_novel; null: the recorded four


@dataclass
class DataConfig:
    """Which data set, where, and how it is loaded. Images come out in [0, 1]; normalisation lives in the model."""

    name: str = "digits"  # digits | glyphs | glyphs_fewshot | image_folder | cifar10 | cifar100
    root: str | None = None  # folder of a user data set (image_folder, cifar*); unused for bundled sets
    img_size: int = 32  # side of the (square) images given to the model
    channels: Literal[1, 3] = 3
    train_per_class: int | None = None  # keep only this many training images per class (low-data regime)
    batch_size: int = 128  # per process; the global batch is batch_size * world size
    eval_batch_size: int = 256
    num_workers: int | str = "auto"  # loader processes; auto: cores per process, capped at 8 (docs/data.md)
    aug: AugConfig = field(default_factory=AugConfig)
    video: VideoConfig = field(default_factory=VideoConfig)  # video sets only
    glyphs: GlyphsConfig = field(default_factory=GlyphsConfig)  # glyphs sets only


@dataclass
class ModelConfig:
    """Any timm model, vitlab models included (they register into timm on ``import vitlab``)."""

    name: str = "resnet18"  # any timm / vitlab name, or a user's path/to/file.py:factory (kwargs are its arguments)
    num_classes: int | None = None  # None: taken from the data set
    in_chans: int | None = None  # None: taken from data.channels
    drop_path_rate: float = 0.0
    drop_rate: float = 0.0
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra keyword arguments for timm.create_model
    normalize: bool = True  # wrap the model so it takes [0, 1] inputs and normalises them with the data's stats


@dataclass
class OptimConfig:
    name: Literal["adamw", "sgd", "adam"] = "adamw"  # adam: L2 added to the gradient (TransZero++'s optimizer)
    lr: float = 1e-3  # peak learning rate (after warm-up), for the global batch
    min_lr: float = 0.0  # final learning rate of the cosine schedule
    weight_decay: float = 0.05
    weight_decay_end: float | None = None  # cosine weight-decay schedule end value (DINO); None = constant
    momentum: float = 0.9  # SGD momentum
    nesterov: bool = False
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    schedule: Literal["cosine", "constant", "step"] = "cosine"
    warmup_epochs: float = 0.0
    warmup_lr: float = 0.0  # learning rate at the start of the warm-up
    step_milestones: list[float] = field(default_factory=list)  # epochs at which the lr is multiplied by step_gamma
    step_gamma: float = 0.1
    clip_grad: float | None = None  # max global gradient norm; None = no clipping
    decay_pos_embed: bool = False  # decay position embeddings even if the model lists them in no_weight_decay()
    accum_steps: int = 1  # gradient accumulation: optimizer step every accum_steps batches


@dataclass
class EmaConfig:
    enabled: bool = False
    decay: float = 0.9998
    evaluate: bool = True  # evaluate (and keep best.ckpt by) the EMA weights instead of the raw ones


@dataclass
class TrainConfig:
    epochs: int = 10
    seed: int = 0  # base seed; process r uses seed + r
    accelerator: Literal["auto", "cpu", "cuda", "gpu", "mps"] = "auto"
    devices: str = "auto"  # "auto", a count ("2") or a list ("0,1")
    num_nodes: int = 1
    strategy: Literal["auto", "ddp", "fsdp", "single_device"] = "auto"
    precision: Literal["32-true", "32", "bf16-mixed", "16-mixed", "bf16-true"] = "32-true"
    log_every: int = 20  # steps between log lines
    eval_every: int = 1  # epochs between evaluations
    ckpt_every_steps: int = 0  # also write last.ckpt every N steps (0: only at epoch ends)
    max_steps: int | None = None  # stop after this many optimizer steps (for smoke tests)
    steps_per_epoch: int | None = None  # cap an epoch at this many optimizer steps (a fresh random subset each epoch)
    progress: bool = True  # progress bar when attached to a terminal
    # speed (docs/engine.md); auto is resolved at the start of a run and written into the run's config.yaml
    compile: bool | str = "auto"  # torch.compile of the method's compiled_modules(); auto: true on CUDA, false on CPU
    matmul_precision: Literal["auto", "highest", "high", "medium"] = "auto"  # auto: high on CUDA, highest on CPU
    channels_last: bool | str = "auto"  # channels-last weights and images; auto: on CUDA for models with a Conv2d


@dataclass
class MethodConfig:
    """Base of every method's hyper-parameters. Methods subclass it; ``name`` selects the method."""

    name: str = "supervised"


@dataclass
class RunConfig:
    """Everything a run needs; written as ``config.yaml`` into the run folder and into every checkpoint."""

    name: str = "run"
    out_dir: str = "runs"  # the run folder is out_dir/name
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name


_METHOD_CONFIGS: dict[str, type[MethodConfig]] = {}

#: the schema of each built-in method ("module:class"), in a torch-free module of ``vitlab.methods.schemas``: every name
#: ``@register_method`` registers in ``vitlab.methods`` (tests/test_cli_startup.py holds the two equal)
BUILTIN_METHOD_SCHEMAS: dict[str, str] = {
    "clusterq": "vitlab.methods.schemas.data_free:DataFreeQuantConfig",
    "gdfq": "vitlab.methods.schemas.data_free:DataFreeQuantConfig",
    "hat": "vitlab.methods.schemas.hat:HATConfig",
    "int8": "vitlab.methods.schemas.int8:Int8Config",
    "meta_baseline": "vitlab.methods.schemas.sun:MetaBaselineConfig",
    "mugs": "vitlab.methods.schemas.mugs:MugsConfig",
    "pgd_at": "vitlab.methods.schemas.adversarial:PGDATConfig",
    "rift": "vitlab.methods.schemas.rift:RIFTConfig",
    "score": "vitlab.methods.schemas.score:SCOREConfig",
    "sun": "vitlab.methods.schemas.sun:SUNConfig",
    "sun_teacher": "vitlab.methods.schemas.sun:SUNTeacherConfig",
    "supervised": "vitlab.methods.schemas.supervised:SupervisedConfig",
    "trades": "vitlab.methods.schemas.adversarial:TRADESConfig",
    "transzero": "vitlab.methods.schemas.transzero:TransZeroConfig",
    "video_supervised": "vitlab.methods.schemas.video:VideoSupervisedConfig",
    "zeroq": "vitlab.methods.schemas.data_free:DataFreeQuantConfig",
}


def register_method_config(name: str, config_cls: type[MethodConfig]) -> None:
    """Make ``method.name: <name>`` select ``config_cls`` as the schema of the ``method`` section."""
    _METHOD_CONFIGS[name] = config_cls


def method_config_class(name: str) -> type[MethodConfig]:
    """The schema ``method.name: <name>`` selects: a registered one, else a built-in method's from its schema module
    (:data:`BUILTIN_METHOD_SCHEMAS`, no torch), else the methods (built-in and plugins) are imported and looked up."""
    if name in _METHOD_CONFIGS:
        return _METHOD_CONFIGS[name]
    if name in BUILTIN_METHOD_SCHEMAS:
        module, _, cls_name = BUILTIN_METHOD_SCHEMAS[name].partition(":")
        schema = getattr(importlib.import_module(module), cls_name)
        assert isinstance(schema, type) and issubclass(schema, MethodConfig), BUILTIN_METHOD_SCHEMAS[name]
        return schema
    from vitlab.plugins import load_method_plugins

    load_method_plugins()
    if name not in _METHOD_CONFIGS:
        raise ConfigError(f"method.name: unknown method {name!r} (allowed: {', '.join(sorted(_METHOD_CONFIGS))})")
    return _METHOD_CONFIGS[name]


def _allowed_keys(node: Any) -> str:
    if dataclasses.is_dataclass(node):
        return ", ".join(f.name for f in dataclasses.fields(node))
    return ""


def _schema_at(path: list[str], schema: Any) -> Any:
    node = schema
    for part in path:
        if not dataclasses.is_dataclass(node) or not hasattr(node, part):
            return None
        node = getattr(node, part)
    return node


def literal_choices(annotation: Any) -> tuple[Any, ...] | None:
    """The allowed values of a ``Literal[...]`` field (``Literal[...] | None`` adds None), or None for other types."""
    if get_origin(annotation) is Literal:
        return get_args(annotation)
    args = get_args(annotation)
    if type(None) in args:
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1 and get_origin(inner[0]) is Literal:
            return (*get_args(inner[0]), None)
    return None


def _check_choice(value: Any, choices: tuple[Any, ...], key: str) -> Any:
    """``value`` if it is one of ``choices`` (a number written for a string choice, ``precision: 32``, becomes the
    string); raises a one-line :class:`ConfigError` naming ``key`` and the choices otherwise."""
    if isinstance(value, str) and "${" in value:  # an interpolation: checked once resolved
        return value
    if isinstance(value, int | float) and not isinstance(value, bool) and str(value) in choices:
        return str(value)
    # bool is an int subclass: Literal[1] must not accept True
    if not any(value == c and type(value) is type(c) for c in choices):
        allowed = ", ".join("null" if c is None else str(c) for c in choices)
        raise ConfigError(f"{key}: got {value!r}, expected one of {allowed}")
    return value


def _check_keys(raw: Any, schema: Any, prefix: str) -> None:
    """Reject keys the schema does not have and values outside a ``Literal`` field's choices, naming the full key.

    ``raw`` (plain dicts) is updated in place where a number stands for a string choice."""
    if not isinstance(raw, dict) or not dataclasses.is_dataclass(schema):
        return
    names = {f.name: f for f in dataclasses.fields(schema)}
    hints = get_type_hints(type(schema))
    for key, value in raw.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"{full}: unknown key (allowed in {prefix.rstrip('.') or 'the recipe'}: "
                              f"{_allowed_keys(schema)})")
        choices = literal_choices(hints.get(key))
        if choices is not None:
            raw[key] = _check_choice(value, choices, full)
        sub = getattr(schema, key)
        if dataclasses.is_dataclass(sub):
            if value is not None and not isinstance(value, dict):
                raise ConfigError(f"{full}: expected a section with keys {_allowed_keys(sub)}, got {value!r}")
            _check_keys(value, sub, full + ".")


def _parse_overrides(overrides: list[str]) -> list[str]:
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, for example optim.lr=0.001")
    return list(overrides)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load a recipe (or the defaults when ``path`` is None), apply ``--set`` overrides, validate, return it.

    Raises :class:`ConfigError` naming the key for unknown keys, wrong types and impossible values.
    """
    raw: DictConfig = OmegaConf.create({})
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"recipe {path}: file not found (recipes live under recipes/<method>/*.yaml)")
        try:
            loaded = OmegaConf.load(path)
        except OSError as exc:
            raise ConfigError(f"recipe {path}: cannot be read ({os_reason(exc)})") from None
        except Exception as exc:  # yaml errors carry their own line numbers
            raise ConfigError(f"recipe {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(loaded, DictConfig):
            raise ConfigError(f"recipe {path}: expected a mapping of sections (data, model, method, optim, ...)")
        if len(loaded) == 0:  # an empty file (or only comments) would silently train every default
            raise ConfigError(f"recipe {path}: the file is empty; expected a mapping of sections (data, model, "
                              "method, optim, ...); for every default write 'name: <run name>'")
        raw = loaded
    try:
        merged_raw = OmegaConf.merge(raw, OmegaConf.from_dotlist(_parse_overrides(overrides or [])))
        assert isinstance(merged_raw, DictConfig)
        raw = merged_raw
    except OmegaConfBaseException as exc:
        raise ConfigError(f"--set: {str(exc).splitlines()[0]}") from None
    plain = OmegaConf.to_container(raw, resolve=False)
    assert isinstance(plain, dict)
    method_section = plain.get("method") or {}
    if not isinstance(method_section, dict):
        raise ConfigError("method: expected a section with at least a name, e.g. method: {name: supervised}")
    method_name = str(method_section.get("name", "supervised"))
    _check_without_method(plain)
    method_cls = method_config_class(method_name)
    schema = RunConfig(method=method_cls(name=method_name))
    _check_keys(plain, schema, "")

    structured = OmegaConf.structured(schema)
    try:
        merged = OmegaConf.merge(structured, OmegaConf.create(plain))
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "config"
        msg = str(exc).splitlines()[0]
        raise ConfigError(f"{key}: {msg}") from None
    assert isinstance(cfg, RunConfig)
    validate(cfg)
    return cfg


def _check_without_method(plain: dict[Any, Any]) -> None:
    """Every check of the sections other than ``method`` (keys, types, choices, values), made before the method's
    schema is looked up: for a plugin's method that imports the methods (and torch), so a mistake in ``data``,
    ``optim``, ``train``, ... is reported in a fraction of a second whatever the method. An interpolation that needs
    the method's keys waits for the full check."""
    general = copy.deepcopy({k: v for k, v in plain.items() if k != "method"})
    schema = RunConfig()
    _check_keys(general, schema, "")
    try:
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.create(general)))
    except InterpolationResolutionError:
        return
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{getattr(exc, 'full_key', None) or 'config'}: {str(exc).splitlines()[0]}") from None
    assert isinstance(cfg, RunConfig)
    validate(cfg)


def require(cond: bool, key: str, allowed: str, value: Any) -> None:
    """The one style of a value check a schema cannot express: ``key: got <value>, expected <allowed>``."""
    if not cond:
        raise ConfigError(f"{key}: got {value!r}, expected {allowed}")


def check_choices(node: Any, prefix: str) -> None:
    """Check every ``Literal`` field of a config dataclass (and its sub-sections) against its choices."""
    hints = get_type_hints(type(node))
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        choices = literal_choices(hints.get(f.name))
        if choices is not None:
            _check_choice(value, choices, prefix + f.name)
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_choices(value, f"{prefix}{f.name}.")


def validate(cfg: RunConfig) -> None:
    """Check the ``Literal`` choices, then the values that types alone cannot (ranges, dependencies)."""
    check_choices(cfg, "")
    d, o, t = cfg.data, cfg.optim, cfg.train
    require(d.img_size >= 8, "data.img_size", "an integer >= 8", d.img_size)
    require(d.batch_size >= 1, "data.batch_size", "an integer >= 1", d.batch_size)
    require(d.eval_batch_size >= 1, "data.eval_batch_size", "an integer >= 1", d.eval_batch_size)
    require(d.num_workers == "auto" or (isinstance(d.num_workers, int) and d.num_workers >= 0), "data.num_workers",
            "an integer >= 0 or 'auto'", d.num_workers)
    require(d.train_per_class is None or d.train_per_class >= 1, "data.train_per_class", "null or >= 1",
             d.train_per_class)
    for key in ("hflip", "random_erasing", "mixup_prob", "mixup_switch_prob"):
        v = getattr(d.aug, key)
        require(0.0 <= v <= 1.0, f"data.aug.{key}", "a probability in [0, 1]", v)
    scale = d.aug.rrc_scale
    require(scale is None or (len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1),
             "data.aug.rrc_scale", "null or [min, max] with 0 < min <= max <= 1", d.aug.rrc_scale)
    require(d.aug.mixup >= 0 and d.aug.cutmix >= 0, "data.aug.mixup", "alphas >= 0", (d.aug.mixup, d.aug.cutmix))
    require(o.lr > 0, "optim.lr", "a learning rate > 0", o.lr)
    require(o.min_lr >= 0, "optim.min_lr", "a value >= 0", o.min_lr)
    require(o.weight_decay >= 0, "optim.weight_decay", "a value >= 0", o.weight_decay)
    require(o.warmup_epochs >= 0, "optim.warmup_epochs", "a value >= 0", o.warmup_epochs)
    require(o.accum_steps >= 1, "optim.accum_steps", "an integer >= 1", o.accum_steps)
    require(o.clip_grad is None or o.clip_grad > 0, "optim.clip_grad", "null or a norm > 0", o.clip_grad)
    require(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "optim.betas", "two values in [0, 1)", o.betas)
    require(0.0 < cfg.ema.decay < 1.0, "ema.decay", "a value in (0, 1)", cfg.ema.decay)
    require(t.epochs >= 1, "train.epochs", "an integer >= 1", t.epochs)
    require(t.log_every >= 1, "train.log_every", "an integer >= 1", t.log_every)
    require(t.eval_every >= 1, "train.eval_every", "an integer >= 1", t.eval_every)
    require(t.steps_per_epoch is None or t.steps_per_epoch >= 1, "train.steps_per_epoch", "null or an integer >= 1",
             t.steps_per_epoch)
    require(t.max_steps is None or t.max_steps >= 1, "train.max_steps", "null or >= 1", t.max_steps)
    for key in ("compile", "channels_last"):
        value = getattr(t, key)
        require(isinstance(value, bool) or value == "auto", f"train.{key}", "true, false or auto", value)
    if not cfg.name or "/" in cfg.name or "\\" in cfg.name or cfg.name in (".", ".."):
        raise ConfigError(f"name: got {cfg.name!r}, expected a run name (a folder inside out_dir, without '/')")
    check = getattr(cfg.method, "validate", None)
    if callable(check):
        check()


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """A copy of ``cfg`` with dotted ``KEY=VALUE`` overrides applied and validated."""
    base = OmegaConf.create(to_container(cfg))
    try:
        merged = OmegaConf.merge(base, OmegaConf.from_dotlist(_parse_overrides(overrides)))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"--set: {str(exc).splitlines()[0]}") from None
    data = OmegaConf.to_container(merged)
    assert isinstance(data, dict)
    out = from_container(data)  # type: ignore[arg-type]
    validate(out)
    return out


def to_yaml(cfg: RunConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_container(cfg: RunConfig) -> dict[str, Any]:
    """The config as plain dicts, lists and scalars (safe inside a ``weights_only`` checkpoint)."""
    out = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    assert isinstance(out, dict)
    return out  # type: ignore[return-value]


def from_container(data: dict[str, Any]) -> RunConfig:
    """Rebuild a validated :class:`RunConfig` from :func:`to_container`'s output (e.g. from a checkpoint)."""
    method_name = str((data.get("method") or {}).get("name", "supervised"))
    schema = RunConfig(method=method_config_class(method_name)(name=method_name))
    data = copy.deepcopy(data)
    _check_keys(data, schema, "")
    try:
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.create(data)))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{getattr(exc, 'full_key', None) or 'config'}: {str(exc).splitlines()[0]}") from None
    assert isinstance(cfg, RunConfig)
    return cfg
