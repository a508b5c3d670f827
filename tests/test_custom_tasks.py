"""Custom tasks: data files (.jsonl, .csv, .json) and task.toml, their settings, and line-numbered bad rows."""

from __future__ import annotations

import csv
import json
import logging
import re
from pathlib import Path

import pytest

from greater.errors import GreaterError
from greater.tasks import Example, resolve_task
from greater.tasks.custom import is_custom_task, parse_choices
from greater.tasks.rows import read_records
from helpers import assert_scores, message_lines, run_cli

MCQ = [
    {"input": "Pick one.\nOptions:\n(A) red\n(B) green\n(C) blue", "target": "(B)"},
    {"input": "Pick again.\nOptions:\n(A) red\n(B) green\n(C) blue", "target": "A"},
    {"input": "And again.\nOptions:\n(A) red\n(B) green\n(C) blue", "target": "(C)"},
    {"input": "Last one.\nOptions:\n(A) red\n(B) green\n(C) blue", "target": "$ A"},
]
GOLD = ["B", "A", "C", "A"]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows), "utf-8")
    return path


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def bad_rows(error: pytest.ExceptionInfo[GreaterError]) -> list[int]:
    """The line numbers a bad-rows error names."""
    return [int(n) for n in re.findall(r"line (\d+):", str(error.value))]


# --- round trips ---------------------------------------------------------------------------------


def test_jsonl_round_trip(tmp_path: Path) -> None:
    task = resolve_task(str(write_jsonl(tmp_path / "mcq.jsonl", MCQ)))
    assert task.name == str(tmp_path / "mcq.jsonl")
    assert task.answer_type == "choice"  # inferred from the targets
    assert task.load() == [Example(row["input"], gold) for row, gold in zip(MCQ, GOLD, strict=True)]
    assert "'$ A' or '$ B' or '$ C'" in task.extractor  # letters from the options in the questions
    for example in task.load():
        assert_scores(task, example)


def test_jsonl_question_answer_fields_and_gsm8k_answers(tmp_path: Path) -> None:
    rows = [{"question": f"{i} + {i}?", "answer": f"{i} + {i} = {2 * i}\n#### {2 * i:,}"} for i in range(498, 502)]
    task = resolve_task(str(write_jsonl(tmp_path / "math.jsonl", rows)), None, {"answer_type": "number"})
    assert [ex.answer for ex in task.load()] == ["996", "998", "1000", "1002"]
    assert task.extractor == "Therefore, the final answer (arabic numerals only) is $"
    assert task.default_train == 2
    assert [len(part) for part in task.split(None, None, 0)] == [2, 2]


def test_csv_round_trip(tmp_path: Path) -> None:
    rows = [["Is it?\nThink about it.", "yes"], ["Is it not?", "No"], ["Well", "YES"]]
    task = resolve_task(str(write_csv(tmp_path / "yn.csv", ["question", "answer"], rows)))
    assert task.answer_type == "yes_no"
    assert task.load() == [
        Example("Is it?\nThink about it.", "Yes"),
        Example("Is it not?", "No"),
        Example("Well", "Yes"),
    ]


def test_csv_with_named_fields_and_numbers(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "n.csv", ["id", "problem", "solution"], [["1", "2+2", "4"], ["2", "10*100", "1,000"]])
    options = {"input_field": "problem", "answer_field": "solution", "answer_type": "number"}
    task = resolve_task(str(path), None, options)
    assert task.load() == [Example("2+2", "4"), Example("10*100", "1000")]


@pytest.mark.parametrize("wrapped", [False, True], ids=["list", "examples-object"])
def test_json_round_trip(tmp_path: Path, wrapped: bool) -> None:
    path = tmp_path / "mcq.json"
    path.write_text(json.dumps({"canary": "x", "examples": MCQ} if wrapped else MCQ, indent=2), "utf-8")
    task = resolve_task(str(path))
    assert [ex.answer for ex in task.load()] == GOLD


