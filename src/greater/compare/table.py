"""The table of a `greater compare` folder: `summarize` reads the finished cells and their predictions
into table.json's dict (per task and method the mean test accuracy over seeds and its sd from two
seeds on, the chosen prompts' dev accuracy, model calls and tokens, the share of reasoning cut off at
the cap, the most common answer per seed, how different the search's finalists are; per task the
chance level; per cell what its search did; paired tests of one method against each other, by
greater.compare.stats), which `compare_markdown` writes as table.md and `write_chart` as chart.png
(`chart_spec`: the bars, testable without matplotlib)."""

from __future__ import annotations

import io
import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from greater.compare import stats
from greater.errors import GreaterError, setting_name
from greater.evaluate import ends_in_repetition
from greater.methods import REFINES
from greater.runs import slug, write_atomic
from greater.tasks import Task

REFERENCE = "greater"  # the paired tests' reference row by default (`default_reference`)
CUT_OFF_NOTE = (
    "Reasoning cut off at the cap (% of test answers whose reasoning reached --max-new-tokens; a high "
    "share means the answers were forced before the reasoning ended). In parentheses: the % cut off "
    "inside a repetition loop (a 25-character piece three times in the last 300 characters), which a "
    "longer cap would not have ended; – : not every seed's predictions recorded their reasoning's length"
)

DEV_NOTE = (
    "Dev accuracy (%) of the chosen prompt, over seeds as above: the dev examples chose it among the "
    "method's finalists, so it overstates what the prompt scores on test; –: no dev pass (one prompt, or no --dev)"
)
VERSUS_CHANCE_NOTE = (
    "Against always giving the majority answer (the chance column), on the same test examples: the method's "
    "accuracy minus chance in points, and McNemar's exact p over the pairs of all seeds (* below 0.05): a "
    "difference without * is not distinguishable from answering the same thing to every question"
)
TOP_ANSWER_NOTE = (
    "The most common answer on test, per seed, and its % of the test answers: near 100, the prompt makes "
    "the model give that answer whatever the question (its accuracy is then that answer's share of the gold answers)"
)
DISTINCT_NOTE = (
    "How different each search's finalists are (%, over seeds as above): the mean word edit distance "
    "between two finalists, as a share of the longer one's words (0: copies, 100: nothing in common in "
    "place); a low value means the dev pass chose among variants of one prompt; –: under two finalists"
)
TOP_ANSWER_CHARS = 16  # a longer extracted answer (a sentence the answer pattern caught) is shortened


def cell_name(task: str, method: str, seed: int) -> str:
    """A cell's file stem in cells/, partial/ and predictions/."""
    return f"{slug(task)}__{slug(method)}__s{seed}"


def check_reference(methods: Sequence[str], reference: str | None) -> None:
    """Raise GreaterError unless `reference` (None: `default_reference`) is one of `methods`."""
    if reference is not None and reference not in methods:
        raise GreaterError(f"--reference {reference!r} must be one of --methods ({', '.join(methods)})")


def default_reference(methods: Sequence[str]) -> str:
    """The method the paired tests compare every other with when none is named: GReaTer if it is a row,
    else the first."""
    return REFERENCE if REFERENCE in methods else methods[0]


