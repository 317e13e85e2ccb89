"""Profile-likelihood intervals against lme4, and the parametric bootstrap (bayeshlm/intervals.py).

Profiles. lme4's ``confint(fit, method = "profile")`` profiles a REML fit's ML likelihood (its
``devfun2`` refits by ML), so it is compared with ``profile_intervals(..., method="ml")``; the
REML profile (the default for a REML fit) is checked against an independent maximisation of
the REML likelihood through the public ``loglik_at``, and, for a regression without groups,
against the closed form. Two references from lme4 (R 4.2.2, lme4 1.1-31):

* ``analyst_fits.json``: ``confint()`` as lme4 runs it, its limits interpolated by a spline
  through profile points 1/8 of the cutoff apart. Held to 1e-4 relative; measured, the
  largest differences are 4.8e-5 (sleepstudy, a correlation limit), 5.3e-5 (pastes),
  9.6e-6 (hsb_rb but for one limit), 2.7e-6 (radon_u_vi). Where the profile bends the
  spline misses: hsb_rb's slope-SD upper limit by 1.9e-4, and on radon_u_vs, whose
  profiles pass between two local maxima, lme4's limits of the SDs and the correlation by
  1.5e-3 to 0.16 (lme4 finds the correlation's profile not monotonic and interpolates it
  linearly, and its own profile points are below the true maximum: at the correlation
  -0.59 its zeta is -1.7941, the maximum's -1.7875). For these the test requires that the
  finer grid below moves lme4's limit towards ours.
* ``profile_fine.json``: the same with points 1/64 of the cutoff apart. Held to 1e-4
  relative on every limit but one; measured, the largest differences are 2.8e-7
  (sleepstudy), 8.0e-7 (pastes), 3.9e-5 (hsb_rb), 1.2e-7 (radon_u_vi), 4.5e-5 (radon_u_vs).
  The exception is radon_u_vs's lower limit of the intercept SD (0.017041 against
  lme4's 0.017084, 2.5e-3), where lme4's inner optimisation stays on the lower branch: an
  independent maximisation puts zeta at our limit at -z to 1e-6 and at lme4's inside the
  interval (-1.95945); both are tested.

These are deterministic: no false alarms.

Bootstrap. The statistical checks use fixed seeds; each tolerance is 4 Monte Carlo standard
errors (a two-sided false-alarm rate of 6e-5 per comparison for a normal error).
"""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import brentq, minimize
from scipy.stats import norm

import bayeshlm as bh
import bayeshlm.intervals as intervals_module
from bayeshlm.em import loglik_at
from bayeshlm.model import ModelMismatchError

GOLDEN = Path(__file__).parent / "golden"
COARSE = json.loads((GOLDEN / "analyst_fits.json").read_text())["models"]
FINE = json.loads((GOLDEN / "profile_fine.json").read_text())["models"]
Z = float(norm.ppf(0.975))

# (model, parameter, side) where lme4's spline through its coarse grid misses by more than 1e-4
COARSE_OFF = {("hsb_rb", "sd[ses_centered]", "upper")} | {
    ("radon_u_vs", name, side) for name in ("sd[Intercept]", "sd[floor]") for side in ("lower", "upper")
} | {("radon_u_vs", "corr[Intercept,floor]", "lower")}
# where lme4's own profile stays below the maximum (checked by an independent maximisation)
FINE_OFF = {("radon_u_vs", "sd[Intercept]", "lower")}


def lme4_name(name, model):
    """lme4's ``oldNames = FALSE`` name of a parameter: sd_(Intercept)|subject, cor_days.(Intercept)|subject."""
    if name == "sigma":
        return "sigma"
    inner = name[name.index("[") + 1:-1]
    body, _, factor = inner.partition("|")
    factor = {"batch:cask": "cask:batch"}.get(factor or model.factor, factor or model.factor)

    def term(c):
        return "(Intercept)" if c == "Intercept" else c

    if name.startswith("sd["):
        return f"sd_{term(body)}|{factor}"
    first, second = body.split(",")
    return f"cor_{term(second)}.{term(first)}|{factor}"


@pytest.fixture(scope="module")
def fits():
    out = {}
    for key, ref in COARSE.items():
        model = bh.hlm(ref["formula"], bh.load_dataset(ref["dataset"]))
        out[key] = (model, bh.fit_em(model))
    return out


@pytest.fixture(scope="module")
def ml_profiles(fits):
    return {key: bh.profile_intervals(model, fit, method="ml") for key, (model, fit) in fits.items()}


