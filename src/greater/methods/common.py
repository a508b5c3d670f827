"""What every method shares: its config and result, the local model used as the optimizer (chat
replies to meta-prompts), the scorer of candidate prompts on the training examples, the parser that
pulls a prompt out of a reply, and the usage counters."""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from greater.errors import GreaterError, setting_name
from greater.evaluate import accuracy_on, best_on_dev
from greater.inference.batching import DecodeStats
from greater.inference.engine import Engine
from greater.inference.generation import TransformersGenerator
from greater.inference.layout import PLACEMENTS, ChatLayout, decode, encode, encode_prompt, prompt_lead
from greater.inference.memory import is_size
from greater.optimizer import ZS_COT_JOINER, ZS_COT_PROMPT, GreaterConfig
from greater.tasks import Example, Task


@dataclass
class MethodConfig:
    """The budget and settings of one method run.

    Budgets are matched to GReaTer's: with `steps` steps GReaTer re-scores at most `num_select`
    candidate prompts per step on the training examples, so every baseline may score
    `evaluations` = num_select × steps candidate prompts (the starting prompt is not counted, as
    GReaTer's current prompt is not). What each method spends besides (meta-prompt replies,
    GReaTer's gradient passes) is counted in `Usage`.
    """

    # the fields GReaTer shares (`greater.settings.SHARED`) take GreaterConfig's defaults: one each
    steps: int = GreaterConfig.steps  # GReaTer steps; also sets the baselines' budget
    num_select: int = GreaterConfig.num_select  # GReaTer: candidates re-scored per step; baselines: per round
    evaluations: int | None = None  # candidate prompts a baseline scores (default num_select × steps)
    max_new_tokens: int = GreaterConfig.max_new_tokens  # reasoning cap when scoring prompts
    meta_max_new_tokens: int = 96  # cap on the optimizer model's replies to meta-prompts
    max_prompt_tokens: int = 48  # longer proposed prompts are cut at a sentence or word end
    demos: int = 4  # examples shown in a meta-prompt (APE demonstrations, APO/PE2/TextGrad cases)
    beam: int = 2  # APO beam width
    temperature: float = 0.7  # sampling temperature of meta-prompt replies
    init_prompt: str = ZS_COT_PROMPT  # where APO, PE2 and TextGrad start (GReaTer keeps its own)
    joiner: str = ZS_COT_JOINER  # between question and prompt for the baselines' prompts (GReaTer keeps its own)
    batch_size: int | str = GreaterConfig.batch_size  # rows per generation batch; "auto": from free GPU memory
    keep_top: int = GreaterConfig.keep_top  # with a dev set: the best prompts by training score scored on it
    seed: int = GreaterConfig.seed
    placement: str = GreaterConfig.placement  # where prompts go in the chat (greater.inference.layout.PLACEMENTS)

    @property
    def budget(self) -> int:
        return self.evaluations if self.evaluations is not None else self.num_select * self.steps

    @classmethod
    def from_args(cls, args: object, flags: Sequence[str], method: str) -> MethodConfig:
        """The config of `greater optimize --method METHOD`: the `flags` given (attributes of `args`, None
        when not given) over the defaults, validated; a flag that is no field of this config (it sets
        a GReaTer setting) is refused."""
        given = {flag: getattr(args, flag) for flag in flags if getattr(args, flag, None) is not None}
        own = {f.name for f in fields(cls)}
        foreign = [flag for flag in given if flag not in own]
        if foreign:
            raise GreaterError(f"{setting_name(foreign[0])} applies to GReaTer runs only, not to {method}")
        config = cls(**given)
        config.validate()
        return config

    def validate(self) -> None:
        """Raise `GreaterError` naming the first setting out of range."""
        numbers = ("steps", "num_select", "max_new_tokens", "meta_max_new_tokens", "max_prompt_tokens", "demos")
        bad = [name for name in numbers + ("beam", "keep_top") if getattr(self, name) < 1]
        if not is_size(self.batch_size):
            bad.append("batch_size")
        if self.evaluations is not None and self.evaluations < 1:
            bad.append("evaluations")
        if not self.temperature > 0:
            bad.append("temperature")
        if self.placement not in PLACEMENTS:
            bad.append("placement")
        if bad:
            raise GreaterError(f"invalid setting {bad[0]}={getattr(self, bad[0])!r}")