def summarize(
    out: Path,
    records: list[dict],
    settings: dict,
    transfer: Sequence[str] = (),
    tasks: Sequence[Task] = (),
    reference: str | None = None,
) -> dict:
    """The table as JSON: per (task, method), test accuracy mean and spread over seeds and mean cost;
    per task its chance level (`_chance`); the paired tests (`_paired`).

    `out` is the folder the records' predictions paths are relative to; `tasks` (the `Task`s the
    records are of, when at hand) give the uniform chance of a task with a fixed set of answers;
    `reference` is the method the paired tests compare every other with (default `default_reference`)."""
    names = list(dict.fromkeys(r["task"] for r in records))
    methods = list(dict.fromkeys(r["method"] for r in records))
    seeds = list(dict.fromkeys(r["seed"] for r in records))
    rows = {(r["task"], r["method"], r["seed"]): _test_rows(out, r) for r in records}
    cap = settings.get("config", {}).get("max_new_tokens")
    reference = reference or default_reference(methods)
    answer_sets = {t.name: t.answer_set for t in tasks}
    chance = {t: _chance([rows[t, reference, s] for s in seeds], answer_sets.get(t)) for t in names}
    results = []
    for task in names:
        for method in methods:
            runs = [r for r in records if r["task"] == task and r["method"] == method]
            usage = [r["result"]["usage"] for r in runs]
            seed_rows = [rows[task, method, r["seed"]] for r in runs]
            row = {
                "task": task,
                "method": method,
                "n_test": runs[0]["test"]["n"],
                **_spread([r["test"]["accuracy"] for r in runs]),
                "calls": _mean([u["calls"] for u in usage]),
                "generated_tokens": _mean([u["generated_tokens"] for u in usage]),
                "seconds": _mean([u["seconds"] for u in usage]),
                "prompts": {str(r["seed"]): r["result"]["prompt"] for r in runs},
                # how each prompt was framed: question + joiner + " " + prompt (baselines ".", GReaTer ". Use")
                "joiners": {str(r["seed"]): r["result"]["joiner"] for r in runs},
                "transfer": {m: _spread([r["transfer"][m]["accuracy"] for r in runs]) for m in transfer},
                "dev": _spread_of_all([r["result"].get("dev_accuracy") for r in runs]),
                "finalists_distinct": _spread_of_all(
                    [stats.distinctness([f["prompt"] for f in r["result"].get("finalists", [])]) for r in runs]
                ),
                **_cut_off([row for one_seed in seed_rows for row in one_seed], cap),
                "top_answers": {
                    str(r["seed"]): _top_answer(one_seed) for r, one_seed in zip(runs, seed_rows, strict=True)
                },
                "versus_chance": _versus_chance(seed_rows, chance[task]["majority_answer"]),
            }
            results.append(row)
    return settings | {
        "tasks": names,
        "methods": methods,
        "seeds": seeds,
        "transfer_models": list(transfer),
        "results": results,
        "chance": chance,
        "paired": _paired(rows, names, methods, seeds, reference),
        "cells": [f"cells/{cell_name(r['task'], r['method'], r['seed'])}.json" for r in records],
        "searches": [
            _search(r)
            for r in sorted(records, key=lambda r: (names.index(r["task"]), methods.index(r["method"]), r["seed"]))
        ],
    }


def _spread(values: list[float]) -> dict:
    """Mean, sample standard deviation (None for one seed: there is no spread to show) and the values."""
    sd = statistics.stdev(values) if len(values) > 1 else None
    return {"mean": _mean(values), "sd": sd, "accuracies": values}


def _search(record: dict) -> dict:
    """What one cell's search did, to read why its prompt scores what it does: GReaTer's training
    errors per step (None for a baseline, or a cell written before they were recorded), its finalists'
    dev accuracies in their training-score order, the chosen prompt's dev and test accuracy."""
    result = record["result"]
    steps = [h for h in result.get("history", []) if h.get("kind") == "step"]
    errors = [h.get("train_errors") for h in steps]
    return {
        "task": record["task"],
        "method": record["method"],
        "seed": record["seed"],
        "n_train": record.get("split", {}).get("n_train"),
        "train_errors": None if not errors or None in errors else errors,
        "finalists_dev": [f["dev_accuracy"] for f in result.get("finalists", [])],
        "dev": result.get("dev_accuracy"),
        "test": record["test"]["accuracy"],
    }


def search_cells(search: dict) -> list[str]:
    """One row of the searches table (table.md and the HTML report): task, method, seed, training
    errors by step ("of n"), finalists' dev %, the chosen prompt's dev → test %."""
    errors = search["train_errors"]
    shown = "–" if errors is None else " ".join(map(str, errors)) + f" (of {search['n_train']})"
    finalists = " ".join(f"{100 * a:.0f}" for a in search["finalists_dev"]) or "–"
    dev = "–" if search["dev"] is None else f"{100 * search['dev']:.0f}"
    return [
        search["task"],
        search["method"],
        str(search["seed"]),
        shown,
        finalists,
        f"{dev} → {100 * search['test']:.0f}",
    ]


