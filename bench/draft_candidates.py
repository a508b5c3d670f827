"""Measure low-precision copies of the embedded model as drafters for draft-and-verify decoding (issue 16).

    .venv/bin/python bench/draft_candidates.py --threads 1 [--json FILE]

Candidates, each next to the float32 model (`greater.inference.model.load_model()`):

- `int8-dyn`: torch dynamic int8 quantization of every Linear (`torch.ao.quantization.quantize_dynamic`,
  x86 engine, per-channel weight scales; the output head too), the embedding shared with the float32
  model; transformers' KV cache.
- `bf16`: a bfloat16 copy of the model in torch (head in bfloat16, argmax of its logits).
- `llama-q4_1`: the embedded GGUF file itself (Q4_1 weights, from which the float32 model is
  de-quantized) run by llama.cpp (`llama-cpp-python`, built from source: `pip install
  llama-cpp-python`), one context per row as a drafter would keep, rows run one after the other.
- `ct2-int8`: CTranslate2 int8 (`ct2-transformers-converter --quantization int8` of the float32 model
  saved with `save_pretrained`); every draft call re-runs the whole prefix (no cache between calls).

Workload: the chat-formatted user turn "question. Use proper logical reasoning ..." for `--per-task`
training questions of gen/boolean_expressions and gen/number_comparison; the reference is the float32
greedy continuation (HF `generate`, one left-padded batch per task, `--ref-tokens` tokens, up to the
end-of-turn token).

What it prints (and writes with `--json`):

- agreement: at every position t of the reference, the candidate's greedy token after the true prefix
  (context + reference[:t]), fed to it incrementally as a drafter sees it (torch: one batch of a task's
  rows, left-padded; ct2: `forward_batch` over the whole row); per-token agreement, and the mean
  accepted length of a k-token draft simulated from it (rounds start at t = 0 and advance by
  accepted + 1: while a draft matches, its prefix is the true prefix, so its next token is the one
  the agreement pass computed there). ct2 drafts are checked against real `generate_batch` calls.
- speed: `--speed-tokens` cached greedy decoding steps at batch 1, 4, 8 (after a prefill that is not
  timed), candidates alternated every repetition, median of the per-repetition ratios to float32;
  ct2: `generate_batch` calls of k tokens on the real prefix (context + 48 reference tokens), so its
  per-call prefill is part of the draft's cost: one call for the batch, one per row, one per row with
  the context as a cached static prompt (`ct2_calls`); the projection takes the cheapest.
- verify: one float32 forward of 1 + k tokens per row (k in `SWEEP`) on a cache of context + 48
  tokens, relative to a plain one-token decoding forward, alternated, medians.
- memory: RSS increase when the candidate is built next to the float32 model (its pages touched by a
  forward) and has run, measured in a fresh child process (after malloc_trim).
- projection: per round, k draft steps + one float32 verify forward of 1 + k tokens advance a row by
  accepted + 1 tokens, which plain decoding takes accepted + 1 forwards for:
  speed-up = (A_k + 1) / (k · r_draft + r_verify(k)), r = cost relative to one float32 decoding
  forward at the same batch (ct2: k · r_draft is replaced by the cost of one k-token call); torch
  drafters for every k in `SWEEP`, ct2 for k in `KS`; `ideal`: a free drafter that is always right.

At `--threads 1` a run takes about 5 minutes (2026-11-26, on a loaded 2-core machine).
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from greater.inference.batching import pack_rows
from greater.inference.kvcache import cache_kwarg
from greater.inference.layout import ChatLayout
from greater.inference.logits import output_logits
from greater.inference.model import load_model
from greater.tasks import get_task

PROMPT = "Use proper logical reasoning and think step by step. Finally give the actual correct answer."
TASKS = ("gen/boolean_expressions", "gen/number_comparison")
BATCHES = (1, 4, 8)
KS = (4, 8)  # draft lengths of the table (ct2 calls are timed for these)
SWEEP = (1, 2, 3, 4, 6, 8)  # draft lengths projected for the torch drafters (k steps of known cost)
MID = 48  # reference tokens already generated where draft calls and verify forwards are timed


def rss_mb() -> float:
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ---------------------------------------------------------------- llama.cpp


@dataclass
class LlamaCppDecoder:
    """The embedded GGUF run by llama.cpp through llama-cpp-python's `Llama.eval` (its KV cache kept
    between calls). A drafter keeps one context per row; here one context serves the rows in turn,
    which costs the same per token."""

    name: str
    threads: int
    llm: object = None

    def __post_init__(self) -> None:
        from llama_cpp import Llama

        from greater.inference.model import embedded_gguf_path

        self.llm = Llama(
            model_path=str(embedded_gguf_path()),
            n_ctx=1024,
            n_batch=512,
            n_threads=self.threads,
            n_threads_batch=self.threads,
            verbose=False,
        )

    def _last_argmax(self) -> int:
        # without logits_all, llama-cpp-python keeps only the last token's logits, in the context
        import numpy as np

        logits = np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(self.llm.n_vocab(),))
        return int(logits.argmax())

    def _start(self, row: list[int]) -> None:
        self.llm.reset()
        self.llm.eval(row)

    def follow(self, rows: list[list[int]], refs: list[list[int]]) -> list[list[bool]]:
        """As `TorchDecoder.follow`, a row at a time: the context in one call, then the reference
        token by token (how a drafter extends a verified prefix and then drafts)."""
        hits: list[list[bool]] = []
        for row, ref in zip(rows, refs, strict=True):
            self._start(row)
            got = []
            for t, token in enumerate(ref):
                got.append(self._last_argmax() == token)
                if t + 1 < len(ref):
                    self.llm.eval([token])
            hits.append(got)
        return hits

    def decode_seconds(self, rows: list[list[int]], steps: int) -> float:
        """Seconds for `steps` greedy decoding calls per row, rows one after the other (prefills untimed)."""
        total = 0.0
        for row in rows:
            self._start(row)
            start = time.perf_counter()
            for _ in range(steps):
                self.llm.eval([self._last_argmax()])
            total += time.perf_counter() - start
        return total


@dataclass
class LlamaCppBatchDecoder:
    """The embedded GGUF run by llama.cpp with every row a sequence of one context (`n_seq_max` rows,
    one `llama_decode` per step for all rows), through llama-cpp-python's low-level API."""

    name: str
    threads: int
    rows_max: int = 8
    n_ctx_row: int = 512

    def __post_init__(self) -> None:
        from llama_cpp import Llama
        from llama_cpp import _internals as internals

        from greater.inference.model import embedded_gguf_path

        self.llm = Llama(model_path=str(embedded_gguf_path()), n_ctx=self.n_ctx_row, verbose=False)
        params = self.llm.context_params
        params.n_ctx = self.n_ctx_row * self.rows_max
        params.n_batch = params.n_ubatch = self.n_ctx_row * self.rows_max
        params.n_seq_max = self.rows_max
        params.kv_unified = True
        params.n_threads = params.n_threads_batch = self.threads
        self.ctx = internals.LlamaContext(model=self.llm._model, params=params, verbose=False)
        self.batch = internals.LlamaBatch(n_tokens=params.n_batch, embd=0, n_seq_max=self.rows_max, verbose=False)
        self.n_vocab = self.llm.n_vocab()

    def _decode(self, entries: list[tuple[int, int, int, bool]]) -> list[int]:
        """One llama_decode of (token, position, sequence, wants logits) entries; the argmax of each
        entry that wants logits, in order."""
        import numpy as np
        from llama_cpp import llama_cpp as C

        b = self.batch.batch
        b.n_tokens = len(entries)
        for j, (token, pos, seq, logits) in enumerate(entries):
            b.token[j], b.pos[j], b.n_seq_id[j], b.logits[j] = token, pos, 1, logits
            b.seq_id[j][0] = seq
        self.ctx.decode(self.batch)
        out = []
        for j, entry in enumerate(entries):
            if entry[3]:
                row = np.ctypeslib.as_array(C.llama_get_logits_ith(self.ctx.ctx, j), shape=(self.n_vocab,))
                out.append(int(row.argmax()))
        return out

    def _prefill(self, rows: list[list[int]]) -> list[int]:
        from llama_cpp import llama_cpp as C

        C.llama_memory_clear(C.llama_get_memory(self.ctx.ctx), True)
        entries = [(tok, i, s, i == len(row) - 1) for s, row in enumerate(rows) for i, tok in enumerate(row)]
        return self._decode(entries)

    def follow(self, rows: list[list[int]], refs: list[list[int]]) -> list[list[bool]]:
        """As `TorchDecoder.follow`, all rows a step at a time in one decode."""
        guess = self._prefill(rows)
        hits: list[list[bool]] = [[] for _ in rows]
        for t in range(max(map(len, refs))):
            for s, ref in enumerate(refs):
                if t < len(ref):
                    hits[s].append(guess[s] == ref[t])
            live = [s for s, ref in enumerate(refs) if t + 1 < len(ref)]
            if not live:
                break
            step = self._decode([(refs[s][t], len(rows[s]) + t, s, True) for s in live])
            guess = dict(zip(live, step, strict=True))
        return hits

    def decode_seconds(self, rows: list[list[int]], steps: int) -> float:
        """Seconds for `steps` greedy decoding steps of all rows together (prefill untimed)."""
        guess = self._prefill(rows)
        start = time.perf_counter()
        for t in range(steps):
            guess = self._decode([(guess[s], len(row) + t, s, True) for s, row in enumerate(rows)])
        return time.perf_counter() - start


