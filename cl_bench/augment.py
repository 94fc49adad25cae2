"""Batch-wise training augmentations on stored-form image tensors (the fast data path).

An augmentation takes a whole batch (uint8 NCHW, on any device) and a CPU
``torch.Generator``, draws every random parameter from that generator (so the
result depends only on the batch and the seed, not on the device or on global
RNG state), and returns a batch of the same form. :class:`cl_bench.types.TensorData`
applies it to training batches before the batch transform.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class CropFlip:
    """Random crop with zero padding plus random horizontal flip, for a whole batch at once.

    Equivalent per sample to torchvision's ``RandomCrop(size, padding=padding)``
    followed by ``RandomHorizontalFlip(flip_p)`` (the standard CIFAR training
    augmentation of He et al., 2016), but done as one gather over the padded batch.

    Attributes:
        padding: Zero padding added on every side before cropping.
        flip_p: Probability of mirroring an image left-right.
    """

    padding: int = 4
    flip_p: float = 0.5

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment ``x`` (N, C, H, W); crop offsets and flips come from ``generator``."""
        n, c, h, w = x.shape
        p = self.padding
        oy = torch.randint(0, 2 * p + 1, (n,), generator=generator)
        ox = torch.randint(0, 2 * p + 1, (n,), generator=generator)
        flip = torch.rand(n, generator=generator) < self.flip_p
        dev = x.device
        rows = (oy[:, None] + torch.arange(h)).to(dev)  # (N, H) rows of the padded image
        cols = torch.arange(w).expand(n, w)
        cols = torch.where(flip[:, None], cols.flip(1), cols)  # mirroring = reading the columns backwards
        cols = (ox[:, None] + cols).to(dev)  # (N, W)
        padded = F.pad(x, (p, p, p, p)) if p else x
        i = torch.arange(n, device=dev)[:, None, None, None]
        ch = torch.arange(c, device=dev)[None, :, None, None]
        return padded[i, ch, rows[:, None, :, None], cols[:, None, None, :]]

    def describe(self) -> str:
        """Short description for scenario specs."""
        return f"random crop (zero padding {self.padding}) + horizontal flip p={self.flip_p}"
