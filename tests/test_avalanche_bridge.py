"""The Avalanche bridge: strategies run through cl_bench's evaluator, benchmarks become scenarios.

Everything runs on the tiny ``toy`` stream (or tensor benchmarks built here) with few iterations;
importing Avalanche itself takes most of this module's time.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("avalanche")

from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets  # noqa: E402
from avalanche.benchmarks.scenarios.deprecated.generators import nc_benchmark  # noqa: E402
from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset  # noqa: E402
from avalanche.evaluation.metrics import accuracy_metrics, bwt_metrics, forgetting_metrics  # noqa: E402
from avalanche.training.plugins import EvaluationPlugin  # noqa: E402

from cl_bench.bridges.avalanche import register_benchmark, scenario_from_benchmark  # noqa: E402
from cl_bench.cli import main  # noqa: E402
from cl_bench.core.errors import ConfigError, DataError, UserError  # noqa: E402
from cl_bench.core.record import matrix_of  # noqa: E402
from cl_bench.core.registry import METHODS, SCENARIOS  # noqa: E402
from cl_bench.core.types import TensorData  # noqa: E402
from cl_bench.engine.runner import resume, run
from cl_bench.engine.spec import Protocol, RunSpec
from cl_bench.metrics import AccuracyMatrix  # noqa: E402
from cl_bench.testing import check_method  # noqa: E402

PER_ITERATION = Protocol(eval_every=1, eval_subset=0)  # the toy stream's own 4 epochs of batch 16
# GEM solves a quadratic programme over its memories' gradients at every step: a small memory and
# network keep it quick.
STRATEGIES = [("avalanche:GEM", {"patterns_per_exp": 16, "hidden_size": 64, "hidden_layers": 1}),
              ("avalanche:LwF", {}), ("avalanche:SI", {}), ("avalanche:DER", {"mem_size": 60}),
              ("avalanche:Replay", {})]  # fmt: skip


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Records of per-iteration runs on the toy stream, cached per (method, seed) for the tests that share them."""
    out = tmp_path_factory.mktemp("toy")
    cache: dict[tuple[str, int], dict[str, Any]] = {}

    def get(method: str, seed: int = 0, **config: Any) -> dict[str, Any]:
        if (method, seed) not in cache:
            spec = RunSpec(method=method, method_config=config, scenario="toy", protocol=PER_ITERATION, seed=seed)
            cache[method, seed] = run(spec, out)
        return cache[method, seed]

    return get


# Replay stands for the bridge in the inner loop; the other strategies go through the same wrapper (slow).
@pytest.mark.parametrize(("name", "config"), [pytest.param(n, c, id=n, marks=[] if n == "avalanche:Replay" else
                                              [pytest.mark.slow]) for n, c in STRATEGIES])  # fmt: skip
def test_strategy_is_evaluated_on_the_native_schedule(name: str, config: dict[str, Any], toy_run: Any) -> None:
    record = toy_run(name, **config)
    assert record["status"] == "completed" and ":" not in record["run_id"]
    assert record["method"]["name"] == name
    ours, native = record["accuracy_matrix"], toy_run("er")["accuracy_matrix"]
    # The same eval points: before training, after every iteration, the boundaries — as a native run.
    assert ours["iteration"] == native["iteration"] and ours["boundary"] == native["boundary"]
    assert ours["n_total"] == native["n_total"]
    matrix = matrix_of(record)
    learnt = [matrix.acc(b, e) for e, b in enumerate(matrix.boundary)]  # on each experience, right after it
    assert min(learnt) > 0.55 and sum(learnt) / len(learnt) > 0.7, f"{name} learnt too little: {learnt}"
    assert len({tuple(row) for row in ours["n_correct"]}) > 3  # the model really changed between points
    assert record["cost"]["train_seconds"] > 0


@pytest.mark.slow  # two more seeds of two runs; the bridge's schedule and metrics are checked fast above
def test_native_er_and_avalanche_replay_reach_similar_accuracy(toy_run: Any) -> None:
    # Same stream, seeds, network, optimiser (SGD 0.01), batch size, epochs and memory size (200); only the
    # loop differs. Avalanche's Replay fills its class-balanced memory at the end of each experience, ER's
    # reservoir after every step, hence a small gap (docs/avalanche.md has split_digits figures).
    for seed in (0, 1):
        er = toy_run("er", seed)["metrics"]["final_acc"]
        replay = toy_run("avalanche:Replay", seed)["metrics"]["final_acc"]
        assert abs(er - replay) <= 0.12, f"seed {seed}: er {er:.3f} vs avalanche:Replay {replay:.3f}"
        # Measured on these seeds: finetune reaches 0.47 and 0.58, so both really replay.
        assert min(er, replay) > 0.75


def test_bridged_strategy_passes_the_conformance_suite() -> None:
    report = check_method("avalanche:LwF")
    assert report["check_resume"].status == "skipped"
    assert "outside cl_bench" in report["check_resume"].message
    assert all(r.status == "passed" for r in report.results if r.name != "check_resume")