# ---------------------------------------------------------------- torch decoders


@dataclass
class TorchDecoder:
    """A causal LM run with transformers' KV cache; `head` turns hidden states into float32 logits."""

    name: str
    model: torch.nn.Module
    head: object
    pad_id: int
    kw: str = ""

    def __post_init__(self) -> None:
        self.kw = cache_kwarg(self.model.base_model)

    def forward(self, cache, ids, mask, pos) -> torch.Tensor:
        hidden = self.model.base_model(
            input_ids=ids, attention_mask=mask, position_ids=pos, **{self.kw: cache}, use_cache=True
        )[0]
        return self.head(hidden)

    def prefill(self, rows: list[list[int]]):
        """Left-padded prefill; returns (cache, mask, next positions, last logits)."""
        from transformers import DynamicCache

        ids, mask = pack_rows(rows, self.pad_id, left=True)
        cache = DynamicCache()
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        hidden = self.model.base_model(
            input_ids=ids, attention_mask=mask, position_ids=pos, **{self.kw: cache}, use_cache=True
        )[0]
        return cache, mask, mask.sum(-1), self.head(hidden[:, -1])

    @torch.no_grad()
    def follow(self, rows: list[list[int]], refs: list[list[int]]) -> list[list[bool]]:
        """Per row, whether the greedy token after context + ref[:t] is ref[t], feeding ref one token at a time."""
        cache, mask, pos, logits = self.prefill(rows)
        steps = max(len(r) for r in refs)
        hits: list[list[bool]] = [[] for _ in rows]
        for t in range(steps):
            guess = logits.argmax(-1).tolist()
            for b, ref in enumerate(refs):
                if t < len(ref):
                    hits[b].append(guess[b] == ref[t])
            if t + 1 == steps:
                break
            feed = torch.tensor([[ref[t] if t < len(ref) else self.pad_id] for ref in refs])
            mask = torch.cat([mask, torch.ones_like(feed)], 1)
            logits = self.forward(cache, feed, mask, pos[:, None])[:, -1]
            pos = pos + 1
        return hits

    @torch.no_grad()
    def decode_seconds(self, rows: list[list[int]], steps: int) -> float:
        """Seconds for `steps` greedy cached decoding forwards after an untimed prefill."""
        cache, mask, pos, logits = self.prefill(rows)
        start = time.perf_counter()
        for _ in range(steps):
            feed = logits.argmax(-1)[:, None]
            mask = torch.cat([mask, torch.ones_like(feed)], 1)
            logits = self.forward(cache, feed, mask, pos[:, None])[:, -1]
            pos = pos + 1
        return time.perf_counter() - start


