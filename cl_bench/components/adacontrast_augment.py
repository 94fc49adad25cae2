"""AdaContrast's views (the reference's ``transforms_adacontrast.py``), per image, on batches.

The RMT benchmark's AdaContrast (mariodoebler/test-time-adaptation, commit 8b2ed63) does not use
``get_tta_transforms``: its data loader (``datasets/data_loading.py`` l. 58-64) wraps every test image in
``get_augmentation_versions(aug_versions="twss", aug_type="moco-v2-light", res_size=n, crop_size=n)``
(n = 32 for CIFAR-10/100(-C), 224 for the pre-cropped ImageNet-C and CCC), which makes four views of each
image, in this order (``augmentations/transforms_adacontrast.py`` l. 88-105, ``NCropsTransform`` l. 9-15):

* "t", the test view: ``Resize(n)``, ``CenterCrop(n)``: the image itself (the method predicts on it);
* "w", the weak view (``"plain"``, l. 63-69): ``Resize(n)``, ``RandomCrop(n)`` (no-ops at the image's own
  size, no random draw), ``RandomHorizontalFlip()`` (p = 0.5);
* "s" twice, the query and the key view (``"moco-v2-light"``, l. 43-53): ``Resize(n)``;
  ``RandomApply([ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8)`` (brightness, contrast, saturation factors in
  [0.6, 1.4], hue shift in [-0.1, 0.1], in the order of ``torch.randperm(4)``); ``RandomGrayscale(p=0.2)``;
  ``RandomApply([GaussianBlur([0.1, 2.0])], p=0.5)`` (PIL ``ImageFilter.GaussianBlur`` with radius
  uniform in [0.1, 2.0], l. 18-27); ``RandomHorizontalFlip()``.

(Other datasets get ``"moco-v2"``, which starts with ``RandomResizedCrop(crop, scale=(0.2, 1.0))``; the
streams here are pre-sized like CIFAR-C and ImageNet-C, so the light variant is the one that applies.)

:class:`ReferenceAdaContrastAugment` does the same on a standardised batch: back to [0, 1] pixels (see
:func:`~cl_bench.components.tta_augment.pixel_space`), then, image by image as the loader does, the weak,
the first and the second strong view, each with its own random draws from the method's generator in
torchvision's order, then standardised again. Where it cannot be the reference exactly: the reference's
ops run on 8-bit PIL images (rounding after each op) and its blur is PIL's, with the radius drawn from
Python's ``random``; here everything is float, the blur is torchvision's ``gaussian_blur`` (kernel
2 * ceil(3 sigma) + 1, reflected borders) and its sigma comes from the same generator as the rest.

References:
    Chen, Wang, Darrell & Ebrahimi. "Contrastive Test-Time Adaptation". CVPR 2022.
    Code: github.com/mariodoebler/test-time-adaptation (augmentations/transforms_adacontrast.py,
    datasets/data_loading.py); github.com/DianCh/AdaContrast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torchvision.transforms.v2 import functional as TF

from cl_bench.components.tta_augment import TTAugment, _draw, make_augment, pixel_space
from cl_bench.core.types import StreamInfo

Views = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _happens(g: torch.Generator, p: float) -> bool:
    # RandomGrayscale / RandomHorizontalFlip: one torch.rand(1), applied when it is below p
    return bool(torch.rand(1, generator=g) < p)


@dataclass(frozen=True)
class ReferenceAdaContrastAugment:
    """The reference's weak and two strong AdaContrast views of a batch, per image (``aug(x, g)``).

    Attributes:
        brightness: ColorJitter brightness (factor uniform in [1 - b, 1 + b]).
        contrast: ColorJitter contrast (factor uniform in [1 - c, 1 + c]).
        saturation: ColorJitter saturation (no-op on 1-channel images, as torchvision's).
        hue: ColorJitter hue (shift uniform in [-h, h]; no-op on 1-channel images).
        jitter_p: Probability of the colour jitter (``RandomApply``, 0.8).
        grayscale_p: Probability of the grayscale conversion (0.2).
        blur_sigma: Range of the Gaussian blur's sigma.
        blur_p: Probability of the blur (``RandomApply``, 0.5).
        hflip: Probability of a horizontal flip in every view (0 disables it; the draw is still made).
        mean: Per-channel (or one) mean of the stream's standardisation.
        std: Per-channel (or one) std of the stream's standardisation.
    """

    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_p: float = 0.5
    hflip: float = 0.5
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> Views:
        """(weak, strong query, strong key) views of the standardised batch ``x`` [B, C, H, W]; draws from ``g``."""
        if x.dim() != 4:
            return x, x, x  # non-image inputs: nothing geometric or photometric applies
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        views: list[list[torch.Tensor]] = [[], [], []]
        for img in (x * std + mean).clamp(0.0, 1.0):  # per image, in the loader's order: w, s, s
            views[0].append(self.weak(img, g))
            views[1].append(self.strong(img, g))
            views[2].append(self.strong(img, g))
        w, q, k = ((torch.stack(v) - mean) / std for v in views)
        return w, q, k

    def weak(self, img: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """The ``"plain"`` view of one image [C, H, W] in [0, 1] at its own size: a random flip."""
        return TF.horizontal_flip(img) if _happens(g, self.hflip) else img

    def strong(self, img: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """The ``"moco-v2-light"`` view of one image [C, H, W] in [0, 1]."""
        if not self.jitter_p < float(torch.rand(1, generator=g)):  # RandomApply skips when p < u
            img = self.color_jitter(img, g)
        if _happens(g, self.grayscale_p):
            img = TF.rgb_to_grayscale(img, num_output_channels=img.shape[0])
        if not self.blur_p < float(torch.rand(1, generator=g)):
            img = self.blur(img, _draw(g, *self.blur_sigma))
        return self.weak(img, g)  # the same RandomHorizontalFlip closes both pipelines

    def color_jitter(self, img: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """torchvision's ColorJitter: the order, then all four factors, then the ops in that order."""
        order = torch.randperm(4, generator=g).tolist()
        b, c, s = (_draw(g, 1 - f, 1 + f) for f in (self.brightness, self.contrast, self.saturation))
        h = _draw(g, -self.hue, self.hue)
        ops = (lambda i: TF.adjust_brightness(i, b), lambda i: TF.adjust_contrast(i, c),
               lambda i: TF.adjust_saturation(i, s), lambda i: TF.adjust_hue(i, h))  # fmt: skip
        for op in order:
            img = ops[op](img)
        return img

    @staticmethod
    def blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
        """Gaussian blur of std ``sigma`` (the reference's PIL radius), kernel 2 * ceil(3 sigma) + 1.

        The kernel is shortened on images too small for its reflected border (at most 2 * (side - 1) + 1).
        """
        half = min(math.ceil(3 * sigma), min(img.shape[-2:]) - 1)
        if half < 1:
            return img
        return TF.gaussian_blur(img, [2 * half + 1, 2 * half + 1], [sigma, sigma])


@dataclass(frozen=True)
class RangeAgnosticViews:
    """AdaContrast's views on inputs with no declared pixel range: the range-agnostic :class:`TTAugment`,
    its light setting (no blur, no noise) for the weak view and its full one for both strong views.

    Attributes:
        weak: The weak view's augmentation.
        strong: The strong views' augmentation (called twice, query then key).
    """

    weak: TTAugment
    strong: TTAugment

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> Views:
        """(weak, strong query, strong key) views of ``x``; draws from ``g``."""
        return self.weak(x, g), self.strong(x, g), self.strong(x, g)


def adacontrast_augment(info: StreamInfo, flip: bool | None = None) -> ReferenceAdaContrastAugment | RangeAgnosticViews:
    """AdaContrast's weak and two strong views for the stream ``info`` describes.

    Args:
        info: The stream: its ``input_transform`` decides the variant (see
            :func:`~cl_bench.components.tta_augment.pixel_space`), its ``flip_invariant`` the flip default.
        flip: Horizontal flips with probability 0.5 in every view; None = the stream's ``flip_invariant``.

    Returns:
        :class:`ReferenceAdaContrastAugment` on images with a declared pixel range, else
        :class:`RangeAgnosticViews`.
    """
    flip_on = info.flip_invariant if flip is None else flip
    space = pixel_space(info)
    if space is None:
        return RangeAgnosticViews(make_augment(flip_on, light=True), make_augment(flip_on))
    mean, std = space
    return ReferenceAdaContrastAugment(hflip=0.5 if flip_on else 0.0, mean=mean, std=std)
