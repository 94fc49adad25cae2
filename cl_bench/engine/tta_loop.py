"""The test-time adaptation loop: a source phase, then every test batch through ``adapt``, counted online.

Errors count on the prediction ``adapt`` returns, made before the method updates on the batch. The
:class:`TTAEvaluator` owns the online counts and the clean source accuracy after the stream, as the
:class:`~cl_bench.engine.evaluator.Evaluator` owns a continual-learning run's matrix.

References:
    Döbler, Marsden & Yang, "Robust Mean Teacher for Continual and Gradual Test-Time Adaptation"
        (CVPR 2023): the source-model-then-adapt protocol and online error.
    Wang, Fink, Van Gool & Dai, "Continual Test-Time Domain Adaptation" (CVPR 2022): accuracy on the
        clean source domain after the stream as a measure of forgetting.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from typing import Any

import torch

from cl_bench.components.window_bn import keep_windows
from cl_bench.core.errors import UserError
from cl_bench.core.record import add_source_curve
from cl_bench.core.types import PredictContext, Scenario, StreamInfo, TensorData
from cl_bench.data.tta_streams import TTA_BATCH_SIZE
from cl_bench.engine.loop import Loop
from cl_bench.engine.source import source_model
from cl_bench.engine.spec import Protocol
from cl_bench.metrics import TTAMatrix


class TTAEvaluator:
    """Owns the online matrix of a TTA run: per-experience online counts, clean accuracy after the stream.

    Args:
        scenario: The TTA stream (with a source domain).
        batch_size: Examples per forward call on the clean source test set.
    """

    def __init__(self, scenario: Scenario, batch_size: int) -> None:
        self.scenario = scenario
        self.batch_size = batch_size
        self.matrix = TTAMatrix(len(scenario), self._severities())

    def _severities(self) -> list[int]:
        # Declared by the stream (Experience.shift); 0 = clean source images or no declared severity.
        return [0 if e.shift is None else e.shift.severity for e in self.scenario]

    def due(self, iteration: int) -> bool:
        """The TTA protocol has no periodic evaluation: the online counts are the measurement."""
        return False

    def begin(self) -> None:
        """Start from a fresh matrix with the stream's declared severities."""
        self.matrix = TTAMatrix(len(self.scenario), self._severities())

    def end_experience(self, e: int, iteration: int, correct: int, total: int) -> None:
        """Record the online counts of experience ``e``, finished at ``iteration``."""
        if e != self.matrix.n_finished:
            raise RuntimeError(f"experience {e} ended but the matrix expects experience {self.matrix.n_finished}")
        self.matrix.end_experience(iteration, correct, total)

    def source_correct(self, predict: Any, data: TensorData) -> int:
        """Correct predictions of ``predict`` (which changes nothing) on the clean source test set ``data``."""
        correct = 0
        with torch.inference_mode():
            for b in range(math.ceil(len(data) / self.batch_size)):
                x, y = data.batch(slice(b * self.batch_size, (b + 1) * self.batch_size))
                correct += int((predict(x, PredictContext()).argmax(1) == y).sum())
        return correct

    def end_stream(self, predict: Any, data: TensorData | None) -> bool:
        """Measure ``predict`` (which changes nothing) on the clean source test set once; True if it ran."""
        if data is None or not len(data) or self.matrix.clean_after:
            return False
        self.matrix.set_clean_after(self.source_correct(predict, data), len(data))
        return True

    def state(self) -> dict[str, Any]:
        return self.matrix.to_dict()

    def load_state(self, state: dict[str, Any]) -> None:
        self.matrix = TTAMatrix.from_dict(state, len(self.scenario))


