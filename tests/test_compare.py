"""`greater compare` on the tiny random model: the table's numbers, the chart, resuming, transfer."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

import greater.compare.cells as compare_module
from greater.compare.cells import ScoringModel, cell_path, run_compare
from greater.errors import GreaterError
from greater.evaluate import evaluate
from greater.inference.layout import PLACEMENTS, encode_placed_prompt
from greater.optimizer import GreaterConfig
from greater.report import compare_report
from greater.tasks import get_task
from helpers import (
    COMPARE_CONFIG,
    COMPARE_SPLIT,
    check_compare_table,
    message_lines,
    read_json,
    read_jsonl,
    run_cli,
)

TASKS = [get_task("gen/boolean_expressions"), get_task("gen/arithmetic")]


@pytest.mark.slow
def test_compare_table_resume_and_transfer(tiny_model, smol_tokenizer, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "cmp"
    optimizer = ScoringModel("tiny", tiny_model, smol_tokenizer)
    methods, seeds = ["greater", "zs-cot", "ape"], [0, 1]
    table = run_compare(optimizer, TASKS, methods, seeds, out, COMPARE_CONFIG, split=COMPARE_SPLIT)
    check_compare_table(out, [t.name for t in TASKS], methods, seeds, [])
    assert len(list((out / "cells").iterdir())) == len(TASKS) * len(methods) * len(seeds)
    cost = {r["method"]: r["calls"] for r in table["results"] if r["task"] == TASKS[0].name}
    assert cost["zs-cot"] == COMPARE_SPLIT[0]  # one reasoning per training example, no search
    assert cost["greater"] > cost["zs-cot"]

    # finished cells are not recomputed; a transfer model added later is scored on the stored prompts
    def no_rerun(*args, **kwargs):
        raise AssertionError("a finished cell was recomputed")

    monkeypatch.setattr(compare_module, "run_method", no_rerun)
    before = {p.name: p.read_bytes() for p in (out / "predictions").iterdir()}
    copy = ScoringModel("tiny-copy", tiny_model, smol_tokenizer)
    again = run_compare(optimizer, TASKS, methods, seeds, out, COMPARE_CONFIG, split=COMPARE_SPLIT, transfer=[copy])
    check_compare_table(out, [t.name for t in TASKS], methods, seeds, ["tiny-copy"])
    assert all((out / "predictions" / name).read_bytes() == data for name, data in before.items())
    for row, old in zip(again["results"], table["results"], strict=True):
        assert row["mean"] == old["mean"]  # the same model under another name scores the same
        assert row["transfer"]["tiny-copy"]["accuracies"] == row["accuracies"]

    with pytest.raises(GreaterError, match=r"steps=1, not 2"):
        run_compare(optimizer, TASKS, methods, seeds, out, replace(COMPARE_CONFIG, steps=2), split=COMPARE_SPLIT)
    with pytest.raises(GreaterError, match="choose another out$"):
        run_compare(optimizer, TASKS, methods, seeds, out, COMPARE_CONFIG, split=(3, 5))


@pytest.mark.slow
def test_compare_command_interrupted_then_resumed(capsys, tiny_model_dir: Path, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "cmp"
    argv = ["compare", "--model", str(tiny_model_dir), "--task", "gen/boolean_expressions", "--methods", "zs-cot,pe2"]
    argv += [
        "--seeds",
        "0,1",
        "--steps",
        "1",
        "--train",
        "3",
        "--test",
        "4",
        "--max-new-tokens",
        "4",
        "--out",
        str(out),
    ]
    real, calls = compare_module.run_method, []

    def interrupted_on_third(method, *args, **kwargs):
        calls.append(method)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(method, *args, **kwargs)

    monkeypatch.setattr(compare_module, "run_method", interrupted_on_third)
    code, _, err = run_cli(capsys, argv)
    assert code == 130
    kept = f"greater: finished cells are kept in {out}, with the progress of the cell that was running; "
    assert any(line.endswith(kept + "rerun the same command to go on") for line in message_lines(err))
    assert sorted(p.name for p in (out / "cells").iterdir()) == [
        "gen_boolean_expressions__pe2__s0.json",
        "gen_boolean_expressions__zs-cot__s0.json",
    ]
    calls.clear()
    code, stdout, err = run_cli(capsys, argv)
    assert code == 0, err
    assert calls == ["zs-cot", "pe2"]  # only seed 1 was left
    assert "2 of 4 cells already done" in err
    check_compare_table(out, ["gen/boolean_expressions"], ["zs-cot", "pe2"], [0, 1], [])
    assert "| gen/boolean_expressions | 4 |" in stdout
    assert "chart.png" in stdout


def test_compare_a_greater_option_as_its_own_row(capsys, tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    methods = ["greater:num_select=1", "zs-cot", "ape:evaluations=2"]
    argv = [
        "compare",
        "--model",
        str(tiny_model_dir),
        "--task",
        "gen/boolean_expressions",
        "--methods",
        ",".join(methods),
    ]
    argv += ["--steps", "2", "--train", "3", "--test", "4", "--max-new-tokens", "4", "--out", str(out)]
    code, stdout, err = run_cli(capsys, argv)
    assert code == 0, err
    check_compare_table(out, ["gen/boolean_expressions"], methods, [0], [])
    cell = read_json(out / "cells" / "gen_boolean_expressions__greater_num_select_1__s0.json")
    assert cell["method"] == "greater:num_select=1"
    assert [len(step["evaluated"]) for step in cell["result"]["history"]] == [1, 1]
    assert "| greater:num_select=1 | zs-cot | ape:evaluations=2 |" in stdout
    ape = read_json(out / "cells" / "gen_boolean_expressions__ape_evaluations_2__s0.json")
    assert len(ape["result"]["history"]) == 2  # its own budget, not the comparison's 3 × 2
    paired = read_json(out / "table.json")["paired"]
    assert paired["reference"] == "greater:num_select=1"  # no plain greater row: the first named

    # a rerun naming another reference computes nothing and pairs every row with that one
    code, stdout, err = run_cli(capsys, [*argv, "--reference", "ape:evaluations=2"])
    assert code == 0, err
    assert "3 of 3 cells already done" in err
    paired = read_json(out / "table.json")["paired"]
    assert paired["reference"] == "ape:evaluations=2"
    assert "| gen/boolean_expressions | ape:evaluations=2 vs zs-cot |" in stdout


def test_a_row_never_takes_another_rows_cell_that_shares_its_file_name(
    capsys, tiny_model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cmp"
    argv = ["compare", "--model", str(tiny_model_dir), "--task", "gen/boolean_expressions", "--steps", "3"]
    argv += ["--train", "3", "--test", "4", "--max-new-tokens", "4", "--out", str(out)]
    first, second = "greater-starts:starts=a b|c.", "greater-starts:starts=a_b|c."  # one file name
    code, _, err = run_cli(capsys, [*argv, "--methods", first])
    assert code == 0, err
    cell = out / "cells" / "gen_boolean_expressions__greater-starts_starts_a_b_c.__s0.json"
    before = cell.read_bytes()
    code, _, err = run_cli(capsys, [*argv, "--methods", second])
    assert code == 2
    assert message_lines(err) == [
        f"greater: error: {cell} holds the cell of method {first!r} on gen/boolean_expressions seed 0, not of "
        f"{second!r}; rename the method (options in another order or spelling) or choose another --out"
    ]
    assert cell.read_bytes() == before
    assert read_json(out / "table.json")["methods"] == [first]  # the first call's table stands
    # nor its saved progress: the two rows' partial files share a name, not a key
    jobs = [compare_module.CellJob(TASKS[0], method, 0, COMPARE_CONFIG, cell.stem) for method in (first, second)]
    assert len({compare_module._cell_key(job, "split") for job in jobs}) == 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--methods", "greater,opro"],
            "unknown method 'opro'; choose from greater, greater-zs, greater-best, greater-starts, zs-cot",
        ),
        (["--methods", "greater:nll_weight=x"], "method 'greater:nll_weight=x': 'x' is no value for nll_weight"),
        (
            ["--methods", "greater:nll_weight=.5:top_k=8,zs-cot,greater:top_k=8:nll_weight=0.5"],
            "methods 'greater:nll_weight=.5:top_k=8' and 'greater:top_k=8:nll_weight=0.5' run the same settings",
        ),
        (["--methods", "greater,greater:num_select=3"], "methods 'greater' and 'greater:num_select=3' run the same"),
        (["--methods", "greater,greater-starts", "--steps", "2"], "3 starting prompts need at least one step each"),
        (["--methods", "ape>greater"], "method 'ape>greater' starts from the prompt ape chose for gen/arithmetic"),
        (
            ["--methods", "greater,ape", "--reference", "apo"],
            "--reference 'apo' must be one of --methods (greater, ape)",
        ),
        (["--seeds", "0,x"], "--seeds takes comma-separated integers"),
        (["--methods", ","], "--methods is empty"),
        (["--keep-top", "2"], "--keep-top picks the prompts scored on the dev set; give --dev N too"),
        (["--train", "3", "--test", "4", "--dev", "5000"], "task 'gen/arithmetic': --dev must be at most"),
    ],
)
def test_compare_bad_arguments(capsys, tiny_model_dir: Path, tmp_path: Path, extra: list[str], message: str) -> None:
    argv = ["compare", "--model", str(tiny_model_dir), "--task", "gen/arithmetic", "--out", str(tmp_path / "c")]
    code, _, err = run_cli(capsys, argv + extra)
    assert code == 2
    lines = message_lines(err)
    assert len(lines) == 1
    assert lines[0].startswith(f"greater: error: {message}")
    assert not (tmp_path / "c").exists()


@pytest.mark.slow
def test_optimize_with_a_baseline_then_transfer(capsys, tiny_model_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "ape"
    argv = ["optimize", "--method", "ape", "--model", str(tiny_model_dir), "--task", "gen/arithmetic"]
    argv += ["--steps", "1", "--train", "3", "--test", "3", "--max-new-tokens", "4", "--out", str(run)]
    code, stdout, err = run_cli(capsys, argv)
    assert code == 0, err
    result = read_json(run / "result.json")
    assert result["method"] == "ape"
    assert result["joiner"] == "."
    assert result["config"]["evaluations"] is None
    assert (run / "prompt.txt").read_text(encoding="utf-8") == result["prompt"] + "\n"
    history = read_jsonl(run / "history.jsonl")
    assert 1 <= len(history) <= 3
    assert result["score"] == max(h["accuracy"] for h in history)
    assert result["usage"]["calls"] > 0
    assert f"optimized prompt: {result['prompt']}" in stdout

    # transfer: the run's prompt scored by another model (here a copy of the folder), with the run's joiner
    other = tmp_path / "other-model"
    other.mkdir()
    for f in tiny_model_dir.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    code, stdout, err = run_cli(
        capsys, ["evaluate", "--run", str(run), "--model", str(other), "--out", str(tmp_path / "t")]
    )
    assert code == 0, err
    table = read_json(tmp_path / "t" / "table.json")
    assert table["model"] == str(other)
    assert table["prompts"][0] == {
        "label": "run",
        "prompt": result["prompt"],
        "joiner": ".",
    }
    assert table["results"][0]["n"] == 3
    assert table["results"][0]["accuracy"] == result["test_accuracy"]["optimized"]

    code, _, err = run_cli(capsys, ["optimize", "--method", "ape", "--resume", str(run)])
    assert code == 2
    assert message_lines(err) == [f"greater: error: {run} is a finished run (result.json exists); nothing to resume"]


@pytest.mark.slow
def test_compare_with_a_dev_set(tiny_model, smol_tokenizer, tmp_path: Path) -> None:
    """Every search makes its final choice on the dev set (keep_top finalists by training key, best dev
    accuracy wins, ties to the better key), the dev pass counts in its usage, the settings record it."""
    task, methods, n_dev = TASKS[0], ["greater", "ape", "zs-cot"], 2
    optimizer = ScoringModel("tiny", tiny_model, smol_tokenizer)
    config = replace(COMPARE_CONFIG, keep_top=3)
    out, plain = tmp_path / "dev", tmp_path / "plain"
    run_compare(optimizer, [task], methods, [0], out, config, split=COMPARE_SPLIT, dev=n_dev)
    run_compare(optimizer, [task], methods, [0], plain, config, split=COMPARE_SPLIT)
    check_compare_table(out, [task.name], methods, [0], [])
    dev = task.splits(COMPARE_SPLIT[0], n_dev, COMPARE_SPLIT[1], 0).dev
    for method in methods:
        cell, before = (read_json(cell_path(folder, task.name, method, 0)) for folder in (out, plain))
        assert cell["split"]["n_dev"] == n_dev and "n_dev" not in before["split"]
        questions = [
            [p["question"] for p in read_jsonl(f / c["test"]["predictions"])] for f, c in ((out, cell), (plain, before))
        ]
        assert questions[0] == questions[1]  # the same test examples with or without a dev set
        result = cell["result"]
        if method == "zs-cot":  # one prompt: nothing to choose, no dev pass
            assert (result["finalists"], result["dev_accuracy"]) == ([], None)
            assert result["usage"]["calls"] == before["result"]["usage"]["calls"]
            continue
        finalists = result["finalists"]
        assert 1 <= len(finalists) <= 3
        for finalist in finalists:  # each scored on dev as `greater evaluate` would
            ev = evaluate(
                tiny_model, smol_tokenizer, task, dev, finalist["prompt"], joiner=result["joiner"], max_new_tokens=4
            )
            assert finalist["dev_accuracy"] == ev.accuracy
        best = max(f["dev_accuracy"] for f in finalists)
        assert result["dev_accuracy"] == best
        assert result["prompt"] == next(f["prompt"] for f in finalists if f["dev_accuracy"] == best)
        # the search is the same; the dev pass adds one reasoning and one answer per dev example per finalist
        extra = result["usage"]["calls"] - before["result"]["usage"]["calls"]
        assert extra == 2 * n_dev * len(finalists)
        if method == "ape":  # finalists: the best scored prompts by training accuracy, then cross-entropy
            ranked = sorted(result["history"], key=lambda h: (-h["accuracy"], h["ce"]))
            assert [f["prompt"] for f in finalists] == list(dict.fromkeys(h["prompt"] for h in ranked))[:3]
            assert [f["score"] for f in finalists] == [h["accuracy"] for h in ranked[: len(finalists)]]

    # the table shows each chosen prompt's dev accuracy ("–" for zs-cot); none without a dev set
    by = {r["method"]: r["dev"] for r in read_json(out / "table.json")["results"]}
    dev_of = {m: read_json(cell_path(out, task.name, m, 0))["result"]["dev_accuracy"] for m in ("greater", "ape")}
    assert by == {"greater": _one_seed(dev_of["greater"]), "ape": _one_seed(dev_of["ape"]), "zs-cot": None}
    line = f"| {task.name} | {100 * dev_of['greater']:.1f} | {100 * dev_of['ape']:.1f} | – |"
    text = (out / "table.md").read_text(encoding="utf-8")
    assert line in text.split("Dev accuracy (%) of the chosen prompt")[1]
    page = compare_report(out)
    section = page[page.index("<h2>Dev accuracy of the chosen prompt (%)</h2>") :]
    assert f"<tr><td>{task.name}</td><td class=num>{100 * dev_of['greater']:.1f}</td>" in section
    assert all(r["dev"] is None for r in read_json(plain / "table.json")["results"])
    # the searches table: each cell's training errors by step (GReaTer), finalists' dev, dev -> test
    searches = read_json(out / "table.json")["searches"]
    assert [(s["method"], s["seed"]) for s in searches] == [("greater", 0), ("ape", 0), ("zs-cot", 0)]
    for search in searches:
        cell = read_json(cell_path(out, task.name, search["method"], 0))
        steps = [h for h in cell["result"]["history"] if h.get("kind") == "step"]
        errors = [h["train_errors"] for h in steps] if search["method"] == "greater" else None
        assert search["train_errors"] == errors and (errors is None or len(errors) == COMPARE_CONFIG.steps)
        assert search["finalists_dev"] == [f["dev_accuracy"] for f in cell["result"]["finalists"]]
        assert (search["dev"], search["test"]) == (cell["result"]["dev_accuracy"], cell["test"]["accuracy"])
    greater = searches[0]
    row = (
        f"| {task.name} | greater | 0 | {' '.join(map(str, greater['train_errors']))} (of {COMPARE_SPLIT[0]}) | "
        + " ".join(f"{100 * a:.0f}" for a in greater["finalists_dev"])
        + f" | {100 * greater['dev']:.0f} → {100 * greater['test']:.0f} |"
    )
    assert row in text.split("Searches, cell by cell")[1]
    assert f"| {task.name} | zs-cot | 0 | – | – | – → {100 * searches[2]['test']:.0f} |" in text
    assert "<h2>Searches</h2>" in page
    assert "Dev accuracy" not in (plain / "table.md").read_text(encoding="utf-8")
    # the settings record dev and keep_top only when there is a dev set: a folder made before dev sets
    # (exactly these settings) resumes with the same command
    assert read_json(out / "compare.json")["split"] == {"train": 3, "test": 4, "dev": n_dev}
    assert read_json(out / "compare.json")["config"]["keep_top"] == 3
    assert read_json(plain / "compare.json") == {
        "model": "tiny",
        "split": {"train": 3, "test": 4},
        "config": {
            "steps": 1,
            "num_select": 3,
            "evaluations": None,
            "max_new_tokens": 4,
            "meta_max_new_tokens": 8,
            "max_prompt_tokens": 48,
            "demos": 4,
            "beam": 2,
            "temperature": 0.7,
            "init_prompt": "Let's think step by step.",
            "joiner": ".",
            "batch_size": 8,
        },
    }
    with pytest.raises(GreaterError, match=r"with dev=2, not 3; rerun with the same settings"):
        run_compare(optimizer, [task], methods, [0], out, config, split=COMPARE_SPLIT, dev=3)
    with pytest.raises(GreaterError, match=r"with dev=2, not None"):
        run_compare(optimizer, [task], methods, [0], out, config, split=COMPARE_SPLIT)
    with pytest.raises(GreaterError, match=r"with dev=None, not 2"):
        run_compare(optimizer, [task], methods, [0], plain, config, split=COMPARE_SPLIT, dev=2)


@pytest.mark.slow
def test_compare_command_with_dev_and_a_rerun_with_another_dev(capsys, tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    argv = ["compare", "--model", str(tiny_model_dir), "--task", "gen/arithmetic", "--methods", "ape,zs-cot"]
    argv += ["--steps", "1", "--train", "3", "--test", "3", "--max-new-tokens", "4", "--out", str(out)]
    code, stdout, err = run_cli(capsys, [*argv, "--dev", "2", "--keep-top", "2"])
    assert code == 0, err
    settings = read_json(out / "compare.json")
    assert (settings["split"]["dev"], settings["config"]["keep_top"]) == (2, 2)
    cell = read_json(cell_path(out, "gen/arithmetic", "ape", 0))
    assert cell["split"]["n_dev"] == 2
    assert 1 <= len(cell["result"]["finalists"]) <= 2
    assert "Paired tests: ape against each other method" in stdout  # no greater: the first method named
    code, _, err = run_cli(capsys, [*argv, "--dev", "3"])
    assert code == 2
    assert message_lines(err) == [
        f"greater: error: {out} holds a comparison run with dev=2, not 3; "
        "rerun with the same settings to resume it, or choose another --out"
    ]


def _one_seed(accuracy: float) -> dict:
    return {"mean": accuracy, "sd": None, "accuracies": [accuracy]}


def test_rows_are_checked_in_every_placement_a_row_uses(tiny_model, smol_tokenizer, monkeypatch) -> None:
    """A `greater:placement=system` row puts its prompt in the system turn, so the rows must fit there too
    (the check used to look at the comparison's placement only), with the longest prompt each method reaches."""
    checked: list[tuple[str, int]] = []
    real = compare_module.fit_to_model

    def recording(*args, placement, prompt_tokens, **kwargs):
        checked.append((placement, prompt_tokens))
        return real(*args, placement=placement, prompt_tokens=prompt_tokens, **kwargs)

    monkeypatch.setattr(compare_module, "fit_to_model", recording)
    scorer = ScoringModel("tiny", tiny_model, smol_tokenizer)
    config = replace(COMPARE_CONFIG, steps=7)
    p1 = {where: len(encode_placed_prompt(smol_tokenizer, GreaterConfig().init_prompt, where)) for where in PLACEMENTS}
    compare_module.check_rows_fit(scorer, TASKS[:1], config, ["greater", "zs-cot", "greater:placement=system"])
    after = max(p1["after-question"] + 7, config.max_prompt_tokens)  # zs-cot's proposals: up to 48 tokens
    assert checked == [("after-question", after), ("system", p1["system"] + 7)]


def test_a_cell_removed_while_the_comparison_runs_is_one_clear_error(
    tiny_model, smol_tokenizer, tmp_path: Path, monkeypatch
) -> None:
    # as if another process deleted the cell between its writing and the table: nothing is written
    monkeypatch.setattr(compare_module, "_write_cell", lambda *args: None)
    optimizer = ScoringModel("tiny", tiny_model, smol_tokenizer)
    cell = cell_path(tmp_path, TASKS[0].name, "zs-cot", 0)
    with pytest.raises(GreaterError, match=f"^{re.escape(str(cell))} was removed while this comparison ran; rerun it"):
        run_compare(optimizer, TASKS[:1], ["zs-cot"], [0], tmp_path, COMPARE_CONFIG, split=COMPARE_SPLIT)
    assert not (tmp_path / "table.json").exists()


def test_run_compare_refuses_a_reference_that_is_no_row_before_any_cell(tiny_model, smol_tokenizer, tmp_path: Path):
    optimizer = ScoringModel("tiny", tiny_model, smol_tokenizer)
    with pytest.raises(GreaterError, match=r"^--reference 'ape' must be one of --methods \(zs-cot\)$"):
        run_compare(
            optimizer, TASKS[:1], ["zs-cot"], [0], tmp_path / "c", COMPARE_CONFIG, split=COMPARE_SPLIT, reference="ape"
        )
    assert not (tmp_path / "c").exists()
