"""GPU check: GReaTer steps on a random-weight model of Llama-3-8B's shape, in bfloat16, on one GPU.

    bash bench/gpu.sh OUT_DIR            # one GPU, torch + transformers; no network, no weights: < 8 min
    bash bench/gpu.sh OUT_DIR --tiny     # the same path on a CPU with a tiny config (< 1 min)

The model is built from `bench/llama3-8b.json` (Llama-3-8B: hidden 4096, 32 layers, 32 heads, 8 KV
heads, intermediate 14336, rope theta 500000) with SmolLM2's tokenizer (`bench/tokenizer/`, its
49,152-token vocabulary instead of Llama-3's 128,256: 7.4B parameters instead of 8.0B), directly on
the GPU in bfloat16. Parts (`--parts`, default decode,paper,reference), each with its own time guard
(no step starts that the slowest step so far says would not finish in time, and an alarm ends a step
still running at the limit; `--max-seconds PART=S`):

- decode: 150 rows of P1's contexts, reasoning capped at 256 tokens, in one batch, by greater's default
  loop, by its static-cache loop (`GreaterConfig.static_cache`) and by `model.generate` in groups of 9
  rows (the reference's way; 3 groups): generated tokens/s of each, against the bound that reading the
  weights and the KV cache once per decoding step sets at the read bandwidth measured here, and how
  much of the two loops' output agrees (bfloat16 rounds differently in each);
- paper: 50 training examples of gen/boolean_expressions, reasoning capped at 256 tokens, top-k 40,
  top-q 6 (the reference's launch scripts), 3 selection candidates, 3 steps;
- paper-1024: the same with reasoning capped at 1024 tokens, the paper's setting; with
  `--memory-gib 80` on a larger card, as on an 80 GB one (batch sizes fitted to 80 GiB);
- reference: the settings bench/README.md times on a CPU (8 examples, 96 tokens, top-k 11, top-q 6);
- early: the paper part with early stopping emulated, as real reasonings end before the cap: after each
  token, a row ends (the end-of-turn token is forced) with probability 1/96, drawn from the token itself
  (`EndingRows`), so rows end at different steps (mean about 96 tokens) the same way in every loop.

`--static-cache` runs the GReaTer parts with the static-cache loop.

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
from dataclasses import asdict, replace
from pathlib import Path

import torch
import transformers
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from greater.inference.generation import TransformersGenerator, stop_token_ids
from greater.inference.layout import encode_prompt
from greater.inference.memory import fit_batch_sizes, kv_bytes_per_token, shape
from greater.optimizer import GreaterConfig, build_engine, fitted_config, optimize
from greater.tasks import get_task

HERE = Path(__file__).resolve().parent
TASK = "gen/boolean_expressions"
PHASES = ("reasoning", "gradient", "proposal", "selection_generation", "selection_scoring", "selection", "total")
PARTS = {  # name -> settings; --tiny shrinks them (see TINY)
    "decode": {"rows": 150, "max_new_tokens": 256, "nines": 3},
    "paper": {"train": 50, "max_new_tokens": 256, "top_k": 40, "top_q": 6, "num_select": 3, "steps": 3},
    "paper-1024": {"train": 50, "max_new_tokens": 1024, "top_k": 40, "top_q": 6, "num_select": 3, "steps": 3},
    "reference": {"train": 8, "max_new_tokens": 96, "top_k": 11, "top_q": 6, "num_select": 3, "steps": 3},
    "early": {"train": 50, "max_new_tokens": 256, "top_k": 40, "top_q": 6, "num_select": 3, "steps": 3, "ends": 96},
}
LIMITS = {"decode": 150.0, "paper": 240.0, "paper-1024": 300.0, "reference": 120.0, "early": 240.0}  # seconds
TINY = {"train": 6, "rows": 12, "max_new_tokens": 12, "steps": 2, "nines": 1, "ends": 4}
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
    parser.add_argument("--parts", default="decode,paper,reference", help=f"comma-separated, of: {', '.join(PARTS)}")
    parser.add_argument(
        "--max-seconds",
        nargs="*",
        default=[],
        metavar="PART=SECONDS",
        help="time limit of a part (default " + ", ".join(f"{k}={v:.0f}" for k, v in LIMITS.items()) + ")",
    )
    parser.add_argument(
        "--memory-gib", type=float, default=None, help="use at most this much GPU memory (e.g. 80: an 80 GB card)"
    )
    parser.add_argument(
        "--static-cache", action="store_true", help="GReaTer parts decode with GreaterConfig.static_cache"
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
    limits = LIMITS | {k: float(v) for k, v in (item.split("=", 1) for item in args.max_seconds)}
    free = cap_memory(device, args.memory_gib)
    report["memory_gib"] = args.memory_gib
    for name in [p.strip() for p in args.parts.split(",") if p.strip()]:
        settings = {k: v for k, v in (PARTS[name] | (TINY if args.tiny else {})).items() if k in PARTS[name]}
        if name == "decode":
            report["parts"][name] = run_decode(settings, model, tokenizer, device, limits[name])
        else:
            settings["static_cache"] = args.static_cache
            report["parts"][name] = run_part(name, settings, model, tokenizer, limits[name], free)
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


def cap_memory(device: torch.device, gib: float | None) -> int | None:
    """With `gib`, limit this process's GPU memory to it and return the bytes it leaves free (the batch
    sizes are fitted to that instead of the card's free memory); None otherwise."""
    if gib is None or device.type != "cuda":
        return None
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, gib * 2**30 / total), device)
    return int(gib * 2**30) - torch.cuda.memory_allocated(device)


