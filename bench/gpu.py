"""GPU check: GReaTer steps on a random-weight model of Llama-3-8B's shape, in bfloat16, on one GPU.

    bash bench/gpu.sh OUT_DIR            # one GPU, torch + transformers; no network, no weights: < 8 min
    bash bench/gpu.sh OUT_DIR --tiny     # the same path on a CPU with a tiny config (< 1 min)

The model is built from `bench/llama3-8b.json` (Llama-3-8B: hidden 4096, 32 layers, 32 heads, 8 KV
heads, intermediate 14336, rope theta 500000) with SmolLM2's tokenizer (`bench/tokenizer/`, its
49,152-token vocabulary instead of Llama-3's 128,256: 7.4B parameters instead of 8.0B), directly on
the GPU in bfloat16. Two parts, each with its own time guard (no step starts that the slowest step
so far says would not finish in time, and an alarm ends a step still running at the limit):

- paper: 50 training examples of gen/boolean_expressions, reasoning capped at 256 tokens, top-k 40,
  top-q 6 (the reference's launch scripts), 3 selection candidates, 3 steps;
- reference: the settings bench/README.md times on a CPU (8 examples, 96 tokens, top-k 11, top-q 6).

Random weights almost never emit the end-of-turn token, so every reasoning runs to its cap: the
worst case for time and memory. Printed and written to OUT_DIR/gpu.json: seconds per step by phase,
tokens per second (generated; run forward + backward), peak GPU memory per step
(`torch.cuda.max_memory_allocated`), the batch sizes fitted to free memory.
"""

from __future__ import annotations

import argparse
import json
import platform
import signal
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
import transformers
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from greater.optimizer import GreaterConfig, build_engine, fitted_config, optimize
from greater.tasks import get_task

HERE = Path(__file__).resolve().parent
TASK = "gen/boolean_expressions"
PHASES = ("reasoning", "gradient", "proposal", "selection_generation", "selection_scoring", "selection", "total")
PARTS = {  # name -> settings; --tiny shrinks them (see TINY)
    "paper": {"train": 50, "max_new_tokens": 256, "top_k": 40, "top_q": 6, "num_select": 3, "steps": 3},
    "reference": {"train": 8, "max_new_tokens": 96, "top_k": 11, "top_q": 6, "num_select": 3, "steps": 3},
}
TINY = {"train": 6, "max_new_tokens": 12, "steps": 2}
TINY_CONFIG = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
TINY_CONFIG |= {"num_key_value_heads": 2, "head_dim": 16}


