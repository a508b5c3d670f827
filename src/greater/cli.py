"""The `greater` command: optimize, evaluate, tasks."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import os
import signal
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import NamedTuple

from tqdm import tqdm
from transformers.utils import logging as hf_logging

from greater import artifact
from greater.backends.vllm import VLLMGenerator
from greater.cluster import RaySettings, import_ray
from greater.compare import Scorer, run_compare
from greater.device import DTYPES, resolve_placement
from greater.errors import GreaterError, ResumeConflict
from greater.evaluate import (
    DEFAULT_JOINER,
    Cell,
    PromptSpec,
    TaskSplit,
    evaluate,
    evaluate_table,
    prompts_table_markdown,
    slug,
    table_data,
    write_predictions,
    write_table,
)
from greater.fit import context_length, fitting_task
from greater.generation import stop_token_ids
from greater.layout import encode_prompt
from greater.methods import (
    METHODS,
    PAPER_METHODS,
    TUNABLE,
    ZS_COT_PROMPT,
    MethodConfig,
    distinct_settings,
    greater_settings,
    run_method,
)
from greater.model import load_model, model_label, model_name, model_source
from greater.optimizer import (
    CONFIG_FLAGS,
    SELECTION_RULES,
    GreaterConfig,
    RunState,
    StepRecord,
    filler_token,
    optimize,
    resolve_batch_sizes,
)
from greater.report import write_report
from greater.runs import RUN_KEYS, RunDir, read_json, split_sizes, write_atomic, write_json
from greater.runtime import format_duration, parse_duration, set_threads
from greater.stats import majority
from greater.tasks import Example, Task, resolve_task
from greater.tasks import task_names as known_tasks
from greater.tasks.answers import ANSWER_TYPES
from greater.tasks.base import fingerprint
from greater.tasks.custom import OPTIONS as TASK_OPTIONS
from greater.tasks.custom import is_custom_task
from greater.tasks.registry import describe
from greater.tracking import MlflowTracker, NoTracker, default_uri

GENERATORS = ("hf", "vllm")
LOCAL_RAY = "local"  # --ray without an address: a Ray instance started on this machine
# where and how the model runs, as run.json's "runtime" records it (flag dest -> stored key)
_RUNTIME_FLAGS = ("device", "dtype", "device_map", "generator")
# what a run from before these flags ran with
_OLD_RUNTIME = {"device": "cpu", "dtype": "float32", "device_map": None, "generator": "hf"}
EXIT_BAD_INPUT = 2
EXIT_OUT_OF_TIME = 3  # --max-time spent: the run is checkpointed; `--resume` finishes it
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _quiet_libraries()
    try:
        _apply_threads(args)
        return args.func(args)
    except GreaterError as exc:
        print(f"greater: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:  # a path that cannot be read or written, where no GreaterError says more
        if exc.filename is None:
            raise
        print(f"greater: error: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (KeyboardInterrupt, _Terminated) as exc:
        print("greater: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED if isinstance(exc, KeyboardInterrupt) else EXIT_TERMINATED


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="greater", description="Prompt optimization with gradients over reasoning.")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, many_tasks: bool = False) -> None:
        if many_tasks:
            p.add_argument("--task", action="append", default=None, help="a task to score on (repeat for more)")
        else:
            p.add_argument("--task", default=None, help="task name, e.g. gen/arithmetic or bbh/boolean_expressions")
        p.add_argument(
            "--model", default=None, help="HF hub id, local folder or .gguf file (default: embedded SmolLM2)"
        )
        p.add_argument(
            "--data-dir", default=None, help="data root (bbh/, gsm8k/, folio/) or a BBH folder ($GREATER_DATA_DIR)"
        )
        p.add_argument("--max-new-tokens", type=_positive, default=None, help="cap on reasoning tokens")
        p.add_argument(
            "--batch-size",
            type=_size,
            default=None,
            help="rows per generation batch, or auto (default: from free GPU memory; 32 on a CPU)",
        )
        p.add_argument("--seed", type=int, default=None, help="seed of the split and the proposal draws (0)")
        p.add_argument("--trust-remote-code", action="store_true", help="allow model code from the hub")
        hw = p.add_argument_group("device and precision")
        hw.add_argument("--device", default=None, help="auto (default: CUDA when available), cpu, cuda or cuda:N")
        hw.add_argument(
            "--dtype",
            choices=["auto", *DTYPES],
            default=None,
            help="the weights' dtype (default auto: bfloat16 on a GPU that supports it, else float32)",
        )
        hw.add_argument(
            "--device-map",
            choices=["auto"],
            default=None,
            help="spread a model too large for one GPU over every visible GPU (accelerate)",
        )
        hw.add_argument(
            "--generator",
            choices=GENERATORS,
            default=None,
            help="reasoning generation: hf (transformers, default) or vllm (GPU only: pip install 'greater[vllm]')",
        )
        p.add_argument(
            "--threads", type=_positive, default=None, help="torch threads ($OMP_NUM_THREADS, else physical cores)"
        )
        custom = p.add_argument_group("custom tasks (--task data.jsonl|.csv|.json or task.toml)")
        custom.add_argument("--input-field", default=None, help="question field (default: input, else question)")
        custom.add_argument("--answer-field", default=None, help="gold answer field (default: target, else answer)")
        custom.add_argument("--answer-type", choices=ANSWER_TYPES, default=None, help="default: inferred from data")
        custom.add_argument("--choices", default=None, help="allowed answers, comma-separated (e.g. A,B,C,D)")
        custom.add_argument("--extractor", default=None, help="extraction sentence (default: from the answer type)")
        custom.add_argument(
            "--skip-bad-rows", action="store_true", default=None, help="leave out bad rows instead of refusing"
        )

    opt = sub.add_parser("optimize", help="find a better prompt for a task")
    common(opt)
    opt.add_argument(
        "--method",
        choices=PAPER_METHODS,
        default="greater",
        help="greater (default) or a baseline (see README)",
    )
    opt.add_argument(
        "--evaluations", type=_positive, default=None, help="baselines: candidate prompts scored (3 × --steps)"
    )
    opt.add_argument("--init-prompt", default=None, help="the prompt the search starts from (default: the paper's P1)")
    opt.add_argument(
        "--joiner", default=None, help="text between question and prompt (default '. Use', the reference's)"
    )
    opt.add_argument("--steps", type=_positive, default=None)
    opt.add_argument("--train", type=_positive, default=None, help="training examples")
    opt.add_argument("--test", type=_positive, default=None, help="test examples scored before and after")
    opt.add_argument("--dev", type=_non_negative, default=None, help="dev examples for the final choice (0: none)")
    opt.add_argument("--top-k", type=_positive, default=None, help="per-example top-k of the proposal (40)")
    opt.add_argument("--top-q", type=_positive, default=None, help="intersections whose union are candidates (6)")
    opt.add_argument(
        "--selection",
        choices=SELECTION_RULES,
        default=None,
        help="how shortlisted candidates are chosen (default errors-then-loss; see docs/fidelity.md)",
    )
    opt.add_argument(
        "--candidate-nll",
        action="store_true",
        default=None,
        help="add each candidate's own NLL at the position to its gradient (not in the reference)",
    )
    opt.add_argument(
        "--num-select", type=_positive, default=None, help="shortlisted candidates re-scored with fresh reasoning (3)"
    )
    opt.add_argument("--nll-weight", type=float, default=None, help="λ, weight of the prompt NLL in the loss (0.2)")
    opt.add_argument(
        "--answer-temperature", type=float, default=None, help="answer logits are divided by this in the loss (0.2)"
    )
    opt.add_argument("--filler", default=None, help="token appended when a prompt grows (default '_')")
    opt.add_argument("--keep-top", type=_positive, default=None, help="best prompts scored on the dev set (10)")
    opt.add_argument(
        "--dev-keeps-initial",
        action="store_true",
        default=None,
        help="score the starting prompt on dev too: never return one worse on dev (not in the paper)",
    )
    opt.add_argument(
        "--grad-batch-size",
        type=_size,
        default=None,
        help="rows per forward + backward chunk, or auto (default: from free GPU memory; 4 on a CPU)",
    )
    opt.add_argument("--patience", type=_positive, default=None, help="stop after N steps without improvement")
    opt.add_argument("--out", type=Path, default=None, help="run directory (default: runs/<task>-<time>)")
    opt.add_argument("--resume", type=Path, default=None, help="continue the run in this directory")
    opt.add_argument(
        "--max-time", default=None, help="stop after the step in progress once this is spent (90s, 45m, 2h); resumable"
    )
    _add_mlflow_flag(opt)
    opt.set_defaults(func=_cmd_optimize)

    ev = sub.add_parser("evaluate", help="accuracy of prompts on tasks, as a table")
    common(ev, many_tasks=True)
    ev.add_argument("--prompt", action="append", default=None, help="a prompt to score (repeat for more)")
    ev.add_argument(
        "--prompt-file", type=Path, default=None, help="one prompt per line, or a run's prompt.json (its own split)"
    )
    ev.add_argument("--baseline", action="append", choices=sorted(BASELINES), default=None, help="a baseline prompt")
    ev.add_argument("--run", type=Path, help="a run directory: its prompt on its own split (--model OTHER: transfer)")
    ev.add_argument("--split", choices=["train", "dev", "test"], default="test")
    ev.add_argument("--train", type=_positive, default=None, help="size of the train split (to define the split)")
    ev.add_argument("--dev", type=_non_negative, default=None, help="size of the dev split (to define the split)")
    ev.add_argument("--test", type=_positive, default=None, help="size of the test split")
    ev.add_argument("--limit", type=_positive, default=None, help="score at most N examples per task")
    ev.add_argument("--joiner", default=None, help="text between question and prompt (default: '. Use')")
    ev.add_argument("--out", type=Path, default=None, help="write table.md, table.json and predictions here")
    ev.set_defaults(func=_cmd_evaluate)

    cmp = sub.add_parser("compare", help="every method on every task and seed, scored on test, as a table")
    common(cmp, many_tasks=True)
    paper = ",".join(PAPER_METHODS)
    cmp.add_argument(
        "--methods",
        default=paper,
        help=f"comma-separated, of {', '.join(METHODS)} (default {paper}); a GReaTer method may add "
        f"options, each as :NAME=VALUE ({', '.join(TUNABLE)}), e.g. greater:nll_weight=0.5",
    )
    cmp.add_argument("--seeds", default="0", help="comma-separated seeds; each seed draws its own split (default 0)")
    cmp.add_argument("--steps", type=_positive, default=10, help="GReaTer steps; sets every method's budget (10)")
    cmp.add_argument("--evaluations", type=_positive, default=None, help="baselines' candidate prompts (3 × steps)")
    cmp.add_argument(
        "--meta-max-new-tokens", type=_positive, default=None, help="cap on baselines' meta-prompt replies (96)"
    )
    cmp.add_argument("--train", type=_positive, default=None, help="training examples per task")
    cmp.add_argument("--test", type=_positive, default=None, help="test examples per task")
    cmp.add_argument(
        "--dev", type=_non_negative, default=None, help="dev examples per task: every search's final choice (0: none)"
    )
    cmp.add_argument("--keep-top", type=_positive, default=None, help="with --dev: best prompts scored on it (10)")
    cmp.add_argument("--eval-model", action="append", default=None, help="also score every prompt with this model")
    cmp.add_argument("--out", type=Path, default=Path("runs/compare"), help="output folder (default runs/compare)")
    cmp.add_argument(
        "--ray",
        nargs="?",
        const=LOCAL_RAY,
        default=None,
        metavar="ADDRESS",
        help="run the cells as Ray tasks: "
        "on a local Ray instance, or on the cluster at ADDRESS (e.g. ray://head:10001 or auto); pip install "
        "'greater[ray]'",
    )
    _add_mlflow_flag(cmp)
    cmp.set_defaults(func=_cmd_compare)

    _add_artifact_commands(sub)

    tasks = sub.add_parser("tasks", help="list known tasks")
    tasks.add_argument("--data-dir", default=None)
    tasks.set_defaults(func=_cmd_tasks)
    return parser


def _int_at_least(minimum: int, kind: str):
    """An argparse type: an integer >= `minimum`, else a one-line usage error naming `kind`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {kind}, got {value}")
        return value

    return parse