def float32_decoder(model, pad_id: int) -> TorchDecoder:
    return TorchDecoder("float32", model, lambda h: output_logits(model, h), pad_id)


def int8_decoder(model, pad_id: int) -> TorchDecoder:
    """Every Linear (output head included) as torch's dynamic int8 Linear with per-channel weight scales
    (per-tensor scales agreed less often with float32 in a first probe); the embedding is shared."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    torch.backends.quantized.engine = "x86"
    embed = model.get_input_embeddings()
    model.set_input_embeddings(None)  # not copied: shared below
    try:
        q = copy.deepcopy(model)
    finally:
        model.set_input_embeddings(embed)
    quantize_dynamic(q, {torch.nn.Linear: per_channel_dynamic_qconfig}, inplace=True)
    q.set_input_embeddings(embed)
    head = q.get_output_embeddings()
    return TorchDecoder("int8-dyn", q, lambda h: head(h).float(), pad_id)


def bf16_decoder(model, pad_id: int) -> TorchDecoder:
    b = copy.deepcopy(model).to(torch.bfloat16)
    head = b.get_output_embeddings()
    return TorchDecoder("bf16", b, lambda h: head(h).float(), pad_id)


# ---------------------------------------------------------------- ctranslate2


@dataclass
class Ct2Decoder:
    name: str
    generator: object
    tokens: object  # ids -> token strings
    end_ids: set[int]

    def draft(
        self, rows: list[list[int]], k: int, *, forced: bool = False, static: list[int] | None = None
    ) -> list[list[int]]:
        """k greedy tokens per row after `rows` (fewer when the end of turn comes; `forced`: exactly k);
        `static`: tokens before every row, given as ct2's cached static prompt."""
        results = self.generator.generate_batch(
            [self.tokens(r) for r in rows],
            static_prompt=self.tokens(static) if static else None,
            max_length=k,
            min_length=k if forced else 0,
            sampling_topk=1,
            include_prompt_in_result=False,
            return_end_token=True,
        )
        return [list(r.sequences_ids[0]) for r in results]

    def follow(self, rows: list[list[int]], refs: list[list[int]]) -> list[list[bool]]:
        """Teacher-forced greedy tokens over context + ref, one row per call (logits are (T, V))."""
        import numpy as np

        hits = []
        for row, ref in zip(rows, refs, strict=True):
            logits = np.asarray(self.generator.forward_batch([row + ref[:-1]]))[0]
            guess = logits[len(row) - 1 :].argmax(-1)
            hits.append([int(g) == r for g, r in zip(guess, ref, strict=True)])
        return hits


