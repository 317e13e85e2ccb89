"""Predictions, predictive groups and leave-one-out.

The distributional checks use exact identities: given a posterior draw, a new group's
coefficient and the level-1 noise are fresh normal draws, so standardised by that draw's
SDs they are i.i.d. N(0, 1) whatever the posterior. Each is tested with a Kolmogorov-Smirnov
test at level 0.001 (false alarm rate 1 in 1000 per test; the seeds are fixed, so a run is
reproducible).
"""

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import bayeshlm as bh

KS_LEVEL = 1e-3


@pytest.fixture(scope="module")
def sleep():
    df = bh.load_dataset("sleepstudy")
    model = bh.hlm("reaction ~ days + (days | subject)", df)
    post = bh.sample(model, chains=2, draws=500, warmup=300, seed=11, progress=False)
    return df, model, post


def _flat(da):
    return da.transpose("chain", "draw", ...).values.reshape(-1, *da.shape[2:])


def _parts(post, subject):
    p = post.posterior
    a = _flat(p["fixed"])
    b = _flat(p["subject_effect"].sel(subject=subject))
    return a, b, _flat(p["sigma"]), _flat(p["subject_sd"]), _flat(p["subject_corr"])[:, 0]


def test_existing_group_uses_its_own_coefficients(sleep):
    _, model, post = sleep
    new = pd.DataFrame({"days": [0.0, 4.5, 9.0], "subject": ["308", "308", "335"]})
    mean = _flat(bh.predict(model, post, new, kind="mean"))
    for i, (days, subject) in enumerate(zip(new["days"], new["subject"], strict=True)):
        a, b, *_ = _parts(post, subject)
        np.testing.assert_allclose(mean[:, i], a[:, 0] + b[:, 0] + days * (a[:, 1] + b[:, 1]), rtol=1e-12)
    draws = _flat(bh.predict(model, post, new, seed=3))
    a, b, sigma, *_ = _parts(post, "308")
    z = (draws[:, 1] - (a[:, 0] + b[:, 0] + 4.5 * (a[:, 1] + b[:, 1]))) / sigma
    assert stats.kstest(z, "norm").pvalue > KS_LEVEL


def test_new_group_spread_reflects_the_group_covariance(sleep):
    _, model, post = sleep
    new = pd.DataFrame({"days": [0.0, 9.0], "subject": ["new", "new"]})
    mean = _flat(bh.predict(model, post, new, kind="mean", seed=5))
    pred = _flat(bh.predict(model, post, new, seed=5))
    a, _, sigma, sd, rho = _parts(post, "308")
    # day 0: the new intercept alone; day 9: intercept + 9 slope, variance sd0^2 + 81 sd1^2 + 18 rho sd0 sd1
    z0 = (mean[:, 0] - a[:, 0]) / sd[:, 0]
    v9 = sd[:, 0] ** 2 + 81 * sd[:, 1] ** 2 + 18 * rho * sd[:, 0] * sd[:, 1]
    z9 = (mean[:, 1] - a[:, 0] - 9 * a[:, 1]) / np.sqrt(v9)
    zp = (pred[:, 0] - a[:, 0]) / np.sqrt(sd[:, 0] ** 2 + sigma ** 2)
    for z in (z0, z9, zp):
        assert stats.kstest(z, "norm").pvalue > KS_LEVEL
    # one new group: both rows share its coefficients (their difference is 9 x its slope)
    slope = (mean[:, 1] - mean[:, 0]) / 9 - a[:, 1]
    assert stats.kstest(slope / sd[:, 1], "norm").pvalue > KS_LEVEL
    # the spread of a new group is wider than that of a known one, and the population
    # prediction drops the between-group part
    known = _flat(bh.predict(model, post, new.assign(subject="308"), kind="mean"))
    population = _flat(bh.predict(model, post, new, kind="mean", new_groups="population"))
    np.testing.assert_allclose(population[:, 1], a[:, 0] + 9 * a[:, 1], rtol=1e-12)
    assert mean[:, 1].std() > 2 * known[:, 1].std()
    # a population-level prediction needs no placeholder group column; drawing a new group does
    bare = new.drop(columns="subject")
    np.testing.assert_array_equal(_flat(bh.predict(model, post, bare, kind="mean", new_groups="population")),
                                  population)
    with pytest.raises(bh.DataError, match="column 'subject'"):
        bh.predict(model, post, bare)
    with pytest.raises(ValueError, match="'subject' group 'new' is not in the fitted data"):
        bh.predict(model, post, new, new_groups="raise")


