"""Rows that cannot fit the model's context, found before any generation.

A row fits when its whole sequence — chat prefix, question + joiner, prompt, the assistant header, the
reasoning cap, the extractor and the longest answer the evaluation lets the model write — is within the
model's context length, counted as the engine counts it (`ChatLayout.row_tokens`). A row that does not
fit would fail (or run out of memory) deep inside a step; here it is refused with its file and line (or
task name and index), or left out when asked to.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from greater.errors import GreaterError, setting_name
from greater.evaluate import ANSWER_SLACK
from greater.inference.layout import AFTER_QUESTION, ChatLayout, encode
from greater.tasks import Example, Task

SHOWN = 3  # rows named in the message
_UNBOUNDED = 10**8  # tokenizers without a limit report a huge sentinel (int(1e30))

log = logging.getLogger("greater")


def context_length(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The model's context length: `max_position_embeddings` (or a like-named field), else the
    tokenizer's `model_max_length` when it is a real limit; None when neither says."""
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and 0 < value < _UNBOUNDED:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and 0 < limit < _UNBOUNDED else None


def fitting_rows(
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    splits: Mapping[str, list[Example]],
    *,
    context: int | None,
    prompt_tokens: int,
    joiner: str,
    max_new_tokens: int,
    skip: bool = False,
    placement: str = AFTER_QUESTION,
) -> tuple[dict[str, list[Example]], int]:
    """The examples of each split that fit `context`, and how many were left out.

    A row that does not fit raises GreaterError naming it (file and line where known, else the task,
    the group's name and the index) unless `skip`, in which case it is left out and counted (and logged). Every
    split left empty by skipping is refused too.
    """
    if context is None:
        return dict(splits), 0
    layout = ChatLayout.from_tokenizer(tokenizer, placement)
    extractor = len(encode(tokenizer, " " + task.extractor))
    kept: dict[str, list[Example]] = {}
    bad: list[str] = []
    for name, examples in splits.items():
        kept[name] = []
        for index, ex in enumerate(examples):
            # a fast tokenizer takes a 50,000-word question in well under a second
            framed = layout.frame(tokenizer, ex.question, joiner)
            follow = extractor + len(encode(tokenizer, task.target_text(ex))) + ANSWER_SLACK
            tokens = layout.row_tokens(framed, prompt_tokens, max_new_tokens, follow)
            if tokens <= context:
                kept[name].append(ex)
                continue
            # the question's tokens, and the room the rest of the row leaves them
            used = len(framed.head if placement == AFTER_QUESTION else framed.tail) - framed.question_at
            where = ex.where or f"task {task.name}, {name} {index}"
            bad.append(f"{where} ({used} tokens; room for {max(context - tokens + used, 0)})")
    if not bad:
        return kept, 0
    shown = "; ".join(bad[:SHOWN]) + (f"; and {len(bad) - SHOWN} more" if len(bad) > SHOWN else "")
    budget = f"the model's context of {context} tokens with reasoning capped at {max_new_tokens} tokens"
    if not skip:
        hint = (
            f"shorten them or lower {setting_name('max_new_tokens')} "
            f"(custom tasks: {setting_name('skip_bad_rows')} leaves them out)"
        )
        raise GreaterError(f"{len(bad)} row(s) do not fit {budget}: {shown}; {hint}")
    empty = [name for name, examples in kept.items() if splits[name] and not examples]
    if empty:
        raise GreaterError(f"no {empty[0]} example fits {budget} ({shown})")
    log.warning("left out %d row(s) that do not fit %s: %s", len(bad), budget, shown)
    return kept, len(bad)


def fitting_task(
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    *,
    context: int | None,
    prompt_tokens: int,
    joiner: str,
    max_new_tokens: int,
    skip: bool = False,
    placement: str = AFTER_QUESTION,
) -> Task:
    """`task` checked row by row (every example, and its test file's) before any split is drawn; with
    `skip`, the task without the rows that do not fit (so splits are drawn from the rows that do)."""
    rows = {"example": task.load()} | ({"test-file example": task.load_test()} if task.load_test else {})
    kept, left_out = fitting_rows(
        tokenizer,
        task,
        rows,
        context=context,
        prompt_tokens=prompt_tokens,
        joiner=joiner,
        max_new_tokens=max_new_tokens,
        skip=skip,
        placement=placement,
    )
    if not left_out:
        return task
    test_rows = kept.get("test-file example")
    return replace(
        task,
        load=lambda: list(kept["example"]),
        load_test=(lambda: list(test_rows)) if test_rows is not None else None,
    )


def longest_prompt(start_tokens: int, steps: int = 0, proposals: int = 0) -> int:
    """The most tokens a search's prompt can hold, for the context check: GReaTer's starting prompt
    (`start_tokens`, its longest start) grows by at most one token a step (the filler); a baseline's
    proposals are cut at `proposals` tokens (`MethodConfig.max_prompt_tokens`)."""
    return max(start_tokens + steps, proposals)


def fit_to_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    *,
    prompt_tokens: int,
    joiner: str,
    max_new_tokens: int,
    skip: bool = False,
    placement: str = AFTER_QUESTION,
) -> Task:
    """`fitting_task` against `model`'s context length (`context_length`)."""
    context = context_length(model, tokenizer)
    return fitting_task(
        tokenizer,
        task,
        context=context,
        prompt_tokens=prompt_tokens,
        joiner=joiner,
        max_new_tokens=max_new_tokens,
        skip=skip,
        placement=placement,
    )
