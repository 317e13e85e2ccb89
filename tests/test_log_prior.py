"""The ``log_prior`` group: each prior's normalised density at each draw, where the prior is set.

Checked against scipy's densities at the stored draws (exact, 1e-10), for priors the user
sets, for the defaults (set at the predictors' means) and for an inverse-Wishart; and ArviZ's
power-scaling check runs on it and flags a prior that dominates the data.
"""

import warnings

import numpy as np
import pytest
from scipy import stats
from scipy.special import betaln

import bayeshlm as bh


def _flat(da):
    return da.transpose("chain", "draw", ...).values.reshape(-1, *da.shape[2:])


@pytest.fixture(scope="module")
def sleep():
    return bh.load_dataset("sleepstudy")


def test_user_priors_are_scipy_densities_at_the_draws(sleep):
    priors = {"fixed": bh.Normal(250, 100), "sigma": bh.HalfNormal(50), "sd[Intercept]": bh.HalfStudentT(3, 40),
              "sd[days]": bh.HalfCauchy(10), "corr": bh.LKJ(2.0)}
    model = bh.hlm("reaction ~ days + (days | subject)", sleep, priors=priors)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bh.ConvergenceWarning)
        post = bh.sample(model, chains=2, draws=100, warmup=100, seed=3, progress=False)
    p, lp = post.posterior, post["log_prior"]
    a = _flat(p["fixed"])
    np.testing.assert_allclose(_flat(lp["fixed"]), stats.norm(250, 100).logpdf(a), rtol=1e-10)
    sigma = _flat(p["sigma"])
    np.testing.assert_allclose(_flat(lp["sigma"]), np.log(2) + stats.norm(0, 50).logpdf(sigma), rtol=1e-10)
    sd = _flat(p["subject_sd"])
    np.testing.assert_allclose(_flat(lp["subject_sd"])[:, 0], np.log(2) + stats.t(3, scale=40).logpdf(sd[:, 0]),
                               rtol=1e-10)
    np.testing.assert_allclose(_flat(lp["subject_sd"])[:, 1], np.log(2) + stats.cauchy(scale=10).logpdf(sd[:, 1]),
                               rtol=1e-10)
    # LKJ(eta) on a 2 x 2 block: r has density (1 - r^2)^(eta - 1) / (2^(2 eta - 1) B(eta, eta))
    r = _flat(p["subject_corr"])[:, 0]
    expected = np.log1p(-r * r) - 3 * np.log(2) - betaln(2, 2)
    np.testing.assert_allclose(_flat(lp["subject_corr"]), expected, rtol=1e-10)


def test_default_priors_are_evaluated_where_they_are_set(sleep):
    """The default intercept priors hold at the mean of days: the intercept there, and its SD there."""
    model = bh.hlm("reaction ~ days + (days | subject)", sleep)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bh.ConvergenceWarning)
        post = bh.sample(model, chains=2, draws=100, warmup=100, seed=5, progress=False)
    p, lp = post.posterior, post["log_prior"]
    mean_days = float(sleep["days"].mean())
    a = _flat(p["fixed"])
    prior = model.prior_spec["fixed[Intercept]"]
    centred = a[:, 0] + mean_days * a[:, 1]
    np.testing.assert_allclose(_flat(lp["fixed"])[:, 0], stats.norm(prior.mu, prior.sigma).logpdf(centred),
                               rtol=1e-10)
    sd, r = _flat(p["subject_sd"]), _flat(p["subject_corr"])[:, 0]
    var_centred = sd[:, 0] ** 2 + 2 * mean_days * r * sd[:, 0] * sd[:, 1] + mean_days**2 * sd[:, 1] ** 2
    sd_prior = model.prior_spec["sd[Intercept]"]
    expected = np.log(2) + stats.t(sd_prior.nu, scale=sd_prior.sigma).logpdf(np.sqrt(var_centred))
    np.testing.assert_allclose(_flat(lp["subject_sd"])[:, 0], expected, rtol=1e-10)
    # the same whatever the location of the predictor: the default priors move with it, and the sampler,
    # working on standardised columns, makes the same draws up to rounding
    moved = bh.hlm("reaction ~ days + (days | subject)", sleep.assign(days=sleep["days"] + 2015))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bh.ConvergenceWarning)
        other = bh.sample(moved, chains=2, draws=100, warmup=100, seed=5, progress=False)
    total = sum(_flat(v).reshape(len(a), -1).sum(axis=1) for v in post["log_prior"].data_vars.values())
    total_moved = sum(_flat(v).reshape(len(a), -1).sum(axis=1) for v in other["log_prior"].data_vars.values())
    np.testing.assert_allclose(total_moved, total, rtol=1e-6)


def test_inverse_wishart_prior_is_the_scipy_density():
    data = bh.load_dataset("eight_schools")
    model = bh.hlm("y ~ 1 + (1 | school)", data, known_sd="sigma",
                   priors={"fixed": bh.Normal(0, 20), "cov": bh.InverseWishart(3.0, 100.0)})
    post = bh.sample(model, chains=2, draws=200, seed=1, progress=False)
    tau = _flat(post.posterior["school_sd"])[:, 0]
    assert "school_sd" not in post["log_prior"] and "sigma" not in post["log_prior"]
    np.testing.assert_allclose(_flat(post["log_prior"]["school_cov"]),
                               stats.invwishart(3.0, 100.0).logpdf(tau**2), rtol=1e-10)


def test_prior_sensitivity_flags_a_prior_that_overrides_the_data(sleep):
    loose = bh.hlm("reaction ~ days + (days | subject)", sleep)
    tight = bh.hlm("reaction ~ days + (days | subject)", sleep,
                   priors={"fixed[days]": bh.Normal(0, 0.5)})  # the data say about 10.5 (SE 1.5)
    draws = {"chains": 4, "draws": 500, "seed": 2, "progress": False}
    calm = bh.prior_sensitivity(bh.sample(loose, **draws))
    assert (calm["prior"] < 0.05).all() and set(calm.index) >= {"fixed[days]", "sigma", "subject_sd[days]"}
    flagged = bh.prior_sensitivity(bh.sample(tight, **draws), var_names=["fixed"])
    assert flagged.loc["fixed[days]", "prior"] > 0.05
    assert flagged.loc["fixed[days]", "diagnosis"] != "✓"
    saved = bh.sample(loose, chains=2, draws=50, warmup=50, seed=1, progress=False, log_likelihood=False)
    with pytest.raises(ValueError, match="no log_likelihood group"):
        bh.prior_sensitivity(saved)
