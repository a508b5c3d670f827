"""What a task is: examples, an extraction sentence and an answer matcher, as data."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from greater.errors import GreaterError


@dataclass(frozen=True)
class Example:
    """One question with its gold answer in the task's canonical form (e.g. "B", "True", "42")."""

    question: str
    answer: str


@dataclass(frozen=True)
class Task:
    """A named task.

    `extractor` is the sentence appended after the model's reasoning that forces the answer
    into a parseable place; it ends right before the answer (the answer follows after one
    space, e.g. extractor "... is $" then " True").
    `load` returns all examples in a fixed order; `split` cuts them into train/test. A task with its
    own test set (GSM8K, FOLIO) has `load_test` too: then `load` gives the training pool only.
    `normalize` maps a raw answer (gold or predicted) to a comparable canonical string.
    """

    name: str
    description: str
    extractor: str
    answer_type: str  # "choice" | "yes_no" | "true_false" | "valid_invalid" | "number" | "text"
    load: Callable[[], list[Example]] = field(repr=False)
    normalize: Callable[[str], str] = field(repr=False)
    default_train: int = 50
    load_test: Callable[[], list[Example]] | None = field(default=None, repr=False)

    def answer_text(self, example: Example) -> str:
        """The gold answer as the model should write it after the extractor (no leading space)."""
        return example.answer

    def extract(self, continuation: str) -> str:
        """The model's answer from the text it generated after the extractor, normalised."""
        return self.normalize(first_answer_span(continuation))

    def is_correct(self, continuation: str, example: Example) -> bool:
        return self.extract(continuation) == self.normalize(example.answer)

    def split(self, train: int | None, test: int | None, seed: int) -> tuple[list[Example], list[Example]]:
        """Seeded shuffle, then the first `train` examples for optimization and up to `test` of the rest.

        With `load_test`, train is a seeded subset of `load()` and test one of `load_test()`.
        """
        examples = self.load()
        if not examples:
            raise GreaterError(f"task {self.name!r} has no examples")
        n_train = self.default_train if train is None else train
        pool = len(examples) if self.load_test else len(examples) - 1  # without a test set, keep one for it
        if n_train < 1 or n_train > pool:
            kind = "training examples" if self.load_test else "examples"
            raise GreaterError(
                f"task {self.name!r} has {len(examples)} {kind}; --train must be between 1 and {pool} (got {n_train})"
            )
        shuffled = _shuffled(examples, seed)
        rest = _shuffled(self.load_test(), seed) if self.load_test else shuffled[n_train:]
        if not rest:
            raise GreaterError(f"task {self.name!r} has no test examples")
        if test is not None:
            if test < 1:
                raise GreaterError(f"--test must be at least 1 (got {test})")
            rest = rest[:test]
        return shuffled[:n_train], rest


def _shuffled(examples: list[Example], seed: int) -> list[Example]:
    """A copy of `examples` in a seeded random order (the same on every platform)."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    return [examples[i] for i in order]


def first_answer_span(continuation: str) -> str:
    """The answer part of a generation after the extractor: up to the first newline, stripped."""
    text = continuation.strip()
    return text.splitlines()[0].strip() if text else ""
