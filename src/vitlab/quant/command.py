"""``vitlab quantize`` (data-free quantisation of a trained checkpoint) and ``vitlab export --format int8``.

    vitlab quantize -c recipes/quant/clusterq_resnet20_digits.yaml --ckpt runs/resnet20_digits_teacher/last.ckpt \
        --method clusterq --wbits 4 --abits 4
    vitlab export --ckpt runs/<quantized run>/last.ckpt --format int8
    vitlab eval --ckpt runs/<quantized run>/export/model_int8.ckpt

``quantize`` writes the run folder of the method (``last.ckpt`` holds teacher, fake-quantised student and generator)
and prints the FP accuracy, the *simulated* quantised accuracy and the model sizes. No real training image is read.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from vitlab.config import ConfigError
from vitlab.quant.quantizer import MAX_BITS, MIN_BITS, quantized_model_bytes

if TYPE_CHECKING:
    from vitlab.methods.int8 import Int8Engine

__all__ = ["EXPORT_FORMATS", "add_arguments", "export_int8", "run"]

METHODS = ("clusterq", "gdfq", "zeroq")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", required=True, help="recipe: recipes/quant/clusterq_resnet20_digits.yaml")
    from vitlab.models.external import add_model_arguments

    add_model_arguments(parser, "the FP teacher: a vitlab checkpoint or a bare state dict (with --set model.name=...)")
    parser.add_argument("--method", choices=METHODS, default=None, help="default: the recipe's method.name")
    parser.add_argument("--wbits", type=int, default=None, help=f"weight bits, {MIN_BITS}..{MAX_BITS}")
    parser.add_argument("--abits", type=int, default=None, help=f"activation bits, {MIN_BITS}..{MAX_BITS}")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override")
    parser.add_argument("--overwrite", action="store_true", help="start again if the run folder has checkpoints")
    parser.add_argument("--out", default=None, help="also write the summary as JSON here")


def _check_bits(value: int | None, flag: str) -> None:
    if value is not None and not MIN_BITS <= value <= MAX_BITS:
        raise ConfigError(f"{flag}: got {value}, expected a bit width from {MIN_BITS} to {MAX_BITS}")


def quantize(config: str, ckpt: str, method: str | None = None, wbits: int | None = None, abits: int | None = None,
             overrides: list[str] | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Run a data-free quantisation and return its summary (accuracies in %, sizes in bytes, checkpoint path)."""
    from vitlab.config import load_config
    from vitlab.engine.checkpoint import load_method
    from vitlab.engine.trainer import train

    _check_bits(wbits, "--wbits")
    _check_bits(abits, "--abits")
    sets = [f"method.teacher_ckpt={ckpt}"]
    if method is not None:
        sets.append(f"method.name={method}")
    if wbits is not None:
        sets.append(f"method.wbits={wbits}")
    if abits is not None:
        sets.append(f"method.abits={abits}")
    user = list(overrides or [])
    cfg = load_config(config, sets + user)
    if cfg.method.name not in METHODS:
        raise ConfigError(f"method.name: got {cfg.method.name!r}, expected one of {', '.join(METHODS)}")
    extra = []
    if cfg.method.name == "zeroq" and cfg.train.epochs != 1:
        extra.append("train.epochs=1")  # ZeroQ is one pass of distill_steps
    if not any(item.startswith("name=") for item in user):
        m = cfg.method
        extra.append(f"name={cfg.name}_{m.name}_w{m.wbits}a{m.abits}_s{cfg.train.seed}")  # type: ignore[attr-defined]
    if extra:
        cfg = load_config(config, sets + user + extra)
    metrics = train(cfg, overwrite=overwrite)
    ckpt_path = cfg.run_dir / "last.ckpt"
    quantized, _ = load_method(ckpt_path)
    sizes = quantized_model_bytes(quantized.eval_model())
    m = cfg.method
    return {"method": m.name, "wbits": m.wbits, "abits": m.abits,  # type: ignore[attr-defined]
            "fp_top1": metrics.get("fp_top1"), "quant_top1_simulated": metrics.get("top1"),
            "quant_top5_simulated": metrics.get("top5"), "fp32_bytes": sizes["fp32_bytes"],
            "quantized_bytes": sizes["quantized_bytes"], "ckpt": str(ckpt_path)}


