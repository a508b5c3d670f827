"""The `greater` command: optimize, evaluate, tasks."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path

from greater.errors import GreaterError

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _quiet_libraries()
    try:
        return args.func(args)
    except GreaterError as exc:
        print(f"greater: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("greater: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="greater", description="Prompt optimization with gradients over reasoning.")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--task", default=None, help="task name, e.g. gen/arithmetic or bbh/boolean_expressions")
        p.add_argument(
            "--model", default=None, help="HF hub id, local folder or .gguf file (default: embedded SmolLM2)"
        )
        p.add_argument("--data-dir", default=None, help="folder with BBH JSON files (default: $GREATER_DATA_DIR)")
        p.add_argument("--max-new-tokens", type=_positive, default=None, help="cap on reasoning tokens")
        p.add_argument("--batch-size", type=_positive, default=None, help="rows per forward/generation batch")
        p.add_argument("--seed", type=int, default=None, help="seed of the split and the proposal draws (0)")
        p.add_argument("--trust-remote-code", action="store_true", help="allow model code from the hub")

    opt = sub.add_parser("optimize", help="find a better prompt for a task")
    common(opt)
    opt.add_argument("--init-prompt", default=None)
    opt.add_argument("--steps", type=_positive, default=None)
    opt.add_argument("--train", type=_positive, default=None, help="training examples")
    opt.add_argument("--test", type=_positive, default=None, help="test examples scored before and after")
    opt.add_argument("--top-k", type=_positive, default=None)
    opt.add_argument("--top-q", type=_positive, default=None)
    opt.add_argument("--patience", type=_positive, default=None, help="stop after N steps without improvement")
    opt.add_argument("--out", type=Path, default=None, help="run directory (default: runs/<task>-<time>)")
    opt.add_argument("--resume", type=Path, default=None, help="continue the run in this directory")
    opt.set_defaults(func=_cmd_optimize)

    ev = sub.add_parser("evaluate", help="accuracy of a prompt on a task split")
    common(ev)
    src = ev.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="the prompt text")
    src.add_argument("--run", type=Path, help="a run directory: evaluates its best prompt")
    ev.add_argument("--split", choices=["train", "test"], default="test")
    ev.add_argument("--train", type=_positive, default=None, help="size of the train split (to define the split)")
    ev.add_argument("--limit", type=_positive, default=None, help="score at most N examples")
    ev.add_argument("--joiner", default=None, help="text between question and prompt (default: '. Use')")
    ev.add_argument("--out", type=Path, default=None, help="write predictions.jsonl and metrics.json here")
    ev.set_defaults(func=_cmd_evaluate)

    tasks = sub.add_parser("tasks", help="list known tasks")
    tasks.add_argument("--data-dir", default=None)
    tasks.set_defaults(func=_cmd_tasks)
    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", module="(transformers|torch|accelerate|gguf)")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.basicConfig(level=logging.WARNING, format="greater: %(message)s")


def _cmd_tasks(args: argparse.Namespace) -> int:
    from greater.tasks import get_task, task_names
    from greater.tasks.bbh import resolve_data_dir

    data_dir = resolve_data_dir(args.data_dir)
    for name in task_names(args.data_dir):
        if name.startswith("gen/"):
            desc = get_task(name).description
        elif data_dir is not None and (data_dir / f"{name.partition('/')[2]}.json").is_file():
            desc = f"BIG-Bench Hard, from {data_dir}"
        else:
            desc = "BIG-Bench Hard (needs --data-dir or $GREATER_DATA_DIR)"
        print(f"{name:50s} {desc}")
    return 0


# command-line flags that set GreaterConfig fields (flag dest -> config field)
_CONFIG_FLAGS = ("steps", "init_prompt", "top_k", "top_q", "max_new_tokens", "patience", "seed", "batch_size")
# flags that define the run but are not config fields, as stored in run.json
_RUN_FLAGS = {"task": ("task",), "model": ("model",), "train": ("split", "train"), "test": ("split", "test")}


class _Terminated(Exception):
    """SIGTERM, raised in the main thread so the run stops like on Ctrl-C."""


def _cmd_optimize(args: argparse.Namespace) -> int:
    from greater.optimizer import GreaterConfig, RunState

    if args.resume is not None:
        run_dir = args.resume
        info, checkpoint = _check_resume(args)
        config = GreaterConfig(**info["config"])
        state = RunState.from_json(checkpoint["state"])
        print(f"resuming {run_dir} after step {state.step}", file=sys.stderr)
    else:
        if not args.task:
            raise GreaterError("--task is required (or --resume DIR to continue a run)")
        given = {k: getattr(args, k) for k in _CONFIG_FLAGS if getattr(args, k) is not None}
        config = GreaterConfig(**given)
        config.validate()
        info = {
            "model": args.model or "embedded:SmolLM2-135M-Instruct",
            "task": args.task,
            "config": asdict(config),
            "data_dir": args.data_dir,
            "split": {"seed": config.seed, "train": args.train, "test": args.test},
        }
        run_dir, state = None, None
    return _run_optimize(args, info, config, run_dir, state)


def _check_resume(args: argparse.Namespace) -> tuple[dict, dict]:
    """The stored run info and checkpoint; refuses when the command line contradicts them."""
    from greater.runs import read_checkpoint, read_json

    info = read_json(args.resume / "run.json")
    if (args.resume / "result.json").exists():
        raise GreaterError(f"{args.resume} is a finished run (result.json exists); nothing to resume")
    checkpoint = read_checkpoint(args.resume)
    for flag in _CONFIG_FLAGS:
        given = getattr(args, flag)
        if given is not None and given != info["config"].get(flag):
            raise GreaterError(_differs(flag, given, info["config"].get(flag)))
    for flag, keys in _RUN_FLAGS.items():
        stored = info
        for key in keys:
            stored = stored.get(key) if isinstance(stored, dict) else None
        given = getattr(args, flag)
        if given is not None and given != stored:
            raise GreaterError(_differs(flag, given, stored))
    return info, checkpoint


def _differs(flag: str, given, stored) -> str:
    name = "--" + flag.replace("_", "-")
    return f"{name} {given!r} differs from the run's stored value {stored!r}; drop {name} to resume, or start a new run"


def _run_optimize(args, info: dict, config, run_dir: Path | None, state) -> int:
    import signal

    from tqdm import tqdm

    from greater.evaluate import evaluate
    from greater.layout import encode_prompt
    from greater.optimizer import StepRecord, optimize
    from greater.runs import (
        append_jsonl,
        new_run_dir,
        read_json,
        read_lines,
        truncate_lines,
        write_atomic,
        write_checkpoint,
    )
    from greater.runs import write_json as write_run_json
    from greater.tasks import get_task

    task = get_task(info["task"], info.get("data_dir"))
    split = info["split"]
    train, test = task.split(split["train"], split["test"], split["seed"])
    fingerprint = _fingerprint(train, test)
    model, tokenizer = _load(None if info["model"].startswith("embedded:") else info["model"], args.trust_remote_code)
    encode_prompt(tokenizer, config.init_prompt)  # a bad prompt fails before anything is written
    if run_dir is None:
        requested = args.out or Path("runs") / f"{args.task.replace('/', '_')}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir, renamed = new_run_dir(requested)
        if renamed:
            print(f"greater: {requested} already holds a run; writing to {run_dir} instead", file=sys.stderr)
        info["split"] |= {"n_train": len(train), "n_test": len(test), "fingerprint": fingerprint}
        write_run_json(run_dir / "run.json", info)
    else:
        if split.get("fingerprint") != fingerprint:
            raise GreaterError(f"the data of task {info['task']!r} changed since {run_dir} started; cannot resume")
        truncate_lines(run_dir / "steps.jsonl", state.step)

    def score(prompt: str, label: str) -> float:
        ev = evaluate(
            model,
            tokenizer,
            task,
            test,
            prompt,
            joiner=config.joiner,
            max_new_tokens=config.max_new_tokens,
            batch_size=config.batch_size,
            progress=True,
        )
        print(f"{label} test accuracy: {ev.accuracy:.3f} ({sum(p['correct'] for p in ev.predictions)}/{ev.n})")
        return ev.accuracy

    print(f"task {info['task']}: {len(train)} train / {len(test)} test examples; run directory {run_dir}")
    initial_path = run_dir / "initial_eval.json"
    if initial_path.exists():
        initial_acc = read_json(initial_path)["accuracy"]
        print(f"initial prompt test accuracy: {initial_acc:.3f} (from {initial_path.name})")
    else:
        initial_acc = score(config.init_prompt, "initial prompt")
        write_run_json(initial_path, {"prompt": config.init_prompt, "accuracy": initial_acc})

    bar = tqdm(total=config.steps, initial=state.step if state else 0, desc="optimizing", unit="step", file=sys.stderr)

    def on_step(record: StepRecord, run_state) -> None:
        append_jsonl(run_dir / "steps.jsonl", asdict(record))
        write_checkpoint(run_dir, {"state": run_state.to_json()})
        bar.set_postfix_str(f"best {record.best_score:.3f}")
        bar.update(1)

    def on_sigterm(signum, frame):
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        result = optimize(model, tokenizer, task, config, train=train, on_step=on_step, state=state)
    except (KeyboardInterrupt, _Terminated) as exc:
        bar.close()
        print(
            f"greater: interrupted; steps up to the last completed one are saved in {run_dir}\n"
            f"resume with: greater optimize --resume {run_dir}",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED if isinstance(exc, KeyboardInterrupt) else EXIT_TERMINATED
    finally:
        signal.signal(signal.SIGTERM, previous)
    bar.close()
    print(f"optimized prompt: {result.prompt}")
    final_acc = score(result.prompt, "optimized prompt")
    write_atomic(run_dir / "prompt.txt", result.prompt + "\n")
    write_run_json(
        run_dir / "result.json",
        info
        | {
            "prompt": result.prompt,
            "prompt_ids": result.prompt_ids,
            "score": result.score,
            "initial_prompt": result.initial_prompt,
            "initial_score": result.initial_score,
            "steps": len(read_lines(run_dir / "steps.jsonl")),
            "stopped": result.stopped,
            "test_accuracy": {"initial": initial_acc, "optimized": final_acc},
        },
    )
    print(f"run written to {run_dir}")
    return 0


def _fingerprint(train, test) -> str:
    import hashlib

    digest = hashlib.sha256()
    for ex in [*train, None, *test]:
        digest.update(b"|" if ex is None else f"{ex.question}\x00{ex.answer}\n".encode())
    return digest.hexdigest()[:16]


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from greater.evaluate import evaluate
    from greater.optimizer import GreaterConfig
    from greater.runs import read_json, write_atomic, write_json
    from greater.tasks import get_task

    joiner, max_new, prompt = args.joiner, args.max_new_tokens, args.prompt
    task_name, data_dir, n_train, seed = args.task, args.data_dir, args.train, args.seed
    if args.run is not None:  # the run's prompt, scored on the run's own split unless told otherwise
        result = read_json(args.run / "result.json")
        prompt = result.get("prompt")
        if not isinstance(prompt, str):
            raise GreaterError(f"{args.run / 'result.json'} has no 'prompt'")
        stored, split = result.get("config", {}), result.get("split", {})
        joiner = joiner if joiner is not None else stored.get("joiner")
        max_new = max_new or stored.get("max_new_tokens")
        task_name = task_name or result.get("task")
        data_dir = data_dir or result.get("data_dir")
        if task_name == result.get("task"):
            n_train = n_train or split.get("train")
            seed = split.get("seed") if seed is None else seed
    defaults = GreaterConfig()
    joiner = defaults.joiner if joiner is None else joiner
    max_new = max_new or defaults.max_new_tokens
    if not task_name:
        raise GreaterError("--task is required")
    task = get_task(task_name, data_dir)
    train, test = task.split(n_train, None, seed or 0)
    examples = (train if args.split == "train" else test)[: args.limit]
    model, tokenizer = _load(args.model, args.trust_remote_code)
    ev = evaluate(
        model,
        tokenizer,
        task,
        examples,
        prompt,
        joiner=joiner,
        max_new_tokens=max_new,
        batch_size=args.batch_size or defaults.batch_size,
        progress=True,
    )
    print(
        f"accuracy: {ev.accuracy:.4f} ({sum(p['correct'] for p in ev.predictions)}/{ev.n}) on {task_name} {args.split}"
    )
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        lines = "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in ev.predictions)
        write_atomic(args.out / "predictions.jsonl", lines)
        write_json(
            args.out / "metrics.json",
            {
                "task": task_name,
                "split": args.split,
                "prompt": prompt,
                "joiner": joiner,
                "accuracy": ev.accuracy,
                "n": ev.n,
            },
        )
        print(f"predictions written to {args.out / 'predictions.jsonl'}")
    return 0


def _load(model: str | None, trust_remote_code: bool):
    from greater.model import load_model

    print("loading model ...", file=sys.stderr)
    return load_model(model, trust_remote_code=trust_remote_code)


if __name__ == "__main__":
    sys.exit(main())
