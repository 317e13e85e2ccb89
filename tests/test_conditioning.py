"""Results do not depend on the location or units of a column.

The kernels work in a standardised basis (:mod:`bayeshlm.basis`) and every result is mapped
back exactly; the default priors are set on centred coordinates, so they move with the data.
Checked here:

* EM (REML and ML): for every shift ``c`` in {0, 1e2, 1e4, 1e6} and scale ``s`` in
  {1e-6, 1, 1e6} of a predictor used as a random slope, and of the response, the estimates,
  their standard errors and the log-likelihood of the transformed data map back to the fit of
  the untransformed data to 1e-6 relative; a hypothesis property test over random shifts and
  scales of both at once;
* the sampler (MH and Gibbs): posterior quantiles of transformed data map back within Monte
  Carlo error;
* lme4 (``tests/golden/conditioning_fits.json``, made by ``conditioning_fits.R``): the
  calendar-year model ``y ~ year + (year | unit)`` on raw years against lme4's fit of the same
  model on centred years, mapped to raw years (lme4 1.1-31 on the raw years stops at a
  singular fit whose restricted log-likelihood is 38.8 lower), and a response shifted by 1e5
  and 1e8 against lme4 on those data;
* ``hlm_stats`` (chunked sums) on such data equals ``hlm``;
* priors set on the user's coefficients of a centred block (``Priors.block_map``): the
  kernel's log density of ``theta``, normalised as the marginal likelihood normalises it,
  against the density computed independently by a change of variables.
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps
from scipy.special import betaln

import bayeshlm as bh
from bayeshlm.em import fit_em
from tests.statistical.mc import mcse, z_for

GOLDEN = Path(__file__).parent / "golden"
SHIFTS = [0.0, 1e2, 1e4, 1e6]
SCALES = [1e-6, 1.0, 1e6]
FORMULA = "y ~ x + (x | unit)"


@pytest.fixture(scope="module")
def panel():
    data = pd.read_csv(GOLDEN / "year_panel.csv")
    return pd.DataFrame({"unit": data["unit"], "x": data["year"] - 2013.5, "y": data["y"]})


@pytest.fixture(scope="module")
def conditioning_fits():
    with open(GOLDEN / "conditioning_fits.json", encoding="utf-8") as handle:
        return json.load(handle)


def _transformed(data, sx=1.0, cx=0.0, sy=1.0, cy=0.0):
    """The data with ``x' = (x + cx) sx`` and ``y' = (y + cy) sy``: a shift, then a change of units."""
    return data.assign(x=(data["x"] + cx) * sx, y=(data["y"] + cy) * sy)


def _map(sx, cx, sy, cy):
    """``(K, k)``: the coefficients of ``y'`` on ``x'`` (see :func:`_transformed`) are ``K a + k``.

    ``y' = sy (a0 + cy + a1 x) = sy (a0 + cy - a1 cx) + (sy / sx) a1 x'``; the group
    coefficients map by ``K`` alone.
    """
    K = np.array([[sy, -sy * cx], [0.0, sy / sx]])
    return K, np.array([sy * cy, 0.0])


def _fit_arrays(fit):
    a = np.array([fit.fixed["Intercept"], fit.fixed["x"]])
    T = np.array([[fit.sd["Intercept"] ** 2, 0.0], [0.0, fit.sd["x"] ** 2]])
    T[0, 1] = T[1, 0] = fit.corr["Intercept,x"] * fit.sd["Intercept"] * fit.sd["x"]
    return a, fit.vcov_fixed, T


def _assert_maps_back(base, fit, sx, cx, sy, cy, n_obs, method):
    """``fit`` (of transformed data) equals ``base`` mapped, to 1e-6 relative."""
    K, k = _map(sx, cx, sy, cy)
    a0, V0, T0 = _fit_arrays(base)
    a1, V1, T1 = _fit_arrays(fit)
    a_want, V_want, T_want = K @ a0 + k, K @ V0 @ K.T, K @ T0 @ K.T
    se_want = np.sqrt(np.diag(V_want))
    # each estimate to 1e-6 of its size, or of its standard error where it is near 0
    assert np.all(np.abs(a1 - a_want) <= 1e-6 * (np.abs(a_want) + se_want)), (a1, a_want)
    np.testing.assert_allclose(np.sqrt(np.diag(V1)), se_want, rtol=1e-6)
    sd_want = np.sqrt(np.diag(T_want))
    np.testing.assert_allclose([fit.sd["Intercept"], fit.sd["x"]], sd_want, rtol=1e-6)
    assert fit.corr["Intercept,x"] == pytest.approx(T_want[0, 1] / (sd_want[0] * sd_want[1]), abs=1e-6)
    assert fit.sigma == pytest.approx(abs(sy) * base.sigma, rel=1e-6)
    # the standard errors of sigma and of the slope's SD scale with them
    assert fit.variance_se["sigma"] == pytest.approx(abs(sy) * base.variance_se["sigma"], rel=1e-5)
    assert fit.variance_se["sd[x]"] == pytest.approx(abs(sy / sx) * base.variance_se["sd[x]"], rel=1e-5)
    if cx == 0.0:
        assert fit.variance_se["sd[Intercept]"] == pytest.approx(abs(sy) * base.variance_se["sd[Intercept]"],
                                                                 rel=1e-5)
    # log-likelihoods: the Jacobian of the response, and for REML that of the fixed effects
    offset = -n_obs * np.log(abs(sy)) + (np.log(abs(np.linalg.det(K))) if method == "reml" else 0.0)
    assert fit.loglik == pytest.approx(base.loglik + offset, abs=1e-6 * abs(base.loglik))
    # the empirical-Bayes group coefficients, to 1e-6 of each coefficient's largest
    b_want = base.group_means @ K.T
    assert np.all(np.abs(fit.group_means - b_want) <= 1e-6 * np.max(np.abs(b_want), axis=0))


@pytest.mark.parametrize("method", ["reml", "ml"])
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("shift", SHIFTS)
@pytest.mark.parametrize("column", ["slope predictor", "response"])
def test_em_maps_back_under_shift_and_scale(panel, column, shift, scale, method):
    """Every shift and scale of the random slope's predictor, then of the response."""
    change = {"sx": scale, "cx": shift} if column == "slope predictor" else {"sy": scale, "cy": shift}
    base = fit_em(bh.hlm(FORMULA, panel), method)
    fit = fit_em(bh.hlm(FORMULA, _transformed(panel, **change)), method)
    assert base.converged and fit.converged, fit.message
    full = {"sx": 1.0, "cx": 0.0, "sy": 1.0, "cy": 0.0, **change}
    _assert_maps_back(base, fit, full["sx"], full["cx"], full["sy"], full["cy"], len(panel), method)


