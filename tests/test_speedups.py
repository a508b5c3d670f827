"""Each speed-up switch gives the same result as with it off."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch

from greater.inference.batching import DecodeStats, pack_rows, padding_chunks
from greater.inference.decoding import DecodeRequest, decode_shared, lookup_draft
from greater.inference.engine import SharedPrefix
from greater.inference.generation import TransformersGenerator
from greater.inference.kvcache import extend, prefill
from greater.inference.layout import encode_prompt
from greater.optimizer import GreaterConfig, optimize
from greater.tasks import get_task


def _arithmetic_engine(tiny_engine, cached: bool, batch_size: int = 32, placement: str = "after-question"):
    """An engine on 5 arithmetic examples, with or without the shared-cache decoding."""
    return tiny_engine("gen/arithmetic", 5, batch_size=batch_size, cached_decoding=cached, placement=placement)


def test_own_decoding_loop_equals_model_generate(tiny_model, smol_tokenizer):
    contexts = [
        tuple(smol_tokenizer(t)["input_ids"]) for t in ["Hello there", "A much longer context here, yes", "x y"]
    ]
    fast = TransformersGenerator(tiny_model, smol_tokenizer, cached=True).generate(contexts, 12)
    slow = TransformersGenerator(tiny_model, smol_tokenizer, cached=False).generate(contexts, 12)
    assert fast == slow
    assert all(len(r) == 12 for r in fast)  # random weights rarely emit the stop token


def test_lookup_draft_takes_what_followed_the_latest_match():
    context = [5, 6, 7, 8, 9, 5, 6, 7, 1, 5, 6]
    # "1 5 6" occurs nowhere earlier; "5 6" last occurred at 5..6, followed by 7 1 5
    assert lookup_draft(context, 3, stop_ids=set()) == [7, 1, 5]
    assert lookup_draft(context, 1, stop_ids=set()) == [7]
    assert lookup_draft(context, 3, stop_ids={1}) == [7]  # never guesses past a stop token
    assert lookup_draft([1, 2, 3], 4, stop_ids=set()) == []  # no earlier occurrence of any suffix
    assert lookup_draft(context, 0, stop_ids=set()) == []


def test_pack_rows_aligns_and_masks():
    ids, mask = pack_rows([[1, 2, 3], [4]], pad_id=9)
    assert ids.tolist() == [[1, 2, 3], [4, 9, 9]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask = pack_rows([[1, 2, 3], [4]], pad_id=9, left=True)
    assert ids.tolist() == [[1, 2, 3], [9, 9, 4]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    ids, mask = pack_rows([[1, 2], [4, 5]], pad_id=0, offsets=[0, 2])
    assert ids.tolist() == [[1, 2, 0, 0], [0, 0, 4, 5]]
    assert mask.tolist() == [[1, 1, 0, 0], [0, 0, 1, 1]]


def _repeating_rows(tok):
    """Contexts whose greedy continuations on the tiny model repeat (random weights loop)."""
    texts = ["one two three one two three one two", "the cat sat on the mat. the cat", "x y"]
    return [tuple(tok(t)["input_ids"]) for t in texts]


@pytest.mark.parametrize("slots", [6, 16, 64])
def test_lookup_drafting_gives_greedy_output_and_follow_scores(tiny_model, smol_tokenizer, slots):
    contexts = _repeating_rows(smol_tokenizer)
    follow = tuple(smol_tokenizer(" so the answer is 7")["input_ids"])
    rows = [DecodeRequest(i, c[-2:], follow, len(follow)) for i, c in enumerate(contexts)]
    heads = prefill(tiny_model, [c[:-2] for c in contexts], pad_id=0)
    args = dict(max_new_tokens=40, stop_ids={2}, pad_id=0)
    plain_stats, drafted_stats = DecodeStats(), DecodeStats()
    plain = decode_shared(tiny_model, heads, rows, stats=plain_stats, **args)
    drafted = decode_shared(tiny_model, heads, rows, draft_slots=slots, stats=drafted_stats, **args)
    assert [r.reasoning for r in drafted] == [r.reasoning for r in plain]
    for a, b in zip(drafted, plain, strict=True):
        assert a.follow_logprobs == pytest.approx(b.follow_logprobs, abs=1e-4)
        assert a.tail_logprobs == pytest.approx(b.tail_logprobs, abs=1e-4)
        assert a.follow_hits == b.follow_hits
    assert drafted_stats.generated_tokens == plain_stats.generated_tokens
    assert drafted_stats.accepted_tokens > 0  # drafts were checked and some taken, so fewer forwards ran
    assert plain_stats.drafted_tokens == 0
    # scoring only the last two follow tokens gives exactly those two of the full scoring
    last_two = decode_shared(tiny_model, heads, [replace(row, scored=2) for row in rows], draft_slots=slots, **args)
    for a, b in zip(last_two, drafted, strict=True):
        assert a.reasoning == b.reasoning
        assert a.follow_logprobs == pytest.approx(b.follow_logprobs[-2:], abs=1e-5)
        assert a.follow_hits == b.follow_hits[-2:]


@pytest.mark.parametrize(
    ("batch_size", "placement"), [(32, "after-question"), (4, "after-question"), (4, "before-question"), (4, "system")]
)
def test_shared_prefix_scoring_equals_full_forward(tiny_model, smol_tokenizer, tiny_engine, batch_size, placement):
    fast_engine = _arithmetic_engine(tiny_engine, True, batch_size, placement)
    base = fast_engine.encode_prompt("think step by step and answer.")
    position = 2
    prompts = [base[:position] + (t,) + base[position + 1 :] for t in (base[position], 1183, 3045)]
    fast = fast_engine.reason_and_score(prompts, 10)
    slow = _arithmetic_engine(tiny_engine, False, placement=placement).reason_and_score(prompts, 10)
    for (r_fast, t_fast), (r_slow, t_slow) in zip(fast, slow, strict=True):
        assert r_fast == r_slow
        assert torch.allclose(t_fast.ce, t_slow.ce, atol=1e-4)
        assert torch.allclose(t_fast.nll, t_slow.nll, atol=1e-4)
        assert torch.equal(t_fast.correct, t_slow.correct)


@pytest.mark.parametrize(
    "switched",
    [
        {"reuse_reasoning": False},
        {"batched_gradient": False},
        {"cached_decoding": False},
        {"lookup_decoding": False},
        {"static_cache": True},
    ],
)
@pytest.mark.slow
def test_each_speedup_gives_the_same_run(tiny_run, switched):
    on = tiny_run(steps=4, max_new_tokens=6, batch_size=8)
    off = tiny_run(steps=4, max_new_tokens=6, batch_size=8, **switched)
    assert [r.chosen_ids for r in on.steps] == [r.chosen_ids for r in off.steps]
    assert [[c.token_id for c in r.candidates] for r in on.steps] == [
        [c.token_id for c in r.candidates] for r in off.steps
    ]
    for a, b in zip(on.steps, off.steps, strict=True):
        assert [e.score for e in a.evaluated] == pytest.approx([e.score for e in b.evaluated], abs=1e-4)
    assert on.prompt == off.prompt
    assert on.score == pytest.approx(off.score, abs=1e-4)
    if "static_cache" in switched:  # the static loop ran: it drafts nothing, the default loop does here
        assert off.counts.drafted_tokens == 0 < on.counts.drafted_tokens


class _CountingGenerator:
    """A plugged-in backend: anything with `generate(contexts, max_new_tokens)`."""

    def __init__(self, inner):
        self.inner, self.calls, self.rows = inner, 0, 0

    def generate(self, contexts, max_new_tokens):
        self.calls += 1
        self.rows += len(contexts)
        return self.inner.generate(contexts, max_new_tokens)


def test_plugged_in_generator_is_used_and_gives_the_same_run(tiny_model, smol_tokenizer):
    task = get_task("gen/boolean_expressions")
    config = GreaterConfig(steps=3, max_new_tokens=6, top_k=6, batch_size=8, init_prompt="think step by step.")
    backend = _CountingGenerator(TransformersGenerator(tiny_model, smol_tokenizer, cached=False))
    plugged = optimize(tiny_model, smol_tokenizer, task, config, train=task.load()[:4], generator=backend)
    default = optimize(tiny_model, smol_tokenizer, task, config, train=task.load()[:4])
    assert backend.calls >= 2
    assert backend.rows >= 4 * 2  # reasoning once, then selection rows
    assert [r.chosen_ids for r in plugged.steps] == [r.chosen_ids for r in default.steps]


def test_vllm_backend_helpers():
    from greater.errors import GreaterError
    from greater.inference.backends.vllm import VLLMGenerator, before_stop_token

    assert before_stop_token([5, 6, 2, 7], {2}) == [5, 6]
    assert before_stop_token([5, 6], {2}) == [5, 6]
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(GreaterError, match="greater\\[vllm\\]"):
            VLLMGenerator("some/model", stop_ids={2})


def test_extending_a_prefill_equals_prefilling_the_longer_rows(tiny_model, smol_tokenizer):
    rows = [tuple(smol_tokenizer(t)["input_ids"]) for t in ["a short one", "a somewhat longer context here"]]
    more = [(1183, 3045), (262, 20345)]
    whole = prefill(tiny_model, [r + m for r, m in zip(rows, more, strict=True)], pad_id=0, n_scored=3)
    stats = DecodeStats()
    grown = extend(tiny_model, prefill(tiny_model, rows, pad_id=0, n_scored=1), more, stats)
    assert stats.forward_tokens == 4  # only the appended tokens ran
    assert grown.ids == whole.ids
    assert torch.allclose(grown.last_logits, whole.last_logits, atol=1e-4)
    for a, b in zip(grown.scored, whole.scored, strict=True):
        assert a == pytest.approx(b, abs=1e-4)
        assert len(a) == 3
    # one row per forward, stacked, gives the same as all rows in one forward
    chunked = prefill(tiny_model, [r + m for r, m in zip(rows, more, strict=True)], pad_id=0, n_scored=3, batch_size=1)
    assert torch.equal(chunked.mask, whole.mask)
    assert torch.allclose(chunked.last_logits, whole.last_logits, atol=1e-4)
    assert [pytest.approx(row, abs=1e-4) for row in chunked.scored] == whole.scored
    # the caches hold the same keys at the real (unmasked) positions
    for other in (grown, chunked):
        for layer_a, layer_b in zip(other.cache.layers, whole.cache.layers, strict=True):
            for r in range(len(rows)):
                keys_a = layer_a.keys[r][:, other.mask[r].bool()]
                keys_b = layer_b.keys[r][:, whole.mask[r].bool()]
                assert torch.allclose(keys_a, keys_b, atol=1e-4)


def test_the_next_step_extends_the_kept_prefix(tiny_model, smol_tokenizer, tiny_engine):
    """The gradient pass at position p + 1 reuses the prefix kept at p (one token fed per example)
    and gives what a fresh engine computes from scratch."""
    prompt = tuple(encode_prompt(smol_tokenizer, "think step by step and answer."))
    kept, fresh = _arithmetic_engine(tiny_engine, True), _arithmetic_engine(tiny_engine, True)
    reasonings = [[262, 1183]] * len(kept.examples)
    kept.terms(kept.sequences(prompt, reasonings), position=2, nll_weight=0.2)
    before = kept.counts.forward_tokens
    a = kept.terms(kept.sequences(prompt, reasonings), position=3, nll_weight=0.2)
    assert kept.counts.forward_tokens - before == len(kept.examples)
    b = fresh.terms(fresh.sequences(prompt, reasonings), position=3, nll_weight=0.2)
    assert torch.allclose(a.embed_grad, b.embed_grad, atol=1e-5)
    assert torch.allclose(a.nll, b.nll, atol=1e-5)
    assert torch.allclose(a.ce, b.ce, atol=1e-5)
    assert torch.allclose(a.proposal_logprobs, b.proposal_logprobs, atol=1e-4)
    # the selection at that position shares the same prefix: no head is prefilled again
    candidates = [prompt[:3] + (t,) + prompt[4:] for t in (prompt[3], 1183)]
    before = kept.counts.forward_tokens
    shared = kept.reason_and_score(candidates, 4)
    shared_cost = kept.counts.forward_tokens - before
    alone = _arithmetic_engine(tiny_engine, True)
    own = alone.reason_and_score(candidates, 4)
    heads = sum(len(f.head) + 3 for f in alone.framed)
    assert shared_cost == alone.counts.forward_tokens - heads
    for (r_a, t_a), (r_b, t_b) in zip(shared, own, strict=True):
        assert r_a == r_b
        assert torch.allclose(t_a.nll, t_b.nll, atol=1e-5)
        assert torch.allclose(t_a.ce, t_b.ce, atol=1e-5)


def test_padding_chunks_group_similar_lengths():
    lengths = [113, 46, 46, 103, 46, 46, 46, 46]
    chunks = padding_chunks(lengths, max_rows=8)
    assert sorted(b for c in chunks for b in c) == list(range(8))
    assert [sorted(lengths[b] for b in c) for c in chunks] == [[46] * 6, [103, 113]]
    assert all(len(c) <= 3 for c in padding_chunks(lengths, max_rows=3))
    assert padding_chunks([5, 5, 5], max_rows=8) == [[0, 1, 2]]  # one chunk when nothing would be padded
    assert padding_chunks([], max_rows=4) == []


def test_rows_ending_at_different_steps_score_their_follow_tokens_exactly(tiny_model, smol_tokenizer):
    """Finished rows are set aside and scored together, caches of different lengths stacked: the
    scores equal one plain forward over each whole sequence."""
    contexts = _repeating_rows(smol_tokenizer)
    follow = tuple(smol_tokenizer(" so the answer is 7")["input_ids"])
    heads = prefill(tiny_model, [c[:-2] for c in contexts], pad_id=0)
    rows = [DecodeRequest(i, c[-2:], follow, 3) for i, c in enumerate(contexts)]
    free = decode_shared(tiny_model, heads, rows, max_new_tokens=12, stop_ids=set(), pad_id=0)
    stop = free[0].reasoning[2]  # ends the first row after two tokens, the others later or at the cap
    decoded = decode_shared(tiny_model, heads, rows, max_new_tokens=12, stop_ids={stop}, pad_id=0, draft_slots=16)
    assert len({len(r.reasoning) for r in decoded}) > 1
    for context, row in zip(contexts, decoded, strict=True):
        ids = torch.tensor([list(context) + row.reasoning + list(follow)])
        with torch.no_grad():
            logprobs = torch.log_softmax(tiny_model(ids).logits[0].float(), -1)
        end = ids.shape[1]
        expected = [float(logprobs[t - 1, ids[0, t]]) for t in range(end - 3, end)]
        assert row.follow_logprobs == pytest.approx(expected, abs=1e-4)
        assert row.follow_hits == [bool(logprobs[t - 1].argmax() == ids[0, t]) for t in range(end - 3, end)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kept_prefix_depends_only_on_the_prompt_not_on_the_steps(tiny_model, smol_tokenizer, dtype):
    """A resumed run starts with no kept rows; building them for position 4 at once must give the cache
    the uninterrupted run got by extending them one step at a time, to the bit, in every dtype."""
    model = tiny_model if dtype == torch.float32 else copy.deepcopy(tiny_model).to(dtype)
    task = get_task("gen/boolean_expressions")
    prompt = tuple(encode_prompt(smol_tokenizer, "Think step by step and answer carefully."))
    heads = [tuple(smol_tokenizer(e.question)["input_ids"]) for e in task.load()[:5]]  # of unequal lengths
    assert len({len(h) for h in heads}) > 1

    stepwise = SharedPrefix(model, heads, smol_tokenizer.pad_token_id, DecodeStats(), batch_size=2)
    for n in range(5):
        kept = stepwise(prompt, n)
    at_once = SharedPrefix(model, heads, smol_tokenizer.pad_token_id, DecodeStats(), batch_size=2)(prompt, 4)
    assert kept.ids == at_once.ids == [h + prompt[:4] for h in heads]
    assert torch.equal(kept.mask, at_once.mask)
    assert torch.equal(kept.last_logits, at_once.last_logits)
    assert kept.scored == at_once.scored and all(len(s) == 4 for s in kept.scored)
    for a, b in zip(kept.cache.layers, at_once.cache.layers, strict=True):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
    # a prompt that changes before the kept position starts again from the heads
    other = (prompt[0] + 1,) + prompt[1:]
    again = stepwise(other, 2)
    assert again.ids == [h + other[:2] for h in heads]


def test_the_static_cache_loop_decodes_and_scores_as_the_default_loop(tiny_model, smol_tokenizer):
    """Rows ending at different steps (a stop token, the cap), the batch compacted as they end, follow
    tokens scored on the static cache's rows: the same greedy tokens and scores as the default loop."""
    texts = ["one two three one two three one two", "the cat sat on the mat. the cat", "x y", "a b c d e f g"]
    contexts = [tuple(smol_tokenizer(t)["input_ids"]) for t in texts * 2]
    follow = tuple(smol_tokenizer(" so the answer is 7")["input_ids"])
    heads = prefill(tiny_model, [c[:-2] for c in contexts[:4]], pad_id=0)
    rows = [DecodeRequest(i % 4, c[-2:] + (i,), follow, 3) for i, c in enumerate(contexts)]  # 8 rows, 4 heads
    free = decode_shared(tiny_model, heads, rows, max_new_tokens=14, stop_ids=set(), pad_id=0)
    # the tiny model repeats a token per row, then maybe switches: rows end at once, after 4, after 9, or at the cap
    stops = {free[1].reasoning[0], free[3].reasoning[0], free[4].reasoning[9], free[6].reasoning[4]}
    args = dict(max_new_tokens=14, stop_ids=stops, pad_id=0)
    plain_stats, static_stats = DecodeStats(), DecodeStats()
    plain = decode_shared(tiny_model, heads, rows, stats=plain_stats, **args)
    static = decode_shared(tiny_model, heads, rows, static=True, stats=static_stats, **args)
    lengths = sorted(len(r.reasoning) for r in plain)
    assert len(set(lengths)) >= 3 and sum(n < 14 for n in lengths) >= 4  # so the batch of 8 halved
    assert [r.reasoning for r in static] == [r.reasoning for r in plain]
    for a, b in zip(static, plain, strict=True):
        assert a.tail_logprobs == pytest.approx(b.tail_logprobs, abs=1e-5)
        assert a.follow_logprobs == pytest.approx(b.follow_logprobs, abs=1e-5)
        assert a.follow_hits == b.follow_hits
    assert static_stats.generated_tokens == plain_stats.generated_tokens == sum(lengths)
    assert static_stats.padded_slots > plain_stats.padded_slots  # finished rows wait, masked, until the batch halves
