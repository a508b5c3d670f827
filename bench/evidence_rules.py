"""The two rules docs/results.md fixed before the comparison's variants ran, applied to its folder.

    python bench/evidence_rules.py runs/evidence

- `greater-zs` gets a row in the final table only if the mean dev accuracy of its chosen prompts over
  the tasks and seeds 0-2 is above `greater`'s.
- An option `greater:NAME=VALUE` passes the screen if the mean dev accuracy of its chosen prompts
  over the tasks at seed 0 is at least 5 points above `greater`'s; a passing option then runs seeds 1
  and 2 and gets a row under `greater-zs`'s rule.

Only dev decides; test accuracy is printed beside it because it is reported whatever the rules say.
A variant with cells missing is shown as pending, with its means over the cells it has.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

BASE = "greater"
ZS_VARIANT = "greater-zs"
ROW_SEEDS = (0, 1, 2)
SCREEN_SEED = 0
SCREEN_MARGIN = 0.05  # 5 points of dev accuracy: a little over one of 24 dev examples per task


def cell_scores(cells: list[dict], method: str, seeds: tuple[int, ...]) -> dict[tuple[str, int], tuple[float, float]]:
    """(task, seed) -> (chosen prompt's dev accuracy, test accuracy) for one method's finished cells."""
    return {
        (c["task"], c["seed"]): (c["result"]["dev_accuracy"], c["test"]["accuracy"])
        for c in cells
        if c["method"] == method and c["seed"] in seeds
    }


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def verdict(cells: list[dict], method: str, seeds: tuple[int, ...], margin: float) -> dict:
    """A variant against `greater` on the same (task, seed) cells: dev and test means over the cells the
    variant has finished, how many of the cells it needs it has, and whether its dev mean beats
    greater's by more than `margin` (None while cells are missing)."""
    base = cell_scores(cells, BASE, seeds)
    mine = cell_scores(cells, method, seeds)
    shared = sorted(set(mine) & set(base))
    dev, base_dev = mean([mine[k][0] for k in shared]), mean([base[k][0] for k in shared])
    needed = len({task for task, _ in base}) * len(seeds)
    return {
        "method": method,
        "cells": len(mine),
        "needed": needed,
        "dev": dev,
        "base_dev": base_dev,
        "test": mean([mine[k][1] for k in shared]),
        "base_test": mean([base[k][1] for k in shared]),
        "passes": (dev - base_dev > margin) if len(mine) == len(base) == needed else None,
    }


def line(v: dict, passing: str) -> str:
    status = "pending" if v["passes"] is None else (passing if v["passes"] else "does not pass")
    return (
        f"{v['method']}: {v['cells']} of {v['needed']} cells; dev {100 * v['dev']:.1f} vs greater "
        f"{100 * v['base_dev']:.1f} ({100 * (v['dev'] - v['base_dev']):+.1f}); test {100 * v['test']:.1f} vs "
        f"{100 * v['base_test']:.1f} -> {status}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the comparison folder (its cells/)")
    args = parser.parse_args()
    cells = [json.loads(p.read_text(encoding="utf-8")) for p in sorted((args.out / "cells").glob("*.json"))]
    if not any(c["method"] == BASE for c in cells):
        print(f"error: no {BASE} cells in {args.out / 'cells'}", file=sys.stderr)
        return 2
    print(f"rule for a row, seeds {', '.join(map(str, ROW_SEEDS))}: mean dev above greater's")
    options = sorted({c["method"] for c in cells if c["method"].startswith("greater:")})
    beyond_screen = [m for m in options if any(c["method"] == m and c["seed"] != SCREEN_SEED for c in cells)]
    for method in [ZS_VARIANT, *beyond_screen]:
        print("  " + line(verdict(cells, method, ROW_SEEDS, 0.0), "gets a row"))
    print(f"screen, seed {SCREEN_SEED}: mean dev at least {100 * SCREEN_MARGIN:.0f} points above greater's")
    for method in options:
        print("  " + line(verdict(cells, method, (SCREEN_SEED,), SCREEN_MARGIN - 1e-9), "passes the screen"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
