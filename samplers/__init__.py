"""Numerical core of bayeshlm: sufficient statistics, the Gaussian tree passes and the samplers.

This package depends on NumPy, SciPy and Numba only. It knows nothing about formulas,
data frames or ArviZ: everything that crosses into it is a ``NamedTuple`` of plain arrays
(see :mod:`samplers.types`).
"""

from samplers._cache import ensure_fresh_cache

ensure_fresh_cache()

from samplers.driver import run_chains  # noqa: E402
from samplers.suffstats import compute_suffstats, merge_suffstats  # noqa: E402
from samplers.tree import draw_coefficients, upward  # noqa: E402
from samplers.types import ChainState, Priors, Structure, SuffStats  # noqa: E402

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
