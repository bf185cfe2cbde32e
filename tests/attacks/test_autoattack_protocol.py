import pytest
import torch

from vitlab.attacks.autoattack import AutoAttackProtocol, output_range_check


@pytest.mark.parametrize("backend", ["native", "reference"])
def test_custom_cascade_is_monotone_and_in_ball(tiny_setup, backend):
    model, x, y = tiny_setup
    protocol = AutoAttackProtocol(model, norm="Linf", eps=4 / 255, version="custom", attacks=["apgd-ce", "apgd-t"],
                                  seed=0, backend=backend, batch_size=16, apgd_steps=5, n_target_classes=2)
    x_adv, report = protocol.run(x, y)
    assert report.clean_accuracy == 1.0
    assert report.per_attack["apgd-ce"] >= report.per_attack["apgd-t"]
    assert report.robust_accuracy == pytest.approx(report.per_attack["apgd-t"], abs=1 / 24 + 1e-9)
    assert report.max_perturbation <= 4 / 255 + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert not model.training


def test_native_matches_reference_cascade(tiny_setup):
    model, x, y = tiny_setup
    kwargs = dict(norm="Linf", eps=4 / 255, version="custom", attacks=["apgd-ce"], seed=0, batch_size=24,
                  apgd_steps=8)
    _, native = AutoAttackProtocol(model, backend="native", **kwargs).run(x, y)
    _, ref = AutoAttackProtocol(model, backend="reference", **kwargs).run(x, y)
    assert native.robust_accuracy == ref.robust_accuracy


def test_broken_points_stay_broken(tiny_setup):
    model, x, y = tiny_setup
    protocol = AutoAttackProtocol(model, eps=4 / 255, version="custom", attacks=["apgd-ce", "apgd-dlr"], seed=0,
                                  backend="native", apgd_steps=5)
    x_adv, report = protocol.run(x, y)
    with torch.no_grad():
        broken_after = model(x_adv).argmax(1) != y
    assert broken_after.float().mean().item() == pytest.approx(1 - report.robust_accuracy)


def test_probability_outputs_and_bad_settings_are_errors(tiny_setup):
    model, x, y = tiny_setup
    softmaxed = torch.nn.Sequential(model, torch.nn.Softmax(dim=1))
    with pytest.raises(ValueError, match="probabilities"):
        output_range_check(softmaxed, x)
    with pytest.raises(ValueError, match="unknown attack"):
        AutoAttackProtocol(model, version="custom", attacks=["deepfool"])
    with pytest.raises(ValueError, match="seed"):
        AutoAttackProtocol(model, seed=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown norm"):
        AutoAttackProtocol(model, norm="L3")
