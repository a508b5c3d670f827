"""The `greater` command end to end on the tiny random model: tasks, optimize, evaluate, bad input.

Everything here uses local paths only (the tiny model folder from conftest), never the hub.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from greater.cli import main
from greater.tasks import get_task
from helpers import BBH_DIR, message_lines, optimize_argv, run_cli

# one pytest worker runs this file's tests: its module fixture is made once (make test: --dist loadgroup)
pytestmark = pytest.mark.xdist_group("cli")

GEN_TASKS = ("gen/boolean_expressions", "gen/arithmetic", "gen/object_counting")


def read_steps(run_dir: Path) -> list[dict]:
    lines = (run_dir / "steps.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def check_step_record(record: dict) -> None:
    """One steps.jsonl line is well-formed: keys, candidates sorted by finite gradient, a valid choice."""
    for key in ("step", "position", "prompt", "candidates", "evaluated", "chosen", "seconds"):
        assert key in record, key
    assert isinstance(record["position"], int)
    assert record["position"] >= 0
    candidates = record["candidates"]
    assert isinstance(candidates, list)
    assert candidates
    for cand in candidates:
        assert set(cand) >= {"token_id", "token", "grad"}
        assert isinstance(cand["token_id"], int)
        assert cand["token_id"] >= 0
        assert isinstance(cand["token"], str)
        assert cand["token"]
        assert isinstance(cand["grad"], float)
        assert math.isfinite(cand["grad"])
    grads = [cand["grad"] for cand in candidates]
    assert grads == sorted(grads)
    assert len({cand["token_id"] for cand in candidates}) == len(candidates)
    assert isinstance(record["evaluated"], list)
    assert record["evaluated"]
    for item in record["evaluated"]:
        assert set(item) >= {"token", "prompt", "score", "cached"}
        assert item["token"] in {cand["token"] for cand in candidates}
    assert isinstance(record["chosen"], str)
    assert record["chosen"]
    assert record["chosen"] in {item["prompt"] for item in record["evaluated"]} | {record["prompt"]}
    assert isinstance(record["seconds"], dict)
    assert "total" in record["seconds"]
    assert all(isinstance(v, float) and v >= 0 for v in record["seconds"].values())


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One 2-step optimization run of the tiny model (shared by the tests that only read it)."""
    out = tmp_path_factory.mktemp("cli-run") / "run"
    assert main(optimize_argv(tiny_model_dir, out)) == 0
    return out


# --- greater tasks -----------------------------------------------------------------------------


def test_tasks_lists_generated_tasks(capsys, monkeypatch) -> None:
    monkeypatch.delenv("GREATER_DATA_DIR", raising=False)
    code, out, _ = run_cli(capsys, ["tasks"])
    assert code == 0
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    for name in GEN_TASKS:
        assert name in names
    assert "gen/nope" not in names


def test_tasks_with_data_dir_lists_its_files_only(capsys, tmp_path) -> None:
    (tmp_path / "web_of_lies.json").write_text(json.dumps({"examples": [{"input": "Q?", "target": "Yes"}]}))
    code, out, _ = run_cli(capsys, ["tasks", "--data-dir", str(tmp_path)])
    assert code == 0
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    assert "bbh/web_of_lies" in names
    assert "bbh/boolean_expressions" not in names
    assert set(GEN_TASKS) <= set(names)


@pytest.mark.skipif(not BBH_DIR.is_dir(), reason="BBH data not available")
def test_tasks_with_bbh_dir(capsys) -> None:
    code, out, _ = run_cli(capsys, ["tasks", "--data-dir", str(BBH_DIR)])
    assert code == 0
    names = {line.split()[0] for line in out.splitlines() if line.strip()}
    assert set(GEN_TASKS) <= names
    expected = {f"bbh/{p.stem}" for p in BBH_DIR.glob("*.json")}
    assert "bbh/boolean_expressions" in expected
    assert expected <= names


# --- greater optimize ----------------------------------------------------------------------------


