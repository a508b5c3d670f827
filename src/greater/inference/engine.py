"""The model-facing half of GReaTer: a model, its tokenizer and one task's examples tokenized once,
answering what a step asks — reasoning (`reason`), loss terms and the gradient at a position (`terms`,
by a `gradient.GradientPass`) and the candidates' reasoning and scores (`reason_and_score`, by a
`SelectionScorer`). Generation goes only through the `generation.Generator` interface."""

from __future__ import annotations

import copy
from typing import Protocol

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from greater.inference.batching import DecodeStats, run_chunked
from greater.inference.decoding import DRAFT_SLOTS, DecodeRequest
from greater.inference.generation import (
    Generator,
    SharedPrefixDecoder,
    TransformersGenerator,
    as_generator,
    pad_token_id,
)
from greater.inference.gradient import FullSequences, GradientPass, KeptPrefix, TeacherForcing, Terms, merge_terms
from greater.inference.kvcache import Prefilled, extend, prefill
from greater.inference.layout import (
    AFTER_QUESTION,
    ChatFormat,
    ChatLayout,
    Framed,
    Ids,
    TokenSequence,
    build_sequence,
    cut_at_marker,
    encode,
    encode_prompt,
)
from greater.inference.memory import AUTO, fit_batch_sizes
from greater.inference.timing import PhaseTimer
from greater.tasks import Example, Task

ReasonedTerms = tuple[list[list[int]], Terms]  # a prompt's reasoning on every example and its loss terms
# the reasoning cap every scorer defaults to (the search's GreaterConfig.max_new_tokens, `evaluate`, `greater
# evaluate`, an Engine): the reference's 1,024 in selection, so that a prompt is scored as the search scored it
MAX_NEW_TOKENS = 1024
PROMPT_TOKENS = 64  # prompt length assumed when sizing batches (optimized prompts grow a token at a time)


