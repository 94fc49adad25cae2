"""The leaderboard as one self-contained HTML page: sortable tables and inline-SVG curves.

The page loads nothing from elsewhere (styles, script and charts are inline),
so it can be mailed, archived as a CI artefact or opened offline.

References:
    De Lange, van de Ven, Tuytelaars. "Continual evaluation for lifelong learning:
    identifying the stability gap". ICLR 2023 (the stability-gap panel plots the
    first experience's accuracy while later experiences are learnt).
"""

from __future__ import annotations

import html
import math
from typing import Any

from cl_bench.core.record import record_kind
from cl_bench.metrics import AccuracyMatrix, TTAMatrix, matrix_from_dict
from cl_bench.report import curves as C
from cl_bench.report.leaderboard import (
    COST_COLUMNS,
    MARK_NOTE,
    Board,
    Cell,
    Group,
    higher_is_better,
    pareto_front,
    tune_table,
)
from cl_bench.report.svg import PALETTE, Point, Series, line_chart, scatter_chart

MAX_CURVES = 10

_STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px} h2{font-size:17px;margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:right} td.l,th.l{text-align:left}
th{background:#f3f3f3;cursor:pointer;user-select:none} th:hover{background:#e6e6e6}
th.asc::after{content:' \\25B2'} th.desc::after{content:' \\25BC'}
tr.best td{background:#eef7ee} .note{color:#555;font-size:13px} .charts{display:flex;flex-wrap:wrap;gap:16px}
code{background:#f5f5f5;padding:1px 3px}
"""

_SCRIPT = """
function sortTable(th){
  const table=th.closest('table'), tbody=table.tBodies[0], col=th.cellIndex;
  const asc=!th.classList.contains('asc');
  table.querySelectorAll('th').forEach(h=>h.classList.remove('asc','desc'));
  th.classList.add(asc?'asc':'desc');
  const val=td=>{const v=td.dataset.v; return v===undefined?td.textContent.trim():parseFloat(v);};
  const rows=Array.from(tbody.rows);
  rows.sort((a,b)=>{const x=val(a.cells[col]), y=val(b.cells[col]);
    const xn=(typeof x==='number'&&isNaN(x)), yn=(typeof y==='number'&&isNaN(y));
    if(xn||yn) return xn-yn;
    return (x<y?-1:x>y?1:0)*(asc?1:-1);});
  rows.forEach(r=>tbody.appendChild(r));
}
document.querySelectorAll('th').forEach(th=>th.addEventListener('click',()=>sortTable(th)));
// ?sort=METRIC opens the page sorted by that column (in every table that has it).
const wanted=new URLSearchParams(location.search).get('sort');
if(wanted) document.querySelectorAll('table.board th').forEach(th=>{
  if(th.textContent.trim().split(' ')[0]===wanted) sortTable(th);});
"""


def _num(v: float) -> str:
    return "NaN" if v is None or math.isnan(v) else repr(float(v))


def _table(board: Board, g: Group) -> str:
    esc = html.escape
    head = ['<th class="l" title="rank by ' + esc(board.rank_by) + '">rank</th>', '<th class="l">method</th>',
            *(['<th class="l" title="' + esc(MARK_NOTE.replace("**", "")) + '">mark</th>'] if board.marked else []),
            '<th title="seeds in this row">n</th>']  # fmt: skip
    for m in board.metrics:
        arrow = "↑" if higher_is_better(m) else "↓"
        head.append(f'<th title="{"higher" if arrow == "↑" else "lower"} is better">{esc(m)} {arrow}</th>')
    head += [f'<th class="cost" title="record cost: {esc(k)} (mean over seeds)">{esc(COST_COLUMNS[k])}</th>'
             for k in board.costs]  # fmt: skip
    body = []
    for r in g.rows:
        cells = [f'<td class="l" data-v="{_num(r.rank if r.rank else math.nan)}">{r.rank or "-"}</td>',
                 f'<td class="l" title="{esc(str(r.config))}">{esc(r.label)}</td>',
                 *([f'<td class="l mark" title="{esc(_mark_title(r))}">{esc(r.mark)}</td>'] if board.marked else []),
                 f'<td data-v="{len(r.records)}">{len(r.records)}</td>']  # fmt: skip
        for m in board.metrics:
            c = r.cell(m)
            cells.append(f'<td data-v="{_num(c.mean)}" title="n={c.n}, seeds {r.seeds}">{esc(c.text())}</td>')
        cells += [f'<td class="cost" data-v="{_num(r.cost(k).mean)}">{esc(r.cost_text(k))}</td>' for k in board.costs]
        body.append(f'<tr class="{"best" if r.rank == 1 else ""}">' + "".join(cells) + "</tr>")
    return (f'<table class="board" id="t-{esc(g.anchor)}"><thead><tr>{"".join(head)}</tr></thead><tbody>'
            + "\n".join(body) + "</tbody></table>")  # fmt: skip


def _mark_title(r: Any) -> str:
    rep = r.reported
    if rep is None:
        return "our runs"
    std = "" if rep.std is None else f" ± {rep.std:.4f}"
    return (f"{rep.metric} {rep.value:.4f}{std} reported in {rep.source}; tolerance {rep.tolerance:.4f} "
            f"(recipe {rep.recipe})")


def _matrices(records: list[dict[str, Any]]) -> list[AccuracyMatrix | TTAMatrix]:
    return [matrix_from_dict(rec["accuracy_matrix"], kind=rec.get("kind")) for rec in records]


def _tta_chart(rows: list[Any]) -> str:
    """Online error per experience (domain) of test-time adaptation rows, mean over seeds."""
    lines = []
    for k, r in enumerate(rows):
        mats = [m for m in _matrices(r.records) if isinstance(m, TTAMatrix)]
        xs, ys = C.mean_curve([C.online_error_curve(m) for m in mats])
        lines.append(Series(r.label, xs, ys, PALETTE[k % len(PALETTE)]))
    n = len(rows[0].records)
    return ('<div class="charts">' + line_chart(lines, title=f"Online error per experience ("
            f"{f'mean of {n} seeds' if n > 1 else 'one seed'})", xlabel="experience (domain) in stream order",
            ylabel="online error") + "</div>")  # fmt: skip


def _charts(g: Group) -> str:
    rows = [r for r in g.rows if r.records][:MAX_CURVES]
    tta = [r for r in rows if record_kind(r.records[0]) == "tta"]
    if tta:  # online errors per domain: test-time adaptation has no per-iteration accuracy curves
        return _tta_chart(tta)
    seen, gap, vlines = [], [], []
    for k, r in enumerate(rows):
        mats = [m for m in _matrices(r.records) if isinstance(m, AccuracyMatrix)]
        color = PALETTE[k % len(PALETTE)]
        if not vlines:
            vlines = C.boundary_iterations(mats[0])
        xs, ys = C.mean_curve([C.seen_accuracy(m) for m in mats])
        seen.append(Series(r.label, xs, ys, color))
        if mats[0].n_experiences > 1:
            gx, gy = C.mean_curve([C.experience_accuracy(m, 0, from_boundary=True) for m in mats])
            sg: Cell = r.cell("stability_gap")
            gap.append(Series(f"{r.label} (gap {sg.mean:.2f})" if sg.n else r.label, gx, gy, color))
    n = len(rows[0].records) if rows else 0
    seeds_note = f"mean of {n} seeds" if n > 1 else "one seed"
    out = ['<div class="charts">',
           line_chart(seen, title=f"Accuracy on the experiences seen so far ({seeds_note})", vlines=vlines)]
    if gap:
        out.append(line_chart(gap, title="Stability gap: experience 0 after it was learnt",
                              vlines=vlines[1:]))  # fmt: skip
    out.append("</div>")
    out.append('<p class="note">Dashed lines: experience boundaries. A dip of the right-hand curves just after a '
               "boundary is the stability gap (De Lange et al., ICLR 2023); the legend gives the mean "
               "<code>stability_gap</code> metric.</p>")  # fmt: skip
    return "\n".join(out)


def _compute_view(board: Board, g: Group) -> str:
    """Accuracy (the ranking metric) against compute, one point per row, with the Pareto front ringed:
    the rows no other row beats with less compute (NEVIS'22 ranks methods by this trade-off)."""
    measured = [r for r in g.rows if not r.is_reported]
    key = next((k for k in ("train_flops", "train_seconds") if all(r.cost(k).n for r in measured)), None)
    rows = [r for r in measured if r.cell(board.rank_by).n]
    if key is None or len(rows) < 2:
        return ""
    points = [Point(r.label, r.cost(key).mean, r.cell(board.rank_by).mean, PALETTE[k % len(PALETTE)])
              for k, r in enumerate(rows)]  # fmt: skip
    front = pareto_front([(p.x, p.y) for p in points], higher_is_better(board.rank_by))
    unit = "training GFLOPs" if key == "train_flops" else "training seconds"
    chart = scatter_chart(points, front=front, title=f"{board.rank_by} against compute", xlabel=unit,
                          ylabel=board.rank_by)  # fmt: skip
    names = ", ".join(html.escape(points[i].label) for i in front)
    return (f'<div class="charts">{chart}</div><p class="note">Pareto front (ringed, joined; * in the legend): '
            f"{names}: no other row reaches their {html.escape(board.rank_by)} with less {unit.split()[1]}.</p>")


def _tunes(tunes: list[dict[str, Any]]) -> str:
    esc, out = html.escape, []
    for t in tunes:
        title, note, header, rows = tune_table(t)
        out.append(f'<h2>{esc(title)}</h2><p class="note">{esc(note)}</p><table class="tune"><thead><tr>'
                   + "".join(f'<th class="l">{esc(h)}</th>' for h in header) + "</tr></thead><tbody>")  # fmt: skip
        out += ["<tr>" + "".join(f'<td class="l">{esc(c)}</td>' for c in r) + "</tr>" for r in rows]
        out.append("</tbody></table>")
    return "\n".join(out)


def to_html(board: Board) -> str:
    """A self-contained HTML page of ``board``."""
    esc = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             "<title>cl_bench leaderboard</title>", f"<style>{_STYLE}</style></head><body>",
             "<h1>cl_bench leaderboard</h1>",
             f'<p class="note">Mean ± sample std over seeds; <b>n</b> = seeds per row. Ranked by '
             f"<code>{esc(board.rank_by)}</code>. Records on different scenario specs or protocols are in different "
             f"tables. Click a column header to sort.</p>"]  # fmt: skip
    if not board.groups:
        parts.append("<p>No completed run records found.</p>")
    for g in board.groups:
        parts.append(f'<h2 id="{esc(g.anchor)}">{esc(g.title)}</h2>')
        parts.append(_table(board, g))
        parts.append(_compute_view(board, g))
        parts.append(_charts(g))
    parts.append(_tunes(board.tunes))
    if board.skipped:
        parts.append(f"<h2>Skipped records ({len(board.skipped)})</h2><ul class='skipped'>")
        parts += [f"<li><code>{esc(p)}</code>: {esc(why)}</li>" for p, why in board.skipped]
        parts.append("</ul>")
    parts.append(f"<script>{_SCRIPT}</script></body></html>")
    return "\n".join(parts) + "\n"
