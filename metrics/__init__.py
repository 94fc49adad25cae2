"""Accuracy matrix and pure metric functions (installed as ``cl_bench.metrics``).

This is the ground floor: nothing here imports the rest of cl_bench or torch.
"""

from . import functions as functions  # noqa: F401  (registers the built-in metrics)
from . import tta as tta  # noqa: F401  (registers the test-time adaptation metrics)
from .matrix import AccuracyMatrix
from .spec import METRIC_SPECS, MetricSpec, compute_all, metric

__all__ = ["AccuracyMatrix", "METRIC_SPECS", "MetricSpec", "compute_all", "metric"]
