"""LUCIR and PODNet (issue 16): every loss term pinned on a small example computed here from the formula.

Avalanche ships neither method, so the cross-check is the authors' definitions: each test computes the
expected value independently (plain arithmetic or a second torch implementation, e.g. the
``nn.MarginRankingLoss`` the official LUCIR code calls) and compares. Method-level tests run on the
registered ``toy`` stream (3 experiences x 2 classes, 1x4x4 inputs).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from cl_bench.components.cosine_head import CosineHead, stage_outputs
from cl_bench.core.errors import ConfigError
from cl_bench.core.registry import METHODS
from cl_bench.core.types import Batch, Scenario, StreamInfo
from cl_bench.engine.runner import run
from cl_bench.engine.spec import Protocol, RunSpec
from cl_bench.methods import lucir, podnet
from cl_bench.testing import toy_scenario


def _info(scenario: Scenario) -> StreamInfo:
    return StreamInfo(input_shape=tuple(scenario.input_shape), n_classes=scenario.n_classes,
                      n_experiences=len(scenario), setting=scenario.setting)  # fmt: skip


# -- the cosine head ---------------------------------------------------------------------------------------------


def test_cosine_head_scores_scale_times_cosine() -> None:
    head = CosineHead(2, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[2.0, 0.0], [1.0, 1.0]]))
        head.scale.fill_(3.0)
    out = head(torch.tensor([[5.0, 0.0]]))
    assert torch.allclose(out, torch.tensor([[3.0, 3.0 / math.sqrt(2)]]))


def test_lsc_merges_proxies_by_softmax_over_negative_squared_distances() -> None:
    head = CosineHead(2, 1, proxies=2, kind="lsc")
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 3.0]]))
    # normalised: f^ = (1, 0); -||f^ - w^||^2 = 0 for the first proxy, -2 for the second
    w0, w1 = 1 / (1 + math.exp(-2)), math.exp(-2) / (1 + math.exp(-2))
    expected = w0 * 0.0 + w1 * -2.0
    assert math.isclose(float(head.similarities(torch.tensor([[4.0, 0.0]])).detach()), expected, rel_tol=1e-6)


def test_frozen_rows_survive_an_optimiser_step_with_momentum_and_weight_decay() -> None:
    head = CosineHead(3, 3)
    head.frozen[0] = True
    opt = torch.optim.SGD(head.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1)
    before = head.weight.detach().clone()
    for _ in range(3):
        loss = head(torch.randn(4, 3)).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        head.keep_frozen()
        opt.step()
        head.restore_frozen()
    assert torch.equal(head.weight[0], before[0])
    assert not torch.equal(head.weight[1:], before[1:])


def test_stage_outputs_reads_the_cnn_and_resnet_stages_and_refuses_the_mlp() -> None:
    from cl_bench.nets.registry import create_model

    cnn = create_model("cnn", 4, (1, 8, 8))
    f, maps = stage_outputs(cnn, torch.randn(2, 1, 8, 8))
    assert f.shape[0] == 2 and [m.shape[1:] for m in maps] == [(50, 8, 8), (100, 4, 4)]
    r32 = create_model("resnet32", 4, (3, 32, 32))
    _, maps = stage_outputs(r32, torch.randn(2, 3, 32, 32))
    assert [m.shape[1:] for m in maps] == [(16, 32, 32), (32, 16, 16), (64, 8, 8)]
    assert not cnn._forward_hooks and all(not m._forward_hooks for m in cnn.modules())  # hooks removed
    with pytest.raises(ConfigError, match="no such stages"):
        stage_outputs(create_model("mlp", 4, (1, 8, 8)), torch.randn(2, 1, 8, 8))


# -- LUCIR's terms -----------------------------------------------------------------------------------------------


def test_less_forget_loss_is_one_minus_cosine() -> None:
    f = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    old = torch.tensor([[0.0, 1.0], [2.0, 2.0]])
    assert math.isclose(float(lucir.less_forget_loss(f, old)), (1 - 0 + 1 - 1) / 2, abs_tol=1e-7)
    official = nn.CosineEmbeddingLoss()(f, old, torch.ones(2))  # what the official code calls
    assert torch.isclose(lucir.less_forget_loss(f, old), official)


def test_margin_ranking_loss_by_hand_and_against_nn_margin_ranking_loss() -> None:
    cos = torch.tensor([[0.9, 0.1, 0.6, 0.2],   # old class 0: pairs (0.9, 0.6), (0.9, 0.2)
                        [0.2, 0.1, 0.8, 0.3],   # new class 2: no term
                        [0.0, 0.3, 0.1, 0.5]])  # old class 1: pairs (0.3, 0.5), (0.3, 0.1)  # fmt: skip
    y = torch.tensor([0, 2, 1])
    old = torch.tensor([True, True, False, False])
    new = ~old
    # max(0, 0.5 - gt + novel): 0.2, 0.0, 0.7, 0.3 -> mean 0.3
    assert math.isclose(float(lucir.margin_ranking_loss(cos, y, old, new, 2, 0.5)), 0.3, abs_tol=1e-6)
    gt = torch.tensor([0.9, 0.9, 0.3, 0.3])
    novel = torch.tensor([0.6, 0.2, 0.5, 0.1])
    official = nn.MarginRankingLoss(margin=0.5)(gt, novel, torch.ones(4))
    assert torch.isclose(lucir.margin_ranking_loss(cos, y, old, new, 2, 0.5), official)
    # K = 1: only the hardest new class, (0.2 + 0.7) / 2
    assert math.isclose(float(lucir.margin_ranking_loss(cos, y, old, new, 1, 0.5)), 0.45, abs_tol=1e-6)
    # no old-class example in the batch: no term
    assert float(lucir.margin_ranking_loss(cos[1:2], y[1:2], old, new, 2, 0.5)) == 0.0


def _walk(method: object, scenario: Scenario, steps: bool = True) -> list[dict[str, object]]:
    """Run ``method`` over the stream by hand; after each experience's begin, record what it set."""
    seen = []
    for exp in scenario:
        method.begin_experience(exp)
        seen.append({"lam": getattr(method, "lam", None), "factor": getattr(method, "factor", None),
                     "weight": method.net.head.weight.detach().clone(),
                     "frozen": method.net.head.frozen.clone()})  # fmt: skip
        data = method.train_data(exp)
        if steps:
            for i in range(0, len(data), 40):
                x, y = data.batch(slice(i, i + 40))
                method.observe(Batch(x, y, None, exp.index))
        method.end_experience(exp)
    return seen


