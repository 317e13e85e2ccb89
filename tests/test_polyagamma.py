"""The Pólya–Gamma draws against the distribution's exact mean, variance and Laplace transform.

Each check compares a Monte Carlo average of ``N`` draws with its exact value and allows 5
Monte Carlo standard errors (a false alarm about once in 1.7 million per check, about 60
checks here), with fixed seeds.
"""

import numpy as np
import pytest
from numba import njit

from samplers.polyagamma import draw_pg

N = 40_000


@njit(cache=True)
def _fill(rng, b, c, out):
    for i in range(out.shape[0]):
        out[i] = draw_pg(rng, b, c)


def _draws(seed, b, c, n):
    out = np.empty(n)
    _fill(np.random.default_rng(seed), b, c, out)
    return out


def _mean_var(b, c):
    """Exact ``E`` and ``Var`` of ``PG(b, c)``."""
    if c == 0.0:
        return b / 4.0, b / 24.0
    return b * np.tanh(c / 2) / (2 * c), b * (np.sinh(c) - c) / (4 * c**3 * np.cosh(c / 2) ** 2)


def _laplace(b, c, s):
    """Exact ``E exp(-s omega)`` of ``PG(b, c)``."""
    return (np.cosh(c / 2) / np.cosh(np.sqrt((c * c / 2 + s) / 2))) ** b


def _within(values, exact, sd):
    return abs(values.mean() - exact) < 5 * sd / np.sqrt(values.size)


CASES = [(1, 0.0), (1, 0.3), (1, 1.7), (1, -4.0), (1, 12.0), (1, 45.0), (3, 0.8), (5, -2.5)]


@pytest.mark.parametrize(("b", "c"), CASES)
def test_moments_and_laplace_transform(b, c):
    """Mean, second moment and the Laplace transform at three points (which pin the whole law)."""
    w = _draws(11 + b, b, c, N)
    assert np.all(w > 0)
    mean, var = _mean_var(b, c)
    assert _within(w, mean, np.sqrt(var))
    # the variance: E (w - mean)^2 with its own Monte Carlo error
    sq = (w - mean) ** 2
    assert _within(sq, var, sq.std())
    for s in (0.5, 3.0, 20.0 / (1 + abs(c))):
        e = np.exp(-s * w)
        assert _within(e, _laplace(b, c, s), e.std())


def test_the_checks_reject_a_wrong_tilt():
    """Draws of PG(1, 1.2 c) fail the checks for PG(1, c): the tolerances have power."""
    c = 2.0
    w = _draws(5, 1, 1.2 * c, N)
    mean, var = _mean_var(1, c)
    laplace_ok = all(_within(np.exp(-s * w), _laplace(1, c, s), np.exp(-s * w).std()) for s in (0.5, 3.0))
    assert not (_within(w, mean, np.sqrt(var)) and laplace_ok)


def test_sum_of_trials_is_pg_of_b():
    """PG(4, c) drawn as four PG(1, c) agrees in distribution (Laplace transform) with the exact PG(4, c)."""
    w = _draws(3, 4, 1.1, N)
    for s in (0.2, 1.0):
        e = np.exp(-s * w)
        assert _within(e, _laplace(4, 1.1, s), e.std())
