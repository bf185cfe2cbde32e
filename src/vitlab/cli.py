"""The ``vitlab`` command.

Every user mistake (bad recipe key, missing file, unknown model, a read-only output folder: a
:class:`vitlab.errors.UserError`) prints one ``error:`` line and exits with 2 (under ``torchrun`` rank 0 prints it and
every rank exits with 2); a run that fails (non-finite loss) exits with 1; any other exception is a fault of vitlab and
keeps its traceback. Runs under ``torchrun`` the same way as under plain python.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

EXIT_BAD_INPUT = 2
EXIT_RUN_FAILED = 1


def _cmd_models(args: argparse.Namespace) -> int:
    if args.all:
        import timm

        import vitlab.models  # noqa: F401  (registers vitlab models)

        for name in timm.list_models(args.pattern or "*"):
            print(name)
        return 0
    from vitlab import model_catalog  # a static table: listing the models imports no torch

    names = model_catalog.list_models(args.pattern or "*")
    if not names:
        from vitlab.errors import ConfigError

        raise ConfigError(f"pattern {args.pattern!r}: no vitlab model matches (`vitlab models` lists them all)")
    if args.flops:
        from vitlab.models.profile import model_info

        rows = [model_info(name, flops=True) for name in names]
    else:
        rows = [model_catalog.model_row(name) for name in names]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = f"{'model':<28}{'params':>14}{'input':>18}" + (f"{'GFLOPs':>10}" if args.flops else "")
    print(header)
    for r in rows:
        line = f"{r['model']:<28}{r['params']:>14,}{'x'.join(map(str, r['input_size'])):>18}"
        if args.flops:
            line += f"{r['flops'] / 1e9:>10.3f}"
        print(line)
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from vitlab.models.profile import model_info

    info = model_info(args.model, img_size=args.img_size, frames=args.frames, flops=not args.no_flops)
    if args.json:
        print(json.dumps(info))
        return 0
    print(f"model       {info['model']}")
    print(f"params      {info['params']:,} ({info['params'] / 1e6:.3f} M)")
    print(f"input       {tuple(info['input_size'])}")
    if "flops" in info:
        print(f"FLOPs       {info['flops']:,} ({info['flops'] / 1e9:.4f} G, fvcore: 1 multiply-add = 1 FLOP)")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from vitlab.config import load_config
    from vitlab.model_spec import recipe_overrides

    cfg = load_config(args.config, recipe_overrides(args) + list(args.set))  # checked before torch is imported
    from vitlab.engine.trainer import train

    metrics = train(cfg, resume=args.resume, overwrite=args.overwrite)
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_rank() == 0:
        print(json.dumps({k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)}))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    if args.episodes:
        from vitlab.evaluation.episodes_command import run_episodes

        return run_episodes(args)
    if args.model is not None:
        from vitlab.evaluation.classification import run_model_eval

        return run_model_eval(args)
    import torch

    from vitlab.config import apply_overrides, load_config
    from vitlab.data import build_dataset
    from vitlab.data.catalog import data_config
    from vitlab.data.loader import build_loader
    from vitlab.engine.checkpoint import check_data_fits, check_writable, load_method
    from vitlab.models.external import check_model_choice

    check_model_choice(args)
    if args.out:
        check_writable(Path(args.out).parent, "--out folder")
    method, ckpt = load_method(args.ckpt)
    cfg = method.cfg
    if args.config is not None:
        cfg.data = load_config(args.config, args.set).data
    elif args.set:
        cfg = apply_overrides(cfg, args.set)
    cfg.data = data_config(args, cfg.data)
    if args.data is not None:  # another set than the run's: its --split only
        datasets = {"test": build_dataset(cfg.data, args.split, train=False)}
    else:  # the same evaluation sets as training used (methods may add their own, e.g. a k-NN memory bank)
        datasets = {k: v for k, v in type(method).build_datasets(cfg).items() if k != "train"}
    if args.split != "test" and args.data is None:
        datasets["test"] = build_dataset(cfg.data, args.split, train=False)
    check_data_fits(args.ckpt, ckpt, datasets, cfg.data)
    loaders = {k: build_loader(v, cfg.data.num_workers, batch_size=cfg.data.eval_batch_size)
               for k, v in datasets.items()}
    with torch.no_grad():
        metrics = method.evaluate(loaders, None)
    if args.confusion:
        from vitlab.evaluation.classification import evaluate_classifier

        cm = evaluate_classifier(method.eval_model(), loaders["test"], None, method.data.num_classes,
                                 return_confusion=True)["confusion"]
        metrics["confusion"] = cm.tolist()
    printable = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items()}
    print(json.dumps(printable))
    if args.out:
        from vitlab.engine.checkpoint import atomic_write_bytes

        atomic_write_bytes(json.dumps(printable, indent=2).encode(), args.out)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from vitlab.config import ConfigError

    if args.model is not None:  # any model: written as a vitlab checkpoint first, then exported like one
        from vitlab.models.external import export_outside_checkpoint

        args.ckpt = str(export_outside_checkpoint(args))

    if args.format == "safetensors":
        from vitlab.engine.export import export_safetensors

        out = export_safetensors(args.ckpt, args.out)
        print(f"wrote {out / 'config.json'} and {out / 'model.safetensors'}")
        return 0
    exporters = _exporters()
    handler = exporters.get(args.format)
    if handler is None:
        raise ConfigError(f"--format: {args.format!r} is not available (available: safetensors"
                          f"{', ' + ', '.join(sorted(exporters)) if exporters else ''})")
    return handler(args)


def _cmd_demo(args: argparse.Namespace) -> int:
    from vitlab.demo import run_tour

    tour = run_tour(Path(args.out), quick=args.quick, sections=args.only)
    print(f"wrote {tour.report_md} and {tour.report_html}")
    if tour.failed:
        print(f"error: demo section(s) failed: {', '.join(tour.failed)} (their errors are in {tour.report_html})",
              file=sys.stderr)
        return EXIT_RUN_FAILED
    return 0


# Sub-commands that live with their method: name -> (module with add_arguments and run, help).
_EXTRA_COMMANDS = {
    "attack": ("vitlab.attacks.command", "robust accuracy of a checkpoint under PGD / APGD / AutoAttack"),
    "quantize": ("vitlab.quant.command", "data-free quantization: clusterq | gdfq | zeroq"),
    "analyze": ("vitlab.analysis.command", "frequency analysis and overlays of a trained model"),
    "lens": ("vitlab.analysis.lens_command", "AR-lens overlay of a checkpoint's CAM / attention map on an image"),
    "data": ("vitlab.data.command", "the bundled data sets (sizes, classes) and the formats --data-root reads"),
}


def _exporters() -> dict[str, Callable[[argparse.Namespace], int]]:
    """``vitlab export --format`` handlers that the extra commands' modules contribute (``EXPORT_FORMATS``)."""
    import importlib

    found: dict[str, Callable[[argparse.Namespace], int]] = {}
    for module_name, _ in _EXTRA_COMMANDS.values():
        found.update(getattr(importlib.import_module(module_name), "EXPORT_FORMATS", {}))
    return found


