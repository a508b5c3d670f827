"""Greedy decoding with a KV cache shared across rows that start with the same tokens, followed by
teacher-forced scoring of given tokens on the same cache.

Selection in GReaTer generates reasoning for every (candidate, example): all candidates of an example
share [chat prefix, question, prompt before the position], so that "head" is prefilled once per
example and its cache copied to the candidate rows; only the "tail" (the rest of the prompt and the
assistant header) is prefilled per row. When a row's reasoning ends, it leaves the batch and its
"follow" tokens (extractor + answer) are scored in one teacher-forced forward on its cache, so
answers are scored by extending the generation's cache instead of re-running the sequence, and no
slot is spent on a finished row.

Decoding is bound by reading the weights (one row costs about as much as a few), and most of the
loop runs for the few longest reasonings; prompt-lookup drafting (`draft_slots`) lets those rows
produce several greedy tokens per forward when their text repeats earlier text.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache, PreTrainedModel

Ids = tuple[int, ...]
MAX_DRAFT = 8  # guessed tokens per row and step at most
DRAFT_SLOTS = 16  # default token slots per decoding step that drafting may fill


@dataclass
class DecodedRow:
    """What one row produced.

    reasoning: generated tokens (stop token excluded).
    tail_logprobs: log p(tail[k] | head, tail[:k]) for every tail token (temperature 1).
    follow_logprobs: log p(follow[k] | ..., reasoning, follow[:k]) at temperature `follow_temperature`.
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


