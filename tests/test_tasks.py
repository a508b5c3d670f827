"""Tasks: generated pools, answer normalisers, BBH loading, the registry and its errors."""

from __future__ import annotations

import json
import re
import sys
import types
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from greater.errors import GreaterError
from greater.tasks import Example, get_task, resolve_task, task_names
from greater.tasks.answers import (
    ANSWER_TYPES,
    extractor_for,
    final_answer,
    gold_problem,
    infer_answer_type,
    infer_labels,
    label_extractor,
    normalize_choice,
    normalize_number,
    normalize_text,
    normalize_true_false,
    normalize_true_false_uncertain,
    normalize_valid_invalid,
    normalize_yes_no,
    normalizer_for,
    option_letters,
)
from greater.tasks.generated import OBJECT_CATEGORIES, POOL_SIZE, evaluate_boolean, pool
from greater.tasks.labels import LABEL_POOL_SIZE, LABEL_TASKS
from helpers import BBH_DIR, SHARED_DATA, assert_scores, wrong_answer

BBH_FILES = sorted(BBH_DIR.glob("*.json")) if BBH_DIR.is_dir() else []
GEN_NAMES = [name for name in task_names() if name.startswith("gen/")]


# --- generated tasks -----------------------------------------------------------------------------


def test_gen_tasks_listed() -> None:
    assert {"gen/boolean_expressions", "gen/arithmetic", "gen/object_counting"} <= set(GEN_NAMES)


def test_a_generator_with_too_few_distinct_examples_is_refused_not_looped_on() -> None:
    def make(rng):
        n = rng.randrange(6)
        return Example(f"q{n}", "a" if n < 3 else "b")

    assert len(pool(0, make, ("a", "b"), size=6)) == 6
    with pytest.raises(GreaterError, match=r"only 6 distinct examples of 8 .* with the answer 'a'"):
        pool(0, make, ("a", "b"), size=8)


@pytest.mark.parametrize("name", GEN_NAMES)
def test_gen_task_pool(name: str) -> None:
    task = get_task(name)
    examples = task.load()
    size = LABEL_POOL_SIZE if name in LABEL_TASKS else POOL_SIZE
    assert len(examples) == size
    assert examples == get_task(name).load()  # deterministic
    assert len({ex.question for ex in examples}) == size
    assert task.name == name
    assert task.description
    assert task.extractor.strip()
    # the paper's extractors end in "$"; a label task's names its labels and ends in ":" (a word follows)
    assert task.extractor.endswith(":" if name in LABEL_TASKS else "$")
    for example in examples:
        assert example.answer == task.normalize(example.answer)  # stored canonical
        assert_scores(task, example)


def test_gen_pools_are_fixed() -> None:
    """Same first example on every platform (guards against hash()- or order-dependent generation)."""
    firsts = {name: get_task(name).load()[0] for name in GEN_NAMES}
    assert firsts["gen/boolean_expressions"] == Example("not ( True or False ) or True or not not False is", "True")
    assert firsts["gen/arithmetic"] == Example("((5 + -1) + (5 * -4)) =", "-16")


def test_boolean_expressions_gold() -> None:
    examples = get_task("gen/boolean_expressions").load()
    for ex in examples:
        expression = ex.question.removesuffix(" is")
        assert ex.answer == str(eval(expression))  # our own generated, Python-syntax strings
    operands = [len(re.findall(r"True|False", ex.question)) for ex in examples]
    assert min(operands) == 2
    assert max(operands) == 4
    assert {ex.answer for ex in examples} == {"True", "False"}


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("not ( True ) and ( True )", False),
        ("True or False and False", True),
        ("not not ( not False )", True),
        ("( False or True ) and not False", True),
        ("not True or False", False),
    ],
)
def test_evaluate_boolean(expression: str, value: bool) -> None:
    assert evaluate_boolean(expression) is value


@pytest.mark.parametrize("expression", ["True and", "( True", "True False", "maybe", ""])
def test_evaluate_boolean_rejects_malformed(expression: str) -> None:
    with pytest.raises(GreaterError):
        evaluate_boolean(expression)


