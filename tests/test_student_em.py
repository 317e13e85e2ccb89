"""fit_em with a Student-t level 1 (docs/design.md, "The Student-t ML and REML fit").

The default fit is the factorised (variational) EM: the weighted model's ML or REML fit
alternated with the rows' weights ``E[lambda_i]``. ``n_agq > 1`` gives the exact ML fit of
a model with one random coefficient per group by adaptive Gauss-Hermite quadrature. The
exact reference is ``tests/golden/student_t_exact.json`` (``student_t_exact.R``: R's
``integrate()`` of each subject's likelihood, maximised by ``optim``), for sleepstudy's
``reaction ~ days + (1 | subject)`` with ``nu = 4`` and with ``nu`` estimated.

Measured agreement of the exact fit with R: log-likelihoods to 2e-12 absolute, estimates
to 4e-10 relative, row weights to 3e-10, standard errors to 1.5e-5 relative (both
Hessians are differences).

Measured error of the factorised EM against the exact ML fit (ML, the same data):

* ``nu = 4``: fixed effects within 0.043 of their SE (intercept -0.010, days +0.043), their
  SEs within 0.8%; sigma 2.2% high (0.30 of its SE), tau 1.0% low (0.05 SE); the bound
  3.25 below the log-likelihood, the exact log-likelihood at the EM's estimates 0.046
  below its maximum; row weights within 0.066 of the exact ``E[lambda_i | y]``, the
  smallest weight on the same row (0.132 against 0.128).
* ``nu`` estimated: 7.04 against 4.50 (SE 1.85): the bound's gap grows as ``nu`` falls, so
  it favours larger ``nu``; sigma 9.7% high (0.87 SE) with it; fixed effects within 0.007
  SE, tau 1.4% low; the exact log-likelihood at the EM's estimates 0.48 below its maximum.
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import minimize
from scipy.stats import t as t_dist

import bayeshlm as bh
from bayeshlm.robust import bound_terms, expected_weights, model_at_weights, scaled_residuals, student_exact_loglik

GOLDEN_DIR = Path(__file__).parent / "golden"
FORMULA = "reaction ~ days + (1 | subject)"


@pytest.fixture(scope="module")
def sleep():
    return bh.load_dataset("sleepstudy")


@pytest.fixture(scope="module")
def exact():
    with open(GOLDEN_DIR / "student_t_exact.json", encoding="utf-8") as handle:
        return json.load(handle)


@pytest.fixture(scope="module")
def fits(sleep):
    """The factorised EM and the exact ML fits of sleepstudy's random intercept, nu fixed at 4 and estimated."""
    out = {}
    for key, nu in (("nu_fixed_4", 4), ("nu_estimated", None)):
        model = bh.hlm(FORMULA, sleep, family="student", nu=nu)
        out[key] = (model, bh.fit_em(model, "ml"), bh.fit_em(model, n_agq=40))
    return out


def test_a_row_with_a_known_residual_has_its_t_density_as_bound():
    nu, s2, w, r = 4.0, 2.3, 1.7, 1.9
    lam = expected_weights(nu, w * r * r / s2)
    bound = -0.5 * np.log(2 * np.pi * s2 / (w * lam)) - 0.5 * lam * w * r * r / s2 + bound_terms(nu, lam)
    assert bound == pytest.approx(t_dist.logpdf(r / np.sqrt(s2 / w), nu) - 0.5 * np.log(s2 / w), abs=1e-13)


