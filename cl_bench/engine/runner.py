"""The training loop: scenario -> method, eval schedule, checkpoints, run record.

The runner owns the loop (a method owns its network, optimiser and memory).
Every source of randomness is either seeded from the run seed per
(experience, epoch) — per (experience, epoch, batch) for the training
augmentation — or saved in checkpoints, so the same seed gives the same
record on CPU and a run killed at any point resumes to the same result.
"""

from __future__ import annotations

import dataclasses
import math
import platform
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from cl_bench import __version__
from cl_bench.core.config import build_config, config_to_dict
from cl_bench.core.errors import DivergenceError, UserError
from cl_bench.core.method import IterationCallback, Method
from cl_bench.core.record import RECORD_FILE, SCHEMA_VERSION, git_sha, load_record, write_record
from cl_bench.core.registry import METHODS, SCENARIOS
from cl_bench.core.types import Batch, Experience, PredictContext, Scenario, StreamInfo
from cl_bench.data.tta_streams import TTA_BATCH_SIZE
from cl_bench.engine import rundir
from cl_bench.engine.evaluator import Evaluator
from cl_bench.engine.rng import augment_seed, rng_state, seed_everything, set_rng_state, shuffle_seed
from cl_bench.engine.source import source_model
from cl_bench.engine.spec import Protocol, RunSpec, check_device, run_id_for, spec_from_record
from cl_bench.metrics import compute_all
from cl_bench.report.plots import plot_accuracy_curves

CHECKPOINT_FILE = rundir.CHECKPOINT_FILE


class RunInterrupted(Exception):
    """Raised by a run given ``stop_after``: the process stopped as if killed there (for testing resume)."""


