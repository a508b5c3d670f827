"""Behaviour unchanged by a refactor, shown: the same commands run by two versions of greater write the
same files, timings aside.

    .venv/bin/python bench/identity.py capture SRC OUT     # run the commands with greater from SRC/src
    .venv/bin/python bench/identity.py diff BEFORE AFTER   # every JSON file of two captures, compared

`capture` runs, on one thread: the demo (`make demo`'s settings), a baseline run (`optimize --method
ape`) and a small `greater compare` (greater, zs-cot, ape; one task, one seed), each into OUT; about
25 minutes on one core. Take the "before" capture from a copy of the tree before the change
(`git archive HEAD | tar -x -C /tmp/before`), the "after" one from the changed tree.

`diff` compares every .json and .jsonl file the two captures hold (run.json, steps.jsonl,
checkpoint.json, result.json, prompt.json, cells, table.json, ...) value by value, floats to the bit,
ignoring what a machine measures and a checkpoint's process-random RNG states (`TIMING_KEYS`) and the
capture's own folder name, and the text files (prompt.txt, table.md) byte by byte but for the seconds column
of table.md's cost table; it prints each
difference and exits 1 when there is one.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

VENV_GREATER = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "greater"
TASK = "gen/boolean_expressions"
COMMANDS = {
    "demo": ["optimize", "--task", TASK, "--steps", "10", "--train", "16", "--dev", "32", "--keep-top", "2",
             "--test", "40", "--max-new-tokens", "64", "--out", "demo"],
    "ape": ["optimize", "--method", "ape", "--task", TASK, "--steps", "3", "--train", "8", "--test", "16",
            "--max-new-tokens", "48", "--out", "ape"],
    "cmp": ["compare", "--task", TASK, "--methods", "greater,zs-cot,ape", "--seeds", "0", "--steps", "3",
            "--train", "8", "--dev", "8", "--keep-top", "2", "--test", "16", "--max-new-tokens", "48", "--out", "cmp"],
}  # fmt: skip
# measured, not computed: seconds anywhere, peak memory, the time a step or cell took; and a checkpoint's
# "rng" (the process's global Python, NumPy and torch generators, which each process seeds at random:
# they are saved so a resume restores them, and differ between two runs of the same code)
TIMING_KEYS = {"seconds", "peak_memory", "wall_seconds", "elapsed", "started", "finished", "rng"}
TEXT_SUFFIXES = {".txt", ".md"}


def capture(src: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=False)
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(src.resolve() / "src")}
    for name, argv in COMMANDS.items():
        with (out / f"{name}.out").open("w") as stdout, (out / f"{name}.err").open("w") as stderr:
            code = subprocess.call([str(VENV_GREATER), *argv], cwd=out, env=env, stdout=stdout, stderr=stderr)
        print(f"{name}: exit {code}", flush=True)
        if code != 0:
            sys.exit(f"{name} failed: see {out / f'{name}.err'}")


def _compare(value, where: str, differences: list[str], other) -> None:
    """Compare `value` with `other` recursively, timing keys aside; differences go into `differences`."""
    if isinstance(value, dict) and isinstance(other, dict):
        keys = (set(value) | set(other)) - TIMING_KEYS
        for key in sorted(keys):
            if key not in value or key not in other:
                differences.append(f"{where}.{key}: only in {'before' if key in value else 'after'}")
            else:
                _compare(value[key], f"{where}.{key}", differences, other[key])
    elif isinstance(value, list) and isinstance(other, list):
        if len(value) != len(other):
            differences.append(f"{where}: {len(value)} items before, {len(other)} after")
        for i, (a, b) in enumerate(zip(value, other, strict=False)):
            _compare(a, f"{where}[{i}]", differences, b)
    elif value != other:
        differences.append(f"{where}: {value!r} before, {other!r} after")


# a row of table.md's cost table: method, model calls, generated tokens, then the seconds a machine measured
COST_ROW = re.compile(r"^(\| [^|]+ \| \d+ \| \d+ \| )[\d.]+( \|)$", re.MULTILINE)


def _text(path: Path) -> str:
    """A text file as compared: byte for byte but for the seconds of table.md's cost table."""
    return COST_ROW.sub(r"\1<seconds>\2", path.read_text(encoding="utf-8"))


def _load(path: Path):
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return json.loads(path.read_text(encoding="utf-8"))


def diff(before: Path, after: Path) -> int:
    def files(root: Path) -> set[Path]:
        wanted = {".json", ".jsonl", *TEXT_SUFFIXES}
        return {p.relative_to(root) for p in root.rglob("*") if p.is_file() and p.suffix in wanted}

    differences: list[str] = []
    a, b = files(before), files(after)
    differences += [f"{p}: only in before" for p in sorted(a - b)] + [f"{p}: only in after" for p in sorted(b - a)]
    compared = sorted(a & b)
    for rel in compared:
        if rel.suffix in TEXT_SUFFIXES:
            if _text(before / rel) != _text(after / rel):
                differences.append(f"{rel}: text differs")
            continue
        old = json.loads(json.dumps(_load(before / rel)).replace(str(before.resolve()), "CAPTURE"))
        new = json.loads(json.dumps(_load(after / rel)).replace(str(after.resolve()), "CAPTURE"))
        _compare(old, str(rel), differences, new)
    for line in differences:
        print(line)
    print(f"{len(compared)} files compared, {len(differences)} differences")
    return 1 if differences else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    cap = sub.add_parser("capture")
    cap.add_argument("src", type=Path)
    cap.add_argument("out", type=Path)
    dif = sub.add_parser("diff")
    dif.add_argument("before", type=Path)
    dif.add_argument("after", type=Path)
    args = parser.parse_args()
    if args.command == "capture":
        capture(args.src, args.out)
        return 0
    return diff(args.before, args.after)


if __name__ == "__main__":
    sys.exit(main())
