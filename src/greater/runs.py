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
    """Write via a temp file + rename, so a crash leaves either the old or the new file, never half."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise GreaterError(f"cannot write {path}: {exc.strerror}") from exc


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