class Engine:
    """A model, its tokenizer and a fixed list of examples of one task, tokenized once.

    `batched_gradient` picks the gradient pass (`KeptPrefix`, else the reference's `FullSequences`);
    `cached_decoding` with a generator that has a shared-prefix decoder picks selection by
    `SharedPrefixDecode`, else by `Regenerate`. `counts` are the generator's counters, which the
    teacher-forced passes add to.
    """

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
        max_new_tokens: int = MAX_NEW_TOKENS,
        size_tokens: int | None = None,
        answer_temperature: float = 1.0,
        generator: Generator | None = None,
        cached_decoding: bool = True,
        batched_gradient: bool = True,
        lookup_decoding: bool = True,
        static_cache: bool = False,
        placement: str = AFTER_QUESTION,
        chat_format: ChatFormat | None = None,
    ) -> None:
        """`max_new_tokens`: the reasoning cap, every call's default; `size_tokens` (default: the cap):
        the longest generation the "auto" batch sizes must leave room for (a baseline's meta-prompt
        replies can be longer than its reasonings). `chat_format`: a program's text around the prompt
        and the reply (`greater.dspy`); its reasoning is cut at the format's stop after generation,
        so selection regenerates (the shared-prefix decoder scores the answer where generation ends)."""
        self.model = model
        self.tokenizer = tokenizer
        self.task = task
        self.joiner = joiner
        self.max_new_tokens = max_new_tokens
        self.answer_temperature = answer_temperature
        self.cached_decoding = cached_decoding and chat_format is None
        self.batched_gradient = batched_gradient
        self.layout = ChatLayout.from_tokenizer(tokenizer, placement, chat_format)
        self.extractor_ids: Ids = tuple(encode(tokenizer, self.layout.extractor_text(task.extractor)))
        self._bind(examples)
        # "auto": from free GPU memory for rows this long (CPU: 32 and 4)
        self.batch_size, self.grad_batch_size = fit_batch_sizes(
            model,
            self.row_tokens(max_new_tokens if size_tokens is None else size_tokens),
            len(examples),
            batch_size,
            grad_batch_size,
            prefix_tokens=self.row_tokens(0),
        )
        self.generator = (
            as_generator(generator)
            if generator is not None
            else TransformersGenerator(
                model,
                tokenizer,
                batch_size=self.batch_size,
                cached=cached_decoding,
                draft_slots=DRAFT_SLOTS * lookup_decoding,
                static=static_cache,
            )
        )
        self.counts: DecodeStats = self.generator.stats
        self.pad_id = pad_token_id(model, tokenizer)
        self.forcing = TeacherForcing(model, self.pad_id, answer_temperature, self.counts)
        self._bind_passes()

    def on(self, examples: list[Example]) -> Engine:
        """This engine — model, generator (and its counters), batch sizes, cap and switches — over other
        examples of its task: a run's dev pass and test scoring use its engine this way."""
        other = copy.copy(self)
        other._bind(examples)
        other._bind_passes()
        return other

    def _bind(self, examples: list[Example]) -> None:
        """The examples and what is tokenized from them once."""
        self.examples = examples
        self.framed: list[Framed] = [self.layout.frame(self.tokenizer, ex.question, self.joiner) for ex in examples]
        self.answer_ids: list[Ids] = [tuple(encode(self.tokenizer, self.task.target_text(ex))) for ex in examples]

    def _bind_passes(self) -> None:
        """The passes that keep state about the examples: the shared prefix, the gradient pass, selection."""
        self.prefix = SharedPrefix(self.model, [f.head for f in self.framed], self.pad_id, self.counts, self.batch_size)
        self.gradient_pass: GradientPass = (
            KeptPrefix(self.forcing, self.prefix, self.grad_batch_size)
            if self.batched_gradient
            else FullSequences(self.forcing)
        )
        decoder = self.generator.shared_prefix() if self.cached_decoding else None
        self.selection: SelectionScorer = SharedPrefixDecode(self, decoder) if decoder is not None else Regenerate(self)

    def row_tokens(self, max_new_tokens: int, prompt_tokens: int = PROMPT_TOKENS) -> int:
        """Tokens of the longest row with a prompt of `prompt_tokens` and a reasoning of `max_new_tokens`."""
        longest = max(self.framed, key=lambda f: len(f.head) + len(f.tail), default=Framed((), (), 0))
        follow = len(self.extractor_ids) + max(map(len, self.answer_ids), default=0)
        return self.layout.row_tokens(longest, prompt_tokens, max_new_tokens, follow)

    def encode_prompt(self, prompt: str) -> Ids:
        """A prompt's token ids as they stand where this engine places prompts."""
        return tuple(encode_prompt(self.tokenizer, prompt, self.layout.prompt_lead))

    # -- sequences and generation ---------------------------------------------------------

    def sequences(self, prompt: Ids, reasonings: list[list[int]] | None = None) -> list[TokenSequence]:
        """Full teacher-forcing sequences (or bare generation contexts when `reasonings` is None)."""
        if reasonings is None:
            return [build_sequence(self.layout, f, prompt) for f in self.framed]
        return [
            build_sequence(self.layout, f, prompt, r, self.extractor_ids, a)
            for f, r, a in zip(self.framed, reasonings, self.answer_ids, strict=True)
        ]

    def reason(self, prompts: list[Ids], max_new_tokens: int | None = None) -> list[list[list[int]]]:
        """Greedy reasoning (capped at `max_new_tokens`, default the engine's cap) for every
        (prompt, example), all prompts in one generation call."""
        contexts = [seq.ids for prompt in prompts for seq in self.sequences(prompt)]
        flat = self.generate_reasoning(contexts, max_new_tokens or self.max_new_tokens)
        n = len(self.examples)
        return [flat[i * n : (i + 1) * n] for i in range(len(prompts))]

    def generate_reasoning(self, contexts: list[Ids], max_new_tokens: int) -> list[list[int]]:
        """Greedy reasoning after each context, cut where the chat format's stop appears."""
        flat = self.generator.generate(contexts, max_new_tokens)
        stop = self.layout.chat_format.reply.stop if self.layout.chat_format is not None else None
        return flat if stop is None else [cut_at_marker(self.tokenizer, r, stop) for r in flat]

    def answer(self, prompt: Ids, reasonings: list[list[int]], max_new_tokens: int) -> list[str]:
        """What the model writes after reasoning + extractor, as text."""
        contexts = [
            build_sequence(self.layout, f, prompt, r, self.extractor_ids).ids
            for f, r in zip(self.framed, reasonings, strict=True)
        ]
        outs = self.generator.generate(contexts, max_new_tokens)
        return [self.tokenizer.decode(o, skip_special_tokens=True) for o in outs]

    def reason_and_score(
        self, prompts: list[Ids], max_new_tokens: int | None = None, timer: PhaseTimer | None = None
    ) -> list[ReasonedTerms]:
        """Reasoning (capped at `max_new_tokens`, default the engine's cap) and loss terms (no gradient)
        for each prompt on every example, by `selection`; `timer` gets the seconds of the
        selection_generation and selection_scoring phases."""
        return self.selection.score(prompts, max_new_tokens or self.max_new_tokens, timer or PhaseTimer())

    def terms(self, seqs: list[TokenSequence], *, position: int | None = None, nll_weight: float = 0.0) -> Terms:
        """Loss terms for `seqs`, in chunks of `batch_size`; with `position`, also proposal log-probs
        and the summed embedding gradient at prompt index `position`, by `gradient_pass`."""
        if position is None:
            merged = merge_terms(
                run_chunked(
                    list(range(len(seqs))),
                    self.batch_size,
                    lambda rows: [(rows, self.forcing.full([seqs[b] for b in rows], None, nll_weight))],
                )
            )
        else:
            merged = self.gradient_pass.terms(seqs, position, nll_weight)
        merged.prompt_len = seqs[0].prompt.stop - seqs[0].prompt.start
        return merged

    def candidate_embeddings(self, token_ids: list[int]) -> torch.Tensor:
        """(C, D) input embeddings of candidate tokens, as the model sees them."""
        ids = torch.tensor(token_ids, device=self.model.device)
        with torch.no_grad():
            return self.model.get_input_embeddings()(ids).float().cpu()


