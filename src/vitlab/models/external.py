"""Models a user brings: a Python file's factory or any timm / vitlab name, with weights from a file.

One place resolves what every command that takes a model accepts::

    --model path/to/file.py:factory [--model-args key=value ... | --model-args '{"k": v}']
    --model resnet18                  (any timm or vitlab name)
    --weights W.pt|W.pth|W.safetensors|run/last.ckpt
    --input-size C,H,W  --input-range 0,1|-1,1|0,255  --input-mean M ...  --input-std S ...

The model takes images in [0, 1] after :class:`~vitlab.models.classifier.ImageClassifier`'s normalisation, so the
input convention (value range, mean / std, size) comes from the flags, else from the model itself: attributes
``input_size``, ``input_range``, ``input_mean``, ``input_std`` or a timm-style ``pretrained_cfg`` dict (``input_size``,
``mean``, ``std``) on the module a file's factory returns. A vitlab checkpoint given as ``--weights`` brings its own
normalisation. A state dict that does not fit the model is a one-line error naming the file and the first
mismatched keys and shapes.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitlab.config import ConfigError
from vitlab.model_spec import MEMORY_PREFIX, absolute_spec, is_model_file, parse_model_args, recipe_overrides

__all__ = [
    "absolute_spec",
    "InputConvention",
    "add_model_arguments",
    "create_model",
    "input_convention",
    "is_model_file",
    "load_factory",
    "load_weights",
    "parse_model_args",
    "read_weights",
    "recipe_overrides",
]

RANGES = {"0,1": (0.0, 1.0), "-1,1": (-1.0, 1.0), "0,255": (0.0, 255.0)}
MISMATCH_KEYS_SHOWN = 3  # the first mismatched keys named in the error


_IN_MEMORY: dict[str, nn.Module] = {}  # modules the Python API was handed, by their spec


def register_module(module: nn.Module) -> str:
    """A spec (``memory:<class>-<id>``) under which :func:`create_model` gives copies of ``module``, in this process
    only: a checkpoint that names it loads nowhere else (give a ``file.py:factory`` for that)."""
    spec = f"{MEMORY_PREFIX}{type(module).__name__}-{id(module):x}"
    _IN_MEMORY[spec] = module
    return spec


def load_factory(spec: str, flag: str = "--model") -> Callable[..., Any]:
    """The callable ``factory`` of ``path/to/file.py:factory`` (the file is imported once per path)."""
    path_text, _, name = spec.rpartition(":") if ".py:" in spec else (spec, "", "")
    path = Path(path_text).expanduser()
    if not name:
        raise ConfigError(f"{flag}: {spec!r} names a file but no factory; write {spec}:FUNCTION (a function or class "
                          "returning an nn.Module)")
    if not path.is_file():
        raise ConfigError(f"{flag}: {path} not found (expected path/to/file.py:factory)")
    resolved = path.resolve()
    module_name = "vitlab_user_model_" + hashlib.sha1(str(resolved).encode()).hexdigest()[:12]
    module = sys.modules.get(module_name)
    if module is None:
        module_spec = importlib.util.spec_from_file_location(module_name, resolved)
        if module_spec is None or module_spec.loader is None:
            raise ConfigError(f"{flag}: {path} cannot be imported as a Python file")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[module_name]
            raise ConfigError(f"{flag}: importing {path} failed ({type(exc).__name__}: {exc})") from None
    factory = getattr(module, name, None)
    if not callable(factory):
        found = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_")
                       and getattr(v, "__module__", None) == module_name)
        raise ConfigError(f"{flag}: {path} has no callable {name!r} (found: {', '.join(found) or 'none'})")
    return factory


def create_model(spec: str, model_args: dict[str, Any] | None = None, num_classes: int | None = None,
                 in_chans: int | None = None, flag: str = "--model") -> nn.Module:
    """The module ``spec`` names: ``file.py:factory`` called with ``model_args`` or a timm / vitlab name.

    ``num_classes`` and ``in_chans`` go to a timm model, and to a factory only if its signature takes them and
    ``model_args`` does not set them.
    """
    kwargs = dict(model_args or {})
    if spec.startswith(MEMORY_PREFIX):
        import copy

        if spec not in _IN_MEMORY:
            raise ConfigError(f"{flag}: {spec} is a module handed to the Python API in another process; rebuild it "
                              "from a path/to/file.py:factory instead")
        return copy.deepcopy(_IN_MEMORY[spec])
    if is_model_file(spec):
        factory = load_factory(spec, flag)
        try:
            params = inspect.signature(factory).parameters
        except (TypeError, ValueError):
            params = {}  # type: ignore[assignment]
        for key, value in (("num_classes", num_classes), ("in_chans", in_chans)):
            if value is not None and key in params and key not in kwargs:
                kwargs[key] = value
        try:
            model = factory(**kwargs)
        except TypeError as exc:
            raise ConfigError(f"{flag}: {spec} does not take these arguments {kwargs} ({exc})") from None
        if not isinstance(model, nn.Module):
            raise ConfigError(f"{flag}: {spec} returned a {type(model).__name__}, expected a torch.nn.Module")
        return model
    import timm

    import vitlab.models  # noqa: F401  (registers vitlab models)

    if not timm.is_model(spec):
        close = timm.list_models(f"*{spec.split('_')[0]}*")[:8]
        raise ConfigError(f"{flag}: unknown model {spec!r} (similar: {', '.join(close) or 'none'}; `vitlab models "
                          "--all` lists timm's, or give path/to/file.py:factory)")
    if num_classes is not None:
        kwargs.setdefault("num_classes", num_classes)
    if in_chans is not None:
        kwargs.setdefault("in_chans", in_chans)
    try:
        return timm.create_model(spec, pretrained=False, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"{flag}: {spec} does not take these arguments {kwargs} ({exc})") from None


@dataclass
class InputConvention:
    """What the model expects of its input: ``model((x01 - mean) / std)`` for x01 in [0, 1], at ``input_size``.

    ``mean`` / ``std`` are ``None`` when the model takes [0, 1] images as they are.
    """

    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    input_size: tuple[int, int, int] | None = None  # (C, H, W)

    def describe(self) -> str:
        norm = "inputs in [0, 1]" if self.mean is None else f"mean {list(self.mean)} std {list(self.std or ())}"
        size = "" if self.input_size is None else f", input {'x'.join(map(str, self.input_size))}"
        return norm + size


def _floats(value: Any, what: str) -> tuple[float, ...]:
    values = value if isinstance(value, (list, tuple)) else [value]
    try:
        return tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ConfigError(f"{what}: expected numbers, got {value!r}") from None


def parse_input_size(text: str | Sequence[int] | None, flag: str = "--input-size") -> tuple[int, int, int] | None:
    """``C,H,W`` (or ``H`` for 3 x H x H) -> (C, H, W)."""
    if text is None:
        return None
    parts = text.replace("x", ",").split(",") if isinstance(text, str) else list(text)
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) == 1:
        values = [3, values[0], values[0]]
    if len(values) != 3 or values[0] not in (1, 3) or min(values[1:]) < 1:
        raise ConfigError(f"{flag}: expected C,H,W with C 1 or 3 (e.g. 1,28,28) or one side (e.g. 32), got {text!r}")
    return values[0], values[1], values[2]


def input_convention(model: nn.Module | None = None, input_range: str | None = None,
                     mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                     input_size: str | Sequence[int] | None = None) -> InputConvention:
    """The convention from the flags, each missing one from the model's attributes or ``pretrained_cfg``.

    The model sees ``(lo + (hi - lo) * x01 - mean) / std`` (range ``lo,hi``; mean 0 and std 1 by default), folded
    into one ``(x01 - mean') / std'`` for :class:`~vitlab.models.classifier.ImageClassifier`.
    """
    cfg = getattr(model, "pretrained_cfg", None) if model is not None else None
    cfg = cfg if isinstance(cfg, dict) else {}
    attr: Callable[[str], Any] = (lambda name: getattr(model, name, None)) if model is not None else (lambda _: None)
    input_range = input_range or attr("input_range")
    if input_range is not None and not isinstance(input_range, str):
        input_range = ",".join(f"{float(v):g}" for v in input_range)
    if input_range is not None and input_range not in RANGES:
        raise ConfigError(f"--input-range: got {input_range!r}, expected one of {' | '.join(RANGES)}")
    mean = mean if mean is not None else attr("input_mean") if attr("input_mean") is not None else cfg.get("mean")
    std = std if std is not None else attr("input_std") if attr("input_std") is not None else cfg.get("std")
    if (mean is None) != (std is None):
        raise ConfigError("--input-mean and --input-std go together (or neither)")
    size = parse_input_size(input_size if input_size is not None else attr("input_size") or cfg.get("input_size"))
    if mean is None and input_range in (None, "0,1"):
        return InputConvention(None, None, size)
    lo, hi = RANGES[input_range or "0,1"]
    m = _floats(mean if mean is not None else [0.0], "--input-mean")
    s = _floats(std if std is not None else [1.0], "--input-std")
    if len(m) != len(s) or any(v <= 0 for v in s):
        raise ConfigError(f"--input-mean {list(m)} / --input-std {list(s)}: same length, std > 0")
    return InputConvention(tuple((v - lo) / (hi - lo) for v in m), tuple(v / (hi - lo) for v in s), size)


def _unwrap_state(obj: Any, path: Path, flag: str) -> dict[str, torch.Tensor]:
    for key in ("state_dict", "model_state_dict", "model"):
        inner = obj.get(key) if isinstance(obj, dict) else None
        if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            obj = inner
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(f"{flag} {path}: expected a state dict (names -> tensors), got {type(obj).__name__}")
    if obj and all(k.startswith("module.") for k in obj):  # saved from DataParallel / DDP
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def read_weights(path: str | Path, flag: str = "--weights") -> tuple[dict[str, torch.Tensor], InputConvention | None]:
    """A state dict from a ``.safetensors`` file, a torch file (``weights_only=True``) or a vitlab checkpoint
    (the backbone of its eval model; then also its input normalisation)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"{flag}: {path} not found (a state dict .pt/.pth, a .safetensors file or a vitlab "
                          "checkpoint)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path)), None
        except Exception as exc:
            raise ConfigError(f"{flag} {path}: not a readable safetensors file ({exc})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"{flag} {path}: not a weights-only torch file ({str(exc).splitlines()[0][:160]})") from None
    from vitlab.engine.checkpoint import CKPT_FORMAT

    if isinstance(obj, dict) and obj.get("format") == CKPT_FORMAT:
        from vitlab.engine.checkpoint import load_eval_model
        from vitlab.models.classifier import ImageClassifier, InputNormalize

        model = load_eval_model(path)
        if not isinstance(model, ImageClassifier):
            raise ConfigError(f"{flag} {path}: its model is a {type(model).__name__}, not an image classifier")
        norm = model.normalize
        convention = (InputConvention(tuple(norm.mean.tolist()), tuple(norm.std.tolist()))
                      if isinstance(norm, InputNormalize) else InputConvention())
        return model.model.state_dict(), convention
    return _unwrap_state(obj, path, flag), None


def load_weights(model: nn.Module, path: str | Path, flag: str = "--weights") -> InputConvention | None:
    """Load ``path`` into ``model`` (strict); returns a vitlab checkpoint's input convention, else None.

    Raises:
        ConfigError: the file is missing or unreadable, or its keys / shapes do not match the model's (the message
            names the first mismatched keys and shapes).
    """
    from vitlab.models.state_dict import state_dict_mismatch

    state, convention = read_weights(path, flag)
    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if callable(filter_fn):  # timm's convention: the family converts released weights to its own names
        state = filter_fn(state, model)
    mismatch = state_dict_mismatch(state, model.state_dict(), limit=MISMATCH_KEYS_SHOWN)
    if mismatch is not None:
        raise ConfigError(f"{flag} {path}: does not fit {type(model).__name__}: {mismatch}")
    model.load_state_dict(state, strict=True)
    return convention


def add_model_arguments(parser: argparse.ArgumentParser, ckpt_help: str | None = None) -> argparse._ArgumentGroup:
    """The model flags every command that takes a model shares: ``--ckpt`` (a vitlab checkpoint) or ``--model``
    with ``--model-args``, ``--weights`` and the input convention."""
    g = parser.add_argument_group("model (a vitlab checkpoint, or any model with --model)")
    g.add_argument("--ckpt", default=None,
                   help=ckpt_help or "a vitlab checkpoint (its EMA weights when the run evaluated them)")
    g.add_argument("--model", default=None,
                   help="path/to/file.py:factory (a function returning an nn.Module) or any timm / vitlab name")
    g.add_argument("--model-args", nargs="+", default=None, metavar="KEY=VALUE",
                   help="keyword arguments of the factory / timm model: key=value ... or one JSON object")
    g.add_argument("--weights", default=None,
                   help="weights of --model: a state dict .pt/.pth (weights_only), a .safetensors file or a vitlab "
                        "checkpoint")
    g.add_argument("--num-classes", type=int, default=None, help="classes of a timm --model (default: from --data)")
    g.add_argument("--input-size", default=None, metavar="C,H,W",
                   help="input of --model, e.g. 1,28,28 (default: the model's input_size / pretrained_cfg, else the "
                        "data's)")
    g.add_argument("--input-range", default=None, choices=tuple(RANGES),
                   help="value range --model expects (default 0,1; the model's input_range attribute)")
    g.add_argument("--input-mean", "--mean", dest="mean", type=float, nargs="+", default=None,
                   help="per-channel mean --model subtracts (in its range; default: its input_mean / pretrained_cfg)")
    g.add_argument("--input-std", "--std", dest="std", type=float, nargs="+", default=None,
                   help="per-channel std --model divides by (in its range; default: its input_std / pretrained_cfg)")
    return g


def check_model_choice(args: argparse.Namespace) -> None:
    """Exactly one of ``--ckpt`` and ``--model``; ``--model-args`` / ``--weights`` only with ``--model``."""
    if (args.ckpt is None) == (args.model is None):
        raise ConfigError("give either --ckpt PATH (a vitlab checkpoint) or --model path/to/file.py:factory|NAME "
                          "[--weights PATH]")
    if args.ckpt is not None:
        for flag, value in (("--model-args", args.model_args), ("--weights", args.weights)):
            if value is not None:
                raise ConfigError(f"{flag} goes with --model, not --ckpt")


@dataclass
class OutsideModel:
    """A ``--model`` built, weighted and wrapped: ``model`` takes (B, C, H, W) in [0, 1] (eval mode)."""

    model: nn.Module  # an ImageClassifier
    convention: InputConvention
    num_classes: int
    spec: str  # the --model value, a file's path made absolute
    model_args: dict[str, Any]
    source: str  # how the command names it in its output


def build_outside_model(args: argparse.Namespace, channels: int | None = None, img_size: int | None = None,
                        num_classes: int | None = None) -> OutsideModel:
    """``--model`` / ``--model-args`` / ``--weights`` / ``--input-*`` -> the [0, 1]-input classifier.

    Args:
        channels, img_size: the data's, used when neither the flags nor the model give an input size.
        num_classes: the data's, for a timm model without ``--num-classes`` (a factory keeps its own default).
    """
    from vitlab.models.classifier import ImageClassifier

    model_args = parse_model_args(args.model_args)
    size = parse_input_size(args.input_size)
    in_chans = size[0] if size is not None else channels
    # a file's factory keeps its own class count unless --num-classes says otherwise; a timm model takes the data's
    data_classes = None if is_model_file(args.model) else num_classes
    backbone = create_model(args.model, model_args, args.num_classes or data_classes, in_chans)
    weights_convention = load_weights(backbone, args.weights) if args.weights else None
    convention = input_convention(backbone, args.input_range, args.mean, args.std, args.input_size)
    if weights_convention is not None and convention.mean is None and args.input_range is None:
        convention.mean, convention.std = weights_convention.mean, weights_convention.std
    if convention.input_size is None and channels is not None and img_size is not None:
        convention.input_size = (channels, img_size, img_size)
    model = ImageClassifier(backbone, convention.mean, convention.std).eval()
    c, h, w = convention.input_size or (3, 32, 32)
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, c, h, w))
    except Exception as exc:
        raise ConfigError(f"--model {args.model}: a forward pass on a (1, {c}, {h}, {w}) input failed "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); set --input-size C,H,W") from None
    if out.dim() != 2:
        raise ConfigError(f"--model {args.model}: returned {tuple(out.shape)} for one image, expected logits (1, K)")
    source = args.model + (f" + {args.weights}" if args.weights else "")
    return OutsideModel(model, convention, int(out.shape[1]), absolute_spec(args.model), model_args, source)


