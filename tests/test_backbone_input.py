"""BackboneInput: stream inputs -> pretrained-backbone inputs, on the real scenario transforms."""

from __future__ import annotations

import pytest
import torch

from cl_bench.components import BackboneInput
from cl_bench.components.backbone_input import IMAGENET_MEAN, IMAGENET_STD
from cl_bench.core.errors import ConfigError
from cl_bench.core.registry import SCENARIOS
from cl_bench.core.types import Standardize
from cl_bench.nets.backbones import create_backbone


def test_mnist_standardised_batch_becomes_imagenet_normalised_rgb() -> None:
    pixels = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    stream = Standardize(scale=255.0, mean=(0.1307,), std=(0.3081,))
    adapter = BackboneInput(image_size=28).for_stream(stream)
    out = adapter(stream(pixels))
    assert out.shape == (5, 3, 28, 28)
    expected = (pixels.float() / 255).expand(-1, 3, -1, -1)
    expected = (expected - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_per_channel_stream_stats_are_undone_per_channel() -> None:
    pixels = torch.rand(4, 3, 8, 8)
    stream = Standardize(scale=1.0, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    adapter = BackboneInput(image_size=None, mean=(0.0,), std=(1.0,)).for_stream(stream)
    torch.testing.assert_close(adapter(stream(pixels)), pixels, atol=1e-6, rtol=1e-6)


def test_resize_upsamples_and_shrinks_to_image_size() -> None:
    x = torch.rand(2, 1, 8, 8)
    assert BackboneInput(image_size=32)(x).shape == (2, 3, 32, 32)
    assert BackboneInput(image_size=4)(torch.rand(2, 3, 16, 16)).shape == (2, 3, 4, 4)
    # A constant image stays constant through resizing: only the normalisation changes it.
    flat = BackboneInput(image_size=16, mean=(0.5,), std=(0.5,))(torch.full((1, 1, 4, 4), 0.75))
    torch.testing.assert_close(flat, torch.full((1, 3, 16, 16), 0.5))


def test_flat_and_channelless_inputs_are_read_as_square_grey_images() -> None:
    adapter = BackboneInput(image_size=8)
    assert adapter(torch.rand(3, 16)).shape == (3, 3, 8, 8)
    assert adapter(torch.rand(3, 4, 4)).shape == (3, 3, 8, 8)
    with pytest.raises(ConfigError, match="not images"):
        adapter(torch.rand(3, 10))


def test_one_channel_backbone_gets_grey_from_colour() -> None:
    out = BackboneInput(image_size=None, mean=(0.0,), std=(1.0,), channels=1)(torch.ones(2, 3, 4, 4))
    assert out.shape == (2, 1, 4, 4)


@pytest.mark.parametrize("kwargs", [{"image_size": 0}, {"channels": 2}, {"std": (0.0,)}, {"mean": (0.1, 0.2)}])
def test_bad_settings_raise_config_error(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        BackboneInput(**kwargs)


def test_for_backbone_reads_timm_pretrained_cfg() -> None:
    tf_lite = create_backbone("test_resnet")  # tiny; its pretrained_cfg has mean = std = 0.5
    adapter = BackboneInput.for_backbone(tf_lite)
    assert adapter.image_size == 160 and adapter.channels == 3  # test_resnet's native input size
    assert adapter.mean == tuple(tf_lite.pretrained_cfg["mean"])
    assert BackboneInput.for_backbone(tf_lite, image_size=64).image_size == 64
    assert BackboneInput.for_backbone(None).mean == IMAGENET_MEAN


@pytest.mark.parametrize("scenario", ["split_digits", "toy"])
def test_real_scenario_batches_come_back_as_unit_range_pixels(scenario: str) -> None:
    exp = SCENARIOS.create(scenario)[0]
    x, _ = exp.test.batch(slice(0, 16))
    adapter = BackboneInput(image_size=12, mean=(0.0,), std=(1.0,)).for_stream(exp.test.transform)
    out = adapter(x)
    assert out.shape == (16, 3, 12, 12)
    if scenario == "split_digits":  # digits are 0..16 intensities: after undoing, pixels lie in [0, 1]
        assert out.min() >= -1e-5 and out.max() <= 1 + 1e-5 and out.max() > 0.5