@pytest.mark.parametrize("method", ["ml", "reml"])
def test_the_weights_see_each_rows_posterior_variance(sleep, method):
    """E[r_i^2] of the update against the joint posterior of (a, b) written out densely (measured: 4e-13).

    Given the weights, the weighted model's posterior of the group coefficients given the
    fixed effects (ML), or of both under a flat prior (REML).
    """
    model = bh.hlm("reaction ~ days + (days | subject)", sleep, family="student", nu=4)
    lam = np.random.default_rng(0).uniform(0.3, 1.2, model.n_obs)
    fit = bh.fit_em(model_at_weights(model, lam), method)
    design = model.design
    y, F, X, g = design.y, design.F, design.X, design.group_idx
    n_groups, d = 18, 2
    XtF = np.zeros((n_groups, d, F.shape[1]))
    np.add.at(XtF, g, lam[:, None, None] * X[:, :, None] * F[:, None, :])
    a = np.array([fit.fixed[k] for k in model.fixed_names])
    reml = method == "reml"
    u = scaled_residuals(y, F, X, np.ones(model.n_obs), g, a, fit.group_means, fit.group_cov, fit.sigma**2,
                         fit.vcov_fixed if reml else None, XtF if reml else None)
    # dense: C = [F, Z], the posterior precision of (a, b) with a flat prior on a
    Z = np.zeros((model.n_obs, n_groups * d))
    for i in range(model.n_obs):
        Z[i, g[i] * d:(g[i] + 1) * d] = X[i]
    sd, r = fit.sd, fit.corr["Intercept,days"]
    T = np.array([[sd["Intercept"] ** 2, r * sd["Intercept"] * sd["days"]],
                  [r * sd["Intercept"] * sd["days"], sd["days"] ** 2]])
    C = np.column_stack([F, Z])
    P = C.T @ (lam[:, None] * C) / fit.sigma**2
    P[2:, 2:] += np.kron(np.eye(n_groups), np.linalg.inv(T))
    S = np.linalg.inv(P)
    resid = y - C @ (S @ (C.T @ (lam * y)) / fit.sigma**2)
    var = np.einsum("ij,jk,ik->i", C, S, C) if reml else np.einsum("ij,jk,ik->i", Z, np.linalg.inv(P[2:, 2:]), Z)
    assert np.allclose(u, (resid**2 + var) / fit.sigma**2, rtol=1e-9, atol=0)


@pytest.mark.parametrize("method", ["ml", "reml"])
def test_very_large_nu_gives_the_gaussian_fit(sleep, method):
    formula = "reaction ~ days + (days | subject)"
    t_fit = bh.fit_em(bh.hlm(formula, sleep, family="student", nu=1e6), method)
    g_fit = bh.fit_em(bh.hlm(formula, sleep), method)
    assert t_fit.converged, t_fit.message
    assert t_fit.method == method
    for k in g_fit.fixed:
        assert abs(t_fit.fixed[k] - g_fit.fixed[k]) <= 1e-5 * g_fit.fixed_se[k], k
        assert t_fit.fixed_se[k] == pytest.approx(g_fit.fixed_se[k], rel=1e-5), k
        assert t_fit.robust_se[k] == pytest.approx(g_fit.robust_se[k], rel=1e-5), k
    assert t_fit.sigma == pytest.approx(g_fit.sigma, rel=1e-5)
    for k in g_fit.sd:
        assert t_fit.sd[k] == pytest.approx(g_fit.sd[k], rel=1e-5), k
    for k in g_fit.corr:
        assert t_fit.corr[k] == pytest.approx(g_fit.corr[k], abs=1e-5), k
    for k in g_fit.variance_se:
        assert t_fit.variance_se[k] == pytest.approx(g_fit.variance_se[k], rel=1e-4), k
    assert t_fit.loglik == pytest.approx(g_fit.loglik, rel=1e-5)
    # E[lambda_i] = 1 - (u_i - 1) / nu to first order: 2.6e-5 at most here (u_i up to 27)
    assert np.max(np.abs(np.asarray(t_fit.student["weights"]) - 1.0)) < 5e-5
    assert np.allclose(t_fit.group_means, g_fit.group_means, rtol=1e-5, atol=1e-5 * np.max(np.abs(g_fit.group_means)))


@pytest.mark.parametrize("key", ["nu_fixed_4", "nu_estimated"])
def test_exact_fit_matches_the_r_reference(fits, exact, key):
    """Our quadrature against R's integrate(): the same likelihood, the same optimum (measured in the docstring)."""
    model, _, fit = fits[key]
    ref = exact[key]
    assert fit.converged, fit.message
    a = np.array([ref["fixef"]["Intercept"], ref["fixef"]["days"]])
    design = model.design
    at_ref = student_exact_loglik(design.y, design.F @ a, design.X[:, 0], np.ones(model.n_obs), design.group_idx,
                                  18, ref["sigma"], ref["tau"], ref["nu"])
    assert at_ref == pytest.approx(ref["logLik"], abs=1e-9)
    assert fit.loglik == pytest.approx(ref["logLik"], abs=1e-9)
    assert fit.loglik >= ref["logLik"] - 1e-10
    for k in ("Intercept", "days"):
        assert fit.fixed[k] == pytest.approx(ref["fixef"][k], rel=1e-8), k
        assert fit.fixed_se[k] == pytest.approx(ref["fixef_se"][k], rel=1e-4), k
    assert fit.sigma == pytest.approx(ref["sigma"], rel=1e-8)
    assert fit.sd["Intercept"] == pytest.approx(ref["tau"], rel=1e-8)
    assert fit.student["nu"] == pytest.approx(ref["nu"], rel=1e-8)
    assert fit.variance_se["sigma"] == pytest.approx(ref["sigma_se"], rel=1e-4)
    assert fit.variance_se["sd[Intercept]"] == pytest.approx(ref["tau_se"], rel=1e-4)
    if ref["nu_se"] is not None:
        assert fit.student["nu_se"] == pytest.approx(ref["nu_se"], rel=1e-4)
    if "weights" in ref:
        assert np.max(np.abs(np.asarray(fit.student["weights"]) - np.asarray(ref["weights"]))) < 1e-8