def test_predict_output_layout_and_bad_input(sleep):
    df, model, post = sleep
    new = pd.DataFrame({"days": [1.0, 2.0], "subject": ["308", "309"]}, index=[10, 20])
    out = bh.predict(model, post, new)
    assert out.name == "reaction" and out.dims == ("chain", "draw", "obs")
    assert list(out["obs"].values) == [10, 20] and out.shape == (2, 500, 2)
    with pytest.raises(bh.DataError, match="'days'"):
        bh.predict(model, post, new.drop(columns="days"))
    with pytest.raises(bh.DataError, match="column 'days'.*missing"):
        bh.predict(model, post, new.assign(days=[1.0, np.nan]))
    with pytest.raises(ValueError, match="kind must be"):
        bh.predict(model, post, new, kind="median")
    no_groups = bh.sample(model, chains=1, draws=50, warmup=50, seed=1, progress=False, keep_group_draws=False)
    with pytest.raises(ValueError, match="keep_group_draws=True"):
        bh.predict(model, no_groups, new)
    some = bh.sample(model, chains=1, draws=50, warmup=50, seed=1, progress=False, keep_group_draws=2)
    bh.predict(model, some, new.iloc[:1].assign(subject="308"))  # a kept group
    with pytest.raises(ValueError, match="group '372' were not kept"):
        bh.predict(model, some, new.iloc[:1].assign(subject="372"))


def test_posterior_predictive_group(sleep):
    _, model, post = sleep
    tree = bh.posterior_predictive(model, post, seed=2)
    rep = tree.posterior_predictive["reaction"]
    assert rep.dims == ("chain", "draw", "obs")
    assert rep.sizes["obs"] == tree.observed_data["reaction"].sizes["obs"] == 180
    assert "posterior_predictive" not in post.children  # the input is not modified
    p = post.posterior
    a, sigma = _flat(p["fixed"]), _flat(p["sigma"])
    b = _flat(p["subject_effect"])
    idx, x = model.design.group_idx, model.design.F[:, 1]
    mean = a[:, [0]] + b[:, idx, 0] + x * (a[:, [1]] + b[:, idx, 1])
    z = ((_flat(rep) - mean) / sigma[:, None]).ravel()
    assert stats.kstest(z[::7], "norm").pvalue > KS_LEVEL
    # the fitted model reproduces the spread of the data: the observed SD is inside the
    # central 99% of the replicated SDs
    rep_sd = _flat(rep).std(axis=1)
    assert np.quantile(rep_sd, 0.005) < model.design.y.std() < np.quantile(rep_sd, 0.995)


def test_prior_predictive_draws_the_priors(sleep):
    _, model, _ = sleep
    tree = bh.prior_predictive(model, 1000, seed=4)
    assert set(tree.children) == {"prior", "prior_predictive", "observed_data"}
    prior = model.prior_spec["fixed[days]"]
    draws = tree.prior["fixed"].sel(fixed_term="days").values.ravel()
    assert stats.kstest(draws, stats.norm(prior.mu, prior.sigma).cdf).pvalue > KS_LEVEL
    assert tree.prior_predictive["reaction"].shape == (1, 1000, 180)
    assert tree.prior["subject_effect"].shape == (1, 1000, 18, 2)
    flat = model.with_data(bh.load_dataset("sleepstudy"), priors={"fixed": bh.Flat()})
    with pytest.raises(ValueError, match=r"fixed\[Intercept\] is Flat\(\): draws from the prior need proper"):
        bh.prior_predictive(flat, 10, seed=1)


def test_marginal_group_log_likelihood_matches_the_multivariate_normal(sleep):
    _, model, post = sleep
    ll = bh.marginal_group_log_likelihood(model, post, chunk=7)
    p = post.posterior
    for c, s, j in [(0, 3, 0), (1, 499, 17), (0, 250, 9)]:
        a, sig = p["fixed"].values[c, s], float(p["sigma"].values[c, s])
        sd, r = p["subject_sd"].values[c, s], float(p["subject_corr"].values[c, s, 0])
        T = np.array([[sd[0] ** 2, r * sd[0] * sd[1]], [r * sd[0] * sd[1], sd[1] ** 2]])
        rows = model.design.group_idx == j
        F, X = model.design.F[rows], model.design.X[rows]
        cov = sig ** 2 * np.eye(rows.sum()) + X @ T @ X.T
        expected = stats.multivariate_normal(F @ a, cov).logpdf(model.design.y[rows])
        np.testing.assert_allclose(ll[c, s, j], expected, rtol=1e-10)


