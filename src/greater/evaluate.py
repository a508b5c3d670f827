"""Accuracy of a prompt on examples (reasoning, then the extractor, then answer matching), and the
harness that scores several prompts on several tasks and writes the comparison table."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from greater.engine import Engine
from greater.errors import GreaterError
from greater.generation import Generator, longest_first
from greater.layout import decode, encode_prompt
from greater.runs import split_sizes, write_atomic, write_json
from greater.tasks import Example, Task, resolve_task
from greater.tasks.base import fingerprint
from greater.tasks.custom import is_custom_task

ANSWER_SLACK = 8  # tokens allowed after the extractor beyond the longest gold answer
DEFAULT_JOINER = ". Use"


LOOP_WINDOW, LOOP_CHUNK, LOOP_TIMES = 300, 25, 3


def ends_in_repetition(reasoning: str) -> bool:
    """Whether a reasoning ends in a loop: some `LOOP_CHUNK`-character piece occurs `LOOP_TIMES` times
    (without overlapping) in its last `LOOP_WINDOW` characters. Greedy decoding does not leave such a
    loop, so a reasoning cut off in one would not have ended under a longer cap either."""
    tail = reasoning[-LOOP_WINDOW:]
    return any(tail.count(tail[i : i + LOOP_CHUNK]) >= LOOP_TIMES for i in range(len(tail) - LOOP_CHUNK + 1))


@dataclass
class Evaluation:
    accuracy: float
    n: int
    predictions: list[dict]  # question, reasoning, output, predicted, gold, correct


def evaluate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    examples: list[Example],
    prompt: str,
    *,
    joiner: str = DEFAULT_JOINER,
    max_new_tokens: int = 256,
    batch_size: int | str = "auto",
    generator: Generator | None = None,
    progress: bool = False,
    desc: str = "evaluating",
    saved_reasoning: dict[int, list[int]] | None = None,
    on_reasoning: Callable[[dict[int, list[int]], int], None] | None = None,
) -> Evaluation:
    """Score `prompt` on `examples` with greedy reasoning capped at `max_new_tokens`.

    With `on_reasoning`, the reasonings are generated one generation batch at a time and
    `on_reasoning(done, batch_size)` gets every reasoning so far (example index -> token ids) and the
    batch size after each batch; passing `done` back as `saved_reasoning`, with that batch size as
    `batch_size`, skips the batches it holds. The predictions are those of one uninterrupted call
    either way (`reason_in_batches`)."""
    engine = Engine(
        model,
        tokenizer,
        task,
        examples,
        joiner=joiner,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        generator=generator,
    )
    prompt_ids = tuple(encode_prompt(tokenizer, prompt))
    with tqdm(total=2 * len(examples), desc=desc, unit="gen", disable=not progress, file=sys.stderr) as bar:
        engine.generator.progress = bar
        done = dict(saved_reasoning or {})
        bar.update(len(done))
        on_batch = None if on_reasoning is None else (lambda done: on_reasoning(done, engine.batch_size))
        reasoning = reason_in_batches(engine, prompt_ids, max_new_tokens, done, on_batch)
        outputs = engine.answer(prompt_ids, reasoning, max(map(len, engine.answer_ids)) + ANSWER_SLACK)
    predictions = []
    for ex, r, out in zip(examples, reasoning, outputs, strict=True):
        predictions.append(
            {
                "question": ex.question,
                "reasoning": decode(tokenizer, r),
                "reasoning_tokens": len(r),  # == max_new_tokens: cut off at the cap
                "output": out,
                "predicted": task.extract(out),
                "gold": task.normalize(ex.answer),
                "correct": task.is_correct(out, ex),
            }
        )
    n = len(predictions)
    accuracy = sum(p["correct"] for p in predictions) / n if n else 0.0
    return Evaluation(accuracy=accuracy, n=n, predictions=predictions)


def reason_in_batches(
    engine: Engine,
    prompt: tuple[int, ...],
    max_new_tokens: int,
    done: dict[int, list[int]],
    on_batch: Callable[[dict[int, list[int]]], None] | None,
) -> list[list[int]]:
    """Greedy reasoning of `prompt` for every example of `engine`, in example order; examples in
    `done` (index -> reasoning, updated in place) are not generated again.

    Without `on_batch`, one generation call. With it, one call per generation batch, each batch
    exactly one of the single call's (the generator's order, longest context first, cut every
    `engine.batch_size` rows), so the reasonings are the same numbers; `on_batch(done)` after each.
    That holds for the engine's own generator (whose batch size is the engine's) as long as no batch
    runs out of memory (one call would go on at half the size; here each batch starts at the full one)."""
    contexts = [seq.ids for seq in engine.sequences(prompt)]
    order = longest_first(contexts)  # the order TransformersGenerator batches rows in
    size = engine.batch_size if on_batch is not None else len(order)
    for start in range(0, len(order), max(size, 1)):
        rows = [i for i in order[start : start + size] if i not in done]
        if not rows:
            continue
        done.update(zip(rows, engine.generator.generate([contexts[i] for i in rows], max_new_tokens), strict=True))
        if on_batch is not None:
            on_batch(done)
    return [done[i] for i in range(len(contexts))]


def best_on_dev(dev_accuracies: Sequence[float]) -> int:
    """The index of the finalist with the best dev accuracy. Finalists come best by their method's own
    training criterion first, so a tie keeps the one that criterion prefers (GReaTer and baselines alike)."""
    return max(range(len(dev_accuracies)), key=dev_accuracies.__getitem__)  # max keeps the first of equals


def accuracy_on(engine: Engine, examples: list[Example], prompt: str, *, joiner: str, max_new_tokens: int) -> float:
    """`evaluate`'s accuracy with an optimizer's own model, batch size and generator, so its counters
    count the work: the dev pass that picks GReaTer's and the baselines' final prompt."""
    return evaluate(
        engine.model,
        engine.tokenizer,
        engine.task,
        examples,
        prompt,
        joiner=joiner,
        max_new_tokens=max_new_tokens,
        batch_size=engine.batch_size,
        generator=engine.generator,
    ).accuracy


# --- the harness: prompts x tasks ----------------------------------------------------------------


@dataclass(frozen=True)
class PromptSpec:
    """A prompt to score: its label in the table, its text, and the joiner between question and prompt."""

    label: str
    text: str
    joiner: str = DEFAULT_JOINER


@dataclass
class TaskSplit:
    """The examples of one task to score and the split they were drawn from (recorded with the table)."""

    task: Task
    examples: list[Example]
    split: dict  # e.g. split name, seed, n_train, n_test, fingerprint


def evaluation_splits(
    task_names: Sequence[str],
    data_dir: str | None,
    run: dict,
    options: dict,
    *,
    part: str = "test",
    seed: int | None = None,
    sizes: tuple[int | None, int | None, int | None] = (None, None, None),
    limit: int | None = None,
) -> list[TaskSplit]:
    """The examples to score per task: the `part` ("train", "dev" or "test") of each task's split, drawn
    as `run` (a result.json or prompt.json in result.json's shape; {}: none) drew it for the run's own
    task (its seed, sizes and custom-task settings, unless `seed` or `sizes` (train, dev, test) say
    otherwise), and from `seed` and `sizes` for the others; custom-task `options` apply to custom
    tasks only when some task is custom. At most `limit` examples per task."""
    any_custom = any(is_custom_task(name) for name in task_names)
    splits = []
    for name in task_names:
        own = name == run.get("task")  # the run's task: its split and custom-task settings by default
        given = options if is_custom_task(name) or not any_custom else {}
        task = resolve_task(name, data_dir, (run.get("task_options", {}) if own else {}) | given)
        stored_split = run.get("split", {}) if own else {}
        chosen_seed = seed if seed is not None else stored_split.get("seed") or 0
        stored = split_sizes(stored_split)
        n_train, n_test = sizes[0] or stored[0], sizes[2] or stored[2]
        n_dev = sizes[1] if sizes[1] is not None else stored[1] if own else 0 if part != "dev" else None
        drawn = task.splits(n_train, n_dev, n_test, chosen_seed)
        examples = getattr(drawn, part)[:limit]
        if not examples:
            raise GreaterError(f"task {task.name!r} has no {part} examples in this split; set --{part}")
        record = {"split": part, "seed": chosen_seed, "train": n_train, "dev": n_dev, "test": n_test}
        record |= {"limit": limit, "n_train": len(drawn.train), "n_dev": len(drawn.dev), "n_test": len(drawn.test)}
        record["fingerprint"] = fingerprint(drawn.train, drawn.test, drawn.dev)
        splits.append(TaskSplit(task, examples, record))
    return splits


@dataclass
class Cell:
    """One prompt scored on one task."""

    task: TaskSplit
    prompt: PromptSpec
    evaluation: Evaluation


def evaluate_table(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    tasks: Sequence[TaskSplit],
    prompts: Sequence[PromptSpec],
    *,
    max_new_tokens: int = 256,
    batch_size: int | str = "auto",
    generator: Generator | None = None,
    progress: bool = False,
    on_cell: Callable[[Cell], None] | None = None,
) -> list[Cell]:
    """Score every prompt on every task (task-major order); `on_cell` sees each result as it is done."""
    cells = []
    for split in tasks:
        for prompt in prompts:
            evaluation = evaluate(
                model,
                tokenizer,
                split.task,
                split.examples,
                prompt.text,
                joiner=prompt.joiner,
                max_new_tokens=max_new_tokens,
                batch_size=batch_size,
                generator=generator,
                progress=progress,
                desc=f"evaluating {split.task.name} [{prompt.label}]",
            )
            cells.append(Cell(split, prompt, evaluation))
            if on_cell is not None:
                on_cell(cells[-1])
    return cells


def table_data(cells: Sequence[Cell], **meta: object) -> dict:
    """The comparison table as plain JSON data: `meta`, the prompts, the tasks with their splits, the results."""
    prompts = list(dict.fromkeys(cell.prompt for cell in cells))
    tasks = list({id(cell.task): cell.task for cell in cells}.values())
    return meta | {
        "prompts": [{"label": p.label, "prompt": p.text, "joiner": p.joiner} for p in prompts],
        "tasks": [{"task": t.task.name, **t.split, "n": len(t.examples)} for t in tasks],
        "results": [
            {
                "task": cell.task.task.name,
                "prompt": cell.prompt.label,
                "accuracy": cell.evaluation.accuracy,
                "correct": sum(p["correct"] for p in cell.evaluation.predictions),
                "n": cell.evaluation.n,
                "predictions": predictions_name(cell),
            }
            for cell in cells
        ],
    }


def prompts_table_markdown(table: dict) -> str:
    """The table as Markdown: one row per task (with n), one column per prompt (accuracy in %), a mean row."""
    labels = [p["label"] for p in table["prompts"]]
    acc = {(r["task"], r["prompt"]): r["accuracy"] for r in table["results"]}
    lines = [
        "| task | n | " + " | ".join(labels) + " |",
        "|---|---:|" + "---:|" * len(labels),
    ]
    for task in table["tasks"]:
        cells = [f"{100 * acc[task['task'], label]:.1f}" for label in labels]
        lines.append(f"| {task['task']} | {task['n']} | " + " | ".join(cells) + " |")
    if len(table["tasks"]) > 1:
        means = [sum(acc[t["task"], label] for t in table["tasks"]) / len(table["tasks"]) for label in labels]
        lines.append("| mean | | " + " | ".join(f"{100 * m:.1f}" for m in means) + " |")
    lines.append("")
    lines.append("Accuracy in %. Prompts (the prompt follows the question after the joiner and a space):")
    lines += [f"- {p['label']}: {p['prompt']!r} (joiner {p['joiner']!r})" for p in table["prompts"]]
    return "\n".join(lines) + "\n"


def predictions_name(cell: Cell) -> str:
    """The path, relative to the output folder, of a cell's predictions file."""
    return f"predictions/{slug(cell.task.task.name)}__{slug(cell.prompt.label)}.jsonl"


def write_table(out: Path, cells: Sequence[Cell], **meta: object) -> dict:
    """Write table.json, table.md and one predictions JSONL per task x prompt into `out`; returns the table."""
    table = table_data(cells, **meta)
    (out / "predictions").mkdir(parents=True, exist_ok=True)
    for cell in cells:
        write_predictions(out / predictions_name(cell), cell.evaluation.predictions)
    write_json(out / "table.json", table)
    write_atomic(out / "table.md", prompts_table_markdown(table))
    return table


def write_predictions(path: Path, predictions: list[dict]) -> None:
    """Per-example predictions as JSON lines, written atomically."""
    write_atomic(path, "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in predictions))


def slug(name: str) -> str:
    """A file-name-safe form of a task name or prompt label."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "_"
