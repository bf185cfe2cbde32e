import pytest
import torch

from vitlab.attacks.apgd import apgd, apgd_checkpoints, apgd_targeted, targeted_dlr_loss
from vitlab.attacks.threat import lp_norm


def test_checkpoints_follow_the_paper():
    # p_1 = 0.22, gaps shrink by 0.03 down to 0.06 (Croce & Hein 2020, §3.2): for 100 iterations 21, 40, 56, ...
    points = apgd_checkpoints(100)
    assert points[:4] == [21, 40, 56, 69]
    gaps = [b - a for a, b in zip(points, points[1:])]
    assert min(gaps) == 6


def test_targeted_dlr_by_hand():
    z = torch.tensor([[4.0, 3.0, 1.0, 0.0, -2.0]])
    value = targeted_dlr_loss(z, torch.tensor([0]), torch.tensor([1]))
    assert value.item() == pytest.approx(-(4 - 3) / (4 - 0.5 * (1 + 0)))


@pytest.mark.parametrize("norm,eps", [("Linf", 4 / 255), ("L2", 0.25)])
def test_apgd_threat_model_and_reproducibility(tiny_setup, norm, eps):
    model, x, y = tiny_setup
    a = apgd(model, x, y, eps=eps, norm=norm, steps=10, seed=1)
    b = apgd(model, x, y, eps=eps, norm=norm, steps=10, seed=1)
    assert torch.equal(a, b)
    assert (lp_norm(a - x, norm) <= eps + 1e-6).all() and a.min() >= 0 and a.max() <= 1
    assert not model.training


def test_early_stop_does_not_change_robust_accuracy(tiny_setup):
    model, x, y = tiny_setup
    fast = apgd(model, x, y, eps=4 / 255, steps=12, seed=0, early_stop=True)
    full = apgd(model, x, y, eps=4 / 255, steps=12, seed=0, early_stop=False)
    with torch.no_grad():
        assert torch.equal(model(fast).argmax(1) == y, model(full).argmax(1) == y)


def test_matches_reference_apgd_ce_and_apgd_t(tiny_setup):
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted

    model, x, y = tiny_setup
    eps = 4 / 255
    native = apgd(model, x, y, eps=eps, steps=10, seed=0, early_stop=False, channels_last=False)
    ref = APGDAttack(model, n_iter=10, eps=eps, seed=0, n_restarts=1, device="cpu").perturb(x, y)
    # same starts, same schedule, no early stop: the same points are returned
    assert torch.allclose(native, ref, atol=1e-6)
    native_t = apgd_targeted(model, x, y, eps=eps, steps=10, target_classes=3, seed=0, early_stop=False,
                             channels_last=False)
    ref_t = APGDAttack_targeted(model, n_iter=10, eps=eps, seed=0, n_restarts=1, n_target_classes=3,
                                device="cpu").perturb(x, y)
    with torch.no_grad():
        assert torch.equal(model(native_t).argmax(1) == y, model(ref_t).argmax(1) == y)


def test_channels_last_layout_gives_the_same_outcome_and_restores_the_model(tiny_setup):
    """The NHWC attack path differs from NCHW only by float rounding: the same robust outcome, points that stay in the
    same ball (a gradient entry near 0 may change sign), and every 4-D tensor of the model back in its own layout."""
    model, x, y = tiny_setup
    for attack in (apgd, apgd_targeted):
        kwargs = {"target_classes": 3} if attack is apgd_targeted else {}
        fast = attack(model, x, y, eps=4 / 255, steps=10, seed=0, channels_last=True, **kwargs)
        plain = attack(model, x, y, eps=4 / 255, steps=10, seed=0, channels_last=False, **kwargs)
        assert fast.is_contiguous() and fast.shape == x.shape
        with torch.no_grad():
            assert torch.equal(model(fast).argmax(1) == y, model(plain).argmax(1) == y)
        assert (fast - plain).abs().max() <= 2 * 4 / 255
        assert all(t.is_contiguous() for t in model.parameters())


def test_apgd_t_rejects_too_many_targets(tiny_setup):
    model, x, y = tiny_setup
    with pytest.raises(ValueError, match="target_classes"):
        apgd_targeted(model, x, y, eps=0.01, steps=2, target_classes=10)
