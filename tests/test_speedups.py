"""Each speed-up switch gives the same result as with it off."""

from __future__ import annotations

import pytest
import torch

from greater.decoding import DecodeStats, decode_shared, lookup_draft, pack_rows
from greater.engine import Engine
from greater.generation import TransformersGenerator
from greater.layout import encode_prompt
from greater.optimizer import GreaterConfig, optimize
from greater.tasks import get_task


def _engine(model, tok, cached: bool, n: int = 5, batch_size: int = 32):
    task = get_task("gen/arithmetic")
    return Engine(
        model, tok, task, task.load()[:n], joiner=". Use", batch_size=batch_size, answer_temperature=0.2,
        cached_decoding=cached,
    )  # fmt: skip


def test_own_decoding_loop_equals_model_generate(tiny_model, smol_tokenizer):
    contexts = [
        tuple(smol_tokenizer(t)["input_ids"]) for t in ["Hello there", "A much longer context here, yes", "x y"]
    ]
    fast = TransformersGenerator(tiny_model, smol_tokenizer, cached=True).generate(contexts, 12)
    slow = TransformersGenerator(tiny_model, smol_tokenizer, cached=False).generate(contexts, 12)
    assert fast == slow and all(len(r) == 12 for r in fast)  # random weights rarely emit the stop token


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
    assert ids.tolist() == [[1, 2, 3], [4, 9, 9]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask = pack_rows([[1, 2, 3], [4]], pad_id=9, left=True)
    assert ids.tolist() == [[1, 2, 3], [9, 9, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    ids, mask = pack_rows([[1, 2], [4, 5]], pad_id=0, offsets=[0, 2])
    assert ids.tolist() == [[1, 2, 0, 0], [0, 0, 4, 5]] and mask.tolist() == [[1, 1, 0, 0], [0, 0, 1, 1]]


def _repeating_rows(tok):
    """Contexts whose greedy continuations on the tiny model repeat (random weights loop)."""
    texts = ["one two three one two three one two", "the cat sat on the mat. the cat", "x y"]
    return [tuple(tok(t)["input_ids"]) for t in texts]


@pytest.mark.parametrize("slots", [6, 16, 64])
def test_lookup_drafting_gives_greedy_output_and_follow_scores(tiny_model, smol_tokenizer, slots):
    contexts = _repeating_rows(smol_tokenizer)
    follow = tuple(smol_tokenizer(" so the answer is 7")["input_ids"])
    rows = [(i, c[-2:], follow) for i, c in enumerate(contexts)]
    heads = [c[:-2] for c in contexts]
    args = dict(max_new_tokens=40, stop_ids={2}, pad_id=0, n_head_scored=2)
    plain_stats, drafted_stats = DecodeStats(), DecodeStats()
    plain, plain_heads = decode_shared(tiny_model, heads, rows, stats=plain_stats, **args)
    drafted, drafted_heads = decode_shared(tiny_model, heads, rows, draft_slots=slots, stats=drafted_stats, **args)
    assert [r.reasoning for r in drafted] == [r.reasoning for r in plain]
    for a, b in zip(drafted, plain, strict=True):
        assert a.follow_logprobs == pytest.approx(b.follow_logprobs, abs=1e-4)
        assert a.tail_logprobs == pytest.approx(b.tail_logprobs, abs=1e-4)
        assert a.follow_hits == b.follow_hits
    assert drafted_heads == plain_heads
    assert drafted_stats.generated_tokens == plain_stats.generated_tokens
    assert drafted_stats.accepted_tokens > 0  # drafts were checked and some taken, so fewer forwards ran
    assert plain_stats.drafted_tokens == 0


@pytest.mark.parametrize("batch_size", [32, 4])
def test_shared_prefix_scoring_equals_full_forward(tiny_model, smol_tokenizer, batch_size):
    tok = smol_tokenizer
    base = tuple(encode_prompt(tok, "think step by step and answer."))
    position = 2
    prompts = [base[:position] + (t,) + base[position + 1 :] for t in (base[position], 1183, 3045)]
    fast = _engine(tiny_model, tok, True, batch_size=batch_size).reason_and_score(prompts, 10)
    slow = _engine(tiny_model, tok, False).reason_and_score(prompts, 10)
    for (r_fast, t_fast), (r_slow, t_slow) in zip(fast, slow, strict=True):
        assert r_fast == r_slow
        assert torch.allclose(t_fast.ce, t_slow.ce, atol=1e-4)
        assert torch.allclose(t_fast.nll, t_slow.nll, atol=1e-4)
        assert torch.equal(t_fast.correct, t_slow.correct)


@pytest.mark.parametrize("switch", ["reuse_reasoning", "batched_gradient", "cached_decoding", "lookup_decoding"])
def test_each_speedup_gives_the_same_run(tiny_run, switch):
    on = tiny_run(steps=4, max_new_tokens=6, batch_size=8)
    off = tiny_run(steps=4, max_new_tokens=6, batch_size=8, **{switch: False})
    assert [r.chosen_ids for r in on.steps] == [r.chosen_ids for r in off.steps]
    assert [[c["token_id"] for c in r.candidates] for r in on.steps] == [
        [c["token_id"] for c in r.candidates] for r in off.steps
    ]
    for a, b in zip(on.steps, off.steps, strict=True):
        assert [e["score"] for e in a.evaluated] == pytest.approx([e["score"] for e in b.evaluated], abs=1e-4)
    assert on.prompt == off.prompt and on.score == pytest.approx(off.score, abs=1e-4)


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
    assert backend.calls >= 2 and backend.rows >= 4 * 2  # reasoning once, then selection rows
    assert [r.chosen_ids for r in plugged.steps] == [r.chosen_ids for r in default.steps]


def test_vllm_backend_helpers():
    from greater.backends.vllm import VLLMGenerator, cut_at_stop
    from greater.errors import GreaterError

    assert cut_at_stop([5, 6, 2, 7], {2}) == [5, 6]
    assert cut_at_stop([5, 6], {2}) == [5, 6]
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(GreaterError, match="greater\\[vllm\\]"):
            VLLMGenerator("some/model", stop_ids={2})
