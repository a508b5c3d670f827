"""Batched greedy generation behind one interface, `Generator`, so another engine can be plugged in.

The engine and the evaluation talk only to this interface: `generate`, the `stats` counters, the
optional `progress` bar, and `shared_prefix()`, the backend's decoder that generates on a shared
prefix's KV cache and scores the answers on the same cache (`TransformersGenerator` has one;
`backends.vllm.VLLMGenerator` has none, so selection there regenerates and re-scores). Any object with
`generate(contexts, max_new_tokens)` also works: `as_generator` wraps it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Protocol

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from greater.inference.batching import DecodeStats, pack_rows, run_chunked
from greater.inference.decoding import DRAFT_SLOTS, DecodedRow, DecodeRequest, decode_shared
from greater.inference.kvcache import Prefilled, prefill


class Progress(Protocol):
    """A progress bar (tqdm's `update`): told how many sequences are done."""

    def update(self, n: int) -> object: ...


class SharedPrefixDecoder(Protocol):
    """Greedy reasoning on copies of a prefilled shared prefix, then teacher-forced scoring of given
    tokens on the same cache (`decoding.decode_shared`), on the engine's own model."""

    stats: DecodeStats

    def decode_shared(
        self, heads: Prefilled, requests: list[DecodeRequest], max_new_tokens: int, follow_temperature: float
    ) -> list[DecodedRow]: ...


class Generator(ABC):
    """Greedy continuation of token contexts, stopping at a stop token or after `max_new_tokens`.

    stats: the work counters this backend adds to (the engine's teacher-forced passes add to them too).
    progress: when set, told after every batch how many sequences are done.
    """

    def __init__(self) -> None:
        self.stats = DecodeStats()
        self.progress: Progress | None = None

    @abstractmethod
    def generate(self, contexts: list[tuple[int, ...]], max_new_tokens: int) -> list[list[int]]:
        """Continuations (stop token excluded), in the order of `contexts`."""

    def shared_prefix(self) -> SharedPrefixDecoder | None:
        """The decoder on a shared prefix's cache, where this backend has one (default: none)."""
        return None


class _Plugged(Generator):
    """Any object with `generate(contexts, max_new_tokens)`, as a `Generator` without a shared-prefix decoder."""

    def __init__(self, inner) -> None:
        super().__init__()
        self.inner = inner

    def generate(self, contexts: list[tuple[int, ...]], max_new_tokens: int) -> list[list[int]]:
        return self.inner.generate(contexts, max_new_tokens)


def as_generator(generator) -> Generator:
    """`generator` itself when it is a `Generator`, else wrapped as one."""
    return generator if isinstance(generator, Generator) else _Plugged(generator)


def stop_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """End-of-sequence / end-of-turn ids from the tokenizer and the model's generation config."""
    ids: set[int] = set()
    for source in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif source:
            ids.update(int(i) for i in source)
    return ids


def pad_token_id(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> int:
    """The id that pads batches: the tokenizer's pad token, else the smallest stop id (masked out either way)."""
    pad = tokenizer.pad_token_id
    return pad if pad is not None else min(stop_token_ids(model, tokenizer), default=0)


def longest_first(contexts: list[tuple[int, ...]]) -> list[int]:
    """Indexes of `contexts`, longest first (ties in their order): the rows of a generation batch are
    consecutive in it, which keeps padding small."""
    return sorted(range(len(contexts)), key=lambda i: -len(contexts[i]))


class TransformersGenerator(Generator):
    """Greedy generation on a transformers model; rows sorted by length to keep padding small.

    `cached=True` (default) uses greater's own KV-cache loop, which drops finished rows from the batch
    and drafts tokens by prompt lookup in `draft_slots` slots per step (0: off; see `decode_shared`);
    with `static=True` that loop decodes into a cache allocated once per batch (no drafting; the GPU
    path); `cached=False` uses `model.generate`.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        batch_size: int = 32,
        cached: bool = True,
        draft_slots: int = DRAFT_SLOTS,
        progress: Progress | None = None,
        static: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.stop_ids = stop_token_ids(model, tokenizer)
        self.pad_id = pad_token_id(model, tokenizer)
        self.batch_size = batch_size
        self.cached = cached
        self.static = static and cached
        self.draft_slots = draft_slots if cached and not static else 0
        self.progress = progress

    def generate(self, contexts: list[tuple[int, ...]], max_new_tokens: int) -> list[list[int]]:
        """Continuations (stop token excluded), in the order of `contexts`."""
        if max_new_tokens <= 0 or not contexts:
            return [[] for _ in contexts]
        self.stats.sequences += len(contexts)
        order = longest_first(contexts)
        batch = self._decode_batch if self.cached else self._generate_batch
        outs = run_chunked([contexts[i] for i in order], self.batch_size, lambda c: batch(c, max_new_tokens))
        result: list[list[int]] = [[] for _ in contexts]
        for i, ids in zip(order, outs, strict=True):
            result[i] = ids
        return result

    def shared_prefix(self) -> TransformersGenerator | None:
        """This generator, when it runs greater's own KV-cache loop (`cached`)."""
        return self if self.cached else None

    def decode_shared(
        self, heads: Prefilled, requests: list[DecodeRequest], max_new_tokens: int, follow_temperature: float
    ) -> list[DecodedRow]:
        """`decoding.decode_shared` on this generator's model, stop ids, padding and drafting, counted in `stats`."""
        return decode_shared(
            self.model,
            heads,
            requests,
            max_new_tokens=max_new_tokens,
            stop_ids=self.stop_ids,
            pad_id=self.pad_id,
            follow_temperature=follow_temperature,
            draft_slots=self.draft_slots,
            stats=self.stats,
            static=self.static,
        )

    def sample(
        self, contexts: list[tuple[int, ...]], max_new_tokens: int, temperature: float, top_p: float = 1.0
    ) -> list[list[int]]:
        """Sampled continuations (stop token excluded), rows kept in the given order; seed torch's RNG
        first for reproducible ones."""
        if max_new_tokens <= 0 or not contexts:
            return [[] for _ in contexts]
        self.stats.sequences += len(contexts)
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p}
        return run_chunked(contexts, self.batch_size, lambda c: self._generate_batch(c, max_new_tokens, sampling))

    def _decode_batch(self, contexts: list[tuple[int, ...]], max_new_tokens: int) -> list[list[int]]:
        rows = decode_shared(
            self.model,
            prefill(self.model, [c[:-1] for c in contexts], self.pad_id, stats=self.stats),
            [DecodeRequest(i, c[-1:]) for i, c in enumerate(contexts)],
            max_new_tokens=max_new_tokens,
            stop_ids=self.stop_ids,
            pad_id=self.pad_id,
            draft_slots=self.draft_slots,
            stats=self.stats,
            static=self.static,
        )
        self._tick(len(contexts))
        return [r.reasoning for r in rows]

    def _generate_batch(
        self, contexts: list[tuple[int, ...]], max_new_tokens: int, sampling: dict | None = None
    ) -> list[list[int]]:
        """`model.generate` on one left-padded batch: greedy, or with the `sampling` settings."""
        device = self.model.device
        input_ids, mask = pack_rows(contexts, self.pad_id, device, left=True)
        width = input_ids.shape[1]
        config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            eos_token_id=sorted(self.stop_ids) or None,
            pad_token_id=self.pad_id,
            **(sampling or {"do_sample": False}),
        )
        with torch.no_grad():
            generated = self.model.generate(input_ids=input_ids, attention_mask=mask, generation_config=config)
        result = []
        for row in generated[:, width:].tolist():
            cut = next((j for j, t in enumerate(row) if t in self.stop_ids), len(row))
            result.append(row[:cut])
            self.stats.generated_tokens += cut
            self.stats.padded_slots += len(row) - cut
        self.stats.forward_tokens += int(mask.sum()) + len(contexts) * generated.shape[1] - width
        self.stats.padded_slots += int(mask.numel() - mask.sum())
        self._tick(len(contexts))
        return result

    def _tick(self, n: int) -> None:
        if self.progress is not None:
            self.progress.update(n)
