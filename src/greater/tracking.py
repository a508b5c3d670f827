"""Optional MLflow tracking (`--mlflow [URI]`, `pip install 'greater[mlflow]'`).

mlflow is imported only when tracking is asked for, so greater works without it. A run's MLflow run id
is stored in its run.json (`"mlflow": {"tracking_uri", "run_id"}`): `--resume` logs into the same
MLflow run. Logging goes through `MlflowClient` with explicit run ids (no global "active run"), so
several runs in one process do not interfere.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from greater.errors import GreaterError, ResumeConflict, setting_name

if TYPE_CHECKING:
    from greater.optimizer import StepRecord

EXPERIMENT = "greater"  # MLFLOW_EXPERIMENT_NAME overrides it
_PARAM_CHARS = 500


class NoTracker:
    """What a run logs to when tracking is off: nothing."""

    uri: str | None = None
    run_id: str | None = None

    def log_params(self, params: dict) -> None:
        pass

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        pass

    def log_step(self, record: object) -> None:
        pass

    def finish(self, folder: Path, metrics: dict) -> None:
        pass


def folder_tracker(
    mlflow: str | None, stored: dict | None, name: str, params: dict, save: Callable[[dict], None]
) -> NoTracker:
    """The MLflow tracker of an output folder, a run's or a comparison's: one MLflow run per folder.

    `mlflow` is what the command asked for (None: nothing; "": the default store; else a tracking URI) and
    `stored` the {"tracking_uri", "run_id"} the folder keeps from an earlier sitting. With neither, a no-op;
    with `stored`, that MLflow run again (a `mlflow` naming another store is refused); else a new MLflow
    run named `name`, given `params`, whose ids go to `save` so a rerun logs into the same run."""
    if mlflow is None and not stored:
        return NoTracker()
    uri = (mlflow or default_uri()) if mlflow is not None else stored["tracking_uri"]
    if stored and mlflow is not None and uri != stored["tracking_uri"]:
        raise ResumeConflict("mlflow", uri, stored["tracking_uri"])
    tracker = MlflowTracker(uri, run_id=stored["run_id"] if stored else None, name=name)
    if not stored:
        tracker.log_params(params)
        save({"tracking_uri": tracker.uri, "run_id": tracker.run_id})
    return tracker


def default_uri() -> str:
    """$MLFLOW_TRACKING_URI, else an SQLite store ./mlflow.db (MLflow's own default; its file store is
    deprecated), by absolute path, so a resumed run started elsewhere logs to the same store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///" + str(Path("mlflow.db").resolve())


def artifact_location(uri: str) -> str | None:
    """Where a new experiment keeps artifacts: beside an SQLite store's file (mlartifacts/), not in the
    current directory, which is MLflow's default; other stores decide for themselves (None)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///") :]).parent / "mlartifacts").as_uri()
    return None


class MlflowTracker(NoTracker):
    """Logs one greater run (or one comparison) to one MLflow run."""

    def __init__(self, uri: str, run_id: str | None = None, name: str | None = None) -> None:
        try:
            from mlflow.tracking import MlflowClient  # optional (greater[mlflow]): only for --mlflow
        except ImportError:
            raise GreaterError(
                f"{setting_name('mlflow')} needs the mlflow package: pip install 'greater[mlflow]'"
            ) from None
        logging.getLogger("mlflow").setLevel(logging.WARNING)  # not its "creating tables" notices
        self.uri = uri
        try:
            self.client = MlflowClient(tracking_uri=uri)
            if run_id is None:
                experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
                found = self.client.get_experiment_by_name(experiment)
                experiment_id = (
                    found.experiment_id
                    if found
                    else self.client.create_experiment(experiment, artifact_location=artifact_location(uri))
                )
                run_id = self.client.create_run(experiment_id, run_name=name).info.run_id
            else:
                self.client.get_run(run_id)  # fails clearly when the store lost it
                self.client.update_run(run_id, status="RUNNING")
        except GreaterError:
            raise
        except Exception as exc:  # mlflow's own errors (bad URI, unreachable server, missing run)
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise GreaterError(f"MLflow tracking at {uri!r} failed: {first}") from None
        self.run_id = run_id

    def log_params(self, params: dict) -> None:
        from mlflow.entities import Param  # optional, as above

        flat = {key: str(value)[:_PARAM_CHARS] for key, value in _flatten(params).items()}
        self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in sorted(flat.items())])

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        from mlflow.entities import Metric  # optional, as above

        now = int(time.time() * 1000)
        items = [
            Metric(key, float(value), now, step or 0)
            for key, value in _flatten(metrics).items()
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        ]
        if items:
            self.client.log_batch(self.run_id, metrics=items)

    def log_step(self, record: StepRecord) -> None:
        """A GReaTer step: its loss, training errors, the best evaluated candidate's selection score,
        the best score so far and the step's seconds, at the step's index."""
        evaluated = [e.score for e in record.evaluated if isinstance(e.score, float)]
        metrics = {
            "loss": record.loss,
            "train_errors": record.train_errors,
            "best_score": record.best_score,
            "seconds": record.seconds.get("total"),
        }
        if evaluated:
            metrics["selection_score"] = min(evaluated)
        self.log_metrics(metrics, record.step)

    def finish(self, folder: Path, metrics: dict) -> None:
        """Final metrics, the folder's files as artifacts (not its hidden ones: the lock file, temp
        files), and the run marked finished."""
        self.log_metrics(metrics)
        for path in sorted(folder.iterdir()):
            if path.name.startswith("."):
                continue
            if path.is_dir():
                self.client.log_artifacts(self.run_id, str(path), artifact_path=path.name)
            else:
                self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id, status="FINISHED")


def _flatten(data: dict, prefix: str = "") -> dict:
    out: dict = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= _flatten(value, name + ".")
        elif value is not None:
            out[name] = value
    return out
