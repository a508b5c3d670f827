"""bench/gpu.sh's CPU path (--tiny): the GPU check's code runs end to end and reports what it should."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.mark.slow
def test_gpu_check_tiny_runs_on_cpu_and_writes_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = os.environ | {"PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        ["bash", str(BENCH / "gpu.sh"), str(out), "--tiny", "--parts", "decode,paper,reference,early"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((out / "gpu.json").read_text())
    assert (out / "gpu.log").read_text() == proc.stdout  # the log is what was printed
    assert report["model"]["dtype"] == "bfloat16"
    assert report["model"]["device"] == "cpu"
    assert report["task"] == "gen/boolean_expressions"
    assert list(report["parts"]) == ["decode", "paper", "reference", "early"]
    # early stopping emulated: the same steps as paper, but rows end before the cap
    early, paper = report["parts"]["early"], report["parts"]["paper"]
    assert early["settings"]["ends"] == 4
    for cut, full in zip(early["steps"], paper["steps"], strict=True):
        assert 0 < cut["generated_tokens"] < full["generated_tokens"]
    assert paper["steps"][0]["generated_tokens"] == 6 * 4 * 12  # random weights: every row to the cap
    decode = report["parts"].pop("decode")
    assert decode["settings"] == {"rows": 12, "max_new_tokens": 12, "nines": 1}
    assert decode["bound_tokens_per_s"] > 0 and decode["read_bandwidth_gbs"] > 0
    assert (decode["loop"]["rows"], decode["static"]["rows"], decode["generate_in_nines"]["rows"]) == (12, 12, 9)
    for name in ("loop", "static", "generate_in_nines"):
        assert 0 < decode[name]["generated_tokens"] <= decode[name]["rows"] * 12
        assert decode[name]["tokens_per_s"] > 0
    assert decode["static_vs_generate_in_nines"] > 0 and decode["agreement"]["rows"] == 12
    assert 0 <= decode["agreement"]["shared_token_share"] <= 1
    for name, part in report["parts"].items():
        settings = part["settings"]
        assert (settings["train"], settings["max_new_tokens"], settings["steps"]) == (6, 12, 2)
        assert (settings["batch_size"], settings["grad_batch_size"]) == (32, 4)  # "auto" on a CPU
        assert part["stopped"] == "done"
        assert [s["step"] for s in part["steps"]] == [1, 2]
        rows = settings["train"] * (1 + settings["num_select"])  # step 1: reasoning + the candidates' reasoning
        for step in part["steps"]:
            seconds = step["seconds"]
            assert seconds["total"] > 0
            assert seconds["gradient"] > 0
            assert seconds["total"] >= seconds["gradient"] + seconds["selection"] - 1e-3
            assert 0 < step["generated_tokens"] <= rows * settings["max_new_tokens"]
            assert step["backward_tokens"] > 0
            assert step["backward_tokens_per_s"] > 0
            assert step["peak_memory"]["kind"] in ("rss_peak", "rss_peak_process")
            assert step["peak_memory"]["mib"] > 0
        assert part["peak_memory_mib"] == max(s["peak_memory"]["mib"] for s in part["steps"])
        assert f"[{name}] median step {part['median_step_s']:.2f} s" in proc.stdout
    # the total covers every step of every part (how long it takes is measured by bench/wall_clock.py)
    walls = [step["wall_s"] for part in report["parts"].values() for step in part["steps"]]
    assert report["total_seconds"] >= sum(walls) - 0.06  # rounded to 0.1 s, the steps to 1 ms
    assert f"total {report['total_seconds']:.0f} s; written to {out / 'gpu.json'}" in proc.stdout


def _cell(task: str, method: str, seed: int, dev: float, test: float) -> dict:
    return {"task": task, "method": method, "seed": seed, "result": {"dev_accuracy": dev}, "test": {"accuracy": test}}


def test_evidence_rules_decide_on_dev_only_and_wait_for_every_cell(tmp_path: Path) -> None:
    cells = tmp_path / "cells"
    cells.mkdir()
    records = []
    for task in ("t/a", "t/b"):
        for seed in (0, 1, 2):
            records.append(_cell(task, "greater", seed, 0.50, 0.40))
            records.append(_cell(task, "greater-zs", seed, 0.55, 0.10))  # better on dev, worse on test
        records.append(_cell(task, "greater:num_select=6", 0, 0.5625, 0.90))  # +6.25 dev points at seed 0
    records.append(_cell("t/a", "greater:nll_weight=0.6", 0, 0.75, 0.90))  # one task of two: pending
    for i, record in enumerate(records):
        (cells / f"{i}.json").write_text(json.dumps(record))
    script = [sys.executable, str(BENCH / "evidence_rules.py"), str(tmp_path)]
    proc = subprocess.run(script, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "greater-zs: 6 of 6 cells; dev 55.0 vs greater 50.0 (+5.0); test 10.0 vs 40.0 -> gets a row" in lines[1]
    assert lines[3].endswith(
        "greater:nll_weight=0.6: 1 of 2 cells; dev 75.0 vs greater 50.0 (+25.0); test 90.0 vs 40.0 -> pending"
    )
    assert lines[4].endswith(
        "greater:num_select=6: 2 of 2 cells; dev 56.2 vs greater 50.0 (+6.2); test 90.0 vs 40.0 -> passes the screen"
    )
    for record in records:  # 5 dev points at seed 0 is the bar; 4 is not
        if record["method"] == "greater:num_select=6":
            record["result"]["dev_accuracy"] = 0.54
    for i, record in enumerate(records):
        (cells / f"{i}.json").write_text(json.dumps(record))
    proc = subprocess.run(script, capture_output=True, text=True, timeout=60)
    assert proc.stdout.splitlines()[4].endswith("(+4.0); test 90.0 vs 40.0 -> does not pass")
    empty = tmp_path / "empty"
    (empty / "cells").mkdir(parents=True)
    proc = subprocess.run([*script[:-1], str(empty)], capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr.strip() == f"error: no greater cells in {empty / 'cells'}"


def test_identity_diff_ignores_timings_and_finds_any_other_change(tmp_path: Path) -> None:
    def capture(root: Path, score: float, seconds: float, prompt: str) -> None:
        (root / "run").mkdir(parents=True)
        step = {"step": 1, "best_score": score, "seconds": {"total": seconds}, "peak_memory": {"mib": seconds}}
        (root / "run" / "steps.jsonl").write_text(json.dumps(step) + "\n")
        result = {"prompt": prompt, "task": str(root / "data.jsonl"), "usage": {"calls": 3, "seconds": seconds}}
        (root / "run" / "result.json").write_text(json.dumps(result))
        (root / "run" / "prompt.txt").write_text(prompt + "\n")

    def diff(after: Path) -> subprocess.CompletedProcess:
        command = [sys.executable, str(BENCH / "identity.py"), "diff", str(tmp_path / "a"), str(after)]
        return subprocess.run(command, capture_output=True, text=True, timeout=60)

    capture(tmp_path / "a", 0.5, 1.0, "think.")
    capture(tmp_path / "b", 0.5, 7.0, "think.")  # only timings (and the capture's own path) differ
    same = diff(tmp_path / "b")
    assert same.returncode == 0, same.stdout
    assert "3 files compared, 0 differences" in same.stdout
    capture(tmp_path / "c", 0.5 + 1e-12, 1.0, "think!")
    changed = diff(tmp_path / "c")
    assert changed.returncode == 1
    assert "run/steps.jsonl[0].best_score: 0.5 before, 0.500000000001 after" in changed.stdout
    assert "run/prompt.txt: text differs" in changed.stdout
    assert "run/result.json.prompt: 'think.' before, 'think!' after" in changed.stdout