class TTALoop(Loop):
    """The TTA loop: source phase in :meth:`stream_info`, then each test batch to ``adapt`` once.

    ``Protocol.tta_reset`` decides when the method returns to the source model: "episodic" restores the
    state it had right after ``setup`` after every batch, "shift" calls ``setup`` again at each domain
    change. ``Protocol.tta_source_every`` > 0 measures the adapting model on the clean source test split
    before the stream, every k batches and after the stream: ``source_curve`` ([iteration, correct,
    total] points), which the record stores beside the accuracy matrix.
    """

    kind = "tta"

    def resolve_protocol(self, protocol: Protocol) -> Protocol:
        if self.scenario.source is None:
            raise UserError(
                f"method {self.spec.method!r} adapts at test time and needs a test-time adaptation stream (a "
                f"scenario with a clean source domain: cifar10_c, cifar100_c, mnist_c, digits_c, corrupted "
                f"or toy_tta); {self.spec.scenario!r} is not one. Pick one of these with --scenario."
            )
        if protocol.batch_size is None:
            protocol = dataclasses.replace(protocol, batch_size=self.scenario.protocol_defaults.get(
                "tta_batch_size", TTA_BATCH_SIZE))  # fmt: skip
        return protocol.resolve(self.scenario)

    def make_evaluator(self) -> TTAEvaluator:
        return TTAEvaluator(self.scenario, self.protocol.eval_batch_size)

    def stream_info(self) -> StreamInfo:
        """The stream's info with the source model (trained or loaded: the source phase) and source data."""
        src = self.scenario.source
        assert src is not None
        t0 = time.perf_counter()
        model = source_model(self.scenario, self.spec.seed, self.spec.device)
        self.cost["source_seconds"] = round(time.perf_counter() - t0, 3)
        data = None if src.free or src.train is None else src.train.to(self.spec.device)
        return dataclasses.replace(super().stream_info(), source_model=model, source_data=data)

    @property
    def reset_mode(self) -> str:
        """The run's ``tta_reset``: the protocol's, else the stream's ("shift" on reset_each_shift streams)."""
        src = self.scenario.source
        return self.protocol.tta_reset or ("shift" if src is not None and src.reset_each_shift else "none")

    def _snapshot(self) -> None:
        # Episodic mode returns to the state right after setup; load_state_dict is much cheaper than a new
        # setup (which may deep-copy networks or warm up on source data). Methods that cannot load a state
        # (caps.resumable False) get setup again instead.
        self.initial = None
        if self.reset_mode == "episodic" and self.method.caps.resumable:
            self.initial = copy.deepcopy(self.method.state_dict())

    def _reset(self) -> None:
        if self.initial is None:
            self.method.setup(self.info, self.spec.seed)
        else:
            # The sliding window of test statistics (``window=W``) survives, as in the RMT benchmark, whose reset
            # reloads the weights and keeps its input buffer: else an episodic window would hold one batch.
            self.method.load_state_dict(keep_windows(copy.deepcopy(self.initial), self.method.state_dict()))

    def _source_point(self, iteration: int) -> None:
        """One point of the clean-source curve at ``iteration`` (no-op without a clean source test split)."""
        data = self.scenario.source.test if self.scenario.source is not None else None
        if data is None or not len(data) or (self.source_curve and self.source_curve[-1][0] == iteration):
            return
        t0 = time.perf_counter()
        correct = self.evaluator.source_correct(self.method.predict, data.to(torch.device(self.spec.device)))
        self.source_curve.append([iteration, correct, len(data)])
        self.cost["eval_seconds"] += time.perf_counter() - t0

    def record(self, status: str, error: str | None = None) -> dict[str, Any]:
        rec = super().record(status, error)
        if self.protocol.tta_source_every:
            add_source_curve(rec, getattr(self, "source_curve", []))  # [] if the run failed before begin
        return rec

    def begin(self) -> None:
        self.evaluator.begin()
        self.partial = [0, 0]
        self.source_curve: list[list[int]] = []
        self._snapshot()
        if self.protocol.tta_source_every:
            self._source_point(0)  # the source model before any adaptation

    def iterations(self, e: int) -> int:
        cap = self.protocol.max_iterations or math.inf  # smoke runs (Protocol.max_iterations)
        return int(min(cap, math.ceil(len(self.scenario[e].test) / self.protocol.batch_size)))

    def state(self) -> dict[str, Any]:
        out = {**super().state(), "tta_partial": list(self.partial)}
        if self.protocol.tta_source_every:
            out["tta_source_curve"] = [list(p) for p in self.source_curve]
        return out

    def restore(self, state: dict[str, Any]) -> None:
        self._snapshot()  # called right after setup, before the checkpointed state is loaded
        self.partial = list(state.get("tta_partial", [0, 0]))  # online [correct, total] of the experience so far
        self.source_curve = [list(p) for p in state.get("tta_source_curve", [])]
        super().restore(state)

    def replay_begin(self) -> None:
        pass  # TTA methods never see experiences: nothing to replay

    def loop(self) -> None:
        bs = self.protocol.batch_size
        device = torch.device(self.spec.device)
        src = self.scenario.source
        assert src is not None
        start_e, _, start_b = self.position
        for e in range(start_e, len(self.scenario)):
            exp = self.scenario[e]
            if not (self.begun and e == start_e):
                if self.reset_mode == "shift" and e > 0 and exp.shift != self.scenario[e - 1].shift:
                    # Reset = a fresh copy of the source model and fresh optimiser/teacher state.
                    self.method.setup(self.info, self.spec.seed)
                self.position, self.begun, self.partial = (e, 0, 0), True, [0, 0]
            data = exp.test.to(device)
            n_batches = math.ceil(len(data) / bs)
            if self.protocol.max_iterations:  # smoke runs (Protocol.max_iterations)
                n_batches = min(n_batches, self.protocol.max_iterations)
            for b in range(start_b if e == start_e else 0, n_batches):
                t0 = time.perf_counter()
                x, y = data.batch(slice(b * bs, (b + 1) * bs))
                logits = self.counted("train_flops", self.method.adapt, x)
                if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (len(x), self.scenario.n_classes):
                    shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
                    raise RuntimeError(f"{self.spec.method}.adapt returned {shape}; expected logits of shape "
                                       f"{(len(x), self.scenario.n_classes)}")  # fmt: skip
                self.partial[0] += int((logits.argmax(1) == y).sum())
                self.partial[1] += len(y)
                if self.reset_mode == "episodic":
                    self._reset()
                self.cost["train_seconds"] += time.perf_counter() - t0
                self.position = (e, 0, b + 1)
                every = self.protocol.tta_source_every
                if every and (self.iteration + 1) % every == 0:
                    self._source_point(self.iteration + 1)  # before tail, so a checkpoint there holds it
                self.tail(e)
            self.evaluator.end_experience(e, self.iteration, *self.partial)
            self.position, self.begun, self.partial = (e + 1, 0, 0), False, [0, 0]
        if self.protocol.tta_source_every:
            self._source_point(self.iteration)  # after the stream
        t0 = time.perf_counter()
        if self.evaluator.end_stream(self.method.predict, None if src.test is None else src.test.to(device)):
            self.cost["eval_seconds"] += time.perf_counter() - t0

    def step_values(self, loss: float | None) -> dict[str, float]:
        """Trackers get the online accuracy of the current domain so far (adaptation reports no loss)."""
        correct, total = self.partial
        return {"online/acc_domain": correct / total} if total else {}


__all__ = ["TTAEvaluator", "TTALoop"]
