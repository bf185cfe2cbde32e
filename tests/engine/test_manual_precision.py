"""Manual-optimisation methods under mixed precision on the CPU: each method's ``training_step``, run through the
engine's own Fabric setup (:func:`~vitlab.engine.trainer.setup_optimization`,
:func:`~vitlab.engine.trainer.manual_step`) under ``bf16-mixed`` and ``16-mixed`` (with a CPU grad scaler), gives
the loss and the parameter update of the ``32-true`` run within a tolerance, runs under autocast, and steps the
optimizers through Fabric (the scaler sees every step)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from vitlab.config import load_config
from vitlab.engine.optim import FabricStepHelper
from vitlab.engine.trainer import manual_step, setup_optimization
from vitlab.methods.base import DataInfo, Method, Progress, build_method
from vitlab.methods.data_free import teacher_data_info

ROOT = Path(__file__).resolve().parents[2]
MUGS_TINY = ["data.img_size=16", "data.batch_size=8", "method.crops.global_size=16", "method.crops.local_size=8",
             "method.crops.local_number=2", "method.ids.queue_size=32", "method.lgds.queue_size=32",
             "method.lgds.memory_size=32", "method.lgds.top_k=4", "method.gds.prototypes=64",
             "method.head_hidden_dim=32", "method.predictor_hidden_dim=32", "method.head_out_dim=16",
             "method.gds.bottleneck_dim=16", "model.kwargs.depth=2", "model.drop_path_rate=0"]
HAT_TINY = ["method.name=hat", "model.name=vit_tiny_patch16_224", "model.kwargs.img_size=8",
            "model.kwargs.patch_size=4", "model.kwargs.embed_dim=16", "model.kwargs.depth=2",
            "model.kwargs.num_heads=2", "model.drop_path_rate=0", "data.img_size=8", "method.adv_epochs=2"]


def _progress(values: dict[str, float], epoch: int = 0, steps_per_epoch: int = 2) -> Progress:
    return Progress(step=epoch * steps_per_epoch, epoch=epoch, total_steps=12 * steps_per_epoch,
                    steps_per_epoch=steps_per_epoch, values=values)


def _hat(_: Path, optim: str) -> tuple[Method, dict[str, Any], Progress]:
    cfg = load_config(None, [*HAT_TINY, f"optim.name={optim}"])
    method = build_method(cfg, DataInfo(num_classes=5, channels=3, img_size=8, mean=(0.5,) * 3, std=(0.5,) * 3))
    batch = {"image": torch.rand(8, 3, 8, 8), "label": torch.arange(8) % 5}
    return method, batch, _progress({"lr": 1e-3, "weight_decay": 0.05})


def _mugs(_: Path, optim: str) -> tuple[Method, dict[str, Any], Progress]:
    cfg = load_config(ROOT / "recipes" / "mugs" / "vit_tiny_digits.yaml", [*MUGS_TINY, f"optim.name={optim}"])
    method = build_method(cfg, DataInfo(num_classes=10, channels=1, img_size=16, mean=(0.5,), std=(0.25,)))
    batch = {"teacher_globals": torch.rand(8, 2, 1, 16, 16), "student_globals": torch.rand(8, 2, 1, 16, 16),
             "student_locals": torch.rand(8, 2, 1, 8, 8), "weak_flag": torch.arange(8) % 2 == 0,
             "label": torch.arange(8)}
    # epoch 1: past freeze_last_layer, so the prototypes are stepped too
    return method, batch, _progress({"lr": 1e-3, "weight_decay": 0.04, "teacher_temp": 0.04,
                                     "teacher_momentum": 0.99}, epoch=1)


def _data_free(name: str, *extra: str) -> Any:
    def build(teacher: Path, optim: str) -> tuple[Method, dict[str, Any], Progress]:
        cfg = load_config(ROOT / "recipes" / "quant" / f"{name}_resnet20_digits.yaml",
                          [f"method.teacher_ckpt={teacher}", "model.name=test_cifar_resnet", f"optim.name={optim}",
                           *extra])
        method = build_method(cfg, teacher_data_info(cfg))
        if name == "zeroq":
            return method, {"label": torch.zeros(4, dtype=torch.long)}, Progress(0, 0, 1, 1, {})
        epoch = 5  # after the warm-up: generator and student both step
        values = {k: float(v[epoch * 2]) for k, v in method.schedules(24, 2).items()}
        return method, {"label": torch.arange(10)}, _progress({**values, "lr": 1e-3, "weight_decay": 1e-4}, epoch)

    return build


CASES = {"hat": _hat, "mugs": _mugs, "gdfq": _data_free("gdfq"), "clusterq": _data_free("clusterq"),
         "zeroq": _data_free("zeroq", "method.distill_images=4")}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.quant.conftest import save_teacher

    return save_teacher(tmp_path_factory.mktemp("teacher") / "teacher.ckpt")


def _fabric(precision: str, scale: float = 64.0) -> Any:
    from lightning_fabric import Fabric
    from lightning_fabric.plugins import MixedPrecision

    # Fabric turns 16-mixed into bf16-mixed on the CPU unless handed the plugin. A loss scale of 64 keeps every
    # method's float16 gradients finite on these inputs (Mugs' overflow at 512), so that no step is skipped.
    if precision == "16-mixed":
        scaler = torch.amp.GradScaler("cpu", init_scale=scale)
        return Fabric(accelerator="cpu", devices=1, plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])
    return Fabric(accelerator="cpu", devices=1, precision=precision)  # type: ignore[arg-type]


def _one_step(name: str, precision: str, teacher: Path, optim: str) -> dict[str, Any]:
    """One training step: the loss, each optimizer's parameter update, the dtypes seen inside, the helper."""
    torch.manual_seed(0)
    method, batch, progress = CASES[name](teacher, optim)
    method.train()
    fabric = _fabric(precision)
    module, optimizers, helper = setup_optimization(method.cfg, fabric, method)
    params = {k: [p for g in o.param_groups for p in g["params"]] for k, o in optimizers.items()}
    before = {k: [p.detach().clone() for p in ps] for k, ps in params.items()}
    dtypes: set[torch.dtype] = set()
    hooks = [m.register_forward_hook(lambda _m, _i, out: dtypes.add(out.dtype) if torch.is_tensor(out) else None)
             for m in method.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    torch.manual_seed(1)  # the same generator noise, δ and crops draws in every precision
    out = manual_step(fabric, module, batch, progress, helper)
    for h in hooks:
        h.remove()
    update = {k: torch.cat([(p.detach() - b).flatten() for p, b in zip(params[k], before[k])]) for k in params}
    return {"loss": float(out["loss"].detach()), "update": update, "dtypes": dtypes, "helper": helper, "fabric": fabric}


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


# Tolerances, from the largest relative differences measured over the five methods (one step, the inputs above;
# bf16 / fp16): loss 0.19% / 0.03% (Mugs); SGD updates (the ``optim`` section's optimizer, linear in the gradient)
# 4.7% / 1.4% (Mugs / GDFQ's student), fake-quantised students included; Adam updates (GDFQ's and ClusterQ's
# generator, ZeroQ's images: a first Adam step is ±lr wherever |g| ≫ eps, so a gradient component that rounding
# moves across zero flips its update, and a few percent of flips give tens of percent in L2) 33% / 18%.
# The bounds leave 2-5x headroom over bf16's 2^-8 relative rounding of each op: a scaler left out of the step
# (updates with scaled gradients), a clip before unscaling, or a missing autocast exceeds them or fails the dtype check.
LOSS_TOLERANCE = 0.01
UPDATE_TOLERANCE = {"sgd": 0.10, "adam": 0.5}
ADAM_OPTIMIZERS = {"generator", "distilled"}  # the methods' own Adam; every other optimizer here is the optim SGD
_REFERENCE: dict[str, dict[str, Any]] = {}


@pytest.mark.parametrize("precision", ["bf16-mixed", pytest.param("16-mixed", marks=pytest.mark.slow)])
@pytest.mark.parametrize("name", sorted(CASES))
def test_manual_step_under_mixed_precision_matches_32_bit(name: str, precision: str, teacher: Path) -> None:
    if name not in _REFERENCE:
        _REFERENCE[name] = _one_step(name, "32-true", teacher, "sgd")
    ref = _REFERENCE[name]
    mixed = _one_step(name, precision, teacher, "sgd")
    half = torch.bfloat16 if precision == "bf16-mixed" else torch.float16
    # autocast reaches the manual step on one device (Fabric alone enters it only for a DDP-wrapped module)
    assert ref["dtypes"] == {torch.float32} and half in mixed["dtypes"]
    assert abs(mixed["loss"] - ref["loss"]) <= LOSS_TOLERANCE * abs(ref["loss"])
    for key, update in ref["update"].items():
        assert float(update.norm()) > 0, key  # the 32-bit step moved these parameters
        tolerance = UPDATE_TOLERANCE["adam" if key in ADAM_OPTIMIZERS else "sgd"]
        assert _relative(mixed["update"][key], update) <= tolerance, key
    scaler = mixed["fabric"].strategy.precision.scaler
    if scaler is not None:  # every optimizer step went through the scaler (none skipped, the scale kept)
        assert int(scaler._growth_tracker) == len(ref["update"]) and scaler.get_scale() == 64.0


class _Linear(Method):
    """A one-layer method for the helper's own checks."""

    automatic_optimization = False

    def __init__(self) -> None:
        torch.nn.Module.__init__(self)
        self.layer = torch.nn.Linear(4, 3)

    def configure_optimizers(self, build_optimizer: Any) -> dict[str, torch.optim.Optimizer]:
        return {"main": torch.optim.SGD(self.layer.parameters(), lr=1.0)}


def _linear_step(precision: str, scale: float, clip: float | None, own_clip: float | None) -> tuple[Any, Any]:
    torch.manual_seed(0)
    method = _Linear()
    fabric = _fabric(precision, scale)
    module = fabric.setup_module(method)
    optimizer = fabric.setup_optimizers(method.configure_optimizers(None)["main"])
    helper = FabricStepHelper(fabric, module, clip, {"main": optimizer})
    before = method.layer.weight.detach().clone()
    with fabric.autocast():
        loss = (method.layer(torch.full((2, 4), 3.0)) ** 2).sum()
    helper.backward(loss)
    if own_clip is not None:  # a method's own clipping (Mugs' per-parameter clip) on unscaled gradients
        helper.unscale_gradients(optimizer)
        torch.nn.utils.clip_grad_norm_(method.layer.parameters(), own_clip)
    helper.step(optimizer)
    return method.layer.weight.detach() - before, fabric


@pytest.mark.parametrize("clip,own_clip", [(None, None), (0.5, None), (None, 0.5), (0.5, 0.25)])
def test_helper_clips_unscaled_gradients_through_the_scaler(clip: float | None, own_clip: float | None) -> None:
    ref, _ = _linear_step("32-true", 1.0, clip, own_clip)
    update, fabric = _linear_step("16-mixed", 2.0 ** 10, clip, own_clip)
    if clip is not None or own_clip is not None:  # the clip bounds the true gradient, not the scaled one
        assert float(ref.norm()) <= min(c for c in (clip, own_clip) if c is not None) + 1e-6
    assert _relative(update, ref) < 2e-3  # float16 rounding of a 4 -> 3 linear layer
    assert fabric.strategy.precision.scaler.get_scale() == 2.0 ** 10


def test_overflowing_step_is_skipped_and_raw_optimizers_are_refused() -> None:
    update, fabric = _linear_step("16-mixed", 2.0 ** 40, None, None)  # the scaled loss overflows float16
    assert float(update.abs().max()) == 0.0 and fabric.strategy.precision.scaler.get_scale() == 2.0 ** 39
    method = _Linear()
    fabric = _fabric("bf16-mixed")
    raw = method.configure_optimizers(None)["main"]
    helper = FabricStepHelper(fabric, fabric.setup_module(method), None, {"main": fabric.setup_optimizers(raw)})
    with pytest.raises(RuntimeError, match="helper.optimizers"):
        helper.step(raw)
