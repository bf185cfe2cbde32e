import pytest
import torch
from torch import nn


class TinyNet(nn.Module):
    """A small conv net with BatchNorm on 3x8x8 inputs, 10 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv(x)))
        return self.fc(nn.functional.avg_pool2d(h, 2).flatten(1))


@pytest.fixture
def tiny_setup():
    torch.manual_seed(0)
    model = TinyNet().eval()
    x = torch.rand(24, 3, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(1)  # every point starts correctly classified
    return model, x, y
