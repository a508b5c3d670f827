"""The one exception type the CLI turns into a clean one-line error (exit code 2), its kinds, and how a
message names a setting: by its field name for a library caller (`train`), by its flag under the
command line (`--train`; `greater.cli` sets `flag_names`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from contextvars import ContextVar

_FLAG_NAMES: ContextVar[bool] = ContextVar("greater_flag_names", default=False)


def setting_name(name: str) -> str:
    """`name` (a field or flag dest, e.g. "max_new_tokens") as a message should show it: as the field
    for a library caller, as `--max-new-tokens` within `flag_names()`."""
    return "--" + name.replace("_", "-") if _FLAG_NAMES.get() else name


@contextlib.contextmanager
def flag_names() -> Iterator[None]:
    """Within the block, messages name settings by their command-line flags."""
    token = _FLAG_NAMES.set(True)
    try:
        yield
    finally:
        _FLAG_NAMES.reset(token)


class GreaterError(Exception):
    """Bad input or an unrecoverable condition the user can fix.

    The message is shown to the user as-is: say what is wrong, where, and what to do.
    """


class ResumeConflict(GreaterError):
    """A flag given with `--resume` that contradicts the value the run stored."""

    def __init__(self, flag: str, given: object, stored: object) -> None:
        name = setting_name(flag)
        super().__init__(
            f"{name} {given!r} differs from the run's stored value {stored!r}; "
            f"drop {name} to resume, or start a new run"
        )


def refuse_changed(
    given: Mapping[str, object], stored: Mapping[str, object], resolved: Mapping[str, object] | None = None
) -> None:
    """The resume check, for every kind of setting a run stores: raise `ResumeConflict` for the first
    setting of `given` (None: not given) whose value, or its `resolved` form where one is given (a device
    "auto" as the device it picked), differs from `stored`'s."""
    for name, value in given.items():
        if value is None:
            continue
        if (resolved or {}).get(name, value) != stored.get(name):
            raise ResumeConflict(name, value, stored.get(name))


class FolderInUse(GreaterError):
    """A folder (or a comparison's cell) whose lock another process holds (`greater.runs.FolderLock`)."""

    def __init__(self, what: str, pid: int | None) -> None:
        self.pid = pid
        super().__init__(
            f"{what} is in use by another greater process (pid {pid if pid is not None else 'unknown'}); "
            "wait for it to end, or stop it, then run the command again"
        )
