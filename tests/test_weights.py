"""Precision weights (``weights=``) and Gaussian offsets (docs/design.md, "Weights and offsets").

References: lme4's ``lmer(..., weights = w)`` fits in tests/golden/weights_fits.json, made by
tests/golden/weights_fits.R with the weights built there by the same rules as :func:`_data`
here (sleepstudy ``w = 1 + days %% 3``, HSB ``w = 1 + sector``), and one Gaussian offset.
The rest are identities that hold exactly (to rounding): equal weights, an offset against
the response minus it, shifted and scaled data, and the log-likelihoods of posterior draws
computed by hand.
"""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import multivariate_normal, norm

import bayeshlm as bh
from bayeshlm.__main__ import main
from bayeshlm.em import loglik_at
from bayeshlm.model import ModelMismatchError, check_result
from samplers.gaussian import workspace
from samplers.ml import eb_estimates
from samplers.theta import encode_theta

GOLDEN = json.loads((Path(__file__).parent / "golden" / "weights_fits.json").read_text())
SLEEP = "reaction ~ days + (days | subject)"
SLEEP_OFFSET = "reaction ~ days + offset(2 * days) + (days | subject)"
OPTS = {"chains": 4, "draws": 1000, "warmup": 500, "progress": False}


def _data(name):
    """A bundled data set with the weight column ``w`` of tests/golden/weights_fits.R."""
    d = bh.load_dataset(name)
    if name == "sleepstudy":
        d["w"] = 1.0 + (d["days"] % 3)
    if name == "hsb":
        d["w"] = 1.0 + d["sector"]
    return d


def _name(term):
    """lme4's coefficient name as bayeshlm's: ``(Intercept)`` -> ``Intercept``."""
    return term.replace("(Intercept)", "Intercept")


def _relative(mine, ref):
    return abs(mine - ref) / abs(ref)


@pytest.fixture(scope="module")
def sleep_posterior():
    """The weighted sleepstudy model with an offset, its posterior (pointwise log-likelihood) and REML fit."""
    data = _data("sleepstudy")
    model = bh.hlm(SLEEP_OFFSET, data, weights="w")
    return data, model, bh.sample(model, seed=11, **OPTS), bh.fit_em(model)


# ------------------------------------------------------------------------------ lme4
@pytest.mark.parametrize("method", ["REML", "ML"])
@pytest.mark.parametrize("key", list(GOLDEN["models"]))
def test_weighted_fits_agree_with_lme4(key, method):
    """logLik to 1e-6 relative (lme4's includes ``+ sum(log w) / 2``), every other quantity to 1e-5.

    Measured: logLik 1e-15, fixed effects 1e-13, sigma 2e-9, SDs 3e-8, standard errors 3e-8,
    correlations 4e-7 (relative).
    """
    spec = GOLDEN["models"][key]
    ref = spec["fits"][method]
    assert not ref["optimizer_messages"]
    fit = bh.fit_em(bh.hlm(spec["formula"], _data(spec["dataset"]), weights="w"), method.lower())
    assert fit.converged
    assert _relative(fit.loglik, ref["logLik"]) < 1e-6
    assert _relative(fit.sigma, ref["sigma"]) < 1e-5
    for term, value in ref["fixef"].items():
        assert _relative(fit.fixed[_name(term)], value) < 1e-5, term
        assert _relative(fit.fixed_se[_name(term)], ref["fixef_se"][term]) < 1e-5, term
    for part in ref["random"].values():
        for term, value in part["sd"].items():
            assert _relative(fit.sd[_name(term)], value) < 1e-5, term
        for pair, value in (part["cor"] or {}).items():
            first, second = (_name(t) for t in pair.split("|"))
            assert _relative(fit.corr[f"{first},{second}"], value) < 1e-5, pair


def test_profile_intervals_agree_with_lme4():
    """lme4's profile of a REML fit is of the ML likelihood (tests/test_intervals.py): held to 1e-4
    relative as there; measured, 3e-7."""
    spec = GOLDEN["models"]["hsb_w"]
    model = bh.hlm(spec["formula"], _data("hsb"), weights="w")
    table = bh.profile_intervals(model, bh.fit_em(model), method="ml")
    for name, ref in spec["fits"]["REML"]["profile"].items():
        row = table.loc["sigma" if name == "sigma" else "sd[Intercept]"]
        assert _relative(row["lower"], ref["lower"]) < 1e-4, name
        assert _relative(row["upper"], ref["upper"]) < 1e-4, name