def outside_method(args: argparse.Namespace, data_cfg: Any = None, classes: Sequence[str] = ()) -> Any:
    """A ``supervised`` method holding ``--model`` as its model, so every command that reads a checkpoint's method
    (``eval``, ``analyze``, ``lens``, ``export``, ``quantize``) takes an outside model the same way.

    ``data_cfg`` (a :class:`~vitlab.config.DataConfig`) gets the model's input size and channels.
    """
    import dataclasses

    from vitlab.config import DataConfig, ModelConfig, RunConfig, method_config_class
    from vitlab.methods.base import DataInfo, build_method

    data_cfg = data_cfg if data_cfg is not None else DataConfig()
    from vitlab.data.foolbox import FOOLBOX_SETS

    if data_cfg.name in FOOLBOX_SETS:  # their own size unless the model says otherwise
        grey = FOOLBOX_SETS[data_cfg.name] in ("mnist", "fashionMNIST")
        data_cfg = dataclasses.replace(data_cfg, channels=1 if grey else 3, img_size=28 if grey else 32)
    outside = build_outside_model(args, data_cfg.channels, data_cfg.img_size)
    c, h, w = outside.convention.input_size or (data_cfg.channels, data_cfg.img_size, data_cfg.img_size)
    if h != w:
        raise ConfigError(f"--input-size {c},{h},{w}: vitlab's data sets are square; give C,S,S")
    conv = outside.convention
    normalize = conv.mean is not None
    mean = tuple(conv.mean) if conv.mean is not None else (0.0,) * c
    std = tuple(conv.std) if conv.std is not None else (1.0,) * c
    if len(mean) == 1 and c == 3:
        mean, std = mean * 3, std * 3
    stem = type(outside.model.model).__name__.lower() if outside.spec.startswith(MEMORY_PREFIX) else \
        Path(outside.spec.rpartition(":")[0] or outside.spec).stem
    cfg = RunConfig(name=stem,
                    data=dataclasses.replace(data_cfg, img_size=h, channels=c),
                    model=ModelConfig(name=outside.spec, num_classes=outside.num_classes, in_chans=c,
                                      kwargs=dict(outside.model_args), normalize=normalize),
                    method=method_config_class("supervised")())
    info = DataInfo(num_classes=outside.num_classes, channels=c, img_size=h, mean=mean, std=std,
                    classes=[str(k) for k in classes] if len(classes) == outside.num_classes else [])
    method: Any = build_method(cfg, info)  # a Supervised: its ImageClassifier is method.model
    method.model.model = outside.model.model  # the module built above, with its weights
    method.source = outside.source
    return method.eval()


