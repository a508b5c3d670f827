"""The teacher-forced pass of GReaTer: loss terms of whole sequences, and the gradient w.r.t. the
embedding at one prompt position, computed two ways (`GradientPass`): `FullSequences`, each sequence
whole and one at a time as the reference does, or `KeptPrefix`, only the part from the position on,
batched, on top of a kept no-gradient prefix."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from transformers import PreTrainedModel

from greater.inference.batching import DecodeStats, pack_rows, padding_chunks, run_chunked
from greater.inference.kvcache import Prefilled, cache_kwarg
from greater.inference.layout import Ids, TokenSequence
from greater.inference.logits import output_logits


@dataclass
class Terms:
    """Per-example loss terms of one prompt, and (when a position was given) what the step needs.

    ce: (B,) answer cross-entropy, mean over answer tokens, logits divided by the temperature.
    nll: (B,) the prompt's negative log-likelihood, mean over prompt tokens.
    correct: (B,) whether every answer token is the argmax under teacher forcing.
    proposal_logprobs: (B, V) log-probabilities of the token at the position, given what precedes it.
    embed_grad: (D,) dL/de for the embedding e at the position, L = sum_b loss_b (`example_loss`).
    """

    ce: torch.Tensor
    nll: torch.Tensor
    correct: torch.Tensor
    proposal_logprobs: torch.Tensor | None = None
    embed_grad: torch.Tensor | None = None
    prompt_len: int = 0

    def loss(self, nll_weight: float) -> torch.Tensor:
        """(B,) each example's loss, `example_loss(ce, nll, nll_weight)`."""
        return example_loss(self.ce, self.nll, nll_weight)


def example_loss(ce: torch.Tensor, nll: torch.Tensor, nll_weight: float) -> torch.Tensor:
    """(B,) GReaTer's loss per example: answer cross-entropy + λ · the prompt's NLL (the paper's L)."""
    return ce + nll_weight * nll


