"""Numerical core of bayeshlm: sufficient statistics, the Gaussian tree passes and the samplers.

This package depends on NumPy, SciPy and Numba only. It knows nothing about formulas,
data frames or ArviZ: everything that crosses into it is a ``NamedTuple`` of plain arrays
(see :mod:`samplers.types`). The Gaussian part of the model given the variance components
goes through one seam, :mod:`samplers.gaussian`, implemented once per structure
(:mod:`samplers.two_level`, :mod:`samplers.nested`).
"""

from samplers._cache import ensure_fresh_cache

ensure_fresh_cache()

from samplers.driver import run_chains  # noqa: E402
from samplers.gaussian import draw_coefficients, integrate, workspace  # noqa: E402
from samplers.suffstats import compute_suffstats, merge_suffstats  # noqa: E402
from samplers.types import ChainState, GibbsMoves, MHMoves, Priors, Structure, SuffStats  # noqa: E402

__all__ = [
    "ChainState",
    "GibbsMoves",
    "MHMoves",
    "Priors",
    "Structure",
    "SuffStats",
    "compute_suffstats",
    "draw_coefficients",
    "integrate",
    "merge_suffstats",
    "run_chains",
    "workspace",
]
