"""cl_bench: a benchmark and evaluation harness for continual learning and test-time adaptation.

Scenario builders produce streams of experiences; pluggable methods learn from
them; an evaluator measures every method the same way, per iteration if asked,
and writes one self-describing run record per run.
"""

__version__ = "0.1.0"
