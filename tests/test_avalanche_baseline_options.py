"""Options added for the continual-learning-baselines recipes: iCaRL's BCE over every output, LwF's per-experience
alpha and 1 / (t + 1) cross-entropy weight (``cl_bench/recipes/clb_icarl_splitcifar100.yaml``, ``clb_lwf_splitmnist``).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from cl_bench.core.registry import METHODS
from cl_bench.core.types import Batch, StreamInfo
from cl_bench.testing import toy_scenario


def _started(name: str, upto: int, **config: object) -> tuple[Any, Batch]:
    """``name`` set up on the toy stream and started on experience ``upto`` (earlier ones begun and ended unseen),
    with one batch of that experience."""
    scenario = toy_scenario()
    method = METHODS.create(name, **config)
    info = StreamInfo(input_shape=tuple(scenario.input_shape), n_classes=scenario.n_classes,
                      n_experiences=len(scenario), setting=scenario.setting)  # fmt: skip
    method.setup(info, 0)
    for exp in list(scenario)[:upto]:
        method.begin_experience(exp)
        method.end_experience(exp)
    exp = scenario[upto]
    method.begin_experience(exp)
    x, y = exp.train.batch(slice(0, 16))
    return method, Batch(x, y, None, exp.index)


@pytest.mark.parametrize(("weight", "factor"), [("one", 1.0), ("inverse_experiences", 1 / 3)])
def test_lwf_weights_the_new_data_cross_entropy_by_one_over_experiences_so_far(weight: str, factor: float) -> None:
    # alpha 0: the step's loss is the (weighted) cross-entropy alone, at the weights before the step.
    method, batch = _started("lwf", 2, alpha=0.0, ce_weight=weight)
    with torch.no_grad():
        ce = F.cross_entropy(method.net(batch.x), batch.y)
    loss = method.observe(batch)["loss"]
    assert torch.isclose(loss, factor * ce, rtol=1e-5)


def test_lwf_alpha_per_experience_holds_its_last_value() -> None:
    config = METHODS.get("lwf").config_cls(alpha=7.0, alpha_per_experience=(0.0, 0.5, 1.33333))
    assert [config.alpha_at(e) for e in range(5)] == [0.0, 0.5, 1.33333, 1.33333, 1.33333]
    assert METHODS.get("lwf").config_cls(alpha=7.0).alpha_at(3) == 7.0
    with pytest.raises(ValueError, match="alpha_per_experience"):
        METHODS.get("lwf").config_cls(alpha_per_experience=(0.5, -1.0))


@pytest.mark.parametrize("bce", ["seen", "all"])
def test_icarl_bce_over_all_outputs_pushes_unseen_classes_down(bce: str) -> None:
    # Plain SGD (no momentum, no decay): only a loss gradient can move a head row.
    method, batch = _started("icarl", 0, buffer_size=30, bce_classes=bce, weight_decay=0.0)
    unseen = ~method.seen_classes
    before = method.net.head.weight[unseen].detach().clone()
    with torch.no_grad():
        out = method.net(batch.x)
    loss = method.observe(batch)["loss"]
    cols = slice(None) if bce == "all" else method.seen_classes
    target = F.one_hot(batch.y, out.shape[1]).float()[:, cols]
    assert torch.isclose(loss, F.binary_cross_entropy_with_logits(out[:, cols], target), rtol=1e-5)
    moved = not torch.equal(method.net.head.weight[unseen], before)
    assert moved == (bce == "all")
