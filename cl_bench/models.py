"""Small networks for the embedded and MNIST-scale streams.

Methods build their network through :func:`build_model` so that every method
on a stream gets the same architecture from the same config fields.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .errors import ConfigError

MODELS = ("mlp", "cnn")


class MLP(nn.Module):
    """Fully connected ReLU network on flattened inputs (De Lange et al. use 2x400 on MNIST)."""

    def __init__(self, in_features: int, n_classes: int, hidden_size: int, hidden_layers: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for _ in range(hidden_layers):
            layers += [nn.Linear(width, hidden_size), nn.ReLU()]
            width = hidden_size
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class SmallCNN(nn.Module):
    """Two conv blocks and a linear head, for images of any size >= 8x8."""

    def __init__(self, channels: int, n_classes: int, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(2 * width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_model(
    name: str, input_shape: tuple[int, ...], n_classes: int, hidden_size: int = 400, hidden_layers: int = 2
) -> nn.Module:
    """Build one of :data:`MODELS` for inputs of ``input_shape``.

    Every model exposes ``features`` (input -> embedding) and ``head``
    (embedding -> logits), which methods such as LwF or prototype heads use.

    Raises:
        ConfigError: For an unknown name, or a CNN on non-image inputs.
    """
    if name == "mlp":
        return MLP(math.prod(input_shape), n_classes, hidden_size, hidden_layers)
    if name == "cnn":
        if len(input_shape) != 3:
            raise ConfigError(f"model 'cnn' needs image inputs (C, H, W), got shape {input_shape}; use model=mlp")
        return SmallCNN(input_shape[0], n_classes, width=max(8, hidden_size // 8))
    raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(MODELS)} (--set model=mlp)")
