"""Accuracy matrices (continual learning, test-time adaptation) and pure metric functions.

Installed as ``cl_bench.metrics``.

This is the ground floor: nothing here imports the rest of cl_bench or torch.
"""

from cl_bench.metrics import functions as functions  # noqa: F401  (registers the built-in metrics)
from cl_bench.metrics import tta as tta  # noqa: F401  (registers the test-time adaptation metrics)
from cl_bench.metrics.matrix import AccuracyMatrix
from cl_bench.metrics.spec import METRIC_SPECS, Matrix, MetricSpec, compute_all, matrix_from_dict, matrix_kind, metric
from cl_bench.metrics.tta_matrix import TTAMatrix

__all__ = ["AccuracyMatrix", "METRIC_SPECS", "Matrix", "MetricSpec", "TTAMatrix", "compute_all", "matrix_from_dict",
           "matrix_kind", "metric"]  # fmt: skip
