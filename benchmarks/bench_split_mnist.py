"""Split-MNIST with per-iteration evaluation: cl_bench vs a plain PyTorch loop vs Avalanche 0.6.

The same work is done three ways and timed; the script prints a table and the
ratios ``cl_bench / plain`` (target <= 1.2) and ``avalanche / cl_bench``
(target >= 4).

Protocol (identical for all three):

* Data: the 10,000-image MNIST test set (IDX files in ``--root``), split by
  cl_bench's ``split_mnist`` into 8,000 train / 2,000 test images
  (stratified per class, fixed seed), 5 experiences of 2 classes in the order
  0-1, 2-3, 4-5, 6-7, 8-9 (class-incremental, one shared 10-way head).
  Experience sizes follow the class sizes (about 1,600 train / 400 test each).
* Model: MLP 784-400-10 (one hidden layer of 400 ReLU units), initialised from
  ``torch.manual_seed(seed)``, so all three start from the same weights.
* Training: fine-tuning, SGD lr 0.01 (no momentum), cross-entropy, batch 32,
  one epoch per experience (252 iterations in all).
* Evaluation schedule (cl_bench's, with ``eval_every=1, eval_subset=0``):
  once before training on all 5 experiences' full test sets; after every
  training iteration except the last of each experience, on the full test
  sets of the experiences seen so far; at the end of each experience, on all
  5 experiences' full test sets. With this split that is 253 eval points and
  308,354 evaluated test examples (and 8,000 trained on); the script counts
  the examples each variant really forwards (a forward hook on the first
  layer, in an untimed warm-up run) and prints them next to the expected
  numbers. Compute is dominated by these evaluation forwards.

What each variant does:

1. ``cl_bench``: ``cl_bench.engine.runner`` with ``RunSpec(method="finetune",
   scenario="split_mnist", protocol=Protocol(eval_every=1, eval_subset=0,
   batch_size=32, epochs=1))``. The timed part is the runner's loop (method
   setup, training, every evaluation); building the scenario (reading the IDX
   files) is excluded. This uses the runner's ``make_loop`` object, the
   same thing ``run()`` drives. ``run()`` end to end (scenario loading, loop,
   metrics, record and plot written to a temporary directory) is timed too and
   shown as a separate row.
2. ``plain``: a hand-written loop on the same tensors, already standardised in
   memory (untimed). Shuffling uses the same per-experience seeds as the
   runner, so its accuracy matrix should equal cl_bench's (checked). Each eval
   point is one forward of the seen experiences' test examples (a prefix slice
   of the stacked test set: no copy) under ``torch.inference_mode()``, and
   per-experience counts via ``bincount``.
3. ``avalanche``: ``Naive(model, SGD, CrossEntropyLoss(), train_mb_size=32,
   train_epochs=1, eval_mb_size=1024, eval_every=1, peval_mode="iteration",
   evaluator=EvaluationPlugin(accuracy_metrics(experience=True, stream=True),
   loggers=[]))`` on an ``nc_benchmark`` built from ``TensorDataset``\\ s of
   the same standardised tensors (fixed class order 0..9, 5 experiences, no
   task labels). Experience i is trained with
   ``strategy.train(exp, eval_streams=[test_stream[:i + 1]])`` so that the
   periodic evaluation covers all seen experiences (by default it would only
   evaluate the experience being trained). To do exactly cl_bench's work,
   Avalanche's own initial (per ``train()`` call) and end-of-experience
   periodic evaluations are switched off (a ``PeriodicEval`` subclass replaces
   the strategy's): they re-evaluate the seen experiences (12,124 examples)
   and never the unseen ones (5,938 examples cl_bench evaluates), so left on
   they would give Avalanche 2% more work. Instead ``strategy.eval(test_stream)``
   runs once before training, and after each experience but the last
   ``strategy.eval(test_stream[i + 1:])`` evaluates the not-yet-seen
   experiences, so that with the evaluation after the last iteration every
   experience is evaluated at each boundary. Avalanche's default data loaders
   are used (``num_workers=0``; training loader shuffled by its own RNG).
   Its time includes the model and strategy construction, not the benchmark's.

Timing: wall clock (``time.perf_counter``) and process CPU time, one untimed
warm-up run of each variant, then ``--repeats`` rounds in which the variants
run interleaved; the ratios use median wall clock (minimum wall clock and
median CPU-time ratios are shown beside them: on a busy machine they are the
steadier estimates). ``torch.set_num_threads(--threads)`` applies to all three
(default 1: on small shared machines extra intra-op threads mostly add
contention; with more threads the matrix products get faster while
Avalanche's per-example Python overhead does not, so its ratio grows; but
with as many threads as cores, any other busy process makes the intra-op
threads spin and a run can take 10-30x longer, so then read the min column).
Final
accuracies (per experience, full test sets, same function for all three) are
printed as a sanity check: they should be close (cl_bench and plain exactly
equal).

Usage::

    python benchmarks/bench_split_mnist.py [--root DIR] [--repeats 3] [--threads 1] [--skip-avalanche]

``--root`` defaults to ``../shared/data/mnist`` beside the repository.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cl_bench.core.errors import UserError
from cl_bench.core.types import Scenario
from cl_bench.engine.rng import shuffle_seed
from cl_bench.engine.runner import make_loop, run
from cl_bench.engine.spec import Protocol, RunSpec, run_id_for
from cl_bench.scenarios.mnist import split_mnist
from cl_bench.testing.mnist import default_mnist_folder

BATCH_SIZE = 32
EPOCHS = 1
LR = 0.01
HIDDEN = 400
EVAL_BATCH_SIZE = Protocol().eval_batch_size  # cl_bench's default; Avalanche's eval_mb_size
DEFAULT_ROOT = default_mnist_folder()  # $CL_BENCH_MNIST, else shared/data/mnist beside the checkout


@dataclass
class StreamTensors:
    """The stream as standardised float tensors, experience by experience."""

    scenario: Scenario
    train_x: list[torch.Tensor]
    train_y: list[torch.Tensor]
    test_x: list[torch.Tensor]
    test_y: list[torch.Tensor]

    @property
    def n_experiences(self) -> int:
        return len(self.train_x)


@dataclass
class Outcome:
    """One run of one variant."""

    wall: float
    cpu: float
    model: nn.Module | None = None  # the trained network, for :func:`final_accuracies` (then dropped)
    final_acc: list[float] = field(default_factory=list)  # per experience, full test sets, at the end
    own_final_acc: float | None = None  # the harness's own final accuracy figure
    matrix: list[list[int]] | None = None  # correct counts per eval point (cl_bench, plain)


@dataclass
class Variant:
    """A timed way of doing the work."""

    name: str
    fn: Callable[[], Outcome]
    outcomes: list[Outcome] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def median(self, attr: str) -> float:
        return statistics.median(getattr(o, attr) for o in self.outcomes)

    def min(self, attr: str) -> float:
        return min(getattr(o, attr) for o in self.outcomes)


def make_spec(root: str, seed: int) -> RunSpec:
    return RunSpec(
        method="finetune",
        method_config={"hidden_layers": 1, "hidden_size": HIDDEN, "lr": LR},
        scenario="split_mnist",
        scenario_config={"root": root, "class_order": "identity", "download": False},
        protocol=Protocol(eval_every=1, eval_subset=0, batch_size=BATCH_SIZE, epochs=EPOCHS),
        seed=seed,
    )


def load_stream(root: str) -> StreamTensors:
    """Build the scenario once and materialise its (transformed) tensors."""
    scenario = split_mnist(root=root, class_order="identity", download=False)
    tensors: dict[str, list[torch.Tensor]] = {"train_x": [], "train_y": [], "test_x": [], "test_y": []}
    for exp in scenario:
        assert exp.train is not None
        for part, data in (("train", exp.train), ("test", exp.test)):
            x, y = data.batch(slice(None))
            tensors[f"{part}_x"].append(x.contiguous())
            tensors[f"{part}_y"].append(y)
    return StreamTensors(scenario, **tensors)


def make_model(seed: int) -> nn.Module:
    """784-400-10 MLP; same parameter creation order (hence init) as cl_bench's ``MLP``."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 10))


