"""Batch-wise training augmentations on stored-form image tensors (the fast data path).

An augmentation takes a whole batch (uint8 NCHW, on any device) and a CPU
``torch.Generator``, draws every random parameter from that generator (so the
result depends only on the batch and the seed, not on the device or on global
RNG state), and returns a batch of the same form. :class:`cl_bench.core.types.TensorData`
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


@dataclass(frozen=True)
class ResizedCropFlip:
    """Random resized crop plus random horizontal flip, for a whole batch at once.

    Per sample the same distribution as torchvision's ``RandomResizedCrop(size, scale, ratio)`` followed by
    ``RandomHorizontalFlip(flip_p)`` (Szegedy et al., "Going deeper with convolutions", CVPR 2015): up to
    10 draws of an area share in ``scale`` and a log-uniform aspect ratio in ``ratio``, the first box that
    fits is used, else the central crop with the ratio clamped. Each crop is resized with
    ``F.interpolate(mode="bilinear", antialias=True)`` (uint8 stays uint8), the tensor path of torchvision's
    resize. It runs on stored-form batches (e.g. the 224 x 224 uint8 images of a file-backed dataset), not on
    the original files, and draws all random numbers for the batch from ``generator`` up front.

    Attributes:
        size: Output side (None = the input's height).
        scale: Range of the crop's share of the image area.
        ratio: Range of the crop's aspect ratio (width / height).
        flip_p: Probability of mirroring an image left-right.
    """

    size: int | None = None
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment ``x`` (N, C, H, W); boxes and flips come from ``generator``."""
        import math

        n, _, h, w = x.shape
        tries = 10
        area = h * w * (self.scale[0] + (self.scale[1] - self.scale[0]) * torch.rand(n, tries, generator=generator))
        lo, hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        ar = torch.exp(lo + (hi - lo) * torch.rand(n, tries, generator=generator))
        cw, ch = torch.sqrt(area * ar).round(), torch.sqrt(area / ar).round()
        ok = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
        first = ok.to(torch.int64).argmax(1)
        rows = torch.arange(n)
        cw, ch = cw[rows, first], ch[rows, first]
        if w / h < self.ratio[0]:
            fw, fh = w, round(w / self.ratio[0])
        elif w / h > self.ratio[1]:
            fw, fh = round(h * self.ratio[1]), h
        else:
            fw, fh = w, h
        has = ok.any(1)
        cw = torch.where(has, cw, torch.full_like(cw, fw))
        ch = torch.where(has, ch, torch.full_like(ch, fh))
        u = torch.rand(n, 2, generator=generator)
        top = torch.where(has, torch.floor(u[:, 0] * (h - ch + 1)), ((h - ch) / 2).floor())
        left = torch.where(has, torch.floor(u[:, 1] * (w - cw + 1)), ((w - cw) / 2).floor())
        flip = (torch.rand(n, generator=generator) < self.flip_p).tolist()
        size = self.size or h
        boxes = torch.stack([top, left, ch, cw], 1).to(torch.int64).tolist()
        # One resize per image: per-image crops differ in shape, and uint8 bilinear resize is fast on CPU
        # (much faster than one batched roi_align over float32).
        out = torch.empty((n, x.shape[1], size, size), dtype=x.dtype, device=x.device)
        for i, (t, left_, hh, ww) in enumerate(boxes):
            crop = x[i : i + 1, :, t : t + hh, left_ : left_ + ww]
            if not (crop.dtype.is_floating_point or (crop.dtype == torch.uint8 and crop.device.type == "cpu")):
                crop = crop.to(torch.float32)  # uint8 antialiased resize exists on CPU only
            img = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
            if img.dtype != out.dtype:
                img = img.round_().clamp_(0, 255).to(out.dtype)
            out[i] = img[0].flip(2) if flip[i] else img[0]
        return out

    def describe(self) -> str:
        """Short description for scenario specs."""
        return (f"random resized crop (scale {self.scale}, ratio ({self.ratio[0]:.3f}, {self.ratio[1]:.3f})) to "
                f"{self.size or 'input size'} + horizontal flip p={self.flip_p}")  # fmt: skip

