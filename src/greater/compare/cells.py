"""`greater compare`: every method on every task and seed, scored on the test split, as a table.

    out/
      compare.json                    settings every cell was run with (a rerun must match them)
      cells/<task>__<method>__s<seed>.json     one finished cell: prompt, history, usage, test scores
      partial/<task>__<method>__s<seed>.json   the progress of a cell that has not finished (see below)
      predictions/<task>__<method>__s<seed>[__on_<model>].jsonl
      table.json, table.md, chart.png

The table (table.json, table.md, chart.png) is built from the finished cells by greater.compare.table.

A cell file is written last and atomically, so it exists only for a finished cell: a rerun of the
same command skips those and computes the rest (and any transfer scores a cell still lacks).

A cell also resumes from inside: while it runs, its progress (`run_method`'s checkpoints: GReaTer's
`RunState` and history after every step and dev prompt, a baseline's scores after every generation
batch of prompts it scores, and the usage so far) is rewritten atomically to its partial file, which
a rerun passes back as `run_method(resume=...)`, so a killed cell loses at most the step or batch it
was in; once the search has finished, its result replaces that progress, and the test reasonings
join it one generation batch at a time, so a cell killed while scoring on test goes on from its last
batch without searching again. The file
holds the cell's settings key (`_cell_key`: the comparison's settings, the cell and its split's
fingerprint); a partial file with another key is ignored (with a note) and overwritten. It is
deleted once the cell file is written.

One process at a time works on a cell: it holds the cell's lock (`greater.runs.FolderLock` on
.locks/<cell>.lock) while it computes and writes it, so two comparisons of disjoint cells share a
folder, and one that reaches a cell another process holds stops with an error naming that process.

Cells run one after the other in this process, or as Ray tasks (`cluster=`, see greater.compare.cluster):
either way this process writes every finished cell, as it finishes, into the same folder (on Ray it
locks every cell it submits until the cells are written). Ray
workers may run on machines that cannot see the folder, so cells run there keep no partial file: a
killed Ray cell starts again from its beginning.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from tqdm import tqdm

from greater.compare.cluster import Loaded, RaySettings, run_on_ray
from greater.compare.table import cell_name, check_reference, compare_markdown, summarize, write_chart
from greater.errors import GreaterError, setting_name
from greater.evaluate import DEFAULT_JOINER, evaluate
from greater.fit import fit_to_model, longest_prompt
from greater.inference.layout import AFTER_QUESTION, encode_placed_prompt
from greater.methods import MethodConfig, greater_fields, greater_settings, refined_source, run_method
from greater.runs import FolderLock, make_folder, read_json, slug, write_atomic, write_json, write_predictions
from greater.tasks import Example, Task
from greater.tasks.base import fingerprint as split_fingerprint
from greater.tracking import folder_tracker

# `greater compare --steps`: a comparison runs every method on every task and seed, so its default budget is
# a tenth of GReaTer's own (GreaterConfig.steps, the paper's 100), to keep a default comparison to hours on a CPU
COMPARE_STEPS = 10
SETTINGS_FILE = "compare.json"
PARTIAL_DIR = "partial"
LOCKS_DIR = ".locks"  # one lock file per cell (`cell_lock`)
PARTIAL_FORMAT = "greater-partial-cell/1"
# (train, dev, test) sizes, in `Task.splits`' order; dev 0: no dev set
Sizes = tuple[int | None, int, int | None]


@dataclass
class ScoringModel:
    """A model that scores prompts on test splits: the optimizing model, or a transfer target."""

    label: str  # `model.model_label` of the model given on the command line
    model: object  # None where the cells run elsewhere (Ray workers load the model by its label)
    tokenizer: object


@dataclass
class CellJob:
    """One cell to compute: a method on a task with a seed; `record` is the cell's file when it exists
    and only lacks transfer scores; `partial` the file its progress is saved to while it runs (None:
    none is kept), saved with `settings` (the comparison's, as compare.json has them) in its key."""

    task: Task
    method: str
    seed: int
    config: MethodConfig
    name: str  # the cell file's stem
    record: dict | None = None
    partial: Path | None = None
    settings: dict = field(default_factory=dict)
    source: dict | None = None  # a refinement's ("ape>greater"): the finished cell of its source method


def run_compare(
    optimizer: ScoringModel,
    tasks: Sequence[Task],
    methods: Sequence[str],
    seeds: Sequence[int],
    out: Path,
    config: MethodConfig,
    *,
    split: tuple[int | None, int | None] = (None, None),
    dev: int | None = None,
    transfer: Sequence[ScoringModel] = (),
    fingerprint: bool = False,
    progress: bool = False,
    cluster: RaySettings | None = None,
    reference: str | None = None,
) -> dict:
    """Run the missing cells, then write table.json, table.md and chart.png; returns the table.

    `split` is (train, test) examples per task and seed; `dev` (None or 0: none) draws that many dev
    examples too, on which every method with a search makes its final choice (`run_method`'s `dev`).
    `fingerprint` records each cell's split fingerprint (`greater.tasks.base.fingerprint`), as run.json
    does. `cluster` (a `greater.compare.cluster.RaySettings`) runs the cells as Ray tasks; the models of `optimizer`
    and `transfer` are then loaded by the workers from their labels, and may be None here. `reference`: the
    method of `methods` the table's paired tests compare every other with (`table.default_reference`)."""
    check_reference(methods, reference)
    _check_sources(out, tasks, methods, seeds, on_ray=cluster is not None)
    sizes: Sizes = (split[0], dev or 0, split[1])
    settings = {"model": optimizer.label, "split": {"train": split[0], "test": split[1]}, "config": asdict(config)}
    settings["config"].pop("seed")
    if config.placement == AFTER_QUESTION:  # folders made before placements existed must still resume
        settings["config"].pop("placement")
    if dev:
        settings["split"]["dev"] = dev
    else:  # keep_top plays no part without a dev set; folders made before dev sets must still resume
        settings["config"].pop("keep_top")
    _check_settings(out, settings)
    make_folder(out / LOCKS_DIR)
    cells = [(task, method, seed) for task in tasks for seed in seeds for method in methods]
    todo = [c for c in cells if _missing(out, *c, transfer)]
    for task, method, seed in cells:  # a kill between writing a cell and deleting its partial file left one
        if (task, method, seed) not in todo:
            partial_path(out, cell_path(out, task.name, method, seed).stem).unlink(missing_ok=True)
    if len(todo) < len(cells):
        print(f"greater: {len(cells) - len(todo)} of {len(cells)} cells already done in {out}", file=sys.stderr)

    def job_for(task: Task, method: str, seed: int) -> CellJob | None:
        """The cell's job, read once its lock is held; None: another process finished it meanwhile."""
        if not _missing(out, task, method, seed, transfer):
            return None
        path = cell_path(out, task.name, method, seed)
        existing = read_cell(out, task.name, method, seed)
        partial = partial_path(out, path.stem) if cluster is None else None  # see the module's docstring
        source = source_cell(out, task, method, seed) if existing is None else None
        return CellJob(task, method, seed, replace(config, seed=seed), path.stem, existing, partial, settings, source)

    bar = tqdm(total=len(todo), desc="comparing", unit="cell", disable=not progress, file=sys.stderr)
    try:
        if cluster is None or not todo:  # (nothing left to run: no Ray needed)
            for task, method, seed in todo:
                with cell_lock(out, task.name, method, seed):
                    job = job_for(task, method, seed)
                    if job is not None:
                        label = f"{job.task.name} {job.method} seed {job.seed}"
                        bar.set_postfix_str(label)

                        def note(text: str, label: str = label) -> None:
                            bar.set_postfix_str(f"{label}: {text}")

                        _write_cell(out, job, *compute_cell(job, optimizer, transfer, sizes, fingerprint, note))
                bar.update(1)
        else:
            with contextlib.ExitStack() as locks:  # every cell submitted stays locked until it is written
                jobs = []
                for task, method, seed in todo:
                    locks.enter_context(cell_lock(out, task.name, method, seed))
                    job = job_for(task, method, seed)
                    if job is None:
                        bar.update(1)
                    else:
                        jobs.append(job)
                labels = [optimizer.label, *(s.label for s in transfer)]
                compute = functools.partial(_compute_loaded, sizes=sizes, fingerprint=fingerprint)
                for job, (record, predictions) in run_on_ray(jobs, cluster, labels, compute) if jobs else ():
                    _write_cell(out, job, record, predictions)
                    bar.set_postfix_str(f"{job.task.name} {job.method} seed {job.seed} done")
                    bar.update(1)
    finally:
        bar.close()  # also on the way out of an error, so the error's line is not the bar's
    records = [_finished_cell(out, task.name, method, seed) for task, method, seed in cells]
    table = summarize(out, records, settings, [s.label for s in transfer], tasks, reference)
    write_json(out / "table.json", table)
    write_atomic(out / "table.md", compare_markdown(table))
    write_chart(table, out / "chart.png")
    return table


def cell_path(out: Path, task: str, method: str, seed: int) -> Path:
    return out / "cells" / f"{cell_name(task, method, seed)}.json"


def read_cell(out: Path, task: str, method: str, seed: int) -> dict | None:
    """The finished cell of `method` on `task` with `seed` in `out`; None where it has none. Raises
    GreaterError where the file is another row's: two rows whose names differ only in characters a file
    name cannot hold ("a b|c." and "a_b|c.") share a file, and a later call must not take the one's cell
    for the other's."""
    path = cell_path(out, task, method, seed)
    if not path.exists():
        return None
    record = read_json(path)
    stored = (record.get("task"), record.get("method"), record.get("seed"))
    if stored != (task, method, seed):
        raise GreaterError(
            f"{path} holds the cell of method {stored[1]!r} on {stored[0]} seed {stored[2]}, not of {method!r}; "
            f"rename the method (options in another order or spelling) or choose another {setting_name('out')}"
        )
    return record


def _finished_cell(out: Path, task: str, method: str, seed: int) -> dict:
    """`read_cell` of a cell this comparison has finished: only another process can have removed it since."""
    record = read_cell(out, task, method, seed)
    if record is None:
        path = cell_path(out, task, method, seed)
        raise GreaterError(f"{path} was removed while this comparison ran; rerun it to compute that cell again")
    return record


def cell_lock(out: Path, task: str, method: str, seed: int) -> FolderLock:
    """The lock of a cell (taken by `with`): one process at a time computes and writes it."""
    name = cell_name(task, method, seed)
    return FolderLock(out / LOCKS_DIR, f"{name}.lock", what=f"cell {name} of {out}")


def _check_sources(
    out: Path, tasks: Sequence[Task], methods: Sequence[str], seeds: Sequence[int], on_ray: bool
) -> None:
    """Refuse a refinement ("ape>greater") whose source cells will not be finished when it runs: listed
    before it (this process runs a seed's methods in their order), or already in `out` (always on Ray,
    where the cells run side by side)."""
    for i, method in enumerate(methods):
        source = refined_source(method)
        if source is None or (source in methods[:i] and not on_ray):
            continue
        for task in tasks:
            for seed in seeds:
                if read_cell(out, task.name, source, seed) is None:
                    raise GreaterError(_unfinished_source(out, task, method, seed, on_ray))


def _unfinished_source(out: Path, task: Task, method: str, seed: int, on_ray: bool = False) -> str:
    source = refined_source(method)
    first = (
        f"run {setting_name('methods')} {source} first (on Ray the cells run side by side)"
        if on_ray
        else f"list {source} before {method} in {setting_name('methods')}"
    )
    return (
        f"method {method!r} starts from the prompt {source} chose for {task.name} seed {seed}, and that cell "
        f"is not finished in {out}; {first}"
    )


def source_cell(out: Path, task: Task, method: str, seed: int) -> dict | None:
    """The finished cell a refinement (`methods.refined_source`) starts from; None for other methods."""
    source = refined_source(method)
    if source is None:
        return None
    record = read_cell(out, task.name, source, seed)
    if record is None:
        raise GreaterError(_unfinished_source(out, task, method, seed))
    return record


def partial_path(out: Path, name: str) -> Path:
    """The progress file of the unfinished cell `name` (a cell file's stem)."""
    return out / PARTIAL_DIR / f"{name}.json"


def _cell_key(job: CellJob, split: str) -> str:
    """What a cell's progress is valid for: the comparison's settings, the cell (task, method, seed)
    and the fingerprint of its drawn examples (`split`), hashed. Two rows may share a file name ("a b|c." and
    "a_b|c.", `read_cell`), so a method the file name does not spell is named too; one it spells is not, so
    that the progress saved by an earlier greater for "greater", "ape" and the like still resumes."""
    identity = {"settings": job.settings, "cell": job.name, "split": split}
    if slug(job.method) != job.method:
        identity["method"] = job.method
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def load_partial(path: Path, key: str) -> dict | None:
    """The progress saved in `path` for a cell with `key`; None (with a note when there is a file)
    where there is none, or the file was saved with other settings, or cannot be read."""
    if not path.exists():
        return None
    try:
        saved = read_json(path)
    except GreaterError:
        saved = {}
    if saved.get("format") == PARTIAL_FORMAT and saved.get("key") == key:
        print(f"greater: continuing the cell saved in {path}", file=sys.stderr)
        return saved["progress"]
    print(f"greater: ignoring {path}: saved with other settings (or unreadable); the cell starts over", file=sys.stderr)
    return None


def save_partial(path: Path, key: str, progress: dict) -> None:
    """Replace the cell's progress file (atomically: a kill leaves the previous one)."""
    write_json(path, {"format": PARTIAL_FORMAT, "key": key, "progress": progress})


def _check_settings(out: Path, settings: dict) -> None:
    """Record the settings in a new output folder; refuse one whose cells were run with others."""
    path = out / SETTINGS_FILE
    if path.exists():
        stored = read_json(path)
        for key in ("model", "split", "config"):
            if stored.get(key) != settings[key]:
                old, new = stored.get(key) or {}, settings[key]
                what = key
                if isinstance(old, dict) and isinstance(new, dict):
                    what = next((k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)), key)
                    old, new = old.get(what), new.get(what)
                raise GreaterError(
                    f"{out} holds a comparison run with {what}={old!r}, not {new!r}; "
                    f"rerun with the same settings to resume it, or choose another {setting_name('out')}"
                )
        return
    make_folder(out)
    write_json(path, settings)


