"""The GReaTer loop: one prompt position per step (see ../shared/docs/greater-algorithm.md).

    reasoning -> candidate proposal -> candidate gradient -> selection -> advance position

`optimize()` is the entry point; the helpers below it are pure functions of tensors.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from greater.engine import Engine, Ids, Terms
from greater.errors import GreaterError
from greater.generation import Generator
from greater.layout import check_roundtrip, decode, encode, encode_prompt
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
    batch_size: int = 16
    patience: int | None = None  # stop when the best score has not improved for this many steps
    reuse_reasoning: bool = True  # the chosen candidate's reasoning is the next step's reasoning
    seed: int = 0

    def validate(self) -> None:
        checks = {
            "steps": self.steps >= 1,
            "top_k": self.top_k >= 1,
            "top_q": self.top_q >= 1,
            "intersect_size": self.intersect_size >= 1,
            "num_select": self.num_select >= 1,
            "max_new_tokens": self.max_new_tokens >= 1,
            "batch_size": self.batch_size >= 1,
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


@dataclass
class Result:
    """The best prompt found (lowest selection score over all prompts scored) and the history."""

    prompt: str
    prompt_ids: list[int]
    score: float
    initial_prompt: str
    initial_score: float
    steps: list[StepRecord]
    stopped: str  # "budget" or "plateau"


def optimize(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    config: GreaterConfig | None = None,
    *,
    train: list[Example] | None = None,
    on_step: Callable[[StepRecord], None] | None = None,
    generator: Generator | None = None,
) -> Result:
    """Run GReaTer on `train` (default: the task's seeded train split) and return the best prompt."""
    config = config or GreaterConfig()
    config.validate()
    if train is None:
        train, _ = task.split(None, None, config.seed)
    if not train:
        raise GreaterError(f"task {task.name!r}: no training examples")
    engine = Engine(
        model,
        tokenizer,
        task,
        train,
        joiner=config.joiner,
        batch_size=config.batch_size,
        answer_temperature=config.answer_temperature,
        generator=generator,
    )
    allowed = allowed_token_mask(tokenizer, model.get_input_embeddings().weight.shape[0])
    prompt: Ids = tuple(encode_prompt(tokenizer, config.init_prompt))
    filler = encode(tokenizer, config.filler)
    if len(filler) != 1:
        raise GreaterError(f"the filler {config.filler!r} must be a single token for this tokenizer")
    init_len = len(prompt)
    cache: dict[Ids, float] = {}
    initial_score = math.nan
    best: tuple[float, Ids] = (math.inf, prompt)
    reasoning: list[list[int]] | None = None
    position = 0
    since_best = 0
    records: list[StepRecord] = []
    stopped = "budget"

    for step in range(1, config.steps + 1):
        started = time.perf_counter()
        timing: dict[str, float] = {}
        warnings: list[str] = []
        rng = random.Random(f"{config.seed}:{step}")

        # 1. reasoning for the current prompt (reused from the previous selection when possible)
        if reasoning is None or not config.reuse_reasoning:
            (reasoning,) = engine.reason([prompt], config.max_new_tokens)
        timing["reasoning"] = _lap(started)

        # 2 + 3. one teacher-forced forward + backward: loss, proposal log-probs, embedding gradient
        t = time.perf_counter()
        terms = engine.terms(engine.sequences(prompt, reasoning), position=position, nll_weight=config.nll_weight)
        current_score = selection_score(terms, config)
        cache[prompt] = current_score
        if step == 1:
            initial_score = current_score
        if current_score < best[0]:
            best = (current_score, prompt)
        exclude = {prompt[position - 1]} if position > 0 else set()
        candidates = propose_candidates(terms.proposal_logprobs, allowed, exclude, prompt[position], config, rng)
        grads = candidate_gradient(terms, engine.candidate_embeddings(candidates), candidates, config.nll_weight)
        loss = float((terms.ce + config.nll_weight * terms.nll).mean())
        timing["gradient"] = _lap(t)

        # 4. selection: re-score the most promising candidates with their own reasoning
        t = time.perf_counter()
        order = torch.argsort(grads).tolist()
        ranked = [(candidates[j], float(grads[j])) for j in order]
        shortlist = shortlist_candidates(tokenizer, prompt, position, [c for c, _ in ranked], config.num_select)
        evaluated: list[dict] = []
        chosen: Ids | None = None
        if config.accept_period_after_half and position >= init_len / 2:
            chosen = next((p for p in shortlist if "." in decode(tokenizer, [p[position]])), None)
            if chosen is not None:
                evaluated.append(
                    {
                        "token": decode(tokenizer, [chosen[position]]),
                        "prompt": _text(tokenizer, chosen),
                        "score": cache.get(chosen),
                        "cached": chosen in cache,
                        "accepted_period": True,
                    }
                )
                reasoning = reasoning if chosen == prompt else None
        if chosen is None:
            fresh = [p for p in shortlist if p not in cache]
            fresh_reasoning = dict(zip(fresh, engine.reason(fresh, config.max_new_tokens), strict=True))
            if fresh:
                for p in fresh:
                    score = selection_score(engine.terms(engine.sequences(p, fresh_reasoning[p])), config)
                    if not math.isfinite(score):
                        warnings.append(f"non-finite score for {_text(tokenizer, p)!r}; candidate skipped")
                        continue
                    cache[p] = score
            for p in shortlist:
                if p in cache:
                    evaluated.append(
                        {
                            "token": decode(tokenizer, [p[position]]),
                            "prompt": _text(tokenizer, p),
                            "score": cache[p],
                            "cached": p not in fresh,
                        }
                    )
            scored = [p for p in shortlist if p in cache]
            chosen = min(scored, key=lambda p: cache[p]) if scored else prompt
            reasoning = reasoning if chosen == prompt else fresh_reasoning.get(chosen)
            if cache.get(chosen, math.inf) < best[0]:
                best = (cache[chosen], chosen)
        timing["selection"] = _lap(t)

        record = StepRecord(
            step=step,
            position=position,
            prompt=_text(tokenizer, prompt),
            loss=loss,
            candidates=[{"token_id": c, "token": decode(tokenizer, [c]), "grad": g} for c, g in ranked],
            evaluated=evaluated,
            chosen=_text(tokenizer, chosen),
            chosen_ids=list(chosen),
            best_score=best[0],
            best_prompt=_text(tokenizer, best[1]),
            seconds=timing,
            warnings=warnings,
        )
        improved = not records or best[0] < records[-1].best_score
        records.append(record)

        # 5. advance the position; grow the prompt at the end of an unfinished sentence
        prompt = chosen
        position, prompt = advance(tokenizer, prompt, position, filler[0])
        if prompt != chosen:
            reasoning = None
        record.seconds["total"] = _lap(started)
        if on_step is not None:
            on_step(record)
        since_best = 0 if improved else since_best + 1
        if config.patience is not None and since_best >= config.patience:
            stopped = "plateau"
            break

    return Result(
        prompt=_text(tokenizer, best[1]),
        prompt_ids=list(best[1]),
        score=best[0],
        initial_prompt=config.init_prompt,
        initial_score=initial_score,
        steps=records,
        stopped=stopped,
    )


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
