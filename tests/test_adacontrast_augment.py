"""AdaContrast's views against the reference's ``transforms_adacontrast.py``.

The reference (mariodoebler/test-time-adaptation ``classification/augmentations/transforms_adacontrast.py``,
``get_augmentation_versions("twss", "moco-v2-light", res_size=(n, n), crop_size=n)`` as
``datasets/data_loading.py`` l. 61 calls it) is composed here by hand from torchvision's v1 transform classes
and run image by image on torchvision's global generator, as its data loader does. Its blur is PIL's
with a radius from Python's ``random``; ours (documented in the module) is torchvision's Gaussian blur
with sigma from the same generator, so the hand-written pipeline uses that blur.
"""

from __future__ import annotations

import dataclasses
import math
import random

import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as F1

from cl_bench.components import (
    RangeAgnosticViews,
    ReferenceAdaContrastAugment,
    adacontrast_augment,
    make_augment,
    pixel_space,
)
from cl_bench.core.registry import METHODS
from cl_bench.core.types import Standardize, StreamInfo


def _blur(img: torch.Tensor) -> torch.Tensor:
    """GaussianBlur([0.1, 2.0]) (l. 18-27) with the radius drawn as torchvision draws (see the docstring)."""
    sigma = float(torch.empty(1).uniform_(0.1, 2.0))
    half = min(math.ceil(3 * sigma), min(img.shape[-2:]) - 1)
    return F1.gaussian_blur(img, [2 * half + 1] * 2, [sigma, sigma]) if half >= 1 else img


def _reference(n: int) -> list[T.Compose]:
    """get_augmentation_versions(aug_versions="twss", aug_type="moco-v2-light", res_size=(n, n), crop_size=n)
    (l. 88-105): the test, the weak ("plain", l. 63-69) and twice the strong view (l. 43-53), without ToTensor."""
    test = T.Compose([T.Resize((n, n)), T.CenterCrop(n)])
    weak = T.Compose([T.Resize((n, n)), T.RandomCrop(n), T.RandomHorizontalFlip()])
    strong = [T.Compose([T.Resize((n, n)), T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
                         T.RandomGrayscale(p=0.2), T.RandomApply([T.Lambda(_blur)], p=0.5),
                         T.RandomHorizontalFlip()]) for _ in range(2)]  # fmt: skip
    return [test, weak, *strong]


def _reference_views(x: torch.Tensor, seed: int) -> list[torch.Tensor]:
    """NCropsTransform (l. 9-15) per image, as the loader applies it; (weak, strong, strong) batches."""
    torch.manual_seed(seed)
    crops = [[t(img) for t in _reference(x.shape[-1])] for img in x]
    assert all(torch.equal(c[0], img) for c, img in zip(crops, x, strict=True))  # the test view is the image
    return [torch.stack([c[v] for c in crops]) for v in (1, 2, 3)]


