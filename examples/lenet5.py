"""A LeNet5 for 28 x 28 grey digits, inputs in [0, 1]: the outside model of docs/api.md (any file a user brings)."""

from torch import nn


class LeNet5(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 5, padding=2)
        self.conv2 = nn.Conv2d(32, 64, 5, padding=2)
        self.linear1 = nn.Linear(7 * 7 * 64, 200)
        self.linear2 = nn.Linear(200, num_classes)
        self.pool, self.relu = nn.MaxPool2d(2), nn.ReLU()

    def forward(self, x):
        x = self.pool(self.relu(self.conv1(x)))
        x = self.pool(self.relu(self.conv2(x)))
        return self.linear2(self.relu(self.linear1(x.flatten(1))))