def test_arithmetic_gold() -> None:
    for ex in get_task("gen/arithmetic").load():
        expression = ex.question.removesuffix(" =")
        assert ex.answer == str(eval(expression))  # our own generated strings
        assert all(-9 <= int(n) <= 9 for n in re.findall(r"-?\d+", expression))
        assert 2 <= len(re.findall(r" [-+*] ", expression)) <= 3


def test_object_counting_gold() -> None:
    words = {"a": 1, "an": 1, "two": 2, "three": 3, "four": 4, "five": 5}
    for ex in get_task("gen/object_counting").load():
        match = re.fullmatch(r"I have (.+)\. How many (.+) do I have\?", ex.question)
        assert match, ex.question
        listing, category = match.groups()
        names = {name for pair in OBJECT_CATEGORIES[category] for name in pair}
        total = 0
        for item in re.split(r", and |, | and ", listing):
            count, name = item.split(" ", 1)
            total += words[count] if name in names else 0
        assert ex.answer == str(total), ex.question


def test_number_comparison_gold() -> None:
    for ex in get_task("gen/number_comparison").load():
        a, b, relation, c, d = re.fullmatch(
            r"Is (\d+) times (\d+) (greater|less) than (\d+) times (\d+)\?", ex.question
        ).groups()  # type: ignore[union-attr]
        left, right = int(a) * int(b), int(c) * int(d)
        assert ex.answer == ("Yes" if (left > right if relation == "greater" else left < right) else "No")


# --- normalisers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", ["(B)", "B", "$ B", "B)", "(b)", "B.", "$B$", "(B) some text", " B\n", "b)"])
def test_choice(raw: str) -> None:
    assert normalize_choice(raw) == "B"


@pytest.mark.parametrize("raw", ["Because", "the answer", "(S)", "BB", "a cat"])
def test_choice_rejects(raw: str) -> None:
    assert normalize_choice(raw) not in set("ABCDEFGHIJKLMNOPQR")


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("1,234", "1234"),
        ("$1234", "1234"),
        ("1234.0", "1234"),
        ("-7", "-7"),
        ("\u22127", "-7"),
        ("42.", "42"),
        ("$ 42", "42"),
        ("2.5", "2.5"),
        ("2.50", "2.5"),
        ("-0", "0"),
        ("12 apples, 3 pears", "12"),
        ("$ -1,000,000.00", "-1000000"),
        ("1,23", "1"),
    ],
)
def test_number(raw: str, canonical: str) -> None:
    assert normalize_number(raw) == canonical


def test_number_without_digits_does_not_match() -> None:
    assert normalize_number(" seven ") == "seven"


@pytest.mark.parametrize(
    ("normalize", "raw", "canonical"),
    [
        (normalize_yes_no, "Yes", "Yes"),
        (normalize_yes_no, "yes.", "Yes"),
        (normalize_yes_no, "$ Yes", "Yes"),
        (normalize_yes_no, "NO, because", "No"),
        (normalize_yes_no, "no yes", "No"),
        (normalize_true_false, "true", "True"),
        (normalize_true_false, "$ False.", "False"),
        (normalize_valid_invalid, "invalid", "invalid"),
        (normalize_valid_invalid, "Valid", "valid"),
        (normalize_valid_invalid, "$ Invalid.", "invalid"),
        (normalize_valid_invalid, "valid, not invalid", "valid"),
    ],
)
def test_word_answers(normalize: Callable[[str], str], raw: str, canonical: str) -> None:
    assert normalize(raw) == canonical


def test_word_answers_need_whole_words() -> None:
    assert normalize_yes_no("nothing") not in {"Yes", "No"}
    assert normalize_true_false("untrue") not in {"True", "False"}
    assert normalize_valid_invalid("invalidate") not in {"valid", "invalid"}


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("  ] ]  ", "] ]"),
        ("$ apple  banana.", "apple banana"),
        ("'apple banana'", "apple banana"),
        ('") >".', ") >"),
        ("$Apple$", "Apple"),
        ("**apple, pear;**:", "apple, pear"),
        ("( )", "( )"),
        ("(])", "(])"),
    ],
)
def test_text(raw: str, canonical: str) -> None:
    assert normalize_text(raw) == canonical


