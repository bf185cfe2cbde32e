"""Losses of ZeroQ / GDFQ / ClusterQ against the spec's test values (clusterq §5) and naive loops."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import vitlab.quant  # noqa: F401  (registers cifar_resnet20)
from vitlab.quant.generator import CifarGenerator, ImageNetGenerator
from vitlab.quant.losses import (
    BNStatsRecorder,
    ClassCentroids,
    aligned_layer_start,
    bn_layers,
    bns_loss,
    class_bns_loss,
    class_bns_loss_released,
    kd_loss,
    zeroq_bn_loss,
)


def test_kd_spec_values() -> None:
    s, t, y = torch.tensor([[2.0, 0.5, -1.0]]), torch.tensor([[1.0, 1.5, -0.5]]), torch.tensor([1])
    ce = F.cross_entropy(s, y)
    assert float(ce) == pytest.approx(1.741311, abs=1e-4)
    total = kd_loss(s, t, y, 20.0, 1.0, "batchmean")
    assert float(total) == pytest.approx(2.11238, abs=1e-4)
    assert float(total - ce) == pytest.approx(0.37107, abs=1e-4)
    mean = kd_loss(s, t, y, 20.0, 1.0, "mean")
    assert float(mean - ce) == pytest.approx(0.37107 / 3, abs=1e-4)
    # naive: sum_k p_t,k (log p_t,k - log p_s,k) / B
    p_t, log_p_s = F.softmax(t / 20, 1), F.log_softmax(s / 20, 1)
    naive = sum(float(p_t[0, k] * (torch.log(p_t[0, k]) - log_p_s[0, k])) for k in range(3)) * 400
    assert float(total - ce) == pytest.approx(naive, abs=1e-5)


def _bn_net() -> nn.Module:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.BatchNorm2d(5))
    return net.eval()


def test_bn_input_statistics_and_bns_loss_loop() -> None:
    torch.manual_seed(0)
    net = _bn_net()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    x = torch.randn(6, 3, 8, 8)
    net.requires_grad_(False)
    with BNStatsRecorder(net) as rec:
        net(x)
    inputs = [net[0](x), net[3](net[2](net[1](net[0](x))))]
    total = 0.0
    for s, inp, bn in zip(rec.stats, inputs, (net[1], net[4])):
        c = inp.shape[1]
        mean = [float(inp[:, k].mean()) for k in range(c)]
        var = [float(((inp[:, k] - inp[:, k].mean()) ** 2).mean()) for k in range(c)]  # biased
        assert torch.allclose(s.mean, torch.tensor(mean), atol=1e-5)
        assert torch.allclose(s.var, torch.tensor(var), atol=1e-5)
        total += sum((mean[k] - float(bn.running_mean[k])) ** 2 for k in range(c)) / c
        total += sum((var[k] - float(bn.running_var[k])) ** 2 for k in range(c)) / c
    assert float(bns_loss(rec.stats)) == pytest.approx(total / 2, rel=1e-4)  # mean over layers, not the sum


def test_bns_loss_zero_at_running_statistics() -> None:
    net = _bn_net().requires_grad_(False)
    x = torch.randn(4, 3, 8, 8)
    with BNStatsRecorder(net) as rec:
        net(x)
    for s, (_, bn) in zip(rec.stats, bn_layers(net)):
        bn.running_mean.copy_(s.mean)
        bn.running_var.copy_(s.var)
    assert float(bns_loss(rec.stats)) == pytest.approx(0.0, abs=1e-10)


def test_recorder_rejects_models_without_bn() -> None:
    with pytest.raises(ValueError, match="BatchNorm2d"):
        BNStatsRecorder(timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8))


@pytest.mark.parametrize("num_bn,start", [(20, 8), (53, 25), (21, 9)])
def test_aligned_layer_start(num_bn: int, start: int) -> None:
    assert aligned_layer_start(num_bn) == start


def test_resnet20_has_21_bn_layers() -> None:
    assert len(bn_layers(timm.create_model("cifar_resnet20"))) == 21


def _stats_and_labels():  # noqa: ANN202
    torch.manual_seed(1)
    net = _bn_net()
    x = torch.randn(8, 3, 8, 8, requires_grad=True)
    labels = torch.tensor([0, 1, 1, 2, 0, 1, 2, 2])
    rec = BNStatsRecorder(net)
    with rec:
        net(x)
    return rec.stats, labels, x


def test_class_bns_loss_naive_loop_and_zero() -> None:
    stats, labels, _ = _stats_and_labels()
    centroids = ClassCentroids(3, [4, 5])
    for c in (0, 2):  # class 1 has no centroid yet: it is skipped
        centroids.update(c, [torch.rand(4), torch.rand(5)], [torch.rand(4) + 0.5, torch.rand(5) + 0.5], 0.2)
    loss = class_bns_loss(stats, labels, centroids, diversity_weight=0.0)
    terms = []
    for c in (0, 2):
        idx = [i for i in range(8) if int(labels[i]) == c]
        for s, cm, cv in zip(stats, centroids.means(), centroids.variances()):
            # sub-batch statistics over (N_c, H, W) from the per-sample moments
            mean = torch.stack([s.sample_mean[i] for i in idx]).mean(0)
            var = torch.stack([s.sample_sq[i] for i in idx]).mean(0) - mean ** 2
            terms.append(float(((mean - cm[c]) ** 2).mean() + ((var - cv[c]) ** 2).mean()))
    assert float(loss) == pytest.approx(sum(terms) / len(terms), rel=1e-5)
    # exactly zero when each class's statistics are its centroid
    for c in (0, 2):
        subset = [s.subset(labels == c) for s in stats]
        centroids.initialized[c] = False
        centroids.update(c, [m for m, _ in subset], [v for _, v in subset], 0.2)
    assert float(class_bns_loss(stats, labels, centroids, diversity_weight=0.0)) == pytest.approx(0.0, abs=1e-10)


def test_diversity_jitter_has_gradient_constant_has_none() -> None:
    stats, labels, x = _stats_and_labels()
    centroids = ClassCentroids(3, [4, 5])
    for c in range(3):
        subset = [s.subset(labels == c) for s in stats]
        centroids.update(c, [m.detach() for m, _ in subset], [v.detach() for _, v in subset], 0.2)
    torch.manual_seed(0)
    jitter = class_bns_loss(stats, labels, centroids, diversity_weight=1.0, diversity="jitter")
    assert float(jitter) > 0  # the target moves: samples are pushed around the centroid
    (grad,) = torch.autograd.grad(jitter, x, retain_graph=True)
    assert float(grad.abs().sum()) > 0
    constant = class_bns_loss(stats, labels, centroids, diversity_weight=1.0, diversity="constant")
    (grad,) = torch.autograd.grad(constant, x, retain_graph=True)
    assert float(grad.abs().max()) < 1e-12  # released: MSE(stat, stat + noise) carries no gradient
    assert float(constant) == pytest.approx((0.03 ** 2 + 0.05 ** 2) / 3, rel=0.6)  # about U(±a)² = a²/3 per layer


def test_released_reduction_loop() -> None:
    stats, labels, _ = _stats_and_labels()
    centroids = ClassCentroids(3, [4, 5])
    for c in range(3):
        centroids.update(c, [torch.full((4,), float(c)), torch.zeros(5)], [torch.ones(4), torch.ones(5)], 0.2)
    got = class_bns_loss_released(stats, labels, centroids, diversity_weight=0.0)
    running = 0.0
    for c in labels.tolist():
        for s, cm, cv in zip(stats, centroids.means(), centroids.variances()):
            running += float(((s.mean - cm[c]) ** 2).mean() + ((s.var - cv[c]) ** 2).mean())
            running /= 2  # divided inside the layer loop, as released
    assert float(got) == pytest.approx(running, rel=1e-5)


def test_centroid_ema() -> None:
    centroids = ClassCentroids(2, [3])
    centroids.update(1, [torch.ones(3)], [torch.full((3,), 2.0)], 0.2)
    assert torch.equal(centroids.mean_0[1], torch.ones(3)) and bool(centroids.initialized[1])
    assert not bool(centroids.initialized[0])
    centroids.update(1, [torch.zeros(3)], [torch.zeros(3)], 0.2)
    assert torch.allclose(centroids.mean_0[1], torch.full((3,), 0.8))
    assert torch.allclose(centroids.var_0[1], torch.full((3,), 1.6))


def test_zeroq_loss_loop() -> None:
    torch.manual_seed(2)
    net = _bn_net()
    x = torch.randn(3, 3, 8, 8)
    with BNStatsRecorder(net) as rec:
        net(x)
    inputs = [x, net[0](x), net[3](net[2](net[1](net[0](x))))]
    expected = 0.0
    for i, inp in enumerate(inputs):
        if i == 0:
            mu_ref, sd_ref = torch.zeros(3), torch.ones(3)
        else:
            bn = (net[1], net[4])[i - 1]
            mu_ref, sd_ref = bn.running_mean, torch.sqrt(bn.running_var + 1e-6)
        for n in range(3):
            for k in range(inp.shape[1]):
                v = inp[n, k].flatten()
                mu, sd = float(v.mean()), float(torch.sqrt(v.var(unbiased=True) + 1e-6))
                expected += ((mu - float(mu_ref[k])) ** 2 + (sd - float(sd_ref[k])) ** 2) / 3
    assert float(zeroq_bn_loss(rec.stats, x)) == pytest.approx(expected, rel=1e-4)


def test_generators() -> None:
    z, y = torch.randn(4, 100), torch.tensor([0, 1, 2, 3])
    cifar = CifarGenerator(10, 32)
    out = cifar(z, y)
    assert out.shape == (4, 3, 32, 32) and cifar.init_size == 8
    assert cifar.norm1.eps == 0.8 and cifar.norm2.eps == 0.8 and not cifar.out_norm.affine
    imagenet = ImageNetGenerator(10, 32)
    assert imagenet(z, y).shape == (4, 3, 32, 32)
    assert imagenet.norm1.norm.eps == 0.8 and torch.equal(imagenet.norm1.scale.weight, torch.ones(10, 128))
    # output BN without affine: every channel has zero mean over the batch
    assert torch.allclose(out.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
