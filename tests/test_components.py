"""Shared components: the reservoir memory, the Fisher penalty and the diagonal Fisher."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cl_bench.components import FisherPenalty, ReservoirBuffer, diagonal_fisher


# -- ReservoirBuffer -------------------------------------------------------------------------------------------------
def _feed(buf: ReservoirBuffer, n: int, batch_sizes: list[int], start: int = 0) -> None:
    """Offer examples ``start..start+n-1`` (x = its index, y = index % 10) in batches of cycling sizes."""
    i, k = start, 0
    while i < start + n:
        b = min(batch_sizes[k % len(batch_sizes)], start + n - i)
        x = torch.arange(i, i + b, dtype=torch.float32).unsqueeze(1)
        buf.add(x, torch.arange(i, i + b) % 10, torch.full((b,), i // 1000))
        i, k = i + b, k + 1


def test_reservoir_capacity_is_never_exceeded() -> None:
    buf = ReservoirBuffer(50, seed=0)
    assert len(buf) == 0
    sizes = [1, 7, 0, 33, 64, 2, 120]
    seen = 0
    for step in range(60):
        b = sizes[step % len(sizes)]
        buf.add(torch.randn(b, 3), torch.zeros(b, dtype=torch.long))
        seen += b
        assert len(buf) == min(seen, 50) and buf.seen == seen
        if len(buf):
            x, y, t = buf.sample(1000)
            assert len(x) == len(y) == len(t) == len(buf)  # never more than stored, without replacement
    assert buf.x is not None and len(buf.x) == 50


def test_reservoir_keeps_everything_until_full_and_stores_task_ids() -> None:
    buf = ReservoirBuffer(10, seed=0)
    buf.add(torch.arange(4.0).unsqueeze(1), torch.arange(4), torch.tensor([3, 3, 3, 3]))
    buf.add(torch.arange(4.0, 7.0).unsqueeze(1), torch.arange(4, 7))  # no task ids -> -1
    x, y, t = buf.sample(10)
    order = x.squeeze(1).argsort()
    assert x.squeeze(1)[order].tolist() == list(range(7)) and y[order].tolist() == list(range(7))
    assert t[order].tolist() == [3, 3, 3, 3, -1, -1, -1]


def test_storage_grows_with_the_stream_not_the_capacity() -> None:
    """A capacity of 10**9 must not allocate 10**9 slots up front (issue 13: 256 GB for a 1,438-example
    stream); storage follows what is stored, and the sample equals that of a right-sized buffer."""
    from cl_bench.components.buffer import LogitReservoirBuffer

    huge, small = LogitReservoirBuffer(10**9, seed=3), LogitReservoirBuffer(100, seed=3)
    for i in range(0, 70, 7):
        for buf in (huge, small):
            buf.add_with_logits(torch.arange(i, i + 7.0).unsqueeze(1), torch.arange(7), torch.randn(7, 3))
    assert huge.x is not None and huge.logits is not None and len(huge.x) <= 2 * 70 and len(huge.logits) == len(huge.x)
    assert len(huge) == len(small) == 70
    assert torch.equal(huge.x[:70], small.x[:70]) and torch.equal(huge.t[:70], small.t[:70])  # type: ignore[index]


def test_zero_capacity_stores_nothing() -> None:
    buf = ReservoirBuffer(0)
    buf.add(torch.randn(5, 2), torch.zeros(5, dtype=torch.long))
    assert len(buf) == 0 and buf.seen == 5
    with pytest.raises(ValueError):
        ReservoirBuffer(-1)


def test_reservoir_sample_is_uniform_over_the_stream() -> None:
    """After 20,000 examples, the 1,000 kept are spread evenly over the stream (chi-square, 20 bins).

    Keeping the first or last N, or favouring recent batches, puts most of the memory in a few bins; a
    uniform sample gives chi2 with 19 degrees of freedom, below 43.8 with probability 0.999.
    """
    n, capacity, bins = 20_000, 1_000, 20
    buf = ReservoirBuffer(capacity, seed=123)
    _feed(buf, n, [32, 10, 64, 1, 17])
    kept = buf.x[: len(buf)].squeeze(1).long()
    assert len(kept) == capacity and len(kept.unique()) == capacity  # each example stored at most once
    assert torch.equal(buf.y[: len(buf)], kept % 10)  # inputs and labels stay paired
    counts = torch.bincount(kept * bins // n, minlength=bins).double()
    expected = capacity / bins
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 43.8, f"memory is not a uniform sample of the stream: bin counts {counts.tolist()}"
    assert abs(kept.double().mean().item() / n - 0.5) < 0.04  # 4.4 standard errors


def test_reservoir_inclusion_probability_is_capacity_over_seen() -> None:
    """Over many seeds, every example of a 24-long stream is kept with probability 6/24 (also the first/last)."""
    trials, n, capacity = 2000, 24, 6
    hits = torch.zeros(n)
    for seed in range(trials):
        buf = ReservoirBuffer(capacity, seed=seed)
        _feed(buf, n, [5, 3])
        hits[buf.x[: len(buf)].squeeze(1).long()] += 1
    p = capacity / n
    sd = (trials * p * (1 - p)) ** 0.5  # ~19.4
    assert ((hits - trials * p).abs() < 5 * sd).all(), f"inclusion counts {hits.tolist()}, expected {trials * p}"
    # The examples that filled the memory and the later ones, as groups: an off-by-one in the replacement
    # probability (k / (seen - 1)) keeps the first ones with probability 5/23 instead of 6/24, 8 sd too few.
    for group in (hits[:capacity], hits[capacity:]):
        assert abs(group.sum().item() - len(group) * trials * p) < 4 * sd * len(group) ** 0.5


@pytest.mark.parametrize("through_file", [False, True], ids=["in_memory", "torch_save"])
def test_reservoir_state_dict_reproduces_future_samples(through_file: bool) -> None:
    original = ReservoirBuffer(100, seed=7)
    _feed(original, 500, [16, 9])
    original.sample(20)  # advance the generator a little
    state = copy.deepcopy(original.state_dict())  # like nn.Module.state_dict, the tensors are live references
    if through_file:
        blob = io.BytesIO()
        torch.save(state, blob)
        blob.seek(0)
        state = torch.load(blob, weights_only=False)
    restored = ReservoirBuffer(100, seed=999)  # a different seed: everything must come from the state
    restored.load_state_dict(state)
    assert len(restored) == len(original) and restored.seen == original.seen
    for buf in (original, restored):
        _feed(buf, 300, [16, 9], start=500)
    for _ in range(5):
        for a, b in zip(original.sample(32), restored.sample(32), strict=True):
            assert torch.equal(a, b)
    assert torch.equal(original.x, restored.x)


# -- FisherPenalty ---------------------------------------------------------------------------------------------------
def _linear(w: list[list[float]], b: list[float]) -> nn.Linear:
    layer = nn.Linear(len(w[0]), len(w))
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(w))
        layer.bias.copy_(torch.tensor(b))
    return layer


def _set(layer: nn.Linear, w: list[list[float]], b: list[float]) -> None:
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(w))
        layer.bias.copy_(torch.tensor(b))


def test_penalty_is_zero_before_any_anchor_and_at_the_anchor() -> None:
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    penalty = FisherPenalty(10.0)
    assert penalty(net) == 0.0
    penalty.consolidate(net, {k: torch.rand_like(p) + 0.5 for k, p in net.named_parameters()})
    value = penalty(net)
    assert isinstance(value, torch.Tensor) and value.item() == 0.0
    value.backward()
    assert all(p.grad is not None and p.grad.abs().max() == 0 for p in net.parameters())


def test_penalty_equals_hand_computed_value() -> None:
    net = _linear([[1.0, 2.0]], [0.5])
    penalty = FisherPenalty(4.0)  # lambda = 4
    penalty.consolidate(net, {"weight": torch.tensor([[2.0, 0.5]]), "bias": torch.tensor([3.0])})
    _set(net, [[2.0, 0.0]], [1.0])  # deltas: weight (1, -2), bias 0.5
    # lambda/2 * (2*1^2 + 0.5*(-2)^2 + 3*0.5^2) = 2 * (2 + 2 + 0.75) = 9.5
    value = penalty(net)
    assert value.item() == pytest.approx(9.5)
    value.backward()
    # d/dtheta = lambda * F * delta: weight (4*2*1, 4*0.5*-2) = (8, -4), bias 4*3*0.5 = 6
    assert net.weight.grad.tolist() == [[8.0, -4.0]] and net.bias.grad.tolist() == [6.0]


def test_separate_mode_sums_one_term_per_anchor() -> None:
    net = _linear([[0.0]], [0.0])
    penalty = FisherPenalty(2.0, mode="separate")
    penalty.consolidate(net, {"weight": torch.tensor([[1.0]]), "bias": torch.tensor([0.0])})  # anchor w=0
    _set(net, [[1.0]], [0.0])
    penalty.consolidate(net, {"weight": torch.tensor([[3.0]]), "bias": torch.tensor([0.0])})  # anchor w=1
    _set(net, [[2.0]], [0.0])
    # 2/2 * (1 * (2-0)^2 + 3 * (2-1)^2) = 4 + 3 = 7
    assert penalty(net).item() == pytest.approx(7.0)
    assert len(penalty.anchors) == 2


def test_separate_penalty_of_many_anchors_matches_the_term_by_term_sum() -> None:
    """Several anchors are evaluated as one quadratic: same value and gradient as summing every term."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 5))
    penalty = FisherPenalty(100.0, mode="separate")
    for i in range(4):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        imp = {k: torch.rand_like(p) * (i + 1) for k, p in net.named_parameters()}
        imp["0.bias"][:3] = 0.0  # parameters no anchor cares about
        penalty.consolidate(net, imp)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p))
    named = dict(net.named_parameters())
    naive = 50.0 * sum((imp[k] * (named[k] - ref[k]).pow(2)).sum() for ref, imp in penalty.anchors for k in imp)
    want = torch.autograd.grad(naive, list(named.values()))
    value = penalty(net)
    got = torch.autograd.grad(value, list(named.values()))
    assert value.item() == pytest.approx(naive.item(), rel=1e-6)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6 * w.abs().max().item())


