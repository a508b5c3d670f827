"""greater: prompt optimization for small local language models with gradients over reasoning (GReaTer)."""

from greater.errors import GreaterError
from greater.evaluate import Evaluation, evaluate
from greater.model import load_model
from greater.optimizer import GreaterConfig, Result, StepRecord, optimize
from greater.tasks import Example, Task, get_task, task_names

__all__ = [
    "Evaluation",
    "Example",
    "GreaterConfig",
    "GreaterError",
    "Result",
    "StepRecord",
    "Task",
    "evaluate",
    "get_task",
    "load_model",
    "optimize",
    "task_names",
]
__version__ = "0.1.0"
