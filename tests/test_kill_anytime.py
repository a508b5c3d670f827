"""A run killed at any moment resumes: SIGKILL during the starting prompt's test evaluation, in the middle
of a checkpoint write, during the dev pass and at random moments, each followed by `--resume`, ends with
the same steps.jsonl (timings aside) and the same result as an uninterrupted run."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from test_runs import _assert_same, _steps_without_timing

# runs greater with write_atomic patched to die (SIGKILL) halfway through the Nth write of checkpoint.json,
# leaving a half-written temp file behind, as a kill during the write would
_KILL_IN_CHECKPOINT_WRITE = """
import os, signal, sys, tempfile
import greater.runs as runs
real, calls = runs.write_atomic, [0]
def write_atomic(path, text):
    if path.name == "checkpoint.json":
        calls[0] += 1
        if calls[0] == int(sys.argv[1]):
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
            os.write(fd, text[: len(text) // 2].encode())
            os.fsync(fd)
            os.kill(os.getpid(), signal.SIGKILL)
    return real(path, text)
runs.write_atomic = write_atomic
from greater.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _args(model_dir: Path, out: Path) -> list[str]:
    return [
        "optimize", "--model", str(model_dir), "--task", "gen/boolean_expressions", "--steps", "4", "--train", "4",
        "--dev", "3", "--test", "2", "--max-new-tokens", "8", "--top-k", "6", "--out", str(out),
    ]  # fmt: skip


def _start(args: list[str], driver: str | None = None) -> subprocess.Popen:
    head = [sys.executable, "-c", driver] if driver else [sys.executable, "-m", "greater.cli"]
    return subprocess.Popen([*head, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _checkpoint_state(run: Path) -> dict:
    try:
        return json.loads((run / "checkpoint.json").read_text())["state"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return {}


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 120) -> bool:
    """SIGKILL the process as soon as `ready()` holds; False when it ended first."""
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


def test_sigkill_at_any_moment_then_resume_gives_the_same_run(tiny_model_dir, tmp_path):
    straight, run = tmp_path / "straight", tmp_path / "killed"
    started = time.monotonic()
    proc = _start(_args(tiny_model_dir, straight))
    assert proc.wait(timeout=300) == 0, proc.communicate()
    duration = time.monotonic() - started
    rng = random.Random(15)
    resume = ["optimize", "--resume", str(run)]
    kills = []

    # 1. during the starting prompt's test evaluation: run.json is written, initial_eval.json is not
    proc = _start(_args(tiny_model_dir, run))
    assert _kill_when(proc, lambda: (run / "run.json").exists())
    assert not (run / "initial_eval.json").exists() and not (run / "checkpoint.json").exists()
    kills.append("initial evaluation")

    def at_random() -> None:
        """A moment drawn over the uninterrupted run's duration (loading included), but no later than
        the last step's checkpoint: a resumed run has less left to do, and on a busy machine it could
        otherwise finish before its moment, leaving no dev pass to kill."""
        start, moment = time.monotonic(), rng.uniform(0.1, 0.6) * duration
        proc = _start(resume)
        last_step = lambda: _checkpoint_state(run).get("step", 0) >= 4  # noqa: E731
        assert _kill_when(proc, lambda: time.monotonic() - start >= moment or last_step())
        kills.append(f"random {moment:.1f}s")

    for moment in ("random", "checkpoint write", "random", "random", "dev pass", "random"):
        if moment == "random":
            at_random()
        elif moment == "checkpoint write":  # dies halfway through writing its 2nd checkpoint
            proc = _start(["2", *resume], driver=_KILL_IN_CHECKPOINT_WRITE)
            assert proc.wait(timeout=300) == -signal.SIGKILL, proc.communicate()
            assert list(run.glob(".checkpoint.json.*")), "the half-written checkpoint is left behind"
            kills.append("checkpoint write")
        else:  # the steps are done and one more dev prompt is scored, the result is not written
            scored = len(_checkpoint_state(run).get("dev_accuracy", []))
            proc = _start(resume)
            assert _kill_when(proc, lambda n=scored: len(_checkpoint_state(run).get("dev_accuracy", [])) > n)
            assert not (run / "result.json").exists()
            kills.append("dev pass")
    assert len(kills) >= 6, kills

    proc = _start(resume)
    assert proc.wait(timeout=300) == 0, proc.communicate()
    _assert_same(_steps_without_timing(run / "steps.jsonl"), _steps_without_timing(straight / "steps.jsonl"))
    result, expected = (json.loads((d / "result.json").read_text()) for d in (run, straight))
    for key in ("prompt", "prompt_ids", "score", "steps", "dev_accuracy", "finalists", "test_accuracy", "split"):
        _assert_same(result[key], expected[key], key)
    assert json.loads((run / "prompt.json").read_text())["prompt"] == expected["prompt"]