def _relative(ours, theirs):
    return abs(ours - theirs) / abs(theirs) if theirs != 0 else abs(ours)


@pytest.mark.parametrize("key", sorted(COARSE))
def test_profile_intervals_agree_with_lme4(fits, ml_profiles, key):
    model, _ = fits[key]
    table = ml_profiles[key]
    assert list(table.columns) == ["estimate", "lower", "upper"]
    expected = {lme4_name(n, model) for n in table.index}
    assert expected == {n for n in COARSE[key]["profile"] if n.startswith(("sd_", "cor_", "sigma"))}
    for name, row in table.iterrows():
        coarse, fine = COARSE[key]["profile"][lme4_name(name, model)], FINE[key]["profile"][lme4_name(name, model)]
        for side in ("lower", "upper"):
            ours = row[side]
            if (key, name, side) in FINE_OFF:
                assert _relative(ours, fine[side]) < 5e-3, (name, side)
            else:
                assert ours == pytest.approx(fine[side], rel=1e-4, abs=1e-12), (name, side)
            if (key, name, side) in COARSE_OFF:  # the finer grid moves lme4's limit towards ours
                assert abs(ours - fine[side]) < abs(ours - coarse[side]), (name, side)
            else:
                assert ours == pytest.approx(coarse[side], rel=1e-4, abs=1e-12), (name, side)


def test_boundary_limits_are_exact(ml_profiles):
    assert ml_profiles["pastes"].loc["sd[Intercept|batch]", "lower"] == 0.0
    assert ml_profiles["hsb_rb"].loc["sd[ses_centered]", "lower"] == 0.0
    assert ml_profiles["hsb_rb"].loc["corr[Intercept,ses_centered]", ["lower", "upper"]].tolist() == [-1.0, 1.0]
    assert ml_profiles["radon_u_vs"].loc["corr[Intercept,floor]", "upper"] == 1.0


def _independent_zeta(model, l_hat, method, fixed, value, start, corr_starts):
    """zeta at ``fixed = value`` from Nelder-Mead on ``loglik_at`` (one 2 x 2 block), best of several starts.

    ``fixed`` is 0 (sigma), 1 or 2 (the SDs) or 3 (the correlation); the free parameters are
    taken on the log (SDs) and atanh (correlation) scales.
    """
    best = -np.inf
    for r0 in corr_starts:
        def negative(x):
            p = list(np.exp(x[:2])) + [np.tanh(x[2])] if fixed != 3 else list(np.exp(x))
            p.insert(fixed, value)
            sigma, s0, s1, r = p
            return -loglik_at(model, sigma, np.array([[s0 * s0, r * s0 * s1], [r * s0 * s1, s1 * s1]]), method)

        x0 = [np.log(v) for i, v in enumerate(start[:3]) if i != fixed]
        if fixed != 3:
            x0 = x0[:2] + [np.arctanh(r0)]
        for _ in range(2):
            opt = minimize(negative, x0, method="Nelder-Mead",
                           options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20000, "maxfev": 20000})
            x0 = opt.x
        best = max(best, -opt.fun)
    return float(np.sign(value - start[fixed]) * np.sqrt(2 * max(l_hat - best, 0.0)))


def test_where_lme4s_profile_misses_the_maximum(fits, ml_profiles):
    model, _ = fits["radon_u_vs"]
    ml = bh.fit_em(model, "ml")
    start = [ml.sigma, ml.sd["Intercept"], ml.sd["floor"], ml.corr["Intercept,floor"]]
    ours = ml_profiles["radon_u_vs"].loc["sd[Intercept]", "lower"]
    theirs = FINE["radon_u_vs"]["profile"]["sd_(Intercept)|county"]["lower"]
    assert _independent_zeta(model, ml.loglik, "ml", 1, ours, start, (0.95, 0.3)) == pytest.approx(-Z, abs=1e-6)
    assert _independent_zeta(model, ml.loglik, "ml", 1, theirs, start, (0.95, 0.3)) > -Z + 3e-4


