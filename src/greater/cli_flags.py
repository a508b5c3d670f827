"""The `greater` command's flags: one parser function per command (`build(commands)`); the commands
themselves are in `greater.cli`, which passes them in (so this module imports nothing of it)."""

from __future__ import annotations

import argparse
from pathlib import Path

from greater.compare.cells import COMPARE_STEPS
from greater.evaluate import DEFAULT_JOINER
from greater.inference.device import DTYPES
from greater.inference.layout import PLACEMENTS
from greater.inference.memory import CPU_BATCH_SIZE, CPU_GRAD_BATCH_SIZE
from greater.methods import (
    BASELINE_TUNABLE,
    METHODS,
    PAPER_METHODS,
    REFINES,
    ZS_COT_JOINER,
    ZS_COT_PROMPT,
    MethodConfig,
)
from greater.optimizer import NAMED_STARTS, SELECTION_RULES, GreaterConfig
from greater.runtime import GENERATORS
from greater.settings import TUNABLE
from greater.tasks.answers import ANSWER_TYPES

LOCAL_RAY = "local"  # --ray without an address: a Ray instance started on this machine
# baseline prompts for `greater evaluate --baseline`: name -> (prompt, joiner); zero-shot CoT reads
# "<question>. Let's think step by step." (the prompt follows the joiner after one space)
BASELINES = {"zs-cot": (ZS_COT_PROMPT, ZS_COT_JOINER)}