def test_text_is_case_sensitive() -> None:
    assert normalize_text("Apple") != normalize_text("apple")


def test_extractors() -> None:
    assert extractor_for("true_false") == "Therefore, the final answer (use exact format: '$ True' or '$ False') is $"
    assert extractor_for("number") == "Therefore, the final answer (arabic numerals only) is $"
    assert "'$ A' or '$ B' or '$ C')" in extractor_for("choice", "ABC")
    assert "'$ A', '$ B', ..., '$ R'" in extractor_for("choice", "ABCDEFGHIJKLMNOPQR")
    assert "'$ A', '$ B', etc." in extractor_for("choice")
    for answer_type in ("choice", "number", "yes_no", "true_false", "valid_invalid", "text"):
        assert extractor_for(answer_type).endswith("is $")
    with pytest.raises(GreaterError, match="unknown answer type"):
        normalizer_for("colour")


# --- BBH -----------------------------------------------------------------------------------------


@pytest.mark.skipif(not BBH_FILES, reason=f"no BBH data in {BBH_DIR}")
@pytest.mark.parametrize("file", BBH_FILES, ids=lambda file: file.stem)
def test_bbh_task(file: Path) -> None:
    task = get_task(f"bbh/{file.stem}", str(BBH_DIR))
    raw = json.loads(file.read_text(encoding="utf-8"))["examples"]
    examples = task.load()
    assert task.name == f"bbh/{file.stem}"
    assert task.default_train == 50
    assert len(raw) - 3 <= len(examples) <= len(raw)
    assert task.extractor.endswith("is $")
    for example in examples:
        assert_scores(task, example)
        if task.answer_type == "choice":
            assert re.fullmatch(r"[A-R]", example.answer)
            assert f"({example.answer})" in example.question


@pytest.mark.skipif(not BBH_FILES, reason=f"no BBH data in {BBH_DIR}")
def test_bbh_choice_letters_from_data() -> None:
    names = {file.stem for file in BBH_FILES}
    if "tracking_shuffled_objects_three_objects" in names:
        task = get_task("bbh/tracking_shuffled_objects_three_objects", str(BBH_DIR))
        assert "'$ A' or '$ B' or '$ C')" in task.extractor
    if "sports_understanding" in names:
        task = get_task("bbh/sports_understanding", str(BBH_DIR))
        assert task.answer_type == "yes_no"
        assert {ex.answer for ex in task.load()} == {"Yes", "No"}


def test_bbh_data_dir_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_json(tmp_path / "navigate.json", {"examples": [{"input": "Go?", "target": "yes"}] * 3})
    monkeypatch.setenv("GREATER_DATA_DIR", str(tmp_path))
    assert get_task("bbh/navigate").load() == [Example("Go?", "Yes")] * 3
    assert task_names() == GEN_NAMES + ["bbh/navigate"]


def test_bbh_unknown_file_type_inferred(tmp_path: Path) -> None:
    examples = [{"input": f"Q{i}?\nOptions:\n(A) x\n(B) y", "target": "(A)" if i % 2 else "(B)"} for i in range(4)]
    write_json(tmp_path / "custom.json", {"examples": examples})
    task = get_task("bbh/custom", str(tmp_path))
    assert task.answer_type == "choice"
    assert [ex.answer for ex in task.load()] == ["B", "A", "B", "A"]
    write_json(
        tmp_path / "sums.json",
        {"examples": [{"input": "1+1", "target": 2}, {"input": "2-3", "target": "-1"}]},
    )
    assert get_task("bbh/sums", str(tmp_path)).answer_type == "number"