def test_optimize_writes_run_files(run_dir: Path, tiny_model_dir: Path) -> None:
    assert {"run.json", "result.json", "prompt.txt", "steps.jsonl"} <= {p.name for p in run_dir.iterdir()}
    run_info = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    result = json.loads((run_dir / "result.json").read_text(encoding="utf-8"))

    for key in ("prompt", "initial_prompt", "score", "steps", "model", "task", "config"):
        assert key in result, key
    assert {k: result[k] for k in run_info} == run_info  # result.json extends run.json
    assert result["steps"] == 2
    assert result["task"] == "gen/boolean_expressions"
    assert result["model"] == str(tiny_model_dir)
    assert result["config"]["steps"] == 2
    assert result["config"]["max_new_tokens"] == 6
    assert (result["split"]["seed"], result["split"]["train"], result["split"]["test"]) == (0, 4, 3)
    assert result["initial_prompt"] == result["config"]["init_prompt"]
    assert math.isfinite(result["score"])
    assert result["score"] <= result["initial_score"]
    assert set(result["test_accuracy"]) == {"initial", "optimized"}
    for value in result["test_accuracy"].values():
        assert 0.0 <= value <= 1.0
    assert (run_dir / "prompt.txt").read_text(encoding="utf-8") == result["prompt"] + "\n"

    records = read_steps(run_dir)
    assert len(records) == 2
    for record in records:
        check_step_record(record)
    assert [r["step"] for r in records] == [1, 2]
    assert records[0]["position"] == 0
    assert records[1]["position"] == 1  # the prompt is longer than one token: the position advances
    assert records[1]["prompt"] == records[0]["chosen"]
    assert records[0]["prompt"] == result["initial_prompt"]
    assert result["prompt"] == records[-1]["best_prompt"]


def test_optimize_prints_progress_summary(capsys, tiny_model_dir: Path, tmp_path: Path) -> None:
    code, out, err = run_cli(capsys, optimize_argv(tiny_model_dir, tmp_path / "run", "--steps", "1"))
    assert code == 0
    assert "initial prompt test accuracy:" in out
    assert "optimized prompt test accuracy:" in out
    from greater.compare.stats import majority
    from greater.tasks import get_task

    task = get_task("gen/boolean_expressions")
    answer, share = majority([ex.answer for ex in task.split(4, 3, 0)[1]])
    assert f"chance on these test examples (always answering {answer!r}): {share:.3f}" in out
    assert f"run written to {tmp_path / 'run'}" in out
    assert "Traceback" not in err
    assert message_lines(err) == []  # nothing but progress bars on stderr


def test_optimize_never_overwrites_a_run(capsys, run_dir: Path, tiny_model_dir: Path) -> None:
    before = snapshot(run_dir)
    code, _, err = run_cli(capsys, optimize_argv(tiny_model_dir, run_dir))
    assert code == 0
    second = run_dir.with_name(run_dir.name + "-1")
    assert second.is_dir()
    assert (second / "result.json").is_file()
    assert len(read_steps(second)) == 2
    assert snapshot(run_dir) == before
    notice = [line for line in message_lines(err) if "already holds a run" in line]
    assert len(notice) == 1
    assert str(second) in notice[0]


