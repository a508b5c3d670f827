"""The evaluation harness: prompts x tasks, the comparison table (Markdown and JSON) and the predictions files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from greater.evaluate import Evaluation, evaluate
from greater.prompt_table import Cell, PromptSpec, TaskSplit, evaluate_table, prompts_table_markdown, table_data
from greater.tasks import get_task
from helpers import SHARED_DATA, generator_calls, message_lines, read_jsonl, run_cli


def check_table(out: Path, tasks: list[str], labels: list[str], n: int) -> dict:
    """table.json and table.md agree with the predictions files they point to; returns table.json."""
    table = json.loads((out / "table.json").read_text(encoding="utf-8"))
    assert [t["task"] for t in table["tasks"]] == tasks
    assert [p["label"] for p in table["prompts"]] == labels
    assert [(r["task"], r["prompt"]) for r in table["results"]] == [(t, p) for t in tasks for p in labels]
    markdown = (out / "table.md").read_text(encoding="utf-8")
    rows = {line.split("|")[1].strip(): line for line in markdown.splitlines() if line.startswith("| ")}
    assert rows["task"].split("|")[3:-1] == [f" {label} " for label in labels]
    for result in table["results"]:
        predictions = read_jsonl(out / result["predictions"])
        assert len(predictions) == n == result["n"]
        for pred in predictions:
            assert set(pred) >= {"question", "reasoning", "output", "predicted", "gold", "correct"}
            assert pred["correct"] == (pred["predicted"] == pred["gold"])
        correct = sum(pred["correct"] for pred in predictions)
        assert result["correct"] == correct
        assert result["accuracy"] == pytest.approx(correct / n)
        cells = rows[result["task"]].split("|")[2:-1]
        assert cells[0].strip() == str(n)
        assert cells[1 + labels.index(result["prompt"])].strip() == f"{100 * correct / n:.1f}"
    if len(tasks) > 1:
        means = rows["mean"].split("|")[3:-1]
        for label, mean in zip(labels, means, strict=True):
            accs = [r["accuracy"] for r in table["results"] if r["prompt"] == label]
            assert mean.strip() == f"{100 * sum(accs) / len(accs):.1f}"
    return table


def test_evaluate_two_tasks_two_prompts(
    capsys: pytest.CaptureFixture[str], tiny_model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "table"
    argv = ["evaluate", "--model", str(tiny_model_dir), "--task", "gen/arithmetic", "--task", "gen/boolean_expressions"]
    argv += ["--prompt", "A", "--prompt", "B", "--limit", "3", "--max-new-tokens", "4", "--out", str(out)]
    code, stdout, err = run_cli(capsys, argv)
    assert code == 0, err
    assert message_lines(err) == []  # only progress bars on stderr
    tasks = ["gen/arithmetic", "gen/boolean_expressions"]
    table = check_table(out, tasks, ["P1", "P2"], n=3)
    assert [(p["prompt"], p["joiner"]) for p in table["prompts"]] == [("A", ". Use"), ("B", ". Use")]
    assert table["max_new_tokens"] == 4
    assert table["split"] == "test"
    assert table["model"] == str(tiny_model_dir)
    for split, name in zip(table["tasks"], tasks, strict=True):  # the split each number was scored on
        _, test = get_task(name).split(None, None, 0)
        assert (split["seed"], split["n_train"], split["n_test"], split["n"]) == (0, 50, len(test), 3)
        predictions = read_jsonl(out / table["results"][tasks.index(name) * 2]["predictions"])
        assert [p["question"] for p in predictions] == [ex.question for ex in test[:3]]
    assert (out / "table.md").read_text(encoding="utf-8") in stdout  # the table is printed too
    assert len(re.findall(r"^accuracy: \d\.\d{4} \(\d/3\) on gen/\w+ test \[P\d\]$", stdout, re.MULTILINE)) == 4
    assert not (out / "metrics.json").exists()  # the single-result files are for one task and one prompt


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "gsm8k").is_dir(), reason="no GSM8K data")
def test_evaluate_prompt_file_baseline_and_custom_task(
    capsys: pytest.CaptureFixture[str], tiny_model_dir: Path, tmp_path: Path
) -> None:
    data = tmp_path / "qa.csv"
    data.write_text("q,a\n" + "".join(f"{i} + 1 =,{i + 1}\n" for i in range(6)), encoding="utf-8")
    (tmp_path / "prompts.txt").write_text("\n  Show the steps.  \n\n", encoding="utf-8")
    out = tmp_path / "table"
    argv = ["evaluate", "--model", str(tiny_model_dir), "--task", "gsm8k", "--task", str(data)]
    argv += ["--data-dir", str(SHARED_DATA), "--input-field", "q", "--answer-field", "a", "--answer-type", "number"]
    argv += ["--prompt-file", str(tmp_path / "prompts.txt"), "--baseline", "zs-cot", "--train", "2", "--test", "1"]
    argv += ["--max-new-tokens", "2", "--seed", "5", "--out", str(out)]
    code, _, err = run_cli(capsys, argv)
    assert code == 0, err
    table = check_table(out, ["gsm8k", str(data)], ["P1", "zs-cot"], n=1)
    assert [(p["prompt"], p["joiner"]) for p in table["prompts"]] == [
        ("Show the steps.", ". Use"),
        ("Let's think step by step.", "."),
    ]
    gsm8k, custom = table["tasks"]
    assert (gsm8k["seed"], gsm8k["n_train"], gsm8k["n_test"], gsm8k["train"], gsm8k["test"]) == (5, 2, 1, 2, 1)
    assert (custom["n_train"], custom["n_test"]) == (2, 1)
    assert all(re.fullmatch(r"\d+", p["gold"]) for p in read_jsonl(out / table["results"][0]["predictions"]))


def test_evaluate_needs_a_prompt(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, ["evaluate", "--task", "gen/arithmetic", "--model", "/no/such/model"])
    assert code == 2
    assert message_lines(err) == ["greater: error: nothing to score: give --prompt, --prompt-file, --baseline or --run"]


def test_evaluate_empty_prompt_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_text("\n \n", encoding="utf-8")
    argv = ["evaluate", "--task", "gen/arithmetic", "--prompt-file", str(tmp_path / "p.txt")]
    code, _, err = run_cli(capsys, argv)
    assert code == 2
    assert "has no prompts" in err


def test_evaluate_table_in_process(tiny_model, smol_tokenizer) -> None:
    """The harness as a function: same numbers as evaluate() on each task x prompt, reported as they finish."""
    task = get_task("gen/number_comparison")
    examples = task.split(4, 1, 0)[1]
    prompts = [PromptSpec("short", "Answer."), PromptSpec("cot", "Let's think step by step.", ".")]
    seen: list[str] = []
    cells = evaluate_table(
        tiny_model,
        smol_tokenizer,
        [TaskSplit(task, examples, {"seed": 0})],
        prompts,
        max_new_tokens=3,
        on_cell=lambda cell: seen.append(cell.prompt.label),
    )
    assert seen == ["short", "cot"]
    for cell, prompt in zip(cells, prompts, strict=True):
        alone = evaluate(
            tiny_model, smol_tokenizer, task, examples, prompt.text, joiner=prompt.joiner, max_new_tokens=3
        )
        assert cell.evaluation.predictions == alone.predictions
        # the reasoning's length in tokens, at the cap when cut off (random weights rarely stop early)
        assert max(pred["reasoning_tokens"] for pred in alone.predictions) == 3


def test_evaluate_batch_by_batch_saves_each_batch_and_resumes_to_the_same_predictions(
    tiny_model, smol_tokenizer, monkeypatch
) -> None:
    task = get_task("gen/arithmetic")
    examples = task.load()[:5]  # questions of several lengths: the generator reorders them
    assert len({len(ex.question) for ex in examples}) > 1
    batches = generator_calls(monkeypatch, "_decode_batch")  # every generation batch the model ran
    settings = {"joiner": ".", "max_new_tokens": 6, "batch_size": 2}
    whole = evaluate(tiny_model, smol_tokenizer, task, examples, "Think.", **settings)
    whole_batches, batches[:] = list(batches), []
    saves: list[dict[int, list[int]]] = []
    sizes: list[int] = []
    batched = evaluate(
        tiny_model,
        smol_tokenizer,
        task,
        examples,
        "Think.",
        on_reasoning=lambda done, size: saves.append(dict(done)) or sizes.append(size),
        **settings,
    )
    assert batched.predictions == whole.predictions
    assert batches == whole_batches  # reasoning: the same three batches of 2, 2 and 1 rows; then the answers
    assert [len(save) for save in saves] == [2, 4, 5] and sorted(saves[-1]) == list(range(5))
    assert sizes == [2, 2, 2]
    assert all(saves[-1][i] == ids for save in saves for i, ids in save.items())  # a saved reasoning stays

    batches.clear()
    resumed = evaluate(tiny_model, smol_tokenizer, task, examples, "Think.", saved_reasoning=saves[0], **settings)
    assert resumed.predictions == whole.predictions
    assert batches == whole_batches[1:]  # the saved batch is not generated again


def test_prompts_table_markdown_layout() -> None:
    split_a = TaskSplit(get_task("gen/arithmetic"), [], {"seed": 1})
    split_b = TaskSplit(get_task("gen/object_counting"), [], {"seed": 1})
    p1, p2 = PromptSpec("P1", "Think."), PromptSpec("zs-cot", "Let's think step by step.", ".")

    def cell(split: TaskSplit, prompt: PromptSpec, correct: list[bool]) -> Cell:
        predictions = [{"correct": c} for c in correct]
        return Cell(split, prompt, Evaluation(sum(correct) / len(correct), len(correct), predictions))

    cells = [
        cell(split_a, p1, [True, False]),
        cell(split_a, p2, [True, True]),
        cell(split_b, p1, [False, False]),
        cell(split_b, p2, [True, False]),
    ]
    table = table_data(cells, model="m")
    assert table["model"] == "m"
    assert table["tasks"][0] == {"task": "gen/arithmetic", "seed": 1, "n": 0}
    assert table["results"][1] == {
        "task": "gen/arithmetic",
        "prompt": "zs-cot",
        "accuracy": 1.0,
        "correct": 2,
        "n": 2,
        "predictions": "predictions/gen_arithmetic__zs-cot.jsonl",
    }
    assert prompts_table_markdown(table).splitlines()[:5] == [
        "| task | n | P1 | zs-cot |",
        "|---|---:|---:|---:|",
        "| gen/arithmetic | 0 | 50.0 | 100.0 |",
        "| gen/object_counting | 0 | 0.0 | 50.0 |",
        "| mean | | 25.0 | 75.0 |",
    ]
    assert "- zs-cot: \"Let's think step by step.\" (joiner '.')" in prompts_table_markdown(table)