def ct2_calls(ct2: Ct2Decoder, pairs: list[tuple[list[int], list[int]]], n: int) -> dict[str, float]:
    """Seconds of ct2 draft calls on rows (context, generated so far): `ct2-batch-k`, one call for
    the batch (k = 1, 4, 8 and n: the decoding rate is (t_n - t_1) / (n - 1)); `ct2-rows-k`, one call
    per row (rows of different lengths make a batch call feed the longer rows' extra prefix tokens one
    decoding step at a time); `ct2-static-k`, one call per row with its context as a cached static
    prompt, so only the generated tokens are run again (first call per row builds the cache)."""
    rows = [c + g for c, g in pairs]
    out = {}
    for k in (1, *KS, n):
        out[f"ct2-batch-{k}"] = timed(lambda k=k: ct2.draft(rows, k, forced=True))
    for k in KS:
        out[f"ct2-rows-{k}"] = sum(timed(lambda k=k, row=row: ct2.draft([row], k, forced=True)) for row in rows)
        out[f"ct2-static-{k}"] = sum(
            timed(lambda k=k, c=c, g=g: ct2.draft([g], k, forced=True, static=c)) for c, g in pairs
        )
    return out


def make_ct2(folder: Path, tokenizer, threads: int, end_ids: set[int]) -> Ct2Decoder:
    import ctranslate2

    generator = ctranslate2.Generator(
        str(folder), device="cpu", compute_type="int8", inter_threads=1, intra_threads=threads
    )
    return Ct2Decoder("ct2-int8", generator, tokenizer.convert_ids_to_tokens, end_ids)


