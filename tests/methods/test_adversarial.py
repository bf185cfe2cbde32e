import numpy as np
import pytest
import torch

from vitlab.config import ConfigError, RunConfig, load_config
from vitlab.engine.schedules import restarting_ema_decay as score_ema_decay
from vitlab.methods.adversarial import PGDAT, TRADES, PGDATConfig, TRADESConfig
from vitlab.methods.base import DataInfo, Progress
from vitlab.methods.score import SCORE, SCOREConfig

INFO = DataInfo(num_classes=10, channels=3, img_size=8, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def _method(cls, config_cls, ema=False, **kw):
    cfg = RunConfig(method=config_cls(steps=2, **kw))
    cfg.ema.enabled = ema
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
    x_adv, _ = method.perturb(batch["image"])
    assert torch.equal(bn.running_mean, before[0]) and int(bn.num_batches_tracked) == before[1]
    assert (x_adv - batch["image"]).abs().max() <= 8 / 255 + 1e-6
    method(batch, PROGRESS)
    assert int(bn.num_batches_tracked) == before[1] + 2  # the clean and the adversarial outer passes


def test_score_uses_se_and_trades_uses_kl_objectives():
    score = _method(SCORE, SCOREConfig)
    trades = _method(TRADES, TRADESConfig)
    assert score.mcfg.distance == "se" and trades.mcfg.distance == "kl"


def _reference_ema_decay(epochs, update_steps, tau):
    """SCORE's ``watrain.py``, written as a loop: the decay ``ema_update`` uses after each optimizer step."""
    warmup_steps = 0.025 * epochs * update_steps
    out = []
    for epoch in range(1, epochs + 1):
        for update_iter in range(1, update_steps + 1):  # incremented before the update, as in WATrainer.train
            global_step = (epoch - 1) * update_steps + update_iter
            factor = int(global_step >= warmup_steps)
            delta = global_step - warmup_steps
            decay = min(tau, (1.0 + delta) / (10.0 + delta)) if 10.0 + delta != 0 else tau
            out.append(decay * factor)
    return out


@pytest.mark.parametrize("epochs,steps_per_epoch", [(400, 98), (3, 50), (4, 100), (1, 10)])
def test_ema_schedule_matches_reference_loop(epochs, steps_per_epoch):
    decay = score_ema_decay(epochs, steps_per_epoch, 0.995)
    assert decay.shape == (epochs * steps_per_epoch,)
    assert decay.tolist() == _reference_ema_decay(epochs, steps_per_epoch, 0.995)


def test_ema_schedule_values_of_the_full_recipe():
    decay = score_ema_decay(400, 98, 0.995)  # 39,200 updates, warm-up 980
    assert (decay[:979] == 0).all() and decay[979] == 0.1  # updates 1..979 copy the model; update 980 restarts at 0.1
    assert decay[980] == pytest.approx(2 / 11) and decay[-1] == 0.995
    assert np.all(np.diff(decay) >= 0)
    method = _method(SCORE, SCOREConfig, ema_schedule="score", ema=True)
    method.cfg.ema.decay = 0.995
    assert np.array_equal(method.ema_decay_schedule(39200, 98), decay)
    assert method.schedules(39200, 98) == {}


def test_score_ema_schedule_needs_the_ema():
    with pytest.raises(ConfigError, match="ema.enabled"):
        _method(SCORE, SCOREConfig, ema_schedule="score")


def test_engine_ema_follows_the_score_schedule(tmp_path, monkeypatch):
    """Three real engine updates: the averaged weights equal a hand-computed EMA of the live weights with the
    scheduled decays (0, then 1.5/10.5, 2.5/11.5: 60 planned steps, warm-up 1.5), and BN buffers are the live ones."""
    from vitlab.engine.checkpoint import load_checkpoint
    from vitlab.engine.trainer import train

    seen = []

    def record(self, progress):  # runs after each optimizer step, just before the engine's EMA update
        seen.append((progress.values["ema_decay"], {k: v.detach().clone() for k, v in self.model.named_parameters()},
                     {k: v.clone() for k, v in self.model.named_buffers()}))

    monkeypatch.setattr(SCORE, "on_optimizer_step", record)
    cfg = load_config(None, [f"out_dir={tmp_path}", "name=ema", "method.name=score", "method.ema_schedule=score",
                             "method.steps=1", "method.eval_pgd_steps=0", "model.name=test_cifar_resnet",
                             "data.name=digits", "data.img_size=8", "data.train_per_class=2", "data.batch_size=10",
                             "ema.enabled=true", "ema.decay=0.995", "train.epochs=30", "train.max_steps=3",
                             "train.progress=false", "optim.name=sgd", "optim.lr=0.1"])
    train(cfg)
    decays = [d for d, _, _ in seen]
    assert decays == score_ema_decay(30, 2, 0.995)[:3].tolist()
    assert decays == [0.0, 1.5 / 10.5, 2.5 / 11.5]
    expected = dict(seen[0][1])  # decay 0: the average is the model
    for decay, weights, _ in seen[1:]:
        expected = {k: decay * v + (1 - decay) * weights[k] for k, v in expected.items()}
    averaged = load_checkpoint(tmp_path / "ema" / "last.ckpt")["ema"]
    assert max(float((averaged[f"module.{k}"] - v).abs().max()) for k, v in expected.items()) < 1e-6
    assert any(not torch.equal(v, seen[-1][1][k]) for k, v in expected.items())  # the average is not the model
    for k, v in seen[-1][2].items():
        assert torch.equal(averaged[f"module.{k}"], v), k


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
