"""Helpers the test modules share: paths, running the CLI, comparing run folders, starting and killing
`greater` processes, checking a `greater compare` folder, scoring a task's answers.

Import them as `from helpers import ...`. pytest puts tests/ on sys.path because tests/ has no
__init__.py (its default "prepend" import mode inserts the folder of conftest.py and of each test
module), so this works from a clean clone with `make test` or `pytest tests/test_x.py`. Fixtures live in
conftest.py; no test module imports another test module — what two modules need goes here.
"""

from __future__ import annotations

import json
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import greater.runs as runs_module
from greater.cli import main
from greater.compare.cells import cell_path
from greater.inference.generation import TransformersGenerator
from greater.methods import MethodConfig
from greater.tasks import Example, Task

# --- paths ------------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
TOOLS = REPO / ".tools"  # Makefile `test-deps` installs promptfoo here
SHARED_DATA = REPO.parent / "shared" / "data"  # benchmark data beside the checkout, when present
BBH_DIR = SHARED_DATA / "bbh"

# --- the tiny model -----------------------------------------------------------------------------------


def tiny_llama(vocab_size: int) -> LlamaForCausalLM:
    """A 2-layer Llama with random weights (seed 0) over a vocabulary of `vocab_size` tokens: the tests'
    tiny model (conftest.py's `tiny_model`) and the one tests/fixtures/ were written with."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config).eval()


# --- the command line, in process ----------------------------------------------------------------------

_PROGRESS = re.compile(r"^\s*(evaluating|optimizing)\b.*\|")


def run_cli(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    """main(argv) in-process: (exit code, stdout, stderr). Output from before the call is dropped."""
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def message_lines(err: str) -> list[str]:
    """stderr lines without progress bars and the "loading model" notice."""
    lines = [line.strip() for line in re.split(r"[\r\n]+", err) if line.strip()]
    return [line for line in lines if not line.startswith("loading model") and not _PROGRESS.match(line)]


def optimize_argv(model_dir: Path, out: Path, *extra: str) -> list[str]:
    """A short `greater optimize` run: 2 steps, 4 train / 3 test examples, reasoning capped at 6 tokens."""
    return [
        "optimize", "--model", str(model_dir), "--task", "gen/boolean_expressions", "--steps", "2",
        "--train", "4", "--test", "3", "--max-new-tokens", "6", "--out", str(out), *extra,
    ]  # fmt: skip


def run_argv(model_dir: Path, out: Path, steps: int = 6) -> list[str]:
    """A `greater optimize` run of `steps` steps to interrupt and resume: 4 train / 2 test examples,
    reasoning capped at 8 tokens, top-k 6."""
    return [
        "optimize", "--model", str(model_dir), "--task", "gen/boolean_expressions", "--steps", str(steps),
        "--train", "4", "--test", "2", "--max-new-tokens", "8", "--top-k", "6", "--out", str(out),
    ]  # fmt: skip


def make_interrupted_run(argv: list[str], monkeypatch: pytest.MonkeyPatch, after: int = 2) -> None:
    """Runs `greater argv` (an optimize command) in-process, interrupted (Ctrl-C) right after its
    `after`-th checkpoint is written; asserts it exits 130."""
    real = runs_module.write_checkpoint
    written = []

    def interrupt_after(run_dir, payload):
        real(run_dir, payload)
        written.append(payload)
        if len(written) == after:
            raise KeyboardInterrupt

    monkeypatch.setattr(runs_module, "write_checkpoint", interrupt_after)
    assert main(argv) == 130
    monkeypatch.setattr(runs_module, "write_checkpoint", real)


# --- run folders ------------------------------------------------------------------------------------------


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def steps_without_timing(path: Path) -> list[dict]:
    """steps.jsonl without what a machine measures: seconds per phase and peak memory."""
    lines = read_jsonl(path)
    for line in lines:
        line.pop("seconds")
        assert line.pop("peak_memory")["mib"] > 0
    return lines


def assert_same(a, b, where: str = "") -> None:
    """Equal JSON values, floats to the bit: a resumed run builds its kept prefix as the uninterrupted
    one did (heads prefilled, then one prompt token per extend), in every dtype."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