def peak_rss_mb() -> int:
    """Peak resident memory of this process in MiB."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024)


class _Run:
    """State of one run; :func:`run` and :func:`resume` drive it."""

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
            owner = f"method {spec.method!r}"
            self.method_config = build_config(method_cls.Config, spec.method_config, owner)
        self.scenario_config = SCENARIOS.config(spec.scenario, spec.scenario_config)
        self.scenario: Scenario = SCENARIOS.create(spec.scenario, **spec.scenario_config)
        self.method: Method = method_cls(self.method_config)
        caps = self.method.caps
        # Test-time adaptation methods run the TTA protocol (source phase, then online adaptation).
        self.tta = caps.adapts_at_test
        protocol = spec.protocol
        if self.tta:
            if self.scenario.source is None:
                raise UserError(
                    f"method {spec.method!r} adapts at test time and needs a test-time adaptation stream (a "
                    f"scenario with a clean source domain: cifar10_c, cifar100_c, mnist_c, digits_c, corrupted "
                    f"or toy_tta); {spec.scenario!r} is not one. Pick one of these with --scenario."
                )
            if protocol.batch_size is None:
                protocol = dataclasses.replace(protocol, batch_size=self.scenario.protocol_defaults.get(
                    "tta_batch_size", TTA_BATCH_SIZE))  # fmt: skip
        self.protocol = protocol.resolve(self.scenario)
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
        self.evaluator = Evaluator(
            self.scenario, eval_every=self.protocol.eval_every, eval_subset=self.protocol.eval_subset,
            seed=spec.seed, device=spec.device, batch_size=self.protocol.eval_batch_size,
        )  # fmt: skip
        self.iteration = 0
        self.position = (0, 0, 0)  # next (experience, epoch, batch) to train on
        self.begun = False  # whether begin_experience ran for position[0]
        self.cost = {"train_seconds": 0.0, "eval_seconds": 0.0}
        self.last_loss = math.nan
        self.tta_partial = [0, 0]  # online [correct, total] of the current TTA experience so far

    # -- records ------------------------------------------------------------------------------------------
    def record(self, status: str, error: str | None = None) -> dict[str, Any]:
        matrix = self.evaluator.matrix
        return {
            "schema_version": SCHEMA_VERSION,
            "run_id": self.run_dir.name,
            "status": status,
            "method": {"name": self.spec.method, "config": config_to_dict(self.method_config),
                       **self.method.record_extras()},
            "scenario": {"name": self.spec.scenario, "spec": self.scenario.spec, "spec_hash": self.scenario.spec_hash},
            "protocol": {**self.protocol.to_dict(), "setting": self.scenario.setting},
            "seed": self.spec.seed,
            "accuracy_matrix": matrix.to_dict(),
            "metrics": compute_all(matrix),
            "cost": {
                "train_seconds": round(self.cost["train_seconds"], 3),
                "eval_seconds": round(self.cost["eval_seconds"], 3),
                "peak_rss_mb": peak_rss_mb(),
                **({"source_seconds": self.cost["source_seconds"]} if "source_seconds" in self.cost else {}),
            },
            "env": {
                "cl_bench": __version__, "torch": torch.__version__, "device": self.spec.device,
                "git_sha": git_sha(), "python": platform.python_version(), "platform": platform.platform(),
            },  # fmt: skip
            "request": {
                "method_config": self.spec.method_config, "scenario_config": self.spec.scenario_config,
                "protocol": self.spec.protocol.to_dict(), "device": self.spec.device,
                "checkpoint_every": self.checkpoint_every,
            },  # fmt: skip
            "error": error,
        }

    def save_checkpoint(self) -> None:
        state = {
            "iteration": self.iteration,
            "position": self.position,
            "begun": self.begun,
            "matrix": self.evaluator.matrix.to_dict(),
            "method": self.method.state_dict(),
            "rng": rng_state(),
            "cost": dict(self.cost),
            "tta_partial": list(self.tta_partial),
            "identity": rundir.identity(self.spec),  # resume refuses another run's checkpoint
        }
        tmp = self.run_dir / f".{CHECKPOINT_FILE}.tmp"
        torch.save(state, tmp)
        tmp.replace(self.run_dir / CHECKPOINT_FILE)
        write_record(self.run_dir, self.record("running"))

    def load_checkpoint(self, path: Path) -> dict[str, Any]:
        try:
            state = torch.load(path, map_location=self.spec.device, weights_only=False)
        except Exception as err:
            raise UserError(f"cannot read checkpoint {path} ({err}); it is corrupt — start the run afresh") from None
        rundir.check_identity(state, self.spec, path)
        return state

    # -- the loop -----------------------------------------------------------------------------------------
    def start(self, state: dict[str, Any] | None) -> None:
        info = StreamInfo(
            self.scenario.input_shape, self.scenario.n_classes, len(self.scenario), self.scenario.setting,
            self.spec.device, input_transform=self.scenario[0].test.transform,
        )  # fmt: skip
        if self.tta:
            info = self._tta_info(info)
        self.info = info
        seed_everything(self.spec.seed)
        self.method.setup(info, self.spec.seed)
        if state is None:
            if self.tta:
                self.evaluator.matrix.online = True
                self.evaluator.matrix.severity = [int(e.meta.get("severity", 0)) for e in self.scenario]
            else:
                self._eval(full=True, n_seen=0)
            return
        from cl_bench.metrics import AccuracyMatrix

        self.iteration = state["iteration"]
        self.position = tuple(state["position"])
        self.cost = state["cost"]
        self.evaluator.matrix = AccuracyMatrix.from_dict(state["matrix"], len(self.scenario))
        self.tta_partial = list(state.get("tta_partial", [0, 0]))
        if state["begun"] and self.tta:
            self.begun = True  # TTA methods never see experiences: nothing to replay
        elif state["begun"]:
            # begin_experience may re-reference the experience's data; the saved state then overrides it.
            self.method.begin_experience(self.scenario[self.position[0]])
            self.begun = True
        self.method.load_state_dict(state["method"])
        set_rng_state(state["rng"])

    def _eval(self, full: bool, n_seen: int) -> None:
        t0 = time.perf_counter()
        p = self.evaluator.evaluate(self.method.predict, self.iteration, n_seen, full=full)
        self.cost["eval_seconds"] += time.perf_counter() - t0
        if self._bar is not None:
            row = [a for a in self.evaluator.matrix.acc_row(p) if not math.isnan(a)]
            if row:
                self._bar.set_postfix(acc=f"{sum(row) / len(row):.3f}", loss=f"{self.last_loss:.3f}", refresh=False)

    def _tta_info(self, info: StreamInfo) -> StreamInfo:
        """``info`` with the source model (trained or loaded: the source phase) and the source data."""
        src = self.scenario.source
        assert src is not None
        t0 = time.perf_counter()
        model = source_model(self.scenario, self.spec.seed, self.spec.device)
        self.cost["source_seconds"] = round(time.perf_counter() - t0, 3)
        data = None if src.free or src.train is None else src.train.to(self.spec.device)
        return dataclasses.replace(info, source_model=model, source_data=data)

    def _iterations(self, e: int) -> int:
        cap = self.protocol.max_iterations or math.inf
        if self.tta:
            return int(min(cap, math.ceil(len(self.scenario[e].test) / self.protocol.batch_size)))
        data = self.scenario[e].train
        n = len(data) if data is not None else 0
        return self.protocol.epochs * int(min(cap, math.ceil(n / self.protocol.batch_size)))

    def train(self) -> None:
        from tqdm import tqdm

        total = sum(self._iterations(e) for e in range(len(self.scenario)))
        self._bar = (
            tqdm(total=total, initial=self.iteration, desc=f"{self.spec.method} on {self.spec.scenario}",
                 unit="it", dynamic_ncols=True, leave=False)
            if self.progress else None
        )  # fmt: skip
        try:
            self._adapt_stream() if self.tta else self._train()
        finally:
            if self._bar is not None:
                self._bar.close()

    def _train(self) -> None:
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
                    if self.protocol.online and exp.meta.get("stream_order"):
                        # A task-free stream that defines its order (e.g. blurry boundaries) is consumed in it.
                        perm = torch.arange(n, device=device)
                    first_b = start_b if (e == start_e and epoch == start_epoch) else 0
                    ahead = self._prefetch(data, perm, range(first_b, n_batches), e, epoch)
                    for b in range(first_b, n_batches):
                        aug = None
                        if data.augment is not None and ahead is None:
                            aug = torch.Generator().manual_seed(augment_seed(self.spec.seed, e, epoch, b))
                        self._step(data, perm[b * bs : (b + 1) * bs], e, exp.task_id if task_il else None, aug,
                                   ahead)  # fmt: skip
                        last = epoch == epochs - 1 and b == n_batches - 1
                        self.position = (e, epoch, b + 1) if b + 1 < n_batches else (e, epoch + 1, 0)
                        if self.evaluator.due(self.iteration) and not last:
                            self._eval(full=False, n_seen=e + 1)
                        if self.checkpoint_every and self.iteration % self.checkpoint_every == 0:
                            self.save_checkpoint()
                        if self.stop_after is not None and self.iteration >= self.stop_after:
                            raise RunInterrupted(f"stopped after iteration {self.iteration} (stop_after)")
            self.method.end_experience(exp)
            self._eval(full=True, n_seen=e + 1)
            self.evaluator.matrix.mark_boundary(self.evaluator.matrix.n_points - 1)
            self.position, self.begun = (e + 1, 0, 0), False

    def _prefetch(self, data: Any, perm: torch.Tensor, batches: range, e: int, epoch: int) -> Any:
        # File-backed data (cl_bench.data.filedata.FileData) decodes batches ahead in DataLoader workers; the
        # augmentation seeds are the same per-batch seeds as for tensors, so results do not depend on it.
        if not hasattr(data, "iter_batches"):
            return None
        bs = self.protocol.batch_size
        seeds = [augment_seed(self.spec.seed, e, epoch, b) if data.augment is not None else None for b in batches]
        return iter(data.iter_batches([perm[b * bs : (b + 1) * bs] for b in batches], seeds))

    def _adapt_stream(self) -> None:
        """The TTA loop: every test batch goes through ``adapt``; errors count on its pre-update prediction."""
        bs = self.protocol.batch_size
        device = torch.device(self.spec.device)
        matrix = self.evaluator.matrix
        src = self.scenario.source
        assert src is not None
        start_e, _, start_b = self.position
        for e in range(start_e, len(self.scenario)):
            exp = self.scenario[e]
            if not (self.begun and e == start_e):
                if src.reset_each_shift and e > 0 and exp.meta.get("corruption") != self.scenario[e - 1].meta.get(
                        "corruption"):  # fmt: skip
                    # Reset = a fresh copy of the source model and fresh optimiser/teacher state.
                    self.method.setup(self.info, self.spec.seed)
                self.position, self.begun, self.tta_partial = (e, 0, 0), True, [0, 0]
            data = exp.test.to(device)
            n_batches = math.ceil(len(data) / bs)
            if self.protocol.max_iterations:  # smoke runs (Protocol.max_iterations)
                n_batches = min(n_batches, self.protocol.max_iterations)
            for b in range(start_b if e == start_e else 0, n_batches):
                t0 = time.perf_counter()
                x, y = data.batch(slice(b * bs, (b + 1) * bs))
                logits = self.method.adapt(x)
                if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (len(x), self.scenario.n_classes):
                    shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
                    raise RuntimeError(f"{self.spec.method}.adapt returned {shape}; expected logits of shape "
                                       f"{(len(x), self.scenario.n_classes)}")  # fmt: skip
                self.tta_partial[0] += int((logits.argmax(1) == y).sum())
                self.tta_partial[1] += len(y)
                self.iteration += 1
                self.cost["train_seconds"] += time.perf_counter() - t0
                if self._bar is not None:
                    self._bar.update(1)
                self.position = (e, 0, b + 1)
                if self.checkpoint_every and self.iteration % self.checkpoint_every == 0:
                    self.save_checkpoint()
                if self.stop_after is not None and self.iteration >= self.stop_after:
                    raise RunInterrupted(f"stopped after iteration {self.iteration} (stop_after)")
            correct, total = [0] * len(self.scenario), [0] * len(self.scenario)
            correct[e], total[e] = self.tta_partial
            matrix.mark_boundary(matrix.add_point(self.iteration, correct, total))
            self.position, self.begun, self.tta_partial = (e + 1, 0, 0), False, [0, 0]
        if src.test is not None and len(src.test) and not matrix.clean_after:
            t0 = time.perf_counter()
            matrix.clean_after = self._clean_counts(src.test.to(device))
            self.cost["eval_seconds"] += time.perf_counter() - t0

    def _clean_counts(self, data: Any) -> list[int]:
        """``[correct, total]`` of ``predict`` (which changes nothing) on the clean source test set."""
        correct, bs = 0, self.protocol.eval_batch_size
        with torch.inference_mode():
            for b in range(math.ceil(len(data) / bs)):
                x, y = data.batch(slice(b * bs, (b + 1) * bs))
                correct += int((self.method.predict(x, PredictContext()).argmax(1) == y).sum())
        return [correct, len(data)]

    def _step(
        self, data: Any, idx: torch.Tensor, e: int, task_id: int | None, aug: torch.Generator | None = None,
        ahead: Any = None,
    ) -> None:  # fmt: skip
        t0 = time.perf_counter()
        x, y = next(ahead) if ahead is not None else data.batch(idx, generator=aug)
        task_ids = None
        if task_id is not None:
            task_ids = data.t[idx] if data.t is not None else torch.full_like(y, task_id)
        out = self.method.observe(Batch(x, y, task_ids, e))
        self.cost["train_seconds"] += time.perf_counter() - t0
        self._count_iteration(float(out["loss"]), e)

    def _drive_experience(self, exp: Experience) -> None:
        """Train ``exp`` in the method's own loop, evaluating on the same schedule as :meth:`_train`."""
        e = exp.index
        mark = time.perf_counter()

        def report(loss: float, last: bool) -> None:
            nonlocal mark
            self.cost["train_seconds"] += time.perf_counter() - mark
            self._count_iteration(float(loss), e)
            if self.evaluator.due(self.iteration) and not last:
                self._eval(full=False, n_seen=e + 1)
            if self.stop_after is not None and self.iteration >= self.stop_after:
                raise RunInterrupted(f"stopped after iteration {self.iteration} (stop_after)")
            mark = time.perf_counter()

        callback = IterationCallback(self.protocol.batch_size, self.protocol.epochs, self.spec.seed, report)
        self.method.train_experience(exp, callback)
        self.cost["train_seconds"] += time.perf_counter() - mark

    def _count_iteration(self, loss: float, e: int) -> None:
        self.iteration += 1
        self.last_loss = loss
        if self._bar is not None:
            self._bar.update(1)
        if not math.isfinite(loss):
            raise DivergenceError(
                f"the training loss became {loss} at iteration {self.iteration} (experience {e}) of "
                f"{self.spec.method} on {self.spec.scenario}: training diverged. Lower the learning rate "
                f"(e.g. --set lr=...) or the regularisation strength and run again. The partial accuracy "
                f"matrix is kept in the failed record."
            )


