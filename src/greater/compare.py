"""`greater compare`: every method on every task and seed, scored on the test split, as a table.

    out/
      compare.json                    settings every cell was run with (a rerun must match them)
      cells/<task>__<method>__s<seed>.json     one finished cell: prompt, history, usage, test scores
      partial/<task>__<method>__s<seed>.json   the progress of a cell that has not finished (see below)
      predictions/<task>__<method>__s<seed>[__on_<model>].jsonl
      table.json, table.md, chart.png

The table has, per task, the mean test accuracy of each method over seeds (and its sd from two seeds
on), a chance level, and paired tests of one method (greater, else the first named) against each
other on the same test examples (greater.stats).

A cell file is written last and atomically, so it exists only for a finished cell: a rerun of the
same command skips those and computes the rest (and any transfer scores a cell still lacks).

A cell also resumes from inside: while it runs, its progress (`run_method`'s checkpoints: GReaTer's
`RunState` and history after every step and dev prompt, a baseline's scores after every scoring, and
the usage so far) is rewritten atomically to its partial file, which a rerun passes back as
`run_method(resume=...)`, so a killed cell loses at most the step or scoring it was in. The file
holds the cell's settings key (`_cell_key`: the comparison's settings, the cell and its split's
fingerprint); a partial file with another key is ignored (with a note) and overwritten. It is
deleted once the cell file is written.

Cells run one after the other in this process, or as Ray tasks (`cluster=`, see greater.cluster):
either way this process writes every finished cell, as it finishes, into the same folder. Ray
workers may run on machines that cannot see the folder, so cells run there keep no partial file: a
killed Ray cell starts again from its beginning.
"""

from __future__ import annotations

import functools
import hashlib
import json
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from tqdm import tqdm

from greater import stats
from greater.errors import GreaterError
from greater.evaluate import ends_in_repetition, evaluate, slug, write_predictions
from greater.methods import MethodConfig, run_method
from greater.runs import read_json, write_atomic, write_json
from greater.tasks import Example, Task
from greater.tasks.base import fingerprint as split_fingerprint

SETTINGS_FILE = "compare.json"
PARTIAL_DIR = "partial"
PARTIAL_FORMAT = "greater-partial-cell/1"
REFERENCE = "greater"  # the method the paired tests compare every other with (else the first named)
# (train, dev, test) sizes, in `Task.splits`' order; dev 0: no dev set
Sizes = tuple[int | None, int, int | None]


@dataclass
class Scorer:
    """A model that scores prompts on test splits: the optimizing model, or a transfer target."""

    label: str  # `model.model_label` of the model given on the command line
    model: object  # None where the cells run elsewhere (Ray workers load the model by its label)
    tokenizer: object


@dataclass
class CellJob:
    """One cell to compute: a method on a task with a seed; `record` is the cell's file when it exists
    and only lacks transfer scores; `partial` the file its progress is saved to while it runs (None:
    none is kept), saved with `settings` (the comparison's, as compare.json has them) in its key."""

    task: Task
    method: str
    seed: int
    config: MethodConfig
    name: str  # the cell file's stem
    record: dict | None = None
    partial: Path | None = None
    settings: dict = field(default_factory=dict)


