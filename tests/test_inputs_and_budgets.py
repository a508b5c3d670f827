"""Inputs that cannot take a run down (damaged model files, rows longer than the context, task.toml on
Python 3.10), torch's thread count, and --max-time (stop after a step, checkpointed, resumable)."""

from __future__ import annotations

import functools
import json
import shutil
import sys
from pathlib import Path

import pytest
from transformers import LlamaModel

from greater.inference.model import embedded_gguf_path
from greater.runtime import format_duration, parse_duration, physical_cores
from helpers import assert_same, message_lines, run_cli, steps_without_timing


def _truncated_gguf(tmp: Path, size: int) -> Path:
    path = tmp / f"cut-{size}.gguf"
    with embedded_gguf_path().open("rb") as fh:
        path.write_bytes(fh.read(size))  # the header is valid; the body stops short
    return path


def _folder_without_config(tmp: Path, model_dir: Path) -> Path:
    folder = tmp / "no-config"
    shutil.copytree(model_dir, folder)
    (folder / "config.json").unlink()
    return folder


def _folder_with_cut_weights(tmp: Path, model_dir: Path) -> Path:
    folder = tmp / "cut-weights"
    shutil.copytree(model_dir, folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    return folder


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda tmp, model: _truncated_gguf(tmp, 3_000_000), "could not load model"),
        (lambda tmp, model: _truncated_gguf(tmp, 2_000), "could not load model"),
        (lambda tmp, model: (tmp / "empty.gguf").touch() or tmp / "empty.gguf", "is empty"),
        (_folder_without_config, "has no config.json"),
        (_folder_with_cut_weights, "could not load model"),
    ],
    ids=["gguf-cut-in-tensors", "gguf-cut-in-header", "empty-file", "folder-without-config", "cut-safetensors"],
)
@pytest.mark.slow
def test_damaged_model_files_are_one_clear_error(capsys, tmp_path, tiny_model_dir, monkeypatch, make, expected):
    monkeypatch.setenv("GREATER_CACHE_DIR", str(tmp_path / "cache"))
    model = make(tmp_path, tiny_model_dir)
    argv = ["evaluate", "--model", str(model), "--task", "gen/arithmetic", "--prompt", "Think.", "--limit", "1"]
    code, _, err = run_cli(capsys, argv)
    assert code == 2 and "Traceback" not in err
    lines = message_lines(err)
    assert len(lines) == 1 and lines[0].startswith("greater: error: ") and expected in lines[0], err


