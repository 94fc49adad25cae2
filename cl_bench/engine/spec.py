"""What defines a run: the :class:`Protocol` every compared method shares and the :class:`RunSpec`.

A record's ``run_id`` is derived from the spec (:func:`run_id_for`), and a record gives its spec back
(:func:`spec_from_record`). :meth:`RunSpec.from_mapping` is the one door from a mapping (a ``--config`` YAML
file, a sweep's or tune's run, a record's request) to a spec: it type-checks every top-level field, so the
CLI, sweeps, tuning and regression refuse the same mistakes with the same message.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from cl_bench.core.config import build_config
from cl_bench.core.errors import ConfigError, UserError
from cl_bench.core.types import Scenario, spec_hash

#: Values of :attr:`Protocol.precision`.
PRECISIONS = ("fp32", "bf16", "fp16")
TTA_RESETS = ("", "none", "episodic", "shift")


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
            training iterations. ``epochs`` other than 1 is refused. Streams declared ``ordered``
            (``Scenario.ordered``: the ``blurry`` stream) are consumed in their stored order instead of shuffled.
        max_iterations: Cap on the training (or adaptation) iterations per experience and epoch (0 = none):
            ``cl-bench reproduce run --smoke`` sets 2 to prove a recipe starts without training it.
        resample_eval_subset: Draw a fresh ``eval_subset`` of every evaluated experience at every
            periodic eval point (seeded by the run seed and the point's index, so a resumed run draws
            the same), as ContinualEvaluation's continual evaluation samples anew, instead of one subset
            fixed for the run (the default). Boundary and pre-training evaluations use full test sets
            either way.
        recipe: Name of the reproduction recipe (``cl_bench.ops.reproduce``) this run was made by ("" =
            none), so ``cl-bench reproduce board`` finds its records.
        precision: Arithmetic of training and evaluation steps: "fp32" (default), "bf16" (``torch.autocast``
            to bfloat16, CPU or CUDA) or "fp16" (autocast to float16 with ``torch.amp.GradScaler`` loss
            scaling; CUDA only, as float16 autocast is meant for GPUs: Micikevicius et al., "Mixed precision
            training", ICLR 2018). See :mod:`cl_bench.engine.precision`.
        channels_last: Keep the method's network (and 4-D input batches) in channels-last memory format,
            which speeds up convolutions on recent GPUs and oneDNN CPUs.
        compile: ``torch.compile`` the method's network in place (``nn.Module.compile``) before training.
        tta_reset: TTA runs: when the method is reset to the source model. "none" never; "episodic" after
            every test batch (each batch adapted from the source model alone: Wang et al., Tent, ICLR 2021,
            episodic mode; the RMT benchmark's ``MODEL.EPISODIC``); "shift" at each domain change (the
            ``reset_each_shift`` stream setting). "" = the stream's own choice ("shift" on
            ``reset_each_shift`` streams, else "none").
        tta_source_every: TTA runs: every k adaptation iterations (and before and after the stream)
            measure the adapting model on the held-out clean source test split, into the record's
            ``source_curve`` (0 = off).
    """

    eval_every: int = 1
    eval_subset: int = 1000
    batch_size: int | None = None
    epochs: int | None = None
    eval_batch_size: int = 1024
    online: bool = False
    max_iterations: int = 0
    recipe: str = ""
    resample_eval_subset: bool = False
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    tta_reset: str = ""
    tta_source_every: int = 0

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {self.precision!r}")
        if self.tta_reset not in TTA_RESETS:
            raise ValueError(f"tta_reset must be one of none, episodic, shift (or empty: the stream's "
                             f"default), got {self.tta_reset!r}")  # fmt: skip
        for name in ("eval_every", "eval_subset", "max_iterations", "tta_source_every"):
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

        Fields added after the first record schema (``online``, ``max_iterations``, ``recipe``,
        ``resample_eval_subset``, ``precision``, ``channels_last``, ``compile``, ``tta_reset``,
        ``tta_source_every``) appear only when they differ from their default, so records, run ids and golden
        references made before they existed stay unchanged.
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


