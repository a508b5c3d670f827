"""The prompts × tasks table of `greater evaluate`: which examples each task is scored on
(`evaluation_splits`), every prompt scored on every task (`evaluate_table`, through `evaluate.evaluate`),
and the table as data, Markdown and files (`table_data`, `prompts_table_markdown`, `write_table`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from greater.errors import GreaterError, setting_name
from greater.evaluate import DEFAULT_JOINER, Evaluation, evaluate
from greater.inference.engine import MAX_NEW_TOKENS
from greater.inference.generation import Generator
from greater.inference.layout import AFTER_QUESTION
from greater.runs import slug, split_sizes, write_atomic, write_json, write_predictions
from greater.tasks import Example, Task, resolve_task
from greater.tasks.base import fingerprint
from greater.tasks.custom import is_custom_task


@dataclass(frozen=True)
class PromptSpec:
    """A prompt to score: its label in the table, its text, the joiner between question and prompt, and
    where it goes in the chat (`greater.inference.layout.PLACEMENTS`)."""

    label: str
    text: str
    joiner: str = DEFAULT_JOINER
    placement: str = AFTER_QUESTION


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
            raise GreaterError(f"task {task.name!r} has no {part} examples in this split; set {setting_name(part)}")
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
    max_new_tokens: int = MAX_NEW_TOKENS,
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
                placement=prompt.placement,
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


def _prompt_row(prompt: PromptSpec) -> dict:
    """A prompt in table.json; its placement only where it is not the paper's (tables before placements
    existed read the same)."""
    row = {"label": prompt.label, "prompt": prompt.text, "joiner": prompt.joiner}
    return row | ({"placement": prompt.placement} if prompt.placement != AFTER_QUESTION else {})


def table_data(cells: Sequence[Cell], **meta: object) -> dict:
    """The comparison table as plain JSON data: `meta`, the prompts, the tasks with their splits, the results."""
    prompts = list(dict.fromkeys(cell.prompt for cell in cells))
    tasks = list({id(cell.task): cell.task for cell in cells}.values())
    return meta | {
        "prompts": [_prompt_row(p) for p in prompts],
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
    lines += [
        f"- {p['label']}: {p['prompt']!r} (joiner {p['joiner']!r})"
        + (f", placed {p['placement']}" if "placement" in p else "")
        for p in table["prompts"]
    ]
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
