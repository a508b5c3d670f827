"""What a task is: examples, an extraction sentence and an answer matcher, as data."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from greater.errors import GreaterError, setting_name
from greater.tasks.answers import LABELS


@dataclass(frozen=True)
class Example:
    """One question with its gold answer in the task's canonical form (e.g. "B", "True", "42").

    `where` names the row it came from ("data.jsonl, line 12") when it was read from a file; it takes
    no part in equality, so the same question and answer are the same example wherever they were read.
    """

    question: str
    answer: str
    where: str = field(default="", compare=False, repr=False)


@dataclass(frozen=True)
class Task:
    """A named task.

    `extractor` is the sentence appended after the model's reasoning that forces the answer
    into a parseable place; it ends right before the answer (`target_text`: extractor "... is $"
    then "True").
    `load` returns all examples in a fixed order; `splits` cuts them into train/dev/test. A task with its
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
    default_dev: int = 0  # the paper's BBH protocol: 50 train / 100 dev / 100 test
    default_test: int | None = None  # None: every example left
    load_test: Callable[[], list[Example]] | None = field(default=None, repr=False)
    choices: tuple[str, ...] | None = None  # the answers every question chooses from, when declared (custom tasks)

    @property
    def answer_set(self) -> tuple[str, ...] | None:
        """The fixed set of answers every question has (declared choices, or the answer type's labels:
        True/False, Yes/No, ...), or None: numbers, free text, options that differ per question."""
        return self.choices or LABELS.get(self.answer_type)

    def answer_text(self, example: Example) -> str:
        """The gold answer as the model should write it after the extractor (no leading space)."""
        return example.answer

    def target_text(self, example: Example) -> str:
        """The gold answer as the loss expects it right after the extractor: with no space after an
        extractor ending in "$" or whitespace (models write "$True" and "$48" whatever the format
        sentence shows; docs/fidelity.md), after one space otherwise ("... the answer is" + " True")."""
        text = self.answer_text(example)
        last = self.extractor[-1:]
        return text if last == "$" or last.isspace() else " " + text

    def extract(self, continuation: str) -> str:
        """The model's answer from the text it generated after the extractor, normalised."""
        return self.normalize(first_answer_span(continuation))

    def is_correct(self, continuation: str, example: Example) -> bool:
        """Whether the answer extracted from `continuation` (the text after the extractor) is the gold one."""
        return self.extract(continuation) == self.normalize(example.answer)

    def split(self, train: int | None, test: int | None, seed: int) -> tuple[list[Example], list[Example]]:
        """Train and test examples without a dev set: `splits(train, 0, test, seed)`."""
        drawn = self.splits(train, 0, test, seed)
        return drawn.train, drawn.test

    def splits(self, train: int | None, dev: int | None, test: int | None, seed: int) -> Splits:
        """Seeded shuffle cut into train / test / dev (None: the task's defaults).

        Train is the first `train` examples, test follows it and dev is taken from the end, so the
        test examples do not depend on whether a dev set is drawn (when both fit). With `load_test`,
        train and dev come from a seeded shuffle of `load()` and test from one of `load_test()`.
        When the default sizes do not fit, dev and test share what is left and `note` says so.
        """
        examples = self.load()
        if not examples:
            raise GreaterError(f"task {self.name!r} has no examples")
        n_train = self.default_train if train is None else train
        n_dev = self.default_dev if dev is None else dev
        pool = len(examples) if self.load_test else len(examples) - 1  # without a test set, keep one for it
        if n_train < 1 or n_train > pool:
            kind = "training examples" if self.load_test else "examples"
            raise GreaterError(
                f"task {self.name!r} has {len(examples)} {kind}; {setting_name('train')} must be between 1 and "
                f"{pool} (got {n_train})"
            )
        if test is not None and test < 1:
            raise GreaterError(f"{setting_name('test')} must be at least 1 (got {test})")
        if n_dev < 0:
            raise GreaterError(f"{setting_name('dev')} must be 0 or more (got {n_dev})")
        n_test = self.default_test if test is None else test
        note = ""
        left = len(examples) - n_train  # what dev (and, without a test set, test) are drawn from
        if not self.load_test and dev is None and n_dev and n_dev + (n_test or 1) > left:
            if test is None:  # the defaults do not fit: dev and test share what is left
                n_dev, n_test = left // 2, left - left // 2
            else:  # the test size asked for comes first
                n_dev = max(0, left - n_test)
            note = (
                f"task {self.name!r} has {len(examples)} examples, too few for "
                f"{n_train} train / {self.default_dev} dev / {n_test if test else self.default_test or 'all'} test; "
                f"using {n_train} train / {n_dev} dev / {min(n_test, left - n_dev)} test"
            )
        room = left if self.load_test else left - 1
        if n_dev > room:
            raise GreaterError(
                f"task {self.name!r}: {setting_name('dev')} must be at most {room} with {setting_name('train')} "
                f"{n_train} (got {n_dev})"
            )
        shuffled = _shuffled(examples, seed)
        if self.load_test:
            rest = _shuffled(self.load_test(), seed)
            dev_examples = shuffled[n_train : n_train + n_dev]
        else:
            rest = shuffled[n_train : len(shuffled) - n_dev]
            dev_examples = shuffled[len(shuffled) - n_dev :]
        if not rest:
            raise GreaterError(f"task {self.name!r} has no test examples")
        return Splits(shuffled[:n_train], dev_examples, rest[:n_test] if n_test is not None else rest, note)


@dataclass(frozen=True)
class Splits:
    """A task's examples cut for one run; `note` is non-empty when the default sizes had to shrink."""

    train: list[Example]
    dev: list[Example]
    test: list[Example]
    note: str = ""


def _shuffled(examples: list[Example], seed: int) -> list[Example]:
    """A copy of `examples` in a seeded random order (the same on every platform)."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    return [examples[i] for i in order]


def first_answer_span(continuation: str) -> str:
    """The answer part of a generation after the extractor: up to the first newline, stripped."""
    text = continuation.strip()
    return text.splitlines()[0].strip() if text else ""


def fingerprint(train: list[Example], test: list[Example], dev: list[Example] | tuple = ()) -> str:
    """A short hash of the examples of a split (with no dev set, the same as before dev sets existed):
    a run stores it, so a resume on changed data is refused."""
    digest = hashlib.sha256()
    for ex in [*train, None, *test, *([None, *dev] if dev else [])]:
        digest.update(b"|" if ex is None else f"{ex.question}\x00{ex.answer}\n".encode())
    return digest.hexdigest()[:16]