def test_task_names_without_data(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GREATER_DATA_DIR", raising=False)
    names = task_names()
    assert len([name for name in names if name.startswith("bbh/")]) == 27
    assert "bbh/web_of_lies" in names
    assert "gen/arithmetic" in names
    assert task_names("/nonexistent/greater-data") == names


# --- splits --------------------------------------------------------------------------------------


def test_split() -> None:
    task = get_task("gen/arithmetic")
    train, test = task.split(50, None, seed=0)
    assert len(train) == 50
    assert len(test) == POOL_SIZE - 50
    assert not {ex.question for ex in train} & {ex.question for ex in test}
    assert (train, test) == task.split(50, None, seed=0)
    assert train != task.split(50, None, seed=1)[0]
    train, test = task.split(None, 30, seed=3)
    assert len(train) == task.default_train
    assert len(test) == 30
    with pytest.raises(GreaterError, match="train must be between"):
        task.split(POOL_SIZE, None, seed=0)


@pytest.mark.skipif(not BBH_FILES, reason=f"no BBH data in {BBH_DIR}")
def test_bbh_split() -> None:
    task = get_task(f"bbh/{BBH_FILES[0].stem}", str(BBH_DIR))
    train, test = task.split(None, 100, seed=7)
    assert len(train) == 50
    assert len(test) == 100
    assert not {ex.question for ex in train} & {ex.question for ex in test}


# --- errors --------------------------------------------------------------------------------------


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")
    return path


@pytest.mark.parametrize("name", ["nope", "gen/nope", "bbh/nope", "boolean_expressions", "bbh/", "gen/arith"])
def test_unknown_task(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GREATER_DATA_DIR", raising=False)
    with pytest.raises(GreaterError, match="greater tasks") as info:
        get_task(name)
    assert repr(name) in str(info.value)


def test_unknown_task_suggests_close_names() -> None:
    with pytest.raises(GreaterError, match="gen/arithmetic"):
        get_task("gen/arithmatic")


def test_bbh_without_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GREATER_DATA_DIR", raising=False)
    with pytest.raises(GreaterError, match="pass data_dir DIR.*GREATER_DATA_DIR"):
        get_task("bbh/navigate")


def test_bbh_missing_data_dir(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(GreaterError, match=f"{re.escape(str(missing))} does not exist.*data_dir"):
        get_task("bbh/navigate", str(missing))


def test_bbh_missing_file(tmp_path: Path) -> None:
    with pytest.raises(GreaterError, match=f"{re.escape(str(tmp_path / 'navigate.json'))} not found"):
        get_task("bbh/navigate", str(tmp_path))


def test_bbh_malformed_json(tmp_path: Path) -> None:
    (tmp_path / "navigate.json").write_text('{\n  "examples": [\n    {"input": "x", "target": "yes",}\n  ]\n}\n')
    with pytest.raises(GreaterError, match=r"navigate\.json: invalid JSON at line 3") as info:
        get_task("bbh/navigate", str(tmp_path))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"examples": [{"input": "a", "target": "yes"}, {"input": "b"}]}, "example 1 .*'target'"),
        ({"examples": [{"target": "yes"}]}, "example 0 .*'input'"),
        ({"examples": ["yes"]}, "example 0 .*'input'"),
        ({"examples": []}, '"examples" is empty'),
        ({"canary": "x"}, 'no "examples" list'),
        ([1, 2], 'no "examples" list'),
        ({"examples": [{"input": "a", "target": "perhaps"}]}, "no example has a usable yes_no target"),
    ],
)
def test_bbh_bad_content(tmp_path: Path, data: object, message: str) -> None:
    write_json(tmp_path / "navigate.json", data)
    with pytest.raises(GreaterError, match=f"navigate.json: {message}"):
        get_task("bbh/navigate", str(tmp_path))


# --- every built-in task -------------------------------------------------------------------------

SHARED_NAMES = task_names(str(SHARED_DATA)) if SHARED_DATA.is_dir() else []
GSM8K_DIR, FOLIO_DIR = SHARED_DATA / "gsm8k", SHARED_DATA / "folio"


