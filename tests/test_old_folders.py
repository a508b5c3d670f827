"""Folders written by an earlier greater still work with this one: tests/fixtures/ holds a GReaTer run
stopped by --max-time, a finished baseline run and an interrupted comparison, written by greater at
e7676c9 (before the run lifecycle moved into the library; tests/fixtures/make.py says how).

They name the tiny test model by the path they were made with (`MODEL_DIR`), so it is saved there
first. What is compared is what cannot depend on the CPU: the steps and progress the folders already
hold are kept as they are, the settings and the split they record are honoured, the run ends.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from greater import artifact
from helpers import read_json, read_jsonl, run_cli

# one pytest worker runs this file's tests: its module fixture is made once (make test: --dist loadgroup)
pytestmark = pytest.mark.xdist_group("old_folders")

FIXTURES = Path(__file__).resolve().parent / "fixtures"
MODEL_DIR = Path("/tmp/greater-fixture-tiny-model")
TASK = "gen/boolean_expressions"


@pytest.fixture(scope="module")
def old_folders(tiny_model, smol_tokenizer, tmp_path_factory) -> Path:
    """A copy of tests/fixtures (resuming writes into it), with the tiny model saved where they expect it."""
    MODEL_DIR.mkdir(parents=True, exist_ok=True)
    tiny_model.save_pretrained(MODEL_DIR)
    smol_tokenizer.save_pretrained(MODEL_DIR)
    copy = tmp_path_factory.mktemp("old") / "fixtures"
    shutil.copytree(FIXTURES, copy)
    return copy


def test_an_old_greater_run_resumes_where_it_stopped(old_folders, capsys):
    run, twin = old_folders / "greater-stopped", old_folders / "greater-straight"
    first_step = (run / "steps.jsonl").read_text(encoding="utf-8")
    assert len(first_step.splitlines()) == 1
    code, out, err = run_cli(capsys, ["optimize", "--resume", str(run)])
    assert code == 0, err
    assert f"resuming {run} after step 1" in err
    assert "initial prompt test accuracy: " in out and "(from initial_eval.json)" in out  # not scored again
    steps = (run / "steps.jsonl").read_text(encoding="utf-8")
    assert steps.startswith(first_step)  # the old step is kept as written
    assert [s["step"] for s in read_jsonl(run / "steps.jsonl")] == [1, 2, 3]
    result, expected = read_json(run / "result.json"), read_json(twin / "result.json")
    assert result.keys() == expected.keys()
    for key in ("config", "split", "task", "model", "initial_prompt"):
        assert result[key] == expected[key], key
    assert result["test_accuracy"]["initial"] == expected["test_accuracy"]["initial"]  # from initial_eval.json
    assert result["steps"] == 3 and len(result["finalists"]) == 2
    assert artifact.read(run)["prompt"] == result["prompt"] == (run / "prompt.txt").read_text().strip()


def test_an_old_comparison_continues_its_saved_cell(old_folders, capsys):
    out, twin = old_folders / "compare-interrupted", old_folders / "compare-straight"
    argv = ["compare", "--model", str(MODEL_DIR), "--task", TASK, "--methods", "greater,zs-cot", "--seeds", "0"]
    argv += ["--steps", "3", "--train", "4", "--dev", "2", "--keep-top", "2", "--test", "3", "--max-new-tokens", "6"]
    code, _, err = run_cli(capsys, [*argv, "--out", str(out)])
    assert code == 0, err
    # the saved progress is taken (its key — the settings and the split — is what this greater computes)
    assert f"continuing the cell saved in {out / 'partial' / 'gen_boolean_expressions__greater__s0.json'}" in err
    assert not (out / "partial" / "gen_boolean_expressions__greater__s0.json").exists()
    assert read_json(out / "compare.json") == read_json(twin / "compare.json")
    for cell in ("gen_boolean_expressions__greater__s0", "gen_boolean_expressions__zs-cot__s0"):
        resumed, expected = read_json(out / "cells" / f"{cell}.json"), read_json(twin / "cells" / f"{cell}.json")
        assert resumed.keys() == expected.keys() and resumed["split"] == expected["split"], cell
        assert len(resumed["result"]["history"]) == len(expected["result"]["history"]), cell
    zs = read_json(out / "cells" / "gen_boolean_expressions__zs-cot__s0.json")
    assert zs["result"]["prompt"] == "Let's think step by step."
    assert read_json(out / "table.json").keys() == read_json(twin / "table.json").keys()


@pytest.mark.slow
def test_an_old_finished_baseline_run_is_read_and_not_run_again(old_folders, capsys, tmp_path):
    run = old_folders / "ape-finished"
    code, _, err = run_cli(capsys, ["optimize", "--resume", str(run)])
    assert code == 2 and "is a finished run (result.json exists); nothing to resume" in err
    code, _, err = run_cli(capsys, ["evaluate", "--run", str(run), "--out", str(tmp_path / "t")])
    assert code == 0, err
    table = read_json(tmp_path / "t" / "table.json")
    assert table["prompts"] == [{"label": "run", "prompt": read_json(run / "result.json")["prompt"], "joiner": "."}]
    assert table["tasks"][0]["fingerprint"] == read_json(run / "run.json")["split"]["fingerprint"]
    code, out, err = run_cli(capsys, ["export", str(run), "--format", "text"])
    assert code == 0 and read_json(run / "result.json")["prompt"] in out