@dataclass
class Usage:
    """What a method run cost. calls: sequences generated (reasonings, answers, meta-prompt replies)
    plus sequences run teacher-forced (GReaTer's gradient pass)."""

    calls: int = 0
    generated_tokens: int = 0
    forward_tokens: int = 0  # every token run through the model (prefill, decoding, teacher forcing)
    seconds: float = 0.0

    @classmethod
    def of(cls, counts: DecodeStats, seconds: float) -> Usage:
        """The usage recorded by a run's counters (fresh at its start)."""
        return cls(
            calls=counts.sequences + counts.scored_sequences,
            generated_tokens=counts.generated_tokens,
            forward_tokens=counts.forward_tokens + counts.backward_tokens,
            seconds=round(seconds, 2),
        )


class Sitting:
    """One process's share of a method run that may span several (`run_method`'s `resume` and
    `checkpoint`): what the earlier sittings spent up to their last checkpoint, this one's counters
    and clock, and where the run's progress goes.

    A progress is plain JSON: {"method", "search": what the search did (its own format: GReaTer's
    `RunState` and history, a baseline's `Workbench.progress`), "usage": {"counts": the `DecodeStats`
    of every sitting so far, "seconds"}}."""

    def __init__(self, method: str, resume: dict | None, checkpoint: Callable[[dict], None] | None) -> None:
        resume = resume or {}
        if resume and resume.get("method") != method:
            raise GreaterError(f"the progress to resume is of a {resume.get('method')} run, not of {method}")
        spent = resume.get("usage", {})
        self.method = method
        self.search: dict | None = resume.get("search")
        self.earlier = DecodeStats(**spent.get("counts", {}))
        self.earlier_seconds = float(spent.get("seconds", 0.0))
        self.checkpoint = checkpoint
        self.counts = DecodeStats()  # the search's counters (`count`)
        self._before = DecodeStats()
        self.started = time.perf_counter()

    def count(self, counts: DecodeStats) -> None:
        """Count the work of the search from here on in `counts` (its engine's, which a run's test scoring
        may have added to before)."""
        self.counts, self._before = counts, replace(counts)

    def spent(self) -> tuple[DecodeStats, float]:
        """Counters and seconds of every sitting so far, this one up to now."""
        done = self.earlier + (self.counts - self._before)
        return done, self.earlier_seconds + time.perf_counter() - self.started

    def usage(self) -> Usage:
        return Usage.of(*self.spent())

    def save(self, search: dict) -> None:
        """Hand the run's progress, with `search` as its search part, to `checkpoint` (if any)."""
        if self.checkpoint is not None:
            counts, seconds = self.spent()
            usage = {"counts": asdict(counts), "seconds": seconds}
            self.checkpoint({"method": self.method, "search": search, "usage": usage})


@dataclass
class MethodResult:
    """A method's prompt, its score on the training examples and how it got there.

    `score` is the method's own selection criterion: GReaTer's selection score (lower is better) or the
    baselines' training accuracy (higher is better); `score_name` says which ("selection loss", the name
    stored in results since before "selection score" was the one name, or "train accuracy"). With a dev set the
    prompt is the finalist with the best dev accuracy: `finalists` are those scored on it, best
    training score first ({"prompt", "score", "dev_accuracy"}, GReaTer's with "prompt_ids"), and
    `dev_accuracy` the chosen one's; a method that scored one prompt only has no dev pass (None, []).
    """

    method: str
    prompt: str
    joiner: str
    score: float
    score_name: str
    history: list[dict] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    dev_accuracy: float | None = None
    finalists: list[dict] = field(default_factory=list)
    # GReaTer's: `optimize`'s own Result (prompt ids, initial prompt and score, why it stopped, the steps)
    details: object = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict:
        """The result as plain JSON (a comparison's cell keeps it; `details` is not part of it)."""
        data = asdict(replace(self, details=None))
        del data["details"]
        return data


