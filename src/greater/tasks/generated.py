"""Built-in tasks generated from a fixed seed: no data files, the same 250 examples everywhere.

Only `random.Random(seed)` with integer seeds is used (stable across platforms and Python versions).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from greater.errors import GreaterError
from greater.tasks.answers import extractor_for, normalizer_for
from greater.tasks.base import Example, Task

POOL_SIZE = 250
MAX_MISSES = 10_000  # draws in a row without a new example before a pool is refused


def pool(
    seed: int, make: Callable[[random.Random], Example], balance: tuple[str, ...] = (), size: int = POOL_SIZE
) -> list[Example]:
    """`size` distinct examples from `make`; with `balance`, answers cycle through those values.
    A generator that has fewer distinct examples than that is refused rather than drawn from forever."""
    rng = random.Random(seed)
    examples: list[Example] = []
    seen: set[str] = set()
    misses = 0
    while len(examples) < size:
        example = make(rng)
        wanted = balance[len(examples) % len(balance)] if balance else example.answer
        if example.question not in seen and example.answer == wanted:
            seen.add(example.question)
            examples.append(example)
            misses = 0
        elif (misses := misses + 1) > MAX_MISSES:
            raise GreaterError(
                f"only {len(examples)} distinct examples of {size} after {MAX_MISSES} draws in a row gave none new"
                + (f" with the answer {wanted!r}" if balance else "")
            )
    rng.shuffle(examples)
    return examples


# --- boolean expressions -------------------------------------------------------------------------


def evaluate_boolean(expression: str) -> bool:
    """Evaluate a space-separated Boolean expression ("not ( True ) and False") with Python precedence.

    Grammar: or_expr := and_expr ("or" and_expr)*; and_expr := not_expr ("and" not_expr)*;
    not_expr := "not" not_expr | "(" or_expr ")" | "True" | "False".
    """
    tokens = expression.split()
    pos = 0

    def peek() -> str | None:
        return tokens[pos] if pos < len(tokens) else None

    def take(expected: str | None = None) -> str:
        nonlocal pos
        token = peek()
        if token is None or (expected is not None and token != expected):
            raise GreaterError(
                f"bad Boolean expression {expression!r}: expected {expected or 'a value'} at token {pos + 1}"
            )
        pos += 1
        return token

    def or_expr() -> bool:
        value = and_expr()
        while peek() == "or":
            take()
            right = and_expr()  # evaluate both sides: no short-circuit skipping of tokens
            value = value or right
        return value

    def and_expr() -> bool:
        value = not_expr()
        while peek() == "and":
            take()
            right = not_expr()
            value = value and right
        return value

    def not_expr() -> bool:
        token = take()
        if token == "not":
            return not not_expr()
        if token == "(":
            value = or_expr()
            take(")")
            return value
        if token in ("True", "False"):
            return token == "True"
        raise GreaterError(f"bad Boolean expression {expression!r}: unexpected {token!r} at token {pos}")

    result = or_expr()
    if peek() is not None:
        raise GreaterError(f"bad Boolean expression {expression!r}: unexpected {peek()!r} at token {pos + 1}")
    return result


def _boolean_operand(rng: random.Random) -> str:
    text = rng.choice(["True", "False"])
    if rng.random() < 0.3:
        text = f"( {text} )"
    return " ".join(["not"] * rng.choice([0, 0, 1, 1, 2]) + [text])


def _boolean_expression(rng: random.Random, operands: int) -> str:
    if operands == 1:
        return _boolean_operand(rng)
    left = rng.randint(1, operands - 1)
    text = f"{_boolean_expression(rng, left)} {rng.choice(['and', 'or'])} {_boolean_expression(rng, operands - left)}"
    if rng.random() < 0.4:
        text = f"{'not ' if rng.random() < 0.4 else ''}( {text} )"
    return text


def _boolean_example(rng: random.Random) -> Example:
    expression = _boolean_expression(rng, rng.randint(2, 4))
    return Example(f"{expression} is", str(evaluate_boolean(expression)))


# --- arithmetic ----------------------------------------------------------------------------------


def _arithmetic_expression(rng: random.Random, operations: int) -> tuple[str, int]:
    """An expression with `operations` binary operations on integers in -9..9, and its value."""
    if operations == 0:
        value = rng.randint(-9, 9)
        return str(value), value
    left_ops = rng.randint(0, operations - 1)
    left, a = _arithmetic_expression(rng, left_ops)
    right, b = _arithmetic_expression(rng, operations - 1 - left_ops)
    op = rng.choice("+-*")
    value = a + b if op == "+" else a - b if op == "-" else a * b
    return f"({left} {op} {right})", value


def _arithmetic_example(rng: random.Random) -> Example:
    expression, value = _arithmetic_expression(rng, rng.randint(2, 3))
    return Example(f"{expression} =", str(value))


# --- object counting -----------------------------------------------------------------------------

OBJECT_CATEGORIES: dict[str, list[tuple[str, str]]] = {
    "fruits": [
        ("apple", "apples"),
        ("banana", "bananas"),
        ("orange", "oranges"),
        ("peach", "peaches"),
        ("plum", "plums"),
        ("grape", "grapes"),
        ("strawberry", "strawberries"),
        ("nectarine", "nectarines"),
        ("raspberry", "raspberries"),
        ("blackberry", "blackberries"),
    ],
    "vegetables": [
        ("carrot", "carrots"),
        ("potato", "potatoes"),
        ("onion", "onions"),
        ("cabbage", "cabbages"),
        ("yam", "yams"),
        ("head of garlic", "heads of garlic"),
        ("stalk of celery", "stalks of celery"),
        ("head of broccoli", "heads of broccoli"),
        ("lettuce head", "lettuce heads"),
        ("cauliflower", "cauliflowers"),
    ],
    "animals": [
        ("cat", "cats"),
        ("dog", "dogs"),
        ("rabbit", "rabbits"),
        ("goat", "goats"),
        ("cow", "cows"),
        ("pig", "pigs"),
        ("snake", "snakes"),
        ("frog", "frogs"),
        ("duck", "ducks"),
        ("mouse", "mice"),
        ("donkey", "donkeys"),
        ("fish", "fish"),
    ],
    "musical instruments": [
        ("piano", "pianos"),
        ("flute", "flutes"),
        ("violin", "violins"),
        ("trumpet", "trumpets"),
        ("drum", "drums"),
        ("clarinet", "clarinets"),
        ("trombone", "trombones"),
        ("accordion", "accordions"),
        ("cello", "cellos"),
    ],
    "household objects": [
        ("car", "cars"),
        ("chair", "chairs"),
        ("table", "tables"),
        ("bed", "beds"),
        ("lamp", "lamps"),
        ("oven", "ovens"),
        ("stove", "stoves"),
        ("couch", "couches"),
        ("microwave", "microwaves"),
        ("toaster", "toasters"),
        ("fridge", "fridges"),
    ],
}
_COUNTED = ["fruits", "vegetables", "animals", "musical instruments"]  # "objects" would be ambiguous
_COUNT_WORDS = ["zero", "one", "two", "three", "four", "five"]


def _object_phrase(count: int, names: tuple[str, str]) -> str:
    singular, plural = names
    if count > 1:
        return f"{_COUNT_WORDS[count]} {plural}"
    return f"{'an' if singular[0] in 'aeiou' else 'a'} {singular}"


def _object_counting_example(rng: random.Random) -> Example:
    target = rng.choice(_COUNTED)
    others = [names for category, items in OBJECT_CATEGORIES.items() if category != target for names in items]
    wanted = rng.sample(OBJECT_CATEGORIES[target], rng.randint(2, 5))
    distractors = rng.sample(others, rng.randint(0, 4))
    counts = [rng.choice([1, 1, 1, 2, 3, 4]) for _ in wanted] + [rng.choice([1, 1, 2, 3]) for _ in distractors]
    items = [_object_phrase(count, names) for count, names in zip(counts, wanted + distractors, strict=True)]
    rng.shuffle(items)
    listing = ", ".join(items[:-1]) + f"{',' if len(items) > 2 else ''} and {items[-1]}"
    question = f"I have {listing}. How many {target} do I have?"
    return Example(question, str(sum(counts[: len(wanted)])))


# --- number comparison ---------------------------------------------------------------------------


def _product_text(rng: random.Random) -> tuple[str, int]:
    a, b = rng.randint(2, 12), rng.randint(2, 12)
    return f"{a} times {b}", a * b


def _comparison_example(rng: random.Random) -> Example:
    (left, a), (right, b) = _product_text(rng), _product_text(rng)
    relation, holds = rng.choice([("greater than", a > b), ("less than", a < b)])
    return Example(f"Is {left} {relation} {right}?", "Yes" if holds else "No")


# --- the tasks -----------------------------------------------------------------------------------


def _task(
    name: str,
    description: str,
    answer_type: str,
    make: Callable[[random.Random], Example],
    seed: int,
    balance: tuple[str, ...] = (),
) -> Task:
    return Task(
        name=f"gen/{name}",
        description=description,
        extractor=extractor_for(answer_type),
        answer_type=answer_type,
        load=lambda: pool(seed, make, balance),
        normalize=normalizer_for(answer_type),
    )


GENERATED_TASKS: dict[str, Task] = {
    task.name: task
    for task in [
        _task(
            "boolean_expressions",
            "Evaluate the result of a random Boolean expression (True/False).",
            "true_false",
            _boolean_example,
            seed=1001,
            balance=("True", "False"),
        ),
        _task(
            "arithmetic",
            "Solve multi-step arithmetic with small integers (integer answer).",
            "number",
            _arithmetic_example,
            seed=1002,
        ),
        _task(
            "object_counting",
            "Count the objects of one category in a list of possessions (integer answer).",
            "number",
            _object_counting_example,
            seed=1003,
        ),
        _task(
            "number_comparison",
            "Compare two products of small numbers (Yes/No).",
            "yes_no",
            _comparison_example,
            seed=1004,
            balance=("Yes", "No"),
        ),
    ]
}
