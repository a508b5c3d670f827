"""Accuracy of a prompt on examples: reasoning, then the extractor, then answer matching (`evaluate`;
`evaluate_with` an engine a run already has; `accuracy_on` for the dev pass), and the dev choice (`best_on_dev`). The
prompts × tasks table built on it is `greater.prompt_table`."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tqdm import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from greater.inference.engine import MAX_NEW_TOKENS, Engine
from greater.inference.generation import Generator, longest_first
from greater.inference.layout import AFTER_QUESTION, decode
from greater.tasks import Example, Task

ANSWER_SLACK = 8  # tokens allowed after the extractor beyond the longest gold answer
DEFAULT_JOINER = ". Use"


LOOP_WINDOW, LOOP_CHUNK, LOOP_TIMES = 300, 25, 3


def ends_in_repetition(reasoning: str) -> bool:
    """Whether a reasoning ends in a loop: some `LOOP_CHUNK`-character piece occurs `LOOP_TIMES` times
    (without overlapping) in its last `LOOP_WINDOW` characters. Greedy decoding does not leave such a
    loop, so a reasoning cut off in one would not have ended under a longer cap either."""
    tail = reasoning[-LOOP_WINDOW:]
    return any(tail.count(tail[i : i + LOOP_CHUNK]) >= LOOP_TIMES for i in range(len(tail) - LOOP_CHUNK + 1))


@dataclass
class Evaluation:
    """A prompt's score on examples: the share answered right, how many, and per example the question,
    the reasoning, the text after the extractor, the answer extracted from it, the gold answer and
    whether they match."""

    accuracy: float
    n: int
    predictions: list[dict]  # question, reasoning, output, predicted, gold, correct


def evaluate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    examples: list[Example],
    prompt: str,
    *,
    joiner: str = DEFAULT_JOINER,
    max_new_tokens: int = MAX_NEW_TOKENS,
    batch_size: int | str = "auto",
    generator: Generator | None = None,
    progress: bool = False,
    desc: str = "evaluating",
    saved_reasoning: dict[int, list[int]] | None = None,
    on_reasoning: Callable[[dict[int, list[int]], int], None] | None = None,
    placement: str = AFTER_QUESTION,
) -> Evaluation:
    """Score `prompt`, placed in the chat as `placement` says, on `examples` with greedy reasoning capped
    at `max_new_tokens`: `evaluate_with` on an engine made for them."""
    engine = Engine(
        model,
        tokenizer,
        task,
        examples,
        joiner=joiner,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        generator=generator,
        placement=placement,
    )
    return evaluate_with(
        engine, prompt, progress=progress, desc=desc, saved_reasoning=saved_reasoning, on_reasoning=on_reasoning
    )


def evaluate_with(
    engine: Engine,
    prompt: str,
    *,
    progress: bool = False,
    desc: str = "evaluating",
    saved_reasoning: dict[int, list[int]] | None = None,
    on_reasoning: Callable[[dict[int, list[int]], int], None] | None = None,
) -> Evaluation:
    """Score `prompt` on `engine`'s examples, with its joiner, reasoning cap, batch size and generator
    (whose counters count the work).

    With `on_reasoning`, the reasonings are generated one generation batch at a time and
    `on_reasoning(done, batch_size)` gets every reasoning so far (example index -> token ids) and the
    batch size after each batch; passing `done` back as `saved_reasoning`, with that batch size as
    `batch_size`, skips the batches it holds. The predictions are those of one uninterrupted call
    either way (`reason_in_batches`)."""
    task, tokenizer, examples = engine.task, engine.tokenizer, engine.examples
    prompt_ids = engine.encode_prompt(prompt)
    shown = engine.generator.progress
    with tqdm(total=2 * len(examples), desc=desc, unit="gen", disable=not progress, file=sys.stderr) as bar:
        engine.generator.progress = bar
        try:
            done = dict(saved_reasoning or {})
            bar.update(len(done))
            on_batch = None if on_reasoning is None else (lambda done: on_reasoning(done, engine.batch_size))
            reasoning = reason_in_batches(engine, prompt_ids, engine.max_new_tokens, done, on_batch)
            outputs = engine.answer(prompt_ids, reasoning, max(map(len, engine.answer_ids)) + ANSWER_SLACK)
        finally:
            engine.generator.progress = shown  # a run's generator goes on after this bar is closed
    predictions = []
    for ex, r, out in zip(examples, reasoning, outputs, strict=True):
        predictions.append(
            {
                "question": ex.question,
                "reasoning": decode(tokenizer, r),
                "reasoning_tokens": len(r),  # == max_new_tokens: cut off at the cap
                "output": out,
                "predicted": task.extract(out),
                "gold": task.normalize(ex.answer),
                "correct": task.is_correct(out, ex),
            }
        )
    n = len(predictions)
    accuracy = sum(p["correct"] for p in predictions) / n if n else 0.0
    return Evaluation(accuracy=accuracy, n=n, predictions=predictions)


def reason_in_batches(
    engine: Engine,
    prompt: tuple[int, ...],
    max_new_tokens: int,
    done: dict[int, list[int]],
    on_batch: Callable[[dict[int, list[int]]], None] | None,
) -> list[list[int]]:
    """Greedy reasoning of `prompt` for every example of `engine`, in example order; examples in
    `done` (index -> reasoning, updated in place) are not generated again.

    Without `on_batch`, one generation call. With it, one call per generation batch, each batch
    exactly one of the single call's (the generator's order, longest context first, cut every
    `engine.batch_size` rows), so the reasonings are the same numbers; `on_batch(done)` after each.
    That holds for the engine's own generator (whose batch size is the engine's) as long as no batch
    runs out of memory (one call would go on at half the size; here each batch starts at the full one)."""
    contexts = [seq.ids for seq in engine.sequences(prompt)]
    order = longest_first(contexts)  # the order TransformersGenerator batches rows in
    size = engine.batch_size if on_batch is not None else len(order)
    for start in range(0, len(order), max(size, 1)):
        rows = [i for i in order[start : start + size] if i not in done]
        if not rows:
            continue
        done.update(zip(rows, engine.generate_reasoning([contexts[i] for i in rows], max_new_tokens), strict=True))
        if on_batch is not None:
            on_batch(done)
    return [done[i] for i in range(len(contexts))]


def best_on_dev(dev_accuracies: Sequence[float]) -> int:
    """The index of the finalist with the best dev accuracy. Finalists come best by their method's own
    training criterion first, so a tie keeps the one that criterion prefers (GReaTer and baselines alike)."""
    return max(range(len(dev_accuracies)), key=dev_accuracies.__getitem__)  # max keeps the first of equals


def accuracy_on(engine: Engine, examples: list[Example], prompt: str) -> float:
    """`evaluate`'s accuracy on `examples` with an optimizer's engine (`Engine.on`), so its counters
    count the work: the dev pass that picks GReaTer's and the baselines' final prompt."""
    return evaluate_with(engine.on(examples), prompt).accuracy
