"""Runs that survive: checkpoints, exact resume after SIGKILL, signals, and refusing bad resumes."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from greater.cli import main
from greater.optimizer import GreaterConfig, RunState, optimize
from greater.tasks import get_task
from helpers import assert_same, make_interrupted_run, run_argv, start_greater, steps_without_timing


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_resume_from_saved_state_equals_uninterrupted_run(tiny_model, smol_tokenizer, dtype):
    task = get_task("gen/boolean_expressions")
    train = task.load()[:4]
    model = tiny_model if dtype == torch.float32 else copy.deepcopy(tiny_model).to(dtype)

    def config(steps):
        return GreaterConfig(steps=steps, max_new_tokens=5, top_k=6, batch_size=4, init_prompt="think step by step.")

    full = optimize(model, smol_tokenizer, task, config(5), train=train)
    saved = {}
    optimize(model, smol_tokenizer, task, config(2), train=train, on_step=lambda r, s: saved.update(s.to_json()))
    state = RunState.from_json(json.loads(json.dumps(saved)))  # through JSON, as on disk
    assert state.step == 2
    rest = optimize(model, smol_tokenizer, task, config(5), train=train, state=state)
    assert [r.step for r in rest.steps] == [3, 4, 5]
    assert [r.chosen_ids for r in full.steps[2:]] == [r.chosen_ids for r in rest.steps]
    # the same candidates in the same order with the same gradients, to the bit: the resumed run builds
    # the kept prefix (heads, then one prompt token at a time) as the uninterrupted one did
    for a, b in zip(full.steps[2:], rest.steps, strict=True):
        assert [(c.token_id, c.grad) for c in a.candidates] == [(c.token_id, c.grad) for c in b.candidates]
        assert [(e.prompt_ids, e.score) for e in a.evaluated] == [(e.prompt_ids, e.score) for e in b.evaluated]
    assert (rest.prompt, rest.score) == (full.prompt, full.score)


def _wait_for_step(run_dir: Path, proc: subprocess.Popen, step: int, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if json.loads((run_dir / "checkpoint.json").read_text())["state"]["step"] >= step:
                return
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError("the run did not reach the step in time")


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_same_run(tiny_model_dir, tmp_path):
    assert main(run_argv(tiny_model_dir, tmp_path / "straight")) == 0

    killed = tmp_path / "killed"
    proc = start_greater(run_argv(tiny_model_dir, killed))
    _wait_for_step(killed, proc, 2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stopped_at = json.loads((killed / "checkpoint.json").read_text())["state"]["step"]
    assert 2 <= stopped_at < 6
    assert not (killed / "result.json").exists()

    assert main(["optimize", "--resume", str(killed)]) == 0
    straight = json.loads((tmp_path / "straight" / "result.json").read_text())
    resumed = json.loads((killed / "result.json").read_text())
    assert resumed["prompt"] == straight["prompt"]
    assert resumed["steps"] == 6
    assert_same(
        steps_without_timing(killed / "steps.jsonl"), steps_without_timing(tmp_path / "straight" / "steps.jsonl")
    )


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_saves_and_says_how_to_resume(tiny_model_dir, tmp_path, sig, code):
    run = tmp_path / "run"
    proc = start_greater(run_argv(tiny_model_dir, run, steps=50))
    _wait_for_step(run, proc, 1)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code
    assert f"greater optimize --resume {run}" in err
    assert "Traceback" not in err
    step = json.loads((run / "checkpoint.json").read_text())["state"]["step"]
    assert len((run / "steps.jsonl").read_text().splitlines()) >= step >= 1


@pytest.mark.slow
def test_resume_refuses_contradicting_flags_and_bad_checkpoints(tiny_model_dir, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    make_interrupted_run(run_argv(tiny_model_dir, run, steps=4), monkeypatch)
    capsys.readouterr()

    assert main(["optimize", "--resume", str(run), "--top-k", "9"]) == 2
    assert "--top-k 9 differs from the run's stored value 6" in capsys.readouterr().err

    assert main(["optimize", "--resume", str(run), "--task", "gen/arithmetic"]) == 2
    assert "--task 'gen/arithmetic' differs" in capsys.readouterr().err

    checkpoint = run / "checkpoint.json"
    good = checkpoint.read_text()
    checkpoint.write_text(good[: len(good) // 2])
    assert main(["optimize", "--resume", str(run)]) == 2
    assert "truncated or corrupt" in capsys.readouterr().err

    checkpoint.write_text(good.replace("greater-checkpoint/1", "greater-checkpoint/0"))
    assert main(["optimize", "--resume", str(run)]) == 2
    assert "format 'greater-checkpoint/0'" in capsys.readouterr().err

    checkpoint.write_text(good)
    assert main(["optimize", "--resume", str(run)]) == 0
    assert main(["optimize", "--resume", str(run)]) == 2
    assert "finished run" in capsys.readouterr().err


@pytest.mark.slow
def test_full_disk_is_one_clear_error_and_damages_nothing(tiny_model_dir, tmp_path, capsys, monkeypatch):
    import errno

    assert main(run_argv(tiny_model_dir, tmp_path / "straight", steps=4)) == 0
    run = tmp_path / "run"
    make_interrupted_run(run_argv(tiny_model_dir, run, steps=4), monkeypatch)
    checkpoint = (run / "checkpoint.json").read_text()
    capsys.readouterr()

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    assert main(["optimize", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err
    assert "Traceback" not in err
    assert (run / "checkpoint.json").read_text() == checkpoint  # the last checkpoint is intact
    monkeypatch.undo()
    assert main(["optimize", "--resume", str(run)]) == 0
    assert_same(steps_without_timing(run / "steps.jsonl"), steps_without_timing(tmp_path / "straight" / "steps.jsonl"))
