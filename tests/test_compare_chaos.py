"""`greater compare` killed at any moment goes on: a real `greater compare` process, SIGKILLed inside a
GReaTer cell's search, its dev pass and its test scoring, inside a baseline cell's search, dev pass and
test scoring, and while the table is written, each time followed by the same command, ends with the same
table.json (what a machine measures aside), predictions and cells as an uninterrupted run."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from greater.cli import main
from helpers import assert_same_cell, kill_when, start_greater

TASK = "gen/boolean_expressions"
METHODS = ("greater", "zs-cot", "ape")
STEPS, KEEP_TOP = 2, 3
# what a sitting measures rather than computes: wall time, and the work it spent (a killed sitting's work
# up to its last save counts, and a baseline replays its meta-prompt replies: the resumed usage is larger)
MEASURED = ("seconds", "calls", "generated_tokens")


def _args(model_dir: Path, out: Path) -> list[str]:
    """A small comparison whose every phase runs long enough (about 0.1 s) to be killed inside: 3 test
    batches of 2, keep-top 3 finalists on 3 dev examples, a budget of 6 prompts for APE."""
    return [
        "compare", "--model", str(model_dir), "--task", TASK, "--methods", ",".join(METHODS),
        "--steps", str(STEPS), "--train", "3", "--dev", "3", "--keep-top", str(KEEP_TOP), "--test", "6",
        "--max-new-tokens", "16", "--meta-max-new-tokens", "16", "--batch-size", "2", "--out", str(out),
    ]  # fmt: skip


def _cell(method: str) -> str:
    return f"gen_boolean_expressions__{method}__s0"


def _progress(out: Path, method: str) -> dict | None:
    """The saved progress of the method's cell, None while it has none (not started, or finished)."""
    try:
        return json.loads((out / "partial" / f"{_cell(method)}.json").read_text(encoding="utf-8"))["progress"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return None


def _phase(out: Path) -> str:
    """Where a comparison stopped (read once its process is dead), from its folder: the cell whose
    progress is saved and how far that progress goes, or the table once every cell is written."""
    finished = {p.stem for p in (out / "cells").glob("*.json")}
    running = [p.stem for p in (out / "partial").glob("*.json") if p.stem not in finished]
    if not running:
        if len(finished) == len(METHODS):
            return "table"
        return "loading" if not (out / "compare.json").exists() else f"start of cell {len(finished) + 1}"
    (name,) = running  # one cell at a time, in this process
    method = name.split("__")[1]
    progress = _progress(out, method)
    assert progress is not None, f"partial/{name}.json is unreadable"
    if "result" in progress:
        return f"{method} test scoring"
    search = progress["search"]
    if method == "greater":
        in_dev = search["state"]["dev_accuracy"] or len(search["history"]) == STEPS
        return "greater dev pass" if in_dev else "greater search"
    return f"{method} dev pass" if search["dev"] else f"{method} search"


def _without_measures(value):
    if isinstance(value, dict):
        return {k: _without_measures(v) for k, v in value.items() if k not in MEASURED}
    if isinstance(value, list):
        return [_without_measures(v) for v in value]
    return value


@pytest.mark.slow
def test_compare_killed_at_any_moment_gives_the_same_table(tiny_model_dir, tmp_path, capsys):
    straight, out = tmp_path / "straight", tmp_path / "killed"
    assert main(_args(tiny_model_dir, straight)) == 0
    capsys.readouterr()
    # what the moments below count on: 3 finalists on dev, APE's 6 prompts scored
    searched = {m: json.loads((straight / "cells" / f"{_cell(m)}.json").read_text())["result"] for m in METHODS}
    assert len(searched["greater"]["finalists"]) == len(searched["ape"]["finalists"]) == KEEP_TOP
    assert len(searched["ape"]["history"]) == 6
    rng = random.Random(30)
    # the moments, in the order the comparison reaches them: each a condition on the folder that the
    # sitting killed last cannot have left behind (so it holds only once this sitting made progress);
    # where a phase saves several times, which save to kill after is drawn
    test_batches = (0, 2, 4, 6)  # reasonings saved: kill as test scoring starts, in batch 2 or 3, or in the answers
    g_dev, g_test = rng.randint(1, KEEP_TOP - 1), rng.choice(test_batches)
    a_scored, a_dev, a_test = rng.randint(1, 5), rng.randint(1, KEEP_TOP - 1), rng.choice(test_batches)

    def dev_scored(progress: dict) -> int:  # GReaTer keeps its dev accuracies in its RunState
        search = progress.get("search", {})
        return len(search["state"]["dev_accuracy"] if "state" in search else search.get("dev", {}))

    def test_reasonings(progress: dict) -> int:  # -1: the search is not done
        return len(progress.get("test_reasoning", {})) if "result" in progress else -1

    moments = [
        ("greater search", "greater", lambda p: len(p.get("search", {}).get("history", [])) == 1),
        ("greater dev pass", "greater", lambda p: dev_scored(p) >= g_dev),
        ("greater test scoring", "greater", lambda p: test_reasonings(p) >= g_test),
        ("ape search", "ape", lambda p: len(p.get("search", {}).get("scores", [])) >= a_scored),
        ("ape dev pass", "ape", lambda p: dev_scored(p) >= a_dev),
        ("ape test scoring", "ape", lambda p: test_reasonings(p) >= a_test),
        ("table", None, None),  # every cell written (and its progress file gone)
    ]

    def ready(method: str | None, check) -> bool:
        if method is None:
            return len(list((out / "cells").glob("*.json"))) == len(METHODS) and _progress(out, "ape") is None
        progress = _progress(out, method)
        return progress is not None and check(progress)

    landed = []
    for aim, method, check in moments:
        proc = start_greater(_args(tiny_model_dir, out))
        moment_came = kill_when(proc, lambda m=method, c=check: ready(m, c))
        assert moment_came, f"the comparison ended before the moment to kill it ({aim}) came"
        landed.append(_phase(out))
    # every phase was hit: where each kill landed, read from the folder the dead process left
    assert landed == [aim for aim, _, _ in moments], landed

    proc = start_greater(_args(tiny_model_dir, out))
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert not list((out / "partial").glob("*.json")), "a finished cell's progress file is left"

    table, expected = (json.loads((d / "table.json").read_text(encoding="utf-8")) for d in (out, straight))
    assert _without_measures(table) == _without_measures(expected)
    for method in METHODS:
        cell, plain = (json.loads((d / "cells" / f"{_cell(method)}.json").read_text()) for d in (out, straight))
        assert_same_cell(cell, plain)
        rows, plain_rows = ((d / "predictions" / f"{_cell(method)}.jsonl").read_text() for d in (out, straight))
        assert rows == plain_rows, method