def _outside_teacher(args: argparse.Namespace) -> tuple[str, list[str]]:
    """``--model``: the model written as a teacher checkpoint beside the run, and the data overrides its input
    size needs."""
    from vitlab.config import load_config
    from vitlab.models.external import outside_method, write_outside_checkpoint

    cfg = load_config(args.config, args.set)
    method = outside_method(args, cfg.data)
    data = method.cfg.data
    path = write_outside_checkpoint(method, Path(cfg.out_dir) / f"{method.cfg.name}_teacher" / "teacher.ckpt")
    return str(path), [f"data.img_size={data.img_size}", f"data.channels={data.channels}"]


def run(args: argparse.Namespace) -> int:
    from vitlab.models.external import check_model_choice

    check_model_choice(args)
    if args.model is not None:
        args.ckpt, sizes = _outside_teacher(args)
        args.set = sizes + list(args.set)
    summary = quantize(args.config, args.ckpt, args.method, args.wbits, args.abits, args.set, args.overwrite)
    print(f"{summary['method']} W{summary['wbits']}A{summary['abits']}: FP top-1 {summary['fp_top1']:.2f}%  "
          f"quantised top-1 {summary['quant_top1_simulated']:.2f}% (simulated fake-quant)  size "
          f"{summary['fp32_bytes'] / 1e6:.3f} MB FP32 -> {summary['quantized_bytes'] / 1e6:.3f} MB "
          f"at W{summary['wbits']}  checkpoint {summary['ckpt']}")
    print(json.dumps(summary))
    if args.out:
        from vitlab.engine.checkpoint import atomic_write_bytes

        atomic_write_bytes(json.dumps(summary, indent=2).encode(), args.out)
    return 0


# ---- vitlab export --format int8 ------------------------------------------------------------------------------------
def calibration_images(method: Any, count: int = 256, seed: int = 0, data: Any = None) -> tuple[torch.Tensor, str]:
    """Calibration inputs for an int8 export in the *backbone's* input space (after the classifier's normalisation):
    the generator's samples (GDFQ, ClusterQ), the distilled batch (ZeroQ), or a fresh ZeroQ distillation of an FP
    model; real images only when ``data`` (a :class:`~vitlab.config.DataConfig`) is given: its first ``count``
    training images (test images for a test-only set)."""
    from vitlab.quant.int8 import zeroq_distill

    torch.manual_seed(seed)
    model = method.eval_model()
    if data is not None:
        import dataclasses

        from vitlab.data import DataError, build_dataset
        from vitlab.evaluation.robust import collect

        info = method.data
        data = dataclasses.replace(data, img_size=info.img_size, channels=info.channels)
        try:
            dataset, split = build_dataset(data, "train", train=False), "train"
        except DataError:
            dataset, split = build_dataset(data, "test", train=False), "test"
        with torch.no_grad():
            return model.normalize(collect(dataset, count)[0]), f"{data.name} {split}"
    from vitlab.quant.losses import bn_layers

    if not hasattr(method, "generator") and not hasattr(method, "distilled") and not bn_layers(model):
        raise ConfigError(f"--format int8: {type(model.model).__name__} has no BatchNorm layer, so no image can be "
                          "distilled from it without data; give --data NAME (its images calibrate the int8 ranges)")
    with torch.no_grad():
        if hasattr(method, "generator"):
            generator = method.generator.train()  # batch statistics, as during training
            labels = torch.randint(0, method.data.num_classes, (count,))
            images = torch.cat([generator(torch.randn(len(y), method.mcfg.latent_dim), y) for y in labels.split(64)])
            return model.normalize(method.to_pixels(images)), "generator"
        if hasattr(method, "distilled"):
            return model.normalize(method.to_pixels(method.distilled.detach())), "distilled"
    import copy

    frozen = copy.deepcopy(model.model).requires_grad_(False).eval()
    info = method.data
    return zeroq_distill(frozen, (32, info.channels, info.img_size, info.img_size)), "zeroq-distilled"


