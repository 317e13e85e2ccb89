"""Posterior sampling of binary, binomial and count outcomes: what the chains store, and the tools downstream.

The sampler's correctness is tested statistically in ``tests/statistical/test_sbc_glmm.py``
(simulation-based calibration) and ``tests/statistical/test_geweke.py`` (the augmentation
steps); here: the log-likelihood the chains store against a direct computation, agreement
with the maximum-likelihood fit where the data are informative, predictions on the response
scale, and what is refused.
"""

import json

import numpy as np
import pytest
from scipy.special import expit, gammaln, ndtr

import bayeshlm as bh
from bayeshlm.results import flat_draws

CBPP = "cbind(incidence, size - incidence) ~ C(period) + (1 | herd)"
CONTRACEPTION = "use ~ age + I(age**2) + urban + livch + (1 | district)"
TICKS = "ticks ~ C(year) + cheight + (1 | location/brood)"


def _ticks():
    data = bh.load_dataset("grouseticks")
    data["cheight"] = data["height"] - data["height"].mean()
    return data


@pytest.fixture(scope="module")
def cbpp():
    data = bh.load_dataset("cbpp")
    model = bh.hlm(CBPP, data, family="binomial")
    post = bh.sample(model, draws=300, warmup=300, chains=2, seed=5, progress=False)
    return data, model, post


def _binomial_loglik(post, model, link=expit):
    """Each row's binomial log-likelihood at every draw, from the stored draws (user units)."""
    design = model.design
    a = flat_draws(post.posterior["fixed"])
    b = flat_draws(post.posterior["herd_effect"])[:, :, 0]
    eta = a @ design.F.T + b[:, design.group_idx]
    p = link(eta)
    y, n = design.y, model.trials
    const = gammaln(n + 1) - gammaln(y + 1) - gammaln(n - y + 1)
    return const + y * np.log(p) + (n - y) * np.log1p(-p)


