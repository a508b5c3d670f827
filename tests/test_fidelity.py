"""Fidelity to the reference: its selection rule and fixed-target gradient re-implemented here
independently, the other selection rules, the period rule, the filler, the dev-set choice, the
paper's splits, and the invariant that the prompt scored is the prompt returned."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

from greater.errors import GreaterError
from greater.evaluate import evaluate
from greater.inference.engine import Engine, Terms
from greater.inference.generation import stop_token_ids
from greater.inference.layout import decode, encode, encode_prompt
from greater.optimizer import (
    GreaterConfig,
    Returnable,
    RunState,
    _Step,
    filler_token,
    optimize,
    selection_score,
    shortlist_candidates,
)
from greater.tasks import get_task
from helpers import BBH_DIR, optimize_argv, run_cli

TASK = get_task("gen/boolean_expressions")
BASE = GreaterConfig(steps=1, max_new_tokens=4, top_k=6, batch_size=4, init_prompt="think step by step.")


def _terms(correct: list[bool], ce: list[float], nll: list[float]) -> Terms:
    return Terms(ce=torch.tensor(ce), nll=torch.tensor(nll), correct=torch.tensor(correct))


# --- selection rules ---------------------------------------------------------------------------


def test_selection_rules_on_known_terms():
    few_errors = _terms([True, True, False, False], [9.0, 9.0, 9.0, 9.0], [5.0, 5.0, 5.0, 5.0])
    low_loss = _terms([True, False, False, False], [0.1, 0.1, 0.1, 0.1], [1.0, 1.0, 1.0, 1.0])
    rules = {rule: replace(BASE, selection=rule) for rule in ("errors-then-loss", "reference", "loss")}
    # reference: error rate + 0.02 · mean NLL
    assert selection_score(few_errors, rules["reference"]) == pytest.approx(0.5 + 0.02 * 5.0)
    assert selection_score(low_loss, rules["reference"]) == pytest.approx(0.75 + 0.02 * 1.0)
    # loss: mean(CE + 0.2 · NLL)
    assert selection_score(few_errors, rules["loss"]) == pytest.approx(9.0 + 0.2 * 5.0)
    assert selection_score(low_loss, rules["loss"]) == pytest.approx(0.1 + 0.2 * 1.0)
    # errors-then-loss: (errors + L/(1+L)) / n
    assert selection_score(few_errors, rules["errors-then-loss"]) == pytest.approx((2 + 10.0 / 11.0) / 4)
    assert selection_score(low_loss, rules["errors-then-loss"]) == pytest.approx((3 + 0.3 / 1.3) / 4)
    # fewer errors win under errors-then-loss and reference, the lower loss under loss
    assert selection_score(few_errors, rules["errors-then-loss"]) < selection_score(low_loss, rules["errors-then-loss"])
    assert selection_score(few_errors, rules["loss"]) > selection_score(low_loss, rules["loss"])


def test_errors_then_loss_orders_equal_errors_by_loss_and_never_trades_an_error_for_loss():
    rule = replace(BASE, selection="errors-then-loss")
    huge_loss_one_error = selection_score(_terms([True, False], [1e6, 1e6], [1e6, 1e6]), rule)
    tiny_loss_two_errors = selection_score(_terms([False, False], [0.0, 0.0], [0.0, 0.0]), rule)
    assert huge_loss_one_error < tiny_loss_two_errors
    a = selection_score(_terms([False, False], [1.0, 1.0], [2.0, 2.0]), rule)
    b = selection_score(_terms([False, False], [1.5, 1.5], [2.0, 2.0]), rule)
    assert a < b


def test_old_accuracy_rule_name_is_the_reference_rule():
    assert GreaterConfig(selection="accuracy").selection == "reference"
    with pytest.raises(GreaterError, match="selection"):
        GreaterConfig(selection="best").validate()


# --- the reference's step, re-implemented independently -----------------------------------------


def _reference_gradient(model, seqs, position, candidates, weight=0.2, temperature=0.2) -> torch.Tensor:
    """The reference's token_gradients, summed over examples, L2-normalised: one-hot over `candidates`
    at the position, loss = CE(answer logits / T) + weight · mean prompt NLL with the prompt ids as
    fixed targets, one example at a time."""
    emb = model.get_input_embeddings().weight
    total = None
    for seq in seqs:
        ids = torch.tensor(seq.ids)
        p = seq.prompt.start + position
        one_hot = torch.zeros(len(candidates))
        one_hot[candidates.index(int(ids[p]))] = 1.0
        one_hot.requires_grad_(True)
        x = torch.cat([emb[ids[:p]], (one_hot @ emb[candidates])[None], emb[ids[p + 1 :]]])
        logits = model(inputs_embeds=x[None]).logits[0]
        answer = torch.arange(seq.answer.start, seq.answer.stop)
        ce = torch.nn.functional.cross_entropy(logits[answer - 1] / temperature, ids[answer])
        prompt = torch.arange(seq.prompt.start, seq.prompt.stop)
        nll = torch.nn.functional.cross_entropy(logits[prompt - 1], ids[prompt])
        (ce + weight * nll).backward()
        total = one_hot.grad if total is None else total + one_hot.grad
    return total / total.norm()


def _reference_selection_score(model, engine, prompt_ids, max_new_tokens) -> float:
    """mist_perc + (0.2 / 10) · control_loss, with fresh greedy reasoning from `model.generate`."""
    stops = stop_token_ids(model, engine.tokenizer)
    reasonings = []
    for seq in engine.sequences(prompt_ids):
        context = torch.tensor([seq.ids])
        out = model.generate(
            context, attention_mask=torch.ones_like(context), max_new_tokens=max_new_tokens, do_sample=False
        )[0, context.shape[1] :].tolist()
        reasonings.append(next((out[:i] for i, t in enumerate(out) if t in stops), out))
    mistakes, nlls = [], []
    for full in engine.sequences(prompt_ids, reasonings):
        ids = torch.tensor(full.ids)
        logits = model(ids[None]).logits[0]
        answer = torch.arange(full.answer.start, full.answer.stop)
        mistakes.append(float((logits[answer - 1].argmax(-1) != ids[answer]).any()))
        prompt = torch.arange(full.prompt.start, full.prompt.stop)
        nlls.append(float(torch.nn.functional.cross_entropy(logits[prompt - 1], ids[prompt])))
    return sum(mistakes) / len(mistakes) + 0.02 * sum(nlls) / len(nlls)


@pytest.mark.parametrize("position", [0, 2])
def test_reference_rule_step_equals_independent_reimplementation(tiny_model, smol_tokenizer, position):
    tok = smol_tokenizer
    train = TASK.load()[:3]
    config = replace(BASE, selection="reference", top_k=8, num_select=3, max_new_tokens=5)
    prompt = tuple(encode_prompt(tok, config.init_prompt))
    state = RunState(prompt=list(prompt), init_len=len(prompt) * 4, position=position, best_prompt=list(prompt))
    result = optimize(tiny_model, tok, TASK, config, train=train, state=state)
    (record,) = result.steps

    engine = Engine(tiny_model, tok, TASK, train, joiner=config.joiner, batch_size=1, cached_decoding=False)
    (reasoning,) = engine.reason([prompt], config.max_new_tokens)
    candidates = [c.token_id for c in record.candidates]
    grads = _reference_gradient(tiny_model, engine.sequences(prompt, reasoning), position, sorted(candidates))
    ours = {c.token_id: c.grad for c in record.candidates}
    for cand, grad in zip(sorted(candidates), grads.tolist(), strict=True):
        assert ours[cand] == pytest.approx(grad, abs=1e-4)

    # the shortlist: most negative reference gradient first, prompts whose text re-encodes to their ids
    order = [sorted(candidates)[j] for j in torch.argsort(grads).tolist()]
    shortlist = []
    for token in order:
        ids = prompt[:position] + (token,) + prompt[position + 1 :]
        if encode(tok, " " + decode(tok, ids).strip()) == list(ids):
            shortlist.append(ids)
        if len(shortlist) == config.num_select:
            break
    assert [e.prompt for e in record.evaluated] == [decode(tok, p).strip() for p in shortlist]
    scores = [_reference_selection_score(tiny_model, engine, p, config.max_new_tokens) for p in shortlist]
    for entry, score in zip(record.evaluated, scores, strict=True):
        assert entry.score == pytest.approx(score, abs=1e-4)
    chosen = None
    best = math.inf
    for ids, score in zip(shortlist, scores, strict=True):  # the reference's `<=`: the last of equals
        if score <= best:
            best, chosen = score, ids
    assert tuple(record.chosen_ids) == chosen


def test_fixed_target_gradient_differs_from_candidate_nll_option(tiny_run):
    fixed = tiny_run(steps=1)
    with_nll = tiny_run(steps=1, candidate_nll=True)
    a = {c.token_id: c.grad for c in fixed.steps[0].candidates}
    b = {c.token_id: c.grad for c in with_nll.steps[0].candidates}
    assert a.keys() == b.keys()
    assert max(abs(a[k] - b[k]) for k in a) > 1e-3


# --- period rule, filler, returned prompt -------------------------------------------------------


@pytest.mark.slow
def test_period_candidate_is_scored_before_it_is_taken(tiny_model, smol_tokenizer):
    tok = smol_tokenizer
    train = TASK.load()[:2]
    config = replace(BASE, max_new_tokens=3)
    engine = Engine(tiny_model, tok, TASK, train, joiner=config.joiner, batch_size=4)
    step = _Step(engine, config, Returnable(tok))
    prompt = tuple(encode_prompt(tok, "think step by step and answer"))
    position = len(prompt) - 1
    state = RunState(prompt=list(prompt), init_len=2, position=position)
    words = [encode(tok, w)[0] for w in (" now", ".", " well")]
    shortlist = [prompt[:position] + (w,) for w in words]
    chosen, evaluated = step._select(state, prompt, position, shortlist, [])
    assert chosen == shortlist[1]
    assert [e.prompt for e in evaluated] == [decode(tok, p).strip() for p in shortlist[:2]]
    assert evaluated[1].accepted_period is True
    assert math.isfinite(evaluated[1].score)
    assert shortlist[1] in state.scores
    assert shortlist[2] not in state.scores  # later ones are not scored


def test_filler_is_one_underscore_token_or_the_closest_single_token(smol_tokenizer):
    tok = smol_tokenizer
    assert filler_token(tok, "_") == encode(tok, "_")[0]
    assert filler_token(tok, " and") == encode(tok, " and")[0]
    with pytest.raises(GreaterError, match="not a single token"):
        filler_token(tok, "antidisestablishmentarianism")


def test_position_zero_token_without_space_is_not_shortlisted(smol_tokenizer):
    tok = smol_tokenizer
    prompt = tuple(encode_prompt(tok, "logical reasoning."))
    ful = encode(tok, "ful")
    assert len(ful) == 1
    candidate = (ful[0],) + prompt[1:]
    assert encode_prompt(tok, decode(tok, candidate).strip()) != list(candidate)  # it would come back other ids
    out = shortlist_candidates(tok, prompt, 0, [ful[0], encode(tok, " sound")[0]], 2)
    assert [p[0] for p in out] == [encode(tok, " sound")[0]]


def test_every_chosen_and_returned_prompt_reencodes_to_its_ids(tiny_run, smol_tokenizer):
    result = tiny_run(steps=6, init_prompt="think.")
    assert len(result.steps) == 6
    for record in result.steps:
        assert encode_prompt(smol_tokenizer, record.chosen) == record.chosen_ids
        for entry in record.evaluated:  # every prompt scored in selection
            assert encode_prompt(smol_tokenizer, entry.prompt) == entry.prompt_ids
    assert encode_prompt(smol_tokenizer, result.prompt) == result.prompt_ids


# --- dev-set choice -------------------------------------------------------------------------------


def test_dev_choice_scores_the_best_prompts_and_returns_the_best_on_dev(tiny_model, smol_tokenizer):
    tok = smol_tokenizer
    examples = TASK.load()
    train, dev = examples[:3], examples[3:7]
    config = replace(BASE, steps=3, keep_top=3)
    result = optimize(tiny_model, tok, TASK, config, train=train, dev=dev)
    finalists = result.finalists
    assert 1 <= len(finalists) <= 3
    assert len({tuple(f["prompt_ids"]) for f in finalists}) == len(finalists)
    assert [f["score"] for f in finalists] == sorted(f["score"] for f in finalists)
    for f in finalists:  # each dev accuracy is what evaluate() gives for that text
        ev = evaluate(tiny_model, tok, TASK, dev, f["prompt"], max_new_tokens=config.max_new_tokens, batch_size=4)
        assert f["dev_accuracy"] == ev.accuracy
    best = max(f["dev_accuracy"] for f in finalists)
    first_best = next(f for f in finalists if f["dev_accuracy"] == best)
    assert result.prompt == first_best["prompt"]
    assert result.dev_accuracy == best
    assert result.score == first_best["score"]


@pytest.mark.slow
def test_dev_keeps_initial_scores_the_starting_prompt_on_dev_too(tiny_model, smol_tokenizer):
    """With keep_top=1 the dev pass sees the best prompt by training score and, with
    dev_keeps_initial, the starting prompt as well (last: a dev tie keeps the searched prompt)."""
    examples = TASK.load()
    train, dev = examples[:3], examples[3:7]
    config = replace(BASE, steps=3, keep_top=1)
    plain = optimize(tiny_model, smol_tokenizer, TASK, config, train=train, dev=dev)
    kept = optimize(tiny_model, smol_tokenizer, TASK, replace(config, dev_keeps_initial=True), train=train, dev=dev)
    assert kept.finalists[0] == plain.finalists[0]
    assert plain.finalists[0]["prompt"] != config.init_prompt  # else there would be nothing to add
    assert [f["prompt"] for f in kept.finalists] == [plain.finalists[0]["prompt"], config.init_prompt]
    initial = evaluate(tiny_model, smol_tokenizer, TASK, dev, config.init_prompt, max_new_tokens=config.max_new_tokens)
    assert kept.finalists[1]["dev_accuracy"] == initial.accuracy
    won = kept.finalists[1] if initial.accuracy > kept.finalists[0]["dev_accuracy"] else kept.finalists[0]
    assert kept.prompt == won["prompt"]


@pytest.mark.slow
def test_interrupted_dev_pass_resumes_to_the_same_result(tiny_model, smol_tokenizer):
    examples = TASK.load()
    train, dev = examples[:3], examples[3:6]
    config = replace(BASE, steps=2, keep_top=3)
    full = optimize(tiny_model, smol_tokenizer, TASK, config, train=train, dev=dev)
    saved: list[dict] = []

    class Killed(Exception):
        pass

    def kill_after_first(state: RunState) -> None:
        saved.append(state.to_json())
        raise Killed

    with pytest.raises(Killed):
        optimize(tiny_model, smol_tokenizer, TASK, config, train=train, dev=dev, on_dev=kill_after_first)
    state = RunState.from_json(saved[-1])
    assert len(state.dev_accuracy) == 1
    assert state.step == 2
    rest = optimize(tiny_model, smol_tokenizer, TASK, config, train=train, dev=dev, state=state)
    assert rest.steps == []  # nothing re-run but the dev pass
    assert (rest.prompt, rest.dev_accuracy, rest.finalists) == (full.prompt, full.dev_accuracy, full.finalists)


# --- the paper's splits ---------------------------------------------------------------------------


NEEDS_BBH = pytest.mark.skipif(not BBH_DIR.is_dir(), reason=f"no BBH data in {BBH_DIR}")


@NEEDS_BBH
def test_bbh_default_split_is_50_100_100_and_test_does_not_depend_on_dev():
    from greater.tasks.bbh import load_bbh_task

    task = load_bbh_task("boolean_expressions", BBH_DIR)
    drawn = task.splits(None, None, None, seed=3)
    assert (len(drawn.train), len(drawn.dev), len(drawn.test)) == (50, 100, 100)
    assert drawn.note == ""
    questions = [{ex.question for ex in part} for part in (drawn.train, drawn.dev, drawn.test)]
    assert not (questions[0] & questions[1] or questions[0] & questions[2] or questions[1] & questions[2])
    no_dev = task.splits(None, 0, None, seed=3)
    assert no_dev.test == drawn.test
    assert no_dev.dev == []
    assert task.split(None, None, 3) == (drawn.train, drawn.test)


@NEEDS_BBH
def test_small_bbh_task_shares_what_is_left_and_says_so():
    from greater.tasks.bbh import load_bbh_task

    task = load_bbh_task("penguins_in_a_table", BBH_DIR)
    n = len(task.load())
    drawn = task.splits(None, None, None, seed=0)
    assert len(drawn.train) == 50
    assert len(drawn.dev) + len(drawn.test) == n - 50
    assert abs(len(drawn.dev) - len(drawn.test)) <= 1
    assert f"has {n} examples" in drawn.note
    assert f"{len(drawn.dev)} dev / {len(drawn.test)} test" in drawn.note
    with pytest.raises(GreaterError, match="dev must be at most"):
        task.splits(50, n, None, seed=0)


# --- the command line -----------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_dev_choice_is_recorded_and_an_interrupted_dev_pass_resumes(capsys, monkeypatch, tiny_model_dir, tmp_path):
    from greater import optimizer

    extra = ("--dev", "3", "--keep-top", "2")
    code, out, err = run_cli(capsys, optimize_argv(tiny_model_dir, tmp_path / "full", *extra))
    assert code == 0, err
    assert "4 train / 3 dev / 3 test" in out
    assert "dev accuracy of the chosen prompt" in out
    full = json.loads((tmp_path / "full" / "result.json").read_text())
    run = json.loads((tmp_path / "full" / "run.json").read_text())
    assert (run["split"]["n_dev"], run["split"]["dev"]) == (3, 3)
    assert 1 <= len(full["finalists"]) <= 2
    assert full["dev_accuracy"] == max(f["dev_accuracy"] for f in full["finalists"])
    assert full["prompt"] in {f["prompt"] for f in full["finalists"]}

    calls = []
    real_accuracy_on = optimizer.accuracy_on  # the dev pass scores each finalist through it

    def interrupted_on_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_accuracy_on(*args, **kwargs)

    monkeypatch.setattr(optimizer, "accuracy_on", interrupted_on_second)
    code, _, err = run_cli(capsys, optimize_argv(tiny_model_dir, tmp_path / "cut", *extra))
    if len(full["finalists"]) == 1:  # one finalist: nothing to interrupt
        assert code == 0
        return
    assert code == 130
    assert "resume with" in err
    checkpoint = json.loads((tmp_path / "cut" / "checkpoint.json").read_text())
    assert len(checkpoint["state"]["dev_accuracy"]) == 1
    monkeypatch.setattr(optimizer, "accuracy_on", real_accuracy_on)
    code, _, err = run_cli(capsys, ["optimize", "--resume", str(tmp_path / "cut")])
    assert code == 0, err
    resumed = json.loads((tmp_path / "cut" / "result.json").read_text())
    for key in ("prompt", "prompt_ids", "finalists", "dev_accuracy", "score"):
        assert resumed[key] == full[key], key


@pytest.mark.slow
def test_cli_evaluate_scores_the_runs_dev_split(capsys, tiny_model_dir, tmp_path):
    assert run_cli(capsys, optimize_argv(tiny_model_dir, tmp_path / "run", "--dev", "3", "--keep-top", "1"))[0] == 0
    argv = ["evaluate", "--model", str(tiny_model_dir), "--run", str(tmp_path / "run"), "--split", "dev"]
    code, out, err = run_cli(capsys, argv + ["--out", str(tmp_path / "ev")])
    assert code == 0, err
    questions = [json.loads(line)["question"] for line in (tmp_path / "ev" / "predictions.jsonl").open()]
    assert questions == [ex.question for ex in TASK.splits(4, 3, 3, 0).dev]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--method", "ape", "--top-k", "3"), "--top-k applies to GReaTer runs only, not to ape"),
        (("--method", "apo", "--dev", "3"), "--dev applies to GReaTer runs only, not to apo"),
        (("--method", "pe2", "--keep-top", "3"), "--keep-top applies to GReaTer runs only, not to pe2"),
        (("--dev", "500"), "--dev must be at most"),
        (("--filler", "antidisestablishmentarianism"), "is not a single token"),
        (("--method", "ape", "--nll-weight", "0.5"), "--nll-weight applies to GReaTer runs only, not to ape"),
        (("--answer-temperature", "0"), "invalid setting answer_temperature=0.0"),
        (("--dev-keeps-initial",), "--dev-keeps-initial scores the starting prompt on the dev set: give --dev N"),
    ],
)
def test_cli_bad_fidelity_settings_exit_2(capsys, tiny_model_dir, tmp_path, extra, message):

    code, out, err = run_cli(capsys, optimize_argv(tiny_model_dir, tmp_path / "run", *extra))
    assert code == 2
    assert message in err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()  # refused before a run directory is made


def test_cli_search_settings_beyond_the_paper_reach_the_run(capsys, tiny_model_dir, tmp_path):
    """--joiner, --num-select, --nll-weight and --answer-temperature are recorded and used: the user
    turn has the joiner, and a step re-scores at most --num-select candidates."""

    extra = ("--joiner", ".", "--num-select", "1", "--nll-weight", "0.5", "--answer-temperature", "1.5")
    extra += ("--dev", "3", "--keep-top", "1", "--dev-keeps-initial")
    code, _, err = run_cli(capsys, optimize_argv(tiny_model_dir, tmp_path / "run", *extra))
    assert code == 0, err
    config = json.loads((tmp_path / "run" / "run.json").read_text())["config"]
    assert config["dev_keeps_initial"] is True
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["finalists"][-1]["prompt"] == result["initial_prompt"]
    assert (config["joiner"], config["num_select"]) == (".", 1)
    assert (config["nll_weight"], config["answer_temperature"]) == (0.5, 1.5)
    steps = [json.loads(line) for line in (tmp_path / "run" / "steps.jsonl").open()]
    assert [len(s["evaluated"]) for s in steps] == [1, 1]  # the default re-scores 3
    assert json.loads((tmp_path / "run" / "prompt.json").read_text())["joiner"] == "."
