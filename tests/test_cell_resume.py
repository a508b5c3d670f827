"""`greater compare` resumes inside a cell: a cell killed after a step, a dev prompt or a scoring
continues from its partial file and ends as the uninterrupted cell does."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

import greater.compare.cells as compare_module
import greater.methods.common as common_module
from greater.compare.cells import ScoringModel, cell_path, partial_path, progress_note, run_compare
from greater.inference.engine import Engine
from greater.tasks import get_task
from helpers import COMPARE_CONFIG, COMPARE_SPLIT, assert_same_cell, generator_calls, read_json

TASK = get_task("gen/boolean_expressions")
STEPS = 3


class Saves:
    """Wraps `compare.save_partial`: every progress saved, in order; with `stop_after` n, the n-th
    save is written and then the process is "killed" (KeyboardInterrupt, as Ctrl-C or SIGTERM)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, stop_after: int | None = None) -> None:
        self.progress: list[dict] = []
        real = compare_module.save_partial

        def save(path: Path, key: str, progress: dict) -> None:
            real(path, key, progress)
            self.progress.append(json.loads(json.dumps(progress)))  # as saved, not the live objects
            if len(self.progress) == stop_after:
                raise KeyboardInterrupt

        monkeypatch.setattr(compare_module, "save_partial", save)


