"""Built-in label tasks generated from word lists: the answer is one of a few words a small model
partly knows how to choose (the sentiment of a short review, the kind of thing a word names). Seeded
and balanced, LABEL_POOL_SIZE distinct examples each; scored with the label extractor and matcher that
custom label tasks get (`answers.label_extractor`)."""

from __future__ import annotations

import random
from collections.abc import Callable

from greater.tasks.answers import label_extractor, normalizer_for
from greater.tasks.base import Example, Task
from greater.tasks.generated import pool

LABEL_POOL_SIZE = 1000

# --- the sentiment of a short review --------------------------------------------------------------

_THINGS = [
    "food", "service", "staff", "room", "movie", "plot", "battery", "screen", "delivery", "music",
    "coffee", "view", "hotel", "waiter", "soup", "bed", "app", "camera", "price", "ending",
    "acting", "pizza", "shoes", "book", "keyboard", "concert", "tour", "driver", "dessert", "game",
]  # fmt: skip
_GOOD = [
    "delicious", "excellent", "friendly", "wonderful", "great", "superb", "charming", "comfortable",
    "reliable", "fast", "lovely", "impressive", "pleasant", "fantastic", "perfect", "amazing",
]  # fmt: skip
_BAD = [
    "awful", "terrible", "rude", "bland", "disappointing", "broken", "slow", "dirty", "boring",
    "noisy", "horrible", "mediocre", "stale", "ugly", "useless", "poor",
]  # fmt: skip
_OPENERS = ["", "Honestly, ", "Overall, ", "To be fair, ", "In short, ", "Frankly, ", "In my opinion, ", "All in all, "]


def _review_example(rng: random.Random) -> Example:
    """One or two clauses; a negated adjective counts as its opposite ("not bad" is positive), and after
    "but" the second clause decides."""
    positive = rng.random() < 0.5
    first, second = rng.sample(_THINGS, 2)
    said, opposite = (_GOOD, _BAD) if positive else (_BAD, _GOOD)
    form = rng.randrange(4)
    if form == 0:
        text = f"the {first} was {rng.choice(said)}."
    elif form == 1:
        text = f"the {first} was {rng.choice(said)} and the {second} was {rng.choice(said)}."
    elif form == 2:
        text = f"the {first} was not {rng.choice(opposite)}."
    else:
        text = f"the {first} was {rng.choice(opposite)}, but the {second} was {rng.choice(said)}."
    opener = rng.choice(_OPENERS)
    review = opener + text if opener else text[0].upper() + text[1:]
    return Example(f'Review: "{review}" Is this review positive or negative?', "positive" if positive else "negative")


# --- the kind of thing a word names ---------------------------------------------------------------

_KINDS: dict[str, list[str]] = {
    "animal": [
        "dog", "cat", "horse", "cow", "lion", "tiger", "rabbit", "sheep", "goat", "wolf", "fox", "bear",
        "eagle", "owl", "duck", "frog", "snake", "shark", "whale", "dolphin", "mouse", "deer", "monkey",
        "zebra", "camel", "parrot", "penguin", "turtle", "donkey", "squirrel", "elephant", "giraffe",
    ],
    "food": [
        "bread", "cheese", "apple", "banana", "rice", "pasta", "soup", "pizza", "carrot", "potato",
        "butter", "cake", "cookie", "sandwich", "salad", "egg", "tomato", "onion", "grape", "pie",
        "yogurt", "noodle", "bagel", "muffin", "pancake", "burger", "sausage", "lemon", "peach",
        "cereal", "cracker", "pear",
    ],
    "tool": [
        "hammer", "wrench", "screwdriver", "saw", "drill", "shovel", "rake", "axe", "chisel", "pliers",
        "ladder", "broom", "knife", "scissors", "needle", "ruler", "stapler", "spade", "crowbar", "file",
        "clamp", "trowel", "mallet", "level", "funnel", "whisk", "ladle", "sickle", "hoe", "awl",
        "spanner", "tape measure",
    ],
}  # fmt: skip
_KIND_PHRASES = {"animal": "an animal", "food": "a food", "tool": "a tool"}
_KIND_TEMPLATES = [
    "What kind of thing is {a_word}: {kinds}?",
    "Is {a_word} {kinds}?",
    "Which of these is {a_word}: {kinds}?",
    'Classify the word "{word}" as {kinds}.',
    'Which category does "{word}" belong to: {kinds}?',
    "{A_word} is best described as {kinds}. Which one?",
]


def _kind_example(rng: random.Random) -> Example:
    kind = rng.choice(list(_KINDS))
    order = rng.sample(list(_KIND_PHRASES.values()), 3)
    kinds = f"{order[0]}, {order[1]} or {order[2]}"
    word = rng.choice(_KINDS[kind])
    a_word = f"{'an' if word[0] in 'aeiou' else 'a'} {word}"
    question = rng.choice(_KIND_TEMPLATES).format(word=word, a_word=a_word, A_word=a_word.capitalize(), kinds=kinds)
    return Example(question, kind)


# --- the tasks ------------------------------------------------------------------------------------


def _label_task(
    name: str, description: str, labels: tuple[str, ...], make: Callable[[random.Random], Example], seed: int
) -> Task:
    return Task(
        name=f"gen/{name}",
        description=description,
        extractor=label_extractor(labels),
        answer_type="text",
        load=lambda: pool(seed, make, labels, LABEL_POOL_SIZE),
        normalize=normalizer_for("text", labels),
        choices=labels,
    )


LABEL_TASKS: dict[str, Task] = {
    task.name: task
    for task in [
        _label_task(
            "review_sentiment",
            "Say whether a short review is positive or negative (negations and 'but' clauses included).",
            ("positive", "negative"),
            _review_example,
            seed=2001,
        ),
        _label_task(
            "word_kind",
            "Say whether a word names an animal, a food or a tool.",
            ("animal", "food", "tool"),
            _kind_example,
            seed=2002,
        ),
    ]
}
