"""The CoTTA/RMT/PSMT test-time augmentation against the reference's ``get_tta_transforms``.

The reference pipeline is composed here by hand from torchvision's v1 transform classes, with its
``ColorJitterPro``, ``GaussianNoise`` and ``Clip`` written out from mariodoebler/test-time-adaptation
(``classification/augmentations/transforms_cotta.py``), and run on torchvision's global generator; ours
draws from a private generator seeded the same way.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as F1
from torchvision.transforms.v2 import functional as F2

from cl_bench.components import ReferenceTTAugment, TTAugment, pixel_space, stream_augment
from cl_bench.core.registry import METHODS, SCENARIOS
from cl_bench.core.types import Standardize, StreamInfo


class _ColorJitterPro(T.ColorJitter):
    """transforms_cotta.py l. 39-121 (the forward used by get_tta_transforms)."""

    def __init__(self, brightness, contrast, saturation, hue, gamma) -> None:  # noqa: ANN001
        super().__init__(brightness, contrast, saturation, hue)
        self.gamma = self._check_input(gamma, "gamma")

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        for fn_id in torch.randperm(5):
            if fn_id == 0:
                img = F1.adjust_brightness(img, torch.tensor(1.0).uniform_(*self.brightness).item())
            if fn_id == 1:
                img = F1.adjust_contrast(img, torch.tensor(1.0).uniform_(*self.contrast).item())
            if fn_id == 2:
                img = F1.adjust_saturation(img, torch.tensor(1.0).uniform_(*self.saturation).item())
            if fn_id == 3:
                img = F1.adjust_hue(img, torch.tensor(1.0).uniform_(*self.hue).item())
            if fn_id == 4:
                factor = torch.tensor(1.0).uniform_(*self.gamma).item()
                img = F1.adjust_gamma(img.clamp(1e-8, 1.0), factor)
        return img


def _reference(n: int, soft: bool = False, flip_p: float = 0.5, padding_mode: str = "edge",
               cotta_augs: bool = True) -> T.Compose:  # fmt: skip
    """get_tta_transforms(n, soft=soft, padding_mode=padding_mode, cotta_augs=cotta_augs) (l. 133-166), with
    the flip probability as a parameter."""
    clip = T.Lambda(lambda x: x.clamp(0.0, 1.0))
    noise = T.Lambda(lambda x: x + torch.randn(x.size()) * 0.005)
    tta_transforms = [
        clip,
        _ColorJitterPro([0.8, 1.2] if soft else [0.6, 1.4], [0.85, 1.15] if soft else [0.7, 1.3],
                        [0.75, 1.25] if soft else [0.5, 1.5], [-0.03, 0.03] if soft else [-0.06, 0.06],
                        [0.85, 1.15] if soft else [0.7, 1.3]),
        T.Pad(int(n / 2), padding_mode=padding_mode),
        T.RandomAffine([-8, 8] if soft else [-15, 15], translate=(1 / 16, 1 / 16),
                       scale=(0.95, 1.05) if soft else (0.9, 1.1), interpolation=T.InterpolationMode.BILINEAR,
                       fill=0),
    ]  # fmt: skip
    if cotta_augs:  # l. 155-160
        tta_transforms += [T.GaussianBlur(5, sigma=[0.001, 0.25] if soft else [0.001, 0.5]), T.CenterCrop(n),
                           T.RandomHorizontalFlip(flip_p), noise, clip]  # fmt: skip
    else:  # l. 161-164: no blur, no noise
        tta_transforms += [T.CenterCrop(n), T.RandomHorizontalFlip(flip_p), clip]
    return T.Compose(tta_transforms)


def _images(n: int, c: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # smooth images with some saturated pixels, so every clamp in the chain matters
    base = torch.rand(n, c, max(2, size // 4), max(2, size // 4), generator=g)
    return torch.nn.functional.interpolate(base, size=(size, size), mode="bilinear").mul(1.2).sub(0.1).clamp(0, 1)


@pytest.mark.parametrize("channels, size, soft", [(3, 32, False), (1, 28, False), (3, 16, True), (1, 8, False),
                                                  (3, 3, False)])
def test_equals_the_hand_composed_reference_pipeline_under_a_seed(channels, size, soft) -> None:
    x = _images(6, channels, size)
    aug = ReferenceTTAugment.soft() if soft else ReferenceTTAugment()
    for seed in range(4):
        torch.manual_seed(seed)
        expected = _reference(size, soft)(x)
        got = aug(x, torch.Generator().manual_seed(seed))
        torch.testing.assert_close(got, expected, atol=2e-6, rtol=0)


def _image_stream(channels: int, size: int, flip_invariant: bool = True) -> StreamInfo:
    mean, std = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)) if channels == 3 else ((0.1307,), (0.3081,))
    return StreamInfo((channels, size, size), 10, 1, "domain_il", input_transform=Standardize(255.0, mean, std),
                      flip_invariant=flip_invariant)  # fmt: skip


@pytest.mark.parametrize("padding_mode, cotta_augs", [("reflect", False), ("reflect", True), ("edge", False)])
@pytest.mark.parametrize("channels, size", [(3, 32), (1, 28), (1, 8), (3, 3)])
def test_stream_augment_expresses_each_reference_call(padding_mode, cotta_augs, channels, size) -> None:
    # ROID/CMF: get_tta_transforms(img_size, padding_mode="reflect", cotta_augs=False); the other two
    # combinations pin each switch alone (CoTTA/RMT/PSMT/RoTTA's default call is pinned above)
    # inputs = pixels (mean 0, std 1), so the comparison is the transform alone, at the default call's 2e-6
    info = StreamInfo((channels, size, size), 10, 1, "domain_il", input_transform=Standardize(255.0))
    aug = stream_augment(info, padding_mode=padding_mode, cotta_augs=cotta_augs)
    x = _images(6, channels, size)
    for seed in range(4):
        torch.manual_seed(seed)
        expected = _reference(size, padding_mode=padding_mode, cotta_augs=cotta_augs)(x)
        got = aug(x, torch.Generator().manual_seed(seed))
        torch.testing.assert_close(got, expected, atol=2e-6, rtol=0)


def test_the_default_call_is_unchanged_and_the_light_call_draws_fewer_numbers() -> None:
    info = _image_stream(3, 16)
    mean, std = pixel_space(info)  # type: ignore[misc]
    assert stream_augment(info) == ReferenceTTAugment(mean=mean, std=std)  # what CoTTA/RMT/PSMT had
    assert stream_augment(info, soft=True) == ReferenceTTAugment.soft(mean=mean, std=std)
    light = stream_augment(info, padding_mode="reflect", cotta_augs=False)
    x = _images(2, 3, 16)
    g = torch.Generator().manual_seed(0)
    light(x, g)
    # the reference draws no blur sigma and no noise without cotta_augs: the generator has moved past the
    # permutation, ten uniforms (5 colour, angle, 2 translations, scale, nothing for blur) and one flip draw
    ref = torch.Generator().manual_seed(0)
    torch.randperm(5, generator=ref), torch.rand(9, generator=ref), torch.rand(1, generator=ref)
    assert torch.equal(torch.rand(4, generator=g), torch.rand(4, generator=ref))


def test_reflect_padding_differs_from_edge_padding_only_near_the_border() -> None:
    # only a translation (whole pixels, up to 4): the columns/rows shifted in come from the padding
    shift = {"brightness": (1.0, 1.0), "contrast": (1.0, 1.0), "saturation": (1.0, 1.0), "hue": (0.0, 0.0),
             "gamma": (1.0, 1.0), "degrees": 0.0, "scale": (1.0, 1.0), "blur_sigma": None, "hflip": 0.0,
             "noise_std": 0.0}  # fmt: skip
    x = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(2))  # no flat border
    edge, reflect = ReferenceTTAugment(**shift), ReferenceTTAugment(padding_mode="reflect", **shift)  # type: ignore[arg-type]
    n_differ = 0
    for seed in range(6):
        a, b = edge(x, torch.Generator().manual_seed(seed)), reflect(x, torch.Generator().manual_seed(seed))
        assert torch.equal(a[..., 4:28, 4:28], b[..., 4:28, 4:28])
        n_differ += not torch.allclose(a, b)
    assert n_differ >= 3


def test_the_range_agnostic_variant_follows_the_same_switches() -> None:
    raw = StreamInfo((1, 8, 8), 4, 1, "domain_il")
    full, light = stream_augment(raw), stream_augment(raw, padding_mode="reflect", cotta_augs=False)
    assert isinstance(full, TTAugment) and isinstance(light, TTAugment)
    assert (full.blur, full.noise_std, full.padding_mode) == (True, 0.005, "border")
    assert (light.blur, light.noise_std, light.padding_mode) == (False, 0.0, "reflection")
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(full(x, torch.Generator().manual_seed(0)), light(x, torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="padding_mode"):
        stream_augment(raw, padding_mode="zeros")


@pytest.mark.parametrize("name, call", [("roid", {"padding_mode": "reflect", "cotta_augs": False}),
                                        ("cmf", {"padding_mode": "reflect", "cotta_augs": False}),
                                        ("rotta", {})])  # fmt: skip
def test_roid_cmf_rotta_use_the_reference_call_and_the_streams_flips(name, call) -> None:
    nn = torch.nn
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 10)).eval()  # fmt: skip
    for flip_invariant in (False, True):
        info = dataclasses.replace(_image_stream(1, 8, flip_invariant), source_model=net)
        method = METHODS.create(name)
        assert method.config.flip is None
        method.setup(info, 0)
        assert method.augment == stream_augment(info, **call)
        assert method.augment.hflip == (0.5 if flip_invariant else 0.0)
    method = METHODS.create(name, flip=True)
    method.setup(dataclasses.replace(_image_stream(1, 8, False), source_model=net), 0)
    assert method.augment.hflip == 0.5


def test_standardised_inputs_are_augmented_in_pixel_space() -> None:
    pixels = _images(4, 3, 16)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    aug = ReferenceTTAugment(mean=mean, std=std)
    got = aug((pixels - m) / s, torch.Generator().manual_seed(3))
    torch.manual_seed(3)
    torch.testing.assert_close(got * s + m, _reference(16)(pixels), atol=1e-5, rtol=0)


def test_shape_range_and_distribution() -> None:
    x = _images(32, 3, 32)
    outs = [ReferenceTTAugment()(x, torch.Generator().manual_seed(s)) for s in range(8)]
    for out in outs:
        assert out.shape == x.shape and out.dtype == x.dtype
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
        assert not torch.equal(out, x)
    assert not torch.equal(outs[0], outs[1])
    # without the flip the geometry is mild (+-15 deg, +-4 px, 0.9-1.1): the output stays correlated with x
    for s in range(8):
        out = ReferenceTTAugment(hflip=0.0)(x, torch.Generator().manual_seed(s))
        assert float(torch.corrcoef(torch.stack([out.flatten(), x.flatten()]))[0, 1]) > 0.3
    # the noise: with every other operation at identity, the residual has the reference's std 0.005
    ident = ReferenceTTAugment(brightness=(1.0, 1.0), contrast=(1.0, 1.0), saturation=(1.0, 1.0), hue=(0.0, 0.0),
                               gamma=(1.0, 1.0), degrees=0.0, translate=0.0, scale=(1.0, 1.0),
                               blur_sigma=(1e-3, 1e-3), hflip=0.0)  # fmt: skip
    mid = torch.full((64, 3, 16, 16), 0.5)
    resid = ident(mid, torch.Generator().manual_seed(0)) - mid
    assert abs(float(resid.std()) - 0.005) < 2e-4 and abs(float(resid.mean())) < 2e-4


def test_colour_operations_come_in_a_random_order_per_call(monkeypatch) -> None:
    import cl_bench.components.tta_augment as mod

    calls: list[str] = []
    names = ("adjust_brightness", "adjust_contrast", "adjust_saturation", "adjust_hue", "adjust_gamma")

    class Recording:
        def __getattr__(self, name: str):  # noqa: ANN204
            fn = getattr(F2, name)
            if name not in names:
                return fn
            return lambda img, f: (calls.append(name), fn(img, f))[1]

    monkeypatch.setattr(mod, "TF", Recording())
    aug, x, g = ReferenceTTAugment(), _images(2, 3, 16), torch.Generator().manual_seed(0)
    orders = []
    for _ in range(12):  # one generator, consecutive calls: a fresh order each time
        calls.clear()
        aug(x, g)
        assert sorted(calls) == sorted(names)  # each of the five once per call
        orders.append(tuple(calls))
    assert len(set(orders)) >= 8
    # and the order changes the image: brightness-then-contrast is not contrast-then-brightness
    a = F2.adjust_contrast(F2.adjust_brightness(x, 1.3), 0.7)
    b = F2.adjust_brightness(F2.adjust_contrast(x, 0.7), 1.3)
    assert not torch.allclose(a, b)


def test_translation_is_whole_pixels_of_the_padded_image() -> None:
    # only a translation: the output is the input shifted by an integer number of pixels (edge padded)
    shift_only = ReferenceTTAugment(brightness=(1.0, 1.0), contrast=(1.0, 1.0), saturation=(1.0, 1.0),
                                    hue=(0.0, 0.0), gamma=(1.0, 1.0), degrees=0.0, scale=(1.0, 1.0),
                                    blur_sigma=None, hflip=0.0, noise_std=0.0)  # fmt: skip
    x = _images(1, 1, 32, seed=5)
    padded = torch.nn.functional.pad(x, (16, 16, 16, 16), mode="replicate")
    seen = set()
    for seed in range(30):
        out = shift_only(x, torch.Generator().manual_seed(seed))
        match = [(dx, dy) for dx in range(-4, 5) for dy in range(-4, 5)
                 if torch.allclose(out, padded[..., 16 - dy:48 - dy, 16 - dx:48 - dx], atol=1e-5)]  # fmt: skip
        assert len(match) == 1
        seen.add(match[0])
    assert max(abs(d) for m in seen for d in m) >= 3  # 1/16 of the 64-pixel padded side: up to +-4


def test_flip_follows_the_streams_declared_property() -> None:
    mnist_like = StreamInfo((1, 28, 28), 10, 1, "domain_il", input_transform=Standardize(255.0, (0.1307,), (0.3081,)),
                            flip_invariant=False)  # fmt: skip
    cifar_like = StreamInfo((3, 32, 32), 10, 1, "domain_il", input_transform=Standardize(255.0))
    assert stream_augment(mnist_like).hflip == 0.0
    assert stream_augment(cifar_like).hflip == 0.5
    assert stream_augment(mnist_like, flip=True).hflip == 0.5 and stream_augment(cifar_like, flip=False).hflip == 0.0
    # the digits and MNIST streams declare that mirrored images change class
    assert SCENARIOS.create("digits_c", corruptions=("contrast",), train_domains=False).flip_invariant is False
    for name in ("split_digits", "toy_tta", "toy"):
        assert SCENARIOS.create(name).flip_invariant is False


def test_mnist_streams_declare_no_flip_invariance(mnist_root) -> None:
    for name, extra in (("split_mnist", {}), ("mnist_c", {"corruptions": ("contrast",), "train_domains": False,
                                                          "n_per_domain": 10})):  # fmt: skip
        sc = SCENARIOS.create(name, root=str(mnist_root), download=False, **extra)
        assert sc.flip_invariant is False


def test_the_variant_is_chosen_from_the_declared_pixel_range() -> None:
    image = StreamInfo((1, 28, 28), 10, 1, "domain_il", input_transform=Standardize(255.0, (0.1307,), (0.3081,)))
    aug = stream_augment(image)
    assert isinstance(aug, ReferenceTTAugment) and aug.mean == (0.1307,) and aug.std == (0.3081,)
    assert pixel_space(image) == ((0.1307,), (0.3081,))
    raw = StreamInfo((1, 4, 4), 4, 1, "domain_il")  # no declared pixel range (toy_tta's raw Gaussian values)
    assert pixel_space(raw) is None and isinstance(stream_augment(raw), TTAugment)
