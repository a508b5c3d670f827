"""Wall-clock targets, measured here rather than asserted in the tests (a test that fails on a slow or busy
machine says nothing about the code):

- `refusal`: `greater optimize` on a task file whose 5th row has a 50,000-word question refuses it — exit
  status 2, one error naming line 5, no run folder — within 60 s from start to exit, loading the model
  included. (tests/test_inputs_and_budgets.py checks what it does: refused before any forward of the model.)
- `gpu-tiny`: `bash bench/gpu.sh OUT --tiny`, the GPU check's code path on a CPU with a tiny model
  (tests/test_bench.py checks what it writes), within 60 s.

    .venv/bin/python bench/wall_clock.py [--only refusal|gpu-tiny] [--model PATH] [--json FILE]

Each is one process, timed from start to exit; nothing is repeated, so on a busy machine the figure is
noisy. Exit status: 0 when every target is met, 1 when one is missed, 2 when a measured command did not
do what it should (its time then means nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
TARGETS_S = {"refusal": 60.0, "gpu-tiny": 60.0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=list(TARGETS_S), default=None, help="measure only this one")
    parser.add_argument("--model", default=None, help="refusal: the model to load (default: greater's embedded one)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; python {platform.python_version()}"
    )
    results = []
    for name in [args.only] if args.only else list(TARGETS_S):
        with tempfile.TemporaryDirectory() as tmp:
            measured = refusal(Path(tmp), args.model, env) if name == "refusal" else gpu_tiny(Path(tmp), env)
        target = TARGETS_S[name]
        measured |= {"name": name, "target_s": target, "met": measured["ok"] and measured["seconds"] < target}
        results.append(measured)
        verdict = "met" if measured["met"] else "MISSED" if measured["ok"] else "NOT MEASURED"
        line = f"{name:9s} {measured['what']}: {measured['seconds']:.1f} s (target < {target:.0f} s: {verdict})"
        print(line, flush=True)
        if not measured["ok"]:
            print(f"          the command did not do what it should:\n{measured['output']}", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps({"results": results}, indent=2) + "\n")
    if not all(r["ok"] for r in results):
        return 2
    return 0 if all(r["met"] for r in results) else 1


def timed(command: list[str], env: dict, limit: float) -> tuple[float, subprocess.CompletedProcess | None]:
    """Seconds from start to exit, and the finished process (None when it ran past `limit`)."""
    started = time.monotonic()
    try:
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        return time.monotonic() - started, None
    return time.monotonic() - started, proc


def refusal(tmp: Path, model: str | None, env: dict) -> dict:
    """`greater optimize` on 12 short rows and, as line 5, one of 50,000 words."""
    rows = [{"input": f"Is {i} even?", "target": "Yes" if i % 2 == 0 else "No"} for i in range(12)]
    rows.insert(4, {"input": "word " * 50_000 + "Is 7 even?", "target": "No"})
    data = tmp / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    command = [sys.executable, "-m", "greater.cli", "optimize", "--task", str(data), "--steps", "1", "--train", "4"]
    command += ["--test", "3", "--max-new-tokens", "4", "--out", str(tmp / "run")]
    command += ["--model", model] if model else []
    seconds, proc = timed(command, env, limit=10 * TARGETS_S["refusal"])
    ok = proc is not None and proc.returncode == 2 and f"{data}, line 5" in proc.stderr
    ok = ok and not (tmp / "run").exists()
    what = f"greater optimize refuses a row too long for the context ({model or 'embedded model'})"
    output = "(ran past the limit)" if proc is None else f"exit {proc.returncode}\n{proc.stderr[-2000:]}"
    return {"what": what, "seconds": round(seconds, 2), "ok": ok, "output": output}


def gpu_tiny(tmp: Path, env: dict) -> dict:
    """`bash bench/gpu.sh OUT --tiny`; also the total gpu.json reports (start-up of the interpreter aside)."""
    command = ["bash", str(HERE / "gpu.sh"), str(tmp / "out"), "--tiny"]
    seconds, proc = timed(command, env | {"PYTHON": sys.executable}, limit=10 * TARGETS_S["gpu-tiny"])
    report = tmp / "out" / "gpu.json"
    ok = proc is not None and proc.returncode == 0 and report.exists()
    total = json.loads(report.read_text())["total_seconds"] if ok else None
    what = "bash bench/gpu.sh OUT --tiny" + (f" (gpu.json's total: {total:.1f} s)" if ok else "")
    printed = "" if proc is None else (proc.stdout + proc.stderr)[-2000:]
    output = "(ran past the limit)" if proc is None else f"exit {proc.returncode}\n{printed}"
    return {"what": what, "seconds": round(seconds, 2), "gpu_json_total_s": total, "ok": ok, "output": output}


if __name__ == "__main__":
    sys.exit(main())