def test_lucir_adaptive_lambda_imprinting_and_frozen_old_weights() -> None:
    scenario = toy_scenario()
    method = METHODS.create("lucir", buffer_size=30)
    method.setup(_info(scenario), 0)
    assert isinstance(method.net.head, CosineHead)
    seen = _walk(method, scenario)
    # lambda_base * sqrt(n_old / n_new): 5 (first experience, no constraint), 5 * sqrt(2/2), 5 * sqrt(4/2)
    assert [s["lam"] for s in seen] == [5.0, 5.0, pytest.approx(5 * math.sqrt(2))]
    assert math.isclose(lucir.adaptive_lambda(5, 50, 10), 5 * math.sqrt(5))
    c0, c01 = list(scenario[0].classes), list(scenario[0].classes) + list(scenario[1].classes)
    assert [sorted(torch.nonzero(s["frozen"]).flatten().tolist()) for s in seen] == [[], sorted(c0), sorted(c01)]
    # old rows never move after their experience
    final = method.net.head.weight.detach()
    assert torch.equal(final[c0], seen[1]["weight"][c0]) and torch.equal(final[c01], seen[2]["weight"][c01])


def test_lucir_imprints_the_normalised_class_mean_times_the_old_norm() -> None:
    scenario = toy_scenario()
    method = METHODS.create("lucir", buffer_size=30)
    method.setup(_info(scenario), 0)
    exp0, exp1 = scenario[0], scenario[1]
    method.begin_experience(exp0)
    method.end_experience(exp0)
    old_norm = method.net.head.weight[list(exp0.classes)].detach().norm(dim=1).mean()
    method.net.eval()
    with torch.no_grad():
        x, y = exp1.train.batch(slice(None))
        f = method.net.features(x)
    method.begin_experience(exp1)
    for c in exp1.classes:
        fc = f[y == c] / f[y == c].norm(dim=1, keepdim=True)
        expected = fc.mean(0) / fc.mean(0).norm() * old_norm
        assert torch.allclose(method.net.head.weight[c], expected, atol=1e-5)