def export_int8(ckpt: str | Path, out_dir: str | Path | None = None, engine: Int8Engine = "x86",
                calibration_data: Any = None) -> dict[str, Any]:
    """Convert a checkpoint (W8A8 quantised or FP) into a real int8 model saved as ``model_int8.ckpt``; calibrated on
    the method's synthetic images, or on ``calibration_data``'s real images when given (:func:`calibration_images`).

    Raises:
        ConfigError: a checkpoint quantised below 8 bits (W4A4 has no int8 kernel and stays simulated).
    """
    from vitlab.engine.checkpoint import CheckpointError, load_method, save_checkpoint
    from vitlab.methods.int8 import Int8Config
    from vitlab.models.classifier import ImageClassifier
    from vitlab.quant.int8 import convert_int8

    method, source = load_method(ckpt)
    cfg = method.cfg
    if cfg.method.name == "int8":
        raise CheckpointError(f"checkpoint {ckpt}: is already an int8 export")
    wbits, abits = getattr(cfg.method, "wbits", None), getattr(cfg.method, "abits", None)
    if wbits is not None and abits is not None and (wbits < 8 or abits < 8):
        raise ConfigError(f"--format int8: checkpoint {ckpt} is quantised at W{wbits}A{abits}; only W8A8 (or FP) "
                          "models export to int8. Below 8 bits there is no CPU kernel: W4A4 stays a simulation "
                          "(evaluate it with vitlab eval --ckpt)")
    model = method.eval_model()
    if not isinstance(model, ImageClassifier):
        raise CheckpointError(f"checkpoint {ckpt}: its model is a {type(model).__name__}, not an image classifier")
    from vitlab.models.classifier import create_backbone

    info = method.data
    float_backbone = create_backbone(cfg.model, info.num_classes, info.channels, info.img_size).eval()
    # the (fine-tuned) float weights of the student: same names as the FP network, minus the activation quantizers
    weights = {k: v for k, v in model.model.state_dict().items() if not k.startswith("act_quant_")}
    result = float_backbone.load_state_dict(weights, strict=False)
    if result.missing_keys:
        raise CheckpointError(f"checkpoint {ckpt}: weights do not match {cfg.model.name} (missing "
                              f"{result.missing_keys[:5]})")
    calibration, kind = calibration_images(method, data=calibration_data)
    quantized = convert_int8(float_backbone, calibration, engine)
    int8_model = ImageClassifier(quantized, info.mean, info.std) if cfg.model.normalize else ImageClassifier(quantized)
    int8_cfg = cfg
    int8_cfg.method = Int8Config(engine=engine, source_ckpt=str(ckpt), source_method=cfg.method.name,
                                 calibration=kind)
    out = Path(out_dir) if out_dir is not None else Path(ckpt).parent / "export"
    path = out / "model_int8.ckpt"
    holder = torch.nn.Module()  # the state dict of Int8Model: keys "model.*", with the modules' version metadata
    holder.model = int8_model
    save_checkpoint(path, int8_cfg, info, holder.state_dict(), metrics=source.get("metrics", {}))
    return {"path": str(path), "calibration": kind, "engine": engine, "bytes": path.stat().st_size}


def _export_command(args: argparse.Namespace) -> int:
    from vitlab.methods.int8 import INT8_ENGINES

    engine = "x86"
    for item in getattr(args, "set", []) or []:
        key, _, value = item.partition("=")
        if key != "engine":
            raise ConfigError(f"--set {item!r}: int8 export takes only engine={'|'.join(INT8_ENGINES)}")
        if value not in INT8_ENGINES:
            raise ConfigError(f"--set engine: got {value!r}, expected one of {', '.join(INT8_ENGINES)}")
        engine = value
    from vitlab.data.catalog import data_config

    calibration = data_config(args) if getattr(args, "data", None) else None
    result = export_int8(args.ckpt, args.out, cast("Int8Engine", engine), calibration)
    print(f"wrote {result['path']} (int8, engine {engine}, calibrated on {result['calibration']} images, "
          f"{result['bytes'] / 1e6:.3f} MB); evaluate it with: vitlab eval --ckpt {result['path']}")
    return 0


EXPORT_FORMATS = {"int8": _export_command}