def test_toml_round_trip(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    rows = [{"text": f"review {i}", "label": "pos" if i % 2 else "neg"} for i in range(6)]
    write_jsonl(tmp_path / "data" / "reviews.jsonl", rows)
    (tmp_path / "task.toml").write_text(
        "\n".join(
            [
                'name = "sentiment"',
                'description = "Is a review positive or negative?"',
                'data = "data/reviews.jsonl"',
                'input_field = "text"',
                'answer_field = "label"',
                'answer_type = "text"',
                'choices = ["pos", "neg"]',
            ]
        ),
        "utf-8",
    )
    task = resolve_task(str(tmp_path / "task.toml"))
    assert (task.name, task.description, task.answer_type) == ("sentiment", "Is a review positive or negative?", "text")
    assert task.load() == [Example(row["text"], row["label"]) for row in rows]
    assert task.extractor == "Therefore, in one word (pos or neg), the answer is:"
    assert task.answer_set == ("pos", "neg")  # declared choices: `greater compare`'s uniform chance is 1/2
    for example in task.load():
        assert_scores(task, example)
    # a flag given on the command line wins over the task file
    assert resolve_task(str(tmp_path / "task.toml"), None, {"extractor": "So the answer is $"}).extractor == (
        "So the answer is $"
    )


def test_toml_choice_letters(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "mcq.jsonl", MCQ)
    (tmp_path / "t.toml").write_text('data = "mcq.jsonl"\nanswer_type = "choice"\nchoices = "ABCD"\n', "utf-8")
    task = resolve_task(str(tmp_path / "t.toml"))
    assert task.name == str(tmp_path / "t.toml")
    assert "'$ A' or '$ B' or '$ C' or '$ D'" in task.extractor
    assert task.answer_set == ("A", "B", "C", "D")


@pytest.mark.parametrize(
    ("value", "answer_type", "expected"),
    [
        ("A,B,C", "choice", ("A", "B", "C")),
        ("ABCD", "choice", ("A", "B", "C", "D")),
        ("(A), (B)", "choice", ("A", "B")),
        (["a", "b"], "choice", ("A", "B")),
        ("pos, neg", "text", ("pos", "neg")),
        ("Maybe", "text", ("Maybe",)),
        (None, "choice", None),
    ],
)
def test_parse_choices(value: object, answer_type: str, expected: tuple[str, ...] | None) -> None:
    assert parse_choices(value, answer_type) == expected


@pytest.mark.parametrize("value", ["A,Z", "", "red,green"])
def test_parse_choices_rejects(value: str) -> None:
    with pytest.raises(GreaterError, match="choices"):
        parse_choices(value, "choice")


def test_is_custom_task() -> None:
    assert all(map(is_custom_task, ["d.jsonl", "x/d.CSV", "d.json", "task.toml"]))
    assert not any(map(is_custom_task, ["gsm8k", "bbh/navigate", "gen/arithmetic"]))


# --- bad rows ------------------------------------------------------------------------------------


def test_jsonl_bad_rows_have_line_numbers(tmp_path: Path) -> None:
    rows = [
        {"input": "ok?", "target": "(A)"},
        '{"input": "broken", ',
        "",
        {"input": "no target"},
        {"input": "outside", "target": "(D)"},
        ["not", "an", "object"],
        {"input": "", "target": "(A)"},
        {"input": "ok too", "target": "B"},
    ]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(GreaterError) as info:
        resolve_task(str(path), None, {"answer_type": "choice", "choices": "A,B,C"})
    message = str(info.value)
    assert message.startswith(f"{path}: 5 bad row(s) of 7: ")
    assert "\n" not in message
    assert bad_rows(info) == [2, 4, 5, 6, 7]
    assert "line 2: invalid JSON" in message
    assert "line 4: missing field 'target'" in message
    assert "line 5: answer '(D)' is not one of A, B, C" in message
    assert "line 6: is a JSON list, not an object" in message
    assert "line 7: field 'input' is empty" in message
    assert "or pass skip_bad_rows to leave them out" in message  # a library call: the setting's name


def test_skip_bad_rows_reports_how_many(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = [{"input": f"q{i}", "target": str(i)} for i in range(4)] + [{"input": "q", "target": "many"}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(GreaterError, match=r"line 5: answer 'many' is not a number"):
        resolve_task(str(path), None, {"answer_type": "number"})
    with caplog.at_level(logging.WARNING):
        task = resolve_task(str(path), None, {"answer_type": "number", "skip_bad_rows": True})
    assert [ex.answer for ex in task.load()] == ["0", "1", "2", "3"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "skipped 1 bad row(s) of 5" in warnings[0]
    assert "line 5" in warnings[0]


def test_many_bad_rows_are_summarised(tmp_path: Path) -> None:
    rows = [{"input": f"q{i}", "target": "x"} for i in range(9)] + [{"input": "q", "target": "1"}]
    with pytest.raises(GreaterError) as info:
        resolve_task(str(write_jsonl(tmp_path / "d.jsonl", rows)), None, {"answer_type": "number"})
    assert bad_rows(info) == [1, 2, 3, 4, 5]
    assert "9 bad row(s) of 10" in str(info.value)
    assert "and 4 more" in str(info.value)


def test_all_rows_bad_is_refused_even_when_skipping(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"input": "q", "target": "x"}])
    with pytest.raises(GreaterError, match="1 bad row"):
        resolve_task(str(path), None, {"answer_type": "number", "skip_bad_rows": True})


def test_csv_bad_rows_count_lines_of_multiline_fields(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text('input,target\n"two\nlines",True\nshort\n"three\nlines\nhere",maybe\nfine,False\n', "utf-8")
    with pytest.raises(GreaterError) as info:
        resolve_task(str(path), None, {"answer_type": "true_false"})
    assert bad_rows(info) == [4, 5]
    assert "line 4: has 1 fields, the header has 2" in str(info.value)
    assert "line 5: answer 'maybe' is not one of True, False" in str(info.value)
    task = resolve_task(str(path), None, {"answer_type": "true_false", "skip_bad_rows": True})
    assert task.load() == [Example("two\nlines", "True"), Example("fine", "False")]


def test_json_items_have_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"examples": [MCQ[0], {"input": "x"}, MCQ[1], 7]}, indent=2), "utf-8")
    with pytest.raises(GreaterError) as info:
        resolve_task(str(path))
    lines = path.read_text("utf-8").splitlines()
    expected = [i + 1 for i, line in enumerate(lines) if line.strip() in ('"input": "x"', "7")]
    assert bad_rows(info) == [expected[0] - 1, expected[1]]  # an object starts at its "{" line
    assert [r.line for r in read_records(path)][0] == 3


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        ("", ".csv", "empty CSV file"),
        ('[{"input": 1,}]', ".json", r"invalid JSON at line 1, column \d+"),
        ('{"rows": []}', ".json", 'no "examples" list'),
        ("\n\n", ".jsonl", "no examples"),
        ('{"text": "q", "label": "A"}\n', ".jsonl", "no 'input' or 'question' field .*text.*pass input_field NAME"),
    ],
)
def test_bad_files(tmp_path: Path, content: str, suffix: str, message: str) -> None:
    path = tmp_path / f"d{suffix}"
    path.write_text(content, "utf-8")
    with pytest.raises(GreaterError, match=message):
        resolve_task(str(path))