def test_marginal_group_log_likelihood_known_variances_and_nested():
    schools = bh.load_dataset("eight_schools")
    model = bh.hlm("y ~ 1 + (1 | school)", schools, known_sd="sigma")
    post = bh.sample(model, chains=1, draws=40, warmup=40, seed=3, progress=False)
    ll = bh.marginal_group_log_likelihood(model, post)
    mu = post.posterior["fixed"].values[0, :, 0]
    tau = post.posterior["school_sd"].values[0, :, 0]
    expected = stats.norm.logpdf(schools["y"].values[None, :], mu[:, None],
                                 np.sqrt(schools["sigma"].values[None, :] ** 2 + tau[:, None] ** 2))
    np.testing.assert_allclose(ll[0], expected, rtol=1e-10)

    df = bh.simulate_nested(levels=(("district", 4), ("school", 3)), rows=(3, 6), seed=2)
    nested = bh.hlm("y ~ x + (1 | district) + (x | district:school)", df)
    npost = bh.sample(nested, chains=1, draws=30, warmup=30, seed=4, progress=False)
    ll = bh.marginal_group_log_likelihood(nested, npost)
    p = npost.posterior
    design = nested.design
    s = 17
    j = 5
    rows = design.group_idx == j
    district = design.parents[0][j]
    sd = p["district_school_sd"].values[0, s]
    r = float(p["district_school_corr"].values[0, s, 0])
    T = np.array([[sd[0] ** 2, r * sd[0] * sd[1]], [r * sd[0] * sd[1], sd[1] ** 2]])
    u = p["district_effect"].values[0, s, district, 0]
    mean = design.F[rows] @ p["fixed"].values[0, s] + u
    X = design.X[rows][:, :2]
    cov = float(p["sigma"].values[0, s]) ** 2 * np.eye(rows.sum()) + X @ T @ X.T
    np.testing.assert_allclose(ll[0, s, j], stats.multivariate_normal(mean, cov).logpdf(design.y[rows]), rtol=1e-10)
    # a whole district left out, its schools with it (tests/test_logo_levels.py checks the likelihood)
    districts = nested.design.factor_labels[nested.design.factors.index("district")]
    assert bh.loo(nested, npost, by="district").n_data_points == len(districts)


