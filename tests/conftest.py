"""Shared fixtures: the embedded SmolLM2 tokenizer and a tiny random-weight Llama built from a config.

Shared functions and paths (not fixtures) are in helpers.py; import those, never this file.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from helpers import tiny_llama


@pytest.fixture(scope="session")
def embedded_folder() -> Path:
    """The embedded GGUF converted to a plain HF folder (cached across runs in the user cache)."""
    from greater.inference.model import _converted_gguf, embedded_gguf_path

    return _converted_gguf(embedded_gguf_path(), torch.float32)


@pytest.fixture(scope="session")
def smol_tokenizer(embedded_folder):
    return AutoTokenizer.from_pretrained(embedded_folder)


@pytest.fixture(scope="session")
def tiny_model(smol_tokenizer):
    """A 2-layer Llama with random weights over SmolLM2's vocabulary (fast, deterministic)."""
    model = tiny_llama(len(smol_tokenizer))
    model.requires_grad_(False)
    return model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_model, smol_tokenizer) -> Path:
    """The tiny model saved as a local HF folder, for CLI runs with --model."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_model.save_pretrained(folder)
    smol_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_run(tiny_model, smol_tokenizer):
    """`tiny_run(**config overrides)`: a short GReaTer run on the tiny model, 4 boolean examples."""
    from greater.optimizer import GreaterConfig, optimize
    from greater.tasks import get_task

    task = get_task("gen/boolean_expressions")

    def run(**overrides):
        config = GreaterConfig(steps=3, max_new_tokens=4, top_k=6, batch_size=4, init_prompt="think step by step.")
        return optimize(tiny_model, smol_tokenizer, task, replace(config, **overrides), train=task.load()[:4])

    return run


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, tiny_model_dir) -> Path:
    """One finished 2-step GReaTer run of the tiny model with a dev set (prompt.json, result.json, steps)."""
    from greater.cli import main

    out = tmp_path_factory.mktemp("finished") / "run"
    argv = ["optimize", "--model", str(tiny_model_dir), "--task", "gen/boolean_expressions", "--steps", "2"]
    argv += ["--train", "4", "--dev", "2", "--test", "3", "--max-new-tokens", "6", "--top-k", "6", "--out", str(out)]
    assert main(argv) == 0
    return out


@pytest.fixture(scope="session")
def tiny_engine(tiny_model, smol_tokenizer):
    """`tiny_engine(task, n, **engine settings)`: an Engine on the tiny model over the first `n` examples
    of `task` (default gen/boolean_expressions, 3), joiner ". Use", answer temperature 0.2."""
    from greater.inference.engine import Engine
    from greater.tasks import get_task

    def make(task: str = "gen/boolean_expressions", n: int = 3, **settings):
        loaded = get_task(task)
        examples = loaded.load()[:n]
        return Engine(tiny_model, smol_tokenizer, loaded, examples, joiner=". Use", answer_temperature=0.2, **settings)

    return make
