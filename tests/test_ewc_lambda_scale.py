"""The scale between native EWC's lambda and Avalanche's ewc_lambda (docs/avalanche.md)."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from cl_bench.components import FisherPenalty, diagonal_fisher
from cl_bench.nets.models import MLP


@pytest.mark.slow  # importing avalanche takes ~15 s
@pytest.mark.skipif(importlib.util.find_spec("avalanche") is None, reason="avalanche-lib is not installed")
def test_batch_of_one_makes_avalanche_importance_our_fisher_and_lambda_half() -> None:
    from avalanche.training.plugins import EWCPlugin

    torch.manual_seed(0)
    net = MLP(12, 4, 8, 1)
    x, y = torch.randn(20, 12), torch.randint(0, 4, (20,))
    ours = diagonal_fisher(net, [(x, y)])
    theirs = EWCPlugin(ewc_lambda=1.0).compute_importances(
        net, nn.CrossEntropyLoss(), torch.optim.SGD(net.parameters(), lr=0.1),
        TensorDataset(x, y, torch.zeros(20, dtype=torch.long)), "cpu", 1,
    )  # fmt: skip
    for k, f in ours.items():  # squared batch-mean gradient of a batch of one = squared per-example gradient
        assert torch.allclose(theirs[k].data, f, rtol=1e-5, atol=1e-9), k
    penalty = FisherPenalty(1.0)
    penalty.consolidate(net, ours)
    anchor = {k: v.detach().clone() for k, v in net.named_parameters()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
        av = sum((theirs[k].data * (p - anchor[k]).pow(2)).sum() for k, p in net.named_parameters())
    assert float(penalty(net)) == pytest.approx(0.5 * float(av), rel=1e-5)  # so ewc_lambda = lambda / 2 at B = 1
    # with larger batches the batch mean averages per-example gradients: Avalanche's importance is smaller
    big = EWCPlugin(ewc_lambda=1.0).compute_importances(
        net, nn.CrossEntropyLoss(), torch.optim.SGD(net.parameters(), lr=0.1),
        TensorDataset(x, y, torch.zeros(20, dtype=torch.long)), "cpu", 10,
    )  # fmt: skip
    assert sum(float(v.data.sum()) for v in big.values()) < sum(float(v.sum()) for v in ours.values())
