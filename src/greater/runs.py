"""The run directory (`RunDir`): run.json, steps.jsonl (appended and fsynced per step), checkpoint.json,
initial_eval.json, prompt.txt, prompt.json and result.json; the atomic writes they go through; and the
lock (`FolderLock`, the file .lock) that keeps a second process from writing into a folder in use.

This is greater's file layer: it knows the files, not what is in them (prompt.json is built by
`greater.artifact`, the step records by `greater.optimizer`), and imports nothing above `greater.tasks`."""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import random
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from greater.errors import FolderInUse, GreaterError, refuse_changed, setting_name
from greater.settings import RUN_KEYS
from greater.tasks.base import fingerprint

LOCK_FILE = ".lock"


class FolderLock:
    """One writer per folder: an exclusive `fcntl.flock` on the file `name` in `folder` (made if missing,
    and never deleted: deleting it would let two processes lock two different files), holding the
    holder's pid. The kernel releases it when the holder's process ends, however it ends (kill -9
    too), so no stale lock is left. `acquire` (or `with FolderLock(...)`) takes it or raises
    `GreaterError` naming `what` and the holder's pid; `release` (or the end of the `with`) frees it.
    `what` names the folder in that message (default: the folder's path)."""

    def __init__(self, folder: Path, name: str = LOCK_FILE, what: str | None = None) -> None:
        self.path = folder / name
        self.what = what or str(folder)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> FolderLock:
        if self._fd is not None:
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise GreaterError(f"cannot lock {self.what}: cannot write {self.path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise FolderInUse(self.what, holder) from None
        except OSError as exc:  # a file system without locks (ENOLCK)
            os.close(fd)
            raise GreaterError(f"cannot lock {self.what} ({self.path}): {exc.strerror}") from exc
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:
            os.close(fd)
            raise GreaterError(f"cannot write {self.path}: {exc.strerror}") from exc
        self._fd = fd
        return self

    def release(self) -> None:
        """Free the lock (closing the file frees it); nothing when it is not held."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    """The pid a lock file holds; None when it holds none (its holder has not written it yet)."""
    try:
        return int(os.pread(fd, 32, 0).decode("ascii").strip())
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def _holds_files(path: Path) -> bool:
    """Whether a folder holds anything but a lock file (an empty folder another run locked is not free
    either: `new_run_dir` tries its lock)."""
    return any(p.name != LOCK_FILE for p in path.iterdir())


def new_run_dir(requested: Path) -> tuple[Path, bool, FolderLock]:
    """`requested`, or `requested-N` for the first free N when it already holds files (or another
    process holds its lock), made and locked (`FolderLock`).

    Returns (path, renamed, lock): an existing run is never overwritten.
    """
    if requested.exists() and not requested.is_dir():
        raise GreaterError(f"{requested} is a file, not a folder; choose another {setting_name('out')} for the run")
    for n in itertools.count():
        path = requested if n == 0 else requested.with_name(f"{requested.name}-{n}")
        if path.exists() and not path.is_dir():
            continue
        if path.exists() and _holds_files(path):
            continue
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise GreaterError(f"cannot create run directory {path}: {exc.strerror}") from exc
        lock = FolderLock(path, what=f"run folder {path}")
        try:
            lock.acquire()
        except FolderInUse:  # a new run another process has just made
            continue
        if not _holds_files(path):  # still free once locked
            return path, path != requested, lock
        lock.release()
    raise AssertionError("unreachable")


def make_folder(path: Path) -> None:
    """`path` as a folder (with its parents), or a `GreaterError` saying why it cannot be one."""
    if path.exists() and not path.is_dir():
        raise GreaterError(f"{path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GreaterError(f"cannot create folder {path}: {exc.strerror}") from exc


def write_atomic(path: Path, content: str | bytes) -> None:
    """Write via a temp file + rename, so a crash leaves either the old or the new file, never half.
    The temp file's name is unique, so two processes writing one path cannot take each other's.
    Missing parent folders are made (an `--out` path may name a new folder)."""
    for folder in (path.parent, *path.parent.parents):  # the nearest existing one must be a folder
        if folder.exists():
            if not folder.is_dir():
                raise GreaterError(f"cannot write {path}: {folder} is a file, not a folder")
            break
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except OSError as exc:
        raise GreaterError(f"cannot write {path}: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(content.encode("utf-8") if isinstance(content, str) else content)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise GreaterError(f"cannot write {path}: {exc.strerror}") from exc
        if isinstance(exc, UnicodeError):
            raise GreaterError(f"cannot write {path}: text that cannot be encoded ({exc.reason})") from exc
        raise


def write_json(path: Path, data: dict) -> None:
    write_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def append_jsonl(path: Path, record: dict) -> None:
    """Append one JSON line and fsync, so a finished step survives a kill. A write that fails (a full
    disk) is cut off again, so the file never ends in half a line."""
    try:
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
    except UnicodeError as exc:
        raise GreaterError(f"cannot append to {path}: text that cannot be encoded ({exc.reason})") from exc
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise GreaterError(f"cannot append to {path}: {exc.strerror}") from exc
    try:
        size = os.fstat(fd).st_size
        try:
            written = 0
            while written < len(line):
                written += os.write(fd, line[written:])
            os.fsync(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            raise GreaterError(f"cannot append to {path}: {exc.strerror}") from exc
    finally:
        os.close(fd)


def write_predictions(path: Path, predictions: list[dict]) -> None:
    """Per-example predictions as JSON lines, written atomically."""
    write_atomic(path, "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in predictions))


def slug(name: str) -> str:
    """A file-name-safe form of a task name or prompt label."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "_"


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise GreaterError(f"{path} does not exist; is this a greater run directory?") from exc
    except NotADirectoryError as exc:
        raise GreaterError(f"{path.parent} is not a folder; is this a greater run directory?") from exc
    except OSError as exc:
        raise GreaterError(f"cannot read {path}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise GreaterError(f"{path} is not valid JSON (line {exc.lineno}): {exc.msg}") from exc


CHECKPOINT = "checkpoint.json"
CHECKPOINT_FORMAT = "greater-checkpoint/1"


def rng_states() -> dict:
    """Python, NumPy and torch RNG states as plain JSON."""
    np_state = np.random.get_state()
    return {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state().tolist(),
    }


def restore_rng_states(states: dict) -> None:
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(states["torch"], dtype=torch.uint8))


def write_checkpoint(run_dir: Path, payload: dict) -> None:
    write_json(run_dir / CHECKPOINT, {"format": CHECKPOINT_FORMAT, **payload, "rng": rng_states()})


def read_checkpoint(run_dir: Path) -> dict:
    """The last complete checkpoint of a run, checked for format; restores the RNG states."""
    path = run_dir / CHECKPOINT
    if not path.is_file():
        raise GreaterError(
            f"{run_dir} has no {CHECKPOINT}: it is not a greater run, or it stopped before its first step"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise GreaterError(f"{path} is truncated or corrupt (line {exc.lineno}: {exc.msg}); cannot resume") from exc
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise GreaterError(
            f"{path} has format {found!r}, this greater reads {CHECKPOINT_FORMAT!r}; "
            "resume it with the greater version that wrote it, or start a new run"
        )
    try:
        restore_rng_states(data["rng"])
    except (KeyError, TypeError, ValueError) as exc:
        raise GreaterError(f"{path} has unreadable RNG states ({exc}); cannot resume") from exc
    return data


def read_lines(path: Path) -> list[str]:
    """The lines of a text file (with their line ends); none when it does not exist."""
    return path.read_text(encoding="utf-8").splitlines(keepends=True) if path.exists() else []


def truncate_lines(path: Path, keep: int) -> None:
    """Keep the first `keep` lines of a JSONL file (drops a step logged after the last checkpoint)."""
    lines = read_lines(path)
    if path.exists() and len(lines) != keep:
        write_atomic(path, "".join(line for line in lines[:keep] if line.endswith("\n")))


# --- the run folder -------------------------------------------------------------------------------

RUN_INFO = "run.json"
RESULT = "result.json"
PROMPT_TEXT = "prompt.txt"
PROMPT_JSON = "prompt.json"  # the portable prompt (`greater.artifact`)
STEPS = "steps.jsonl"
INITIAL_EVAL = "initial_eval.json"


def split_sizes(split: dict) -> tuple[int | None, int | None, int | None]:
    """(train, dev, test) sizes of a split as run.json (and prompt.json's task) stores it, for `Task.splits`:
    as asked for, else as drawn (so a run resumes on the examples it started with even if the task's
    defaults change); a run from before dev sets has none."""
    train = split.get("train") or split.get("n_train")
    dev = split["dev"] if split.get("dev") is not None else split.get("n_dev", 0 if "n_train" in split else None)
    return train, dev, split.get("test") or split.get("n_test")


class RunDir:
    """One run's folder and its run.json (`info`): made by `create`, reopened by `open` for --resume.

    It writes every file of the run: run.json, steps.jsonl and checkpoint.json after each step,
    initial_eval.json, and at the end prompt.txt, prompt.json and result.json (in that order: a folder
    with result.json is a finished run)."""

    def __init__(self, path: Path, info: dict, checkpoint: dict | None = None, lock: FolderLock | None = None) -> None:
        self.path = path
        self.info = info
        self.checkpoint = checkpoint  # the last checkpoint read by `open`; None: none yet
        self.lock = lock  # held from `create` or `open` until `close` (or the end of `with run:`)

    def close(self) -> None:
        """Free the folder's lock (the process's end frees it too)."""
        if self.lock is not None:
            self.lock.release()

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @classmethod
    def create(
        cls, requested: Path, info: dict, train: list, test: list, dev: list | tuple = ()
    ) -> tuple[RunDir, bool]:
        """A fresh folder (`requested`, else `requested-N`: never an existing run's), locked, with run.json:
        `info` with the split's drawn sizes and fingerprint added. Returns (run, renamed)."""
        path, renamed, lock = new_run_dir(requested)
        info["split"] |= {"n_train": len(train), "n_dev": len(dev), "n_test": len(test)}
        info["split"]["fingerprint"] = fingerprint(train, test, dev)
        run = cls(path, info, lock=lock)
        try:
            run.save_info()
        except BaseException:
            run.close()
            raise
        return run, renamed

    @classmethod
    def open(cls, path: Path) -> RunDir:
        """An unfinished run to resume, locked (`FolderLock`: refused while another process
        writes it), with its last checkpoint (None: it stopped before its first step ended); reading the
        checkpoint restores its RNG states."""
        read_json(path / RUN_INFO)  # not a run folder: refused before a lock file is made in it
        lock = FolderLock(path, what=f"run folder {path}").acquire()
        try:
            info = read_json(path / RUN_INFO)
            if (path / RESULT).exists():
                raise GreaterError(f"{path} is a finished run (result.json exists); nothing to resume")
            return cls(path, info, read_checkpoint(path) if (path / CHECKPOINT).exists() else None, lock)
        except BaseException:
            lock.release()
            raise

    def check_flags(self, given: dict[str, object]) -> None:
        """Refuse a run-defining flag (see `RUN_KEYS`; None: not given) that contradicts run.json; a task
        file is compared by absolute path, as the run stores it."""
        stored: dict[str, object] = {}
        for flag, keys in RUN_KEYS.items():
            found: object = self.info
            for key in keys:
                found = found.get(key) if isinstance(found, dict) else None
            stored[flag] = found
        values = {flag: given.get(flag) for flag in RUN_KEYS}
        if values["task"] is not None and Path(values["task"]).is_file():
            values["task"] = str(Path(values["task"]).resolve())
        refuse_changed(values, stored)

    def check_data(self, train: list, test: list, dev: list | tuple = ()) -> None:
        """Refuse to resume on examples other than those the run started with."""
        if self.info["split"].get("fingerprint") != fingerprint(train, test, dev):
            raise GreaterError(
                f"the data of task {self.info['task']!r} changed since {self.path} started; cannot resume"
            )

    def save_info(self) -> None:
        write_json(self.path / RUN_INFO, self.info)

    def keep_steps(self, steps: int) -> None:
        """Drop a step logged after the last checkpoint (it is run again)."""
        truncate_lines(self.path / STEPS, steps)

    def record_step(self, record: dict, progress: dict, log: Callable[[], None] | None = None) -> None:
        """After a GReaTer step: append it to steps.jsonl, call `log` (the tracker), then write the
        checkpoint (`save_progress`). Logged before the checkpoint: a kill between the two repeats the
        step (and its metrics) on resume, rather than leaving a checkpointed step that MLflow never saw."""
        append_jsonl(self.path / STEPS, record)
        if log is not None:
            log()
        self.save_progress(progress)

    def save_progress(self, progress: dict) -> None:
        """The run's checkpoint: its search's progress as `methods.run_method(checkpoint=...)` hands it
        over (the same progress a comparison's cell saves in partial/). A GReaTer run's keeps its
        `RunState` at the top ("state", with "history" and "usage" beside it), as runs before this
        format did; a baseline's is stored whole ("progress")."""
        if progress.get("method") == "greater":
            search = progress["search"]
            payload = {"state": search["state"], "history": search["history"], "usage": progress["usage"]}
        else:
            payload = {"progress": progress}
        write_checkpoint(self.path, payload)

    def saved_progress(self, method: str) -> dict | None:
        """The progress the last checkpoint holds, in `run_method(resume=...)`'s shape (None: none yet);
        a GReaTer checkpoint from before "history" was kept resumes with the history of this sitting only."""
        checkpoint = self.checkpoint or {}
        if method != "greater":
            return checkpoint.get("progress")
        if "state" not in checkpoint:
            return None
        search = {"state": checkpoint["state"], "history": checkpoint.get("history", [])}
        return {"method": "greater", "search": search, "usage": checkpoint.get("usage", {})}

    def initial_accuracy(self) -> float | None:
        """The initial prompt's test accuracy, when a previous process of this run scored it."""
        path = self.path / INITIAL_EVAL
        return read_json(path)["accuracy"] if path.exists() else None

    def save_initial_accuracy(self, prompt: str, accuracy: float) -> None:
        write_json(self.path / INITIAL_EVAL, {"prompt": prompt, "accuracy": accuracy})

    def steps_logged(self) -> int:
        return len(read_lines(self.path / STEPS))

    def append_history(self, entries: list[dict], name: str = "history.jsonl") -> None:
        for entry in entries:
            append_jsonl(self.path / name, entry)

    def write_prompt(self, prompt: str, artifact: dict) -> None:
        """prompt.txt, then prompt.json: `artifact`, as `greater.artifact.build` makes it from run.json."""
        write_atomic(self.path / PROMPT_TEXT, prompt + "\n")
        write_json(self.path / PROMPT_JSON, artifact)

    def write_result(self, fields: dict) -> None:
        """result.json: run.json's fields, then `fields`; written last, it marks the run finished."""
        write_json(self.path / RESULT, self.info | fields)