@settings(max_examples=25)
@given(log_sx=st.floats(-6, 6), cx=st.floats(-1e6, 1e6), log_sy=st.floats(-6, 6), cy=st.floats(-1e6, 1e6),
       flip=st.booleans())
def test_em_property_random_shifts_and_scales(log_sx, cx, log_sy, cy, flip):
    data = pd.read_csv(GOLDEN / "year_panel.csv")
    panel = pd.DataFrame({"unit": data["unit"], "x": data["year"] - 2013.5, "y": data["y"]})
    sx = (-1.0 if flip else 1.0) * 10.0**log_sx  # a negative scale reverses the predictor
    sy = 10.0**log_sy
    base = fit_em(bh.hlm(FORMULA, panel), "reml")
    fit = fit_em(bh.hlm(FORMULA, _transformed(panel, sx, cx, sy, cy)), "reml")
    assert fit.converged, fit.message
    _assert_maps_back(base, fit, sx, cx, sy, cy, len(panel), "reml")


def test_column_position_does_not_matter(panel):
    """The same model with the columns in another order of the data and of the formula."""
    data = _transformed(panel, sx=1.0, cx=2013.5)
    data = data.assign(z=np.cos(np.arange(len(data))) * 1e4 + 5e6)
    fit = fit_em(bh.hlm("y ~ x + z + (x | unit)", data))
    other = fit_em(bh.hlm("y ~ z + x + (x | unit)", data[["z", "y", "unit", "x"]]))
    for term in fit.fixed:
        assert other.fixed[term] == pytest.approx(fit.fixed[term], rel=1e-8, abs=1e-8 * fit.fixed_se[term])
        assert other.fixed_se[term] == pytest.approx(fit.fixed_se[term], rel=1e-8)
    assert other.loglik == pytest.approx(fit.loglik, rel=1e-10)


