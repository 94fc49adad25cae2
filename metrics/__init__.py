"""Accuracy matrix and pure metric functions (installed as ``cl_bench.metrics``).

This is the ground floor: nothing here imports the rest of cl_bench or torch.
"""

from cl_bench.metrics import functions as functions  # noqa: F401  (registers the built-in metrics)
from cl_bench.metrics import tta as tta  # noqa: F401  (registers the test-time adaptation metrics)
from cl_bench.metrics.matrix import AccuracyMatrix
from cl_bench.metrics.spec import METRIC_SPECS, MetricSpec, compute_all, metric

__all__ = ["AccuracyMatrix", "METRIC_SPECS", "MetricSpec", "compute_all", "metric"]
