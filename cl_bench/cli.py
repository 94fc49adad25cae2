"""The ``cl-bench`` command line. Everything it does is reachable from Python too.

Exit codes: 0 success, 2 user error (bad name, value, path or data), 1 anything else.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from cl_bench.core.config import read_yaml_file
from cl_bench.core.errors import UserError
from cl_bench.report.console import _higher, format_metrics, format_online

DEFAULT_METHOD = "er"
DEFAULT_SCENARIO = "split_digits"
_SECTIONS = ("method", "scenario", "protocol")
COMMANDS = ("run", "list", "sweep", "leaderboard", "plot", "regress", "tune", "data", "reproduce")


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text


def parse_sets(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Split ``--set`` items into method / scenario / protocol overrides.

    ``method.NAME=V`` and ``scenario.NAME=V`` (and ``protocol.NAME=V``) address a
    section; a bare ``NAME=V`` means the method's. Values parse as YAML scalars.
    """
    out: dict[str, dict[str, Any]] = {s: {} for s in _SECTIONS}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set takes KEY=VALUE (e.g. --set lr=0.1 or --set scenario.root=DIR), got {item!r}")
        section, dot, name = key.strip().partition(".")
        if not dot:
            section, name = "method", section
        if section not in _SECTIONS:
            raise UserError(
                f"--set {item!r}: the prefix must be method., scenario. or protocol. (or none, meaning method.), "
                f"not {section!r}"
            )
        out[section][name] = _parse_value(value)
    return out