def run_compare(
    optimizer: Scorer,
    tasks: Sequence[Task],
    methods: Sequence[str],
    seeds: Sequence[int],
    out: Path,
    config: MethodConfig,
    *,
    split: tuple[int | None, int | None] = (None, None),
    dev: int | None = None,
    transfer: Sequence[Scorer] = (),
    fingerprint: bool = False,
    progress: bool = False,
    cluster: object | None = None,
) -> dict:
    """Run the missing cells, then write table.json, table.md and chart.png; returns the table.

    `split` is (train, test) examples per task and seed; `dev` (None or 0: none) draws that many dev
    examples too, on which every method with a search makes its final choice (`run_method`'s `dev`).
    `fingerprint` records each cell's split fingerprint (`greater.tasks.base.fingerprint`), as run.json
    does. `cluster` (a `greater.cluster.RaySettings`) runs the cells as Ray tasks; the models of `optimizer`
    and `transfer` are then loaded by the workers from their labels, and may be None here."""
    sizes: Sizes = (split[0], dev or 0, split[1])
    settings = {"model": optimizer.label, "split": {"train": split[0], "test": split[1]}, "config": asdict(config)}
    settings["config"].pop("seed")
    if dev:
        settings["split"]["dev"] = dev
    else:  # keep_top plays no part without a dev set; folders made before dev sets must still resume
        settings["config"].pop("keep_top")
    _check_settings(out, settings)
    cells = [(task, method, seed) for task in tasks for seed in seeds for method in methods]
    todo = [c for c in cells if _missing(out, *c, transfer)]
    if len(todo) < len(cells):
        print(f"greater: {len(cells) - len(todo)} of {len(cells)} cells already done in {out}", file=sys.stderr)
    jobs = []
    for task, method, seed in todo:
        path = cell_path(out, task.name, method, seed)
        existing = read_json(path) if path.exists() else None
        partial = partial_path(out, path.stem) if cluster is None else None  # see the module's docstring
        jobs.append(CellJob(task, method, seed, replace(config, seed=seed), path.stem, existing, partial, settings))
    bar = tqdm(total=len(jobs), desc="comparing", unit="cell", disable=not progress, file=sys.stderr)
    if cluster is None or not jobs:  # (nothing left to run: no Ray needed)
        for job in jobs:
            bar.set_postfix_str(f"{job.task.name} {job.method} seed {job.seed}")
            _write_cell(out, job, *compute_cell(job, optimizer, transfer, sizes, fingerprint))
            bar.update(1)
    else:
        from greater.cluster import run_on_ray

        labels = (optimizer.label, [s.label for s in transfer])
        for job, record, predictions in run_on_ray(jobs, cluster, *labels, sizes, fingerprint):
            _write_cell(out, job, record, predictions)
            bar.set_postfix_str(f"{job.task.name} {job.method} seed {job.seed} done")
            bar.update(1)
    bar.close()
    records = [read_json(cell_path(out, task.name, method, seed)) for task, method, seed in cells]
    table = summarize(out, records, settings, [s.label for s in transfer], tasks)
    write_json(out / "table.json", table)
    write_atomic(out / "table.md", compare_markdown(table))
    write_chart(table, out / "chart.png")
    return table


def cell_path(out: Path, task: str, method: str, seed: int) -> Path:
    return out / "cells" / f"{_cell_name(task, method, seed)}.json"


def _cell_name(task: str, method: str, seed: int) -> str:
    return f"{slug(task)}__{slug(method)}__s{seed}"


def partial_path(out: Path, name: str) -> Path:
    """The progress file of the unfinished cell `name` (a cell file's stem)."""
    return out / PARTIAL_DIR / f"{name}.json"


def _cell_key(job: CellJob, split: str) -> str:
    """What a cell's progress is valid for: the comparison's settings, the cell (task, method, seed)
    and the fingerprint of its drawn examples (`split`), hashed."""
    identity = {"settings": job.settings, "cell": job.name, "split": split}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def load_partial(path: Path, key: str) -> dict | None:
    """The progress saved in `path` for a cell with `key`; None (with a note when there is a file)
    where there is none, or the file was saved with other settings, or cannot be read."""
    if not path.exists():
        return None
    try:
        saved = read_json(path)
    except GreaterError:
        saved = {}
    if saved.get("format") == PARTIAL_FORMAT and saved.get("key") == key:
        print(f"greater: continuing the cell saved in {path}", file=sys.stderr)
        return saved["progress"]
    print(f"greater: ignoring {path}: saved with other settings (or unreadable); the cell starts over", file=sys.stderr)
    return None


def save_partial(path: Path, key: str, progress: dict) -> None:
    """Replace the cell's progress file (atomically: a kill leaves the previous one)."""
    write_json(path, {"format": PARTIAL_FORMAT, "key": key, "progress": progress})


def _check_settings(out: Path, settings: dict) -> None:
    """Record the settings in a new output folder; refuse one whose cells were run with others."""
    path = out / SETTINGS_FILE
    if path.exists():
        stored = read_json(path)
        for key in ("model", "split", "config"):
            if stored.get(key) != settings[key]:
                old, new = stored.get(key) or {}, settings[key]
                what = key
                if isinstance(old, dict) and isinstance(new, dict):
                    what = next((k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)), key)
                    old, new = old.get(what), new.get(what)
                raise GreaterError(
                    f"{out} holds a comparison run with {what}={old!r}, not {new!r}; "
                    "rerun with the same settings to resume it, or choose another --out"
                )
        return
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, settings)


def _missing(out: Path, task: Task, method: str, seed: int, transfer: Sequence[Scorer]) -> bool:
    path = cell_path(out, task.name, method, seed)
    if not path.exists():
        return True
    done = read_json(path).get("transfer", {})
    return any(s.label not in done for s in transfer)


