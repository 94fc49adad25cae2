"""The loops of a run: the shared :class:`Loop` (state, tail, record, checkpoint) and the CL loop.

A loop owns the iteration (a method owns its network, optimiser and memory). Every iteration of every
loop ends in the same :meth:`Loop.tail`: count it, evaluate when the evaluator's schedule says so,
checkpoint when due, stop when asked. The :class:`~cl_bench.engine.evaluator.Evaluator` owns the schedule
and is the only writer of the accuracy matrix; :func:`cl_bench.core.record.new_record` spells the record.

Every source of randomness is either seeded from the run seed per (experience, epoch) — per
(experience, epoch, batch) for the training augmentation — or saved in checkpoints, so the same seed gives
the same record on CPU and a run killed at any point resumes to the same result.
"""

from __future__ import annotations

import math
import resource
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

import torch

from cl_bench.core.config import build_config, config_to_dict
from cl_bench.core.errors import DivergenceError, UserError
from cl_bench.core.method import IterationCallback, Method
from cl_bench.core.record import environment, new_record, write_record
from cl_bench.core.registry import METHODS, SCENARIOS
from cl_bench.core.types import Batch, Experience, Scenario, StreamInfo
from cl_bench.engine import checkpoint
from cl_bench.engine.evaluator import Evaluator
from cl_bench.engine.precision import Precision
from cl_bench.engine.rng import augment_seed, rng_state, seed_everything, set_rng_state, shuffle_seed
from cl_bench.engine.spec import Protocol, RunSpec, check_device
from cl_bench.report.trackers import Trackers


class RunInterrupted(Exception):
    """Raised by a run given ``stop_after``: the process stopped as if killed there (for testing resume)."""


