"""Native methods vs their Avalanche 0.6 implementations, on the same stream, seeds, network and budget.

Each pair runs through cl_bench's runner (same evaluator, test sets and metrics) with the same
protocol (epochs, batch size, boundary evaluation), the same network (``model``, ``hidden_size``),
the same optimiser and the same memory budget; only the method's implementation differs. For every
pair the script prints the final accuracy (mean +- sample std over seeds) of both and whether they
agree under the rule

    |mean_native - mean_avalanche| <= max(0.02, 2 * pooled seed std),   pooled = sqrt((s_n^2 + s_a^2) / 2)

Pairs whose implementations differ by design carry a note; ``der`` and ``mir`` are run again with
Avalanche's memory policy (``der_cb``, ``mir_cb``: ``memory=balanced_at_end``; ``mir_avl`` also excludes
the last batch's classes from the candidates, as Avalanche's plugin); ``er`` vs ``avalanche:Replay`` is run
twice, once as is (reservoir memory updated every step, replay from the first batch) and once
against ``er_cb`` with the memory and replay policy switched to Avalanche's (class-balanced memory
rebuilt at experience ends, so replay starts with the second experience).

``avalanche:BiC`` is not paired: Avalanche 0.6's BiC plugin assigns ``experience.dataset``, which its own
``DatasetExperience`` refuses ("property 'dataset' ... has no setter"), so it fails before training.

Usage::

    python benchmarks/crosscheck.py [--scenario split_digits] [--seeds 0 1 2] [--epochs 5]
        [--hidden-size 100] [--pairs der er_ace ...] [--markdown FILE]

References:
    Lomonaco et al. "Avalanche: an end-to-end library for continual learning". CVPR-W 2021 (v0.6.0).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from cl_bench.engine.runner import run
from cl_bench.engine.spec import Protocol, RunSpec

#: Memory budget in examples for every rehearsal pair (ER's ``buffer_size``, Avalanche's ``mem_size``).
BUDGET = 200


@dataclass(frozen=True)
class Pair:
    """A native method and its Avalanche counterpart, with the configs that make them comparable."""

    key: str
    native: str
    bridged: str
    native_config: dict[str, Any] = field(default_factory=dict)
    bridged_config: dict[str, Any] = field(default_factory=dict)
    note: str = ""


def pairs(batch_size: int, epochs: int, lr: float) -> list[Pair]:
    """The pairs, configured for a run's batch size, epochs and learning rate."""
    mem = {"buffer_size": BUDGET}
    return [
        Pair("der", "der", "avalanche:DER", {**mem, "alpha": 0.2},
             {"mem_size": BUDGET, "alpha": 0.2, "beta": 0.0, "batch_size_mem": batch_size},
             "by design: native (mammoth) memory is a reservoir written every step with the logits of the moment; "
             "Avalanche fills a class-balanced memory at experience ends with the trained network's logits"),
        Pair("der_cb", "der", "avalanche:DER", {**mem, "alpha": 0.2, "memory": "balanced_at_end"},
             {"mem_size": BUDGET, "alpha": 0.2, "beta": 0.0, "batch_size_mem": batch_size},
             "native switched to Avalanche's memory (class-balanced, filled at experience ends with the trained "
             "network's logits; replay from the second experience)"),
        Pair("derpp", "derpp", "avalanche:DER", {**mem, "alpha": 0.2, "beta": 1.0},
             {"mem_size": BUDGET, "alpha": 0.2, "beta": 1.0, "batch_size_mem": batch_size},
             "Avalanche's DER draws one memory batch for both terms; DER++ (mammoth) draws two"),
        Pair("er_ace", "er_ace", "avalanche:ER_ACE", mem, {"mem_size": BUDGET, "batch_size_mem": batch_size}),
        Pair("gdumb", "gdumb", "avalanche:GDumb",
             {**mem, "fit_schedule": "constant", "max_lr": lr, "min_lr": lr, "fit_epochs": epochs,
              "cutmix_alpha": 0.0, "fit_batch_size": batch_size},
             {"mem_size": BUDGET},
             "native switched to Avalanche's fit: run optimiser, `epochs` passes, no SGDR/cutmix"),
        Pair("si", "si", "avalanche:SI", {"si_lambda": 1.0, "damping": 1e-7}, {"si_lambda": 1.0, "eps": 1e-7}),
        Pair("mas", "mas", "avalanche:MAS", {"lambda_reg": 1.0, "alpha": 0.5}, {"lambda_reg": 1.0, "alpha": 0.5}),
        Pair("gem", "gem", "avalanche:GEM", {"patterns_per_exp": 256, "memory_strength": 0.5},
             {"patterns_per_exp": 256, "memory_strength": 0.5}),
        Pair("mir", "mir", "avalanche:MIR", {**mem, "subsample": 50, "replay_batch_size": batch_size},
             {"mem_size": BUDGET, "subsample": 50, "batch_size_mem": batch_size},
             "by design: Avalanche's MIR memory is class-balanced, rebuilt at experience ends (replay from the "
             "second experience, candidates exclude the last batch's classes); native: reservoir every step"),
        Pair("mir_cb", "mir", "avalanche:MIR",
             {**mem, "subsample": 50, "replay_batch_size": batch_size, "memory": "balanced_at_end"},
             {"mem_size": BUDGET, "subsample": 50, "batch_size_mem": batch_size},
             "native switched to Avalanche's memory (class-balanced, rebuilt at experience ends)"),
        Pair("mir_avl", "mir", "avalanche:MIR",
             {**mem, "subsample": 50, "replay_batch_size": batch_size, "memory": "balanced_at_end",
              "exclude_last_classes": True},
             {"mem_size": BUDGET, "subsample": 50, "batch_size_mem": batch_size},
             "native switched to Avalanche's memory and candidates (the previous experience's last batch's "
             "classes excluded)"),
        Pair("er", "er", "avalanche:Replay", mem, {"mem_size": BUDGET},
             "by design: native reservoir updated every step, replay from the first batch; Avalanche "
             "rebuilds a class-balanced memory at experience ends"),
        Pair("er_cb", "er_cb", "avalanche:Replay", {**mem, "new_weight": 0.5, "replay_weight": 0.5},
             {"mem_size": BUDGET},
             "native switched to Avalanche's policy: memory rebuilt at experience ends, loss weights "
             "0.5/0.5 (the mean over the joint batch)"),
    ]