class TeacherForcing:
    """Teacher-forced passes on `model` (rows padded with `pad_id`, answer logits divided by
    `answer_temperature`); what they run is counted in `counts`."""

    def __init__(self, model: PreTrainedModel, pad_id: int, answer_temperature: float, counts: DecodeStats) -> None:
        self.model = model
        self.pad_id = pad_id
        self.answer_temperature = answer_temperature
        self.counts = counts

    def full(self, seqs: list[TokenSequence], position: int | None, nll_weight: float) -> Terms:
        """Loss terms of whole sequences in one forward (+ backward to the embedding at `position`)."""
        device = self.model.device
        input_ids, mask = pack_rows([s.ids for s in seqs], self.pad_id, device)
        embeds = self.model.get_input_embeddings()(input_ids)
        leaf = None
        if position is not None:
            cols = torch.tensor([s.prompt.start + position for s in seqs], device=device)
            # float32 whatever the weights' dtype: see _put_at
            leaf = embeds[0, int(cols[0])].detach().to(torch.float32, copy=True).requires_grad_(True)
            embeds = _put_at(embeds, leaf, cols)
        with torch.set_grad_enabled(leaf is not None):
            hidden = self.model.base_model(
                inputs_embeds=embeds,
                attention_mask=mask,
                position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                use_cache=False,
            )[0]
            no_shift, none_known = [0] * len(seqs), [[] for _ in seqs]
            terms, prompt_lp = self._loss_terms(hidden, input_ids, seqs, no_shift, leaf, nll_weight, none_known)
        if leaf is not None:
            offsets = torch.tensor([0] + [s.prompt.stop - s.prompt.start for s in seqs], device=device).cumsum(0)[:-1]
            terms.proposal_logprobs = prompt_lp[offsets + position].cpu()
            self.counts.count_backward(mask)
        else:
            self.counts.count_forward(mask)
        self.counts.scored_sequences += len(seqs)
        return terms

    def suffix(self, seqs: list[TokenSequence], before: Prefilled, position: int, nll_weight: float) -> Terms:
        """Loss terms and the embedding gradient at prompt index `position`, running forward + backward
        only from the position on, on top of `before` (the rows' no-gradient prefix up to it)."""
        device = self.model.device
        cuts = [s.prompt.start + position for s in seqs]
        input_ids, mask = pack_rows([s.ids[c:] for s, c in zip(seqs, cuts, strict=True)], self.pad_id, device)
        embeds = self.model.get_input_embeddings()(input_ids)
        leaf = embeds[0, 0].detach().to(torch.float32, copy=True).requires_grad_(True)  # float32: see _put_at
        embeds = _put_at(embeds, leaf, torch.zeros(len(seqs), dtype=torch.long, device=device))
        positions = before.mask.sum(-1, keepdim=True) + (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.enable_grad():
            hidden = self.model.base_model(
                inputs_embeds=embeds,
                attention_mask=torch.cat([before.mask, mask], 1),
                position_ids=positions,
                **{cache_kwarg(self.model.base_model): before.cache},
                use_cache=True,
            )[0]
            # the prompt tokens up to the position are predicted inside the prefix: constants here
            first = torch.log_softmax(before.last_logits.float(), -1)  # (B, V) predicts the token at the position
            known = [
                row + [float(first[b, s.ids[c]])]
                for b, (row, s, c) in enumerate(zip(before.scored, seqs, cuts, strict=True))
            ]
            terms, _ = self._loss_terms(hidden, input_ids, seqs, [-c for c in cuts], leaf, nll_weight, known)
        terms.proposal_logprobs = first.cpu()
        self.counts.scored_sequences += len(seqs)
        self.counts.count_backward(mask)
        return terms

    def _loss_terms(
        self,
        hidden: torch.Tensor,
        input_ids: torch.Tensor,
        seqs: list[TokenSequence],
        shifts: list[int],
        leaf: torch.Tensor | None,
        nll_weight: float,
        known: list[list[float]],
    ) -> tuple[Terms, torch.Tensor]:
        """CE, NLL and correctness from `hidden` (B, W, D) of `input_ids` (B, W), where sequence index
        i sits at column i + shifts[b]; `known[b]` are log-probs of the prompt's first tokens, given.
        Also returns the (P, V) prompt log-probs computed here, and sets the gradient w.r.t. `leaf`."""
        b = len(seqs)
        done = [len(k) for k in known]
        answer_pos = [
            torch.arange(s.answer.start - 1, s.answer.stop - 1) + k for s, k in zip(seqs, shifts, strict=True)
        ]
        prompt_pos = [
            torch.arange(s.prompt.start + d - 1, s.prompt.stop - 1) + k
            for s, k, d in zip(seqs, shifts, done, strict=True)
        ]
        ans_lp, ans_tgt, ans_row = self._gathered_logprobs(hidden, input_ids, answer_pos, self.answer_temperature)
        pr_lp, pr_tgt, pr_row = self._gathered_logprobs(hidden, input_ids, prompt_pos, 1.0)
        ce = -_row_mean(ans_lp.gather(1, ans_tgt[:, None])[:, 0], ans_row, b)
        given = torch.tensor([sum(k) for k in known], dtype=pr_lp.dtype, device=pr_lp.device)
        n_prompt = torch.tensor([s.prompt.stop - s.prompt.start for s in seqs], dtype=pr_lp.dtype, device=pr_lp.device)
        computed = torch.zeros(b, dtype=pr_lp.dtype, device=pr_lp.device).index_add(
            0, pr_row, pr_lp.gather(1, pr_tgt[:, None])[:, 0]
        )
        nll = -(given + computed) / n_prompt
        hit = (ans_lp.argmax(-1) == ans_tgt).float()
        correct = _row_mean(hit, ans_row, b) == 1.0
        terms = Terms(ce=ce.detach().cpu(), nll=nll.detach().cpu(), correct=correct.cpu())
        if leaf is not None:
            (grad,) = torch.autograd.grad(example_loss(ce, nll, nll_weight).sum(), leaf)
            terms.embed_grad = grad.cpu()  # float32, like the leaf
        return terms, pr_lp.detach()

    def _gathered_logprobs(
        self, hidden: torch.Tensor, input_ids: torch.Tensor, positions: list[torch.Tensor], temperature: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Log-softmax of the logits at `positions[b]` of each row (only there: the vocabulary is large).

        Returns (P, V) log-probs, (P,) the next token at each position, (P,) the row of each position.
        """
        rows = torch.cat([torch.full((len(p),), b) for b, p in enumerate(positions)])
        cols = torch.cat(positions)
        # a device map may put the last layer, the output head and the inputs on different GPUs
        logits = output_logits(self.model, hidden[rows.to(hidden.device), cols.to(hidden.device)])
        targets = input_ids[rows.to(input_ids.device), (cols + 1).to(input_ids.device)]
        return torch.log_softmax(logits / temperature, dim=-1), targets.to(logits.device), rows.to(logits.device)


class GradientPass(Protocol):
    """How the step's loss terms, proposal log-probs and embedding gradient at a position are computed."""

    def terms(self, seqs: list[TokenSequence], position: int, nll_weight: float) -> Terms:
        """Terms of `seqs` with proposal log-probs and the summed embedding gradient at prompt index
        `position`, L = sum_b (ce_b + nll_weight·nll_b)."""
        ...


class FullSequences:
    """The reference's way: each sequence runs whole, one at a time (a proposal forward, then a
    forward + backward)."""

    def __init__(self, forcing: TeacherForcing) -> None:
        self.forcing = forcing

    def terms(self, seqs: list[TokenSequence], position: int, nll_weight: float) -> Terms:
        parts = []
        for b, seq in enumerate(seqs):
            self.forcing.full([seq], None, nll_weight)
            parts.append(([b], self.forcing.full([seq], position, nll_weight)))
        return merge_terms(parts)


class KeptPrefix:
    """Everything before the position comes from `prefix(prompt, position)` (kept, no gradient) and only
    the rest runs forward + backward, every row starting at the position; rows of similar length share a
    chunk of at most `grad_batch_size` (backward keeps every layer's activations of its chunk, so the
    chunk size bounds peak memory)."""

    def __init__(self, forcing: TeacherForcing, prefix: Callable[[Ids, int], Prefilled], grad_batch_size: int) -> None:
        self.forcing = forcing
        self.prefix = prefix
        self.grad_batch_size = grad_batch_size

    def terms(self, seqs: list[TokenSequence], position: int, nll_weight: float) -> Terms:
        before = self.prefix(seqs[0].ids[seqs[0].prompt], position)
        suffix = [len(s.ids) - s.prompt.start - position for s in seqs]
        parts = []
        for chunk in padding_chunks(suffix, self.grad_batch_size):
            parts += run_chunked(
                chunk,
                len(chunk),
                lambda rows: [
                    (rows, self.forcing.suffix([seqs[b] for b in rows], before.rows(rows), position, nll_weight))
                ],
            )
        return merge_terms(parts)


def merge_terms(parts: list[tuple[list[int], Terms]]) -> Terms:
    """One Terms from chunks of (row indices, their terms), rows back in index order."""
    order = torch.tensor([b for rows, _ in parts for b in rows]).argsort()

    def rows(name: str) -> torch.Tensor:
        return torch.cat([getattr(terms, name) for _, terms in parts])[order]

    merged = Terms(ce=rows("ce"), nll=rows("nll"), correct=rows("correct"))
    if parts[0][1].embed_grad is not None:
        merged.proposal_logprobs = rows("proposal_logprobs")
        merged.embed_grad = torch.stack([terms.embed_grad for _, terms in parts]).sum(0)
    return merged


def _put_at(embeds: torch.Tensor, leaf: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """`embeds` (B, W, D) with row b's column cols[b] replaced by `leaf` (D,), differentiably.

    The leaf may be float32 over low-precision embeddings: it is expanded to one copy per row before
    the cast, so each row's gradient is rounded to the embeddings' dtype once and the sum over rows
    (the gradient w.r.t. the leaf) runs in float32."""
    at = torch.zeros(embeds.shape[:2] + (1,), dtype=torch.bool, device=embeds.device)
    at[torch.arange(len(cols), device=embeds.device), cols] = True
    rows = leaf.expand(len(cols), -1).to(embeds.dtype)[:, None, :]  # (B, 1, D)
    return torch.where(at, rows, embeds)


def _row_mean(values: torch.Tensor, rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Mean of `values` (P,) grouped by `rows` (P,) into (n_rows,)."""
    total = torch.zeros(n_rows, dtype=values.dtype, device=values.device).index_add(0, rows, values)
    count = torch.zeros(n_rows, dtype=values.dtype, device=values.device).index_add(0, rows, torch.ones_like(values))
    return total / count.clamp(min=1)
