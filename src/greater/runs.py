"""The run directory: result.json, steps.jsonl (appended and fsynced per step), prompt.txt."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from greater.errors import GreaterError


def new_run_dir(requested: Path) -> tuple[Path, bool]:
    """`requested`, or `requested-N` for the first free N when it already holds files.

    Returns (path, renamed): an existing run is never overwritten.
    """
    path = requested
    n = 1
    while path.exists() and any(path.iterdir()):
        path = requested.with_name(f"{requested.name}-{n}")
        n += 1
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GreaterError(f"cannot create run directory {path}: {exc.strerror}") from exc
    return path, path != requested


def write_atomic(path: Path, text: str) -> None:
    """Write via a temp file + rename, so a crash leaves either the old or the new file, never half.
    Missing parent folders are made (an `--out` path may name a new folder)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except OSError as exc:
        raise GreaterError(f"cannot write {path}: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
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
    """Append one JSON line and fsync, so a finished step survives a kill."""
    try:
        with path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise GreaterError(f"cannot append to {path}: {exc.strerror}") from exc


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise GreaterError(f"{path} does not exist; is this a greater run directory?") from exc
    except json.JSONDecodeError as exc:
        raise GreaterError(f"{path} is not valid JSON (line {exc.lineno}): {exc.msg}") from exc


CHECKPOINT = "checkpoint.json"
CHECKPOINT_FORMAT = "greater-checkpoint/1"


def rng_states() -> dict:
    """Python, NumPy and torch RNG states as plain JSON."""
    import random

    import numpy as np
    import torch

    np_state = np.random.get_state()
    return {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state().tolist(),
    }


def restore_rng_states(states: dict) -> None:
    import random

    import numpy as np
    import torch

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