def test_unsupported_format_and_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "t.toml").write_text('data = "d.tsv"\n', "utf-8")
    (tmp_path / "d.tsv").write_text("input\ttarget\n", "utf-8")
    with pytest.raises(GreaterError, match="unsupported data format '.tsv'"):
        resolve_task(str(tmp_path / "t.toml"))
    (tmp_path / "d.jsonl").write_bytes(b'{"input": "\xff", "target": "A"}\n')
    with pytest.raises(GreaterError, match="not UTF-8"):
        resolve_task(str(tmp_path / "d.jsonl"))


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('data = "d.jsonl"\ncolour = "red"\n', "unknown key 'colour'"),
        ('data = "d.jsonl"\nchoices = 3\n', "'choices' must be a str or a list"),
        ('input_field = "q"\n', 'no "data" key'),
        ('data = "d.jsonl"\ndata2 = \n', r"invalid TOML \(.*line 2"),
        ('data = "nope.jsonl"\n', "nope.jsonl not found"),
        ('data = "d.jsonl"\nanswer_type = "colour"\n', "unknown answer type 'colour'"),
    ],
)
def test_bad_task_files(tmp_path: Path, toml: str, message: str) -> None:
    write_jsonl(tmp_path / "d.jsonl", MCQ)
    (tmp_path / "task.toml").write_text(toml, "utf-8")
    with pytest.raises(GreaterError, match=message):
        resolve_task(str(tmp_path / "task.toml"))


# --- the command line ----------------------------------------------------------------------------


def _bad_jsonl(tmp: Path) -> Path:
    good = [{"input": f"q{i}", "target": str(i)} for i in range(4)]
    return write_jsonl(tmp / "bad.jsonl", [good[0], "{oops", {"input": "q3"}, *good[1:]])


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["evaluate", "--task", "{bad}", "--prompt", "A"], "2 bad row(s) of 6: line 2: invalid JSON"),
        (["optimize", "--task", "{bad}"], "line 3: missing field 'target'"),
        (["evaluate", "--task", "{toml}", "--prompt", "A"], "unknown key 'colour'"),
        (["evaluate", "--task", "gen/arithmetic", "--answer-type", "number", "--prompt", "A"], "only for custom"),
        (["evaluate", "--task", "{missing}", "--prompt", "A"], "not found"),
    ],
)
def test_cli_bad_custom_task_is_one_clean_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str], expected: str
) -> None:
    (tmp_path / "task.toml").write_text('data = "bad.jsonl"\ncolour = "red"\n', "utf-8")
    paths = {"bad": str(_bad_jsonl(tmp_path)), "toml": str(tmp_path / "task.toml"), "missing": "none.csv"}
    argv = [arg.format(**paths) for arg in argv] + ["--model", "/no/such/model", "--out", str(tmp_path / "out")]
    code, _, err = run_cli(capsys, argv)
    assert code == 2
    lines = message_lines(err)
    assert len(lines) == 1, err
    assert lines[0].startswith("greater: error: "), err
    assert expected in lines[0], err
    assert not (tmp_path / "out").exists()


