"""The real embedded model (SmolLM2-135M, via the default --model): one optimization step and evaluation.

Slow (tens of seconds on CPU): every test is marked `slow`; deselect with `-m "not slow"`.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from greater.cli import main
from greater.inference.layout import encode_prompt
from greater.inference.model import EMBEDDED_MODEL, load_model
from helpers import BBH_DIR, check_compare_table, read_json, read_jsonl

# one pytest worker runs this file's tests: its module fixture is made once (make test: --dist loadgroup)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("integration")]

MAX_NEW = "24"


@pytest.fixture(scope="module")
def embedded_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One GReaTer step of the embedded model on gen/boolean_expressions."""
    out = tmp_path_factory.mktemp("embedded") / "run"
    argv = ["optimize", "--task", "gen/boolean_expressions", "--steps", "1", "--train", "4", "--test", "4"]
    assert main([*argv, "--max-new-tokens", MAX_NEW, "--out", str(out)]) == 0
    return out


def check_predictions(out_dir: Path, n: int) -> dict:
    predictions = read_jsonl(out_dir / "predictions.jsonl")
    assert len(predictions) == n
    for pred in predictions:
        assert set(pred) >= {"question", "reasoning", "output", "predicted", "gold", "correct"}
        assert pred["gold"] in ("True", "False")
        assert pred["correct"] == (pred["predicted"] == pred["gold"])
    metrics = read_json(out_dir / "metrics.json")
    assert metrics["n"] == n
    assert 0.0 <= metrics["accuracy"] <= 1.0
    assert metrics["accuracy"] == pytest.approx(sum(p["correct"] for p in predictions) / n)
    return metrics


def test_one_step_on_embedded_model(embedded_run: Path) -> None:
    result = read_json(embedded_run / "result.json")
    assert result["model"].startswith("embedded:")
    assert result["task"] == "gen/boolean_expressions"
    assert result["steps"] == 1
    assert result["stopped"] == "budget"
    assert (result["split"]["seed"], result["split"]["train"], result["split"]["test"]) == (0, 4, 4)
    assert result["config"]["max_new_tokens"] == int(MAX_NEW)
    assert math.isfinite(result["score"])
    assert math.isfinite(result["initial_score"])
    assert result["score"] <= result["initial_score"]
    for value in result["test_accuracy"].values():
        assert 0.0 <= value <= 1.0
    assert (embedded_run / "prompt.txt").read_text(encoding="utf-8") == result["prompt"] + "\n"

    (record,) = read_jsonl(embedded_run / "steps.jsonl")
    assert record["step"] == 1
    assert record["position"] == 0
    assert record["prompt"] == result["initial_prompt"]
    assert math.isfinite(record["loss"])
    assert record["loss"] > 0
    candidates = record["candidates"]
    assert len(candidates) >= 2
    grads = [c["grad"] for c in candidates]
    assert all(isinstance(g, float) and math.isfinite(g) for g in grads)
    assert grads == sorted(grads)
    assert all(isinstance(c["token_id"], int) and c["token"] for c in candidates)
    # the gradient is L2-normalised over the candidates
    assert math.sqrt(sum(g * g for g in grads)) == pytest.approx(1.0, abs=1e-4)
    assert record["evaluated"]
    assert all(math.isfinite(e["score"]) for e in record["evaluated"])
    assert record["chosen"] in {e["prompt"] for e in record["evaluated"]} | {record["prompt"]}
    assert record["best_prompt"] == result["prompt"]
    assert record["seconds"]["total"] > 0


def test_embedded_run_scored_the_ids_its_text_encodes_to(embedded_run: Path, smol_tokenizer) -> None:
    """Position 0 is where a token without a leading space (e.g. "ful") would change when written out."""
    result = read_json(embedded_run / "result.json")
    assert encode_prompt(smol_tokenizer, result["prompt"]) == result["prompt_ids"]
    for record in read_jsonl(embedded_run / "steps.jsonl"):
        assert encode_prompt(smol_tokenizer, record["chosen"]) == record["chosen_ids"]
        for entry in record["evaluated"]:
            assert encode_prompt(smol_tokenizer, entry["prompt"]) == entry["prompt_ids"]


