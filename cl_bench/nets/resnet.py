"""The CIFAR ResNets of the continual-learning literature, with the reference implementations' parameter counts.

* :func:`resnet18`: mammoth's ResNet-18 (DER, X-DER, ER-ACE): 3x3 stem at stride 1, no max-pool, [2, 2, 2, 2]
  basic blocks of 64-128-256-512 channels, 1x1 conv + BN projection shortcuts; 11,173,962 parameters for 10 classes.
* :func:`reduced_resnet18`: the same network with nf = 20 (GEM, A-GEM, ER-ACE); 1,094,750 parameters for 10 classes
  (on 32x32 inputs the 4x4 average pool leaves a 160-d embedding).
* :func:`resnet32`: PyCIL's CIFAR ResNet-32 (iCaRL, PODNet, PILOT): 16-32-64 channels, 5 basic blocks per stage,
  parameter-free option-A shortcuts (stride-2 subsampling, i.e. PyCIL's ``AvgPool2d(kernel_size=1, stride=2)``,
  then zero-padded channels); 64-d embedding;
  464,154 parameters with a 10-class linear head.

Every network exposes ``features(x)`` (input -> pooled embedding) and ``head`` (embedding -> logits), so
iCaRL-, LUCIR- and prototype-style methods can use the embedding directly.

References:
    He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition" (CVPR 2016): option-A shortcuts, Sec. 4.2.
    Lopez-Paz & Ranzato, "Gradient Episodic Memory for Continual Learning" (NeurIPS 2017):
        ``model/common.py`` ``ResNet18(nclasses, nf=20)``.
    Buzzega et al., "Dark Experience for Reply" (NeurIPS 2020), mammoth ``backbone/ResNet18.py``.
    Zhou et al., "PyCIL: a Python toolbox for class-incremental learning" (2023), ``convs/cifar_resnet.py``
        ``resnet32``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)


class BasicBlock(nn.Module):
    """Post-activation basic block with a 1x1 conv + BN projection when the shape changes (mammoth, GEM)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(c_in, c_out, stride)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = _conv3x3(c_out, c_out)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet18(nn.Module):
    """ResNet-18 for 32x32 inputs: 3x3 stem at stride 1, no max-pool, widths nf, 2nf, 4nf, 8nf.

    ``nf=64`` is mammoth's ``resnet18``; ``nf=20`` is GEM's reduced ResNet-18. The embedding is the
    global average of the last stage (mammoth's ``avg_pool2d(out, out.shape[2])``; equal to GEM's fixed
    4x4 pool on 32x32 inputs, and defined for other sizes too).
    """

    def __init__(self, n_classes: int, nf: int = 64, channels: int = 3) -> None:
        super().__init__()
        self.conv1 = _conv3x3(channels, nf)
        self.bn1 = nn.BatchNorm2d(nf)
        layers, c_in = [], nf
        for i, width in enumerate((nf, 2 * nf, 4 * nf, 8 * nf)):
            stride = 1 if i == 0 else 2
            layers.append(nn.Sequential(BasicBlock(c_in, width, stride), BasicBlock(width, width, 1)))
            c_in = width
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.feature_dim = 8 * nf
        self.head = nn.Linear(self.feature_dim, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled ``8 * nf``-dimensional embedding (input of ``head``)."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class _ShortcutA(nn.Module):
    """Option-A shortcut: keep every second pixel (PyCIL's 1x1 average pool of stride 2), zero-pad the new channels."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.pad = c_out - c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::2, ::2]
        return torch.cat([x, x.new_zeros(x.shape[0], self.pad, *x.shape[2:])], 1)


class _BlockA(nn.Module):
    """PyCIL's ``ResNetBasicblock``: conv-BN-ReLU-conv-BN, parameter-free shortcut, ReLU after the sum."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv_a = _conv3x3(c_in, c_out, stride)
        self.bn_a = nn.BatchNorm2d(c_out)
        self.conv_b = _conv3x3(c_out, c_out)
        self.bn_b = nn.BatchNorm2d(c_out)
        self.downsample: nn.Module | None = _ShortcutA(c_in, c_out) if stride != 1 or c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn_b(self.conv_b(F.relu(self.bn_a(self.conv_a(x)))))
        return F.relu((x if self.downsample is None else self.downsample(x)) + out)


class CifarResNetA(nn.Module):
    """CIFAR ResNet of depth 6n + 2 with 16-32-64 channels and option-A shortcuts (PyCIL's ``CifarResNet``)."""

    def __init__(self, n_classes: int, depth: int = 32, channels: int = 3) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2, got {depth}")
        n = (depth - 2) // 6
        self.conv_1_3x3 = _conv3x3(channels, 16)
        self.bn_1 = nn.BatchNorm2d(16)
        stages, c_in = [], 16
        for i, width in enumerate((16, 32, 64)):
            blocks = [_BlockA(c_in if j == 0 else width, width, 2 if (i > 0 and j == 0) else 1) for j in range(n)]
            stages.append(nn.Sequential(*blocks))
            c_in = width
        self.stage_1, self.stage_2, self.stage_3 = stages
        self.feature_dim = 64
        self.head = nn.Linear(self.feature_dim, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled 64-dimensional embedding (PyCIL's ``features``)."""
        out = F.relu(self.bn_1(self.conv_1_3x3(x)))
        out = self.stage_3(self.stage_2(self.stage_1(out)))
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def resnet18(n_classes: int, channels: int = 3) -> CifarResNet18:
    """Mammoth's CIFAR ResNet-18 (nf = 64)."""
    return CifarResNet18(n_classes, 64, channels)


def reduced_resnet18(n_classes: int, channels: int = 3) -> CifarResNet18:
    """GEM's reduced ResNet-18 (nf = 20)."""
    return CifarResNet18(n_classes, 20, channels)


def resnet32(n_classes: int, channels: int = 3) -> CifarResNetA:
    """PyCIL's CIFAR ResNet-32 with a linear head."""
    return CifarResNetA(n_classes, 32, channels)
