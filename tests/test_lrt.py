"""Likelihood-ratio tests: statistics, boundary mixtures, the test of the hierarchy."""

import numpy as np
import pytest
from scipy.stats import chi2

import bayeshlm as bh


@pytest.fixture(scope="module")
def sleep():
    return bh.load_dataset("sleepstudy")


def test_random_slope_mixture_p_value(sleep):
    small = bh.fit_em(bh.hlm("reaction ~ days + (1 | subject)", sleep), "reml")
    large = bh.fit_em(bh.hlm("reaction ~ days + (days | subject)", sleep), "reml")
    test = bh.lrt(small, large)
    assert test.df == 2 and test.mixture
    assert test.statistic == pytest.approx(2 * (large.loglik - small.loglik))
    # one added coefficient, correlated with the random intercept: 0.5 chi2(1) + 0.5 chi2(2)
    assert test.p_value == pytest.approx(0.5 * chi2.sf(test.statistic, 1) + 0.5 * chi2.sf(test.statistic, 2))
    assert test.p_value < test.p_value_naive
    assert "adding random days" in str(test)


def test_single_variance_uses_half_chi_square(sleep):
    model = bh.hlm("reaction ~ days + (1 | subject)", sleep)
    fit = bh.fit_em(model, "ml")
    test = bh.lrt_hierarchy(model, fit)
    # the pooled regression by ordinary least squares, written out
    y, F = model.design.y, model.design.F
    n = y.size
    rss = np.sum((y - F @ np.linalg.lstsq(F, y, rcond=None)[0]) ** 2)
    pooled = -0.5 * n * (np.log(2 * np.pi) + np.log(rss / n) + 1)
    assert test.statistic == pytest.approx(2 * (fit.loglik - pooled), rel=1e-9)
    assert test.df == 1 and test.mixture
    assert test.p_value == pytest.approx(0.5 * chi2.sf(test.statistic, 1))


def test_reml_hierarchy_against_pooled_restricted_likelihood(sleep):
    model = bh.hlm("reaction ~ days + (1 | subject)", sleep)
    fit = bh.fit_em(model, "reml")
    y, F = model.design.y, model.design.F
    n, p = F.shape
    rss = np.sum((y - F @ np.linalg.lstsq(F, y, rcond=None)[0]) ** 2)
    pooled = -0.5 * ((n - p) * (np.log(2 * np.pi) + np.log(rss / (n - p)) + 1) + np.linalg.slogdet(F.T @ F)[1])
    assert bh.lrt_hierarchy(model, fit).statistic == pytest.approx(2 * (fit.loglik - pooled), rel=1e-9)


def test_incomparable_fits_are_refused(sleep):
    a = bh.fit_em(bh.hlm("reaction ~ days + (1 | subject)", sleep), "reml")
    b = bh.fit_em(bh.hlm("reaction ~ 1 + (1 | subject)", sleep), "reml")
    c = bh.fit_em(bh.hlm("reaction ~ days + (days | subject)", sleep), "ml")
    with pytest.raises(ValueError, match="different fixed effects"):
        bh.lrt(b, a)
    with pytest.raises(ValueError, match="different methods"):
        bh.lrt(a, c)
    with pytest.raises(ValueError, match="more parameters"):
        bh.lrt(a, a)


def test_the_model_comes_first_and_the_old_order_warns(sleep):
    """Functions taking a model and a result take the model first; the old order still works, with a warning."""
    model = bh.hlm("reaction ~ days + (1 | subject)", sleep)
    fit = bh.fit_em(model, "ml")
    new = bh.lrt_hierarchy(model, fit)
    with pytest.warns(DeprecationWarning, match=r"lrt_hierarchy\(model, result\)"):
        old = bh.lrt_hierarchy(fit, model)
    assert old.statistic == new.statistic