# --- greater in another process ----------------------------------------------------------------------------


def start_greater(args: list[str], driver: str | None = None) -> subprocess.Popen:
    """`python -m greater.cli args` (or `python -c driver args`) in a child process, stdout and stderr piped.

    A suite started in the background (`nohup ... &`) ignores SIGINT, and a child inherits that: the child
    gets the default handling a terminal's Ctrl-C meets."""
    head = [sys.executable, "-c", driver] if driver else [sys.executable, "-m", "greater.cli"]
    return subprocess.Popen(
        [*head, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def kill_when(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float = 120) -> bool:
    """SIGKILL the process as soon as `ready()` holds; False when it ended first. `timeout` only guards
    against a hang (the moment never comes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if ready():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.005)
    raise AssertionError("the moment to kill never came")


# --- greater compare ----------------------------------------------------------------------------------------

COMPARE_CONFIG = MethodConfig(steps=1, max_new_tokens=4, meta_max_new_tokens=8, batch_size=8)  # small and fast
COMPARE_SPLIT = (3, 4)  # train, test examples per cell


def check_compare_table(
    out: Path,
    tasks: list[str],
    methods: list[str],
    seeds: list[int],
    transfer: list[str],
    n_test: int = COMPARE_SPLIT[1],
) -> dict:
    """Every number in a `greater compare` folder's table.json and table.md follows from the predictions
    files; returns table.json."""
    table = read_json(out / "table.json")
    assert (table["tasks"], table["methods"], table["seeds"]) == (tasks, methods, seeds)
    markdown = (out / "table.md").read_text(encoding="utf-8")
    sections = markdown.split("Transfer: ")
    reference = "greater" if "greater" in methods else methods[0]
    rows = {  # (task, method, seed) -> the cell's test predictions
        (t, m, s): read_jsonl(out / read_json(cell_path(out, t, m, s))["test"]["predictions"])
        for t in tasks
        for m in methods
        for s in seeds
    }
    for task in tasks:
        golds = [p["gold"] for s in seeds for p in rows[task, reference, s]]
        top = max(golds.count(g) for g in golds)
        assert table["chance"][task]["majority"] == pytest.approx(top / len(golds))
        line = next(ln for ln in sections[0].splitlines() if ln.startswith(f"| {task} |"))
        assert line.split("|")[3].strip() == f"{100 * top / len(golds):.1f}"
        for other in (m for m in methods if m != reference):
            test = next(t for t in table["paired"]["tests"] if (t["task"], t["other"]) == (task, other))
            pairs = [
                (a["correct"], b["correct"])
                for s in seeds
                for a, b in zip(rows[task, reference, s], rows[task, other, s], strict=True)
            ]
            assert test["n_pairs"] == len(pairs) == n_test * len(seeds)
            assert (test["b"], test["c"]) == (pairs.count((True, False)), pairs.count((False, True)))
    for row in table["results"]:
        accuracies = {}
        for seed in seeds:
            cell = read_json(cell_path(out, row["task"], row["method"], seed))
            assert (cell["task"], cell["method"], cell["seed"]) == (row["task"], row["method"], seed)
            predictions = read_jsonl(out / cell["test"]["predictions"])
            assert len(predictions) == cell["test"]["n"] == n_test
            assert all(p["correct"] == (p["predicted"] == p["gold"]) for p in predictions)
            accuracies[seed] = sum(p["correct"] for p in predictions) / len(predictions)
            assert cell["test"]["accuracy"] == accuracies[seed]
            assert row["prompts"][str(seed)] == cell["result"]["prompt"]
            for model in transfer:
                moved = read_jsonl(out / cell["transfer"][model]["predictions"])
                assert cell["transfer"][model]["accuracy"] == sum(p["correct"] for p in moved) / len(moved)
        values = [accuracies[s] for s in seeds]
        assert row["accuracies"] == values
        assert row["mean"] == pytest.approx(sum(values) / len(values))
        line = next(ln for ln in sections[0].splitlines() if ln.startswith(f"| {row['task']} |"))
        cells = [c.strip() for c in line.split("|")[1:-1]]
        assert cells[1] == str(n_test)
        shown = cells[3 + methods.index(row["method"])]
        if len(seeds) > 1:
            assert row["sd"] == pytest.approx(statistics.stdev(values))
            assert shown == f"{100 * row['mean']:.1f} ± {100 * row['sd']:.1f}"
        else:  # one seed: no spread to show
            assert row["sd"] is None
            assert shown == f"{100 * row['mean']:.1f}"
    header = next(ln for ln in markdown.splitlines() if ln.startswith("| task |"))
    assert [c.strip() for c in header.split("|")[1:-1]] == ["task", "n test", "chance", *methods]
    assert ("±" in sections[0]) == (len(seeds) > 1)
    assert len(sections) == 1 + len(transfer)
    assert (out / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return table


def approx_floats(value):
    """`value` with every float as pytest.approx(rel=1e-6), for == against another JSON value."""
    if isinstance(value, float):
        return pytest.approx(value, rel=1e-6)
    if isinstance(value, dict):
        return {k: approx_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [approx_floats(v) for v in value]
    return value


def assert_same_cell(resumed: dict, plain: dict) -> None:
    """Two cells of `greater compare` (cells/*.json), one resumed: prompt, history, dev choice and test
    scores as uninterrupted; the usage at least as large."""
    mine, theirs = resumed["result"], plain["result"]
    for key in ("prompt", "joiner", "score", "dev_accuracy", "finalists"):
        assert mine[key] == theirs[key], key
    # the shortlist's scores in the history may differ in the last digits: a resumed step scores its
    # candidates in other batches than the uninterrupted run did (the prompts and choices do not)
    assert mine["history"] == approx_floats(theirs["history"]), "history"
    assert resumed["test"] == plain["test"]
    assert mine["usage"]["calls"] >= theirs["usage"]["calls"]
    assert mine["usage"]["generated_tokens"] >= theirs["usage"]["generated_tokens"]


def generator_calls(m: pytest.MonkeyPatch, method: str) -> list[list[tuple[int, ...]]]:
    """The contexts of every call of `TransformersGenerator.<method>` ("generate": one generation call;
    "_decode_batch": one batch the model runs) while `m` is in effect, in order."""
    calls: list[list[tuple[int, ...]]] = []
    real = getattr(TransformersGenerator, method)

    def recorded(self, contexts, max_new_tokens):
        calls.append(list(contexts))
        return real(self, contexts, max_new_tokens)

    m.setattr(TransformersGenerator, method, recorded)
    return calls


# --- tasks -------------------------------------------------------------------------------------------------


def wrong_answer(task: Task, gold: str) -> str:
    """A well-formed answer of the task's type that differs from `gold`."""
    flips = {
        "Yes": "No",
        "No": "Yes",
        "True": "False",
        "False": "True",
        "valid": "invalid",
        "invalid": "valid",
        "Uncertain": "True",
    }
    if gold in flips:
        return flips[gold]
    if task.answer_type == "choice":
        return "A" if gold != "A" else "B"
    if task.choices and gold in task.choices:  # a label task: another label
        return next(label for label in task.choices if label != gold)
    if task.answer_type == "number":
        return str(int(float(gold)) + 1)
    return gold + " x"


def assert_scores(task: Task, example: Example) -> None:
    """The gold answer written after the extractor scores correct; a wrong one does not."""
    gold = task.answer_text(example)
    assert task.is_correct(f" {gold}\nmore text", example), (task.name, example)
    assert not task.is_correct(f" {wrong_answer(task, gold)}\nmore text", example), (task.name, example)
