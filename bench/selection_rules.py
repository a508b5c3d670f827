"""The three selection rules on the same runs: dev accuracy of the prompt each rule returns.

    python bench/selection_rules.py --out runs/selection-rules            # resumable: finished runs are kept
    python bench/selection_rules.py --out runs/selection-rules --table    # print the table only

Each (task, seed, rule) runs GReaTer on the embedded model and scores on the dev split the `--keep`
best prompts by the rule's selection score; the rule's own choice is the first of them (no dev
choice), the dev choice the best on dev. Nothing here looks at the test split.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from greater.evaluate import evaluate  # noqa: E402
from greater.inference.model import load_model  # noqa: E402
from greater.optimizer import SELECTION_RULES, GreaterConfig, optimize  # noqa: E402
from greater.runs import write_json  # noqa: E402
from greater.tasks import resolve_task  # noqa: E402

TASKS = ("gen/boolean_expressions", "bbh/sports_understanding", "gen/number_comparison")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/selection-rules"))
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--rules", default=",".join(SELECTION_RULES))
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--train", type=int, default=12)
    parser.add_argument("--dev", type=int, default=40)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--keep", type=int, default=3)
    parser.add_argument("--table", action="store_true", help="only print the table of finished runs")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    tasks, seeds, rules = args.tasks.split(","), [int(s) for s in args.seeds.split(",")], args.rules.split(",")
    if not args.table:
        model, tokenizer = load_model(None)
        base = GreaterConfig(steps=args.steps, max_new_tokens=args.max_new_tokens, keep_top=args.keep)
        for name in tasks:
            task = resolve_task(name, args.data_dir)
            for seed in seeds:
                drawn = task.splits(args.train, args.dev, None, seed)
                start = args.out / f"{_slug(name)}__s{seed}__initial.json"
                if not start.exists():
                    ev = evaluate(
                        model, tokenizer, task, drawn.dev, base.init_prompt, max_new_tokens=args.max_new_tokens
                    )
                    write_json(start, {"task": name, "seed": seed, "dev_accuracy": ev.accuracy})
                for rule in rules:
                    path = args.out / f"{_slug(name)}__s{seed}__{rule}.json"
                    if path.exists():
                        continue
                    config = replace(base, selection=rule, seed=seed)
                    began = time.perf_counter()
                    result = optimize(model, tokenizer, task, config, train=drawn.train, dev=drawn.dev)
                    own = result.finalists[0]
                    record = {"task": name, "seed": seed, "rule": rule, "config": asdict(config)}
                    record |= {"own_choice": own, "dev_choice": {"prompt": result.prompt, "dev": result.dev_accuracy}}
                    record |= {"finalists": result.finalists, "seconds": round(time.perf_counter() - began, 1)}
                    record["train_errors"] = [r.train_errors for r in result.steps]
                    write_json(path, record)
                    print(f"{name} seed {seed} {rule}: dev {own['dev_accuracy']:.3f} {own['prompt']!r}", flush=True)
    print(_table(args.out, tasks, seeds, rules))
    return 0


def _table(out: Path, tasks: list[str], seeds: list[int], rules: list[str]) -> str:
    """Markdown: per task and seed, dev accuracy (%) of the initial prompt and of each rule's own choice."""
    lines = ["| task | seed | initial prompt | " + " | ".join(rules) + " |", "|---|---:|" + "---:|" * (len(rules) + 1)]
    means = {rule: [] for rule in ["initial", *rules]}
    for name in tasks:
        for seed in seeds:
            cells = []
            for rule in ["initial", *rules]:
                path = out / f"{_slug(name)}__s{seed}__{rule}.json"
                if not path.exists():
                    cells.append("–")
                    continue
                data = json.loads(path.read_text())
                acc = data["dev_accuracy"] if rule == "initial" else data["own_choice"]["dev_accuracy"]
                means[rule].append(acc)
                cells.append(f"{100 * acc:.1f}")
            lines.append(f"| {name} | {seed} | " + " | ".join(cells) + " |")
    mean = [f"{100 * sum(v) / len(v):.1f}" if v else "–" for v in means.values()]
    lines.append("| **mean** | | " + " | ".join(mean) + " |")
    return "\n".join(lines)


def _slug(name: str) -> str:
    return name.replace("/", "_")


if __name__ == "__main__":
    sys.exit(main())
