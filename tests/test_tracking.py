"""--mlflow: params, per-step metrics, final accuracies and the run folder's files in a real local
MLflow store, read back with MlflowClient; a resumed run logs into the same MLflow run."""

from __future__ import annotations

import json
import sys

import pytest

from greater.cli import main
from helpers import make_interrupted_run, run_argv

mlflow = pytest.importorskip("mlflow", reason="greater[mlflow] (a dev dependency)")
from mlflow.tracking import MlflowClient  # noqa: E402


@pytest.mark.slow
def test_optimize_logs_to_mlflow_and_a_resumed_run_continues_it(tiny_model_dir, tmp_path, monkeypatch, capsys):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", ["greater"])
    make_interrupted_run([*run_argv(tiny_model_dir, run, steps=4), "--mlflow", store], monkeypatch, after=2)
    stored = json.loads((run / "run.json").read_text())["mlflow"]
    assert stored["tracking_uri"] == store
    client = MlflowClient(tracking_uri=store)
    assert [m.step for m in client.get_metric_history(stored["run_id"], "loss")] == [1, 2]

    assert main(["optimize", "--resume", str(run)]) == 0  # no --mlflow: the stored MLflow run goes on
    logged = client.get_run(stored["run_id"])
    assert logged.info.status == "FINISHED"
    params = logged.data.params
    assert params["config.steps"] == "4" and params["task"] == "gen/boolean_expressions"
    steps = [json.loads(line) for line in (run / "steps.jsonl").read_text().splitlines()]
    history = {key: client.get_metric_history(stored["run_id"], key) for key in ("loss", "best_score", "seconds")}
    assert [m.step for m in history["loss"]] == [1, 2, 3, 4]
    assert [m.value for m in history["loss"]] == pytest.approx([s["loss"] for s in steps])
    assert [m.value for m in history["best_score"]] == pytest.approx([s["best_score"] for s in steps])
    assert len(client.get_metric_history(stored["run_id"], "selection_score")) == 4
    result = json.loads((run / "result.json").read_text())
    metrics = logged.data.metrics
    assert metrics["test_accuracy_optimized"] == result["test_accuracy"]["optimized"]
    assert metrics["train_score"] == pytest.approx(result["score"])
    artifacts = {f.path for f in client.list_artifacts(stored["run_id"])}
    assert {"run.json", "steps.jsonl", "result.json", "prompt.json"} <= artifacts


@pytest.mark.slow
def test_compare_logs_the_table(tiny_model_dir, tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "cmp"
    argv = ["compare", "--model", str(tiny_model_dir), "--task", "gen/arithmetic", "--methods", "zs-cot"]
    argv += ["--train", "2", "--test", "2", "--max-new-tokens", "2", "--out", str(out), "--mlflow", store]
    assert main(argv) == 0
    run_id = json.loads((out / "mlflow.json").read_text())["run_id"]
    logged = MlflowClient(tracking_uri=store).get_run(run_id)
    table = json.loads((out / "table.json").read_text())
    assert logged.data.metrics["gen/arithmetic/zs-cot/test_accuracy"] == table["results"][0]["mean"]
    assert logged.data.params["methods"] == "['zs-cot']"


@pytest.mark.slow
def test_mlflow_missing_is_one_clear_error(tiny_model_dir, tmp_path, monkeypatch, capsys):
    for name in ("mlflow", "mlflow.tracking"):
        monkeypatch.setitem(sys.modules, name, None)  # as when greater[mlflow] is not installed
    assert main([*run_argv(tiny_model_dir, tmp_path / "run", steps=1), "--mlflow"]) == 2
    err = capsys.readouterr().err
    assert "greater: error: --mlflow needs the mlflow package" in err and "Traceback" not in err
