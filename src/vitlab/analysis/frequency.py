"""Frequency analysis of any image model: low/high-pass filtered accuracy and Fourier spectra of feature maps.

* Filters (vitlab spec ``hat.md`` §2.6): per-channel 2-D DFT, centred with ``fftshift``; the low-pass image keeps the
  frequencies within a circle of radius ``r`` (in frequency bins, i.e. pixels of the centred spectrum, measured from
  the DC bin); the high-pass image is the complement ``x - lowpass(x, r)``. Filtered [0, 1] images are not clamped:
  the model's own normalisation sees them as they are.
* Relative log amplitude (vitlab spec ``iformer.md`` §2.6, after Park & Kim, "How Do Vision Transformers Work?",
  ICLR 2022): log |FFT| of a feature map averaged over channels and images, sampled along the diagonal of the centred
  spectrum from f = 0 to f = π, minus its value at f = 0.
* Feature maps come from ``forward_intermediates`` (timm's API) when the model has it, otherwise from forward hooks
  on the children of its ``blocks`` / ``stages`` / ``layers``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from vitlab.errors import ConfigError

#: radii of the small-scale plan (spec hat.md §6) for 32x32 inputs; larger ones are dropped for smaller images
DEFAULT_RADII: tuple[float, ...] = (1, 2, 4, 6, 8, 12, 16)

__all__ = [
    "DEFAULT_RADII",
    "feature_maps",
    "filtered_accuracy",
    "frequency_radius",
    "highpass",
    "lowpass",
    "max_radius",
    "plot_filtered_accuracy",
    "plot_spectra",
    "relative_log_amplitude",
    "spectra",
]


# ---- filters -----------------------------------------------------------------------------------------------------

class NoFeatureMapsError(ConfigError):
    """The model shows no feature map to take a spectrum of (e.g. a plain CNN module without timm's feature API)."""

def _check_square(x: Tensor, name: str) -> None:
    if x.dim() < 2:
        raise ValueError(f"{name}: expected a tensor (..., H, W), got shape {tuple(x.shape)}")
    if x.shape[-1] != x.shape[-2]:
        raise ConfigError(f"{name}: the frequency filters need square images, got H x W = "
                          f"{x.shape[-2]} x {x.shape[-1]} (resize or crop to a square first, e.g. data.img_size)")


def frequency_radius(size: int, device: torch.device | None = None) -> Tensor:
    """Distance of every bin of a centred (fftshift-ed) size x size spectrum from the DC bin. -> (size, size)."""
    centre = size // 2  # fftshift puts the DC term at index size // 2 (even and odd sizes)
    coords = torch.arange(size, device=device, dtype=torch.float64) - centre
    return torch.sqrt(coords[:, None] ** 2 + coords[None, :] ** 2)


def max_radius(size: int) -> float:
    """The largest radius of a size x size centred spectrum (the corner bin); low-pass at it is the identity."""
    return float(frequency_radius(size).max())


def _check_radius(radius: float, size: int, name: str) -> None:
    limit = max_radius(size)
    if not (math.isfinite(radius) and 0 <= radius <= limit + 1e-9):
        raise ConfigError(f"{name}: radius {radius} is outside the {size}x{size} spectrum "
                          f"(expected 0 <= r <= {limit:.3f}, the distance from the DC bin to the corner)")


def lowpass(x: Tensor, radius: float) -> Tensor:
    """Keep the frequencies within ``radius`` of the DC bin (circular hard mask), per channel. x: (..., N, N) real.

    Returns a real tensor of x's shape and dtype. ``radius`` >= :func:`max_radius` returns x (to float tolerance).
    """
    _check_square(x, "lowpass")
    size = x.shape[-1]
    _check_radius(radius, size, "lowpass")
    spectrum = torch.fft.fftshift(torch.fft.fft2(x.to(torch.float64)), dim=(-2, -1))
    mask = frequency_radius(size, x.device) <= radius + 1e-9
    kept = torch.fft.ifft2(torch.fft.ifftshift(spectrum * mask, dim=(-2, -1)))
    # For even N the Nyquist row/column has no mirror bin inside the circle, so the result can carry a tiny
    # imaginary part; the filtered image is its real part (and highpass = x - lowpass stays exact).
    return kept.real.to(x.dtype)


def highpass(x: Tensor, radius: float) -> Tensor:
    """``x - lowpass(x, radius)``: the frequencies outside the circle. radius 0 removes only the per-channel mean."""
    _check_square(x, "highpass")
    _check_radius(radius, x.shape[-1], "highpass")
    return x - lowpass(x, radius)


@torch.no_grad()
def filtered_accuracy(model: nn.Module, images: Tensor, labels: Tensor, radii: Sequence[float] | None = None,
                      batch_size: int = 256) -> list[dict[str, float]]:
    """Top-1 (%) of ``model`` on low-pass and high-pass filtered images for each radius (spec hat.md §2.6).

    images: (N, C, H, W) in [0, 1], square; labels: (N,). The model runs in eval mode; its mode is restored.
    Returns rows ``{"radius", "lowpass", "highpass"}`` and a first row with radius -1 holding the clean accuracy
    in both columns (so a CSV of the rows is self-contained).
    """
    _check_square(images, "filtered_accuracy images")
    size = images.shape[-1]
    radii = default_radii(size) if radii is None else list(radii)
    for r in radii:
        _check_radius(float(r), size, "filtered_accuracy radii")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()

    def accuracy_of(transform: Any) -> float:
        correct = 0
        for i in range(0, images.shape[0], batch_size):
            xb = transform(images[i:i + batch_size].to(device))
            correct += int((model(xb).argmax(-1).cpu() == labels[i:i + batch_size]).sum())
        return 100.0 * correct / max(images.shape[0], 1)

    try:
        clean = accuracy_of(lambda t: t)
        rows = [{"radius": -1.0, "lowpass": clean, "highpass": clean}]
        for r in radii:
            rows.append({"radius": float(r), "lowpass": accuracy_of(lambda t, r=r: lowpass(t, float(r))),
                         "highpass": accuracy_of(lambda t, r=r: highpass(t, float(r)))})
    finally:
        model.train(was_training)
    return rows


def default_radii(size: int) -> list[float]:
    """:data:`DEFAULT_RADII` that fit a size x size spectrum (all of them from 23 x 23 up)."""
    limit = max_radius(size)
    return [float(r) for r in DEFAULT_RADII if r <= limit]


# ---- spectra of feature maps -------------------------------------------------------------------------------------
def relative_log_amplitude(feature: Tensor) -> Tensor:
    """Relative log amplitude of a feature map along the diagonal of its centred spectrum (spec iformer.md §2.6).

    feature: (B, C, H, W). Steps: per-channel 2-D FFT, fftshift, log(|F| + 1e-8), mean over B and C, sample the
    diagonal from the centre (f = 0) to the corner (f = π), subtract the value at f = 0.
    Returns (n,) with n = min(H, W) // 2 + 1; element k is at frequency π·k/(n-1) (element 0 is 0).
    """
    if feature.dim() != 4:
        raise ValueError(f"relative_log_amplitude: expected a feature map (B, C, H, W), got shape "
                         f"{tuple(feature.shape)}")
    height, width = feature.shape[-2:]
    spectrum = torch.fft.fftshift(torch.fft.fft2(feature.detach().to(torch.float64)), dim=(-2, -1))
    log_amp = torch.log(spectrum.abs() + 1e-8).mean(dim=(0, 1))  # (H, W)
    centre_h, centre_w = height // 2, width // 2
    n = min(height, width) // 2 + 1
    t = torch.linspace(0.0, 1.0, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)
    rows = centre_h - torch.round(t * centre_h).long()
    cols = centre_w - torch.round(t * centre_w).long()
    curve = log_amp[rows, cols]
    return (curve - curve[0]).to(torch.float32)


def _tokens_to_map(tokens: Tensor, name: str) -> Tensor | None:
    """(B, N, C) tokens -> (B, C, s, s) when the last s² tokens form a square grid (prefix tokens dropped)."""
    num = tokens.shape[1]
    for prefix in range(0, min(num, 9)):  # class / distillation / register tokens come first
        side = math.isqrt(num - prefix)
        if side > 1 and side * side == num - prefix:
            grid = tokens[:, prefix:, :]
            return grid.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], side, side)
    return None


