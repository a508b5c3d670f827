"""Task lookup by name: "gen/<x>" (generated), "bbh/<x>" (BIG-Bench Hard), "gsm8k", "folio", and custom task files."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path

from greater.errors import GreaterError, setting_name
from greater.tasks.base import Task
from greater.tasks.bbh import BBH_ANSWER_TYPES, bbh_task_names, load_bbh_task, resolve_data_dir
from greater.tasks.benchmarks import BENCHMARKS, benchmark_available, load_benchmark
from greater.tasks.custom import OPTIONS, is_custom_task, load_custom_task
from greater.tasks.generated import GENERATED_TASKS as ARITHMETIC_AND_LOGIC
from greater.tasks.labels import LABEL_TASKS
from greater.tasks.sources import find_file

GENERATED_TASKS = ARITHMETIC_AND_LOGIC | LABEL_TASKS  # every gen/ task


def task_names(data_dir: str | None = None) -> list[str]:
    """All gen/ tasks, then bbh/<x> for each JSON file in the data folder (all known BBH names without one),
    then gsm8k and folio when the data folder has them (always without one: they can come from the hub).

    `data_dir` defaults to $GREATER_DATA_DIR.
    """
    benchmarks = [name for name in sorted(BENCHMARKS) if benchmark_available(name, data_dir)]
    return sorted(GENERATED_TASKS) + [f"bbh/{name}" for name in bbh_task_names(data_dir)] + benchmarks


def get_task(name: str, data_dir: str | None = None) -> Task:
    """The built-in task called `name`; BBH tasks read `<data_dir>/<x>.json` (default dir: $GREATER_DATA_DIR)."""
    if name in GENERATED_TASKS:
        return GENERATED_TASKS[name]
    if name in BENCHMARKS:
        return load_benchmark(name, data_dir)
    prefix, _, short = name.partition("/")
    if prefix == "bbh" and (short in BBH_ANSWER_TYPES or short in bbh_task_names(data_dir)):
        return load_bbh_task(short, data_dir)
    raise GreaterError(_unknown(name, data_dir))


def resolve_task(name: str, data_dir: str | None = None, options: Mapping[str, object] | None = None) -> Task:
    """What `--task NAME` means: a custom task (a .jsonl/.csv/.json data file or a task.toml) or a built-in one.

    `options` are the custom-task settings (custom.OPTIONS, None for unset); built-in tasks take none.
    """
    given = {key: value for key, value in (options or {}).items() if value is not None and value is not False}
    unknown = set(given) - set(OPTIONS)
    if unknown:
        raise GreaterError(f"unknown task option(s): {', '.join(sorted(unknown))}")
    if is_custom_task(name):
        return load_custom_task(Path(name), given)
    if given:
        flags = ", ".join(setting_name(key) for key in given)
        raise GreaterError(f"{flags}: only for custom tasks (a .jsonl, .csv, .json or .toml file), not for {name!r}")
    return get_task(name, data_dir)


def describe(name: str, data_dir: str | None = None) -> str:
    """A one-line description of a listed task, without reading its data."""
    if name in GENERATED_TASKS:
        return GENERATED_TASKS[name].description
    if name in BENCHMARKS:
        bench = BENCHMARKS[name]
        file = find_file(data_dir, name, "test", bench.suffixes)
        where = f"from {file.parent}" if file else "needs --data-dir, $GREATER_DATA_DIR or `datasets` (hub)"
        return f"{bench.description}; {where}"
    folder = resolve_data_dir(data_dir)
    if folder is not None and (folder / f"{name.partition('/')[2]}.json").is_file():
        return f"BIG-Bench Hard, from {folder}"
    return "BIG-Bench Hard (needs --data-dir or $GREATER_DATA_DIR)"


def _unknown(name: str, data_dir: str | None) -> str:
    """The error text for an unknown task name, with close matches when there are some."""
    known = task_names(data_dir)
    candidates = {candidate.partition("/")[2]: candidate for candidate in known} | {c: c for c in known}
    close = [candidates[c] for c in difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.6)]
    hint = f"did you mean {' or '.join(dict.fromkeys(close))}? " if close else ""
    return (
        f"unknown task {name!r}: {hint}run `greater tasks` to list them (names look like {known[0]!r} or 'bbh/<task>')"
    )
