"""The one exception type the CLI turns into a clean one-line error (exit code 2)."""


class GreaterError(Exception):
    """Bad input or an unrecoverable condition the user can fix.

    The message is shown to the user as-is: say what is wrong, where, and what to do.
    """