def peak_rss_mb() -> int:
    """Peak resident memory of this process in MiB."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024)


class Loop:
    """State of one run and what every loop shares; subclasses fill in :meth:`loop` and :meth:`iterations`.

    Args:
        spec: What to run.
        run_dir: Where the record and checkpoints go (nothing is written by the constructor).
        checkpoint_every: Save a checkpoint every N iterations (0 = never).
        progress: Show a progress bar.
        method_cls: Method class to run instead of ``METHODS[spec.method]``.
        stop_after: Testing hook: raise :class:`RunInterrupted` after this many iterations.
    """

    kind: ClassVar[str] = "cl"

    def __init__(
        self,
        spec: RunSpec,
        run_dir: Path,
        checkpoint_every: int,
        progress: bool,
        method_cls: type[Method] | None = None,
        stop_after: int | None = None,
    ) -> None:
        check_device(spec.device)
        self.spec = spec
        if method_cls is None:
            method_cls = METHODS.get(spec.method).obj
            self.method_config = METHODS.config(spec.method, spec.method_config)
        else:
            self.method_config = build_config(method_cls.Config, spec.method_config, f"method {spec.method!r}")
        self.scenario_config = SCENARIOS.config(spec.scenario, spec.scenario_config)
        t0 = time.perf_counter()
        self.scenario: Scenario = SCENARIOS.create(spec.scenario, **spec.scenario_config)
        data_seconds = time.perf_counter() - t0
        self.method: Method = method_cls(self.method_config)
        self.method.record_extras()  # e.g. a pretrained backbone's weight file: missing or not given, refused here
        caps = self.method.caps
        self.protocol = self.resolve_protocol(spec.protocol)
        p = self.protocol  # refused here (fp16 on CPU), before anything touches the disk
        self.precision = Precision(p.precision, p.channels_last, p.compile, spec.device)
        if checkpoint_every and not caps.resumable:
            raise UserError(
                f"method {spec.method!r} cannot be checkpointed (caps.resumable is False: its state lives "
                f"outside cl_bench, e.g. in another library's training strategy), so --checkpoint-every and "
                f"--resume are not supported for it. Run it without --checkpoint-every; a killed run has to "
                f"start again."
            )
        if caps.task_id_at_test and self.scenario.setting != "task_il":
            raise UserError(
                f"method {spec.method!r} needs task ids at test time, which only the task-incremental "
                f"setting gives; this stream is {self.scenario.setting}. Use --set scenario.setting=task_il "
                f"or another method."
            )
        self.run_dir = run_dir
        self.checkpoint_every = checkpoint_every
        self.stop_after = stop_after
        self.progress = progress
        self.evaluator = self.make_evaluator()
        self.iteration = 0
        self.position = (0, 0, 0)  # next (experience, epoch, batch) to train on
        self.begun = False  # whether begin_experience ran for position[0]
        self.cost: dict[str, float] = {"train_seconds": 0.0, "eval_seconds": 0.0, "data_seconds": data_seconds}
        self.count_flops = False  # --count-flops: set by the runner (exact counts cost ~4x the step time)
        self.last_loss = math.nan
        self.bar: Any = None
        self.trackers = Trackers((), run_dir)  # --log: set by the runner, started in start()

    # -- what a loop kind decides ---------------------------------------------------------------------------
    def resolve_protocol(self, protocol: Protocol) -> Protocol:
        """The protocol with the stream's defaults filled in."""
        return protocol.resolve(self.scenario)

    def make_evaluator(self) -> Any:
        """The evaluator that owns this run's schedule and matrix."""
        return Evaluator(
            self.scenario, eval_every=self.protocol.eval_every, eval_subset=self.protocol.eval_subset,
            seed=self.spec.seed, device=self.spec.device, batch_size=self.protocol.eval_batch_size,
            resample=self.protocol.resample_eval_subset,
        )  # fmt: skip

    def stream_info(self) -> StreamInfo:
        """What the method is told in ``setup``."""
        sc = self.scenario
        return StreamInfo(sc.input_shape, sc.n_classes, len(sc), sc.setting, self.spec.device,
                          input_transform=sc[0].test.transform, flip_invariant=sc.flip_invariant)  # fmt: skip

    def begin(self) -> None:
        """What happens before the first iteration of a fresh run (CL: the evaluation before training)."""
        self.evaluate(full=True, n_seen=0)

    def iterations(self, e: int) -> int:
        """Iterations of experience ``e`` (for the progress bar)."""
        data = self.scenario[e].train
        n = len(data) if data is not None else 0
        cap = self.protocol.max_iterations or math.inf  # smoke runs (Protocol.max_iterations)
        return self.protocol.epochs * int(min(cap, math.ceil(n / self.protocol.batch_size)))

    def loop(self) -> None:
        """Run the stream from :attr:`position` to its end."""
        raise NotImplementedError

    # -- record and checkpoint ------------------------------------------------------------------------------
    def record(self, status: str, error: str | None = None) -> dict[str, Any]:
        """The run record as of now."""
        spec, cost = self.spec, self.cost
        return new_record(
            run_id=self.run_dir.name, status=status,
            method={"name": spec.method, "config": config_to_dict(self.method_config), **self.method.record_extras()},
            scenario={"name": spec.scenario, "spec": self.scenario.spec, "spec_hash": self.scenario.spec_hash,
                      **({"data": self.scenario.data} if self.scenario.data else {})},
            protocol={**self.protocol.to_dict(), "setting": self.scenario.setting}, seed=spec.seed,
            matrix=self.evaluator.matrix,
            cost={**cost, "peak_rss_mb": peak_rss_mb(), **self.model_cost()},
            env=environment(spec.device),
            request={"method_config": spec.method_config, "scenario_config": spec.scenario_config,
                     "protocol": spec.protocol.to_dict(), "device": spec.device,
                     "checkpoint_every": self.checkpoint_every},
            error=error,
        )  # fmt: skip

    def model_cost(self) -> dict[str, float]:
        """The method's network size, its memory (exemplars, bytes) and, on CUDA, the peak GPU memory."""
        out: dict[str, float] = {}
        net = getattr(self.method, "net", None)  # SupervisedMethod's network; other families may name it otherwise
        if isinstance(net, torch.nn.Module):
            out["n_params"] = sum(p.numel() for p in net.parameters())
        if self.spec.device.startswith("cuda") and torch.cuda.is_available():
            out["peak_gpu_mb"] = int(torch.cuda.max_memory_allocated() / 2**20)
        # What the method keeps, for comparisons at equal memory; only once set up (Method.setup sets ``info``).
        if self.method.caps.memory != "none" and hasattr(self.method, "info"):
            out["exemplars"] = self.method.memory_size()
            size = self.method.memory_bytes()
            if size is not None:
                out["buffer_bytes"] = size
        return out

    def counted(self, key: str, fn: Any, *args: Any) -> Any:
        """``fn(*args)`` under the run's precision (autocast), its FLOPs added to ``cost[key]`` when counted.

        Every training, adaptation and evaluation call of the method goes through here, so
        ``Protocol.precision`` applies to all of them.
        """
        if not self.count_flops:
            with self.precision.autocast():
                return fn(*args)
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter, self.precision.autocast():
            out = fn(*args)
        self.cost[key] = self.cost.get(key, 0) + counter.get_total_flops()
        return out

    def state(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue to the same record."""
        return {
            "iteration": self.iteration, "position": self.position, "begun": self.begun,
            "matrix": self.evaluator.state(), "method": self.method.state_dict(), "rng": rng_state(),
            "cost": dict(self.cost), "precision": self.precision.state_dict(),
        }  # fmt: skip

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state` (after ``setup``)."""
        self.iteration = state["iteration"]
        self.position = tuple(state["position"])
        self.cost = state["cost"]
        self.evaluator.load_state(state["matrix"])
        if state["begun"]:
            self.replay_begin()
            self.begun = True
        self.method.load_state_dict(state["method"])
        self.precision.load_state_dict(state.get("precision", {}))
        set_rng_state(state["rng"])

    def replay_begin(self) -> None:
        # begin_experience may re-reference the experience's data; the saved state then overrides it.
        self.method.begin_experience(self.scenario[self.position[0]])

    def save_checkpoint(self) -> None:
        checkpoint.save(self.run_dir, self.spec, self.state())
        write_record(self.run_dir, self.record("running"))

    # -- driving --------------------------------------------------------------------------------------------
    def start(self, state: dict[str, Any] | None) -> None:
        """Seed, set the method up, then begin afresh (``state`` None) or continue from ``state``."""
        # The bar opens before the method's setup: building a large backbone and the evaluation before training
        # can take minutes on CPU, and a terminal must show what is happening from the first step (issue 13).
        self.open_bar("setting up the method")
        try:
            self.info = self.stream_info()
            seed_everything(self.spec.seed)
            self.method.setup(self.info, self.spec.seed)
            self.precision.prepare(self.method)  # channels-last / compiled network, grad scaler (fp16)
            if state is None:
                self.open_bar("evaluating before training")
                self.begin()
            else:
                self.restore(state)
        except BaseException:
            self.close_bar()
            raise

    def open_bar(self, phase: str | None = None) -> None:
        """Show the progress bar (when enabled), its description naming ``phase`` if given."""
        if not self.progress:
            return
        desc = f"{self.spec.method} on {self.spec.scenario}" + (f" ({phase})" if phase else "")
        if self.bar is None:
            from tqdm import tqdm

            total = sum(self.iterations(e) for e in range(len(self.scenario)))
            self.bar = tqdm(total=total, initial=self.iteration, desc=desc, unit="it", dynamic_ncols=True,
                            leave=False)  # fmt: skip
        else:
            self.bar.n = self.iteration
            self.bar.set_description(desc)

    def close_bar(self) -> None:
        """Close the progress bar, if one is open."""
        if self.bar is not None:
            self.bar.close()
        self.bar = None

    def train(self) -> None:
        """Run :meth:`loop` under the progress bar."""
        self.open_bar()
        try:
            self.loop()
        finally:
            self.close_bar()

    def evaluate(self, full: bool, n_seen: int) -> None:
        t0 = time.perf_counter()
        p = self.counted("eval_flops", lambda: self.evaluator.evaluate(self.method.predict, self.iteration, n_seen,
                                                                       full=full))  # fmt: skip
        self.cost["eval_seconds"] += time.perf_counter() - t0
        if self.bar is not None:
            row = [a for a in self.evaluator.matrix.acc_row(p) if not math.isnan(a)]
            if row:
                self.bar.set_postfix(acc=f"{sum(row) / len(row):.3f}", loss=f"{self.last_loss:.3f}", refresh=False)
        if self.trackers:
            accs = self.evaluator.matrix.acc_row(p)
            seen = [a for a in accs[:n_seen] if not math.isnan(a)]
            values = {f"acc/exp{j}": a for j, a in enumerate(accs)}
            if seen:
                values["acc/mean_seen"] = sum(seen) / len(seen)
            self.trackers.log(self.iteration, values)

    def step_values(self, loss: float | None) -> dict[str, float]:
        """What the trackers get after each iteration: the training loss and the optimiser's learning rate."""
        values = {} if loss is None else {"train/loss": loss}
        opt = getattr(self.method, "opt", None)  # SupervisedMethod's optimiser; other methods may have none
        if isinstance(opt, torch.optim.Optimizer):
            values["train/lr"] = float(opt.param_groups[0]["lr"])
        return values

    def tail(self, e: int, *, loss: float | None = None, last: bool = False, can_checkpoint: bool = True) -> None:
        """End one iteration of experience ``e``: count, evaluate when due, checkpoint, stop.

        Args:
            e: The experience the iteration belonged to.
            loss: Its training loss (None for adaptation steps, which report none).
            last: The experience's last iteration: its boundary evaluation follows, so no periodic one.
            can_checkpoint: False inside a method's own loop, whose position is not in the checkpoint.
        """
        self.iteration += 1
        if self.bar is not None:
            self.bar.update(1)
        if self.trackers:
            self.trackers.log(self.iteration, self.step_values(loss))
        if loss is not None:
            self.last_loss = loss
            if not math.isfinite(loss):
                raise DivergenceError(
                    f"the training loss became {loss} at iteration {self.iteration} (experience {e}) of "
                    f"{self.spec.method} on {self.spec.scenario}: training diverged. Lower the learning rate "
                    f"(e.g. --set lr=...) or the regularisation strength and run again. The partial accuracy "
                    f"matrix is kept in the failed record."
                )
        if self.evaluator.due(self.iteration) and not last:
            self.evaluate(full=False, n_seen=e + 1)
        if can_checkpoint and self.checkpoint_every and self.iteration % self.checkpoint_every == 0:
            self.save_checkpoint()
        if self.stop_after is not None and self.iteration >= self.stop_after:
            raise RunInterrupted(f"stopped after iteration {self.iteration} (stop_after)")


class CLLoop(Loop):
    """The continual-learning loop: experiences in order, batches to ``observe`` (or the method's own loop)."""

    def loop(self) -> None:
        bs, epochs = self.protocol.batch_size, self.protocol.epochs
        device = torch.device(self.spec.device)
        task_il = self.scenario.setting == "task_il"
        start_e, start_epoch, start_b = self.position
        for e in range(start_e, len(self.scenario)):
            exp = self.scenario[e]
            if not (self.begun and e == start_e):
                self.position, self.begun = (e, 0, 0), True
                self.method.begin_experience(exp)
            if self.method.caps.drives_loop:
                self._drive_experience(exp)
            data = None if self.method.caps.drives_loop else self.method.train_data(exp)
            if data is not None and len(data) > 0:
                data = data.to(device)
                n = len(data)
                n_batches = math.ceil(n / bs)
                if self.protocol.max_iterations:  # smoke runs (Protocol.max_iterations)
                    n_batches = min(n_batches, self.protocol.max_iterations)
                first_epoch = start_epoch if e == start_e else 0
                for epoch in range(first_epoch, epochs):
                    gen = torch.Generator().manual_seed(shuffle_seed(self.spec.seed, e, epoch))
                    perm = torch.randperm(n, generator=gen).to(device)
                    if self.protocol.online and self.scenario.ordered:
                        # A task-free stream that defines its order (e.g. blurry boundaries) is consumed in it.
                        perm = torch.arange(n, device=device)
                    first_b = start_b if (e == start_e and epoch == start_epoch) else 0
                    ahead = self._prefetch(data, perm, range(first_b, n_batches), e, epoch)
                    for b in range(first_b, n_batches):
                        aug = None
                        if data.augment is not None and ahead is None:
                            aug = torch.Generator().manual_seed(augment_seed(self.spec.seed, e, epoch, b))
                        loss = self._step(data, perm[b * bs : (b + 1) * bs], e, exp.task_id if task_il else None,
                                          aug, ahead)  # fmt: skip
                        self.position = (e, epoch, b + 1) if b + 1 < n_batches else (e, epoch + 1, 0)
                        self.tail(e, loss=loss, last=epoch == epochs - 1 and b == n_batches - 1)
            self.method.end_experience(exp)
            self.evaluate(full=True, n_seen=e + 1)
            self.evaluator.end_experience()
            self.position, self.begun = (e + 1, 0, 0), False

    def _prefetch(self, data: Any, perm: torch.Tensor, batches: range, e: int, epoch: int) -> Any:
        # File-backed data (cl_bench.data.filedata.FileData) decodes batches ahead in DataLoader workers; the
        # augmentation seeds are the same per-batch seeds as for tensors, so results do not depend on it.
        if not hasattr(data, "iter_batches"):
            return None
        bs = self.protocol.batch_size
        seeds = [augment_seed(self.spec.seed, e, epoch, b) if data.augment is not None else None for b in batches]
        return iter(data.iter_batches([perm[b * bs : (b + 1) * bs] for b in batches], seeds))

    def _step(
        self, data: Any, idx: torch.Tensor, e: int, task_id: int | None, aug: torch.Generator | None, ahead: Any
    ) -> float:
        """One ``observe`` call; returns its loss."""
        t0 = time.perf_counter()
        raw, view = None, getattr(data, "view", None)
        if ahead is not None:
            x, y, raw = next(ahead)
        elif hasattr(data, "train_batch"):
            x, y, raw = data.train_batch(idx, generator=aug)
        else:  # a method's own data type with only the batch interface: its memory keeps model inputs
            x, y = data.batch(idx, generator=aug)
        x = self.precision.inputs(x)
        task_ids = None
        if task_id is not None:
            task_ids = data.t[idx] if data.t is not None else torch.full_like(y, task_id)
        # The raw inputs and the view ride along so replay memories keep un-augmented examples (Batch.raw).
        batch = Batch(x, y, task_ids, e, raw=raw, view=view if raw is not None else None)
        out = self.counted("train_flops", self.method.observe, batch)
        self.cost["train_seconds"] += time.perf_counter() - t0
        return float(out["loss"])

    def _drive_experience(self, exp: Experience) -> None:
        """Train ``exp`` in the method's own loop; its callback ends each iteration in the shared tail."""
        e = exp.index
        mark = time.perf_counter()

        def report(loss: float, last: bool) -> None:
            nonlocal mark
            self.cost["train_seconds"] += time.perf_counter() - mark
            self.tail(e, loss=float(loss), last=last, can_checkpoint=False)
            mark = time.perf_counter()

        callback = IterationCallback(self.protocol.batch_size, self.protocol.epochs, self.spec.seed, report)
        eval_before = self.cost.get("eval_flops", 0)
        self.counted("train_flops", self.method.train_experience, exp, callback)
        if self.count_flops:  # evaluations inside the method's loop were counted in both: keep them in eval only
            self.cost["train_flops"] -= self.cost.get("eval_flops", 0) - eval_before
        self.cost["train_seconds"] += time.perf_counter() - mark


__all__ = ["CLLoop", "Loop", "RunInterrupted", "peak_rss_mb"]
