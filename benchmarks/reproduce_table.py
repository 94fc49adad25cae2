"""docs/reproduce.md's table from the shipped recipes, and CPU measurements of the recipes that fit here.

Usage::

    python benchmarks/reproduce_table.py                      # print the Markdown table (reported only)
    python benchmarks/reproduce_table.py --board runs/rep      # ... with measured values from those records
    python benchmarks/reproduce_table.py --measure clb_gdumb_splitmnist --root /work/shared/data/mnist \\
        --out runs/rep --subset-note "MNIST test set only (8,000 train / 2,000 test)"

``--measure`` runs a recipe exactly as ``cl-bench reproduce run`` would (same specs, seeds, ``protocol.recipe``),
except that it skips the data-file check, so a recipe can be run on a subset of its data (here: the MNIST test
set, the only MNIST files on the development machine). Such records answer "what does this recipe reach on
that subset", not "does it reproduce the paper": the table says which data each measured row used.

References:
    Buzzega et al., "Rethinking experience replay: a bag of tricks" (ICPR 2020): reproduction needs the
        full recipe (augmentation, schedule, buffer), not the method alone.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from cl_bench.engine.runner import run
from cl_bench.ops.reproduce import load_recipes, recipe_command, specs_for
from cl_bench.ops.reproduce_board import board_rows

BEGIN, END = "<!-- table: benchmarks/reproduce_table.py -->", "<!-- end of table -->"
NOTES_FILE = "measured_notes.json"  # per recipe: how and on what data the records in --out were measured


def measure(names: list[str], root: str, out: Path, note: str, seeds: list[int] | None = None) -> None:
    """Run each recipe's seeds on ``root`` (skipping the data check) and remember how it was measured."""
    recipes = load_recipes()
    out.mkdir(parents=True, exist_ok=True)
    notes_path = out / NOTES_FILE
    notes = json.loads(notes_path.read_text()) if notes_path.exists() else {}
    for name in names:
        start = time.perf_counter()
        specs = specs_for(recipes[name], {"scenario": {"root": root}}, seeds=seeds)
        for spec in specs:
            record = run(spec, out)
            print(f"{name} seed {spec.seed}: {record['status']} {recipes[name].metric} = "
                  f"{record['metrics'].get(recipes[name].metric)}")  # fmt: skip
        seconds = time.perf_counter() - start
        notes[name] = f"{note}; {seconds / 60 / len(specs):.1f} min per seed, 1 CPU thread on a shared machine"
        notes_path.write_text(json.dumps(notes, indent=1))


def table(board: Path | None) -> str:
    """The Markdown table: one row per recipe, reported vs measured, and its command."""
    recipes = load_recipes()
    rows = {r["name"]: r for r in board_rows([board], recipes)} if board else {}
    notes = json.loads((board / NOTES_FILE).read_text()) if board and (board / NOTES_FILE).exists() else {}
    lines = ["| recipe | method | metric | reported | measured here | verdict | GPU-h (est.) | command |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for name, r in recipes.items():
        rep = f"{100 * r.reported:.2f}" + (f" ± {100 * r.reported_std:.2f}" if r.reported_std is not None else "")
        row = rows.get(name)
        if row and row["measured"] is not None:
            meas = f"{100 * row['measured']:.2f} ± {100 * row['std']:.2f} ({row['seeds']} seeds; {notes.get(name, '')})"
            verdict = row["verdict"] + (" (on a subset of the data)" if name in notes else "")
        else:
            need = "a GPU and the dataset" if (r.compute.get("gpu_hours") or 0) > 0.5 else "the full dataset"
            meas, verdict = f"not run here (needs {need})", "not run"
        lines.append(f"| {name} | {r.method} | {r.metric} | {rep} | {meas} | {verdict} | "
                     f"{r.compute.get('gpu_hours')} | `{recipe_command(r)}` |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    """Command line: print the table, or measure recipes first."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--measure", nargs="*", default=[], help="recipes to run here (skipping the data check)")
    ap.add_argument("--root", help="scenario.root for --measure")
    ap.add_argument("--out", default="runs/reproduce_measured", help="records of --measure")
    ap.add_argument("--subset-note", default="", help="what data --measure used (goes into the table)")
    ap.add_argument("--seeds", help="comma-separated seeds for --measure instead of the recipe's")
    ap.add_argument("--board", help="records to fill the measured column from")
    ap.add_argument("--write", help="replace the table between the markers of this Markdown file")
    args = ap.parse_args()
    if args.measure:
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
        measure(args.measure, args.root, Path(args.out), args.subset_note, seeds)
    text = table(Path(args.board) if args.board else (Path(args.out) if args.measure else None))
    if args.write:
        doc = Path(args.write).read_text()
        head, _, rest = doc.partition(BEGIN)
        _, _, tail = rest.partition(END)
        Path(args.write).write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")
    print(text)


if __name__ == "__main__":
    main()