# ------------------------------------------------------------------------------ exact identities
@pytest.mark.parametrize("method", ["reml", "ml"])
def test_equal_weights_only_rescale_sigma(method):
    """Weights all ``c``: the unweighted fit with sigma times ``sqrt(c)``; the likelihood is the same function."""
    data = _data("sleepstudy")
    c = 3.7
    plain = bh.fit_em(bh.hlm(SLEEP, data), method)
    weighted = bh.fit_em(bh.hlm(SLEEP, data.assign(w=c), weights="w"), method)
    assert weighted.sigma == pytest.approx(plain.sigma * np.sqrt(c), rel=1e-9)
    assert weighted.loglik == pytest.approx(plain.loglik, rel=1e-12)
    for name in plain.fixed:
        assert weighted.fixed[name] == pytest.approx(plain.fixed[name], rel=1e-10)
        assert weighted.fixed_se[name] == pytest.approx(plain.fixed_se[name], rel=1e-8)
    for name in plain.sd:
        assert weighted.sd[name] == pytest.approx(plain.sd[name], rel=1e-8)
    assert weighted.corr["Intercept,days"] == pytest.approx(plain.corr["Intercept,days"], rel=1e-7)


def _gls_at(model, sigma, cov):
    """The GLS fixed effects and their covariance at given variance components, in the user's units."""
    basis, st = model.basis, model.structure
    theta = np.empty(model.n_theta)
    assert encode_theta(sigma**2 / basis.sigma_scale**2, basis.coef_cov_from_user(cov), st, theta)
    p, d = model.stats.Fty.shape[0], model.stats.Xty.shape[1]
    n_nodes = int(st.node_ptr[-1])
    a, vcov = np.empty(p), np.empty((p, p))
    eb_estimates(None, theta, workspace(model.stats, st), model.stats, st, model.priors, a, np.zeros((n_nodes, d)),
                 np.zeros((n_nodes, d, d)), vcov)
    return basis.fixed_values(a), basis.fixed_cov(vcov)


def test_integer_weights_are_not_repeated_rows():
    """Weight ``k`` against the row repeated ``k`` times: what is equal and what is not.

    Both models have the same weighted cross-products, so at the same variance components
    the GLS fixed effects and their covariance are equal, and the log-likelihoods differ by
    the constant ``-[(N - N_e) log(2 pi sigma^2) - sum log w] / 2`` (``N`` rows, ``N_e``
    expanded rows), for ML and REML alike. That constant depends on sigma, so the
    estimates differ: precision weights are not frequency weights.
    """
    data = _data("sleepstudy")
    model = bh.hlm(SLEEP, data, weights="w")
    expanded = bh.hlm(SLEEP, data.loc[data.index.repeat(data["w"].astype(int))].reset_index(drop=True))
    n, n_e, sum_log_w = model.n_obs, expanded.n_obs, float(np.sum(np.log(data["w"])))
    assert (n, n_e) == (180, 342)
    fit = bh.fit_em(model)
    sd, r = np.array([fit.sd["Intercept"], fit.sd["days"]]), fit.corr["Intercept,days"]
    cov = np.outer(sd, sd) * np.array([[1.0, r], [r, 1.0]])
    a_w, v_w = _gls_at(model, fit.sigma, cov)
    a_e, v_e = _gls_at(expanded, fit.sigma, cov)
    np.testing.assert_allclose(a_w, a_e, rtol=1e-11)
    np.testing.assert_allclose(v_w, v_e, rtol=1e-9)
    np.testing.assert_allclose(a_w, list(fit.fixed.values()), rtol=1e-10)
    constant = -0.5 * ((n - n_e) * np.log(2 * np.pi * fit.sigma**2) - sum_log_w)
    for method in ("reml", "ml"):
        difference = loglik_at(model, fit.sigma, cov, method) - loglik_at(expanded, fit.sigma, cov, method)
        assert difference == pytest.approx(constant, rel=1e-10), method
    repeated = bh.fit_em(expanded)
    assert abs(repeated.sigma / fit.sigma - 1) > 0.1  # not the same fit
    assert abs(repeated.sd["days"] / fit.sd["days"] - 1) > 0.01


