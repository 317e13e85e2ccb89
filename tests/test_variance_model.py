"""A log-linear model of the level-1 variance, ``hlm(..., sigma="~ z")``.

docs/design.md, "Heterogeneous level-1 variance".

References: nlme's ``lme(..., weights = varIdent(form = ~ 1 | f))`` and ``varExp(form = ~ x)``
fits in tests/golden/variance_model.json, made by tests/golden/variance_model.R with the
columns made there by the same rules as :func:`_data` here. The rest are identities: the
profiled fit against a direct weighted fit at its ``delta``, ``delta = 0`` against the model
without ``sigma=``, shifted and scaled data.

Measured against nlme 3.1-162 (tight ``lmeControl``): the log-likelihoods agree to 4e-13
relative and ours is never lower (higher by 1e-12 to 3.4e-10); the fixed effects to 5e-7,
their SEs to 1.2e-6, sigma to 1.8e-6, ``delta`` (from the SD ratio or ``t``) to 6.2e-6 and
the SDs to 9.9e-6 relative (HSB's slope SD under ML, the flattest direction). The
correlations of the random effects differ by up to 2.6e-4 relative (5e-6 absolute: they are
near zero and flat in the likelihood). Our log-likelihood at nlme's estimates equals nlme's to 1e-12 relative, so the
functions are the same and the differences are where nlme's optimiser stops. nlme's
approximate intervals of the variance function (``intervals``, from its numerical ``apVar``)
imply standard errors of ``delta`` within 1.1% of ours.
"""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import norm

import bayeshlm as bh
from bayeshlm.em import loglik_at
from bayeshlm.model import model_at_variance

GOLDEN = json.loads((Path(__file__).parent / "golden" / "variance_model.json").read_text())
HSB = "mathach ~ ses_centered * sector + meanses + (ses_centered | school)"
SLEEP = "reaction ~ days + (days | subject)"
CASES = {  # golden model: (data set, formula, sigma=)
    "hsb_ident": ("hsb", HSB, "~ C(sector)"),
    "sleepstudy_ident": ("sleepstudy", SLEEP, "~ C(late)"),
    "sleepstudy_exp": ("sleepstudy", SLEEP, "~ days"),
}


def _data(name):
    """A bundled data set with the columns of tests/golden/variance_model.R (``late``: days >= 5)."""
    d = bh.load_dataset(name)
    if name == "sleepstudy":
        d["late"] = (d["days"] >= 5).astype(int)
    return d


def _key(term):
    return term.replace("(Intercept)", "Intercept")


def _rel(mine, ref):
    return abs(mine - ref) / abs(ref)


@pytest.fixture(scope="module")
def fits():
    out = {}
    for key, (name, formula, sigma) in CASES.items():
        model = bh.hlm(formula, _data(name), sigma=sigma)
        out[key] = (model, {m: bh.fit_em(model, m.lower()) for m in ("REML", "ML")})
    return out


def _nlme_delta(key, ref):
    (value,) = ref["varfunc"].values()
    return 2 * np.log(value) if key.endswith("ident") else 2 * value


@pytest.mark.parametrize("method", ["REML", "ML"])
@pytest.mark.parametrize("key", list(CASES))
def test_agrees_with_nlme(fits, key, method):
    model, by_method = fits[key]
    fit, ref = by_method[method], GOLDEN["models"][key]["fits"][method]
    assert fit.converged
    assert _rel(fit.loglik, ref["logLik"]) < 1e-12
    assert fit.loglik >= ref["logLik"] - 1e-9  # nlme's optimum is never above ours
    assert _rel(fit.sigma, ref["sigma"]) < 1e-5
    for name, value in ref["fixef"].items():
        assert _rel(fit.fixed[_key(name)], value) < 1e-5
        assert _rel(fit.fixed_se[_key(name)], ref["fixef_se"][name]) < 1e-5
    for name, value in ref["random"]["sd"].items():
        assert _rel(fit.sd[_key(name)], value) < 1e-5
    ((_, r),) = ref["random"]["cor"].items()
    (corr,) = fit.corr.values()
    assert abs(corr - r) < 1e-5 and _rel(corr, r) < 5e-4  # near zero and flat: see the module's notes
    (delta,) = fit.variance_model["delta"].values()
    assert _rel(delta, _nlme_delta(key, ref)) < 1e-5
    if key.endswith("ident"):
        (ratio,) = fit.variance_model["sd_ratio"].values()
        assert _rel(ratio, ref["varfunc"]["1"]) < 1e-5
    else:
        assert fit.variance_model["sd_ratio"] == {}
    interval = (ref.get("varfunc_interval") or {}).get("1" if key.endswith("ident") else "expon")
    if interval is not None:  # nlme's approximate interval: log scale for varIdent, natural for varExp
        lo, hi = (np.log(interval["lower"]), np.log(interval["upper"])) if key.endswith("ident") else \
            (interval["lower"], interval["upper"])
        se_nlme = 2 * (hi - lo) / (2 * norm.ppf(0.975))
        (se,) = fit.variance_model["delta_se"].values()
        assert _rel(se, se_nlme) < 0.015


