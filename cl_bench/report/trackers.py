"""Experiment trackers: a run's curves and results in TensorBoard, Weights & Biases, MLflow or CSV files.

``--log NAME`` (repeatable; ``log: [...]`` in YAML and sweeps) attaches trackers to a run. Each gets, in
the run's directory:

- the run spec as hyper-parameters when the run starts (flattened ``method.lr``, ``scenario.name``, ...);
- per evaluation point (the evaluator's schedule) the accuracy of every experience evaluated there
  (``acc/exp<j>``) and the running mean over the experiences seen so far (``acc/mean_seen``);
- per training iteration the training loss (``train/loss``) and, for methods with a torch optimiser,
  its learning rate (``train/lr``);
- when the run completes, every metric of the record (``final/<metric>``).

The libraries do the writing (no hand-written event files or HTTP clients), and each is optional: a
missing package is a one-paragraph error naming the extra to install, raised before training starts.
Steps are training iterations, so curves line up with the record's accuracy matrix.

References:
    TensorBoard through ``torch.utils.tensorboard.SummaryWriter`` (PyTorch docs); Weights & Biases offline
    runs (``wandb.init(mode="offline")``, synced later with ``wandb sync``); MLflow's local file store
    (``MlflowClient(tracking_uri="file:...")``).
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from cl_bench.core.errors import ConfigError, UserError

#: Sub-folder (or file folder) of the run directory each tracker writes into.
TRACKER_DIRS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlruns", "csv": "log"}


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"method": {"lr": 0.1}}`` -> ``{"method.lr": 0.1}``; lists and None become strings (trackers
    take scalars only)."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, bool | int | float | str):
            flat[name] = value
        else:
            flat[name] = json.dumps(value, default=str)
    return flat


class Tracker:
    """What every tracker does; subclasses write through their library.

    Args:
        run_dir: The run's directory; the tracker writes into ``run_dir / TRACKER_DIRS[name]``.
        run_id: The run id (the tracker's run name).
    """

    name: ClassVar[str]
    extra: ClassVar[str | None] = None  # the pip extra that installs the library

    def __init__(self, run_dir: Path, run_id: str) -> None:
        self.dir = run_dir / TRACKER_DIRS[self.name]
        self.run_id = run_id

    @classmethod
    def check_installed(cls) -> None:
        """Raise a :class:`ConfigError` naming the extra when the library is missing."""

    def start(self, params: Mapping[str, Any]) -> None:
        """The run spec as hyper-parameters (flat ``section.key`` names)."""

    def log(self, step: int, values: Mapping[str, float]) -> None:
        """Scalars at training iteration ``step``."""
        raise NotImplementedError

    def finish(self, metrics: Mapping[str, float]) -> None:
        """The record's final metrics; the tracker closes."""

    def close(self) -> None:
        """Flush and release files without final metrics (a failed or interrupted run)."""


def _missing(name: str, package: str, extra: str) -> ConfigError:
    return ConfigError(
        f"--log {name} needs the {package!r} package, which is not installed. Install it with "
        f"`pip install 'cl-bench[{extra}]'` (or `pip install {package}`), or leave out --log {name}."
    )


class TensorBoardTracker(Tracker):
    """TensorBoard event files through ``torch.utils.tensorboard`` (``tensorboard --logdir RUN_DIR``)."""

    name = "tensorboard"
    extra = "tensorboard"

    @classmethod
    def check_installed(cls) -> None:
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise _missing(cls.name, "tensorboard", cls.extra) from None

    def start(self, params: Mapping[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.params = dict(params)
        self.writer = SummaryWriter(log_dir=str(self.dir))
        self.writer.add_text("run_spec", json.dumps(self.params, indent=1, sort_keys=True))

    def log(self, step: int, values: Mapping[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def finish(self, metrics: Mapping[str, float]) -> None:
        finite = {f"final/{k}": float(v) for k, v in metrics.items() if _finite(v)}
        # run_name="." keeps the hparams summary in the run's own event folder, not a timestamped one.
        self.writer.add_hparams(self.params, finite, run_name=".")
        self.close()

    def close(self) -> None:
        self.writer.close()


class WandbTracker(Tracker):
    """A Weights & Biases run, offline unless ``WANDB_MODE`` says otherwise (sync it with ``wandb sync``)."""

    name = "wandb"
    extra = "wandb"

    @classmethod
    def check_installed(cls) -> None:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise _missing(cls.name, "wandb", cls.extra) from None

    def start(self, params: Mapping[str, Any]) -> None:
        import wandb

        self.dir.mkdir(parents=True, exist_ok=True)
        # Offline by default: a benchmark run never talks to a server unless the user chose to.
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "cl_bench"), name=self.run_id, dir=str(self.dir),
            mode=os.environ.get("WANDB_MODE", "offline"), config=dict(params), reinit="create_new",
        )  # fmt: skip

    def log(self, step: int, values: Mapping[str, float]) -> None:
        self.run.log(dict(values), step=step)

    def finish(self, metrics: Mapping[str, float]) -> None:
        self.run.summary.update({f"final/{k}": v for k, v in metrics.items() if _finite(v)})
        self.run.finish()

    def close(self) -> None:
        self.run.finish(exit_code=1)


class MLflowTracker(Tracker):
    """An MLflow run in a local file store in the run directory (``mlflow ui --backend-store-uri ...``)."""

    name = "mlflow"
    extra = "mlflow"

    @classmethod
    def check_installed(cls) -> None:
        try:
            import mlflow  # noqa: F401
        except ImportError:
            raise _missing(cls.name, "mlflow-skinny", cls.extra) from None

    def start(self, params: Mapping[str, Any]) -> None:
        from mlflow.tracking import MlflowClient

        self.dir.mkdir(parents=True, exist_ok=True)
        # MLflow 3 keeps the local file store in maintenance mode behind this opt-in; it is still the store
        # that needs no database server or SQLAlchemy, and `mlflow ui --backend-store-uri DIR` reads it.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=self.dir.resolve().as_uri())
        experiment = self.client.get_experiment_by_name("cl_bench")
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment("cl_bench")
        self.run_uuid = self.client.create_run(experiment_id, run_name=self.run_id).info.run_id
        from mlflow.entities import Param

        # MLflow caps a parameter value at 6000 characters; longer ones (long lists) are cut, not refused.
        self.client.log_batch(self.run_uuid, params=[Param(k, str(v)[:6000]) for k, v in params.items()])

    def log(self, step: int, values: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        self.step = step
        stamp = _millis()
        metrics = [Metric(k, float(v), stamp, step) for k, v in values.items() if _finite(v)]
        if metrics:
            self.client.log_batch(self.run_uuid, metrics=metrics)

    def finish(self, metrics: Mapping[str, float]) -> None:
        self.log(getattr(self, "step", 0), {f"final/{k}": v for k, v in metrics.items()})
        self.client.set_terminated(self.run_uuid, "FINISHED")

    def close(self) -> None:
        self.client.set_terminated(self.run_uuid, "FAILED")


class CSVTracker(Tracker):
    """Plain files: ``log/params.json``, ``log/scalars.csv`` (step, key, value) and ``log/final.csv``."""

    name = "csv"

    def start(self, params: Mapping[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "params.json").write_text(json.dumps(dict(params), indent=1, sort_keys=True) + "\n")
        path = self.dir / "scalars.csv"
        new = not path.exists()  # a resumed run appends to the same file
        self.file = path.open("a", newline="")
        self.writer = csv.writer(self.file)
        if new:
            self.writer.writerow(["step", "key", "value"])

    def log(self, step: int, values: Mapping[str, float]) -> None:
        for key, value in values.items():
            self.writer.writerow([step, key, repr(float(value))])

    def finish(self, metrics: Mapping[str, float]) -> None:
        with (self.dir / "final.csv").open("w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["metric", "value"])
            for key, value in metrics.items():
                out.writerow([key, repr(float(value)) if value is not None else ""])
        self.close()

    def close(self) -> None:
        self.file.close()


TRACKERS: dict[str, type[Tracker]] = {
    cls.name: cls for cls in (TensorBoardTracker, WandbTracker, MLflowTracker, CSVTracker)
}


def check_names(names: Iterable[str], source: str = "--log") -> tuple[str, ...]:
    """Validate tracker names (and that their libraries are installed), in order, without duplicates.

    Raises:
        ConfigError: An unknown name or a missing library, in one paragraph.
    """
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, list | tuple):
        raise ConfigError(f"{source} must be a list of tracker names (e.g. `log: [tensorboard, csv]`), got {names!r}")
    out: list[str] = []
    for name in names:
        if name not in TRACKERS:
            raise ConfigError(
                f"{source}: unknown tracker {name!r}; choose from {sorted(TRACKERS)} "
                f"(e.g. --log tensorboard --log csv)"
            )
        TRACKERS[name].check_installed()
        if name not in out:
            out.append(name)
    return tuple(out)


class Trackers:
    """The trackers of one run, called by the loop; no trackers = no work.

    Args:
        names: Tracker names (validated by :func:`check_names`).
        run_dir: The run's directory.
    """

    def __init__(self, names: Sequence[str], run_dir: Path) -> None:
        self.names = check_names(names)
        self.run_dir = run_dir
        self.active: list[Tracker] = []

    def __bool__(self) -> bool:
        return bool(self.active)

    def start(self, params: Mapping[str, Any]) -> None:
        flat = flatten(params)
        for name in self.names:
            tracker = TRACKERS[name](self.run_dir, self.run_dir.name)
            try:
                tracker.start(flat)
            except Exception as err:
                self.close()
                raise UserError(f"--log {name} could not start in {tracker.dir}: {type(err).__name__}: {err}") \
                    from err
            self.active.append(tracker)

    def log(self, step: int, values: Mapping[str, float]) -> None:
        finite = {k: float(v) for k, v in values.items() if _finite(v)}
        if finite:
            for tracker in self.active:
                tracker.log(step, finite)

    def finish(self, metrics: Mapping[str, Any]) -> None:
        scalars = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        for tracker in self.active:
            tracker.finish(scalars)
        self.active = []

    def close(self) -> None:
        for tracker in self.active:
            try:
                tracker.close()
            except Exception:  # closing after a failure must not hide the failure
                pass
        self.active = []


def remove_outputs(run_dir: Path) -> None:
    """Delete what trackers wrote in ``run_dir`` (``--force`` starts a run afresh)."""
    for sub in TRACKER_DIRS.values():
        if (run_dir / sub).is_dir():
            shutil.rmtree(run_dir / sub)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _millis() -> int:
    import time

    return int(time.time() * 1000)


__all__ = ["TRACKERS", "TRACKER_DIRS", "Tracker", "Trackers", "check_names", "flatten", "remove_outputs"]
