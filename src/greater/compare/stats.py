"""The statistics of `greater compare`'s table: paired tests between two methods scored on the same
test examples, the chance level of a task, and how different a search's finalists are. Pure
functions of plain values (no model, no files).

A *pair* is one test example of one seed, scored by both methods: (reference correct, other correct).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence

ALPHA = 0.05  # the level the tables mark p-values at (no correction for multiple comparisons)
RESAMPLES = 10_000  # bootstrap resamples per confidence interval
BOOTSTRAP_SEED = 0  # a fixed seed: the same predictions give the same interval on every rerun

Pair = tuple[bool, bool]


def mcnemar_p(b: int, c: int) -> float:
    """The exact two-sided McNemar p-value of `b` pairs only the reference got right and `c` pairs only
    the other got right: a binomial test of the discordant pairs, p = min(1, 2·P(X ≤ min(b, c))) for
    X ~ Bin(b + c, 1/2); 1 when there are none (nothing tells the methods apart)."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)  # exact integer arithmetic until this one correctly rounded division


def bootstrap_ci(
    groups: Sequence[Sequence[Pair]],
    *,
    resamples: int = RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = 0.95,
) -> tuple[float, float]:
    """A paired bootstrap percentile interval of the accuracy difference (reference − other, as a
    fraction) over all pairs: each resample draws, within each group (a seed's test examples), as many
    pairs as the group has, with replacement. Deterministic for a given `seed`, and the same whatever the
    order of the groups or of the pairs within one (both are sorted before resampling)."""
    differences = sorted(sorted(int(ref) - int(other) for ref, other in group) for group in groups if group)
    n = sum(map(len, differences))
    if n == 0:
        raise ValueError("no pairs to resample")
    rng = random.Random(seed)
    draws = sorted(sum(sum(rng.choices(d, k=len(d))) for d in differences) / n for _ in range(resamples))
    tail = (1 - level) / 2
    return draws[math.floor(tail * resamples)], draws[math.ceil((1 - tail) * resamples) - 1]


def paired_test(groups: Sequence[Sequence[Pair]]) -> dict:
    """Reference against other over the pairs of all `groups` (one group per seed, or per task and seed):
    n_pairs, difference (reference − other accuracy, a fraction), ci ([low, high] of `bootstrap_ci`),
    b (pairs only the reference got right), c (only the other) and p (`mcnemar_p`)."""
    pairs = [pair for group in groups for pair in group]
    b = sum(ref and not other for ref, other in pairs)
    c = sum(other and not ref for ref, other in pairs)
    return {
        "n_pairs": len(pairs),
        "difference": (b - c) / len(pairs),
        "ci": list(bootstrap_ci(groups)),
        "b": b,
        "c": c,
        "p": mcnemar_p(b, c),
    }


def majority(answers: Sequence[str]) -> tuple[str, float]:
    """The most common answer and its share: the accuracy of always giving it (ties: the answer seen
    first)."""
    if not answers:
        raise ValueError("no answers")
    answer, count = Counter(answers).most_common(1)[0]
    return answer, count / len(answers)


def word_edit_distance(a: Sequence[str], b: Sequence[str]) -> int:
    """Levenshtein distance between two word lists: the fewest words inserted, deleted or replaced."""
    previous = list(range(len(b) + 1))
    for i, word in enumerate(a, 1):
        current = [i]
        for j, other in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (word != other)))
        previous = current
    return previous[-1]


def distinctness(prompts: Sequence[str]) -> float | None:
    """How different a search's finalists are: the mean, over pairs of prompts, of their word edit
    distance divided by the longer one's word count. 0: copies; 1: no word in common in place.
    None under two prompts (nothing to compare)."""
    words = [p.split() for p in prompts]
    pairs = [(a, b) for i, a in enumerate(words) for b in words[i + 1 :]]
    if not pairs:
        return None
    return sum(word_edit_distance(a, b) / max(len(a), len(b), 1) for a, b in pairs) / len(pairs)


def p_text(p: float) -> str:
    """A p-value as the tables print it, with "*" when it is below `ALPHA`."""
    text = "< 0.001" if p < 0.001 else f"{p:.3f}"
    return text + (" *" if p < ALPHA else "")


def paired_cells(test: dict, reference: str) -> list[str]:
    """One paired test of table.json as the texts of its table row (task, comparison, n pairs,
    difference, 95 % CI, b / c, McNemar p), for table.md and the HTML report alike."""
    low, high = test["ci"]
    return [
        test["task"] if test["task"] is not None else "all tasks (pooled)",
        f"{reference} vs {test['other']}",
        str(test["n_pairs"]),
        f"{100 * test['difference']:+.1f}",
        f"[{100 * low:+.1f}, {100 * high:+.1f}]",
        f"{test['b']} / {test['c']}",
        p_text(test["p"]),
    ]