_positive = _int_at_least(1, "a positive integer")
_non_negative = _int_at_least(0, "a whole number (0 or more)")


def _size(text: str) -> int | str:
    """A batch size: a positive integer or "auto"."""
    return "auto" if text.strip().lower() == "auto" else _positive(text)


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", module="(transformers|torch|accelerate|gguf)")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.basicConfig(level=logging.WARNING, format="greater: %(message)s")


def _cmd_tasks(args: argparse.Namespace) -> int:
    for name in known_tasks(args.data_dir):
        print(f"{name:50s} {describe(name, args.data_dir)}")
    return 0


# baseline prompts for `greater evaluate --baseline`: name -> (prompt, joiner); zero-shot CoT reads
# "<question>. Let's think step by step." (the prompt follows the joiner after one space)
BASELINES = {"zs-cot": (ZS_COT_PROMPT, ".")}


class _Terminated(Exception):
    """SIGTERM, raised in the main thread so the run stops like on Ctrl-C."""


@contextlib.contextmanager
def _sigterm_interrupts():
    """Within the block, SIGTERM raises `_Terminated` (main() turns it into exit 143)."""

    def on_sigterm(signum, frame):
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _cmd_optimize(args: argparse.Namespace) -> int:
    """`greater optimize`: a new GReaTer run, a resumed one (--resume DIR), or a baseline (--method)."""
    if args.method != "greater":
        if args.resume is not None:
            raise GreaterError(f"--resume continues GReaTer runs only; start the {args.method} run again instead")
        return _run_baseline(args)
    if args.evaluations is not None:
        raise GreaterError("--evaluations sets a baseline's budget; GReaTer's is --steps")
    if args.resume is not None:
        with RunDir.open(args.resume) as run:  # locked: one process at a time writes a run
            config = GreaterConfig.from_args(args, stored=run.info["config"])
            run.check_flags({flag: getattr(args, flag) for flag in RUN_KEYS})
            run.info["runtime"] = _runtime(args, run.info.get("runtime", {}))
            state = None if run.checkpoint is None else RunState.from_json(run.checkpoint["state"])
            # killed before its first step ended: it starts again from its settings
            where = "from its start (it stopped before its first step)" if state is None else f"after step {state.step}"
            print(f"resuming {run.path} {where}", file=sys.stderr)
            return _run_optimize(args, run.info, config, run, state)
    if not args.task:
        raise GreaterError("--task is required (or --resume DIR to continue a run)")
    _check_out_folder(args.out)
    config = GreaterConfig.from_args(args)
    split = {"seed": config.seed, "train": args.train, "dev": args.dev, "test": args.test}
    return _run_optimize(args, _run_info(args, config, split, _runtime(args)), config, None, None)


