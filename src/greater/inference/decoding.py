"""Greedy decoding with a KV cache shared across rows that start with the same tokens, followed by
teacher-forced scoring of given tokens on the same cache.

Selection in GReaTer generates reasoning for every (candidate, example): all candidates of an example
share [chat prefix, question, prompt before the position], so that "head" is run once per example
(`kvcache.prefill`, or `kvcache.extend` of the previous step's) and its cache copied to the candidate
rows; only the "tail" (the rest of the prompt and the assistant header) is prefilled per row. When a
row's reasoning ends it leaves the batch, its cache set aside; the set-aside rows' "follow" tokens
(extractor + answer) are then scored together in one teacher-forced forward on their caches, so
answers are scored by extending the generation's cache instead of re-running the sequence, and no
slot is spent on a finished row.

Decoding pays mostly per forward, not per token (bench/README.md has the figures), and most of the
loop runs for the few longest reasonings; prompt-lookup drafting (`draft_slots`) lets those rows
produce several greedy tokens per forward when their text repeats earlier text.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import DynamicCache, PreTrainedModel, StaticCache

from greater.inference.batching import DecodeStats, pack_rows
from greater.inference.kvcache import Prefilled, cache_kwarg, cache_rows, cached_forward, stack_caches
from greater.inference.layout import Ids
from greater.inference.logits import output_logits, token_logprobs

MAX_DRAFT = 8  # guessed tokens per row and step at most
_VACANT = -1  # `_StaticDecodeLoop.active` entry of a slot whose row has finished
DRAFT_SLOTS = 16  # default token slots per decoding step that drafting may fill


@dataclass(frozen=True)
class DecodeRequest:
    """One row of `decode_shared`: continue a copy of prefilled head `head` with `tail`, generate
    reasoning greedily, then teacher-force `follow`, scoring its last `scored` tokens."""

    head: int
    tail: Ids
    follow: Ids = ()
    scored: int = 0


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


@dataclass(frozen=True)
class DecodeSettings:
    """How `decode_shared` decodes: reasoning cap, stop and padding ids, the follow tokens' temperature,
    and the token slots per step that prompt-lookup drafting may fill (0: off)."""

    max_new_tokens: int
    stop_ids: set[int]
    pad_id: int
    follow_temperature: float = 1.0
    draft_slots: int = 0
    static: bool = False


@torch.no_grad()
def decode_shared(
    model: PreTrainedModel,
    heads: Prefilled,
    requests: list[DecodeRequest],
    *,
    max_new_tokens: int,
    stop_ids: set[int],
    pad_id: int,
    follow_temperature: float = 1.0,
    draft_slots: int = 0,
    stats: DecodeStats | None = None,
    static: bool = False,
) -> list[DecodedRow]:
    """Greedy reasoning + teacher-forced follow tokens for `requests`, one `DecodedRow` each, in order:
    each row continues a copy of head `heads[request.head]` (left as it is) with its tail, then
    generates; the last `scored` follow tokens of each row are scored.

    `draft_slots` > 0 turns on prompt-lookup drafting: while few rows are generating, each row feeds
    its next token plus guessed tokens and keeps those that match the model's own argmax, so several
    tokens can come out of one forward; at most `draft_slots` slots are fed per step. Decoding one
    row costs about as much as decoding a few (the per-forward cost dominates), so this shortens the
    tail of the loop, where only the longest reasonings are still running.

    `static=True` decodes into a KV cache allocated once at its final length (`_StaticDecodeLoop`: no
    copy of the cache per token, rows that finish masked and the batch compacted only when it halves;
    no drafting), the same greedy tokens and scores: the path for GPUs, where the per-token cache
    copies of the default loop dominate.
    """
    settings = DecodeSettings(max_new_tokens, stop_ids, pad_id, follow_temperature, draft_slots, static)
    loop = _StaticDecodeLoop if static else _DecodeLoop
    return loop(model, requests, settings, stats if stats is not None else DecodeStats()).run(heads)


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


class _DecodeLoop:
    """The state of one `decode_shared` call.

    The rows still generating form the batch: `cache` and `mask` (R, W) of their tokens so far,
    `positions` (R,) the next position of each, `active[slot]` the request in each slot. `contexts[r]`
    holds request r's tokens so far (where drafts are looked up); `finished` the rows set aside until
    their follow tokens are scored; `results[r]` what request r produced.
    """

    def __init__(
        self, model: PreTrainedModel, requests: list[DecodeRequest], settings: DecodeSettings, stats: DecodeStats
    ) -> None:
        self.model, self.requests, self.settings, self.stats = model, requests, settings, stats
        self.device = model.device
        self.kw = cache_kwarg(model.base_model)
        self.results = [DecodedRow() for _ in requests]
        self.active = list(range(len(requests)))
        self.finished: list[_Finished] = []
        self.contexts: list[list[int]] = []
        self.cache: DynamicCache
        self.mask: torch.Tensor
        self.positions: torch.Tensor

    def run(self, heads: Prefilled) -> list[DecodedRow]:
        """Prefill the tails, decode until every row's reasoning is over, score the follow tokens."""
        logits = self._prefill_tails(heads)  # (R, V) predicts each row's next token
        while self.active:
            feed, over = self._next_tokens(logits)
            if over:
                feed = self._retire(over, logits, feed)
                if not feed:
                    break
            logits = self._forward(feed)
        if self.finished:
            self._score_finished()
        return self.results

    def _prefill_tails(self, heads: Prefilled) -> torch.Tensor:
        """Copy the head caches to the rows and prefill the tails (left-padded: holes in the mask are
        fine); returns (R, V) logits predicting each row's first reasoning token."""
        index = torch.tensor([request.head for request in self.requests], device=heads.mask.device)
        tail_ids, tail_mask = pack_rows([r.tail for r in self.requests], self.settings.pad_id, self.device, left=True)
        tail_width = tail_ids.shape[1]
        head_mask = self._place_heads(heads, index, tail_mask)
        positions = head_mask.sum(-1)
        tail_pos = positions[:, None] + (tail_mask.cumsum(-1) - 1).clamp(min=0)
        tail_logits = cached_forward(
            self.model, self.kw, self.cache, input_ids=tail_ids, attention_mask=self.mask, position_ids=tail_pos
        )
        self.stats.count_forward(tail_mask)
        self.positions = positions + tail_mask.sum(-1)
        first_logits = heads.last_logits[index.to(heads.last_logits.device)]
        for r, request in enumerate(self.requests):
            tail = request.tail
            lp = token_logprobs(first_logits[r], torch.tensor(tail[0]))[None]
            rest = token_logprobs(
                tail_logits[r, tail_width - len(tail) : -1], tail_ids[r, tail_width - len(tail) + 1 :]
            )
            self.results[r].tail_logprobs = torch.cat([lp, rest]).tolist()
        self.contexts = [list(heads.ids[r.head]) + list(r.tail) for r in self.requests]
        return tail_logits[:, -1]

    def _place_heads(self, heads: Prefilled, index: torch.Tensor, tail_mask: torch.Tensor) -> torch.Tensor:
        """Set `cache` to a copy of heads `index` (R,) and `mask` to theirs followed by `tail_mask`
        (R, T); returns the heads' (R, W) mask."""
        start = heads.rows(index.tolist())
        self.cache = start.cache
        self.mask = torch.cat([start.mask, tail_mask], 1)
        return start.mask

    def _next_tokens(self, logits: torch.Tensor) -> tuple[list[list[int]], list[int]]:
        """Take each row's greedy token from `logits` (R, V). Returns what each slot feeds next
        ([token, *draft]; [] once its reasoning is over) and the slots whose reasoning is over (their
        logits predict the first follow token)."""
        settings = self.settings
        draft_len = min(MAX_DRAFT, settings.draft_slots // max(1, len(self.active)) - 1)
        feed: list[list[int]] = []
        over: list[int] = []
        for slot, r in enumerate(self.active):
            if r == _VACANT:  # a static batch's finished row, kept as padding until the batch compacts
                feed.append([])
                continue
            reasoning = self.results[r].reasoning
            token = int(logits[slot].argmax())
            if len(reasoning) >= settings.max_new_tokens or token in settings.stop_ids:
                over.append(slot)
                feed.append([])
                continue
            reasoning.append(token)
            self.contexts[r].append(token)
            self.stats.generated_tokens += 1
            if len(reasoning) >= settings.max_new_tokens and not self.requests[r].scored:
                over.append(slot)  # nothing follows that needs this token fed
                feed.append([])
                continue
            room = min(draft_len, settings.max_new_tokens - len(reasoning))
            feed.append([token, *lookup_draft(self.contexts[r], room, settings.stop_ids)])
        return feed, over

    def _retire(self, over: list[int], logits: torch.Tensor, feed: list[list[int]]) -> list[list[int]]:
        """Set the rows at slots `over` aside (scoring their first follow token from `logits`) and drop
        them from the batch; returns the remaining slots' feed ([] when no row is left)."""
        self._finish(over, logits)
        keep = [slot for slot, tokens in enumerate(feed) if tokens]
        if not keep:
            return []
        keep_idx = torch.tensor(keep, device=self.device)
        self.cache.reorder_cache(keep_idx)
        self.mask, self.positions = self.mask[keep_idx], self.positions[keep_idx]
        self.active = [self.active[slot] for slot in keep]
        # set-aside caches stay at most as large as the batch's
        if sum(len(f.rows) for f in self.finished) >= len(self.active):
            self._score_finished()
        return [feed[slot] for slot in keep]

    def _forward(self, feed: list[list[int]]) -> torch.Tensor:
        """Run each slot's `feed` tokens; keep each row's longest run of drafted tokens that greedy
        decoding would have produced (rejected guesses stay in the cache as holes in the mask).
        Returns (R, V) logits predicting each row's next token."""
        ids, block = pack_rows(feed, self.settings.pad_id, self.device)
        width = ids.shape[1]
        self.mask = torch.cat([self.mask, block], 1)
        step_logits = cached_forward(  # (R, W, V)
            self.model,
            self.kw,
            self.cache,
            input_ids=ids,
            attention_mask=self.mask,
            position_ids=self.positions[:, None] + torch.arange(width, device=self.device)[None],
        )
        self.stats.count_forward(block)
        predicted = step_logits.argmax(-1).tolist()  # (R, W)
        accepted = []
        for slot, (r, tokens) in enumerate(zip(self.active, feed, strict=True)):
            n = 0
            while n + 1 < len(tokens) and predicted[slot][n] == tokens[n + 1]:
                n += 1
            self.results[r].reasoning.extend(tokens[1 : n + 1])
            self.contexts[r].extend(tokens[1 : n + 1])
            self.stats.generated_tokens += n
            self.stats.accepted_tokens += n
            self.stats.drafted_tokens += len(tokens) - 1
            self.mask[slot, self.mask.shape[1] - width + n + 1 :] = 0
            accepted.append(n)
        taken = torch.tensor(accepted)
        self.positions = self.positions + 1 + taken.to(self.device)
        picked = torch.arange(len(self.active)).to(step_logits.device), taken.to(step_logits.device)
        return step_logits[picked]

    def _finish(self, slots: list[int], logits: torch.Tensor) -> None:
        """Rows at `slots` are over: `logits[slot]` predicts their first follow token, scored now; rows
        with more scored follow tokens are set aside in `finished`."""
        later = []
        for slot in slots:
            request = self.requests[self.active[slot]]
            if request.scored >= len(request.follow) > 0:
                self._record(self.active[slot], logits[slot][None], request.follow[:1])
            if len(request.follow) > 1 and request.scored:
                later.append(slot)
        if later:
            idx = torch.tensor(later, device=self.mask.device)
            rows = [self.active[slot] for slot in later]
            self.finished.append(_Finished(rows, cache_rows(self.cache, idx), self.mask[idx], self.positions[idx]))

    def _score_finished(self) -> None:
        """Score the set-aside rows' follow tokens after the first in one teacher-forced forward, their
        caches stacked (shorter ones padded on the right, masked), with logits only where a scored token
        is predicted (the vocabulary is large); empties `finished`."""
        finished, self.finished = self.finished, []
        device = finished[0].mask.device
        width = max(f.mask.shape[1] for f in finished)
        cache = stack_caches([f.cache for f in finished], width)
        mask = torch.cat([F.pad(f.mask, (0, width - f.mask.shape[1])) for f in finished])
        positions = torch.cat([f.positions for f in finished])
        row_ids = [r for f in finished for r in f.rows]
        # feeding follow[:-1] predicts follow[1:]; the scored ones are the last `scored`
        ids, new_mask = pack_rows([self.requests[r].follow[:-1] for r in row_ids], 0, device)
        hidden = self.model.base_model(
            input_ids=ids,
            attention_mask=torch.cat([mask, new_mask], 1),
            position_ids=positions[:, None] + torch.arange(ids.shape[1], device=device)[None],
            **{self.kw: cache},
            use_cache=True,
        )[0]
        self.stats.count_forward(new_mask)
        spans = []  # (first predicting column, follow tokens predicted from there on) per row
        for r in row_ids:
            follow, scored = self.requests[r].follow, self.requests[r].scored
            first = max(1, len(follow) - scored)
            spans.append((first - 1, follow[first:]))
        picked = torch.cat([hidden[i, start : start + len(targets)] for i, (start, targets) in enumerate(spans)])
        row_logits = output_logits(self.model, picked).split([len(targets) for _, targets in spans])
        for r, (_, targets), part in zip(row_ids, spans, row_logits, strict=True):
            self._record(r, part, targets)

    def _record(self, r: int, row_logits: torch.Tensor, targets: Ids) -> None:
        """Score `targets` (K,) under `row_logits` (K, V) for request `r`."""
        target = torch.tensor(targets, device=row_logits.device)
        temperature = self.settings.follow_temperature
        self.results[r].follow_logprobs.extend(token_logprobs(row_logits, target, temperature).tolist())
        self.results[r].follow_hits.extend((row_logits.argmax(-1) == target).tolist())


class _StaticDecodeLoop(_DecodeLoop):
    """`_DecodeLoop` on a KV cache allocated once per batch at its final length (transformers'
    `StaticCache`: heads, tails and `max_new_tokens` columns), written one column per step in place.

    All rows write the same column each step (the mask is one (R, columns) buffer; a row's holes are
    zeros in it). A finished row is set aside as in `_DecodeLoop` but its slot stays, fed padding and
    masked, until the live rows fit a batch half as large: then the batch is compacted to the next
    power of two at or above the live rows (the shapes a step runs at stay few: what a captured CUDA
    graph per shape needs). One token per row and step: no drafting.
    """

    def _place_heads(self, heads: Prefilled, index: torch.Tensor, tail_mask: torch.Tensor) -> torch.Tensor:
        head_mask = heads.mask[index]
        width = head_mask.shape[1] + tail_mask.shape[1]
        self.cache = StaticCache(config=self.model.config, max_cache_len=width + self.settings.max_new_tokens)
        for layer, entry in enumerate(heads.cache.layers):
            at = index.to(entry.keys.device)  # with a device map, each layer's cache is on its layer's GPU
            self.cache.update(entry.keys.index_select(0, at), entry.values.index_select(0, at), layer)
        self.mask = head_mask.new_zeros((len(index), width + self.settings.max_new_tokens))
        self.mask[:, :width] = torch.cat([head_mask, tail_mask], 1)
        self.column = width  # where the next step writes
        return head_mask

    def _retire(self, over: list[int], logits: torch.Tensor, feed: list[list[int]]) -> list[list[int]]:
        """Set the rows at slots `over` aside (scoring their first follow token from `logits`) and mark
        their slots vacant; compact the batch once its live rows fit half of it. Returns the slots'
        feed ([] when no row is left)."""
        self._finish(over, logits)
        for slot in over:
            self.active[slot] = _VACANT
        live = [slot for slot, tokens in enumerate(feed) if tokens]
        if not live:
            return []
        size = _bucket(len(live))
        if size <= len(self.active) // 2:
            vacant = [slot for slot in range(len(self.active)) if not feed[slot]]
            keep = live + vacant[: size - len(live)]
            keep_idx = torch.tensor(keep, device=self.device)
            self.cache.reorder_cache(keep_idx)
            self.mask, self.positions = self.mask[keep_idx], self.positions[keep_idx]
            self.active = [self.active[slot] for slot in keep]
            feed = [feed[slot] for slot in keep]
        if sum(len(f.rows) for f in self.finished) >= len(live):
            self._score_finished()
        return feed

    def _forward(self, feed: list[list[int]]) -> torch.Tensor:
        """Each live slot's token into the next column (vacant slots: padding, masked); returns (R, V)
        logits predicting each row's next token."""
        ids = torch.tensor([[tokens[0] if tokens else self.settings.pad_id] for tokens in feed], device=self.device)
        live = torch.tensor([[1 if tokens else 0] for tokens in feed], device=self.device)
        self.mask[:, self.column] = live[:, 0].to(self.mask.dtype)
        logits = cached_forward(
            self.model,
            self.kw,
            self.cache,
            input_ids=ids,
            attention_mask=self.mask,
            position_ids=self.positions[:, None],
        )
        self.stats.count_forward(live)
        self.positions = self.positions + live[:, 0]
        self.column += 1
        return logits[:, -1]


def _bucket(rows: int) -> int:
    """The batch size a static batch of `rows` live rows runs at: the next power of two."""
    return 1 << max(0, rows - 1).bit_length()