class Scorings:
    """Every prompt a baseline scored with the model: on the training examples (`Engine.reason_and_score`,
    by prompt ids) and on dev (`accuracy_on`, by text)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.train: list[tuple[int, ...]] = []
        self.dev: list[str] = []
        real_train, real_dev = Engine.reason_and_score, common_module.accuracy_on

        def on_train(engine, prompts, *args, **kwargs):
            self.train += prompts
            return real_train(engine, prompts, *args, **kwargs)

        def on_dev(engine, examples, prompt, **kwargs):
            self.dev.append(prompt)
            return real_dev(engine, examples, prompt, **kwargs)

        monkeypatch.setattr(Engine, "reason_and_score", on_train)
        monkeypatch.setattr(common_module, "accuracy_on", on_dev)


def cell(out: Path, method: str) -> dict:
    return read_json(cell_path(out, TASK.name, method, 0))


def without_seconds(value):
    """`value` without its "seconds" entries (wall time differs between two runs of the same work)."""
    if isinstance(value, dict):
        return {k: without_seconds(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [without_seconds(v) for v in value]
    return value


@pytest.mark.slow
@pytest.mark.parametrize("dev", [None, 2], ids=["killed-after-step-2", "killed-in-the-dev-pass"])
def test_a_killed_greater_cell_continues_where_it_stopped(
    tiny_model, smol_tokenizer, tmp_path: Path, monkeypatch, capsys, dev: int | None
) -> None:
    optimizer, config = (
        ScoringModel("tiny", tiny_model, smol_tokenizer),
        replace(COMPARE_CONFIG, steps=STEPS, keep_top=3),
    )
    with monkeypatch.context() as m:
        plain_saves = Saves(m)
        run_compare(optimizer, [TASK], ["greater"], [0], tmp_path / "plain", config, split=COMPARE_SPLIT, dev=dev)
    plain = cell(tmp_path / "plain", "greater")
    finalists = len(plain["result"]["finalists"])
    # after every step and every dev prompt, the finished search's result, and each test batch (one here)
    assert len(plain_saves.progress) == STEPS + finalists + 2
    assert plain_saves.progress[-2] == {"method": "greater", "result": plain["result"]}  # as the cell has it
    assert len(plain_saves.progress[-1].pop("test_reasoning")) == COMPARE_SPLIT[1]
    assert plain_saves.progress[-1].pop("test_batch_size") == COMPARE_CONFIG.batch_size
    assert plain_saves.progress[-1] == plain_saves.progress[-2]
    notes = [progress_note(p, STEPS) for p in plain_saves.progress[:-1]]  # what the progress bar shows
    assert notes == [f"step {i}/{STEPS}" for i in range(1, STEPS + 1)] + [
        f"step {STEPS}/{STEPS}, {i} on dev" for i in range(1, finalists + 1)
    ] + ["search done, scoring on test"]
    assert finalists >= (2 if dev else 0)
    stop = 2 if dev is None else STEPS + 1  # after step 2, or after the first dev prompt

    out = tmp_path / "cut"
    with monkeypatch.context() as m:
        Saves(m, stop_after=stop)
        with pytest.raises(KeyboardInterrupt):
            run_compare(optimizer, [TASK], ["greater"], [0], out, config, split=COMPARE_SPLIT, dev=dev)
    assert not cell_path(out, TASK.name, "greater", 0).exists()
    saved = read_json(partial_path(out, cell_path(out, TASK.name, "greater", 0).stem))
    search = saved["progress"]["search"]
    assert search["state"]["step"] == min(stop, STEPS)
    assert len(search["history"]) == min(stop, STEPS)
    assert len(search["state"]["dev_accuracy"]) == stop - min(stop, STEPS)
    assert saved["progress"]["usage"]["counts"]["sequences"] > 0
    capsys.readouterr()

    with monkeypatch.context() as m:
        again = Saves(m)
        run_compare(optimizer, [TASK], ["greater"], [0], out, config, split=COMPARE_SPLIT, dev=dev)
    assert "greater: continuing the cell saved in" in capsys.readouterr().err
    assert len(again.progress) == STEPS + finalists + 2 - stop  # nothing done twice
    assert again.progress[0]["search"]["history"][:stop] == search["history"]
    assert_same_cell(cell(out, "greater"), plain)
    # the usage of both sittings: the second one's counters start where the saved ones ended
    first = saved["progress"]["usage"]["counts"]["sequences"]
    assert again.progress[0]["usage"]["counts"]["sequences"] > first
    assert not partial_path(out, cell_path(out, TASK.name, "greater", 0).stem).exists()


@pytest.mark.slow
@pytest.mark.parametrize(("method", "stop"), [("ape", 1), ("apo", 2), ("ape", -3)])
def test_a_killed_baseline_cell_replays_its_search_without_scoring_again(
    tiny_model, smol_tokenizer, tmp_path: Path, monkeypatch, method: str, stop: int
) -> None:
    """stop: the save after which the cell is killed (-3: inside the dev pass, since the last two saves
    are the finished search's result and the test reasonings)."""
    optimizer, config = ScoringModel("tiny", tiny_model, smol_tokenizer), replace(COMPARE_CONFIG, steps=2, keep_top=3)
    with monkeypatch.context() as m:
        plain_saves, plain_scorings = Saves(m), Scorings(m)
        run_compare(optimizer, [TASK], [method], [0], tmp_path / "plain", config, split=COMPARE_SPLIT, dev=2)
    plain = cell(tmp_path / "plain", method)
    assert len(plain_scorings.train) >= 3 and len(plain_scorings.dev) >= 2  # a search, and a choice on dev
    notes = [progress_note(p, 2) for p in plain_saves.progress]
    assert notes[0] == f"{len(plain_saves.progress[0]['search']['scores'])} prompts scored"
    assert notes[-3].endswith(f", {len(plain_scorings.dev)} on dev") and notes[-2] == "search done, scoring on test"
    assert notes[-1] == f"search done, scoring on test: {COMPARE_SPLIT[1]} reasonings"  # one test batch
    stop = stop % len(plain_saves.progress)
    assert 1 <= stop < len(plain_saves.progress)

    out = tmp_path / "cut"
    with monkeypatch.context() as m:
        first = Scorings(m)
        Saves(m, stop_after=stop)
        with pytest.raises(KeyboardInterrupt):
            run_compare(optimizer, [TASK], [method], [0], out, config, split=COMPARE_SPLIT, dev=2)
    saved = read_json(partial_path(out, cell_path(out, TASK.name, method, 0).stem))["progress"]["search"]
    assert len(saved["scores"]) == len(first.train)  # every prompt scored so far
    with monkeypatch.context() as m:
        second = Scorings(m)
        run_compare(optimizer, [TASK], [method], [0], out, config, split=COMPARE_SPLIT, dev=2)
    # the second sitting scores exactly what the first had not: no saved prompt is scored again
    assert first.train + second.train == plain_scorings.train
    assert first.dev + second.dev == plain_scorings.dev
    assert_same_cell(cell(out, method), plain)
    assert not partial_path(out, cell_path(out, TASK.name, method, 0).stem).exists()


@pytest.mark.slow
def test_a_partial_file_of_other_settings_is_ignored(
    tiny_model, smol_tokenizer, tmp_path: Path, monkeypatch, capsys
) -> None:
    optimizer, config = ScoringModel("tiny", tiny_model, smol_tokenizer), replace(COMPARE_CONFIG, steps=STEPS)
    name = cell_path(tmp_path, TASK.name, "greater", 0).stem
    with monkeypatch.context() as m:
        Saves(m, stop_after=2)
        with pytest.raises(KeyboardInterrupt):
            run_compare(optimizer, [TASK], ["greater"], [0], tmp_path / "three", config, split=COMPARE_SPLIT)
    # the same cell with one more training example: its progress must not be taken for this one's
    other = tmp_path / "four"
    partial_path(other, name).parent.mkdir(parents=True)
    shutil.copy(partial_path(tmp_path / "three", name), partial_path(other, name))
    capsys.readouterr()
    with monkeypatch.context() as m:
        saves = Saves(m)
        run_compare(optimizer, [TASK], ["greater"], [0], other, config, split=(4, COMPARE_SPLIT[1]))
    notes = [line for line in capsys.readouterr().err.splitlines() if "partial" in line]
    assert notes == [
        f"greater: ignoring {partial_path(other, name)}: saved with other settings (or unreadable); "
        "the cell starts over"
    ]
    assert [len(p["search"]["history"]) for p in saves.progress[:-2]] == [1, 2, 3]  # from step 1, overwriting it
    assert saves.progress[-2]["result"]["history"] == cell(other, "greater")["result"]["history"]
    assert len(cell(other, "greater")["result"]["history"]) == STEPS
    assert not partial_path(other, name).exists()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["greater", "apo"])