@dataclass
class Result:
    """Final accuracies per seed of both sides of a pair, and the verdict."""

    pair: Pair
    native: list[float]
    bridged: list[float]
    seconds: float

    @staticmethod
    def _ms(v: list[float]) -> tuple[float, float]:
        return statistics.mean(v), (statistics.stdev(v) if len(v) > 1 else 0.0)

    @property
    def diff(self) -> float:
        return self._ms(self.native)[0] - self._ms(self.bridged)[0]

    @property
    def tolerance(self) -> float:
        pooled = math.sqrt((self._ms(self.native)[1] ** 2 + self._ms(self.bridged)[1] ** 2) / 2)
        return max(0.02, 2 * pooled)

    @property
    def agree(self) -> bool:
        return abs(self.diff) <= self.tolerance

    def cells(self) -> list[str]:
        (mn, sn), (mb, sb) = self._ms(self.native), self._ms(self.bridged)
        return [f"`{self.pair.native}`", f"{mn:.3f} ± {sn:.3f}", f"`{self.pair.bridged}`", f"{mb:.3f} ± {sb:.3f}",
                f"{self.diff:+.3f}", f"{self.tolerance:.3f}", "yes" if self.agree else "**no**", self.pair.note]


def run_pair(pair: Pair, scenario: str, scenario_config: dict[str, Any], protocol: Protocol, seeds: list[int],
             network: dict[str, Any], out: str) -> Result:  # fmt: skip
    """Both sides of ``pair`` over ``seeds``."""
    t0 = time.perf_counter()
    acc: dict[str, list[float]] = {"n": [], "b": []}
    for seed in seeds:
        for side, method, cfg in (("n", pair.native, pair.native_config), ("b", pair.bridged, pair.bridged_config)):
            spec = RunSpec(method=method, method_config={**network, **cfg}, scenario=scenario,
                           scenario_config=scenario_config, protocol=protocol, seed=seed)  # fmt: skip
            acc[side].append(run(spec, out)["metrics"]["final_acc"])
    return Result(pair, acc["n"], acc["b"], time.perf_counter() - t0)


HEADER = ["native", "final acc", "Avalanche 0.6", "final acc", "diff", "tolerance", "agree", "note"]


def markdown(results: list[Result], title: str) -> str:
    """The results as a Markdown table under ``title``."""
    lines = [title, "", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r.cells()) + " |" for r in results]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenario", default="split_digits")
    ap.add_argument("--scenario-set", action="append", default=[], metavar="KEY=VALUE",
                    help="scenario option, e.g. root=../shared/data/mnist download=false")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=10)
    ap.add_argument("--hidden-size", type=int, default=100)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--pairs", nargs="+", default=None, help="pair keys (default: all)")
    ap.add_argument("--markdown", default=None, help="also write the table to this file")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    sc: dict[str, Any] = {}
    for kv in args.scenario_set:
        k, _, v = kv.partition("=")
        sc[k] = {"true": True, "false": False}.get(v.lower(), v)
    protocol = Protocol(eval_every=0, epochs=args.epochs, batch_size=args.batch_size)
    network = {"model": "mlp", "hidden_size": args.hidden_size, "lr": args.lr}
    todo = [p for p in pairs(args.batch_size, args.epochs, args.lr) if args.pairs is None or p.key in args.pairs]
    results = []
    title = (f"### {args.scenario}: {len(args.seeds)} seeds, {args.epochs} epoch(s), batch {args.batch_size}, "
             f"MLP 2x{args.hidden_size}, SGD lr {args.lr}, memory {BUDGET}")  # fmt: skip
    with tempfile.TemporaryDirectory() as out:
        for pair in todo:
            r = run_pair(pair, args.scenario, sc, protocol, args.seeds, network, out)
            results.append(r)
            print(" | ".join(r.cells()[:7]) + f"  ({r.seconds:.0f} s)", flush=True)
            if args.markdown:  # rewritten after every pair, so an interrupted run keeps what finished
                with open(args.markdown, "w") as fh:
                    fh.write(markdown(results, title))
    print(markdown(results, title))
    return 0


if __name__ == "__main__":
    sys.exit(main())
