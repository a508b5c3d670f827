"""`greater report`: one self-contained report.html, rendered by a real headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from greater.cli import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _chromium() -> str:
    if CHROMIUM is None:  # CI installs it (make test-deps); a missing browser must fail, not skip
        pytest.fail("chromium is not installed; run `make test-deps` (apt-get install chromium)")
    return CHROMIUM


def _browser(*args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars"]
    return subprocess.run([_chromium(), *flags, *args], capture_output=True, text=True, timeout=120)


def _render(page: Path, shot: Path) -> tuple[str, np.ndarray]:
    """The DOM after the page loaded (no network: file:// only) and a screenshot's pixels."""
    dom = _browser("--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    snap = _browser(f"--screenshot={shot}", "--window-size=1200,1400", page.as_uri())
    assert snap.returncode == 0 and shot.exists(), snap.stderr[-2000:]
    return dom.stdout, np.asarray(Image.open(shot).convert("L"), dtype=float)


def _path_length(d: str) -> float:
    points = [tuple(map(float, p)) for p in re.findall(r"[ML]([\d.]+),([\d.]+)", d)]
    return sum(np.hypot(b[0] - a[0], b[1] - a[1]) for a, b in zip(points, points[1:], strict=False))


@pytest.mark.slow
def test_run_report_renders_with_charts_and_marked_changes(finished_run, tmp_path, capsys):
    assert main(["report", str(finished_run)]) == 0
    page = finished_run / "report.html"
    html = page.read_text()
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "") and "https://" not in html  # no network
    dom, pixels = _render(page, tmp_path / "run.png")
    assert "<svg" in dom and "test accuracy before" in dom
    paths = re.findall(r"<path class=\"series\" d=\"([^\"]+)\"", dom)
    assert len(paths) == 3 and all(_path_length(d) > 100 for d in paths)  # loss, best score, errors: drawn
    assert "<mark>" in dom  # the changed token of each step
    assert dom.count("candidates,") == 2  # per step: its candidates and the evaluated ones
    assert pixels.std() > 10 and (pixels < 128).mean() > 0.005  # not a blank page


@pytest.mark.slow
def test_compare_report_renders_the_table_and_chart(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", "--model", str(tiny_model_dir), "--task", "gen/arithmetic", "--task", "gen/boolean_expressions"]
    argv += ["--methods", "zs-cot", "--seeds", "0,1", "--train", "2", "--test", "2", "--max-new-tokens", "2"]
    assert main([*argv, "--out", str(out)]) == 0
    assert main(["report", str(out)]) == 0
    dom, pixels = _render(out / "report.html", tmp_path / "cmp.png")
    assert "gen/arithmetic" in dom and "gen/boolean_expressions" in dom and "zs-cot" in dom
    assert len(re.findall(r"<rect class=\"bar\"", dom)) == 2
    assert len(re.findall(r"<path class=\"whisker\"", dom)) == 2  # two seeds: an sd per bar
    assert len(re.findall(r"<line class=\"chance\"", dom)) == 2  # one per task
    assert "data:image/png" not in dom and dom.count('aria-label="test accuracy by task and method"') == 1  # once
    assert pixels.std() > 10


@pytest.mark.slow
def test_report_of_a_folder_that_is_no_run_is_one_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "neither run.json" in capsys.readouterr().err


@pytest.mark.slow
def test_report_out_may_name_a_new_folder_and_an_unwritable_one_is_one_error(finished_run, tmp_path, capsys):
    target = tmp_path / "new" / "deeper" / "page.html"
    assert main(["report", str(finished_run), "--out", str(target)]) == 0
    assert target.read_text().startswith("<!DOCTYPE html") or "<html" in target.read_text()[:200]
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert main(["report", str(finished_run), "--out", str(blocker / "page.html")]) == 2
    err = capsys.readouterr().err
    assert "cannot write" in err
    assert "Traceback" not in err
