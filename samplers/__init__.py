"""Numerical core of bayeshlm: sufficient statistics, the Gaussian tree passes and the samplers.

This package depends on NumPy, SciPy and Numba only. It knows nothing about formulas,
data frames or ArviZ: everything that crosses into it is a ``NamedTuple`` of plain arrays
(see :mod:`samplers.types`).
"""

from samplers.driver import run_chains
from samplers.suffstats import compute_suffstats, merge_suffstats
from samplers.tree import draw_coefficients, upward
from samplers.types import ChainState, Priors, Structure, SuffStats

__all__ = [
    "ChainState",
    "Priors",
    "Structure",
    "SuffStats",
    "compute_suffstats",
    "draw_coefficients",
    "merge_suffstats",
    "run_chains",
    "upward",
]
