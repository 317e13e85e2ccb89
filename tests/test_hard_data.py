"""Hard data: tiny and huge groups, boundary variances, weak identification, extreme scales, size.

Nothing may crash; what the data cannot determine is said (an IdentificationWarning or a
boundary status); results are finite and, where a transformation of the data has a known
effect on the estimates, they follow it.
"""

import warnings

import numpy as np
import pandas as pd
import pytest

import bayeshlm as bh


def _frame(sizes, seed=0, tau=1.0, slope_sd=0.0):
    rng = np.random.default_rng(seed)
    n_groups = len(sizes)
    g = np.repeat(np.arange(n_groups), sizes)
    x = rng.normal(size=g.size)
    u = rng.normal(0, tau, size=n_groups)
    v = rng.normal(0, slope_sd, size=n_groups)
    y = 2.0 + 0.5 * x + u[g] + v[g] * x + rng.normal(size=g.size)
    return pd.DataFrame({"y": y, "x": x, "g": [f"g{j}" for j in g]})


def _quick(model, **kw):
    options = {"draws": 200, "warmup": 200, "chains": 2, "seed": 1, "progress": False}
    return bh.sample(model, **{**options, **kw})


def _finite(post):
    return all(np.all(np.isfinite(post.posterior[v].values)) for v in post.posterior.data_vars)


