import numpy as np
import pytest
import torch

from vitlab.config import ConfigError, RunConfig, load_config
from vitlab.methods.adversarial import PGDAT, SCORE, TRADES, PGDATConfig, SCOREConfig, TRADESConfig, score_ema_decay
from vitlab.methods.base import DataInfo, Progress

INFO = DataInfo(num_classes=10, channels=3, img_size=8, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def _method(cls, config_cls, **kw):
    cfg = RunConfig(method=config_cls(steps=2, **kw))
    cfg.model.name = "test_cifar_resnet"
    return cls(cfg, INFO)


def _batch():
    torch.manual_seed(0)
    return {"image": torch.rand(6, 3, 8, 8), "label": torch.randint(0, 10, (6,))}


PROGRESS = Progress(step=0, epoch=0, total_steps=10, steps_per_epoch=10)


@pytest.mark.parametrize("cls,config_cls,kw", [
    (SCORE, SCOREConfig, {"clip_loss": 0.3}), (TRADES, TRADESConfig, {}), (PGDAT, PGDATConfig, {}),
    (PGDAT, PGDATConfig, {"distance": "se", "clip_loss": 0.4, "attack_mode": "train"}),
    (SCORE, SCOREConfig, {"norm": "L2", "eps": "0.5"})])
def test_forward_gives_finite_loss_and_gradients(cls, config_cls, kw):
    method = _method(cls, config_cls, **kw).train()
    out = method(_batch(), PROGRESS)
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    grads = [p.grad for p in method.model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    assert method.training and method.model.training


def test_frozen_bn_attack_leaves_buffers_and_outer_pass_updates_them():
    method = _method(SCORE, SCOREConfig, attack_mode="train_frozen_bn").train()
    bn = next(m for m in method.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    batch = _batch()
    before = bn.running_mean.clone(), int(bn.num_batches_tracked)
    x_adv, _ = method.perturb(batch["image"], batch["label"])
    assert torch.equal(bn.running_mean, before[0]) and int(bn.num_batches_tracked) == before[1]
    assert (x_adv - batch["image"]).abs().max() <= 8 / 255 + 1e-6
    method(batch, PROGRESS)
    assert int(bn.num_batches_tracked) == before[1] + 2  # the clean and the adversarial outer passes


def test_score_uses_se_and_trades_uses_kl_objectives():
    score = _method(SCORE, SCOREConfig)
    trades = _method(TRADES, TRADESConfig)
    assert score.mcfg.distance == "se" and trades.mcfg.distance == "kl"


def test_ema_schedule_matches_spec():
    decay = score_ema_decay(1000, 0.995)
    assert (decay[:25] == 0).all()  # the first 2.5% of the steps: the average tracks the model
    t = np.arange(25, 1000)
    assert np.allclose(decay[25:], np.minimum(0.995, (1 + t) / (10 + t)))
    method = _method(SCORE, SCOREConfig, ema_schedule="score")
    assert method.schedules(1000, 10)["ema_decay"].shape == (1000,)


@pytest.mark.parametrize("override,key", [
    ("method.eps=abc", "method.eps"), ("method.norm=L7", "method.norm"), ("method.distance=cosine", "method.distance"),
    ("method.attack_mode=test", "method.attack_mode"), ("method.beta=-1", "method.beta"),
    ("method.extra_fraction=0.7", "method.extra_fraction")])
def test_invalid_config_values_raise(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, ["method.name=score", override])


def test_recipes_load():
    for name in ("score_digits", "trades_digits", "pgd_at_digits", "pgd_at_se_digits", "score_wrn28_10_cifar10",
                 "trades_wrn28_10_cifar10"):
        cfg = load_config(f"recipes/robust/{name}.yaml")
        assert cfg.method.name in ("score", "trades", "pgd_at")