def _missing(out: Path, task: Task, method: str, seed: int, transfer: Sequence[ScoringModel]) -> bool:
    record = read_cell(out, task.name, method, seed)
    if record is None:
        return True
    done = record.get("transfer", {})
    return any(s.label not in done for s in transfer)


def compute_cell(
    job: CellJob,
    optimizer: ScoringModel,
    transfer: Sequence[ScoringModel],
    sizes: Sizes,
    fingerprint: bool,
    note: Callable[[str], None] | None = None,
) -> tuple[dict, dict[str, list[dict]]]:
    """Optimize (unless the job has its record and only lacks transfer scores) and score on test.

    Returns the cell's record and its predictions files (path relative to the output folder -> rows);
    nothing is written here, so a Ray worker can compute a cell for the driver to write. `note` gets
    a line on the cell's progress (`progress_note`) after every save of it."""
    task, method, seed, config = job.task, job.method, job.seed, job.config
    # a GReaTer row may place its prompt elsewhere (greater:placement=system); its test scoring does too
    config = replace(config, placement=(greater_fields(method) or {}).get("placement", config.placement))
    drawn = task.splits(*sizes, seed)
    train, dev, test = drawn.train, drawn.dev, drawn.test
    predictions: dict[str, list[dict]] = {}
    record = job.record
    if record is None:
        split_id = split_fingerprint(train, test, dev)
        resume, checkpoint = None, None
        if job.partial is not None:
            key = _cell_key(job, split_id)
            resume = load_partial(job.partial, key)

            def checkpoint(progress: dict, key: str = key) -> None:
                save_partial(job.partial, key, progress)
                if note is not None:
                    note(progress_note(progress, config.steps))

        result, saved_reasoning = search_cell(job, optimizer, train, dev, resume, checkpoint)
        # the saved batches were cut at the batch size of their sitting ("auto" may differ in this one)
        test_config = replace(config, batch_size=resume["test_batch_size"]) if saved_reasoning else config
        on_reasoning = None
        if checkpoint is not None:

            def on_reasoning(done: dict[int, list[int]], batch_size: int, result: dict = result) -> None:
                reasoned = {str(i): r for i, r in done.items()}  # JSON keys are text
                progress = {"method": method, "result": result, "test_reasoning": reasoned}
                checkpoint(progress | {"test_batch_size": batch_size})

        record = {
            "task": task.name,
            "method": method,
            "seed": seed,
            "split": {"n_train": len(train), "n_test": len(test)}
            | ({"n_dev": len(dev)} if dev else {})
            | ({"fingerprint": split_id} if fingerprint else {}),
            "result": result,
            "test": _score(
                predictions,
                optimizer,
                task,
                test,
                result["prompt"],
                result["joiner"],
                test_config,
                job.name,
                saved_reasoning=saved_reasoning,
                on_reasoning=on_reasoning,
            ),
            "transfer": {},
            "runtime": {"device": str(optimizer.model.device), "dtype": str(optimizer.model.dtype).split(".")[-1]},
        }
    prompt, joiner = record["result"]["prompt"], record["result"]["joiner"]
    for scorer in transfer:
        if scorer.label not in record["transfer"]:
            name = f"{job.name}__on_{slug(scorer.label)}"
            record["transfer"][scorer.label] = _score(predictions, scorer, task, test, prompt, joiner, config, name)
    return record, predictions


