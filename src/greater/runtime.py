"""How a command uses the machine: torch's thread count, and the wall-clock budget of a run (--max-time)."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import torch

from greater.errors import GreaterError


def physical_cores() -> int:
    """Physical cores this process may run on: distinct (package, core) pairs of the allowed CPUs.

    Hyper-threads share a core's arithmetic units, so a torch thread per logical CPU only adds contention.
    Falls back to the number of allowed logical CPUs where the topology cannot be read (non-Linux).
    """
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    cores = set()
    for cpu in allowed:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            package = (topology / "physical_package_id").read_text().strip()
            core = (topology / "core_id").read_text().strip()
        except OSError:
            return max(1, len(allowed))
        cores.add((package, core))
    return max(1, len(cores))


def set_threads(requested: int | None) -> dict:
    """Set torch's intra-op thread count and say where it came from.

    `requested` (--threads) wins; else OMP_NUM_THREADS, which torch already honours; else the physical
    cores. Returns {"threads": n, "from": "--threads" | "OMP_NUM_THREADS" | "physical cores"}.
    """
    if requested is not None:
        threads, source = requested, "--threads"
    elif os.environ.get("OMP_NUM_THREADS", "").strip().isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        threads, source = int(os.environ["OMP_NUM_THREADS"]), "OMP_NUM_THREADS"
    else:
        threads, source = physical_cores(), "physical cores"
    torch.set_num_threads(threads)
    return {"threads": threads, "from": source}


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(h|m|s)", re.IGNORECASE)
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0}


def parse_duration(text: str) -> float:
    """Seconds in "90s", "45m", "2h", "1h30m" or a bare number of seconds; GreaterError when unreadable."""
    compact = text.strip().replace(" ", "")
    try:
        seconds = float(compact)
    except ValueError:
        parts = _DURATION.findall(compact)
        if not parts or "".join(f"{n}{u}" for n, u in parts).lower() != compact.lower():
            raise GreaterError(f"--max-time {text!r} is not a duration; write e.g. 90s, 45m, 2h or 1h30m") from None
        seconds = sum(float(n) * _UNIT_SECONDS[u.lower()] for n, u in parts)
    if seconds <= 0:
        raise GreaterError(f"--max-time must be more than zero (got {text!r})")
    return seconds


def format_duration(seconds: float) -> str:
    """'42s', '3m 05s', '2h 10m': rounded for people reading a projection."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s" if seconds >= 10 else f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


class Budget:
    """A wall-clock allowance started when the command started; `spent()` once it has run out."""

    def __init__(self, seconds: float | None, started: float | None = None) -> None:
        self.seconds = seconds
        self.started = time.monotonic() if started is None else started

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def spent(self) -> bool:
        return self.seconds is not None and self.elapsed() >= self.seconds