class _Parser(argparse.ArgumentParser):
    """argparse with the command's one-line errors: ``error: vitlab train: ... (see vitlab train --help)``, exit 2.

    A sub-command's parser is given ``arguments``, the function that adds its arguments; it runs only when that
    sub-command is parsed or its help is shown, so ``vitlab --help`` and ``vitlab train`` import only what they use.
    """

    def __init__(self, *args: Any, arguments: Callable[[argparse.ArgumentParser], None] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._arguments = arguments

    def _add_arguments(self) -> None:
        if self._arguments is not None:
            arguments, self._arguments = self._arguments, None
            arguments(self)

    def parse_known_args(  # type: ignore[override]  # the same call, without typeshed's overloads
            self, args: Any = None, namespace: Any = None) -> tuple[argparse.Namespace, list[str]]:
        self._add_arguments()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._add_arguments()
        return super().format_help()

    def format_usage(self) -> str:
        self._add_arguments()
        return super().format_usage()

    def error(self, message: str) -> NoReturn:
        if _is_reporting_rank():
            print(f"error: {self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def _models_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pattern", nargs="?", default=None, help="shell-style pattern, e.g. 'iformer*'")
    p.add_argument("--flops", action="store_true", help="also count fvcore FLOPs (builds and traces each model)")
    p.add_argument("--all", action="store_true", help="list every timm model name instead")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_models)


def _info_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model")
    p.add_argument("--img-size", type=int, default=None)
    p.add_argument("--frames", type=int, default=None, help="clip length T for video models")
    p.add_argument("--no-flops", action="store_true", help="skip the FLOP trace")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_info)


