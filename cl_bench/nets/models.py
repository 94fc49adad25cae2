"""Small networks for the embedded and MNIST-scale streams.

The model registry (:mod:`cl_bench.nets.registry`) registers these under names; methods build their
network through it so that every method on a stream gets the same architecture from the same config fields.
"""

from __future__ import annotations

import torch
from torch import nn

from cl_bench.core.errors import ConfigError

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
    """Build ``mlp`` or ``cnn`` for inputs of ``input_shape`` (kept for callers of the old API).

    Every model exposes ``features`` (input -> embedding) and ``head``
    (embedding -> logits), which methods such as LwF or prototype heads use.
    New code calls :func:`cl_bench.nets.registry.create_model`, which knows every network.

    Raises:
        ConfigError: For an unknown name, or a CNN on non-image inputs.
    """
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(MODELS)} (--set model=mlp)")
    from cl_bench.nets.registry import create_model  # the registry imports this module

    return create_model(name, n_classes, input_shape, hidden_size=hidden_size, hidden_layers=hidden_layers)


# -- source models of test-time adaptation streams ------------------------------------------------------------
SOURCE_MODELS = ("auto", "lenet_bn", "cnn_bn", "wrn28_10", "resnext29", "resnet50")


class LeNetBN(nn.Module):
    """LeNet-5 with BatchNorm after every conv and hidden linear layer, for 1x28x28 inputs.

    The BatchNorm layers are what test-time adaptation methods re-estimate or tune.

    References:
        LeCun, Bottou, Bengio & Haffner, "Gradient-based learning applied to document recognition" (1998).
        Ioffe & Szegedy, "Batch Normalization" (ICML 2015).
    """

    def __init__(self, channels: int, n_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 6, 5, padding=2), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120), nn.BatchNorm1d(120), nn.ReLU(),
            nn.Linear(120, 84), nn.BatchNorm1d(84), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(84, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class _WRNBlock(nn.Module):
    """Pre-activation basic block; attribute names are RobustBench's (``convShortcut``, ``equalInOut``)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.equalInOut = c_in == c_out
        self.convShortcut = None if self.equalInOut else nn.Conv2d(c_in, c_out, 1, stride, 0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(pre))))
        # Without an identity path the shortcut sees the pre-activated input (Zagoruyko & Komodakis).
        return (x if self.convShortcut is None else self.convShortcut(pre)) + out


class _WRNGroup(nn.Module):
    def __init__(self, n: int, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(*[_WRNBlock(c_in if i == 0 else c_out, c_out, stride if i == 0 else 1)
                                     for i in range(n)])  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-k for 32x32 inputs, with the state-dict key names of RobustBench's ``WideResNet``.

    ``WideResNet(28, 10)`` loads RobustBench's CIFAR-10 "Standard" checkpoint (the source model of the
    continual TTA benchmarks of CoTTA and RMT); inputs are in [0, 1], without normalisation.

    References:
        Zagoruyko & Komodakis, "Wide Residual Networks" (BMVC 2016).
        Croce et al., "RobustBench: a standardized adversarial robustness benchmark" (NeurIPS 2021 D&B).
    """

    def __init__(self, depth: int = 28, widen_factor: int = 10, n_classes: int = 10, channels: int = 3) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ConfigError(f"WideResNet depth must be 6n + 4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(channels, widths[0], 3, 1, 1, bias=False)
        self.block1 = _WRNGroup(n, widths[0], widths[1], 1)
        self.block2 = _WRNGroup(n, widths[1], widths[2], 2)
        self.block3 = _WRNGroup(n, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(widths[3], n_classes)

    @property
    def head(self) -> nn.Linear:
        """The classifier (``fc``), under the name the other models use."""
        return self.fc

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled 64k-dimensional embedding (input of ``fc``)."""
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.relu(self.bn1(out)), 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def restrict_outputs(net: nn.Module, rows: tuple[int, ...]) -> nn.Module:
    """Keep only the output units ``rows`` (in that order) of ``net``'s classifier, in place.

    The classifier is ``net``'s last direct child ``nn.Linear`` (``head`` of cl_bench's networks, ``fc`` of
    torchvision's ResNet-50 and RobustBench's WideResNet). Its rows are copied into a narrower Linear, so
    ``net(x)`` equals ``full(x)[:, rows]``: the output mask that evaluates an ImageNet-1k model on the 200
    classes of ImageNet-R or ImageNet-A (Hendrycks et al.'s ``imagenet_r_mask`` / ``indices_in_1k``, the RMT
    repo's ``ImageNetXMaskingLayer``). Done on the layer rather than on the logits, predictions, every
    adaptation loss and the methods that use ``features``/``head`` separately (LAME, T3A, SHOT-IM) all see the
    masked output.

    Raises:
        ConfigError: ``net`` has no Linear classifier, or a row outside its outputs or repeated.

    References:
        Hendrycks et al., "The Many Faces of Robustness" (ICCV 2021), evaluation code ``eval.py``.
        Hendrycks et al., "Natural Adversarial Examples" (CVPR 2021), evaluation code ``eval.py``.
    """
    name = next((n for n, m in reversed(list(net.named_children())) if isinstance(m, nn.Linear)), None)
    if name is None:
        raise ConfigError(f"{type(net).__name__} has no Linear classifier among its direct children, so its "
                          f"outputs cannot be restricted to the stream's classes")  # fmt: skip
    old: nn.Linear = getattr(net, name)
    if len(set(rows)) != len(rows) or not all(0 <= r < old.out_features for r in rows):
        raise ConfigError(f"output rows must be distinct indices below {old.out_features} (the classifier's "
                          f"width), got {len(rows)} rows in {min(rows)}..{max(rows)}")  # fmt: skip
    idx = torch.tensor(rows, dtype=torch.int64)
    new = nn.Linear(old.in_features, len(rows), bias=old.bias is not None).to(old.weight.device)
    with torch.no_grad():
        new.weight.copy_(old.weight[idx])
        if old.bias is not None:
            new.bias.copy_(old.bias[idx])
    setattr(net, name, new)
    return net


def build_source_model(name: str, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    """The source network of a test-time adaptation stream (with BatchNorm layers).

    "auto" picks ``lenet_bn`` for 1x28x28 inputs and ``cnn_bn`` (:class:`SmallCNN`) otherwise;
    ``wrn28_10``, ``resnext29`` (CIFAR-100-C) and ``resnet50`` (torchvision's ResNet-50, for ImageNet-scale
    streams) are meant to load a checkpoint (training them on a CPU is impractical).

    Raises:
        ConfigError: For an unknown name or an architecture that does not fit ``input_shape``.
    """
    if name not in SOURCE_MODELS:
        raise ConfigError(f"unknown source model {name!r}; choose one of {', '.join(SOURCE_MODELS)} "
                          f"(--set scenario.source_model=lenet_bn)")  # fmt: skip
    if len(input_shape) != 3:
        raise ConfigError(f"source models take image inputs (C, H, W), got shape {input_shape}")
    if name == "auto":
        name = "lenet_bn" if tuple(input_shape[1:]) == (28, 28) else "cnn_bn"
    if name == "lenet_bn":
        if tuple(input_shape[1:]) != (28, 28):
            raise ConfigError(f"source model lenet_bn takes 28x28 inputs, got {input_shape}; use cnn_bn")
        return LeNetBN(input_shape[0], n_classes)
    if name == "wrn28_10":
        if tuple(input_shape[1:]) != (32, 32):
            raise ConfigError(f"source model wrn28_10 takes 32x32 inputs, got {input_shape}; use cnn_bn")
        return WideResNet(28, 10, n_classes, input_shape[0])
    if name == "resnext29":  # RobustBench's Hendrycks2020AugMix_ResNeXt, the CIFAR-100-C source
        from cl_bench.nets.resnext import ResNeXt29

        if tuple(input_shape[1:]) != (32, 32):
            raise ConfigError(f"source model resnext29 takes 32x32 inputs, got {input_shape}; use cnn_bn")
        return ResNeXt29(n_classes, input_shape[0])
    if name == "resnet50":  # torchvision's, so its IMAGENET1K_V1 state dict loads key for key
        from torchvision.models import resnet50

        if input_shape[0] != 3:
            raise ConfigError(f"source model resnet50 takes RGB inputs, got {input_shape}")
        return resnet50(weights=None, num_classes=n_classes)
    return SmallCNN(input_shape[0], n_classes, width=16 if input_shape[1] <= 8 else 32)
