"""AdaB2N's balanced statistics and momentum, refresh learning's unlearning step and Fisher, on hand examples."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cl_bench.components.adab2n import AdaB2N, adab2n_layers, use_adab2n
from cl_bench.components.refresh import Refresh, unlearn_update
from cl_bench.core.errors import ConfigError
from cl_bench.core.method import Caps
from cl_bench.core.registry import METHODS
from cl_bench.core.types import Batch, StreamInfo
from cl_bench.engine.runner import run
from cl_bench.engine.spec import Protocol, RunSpec
from cl_bench.families.supervised import SupervisedMethod, TrainConfig
from cl_bench.testing import toy_scenario


def _layer(kappa: float = 1.0, n_experiences: int = 3) -> AdaB2N:
    return AdaB2N(nn.BatchNorm2d(1, affine=False), n_experiences, kappa)


# -- AdaB2N ---------------------------------------------------------------------------------------------------
def test_balanced_statistics_follow_the_dirichlet_posterior_weights() -> None:
    # One sample of experience 0 (value 0) and three of experience 1 (value 3), task weights 0 (prior 1 each):
    # pi = (1 + 1, 1 + 3) / 6 = (1/3, 2/3); mean = 2/3 * 3 = 2 (plain mean 2.25);
    # var = 1/3 * (0 - 2)^2 + 2/3 * (3 - 2)^2 = 2 (plain 1.6875).
    layer = _layer()
    layer.experience.fill_(1)
    x = torch.tensor([0.0, 3.0, 3.0, 3.0]).view(4, 1, 1, 1)
    layer.groups = torch.tensor([0, 1, 1, 1])
    assert torch.allclose(layer.sample_weights(layer.groups), torch.tensor([1 / 3, 2 / 9, 2 / 9, 2 / 9]))
    out = layer(x)
    assert torch.allclose(out.flatten(), (x.flatten() - 2.0) / math.sqrt(2.0 + 1e-5))
    # Running statistics: BN's EMA at kappa = 1 (momentum 0.1) of the balanced ones.
    assert layer.running_mean.item() == pytest.approx(0.2)
    assert layer.running_var.item() == pytest.approx(0.9 * 1.0 + 0.1 * 2.0)
    # The adaptation loss: MSE of the batch statistics to the updated running ones.
    assert layer.loss.item() == pytest.approx((2 - 0.2) ** 2 + (2 - 1.1) ** 2)


def test_learned_task_weights_move_the_balance_and_get_gradients() -> None:
    layer = _layer()
    layer.experience.fill_(1)
    with torch.no_grad():
        layer.task_weight[0] = math.log(5.0)  # prior 5 for experience 0: pi = (6, 4) / 10
    layer.groups = torch.tensor([0, 1, 1, 1])
    layer(torch.tensor([0.0, 3.0, 3.0, 3.0]).view(4, 1, 1, 1))
    assert layer.running_mean.item() == pytest.approx(0.1 * 0.4 * 3.0)
    layer.loss.backward()
    assert layer.task_weight.grad is not None and layer.task_weight.grad[:2].abs().sum() > 0
    assert layer.task_weight.grad[2] == 0  # a future experience takes no part


def test_plain_batch_statistics_in_the_first_experience_or_without_tags() -> None:
    x = torch.tensor([0.0, 3.0, 3.0, 3.0]).view(4, 1, 1, 1)
    for experience, groups in ((0, torch.tensor([0, 0, 0, 0])), (1, None), (1, torch.tensor([0, 1]))):
        layer = _layer()
        layer.experience.fill_(experience)
        layer.groups = groups
        layer(x)
        assert layer.running_mean.item() == pytest.approx(0.1 * 2.25)
        assert layer.running_var.item() == pytest.approx(0.9 + 0.1 * 1.6875)


@pytest.mark.parametrize(("kappa", "expected"), [
    (0.0, [1.0, 1 / 2, 1 / 3, 1 / 4]),  # cumulative average
    (1.0, [0.1, 0.1, 0.1, 0.1]),  # BN's EMA
    (0.5, None),  # the recursion, checked below
])  # fmt: skip
def test_modified_momentum(kappa: float, expected: list[float] | None) -> None:
    layer = _layer(kappa)
    etas = []
    for _ in range(4):
        layer.num_batches_tracked.add_(1)
        etas.append(layer.next_eta())
    if expected is None:
        e = [0.1**0.5]
        for _ in range(3):
            e.append(e[-1] / (e[-1] + 0.9**0.5))
        expected = e
    assert etas == pytest.approx(expected)
    assert etas[-1] <= etas[0]


def test_eval_mode_normalises_with_the_running_statistics_and_changes_nothing() -> None:
    layer = _layer()
    layer.running_mean.fill_(1.0)
    layer.running_var.fill_(4.0)
    layer.eval()
    out = layer(torch.full((2, 1, 1, 1), 3.0))
    assert torch.allclose(out, torch.full_like(out, 2.0 / math.sqrt(4.0 + 1e-5)))
    assert layer.running_mean.item() == 1.0 and int(layer.num_batches_tracked) == 0


def test_use_adab2n_replaces_batchnorm2d_and_refuses_networks_without_it() -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU())
    layers = use_adab2n(net, 3, 0.4)
    assert len(layers) == 1 and isinstance(net[1], AdaB2N) and adab2n_layers(net) == layers
    with pytest.raises(ValueError, match="no BatchNorm2d"):
        use_adab2n(nn.Sequential(nn.Linear(2, 2)), 3, 0.4)


def test_norm_adab2n_on_the_mlp_is_a_clear_config_error(tmp_path: Path) -> None:
    spec = RunSpec(method="er", method_config={"norm": "adab2n"}, scenario="toy", protocol=Protocol(eval_every=0))
    with pytest.raises(ConfigError, match="model='mlp' has none"):
        run(spec, tmp_path)


def _info() -> StreamInfo:
    s = toy_scenario()
    return StreamInfo(s.input_shape, s.n_classes, len(s), s.setting)


def _er(config: dict) -> SupervisedMethod:
    m = METHODS.get("er").obj(METHODS.config("er", config))
    m.setup(_info(), seed=0)
    return m


def test_the_family_step_tags_samples_by_their_class_experience_and_adds_the_loss() -> None:
    s = toy_scenario()
    m = _er({"model": "cnn", "norm": "adab2n", "adab2n_lambda": 2.0})
    seen = []
    layer = m.norm_layers[0]
    layer.register_forward_pre_hook(lambda mod, _a: seen.append(None if mod.groups is None else mod.groups.clone()))
    m.begin_experience(s[0])
    m.begin_experience(s[1])
    assert m.class_experience[list(s[1].classes)].tolist() == [1, 1]
    assert m.class_experience[list(s[0].classes)].tolist() == [0, 0]
    x = s[1].train.x[:4]
    y = torch.tensor([s[0].classes[0], s[1].classes[0], s[1].classes[1], s[0].classes[1]])
    m.step(x, y, None)
    assert seen[-1].tolist() == [0, 1, 1, 0]
    assert layer.groups is None  # cleared after the step's forward
    assert int(layer.experience) == 1
    loss = m.norm_loss()
    assert torch.is_tensor(loss)
    expected = 2.0 * torch.stack([la.loss for la in m.norm_layers]).sum()
    assert loss.item() == pytest.approx(expected.item())


def test_adab2n_defaults_are_er_on_the_bn_cnn() -> None:
    cfg = METHODS.config("adab2n", {})
    assert (cfg.model, cfg.norm, cfg.buffer_size) == ("cnn", "adab2n", 200)
    assert TrainConfig().norm == "bn" and not TrainConfig().refresh
    with pytest.raises(ValueError, match="kappa"):
        TrainConfig(adab2n_kappa=1.5)


# -- refresh learning -----------------------------------------------------------------------------------------
def test_unlearn_update_is_the_fisher_scaled_rescaled_ascent_plus_noise() -> None:
    theta = torch.tensor([3.0, 4.0])  # norm 5
    g = torch.tensor([0.0, 2.0])  # rescaled to the parameter's norm: (0, 5)
    fisher = torch.tensor([0.0, 999.0])  # denominators 1 and 1 + 1e-3 * 999 = 1.999
    noise = torch.tensor([1.0, -1.0])
    got = unlearn_update(theta, g, fisher, noise, delta=1e-2, gamma=1e-3, sigma=0.5)
    assert torch.allclose(got, torch.tensor([1e-2 * 0.5 / 1.0, 1e-2 * (5.0 - 0.5) / 1.999]))
    # An unused parameter (no gradient) only gets the noise.
    only_noise = unlearn_update(theta, None, fisher, noise, 1e-2, 1e-3, 0.5)
    assert torch.allclose(only_noise, 1e-2 * 0.5 * noise / (1 + 1e-3 * fisher))


def test_unlearning_ascends_the_batch_loss_along_the_gradient_and_keeps_bn_buffers() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 3))
    x, y = torch.randn(6, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    r = Refresh(delta=1e-2, gamma=1e-3, sigma=0.0, tau=1e-5, every=1, seed=0)
    before = {k: v.detach().clone() for k, v in net.state_dict().items()}
    loss0 = F.cross_entropy(net(x), y)
    grads = torch.autograd.grad(loss0, list(net.parameters()))
    for k, b in net.named_buffers():  # the forward above moved the running stats; measure from here
        before[k] = b.detach().clone()
    assert r.unlearn(net, x, y)
    for (name, p), g in zip(net.named_parameters(), grads, strict=True):
        expected = before[name] + 1e-2 * before[name].norm() / g.norm() * g
        assert torch.allclose(p, expected, atol=1e-7), name
    for k, b in net.named_buffers():
        assert torch.equal(b, before[k]), k
    assert F.cross_entropy(net(x), y) > loss0  # the batch got harder: unlearning


def test_refresh_every_and_fisher_consolidation_with_decay() -> None:
    r = Refresh(delta=1e-5, gamma=1e-3, sigma=1e-3, tau=0.5, every=2, seed=0)
    net = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    x, y = torch.tensor([[1.0, 2.0]]), torch.tensor([0])
    assert [r.unlearn(net, x, y) for _ in range(4)] == [True, False, True, False]
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    # By hand: logits (1, 2), p = softmax; d log p_0 / dW = (onehot(0) - p) x^T; Fisher = p_0 * grad^2.
    p = torch.softmax(torch.tensor([1.0, 2.0]), 0)
    g = torch.outer(torch.tensor([1.0, 0.0]) - p, x[0])
    r.consolidate(net, [(x, y)])
    assert torch.allclose(r.fisher["weight"], p[0] * g**2)
    r.consolidate(net, [(x, y)])
    assert torch.allclose(r.fisher["weight"], 1.5 * p[0] * g**2)  # tau * old + new


def test_refresh_wraps_any_supervised_method_and_resumes(tmp_path: Path) -> None:
    m = _er({"refresh": True})
    assert m.refresher is not None
    s = toy_scenario()
    m.begin_experience(s[0])
    data = s[0].train
    x, y = data.batch(torch.arange(10), m.device)
    w0 = m.net.head.weight.detach().clone()
    m.observe(Batch(x=x, y=y, task_ids=None, experience=0))
    assert m.refresher.batches == 1 and not torch.equal(m.net.head.weight, w0)
    m.end_experience(s[0])
    assert set(m.refresher.fisher) == {k for k, p in m.net.named_parameters() if p.requires_grad}
    state = m.state_dict()
    m2 = _er({"refresh": True})
    m2.load_state_dict(state)
    assert m2.refresher.batches == 1
    assert torch.equal(m2.refresher.fisher["head.weight"], m.refresher.fisher["head.weight"])
    assert torch.equal(m2.refresher.gen.get_state(), m.refresher.gen.get_state())
    assert _er({}).refresher is None


class _OwnLoop(SupervisedMethod):
    caps = Caps(drives_loop=True)


def test_refresh_refuses_a_method_that_drives_its_own_loop() -> None:
    m = _OwnLoop(TrainConfig(refresh=True))
    with pytest.raises(ConfigError, match="drives its own training loop"):
        m.setup(_info(), seed=0)


@pytest.mark.slow  # importing Avalanche takes ~20 s on the shared machine
@pytest.mark.parametrize("config", [{"norm": "adab2n", "model": "cnn"}, {"refresh": True}])
def test_avalanche_strategies_refuse_the_native_only_options(tmp_path: Path, config: dict) -> None:
    pytest.importorskip("avalanche")
    spec = RunSpec(method="avalanche:Naive", method_config=config, scenario="toy", protocol=Protocol(eval_every=0))
    with pytest.raises(ConfigError, match="native supervised methods"):
        run(spec, tmp_path)
