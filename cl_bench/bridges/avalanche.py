"""The Avalanche bridge: Avalanche 0.6 strategies as cl_bench methods, its benchmarks as scenarios.

``avalanche:<Strategy>`` (e.g. ``avalanche:GEM``) names a method that trains one of Avalanche's
supervised strategies in Avalanche's own loop. The strategy gets cl_bench's network
(:func:`~cl_bench.models.build_model` from the stream info) and optimiser (SGD at the native
defaults); a plugin reports every training iteration back to the runner, which evaluates on the
usual schedule, so its records have the same eval points and metrics as native runs.
Strategy parameters come from the strategy's signature (``--set patterns_per_exp=256``).

``avalanche:<Benchmark>`` (e.g. ``avalanche:SplitMNIST``) names a scenario built by one of
``avalanche.benchmarks.classic``; :func:`scenario_from_benchmark` and :func:`register_benchmark`
turn any Avalanche benchmark object into a cl_bench scenario.

Avalanche is imported only when such a name is used, so the core never needs it.

References:
    Carta et al. "Avalanche: A PyTorch Library for Deep Continual Learning". JMLR 24(363), 2023.
    Lomonaco et al. "Avalanche: an End-to-End Library for Continual Learning". CVPR Workshops 2021.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import inspect
import types
import typing
import warnings
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from typing import Any, ClassVar, Literal, Union, get_args, get_origin

import torch
from torch import nn

from cl_bench.config import coerce, config_to_dict
from cl_bench.errors import ConfigError, DataError, UserError
from cl_bench.method import Caps, IterationCallback, Method, TrainConfig, build_network
from cl_bench.registry import METHODS, SCENARIOS, Entry
from cl_bench.types import Experience, PredictContext, Scenario, StreamInfo, TensorData

PREFIX = "avalanche"
#: The Avalanche release the bridge is written and tested against.
AVALANCHE_VERSION = "0.6.0"
_INSTALL = "pip install avalanche-lib==0.6.0 quadprog (or pip install 'cl_bench[bench]')"

#: Names users know strategies by that Avalanche spells differently.
ALIASES = {"SI": "SynapticIntelligence"}

#: Values for strategy parameters Avalanche requires without a default (and one it defaults
#: to a value that does not fit cl_bench's networks), so that ``avalanche:NAME`` runs as is.
#: Sources: GEM, 256 memories per task (Lopez-Paz & Ranzato 2017, Sec. 5); A-GEM, the native
#: ``agem`` default; EWC lambda, the native ``ewc`` default; LwF, lambda_o = 1 and T = 2 (Li &
#: Hoiem 2017, Sec. 3); SI, c = 1 for Split-MNIST (Zenke et al. 2017, Sec. 5.1, also
#: continual-learning-baselines' SI Split-MNIST config); CWR*: cl_bench networks call their
#: output layer ``head``.
PAPER_DEFAULTS: dict[str, dict[str, Any]] = {
    "GEM": {"patterns_per_exp": 256},
    "AGEM": {"patterns_per_exp": 256},
    "EWC": {"ewc_lambda": 100.0},
    "LwF": {"alpha": 1.0, "temperature": 2.0},
    "SynapticIntelligence": {"si_lambda": 1.0},
    "CWRStar": {"cwr_layer_name": "head"},
}

#: Papers of the strategies the bridge is tested with; the others cite Avalanche and their class.
REFERENCES: dict[str, str] = {
    "GEM": "Lopez-Paz & Ranzato, 'Gradient Episodic Memory for Continual Learning' (NeurIPS 2017)",
    "AGEM": "Chaudhry et al., 'Efficient Lifelong Learning with A-GEM' (ICLR 2019)",
    "LwF": "Li & Hoiem, 'Learning without Forgetting' (ECCV 2016; TPAMI 2017)",
    "SynapticIntelligence": "Zenke, Poole & Ganguli, 'Continual Learning Through Synaptic Intelligence' (ICML 2017)",
    "DER": "Buzzega et al., 'Dark Experience for General Continual Learning: a Strong, Simple Baseline' "
    "(NeurIPS 2020)",
    "Replay": "Rolnick et al., 'Experience replay for continual learning' (NeurIPS 2019)",
    "EWC": "Kirkpatrick et al., 'Overcoming catastrophic forgetting in neural networks' (PNAS 2017)",
    "Naive": "fine-tuning baseline (no continual-learning mechanism)",
}

# Strategy constructor parameters the bridge sets itself: the network, optimiser and loss are
# cl_bench's, batch size and epochs come from the run's protocol, and evaluation is cl_bench's.
_OWNED = {"self", "model", "optimizer", "criterion", "train_mb_size", "train_epochs", "eval_mb_size", "device",
          "plugins", "evaluator", "eval_every", "peval_mode"}  # fmt: skip
# Parameters that describe the stream (GSS's input size, CoPE's number of classes): taken from it.
_FROM_STREAM: dict[str, Callable[[StreamInfo], Any]] = {
    "input_size": lambda info: list(info.input_shape),
    "n_classes": lambda info: info.n_classes,
    "num_classes": lambda info: info.n_classes,
}
_SCALARS = (bool, int, float, str)
_TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def _avalanche() -> types.ModuleType:
    """``avalanche`` itself, or a :class:`UserError` saying how to install it."""
    try:
        import avalanche
        import avalanche.training.supervised  # noqa: F401
    except ImportError as err:
        raise UserError(
            f"names starting with '{PREFIX}:' run Avalanche, which is not installed here ({err}). "
            f"Install it with {_INSTALL}, or use a built-in name (`cl-bench list methods`)."
        ) from None
    return avalanche


# -- parameters from signatures -----------------------------------------------------------------------------


def _cli_type(tp: Any, default: Any) -> Any | None:
    """The part of annotation ``tp`` a ``--set`` value can express, or None if nothing can."""
    if tp is inspect.Parameter.empty or tp is Any:
        return type(default) if isinstance(default, _SCALARS) else None
    origin = get_origin(tp)
    if tp in _SCALARS or origin is Literal:
        if default is not inspect.Parameter.empty and default is not None:
            try:
                coerce(default, tp)
            except Exception:  # e.g. ``temperature: int = 0.1``: the default tells the real type
                return type(default) if isinstance(default, _SCALARS) else None
        return tp
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        usable = [a for a in (_cli_type(a, inspect.Parameter.empty) for a in args if a is not type(None)) if a]
        if not usable:
            return None
        # Union[float, Sequence[float]] (a value per experience) is offered as its scalar form.
        scalar = [a for a in usable if a in _SCALARS] or usable
        out = Union[tuple(scalar)] if len(scalar) > 1 else scalar[0]  # noqa: UP007
        return out | None if type(None) in args else out
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        args = [a for a in get_args(tp) if a is not Ellipsis]
        if len(args) == 1 and args[0] in _SCALARS:
            return tuple[args[0], ...]
    if isinstance(tp, type) and tp in (list, tuple) and isinstance(default, (list, tuple)):
        return tuple[Any, ...]
    return None


@dataclasses.dataclass(frozen=True)
class _Param:
    name: str  # the field name in cl_bench's config
    target: str  # the constructor parameter it feeds
    type: Any
    default: Any  # inspect.Parameter.empty = required


def _parameters(fn: Callable[..., Any], skip: set[str], defaults: Mapping[str, Any], rename: set[str],
                what: str) -> list[_Param]:  # fmt: skip
    """The ``--set``-able parameters of ``fn``; a required one that is not settable is a ConfigError."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable forward references: fall back to the raw annotations
        hints = {}
    params = []
    for p in inspect.signature(fn).parameters.values():
        if p.name in skip or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        default = defaults.get(p.name, p.default)
        default = tuple(default) if isinstance(default, list) else default
        tp = _cli_type(hints.get(p.name, p.annotation), default)
        if tp is None:
            if default is inspect.Parameter.empty:
                shown = getattr(p.annotation, "__name__", str(p.annotation))
                raise ConfigError(
                    f"{what} cannot run through the cl_bench bridge: its parameter {p.name!r} ({shown}) has no "
                    f"default and cannot be given as a --set value. Use it from Avalanche directly, or pick "
                    f"another name (`cl-bench list methods`)."
                )
            continue  # Avalanche's default (e.g. a transform or a module) is used
        if default is not inspect.Parameter.empty and default is not None:
            try:
                default = coerce(default, tp)
            except Exception:
                continue
        name = f"strategy_{p.name}" if p.name in rename else p.name
        params.append(_Param(name, p.name, tp, default))
    return params


