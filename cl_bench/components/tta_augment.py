"""The test-time augmentation of CoTTA/RMT/PSMT, on batches of normalised image tensors.

The reference (``get_tta_transforms`` in qinenergy/cotta and mariodoebler/test-time-adaptation)
works on images in [0, 1]: colour jitter (brightness 0.6-1.4, contrast 0.7-1.3, saturation 0.5-1.5,
hue +-0.06, gamma 0.7-1.3), edge padding + random affine (rotation +-15 deg, translation 1/16,
scale 0.9-1.1, bilinear) + centre crop, Gaussian blur (kernel 5, sigma 0.001-0.5), horizontal
flip (p = 0.5), Gaussian noise (std 0.005) and clipping to [0, 1]; one random draw per batch.

Here the inputs are the stream's normalised tensors of unknown range, so the colour operations
are expressed relative to each image: brightness scales around the image's per-channel minimum
(its black level), contrast around its per-channel mean, gamma acts on the image rescaled to its
own [min, max]; saturation blends with the channel mean (3-channel inputs only); hue is not
applied. Noise std and clipping use the batch's value range in place of [0, 1]. Edge padding +
affine + centre crop is a border-padded affine resampling. Flips are configurable because they
are wrong for digits (a flipped 2 is not a 2).

References:
    Wang et al. "Continual Test-Time Domain Adaptation" (CoTTA). CVPR 2022.
    Döbler et al. "Robust Mean Teacher for Continual and Gradual Test-Time Adaptation" (RMT). CVPR 2023.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


@dataclass(frozen=True)
class TTAugment:
    """One random CoTTA-style augmentation of a whole batch (``aug(x, generator)``).

    Attributes:
        brightness: Range of the brightness factor.
        contrast: Range of the contrast factor.
        saturation: Range of the saturation factor (3-channel inputs).
        gamma: Range of the gamma exponent.
        degrees: Maximum rotation in degrees.
        translate: Maximum translation as a fraction of the image size.
        scale: Range of the zoom factor.
        blur_sigma: Range of the Gaussian blur sigma (kernel 5).
        hflip: Probability of a horizontal flip (0 disables it; 0.5 in the reference).
        noise_std: Gaussian noise std as a fraction of the batch's value range.
        blur: Apply the Gaussian blur (off, with ``noise_std`` 0, for ROID/CMF's lighter augmentation:
            the reference's ``get_tta_transforms(cotta_augs=False)``).
    """

    brightness: tuple[float, float] = (0.6, 1.4)
    contrast: tuple[float, float] = (0.7, 1.3)
    saturation: tuple[float, float] = (0.5, 1.5)
    gamma: tuple[float, float] = (0.7, 1.3)
    degrees: float = 15.0
    translate: float = 1 / 16
    scale: tuple[float, float] = (0.9, 1.1)
    blur_sigma: tuple[float, float] = (0.001, 0.5)
    hflip: float = 0.5
    noise_std: float = 0.005
    blur: bool = True

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """An augmented copy of the image batch ``x`` [B, C, H, W]; draws from CPU generator ``g``."""
        if x.dim() != 4:
            return x  # non-image inputs: nothing geometric or photometric applies
        lo_b, hi_b = x.amin(), x.amax()
        dims = (2, 3)
        lo = x.amin(dims, keepdim=True)
        x = lo + (x - lo) * _uniform(g, *self.brightness)
        mean = x.mean(dims, keepdim=True)
        x = mean + (x - mean) * _uniform(g, *self.contrast)
        if x.shape[1] == 3:
            grey = x.mean(1, keepdim=True)
            x = grey + (x - grey) * _uniform(g, *self.saturation)
        lo, hi = x.amin(dims, keepdim=True), x.amax(dims, keepdim=True)
        span = (hi - lo).clamp_min(1e-8)
        x = lo + span * ((x - lo) / span).clamp(0, 1).pow(_uniform(g, *self.gamma))
        x = self._affine(x, g)
        sigma = _uniform(g, *self.blur_sigma)  # drawn even when unused, so the draw order stays the same
        if self.blur:
            x = self._blur(x, sigma)
        if float(torch.rand((), generator=g)) < self.hflip:
            x = x.flip(3)
        noise = torch.randn(x.shape, generator=g).to(x.device)
        x = x + noise * self.noise_std * float(hi_b - lo_b)
        return x.clamp(lo_b, hi_b)

    def _affine(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        angle = math.radians(_uniform(g, -self.degrees, self.degrees))
        s = _uniform(g, *self.scale)
        # translation in grid units: [-1, 1] spans the image, so a fraction t of it is 2t
        tx, ty = (2 * _uniform(g, -self.translate, self.translate) for _ in range(2))
        cos, sin = math.cos(angle) / s, math.sin(angle) / s
        theta = torch.tensor([[cos, -sin, tx], [sin, cos, ty]], dtype=x.dtype, device=x.device)
        grid = F.affine_grid(theta.expand(len(x), 2, 3), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    @staticmethod
    def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
        k = torch.arange(5, dtype=x.dtype, device=x.device) - 2
        k = torch.exp(-0.5 * (k / sigma) ** 2)
        k = k / k.sum()
        c = x.shape[1]
        pad = min(2, x.shape[2] - 1, x.shape[3] - 1)
        if pad < 2:
            return x
        x = F.pad(x, (2, 2, 2, 2), mode="reflect")
        x = F.conv2d(x, k.view(1, 1, 1, 5).expand(c, 1, 1, 5).contiguous(), groups=c)
        return F.conv2d(x, k.view(1, 1, 5, 1).expand(c, 1, 5, 1).contiguous(), groups=c)


def make_augment(flip: bool, *, light: bool = False) -> TTAugment:
    """The reference augmentation, with or without horizontal flips.

    Args:
        flip: Horizontal flips with probability 0.5.
        light: Leave out blur and noise (ROID/CMF's ``get_tta_transforms(cotta_augs=False)``).
    """
    if light:
        return TTAugment(hflip=0.5 if flip else 0.0, noise_std=0.0, blur=False)
    return TTAugment(hflip=0.5 if flip else 0.0)