def test_reml_profile_is_the_reml_likelihoods(fits):
    """The default profiles the fit's own (REML) likelihood: at each limit an independent maximum gives zeta = z."""
    model, fit = fits["sleepstudy_corr"]
    table = bh.profile_intervals(model, fit)
    start = [fit.sigma, fit.sd["Intercept"], fit.sd["days"], fit.corr["Intercept,days"]]
    assert table["estimate"].tolist() == start
    for fixed, name in enumerate(["sigma", "sd[Intercept]", "sd[days]", "corr[Intercept,days]"]):
        for side, sign in (("lower", -1), ("upper", 1)):
            zeta = _independent_zeta(model, fit.loglik, "reml", fixed, table.loc[name, side], start, (0.1,))
            assert zeta == pytest.approx(sign * Z, abs=1e-6), (name, side)
    # the REML profile is not lme4's ML profile: the SD intervals are wider by about 4%
    ml = bh.profile_intervals(model, fit, method="ml")
    assert table.loc["sd[Intercept]", "upper"] / ml.loc["sd[Intercept]", "upper"] == pytest.approx(1.048, abs=2e-3)
    ml_fit = bh.fit_em(model, "ml")
    assert ml.loc["sd[Intercept]", "estimate"] == pytest.approx(ml_fit.sd["Intercept"], rel=1e-6)
    assert ml.loc["corr[Intercept,days]", "estimate"] == pytest.approx(ml_fit.corr["Intercept,days"], rel=1e-5)


@pytest.mark.parametrize("method", ["reml", "ml"])
def test_sigma_of_a_regression_has_its_closed_form(method):
    """Without groups ``2 (l_hat - l(s)) = m (r - 1 - log r)``, ``r = s_hat^2 / s^2``, ``m = N - p`` (REML) or ``N``."""
    model = bh.hlm("reaction ~ days", bh.load_dataset("sleepstudy"))
    fit = bh.fit_em(model, method)
    table = bh.profile_intervals(model, fit)
    assert list(table.index) == ["sigma"]
    m = model.n_obs - (2 if method == "reml" else 0)

    def excess(s):
        r = fit.sigma**2 / s**2
        return m * (r - 1 - np.log(r)) - Z**2

    lower = brentq(excess, fit.sigma / 2, fit.sigma, xtol=1e-14)
    upper = brentq(excess, fit.sigma, 2 * fit.sigma, xtol=1e-14)
    assert table.loc["sigma", "lower"] == pytest.approx(lower, rel=1e-9)
    assert table.loc["sigma", "upper"] == pytest.approx(upper, rel=1e-9)


def test_a_boundary_fit_with_known_variances():
    """Eight schools: SD estimate 0, no sigma; the profile is the likelihood itself, whose upper limit drops z^2/2."""
    model = bh.hlm("y ~ 1 + (1 | school)", bh.load_dataset("eight_schools"), known_sd="sigma")
    fit = bh.fit_em(model)
    table = bh.profile_intervals(model, fit)
    assert list(table.index) == ["sd[Intercept]"]
    assert table.loc["sd[Intercept]", "lower"] == 0.0
    upper = table.loc["sd[Intercept]", "upper"]
    assert fit.loglik - loglik_at(model, 1.0, np.array([[upper**2]])) == pytest.approx(Z**2 / 2, abs=1e-8)


def test_intervals_do_not_depend_on_units_or_location(fits):
    """Response x 1000 + 1e6, days in weeks: sigma and the intercept SD scale by 1000, the slope SD by 7000.

    The kernels see the same standardised statistics either way: measured, the limits agree
    to 2e-14 relative; held to 1e-10.
    """
    model, fit = fits["sleepstudy_corr"]
    table = bh.profile_intervals(model, fit)
    data = bh.load_dataset("sleepstudy").copy()
    data["reaction"] = data["reaction"] * 1000 + 1e6
    data["days"] = data["days"] / 7
    moved = bh.hlm("reaction ~ days + (days | subject)", data)
    other = bh.profile_intervals(moved, bh.fit_em(moved))
    factor = pd.Series({"sigma": 1000.0, "sd[Intercept]": 1000.0, "sd[days]": 7000.0, "corr[Intercept,days]": 1.0})
    for column in ("estimate", "lower", "upper"):
        np.testing.assert_allclose(other[column], table[column] * factor, rtol=1e-10, err_msg=column)


def test_profile_refuses_what_it_cannot_profile(fits):
    model, fit = fits["sleepstudy_corr"]
    with pytest.raises(ValueError, match="level"):
        bh.profile_intervals(model, fit, level=1.0)
    with pytest.raises(ValueError, match="method"):
        bh.profile_intervals(model, fit, method="laplace")
    other, _ = fits["radon_u_vi"]
    with pytest.raises(ModelMismatchError):
        bh.profile_intervals(other, fit)
    with pytest.raises(TypeError, match="EM fit"):
        bh.profile_intervals(model, {"sigma": 1.0})
    cbpp = bh.hlm("cbind(incidence, size - incidence) ~ C(period) + (1 | herd)", bh.load_dataset("cbpp"),
                  family="binomial")
    glmm = bh.fit_em(cbpp)
    for function in (bh.profile_intervals, lambda m, f: bh.bootstrap(m, f, 10)):
        with pytest.raises(NotImplementedError, match="binomial"):
            function(cbpp, glmm)