@pytest.mark.parametrize("method", ["REML", "ML"])
def test_loglik_at_nlme_estimates_is_nlme_loglik(fits, method):
    """The same function: the differences of the estimates are where nlme's optimiser stops."""
    key = "sleepstudy_ident"
    model, by_method = fits[key]
    ref = GOLDEN["models"][key]["fits"][method]
    vd = model.variance_design
    delta_n = np.array([_nlme_delta(key, ref)]) * vd.scale
    sd = np.array([ref["random"]["sd"]["(Intercept)"], ref["random"]["sd"]["days"]])
    (r,) = ref["random"]["cor"].values()
    cov = np.outer(sd, sd) * np.array([[1.0, r], [r, 1.0]])
    sigma_n = ref["sigma"] * np.exp(-0.5 * vd.log_sigma2_shift(delta_n))
    value = loglik_at(model_at_variance(model, delta_n), sigma_n, cov, method.lower())
    assert _rel(value, ref["logLik"]) < 1e-12
    assert by_method[method].loglik >= value


def test_profiled_fit_is_the_weighted_fit_at_its_delta(fits):
    """At the optimum's delta the fit is lme4-style weights w = exp(-z' delta), exactly."""
    model, by_method = fits["sleepstudy_exp"]
    data = _data("sleepstudy")
    for method, fit in by_method.items():
        (delta,) = fit.variance_model["delta"].values()
        data["w"] = np.exp(-delta * data["days"])
        direct = bh.fit_em(bh.hlm(SLEEP, data, weights="w"), method.lower())
        assert direct.loglik == pytest.approx(fit.loglik, rel=1e-13)
        assert direct.sigma == pytest.approx(fit.sigma, rel=1e-7)
        for name in fit.fixed:
            assert direct.fixed[name] == pytest.approx(fit.fixed[name], rel=1e-7)
            assert direct.fixed_se[name] == pytest.approx(fit.fixed_se[name], rel=1e-7)
        for name in fit.sd:
            assert direct.sd[name] == pytest.approx(fit.sd[name], rel=1e-6)
        assert fit.n_params == direct.n_params + 1
        # sigma's SE accounts for delta's uncertainty; the others may change only a little
        assert np.isfinite(fit.variance_se["sigma"])


def test_delta_zero_is_the_homoscedastic_model(fits):
    model, by_method = fits["hsb_ident"]
    at_zero = model_at_variance(model, np.zeros(1))
    plain = bh.hlm(HSB, _data("hsb"))
    for method in ("reml", "ml"):
        a, b = bh.fit_em(dataclasses.replace(at_zero, options=plain.options), method), bh.fit_em(plain, method)
        assert a.loglik == pytest.approx(b.loglik, rel=1e-13)
        assert a.sigma == pytest.approx(b.sigma, rel=1e-8)
        for name in b.fixed:
            assert a.fixed[name] == pytest.approx(b.fixed[name], rel=1e-8)
    # the likelihood-ratio statistic of sector's ratio is positive
    assert by_method["ML"].loglik > bh.fit_em(plain, "ml").loglik


def test_shifted_and_scaled_data(fits):
    """Response x1000 + 1e6 and z + 2015: the same fit; only sigma's reference moves with z's shift."""
    model, by_method = fits["sleepstudy_exp"]
    data = _data("sleepstudy")
    data["reaction"] = data["reaction"] * 1000 + 1e6
    data["year"] = data["days"] + 2015
    formula = SLEEP.replace("days +", "year +").replace("(days |", "(year |")
    moved = bh.fit_em(bh.hlm(formula, data, sigma="~ year"), "ml")
    fit = by_method["ML"]
    n = model.n_obs
    assert moved.loglik == pytest.approx(fit.loglik - n * np.log(1000), rel=1e-9)
    (delta,) = fit.variance_model["delta"].values()
    (delta_moved,) = moved.variance_model["delta"].values()
    assert delta_moved == pytest.approx(delta, rel=1e-6)
    assert moved.variance_model["delta_se"]["year"] == pytest.approx(fit.variance_model["delta_se"]["days"],
                                                                      rel=1e-4)
    # sigma is the SD at z = 0: year 0 is 2015 days before day 0
    assert moved.sigma == pytest.approx(1000 * fit.sigma * np.exp(-delta * 2015 / 2), rel=1e-5)
    assert moved.fixed["year"] == pytest.approx(1000 * fit.fixed["days"], rel=1e-6)
    assert moved.sd["year"] == pytest.approx(1000 * fit.sd["days"], rel=1e-5)


