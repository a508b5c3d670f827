"""The GReaTer step on a tiny random-weight Llama: gradient vs an explicit one-hot reference,
candidate proposal, position schedule, and whole runs."""

from __future__ import annotations

import math
import random

import pytest
import torch

from greater.errors import GreaterError
from greater.evaluate import ANSWER_SLACK, evaluate, evaluate_with
from greater.fit import fitting_rows
from greater.inference.layout import decode, encode, encode_prompt
from greater.optimizer import (
    GreaterConfig,
    advance,
    allowed_token_mask,
    candidate_gradient,
    propose_candidates,
    shortlist_candidates,
)
from greater.tasks import get_task

LAMBDA = 0.2
TEMPERATURE = 0.2


def _reference_loss(model, seqs, position, candidates, one_hot):
    """sum_b [CE(answer)/T + λ·NLL(prompt)] with p_i = one_hot @ E[C], one example at a time."""
    emb = model.get_input_embeddings().weight
    total = 0.0
    ces, nlls = [], []
    for seq in seqs:
        ids = torch.tensor(seq.ids)
        p = seq.prompt.start + position
        x = emb[ids].clone()
        x = torch.cat([x[:p], (one_hot @ emb[candidates])[None], x[p + 1 :]])
        logits = model(inputs_embeds=x[None]).logits[0]
        ce = torch.stack(
            [
                -torch.log_softmax(logits[t - 1] / TEMPERATURE, -1)[ids[t]]
                for t in range(seq.answer.start, seq.answer.stop)
            ]
        ).mean()
        nll_terms = []
        for t in range(seq.prompt.start, seq.prompt.stop):
            logp = torch.log_softmax(logits[t - 1], -1)
            nll_terms.append(-(one_hot * logp[candidates]).sum() if t == p else -logp[ids[t]])
        nll = torch.stack(nll_terms).mean()
        ces.append(float(ce.detach()))
        nlls.append(float(nll.detach()))
        total = total + ce + LAMBDA * nll
    return total, ces, nlls


@pytest.mark.parametrize(
    ("position", "placement"),
    [(0, "after-question"), (2, "after-question"), (4, "after-question"), (0, "before-question"), (2, "system")],
)
def test_candidate_gradient_matches_explicit_one_hot_autograd(
    tiny_model, smol_tokenizer, tiny_engine, position, placement
):
    engine = tiny_engine(batch_size=2, grad_batch_size=2, placement=placement)
    prompt = engine.encode_prompt("think step by step and answer.")
    if placement != "after-question":  # the question comes after the prompt, in every row's own tail
        assert all(seq.question.start > seq.prompt.stop for seq in engine.sequences(prompt))
    reasonings = [encode(smol_tokenizer, f" First, step {i}: evaluate the inner part.") for i in range(3)]
    seqs = engine.sequences(prompt, reasonings)
    terms = engine.terms(seqs, position=position, nll_weight=LAMBDA)
    candidates = sorted({prompt[position], 262, 1183, 3045, 20345, 40000})
    ours = candidate_gradient(terms, engine.candidate_embeddings(candidates), candidates, LAMBDA)

    one_hot = torch.zeros(len(candidates))
    one_hot[candidates.index(prompt[position])] = 1.0
    one_hot.requires_grad_(True)
    total, ces, nlls = _reference_loss(tiny_model, seqs, position, candidates, one_hot)
    total.backward()
    reference = one_hot.grad / one_hot.grad.norm()

    assert torch.allclose(ours, reference, atol=1e-4), (ours, reference)
    assert torch.allclose(terms.ce, torch.tensor(ces), atol=1e-4)
    assert torch.allclose(terms.nll, torch.tensor(nlls), atol=1e-4)
    assert math.isclose(float(ours.norm()), 1.0, rel_tol=1e-5)


