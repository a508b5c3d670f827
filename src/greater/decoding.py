"""Greedy decoding with a KV cache shared across rows that start with the same tokens, followed by
teacher-forced scoring of given tokens on the same cache.

Selection in GReaTer generates reasoning for every (candidate, example): all candidates of an example
share [chat prefix, question, prompt before the position], so that "head" is run once per example
(`prefill`, or `extend` of the previous step's) and its cache copied to the candidate rows; only the
"tail" (the rest of the prompt and the assistant header) is prefilled per row. When a row's reasoning
ends it leaves the batch, its cache set aside; the set-aside rows' "follow" tokens (extractor +
answer) are then scored together in one teacher-forced forward on their caches, so answers are
scored by extending the generation's cache instead of re-running the sequence, and no slot is spent
on a finished row.

Decoding pays mostly per forward, not per token (on 2 CPU cores a forward of one token costs about
65 ms for the 135M model, each further token in it about 3 ms: matrix products of a few rows run at a
small fraction of the large-product rate, see bench/README.md), and most of the loop runs for the few
longest reasonings; prompt-lookup drafting (`draft_slots`) lets those rows produce several greedy tokens per
forward when their text repeats earlier text."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import torch
import torch.nn.functional as F
from transformers import DynamicCache, PreTrainedModel

Ids = tuple[int, ...]
T = TypeVar("T")
R = TypeVar("R")
MAX_DRAFT = 8  # guessed tokens per row and step at most
DRAFT_SLOTS = 16  # default token slots per decoding step that drafting may fill


@dataclass
class DecodedRow:
    """What one row produced.

    reasoning: generated tokens (stop token excluded).
    tail_logprobs: log p(tail[k] | head, tail[:k]) for every tail token (temperature 1).
    follow_logprobs: log p(follow[k] | ..., reasoning, follow[:k]) at temperature `follow_temperature`,
        for the row's last `scored` follow tokens only (logits are computed nowhere else).
    follow_hits: whether follow[k] is the argmax there.
    """

    reasoning: list[int] = field(default_factory=list)
    tail_logprobs: list[float] = field(default_factory=list)
    follow_logprobs: list[float] = field(default_factory=list)
    follow_hits: list[bool] = field(default_factory=list)


@dataclass
class DecodeStats:
    """Work counters, shared by generation and the teacher-forced passes (for the benchmark)."""

    forward_tokens: int = 0  # real tokens run through the model without gradient
    backward_tokens: int = 0  # real tokens run forward + backward
    padded_slots: int = 0  # padding positions run through the model
    generated_tokens: int = 0
    drafted_tokens: int = 0  # tokens guessed by prompt lookup and checked by the model
    accepted_tokens: int = 0  # guessed tokens that matched greedy decoding (also counted as generated)
    sequences: int = 0  # sequences generated (each a model call: a reasoning, an answer, a meta-prompt reply)
    scored_sequences: int = 0  # sequences run teacher-forced for loss terms (GReaTer's gradient pass)

    def count_forward(self, mask: torch.Tensor) -> None:
        """Count a no-gradient forward over a batch with attention `mask` (B, W) of its new tokens."""
        real = int(mask.sum())
        self.forward_tokens += real
        self.padded_slots += mask.numel() - real


def pack_rows(
    rows: Sequence[Sequence[int]],
    pad_id: int,
    device: torch.device | str = "cpu",
    *,
    left: bool = False,
    offsets: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, W) token ids and attention mask of token lists in one padded batch.

    Row b starts at column `offsets[b]` (default 0: right padding); `left=True` aligns the rows' ends.
    """
    if left:
        end = max(len(r) for r in rows)
        offsets = [end - len(r) for r in rows]
    offsets = offsets or [0] * len(rows)
    width = max(len(r) + k for r, k in zip(rows, offsets, strict=True))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, (r, k) in enumerate(zip(rows, offsets, strict=True)):
        ids[b, k : k + len(r)] = torch.tensor(r, dtype=torch.long)
        mask[b, k : k + len(r)] = 1
    return ids.to(device), mask.to(device)


