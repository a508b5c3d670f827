"""A run from start to finish, in one place: what `greater optimize` does, for Python callers too.

    with Run.start(RunSpec(task="gen/boolean_expressions", config=GreaterConfig(steps=10), dev=32)) as run:
        outcome = run.execute()
    with Run.resume("runs/gen_boolean_expressions-20261203-170000") as run:   # after a kill, or --max-time
        outcome = run.execute()

`Run.start` checks everything that can be checked before a model call (the split can be drawn, the
model loads, the prompt and filler encode, every row fits the model's context), then makes the run
folder (never an existing run's; locked until the run ends: `runs.FolderLock`) with its run.json.
`Run.resume` reopens an unfinished run's folder, refuses settings that contradict it and restores
its last checkpoint. `Run.execute` does the rest: the starting prompt's test score
(initial_eval.json), the search through `methods.run_method` (as a comparison's cell runs it; each
GReaTer step into steps.jsonl, the progress into checkpoint.json, the time budget checked after each),
the dev pass, the chosen prompt's test score, prompt.txt, prompt.json and result.json, each logged
to the run's tracker (MLflow when asked for). A baseline (`RunSpec.method`) runs the same way
without the initial score and steps.jsonl, checkpointed after every batch of prompts it scores; its
history goes into history.jsonl.

Progress goes to stdout and stderr as the command prints it; what to do next after an interrupt or
when the time budget is spent (`RunOutcome.out_of_time`) is the caller's to say.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

from tqdm import tqdm

from greater import artifact
from greater.compare.stats import majority
from greater.errors import GreaterError, refuse_changed, setting_name
from greater.evaluate import evaluate_with
from greater.fit import fit_to_model, longest_prompt
from greater.inference.engine import Engine
from greater.inference.layout import encode_placed_prompt
from greater.inference.model import model_label, model_name
from greater.methods import MethodConfig, run_method
from greater.methods.common import baseline_engine
from greater.optimizer import GreaterConfig, RunState, StepRecord, build_engine, filler_token, fitted_config
from greater.runs import RunDir, slug, split_sizes
from greater.runtime import OutOfTime, RunClock, Runtime, load, reasoning_generator, set_threads
from greater.tasks import Example, Task, resolve_task
from greater.tracking import folder_tracker


@dataclass
class RunSpec:
    """What a new run is: the task, the model, the method and its config, the split's sizes (None: the
    task's defaults; dev None or 0: no dev set), where it runs and where its folder goes.

    task: a registered task name, or a custom task file (stored by absolute path, so a resume works
        from any directory); task_options: custom-task settings (`greater.tasks.custom.OPTIONS`).
    model: hub id, local folder or .gguf (None: the embedded SmolLM2-135M-Instruct).
    config: `GreaterConfig` for method "greater" (default `GreaterConfig()`), else `MethodConfig`.
    out: the run folder (None: runs/<task>-<time>); a folder holding another run is never reused:
        the run goes to out-N instead.
    """

    task: str
    model: str | None = None
    method: str = "greater"
    config: GreaterConfig | MethodConfig | None = None
    train: int | None = None
    dev: int | None = None
    test: int | None = None
    data_dir: str | None = None
    task_options: dict = field(default_factory=dict)
    out: Path | None = None
    runtime: Runtime = Runtime()

    def info(self, config: GreaterConfig | MethodConfig, runtime: dict) -> dict:
        """run.json of the new run (`RunDir.create` adds the drawn split's sizes and fingerprint)."""
        info: dict = {"method": self.method} if self.method != "greater" else {}
        task = str(Path(self.task).resolve()) if Path(self.task).is_file() else self.task
        info |= {"model": model_label(self.model), "task": task, "config": asdict(config)}
        split = {"seed": config.seed, "train": self.train} | ({"dev": self.dev} if self.method == "greater" else {})
        info |= {"data_dir": self.data_dir, "task_options": dict(self.task_options)}
        return info | {"split": split | {"test": self.test}, "runtime": runtime}


@dataclass
class RunOptions:
    """How this process runs a run (not part of the run: a resume may change them).

    max_time: seconds of wall clock from `started` (default: when `Run.start`/`Run.resume` is called),
        checked after each step; once spent the run stops, checkpointed (`RunOutcome.out_of_time`).
    mlflow: None: no MLflow (a resumed run that had one logs into it again); "": the default tracking
        URI ($MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db); else that URI.
    threads: torch's threads (None: $OMP_NUM_THREADS, else the physical cores); recorded in run.json.
    """

    max_time: float | None = None
    mlflow: str | None = None
    trust_remote_code: bool = False
    threads: int | None = None
    started: float | None = None


@dataclass
class RunOutcome:
    """What `Run.execute` ended with. out_of_time: where the time budget stopped the run — after this
    GReaTer step, or this many candidate prompts a baseline scored (None: it finished; `Run.resume(path)`
    goes on from there)."""

    path: Path
    prompt: str | None = None
    test_accuracy: dict[str, float] = field(default_factory=dict)
    dev_accuracy: float | None = None
    out_of_time: int | None = None

    @property
    def finished(self) -> bool:
        return self.out_of_time is None


class Inputs(NamedTuple):
    """What a run works on, once loaded and checked."""

    task: Task
    model: object
    tokenizer: object
    engine: Engine  # built once: the search, its dev pass and the test scoring all run on it
    train: list[Example]
    dev: list[Example]
    test: list[Example]


class Run:
    """One run in its locked folder (`RunDir`), ready to `execute`; made by `start` or `resume`, and
    closed (its lock freed) by `close` or the end of `with`."""

    def __init__(self, folder: RunDir, config, inputs: Inputs, clock: RunClock, options: RunOptions) -> None:
        self.folder, self.config, self.inputs, self.clock, self.options = folder, config, inputs, clock, options
        self.method: str = folder.info.get("method", "greater")
        # where the search goes on from (None: its start): the folder's saved progress, in
        # `run_method(resume=...)`'s shape, and for GReaTer the `RunState` in it
        self.progress: dict | None = folder.saved_progress(self.method)
        saved_state = self.progress["search"]["state"] if self.progress and self.method == "greater" else None
        self.state: RunState | None = RunState.from_json(saved_state) if saved_state else None

    @property
    def path(self) -> Path:
        return self.folder.path

    def close(self) -> None:
        """Free the run folder's lock (the end of `with`, or of the process, frees it too)."""
        self.folder.close()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @classmethod
    def start(cls, spec: RunSpec, options: RunOptions | None = None) -> Run:
        """A new run: everything checked, then its folder made and locked, with run.json."""
        options = options or RunOptions()
        clock = RunClock(options.max_time, options.started, resumed=False)
        threads = set_threads(options.threads)
        config = spec.config or (GreaterConfig() if spec.method == "greater" else MethodConfig())
        config.validate()
        info = spec.info(config, spec.runtime.resolve())
        if spec.method == "greater":
            inputs = _prepare_greater(info, config, options.trust_remote_code, new=True)
            # "auto" batch sizes become numbers fitted to this device's free memory, stored for a resume
            config = fitted_config(config, inputs.engine)
            info["config"] = asdict(config)
        else:
            inputs = _prepare_baseline(info, config, options.trust_remote_code)
        info["threads"] = threads
        default = Path("runs") / f"{slug(inputs.task.name)}-{time.strftime('%Y%m%d-%H%M%S')}"
        requested = Path(spec.out) if spec.out else default
        folder, renamed = RunDir.create(requested, info, inputs.train, inputs.test, inputs.dev)
        if renamed:
            print(f"greater: {requested} already holds a run; writing to {folder.path} instead", file=sys.stderr)
        return cls(folder, config, inputs, clock, options)

    @classmethod
    def resume(
        cls,
        path: Path | str,
        given: Mapping[str, object] | None = None,
        runtime: Runtime | None = None,
        options: RunOptions | None = None,
    ) -> Run:
        """An unfinished run (GReaTer or a baseline), reopened and locked, at its last checkpoint.
        `given`: settings the caller asks for (config fields, method, and task, model, train, dev, test or
        a custom-task option; None values are ignored): one that contradicts the run is refused
        (`ResumeConflict`), as is a `runtime` that resolves to another device, dtype, device map or
        generator."""
        options = options or RunOptions()
        clock = RunClock(options.max_time, options.started, resumed=True)
        given = {key: value for key, value in (given or {}).items() if value is not None}
        folder = RunDir.open(Path(path))  # locked: one process at a time writes a run
        try:
            method = folder.info.get("method", "greater")
            refuse_changed({"method": given.get("method")}, {"method": method})
            folder.check_flags(given)
            folder.info["runtime"] = (runtime or Runtime()).resolve(folder.info.get("runtime", {}))
            set_threads(options.threads)
            reopen = _reopen_greater if method == "greater" else _reopen_baseline
            config, inputs = reopen(folder, given, options.trust_remote_code)
            folder.check_data(inputs.train, inputs.test, inputs.dev)
            run = cls(folder, config, inputs, clock, options)
            if method == "greater":  # drop a step logged after the last checkpoint
                folder.keep_steps(run.state.step if run.state else 0)
        except BaseException:
            folder.close()
            raise
        return run

    def execute(self) -> RunOutcome:
        """The run to its end (or to its time budget's end): see the module's docstring."""
        tracker = _tracker(self.options.mlflow, self.folder)
        if self.method == "greater":
            return self._execute_greater(tracker)
        return self._execute_baseline(tracker)

    def _test_accuracy(self, prompt: str, label: str) -> float:
        """Score a prompt on the test examples (with progress) and print its accuracy."""
        ev = evaluate_with(self.inputs.engine.on(self.inputs.test), prompt, progress=True)
        print(f"{label} test accuracy: {ev.accuracy:.3f} ({sum(p['correct'] for p in ev.predictions)}/{ev.n})")
        return ev.accuracy

    def _execute_greater(self, tracker) -> RunOutcome:
        config, folder = self.config, self.folder
        task, model, tokenizer, _, train, dev, test = self.inputs
        sizes = f"{len(train)} train / " + (f"{len(dev)} dev / " if dev else "") + f"{len(test)} test"
        print(f"task {folder.info['task']}: {sizes} examples; run directory {folder.path}")
        initial_acc = folder.initial_accuracy()
        if initial_acc is not None:
            print(f"initial prompt test accuracy: {initial_acc:.3f} (from initial_eval.json)")
        else:
            eval_started = time.monotonic()
            initial_acc = self._test_accuracy(config.init_prompt, "initial prompt")
            folder.save_initial_accuracy(config.init_prompt, initial_acc)
            self.clock.test_seconds = time.monotonic() - eval_started
        try:
            result = self._search(tracker)
        except OutOfTime as stop:
            return RunOutcome(folder.path, out_of_time=stop.step)
        if result.dev_accuracy is not None:
            print(f"dev accuracy of the chosen prompt: {result.dev_accuracy:.3f} (best of {len(result.finalists)})")
        print(f"optimized prompt: {result.prompt}")
        final_acc = self._test_accuracy(result.prompt, "optimized prompt")
        test_accuracy = {"initial": initial_acc, "optimized": final_acc}
        common, share = majority([task.normalize(ex.answer) for ex in test])
        print(f"chance on these test examples (always answering {common!r}): {share:.3f}")
        scores = {"score": result.score, "score_name": f"selection score ({config.selection}, lower is better)"}
        scores |= {"dev_accuracy": result.dev_accuracy, "test_accuracy": test_accuracy}
        prompt_fields = {"prompt_ids": result.prompt_ids, "joiner": config.joiner, "task": task, "scores": scores}
        prompt_fields["placement"] = config.placement
        built = artifact.build(
            info=folder.info, prompt=result.prompt, model=model, tokenizer=tokenizer, **prompt_fields
        )
        folder.write_prompt(result.prompt, built)
        outcome = {"prompt": result.prompt, "prompt_ids": result.prompt_ids, "score": result.score}
        outcome |= {"initial_prompt": result.initial_prompt, "initial_score": result.initial_score}
        outcome |= {"steps": folder.steps_logged(), "stopped": result.stopped, "dev_accuracy": result.dev_accuracy}
        outcome |= {"finalists": result.finalists, "test_accuracy": test_accuracy}
        folder.write_result(outcome)
        finals = {"train_score": result.score, "dev_accuracy": result.dev_accuracy}
        tracker.finish(folder.path, finals | {f"test_accuracy_{k}": v for k, v in test_accuracy.items()})
        print(f"run written to {folder.path}")
        return RunOutcome(folder.path, result.prompt, test_accuracy, result.dev_accuracy)

    def _search(self, tracker):
        """GReaTer's search through `run_method` (as a comparison's cell runs it), with a progress bar:
        after each step its record goes into steps.jsonl and to `tracker`, then the checkpoint, then
        the time budget is checked (raises `OutOfTime`); the dev pass is checkpointed prompt by
        prompt. Returns `optimize`'s `Result`."""
        config, folder, state = self.config, self.folder, self.state
        task, model, tokenizer, engine, train, dev, test = self.inputs
        bar = tqdm(
            total=config.steps, initial=state.step if state else 0, desc="optimizing", unit="step", file=sys.stderr
        )
        stepped: list[StepRecord] = []  # the step whose progress the next checkpoint saves

        def checkpoint(progress: dict) -> None:
            step = progress["search"]["state"]["step"]
            if not stepped:  # a prompt of the dev pass
                folder.save_progress(progress)
                self.clock.check(step)
                return
            record = stepped.pop()
            folder.record_step(record.to_json(), progress, log=lambda: tracker.log_step(record))
            bar.set_postfix_str(f"best selection score {record.best_score:.3f}")
            bar.update(1)
            self.clock.after_step(bar, record, step, config, len(dev), len(test))
            if step == config.steps and dev:
                bar.close()
                print(f"scoring the {config.keep_top} best prompts on {len(dev)} dev examples ...", file=sys.stderr)

        try:
            result = run_method(
                "greater",
                model,
                tokenizer,
                task,
                train,
                greater_config=config,
                dev=dev,
                resume=self.progress,
                checkpoint=checkpoint,
                on_step=stepped.append,
                engine=engine,
            )
        finally:
            bar.close()  # also before an error's line (a full disk), so that line is not the bar's
        return result.details

    def _execute_baseline(self, tracker) -> RunOutcome:
        config, folder, method = self.config, self.folder, self.method
        task, model, tokenizer, _, train, _, test = self.inputs
        print(
            f"task {folder.info['task']}: {len(train)} train / {len(test)} test examples; run directory {folder.path}"
        )
        print(f"running {method} (budget: {config.budget} candidate prompts) ...", file=sys.stderr)

        def checkpoint(progress: dict) -> None:  # the same progress a comparison's cell saves
            folder.save_progress(progress)
            self.clock.check(len(progress["search"].get("scores", [])))

        try:
            result = run_method(
                method,
                model,
                tokenizer,
                task,
                train,
                config,
                resume=self.progress,
                checkpoint=checkpoint,
                engine=self.inputs.engine,
            )
        except OutOfTime as stop:
            return RunOutcome(folder.path, out_of_time=stop.step)
        folder.append_history(result.history)
        print(f"optimized prompt: {result.prompt}")
        final_acc = self._test_accuracy(result.prompt, "optimized prompt")
        scores = {"score": result.score, "score_name": result.score_name, "dev_accuracy": None}
        scores["test_accuracy"] = {"optimized": final_acc}
        ids = list(self.inputs.engine.encode_prompt(result.prompt))
        prompt_fields = {"prompt_ids": ids, "joiner": result.joiner, "task": task, "scores": scores}
        prompt_fields["placement"] = config.placement
        prompt_fields |= {"model": model, "tokenizer": tokenizer, "method": method}
        folder.write_prompt(result.prompt, artifact.build(info=folder.info, prompt=result.prompt, **prompt_fields))
        for index, entry in enumerate(result.history, 1):  # every candidate prompt the baseline scored
            tracker.log_metrics({k: v for k, v in entry.items() if k in ("accuracy", "ce")}, index)
        # result.json after the MLflow run is finished, as before: the tracker's artifacts hold no result.json
        tracker.finish(folder.path, {"train_score": result.score, "test_accuracy_optimized": final_acc})
        outcome = {"prompt": result.prompt, "joiner": result.joiner, "score": result.score}
        outcome |= {"score_name": result.score_name, "usage": asdict(result.usage)}
        folder.write_result(outcome | {"test_accuracy": {"optimized": final_acc}})
        print(f"run written to {folder.path}")
        return RunOutcome(folder.path, result.prompt, {"optimized": final_acc})


def _prepare_greater(info: dict, config: GreaterConfig, trust_remote_code: bool, new: bool) -> Inputs:
    """The task, model, tokenizer, engine and split of a GReaTer run: the model loaded as info's
    runtime says, the prompt and filler checked against its tokenizer and every row against its
    context (all before anything is written), the split drawn."""
    task = resolve_task(info["task"], info.get("data_dir"), info.get("task_options"))
    split = info["split"]
    drawn = task.splits(*split_sizes(split), split["seed"])
    if drawn.note and new:
        print(f"greater: {drawn.note}", file=sys.stderr)
    name = model_name(info["model"])
    model, tokenizer = load(name, info["runtime"], trust_remote_code)
    generator = reasoning_generator(name, model, tokenizer, info["runtime"], trust_remote_code)
    # every starting prompt and the filler are checked before anything is written
    starts = [encode_placed_prompt(tokenizer, text, config.placement) for text in config.start_prompts()]
    filler_token(tokenizer, config.filler)
    task = _fitted(model, tokenizer, task, info, longest_prompt(max(map(len, starts)), config.steps), config)
    drawn = task.splits(*split_sizes(split), split["seed"])
    if config.dev_keeps_initial and not drawn.dev:
        raise GreaterError(
            f"{setting_name('dev_keeps_initial')} scores the starting prompt on the dev set: give "
            f"{setting_name('dev')} N too"
        )
    engine = build_engine(model, tokenizer, task, drawn.train, config, generator)
    return Inputs(task, model, tokenizer, engine, drawn.train, drawn.dev, drawn.test)


def _fitted(model, tokenizer, task: Task, info: dict, prompt_tokens: int, config) -> Task:
    """`task` with every row checked against the model's context, for prompts of up to `prompt_tokens`
    tokens, `config`'s joiner and reasoning cap: a row that cannot fit is refused, or left out when the
    run's custom-task options say skip_bad_rows."""
    skip = bool((info.get("task_options") or {}).get("skip_bad_rows"))
    return fit_to_model(
        model,
        tokenizer,
        task,
        prompt_tokens=prompt_tokens,
        joiner=config.joiner,
        max_new_tokens=config.max_new_tokens,
        skip=skip,
        placement=config.placement,
    )


def _reopen_greater(folder: RunDir, given: dict, trust_remote_code: bool) -> tuple[GreaterConfig, Inputs]:
    """A GReaTer run's stored config (a `given` field that differs is refused) and its inputs."""
    if "evaluations" in given:
        raise GreaterError(
            f"{setting_name('evaluations')} sets a baseline's budget; GReaTer's is {setting_name('steps')}"
        )
    config = GreaterConfig.from_args(SimpleNamespace(**given), stored=folder.info["config"])
    progress = folder.saved_progress("greater")
    # killed before its first step ended: it starts again from its settings
    where = f"after step {progress['search']['state']['step']}" if progress else "from its start"
    if not progress:
        where += " (it stopped before its first step)"
    print(f"resuming {folder.path} {where}", file=sys.stderr)
    return config, _prepare_greater(folder.info, config, trust_remote_code, new=False)


def _reopen_baseline(folder: RunDir, given: dict, trust_remote_code: bool) -> tuple[MethodConfig, Inputs]:
    """A baseline run's stored config (a `given` field that differs is refused) and its inputs."""
    stored = folder.info["config"]
    refuse_changed({name: value for name, value in given.items() if name in stored}, stored)
    config = MethodConfig(**stored)
    progress = folder.saved_progress(folder.info["method"])
    scored = len(progress["search"].get("scores", [])) if progress else 0
    print(f"resuming {folder.path} with {scored} candidate prompts scored", file=sys.stderr)
    return config, _prepare_baseline(folder.info, config, trust_remote_code)


def _prepare_baseline(info: dict, config: MethodConfig, trust_remote_code: bool) -> Inputs:
    """A baseline's task, model and split (train and test: a baseline run has no dev set), checked as
    `_prepare_greater` checks a GReaTer run's."""
    options = info.get("task_options") or {}
    task = resolve_task(info["task"], info.get("data_dir"), options)
    sizes = (info["split"]["train"], info["split"]["test"])
    task.split(*sizes, config.seed)  # a split that cannot be drawn fails before loading
    model, tokenizer = load(model_name(info["model"]), info["runtime"], trust_remote_code)
    prompt_ids = encode_placed_prompt(tokenizer, config.init_prompt, config.placement)  # checked before writing
    task = _fitted(model, tokenizer, task, info, longest_prompt(len(prompt_ids), 0, config.max_prompt_tokens), config)
    train, test = task.split(*sizes, config.seed)
    engine = baseline_engine(model, tokenizer, task, train, config)
    return Inputs(task, model, tokenizer, engine, train, [], test)


def _tracker(mlflow: str | None, folder: RunDir):
    """The run's MLflow tracker (`tracking.folder_tracker`), its ids kept in run.json."""
    info = folder.info

    def save(ids: dict) -> None:
        info["mlflow"] = ids
        folder.save_info()

    params = {k: v for k, v in info.items() if k not in ("split",)} | {"split": info.get("split")}
    return folder_tracker(mlflow, info.get("mlflow"), folder.path.name, params, save)
