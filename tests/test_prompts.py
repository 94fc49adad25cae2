"""Prompt components on a tiny timm ViT, and the prompt methods learning with a (briefly) pretrained one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from cl_bench.cli import main
from cl_bench.components.prompts import (
    CodaPrompt,
    PromptedViT,
    PromptPool,
    _prefixed_block,
    gram_schmidt_,
    merge_prefixes,
)
from cl_bench.core.errors import ConfigError
from cl_bench.core.method import Caps
from cl_bench.core.registry import METHODS, SCENARIOS
from cl_bench.core.types import StreamInfo
from cl_bench.families.vit_prompt import TINY_VIT
from cl_bench.nets.backbones import create_backbone
from cl_bench.testing import check_method, toy_scenario

PROMPT_METHODS = ["l2p", "dualprompt", "coda_prompt", "one_prompt", "l2_vit", "hide_prompt"]
VIT_KW = {"img_size": 8, "patch_size": 4, "depth": 2, "embed_dim": 32, "num_heads": 2}


def tiny_vit(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_backbone("vit_tiny_patch16_224", None, **VIT_KW).eval()


def test_own_attention_matches_timm_and_prefixes_change_it() -> None:
    vit = tiny_vit()
    x = torch.randn(3, 3, 8, 8)
    h = vit.norm_pre(vit._pos_embed(vit.patch_embed(x)))
    blk = vit.blocks[0]
    empty = torch.zeros(3, 0, 32)
    # With an empty prefix the re-implemented block is timm's block.
    assert torch.allclose(_prefixed_block(blk, h, empty, empty), blk(h), atol=1e-5)
    pk, pv = torch.randn(3, 2, 32), torch.randn(3, 2, 32)
    assert not torch.allclose(_prefixed_block(blk, h, pk, pv), blk(h), atol=1e-3)
    pvit = PromptedViT(vit)
    assert torch.allclose(pvit(x), vit(x), atol=1e-5) and torch.allclose(pvit.query(x), vit(x))


def test_prompts_get_gradients_and_backbone_stays_frozen() -> None:
    pvit = PromptedViT(tiny_vit())
    pool = PromptPool((0, 1), pool_size=4, length=4, embed_dim=32, key_dim=32)
    x = torch.randn(5, 3, 8, 8)
    idx, sim = pool.select(pvit.query(x), top_k=2)
    assert idx.shape == (5, 2) and bool((sim.gather(1, idx)[:, :1] >= sim.max(1, keepdim=True).values).all())
    prefixes = pool.prefixes(idx)
    assert prefixes[0][0].shape == (5, 4, 32)  # 2 prompts x half of length 4
    loss = pvit(x, prefixes).pow(2).sum() + PromptPool.match_loss(sim, idx)
    loss.backward()
    assert all(p.grad is None for p in pvit.vit.parameters())
    assert pool.prompts[0].grad is not None and pool.keys.grad is not None
    assert pool.prompts[0].grad[idx.flatten()].abs().sum() > 0
    merged = merge_prefixes(prefixes, pool.shared(5))
    assert merged[1][1].shape == (5, 6, 32)


def test_key_matching_pulls_the_chosen_keys_to_their_queries() -> None:
    torch.manual_seed(0)
    pool = PromptPool((0,), pool_size=3, length=2, embed_dim=8, key_dim=8)
    query = torch.randn(16, 8) + 3.0
    opt = torch.optim.Adam(pool.parameters(), lr=0.05)
    idx = torch.zeros(16, 1, dtype=torch.long)
    before = PromptPool.match_loss(pool.similarity(query), idx).item()
    for _ in range(50):
        opt.zero_grad()
        PromptPool.match_loss(pool.similarity(query), idx).backward()
        opt.step()
    assert PromptPool.match_loss(pool.similarity(query), idx).item() < 0.5 * before


def test_gram_schmidt_rows_are_orthonormal_to_earlier_rows() -> None:
    gen = torch.Generator().manual_seed(0)
    p = torch.zeros(6, 2, 4)  # 8-dim rows
    gram_schmidt_(p, 0, 3, gen)
    gram_schmidt_(p, 3, 6, gen)
    flat = p.view(6, -1)
    assert torch.allclose(flat @ flat.T, torch.eye(6), atol=1e-5)
    q = torch.zeros(5, 2)  # more rows than dimensions: the rest are random unit vectors
    gram_schmidt_(q, 0, 5, gen)
    assert torch.allclose(q.norm(dim=1), torch.ones(5)) and abs(float(q[0] @ q[1])) < 1e-5


def test_coda_trains_only_the_current_slice_and_grows_at_test_time() -> None:
    coda = CodaPrompt((0,), pool_size=6, length=4, embed_dim=8, key_dim=8, n_tasks=3)
    gen = torch.Generator().manual_seed(0)
    for t in range(3):
        coda.begin_task(t, gen)
    query = torch.randn(4, 8)
    prefixes, ortho = coda(query, task=1, train=True)
    (prefixes[0][0].sum() + prefixes[0][1].sum() + ortho).backward()
    grad = coda.components[0].grad.flatten(1).abs().sum(1)
    assert bool((grad[2:4] > 0).all()) and float(grad[:2].sum() + grad[4:].sum()) == 0.0
    test_prefix, _ = coda(query, task=0, train=False)
    assert test_prefix[0][0].shape == (4, 2, 8)
    with pytest.raises(ConfigError, match="pool_size >= 3"):
        CodaPrompt((0,), pool_size=2, length=4, embed_dim=8, key_dim=8, n_tasks=3)


def test_virtual_outliers_lie_outside_the_inliers() -> None:
    from cl_bench.methods.one_prompt import synthesize_outliers

    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(100, 16, generator=gen) * 0.1 + torch.ones(16)
    out = synthesize_outliers(feats, 30, k=5, n_boundary=10, n_candidates=20, noise=0.1, generator=gen)
    assert out.shape == (30, 16)
    z = F.normalize(feats, dim=1)
    inlier_nn = torch.cdist(z, z).topk(2, largest=False).values[:, 1].mean()
    outlier_nn = torch.cdist(F.normalize(out, dim=1), z).min(1).values.mean()
    assert outlier_nn > inlier_nn


def test_prompt_method_on_a_non_vit_backbone_is_a_user_error(capsys: pytest.CaptureFixture[str],
                                                            tmp_path: Path) -> None:  # fmt: skip
    code = main(["run", "--scenario", "toy", "--method", "l2p", "--set", "backbone=resnet18", "--out",
                 str(tmp_path)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2, err
    assert "VisionTransformer family" in err and "resnet18" in err and "Traceback" not in err
    assert not tmp_path.exists() or not any(tmp_path.iterdir())  # stopped before any run started


def test_a_non_vit_that_passes_the_name_check_is_still_caught_at_setup() -> None:
    from cl_bench.components.prompts import require_vit

    with pytest.raises(ConfigError, match="is a ResNet"):
        require_vit(create_backbone("resnet18"), "l2p", "resnet18")


def test_dualprompt_needs_an_expert_prompt_per_experience() -> None:
    method = METHODS.create("dualprompt", **{**METHODS.get("dualprompt").obj.conformance_config,
                                             "e_pool_size": 2})  # fmt: skip
    s = toy_scenario()
    with pytest.raises(ConfigError, match="e_pool_size=3"):
        method.setup(StreamInfo(s.input_shape, s.n_classes, len(s), s.setting), 0)


@pytest.fixture(scope="module")
def pretrained_tiny_vit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Weights of the conformance tiny ViT, trained briefly on more samples of the toy stream's classes.

    Stands in for an ImageNet-pretrained ViT: the backbone has seen the kind of data the stream holds.
    """
    # Same seed = same class centres and class order as the conformance stream; more (other) samples.
    s = SCENARIOS.create("toy", n_train=200, seed=0)
    assert s[0].classes == toy_scenario()[0].classes
    x = torch.cat([e.train.x for e in s]).expand(-1, 3, -1, -1)
    x = F.interpolate(x, size=(8, 8), mode="bilinear", align_corners=False)
    y = torch.cat([e.train.y for e in s])
    vit = tiny_vit(1).train()
    head = torch.nn.Linear(32, s.n_classes)
    opt = torch.optim.Adam([*vit.parameters(), *head.parameters()], lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(150):
        idx = torch.randint(len(x), (64,), generator=gen)
        loss = F.cross_entropy(head(vit(x[idx])), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    path = tmp_path_factory.mktemp("weights") / "tiny_vit.pth"
    torch.save(vit.state_dict(), path)
    return path


# l2p stands for the family in the inner loop; the others train the same way (slow: ~1 s each on an idle machine).
@pytest.mark.parametrize("name", [pytest.param(n, marks=[] if n == "l2p" else [pytest.mark.slow])
                                  for n in PROMPT_METHODS])  # fmt: skip
def test_method_learns_with_a_pretrained_backbone(name: str, pretrained_tiny_vit: Path) -> None:
    cls = METHODS.get(name).obj
    strict: Any = type(f"Strict{cls.__name__}", (cls,), {"caps": Caps(pretrained_backbone=True)})
    strict.name = ""
    report = check_method(strict, config={"weights": str(pretrained_tiny_vit)}, checks=["check_beats_chance"])
    assert report["check_beats_chance"].status == "passed"


def test_every_prompt_method_is_registered_with_a_tiny_conformance_vit() -> None:
    for name in PROMPT_METHODS:
        cls: Any = METHODS.get(name).obj
        conf = cls.conformance_config
        assert conf["backbone"] == TINY_VIT["backbone"] and conf["depth"] == 2
        assert cls.caps.pretrained_backbone


def test_cosine_schedule_follows_the_coda_prompt_reference_per_epoch() -> None:
    import math

    from cl_bench.core.types import Batch

    conf = {**METHODS.get("l2p").obj.conformance_config, "lr": 0.01, "lr_schedule": "cosine", "lr_epochs": 3}
    method = METHODS.create("l2p", **conf)
    s = toy_scenario()
    method.setup(StreamInfo(s.input_shape, s.n_classes, len(s), s.setting), 0)
    lrs = []
    for exp in list(s)[:2]:
        method.begin_experience(exp)
        n = len(exp.train)
        for _ in range(3):  # epochs: batches of 7 cover the experience once, the last one partial
            for start in range(0, n, 7):
                x, y = exp.train.batch(torch.arange(start, min(start + 7, n)))
                method.observe(Batch(x, y, None, exp.index))
                lrs.append(method.opt.param_groups[0]["lr"])
    per_epoch = -(-n // 7)
    # utils/schedulers.py CosineSchedule: lr * cos(99 pi e / (200 (K - 1))), stepped per epoch, per task.
    expected = [0.01 * math.cos(99 * math.pi * e / 400) for e in range(3) for _ in range(per_epoch)]
    assert lrs[: 3 * per_epoch] == pytest.approx(expected)
    assert lrs[3 * per_epoch] == pytest.approx(0.01)  # restarted at the next experience
    with pytest.raises(ValueError, match="needs lr_epochs"):
        METHODS.create("l2p", **{**conf, "lr_epochs": 0})


def test_warmup_is_timms_linear_ramp_then_the_schedule() -> None:
    import math

    from cl_bench.families.vit_prompt import ViTConfig

    cfg = ViTConfig(lr=1e-3, lr_schedule="cosine", lr_epochs=10, warmup_epochs=4, warmup_lr=1e-6)
    # timm: warmup_lr + e (lr - warmup_lr) / W for e < W, then the schedule at the same epoch count.
    ramp = [(1e-6 + e * (1e-3 - 1e-6) / 4) / 1e-3 for e in range(4)]
    assert [cfg.lr_factor(e) for e in range(4)] == pytest.approx(ramp)
    assert cfg.lr_factor(4) == pytest.approx(math.cos(99 * math.pi * 4 / 1800))
    # Every prompt method's default: no warm-up (none of the official codes applies one).
    for name in PROMPT_METHODS:
        assert METHODS.get(name).obj.Config().warmup_epochs == 0
    with pytest.raises(ValueError, match="lr_schedule"):
        ViTConfig(lr_schedule="linear")