def padding_chunks(lengths: Sequence[int], max_rows: int, row_overhead: int = 32) -> list[list[int]]:
    """Indices of rows with `lengths`, shortest first, cut into consecutive chunks of at most
    `max_rows` so that padded slots (rows × longest row, summed over chunks) plus `row_overhead`
    slots per chunk (what one more pass over the layers costs, in tokens' worth) is smallest.

    A pass over [46, 46, 46, 46, 46, 46, 103, 113] tokens in chunks of 4 pads 133 slots in input order
    and 67 sorted; allowed 8 rows, this gives [46 × 6] and [103, 113]: 10 padded slots, 2 chunks.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    sizes = [lengths[i] for i in order]
    best = [0] + [0] * len(order)  # best[j]: cost of the first j rows
    cut = [0] * (len(order) + 1)
    for j in range(1, len(order) + 1):
        best[j], cut[j] = min(
            (best[i] + row_overhead + (j - i) * sizes[j - 1], i) for i in range(max(0, j - max_rows), j)
        )
    chunks, j = [], len(order)
    while j > 0:
        chunks.append(order[cut[j] : j])
        j = cut[j]
    return chunks[::-1]


def run_chunked(items: Sequence[T], size: int, fn: Callable[[list[T]], list[R]]) -> list[R]:
    """`fn` over consecutive chunks of at most `size` items, concatenated; the chunk size halves on
    out-of-memory instead of crashing."""
    out: list[R] = []
    start = 0
    while start < len(items):
        chunk = list(items[start : start + size])
        try:
            out.extend(fn(chunk))
        except torch.OutOfMemoryError:
            if size == 1:
                raise
            size = max(1, size // 2)
            logging.getLogger(__name__).warning("out of memory; batch size now %d", size)
            continue
        start += len(chunk)
    return out


def cache_kwarg(model: PreTrainedModel) -> str:
    """The forward argument that takes the KV cache: `cache` in newer transformers, else `past_key_values`."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def output_logits(model: PreTrainedModel, hidden: torch.Tensor) -> torch.Tensor:
    """(..., V) float32 logits for hidden states (..., D), as the model's output head computes them.

    Computed as W·hᵀ: for a few rows, CPU BLAS runs this 2-3x faster than `F.linear` (h·Wᵀ), which
    repacks the whole vocabulary-sized weight on every call. With bfloat16/float16 weights the
    product still comes out in float32 (`_mm_float32`), not rounded to the weights' dtype: a bfloat16
    logit of 20 is only known to ±0.06, ±0.3 after the answer temperature of 0.2, which the loss,
    the proposal log-probs and the selection scores would inherit.
    """
    head = model.get_output_embeddings()
    weight = head.weight
    flat = hidden.reshape(-1, hidden.shape[-1]).to(weight.device, weight.dtype)  # a device map may split them
    logits = torch.mm(weight, flat.T).T if weight.dtype == torch.float32 else _mm_float32(weight, flat)
    if getattr(head, "bias", None) is not None:
        logits = logits + head.bias.float()
    softcap = getattr(model.config, "final_logit_softcapping", None)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits.reshape(*hidden.shape[:-1], logits.shape[-1])


def _mm_float32(weight: torch.Tensor, rows: torch.Tensor, slice_rows: int = 8192) -> torch.Tensor:
    """(N, V) float32 product rows · weightᵀ of low-precision (V, D) `weight` and (N, D) `rows`.

    On CUDA the product accumulates in float32 and is written in float32 (`torch.mm(..., out_dtype=)`);
    elsewhere, where that is missing, or when the product must be differentiated (`out_dtype` has no
    derivative), the weight is upcast `slice_rows` vocabulary rows at a time,
    so no float32 copy of the whole head is ever held.
    """
    if weight.is_cuda and not (torch.is_grad_enabled() and rows.requires_grad):  # out_dtype has no backward
        try:
            return torch.mm(weight, rows.T, out_dtype=torch.float32).T
        except (RuntimeError, TypeError):
            pass
    wide = rows.float().T
    return torch.cat([torch.mm(part.float(), wide) for part in weight.split(slice_rows)]).T