def _run_info(args: argparse.Namespace, config, split: dict, runtime: dict, method: str | None = None) -> dict:
    """run.json of a new run as the command line defines it (`RunDir.create` adds the drawn split)."""
    info = {"method": method} if method is not None else {}
    info |= {"model": model_label(args.model), "task": _task_ref(args), "config": asdict(config)}
    info |= {"data_dir": args.data_dir, "task_options": _task_options(args), "split": split, "runtime": runtime}
    return info


def _runtime(args: argparse.Namespace, stored: dict | None = None) -> dict:
    """Device, dtype, device map and generator, resolved (greater.device): from the flags, or on resume
    the run's stored ones; on resume a flag that resolves to something else is refused."""
    base = {} if stored is None else _OLD_RUNTIME | stored

    def pick(key: str, default: object) -> object:
        given = getattr(args, key, None)
        return given if given is not None else base.get(key, default)

    device_map = pick("device_map", None)
    device = args.device if args.device is not None else "auto" if device_map else base.get("device", "auto")
    generator = pick("generator", "hf")
    if generator == "vllm":  # before any model is loaded
        if importlib.util.find_spec("vllm") is None:
            raise GreaterError("--generator vllm needs vLLM: pip install 'greater[vllm]' (GPU only)")
    runtime = resolve_placement(device, pick("dtype", "auto"), device_map).to_json() | {"generator": generator}
    if generator == "vllm" and not runtime["device"].startswith("cuda"):
        raise GreaterError("--generator vllm runs on a GPU; use --device cuda, or --generator hf on a CPU")
    for key in _RUNTIME_FLAGS if stored is not None else ():
        if getattr(args, key, None) is not None and runtime[key] != base[key]:
            raise ResumeConflict(key, getattr(args, key), base[key])
    return runtime


def _run_optimize(args, info: dict, config, run, state) -> int:
    """A GReaTer run: new (`run` None: its folder is made, and locked, once model and data passed their
    checks) or resumed from `state` (None: from its start); the run's folder stays locked until it ends."""
    budget = _budget(args)
    inputs = _prepare_greater(args, info, config, run is None)
    task, model, tokenizer, generator, train, dev, test = inputs
    if config.dev_keeps_initial and not dev:
        raise GreaterError("--dev-keeps-initial scores the starting prompt on the dev set: give --dev N too")
    if run is None:
        # "auto" batch sizes become numbers fitted to this device's free memory, stored for --resume
        config = resolve_batch_sizes(model, tokenizer, task, train, config)
        info["config"] = asdict(config)
        info["threads"] = args.threads_used
        run = _new_run(args, task, info, train, test, dev)
    else:
        run.check_data(train, test, dev)
        run.keep_steps(state.step if state else 0)
    with run:
        return _optimize_into(args, run, budget, config, state, inputs)