@dataclass
class Scored:
    """A prompt scored on the training examples: accuracy (the gold answer is the argmax after the
    reasoning and extractor), mean answer cross-entropy (the tie-break), and each example's reasoning."""

    prompt: str
    accuracy: float
    ce: float
    reasonings: list[str]
    correct: list[bool]

    @property
    def key(self) -> tuple[float, float]:
        """Sort key: best first."""
        return (-self.accuracy, self.ce if math.isfinite(self.ce) else math.inf)


def pick_on_dev(finalists: list[Scored], dev_accuracy: Callable[[str], float]) -> tuple[Scored, list[dict]]:
    """The finalist (best training key first) with the best `dev_accuracy`, ties to the better training
    key, and each finalist's record {"prompt", "score" (training accuracy), "dev_accuracy"}."""
    records = [{"prompt": s.prompt, "score": s.accuracy, "dev_accuracy": dev_accuracy(s.prompt)} for s in finalists]
    return finalists[best_on_dev([r["dev_accuracy"] for r in records])], records


def baseline_engine(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, task: Task, train: list[Example], config: MethodConfig
) -> Engine:
    """The engine of a baseline's run on `train`: its batch sizes leave room for the meta-prompt replies,
    which its generator also samples."""
    return Engine(
        model,
        tokenizer,
        task,
        train,
        joiner=config.joiner,
        batch_size=config.batch_size,
        max_new_tokens=config.max_new_tokens,
        size_tokens=max(config.max_new_tokens, config.meta_max_new_tokens),
        placement=config.placement,
    )


