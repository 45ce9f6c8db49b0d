"""Objectives a merge candidate is scored on: lm-eval tasks on the live model, and where it runs."""

from mmmo.objectives.device import default_dtype, resolve_device
from mmmo.objectives.lm_eval import EvaluationError, LmEvalObjectives, TaskScore

__all__ = ["EvaluationError", "LmEvalObjectives", "TaskScore", "default_dtype", "resolve_device"]
