"""Task lookup by name: "gen/<x>" (built-in, generated) and "bbh/<x>" (BIG-Bench Hard JSON files)."""

from __future__ import annotations

import difflib

from greater.errors import GreaterError
from greater.tasks.base import Task
from greater.tasks.bbh import BBH_ANSWER_TYPES, bbh_task_names, load_bbh_task
from greater.tasks.generated import GENERATED_TASKS


def task_names(data_dir: str | None = None) -> list[str]:
    """All gen/ tasks, then bbh/<x> for each JSON file in the data folder (all known BBH names without one).

    `data_dir` defaults to $GREATER_DATA_DIR.
    """
    return sorted(GENERATED_TASKS) + [f"bbh/{name}" for name in bbh_task_names(data_dir)]


def get_task(name: str, data_dir: str | None = None) -> Task:
    """The task called `name`; BBH tasks read `<data_dir>/<x>.json` (default dir: $GREATER_DATA_DIR)."""
    if name in GENERATED_TASKS:
        return GENERATED_TASKS[name]
    prefix, _, short = name.partition("/")
    if prefix == "bbh" and (short in BBH_ANSWER_TYPES or short in bbh_task_names(data_dir)):
        return load_bbh_task(short, data_dir)
    raise GreaterError(_unknown(name, data_dir))


def _unknown(name: str, data_dir: str | None) -> str:
    """The error text for an unknown task name, with close matches when there are some."""
    known = task_names(data_dir)
    candidates = {candidate.partition("/")[2]: candidate for candidate in known} | {c: c for c in known}
    close = [candidates[c] for c in difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.6)]
    hint = f"did you mean {' or '.join(dict.fromkeys(close))}? " if close else ""
    return (
        f"unknown task {name!r}: {hint}run `greater tasks` to list them (names look like {known[0]!r} or 'bbh/<task>')"
    )
