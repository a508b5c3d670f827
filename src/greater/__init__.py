"""greater: prompt optimization for small local language models with gradients over reasoning (GReaTer)."""

__version__ = "0.1.0"  # before the imports: greater.artifact records it in every prompt.json

from greater.errors import GreaterError
from greater.evaluate import Evaluation, evaluate
from greater.inference.model import load_model
from greater.lifecycle import Run, RunOptions, RunOutcome, RunSpec
from greater.methods import METHODS, MethodConfig, MethodResult, run_method
from greater.optimizer import GreaterConfig, Result, StepRecord, optimize
from greater.runtime import Runtime
from greater.tasks import Example, Task, get_task, task_names

__all__ = [
    "Evaluation",
    "Example",
    "GreaterConfig",
    "GreaterError",
    "METHODS",
    "MethodConfig",
    "MethodResult",
    "Result",
    "Run",
    "RunOptions",
    "RunOutcome",
    "RunSpec",
    "Runtime",
    "StepRecord",
    "Task",
    "evaluate",
    "get_task",
    "load_model",
    "optimize",
    "run_method",
    "task_names",
]