def _forward(model: PreTrainedModel, kw: str, cache: DynamicCache, keep: int | None = None, **inputs) -> torch.Tensor:
    """(B, W, V) logits of a cached forward (the last `keep` positions only when given)."""
    hidden = model.base_model(**inputs, **{kw: cache}, use_cache=True)[0]
    return output_logits(model, hidden if keep is None else hidden[:, -keep:])


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """(..., K) log-probs of `tokens` (..., K) under `logits` (..., K, V) divided by `temperature`."""
    tokens = tokens.to(logits.device)
    return torch.log_softmax(logits.float() / temperature, -1).gather(-1, tokens[..., None])[..., 0]


@dataclass
class Prefilled:
    """Rows run through the model once (no gradient), left-padded so that they end together.

    ids: each row's tokens.
    cache: KV cache of the (B, W) batch; mask: (B, W) its attention mask.
    last_logits: (B, V) logits predicting each row's next token.
    scored: per row, log p(token | earlier) of its last `n_scored` tokens (temperature 1).
    """

    ids: list[Ids]
    cache: DynamicCache
    mask: torch.Tensor
    last_logits: torch.Tensor
    scored: list[list[float]]

    def rows(self, idx: Sequence[int]) -> Prefilled:
        """Rows `idx` (repeats allowed) with their own copy of the cache."""
        index = torch.tensor(list(idx), device=self.mask.device)
        return Prefilled(
            ids=[self.ids[i] for i in idx],
            cache=_cache_rows(self.cache, index),
            mask=self.mask[index],
            last_logits=self.last_logits[index.to(self.last_logits.device)],
            scored=[self.scored[i] for i in idx],
        )


@torch.no_grad()
def prefill(
    model: PreTrainedModel,
    rows: list[Ids],
    pad_id: int,
    n_scored: int = 0,
    stats: DecodeStats | None = None,
    batch_size: int | None = None,
) -> Prefilled:
    """Run `rows` through the model once, `batch_size` rows per forward; logits only where needed
    (the last `n_scored` + 1 positions)."""
    device = model.device
    width = max(len(r) for r in rows)
    kw = cache_kwarg(model.base_model)

    def run(chunk: list[Ids]) -> list[tuple[DynamicCache, torch.Tensor, torch.Tensor, list[list[float]]]]:
        ids, mask = pack_rows(chunk, pad_id, device, offsets=[width - len(r) for r in chunk])
        cache = DynamicCache()
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = _forward(model, kw, cache, n_scored + 1, input_ids=ids, attention_mask=mask, position_ids=positions)
        if stats is not None:
            stats.count_forward(mask)
        scored = [[] for _ in chunk]
        if n_scored:
            scored = token_logprobs(logits[:, :-1], ids[:, width - n_scored :]).tolist()
        return [(cache, mask, logits[:, -1], scored)]

    parts = run_chunked(rows, batch_size or len(rows), run)
    return Prefilled(
        ids=[tuple(r) for r in rows],
        cache=stack_caches([cache for cache, *_ in parts], width),
        mask=torch.cat([mask for _, mask, _, _ in parts]),
        last_logits=torch.cat([last for _, _, last, _ in parts]),
        scored=[row for *_, scored in parts for row in scored],
    )


def stack_caches(caches: list[DynamicCache], width: int) -> DynamicCache:
    """One cache holding the rows of `caches` in order, each padded on the right to `width` positions
    (padding is zeros; its attention mask must be 0 there)."""
    if len(caches) == 1 and caches[0].layers[0].keys.shape[2] == width:
        return caches[0]
    stacked = DynamicCache()
    for layer in range(len(caches[0].layers)):
        entries = [cache.layers[layer] for cache in caches]
        pads = [(0, 0, 0, width - entry.keys.shape[2]) for entry in entries]
        keys = torch.cat([F.pad(entry.keys, pad) for entry, pad in zip(entries, pads, strict=True)])
        values = torch.cat([F.pad(entry.values, pad) for entry, pad in zip(entries, pads, strict=True)])
        stacked.update(keys, values, layer)
    return stacked


