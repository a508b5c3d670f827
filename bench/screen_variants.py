"""Issue 37's dev screen: GReaTer's search variants on train and dev only, at the label comparison's settings.

    python bench/screen_variants.py                                   # every variant, seeds 0 and 1, resumable
    python bench/screen_variants.py --methods greater-best,ape>greater  # a disjoint share, in a second shell
    python bench/screen_variants.py --table                           # the screen's table, from finished cells
    python bench/screen_variants.py --choose                          # docs/results.md's rule, applied

Each (variant, seed) is a `greater compare` cell's search (`compare.search_cell`, with its progress saved after
every step in OUT/partial/, so an interrupted sitting goes on where it stopped) on the comparison's split of
docs/evidence/labels/compare (same task, sizes and seed, checked by fingerprint), and no test scoring: the
test examples are drawn (the split needs them) and never scored. A refinement ("ape>greater") starts from
the prompt the committed APE cell of that seed chose. The table puts the committed `greater` and `ape` cells'
dev accuracies beside the variants'; docs/results.md states the rule that picks one variant from it.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from dataclasses import replace
from pathlib import Path

from greater.compare.cells import (
    CellJob,
    ScoringModel,
    load_partial,
    progress_note,
    save_partial,
    search_cell,
    source_cell,
)
from greater.compare.stats import distinctness
from greater.compare.table import cell_name
from greater.inference.model import load_model, model_label
from greater.methods import MethodConfig, greater_fields
from greater.runs import read_json, write_json
from greater.tasks import get_task
from greater.tasks.base import fingerprint

ROOT = Path(__file__).resolve().parent.parent
COMPARISON = ROOT / "docs/evidence/labels/compare"
TASK = "gen/review_sentiment"
VARIANTS = ("greater-best", "greater-starts", "ape>greater", "greater-starts:keep_best=true", "ape>greater-best")
COMMITTED = ("greater", "ape")  # rows read from the comparison's own cells


def settings() -> tuple[MethodConfig, tuple[int, int, int]]:
    """The comparison's MethodConfig (compare.json) and its (train, dev, test) sizes."""
    stored = read_json(COMPARISON / "compare.json")
    split = stored["split"]
    return MethodConfig(**stored["config"]), (split["train"], split["dev"], split["test"])


def screen(out: Path, methods: list[str], seeds: list[int]) -> None:
    """Run every missing (method, seed) search, saving each as OUT/cells/<cell>.json."""
    config, sizes = settings()
    task = get_task(TASK)
    model, tokenizer = load_model(None, device="cpu", dtype="float32")
    scorer = ScoringModel(model_label(None), model, tokenizer)
    for seed in seeds:
        drawn = task.splits(*sizes, seed)
        split_id = fingerprint(drawn.train, drawn.test, drawn.dev)
        committed = read_json(COMPARISON / "cells" / f"{cell_name(TASK, 'greater', seed)}.json")
        assert committed["split"]["fingerprint"] == split_id, "not the comparison's split"
        for method in methods:
            greater_fields(method)  # a bad name fails here, before any search
            name = cell_name(TASK, method, seed)
            if (out / "cells" / f"{name}.json").exists():
                continue
            job = CellJob(task, method, seed, replace(config, seed=seed), name)
            job.source = source_cell(COMPARISON, task, method, seed)
            partial = out / "partial" / f"{name}.json"
            key = f"{method}|{seed}|{split_id}|{sorted(vars(job.config).items())}"

            def checkpoint(progress: dict, partial: Path = partial, key: str = key, name: str = name) -> None:
                save_partial(partial, key, progress)
                note = progress_note(progress, config.steps).replace("search done, scoring on test", "search done")
                print(f"{name}: {note}", file=sys.stderr, flush=True)  # (the screen scores no test example)

            result, _ = search_cell(job, scorer, drawn.train, drawn.dev, load_partial(partial, key), checkpoint)
            cell = {"task": TASK, "method": method, "seed": seed, "split": {"fingerprint": split_id}, "result": result}
            write_json(out / "cells" / f"{name}.json", cell)
            partial.unlink(missing_ok=True)


