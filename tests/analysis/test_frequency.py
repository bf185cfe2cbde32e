"""Frequency filters and spectra (spec hat.md §2.6, §5.7; iformer.md §2.6) against naive loops; bad input."""

from __future__ import annotations

import cmath
import math

import pytest
import torch
from torch import nn

from vitlab.analysis.frequency import (
    feature_maps,
    filtered_accuracy,
    highpass,
    lowpass,
    max_radius,
    relative_log_amplitude,
)


def naive_lowpass(img: list[list[float]], radius: float) -> list[list[float]]:
    """Explicit DFT sums: keep the bins whose centred index is within ``radius`` of the DC bin."""
    n = len(img)
    out = [[0.0] * n for _ in range(n)]
    spectrum = {}
    for u in range(n):
        for v in range(n):
            spectrum[u, v] = sum(img[a][b] * cmath.exp(-2j * math.pi * (u * a + v * b) / n)
                                 for a in range(n) for b in range(n))
    for u in range(n):
        for v in range(n):
            # centred coordinates after fftshift: bin u sits at (u + n//2) % n, DC at n//2
            cu, cv = (u + n // 2) % n - n // 2, (v + n // 2) % n - n // 2
            if math.hypot(cu, cv) > radius + 1e-9:
                spectrum[u, v] = 0
    for a in range(n):
        for b in range(n):
            out[a][b] = (sum(spectrum[u, v] * cmath.exp(2j * math.pi * (u * a + v * b) / n)
                             for u in range(n) for v in range(n)) / (n * n)).real
    return out


@pytest.mark.parametrize("n", [5, 6])
@pytest.mark.parametrize("radius", [0.0, 1.0, 1.5, 2.0])
def test_lowpass_matches_explicit_dft(n: int, radius: float) -> None:
    img = torch.rand(n, n, generator=torch.Generator().manual_seed(n))
    expected = torch.tensor(naive_lowpass(img.tolist(), radius))
    assert torch.allclose(lowpass(img, radius), expected, atol=1e-5)


def test_lowpass_plus_highpass_is_identity_and_limits() -> None:
    x = torch.rand(2, 3, 8, 8)
    for r in (0, 1, 2.5, 4):
        assert torch.allclose(lowpass(x, r) + highpass(x, r), x, atol=1e-6)
    assert torch.allclose(lowpass(x, max_radius(8)), x, atol=1e-6)
    assert max_radius(8) == pytest.approx(4 * math.sqrt(2))
    assert torch.allclose(highpass(x, 0), x - x.mean(dim=(-2, -1), keepdim=True), atol=1e-6)


def test_filter_errors_name_the_setting() -> None:
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match="radius 6.0 is outside"):
        lowpass(x, 6.0)
    with pytest.raises(ValueError, match="radius -1"):
        highpass(x, -1)
    with pytest.raises(ValueError, match="square images.*8 x 6"):
        lowpass(torch.rand(1, 3, 8, 6), 1)


def naive_relative_log_amplitude(feature: torch.Tensor) -> list[float]:
    b, c, h, w = feature.shape
    n = h
    total = [[0.0] * n for _ in range(n)]
    for i in range(b):
        for j in range(c):
            spec = torch.fft.fftshift(torch.fft.fft2(feature[i, j].double()))
            for u in range(n):
                for v in range(n):
                    total[u][v] += math.log(abs(complex(spec[u, v])) + 1e-8) / (b * c)
    centre = n // 2
    curve = [total[centre - k][centre - k] for k in range(centre + 1)]
    return [v - curve[0] for v in curve]


def test_relative_log_amplitude_matches_loop() -> None:
    feature = torch.randn(2, 3, 6, 6)
    curve = relative_log_amplitude(feature)
    assert curve.shape == (4,) and curve[0] == 0
    assert torch.allclose(curve, torch.tensor(naive_relative_log_amplitude(feature), dtype=torch.float32), atol=1e-5)
    # a smooth map has less high-frequency amplitude than noise
    smooth = torch.ones(1, 1, 8, 8) + 0.01 * torch.linspace(0, 1, 8).view(1, 1, 1, 8)
    assert relative_log_amplitude(smooth)[-1] < relative_log_amplitude(torch.randn(1, 1, 8, 8))[-1]
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        relative_log_amplitude(torch.randn(3, 8, 8))


def test_feature_maps_from_forward_intermediates_and_hooks() -> None:
    import timm

    from vitlab.models.classifier import ImageClassifier

    vit = timm.create_model("vit_tiny_patch16_224", img_size=8, patch_size=2, embed_dim=16, depth=2, num_heads=2,
                            num_classes=3)
    maps = feature_maps(ImageClassifier(vit, (0.5,) * 3, (0.5,) * 3).train(), torch.rand(2, 3, 8, 8))
    assert [tuple(m.shape) for m in maps.values()] == [(2, 16, 4, 4)] * 2

    class TokenNet(nn.Module):  # no forward_intermediates: hooks on blocks, tokens with a class token
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            tokens = torch.cat([x.new_zeros(x.shape[0], 1, 4), x.flatten(2).transpose(1, 2)[..., :4]], dim=1)
            return self.blocks(tokens).mean(1)

    maps = feature_maps(TokenNet(), torch.rand(2, 4, 3, 3))
    assert list(maps) == ["blocks.0", "blocks.1"] and maps["blocks.0"].shape == (2, 4, 3, 3)
    with pytest.raises(ValueError, match="exposes no feature maps"):
        feature_maps(nn.Sequential(nn.Flatten(), nn.Linear(12, 2)), torch.rand(1, 3, 2, 2))


class _Intermediates(nn.Module):
    """Has forward_intermediates(intermediates_only=...) that raises ``error``; its blocks give (B, C, H, W) maps."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error
        self.blocks = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1))

    def forward_intermediates(self, x: torch.Tensor, intermediates_only: bool = False) -> list[torch.Tensor]:
        raise self.error

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x).mean((2, 3))


def test_feature_maps_fall_back_to_hooks_only_on_not_implemented() -> None:
    maps = feature_maps(_Intermediates(NotImplementedError("no intermediates here")), torch.rand(2, 3, 4, 4))
    assert list(maps) == ["blocks.0", "blocks.1"] and maps["blocks.1"].shape == (2, 4, 4, 4)
    with pytest.raises(RuntimeError, match="a real failure"):  # a real error is not hidden behind the fallback
        feature_maps(_Intermediates(RuntimeError("a real failure")), torch.rand(2, 3, 4, 4))


def test_filtered_accuracy_rows_and_mode() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4)).train()
    x, y = torch.rand(10, 3, 8, 8), torch.randint(0, 4, (10,))
    rows = filtered_accuracy(model, x, y, [0, 2, max_radius(8)])
    clean = 100.0 * float((model(x).argmax(-1) == y).float().mean())
    assert rows[0]["lowpass"] == pytest.approx(clean) and rows[-1]["lowpass"] == pytest.approx(clean)
    assert [r["radius"] for r in rows] == [-1, 0, 2, max_radius(8)]
    assert model.training
    with pytest.raises(ValueError, match="filtered_accuracy radii"):
        filtered_accuracy(model, x, y, [9])
