"""variance_partition: each level's variance, share and intraclass correlation, by hand and against lme4.

Every check is exact arithmetic on the fit's own estimates or draws (1e-10), except the
comparison with lme4's ICC of the HSB null model (1e-5: the two optimisers' tolerance).
"""

import warnings

import numpy as np
import pytest

import bayeshlm as bh


def test_three_levels_add_the_coarser_levels_into_the_finer_icc():
    model = bh.hlm("strength ~ 1 + (1 | batch/cask)", bh.load_dataset("pastes"))
    fit = bh.fit_em(model)
    table = bh.variance_partition(model, fit)
    v_cask, v_batch, s2 = fit.sd["Intercept|batch:cask"] ** 2, fit.sd["Intercept|batch"] ** 2, fit.sigma**2
    total = v_cask + v_batch + s2
    assert list(table.index) == ["batch:cask", "batch", "Residual"]
    np.testing.assert_allclose(table["variance"], [v_cask, v_batch, s2], rtol=1e-10)
    np.testing.assert_allclose(table["share"], np.array([v_cask, v_batch, s2]) / total, rtol=1e-10)
    assert table.loc["batch:cask", "icc"] == pytest.approx((v_cask + v_batch) / total, rel=1e-10)
    assert table.loc["batch", "icc"] == pytest.approx(v_batch / total, rel=1e-10)
    assert fit.icc_by_level == pytest.approx({"batch:cask": (v_cask + v_batch) / total, "batch": v_batch / total})
    assert "intraclass correlations" in fit.summary() and "batch 0.1539" in fit.summary()


def test_the_null_model_s_icc_is_lme4_s(lme4_fits):
    ref = lme4_fits["models"]["hsb_null"]["fits"]["REML"]
    model = bh.hlm("mathach ~ 1 + (1 | school)", bh.load_dataset("hsb"))
    fit = bh.fit_em(model)
    icc = bh.variance_partition(model, fit).loc["school", "icc"]
    tau00 = ref["random"]["school"]["variance"]["(Intercept)"]
    assert icc == pytest.approx(tau00 / (tau00 + ref["sigma2"]), rel=1e-5)
    assert icc == pytest.approx(fit.icc, rel=1e-10)


def test_a_random_slope_s_variance_depends_on_where_it_is_taken():
    data = bh.load_dataset("sleepstudy")
    model = bh.hlm("reaction ~ days + (days | subject)", data)
    fit = bh.fit_em(model)
    s0, s1, r, s2 = fit.sd["Intercept"], fit.sd["days"], fit.corr["Intercept,days"], fit.sigma**2

    def v(x):
        return s0**2 + 2 * x * r * s0 * s1 + x**2 * s1**2

    points = bh.variance_partition(model, fit, at={"days": [0.0, 9.0]})
    for k, x in enumerate((0.0, 9.0)):
        assert points.loc[(k, "subject"), "variance"] == pytest.approx(v(x), rel=1e-10)
        assert points.loc[(k, "subject"), "icc"] == pytest.approx(v(x) / (v(x) + s2), rel=1e-10)
    # by default: averaged over the rows, E z'Tz = s0^2 + 2 E[days] cov + E[days^2] s1^2
    days = data["days"].to_numpy(float)
    average = s0**2 + 2 * days.mean() * r * s0 * s1 + np.mean(days**2) * s1**2
    assert bh.variance_partition(model, fit).loc["subject", "variance"] == pytest.approx(average, rel=1e-10)
    # a model from statistics alone has no rows: the same average from its cross-products
    chunked = bh.hlm_stats("reaction ~ days + (days | subject)", data)
    from_stats = bh.variance_partition(chunked, bh.fit_em(chunked))
    assert from_stats.loc["subject", "variance"] == pytest.approx(average, rel=1e-6)
    # the posterior's: the same arithmetic draw by draw
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bh.ConvergenceWarning)
        post = bh.sample(model, chains=2, draws=200, warmup=200, seed=3, progress=False)
    p = post.posterior
    sd0 = p["subject_sd"].sel(subject_coef="Intercept").values.reshape(-1)
    sigma2 = p["sigma"].values.reshape(-1) ** 2
    at0 = bh.variance_partition(model, post, at={"days": [0.0]})
    icc = sd0**2 / (sd0**2 + sigma2)
    assert at0.loc[(0, "subject"), "icc"] == pytest.approx(icc.mean(), rel=1e-10)
    assert at0.loc[(0, "subject"), "icc_upper"] == pytest.approx(np.quantile(icc, 0.975), rel=1e-10)


def test_shares_do_not_depend_on_the_response_s_units():
    data = bh.load_dataset("sleepstudy")
    first = bh.hlm("reaction ~ days + (days | subject)", data)
    second = bh.hlm("reaction ~ days + (days | subject)", data.assign(reaction=1e6 + 1000 * data["reaction"]))
    one = bh.variance_partition(first, bh.fit_em(first))
    two = bh.variance_partition(second, bh.fit_em(second))
    np.testing.assert_allclose(two["share"], one["share"], rtol=1e-6)
    np.testing.assert_allclose(two["variance"], 1e6 * one["variance"], rtol=1e-6)


def test_crossed_factors_and_the_latent_scale():
    scots = bh.load_dataset("scotssec")
    crossed = bh.hlm("attain ~ verbal + (1 | primary) + (1 | second)", scots)
    fit = bh.fit_em(crossed)
    table = bh.variance_partition(crossed, fit)
    np.testing.assert_allclose(table["icc"].drop("Residual"), table["share"].drop("Residual"), rtol=1e-12)
    binary = bh.hlm("use ~ age + urban + (1 | district)", bh.load_dataset("contraception"), family="bernoulli")
    eb = bh.fit_em(binary)
    tau2 = eb.sd["Intercept"] ** 2
    latent = bh.variance_partition(binary, eb)
    assert latent.loc["Residual", "variance"] == pytest.approx(np.pi**2 / 3, rel=1e-12)
    assert latent.loc["district", "icc"] == pytest.approx(tau2 / (tau2 + np.pi**2 / 3), rel=1e-10)


def test_what_has_no_partition():
    ticks = bh.load_dataset("grouseticks")
    counts = bh.hlm("ticks ~ 1 + (1 | brood)", ticks, family="poisson")
    with pytest.raises(ValueError, match="no level-1 variance on its link scale"):
        bh.variance_partition(counts, bh.fit_em(counts))
    schools = bh.hlm("y ~ 1 + (1 | school)", bh.load_dataset("eight_schools"), known_sd="sigma")
    with pytest.raises(ValueError, match="known level-1 variances"):
        bh.variance_partition(schools, bh.fit_em(schools))