def test_batched_terms_equal_one_example_at_a_time(tiny_model, smol_tokenizer, tiny_engine):
    prompt = tuple(encode_prompt(smol_tokenizer, "think step by step."))
    reasonings = [encode(smol_tokenizer, " ok" * (i + 1)) for i in range(4)]
    batched = tiny_engine(n=4, batch_size=4, grad_batch_size=4)
    # one example at a time, every token forward + backward (no cached prefix): the reference's way
    single = tiny_engine(n=4, batch_size=1, grad_batch_size=1, batched_gradient=False)
    a = batched.terms(batched.sequences(prompt, reasonings), position=1, nll_weight=LAMBDA)
    b = single.terms(single.sequences(prompt, reasonings), position=1, nll_weight=LAMBDA)
    assert torch.allclose(a.ce, b.ce, atol=1e-4)
    assert torch.allclose(a.embed_grad, b.embed_grad, atol=1e-5)
    assert torch.allclose(a.proposal_logprobs, b.proposal_logprobs, atol=1e-4)
    assert all(not p.requires_grad for p in tiny_model.parameters())
    # only the tokens from the position on ran backward; the rest ran once, without gradient
    assert 0 < batched.counts.backward_tokens < single.counts.backward_tokens


def _ranked_logprobs(orders: list[list[int]], vocab: int) -> torch.Tensor:
    """(B, V) log-probs where row b ranks tokens in `orders[b]` first, in that order."""
    rows = []
    for order in orders:
        scores = torch.full((vocab,), -100.0)
        for rank, tok in enumerate(order):
            scores[tok] = -float(rank)
        rows.append(torch.log_softmax(scores, -1))
    return torch.stack(rows)


def test_proposal_is_intersection_with_exclusions():
    logprobs = _ranked_logprobs([list(range(20))] * 5, 20)
    allowed = torch.ones(20, dtype=torch.bool)
    allowed[2] = False
    config = GreaterConfig(top_k=3, top_q=2, intersect_size=5, min_candidates=3)
    out = propose_candidates(logprobs, allowed, {0}, current=19, config=config, rng=random.Random(0))
    # 0 excluded (previous token), 2 not allowed: the top-3 of every example is then {1, 3, 4}
    assert out == [1, 3, 4, 19]


def test_proposal_grows_k_until_enough_candidates():
    common = list(range(1, 9))
    orders = [[10 + 2 * b, 11 + 2 * b] + common for b in range(4)]  # top-2 of each example is private
    logprobs = _ranked_logprobs(orders, 40)
    config = GreaterConfig(top_k=2, k_growth=2, top_q=1, intersect_size=4, min_candidates=4)
    out = propose_candidates(logprobs, torch.ones(40, dtype=torch.bool), set(), 39, config, random.Random(0))
    assert out == [1, 2, 3, 4, 39]  # k=2: {}, k=4: {1,2}, k=6: {1,2,3,4}


def test_proposal_union_of_random_intersections():
    gen = torch.Generator().manual_seed(0)
    logprobs = torch.log_softmax(torch.randn(6, 50, generator=gen), -1)
    config = GreaterConfig(top_k=8, top_q=4, intersect_size=2, min_candidates=1)
    out = set(propose_candidates(logprobs, torch.ones(50, dtype=torch.bool), set(), 49, config, random.Random(3)))
    tops = [set(r.tolist()) for r in logprobs.topk(8, dim=1).indices]
    possible = set().union(*(tops[i] & tops[j] for i in range(6) for j in range(6) if i != j)) | {49}
    assert out <= possible
    assert 49 in out


def test_allowed_tokens(smol_tokenizer):
    mask = allowed_token_mask(smol_tokenizer, len(smol_tokenizer))
    assert mask[encode(smol_tokenizer, " the")[0]]
    assert mask[encode(smol_tokenizer, ".")[0]]
    assert not mask[encode(smol_tokenizer, " 123")[0]]
    assert not mask[encode(smol_tokenizer, " é")[-1]]
    assert not any(mask[i] for i in smol_tokenizer.all_special_ids)


def test_advance_wraps_after_sentence_and_grows_otherwise(smol_tokenizer):
    filler = encode(smol_tokenizer, " and")[0]
    finished = tuple(encode_prompt(smol_tokenizer, "think step by step."))
    assert advance(smol_tokenizer, finished, len(finished) - 1, filler) == (0, finished)
    assert advance(smol_tokenizer, finished, 1, filler) == (2, finished)
    open_ = tuple(encode_prompt(smol_tokenizer, "think step by"))
    position, grown = advance(smol_tokenizer, open_, len(open_) - 1, filler)
    assert position == len(open_)
    assert grown == open_ + (filler,)