def _config_class(name: str, params: list[_Param], base: type | None, owner: str) -> type:
    """A frozen dataclass with a field per parameter; required ones are checked with a clear message."""
    fields = []
    required = [p.name for p in params if p.default is inspect.Parameter.empty]
    for p in params:
        if p.default is inspect.Parameter.empty:
            fields.append((p.name, p.type | None, dataclasses.field(default=None)))
        else:
            fields.append((p.name, p.type, dataclasses.field(default=p.default)))

    def __post_init__(self: Any) -> None:  # noqa: N807
        if base is not None:
            base.__post_init__(self)  # type: ignore[attr-defined]
        missing = [f for f in required if getattr(self, f) is None]
        if missing:
            raise ValueError(
                f"{owner} needs {', '.join(repr(m) for m in missing)}, which Avalanche gives no default; "
                f"pass e.g. --set {missing[0]}=<value>"
            )

    bases = (base,) if base is not None else ()
    cls = dataclasses.make_dataclass(name, fields, bases=bases, frozen=True, namespace={"__post_init__": __post_init__})
    cls.__doc__ = f"Parameters of {owner} (from its signature; {', '.join(p.name for p in params) or 'none'})."
    return cls


# -- strategies as methods ----------------------------------------------------------------------------------


@cache
def strategies() -> dict[str, type]:
    """Avalanche's supervised strategies by class name (imports Avalanche)."""
    _avalanche()
    import avalanche.training.supervised as sup
    from avalanche.training.templates.base import BaseTemplate

    return {n: c for n, c in vars(sup).items()
            if inspect.isclass(c) and issubclass(c, BaseTemplate) and not n.startswith("_")}  # fmt: skip


