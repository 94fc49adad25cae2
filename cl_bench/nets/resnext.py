"""The CIFAR ResNeXt-29 of AugMix, as RobustBench serves it (``Hendrycks2020AugMix_ResNeXt``).

The source model of the CIFAR-100-C continual test-time adaptation benchmark (the RMT authors'
``mariodoebler/test-time-adaptation``, after CoTTA): 29 layers, three stages of three grouped
bottleneck blocks (cardinality 4, base width 32: 64/128/256 planes, each block expanding to 4x), a 3x3
stem with 64 channels, 8x8 average pooling to a 1024-d embedding. Module names follow RobustBench's
``model_zoo/architectures/resnext.py`` (``conv_1_3x3``, ``bn_1``, ``stage_k.i.conv_reduce`` ...,
``classifier``), so its released checkpoint loads key for key; like RobustBench's wrapper the network
normalises its [0, 1] input with mean 0.5 / std 0.5, held in buffers that are not saved (the released
checkpoint has none, which RobustBench tolerates by loading it non-strictly).

References:
    Xie et al., "Aggregated Residual Transformations for Deep Neural Networks" (CVPR 2017);
    Hendrycks et al., "AugMix: A Simple Data Processing Method to Improve Robustness and Uncertainty"
    (ICLR 2020); Croce et al., "RobustBench" (NeurIPS 2021 Datasets and Benchmarks),
    ``robustbench/model_zoo/cifar100.py`` ``Hendrycks2020AugMixResNeXtNet(depth=29, cardinality=4,
    base_width=32)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class _GroupedBottleneck(nn.Module):
    """1x1 reduce -> 3x3 grouped conv (``cardinality`` groups) -> 1x1 expand to ``4 * planes``, with BN."""

    def __init__(self, inplanes: int, planes: int, cardinality: int, base_width: int, stride: int) -> None:
        super().__init__()
        inner = cardinality * math.floor(planes * base_width / 64)
        out = 4 * planes
        self.conv_reduce = nn.Conv2d(inplanes, inner, 1, bias=False)
        self.bn_reduce = nn.BatchNorm2d(inner)
        self.conv_conv = nn.Conv2d(inner, inner, 3, stride=stride, padding=1, groups=cardinality, bias=False)
        self.bn = nn.BatchNorm2d(inner)
        self.conv_expand = nn.Conv2d(inner, out, 1, bias=False)
        self.bn_expand = nn.BatchNorm2d(out)
        self.downsample = (nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))
                           if stride != 1 or inplanes != out else None)  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn_reduce(self.conv_reduce(x)))
        y = F.relu(self.bn(self.conv_conv(y)))
        y = self.bn_expand(self.conv_expand(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNeXt29(nn.Module):
    """CIFAR ResNeXt-29 (cardinality 4, base width 32) with ``features`` / ``head`` (= ``classifier``)."""

    def __init__(self, n_classes: int = 100, channels: int = 3, cardinality: int = 4, base_width: int = 32) -> None:
        super().__init__()
        self.conv_1_3x3 = nn.Conv2d(channels, 64, 3, padding=1, bias=False)
        self.bn_1 = nn.BatchNorm2d(64)
        inplanes = 64
        for k, (planes, stride) in enumerate(((64, 1), (128, 2), (256, 2)), 1):
            blocks = []
            for i in range(3):  # (29 - 2) / 9 blocks per stage
                blocks.append(_GroupedBottleneck(inplanes, planes, cardinality, base_width, stride if i == 0 else 1))
                inplanes = 4 * planes
            setattr(self, f"stage_{k}", nn.Sequential(*blocks))
        self.classifier = nn.Linear(inplanes, n_classes)
        self.register_buffer("mu", torch.full((1, channels, 1, 1), 0.5), persistent=False)
        self.register_buffer("sigma", torch.full((1, channels, 1, 1), 0.5), persistent=False)
        for m in self.modules():  # the reference's initialisation (He-normal convs, unit BN, Kaiming linear)
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def head(self) -> nn.Linear:
        """The classifier, under the name the other models use."""
        return self.classifier

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled 1024-d embedding (input of ``classifier``)."""
        x = F.relu(self.bn_1(self.conv_1_3x3((x - self.mu) / self.sigma)))
        x = self.stage_3(self.stage_2(self.stage_1(x)))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


__all__ = ["ResNeXt29"]
