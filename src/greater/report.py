"""`greater report`: one self-contained report.html of a run or a comparison.

Everything is inline (CSS, SVG charts drawn here; a comparison's is chart.png's chart, from the same
`compare.table.chart_spec`): the page needs no network and no other file. A run's report works on an
unfinished run too (it shows the steps so far).
"""

from __future__ import annotations

import difflib
import json
import math
import re
from html import escape
from pathlib import Path

from greater.compare.stats import paired_cells
from greater.compare.table import (
    DEV_NOTE,
    SEARCHES_HEAD,
    SEARCHES_NOTE,
    cell_tables,
    chart_spec,
    has_dev,
    has_searches,
    search_cells,
    spread_cell,
)
from greater.errors import GreaterError
from greater.runs import read_json, write_atomic

FILE = "report.html"
TOP_CANDIDATES = 8  # candidates shown per step (by gradient)
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:1100px;color:#222;
background:#fff;line-height:1.4;padding:0 1rem}
h1{font-size:1.5rem;margin-bottom:.2rem} h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd}
.meta{color:#555;font-size:.9rem} table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}
td,th{border:1px solid #ddd;padding:.25rem .5rem;vertical-align:top;text-align:left}
th{background:#f3f5f8} td.num{text-align:right;font-variant-numeric:tabular-nums}
mark{background:#ffe066;padding:0 .1rem;border-radius:2px} .prompt{font-family:ui-monospace,monospace}
.cards{display:flex;gap:1rem;flex-wrap:wrap} .card{border:1px solid #ddd;border-radius:6px;padding:.6rem 1rem;
min-width:12rem} .card b{font-size:1.6rem;display:block} details{margin:.15rem 0} summary{cursor:pointer}
figure{margin:.5rem 0} del{color:#b00} .chosen{font-weight:600}
svg{background:#fcfcfd;border:1px solid #e5e7eb;border-radius:6px}
.legend span{margin-right:1rem;font-size:.85rem} .sw{display:inline-block;width:.8rem;height:.8rem;
margin-right:.3rem;vertical-align:middle}
"""


def write_report(folder: Path, out: Path | None = None) -> Path:
    """Write the report of a run directory or a `greater compare` folder; returns its path."""
    if not folder.is_dir():
        raise GreaterError(f"{folder} is not a directory; give a run directory or a compare output folder")
    if (folder / "table.json").is_file() and (folder / "cells").is_dir():
        html = compare_report(folder)
    elif (folder / "run.json").is_file():
        html = run_report(folder)
    else:
        raise GreaterError(f"{folder} has neither run.json (a run) nor table.json and cells/ (a comparison)")
    path = out or folder / FILE
    write_atomic(path, html)
    return path


def _page(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width,initial-scale=1'><title>{escape(title)}</title>"
        f"<style>{_CSS}</style></head><body>\n{body}\n</body></html>\n"
    )


# --- a run ----------------------------------------------------------------------------------------


def _steps(folder: Path) -> list[dict]:
    path = folder / "steps.jsonl"
    steps = []
    if path.exists():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                steps.append(json.loads(line))
            except json.JSONDecodeError:
                raise GreaterError(f"{path}: line {number} is not valid JSON") from None
    return steps


def run_report(folder: Path) -> str:
    info = read_json(folder / "run.json")
    result = read_json(folder / "result.json") if (folder / "result.json").exists() else {}
    initial = read_json(folder / "initial_eval.json") if (folder / "initial_eval.json").exists() else {}
    steps = _steps(folder)
    test = result.get("test_accuracy") or {}
    before = test.get("initial", initial.get("accuracy"))
    after = test.get("optimized")
    method = info.get("method", "greater")
    status = "finished" if result else f"in progress or stopped ({len(steps)} steps so far)"
    body = [
        f"<h1>greater · {escape(str(info.get('task')))}</h1>",
        f"<p class='meta'>method {escape(method)} · model {escape(str(info.get('model')))} · "
        f"{escape(status)} · folder {escape(str(folder))}</p>",
        "<div class='cards'>",
        _card("test accuracy before", before),
        _card("test accuracy after", after),
        _card("dev accuracy (chosen)", result.get("dev_accuracy")),
        f"<div class='card'>steps<b>{len(steps)}</b></div>",
        "</div>",
        "<h2>Prompt</h2>",
        f"<p>before: <span class='prompt'>{escape(str(result.get('initial_prompt') or initial.get('prompt') or ''))}"
        "</span></p>",
        f"<p>after: <span class='prompt chosen'>{escape(str(result.get('prompt', '—')))}</span></p>",
    ]
    if steps:
        xs = [s["step"] for s in steps]
        body.append("<h2>Trajectory</h2>")
        for key, title in (
            ("loss", "loss of the step's prompt (CE + λ·NLL)"),
            ("best_score", "best selection score so far (lower is better)"),
        ):
            points = list(zip(xs, [s.get(key) for s in steps], strict=True))
            body.append(line_chart({title: points}, title=title, x_label="step", height=240))
        body.append(
            line_chart(
                {"training errors": list(zip(xs, [s.get("train_errors") for s in steps], strict=True))},
                title="training examples answered wrong per step",
                x_label="step",
                height=200,
                color=COLORS[2],
            )
        )
        body.append("<h2>Steps</h2>")
        body.append(_steps_table(steps))
    elif (folder / "history.jsonl").exists():
        body.append("<h2>Candidate prompts scored</h2>" + _history_table(folder / "history.jsonl"))
    return _page(f"greater report · {info.get('task')}", "\n".join(body))


def _card(label: str, value: object) -> str:
    shown = f"{100 * value:.1f}%" if isinstance(value, int | float) else "—"
    return f"<div class='card'>{escape(label)}<b>{shown}</b></div>"


def highlight_change(before: str, after: str) -> str:
    """`after` as HTML with the words that differ from `before` in <mark> (and removed words struck out)."""
    a, b = _words(before), _words(after)
    out = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        new = escape("".join(b[j1:j2]))
        if op == "equal":
            out.append(new)
            continue
        if op in ("delete", "replace") and not new.strip():
            out.append(f"<del>{escape(''.join(a[i1:i2]))}</del>")
        out.append(f"<mark>{new}</mark>" if new.strip() else new)
    return "".join(out)


def _words(text: str) -> list[str]:
    return re.findall(r"\s+|\w+|[^\w\s]", text)


def _steps_table(steps: list[dict]) -> str:
    rows = [
        "<table><tr><th>step</th><th>pos</th><th>prompt after the step (change marked)</th><th>loss</th>"
        "<th>errors</th><th>best</th><th>candidates (gradient) · evaluated (selection score)</th></tr>"
    ]
    for s in steps:
        chosen = s.get("chosen", s.get("prompt", ""))
        candidates = ", ".join(
            f"{escape(repr(c['token']))} {c['grad']:+.3f}" for c in s.get("candidates", [])[:TOP_CANDIDATES]
        )
        evaluated = "".join(
            f"<li{' class=chosen' if e.get('prompt') == chosen else ''}>{escape(repr(e.get('token')))}: "
            f"{_num(e.get('score'))}{' (cached)' if e.get('cached') else ''}</li>"
            for e in s.get("evaluated", [])
        )
        more = len(s.get("candidates", [])) - TOP_CANDIDATES
        rows.append(
            f"<tr><td class=num>{s['step']}</td><td class=num>{s.get('position')}</td>"
            f"<td class=prompt>{highlight_change(s.get('prompt', ''), chosen)}</td>"
            f"<td class=num>{_num(s.get('loss'))}</td><td class=num>{s.get('train_errors', '')}</td>"
            f"<td class=num>{_num(s.get('best_score'))}</td>"
            f"<td><details><summary>{len(s.get('candidates', []))} candidates, "
            f"{len(s.get('evaluated', []))} evaluated</summary>top: {candidates}"
            f"{f' (+{more} more)' if more > 0 else ''}<ul>{evaluated}</ul></details></td></tr>"
        )
    return "\n".join(rows) + "</table>"


def _history_table(path: Path) -> str:
    rows = ["<table><tr><th>#</th><th>round</th><th>kind</th><th>prompt</th><th>train accuracy</th></tr>"]
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        entry = json.loads(line)
        rows.append(
            f"<tr><td class=num>{i}</td><td class=num>{entry.get('round')}</td><td>{escape(str(entry.get('kind')))}"
            f"</td><td class=prompt>{escape(str(entry.get('prompt')))}</td>"
            f"<td class=num>{_num(entry.get('accuracy'))}</td></tr>"
        )
    return "\n".join(rows) + "</table>"


def _num(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else escape(str(value)) if value is not None else "—"


def line_chart(
    series: dict[str, list[tuple[float, float | None]]],
    *,
    title: str,
    x_label: str,
    width: int = 900,
    height: int = 300,
    color: str | None = None,
) -> str:
    """An inline SVG line chart with axes, ticks and a legend; points with no finite value are skipped."""
    points = {
        name: [(float(x), float(y)) for x, y in pts if isinstance(y, int | float) and math.isfinite(y)]
        for name, pts in series.items()
    }
    values = [p for pts in points.values() for p in pts]
    if not values:
        return f"<p>{escape(title)}: no values yet</p>"
    left, right, top, bottom = 70, 20, 30, 40
    x0, x1 = min(x for x, _ in values), max(x for x, _ in values)
    y0, y1 = min(y for _, y in values), max(y for _, y in values)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    pad = (y1 - y0) * 0.08 or abs(y1) * 0.1 or 1.0
    y0, y1 = y0 - pad, y1 + pad

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (width - left - right)

    def sy(y: float) -> float:
        return top + (y1 - y) / (y1 - y0) * (height - top - bottom)

    parts = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' viewBox='0 0 {width} {height}' "
        f"role='img' aria-label='{escape(title)}'>",
        f"<text x='{left}' y='18' font-size='13' font-weight='600'>{escape(title)}</text>",
    ]
    decimals = max(0, 1 - math.floor(math.log10((y1 - y0) / 4)))  # ticks 1/4 of the range apart differ
    for i in range(5):  # horizontal grid and y ticks
        y = y0 + (y1 - y0) * i / 4
        parts.append(
            f"<line x1='{left}' x2='{width - right}' y1='{sy(y):.1f}' y2='{sy(y):.1f}' stroke='#e5e7eb'/>"
            f"<text x='{left - 6}' y='{sy(y) + 4:.1f}' font-size='11' text-anchor='end'>{y:.{decimals}f}</text>"
        )
    ticks = sorted({round(x0 + (x1 - x0) * i / 5) for i in range(6)} & set(range(int(x0), int(x1) + 1)))
    for x in ticks:
        parts.append(f"<text x='{sx(x):.1f}' y='{height - bottom + 16}' font-size='11' text-anchor='middle'>{x}</text>")
    parts.append(
        f"<line x1='{left}' x2='{width - right}' y1='{height - bottom}' y2='{height - bottom}' stroke='#444'/>"
        f"<line x1='{left}' x2='{left}' y1='{top}' y2='{height - bottom}' stroke='#444'/>"
        f"<text x='{(left + width - right) / 2}' y='{height - 6}' font-size='12' text-anchor='middle'>"
        f"{escape(x_label)}</text>"
    )
    legend = []
    colors = [color] if color else COLORS
    for (name, pts), color in zip(points.items(), colors, strict=False):
        if not pts:
            continue
        path = " ".join(f"{'M' if i == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}" for i, (x, y) in enumerate(pts))
        parts.append(f"<path class='series' d='{path}' fill='none' stroke='{color}' stroke-width='2.5'/>")
        parts += [f"<circle cx='{sx(x):.1f}' cy='{sy(y):.1f}' r='3.5' fill='{color}'/>" for x, y in pts]
        legend.append(f"<span><i class='sw' style='background:{color}'></i>{escape(name)}</span>")
    parts.append("</svg>")
    caption = f"<figcaption class='legend'>{''.join(legend)}</figcaption>" if len(legend) > 1 else ""
    return "<figure>" + "".join(parts) + caption + "</figure>"


# --- a comparison ---------------------------------------------------------------------------------


def compare_report(folder: Path) -> str:
    """The page of a `greater compare` folder, from its table.json (one written before chance levels
    and paired tests existed shows neither)."""
    table = read_json(folder / "table.json")
    methods, tasks = table.get("methods", []), table.get("tasks", [])
    by = {(r["task"], r["method"]): r for r in table.get("results", [])}
    seeds = ", ".join(map(str, table.get("seeds", [])))
    chance = {task: c["majority"] for task, c in table.get("chance", {}).items()}
    rows = [
        "<table><tr><th>task</th><th>n test</th><th>chance</th>"
        + "".join(f"<th>{escape(m)}</th>" for m in methods)
        + "</tr>"
    ]
    for task in tasks:
        best = max((by[task, m]["mean"] for m in methods if (task, m) in by), default=None)
        cells = []
        for m in methods:
            r = by.get((task, m))
            text = (
                "—" if r is None else f"{100 * r['mean']:.1f}" + ("" if r["sd"] is None else f" ± {100 * r['sd']:.1f}")
            )
            strong = r is not None and r["mean"] == best
            cells.append(f"<td class='num{' chosen' if strong else ''}'>{text}</td>")
        n = next((by[task, m]["n_test"] for m in methods if (task, m) in by), "")
        level = f"{100 * chance[task]:.1f}" if task in chance else "—"
        rows.append(f"<tr><td>{escape(task)}</td><td class=num>{n}</td><td class=num>{level}</td>{''.join(cells)}</tr>")
    rows.append("</table>")
    cost = ["<table><tr><th>method</th><th>model calls</th><th>generated tokens</th><th>seconds</th></tr>"]
    for m in methods:
        rs = [by[t, m] for t in tasks if (t, m) in by]
        if rs:
            mean = {k: sum(r[k] for r in rs) / len(rs) for k in ("calls", "generated_tokens", "seconds")}
            cost.append(
                f"<tr><td>{escape(m)}</td><td class=num>{mean['calls']:.0f}</td>"
                f"<td class=num>{mean['generated_tokens']:.0f}</td><td class=num>{mean['seconds']:.1f}</td></tr>"
            )
    cost.append("</table>")
    prompts = ["<table><tr><th>task</th><th>method</th><th>seed</th><th>prompt</th></tr>"]
    for task in tasks:
        for m in methods:
            for seed, prompt in (by.get((task, m)) or {}).get("prompts", {}).items():
                prompts.append(
                    f"<tr><td>{escape(task)}</td><td>{escape(m)}</td><td class=num>{escape(seed)}</td>"
                    f"<td class=prompt>{escape(prompt)}</td></tr>"
                )
    prompts.append("</table>")
    chart = bar_chart(table)
    spread = "mean ± sd over seeds" if len(table.get("seeds", [])) > 1 else "one seed (an sd needs ≥ 2)"
    body = [
        "<h1>greater compare</h1>",
        f"<p class='meta'>model {escape(str(table.get('model')))} · seeds {escape(seeds)} · folder "
        f"{escape(str(folder))}</p>",
        f"<h2>Test accuracy (%), {spread}</h2>",
        "<p class='meta'>chance: the share of the most common gold answer among the test examples (all seeds), "
        "what always giving that answer scores; the dashed lines on the chart.</p>"
        if chance
        else "",
        "\n".join(rows),
        chart,
        ""
        if not has_dev(table)
        else _cell_table_html(
            "Dev accuracy of the chosen prompt (%)", DEV_NOTE, tasks, methods, by, lambda r: spread_cell(r.get("dev"))
        ),
        _paired_html(table.get("paired")),
        *(_cell_table_html(title, note, tasks, methods, by, cell) for title, note, cell in cell_tables(table)),
        ""
        if not has_searches(table)
        else _rows_html("Searches", SEARCHES_NOTE, SEARCHES_HEAD, [search_cells(s) for s in table["searches"]]),
        "<h2>Cost of one optimization run</h2>",
        "\n".join(cost),
        "<h2>Prompts</h2>",
        "\n".join(prompts),
    ]
    return _page("greater compare report", "\n".join(body))


def _cell_table_html(title: str, note: str, tasks: list[str], methods: list[str], by: dict, cell) -> str:
    """A task × method table of table.json's results, each cell `cell(result)` ("—" where the pair has
    none), under `title` and `note`."""
    rows = [[task] + ["—" if (task, m) not in by else cell(by[task, m]) for m in methods] for task in tasks]
    return _rows_html(title, note, ["task", *methods], rows)


def _rows_html(title: str, note: str, head: list[str], rows: list[list[str]]) -> str:
    """A table under `title` and `note`: `head`, then `rows` (their first column text, the others numbers)."""
    lines = [
        f"<h2>{escape(title)}</h2>",
        f"<p class='meta'>{escape(note)}.</p>",
        "<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr>",
    ]
    for row in rows:
        cells = "".join(f"<td class=num>{escape(c)}</td>" for c in row[1:])
        lines.append(f"<tr><td>{escape(row[0])}</td>{cells}</tr>")
    return "\n".join(lines) + "</table>"


def _paired_html(paired: dict | None) -> str:
    """The paired tests of table.json (see greater.compare.table), as a table; nothing when there are none."""
    if not paired or not paired.get("tests"):
        return ""
    ref = escape(paired["reference"])
    rows = [
        "<h2>Paired tests</h2>",
        f"<p class='meta'>{ref} against each other method on the same test examples (a pair: one test example "
        f"of one seed). difference: {ref} minus the other, in points; 95 % CI: paired bootstrap "
        f"({paired['resamples']:,} resamples within each seed); b / c: pairs only {ref} / only the other got right; "
        f"McNemar p: exact two-sided binomial test on b and c; * marks p &lt; {paired['alpha']}, with no "
        "correction for the number of tests.</p>",
        "<table><tr><th>task</th><th>comparison</th><th>n pairs</th><th>difference (points)</th><th>95 % CI</th>"
        "<th>b / c</th><th>McNemar p</th></tr>",
    ]
    for t in paired["tests"]:
        label, comparison, *numbers = paired_cells(t, paired["reference"])
        cells = [f"<td>{escape(label)}</td><td>{escape(comparison)}</td>"]
        cells += [f"<td class=num>{escape(text)}</td>" for text in numbers]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return "\n".join(rows) + "</table>"


def bar_chart(table: dict, width: int = 900, height: int = 320) -> str:
    """chart.png's chart (`compare.table.chart_spec`: the same bars, ±sd whiskers where there is an sd,
    and each task's chance level as a dashed line across its group), as inline SVG."""
    tasks, methods = table["tasks"], table["methods"]
    if not tasks or not methods:
        return ""
    bars, chance = chart_spec(table)
    left, right, top, bottom = 50, 20, 30, 60
    plot_w, plot_h = width - left - right, height - top - bottom
    group = plot_w / len(tasks)

    def sx(x: float) -> float:  # chart_spec's x: task i's group is centred on i
        return left + (x + 0.5) * group

    def sy(percent: float) -> float:
        return top + (1 - percent / 100) * plot_h

    parts = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' viewBox='0 0 {width} {height}' "
        "role='img' aria-label='test accuracy by task and method'>",
        f"<text x='{left}' y='18' font-size='13' font-weight='600'>test accuracy by task and method</text>",
    ]
    for v in range(0, 101, 20):
        parts.append(
            f"<line x1='{left}' x2='{width - right}' y1='{sy(v):.1f}' y2='{sy(v):.1f}' stroke='#e5e7eb'/>"
            f"<text x='{left - 6}' y='{sy(v) + 4:.1f}' font-size='11' text-anchor='end'>{v}</text>"
        )
    for j, spec in enumerate(bars):
        w, color = spec.width * group, COLORS[j % len(COLORS)]
        for t, (x, h) in enumerate(zip(spec.xs, spec.heights, strict=True)):
            cx = sx(x)
            parts.append(
                f"<rect class='bar' x='{cx - 0.45 * w:.1f}' y='{sy(h):.1f}' width='{w * 0.9:.1f}' "
                f"height='{max(h / 100 * plot_h, 1.0):.1f}' fill='{color}'><title>{escape(tasks[t])} · "
                f"{escape(spec.label)}: {h:.1f}%</title></rect>"
            )
            parts.append(  # the value above the bar: a bar at 0 is still readable
                f"<text x='{cx:.1f}' y='{sy(h) - 4:.1f}' font-size='10' text-anchor='middle'>{h:.1f}</text>"
            )
            if spec.yerr is not None:
                lo, hi = max(0.0, h - spec.yerr[t]), min(100.0, h + spec.yerr[t])
                parts.append(
                    f"<path class='whisker' d='M{cx:.1f},{sy(lo):.1f} V{sy(hi):.1f}' stroke='#333' stroke-width='1'/>"
                )
    for x0, x1, h in chance:  # across the group, over the bars
        parts.append(
            f"<line class='chance' x1='{sx(x0):.1f}' x2='{sx(x1):.1f}' y1='{sy(h):.1f}' y2='{sy(h):.1f}' "
            f"stroke='#000' stroke-width='1.5' stroke-dasharray='5 3'>"
            f"<title>{escape(tasks[round((x0 + x1) / 2)])} · chance: {h:.1f}%</title></line>"
        )
    for t, task in enumerate(tasks):
        parts.append(
            f"<text x='{sx(t):.1f}' y='{height - bottom + 18}' font-size='11' text-anchor='middle'>"
            f"{escape(task)}</text>"
        )
    parts.append(f"<line x1='{left}' x2='{width - right}' y1='{sy(0)}' y2='{sy(0)}' stroke='#444'/></svg>")
    legend = "".join(
        f"<span><i class='sw' style='background:{COLORS[j % len(COLORS)]}'></i>{escape(m)}</span>"
        for j, m in enumerate(methods)
    )
    if chance:
        legend += "<span><i class='sw' style='border-top:2px dashed #000;height:0'></i>chance</span>"
    return f"<figure>{''.join(parts)}<figcaption class='legend'>{legend}</figcaption></figure>"
