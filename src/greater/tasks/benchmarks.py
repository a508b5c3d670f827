"""GSM8K and FOLIO: benchmarks with their own train and test files.

Local files (in `<data_dir>/<name>/` or `<data_dir>/` itself):
  gsm8k/{train,test}.jsonl   {"question": ..., "answer": "... #### 42"}; the gold is the number after "####".
  folio/{train,test}.csv     columns goal, target, final_target with "(A)" True, "(B)" False, "(C)" Uncertain;
  or folio/{train,test}.jsonl the hub's rows: premises, conclusion, label (True / False / Uncertain).
Without a data folder the splits come from the hub: openai/gsm8k (main: train, test) and yale-nlp/FOLIO
(train, and validation as the test split), when `datasets` is installed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from greater.errors import GreaterError
from greater.tasks.answers import LABELS, extractor_for, normalize_choice, normalizer_for
from greater.tasks.base import Example, Task
from greater.tasks.custom import examples_from_records
from greater.tasks.rows import Record, read_records
from greater.tasks.sources import data_hint, data_root, find_file, hub_rows

SPLITS = ("train", "test")


@dataclass(frozen=True)
class Benchmark:
    """Where a benchmark's splits live and how a row becomes {"question": ..., "answer": ...}."""

    name: str
    description: str
    answer_type: str
    suffixes: tuple[str, ...]
    hub: tuple[str, str | None, dict[str, str]]  # dataset, config, our split -> the hub's split
    convert: Callable[[dict], dict | str] | None = None  # a row -> question/answer fields, or why it is unusable


_FOLIO_LETTERS = dict(zip("ABC", LABELS["true_false_uncertain"], strict=True))
_FOLIO_QUESTION = (
    "Premise:\n{premises}\n\nQuestion:\nGiven the premise above, is the following statement true, false, "
    "or uncertain?\n\nStatement: {conclusion}\n\nOptions:\n(A) True\n(B) False\n(C) Uncertain"
)


def _folio_row(row: dict) -> dict | str:
    """The CSV form (goal, final_target letter) or the hub form (premises, conclusion, label) as question/answer."""
    if "goal" in row:
        target = str(row.get("final_target") or row.get("target") or "")
        return {"question": row["goal"], "answer": _FOLIO_LETTERS.get(normalize_choice(target), target)}
    if "premises" in row and "conclusion" in row:
        premises = row["premises"]
        text = "\n".join(premises) if isinstance(premises, list) else str(premises)
        label = "Uncertain" if row.get("label") == "Unknown" else row.get("label")
        return {"question": _FOLIO_QUESTION.format(premises=text, conclusion=row["conclusion"]), "answer": label}
    return "has neither goal/final_target nor premises/conclusion/label fields"


BENCHMARKS: dict[str, Benchmark] = {
    "gsm8k": Benchmark(
        "gsm8k",
        "GSM8K grade-school math word problems (integer answer)",
        "number",
        (".jsonl",),
        ("openai/gsm8k", "main", {"train": "train", "test": "test"}),
    ),
    "folio": Benchmark(
        "folio",
        "FOLIO first-order logic: is the statement True, False or Uncertain given the premises",
        "true_false_uncertain",
        (".csv", ".jsonl"),
        ("yale-nlp/FOLIO", None, {"train": "train", "test": "validation"}),
        _folio_row,
    ),
}


def benchmark_available(name: str, data_dir: str | os.PathLike[str] | None) -> bool:
    """Whether a benchmark can be listed: its test file is in the data folder, or there is no usable folder (hub)."""
    root = data_root(data_dir)
    if root is None or not root.is_dir():
        return True
    return find_file(data_dir, name, "test", BENCHMARKS[name].suffixes) is not None


def load_benchmark(name: str, data_dir: str | os.PathLike[str] | None = None) -> Task:
    """Read both splits of a benchmark now; `load` gives the train split and `load_test` the test split."""
    bench = BENCHMARKS[name]
    (train, train_from), (test, test_from) = (_split(bench, data_dir, split) for split in SPLITS)
    return Task(
        name=name,
        description=f"{bench.description}: {len(train)} train from {train_from}, {len(test)} test from {test_from}",
        extractor=extractor_for(bench.answer_type),
        answer_type=bench.answer_type,
        load=lambda: list(train),
        load_test=lambda: list(test),
        normalize=normalizer_for(bench.answer_type),
        default_train=50,
    )


def _split(bench: Benchmark, data_dir: str | os.PathLike[str] | None, split: str) -> tuple[list[Example], str]:
    """The examples of one split and where they came from (a file, or the hub dataset)."""
    what = f"{bench.name}/{split}{bench.suffixes[0]}"
    root = data_root(data_dir)
    if root is None:
        dataset, config, hub_split = bench.hub[0], bench.hub[1], bench.hub[2][split]
        try:
            rows = hub_rows(dataset, config, hub_split, what)
        except GreaterError as exc:
            raise GreaterError(f"task {bench.name} needs its data: {exc}") from None
        records, source, unit = [Record(i, row) for i, row in enumerate(rows, 1)], f"{dataset} ({hub_split})", "row"
    else:
        file = find_file(data_dir, bench.name, split, bench.suffixes)
        if file is None:
            names = " or ".join(f"{split}{suffix}" for suffix in bench.suffixes)
            raise GreaterError(f"task {bench.name}: no {names} in {root / bench.name} or {root}; {data_hint(what)}")
        records, source, unit = read_records(file), str(file), "line"
    converted = []
    for record in records:
        if record.data is None or bench.convert is None:
            converted.append(record)
            continue
        row = bench.convert(record.data)
        converted.append(Record(record.line, row) if isinstance(row, dict) else Record(record.line, None, row))
    examples = examples_from_records(converted, source, "question", "answer", bench.answer_type, unit=unit)
    return examples, source
