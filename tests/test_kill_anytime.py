"""A run killed at any moment resumes: SIGKILL during the starting prompt's test evaluation, in the middle
of a checkpoint write, during the dev pass and at random moments, each followed by `--resume`, ends with
the same steps.jsonl (timings aside) and the same result as an uninterrupted run."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from helpers import assert_same, kill_when, start_greater, steps_without_timing

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


def _checkpoint_state(run: Path) -> dict:
    try:
        return json.loads((run / "checkpoint.json").read_text())["state"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return {}


class _Stderr:
    """A process's stderr, read as it comes (by a thread), to tell how far the process had got."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.text, self._fd = "", proc.stderr.fileno()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while chunk := os.read(self._fd, 1 << 16):
            self.text += chunk.decode(errors="replace")

    def working(self) -> bool:
        """Whether the run has loaded its model and started its steps (a resumed one: or its dev pass)."""
        return "optimizing" in self.text

    def all(self) -> str:
        self._thread.join(timeout=30)
        return self.text


def _landed(run: Path, err: str) -> str:
    """Where a killed sitting of `_args`' run stopped, from the folder it left and what it printed: the
    starting prompt's test evaluation (run.json is written, initial_eval.json not), still loading the
    model, the steps, or the dev pass (every step is checkpointed)."""
    if (run / "run.json").exists() and not (run / "initial_eval.json").exists():
        return "initial evaluation"
    if "optimizing" not in err:
        return "loading"
    return "dev pass" if _checkpoint_state(run).get("step", 0) >= 4 else "steps"


@pytest.mark.slow
def test_sigkill_at_any_moment_then_resume_gives_the_same_run(tiny_model_dir, tmp_path):
    straight, run = tmp_path / "straight", tmp_path / "killed"
    proc = start_greater(_args(tiny_model_dir, straight))
    err, marks = _Stderr(proc), {}
    phases = ("optimizing", "dev examples ...")  # the steps (after the model is loaded), the dev pass
    while proc.poll() is None:  # when each phase starts
        marks |= {mark: time.monotonic() for mark in phases if mark in err.text and mark not in marks}
        time.sleep(0.005)
    assert proc.wait() == 0, err.all()
    # the dev pass: until the end (its test evaluation of 2 examples included)
    steps_time, dev_time = marks[phases[1]] - marks[phases[0]], time.monotonic() - marks[phases[1]]
    rng = random.Random(15)
    resume = ["optimize", "--resume", str(run)]
    landed = []

    # 1. during the starting prompt's test evaluation: run.json is written, initial_eval.json is not
    proc = start_greater(_args(tiny_model_dir, run))
    err = _Stderr(proc)
    assert kill_when(proc, lambda: (run / "run.json").exists())
    assert not (run / "initial_eval.json").exists() and not (run / "checkpoint.json").exists()
    landed.append(_landed(run, err.all()))

    def progress() -> tuple[int, int]:
        state = _checkpoint_state(run)
        return state.get("step", 0), len(state.get("dev_accuracy", []))

    def at_random(within: str) -> None:
        """A moment drawn over one step (`within` "steps") or over the dev pass, as long as the
        uninterrupted run took it, counted from when the resumed run starts working (its model loaded);
        no later than its first save, so that the kill lands in the phase it is aimed at however fast
        this sitting runs (after at most 2 of the 4 steps, a save leaves steps to do; in the dev pass,
        dev prompts)."""
        start = progress()
        assert start[0] <= 2 if within == "steps" else start[0] == 4, (within, start)
        window = steps_time / 4 if within == "steps" else dev_time
        proc, delay, working = start_greater(resume), rng.uniform(0.05, 0.95) * window, []
        err = _Stderr(proc)

        def ready() -> bool:
            if not working and err.working():
                working.append(time.monotonic())
            return (bool(working) and time.monotonic() - working[0] >= delay) or progress() != start

        assert kill_when(proc, ready)
        landed.append(_landed(run, err.all()))

    for moment in ("checkpoint write", "random steps", "random steps", "dev pass", "random dev pass"):
        if moment.startswith("random"):
            at_random(moment.removeprefix("random "))
        elif moment == "checkpoint write":  # dies halfway through writing its 2nd checkpoint (step 2's)
            proc = start_greater(["2", *resume], driver=_KILL_IN_CHECKPOINT_WRITE)
            err = _Stderr(proc)
            assert proc.wait(timeout=300) == -signal.SIGKILL, err.all()
            assert list(run.glob(".checkpoint.json.*")), "the half-written checkpoint is left behind"
            landed.append(_landed(run, err.all()))
        else:  # the steps are done and one more dev prompt is scored, the result is not written
            scored = len(_checkpoint_state(run).get("dev_accuracy", []))
            proc = start_greater(resume)
            err = _Stderr(proc)
            assert kill_when(proc, lambda n=scored: len(_checkpoint_state(run).get("dev_accuracy", [])) > n)
            assert not (run / "result.json").exists()
            landed.append(_landed(run, err.all()))
    # where each kill landed, from the folder and what the process had printed: none while the model
    # was loading, each in the phase it was aimed at
    assert landed == ["initial evaluation", "steps", "steps", "steps", "dev pass", "dev pass"], landed

    proc = start_greater(resume)
    assert proc.wait(timeout=300) == 0, proc.communicate()
    assert_same(steps_without_timing(run / "steps.jsonl"), steps_without_timing(straight / "steps.jsonl"))
    result, expected = (json.loads((d / "result.json").read_text()) for d in (run, straight))
    for key in ("prompt", "prompt_ids", "score", "steps", "dev_accuracy", "finalists", "test_accuracy", "split"):
        assert_same(result[key], expected[key], key)
    assert json.loads((run / "prompt.json").read_text())["prompt"] == expected["prompt"]
