"""Batch sizes from free GPU memory (`batch_size="auto"`, `grad_batch_size="auto"`).

On a CPU, "auto" keeps the fixed defaults (32 rows per generation batch, 4 per backward chunk). On
CUDA both come from the free device memory after the model is loaded and what one row costs, by the
model's shape (L layers, hidden D, intermediate I, K key/value heads of size H, vocabulary V, b bytes
per weight):

    KV cache per token            2·L·K·H·b
    generation row                3 × KV per token × row tokens + 2 × 64 positions × V × 4 bytes
                                  (the row's cache, the copy of its shared head, a finished row's set-aside
                                  copy; float32 logits of the prefilled tail)
    backward row                  activations per token × row tokens + KV per token × row tokens
    activations per token         L·(6·D + 2·K·H + 4·I)·b   (an upper bound of what autograd keeps for
                                  input gradients)

(README.md "On a GPU" works these out for Llama-3-8B.)

Half the remainder is left for the allocator's fragmentation and transient copies. Whatever the
estimate, a batch that does not fit halves on out-of-memory (`batching.run_chunked`).
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

AUTO = "auto"
CPU_BATCH_SIZE = 32  # rows per generation / scoring batch on a CPU
CPU_GRAD_BATCH_SIZE = 4  # rows per forward + backward chunk on a CPU
MAX_BATCH_SIZE = 256
MAX_GRAD_BATCH_SIZE = 64
SAFETY = 0.5  # fraction of the free memory (after the kept prefix) that batches may plan to use


def is_size(value: object) -> bool:
    """Whether `value` is a valid batch-size setting: a positive int or "auto"."""
    return value == AUTO or (isinstance(value, int) and not isinstance(value, bool) and value >= 1)


def shape(model: PreTrainedModel) -> dict[str, int]:
    """The model's sizes that set memory per token: layers, hidden, intermediate, kv_dim, vocab, bytes."""
    config = model.config
    config = getattr(config, "text_config", None) or config
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return {
        "layers": config.num_hidden_layers,
        "hidden": config.hidden_size,
        "intermediate": getattr(config, "intermediate_size", None) or 4 * config.hidden_size,
        "kv_dim": kv_heads * head_dim,
        "vocab": config.vocab_size,
        "bytes": model.dtype.itemsize,
    }


def kv_bytes_per_token(s: dict[str, int]) -> int:
    """Bytes of KV cache per token per row (keys and values of every layer)."""
    return 2 * s["layers"] * s["kv_dim"] * s["bytes"]


def activation_bytes_per_token(s: dict[str, int]) -> int:
    """Bytes autograd may keep per token for the backward pass to the input embeddings (upper bound)."""
    return s["layers"] * (6 * s["hidden"] + 2 * s["kv_dim"] + 4 * s["intermediate"]) * s["bytes"]


def row_bytes(s: dict[str, int], row_tokens: int) -> tuple[int, int]:
    """(generation row, backward row) bytes for rows of `row_tokens` tokens."""
    kv = kv_bytes_per_token(s) * row_tokens
    generation = 3 * kv + 2 * 64 * s["vocab"] * 4
    backward = activation_bytes_per_token(s) * row_tokens + kv + 2 * 64 * s["vocab"] * 4
    return generation, backward


def free_bytes(model: PreTrainedModel) -> int | None:
    """Free memory on the CUDA devices holding the model's weights (None: not on CUDA)."""
    devices = {p.device for p in model.parameters() if p.device.type == "cuda"}
    if not devices:
        return None
    return sum(torch.cuda.mem_get_info(d)[0] for d in devices)


def fit_batch_sizes(
    model: PreTrainedModel,
    row_tokens: int,
    n_rows: int,
    batch_size: int | str = AUTO,
    grad_batch_size: int | str = AUTO,
    *,
    prefix_tokens: int | None = None,
    free: int | None = None,
) -> tuple[int, int]:
    """(batch_size, grad_batch_size) with each "auto" resolved for rows of at most `row_tokens` tokens;
    `n_rows` rows (the training examples) keep a no-gradient cache of up to `prefix_tokens` tokens (default
    `row_tokens`) the whole step.

    `free` (bytes) overrides the measured free CUDA memory; with neither, "auto" means the CPU defaults.
    """
    free = free if free is not None else free_bytes(model)
    if free is None:
        sizes = (CPU_BATCH_SIZE, CPU_GRAD_BATCH_SIZE)
    else:
        s = shape(model)
        kept = n_rows * kv_bytes_per_token(s) * (prefix_tokens or row_tokens)  # the step's shared prefix
        budget = max(0, free - kept) * SAFETY
        generation, backward = row_bytes(s, row_tokens)
        sizes = (
            int(min(MAX_BATCH_SIZE, max(1, budget // generation))),
            int(min(MAX_GRAD_BATCH_SIZE, max(1, budget // backward))),
        )
    return (
        sizes[0] if batch_size == AUTO else int(batch_size),
        sizes[1] if grad_batch_size == AUTO else int(grad_batch_size),
    )
