"""The search variants beyond the paper (issue 37): keep the best, several starts, refining another
method's prompt. Each is off by default; off, the run is the paper's (tests/test_fidelity.py)."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from pathlib import Path

import pytest

import greater.optimizer as optimizer_module
from greater.errors import GreaterError
from greater.inference.layout import encode_prompt
from greater.methods import greater_fields, refined_source
from greater.optimizer import (
    NAMED_STARTS,
    GreaterConfig,
    Returnable,
    RunState,
    _keep_best,
    optimize,
)
from greater.tasks import get_task
from helpers import make_interrupted_run, message_lines, optimize_argv, read_json, read_jsonl, run_cli

TASK = get_task("gen/boolean_expressions")
SMALL = GreaterConfig(steps=6, max_new_tokens=4, top_k=6, batch_size=4, init_prompt="think step by step.")


def _run(model, tokenizer, config: GreaterConfig, **kwargs):
    return optimize(model, tokenizer, TASK, config, train=TASK.load()[:4], **kwargs)


# keep the best


def test_keep_best_goes_back_to_the_best_and_keeps_its_reasoning(smol_tokenizer):
    returnable = Returnable(smol_tokenizer)
    best = tuple(encode_prompt(smol_tokenizer, "think step by step."))
    worse = best[:2] + tuple(encode_prompt(smol_tokenizer, "carefully"))[:1] + best[3:]
    longer_best = best + best[-1:]
    state = RunState(prompt=list(worse), init_len=len(best), position=len(longer_best) - 1)
    state.record_score(best, 0.5)
    state.record_score(longer_best, 0.4)
    state.record_score(worse, 0.9)
    # the step started from `longer_best` (the best) and chose `worse`: back to the best, its reasoning kept
    assert _keep_best(state, returnable, longer_best, reasoning=[[1, 2]])
    assert tuple(state.prompt) == longer_best and state.reasoning == [[1, 2]]
    assert state.position == len(longer_best) - 1
    # the step started elsewhere: the best's reasoning is not at hand and must be generated
    state.prompt, state.position = list(worse), 10
    assert _keep_best(state, returnable, worse, reasoning=[[3]])
    assert state.reasoning is None and state.position == len(longer_best) - 1  # clamped to the best's length
    # a chosen prompt as good as the best is kept
    state.prompt = list(worse)
    state.record_score(worse, 0.4)
    assert not _keep_best(state, returnable, best, reasoning=None)
    assert tuple(state.prompt) == worse


def test_keep_best_run_starts_every_step_from_the_best_so_far(tiny_model, smol_tokenizer, monkeypatch):
    # on the tiny model every step's candidate lowers the loss; with every third score raised by 1 (a
    # training error's worth) the search meets worse prompts, which is what keep_best is for
    def scores_with_setbacks():
        calls = itertools.count()
        plain = optimizer_module.selection_score
        return lambda terms, config: plain(terms, config) + (next(calls) % 3 == 2)

    monkeypatch.setattr(optimizer_module, "selection_score", scores_with_setbacks())
    config = replace(SMALL, steps=6, num_select=1)
    kept = _run(tiny_model, smol_tokenizer, replace(config, keep_best=True))
    monkeypatch.setattr(optimizer_module, "selection_score", scores_with_setbacks())
    drifted = _run(tiny_model, smol_tokenizer, config)
    assert sum(r.back_to_best for r in kept.steps) >= 2
    for record, following in zip(kept.steps, kept.steps[1:], strict=False):
        # the next step starts from the best prompt so far (grown by the filler where it had no end)
        assert following.prompt.startswith(record.best_prompt)
        assert record.back_to_best == (record.chosen != record.best_prompt)
    assert not any(r.back_to_best for r in drifted.steps)
    pairs = zip(drifted.steps, drifted.steps[1:], strict=False)
    assert any(not after.prompt.startswith(r.best_prompt) for r, after in pairs)
    assert kept.steps[0].chosen_ids == drifted.steps[0].chosen_ids  # step 1 is the paper's step
    assert "back_to_best" not in drifted.steps[0].to_json() and "path" not in drifted.steps[0].to_json()
    assert all(r.to_json().get("back_to_best", False) == r.back_to_best for r in kept.steps)


# several starts


def test_steps_are_shared_out_among_the_starts():
    assert GreaterConfig(steps=7, starts=["a.", "b."]).path_steps() == [3, 2, 2]
    assert GreaterConfig(steps=5).path_steps() == [5]
    config = GreaterConfig(joiner=".", init_prompt="x.", starts=["zs-cot", "my own prompt."])
    assert config.start_prompts() == ["x.", NAMED_STARTS["zs-cot"], "my own prompt."]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (GreaterConfig(starts=["zs-cot"]), "the named start 'zs-cot' reads after the joiner '.', not '. Use'"),
        (GreaterConfig(steps=2, starts=["a.", "b."]), "3 starting prompts need at least one step each; steps is 2"),
        (GreaterConfig(starts=[" "]), "invalid setting starts=[' ']"),
        (GreaterConfig(starts=["a.", "a."]), "the starting prompt 'a.' is given twice"),
        (
            GreaterConfig(init_prompt="Let's think step by step.", joiner=".", starts=["zs-cot"]),
            'the starting prompt "Let\'s think step by step." is given twice',
        ),
    ],
)
def test_bad_starts_are_refused(config, message):
    with pytest.raises(GreaterError, match=message.replace("[", r"\[").replace("]", r"\]")):
        config.validate()


def test_several_starts_search_each_path_and_take_finalists_from_every_one(tiny_model, smol_tokenizer):
    starts = ["answer the question.", "be brief."]
    config = replace(SMALL, starts=starts, keep_top=3)
    result = _run(tiny_model, smol_tokenizer, config, dev=TASK.load()[10:13])
    assert [r.path for r in result.steps] == [0, 0, 1, 1, 2, 2]
    assert [r.position for r in result.steps] == [0, 1, 0, 1, 0, 1]
    assert [result.steps[i].prompt for i in (0, 2, 4)] == ["think step by step.", *starts]
    # every prompt a path scored, by path: each of the 3 finalists comes from a different path
    by_path: dict[int, set[str]] = {}
    for record in result.steps:
        by_path.setdefault(record.path, set()).update([record.prompt] + [e.prompt for e in record.evaluated])
    finalists = [f["prompt"] for f in result.finalists]
    assert len(finalists) == 3
    assert sorted(next(p for p, seen in by_path.items() if f in seen) for f in finalists) == [0, 1, 2]
    assert result.prompt in finalists and result.dev_accuracy == max(f["dev_accuracy"] for f in result.finalists)
    # a dev tie goes to the lower selection score, whichever path the finalist came from
    tied = [f for f in result.finalists if f["dev_accuracy"] == result.dev_accuracy]
    assert result.prompt == min(tied, key=lambda f: f["score"])["prompt"], result.finalists


@pytest.mark.slow
def test_several_starts_resume_exactly(tiny_model, smol_tokenizer):
    config = replace(SMALL, starts=["be brief."], keep_best=True)
    plain = _run(tiny_model, smol_tokenizer, config)
    saved: list[dict] = []

    class Stop(Exception):
        pass

    def stop_in_second_path(record, state):
        saved.append(json.loads(json.dumps(state.to_json())))
        if record.step == 4:
            raise Stop

    with pytest.raises(Stop):
        _run(tiny_model, smol_tokenizer, config, on_step=stop_in_second_path)
    assert saved[-1]["path"] == 1 and saved[-1]["origin"]  # the path is part of the saved state
    resumed = _run(tiny_model, smol_tokenizer, config, state=RunState.from_json(saved[-1]))
    assert [r.step for r in resumed.steps] == [5, 6]
    assert [r.chosen_ids for r in resumed.steps] == [r.chosen_ids for r in plain.steps[4:]]
    assert resumed.prompt_ids == plain.prompt_ids and resumed.score == pytest.approx(plain.score, abs=1e-6)


def test_a_one_path_state_is_saved_as_before():
    state = RunState(prompt=[1, 2], init_len=2)
    state.record_score((1, 2), 0.5)
    assert set(state.to_json()) == {
        "prompt", "init_len", "position", "step", "best_score", "best_prompt", "initial_score", "since_best",
        "scores", "reasoning", "dev_accuracy", "stopped",
    }  # fmt: skip


# the settings and the command line


def test_compare_rows_name_the_variants():
    assert greater_fields("greater-best") == {"keep_best": True}
    assert greater_fields("greater-starts:starts=direct| be brief.")["starts"] == ["direct", "be brief."]
    with pytest.raises(GreaterError, match="the named start 'zs-cot' reads after the joiner '.', not '. Use'"):
        greater_fields("greater:starts=zs-cot")
    with pytest.raises(GreaterError, match=r"'a\|' is no value for starts"):
        greater_fields("greater:starts=a|")
    assert greater_fields("greater:keep_best=true") == {"keep_best": True}
    refine = greater_fields("ape>greater-best:patience=3")
    assert refine == {"dev_keeps_initial": True, "keep_best": True, "patience": 3}
    assert refined_source("ape>greater") == "ape" and refined_source("greater") is None
    with pytest.raises(GreaterError, match="'nope' before '>' must be one of ape, apo"):
        greater_fields("nope>greater")
    with pytest.raises(GreaterError, match="after '>' comes a GReaTer method"):
        greater_fields("ape>apo")


@pytest.mark.slow
def test_optimize_records_the_variants_and_refuses_a_contradicting_resume(
    capsys, tiny_model_dir, tmp_path, monkeypatch
):
    out = tmp_path / "run"
    argv = optimize_argv(tiny_model_dir, out, "--keep-best", "--starts", "be brief.", "--steps", "3")
    make_interrupted_run(argv, monkeypatch, after=2)
    config = read_json(out / "run.json")["config"]
    assert config["keep_best"] is True and config["starts"] == ["be brief."]
    code, _, err = run_cli(capsys, ["optimize", "--resume", str(out), "--starts", "other."])
    assert code == 2
    assert message_lines(err) == [
        "greater: error: --starts ['other.'] differs from the run's stored value ['be brief.']; "
        "drop --starts to resume, or start a new run"
    ]
    code, _, err = run_cli(capsys, ["optimize", "--resume", str(out)])
    assert code == 0, err
    assert [s.get("path", 0) for s in read_jsonl(out / "steps.jsonl")] == [0, 0, 1]


def test_init_from_starts_from_a_runs_prompt_as_it_was_scored(capsys, tiny_model_dir, tmp_path, finished_run):
    source = read_json(finished_run / "prompt.json")
    out = tmp_path / "refined"
    code, _, err = run_cli(capsys, optimize_argv(tiny_model_dir, out, "--init-from", str(finished_run)))
    assert code == 0, err
    config = read_json(out / "run.json")["config"]
    assert (config["init_prompt"], config["joiner"]) == (source["prompt"], source["joiner"])
    assert read_jsonl(out / "steps.jsonl")[0]["prompt"] == source["prompt"]
    code, _, err = run_cli(
        capsys, optimize_argv(tiny_model_dir, tmp_path / "x", "--init-from", str(finished_run), "--joiner", ".")
    )
    assert code == 2
    assert message_lines(err) == [
        f"greater: error: --joiner '.' contradicts {finished_run}'s {source['joiner']!r} (--init-from starts from its "
        "prompt as it was scored); leave it out"
    ]
    assert not (tmp_path / "x").exists()
    code, _, err = run_cli(capsys, optimize_argv(tiny_model_dir, tmp_path / "y", "--init-from", str(tmp_path)))
    assert code == 2
    assert message_lines(err) == [
        f"greater: error: {tmp_path} has no prompt.json (runs finished by greater 0.1.0 or later have one)"
    ]
    # APE and ZS-CoT start from no prompt of the user's: a start given to them is refused, not ignored
    for method, flags in (("ape", ["--init-from", str(finished_run)]), ("zs-cot", ["--init-prompt", "Go."])):
        argv = optimize_argv(tiny_model_dir, tmp_path / method, "--method", method, *flags)
        code, _, err = run_cli(capsys, argv)
        assert code == 2
        assert message_lines(err) == [
            f"greater: error: {flags[0]} sets where a search starts; {method} starts from no prompt of yours"
        ]
        assert not (tmp_path / method).exists()


@pytest.mark.slow
def test_compare_refines_the_prompt_its_source_chose(capsys, tiny_model_dir: Path, tmp_path: Path):
    out = tmp_path / "cmp"
    argv = ["compare", "--model", str(tiny_model_dir), "--task", "gen/boolean_expressions", "--steps", "2"]
    argv += ["--train", "3", "--test", "4", "--dev", "2", "--max-new-tokens", "4", "--out", str(out)]
    code, _, err = run_cli(capsys, [*argv, "--methods", "ape>greater"])
    assert code == 2
    assert message_lines(err) == [
        "greater: error: method 'ape>greater' starts from the prompt ape chose for gen/boolean_expressions seed 0, and "
        f"that cell is not finished in {out}; list ape before ape>greater in --methods"
    ]
    code, stdout, err = run_cli(capsys, [*argv, "--methods", "ape,ape>greater"])
    assert code == 0, err
    ape = read_json(out / "cells" / "gen_boolean_expressions__ape__s0.json")["result"]
    refined = read_json(next((out / "cells").glob("*ape_greater*")))["result"]
    assert refined["joiner"] == ape["joiner"] == "."
    assert refined["history"][0]["prompt"] == ape["prompt"]  # step 1 starts from APE's chosen prompt
    assert refined["refines"] == {k: ape[k] for k in ("method", "prompt", "joiner", "usage")}
    own = refined["usage"]["calls"] - ape["usage"]["calls"]
    assert own > 0 and refined["usage"]["generated_tokens"] > ape["usage"]["generated_tokens"]
    # the source's prompt stays a finalist on dev, so the refinement is never worse than it there
    assert ape["prompt"] in [f["prompt"] for f in refined["finalists"]]
    assert f"gen/boolean_expressions · ape>greater · seed 0: {refined['prompt']!r} after '.'" in stdout
    assert "ape>greater: both searches" in stdout