def _optimize_into(args, run, budget: _RunClock, config, state, inputs: _GreaterInputs) -> int:
    """The run itself, into its locked folder: the initial test score, the search (`_optimize_checkpointed`),
    the final test score, prompt.txt, prompt.json and result.json."""
    info = run.info
    task, model, tokenizer, generator, train, dev, test = inputs
    tracker = _tracker(args, run)

    def score(prompt: str, label: str) -> float:
        return _test_accuracy(model, tokenizer, task, test, prompt, config, label, generator)

    sizes = f"{len(train)} train / " + (f"{len(dev)} dev / " if dev else "") + f"{len(test)} test"
    print(f"task {info['task']}: {sizes} examples; run directory {run.path}")
    initial_acc = run.initial_accuracy()
    if initial_acc is not None:
        print(f"initial prompt test accuracy: {initial_acc:.3f} (from initial_eval.json)")
    else:
        eval_started = time.monotonic()
        initial_acc = score(config.init_prompt, "initial prompt")
        run.save_initial_accuracy(config.init_prompt, initial_acc)
        budget.test_seconds = time.monotonic() - eval_started
    try:
        result = _optimize_checkpointed(args, run, tracker, budget, config, state, inputs)
    except _OutOfTime as stop:
        print(
            f"greater: --max-time {args.max_time} spent after step {stop.step} of {config.steps}; "
            f"the run is saved in {run.path}\nresume with: greater optimize --resume {run.path}",
            file=sys.stderr,
        )
        return EXIT_OUT_OF_TIME
    if result.dev_accuracy is not None:
        print(f"dev accuracy of the chosen prompt: {result.dev_accuracy:.3f} (best of {len(result.finalists)})")
    print(f"optimized prompt: {result.prompt}")
    test_accuracy = {"initial": initial_acc, "optimized": score(result.prompt, "optimized prompt")}
    common, share = majority([task.normalize(ex.answer) for ex in test])
    print(f"chance on these test examples (always answering {common!r}): {share:.3f}")
    scores = {"score": result.score, "score_name": f"selection score ({config.selection}, lower is better)"}
    scores |= {"dev_accuracy": result.dev_accuracy, "test_accuracy": test_accuracy}
    prompt_fields = {"prompt_ids": result.prompt_ids, "joiner": config.joiner, "task": task, "scores": scores}
    built = artifact.build(info=info, prompt=result.prompt, model=model, tokenizer=tokenizer, **prompt_fields)
    run.write_prompt(result.prompt, built)
    outcome = {"prompt": result.prompt, "prompt_ids": result.prompt_ids, "score": result.score}
    outcome |= {"initial_prompt": result.initial_prompt, "initial_score": result.initial_score}
    outcome |= {"steps": run.steps_logged(), "stopped": result.stopped, "dev_accuracy": result.dev_accuracy}
    outcome |= {"finalists": result.finalists, "test_accuracy": test_accuracy}
    run.write_result(outcome)
    finals = {"train_score": result.score, "dev_accuracy": result.dev_accuracy} | _prefixed(test_accuracy)
    tracker.finish(run.path, finals)
    print(f"run written to {run.path}")
    return 0


class _GreaterInputs(NamedTuple):
    """What a GReaTer run works on, once loaded and checked (`_prepare_greater`)."""

    task: Task
    model: object
    tokenizer: object
    generator: object
    train: list[Example]
    dev: list[Example]
    test: list[Example]


def _prepare_greater(args: argparse.Namespace, info: dict, config, new: bool) -> _GreaterInputs:
    """The task, model, tokenizer, generator and split of a GReaTer run: the model loaded as
    info's runtime says, the prompt and filler checked against its tokenizer and every row against its
    context (all before anything is written), the split drawn."""
    task = resolve_task(info["task"], info.get("data_dir"), info.get("task_options"))
    split = info["split"]
    drawn = task.splits(*split_sizes(split), split["seed"])
    if drawn.note and new:
        print(f"greater: {drawn.note}", file=sys.stderr)
    name = model_name(info["model"])
    model, tokenizer = _load(name, args.trust_remote_code, info["runtime"])
    generator = _generator(name, model, tokenizer, info["runtime"], args.trust_remote_code)
    prompt_ids = encode_prompt(tokenizer, config.init_prompt)
    filler_token(tokenizer, config.filler)
    # the prompt grows by at most one token a step (the filler), so that is the longest it can get
    longest = len(prompt_ids) + config.steps
    task = _fitting_task(model, tokenizer, task, info, longest, config.joiner, config.max_new_tokens)
    drawn = task.splits(*split_sizes(split), split["seed"])
    return _GreaterInputs(task, model, tokenizer, generator, drawn.train, drawn.dev, drawn.test)


def _optimize_checkpointed(args, run, tracker, budget, config, state, inputs: _GreaterInputs):
    """`optimize` with a progress bar, each step checkpointed into `run` and logged to `tracker`, and
    --max-time checked after each (raises `_OutOfTime`); Ctrl-C and SIGTERM print how to resume."""
    task, model, tokenizer, generator, train, dev, test = inputs
    bar = tqdm(total=config.steps, initial=state.step if state else 0, desc="optimizing", unit="step", file=sys.stderr)

    def on_step(record: StepRecord, run_state) -> None:
        run.record_step(record.to_json(), run_state.to_json(), log=lambda: tracker.log_step(record))
        bar.set_postfix_str(f"best selection score {record.best_score:.3f}")
        bar.update(1)
        budget.after_step(bar, record, run_state.step, config, len(dev), len(test))
        if run_state.step == config.steps and dev:
            bar.close()
            print(f"scoring the {config.keep_top} best prompts on {len(dev)} dev examples ...", file=sys.stderr)

    def on_dev(run_state) -> None:
        run.save_checkpoint(run_state.to_json())
        budget.check(run_state.step)

    try:
        with _sigterm_interrupts():
            result = optimize(
                model,
                tokenizer,
                task,
                config,
                train=train,
                dev=dev,
                on_step=on_step,
                on_dev=on_dev,
                state=state,
                generator=generator,
            )
    except (KeyboardInterrupt, _Terminated):
        bar.close()
        print(
            f"greater: steps up to the last completed one are saved in {run.path}\n"
            f"resume with: greater optimize --resume {run.path}",
            file=sys.stderr,
        )
        raise
    finally:
        bar.close()  # also before an error's line (a full disk), so that line is not the bar's
    return result


def _task_ref(args: argparse.Namespace) -> str:
    """`--task` as a run records it: a task file by absolute path (so --resume works from any directory)."""
    return str(Path(args.task).resolve()) if Path(args.task).is_file() else args.task


def _task_options(args: argparse.Namespace) -> dict:
    """The custom-task settings given on the command line."""
    return {key: getattr(args, key) for key in TASK_OPTIONS if getattr(args, key) is not None}