# ---------------------------------------------------------------------------------------- bootstrap
@pytest.fixture(scope="module")
def sleep_boot(fits):
    model, fit = fits["sleepstudy_corr"]
    return model, fit, bh.bootstrap(model, fit, 200, seed=20240607)


def test_bootstrap_spread_matches_the_standard_errors(sleep_boot):
    """The bootstrap SD of each fixed effect estimates its sampling SD, which the model-based SE also estimates.

    The relative Monte Carlo SE of an SD from ``n`` replicates is about ``1 / sqrt(2 (n - 1))``
    (5% at 200); the tolerance is 4 of them (false alarm 6e-5 per fixed effect). The
    estimated variance components add about 1% to the sampling SD, well inside it.
    """
    model, fit, boot = sleep_boot
    assert boot.n == 200 and boot.n_failed == 0 and len(boot.replicates) == 200
    assert list(boot.replicates.columns) == ["Intercept", "days", "sigma", "sd[Intercept]", "sd[days]",
                                             "corr[Intercept,days]"]
    n = len(boot.replicates)
    for term in model.fixed_names:
        sd = boot.replicates[term].std(ddof=1)
        assert abs(sd / fit.fixed_se[term] - 1) < 4 / np.sqrt(2 * (n - 1)), term
        # the fixed effects are simulated at the estimates: their replicates centre there (4 SE of a mean)
        assert abs(boot.replicates[term].mean() - fit.fixed[term]) < 4 * sd / np.sqrt(n), term
    # sigma: the REML estimate of a level-1 SD from 180 rows is unbiased to well within 4 SE of a mean
    assert abs(boot.replicates["sigma"].mean() - fit.sigma) < 4 * boot.replicates["sigma"].std() / np.sqrt(n)


def test_bootstrap_intervals(sleep_boot):
    _, fit, boot = sleep_boot
    table = boot.intervals()
    assert list(table.columns) == ["estimate", "se", "lower", "upper"]
    assert table.loc["sigma", "estimate"] == fit.sigma and table.loc["days", "estimate"] == fit.fixed["days"]
    reps = boot.replicates
    np.testing.assert_allclose(table["lower"], np.quantile(reps, 0.025, axis=0))
    np.testing.assert_allclose(table["se"], reps.std(ddof=1))
    basic = boot.intervals(0.9, kind="basic")
    np.testing.assert_allclose(basic.loc["days", "upper"], 2 * fit.fixed["days"] - np.quantile(reps["days"], 0.05))
    normal = boot.intervals(kind="normal")
    np.testing.assert_allclose(normal.loc["days", "upper"], fit.fixed["days"] + Z * reps["days"].std(ddof=1))
    assert normal.loc["corr[Intercept,days]", "upper"] <= 1.0 and basic["lower"].filter(like="sd[").min() >= 0
    with pytest.raises(ValueError, match="kind"):
        boot.intervals(kind="bca")
    with pytest.raises(ValueError, match="level"):
        boot.intervals(level=95)
    assert "200 refitted" in str(boot)


# forking with the BLAS's idle threads alive: Python 3.12+ warns (bayeshlm.bootstrap's docstring)
@pytest.mark.filterwarnings("ignore:.*is multi-threaded, use of fork:DeprecationWarning")
def test_bootstrap_is_reproducible_and_independent_of_n_jobs(sleep_boot):
    model, fit, boot = sleep_boot
    parallel = bh.bootstrap(model, fit, 200, seed=20240607, n_jobs=2)
    pd.testing.assert_frame_equal(parallel.replicates, boot.replicates)
    again = bh.bootstrap(model, fit, 30, seed=20240607)
    # replicate i draws from the i-th spawned seed: a shorter run is the start of a longer one
    pd.testing.assert_frame_equal(again.replicates, boot.replicates.iloc[:30])
    assert again.seed == 20240607
    other = bh.bootstrap(model, fit, 30, seed=1)
    assert not np.allclose(other.replicates.to_numpy(), again.replicates.to_numpy())
    fresh = bh.bootstrap(model, fit, 3)
    pd.testing.assert_frame_equal(bh.bootstrap(model, fit, 3, seed=fresh.seed).replicates, fresh.replicates)