class Workbench:
    """One model serving as both task model and optimizer for one method run on `train`."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        task: Task,
        train: list[Example],
        config: MethodConfig,
        *,
        saved: dict | None = None,
        on_progress: Callable[[dict], None] | None = None,
        engine: Engine | None = None,
    ) -> None:
        """`saved`: the last `progress()` of an interrupted run of this search with the same arguments;
        `on_progress(progress())` is called after every scoring call that ran the model (a generation
        batch's worth of prompts); `engine`: the run's (`baseline_engine`), else one made here."""
        self.model, self.tokenizer, self.task, self.train, self.config = model, tokenizer, task, train, config
        self.layout = ChatLayout.from_tokenizer(tokenizer)
        self.engine = engine if engine is not None else baseline_engine(model, tokenizer, task, train, config)
        self.generator: TransformersGenerator = self.engine.generator  # also samples the meta-prompt replies
        self.scores: dict[str, Scored] = {}
        self.evaluated = 0  # distinct candidate prompts scored, against `config.budget`
        self.replies = 0  # meta-prompt calls, to vary the sampling seed
        self.dev_scores: dict[str, float] = dict((saved or {}).get("dev", {}))  # prompt -> dev accuracy
        # what an earlier sitting scored: the search is seeded, so replaying it asks for these prompts
        # again, and each is taken from here instead of being scored again
        self._saved: dict[str, Scored] = {s["prompt"]: Scored(**s) for s in (saved or {}).get("scores", [])}
        self.on_progress = on_progress

    @property
    def budget_left(self) -> int:
        return self.config.budget - self.evaluated

    def score(self, prompts: list[str], *, counted: bool = True) -> list[Scored]:
        """Score prompts on the training examples (each distinct prompt once; `counted` ones use budget).

        A prompt an earlier sitting scored is taken from `saved` but counts as scored here, so the
        replayed search spends its budget as the first one did."""
        fresh = [p for p in dict.fromkeys(prompts) if p not in self.scores]
        todo = [p for p in fresh if p not in self._saved]
        # a generation batch's worth of prompts at a time, each chunk saved as soon as it is scored,
        # so that a kill loses at most one batch (APE scores its whole induction round at once)
        chunk = max(1, self.engine.batch_size // max(1, len(self.train)))
        for start in range(0, len(todo), chunk):
            part = todo[start : start + chunk]
            self._saved.update(zip(part, self._measure(part), strict=True))
            if self.on_progress is not None:
                self.on_progress(self.progress())
        for prompt in fresh:  # in the order asked for: `finalists` keeps it among equal keys
            self.scores[prompt] = self._saved.pop(prompt)
        if counted:
            self.evaluated += len(fresh)
        return [self.scores[p] for p in prompts]

    def _measure(self, prompts: list[str]) -> list[Scored]:
        """Reasoning and answer terms of each prompt on the training examples, in one engine call."""
        ids = [self.engine.encode_prompt(p) for p in prompts]
        out = []
        for prompt, (reasoning, terms) in zip(
            prompts, self.engine.reason_and_score(ids, self.config.max_new_tokens), strict=True
        ):
            ce = float(terms.ce.mean())
            out.append(
                Scored(
                    prompt=prompt,
                    accuracy=float(terms.correct.float().mean()),
                    ce=ce if math.isfinite(ce) else math.inf,
                    reasonings=[decode(self.tokenizer, r).strip() for r in reasoning],
                    correct=[bool(c) for c in terms.correct],
                )
            )
        return out

    def progress(self) -> dict:
        """Every prompt scored so far (with the saved ones the replay has not reached yet: a sitting
        killed during the replay must not lose them) and every dev accuracy, as plain JSON: the `saved`
        of a later Workbench of this run."""
        scored = [*self.scores.values(), *self._saved.values()]
        return {"scores": [asdict(s) for s in scored], "dev": dict(self.dev_scores)}

    def finalists(self) -> list[Scored]:
        """The `keep_top` best distinct prompts scored so far, best training key first."""
        return sorted(self.scores.values(), key=lambda s: s.key)[: self.config.keep_top]

    def dev_accuracy(self, prompt: str, dev: list[Example]) -> float:
        """Greedy accuracy of `prompt` on `dev`, counted in this run's usage (as GReaTer's dev pass);
        memoised by prompt (a run has one dev set), saved ones included."""
        if prompt not in self.dev_scores:
            self.dev_scores[prompt] = accuracy_on(self.engine, dev, prompt)
            if self.on_progress is not None:
                self.on_progress(self.progress())
        return self.dev_scores[prompt]

    def complete(self, meta_prompts: list[str]) -> list[str]:
        """One sampled chat reply of the model to each meta-prompt (a single user turn)."""
        contexts = []
        for text in meta_prompts:
            prefix, user = self.layout.encode_head(self.tokenizer, text)
            contexts.append(prefix + user + self.layout.mid_ids)
        self.replies += 1
        torch.manual_seed(self.config.seed * 1_000_003 + self.replies)  # the same replies on a rerun
        replies = self.generator.sample(contexts, self.config.meta_max_new_tokens, self.config.temperature, top_p=0.95)
        return [self.tokenizer.decode(ids, skip_special_tokens=True) for ids in replies]

    def proposals_from(self, meta_prompts: list[str]) -> list[str]:
        """The distinct usable prompts parsed from one sampled reply to each meta-prompt, in order."""
        limit = self.config.max_prompt_tokens
        lead = prompt_lead(self.config.placement)
        found = [extract_prompt(text, self.tokenizer, limit, lead) for text in self.complete(meta_prompts)]
        return list(dict.fromkeys(p for p in found if p))

    def example_text(self, index: int, scored: Scored | None = None) -> str:
        """One training example for a meta-prompt: question, (the model's reasoning and verdict), gold."""
        ex = self.train[index]
        text = f"Input: {clip(ex.question, 400)}\n"
        if scored is not None:
            verdict = "correct" if scored.correct[index] else "wrong"
            text += f"Model's reasoning: {clip(scored.reasonings[index], 300)}\nThe model's answer was {verdict}.\n"
        return text + f"Correct answer: {ex.answer}\n"

    def pick(self, indices: list[int], k: int, salt: str) -> list[int]:
        """k of `indices`, a seeded draw (all of them when there are at most k)."""
        if len(indices) <= k:
            return list(indices)
        return sorted(random.Random(f"{self.config.seed}:{salt}").sample(indices, k))


_TAGGED = [  # (pattern, take the last match): a reply often echoes the input prompt in <VARIABLE> first
    (re.compile(r"<START>(.*?)(?:<END>|$)", re.S), False),
    (re.compile(r"<IMPROVED_VARIABLE>(.*?)(?:</IMPROVED_VARIABLE>|$)", re.S), False),
    (re.compile(r"<VARIABLE>(.*?)</VARIABLE>", re.S), True),
]
_LABELLED = [
    re.compile(
        r"(?:new|improved|revised|better|final|optimized)\s+(?:prompt|instruction)\s*(?:is|was)?\s*:\s*(.*)$", re.I
    ),
    re.compile(r"^(?:the\s+)?(?:prompt|instruction)(?:\s+(?:is|was))?(?:\s+to)?\s*:?\s+(.*)$", re.I),
    re.compile(r"^(?:the\s+)?(?:prompt|instruction)\s*:\s*(.*)$", re.I),
]
_TAG = re.compile(r"</?[A-Z_]+>")  # leftover markup such as an empty <START> <END>
_LEADING = re.compile(r"^\s*(?:[-*#>]+|\d+[.)]|step \d+[:.]?)\s*", re.I)


def extract_prompt(text: str, tokenizer: PreTrainedTokenizerBase, max_tokens: int, lead: str = " ") -> str | None:
    """The prompt in a meta-prompt reply, or None when there is none usable.

    Taken from, in order: a tagged span (<START>…<END>, <IMPROVED_VARIABLE>…, the last
    <VARIABLE>…</VARIABLE>); a labelled line ("New prompt: …", "The instruction is …"; a label that
    ends its line labels the next line); the first line that is not an introduction ending in ":".
    Quotes, list markers and surrounding whitespace are dropped; prompts longer than `max_tokens` are
    cut at the last sentence end (else word end) that fits; prompts the tokenizer cannot round-trip
    are refused.
    """
    candidate = None
    for pattern, last in _TAGGED:
        spans = [m.group(1) for m in pattern.finditer(text) if m.group(1).strip()]
        if spans:
            candidate = spans[-1] if last else spans[0]
            break
    lines = [ln for ln in (_LEADING.sub("", ln).strip() for ln in (candidate or text).splitlines()) if ln]
    if candidate is None:
        candidate = next((ln for ln in lines if not ln.endswith(":")), "")
        for i, line in enumerate(lines):
            match = next((m for m in (p.search(line) for p in _LABELLED) if m), None)
            if match:
                candidate = match.group(1).strip() or (lines[i + 1] if i + 1 < len(lines) else "")
                break
    else:
        candidate = lines[0] if lines else ""
    prompt = " ".join(_TAG.sub(" ", candidate).split()).strip(" \"'`*")
    if len(prompt) < 3 or not any(ch.isalpha() for ch in prompt):
        return None
    ids = encode(tokenizer, lead + prompt)
    if len(ids) > max_tokens:
        cut = decode(tokenizer, ids[:max_tokens]).strip()
        ends = [cut.rfind(c) for c in ".!?"]
        prompt = cut[: max(ends) + 1] if max(ends) > len(cut) // 2 else cut.rsplit(" ", 1)[0]
    try:
        encode_prompt(tokenizer, prompt, lead)
    except GreaterError:
        return None
    return prompt


def clip(text: str, limit: int = 400) -> str:
    """`text` on one line, cut to `limit` characters (meta-prompts must stay short for a small model)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
