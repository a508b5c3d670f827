"""`greater compare --ray` on a real local Ray instance (2 CPUs): the same table as the sequential run,
cells written by the driver into the resumable folder, and a clear error without Ray."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from greater.compare import cluster
from helpers import check_compare_table, message_lines, run_cli

# one pytest worker runs this file's tests: its module fixture is made once (make test: --dist loadgroup)
pytestmark = pytest.mark.xdist_group("ray")

ARGV = ["compare", "--task", "gen/boolean_expressions", "--methods", "zs-cot,greater", "--seeds", "0"]
ARGV += ["--steps", "1", "--train", "3", "--test", "4", "--max-new-tokens", "4", "--device", "cpu"]


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray instance on 2 CPUs, kept small: no dashboard, a 100 MB object store, one thread per worker."""
    import ray

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=100 * 2**20,
        log_to_driver=False,
        runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}},
    )
    yield ray
    ray.shutdown()


def _table_without_timing(out: Path) -> dict:
    table = json.loads((out / "table.json").read_text(encoding="utf-8"))
    for row in table["results"]:
        row.pop("seconds")
    return table


@pytest.mark.slow
def test_compare_on_ray_equals_the_sequential_run(local_ray, capsys, tiny_model_dir: Path, tmp_path: Path) -> None:
    argv = ARGV + ["--model", str(tiny_model_dir)]
    sequential, distributed = tmp_path / "seq", tmp_path / "ray"
    code, _, err = run_cli(capsys, argv + ["--out", str(sequential)])
    assert code == 0, err
    code, stdout, err = run_cli(capsys, argv + ["--out", str(distributed), "--ray"])
    assert code == 0, err
    assert local_ray.is_initialized()  # the instance the test started was used, and left running
    assert cluster._MODELS == {}  # the models were loaded in the Ray workers, not in this process
    check_compare_table(distributed, ["gen/boolean_expressions"], ["zs-cot", "greater"], [0], [])
    assert _table_without_timing(distributed) == _table_without_timing(sequential)
    for cell in sorted((sequential / "cells").iterdir()):
        ray_cell = json.loads((distributed / "cells" / cell.name).read_text())
        assert ray_cell["runtime"] == {"device": "cpu", "dtype": "float32"}
        assert ray_cell["result"]["prompt"] == json.loads(cell.read_text())["result"]["prompt"]
    for name in (p.name for p in (sequential / "predictions").iterdir()):
        assert (distributed / "predictions" / name).read_bytes() == (sequential / "predictions" / name).read_bytes()

    # a rerun skips the finished cells (nothing is submitted) and rewrites the same table
    (distributed / "table.json").unlink()
    code, _, err = run_cli(capsys, argv + ["--out", str(distributed), "--ray"])
    assert code == 0
    assert "2 of 2 cells already done" in err
    assert _table_without_timing(distributed) == _table_without_timing(sequential)


@pytest.mark.slow
def test_ray_missing_is_one_clear_error(capsys, tiny_model_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as without the package
    code, _, err = run_cli(capsys, ARGV + ["--model", str(tiny_model_dir), "--out", str(tmp_path / "c"), "--ray"])
    assert code == 2
    assert message_lines(err) == ["greater: error: --ray needs Ray: pip install 'greater[ray]'"]
    assert not (tmp_path / "c").exists()
