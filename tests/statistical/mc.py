"""Monte Carlo tolerances for statistical tests.

A check ``|estimate - truth| <= z * mcse`` fails by chance with probability ``rate`` when
``z`` is the two-sided normal quantile of ``rate``; a test making ``k`` checks spends its
false-alarm budget ``rate_test`` as ``rate_test / k`` per check (Bonferroni).
"""

import numpy as np
from arviz_stats.base import array_stats
from scipy.stats import norm


def z_for(rate_test, n_checks):
    """Normal quantile giving a two-sided per-check rate of ``rate_test / n_checks``."""
    return float(norm.isf(rate_test / n_checks / 2.0))


def mcse(draws, method="mean", prob=None):
    """Monte Carlo standard error of a (chain, draw) array."""
    return float(array_stats.mcse(np.asarray(draws), chain_axis=0, draw_axis=1, method=method, prob=prob))


def ess(draws, method="bulk"):
    """Effective sample size of a (chain, draw) array."""
    return float(array_stats.ess(np.asarray(draws), chain_axis=0, draw_axis=1, method=method))