def test_an_offset_is_the_fit_of_the_response_minus_it(sleep_posterior):
    """``offset(2 * days)``: the fit, the posterior and the log-likelihoods of ``reaction - 2 days``;
    the observed data, replicated data and predictions are on the scale of ``reaction``."""
    data, model, post, fit = sleep_posterior
    offset = 2.0 * data["days"].to_numpy(float)
    minus = bh.hlm("net ~ days + (days | subject)", data.assign(net=data["reaction"] - offset), weights="w")
    np.testing.assert_array_equal(model.offset, offset)
    np.testing.assert_array_equal(model.design.y, minus.design.y)
    other = bh.fit_em(minus)
    assert fit.loglik == pytest.approx(other.loglik, rel=1e-13)
    assert fit.sigma == pytest.approx(other.sigma, rel=1e-12)
    for name in fit.fixed:
        assert fit.fixed[name] == pytest.approx(other.fixed[name], rel=1e-12)
        assert fit.sd[name] == pytest.approx(other.sd[name], rel=1e-10)
    post_minus = bh.sample(minus, seed=11, **OPTS)  # the same kernels' problem, the same draws
    np.testing.assert_array_equal(post.posterior["fixed"].values, post_minus.posterior["fixed"].values)
    np.testing.assert_allclose(post.log_likelihood["reaction"].values, post_minus.log_likelihood["net"].values,
                               rtol=1e-13)
    np.testing.assert_array_equal(post.observed_data["reaction"].values, data["reaction"].to_numpy(float))
    np.testing.assert_array_equal(post.constant_data["offset"].values, offset)
    pp = bh.posterior_predictive(model, post, seed=3).posterior_predictive["reaction"].values
    pp_minus = bh.posterior_predictive(minus, post_minus, seed=3).posterior_predictive["net"].values
    np.testing.assert_allclose(pp - pp_minus, np.broadcast_to(offset, pp.shape), rtol=0, atol=1e-9)
    new = pd.DataFrame({"days": [0.0, 4.5, 12.0], "subject": ["308", "309", "a new one"]})
    for kind in ("mean", "predictive"):
        mine = bh.predict(model, post, new, kind=kind, seed=5).values
        theirs = bh.predict(minus, post_minus, new, kind=kind, seed=5).values
        np.testing.assert_allclose(mine - theirs, np.broadcast_to(2.0 * new["days"].to_numpy(), mine.shape),
                                   rtol=0, atol=1e-9)
    prior = bh.prior_predictive(model, 20, seed=1)
    np.testing.assert_array_equal(prior.observed_data["reaction"].values, data["reaction"].to_numpy(float))
    with pytest.raises(bh.DataError, match=r"offset\(2 \* days\)"):
        bh.hlm(SLEEP_OFFSET, data.assign(days=data["days"].where(data.index != 7)), weights="w")
    dropped = bh.hlm(SLEEP_OFFSET, data.assign(w=data["w"].where(data.index != 7)), weights="w", missing="drop")
    assert dropped.n_obs == 179 and dropped.offset.shape == (179,)


# ------------------------------------------------------------------------------ the posterior
def test_posterior_mean_of_the_fixed_effects_is_the_weighted_least_squares_estimate(sleep_posterior):
    """In sleepstudy every subject has the same days and weights, so the GLS fixed effects do not
    depend on the variance components: ``E[a | y]`` is the REML estimate, up to the default
    prior's pull (below 2% of the Monte Carlo SE here) and Monte Carlo error. Each coefficient
    is held to 4 Monte Carlo SEs: a false alarm about 1.3e-4 of the time for the two together.
    """
    _, _, post, fit = sleep_posterior
    table = bh.summary(post)
    for name, estimate in fit.fixed.items():
        row = table.loc[f"fixed[{name}]"]
        assert abs(row["mean"] - estimate) < 4 * row["mcse_mean"], name


def _draw(post, model, data, c, s):
    """Draw ``(c, s)``: each row's mean (offset included) and the level-1 SD of a weight-1 row."""
    p = post.posterior
    fixed = p["fixed"].values[c, s]
    effect = p["subject_effect"].sel(subject=data["subject"].astype(str).to_numpy()).values[c, s]
    X = model.design.X
    mean = model.design.F @ fixed + np.einsum("ik,ik->i", X, effect) + model.offset
    return mean, float(p["sigma"].values[c, s])


