"""What ``cl-bench sweep | leaderboard | plot | regress | tune | list models`` do, callable from Python.

:mod:`cl_bench.cli` parses the command line and calls these with plain
arguments; each prints its report and returns the exit code (0 success, 1 a
failed run or a regression; user errors raise :class:`~cl_bench.core.errors.UserError`,
which the CLI turns into exit code 2).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cl_bench.core.errors import UserError


def sweep(spec_path: str, *, executor: str = "local", workers: int | None = None, address: str | None = None,
          max_retries: int = 1, dry_run: bool = False) -> int:  # fmt: skip
    """Validate and run a sweep spec; print a summary. Exit 1 if any run failed."""
    from cl_bench.ops.sweep import load_sweep_spec, plan, run_sweep, summarize

    spec = load_sweep_spec(spec_path)
    if dry_run:
        states = plan(spec)
        width = max((len(run_id) for run_id, _, _ in states), default=0)
        for run_id, state, overrides in states:
            print(f"{state:<10} {run_id:<{width}}  {overrides}".rstrip())
        print(f"{len(states)} runs; nothing was run (--dry-run)")
        return 0
    result = run_sweep(spec, executor=executor, workers=workers, address=address, max_retries=max_retries)
    print(summarize(result))
    if not result.ok:
        print("restart the same command to resume: completed runs are skipped, interrupted ones resume from their "
              "checkpoints", file=sys.stderr)  # fmt: skip
    return 0 if result.ok else 1


def leaderboard(dirs: Sequence[str], *, out: str | None = None, metrics: str | None = None,
                rank_by: str | None = None, quiet: bool = False) -> int:  # fmt: skip
    """Build the board of the records under ``dirs`` and write Markdown, CSV and HTML."""
    from cl_bench.ops.reproduce import reported_values
    from cl_bench.report.leaderboard import build_board, parse_metrics
    from cl_bench.report.writers import to_markdown, write_board

    board = build_board(dirs, parse_metrics(metrics), rank_by, reported=reported_values())
    target = Path(out) if out else Path(dirs[0]) / "leaderboard"
    files = write_board(board, target)
    if not quiet:
        print(to_markdown(board))
    n = sum(len(r.records) for g in board.groups for r in g.rows)
    print(f"{n} records in {len(board.groups)} group(s), {len(board.skipped)} skipped; wrote "
          + ", ".join(str(p) for p in files.values()))  # fmt: skip
    for path, why in board.skipped:
        print(f"skipped {path}: {why}", file=sys.stderr)
    return 0


def plot(records: Sequence[str], *, out: str = "overlay.png", experience: int | None = None,
         curves: bool = False) -> int:  # fmt: skip
    """Overlay the per-iteration curves of several run records in one PNG (or, ``curves``, one run's per experience)."""
    from cl_bench.core.record import load_record, record_kind
    from cl_bench.report.leaderboard import find_records, run_labels
    from cl_bench.report.plots import plot_accuracy_curves, plot_overlay

    paths = find_records(records)
    if not paths:
        raise UserError(f"no run.json found under {', '.join(records)}")
    loaded = [load_record(p) for p in paths]
    tta = [str(p) for p, r in zip(paths, loaded, strict=True) if record_kind(r) == "tta"]
    if tta:
        raise UserError(f"{', '.join(tta)} are test-time adaptation runs, which have no per-iteration curves to "
                        f"overlay; `cl-bench run` plots each one's online error per domain")  # fmt: skip
    if curves:
        if len(loaded) != 1 or experience is not None:
            raise UserError(f"--curves draws every experience of one run: give exactly one record and no "
                            f"--experience (got {len(loaded)} records)")  # fmt: skip
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        print(plot_accuracy_curves(loaded[0], out))
        return 0
    if experience is not None:
        n = min(len(r["accuracy_matrix"]["boundary"]) for r in loaded)
        if not 0 <= experience < n:
            raise UserError(f"--experience must be between 0 and {n - 1} for these records, got {experience}")
    from cl_bench.metrics import matrix_from_dict
    from cl_bench.report.curves import overlay_boundaries

    labels = run_labels(loaded)
    own = overlay_boundaries([matrix_from_dict(r["accuracy_matrix"], kind=r.get("kind")) for r in loaded])
    if own is not None:  # the x axis is the training iteration: say why the boundary lines do not line up
        ends = "; ".join(f"{lab}: {', '.join(map(str, b))}" for lab, b in zip(labels, own, strict=True))
        print(f"note: these runs end their experiences at different iterations (different protocols), so each "
              f"run's boundaries are drawn in its own colour ({ends})", file=sys.stderr)  # fmt: skip
    print(plot_overlay(loaded, out, experience, labels))
    return 0


def regress(against: str, *, fresh: str | None = None, out: str | None = None, workers: int | None = None,
            tolerances: dict[str, float] | None = None, spread: float = 1.0, only_worse: bool = False,
            metrics: str | None = None, scenario_sets: dict[str, Any] | None = None, update: bool = False,
            verbose: bool = False) -> int:  # fmt: skip
    """Compare fresh runs of the golden set with it (exit 1 on a regression), or update it."""
    from cl_bench.ops import regress as rg

    if update:
        print(rg.update_golden(against, fresh=fresh, workers=workers, scenario_sets=scenario_sets))
        return 0
    tol = {**rg.load_tolerances(Path(against)), **(tolerances or {})}
    chosen = tuple(m.strip() for m in metrics.split(",")) if metrics else None
    config = rg.RegressConfig(tolerances=tol, spread=spread, only_worse=only_worse, metrics=chosen)
    report = rg.regress(against, fresh=fresh, out=out, config=config, workers=workers, scenario_sets=scenario_sets)
    print(rg.format_report(report, verbose))
    if not report.ok:
        print(f"if the change is intended, update the golden set: cl-bench regress --against {against} --update",
              file=sys.stderr)  # fmt: skip
    return 0 if report.ok else 1


def tune(spec_path: str, *, executor: str = "local", workers: int | None = None, address: str | None = None) -> int:
    """Run the two-phase protocol of a tune spec and print chosen configs with both phases' scores."""
    from cl_bench.ops.tune import load_tune_spec, run_tune
    from cl_bench.report.leaderboard import tune_table

    spec = load_tune_spec(spec_path)
    summary = run_tune(spec, executor=executor, workers=workers, address=address)
    title, note, header, rows = tune_table(summary)
    widths = [max(len(x) for x in col) for col in zip(header, *rows, strict=True)]
    print(title)
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    print(f"summary: {Path(spec.out) / 'tune.json'}; records: {spec.out}/phase1, {spec.out}/phase2 "
          f"(`cl-bench leaderboard {spec.out}` shows both phases)")  # fmt: skip
    for run_id, err in summary["failed_runs"].items():
        print(f"failed: {run_id}: {err}", file=sys.stderr)
    # A diverging run is a result of the protocol (the chosen values did not transfer); anything else is not.
    broken = [e for e in summary["failed_runs"].values() if not e.startswith("DivergenceError")]
    return 1 if broken else 0


def list_models(*, verbose: bool = False, n_classes: int = 10) -> int:
    """Print the registered networks; with ``verbose``, each one's parameter count, input size and reference.

    Counts are for ``n_classes`` outputs at the entry's reference input size (built on the meta device).
    """
    import textwrap

    import torch

    from cl_bench.nets.registry import create_model, list_models, model_entry, parameter_count

    for name in list_models():
        entry = model_entry(name)
        print(f"{name:<18} {entry.description}")
        if verbose:
            shape = "x".join(map(str, entry.input_shape)) if entry.input_shape else "any"
            with torch.device("meta"):  # shapes only: counting ViT-B/16 allocates and initialises nothing
                count = parameter_count(create_model(name, n_classes, entry.input_shape))
            print(f"{'':<19}params: {count:,} ({n_classes} classes)   input: {shape}")
            print(textwrap.fill(entry.reference, width=100, initial_indent=" " * 19 + "ref: ",
                                subsequent_indent=" " * 24))  # fmt: skip
    return 0


def reproduce_list(*, as_json: bool = False) -> int:
    """Print the reproduction recipes (name, paper, scenario, method, metric, reported, tolerance, compute)."""
    import json

    from cl_bench.ops.reproduce import load_recipes

    rows = [r.row() for r in load_recipes().values()]
    if as_json:
        print(json.dumps(rows, indent=1))
        return 0
    for r in rows:
        std = f" ± {100 * r['reported_std']:.2f}" if r["reported_std"] is not None else ""
        hours = "?" if r["gpu_hours"] is None else f"{r['gpu_hours']:g}"
        flag = "" if r["available"] else "  [unavailable: method not registered here]"
        print(f"{r['name']:<36} {r['method']:<12} {r['scenario']:<15} {r['metric']:<13} "
              f"{100 * r['reported']:6.2f}{std} (tol {100 * r['tolerance']:.2f}, {r['seeds']} seeds, "
              f"~{hours} GPU-h){flag}")  # fmt: skip
        print(f"{'':<37}{r['reported_in']}")
    return 0


def reproduce_run(names: Sequence[str], *, smoke: bool = False, sets: dict[str, dict[str, Any]] | None = None,
                  out: str = "runs/reproduce", seeds: Sequence[int] | None = None, device: str = "cpu",
                  executor: str = "local", workers: int | None = None, address: str | None = None) -> int:  # fmt: skip
    """Run recipes (``--smoke``: 2 iterations per experience) and print where the records went."""
    from cl_bench.ops.reproduce import run_recipes

    if executor != "ray" and (workers is not None or address is not None):
        raise UserError("--workers and --address go with --executor ray; the local executor runs one recipe run "
                        "after another. Add --executor ray, or drop them.")  # fmt: skip
    records = run_recipes(names, smoke=smoke, sets=sets, out=out, seeds=seeds, device=device, executor=executor,
                          workers=workers, address=address)  # fmt: skip
    for rec in records:
        print(f"{rec['protocol']['recipe']}: seed {rec['seed']} {rec['status']} -> {Path(out) / rec['run_id']}")
    print(f"{len(records)} run(s); compare with `cl-bench reproduce board {out}`")
    return 0


def reproduce_board(dirs: Sequence[str]) -> int:
    """Print reported vs measured vs delta per recipe, with the verdict."""
    from cl_bench.ops.reproduce import load_recipes
    from cl_bench.ops.reproduce_board import board_rows, format_board

    for d in dirs:
        if not Path(d).is_dir():
            raise UserError(f"{d} is not a directory; `cl-bench reproduce board` takes the --out of reproduce run")
    print(format_board(board_rows(dirs, load_recipes())))
    return 0