def table(out: Path, seeds: list[int]) -> str:
    """Markdown: per method, the chosen prompt's dev accuracy per seed and mean, the finalists'
    distinctness, training errors after each step, generated tokens and seconds per search."""
    lines = [
        "| method | dev % per seed | mean dev % | finalists differ (% words) | training errors by step | "
        "generated tokens | seconds |",
        "|---|---|---:|---:|---|---:|---:|",
    ]
    for method in (*COMMITTED, *VARIANTS):
        folder = COMPARISON if method in COMMITTED else out
        cells = [folder / "cells" / f"{cell_name(TASK, method, seed)}.json" for seed in seeds]
        done = [read_json(path)["result"] for path in cells if path.exists()]
        if not done:
            continue
        dev = [100 * r["dev_accuracy"] for r in done]
        distinct = [100 * distinctness([f["prompt"] for f in r["finalists"]]) for r in done]
        errors = [
            " ".join(str(h["train_errors"]) for h in r["history"] if h.get("kind") == "step") or "–" for r in done
        ]
        pending = "" if len(done) == len(seeds) else f" ({len(done)} of {len(seeds)} seeds)"
        lines.append(
            f"| {method}{pending} | {' · '.join(f'{d:.1f}' for d in dev)} | {statistics.mean(dev):.1f} | "
            f"{statistics.mean(distinct):.0f} | {' / '.join(errors)} | "
            f"{statistics.mean(r['usage']['generated_tokens'] for r in done):,.0f} | "
            f"{statistics.mean(r['usage']['seconds'] for r in done):,.0f} |"
        )
    return "\n".join(lines) + "\n"


def choose(out: Path, seeds: list[int]) -> str:
    """docs/results.md's rule, applied to finished cells: the variant with the highest mean dev accuracy of its
    chosen prompt over `seeds`, a tie to the fewer generated tokens per search; then, if it generates more
    than APE's search (mean over the same seeds), the APE row at as large a budget: the comparison's
    evaluations scaled by the ratio, rounded up. Refuses while a cell is missing."""
    config, _ = settings()

    def cells(folder: Path, method: str) -> list[dict]:
        paths = [folder / "cells" / f"{cell_name(TASK, method, seed)}.json" for seed in seeds]
        missing = [path.name for path in paths if not path.exists()]
        if missing:
            raise SystemExit(f"screen_variants: not finished: {', '.join(missing)}")
        return [read_json(path)["result"] for path in paths]

    def mean(results: list[dict], key: str) -> float:
        return statistics.mean(r["dev_accuracy"] if key == "dev" else r["usage"]["generated_tokens"] for r in results)

    rows = {method: cells(out, method) for method in VARIANTS}
    chosen = max(rows, key=lambda m: (mean(rows[m], "dev"), -mean(rows[m], "tokens")))
    ape_tokens, tokens = mean(cells(COMPARISON, "ape"), "tokens"), mean(rows[chosen], "tokens")
    lines = [f"chosen: {chosen} (mean dev {100 * mean(rows[chosen], 'dev'):.1f} %, {tokens:,.0f} generated tokens)"]
    if tokens > ape_tokens:
        evaluations = math.ceil(config.budget * tokens / ape_tokens)
        lines.append(
            f"APE at as large a budget: ape:evaluations={evaluations} ({tokens / ape_tokens:.2f} × {config.budget})"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "docs/evidence/labels/screen")
    parser.add_argument("--methods", default=",".join(VARIANTS))
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--table", action="store_true", help="print the table of the finished cells and stop")
    parser.add_argument("--choose", action="store_true", help="apply docs/results.md's rule to the finished cells")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.choose:
        print(choose(args.out, seeds), end="")
        return
    if not args.table:
        screen(args.out, [m for m in args.methods.split(",") if m], seeds)
    print(table(args.out, seeds), end="")


if __name__ == "__main__":
    main()
