"""Avalanche 0.6 strategies as cl_bench methods (``avalanche:<Strategy>``)."""

from __future__ import annotations

import inspect
import warnings
from functools import cache
from typing import Any, ClassVar

import torch
from torch import nn

from cl_bench.bridges.avalanche.params import (
    ALIASES,
    AVALANCHE_VERSION,
    FROM_STREAM,
    OWNED,
    PAPER_DEFAULTS,
    PREFIX,
    REFERENCES,
    TRAIN_FIELDS,
    Param,
    avalanche_module,
    close_matches,
    config_class,
    parameters_of,
)
from cl_bench.core.config import config_to_dict
from cl_bench.core.errors import ConfigError, DataError, UserError
from cl_bench.core.method import Caps, IterationCallback, Method
from cl_bench.core.registry import METHODS, Entry
from cl_bench.core.types import Experience, PredictContext, StreamInfo
from cl_bench.families.supervised import TrainConfig, build_network

# -- strategies as methods ----------------------------------------------------------------------------------


@cache
def strategies() -> dict[str, type]:
    """Avalanche's supervised strategies by class name (imports Avalanche)."""
    avalanche_module()
    import avalanche.training.supervised as sup
    from avalanche.training.templates.base import BaseTemplate

    return {n: c for n, c in vars(sup).items()
            if inspect.isclass(c) and issubclass(c, BaseTemplate) and not n.startswith("_")}  # fmt: skip



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
    params: ClassVar[tuple[Param, ...]] = ()

    def setup(self, info: StreamInfo, seed: int) -> None:
        super().setup(info, seed)
        self.device = torch.device(info.device)
        if getattr(self.config, "norm", "bn") != "bn" or getattr(self.config, "refresh", False):
            raise ConfigError(
                "norm=adab2n and refresh=true are options of cl_bench's native supervised methods (they act in "
                "its training step); Avalanche strategies train in Avalanche's loop, where they would do "
                "nothing. Drop them, or use the native method (e.g. er, derpp, or the registered adab2n / refresh)."
            )
        self.net, self.opt = build_network(self.config, info)  # the same network and optimiser as native methods
        self.strategy: Any = None  # built at the first experience, when the protocol's batch size is known
        self._plugin: Any = None

    def strategy_kwargs(self) -> dict[str, Any]:
        """The strategy's own parameters, as configured."""
        values = {p.target: getattr(self.config, p.name) for p in self.params}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}  # configs hold lists as tuples

    def _stream_kwargs(self) -> dict[str, Any]:
        accepted = inspect.signature(self.strategy_cls.__init__).parameters
        return {k: f(self.info) for k, f in FROM_STREAM.items() if k in accepted}

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
            f"Avalanche {avalanche_module().__version__} has no strategy {name!r}."
            f"{close_matches(name, list(found) + list(ALIASES))}"
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
    skip = OWNED | set(FROM_STREAM)
    params = parameters_of(cls.__init__, skip, PAPER_DEFAULTS.get(cls_name, {}), TRAIN_FIELDS, owner)
    config = config_class(f"Avalanche{cls_name}Config", params, TrainConfig, owner)
    method = type(f"Avalanche{cls_name}", (AvalancheStrategy,), {
        "Config": config, "strategy_cls": cls, "params": tuple(params),
        "__doc__": f"Avalanche's {cls_name} strategy, trained in Avalanche's loop, evaluated by cl_bench.",
        "__module__": __name__,
    })  # fmt: skip
    method.name = f"{PREFIX}:{name}"
    reference = REFERENCES.get(cls_name, f"Avalanche {AVALANCHE_VERSION} strategy avalanche.training.{cls_name}")
    desc = f"Avalanche {cls_name} (bridge)"
    return Entry(f"{PREFIX}:{name}", method, config, desc, f"{reference}; via Avalanche (Carta et al., JMLR 2023)")



METHODS.add_bridge(PREFIX, _strategy_entry)

__all__ = ["AvalancheStrategy", "strategies", "to_avalanche_experience"]