def _compute_loaded(
    job: CellJob, loaded: list[Loaded], sizes: Sizes, fingerprint: bool
) -> tuple[dict, dict[str, list[dict]]]:
    """`compute_cell` in a Ray worker (`greater.compare.cluster.run_on_ray`): `loaded` is the optimizing model,
    then the transfer targets, loaded there by their labels."""
    optimizer, *transfer = (ScoringModel(label, model, tokenizer) for label, model, tokenizer in loaded)
    return compute_cell(job, optimizer, transfer, sizes, fingerprint)


def search_cell(
    job: CellJob,
    optimizer: ScoringModel,
    train: list[Example],
    dev: list[Example],
    resume: dict | None,
    checkpoint: Callable[[dict], None] | None,
) -> tuple[dict, dict[int, list[int]]]:
    """The cell's search result and the test reasonings saved after it: from `resume` when its search
    had finished, else by running the method (from `resume`'s progress) and saving its result."""
    if resume is not None and "result" in resume:
        return resume["result"], {int(i): ids for i, ids in resume.get("test_reasoning", {}).items()}
    source = job.source["result"] if job.source is not None else None
    result = run_method(
        job.method,
        optimizer.model,
        optimizer.tokenizer,
        job.task,
        train,
        job.config,
        dev=dev,
        resume=resume,
        checkpoint=checkpoint,
        start={"init_prompt": source["prompt"], "joiner": source["joiner"]} if source else None,
    ).to_json()
    if source is not None:  # a refinement's cost is both searches'
        result["refines"] = {key: source[key] for key in ("method", "prompt", "joiner", "usage")}
        result["usage"] = {key: round(value + source["usage"][key], 2) for key, value in result["usage"].items()}
    if checkpoint is not None:
        checkpoint({"method": job.method, "result": result})
    return result, {}