def compute_cell(
    job: CellJob,
    optimizer: Scorer,
    transfer: Sequence[Scorer],
    sizes: Sizes,
    fingerprint: bool,
) -> tuple[dict, dict[str, list[dict]]]:
    """Optimize (unless the job has its record and only lacks transfer scores) and score on test.

    Returns the cell's record and its predictions files (path relative to the output folder -> rows);
    nothing is written here, so a Ray worker can compute a cell for the driver to write."""
    task, method, seed, config = job.task, job.method, job.seed, job.config
    drawn = task.splits(*sizes, seed)
    train, dev, test = drawn.train, drawn.dev, drawn.test
    predictions: dict[str, list[dict]] = {}
    record = job.record
    if record is None:
        split_id = split_fingerprint(train, test, dev)
        resume, checkpoint = None, None
        if job.partial is not None:
            key = _cell_key(job, split_id)
            resume, checkpoint = load_partial(job.partial, key), functools.partial(save_partial, job.partial, key)
        result = run_method(
            method,
            optimizer.model,
            optimizer.tokenizer,
            task,
            train,
            config,
            dev=dev,
            resume=resume,
            checkpoint=checkpoint,
        )
        record = {
            "task": task.name,
            "method": method,
            "seed": seed,
            "split": {"n_train": len(train), "n_test": len(test)}
            | ({"n_dev": len(dev)} if dev else {})
            | ({"fingerprint": split_id} if fingerprint else {}),
            "result": result.to_json(),
            "test": _score(predictions, optimizer, task, test, result.prompt, result.joiner, config, job.name),
            "transfer": {},
            "runtime": {"device": str(optimizer.model.device), "dtype": str(optimizer.model.dtype).split(".")[-1]},
        }
    prompt, joiner = record["result"]["prompt"], record["result"]["joiner"]
    for scorer in transfer:
        if scorer.label not in record["transfer"]:
            name = f"{job.name}__on_{slug(scorer.label)}"
            record["transfer"][scorer.label] = _score(predictions, scorer, task, test, prompt, joiner, config, name)
    return record, predictions


def _write_cell(out: Path, job: CellJob, record: dict, predictions: dict[str, list[dict]]) -> None:
    """The predictions files, then the cell file (last, atomically: it marks the cell finished), then
    the cell's partial file goes (also one left by an earlier sitting where this one ran on Ray)."""
    (out / "predictions").mkdir(parents=True, exist_ok=True)
    for relative, rows in predictions.items():
        write_predictions(out / relative, rows)
    (out / "cells").mkdir(parents=True, exist_ok=True)
    write_json(out / "cells" / f"{job.name}.json", record)
    partial_path(out, job.name).unlink(missing_ok=True)


def _score(
    predictions: dict[str, list[dict]],
    scorer: Scorer,
    task: Task,
    test: list[Example],
    prompt: str,
    joiner: str,
    config,
    name: str,
) -> dict:
    """Test accuracy of a prompt; its per-example predictions go into `predictions` as predictions/<name>.jsonl."""
    ev = evaluate(
        scorer.model,
        scorer.tokenizer,
        task,
        test,
        prompt,
        joiner=joiner,
        max_new_tokens=config.max_new_tokens,
        batch_size=config.batch_size,
    )
    relative = f"predictions/{name}.jsonl"
    predictions[relative] = ev.predictions
    correct = sum(p["correct"] for p in ev.predictions)
    return {"accuracy": ev.accuracy, "correct": correct, "n": ev.n, "predictions": relative}


def summarize(
    out: Path, records: list[dict], settings: dict, transfer: Sequence[str] = (), tasks: Sequence[Task] = ()
) -> dict:
    """The table as JSON: per (task, method), test accuracy mean and spread over seeds and mean cost;
    per task its chance level (`_chance`); the paired tests (`_paired`).

    `out` is the folder the records' predictions paths are relative to; `tasks` (the `Task`s the
    records are of, when at hand) give the uniform chance of a task with a fixed set of answers."""
    names = list(dict.fromkeys(r["task"] for r in records))
    methods = list(dict.fromkeys(r["method"] for r in records))
    seeds = list(dict.fromkeys(r["seed"] for r in records))
    rows = {(r["task"], r["method"], r["seed"]): _test_rows(out, r) for r in records}
    cap = settings.get("config", {}).get("max_new_tokens")
    results = []
    for task in names:
        for method in methods:
            runs = [r for r in records if r["task"] == task and r["method"] == method]
            usage = [r["result"]["usage"] for r in runs]
            test_rows = [row for r in runs for row in rows[task, method, r["seed"]]]
            row = {
                "task": task,
                "method": method,
                "n_test": runs[0]["test"]["n"],
                **_spread([r["test"]["accuracy"] for r in runs]),
                "calls": _mean([u["calls"] for u in usage]),
                "generated_tokens": _mean([u["generated_tokens"] for u in usage]),
                "seconds": _mean([u["seconds"] for u in usage]),
                "prompts": {str(r["seed"]): r["result"]["prompt"] for r in runs},
                "transfer": {m: _spread([r["transfer"][m]["accuracy"] for r in runs]) for m in transfer},
                **_cut_off(test_rows, cap),
            }
            results.append(row)
    reference = REFERENCE if REFERENCE in methods else methods[0]
    answer_sets = {t.name: t.answer_set for t in tasks}
    return settings | {
        "tasks": names,
        "methods": methods,
        "seeds": seeds,
        "transfer_models": list(transfer),
        "results": results,
        "chance": {t: _chance([rows[t, reference, s] for s in seeds], answer_sets.get(t)) for t in names},
        "paired": _paired(rows, names, methods, seeds, reference),
        "cells": [f"cells/{_cell_name(r['task'], r['method'], r['seed'])}.json" for r in records],
    }