def test_strategy_parameters_come_from_its_signature() -> None:
    config = METHODS.config("avalanche:GEM", {"patterns_per_exp": 256, "lr": 0.05})
    assert (config.patterns_per_exp, config.memory_strength, config.lr, config.model) == (256, 0.5, 0.05, "mlp")
    assert METHODS.config("avalanche:GEM").patterns_per_exp == 256  # the paper's value, not required
    assert METHODS.config("avalanche:SI").si_lambda == 1.0  # alias of SynapticIntelligence
    assert "strategy_lr" in METHODS.parameters("avalanche:BiC")  # BiC's own lr, not the network's
    assert "input_size" not in METHODS.parameters("avalanche:GSS_greedy")  # taken from the stream
    with pytest.raises(ConfigError, match="Did you mean 'patterns_per_exp'"):
        METHODS.config("avalanche:GEM", {"patterns_per_ex": 3})
    with pytest.raises(ConfigError, match="must be int"):
        METHODS.config("avalanche:GEM", {"patterns_per_exp": "many"})
    with pytest.raises(ConfigError, match="'post_prune_epochs', 'prune_proportion'.*--set post_prune_epochs"):
        METHODS.config("avalanche:PackNet")  # required by Avalanche, no default known
    with pytest.raises(ConfigError, match="feature_extractor"):
        METHODS.get("avalanche:ER_AML")  # needs a torch module: not settable from the command line


@pytest.mark.parametrize(("name", "meant"), [("avalanche:GEMM", "avalanche:GEM"), ("avalanche:lwf", "avalanche:LwF"),
                                             ("avalanche:Replya", "avalanche:Replay")])  # fmt: skip
def test_unknown_strategy_names_close_matches(name: str, meant: str) -> None:
    with pytest.raises(UserError) as err:
        METHODS.get(name)
    message = str(err.value)
    assert "no strategy" in message and f"Did you mean '{meant}'" in message and "SynapticIntelligence" in message
    assert name not in METHODS.names()


def test_unknown_builtin_name_and_list_mention_the_bridge(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(UserError, match="avalanche:NAME"):
        METHODS.get("gemm")
    assert main(["list", "scenarios"]) == 0
    assert "avalanche:NAME     any scenario of avalanche" in capsys.readouterr().out


def test_checkpoint_and_resume_are_refused(tmp_path: Path) -> None:
    spec = RunSpec(method="avalanche:Naive", scenario="toy", protocol=Protocol(eval_every=0, epochs=1))
    with pytest.raises(UserError, match="cannot be checkpointed"):
        run(spec, tmp_path, checkpoint_every=5)
    assert not list(tmp_path.iterdir())  # nothing written
    record = run(spec, tmp_path)
    run_dir = tmp_path / record["run_id"]
    data = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps({**data, "status": "failed"}))
    with pytest.raises(UserError, match="cannot be checkpointed or resumed"):
        resume(run_dir)


def test_cli_runs_a_bridged_strategy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "--method", "avalanche:GEM", "--set", "patterns_per_exp=8", "--scenario", "toy",
                 "--epochs", "1", "--eval-every", "2", "--out", str(tmp_path)])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "avalanche:GEM on toy" in out
    record = json.loads(next(tmp_path.glob("*/run.json")).read_text())
    assert record["method"]["config"]["patterns_per_exp"] == 8 and record["run_id"].startswith("toy-avalanche_GEM-")
    assert record["accuracy_matrix"]["iteration"] == [0, 2, 4, 5, 6, 8, 10, 12, 14, 15]