def build() -> argparse.ArgumentParser:
    """The parser of every command; `args.command` names the one given."""
    parser = argparse.ArgumentParser(prog="greater", description="Prompt optimization with gradients over reasoning.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_optimize(sub)
    _add_evaluate(sub)
    _add_compare(sub)
    _add_export(sub)
    _add_report(sub)
    tasks = sub.add_parser("tasks", help="list known tasks")
    tasks.add_argument("--data-dir", default=None)
    return parser


def _add_common(p: argparse.ArgumentParser, many_tasks: bool = False) -> None:
    """The flags of every command that runs a model: task, model, data, reasoning cap, device."""
    if many_tasks:
        p.add_argument("--task", action="append", default=None, help="a task to score on (repeat for more)")
    else:
        p.add_argument("--task", default=None, help="task name, e.g. gen/arithmetic or bbh/boolean_expressions")
    p.add_argument("--model", default=None, help="HF hub id, local folder or .gguf file (default: embedded SmolLM2)")
    p.add_argument(
        "--data-dir", default=None, help="data root (bbh/, gsm8k/, folio/) or a BBH folder ($GREATER_DATA_DIR)"
    )
    p.add_argument("--max-new-tokens", type=_positive, default=None, help="cap on reasoning tokens")
    p.add_argument(
        "--batch-size",
        type=_size,
        default=None,
        help=f"rows per generation batch, or auto (default: from free GPU memory; {CPU_BATCH_SIZE} on a CPU)",
    )
    p.add_argument(
        "--seed", type=int, default=None, help=f"seed of the split and the proposal draws ({GreaterConfig.seed})"
    )
    p.add_argument(
        "--placement",
        choices=PLACEMENTS,
        default=None,
        help="where the prompt goes: after-question (default, the paper's), before-question or system (the "
        "system turn's text)",
    )
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


def _add_optimize(sub) -> None:
    opt = sub.add_parser("optimize", help="find a better prompt for a task")
    _add_common(opt)
    opt.add_argument(
        "--method",
        choices=PAPER_METHODS,
        default="greater",
        help="greater (default) or a baseline (docs/guide/compare.md)",
    )
    opt.add_argument(
        "--evaluations",
        type=_positive,
        default=None,
        help=f"baselines: candidate prompts scored ({MethodConfig.num_select} × --steps)",
    )
    opt.add_argument("--init-prompt", default=None, help="the prompt the search starts from (default: the paper's P1)")
    opt.add_argument(
        "--init-from",
        type=Path,
        default=None,
        metavar="RUN",
        help="start from a finished run's prompt as it was scored (its prompt.json: prompt, joiner, placement)",
    )
    opt.add_argument(
        "--joiner", default=None, help=f"text between question and prompt (default {DEFAULT_JOINER!r}, the reference's)"
    )
    opt.add_argument(
        "--steps",
        type=_positive,
        default=None,
        help=f"GReaTer steps ({GreaterConfig.steps}); a baseline scores {MethodConfig.num_select} × steps prompts",
    )
    opt.add_argument("--train", type=_positive, default=None, help="training examples")
    opt.add_argument("--test", type=_positive, default=None, help="test examples scored before and after")
    opt.add_argument("--dev", type=_non_negative, default=None, help="dev examples for the final choice (0: none)")
    _add_search_options(opt)
    opt.add_argument("--out", type=Path, default=None, help="run directory (default: runs/<task>-<time>)")
    opt.add_argument("--resume", type=Path, default=None, help="continue the run in this directory")
    opt.add_argument(
        "--max-time", default=None, help="stop after the step in progress once this is spent (90s, 45m, 2h); resumable"
    )
    _add_mlflow_flag(opt)


def _add_search_options(opt: argparse.ArgumentParser) -> None:
    """GReaTer's search options (`greater optimize`)."""
    opt.add_argument(
        "--top-k", type=_positive, default=None, help=f"per-example top-k of the proposal ({GreaterConfig.top_k})"
    )
    opt.add_argument(
        "--top-q",
        type=_positive,
        default=None,
        help=f"intersections whose union are candidates ({GreaterConfig.top_q})",
    )
    opt.add_argument(
        "--selection",
        choices=SELECTION_RULES,
        default=None,
        help=f"how shortlisted candidates are chosen (default {GreaterConfig.selection}; see docs/fidelity.md)",
    )
    opt.add_argument(
        "--candidate-nll",
        action="store_true",
        default=None,
        help="add each candidate's own NLL at the position to its gradient (not in the reference)",
    )
    opt.add_argument(
        "--num-select",
        type=_positive,
        default=None,
        help=f"shortlisted candidates re-scored with fresh reasoning ({GreaterConfig.num_select})",
    )
    opt.add_argument(
        "--nll-weight",
        type=float,
        default=None,
        help=f"λ, weight of the prompt NLL in the loss ({GreaterConfig.nll_weight})",
    )
    opt.add_argument(
        "--answer-temperature",
        type=float,
        default=None,
        help=f"answer logits are divided by this in the loss ({GreaterConfig.answer_temperature})",
    )
    opt.add_argument(
        "--filler", default=None, help=f"token appended when a prompt grows (default {GreaterConfig.filler!r})"
    )
    opt.add_argument(
        "--grad-batch-size",
        type=_size,
        default=None,
        help=f"rows per forward + backward chunk, or auto (default: from free GPU memory; {CPU_GRAD_BATCH_SIZE} on a "
        "CPU)",
    )
    _add_stop_and_choice(opt)
    _add_search_variants(opt)


def _add_stop_and_choice(opt: argparse.ArgumentParser) -> None:
    """When GReaTer stops, and how its prompt is chosen on the dev set (`greater optimize`)."""
    opt.add_argument("--patience", type=_positive, default=None, help="stop after N steps without improvement")
    opt.add_argument(
        "--keep-top",
        type=_positive,
        default=None,
        help=f"best prompts scored on the dev set ({GreaterConfig.keep_top})",
    )
    opt.add_argument(
        "--dev-keeps-initial",
        action="store_true",
        default=None,
        help="score the starting prompt on dev too: never return one worse on dev (not in the paper)",
    )


def _add_search_variants(opt: argparse.ArgumentParser) -> None:
    """GReaTer's search variants beyond the paper (`greater optimize`)."""
    variants = opt.add_argument_group("search variants beyond the paper (docs/fidelity.md)")
    variants.add_argument(
        "--keep-best",
        action="store_true",
        default=None,
        help="when a step's prompt scores worse on training than the best so far, go on from the best",
    )
    variants.add_argument(
        "--starts",
        nargs="+",
        default=None,
        metavar="START",
        help=f"more starting prompts sharing the steps ({', '.join(NAMED_STARTS)} with --joiner ., or any text); "
        "the dev pass takes finalists from every start",
    )


def _add_evaluate(sub) -> None:
    ev = sub.add_parser("evaluate", help="accuracy of prompts on tasks, as a table")
    _add_common(ev, many_tasks=True)
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


def _add_compare(sub) -> None:
    cmp = sub.add_parser("compare", help="every method on every task and seed, scored on test, as a table")
    _add_common(cmp, many_tasks=True)
    _add_compare_rows(cmp)
    cmp.add_argument("--seeds", default="0", help="comma-separated seeds; each seed draws its own split (default 0)")
    cmp.add_argument(
        "--steps",
        type=_positive,
        default=COMPARE_STEPS,
        help=f"GReaTer steps; sets every method's budget ({COMPARE_STEPS})",
    )
    cmp.add_argument(
        "--evaluations",
        type=_positive,
        default=None,
        help=f"baselines' candidate prompts ({MethodConfig.num_select} × steps)",
    )
    cmp.add_argument(
        "--meta-max-new-tokens",
        type=_positive,
        default=None,
        help=f"cap on baselines' meta-prompt replies ({MethodConfig.meta_max_new_tokens})",
    )
    cmp.add_argument("--train", type=_positive, default=None, help="training examples per task")
    cmp.add_argument("--test", type=_positive, default=None, help="test examples per task")
    cmp.add_argument(
        "--dev", type=_non_negative, default=None, help="dev examples per task: every search's final choice (0: none)"
    )
    cmp.add_argument(
        "--keep-top",
        type=_positive,
        default=None,
        help=f"with --dev: best prompts scored on it ({MethodConfig.keep_top})",
    )
    cmp.add_argument("--eval-model", action="append", default=None, help="also score every prompt with this model")
    cmp.add_argument("--out", type=Path, default=Path("runs/compare"), help="output folder (default runs/compare)")
    cmp.add_argument(
        "--ray",
        nargs="?",
        const=LOCAL_RAY,
        default=None,
        metavar="ADDRESS",
        help="run the cells as Ray tasks: on a local Ray instance, or on the cluster at ADDRESS "
        "(e.g. ray://head:10001 or auto); pip install 'greater[ray]'",
    )
    _add_mlflow_flag(cmp)


def _add_compare_rows(cmp: argparse.ArgumentParser) -> None:
    """compare's rows (--methods) and the one the paired tests set against the others (--reference)."""
    paper = ",".join(PAPER_METHODS)
    cmp.add_argument(
        "--methods",
        default=paper,
        help=f"comma-separated, of {', '.join(METHODS)} (default {paper}); a GReaTer method may add "
        f"options, each as :NAME=VALUE ({', '.join(TUNABLE)}), e.g. greater:nll_weight=0.5, and may start "
        f"from the prompt a baseline chose: BASELINE{REFINES}GREATER, e.g. ape{REFINES}greater; a baseline with a "
        f"search may set its own budget: {', '.join(k + '=N' for k in BASELINE_TUNABLE)}, e.g. ape:evaluations=90",
    )
    cmp.add_argument(
        "--reference",
        default=None,
        metavar="METHOD",
        help="the method of --methods the paired tests compare every other with (default: greater when it is "
        "one, else the first); it sets the table only, so a rerun may name another",
    )


def _add_export(sub) -> None:
    exp = sub.add_parser("export", help="a run's prompt as text, chat messages or a promptfoo config")
    exp.add_argument("run", type=Path, help="a finished run directory (or its prompt.json)")
    exp.add_argument("--format", choices=("messages", "promptfoo", "text"), default="text")
    exp.add_argument("--out", type=Path, default=None, help="file to write (promptfoo: RUN/promptfoo/config.yaml)")
    exp.add_argument("--model", default=None, help="promptfoo: the model its provider runs (default: the run's)")


def _add_report(sub) -> None:
    rep = sub.add_parser("report", help="one self-contained report.html of a run or a comparison")
    rep.add_argument("run", type=Path, help="a run directory, or a `greater compare` output folder")
    rep.add_argument("--out", type=Path, default=None, help="where to write it (default: RUN/report.html)")


def _add_mlflow_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--mlflow",
        nargs="?",
        const="",
        default=None,
        metavar="TRACKING_URI",
        help="log to MLflow (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db); needs greater[mlflow]",
    )


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
