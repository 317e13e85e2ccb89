"""Non-Gaussian level 1: the maximum-likelihood fit against lme4's ``glmer``, and the input checks.

The references (``tests/golden/glmm_fits.json``, see the README there) are lme4 1.1-31's
Laplace (``nAGQ = 1``) and 25-point adaptive quadrature fits of the three bundled data sets.
Agreement is asked of the log-likelihood and of the estimates in units of their standard
errors, which is what matters for inference: adaptive quadrature agrees with lme4 to 1e-8
in the log-likelihood; for the Laplace approximation lme4 stops at conditional modes found
to its PIRLS tolerance, which leaves its value slightly below the exact one, so ours must be
at least as high and its estimates within a small fraction of a standard error.
"""

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy.special import expit, gammaln

import bayeshlm as bh
from bayeshlm.family import FamilyWarning
from bayeshlm.glmm import _Laplace
from samplers.theta import encode_theta

GOLDEN = json.loads((Path(__file__).parent / "golden" / "glmm_fits.json").read_text())

MODELS = {
    "cbpp": ("cbind(incidence, size - incidence) ~ C(period) + (1 | herd)", "binomial"),
    "contraception": ("use ~ age + I(age**2) + urban + livch + (1 | district)", "bernoulli"),
    "grouseticks": ("ticks ~ C(year) + cheight + (1 | location/brood)", "poisson"),
}


def _data(name):
    df = bh.load_dataset(name)
    if name == "grouseticks":
        df["cheight"] = df["height"] - df["height"].mean()
    return df


@pytest.fixture(scope="module", params=list(MODELS))
def model(request):
    formula, family = MODELS[request.param]
    return request.param, bh.hlm(formula, _data(request.param), family=family)


def _saturated_loglik(model):
    """The saturated model's log-likelihood (each row's own mean), normalising constants included."""
    y = model.design.y
    n = model.trials if model.trials is not None else np.ones_like(y)
    if model.family == "poisson":
        return float(np.sum(np.where(y > 0, y * np.log(np.where(y > 0, y, 1.0)) - y, 0.0) - gammaln(y + 1)))
    p = y / n
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(y > 0, y * np.log(p), 0.0) + np.where(n - y > 0, (n - y) * np.log1p(-p), 0.0)
    return float(np.sum(gammaln(n + 1) - gammaln(y + 1) - gammaln(n - y + 1) + terms))


def _check(fit, ref, sd_ref, exact):
    names = list(fit.fixed)
    assert len(names) == len(ref["fixef"])
    mine = np.array([fit.fixed[k] for k in names])
    theirs = np.array(list(ref["fixef"].values()))
    se = np.array(list(ref["se"].values()))
    # within 1e-3 standard errors where both compute the same value to the optimiser's
    # tolerance, within 0.01 where lme4's Laplace value is inexact
    assert np.max(np.abs(mine - theirs) / se) < (1e-3 if exact else 1e-2)
    assert np.allclose([fit.fixed_se[k] for k in names], se, rtol=2e-3 if exact else 2e-2)
    assert np.allclose(list(fit.sd.values()), sd_ref, rtol=1e-4 if exact else 2e-3)
    assert fit.converged


def test_laplace_fit_agrees_with_glmer(model):
    name, m = model
    ref = GOLDEN[name]["fits"]["nAGQ1"]
    fit = bh.fit_em(m)
    assert fit.method == "laplace"
    assert fit.loglik >= ref["logLik"] - 1e-7  # at least as high as lme4's
    assert fit.loglik - ref["logLik"] < 1e-3
    sd_ref = [row["sdcor"] for row in ref["varcor"]]
    if name == "grouseticks":  # lme4 lists brood:location first, as the kernels do (finest first)
        assert list(fit.sd) == ["Intercept|location:brood", "Intercept|location"]
    _check(fit, ref, sd_ref, exact=False)


@pytest.mark.parametrize("name", ["cbpp", "contraception"])
def test_adaptive_quadrature_agrees_with_glmer(name):
    formula, family = MODELS[name]
    m = bh.hlm(formula, _data(name), family=family)
    ref = GOLDEN[name]["fits"]["nAGQ25"]
    fit = bh.fit_em(m, n_agq=25)
    assert fit.method == "agq25"
    # lme4's nAGQ > 1 value leaves out the saturated log-likelihood
    assert fit.loglik == pytest.approx(ref["logLik"] + _saturated_loglik(m), rel=1e-8)
    _check(fit, ref, [ref["varcor"][0]["sdcor"]], exact=True)


