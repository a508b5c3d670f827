"""Tasks: examples with gold answers, an extractor sentence and an answer normaliser."""

from greater.tasks.base import Example, Splits, Task
from greater.tasks.registry import get_task, resolve_task, task_names

__all__ = ["Example", "Splits", "Task", "get_task", "resolve_task", "task_names"]