def final_accuracies(model: nn.Module, data: StreamTensors) -> list[float]:
    """Accuracy per experience on its full test set (the same check for every variant)."""
    model.eval()
    with torch.inference_mode():
        return [(model(x).argmax(1) == y).float().mean().item() for x, y in zip(data.test_x, data.test_y, strict=True)]


@contextmanager
def timed() -> Iterator[dict[str, float]]:
    gc.collect()
    out: dict[str, float] = {}
    w, c = time.perf_counter(), time.process_time()
    yield out
    out["wall"], out["cpu"] = time.perf_counter() - w, time.process_time() - c


# -- 1. cl_bench ---------------------------------------------------------------------------------------------
def run_cl_bench(root: str, seed: int) -> Outcome:
    spec = make_spec(root, seed)
    r = make_loop(spec, Path(tempfile.gettempdir()) / run_id_for(spec))  # loads data; writes nothing
    with timed() as t:
        r.start(None)  # method setup + the evaluation before training
        r.train()
    own = r.record("completed")["metrics"]["final_acc"]
    return Outcome(t["wall"], t["cpu"], r.method.net, own_final_acc=own, matrix=r.evaluator.matrix.n_correct)


def run_cl_bench_end_to_end(root: str, seed: int) -> Outcome:
    with tempfile.TemporaryDirectory() as out:
        with timed() as t:
            record = run(make_spec(root, seed), out)
    m = record["accuracy_matrix"]
    last = m["boundary"][-1]
    acc = [c / n for c, n in zip(m["n_correct"][last], m["n_total"][last], strict=True)]
    return Outcome(t["wall"], t["cpu"], None, acc, record["metrics"]["final_acc"], m["n_correct"])


