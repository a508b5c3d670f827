"""Wall-clock seconds per named phase of a step (`StepRecord.seconds`)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

# the phases of one GReaTer step, in the order steps.jsonl lists them; selection_generation and
# selection_scoring are parts of selection (scoring is fused into generation with the shared cache)
STEP_PHASES = ("reasoning", "gradient", "proposal", "selection_generation", "selection_scoring", "selection", "total")


class PhaseTimer:
    """Seconds per phase, summed over every `with timer(phase):` block; blocks may nest.

    Phases named at construction are reported (as 0.0 when never timed) in that order, others after
    them in the order they were first timed."""

    def __init__(self, phases: Iterable[str] = ()) -> None:
        self._seconds: dict[str, float] = dict.fromkeys(phases, 0.0)

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self._seconds[phase] = self._seconds.get(phase, 0.0) + time.perf_counter() - started

    def seconds(self) -> dict[str, float]:
        """Seconds per phase, rounded to 0.1 ms."""
        return {phase: round(seconds, 4) for phase, seconds in self._seconds.items()}