def test_online_mode_decays_importance_and_keeps_one_anchor() -> None:
    net = _linear([[0.0]], [0.0])
    penalty = FisherPenalty(2.0, mode="online", decay=0.5)
    penalty.consolidate(net, {"weight": torch.tensor([[4.0]]), "bias": torch.tensor([2.0])})
    _set(net, [[1.0]], [1.0])
    penalty.consolidate(net, {"weight": torch.tensor([[1.0]]), "bias": torch.tensor([0.0])})
    assert len(penalty.anchors) == 1
    ref, imp = penalty.anchors[0]
    assert ref["weight"].item() == 1.0 and ref["bias"].item() == 1.0  # anchored at the latest solution
    assert imp["weight"].item() == 0.5 * 4.0 + 1.0 and imp["bias"].item() == 0.5 * 2.0  # gamma * old + new
    _set(net, [[3.0]], [0.0])
    # 2/2 * (3 * (3-1)^2 + 1 * (0-1)^2) = 12 + 1 = 13
    assert penalty(net).item() == pytest.approx(13.0)
    # A third consolidation decays the accumulated importance again: 0.5 * 3 + 2 = 3.5.
    penalty.consolidate(net, {"weight": torch.tensor([[2.0]]), "bias": torch.tensor([0.0])})
    assert penalty.anchors[0][1]["weight"].item() == pytest.approx(3.5)


