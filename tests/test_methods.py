"""Methods on real data through the public API: the orderings every continual-learning paper reports.

Runs use the 10,000-image MNIST test set (split 8,000 / 2,000 by the loader), an MLP with two hidden layers
of 100 units, one epoch and evaluation at experience boundaries only, so each run takes well under a second
on a CPU. The margins asserted are several times the spread observed over seeds 0-2 for these settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from cl_bench.core.registry import METHODS, SCENARIOS
from cl_bench.core.types import Batch, StreamInfo
from cl_bench.engine.runner import run
from cl_bench.engine.spec import Protocol, RunSpec

FAST = Protocol(eval_every=0, epochs=1)
SMALL = {"hidden_size": 100}


@pytest.fixture(scope="module")
def mnist(mnist_root: Path) -> dict[str, Any]:
    """Scenario config reading the real MNIST test set (the ``mnist_root`` fixture), never downloading."""
    return {"root": str(mnist_root), "download": False}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, mnist: dict[str, Any]) -> Any:
    """``runs(method, scenario, scenario_config, method_config, protocol) -> metrics``, each run done once."""
    out = tmp_path_factory.mktemp("runs")
    cache: dict[str, dict[str, Any]] = {}

    def get(
        method: str,
        scenario: str = "split_mnist",
        sc: dict | None = None,
        mc: dict | None = None,
        protocol: Protocol = FAST,
        seed: int = 0,
    ) -> dict[str, float]:
        spec = RunSpec(
            method=method,
            method_config={**SMALL, **(mc or {})},
            scenario=scenario,
            scenario_config={**mnist, **(sc or {})},
            protocol=protocol,
            seed=seed,
        )
        key = repr(spec)
        if key not in cache:
            record = run(spec, out)
            assert record["status"] == "completed"
            cache[key] = record
        return cache[key]["metrics"]

    return get


@pytest.mark.slow  # real MNIST training runs; each method's check_beats_chance is the fast equivalent
def test_replay_and_joint_beat_finetune_class_il(runs: Any) -> None:
    finetune, er, joint = runs("finetune"), runs("er"), runs("joint")
    # Fine-tuning forgets every earlier experience in class-IL: only the last 2 of 10 classes survive.
    assert finetune["forgetting"] > 0.8 and finetune["final_acc"] < 0.3
    assert er["final_acc"] > finetune["final_acc"] + 0.2  # observed: 0.50-0.61 vs 0.19
    assert er["forgetting"] < finetune["forgetting"] - 0.2
    assert joint["final_acc"] > finetune["final_acc"] + 0.5  # observed: 0.88
    assert joint["final_acc"] > er["final_acc"] + 0.1  # the upper bound
    assert joint["forgetting"] < 0.1


@pytest.mark.slow  # real MNIST training runs; each method's check_beats_chance is the fast equivalent
def test_agem_beats_finetune_class_il(runs: Any) -> None:
    assert runs("agem")["final_acc"] > runs("finetune")["final_acc"] + 0.2  # observed: 0.66-0.71


@pytest.mark.slow  # real MNIST training runs; each method's check_beats_chance is the fast equivalent
def test_task_il_is_much_easier_than_class_il_for_finetune(runs: Any) -> None:
    class_il, task_il = runs("finetune"), runs("finetune", sc={"setting": "task_il"})
    # With the task id, each experience is a 2-way problem (observed: 0.95-0.97 vs 0.19).
    assert task_il["final_acc"] > class_il["final_acc"] + 0.5
    assert task_il["final_acc"] > 0.85


@pytest.mark.slow  # real MNIST training runs; each method's check_beats_chance is the fast equivalent
def test_strong_ewc_forgets_less_than_finetune_domain_il(runs: Any) -> None:
    """Permuted-MNIST, 3 permutations. Adam keeps a strong penalty stable (with SGD at lr 0.01,
    lambda * F * lr > 2 makes the quadratic penalty itself diverge); observed forgetting 0.01-0.02 vs 0.08."""
    base = {"optimizer": "adam", "lr": 1e-3}
    protocol = Protocol(eval_every=0, epochs=1, batch_size=64)
    scenario = {"n_experiences": 3}
    finetune = runs("finetune", "permuted_mnist", scenario, base, protocol)
    ewc = runs("ewc", "permuted_mnist", scenario, {**base, "lambda": 1000.0}, protocol)
    assert finetune["forgetting"] > 0.04
    assert ewc["forgetting"] < 0.5 * finetune["forgetting"]
    assert ewc["final_acc"] > 0.75  # it still learns each permutation


def _drive(method: Any, scenario: Any, steps_per_exp: int, batch_size: int = 32) -> list[tuple[int, int | None]]:
    """Run ``method`` through its public hooks, a few batches per experience; (memory size, budget) after each."""
    info = StreamInfo(scenario.input_shape, scenario.n_classes, len(scenario), scenario.setting)
    method.setup(info, seed=0)
    sizes = []
    for exp in scenario:
        method.begin_experience(exp)
        data = method.train_data(exp)
        for b in range(steps_per_exp):
            x, y = data.batch(torch.arange(b * batch_size, (b + 1) * batch_size))
            out = method.observe(Batch(x, y, None, exp.index))
            assert torch.isfinite(torch.as_tensor(out["loss"]))
            budget = method.memory_budget()
            assert budget is None or method.memory_size() <= budget
        method.end_experience(exp)
        sizes.append((method.memory_size(), method.memory_budget()))
    return sizes


def test_agem_memory_never_exceeds_patterns_per_experience(mnist: dict[str, Any]) -> None:
    scenario = SCENARIOS.create("split_mnist", **mnist)
    agem = METHODS.create("agem", patterns_per_exp=40, sample_size=16, hidden_size=50)
    sizes = _drive(agem, scenario, steps_per_exp=3)
    assert sizes == [(40 * (e + 1), 40 * (e + 1)) for e in range(5)]  # exactly 40 new examples per experience
    # The memory holds examples of every finished experience, in equal shares.
    counts = torch.bincount(agem.mem_y, minlength=10)
    for exp in scenario:
        assert int(counts[list(exp.classes)].sum()) == 40


def test_er_memory_stays_within_the_buffer(mnist: dict[str, Any]) -> None:
    scenario = SCENARIOS.create("split_mnist", **mnist)
    er = METHODS.create("er", buffer_size=100, hidden_size=50)
    sizes = _drive(er, scenario, steps_per_exp=5)
    assert [s for s, _ in sizes] == [100] * 5 and {b for _, b in sizes} == {100}
    # Reservoir sampling keeps all experiences represented (each saw 160 examples, so about 20 each).
    labels = er.buffer.y[: len(er.buffer)]
    for exp in scenario:
        assert int(torch.isin(labels, torch.tensor(exp.classes)).sum()) > 5
