"""greater.compare.stats against hand computations: McNemar's exact test, the paired bootstrap, chance."""

from __future__ import annotations

import pytest

from greater.compare import stats

T, F = True, False


@pytest.mark.parametrize(
    ("b", "c", "p"),
    [
        (8, 2, 0.109375),  # 2 · (1 + 10 + 45) / 2^10
        (2, 8, 0.109375),  # two-sided: symmetric
        (0, 6, 0.03125),  # 2 · 1 / 2^6
        (6, 1, 0.125),  # 2 · (1 + 7) / 2^7
        (0, 10, 0.001953125),  # 2 / 2^10
        (0, 0, 1.0),  # no discordant pair: nothing tells the methods apart
        (1, 0, 1.0),  # 2 · 1/2, capped at 1
        (5, 5, 1.0),  # 2 · 638/1024 > 1, capped
    ],
)
def test_mcnemar_p_is_the_exact_binomial_test(b: int, c: int, p: float) -> None:
    assert stats.mcnemar_p(b, c) == p


def test_mcnemar_p_of_many_pairs_stays_a_probability() -> None:
    assert 0 < stats.mcnemar_p(600, 400) < 1e-9  # 2^1000 does not overflow a float division
    assert stats.mcnemar_p(500, 500) == 1.0


GROUPS = [  # seed 0: 6 only-reference, 2 only-other, 12 concordant; seed 1: 3, 3, 9
    [(T, F)] * 6 + [(F, T)] * 2 + [(T, T)] * 8 + [(F, F)] * 4,
    [(T, F)] * 3 + [(F, T)] * 3 + [(T, T)] * 5 + [(F, F)] * 4,
]


def test_bootstrap_ci_is_deterministic_and_holds_the_observed_difference() -> None:
    observed = (9 - 5) / 35
    low, high = stats.bootstrap_ci(GROUPS)
    assert (low, high) == stats.bootstrap_ci(GROUPS)  # the fixed seed: the same table on every rerun
    assert low < observed < high
    # the normal approximation, ± 1.96 standard errors: the variance of the difference within each seed
    # is 20 · (8/20 − 0.2²) + 15 · (6/15 − 0²) = 13.2 over 35² pairs², so the standard error is √13.2 / 35;
    # the bootstrap's ends are multiples of 1/35 (a difference of whole pairs), so they agree to one step
    half = 1.96 * 13.2**0.5 / 35
    assert low == pytest.approx(observed - half, abs=1 / 35)
    assert high == pytest.approx(observed + half, abs=1 / 35)


def test_bootstrap_ci_does_not_depend_on_the_order_of_groups_or_pairs() -> None:
    # the same cells summarized with tasks or methods named in another order must give the same table
    groups = [[(T, F)] * 4 + [(F, T)] * 3 + [(T, T)] * 5, [(T, F)] * 2 + [(F, T)] * 3 + [(F, F)] * 3, GROUPS[0]]
    ci = stats.bootstrap_ci(groups)
    assert stats.bootstrap_ci(groups[::-1]) == ci
    assert stats.bootstrap_ci([group[::-1] for group in groups]) == ci


def test_bootstrap_resamples_within_each_seed() -> None:
    # each seed on its own has no spread (every pair the same), so neither has any resample; pooling
    # the two seeds before resampling would give an interval around 0
    groups = [[(T, F)] * 10, [(F, T)] * 10]
    assert stats.bootstrap_ci(groups) == (0.0, 0.0)
    assert stats.bootstrap_ci([[(T, T)] * 5, [(F, F)] * 3]) == (0.0, 0.0)


def test_paired_test_counts_the_discordant_pairs() -> None:
    result = stats.paired_test(GROUPS)
    assert {k: v for k, v in result.items() if k != "ci"} == {
        "n_pairs": 35,
        "difference": 4 / 35,
        "b": 9,
        "c": 5,
        "p": stats.mcnemar_p(9, 5),
    }
    assert result["ci"] == list(stats.bootstrap_ci(GROUPS))
    assert stats.mcnemar_p(9, 5) == pytest.approx(2 * (1 + 14 + 91 + 364 + 1001 + 2002) / 2**14)


def test_majority_is_the_share_of_the_most_common_answer() -> None:
    assert stats.majority(["True", "False", "True", "True"]) == ("True", 0.75)
    assert stats.majority(["7", "3", "3", "7", "5"]) == ("7", 0.4)  # a tie: the answer seen first
    with pytest.raises(ValueError):
        stats.majority([])


@pytest.mark.parametrize(
    ("p", "text"), [(0.109375, "0.109"), (0.03125, "0.031 *"), (0.0004, "< 0.001 *"), (1.0, "1.000"), (0.05, "0.050")]
)
def test_p_text_marks_p_below_alpha(p: float, text: str) -> None:
    assert stats.p_text(p) == text


@pytest.mark.parametrize(
    ("a", "b", "distance"),
    [
        ("let us think step by step", "let us think step by step", 0),
        ("let us think step by step", "let me think step by step", 1),  # one word replaced
        ("think step by step", "let us think step by step", 2),  # two inserted
        ("a b c", "c b a", 2),  # a→c, c→a
        ("", "one two three", 3),
        ("kitten sitting", "sitting kitten on mat", 3),  # insert "sitting", keep "kitten", sitting→on, insert "mat"
    ],
)
def test_word_edit_distance_counts_words_inserted_deleted_or_replaced(a: str, b: str, distance: int) -> None:
    assert stats.word_edit_distance(a.split(), b.split()) == distance
    assert stats.word_edit_distance(b.split(), a.split()) == distance


def test_distinctness_is_the_mean_edit_distance_over_pairs_as_a_share_of_the_longer_prompt() -> None:
    # pairs: ab-ab (1 of 4 words), ab-ax (2 of 4), ab-ax again (2 of 4)
    prompts = ["a b c d", "a b c e", "a b x y"]
    assert stats.distinctness(prompts) == pytest.approx((0.25 + 0.5 + 0.5) / 3)
    assert stats.distinctness(["a b c d", "w x y z"]) == 1.0
    assert stats.distinctness(["same words", "same words", "same words"]) == 0.0
    assert stats.distinctness(["only one"]) is None
    assert stats.distinctness([]) is None
    assert stats.distinctness(["", ""]) == 0.0  # two empty prompts: copies, not a division by zero