def test_optimize_is_deterministic(capsys, run_dir: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    code, _, _ = run_cli(capsys, optimize_argv(tiny_model_dir, tmp_path / "again"))
    assert code == 0

    def essentials(folder: Path) -> list[tuple]:
        return [(r["step"], r["position"], r["chosen"], r["chosen_ids"], r["candidates"]) for r in read_steps(folder)]

    assert essentials(tmp_path / "again") == essentials(run_dir)
    first = json.loads((run_dir / "result.json").read_text(encoding="utf-8"))
    again = json.loads((tmp_path / "again" / "result.json").read_text(encoding="utf-8"))
    assert again["prompt_ids"] == first["prompt_ids"]
    assert again["score"] == first["score"]


# --- greater evaluate ----------------------------------------------------------------------------


def test_evaluate_prompt_writes_predictions(capsys, tiny_model_dir: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "ev"
    argv = ["evaluate", "--model", str(tiny_model_dir), "--task", "gen/arithmetic"]
    argv += ["--prompt", "Think step by step.", "--limit", "3", "--max-new-tokens", "6", "--out", str(out_dir)]
    code, out, err = run_cli(capsys, argv)
    assert code == 0, err
    match = re.search(r"accuracy: (\d\.\d+) \((\d+)/(\d+)\)", out)
    assert match is not None, out

    lines = (out_dir / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3
    predictions = [json.loads(line) for line in lines]
    for pred in predictions:
        assert set(pred) >= {"question", "reasoning", "output", "predicted", "gold", "correct"}
        assert isinstance(pred["correct"], bool)
        assert pred["correct"] == (pred["predicted"] == pred["gold"])
        assert re.fullmatch(r"-?\d+", pred["gold"])  # arithmetic golds are canonical integers
    assert len({pred["question"] for pred in predictions}) == 3

    metrics = json.loads((out_dir / "metrics.json").read_text(encoding="utf-8"))
    n_correct = sum(pred["correct"] for pred in predictions)
    assert metrics["n"] == 3
    assert metrics["accuracy"] == pytest.approx(n_correct / 3)
    assert metrics["prompt"] == "Think step by step."
    assert metrics["task"] == "gen/arithmetic"
    assert metrics["split"] == "test"
    assert float(match.group(1)) == pytest.approx(metrics["accuracy"], abs=1e-4)
    assert (int(match.group(2)), int(match.group(3))) == (n_correct, 3)


def test_evaluate_run_uses_the_runs_prompt(capsys, run_dir: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "ev"
    argv = ["evaluate", "--model", str(tiny_model_dir), "--task", "gen/boolean_expressions", "--run", str(run_dir)]
    argv += ["--limit", "2", "--out", str(out_dir)]
    code, out, err = run_cli(capsys, argv)
    assert code == 0, err
    assert "accuracy:" in out
    result = json.loads((run_dir / "result.json").read_text(encoding="utf-8"))
    metrics = json.loads((out_dir / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["prompt"] == result["prompt"]
    assert metrics["joiner"] == result["config"]["joiner"]
    assert metrics["n"] == 2
    predictions = [json.loads(line) for line in (out_dir / "predictions.jsonl").read_text().splitlines()]
    # scored on the run's own test split (train 4, seed 0), not on the default split
    _, test = get_task("gen/boolean_expressions").split(4, None, 0)
    assert [p["question"] for p in predictions] == [ex.question for ex in test[:2]]


# --- bad input -----------------------------------------------------------------------------------


def _bbh_file(tmp: Path, text: str) -> Path:
    folder = tmp / "bbh"
    folder.mkdir(exist_ok=True)
    (folder / "boolean_expressions.json").write_text(text, encoding="utf-8")
    return folder


def _case_unknown_task(tmp: Path, model: Path) -> tuple[list[str], str]:
    return ["optimize", "--model", str(model), "--task", "gen/nope", "--out", str(tmp / "run")], "unknown task"


def _case_missing_model(tmp: Path, model: Path) -> tuple[list[str], str]:
    argv = ["optimize", "--model", "/no/such/model", "--task", "gen/arithmetic", "--out", str(tmp / "run")]
    return argv, "does not exist"


def _case_not_gguf(tmp: Path, model: Path) -> tuple[list[str], str]:
    fake = tmp / "fake.gguf"
    fake.write_bytes(b"\x00junk, not a model\xff" * 8)
    return ["optimize", "--model", str(fake), "--task", "gen/arithmetic", "--out", str(tmp / "run")], "not a GGUF"


def _case_bbh_empty(tmp: Path, model: Path) -> tuple[list[str], str]:
    folder = _bbh_file(tmp, json.dumps({"examples": []}))
    argv = ["optimize", "--model", str(model), "--task", "bbh/boolean_expressions", "--data-dir", str(folder)]
    return argv + ["--out", str(tmp / "run")], "empty"


def _case_bbh_malformed(tmp: Path, model: Path) -> tuple[list[str], str]:
    folder = _bbh_file(tmp, '{"examples": [{"input": "True is", ')
    argv = ["optimize", "--model", str(model), "--task", "bbh/boolean_expressions", "--data-dir", str(folder)]
    return argv + ["--out", str(tmp / "run")], str(folder / "boolean_expressions.json")


def _case_empty_prompt(tmp: Path, model: Path) -> tuple[list[str], str]:
    return optimize_argv(model, tmp / "run", "--init-prompt", ""), "prompt is empty"


def _case_unencodable_prompt(tmp: Path, model: Path) -> tuple[list[str], str]:
    return optimize_argv(model, tmp / "run", "--init-prompt", "a\udcffb"), "cannot encode"


def _case_unencodable_eval_prompt(tmp: Path, model: Path) -> tuple[list[str], str]:
    argv = ["evaluate", "--model", str(model), "--task", "gen/arithmetic", "--prompt", "a\udcffb", "--limit", "2"]
    return argv, "cannot encode"


def _case_run_without_result(tmp: Path, model: Path) -> tuple[list[str], str]:
    (tmp / "not-a-run").mkdir()
    argv = ["evaluate", "--model", str(model), "--task", "gen/arithmetic", "--run", str(tmp / "not-a-run")]
    return argv, "result.json does not exist"


BAD_INPUT: list = [
    pytest.param(_case_unknown_task, id="unknown-task"),
    pytest.param(_case_missing_model, id="missing-model-path"),
    pytest.param(_case_not_gguf, id="not-gguf"),
    pytest.param(_case_bbh_empty, id="bbh-empty-examples"),
    pytest.param(_case_bbh_malformed, id="bbh-malformed-json"),
    pytest.param(_case_empty_prompt, id="empty-init-prompt"),
    pytest.param(_case_unencodable_prompt, id="unencodable-init-prompt"),
    pytest.param(_case_unencodable_eval_prompt, id="unencodable-eval-prompt"),
    pytest.param(_case_run_without_result, id="run-without-result"),
]


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_is_one_clean_error(
    capsys, tmp_path: Path, tiny_model_dir: Path, case: Callable[[Path, Path], tuple[list[str], str]]
) -> None:
    argv, expected = case(tmp_path, tiny_model_dir)
    code, _, err = run_cli(capsys, argv)
    assert code == 2
    assert "Traceback" not in err
    lines = message_lines(err)
    assert len(lines) == 1, err
    assert lines[0].startswith("greater: error: ")
    assert expected in lines[0]


def test_bad_init_prompt_leaves_no_run_behind(capsys, tmp_path: Path, tiny_model_dir: Path) -> None:
    code, _, _ = run_cli(capsys, optimize_argv(tiny_model_dir, tmp_path / "run", "--init-prompt", " "))
    assert code == 2
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


@pytest.mark.parametrize(("option", "value"), [("--steps", "0"), ("--train", "0"), ("--steps", "two")])
def test_bad_integer_options_exit_2(capsys, tmp_path: Path, option: str, value: str) -> None:
    argv = ["optimize", "--task", "gen/arithmetic", "--out", str(tmp_path / "run"), option, value]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}" in err
    assert "positive integer" in err
    assert not (tmp_path / "run").exists()


# --- the real process ----------------------------------------------------------------------------


def _run_process(args: list, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "greater.cli", *args], cwd=cwd, env=env, capture_output=True, timeout=300
    )


@pytest.mark.slow
def test_process_missing_model_exits_2_without_traceback(tmp_path: Path) -> None:
    proc = _run_process(["optimize", "--model", "/no/such/model", "--task", "gen/arithmetic"], tmp_path)
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 2, err
    assert "Traceback" not in err
    lines = message_lines(err)
    assert lines == ["greater: error: model path does not exist: /no/such/model"]
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_process_undecodable_argv_prompt_exits_2(tmp_path: Path, tiny_model_dir: Path) -> None:
    """A prompt whose bytes are not UTF-8 reaches Python as lone surrogates: a clean error, not a crash."""
    args = ["evaluate", "--model", str(tiny_model_dir), "--task", "gen/arithmetic", "--limit", "2"]
    proc = _run_process([*args, "--prompt", b"a\xffb"], tmp_path)
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 2, err
    assert "Traceback" not in err
    lines = message_lines(err)
    assert len(lines) == 1
    assert lines[0].startswith("greater: error: the tokenizer cannot encode")
