"""DER with Avalanche's memory policy, X-DER's logit updates and ER-AML's metric loss (issue 16).

Runs use the registered ``toy`` stream (3 experiences x 2 classes of Gaussian blobs, 80 training examples
each); hand examples pin the update rules.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cl_bench.core.errors import ConfigError
from cl_bench.core.registry import METHODS
from cl_bench.core.types import Batch, Scenario, StreamInfo
from cl_bench.engine.runner import run
from cl_bench.engine.spec import Protocol, RunSpec
from cl_bench.testing import toy_scenario


def _info(scenario: Scenario) -> StreamInfo:
    return StreamInfo(input_shape=tuple(scenario.input_shape), n_classes=scenario.n_classes,
                      n_experiences=len(scenario), setting=scenario.setting)  # fmt: skip


def _train(method: object, experiences: list, upto: int, batch: int = 20) -> None:
    for exp in list(experiences)[:upto]:
        method.begin_experience(exp)
        assert exp.train is not None
        for i in range(0, len(exp.train), batch):
            x, y = exp.train.batch(slice(i, i + batch))
            method.observe(Batch(x, y, None, exp.index))
        method.end_experience(exp)


# -- DER with memory=balanced_at_end (Avalanche 0.6's DER memory) ------------------------------------------------


def test_der_balanced_memory_is_filled_at_experience_end_with_trained_logits() -> None:
    scenario = toy_scenario()
    method = METHODS.create("der", buffer_size=30, memory="balanced_at_end")
    method.setup(_info(scenario), 0)
    exp = scenario[0]
    method.begin_experience(exp)
    x, y = exp.train.batch(slice(0, 20))
    method.observe(Batch(x, y, None, 0))
    assert len(method.buffer) == 0  # nothing stored while the experience runs, so no replay in the first one
    method.end_experience(exp)
    assert len(method.buffer) == 30
    assert sorted(torch.unique(method.buffer.y, return_counts=True)[1].tolist()) == [15, 15]
    method.net.eval()
    with torch.no_grad():
        expected = method.net(method.buffer.x)
    assert torch.allclose(method.buffer.logits, expected)  # the trained network's logits, eval mode
    kept = {tuple(r.flatten().tolist()): lg for r, lg in zip(method.buffer.x, method.buffer.logits, strict=True)}
    _train(method, [scenario[1]], 1)
    counts = torch.unique(method.buffer.y, return_counts=True)[1]
    assert len(method.buffer) == 30 and sorted(counts.tolist()) == [7, 7, 8, 8]
    old = [(kept[k], lg) for r, lg in zip(method.buffer.x, method.buffer.logits, strict=True)
           if (k := tuple(r.flatten().tolist())) in kept]  # fmt: skip
    assert len(old) == sum(int(c) in scenario[0].classes for c in method.buffer.y)  # the first experience's
    assert all(torch.equal(a, b) for a, b in old)  # old examples keep the logits they were stored with


def test_der_balanced_memory_refuses_budget_below_classes(tmp_path: Path) -> None:
    spec = RunSpec(method="derpp", method_config={"buffer_size": 4, "memory": "balanced_at_end"}, scenario="toy",
                   protocol=Protocol(eval_every=0, epochs=1), seed=0)  # fmt: skip
    with pytest.raises(ConfigError, match="buffer_size=4"):
        run(spec, tmp_path)


def test_der_rejects_unknown_memory() -> None:
    with pytest.raises(ValueError, match="memory"):
        METHODS.create("der", memory="fifo")


# -- X-DER (mammoth models/xder.py) --------------------------------------------------------------------------------


def test_xder_update_logits_on_a_hand_example() -> None:
    from cl_bench.methods.xder import update_logits

    old = torch.tensor([[2.0, 0.5, 0.1, 0.0],   # label 0, stored logit 2
                        [1.0, 3.0, 0.2, 0.1]])  # label 1, stored logit 3  # fmt: skip
    new = torch.tensor([[9.0, 9.0, 4.0, 1.0],   # future max 4 > 2: scaled by 0.85 * 2 / 4 = 0.425
                        [9.0, 9.0, 2.0, -1.0]])  # future max 2 < 3: copied as is  # fmt: skip
    cols = torch.tensor([False, False, True, True])
    out = update_logits(old, new, torch.tensor([0, 1]), cols, gamma=0.85)
    expected = torch.tensor([[2.0, 0.5, 1.7, 0.425],
                             [1.0, 3.0, 2.0, -1.0]])  # fmt: skip
    assert torch.allclose(out, expected)
    assert torch.equal(old[0], torch.tensor([2.0, 0.5, 0.1, 0.0]))  # the input is left alone
    # the past update of mammoth's end_task: old = new, the past columns capped at gamma x the own logit
    past = update_logits(new[:1], new[:1], torch.tensor([2]), torch.tensor([True, True, False, False]), 0.85)
    assert torch.allclose(past, torch.tensor([[0.85 * 4.0, 0.85 * 4.0, 4.0, 1.0]]))


def test_xder_supcon_matches_the_definition() -> None:
    from cl_bench.methods.xder import supcon_sum

    torch.manual_seed(0)
    feats = torch.nn.functional.normalize(torch.randn(3, 2, 4), dim=2)
    labels = torch.tensor([0, 1, 0])
    t = 5.0
    rows = [(i, j) for j in range(2) for i in range(3)]  # view-major, as the code
    total = 0.0
    for a, (ia, ja) in enumerate(rows):
        others = [b for b in range(len(rows)) if b != a]
        denom = sum(torch.exp(feats[ia, ja] @ feats[rows[b][0], rows[b][1]] / t) for b in others)
        pos = [b for b in others if labels[rows[b][0]] == labels[ia]]
        total += -sum(feats[ia, ja] @ feats[rows[b][0], rows[b][1]] / t - torch.log(denom) for b in pos) / len(pos)
    expected = total / 2  # mean over the 2 views, summed over the 3 examples
    assert torch.isclose(supcon_sum(feats, labels, t), torch.as_tensor(expected), atol=1e-5)


def test_xder_memory_is_balanced_and_future_logits_are_updated_at_experience_end() -> None:
    scenario = toy_scenario()
    method = METHODS.create("xder", buffer_size=30, lr=0.1)
    method.setup(_info(scenario), 0)
    _train(method, list(scenario), 1)
    first = set(scenario[0].classes)
    assert len(method.buffer) == 30 and set(method.buffer.y.tolist()) == first
    stored = method.buffer.logits.clone()
    _train(method, [scenario[1]], 1)
    counts = torch.unique(method.buffer.y, return_counts=True)[1]
    assert len(method.buffer) <= 30 and sorted(counts.tolist()) == [7, 7, 8, 8]
    old_rows = torch.tensor([int(c) in first for c in method.buffer.y])
    second = torch.tensor([c in scenario[1].classes for c in range(6)])
    # the old examples' past-head (first experience) columns are never rewritten ...
    past_cols = torch.tensor([c in first for c in range(6)])
    assert all(any(torch.equal(r[past_cols], s[past_cols]) for s in stored) for r in method.buffer.logits[old_rows])
    # ... while their present-head columns were rewritten and, where the ground-truth logit is positive (the
    # rule's scale is negative otherwise, as in mammoth), stay at or below it
    lg, yy = method.buffer.logits[old_rows], method.buffer.y[old_rows]
    gt = lg[torch.arange(len(yy)), yy]
    assert not any(torch.equal(r[second], s[second]) for r in lg for s in stored)
    assert (gt > 0).sum() >= 3 and (lg[gt > 0][:, second].max(1).values <= gt[gt > 0] + 1e-5).all()
    # the new examples' past-head logits were capped by the past update
    lg, yy = method.buffer.logits[~old_rows], method.buffer.y[~old_rows]
    gt = lg[torch.arange(len(yy)), yy]
    assert (gt > 0).sum() >= 3 and (lg[gt > 0][:, past_cols].max(1).values <= gt[gt > 0] + 1e-5).all()


def test_xder_stream_term_moves_only_the_present_head_and_not_its_level() -> None:
    # mammoth 0d727a7 models/xder.py:156: the incoming batch's CE sees the present head only, so its gradient
    # on the output biases is zero outside that head and sums to zero inside it: nothing in the stream term
    # lifts the present head above the past ones (docs/methods.md, why the last experience scores low).
    scenario = toy_scenario()
    method = METHODS.create("xder", buffer_size=30, lr=0.5, alpha=0.0, beta=0.0, lambd=0.0,
                            past_constraint=False, future_constraint=False)  # fmt: skip
    method.setup(_info(scenario), 0)
    _train(method, list(scenario), 1)
    exp = scenario[1]
    method.begin_experience(exp)
    bias = [m for m in method.net.modules() if isinstance(m, torch.nn.Linear)][-1].bias
    before = bias.detach().clone()
    assert exp.train is not None
    x, y = exp.train.batch(slice(0, 20))
    method.observe(Batch(x, y, None, exp.index))
    step = bias.detach() - before
    present = torch.tensor([c in exp.classes for c in range(6)])
    assert step[present].abs().max() > 1e-3  # the present head did learn
    assert step[~present].abs().max() < 1e-7 and abs(float(step[present].sum())) < 1e-6


def test_xder_refuses_domain_incremental_streams() -> None:
    scenario = toy_scenario()
    info = StreamInfo(input_shape=tuple(scenario.input_shape), n_classes=6, n_experiences=3, setting="domain_il")
    with pytest.raises(ConfigError, match="domain-incremental"):
        METHODS.create("xder").setup(info, 0)


# -- ER-AML (github.com/pclucas14/AML methods/er_aml.py) -----------------------------------------------------------


def test_aml_loss_on_a_hand_example() -> None:
    from cl_bench.methods.er_aml import aml_loss

    anchor = torch.tensor([[1.0, 0.0]])
    contrast = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # its positive, then a negative
    t, base = 0.2, 0.07
    # log softmax of the positive over (1/t, 0/t), scaled by t / base
    expected = -(t / base) * (5.0 - torch.log(torch.exp(torch.tensor(5.0)) + 1.0))
    got = aml_loss(anchor, torch.tensor([3]), contrast, torch.tensor([3, 4]), t, base)
    assert torch.isclose(got, expected)
    # a closer positive lowers the loss; a closer negative raises it
    assert aml_loss(anchor, torch.tensor([3]), torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.tensor([3, 4]),
                    t, base) > got  # fmt: skip


def test_er_aml_draws_valid_positives_and_negatives() -> None:
    scenario = toy_scenario()
    method = METHODS.create("er_aml", buffer_size=30)
    method.setup(_info(scenario), 0)
    method.begin_experience(scenario[0])
    x, y = scenario[0].train.batch(slice(0, 20))
    method.observe(Batch(x, y, None, 0))
    assert len(method.buffer) == 20
    x2, y2 = scenario[0].train.batch(slice(20, 30))
    y2 = y2.clone()
    y2[:] = y2[0]  # one label only: no negative exists among the batch's labels
    *_, invalid = method.positives_negatives(x2, y2)
    assert invalid.all()
    x3, y3 = scenario[0].train.batch(20 + torch.randperm(60, generator=torch.Generator().manual_seed(0))[:20])
    assert len(y3.unique()) == 2
    pos_x, neg_x, pos_y, neg_y, invalid = method.positives_negatives(x3, y3)
    assert not invalid.any() and torch.equal(pos_y, y3) and (neg_y != y3).all()
    assert set(neg_y.tolist()) <= set(y3.tolist())  # negatives from the incoming batch's labels
    assert not any(torch.equal(p, a) for p, a in zip(pos_x, x3, strict=True))  # never itself
    method.observe(Batch(x3, y3, None, 0))  # the metric-loss step runs


def test_er_aml_needs_network_features(monkeypatch: pytest.MonkeyPatch) -> None:
    import cl_bench.families.supervised as sup

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 6))  # no `features`
    monkeypatch.setattr(sup, "build_network", lambda cfg, info: (net, torch.optim.SGD(net.parameters(), lr=0.1)))
    with pytest.raises(ConfigError, match="features"):
        METHODS.create("er_aml").setup(_info(toy_scenario()), 0)


# -- MIR with Avalanche's candidate exclusion (benchmarks/crosscheck.py pair mir_avl) ------------------------------


def test_mir_exclude_last_classes_leaves_the_last_batch_classes_out_of_the_candidates() -> None:
    scenario = toy_scenario()
    method = METHODS.create("mir", buffer_size=30, memory="balanced_at_end", exclude_last_classes=True,
                            subsample=20, replay_batch_size=5)  # fmt: skip
    method.setup(_info(scenario), 0)
    _train(method, list(scenario), 1)
    last = scenario[0].train.batch(slice(60, 80))[1].unique()  # _train's last batch of the first experience
    assert torch.equal(method.excluded, last) and len(last) == 1
    exp = scenario[1]
    method.begin_experience(exp)
    x, y = exp.train.batch(slice(0, 20))
    picked = method.retrieve(torch.nn.functional.cross_entropy(method.net(x), y), task_il=False)
    assert picked is not None and len(picked[1]) == 5 and not torch.isin(picked[1], last).any()
    method.excluded = method.buffer.y.unique()  # every memory class excluded: no replay, as Avalanche
    assert method.retrieve(torch.nn.functional.cross_entropy(method.net(x), y), task_il=False) is None
    with pytest.raises(ValueError, match="balanced_at_end"):
        METHODS.create("mir", exclude_last_classes=True)
