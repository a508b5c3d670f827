"""Prompt optimizers behind one interface: (model, task, training examples, config) -> MethodResult.

    run_method("ape", model, tokenizer, task, train, MethodConfig(steps=5))

GReaTer is one method among them; the others are the paper's baselines, run with the same local
model as task model and optimizer (no API model anywhere).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from greater.errors import GreaterError
from greater.inference.engine import Engine
from greater.inference.generation import Generator
from greater.methods import baselines
from greater.methods.common import (
    ZS_COT_JOINER,
    ZS_COT_PROMPT,
    MethodConfig,
    MethodResult,
    Scored,
    Sitting,
    Usage,
    Workbench,
    pick_on_dev,
)
from greater.optimizer import (
    NAMED_STARTS,
    GreaterConfig,
    RunState,
    StepRecord,
    build_engine,
    fitted_config,
    optimize,
)
from greater.runs import slug
from greater.settings import SHARED, TUNABLE, Parser
from greater.tasks import Example, Task

__all__ = [
    "GREATER_VARIANTS",
    "METHODS",
    "REFINES",
    "PAPER_METHODS",
    "BASELINE_TUNABLE",
    "TUNABLE",
    "ZS_COT_JOINER",
    "ZS_COT_PROMPT",
    "MethodConfig",
    "MethodResult",
    "Usage",
    "baseline_fields",
    "greater_fields",
    "refined_source",
    "run_method",
]

# name -> the search; "greater" is handled by `_greater` (it keeps its own joiner and selection score)
_BASELINES: dict[str, Callable[[Workbench], tuple[Scored, list[dict]]]] = {
    "zs-cot": baselines.zs_cot,
    "ape": baselines.ape,
    "apo": baselines.apo,
    "pe2": baselines.pe2,
    "textgrad": baselines.textgrad,
}
# GReaTer and its variants beyond the paper, each its own row in `greater compare`: name -> the
# GreaterConfig fields it sets over `greater_settings`
GREATER_VARIANTS: dict[str, dict] = {
    "greater": {},
    # starts from ZS-CoT's prompt, which also stays a finalist on dev: its search must beat ZS-CoT there
    "greater-zs": {"init_prompt": ZS_COT_PROMPT, "joiner": ZS_COT_JOINER, "dev_keeps_initial": True},
    # the search variants of docs/fidelity.md, at the paper's settings otherwise
    "greater-best": {"keep_best": True},
    # P1, ZS-CoT's prompt and a direct answer, each framed as the baselines' prompts are (after ".")
    "greater-starts": {"init_prompt": NAMED_STARTS["p1"], "joiner": ZS_COT_JOINER, "starts": ["zs-cot", "direct"]},
}
REFINES = ">"  # "ape>greater": GReaTer (or a variant) from the prompt the method before it chose
# a baseline row's options ("ape:evaluations=90"): MethodConfig fields over the comparison's config, so that a
# baseline can be run at another budget beside the rows at the comparison's (zs-cot has no search: none)
BASELINE_TUNABLE: dict[str, Parser] = {"evaluations": int}
SEARCHING_BASELINES = tuple(b for b in _BASELINES if b != "zs-cot")  # zs-cot scores one fixed prompt
# baselines that take no starting prompt of the user's (`--init-prompt`, `--init-from`): APE's candidates come from
# its meta-prompt, ZS-CoT's prompt is fixed; APO, PE2 and TextGrad start from `MethodConfig.init_prompt`
UNSTARTED_BASELINES = ("ape", "zs-cot")
METHODS = (*GREATER_VARIANTS, *_BASELINES)
"""Every method name `run_method` and `greater compare --methods` take: GReaTer and its variants, then the
baselines; `greater compare` also takes BASELINE>GREATER (`refined_source`)."""
PAPER_METHODS = ("greater", *_BASELINES)  # what the paper compares: no variant rows


def base_method(name: str) -> str:
    """The method a row name runs before its options: "ape:evaluations=90" -> "ape"."""
    return name.split(":")[0]


def refined_source(name: str) -> str | None:
    """The baseline whose chosen prompt method `name` ("ape>greater-best:patience=3") starts from, or None."""
    source, sep, _ = name.partition(REFINES)
    return source if sep else None


def greater_fields(name: str) -> dict | None:
    """The GreaterConfig fields method `name` sets over `greater_settings`, or None for a baseline.

    `name` is a row of GREATER_VARIANTS, optionally followed by `TUNABLE` options:
    "greater-zs:nll_weight=0.5" -> {"init_prompt": ..., "joiner": ".", "dev_keeps_initial": True, "nll_weight": 0.5}.
    A name that is neither raises GreaterError, saying which part is wrong. "BASELINE>NAME" (a refinement,
    `refined_source`) sets NAME's fields, and starts from the baseline's prompt (`run_method(start=)`)."""
    source, sep, rest = name.partition(REFINES)
    if sep:
        if source not in SEARCHING_BASELINES:  # zs-cot's fixed prompt as a start is greater-zs
            searched = ", ".join(SEARCHING_BASELINES)
            raise GreaterError(f"method {name!r}: {source!r} before {REFINES!r} must be one of {searched}")
        fields = greater_fields(rest)
        if fields is None:
            greater = ", ".join(GREATER_VARIANTS)
            raise GreaterError(f"method {name!r}: after {REFINES!r} comes a GReaTer method ({greater})")
        # the source's prompt stays a finalist on dev: the refinement must beat it there
        return {"dev_keeps_initial": True} | fields
    base, *options = name.split(":")
    if base not in METHODS:
        raise GreaterError(f"unknown method {base!r}; choose from {', '.join(METHODS)}")
    if base not in GREATER_VARIANTS:
        baseline_fields(name)  # a baseline's options are checked here too, so one call checks any name
        return None
    fields = GREATER_VARIANTS[base] | _options(name, options, TUNABLE)
    replace(GreaterConfig(), **fields).validate()
    return fields


def baseline_fields(name: str) -> dict | None:
    """The MethodConfig fields baseline row `name` sets over the comparison's config, or None for a GReaTer
    method: "ape:evaluations=90" -> {"evaluations": 90}, "ape" -> {}. Options are `BASELINE_TUNABLE`'s;
    zs-cot, which scores one prompt, takes none."""
    base, *options = name.split(":")
    if REFINES in name or base in GREATER_VARIANTS:
        return None
    if base not in _BASELINES:
        raise GreaterError(f"unknown method {base!r}; choose from {', '.join(METHODS)}")
    if options and base not in SEARCHING_BASELINES:
        raise GreaterError(f"method {name!r}: {base} scores one prompt and takes no options")
    fields = _options(name, options, BASELINE_TUNABLE)
    try:
        replace(MethodConfig(), **fields).validate()
    except GreaterError as error:
        raise GreaterError(f"method {name!r}: {error}") from None
    return fields


def _options(name: str, options: list[str], tunable: dict[str, Parser]) -> dict:
    """The NAME=VALUE options of method `name`, each converted by `tunable[NAME]`; GreaterError naming the
    first that is unknown, empty, repeated or no value."""
    given: dict = {}
    for option in options:
        key, _, text = option.partition("=")
        if key not in tunable:
            raise GreaterError(f"method {name!r}: {option!r} is not one of {', '.join(k + '=VALUE' for k in tunable)}")
        if not text:
            raise GreaterError(f"method {name!r}: {key} needs a value ({key}=VALUE)")
        if key != "starts" and not text.isascii():  # int("٩٠") is 90, and a cell's file name keeps ASCII only
            raise GreaterError(f"method {name!r}: {text!r} is no value for {key}")
        if key in given:
            raise GreaterError(f"method {name!r}: {key} is set twice")
        try:
            given[key] = tunable[key](text)
            if isinstance(given[key], float) and not math.isfinite(given[key]):
                raise ValueError(text)
        except (ValueError, KeyError):
            raise GreaterError(f"method {name!r}: {text!r} is no value for {key}") from None
    return given


def distinct_settings(names: list[str], config: MethodConfig) -> None:
    """Raise GreaterError if a method among `names` is invalid over `config` (the comparison's
    settings), or two run the same settings over it
    ("greater:nll_weight=.5" and "greater:nll_weight=0.5", options in another order, an option at
    its value in `config`, or "ape:evaluations=45" beside "ape" at 45): each would be a row of its own,
    spending a search on a copy."""
    base = greater_settings(config)
    seen: list[tuple[str, tuple]] = []
    stems: dict[str, str] = {}  # a row's cells are files named after it (`greater.runs.slug`)
    for name in names:
        other = stems.setdefault(slug(name), name)
        if other != name:
            raise GreaterError(f"methods {other!r} and {name!r} would share their cells' file names; rename one")
        fields = greater_fields(name)
        if fields is None:
            row: tuple = (base_method(name), replace(config, **baseline_fields(name)).budget)
        else:
            row = (refined_source(name), replace(base, **fields))
            row[1].validate()  # at the comparison's budget (greater-starts needs a step per start)
        for other, other_row in seen:
            if row == other_row:
                raise GreaterError(f"methods {other!r} and {name!r} run the same settings; keep one")
        seen.append((name, row))


def run_method(
    name: str,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    train: list[Example],
    config: MethodConfig | None = None,
    *,
    dev: list[Example] | None = None,
    greater_config: GreaterConfig | None = None,
    resume: dict | None = None,
    checkpoint: Callable[[dict], None] | None = None,
    on_step: Callable[[StepRecord], None] | None = None,
    generator: Generator | None = None,
    engine: Engine | None = None,
    start: dict | None = None,
) -> MethodResult:
    """Run method `name` on `train`; `greater_config` overrides what GReaTer derives from `config`.

    `start` ({"init_prompt", "joiner"}): where a refinement ("ape>greater", `refined_source`) starts,
    the prompt its source chose framed as it was scored; required by such a name, refused by others.

    With `dev` examples the final choice is made on them, as `greater optimize --dev` makes it: the
    `keep_top` best distinct prompts by the method's own score (GReaTer: selection score; a baseline:
    training accuracy, ties by cross-entropy) are scored on dev and the best on dev wins (ties: the
    better own score). A baseline that scored one prompt only (zs-cot) has nothing to choose: no dev
    pass. The dev pass is part of the run: its model calls count in `usage`.

    `checkpoint(progress)` is called with the run's progress as plain JSON (see `Sitting`) whenever
    it grew: GReaTer after every step and every prompt of its dev pass, a baseline after every
    scoring that ran the model (one call scores a batch of prompts) and every dev accuracy. Passing
    the last progress as `resume` to a run of the same method with the same arguments continues it:
    GReaTer from its saved `RunState`; a baseline replays its seeded search, generating its
    meta-prompt replies again but taking every prompt's scores from the progress. The result is the
    uninterrupted run's wherever the model computes the same numbers again (same device, dtype and
    batch sizes). Its `usage` is the work actually spent: the sum over the sittings of what
    each did up to its last checkpoint (a baseline's replayed replies count again).

    GReaTer only: `on_step(record)` gets each step's `StepRecord` before that step's progress is
    handed to `checkpoint`; `generator` generates its reasoning instead of the transformers one it
    makes (e.g. vLLM); its result's `details` is `optimize`'s `Result`.

    `engine`: the one to search with (GReaTer: `optimizer.build_engine`, a baseline:
    `methods.common.baseline_engine`, on `train` with these settings), as a `Run` passes its own; default:
    one made here."""
    config = config or MethodConfig()
    config.validate()
    fields = greater_fields(name)
    if not train:
        raise GreaterError(f"task {task.name!r}: no training examples")
    if (start is None) != (refined_source(name) is None):
        raise GreaterError(f"method {name!r}: a start prompt is given to a refinement (BASELINE{REFINES}GREATER) only")
    sitting = Sitting(name, resume, checkpoint)
    if fields is not None:  # GReaTer: its generator follows GreaterConfig's decoding switches, not a Workbench's
        settings = replace(greater_config or greater_settings(config), **(fields | (start or {})))
        engine = engine or build_engine(model, tokenizer, task, train, settings, generator)
        result = _greater(name, task, settings, dev, sitting, on_step, engine)
    else:
        config = replace(config, **baseline_fields(name))
        on_progress = sitting.save if checkpoint is not None else None
        bench = Workbench(
            model, tokenizer, task, train, config, saved=sitting.search, on_progress=on_progress, engine=engine
        )
        sitting.count(bench.generator.stats)
        best, history = _BASELINES[base_method(name)](bench)
        finalists: list[dict] = []
        if dev and len(bench.scores) > 1:
            best, finalists = pick_on_dev(bench.finalists(), lambda prompt: bench.dev_accuracy(prompt, dev))
        chosen_dev = max((f["dev_accuracy"] for f in finalists), default=None)  # the chosen one is the best on dev
        result = MethodResult(name, best.prompt, config.joiner, best.accuracy, "train accuracy", history)
        result.dev_accuracy, result.finalists = chosen_dev, finalists
    result.usage = sitting.usage()
    return result


def greater_settings(config: MethodConfig) -> GreaterConfig:
    """GReaTer's config at the shared budget (its own defaults for everything else)."""
    return GreaterConfig(**{name: getattr(config, name) for name in SHARED})


def _greater(
    name: str,
    task: Task,
    config: GreaterConfig,
    dev: list[Example] | None,
    sitting: Sitting,
    step_hook: Callable[[StepRecord], None] | None,
    engine: Engine,
) -> MethodResult:
    """GReaTer with `engine`, continued from `sitting.search` ({"state": `RunState.to_json`, "history": the
    history entries of the steps done}) when there is one, checkpointed through `sitting` after every
    step and every prompt of the dev pass."""
    config = fitted_config(config, engine)
    sitting.count(engine.counts)  # saved with each checkpoint
    saved = sitting.search or {}
    state = RunState.from_json(saved["state"]) if saved else None
    history: list[dict] = list(saved.get("history", []))  # the steps of earlier sittings, then this one's

    def on_step(record: StepRecord, run_state: RunState) -> None:
        history.append(
            {
                "round": record.step,
                "kind": "step",
                "prompt": record.prompt,
                "loss": record.loss,
                "chosen": record.chosen,
                "best": record.best_score,
                # what a reader of a comparison needs to tell why GReaTer won or lost on a task
                "train_errors": record.train_errors,
                "evaluated": [{"prompt": e.prompt, "score": e.score} for e in record.evaluated],
            }
        )
        if step_hook is not None:
            step_hook(record)
        save(run_state)

    def save(run_state: RunState) -> None:
        sitting.save({"state": run_state.to_json(), "history": history})

    result = optimize(
        engine.model, engine.tokenizer, task, config, dev=dev, on_step=on_step, on_dev=save, state=state, engine=engine
    )
    method = MethodResult(name, result.prompt, config.joiner, result.score, "selection loss", history)
    method.dev_accuracy, method.finalists, method.details = result.dev_accuracy, result.finalists, result
    return method