def build_spec(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """Merge ``--config`` YAML and flags (flags win) into a RunSpec and run options.

    Both the file and the merged result go through :meth:`RunSpec.from_mapping`, the one place that
    checks a run mapping's top-level fields.
    """
    from cl_bench.engine.spec import RUN_OPTIONS, RunSpec

    cfg: dict[str, Any] = {}
    if args.config:
        cfg = read_yaml_file(args.config, "config file") or {}
        RunSpec.from_mapping(cfg, str(args.config), options=RUN_OPTIONS)  # the file alone, named in messages
    merged = RunSpec.from_mapping({k: v for k, v in cfg.items() if k not in RUN_OPTIONS}).to_mapping()
    sets = parse_sets(args.set or [])
    for section in _SECTIONS:
        merged[section].update(sets[section])
    merged["method"]["name"] = args.method or merged["method"]["name"]
    merged["scenario"]["name"] = args.scenario or merged["scenario"]["name"]
    for flag in ("eval_every", "eval_subset", "epochs", "batch_size"):
        if getattr(args, flag) is not None:
            merged["protocol"][flag] = getattr(args, flag)
    if args.online:
        merged["protocol"]["online"] = True
    if args.precision is not None:
        merged["protocol"]["precision"] = args.precision
    for flag in ("channels_last", "compile"):
        if getattr(args, flag):
            merged["protocol"][flag] = True
    for flag in ("tta_reset", "tta_source_every"):
        if getattr(args, flag, None) is not None:
            merged["protocol"][flag] = getattr(args, flag)
    for key in ("seed", "device"):
        if getattr(args, key) is not None:
            merged[key] = getattr(args, key)
    spec = RunSpec.from_mapping(merged, "the command line")
    options = {
        "out": args.out or cfg.get("out", "runs"),
        "checkpoint_every": args.checkpoint_every if args.checkpoint_every is not None
        else cfg.get("checkpoint_every", 0),
        "log": args.log or cfg.get("log") or [],
    }  # fmt: skip
    return spec, options


_CONFIG_FLAGS = ("scenario", "method", "set", "seed", "eval_every", "eval_subset", "epochs", "batch_size", "device",
                 "config", "precision", "tta_reset", "tta_source_every")  # fmt: skip


def _check_resume_overrides(args: argparse.Namespace) -> None:
    """Refuse ``--resume DIR`` with options describing another configuration than DIR's run."""
    from cl_bench.core.record import RECORD_FILE, load_record
    from cl_bench.engine.spec import run_id_for, spec_from_record

    given = [f"--{f.replace('_', '-')}" for f in _CONFIG_FLAGS if getattr(args, f) not in (None, [])]
    given += ["--online"] if args.online else []
    given += [f"--{f.replace('_', '-')}" for f in ("channels_last", "compile") if getattr(args, f)]
    run_dir = Path(args.resume)
    if not given or not (run_dir / RECORD_FILE).exists():
        return
    recorded = spec_from_record(load_record(run_dir))
    spec, _ = build_spec(args)
    if run_id_for(spec) != run_id_for(recorded) or spec.device != recorded.device:
        raise UserError(
            f"--resume {run_dir} was given {', '.join(given)}, which describe another configuration than the "
            f"run being resumed (that would be run {run_id_for(spec)}, this is {run_dir.name}); a resumed run "
            f"always continues with its own recorded configuration. Drop those options to continue it, or start "
            f"the other configuration as a new run without --resume"
        )


def cmd_run(args: argparse.Namespace) -> int:
    from cl_bench.core.record import record_kind
    from cl_bench.engine import rundir
    from cl_bench.engine.runner import resume, run
    from cl_bench.engine.spec import run_id_for

    progress = sys.stderr.isatty() and not args.quiet
    if args.resume:
        _check_resume_overrides(args)
        run_dir = Path(args.resume)
        start = lambda: resume(run_dir, checkpoint_every=args.checkpoint_every, progress=progress,  # noqa: E731
                               log=args.log or [])  # fmt: skip
    else:
        spec, options = build_spec(args)
        rundir.check_out(Path(options["out"]))
        run_dir = Path(options["out"]) / run_id_for(spec)
        if not args.force and rundir.status_of(run_dir) == "completed":
            print(f"{run_dir} already holds a completed record of this run: kept, not recomputed "
                  f"(add --force to run it again and overwrite it)", file=sys.stderr)  # fmt: skip
        start = lambda: run(spec, options["out"], checkpoint_every=options["checkpoint_every"],  # noqa: E731
                            progress=progress, force=args.force, log=options["log"],
                            count_flops=args.count_flops)  # fmt: skip
    try:
        record = start()
    except KeyboardInterrupt:
        ckpt = run_dir / rundir.CHECKPOINT_FILE
        if ckpt.exists():
            print(f"interrupted: the last checkpoint is {ckpt}; continue with `{rundir.resume_command(run_dir)}`",
                  file=sys.stderr)  # fmt: skip
        else:
            print(f"interrupted: {run_dir} has no checkpoint (run with --checkpoint-every N to make a run "
                  f"resumable), so this run must start again", file=sys.stderr)  # fmt: skip
        return 130
    cost = record["cost"]
    if record_kind(record) == "tta":
        print(f"{record['method']['name']} on {record['scenario']['name']} (seed {record['seed']}, test batch "
              f"{record['protocol']['batch_size']}): {len(record['accuracy_matrix']['iteration'])} experiences, source "
              f"phase {cost.get('source_seconds', 0.0):.1f}s, adaptation {cost['train_seconds']:.1f}s")  # fmt: skip
        print(format_online(record))
    else:
        print(
            f"{record['method']['name']} on {record['scenario']['name']} (seed {record['seed']}, "
            f"eval_every={record['protocol']['eval_every']}): {len(record['accuracy_matrix']['iteration'])} eval "
            f"points, train {cost['train_seconds']:.1f}s, eval {cost['eval_seconds']:.1f}s"
        )
    print(format_metrics(record))
    if record["scenario"].get("data"):
        print(f"data:   {record['scenario']['data']}")
    print(f"record: {run_dir / 'run.json'}")
    print(f"plot:   {run_dir / 'accuracy.png'}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from cl_bench.core.registry import METHODS, METRICS, SCENARIOS

    if args.what == "models":
        from cl_bench.ops.commands import list_models

        return list_models(verbose=args.verbose)

    registry = {"methods": METHODS, "scenarios": SCENARIOS, "metrics": METRICS}[args.what]
    for entry in registry.entries():
        extra = ""
        if args.what == "metrics":
            extra = " [higher is better]" if _higher(entry.name) else " [lower is better]"
        print(f"{entry.name:<18} {entry.description}{extra}")
        print(textwrap.fill(entry.reference, width=100, initial_indent=" " * 19 + "ref: ",
                            subsequent_indent=" " * 24))  # fmt: skip
        if args.verbose and args.what != "metrics":
            params = ", ".join(f"{k}: {t}" for k, t in registry.parameters(entry.name).items())
            print(textwrap.fill(params or "(no parameters)", width=100, initial_indent=" " * 19 + "set: ",
                                subsequent_indent=" " * 24))  # fmt: skip
    for prefix in registry.bridges():  # other libraries' names, resolved (and imported) only when used
        print(f"{prefix + ':NAME':<18} any {registry.kind} of {prefix}, through the cl_bench bridge (docs/{prefix}.md)")
    return 0


def make_parser() -> argparse.ArgumentParser:
    """The argument parser of ``cl-bench``."""
    parser = argparse.ArgumentParser(
        prog="cl-bench", description="Benchmark and evaluation harness for continual learning."
    )
    sub = parser.add_subparsers(dest="command")
    r = sub.add_parser("run", help="train a method on a scenario and write a run record",
                       description="Train a method on a scenario with per-iteration evaluation and write "
                       "<out>/<run_id>/run.json plus a plot. With no arguments: ER on Split-Digits.")  # fmt: skip
    r.add_argument("--scenario", help=f"scenario name (default {DEFAULT_SCENARIO}; see `cl-bench list scenarios`)")
    r.add_argument("--method", help=f"method name (default {DEFAULT_METHOD}; see `cl-bench list methods`)")
    r.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a parameter: NAME=V (method), method.NAME=V, scenario.NAME=V, protocol.NAME=V")
    r.add_argument("--seed", type=int)
    r.add_argument("--eval-every", type=int, help="evaluate every K iterations (1 = per iteration, 0 = boundaries)")
    r.add_argument("--eval-subset", type=int, help="test examples per experience between boundaries (0 = all)")
    r.add_argument("--epochs", type=int, help="passes over each experience (default: the scenario's)")
    r.add_argument("--batch-size", type=int,
                   help="training batch size, or a TTA run's test batch size (default: the scenario's; TTA 200)")
    r.add_argument("--online", action="store_true", help="single-pass online protocol: each example seen once")
    r.add_argument("--tta-reset", choices=("none", "episodic", "shift"),
                   help="TTA: reset the method to the source model never, after every test batch (episodic) or at "
                        "each domain shift (default: the stream's setting)")
    r.add_argument("--tta-source-every", type=int, metavar="K",
                   help="TTA: measure the adapting model on the clean source test split every K batches (and "
                        "before/after the stream) into the record's source_curve (default 0 = off)")
    r.add_argument("--device", help="cpu, cuda or cuda:N (default cpu)")
    r.add_argument("--precision", choices=["fp32", "bf16", "fp16"],
                   help="step arithmetic: fp32 (default), bf16 autocast (CPU or CUDA), fp16 autocast + grad "
                        "scaling (CUDA only)")
    r.add_argument("--channels-last", action="store_true",
                   help="channels-last memory format for the network and image batches (conv nets)")
    r.add_argument("--compile", action="store_true", help="torch.compile the method's network (off by default)")
    r.add_argument("--out", help="directory for run directories (default ./runs)")
    r.add_argument("--checkpoint-every", type=int, help="save a resumable checkpoint every N iterations")
    r.add_argument("--count-flops", action="store_true",
                   help="count training and evaluation FLOPs exactly (torch.utils.flop_counter) into the record's "
                        "cost; steps run ~4x slower")
    r.add_argument("--log", action="append", metavar="TRACKER",
                   help="also write curves and results to an experiment tracker: tensorboard, wandb, mlflow or "
                        "csv (repeatable; files go into the run directory)")
    r.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its checkpoint")
    r.add_argument("--force", action="store_true",
                   help="overwrite a completed record or discard an interrupted run's checkpoint in the run directory")
    r.add_argument("--config", metavar="FILE.yaml", help="YAML with method:, scenario:, protocol: sections")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=cmd_run)
    ls = sub.add_parser("list", help="list registered methods, scenarios, metrics or models")
    ls.add_argument("what", choices=["methods", "scenarios", "metrics", "models"])
    ls.add_argument("-v", "--verbose", action="store_true", help="also show each one's parameters")
    ls.set_defaults(func=cmd_list)
    _add_report_commands(sub)
    _add_data_command(sub)
    return parser


def _tolerances(items: Sequence[str]) -> dict[str, float]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise UserError(f"--tol takes METRIC=ABSOLUTE_TOLERANCE (e.g. --tol final_acc=0.03), got {item!r}")
    return out


def _add_data_command(sub: Any) -> None:
    """``data list | check | prepare``; the work is in :mod:`cl_bench.ops.datasets`."""
    from cl_bench.ops import datasets

    d = sub.add_parser("data", help="list, check and unpack the datasets the scenarios read",
                       description="Which files each scenario reads, whether they are right (layouts and published "
                       "checksums), and unpacking a downloaded archive into the layout the scenario reads.")
    dsub = d.add_subparsers(dest="data_command", required=True)
    dl = dsub.add_parser("list", help="every dataset: scenarios, layout, published files, presence under a root")
    dl.add_argument("--root", help="data root to look in (default $CL_BENCH_DATA, else ~/.cache/cl_bench)")
    dl.set_defaults(func=lambda a: datasets.list_datasets(a.root))
    dc = dsub.add_parser("check", help="verify layouts and published checksums under ROOT; say what is wrong")
    dc.add_argument("root", metavar="ROOT")
    dc.add_argument("--dataset", action="append", help="check only this dataset (repeatable)")
    dc.set_defaults(func=lambda a: datasets.check(a.root, a.dataset))
    dp = dsub.add_parser("prepare", help="verify a downloaded archive and unpack it into the scenario's layout")
    dp.add_argument("source", metavar="FILE|NAME", help="a downloaded published file, or a dataset name (--download)")
    dp.add_argument("--root", help="data root (default $CL_BENCH_DATA, else ~/.cache/cl_bench)")
    dp.add_argument("--download", action="store_true", help="download dataset NAME's published files first")
    dp.add_argument("--url", help="mirror to download from (datasets published as one file)")
    dp.add_argument("--skip-checksum", action="store_true",
                    help="unpack although no published MD5 matches (your own or a mirrored copy)")
    dp.set_defaults(func=lambda a: datasets.prepare(a.source, a.root, download=a.download, url=a.url,
                                                    skip_checksum=a.skip_checksum))


def _add_report_commands(sub: Any) -> None:
    """``sweep``, ``leaderboard``, ``plot``, ``regress`` and ``tune``; the work is in :mod:`cl_bench.ops.commands`."""
    from cl_bench.ops import commands

    def executor_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--executor", choices=["local", "ray"], default="local",
                       help="local: a process pool (default); ray: a local Ray cluster, or --address")
        p.add_argument("--workers", type=int, help="runs in parallel (default: CPU cores)")
        p.add_argument("--address", help="address of an existing Ray cluster (with --executor ray)")

    s = sub.add_parser("sweep", help="run a grid of methods x scenarios x seeds x overrides",
                       description="Run the grid of a sweep spec (YAML). Restartable: completed runs are skipped, "
                       "interrupted ones resume from their checkpoints.")
    s.add_argument("spec", metavar="SPEC.yaml")
    executor_flags(s)
    s.add_argument("--max-retries", type=int, default=1, help="retries of runs whose worker died (default 1)")
    s.add_argument("--dry-run", action="store_true", help="validate and list the runs and their state only")
    s.set_defaults(func=lambda a: commands.sweep(a.spec, executor=a.executor, workers=a.workers, address=a.address,
                                                 max_retries=a.max_retries, dry_run=a.dry_run))
    lb = sub.add_parser("leaderboard", help="rank methods from run records; write Markdown, CSV and HTML",
                        description="Group records by scenario spec and protocol, aggregate over seeds, rank.")
    lb.add_argument("dirs", nargs="+", metavar="DIR", help="directories holding run records (searched recursively)")
    lb.add_argument("--out", help="output directory (default DIR/leaderboard)")
    lb.add_argument("--metrics", help="comma-separated metrics to show")
    lb.add_argument("--rank-by", help="metric that ranks methods (default: the first shown)")
    lb.add_argument("-q", "--quiet", action="store_true", help="do not print the Markdown board")
    lb.set_defaults(func=lambda a: commands.leaderboard(a.dirs, out=a.out, metrics=a.metrics, rank_by=a.rank_by,
                                                        quiet=a.quiet))
    pl = sub.add_parser("plot", help="overlay the per-iteration accuracy curves of several runs")
    pl.add_argument("records", nargs="+", metavar="RECORD", help="run.json files or directories holding them")
    pl.add_argument("--out", default="overlay.png", help="PNG to write (default overlay.png)")
    pl.add_argument("--experience", type=int, help="plot this experience's accuracy (stability gap view)")
    pl.add_argument("--curves", action="store_true",
                    help="one run: every experience's accuracy against iteration (where it was evaluated)")
    pl.set_defaults(func=lambda a: commands.plot(a.records, out=a.out, experience=a.experience, curves=a.curves))
    rg = sub.add_parser("regress", help="rerun the golden baselines and fail if a metric moved",
                        description="Compare fresh runs of the golden records with them, metric by metric.")
    rg.add_argument("--against", required=True, metavar="GOLDEN_DIR", help="e.g. results/golden")
    rg.add_argument("--fresh", metavar="DIR", help="read fresh records from DIR instead of rerunning")
    rg.add_argument("--out", help="keep the reruns in this directory (default: a temporary one)")
    rg.add_argument("--workers", type=int, help="parallel reruns (default: CPU cores)")
    rg.add_argument("--tol", action="append", default=[], metavar="METRIC=TOL", help="absolute tolerance override")
    rg.add_argument("--spread", type=float, default=1.0, help="golden seed std multiples added to tolerances")
    rg.add_argument("--only-worse", action="store_true", help="fail only on changes in the worse direction")
    rg.add_argument("--metrics", help="comma-separated metrics to compare (default: all)")
    rg.add_argument("--set", action="append", default=[], metavar="scenario.NAME=VALUE",
                    help="override a scenario parameter of the reruns, e.g. scenario.root=DIR")
    rg.add_argument("--update", action="store_true", help="regenerate the golden set and show the diff")
    rg.add_argument("-v", "--verbose", action="store_true", help="show every comparison")
    rg.set_defaults(func=lambda a: commands.regress(
        a.against, fresh=a.fresh, out=a.out, workers=a.workers, tolerances=_tolerances(a.tol), spread=a.spread,
        only_worse=a.only_worse, metrics=a.metrics, scenario_sets=parse_sets(a.set)["scenario"], update=a.update,
        verbose=a.verbose))
    tu = sub.add_parser("tune", help="two-phase hyper-parameter protocol: tune on one scenario, evaluate on another",
                        description="Search hyper-parameters on a tuning scenario, then evaluate the chosen ones "
                        "unchanged on an evaluation scenario of the same structure (Cha & Cho, arXiv:2403.09066).")
    tu.add_argument("spec", metavar="TUNE.yaml")
    executor_flags(tu)
    tu.set_defaults(func=lambda a: commands.tune(a.spec, executor=a.executor, workers=a.workers, address=a.address))
    rp = sub.add_parser("reproduce", help="the reproduction suite: published table cells as runnable recipes",
                        description="list the recipes, run them (--smoke: 2 iterations per experience), or compare "
                        "records with the reported values (docs/reproduce.md)")
    rsub = rp.add_subparsers(dest="reproduce_command", required=True)
    rl = rsub.add_parser("list", help="list the recipes")
    rl.add_argument("--json", action="store_true", help="machine-readable list")
    rl.set_defaults(func=lambda a: commands.reproduce_list(as_json=a.json))
    rr = rsub.add_parser("run", help="run recipes by name (all = every available one)")
    rr.add_argument("names", nargs="+", metavar="NAME")
    rr.add_argument("--smoke", action="store_true", help="2 iterations per experience: proves the recipe starts")
    rr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override: NAME=V (method), method.NAME=V, scenario.NAME=V (e.g. scenario.root=DIR)")
    rr.add_argument("--seeds", help="comma-separated seeds instead of the recipe's")
    rr.add_argument("--out", default="runs/reproduce", help="directory for run directories (default runs/reproduce)")
    rr.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    rr.add_argument("--executor", choices=["local", "ray"], default="local",
                    help="local: one run after another here (default); ray: a local Ray cluster, or --address")
    rr.add_argument("--workers", type=int, help="runs in parallel on Ray (default: CPU cores)")
    rr.add_argument("--address", help="address of an existing Ray cluster (with --executor ray)")
    rr.set_defaults(func=lambda a: commands.reproduce_run(
        a.names, smoke=a.smoke, sets=parse_sets(a.set), out=a.out, device=a.device, executor=a.executor,
        seeds=None if a.seeds is None else _seeds(a.seeds), workers=a.workers, address=a.address))
    rb = rsub.add_parser("board", help="reported vs measured (mean ± std) vs delta, verdict per recipe")
    rb.add_argument("dirs", nargs="+", metavar="DIR")
    rb.set_defaults(func=lambda a: commands.reproduce_board(a.dirs))


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds takes comma-separated integers (e.g. --seeds 0,1,2), got {text!r}") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``cl-bench``; returns the exit code."""
    parser = make_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help"):
        argv = ["run", *argv]  # bare flags mean `run`: `cl-bench --seed 1`
    args = parser.parse_args(argv)
    try:
        if getattr(args, "workers", None) is not None and args.workers < 1:
            raise UserError(f"--workers must be >= 1 (runs in parallel), got {args.workers}; leave it out to use "
                            f"one per CPU core")  # fmt: skip
        return args.func(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
