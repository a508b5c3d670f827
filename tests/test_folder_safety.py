"""One writer per folder, and a clear line for every misuse of a path (issue 30).

A run folder is locked (`greater.runs.FolderLock`, the file .lock) by the process writing it, and a
comparison's cell by the process computing it: a second process gets one `greater: error:` line naming
the folder (or cell) and the holder's pid, exit 2, and writes nothing; a SIGKILLed holder leaves no
stale lock. An --out that cannot be a folder, a read-only file system and a full disk each give one
error line and exit 2, and leave the last checkpoint as it was."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from greater.errors import FolderInUse
from greater.runs import LOCK_FILE, FolderLock, RunDir, new_run_dir
from helpers import message_lines, run_cli

TASK = "gen/boolean_expressions"
_COMPARING = re.compile(r"^\s*comparing\b.*\|")  # `greater compare`'s progress bar
OTHER_TASK = "gen/arithmetic"


def _optimize_argv(model_dir: Path, out: Path, steps: int = 3) -> list[str]:
    return [
        "optimize", "--model", str(model_dir), "--task", TASK, "--steps", str(steps), "--train", "4",
        "--test", "2", "--max-new-tokens", "4", "--top-k", "6", "--out", str(out),
    ]  # fmt: skip


def _compare_argv(model_dir: Path, out: Path, *tasks: str) -> list[str]:
    argv = ["compare", "--model", str(model_dir), "--methods", "zs-cot", "--steps", "1", "--train", "3"]
    argv += ["--test", "3", "--max-new-tokens", "4", "--out", str(out)]
    for task in tasks:
        argv += ["--task", task]
    return argv


# runs `greater` (argv[2:]) patched to write its pid to the file $GREATER_TEST_PAUSED and sleep, once
# the first step of its run is checkpointed (argv[1] "step") or its first cell saved progress ("cell")
_PAUSING_DRIVER = """
import os, sys, time
from pathlib import Path

def pause():
    Path(os.environ["GREATER_TEST_PAUSED"]).write_text(str(os.getpid()))
    time.sleep(600)

if sys.argv[1] == "step":
    from greater.runs import RunDir
    real = RunDir.record_step
    def record_step(self, *args, **kwargs):
        real(self, *args, **kwargs)
        pause()
    RunDir.record_step = record_step
else:
    import greater.compare.cells as compare
    real = compare.save_partial
    def save_partial(*args, **kwargs):
        real(*args, **kwargs)
        pause()
    compare.save_partial = save_partial
from greater.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _start_paused(target: str, argv: list[str], marker: Path, log: Path) -> subprocess.Popen:
    """A real `greater` process that pauses (sleeps) inside its run; returns once it has paused."""
    env = os.environ | {"GREATER_TEST_PAUSED": str(marker)}
    with log.open("w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-c", _PAUSING_DRIVER, target, *argv], stdout=fh, stderr=subprocess.STDOUT, env=env
        )
    deadline = time.monotonic() + 300
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the holder ended (exit {proc.returncode}) before pausing:\n{log.read_text()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("the holder never paused")
        time.sleep(0.05)
    return proc


def _greater(*argv: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "greater.cli", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL


def _steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "steps.jsonl").read_text().splitlines()]


def _error_line(err: str) -> str:
    """The one message line of a failed command (progress bars and the loading notice aside)."""
    assert "Traceback" not in err, err
    lines = [line for line in message_lines(err) if not _COMPARING.match(line)]
    assert len(lines) == 1, err
    assert lines[0].startswith("greater: error: "), lines
    return lines[0]


# --- the lock itself --------------------------------------------------------------------------------


def test_the_lock_refuses_a_second_holder_names_the_pid_and_is_free_once_released(tmp_path: Path) -> None:
    with FolderLock(tmp_path, what=f"folder {tmp_path}") as lock:
        assert lock.held
        assert (tmp_path / LOCK_FILE).read_text() == f"{os.getpid()}\n"
        with pytest.raises(FolderInUse, match=f"folder {tmp_path} is in use by another greater process") as refused:
            FolderLock(
                tmp_path, what=f"folder {tmp_path}"
            ).acquire()  # a second open file: flock refuses it, even in this process
        assert refused.value.pid == os.getpid()
        assert f"(pid {os.getpid()})" in str(refused.value)
    assert not lock.held
    with FolderLock(tmp_path):  # released: free again
        pass