def _rows_with_a_huge_question(tmp: Path) -> Path:
    rows = [{"input": f"Is {i} even?", "target": "Yes" if i % 2 == 0 else "No"} for i in range(12)]
    rows.insert(4, {"input": "word " * 50_000 + "Is 7 even?", "target": "No"})
    path = tmp / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _model_forwards(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """One entry per forward of a Llama base model (what every generation, scoring and gradient pass of
    greater runs) while `monkeypatch` is in effect."""
    calls: list[int] = []
    real = LlamaModel.forward

    @functools.wraps(real)  # greater reads the forward's signature (the cache keyword)
    def counted(self, *args, **kwargs):
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(LlamaModel, "forward", counted)
    return calls


def test_a_row_too_long_for_the_context_is_refused_before_the_model_runs_with_its_line(
    capsys, caplog, monkeypatch, tmp_path, tiny_model_dir
):
    """Refused before any forward of the model (how long the refusal takes is measured by bench/wall_clock.py)."""
    data = _rows_with_a_huge_question(tmp_path)
    argv = ["optimize", "--model", str(tiny_model_dir), "--task", str(data), "--steps", "1", "--train", "4"]
    argv += ["--test", "3", "--max-new-tokens", "4", "--out", str(tmp_path / "run")]
    forwards = _model_forwards(monkeypatch)
    code, _, err = run_cli(capsys, argv)
    assert code == 2
    assert not forwards, f"the model ran {len(forwards)} forward(s) before the row was refused"
    (line,) = message_lines(err)
    assert f"{data}, line 5" in line and "do not fit the model's context of 2048 tokens" in line, line
    assert not (tmp_path / "run").exists()

    code, out, err = run_cli(capsys, [*argv, "--skip-bad-rows"])
    assert code == 0, err
    assert forwards, "the run's forwards were not counted: the check above could not have failed"
    assert any("left out 1 row(s)" in r.message and "line 5" in r.message for r in caplog.records), caplog.text
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["split"]["n_train"] + run["split"]["n_test"] == 7  # 4 + 3 drawn from the 12 that fit


def test_evaluate_refuses_a_row_that_cannot_fit(capsys, tmp_path, tiny_model_dir):
    data = _rows_with_a_huge_question(tmp_path)
    argv = ["evaluate", "--model", str(tiny_model_dir), "--task", str(data), "--prompt", "Think.", "--train", "1"]
    code, _, err = run_cli(capsys, [*argv, "--max-new-tokens", "4", "--split", "train", "--train", "12"])
    assert code == 2 and "line 5" in err and "Traceback" not in err


def test_task_toml_reads_without_tomllib(tmp_path, monkeypatch):
    """Python 3.10 has no tomllib: the tomli package (a dependency there) reads task.toml the same way."""
    pytest.importorskip("tomli")  # a dev dependency on every Python
    from greater.tasks.custom import read_task_file

    (tmp_path / "task.toml").write_text('data = "rows.jsonl"\nanswer_type = "yes_no"\nchoices = ["Yes", "No"]\n')
    expected = read_task_file(tmp_path / "task.toml")
    monkeypatch.setitem(sys.modules, "tomllib", None)  # `import tomllib` now fails as on 3.10
    assert read_task_file(tmp_path / "task.toml") == expected


def test_threads_are_set_and_recorded(capsys, tmp_path, tiny_model_dir, monkeypatch):
    import os

    import torch

    assert 1 <= physical_cores() <= (os.cpu_count() or 1)
    argv = ["optimize", "--model", str(tiny_model_dir), "--task", "gen/arithmetic", "--steps", "1", "--train", "2"]
    argv += ["--test", "1", "--max-new-tokens", "2", "--top-k", "4"]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert run_cli(capsys, [*argv, "--out", str(tmp_path / "a")])[0] == 0
    assert json.loads((tmp_path / "a" / "run.json").read_text())["threads"] == {"threads": 1, "from": "OMP_NUM_THREADS"}
    monkeypatch.delenv("OMP_NUM_THREADS")
    try:
        assert run_cli(capsys, [*argv, "--threads", "2", "--out", str(tmp_path / "b")])[0] == 0
        assert torch.get_num_threads() == 2
        assert json.loads((tmp_path / "b" / "run.json").read_text())["threads"] == {"threads": 2, "from": "--threads"}
    finally:
        torch.set_num_threads(1)


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("45m", 2700), ("2h", 7200), ("1h30m", 5400), ("12", 12)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "5x", "-3m", "0s", "m"])
def test_bad_durations_exit_2(capsys, text):
    code, _, err = run_cli(capsys, ["optimize", "--task", "gen/arithmetic", f"--max-time={text}"])
    assert code == 2 and "--max-time" in err and "Traceback" not in err


def test_format_duration():
    assert [format_duration(s) for s in (4.25, 42, 185, 7800)] == ["4.2s", "42s", "3m 05s", "2h 10m"]


@pytest.mark.slow
def test_max_time_stops_after_a_step_and_the_resumed_run_finishes_the_same(
    capsys, finished_run, tiny_model_dir, tmp_path
):
    run = tmp_path / "run"
    argv = ["optimize", "--model", str(tiny_model_dir), "--task", "gen/boolean_expressions", "--steps", "2"]
    argv += ["--train", "4", "--dev", "2", "--test", "3", "--max-new-tokens", "6", "--top-k", "6", "--out", str(run)]
    # the budget is checked after each step, and 1 ms is spent by the end of step 1 on any machine (0.5 s was
    # not: on a fast CPU the tiny model's first step ended before it, and the run stopped after step 2)
    code, out, err = run_cli(capsys, [*argv, "--max-time", "0.001s"])
    assert code == 3, err
    assert "projected time for the whole run: about" in out
    assert f"--max-time 0.001s spent after step 1 of 2; the run is saved in {run}" in err
    assert f"resume with: greater optimize --resume {run}" in err
    assert len(steps_without_timing(run / "steps.jsonl")) == 1 and not (run / "result.json").exists()

    code, out, err = run_cli(capsys, ["optimize", "--resume", str(run)])
    assert code == 0, err
    assert "projected time for the rest of the run" in out
    assert_same(steps_without_timing(run / "steps.jsonl"), steps_without_timing(finished_run / "steps.jsonl"))
    result, expected = (json.loads((d / "result.json").read_text()) for d in (run, finished_run))
    for key in ("prompt", "score", "dev_accuracy", "test_accuracy"):
        assert_same(result[key], expected[key], key)
