"""Custom tasks: the user's own data file (.jsonl, .csv, .json) or a task file (task.toml) describing one.

Settings (command-line flags, or keys of task.toml; flags win over the file):
  input_field, answer_field  the question and gold-answer fields (default "input"/"target",
                             else "question"/"answer", whichever the data has)
  answer_type                choice | number | text | yes_no | true_false | valid_invalid |
                             true_false_uncertain (default: inferred from the gold answers)
  choices                    allowed answers: option letters for choice ("A,B,C" or "ABC"), labels for text
  extractor                  the extraction sentence (default: built from the answer type)
  skip_bad_rows              drop bad rows (with a warning) instead of refusing the data
task.toml also holds `data` (the data file, relative to the task file), `name` and `description`.

A gold answer may end in "#### <answer>" (GSM8K style): the part after the last "####" is the answer.
Every bad row (unreadable, a missing or empty field, an answer that does not fit the answer type or
the choices) is reported with its file and line.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser as the `tomli` package (a dependency there)
    import tomli as tomllib

from greater.errors import GreaterError, setting_name
from greater.tasks.answers import (
    ANSWER_TYPES,
    CHOICE_LETTERS,
    extractor_for,
    final_answer,
    gold_problem,
    infer_answer_type,
    infer_labels,
    label_extractor,
    normalize_choice,
    normalizer_for,
    option_letters,
    unwrap,
)
from greater.tasks.base import Example, Task
from greater.tasks.rows import SUFFIXES, Record, read_records, read_text

log = logging.getLogger(__name__)

OPTIONS = ("input_field", "answer_field", "answer_type", "choices", "extractor", "skip_bad_rows")
_FILE_KEYS: dict[str, tuple[type, ...]] = {
    "data": (str,),
    "name": (str,),
    "description": (str,),
    "input_field": (str,),
    "answer_field": (str,),
    "answer_type": (str,),
    "choices": (str, list),
    "extractor": (str,),
    "skip_bad_rows": (bool,),
}
_DEFAULT_FIELDS = {"input_field": ("input", "question"), "answer_field": ("target", "answer")}
SHOWN_BAD_ROWS = 5


def is_custom_task(name: str) -> bool:
    """Whether a --task value names a data file or task file rather than a built-in task."""
    return Path(name).suffix.lower() in (*SUFFIXES, ".toml")


def load_custom_task(path: Path, options: Mapping[str, object] | None = None) -> Task:
    """The task defined by a data file or task.toml; `options` (see OPTIONS) override the task file's settings."""
    settings: dict[str, object] = read_task_file(path) if path.suffix.lower() == ".toml" else {"data": path}
    settings |= {key: value for key, value in (options or {}).items() if value is not None}
    data = Path(settings["data"])  # type: ignore[arg-type]
    if not data.is_file():
        raise GreaterError(f"task data file {data} not found")
    records = read_records(data)
    if not records:
        raise GreaterError(f"{data}: no examples (the file has no data rows)")
    fields = [_field(records, data, key, settings.get(key)) for key in ("input_field", "answer_field")]
    answer_type = settings.get("answer_type")
    if answer_type is None:
        answers = [_answer_text(r.data.get(fields[1])) for r in records if r.data is not None]
        answer_type = infer_answer_type([final_answer(a) for a in answers if isinstance(a, str)] or [""])
    answer_type = str(answer_type)
    if answer_type not in ANSWER_TYPES:
        raise GreaterError(f"unknown answer type {answer_type!r}; expected one of: {', '.join(ANSWER_TYPES)}")
    choices = parse_choices(settings.get("choices"), answer_type)
    if answer_type == "text" and choices is None and settings.get("answer_type") is None:
        choices = _inferred_labels(records, fields[1], data)
    examples = examples_from_records(
        records, str(data), fields[0], fields[1], answer_type, choices, bool(settings.get("skip_bad_rows"))
    )
    letters = choices or sorted({letter for ex in examples for letter in option_letters(ex.question)}) or None
    return Task(
        name=str(settings.get("name") or path),
        description=str(settings.get("description") or f"custom task: {len(examples)} examples from {data}"),
        extractor=str(settings.get("extractor") or extractor_for(answer_type, letters)),
        answer_type=answer_type,
        load=lambda: list(examples),
        normalize=normalizer_for(answer_type, choices),
        default_train=min(50, max(1, len(examples) // 2)),
        choices=choices,
    )


def read_task_file(path: Path) -> dict[str, object]:
    """The settings of a task.toml, checked; `data` resolved against the task file's folder."""
    try:
        settings = tomllib.loads(read_text(path))
    except tomllib.TOMLDecodeError as err:
        raise GreaterError(f"{path}: invalid TOML ({err})") from None
    for key, value in settings.items():
        if key not in _FILE_KEYS:
            raise GreaterError(f"{path}: unknown key {key!r}; known keys: {', '.join(_FILE_KEYS)}")
        if not isinstance(value, _FILE_KEYS[key]):
            kinds = " or ".join("a list" if kind is list else f"a {kind.__name__}" for kind in _FILE_KEYS[key])
            raise GreaterError(f"{path}: {key!r} must be {kinds}, got {value!r}")
    if "data" not in settings:
        raise GreaterError(f'{path}: no "data" key; set data = "file.jsonl" (a path relative to {path.name})')
    return settings | {"data": path.parent / str(settings["data"])}


def parse_choices(value: object, answer_type: str) -> tuple[str, ...] | None:
    """Choices from "A,B,C", "ABC" (letters of a choice task) or a list; option letters for choice tasks."""
    if value is None:
        return None
    if isinstance(value, str):
        compact = value.replace(" ", "")
        if "," not in value and answer_type == "choice" and compact.isalpha():
            items = list(compact)
        else:
            items = value.split(",")
    else:
        items = [str(item) for item in value]  # type: ignore[attr-defined]
    choices = tuple(dict.fromkeys(item.strip() for item in items if item.strip()))
    if not choices:
        raise GreaterError(
            f"{setting_name('choices')} is empty; give them comma-separated, e.g. {setting_name('choices')} A,B,C"
        )
    if answer_type == "choice":
        letters = tuple(normalize_choice(choice) for choice in choices)
        bad = [c for c, x in zip(choices, letters, strict=True) if len(x) != 1 or x not in CHOICE_LETTERS]
        if bad:
            raise GreaterError(f"choices of a choice task are option letters A-R, got {', '.join(bad)}")
        return letters
    return choices


def examples_from_records(
    records: Sequence[Record],
    source: str,
    input_field: str,
    answer_field: str,
    answer_type: str,
    choices: Sequence[str] | None = None,
    skip_bad_rows: bool = False,
    unit: str = "line",
) -> list[Example]:
    """The examples of the well-formed rows, gold answers canonical; bad rows refuse the data unless skipped.

    A choice question that lists options "(A) ..." must have its gold among them (without `choices`).
    """
    normalize = normalizer_for(answer_type, choices)
    examples, bad = [], []
    for record in records:
        example = _example(record, input_field, answer_field, answer_type, choices, normalize)
        if isinstance(example, Example):
            examples.append(Example(example.question, example.answer, f"{source}, {unit} {record.line}"))
        else:
            bad.append(f"{unit} {record.line}: {example}")
    if bad:
        shown = "; ".join(bad[:SHOWN_BAD_ROWS]) + (
            f"; and {len(bad) - SHOWN_BAD_ROWS} more" if len(bad) > SHOWN_BAD_ROWS else ""
        )
        if not skip_bad_rows or len(bad) == len(records):
            hint = "fix them" + ("" if skip_bad_rows else f" or pass {setting_name('skip_bad_rows')} to leave them out")
            raise GreaterError(f"{source}: {len(bad)} bad row(s) of {len(records)}: {shown}; {hint}")
        log.warning("%s: skipped %d bad row(s) of %d (%s)", source, len(bad), len(records), shown)
    if not examples:
        raise GreaterError(f"{source}: no examples (the file has no data rows)")
    return examples


def _example(
    record: Record,
    input_field: str,
    answer_field: str,
    answer_type: str,
    choices: Sequence[str] | None,
    normalize: Callable[[str], str],
) -> Example | str:
    """The example of one record, or what is wrong with it."""
    if record.data is None:
        return record.error
    values = []
    for field in (input_field, answer_field):
        if field not in record.data:
            return f"missing field {field!r}"
        value = _answer_text(record.data[field])
        if value is None or (isinstance(value, str) and not value.strip()):
            return f"field {field!r} is empty"
        if not isinstance(value, str):
            return f"field {field!r} is not text or a number ({type(value).__name__})"
        values.append(value)
    question, raw = values
    gold = normalize(final_answer(raw))
    allowed = choices or (option_letters(question) if answer_type == "choice" else None) or None
    problem = gold_problem(gold, answer_type, allowed)
    if problem is not None:
        shown = raw if len(raw) <= 60 else raw[:57] + "..."
        return f"answer {shown!r} {problem}"
    return Example(question, gold)


def _inferred_labels(records: Sequence[Record], answer_field: str, data: Path) -> tuple[str, ...] | None:
    """The labels of a text task whose gold answers are a few words given more than once, said on stderr."""
    golds = [_answer_text(r.data.get(answer_field)) for r in records if r.data is not None]
    labels = infer_labels([unwrap(final_answer(g)) for g in golds if isinstance(g, str)])
    if labels:
        log.warning(
            "%s: the gold answers are %d labels (%s): scoring the first label the model names after %r; "
            f"{setting_name('choices')} sets them, {setting_name('answer_type')} text matches the whole answer instead",
            data,
            len(labels),
            ", ".join(labels),
            label_extractor(labels),
        )
    return labels


def _answer_text(value: object) -> object:
    """A field value as text: numbers and booleans written out, anything else unchanged."""
    return str(value) if isinstance(value, bool | int | float) else value


def _field(records: Sequence[Record], data: Path, key: str, given: object) -> str:
    """The field name for `key`: the given one, else the first default the data has."""
    if given is not None:
        return str(given)
    present = {name for record in records if record.data is not None for name in record.data}
    for name in _DEFAULT_FIELDS[key]:
        if name in present:
            return name
    flag = setting_name(key)
    found = ", ".join(sorted(present)[:10]) or "none"
    names = " or ".join(repr(name) for name in _DEFAULT_FIELDS[key])
    raise GreaterError(f"{data}: no {names} field (fields found: {found}); pass {flag} NAME")