def _images(n: int, c: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, c, max(2, size // 4), max(2, size // 4), generator=g)
    return torch.nn.functional.interpolate(base, size=(size, size), mode="bilinear").mul(1.2).sub(0.1).clamp(0, 1)


@pytest.mark.parametrize("channels, size", [(3, 32), (1, 28), (3, 8), (1, 3)])
def test_equals_the_hand_composed_reference_pipeline_under_a_seed(channels, size) -> None:
    x = _images(8, channels, size)
    aug = ReferenceAdaContrastAugment()
    for seed in range(4):
        got = aug(x, torch.Generator().manual_seed(seed))
        for view, expected in zip(got, _reference_views(x, seed), strict=True):
            torch.testing.assert_close(view, expected, atol=2e-6, rtol=0)


def test_standardised_inputs_are_augmented_in_pixel_space() -> None:
    pixels = _images(6, 3, 16)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    got = ReferenceAdaContrastAugment(mean=mean, std=std)((pixels - m) / s, torch.Generator().manual_seed(3))
    for view, expected in zip(got, _reference_views(pixels, 3), strict=True):
        torch.testing.assert_close(view * s + m, expected, atol=1e-5, rtol=0)


def test_draws_from_the_given_generator_only() -> None:
    x, aug = _images(16, 3, 16), ReferenceAdaContrastAugment()
    torch.manual_seed(0)
    random.seed(0)
    torch_state, py_state = torch.get_rng_state(), random.getstate()
    a = aug(x, torch.Generator().manual_seed(5))
    assert torch.equal(torch.get_rng_state(), torch_state) and random.getstate() == py_state
    b = aug(x, torch.Generator().manual_seed(5))
    c = aug(x, torch.Generator().manual_seed(6))
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert not any(torch.equal(u, v) for u, v in zip(a, c, strict=True))


def test_views_differ_per_image_and_from_each_other() -> None:
    # per image: one image repeated gets different strong views within the batch and the call
    x = _images(1, 3, 16).expand(32, -1, -1, -1).contiguous()
    w, q, k = ReferenceAdaContrastAugment()(x, torch.Generator().manual_seed(0))
    assert len({tuple(v.flatten()[:40].tolist()) for v in q}) > 16
    assert not torch.equal(q, k)
    # the weak view is the image or its mirror, about half of each
    flipped = [torch.equal(v, x[0].flip(-1)) for v in w]
    assert all(f or torch.equal(v, x[0]) for f, v in zip(flipped, w, strict=True))
    assert 8 <= sum(flipped) <= 24
    q0, k0 = ReferenceAdaContrastAugment(hflip=0.0)(x, torch.Generator().manual_seed(0))[1:]
    for view in (q0, k0):
        assert float(view.min()) >= 0.0 and float(view.max()) <= 1.0


def _image_stream(channels: int, size: int, flip_invariant: bool = True) -> StreamInfo:
    mean, std = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)) if channels == 3 else ((0.1307,), (0.3081,))
    return StreamInfo((channels, size, size), 10, 1, "domain_il", input_transform=Standardize(255.0, mean, std),
                      flip_invariant=flip_invariant)  # fmt: skip


def test_the_factory_follows_the_stream() -> None:
    for flip_invariant in (False, True):
        info = _image_stream(3, 16, flip_invariant)
        mean, std = pixel_space(info)  # type: ignore[misc]
        p = 0.5 if flip_invariant else 0.0
        assert adacontrast_augment(info) == ReferenceAdaContrastAugment(hflip=p, mean=mean, std=std)
        assert adacontrast_augment(info, flip=not flip_invariant).hflip == 0.5 - p
    raw = StreamInfo((1, 8, 8), 4, 1, "domain_il")  # no declared pixel range: the range-agnostic views
    assert adacontrast_augment(raw, flip=False) == RangeAgnosticViews(make_augment(False, light=True),
                                                                      make_augment(False))  # fmt: skip
    x, views = torch.randn(4, 1, 8, 8), adacontrast_augment(raw, flip=False)
    g, ref = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    expected = (views.weak(x, ref), views.strong(x, ref), views.strong(x, ref))  # type: ignore[union-attr]
    assert all(torch.equal(u, v) for u, v in zip(views(x, g), expected, strict=True))


class _Net(torch.nn.Module):
    """The smallest network with the ``features`` and ``head`` AdaContrast needs."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                      nn.Flatten())  # fmt: skip
        self.head = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def test_adacontrast_holds_the_reference_views() -> None:
    net = _Net().eval()
    for flip_invariant in (False, True):
        info = dataclasses.replace(_image_stream(1, 8, flip_invariant), source_model=net)
        method = METHODS.create("adacontrast", queue_size=16)
        assert method.config.flip is None
        method.setup(info, 0)
        assert method.augment == adacontrast_augment(info)
        assert isinstance(method.augment, ReferenceAdaContrastAugment)
        assert method.augment.hflip == (0.5 if flip_invariant else 0.0)
        out = method.adapt(torch.randn(4, 1, 8, 8))
        assert out.shape == (4, 10) and bool(torch.isfinite(out).all())
