"""How a command uses the machine: where the model runs (`Runtime`: device, dtype, device map, generator;
loading the model there), torch's thread count, and the wall-clock budget of a run (--max-time)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from greater.errors import GreaterError, refuse_changed, setting_name
from greater.inference.backends.vllm import VLLMGenerator
from greater.inference.device import resolve_placement
from greater.inference.generation import stop_token_ids
from greater.inference.model import load_model, model_source

GENERATORS = ("hf", "vllm")
# what a run from before the device flags ran with
_OLD_RUNTIME = {"device": "cpu", "dtype": "float32", "device_map": None, "generator": "hf"}


@dataclass(frozen=True)
class Runtime:
    """Where and how the model runs, as asked for (None: not given; "auto" device and dtype are resolved
    by `resolve`). generator: "hf" (transformers) or "vllm" (GPU only)."""

    device: str | None = None
    dtype: str | None = None
    device_map: str | None = None
    generator: str | None = None

    def resolve(self, stored: dict | None = None) -> dict:
        """Device, dtype, device map and generator, resolved (greater.inference.device), as run.json's "runtime"
        stores them; with `stored` (a resumed run's) the run's own, and a given value that resolves to
        something else is refused."""
        base = {} if stored is None else _OLD_RUNTIME | stored

        def pick(key: str, default: object) -> object:
            given = getattr(self, key)
            return given if given is not None else base.get(key, default)

        device_map = pick("device_map", None)
        device = self.device if self.device is not None else "auto" if device_map else base.get("device", "auto")
        generator = pick("generator", "hf")
        if generator == "vllm" and importlib.util.find_spec("vllm") is None:  # before any model is loaded
            raise GreaterError(f"{setting_name('generator')} vllm needs vLLM: pip install 'greater[vllm]' (GPU only)")
        runtime = resolve_placement(device, pick("dtype", "auto"), device_map).to_json() | {"generator": generator}
        if generator == "vllm" and not runtime["device"].startswith("cuda"):
            raise GreaterError(
                f"{setting_name('generator')} vllm runs on a GPU; use {setting_name('device')} cuda, or "
                f"{setting_name('generator')} hf on a CPU"
            )
        if stored is not None:
            given = {key: getattr(self, key) for key in ("device", "dtype", "device_map", "generator")}
            refuse_changed(given, base, resolved=runtime)
        return runtime


def load(model: str | None, runtime: dict, trust_remote_code: bool = False):
    """The model and tokenizer, placed as a resolved `runtime` (`Runtime.resolve`) says."""
    where = runtime["device"] + (" + device map" if runtime["device_map"] else "")
    print(f"loading model ... ({where}, {runtime['dtype']})", file=sys.stderr)
    return load_model(
        model,
        trust_remote_code=trust_remote_code,
        device=runtime["device"],
        dtype=runtime["dtype"],
        device_map=runtime["device_map"],
    )


def reasoning_generator(name: str | None, model, tokenizer, runtime: dict, trust_remote_code: bool = False):
    """The reasoning generator `runtime` names: None for transformers (the engine builds its own), or vLLM."""
    if runtime["generator"] != "vllm":
        return None
    print("starting vLLM ...", file=sys.stderr)
    return VLLMGenerator(
        model_source(name, runtime["dtype"]),
        stop_ids=stop_token_ids(model, tokenizer),
        dtype=runtime["dtype"],
        trust_remote_code=trust_remote_code,
    )


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
            raise GreaterError(
                f"{setting_name('max_time')} {text!r} is not a duration; write e.g. 90s, 45m, 2h or 1h30m"
            ) from None
        seconds = sum(float(n) * _UNIT_SECONDS[u.lower()] for n, u in parts)
    if seconds <= 0:
        raise GreaterError(f"{setting_name('max_time')} must be more than zero (got {text!r})")
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


class OutOfTime(Exception):
    """The time budget was spent; raised after a checkpoint, so the run resumes where it stopped."""

    def __init__(self, step: int) -> None:
        super().__init__(step)
        self.step = step


class RunClock:
    """A run's wall-clock budget (`limit` seconds from `started`, None: none), and the projection printed
    after the first step of this process."""

    def __init__(self, limit: float | None, started: float | None = None, resumed: bool = False) -> None:
        self.limit, self.resumed = limit, resumed
        self.started = time.monotonic() if started is None else started
        self.test_seconds: float | None = None  # the initial test evaluation, when it ran in this process
        self.projected = False

    def after_step(self, bar, record, step: int, config, n_dev: int, n_test: int) -> None:
        """After step `step`: the first time, write the projected time left on `bar`; then `check`."""
        if not self.projected:
            self.projected = True
            per_step = float(record.seconds.get("total", 0.0))
            rest = per_step * (config.steps - step)
            if self.test_seconds:  # the final test evaluation, and the dev pass scaled by its size
                rest += self.test_seconds * (1 + config.keep_top * n_dev / max(n_test, 1))
            whole = "the rest of the run" if self.resumed else "the whole run"
            total = rest if self.resumed else time.monotonic() - self.started + rest
            finish = time.strftime("%H:%M", time.localtime(time.time() + rest))
            bar.write(
                f"projected time for {whole}: about {format_duration(total)} "
                f"(first step {format_duration(per_step)}, {config.steps - step} more; done around {finish})",
                file=sys.stdout,
            )
        self.check(step)

    def check(self, step: int) -> None:
        """Raise `OutOfTime(step)` once the budget is spent."""
        if self.limit is not None and time.monotonic() - self.started >= self.limit:
            raise OutOfTime(step)


class Terminated(Exception):
    """SIGTERM, raised in the main thread (within `sigterm_interrupts`) so a command stops as on Ctrl-C."""


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated` in the main thread."""

    def on_sigterm(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