def cache_kwarg(model: PreTrainedModel) -> str:
    """The forward argument that takes the KV cache: `cache` in newer transformers, else `past_key_values`."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def output_logits(model: PreTrainedModel, hidden: torch.Tensor) -> torch.Tensor:
    """(..., V) logits for hidden states (..., D), as the model's output head computes them.

    Computed as W·hᵀ: for a few rows, CPU BLAS runs this 2-3x faster than `F.linear` (h·Wᵀ), which
    repacks the whole vocabulary-sized weight on every call.
    """
    head = model.get_output_embeddings()
    flat = hidden.reshape(-1, hidden.shape[-1])
    logits = torch.mm(head.weight, flat.T).T
    if getattr(head, "bias", None) is not None:
        logits = logits + head.bias
    softcap = getattr(model.config, "final_logit_softcapping", None)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits.reshape(*hidden.shape[:-1], logits.shape[-1])


def _forward(model: PreTrainedModel, kw: str, cache: DynamicCache, keep: int | None = None, **inputs) -> torch.Tensor:
    """(B, W, V) logits of a cached forward (the last `keep` positions only when given)."""
    hidden = model.base_model(**inputs, **{kw: cache}, use_cache=True)[0]
    return output_logits(model, hidden if keep is None else hidden[:, -keep:])


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """(..., K) log-probs of `tokens` (..., K) under `logits` (..., K, V) divided by `temperature`."""
    return torch.log_softmax(logits.float() / temperature, -1).gather(-1, tokens[..., None])[..., 0]


@torch.no_grad()
def decode_shared(
    model: PreTrainedModel,
    heads: list[Ids],
    rows: list[tuple[int, Ids, Ids]],
    *,
    max_new_tokens: int,
    stop_ids: set[int],
    pad_id: int,
    n_head_scored: int = 0,
    follow_temperature: float = 1.0,
    draft_slots: int = 0,
    stats: DecodeStats | None = None,
) -> tuple[list[DecodedRow], list[list[float]]]:
    """Greedy reasoning + teacher-forced follow tokens for `rows` = [(head index, tail, follow)].

    Returns the rows' results and, per head, log p(head token | earlier) for its last
    `n_head_scored` tokens (the head's first token is never scored).

    `draft_slots` > 0 turns on prompt-lookup drafting: while few rows are generating, each row feeds
    its next token plus guessed tokens and keeps those that match the model's own argmax, so several
    tokens can come out of one forward; at most `draft_slots` slots are fed per step. Decoding one
    row costs about as much as decoding a few (reading the weights dominates), so this shortens the
    tail of the loop, where only the longest reasonings are still running.
    """
    stats = stats if stats is not None else DecodeStats()
    device = model.device
    results = [DecodedRow() for _ in rows]

    # 1. prefill the heads, left-padded so they end together
    ids, mask = pack_rows(heads, pad_id, device, left=True)
    cache = DynamicCache()
    kw = cache_kwarg(model.base_model)
    keep = n_head_scored + 1  # logits predicting the last n_head_scored head tokens and the first tail token
    head_logits = _forward(  # (B, keep, V)
        model, kw, cache, keep, input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)
    )
    stats.count_forward(mask)
    head_scores = []
    if n_head_scored:
        scored = token_logprobs(head_logits[:, :-1], ids[:, -n_head_scored:])
        head_scores = [scored[r].tolist() for r in range(len(heads))]
    last_head_logits = head_logits[:, -1]  # (B, V): predicts each row's first tail token

    # 2. copy the head cache to the rows, prefill the tails (left-padded: holes in the mask are fine)
    head_of = torch.tensor([h for h, _, _ in rows], device=device)
    cache.reorder_cache(head_of)
    mask = mask[head_of]
    positions = mask.sum(-1)  # (R,) next position of each row
    tail_ids, tail_mask = pack_rows([tail for _, tail, _ in rows], pad_id, device, left=True)
    tail_width = tail_ids.shape[1]
    mask = torch.cat([mask, tail_mask], 1)
    tail_pos = positions[:, None] + (tail_mask.cumsum(-1) - 1).clamp(min=0)
    tail_logits = _forward(model, kw, cache, input_ids=tail_ids, attention_mask=mask, position_ids=tail_pos)
    stats.count_forward(tail_mask)
    positions = positions + tail_mask.sum(-1)
    for r, (h, tail, _) in enumerate(rows):
        lp = torch.log_softmax(last_head_logits[h].float(), -1)[tail[0]][None]
        rest = token_logprobs(tail_logits[r, tail_width - len(tail) : -1], tail_ids[r, tail_width - len(tail) + 1 :])
        results[r].tail_logprobs = torch.cat([lp, rest]).tolist()
    logits = tail_logits[:, -1]  # (R, V) predicts each row's first reasoning token

    # 3. decode; a row whose reasoning is over leaves the batch and has its follow tokens scored at once
    contexts = [list(heads[h]) + list(tail) for h, tail, _ in rows]  # where drafts are looked up
    active = list(range(len(rows)))
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
            if len(reasoning) >= max_new_tokens and not rows[r][2]:
                over.append(slot)  # nothing follows that needs this token fed
                feed.append([])
                continue
            room = min(draft_len, max_new_tokens - len(reasoning))
            feed.append([token, *lookup_draft(contexts[r], room, stop_ids)])
        if over:
            _score_follow(
                model, kw, cache, mask, positions, logits, over, active, rows, results, follow_temperature, stats
            )
            keep = [slot for slot, tokens in enumerate(feed) if tokens]
            if not keep:
                break
            keep_idx = torch.tensor(keep, device=device)
            cache.reorder_cache(keep_idx)
            mask, positions = mask[keep_idx], positions[keep_idx]
            active = [active[slot] for slot in keep]
            feed = [feed[slot] for slot in keep]
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
        taken = torch.tensor(accepted, device=device)
        positions = positions + 1 + taken
        logits = step_logits[torch.arange(len(active), device=device), taken]  # (R, V) predicts each next token
    return results, head_scores


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


def _score_follow(model, kw, cache, mask, positions, logits, slots, active, rows, results, temperature, stats) -> None:
    """Score the follow tokens of the rows at `slots`, whose reasoning is over: `logits[slot]` predicts
    the first one; the rest come from one teacher-forced forward on a copy of those rows' cache."""

    def record(r: int, row_logits: torch.Tensor, targets: torch.Tensor) -> None:
        """row_logits (K, V) predict targets (K,)."""
        results[r].follow_logprobs.extend(token_logprobs(row_logits, targets, temperature).tolist())
        results[r].follow_hits.extend((row_logits.argmax(-1) == targets).tolist())

    device = mask.device
    rest = []  # slots with follow tokens left after the first
    for slot in slots:
        follow = rows[active[slot]][2]
        if follow:
            record(active[slot], logits[slot][None], torch.tensor(follow[:1], device=device))
        if len(follow) > 1:
            rest.append(slot)
    if not rest:
        return
    # feeding follow[:-1] predicts follow[1:]
    ids, new_mask = pack_rows([rows[active[slot]][2][:-1] for slot in rest], 0, device)
    width = ids.shape[1]
    idx = torch.tensor(rest, device=device)
    logits = _forward(
        model,
        kw,
        _cache_rows(cache, idx),
        input_ids=ids,
        attention_mask=torch.cat([mask[idx], new_mask], 1),
        position_ids=positions[idx, None] + torch.arange(width, device=device)[None],
    )
    stats.count_forward(new_mask)
    for i, slot in enumerate(rest):
        follow = rows[active[slot]][2]
        record(active[slot], logits[i, : len(follow) - 1], torch.tensor(follow[1:], device=device))


def _cache_rows(cache: DynamicCache, idx: torch.Tensor) -> DynamicCache:
    """A new cache holding rows `idx` of `cache` (which is left as it is)."""
    rows = DynamicCache()
    for layer, entry in enumerate(cache.layers):
        rows.update(entry.keys.index_select(0, idx), entry.values.index_select(0, idx), layer)
    return rows