def test_penalty_state_dict_round_trip() -> None:
    net = _linear([[1.0, -1.0]], [0.0])
    penalty = FisherPenalty(3.0, mode="online", decay=0.9)
    penalty.consolidate(net, {"weight": torch.ones(1, 2), "bias": torch.ones(1)})
    blob = io.BytesIO()
    torch.save(penalty.state_dict(), blob)
    blob.seek(0)
    restored = FisherPenalty(3.0, mode="online", decay=0.9)
    restored.load_state_dict(torch.load(blob, weights_only=False))
    _set(net, [[0.0, 0.0]], [2.0])
    assert restored(net).item() == pytest.approx(penalty(net).item()) == pytest.approx(1.5 * (1 + 1 + 4))


# -- diagonal_fisher -------------------------------------------------------------------------------------------------
def _naive_fisher(net: nn.Module, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> dict:
    """Mean over examples of the squared gradient of -log p(y|x), one backward pass per example."""
    net.eval()
    params = {k: p for k, p in net.named_parameters() if p.requires_grad}
    total = {k: torch.zeros_like(p) for k, p in params.items()}
    for i in range(len(x)):
        net.zero_grad()
        out = net(x[i : i + 1])
        if mask is not None:
            out = out.masked_fill(~mask[i : i + 1], float("-inf"))
        F.cross_entropy(out, y[i : i + 1]).backward()
        for k, p in params.items():
            total[k] += p.grad**2
    return {k: v / len(x) for k, v in total.items()}


def _tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 4))


def test_diagonal_fisher_equals_a_per_example_loop() -> None:
    net = _tiny_net()
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(23, 5, generator=gen), torch.randint(0, 4, (23,), generator=gen)
    fisher = diagonal_fisher(net, [(x[:10], y[:10]), (x[10:], y[10:])])  # uneven batches
    naive = _naive_fisher(net, x, y)
    assert fisher.keys() == naive.keys()
    for k in naive:
        torch.testing.assert_close(fisher[k], naive[k], rtol=1e-5, atol=1e-7)
    # Not the square of the mean gradient (a common mistake): that is much smaller here.
    net.zero_grad()
    F.cross_entropy(net(x), y).backward()
    assert fisher["2.weight"].sum() > 2 * (net[2].weight.grad ** 2).sum()