def test_evaluate_embedded_run(embedded_run: Path, tmp_path: Path, capsys) -> None:
    out_dir = tmp_path / "ev"
    argv = ["evaluate", "--run", str(embedded_run), "--task", "gen/boolean_expressions", "--limit", "4"]
    capsys.readouterr()
    assert main([*argv, "--max-new-tokens", MAX_NEW, "--out", str(out_dir)]) == 0
    out = capsys.readouterr().out
    match = re.search(r"accuracy: (\d\.\d+) \((\d+)/4\)", out)
    assert match is not None, out
    metrics = check_predictions(out_dir, 4)
    assert float(match.group(1)) == pytest.approx(metrics["accuracy"], abs=1e-4)
    assert metrics["prompt"] == read_json(embedded_run / "result.json")["prompt"]


@pytest.mark.skipif(not (BBH_DIR / "boolean_expressions.json").is_file(), reason="BBH data not available")
def test_evaluate_bbh_boolean_expressions(tmp_path: Path, capsys) -> None:
    out_dir = tmp_path / "ev"
    argv = ["evaluate", "--task", "bbh/boolean_expressions", "--data-dir", str(BBH_DIR), "--limit", "4"]
    argv += ["--prompt", "Think step by step.", "--max-new-tokens", MAX_NEW, "--out", str(out_dir)]
    capsys.readouterr()
    assert main(argv) == 0
    assert re.search(r"accuracy: \d\.\d+ \(\d/4\) on bbh/boolean_expressions test", capsys.readouterr().out)
    metrics = check_predictions(out_dir, 4)
    bbh_inputs = {ex["input"] for ex in read_json(BBH_DIR / "boolean_expressions.json")["examples"]}
    assert all(p["question"] in bbh_inputs for p in read_jsonl(out_dir / "predictions.jsonl"))
    assert metrics["task"] == "bbh/boolean_expressions"


def test_load_embedded_model_generates() -> None:
    model, tokenizer = load_model()
    assert model.name_or_path == EMBEDDED_MODEL
    assert not model.training
    params = list(model.parameters())
    assert params
    assert not any(p.requires_grad for p in params)

    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2+2?"}], tokenize=False, add_generation_prompt=True
    )
    inputs = tokenizer(text, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=10, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1] :]
    assert 1 <= len(new) <= 10
    reply = tokenizer.decode(new, skip_special_tokens=True)
    assert reply.strip()


def test_compare_every_method_on_the_embedded_model(tmp_path: Path) -> None:
    """Each method, with a tiny budget, produces a usable prompt; the table follows from the predictions."""
    from greater.methods import PAPER_METHODS as METHODS  # the variants run the same code (tests/test_methods.py)

    out = tmp_path / "cmp"
    argv = ["compare", "--task", "gen/boolean_expressions", "--seeds", "0", "--steps", "1", "--train", "2"]
    argv += ["--test", "3", "--max-new-tokens", "12", "--meta-max-new-tokens", "24", "--out", str(out)]
    argv += ["--methods", ",".join(METHODS)]
    assert main(argv) == 0
    table = check_compare_table(out, ["gen/boolean_expressions"], list(METHODS), [0], [], n_test=3)
    for row in table["results"]:
        prompt = row["prompts"]["0"]
        assert prompt.strip()
        assert len(prompt) < 400
        assert row["calls"] >= 2
        assert row["seconds"] > 0
    by_method = {row["method"]: row for row in table["results"]}
    assert by_method["zs-cot"]["prompts"]["0"] == "Let's think step by step."


def test_the_loss_targets_the_answer_as_the_model_writes_it() -> None:
    """After the default extractor ("... is $") SmolLM2 writes "$False", never "$ False": the
    teacher-forced target must be that spelling, so an example the model answers right (greedy
    generation, first token = the answer) is also right by the argmax criterion of the loss. With a
    space-prefixed target (as before) no example was ever right by that criterion."""
    from greater.evaluate import DEFAULT_JOINER
    from greater.inference.engine import Engine
    from greater.optimizer import DEFAULT_INIT_PROMPT
    from greater.tasks import get_task

    model, tokenizer = load_model()
    task = get_task("gen/boolean_expressions")
    train = task.splits(8, None, None, 0).train
    engine = Engine(model, tokenizer, task, train, joiner=DEFAULT_JOINER, batch_size=8, max_new_tokens=24)
    prompt = tuple(encode_prompt(tokenizer, DEFAULT_INIT_PROMPT))
    ((reasoning, terms),) = engine.reason_and_score([prompt], 24)
    outputs = engine.answer(prompt, reasoning, 4)
    assert not any(out.startswith(" ") for out in outputs)
    pairs = zip(outputs, train, strict=True)
    generated_right = [task.is_correct(out, ex) and out.startswith(ex.answer) for out, ex in pairs]
    assert any(generated_right)
    assert terms.correct.tolist() == generated_right