def test_quadrature_converges_in_the_nodes(fits):
    model, _, fit = fits["nu_fixed_4"]
    design = model.design
    a = np.array([fit.fixed["Intercept"], fit.fixed["days"]])
    values = [student_exact_loglik(design.y, design.F @ a, design.X[:, 0], np.ones(model.n_obs), design.group_idx,
                                   18, fit.sigma, fit.sd["Intercept"], 4.0, n) for n in (10, 20, 40, 80)]
    assert abs(values[0] - values[-1]) < 1e-4  # measured 4e-6
    assert abs(values[1] - values[-1]) < 1e-8  # measured 1e-10
    assert abs(values[2] - values[-1]) < 1e-10


def test_factorised_em_against_exact_ml_nu_fixed(fits, exact):
    """Measured: fixed effects within 0.043 SE, sigma 2.2% high, tau 1.0% low, the bound 3.25 below the maximum."""
    model, fit, _ = fits["nu_fixed_4"]
    ref = exact["nu_fixed_4"]
    assert fit.converged, fit.message
    assert fit.student["nu"] == 4.0 and not fit.student["nu_estimated"]
    for k in ("Intercept", "days"):
        assert abs(fit.fixed[k] - ref["fixef"][k]) <= 0.06 * ref["fixef_se"][k], k  # 0.010, 0.043
        assert fit.fixed_se[k] == pytest.approx(ref["fixef_se"][k], rel=0.015), k  # 0.8%, 0.03%
    assert 0.015 < fit.sigma / ref["sigma"] - 1 < 0.03  # +2.2%
    assert abs(fit.sd["Intercept"] / ref["tau"] - 1) < 0.015  # -1.0%
    assert fit.variance_se["sigma"] == pytest.approx(ref["sigma_se"], rel=0.03)  # +2.1%
    assert fit.variance_se["sd[Intercept]"] == pytest.approx(ref["tau_se"], rel=0.02)  # -0.6%
    # a lower bound: 3.25 below the log-likelihood's maximum
    assert -3.5 < fit.loglik - ref["logLik"] < -3.0
    design = model.design
    a = np.array([fit.fixed["Intercept"], fit.fixed["days"]])
    at_em = student_exact_loglik(design.y, design.F @ a, design.X[:, 0], np.ones(model.n_obs), design.group_idx, 18,
                                 fit.sigma, fit.sd["Intercept"], 4.0)
    assert fit.loglik < at_em <= ref["logLik"]
    assert ref["logLik"] - at_em < 0.06  # 0.046
    weights, ref_weights = np.asarray(fit.student["weights"]), np.asarray(ref["weights"])
    assert np.max(np.abs(weights - ref_weights)) < 0.08  # 0.066
    assert np.argmin(weights) == np.argmin(ref_weights)