def test_stored_log_likelihood_is_the_binomial_one(cbpp):
    """The chains' pointwise values equal the binomial log-likelihood at the stored draws; lp is their sum."""
    _, model, post = cbpp
    direct = _binomial_loglik(post, model)
    stored = flat_draws(post.log_likelihood["incidence"])
    np.testing.assert_allclose(stored, direct, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(flat_draws(post.sample_stats["lp"]), direct.sum(axis=1), rtol=1e-9)
    assert post.attrs["log_likelihood"] == "pointwise"
    loo = bh.loo(post)
    assert np.isfinite(loo.elpd)


def test_group_log_likelihood_sums_the_rows_of_each_group():
    data = bh.load_dataset("cbpp")
    model = bh.hlm(CBPP, data, family="binomial")
    pointwise = bh.sample(model, draws=50, warmup=50, chains=2, seed=1, progress=False)
    grouped = bh.sample(model, draws=50, warmup=50, chains=2, seed=1, progress=False, log_likelihood="group")
    rows = flat_draws(pointwise.log_likelihood["incidence"])
    by_group = np.stack([rows[:, model.design.group_idx == j].sum(axis=1) for j in range(model.n_groups)], axis=1)
    np.testing.assert_allclose(flat_draws(grouped.log_likelihood["incidence"]), by_group, rtol=1e-12)


def test_draws_do_not_depend_on_the_threads():
    model = bh.hlm(CBPP, bh.load_dataset("cbpp"), family="binomial")
    one = bh.sample(model, draws=40, warmup=40, chains=2, seed=9, progress=False, n_threads=1)
    two = bh.sample(model, draws=40, warmup=40, chains=2, seed=9, progress=False, n_threads=2)
    np.testing.assert_array_equal(one.posterior["fixed"].values, two.posterior["fixed"].values)
    np.testing.assert_array_equal(one.posterior["herd_effect"].values, two.posterior["herd_effect"].values)


@pytest.mark.parametrize("link", ["logit", "probit"])
def test_posterior_agrees_with_the_quadrature_fit_on_informative_data(link):
    """Contraception (1,934 women in 60 districts): posterior means of the fixed effects near the ML estimates.

    With this much data the posterior mean and the maximum-likelihood estimate differ by a
    small fraction of a posterior SD (the priors are weak); the tolerance, 0.25 SD, is ten
    times the Monte Carlo error of the means (4 x 500 draws, bulk ESS above 600 in trials).
    """
    model = bh.hlm(CONTRACEPTION, bh.load_dataset("contraception"), family="bernoulli", link=link)
    fit = bh.fit_em(model, n_agq=9)
    post = bh.sample(model, draws=500, warmup=500, chains=4, seed=2, progress=False, log_likelihood=False)
    _agrees_with_ml(post, fit)
    tau = post.posterior["district_sd"].values.ravel()
    assert np.quantile(tau, 0.05) < fit.sd["Intercept"] < np.quantile(tau, 0.95)


def test_probit_log_likelihood_uses_the_normal_cdf():
    data = bh.load_dataset("cbpp")
    model = bh.hlm(CBPP, data, family="binomial", link="probit")
    post = bh.sample(model, draws=30, warmup=30, chains=2, seed=4, progress=False)
    np.testing.assert_allclose(flat_draws(post.log_likelihood["incidence"]), _binomial_loglik(post, model, ndtr),
                               rtol=1e-9, atol=1e-9)


def test_predictions_on_the_response_scale(cbpp):
    data, model, post = cbpp
    new = data.head(3).copy()
    new["herd"] = ["1", "2", "a new herd"]
    link = bh.predict(model, post, new, kind="link", seed=1)
    mean = bh.predict(model, post, new, kind="mean", seed=1)
    np.testing.assert_allclose(mean.values, expit(link.values), rtol=1e-12)  # the same new-herd draws
    # an existing herd: its own coefficient, row by row
    a = post.posterior["fixed"].values
    b = post.posterior["herd_effect"].sel(herd="1").values[..., 0]
    F = model.design.F[:1]
    np.testing.assert_allclose(link.values[..., 0], (a @ F.T)[..., 0] + b, rtol=1e-12)
    draws = bh.predict(model, post, new, trials="size", seed=2)
    assert np.all(draws.values <= new["size"].to_numpy()) and np.all(draws.values >= 0)
    assert np.all(draws.values == np.round(draws.values))
    one = bh.predict(model, post, new, seed=2)  # one trial: 0 or 1
    assert set(np.unique(one.values)) <= {0.0, 1.0}
    # the new herd's predictive spread includes the herds' variation
    assert float(link.isel(obs=2).std()) > float(link.isel(obs=0).std())
    with pytest.raises(ValueError, match="known_sd"):
        bh.predict(model, post, new, known_sd=[1.0, 1.0, 1.0])


def test_replicated_data_are_binomial_counts(cbpp):
    data, model, post = cbpp
    rep = bh.posterior_predictive(model, post, seed=3).posterior_predictive["incidence"].values
    assert np.all(rep <= data["size"].to_numpy()) and np.all(rep == np.round(rep))
    # the replications centre on the observed incidence: a posterior predictive check of the mean
    assert abs(rep.mean() - data["incidence"].mean()) < 0.2


def test_report_save_load_and_comparison(cbpp, tmp_path):
    _, model, post = cbpp
    rep = bh.report(post)
    text = str(rep)
    assert "binomial level 1, logit link" in text
    # the intraclass correlation on the latent scale: the logistic error's variance pi^2 / 3 at level 1
    assert "Intraclass correlation on the latent scale" in text
    tau2 = post.posterior["herd_sd"].values.ravel() ** 2
    assert abs(rep.icc["icc"].iloc[0] - np.mean(tau2 / (tau2 + np.pi**2 / 3))) < 1e-12
    path = bh.save(post, tmp_path / "cbpp.nc")
    again = bh.load(path)
    np.testing.assert_array_equal(again.posterior["fixed"].values, post.posterior["fixed"].values)
    fit = bh.fit_em(model)
    table = bh.compare(post, fit)
    assert "sigma" not in table.index
    shrink = bh.shrinkage_table(post, fit, model=model)
    assert shrink["ols"].isna().all()  # least squares of counts is no estimate on the logit scale
    assert np.corrcoef(shrink["eb"], shrink["post_mean"])[0, 1] > 0.95


def test_what_is_refused(cbpp):
    data, model, post = cbpp
    with pytest.raises(NotImplementedError, match="marginal likelihood"):
        bh.marginal_likelihood(model, post)
    with pytest.raises(NotImplementedError, match="integrated out"):
        bh.loo(model, post, by="herd")


def test_crossed_factors():
    """Subjects x items with a 0/1 response: the posterior of the SDs covers the values the data were drawn with."""
    rng = np.random.default_rng(0)
    s, i = np.meshgrid(np.arange(60), np.arange(20), indexing="ij")
    s, i = s.ravel(), i.ravel()
    eta = -0.3 + 1.0 * rng.normal(size=60)[s] + 0.6 * rng.normal(size=20)[i]
    data = {"y": rng.binomial(1, expit(eta)).astype(float), "subject": s.astype(str), "item": i.astype(str)}
    model = bh.hlm("y ~ 1 + (1 | subject) + (1 | item)", data, family="bernoulli")
    post = bh.sample(model, draws=500, warmup=300, chains=2, seed=1, progress=False, log_likelihood=False)
    fit = bh.fit_em(model)
    for name, coef in (("subject_sd", "Intercept|subject"), ("item_sd", "Intercept|item")):
        draws = post.posterior[name].values.ravel()
        assert np.quantile(draws, 0.02) < fit.sd[coef] < np.quantile(draws, 0.98), (name, fit.sd)
    with pytest.raises(ValueError, match="blocked"):
        bh.sample(model, method="blocked")


@pytest.fixture(scope="module")
def ticks():
    data = _ticks()
    model = bh.hlm(TICKS, data, family="poisson")
    post = bh.sample(model, draws=500, warmup=500, chains=4, seed=3, progress=False)
    return data, model, post


def _agrees_with_ml(post, fit, compared=None, tol=0.25):
    """Posterior means of the fixed effects within ``tol`` posterior SDs of the ML estimates.

    ``compared``: ``{ML name: (posterior name, factor)}``, the posterior's coefficient times
    ``factor`` being the ML one's (other units); default every fixed effect, as it is.
    """
    draws = post.posterior["fixed"]
    mean, sd = draws.mean(("chain", "draw")), draws.std(("chain", "draw"))
    compared = {name: (name, 1.0) for name in fit.fixed} if compared is None else compared
    for name, (target, k) in compared.items():
        z = float((mean.sel(fixed_term=target) * k - fit.fixed[name]) / (sd.sel(fixed_term=target) * k))
        assert abs(z) < tol, (name, z)


def test_count_posterior_agrees_with_the_laplace_fit(ticks):
    """grouseticks (403 chicks, 118 broods in 63 locations): posterior means near glmer's estimates.

    The tolerance, 0.25 posterior SD, is about six times the Monte Carlo error of the means
    (4 x 500 draws, bulk ESS above 1000 for the fixed effects in trials); the SDs' ML
    estimates lie inside their posterior's central 90%.
    """
    _, model, post = ticks
    fit = bh.fit_em(model)
    _agrees_with_ml(post, fit)
    for name, coef in (("location_brood_sd", "Intercept|location:brood"), ("location_sd", "Intercept|location")):
        draws = post.posterior[name].values.ravel()
        assert np.quantile(draws, 0.05) < fit.sd[coef] < np.quantile(draws, 0.95), (name, fit.sd)
    # the share of corrected proposals accepted (the mixture of normals is close to the truth)
    assert json.loads(post.attrs["sampler"])["coefficient_acceptance"] > 0.5


def test_stored_log_likelihood_is_the_poisson_one(ticks):
    """Each row's stored value is the Poisson log-likelihood at the draw's linear predictor."""
    data, model, post = ticks
    eta = bh.predict(model, post, data, kind="link", seed=0).values  # existing groups: no new draws
    y = data["ticks"].to_numpy(dtype=float)
    direct = y * eta - np.exp(eta) - gammaln(y + 1.0)
    stored = post.log_likelihood["ticks"].values
    np.testing.assert_allclose(stored, direct, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(post.sample_stats["lp"].values, direct.sum(axis=-1), rtol=1e-8)
    rep = bh.posterior_predictive(model, post, seed=3).posterior_predictive["ticks"].values
    assert np.all(rep >= 0) and np.all(rep == np.round(rep))
    assert abs(rep.mean() / y.mean() - 1.0) < 0.05


@pytest.mark.parametrize("family", ["poisson", "bernoulli"])
def test_sampler_does_not_depend_on_the_units_of_a_predictor(family):
    """A predictor in other units and far from zero gives the same posterior, rescaled.

    Height in hundredths plus 1e6 (counts), age plus 2015 years (0/1): the coefficients
    against the ML fit of the model in the original units, within 0.3 posterior SD (about
    six times the Monte Carlo error of the means).
    """
    if family == "poisson":
        data = _ticks()
        data["h"] = data["height"] * 100.0 + 1e6
        model = bh.hlm("ticks ~ C(year) + h + (1 | location/brood)", data, family="poisson")
        fit = bh.fit_em(bh.hlm(TICKS, data, family="poisson"))
        compared = {"cheight": ("h", 100.0), "C(year)[T.96]": ("C(year)[T.96]", 1.0),
                    "C(year)[T.97]": ("C(year)[T.97]", 1.0)}
    else:
        data = bh.load_dataset("contraception")
        data["year"] = data["age"] + 2015.0
        model = bh.hlm("use ~ year + I(age**2) + urban + livch + (1 | district)", data, family="bernoulli")
        fit = bh.fit_em(bh.hlm(CONTRACEPTION, data, family="bernoulli"))
        compared = {"age": ("year", 1.0), "urban": ("urban", 1.0), "livch[T.1]": ("livch[T.1]", 1.0)}
    post = bh.sample(model, draws=400, warmup=400, chains=4, seed=7, progress=False, log_likelihood=False)
    _agrees_with_ml(post, fit, compared, tol=0.3)


def test_the_chains_get_writable_rows_from_read_only_data():
    """pandas can hand out read-only arrays; a chain given one would be compiled again, for another type."""
    import numba

    from bayeshlm.sample import augmentations

    data = bh.load_dataset("cbpp")
    model = bh.hlm(CBPP, data, family="binomial")
    writable = numba.typeof(augmentations(model, 1, 0)[0])  # before the arrays it may share are locked
    for name in ("y", "F", "X", "n", "offset", "gidx"):
        arr = getattr(model.design, {"gidx": "group_idx"}.get(name, name), None)
        if isinstance(arr, np.ndarray):
            arr.setflags(write=False)
    locked = augmentations(model, 1, 0)[0]
    assert not model.design.y.flags.writeable
    assert all(getattr(locked, f).flags.writeable for f in ("y", "F", "X", "n", "offset", "gidx"))
    assert numba.typeof(locked) == writable