def _train_arguments(p: argparse.ArgumentParser) -> None:
    from vitlab.data.catalog import add_data_arguments

    p.add_argument("-c", "--config", required=True, help="recipe YAML, e.g. recipes/supervised/resnet18_digits.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. optim.lr=0.01")
    p.add_argument("--resume", nargs="?", const="last", default=None,
                   help="continue from the run folder's last.ckpt (or the given checkpoint)")
    p.add_argument("--overwrite", action="store_true", help="start again even if the run folder has checkpoints")
    p.add_argument("--model", default=None,
                   help="the backbone: path/to/file.py:factory or any timm / vitlab name (sets model.name)")
    p.add_argument("--model-args", nargs="+", default=None, metavar="KEY=VALUE",
                   help="its keyword arguments: key=value ... or one JSON object (sets model.kwargs)")
    add_data_arguments(p, default="the recipe's")
    p.set_defaults(func=_cmd_train)


def _eval_arguments(p: argparse.ArgumentParser) -> None:
    from vitlab.data.catalog import add_data_arguments
    from vitlab.evaluation.episodes_command import add_episode_arguments
    from vitlab.models.external import add_model_arguments

    p.add_argument("-c", "--config", default=None, help="recipe whose data section to evaluate on (default: the run's)")
    add_model_arguments(p)
    add_data_arguments(p, data_flag=False)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--split", default="test")
    p.add_argument("--confusion", action="store_true", help="also print the confusion matrix")
    p.add_argument("--out", default=None, help="write the metrics as JSON here")
    add_episode_arguments(p)
    p.set_defaults(func=_cmd_eval)


def _export_arguments(p: argparse.ArgumentParser) -> None:
    from vitlab.data.catalog import add_data_arguments
    from vitlab.models.external import add_model_arguments

    add_model_arguments(p)
    add_data_arguments(p, default="none; with --model --format int8: the calibration images")
    p.add_argument("--format", default="safetensors")
    p.add_argument("--out", default=None, help="output folder (default: <run>/export)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=_cmd_export)


def _demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--quick", action="store_true", help="a shorter tour (used by the tests)")
    p.add_argument("--only", action="append", default=None, help="run only these sections")
    p.set_defaults(func=_cmd_demo)


def _extra_arguments(module_name: str) -> Callable[[argparse.ArgumentParser], None]:
    """The arguments of an extra command: its module's ``add_arguments``, and its ``run`` as the command."""

    def arguments(p: argparse.ArgumentParser) -> None:
        import importlib

        module = importlib.import_module(module_name)
        module.add_arguments(p)
        p.set_defaults(func=module.run)

    return arguments


def build_parser() -> argparse.ArgumentParser:
    """The ``vitlab`` parser; each sub-command's arguments (and their imports) are added when it is used."""
    parser = _Parser(prog="vitlab", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands: list[tuple[str, str, Callable[[argparse.ArgumentParser], None]]] = [
        ("models", "list registered vitlab models with params (and FLOPs)", _models_arguments),
        ("info", "params and FLOPs of one model (fvcore convention, explicit attention)", _info_arguments),
        ("train", "train any method from a recipe (plain python or torchrun)", _train_arguments),
        ("eval", "the metrics of a checkpoint's task", _eval_arguments),
        ("export", "export a checkpoint's model (or any model with --model)", _export_arguments),
        ("demo", "the tour of every method on bundled data, with a report", _demo_arguments),
    ]
    commands += [(name, help_text, _extra_arguments(module)) for name, (module, help_text) in _EXTRA_COMMANDS.items()]
    for name, help_text, arguments in commands:
        sub.add_parser(name, help=help_text, arguments=arguments)
    return parser


def _is_reporting_rank() -> bool:
    """Under ``torchrun`` (``RANK`` set) only global rank 0 prints a user error; every rank still exits with 2."""
    return os.environ.get("RANK", "0") == "0"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from vitlab.errors import NonFiniteLossError, UserError, is_environment_error, os_reason

    try:
        return int(args.func(args) or 0)
    except (UserError, FileNotFoundError) as exc:
        # only mistakes the user can fix are shortened (VITLAB_DEBUG=1 shows their trace); any other exception is a
        # fault of vitlab and keeps its traceback
        if os.environ.get("VITLAB_DEBUG"):
            raise
        if _is_reporting_rank():
            print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:
        if not is_environment_error(exc) or os.environ.get("VITLAB_DEBUG"):
            raise
        if _is_reporting_rank():  # a boundary that did not name it (an extra command's output file, say)
            print(f"error: {exc.filename}: {os_reason(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except NonFiniteLossError as exc:
        if _is_reporting_rank():
            print(f"error: {exc}", file=sys.stderr)
        return EXIT_RUN_FAILED
    except KeyboardInterrupt as exc:
        if _is_reporting_rank():
            print(f"interrupted: {exc}" if str(exc) else "interrupted", file=sys.stderr)
        return 130


def entry(argv: Any = None) -> None:
    sys.exit(main(argv))


if __name__ == "__main__":
    entry()
