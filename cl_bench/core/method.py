"""The ``Method`` interface users plug in: the hooks, ``Caps`` and ``NoConfig``.

Method families (supervised, test-time adaptation, pretrained, ViT prompts) live in
:mod:`cl_bench.families`; this file is the contract only and imports no network code.

The runner owns the loop; a method owns its network, optimiser and memory.
Like scikit-learn estimators, ``__init__`` only stores the (validated) config;
everything with state is built in :meth:`Method.setup`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from cl_bench.core.types import Batch, Experience, PredictContext, StreamInfo, TensorData


@dataclass(frozen=True)
class Caps:
    """What a method needs or does, checked by the runner and the conformance suite.

    Attributes:
        task_id_at_test: Needs task ids at prediction time (task-incremental only).
        adapts_at_test: ``adapt`` updates the model on unlabelled test batches.
        memory: "none" (stores no examples), "bounded" (``memory_size()`` stays
            within ``memory_budget()``) or "unbounded" (e.g. joint training).
        pretrained_backbone: Starts from pretrained weights.
        drives_loop: Runs its own training loop (:meth:`Method.train_experience`, e.g. a
            strategy of another library) instead of receiving batches through ``observe``;
            it reports each iteration to the runner, which evaluates on the usual schedule.
        resumable: ``state_dict``/``load_state_dict`` capture everything, so checkpoints work
            (False: the runner refuses ``checkpoint_every`` and ``resume`` with a clear message).
        updates_parameters: ``adapt`` may change network parameters (False: output-only methods such
            as LAME or T3A; the conformance suite then checks that no ``nn.Parameter`` of the method's
            networks changes during ``adapt``).
        source_data: Test-time adaptation: whether the method reads the labelled source training data
            (``StreamInfo.source_data``): "none" (never), "optional" (uses it when the stream has it and
            has a source-free form, run without it or when configured to) or "required" (refuses a
            source-free stream). A declaration for tables and users; the loop passes the data regardless.
        exceptions: Conformance checks the method is exempt from, each with a reason.
    """

    task_id_at_test: bool = False
    adapts_at_test: bool = False
    memory: Literal["none", "bounded", "unbounded"] = "none"
    pretrained_backbone: bool = False
    drives_loop: bool = False
    resumable: bool = True
    updates_parameters: bool = True
    source_data: Literal["none", "optional", "required"] = "none"
    exceptions: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class IterationCallback:
    """What a method that drives its own loop (``caps.drives_loop``) gets from the runner.

    The loop must train on ``batch_size`` examples per iteration for ``epochs`` passes
    (the run's protocol), and call the callback after every optimiser step; the runner
    then counts the iteration and runs any evaluation due, exactly as for ``observe``.

    Attributes:
        batch_size: Training mini-batch size of the run.
        epochs: Passes over each experience.
        seed: The run seed (for the loop's shuffling).
        report: ``report(loss, last)``: called after each iteration with its loss;
            ``last`` is True for the experience's final iteration (whose evaluation is
            the boundary evaluation that follows the loop).
    """

    batch_size: int
    epochs: int
    seed: int
    report: Callable[[float, bool], None]

    def __call__(self, loss: float, last: bool) -> None:
        self.report(loss, last)


def held_bytes(n: int, *tensors: torch.Tensor | None) -> int:
    """Bytes of the first ``n`` rows of each tensor (a preallocated buffer counts only its filled slots)."""
    return sum(int(t[:n].numel()) * t.element_size() for t in tensors if t is not None)


@dataclass(frozen=True)
class NoConfig:
    """Config of a method without hyper-parameters."""


class Method:
    """Base class of continual-learning and test-time-adaptation methods.

    Subclasses set ``Config`` (a frozen dataclass whose defaults come from the
    method's paper) and ``caps``, and implement :meth:`predict` plus whichever
    hooks they need. ``name`` is set by the registry.
    """

    Config: ClassVar[type] = NoConfig
    caps: ClassVar[Caps] = Caps()
    name: ClassVar[str] = ""
    #: Config overrides the conformance suite starts from (e.g. a tiny randomly
    #: initialised backbone, so the suite stays fast and never needs weight files).
    conformance_config: ClassVar[dict[str, Any]] = {}

    def __init__(self, config: Any | None = None) -> None:
        self.config = config if config is not None else self.Config()

    def setup(self, info: StreamInfo, seed: int) -> None:
        """Build networks and optimisers for a stream described by ``info``."""
        self.info = info
        self.seed = seed

    def train_data(self, exp: Experience) -> TensorData | None:
        """The data the runner iterates over for ``exp`` (default: its training set)."""
        return exp.train

    def begin_experience(self, exp: Experience) -> None:
        """Called before the first batch of ``exp``."""

    def observe(self, batch: Batch) -> dict[str, Any]:
        """Learn from one labelled batch; return scalars to log (``loss`` at least)."""
        raise NotImplementedError(f"{type(self).__name__} does not train on labelled batches")

    def train_experience(self, exp: Experience, callback: IterationCallback) -> None:
        """Train on ``exp`` in the method's own loop (only with ``caps.drives_loop``).

        Called between :meth:`begin_experience` and :meth:`end_experience` instead of
        :meth:`observe`; ``callback(loss, last)`` must follow every training iteration.
        """
        raise NotImplementedError(f"{type(self).__name__} does not drive its own training loop")

    def end_experience(self, exp: Experience) -> None:
        """Called after the last batch of ``exp`` (consolidation, memory update)."""

    def predict(self, x: torch.Tensor, ctx: PredictContext) -> torch.Tensor:
        """Logits for inputs ``x`` without changing any state."""
        raise NotImplementedError

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        """Test-time adaptation: predict an unlabelled batch, then update on it."""
        raise NotImplementedError(f"{type(self).__name__} does not adapt at test time")

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly (weights, optimiser, memory, RNG)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    def memory_size(self) -> int:
        """Number of stored training examples."""
        return 0

    def memory_budget(self) -> int | None:
        """Maximum of :meth:`memory_size` allowed now (None = no bound)."""
        return None

    def memory_bytes(self) -> int | None:
        """Bytes of what the memory holds: stored examples and what is kept with them (labels, task ids,
        DER's logits); None = not reported. The run record's ``cost.buffer_bytes``, beside
        ``cost.exemplars`` (:meth:`memory_size`), so that methods can be compared at equal memory.
        """
        return None

    def record_extras(self) -> dict[str, Any]:
        """Facts the run record adds to ``record["method"]`` beside name and config (default none).

        Methods on pretrained backbones return ``{"backbone": {"backbone": NAME, "weights_sha256": HASH}}``,
        so a record names the exact weights it used. Must work before :meth:`setup` too.
        """
        return {}
