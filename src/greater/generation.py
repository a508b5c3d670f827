"""Batched greedy generation behind a small interface, so a faster engine can be plugged in."""

from __future__ import annotations

import logging
from typing import Protocol

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase


class Generator(Protocol):
    """Greedy continuation of token contexts, stopping at a stop token or after `max_new_tokens`."""

    def generate(self, contexts: list[tuple[int, ...]], max_new_tokens: int) -> list[list[int]]: ...


def stop_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """End-of-sequence / end-of-turn ids from the tokenizer and the model's generation config."""
    ids: set[int] = set()
    for source in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif source:
            ids.update(int(i) for i in source)
    return ids


class TransformersGenerator:
    """Greedy generation with `model.generate`: left padding, rows sorted by length to keep padding small."""

    def __init__(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, batch_size: int = 16, progress=None
    ) -> None:
        self.model = model
        self.stop_ids = stop_token_ids(model, tokenizer)
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else min(self.stop_ids, default=0)
        self.batch_size = batch_size
        self.progress = progress
        self.tokens_generated = 0

    def generate(self, contexts: list[tuple[int, ...]], max_new_tokens: int) -> list[list[int]]:
        """Continuations (stop token excluded), in the order of `contexts`."""
        if max_new_tokens <= 0 or not contexts:
            return [[] for _ in contexts]
        order = sorted(range(len(contexts)), key=lambda i: -len(contexts[i]))
        out: list[list[int]] = [[] for _ in contexts]
        config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=sorted(self.stop_ids) or None,
            pad_token_id=self.pad_id,
        )
        start = 0
        batch_size = self.batch_size
        while start < len(order):
            rows = order[start : start + batch_size]
            try:
                new = self._generate_batch([contexts[i] for i in rows], config)
            except torch.OutOfMemoryError:
                if batch_size == 1:
                    raise
                batch_size = max(1, batch_size // 2)
                logging.getLogger(__name__).warning("out of memory; generation batch size now %d", batch_size)
                continue
            for i, ids in zip(rows, new, strict=True):
                out[i] = ids
            start += len(rows)
            if self.progress is not None:
                self.progress.update(len(rows))
        return out

    def _generate_batch(self, contexts: list[tuple[int, ...]], config: GenerationConfig) -> list[list[int]]:
        width = max(len(c) for c in contexts)
        input_ids = torch.full((len(contexts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(contexts), width), dtype=torch.long)
        for row, ctx in enumerate(contexts):
            input_ids[row, width - len(ctx) :] = torch.tensor(ctx, dtype=torch.long)
            mask[row, width - len(ctx) :] = 1
        device = self.model.device
        with torch.no_grad():
            generated = self.model.generate(
                input_ids=input_ids.to(device), attention_mask=mask.to(device), generation_config=config
            )
        result = []
        for row in generated[:, width:].tolist():
            cut = next((j for j, t in enumerate(row) if t in self.stop_ids), len(row))
            result.append(row[:cut])
            self.tokens_generated += cut
        return result