def test_diagonal_fisher_with_a_class_mask() -> None:
    net = _tiny_net()
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(12, 5, generator=gen)
    allowed = torch.tensor([True, True, False, False])
    y = torch.randint(0, 2, (12,), generator=gen)
    fisher = diagonal_fisher(net, [(x, y)], mask=lambda xb: allowed.expand(len(xb), -1))
    naive = _naive_fisher(net, x, y, allowed.expand(12, -1))
    for k in naive:
        torch.testing.assert_close(fisher[k], naive[k], rtol=1e-5, atol=1e-7)
    assert fisher["2.bias"][2:].abs().max() == 0  # masked-out classes get no importance


def test_diagonal_fisher_skips_frozen_parameters_and_restores_the_mode() -> None:
    net = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))
    net[0].weight.requires_grad_(False)
    net.train()
    net(torch.randn(32, 4))  # give batch norm non-trivial running statistics
    running = net[1].running_mean.clone()
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    fisher = diagonal_fisher(net, [(x, y)])
    assert "0.weight" not in fisher and "0.bias" in fisher
    assert net.training and torch.equal(net[1].running_mean, running)  # mode restored, statistics untouched
    naive = _naive_fisher(net, x, y)  # eval mode: batch norm uses running statistics, as diagonal_fisher does
    for k in fisher:
        torch.testing.assert_close(fisher[k], naive[k], rtol=1e-5, atol=1e-7)


def test_diagonal_fisher_of_no_data_is_zero() -> None:
    net = _tiny_net()
    fisher = diagonal_fisher(net, [])
    assert all(v.abs().max() == 0 for v in fisher.values())


def test_diagonal_fisher_of_a_network_reusing_a_layer_falls_back_to_per_example_gradients() -> None:
    class Twice(nn.Module):  # the same Linear applied twice: the outer-product shortcut does not apply
        def __init__(self) -> None:
            super().__init__()
            self.inner, self.out = nn.Linear(4, 4), nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(torch.tanh(self.inner(torch.tanh(self.inner(x)))))

    torch.manual_seed(3)
    net = Twice()
    x, y = torch.randn(9, 4), torch.randint(0, 3, (9,))
    fisher, naive = diagonal_fisher(net, [(x, y)]), _naive_fisher(net, x, y)
    for k in naive:
        torch.testing.assert_close(fisher[k], naive[k], rtol=1e-5, atol=1e-7)


def test_true_fisher_samples_labels_from_the_model() -> None:
    net = _tiny_net()
    gen = torch.Generator().manual_seed(4)
    x, y = torch.randn(64, 5, generator=gen), torch.randint(0, 4, (64,), generator=gen)
    allowed = torch.tensor([True, False, True, True])
    mask = lambda xb: allowed.expand(len(xb), -1)  # noqa: E731
    true = diagonal_fisher(net, [(x, y)], mask, labels="true", generator=torch.Generator().manual_seed(5))
    # The same draw, done by hand: one label per example from the masked softmax.
    with torch.no_grad():
        probs = F.softmax(net(x).masked_fill(~allowed, float("-inf")), dim=1)
    sampled = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(5)).squeeze(1)
    assert not (sampled == 1).any()  # a masked-out class is never drawn
    naive = _naive_fisher(net, x, sampled, allowed.expand(64, -1))
    for k in naive:
        torch.testing.assert_close(true[k], naive[k], rtol=1e-5, atol=1e-7)
    empirical = diagonal_fisher(net, [(x, y)], mask)
    assert not torch.allclose(true["2.weight"], empirical["2.weight"])


def test_true_fisher_averages_to_the_expectation_over_the_predictive_distribution() -> None:
    net = _tiny_net()
    x = torch.randn(1, 5, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        probs = F.softmax(net(x), dim=1)[0]
    exact = sum(probs[c] * _naive_fisher(net, x, torch.tensor([c]))["2.bias"] for c in range(4))
    many = x.expand(4000, -1)
    mc = diagonal_fisher(net, [(many, torch.zeros(4000, dtype=torch.long))], labels="true",
                         generator=torch.Generator().manual_seed(7))["2.bias"]
    torch.testing.assert_close(mc, exact, rtol=0.1, atol=1e-3)