SEARCHES_NOTE = (
    "Searches, cell by cell: GReaTer's training examples answered wrong after each step; the finalists' "
    "dev accuracy (%, in the order of their training score); the chosen prompt's dev → test accuracy (%)"
)
SEARCHES_HEAD = ["task", "method", "seed", "training errors by step", "finalists on dev", "chosen: dev → test"]


def _spread_of_all(values: list[float | None]) -> dict | None:
    """`_spread` of one value per seed; None when some seed's cell has none, so a mean never hides a
    missing seed. Used for the chosen prompt's dev accuracy (none: no dev pass, i.e. zs-cot or no
    --dev, or a cell written before it was recorded) and the finalists' `stats.distinctness` (none:
    under two finalists)."""
    return None if any(v is None for v in values) else _spread(values)


def distinct_cell(row: dict) -> str:
    """One cell of the finalists' distinctness table: mean ± sd in %, "–" where not measured."""
    return spread_cell(row.get("finalists_distinct"))


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _test_rows(out: Path, record: dict) -> list[dict]:
    """A cell's test predictions (question, gold, predicted, correct, ... per example)."""
    path = out / record["test"]["predictions"]
    try:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except FileNotFoundError:
        raise GreaterError(
            f"{path} is missing; delete its cell file and rerun the comparison to score it again"
        ) from None
    except json.JSONDecodeError as err:
        raise GreaterError(f"{path}: not JSON lines ({err})") from None


def _cut_off(test_rows: list[dict], cap: int | None) -> dict:
    """`cut_off`: the share of test answers whose reasoning ran to the cap (`reasoning_tokens`);
    `cut_off_looping`: the share that ran to the cap inside a repetition loop (`ends_in_repetition`),
    which a longer cap would not have ended. Both None unless every row records its length: a share
    over the seeds whose predictions were written after it was recorded would pass for all seeds'."""
    if not test_rows or cap is None or any("reasoning_tokens" not in row for row in test_rows):
        return {"cut_off": None, "cut_off_looping": None}
    cut = [row for row in test_rows if row["reasoning_tokens"] >= cap]
    looping = [row for row in cut if ends_in_repetition(row["reasoning"])]
    return {"cut_off": len(cut) / len(test_rows), "cut_off_looping": len(looping) / len(test_rows)}


def _top_answer(test_rows: list[dict]) -> dict:
    """The answer a cell's prompt made the model give most often on test, and its share of the answers:
    a share near 1 is a prompt that answers the same whatever the question (its accuracy is then that
    answer's share of the gold answers)."""
    answer, share = stats.majority([str(row["predicted"]) for row in test_rows])
    return {"answer": answer, "share": share}


def top_answer_cell(row: dict) -> str:
    """One cell of the most-common-answer table (table.md and the HTML report): per seed "answer %",
    joined by " · "; "–" for a table.json written before it was recorded."""
    if not row.get("top_answers"):
        return "–"
    shown = []
    for top in row["top_answers"].values():
        answer = (
            top["answer"] if len(top["answer"]) <= TOP_ANSWER_CHARS else top["answer"][: TOP_ANSWER_CHARS - 1] + "…"
        )
        shown.append(f"{answer} {100 * top['share']:.0f}")
    return " · ".join(shown)


def has_dev(table: dict) -> bool:
    """Whether some method's chosen prompts have a dev accuracy (the dev table is shown)."""
    return any(r.get("dev") for r in table.get("results", []))


def has_searches(table: dict) -> bool:
    """Whether some cell's search has something to show (the searches table): GReaTer's training
    errors or finalists scored on dev (older table.json: no searches)."""
    return any(s["finalists_dev"] or s["train_errors"] for s in table.get("searches", []))


