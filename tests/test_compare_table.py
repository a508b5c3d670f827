"""`greater compare`'s table from constructed cells and predictions files (no model): the paired
tests, the chance level, and no spread with one seed (table.md, chart, report page)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from greater.compare.table import chart_spec, compare_markdown, summarize, write_chart
from greater.errors import GreaterError
from greater.evaluate import ends_in_repetition
from greater.report import compare_report
from greater.tasks import Task

SETTINGS = {"model": "m", "split": {"train": 3, "test": None}, "config": {"steps": 1}}
# task -> seed -> the gold answers of its test examples
GOLDS = {
    "t/a": {0: ["True", "True", "False", "True", "False"], 1: ["True", "False", "True", "True", "True"]},
    "t/b": {0: ["3", "5", "3", "7"], 1: ["5", "5", "3", "3"]},
}
# task -> method -> seed -> which test examples the method got right
CORRECT = {
    "t/a": {
        "zs-cot": {0: "01000", 1: "01010"},
        "greater": {0: "11110", 1: "11101"},
        "ape": {0: "11111", 1: "11111"},
    },
    "t/b": {
        "zs-cot": {0: "0000", 1: "0000"},
        "greater": {0: "1111", 1: "1110"},
        "ape": {0: "0101", 1: "1111"},
    },
}
TASKS = [  # t/a has the two answers True/False (uniform chance 1/2); t/b numbers (none)
    Task("t/a", "", "", "true_false", load=list, normalize=str),
    Task("t/b", "", "", "number", load=list, normalize=str),
]


def write_cells(out: Path, seeds: list[int], methods: list[str] = ("zs-cot", "greater", "ape")) -> list[dict]:
    """Cell records as an older `greater compare` wrote them (no dev fields), with their predictions."""
    (out / "predictions").mkdir(parents=True, exist_ok=True)
    records = []
    for task, by_method in CORRECT.items():
        for seed in seeds:
            for method in methods:
                flags = [c == "1" for c in by_method[method][seed]]
                rows = [
                    {"question": f"{task} q{seed}.{i}", "gold": gold, "predicted": gold if ok else "?", "correct": ok}
                    for i, (gold, ok) in enumerate(zip(GOLDS[task][seed], flags, strict=True))
                ]
                relative = f"predictions/{task.replace('/', '_')}__{method}__s{seed}.jsonl"
                (out / relative).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
                test = {"accuracy": sum(flags) / len(flags), "correct": sum(flags), "n": len(flags)}
                usage = {"calls": 10, "generated_tokens": 100, "forward_tokens": 1000, "seconds": 1.0}
                records.append(
                    {
                        "task": task,
                        "method": method,
                        "seed": seed,
                        "split": {"n_train": 3, "n_test": len(flags)},
                        "result": {"prompt": f"{method} prompt", "joiner": ".", "score": 0.5, "usage": usage},
                        "test": test | {"predictions": relative},
                        "transfer": {},
                    }
                )
    return records


def test_table_of_two_seeds_has_paired_tests_and_chance(tmp_path: Path) -> None:
    records = write_cells(tmp_path, [0, 1])
    table = summarize(tmp_path, records, SETTINGS, (), TASKS)
    # chance: t/a golds over both seeds, 7 of 10 True; t/b: "3" 4 of 8 ("5" 3, "7" 1)
    assert table["chance"] == {
        "t/a": {"majority": 0.7, "majority_answer": "True", "uniform": 0.5},
        "t/b": {"majority": 0.5, "majority_answer": "3", "uniform": None},
    }
    paired = table["paired"]
    assert paired["reference"] == "greater"  # greater, although named second
    assert (paired["alpha"], paired["resamples"]) == (0.05, 10_000)
    got = {(t["task"], t["other"]): t for t in paired["tests"]}
    assert list(got) == [
        ("t/a", "zs-cot"),
        ("t/a", "ape"),
        ("t/b", "zs-cot"),
        ("t/b", "ape"),
        (None, "zs-cot"),
        (None, "ape"),
    ]
    # hand counts from CORRECT; p = min(1, 2·P(Bin(b+c, 1/2) ≤ min(b, c)))
    expected = {
        ("t/a", "zs-cot"): (10, 6, 1, 0.125),  # 2 · (1 + 7) / 2^7
        ("t/a", "ape"): (10, 0, 2, 0.5),  # 2 · 1 / 2^2
        ("t/b", "zs-cot"): (8, 7, 0, 0.015625),  # 2 / 2^7
        ("t/b", "ape"): (8, 2, 1, 1.0),  # 2 · 4/8
        (None, "zs-cot"): (18, 13, 1, 0.0018310546875),  # 2 · (1 + 14) / 2^14
        (None, "ape"): (18, 2, 3, 1.0),
    }
    for key, (n, b, c, p) in expected.items():
        test = got[key]
        assert (test["n_pairs"], test["b"], test["c"], test["p"]) == (n, b, c, p)
        assert test["difference"] == pytest.approx((b - c) / n)
        low, high = test["ci"]
        assert low <= test["difference"] <= high

    markdown = compare_markdown(table)
    assert "| t/a | 5 | 70.0 | 30.0 ± 14.1 | 80.0 ± 0.0 | 100.0 ± 0.0 |" in markdown
    assert "| t/b | 4 | 50.0 | 0.0 ± 0.0 | 87.5 ± 17.7 | 75.0 ± 35.4 |" in markdown
    assert "| mean | | 60.0 | 15.0 | 83.8 | 87.5 |" in markdown
    low, high = got[None, "zs-cot"]["ci"]
    ci = f"[{100 * low:+.1f}, {100 * high:+.1f}]"
    assert f"| all tasks (pooled) | greater vs zs-cot | 18 | +66.7 | {ci} | 13 / 1 | 0.002 * |" in markdown
    assert "| t/b | greater vs ape | 8 | +12.5 | " in markdown
    assert markdown.count(" * |") == 2  # p < 0.05: t/b and pooled, greater vs zs-cot
    assert "no correction for the number of tests" in markdown
    # the same predictions give the same table: the bootstrap's seed is fixed
    assert summarize(tmp_path, records, SETTINGS, (), TASKS) == table

    (tmp_path / "cells").mkdir()
    (tmp_path / "table.json").write_text(json.dumps(table), encoding="utf-8")
    page = compare_report(tmp_path)
    assert page.count("class='whisker'") == 6  # an sd (even 0) for each of 2 tasks × 3 methods
    assert page.count("class='chance'") == 2
    assert "<td class=num>70.0</td>" in page and "30.0 ± 14.1" in page
    assert "13 / 1" in page and "0.002 *" in page


def test_one_seed_shows_no_spread(tmp_path: Path) -> None:
    records = write_cells(tmp_path, [0], ["zs-cot", "ape"])
    table = summarize(tmp_path, records, SETTINGS, (), TASKS)
    assert all(row["sd"] is None for row in table["results"])
    assert table["paired"]["reference"] == "zs-cot"  # no greater: the first method named
    (test,) = [t for t in table["paired"]["tests"] if t["task"] == "t/a"]
    assert (test["other"], test["b"], test["c"], test["p"]) == ("ape", 0, 4, 0.125)  # 2 · 1 / 2^4
    assert table["chance"]["t/a"]["majority"] == 0.6  # seed 0 only: 3 of 5 True

    markdown = compare_markdown(table)
    assert "±" not in markdown
    assert "seed 0 (no sd: it needs ≥ 2 seeds)" in markdown.splitlines()[0]
    assert "| t/a | 5 | 60.0 | 20.0 | 100.0 |" in markdown

    bars, chance = chart_spec(table)
    assert [(b.label, b.yerr) for b in bars] == [("zs-cot", None), ("ape", None)]
    assert bars[1].heights == [100.0, 50.0]
    assert chance == [(-0.45, 0.45, 60.0), (0.55, 1.45, 50.0)]  # across each task's group of bars

    (tmp_path / "cells").mkdir()
    (tmp_path / "table.json").write_text(json.dumps(table), encoding="utf-8")
    page = compare_report(tmp_path)
    assert "class='whisker'" not in page
    assert page.count("class='chance'") == 2
    accuracy_table = page[page.index("<table>") : page.index("</table>")]
    assert "±" not in accuracy_table
    assert re.search(r"<td class='num chosen'>100.0</td>", accuracy_table)


def test_two_writers_of_one_chart_do_not_take_each_others_temp_file(tmp_path: Path) -> None:
    """Two `compare` runs into one folder each write chart.png; with one fixed temp name the second
    renamed the first's file away and crashed (FileNotFoundError) after its cells were done."""
    table = summarize(tmp_path, write_cells(tmp_path, [0], ["zs-cot", "ape"]), SETTINGS, (), TASKS)
    theirs = tmp_path / ".chart.png.tmp"  # the other writer's, mid-write
    theirs.write_bytes(b"half a png")
    write_chart(table, tmp_path / "chart.png")
    assert (tmp_path / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert theirs.read_bytes() == b"half a png"
    assert sorted(p.name for p in tmp_path.glob(".chart.png*")) == [".chart.png.tmp"]  # none of ours left


def test_cells_scored_on_other_test_examples_cannot_be_paired(tmp_path: Path) -> None:
    records = write_cells(tmp_path, [0, 1])
    path = tmp_path / "predictions" / "t_b__ape__s1.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    rows[2]["question"] = "another question"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(GreaterError, match=r"task t/b, seed 1: greater and ape were scored on different test examples"):
        summarize(tmp_path, records, SETTINGS, (), TASKS)
    path.unlink()
    with pytest.raises(GreaterError, match=r"t_b__ape__s1.jsonl is missing"):
        summarize(tmp_path, records, SETTINGS, (), TASKS)


def test_cut_off_share_comes_from_the_reasoning_lengths_recorded(tmp_path: Path) -> None:
    records = write_cells(tmp_path, [0, 1])
    settings = SETTINGS | {"config": {"steps": 1, "max_new_tokens": 8}}
    table = summarize(tmp_path, records, settings, tasks=TASKS)
    assert all(r["cut_off"] is None for r in table["results"])  # older predictions: nothing recorded
    assert "Reasoning cut off" not in compare_markdown(table)
    loop = "Step 1: add them. " + "The next step is to add them again. " * 3  # a 25-char piece 3 times
    near = "Step 1: add the two numbers. Step 2: the sum is 7. Step 3: so the answer is"  # no piece 3 times
    t_a_greater = ((0, [8, 3, 8, 9, 1], [loop, loop, near, loop, near]), (1, [2, 2, 8, 2, 2], [near] * 5))
    for seed, lengths, texts in t_a_greater:  # 4 of 10 at the cap, 2 of them (not row 1) in a loop
        path = tmp_path / f"predictions/t_a__greater__s{seed}.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        rows = [row | {"reasoning_tokens": n, "reasoning": t} for row, n, t in zip(rows, lengths, texts, strict=True)]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        if seed == 0:  # seed 1 not recorded yet: no share, rather than seed 0's passed off as both seeds'
            half = summarize(tmp_path, records, settings, tasks=TASKS)["results"]
            assert next(r for r in half if (r["task"], r["method"]) == ("t/a", "greater"))["cut_off"] is None
    table = summarize(tmp_path, records, settings, tasks=TASKS)
    by = {(r["task"], r["method"]): (r["cut_off"], r["cut_off_looping"]) for r in table["results"]}
    assert by["t/a", "greater"] == (0.4, 0.2)
    assert by["t/a", "zs-cot"] == (None, None)
    assert "| t/a | – | 40 (20) | – |" in compare_markdown(table)
    (tmp_path / "table.json").write_text(json.dumps(table), encoding="utf-8")
    page = compare_report(tmp_path)
    section = page[page.index("<h2>Reasoning cut off at the cap (%)</h2>") :]
    assert "<tr><td>t/a</td><td class=num>–</td><td class=num>40 (20)</td><td class=num>–</td></tr>" in section


def test_a_reasoning_ends_in_repetition_when_a_piece_recurs_three_times_at_its_end() -> None:
    sentence = "True is a boolean value that can be True or False. "
    assert ends_in_repetition("Let us see. " + sentence * 3)
    assert not ends_in_repetition("Let us see. " + sentence * 2)  # twice is not a loop yet
    counting = " ".join(str(i) for i in range(120))  # 369 characters, no 25-character piece twice
    assert not ends_in_repetition(sentence * 3 + counting)  # the loop is over: not in the last 300
    assert ends_in_repetition("." * 80)  # any piece, punctuation too
    assert not ends_in_repetition("")


def test_the_most_common_answer_per_seed_shows_a_prompt_that_answers_the_same_whatever_the_question(
    tmp_path: Path,
) -> None:
    records = write_cells(tmp_path, [0, 1])  # a wrong answer is written as "?"
    path = tmp_path / "predictions/t_b__ape__s0.jsonl"  # a long extracted answer, with a "|" in it
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows = [row | {"predicted": "7 | is more than 5, so", "correct": False} for row in rows]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = summarize(tmp_path, records, SETTINGS, tasks=TASKS)
    top = {(r["task"], r["method"]): r["top_answers"] for r in table["results"]}
    # t/a golds T T F T F / T F T T T; greater right on 11110 / 11101, ape on all, zs-cot on 01000 / 01010
    assert top["t/a", "greater"] == {"0": {"answer": "True", "share": 0.6}, "1": {"answer": "True", "share": 0.6}}
    assert top["t/a", "ape"] == {"0": {"answer": "True", "share": 0.6}, "1": {"answer": "True", "share": 0.8}}
    assert top["t/a", "zs-cot"] == {"0": {"answer": "?", "share": 0.8}, "1": {"answer": "?", "share": 0.6}}
    assert top["t/b", "ape"]["0"] == {"answer": "7 | is more than 5, so", "share": 1.0}
    text = compare_markdown(table)
    assert "| t/a | ? 80 · ? 60 | True 60 · True 60 | True 60 · True 80 |" in text
    assert "| t/b | ? 100 · ? 100 | 3 50 · 5 50 | 7 \\| is more tha… 100 · 5 50 |" in text
    (tmp_path / "table.json").write_text(json.dumps(table), encoding="utf-8")
    page = compare_report(tmp_path)
    section = page[page.index("<h2>Most common answer on test</h2>") :]
    assert "<tr><td>t/a</td><td class=num>? 80 · ? 60</td><td class=num>True 60 · True 60</td>" in section
    older = json.loads((tmp_path / "table.json").read_text())
    for row in older["results"]:  # a table.json written before the answers were recorded
        del row["top_answers"]
    (tmp_path / "table.json").write_text(json.dumps(older), encoding="utf-8")
    assert "Most common answer" not in compare_report(tmp_path)
    assert "most common answer on test" not in compare_markdown(older).lower()


def test_finalists_distinctness_shows_whether_the_dev_pass_chose_among_variants_of_one_prompt(tmp_path: Path) -> None:
    records = write_cells(tmp_path, [0, 1])
    finalists = {  # method -> seed -> its finalists' prompts
        "greater": {0: ["a b c d", "a b c e"], 1: ["a b c d", "a b x y", "a b c d"]},
        "ape": {0: ["a b", "c d"], 1: ["one two three four", "five six"]},
    }
    for record in records:
        prompts = finalists.get(record["method"], {}).get(record["seed"], [])
        record["result"]["finalists"] = [{"prompt": p, "score": 0.5, "dev_accuracy": 0.5} for p in prompts]
    table = summarize(tmp_path, records, SETTINGS, tasks=TASKS)
    distinct = {(r["task"], r["method"]): r["finalists_distinct"] for r in table["results"]}
    # greater seed 0: 1 of 4 words; seed 1: pairs 2/4, 0/4, 2/4 → 1/3
    assert distinct["t/a", "greater"]["accuracies"] == pytest.approx([0.25, 1 / 3])
    assert distinct["t/a", "greater"]["mean"] == pytest.approx((0.25 + 1 / 3) / 2)
    assert distinct["t/a", "ape"]["accuracies"] == [1.0, 1.0]  # 2 of 2; 4 of 4 (no word in place)
    assert distinct["t/a", "zs-cot"] is None  # one prompt: nothing to compare
    text = compare_markdown(table)
    assert "| t/a | – | 29.2 ± 5.9 | 100.0 ± 0.0 |" in text
    (tmp_path / "table.json").write_text(json.dumps(table), encoding="utf-8")
    page = compare_report(tmp_path)
    section = page[page.index("<h2>How different the finalists are (%)</h2>") :]
    assert "<tr><td>t/a</td><td class=num>–</td><td class=num>29.2 ± 5.9</td><td class=num>100.0 ± 0.0</td>" in section
    for record in records:  # cells without finalists (no dev pass): no table
        record["result"]["finalists"] = []
    assert "How different" not in compare_markdown(summarize(tmp_path, records, SETTINGS, tasks=TASKS))


def test_each_method_is_tested_against_always_giving_the_majority_answer(tmp_path: Path) -> None:
    records = write_cells(tmp_path, [0, 1])
    table = summarize(tmp_path, records, SETTINGS, tasks=TASKS)
    versus = {(r["task"], r["method"]): r["versus_chance"] for r in table["results"]}
    # t/a golds T T F T F / T F T T T: the majority answer True, gold 7 times of 10. greater right on
    # 11110 / 11101: only greater right where the gold is False twice (b), only "True" right once (c)
    assert table["chance"]["t/a"]["majority_answer"] == "True"
    assert (versus["t/a", "greater"]["b"], versus["t/a", "greater"]["c"]) == (2, 1)
    assert versus["t/a", "greater"]["difference"] == pytest.approx(0.1)
    assert versus["t/a", "greater"]["p"] == 1.0
    # zs-cot right on 01000 / 01010: once where the gold is False (seed 1), wrong 5 times where it is True
    assert (versus["t/a", "zs-cot"]["b"], versus["t/a", "zs-cot"]["c"]) == (1, 5)
    assert versus["t/a", "zs-cot"]["p"] == pytest.approx(2 * (1 + 6) / 2**6)
    text = compare_markdown(table)
    assert "| t/a | -40.0 (p 0.219) | +10.0 (p 1.000) | +30.0 (p 0.250) |" in text  # ape: 3 / 0
    (tmp_path / "table.json").write_text(json.dumps(table), encoding="utf-8")
    section = compare_report(tmp_path)
    section = section[section.index("<h2>Against always giving the majority answer</h2>") :]
    assert "<tr><td>t/a</td><td class=num>-40.0 (p 0.219)</td><td class=num>+10.0 (p 1.000)</td>" in section
