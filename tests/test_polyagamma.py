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


def _series_term(n, x, t=0.64):
    """The ``n``-th term ``a_n(x)`` of the alternating series of the ``J*(1, 0)`` density, as Devroye writes it."""
    k = n + 0.5
    if x <= t:
        return np.pi * k * (2.0 / (np.pi * x)) ** 1.5 * np.exp(-2.0 * k * k / x)
    return np.pi * k * np.exp(-0.5 * k * k * np.pi**2 * x)


def _accepts_by_terms(u, x):
    """Devroye's acceptance of ``x`` for ``y = u a_0(x)``, the terms formed one by one."""
    s = _series_term(0, x)
    y = u * s
    n = 0
    while True:
        n += 1
        if n % 2 == 1:
            s -= _series_term(n, x)
            if y <= s:
                return True
        else:
            s += _series_term(n, x)
            if y > s:
                return False


def test_ratio_form_of_the_series_decides_as_the_terms_do():
    """The acceptance in ratios with its squeeze (one exponential at most) takes every decision the terms take.

    Points both sides of the truncation point and uniforms both sides of the squeeze, where the
    decisions turn (``u`` near ``1 - 3 exp(-2 rate)``, the first partial sum).
    """
    from samplers.polyagamma import _SQUEEZE, _T, _accepts

    rng = np.random.default_rng(4)
    xs = np.concatenate([rng.uniform(0.05, 3.0, 400), [_T, _T * (1 - 1e-12), 0.3, 1.0]])
    n_reject = 0
    for x in xs:
        rate = 2.0 / x if x <= _T else np.pi**2 * x / 2
        edge = 1.0 - 3.0 * np.exp(-2.0 * rate)
        for u in (0.5, _SQUEEZE, edge - 1e-9, edge + 1e-9, 0.5 * (edge + 1.0), 1.0 - 1e-15, rng.uniform()):
            u = min(u, 1.0 - 1e-15)
            expected = _accepts_by_terms(u, x)
            assert _accepts(u, x) == expected, (x, u)
            n_reject += not expected
    assert n_reject > 100  # the rejecting branch is exercised, not only the squeeze