def _check_out_folder(out: Path | None) -> None:
    """Refuse an --out folder that cannot be one (a file, or inside a file), before any model is loaded."""
    if out is None:
        return
    for path in (out, *out.parents):
        if path.exists():
            if not path.is_dir():
                where = "is a file" if path == out else f"is inside {path}, which is a file"
                raise GreaterError(f"--out {out} {where}, not a folder; choose another --out")
            return


def _check_out_file(out: Path | None) -> None:
    """Refuse an --out file path that names a folder."""
    if out is not None and out.is_dir():
        raise GreaterError(f"--out {out} is a folder; give the path of the file to write")


def _new_run(args: argparse.Namespace, task, info: dict, train: list, test: list, dev: list = ()):
    """A fresh `RunDir` (never an existing run's) with run.json written into it."""
    requested = args.out or Path("runs") / f"{slug(task.name)}-{time.strftime('%Y%m%d-%H%M%S')}"
    run, renamed = RunDir.create(requested, info, train, test, dev)
    if renamed:
        print(f"greater: {requested} already holds a run; writing to {run.path} instead", file=sys.stderr)
    return run


def _test_accuracy(model, tokenizer, task, test: list, prompt: str, config, label: str, generator=None) -> float:
    """Score a prompt on the test examples (with progress) and print its accuracy."""
    ev = evaluate(
        model,
        tokenizer,
        task,
        test,
        prompt,
        joiner=config.joiner,
        max_new_tokens=config.max_new_tokens,
        batch_size=config.batch_size,
        generator=generator,
        progress=True,
    )
    print(f"{label} test accuracy: {ev.accuracy:.3f} ({sum(p['correct'] for p in ev.predictions)}/{ev.n})")
    return ev.accuracy


def _run_baseline(args: argparse.Namespace) -> int:
    """`greater optimize --method M` for a baseline: run it, then score its prompt on the test split."""
    if not args.task:
        raise GreaterError("--task is required")
    _check_out_folder(args.out)
    if args.grad_batch_size is not None:
        raise GreaterError("--grad-batch-size sets GReaTer's backward chunks; baselines run no backward pass")
    if args.keep_top is not None:  # a MethodConfig field, used by `greater compare --dev` only
        raise GreaterError(f"--keep-top applies to GReaTer runs only, not to {args.method}")
    _no_vllm(args, f"the {args.method} baseline")
    flags = [k for k in CONFIG_FLAGS if k != "grad_batch_size"] + ["evaluations", "dev"]
    config = MethodConfig.from_args(args, flags, args.method)
    options = _task_options(args)
    task = resolve_task(args.task, args.data_dir, options)
    task.split(args.train, args.test, config.seed)  # a split that cannot be drawn fails before loading
    runtime = _runtime(args)
    model, tokenizer = _load(args.model, args.trust_remote_code, runtime)
    prompt_ids = encode_prompt(tokenizer, config.init_prompt)
    longest = max(len(prompt_ids), config.max_prompt_tokens)  # proposals are cut at max_prompt_tokens
    task = _fitting_task(
        model, tokenizer, task, {"task_options": options}, longest, config.joiner, config.max_new_tokens
    )
    train, test = task.split(args.train, args.test, config.seed)
    split = {"seed": config.seed, "train": args.train, "test": args.test}
    info = _run_info(args, config, split, runtime, method=args.method) | {"threads": args.threads_used}
    with _new_run(args, task, info, train, test) as run:  # locked until the run ends
        tracker = _tracker(args, run)
        print(f"task {info['task']}: {len(train)} train / {len(test)} test examples; run directory {run.path}")
        print(f"running {args.method} (budget: {config.budget} candidate prompts) ...", file=sys.stderr)
        with _sigterm_interrupts():
            result = run_method(args.method, model, tokenizer, task, train, config)
        run.append_history(result.history)
        print(f"optimized prompt: {result.prompt}")
        final_acc = _test_accuracy(model, tokenizer, task, test, result.prompt, config, "optimized prompt")
        scores = {"score": result.score, "score_name": result.score_name, "dev_accuracy": None}
        scores["test_accuracy"] = {"optimized": final_acc}
        ids = encode_prompt(tokenizer, result.prompt)
        prompt_fields = {"prompt_ids": ids, "joiner": result.joiner, "task": task, "scores": scores}
        prompt_fields |= {"model": model, "tokenizer": tokenizer, "method": args.method}
        run.write_prompt(result.prompt, artifact.build(info=run.info, prompt=result.prompt, **prompt_fields))
        for index, entry in enumerate(result.history, 1):  # every candidate prompt the baseline scored
            tracker.log_metrics({k: v for k, v in entry.items() if k in ("accuracy", "ce")}, index)
        # result.json after the MLflow run is finished, as before: the tracker's artifacts hold no result.json
        tracker.finish(run.path, {"train_score": result.score, "test_accuracy_optimized": final_acc})
        outcome = {"prompt": result.prompt, "joiner": result.joiner, "score": result.score}
        outcome |= {
            "score_name": result.score_name,
            "usage": asdict(result.usage),
            "test_accuracy": {"optimized": final_acc},
        }
        run.write_result(outcome)
        print(f"run written to {run.path}")
        return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    methods = _names(args.methods, "--methods")
    try:
        seeds = [int(s) for s in _names(args.seeds, "--seeds")]
    except ValueError:
        raise GreaterError(f"--seeds takes comma-separated integers, got {args.seeds!r}") from None
    if not args.task:
        raise GreaterError("--task is required (repeat it for more tasks)")
    if args.keep_top is not None and not args.dev:
        raise GreaterError("--keep-top picks the prompts scored on the dev set; give --dev N too")
    _check_out_folder(args.out)
    flags = ("steps", "evaluations", "max_new_tokens", "batch_size", "meta_max_new_tokens", "keep_top")
    config = MethodConfig.from_args(args, flags, "greater compare")
    distinct_settings(methods, greater_settings(config))
    options = _task_options(args)
    tasks = [resolve_task(name, args.data_dir, options) for name in dict.fromkeys(args.task)]
    for task in tasks:  # a split that cannot be drawn fails before any model is loaded
        task.splits(args.train, args.dev or 0, args.test, seeds[0])
    _no_vllm(args, "greater compare (its baselines)")
    label = model_label(args.model)
    eval_models = list(dict.fromkeys(args.eval_model or []))
    cluster = None
    if args.ray is not None:  # the workers load the models; this process only writes the cells
        import_ray()
        if args.device_map:
            raise GreaterError("--ray gives each cell one GPU; --device-map spreads one model over several")
        address = None if args.ray == LOCAL_RAY else args.ray
        cluster = RaySettings(address, args.device or "auto", args.dtype or "auto", args.trust_remote_code)
        optimizer, transfer = Scorer(label, None, None), [Scorer(m, None, None) for m in eval_models]
    else:
        runtime = _runtime(args)
        optimizer = Scorer(label, *_load(args.model, args.trust_remote_code, runtime))
        transfer = [Scorer(m, *_load(m, args.trust_remote_code, runtime)) for m in eval_models]
        for scorer in (optimizer, *transfer):  # every row of every task, before any generation
            _check_all_rows_fit(scorer, tasks, config)
    tracker = _compare_tracker(args, {"model": label, "methods": methods, "seeds": seeds} | asdict(config))
    with _sigterm_interrupts():
        try:
            table = run_compare(
                optimizer,
                tasks,
                methods,
                seeds,
                args.out,
                config,
                split=(args.train, args.test),
                dev=args.dev,
                transfer=transfer,
                fingerprint=True,
                progress=True,
                cluster=cluster,
            )
        except (KeyboardInterrupt, _Terminated):
            kept = "" if cluster is not None else ", with the progress of the cell that was running"
            again = "rerun the same command to go on"
            print(f"greater: finished cells are kept in {args.out}{kept}; {again}", file=sys.stderr)
            raise
    _log_compare(tracker, args.out, table)
    print((args.out / "table.md").read_text(encoding="utf-8"), end="")
    print(f"table written to {args.out / 'table.md'}, {args.out / 'table.json'} and {args.out / 'chart.png'}")
    return 0