def _spread(values: list[float]) -> dict:
    """Mean, sample standard deviation (None for one seed: there is no spread to show) and the values."""
    sd = statistics.stdev(values) if len(values) > 1 else None
    return {"mean": _mean(values), "sd": sd, "accuracies": values}


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
    """`cut_off`: the share of test answers whose reasoning ran to the cap (`reasoning_tokens`), over
    the rows that record it; `cut_off_looping`: the share that ran to the cap inside a repetition loop
    (`ends_in_repetition`), which a longer cap would not have ended. Both None when no row records
    its length (predictions written before it was recorded)."""
    capped = [row for row in test_rows if "reasoning_tokens" in row]
    if not capped or cap is None:
        return {"cut_off": None, "cut_off_looping": None}
    cut = [row for row in capped if row["reasoning_tokens"] >= cap]
    looping = [row for row in cut if ends_in_repetition(row["reasoning"])]
    return {"cut_off": len(cut) / len(capped), "cut_off_looping": len(looping) / len(capped)}


def _cut_off_cell(row: dict) -> str:
    """A table.md cell: "cut off (looping)" in %, "–" where nothing was recorded."""
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
                        "comparison into a new --out"
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

    def accuracy_table(pick: Callable[[dict], dict]) -> None:
        lines.append("| task | n test | chance | " + " | ".join(methods) + " |")
        lines.append("|---|---:|---:|" + "---:|" * len(methods))
        for task in tasks:
            cells = [_pct(pick(by[task, m])) for m in methods]
            lines.append(
                f"| {task} | {by[task, methods[0]]['n_test']} | {chance[task]:.1f} | " + " | ".join(cells) + " |"
            )
        if len(tasks) > 1:
            means = [100 * _mean([pick(by[t, m])["mean"] for t in tasks]) for m in methods]
            mean_chance = _mean(list(chance.values()))
            lines.append(f"| mean | | {mean_chance:.1f} | " + " | ".join(f"{v:.1f}" for v in means) + " |")
        lines.append("")

    accuracy_table(lambda r: r)
    for model in table["transfer_models"]:
        lines += [f"Transfer: the same prompts scored with {model} (test accuracy %, as above).", ""]
        accuracy_table(lambda r, model=model: r["transfer"][model])
    lines += _paired_markdown(table["paired"])
    if any(r.get("cut_off") is not None for r in table["results"]):
        lines += [
            "Reasoning cut off at the cap (% of test answers whose reasoning reached --max-new-tokens; "
            "a high share means the answers were forced before the reasoning ended). In parentheses: "
            "the % cut off inside a repetition loop (a 25-character piece three times in the last 300 "
            "characters), which a longer cap would not have ended:",
            "",
            "| task | " + " | ".join(methods) + " |",
            "|---|" + "---:|" * len(methods),
        ]
        for task in tasks:
            cells = [_cut_off_cell(by[task, m]) for m in methods]
            lines.append(f"| {task} | " + " | ".join(cells) + " |")
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
    lines += ["", "Prompts found (seed: prompt):", ""]
    for task in tasks:
        for m in methods:
            for seed, prompt in by[task, m]["prompts"].items():
                lines.append(f"- {task} · {m} · seed {seed}: {prompt!r}")
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


def _pct(spread: dict) -> str:
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
    """What `write_chart` draws: the bars of each method, and per task its chance line across the
    task's group of bars (x from, x to, height in %)."""
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
    chance = [(i - 0.45, i + 0.45, 100 * table["chance"][t]["majority"]) for i, t in enumerate(tasks)]
    return bars, chance


def write_chart(table: dict, path: Path) -> None:
    """A grouped bar chart (tasks × methods) of mean test accuracy with ±sd error bars (from two seeds
    on) and each task's chance level as a dashed line, as PNG."""
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
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    tmp.replace(path)
