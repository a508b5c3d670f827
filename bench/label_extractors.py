"""Which extractor sentence a small model completes with a label: accuracy and well-formed answers of
P1 and ZS-CoT on the train and dev examples (never test) of label tasks, one extractor at a time.

    python bench/label_extractors.py --out runs/label-extractors        # resumable; prints the table

A label task is one whose gold answers are a few words ("positive"/"negative"). Measured on the built-in
gen/review_sentiment and on gen/word_kind written out as a custom CSV (read
through the custom-task loader, as a user's labelled CSV is). The reasoning does not depend on the
extractor (it comes after it), so each prompt's reasonings are generated once and every extractor
scores the same ones.
gen/number_comparison (Yes/No, built in with the paper's extractor) shows what the wording does there.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from greater.evaluate import evaluate  # noqa: E402
from greater.inference.model import load_model  # noqa: E402
from greater.methods import ZS_COT_PROMPT  # noqa: E402
from greater.optimizer import DEFAULT_INIT_PROMPT  # noqa: E402
from greater.runs import write_json  # noqa: E402
from greater.tasks import get_task, resolve_task  # noqa: E402
from greater.tasks.answers import named_labels, normalizer_for  # noqa: E402

# {labels}: "positive or negative"; {quoted}: "'$ positive' or '$ negative'"
EXTRACTORS = {
    "free-text $ (the old default)": "Therefore, the final answer (on one line, nothing else) is $",
    "exact format $ (old, with --choices)": "Therefore, the final answer (use exact format: {quoted}) is $",
    "answer (labels) is:": "Therefore, the answer ({labels}) is:",
    "answer (labels) is": "Therefore, the answer ({labels}) is",
    "final answer (labels) is:": "Therefore, the final answer ({labels}) is:",
    "in one word (labels):": "Therefore, in one word ({labels}), the answer is:",
}
PROMPTS = {"P1": (DEFAULT_INIT_PROMPT, ". Use"), "ZS-CoT": (ZS_COT_PROMPT, ".")}


def tasks(out: Path) -> dict:
    """The measured tasks: the built-in sentiment task and the word-kind task as a user's CSV."""
    kind = get_task("gen/word_kind")
    path = out / "word_kind.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["question", "answer"])
        writer.writerows((ex.question, ex.answer) for ex in kind.load())
    built_in = {name: get_task(name) for name in ("gen/review_sentiment", "gen/number_comparison")}
    return built_in | {"word_kind.csv": resolve_task(str(path))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/label-extractors"))
    parser.add_argument("--train", type=int, default=32)
    parser.add_argument("--dev", type=int, default=48)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load_model(None, dtype="float32", device="cpu")
    rows = []
    for task_name, task in tasks(args.out).items():
        split = task.splits(args.train, args.dev, None, 0)
        examples = split.train + split.dev
        labels = task.answer_set  # gen/number_comparison: Yes/No (its own extractor is the paper's "$" one)
        named = named_labels(labels)
        quoted = " or ".join(f"'$ {label}'" for label in labels)
        for prompt_name, (prompt, joiner) in PROMPTS.items():
            cached = args.out / f"{task_name.replace('/', '_')}-{prompt_name}.json"
            if not cached.exists():
                generated: dict[int, list[int]] = {}
                first = evaluate(
                    model, tokenizer, task, examples, prompt, joiner=joiner, max_new_tokens=args.max_new_tokens,
                    batch_size=16, progress=True, desc=f"{task_name} {prompt_name}",
                    on_reasoning=lambda done, _, into=generated: into.update(done),
                )  # fmt: skip
                ids = [list(generated[i]) for i in range(len(examples))]
                cut = sum(p["reasoning_tokens"] >= args.max_new_tokens for p in first.predictions)
                write_json(cached, {"reasoning": [p["reasoning"] for p in first.predictions], "cut": cut, "ids": ids})
            saved = json.loads(cached.read_text())
            if "rows" in saved:  # scored by an earlier sitting
                rows += saved["rows"]
                continue
            reasoning = {i: ids for i, ids in enumerate(saved["ids"])}
            done = len(rows)
            for extractor_name, template in EXTRACTORS.items():
                extractor = template.format(labels=named, quoted=quoted)
                variant = replace(task, extractor=extractor, normalize=normalizer_for("text", labels))
                scored = evaluate(
                    model, tokenizer, variant, examples, prompt, joiner=joiner, max_new_tokens=args.max_new_tokens,
                    batch_size=16, saved_reasoning=reasoning,
                )  # fmt: skip
                wellformed = sum(p["predicted"] in labels for p in scored.predictions)
                rows.append(
                    {
                        "task": task_name, "prompt": prompt_name, "extractor": extractor_name,
                        "accuracy": scored.accuracy, "well_formed": wellformed / scored.n, "n": scored.n,
                        "cut_off": saved["cut"] / scored.n,
                    }
                )  # fmt: skip
            write_json(cached, saved | {"rows": rows[done:]})
    write_json(args.out / "table.json", {"rows": rows, "settings": vars(args) | {"out": str(args.out)}})
    print("| task | prompt | extractor | accuracy | a label | cut off |\n|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['task']} | {r['prompt']} | {r['extractor']} | {r['accuracy']:.3f} | {r['well_formed']:.2f} "
            f"| {r['cut_off']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