def _names(text: str, flag: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise GreaterError(f"{flag} is empty")
    return list(dict.fromkeys(names))


def _cmd_evaluate(args: argparse.Namespace) -> int:
    defaults = GreaterConfig()
    joiner = args.joiner if args.joiner is not None else DEFAULT_JOINER
    prompts = [PromptSpec(f"P{i}", text, joiner) for i, text in enumerate(_prompt_texts(args), 1)]
    prompts += [PromptSpec(name, *BASELINES[name]) for name in dict.fromkeys(args.baseline or [])]
    task_names, data_dir, max_new = list(dict.fromkeys(args.task or [])), args.data_dir, args.max_new_tokens
    options = _task_options(args)
    run, run_label = _run_prompt(args)
    model_ref, batch_size = args.model, args.batch_size
    if run:  # the run's prompt, scored on the run's own split unless told otherwise
        stored = run.get("config", {})
        run_joiner = args.joiner if args.joiner is not None else stored.get("joiner", DEFAULT_JOINER)
        prompts.append(PromptSpec(run_label, run["prompt"], run_joiner))
        max_new = max_new or stored.get("max_new_tokens")
        batch_size = batch_size or stored.get("batch_size")  # the run's batches: the same padding, the same numbers
        task_names = task_names or [run.get("task")]
        data_dir = data_dir or run.get("data_dir")
        if run_label == "prompt.json" and model_ref is None and run.get("model"):
            model_ref = model_name(run["model"])  # a prompt.json names its model
    if not prompts:
        raise GreaterError("nothing to score: give --prompt, --prompt-file, --baseline or --run")
    if not task_names or not all(task_names):
        raise GreaterError("--task is required")
    _check_out_folder(args.out)
    splits = _evaluation_splits(args, task_names, data_dir, run, options)
    runtime = _runtime(args)
    model, tokenizer = _load(model_ref, args.trust_remote_code, runtime)
    generator = _generator(model_ref, model, tokenizer, runtime, args.trust_remote_code)
    longest = max(len(encode_prompt(tokenizer, p.text)) for p in prompts)  # a bad prompt fails before any scoring
    cap = max_new or defaults.max_new_tokens
    for ts in splits:  # every row of every task, before any generation (evaluate never skips rows)
        joiner_ = max((p.joiner for p in prompts), key=len)
        _fitting_task(model, tokenizer, ts.task, {}, longest, joiner_, cap)
    several = len(prompts) > 1

    def report(cell: Cell) -> None:
        ev, label = cell.evaluation, f" [{cell.prompt.label}]" if several else ""
        correct = sum(p["correct"] for p in ev.predictions)
        print(f"accuracy: {ev.accuracy:.4f} ({correct}/{ev.n}) on {cell.task.task.name} {args.split}{label}")

    cells = evaluate_table(
        model,
        tokenizer,
        splits,
        prompts,
        max_new_tokens=max_new or defaults.max_new_tokens,
        batch_size=batch_size or defaults.batch_size,
        generator=generator,
        progress=True,
        on_cell=report,
    )
    meta = {"model": model_label(model_ref), "split": args.split, "runtime": runtime}
    meta |= {"max_new_tokens": max_new or defaults.max_new_tokens, "data_dir": data_dir}
    if args.out is None:
        print("\n" + prompts_table_markdown(table_data(cells, **meta)), end="")
        return 0
    table = write_table(args.out, cells, **meta)
    if len(cells) == 1:  # one task, one prompt: also the plain predictions and metrics files
        (cell,) = cells
        write_predictions(args.out / "predictions.jsonl", cell.evaluation.predictions)
        metrics = {"task": cell.task.task.name, "prompt": cell.prompt.text, "joiner": cell.prompt.joiner}
        metrics |= cell.task.split | {"accuracy": cell.evaluation.accuracy, "n": cell.evaluation.n}
        write_json(args.out / "metrics.json", metrics)
    print("\n" + prompts_table_markdown(table), end="")
    print(f"table written to {args.out / 'table.md'} and {args.out / 'table.json'}; predictions in {args.out}")
    return 0


def _evaluation_splits(args: argparse.Namespace, task_names: list[str], data_dir, run: dict, options: dict) -> list:
    """`greater evaluate`'s examples per task (`TaskSplit`s): the --split part of each task's split, drawn
    as a run's was for the run's own task (its seed, sizes and custom-task settings, unless a flag says
    otherwise) and from the flags for the others; custom-task flags apply to custom tasks only when
    some task is custom."""
    any_custom = any(is_custom_task(name) for name in task_names)
    splits = []
    for name in task_names:
        own = name == run.get("task")  # the run's task: its split and custom-task settings by default
        given = options if is_custom_task(name) or not any_custom else {}
        task = resolve_task(name, data_dir, (run.get("task_options", {}) if own else {}) | given)
        stored_split = run.get("split", {}) if own else {}
        seed = args.seed if args.seed is not None else stored_split.get("seed") or 0
        sizes = split_sizes(stored_split)
        n_train, n_test = args.train or sizes[0], args.test or sizes[2]
        n_dev = args.dev if args.dev is not None else sizes[1] if own else 0 if args.split != "dev" else None
        drawn = task.splits(n_train, n_dev, n_test, seed)
        examples = getattr(drawn, args.split)[: args.limit]
        if not examples:
            raise GreaterError(f"task {task.name!r} has no {args.split} examples in this split; set --{args.split}")
        record = {"split": args.split, "seed": seed, "train": n_train, "dev": n_dev, "test": n_test}
        record |= {"limit": args.limit, "n_train": len(drawn.train), "n_dev": len(drawn.dev), "n_test": len(drawn.test)}
        record["fingerprint"] = fingerprint(drawn.train, drawn.test, drawn.dev)
        splits.append(TaskSplit(task, examples, record))
    return splits


def _run_prompt(args: argparse.Namespace) -> tuple[dict, str]:
    """(run, label): a finished run's result.json (--run) or a prompt.json given as --prompt-file, in
    result.json's shape; ({}, "") when neither is given."""
    from_file = args.prompt_file is not None and artifact.is_artifact_file(args.prompt_file)
    if from_file and args.run is not None:
        raise GreaterError("give --run DIR or a prompt.json as --prompt-file, not both")
    if from_file:
        data = artifact.read(args.prompt_file)
        return artifact.as_run(data), "prompt.json"
    if args.run is None:
        return {}, ""
    run = read_json(args.run / "result.json")
    if not isinstance(run.get("prompt"), str):
        raise GreaterError(f"{args.run / 'result.json'} has no 'prompt'")
    return run, "run"


def _prompt_texts(args: argparse.Namespace) -> list[str]:
    """The prompts of --prompt (in order), then those of --prompt-file (one per non-blank line; a
    prompt.json is not read here: see `_run_prompt`)."""
    texts = list(args.prompt or [])
    if args.prompt_file is not None and not artifact.is_artifact_file(args.prompt_file):
        try:
            lines = args.prompt_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise GreaterError(f"cannot read --prompt-file {args.prompt_file}: {exc}") from None
        from_file = [line.strip() for line in lines if line.strip()]
        if not from_file:
            raise GreaterError(f"--prompt-file {args.prompt_file} has no prompts (one per line)")
        texts += from_file
    return texts


def _load(model: str | None, trust_remote_code: bool, runtime: dict):
    """The model and tokenizer, placed as `runtime` (see `_runtime`) says."""
    where = runtime["device"] + (" + device map" if runtime["device_map"] else "")
    print(f"loading model ... ({where}, {runtime['dtype']})", file=sys.stderr)
    return load_model(
        model,
        trust_remote_code=trust_remote_code,
        device=runtime["device"],
        dtype=runtime["dtype"],
        device_map=runtime["device_map"],
    )


def _generator(name: str | None, model, tokenizer, runtime: dict, trust_remote_code: bool):
    """The reasoning generator `runtime` names: None for transformers (the engine builds its own), or vLLM."""
    if runtime["generator"] != "vllm":
        return None

    print("starting vLLM ...", file=sys.stderr)
    return VLLMGenerator(
        model_source(name, runtime["dtype"]),
        stop_ids=stop_token_ids(model, tokenizer),
        dtype=runtime["dtype"],
        trust_remote_code=trust_remote_code,
    )


def _no_vllm(args: argparse.Namespace, what: str) -> None:
    if getattr(args, "generator", None) == "vllm":
        raise GreaterError(
            f"--generator vllm serves GReaTer runs and greater evaluate; {what} samples with transformers"
        )


# --- threads, budgets, inputs that fit, prompt.json, export, report, MLflow (issue 15) ------------


def _apply_threads(args: argparse.Namespace) -> None:
    """Set torch's threads for a command that runs a model (--threads, OMP_NUM_THREADS, else physical
    cores); `args.threads_used` records the choice for run.json."""
    if hasattr(args, "threads"):
        args.threads_used = set_threads(args.threads)
    args.started = time.monotonic()


class _OutOfTime(Exception):
    """--max-time was spent; raised after a checkpoint, so the run resumes where it stopped."""

    def __init__(self, step: int) -> None:
        super().__init__(step)
        self.step = step


class _RunClock:
    """--max-time and the projection printed after the first step of this process."""

    def __init__(self, limit: float | None, started: float, resumed: bool) -> None:
        self.limit, self.started, self.resumed = limit, started, resumed
        self.test_seconds: float | None = None  # the initial test evaluation, when it ran in this process
        self.projected = False

    def after_step(self, bar, record, step: int, config, n_dev: int, n_test: int) -> None:
        if not self.projected:
            self.projected = True
            per_step = float(record.seconds.get("total", 0.0))
            rest = per_step * (config.steps - step)
            if self.test_seconds:  # the final test evaluation, and the dev pass scaled by its size
                rest += self.test_seconds * (1 + config.keep_top * n_dev / max(n_test, 1))
            whole = "the rest of the run" if self.resumed else "the whole run"
            total = rest if self.resumed else time.monotonic() - self.started + rest
            finish = time.strftime("%H:%M", time.localtime(time.time() + rest))
            bar.write(
                f"projected time for {whole}: about {format_duration(total)} "
                f"(first step {format_duration(per_step)}, {config.steps - step} more; done around {finish})",
                file=sys.stdout,
            )
        self.check(step)

    def check(self, step: int) -> None:
        if self.limit is not None and time.monotonic() - self.started >= self.limit:
            raise _OutOfTime(step)


def _budget(args: argparse.Namespace) -> _RunClock:
    limit = parse_duration(args.max_time) if args.max_time is not None else None
    return _RunClock(limit, getattr(args, "started", time.monotonic()), args.resume is not None)


def _fitting_task(model, tokenizer, task, info: dict, prompt_tokens: int, joiner: str, max_new: int):
    """`task` with every row checked against the model's context before any generation: a row that
    cannot fit is refused (exit 2) unless the task's skip_bad_rows is set, then left out and counted."""
    return fitting_task(
        tokenizer,
        task,
        context=context_length(model, tokenizer),
        prompt_tokens=prompt_tokens,
        joiner=joiner,
        max_new_tokens=max_new,
        skip=bool((info.get("task_options") or {}).get("skip_bad_rows")),
    )


def _add_mlflow_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--mlflow",
        nargs="?",
        const="",
        default=None,
        metavar="TRACKING_URI",
        help="log to MLflow (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db); needs greater[mlflow]",
    )