# ---------------------------------------------------------------------------- sampler

def _posterior_scalars(post):
    sd = post["unit_sd"]
    return {
        "fixed[Intercept]": post["fixed"].sel(fixed_term="Intercept").values,
        "fixed[x]": post["fixed"].sel(fixed_term="x").values,
        "sigma": post["sigma"].values,
        "sd[Intercept]": sd.sel(unit_coef="Intercept").values,
        "sd[x]": sd.sel(unit_coef="x").values,
        "corr": post["unit_corr"].values[..., 0],
    }


def _mapped_scalars(post, sx, cx, sy, cy):
    """The base posterior's draws carried to the transformed parametrisation, draw by draw."""
    K, k = _map(sx, cx, sy, cy)
    a = post["fixed"].values @ K.T + k
    sd = post["unit_sd"].values
    r = post["unit_corr"].values[..., 0]
    T = np.zeros(sd.shape[:2] + (2, 2))
    T[..., 0, 0], T[..., 1, 1] = sd[..., 0] ** 2, sd[..., 1] ** 2
    T[..., 0, 1] = T[..., 1, 0] = r * sd[..., 0] * sd[..., 1]
    T = K @ T @ K.T
    s = np.sqrt(np.stack([T[..., 0, 0], T[..., 1, 1]], axis=-1))
    return {"fixed[Intercept]": a[..., 0], "fixed[x]": a[..., 1], "sigma": abs(sy) * post["sigma"].values,
            "sd[Intercept]": s[..., 0], "sd[x]": s[..., 1], "corr": T[..., 0, 1] / (s[..., 0] * s[..., 1])}


@pytest.mark.parametrize("method", ["mh", "gibbs"])
@pytest.mark.parametrize(("sx", "cx", "sy", "cy"), [(1.0, 2013.5, 1.0, 0.0), (1e-6, 1e6, 1.0, 0.0),
                                                    (1.0, 0.0, 1e6, 1e8), (1e6, 1e4, 1e-6, 1e2)],
                         ids=["year", "slope-micro-shifted", "response-big", "both"])
def test_posterior_quantiles_map_back(panel, method, sx, cx, sy, cy):
    opts = {"draws": 1000, "warmup": 500, "chains": 2, "seed": 17, "progress": False, "method": method}
    base = bh.sample(bh.hlm(FORMULA, panel), **opts).posterior
    post = bh.sample(bh.hlm(FORMULA, _transformed(panel, sx, cx, sy, cy)), **opts).posterior
    want, got = _mapped_scalars(base, sx, cx, sy, cy), _posterior_scalars(post)
    probs = (0.05, 0.5, 0.95)
    # false-alarm rate 1e-3 for the test, spread over its checks; the MCSE of both quantiles
    z = z_for(1e-3, len(want) * len(probs))
    for name in want:
        for prob in probs:
            err = np.hypot(mcse(want[name], "quantile", prob), mcse(got[name], "quantile", prob))
            q_want, q_got = np.quantile(want[name], prob), np.quantile(got[name], prob)
            assert abs(q_got - q_want) <= z * err, (name, prob, q_got, q_want, err)


# ---------------------------------------------------------------------------- lme4

def _lme4_arrays(ref):
    a = np.array([ref["fixef"]["(Intercept)"]["estimate"], ref["fixef"][_term(ref, 1)]["estimate"]])
    se = np.array([ref["fixef"]["(Intercept)"]["se"], ref["fixef"][_term(ref, 1)]["se"]])
    rows = {(r["var1"], r["var2"]): r["sdcor"] for r in ref["varcor"] if r["grp"] != "Residual"}
    names = [v1 for (v1, v2) in rows if v2 is None]
    sd = np.array([rows[(n, None)] for n in names])
    corr = rows[(names[0], names[1])]
    return a, se, sd, corr


