"""Devices and precision: --device/--dtype/--device-map resolution and errors, the float32 parts of a
bfloat16 run, resuming a bfloat16 run, batch sizes fitted to memory, peak memory per step.

Everything here runs on a CPU (bfloat16 included); the CUDA-only errors are checked where CUDA is absent.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from greater.cli import main
from greater.errors import GreaterError
from greater.inference.device import resolve_placement
from greater.inference.engine import Engine
from greater.inference.logits import output_logits
from greater.inference.memory import activation_bytes_per_token, fit_batch_sizes, kv_bytes_per_token, shape
from greater.tasks import get_task
from helpers import (
    BENCH,
    assert_same,
    make_interrupted_run,
    message_lines,
    run_argv,
    run_cli,
    steps_without_timing,
)

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the errors of a machine without CUDA")


# --- resolution and errors ---------------------------------------------------------------------


@NO_CUDA
def test_placement_on_a_machine_without_cuda() -> None:
    assert resolve_placement().to_json() == {"device": "cpu", "dtype": "float32", "device_map": None}
    assert resolve_placement("cpu", "bfloat16").torch_dtype == torch.bfloat16
    assert resolve_placement("CPU", torch.float16).dtype == "float16"
    with pytest.raises(GreaterError, match=r"device 'cuda': CUDA is not available"):
        resolve_placement("cuda")
    with pytest.raises(GreaterError, match=r"device 'cuda:1': CUDA is not available"):
        resolve_placement("cuda:1", "bfloat16")
    with pytest.raises(GreaterError, match=r"device 'gpu' is not one of auto, cpu, cuda or cuda:N"):
        resolve_placement("gpu")
    with pytest.raises(GreaterError, match=r"dtype 'float64' is not one of auto, float32, bfloat16, float16"):
        resolve_placement("cpu", "float64")
    with pytest.raises(GreaterError, match="^device_map auto spreads a model over GPUs, but CUDA is not available"):
        resolve_placement("auto", "auto", "auto")
    with pytest.raises(GreaterError, match="drop device cpu"):
        resolve_placement("cpu", "auto", "auto")


@NO_CUDA
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--device", "cuda"], "greater: error: device 'cuda': CUDA is not available"),
        (["--device", "tpu"], "greater: error: device 'tpu' is not one of auto, cpu, cuda or cuda:N"),
        (["--device-map", "auto"], "greater: error: --device-map auto spreads a model over GPUs, but CUDA is not"),
        (["--generator", "vllm"], "greater: error: --generator vllm needs vLLM: pip install 'greater[vllm]'"),
    ],
)
def test_cli_device_errors_exit_2(capsys, tiny_model_dir: Path, tmp_path: Path, extra, message) -> None:
    if "vllm" in extra and importlib.util.find_spec("vllm") is not None:
        pytest.skip("checks the error of a machine without vLLM")
    evaluate = ["evaluate", "--model", str(tiny_model_dir), "--task", "gen/arithmetic", "--prompt", "Think."]
    for command in (run_argv(tiny_model_dir, tmp_path / "run"), evaluate):
        code, _, err = run_cli(capsys, command + extra)
        lines = message_lines(err)
        assert code == 2, err
        assert len(lines) == 1, err
        assert lines[0].startswith(message), err
    assert not (tmp_path / "run").exists()


def test_model_loads_in_bfloat16_on_cpu(tiny_model_dir: Path) -> None:
    from greater.inference.model import load_model

    model, _ = load_model(str(tiny_model_dir), device="cpu", dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    assert model.device.type == "cpu"
    assert not any(p.requires_grad for p in model.parameters())


# --- the float32 parts of a bfloat16 run -----------------------------------------------------------


def test_bfloat16_loss_terms_and_gradient_are_float32_and_close(tiny_model, smol_tokenizer) -> None:
    import copy

    half = copy.deepcopy(tiny_model).to(torch.bfloat16)
    task = get_task("gen/boolean_expressions")
    examples = task.load()[:4]
    prompt = tuple(smol_tokenizer.encode(" think step by step.", add_special_tokens=False))
    results = {}
    for name, model in (("float32", tiny_model), ("bfloat16", half)):
        engine = Engine(model, smol_tokenizer, task, examples, joiner=". Use", answer_temperature=0.2)
        (reasoning,) = engine.reason([prompt], 6)
        results[name] = (reasoning, engine)
    # the same reasoning for both, so the gradients are of the same sequences
    reasoning = results["float32"][0]
    terms = {}
    for name, (_, engine) in results.items():
        terms[name] = engine.terms(engine.sequences(prompt, reasoning), position=1, nll_weight=0.2)
    low, full = terms["bfloat16"], terms["float32"]
    for t in (low, full):
        for tensor in (t.ce, t.nll, t.proposal_logprobs, t.embed_grad):
            assert tensor.dtype == torch.float32
            assert torch.isfinite(tensor).all()
    # bfloat16 weights and activations, float32 reductions: close to the float32 run, loosely
    assert torch.allclose(low.ce, full.ce, rtol=0.05, atol=0.05)
    assert torch.allclose(low.nll, full.nll, rtol=0.05, atol=0.05)
    cosine = torch.nn.functional.cosine_similarity(low.embed_grad, full.embed_grad, dim=0)
    assert cosine > 0.98, float(cosine)
    assert (low.embed_grad - full.embed_grad).norm() < 0.2 * full.embed_grad.norm()


def test_output_logits_are_float32_products_of_low_precision_weights(tiny_model) -> None:
    import copy

    half = copy.deepcopy(tiny_model).to(torch.bfloat16)
    hidden = torch.randn(3, 5, tiny_model.config.hidden_size).to(torch.bfloat16)
    logits = output_logits(half, hidden)
    assert logits.dtype == torch.float32
    assert logits.shape == (3, 5, tiny_model.config.vocab_size)
    exact = hidden.float() @ half.get_output_embeddings().weight.float().T
    assert torch.allclose(logits, exact, rtol=1e-5, atol=1e-5)  # not rounded to bfloat16 (2^-8 relative)
    rounded = (hidden @ half.get_output_embeddings().weight.T).float()
    assert (rounded - exact).abs().max() > 10 * (logits - exact).abs().max()


# --- a bfloat16 run from the command line, interrupted and resumed ------------------------------------


@pytest.mark.slow
def test_bfloat16_run_records_its_placement_and_resumes_exactly(tiny_model_dir, tmp_path, capsys, monkeypatch) -> None:
    bf16 = ["--dtype", "bfloat16", "--device", "cpu"]
    straight = tmp_path / "straight"
    assert main(run_argv(tiny_model_dir, straight, steps=4) + bf16) == 0
    info = json.loads((straight / "run.json").read_text())
    assert info["runtime"] == {"device": "cpu", "dtype": "bfloat16", "device_map": None, "generator": "hf"}
    assert (info["config"]["batch_size"], info["config"]["grad_batch_size"]) == (32, 4)  # auto on a CPU
    steps = [json.loads(line) for line in (straight / "steps.jsonl").read_text().splitlines()]
    assert all(s["peak_memory"]["kind"] in ("rss_peak", "rss_peak_process") for s in steps)
    assert all(s["peak_memory"]["mib"] > 50 for s in steps)  # a Python process with torch loaded

    run = tmp_path / "run"
    make_interrupted_run(run_argv(tiny_model_dir, run, steps=4) + bf16, monkeypatch, after=2)
    capsys.readouterr()
    assert main(["optimize", "--resume", str(run), "--dtype", "float32"]) == 2
    assert "--dtype 'float32' differs from the run's stored value 'bfloat16'" in capsys.readouterr().err
    assert main(["optimize", "--resume", str(run), "--device", "cuda:0"]) == 2
    assert main(["optimize", "--resume", str(run), "--dtype", "bfloat16"]) == 0  # agrees: accepted
    assert "(cpu, bfloat16)" in capsys.readouterr().err
    assert_same(steps_without_timing(run / "steps.jsonl"), steps_without_timing(straight / "steps.jsonl"))
    assert (
        json.loads((run / "result.json").read_text())["prompt"]
        == json.loads((straight / "result.json").read_text())["prompt"]
    )


# --- batch sizes from memory -----------------------------------------------------------------------------


def _llama3_8b() -> LlamaForCausalLM:
    """Llama-3-8B on the meta device (no memory): bench/llama3-8b.json with Llama-3's own vocabulary."""
    config = LlamaConfig(**json.loads((BENCH / "llama3-8b.json").read_text()) | {"vocab_size": 128256})
    with torch.device("meta"):
        return LlamaForCausalLM(config).to(torch.bfloat16)


