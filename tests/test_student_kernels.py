"""The compiled pieces of the Student-t level-1 step (docs/design.md, "Student-t level 1").

The move of ``nu`` given the scaled squared residuals, the draws of the scale-mixture
weights, and the special functions that shape the move's proposal, each against an exact
reference. The draws' tests use fixed seeds; their false-alarm rates are written beside them.
"""

import numpy as np
import pandas as pd
import pytest
from scipy import special as spec
from scipy import stats as sps

import bayeshlm as bh
from bayeshlm.level1 import level1_chains
from samplers.scale import (
    NU_PRIOR_RATE,
    NU_PRIOR_SHAPE,
    NU_X_MAX,
    PAR_NU,
    _digamma,
    _trigamma,
    draw_weights,
    move_nu,
    nu_terms,
)
from samplers.types import L1_NU_ACC, L1_NU_N


def test_digamma_and_trigamma_agree_with_scipy():
    x = np.concatenate([np.linspace(0.5, 30.0, 120), [77.7, 512.0, 1500.5]])
    assert max(abs(_digamma(v) - spec.digamma(v)) for v in x) < 1e-10
    assert max(abs(_trigamma(v) / spec.polygamma(1, v) - 1.0) for v in x) < 1e-9


@pytest.mark.parametrize("x", [-1.5, 0.3, 2.0, 4.5, 7.5])
def test_nu_terms_are_the_t_log_likelihood_and_its_derivatives(x):
    """The log density of ``x = log(nu - 1)``: scipy's t log-likelihood, the prior and the Jacobian; its derivatives."""
    u = np.random.default_rng(1).standard_t(6.0, 400) ** 2
    f, g, h = nu_terms(x, u)
    nu = 1.0 + np.exp(x)
    want = (sps.t.logpdf(np.sqrt(u), nu).sum() + sps.gamma.logpdf(nu, NU_PRIOR_SHAPE, scale=1.0 / NU_PRIOR_RATE)
            + x)
    const = NU_PRIOR_SHAPE * np.log(NU_PRIOR_RATE) - spec.gammaln(NU_PRIOR_SHAPE) - 0.5 * u.size * np.log(np.pi)
    assert f + const == pytest.approx(want, rel=1e-11, abs=1e-8)
    e = 1e-5
    (fp, gp, _), (fm, gm, _) = nu_terms(x + e, u), nu_terms(x - e, u)
    assert g == pytest.approx((fp - fm) / (2 * e), rel=1e-5, abs=1e-5)
    assert h == pytest.approx((gp - gm) / (2 * e), rel=1e-5, abs=1e-5)
    assert nu_terms(NU_X_MAX + 0.1, u)[0] == -np.inf


def test_draw_weights_are_the_gamma_conditionals():
    """``lambda_i ~ Gamma((nu + 1) / 2, rate (nu + u_i) / 2)``: scaled back, KS tests against the gamma (nu = 1, 40)."""
    rng = np.random.default_rng(5)
    u = rng.exponential(2.0, 20000)
    lam = np.empty_like(u)
    for nu in (1.0, 40.0):
        draw_weights(rng, nu, u, lam)
        shape = 0.5 * (nu + 1.0)
        # false alarm 1e-4 for each of the two
        assert sps.kstest(lam * 0.5 * (nu + u), sps.gamma(shape).cdf).pvalue > 1e-4


def _level1(nu=None):
    rng = np.random.default_rng(0)
    g = np.repeat(np.arange(10), 6)
    df = pd.DataFrame({"y": rng.standard_t(5.0, g.size), "x": rng.normal(size=g.size), "g": g})
    model = bh.hlm("y ~ x + (1 | g)", df, family="student", nu=nu)
    return level1_chains(model, 1, 0, np.zeros(0, dtype=np.int64), 0)[0]


@pytest.mark.parametrize("n_rows, true_nu", [(60, 5.0), (3000, 25.0)])
def test_the_nu_move_leaves_the_posterior_of_nu_invariant(n_rows, true_nu):
    """Many moves given fixed ``u``: the draws follow the exact posterior of ``nu`` (its CDF on a fine grid).

    The draws are autocorrelated; they are thinned to nearly independent ones (lag 5, where
    the autocorrelation of such near-independent proposals is nil) and compared by a KS test
    whose false-alarm rate is 1e-4 for independent draws.
    """
    l1 = _level1()
    rng = np.random.default_rng(7)
    u = rng.standard_t(true_nu, n_rows) ** 2
    l1 = l1._replace(u=u)
    k = l1.Z.shape[1]
    l1.par[k + PAR_NU] = 10.0
    draws = []
    for it in range(25000):
        move_nu(rng, l1, True)
        if it >= 500 and it % 5 == 0:
            draws.append(np.log(l1.par[k + PAR_NU] - 1.0))
    grid = np.linspace(-6.0, NU_X_MAX, 20001)
    logp = np.array([nu_terms(x, u)[0] for x in grid])
    dens = np.exp(logp - logp.max())
    cdf = np.cumsum(dens)
    cdf /= cdf[-1]
    assert sps.kstest(np.array(draws), lambda v: np.interp(v, grid, cdf)).pvalue > 1e-4
    assert l1.scal[L1_NU_ACC] / l1.scal[L1_NU_N] > 0.6  # near-independent proposals are mostly accepted
