"""Jobs as Ray tasks, each computed with models loaded by their labels: `greater compare --ray [ADDRESS]`
runs its cells here (`greater.compare.cells` says what a cell is and writes them; this module only runs them).

Each job is one Ray task asking for one GPU when the run is on GPUs (one CPU otherwise). The job is
pickled as it is (a comparison's cell carries its `Task` with its examples: workers need no data
folder); the worker loads the models by their labels (a hub id, or a path every worker can read;
loaded models are kept per worker process and reused by its later jobs) and calls `compute` on the
job and them. The caller — the driver — gets each result as its job finishes, so a killed driver
loses only the jobs in flight.

Ray is optional (`pip install 'greater[ray]'`) and imported only here, only when `--ray` is given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from greater.errors import GreaterError, setting_name
from greater.inference.model import load_model, model_name

LOCAL_OBJECT_STORE = 256 * 2**20  # bytes: cells return small records, so a local instance needs little

Job = TypeVar("Job")  # anything picklable with a `name` (used in error messages)
Loaded = tuple[str, Any, Any]  # (label, model, tokenizer), as a worker loaded them


@dataclass(frozen=True)
class RaySettings:
    """Where the cells run and how their workers load the models.

    address: None for a local Ray instance (the one this process already started, if any), else the
        address of an existing cluster ("auto", "HOST:PORT" or "ray://HOST:10001").
    device, dtype: as the command line gives them; "auto" is resolved by each worker.
    """

    address: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    trust_remote_code: bool = False


def import_ray():
    """The `ray` module, or one clear error naming the extra to install."""
    try:
        import ray  # optional (greater[ray]): imported only when --ray is given
    except ImportError as exc:
        raise GreaterError(f"{setting_name('ray')} needs Ray: pip install 'greater[ray]'") from exc
    return ray


def run_on_ray(
    jobs: Sequence[Job],
    settings: RaySettings,
    models: Sequence[str],
    compute: Callable[[Job, list[Loaded]], Any],
) -> Iterator[tuple[Job, Any]]:
    """Submit every job, then yield (job, `compute(job, loaded)`) in the order the jobs finish, where
    `loaded` is `models` loaded in the worker, in order. `compute` must be picklable (a module-level
    function, or a `functools.partial` of one).

    Leaving the loop early (an error, Ctrl-C) cancels the jobs still running; a local Ray instance
    started here is shut down at the end."""
    ray = import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        try:
            if settings.address is None:
                ray.init(include_dashboard=False, object_store_memory=LOCAL_OBJECT_STORE, log_to_driver=False)
            else:
                ray.init(address=settings.address, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise GreaterError(
                f"cannot start or reach Ray at {settings.address or 'a local instance'}: {first}"
            ) from exc
    gpu = _on_gpus(ray, settings.device)
    remote = ray.remote(_job_task).options(num_gpus=1, num_cpus=1) if gpu else ray.remote(_job_task).options(num_cpus=1)
    pending = {remote.remote(job, settings, gpu, list(models), compute): job for job in jobs}
    try:
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:
                cause = getattr(exc, "cause", None)
                if isinstance(cause, GreaterError):
                    raise GreaterError(f"cell {job.name}: {cause}") from None
                raise
            yield job, result
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        if started_here:
            ray.shutdown()


def _on_gpus(ray, device: str) -> bool:
    """Whether each cell asks for a GPU: --device cuda[:N], or auto on a cluster that has GPUs."""
    if device.startswith("cuda"):
        if not ray.cluster_resources().get("GPU", 0):
            raise GreaterError(
                f"{setting_name('device')} {device} with {setting_name('ray')}, but the Ray cluster has no GPUs"
            )
        return True
    return device == "auto" and ray.cluster_resources().get("GPU", 0) >= 1


_MODELS: dict[tuple, tuple] = {}  # per worker process: (label, device, dtype, trust) -> (model, tokenizer)


def _job_task(job: Job, settings: RaySettings, gpu: bool, models: list[str], compute: Callable) -> Any:
    """Runs in a Ray worker: one job, computed with models loaded (once per worker) by their labels."""
    # Ray hands a GPU task its GPU as the only visible one
    device = "cuda" if gpu else "cpu"
    return compute(job, [(label, *_model(label, device, settings)) for label in models])


def _model(label: str, device: str, settings: RaySettings) -> tuple:
    key = (label, device, settings.dtype, settings.trust_remote_code)
    if key not in _MODELS:
        _MODELS[key] = load_model(
            model_name(label), trust_remote_code=settings.trust_remote_code, device=device, dtype=settings.dtype
        )
    return _MODELS[key]