def test_pointwise_log_likelihood_is_the_weighted_normal_density(sleep_posterior):
    """Row ``i`` at a draw: ``log N(y_i | mean_i, sigma^2 / w_i)`` computed here with scipy."""
    data, model, post, _ = sleep_posterior
    w = data["w"].to_numpy(float)
    y = data["reaction"].to_numpy(float)
    for c, s in ((0, 0), (2, 517), (3, 999)):
        mean, sigma = _draw(post, model, data, c, s)
        by_hand = norm.logpdf(y, mean, sigma / np.sqrt(w))
        np.testing.assert_allclose(post.log_likelihood["reaction"].values[c, s], by_hand, rtol=1e-12)


def test_group_log_likelihoods_from_the_statistics(sleep_posterior):
    """By group from the statistics (``log c_w`` carried back) equals the rows' sums; with the group's
    coefficients integrated out, the dense normal density of its rows, ``sigma^2 W^-1 + X T X'``."""
    data, model, post, _ = sleep_posterior
    by_group = bh.sample(model, seed=11, log_likelihood="group", **OPTS)
    codes = model.design.group_idx
    sums = np.stack([post.log_likelihood["reaction"].values[..., codes == j].sum(-1)
                     for j in range(model.n_groups)], axis=-1)
    np.testing.assert_allclose(by_group.log_likelihood["reaction"].values, sums, rtol=1e-10)
    marginal = bh.marginal_group_log_likelihood(model, post)
    rows_only = dataclasses.replace(model, stats=model.stats._replace(FtF_g=model.stats.FtF_g[:0]))
    np.testing.assert_allclose(bh.marginal_group_log_likelihood(rows_only, post), marginal, rtol=1e-10)
    p = post.posterior
    y, w = data["reaction"].to_numpy(float), data["w"].to_numpy(float)
    for c, s in ((1, 3), (3, 640)):
        sd = p["subject_sd"].values[c, s]
        r = p["subject_corr"].values[c, s, 0]
        T = np.array([[sd[0] ** 2, r * sd[0] * sd[1]], [r * sd[0] * sd[1], sd[1] ** 2]])
        sigma = float(p["sigma"].values[c, s])
        mean = model.design.F @ p["fixed"].values[c, s] + model.offset
        for j in (0, 7, 17):
            rows = codes == j
            X = model.design.X[rows]
            V = np.diag(sigma**2 / w[rows]) + X @ T @ X.T
            dense = multivariate_normal(mean[rows], V).logpdf(y[rows])
            assert marginal[c, s, j] == pytest.approx(dense, rel=1e-11)


def test_replicated_and_predicted_noise_has_sd_sigma_over_root_w(sleep_posterior):
    """Given the seed the standard normals are known: replicated data are ``mean + sigma / sqrt(w_i) z``
    (the offset in the mean); a new row has weight 1 unless ``predict(weights=)`` says otherwise."""
    data, model, post, _ = sleep_posterior
    pp = bh.posterior_predictive(model, post, seed=8).posterior_predictive["reaction"].values
    z = np.random.default_rng(8).standard_normal((4000, model.n_obs)).reshape(pp.shape)
    w = data["w"].to_numpy(float)
    for c, s in ((0, 5), (3, 900)):
        mean, sigma = _draw(post, model, data, c, s)
        np.testing.assert_allclose(pp[c, s], mean + sigma / np.sqrt(w) * z[c, s], rtol=1e-12)
    new = pd.DataFrame({"days": [1.0, 8.0], "subject": ["308", "335"]})
    means = bh.predict(model, post, new, kind="mean").values
    sigma = post.posterior["sigma"].values[..., None]
    z = np.random.default_rng(4).standard_normal((4000, 2)).reshape(means.shape)
    plain = bh.predict(model, post, new, seed=4).values
    np.testing.assert_allclose(plain, means + sigma * z, rtol=1e-12)
    quartered = bh.predict(model, post, new.assign(k=[4.0, 16.0]), seed=4, weights="k").values
    np.testing.assert_allclose(quartered, means + sigma / np.array([2.0, 4.0]) * z, rtol=1e-12)
    with pytest.raises(bh.DataError, match=r"column 'k' \(weights\).*zero.*row positions 1"):
        bh.predict(model, post, new.assign(k=[4.0, 0.0]), weights="k")


def test_reliabilities_and_the_bootstrap_noise_use_the_weights(sleep_posterior):
    """The reliabilities from the rows (``X_j'W_jX_j`` with the user's weights and sigma) equal the fit's own
    (from the statistics, in the kernels' basis); the bootstrap draws its noise with SD ``sigma / sqrt(w)``."""
    from bayeshlm.intervals import _Replicator

    data, model, _, fit = sleep_posterior
    table = bh.reliability(model, fit)
    np.testing.assert_allclose(table["reliability"].to_numpy().reshape(model.n_groups, 2),
                               fit.reliability_by_group, rtol=1e-10)
    np.testing.assert_allclose(_Replicator(model, fit).noise_sd, fit.sigma / np.sqrt(data["w"].to_numpy(float)),
                               rtol=1e-15)