def _phi(m, fixed, sds):
    """``(theta, a)`` in the kernels' basis from the user's fixed effects and (independent) SDs."""
    a = np.linalg.solve(m.basis.fixed_matrix(), np.asarray(fixed, dtype=float))
    theta = np.empty(m.n_theta)
    assert encode_theta(1.0, m.basis.coef_cov_from_user(np.diag(np.asarray(sds, dtype=float) ** 2)), m.structure,
                        theta)
    return np.concatenate([theta, a])


def test_laplace_value_is_the_exact_one_per_group():
    """The Laplace value at lme4's estimates against an independent per-herd Newton solution.

    With one grouping factor and a random intercept the approximation is a product over the
    herds of ``p(y_j | b_j) N(b_j | 0, tau^2) sqrt(2 pi / h_j)`` at each herd's mode, with
    ``h_j`` the curvature there; computed here with numpy alone. lme4's value at the same
    point is lower (its modes are found to a looser tolerance).
    """
    formula, family = MODELS["cbpp"]
    m = bh.hlm(formula, _data("cbpp"), family=family)
    ref = GOLDEN["cbpp"]["fits"]["nAGQ1"]
    fixed, tau = np.array(list(ref["fixef"].values())), ref["varcor"][0]["sdcor"]
    mine = _Laplace(m, 1)(_phi(m, fixed, [tau]))
    y, n, g = m.design.y, m.trials, m.design.group_idx
    eta0 = m.design.F @ fixed
    exact = 0.0
    for j in np.unique(g):
        s = g == j
        b = 0.0
        for _ in range(50):
            p = expit(eta0[s] + b)
            b += (np.sum(y[s] - n[s] * p) - b / tau**2) / (np.sum(n[s] * p * (1 - p)) + 1 / tau**2)
        p = expit(eta0[s] + b)
        h = np.sum(n[s] * p * (1 - p)) + 1 / tau**2
        exact += np.sum(gammaln(n[s] + 1) - gammaln(y[s] + 1) - gammaln(n[s] - y[s] + 1) + y[s] * np.log(p)
                        + (n[s] - y[s]) * np.log1p(-p)) - 0.5 * np.log(tau**2) - 0.5 * b * b / tau**2 - 0.5 * np.log(h)
    assert mine == pytest.approx(exact, rel=1e-12)
    assert mine > ref["logLik"]


def test_quadrature_converges_in_the_number_of_nodes():
    formula, family = MODELS["contraception"]
    m = bh.hlm(formula, _data("contraception"), family=family)
    phi = _phi(m, list(GOLDEN["contraception"]["fits"]["nAGQ25"]["fixef"].values()), [0.48])
    values = [_Laplace(m, k)(phi) for k in (1, 7, 25, 50)]
    assert abs(values[2] - values[3]) < 1e-9
    assert abs(values[1] - values[3]) < 1e-4
    assert abs(values[0] - values[3]) > 1e-3  # the Laplace approximation is not the integral


def test_fit_does_not_depend_on_units_or_location():
    """Age in months from birth year 1900 instead of centred years; rows shuffled; columns reordered."""
    df = _data("contraception")
    base = bh.fit_em(bh.hlm("use ~ age + urban + livch + (1 | district)", df, family="bernoulli"))
    other = df.assign(age_m=df["age"] * 12 + 1200.0).sample(frac=1.0, random_state=3)[
        ["urban", "age_m", "district", "use", "livch"]]
    moved = bh.fit_em(bh.hlm("use ~ age_m + urban + livch + (1 | district)", other, family="bernoulli"))
    assert moved.loglik == pytest.approx(base.loglik, rel=1e-10)
    assert moved.fixed["age_m"] * 12 == pytest.approx(base.fixed["age"], rel=1e-5)
    assert moved.fixed["Intercept"] + 1200.0 * moved.fixed["age_m"] == pytest.approx(base.fixed["Intercept"],
                                                                                       abs=1e-5)
    assert moved.sd["Intercept"] == pytest.approx(base.sd["Intercept"], rel=1e-5)