@pytest.mark.parametrize(
    ("args", "needle"),
    [(["--method", "avalanche:GEN", "--scenario", "toy"], "Did you mean 'avalanche:GEM'"),
     (["--method", "avalanche:GEM", "--scenario", "toy", "--set", "patterns=3"], "Did you mean 'patterns_per_exp'"),
     (["--method", "avalanche:Naive", "--scenario", "toy", "--checkpoint-every", "3"], "cannot be checkpointed"),
     (["--scenario", "avalanche:SplitMNST"], "Did you mean 'avalanche:SplitMNIST'")],
)  # fmt: skip
def test_cli_user_errors_exit_2(args: list[str], needle: str, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    assert main(["run", *args, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_classic_benchmark_without_its_files_is_a_data_error(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    # No classic benchmark builds without a download; without internet it must fail as a user error.
    code = main(["run", "--scenario", "avalanche:SplitMNIST", "--set", f"scenario.dataset_root={tmp_path / 'data'}",
                 "--set", "scenario.n_experiences=5", "--out", str(tmp_path)])  # fmt: skip
    err = capsys.readouterr().err
    if code == 0:
        pytest.skip("MNIST could be downloaded here; the offline error path is not reachable")
    assert code == 2 and "could not load its dataset" in err and "dataset_root" in err


# -- metrics: cl_bench vs Avalanche on identical predictions ----------------------------------------------------


def _avalanche_data(data: TensorData, task: int = 0) -> Any:
    x, y = data.batch(slice(None))
    return _make_taskaware_tensor_classification_dataset(x, y, task_labels=task, targets=y.tolist())


def test_metrics_agree_with_avalanches_on_identical_predictions(tmp_path: Path) -> None:
    scenario = SCENARIOS.create("toy")
    test_stream = benchmark_from_datasets(test=[_avalanche_data(e.test) for e in scenario]).test_stream
    logged: list[dict[str, float]] = []
    bridged = METHODS.get("avalanche:Replay").obj

    class AlsoEvaluatedByAvalanche(bridged):  # type: ignore[valid-type, misc]
        """Avalanche evaluates the same model on the same test sets right before cl_bench's boundary eval."""

        def avalanche_evaluator(self) -> Any:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "no loggers specified": the test reads the metrics itself
                return EvaluationPlugin(accuracy_metrics(experience=True, stream=True),
                                        forgetting_metrics(experience=True, stream=True), bwt_metrics(stream=True),
                                        loggers=[])  # fmt: skip

        def end_experience(self, exp: Any) -> None:
            self.strategy.eval(test_stream)
            logged.append(dict(self.strategy.evaluator.get_last_metrics()))

    spec = RunSpec(method="avalanche:Replay", method_config={"mem_size": 20}, scenario="toy",
                   protocol=Protocol(eval_every=0))  # fmt: skip
    record = run(spec, tmp_path, method_cls=AlsoEvaluatedByAvalanche)
    matrix: AccuracyMatrix = matrix_of(record)
    for k, b in enumerate(matrix.boundary):  # every accuracy after every experience, exactly
        for e in range(len(scenario)):
            ours = matrix.acc(b, e)
            assert logged[k][f"Top1_Acc_Exp/eval_phase/test_stream/Exp{e:03d}"] == pytest.approx(ours, abs=1e-9)
    final, metrics = logged[-1], record["metrics"]
    assert final["Top1_Acc_Stream/eval_phase/test_stream"] == pytest.approx(metrics["final_acc_pooled"], abs=1e-9)
    # Avalanche's forgetting is "accuracy right after training minus now": cl_bench's -bwt. cl_bench's
    # `forgetting` (Chaudhry et al.) takes the best accuracy at any later boundary instead, so it is >= -bwt.
    assert final["StreamForgetting/eval_phase/test_stream"] == pytest.approx(-metrics["bwt"], abs=1e-9)
    assert final["StreamBWT/eval_phase/test_stream"] == pytest.approx(metrics["bwt"], abs=1e-9)
    assert metrics["forgetting"] >= -metrics["bwt"] - 1e-12


# -- benchmarks as scenarios ----------------------------------------------------------------------------------


def _blobs(n: int, gen: torch.Generator, centres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.arange(len(centres)).repeat_interleave(n)
    return centres[y] + torch.randn(len(y), *centres.shape[1:], generator=gen), y


def _tensor_benchmark(task_labels: bool = False) -> Any:
    gen = torch.Generator().manual_seed(0)
    centres = 3 * torch.randn(6, 1, 4, 4, generator=gen)
    (xtr, ytr), (xte, yte) = _blobs(30, gen, centres), _blobs(10, gen, centres)
    train = _make_taskaware_tensor_classification_dataset(xtr, ytr, targets=ytr.tolist(), task_labels=0)
    test = _make_taskaware_tensor_classification_dataset(xte, yte, targets=yte.tolist(), task_labels=0)
    return nc_benchmark(train, test, n_experiences=3, task_labels=task_labels, seed=0)


def test_benchmark_object_becomes_a_scenario() -> None:
    bm = _tensor_benchmark()
    s = scenario_from_benchmark(bm, "blobs")
    assert (len(s), s.n_classes, s.setting, s.input_shape) == (3, 6, "class_il", (1, 4, 4))
    for exp, av_exp in zip(s, bm.train_stream, strict=True):
        assert exp.classes == tuple(sorted(av_exp.classes_in_this_experience))
        assert len(exp.train) == 60 and len(exp.test) == 20 and exp.task_id is None
        assert set(exp.test.y.tolist()) == set(exp.classes)
    again = scenario_from_benchmark(_tensor_benchmark(), "blobs")
    assert again.spec_hash == s.spec_hash and torch.equal(again[1].train.x, s[1].train.x)
    task_il = scenario_from_benchmark(_tensor_benchmark(task_labels=True), "blobs")
    assert task_il.setting == "task_il" and [e.task_id for e in task_il] == [0, 1, 2]
    with pytest.raises(DataError, match="not an Avalanche benchmark"):
        scenario_from_benchmark(object())


def test_registered_benchmark_runs_like_a_builtin_scenario(tmp_path: Path) -> None:
    register_benchmark("test_avalanche_blobs", _tensor_benchmark, reference="synthetic blobs (test)")
    assert "test_avalanche_blobs" in SCENARIOS.names()
    spec = RunSpec(method="er", scenario="test_avalanche_blobs", protocol=Protocol(eval_every=0, batch_size=16))
    record = run(spec, tmp_path)
    assert record["scenario"]["spec"]["dataset"] == "test_avalanche_blobs" and record["protocol"]["epochs"] == 1
    assert record["metrics"]["final_acc"] > 0.5  # chance is 1/6; replay keeps the earlier blobs