def _drive(r: _Run, state: dict[str, Any] | None) -> dict[str, Any]:
    r._bar = None
    try:
        if state is None:
            # A "running" record from the start: a run killed right after its first checkpoint
            # landed (before that checkpoint's record) is still resumable.
            write_record(r.run_dir, r.record("running"))
        r.start(state)
        r.train()
    except BaseException as err:
        message = str(err) if isinstance(err, UserError) else "".join(traceback.format_exception(err)).strip()
        write_record(r.run_dir, r.record("failed", f"{type(err).__name__}: {message}"))
        raise
    record = r.record("completed")
    write_record(r.run_dir, record)
    (r.run_dir / CHECKPOINT_FILE).unlink(missing_ok=True)
    plot_accuracy_curves(record, r.run_dir / "accuracy.png")
    return record


def run(
    spec: RunSpec,
    out: str | Path = "runs",
    *,
    checkpoint_every: int = 0,
    progress: bool = False,
    method_cls: type[Method] | None = None,
    stop_after: int | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Train ``spec.method`` on ``spec.scenario`` and write ``<out>/<run_id>/run.json``.

    Args:
        spec: What to run.
        out: Directory that receives the run directory.
        checkpoint_every: Save a resumable checkpoint every N iterations (0 = never).
        progress: Show a progress bar with live accuracy.
        method_cls: Method class to run instead of looking ``spec.method`` up in
            ``METHODS`` (an unregistered or instrumented class, as in
            :mod:`cl_bench.testing`); ``spec.method`` then only names it.
        stop_after: Testing hook: raise :class:`RunInterrupted` once the run has
            done this many training iterations (after any evaluation and
            checkpoint due at that iteration), as if the process were killed
            there. The failed record and the last checkpoint stay for :func:`resume`.
        force: Overwrite a completed record or an interrupted run's checkpoint in the run directory.
            Without it a completed record is kept and returned, and a checkpoint is refused
            (:func:`cl_bench.engine.rundir.prepare_fresh`).

    Returns:
        The completed run record.

    Raises:
        UserError: Bad names, values or data (nothing is written), or a diverging
            loss (a failed record with the partial matrix is written).
        RunInterrupted: When ``stop_after`` is reached.
    """
    run_dir = Path(out) / run_id_for(spec)
    # _Run validates everything before anything touches the disk.
    r = _Run(spec, run_dir, checkpoint_every, progress, method_cls, stop_after)
    with rundir.claim(run_dir):
        kept = rundir.prepare_fresh(run_dir, force)
        return kept if kept is not None else _drive(r, None)


def resume(
    run_dir: str | Path,
    *,
    checkpoint_every: int | None = None,
    progress: bool = False,
    method_cls: type[Method] | None = None,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Continue an interrupted run from its last checkpoint to the same result.

    Args:
        run_dir: The run directory (holding ``run.json`` and ``checkpoint.pt``).
        checkpoint_every: Checkpoint interval from now on (default: the run's own).
        progress: Show a progress bar with live accuracy.
        method_cls: As in :func:`run`; pass the same class the run was started with.
        stop_after: As in :func:`run`; counts the run's iterations from its start.

    Raises:
        UserError: If ``run_dir`` holds no resumable run.
        RunInterrupted: When ``stop_after`` is reached.
    """
    run_dir = Path(run_dir)
    if not (run_dir / RECORD_FILE).exists():
        raise UserError(f"{run_dir} holds no run record; --resume takes the directory `cl-bench run` printed")
    record = load_record(run_dir)
    if record["status"] == "completed":
        return record
    spec = spec_from_record(record)
    if not (method_cls or METHODS.get(spec.method).obj).caps.resumable:
        raise UserError(
            f"{run_dir} is a run of {spec.method!r}, which cannot be checkpointed or resumed (caps.resumable "
            f"is False); run it again from the start"
        )
    ckpt = run_dir / CHECKPOINT_FILE
    if not ckpt.exists():
        raise UserError(
            f"{run_dir} has no checkpoint to resume from (it was run without --checkpoint-every, or failed "
            f"before the first one); run it again from the start"
        )
    every = checkpoint_every if checkpoint_every is not None else record["request"].get("checkpoint_every", 0)
    r = _Run(spec, run_dir, every, progress, method_cls, stop_after)
    # A process killed inside an atomic write leaves its temporary file; the write it belonged to
    # never landed, so the file is garbage and the resumed run rewrites what it held.
    with rundir.claim(run_dir):
        for stale in run_dir.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
        return _drive(r, r.load_checkpoint(ckpt))


__all__ = ["Protocol", "RunInterrupted", "RunSpec", "run", "resume", "run_id_for"]