@torch.no_grad()
def extend(model: PreTrainedModel, done: Prefilled, tokens: list[Ids], stats: DecodeStats | None = None) -> Prefilled:
    """`done` with the same number of `tokens` appended to every row (its cache is extended in place),
    the new tokens scored as `prefill` scores its last ones: one small forward instead of a prefill."""
    width = len(tokens[0])
    if not width:
        return done
    device = done.mask.device
    ids = torch.tensor([list(t) for t in tokens], device=device)
    block = torch.ones_like(ids)
    mask = torch.cat([done.mask, block], 1)
    logits = _forward(  # (B, width, V)
        model,
        cache_kwarg(model.base_model),
        done.cache,
        input_ids=ids,
        attention_mask=mask,
        position_ids=done.mask.sum(-1, keepdim=True) + torch.arange(width, device=device)[None],
    )
    if stats is not None:
        stats.count_forward(block)
    predicting = torch.cat([done.last_logits[:, None], logits[:, :-1]], 1)  # (B, width, V)
    new_scores = token_logprobs(predicting, ids).tolist()
    return Prefilled(
        ids=[old + tuple(t) for old, t in zip(done.ids, tokens, strict=True)],
        cache=done.cache,
        mask=mask,
        last_logits=logits[:, -1],
        scored=[old + new for old, new in zip(done.scored, new_scores, strict=True)],
    )


