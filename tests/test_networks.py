"""The model registry and the CIFAR ResNets: exact parameter counts, features/head, selection by name."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import cl_bench
from cl_bench.cli import main
from cl_bench.core.errors import ConfigError
from cl_bench.core.registry import METHODS
from cl_bench.core.types import Batch, StreamInfo
from cl_bench.nets import registry
from cl_bench.nets.registry import create_model, list_models, model_entry, parameter_count, register_model

# Counts derived from the reference code, with a 10-class head on 3x32x32 inputs:
#   mammoth backbone/ResNet18.py (nf=64): stem 3x3 conv 1,728 + BN 128; 8 basic blocks, 3 conv+BN projection
#   shortcuts; linear 512*10 + 10.  GEM model/common.py ResNet18(nf=20): the same with widths 20-40-80-160.
#   PyCIL convs/cifar_resnet.py resnet32: 463,504 (15 blocks, parameter-free DownsampleA) + linear 64*10 + 10.
#   RobustBench WideResNet-28-10: 36,479,194 (the count of its CIFAR-10 "Standard" checkpoint).
REFERENCE_COUNTS = {
    "resnet18": 11_173_962,
    "reduced_resnet18": 1_094_750,
    "resnet32": 464_154,
    "wrn28_10": 36_479_194,
}


@pytest.mark.parametrize("name, count", REFERENCE_COUNTS.items())
def test_parameter_counts_equal_the_reference_implementations(name: str, count: int) -> None:
    assert parameter_count(create_model(name, n_classes=10, input_shape=(3, 32, 32))) == count


@pytest.mark.parametrize("name, feature_dim", [("resnet18", 512), ("reduced_resnet18", 160), ("resnet32", 64)])
def test_features_and_head_are_separable(name: str, feature_dim: int) -> None:
    torch.manual_seed(0)
    net = create_model(name, n_classes=7, input_shape=(3, 32, 32)).eval()
    x = torch.randn(2, 3, 32, 32)
    emb = net.features(x)
    assert emb.shape == (2, feature_dim)
    assert isinstance(net.head, nn.Linear) and net.head.out_features == 7
    torch.testing.assert_close(net.head(emb), net(x))


def test_head_size_follows_n_classes() -> None:
    # Only the head depends on n_classes: 100 classes add 90 * (512 + 1) parameters to ResNet-18.
    diff = parameter_count(create_model("resnet18", 100)) - parameter_count(create_model("resnet18", 10))
    assert diff == 90 * 513


def test_resnet32_shortcuts_are_parameter_free_and_resnet18_stem_keeps_resolution() -> None:
    r32 = create_model("resnet32", 10)
    assert not [m for m in r32.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    r18 = create_model("resnet18", 10)
    assert not [m for m in r18.modules() if isinstance(m, nn.MaxPool2d)]
    stem = r18.conv1(torch.zeros(1, 3, 32, 32))
    assert stem.shape[-2:] == (32, 32)  # 3x3 stem at stride 1 (ImageNet ResNets halve twice here)


def test_registry_lists_names_and_rejects_unknown_ones() -> None:
    assert {"mlp", "cnn", "lenet_bn", "wrn28_10", "resnet18", "reduced_resnet18", "resnet32"} <= set(list_models())
    assert list_models("resnet*") == ["resnet18", "resnet32", "resnet50"]
    assert cl_bench.create_model is create_model
    with pytest.raises(ConfigError, match="unknown model 'resnet19'"):
        create_model("resnet19", 10)
    with pytest.raises(ConfigError, match="takes no option hidden_size"):
        create_model("resnet18", 10, hidden_size=3)
    with pytest.raises(ConfigError, match="needs image inputs"):
        create_model("resnet32", 10, input_shape=(784,))
    with pytest.raises(ValueError, match="already registered"):
        register_model("resnet18", reference="x")(lambda n_classes, input_shape: nn.Linear(1, n_classes))


def test_register_model_adds_a_network_that_create_model_builds() -> None:
    @register_model("test_tiny_linear", input_shape=(4,), reference="a test network")
    def tiny(n_classes: int, input_shape: tuple[int, ...], bias: bool = True) -> nn.Module:
        """A linear layer."""
        return nn.Linear(input_shape[0], n_classes, bias=bias)

    try:
        assert model_entry("test_tiny_linear").options == ("bias",)
        assert parameter_count(create_model("test_tiny_linear", 3, bias=False)) == 12
    finally:
        registry._MODELS.pop("test_tiny_linear")  # keep the global registry as other tests expect it


def test_a_method_trains_a_network_picked_by_name() -> None:
    method = METHODS.create("er", model="resnet32", buffer_size=8)
    method.setup(StreamInfo((3, 32, 32), 10, 2, "class_il"), seed=0)
    assert parameter_count(method.net) == REFERENCE_COUNTS["resnet32"]
    before = [p.detach().clone() for p in method.net.parameters()]
    method.observe(Batch(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 0, 1]), None, 0))
    assert any(not torch.equal(a, b) for a, b in zip(before, method.net.parameters(), strict=True))


def test_cli_lists_models_with_counts_and_references(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "models", "-v"]) == 0
    out = capsys.readouterr().out
    assert "resnet18" in out and "11,173,962" in out and "3x32x32" in out and "mammoth" in out
    assert "464,154" in out and "1,094,750" in out
    assert "23,528,522" in out and "85,806,346" in out and "3x224x224" in out  # resnet50, vit_b_16


# torchvision documents resnet50's IMAGENET1K_V1 weights with 25,557,032 parameters (1000 classes) and timm's
# vit_base_patch16_224 has 86,567,656; with a 10-class head: minus 990 * (2048 + 1) and 990 * (768 + 1).
IMAGENET_COUNTS = {"resnet50": 25_557_032 - 990 * 2049, "vit_b_16": 86_567_656 - 990 * 769}


@pytest.mark.parametrize("name, count", [pytest.param(n, c, marks=pytest.mark.slow) if n == "vit_b_16" else (n, c)
                                         for n, c in IMAGENET_COUNTS.items()])
def test_imagenet_networks_count_as_the_reference_and_split_features_from_head(name: str, count: int) -> None:
    net = create_model(name, n_classes=10)
    assert parameter_count(net) == count and net.weights_sha256 is None
    assert parameter_count(create_model(name, n_classes=1000)) == count + 990 * (net.head.in_features + 1)
    x = torch.randn(1, 3, 224, 224)
    net.eval()
    torch.testing.assert_close(net.head(net.features(x)), net(x))


def test_resnet50_loads_a_torchvision_state_dict_key_for_key(tmp_path: Path) -> None:
    from torchvision.models import resnet50

    torch.manual_seed(0)
    ref = resnet50(weights=None)
    torch.save(ref.state_dict(), tmp_path / "r50.pth")
    net = create_model("resnet50", n_classes=5, weights=str(tmp_path / "r50.pth")).eval()
    assert len(net.weights_sha256) == 64
    x = torch.randn(2, 3, 64, 64)
    ref.fc = nn.Identity()
    torch.testing.assert_close(net.features(x), ref.eval()(x))  # the published fc is dropped, the body is exact
    bad = {k: v for k, v in ref.state_dict().items() if not k.startswith("layer4")}
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ConfigError, match="missing .*layer4"):
        create_model("resnet50", n_classes=5, weights=str(tmp_path / "bad.pth"))


def test_model_weights_reach_the_record_and_are_refused_where_no_network_takes_them(tmp_path: Path) -> None:
    from torchvision.models import resnet50

    from cl_bench.nets.backbones import weights_sha256

    torch.save(resnet50(weights=None).state_dict(), tmp_path / "r50.pth")
    method = METHODS.create("er", model="resnet50", model_weights=str(tmp_path / "r50.pth"), buffer_size=4)
    assert method.record_extras() == {"model_weights": {"model": "resnet50",
                                                        "weights_sha256": weights_sha256(tmp_path / "r50.pth")}}
    method.setup(StreamInfo((3, 32, 32), 4, 2, "class_il"), seed=0)
    method.observe(Batch(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]), None, 0))
    assert METHODS.create("er").record_extras() == {}  # no weights: records stay as they were
    with pytest.raises(ConfigError, match="loads no weight file"):
        METHODS.create("er", model="mlp", model_weights=str(tmp_path / "r50.pth")).setup(
            StreamInfo((1, 28, 28), 4, 2, "class_il"), seed=0)


def _resnext29_count(n_classes: int) -> int:
    """RobustBench's Hendrycks2020AugMix_ResNeXt (depth 29, cardinality 4, base width 32), counted from its code:
    stage planes p in (64, 128, 256), inner width 4 * floor(p * 32 / 64) = 2p, output 4p, 3 blocks per stage."""
    total = 3 * 64 * 9 + 2 * 64  # stem conv + BN
    inplanes = 64
    for p in (64, 128, 256):
        for i in range(3):
            inner, out = 2 * p, 4 * p
            total += inplanes * inner + 2 * inner  # 1x1 reduce + BN
            total += inner * (inner // 4) * 9 + 2 * inner  # 3x3 conv in 4 groups + BN
            total += inner * out + 2 * out  # 1x1 expand + BN
            if i == 0:
                total += inplanes * out + 2 * out  # projection shortcut + BN
            inplanes = out
    return total + 1024 * n_classes + n_classes


def test_resnext29_counts_as_robustbench_and_loads_its_released_key_layout(tmp_path: Path) -> None:
    net = create_model("resnext29", n_classes=100)
    assert parameter_count(net) == _resnext29_count(100) == 6_900_132
    keys = set(net.state_dict())
    assert {"conv_1_3x3.weight", "bn_1.running_var", "stage_1.0.conv_reduce.weight", "stage_1.0.downsample.0.weight",
            "stage_3.2.bn_expand.bias", "classifier.weight"} <= keys
    assert "mu" not in keys and "sigma" not in keys  # the released checkpoint has no normalisation buffers
    conv = net.stage_2[0].conv_conv
    assert conv.groups == 4 and conv.stride == (2, 2) and conv.in_channels == 256
    x = torch.rand(2, 3, 32, 32)
    net.eval()
    torch.testing.assert_close(net.head(net.features(x)), net(x))
    assert net.features(x).shape == (2, 1024)
    # A checkpoint in that layout loads as the CIFAR-100-C source model, key for key.
    from cl_bench.nets.backbones import load_weights
    from cl_bench.nets.models import build_source_model

    torch.save(net.state_dict(), tmp_path / "augmix_resnext.pt")
    src = build_source_model("resnext29", (3, 32, 32), 100)
    load_weights(src, torch.load(tmp_path / "augmix_resnext.pt"))
    torch.testing.assert_close(src.eval()(x), net(x))


def test_cifar100_c_defaults_to_the_augmix_resnext_source() -> None:
    import inspect

    from cl_bench.core.registry import SCENARIOS

    builder = SCENARIOS.get("cifar100_c").obj
    assert inspect.signature(builder).parameters["source_model"].default == "resnext29"