# ------------------------------------------------------------------------------ units
def test_shifted_and_scaled_data_give_exactly_transformed_estimates():
    """Response times 1000 plus 1e6 and weights times 10: each estimate moves as the units do.

    sigma is the SD of a row of weight 1, so it grows with the weights' units as well.
    """
    data = _data("sleepstudy")
    base_model = bh.hlm(SLEEP, data, weights="w")
    moved_data = data.assign(reaction=1000.0 * data["reaction"] + 1e6, w=10.0 * data["w"])
    moved_model = bh.hlm(SLEEP, moved_data, weights="w")
    n = base_model.n_obs
    for method in ("reml", "ml"):
        base, moved = bh.fit_em(base_model, method), bh.fit_em(moved_model, method)
        assert moved.fixed["Intercept"] == pytest.approx(1000.0 * base.fixed["Intercept"] + 1e6, rel=1e-12)
        assert moved.fixed["days"] == pytest.approx(1000.0 * base.fixed["days"], rel=1e-8)
        assert moved.fixed_se["days"] == pytest.approx(1000.0 * base.fixed_se["days"], rel=1e-7)
        assert moved.sigma == pytest.approx(1000.0 * np.sqrt(10.0) * base.sigma, rel=1e-8)
        for name in base.sd:
            assert moved.sd[name] == pytest.approx(1000.0 * base.sd[name], rel=1e-7)
        assert moved.corr["Intercept,days"] == pytest.approx(base.corr["Intercept,days"], rel=1e-6)
        # the density of the response in its new units (the weights' units cancel against sigma's);
        # REML's also carries the Jacobian of the two fixed effects it integrates
        shift = -(n - (2 if method == "reml" else 0)) * np.log(1000.0)
        assert moved.loglik == pytest.approx(base.loglik + shift, rel=1e-11)
    # the default prior of sigma moves with the response's and the weights' units
    assert moved_model.prior_spec["sigma"].sigma == pytest.approx(
        1000.0 * np.sqrt(10.0) * base_model.prior_spec["sigma"].sigma, rel=1e-12)
    assert moved_model.basis.w_scale == pytest.approx(10.0 * base_model.basis.w_scale, rel=1e-14)


# ------------------------------------------------------------------------------ records and chunks
def test_weights_are_part_of_the_model_identity_and_record(tmp_path):
    data = _data("hsb")
    formula = GOLDEN["models"]["hsb_w"]["formula"]
    model = bh.hlm(formula, data, weights="w")
    fit = bh.fit_em(model)
    assert model.identity()["weights"] == "w" and "weights" not in bh.hlm(formula, data).identity()
    with pytest.raises(ModelMismatchError, match="weights"):
        check_result(bh.hlm(formula, data), fit)
    saved = bh.load(bh.save(fit, tmp_path / "fit.nc"))
    again = bh.model_from(saved, data)
    assert again.identity() == model.identity()
    np.testing.assert_array_equal(again.design.weights, data["w"].to_numpy(float))
    by_array = bh.hlm(formula, data, weights=data["w"].to_numpy())
    array_fit = bh.fit_em(by_array)
    assert array_fit.loglik == pytest.approx(fit.loglik, rel=1e-14)
    with pytest.raises(ValueError, match="weights="):
        bh.model_from(array_fit, data)
    assert bh.model_from(array_fit, data, weights=data["w"].to_numpy()).identity() == by_array.identity()
    assert model.with_data(data).identity() == model.identity()


