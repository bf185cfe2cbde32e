"""Relative log amplitude of feature maps (spec iformer.md section 2.6): the behaviour checks of section 5.3."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vitlab.analysis.frequency import relative_log_amplitude


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W) images, reflect padding, radius 3 sigma."""
    radius = int(3 * sigma)
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    padded = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    rows = F.conv2d(padded, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(rows, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def test_constant_image() -> None:
    """All energy at f = 0: the curve is 0 there and strongly negative everywhere else."""
    curve = relative_log_amplitude(torch.full((2, 3, 16, 16), 0.7))
    assert curve[0] == 0
    assert torch.all(curve[1:] < -20)  # log(1e-8) - log(0.7 * 256) = -23.6


def test_blurred_image_loses_high_frequencies() -> None:
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    sharp = relative_log_amplitude(images)
    blurred = relative_log_amplitude(gaussian_blur(images, sigma=1.5))
    assert blurred[-1] < sharp[-1] - 3  # the blur removes most of the energy near f = pi
    assert torch.all(blurred[len(blurred) // 2 :] < sharp[len(sharp) // 2 :])


@pytest.mark.parametrize("height,width,length", [(16, 16, 9), (8, 12, 5), (7, 9, 4), (14, 14, 8), (1, 5, 1)])
def test_curve_length(height: int, width: int, length: int) -> None:
    assert relative_log_amplitude(torch.randn(1, 2, height, width)).shape == (length,)


def test_curve_ends_at_the_nyquist_corner_of_non_square_maps() -> None:
    """A (-1)^(i+j) checkerboard has all its energy at (pi, pi): only the last sample of the diagonal sees it."""
    rows, cols = torch.meshgrid(torch.arange(6), torch.arange(10), indexing="ij")
    checkerboard = ((-1.0) ** (rows + cols)).view(1, 1, 6, 10)
    curve = relative_log_amplitude(checkerboard)
    assert curve.shape == (4,)
    assert curve[-1] > 20  # log(60) - log(1e-8)
    assert torch.allclose(curve[:-1], torch.zeros(3), atol=1e-3)
