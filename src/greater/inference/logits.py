"""What the model's output head computes, in float32: logits of hidden states, log-probs of tokens.

Its own module because all three model-facing layers use it: the KV-cache prefills (`kvcache`), the
decoding loop (`decoding`) and the teacher-forced gradient pass (`engine`); none of them owns it.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel


def output_logits(model: PreTrainedModel, hidden: torch.Tensor) -> torch.Tensor:
    """(..., V) float32 logits for hidden states (..., D), as the model's output head computes them.

    Computed as W·hᵀ, not `F.linear` (h·Wᵀ), which repacks the whole vocabulary-sized weight on every
    call (slower on CPU for a few rows: bench/README.md). With
    bfloat16/float16 weights the product still comes out in float32 (`_mm_float32`), not rounded to
    the weights' dtype: a bfloat16 logit of 20 is only known to ±0.06, ±0.3 after the answer
    temperature of 0.2, which the loss, the proposal log-probs and the selection scores would inherit.
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


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """(..., K) log-probs of `tokens` (..., K) under `logits` (..., K, V) divided by `temperature`."""
    tokens = tokens.to(logits.device)
    return torch.log_softmax(logits.float() / temperature, -1).gather(-1, tokens[..., None])[..., 0]