def test_statistics_by_chunks_equal_the_rows():
    data = _data("hsb")
    formula = GOLDEN["models"]["hsb_w"]["formula"]
    rows = bh.hlm(formula, data, weights="w")
    chunks = bh.hlm_stats(formula, data, weights="w", chunk_rows=1000)
    assert chunks.identity() == rows.identity()
    assert chunks.basis.w_scale == pytest.approx(rows.basis.w_scale, rel=1e-14)
    a, b = bh.fit_em(rows), bh.fit_em(chunks)
    assert b.loglik == pytest.approx(a.loglik, rel=1e-12)
    assert b.sigma == pytest.approx(a.sigma, rel=1e-9)
    assert b.fixed["ses_centered"] == pytest.approx(a.fixed["ses_centered"], rel=1e-10)
    zeros = data.assign(w=data["w"].where(~data.index.isin([2500, 6000]), 0.0))
    with pytest.raises(bh.DataError, match=r"column 'w' \(weights\).*2 values are zero.*row positions 2500, 6000"):
        bh.hlm_stats(formula, zeros, weights="w", chunk_rows=1000)
    with pytest.raises(ValueError, match="offset"):
        bh.hlm_stats("mathach ~ ses_centered + offset(ses) + (1 | school)", data, chunk_rows=1000)


# ------------------------------------------------------------------------------ errors
def test_weights_that_cannot_be_used_are_refused_by_name_and_row():
    data = _data("sleepstudy")
    with pytest.raises(bh.DataError, match=r"column 'w' \(weights\).*2 values are zero \(row positions 3, 17\)"
                                           r".*drop it"):
        bh.hlm(SLEEP, data.assign(w=data["w"].where(~data.index.isin([3, 17]), 0.0)), weights="w")
    with pytest.raises(bh.DataError, match=r"column 'w' \(weights\).*1 value is negative \(row positions 5\)"):
        bh.hlm(SLEEP, data.assign(w=data["w"].where(data.index != 5, -1.0)), weights="w")
    holes = data.assign(w=data["w"].where(data.index != 4))
    with pytest.raises(bh.DataError, match=r"column 'w' has 1 missing or non-finite value \(row positions 4\)"):
        bh.hlm(SLEEP, holes, weights="w")
    dropped = bh.hlm(SLEEP, holes, weights="w", missing="drop")
    assert dropped.n_obs == 179 and dropped.design.n_dropped == 1
    # positions are the rows' positions in the data given, also after rows were dropped
    both = holes.assign(w=holes["w"].where(holes.index != 10, 0.0))
    with pytest.raises(bh.DataError, match=r"row positions 10\)"):
        bh.hlm(SLEEP, both, weights="w", missing="drop")
    with pytest.raises(bh.DataError, match=r"^weights must be finite and > 0: 1 value is zero \(row positions 0\)"):
        bh.hlm(SLEEP, data, weights=np.r_[0.0, np.ones(179)])
    with pytest.raises(bh.DataError, match="weights has 3 values but the data has 180 rows"):
        bh.hlm(SLEEP, data, weights=[1.0, 2.0, 3.0])
    with pytest.raises(bh.DataError, match="column 'weight' .* not in the data"):
        bh.hlm(SLEEP, data, weights="weight")
    with pytest.raises(ValueError, match="known_sd/known_var"):
        bh.hlm(SLEEP, data.assign(se=20.0), weights="w", known_sd="se")
    with pytest.raises(ValueError, match="known_sd/known_var"):
        bh.hlm_stats(SLEEP, data.assign(se=20.0), weights="w", known_var="se")
    cbpp = bh.load_dataset("cbpp").assign(w=2.0)
    with pytest.raises(ValueError, match="trials"):
        bh.hlm("cbind(incidence, size - incidence) ~ 1 + (1 | herd)", cbpp, family="binomial", weights="w")
    with pytest.raises(ValueError, match="Gaussian family"):
        bh.hlm("incidence ~ 1 + (1 | herd)", cbpp, family="poisson", weights="w")


# ------------------------------------------------------------------------------ the command line
def test_command_line_em_with_weights(tmp_path, capsys):
    path = tmp_path / "sleep.csv"
    _data("sleepstudy").to_csv(path, index=False)
    ref = GOLDEN["models"]["sleepstudy_w"]["fits"]["REML"]
    code = main(["em", str(path), SLEEP, "--weights", "w", "--out", str(tmp_path / "em.nc")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"logLik: {ref['logLik']:.4f}" in out
    assert bh.load(tmp_path / "em.nc").sigma == pytest.approx(ref["sigma"], rel=1e-5)
    ref = GOLDEN["models"]["sleepstudy_offset"]["fits"]["REML"]  # the offset passes the formula's safe mode
    code = main(["em", str(path), SLEEP_OFFSET, "--weights", "w"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"logLik: {ref['logLik']:.4f}" in out
    code = main(["em", str(path), SLEEP, "--weights", "weight"])
    out, err = capsys.readouterr()
    assert code == 2 and "weight" in err and out == ""
