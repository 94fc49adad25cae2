"""SI, MAS and GEM building blocks against closed forms, and GEM's missing-solver error."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from cl_bench.components import PathIntegral, output_norm_importance, parameters_outside_norm_layers
from cl_bench.core.errors import UserError
from cl_bench.engine.runner import run
from cl_bench.engine.spec import Protocol, RunSpec
from cl_bench.methods.gem import project_to_cone


def test_path_integral_sums_to_the_loss_decrease() -> None:
    # SI's premise (Zenke et al., Eq. 3): sum_k w_k over a trajectory equals L(start) - L(end) for small steps.
    torch.manual_seed(0)
    net = nn.Linear(3, 1, bias=False)
    target = torch.randn(1, 3)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    params = parameters_outside_norm_layers(net)
    path = PathIntegral(damping=1e-7, clip=None)
    path.begin_experience(params)

    def loss() -> torch.Tensor:
        return 0.5 * (net.weight - target).pow(2).sum()

    start = loss().item()
    for _ in range(200):
        path.before_step(params)
        opt.zero_grad()
        loss().backward()
        opt.step()
        path.after_step(params)
    decrease = start - loss().item()
    assert path.trajectory["weight"].sum().item() == pytest.approx(decrease, rel=0.02)
    delta2 = (net.weight.detach() - path.start["weight"]).pow(2)
    omega = path.end_experience(params)["weight"]
    torch.testing.assert_close(omega, path.trajectory["weight"] / (delta2 + 1e-7))
    clipped = PathIntegral(clip=1e-3)
    clipped.load_state_dict(path.state_dict())
    clipped.cumulative = {}
    torch.testing.assert_close(clipped.end_experience(params)["weight"], omega.clamp(max=1e-3))


def test_parameters_outside_norm_layers_skips_batch_norm() -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Linear(2, 2))
    assert set(parameters_outside_norm_layers(net)) == {"0.weight", "0.bias", "2.weight", "2.bias"}


def test_output_norm_importance_matches_the_closed_form() -> None:
    # f(x) = W x: d mean_i ||W x_i||^2 / dW = 2 W mean_i x_i x_i^T; MAS takes its absolute value per batch.
    torch.manual_seed(0)
    net = nn.Linear(4, 3, bias=False)
    batches = [torch.randn(8, 4), torch.randn(8, 4)]
    imp = output_norm_importance(net, iter(batches))["weight"]
    w = net.weight.detach()
    expected = sum((2 * w @ (x.T @ x) / len(x)).abs() for x in batches) / 2
    torch.testing.assert_close(imp, expected)


def test_gem_projection_is_the_closest_feasible_gradient() -> None:
    g = torch.tensor([1.0, 0.0])
    mem = torch.tensor([[-1.0, 1.0]])
    out = project_to_cone(g, mem, margin=0.0, ridge=0.0)
    torch.testing.assert_close(out, torch.tensor([0.5, 0.5]))  # the Euclidean projection on g . m >= 0
    mems = torch.randn(3, 50)
    proj = project_to_cone(-mems.sum(0), mems, margin=0.0, ridge=0.0)
    assert (mems @ proj >= -1e-4).all()


def test_gem_without_quadprog_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "quadprog", None)  # import quadprog now raises ImportError
    spec = RunSpec(method="gem", scenario="split_digits", protocol=Protocol(eval_every=0, epochs=1))
    with pytest.raises(UserError, match="pip install quadprog"):
        run(spec, tmp_path)
    assert not any(tmp_path.rglob("*.pt"))
