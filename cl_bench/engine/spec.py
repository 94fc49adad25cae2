"""What defines a run: the :class:`Protocol` every compared method shares and the :class:`RunSpec`.

A record's ``run_id`` is derived from the spec (:func:`run_id_for`), and a record gives its spec back
(:func:`spec_from_record`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from cl_bench.core.config import build_config
from cl_bench.core.errors import UserError
from cl_bench.core.types import Scenario, spec_hash


@dataclass(frozen=True)
class Protocol:
    """How a stream is trained on and evaluated (the same for every method compared).

    Attributes:
        eval_every: Evaluate every k training iterations (1 = per iteration,
            0 = only before training and at experience boundaries).
        eval_subset: Test examples per experience between boundaries (0 = all);
            De Lange et al. subsample to 1,000.
        batch_size: Training mini-batch size (None = the scenario's default, else 32).
        epochs: Passes over each experience (None = the scenario's default, else 1).
        eval_batch_size: Examples per forward call during evaluation.
        online: Single-pass online protocol (Aljundi et al., "Gradient based sample selection for online
            continual learning", NeurIPS 2019; Mai et al., "Online continual learning in image
            classification: an empirical survey", Neurocomputing 2022): every training example is seen
            exactly once (one epoch, whatever the scenario's default), ``eval_every`` still counts
            training iterations. ``epochs`` other than 1 is refused. Experiences whose ``meta`` sets
            ``stream_order`` (the ``blurry`` stream) are consumed in their stored order instead of shuffled.
        max_iterations: Cap on the training (or adaptation) iterations per experience and epoch (0 = none):
            ``cl-bench reproduce run --smoke`` sets 2 to prove a recipe starts without training it.
        recipe: Name of the reproduction recipe (``cl_bench.ops.reproduce``) this run was made by ("" =
            none), so ``cl-bench reproduce board`` finds its records.
    """

    eval_every: int = 1
    eval_subset: int = 1000
    batch_size: int | None = None
    epochs: int | None = None
    eval_batch_size: int = 1024
    online: bool = False
    max_iterations: int = 0
    recipe: str = ""

    def __post_init__(self) -> None:
        for name in ("eval_every", "eval_subset", "max_iterations"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        for name in ("batch_size", "epochs", "eval_batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.online and self.epochs not in (None, 1):
            raise ValueError(
                f"online=true means a single pass over the stream (each example seen once), so epochs must be 1 "
                f"or unset, got {self.epochs}"
            )

    def to_dict(self) -> dict[str, Any]:
        """The protocol as run records and run ids store it.

        Fields added after the first record schema (``online``, ``max_iterations``, ``recipe``) appear only
        when they differ from their default, so records, run ids and golden references made before they
        existed stay unchanged.
        """
        d = dataclasses.asdict(self)
        for name in _LATER_FIELDS:
            if d[name] == _PROTOCOL_DEFAULTS[name]:
                del d[name]
        return d

    def resolve(self, scenario: Scenario) -> Protocol:
        """Fill unset fields from the scenario's defaults, then global ones."""
        d = scenario.protocol_defaults
        return dataclasses.replace(
            self,
            batch_size=self.batch_size or d.get("batch_size", 32),
            epochs=1 if self.online else self.epochs or d.get("epochs", 1),
        )


_LATER_FIELDS = ("online", "max_iterations", "recipe")
_PROTOCOL_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Protocol)}


@dataclass(frozen=True)
class RunSpec:
    """Everything that defines a run; a record's ``run_id`` is derived from it.

    Attributes:
        method: Registered method name.
        method_config: Overrides of the method's config fields.
        scenario: Registered scenario name.
        scenario_config: Overrides of the scenario builder's parameters.
        protocol: Training and evaluation protocol.
        seed: Seeds the method's initialisation, shuffling and subsampling.
        device: "cpu", "cuda" or "cuda:N".
    """

    method: str = "er"
    method_config: dict[str, Any] = field(default_factory=dict)
    scenario: str = "split_digits"
    scenario_config: dict[str, Any] = field(default_factory=dict)
    protocol: Protocol = field(default_factory=Protocol)
    seed: int = 0
    device: str = "cpu"


def check_device(device: str) -> None:
    """Raise a :class:`UserError` if ``device`` cannot be used here."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device} was asked for but this machine has no usable CUDA GPU; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise UserError(f"unsupported device {device!r}; use cpu, cuda or cuda:N")


def run_id_for(spec: RunSpec) -> str:
    """Deterministic run id: the same spec always maps to the same directory."""
    blob = {"method": spec.method, "mc": spec.method_config, "scenario": spec.scenario,
            "sc": spec.scenario_config, "protocol": spec.protocol.to_dict(), "seed": spec.seed}  # fmt: skip
    # ':' (bridged names such as avalanche:GEM) is not allowed in Windows paths nor in many tools' ids.
    return f"{spec.scenario}-{spec.method}-s{spec.seed}-{spec_hash(blob)[:8]}".replace(":", "_")


def spec_from_record(record: dict[str, Any]) -> RunSpec:
    """The :class:`RunSpec` that produced ``record``."""
    req = record["request"]
    return RunSpec(
        method=record["method"]["name"], method_config=req["method_config"],
        scenario=record["scenario"]["name"], scenario_config=req["scenario_config"],
        protocol=build_config(Protocol, req["protocol"], "the recorded protocol"),
        seed=record["seed"], device=req["device"],
    )  # fmt: skip


__all__ = ["Protocol", "RunSpec", "check_device", "run_id_for", "spec_from_record"]