# -- 2. plain PyTorch ----------------------------------------------------------------------------------------
def run_plain(seed: int, data: StreamTensors) -> Outcome:
    n_exp = data.n_experiences
    with timed() as t:
        model = make_model(seed)
        opt = torch.optim.SGD(model.parameters(), lr=LR)
        test_x, test_y = torch.cat(data.test_x), torch.cat(data.test_y)  # experience order: seen = a prefix
        exp_of = torch.cat([torch.full((len(y),), e) for e, y in enumerate(data.test_y)])
        ends = torch.tensor([len(y) for y in data.test_y]).cumsum(0).tolist()
        rows: list[torch.Tensor] = []

        def evaluate(n: int) -> None:  # the first n test examples = the seen experiences
            model.eval()
            with torch.inference_mode():
                ok = model(test_x[:n]).argmax(1) == test_y[:n]
                rows.append(torch.bincount(exp_of[:n][ok], minlength=n_exp))
            model.train()

        evaluate(ends[-1])
        for e in range(n_exp):
            x, y = data.train_x[e], data.train_y[e]
            n_batches = math.ceil(len(y) / BATCH_SIZE)
            for epoch in range(EPOCHS):
                perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(shuffle_seed(seed, e, epoch)))
                for b in range(n_batches):
                    idx = perm[b * BATCH_SIZE : (b + 1) * BATCH_SIZE]
                    loss = F.cross_entropy(model(x[idx]), y[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    if not (epoch == EPOCHS - 1 and b == n_batches - 1):
                        evaluate(ends[e])
            evaluate(ends[-1])  # boundary: every experience, full test sets
    return Outcome(t["wall"], t["cpu"], model, matrix=torch.stack(rows).tolist())


# -- 3. Avalanche --------------------------------------------------------------------------------------------
def import_avalanche() -> dict[str, Any]:
    """Avalanche's pieces, or exit with an install hint."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import avalanche
            from avalanche.benchmarks.scenarios.deprecated.generators import nc_benchmark
            from avalanche.evaluation.metrics import accuracy_metrics
            from avalanche.training.plugins import EvaluationPlugin
            from avalanche.training.supervised import Naive
            from avalanche.training.templates.base_sgd import PeriodicEval
    except ImportError as err:
        sys.exit(
            f"error: Avalanche is not importable ({err}). This benchmark compares against "
            f"avalanche-lib 0.6.0: "
            f"install it with `pip install -e .[bench]` (from the repository root), or pass --skip-avalanche."
        )
    if not avalanche.__version__.startswith("0.6"):
        print(f"warning: written for avalanche-lib 0.6, found {avalanche.__version__}", file=sys.stderr)
    return {
        "version": avalanche.__version__,
        "nc_benchmark": nc_benchmark,
        "accuracy_metrics": accuracy_metrics,
        "EvaluationPlugin": EvaluationPlugin,
        "Naive": Naive,
        "PeriodicEval": PeriodicEval,
    }


def run_avalanche(av: dict[str, Any], seed: int, data: StreamTensors) -> Outcome:
    from torch.utils.data import TensorDataset

    class SeenExperiencesEval(av["PeriodicEval"]):  # type: ignore[misc, valid-type]
        """Avalanche's per-iteration periodic eval without its initial and end-of-experience extra passes."""

        def __init__(self) -> None:
            super().__init__(eval_every=1, peval_mode="iteration", do_initial=False)

        def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
            pass

    bench = av["nc_benchmark"](
        TensorDataset(torch.cat(data.train_x), torch.cat(data.train_y)),
        TensorDataset(torch.cat(data.test_x), torch.cat(data.test_y)),
        n_experiences=data.n_experiences,
        task_labels=False,
        shuffle=False,
        fixed_class_order=list(range(10)),
    )
    test_stream = bench.test_stream
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No loggers specified")
        with timed() as t:
            model = make_model(seed)
            evaluator = av["EvaluationPlugin"](av["accuracy_metrics"](experience=True, stream=True), loggers=[])
            strategy = av["Naive"](
                model=model,
                optimizer=torch.optim.SGD(model.parameters(), lr=LR),
                criterion=nn.CrossEntropyLoss(),
                train_mb_size=BATCH_SIZE,
                train_epochs=EPOCHS,
                eval_mb_size=EVAL_BATCH_SIZE,
                eval_every=1,
                peval_mode="iteration",
                evaluator=evaluator,
                device="cpu",
            )
            strategy.plugins = [
                SeenExperiencesEval() if isinstance(p, av["PeriodicEval"]) else p for p in strategy.plugins
            ]
            strategy.eval(test_stream)
            for i, exp in enumerate(bench.train_stream):
                strategy.train(exp, eval_streams=[test_stream[: i + 1]])
                if i + 1 < len(test_stream):
                    strategy.eval(test_stream[i + 1 :])
    last = evaluator.get_last_metrics()
    own = [v for k, v in sorted(last.items()) if k.startswith("Top1_Acc_Exp/eval_phase/test_stream")]
    return Outcome(t["wall"], t["cpu"], model, own_final_acc=statistics.fmean(own))


# -- bookkeeping ---------------------------------------------------------------------------------------------
@contextmanager
def count_forwards() -> Iterator[dict[str, int]]:
    """Count examples through the first layer (784 -> hidden) in train and eval mode."""
    counts = {"train": 0, "eval": 0}

    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if isinstance(module, nn.Linear) and module.in_features == 28 * 28:
            counts["train" if module.training else "eval"] += args[0].shape[0]

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        yield counts
    finally:
        handle.remove()


def expected_counts(data: StreamTensors) -> dict[str, int]:
    n_test = [len(y) for y in data.test_y]
    n_train = [len(y) for y in data.train_y]
    evals = sum(n_test)  # before training
    for e, n in enumerate(n_train):
        iters = EPOCHS * math.ceil(n / BATCH_SIZE)
        evals += (iters - 1) * sum(n_test[: e + 1]) + sum(n_test)  # seen, per iteration; all at the boundary
    points = 1 + sum(EPOCHS * math.ceil(n / BATCH_SIZE) for n in n_train)
    return {"train": EPOCHS * sum(n_train), "eval": evals, "points": points}


def finish(outcome: Outcome, data: StreamTensors) -> Outcome:
    """Fill in the final accuracies from the trained model (outside the timed and counted part)."""
    if outcome.model is not None:
        outcome.final_acc, outcome.model = final_accuracies(outcome.model, data), None
    return outcome


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor() or cpu
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"{cpu}; {os.cpu_count()} logical cores ({usable} usable); torch {torch.__version__} "
        f"({torch.get_num_threads()} intra-op threads); Python {platform.python_version()}"
    )


def load_avg() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--root", default=str(DEFAULT_ROOT), help="folder with the MNIST IDX files (default: %(default)s)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds; medians are reported (default: 3)")
    parser.add_argument("--skip-avalanche", action="store_true", help="do not run the Avalanche variant")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads for all variants (default: 1)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.threads < 1:
        parser.error("--repeats and --threads must be >= 1")

    av = None if args.skip_avalanche else import_avalanche()
    torch.set_num_threads(args.threads)
    root = str(Path(args.root).expanduser())
    try:
        data = load_stream(root)
    except UserError as err:  # missing or corrupt data: cl_bench's message says what to do
        sys.exit(f"error: {err}\n(This script takes the folder as --root DIR.)")
    print(f"machine: {machine()}" + (f"; avalanche {av['version']}" if av else ""))
    print(
        f"stream: {data.scenario.spec['split']}; train sizes {[len(y) for y in data.train_y]}, "
        f"test sizes {[len(y) for y in data.test_y]}"
    )
    print(f"load average at start: {load_avg()}")

    variants = [
        Variant("cl_bench", lambda: run_cl_bench(root, args.seed)),
        Variant("plain", lambda: run_plain(args.seed, data)),
        Variant("cl_bench run() end-to-end", lambda: run_cl_bench_end_to_end(root, args.seed)),
    ]
    if av is not None:
        variants.append(Variant("avalanche", lambda: run_avalanche(av, args.seed, data)))

    for v in variants:  # warm-up, untimed: also counts the examples each variant forwards
        with count_forwards() as counts:
            outcome = v.fn()
        finish(outcome, data)
        v.counts = dict(counts)
        print(
            f"warm-up {v.name}: forwarded {counts['train']:,} train / {counts['eval']:,} eval examples",
            file=sys.stderr,
        )
    for r in range(args.repeats):
        for v in variants:
            v.outcomes.append(finish(v.fn(), data))
            print(f"round {r + 1}/{args.repeats} {v.name}: {v.outcomes[-1].wall:.2f} s", file=sys.stderr)
    print(f"load average at end: {load_avg()}")

    expected = expected_counts(data)
    print(
        f"\nwork per run (expected): {expected['train']:,} training examples, {expected['eval']:,} evaluated "
        f"test examples at {expected['points']} eval points\n"
    )
    header = (
        f"{'variant':<27} {'wall med':>9} {'wall min':>9} {'cpu med':>9} {'train ex':>9} {'eval ex':>9}  "
        f"final acc per experience (mean)"
    )
    print(header)
    print("-" * len(header))
    for v in variants:
        accs = v.outcomes[-1].final_acc
        print(
            f"{v.name:<27} {v.median('wall'):>8.2f}s {v.min('wall'):>8.2f}s "
            f"{v.median('cpu'):>8.2f}s {v.counts['train']:>9,} {v.counts['eval']:>9,}  "
            f"{' '.join(f'{a:.3f}' for a in accs)} ({statistics.fmean(accs):.4f})"
        )
    by = {v.name: v for v in variants}
    for v in variants:
        if v.outcomes[-1].own_final_acc is not None:
            print(f"{v.name} reports final_acc {v.outcomes[-1].own_final_acc:.4f}")
    same = by["cl_bench"].outcomes[-1].matrix == by["plain"].outcomes[-1].matrix
    print(f"cl_bench and plain accuracy matrices identical: {'yes' if same else 'NO'}")

    cl, plain, e2e = by["cl_bench"], by["plain"], by["cl_bench run() end-to-end"]
    print(
        f"\ncl_bench / plain = {cl.median('wall') / plain.median('wall'):.2f}x   (target <= 1.20x; "
        f"min wall {cl.min('wall') / plain.min('wall'):.2f}x, CPU {cl.median('cpu') / plain.median('cpu'):.2f}x; "
        f"run() end-to-end {e2e.median('wall') / plain.median('wall'):.2f}x)"
    )
    if "avalanche" in by:
        ava = by["avalanche"]
        print(
            f"avalanche / cl_bench = {ava.median('wall') / cl.median('wall'):.2f}x   (target >= 4.00x; "
            f"min wall {ava.min('wall') / cl.min('wall'):.2f}x, CPU {ava.median('cpu') / cl.median('cpu'):.2f}x; "
            f"avalanche / plain {ava.median('wall') / plain.median('wall'):.2f}x)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
