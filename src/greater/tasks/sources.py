"""Where benchmark data comes from: a local folder (--data-dir / $GREATER_DATA_DIR) or the Hugging Face hub.

The data root holds one folder per benchmark (`bbh/`, `gsm8k/`, `folio/`); `--data-dir` may also point
straight at one benchmark's folder. The hub is used only when no data folder is given at all, and
only through `datasets` when it is installed (it is not a dependency of greater).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from greater.errors import GreaterError, setting_name

DATA_DIR_ENV = "GREATER_DATA_DIR"


def data_root(data_dir: str | os.PathLike[str] | None) -> Path | None:
    """The data folder given: `data_dir`, else $GREATER_DATA_DIR, else None."""
    raw = data_dir or os.environ.get(DATA_DIR_ENV) or None
    return None if raw is None else Path(raw).expanduser()


def find_file(
    data_dir: str | os.PathLike[str] | None, benchmark: str, stem: str, suffixes: Sequence[str]
) -> Path | None:
    """`<root>/<benchmark>/<stem><suffix>` or `<root>/<stem><suffix>` for the first suffix present; None if absent."""
    root = data_root(data_dir)
    if root is None:
        return None
    for folder in (root / benchmark, root):
        for suffix in suffixes:
            if (folder / f"{stem}{suffix}").is_file():
                return folder / f"{stem}{suffix}"
    return None


def data_hint(what: str) -> str:
    """How to give greater a local copy of `what` (the flag and the variable)."""
    return f"pass {setting_name('data_dir')} DIR (a folder holding {what}) or set {DATA_DIR_ENV}"


def hub_rows(dataset: str, config: str | None, split: str, what: str) -> list[dict]:
    """The rows of a Hugging Face hub dataset split through `datasets`; GreaterError when that is impossible.

    `what` names the local files that would replace the download, for the error message.
    """
    source = f"{dataset}{'/' + config if config else ''} ({split})"
    try:
        import datasets  # optional (not a dependency): only to fetch from the hub
    except ImportError:
        raise GreaterError(
            f"no local copy of {what}: {data_hint(what)}, or install `datasets` to fetch {source} from the hub"
        ) from None
    try:
        rows = datasets.load_dataset(dataset, config, split=split)
    except Exception as exc:  # network, authentication, a renamed dataset: all end the same way for the user
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise GreaterError(f"cannot load {source} from the Hugging Face hub ({reason}); {data_hint(what)}") from None
    return [dict(row) for row in rows]