class SharedPrefix:
    """Every example's head (chat prefix + question) followed by the first n prompt tokens, run once
    without gradient and kept: the step's gradient pass and its selection share it, and the next step
    extends it by the token the selection chose instead of running it again."""

    def __init__(
        self, model: PreTrainedModel, heads: list[Ids], pad_id: int, counts: DecodeStats, batch_size: int
    ) -> None:
        self.model, self.heads, self.pad_id, self.counts, self.batch_size = model, heads, pad_id, counts, batch_size
        self._done: Prefilled | None = None

    def __call__(self, prompt: Ids, n: int) -> Prefilled:
        """The heads followed by `prompt[:n]`: the kept rows extended when they lead up to them, else the
        heads prefilled and extended.

        The rows are always built the same way, the heads in one prefill and then one prompt token per
        `extend`, so that the cache's numbers depend only on `prompt[:n]` and not on the steps that led
        there: a resumed run, which starts with no kept rows, computes bit for bit what the uninterrupted
        run kept (one prefill of heads + prompt rounds differently in bfloat16).
        """
        rows = [h + tuple(prompt[:n]) for h in self.heads]
        done = self._done
        if not (done and all(r[: len(d)] == d for r, d in zip(rows, done.ids, strict=True))):
            done = prefill(self.model, self.heads, self.pad_id, 0, self.counts, self.batch_size)
        for at in range(len(done.ids[0]) - len(self.heads[0]), n):
            done = extend(self.model, done, [(prompt[at],)] * len(self.heads), self.counts)
        self._done = done
        return done

    def shared_len(self, prompts: list[Ids]) -> int:
        """How much of the prompt the rows of a selection share: the kept prefix when every prompt
        starts with it, else their longest common prefix."""
        done = self._done
        if done is not None:
            n = len(done.ids[0]) - len(self.heads[0])
            if n < min(len(p) for p in prompts) and all(p[:n] == prompts[0][:n] for p in prompts):
                return n
        return _common_prefix_len(prompts)


class SelectionScorer(Protocol):
    """How selection gets each candidate prompt's reasoning and loss terms (no gradient)."""

    def score(self, prompts: list[Ids], max_new_tokens: int, timer: PhaseTimer) -> list[ReasonedTerms]: ...


class Regenerate:
    """Generate every candidate's reasoning (any `Generator`), then run each full sequence through the
    model again, teacher-forced."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def score(self, prompts: list[Ids], max_new_tokens: int, timer: PhaseTimer) -> list[ReasonedTerms]:
        engine = self.engine
        with timer("selection_generation"):
            reasonings = engine.reason(prompts, max_new_tokens)
        with timer("selection_scoring"):
            return [(r, engine.terms(engine.sequences(p, r))) for p, r in zip(prompts, reasonings, strict=True)]


class SharedPrefixDecode:
    """The prompt part all candidates share is prefilled once per example (the kept prefix); each
    candidate's reasoning is decoded on a copy of it and its answer scored by extending the
    generation's cache, in one `decoder.decode_shared` pass (scoring is fused into generation)."""

    def __init__(self, engine: Engine, decoder: SharedPrefixDecoder) -> None:
        self.engine = engine
        self.decoder = decoder

    def score(self, prompts: list[Ids], max_new_tokens: int, timer: PhaseTimer) -> list[ReasonedTerms]:
        with timer("selection_generation"):
            return self._decode_and_score(prompts, max_new_tokens)

    def _decode_and_score(self, prompts: list[Ids], max_new_tokens: int) -> list[ReasonedTerms]:
        engine = self.engine
        common = engine.prefix.shared_len(prompts)
        heads = engine.prefix(prompts[0], common)
        self.decoder.stats.sequences += len(prompts) * len(engine.examples)
        n_answer = [len(a) for a in engine.answer_ids]
        examples = list(range(len(engine.examples)))

        def run(chunk: list[int]) -> list[tuple[int, int, object]]:
            rows = [
                DecodeRequest(
                    b,
                    p[common:] + engine.framed[b].tail + engine.layout.mid_ids,
                    engine.extractor_ids + engine.answer_ids[b],
                    n_answer[b],
                )
                for p in prompts
                for b in chunk
            ]
            decoded = self.decoder.decode_shared(heads, rows, max_new_tokens, engine.answer_temperature)
            n = len(chunk)
            return [(c, chunk[j], decoded[c * n + j]) for c in range(len(prompts)) for j in range(n)]

        per_chunk = max(1, engine.batch_size // max(1, len(prompts)))
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


def _common_prefix_len(prompts: list[Ids]) -> int:
    """Length of the longest common prefix of the prompts, leaving at least one token of each."""
    n = min(len(p) for p in prompts) - 1
    for i in range(n):
        if len({p[i] for p in prompts}) > 1:
            return i
    return max(n, 0)
