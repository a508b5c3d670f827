"""Rows of token ids as padded batches: packing, cutting into chunks, and counting what the model ran.

The model-independent layer under `kvcache`, `decoding` and `engine`: nothing here calls a model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class DecodeStats:
    """Work counters, shared by generation and the teacher-forced passes; public as `Result.counts`,
    summed up per method run by `methods.Usage` and printed per step by bench/step.py."""

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

    def count_backward(self, mask: torch.Tensor) -> None:
        """Count a forward + backward over a batch with attention `mask` (B, W) of its new tokens."""
        self.backward_tokens += int(mask.sum())
        self.padded_slots += int((mask == 0).sum())

    def __add__(self, other: DecodeStats) -> DecodeStats:
        """Counter by counter: what two sittings of one run did together (`methods.Sitting`)."""
        return DecodeStats(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def __sub__(self, other: DecodeStats) -> DecodeStats:
        """Counter by counter: the work done since `other` was copied from these counters."""
        return DecodeStats(**{f.name: getattr(self, f.name) - getattr(other, f.name) for f in fields(self)})


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
