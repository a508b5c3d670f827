"""The model-facing half of GReaTer: build sequences, generate reasoning, and compute the loss
terms (and the gradient w.r.t. one prompt position) in one batched teacher-forced pass."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from greater.batching import DecodeStats, pack_rows, padding_chunks, run_chunked
from greater.decoding import DRAFT_SLOTS, DecodeRequest, decode_shared
from greater.generation import Generator, TransformersGenerator
from greater.kvcache import Prefilled, cache_kwarg, extend, prefill
from greater.layout import ChatLayout, TokenSequence, build_sequence, encode
from greater.logits import output_logits
from greater.memory import AUTO, fit_batch_sizes
from greater.tasks import Example, Task
from greater.timing import PhaseTimer

Ids = tuple[int, ...]
PROMPT_TOKENS = 64  # prompt length assumed when sizing batches (optimized prompts grow a token at a time)


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
        batch_size: int | str = AUTO,
        grad_batch_size: int | str = AUTO,
        max_new_tokens: int = 256,
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
        # "auto": from free GPU memory for rows this long (CPU: 32 and 4)
        self.batch_size, self.grad_batch_size = fit_batch_sizes(
            model,
            self.row_tokens(max_new_tokens),
            len(examples),
            batch_size,
            grad_batch_size,
            prefix_tokens=self.row_tokens(0),
        )
        self.answer_temperature = answer_temperature
        self.generator = generator or TransformersGenerator(
            model,
            tokenizer,
            batch_size=self.batch_size,
            cached=cached_decoding,
            draft_slots=DRAFT_SLOTS * lookup_decoding,
        )
        # selection with one shared-prefix KV cache needs greater's own decoding loop on this model
        self.shared_cache = (
            cached_decoding and isinstance(self.generator, TransformersGenerator) and self.generator.cached
        )
        self.batched_gradient = batched_gradient
        # what the teacher-forced passes cost, for the benchmark
        self.counts: DecodeStats = getattr(self.generator, "stats", None) or DecodeStats()
        self.pad_id = getattr(self.generator, "pad_id", tokenizer.pad_token_id or 0)
        self._prefix: Prefilled | None = None  # see `prefix`

    def row_tokens(self, max_new_tokens: int, prompt_tokens: int = PROMPT_TOKENS) -> int:
        """Tokens of the longest row with a prompt of `prompt_tokens` and a reasoning of `max_new_tokens`."""
        head = max(len(h[0]) + len(h[1]) for h in self.heads) if self.heads else 0
        follow = len(self.extractor_ids) + max(map(len, self.answer_ids), default=0)
        return head + prompt_tokens + len(self.layout.mid_ids) + max_new_tokens + follow

    # -- sequences and generation ---------------------------------------------------------

    def sequences(self, prompt: Ids, reasonings: list[list[int]] | None = None) -> list[TokenSequence]:
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

    def reason_and_score(
        self, prompts: list[Ids], max_new_tokens: int, timer: PhaseTimer | None = None
    ) -> list[tuple[list[list[int]], Terms]]:
        """Reasoning and loss terms (no gradient) for each prompt on every example; `timer` gets the
        seconds of the selection_generation and selection_scoring phases.

        With the shared cache, the part of the context common to all prompts is prefilled once per
        example and answers are scored by extending the generation's cache; otherwise reasoning is
        generated, then every full sequence is run through the model again.
        """
        timer = timer or PhaseTimer()
        if self.shared_cache:
            with timer("selection_generation"):  # scoring is fused into decoding
                return self._decode_and_score(prompts, max_new_tokens)
        with timer("selection_generation"):
            reasonings = self.reason(prompts, max_new_tokens)
        with timer("selection_scoring"):
            return [(r, self.terms(self.sequences(p, r))) for p, r in zip(prompts, reasonings, strict=True)]

    def _decode_and_score(self, prompts: list[Ids], max_new_tokens: int) -> list[tuple[list[list[int]], Terms]]:
        """`reason_and_score` on the shared cache: one `decode_shared` pass generates and scores."""
        common = self._shared_len(prompts)
        heads = self.prefix(prompts[0], common)
        generator = self.generator
        generator.stats.sequences += len(prompts) * len(self.examples)
        n_answer = [len(a) for a in self.answer_ids]
        examples = list(range(len(self.examples)))

        def run(chunk: list[int]) -> list[tuple[int, int, object]]:
            rows = [
                DecodeRequest(b, p[common:] + self.layout.mid_ids, self.extractor_ids + self.answer_ids[b], n_answer[b])
                for p in prompts
                for b in chunk
            ]
            decoded = decode_shared(
                self.model,
                heads,
                rows,
                max_new_tokens=max_new_tokens,
                stop_ids=generator.stop_ids,
                pad_id=generator.pad_id,
                follow_temperature=self.answer_temperature,
                draft_slots=generator.draft_slots,
                stats=generator.stats,
            )
            n = len(chunk)
            return [(c, chunk[j], decoded[c * n + j]) for c in range(len(prompts)) for j in range(n)]

        per_chunk = max(1, self.batch_size // max(1, len(prompts)))
        flat = run_chunked(examples, per_chunk, run)
        out = []
        for c, prompt in enumerate(prompts):
            cells = sorted((b, row) for cc, b, row in flat if cc == c)
            reasoning = [row.reasoning for _, row in cells]
            ce, nll, correct = [], [], []
            for b, row in cells:
                answer_lp = row.follow_logprobs
                prompt_lp = heads.scored[b] + row.tail_logprobs[: len(prompt) - common]
                ce.append(-sum(answer_lp) / len(answer_lp))
                nll.append(-sum(prompt_lp) / len(prompt_lp))
                correct.append(all(row.follow_hits))
            terms = Terms(ce=torch.tensor(ce), nll=torch.tensor(nll), correct=torch.tensor(correct))
            out.append((reasoning, terms))
        return out

    def prefix(self, prompt: Ids, n: int) -> Prefilled:
        """Every example's sequence up to `prompt[:n]`, run once without gradient and kept: the step's
        gradient pass and its selection share it, and the next step extends it by the token the
        selection chose instead of running it again."""
        rows = [h[0] + h[1] + tuple(prompt[:n]) for h in self.heads]
        done = self._prefix
        if done and all(r[: len(d)] == d and len(r) >= len(d) for r, d in zip(rows, done.ids, strict=True)):
            more = [r[len(d) :] for r, d in zip(rows, done.ids, strict=True)]
            self._prefix = extend(self.model, done, more, self.counts)
        else:
            self._prefix = prefill(self.model, rows, self.pad_id, n, self.counts, self.batch_size)
        return self._prefix

    def _shared_len(self, prompts: list[Ids]) -> int:
        """How much of the prompt the rows of a selection share: the kept prefix when every prompt
        starts with it, else their longest common prefix."""
        done = self._prefix
        if done is not None:
            n = len(done.ids[0]) - len(self.heads[0][0]) - len(self.heads[0][1])
            if n < min(len(p) for p in prompts) and all(p[:n] == prompts[0][:n] for p in prompts):
                return n
        return _common_prefix_len(prompts)

    # -- the teacher-forced pass -----------------------------------------------------------

    def terms(self, seqs: list[TokenSequence], *, position: int | None = None, nll_weight: float = 0.0) -> Terms:
        """Loss terms for `seqs`, in chunks of `batch_size`; with `position`, also proposal log-probs
        and the summed embedding gradient at prompt index `position`.

        Batched (the default), everything before the position comes from `prefix` (no gradient) and
        only the rest runs forward + backward, every row starting at the position; otherwise each
        sequence runs whole, one at a time, as the reference does (a proposal forward, then a forward
        + backward)."""
        if position is None:
            parts = run_chunked(
                list(range(len(seqs))),
                self.batch_size,
                lambda rows: [(rows, self._full_terms([seqs[b] for b in rows], None, nll_weight))],
            )
        elif not self.batched_gradient:
            parts = []
            for b, seq in enumerate(seqs):
                self._full_terms([seq], None, nll_weight)
                parts.append(([b], self._full_terms([seq], position, nll_weight)))
        else:
            before = self.prefix(seqs[0].ids[seqs[0].prompt], position)
            # rows of similar length share a chunk (little padding); backward keeps every layer's
            # activations of its chunk, so the chunk size bounds peak memory
            suffix = [len(s.ids) - s.prompt.start - position for s in seqs]
            parts = []
            for chunk in padding_chunks(suffix, self.grad_batch_size):
                parts += run_chunked(
                    chunk,
                    len(chunk),
                    lambda rows: [
                        (rows, self._suffix_terms([seqs[b] for b in rows], before.rows(rows), position, nll_weight))
                    ],
                )
        merged = _merge(parts)
        merged.prompt_len = seqs[0].prompt.stop - seqs[0].prompt.start
        return merged

    def _full_terms(self, seqs: list[TokenSequence], position: int | None, nll_weight: float) -> Terms:
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

    def _suffix_terms(self, seqs: list[TokenSequence], before: Prefilled, position: int, nll_weight: float) -> Terms:
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
            (grad,) = torch.autograd.grad((ce + nll_weight * nll).sum(), leaf)
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

    def candidate_embeddings(self, token_ids: list[int]) -> torch.Tensor:
        """(C, D) input embeddings of candidate tokens, as the model sees them."""
        ids = torch.tensor(token_ids, device=self.model.device)
        with torch.no_grad():
            return self.model.get_input_embeddings()(ids).float().cpu()


def _merge(parts: list[tuple[list[int], Terms]]) -> Terms:
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


def _common_prefix_len(prompts: list[Ids]) -> int:
    """Length of the longest common prefix of the prompts, leaving at least one token of each."""
    n = min(len(p) for p in prompts) - 1
    for i in range(n):
        if len({p[i] for p in prompts}) > 1:
            return i
    return max(n, 0)
