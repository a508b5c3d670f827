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
        p.add_argument("--task", required=True, help="task name, e.g. gen/arithmetic or bbh/boolean_expressions")
        p.add_argument(
            "--model", default=None, help="HF hub id, local folder or .gguf file (default: embedded SmolLM2)"
        )
        p.add_argument("--data-dir", default=None, help="folder with BBH JSON files (default: $GREATER_DATA_DIR)")
        p.add_argument("--max-new-tokens", type=_positive, default=None, help="cap on reasoning tokens")
        p.add_argument("--batch-size", type=_positive, default=16)
        p.add_argument("--seed", type=int, default=0)
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
    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.basicConfig(level=logging.WARNING, format="greater: %(message)s")


def _cmd_tasks(args: argparse.Namespace) -> int:
    from greater.tasks import get_task, task_names

    for name in task_names(args.data_dir):
        try:
            desc = get_task(name, args.data_dir).description if name.startswith("gen/") else "BIG-Bench Hard"
        except GreaterError:
            desc = "BIG-Bench Hard (needs --data-dir)"
        print(f"{name:50s} {desc}")
    return 0


def _cmd_optimize(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from greater.evaluate import evaluate
    from greater.optimizer import GreaterConfig, StepRecord, optimize
    from greater.runs import append_jsonl, new_run_dir, write_atomic, write_json
    from greater.tasks import get_task

    overrides = {
        "steps": args.steps,
        "init_prompt": args.init_prompt,
        "top_k": args.top_k,
        "top_q": args.top_q,
        "max_new_tokens": args.max_new_tokens,
        "patience": args.patience,
    }
    config = GreaterConfig(
        seed=args.seed, batch_size=args.batch_size, **{k: v for k, v in overrides.items() if v is not None}
    )
    config.validate()
    task = get_task(args.task, args.data_dir)
    train, test = task.split(args.train, args.test, args.seed)
    model, tokenizer = _load(args)
    requested = args.out or Path("runs") / f"{args.task.replace('/', '_')}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir, renamed = new_run_dir(requested)
    if renamed:
        print(f"greater: {requested} already holds a run; writing to {run_dir} instead", file=sys.stderr)
    run_info = {
        "model": args.model or "embedded:SmolLM2-135M-Instruct",
        "task": args.task,
        "config": asdict(config),
        "split": {"seed": args.seed, "train": len(train), "test": len(test)},
    }
    write_json(run_dir / "run.json", run_info)

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

    print(f"task {args.task}: {len(train)} train / {len(test)} test examples; run directory {run_dir}")
    initial_acc = score(config.init_prompt, "initial prompt")
    bar = tqdm(total=config.steps, desc="optimizing", unit="step", file=sys.stderr)

    def on_step(record: StepRecord) -> None:
        append_jsonl(run_dir / "steps.jsonl", asdict(record))
        bar.set_postfix_str(f"best {record.best_score:.3f}")
        bar.update(1)

    result = optimize(model, tokenizer, task, config, train=train, on_step=on_step)
    bar.close()
    print(f"optimized prompt: {result.prompt}")
    final_acc = score(result.prompt, "optimized prompt")
    write_atomic(run_dir / "prompt.txt", result.prompt + "\n")
    write_json(
        run_dir / "result.json",
        run_info
        | {
            "prompt": result.prompt,
            "prompt_ids": result.prompt_ids,
            "score": result.score,
            "initial_prompt": result.initial_prompt,
            "initial_score": result.initial_score,
            "steps": len(result.steps),
            "stopped": result.stopped,
            "test_accuracy": {"initial": initial_acc, "optimized": final_acc},
        },
    )
    print(f"run written to {run_dir}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from greater.evaluate import evaluate
    from greater.optimizer import GreaterConfig
    from greater.runs import read_json, write_atomic, write_json
    from greater.tasks import get_task

    joiner = args.joiner
    max_new = args.max_new_tokens
    prompt = args.prompt
    if args.run is not None:
        result = read_json(args.run / "result.json")
        prompt = result.get("prompt")
        if not isinstance(prompt, str):
            raise GreaterError(f"{args.run / 'result.json'} has no 'prompt'")
        stored = result.get("config", {})
        joiner = joiner if joiner is not None else stored.get("joiner")
        max_new = max_new or stored.get("max_new_tokens")
    defaults = GreaterConfig()
    joiner = defaults.joiner if joiner is None else joiner
    max_new = max_new or defaults.max_new_tokens
    task = get_task(args.task, args.data_dir)
    train, test = task.split(args.train, None, args.seed)
    examples = (train if args.split == "train" else test)[: args.limit]
    model, tokenizer = _load(args)
    ev = evaluate(
        model,
        tokenizer,
        task,
        examples,
        prompt,
        joiner=joiner,
        max_new_tokens=max_new,
        batch_size=args.batch_size,
        progress=True,
    )
    print(
        f"accuracy: {ev.accuracy:.4f} ({sum(p['correct'] for p in ev.predictions)}/{ev.n}) on {args.task} {args.split}"
    )
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        lines = "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in ev.predictions)
        write_atomic(args.out / "predictions.jsonl", lines)
        write_json(
            args.out / "metrics.json",
            {
                "task": args.task,
                "split": args.split,
                "prompt": prompt,
                "joiner": joiner,
                "accuracy": ev.accuracy,
                "n": ev.n,
            },
        )
        print(f"predictions written to {args.out / 'predictions.jsonl'}")
    return 0


def _load(args: argparse.Namespace):
    from greater.model import load_model

    print("loading model ...", file=sys.stderr)
    return load_model(args.model, trust_remote_code=args.trust_remote_code)


if __name__ == "__main__":
    sys.exit(main())
