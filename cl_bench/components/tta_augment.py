"""The test-time augmentation of CoTTA/RMT/PSMT/RoTTA/ROID/CMF (the reference's ``get_tta_transforms``), on batches.

Two variants, chosen from what the stream declares about its inputs (:func:`stream_augment`):

* :class:`ReferenceTTAugment`, the reference transform exactly, on images in [0, 1]. It is used whenever
  the stream's batch transform is a :class:`~cl_bench.core.types.Standardize` (every image stream here:
  CIFAR-10-C, MNIST, digits, the generated corruption streams, ImageNet-C, folders), which defines the
  pixels as ``stored / scale`` in [0, 1]: the batch is de-standardised to pixels, augmented, and
  standardised again, so the model sees what the reference's model (normalisation inside it) sees.
* :class:`TTAugment`, a range-agnostic approximation, only for inputs with no declared pixel range
  (no ``Standardize``, e.g. the conformance stream's raw Gaussian values): colour operations relative
  to each image's own range, no hue, border-padded affine resampling, noise and clipping relative to
  the batch's range.

The reference (mariodoebler/test-time-adaptation ``classification/augmentations/transforms_cotta.py``
``get_tta_transforms``, lines 133-166, used by ``methods/cotta.py`` l. 41, ``methods/rmt.py`` l. 51 and
``methods/rotta.py`` l. 41, and by ``methods/roid.py`` l. 33 and ``methods/cmf.py`` l. 59 with reflect padding;
the same function as qinenergy/cotta's) is, on the whole batch with one random draw per call:
``Clip(0, 1)``; ``ColorJitterPro`` (l. 84-121: brightness, contrast, saturation, hue, gamma in the order
of ``torch.randperm(5)``, each a torchvision ``adjust_*`` that clamps to [0, 1], gamma after clamping to
[1e-8, 1]); ``Pad(int(n / 2), edge)``; ``RandomAffine`` (degrees, translate 1/16 of the padded size,
rounded to whole pixels, scale, bilinear); ``GaussianBlur(5, sigma)``; ``CenterCrop(n)``;
``RandomHorizontalFlip(0.5)``; ``GaussianNoise(0, 0.005)``; ``Clip(0, 1)``. Hard parameter set (the one
every method calls): brightness 0.6-1.4, contrast 0.7-1.3, saturation 0.5-1.5, hue +-0.06, gamma
0.7-1.3, rotation +-15 deg, scale 0.9-1.1, blur sigma 0.001-0.5; soft set (``soft=True``, l. 139-156):
0.8-1.2, 0.85-1.15, 0.75-1.25, +-0.03, 0.85-1.15, +-8 deg, 0.95-1.05, 0.001-0.25. ``padding_mode="reflect"`` pads by
reflection; ``cotta_augs=False`` (ROID/CMF, with reflect padding) drops blur and noise (l. 155-164).

Flips are on when the stream declares its images flip-invariant (``StreamInfo.flip_invariant``): a
mirrored digit is another digit.

References:
    Wang et al. "Continual Test-Time Domain Adaptation" (CoTTA). CVPR 2022.
    Döbler et al. "Robust Mean Teacher for Continual and Gradual Test-Time Adaptation" (RMT). CVPR 2023.
    Code: github.com/mariodoebler/test-time-adaptation (augmentations/transforms_cotta.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from cl_bench.core.types import Standardize, StreamInfo


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


@dataclass(frozen=True)
class TTAugment:
    """Range-agnostic CoTTA-style augmentation of a whole batch (``aug(x, generator)``), for inputs with no
    declared pixel range (see the module docstring; images use :class:`ReferenceTTAugment`).

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
        blur: Apply the Gaussian blur (off, with ``noise_std`` 0, for the lighter augmentation: the
            reference's ``get_tta_transforms(cotta_augs=False)``).
        padding_mode: How the affine resampling fills outside the image: "border" (the reference's edge
            padding) or "reflection" (its ``padding_mode="reflect"``).
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
    padding_mode: str = "border"

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
        return F.grid_sample(x, grid, mode="bilinear", padding_mode=self.padding_mode, align_corners=False)

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


def make_augment(flip: bool, *, light: bool = False, padding_mode: str = "border") -> TTAugment:
    """The range-agnostic augmentation, with or without horizontal flips.

    Args:
        flip: Horizontal flips with probability 0.5.
        light: Leave out blur and noise (the reference's ``get_tta_transforms(cotta_augs=False)``).
        padding_mode: The affine resampling's fill, "border" or "reflection" (see :class:`TTAugment`).
    """
    dropped = {"noise_std": 0.0, "blur": False} if light else {}
    return TTAugment(hflip=0.5 if flip else 0.0, padding_mode=padding_mode, **dropped)  # type: ignore[arg-type]


def _draw(g: torch.Generator, lo: float, hi: float) -> float:
    # torch.tensor(1.0).uniform_ is how ColorJitterPro and torchvision's get_params draw: the same
    # number of values from the same stream, so a seeded generator reproduces the reference's draws.
    return torch.tensor(1.0).uniform_(lo, hi, generator=g).item()


@dataclass(frozen=True)
class ReferenceTTAugment:
    """The reference ``get_tta_transforms`` on a batch of images, one random draw per call (``aug(x, g)``).

    The transform works on pixels in [0, 1]; ``mean``/``std`` say how the model inputs were standardised
    from them (``x = (pixels - mean) / std``), so a call maps back to pixels, augments, and standardises
    again. Random numbers come from ``g`` in the reference's order (``torch.randperm(5)`` for the colour
    order, then one ``uniform_`` per colour factor, angle, x and y translation, scale, blur sigma, one
    ``torch.rand(1)`` for the flip, then the noise), so under the same seed it equals the reference
    pipeline run on torchvision's global generator. Colour, pad, affine, blur, crop and flip are
    torchvision.transforms.v2 functional ops (the same ops as the v1 classes the reference composes).

    Attributes:
        brightness: Range of the brightness factor.
        contrast: Range of the contrast factor.
        saturation: Range of the saturation factor (no-op on 1-channel images, as torchvision's).
        hue: Range of the hue shift (no-op on 1-channel images).
        gamma: Range of the gamma exponent.
        degrees: Maximum rotation in degrees.
        translate: Maximum translation as a fraction of the padded image's side (whole pixels).
        scale: Range of the zoom factor.
        blur_sigma: Range of the Gaussian blur sigma (kernel 5); None = no blur (``cotta_augs=False``).
        hflip: Probability of a horizontal flip (0 disables it; the draw is still made).
        noise_std: Std of the additive Gaussian noise, in pixel units (0 = none, ``cotta_augs=False``).
        padding_mode: "edge" (CoTTA/RMT/PSMT/RoTTA) or "reflect" (ROID/CMF).
        mean: Per-channel (or one) mean of the stream's standardisation.
        std: Per-channel (or one) std of the stream's standardisation.
    """

    brightness: tuple[float, float] = (0.6, 1.4)
    contrast: tuple[float, float] = (0.7, 1.3)
    saturation: tuple[float, float] = (0.5, 1.5)
    hue: tuple[float, float] = (-0.06, 0.06)
    gamma: tuple[float, float] = (0.7, 1.3)
    degrees: float = 15.0
    translate: float = 1 / 16
    scale: tuple[float, float] = (0.9, 1.1)
    blur_sigma: tuple[float, float] | None = (0.001, 0.5)
    hflip: float = 0.5
    noise_std: float = 0.005
    padding_mode: str = "edge"
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    @classmethod
    def soft(cls, **kwargs: object) -> ReferenceTTAugment:
        """The reference's ``soft=True`` parameter set (transforms_cotta.py l. 139-156)."""
        return cls(**{"brightness": (0.8, 1.2), "contrast": (0.85, 1.15), "saturation": (0.75, 1.25),  # type: ignore[arg-type]
                      "hue": (-0.03, 0.03), "gamma": (0.85, 1.15), "degrees": 8.0, "scale": (0.95, 1.05),
                      "blur_sigma": (0.001, 0.25), **kwargs})  # fmt: skip

    def _view(self, values: tuple[float, ...], x: torch.Tensor) -> torch.Tensor:
        return torch.tensor(values, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """An augmented copy of the standardised image batch ``x`` [B, C, H, W]; draws from CPU generator ``g``."""
        if x.dim() != 4:
            return x  # non-image inputs: nothing geometric or photometric applies
        mean, std = self._view(self.mean, x), self._view(self.std, x)
        return (self.pixels(x * std + mean, g) - mean) / std

    def pixels(self, img: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """The reference transform on pixels ``img`` [B, C, H, W] (clipped to [0, 1] first, as the reference)."""
        h, w = img.shape[-2:]
        img = self.color_jitter(img.clamp(0.0, 1.0), g)
        pad = int(h / 2)  # Pad(int(n_pixels / 2)) with n_pixels = the image's first size
        img = TF.pad(img, [pad], padding_mode=self.padding_mode)
        # RandomAffine.get_params: angle, then translations as whole pixels of the padded image, then scale
        angle = _draw(g, -self.degrees, self.degrees)
        max_dx, max_dy = self.translate * img.shape[-1], self.translate * img.shape[-2]
        tx = int(round(_draw(g, -max_dx, max_dx)))
        ty = int(round(_draw(g, -max_dy, max_dy)))
        s = _draw(g, *self.scale)
        img = TF.affine(img, angle=angle, translate=[tx, ty], scale=s, shear=[0.0, 0.0],
                        interpolation=InterpolationMode.BILINEAR, fill=[0.0] * img.shape[1])  # fmt: skip
        if self.blur_sigma is not None:
            sigma = _draw(g, *self.blur_sigma)
            # The 5x5 blur is local, so blurring only the centre crop plus a 2-pixel margin and then
            # cropping gives the same pixels as blurring the whole padded image (the reference) at a
            # quarter of the cost; the margin stays far inside the padding, away from the blur's own
            # reflect padding at the image border.
            img = TF.center_crop(img, [min(h + 4, img.shape[-2]), min(w + 4, img.shape[-1])])
            img = TF.gaussian_blur(img, [5, 5], [sigma, sigma])
        img = TF.center_crop(img, [h, w])
        if torch.rand(1, generator=g) < self.hflip:
            img = TF.horizontal_flip(img)
        if self.noise_std > 0:
            img = img + (torch.randn(img.size(), generator=g) * self.noise_std).to(img.device)
        return img.clamp(0.0, 1.0)

    def color_jitter(self, img: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """ColorJitterPro: the five colour operations in a random order, each clamping to [0, 1]."""
        for op in torch.randperm(5, generator=g).tolist():
            if op == 0:
                img = TF.adjust_brightness(img, _draw(g, *self.brightness))
            elif op == 1:
                img = TF.adjust_contrast(img, _draw(g, *self.contrast))
            elif op == 2:
                img = TF.adjust_saturation(img, _draw(g, *self.saturation))
            elif op == 3:
                img = TF.adjust_hue(img, _draw(g, *self.hue))
            else:
                factor = _draw(g, *self.gamma)
                # the reference clamps first: gamma of 0 has an infinite gradient (NaN after contrast)
                img = TF.adjust_gamma(img.clamp(1e-8, 1.0), factor)
        return img


def pixel_space(info: StreamInfo) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(mean, std) that map the stream's model inputs back to [0, 1] pixels, or None when it declares none.

    A :class:`~cl_bench.core.types.Standardize` batch transform defines pixels as ``stored / scale`` (stored
    images hold 0..scale) and model inputs as ``(pixels - mean) / std``; any other transform (or none)
    declares no pixel range.
    """
    t = info.input_transform
    if isinstance(t, Standardize) and len(info.input_shape) == 3:
        return tuple(t.mean), tuple(t.std)
    return None


#: The reference's ``padding_mode`` values and the range-agnostic variant's nearest ``grid_sample`` fill.
PADDING_MODES = {"edge": "border", "reflect": "reflection"}


def stream_augment(
    info: StreamInfo,
    flip: bool | None = None,
    *,
    soft: bool = False,
    padding_mode: str = "edge",
    cotta_augs: bool = True,
) -> ReferenceTTAugment | TTAugment:
    """The reference's ``get_tta_transforms(img_size, soft, padding_mode, cotta_augs)`` for the stream ``info``
    describes (keyword names and defaults as the reference's, transforms_cotta.py l. 133).

    CoTTA, RMT, PSMT and RoTTA call it with the defaults (their ``get_tta_transforms(self.img_size)``);
    ROID and CMF with ``padding_mode="reflect", cotta_augs=False`` (methods/roid.py l. 33, cmf.py l. 59).

    Args:
        info: The stream: its ``input_transform`` decides the variant (see :func:`pixel_space`), its
            ``flip_invariant`` the flip default.
        flip: Horizontal flips with probability 0.5; None = the stream's ``flip_invariant``.
        soft: The reference's soft parameter set (only for the reference variant).
        padding_mode: "edge" or "reflect": how the image is padded before the affine transform.
        cotta_augs: Keep the Gaussian blur and noise; False drops both (l. 155-164: the crop, flip and
            clip stay, and no random number is drawn for the dropped two).

    Returns:
        :class:`ReferenceTTAugment` on images with a declared pixel range, else :class:`TTAugment`.

    Raises:
        ValueError: For a padding mode other than "edge" or "reflect".
    """
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {sorted(PADDING_MODES)}, got {padding_mode!r}")
    flip_on = info.flip_invariant if flip is None else flip
    space = pixel_space(info)
    if space is None:
        return make_augment(flip_on, light=not cotta_augs, padding_mode=PADDING_MODES[padding_mode])
    mean, std = space
    dropped = {} if cotta_augs else {"blur_sigma": None, "noise_std": 0.0}
    make = ReferenceTTAugment.soft if soft else ReferenceTTAugment
    return make(hflip=0.5 if flip_on else 0.0, padding_mode=padding_mode, mean=mean, std=std, **dropped)  # type: ignore[arg-type]
