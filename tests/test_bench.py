"""bench/gpu.sh's CPU path (--tiny): the GPU check's code runs end to end and reports what it should."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_gpu_check_tiny_runs_on_cpu_and_writes_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = os.environ | {"PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        ["bash", str(BENCH / "gpu.sh"), str(out), "--tiny"], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((out / "gpu.json").read_text())
    assert (out / "gpu.log").read_text() == proc.stdout  # the log is what was printed
    assert report["model"]["dtype"] == "bfloat16"
    assert report["model"]["device"] == "cpu"
    assert report["task"] == "gen/boolean_expressions"
    assert report["total_seconds"] < 60
    assert list(report["parts"]) == ["paper", "reference"]
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
