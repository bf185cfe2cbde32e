"""The class-conditional generators of GDFQ (Xu et al., ECCV 2020), kept by ClusterQ (vitlab spec clusterq §2.1).

Both end in ``tanh`` and a ``BatchNorm2d(C, affine=False)``: their images live in the teacher's *normalised* input
space (zero mean, unit variance per channel over the batch). The BNs after the two inner convolutions take ``eps=0.8``:
the reference passes 0.8 as the second positional argument of ``nn.BatchNorm2d``, which is ``eps``, not momentum (an
inherited DCGAN slip). It is kept by default because it changes the generator's normalisation (spec §7.4).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitlab.errors import ConfigError

__all__ = ["CifarGenerator", "ConditionalBatchNorm2d", "ImageNetGenerator", "build_generator"]

GENERATOR_BN_EPS = 0.8  # the reference's nn.BatchNorm2d(C, 0.8): eps, not momentum


class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm without its own affine, followed by a per-class scale (init 1) and shift (init 0).

    x: (B, C, H, W), labels: (B,) -> (B, C, H, W).
    """

    def __init__(self, num_classes: int, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, eps=eps, affine=False)
        self.scale = nn.Embedding(num_classes, channels)
        self.shift = nn.Embedding(num_classes, channels)
        nn.init.ones_(self.scale.weight)
        nn.init.zeros_(self.shift.weight)

    def forward(self, x: Tensor, labels: Tensor) -> Tensor:
        out = self.norm(x)
        return out * self.scale(labels)[:, :, None, None] + self.shift(labels)[:, :, None, None]


class CifarGenerator(nn.Module):
    """GDFQ's CIFAR generator: ``z ⊙ embed(y)`` -> Linear -> 128 × (S/4)² -> BN -> up×2 -> conv 128→128 -> BN(eps .8) ->
    LeakyReLU(0.2) -> up×2 -> conv 128→64 -> BN(eps .8) -> LeakyReLU(0.2) -> conv 64→C -> tanh -> BN(C, affine=False).

    z: (B, latent_dim), labels: (B,) -> images (B, C, S, S) in normalised input space.
    """

    def __init__(self, num_classes: int, img_size: int = 32, channels: int = 3, latent_dim: int = 100,
                 bn_eps: float = GENERATOR_BN_EPS) -> None:
        super().__init__()
        if img_size % 4 != 0:
            raise ConfigError(f"CifarGenerator: img_size {img_size} must be divisible by 4 (two ×2 upsamplings)")
        self.latent_dim = latent_dim
        self.init_size = img_size // 4
        self.label_embedding = nn.Embedding(num_classes, latent_dim)
        self.project = nn.Linear(latent_dim, 128 * self.init_size ** 2)
        self.norm0 = nn.BatchNorm2d(128)
        self.conv1 = nn.Conv2d(128, 128, 3, 1, 1)
        self.norm1 = nn.BatchNorm2d(128, eps=bn_eps)
        self.conv2 = nn.Conv2d(128, 64, 3, 1, 1)
        self.norm2 = nn.BatchNorm2d(64, eps=bn_eps)
        self.to_image = nn.Conv2d(64, channels, 3, 1, 1)
        self.out_norm = nn.BatchNorm2d(channels, affine=False)

    def forward(self, z: Tensor, labels: Tensor) -> Tensor:
        x = self.project(z * self.label_embedding(labels)).view(z.shape[0], 128, self.init_size, self.init_size)
        x = F.interpolate(self.norm0(x), scale_factor=2)
        x = F.leaky_relu(self.norm1(self.conv1(x)), 0.2)
        x = F.interpolate(x, scale_factor=2)
        x = F.leaky_relu(self.norm2(self.conv2(x)), 0.2)
        return self.out_norm(torch.tanh(self.to_image(x)))


class ImageNetGenerator(nn.Module):
    """GDFQ's ImageNet generator: z -> Linear -> 128 × (S/4)² (56² at 224) -> cond-BN -> up×2 -> conv 128→128 ->
    cond-BN(eps .8) -> LeakyReLU(0.2) -> up×2 -> conv 128→64 -> cond-BN(eps .8) -> LeakyReLU(0.2) -> conv 64→C ->
    tanh -> BN(C, affine=False). Class conditioning lives only in the per-class BN scale and shift.

    z: (B, latent_dim), labels: (B,) -> images (B, C, S, S) in normalised input space.
    """

    def __init__(self, num_classes: int, img_size: int = 224, channels: int = 3, latent_dim: int = 100,
                 bn_eps: float = GENERATOR_BN_EPS) -> None:
        super().__init__()
        if img_size % 4 != 0:
            raise ConfigError(f"ImageNetGenerator: img_size {img_size} must be divisible by 4")
        self.latent_dim = latent_dim
        self.init_size = img_size // 4
        self.project = nn.Linear(latent_dim, 128 * self.init_size ** 2)
        self.norm0 = ConditionalBatchNorm2d(num_classes, 128)
        self.conv1 = nn.Conv2d(128, 128, 3, 1, 1)
        self.norm1 = ConditionalBatchNorm2d(num_classes, 128, eps=bn_eps)
        self.conv2 = nn.Conv2d(128, 64, 3, 1, 1)
        self.norm2 = ConditionalBatchNorm2d(num_classes, 64, eps=bn_eps)
        self.to_image = nn.Conv2d(64, channels, 3, 1, 1)
        self.out_norm = nn.BatchNorm2d(channels, affine=False)

    def forward(self, z: Tensor, labels: Tensor) -> Tensor:
        x = self.project(z).view(z.shape[0], 128, self.init_size, self.init_size)
        x = F.interpolate(self.norm0(x, labels), scale_factor=2)
        x = F.leaky_relu(self.norm1(self.conv1(x), labels), 0.2)
        x = F.interpolate(x, scale_factor=2)
        x = F.leaky_relu(self.norm2(self.conv2(x), labels), 0.2)
        return self.out_norm(torch.tanh(self.to_image(x)))



def build_generator(kind: str, num_classes: int, img_size: int, channels: int, latent_dim: int = 100,
                    bn_eps: float = GENERATOR_BN_EPS) -> nn.Module:
    """``kind``: ``cifar``, ``imagenet``, or ``auto`` (ImageNet generator for images of 64 px and more)."""
    if kind == "auto":
        kind = "imagenet" if img_size >= 64 else "cifar"
    if kind == "cifar":
        return CifarGenerator(num_classes, img_size, channels, latent_dim, bn_eps)
    if kind == "imagenet":
        return ImageNetGenerator(num_classes, img_size, channels, latent_dim, bn_eps)
    raise ConfigError(f"method.generator: got {kind!r}, expected auto, cifar or imagenet")