def ensure_ct2(model, tokenizer, hf_dir: Path, ct2_dir: Path) -> str:
    """Convert the float32 model once (save_pretrained + ct2-transformers-converter); returns a note."""
    if (ct2_dir / "model.bin").is_file():
        return "reused"
    if not (hf_dir / "config.json").is_file():
        model.save_pretrained(hf_dir)
        tokenizer.save_pretrained(hf_dir)
    converter = Path(sys.executable).with_name("ct2-transformers-converter")
    start = time.perf_counter()
    subprocess.run(
        [str(converter), "--model", str(hf_dir), "--output_dir", str(ct2_dir), "--quantization", "int8", "--force"],
        check=True,
        cwd="/tmp",  # never from inside site-packages/ctranslate2 (its logging.py shadows the stdlib's)
    )
    return f"converted in {time.perf_counter() - start:.1f} s"


# ---------------------------------------------------------------- analysis


def accepted_runs(hits: list[bool], k: int) -> list[int]:
    """Accepted draft lengths of the rounds of a k-token drafter over one reference (see module doc)."""
    runs, t = [], 0
    while t < len(hits):
        a = 0
        while a < k and t + a < len(hits) and hits[t + a]:
            a += 1
        runs.append(a)
        t += a + 1
    return runs


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def rss_of(name: str, args: argparse.Namespace) -> dict:
    """In this process (a fresh child): RSS of the float32 model after a forward (every weight page
    touched), then the increase when candidate `name` is built next to it and has run a forward."""
    import gc

    start = rss_mb()
    model, tokenizer = load_model(dtype="float32", device="cpu")
    row = [[1, 2, 3, 4, 5, 6, 7, 8]]
    f32 = float32_decoder(model, 2)
    f32.decode_seconds(row, 2)
    gc.collect()
    base = rss_mb()
    if name == "ct2-int8":
        decoder = make_ct2(args.ct2_dir, tokenizer, args.threads, set())
        decoder.draft(row, 2)
    elif name.startswith("llama-q4_1"):
        decoder = (LlamaCppDecoder if name == "llama-q4_1" else LlamaCppBatchDecoder)(name, args.threads)
        decoder.decode_seconds(row, 2)
    else:
        decoder = {"int8-dyn": int8_decoder, "bf16": bf16_decoder}[name](model, 2)
        decoder.decode_seconds(row, 2)
    gc.collect()
    return {"float32_mb": round(base - start, 1), "candidate_mb": round(rss_mb() - base, 1)}


