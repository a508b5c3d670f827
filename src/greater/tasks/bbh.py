"""BIG-Bench Hard tasks from their original JSON files (`<data_dir>/<task>.json`), or from the hub.

File format: {"canary": ..., "examples": [{"input": ..., "target": ...}, ...]}. Without a data folder
the examples come from the Hugging Face hub (`lukaemon/bbh`) when `datasets` is installed. Gold answers are
stored canonical ("(B)" -> "B", "yes" -> "Yes"). A few BBH choice items have a target that is not an
option letter (e.g. "Monsters, Inc" in movie_recommendation, where the options were split at a
comma); those are skipped and counted in the task description.
"""

from __future__ import annotations

import os
from pathlib import Path

from greater.errors import GreaterError, setting_name
from greater.tasks.answers import extractor_for, gold_problem, infer_answer_type, normalizer_for, option_letters
from greater.tasks.base import Example, Task
from greater.tasks.rows import read_records
from greater.tasks.sources import DATA_DIR_ENV, data_root, hub_rows

HUB_DATASET = "lukaemon/bbh"
SOURCE_URL = "https://github.com/suzgunmirac/BIG-Bench-Hard/tree/main/bbh"

BBH_ANSWER_TYPES: dict[str, str] = {
    "boolean_expressions": "true_false",
    "causal_judgement": "yes_no",
    "date_understanding": "choice",
    "disambiguation_qa": "choice",
    "dyck_languages": "text",
    "formal_fallacies": "valid_invalid",
    "geometric_shapes": "choice",
    "hyperbaton": "choice",
    "logical_deduction_five_objects": "choice",
    "logical_deduction_seven_objects": "choice",
    "logical_deduction_three_objects": "choice",
    "movie_recommendation": "choice",
    "multistep_arithmetic_two": "number",
    "navigate": "yes_no",
    "object_counting": "number",
    "penguins_in_a_table": "choice",
    "reasoning_about_colored_objects": "choice",
    "ruin_names": "choice",
    "salient_translation_error_detection": "choice",
    "snarks": "choice",
    "sports_understanding": "yes_no",
    "temporal_sequences": "choice",
    "tracking_shuffled_objects_five_objects": "choice",
    "tracking_shuffled_objects_seven_objects": "choice",
    "tracking_shuffled_objects_three_objects": "choice",
    "web_of_lies": "yes_no",
    "word_sorting": "text",
}


def resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> Path | None:
    """The data folder: `data_dir`, else $GREATER_DATA_DIR, else None.

    A folder without JSON files but with a `bbh/` subfolder resolves to that subfolder.
    """
    path = data_root(data_dir)
    if path is None:
        return None
    if path.is_dir() and not any(path.glob("*.json")) and (path / "bbh").is_dir():
        return path / "bbh"
    return path


def bbh_task_names(data_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """Task names (without "bbh/") of the JSON files in the data folder, or all known BBH names without one."""
    path = resolve_data_dir(data_dir)
    if path is not None and path.is_dir():
        return sorted(file.stem for file in path.glob("*.json"))
    return sorted(BBH_ANSWER_TYPES)


def load_bbh_task(name: str, data_dir: str | os.PathLike[str] | None = None) -> Task:
    """Read and validate `<data_dir>/<name>.json` now; the task's `load` returns the parsed examples.

    Without a data folder the examples come from the hub (see `sources.hub_rows`).
    """
    path = resolve_data_dir(data_dir)
    where = (
        f"pass {setting_name('data_dir')} DIR or set {DATA_DIR_ENV} to a folder holding {name}.json (from {SOURCE_URL})"
    )
    if path is None:
        try:
            rows = hub_rows(HUB_DATASET, name, "test", f"{name}.json")
        except GreaterError as exc:
            raise GreaterError(f"task bbh/{name} needs the BIG-Bench Hard data ({SOURCE_URL}): {exc}") from None
        return _task(name, _pairs(rows, f"{HUB_DATASET}/{name}", []), f"{HUB_DATASET} ({name})")
    if not path.is_dir():
        raise GreaterError(f"data dir {path} does not exist or is not a folder: {where}")
    file = path / f"{name}.json"
    if not file.is_file():
        raise GreaterError(
            f"{file} not found: download {name}.json from {SOURCE_URL} into {path}, "
            "or run `greater tasks` to see the available tasks"
        )
    records = read_records(file, json_key="examples")
    return _task(name, _pairs([r.data for r in records], str(file), [r.line for r in records]), file)


def _task(name: str, pairs: list[tuple[str, str]], source: object) -> Task:
    """The task from its (input, target) pairs; targets that do not fit the answer type are skipped."""
    answer_type = BBH_ANSWER_TYPES.get(name) or infer_answer_type([target for _, target in pairs])
    examples = [ex for ex in (_example(q, t, answer_type) for q, t in pairs) if ex is not None]
    if not examples:
        raise GreaterError(f"{source}: no example has a usable {answer_type} target; check the file")
    skipped = len(pairs) - len(examples)
    letters = sorted({letter for ex in examples for letter in option_letters(ex.question)})
    description = f"BIG-Bench Hard {name}: {len(examples)} examples from {source}" + (
        f" ({skipped} with an unusable target skipped)" if skipped else ""
    )
    return Task(
        name=f"bbh/{name}",
        description=description,
        extractor=extractor_for(answer_type, letters or None),
        answer_type=answer_type,
        load=lambda: list(examples),
        normalize=normalizer_for(answer_type),
        default_train=50,  # the paper's protocol (following TextGrad): 50 / 100 / 100
        default_dev=100,
        default_test=100,
    )


def _pairs(items: list[dict | None], source: str, lines: list[int]) -> list[tuple[str, str]]:
    """(input, target) of every BBH example (from a file: `lines` give where each starts); GreaterError on a bad one."""
    shape = 'expected {"examples": [{"input": "...", "target": "..."}, ...]}'
    if not items:
        raise GreaterError(f'{source}: "examples" is empty; {shape}')
    pairs = []
    for index, item in enumerate(items):
        fields = []
        for key in ("input", "target"):
            value = item.get(key) if isinstance(item, dict) else None
            if isinstance(value, int) and not isinstance(value, bool):
                value = str(value)
            if not isinstance(value, str) or not value.strip():
                where = f", line {lines[index]}" if lines else ""
                raise GreaterError(f"{source}: example {index} (0-based{where}) has no {key!r} text; {shape}")
            fields.append(value)
        pairs.append((fields[0], fields[1]))
    return pairs


def _example(question: str, target: str, answer_type: str) -> Example | None:
    """The example with its canonical gold answer, or None when the target does not fit the answer type."""
    gold = normalizer_for(answer_type)(target)
    options = option_letters(question) if answer_type == "choice" else None
    return Example(question, gold) if gold_problem(gold, answer_type, options or None) is None else None
