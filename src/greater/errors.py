"""The one exception type the CLI turns into a clean one-line error (exit code 2), and its kinds."""


class GreaterError(Exception):
    """Bad input or an unrecoverable condition the user can fix.

    The message is shown to the user as-is: say what is wrong, where, and what to do.
    """


class ResumeConflict(GreaterError):
    """A flag given with `--resume` that contradicts the value the run stored."""

    def __init__(self, flag: str, given: object, stored: object) -> None:
        name = "--" + flag.replace("_", "-")
        super().__init__(
            f"{name} {given!r} differs from the run's stored value {stored!r}; "
            f"drop {name} to resume, or start a new run"
        )


class FolderInUse(GreaterError):
    """A folder (or a comparison's cell) whose lock another process holds (`greater.runs.FolderLock`)."""

    def __init__(self, what: str, pid: int | None) -> None:
        self.pid = pid
        super().__init__(
            f"{what} is in use by another greater process (pid {pid if pid is not None else 'unknown'}); "
            "wait for it to end, or stop it, then run the command again"
        )
