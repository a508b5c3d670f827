"""The run lifecycle as a library call (`greater.Run`): the files `greater optimize` writes, exact resume
after the time budget, baselines, and the checks a resume makes — all without the command line."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import greater.cli as cli
import greater.cli_flags as cli_flags
from greater import GreaterConfig, MethodConfig, Run, RunOptions, RunSpec
from greater.errors import GreaterError, ResumeConflict
from greater.settings import RUN_KEYS
from helpers import assert_same, read_json, read_jsonl, run_cli, steps_without_timing

TASK = "gen/boolean_expressions"


def _spec(model_dir: Path, out: Path, **config) -> RunSpec:
    settings = {"steps": 3, "max_new_tokens": 6, "top_k": 6, "keep_top": 2} | config
    return RunSpec(TASK, str(model_dir), config=GreaterConfig(**settings), train=4, dev=3, test=3, out=out)


def _argv(model_dir: Path, out: Path) -> list[str]:
    return [
        "optimize", "--model", str(model_dir), "--task", TASK, "--steps", "3", "--max-new-tokens", "6",
        "--top-k", "6", "--keep-top", "2", "--train", "4", "--dev", "3", "--test", "3", "--out", str(out),
    ]  # fmt: skip


def _same_run(a: Path, b: Path) -> None:
    """Two run folders with the same files and contents (timings aside; a folder's own path aside)."""
    files = {p.name for p in a.iterdir() if p.name != ".lock"}
    assert files == {p.name for p in b.iterdir() if p.name != ".lock"}
    assert {"run.json", "steps.jsonl", "checkpoint.json", "result.json", "prompt.json", "prompt.txt"} <= files
    assert_same(steps_without_timing(a / "steps.jsonl"), steps_without_timing(b / "steps.jsonl"))
    for name in ("run.json", "result.json", "prompt.json", "initial_eval.json"):
        assert_same(read_json(a / name), read_json(b / name), name)


@pytest.mark.slow
def test_a_library_run_writes_what_the_command_writes(tiny_model_dir, tmp_path, capsys):
    assert run_cli(capsys, _argv(tiny_model_dir, tmp_path / "cli"))[0] == 0
    with Run.start(_spec(tiny_model_dir, tmp_path / "lib")) as run:
        assert run.path == tmp_path / "lib"
        assert (run.path / "run.json").is_file() and not (run.path / "result.json").exists()  # made, not yet run
        outcome = run.execute()
    _same_run(tmp_path / "cli", tmp_path / "lib")
    result = read_json(tmp_path / "lib" / "result.json")
    assert outcome.finished and outcome.path == tmp_path / "lib"
    assert (outcome.prompt, outcome.test_accuracy, outcome.dev_accuracy) == (
        result["prompt"],
        result["test_accuracy"],
        result["dev_accuracy"],
    )
    assert result["steps"] == 3 and len(result["finalists"]) == 2
    # run.json keeps what defines the run where the resume check (greater.settings.RUN_KEYS) reads it
    given = {"task": TASK, "model": str(tiny_model_dir), "train": 4, "dev": 3, "test": 3}
    info = read_json(tmp_path / "lib" / "run.json")
    for name, value in given.items():
        stored = info
        for key in RUN_KEYS[name]:
            stored = stored[key]
        assert stored == value, name


@pytest.mark.slow
def test_a_run_stopped_by_its_time_budget_resumes_exactly(tiny_model_dir, tmp_path):
    with Run.start(_spec(tiny_model_dir, tmp_path / "straight")) as run:
        run.execute()
    with Run.start(_spec(tiny_model_dir, tmp_path / "stopped"), RunOptions(max_time=1e-6)) as run:
        stopped = run.execute()
    assert not stopped.finished and stopped.out_of_time == 1 and stopped.prompt is None
    assert len(read_jsonl(tmp_path / "stopped" / "steps.jsonl")) == 1
    assert not (tmp_path / "stopped" / "result.json").exists()

    with pytest.raises(ResumeConflict, match="^top_k 9 differs from the run's stored value 6; drop top_k to resume"):
        Run.resume(tmp_path / "stopped", given={"top_k": 9})
    with pytest.raises(ResumeConflict, match="^train 5 differs"):
        Run.resume(tmp_path / "stopped", given={"train": 5, "top_k": None})  # None: not asked for
    with Run.resume(tmp_path / "stopped", given={"top_k": 6}) as run:
        assert run.state is not None and run.state.step == 1
        resumed = run.execute()
    assert resumed.finished
    _same_run(tmp_path / "straight", tmp_path / "stopped")
    with pytest.raises(GreaterError, match="finished run"):
        Run.resume(tmp_path / "stopped")


def test_a_baseline_runs_through_the_same_entry(tiny_model_dir, tmp_path):
    config = MethodConfig(steps=1, max_new_tokens=6)
    spec = RunSpec(TASK, str(tiny_model_dir), method="zs-cot", config=config, train=4, test=3, out=tmp_path / "zs")
    with Run.start(spec) as run:
        outcome = run.execute()
    result = read_json(tmp_path / "zs" / "result.json")
    assert result["method"] == "zs-cot" and result["prompt"] == outcome.prompt == "Let's think step by step."
    assert result["test_accuracy"] == outcome.test_accuracy and set(outcome.test_accuracy) == {"optimized"}
    assert read_json(tmp_path / "zs" / "run.json")["split"] == {
        "seed": 0,
        "train": 4,
        "test": 3,
        "n_train": 4,
        "n_dev": 0,
        "n_test": 3,
        "fingerprint": result["split"]["fingerprint"],
    }
    assert len(read_jsonl(tmp_path / "zs" / "history.jsonl")) == 1
    assert read_json(tmp_path / "zs" / "prompt.json")["method"] == "zs-cot"
    with pytest.raises(GreaterError, match="finished run"):
        Run.resume(tmp_path / "zs")


@pytest.mark.slow
def test_a_baseline_stopped_by_its_time_budget_resumes_to_the_same_result(tiny_model_dir, tmp_path, capsys):
    """A baseline's run goes through the checkpointed search a comparison's cell uses
    (`run_method(resume=, checkpoint=)`): stopped after its first scored batch, it resumes to the
    uninterrupted run's prompt, history and test accuracy."""
    config = MethodConfig(steps=1, max_new_tokens=6, meta_max_new_tokens=8, batch_size=4)

    def spec(out: Path) -> RunSpec:
        return RunSpec(TASK, str(tiny_model_dir), method="ape", config=config, train=4, test=3, out=out)

    with Run.start(spec(tmp_path / "straight")) as run:
        run.execute()
    with Run.start(spec(tmp_path / "stopped"), RunOptions(max_time=1e-6)) as run:
        stopped = run.execute()
    assert not stopped.finished and stopped.out_of_time == 1  # a batch of 4 rows holds one prompt
    assert read_json(tmp_path / "stopped" / "checkpoint.json")["progress"]["method"] == "ape"
    assert not (tmp_path / "stopped" / "result.json").exists()
    with pytest.raises(ResumeConflict, match="^evaluations 9 differs"):
        Run.resume(tmp_path / "stopped", given={"evaluations": 9})
    with pytest.raises(ResumeConflict, match="^method 'apo' differs from the run's stored value 'ape'"):
        Run.resume(tmp_path / "stopped", given={"method": "apo"})
    capsys.readouterr()
    with Run.resume(tmp_path / "stopped") as run:
        assert run.progress is not None
        run.execute()
    assert "with 1 candidate prompts scored" in capsys.readouterr().err
    straight, resumed = (
        read_json(tmp_path / "straight" / "result.json"),
        read_json(tmp_path / "stopped" / "result.json"),
    )
    for key in ("prompt", "joiner", "score", "test_accuracy"):
        assert resumed[key] == straight[key], key
    assert read_jsonl(tmp_path / "stopped" / "history.jsonl") == read_jsonl(tmp_path / "straight" / "history.jsonl")
    assert resumed["usage"]["calls"] >= straight["usage"]["calls"]  # a replayed search asks for its replies again


def test_start_checks_before_making_a_folder(tiny_model_dir, tmp_path):
    with pytest.raises(GreaterError, match="dev set"):
        Run.start(RunSpec(TASK, str(tiny_model_dir), config=GreaterConfig(dev_keeps_initial=True), out=tmp_path / "a"))
    with pytest.raises(GreaterError):
        Run.start(RunSpec(TASK, str(tiny_model_dir), config=GreaterConfig(filler="  "), out=tmp_path / "b"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_the_command_line_only_parses_calls_and_prints():
    """cli.py stays thin (issue 27): at most 450 lines, no function over 60; the run lifecycle it used to
    hold is the library's (it defines no run, folder or checkpoint of its own)."""
    source = Path(cli.__file__).read_text(encoding="utf-8")
    assert len(source.splitlines()) <= 450
    for module in (cli, cli_flags):
        tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
        long = [f.name for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) and f.end_lineno - f.lineno >= 60]
        assert not long, f"{module.__name__}: functions over 60 lines: {long}"
    tree = ast.parse(source)
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for alias in node.names}
    assert "Run" in imported
    assert not imported & {"RunDir", "optimize", "run_method", "write_checkpoint", "MlflowTracker", "evaluate"}