def _term(ref, i):
    return list(ref["fixef"])[i]


@pytest.mark.parametrize("method", ["REML", "ML"])
def test_raw_calendar_year_agrees_with_lme4_on_centred_years(conditioning_fits, method):
    """``y ~ year + (year | unit)`` on raw years (2008-2019) against lme4 on ``year - 2013.5``, mapped."""
    data = pd.read_csv(GOLDEN / "year_panel.csv")
    model = bh.hlm("y ~ year + (year | unit)", data)
    fit = fit_em(model, method.lower())
    assert fit.converged, fit.message
    ref = conditioning_fits["models"]["year_centred"]["fits"][method]
    a, se, sd, corr = _lme4_arrays(ref)
    K, _ = _map(1.0, 2013.5, 1.0, 0.0)  # raw year = centred year + 2013.5
    a_raw = K @ a
    T = np.array([[sd[0] ** 2, corr * sd[0] * sd[1]], [corr * sd[0] * sd[1], sd[1] ** 2]])
    T_raw = K @ T @ K.T
    sd_raw = np.sqrt(np.diag(T_raw))
    assert fit.fixed["year"] == pytest.approx(a_raw[1], abs=1e-4 * se[1])
    assert fit.fixed["Intercept"] == pytest.approx(a_raw[0], abs=1e-4 * abs(2013.5) * se[1] + 1e-4 * se[0])
    assert fit.fixed_se["year"] == pytest.approx(se[1], rel=1e-4)
    assert fit.sd["year"] == pytest.approx(sd_raw[1], rel=5e-4)
    assert fit.sd["Intercept"] == pytest.approx(sd_raw[0], rel=5e-4)
    assert fit.corr["Intercept,year"] == pytest.approx(T_raw[0, 1] / (sd_raw[0] * sd_raw[1]), abs=1e-3)
    assert fit.sigma == pytest.approx(ref["sigma"], rel=1e-4)
    # a shift of the predictor leaves both likelihoods unchanged (det K = 1)
    assert fit.loglik == pytest.approx(ref["logLik"], rel=1e-8)
    # lme4 on the raw years stops short of that optimum: ours is at least as good
    raw = conditioning_fits["models"]["year_raw"]["fits"][method]
    assert fit.loglik >= raw["logLik"]


@pytest.mark.parametrize("method", ["REML", "ML"])
@pytest.mark.parametrize("key", ["sleep_plus_1e5", "sleep_plus_1e8"])
def test_large_response_mean_agrees_with_lme4(conditioning_fits, key, method):
    shift = {"sleep_plus_1e5": 1e5, "sleep_plus_1e8": 1e8}[key]
    sleep = bh.load_dataset("sleepstudy")
    model = bh.hlm("reaction ~ days + (days | subject)", sleep.assign(reaction=sleep["reaction"] + shift))
    fit = fit_em(model, method.lower())
    assert fit.converged, fit.message
    ref = conditioning_fits["models"][key]["fits"][method]
    a, se, sd, corr = _lme4_arrays(ref)
    for i, term in enumerate(model.fixed_names):
        assert fit.fixed[term] == pytest.approx(a[i], abs=1e-4 * se[i]), term
        assert fit.fixed_se[term] == pytest.approx(se[i], rel=1e-4), term
    assert fit.sd["Intercept"] == pytest.approx(sd[0], rel=5e-4)
    assert fit.sd["days"] == pytest.approx(sd[1], rel=5e-4)
    assert fit.corr["Intercept,days"] == pytest.approx(corr, abs=1e-3)
    assert fit.sigma == pytest.approx(ref["sigma"], rel=1e-4)
    assert fit.loglik == pytest.approx(ref["logLik"], rel=1e-8)


# ---------------------------------------------------------------------------- chunked sums