def _as_feature_map(value: Any, name: str) -> Tensor | None:
    if isinstance(value, (tuple, list)) and value and torch.is_tensor(value[0]):
        value = value[0]
    if not torch.is_tensor(value):
        return None
    if value.dim() == 4 and value.shape[-1] > 1 and value.shape[-2] > 1:
        return value
    if value.dim() == 3:
        return _tokens_to_map(value, name)
    return None


def _unwrap(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(input normaliser or Identity, backbone) of an :class:`~vitlab.models.ImageClassifier` or a bare model."""
    normalize = getattr(model, "normalize", None)
    inner = getattr(model, "model", None)
    if isinstance(normalize, nn.Module) and isinstance(inner, nn.Module):
        return normalize, inner
    return nn.Identity(), model


def _hook_targets(backbone: nn.Module) -> list[tuple[str, nn.Module]]:
    for attr in ("blocks", "stages", "layers", "features"):
        container = getattr(backbone, attr, None)
        if isinstance(container, (nn.Sequential, nn.ModuleList)) and len(container) > 0:
            return [(f"{attr}.{i}", m) for i, m in enumerate(container)]
    # ResNet-style models name their stages layer1..layer4
    named = [(n, m) for n, m in backbone.named_children() if n.startswith("layer") and n[5:].isdigit()]
    return named


@contextmanager
def _captured(modules: list[tuple[str, nn.Module]]) -> Iterator[dict[str, Any]]:
    outputs: dict[str, Any] = {}
    handles = [m.register_forward_hook(lambda _m, _i, out, name=name: outputs.__setitem__(name, out))
               for name, m in modules]
    try:
        yield outputs
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def feature_maps(model: nn.Module, x: Tensor) -> dict[str, Tensor]:
    """Per-layer feature maps (B, C, H, W) of ``model`` on x (B, C, H, W) in [0, 1], in network order.

    Uses ``forward_intermediates(..., intermediates_only=True)`` (timm API) when the backbone has it, else forward
    hooks on its blocks / stages. Token outputs are reshaped to their grid (prefix tokens dropped). Raises ValueError
    when no square-grid feature map can be reached. The model runs in eval mode; its mode is restored.
    """
    normalize, backbone = _unwrap(model)
    was_training = model.training
    model.eval()
    try:
        xn = normalize(x)
        maps: dict[str, Tensor] = {}
        fn = getattr(backbone, "forward_intermediates", None)
        if callable(fn) and "intermediates_only" in inspect.signature(fn).parameters:
            try:
                outs = fn(xn, intermediates_only=True)
            except NotImplementedError:  # timm's signal that this configuration has no intermediates: use hooks
                outs = None
            if isinstance(outs, (list, tuple)):
                for i, out in enumerate(outs):
                    fmap = _as_feature_map(out, f"intermediate {i}")
                    if fmap is not None:
                        maps[f"layer{i}"] = fmap
        if not maps:
            targets = _hook_targets(backbone)
            with _captured(targets) as captured:
                backbone(xn)
            for name, _ in targets:
                fmap = _as_feature_map(captured.get(name), name)
                if fmap is not None:
                    maps[name] = fmap
    finally:
        model.train(was_training)
    if not maps:
        raise NoFeatureMapsError(f"feature spectrum: model {type(backbone).__name__} exposes no feature maps "
                                 "(it has neither forward_intermediates nor blocks/stages/layers whose "
                                 "outputs are (B, C, H, W) maps or square-grid tokens)")
    return maps


def spectra(model: nn.Module, x: Tensor) -> dict[str, Tensor]:
    """Relative log amplitude curves: ``input`` (x itself) and every layer of :func:`feature_maps`. -> name: (n,)."""
    out = {"input": relative_log_amplitude(x)}
    for name, fmap in feature_maps(model, x).items():
        out[name] = relative_log_amplitude(fmap)
    return out


# ---- plots -------------------------------------------------------------------------------------------------------
def plot_filtered_accuracy(curves: dict[str, list[dict[str, float]]], path: Any, title: str = "") -> None:
    """Top-1 against radius, low-pass (solid) and high-pass (dashed), one colour per model. curves: label -> rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for i, (label, rows) in enumerate(curves.items()):
        colour = f"C{i}"
        pts = [r for r in rows if r["radius"] >= 0]
        radii = [r["radius"] for r in pts]
        ax.plot(radii, [r["lowpass"] for r in pts], "o-", color=colour, label=f"{label} low-pass")
        ax.plot(radii, [r["highpass"] for r in pts], "s--", color=colour, label=f"{label} high-pass")
    ax.set_xlabel("filter radius r (frequency bins from DC)")
    ax.set_ylabel("top-1 (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_spectra(curves: dict[str, Tensor], path: Any, title: str = "") -> None:
    """Relative log amplitude against normalised frequency (0 to π), one line per layer (darker = deeper); the input
    dotted and a perturbation (names starting with ``delta``) dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    layers = [k for k in curves if k != "input" and not k.startswith("delta")]
    cmap = plt.get_cmap("viridis")
    for name, curve in curves.items():
        freq = torch.linspace(0, 1, len(curve)) if len(curve) > 1 else torch.zeros(1)
        if name == "input":
            ax.plot(freq, curve, "k:", label="input")
        elif name.startswith("delta"):
            ax.plot(freq, curve, "r--", label=name)
        else:
            shade = cmap(layers.index(name) / max(len(layers) - 1, 1))
            ax.plot(freq, curve, "-", color=shade, label=name)
    ax.set_xlabel("frequency (× π)")
    ax.set_ylabel("Δ log amplitude")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
