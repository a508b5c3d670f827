"""Greedy decoding with a KV cache shared across rows that start with the same tokens, followed by
teacher-forced scoring of given tokens on the same cache.

Selection in GReaTer generates reasoning for every (candidate, example): all candidates of an example
share [chat prefix, question, prompt before the position], so that "head" is prefilled once per
example and its cache copied to the candidate rows; only the "tail" (the rest of the prompt and the
assistant header) is prefilled per row. When a row's reasoning ends, the same loop feeds its "follow"
tokens (extractor + answer) and records their log-probabilities, so answers are scored by extending
the generation's cache instead of re-running the sequence. Rows leave the batch once done, so no
slot is spent on padding after a row has finished.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache, PreTrainedModel

Ids = tuple[int, ...]


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


def _cache_kwarg(model: PreTrainedModel) -> str:
    """The forward argument that takes the KV cache: `cache` in newer transformers, else `past_key_values`."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def head_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """(R, K) log-probs of `tokens` (R, K) under `logits` (R, K, V) at temperature 1."""
    return torch.log_softmax(logits.float(), -1).gather(-1, tokens[..., None])[..., 0]


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
    stats: DecodeStats | None = None,
) -> tuple[list[DecodedRow], list[list[float]]]:
    """Greedy reasoning + teacher-forced follow tokens for `rows` = [(head index, tail, follow)].

    Returns the rows' results and, per head, log p(head token | earlier) for its last
    `n_head_scored` tokens (the head's first token is never scored).
    """
    stats = stats if stats is not None else DecodeStats()
    device = model.device
    results = [DecodedRow() for _ in rows]

    # 1. prefill the heads, left-padded so they end together
    width = max(len(h) for h in heads)
    ids = torch.full((len(heads), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(heads), width), dtype=torch.long)
    for r, h in enumerate(heads):
        ids[r, width - len(h) :] = torch.tensor(h)
        mask[r, width - len(h) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    cache = DynamicCache()
    kw = _cache_kwarg(model)
    keep = n_head_scored + 1  # logits predicting the last n_head_scored head tokens and the first tail token
    out = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
        **{kw: cache},
        use_cache=True,
        logits_to_keep=keep,
    )
    stats.forward_tokens += int(mask.sum())
    stats.padded_slots += int(mask.numel() - mask.sum())
    head_logits = out.logits[:, -keep:]  # (B, keep, V)
    head_scores = []
    if n_head_scored:
        scored = head_logprobs(head_logits[:, :-1], ids[:, -n_head_scored:])
        head_scores = [scored[r].tolist() for r in range(len(heads))]
    last_head_logits = head_logits[:, -1]  # (B, V): predicts each row's first tail token

    # 2. copy the head cache to the rows, prefill the tails (left-padded: holes in the mask are fine)
    head_of = torch.tensor([h for h, _, _ in rows], device=device)
    cache.reorder_cache(head_of)
    mask = mask[head_of]
    positions = mask.sum(-1)  # (R,) next position of each row
    tail_width = max(len(t) for _, t, _ in rows)
    tail_ids = torch.full((len(rows), tail_width), pad_id, dtype=torch.long, device=device)
    tail_mask = torch.zeros((len(rows), tail_width), dtype=torch.long, device=device)
    for r, (_, tail, _) in enumerate(rows):
        tail_ids[r, tail_width - len(tail) :] = torch.tensor(tail, device=device)
        tail_mask[r, tail_width - len(tail) :] = 1
    mask = torch.cat([mask, tail_mask], 1)
    tail_pos = positions[:, None] + (tail_mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=tail_ids, attention_mask=mask, position_ids=tail_pos, **{kw: cache}, use_cache=True)
    stats.forward_tokens += int(tail_mask.sum())
    stats.padded_slots += int(tail_mask.numel() - tail_mask.sum())
    positions = positions + tail_mask.sum(-1)
    tail_logits = out.logits  # (R, W, V)
    for r, (h, tail, _) in enumerate(rows):
        lp = torch.log_softmax(last_head_logits[h].float(), -1)[tail[0]][None]
        rest = head_logprobs(tail_logits[r, tail_width - len(tail) : -1], tail_ids[r, tail_width - len(tail) + 1 :])
        results[r].tail_logprobs = torch.cat([lp, rest]).tolist()
    logits = tail_logits[:, -1]  # (R, V) predicts each row's first reasoning token

    # 3. decode; a finished row feeds its follow tokens; a row leaves once its follow tokens are scored
    active = list(range(len(rows)))
    forced: list[int | None] = [None] * len(rows)  # follow tokens scored so far, once reasoning is over
    while active:
        feed: list[int | None] = []  # next input of each active row; None: the row is done
        for slot, r in enumerate(active):
            follow, row_logits = rows[r][2], logits[slot]
            if forced[r] is None:
                token = int(row_logits.argmax())
                if token not in stop_ids:
                    results[r].reasoning.append(token)
                    stats.generated_tokens += 1
                    if len(results[r].reasoning) >= max_new_tokens:
                        forced[r] = 0  # the logits after this token predict the first follow token
                    feed.append(token if forced[r] is None or follow else None)
                    continue
                forced[r] = 0  # stopped: these logits already predict the first follow token
            k = forced[r]
            if k < len(follow):
                scaled = torch.log_softmax(row_logits.float() / follow_temperature, -1)
                results[r].follow_logprobs.append(float(scaled[follow[k]]))
                results[r].follow_hits.append(int(row_logits.argmax()) == follow[k])
            forced[r] = k + 1
            feed.append(follow[k] if k + 1 < len(follow) else None)
        keep = [slot for slot, token in enumerate(feed) if token is not None]
        if not keep:
            break
        if len(keep) != len(active):
            keep_idx = torch.tensor(keep, device=device)
            cache.reorder_cache(keep_idx)
            mask, positions = mask[keep_idx], positions[keep_idx]
            active = [active[slot] for slot in keep]
        feed = [feed[slot] for slot in keep]
        if all(forced[r] is not None for r in active):
            # no row is generating any more: score all remaining follow tokens in one forward
            _score_rest(
                model, kw, cache, mask, positions, active, feed, rows, forced, results, follow_temperature, stats
            )
            break
        mask = torch.cat([mask, torch.ones((len(active), 1), dtype=torch.long, device=device)], 1)
        out = model(
            input_ids=torch.tensor([[token] for token in feed], device=device),
            attention_mask=mask,
            position_ids=positions[:, None],
            **{kw: cache},
            use_cache=True,
        )
        stats.forward_tokens += len(active)
        positions = positions + 1
        logits = out.logits[:, -1]
    return results, head_scores


def _score_rest(model, kw, cache, mask, positions, active, feed, rows, forced, results, temperature, stats) -> None:
    """Teacher-force each active row's remaining follow tokens at once (right-padded) and score them.

    Row r feeds `feed[slot]` then follow[forced[r] : -1]; the logits there predict follow[forced[r]:].
    """
    device = mask.device
    inputs = [[feed[slot], *rows[r][2][forced[r] : -1]] for slot, r in enumerate(active)]
    width = max(len(x) for x in inputs)
    ids = torch.zeros((len(active), width), dtype=torch.long, device=device)
    new_mask = torch.zeros((len(active), width), dtype=torch.long, device=device)
    for slot, x in enumerate(inputs):
        ids[slot, : len(x)] = torch.tensor(x, device=device)
        new_mask[slot, : len(x)] = 1
    out = model(
        input_ids=ids,
        attention_mask=torch.cat([mask, new_mask], 1),
        position_ids=positions[:, None] + torch.arange(width, device=device)[None],
        **{kw: cache},
        use_cache=True,
    )
    stats.forward_tokens += int(new_mask.sum())
    stats.padded_slots += int(new_mask.numel() - new_mask.sum())
    for slot, r in enumerate(active):
        targets = torch.tensor(rows[r][2][forced[r] :], device=device)
        logits = out.logits[slot, : len(targets)].float()
        scaled = torch.log_softmax(logits / temperature, -1).gather(-1, targets[:, None])[:, 0]
        results[r].follow_logprobs.extend(scaled.tolist())
        results[r].follow_hits.extend((logits.argmax(-1) == targets).tolist())
        forced[r] = len(rows[r][2])