def test_a_cell_killed_while_scoring_on_test_does_not_search_again(
    tiny_model, smol_tokenizer, tmp_path: Path, monkeypatch, method: str
) -> None:
    optimizer, config = ScoringModel("tiny", tiny_model, smol_tokenizer), replace(COMPARE_CONFIG, steps=2, keep_top=2)
    run_compare(optimizer, [TASK], [method], [0], tmp_path / "plain", config, split=COMPARE_SPLIT, dev=2)
    plain = cell(tmp_path / "plain", method)

    out = tmp_path / "cut"
    with monkeypatch.context() as m:
        real = compare_module.evaluate

        def killed(*args, **kwargs):
            raise KeyboardInterrupt  # the search has finished and been saved; test scoring dies

        m.setattr(compare_module, "evaluate", killed)
        with pytest.raises(KeyboardInterrupt):
            run_compare(optimizer, [TASK], [method], [0], out, config, split=COMPARE_SPLIT, dev=2)
    saved = read_json(partial_path(out, cell_path(out, TASK.name, method, 0).stem))["progress"]
    assert without_seconds(saved) == {"method": method, "result": without_seconds(plain["result"])}
    with monkeypatch.context() as m:
        m.setattr(compare_module, "run_method", lambda *a, **k: pytest.fail("searched again"))
        m.setattr(compare_module, "evaluate", real)
        run_compare(optimizer, [TASK], [method], [0], out, config, split=COMPARE_SPLIT, dev=2)
    resumed = cell(out, method)
    assert resumed["result"] == saved["result"]  # the saved search, as it was
    assert without_seconds(resumed) == without_seconds(plain)
    assert not partial_path(out, cell_path(out, TASK.name, method, 0).stem).exists()