def test_batch_sizes_fitted_to_free_memory_at_paper_scale() -> None:
    model = _llama3_8b()
    s = shape(model)
    assert kv_bytes_per_token(s) == 2 * 32 * 8 * 128 * 2 == 128 * 1024
    assert activation_bytes_per_token(s) == 32 * (6 * 4096 + 2 * 1024 + 4 * 14336) * 2
    weights = sum(p.numel() for p in model.parameters()) * 2
    assert weights == 8_030_261_248 * 2  # Llama-3-8B's parameter count: 16.1 GB in bfloat16
    # the paper's settings: 50 examples, reasoning up to 1024 tokens, rows of ~1350 tokens; 62 GB free
    batch, grad = fit_batch_sizes(model, 1350, 50, prefix_tokens=300, free=62 * 10**9)
    kv_row, act_row = 128 * 1024 * 1350, activation_bytes_per_token(s) * 1350
    budget = (62 * 10**9 - 50 * 128 * 1024 * 300) * 0.5
    assert batch == int(budget // (3 * kv_row + 128 * s["vocab"] * 4))
    assert grad == int(budget // (act_row + kv_row + 128 * s["vocab"] * 4))
    assert (batch, grad) == (50, 4)  # as README's "On a GPU" says
    assert fit_batch_sizes(model, 1350, 50, 8, "auto", prefix_tokens=300, free=62 * 10**9) == (8, 4)  # kept
    assert fit_batch_sizes(model, 1350, 50, free=10**9) == (1, 1)  # nothing fits: one row, halving can't go lower
    assert fit_batch_sizes(model, 1350, 50) == (32, 4)  # not on CUDA: the CPU defaults