def run_part(name: str, settings: dict, model, tokenizer, max_seconds: float, free: int | None = None) -> dict:
    """Up to `settings["steps"]` GReaTer steps within `max_seconds`; per-step figures as a dict. `free`:
    the bytes the batch sizes are fitted to (default: the card's free memory)."""
    task = get_task(TASK)
    train, _ = task.split(settings["train"], None, 0)
    config = GreaterConfig(
        steps=settings["steps"],
        max_new_tokens=settings["max_new_tokens"],
        top_k=settings["top_k"],
        top_q=settings["top_q"],
        num_select=settings["num_select"],
        static_cache=settings["static_cache"],
    )
    if free is not None:  # the engine fits "auto" to the card; here to the capped memory
        probe = build_engine(model, tokenizer, task, train, replace(config, batch_size=1, grad_batch_size=1))
        sizes = fit_batch_sizes(
            model, probe.row_tokens(config.max_new_tokens), len(train), free=free, prefix_tokens=probe.row_tokens(0)
        )
        config = replace(config, batch_size=sizes[0], grad_batch_size=sizes[1])
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
    ending = EndingRows(model, min(stop_token_ids(model, tokenizer)), settings.get("ends"))
    try:
        optimize(model, tokenizer, task, config, on_step=on_step, engine=engine)
    except OutOfTime as exc:
        stopped = f"time: {exc}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        ending.remove()
    sizes = {"batch_size": config.batch_size, "grad_batch_size": config.grad_batch_size}
    return {"settings": settings | sizes} | summarize(name, steps, stopped)


class EndingRows:
    """Random weights never end a reasoning; this makes each generated token end its row with probability
    1/`every`: after every token id divisible by `every` (a random-weight model's greedy tokens are spread
    over the vocabulary), a forward hook on the base model replaces that position's hidden state by the
    end-of-turn token's output-embedding row, scaled up, so the end-of-turn token has the largest logit.
    It reads only the tokens, so every decoding loop ends the same rows at the same steps; the gradient
    pass (run on embeddings) is left as it is. `remove()` takes it off."""

    def __init__(self, model, end_id: int, every: int | None) -> None:
        self.every = every
        self.end_row = model.get_output_embeddings().weight[end_id].detach()
        self.handle = model.base_model.register_forward_hook(self._hook, with_kwargs=True) if every else None

    def _hook(self, module, args, kwargs, output):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            return output
        hidden = output[0]
        ending = ids[:, -hidden.shape[1] :] % self.every == 0
        if ending.any():
            row = self.end_row.to(hidden.dtype) * (64.0 / self.end_row.float().norm().clamp(min=1e-6))
            hidden[ending] = row
        return output

    def remove(self) -> None:
        if self.handle is not None:
            self.handle.remove()


