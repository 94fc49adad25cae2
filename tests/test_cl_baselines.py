"""Class-incremental baselines (iCaRL, WA) and the memory the run record reports (issue 16).

Runs use the registered ``toy`` stream (3 experiences x 2 classes of Gaussian blobs, 80 training examples
each), so each takes about a second on one CPU thread.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cl_bench.core.errors import ConfigError
from cl_bench.core.method import held_bytes
from cl_bench.core.registry import METHODS
from cl_bench.core.types import Batch, Scenario, StreamInfo
from cl_bench.engine.runner import run
from cl_bench.engine.spec import Protocol, RunSpec
from cl_bench.testing import toy_scenario

FAST = Protocol(eval_every=0, epochs=1)


def _toy_run(tmp_path: Path, method: str, **config: object) -> dict:
    spec = RunSpec(method=method, method_config=dict(config), scenario="toy", protocol=FAST, seed=0)
    return run(spec, tmp_path)


def test_held_bytes_counts_only_filled_rows() -> None:
    x = torch.zeros(10, 3, 4, dtype=torch.uint8)
    y = torch.zeros(10, dtype=torch.int64)
    assert held_bytes(4, x, y, None) == 4 * 12 + 4 * 8
    assert held_bytes(0, x, y) == 0


@pytest.mark.parametrize(("method", "budget"), [("er", 30), ("der", 30), ("gdumb", 30), ("icarl", 30), ("wa", 30),
                                                ("xder", 30), ("er_aml", 30)])  # fmt: skip
def test_record_cost_reports_exemplars_and_bytes(tmp_path: Path, method: str, budget: int) -> None:
    config: dict = {"buffer_size": budget}
    if method == "gdumb":
        config["fit_epochs"] = 1
    record = _toy_run(tmp_path, method, **config)
    cost = record["cost"]
    scenario = toy_scenario()
    row = scenario[0].train.x[0].numel() * scenario[0].train.x.element_size()  # float32 toy inputs
    assert 0 < cost["exemplars"] <= budget
    # inputs plus labels / task ids (8 bytes each; the herding memories keep labels as dict keys)
    per_example = {"icarl": row + 8, "wa": row + 8, "der": row + 16 + 6 * 4, "xder": row + 16 + 6 * 4}.get(
        method, row + 16)  # DER / X-DER also keep 6 float32 logits per example
    assert cost["buffer_bytes"] == cost["exemplars"] * per_example


def test_methods_without_memory_report_no_memory_cost(tmp_path: Path) -> None:
    cost = _toy_run(tmp_path, "finetune")["cost"]
    assert "exemplars" not in cost and "buffer_bytes" not in cost


def test_icarl_memory_is_an_equal_split_of_its_total() -> None:
    # 3 experiences x 2 classes, K = 30: 15 per class after the first, then 7, then 5.
    method = METHODS.create("icarl", buffer_size=30)
    scenario = toy_scenario()
    method.setup(_info(scenario), 0)
    sizes = []
    for exp in scenario:
        method.begin_experience(exp)
        data = method.train_data(exp)
        assert data is not None
        for i in range(0, len(data), 20):
            x, y = data.batch(slice(i, i + 20))
            method.observe(_batch(x, y, exp.index))
        method.end_experience(exp)
        sizes.append(sorted(len(x) for x, _ in method.memory.per_class.values()))
        assert len(method.memory) <= 30
    assert sizes == [[15, 15], [7, 7, 7, 7], [5, 5, 5, 5, 5, 5]]
    # the data of the next experience is its own data followed by every exemplar
    assert len(method.train_data(scenario[2])) == len(scenario[2].train) + 30


def test_icarl_refuses_a_budget_below_one_exemplar_per_class(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="buffer_size=4"):
        _toy_run(tmp_path, "icarl", buffer_size=4)


def test_weight_aligning_matches_mean_norms() -> None:
    method = METHODS.create("wa")
    scenario = toy_scenario()
    method.setup(_info(scenario), 0)
    method.old_classes[:] = False
    method.old_classes[:2] = True
    method.seen_classes[:4] = True
    with torch.no_grad():
        method.net.head.weight[2:4] *= 3.0  # new classes' rows three times as long
    bias = method.net.head.bias.detach().clone()
    gamma = method.align_weights()
    norms = method.net.head.weight.norm(dim=1)
    assert gamma < 1
    assert torch.isclose(norms[2:4].mean(), norms[:2].mean(), rtol=1e-5)
    assert torch.equal(method.net.head.bias, bias)  # only the weights are rescaled


def _info(scenario: Scenario) -> StreamInfo:
    return StreamInfo(input_shape=tuple(scenario.input_shape), n_classes=scenario.n_classes,
                      n_experiences=len(scenario), setting=scenario.setting)  # fmt: skip


def _batch(x: torch.Tensor, y: torch.Tensor, e: int) -> Batch:
    return Batch(x, y, None, e)


# -- cross-check against Avalanche 0.6 (benchmarks/crosscheck.py, small scale) ---------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("key", ["derpp", "der_cb"])
def test_native_agrees_with_avalanche_within_seed_spread(tmp_path: Path, key: str) -> None:
    # The rule and settings of benchmarks/crosscheck.py (docs/methods.md): |mean diff| <= max(0.02, 2 x pooled
    # seed std) over 3 seeds; 5 epochs, batch 10, MLP 2x100, SGD lr 0.01, memory 200. About 2 min on one core.
    pytest.importorskip("avalanche")
    import importlib.util
    import sys

    script = Path(__file__).parents[1] / "benchmarks" / "crosscheck.py"
    spec = importlib.util.spec_from_file_location("crosscheck", script)
    assert spec is not None and spec.loader is not None
    cc = importlib.util.module_from_spec(spec)
    sys.modules["crosscheck"] = cc  # dataclasses look their module up
    spec.loader.exec_module(cc)
    pair = next(p for p in cc.pairs(batch_size=10, epochs=5, lr=0.01) if p.key == key)
    result = cc.run_pair(pair, "split_digits", {}, Protocol(eval_every=0, epochs=5, batch_size=10), [0, 1, 2],
                         {"model": "mlp", "hidden_size": 100, "lr": 0.01}, str(tmp_path))  # fmt: skip
    assert result.agree, result.cells()
    assert min(result.native + result.bridged) > 0.5  # both learned (chance 0.1; forgetting everything ~0.2)