@pytest.mark.skipif(not SHARED_NAMES, reason=f"no data in {SHARED_DATA}")
@pytest.mark.parametrize("name", SHARED_NAMES)
def test_every_builtin_task_scores_its_own_gold(name: str) -> None:
    """Loads from ../shared/data, has a well-formed extractor, and gold answers score 100%, wrong ones 0%."""
    task = get_task(name, str(SHARED_DATA))
    assert task.name == name
    assert task.description
    assert task.answer_type in ANSWER_TYPES
    if name in LABEL_TASKS:
        assert task.extractor == label_extractor(task.choices)
    else:  # the paper's extractors
        assert task.extractor.startswith("Therefore, the final answer (")
        assert task.extractor.endswith(") is $")
    train, test = task.split(None, None, seed=0)
    assert len(train) == 50
    assert test
    examples = train + test
    right = [task.is_correct(f" {task.answer_text(ex)}\nmore", ex) for ex in examples]
    wrong = [task.is_correct(f" {wrong_answer(task, task.answer_text(ex))}\nmore", ex) for ex in examples]
    assert sum(right) == len(examples)
    assert sum(wrong) == 0
    assert all(ex.answer == task.normalize(ex.answer) for ex in examples)  # stored canonical


def test_builtin_benchmarks_listed_without_data(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GREATER_DATA_DIR", raising=False)
    assert {"gsm8k", "folio"} <= set(task_names())


@pytest.mark.skipif(not GSM8K_DIR.is_dir(), reason=f"no GSM8K data in {GSM8K_DIR}")
@pytest.mark.parametrize("data_dir", [SHARED_DATA, GSM8K_DIR], ids=["root", "gsm8k-folder"])
def test_gsm8k(data_dir: Path) -> None:
    task = get_task("gsm8k", str(data_dir))
    assert task.answer_type == "number"
    assert task.load_test is not None
    files = {
        split: (GSM8K_DIR / f"{split}.jsonl").read_text(encoding="utf-8").splitlines() for split in ("train", "test")
    }
    train_pool, test_pool = task.load(), task.load_test()
    assert (len(train_pool), len(test_pool)) == (len(files["train"]), len(files["test"]))
    first = json.loads(files["test"][0])
    assert test_pool[0] == Example(first["question"], first["answer"].rpartition("####")[2].strip().replace(",", ""))
    assert all(re.fullmatch(r"-?\d+", ex.answer) for ex in train_pool + test_pool)
    # the paper's protocol: a seeded train subset of train.jsonl, the test split from test.jsonl
    train, test = task.split(None, 100, seed=3)
    assert len(train) == 50
    assert len(test) == 100
    assert {ex.question for ex in train} <= {ex.question for ex in train_pool}
    assert {ex.question for ex in test} <= {ex.question for ex in test_pool}
    assert (train, test) == task.split(None, 100, seed=3)
    assert train != task.split(None, 100, seed=4)[0]
    assert len(task.split(None, None, seed=0)[1]) == len(test_pool)
    with pytest.raises(GreaterError, match="; train must be between 1 and"):
        task.split(len(train_pool) + 1, None, seed=0)


@pytest.mark.skipif(not FOLIO_DIR.is_dir(), reason=f"no FOLIO data in {FOLIO_DIR}")
def test_folio() -> None:
    import csv

    task = get_task("folio", str(SHARED_DATA))
    assert task.answer_type == "true_false_uncertain"
    assert "'$ True' or '$ False' or '$ Uncertain'" in task.extractor
    with (FOLIO_DIR / "test.csv").open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    labels = {"(A)": "True", "(B)": "False", "(C)": "Uncertain"}
    assert task.load_test() == [Example(row["goal"], labels[row["final_target"]]) for row in rows]
    assert {ex.answer for ex in task.load()} == {"True", "False", "Uncertain"}


def test_benchmark_missing_files_names_the_flag(tmp_path: Path) -> None:
    with pytest.raises(GreaterError, match="no train.jsonl in .*data_dir"):
        get_task("gsm8k", str(tmp_path))
    assert "gsm8k" not in task_names(str(tmp_path))
    assert "folio" not in task_names(str(tmp_path))


@pytest.mark.parametrize("name", ["gsm8k", "folio", "bbh/navigate"])
def test_offline_without_data_names_the_flag(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """No local copy and no `datasets` (or no network): one error that says to pass --data-dir."""
    monkeypatch.delenv("GREATER_DATA_DIR", raising=False)
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(GreaterError, match="pass data_dir DIR") as info:
        get_task(name)
    assert "\n" not in str(info.value)

    def offline(*args: object, **kwargs: object) -> None:
        raise ConnectionError("Couldn't reach the Hugging Face Hub\n(offline)")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=offline))
    with pytest.raises(GreaterError, match="Hugging Face hub .*data_dir") as info:
        get_task(name)
    assert "\n" not in str(info.value)


