"""BIG-Bench Hard tasks from their original JSON files (`<data_dir>/<task>.json`).

File format: {"canary": ..., "examples": [{"input": ..., "target": ...}, ...]}. Gold answers are
stored canonical ("(B)" -> "B", "yes" -> "Yes"). A few BBH choice items have a target that is not an
option letter (e.g. "Monsters, Inc" in movie_recommendation, where the options were split at a
comma); those are skipped and counted in the task description.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from greater.errors import GreaterError
from greater.tasks.answers import CHOICE_LETTERS, extractor_for, normalizer_for
from greater.tasks.base import Example, Task

DATA_DIR_ENV = "GREATER_DATA_DIR"
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

_OPTION = re.compile(rf"^\s*\(([{CHOICE_LETTERS}])\)", re.MULTILINE)
_WORD_ANSWERS = {
    "yes_no": {"Yes", "No"},
    "true_false": {"True", "False"},
    "valid_invalid": {"valid", "invalid"},
}
_NUMBER = re.compile(r"-?\d+(\.\d+)?")


def resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> Path | None:
    """The data folder: `data_dir`, else $GREATER_DATA_DIR, else None.

    A folder without JSON files but with a `bbh/` subfolder resolves to that subfolder.
    """
    raw = data_dir or os.environ.get(DATA_DIR_ENV) or None
    if raw is None:
        return None
    path = Path(raw).expanduser()
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
    """Read and validate `<data_dir>/<name>.json` now; the task's `load` returns the parsed examples."""
    path = resolve_data_dir(data_dir)
    where = f"pass --data-dir DIR or set {DATA_DIR_ENV} to a folder holding {name}.json (from {SOURCE_URL})"
    if path is None:
        raise GreaterError(f"task bbh/{name} needs the BIG-Bench Hard data: {where}")
    if not path.is_dir():
        raise GreaterError(f"data dir {path} does not exist or is not a folder: {where}")
    file = path / f"{name}.json"
    if not file.is_file():
        raise GreaterError(
            f"{file} not found: download {name}.json from {SOURCE_URL} into {path}, "
            "or run `greater tasks` to see the available tasks"
        )
    pairs = _read_pairs(file)
    answer_type = BBH_ANSWER_TYPES.get(name) or _infer_answer_type([target for _, target in pairs])
    examples = [ex for ex in (_example(q, t, answer_type) for q, t in pairs) if ex is not None]
    if not examples:
        raise GreaterError(f"{file}: no example has a usable {answer_type} target; check the file")
    skipped = len(pairs) - len(examples)
    letters = sorted({letter for ex in examples for letter in _OPTION.findall(ex.question)})
    description = f"BIG-Bench Hard {name}: {len(examples)} examples from {file}" + (
        f" ({skipped} with an unusable target skipped)" if skipped else ""
    )
    return Task(
        name=f"bbh/{name}",
        description=description,
        extractor=extractor_for(answer_type, letters or None),
        answer_type=answer_type,
        load=lambda: list(examples),
        normalize=normalizer_for(answer_type),
        default_train=50,
    )


def _read_pairs(file: Path) -> list[tuple[str, str]]:
    """(input, target) of every example in a BBH-format JSON file; GreaterError on anything malformed."""
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise GreaterError(
            f"{file}: invalid JSON at line {err.lineno}, column {err.colno} ({err.msg}); fix or re-download it"
        ) from None
    except UnicodeDecodeError:
        raise GreaterError(f"{file}: not UTF-8 text; re-download it") from None
    except OSError as err:
        raise GreaterError(f"{file}: cannot read it ({err.strerror})") from None
    shape = 'expected {"examples": [{"input": "...", "target": "..."}, ...]}'
    if not isinstance(data, dict) or not isinstance(data.get("examples"), list):
        raise GreaterError(f'{file}: no "examples" list; {shape}')
    if not data["examples"]:
        raise GreaterError(f'{file}: "examples" is empty; {shape}')
    pairs = []
    for index, item in enumerate(data["examples"]):
        fields = []
        for key in ("input", "target"):
            value = item.get(key) if isinstance(item, dict) else None
            if isinstance(value, int) and not isinstance(value, bool):
                value = str(value)
            if not isinstance(value, str) or not value.strip():
                raise GreaterError(f"{file}: example {index} (0-based) has no {key!r} text; {shape}")
            fields.append(value)
        pairs.append((fields[0], fields[1]))
    return pairs


def _example(question: str, target: str, answer_type: str) -> Example | None:
    """The example with its canonical gold answer, or None when the target does not fit the answer type."""
    gold = normalizer_for(answer_type)(target)
    if answer_type == "choice":
        options = _OPTION.findall(question)
        ok = len(gold) == 1 and gold in (options or CHOICE_LETTERS)
    elif answer_type in _WORD_ANSWERS:
        ok = gold in _WORD_ANSWERS[answer_type]
    elif answer_type == "number":
        ok = _NUMBER.fullmatch(gold) is not None
    else:
        ok = bool(gold)
    return Example(question, gold) if ok else None


def _infer_answer_type(targets: list[str]) -> str:
    """The most specific answer type whose canonical form every target already has (up to case, "(B)"), else text."""
    for answer_type in ("choice", "true_false", "yes_no", "valid_invalid", "number"):
        if all(_fits(target, answer_type) for target in targets):
            return answer_type
    return "text"


def _fits(target: str, answer_type: str) -> bool:
    example = _example("", target, answer_type)
    return example is not None and example.answer.lower() == target.strip().strip("()").lower()