_HOLD_LOCK = """
import sys, time
from pathlib import Path
from greater.runs import FolderLock
FolderLock(Path(sys.argv[1])).acquire()
Path(sys.argv[2]).write_text("locked")
time.sleep(600)
"""


@pytest.mark.slow
def test_a_new_run_never_takes_a_folder_another_process_has_locked(tmp_path: Path) -> None:
    taken, marker = tmp_path / "taken", tmp_path / "marker"
    taken.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(taken), str(marker)])
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert holder.poll() is None and time.monotonic() < deadline, "the holder did not lock"
            time.sleep(0.05)
        # the folder holds only the lock file, but its holder is a run starting: the next name is used
        path, renamed, lock = new_run_dir(taken)
        assert (path, renamed) == (tmp_path / "taken-1", True)
        lock.release()
        _kill(holder)
        # the holder died without a word: its lock went with it, and a folder with only .lock is free
        path, renamed, lock = new_run_dir(taken)
        assert (path, renamed) == (taken, False)
        assert (taken / LOCK_FILE).read_text() == f"{os.getpid()}\n"
        lock.release()
    finally:
        holder.kill()
        holder.wait()


# --- two processes on one run folder ------------------------------------------------------------


@pytest.mark.slow
def test_a_second_process_on_a_run_folder_is_refused_and_a_killed_holder_leaves_no_lock(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    holder = _start_paused("step", _optimize_argv(tiny_model_dir, run), tmp_path / "paused", tmp_path / "holder.log")
    try:
        steps_before = (run / "steps.jsonl").read_bytes()
        checkpoint_before = (run / "checkpoint.json").read_bytes()
        second = _greater("optimize", "--resume", str(run))
        _, err = second.communicate(timeout=300)
        assert second.returncode == 2, err
        line = _error_line(err)
        assert f"run folder {run} is in use by another greater process (pid {holder.pid})" in line
        assert "loading model" not in err  # refused before any work
        assert (run / "steps.jsonl").read_bytes() == steps_before
        assert (run / "checkpoint.json").read_bytes() == checkpoint_before
        assert holder.poll() is None
    finally:
        _kill(holder)
    assert _steps(run) == [1]

    # the case: the killed run resumed twice at once; one goes on, the other writes nothing
    both = [_greater("optimize", "--resume", str(run)) for _ in range(2)]
    outcomes = []
    for proc in both:
        _, err = proc.communicate(timeout=600)
        outcomes.append((proc.returncode, err))
    assert sorted(code for code, _ in outcomes) == [0, 2], outcomes
    (refused,) = [err for code, err in outcomes if code == 2]
    line = _error_line(refused)
    (winner,) = [p for p in both if p.returncode == 0]
    assert f"(pid {winner.pid})" in line or "is a finished run" in line, line  # too late: it had finished
    assert _steps(run) == [1, 2, 3]
    assert json.loads((run / "result.json").read_text())["steps"] == 3


# --- two processes on one comparison folder ------------------------------------------------------


@pytest.mark.slow
def test_compare_locks_each_cell_so_disjoint_task_lists_share_a_folder(
    capsys, tiny_model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cmp"
    argv = _compare_argv(tiny_model_dir, out, TASK)
    holder = _start_paused("cell", argv, tmp_path / "paused", tmp_path / "holder.log")
    cell = "gen_boolean_expressions__zs-cot__s0"
    try:
        partial = (out / "partial" / f"{cell}.json").read_bytes()
        # the same cell: refused, naming the cell, the folder and the holder
        code, _, err = run_cli(capsys, argv)
        assert code == 2, err
        line = _error_line(err)
        assert f"cell {cell} of {out} is in use by another greater process (pid {holder.pid})" in line
        assert (out / "partial" / f"{cell}.json").read_bytes() == partial
        assert not (out / "cells" / f"{cell}.json").exists()
        # another task into the same folder meanwhile: its cells are its own
        code, _, err = run_cli(capsys, _compare_argv(tiny_model_dir, out, OTHER_TASK))
        assert code == 0, err
        assert (out / "cells" / "gen_arithmetic__zs-cot__s0.json").is_file()
        assert holder.poll() is None
    finally:
        _kill(holder)
    # the killed holder's cell is free: the whole comparison finishes
    code, _, err = run_cli(capsys, _compare_argv(tiny_model_dir, out, TASK, OTHER_TASK))
    assert code == 0, err
    assert "1 of 2 cells already done" in err
    assert "continuing the cell saved in" in err
    table = json.loads((out / "table.json").read_text())
    assert sorted(row["task"] for row in table["results"]) == [OTHER_TASK, TASK]
    assert not (out / "partial" / f"{cell}.json").exists()


# --- an --out that cannot be used -----------------------------------------------------------------


def _out_argv(command: str, model_dir: Path, out: Path) -> list[str]:
    if command == "optimize":
        return _optimize_argv(model_dir, out)
    if command == "baseline":
        return [*_optimize_argv(model_dir, out), "--method", "zs-cot"]
    if command == "evaluate":
        return [
            "evaluate",
            "--model",
            str(model_dir),
            "--task",
            TASK,
            "--prompt",
            "x",
            "--limit",
            "2",
            "--out",
            str(out),
        ]
    return _compare_argv(model_dir, out, TASK)


@pytest.mark.parametrize("command", ["optimize", "baseline", "evaluate", "compare"])
@pytest.mark.parametrize("inside", [False, True], ids=["file", "inside-a-file"])
def test_an_out_folder_that_is_a_file_is_refused_before_any_work(
    capsys, tiny_model_dir: Path, tmp_path: Path, command: str, inside: bool
) -> None:
    existing = tmp_path / "notes.txt"
    existing.write_text("keep me\n")
    out = existing / "run" if inside else existing
    code, _, err = run_cli(capsys, _out_argv(command, tiny_model_dir, out))
    assert code == 2
    line = _error_line(err)
    what = f"is inside {existing}, which is a file" if inside else "is a file"
    assert line == f"greater: error: --out {out} {what}, not a folder; choose another --out"
    assert "loading model" not in err
    assert existing.read_text() == "keep me\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("command", ["export", "report"])
def test_an_out_file_that_is_a_folder_is_refused(capsys, finished_run: Path, tmp_path: Path, command: str) -> None:
    code, _, err = run_cli(capsys, [command, str(finished_run), "--out", str(tmp_path)])
    assert code == 2
    assert _error_line(err) == f"greater: error: --out {tmp_path} is a folder; give the path of the file to write"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["export", "report"])
def test_an_out_file_inside_a_file_is_one_line(capsys, finished_run: Path, tmp_path: Path, command: str) -> None:
    (tmp_path / "f").write_text("x")
    out = tmp_path / "f" / "out.txt"
    code, _, err = run_cli(capsys, [command, str(finished_run), "--out", str(out)])
    assert code == 2
    assert _error_line(err) == f"greater: error: cannot write {out}: {tmp_path / 'f'} is a file, not a folder"


def test_resume_of_a_file_is_one_line(capsys, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    code, _, err = run_cli(capsys, ["optimize", "--resume", str(tmp_path / "f")])
    assert code == 2
    assert _error_line(err) == f"greater: error: {tmp_path / 'f'} is not a folder; is this a greater run directory?"


# --- a read-only file system and a full disk ------------------------------------------------------


def _fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def _make_read_only(monkeypatch, folder: Path) -> None:
    """From now on, every write under `folder` fails as on a read-only file system (the tests run as
    root, which chmod does not stop). Reads still work."""
    under = str(folder)

    def refuse(path) -> None:
        if str(os.fspath(path)).startswith(under):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))

    real_open, real_mkdir, real_replace, real_unlink = os.open, os.mkdir, os.replace, os.unlink
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def open_(path, flags, *args, **kwargs):
        if flags & writing:
            refuse(path)
        return real_open(path, flags, *args, **kwargs)

    def mkdir(path, *args, **kwargs):
        refuse(path)
        return real_mkdir(path, *args, **kwargs)

    def replace(src, dst, *args, **kwargs):
        refuse(dst)
        return real_replace(src, dst, *args, **kwargs)

    def unlink(path, *args, **kwargs):
        refuse(path)
        return real_unlink(path, *args, **kwargs)

    for name, fake in (("open", open_), ("mkdir", mkdir), ("replace", replace), ("unlink", unlink)):
        monkeypatch.setattr(os, name, fake)


