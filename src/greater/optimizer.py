"""The GReaTer loop: one prompt position per step (see ../shared/docs/greater-algorithm.md).

    reasoning -> candidate proposal -> candidate gradient -> selection -> advance position

`optimize()` is the entry point; the helpers below it are pure functions of tensors.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from greater.errors import GreaterError, refuse_changed, setting_name
from greater.evaluate import DEFAULT_JOINER, accuracy_on, best_on_dev
from greater.inference.batching import DecodeStats
from greater.inference.device import peak_memory, reset_peak_memory
from greater.inference.engine import MAX_NEW_TOKENS, Engine
from greater.inference.generation import Generator
from greater.inference.gradient import Terms
from greater.inference.layout import AFTER_QUESTION, PLACEMENTS, ChatFormat, Ids, decode, encode, encode_prompt
from greater.inference.memory import is_size
from greater.inference.timing import STEP_PHASES, PhaseTimer
from greater.settings import CONFIG_FLAGS
from greater.tasks import Example, Task

DEFAULT_INIT_PROMPT = "proper logical reasoning and think step by step. Finally give the actual correct answer."
ZS_COT_PROMPT = "Let's think step by step."
ZS_COT_JOINER = "."  # zero-shot CoT reads "<question>. Let's think step by step."
# starting prompts `GreaterConfig.starts` may name, each as it reads after ZS-CoT's joiner "." (the baselines'
# framing): the paper's P1 with the "Use" of its joiner moved into the prompt, ZS-CoT's, and a direct answer
NAMED_STARTS = {
    "p1": "Use " + DEFAULT_INIT_PROMPT,
    "zs-cot": ZS_COT_PROMPT,
    "direct": "Give only the answer, without explanation.",
}
_SENTENCE_END = (".", "!", "?")
_PUNCTUATION_CANDIDATES = {".", ",", ";", ":", "!", "?"}
_log = logging.getLogger("greater")


SELECTION_RULES = ("errors-then-loss", "reference", "loss")


@dataclass
class GreaterConfig:
    """Every hyperparameter of a run. Defaults are the reference's launch scripts for the paper's runs
    (docs/fidelity.md lists each, the reference's value and where greater differs, and why)."""

    steps: int = 100
    init_prompt: str = DEFAULT_INIT_PROMPT
    joiner: str = DEFAULT_JOINER  # the user turn is question + joiner + " " + prompt, as in the reference
    top_k: int = 40  # per-example top-k for proposal
    top_q: int = 6  # number of random intersections whose union forms the candidate set
    intersect_size: int = 5  # examples per intersection
    min_candidates: int = 6  # grow k while fewer candidates than this
    k_growth: int = 2
    num_select: int = 3  # candidates (most negative gradient) re-scored with fresh reasoning
    nll_weight: float = 0.2  # λ: weight of the prompt's NLL in the loss
    answer_temperature: float = 0.2  # answer logits are divided by this before the cross-entropy
    # "errors-then-loss": fewest training errors, ties broken by CE + λ·NLL; "reference": error rate +
    # selection_nll_weight·NLL; "loss": CE + λ·NLL (see `selection_score`)
    selection: str = "errors-then-loss"
    selection_nll_weight: float = 0.02
    # add λ·NLL of each candidate at the position to its gradient; the reference's NLL targets are the
    # fixed prompt ids, so it has no such term
    candidate_nll: bool = False
    accept_period_after_half: bool = True  # past half the initial length, take a "." candidate once scored
    filler: str = "_"  # token appended when the position passes the end of an unfinished prompt
    max_new_tokens: int = MAX_NEW_TOKENS
    keep_top: int = 10  # best distinct prompts (by selection score) scored on the dev set at the end
    # also score the starting prompt on dev, so a search that overfits its training examples cannot
    # return a prompt worse on dev than where it started (not in the paper; off by default)
    dev_keeps_initial: bool = False
    # rows per generation / scoring batch, and per forward + backward chunk (bounds activation memory);
    # "auto": from free GPU memory (greater.inference.memory), 32 and 4 on a CPU
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
    # that loop on a KV cache allocated once per batch, no drafting (with cached_decoding): for GPUs, where
    # the default loop's per-token cache copies dominate; off until measured there (bench/gpu.sh)
    static_cache: bool = False
    seed: int = 0
    # where the prompt goes in the chat (greater.inference.layout): after the question in the user turn (the paper's),
    # before it, or as the system turn's text
    placement: str = AFTER_QUESTION
    # search variants beyond the paper (docs/fidelity.md "Search variants"); off, the reference's search.
    # keep_best: when a step's chosen prompt scores worse on training than the best prompt of its path so
    # far, the next step goes on from that best prompt (at the next position) instead of the worse one
    keep_best: bool = False
    # more starting prompts after `init_prompt` (texts, or names of NAMED_STARTS): the steps are shared out
    # among the starts in turn, each a path of its own, and the dev pass takes finalists from every path
    starts: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.selection == "accuracy":  # the earlier name of the reference's rule
            self.selection = "reference"

    @classmethod
    def from_args(cls, args: object, stored: dict | None = None) -> GreaterConfig:
        """The config a command line asks for: the fields of `CONFIG_FLAGS` it sets (attributes of
        `args`, None when not given) over the defaults, validated. With `stored` (a resumed run's
        config) the run's own config, and a given flag that contradicts it is refused."""
        given = {flag: getattr(args, flag) for flag in CONFIG_FLAGS if getattr(args, flag, None) is not None}
        if stored is None:
            config = cls(**given)
            config.validate()
            return config
        refuse_changed(given, {flag: stored.get(flag, getattr(cls(), flag)) for flag in given})  # newer: default
        return cls(**stored)

    def validate(self) -> None:
        """Raise `GreaterError` naming the first setting out of range."""
        checks = {
            "steps": self.steps >= 1,
            "top_k": self.top_k >= 1,
            "top_q": self.top_q >= 1,
            "intersect_size": self.intersect_size >= 1,
            "num_select": self.num_select >= 1,
            "max_new_tokens": self.max_new_tokens >= 1,
            "batch_size": is_size(self.batch_size),
            "grad_batch_size": is_size(self.grad_batch_size),
            "keep_top": self.keep_top >= 1,
            "answer_temperature": self.answer_temperature > 0,
            "selection": self.selection in SELECTION_RULES,
            "patience": self.patience is None or self.patience >= 1,
            "filler": bool(self.filler.strip()),
            "placement": self.placement in PLACEMENTS,
            "starts": all(text.strip() for text in self.starts),
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise GreaterError(f"invalid setting {bad[0]}={getattr(self, bad[0])!r}")
        if len(self.starts) >= self.steps:
            raise GreaterError(
                f"{1 + len(self.starts)} starting prompts need at least one step each; "
                f"{setting_name('steps')} is {self.steps}"
            )
        prompts = self.start_prompts()
        repeated = [text for i, text in enumerate(prompts) if text in prompts[:i]]
        if repeated:
            raise GreaterError(f"the starting prompt {repeated[0]!r} is given twice (each start takes steps)")
        named = [text for text in self.starts if text in NAMED_STARTS]
        if named and self.joiner != ZS_COT_JOINER:
            raise GreaterError(
                f"the named start {named[0]!r} reads after the joiner {ZS_COT_JOINER!r}, not {self.joiner!r}; "
                f"set {setting_name('joiner')} {ZS_COT_JOINER!r} or give the start's text"
            )

    def start_prompts(self) -> list[str]:
        """Every path's starting prompt: `init_prompt`, then `starts` (names replaced by their text)."""
        return [self.init_prompt, *(NAMED_STARTS.get(text, text) for text in self.starts)]

    def path_steps(self) -> list[int]:
        """Steps per path (`start_prompts`' order): `steps` shared out as evenly as it divides, the
        first paths taking one more."""
        paths = 1 + len(self.starts)
        return [self.steps // paths + (i < self.steps % paths) for i in range(paths)]


@dataclass
class Candidate:
    """A token proposed for the step's position and its L2-normalised gradient (lower is better)."""

    token_id: int
    token: str
    grad: float


@dataclass
class Evaluated:
    """A shortlisted prompt scored in selection: the token at the position, the prompt as text and ids,
    its selection score, whether that score came from the cache, and whether it was taken as the first
    candidate holding a "." (`GreaterConfig.accept_period_after_half`)."""

    token: str
    prompt: str
    prompt_ids: list[int]
    score: float
    cached: bool
    accepted_period: bool = False

    def to_json(self) -> dict:
        """As in steps.jsonl: "accepted_period" only where it is true."""
        data = asdict(self)
        if not self.accepted_period:
            del data["accepted_period"]
        return data


@dataclass
class StepRecord:
    """What happened in one step; `to_json` is one line of steps.jsonl."""

    step: int
    position: int
    prompt: str
    loss: float
    train_errors: int  # training examples the current prompt gets wrong (answer not the argmax)
    candidates: list[Candidate]  # most negative gradient first
    evaluated: list[Evaluated]  # in gradient order
    chosen: str
    chosen_ids: list[int]
    best_score: float
    best_prompt: str
    seconds: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    # the step's peak memory in MiB and what it measures (greater.inference.device.peak_memory): on CUDA
    # torch.cuda.max_memory_allocated, on a CPU the process's peak RSS
    peak_memory: dict = field(default_factory=dict)
    # search variants (GreaterConfig.keep_best, .starts): the path of this step, and whether the next step
    # goes on from the path's best prompt rather than from `chosen`
    path: int = 0
    back_to_best: bool = False

    def to_json(self) -> dict:
        """The record as one line of steps.jsonl; "path" and "back_to_best" only where they are set."""
        data = asdict(self) | {"evaluated": [e.to_json() for e in self.evaluated]}
        for name in ("path", "back_to_best"):
            if not data[name]:
                del data[name]
        return data


@dataclass
class Result:
    """The chosen prompt and the history. With a dev set, the `keep_top` best prompts by selection
    score are scored on it and the best on dev is chosen; without one, the lowest selection score."""

    prompt: str
    prompt_ids: list[int]
    score: float  # the chosen prompt's selection score on the training examples
    initial_prompt: str
    initial_score: float
    steps: list[StepRecord]  # the steps run by this call (a resumed run starts after its checkpoint)
    stopped: str  # "budget" or "plateau"
    # model work done by this call (DecodeStats is public: a summary of them would only drop what
    # bench/step.py and methods.Usage read)
    counts: DecodeStats = field(default_factory=DecodeStats)
    dev_accuracy: float | None = None  # the chosen prompt's, when a dev set was given
    finalists: list[dict] = field(default_factory=list)  # {"prompt", "prompt_ids", "score", "dev_accuracy"}


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
    dev_accuracy: dict[Ids, float] = field(default_factory=dict)  # the dev pass so far
    stopped: str = ""  # why the steps ended ("budget", "plateau"), once they have
    # with several starts (`GreaterConfig.starts`): the path being searched, the step it began after, and
    # the path that first scored each prompt of a later path (a prompt not in `origin` is path 0's)
    path: int = 0
    path_start: int = 0
    origin: dict[Ids, int] = field(default_factory=dict)

    def to_json(self) -> dict:
        """Plain JSON; the path fields only where a run has several starts (a one-path run's file is as before)."""
        data = asdict(self)
        for name in ("scores", "dev_accuracy", "origin"):
            data[name] = [[list(k), v] for k, v in getattr(self, name).items()]
        if not (self.path or self.origin):
            for name in ("path", "path_start", "origin"):
                del data[name]
        return data

    @classmethod
    def from_json(cls, data: dict) -> RunState:
        data = dict(data)
        for name in ("scores", "dev_accuracy"):
            data[name] = {tuple(k): float(v) for k, v in data.get(name, [])}
        data["origin"] = {tuple(k): int(v) for k, v in data.get("origin", [])}
        return cls(**data)

    def record_score(self, prompt: Ids, score: float, returnable: bool = True) -> None:
        """Cache a prompt's selection score; only a `returnable` prompt can become the best."""
        if self.path and prompt not in self.scores:
            self.origin[prompt] = self.path
        self.scores[prompt] = score
        if returnable and score < self.best_score:
            self.best_score, self.best_prompt = score, list(prompt)

    def ranked(self, returnable: Callable[[Ids], bool], path: int | None = None) -> list[Ids]:
        """The returnable prompts with a finite selection score, lowest first; `path`: of that path only."""
        ranked = sorted((p for p, s in self.scores.items() if math.isfinite(s)), key=self.scores.__getitem__)
        return [p for p in ranked if (path is None or self.origin.get(p, 0) == path) and returnable(p)]

    def finalists(self, n: int, returnable: Callable[[Ids], bool], paths: int = 1) -> list[Ids]:
        """The `n` returnable prompts with the lowest selection scores, best first; with several `paths`,
        taken from each path in turn (its best, then each path's second, ...), so that every start has
        finalists and not only the one whose near-copies score best."""
        if paths == 1:
            return self.ranked(returnable)[:n]
        per_path = [self.ranked(returnable, path) for path in range(paths)]
        longest = max(map(len, per_path), default=0)
        return [ranked[i] for i in range(longest) for ranked in per_path if i < len(ranked)][:n]

    def path_best(self, returnable: Callable[[Ids], bool]) -> tuple[float, Ids | None]:
        """The current path's best selection score and prompt so far (one path: the run's best)."""
        if not (self.path or self.origin):
            return self.best_score, tuple(self.best_prompt) if self.best_prompt else None
        ranked = self.ranked(returnable, self.path)
        return (self.scores[ranked[0]], ranked[0]) if ranked else (math.inf, None)


def optimize(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    config: GreaterConfig | None = None,
    *,
    train: list[Example] | None = None,
    dev: list[Example] | None = None,
    on_step: Callable[[StepRecord, RunState], None] | None = None,
    on_dev: Callable[[RunState], None] | None = None,
    generator: Generator | None = None,
    state: RunState | None = None,
    engine: Engine | None = None,
) -> Result:
    """Run GReaTer on `train` (default: the task's seeded train split) and return the chosen prompt.

    With `dev` examples, the `keep_top` best prompts by selection score are scored on them at the
    end (greedy reasoning, accuracy) and the best on dev is the result. `on_step(record, state)` is
    called after every step and `on_dev(state)` after every prompt of the dev pass (the CLI writes a
    checkpoint there); passing a saved `state` continues that run exactly where it stopped. `engine`:
    one `build_engine` made for `train` with this config (a `Run` makes one and scores its test
    examples with it too); `model`, `tokenizer`, `train` and `generator` are then the engine's.
    """
    config = config or GreaterConfig()
    config.validate()
    if engine is None:
        if train is None:
            train, _ = task.split(None, None, config.seed)
        if not train:
            raise GreaterError(f"task {task.name!r}: no training examples")
        engine = build_engine(model, tokenizer, task, train, config, generator)
    config = fitted_config(config, engine)
    counted = replace(engine.counts)  # a run's engine may have scored test examples before
    if state is None:
        init = list(engine.encode_prompt(config.init_prompt))
        state = RunState(prompt=init, init_len=len(init), best_prompt=list(init))
    returnable = Returnable(tokenizer, engine.layout.prompt_lead)
    step = _Step(engine, config, returnable)
    records: list[StepRecord] = []
    while not step.stops(state):
        records.append(step.run(state))
        if on_step is not None:
            on_step(records[-1], state)
    chosen, finalists = list(state.best_prompt), []
    if dev:
        chosen, finalists = _dev_choice(engine, config, dev, state, returnable, on_dev)
    return Result(
        prompt=prompt_text(tokenizer, chosen),
        prompt_ids=chosen,
        score=state.scores.get(tuple(chosen), state.best_score),
        initial_prompt=config.init_prompt,
        initial_score=state.initial_score,
        steps=records,
        stopped=state.stopped,
        counts=engine.counts - counted,
        dev_accuracy=state.dev_accuracy.get(tuple(chosen)) if dev else None,
        finalists=finalists,
    )


def _next_path(state: RunState, start: list[int]) -> None:
    """Begin the next path (`GreaterConfig.starts`) from `start`, at its first position."""
    state.path += 1
    state.path_start = state.step
    state.prompt, state.init_len, state.position = list(start), len(start), 0
    state.reasoning, state.since_best = None, 0


def _keep_best(state: RunState, returnable: Returnable, started: Ids, reasoning: list | None) -> bool:
    """`GreaterConfig.keep_best`: where the step chose a prompt scoring worse than its path's best, go on
    from the best (at the step's position, clamped to its length; `advance` then moves on) and return
    True. `started` and `reasoning`: the step's starting prompt and its reasoning, kept where it is the best."""
    best_score, best = state.path_best(returnable)
    if best is None or state.scores.get(tuple(state.prompt), math.inf) <= best_score:
        return False
    state.prompt = list(best)
    state.position = min(state.position, len(best) - 1)
    state.reasoning = reasoning if best == started else None
    return True


def dev_finalists(state: RunState, config: GreaterConfig, returnable: Returnable) -> list[Ids]:
    """The prompts a dev pass chooses among: the `keep_top` best by selection score (from every start's
    path in turn), or the best prompt where none has a finite score."""
    return state.finalists(config.keep_top, returnable, 1 + len(config.starts)) or [tuple(state.best_prompt)]


def _dev_choice(
    engine: Engine,
    config: GreaterConfig,
    dev: list[Example],
    state: RunState,
    returnable: Returnable,
    on_dev: Callable[[RunState], None] | None,
) -> tuple[list[int], list[dict]]:
    """Score the `keep_top` best prompts on `dev` (those not scored before a resume) and return the
    best on dev (ties: the lower selection score) with every finalist's record."""
    tokenizer = engine.tokenizer
    finalists = dev_finalists(state, config, returnable)
    appended = None
    if config.dev_keeps_initial:
        initial = engine.encode_prompt(config.init_prompt)
        if initial not in finalists:
            finalists.append(appended := initial)  # last: on a dev tie the searched prompt stays the choice
    for ids in finalists:
        if ids in state.dev_accuracy:
            continue
        text = prompt_text(tokenizer, ids)
        state.dev_accuracy[ids] = accuracy_on(engine, dev, text)
        if on_dev is not None:
            on_dev(state)
    # a dev tie goes to the lower selection score (the kept initial prompt last): several starts' finalists
    # come path by path, not in score order (with one path the order is the same as `finalists`')
    by_score = sorted(finalists, key=lambda ids: (ids == appended, state.scores.get(ids, math.inf)))
    best = by_score[best_on_dev([state.dev_accuracy[ids] for ids in by_score])]
    records = [
        {
            "prompt": prompt_text(tokenizer, ids),
            "prompt_ids": list(ids),
            "score": state.scores.get(ids),
            "dev_accuracy": state.dev_accuracy[ids],
        }
        for ids in finalists
    ]
    return list(best), records


class Returnable:
    """Whether a prompt's ids are exactly what its text encodes to (`encode_prompt(prompt_text(ids))`):
    only such a prompt can be returned, since what is returned is text. Memoised."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, lead: str = " ") -> None:
        self.tokenizer, self.lead = tokenizer, lead  # lead: `ChatLayout.prompt_lead`
        self._known: dict[Ids, bool] = {}

    def __call__(self, ids: Ids) -> bool:
        if ids not in self._known:
            try:
                again = encode_prompt(self.tokenizer, prompt_text(self.tokenizer, ids), self.lead)
                self._known[ids] = again == list(ids)
            except GreaterError:
                self._known[ids] = False
        return self._known[ids]


def build_engine(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    train: list[Example],
    config: GreaterConfig,
    generator: Generator | None = None,
    chat_format: ChatFormat | None = None,
) -> Engine:
    """The engine of a GReaTer run on `train` with `config`, its "auto" batch sizes fitted to the free
    device memory (see greater.inference.memory; `fitted_config` puts the numbers in the config a run stores, so
    a resumed run uses them). `optimize(engine=...)` searches with it and `Engine.on` scores other
    examples with the same model calls and counters. `chat_format`: a program's chat (`greater.dspy`)."""
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
        static_cache=config.static_cache,
        placement=config.placement,
        chat_format=chat_format,
    )


def fitted_config(config: GreaterConfig, engine: Engine) -> GreaterConfig:
    """`config` with the batch sizes `engine` uses ("auto" replaced by the fitted numbers)."""
    return replace(config, batch_size=engine.batch_size, grad_batch_size=engine.grad_batch_size)


class _Step:
    """One GReaTer step (`run`) and the rules that end the steps (`stops`); both mutate the run's state."""

    def __init__(self, engine: Engine, config: GreaterConfig, returnable: Returnable) -> None:
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.config = config
        self.returnable = returnable
        self.allowed = allowed_token_mask(self.tokenizer, engine.model.get_input_embeddings().weight.shape[0])
        self.filler = filler_token(self.tokenizer, config.filler)
        self.starts = [list(engine.encode_prompt(text)) for text in config.start_prompts()]  # checked up front
        self.path_steps = config.path_steps()

    def run(self, state: RunState) -> StepRecord:
        config, engine = self.config, self.engine
        device = engine.model.device
        reset_peak_memory(device)
        timer = PhaseTimer(STEP_PHASES)
        state.step += 1
        warnings: list[str] = []
        prompt, position, reasoning = tuple(state.prompt), state.position, state.reasoning
        previous_best, _ = state.path_best(self.returnable)
        with timer("total"):
            # 1. reasoning for the current prompt (reused from the previous selection when possible)
            with timer("reasoning"):
                if state.reasoning is None or not config.reuse_reasoning:
                    (state.reasoning,) = engine.reason([prompt])
                    reasoning = state.reasoning
            # 2. one teacher-forced forward + backward: loss, proposal log-probs, embedding gradient
            with timer("gradient"):
                seqs = engine.sequences(prompt, state.reasoning)
                terms = engine.terms(seqs, position=position, nll_weight=config.nll_weight)
            # 3. candidate tokens from the proposal, ranked by the gradient
            with timer("proposal"):
                loss = self._score_current(state, prompt, terms, warnings)
                ranked = self._rank_candidates(state, prompt, position, terms, warnings)
            # 4. selection: re-score the most promising candidates with their own reasoning
            with timer("selection"):
                tokens = [c for c, _ in ranked]
                lead = self.engine.layout.prompt_lead
                shortlist = shortlist_candidates(self.tokenizer, prompt, position, tokens, config.num_select, lead)
                chosen, evaluated = self._select(state, prompt, position, shortlist, warnings, timer)
        record = StepRecord(
            step=state.step,
            position=position,
            prompt=prompt_text(self.tokenizer, prompt),
            loss=loss,
            train_errors=int((~terms.correct).sum()),
            candidates=[Candidate(c, decode(self.tokenizer, [c]), g) for c, g in ranked],
            evaluated=evaluated,
            chosen=prompt_text(self.tokenizer, chosen),
            chosen_ids=list(chosen),
            best_score=state.best_score,
            best_prompt=prompt_text(self.tokenizer, state.best_prompt),
            seconds=timer.seconds(),
            warnings=warnings,
            peak_memory=peak_memory(device),
            path=state.path,
        )
        # 5. the chosen prompt goes on (or, keeping the best, the path's best), at the next position
        state.prompt = list(chosen)
        if config.keep_best:
            record.back_to_best = _keep_best(state, self.returnable, prompt, reasoning)
        state.position, grown = advance(self.tokenizer, tuple(state.prompt), state.position, self.filler)
        if list(grown) != state.prompt:
            state.prompt, state.reasoning = list(grown), None  # the prompt grew: its reasoning must be generated
        state.since_best = 0 if state.path_best(self.returnable)[0] < previous_best else state.since_best + 1
        return record

    def stops(self, state: RunState) -> bool:
        """The stop rules, checked before each step: a path ends when its share of the steps is spent or
        its best has not improved for `patience` steps; then the next start begins, and after the last
        path the run stops ("budget" once every step is spent, else "plateau")."""
        if state.stopped:
            return True
        plateau = self.config.patience is not None and state.since_best >= self.config.patience
        if state.step - state.path_start < self.path_steps[state.path] and not plateau:
            return False
        if state.path + 1 < len(self.starts):
            _next_path(state, self.starts[state.path + 1])
            return False
        state.stopped = "budget" if state.step >= self.config.steps else "plateau"
        return True

    def _score_current(self, state: RunState, prompt: Ids, terms: Terms, warnings: list[str]) -> float:
        """The current prompt's loss; its selection score goes into the state's cache (and, at step 1,
        is the initial score)."""
        loss = float(terms.loss(self.config.nll_weight).mean())
        if math.isfinite(loss):
            state.record_score(prompt, selection_score(terms, self.config), self.returnable(prompt))
        else:
            warnings.append(f"non-finite loss for the current prompt at step {state.step}")
        if state.step == 1:
            state.initial_score = state.scores.get(prompt, math.nan)
        return loss

    def _rank_candidates(
        self, state: RunState, prompt: Ids, position: int, terms: Terms, warnings: list[str]
    ) -> list[tuple[int, float]]:
        """(token, gradient) of the proposed candidates at `position`, most negative gradient first;
        non-finite gradients are dropped."""
        config, engine = self.config, self.engine
        rng = random.Random(f"{config.seed}:{state.step}")
        exclude = {prompt[position - 1]} if position > 0 else set()
        candidates = propose_candidates(terms.proposal_logprobs, self.allowed, exclude, prompt[position], config, rng)
        own_nll = config.nll_weight if config.candidate_nll else 0.0
        grads = candidate_gradient(terms, engine.candidate_embeddings(candidates), candidates, own_nll)
        ranked = [(candidates[j], float(grads[j])) for j in torch.argsort(grads, stable=True).tolist()]
        if not all(math.isfinite(g) for _, g in ranked):
            warnings.append("non-finite candidate gradients were dropped")
            ranked = [(c, g) for c, g in ranked if math.isfinite(g)]
        return ranked

    def _select(
        self,
        state: RunState,
        prompt: Ids,
        position: int,
        shortlist: list[Ids],
        warnings: list[str],
        timer: PhaseTimer | None = None,
    ) -> tuple[Ids, list[Evaluated]]:
        """The chosen prompt and what was evaluated; sets `state.reasoning` to the chosen prompt's.

        As in the reference, the shortlist is scored in gradient order and, past half the initial
        length, the first candidate whose token holds a "." is taken once scored (later ones are not
        scored); otherwise the lowest selection score wins ("reference": the last of equal scores,
        as its `<=` comparison does; else the first)."""
        config, engine, tok = self.config, self.engine, self.tokenizer
        period = None
        if config.accept_period_after_half and position >= state.init_len / 2:
            period = next((p for p in shortlist if "." in decode(tok, [p[position]])), None)
        if period is not None:
            shortlist = shortlist[: shortlist.index(period) + 1]
        fresh = [p for p in shortlist if p not in state.scores]
        scored_fresh = engine.reason_and_score(fresh, timer=timer) if fresh else []
        fresh_reasoning = {p: reasoning for p, (reasoning, _) in zip(fresh, scored_fresh, strict=True)}
        for p, (_, terms) in zip(fresh, scored_fresh, strict=True):
            score = selection_score(terms, config)
            if math.isfinite(score):
                state.record_score(p, score)
            else:
                warnings.append(f"non-finite score for {prompt_text(tok, p)!r}; candidate skipped")
        scored = [p for p in shortlist if p in state.scores]
        evaluated = [
            Evaluated(
                token=decode(tok, [p[position]]),
                prompt=prompt_text(tok, p),
                prompt_ids=list(p),
                score=state.scores[p],
                cached=p not in fresh,
                accepted_period=p == period,
            )
            for p in scored
        ]
        if period is not None and period in state.scores:
            chosen = period
        elif scored:
            order = scored[::-1] if config.selection == "reference" else scored
            chosen = min(order, key=state.scores.__getitem__)
        else:
            chosen = prompt
        if chosen != prompt:
            state.reasoning = fresh_reasoning.get(chosen)
        return chosen, evaluated


def selection_score(terms: Terms, config: GreaterConfig) -> float:
    """Lower is better; n = number of examples, errors = examples whose answer is not the argmax.

    "loss": mean(CE + λ·NLL). "reference": errors/n + selection_nll_weight·mean(NLL), the reference's
    `mist_perc + (control_weight/10)·control_loss`. "errors-then-loss": (errors + L/(1+L))/n with
    L = mean(CE + λ·NLL): the tie-break term is below one error, so fewer errors always wins and equal
    error counts are ordered by the loss.
    """
    loss = float(terms.loss(config.nll_weight).mean())
    if config.selection == "loss":
        return loss
    n = len(terms.correct)
    errors = float((~terms.correct).sum())
    if config.selection == "reference":
        return errors / n + config.selection_nll_weight * float(terms.nll.mean())
    return (errors + loss / (1.0 + loss)) / n


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
    terms: Terms, cand_embeds: torch.Tensor, candidates: list[int], candidate_nll_weight: float = 0.0
) -> torch.Tensor:
    """(C,) L2-normalised dL/d one_hot over candidates, summed over examples.

    With e = one_hot @ E[C] at the position, dL/d one_hot_c = E[c]·dL/de (the reference: the prompt-NLL
    targets are the fixed prompt ids). A non-zero `candidate_nll_weight` w also gives the one-hot the
    NLL target at the position itself, adding w·(-log p(c | prefix)) / len(prompt).
    """
    grad = cand_embeds @ terms.embed_grad.float()
    if candidate_nll_weight:
        candidate_nll = -terms.proposal_logprobs[:, candidates]  # (B, C)
        grad = grad + candidate_nll_weight * candidate_nll.sum(0) / terms.prompt_len
    return grad / grad.norm().clamp(min=1e-12)


def shortlist_candidates(
    tokenizer: PreTrainedTokenizerBase, prompt: Ids, position: int, ranked: list[int], limit: int, lead: str = " "
) -> list[Ids]:
    """The first `limit` prompts, in gradient order, whose ids are what their text encodes to after `lead`
    (`encode_prompt(prompt_text(ids), lead) == ids`), so the prompt scored is the prompt returned."""
    returnable = Returnable(tokenizer, lead)
    out: list[Ids] = []
    for token in ranked:
        candidate = prompt[:position] + (token,) + prompt[position + 1 :]
        if returnable(candidate):
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


def filler_token(tokenizer: PreTrainedTokenizerBase, filler: str) -> int:
    """The filler's single token id; where `filler` is several tokens, the first single-token form of
    it (without or with a leading space), named in the log."""
    for text in dict.fromkeys((filler, filler.strip(), " " + filler.strip())):
        ids = encode(tokenizer, text)
        if len(ids) == 1:
            if text != filler:
                _log.warning("the filler %r is not one token for this tokenizer; using %r", filler, text)
            return ids[0]
    raise GreaterError(
        f"the filler {filler!r} is not a single token for this tokenizer; choose another {setting_name('filler')}"
    )


def prompt_text(tokenizer: PreTrainedTokenizerBase, ids: Ids) -> str:
    """The text of prompt ids as returned to the user (it follows the joiner after one space)."""
    return decode(tokenizer, ids).strip()