@pytest.mark.parametrize(("method", "config"), [("lucir", {"classifier": "nme"}),
                                                 ("lucir", {"balanced_finetune": True, "finetune_epochs": 2}),
                                                 ("podnet", {"finetune_epochs": 1})])  # fmt: skip
def test_runs_report_their_exemplars_and_bytes(tmp_path: Path, method: str, config: dict) -> None:
    spec = RunSpec(method=method, method_config={"buffer_size": 30, **config}, scenario="toy",
                   protocol=Protocol(eval_every=0, epochs=1), seed=0)  # fmt: skip
    record = run(spec, tmp_path)
    x = toy_scenario()[0].train.x
    row = x[0].numel() * x.element_size()
    assert record["status"] == "completed" and record["cost"]["exemplars"] == 30
    assert record["cost"]["buffer_bytes"] == 30 * (row + 8)  # stored inputs + task id, as iCaRL


# -- PODNet's terms ----------------------------------------------------------------------------------------------


def _pod_by_hand(a: list[list[float]], b: list[list[float]]) -> float:
    """One 1-channel stage: squares pooled over width (rows) and height (columns), normalised, distance."""

    def pooled(m: list[list[float]]) -> list[float]:
        sq = [[v * v for v in row] for row in m]
        rows = [sum(row) for row in sq]
        cols = [sum(sq[i][j] for i in range(len(sq))) for j in range(len(sq[0]))]
        v = rows + cols
        n = math.sqrt(sum(t * t for t in v))
        return [t / n for t in v]

    pa, pb = pooled(a), pooled(b)
    return math.sqrt(sum((s - t) ** 2 for s, t in zip(pa, pb, strict=True)))


def test_pod_spatial_pools_width_and_height_and_averages_stages() -> None:
    a1, b1 = [[1.0, 2.0], [3.0, 4.0]], [[1.0, 1.0], [1.0, 1.0]]
    a2, b2 = [[0.0, 1.0], [2.0, 0.0]], [[1.0, 0.0], [0.0, 2.0]]
    maps = [torch.tensor([[a1]]), torch.tensor([[a2]])]
    old = [torch.tensor([[b1]]), torch.tensor([[b2]])]
    expected = (_pod_by_hand(a1, b1) + _pod_by_hand(a2, b2)) / 2
    assert math.isclose(float(podnet.pod_spatial_loss(maps, old)), expected, rel_tol=1e-6)
    # two examples: the batch mean of the per-example distances
    two = [torch.tensor([[a1], [a2]])], [torch.tensor([[b1], [b2]])]
    assert math.isclose(float(podnet.pod_spatial_loss(*two)), expected, rel_tol=1e-6)
    assert float(podnet.pod_spatial_loss(maps, [m.clone() for m in maps])) == 0.0


def test_pod_flat_is_one_minus_cosine() -> None:
    f, old = torch.tensor([[3.0, 4.0]]), torch.tensor([[4.0, 3.0]])
    assert math.isclose(float(podnet.pod_flat_loss(f, old)), 1 - 24 / 25, rel_tol=1e-6)


