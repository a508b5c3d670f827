"""The model-facing half of GReaTer: build sequences, generate reasoning, and compute the loss
terms (and the gradient w.r.t. one prompt position) in one batched teacher-forced pass."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from greater.decoding import DRAFT_SLOTS, DecodeStats, cache_kwarg, decode_shared, output_logits, pack_rows
from greater.generation import Generator, TransformersGenerator, run_chunked
from greater.layout import ChatLayout, Sequence, build_sequence, encode
from greater.tasks import Example, Task

Ids = tuple[int, ...]


@dataclass
class Terms:
    """Per-example loss terms of one prompt, and (when a position was given) what the step needs.

    ce: (B,) answer cross-entropy, mean over answer tokens, logits divided by the temperature.
    nll: (B,) the prompt's negative log-likelihood, mean over prompt tokens.
    correct: (B,) whether every answer token is the argmax under teacher forcing.
    proposal_logprobs: (B, V) log-probabilities of the token at the position, given what precedes it.
    embed_grad: (D,) dL/de for the embedding e at the position, L = sum_b (ce_b + λ·nll_b).
    """

    ce: torch.Tensor
    nll: torch.Tensor
    correct: torch.Tensor
    proposal_logprobs: torch.Tensor | None = None
    embed_grad: torch.Tensor | None = None
    prompt_len: int = 0


class Engine:
    """A model, its tokenizer and a fixed list of examples of one task, tokenized once."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        task: Task,
        examples: list[Example],
        *,
        joiner: str,
        batch_size: int = 32,
        grad_batch_size: int = 4,
        answer_temperature: float = 1.0,
        generator: Generator | None = None,
        cached_decoding: bool = True,
        batched_gradient: bool = True,
        lookup_decoding: bool = True,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.task = task
        self.examples = examples
        self.layout = ChatLayout.from_tokenizer(tokenizer)
        self.heads = [self.layout.encode_head(tokenizer, ex.question + joiner) for ex in examples]
        self.answer_ids: list[Ids] = [tuple(encode(tokenizer, " " + task.answer_text(ex))) for ex in examples]
        self.extractor_ids: Ids = tuple(encode(tokenizer, " " + task.extractor))
        self.batch_size = batch_size
        self.grad_batch_size = grad_batch_size
        self.answer_temperature = answer_temperature
        self.generator = generator or TransformersGenerator(
            model, tokenizer, batch_size=batch_size, cached=cached_decoding, draft_slots=DRAFT_SLOTS * lookup_decoding
        )
        # selection with one shared-prefix KV cache needs greater's own decoding loop on this model
        self.shared_cache = (
            cached_decoding and isinstance(self.generator, TransformersGenerator) and self.generator.cached
        )
        self.batched_gradient = batched_gradient
        # what the teacher-forced passes cost, for the benchmark; seconds per selection sub-phase
        self.counts: DecodeStats = getattr(self.generator, "stats", None) or DecodeStats()
        self.clock: dict[str, float] = {"selection_generation": 0.0, "selection_scoring": 0.0}
        self.pad_id = getattr(self.generator, "pad_id", tokenizer.pad_token_id or 0)

    # -- sequences and generation ---------------------------------------------------------

    def sequences(self, prompt: Ids, reasonings: list[list[int]] | None = None) -> list[Sequence]:
        """Full teacher-forcing sequences (or bare generation contexts when `reasonings` is None)."""
        if reasonings is None:
            return [build_sequence(self.layout, h, prompt) for h in self.heads]
        return [
            build_sequence(self.layout, h, prompt, r, self.extractor_ids, a)
            for h, r, a in zip(self.heads, reasonings, self.answer_ids, strict=True)
        ]

    def reason(self, prompts: list[Ids], max_new_tokens: int) -> list[list[list[int]]]:
        """Greedy reasoning for every (prompt, example), all prompts in one generation call."""
        contexts = [seq.ids for prompt in prompts for seq in self.sequences(prompt)]
        flat = self.generator.generate(contexts, max_new_tokens)
        n = len(self.examples)
        return [flat[i * n : (i + 1) * n] for i in range(len(prompts))]

    def answer(self, prompt: Ids, reasonings: list[list[int]], max_new_tokens: int) -> list[str]:
        """What the model writes after reasoning + extractor, as text."""
        contexts = [
            build_sequence(self.layout, h, prompt, r, self.extractor_ids).ids
            for h, r in zip(self.heads, reasonings, strict=True)
        ]
        outs = self.generator.generate(contexts, max_new_tokens)
        return [self.tokenizer.decode(o, skip_special_tokens=True) for o in outs]

    def reason_and_score(self, prompts: list[Ids], max_new_tokens: int) -> list[tuple[list[list[int]], Terms]]:
        """Reasoning and loss terms (no gradient) for each prompt on every example.

        With the shared cache, the part of the context common to all prompts is prefilled once per
        example and answers are scored by extending the generation's cache; otherwise reasoning is
        generated, then every full sequence is run through the model again.
        """
        started = time.perf_counter()
        if not self.shared_cache:
            reasonings = self.reason(prompts, max_new_tokens)
            self.clock["selection_generation"] += time.perf_counter() - started
            started = time.perf_counter()
            out = [(r, self.terms(self.sequences(p, r))) for p, r in zip(prompts, reasonings, strict=True)]
            self.clock["selection_scoring"] += time.perf_counter() - started
            return out
        common = _common_prefix_len(prompts)
        generator = self.generator
        generator.stats.sequences += len(prompts) * len(self.examples)
        n_answer = [len(a) for a in self.answer_ids]
        examples = list(range(len(self.examples)))

        def run(chunk: list[int]) -> list[tuple[int, int, object, list[float]]]:
            heads = [self.heads[b][0] + self.heads[b][1] + prompts[0][:common] for b in chunk]
            rows = [
                (h, p[common:] + self.layout.mid_ids, self.extractor_ids + self.answer_ids[b])
                for p in prompts
                for h, b in enumerate(chunk)
            ]
            decoded, head_scores = decode_shared(
                self.model,
                heads,
                rows,
                max_new_tokens=max_new_tokens,
                stop_ids=generator.stop_ids,
                pad_id=generator.pad_id,
                n_head_scored=common,
                follow_temperature=self.answer_temperature,
                draft_slots=generator.draft_slots,
                stats=generator.stats,
            )
            n = len(chunk)
            return [
                (c, chunk[j], decoded[c * n + j], head_scores[j] if common else [])
                for c in range(len(prompts))
                for j in range(n)
            ]

        per_chunk = max(1, self.batch_size // max(1, len(prompts)))
        flat = run_chunked(examples, per_chunk, run)
        out = []
        for c, prompt in enumerate(prompts):
            cells = sorted((b, row, head) for cc, b, row, head in flat if cc == c)
            reasoning = [row.reasoning for _, row, _ in cells]
            ce, nll, correct = [], [], []
            for b, row, head in cells:
                answer_lp = row.follow_logprobs[-n_answer[b] :]
                prompt_lp = head + row.tail_logprobs[: len(prompt) - common]
                ce.append(-sum(answer_lp) / len(answer_lp))
                nll.append(-sum(prompt_lp) / len(prompt_lp))
                correct.append(all(row.follow_hits[-n_answer[b] :]))
            terms = Terms(ce=torch.tensor(ce), nll=torch.tensor(nll), correct=torch.tensor(correct))
            out.append((reasoning, terms))
        self.clock["selection_generation"] += time.perf_counter() - started  # scoring is fused into decoding
        return out

    # -- the teacher-forced pass -----------------------------------------------------------

    def terms(self, seqs: list[Sequence], *, position: int | None = None, nll_weight: float = 0.0) -> Terms:
        """Loss terms for `seqs`, in chunks of `batch_size`; with `position`, also proposal log-probs
        and the summed embedding gradient at prompt index `position`."""
        if position is not None and not self.batched_gradient:
            # as the reference does: a proposal forward, then a forward + backward, one example at a time
            parts = []
            for seq in seqs:
                self._chunk_terms([seq], None, nll_weight)
                parts.append(self._chunk_terms([seq], position, nll_weight))
        else:
            # backward keeps every layer's activations of its chunk: a smaller chunk bounds peak memory
            size = self.batch_size if position is None else self.grad_batch_size
            parts = run_chunked(seqs, size, lambda chunk: [self._chunk_terms(chunk, position, nll_weight)])
        merged = Terms(
            ce=torch.cat([p.ce for p in parts]),
            nll=torch.cat([p.nll for p in parts]),
            correct=torch.cat([p.correct for p in parts]),
            prompt_len=seqs[0].prompt.stop - seqs[0].prompt.start,
        )
        if position is not None:
            merged.proposal_logprobs = torch.cat([p.proposal_logprobs for p in parts])
            merged.embed_grad = torch.stack([p.embed_grad for p in parts]).sum(0)
        return merged

    def _chunk_terms(self, seqs: list[Sequence], position: int | None, nll_weight: float) -> Terms:
        device = self.model.device
        # Every token before the position is independent of the embedding there. On the batched path
        # they run without gradient into a KV cache and only the rest runs forward + backward. Each row
        # is shifted right so that all rows' positions fall in one column `split`.
        cuts = [s.prompt.start + position for s in seqs] if position is not None else [0] * len(seqs)
        split = max(cuts) if position is not None and self.batched_gradient else 0
        shift = [split - c if split else 0 for c in cuts]
        input_ids, mask = pack_rows([s.ids for s in seqs], self.pad_id, device, offsets=shift)
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        embeds = self.model.get_input_embeddings()(input_ids)
        leaf = None
        if position is not None:
            cols = torch.tensor([c + k for c, k in zip(cuts, shift, strict=True)], device=device)
            rows = torch.arange(len(seqs), device=device)
            leaf = embeds[0, int(cols[0])].detach().clone().requires_grad_(True)
            at_position = torch.zeros(embeds.shape[:2] + (1,), dtype=torch.bool, device=device)
            at_position[rows, cols] = True
            embeds = torch.where(at_position, leaf, embeds)
        base = self.model.base_model
        cache = {}
        if split:
            kw = cache_kwarg(base)
            cache = {kw: DynamicCache(), "use_cache": True}
            with torch.no_grad():
                before = base(
                    inputs_embeds=embeds[:, :split],
                    attention_mask=mask[:, :split],
                    position_ids=position_ids[:, :split],
                    **cache,
                )[0]
        with torch.set_grad_enabled(leaf is not None):
            hidden = base(
                inputs_embeds=embeds[:, split:],
                attention_mask=mask,
                position_ids=position_ids[:, split:],
                **(cache or {"use_cache": False}),
            )[0]
            if split:
                hidden = torch.cat([before, hidden], 1)
            answer_pos = [
                torch.arange(s.answer.start - 1, s.answer.stop - 1) + k for s, k in zip(seqs, shift, strict=True)
            ]
            prompt_pos = [
                torch.arange(s.prompt.start - 1, s.prompt.stop - 1) + k for s, k in zip(seqs, shift, strict=True)
            ]
            ans_lp, ans_tgt, ans_row = self._gathered_logprobs(hidden, input_ids, answer_pos, self.answer_temperature)
            pr_lp, pr_tgt, pr_row = self._gathered_logprobs(hidden, input_ids, prompt_pos, 1.0)
            b = len(seqs)
            ans_tok_lp = ans_lp.gather(1, ans_tgt[:, None])[:, 0]
            ce = -_row_mean(ans_tok_lp, ans_row, b)
            nll = -_row_mean(pr_lp.gather(1, pr_tgt[:, None])[:, 0], pr_row, b)
            hit = (ans_lp.argmax(-1) == ans_tgt).float()
            correct = _row_mean(hit, ans_row, b) == 1.0
            terms = Terms(ce=ce.detach().cpu(), nll=nll.detach().cpu(), correct=correct.cpu())
            if leaf is not None:
                (grad,) = torch.autograd.grad((ce + nll_weight * nll).sum(), leaf)
                offsets = torch.tensor([0] + [len(p) for p in prompt_pos], device=pr_lp.device).cumsum(0)[:-1]
                terms.embed_grad = grad.float().cpu()
                terms.proposal_logprobs = pr_lp.detach()[offsets + position].cpu()
        self.counts.scored_sequences += len(seqs)
        if leaf is not None:
            self.counts.count_forward(mask[:, :split])
            self.counts.backward_tokens += int(mask[:, split:].sum())
            self.counts.padded_slots += int((mask[:, split:] == 0).sum())
        else:
            self.counts.count_forward(mask)
        return terms

    def _gathered_logprobs(
        self, hidden: torch.Tensor, input_ids: torch.Tensor, positions: list[torch.Tensor], temperature: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Log-softmax of the logits at `positions[b]` of each row (only there: the vocabulary is large).

        Returns (P, V) log-probs, (P,) the next token at each position, (P,) the row of each position.
        """
        rows = torch.cat([torch.full((len(p),), b) for b, p in enumerate(positions)]).to(hidden.device)
        cols = torch.cat(positions).to(hidden.device)
        logits = output_logits(self.model, hidden[rows, cols]).float()
        return torch.log_softmax(logits / temperature, dim=-1), input_ids[rows, cols + 1], rows

    def candidate_embeddings(self, token_ids: list[int]) -> torch.Tensor:
        """(C, D) input embeddings of candidate tokens, as the model sees them."""
        ids = torch.tensor(token_ids, device=self.model.device)
        with torch.no_grad():
            return self.model.get_input_embeddings()(ids).float().cpu()


def _row_mean(values: torch.Tensor, rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Mean of `values` (P,) grouped by `rows` (P,) into (n_rows,)."""
    total = torch.zeros(n_rows, dtype=values.dtype, device=values.device).index_add(0, rows, values)
    count = torch.zeros(n_rows, dtype=values.dtype, device=values.device).index_add(0, rows, torch.ones_like(values))
    return total / count.clamp(min=1)


def _common_prefix_len(prompts: list[Ids]) -> int:
    """Length of the longest common prefix of the prompts, leaving at least one token of each."""
    n = min(len(p) for p in prompts) - 1
    for i in range(n):
        if len({p[i] for p in prompts}) > 1:
            return i
    return max(n, 0)
