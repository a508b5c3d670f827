"""KV caches of token rows run once without gradient: prefill, extend, copy rows, stack.

A `Prefilled` batch is left-padded so that its rows end together; its cache can be extended by a
few tokens per row (`extend`), copied row by row for rows that continue it differently
(`Prefilled.rows`), and several caches can be stacked into one batch (`stack_caches`).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import DynamicCache, PreTrainedModel

from greater.inference.batching import DecodeStats, pack_rows, run_chunked
from greater.inference.layout import Ids
from greater.inference.logits import output_logits, token_logprobs


def cache_kwarg(model: PreTrainedModel) -> str:
    """The forward argument that takes the KV cache: `cache` in newer transformers, else `past_key_values`."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def cached_forward(
    model: PreTrainedModel, kw: str, cache: DynamicCache, keep: int | None = None, **inputs
) -> torch.Tensor:
    """(B, W, V) logits of a forward that extends `cache` in place (the last `keep` positions only when
    given); `kw` is `cache_kwarg(model.base_model)`, `inputs` the base model's (ids, mask, positions)."""
    hidden = model.base_model(**inputs, **{kw: cache}, use_cache=True)[0]
    return output_logits(model, hidden if keep is None else hidden[:, -keep:])


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
            cache=cache_rows(self.cache, index),
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
        logits = cached_forward(
            model, kw, cache, n_scored + 1, input_ids=ids, attention_mask=mask, position_ids=positions
        )
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
    logits = cached_forward(  # (B, width, V)
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


def cache_rows(cache: DynamicCache, idx: torch.Tensor) -> DynamicCache:
    """A new cache holding rows `idx` of `cache` (which is left as it is)."""
    rows = DynamicCache()
    for layer, entry in enumerate(cache.layers):
        at = idx.to(entry.keys.device)  # with a device map, each layer's cache is on its layer's GPU
        rows.update(entry.keys.index_select(0, at), entry.values.index_select(0, at), layer)
    return rows