def test_nca_official_and_paper_variants_by_hand() -> None:
    sims = torch.tensor([[-0.5, -1.0, -2.0]])
    y = torch.tensor([0])
    eta, delta = torch.tensor(2.0), 0.6
    s = [-1.0, -2.0, -4.0]  # eta * sims
    # official: log(sum_{j != y} exp(eta s_j) + exp(max eta s)) - eta s_y; the margin cancels
    official = math.log(math.exp(s[1]) + math.exp(s[2]) + math.exp(max(s))) - s[0]
    assert math.isclose(float(podnet.nca_loss(sims, y, eta, delta)), official, rel_tol=1e-6)
    assert math.isclose(float(podnet.nca_loss(sims, y, eta, 0.0)), official, rel_tol=1e-6)
    # the paper's formula: [-eta (s_y - delta) + log sum_{j != y} exp(eta s_j)]_+
    paper = max(0.0, -2.0 * (-0.5 - delta) + math.log(math.exp(s[1]) + math.exp(s[2])))
    assert math.isclose(float(podnet.nca_loss(sims, y, eta, delta, variant="paper")), paper, rel_tol=1e-6)
    # classes outside ``allowed`` do not compete
    allowed = torch.tensor([True, True, False])
    official2 = math.log(math.exp(s[1]) + math.exp(max(s[:2]))) - s[0]
    assert math.isclose(float(podnet.nca_loss(sims, y, eta, delta, allowed)), official2, rel_tol=1e-6)


def test_kmeans_finds_two_separated_clusters() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(20, 2, generator=gen) * 0.01 + 5, torch.randn(20, 2, generator=gen) * 0.01 - 5])
    c = podnet.kmeans(x, 2, torch.Generator().manual_seed(1))
    c = c[c[:, 0].argsort()]
    assert torch.allclose(c, torch.tensor([[-5.0, -5.0], [5.0, 5.0]]), atol=0.05)
    assert podnet.kmeans(x[:3], 10, gen).shape == (10, 2)  # fewer points than proxies


def test_podnet_adaptive_factor_imprinting_and_frozen_proxies() -> None:
    scenario = toy_scenario()
    method = METHODS.create("podnet", buffer_size=30, finetune_epochs=1)
    method.setup(_info(scenario), 0)
    head = method.net.head
    assert head.kind == "lsc" and head.weight.shape[0] == 6 * 10
    seen = _walk(method, scenario)
    # sqrt(n_seen / n_new): 1 (first), sqrt(4/2), sqrt(6/2)
    assert [s["factor"] for s in seen] == [1.0, pytest.approx(math.sqrt(2)), pytest.approx(math.sqrt(3))]
    assert math.isclose(podnet.adaptive_factor(3, 60, 10), 3 * math.sqrt(6))

    # imprinted proxies of the new classes have the old rows' mean norm (k-means centres of unit vectors
    # are shorter than 1, so at most that norm)
    def rows(*exps: int) -> torch.Tensor:
        mask = torch.zeros(6, dtype=torch.bool)
        for e in exps:
            mask[list(scenario[e].classes)] = True
        return head.rows(mask)

    w1 = seen[1]["weight"]
    old_norm = w1[rows(0)].norm(dim=1).mean()
    assert bool((w1[rows(1)].norm(dim=1) <= old_norm * (1 + 1e-5)).all())
    assert not torch.equal(w1[rows(1)], seen[0]["weight"][rows(1)])  # imprinted, not the initial rows
    # old proxies move only in the balanced finetuning: with it off they stay
    method = METHODS.create("podnet", buffer_size=30, balanced_finetune=False)
    method.setup(_info(scenario), 0)
    seen = _walk(method, scenario)
    final = method.net.head.weight.detach()
    assert torch.equal(final[rows(0)], seen[1]["weight"][rows(0)])
    assert torch.equal(final[rows(0, 1)], seen[2]["weight"][rows(0, 1)])


def test_podnet_refuses_a_network_without_spatial_stages(tmp_path: Path) -> None:
    scenario = toy_scenario()
    method = METHODS.create("podnet", model="mlp")
    with pytest.raises(ConfigError, match="model=cnn"):
        method.setup(_info(scenario), 0)
    spec = RunSpec(method="podnet", method_config={"model": "mlp"}, scenario="toy",
                   protocol=Protocol(eval_every=0, epochs=1), seed=0)  # fmt: skip
    with pytest.raises(ConfigError):
        run(spec, tmp_path)