def test_weights_multiply(fits):
    """weights= and sigma= together: the row's variance is sigma^2 exp(z' delta) / w."""
    data = _data("sleepstudy")
    data["w"] = 1.0 + (data["days"] % 3)
    fit = bh.fit_em(bh.hlm(SLEEP, data, sigma="~ days", weights="w"), "ml")
    (delta,) = fit.variance_model["delta"].values()
    data["w2"] = data["w"] * np.exp(-delta * data["days"])
    direct = bh.fit_em(bh.hlm(SLEEP, data, weights="w2"), "ml")
    assert direct.loglik == pytest.approx(fit.loglik, rel=1e-13)
    assert direct.sigma == pytest.approx(fit.sigma, rel=1e-7)


def test_report_and_save(fits, tmp_path):
    model, by_method = fits["hsb_ident"]
    fit = by_method["REML"]
    text = fit.summary()
    assert "Level-1 variance" in text and "C(sector)[T.1]" in text and "sd_ratio" in text
    bh.save(fit, tmp_path / "fit.nc")
    back = bh.load(tmp_path / "fit.nc")
    assert back.variance_model == fit.variance_model
    assert model.identity()["sigma"] == "~ C(sector)"
    again = bh.model_from(fit, _data("hsb"))
    assert again.variance_design is not None and again.identity() == model.identity()


def test_errors():
    data = _data("sleepstudy")
    assert bh.hlm(SLEEP, data, sigma="~ days").variance_design.k == 1
    with pytest.raises(ValueError, match="intercept"):
        bh.hlm(SLEEP, data, sigma="~ 0 + days")
    with pytest.raises(ValueError, match="intercept"):
        bh.hlm(SLEEP, data, sigma="~ days - 1")
    with pytest.raises(ValueError, match="only an intercept"):
        bh.hlm(SLEEP, data, sigma="~ 1")
    # a "- 1" inside a transform is not the removal of the intercept
    shifted = bh.hlm(SLEEP, data.assign(x=data["days"] + 2.0), sigma="~ np.log(x - 1)")
    assert shifted.variance_design.names == ("np.log(x - 1)",)
    with pytest.raises(ValueError, match="one-sided"):
        bh.hlm(SLEEP, data, sigma="days")
    with pytest.raises(ValueError, match="constant"):
        bh.hlm(SLEEP, data.assign(c=3.0), sigma="~ c")
    bad = data.assign(z=data["days"].astype(float))
    bad.loc[3, "z"] = np.inf
    with pytest.raises(ValueError, match="finite|missing"):
        bh.hlm(SLEEP, bad, sigma="~ z")
    with pytest.raises(ValueError, match="known_sd"):
        bh.hlm(SLEEP, data.assign(s=1.0), known_sd="s", sigma="~ days")
    with pytest.raises(ValueError, match="Gaussian"):
        bh.hlm("y ~ days + (1 | subject)", data.assign(y=(data["days"] > 4).astype(int)), family="bernoulli",
               sigma="~ days")


def test_what_assumes_one_level_1_variance_refuses_such_a_model(fits):
    """Each function whose formula has a single sigma says so rather than answer for the reference row."""
    model, by_method = fits[next(iter(fits))]
    fit = by_method["REML"]
    for call in (lambda: bh.reliability(model, fit), lambda: bh.variance_partition(model, fit),
                 lambda: bh.lrt_hierarchy(model, fit), lambda: bh.t_tests(model, fit),
                 lambda: bh.t_tests(model, fit, ddf="kenward-roger"), lambda: bh.contrast_test(model, fit, np.eye(
                     len(model.fixed_names))[:1]), lambda: bh.marginal_means(model, fit)):
        with pytest.raises(NotImplementedError, match="sigma="):
            call()
    # z tests of the fixed effects need no derivative: they are given
    table = bh.t_tests(model, fit, ddf="normal")
    assert np.all(np.isinf(table["df"]))
