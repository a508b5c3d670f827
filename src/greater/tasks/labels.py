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


# --- whether a thing is hot or cold, from what happened to it -------------------------------------

_TEMPERATURE_THINGS = [
    "soup", "tea", "coffee", "water", "milk", "pie", "pizza", "stone", "spoon", "bread", "juice", "soda",
    "towel", "pan", "bottle", "bowl", "cocoa", "sand",
]  # fmt: skip
_HEATED = [
    "was boiling on the stove for ten minutes", "just came out of the oven", "sat in the sun all afternoon",
    "was heated in the microwave for three minutes", "was left next to the campfire",
    "was poured straight from the kettle",
]  # fmt: skip
_COOLED = [
    "was in the freezer all night", "was left outside in the snow", "just came out of the fridge",
    "sat on a block of ice for an hour", "was packed in ice cubes", "was left out on a freezing winter night",
]  # fmt: skip
_TEMPERATURE_TEMPLATES = [
    "The {thing} {what}. Is the {thing} hot or cold now?",
    "The {thing} {what}. Would the {thing} feel hot or cold?",
    "My {thing} {what}. Hot or cold?",
]


def _temperature_example(rng: random.Random) -> Example:
    """What happened to the thing decides; in half the questions something else happened to it first, and
    the last event decides ("..., and then it ...")."""
    hot = rng.random() < 0.5
    last, first = (_HEATED, _COOLED) if hot else (_COOLED, _HEATED)
    thing, what = rng.choice(_TEMPERATURE_THINGS), rng.choice(last)
    if rng.random() < 0.5:
        what = f"{rng.choice(first)}, and then it {what}"
    question = rng.choice(_TEMPERATURE_TEMPLATES).format(thing=thing, what=what)
    return Example(question, "hot" if hot else "cold")


# --- whether a sentence is about sports or cooking -------------------------------------------------

_ACTORS = [
    "the chef", "the striker", "the coach", "my neighbor", "the team", "our class", "the old baker",
    "a young goalkeeper", "the family", "the champion",
]  # fmt: skip
_TOPIC_ACTIONS = {
    "sports": [
        "scored twice in the second half", "won the marathon in record time", "trained on the tennis court",
        "missed a penalty in the final", "swam forty laps", "hit a home run in the ninth inning",
        "cycled up the mountain stage", "lifted a new personal best at the gym",
    ],
    "cooking": [
        "simmered the tomato sauce for an hour", "baked three loaves of sourdough",
        "seasoned the soup with fresh thyme", "whisked the eggs for an omelette",
        "roasted a chicken with lemon and garlic", "kneaded the pizza dough", "fried the onions until golden",
        "iced a chocolate cake",
    ],
}  # fmt: skip
_WHEN = ["", " on Sunday", " yesterday", " last night", " this morning"]
_TOPIC_TEMPLATES = [
    'Headline: "{sentence}" Is this about sports or cooking?',
    '"{sentence}" Is this sentence about sports or cooking?',
    "{sentence} Sports or cooking?",
]


def _topic_example(rng: random.Random) -> Example:
    """Who did it says nothing (a chef may run, a striker may bake): what they did decides."""
    topic = rng.choice(list(_TOPIC_ACTIONS))
    actor = rng.choice(_ACTORS)
    sentence = f"{actor[0].upper()}{actor[1:]} {rng.choice(_TOPIC_ACTIONS[topic])}{rng.choice(_WHEN)}."
    return Example(rng.choice(_TOPIC_TEMPLATES).format(sentence=sentence), topic)


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
        _label_task(
            "temperature",
            "Say whether a thing is hot or cold after what happened to it (the last event decides).",
            ("hot", "cold"),
            _temperature_example,
            seed=2003,
        ),
        _label_task(
            "topic",
            "Say whether a sentence is about sports or cooking (what was done decides, not who did it).",
            ("sports", "cooking"),
            _topic_example,
            seed=2004,
        ),
    ]
}
