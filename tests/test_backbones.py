"""Backbones by timm name with local weight files: keys and shapes are checked, the file is hashed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cl_bench.core.errors import ConfigError
from cl_bench.nets.backbones import backbone_tag, create_backbone, weights_sha256

TINY_VIT = {"img_size": 16, "patch_size": 8, "embed_dim": 24, "depth": 2, "num_heads": 2}


def test_unknown_name_suggests_close_matches() -> None:
    with pytest.raises(ConfigError, match="Did you mean 'vit_base_patch16_224'"):
        create_backbone("vit_base_patch16_2244")


def test_weights_round_trip_through_a_file_and_nested_checkpoints(tmp_path: Path) -> None:
    torch.manual_seed(0)
    src = create_backbone("vit_tiny_patch16_224", **TINY_VIT)
    # A training checkpoint: nested, DataParallel prefixes, with a classifier the backbone lacks.
    state = {f"module.{k}": v for k, v in src.state_dict().items()}
    state["module.head.weight"] = torch.zeros(5, 24)
    torch.save({"epoch": 3, "state_dict": state}, tmp_path / "ckpt.pth")
    torch.manual_seed(1)
    dst = create_backbone("vit_tiny_patch16_224", weights=tmp_path / "ckpt.pth", **TINY_VIT)
    x = torch.randn(2, 3, 16, 16)
    src.eval(), dst.eval()
    assert torch.equal(src(x), dst(x)) and src(x).shape == (2, 24)
    tag = backbone_tag("vit_tiny_patch16_224", tmp_path / "ckpt.pth")
    assert tag["weights_sha256"] == weights_sha256(tmp_path / "ckpt.pth") and len(tag["weights_sha256"]) == 64


def test_weights_of_another_architecture_are_rejected_with_the_mismatch(tmp_path: Path) -> None:
    small = create_backbone("vit_tiny_patch16_224", **TINY_VIT)
    torch.save(small.state_dict(), tmp_path / "w.pth")
    with pytest.raises(ConfigError, match=r"missing \(blocks\.2\.") as err:
        create_backbone("vit_tiny_patch16_224", weights=tmp_path / "w.pth", **{**TINY_VIT, "depth": 3})
    assert "--set backbone" in str(err.value)
    with pytest.raises(ConfigError, match="of another shape"):
        create_backbone("vit_tiny_patch16_224", weights=tmp_path / "w.pth", **{**TINY_VIT, "embed_dim": 48})


def test_unreadable_or_missing_weight_file(tmp_path: Path) -> None:
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot read weight file"):
        create_backbone("vit_tiny_patch16_224", weights=tmp_path / "junk.pth", **TINY_VIT)
    with pytest.raises(ConfigError, match="does not exist"):
        create_backbone("vit_tiny_patch16_224", weights=tmp_path / "none.pth", **TINY_VIT)