def test_hub_rows_when_no_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a data folder the splits come from `datasets` (a stand-in here: tests never touch the hub)."""
    calls = []
    hub = {
        ("openai/gsm8k", "main", "train"): [{"question": f"q{i}?", "answer": f"so\n#### {i},000"} for i in range(60)],
        ("openai/gsm8k", "main", "test"): [{"question": "t?", "answer": "#### -3"}],
        ("yale-nlp/FOLIO", None, "train"): [{"premises": ["P1.", "P2."], "conclusion": "C.", "label": "Uncertain"}]
        * 60,
        ("yale-nlp/FOLIO", None, "validation"): [{"premises": "P.", "conclusion": "C.", "label": "False"}],
        ("lukaemon/bbh", "navigate", "test"): [{"input": "Go?", "target": "Yes"}] * 3,
    }

    def load_dataset(name: str, config: str | None, split: str) -> list[dict]:
        calls.append((name, config, split))
        return hub[name, config, split]

    monkeypatch.delenv("GREATER_DATA_DIR", raising=False)
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    gsm8k = get_task("gsm8k")
    assert gsm8k.load()[2] == Example("q2?", "2000")
    assert gsm8k.load_test() == [Example("t?", "-3")]
    folio = get_task("folio")
    assert folio.load()[0].question.startswith("Premise:\nP1.\nP2.\n\nQuestion:")
    assert "Statement: C." in folio.load()[0].question
    assert folio.load_test()[0].answer == "False"
    assert get_task("bbh/navigate").load() == [Example("Go?", "Yes")] * 3
    assert set(calls) == set(hub)


def test_custom_options_only_for_custom_tasks() -> None:
    with pytest.raises(GreaterError, match="^answer_type: only for custom tasks"):
        resolve_task("gen/arithmetic", None, {"answer_type": "number", "input_field": None})
    assert resolve_task("gen/arithmetic", None, {"answer_type": None, "skip_bad_rows": False}).name == "gen/arithmetic"


# --- answer matching on tricky answers -----------------------------------------------------------


@pytest.mark.parametrize(
    ("answer_type", "gold", "said", "match"),
    [
        ("choice", "(B)", "B", True),
        ("choice", "(B)", "$ B", True),
        ("choice", "(B)", "B)", True),
        ("choice", "(B)", "(b)", True),
        ("choice", "B", "(A)", False),
        ("choice", "(A)", "A", True),
        ("choice", "A", "Answer", False),
        ("number", "1234", "1,234", True),
        ("number", "1234", "$1234", True),
        ("number", "1234", "1234.0", True),
        ("number", "1234", "$1,234.00 in total", True),
        ("number", "-5", "-$5", True),
        ("number", "-5", "$-5", True),
        ("number", "-5", "5", False),
        ("number", "0.5", ".5", True),
        ("number", "-0.25", "-.25", True),
        ("number", "12", "twelve", False),
        ("text", "apple  banana", " apple banana. ", True),
        ("text", "apple banana", "Apple banana", False),
        ("yes_no", "Yes", "YES", True),
        ("yes_no", "No", "no.", True),
        ("true_false_uncertain", "Uncertain", "uncertain.", True),
        ("true_false_uncertain", "Uncertain", "$ True", False),
        ("valid_invalid", "invalid", "Invalid", True),
        # the wrapping the extractors invite ("'$ B'"), on every type (issue #12)
        ("choice", "B", " B'", True),
        ("choice", "B", " 'B'", True),
        ("choice", "B", " $ B'", True),
        ("choice", "B", "$ B$", True),
        ("choice", "B", "**B**", True),
        ("choice", "B", "“B”", True),
        ("choice", "B", "‘B’.", True),
        ("choice", "B", "`B`;", True),
        ("choice", "B", "(B).", True),
        ("choice", "B", "'(B)'", True),
        ("choice", "B", "'B' is the answer", True),
        ("choice", "B", "B, because", True),
        ("choice", "B", "(B) text (B)", True),
        ("choice", "B", " B and C", False),
        ("choice", "B", "B or C", False),
        ("choice", "B", "B, C", False),
        ("choice", "B", "B/C", False),
        ("choice", "A", "'$ A' or '$ B'", False),
        ("choice", "A", "A' or '$ B'", False),
        ("choice", "A", "(A) 01/02 (B) 03/04", False),
        ("choice", "A", "A's", False),
        ("choice", "B", "'BB'", False),
        ("choice", "B", "", False),
        ("number", "-3", " '-3'", True),
        ("number", "-3", "$ -3$", True),
        ("number", "-3", "**-3**.", True),
        ("number", "1234", "“1,234”", True),
        ("number", "3", "'3.0'!", True),
        ("number", "3", "(3)", True),
        ("number", "-3", "3'", False),
        ("yes_no", "Yes", " 'Yes'", True),
        ("yes_no", "Yes", " $ Yes'", True),
        ("yes_no", "No", "**No**!", True),
        ("yes_no", "No", "“no”;", True),
        ("true_false", "True", " True'", True),
        ("true_false", "False", "'$ False'.", True),
        ("true_false", "False", "`True`", False),
        ("valid_invalid", "valid", " 'valid'", True),
        ("valid_invalid", "invalid", "$ invalid$:", True),
        ("valid_invalid", "valid", "'invalid'", False),
        ("true_false_uncertain", "Uncertain", " Uncertain'", True),
        ("true_false_uncertain", "False", "(False).", True),
        ("text", "apple banana", " 'apple banana'", True),
        ("text", "apple banana", "$ apple banana'", True),
        ("text", "apple banana", "**apple banana**;", True),
        ("text", "apple banana", "(apple banana)!", True),
        ("text", "apple banana", "“apple banana”,", True),
        ("text", "apple banana", "apple, banana", False),
        ("text", "apple banana", "apple banana cherry", False),
        ("text", ") ]", "') ]'.", True),
        ("text", "]", "( ] )", False),
        ("text", ")", "( )", False),
        ("text", "a, b", "a b", False),
    ],
)
def test_answers_match_per_type(answer_type: str, gold: str, said: str, match: bool) -> None:
    normalize = normalizer_for(answer_type)
    assert (normalize(said) == normalize(gold)) is match


def test_normalize_true_false_uncertain() -> None:
    assert normalize_true_false_uncertain("Uncertain, because") == "Uncertain"
    assert normalize_true_false_uncertain("maybe") == "maybe"


def test_final_answer() -> None:
    assert final_answer("3 + 4 = 7\n#### 7") == " 7"
    assert final_answer("#### 1 #### 2") == " 2"
    assert final_answer("42") == "42"


@pytest.mark.parametrize(
    ("gold", "answer_type", "choices", "problem"),
    [
        ("B", "choice", None, None),
        ("S", "choice", None, "is not one of"),
        ("D", "choice", ["A", "B", "C"], "is not one of A, B, C"),
        ("Yes", "yes_no", None, None),
        ("Maybe", "yes_no", None, "is not one of Yes, No"),
        ("-3", "number", None, None),
        ("three", "number", None, "is not a number"),
        ("pos", "text", ["pos", "neg"], None),
        ("meh", "text", ["pos", "neg"], "is not one of pos, neg"),
        ("", "text", None, "is empty"),
    ],
)
def test_gold_problem(gold: str, answer_type: str, choices: list[str] | None, problem: str | None) -> None:
    found = gold_problem(gold, answer_type, choices)
    assert found is None if problem is None else problem in (found or "")


@pytest.mark.parametrize(
    ("targets", "answer_type"),
    [
        (["(A)", "(C)"], "choice"),
        (["True", "false"], "true_false"),
        (["True", "Uncertain"], "true_false_uncertain"),
        (["yes", "No"], "yes_no"),
        (["12", "-3"], "number"),
        (["1,234"], "text"),
        (["a b c"], "text"),
    ],
)
def test_infer_answer_type(targets: list[str], answer_type: str) -> None:
    assert infer_answer_type(targets) == answer_type


def test_option_letters_and_label_extractors() -> None:
    assert option_letters("Q?\nOptions:\n(A) x\n (B) y\nnot (C) here") == ["A", "B"]
    assert "'$ True' or '$ False' or '$ Uncertain'" in extractor_for("true_false_uncertain")
    assert (
        extractor_for("valid_invalid")
        == "Therefore, the final answer (use exact format: '$ valid' or '$ invalid') is $"
    )
    assert extractor_for("text", ["pos", "neg"]) == "Therefore, in one word (pos or neg), the answer is:"
    assert extractor_for("text", ["a", "b c", "d"]) == "Therefore, in one word (a, b c or d), the answer is:"


@pytest.mark.parametrize(
    ("golds", "labels"),
    [
        (["positive", "negative", "negative", "positive"], ("negative", "positive")),  # sorted, not by first row
        (["spam", "not spam", "ham"] * 2, ("ham", "not spam", "spam")),
        (["positive", "negative", "negative"], None),  # a label given once: free text
        (["a", "b"] * 6 + ["c"], None),
        ([f"w{i}" for i in range(11)] * 2, None),  # 11 distinct answers: more than labels
        (["positive"] * 4, None),  # one answer is no choice
        (["Yes", "yes", "No", "no"], None),  # two spellings of one label to the matcher
        (["a long answer of five words", "no"] * 2, None),
    ],
)
def test_infer_labels(golds: list[str], labels: tuple[str, ...] | None) -> None:
    assert infer_labels(golds) == labels


def test_label_normalizer_takes_the_first_label_named_in_any_case() -> None:
    normalize = normalizer_for("text", ("not spam", "spam"))
    assert normalize(" **Spam**.") == "spam"
    assert normalize("Not spam, clearly") == "not spam"  # the longer label where both start
    assert normalize("it is spam, not ham") == "spam"
    assert normalize("42") == "42"  # no label: unwrapped text, which matches no gold
    assert normalizer_for("text")("Spam") == "Spam"  # free text keeps case


@pytest.mark.parametrize("name", sorted(LABEL_TASKS))
def test_label_tasks_are_balanced_and_scored_by_their_labels(name: str) -> None:
    task = get_task(name)
    examples = task.load()
    counts = {label: sum(ex.answer == label for ex in examples) for label in task.choices}
    assert sum(counts.values()) == len(examples) == LABEL_POOL_SIZE  # every gold is a label
    assert max(counts.values()) - min(counts.values()) <= 1  # balanced
    assert task.answer_set == task.choices
    assert all(label in task.extractor for label in task.choices)
    example = examples[0]
    assert task.is_correct(f" {example.answer.capitalize()}.\nmore", example)
    assert task.extract(" 7") == "7"  # a number is no label
    assert get_task(name).load()[:5] == examples[:5]  # seeded


def test_demo_task_is_a_generated_task_and_the_readme_names_it() -> None:
    root = Path(__file__).resolve().parents[1]
    demo = re.search(r"^DEMO_TASK \?= (\S+)$", (root / "Makefile").read_text(), re.M)
    assert demo, "Makefile sets no DEMO_TASK"
    assert demo.group(1).startswith("gen/")
    assert demo.group(1) in task_names()  # runs without data
    assert f"**`{demo.group(1)}`**" in (root / "README.md").read_text()


def test_the_answer_target_follows_the_extractor_without_a_space_after_dollar_or_whitespace():
    task = get_task("gen/boolean_expressions")
    example = Example("True and False", "False")
    assert task.extractor.endswith("$")
    assert task.target_text(example) == "False"
    assert replace(task, extractor="So the answer is").target_text(example) == " False"
    assert replace(task, extractor="Answer: ").target_text(example) == "False"
