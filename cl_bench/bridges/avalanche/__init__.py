"""The Avalanche bridge: Avalanche 0.6 strategies as cl_bench methods, its benchmarks as scenarios.

``avalanche:<Strategy>`` (e.g. ``avalanche:GEM``) names a method that trains one of Avalanche's
supervised strategies in Avalanche's own loop. The strategy gets cl_bench's network
(:func:`~cl_bench.nets.models.build_model` from the stream info) and optimiser (SGD at the native
defaults); a plugin reports every training iteration back to the runner, which evaluates on the
usual schedule, so its records have the same eval points and metrics as native runs.
Strategy parameters come from the strategy's signature (``--set patterns_per_exp=256``).

``avalanche:<Benchmark>`` (e.g. ``avalanche:SplitMNIST``) names a scenario built by one of
``avalanche.benchmarks.classic``; :func:`scenario_from_benchmark` and :func:`register_benchmark`
turn any Avalanche benchmark object into a cl_bench scenario.

Avalanche is imported only when such a name is used, so the core never needs it.

References:
    Carta et al. "Avalanche: A PyTorch Library for Deep Continual Learning". JMLR 24(363), 2023.
    Lomonaco et al. "Avalanche: an End-to-End Library for Continual Learning". CVPR Workshops 2021.
"""


from cl_bench.bridges.avalanche.benchmarks import benchmarks, register_benchmark, scenario_from_benchmark
from cl_bench.bridges.avalanche.params import AVALANCHE_VERSION, PREFIX
from cl_bench.bridges.avalanche.strategies import AvalancheStrategy, strategies, to_avalanche_experience

__all__ = ["AVALANCHE_VERSION", "PREFIX", "AvalancheStrategy", "benchmarks", "register_benchmark",
           "scenario_from_benchmark", "strategies", "to_avalanche_experience"]
