"""``RunSpec.from_mapping``: the one door from a mapping to a run spec (issue 12)."""

from __future__ import annotations

import pytest

from cl_bench.core.errors import ConfigError, UserError
from cl_bench.engine.spec import Protocol, RunSpec, run_id_for, spec_from_record
from cl_bench.ops.sweep import parse_sweep_spec
from cl_bench.ops.tune import parse_tune_spec


def test_mapping_shape_builds_the_spec_and_round_trips() -> None:
    spec = RunSpec.from_mapping({
        "method": {"name": "ewc", "lambda": 3.0}, "scenario": {"name": "split_mnist", "n_experiences": 2},
        "protocol": {"eval_every": "5"}, "seed": 3, "device": "cpu",
    })  # fmt: skip
    assert spec == RunSpec("ewc", {"lambda": 3.0}, "split_mnist", {"n_experiences": 2}, Protocol(eval_every=5), 3)
    assert RunSpec.from_mapping(spec.to_mapping()) == spec
    assert RunSpec.from_mapping({"method": "gdumb"}).method == "gdumb"
    assert RunSpec.from_mapping({}) == RunSpec()  # the dataclass defaults, defined once


def test_record_request_gives_the_same_run_id() -> None:
    spec = RunSpec("er", {"buffer_size": 50}, "split_digits", {"n_experiences": 2}, Protocol(online=True), 1)
    record = {"method": {"name": "er"}, "scenario": {"name": "split_digits"}, "seed": 1,
              "request": {"method_config": spec.method_config, "scenario_config": spec.scenario_config,
                          "protocol": spec.protocol.to_dict(), "device": "cpu"}}  # fmt: skip
    assert run_id_for(spec_from_record(record)) == run_id_for(spec)


@pytest.mark.parametrize(
    "mapping, needle",
    [
        ({"seed": 1.7}, "seed: in src must be int, got 1.7 (float)"),
        ({"seed": True}, "seed: in src must be int, got True (bool)"),
        ({"seed": "zero"}, "seed: in src must be int, got 'zero' (str)"),
        ({"device": 0}, "device: in src must be str"),
        ({"methods": "er"}, "unknown top-level keys ['methods']"),
        ({"out": "x"}, "unknown top-level keys ['out']"),  # a run option only where the caller accepts it
        ({"method": 3}, "method: in src must be a name or a mapping"),
        ({"scenario": {"name": 1}}, "scenario: name: in src"),
        ({"protocol": [1]}, "protocol: in src must be a mapping"),
        ({"protocol": {"eval_every": -1}}, "eval_every must be >= 0"),
        ({"protocol": {"eval_evry": 1}}, "Did you mean 'eval_every'"),
    ],
)
def test_bad_fields_are_refused_with_one_paragraph(mapping: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        RunSpec.from_mapping(mapping, "src")
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_run_options_are_checked_where_accepted() -> None:
    assert RunSpec.from_mapping({"out": "runs", "checkpoint_every": 5}, options=("out", "checkpoint_every")).seed == 0
    with pytest.raises(ConfigError, match="checkpoint_every: in src must be >= 0"):
        RunSpec.from_mapping({"checkpoint_every": -1}, "src", options=("checkpoint_every",))


def test_sweep_and_tune_refuse_the_same_seed_as_a_run() -> None:
    """Four front doors, one check: a float seed reads the same everywhere."""
    with pytest.raises(ConfigError, match=r"seed: in src must be int, got 1\.7"):
        RunSpec.from_mapping({"seed": 1.7}, "src")
    sweep = {"methods": ["er"], "scenarios": ["split_digits"], "seeds": [0, 1.7]}
    with pytest.raises(UserError, match=r"seeds: in the sweep spec must be int, got 1\.7 \(float\)"):
        parse_sweep_spec(sweep)
    tune = {"methods": ["er"], "tune_scenario": "split_digits", "eval_scenario": "split_digits", "eval_seeds": [True]}
    with pytest.raises(UserError, match=r"eval_seeds: in the tune spec must be int, got True \(bool\)"):
        parse_tune_spec(tune)