def test_factorised_em_against_exact_ml_nu_estimated(fits, exact):
    """Measured: nu 7.04 against the exact 4.50 (SE 1.85); fixed effects within 0.007 SE; sigma 9.7% high."""
    model, fit, exact_fit = fits["nu_estimated"]
    ref = exact["nu_estimated"]
    assert fit.converged, fit.message
    assert fit.student["nu_estimated"] and not fit.student["nu_at_bound"]
    assert 6.5 < fit.student["nu"] < 7.5  # 7.04: the bound favours larger nu
    assert np.isfinite(fit.student["nu_se"]) and 2.5 < fit.student["nu_se"] < 4.5  # 3.56
    for k in ("Intercept", "days"):
        assert abs(fit.fixed[k] - ref["fixef"][k]) <= 0.02 * ref["fixef_se"][k], k  # 0.004, 0.007
    assert 0.08 < fit.sigma / ref["sigma"] - 1 < 0.11  # +9.7%
    assert abs(fit.sd["Intercept"] / ref["tau"] - 1) < 0.02  # -1.4%
    assert -2.7 < fit.loglik - ref["logLik"] < -2.2  # -2.42
    # the profile's maximum is above the bound at nu = 4
    assert fit.loglik > fits["nu_fixed_4"][1].loglik
    assert fit.n_params == fits["nu_fixed_4"][1].n_params + 1 == 5
    assert exact_fit.student["nu"] == pytest.approx(ref["nu"], rel=1e-8)


def test_without_groups_the_fit_is_exact_t_regression(sleep):
    """No random coefficient: E[r_i^2] is r_i^2, the bound is the t log-likelihood and its maximum the ML fit."""
    fit = bh.fit_em(bh.hlm("reaction ~ days", sleep, family="student", nu=4), "ml")
    y, X = sleep["reaction"].to_numpy(), np.column_stack([np.ones(len(sleep)), sleep["days"].to_numpy()])

    def loglik(v):
        return float(np.sum(t_dist.logpdf((y - X @ v[:2]) / np.exp(v[2]), 4) - v[2]))

    opt = minimize(lambda v: -loglik(v), [250.0, 10.0, np.log(30.0)], method="BFGS", options={"gtol": 1e-9})
    assert fit.loglik == pytest.approx(-opt.fun, abs=1e-8)
    assert fit.fixed["Intercept"] == pytest.approx(opt.x[0], rel=1e-7)
    assert fit.fixed["days"] == pytest.approx(opt.x[1], rel=1e-6)
    assert fit.sigma == pytest.approx(np.exp(opt.x[2]), rel=1e-6)
    # the standard errors from the t log-likelihood's Hessian (central differences): of the fixed
    # effects at fixed sigma (as (F'V^-1 F)^-1 is for a Gaussian level 1), of sigma with them profiled
    # (steps of 0.002 standard errors: rounding and truncation errors both below 1e-5 relative)
    v, E = opt.x, np.diag([0.011, 0.0023, 1.4e-4])
    H = np.array([[(loglik(v + ei + ej) - loglik(v + ei - ej) - loglik(v - ei + ej) + loglik(v - ei - ej))
                   / (4 * ei.sum() * ej.sum()) for ej in E] for ei in E])
    se_fixed = np.sqrt(np.diag(np.linalg.inv(-H[:2, :2])))
    assert fit.fixed_se["Intercept"] == pytest.approx(se_fixed[0], rel=1e-4)
    assert fit.fixed_se["days"] == pytest.approx(se_fixed[1], rel=1e-4)
    se_sigma = np.exp(v[2]) * np.sqrt(np.linalg.inv(-H)[2, 2])
    assert fit.variance_se["sigma"] == pytest.approx(se_sigma, rel=1e-4)


def _simulated(seed=11, n_groups=40, n_per=10):
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(n_groups), n_per)
    x = rng.normal(size=g.size)
    b = rng.normal(0.0, 0.7, n_groups)
    y = 1.0 + 0.5 * x + b[g] + rng.normal(0.0, 1.0, g.size)
    return pd.DataFrame({"y": y, "x": x, "g": [f"g{j}" for j in g]})