def _tracker(args: argparse.Namespace, run):
    """The run's MLflow tracker: a new MLflow run for --mlflow (its id stored in run.json), the stored
    one for a resumed run that had one, else a no-op."""
    info = run.info
    stored = info.get("mlflow")
    given = getattr(args, "mlflow", None)
    if given is None and not stored:
        return NoTracker()
    uri = given or default_uri() if given is not None else stored["tracking_uri"]
    if stored and given is not None and uri != stored["tracking_uri"]:
        raise ResumeConflict("mlflow", uri, stored["tracking_uri"])
    tracker = MlflowTracker(uri, run_id=stored["run_id"] if stored else None, name=run.path.name)
    if not stored:
        tracker.log_params({k: v for k, v in info.items() if k not in ("split",)} | {"split": info.get("split")})
        info["mlflow"] = {"tracking_uri": tracker.uri, "run_id": tracker.run_id}
        run.save_info()
    return tracker


def _prefixed(test_accuracy: dict) -> dict:
    return {f"test_accuracy_{key}": value for key, value in test_accuracy.items()}


def _add_artifact_commands(sub) -> None:
    exp = sub.add_parser("export", help="a run's prompt as text, chat messages or a promptfoo config")
    exp.add_argument("run", type=Path, help="a finished run directory (or its prompt.json)")
    exp.add_argument("--format", choices=("messages", "promptfoo", "text"), default="text")
    exp.add_argument("--out", type=Path, default=None, help="file to write (promptfoo: RUN/promptfoo/config.yaml)")
    exp.add_argument("--model", default=None, help="promptfoo: the model its provider runs (default: the run's)")
    exp.set_defaults(func=_cmd_export)

    rep = sub.add_parser("report", help="one self-contained report.html of a run or a comparison")
    rep.add_argument("run", type=Path, help="a run directory, or a `greater compare` output folder")
    rep.add_argument("--out", type=Path, default=None, help="where to write it (default: RUN/report.html)")
    rep.set_defaults(func=_cmd_report)