def write_outside_checkpoint(method: Any, path: str | Path) -> Path:
    """Save an :func:`outside_method` as a vitlab checkpoint (atomic), for the commands that read one by path."""
    from vitlab.engine.checkpoint import save_checkpoint

    return save_checkpoint(path, method.cfg, method.data, method.state_dict())


def method_from_args(args: argparse.Namespace, data_cfg: Any = None) -> Any:
    """The method a command works on: ``--ckpt``'s (:func:`~vitlab.engine.checkpoint.load_method`) or
    :func:`outside_method` of ``--model`` on ``data_cfg``. Eval mode, on the CPU."""
    check_model_choice(args)
    if args.ckpt is not None:
        from vitlab.engine.checkpoint import load_method

        if not Path(args.ckpt).is_file():
            raise FileNotFoundError(f"--ckpt: {args.ckpt} not found (a checkpoint written by vitlab train)")
        method, _ = load_method(args.ckpt)
        method.source = str(args.ckpt)
        return method
    return outside_method(args, data_cfg)


def export_outside_checkpoint(args: argparse.Namespace) -> Path:
    """``vitlab export --model ...``: the model as a vitlab checkpoint ``<--out>/model.ckpt`` (default folder
    ``<file stem>_export``), which the exporters then read like any run's."""
    from vitlab.data.catalog import data_config

    method = outside_method(args, data_config(args) if args.data else None)
    out = Path(args.out) if args.out else Path(f"{method.cfg.name}_export")
    return write_outside_checkpoint(method, out / "model.ckpt")