def rss_in_child(name: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--threads", str(args.threads), "--rss-of", name, "--ct2-dir", str(args.ct2_dir)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@dataclass
class Report:
    info: dict = field(default_factory=dict)
    agreement: dict = field(default_factory=dict)
    accepted: dict = field(default_factory=dict)
    speed: dict = field(default_factory=dict)
    verify: dict = field(default_factory=dict)
    memory: dict = field(default_factory=dict)
    projection: dict = field(default_factory=dict)
    checks: dict = field(default_factory=dict)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--per-task", type=int, default=8)
    parser.add_argument("--ref-tokens", type=int, default=96)
    parser.add_argument("--speed-tokens", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--candidates", default="int8-dyn,bf16,ct2-int8")
    parser.add_argument("--hf-dir", type=Path, default=Path("/tmp/greater-draft/hf"))
    parser.add_argument("--ct2-dir", type=Path, default=Path("/tmp/greater-draft/ct2-int8"))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--rss-of", default=None, help=argparse.SUPPRESS)  # the memory child
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    torch.set_num_threads(args.threads)
    if args.rss_of:
        print(json.dumps(rss_of(args.rss_of, args)))
        return 0
    wanted = args.candidates.split(",")
    rep = Report()
    rep.info = {"torch": torch.__version__, "threads": args.threads, "cpu": torch.backends.cpu.get_cpu_capability()}
    clock = time.perf_counter()

    def say(text: str) -> None:
        print(f"[{time.perf_counter() - clock:6.0f}s] {text}", flush=True)

    model, tokenizer = load_model(dtype="float32", device="cpu")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stop = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")}
    layout = ChatLayout.from_tokenizer(tokenizer)

    groups: list[list[list[int]]] = []  # per task, its contexts
    for name in TASKS:
        rows = []
        for example in get_task(name).splits(16, None, None, 0).train[: args.per_task]:
            prefix, user = layout.encode_head(tokenizer, f"{example.question}. {PROMPT}")
            rows.append(list(prefix) + list(user) + list(layout.mid_ids))
        groups.append(rows)
    contexts = [row for rows in groups for row in rows]
    say(f"{len(contexts)} contexts, {min(map(len, contexts))}-{max(map(len, contexts))} tokens")

    # reference: float32 greedy, one left-padded batch per task
    refs: list[list[int]] = []
    with torch.no_grad():
        for rows in groups:
            ids, mask = pack_rows(rows, pad, left=True)
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=args.ref_tokens,
                do_sample=False,
                pad_token_id=pad,
                eos_token_id=sorted(stop),
            )[:, ids.shape[1] :].tolist()
            for tokens in out:
                cut = next((i + 1 for i, tok in enumerate(tokens) if tok in stop), len(tokens))
                refs.append(tokens[:cut])
    ref_groups = [refs[: len(groups[0])], refs[len(groups[0]) :]]
    rep.info["reference_tokens"] = sum(map(len, refs))
    say(f"reference: {sum(map(len, refs))} tokens ({min(map(len, refs))}-{max(map(len, refs))} per row)")

    f32 = float32_decoder(model, pad)
    decoders: dict[str, object] = {"float32": f32}
    makers = {
        "int8-dyn": lambda: int8_decoder(model, pad),
        "bf16": lambda: bf16_decoder(model, pad),
        "llama-q4_1": lambda: LlamaCppDecoder("llama-q4_1", args.threads),
        "llama-q4_1-batch": lambda: LlamaCppBatchDecoder("llama-q4_1-batch", args.threads),
    }
    for name in wanted:
        if name == "ct2-int8":
            try:
                rep.info["ct2_conversion"] = ensure_ct2(model, tokenizer, args.hf_dir, args.ct2_dir)
                start = time.perf_counter()
                decoders[name] = make_ct2(args.ct2_dir, tokenizer, args.threads, stop)
            except Exception as exc:  # report and go on without it
                rep.info["ct2_error"] = f"{type(exc).__name__}: {exc}"
                say(f"ct2 unavailable: {rep.info['ct2_error']}")
                continue
        else:
            start = time.perf_counter()
            try:
                decoders[name] = makers[name]()
            except ImportError as exc:  # llama-cpp-python is not a dependency of greater
                rep.info[f"{name}_error"] = str(exc)
                say(f"{name} unavailable: {exc}")
                continue
        loaded = time.perf_counter() - start
        rep.memory[name] = rss_in_child(name, args)  # a fresh process: no pages freed or mapped by this one
        say(f"loaded {name} in {loaded:.1f} s; RSS next to float32 (fresh process): {rep.memory[name]}")
    candidates = [n for n in wanted if n in decoders]

    # ---- agreement with the float32 greedy tokens
    hits: dict[str, list[list[bool]]] = {}
    for name in ["float32", *candidates]:
        start = time.perf_counter()
        rows_hits: list[list[bool]] = []
        for rows, group_refs in zip(groups, ref_groups, strict=True):
            rows_hits += decoders[name].follow(rows, group_refs)
        hits[name] = rows_hits
        flat = [h for row in rows_hits for h in row]
        rep.agreement[name] = round(sum(flat) / len(flat), 4)
        rep.accepted[name] = {}
        for k in SWEEP:
            runs = [a for row in rows_hits for a in accepted_runs(row, k)]
            rep.accepted[name][k] = round(sum(runs) / len(runs), 3)
        took = time.perf_counter() - start
        say(f"agreement {name}: {rep.agreement[name]:.4f}, accepted of k: {rep.accepted[name]} ({took:.0f} s)")

    # int8 dynamic quantizes activations per tensor: the batch changes its numbers; check rows alone
    if "int8-dyn" in candidates:
        pick = sorted({i for i in (0, 1, len(groups[0]), len(groups[0]) + 1) if i < len(contexts)})
        alone = [decoders["int8-dyn"].follow([contexts[i]], [refs[i]])[0] for i in pick]
        flat = [h for row in alone for h in row]
        batched = [h for i in pick for h in hits["int8-dyn"][i]]
        rep.checks["int8_alone_vs_batched_agreement"] = [
            round(sum(flat) / len(flat), 4),
            round(sum(batched) / len(batched), 4),
        ]
        say(
            f"int8-dyn rows alone vs in their batch of {args.per_task}: {rep.checks['int8_alone_vs_batched_agreement']}"
        )

    # ct2: the simulated accepted lengths against real k-token drafts
    if "ct2-int8" in candidates:
        ct2 = decoders["ct2-int8"]
        same = total = 0
        for i in range(0, len(contexts), 2):
            for t in (0, len(refs[i]) // 3, 2 * len(refs[i]) // 3):
                draft = ct2.draft([contexts[i] + refs[i][:t]], 8)[0]
                real = 0
                while real < len(draft) and t + real < len(refs[i]) and draft[real] == refs[i][t + real]:
                    real += 1
                simulated = accepted_runs(hits["ct2-int8"][i][t:], 8)[0]
                same += real == simulated
                total += 1
        rep.checks["ct2_real_vs_simulated_draft_same"] = f"{same}/{total}"
        say(f"ct2 real 8-token drafts with the simulated accepted length: {same}/{total}")

    # ---- speed: cached decoding, alternated, ratios to float32 in the same repetition
    order = ["float32", *[n for n in candidates if n != "ct2-int8"]]
    # rows of a batch: the two tasks' contexts in turn (repeated when there are fewer than the batch)
    picks = {b: [(i % 2) * len(groups[0]) + (i // 2) % len(groups[0]) for i in range(b)] for b in BATCHES}
    batch_rows = {b: [contexts[j] for j in picks[b]] for b in BATCHES}
    mid_pairs = {b: [(contexts[j], refs[j][:MID]) for j in picks[b]] for b in BATCHES}
    mid_rows = {b: [c + g for c, g in mid_pairs[b]] for b in BATCHES}
    seconds: dict[tuple[str, int], list[float]] = {}
    ratios: dict[tuple[str, int], list[float]] = {}
    for r in range(args.reps):
        for b in BATCHES:
            names = order[r % len(order) :] + order[: r % len(order)]
            got = {name: decoders[name].decode_seconds(batch_rows[b], args.speed_tokens) for name in names}
            step = got["float32"] / args.speed_tokens
            ratio = {name: step / (secs / args.speed_tokens) for name, secs in got.items()}
            if "ct2-int8" in candidates:
                calls = ct2_calls(decoders["ct2-int8"], mid_pairs[b], args.speed_tokens)
                got |= calls
                ratio |= {name: step / secs for name, secs in calls.items()}
            for name, secs in got.items():
                seconds.setdefault((name, b), []).append(secs)
                ratios.setdefault((name, b), []).append(ratio[name])
        say(f"speed repetition {r + 1}/{args.reps} done")
    for (name, b), values in seconds.items():
        call = name.startswith("ct2-")
        rep.speed.setdefault(name, {})[b] = {
            "median_s": round(median(values), 4),
            "tokens_per_s": None if call else round(b * args.speed_tokens / median(values), 1),
            # float32 decoding step / this step (ct2: / this call), median of the per-repetition ratios
            "ratio_vs_float32_step": round(median(ratios[(name, b)]), 4),
        }
    if "ct2-int8" in candidates:
        for b in BATCHES:
            t1, tn = median(seconds[("ct2-batch-1", b)]), median(seconds[(f"ct2-batch-{args.speed_tokens}", b)])
            per_tok = (tn - t1) / (args.speed_tokens - 1)
            f32_step = median(seconds[("float32", b)]) / args.speed_tokens
            rep.speed["ct2-int8"] = rep.speed.get("ct2-int8", {})
            rep.speed["ct2-int8"][b] = {
                "decode_s_per_step": round(per_tok, 5),
                "tokens_per_s": round(b / per_tok, 1),
                "ratio_vs_float32_step": round(f32_step / per_tok, 3),
                "call_overhead_k1_in_float32_steps": round(t1 / f32_step, 2),
            }
    say("speed: " + json.dumps(rep.speed))

    # ---- verify: float32 forward of 1 + k tokens per row vs one token, on context + MID tokens
    with torch.no_grad():
        for b in BATCHES:
            cache, mask, pos, logits = f32.prefill(mid_rows[b])
            widths = (1, *[k + 1 for k in SWEEP])
            times: dict[int, list[float]] = {w: [] for w in widths}
            for r in range(max(args.reps, 3) * 2):  # cheap: more repetitions than the decoding runs
                for w in widths[r % len(widths) :] + widths[: r % len(widths)]:
                    ids = torch.full((b, w), 42)
                    m = torch.cat([mask, torch.ones_like(ids)], 1)
                    p = pos[:, None] + torch.arange(w)[None]
                    times[w].append(timed(lambda c=cache, ids=ids, m=m, p=p: f32.forward(c, ids, m, p)))
                    cache.crop(-w)
            one = median(times[1])
            rep.verify[b] = {k: round(median(times[k + 1]) / one, 3) for k in SWEEP}
            rep.verify[b]["one_token_forward_s"] = round(one, 4)
    say("verify (1+k tokens / 1 token): " + json.dumps(rep.verify))

    # ---- projection
    for name in candidates:
        rep.projection[name] = {}
        for b in BATCHES:
            rep.projection[name][b] = {}
            for k in KS if name == "ct2-int8" else SWEEP:
                a = rep.accepted[name][k]
                if name == "ct2-int8":  # the cheapest way to make one k-token draft per row, in float32 steps
                    ways = [f"ct2-{way}-{k}" for way in ("batch", "rows", "static")]
                    draft = min(1 / rep.speed[w][b]["ratio_vs_float32_step"] for w in ways)
                else:
                    draft = k / rep.speed[name][b]["ratio_vs_float32_step"]
                cost = draft + rep.verify[b][k]
                rep.projection[name][b][k] = {
                    "draft_cost": round(draft, 3),
                    "round_cost": round(cost, 3),
                    "speedup": round((a + 1) / cost, 3),
                }
    # a free drafter that is always right, for scale (rows still end: float32's own accepted lengths)
    rep.projection["ideal"] = {
        b: {k: {"speedup": round((rep.accepted["float32"][k] + 1) / rep.verify[b][k], 3)} for k in SWEEP}
        for b in BATCHES
    }
    for per_b in rep.projection.values():
        for per_k in per_b.values():
            k = max(per_k, key=lambda k, per_k=per_k: per_k[k]["speedup"])
            per_k["best"] = {"k": k, "speedup": per_k[k]["speedup"]}
    say("projection: " + json.dumps(rep.projection))
    rep.info["seconds"] = round(time.perf_counter() - clock, 1)
    out = {key: value for key, value in vars(rep).items()}
    print(json.dumps(out, indent=1, default=str))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