_GREATER_PROMPT_TOKENS = 20  # the default initial prompt's length, rounded up


def _check_all_rows_fit(scorer, tasks, config) -> None:
    """`greater compare`: every example of every task must fit each scoring model's context (the
    comparison draws its splits per seed itself, so rows are refused, not left out)."""
    # a baseline's prompt is cut at max_prompt_tokens; GReaTer's grows by at most one token a step
    longest = max(config.max_prompt_tokens, _GREATER_PROMPT_TOKENS + config.steps)
    for task in tasks:
        # GReaTer's joiner, the longer of its and the baselines' (".")
        _fitting_task(scorer.model, scorer.tokenizer, task, {}, longest, DEFAULT_JOINER, config.max_new_tokens)


def _compare_tracker(args: argparse.Namespace, params: dict):
    """`greater compare --mlflow`: one MLflow run per output folder (its id in mlflow.json there, so a
    rerun that resumes the comparison logs into the same MLflow run)."""
    path = args.out / "mlflow.json"
    stored = read_json(path) if path.exists() else None
    if args.mlflow is None and stored is None:
        return NoTracker()
    uri = (args.mlflow or default_uri()) if args.mlflow is not None else stored["tracking_uri"]
    tracker = MlflowTracker(uri, run_id=stored["run_id"] if stored else None, name=f"compare {args.out.name}")
    if stored is None:
        tracker.log_params(params)
        args.out.mkdir(parents=True, exist_ok=True)
        write_json(path, {"tracking_uri": tracker.uri, "run_id": tracker.run_id})
    return tracker


def _log_compare(tracker, out: Path, table: dict) -> None:
    """Per task and method: mean test accuracy, its sd, calls, tokens and seconds; then the folder."""
    metrics = {}
    for row in table.get("results", []):
        name = f"{row['task']}/{row['method']}"
        metrics |= {f"{name}/test_accuracy": row["mean"], f"{name}/test_accuracy_sd": row["sd"]}
        metrics |= {f"{name}/{key}": row[key] for key in ("calls", "generated_tokens", "seconds")}
    tracker.finish(out, metrics)


def _cmd_export(args: argparse.Namespace) -> int:
    _check_out_file(args.out)
    source = args.run / artifact.FILE if args.run.is_dir() else args.run
    data = artifact.read(source)
    if args.format == "promptfoo":
        out = args.out or (source.parent / "promptfoo" / "config.yaml")
        model = args.model or artifact.as_run(data)["model"]
        model = model_name(model) if model else None
        if model and Path(model).exists():  # the provider runs in the config's folder
            model = str(Path(model).resolve())
        artifact.export_promptfoo(data, source, out, model, sys.executable)
        print(f"promptfoo config written to {out}")
        print(f"run it with: PROMPTFOO_PYTHON={sys.executable} npx promptfoo@{PROMPTFOO_VERSION} eval -c {out}")
        return 0
    text = artifact.export_text(data) if args.format == "text" else artifact.export_messages(data)
    if args.out is None:
        print(text, end="")
    else:
        write_atomic(args.out, text)
        print(f"{args.format} written to {args.out}", file=sys.stderr)
    return 0


PROMPTFOO_VERSION = "0.121.20"  # the version the export is tested with (Makefile: test-deps)


def _cmd_report(args: argparse.Namespace) -> int:
    _check_out_file(args.out)
    out = write_report(args.run, args.out)
    print(f"report written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