def _close(name: str, names: Sequence[str]) -> str:
    lower = {n.lower(): n for n in names}
    close = [lower[name.lower()]] if name.lower() in lower else difflib.get_close_matches(name, list(names), n=3)
    return f" Did you mean {', '.join(repr(f'{PREFIX}:{c}') for c in close)}?" if close else ""


class AvalancheStrategy(Method):
    """A cl_bench method running one Avalanche strategy in Avalanche's own training loop.

    Subclasses (made by the resolver, one per strategy) set ``strategy_cls`` and ``params``.
    The strategy trains cl_bench's network with cl_bench's optimiser, ``protocol.batch_size``
    examples per iteration for ``protocol.epochs`` epochs; a plugin hands every iteration to the
    runner's callback, where the evaluator runs on the run's schedule.
    """

    caps: ClassVar[Caps] = Caps(
        memory="unbounded",  # buffers live inside Avalanche's plugins, where cl_bench cannot bound them
        drives_loop=True,
        resumable=False,
        exceptions=(("check_resume", "an Avalanche strategy's state (plugins, buffers, importances) lives outside "
                     "cl_bench and Avalanche checkpoints only whole strategies per experience"),),
    )  # fmt: skip
    strategy_cls: ClassVar[type]
    params: ClassVar[tuple[_Param, ...]] = ()

    def setup(self, info: StreamInfo, seed: int) -> None:
        super().setup(info, seed)
        self.device = torch.device(info.device)
        self.net, self.opt = build_network(self.config, info)  # the same network and optimiser as native methods
        self.strategy: Any = None  # built at the first experience, when the protocol's batch size is known
        self._plugin: Any = None

    def strategy_kwargs(self) -> dict[str, Any]:
        """The strategy's own parameters, as configured."""
        values = {p.target: getattr(self.config, p.name) for p in self.params}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}  # configs hold lists as tuples

    def _stream_kwargs(self) -> dict[str, Any]:
        accepted = inspect.signature(self.strategy_cls.__init__).parameters
        return {k: f(self.info) for k, f in _FROM_STREAM.items() if k in accepted}

    def avalanche_evaluator(self) -> Any:
        """The strategy's Avalanche ``EvaluationPlugin`` (empty: cl_bench's evaluator measures)."""
        from avalanche.training.plugins import EvaluationPlugin

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "no loggers specified": on purpose
            return EvaluationPlugin()

    def _build(self, callback: IterationCallback) -> None:
        self._plugin = _make_plugin()
        try:
            self.strategy = self.strategy_cls(
                model=self.net, optimizer=self.opt, criterion=nn.CrossEntropyLoss(),
                train_mb_size=callback.batch_size, train_epochs=callback.epochs, eval_mb_size=callback.batch_size,
                device=self.device, plugins=[self._plugin], evaluator=self.avalanche_evaluator(), eval_every=-1,
                **self.strategy_kwargs(), **self._stream_kwargs(),
            )  # fmt: skip
        except (TypeError, ValueError, AssertionError) as err:
            raise ConfigError(
                f"Avalanche's {self.strategy_cls.__name__} rejected its configuration "
                f"{config_to_dict(self.config)}: {err}. Fix the --set values it names."
            ) from None

    def train_experience(self, exp: Experience, callback: IterationCallback) -> None:
        if self.strategy is None:
            self._build(callback)
        self.strategy.train_mb_size, self.strategy.train_epochs = callback.batch_size, callback.epochs
        # Avalanche's data loader shuffles with the global generator: seed it per experience, as the
        # native loop seeds its per-(experience, epoch) permutations, so a run is repeatable.
        torch.manual_seed((self.seed * 1_000_003 + exp.index * 10_007) % (2**63))
        self._plugin.callback = callback
        try:
            # Avalanche 0.6 emits deprecation warnings about its own internals at every experience (forced
            # on by its decorator, so a filter does not hold them back): drop those, pass on the rest.
            with warnings.catch_warnings(record=True) as caught:
                self.strategy.train(to_avalanche_experience(exp), eval_streams=[])
            for w in caught:
                if not issubclass(w.category, DeprecationWarning):
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        finally:
            self._plugin.callback = None

    def predict(self, x: torch.Tensor, ctx: PredictContext) -> torch.Tensor:
        model = self.strategy.model if self.strategy is not None else self.net
        was_training = model.training
        model.eval()
        try:
            return model(x)
        finally:
            model.train(was_training)

    def state_dict(self) -> dict[str, Any]:
        # The network only: enough for the conformance suite to see that predict changes nothing.
        model = self.strategy.model if self.strategy is not None else self.net
        return {"net": model.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise UserError(f"{self.name!r} cannot be resumed from a checkpoint (caps.resumable is False)")


def _make_plugin() -> Any:
    """An Avalanche plugin that reports each training iteration to the runner's callback."""
    from avalanche.core import SupervisedPlugin

    class ReportIterations(SupervisedPlugin):
        """Calls ``callback(loss, last)`` after every optimiser step of the strategy."""

        def __init__(self) -> None:
            super().__init__()
            self.callback: IterationCallback | None = None
            self.epoch = self.iteration = 0

        def before_training_exp(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
            self.epoch = -1

        def before_training_epoch(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
            self.epoch += 1
            self.iteration = 0

        def after_training_iteration(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
            self.iteration += 1
            try:
                n_batches = len(strategy.dataloader)
            except TypeError:  # an unsized loader: no "last" known, so the runner evaluates as usual
                n_batches = -1
            last = self.epoch == strategy.train_epochs - 1 and self.iteration == n_batches
            if self.callback is not None:
                self.callback(float(strategy.loss.detach()), last)

    return ReportIterations()


def to_avalanche_experience(exp: Experience) -> Any:
    """``exp``'s training data as an Avalanche experience with the same index.

    Inputs are transformed once (cl_bench's batch transform); the training augmentation of
    ``TensorData`` is not applied in Avalanche's loop.
    """
    from avalanche.benchmarks.scenarios.dataset_scenario import DatasetExperience
    from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset

    data = exp.train
    if data is None or len(data) == 0:
        raise DataError(f"experience {exp.index} has no training data; Avalanche strategies need some")
    x, y = data.batch(slice(None), device="cpu")
    if data.t is not None:
        t = data.t.cpu().tolist()
    else:
        t = [exp.task_id if exp.task_id is not None else 0] * len(y)
    dataset = _make_taskaware_tensor_classification_dataset(x, y, task_labels=t, targets=y.tolist())
    av_exp = DatasetExperience(dataset=dataset, current_experience=exp.index)
    av_exp.classes_in_this_experience = list(exp.classes)  # BiC, iCaRL and some losses read it
    return av_exp


def _strategy_entry(name: str) -> Entry[Any]:
    found = strategies()
    cls_name = ALIASES.get(name, name)
    if cls_name not in found:
        raise UserError(
            f"Avalanche {_avalanche().__version__} has no strategy {name!r}.{_close(name, list(found) + list(ALIASES))}"
            f" The strategies are: {', '.join(sorted(found))} (and aliases {', '.join(ALIASES)})."
        )
    cls = found[cls_name]
    owner = f"method '{PREFIX}:{name}'"
    sig = inspect.signature(cls.__init__).parameters
    if "model" not in sig or "optimizer" not in sig:
        raise ConfigError(
            f"{owner} cannot run through the cl_bench bridge: Avalanche's {cls_name} builds its own network or "
            f"optimiser, so it cannot train cl_bench's. Use it from Avalanche directly."
        )
    skip = _OWNED | set(_FROM_STREAM)
    params = _parameters(cls.__init__, skip, PAPER_DEFAULTS.get(cls_name, {}), _TRAIN_FIELDS, owner)
    config = _config_class(f"Avalanche{cls_name}Config", params, TrainConfig, owner)
    method = type(f"Avalanche{cls_name}", (AvalancheStrategy,), {
        "Config": config, "strategy_cls": cls, "params": tuple(params),
        "__doc__": f"Avalanche's {cls_name} strategy, trained in Avalanche's loop, evaluated by cl_bench.",
        "__module__": __name__,
    })  # fmt: skip
    method.name = f"{PREFIX}:{name}"
    reference = REFERENCES.get(cls_name, f"Avalanche {AVALANCHE_VERSION} strategy avalanche.training.{cls_name}")
    desc = f"Avalanche {cls_name} (bridge)"
    return Entry(f"{PREFIX}:{name}", method, config, desc, f"{reference}; via Avalanche (Carta et al., JMLR 2023)")


# -- benchmarks as scenarios --------------------------------------------------------------------------------


def _tensors(dataset: Any, what: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs, labels and task labels of an Avalanche dataset, with its evaluation transforms."""
    if hasattr(dataset, "eval"):
        dataset = dataset.eval()  # a one-off random crop would be frozen into the stored tensors
    loader = torch.utils.data.DataLoader(dataset, batch_size=1024, shuffle=False,
                                         collate_fn=getattr(dataset, "collate_fn", None))  # fmt: skip
    xs, ys, ts = [], [], []
    for batch in loader:
        if not isinstance(batch, (list, tuple)) or len(batch) < 2:
            raise DataError(f"{what} yields {type(batch).__name__} batches; cl_bench needs (x, y[, task]) tuples")
        xs.append(torch.as_tensor(batch[0]))
        ys.append(torch.as_tensor(batch[1]).long())
        ts.append(torch.as_tensor(batch[2]).long() if len(batch) > 2 else torch.zeros(len(batch[1]), dtype=torch.long))
    if not xs:
        raise DataError(f"{what} is empty")
    return torch.cat(xs), torch.cat(ys), torch.cat(ts)


def _digest(tensors: Sequence[torch.Tensor]) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def scenario_from_benchmark(
    benchmark: Any,
    name: str = f"{PREFIX}:benchmark",
    spec: Mapping[str, Any] | None = None,
    protocol_defaults: Mapping[str, Any] | None = None,
) -> Scenario:
    """A cl_bench :class:`~cl_bench.types.Scenario` holding an Avalanche benchmark's streams as tensors.

    Experience i pairs ``train_stream[i]`` with ``test_stream[i]``. The setting is ``task_il``
    when the experiences carry different task labels, ``domain_il`` when every experience has
    the same classes (e.g. PermutedMNIST), else ``class_il``. Avalanche's evaluation transforms
    are applied once to both streams (its training augmentations are not).

    Args:
        benchmark: An Avalanche benchmark with ``train_stream`` and ``test_stream``.
        name: The scenario name written into records.
        spec: What defines the stream; default: a digest of all its tensors.
        protocol_defaults: Training protocol values for this stream (e.g. ``{"batch_size": 32}``).

    Raises:
        DataError: If the streams are missing, of different lengths, or not (x, y[, task]) data.
    """
    try:
        train_stream, test_stream = list(benchmark.train_stream), list(benchmark.test_stream)
    except AttributeError:
        raise DataError(
            f"{type(benchmark).__name__} is not an Avalanche benchmark (it needs train_stream and test_stream); "
            f"build one with e.g. avalanche.benchmarks.scenarios.deprecated.generators.nc_benchmark"
        ) from None
    if not train_stream or len(train_stream) != len(test_stream):
        raise DataError(
            f"the benchmark's train and test streams have {len(train_stream)} and {len(test_stream)} experiences; "
            f"cl_bench pairs them one to one, so they must be equally long and not empty"
        )
    parts = []
    for i, (tr, te) in enumerate(zip(train_stream, test_stream, strict=True)):
        parts.append((_tensors(tr.dataset, f"train experience {i}"), _tensors(te.dataset, f"test experience {i}")))
    task_sets = [set(p[0][2].tolist()) for p in parts]
    class_sets = [tuple(sorted(set(p[0][1].tolist()))) for p in parts]
    n_classes = int(getattr(benchmark, "n_classes", 0) or 1 + max(int(p[k][1].max()) for p in parts for k in (0, 1)))
    if len({frozenset(s) for s in task_sets}) > 1:
        setting = "task_il"
        if any(len(s) != 1 or max(s) >= len(parts) for s in task_sets):
            raise DataError(
                f"the benchmark's experiences carry task labels {[sorted(s) for s in task_sets]}; cl_bench needs one "
                f"task label per experience, below the number of experiences ({len(parts)})"
            )
    elif len(parts) > 1 and len(set(class_sets)) == 1:
        setting = "domain_il"
    else:
        setting = "class_il"
    experiences = []
    for i, ((xtr, ytr, ttr), (xte, yte, _)) in enumerate(parts):
        task_id = int(ttr[0]) if setting == "task_il" else None
        experiences.append(Experience(i, TensorData(xtr, ytr), TensorData(xte, yte), class_sets[i], task_id,
                                      {"source": "avalanche"}))  # fmt: skip
    if spec is None:
        spec = {"dataset": name, "content_digest": _digest([t for p in parts for s in p for t in s[:2]])}
    spec = {**spec, "n_experiences": len(parts), "classes": [list(c) for c in class_sets]}
    return Scenario(name, experiences, dict(spec), n_classes, setting, dict(protocol_defaults or {}))


def register_benchmark(name: str, benchmark: Any, *, reference: str, description: str | None = None) -> None:
    """Register an Avalanche benchmark (or a zero-argument function making one) as scenario ``name``.

    The benchmark is converted on first use and cached, so ``run(RunSpec(scenario=name, ...))``
    and ``cl-bench`` commands in the same process can use it like a built-in scenario.
    """
    made: list[Scenario] = []

    def build() -> Scenario:
        if not made:
            bm = benchmark() if callable(benchmark) and not hasattr(benchmark, "train_stream") else benchmark
            made.append(scenario_from_benchmark(bm, name))
        return made[0]

    build.__doc__ = description or f"Avalanche benchmark {type(benchmark).__name__} registered as {name!r}."
    SCENARIOS.add(name, build, reference=reference, description=description)


@cache
def benchmarks() -> dict[str, Callable[..., Any]]:
    """The benchmark builders of ``avalanche.benchmarks.classic`` by name (imports Avalanche)."""
    _avalanche()
    import avalanche.benchmarks.classic as classic

    return {n: f for n, f in vars(classic).items() if n[:1].isupper() and callable(f) and not n.endswith("Metric")
            and (inspect.isfunction(f) or inspect.isclass(f))}  # fmt: skip


def _benchmark_entry(name: str) -> Entry[Any]:
    found = benchmarks()
    if name not in found:
        raise UserError(
            f"Avalanche {_avalanche().__version__} has no classic benchmark {name!r}.{_close(name, list(found))} "
            f"The benchmarks are: {', '.join(sorted(found))}."
        )
    fn = found[name]
    owner = f"scenario '{PREFIX}:{name}'"
    params = _parameters(fn, set(), {}, set(), owner)
    config = _config_class(f"Avalanche{name}Config", params, None, owner)

    def build(**kwargs: Any) -> Scenario:
        args = {p.target: kwargs[p.name] for p in params}
        try:
            bm = fn(**{k: list(v) if isinstance(v, tuple) else v for k, v in args.items()})
        except (RuntimeError, OSError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise DataError(
                f"Avalanche's {name} could not load its dataset ({first}). It downloads on first use, which "
                f"needs internet; otherwise put the files where it looks (--set scenario.dataset_root=DIR, in "
                f"the layout torchvision/Avalanche expect) and run again."
            ) from None
        # Where the files live does not change the stream: roots stay out of the spec (and its hash).
        given = {k: v for k, v in config_to_dict(config(**kwargs)).items() if "root" not in k}
        spec = {"dataset": f"{PREFIX}:{name}", "params": given, "avalanche": _avalanche().__version__}
        return scenario_from_benchmark(bm, f"{PREFIX}:{name}", spec)

    build.__doc__ = f"Avalanche's classic benchmark {name}, as tensors."
    reference = f"Avalanche {AVALANCHE_VERSION} benchmark avalanche.benchmarks.classic.{name} (Carta et al., JMLR 2023)"
    return Entry(f"{PREFIX}:{name}", build, config, f"Avalanche {name} (bridge)", reference)


METHODS.add_bridge(PREFIX, _strategy_entry)
SCENARIOS.add_bridge(PREFIX, _benchmark_entry)

__all__ = ["AvalancheStrategy", "register_benchmark", "scenario_from_benchmark", "strategies", "benchmarks"]