def run_decode(settings: dict, model, tokenizer, device: torch.device, max_seconds: float) -> dict:
    """Greedy reasoning of `rows` training rows (P1's contexts) capped at `max_new_tokens`, one batch, by
    greater's default loop, by its static-cache loop and by `model.generate` in groups of 9 rows (the
    reference's way; `nines` groups only, the rate is per group): generated tokens/s of each, the
    bound that reading the weights and the KV cache once per decoding step sets at the measured read
    bandwidth, the share of it reached, and how often the two loops' tokens agree."""
    task, rows, cap = get_task(TASK), settings["rows"], settings["max_new_tokens"]
    examples = task.load()[:rows]
    engine = build_engine(model, tokenizer, task, examples, GreaterConfig(max_new_tokens=cap, batch_size=rows))
    contexts = [seq.ids for seq in engine.sequences(tuple(encode_prompt(tokenizer, GreaterConfig().init_prompt)))]
    bandwidth = read_bandwidth(device)
    bound = decode_bound(model, [len(c) for c in contexts], cap, bandwidth)
    print(
        f"\n[decode] {rows} rows of {min(map(len, contexts))}-{max(map(len, contexts))} tokens, reasoning <= {cap}; "
        f"read bandwidth {bandwidth / 1e9:.0f} GB/s; bound {bound:.0f} tokens/s"
    )
    out: dict = {"settings": settings, "read_bandwidth_gbs": round(bandwidth / 1e9, 1), "bound_tokens_per_s": bound}
    loops = {
        "loop": TransformersGenerator(model, tokenizer, batch_size=rows),
        "static": TransformersGenerator(model, tokenizer, batch_size=rows, static=True),
        "generate_in_nines": TransformersGenerator(model, tokenizer, batch_size=9, cached=False),
    }
    tokens = {}
    started = time.perf_counter()
    for name, generator in loops.items():
        if time.perf_counter() - started > max_seconds:
            out[name] = {"skipped": f"past the {max_seconds:.0f} s limit"}
            continue
        rows_here = contexts[: 9 * settings["nines"]] if name == "generate_in_nines" else contexts
        _sync(device)
        began = time.perf_counter()
        tokens[name] = generator.generate(rows_here, cap)
        _sync(device)
        seconds = time.perf_counter() - began
        rate = generator.stats.generated_tokens / seconds
        out[name] = {
            "rows": len(rows_here),
            "seconds": round(seconds, 2),
            "generated_tokens": generator.stats.generated_tokens,
            "tokens_per_s": round(rate, 1),
            "share_of_bound": round(rate / bound, 4) if name != "generate_in_nines" else None,
        }
        print(f"[decode] {name:>17s}: {rate:9.0f} tokens/s in {seconds:6.1f} s ({len(rows_here)} rows)")
    if "loop" in tokens and "static" in tokens:
        same = sum(a == b for a, b in zip(tokens["loop"], tokens["static"], strict=True))
        agree = sum(_common_prefix(a, b) for a, b in zip(tokens["loop"], tokens["static"], strict=True))
        total = sum(max(len(a), len(b)) for a, b in zip(tokens["loop"], tokens["static"], strict=True))
        out["agreement"] = {"identical_rows": same, "rows": len(contexts), "shared_token_share": agree / total}
        print(
            f"[decode] static vs loop: {same}/{len(contexts)} rows identical; {agree / total:.1%} of the tokens "
            "come before a row's first difference"
        )
    for name in ("static", "loop"):
        if "tokens_per_s" in out.get(name, {}) and "tokens_per_s" in out.get("generate_in_nines", {}):
            ratio = out[name]["tokens_per_s"] / out["generate_in_nines"]["tokens_per_s"]
            out[f"{name}_vs_generate_in_nines"] = round(ratio, 2)
            print(f"[decode] {name} / generate in nines: {ratio:.1f}x")
    return out


def read_bandwidth(device: torch.device) -> float:
    """Bytes per second one reduction reads from `device`'s memory (a 2 GiB tensor on a GPU, 256 MiB on a
    CPU), best of 5: the rate the decode bound assumes."""
    size = 2**30 if device.type == "cuda" else 2**27
    data = torch.ones(size, dtype=torch.float16, device=device)
    best = float("inf")
    for _ in range(6):
        _sync(device)
        began = time.perf_counter()
        data.sum()
        _sync(device)
        best = min(best, time.perf_counter() - began)
    del data
    return 2 * size / best


def decode_bound(model, context_lengths: list[int], cap: int, bandwidth: float) -> float:
    """Generated tokens/s if every decoding step only read the weights (all but the input embeddings,
    of which a step reads a row each) and every row's KV cache so far, once, at `bandwidth`; every row
    runs to `cap` (random weights never stop)."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    embeddings = model.get_input_embeddings().weight
    if embeddings is not model.get_output_embeddings().weight:
        weights -= embeddings.numel() * embeddings.element_size()
    per_token = kv_bytes_per_token(shape(model))
    seconds = sum(weights + per_token * (sum(context_lengths) + len(context_lengths) * t) for t in range(cap))
    return round(len(context_lengths) * cap / (seconds / bandwidth), 1)


def _common_prefix(a: list[int], b: list[int]) -> int:
    """How many tokens two reasonings share before they first differ."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
