"""Prompt optimizers behind one interface: (model, task, training examples, config) -> MethodResult.

    run_method("ape", model, tokenizer, task, train, MethodConfig(steps=5))

GReaTer is one method among them; the others are the paper's baselines, run with the same local
model as task model and optimizer (no API model anywhere).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from greater.batching import DecodeStats
from greater.errors import GreaterError
from greater.methods import baselines
from greater.methods.common import (
    ZS_COT_PROMPT,
    MethodConfig,
    MethodResult,
    Scored,
    Usage,
    Workbench,
    pick_on_dev,
)
from greater.optimizer import GreaterConfig, optimize
from greater.tasks import Example, Task

__all__ = ["METHODS", "ZS_COT_PROMPT", "MethodConfig", "MethodResult", "Usage", "run_method"]

# name -> the search; "greater" is handled by `_greater` (it keeps its own joiner and selection loss)
_BASELINES: dict[str, Callable[[Workbench], tuple[Scored, list[dict]]]] = {
    "zs-cot": baselines.zs_cot,
    "ape": baselines.ape,
    "apo": baselines.apo,
    "pe2": baselines.pe2,
    "textgrad": baselines.textgrad,
}
METHODS = ("greater", *_BASELINES)


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
) -> MethodResult:
    """Run method `name` on `train`; `greater_config` overrides what GReaTer derives from `config`.

    With `dev` examples the final choice is made on them, as `greater optimize --dev` makes it: the
    `keep_top` best distinct prompts by the method's own score (GReaTer: selection score; a baseline:
    training accuracy, ties by cross-entropy) are scored on dev and the best on dev wins (ties: the
    better own score). A baseline that scored one prompt only (zs-cot) has nothing to choose: no dev
    pass. The dev pass is part of the run: its model calls count in `usage`."""
    config = config or MethodConfig()
    config.validate()
    if name not in METHODS:
        raise GreaterError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    if not train:
        raise GreaterError(f"task {task.name!r}: no training examples")
    started = time.perf_counter()
    if name == "greater":  # optimize() builds its generator from GreaterConfig's decoding switches
        result, counts = _greater(model, tokenizer, task, train, greater_config or greater_settings(config), dev)
    else:
        bench = Workbench(model, tokenizer, task, train, config)
        counts = bench.generator.stats
        best, history = _BASELINES[name](bench)
        finalists: list[dict] = []
        if dev and len(bench.scores) > 1:
            best, finalists = pick_on_dev(bench.finalists(), lambda prompt: bench.dev_accuracy(prompt, dev))
        chosen_dev = max((f["dev_accuracy"] for f in finalists), default=None)  # the chosen one is the best on dev
        result = MethodResult(name, best.prompt, config.joiner, best.accuracy, "train accuracy", history)
        result.dev_accuracy, result.finalists = chosen_dev, finalists
    result.usage = Usage.of(counts, time.perf_counter() - started)
    return result


def greater_settings(config: MethodConfig) -> GreaterConfig:
    """GReaTer's config at the shared budget (its own defaults for everything else)."""
    return GreaterConfig(
        steps=config.steps,
        num_select=config.num_select,
        max_new_tokens=config.max_new_tokens,
        batch_size=config.batch_size,
        keep_top=config.keep_top,
        seed=config.seed,
    )


def _greater(
    model, tokenizer, task, train, config: GreaterConfig, dev: list[Example] | None
) -> tuple[MethodResult, DecodeStats]:
    result = optimize(model, tokenizer, task, config, train=train, dev=dev)
    history = [
        {"round": r.step, "kind": "step", "prompt": r.prompt, "loss": r.loss, "chosen": r.chosen, "best": r.best_score}
        for r in result.steps
    ]
    method = MethodResult("greater", result.prompt, config.joiner, result.score, "selection loss", history)
    method.dev_accuracy, method.finalists = result.dev_accuracy, result.finalists
    return method, result.counts
