"""prompt.json: what it holds, `greater evaluate --prompt-file prompt.json` reproducing the run's test
accuracy, and `greater export` (text, messages, and a promptfoo config run by the real promptfoo CLI)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from greater.artifact import FORMAT, folder_sha256, tokenizer_sha256
from greater.cli import PROMPTFOO_VERSION, main
from greater.evaluate import evaluate
from greater.tasks import get_task
from helpers import TOOLS


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.mark.slow
def test_prompt_json_holds_the_prompt_the_chat_and_the_identities(finished_run, tiny_model_dir, smol_tokenizer):
    art, result = _json(finished_run / "prompt.json"), _json(finished_run / "result.json")
    assert art["format"] == FORMAT
    assert (art["prompt"], art["prompt_ids"], art["joiner"]) == (result["prompt"], result["prompt_ids"], ". Use")
    task = get_task("gen/boolean_expressions")
    assert (art["extractor"], art["answer_type"], art["choices"]) == (task.extractor, "true_false", ["True", "False"])
    user = "{question}. Use " + result["prompt"]
    assert art["messages"] == [
        {"role": "user", "content": user},
        {"role": "assistant", "content": "{reasoning} " + task.extractor},
    ]
    # the rendered chat is the tokenizer's own template around the user turn, then reasoning and extractor
    rendered = smol_tokenizer.apply_chat_template(
        [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
    )
    assert art["rendered"] == rendered + "{reasoning} " + task.extractor
    assert art["model"]["kind"] == "folder" and art["model"]["sha256"] == folder_sha256(tiny_model_dir)
    assert art["tokenizer"]["sha256"] == tokenizer_sha256(smol_tokenizer)
    assert art["scores"]["test_accuracy"] == result["test_accuracy"]
    assert art["scores"]["dev_accuracy"] == result["dev_accuracy"] and art["scores"]["score"] == result["score"]
    assert art["task"]["split"] == result["split"] and art["evaluation"]["max_new_tokens"] == 6
    assert art["greater_version"]


def test_folder_hash_changes_with_the_weights(tmp_path, tiny_model_dir):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    assert folder_sha256(copy) == folder_sha256(tiny_model_dir)
    with (copy / "model.safetensors").open("ab") as fh:
        fh.write(b"\0")
    assert folder_sha256(copy) != folder_sha256(tiny_model_dir)


def test_evaluate_prompt_json_alone_reproduces_the_runs_test_accuracy(
    finished_run, tiny_model_dir, tiny_model, smol_tokenizer, tmp_path, capsys
):
    alone = tmp_path / "shared" / "my-prompt.json"  # just the file, away from its run
    alone.parent.mkdir()
    shutil.copy(finished_run / "prompt.json", alone)
    out = tmp_path / "ev"
    assert main(["evaluate", "--prompt-file", str(alone), "--model", str(tiny_model_dir), "--out", str(out)]) == 0
    metrics = _json(out / "metrics.json")
    result = _json(finished_run / "result.json")
    assert metrics["accuracy"] == result["test_accuracy"]["optimized"]
    assert metrics["n"] == result["split"]["n_test"] == 3 and metrics["fingerprint"] == result["split"]["fingerprint"]
    # and per example the same answers as greater's own evaluation of that prompt on the run's test split
    drawn = get_task("gen/boolean_expressions").splits(4, 2, 3, 0)
    direct = evaluate(tiny_model, smol_tokenizer, get_task("gen/boolean_expressions"), drawn.test, result["prompt"],
                      max_new_tokens=6)  # fmt: skip
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert predictions == direct.predictions


def test_a_prompt_file_of_lines_still_works_and_bad_json_is_one_error(tmp_path, tiny_model_dir, capsys):
    lines = tmp_path / "prompts.txt"
    lines.write_text("Think step by step.\n\nAnswer.\n")
    argv = ["evaluate", "--model", str(tiny_model_dir), "--task", "gen/arithmetic", "--limit", "1"]
    assert main([*argv, "--max-new-tokens", "2", "--prompt-file", str(lines)]) == 0
    assert "P2" in capsys.readouterr().out
    broken = tmp_path / "prompt.json"
    broken.write_text('{"format": "greater-prompt/1", "prompt": ')
    assert main([*argv, "--prompt-file", str(broken)]) == 2
    err = capsys.readouterr().err
    assert "greater: error:" in err and "not valid JSON" in err and "Traceback" not in err


def test_export_text_and_messages(finished_run, tmp_path, capsys):
    art = _json(finished_run / "prompt.json")
    capsys.readouterr()
    assert main(["export", str(finished_run), "--format", "text"]) == 0
    assert capsys.readouterr().out == art["prompt"] + "\n"
    assert main(["export", str(finished_run), "--format", "messages", "--out", str(tmp_path / "m.json")]) == 0
    exported = _json(tmp_path / "m.json")
    assert exported["messages"] == art["messages"] and exported["extractor"] == art["extractor"]


def _promptfoo() -> Path:
    binary = TOOLS / "node_modules" / ".bin" / "promptfoo"
    if not binary.exists():  # CI installs it (make test-deps); a missing tool must fail, not skip
        pytest.fail(f"promptfoo {PROMPTFOO_VERSION} is not installed at {binary}; run `make test-deps`")
    version = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=120)
    assert version.stdout.strip().splitlines()[0] == PROMPTFOO_VERSION, version.stdout + version.stderr
    return binary


@pytest.mark.slow
def test_promptfoo_runs_the_exported_config_with_greaters_matcher(finished_run, tiny_model_dir, tmp_path, capsys):
    binary = _promptfoo()
    config = tmp_path / "pf" / "config.yaml"
    assert main(["export", str(finished_run), "--format", "promptfoo", "--out", str(config)]) == 0
    data = yaml.safe_load(config.read_text())
    result = _json(finished_run / "result.json")
    assert len(data["tests"]) == result["split"]["n_test"]
    # one more test whose gold is what greater's model answers: promptfoo must pass exactly that one more
    first = data["tests"][0]["vars"]["question"]
    capsys.readouterr()
    ev = tmp_path / "ev"
    assert main(["evaluate", "--prompt-file", str(finished_run / "prompt.json"), "--out", str(ev)]) == 0
    answered = json.loads((ev / "predictions.jsonl").read_text().splitlines()[0])
    assert answered["question"] == first
    data["tests"].append({"vars": {"question": first, "answer": answered["predicted"]}})
    config.write_text(yaml.safe_dump(data, sort_keys=False))

    home = tmp_path / "pf-home"
    env = dict(os.environ, PROMPTFOO_PYTHON=sys.executable, PROMPTFOO_CONFIG_DIR=str(home), HF_HUB_OFFLINE="1")
    env |= {"PROMPTFOO_DISABLE_TELEMETRY": "1", "PROMPTFOO_DISABLE_UPDATE": "1", "TRANSFORMERS_OFFLINE": "1"}
    out = tmp_path / "pf" / "results.json"
    proc = subprocess.run(
        [str(binary), "eval", "-c", str(config), "--no-cache", "--no-progress-bar", "-o", str(out)],
        cwd=config.parent, env=env, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert proc.returncode in (0, 100), proc.stdout[-3000:] + proc.stderr[-3000:]  # 100: some tests failed
    stats = _json(out)["results"]["stats"]
    correct = round(result["test_accuracy"]["optimized"] * result["split"]["n_test"])
    assert stats["errors"] == 0, proc.stdout[-3000:]
    assert stats["successes"] == correct + 1
    assert stats["failures"] == len(data["tests"]) - correct - 1