def test_trials_column_is_the_cbind_form():
    df = _data("cbpp")
    a = bh.fit_em(bh.hlm("cbind(incidence, size - incidence) ~ C(period) + (1 | herd)", df, family="binomial"))
    b = bh.fit_em(bh.hlm("incidence ~ C(period) + (1 | herd)", df, family="binomial", trials="size"))
    assert a.loglik == pytest.approx(b.loglik, rel=1e-12)
    assert a.fixed == pytest.approx(b.fixed, rel=1e-8)


def test_report_names_family_and_conditional_modes(model):
    name, m = model
    fit = bh.fit_em(m)
    text = str(fit)
    assert m.family in fit.message and "Laplace" in fit.message
    assert "Fixed effects" in text
    assert np.isnan(fit.sigma)
    assert fit.group_means.shape[0] == int(m.structure.node_ptr[-1])
    st = m.structure
    for k in range(len(st.level_ptr) - 1):  # each group's variance of its own factor's coefficient
        rows = slice(int(st.node_ptr[k]), int(st.node_ptr[k + 1]))
        c = st.level_ptr[k]
        v = fit.group_cov[rows, c, c]
        assert np.all(v > 0)
        # reliability 1 - Var(b | y) / tau^2: between 0 and 1, as the groups' information says
        tau2 = list(fit.sd.values())[c] ** 2
        np.testing.assert_allclose(fit.reliability_by_group[rows, c], 1 - v / tau2, rtol=1e-12)
        assert np.all((fit.reliability_by_group[rows, c] > 0) & (fit.reliability_by_group[rows, c] < 1))
        assert 0 < list(fit.reliability.values())[c] < 1
    assert f"level 1: {m.family}, {m.link} link" in repr(m)


def test_bad_responses_are_refused_with_the_column_named():
    df = _data("cbpp")
    with pytest.raises(ValueError, match="'incidence'.*0/1|0/1.*'incidence'"):
        bh.hlm("incidence ~ C(period) + (1 | herd)", df, family="bernoulli")
    with pytest.raises(ValueError, match="number of trials"):
        bh.hlm("incidence ~ C(period) + (1 | herd)", df, family="binomial")
    with pytest.raises(ValueError, match="between 0 and the number of trials"):
        bh.hlm("size ~ C(period) + (1 | herd)", df.assign(t=df["incidence"] + 1), family="binomial", trials="t")
    with pytest.raises(ValueError, match="counts"):
        bh.hlm("y ~ 1 + (1 | herd)", df.assign(y=df["incidence"] - 0.5), family="poisson")
    with pytest.raises(ValueError, match="family='binomial'"):
        bh.hlm("cbind(incidence, size - incidence) ~ C(period) + (1 | herd)", df, family="bernoulli")
    with pytest.raises(ValueError, match="not in the data"):
        bh.hlm("cbind(incidence, sizes - incidence) ~ C(period) + (1 | herd)", df, family="binomial")
    with pytest.raises(ValueError, match="family must be one of"):
        bh.hlm("incidence ~ 1 + (1 | herd)", df, family="gamma")
    with pytest.raises(ValueError, match="link"):
        bh.hlm("incidence ~ 1 + (1 | herd)", df, family="poisson", link="logit")
    with pytest.raises(ValueError, match="known_sd"):
        bh.hlm("incidence ~ 1 + (1 | herd)", df, family="poisson", known_sd="size")


def test_fit_and_sampler_refuse_what_they_cannot_do():
    m = bh.hlm(*MODELS["grouseticks"][:1], _data("grouseticks"), family="poisson")
    with pytest.raises(ValueError, match="one grouping factor"):
        bh.fit_em(m, n_agq=9)
    with pytest.raises(ValueError, match="maximum likelihood"):
        bh.fit_em(m, method="reml")
    with pytest.raises(ValueError, match="method='blocked' is for Gaussian models"):
        bh.sample(m, method="blocked")
    with pytest.raises(ValueError, match="non-Gaussian"):
        bh.fit_em(bh.hlm("reaction ~ days + (1 | subject)", bh.load_dataset("sleepstudy")), n_agq=5)