_LATER_FIELDS = ("online", "max_iterations", "recipe", "resample_eval_subset", "precision", "channels_last",
                 "compile", "tta_reset", "tta_source_every")
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

    @classmethod
    def from_mapping(
        cls, mapping: Mapping[str, Any], source: str = "the run spec", *, options: Collection[str] = ()
    ) -> RunSpec:
        """Build a spec from its mapping shape, checking the type of every top-level field.

        The shape is the one ``--config`` files use (and :meth:`to_mapping` returns)::

            method: er                      # or {name: er, lr: 0.05, ...}
            scenario: {name: split_mnist, n_experiences: 5}
            protocol: {eval_every: 10}
            seed: 0
            device: cpu

        Method and scenario parameters are kept as given (their registries check them when the run
        starts, and run ids hash them as given); the protocol is built and checked here.

        Args:
            mapping: The parsed mapping. Missing keys take the dataclass defaults.
            source: What the mapping came from (e.g. the YAML path), named in every message.
            options: Names from :data:`RUN_OPTIONS` the caller also accepts at the top level
                (e.g. ``out``); they are type-checked here but are not part of the spec.

        Raises:
            ConfigError: An unknown key or a value of the wrong type, in one paragraph.
        """
        if not isinstance(mapping, Mapping):
            raise ConfigError(f"{source} must be a mapping with method:, scenario: and protocol: sections")
        allowed = [*SPEC_KEYS, *(k for k in RUN_OPTIONS if k in options)]
        unknown = sorted(set(mapping) - set(allowed))
        if unknown:
            raise ConfigError(f"{source} has unknown top-level keys {unknown}; allowed: {sorted(allowed)}")
        for key in ("seed", "device", *(k for k in RUN_OPTIONS if k in options)):
            kind, low = SCALAR_FIELDS[key]
            check_scalar(key, mapping.get(key), kind, low, source)
        method, method_config = _section(mapping.get("method"), "method", cls.method, source)
        scenario, scenario_config = _section(mapping.get("scenario"), "scenario", cls.scenario, source)
        protocol = mapping.get("protocol")
        if not isinstance(protocol, Protocol):
            if protocol is not None and not isinstance(protocol, Mapping):
                raise ConfigError(f"protocol: in {source} must be a mapping (eval_every:, eval_subset:, ...), "
                                  f"got {protocol!r}")  # fmt: skip
            protocol = build_config(Protocol, dict(protocol or {}), "the protocol")
        seed, device = mapping.get("seed"), mapping.get("device")
        return cls(method=method, method_config=method_config, scenario=scenario, scenario_config=scenario_config,
                   protocol=protocol, seed=cls.seed if seed is None else seed,
                   device=cls.device if device is None else device)  # fmt: skip

    def to_mapping(self) -> dict[str, Any]:
        """The spec in the shape :meth:`from_mapping` reads (``from_mapping(s.to_mapping()) == s``)."""
        return {"method": {"name": self.method, **self.method_config},
                "scenario": {"name": self.scenario, **self.scenario_config},
                "protocol": dataclasses.asdict(self.protocol), "seed": self.seed, "device": self.device}  # fmt: skip


#: Top-level keys of a run mapping that make the spec.
SPEC_KEYS = ("method", "scenario", "protocol", "seed", "device")
#: Top-level keys a front door may accept beside the spec (``options=`` of :meth:`RunSpec.from_mapping`):
#: name -> (type, lowest allowed value or None).
RUN_OPTIONS: dict[str, tuple[type, int | None]] = {
    "out": (str, None), "checkpoint_every": (int, 0), "log": (list, None),  # log: tracker names (--log)
}
SCALAR_FIELDS: dict[str, tuple[type, int | None]] = {"seed": (int, None), "device": (str, None), **RUN_OPTIONS}


def check_scalar(key: str, value: Any, kind: type, low: int | None, source: str) -> None:
    """Raise a :class:`ConfigError` unless ``value`` (None = not given) is a ``kind`` >= ``low``.

    ``bool`` is an ``int`` in Python, so ``seed: true`` would silently be seed 1: it is refused like a
    float or a word.
    """
    if value is None:
        return
    if not isinstance(value, kind) or isinstance(value, bool):
        example = {"seed": "seed: 0", "seeds": "seeds: [0, 1]", "eval_seeds": "eval_seeds: [0, 1]",
                   "checkpoint_every": "checkpoint_every: 50"}.get(key, f"{key}: <{kind.__name__}>")
        raise ConfigError(f"{key}: in {source} must be {kind.__name__}, got {value!r} ({type(value).__name__}); "
                          f"write it as e.g. `{example}`")  # fmt: skip
    if low is not None and value < low:
        raise ConfigError(f"{key}: in {source} must be >= {low}, got {value}")


def check_seeds(value: Any, key: str, source: str) -> list[int]:
    """A sweep's or tune's seeds list (one seed alone is a list of one), each seed checked as ``seed:`` is.

    Raises:
        ConfigError: An empty list, or a seed that is not an int.
    """
    seeds = value if isinstance(value, list) else [value]
    if not seeds:
        raise ConfigError(f"{key}: in {source} must be a non-empty list of integers, got []")
    for seed in seeds:
        check_scalar(key, seed, int, None, source)
    return seeds


def _section(value: Any, key: str, default: str, source: str) -> tuple[str, dict[str, Any]]:
    """(name, parameters) of a ``method:`` or ``scenario:`` entry: a name or {name: ..., PARAM: value}."""
    if value is None:
        return default, {}
    if isinstance(value, str):
        return value, {}
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        params = dict(value)
        name = params.pop("name", default)
        if not isinstance(name, str):
            raise ConfigError(f"{key}: name: in {source} must be a registered {key} name, got {name!r}")
        return name, params
    raise ConfigError(f"{key}: in {source} must be a name or a mapping with name: and parameters, got {value!r}")


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
    return RunSpec.from_mapping({
        "method": {"name": record["method"]["name"], **req["method_config"]},
        "scenario": {"name": record["scenario"]["name"], **req["scenario_config"]},
        "protocol": req["protocol"], "seed": record["seed"], "device": req["device"],
    }, "the recorded request")  # fmt: skip


__all__ = ["PRECISIONS", "RUN_OPTIONS", "SCALAR_FIELDS", "SPEC_KEYS", "Protocol", "RunSpec", "check_device",
           "check_scalar", "check_seeds", "run_id_for", "spec_from_record"]  # fmt: skip
