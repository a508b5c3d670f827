"""The `greater` command: each command parses its flags, calls the library and prints.

A run's lifecycle is `greater.lifecycle` (`Run`), a comparison is `greater.compare.cells`, the prompts ×
tasks table is `greater.prompt_table`; this module turns flags into their arguments, and their outcomes
and `GreaterError`s into lines and exit codes."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path

from transformers.utils import logging as hf_logging

from greater import artifact, cli_flags
from greater.compare.cells import ScoringModel, check_rows_fit, compare_tracker, log_compare, run_compare
from greater.compare.cluster import RaySettings, import_ray
from greater.compare.table import check_reference
from greater.errors import GreaterError, flag_names, setting_name
from greater.evaluate import DEFAULT_JOINER
from greater.fit import fit_to_model, longest_prompt
from greater.inference.layout import AFTER_QUESTION, encode_placed_prompt
from greater.inference.model import model_label, model_name
from greater.lifecycle import Run, RunOptions, RunSpec
from greater.methods import (
    UNSTARTED_BASELINES,
    MethodConfig,
    distinct_settings,
)
from greater.optimizer import GreaterConfig
from greater.prompt_table import (
    Cell,
    PromptSpec,
    evaluate_table,
    evaluation_splits,
    prompts_table_markdown,
    table_data,
    write_table,
)
from greater.report import write_report
from greater.runs import write_atomic, write_json, write_predictions
from greater.runtime import (
    Runtime,
    Terminated,
    load,
    parse_duration,
    reasoning_generator,
    set_threads,
    sigterm_interrupts,
)
from greater.settings import CONFIG_FLAGS, RUN_KEYS, names
from greater.tasks import resolve_task
from greater.tasks import task_names as known_tasks
from greater.tasks.custom import OPTIONS as TASK_OPTIONS
from greater.tasks.registry import describe

PROMPTFOO_VERSION = "0.121.20"  # the version the export is tested with; `make test-deps` installs this one
EXIT_BAD_INPUT = 2
EXIT_OUT_OF_TIME = 3  # --max-time spent: the run is checkpointed; `--resume` finishes it
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


def main(argv: list[str] | None = None) -> int:
    args = cli_flags.build().parse_args(argv)
    _quiet_libraries()
    try:
        if hasattr(args, "threads"):  # a command that runs a model
            set_threads(args.threads)
        args.started = time.monotonic()
        with sigterm_interrupts(), flag_names():
            return COMMANDS[args.command](args)
    except GreaterError as exc:
        print(f"greater: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:  # a path that cannot be read or written, where no GreaterError says more
        if exc.filename is None:
            raise
        print(f"greater: error: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (KeyboardInterrupt, Terminated) as exc:
        print("greater: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED if isinstance(exc, KeyboardInterrupt) else EXIT_TERMINATED


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", module="(transformers|torch|accelerate|gguf)")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.basicConfig(level=logging.WARNING, format="greater: %(message)s")


# --- from flags to the library's arguments -----------------------------------------------------------


def _runtime(args: argparse.Namespace) -> Runtime:
    return Runtime(args.device, args.dtype, args.device_map, args.generator)


def _options(args: argparse.Namespace) -> RunOptions:
    max_time = parse_duration(args.max_time) if args.max_time is not None else None
    return RunOptions(max_time, args.mlflow, args.trust_remote_code, args.threads, args.started)


def _task_options(args: argparse.Namespace) -> dict:
    """The custom-task settings given on the command line."""
    return {key: getattr(args, key) for key in TASK_OPTIONS if getattr(args, key) is not None}


def _check_out_folder(out: Path | None) -> None:
    """Refuse an --out folder that cannot be one (a file, or inside a file), before any model is loaded."""
    for path in (out, *out.parents) if out is not None else ():
        if path.exists():
            if not path.is_dir():
                where = "is a file" if path == out else f"is inside {path}, which is a file"
                raise GreaterError(f"--out {out} {where}, not a folder; choose another --out")
            return


def _check_out_file(out: Path | None) -> None:
    """Refuse an --out file path that names a folder."""
    if out is not None and out.is_dir():
        raise GreaterError(f"--out {out} is a folder; give the path of the file to write")


def _no_vllm(args: argparse.Namespace, what: str) -> None:
    if getattr(args, "generator", None) == "vllm":
        raise GreaterError(
            f"--generator vllm serves GReaTer runs and greater evaluate; {what} samples with transformers"
        )


def _names(text: str, flag: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise GreaterError(f"{flag} is empty")
    return list(dict.fromkeys(names))


# --- the commands ------------------------------------------------------------------------------------


def _cmd_optimize(args: argparse.Namespace) -> int:
    """`greater optimize`: a new GReaTer run, a resumed one (--resume DIR), or a baseline (--method)."""
    if args.init_from is not None:
        _start_from_run(args)
    if args.resume is not None:
        given = {flag: getattr(args, flag) for flag in (*CONFIG_FLAGS, *RUN_KEYS, "evaluations")}
        given["method"] = args.method if args.method != "greater" else None  # the default: the run's own
        run = Run.resume(args.resume, given, _runtime(args), _options(args))
    else:
        if args.method == "greater" and args.evaluations is not None:
            raise GreaterError("--evaluations sets a baseline's budget; GReaTer's is --steps")
        if not args.task:
            raise GreaterError("--task is required (or --resume DIR to continue a run)")
        _check_out_folder(args.out)
        run = Run.start(_run_spec(args), _options(args))
    with run:  # locked until the run ends
        try:
            outcome = run.execute()
        except (KeyboardInterrupt, Terminated):
            done = "steps up to the last completed one" if run.method == "greater" else "the prompts scored so far"
            print(f"greater: {done} are saved in {run.path}", file=sys.stderr)
            print(f"resume with: greater optimize --resume {run.path}", file=sys.stderr)
            raise
    if outcome.out_of_time is not None:
        done = f"step {outcome.out_of_time} of {run.config.steps}"
        if run.method != "greater":
            done = f"{outcome.out_of_time} of {run.config.budget} candidate prompts"
        print(
            f"greater: --max-time {args.max_time} spent after {done}; "
            f"the run is saved in {run.path}\nresume with: greater optimize --resume {run.path}",
            file=sys.stderr,
        )
        return EXIT_OUT_OF_TIME
    return 0


def _start_from_run(args: argparse.Namespace) -> None:
    """`--init-from RUN`: the run's prompt, joiner and placement become `--init-prompt`, `--joiner` and
    `--placement`, so the search starts from the prompt framed as it was scored; one of them given
    otherwise is refused."""
    data = artifact.read(args.init_from)
    framing = {"init_prompt": data["prompt"], "joiner": data["joiner"]}
    framing["placement"] = data.get("placement", AFTER_QUESTION)
    for name, value in framing.items():
        given = getattr(args, name)
        if given is not None and given != value:
            raise GreaterError(
                f"{setting_name(name)} {given!r} contradicts {args.init_from}'s {value!r} "
                f"({setting_name('init_from')} starts from its prompt as it was scored); leave it out"
            )
        setattr(args, name, value)


def _run_spec(args: argparse.Namespace) -> RunSpec:
    """A new run as the flags define it: GReaTer's config, or a baseline's (whose flags are checked)."""
    if args.method == "greater":
        config = GreaterConfig.from_args(args)
    else:
        if args.grad_batch_size is not None:
            raise GreaterError("--grad-batch-size sets GReaTer's backward chunks; baselines run no backward pass")
        if args.keep_top is not None:  # a MethodConfig field, used by `greater compare --dev` only
            raise GreaterError(f"--keep-top applies to GReaTer runs only, not to {args.method}")
        if args.init_prompt is not None and args.method in UNSTARTED_BASELINES:
            flag = setting_name("init_from" if args.init_from is not None else "init_prompt")
            raise GreaterError(f"{flag} sets where a search starts; {args.method} starts from no prompt of yours")
        _no_vllm(args, f"the {args.method} baseline")
        # every flag of the command, so one that sets no baseline field is refused by name
        flags = (*CONFIG_FLAGS, "evaluations", "dev")
        config = MethodConfig.from_args(args, flags, args.method)
    sizes = {"train": args.train, "dev": args.dev, "test": args.test}
    where = {"data_dir": args.data_dir, "task_options": _task_options(args), "out": args.out, "runtime": _runtime(args)}
    return RunSpec(args.task, args.model, args.method, config, **sizes, **where)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    joiner = args.joiner if args.joiner is not None else DEFAULT_JOINER
    placement = args.placement or AFTER_QUESTION
    prompts = [PromptSpec(f"P{i}", text, joiner, placement) for i, text in enumerate(_prompt_texts(args), 1)]
    prompts += [PromptSpec(name, *cli_flags.BASELINES[name], placement) for name in dict.fromkeys(args.baseline or [])]
    task_names, data_dir, max_new = list(dict.fromkeys(args.task or [])), args.data_dir, args.max_new_tokens
    run, run_label = artifact.prompt_to_score(args.run, args.prompt_file)
    model_ref, batch_size = args.model, args.batch_size
    if run:  # the run's prompt, scored on the run's own split unless told otherwise
        stored = run.get("config", {})
        run_joiner = args.joiner if args.joiner is not None else stored.get("joiner", DEFAULT_JOINER)
        run_placement = args.placement or stored.get("placement", AFTER_QUESTION)
        prompts.append(PromptSpec(run_label, run["prompt"], run_joiner, run_placement))
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
    sizes = (args.train, args.dev, args.test)
    splits = evaluation_splits(
        task_names, data_dir, run, _task_options(args), part=args.split, seed=args.seed, sizes=sizes, limit=args.limit
    )
    runtime = _runtime(args).resolve()
    model, tokenizer = load(model_ref, runtime, args.trust_remote_code)
    generator = reasoning_generator(model_ref, model, tokenizer, runtime, args.trust_remote_code)
    # a bad prompt or placement fails before any scoring
    longest = longest_prompt(max(len(encode_placed_prompt(tokenizer, p.text, p.placement)) for p in prompts))
    cap, batch_size = max_new or GreaterConfig.max_new_tokens, batch_size or GreaterConfig.batch_size
    joiner = max((p.joiner for p in prompts), key=len)
    for ts in splits:  # every row of every task, before any generation (evaluate never skips rows)
        for where in dict.fromkeys(p.placement for p in prompts):
            fit_to_model(
                model, tokenizer, ts.task, prompt_tokens=longest, joiner=joiner, max_new_tokens=cap, placement=where
            )
    report = _cell_printer(args.split, several=len(prompts) > 1)
    cells = evaluate_table(
        model,
        tokenizer,
        splits,
        prompts,
        max_new_tokens=cap,
        batch_size=batch_size,
        generator=generator,
        progress=True,
        on_cell=report,
    )
    meta = {"model": model_label(model_ref), "split": args.split, "runtime": runtime}
    _write_evaluation(args.out, cells, meta | {"max_new_tokens": cap, "data_dir": data_dir})
    return 0


def _cell_printer(split: str, several: bool):
    def report(cell: Cell) -> None:
        ev, label = cell.evaluation, f" [{cell.prompt.label}]" if several else ""
        correct = sum(p["correct"] for p in ev.predictions)
        print(f"accuracy: {ev.accuracy:.4f} ({correct}/{ev.n}) on {cell.task.task.name} {split}{label}")

    return report


def _write_evaluation(out: Path | None, cells: list[Cell], meta: dict) -> None:
    """The table on stdout; with `out`, also table.md and table.json there (one task and one prompt:
    predictions.jsonl and metrics.json too)."""
    if out is None:
        print("\n" + prompts_table_markdown(table_data(cells, **meta)), end="")
        return
    table = write_table(out, cells, **meta)
    if len(cells) == 1:  # one task, one prompt: also the plain predictions and metrics files
        (cell,) = cells
        write_predictions(out / "predictions.jsonl", cell.evaluation.predictions)
        metrics = {"task": cell.task.task.name, "prompt": cell.prompt.text, "joiner": cell.prompt.joiner}
        metrics |= cell.task.split | {"accuracy": cell.evaluation.accuracy, "n": cell.evaluation.n}
        write_json(out / "metrics.json", metrics)
    print("\n" + prompts_table_markdown(table), end="")
    print(f"table written to {out / 'table.md'} and {out / 'table.json'}; predictions in {out}")


def _prompt_texts(args: argparse.Namespace) -> list[str]:
    """The prompts of --prompt (in order), then those of --prompt-file (one per non-blank line; a
    prompt.json is read by `artifact.prompt_to_score`)."""
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
    config = MethodConfig.from_args(args, names("compare"), "greater compare")
    distinct_settings(methods, config)
    check_reference(methods, args.reference)  # here too: before any model is loaded
    options = _task_options(args)
    tasks = [resolve_task(name, args.data_dir, options) for name in dict.fromkeys(args.task)]
    for task in tasks:  # a split that cannot be drawn fails before any model is loaded
        task.splits(args.train, args.dev or 0, args.test, seeds[0])
    _no_vllm(args, "greater compare (its baselines)")
    optimizer, transfer, cluster = _scorers(args, config, tasks, methods)
    tracker = compare_tracker(
        args.out, args.mlflow, {"model": optimizer.label, "methods": methods, "seeds": seeds} | asdict(config)
    )
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
            reference=args.reference,
        )
    except (KeyboardInterrupt, Terminated):
        kept = "" if cluster is not None else ", with the progress of the cell that was running"
        print(f"greater: finished cells are kept in {args.out}{kept}; rerun the same command to go on", file=sys.stderr)
        raise
    log_compare(tracker, args.out, table)
    print((args.out / "table.md").read_text(encoding="utf-8"), end="")
    print(f"table written to {args.out / 'table.md'}, {args.out / 'table.json'} and {args.out / 'chart.png'}")
    return 0


def _scorers(
    args: argparse.Namespace, config: MethodConfig, tasks: list, methods: list[str]
) -> tuple[ScoringModel, list[ScoringModel], RaySettings | None]:
    """The optimizing model, the --eval-model ones and the Ray settings: with --ray the workers load
    the models (this process only writes the cells), else they are loaded here and every row of every
    task is checked against each one's context."""
    label, eval_models = model_label(args.model), list(dict.fromkeys(args.eval_model or []))
    if args.ray is not None:
        import_ray()
        if args.device_map:
            raise GreaterError("--ray gives each cell one GPU; --device-map spreads one model over several")
        address = None if args.ray == cli_flags.LOCAL_RAY else args.ray
        cluster = RaySettings(address, args.device or "auto", args.dtype or "auto", args.trust_remote_code)
        return ScoringModel(label, None, None), [ScoringModel(m, None, None) for m in eval_models], cluster
    runtime = _runtime(args).resolve()
    optimizer = ScoringModel(label, *load(args.model, runtime, args.trust_remote_code))
    transfer = [ScoringModel(m, *load(m, runtime, args.trust_remote_code)) for m in eval_models]
    for scorer in (optimizer, *transfer):  # every row of every task, before any generation
        check_rows_fit(scorer, tasks, config, methods)
    return optimizer, transfer, None


def _cmd_tasks(args: argparse.Namespace) -> int:
    for name in known_tasks(args.data_dir):
        print(f"{name:50s} {describe(name, args.data_dir)}")
    return 0


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


def _cmd_report(args: argparse.Namespace) -> int:
    _check_out_file(args.out)
    out = write_report(args.run, args.out)
    print(f"report written to {out}")
    return 0


COMMANDS = {"optimize": _cmd_optimize, "evaluate": _cmd_evaluate, "compare": _cmd_compare, "tasks": _cmd_tasks}
COMMANDS |= {"export": _cmd_export, "report": _cmd_report}

if __name__ == "__main__":
    sys.exit(main())