def test_loo_by_observation_and_by_group(sleep):
    import arviz as az

    df, model, post = sleep
    intercepts = bh.hlm("reaction ~ days + (1 | subject)", df)
    post0 = bh.sample(intercepts, chains=2, draws=500, warmup=300, seed=12, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pareto k warnings of a few influential subjects
        by_obs = bh.loo(post)
        by_group = bh.loo(model, post, by="subject")
        table = az.compare({"slopes": bh.group_log_likelihood(model, post),
                            "intercepts": bh.group_log_likelihood(intercepts, post0)})
    assert np.isfinite(by_obs.elpd) and by_obs.n_data_points == 180
    assert np.isfinite(by_group.elpd) and by_group.n_data_points == 18
    # integrating out the left-out subject's own coefficients keeps the importance weights
    # usable for most subjects
    assert np.mean(np.asarray(by_group.pareto_k) <= 0.7) >= 0.8
    # random slopes predict new subjects better (lme4's likelihood-ratio test agrees)
    assert table.index[0] == "slopes"
    with pytest.raises(ValueError, match="needs the model"):
        bh.loo(post, by="subject")


def test_predict_refuses_what_it_cannot_predict(sleep):
    df, model, post = sleep
    with pytest.raises(ValueError, match="known_sd / known_var are for models with known level-1 variances"):
        bh.predict(model, post, pd.DataFrame({"days": [1.0], "subject": ["308"]}), known_sd=[1.0])
    arms = df.assign(arm=np.array(["a", "b", "c"])[np.arange(len(df)) % 3])
    with_arm = bh.hlm("reaction ~ days + arm + (1 | subject)", arms)
    arm_post = bh.sample(with_arm, chains=1, draws=30, warmup=30, seed=1, progress=False)
    ok = bh.predict(with_arm, arm_post, pd.DataFrame({"days": [1.0], "subject": ["308"], "arm": ["c"]}))
    assert ok.shape == (1, 30, 1)
    with pytest.raises(bh.DataError, match="fixed part"):  # an unseen level is not the reference level
        bh.predict(with_arm, arm_post, pd.DataFrame({"days": [1.0], "subject": ["308"], "arm": ["zz"]}))
    # without group draws, only new groups can be predicted
    bare = bh.sample(model, chains=1, draws=30, warmup=30, seed=1, progress=False, keep_group_draws=False)
    new = bh.predict(model, bare, pd.DataFrame({"days": [0.0], "subject": ["nobody"]}), kind="mean", seed=1)
    assert np.isfinite(new.values).all()
    # leave-one-observation-out needs the pointwise log-likelihood
    grouped = bh.sample(model, chains=1, draws=30, warmup=30, seed=1, progress=False, log_likelihood="group")
    with pytest.raises(ValueError, match="pointwise log-likelihood"):
        bh.loo(grouped)


def test_predict_checks_the_nesting_of_known_groups():
    df = bh.simulate_nested(levels=(("district", 4), ("school", 3)), rows=(3, 6), seed=2)
    df["sch"] = df["district"] + "-" + df["school"]  # labels unique on their own
    model = bh.hlm("y ~ x + (1 | district) + (1 | sch)", df)
    post = bh.sample(model, chains=1, draws=30, warmup=30, seed=4, progress=False)
    row = df.iloc[[0]].copy()
    assert bh.predict(model, post, row).shape == (1, 30, 1)
    other = next(d for d in df["district"].unique() if d != row["district"].iloc[0])
    with pytest.raises(bh.DataError, match=f"'sch' group '{row['sch'].iloc[0]}' in 'district' group '{other}'"):
        bh.predict(model, post, row.assign(district=other))
    # a new school in a known district: the district's draws plus a new school intercept
    new = row.assign(sch="a new school")
    mean = _flat(bh.predict(model, post, new, kind="mean", seed=1))[:, 0]
    p = post.posterior
    base = _flat(p["fixed"]) @ np.array([1.0, row["x"].iloc[0]]) + _flat(
        p["district_effect"].sel(district=row["district"].iloc[0]))[:, 0]
    z = (mean - base) / _flat(p["sch_sd"])[:, 0]
    assert stats.kstest(z, "norm").pvalue > KS_LEVEL
    # the school column left out of a population-level prediction: the district's own draws, no school
    bare = row.drop(columns="sch")
    pop = _flat(bh.predict(model, post, bare, kind="mean", new_groups="population"))[:, 0]
    np.testing.assert_allclose(pop, base, rtol=1e-12)


def test_prior_group_has_the_posterior_layout(sleep):
    _, model, post = sleep
    prior = bh.prior_predictive(model, 50, seed=1).prior
    for name in ("fixed", "sigma", "subject_sd", "subject_corr", "subject_effect"):
        assert prior[name].dims == post.posterior[name].dims
    assert list(prior["subject_corr_pair"].values) == list(post.posterior["subject_corr_pair"].values)


def test_float_group_labels_match_in_any_subset_of_rows():
    df = bh.load_dataset("sleepstudy")
    codes = {s: c for c, s in enumerate(df["subject"].unique())}
    df = df.assign(g=df["subject"].map(codes).astype(float) + np.where(df["subject"] == "308", 0.5, 0.0))
    model = bh.hlm("reaction ~ days + (1 | g)", df)
    assert "0.5" in list(model.design.group_labels) and "1" in list(model.design.group_labels)
    post = bh.sample(model, chains=1, draws=30, warmup=30, seed=2, progress=False)
    mean = _flat(bh.predict(model, post, pd.DataFrame({"days": [0.0], "g": [1.0]}), kind="mean", new_groups="raise"))
    a = _flat(post.posterior["fixed"])[:, 0]
    np.testing.assert_allclose(mean[:, 0], a + _flat(post.posterior["g_effect"].sel(g="1"))[:, 0], rtol=1e-12)