@pytest.mark.slow
def test_a_cell_killed_between_test_batches_goes_on_from_its_last_batch(
    tiny_model, smol_tokenizer, tmp_path: Path, monkeypatch
) -> None:
    optimizer, config = ScoringModel("tiny", tiny_model, smol_tokenizer), replace(COMPARE_CONFIG, steps=2, batch_size=2)
    run_compare(optimizer, [TASK], ["greater"], [0], tmp_path / "plain", config, split=COMPARE_SPLIT)  # 4 test examples
    plain = cell(tmp_path / "plain", "greater")

    out = tmp_path / "cut"
    real_save = compare_module.save_partial

    def killed_after_a_test_batch(path: Path, key: str, progress: dict) -> None:
        real_save(path, key, progress)
        if "test_reasoning" in progress:
            raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(compare_module, "save_partial", killed_after_a_test_batch)
        with pytest.raises(KeyboardInterrupt):
            run_compare(optimizer, [TASK], ["greater"], [0], out, config, split=COMPARE_SPLIT)
    saved = read_json(partial_path(out, cell_path(out, TASK.name, "greater", 0).stem))["progress"]
    assert len(saved["test_reasoning"]) == 2 and saved["test_batch_size"] == 2
    shutil.copytree(out, tmp_path / "cut-copy")
    assert progress_note(saved, 2) == "search done, scoring on test: 2 reasonings"

    with monkeypatch.context() as m:
        m.setattr(compare_module, "run_method", lambda *a, **k: pytest.fail("searched again"))
        generated = generator_calls(m, "generate")
        run_compare(optimizer, [TASK], ["greater"], [0], out, config, split=COMPARE_SPLIT)
    assert list(map(len, generated)) == [2, 4]  # the other test batch's reasonings, then every answer
    assert without_seconds(cell(out, "greater")) == without_seconds(plain)
    assert not partial_path(out, cell_path(out, TASK.name, "greater", 0).stem).exists()

    # the rest is cut at the saved batch size, which an "auto" size may not give again in a later sitting
    other = tmp_path / "other-sitting"
    shutil.copytree(tmp_path / "cut-copy", other)
    partial = partial_path(other, cell_path(other, TASK.name, "greater", 0).stem)
    data = read_json(partial)
    data["progress"]["test_batch_size"] = 1
    partial.write_text(json.dumps(data), encoding="utf-8")
    with monkeypatch.context() as m:
        batches = generator_calls(m, "_decode_batch")
        run_compare(optimizer, [TASK], ["greater"], [0], other, config, split=COMPARE_SPLIT)
    assert list(map(len, batches)) == [1, 1, 1, 1, 1, 1]  # two reasonings, four answers, one row at a time


def test_the_progress_bar_says_how_far_the_running_cell_is(
    tiny_model, smol_tokenizer, tmp_path: Path, monkeypatch
) -> None:
    shown: list[str] = []

    class Bar:  # stands in for tqdm: records what the bar would show
        def __init__(self, *args, **kwargs) -> None: ...

        def set_postfix_str(self, text: str) -> None:
            shown.append(text)

        def update(self, n: int) -> None: ...

        def close(self) -> None: ...

    monkeypatch.setattr(compare_module, "tqdm", Bar)
    optimizer, config = ScoringModel("tiny", tiny_model, smol_tokenizer), replace(COMPARE_CONFIG, steps=2)
    run_compare(optimizer, [TASK], ["greater"], [0], tmp_path, config, split=COMPARE_SPLIT, progress=True)
    cell_label = f"{TASK.name} greater seed 0"
    notes = (
        "step 1/2",
        "step 2/2",
        "search done, scoring on test",
        f"search done, scoring on test: {COMPARE_SPLIT[1]} reasonings",
    )
    assert shown == [cell_label] + [f"{cell_label}: {text}" for text in notes]


def test_a_partial_file_left_beside_a_finished_cell_is_deleted_by_the_next_run(
    tiny_model, smol_tokenizer, tmp_path: Path, monkeypatch
) -> None:
    """A kill between writing a cell and deleting its partial file leaves a partial file of a finished cell."""
    optimizer, config = ScoringModel("tiny", tiny_model, smol_tokenizer), replace(COMPARE_CONFIG, steps=1)
    run_compare(optimizer, [TASK], ["zs-cot"], [0], tmp_path, config, split=COMPARE_SPLIT)
    stale = partial_path(tmp_path, cell_path(tmp_path, TASK.name, "zs-cot", 0).stem)
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_text('{"key": "x", "progress": {}}', encoding="utf-8")
    before = cell(tmp_path, "zs-cot")
    with monkeypatch.context() as m:
        m.setattr(compare_module, "run_method", lambda *a, **k: pytest.fail("ran a finished cell again"))
        run_compare(optimizer, [TASK], ["zs-cot"], [0], tmp_path, config, split=COMPARE_SPLIT)
    assert not stale.exists()
    assert cell(tmp_path, "zs-cot") == before