@torch.no_grad()
def decode_shared(
    model: PreTrainedModel,
    heads: Prefilled,
    rows: list[tuple[int, Ids, Ids, int]],
    *,
    max_new_tokens: int,
    stop_ids: set[int],
    pad_id: int,
    follow_temperature: float = 1.0,
    draft_slots: int = 0,
    stats: DecodeStats | None = None,
) -> list[DecodedRow]:
    """Greedy reasoning + teacher-forced follow tokens for `rows` = [(head index, tail, follow, scored)]:
    each row continues a copy of head `heads[head index]` (left as it is) with its tail, then
    generates; the last `scored` follow tokens of each row are scored.

    `draft_slots` > 0 turns on prompt-lookup drafting: while few rows are generating, each row feeds
    its next token plus guessed tokens and keeps those that match the model's own argmax, so several
    tokens can come out of one forward; at most `draft_slots` slots are fed per step. Decoding one
    row costs about as much as decoding a few (the per-forward cost dominates), so this shortens the
    tail of the loop, where only the longest reasonings are still running.
    """
    stats = stats if stats is not None else DecodeStats()
    device = model.device
    results = [DecodedRow() for _ in rows]
    kw = cache_kwarg(model.base_model)

    # 1. copy the head cache to the rows, prefill the tails (left-padded: holes in the mask are fine)
    start = heads.rows([row[0] for row in rows])
    cache, mask = start.cache, start.mask
    positions = mask.sum(-1)  # (R,) next position of each row
    tail_ids, tail_mask = pack_rows([row[1] for row in rows], pad_id, device, left=True)
    tail_width = tail_ids.shape[1]
    mask = torch.cat([mask, tail_mask], 1)
    tail_pos = positions[:, None] + (tail_mask.cumsum(-1) - 1).clamp(min=0)
    tail_logits = _forward(model, kw, cache, input_ids=tail_ids, attention_mask=mask, position_ids=tail_pos)
    stats.count_forward(tail_mask)
    positions = positions + tail_mask.sum(-1)
    for r, (_, tail, *_) in enumerate(rows):
        lp = token_logprobs(start.last_logits[r], torch.tensor(tail[0]))[None]
        rest = token_logprobs(tail_logits[r, tail_width - len(tail) : -1], tail_ids[r, tail_width - len(tail) + 1 :])
        results[r].tail_logprobs = torch.cat([lp, rest]).tolist()
    logits = tail_logits[:, -1]  # (R, V) predicts each row's first reasoning token

    # 2. decode; a row whose reasoning is over leaves the batch, its cache set aside until enough
    # finished rows have gathered to score their follow tokens in one forward
    contexts = [list(heads.ids[h]) + list(tail) for h, tail, *_ in rows]  # where drafts are looked up
    active = list(range(len(rows)))
    finished: list[_Finished] = []
    while active:
        draft_len = min(MAX_DRAFT, draft_slots // len(active) - 1)
        feed: list[list[int]] = []  # what each row feeds next: [token, *draft]; [] once its reasoning is over
        over: list[int] = []  # slots whose logits predict the first follow token
        for slot, r in enumerate(active):
            reasoning = results[r].reasoning
            token = int(logits[slot].argmax())
            if len(reasoning) >= max_new_tokens or token in stop_ids:
                over.append(slot)
                feed.append([])
                continue
            reasoning.append(token)
            contexts[r].append(token)
            stats.generated_tokens += 1
            if len(reasoning) >= max_new_tokens and not rows[r][3]:
                over.append(slot)  # nothing follows that needs this token fed
                feed.append([])
                continue
            room = min(draft_len, max_new_tokens - len(reasoning))
            feed.append([token, *lookup_draft(contexts[r], room, stop_ids)])
        if over:
            finished += _finish(cache, mask, positions, logits, over, active, rows, results, follow_temperature)
            keep = [slot for slot, tokens in enumerate(feed) if tokens]
            if not keep:
                break
            keep_idx = torch.tensor(keep, device=device)
            cache.reorder_cache(keep_idx)
            mask, positions = mask[keep_idx], positions[keep_idx]
            active = [active[slot] for slot in keep]
            feed = [feed[slot] for slot in keep]
            # set-aside caches stay at most as large as the batch's
            if sum(len(f.rows) for f in finished) >= len(active):
                _score_finished(model, kw, finished, rows, results, follow_temperature, stats)
                finished = []
        ids, block = pack_rows(feed, pad_id, device)
        width = ids.shape[1]
        mask = torch.cat([mask, block], 1)
        step_logits = _forward(  # (R, W, V)
            model,
            kw,
            cache,
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions[:, None] + torch.arange(width, device=device)[None],
        )
        stats.count_forward(block)
        # check the drafts: keep each row's longest run that greedy decoding would have produced;
        # the slots of rejected guesses stay in the cache as holes in the mask
        predicted = step_logits.argmax(-1).tolist()  # (R, W)
        accepted = []
        for slot, (r, tokens) in enumerate(zip(active, feed, strict=True)):
            n = 0
            while n + 1 < len(tokens) and predicted[slot][n] == tokens[n + 1]:
                n += 1
            results[r].reasoning.extend(tokens[1 : n + 1])
            contexts[r].extend(tokens[1 : n + 1])
            stats.generated_tokens += n
            stats.accepted_tokens += n
            stats.drafted_tokens += len(tokens) - 1
            mask[slot, mask.shape[1] - width + n + 1 :] = 0
            accepted.append(n)
        taken = torch.tensor(accepted)
        positions = positions + 1 + taken.to(device)
        picked = torch.arange(len(active)).to(step_logits.device), taken.to(step_logits.device)
        logits = step_logits[picked]  # (R, V) predicts each next token
    if finished:
        _score_finished(model, kw, finished, rows, results, follow_temperature, stats)
    return results


def lookup_draft(context: list[int], size: int, stop_ids: set[int], longest: int = 3) -> list[int]:
    """Up to `size` tokens guessed to come next: what followed the latest earlier occurrence of the
    context's last n tokens (n = `longest` down to 1). Prompt-lookup decoding: reasoning often copies
    the question or repeats itself, so such guesses are often what greedy decoding would produce.
    """
    if size <= 0:
        return []
    for n in range(min(longest, len(context) - 1), 0, -1):
        pattern = context[-n:]
        for start in range(len(context) - n - 1, -1, -1):
            if context[start : start + n] == pattern:
                draft = context[start + n : start + n + size]
                for i, token in enumerate(draft):
                    if token in stop_ids:
                        return draft[:i]
                return draft
    return []


@dataclass
class _Finished:
    """Rows whose reasoning is over, set aside with a copy of their cache until their follow tokens
    after the first are scored. mask: (R, W); positions: (R,) next position of each row."""

    rows: list[int]
    cache: DynamicCache
    mask: torch.Tensor
    positions: torch.Tensor


def _record(results: list[DecodedRow], r: int, row_logits: torch.Tensor, targets: Ids, temperature: float) -> None:
    """Score `targets` (K,) under `row_logits` (K, V) for row `r`."""
    target = torch.tensor(targets, device=row_logits.device)
    results[r].follow_logprobs.extend(token_logprobs(row_logits, target, temperature).tolist())
    results[r].follow_hits.extend((row_logits.argmax(-1) == target).tolist())


def _finish(cache, mask, positions, logits, slots, active, rows, results, temperature) -> list[_Finished]:
    """Rows at `slots` are over: `logits[slot]` predicts their first follow token, scored now; rows
    with more scored follow tokens are returned, set aside."""
    later = []
    for slot in slots:
        _, _, follow, scored = rows[active[slot]]
        if scored >= len(follow) > 0:
            _record(results, active[slot], logits[slot][None], follow[:1], temperature)
        if len(follow) > 1 and scored:
            later.append(slot)
    if not later:
        return []
    idx = torch.tensor(later, device=mask.device)
    return [_Finished([active[slot] for slot in later], _cache_rows(cache, idx), mask[idx], positions[idx])]


def _score_finished(model, kw, finished: list[_Finished], rows, results, temperature, stats) -> None:
    """Score the set-aside rows' follow tokens after the first in one teacher-forced forward, their
    caches stacked (shorter ones padded on the right, masked), with logits only where a scored token
    is predicted (the vocabulary is large)."""
    device = finished[0].mask.device
    width = max(f.mask.shape[1] for f in finished)
    cache = stack_caches([f.cache for f in finished], width)
    mask = torch.cat([F.pad(f.mask, (0, width - f.mask.shape[1])) for f in finished])
    positions = torch.cat([f.positions for f in finished])
    row_ids = [r for f in finished for r in f.rows]
    # feeding follow[:-1] predicts follow[1:]; the scored ones are the last `scored`
    ids, new_mask = pack_rows([rows[r][2][:-1] for r in row_ids], 0, device)
    hidden = model.base_model(
        input_ids=ids,
        attention_mask=torch.cat([mask, new_mask], 1),
        position_ids=positions[:, None] + torch.arange(ids.shape[1], device=device)[None],
        **{kw: cache},
        use_cache=True,
    )[0]
    stats.count_forward(new_mask)
    spans = []  # (first predicting column, follow tokens predicted from there on) per row
    for r in row_ids:
        _, _, follow, scored = rows[r]
        first = max(1, len(follow) - scored)
        spans.append((first - 1, follow[first:]))
    picked = torch.cat([hidden[i, start : start + len(targets)] for i, (start, targets) in enumerate(spans)])
    row_logits = output_logits(model, picked).split([len(targets) for _, targets in spans])
    for r, (_, targets), part in zip(row_ids, spans, row_logits, strict=True):
        _record(results, r, part, targets, temperature)


def _cache_rows(cache: DynamicCache, idx: torch.Tensor) -> DynamicCache:
    """A new cache holding rows `idx` of `cache` (which is left as it is)."""
    rows = DynamicCache()
    for layer, entry in enumerate(cache.layers):
        at = idx.to(entry.keys.device)  # with a device map, each layer's cache is on its layer's GPU
        rows.update(entry.keys.index_select(0, at), entry.values.index_select(0, at), layer)
    return rows