def progress_note(progress: dict, steps: int) -> str:
    """A short line on a cell's saved progress: GReaTer's steps done and dev prompts scored, a
    baseline's prompts scored on train and dev, or that only test scoring is left."""
    if "result" in progress:
        reasoned = len(progress.get("test_reasoning", {}))
        return "search done, scoring on test" + (f": {reasoned} reasonings" if reasoned else "")
    search = progress.get("search") or {}
    if "history" in search:  # GReaTer: its RunState and step records
        text = f"step {len(search['history'])}/{steps}"
        dev = len(search.get("state", {}).get("dev_accuracy", {}))
    else:
        text, dev = f"{len(search.get('scores', []))} prompts scored", len(search.get("dev", {}))
    return text + (f", {dev} on dev" if dev else "")


def _write_cell(out: Path, job: CellJob, record: dict, predictions: dict[str, list[dict]]) -> None:
    """The predictions files, then the cell file (last, atomically: it marks the cell finished), then
    the cell's partial file goes (also one left by an earlier sitting where this one ran on Ray)."""
    (out / "predictions").mkdir(parents=True, exist_ok=True)
    for relative, rows in predictions.items():
        write_predictions(out / relative, rows)
    (out / "cells").mkdir(parents=True, exist_ok=True)
    write_json(out / "cells" / f"{job.name}.json", record)
    partial_path(out, job.name).unlink(missing_ok=True)