def test_cli_skip_bad_rows_warns(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    argv = ["evaluate", "--task", str(_bad_jsonl(tmp_path)), "--skip-bad-rows", "--prompt", "A"]
    with caplog.at_level(logging.WARNING):
        code, _, err = run_cli(capsys, [*argv, "--model", "/no/such/model"])
    assert code == 2  # the data is fine once the bad rows are skipped; the model path is not
    assert "model path does not exist" in err
    assert any("skipped 2 bad row(s) of 6" in r.getMessage() for r in caplog.records)


def test_optimize_custom_task_records_options_and_resumes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_model_dir: Path
) -> None:
    """The custom-task settings are stored in run.json, so --resume reads the data the same way."""
    rows = [{"q": f"{a} + {a} =", "a": f"#### {2 * a}"} for a in range(8)]
    data = write_jsonl(tmp_path / "sums.jsonl", rows)
    run = tmp_path / "run"
    argv = ["optimize", "--model", str(tiny_model_dir), "--task", str(data), "--input-field", "q"]
    argv += ["--answer-field", "a", "--answer-type", "number", "--steps", "1", "--train", "2", "--test", "2"]
    argv += ["--max-new-tokens", "4", "--out", str(run)]
    code, _, err = run_cli(capsys, argv)
    assert code == 0, err
    info = json.loads((run / "run.json").read_text("utf-8"))
    assert info["task"] == str(data)
    assert info["task_options"] == {"input_field": "q", "answer_field": "a", "answer_type": "number"}
    assert (info["split"]["n_train"], info["split"]["n_test"], info["split"]["seed"]) == (2, 2, 0)
    # resume a run whose last step is done but whose result was not written yet
    (run / "result.json").unlink()
    code, _, err = run_cli(capsys, ["optimize", "--resume", str(run), "--answer-type", "text"])
    assert code == 2
    assert "--answer-type 'text' differs from the run's stored value 'number'" in err
    code, _, err = run_cli(capsys, ["optimize", "--resume", str(run)])
    assert code == 0, err
    assert (run / "result.json").is_file()


def test_word_labels_are_inferred_said_on_stderr_and_overridable(tmp_path: Path, caplog) -> None:
    """A CSV whose gold answers are a few words given more than once is a label task: the labels become its
    choices, the extractor names them (no "$"), and an answer is the first label the model names."""
    path = tmp_path / "reviews.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["question", "answer"])
        writer.writerows([(f"review {i}", "positive" if i % 3 else "negative") for i in range(9)])
    with caplog.at_level(logging.WARNING):
        task = resolve_task(str(path))
    assert (task.answer_type, task.choices) == ("text", ("negative", "positive"))
    assert task.extractor == "Therefore, in one word (negative or positive), the answer is:"
    assert "2 labels (negative, positive)" in caplog.text and "answer_type text" in caplog.text
    example = task.load()[1]
    assert example.answer == "positive"
    assert task.is_correct(" Positive, because the food was good.", example)
    assert not task.is_correct(" 5", example)
    assert task.target_text(example) == " positive"  # after "is:" one space, as the model writes it
    # the user's word wins: explicit free text keeps the old matcher and extractor; --choices sets the labels
    free = resolve_task(str(path), None, {"answer_type": "text"})
    assert (free.choices, free.extractor) == (None, "Therefore, the final answer (on one line, nothing else) is $")
    assert not free.is_correct(" Positive", example)
    chosen = resolve_task(str(path), None, {"choices": "positive,negative"})
    assert chosen.extractor == "Therefore, in one word (positive or negative), the answer is:"
    # answers given once each are free text, not labels
    write_jsonl(tmp_path / "free.jsonl", [{"input": f"q{i}", "target": f"answer {i}"} for i in range(6)])
    assert resolve_task(str(tmp_path / "free.jsonl")).choices is None


def test_a_label_task_on_the_command_line_is_said_and_scored_by_label(
    tiny_model_dir: Path, tmp_path: Path, capsys, caplog
) -> None:
    path = tmp_path / "labels.jsonl"
    write_jsonl(path, [{"input": f"q{i}", "target": ["yes please", "no thanks"][i % 2]} for i in range(6)])
    argv = ["evaluate", "--model", str(tiny_model_dir), "--task", str(path), "--prompt", "Answer."]
    argv += ["--test", "2", "--train", "2", "--max-new-tokens", "2", "--out", str(tmp_path / "eval")]
    with caplog.at_level(logging.WARNING):
        code, _, err = run_cli(capsys, argv)
    assert code == 0, err
    assert "2 labels (no thanks, yes please)" in caplog.text
    predictions = [json.loads(line) for f in (tmp_path / "eval").glob("*.jsonl") for line in f.open()]
    assert len(predictions) == 2 and {p["gold"] for p in predictions} <= {"no thanks", "yes please"}
