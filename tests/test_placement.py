"""Prompt placement end to end on the tiny model: a run with the prompt in the system turn resumes
exactly, its prompt.json holds the chat as the template renders it, `greater evaluate --prompt-file`
scores it where it was optimized, and a template without a system turn is one clear error."""

from __future__ import annotations

import json
import shutil

import pytest
from transformers import AutoTokenizer

from greater.cli import main
from greater.evaluate import evaluate
from greater.inference.layout import encode
from greater.tasks import get_task
from helpers import (
    assert_same,
    make_interrupted_run,
    message_lines,
    read_json,
    run_argv,
    run_cli,
    steps_without_timing,
)

TASK = get_task("gen/boolean_expressions")
# Gemma-2's template refuses a system message, as this one does
NO_SYSTEM_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.mark.slow
def test_a_system_placed_run_resumes_exactly_and_its_prompt_json_is_the_chat_it_ran(
    tiny_model_dir, tiny_model, smol_tokenizer, tmp_path, monkeypatch
):
    argv = [*run_argv(tiny_model_dir, tmp_path / "straight", steps=4), "--placement", "system"]
    assert main(argv) == 0
    stopped = tmp_path / "stopped"
    make_interrupted_run([*run_argv(tiny_model_dir, stopped, steps=4), "--placement", "system"], monkeypatch)
    assert main(["optimize", "--resume", str(stopped)]) == 0
    straight, resumed = read_json(tmp_path / "straight" / "result.json"), read_json(stopped / "result.json")
    assert resumed["prompt"] == straight["prompt"] and resumed["test_accuracy"] == straight["test_accuracy"]
    assert_same(
        steps_without_timing(stopped / "steps.jsonl"), steps_without_timing(tmp_path / "straight" / "steps.jsonl")
    )
    assert read_json(stopped / "run.json")["config"]["placement"] == "system"

    art = read_json(stopped / "prompt.json")
    prompt = resumed["prompt"]
    assert art["placement"] == "system"
    assert art["prompt_ids"] == encode(smol_tokenizer, prompt)  # the system text's own tokens: no leading space
    assert art["messages"][:2] == [{"role": "system", "content": prompt}, {"role": "user", "content": "{question}"}]
    rendered = smol_tokenizer.apply_chat_template(art["messages"][:2], tokenize=False, add_generation_prompt=True)
    assert art["rendered"] == rendered + "{reasoning} " + TASK.extractor
    assert "You are a helpful AI assistant" not in rendered  # the prompt replaced the template's default system text

    # scored again from the file alone: where it was optimized, the run's own test accuracy and answers
    out = tmp_path / "ev"
    assert main(["evaluate", "--prompt-file", str(stopped / "prompt.json"), "--model", str(tiny_model_dir),
                 "--out", str(out)]) == 0  # fmt: skip
    assert read_json(out / "metrics.json")["accuracy"] == resumed["test_accuracy"]["optimized"]
    test = TASK.splits(4, 0, 2, 0).test
    placed = evaluate(tiny_model, smol_tokenizer, TASK, test, prompt, max_new_tokens=8, placement="system")
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert predictions == placed.predictions


@pytest.mark.slow
def test_placement_system_on_a_template_without_a_system_turn_is_one_line_and_exit_2(tiny_model_dir, tmp_path, capsys):
    folder = tmp_path / "no-system-turn"
    shutil.copytree(tiny_model_dir, folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = NO_SYSTEM_TEMPLATE
    tokenizer.save_pretrained(folder)
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, [*run_argv(folder, out, steps=2), "--placement", "system"])
    assert code == 2
    assert message_lines(err) == [
        "greater: error: placement system: this model's chat template has no system turn (System role not supported)"
    ]
    assert not out.exists()  # refused before the run folder is made
    code, _, _ = run_cli(capsys, [*run_argv(folder, tmp_path / "before", steps=1), "--placement", "before-question"])
    assert code == 0  # the other placements need a user turn only