def cell_tables(table: dict) -> list[tuple[str, str, Callable[[dict], str]]]:
    """The task × method tables that follow the paired tests in table.md and the report page, those
    with something to show: (title, note, the text of one (task, method) result)."""
    results, shown = table.get("results", []), []
    if any(r.get("cut_off") is not None for r in results):
        shown.append(("Reasoning cut off at the cap (%)", CUT_OFF_NOTE, cut_off_cell))
    if any(r.get("versus_chance") for r in results):
        shown.append(("Against always giving the majority answer", VERSUS_CHANCE_NOTE, versus_chance_cell))
    if any(r.get("top_answers") for r in results):
        shown.append(("Most common answer on test", TOP_ANSWER_NOTE, top_answer_cell))
    if any(r.get("finalists_distinct") for r in results):
        shown.append(("How different the finalists are (%)", DISTINCT_NOTE, distinct_cell))
    return shown


def cut_off_cell(row: dict) -> str:
    """One cell of the cut-off table (table.md and the HTML report): "cut off (looping)" in %, "–"
    where some test answers of the cell's seeds did not record their reasoning's length."""
    if row.get("cut_off") is None:
        return "–"
    looping = row.get("cut_off_looping")
    return f"{100 * row['cut_off']:.0f}" + ("" if looping is None else f" ({100 * looping:.0f})")


def _chance(seed_rows: list[list[dict]], answer_set: Sequence[str] | None) -> dict:
    """What a task's test examples let a method score without reading the question: `majority`, the
    share of the most common gold answer over every seed's test examples (`majority_answer`), and
    `uniform`, 1/k for a task whose questions all have the same k answers (else None)."""
    answer, share = stats.majority([row["gold"] for rows in seed_rows for row in rows])
    return {"majority": share, "majority_answer": answer, "uniform": 1 / len(answer_set) if answer_set else None}


def _versus_chance(seed_rows: list[list[dict]], majority_answer: object) -> dict:
    """A method against always giving the task's majority answer, on the same test examples:
    `stats.paired_test` with the constant answer as the other method (a pair: the method correct, the
    gold is the majority answer). Says whether a score above or below chance is more than noise."""
    return stats.paired_test([[(row["correct"], row["gold"] == majority_answer) for row in rows] for rows in seed_rows])


def versus_chance_cell(row: dict) -> str:
    """One cell of the against-chance table: the difference in points and McNemar's p ("*" below
    alpha); "–" for a table.json written before it was recorded."""
    test = row.get("versus_chance")
    if not test:
        return "–"
    return f"{100 * test['difference']:+.1f} (p {stats.p_text(test['p'])})"


def _paired(rows: dict, tasks: list[str], methods: list[str], seeds: list, reference: str) -> dict:
    """`reference` against each other method, per task and pooled over the tasks (when there are
    several): `stats.paired_test` over the pairs (seed, test example). Refuses cells of one seed that
    were scored on different test examples (their pairs would be meaningless)."""
    groups = {}  # (task, other) -> per seed, the pairs (reference correct, other correct)
    for task in tasks:
        for other in (m for m in methods if m != reference):
            groups[task, other] = []
            for seed in seeds:
                mine, theirs = rows[task, reference, seed], rows[task, other, seed]
                if [r["question"] for r in mine] != [r["question"] for r in theirs]:
                    raise GreaterError(
                        f"task {task}, seed {seed}: {reference} and {other} were scored on different test "
                        "examples (their predictions files differ), so they cannot be paired; rerun the "
                        f"comparison into a new {setting_name('out')}"
                    )
                groups[task, other].append([(a["correct"], b["correct"]) for a, b in zip(mine, theirs, strict=True)])
    tests = [{"task": task, "other": other} | stats.paired_test(g) for (task, other), g in groups.items()]
    if len(tasks) > 1:
        for other in (m for m in methods if m != reference):
            pooled = [group for task in tasks for group in groups[task, other]]
            tests.append({"task": None, "other": other} | stats.paired_test(pooled))  # task None: all tasks
    return {
        "reference": reference,
        "alpha": stats.ALPHA,
        "resamples": stats.RESAMPLES,
        "bootstrap_seed": stats.BOOTSTRAP_SEED,
        "tests": tests,
    }