def test_chunked_statistics_keep_their_precision(panel):
    data = _transformed(panel, sx=1.0, cx=1e6, sy=1.0, cy=1e8)
    full = bh.hlm(FORMULA, data)
    part = bh.hlm_stats(FORMULA, data, chunk_rows=37)
    # Both are sums of the same standardised rows; the response's shift (about 1e8, where one
    # unit in the last place is 1.5e-8) is summed in another order, which moves each standardised
    # value by about 1e-8: the statistics agree to that, where raw sums would keep no digit.
    for x, y in zip(full.stats, part.stats, strict=True):
        np.testing.assert_allclose(y, x, rtol=1e-9, atol=1e-7 * max(1.0, float(np.max(np.abs(x)))))
    e_full, e_part = fit_em(full), fit_em(part)
    for term in e_full.fixed:
        assert e_part.fixed[term] == pytest.approx(e_full.fixed[term], rel=1e-9, abs=1e-6 * e_full.fixed_se[term])
        assert e_part.fixed_se[term] == pytest.approx(e_full.fixed_se[term], rel=1e-6)
    assert e_part.sd["x"] == pytest.approx(e_full.sd["x"], rel=1e-6)
    # and the same as the untransformed data
    base = fit_em(bh.hlm(FORMULA, panel))
    assert e_part.sd["x"] == pytest.approx(base.sd["x"], rel=1e-6)
    assert e_part.sigma == pytest.approx(base.sigma, rel=1e-6)


# ---------------------------------------------------------------------------- mapped priors

def _lkj2_log_density(r, eta):
    """LKJ(eta) density of the correlation of a 2 x 2 matrix: ``(1 - r^2)^(eta - 1) / (2^(2 eta - 1) B(eta, eta))``."""
    return (eta - 1.0) * np.log1p(-r * r) - (2 * eta - 1) * np.log(2.0) - betaln(eta, eta)


def test_mapped_block_prior_density_by_change_of_variables(panel):
    """Priors on the user's coefficients of a centred block: the kernel's normalised log density of theta.

    The slope is centred inside the kernels, so the user's SDs and correlation are a nonlinear
    function of ``theta``; the density of ``theta`` is then ``p(phi(theta)) |det dphi/dtheta|``
    with ``phi`` the user's ``(sigma, sd0, sd1, corr)``, computed here with scipy's densities
    and a numerical Jacobian, against ``decode_theta``'s value plus the normalising constant of
    :mod:`bayeshlm.evidence`.
    """
    from bayeshlm.evidence import _log_prior_norm
    from bayeshlm.results import variance_components
    from samplers.theta import decode_theta

    priors = {"sigma": bh.HalfNormal(2.0), "sd[Intercept]": bh.HalfNormal(400.0), "sd[x]": bh.HalfNormal(0.5),
              "corr": bh.LKJ(1.7), "fixed": bh.Normal(0, 1000)}
    model = bh.hlm(FORMULA, _transformed(panel, cx=2013.5), priors=priors)
    assert model.priors.block_map.tolist() == [1]  # the general path
    norm = _log_prior_norm(model)
    rng = np.random.default_rng(3)

    def phi(theta):
        s2, sd, corr, _ = variance_components(model, theta[None, :])
        return np.array([np.sqrt(s2[0]), sd[0, 0], sd[0, 1], corr[0, 0, 1]])

    for _ in range(12):
        theta = rng.normal(size=model.n_theta) * np.array([0.3, 1.0, 1.0, 0.8]) + np.array([0.0, 1.5, 1.0, 0.0])
        C = np.zeros((2, 2))
        _, lp = decode_theta(theta, model.structure, model.priors, C)
        h = 1e-4  # central differences: truncation error about 1e-8 here
        J = np.column_stack([(phi(theta + h * e) - phi(theta - h * e)) / (2 * h) for e in np.eye(theta.size)])
        sigma, sd0, sd1, r = phi(theta)
        ref = (sps.halfnorm(scale=2.0).logpdf(sigma) + sps.halfnorm(scale=400.0).logpdf(sd0)
               + sps.halfnorm(scale=0.5).logpdf(sd1) + _lkj2_log_density(r, 1.7)
               + np.log(abs(np.linalg.det(J))))
        # the sign of each SD in theta is free (four mirror images of each T), the density is not
        assert lp + norm == pytest.approx(ref, abs=1e-5), theta
