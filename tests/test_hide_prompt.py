"""HiDe-Prompt: its Gaussian statistics and sampling, the alignment step, the contrastive term and the
prompt bookkeeping, pinned on toy examples; a smoke run on the tiny random ViT."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from cl_bench.cli import main
from cl_bench.components.gaussians import ClassMixture
from cl_bench.core.registry import METHODS
from cl_bench.core.types import Batch, StreamInfo
from cl_bench.methods.hide_prompt import HiDePromptConfig, align, contrastive_loss
from cl_bench.testing import toy_scenario


def _blobs(centres: list[list[float]], n: int, sd: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    c = torch.tensor(centres)
    y = torch.arange(len(c)).repeat_interleave(n)
    return c[y] + sd * torch.randn(len(y), c.shape[1], generator=gen), y


def test_covariance_mode_samples_have_the_fitted_mean_and_covariance() -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.tensor([[2.0, 0.0], [1.5, 0.5]])  # correlated, unequal variances
    x = torch.randn(4000, 2, generator=gen) @ a.T + torch.tensor([3.0, -1.0])
    stats = ClassMixture(n_classes=3, dim=2, mode="covariance")
    stats.fit(x, torch.ones(len(x), dtype=torch.long))
    assert stats.fitted.tolist() == [False, True, False]
    want = torch.cov(x.T.double()) + 1e-4 * torch.eye(2, dtype=torch.float64)
    assert torch.allclose(stats.covs[1].double(), want, atol=1e-5)
    s, y = stats.sample(torch.tensor([1]), 20000, torch.Generator().manual_seed(1))
    assert y.unique().tolist() == [1] and s.shape == (20000, 2)
    # Standard errors at n = 20000: mean ~ 0.015, covariance entries ~ 0.04.
    assert torch.allclose(s.mean(0), x.mean(0), atol=0.06)
    assert torch.allclose(torch.cov(s.T).double(), want, atol=0.15)


def test_multi_centroid_mode_finds_the_clusters_and_skips_one_point_clusters() -> None:
    x, _ = _blobs([[0.0, 0.0], [10.0, 10.0]], n=200, sd=0.5)
    x = torch.cat([x, torch.tensor([[-50.0, 50.0]])])  # an outlier becomes its own one-point cluster
    stats = ClassMixture(n_classes=1, dim=2, mode="multi-centroid", n_components=3)
    stats.fit(x, torch.zeros(len(x), dtype=torch.long), seed=0)
    order = stats.means[0, :, 0].argsort()
    assert stats.count[0, order].tolist() == [1, 200, 200]
    assert torch.allclose(stats.means[0, order[1:]], torch.tensor([[0.0, 0.0], [10.0, 10.0]]), atol=0.1)
    assert torch.allclose(stats.vars[0, order[1:]], torch.full((2, 2), 0.25), atol=0.06)  # population variance
    assert len(stats.prototypes()) == 3  # the contrastive term sees every centroid
    s, y = stats.sample(torch.tensor([0]), 500, torch.Generator().manual_seed(0))
    assert len(s) == 1000 and (y == 0).all()  # 2 clusters x 500: the one-point cluster is not sampled
    near = torch.cdist(s, torch.tensor([[0.0, 0.0], [10.0, 10.0]])).min(1).values
    assert near.max() < 0.5 * 5  # within 5 sd (sqrt(0.25 + 1e-4) = 0.5) of a centroid


def test_alignment_corrects_a_head_biased_to_the_newest_class() -> None:
    """The TAP step: a head that favours class 1 everywhere is realigned on samples of both classes."""
    x, y = _blobs([[-2.0, 0.0], [2.0, 0.0]], n=300, sd=0.5)
    stats = ClassMixture(n_classes=3, dim=2, mode="variance")
    stats.fit(x, y)
    head = nn.Linear(2, 3)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor([0.0, 5.0, 9.0]))  # class 2 is unseen: masked out
    seen = torch.tensor([True, True, False])

    def acc() -> float:
        return float((head(x).masked_fill(~seen, float("-inf")).argmax(1) == y).float().mean())

    assert acc() == 0.5
    untouched = head.bias.clone()
    align(head, list(head.parameters()), stats, seen, n_prev=0, lr=0.1, epochs=3, n=32,
          generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert torch.equal(head.bias, untouched)  # no earlier classes: crct_num = 0 batches
    align(head, list(head.parameters()), stats, seen, n_prev=1, lr=0.1, epochs=20, n=64,
          generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert acc() > 0.97


def test_contrastive_term_matches_a_hand_computation() -> None:
    f = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    p = torch.tensor([[1.0, 1.0]])
    m = torch.cat([p, f])
    sim = (m @ m.T) / 0.8
    want = sum(-torch.log_softmax(sim[i], 0)[i] for i in range(3)) / 3
    assert float(contrastive_loss(f, p, 0.8)) == pytest.approx(float(want))
    assert float(contrastive_loss(f, p[:0], 0.8)) == pytest.approx(  # no prototypes yet: the batch alone
        float(torch.nn.functional.cross_entropy(f @ f.T / 0.8, torch.arange(2))))


def test_defaults_follow_the_official_cifar100_recipe() -> None:
    cfg = HiDePromptConfig()
    assert cfg.lr == pytest.approx(0.03 * 24 / 256) and cfg.tii_lr == pytest.approx(0.0005 * 24 / 256)
    assert cfg.tii_ca_lr == pytest.approx(0.005 * 24 / 256) and cfg.ca_lr == 0.005
    assert (cfg.lr_schedule, cfg.warmup_epochs, cfg.clip_grad, cfg.weight_decay) == ("step", 0, 1.0, 0.0)
    assert (cfg.length, cfg.pool_size, cfg.layers, cfg.n_centroids) == (10, 10, (0, 1, 2, 3, 4), 10)
    # timm StepLR stepped with the finished epoch: epochs 0..30 at lr, 31..49 at lr / 10.
    assert [cfg.lr_factor(e) for e in (0, 30, 31, 49)] == pytest.approx([1, 1, 0.1, 0.1])


def test_new_prompt_starts_from_the_last_and_is_mixed_with_the_earlier_ones() -> None:
    conf = METHODS.get("hide_prompt").obj.conformance_config
    method = METHODS.create("hide_prompt", **{**conf, "prompt_momentum": 0.25})
    s = toy_scenario()
    method.setup(StreamInfo(s.input_shape, s.n_classes, len(s), s.setting), 0)
    exps = list(s)
    for exp in exps[:2]:
        method.begin_experience(exp)
        prompts = [p.detach().clone() for p in method.pool.prompts]
        if exp.index == 1:
            assert all(torch.equal(p[1], p[0]) for p in prompts)  # copied at the start of the experience
        x, y = exp.train.batch(torch.arange(8))
        method.observe(Batch(x, y, None, exp.index))
        trained = [p.detach().clone() for p in method.pool.prompts]
        method.end_experience(exp)
    for before, after in zip(trained, method.pool.prompts, strict=True):
        assert torch.allclose(after[1], 0.75 * before[1] + 0.25 * before[0], atol=1e-6)
    assert method.tii.task_of[list(exps[1].classes)].tolist() == [1, 1]
    assert method.tap_stats.fitted[list(exps[0].classes) + list(exps[1].classes)].all()


def test_every_input_is_predicted_with_the_prompt_of_its_inferred_task() -> None:
    conf = METHODS.get("hide_prompt").obj.conformance_config
    method = METHODS.create("hide_prompt", **conf)
    s = toy_scenario()
    method.setup(StreamInfo(s.input_shape, s.n_classes, len(s), s.setting), 0)
    q = torch.randn(5, method.vit.embed_dim)
    assert method.infer_task(q).tolist() == [0] * 5  # nothing seen: prompt 0
    with torch.no_grad():
        method.tii.task_of[:] = torch.arange(len(method.tii.task_of)) // 2
        method.tii.head.weight.zero_()
        method.tii.head.bias.copy_(-torch.arange(len(method.tii.task_of), dtype=torch.float))
        method.tii.head.bias[3] = 10.0
    assert method.infer_task(q).tolist() == [1] * 5  # class 3 wins -> its experience, 1


def test_smoke_run_on_the_tiny_random_vit(tmp_path, capsys) -> None:
    conf = METHODS.get("hide_prompt").obj.conformance_config
    args = ["run", "--scenario", "toy", "--method", "hide_prompt", "--out", str(tmp_path), "--eval-every", "0"]
    for key in ("weights", "image_size", "patch_size", "depth", "embed_dim", "num_heads", "pool_size",
                "n_centroids", "ca_epochs", "tii_epochs", "ca_samples"):  # fmt: skip
        value = conf[key]
        args += ["--set", f"{key}={value}"]
    args += ["--set", "layers=[0,1]", "--set", "length=4"]
    assert main(args) == 0
    (path,) = tmp_path.glob("*/run.json")
    record = json.loads(path.read_text())
    assert record["status"] == "completed" and record["method"]["name"] == "hide_prompt"
    assert 0.0 <= record["metrics"]["final_acc"] <= 1.0