def _after_step(monkeypatch, step: int, fail) -> None:
    """Call `fail()` (which breaks the file system) once the run has recorded `step` steps."""
    real = RunDir.record_step

    def record_step(self, *args, **kwargs):
        if self.steps_logged() == step:
            fail()
        return real(self, *args, **kwargs)

    monkeypatch.setattr(RunDir, "record_step", record_step)


def _snapshot(run: Path) -> dict[str, bytes]:
    return {name: (run / name).read_bytes() for name in ("run.json", "steps.jsonl", "checkpoint.json")}


def _assert_checkpoint_of_step(run: Path, step: int) -> None:
    checkpoint = json.loads((run / "checkpoint.json").read_text())  # valid JSON
    assert checkpoint["state"]["step"] == step
    assert not list(run.glob(".checkpoint.json.*"))  # no temp file left behind


@pytest.mark.slow
def test_a_file_system_turning_read_only_mid_run_stops_with_one_line_and_resumes(
    capsys, monkeypatch, tiny_model_dir: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    before: dict[str, bytes] = {}

    def read_only() -> None:
        before.update(_snapshot(run))
        _make_read_only(monkeypatch, run)

    _after_step(monkeypatch, 1, read_only)
    code, _, err = run_cli(capsys, _optimize_argv(tiny_model_dir, run))
    assert code == 2
    assert _error_line(err) == f"greater: error: cannot append to {run / 'steps.jsonl'}: Read-only file system"
    assert _snapshot(run) == before
    _assert_checkpoint_of_step(run, 1)

    # resuming while the folder is still read-only: refused at once, nothing changed
    code, _, err = run_cli(capsys, ["optimize", "--resume", str(run)])
    assert code == 2
    line = _error_line(err)
    assert (
        line == f"greater: error: cannot lock run folder {run}: cannot write {run / LOCK_FILE}: Read-only file system"
    )
    assert "loading model" not in err
    assert _snapshot(run) == before

    monkeypatch.undo()  # writable again
    code, _, err = run_cli(capsys, ["optimize", "--resume", str(run)])
    assert code == 0, err
    assert _steps(run) == [1, 2, 3]


def test_a_new_run_on_a_read_only_file_system_is_one_line(capsys, monkeypatch, tiny_model_dir, tmp_path) -> None:
    _make_read_only(monkeypatch, tmp_path / "ro")
    run = tmp_path / "ro" / "run"
    code, _, err = run_cli(capsys, _optimize_argv(tiny_model_dir, run))
    assert code == 2
    assert _error_line(err) == f"greater: error: cannot create run directory {run}: Read-only file system"
    assert not (tmp_path / "ro").exists()


@pytest.mark.slow
def test_a_full_disk_while_writing_a_checkpoint_keeps_the_last_one(
    capsys, monkeypatch, tiny_model_dir: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    before: dict[str, bytes] = {}
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        """The checkpoint's temp file gets half its bytes, then the disk is full."""
        if Path(_fd_path(fd)).name.startswith(".checkpoint.json."):
            os.ftruncate(fd, os.fstat(fd).st_size // 2)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    def disk_full() -> None:
        before.update(_snapshot(run))
        monkeypatch.setattr(os, "fsync", fsync)

    _after_step(monkeypatch, 1, disk_full)
    code, _, err = run_cli(capsys, _optimize_argv(tiny_model_dir, run))
    assert code == 2
    assert _error_line(err) == f"greater: error: cannot write {run / 'checkpoint.json'}: No space left on device"
    assert (run / "checkpoint.json").read_bytes() == before["checkpoint.json"]
    _assert_checkpoint_of_step(run, 1)
    # step 2 was logged before its checkpoint failed: whole lines only, and resume redoes it
    assert _steps(run) == [1, 2]

    monkeypatch.undo()
    code, _, err = run_cli(capsys, ["optimize", "--resume", str(run)])
    assert code == 0, err
    assert _steps(run) == [1, 2, 3]


def test_a_full_disk_while_appending_a_step_leaves_no_half_line(
    capsys, monkeypatch, tiny_model_dir: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    before: dict[str, bytes] = {}
    real_write, short = os.write, []

    def write(fd: int, data) -> int:
        """steps.jsonl takes half the line, then the disk is full (a short write, then ENOSPC)."""
        if _fd_path(fd).endswith("steps.jsonl"):
            if not short:
                short.append(len(data) // 2)
                return real_write(fd, bytes(data)[: short[0]])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    def disk_full() -> None:
        before.update(_snapshot(run))
        monkeypatch.setattr(os, "write", write)

    _after_step(monkeypatch, 1, disk_full)
    code, _, err = run_cli(capsys, _optimize_argv(tiny_model_dir, run))
    assert code == 2
    assert _error_line(err) == f"greater: error: cannot append to {run / 'steps.jsonl'}: No space left on device"
    assert short, "the step's line was never written"
    assert _snapshot(run) == before  # steps.jsonl cut back to its whole lines, the checkpoint untouched
    _assert_checkpoint_of_step(run, 1)
    assert _steps(run) == [1]