def _score(
    predictions: dict[str, list[dict]],
    scorer: ScoringModel,
    task: Task,
    test: list[Example],
    prompt: str,
    joiner: str,
    config,
    name: str,
    saved_reasoning: dict[int, list[int]] | None = None,
    on_reasoning: Callable[[dict[int, list[int]], int], None] | None = None,
) -> dict:
    """Test accuracy of a prompt; its per-example predictions go into `predictions` as
    predictions/<name>.jsonl. `saved_reasoning` and `on_reasoning`: see `evaluate`."""
    ev = evaluate(
        scorer.model,
        scorer.tokenizer,
        task,
        test,
        prompt,
        joiner=joiner,
        placement=config.placement,
        max_new_tokens=config.max_new_tokens,
        batch_size=config.batch_size,
        saved_reasoning=saved_reasoning,
        on_reasoning=on_reasoning,
    )
    relative = f"predictions/{name}.jsonl"
    predictions[relative] = ev.predictions
    correct = sum(p["correct"] for p in ev.predictions)
    return {"accuracy": ev.accuracy, "correct": correct, "n": ev.n, "predictions": relative}


def check_rows_fit(
    scorer: ScoringModel, tasks: Sequence[Task], config: MethodConfig, methods: Sequence[str] = ("greater",)
) -> None:
    """Every example of every task must fit the scoring model's context in every placement a method of
    `methods` puts its prompt (a row `greater:placement=system` has its own), with the longest prompt
    that method can reach (the comparison draws its splits per seed itself, so rows are refused, not
    left out): `GreaterError` naming the first that does not."""
    longest: dict[str, int] = {}  # placement -> the longest prompt there
    for method in methods:
        fields = greater_fields(method)
        if fields is None:
            placement, tokens = config.placement, longest_prompt(0, proposals=config.max_prompt_tokens)
        else:
            settings = replace(greater_settings(config), **fields)
            placement = settings.placement
            starts = [encode_placed_prompt(scorer.tokenizer, text, placement) for text in settings.start_prompts()]
            # a refinement starts from its source's prompt, a proposal cut at max_prompt_tokens
            proposals = config.max_prompt_tokens if refined_source(method) else 0
            tokens = longest_prompt(max(map(len, starts)), settings.steps, proposals)
        longest[placement] = max(longest.get(placement, 0), tokens)
    for task in tasks:  # with GReaTer's joiner, the longer of its and the baselines' (".")
        for placement, tokens in longest.items():
            fit_to_model(
                scorer.model,
                scorer.tokenizer,
                task,
                prompt_tokens=tokens,
                joiner=DEFAULT_JOINER,
                max_new_tokens=config.max_new_tokens,
                placement=placement,
            )


def compare_tracker(out: Path, mlflow: str | None, params: dict):
    """The comparison's MLflow tracker (`tracking.folder_tracker`), its ids kept in mlflow.json, so a rerun
    that resumes the comparison logs into the same MLflow run."""
    path = out / "mlflow.json"

    def save(ids: dict) -> None:
        out.mkdir(parents=True, exist_ok=True)
        write_json(path, ids)

    return folder_tracker(mlflow, read_json(path) if path.exists() else None, f"compare {out.name}", params, save)


def log_compare(tracker, out: Path, table: dict) -> None:
    """Per task and method: mean test accuracy, its sd, calls, tokens and seconds; then the folder."""
    metrics = {}
    for row in table.get("results", []):
        name = f"{row['task']}/{row['method']}"
        metrics |= {f"{name}/test_accuracy": row["mean"], f"{name}/test_accuracy_sd": row["sd"]}
        metrics |= {f"{name}/{key}": row[key] for key in ("calls", "generated_tokens", "seconds")}
    tracker.finish(out, metrics)