def test_gaussian_fit_of_a_binary_or_count_response_warns():
    df = _data("contraception")
    with pytest.warns(FamilyWarning, match="family='bernoulli'"):
        bh.hlm("use ~ age + (1 | district)", df)
    with pytest.warns(FamilyWarning, match="family='poisson'"):
        bh.hlm("ticks ~ cheight + (1 | location)", _data("grouseticks"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", FamilyWarning)
        bh.hlm("reaction ~ days + (1 | subject)", bh.load_dataset("sleepstudy"))


def test_saved_fit_and_model_from_it_keep_the_family(tmp_path):
    df = _data("cbpp")
    m = bh.hlm(MODELS["cbpp"][0], df, family="binomial")
    fit = bh.fit_em(m)
    loaded = bh.load(bh.save(fit, tmp_path / "cbpp_fit.nc"))
    assert loaded.loglik == fit.loglik and loaded.fixed == fit.fixed and loaded.method == "laplace"
    again = bh.model_from(loaded, df)
    assert again.family == "binomial" and again.identity() == m.identity()
    np.testing.assert_array_equal(again.trials, m.trials)


def test_level_by_level_builder_takes_a_family():
    """The HLM-style declaration of cbpp (trials as a column) is the formula's model and fit."""
    df = _data("cbpp").assign(p2=lambda d: (d["period"] == 2) * 1.0, p3=lambda d: (d["period"] == 3) * 1.0,
                              p4=lambda d: (d["period"] == 4) * 1.0)
    h = bh.Hierarchy("incidence", ["p2", "p3", "p4"]).level("herd", {"Intercept": bh.Equation()})
    m = h.compile(df, family="binomial", trials="size")
    assert "incidence ~ Binomial(n, p), n the trials,   logit(p) = b[Intercept] + b[p2]*p2" in m.equations
    fit = bh.fit_em(m, n_agq=25)
    ref = GOLDEN["cbpp"]["fits"]["nAGQ25"]
    assert fit.loglik == pytest.approx(ref["logLik"] - 41.97835376893558, rel=1e-8)  # the saturated part


def test_offset_is_a_known_part_of_the_linear_predictor():
    """A constant offset moves only the intercept; a varying one enters each row's predictor.

    cbpp's incidence as Poisson counts with exposure ``size``: the Laplace value at a point is
    checked against a per-herd Newton solution computed with numpy alone.
    """
    gt = _data("grouseticks").assign(two=2.0)
    base = bh.fit_em(bh.hlm(MODELS["grouseticks"][0], gt, family="poisson"))
    moved = bh.fit_em(bh.hlm("ticks ~ C(year) + cheight + offset(log(two)) + (1 | location/brood)", gt,
                             family="poisson"))
    assert moved.loglik == pytest.approx(base.loglik, rel=1e-10)
    assert moved.fixed["Intercept"] == pytest.approx(base.fixed["Intercept"] - np.log(2.0), abs=1e-5)
    assert moved.fixed["cheight"] == pytest.approx(base.fixed["cheight"], rel=1e-5)

    cb = _data("cbpp")
    m = bh.hlm("incidence ~ C(period) + offset(log(size)) + (1 | herd)", cb, family="poisson")
    np.testing.assert_allclose(m.offset, np.log(cb["size"].to_numpy(float)))
    fixed, tau = np.array([-2.0, -0.9, -1.1, -1.5]), 0.6
    mine = _Laplace(m, 1)(_phi(m, fixed, [tau]))
    y, g = m.design.y, m.design.group_idx
    eta0 = m.design.F @ fixed + m.offset
    exact = 0.0
    for j in np.unique(g):
        s = g == j
        b = 0.0
        for _ in range(50):
            mu = np.exp(eta0[s] + b)
            b += (np.sum(y[s] - mu) - b / tau**2) / (np.sum(mu) + 1 / tau**2)
        mu = np.exp(eta0[s] + b)
        exact += np.sum(y[s] * (eta0[s] + b) - mu - gammaln(y[s] + 1)) - 0.5 * np.log(tau**2) \
            - 0.5 * b * b / tau**2 - 0.5 * np.log(np.sum(mu) + 1 / tau**2)
    assert mine == pytest.approx(exact, rel=1e-12)
    with pytest.raises(ValueError, match="not finite"):
        bh.hlm("incidence ~ offset(log(incidence)) + (1 | herd)", cb, family="poisson")


def test_likelihood_ratio_test_between_fits_of_one_family():
    df = _data("cbpp")
    small = bh.fit_em(bh.hlm("cbind(incidence, size - incidence) ~ 1 + (1 | herd)", df, family="binomial"))
    large = bh.fit_em(bh.hlm(MODELS["cbpp"][0], df, family="binomial"))
    test = bh.lrt(small, large)
    assert test.df == 3
    assert test.statistic == pytest.approx(2 * (large.loglik - small.loglik), rel=1e-12)


@pytest.mark.parametrize("formula", ["use ~ x + (1 | subject) + (1 | item)", "use ~ x + (x || subject) + (1 | item)"])
def test_laplace_of_crossed_factors_is_the_dense_one(formula):
    """Bernoulli responses on crossed subjects x items: the Laplace value against dense linear algebra.

    The joint mode of all group coefficients by Newton's method on the dense ``Z``, then
    ``sum log p(y | b) - b'T^{-1}b / 2 - log|T| / 2 - log|Z'WZ + T^{-1}| / 2``, computed with
    numpy alone.
    """
    rng = np.random.default_rng(5)
    df = bh.simulate_crossed(n_subjects=12, n_items=7, fill=0.7, reps=2, seed=5)
    df["use"] = (rng.random(len(df)) < expit(0.3 * (df["y"] - df["y"].mean()))).astype(float)
    m = bh.hlm(formula, df, family="bernoulli")
    fixed = np.array([0.2, -0.4])
    sds = [0.9, 0.3, 0.7] if "||" in formula else [0.9, 0.7]
    mine = _Laplace(m, 1)(_phi(m, fixed, sds))
    # dense Z, columns factor by factor, group by group (the kernels' order of coefficients)
    y, F, X = m.design.y, m.design.F, m.design.X
    cols, var = [], []
    lp = m.structure.level_ptr
    codes = m.design.factor_idx  # each row's group of each factor
    for k in range(len(lp) - 1):
        for c in range(lp[k], lp[k + 1]):
            for g in range(len(m.design.factor_labels[k])):
                cols.append(np.where(codes[k] == g, X[:, c], 0.0))
                var.append(sds[c] ** 2)
    Z, Tinv = np.column_stack(cols), np.diag(1.0 / np.array(var))
    b = np.zeros(Z.shape[1])
    for _ in range(100):
        p = expit(F @ fixed + Z @ b)
        H = Z.T @ (Z * (p * (1 - p))[:, None]) + Tinv
        b += np.linalg.solve(H, Z.T @ (y - p) - Tinv @ b)
    p = expit(F @ fixed + Z @ b)
    H = Z.T @ (Z * (p * (1 - p))[:, None]) + Tinv
    dense = (np.sum(y * np.log(p) + (1 - y) * np.log1p(-p)) - 0.5 * b @ Tinv @ b - 0.5 * np.sum(np.log(var))
             - 0.5 * np.linalg.slogdet(H)[1])
    assert mine == pytest.approx(dense, rel=1e-10)



@pytest.mark.parametrize("name, formula", [
    ("cbpp", "cbind(incidence, size - incidence) ~ factor(period) + (1 | herd)"),
    ("grouseticks", "ticks ~ as.factor(year) + cheight + (1 | location/brood)"),
])
def test_lme4_spelling_of_a_categorical_predictor(name, formula):
    """The formulas as lme4 users write them (``factor(x)``, ``as.factor(x)``) are ``C(x)``: the same fit."""
    family = MODELS[name][1]
    assert bh.check_formula(formula) == formula  # safe mode lets them through
    m = bh.hlm(formula, _data(name), family=family)
    same = bh.hlm(MODELS[name][0], _data(name), family=family)
    assert m.fixed_names == same.fixed_names
    fit = bh.fit_em(m)
    assert fit.loglik >= GOLDEN[name]["fits"]["nAGQ1"]["logLik"] - 1e-7
    assert fit.loglik == pytest.approx(bh.fit_em(same).loglik, rel=1e-12)