def test_groups_of_size_one_among_larger_ones():
    df = _frame([1] * 30 + [5] * 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error", bh.IdentificationWarning)  # identified: no warning
        model = bh.hlm("y ~ x + (1 | g)", df)
    fit = bh.fit_em(model)
    assert fit.converged and np.isfinite(fit.loglik)
    assert _finite(_quick(model))


def test_every_group_of_size_one_is_said_to_be_unidentified():
    df = _frame([1] * 40)
    with pytest.warns(bh.IdentificationWarning, match="single row.*not separately identified"):
        model = bh.hlm("y ~ x + (1 | g)", df)
    fit = bh.fit_em(model, "ml")
    # only tau^2 + sigma^2 is determined: the fit reaches the pooled variance
    pooled = np.var(model.design.y - model.design.F @ np.linalg.lstsq(model.design.F, model.design.y, rcond=None)[0])
    assert fit.sd["Intercept"] ** 2 + fit.sigma**2 == pytest.approx(pooled, rel=1e-4)
    assert _finite(_quick(model))


def test_a_single_group_is_refused():
    df = _frame([12])
    with pytest.raises(bh.DataError, match="single level"):
        bh.hlm("y ~ x + (1 | g)", df)


def test_groups_with_fewer_rows_than_random_coefficients():
    df = _frame([1, 2, 1, 3, 1, 2, 8, 9, 10, 12], slope_sd=0.5)
    model = bh.hlm("y ~ x + (x | g)", df)
    fit = bh.fit_em(model)
    assert np.isfinite(fit.loglik) and np.all(np.isfinite(fit.group_means))
    assert np.isnan(fit.group_ols[0]).all()  # a one-row group cannot fit its own line
    post = _quick(model)
    assert _finite(post)


def test_zero_ml_variance_is_a_boundary_and_the_sampler_still_mixes():
    df = _frame([6] * 15, tau=0.0, seed=3)
    model = bh.hlm("y ~ x + (1 | g)", df)
    fit = bh.fit_em(model, "ml")
    assert fit.sd["Intercept"] < 1e-8 and fit.boundary == ("Intercept",)  # this seed's ML estimate is zero
    assert fit.converged and np.isnan(fit.variance_se["sd[Intercept]"])  # no normal-theory SE at a boundary
    post = _quick(model, draws=1000, warmup=500)
    sd = post.posterior["g_sd"].values
    assert _finite(post) and sd.min() >= 0
    from tests.statistical.mc import ess

    assert ess(sd[..., 0]) > 200  # the signed-SD scale lets the chain reach zero and come back


def test_random_slope_constant_within_groups_is_said_to_be_weakly_identified():
    df = _frame([5] * 20)
    df["z"] = df.groupby("g")["x"].transform("mean")  # a group-level variable
    with pytest.warns(bh.IdentificationWarning, match="constant within every group"):
        model = bh.hlm("y ~ x + z + (1 + z | g)", df)
    fit = bh.fit_em(model)
    assert np.isfinite(fit.loglik)
    assert _finite(_quick(model))


def test_perfectly_collinear_fixed_predictors_are_named():
    df = _frame([5] * 10)
    df["x2"] = 2 * df["x"]
    with pytest.raises(bh.DataError, match="'x', 'x2'"):
        bh.hlm("y ~ x + x2 + (1 | g)", df)


@pytest.mark.parametrize("scale", [1e-6, 1e6])
def test_results_are_scale_equivariant(scale):
    df = _frame([4, 6, 8, 3, 5, 7, 9, 2, 6, 5, 4, 8], slope_sd=0.3)
    scaled = df.assign(y=df["y"] * scale)
    base_model, scaled_model = bh.hlm("y ~ x + (x | g)", df), bh.hlm("y ~ x + (x | g)", scaled)
    base, other = bh.fit_em(base_model), bh.fit_em(scaled_model)
    for k in base.fixed:
        assert other.fixed[k] == pytest.approx(scale * base.fixed[k], rel=1e-6)
        assert other.fixed_se[k] == pytest.approx(scale * base.fixed_se[k], rel=1e-5)
    for k in base.sd:
        assert other.sd[k] == pytest.approx(scale * base.sd[k], rel=1e-5)
    assert other.sigma == pytest.approx(scale * base.sigma, rel=1e-6)
    # the restricted log-likelihood moves by -(N - p) log(scale)
    shift = -(base_model.n_obs - len(base_model.fixed_names)) * np.log(scale)
    assert other.loglik == pytest.approx(base.loglik + shift, rel=1e-9, abs=1e-6)
    # the sampler with its data-scaled default priors: the same posterior, scaled
    p0 = _quick(base_model, draws=1000).posterior
    p1 = _quick(scaled_model, draws=1000).posterior
    from tests.statistical.mc import mcse

    for name in ("sigma",):
        a, b = p0[name].values, p1[name].values / scale
        assert abs(a.mean() - b.mean()) <= 5 * np.hypot(mcse(a), mcse(b))
    a, b = p0["fixed"].values[..., 1], p1["fixed"].values[..., 1] / scale
    assert abs(a.mean() - b.mean()) <= 5 * np.hypot(mcse(a), mcse(b))


def test_a_million_rows_in_a_handful_of_groups():
    rng = np.random.default_rng(5)
    n = 1_000_000
    g = rng.integers(0, 5, size=n)
    x = rng.normal(size=n)
    y = 1.0 + 0.3 * x + np.array([-1.0, 0.0, 0.5, 1.0, 2.0])[g] + rng.normal(size=n)
    model = bh.hlm("y ~ x + (1 | g)", {"y": y, "x": x, "g": g})
    fit = bh.fit_em(model)
    assert fit.converged and fit.fixed["x"] == pytest.approx(0.3, abs=0.01)
    post = _quick(model, draws=100, warmup=100)
    assert post.attrs["log_likelihood"] == "group"  # 4e8 pointwise values would not fit the default limit
    assert _finite(post)


def test_a_hundred_thousand_groups_of_a_few_rows():
    rng = np.random.default_rng(6)
    sizes = rng.integers(1, 5, size=100_000)
    g = np.repeat(np.arange(sizes.size), sizes)
    x = rng.normal(size=g.size)
    u = rng.normal(0, 0.7, size=sizes.size)
    y = 0.5 * x + u[g] + rng.normal(size=g.size)
    model = bh.hlm("y ~ x + (1 | g)", {"y": y, "x": x, "g": g})
    fit = bh.fit_em(model)
    assert fit.converged and fit.sd["Intercept"] == pytest.approx(0.7, rel=0.05)
    post = _quick(model, draws=30, warmup=30, keep_group_draws=False, log_likelihood=False)
    assert _finite(post)


def test_very_unbalanced_groups():
    sizes = [1, 2, 3, 10, 50, 200, 1000, 10_000]
    df = _frame(sizes, slope_sd=0.2, seed=7)
    model = bh.hlm("y ~ x + (x | g)", df)
    fit = bh.fit_em(model)
    assert np.isfinite(fit.loglik)
    post = _quick(model)
    assert _finite(post)
    # the big group's estimate is its own least-squares fit, the small ones are pulled in
    rel = fit.reliability_by_group[:, 0]
    assert rel[-1] > 0.99 and (np.isnan(rel[0]) or rel[0] < rel[-1])


def test_no_valid_start_is_reported_not_hidden():
    """A prior that gives the data no density (a uniform SD bound far below the residual
    scale) stops with a SamplingError saying what to check, after 50 jittered starts."""
    df = _frame([5] * 10)
    df["y"] *= 1000.0
    model = bh.hlm("y ~ x + (1 | g)", df, priors={"sigma": bh.Uniform(1e-3)})
    from bayeshlm.sample import SamplingError

    with pytest.raises(SamplingError, match="no starting point.*Uniform upper bound"):
        bh.sample(model, draws=10, warmup=10, chains=1, progress=False)
