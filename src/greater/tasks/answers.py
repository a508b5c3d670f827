"""Answer normalisers per answer type, and default extractor sentences.

Each normaliser maps a raw answer (gold, or the first line the model wrote after the extractor)
to a canonical string; two answers match when their normal forms are equal. Every type first takes
off the wrapping the extractors invite (`unwrap`: quotes, `$`, `**`, parentheses, trailing
punctuation). Text that cannot be read as an answer of the type comes back unwrapped, so it will
not match a canonical gold.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation

from greater.errors import GreaterError

CHOICE_LETTERS = "ABCDEFGHIJKLMNOPQR"

_QUOTES = "\"'`“”‘’"
_LETTER_END = r"(?!\w|['’]\w)"  # a letter is a whole word: not "Because", "A's", "I'm" (a closing quote may follow)
_CHOICE = re.compile(rf"^(?:\(([A-Ra-r])\)|([A-Ra-r])\)|([A-R]){_LETTER_END})")  # "(b)", "b)", or a bare capital
_OR_LETTER = re.compile(  # right after the letter: " and C", ", (C)", "' or '$ C'" (an answer naming two options)
    rf"[\s{_QUOTES}$*.)]*(?:(?:,|/|&|\band\b|\bor\b)[\s{_QUOTES}$*(]*)+[A-R]{_LETTER_END}"
)
_OPTION_MARK = re.compile(r"\(([A-R])\)")  # "(C)" anywhere in an answer
_WRAPPING = _QUOTES + "$* "  # around an answer: quotes, "$ B$", "**B**"
_TRAILING = ".,;:!"  # after an answer
_BRACKETS = "()[]{}<>"
_NUMBER = re.compile(r"(-?)(?:\$\s*)?((?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+)")  # sign, "$", number
_OPTION = re.compile(r"^\s*\(([A-R])\)", re.MULTILINE)  # an option line of a multiple-choice question
_CANONICAL_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
FINAL_ANSWER_MARK = "####"


def unwrap(text: str) -> str:
    """The answer without the wrapping an extractor invites, whitespace collapsed; inner text kept.

    Takes off, repeatedly: surrounding whitespace, quotes (' " ` ‘ ’ “ ”), `$` and `*` ("$ B$", "**B**"),
    trailing . , ; : !, and parentheses around the whole answer when what is inside is not blank and
    has no bracket (so Dyck sequences like "( ] )" and "( )" stay as written).
    `"'$ B'."` -> "B", `"(apple pear)"` -> "apple pear".
    """
    text = " ".join(text.split())
    previous = None
    while text != previous:
        previous = text
        text = text.strip(_WRAPPING).rstrip(_TRAILING)
        inner = text[1:-1]
        if text[:1] == "(" and text[-1:] == ")" and inner.strip() and not any(char in _BRACKETS for char in inner):
            text = inner
    return text


def normalize_choice(text: str) -> str:
    """`(B)`, `B`, `$ B`, `B)`, `(b)`, `B.`, `$B$`, `'B'`, `B'`, `**B**`, "(B) text" -> "B".

    Anything else comes back unwrapped and upper-cased; so does an answer naming a second option
    ("B and C", "B or C", "'$ A' or '$ B'", "(A) ... (B) ...").
    """
    text = unwrap(text)
    match = _CHOICE.match(text)
    if match is None:
        return text.upper()
    letter = next(group for group in match.groups() if group).upper()
    rest = text[match.end() :]
    if _OR_LETTER.match(rest) or any(other != letter for other in _OPTION_MARK.findall(rest)):
        return text.upper()
    return letter


def option_letters(question: str) -> list[str]:
    """The letters of the options listed in a question, one per line as "(A) ...", in order."""
    return _OPTION.findall(question)


def normalize_number(text: str) -> str:
    """The first number in the text, canonical.

    "1,234"/"$1234"/"1234.0" -> "1234", "−7"/"-$7" -> "-7", "2.50" -> "2.5", ".5" -> "0.5"; without a number,
    the unwrapped text.
    """
    text = unwrap(text)
    match = _NUMBER.search(text.replace("\u2212", "-"))
    if match is None:
        return text
    try:
        value = Decimal(match.group(1) + match.group(2).replace(",", ""))
    except InvalidOperation:  # pragma: no cover - the pattern only matches valid decimals
        return text
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def _first_word(words: Sequence[str]) -> Callable[[str], str]:
    """A normaliser returning the first of `words` found in the text (whole word, any case), as spelled in `words`."""
    alternatives = sorted(words, key=len, reverse=True)  # "invalid" before "valid" at the same position
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, alternatives)) + r")\b", re.IGNORECASE)
    canonical = {word.lower(): word for word in words}

    def normalize(text: str) -> str:
        match = pattern.search(text)
        return canonical[match.group(1).lower()] if match else unwrap(text)

    normalize.__doc__ = f"The first of {', '.join(words)} in the text (any case), else the unwrapped text."
    return normalize


# answer types whose answers are one of a few words, in the order the extractor lists them
LABELS: dict[str, tuple[str, ...]] = {
    "yes_no": ("Yes", "No"),
    "true_false": ("True", "False"),
    "valid_invalid": ("valid", "invalid"),
    "true_false_uncertain": ("True", "False", "Uncertain"),
}
normalize_yes_no = _first_word(LABELS["yes_no"])
normalize_true_false = _first_word(LABELS["true_false"])
normalize_valid_invalid = _first_word(LABELS["valid_invalid"])
normalize_true_false_uncertain = _first_word(LABELS["true_false_uncertain"])


normalize_text = unwrap  # free text: only the wrapping comes off; case and inner punctuation stay


NORMALIZERS: dict[str, Callable[[str], str]] = {
    "choice": normalize_choice,
    "number": normalize_number,
    "yes_no": normalize_yes_no,
    "true_false": normalize_true_false,
    "valid_invalid": normalize_valid_invalid,
    "true_false_uncertain": normalize_true_false_uncertain,
    "text": normalize_text,
}

ANSWER_TYPES = tuple(NORMALIZERS)

LABEL_EXTRACTOR = "Therefore, in one word ({labels}), the answer is:"

_FORMATS = {
    "number": "arabic numerals only",
    "text": "on one line, nothing else",
} | {kind: "use exact format: " + " or ".join(f"'$ {word}'" for word in words) for kind, words in LABELS.items()}


def normalizer_for(answer_type: str, labels: Sequence[str] | None = None) -> Callable[[str], str]:
    """The normaliser of an answer type; GreaterError for an unknown type. A text answer with `labels`
    (a label task: "positive"/"negative") is the first label in the text, any case, as the labels spell it."""
    try:
        normalize = NORMALIZERS[answer_type]
    except KeyError:
        raise GreaterError(f"unknown answer type {answer_type!r}; expected one of: {', '.join(ANSWER_TYPES)}") from None
    return _first_word(tuple(labels)) if answer_type == "text" and labels else normalize


MAX_INFERRED_LABELS = 10
MAX_LABEL_WORDS = 4


def infer_labels(golds: Sequence[str]) -> tuple[str, ...] | None:
    """The labels of a text task whose gold answers are a few short words or phrases, each given more than
    once ("positive", "negative", ...), sorted (the extractor names them: the same whatever the row order);
    None for anything else."""
    counts: dict[str, int] = {}
    for gold in golds:
        counts[gold] = counts.get(gold, 0) + 1
    if not 2 <= len(counts) <= MAX_INFERRED_LABELS or min(counts.values()) < 2:
        return None
    if any(not label or len(label.split()) > MAX_LABEL_WORDS for label in counts):
        return None
    lowered = {label.lower() for label in counts}
    if len(lowered) < len(counts):  # "Yes"/"yes" would be one label to the matcher
        return None
    return tuple(sorted(counts, key=str.lower))


def extractor_for(answer_type: str, choices: Sequence[str] | None = None) -> str:
    """Default extractor sentence for an answer type, ending in "is $" (the answer follows after a space).

    For "choice", `choices` are the option letters (e.g. "ABC"); without them the format says "etc.".
    A "text" answer with `choices` (a label task) gets `label_extractor` instead.
    """
    normalizer_for(answer_type)  # validates the type
    if answer_type == "text" and choices:
        return label_extractor(choices)
    if answer_type == "choice":
        letters = [f"'$ {letter}'" for letter in (choices or [])]
        if not letters:
            spec = "'$ A', '$ B', etc."
        elif len(letters) <= 7:
            spec = " or ".join(letters)
        else:
            spec = f"{letters[0]}, {letters[1]}, ..., {letters[-1]}"
        fmt = f"use exact format: {spec}"
    else:
        fmt = _FORMATS[answer_type]
    return f"Therefore, the final answer ({fmt}) is $"


def label_extractor(labels: Sequence[str]) -> str:
    """The extractor of a label task: the labels named, no "$" (after "$" a small model writes a number;
    bench/label_extractors.py measured the wording on train and dev)."""
    return LABEL_EXTRACTOR.format(labels=named_labels(labels))


def named_labels(labels: Sequence[str]) -> str:
    """The labels as a label extractor names them: "a, b or c"."""
    return ", ".join(labels[:-1]) + f" or {labels[-1]}" if len(labels) > 1 else labels[0]


def final_answer(text: str) -> str:
    """The text after the last "####" (GSM8K's final-answer mark), or the whole text when there is none."""
    return text.rpartition(FINAL_ANSWER_MARK)[2] if FINAL_ANSWER_MARK in text else text


def gold_problem(gold: str, answer_type: str, choices: Sequence[str] | None = None) -> str | None:
    """Why a canonical gold answer is unusable for the answer type (and `choices`, when given), or None if it fits.

    Choice answers must be one letter A-R (one of `choices` when given); word answers one of the type's
    words; numbers a plain number; text non-empty (and one of `choices` when given).
    """
    if not gold:
        return "is empty"
    if answer_type == "number":
        return None if _CANONICAL_NUMBER.fullmatch(gold) else "is not a number"
    if answer_type == "choice":
        allowed = list(choices or CHOICE_LETTERS)
    elif answer_type in LABELS:
        allowed = list(LABELS[answer_type])
    else:
        allowed = [normalize_text(choice) for choice in choices or []]
    return None if not allowed or gold in allowed else f"is not one of {', '.join(allowed)}"


def infer_answer_type(targets: Sequence[str]) -> str:
    """The most specific answer type every target already has the canonical form of (up to case, "(B)", "$ B"),
    else text."""
    for answer_type in ("choice", "true_false", "yes_no", "valid_invalid", "true_false_uncertain", "number"):
        normalize = NORMALIZERS[answer_type]
        if all(
            gold_problem(normalize(t), answer_type) is None
            and normalize(t).lower() == t.strip().lstrip("$").strip().strip("()").lower()
            for t in targets
        ):
            return answer_type
    return "text"
