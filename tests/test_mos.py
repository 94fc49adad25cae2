"""MOS: the self-refined retrieval, the adapter merge, the original-model ensemble and a pure predict."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from cl_bench.core.registry import METHODS, SCENARIOS
from cl_bench.core.types import Batch, StreamInfo
from cl_bench.families.pretrained import TINY_RANDOM_BACKBONE
from cl_bench.methods.mos import refine

CFG: dict[str, Any] = {**TINY_RANDOM_BACKBONE, "lr": 0.3, "ffn_num": 8, "ca_epochs": 3, "ca_samples": 16}


def _method(cfg: dict[str, Any], seed: int = 0) -> tuple[Any, Any]:
    scenario = SCENARIOS.create("toy")
    method = METHODS.get("mos").obj(METHODS.config("mos", {**CFG, **cfg}))
    torch.manual_seed(seed)  # the random toy backbone is drawn from the global generator: the same for a seed
    info = StreamInfo(scenario.input_shape, scenario.n_classes, len(scenario), scenario.setting,
                      input_transform=scenario[0].test.transform)  # fmt: skip
    method.setup(info, seed=seed)
    return method, scenario


def _train(method: Any, exp: Any, batches: int | None = None) -> None:
    x, y = exp.train.batch(slice(None))
    starts = list(range(0, len(x), 16))[:batches]
    for i in starts:
        method.observe(Batch(x[i : i + 16], y[i : i + 16], None, exp.index))


def _fit(cfg: dict[str, Any], seed: int = 0) -> tuple[Any, Any]:
    """``mos`` trained on the toy stream (3 experiences x 2 classes) in batches of 16, and the scenario."""
    method, scenario = _method(cfg, seed)
    for exp in scenario:
        method.begin_experience(exp)
        _train(method, exp)
        method.end_experience(exp)
    return method, scenario


# -- self-refined retrieval ------------------------------------------------------------------------------------------
def test_refine_follows_the_head_to_a_fixed_point_or_stops_after_max_passes() -> None:
    task_of = torch.tensor([0, 0, 1, 1, 2, 2])
    # With set k the head picks: set 0 -> class 2 (experience 1), set 1 -> class 4 (experience 2), set 2 -> class 5.
    best = torch.tensor([2, 4, 5])
    calls: list[list[int]] = []

    def logits_of(sets: torch.Tensor) -> torch.Tensor:
        calls.append(sets.tolist())
        out = torch.full((len(sets), 6), -1.0)
        out[torch.arange(len(sets)), best[sets]] = 1.0 + sets.float()  # which set scored shows in the value
        return out

    start = torch.tensor([0, 2, 1])
    got = refine(logits_of, start, task_of, max_refine=4)
    # Row 0: 0 -> 1 -> 2 -> 2 (three passes); row 1 is at its fixed point at once; row 2: 1 -> 2 -> 2.
    assert calls == [[0, 2, 1], [1, 2, 2], [2, 2, 2]]
    assert got.argmax(1).tolist() == [5, 5, 5] and got.max(1).values.tolist() == [3.0, 3.0, 3.0]
    calls.clear()
    got = refine(logits_of, start, task_of, max_refine=2)  # row 0 stops at set 1's logits after two passes
    assert calls == [[0, 2, 1], [1, 2, 2]]
    assert got.argmax(1).tolist() == [4, 5, 5] and got.max(1).values.tolist() == [2.0, 3.0, 3.0]
    got = refine(logits_of, start, task_of, max_refine=1)  # the original model's choice, unrefined
    assert got.argmax(1).tolist() == [2, 5, 4]


def test_predict_ensembles_the_refined_head_with_the_first_sets_prototypes() -> None:
    method, scenario = _fit({})
    x = torch.cat([exp.test.x[:5] for exp in scenario])
    feats = [method.set_features(k, x) for k in range(3)]
    cos = torch.nn.functional.normalize(feats[0], dim=1) @ torch.nn.functional.normalize(method.protos.means(), dim=1).T
    task_of = method.task_of
    with torch.no_grad():
        k = task_of[cos.argmax(1)]
        for _ in range(4):  # the official per-row loop
            logits = torch.stack([method.head(feats[int(s)][i]) for i, s in enumerate(k)])
            nxt = task_of[logits.argmax(1)]
            if torch.equal(nxt, k):
                break
            k = torch.where(nxt != k, nxt, k)
    expected = logits.softmax(1) + (cos * 3).softmax(1)  # temperature 1 / (t + 1) with t + 1 = 3 sets
    got = method.predict(x, None)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    plain, _ = _method({"ensemble": False})
    plain.load_state_dict(method.state_dict())
    assert torch.equal(plain.predict(x, None).argmax(1), logits.argmax(1))


# -- adapter merging -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("merges", [1, 2])
def test_each_step_merges_the_new_set_towards_the_mean_of_the_earlier_ones(merges: int) -> None:
    runs = {}
    for m in (0.0, 0.3):
        method, scenario = _method({"adapter_momentum": m, "merges_per_step": merges})
        for exp in scenario[:2]:
            method.begin_experience(exp)
            _train(method, exp)
            method.end_experience(exp)
        method.begin_experience(scenario[2])
        # The new set starts as a copy of the last one (the official cur_adapter trains on).
        for p, q in zip(method.bank.parameters(2), method.bank.parameters(1), strict=True):
            assert torch.equal(p, q)
        runs[m] = method
    runs[0.0].load_state_dict(runs[0.3].state_dict())  # the same state from here on
    before = [p.clone() for p in runs[0.3].bank.parameters(2)]
    mean = [(a + b) / 2 for a, b in zip(runs[0.3].bank.parameters(0), runs[0.3].bank.parameters(1), strict=True)]
    for method in runs.values():
        _train(method, scenario[2], batches=1)
    stepped, merged = runs[0.0].bank.parameters(2), runs[0.3].bank.parameters(2)
    kept = 0.7**merges  # one SGD step, then `merges` merges towards the same mean
    for p, q, mu in zip(stepped, merged, mean, strict=True):
        torch.testing.assert_close(q, kept * p + (1 - kept) * mu)
    assert any(not torch.equal(p, b) for p, b in zip(stepped, before, strict=True))


def test_the_first_set_is_never_merged_and_frozen_sets_stay_frozen() -> None:
    method, scenario = _method({"adapter_momentum": 1.0})
    method.begin_experience(scenario[0])
    _train(method, scenario[0])
    method.end_experience(scenario[0])
    first = [p.clone() for p in method.bank.parameters(0)]
    assert any(p.abs().sum() > 0 for p in first if p.dim() and p.shape[0] > 8)  # trained: up-projections moved
    method.begin_experience(scenario[1])
    _train(method, scenario[1], batches=2)
    for p, q in zip(method.bank.parameters(1), first, strict=True):  # m = 1: the mean of the earlier sets exactly
        assert torch.equal(p, q)
    for p, q in zip(method.bank.parameters(0), first, strict=True):
        assert torch.equal(p, q) and not p.requires_grad


# -- predict is pure -------------------------------------------------------------------------------------------------
def test_predict_changes_nothing_however_often_it_runs() -> None:
    method, scenario = _fit({})
    x = torch.cat([exp.test.x for exp in scenario])
    params = [p.clone() for k in range(3) for p in method.bank.parameters(k)]
    first = method.predict(x, None)
    for _ in range(5):
        assert torch.equal(method.predict(x[:7], None), first[:7])
    assert torch.equal(method.predict(x, None), first)
    assert all(torch.equal(p, q) for p, q in zip(params, (p for k in range(3) for p in method.bank.parameters(k)),
                                                   strict=True))  # fmt: skip


def test_mid_experience_predictions_use_the_live_set_and_the_current_classes() -> None:
    method, scenario = _method({})
    assert torch.equal(method.predict(scenario[0].test.x, None), torch.zeros(len(scenario[0].test), 6))
    method.begin_experience(scenario[0])
    _train(method, scenario[0], batches=3)
    pred = method.predict(scenario[0].test.x, None).argmax(1)
    assert set(pred.tolist()) <= set(scenario[0].classes)  # only classes of begun experiences can win


def test_defaults_are_the_official_cifar_config() -> None:
    cfg = METHODS.config("mos")
    assert (cfg.lr, cfg.head_lr_scale, cfg.weight_decay, cfg.tuned_epochs, cfg.min_lr) == (0.03, 0.1, 5e-4, 20, 0.0)
    assert (cfg.ffn_num, cfg.adapter_scale, cfg.adapter_momentum, cfg.merges_per_step) == (16, 0.1, 0.1, 13)
    assert (cfg.reg, cfg.reg_temperature) == (0.1, 0.8)
    assert (cfg.ca_epochs, cfg.ca_lr, cfg.ca_samples, cfg.ca_storage) == (30, 0.005, 240, "covariance")
    assert (cfg.max_refine, cfg.ensemble) == (4, True)
    bad_values = [{"adapter_momentum": 1.5}, {"max_refine": 0}, {"ca_storage": "full"}, {"reg_temperature": 0.0},
                  {"merges_per_step": 0}]  # fmt: skip
    for bad in bad_values:
        with pytest.raises(ValueError):
            METHODS.config("mos", bad)