def compare_markdown(table: dict) -> str:
    """Markdown: accuracy (task × method, mean ± sd in %, with chance), transfer tables, paired tests,
    cost per method, prompts."""
    methods, tasks = table["methods"], table["tasks"]
    by = {(r["task"], r["method"]): r for r in table["results"]}
    seeds = ", ".join(map(str, table["seeds"]))
    if len(table["seeds"]) > 1:
        lines = [f"Test accuracy (%) on {table['model']}: mean ± sample sd over seeds {seeds}."]
    else:
        lines = [f"Test accuracy (%) on {table['model']}, seed {seeds} (no sd: it needs ≥ 2 seeds)."]
    lines += [
        "chance: the share of the most common gold answer among the test examples (all seeds), i.e. what "
        "always giving that answer scores.",
        "",
    ]
    chance = {t: 100 * table["chance"][t]["majority"] for t in tasks}

    def accuracy_table(pick: Callable[[dict], dict | None], on_test: bool = True) -> None:
        lines.append("| task | " + ("n test | chance | " if on_test else "") + " | ".join(methods) + " |")
        lines.append("|---|" + ("---:|---:|" if on_test else "") + "---:|" * len(methods))
        for task in tasks:
            cells = [spread_cell(pick(by[task, m])) for m in methods]
            head = f"{by[task, methods[0]]['n_test']} | {chance[task]:.1f} | " if on_test else ""
            lines.append(f"| {task} | {head}" + " | ".join(cells) + " |")
        if len(tasks) > 1:
            spreads = [[pick(by[t, m]) for t in tasks] for m in methods]
            means = ["–" if None in s else f"{100 * _mean([x['mean'] for x in s]):.1f}" for s in spreads]
            head = f" | | {_mean(list(chance.values())):.1f} | " if on_test else " | "
            lines.append(f"| mean{head}" + " | ".join(means) + " |")
        lines.append("")

    accuracy_table(lambda r: r)
    for model in table["transfer_models"]:
        lines += [f"Transfer: the same prompts scored with {model} (test accuracy %, as above).", ""]
        accuracy_table(lambda r, model=model: r["transfer"][model])
    if has_dev(table):
        lines += [DEV_NOTE + ":", ""]
        accuracy_table(lambda r: r.get("dev"), on_test=False)
    lines += _paired_markdown(table["paired"])
    for _title, note, cell in cell_tables(table):
        lines += [note + ":", "", "| task | " + " | ".join(methods) + " |", "|---|" + "---:|" * len(methods)]
        for task in tasks:
            cells = [cell(by[task, m]).replace("|", "\\|") for m in methods]
            lines.append(f"| {task} | " + " | ".join(cells) + " |")
        lines.append("")
    if has_searches(table):
        lines += [SEARCHES_NOTE + ":", "", "| " + " | ".join(SEARCHES_HEAD) + " |", "|---|---|---:|---|---|---:|"]
        lines += ["| " + " | ".join(search_cells(search)) + " |" for search in table["searches"]]
        lines.append("")
    lines += [
        "Cost of one optimization run (mean over tasks and seeds; test scoring not included):",
        "",
        "| method | model calls | generated tokens | seconds |",
        "|---|---:|---:|---:|",
    ]
    for m in methods:
        rows = [by[t, m] for t in tasks]
        calls, tokens, secs = (_mean([r[k] for r in rows]) for k in ("calls", "generated_tokens", "seconds"))
        lines.append(f"| {m} | {calls:.0f} | {tokens:.0f} | {secs:.1f} |")
    refinements = [m for m in methods if REFINES in m]
    if refinements:
        lines += ["", f"{', '.join(refinements)}: both searches, the source method's and GReaTer's from its prompt."]
    lines += ["", "Prompts found (seed: prompt, after its joiner: the question reads question + joiner + prompt):", ""]
    for task in tasks:
        for m in methods:
            joiners = by[task, m].get("joiners", {})
            for seed, prompt in by[task, m]["prompts"].items():
                after = f" after {joiners[seed]!r}" if seed in joiners else ""
                lines.append(f"- {task} · {m} · seed {seed}: {prompt!r}{after}")
    return "\n".join(lines) + "\n"