def test_shortlist_skips_candidates_that_do_not_roundtrip(smol_tokenizer):
    tok = smol_tokenizer
    prompt = tuple(encode_prompt(tok, "the answer is"))
    ranked = [encode(tok, "re")[0], encode(tok, " final")[0], prompt[1], encode(tok, " result")[0]]
    out = shortlist_candidates(tok, prompt, 1, ranked, 2)
    assert [decode(tok, p).strip() for p in out] == ["the final is", "the answer is"]


def test_optimize_runs_and_tracks_best(tiny_run, smol_tokenizer):
    result = tiny_run()
    assert [r.step for r in result.steps] == [1, 2, 3]
    assert [r.position for r in result.steps] == [0, 1, 2]
    bests = [r.best_score for r in result.steps]
    assert bests == sorted(bests, reverse=True)
    assert result.score == bests[-1] <= result.initial_score
    for record in result.steps:
        before = tuple(encode_prompt(smol_tokenizer, record.prompt))
        diff = [i for i, (a, b) in enumerate(zip(before, record.chosen_ids, strict=True)) if a != b]
        assert diff in ([], [record.position])  # a step changes only its own position
        grads = [c.grad for c in record.candidates]
        assert grads == sorted(grads)
        assert all(math.isfinite(g) for g in grads)
        assert math.isclose(sum(g * g for g in grads), 1.0, rel_tol=1e-4)
        assert record.evaluated
        assert all(e.score is None or math.isfinite(e.score) for e in record.evaluated)


@pytest.mark.slow
def test_same_seed_same_prompts_and_reuse_changes_nothing(tiny_run):
    a = tiny_run()
    b = tiny_run()
    c = tiny_run(reuse_reasoning=False)
    chosen = [[r.chosen_ids for r in res.steps] for res in (a, b, c)]
    assert chosen[0] == chosen[1] == chosen[2]
    assert [r.candidates for r in a.steps] == [r.candidates for r in b.steps]
    assert a.prompt == c.prompt
    assert a.score == pytest.approx(c.score, abs=1e-4)


def test_an_engine_on_other_examples_shares_its_model_calls_and_scores_as_a_fresh_one(
    tiny_model, smol_tokenizer, tiny_engine
):

    engine = tiny_engine("gen/boolean_expressions", 3, batch_size=2, max_new_tokens=6)
    task = get_task("gen/boolean_expressions")
    others = task.load()[5:8]
    on = engine.on(others)
    assert on.generator is engine.generator and on.counts is engine.counts and on.batch_size == 2
    assert on.examples == others and engine.examples == task.load()[:3]  # the original keeps its own
    before = engine.counts.sequences
    mine = evaluate_with(on, "Think step by step.")
    assert engine.counts.sequences == before + 2 * len(others)  # reasoning + answer, counted on the run's engine
    fresh = evaluate(
        tiny_model, smol_tokenizer, task, others, "Think step by step.", joiner=". Use", max_new_tokens=6, batch_size=2
    )
    assert mine.predictions == fresh.predictions


def test_the_context_check_counts_a_row_as_the_engine_does(smol_tokenizer, tiny_engine):

    engine = tiny_engine("gen/boolean_expressions", 1)
    (example,) = engine.examples
    # the evaluation lets the model write ANSWER_SLACK tokens beyond the gold answer
    tokens = engine.row_tokens(32, prompt_tokens=10) + ANSWER_SLACK

    def kept(context: int) -> int:
        rows, _ = fitting_rows(
            smol_tokenizer,
            engine.task,
            {"train": [example]},
            context=context,
            prompt_tokens=10,
            joiner=engine.joiner,
            max_new_tokens=32,
            skip=True,
        )
        return len(rows["train"])

    assert kept(tokens) == 1
    with pytest.raises(GreaterError, match="no train example fits"):
        kept(tokens - 1)