def test_outlying_rows_hardly_move_the_fixed_effects():
    clean = _simulated()
    dirty = clean.copy()
    rng = np.random.default_rng(5)
    bad = rng.choice(len(dirty), size=len(dirty) // 20, replace=False)  # 5% of the rows, 10 sigma up
    dirty.loc[bad, "y"] += 10.0
    formula = "y ~ x + (1 | g)"
    reference = bh.fit_em(bh.hlm(formula, clean))
    gaussian = bh.fit_em(bh.hlm(formula, dirty))
    robust = bh.fit_em(bh.hlm(formula, dirty, family="student"))
    assert robust.converged, robust.message
    off = {k: abs(robust.fixed[k] - reference.fixed[k]) / reference.fixed_se[k] for k in reference.fixed}
    off_gaussian = {k: abs(gaussian.fixed[k] - reference.fixed[k]) / reference.fixed_se[k] for k in reference.fixed}
    assert max(off.values()) < 1.0, off  # 0.04 and 0.21 SE
    assert off_gaussian["Intercept"] > 1.0, off_gaussian  # 4.2 (and the slope 1.7) SE
    weights = np.asarray(robust.student["weights"])
    assert np.max(weights[bad]) < 0.2 < np.min(np.delete(weights, bad))  # 0.034 and 0.237
    assert robust.student["nu"] < 5  # 2.03
    assert robust.sd["Intercept"] == pytest.approx(reference.sd["Intercept"], rel=0.1)  # 3.8% apart


@pytest.mark.parametrize("nu", [4, None])
def test_shifted_and_scaled_data_transform_the_estimates_exactly(sleep, nu):
    moved = sleep.assign(reaction=sleep["reaction"] * 1000 + 1e6, days=sleep["days"] + 2015)
    formula = "reaction ~ days + (days | subject)"
    fit = bh.fit_em(bh.hlm(formula, sleep, family="student", nu=nu), "ml")
    new = bh.fit_em(bh.hlm(formula, moved, family="student", nu=nu), "ml")
    assert new.converged, new.message
    slope = fit.fixed["days"]
    assert new.fixed["days"] == pytest.approx(1000 * slope, rel=1e-6)
    assert new.fixed["Intercept"] == pytest.approx(1000 * (fit.fixed["Intercept"] - 2015 * slope) + 1e6, rel=1e-6)
    assert new.fixed_se["days"] == pytest.approx(1000 * fit.fixed_se["days"], rel=1e-5)
    assert new.sigma == pytest.approx(1000 * fit.sigma, rel=1e-6)
    assert new.sd["days"] == pytest.approx(1000 * fit.sd["days"], rel=1e-6)
    assert new.student["nu"] == pytest.approx(fit.student["nu"], rel=1e-6)
    assert new.loglik == pytest.approx(fit.loglik - len(sleep) * np.log(1000), rel=1e-9)
    assert np.allclose(new.student["weights"], fit.student["weights"], rtol=1e-6, atol=0)


def test_reml_and_ml_and_the_report(fits, sleep):
    model = fits["nu_fixed_4"][0]
    reml = bh.fit_em(model)  # REML by default, as for a Gaussian level 1
    ml = fits["nu_fixed_4"][1]
    assert reml.method == "reml" and reml.converged
    assert reml.sd["Intercept"] > ml.sd["Intercept"]  # REML's variance components are larger, as for Gaussian
    assert reml.fixed_se["Intercept"] > ml.fixed_se["Intercept"]
    text = reml.summary()
    assert "Student-t level 1 by factorised EM" in text
    assert "nu 4, fixed" in text and "lower bound" in text
    assert len(reml.student["weights"]) == model.n_obs
    assert reml.model == model.identity()
    exact_text = fits["nu_estimated"][2].summary()
    assert "adaptive Gauss-Hermite quadrature, 40 nodes" in exact_text and "estimated" in exact_text


def test_the_fit_is_saved_and_loaded(fits, tmp_path):
    fit = fits["nu_fixed_4"][1]
    path = tmp_path / "student.nc"
    bh.save(fit, path)
    back = bh.load(path)
    assert back.student["weights"] == fit.student["weights"]
    assert back.student["nu"] == fit.student["nu"]


def test_what_is_refused(sleep):
    with pytest.raises(NotImplementedError, match="sigma='~ days'.*together with family='student'"):
        bh.fit_em(bh.hlm(FORMULA, sleep, family="student", nu=4, sigma="~ days"))
    with pytest.raises(NotImplementedError, match="known scales"):
        bh.fit_em(bh.hlm(FORMULA, sleep, family="student", nu=4, known_sd=sleep["days"] + 1.0))
    with pytest.raises(ValueError, match="exact ML fit"):
        bh.fit_em(bh.hlm(FORMULA, sleep, family="student", nu=4), "reml", n_agq=20)
    with pytest.raises(NotImplementedError, match="one random coefficient"):
        bh.fit_em(bh.hlm("reaction ~ days + (days | subject)", sleep, family="student", nu=4), n_agq=20)
    pastes = bh.load_dataset("pastes")
    with pytest.raises(NotImplementedError, match="nested or crossed"):
        bh.fit_em(bh.hlm("strength ~ 1 + (1 | batch/cask)", pastes, family="student", nu=4))
