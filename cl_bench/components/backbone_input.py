"""Adapt any stream's model inputs to what a pretrained image backbone expects.

Scenarios hand methods *normalised* tensors in their own layout: MNIST 1x28x28 standardised with
(0.1307, 0.3081), scikit-learn digits 1x8x8 with (0.3, 0.4) on x/16, CIFAR 3x32x32 with per-channel
dataset statistics, corrupted CIFAR in [0, 1], the conformance toy 1x4x4 raw Gaussian values. A
backbone pretrained on ImageNet expects 3xSxS images normalised with *its* mean and std.
:class:`BackboneInput` undoes the stream's normalisation (back to [0, 1] pixels), repeats grey
channels, resizes to ``image_size`` and applies the backbone's normalisation, in one batched call
on the device.

References:
    Wightman, "PyTorch Image Models" (timm): ``pretrained_cfg`` ``mean`` / ``std`` / ``input_size``
    of each model; ImageNet statistics (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225) otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cl_bench.core.errors import ConfigError

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def _per_channel(values: tuple[float, ...], channels: int, what: str) -> tuple[float, ...]:
    if len(values) == channels:
        return tuple(values)
    if len(values) == 1:
        return tuple(values) * channels
    raise ConfigError(f"{what} has {len(values)} values but the images have {channels} channels; "
                      f"give one value per channel or a single value for all")  # fmt: skip


@dataclass(frozen=True)
class BackboneInput:
    """Batch transform: stream inputs -> ``(N, channels, image_size, image_size)`` backbone inputs.

    Per batch: ``x * stream_std + stream_mean`` (back to [0, 1] pixels), grey -> ``channels`` by
    repetition (or colour -> grey by averaging for one-channel backbones), bilinear resize to
    ``image_size`` (antialiased when shrinking), then ``(x - mean) / std``.

    Build it with :meth:`for_backbone` (reads the backbone's ``pretrained_cfg``) and
    :meth:`for_stream` (reads the stream's :class:`~cl_bench.core.types.Standardize`), or directly.

    Attributes:
        image_size: Side of the square images the backbone gets (None keeps the stream's size).
        mean: The backbone's per-channel normalisation mean.
        std: The backbone's per-channel normalisation std.
        channels: Input channels of the backbone.
        stream_mean: Mean the stream subtracted (undone first); one value or one per channel.
        stream_std: Std the stream divided by (undone first).
    """

    image_size: int | None = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    channels: int = 3
    stream_mean: tuple[float, ...] = (0.0,)
    stream_std: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        if self.image_size is not None and self.image_size < 1:
            raise ConfigError(f"image_size must be a positive number of pixels, got {self.image_size}")
        if self.channels not in (1, 3):
            raise ConfigError(f"backbone input channels must be 1 or 3, got {self.channels}")
        for name in ("std", "stream_std"):
            if any(s <= 0 for s in getattr(self, name)):
                raise ConfigError(f"{name} values must be positive, got {getattr(self, name)}")
        _per_channel(self.mean, self.channels, "mean")
        _per_channel(self.std, self.channels, "std")

    @classmethod
    def for_backbone(cls, model: nn.Module | None, image_size: int | None = None) -> BackboneInput:
        """The adapter for a timm ``model``: its ``pretrained_cfg`` mean/std, channels and input size.

        Args:
            model: A timm model (anything with ``pretrained_cfg``); None or a model without it
                gets the ImageNet defaults.
            image_size: Overrides the backbone's native input size (e.g. 64 px on CPU).
        """
        cfg: dict[str, Any] = dict(getattr(model, "pretrained_cfg", None) or {})
        input_size = cfg.get("input_size", (3, 224, 224))
        channels = int(input_size[0])
        mean = tuple(float(v) for v in cfg.get("mean", IMAGENET_MEAN))
        std = tuple(float(v) for v in cfg.get("std", IMAGENET_STD))
        if channels != len(mean):  # e.g. in_chans=1 models keep 3-value ImageNet stats
            mean, std = (sum(mean) / len(mean),), (sum(std) / len(std),)
        size = image_size if image_size is not None else int(input_size[-1])
        return cls(image_size=size, mean=mean, std=std, channels=channels)

    def for_stream(self, transform: Callable[[torch.Tensor], torch.Tensor] | None) -> BackboneInput:
        """A copy that undoes the stream batch ``transform`` (a ``Standardize``, or None).

        ``Standardize`` computes ``(x / scale - mean) / std``, so its inverse up to the scale gives
        [0, 1] pixels. Any other transform (or none) is taken as already giving [0, 1]-scaled values.
        """
        mean = getattr(transform, "mean", None)
        std = getattr(transform, "std", None)
        if mean is None or std is None:
            return replace(self, stream_mean=(0.0,), stream_std=(1.0,))
        return replace(self, stream_mean=tuple(float(m) for m in mean), stream_std=tuple(float(s) for s in std))

    def _view(self, values: tuple[float, ...], channels: int, x: torch.Tensor, what: str) -> torch.Tensor:
        return torch.tensor(_per_channel(values, channels, what), dtype=x.dtype, device=x.device).view(1, -1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone inputs for a batch ``x`` of shape (N, C, H, W) (or (N, H, W) / (N, D) grey)."""
        if x.dim() == 3:  # (N, H, W) grey images
            x = x.unsqueeze(1)
        elif x.dim() == 2:  # flat vectors of a square grey image
            side = int(round(x.shape[1] ** 0.5))
            if side * side != x.shape[1]:
                raise ConfigError(f"inputs of shape {tuple(x.shape[1:])} are not images; a pretrained image "
                                  f"backbone needs (C, H, W) inputs from an image stream")  # fmt: skip
            x = x.view(len(x), 1, side, side)
        if x.dim() != 4:
            raise ConfigError(f"inputs of shape {tuple(x.shape[1:])} are not images; a pretrained image backbone "
                              f"needs (C, H, W) inputs from an image stream")  # fmt: skip
        x = x.to(torch.float32)
        c = x.shape[1]
        x = x * self._view(self.stream_std, c, x, "stream std") + self._view(self.stream_mean, c, x, "stream mean")
        if c != self.channels:
            if c == 1:
                x = x.expand(-1, self.channels, -1, -1)
            elif self.channels == 1:
                x = x.mean(dim=1, keepdim=True)
            else:
                raise ConfigError(f"cannot feed {c}-channel images to a {self.channels}-channel backbone")
        if self.image_size is not None and tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            shrink = self.image_size < max(x.shape[-2:])
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False,
                              antialias=shrink)  # fmt: skip
        return (x - self._view(self.mean, self.channels, x, "mean")) / self._view(self.std, self.channels, x, "std")

    def spec(self) -> dict[str, Any]:
        """JSON-able description (part of feature-cache keys and run records)."""
        return {"image_size": self.image_size, "mean": list(self.mean), "std": list(self.std),
                "channels": self.channels, "stream_mean": list(self.stream_mean),
                "stream_std": list(self.stream_std)}  # fmt: skip


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "BackboneInput"]