def test_replicates_that_do_not_converge_are_counted_not_dropped(fits, monkeypatch):
    model, fit = fits["radon_u_vi"]
    calls = []

    def every_third_fails(m, method):
        result = bh.fit_em(m, method)
        calls.append(len(calls))
        return replace(result, converged=False) if len(calls) % 3 == 1 else result

    monkeypatch.setattr(intervals_module, "fit_em", every_third_fails)
    boot = bh.bootstrap(model, fit, 7, seed=3)
    assert boot.failed == (0, 3, 6) and boot.n_failed == 3
    assert list(boot.replicates.index) == [1, 2, 4, 5]
    assert "3 did not converge and are left out (replicates 0, 3, 6)" in str(boot)


@pytest.mark.parametrize("case", ["nested", "crossed"])
def test_simulated_responses_have_the_fitted_covariance(case):
    """The covariance of the simulated rows, by how two rows share groups, is the fit's: a sum of its variances.

    From 4000 draws in 20 batches, the batch means' spread gives the Monte Carlo SE; the
    tolerance is 4 of them.
    """
    if case == "nested":
        data = bh.load_dataset("pastes")
        model = bh.hlm("strength ~ 1 + (1 | batch/cask)", data)
        keys = [data["batch"].astype(str).to_numpy(), (data["batch"].astype(str) + ":" + data["cask"]).to_numpy()]
        names = ["Intercept|batch:cask", "Intercept|batch"]
    else:
        data = bh.simulate_crossed(12, 8, seed=5)
        model = bh.hlm("y ~ x + (1 | subject) + (1 | item)", data)
        keys = [data["subject"].to_numpy(), data["item"].to_numpy()]
        names = ["Intercept|subject", "Intercept|item"]
    fit = bh.fit_em(model)
    replicator = intervals_module._Replicator(model, fit)
    rng = np.random.default_rng(11)
    mean = replicator.mean
    sds = [fit.sd[name] for name in names]
    if case == "nested":
        variance = {"same cask": sds[0] ** 2 + sds[1] ** 2, "same batch only": sds[1] ** 2, "none": 0.0}
        cask, batch = keys[1][:, None] == keys[1][None, :], keys[0][:, None] == keys[0][None, :]
        share = {"same cask": cask, "same batch only": batch & ~cask, "none": ~batch}
    else:
        first = keys[0][:, None] == keys[0][None, :]
        second = keys[1][:, None] == keys[1][None, :]
        variance = {"both": sds[0] ** 2 + sds[1] ** 2, "first only": sds[0] ** 2, "second only": sds[1] ** 2,
                    "none": 0.0}
        share = {"both": first & second, "first only": first & ~second, "second only": ~first & second,
                 "none": ~first & ~second}
    off_diagonal = ~np.eye(model.n_obs, dtype=bool)
    batches = []
    for _ in range(20):
        Y = np.stack([replicator.simulate(rng) for _ in range(200)]) - mean
        S = Y.T @ Y / len(Y)
        row = {"variance": np.mean(np.diag(S))}
        row.update({name: np.mean(S[mask & off_diagonal]) for name, mask in share.items()
                    if np.any(mask & off_diagonal)})
        batches.append(row)
    batches = pd.DataFrame(batches)
    expected = {"variance": fit.sigma**2 + sds[0] ** 2 + sds[1] ** 2, **variance}
    for name in batches:
        se = batches[name].std(ddof=1) / np.sqrt(len(batches))
        assert abs(batches[name].mean() - expected[name]) < 4 * se + 1e-12, (name, batches[name].mean(), expected[name])


def test_bootstrap_refuses_bad_input(fits):
    model, fit = fits["radon_u_vi"]
    for n in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="n must be a positive integer"):
            bh.bootstrap(model, fit, n)
    with pytest.raises(ValueError, match="n_jobs"):
        bh.bootstrap(model, fit, 5, n_jobs=0)
    with pytest.raises(ModelMismatchError):
        bh.bootstrap(fits["pastes"][0], fit, 5)
    data = bh.load_dataset("radon")
    stats_only = bh.hlm_stats(COARSE["radon_u_vi"]["formula"], data, chunk_rows=300)
    with pytest.raises(ValueError, match="rows"):
        bh.bootstrap(stats_only, bh.fit_em(stats_only), 5)
