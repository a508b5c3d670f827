"""GPU check: a `greater compare` cell killed while scoring on test and then resumed gives the test
predictions of the uninterrupted cell, bit for bit, in bfloat16 on a GPU, where a row's numbers can
depend on the batch it runs in; also when "auto" resolves to another batch size in the later sitting.

    python bench/gpu_resume.py OUT_DIR            # one GPU, torch + transformers; no weights: ~1 min
    python bench/gpu_resume.py OUT_DIR --tiny     # the same path on a CPU with a tiny model (seconds)

Put src/ on PYTHONPATH (no install needed). The model has SmolLM2-135M's shape (`SMOL_SHAPE`) with
random weights and SmolLM2's tokenizer (`bench/tokenizer/`); the cell is ZS-CoT's (no search: test
scoring only) on gen/boolean_expressions, 96 test examples, 64-token reasoning. Cases:

- batch 16: uninterrupted; killed after its first test batch, then resumed. Also scored in one batch
  of 96, to show whether batch makeup changes anything on this device at all.
- batch "auto": uninterrupted and first sitting with most free GPU memory held by a dummy tensor (so
  "auto" gives a small size); the resumed sitting without it (so "auto" would give a larger one).

Writes OUT_DIR/gpu_resume.json; exits 1 if a resumed cell's predictions differ from the uninterrupted one's.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

import greater.compare.cells as compare_module
import greater.inference.engine as engine_module
from greater.compare.cells import ScoringModel, run_compare
from greater.methods import MethodConfig
from greater.tasks import get_task

HERE = Path(__file__).resolve().parent
SMOL_SHAPE = {  # SmolLM2-135M-Instruct's config.json
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "max_position_embeddings": 8192,
    "rope_theta": 100000.0,
    "tie_word_embeddings": True,
}
TINY_SHAPE = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
TASK = get_task("gen/boolean_expressions")
SPLIT = (4, 96)


class Killed(Exception):
    """Ends a sitting after its first saved test batch, as a kill would."""


def build(tiny: bool) -> tuple[LlamaForCausalLM, object, torch.device]:
    tokenizer = AutoTokenizer.from_pretrained(HERE / "tokenizer")
    device = torch.device("cpu" if tiny else "cuda")
    dtype = torch.float32 if tiny else torch.bfloat16
    torch.manual_seed(0)
    shape = TINY_SHAPE if tiny else SMOL_SHAPE
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=1, eos_token_id=2, **shape)
    model = LlamaForCausalLM(config).to(device=device, dtype=dtype).eval()
    return model, tokenizer, device


def sitting(scorer: ScoringModel, out: Path, batch_size: int | str, *, kill: bool, hold: bool, device) -> dict:
    """One `run_compare` of the cell into `out`; what "auto" resolved to and the saved batch size."""
    sizes: list[dict] = []
    real_fit, real_save = engine_module.fit_batch_sizes, compare_module.save_partial
    saved: dict = {}

    def fit(model, row_tokens, n_rows, batch_size, *rest, **kwargs):
        fitted = real_fit(model, row_tokens, n_rows, batch_size, *rest, **kwargs)
        auto = real_fit(model, row_tokens, n_rows, "auto", *rest, **kwargs)[0]
        sizes.append({"used": fitted[0], "auto_now": auto})
        return fitted

    def save(path, key, progress):
        real_save(path, key, progress)
        if "test_reasoning" in progress:
            saved.update(batch=progress["test_batch_size"], rows=len(progress["test_reasoning"]))
            if kill:
                raise Killed

    held = None
    if hold and device.type == "cuda":  # leave ~300 MB free so that "auto" fits few rows
        free, _ = torch.cuda.mem_get_info(device)
        held = torch.empty(max(0, free - 300 * 2**20), dtype=torch.uint8, device=device)
    engine_module.fit_batch_sizes, compare_module.save_partial = fit, save
    start = time.perf_counter()
    try:
        config = MethodConfig(steps=1, max_new_tokens=64, batch_size=batch_size)
        run_compare(scorer, [TASK], ["zs-cot"], [0], out, config, split=SPLIT)
        killed = False
    except Killed:
        killed = True
    finally:
        engine_module.fit_batch_sizes, compare_module.save_partial = real_fit, real_save
        del held
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return {"killed": killed, "engine_batch_sizes": sizes, "saved": saved, "seconds": time.perf_counter() - start}


def predictions(out: Path) -> list[dict]:
    path = out / "predictions" / "gen_boolean_expressions__zs-cot__s0.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def differing(a: list[dict], b: list[dict]) -> int:
    return sum((x["reasoning"], x["output"]) != (y["reasoning"], y["output"]) for x, y in zip(a, b, strict=True))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    model, tokenizer, device = build(args.tiny)
    scorer = ScoringModel("random-smollm2-shape", model, tokenizer)
    work = args.out / "work"
    shutil.rmtree(work, ignore_errors=True)
    report: dict = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"}
    report["torch"], report["dtype"] = torch.__version__, str(model.dtype)

    runs = {}
    for name, batch, hold in (("batch16", 16, False), ("auto", "auto", True)):
        plain = sitting(scorer, work / f"{name}-plain", batch, kill=False, hold=hold, device=device)
        first = sitting(scorer, work / f"{name}-cut", batch, kill=True, hold=hold, device=device)
        second = sitting(scorer, work / f"{name}-cut", batch, kill=False, hold=False, device=device)
        diff = differing(predictions(work / f"{name}-plain"), predictions(work / f"{name}-cut"))
        runs[name] = {"plain": plain, "first_sitting": first, "resumed": second, "rows_differing": diff}
    one_batch = sitting(scorer, work / "batch96", 96, kill=False, hold=False, device=device)
    runs["batch96"] = {
        "plain": one_batch,
        "rows_differing_from_batch16": differing(predictions(work / "batch16-plain"), predictions(work / "batch96")),
    }
    report["runs"] = runs
    resumed = [runs[name] for name in ("batch16", "auto")]
    report["ok"] = all(run["rows_differing"] == 0 and run["first_sitting"]["killed"] for run in resumed)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_resume.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(json.dumps(report, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
