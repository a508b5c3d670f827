"""Time GReaTer steps on the embedded model, phase by phase; `--compare` runs every speed-up off, then on.

    .venv/bin/python bench/step.py [--compare] [--steps N] [--device cuda] [--placement system]

Defaults are the settings the reference code was timed at: bbh/boolean_expressions (from
../shared/data/bbh when present, else gen/boolean_expressions), 8 training examples, reasoning capped
at 96 new tokens, top-k 11, top-q 6, 3 selection candidates.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from greater.errors import GreaterError
from greater.inference.decoding import DRAFT_SLOTS
from greater.inference.device import DTYPES, resolve_placement
from greater.inference.generation import TransformersGenerator
from greater.inference.layout import AFTER_QUESTION, PLACEMENTS
from greater.inference.model import load_model
from greater.optimizer import GreaterConfig, optimize
from greater.tasks import get_task

BBH = Path(__file__).resolve().parents[2] / "shared" / "data" / "bbh"
PHASES = ["reasoning", "gradient", "proposal", "selection_generation", "selection_scoring", "bookkeeping"]
SWITCHES = ("reuse_reasoning", "batched_gradient", "cached_decoding", "lookup_decoding")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_task = (
        "bbh/boolean_expressions" if (BBH / "boolean_expressions.json").exists() else "gen/boolean_expressions"
    )
    parser.add_argument("--task", default=default_task)
    parser.add_argument("--model", default=None)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--train", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--top-k", type=int, default=11)
    parser.add_argument("--top-q", type=int, default=6)
    parser.add_argument("--num-select", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--placement", default=AFTER_QUESTION, choices=PLACEMENTS, help="where the prompt goes")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    parser.add_argument("--dtype", default="float32", choices=["auto", *DTYPES], help="float32 (default), or auto")
    parser.add_argument("--compare", action="store_true", help="run with every speed-up off, then on")
    parser.add_argument(
        "--random-weights",
        type=Path,
        default=None,
        metavar="DIR",
        help="a folder with only config.json + tokenizer: random weights of that shape (timing where the weights "
        "cannot travel; reasoning then always runs to the cap)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    try:
        placement = resolve_placement(args.device, args.dtype)
    except GreaterError as exc:
        parser.error(str(exc))
    args.device, args.dtype = placement.device, placement.dtype
    torch.manual_seed(0)
    if args.random_weights:
        model, tokenizer = random_model(args.random_weights, args.device, placement.torch_dtype)
    else:
        model, tokenizer = load_model(args.model, device=args.device, dtype=args.dtype)
    task = get_task(args.task, str(BBH) if BBH.exists() else None)
    train, _ = task.split(args.train, None, 0)
    print(
        f"task {args.task}, {len(train)} train examples, device {args.device}, torch threads {torch.get_num_threads()}"
    )
    report: dict = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()} | {"json": None}
    }
    arithmetic = Arithmetic(linear_parameters(model), matmul_rate(model, args.device))
    modes = [("off", False), ("on", True)] if args.compare else [("on", True)]
    runs = {}
    for label, on in modes:
        config = GreaterConfig(
            steps=args.steps,
            max_new_tokens=args.max_new_tokens,
            top_k=args.top_k,
            top_q=args.top_q,
            num_select=args.num_select,
            batch_size=args.batch_size,
            placement=args.placement,
            **{switch: on for switch in SWITCHES},
        )
        generator = TransformersGenerator(
            model, tokenizer, batch_size=args.batch_size, cached=on, draft_slots=DRAFT_SLOTS if on else 0
        )
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        result = optimize(model, tokenizer, task, config, train=train, generator=generator)
        wall = time.perf_counter() - started
        runs[label] = result
        report[label] = summarize(label, result, generator, wall, args.device, arithmetic)
    if args.compare:
        off, on = runs["off"], runs["on"]
        same = [a.chosen_ids for a in off.steps] == [b.chosen_ids for b in on.steps]
        print(f"same prompts with speed-ups off and on: {'yes' if same else 'NO'}")
        if not same:
            diverged = next(
                i for i, (a, b) in enumerate(zip(off.steps, on.steps, strict=True)) if a.chosen_ids != b.chosen_ids
            )
            print(
                f"  first divergence at step {diverged + 1}: greedy generation under different batching can pick "
                "another token on a near-tie (tests/test_speedups.py shows the losses on identical inputs agree)"
            )
        speedup = report["off"]["median_step_s"] / report["on"]["median_step_s"]
        report["same_prompts"] = same
        report["speedup"] = speedup
        print(f"speedup: {speedup:.2f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


def random_model(folder: Path, device: str, dtype: torch.dtype):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder), dtype=dtype).to(device).eval()
    model.requires_grad_(False)
    return model, AutoTokenizer.from_pretrained(folder)


@dataclass
class Arithmetic:
    """What a step's token counts cost in matrix products on this machine, for a lower bound on time.

    parameters: weights of the linear layers every token passes through (output head excluded).
    rate: GFLOP/s this machine reaches on a prefill-sized product of the model's shapes.
    """

    parameters: int
    rate: float

    def gflop(self, counts: dict) -> float:
        """GFLOP of the linear layers for one step's counts: 2 per weight per token forward, twice that
        for a token run forward + backward (the backward computes input gradients only)."""
        tokens = counts["forward_tokens"] + counts["padded_slots"] + 2 * counts["backward_tokens"]
        return 2 * self.parameters * tokens / 1e9


def linear_parameters(model) -> int:
    head = model.get_output_embeddings()
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head)


def matmul_rate(model, device: str, rows: int = 512, repeats: int = 5) -> float:
    """GFLOP/s of (rows × hidden) · (hidden × intermediate) products, best of `repeats`."""
    hidden = model.config.hidden_size
    wide = getattr(model.config, "intermediate_size", 4 * hidden)
    x = torch.randn(rows, hidden, device=device, dtype=model.dtype)
    w = torch.randn(wide, hidden, device=device, dtype=model.dtype)
    best = float("inf")
    for _ in range(repeats + 1):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        started = time.perf_counter()
        torch.nn.functional.linear(x, w)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return 2 * rows * hidden * wide / best / 1e9


def summarize(label: str, result, generator, wall: float, device: str, arithmetic: Arithmetic) -> dict:
    steps = result.steps
    per_phase = {p: [] for p in PHASES}
    for record in steps:
        s = record.seconds
        known = sum(s.get(p, 0.0) for p in PHASES if p != "bookkeeping")
        for p in PHASES[:-1]:
            per_phase[p].append(s.get(p, 0.0))
        per_phase["bookkeeping"].append(max(0.0, s["total"] - known))
    totals = [r.seconds["total"] for r in steps]
    mean_total = sum(totals) / len(totals)
    print(f"\n[{label}] {len(steps)} steps, wall {wall:.1f} s, median step {statistics.median(totals):.2f} s")
    print(f"{'phase':22s} {'s/step':>8s} {'share':>7s}")
    phases = {}
    for p in PHASES:
        mean = sum(per_phase[p]) / len(steps)
        phases[p] = mean
        print(f"{p:22s} {mean:8.2f} {mean / mean_total:7.1%}")
    stats = asdict(generator.stats)
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak = {"peak_rss_mib": round(rss_mib)}
    if device.startswith("cuda"):
        peak["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    per_step = {k: v / len(steps) for k, v in stats.items()}
    print(
        "per step: "
        + ", ".join(f"{k} {v:.0f}" for k, v in per_step.items())
        + "; "
        + ", ".join(f"{k} {v}" for k, v in peak.items())
    )
    gflop = arithmetic.gflop(per_step)
    floor = gflop / arithmetic.rate
    print(
        f"linear layers: {gflop:.0f} GFLOP per step; at {arithmetic.rate:.0f} GFLOP/s (a 512-row product here) "
        f"that is {floor:.2f} s; the mean step reaches {gflop / mean_total:.0f} GFLOP/s"
    )
    print("prompts: " + " | ".join(r.chosen for r in steps))
    return {
        "median_step_s": statistics.median(totals),
        "linear_gflop_per_step": gflop,
        "matmul_gflops": arithmetic.rate,
        "arithmetic_floor_s": floor,
        "phases_s": phases,
        "counts_per_step": per_step,
        **peak,
        "prompts": [r.chosen for r in steps],
    }


if __name__ == "__main__":
    sys.exit(main())