def _paired_markdown(paired: dict) -> list[str]:
    """The "Paired tests" section (nothing with one method)."""
    if not paired["tests"]:
        return []
    ref = paired["reference"]
    lines = [
        f"Paired tests: {ref} against each other method on the same test examples (a pair: one test example of "
        f"one seed, scored by both). difference: {ref}'s accuracy minus the other's, in points; 95 % CI: paired "
        f"bootstrap ({paired['resamples']:,} resamples of the pairs within each seed); b / c: pairs only {ref} / "
        "only the other got right; McNemar p: exact two-sided binomial test on b and c. "
        f"* marks p < {paired['alpha']}, with no correction for the number of tests.",
        "",
        "| task | comparison | n pairs | difference (points) | 95 % CI | b / c | McNemar p |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    lines += ["| " + " | ".join(stats.paired_cells(t, ref)) + " |" for t in paired["tests"]]
    return lines + [""]


def spread_cell(spread: dict | None) -> str:
    """A mean over seeds in %, "± sd" from two seeds on; "–" for None (nothing measured)."""
    if spread is None:
        return "–"
    mean = f"{100 * spread['mean']:.1f}"
    return mean if spread["sd"] is None else f"{mean} ± {100 * spread['sd']:.1f}"


@dataclass(frozen=True)
class BarSpec:
    """One method's bars on chart.png: x positions, heights (mean test accuracy, %) and error bars
    (sd in points; None with one seed, where there is no spread to draw)."""

    label: str
    xs: list[float]
    heights: list[float]
    width: float
    yerr: list[float] | None


def chart_spec(table: dict) -> tuple[list[BarSpec], list[tuple[float, float, float]]]:
    """What `write_chart` draws, and report.html's SVG chart: the bars of each method, and per task its
    chance line across the task's group of bars (x from, x to, height in %)."""
    methods, tasks = table["methods"], table["tasks"]
    by = {(r["task"], r["method"]): r for r in table["results"]}
    width = 0.8 / len(methods)
    bars = []
    for j, m in enumerate(methods):
        sds = [by[t, m]["sd"] for t in tasks]
        bars.append(
            BarSpec(
                label=m,
                xs=[i + (j - (len(methods) - 1) / 2) * width for i in range(len(tasks))],
                heights=[100 * by[t, m]["mean"] for t in tasks],
                width=width,
                yerr=None if None in sds else [100 * sd for sd in sds],
            )
        )
    levels = table.get("chance", {})  # (a table.json written before chance levels has none)
    chance = [(i - 0.45, i + 0.45, 100 * levels[t]["majority"]) for i, t in enumerate(tasks) if t in levels]
    return bars, chance


def write_chart(table: dict, path: Path) -> None:
    """A grouped bar chart (tasks × methods) of mean test accuracy with ±sd error bars (from two seeds
    on) and each task's chance level as a dashed line, as PNG."""
    # here, not at the top: pyplot takes ~0.4 s to import, and the CLI imports this module for `greater --help`
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = table["tasks"]
    bars, chance = chart_spec(table)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(tasks) + 2.5), 4.0))
    for bar in bars:
        ax.bar(bar.xs, bar.heights, bar.width, yerr=bar.yerr, capsize=2, label=bar.label)
    for i, (x0, x1, y) in enumerate(chance):
        ax.hlines(y, x0, x1, colors="black", linestyles="dashed", linewidth=1.2, label="chance" if i == 0 else None)
    ax.set_xticks(range(len(tasks)), tasks, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"{table['model']} · seeds {', '.join(map(str, table['seeds']))}", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside: bars may reach 100
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=120)
    plt.close(fig)
    write_atomic(path, png.getvalue())