class OutOfTime(Exception):
    """The part's time limit passed during a step."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu.json")
    parser.add_argument("--tiny", action="store_true", help="a tiny config on the CPU: the same path in seconds")
    parser.add_argument("--config", type=Path, default=HERE / "llama3-8b.json")
    parser.add_argument("--tokenizer", type=Path, default=HERE / "tokenizer")
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --tiny)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--parts", default="paper,reference", help="comma-separated: paper, reference")
    parser.add_argument(
        "--max-seconds",
        type=float,
        nargs=2,
        default=[240.0, 120.0],
        metavar=("PAPER", "REFERENCE"),
        help="time limit of each part (default 240 120: with start-up, under 8 minutes in all)",
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    device = torch.device(args.device or ("cpu" if args.tiny else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench/gpu.py: CUDA is not available; run with --tiny for the CPU path", file=sys.stderr)
        return 2
    dtype = getattr(torch, args.dtype)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    model, build_s = build_model(args.config, len(tokenizer), device, dtype, tiny=args.tiny)
    report: dict = {
        "machine": machine(device),
        "model": {
            "config": str(args.config.name) + (" (tiny)" if args.tiny else ""),
            "parameters": sum(p.numel() for p in model.parameters()),
            "dtype": args.dtype,
            "device": str(device),
            "build_seconds": round(build_s, 2),
            "weights_mib": round(sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20),
        },
        "task": TASK,
        "parts": {},
    }
    print(
        f"{report['machine']['device_name']}: {report['model']['parameters'] / 1e9:.2f}B parameters in "
        f"{args.dtype}, built in {build_s:.1f} s; torch {torch.__version__}, transformers {transformers.__version__}"
    )
    limits = dict(zip(PARTS, args.max_seconds, strict=True))
    for name in [p.strip() for p in args.parts.split(",") if p.strip()]:
        settings = PARTS[name] | (TINY if args.tiny else {})
        report["parts"][name] = run_part(name, settings, model, tokenizer, limits[name])
        if device.type == "cuda":
            torch.cuda.empty_cache()
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\ntotal {report['total_seconds']:.0f} s; written to {args.out / 'gpu.json'}")
    return 0


def build_model(path: Path, vocab: int, device: torch.device, dtype: torch.dtype, tiny: bool):
    """A random-weight Llama of the config's shape (vocabulary cut to the tokenizer's), built directly on
    `device` in `dtype` (no float32 copy on the CPU first: seconds for 8B parameters on a GPU)."""
    values = json.loads(path.read_text()) | {"vocab_size": vocab} | (TINY_CONFIG if tiny else {})
    config = LlamaConfig(**values)
    started = time.perf_counter()
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    model.eval().requires_grad_(False)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return model, time.perf_counter() - started


def machine(device: torch.device) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return info | {"device_name": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1)}
    cpu = f"CPU ({platform.processor() or platform.machine()})"
    return info | {"device_name": cpu, "threads": torch.get_num_threads()}


def run_part(name: str, settings: dict, model, tokenizer, max_seconds: float) -> dict:
    """Up to `settings["steps"]` GReaTer steps within `max_seconds`; per-step figures as a dict."""
    task = get_task(TASK)
    train, _ = task.split(settings["train"], None, 0)
    config = GreaterConfig(
        steps=settings["steps"],
        max_new_tokens=settings["max_new_tokens"],
        top_k=settings["top_k"],
        top_q=settings["top_q"],
        num_select=settings["num_select"],
    )
    engine = build_engine(model, tokenizer, task, train, config)  # "auto" batch sizes: from free memory
    config, generator = fitted_config(config, engine), engine.generator
    steps: list[dict] = []
    started = time.perf_counter()
    last = {"t": started, "counts": asdict(generator.stats)}

    def on_step(record, state) -> None:
        now, counts = time.perf_counter(), asdict(generator.stats)
        delta = {k: counts[k] - last["counts"][k] for k in counts}
        steps.append(step_figures(record, delta, now - last["t"]))
        last.update(t=now, counts=counts)
        slowest = max(s["wall_s"] for s in steps)
        if now - started + slowest > max_seconds and len(steps) < config.steps:
            raise OutOfTime(f"the next step would end after the {max_seconds:.0f} s limit")

    print(
        f"\n[{name}] {len(train)} examples, reasoning <= {config.max_new_tokens} tokens, top-k {config.top_k}, "
        f"top-q {config.top_q}, {config.num_select} candidates; batch size {config.batch_size}, "
        f"backward chunk {config.grad_batch_size}; limit {max_seconds:.0f} s"
    )
    stopped = "done"
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, max_seconds)
    try:
        optimize(model, tokenizer, task, config, on_step=on_step, engine=engine)
    except OutOfTime as exc:
        stopped = f"time: {exc}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    sizes = {"batch_size": config.batch_size, "grad_batch_size": config.grad_batch_size}
    return {"settings": settings | sizes} | summarize(name, steps, stopped)


def _alarm(signum, frame) -> None:
    raise OutOfTime("the limit passed during a step (that step is not counted)")


def step_figures(record, counts: dict, wall: float) -> dict:
    """One step's seconds per phase, token counts and rates, and peak memory."""
    s = record.seconds
    generation_s = s.get("reasoning", 0.0) + s.get("selection_generation", 0.0)
    return {
        "step": record.step,
        "wall_s": round(wall, 3),
        "seconds": {p: round(s.get(p, 0.0), 3) for p in PHASES},
        "generated_tokens": counts["generated_tokens"],
        "generated_tokens_per_s": round(counts["generated_tokens"] / generation_s, 1) if generation_s else None,
        "backward_tokens": counts["backward_tokens"],
        "backward_tokens_per_s": round(counts["backward_tokens"] / s["gradient"], 1) if s.get("gradient") else None,
        "forward_tokens": counts["forward_tokens"],
        "peak_memory": record.peak_memory,
    }


def summarize(name: str, steps: list[dict], stopped: str) -> dict:
    """Print the part's table and return its figures."""
    print(f"{'step':>4s} " + " ".join(f"{p[:12]:>12s}" for p in PHASES) + f" {'gen tok/s':>10s} {'peak MiB':>9s}")
    for st in steps:
        row = " ".join(f"{st['seconds'][p]:12.2f}" for p in PHASES)
        rate = st["generated_tokens_per_s"] or 0.0
        print(f"{st['step']:4d} {row} {rate:10.0f} {st['peak_memory'].get('mib', 0):9.0f}")
    if not steps:
        print(f"[{name}] no step finished ({stopped})")
        return {"steps": [], "stopped": stopped}
    totals = [st["seconds"]["total"] for st in steps]
    peak = max(st["peak_memory"].get("mib", 0) for st in steps)
    kind = steps[0]["peak_memory"].get("kind")
    print(f"[{name}] median step {statistics.median(totals):.2f} s; peak memory {peak:.0f} MiB ({kind}); {stopped}")
    return {
        "steps": steps,
        "median_step_s": statistics.median(totals),
        "mean_phase_s": {p: round(sum(st["seconds"][p] for st in steps) / len(steps), 3) for p in PHASES},
        "peak_memory_mib": peak,
        "peak_memory_kind": kind,
        "stopped": stopped,
    }


if __name__ == "__main__":
    sys.exit(main())
