import pytest
import torch

from vitlab.attacks.pgd import cw_margin_loss, dlr_loss, pgd, trades_perturb
from vitlab.attacks.threat import check_norm, check_unit_range, lp_norm, model_mode, parse_eps, project


def test_parse_eps_accepts_fractions_and_numbers():
    assert parse_eps("8/255") == pytest.approx(8 / 255)
    assert parse_eps("0.031") == pytest.approx(0.031)
    assert parse_eps(0.5) == 0.5
    for bad in ("eight", "8//255", "-1", "1/0", ""):
        with pytest.raises(ValueError, match="eps"):
            parse_eps(bad)


def test_norm_names():
    assert check_norm("linf") == "Linf" and check_norm("L2") == "L2"
    with pytest.raises(ValueError, match="unknown norm"):
        check_norm("L1")


def test_inputs_outside_unit_range_are_rejected(tiny_setup):
    model, x, y = tiny_setup
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        check_unit_range(x * 2 - 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        pgd(model, (x - 0.5) / 0.25, y, eps=8 / 255)


@pytest.mark.parametrize("norm,eps", [("Linf", 8 / 255), ("L2", 0.5)])
def test_pgd_stays_in_ball_and_box_and_lowers_accuracy(tiny_setup, norm, eps):
    model, x, y = tiny_setup
    x_adv = pgd(model, x, y, eps=eps, norm=norm, steps=10, seed=0)
    assert (lp_norm(x_adv - x, norm) <= eps + 1e-6).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        assert (model(x_adv).argmax(1) == y).float().mean() < 1.0


def test_pgd_seed_reproducible_and_mode_restored(tiny_setup):
    model, x, y = tiny_setup
    model.train()
    model.fc.eval()  # a mixed state must come back exactly
    a = pgd(model, x, y, eps=8 / 255, steps=3, seed=3)
    b = pgd(model, x, y, eps=8 / 255, steps=3, seed=3)
    assert torch.equal(a, b)
    assert model.training and model.conv.training and not model.fc.training


def test_frozen_bn_mode_uses_batch_stats_without_updating_buffers(tiny_setup):
    model, x, _ = tiny_setup
    before = (model.bn.running_mean.clone(), model.bn.num_batches_tracked.clone())
    with model_mode(model, "train_frozen_bn"):
        assert model.training
        out_batch = model(x)
    assert torch.equal(model.bn.running_mean, before[0]) and torch.equal(model.bn.num_batches_tracked, before[1])
    assert model.bn.track_running_stats and not model.training
    with torch.no_grad():
        assert not torch.allclose(out_batch, model(x))  # batch statistics differ from the running ones
    with model_mode(model, "train"):
        model(x)
    assert not torch.equal(model.bn.running_mean, before[0])


def test_losses_by_hand():
    z = torch.tensor([[3.0, 1.0, 0.0, -1.0]])
    y = torch.tensor([0])
    assert cw_margin_loss(z, y).item() == pytest.approx(-2.0)
    assert dlr_loss(z, y).item() == pytest.approx(-(3 - 1) / (3 - 0))


def test_trades_perturb_objective_zero_at_start_and_increases(tiny_setup):
    model, x, _ = tiny_setup
    with torch.no_grad():
        p = model(x).softmax(1)
    se = lambda a, b: ((a - b) ** 2).sum(1)  # noqa: E731
    assert se(p, p).abs().max() == 0  # the objective is 0 at delta = 0
    gen = torch.Generator().manual_seed(0)
    for norm, eps in (("Linf", 8 / 255), ("L2", 0.5)):
        x_adv = trades_perturb(model, x, p, se, eps=eps, norm=norm, steps=5, mode="eval", generator=gen)
        assert (lp_norm(x_adv - x, norm) <= eps + 1e-6).all() and x_adv.min() >= 0 and x_adv.max() <= 1
        with torch.no_grad():
            assert se(model(x_adv).softmax(1), p).mean() > 1e-6


def test_project_l2():
    x = torch.full((2, 3, 4, 4), 0.5)
    z = x + torch.randn(2, 3, 4, 4)
    out = project(z, x, 0.3, "L2")
    assert (lp_norm(out - x, "L2") <= 0.3 + 1e-6).all()
