"""Answer normalisers per answer type, and default extractor sentences.

Each normaliser maps a raw answer (gold, or the first line the model wrote after the extractor)
to a canonical string; two answers match when their normal forms are equal. Text that cannot be
read as an answer of the type comes back (nearly) as-is, so it will not match a canonical gold.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation

from greater.errors import GreaterError

CHOICE_LETTERS = "ABCDEFGHIJKLMNOPQR"

_CHOICE = re.compile(
    r"^\$?\s*(?:\(([A-Ra-r])\)|([A-Ra-r])\)|([A-R])(?![\w'’]))"
)  # "(b)", "b)", or a bare capital letter not starting a word
_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?")
_QUOTES = "\"'`“”‘’"


def normalize_choice(text: str) -> str:
    """`(B)`, `B`, `$ B`, `B)`, `(b)`, `B.`, `$B$`, "(B) text" -> "B"; anything else: stripped, upper-cased."""
    text = text.strip()
    match = _CHOICE.match(text)
    if match is None:
        return text.upper()
    return next(group for group in match.groups() if group).upper()


def normalize_number(text: str) -> str:
    """The first number in the text, canonical: "1,234"/"$1234"/"1234.0" -> "1234", "−7" -> "-7", "2.50" -> "2.5"."""
    text = text.strip()
    match = _NUMBER.search(text.replace("\u2212", "-"))
    if match is None:
        return text
    try:
        value = Decimal(match.group().replace(",", ""))
    except InvalidOperation:  # pragma: no cover - the pattern only matches valid decimals
        return text
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def _first_word(words: Sequence[str]) -> Callable[[str], str]:
    """A normaliser returning the first of `words` found in the text (whole word, any case), as spelled in `words`."""
    pattern = re.compile(r"\b(" + "|".join(words) + r")\b", re.IGNORECASE)
    canonical = {word.lower(): word for word in words}

    def normalize(text: str) -> str:
        match = pattern.search(text)
        return canonical[match.group(1).lower()] if match else text.strip()

    normalize.__doc__ = f"The first of {', '.join(words)} in the text (any case), else the stripped text."
    return normalize


normalize_yes_no = _first_word(["Yes", "No"])
normalize_true_false = _first_word(["True", "False"])
normalize_valid_invalid = _first_word(["invalid", "valid"])  # "invalid" first: it contains "valid"


def normalize_text(text: str) -> str:
    """Whitespace collapsed; surrounding `$`, quotes and a trailing period removed; case kept."""
    text = " ".join(text.split())
    previous = None
    while text != previous:
        previous = text
        text = text.strip("$ ").strip(_QUOTES).removesuffix(".").strip()
    return text


NORMALIZERS: dict[str, Callable[[str], str]] = {
    "choice": normalize_choice,
    "number": normalize_number,
    "yes_no": normalize_yes_no,
    "true_false": normalize_true_false,
    "valid_invalid": normalize_valid_invalid,
    "text": normalize_text,
}

ANSWER_TYPES = tuple(NORMALIZERS)

_FORMATS = {
    "number": "arabic numerals only",
    "yes_no": "use exact format: '$ Yes' or '$ No'",
    "true_false": "use exact format: '$ True' or '$ False'",
    "valid_invalid": "use exact format: '$ valid' or '$ invalid'",
    "text": "on one line, nothing else",
}


def normalizer_for(answer_type: str) -> Callable[[str], str]:
    """The normaliser of an answer type; GreaterError for an unknown type."""
    try:
        return NORMALIZERS[answer_type]
    except KeyError:
        raise GreaterError(f"unknown answer type {answer_type!r}; expected one of: {', '.join(ANSWER_TYPES)}") from None


def extractor_for(answer_type: str, choices: Sequence[str] | None = None) -> str:
    """Default extractor sentence for an answer type, ending in "is $" (the answer follows after a space).

    For "choice", `choices` are the option letters (e.g. "ABC"); without them the format says "etc.".
    """
    normalizer_for(answer_type)  # validates the type
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
