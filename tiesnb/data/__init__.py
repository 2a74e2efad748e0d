"""Data: the offline assets, their readers, and the task registry with fixed splits."""

from .tasks import TASKS, Example, TaskData, TaskSpec, get_task, load_task

__all__ = ["TASKS", "Example", "TaskData", "TaskSpec", "get_task", "load_task"]
