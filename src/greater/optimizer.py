"""The GReaTer loop: one prompt position per step (see ../shared/docs/greater-algorithm.md).

    reasoning -> candidate proposal -> candidate gradient -> selection -> advance position

`optimize()` is the entry point; the helpers below it are pure functions of tensors.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from greater.decoding import DecodeStats
from greater.device import peak_memory, reset_peak_memory
from greater.engine import Engine, Ids, Terms
from greater.errors import GreaterError
from greater.generation import Generator
from greater.layout import check_roundtrip, decode, encode, encode_prompt
from greater.memory import is_size
from greater.tasks import Example, Task

DEFAULT_INIT_PROMPT = "proper logical reasoning and think step by step. Finally give the actual correct answer."
_SENTENCE_END = (".", "!", "?")
_PUNCTUATION_CANDIDATES = {".", ",", ";", ":", "!", "?"}


@dataclass
class GreaterConfig:
    """Every hyperparameter of a run. Defaults follow the paper (and its reference code where the
    paper is silent); `max_new_tokens` caps reasoning, which the paper lets run to EOS."""

    steps: int = 100
    init_prompt: str = DEFAULT_INIT_PROMPT
    joiner: str = ". Use"  # the user turn is question + joiner + " " + prompt, as in the reference
    top_k: int = 11  # per-example top-k for proposal
    top_q: int = 5  # number of random intersections whose union forms the candidate set
    intersect_size: int = 5  # examples per intersection
    min_candidates: int = 6  # grow k while fewer candidates than this
    k_growth: int = 2
    num_select: int = 3  # candidates (most negative gradient) re-scored with fresh reasoning
    nll_weight: float = 0.2  # λ: weight of the prompt's NLL in the loss
    answer_temperature: float = 0.2  # answer logits are divided by this before the cross-entropy
    selection: str = "loss"  # "loss": CE + λ·NLL (paper); "accuracy": errors + selection_nll_weight·NLL
    selection_nll_weight: float = 0.02
    accept_period_after_half: bool = True  # past half the initial length, take a "." candidate at once
    filler: str = " and"  # token appended when the position passes the end of an unfinished prompt
    max_new_tokens: int = 256
    # rows per generation / scoring batch, and per forward + backward chunk (bounds activation memory);
    # "auto": from free GPU memory (greater.memory), 32 and 4 on a CPU
    batch_size: int | str = "auto"
    grad_batch_size: int | str = "auto"
    patience: int | None = None  # stop when the best score has not improved for this many steps
    # speed-ups; each gives the same result as when off (see tests/test_speedups.py)
    reuse_reasoning: bool = True  # the chosen candidate's reasoning is the next step's reasoning
    # one batched forward + backward from the position on (rows of similar length together) gives loss,
    # proposals and gradient; the no-gradient part before the position is kept and shared with selection
    batched_gradient: bool = True
    cached_decoding: bool = True  # own KV-cache decoding: shared prefix, finished rows leave, cached scoring
    lookup_decoding: bool = True  # prompt-lookup drafts checked against greedy decoding (with cached_decoding)
    seed: int = 0

    def validate(self) -> None:
        checks = {
            "steps": self.steps >= 1,
            "top_k": self.top_k >= 1,
            "top_q": self.top_q >= 1,
            "intersect_size": self.intersect_size >= 1,
            "num_select": self.num_select >= 1,
            "max_new_tokens": self.max_new_tokens >= 1,
            "batch_size": is_size(self.batch_size),
            "grad_batch_size": is_size(self.grad_batch_size),
            "answer_temperature": self.answer_temperature > 0,
            "selection": self.selection in ("loss", "accuracy"),
            "patience": self.patience is None or self.patience >= 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise GreaterError(f"invalid setting {bad[0]}={getattr(self, bad[0])!r}")


@dataclass
class StepRecord:
    """What happened in one step; one line of steps.jsonl."""

    step: int
    position: int
    prompt: str
    loss: float
    candidates: list[dict]  # {"token_id", "token", "grad"}, most negative gradient first
    evaluated: list[dict]  # {"token", "prompt", "score", "cached"}
    chosen: str
    chosen_ids: list[int]
    best_score: float
    best_prompt: str
    seconds: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    # the step's peak memory in MiB and what it measures (greater.device.peak_memory): on CUDA
    # torch.cuda.max_memory_allocated, on a CPU the process's peak RSS
    peak_memory: dict = field(default_factory=dict)


@dataclass
class Result:
    """The best prompt found (lowest selection score over all prompts scored) and the history."""

    prompt: str
    prompt_ids: list[int]
    score: float
    initial_prompt: str
    initial_score: float
    steps: list[StepRecord]  # the steps run by this call (a resumed run starts after its checkpoint)
    stopped: str  # "budget" or "plateau"
    counts: DecodeStats = field(default_factory=DecodeStats)  # model work done by this call


@dataclass
class RunState:
    """Everything needed to continue a run exactly; plain JSON (no pickle) via `to_json`/`from_json`."""

    prompt: list[int]
    init_len: int
    position: int = 0
    step: int = 0
    best_score: float = math.inf
    best_prompt: list[int] = field(default_factory=list)
    initial_score: float = math.nan
    since_best: int = 0
    scores: dict[Ids, float] = field(default_factory=dict)  # selection-score cache
    reasoning: list[list[int]] | None = None  # the current prompt's reasoning, when already generated

    def to_json(self) -> dict:
        data = asdict(self)
        data["scores"] = [[list(k), v] for k, v in self.scores.items()]
        return data

    @classmethod
    def from_json(cls, data: dict) -> RunState:
        data = dict(data)
        data["scores"] = {tuple(k): float(v) for k, v in data["scores"]}
        return cls(**data)

    def record_score(self, prompt: Ids, score: float) -> None:
        self.scores[prompt] = score
        if score < self.best_score:
            self.best_score, self.best_prompt = score, list(prompt)


def optimize(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    config: GreaterConfig | None = None,
    *,
    train: list[Example] | None = None,
    on_step: Callable[[StepRecord, RunState], None] | None = None,
    generator: Generator | None = None,
    state: RunState | None = None,
) -> Result:
    """Run GReaTer on `train` (default: the task's seeded train split) and return the best prompt.

    `on_step(record, state)` is called after every step (the CLI writes steps.jsonl and a checkpoint
    there); passing a saved `state` continues that run exactly where it stopped.
    """
    config = config or GreaterConfig()
    config.validate()
    if train is None:
        train, _ = task.split(None, None, config.seed)
    if not train:
        raise GreaterError(f"task {task.name!r}: no training examples")
    engine = _engine(model, tokenizer, task, train, config, generator)
    config = replace(config, batch_size=engine.batch_size, grad_batch_size=engine.grad_batch_size)  # "auto" fitted
    filler = encode(tokenizer, config.filler)
    if len(filler) != 1:
        raise GreaterError(f"the filler {config.filler!r} must be a single token for this tokenizer")
    if state is None:
        init = encode_prompt(tokenizer, config.init_prompt)
        state = RunState(prompt=init, init_len=len(init), best_prompt=list(init))
    step = _Step(engine, config, allowed_token_mask(tokenizer, model.get_input_embeddings().weight.shape[0]))
    records: list[StepRecord] = []
    stopped = "budget"
    while state.step < config.steps:
        if config.patience is not None and state.since_best >= config.patience:
            stopped = "plateau"
            break
        previous_best = state.best_score
        record = step.run(state)
        position, prompt = advance(tokenizer, tuple(state.prompt), state.position, filler[0])
        if list(prompt) != state.prompt:
            state.reasoning = None  # the prompt grew: its reasoning must be generated
        state.prompt, state.position = list(prompt), position
        state.since_best = 0 if state.best_score < previous_best else state.since_best + 1
        records.append(record)
        if on_step is not None:
            on_step(record, state)
    return Result(
        prompt=_text(tokenizer, state.best_prompt),
        prompt_ids=list(state.best_prompt),
        score=state.best_score,
        initial_prompt=config.init_prompt,
        initial_score=state.initial_score,
        steps=records,
        stopped=stopped,
        counts=engine.counts,
    )


def resolve_batch_sizes(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, task: Task, train: list[Example], config: GreaterConfig
) -> GreaterConfig:
    """`config` with "auto" batch sizes replaced by numbers fitted to the free device memory for these
    examples (see greater.memory); the CLI stores the numbers in run.json, so a resumed run uses them."""
    if config.batch_size != "auto" and config.grad_batch_size != "auto":
        return config
    engine = _engine(model, tokenizer, task, train, config)
    return replace(config, batch_size=engine.batch_size, grad_batch_size=engine.grad_batch_size)


def _engine(model, tokenizer, task: Task, train: list[Example], config: GreaterConfig, generator=None) -> Engine:
    """The engine of a run with `config` (its "auto" batch sizes fitted to free memory by the engine)."""
    return Engine(
        model,
        tokenizer,
        task,
        train,
        joiner=config.joiner,
        batch_size=config.batch_size,
        grad_batch_size=config.grad_batch_size,
        max_new_tokens=config.max_new_tokens,
        answer_temperature=config.answer_temperature,
        generator=generator,
        cached_decoding=config.cached_decoding,
        batched_gradient=config.batched_gradient,
        lookup_decoding=config.lookup_decoding,
    )


class _Step:
    """One GReaTer step at `state.position`; mutates the state and returns the step's record."""

    def __init__(self, engine: Engine, config: GreaterConfig, allowed: torch.Tensor) -> None:
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.config = config
        self.allowed = allowed

    def run(self, state: RunState) -> StepRecord:
        config, engine = self.config, self.engine
        device = engine.model.device
        reset_peak_memory(device)
        started = time.perf_counter()
        state.step += 1
        timing: dict[str, float] = {}
        warnings: list[str] = []
        prompt, position = tuple(state.prompt), state.position
        rng = random.Random(f"{config.seed}:{state.step}")

        # 1. reasoning for the current prompt (reused from the previous selection when possible)
        if state.reasoning is None or not config.reuse_reasoning:
            (state.reasoning,) = engine.reason([prompt], config.max_new_tokens)
        timing["reasoning"] = _lap(started)

        # 2 + 3. one teacher-forced forward + backward: loss, proposal log-probs, embedding gradient
        t = time.perf_counter()
        terms = engine.terms(engine.sequences(prompt, state.reasoning), position=position, nll_weight=config.nll_weight)
        timing["gradient"] = _lap(t)
        t = time.perf_counter()
        loss = float((terms.ce + config.nll_weight * terms.nll).mean())
        if math.isfinite(loss):
            state.record_score(prompt, selection_score(terms, config))
        else:
            warnings.append(f"non-finite loss for the current prompt at step {state.step}")
        if state.step == 1:
            state.initial_score = state.scores.get(prompt, math.nan)
        exclude = {prompt[position - 1]} if position > 0 else set()
        candidates = propose_candidates(terms.proposal_logprobs, self.allowed, exclude, prompt[position], config, rng)
        grads = candidate_gradient(terms, engine.candidate_embeddings(candidates), candidates, config.nll_weight)
        ranked = [(candidates[j], float(grads[j])) for j in torch.argsort(grads).tolist()]
        if not all(math.isfinite(g) for _, g in ranked):
            warnings.append("non-finite candidate gradients were dropped")
            ranked = [(c, g) for c, g in ranked if math.isfinite(g)]
        timing["proposal"] = _lap(t)

        # 4. selection: re-score the most promising candidates with their own reasoning
        t = time.perf_counter()
        clock = dict(engine.clock)
        shortlist = shortlist_candidates(self.tokenizer, prompt, position, [c for c, _ in ranked], config.num_select)
        chosen, evaluated = self._select(state, prompt, position, shortlist, warnings)
        for phase in clock:
            timing[phase] = round(engine.clock[phase] - clock[phase], 4)
        timing["selection"] = _lap(t)
        state.prompt = list(chosen)
        timing["total"] = _lap(started)
        return StepRecord(
            step=state.step,
            position=position,
            prompt=_text(self.tokenizer, prompt),
            loss=loss,
            candidates=[{"token_id": c, "token": decode(self.tokenizer, [c]), "grad": g} for c, g in ranked],
            evaluated=evaluated,
            chosen=_text(self.tokenizer, chosen),
            chosen_ids=list(chosen),
            best_score=state.best_score,
            best_prompt=_text(self.tokenizer, state.best_prompt),
            seconds=timing,
            warnings=warnings,
            peak_memory=peak_memory(device),
        )

    def _select(
        self, state: RunState, prompt: Ids, position: int, shortlist: list[Ids], warnings: list[str]
    ) -> tuple[Ids, list[dict]]:
        """The chosen prompt and what was evaluated; sets `state.reasoning` to the chosen prompt's."""
        config, engine, tok = self.config, self.engine, self.tokenizer

        def entry(p: Ids, cached: bool, **extra) -> dict:
            token = decode(tok, [p[position]])
            return {"token": token, "prompt": _text(tok, p), "score": state.scores.get(p), "cached": cached} | extra

        if config.accept_period_after_half and position >= state.init_len / 2:
            period = next((p for p in shortlist if "." in decode(tok, [p[position]])), None)
            if period is not None:
                if period != prompt:
                    state.reasoning = None
                return period, [entry(period, period in state.scores, accepted_period=True)]
        fresh = [p for p in shortlist if p not in state.scores]
        scored_fresh = engine.reason_and_score(fresh, config.max_new_tokens) if fresh else []
        fresh_reasoning = {p: reasoning for p, (reasoning, _) in zip(fresh, scored_fresh, strict=True)}
        for p, (_, terms) in zip(fresh, scored_fresh, strict=True):
            score = selection_score(terms, config)
            if math.isfinite(score):
                state.record_score(p, score)
            else:
                warnings.append(f"non-finite score for {_text(tok, p)!r}; candidate skipped")
        scored = [p for p in shortlist if p in state.scores]
        evaluated = [entry(p, p not in fresh) for p in scored]
        chosen = min(scored, key=lambda p: state.scores[p]) if scored else prompt
        if chosen != prompt:
            state.reasoning = fresh_reasoning.get(chosen)
        return chosen, evaluated


def selection_score(terms: Terms, config: GreaterConfig) -> float:
    """Lower is better. "loss": mean(CE + λ·NLL); "accuracy": error rate + selection_nll_weight·mean NLL."""
    if config.selection == "loss":
        return float((terms.ce + config.nll_weight * terms.nll).mean())
    return float(1.0 - terms.correct.float().mean() + config.selection_nll_weight * terms.nll.mean())


def allowed_token_mask(tokenizer: PreTrainedTokenizerBase, vocab_rows: int) -> torch.Tensor:
    """(V,) bool: tokens a prompt may use — ASCII words (optionally space-led) and sentence punctuation."""
    special = set(tokenizer.all_special_ids)
    texts = tokenizer.batch_decode([[i] for i in range(min(len(tokenizer), vocab_rows))])
    mask = torch.zeros(vocab_rows, dtype=torch.bool)
    for i, text in enumerate(texts):
        core = text.strip()
        ok = text.isascii() and (core.isalpha() or core in _PUNCTUATION_CANDIDATES) and text == text.rstrip()
        mask[i] = ok and i not in special
    return mask


def propose_candidates(
    logprobs: torch.Tensor,
    allowed: torch.Tensor,
    exclude: set[int],
    current: int,
    config: GreaterConfig,
    rng: random.Random,
) -> list[int]:
    """Candidate tokens for one position: the union over `top_q` draws of the intersection of the
    top-k sets of `intersect_size` random examples; k grows by `k_growth` until at least
    `min_candidates` survive. `logprobs` is (B, V); `current` is always included."""
    scores = logprobs.clone()
    scores[:, ~allowed[: scores.shape[1]]] = -math.inf
    if exclude:
        scores[:, sorted(exclude)] = -math.inf
    n_examples = scores.shape[0]
    k = config.top_k
    k_max = int(allowed.sum())
    while True:
        top_sets = [set(row.tolist()) for row in scores.topk(min(k, k_max), dim=1).indices]
        found: set[int] = set()
        for _ in range(config.top_q):
            members = rng.sample(range(n_examples), min(config.intersect_size, n_examples))
            found |= set.intersection(*(top_sets[m] for m in members))
        if len(found) >= config.min_candidates or k >= k_max:
            break
        k += config.k_growth
    found.add(current)
    return sorted(found)


def candidate_gradient(
    terms: Terms, cand_embeds: torch.Tensor, candidates: list[int], nll_weight: float
) -> torch.Tensor:
    """(C,) L2-normalised dL/d one_hot over candidates, summed over examples.

    With e = one_hot @ E[C] at the position, dL/d one_hot_c = E[c]·dL/de; the prompt-NLL term at the
    position itself has the one-hot as its target, adding λ·(-log p(c | prefix)) / len(prompt).
    """
    grad = cand_embeds @ terms.embed_grad.float()
    candidate_nll = -terms.proposal_logprobs[:, candidates]  # (B, C)
    grad = grad + nll_weight * candidate_nll.sum(0) / terms.prompt_len
    return grad / grad.norm().clamp(min=1e-12)


def shortlist_candidates(
    tokenizer: PreTrainedTokenizerBase, prompt: Ids, position: int, ranked: list[int], limit: int
) -> list[Ids]:
    """The first `limit` prompts, in gradient order, that survive tokenize→decode→tokenize."""
    out: list[Ids] = []
    for token in ranked:
        candidate = prompt[:position] + (token,) + prompt[position + 1 :]
        if token != prompt[position]:
            try:
                check_roundtrip(tokenizer, candidate)
            except GreaterError:
                continue
        out.append(candidate)
        if len(out) == limit:
            break
    return out


def advance(tokenizer: PreTrainedTokenizerBase, prompt: Ids, position: int, filler: int) -> tuple[int, Ids]:
    """Next position; past the end, wrap after a finished sentence, else grow by the filler token."""
    position += 1
    if position < len(prompt):
        return position, prompt
    if decode(tokenizer, [prompt[-1]]).strip().endswith(_SENTENCE_END):
        return 0, prompt
    return position, prompt + (filler,)


def _text(tokenizer: PreTrainedTokenizerBase, ids: Ids) -> str:
    return decode(tokenizer, ids).strip()


def _lap(since: float) -> float:
    return round(time.perf_counter() - since, 4)


def config_dict(config: GreaterConfig) -> dict:
    return asdict(config)
