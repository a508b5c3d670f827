"""Accuracy of a prompt on examples: reasoning, then the extractor, then answer matching."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from tqdm import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from greater.engine import Engine
from greater.generation import Generator
from greater.layout import decode, encode_prompt
from greater.tasks import Example, Task

ANSWER_SLACK = 8  # tokens allowed after the extractor beyond the longest gold answer


@dataclass
class Evaluation:
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
    joiner: str = ". Use",
    max_new_tokens: int = 256,
    batch_size: int = 32,
    generator: Generator | None = None,
    progress: bool = False,
) -> Evaluation:
    """Score `prompt` on `examples` with greedy reasoning capped at `max_new_tokens`."""
    engine = Engine(model, tokenizer, task, examples, joiner=joiner, batch_size=batch_size, generator=generator)
    prompt_ids = tuple(encode_prompt(tokenizer, prompt))
    with tqdm(total=2 * len(examples), desc="evaluating", unit="gen", disable=not progress, file=sys.stderr) as bar:
        if hasattr(engine.generator, "progress"):
            engine.generator.progress = bar
        (reasoning,) = engine.reason([prompt_ids], max_new_tokens)
        outputs = engine.answer(prompt_ids, reasoning, max(map(len, engine.answer_ids)) + ANSWER_SLACK)
    predictions = []
    for ex, r, out in zip(examples, reasoning, outputs, strict=True):
        predictions.append(
            {
                "question": ex.question,
                "reasoning": decode(tokenizer, r),
                "output": out,
                "predicted": task.extract(out),
                "gold": task.normalize(ex.answer),
                "correct": task.is_correct(out, ex),
            }
        )
    n = len(predictions)
    accuracy = sum(p["correct"] for p in predictions) / n if n else 0.0
    return Evaluation(accuracy=accuracy, n=n, predictions=predictions)
