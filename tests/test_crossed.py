"""Crossed grouping factors: the passes against dense linear algebra, EM against lme4, the data layer.

The crossed passes (:mod:`samplers.crossed`) are checked against the same quantities computed
densely from ``V = s2 I + Z G Z'`` on small designs (two crossed factors with correlated
slopes, three crossed factors, crossed and nested together); the EB/ML fit against lme4's
``lmer`` on ScotsSec and on a simulated subjects x items panel (``tests/golden``).
"""

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import bayeshlm as bh
from bayeshlm.data import DataError, NestingWarning
from samplers import gaussian
from samplers.suffstats import compute_suffstats
from samplers.types import FixedPrior, Structure

GOLDEN = Path(__file__).parent / "golden"


# ---------------------------------------------------------------------------
# the passes against dense linear algebra


def _problem(seed, n_levels=(7, 4), sizes=(2, 1), fill=0.6, reps=2, p=2):
    """A random crossed design, its statistics and kernel structure, and the dense ``Z`` and ``G``."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in n_levels], indexing="ij"), -1).reshape(-1, len(n_levels))
    cells = grid[rng.random(len(grid)) < fill]
    rows = np.repeat(cells, rng.integers(1, reps + 1, size=len(cells)), axis=0)
    n = len(rows)
    F = np.column_stack([np.ones(n), rng.normal(size=(n, p - 1))])
    Xs = [np.column_stack([np.ones(n), rng.normal(size=(n, d - 1))]) for d in sizes]
    X = np.hstack(Xs)
    y = F @ rng.normal(size=p) + rng.normal(size=n)
    keys, cell_idx = np.unique(rows, axis=0, return_inverse=True)
    lp = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    npt = np.concatenate([[0], np.cumsum(n_levels)]).astype(np.int64)
    K, D = len(sizes), int(lp[-1])
    structure = Structure(
        block_ptr=lp.copy(), theta_ptr=np.zeros(K + 1, dtype=np.int64), sigma_known=0, diag_scale=np.ones(D),
        flip_bits=np.zeros(1, dtype=np.int64), sd_idx=np.zeros(D, dtype=np.int64), level_ptr=lp, node_ptr=npt,
        parent=np.full(npt[-1], -1, dtype=np.int64), cell_node=np.ascontiguousarray(keys + npt[:-1]))
    stats = compute_suffstats(y, F, X, cell_idx.ravel(), len(keys))
    C = np.zeros((D, D))
    for k in range(K):
        blk = slice(lp[k], lp[k + 1])
        C[blk, blk] = np.tril(rng.normal(size=(sizes[k], sizes[k]))) + 0.5 * np.eye(sizes[k])
    # dense Z and G, coefficients ordered factor by factor, group by group
    Z = np.zeros((n, sum(c * d for c, d in zip(n_levels, sizes, strict=True))))
    G = np.zeros((Z.shape[1], Z.shape[1]))
    off = 0
    for k, (n_k, d) in enumerate(zip(n_levels, sizes, strict=True)):
        Tk = C[lp[k]:lp[k + 1], lp[k]:lp[k + 1]] @ C[lp[k]:lp[k + 1], lp[k]:lp[k + 1]].T
        for g in range(n_k):
            at = rows[:, k] == g
            Z[at, off:off + d] = Xs[k][at]
            G[off:off + d, off:off + d] = Tk
            off += d
    return {"y": y, "F": F, "Z": Z, "G": G, "C": C, "structure": structure, "stats": stats}


def _flat_b(structure, b):
    """The kernels' ``b`` (one row per group, own factor's columns) as one vector in the order of ``Z``."""
    lp, npt = structure.level_ptr, structure.node_ptr
    return np.concatenate([b[g, lp[k]:lp[k + 1]] for k in range(len(lp) - 1) for g in range(npt[k], npt[k + 1])])


DESIGNS = {
    "two_factors_slopes": {"n_levels": (7, 4), "sizes": (2, 1)},
    "two_factors_intercepts": {"n_levels": (9, 5), "sizes": (1, 1), "fill": 0.4},
    "three_factors": {"n_levels": (6, 4, 3), "sizes": (1, 2, 1)},
    "three_factors_intercepts": {"n_levels": (7, 4, 3), "sizes": (1, 1, 1)},  # the scalar path of the passes
    "slopes_on_both": {"n_levels": (8, 5), "sizes": (2, 2), "p": 3},
    # more than crossed.SMALL_DENSE coefficients outside the largest factor: the dense rest
    # is factored by LAPACK's dpotrf and inverted by dpotri
    "wide_second_factor": {"n_levels": (30, 24), "sizes": (1, 2), "fill": 0.15, "reps": 1},
}


@pytest.fixture(params=list(DESIGNS), scope="module")
def problem(request):
    P = _problem(1, **DESIGNS[request.param])
    P["work"] = gaussian.workspace(P["stats"], P["structure"])
    return P


def _integrate(P, s2, fixed):
    P["work"].C[:] = P["C"]
    return gaussian.integrate(P["work"], P["stats"], P["structure"], s2, fixed)


def test_restricted_likelihood_is_the_dense_one(problem):
    P, s2 = problem, 0.7
    y, F = P["y"], P["F"]
    n, p = F.shape
    ll, ok = _integrate(P, s2, FixedPrior(np.zeros((p, p)), np.zeros(p), 0.0, p))
    V = s2 * np.eye(n) + P["Z"] @ P["G"] @ P["Z"].T
    Vi = np.linalg.inv(V)
    A = F.T @ Vi @ F
    r = y - F @ np.linalg.solve(A, F.T @ Vi @ y)
    dense = -0.5 * ((n - p) * np.log(2 * np.pi) + np.linalg.slogdet(V)[1] + np.linalg.slogdet(A)[1] + r @ Vi @ r)
    assert ok
    assert ll == pytest.approx(dense, rel=1e-12, abs=1e-9)


def test_likelihood_with_a_proper_prior_and_given_fixed_effects(problem):
    """``a ~ N(m0, P0^{-1})`` integrated out, and ``a`` given (the MH target), against dense Gaussians."""
    from scipy.stats import multivariate_normal

    P, s2 = problem, 1.3
    y, F = P["y"], P["F"]
    n, p = F.shape
    m0 = np.linspace(-1.0, 1.0, p)
    P0 = np.diag(np.linspace(0.5, 2.0, p))
    fixed = FixedPrior(P0, P0 @ m0, float(m0 @ P0 @ m0 - np.linalg.slogdet(P0)[1]), 0)
    ll, ok = _integrate(P, s2, fixed)
    V = s2 * np.eye(n) + P["Z"] @ P["G"] @ P["Z"].T
    assert ok
    assert ll == pytest.approx(multivariate_normal(F @ m0, V + F @ np.linalg.inv(P0) @ F.T).logpdf(y), rel=1e-12)
    a = np.linspace(0.5, -0.5, p)
    r = np.zeros_like(P["stats"].Xty)
    from samplers.suffstats import residual_stats

    rtr = residual_stats(P["stats"], a, r)
    ll_a, ok = gaussian.integrate_given_a(P["work"], P["stats"], P["structure"], s2, r, rtr)
    assert ok
    assert ll_a == pytest.approx(multivariate_normal(F @ a, V).logpdf(y), rel=1e-12)


def _joint(P, s2):
    """Precision and mean of ``(b, a)`` given ``y`` and the variance components, flat prior on ``a``."""
    y, F, Z = P["y"], P["F"], P["Z"]
    q = Z.shape[1]
    M = np.block([[Z.T @ Z / s2 + np.linalg.inv(P["G"]), Z.T @ F / s2], [F.T @ Z / s2, F.T @ F / s2]])
    return M, np.linalg.solve(M, np.concatenate([Z.T @ y, F.T @ y]) / s2), q


def test_eb_moments_are_the_dense_ones(problem):
    P, s2 = problem, 0.7
    st = P["structure"]
    p = P["F"].shape[1]
    D = P["C"].shape[0]
    _integrate(P, s2, FixedPrior(np.zeros((p, p)), np.zeros(p), 0.0, p))
    n_nodes = int(st.node_ptr[-1])
    a, b, V, A_inv = np.zeros(p), np.zeros((n_nodes, D)), np.zeros((n_nodes, D, D)), np.zeros((p, p))
    gaussian.group_moments(None, P["work"], P["stats"], st, 0.7, a, b, V, A_inv)
    M, mean, q = _joint(P, s2)
    np.testing.assert_allclose(a, mean[q:], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(_flat_b(st, b), mean[:q], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(A_inv, np.linalg.inv(M)[q:, q:], rtol=1e-10, atol=1e-14)
    cov_b_given_a = np.linalg.inv(M[:q, :q])  # lme4's conditional variances: given the fixed effects
    lp, npt = st.level_ptr, st.node_ptr
    off = 0
    for k in range(len(lp) - 1):
        d = lp[k + 1] - lp[k]
        for g in range(npt[k], npt[k + 1]):
            np.testing.assert_allclose(V[g, lp[k]:lp[k + 1], lp[k]:lp[k + 1]], cov_b_given_a[off:off + d, off:off + d],
                                       rtol=1e-10, atol=1e-14)
            off += d


def test_joint_draws_have_the_dense_mean_and_covariance(problem):
    """4000 exact draws of ``(b, a)``: every mean and covariance entry within Monte Carlo error.

    z-scores of the means are standard normal; over the at most 60 of them a bound of 4.5
    is crossed by chance with probability below 60 * 6.8e-6 = 4e-4. The covariance entries'
    z-scores (with the normal-theory variance of a sample covariance) get 5.5: below 2e-3
    over the at most 1800 entries, seeded.
    """
    P, s2 = problem, 0.7
    st = P["structure"]
    p = P["F"].shape[1]
    D = P["C"].shape[0]
    _integrate(P, s2, FixedPrior(np.zeros((p, p)), np.zeros(p), 0.0, p))
    M, mean, q = _joint(P, s2)
    Sig = np.linalg.inv(M)
    rng = np.random.default_rng(3)
    n_nodes = int(st.node_ptr[-1])
    a, b = np.zeros(p), np.zeros((n_nodes, D))
    S = 4000
    draws = np.empty((S, q + p))
    for i in range(S):
        gaussian.draw_coefficients(rng, P["work"], P["stats"], st, s2, a, b, True)
        draws[i, :q] = _flat_b(st, b)
        draws[i, q:] = a
    z_mean = (draws.mean(0) - mean) / np.sqrt(np.diag(Sig) / S)
    se_cov = np.sqrt((Sig**2 + np.outer(np.diag(Sig), np.diag(Sig))) / S)
    z_cov = (np.cov(draws.T) - Sig) / se_cov
    assert np.abs(z_mean).max() < 4.5
    assert np.abs(z_cov).max() < 5.5


@pytest.mark.parametrize("reml", [True, False])
def test_exact_score_matches_differences(problem, reml):
    P, s2 = problem, 0.9
    st, stats, work = P["structure"], P["stats"], P["work"]
    p = P["F"].shape[1]
    D = P["C"].shape[0]
    flat = FixedPrior(np.zeros((p, p)), np.zeros(p), 0.0, p)

    def loglik(C, s2):
        work.C[:] = C
        ll, _ = gaussian.integrate(work, stats, st, s2, flat)
        if not reml:  # the profiled ML likelihood, as samplers.ml.profile_loglik
            ll += np.sum(np.log(np.diag(work.LA))) - 0.5 * p * np.log(2 * np.pi)
        return ll

    C0 = P["C"]
    loglik(C0, s2)
    gC = np.zeros((D, D))
    d_s2 = gaussian.score(None, work, stats, st, s2, reml, gC)
    h = 1e-6
    for i, j in zip(*np.nonzero(C0), strict=True):
        up, down = C0.copy(), C0.copy()
        up[i, j] += h
        down[i, j] -= h
        numeric = (loglik(up, s2) - loglik(down, s2)) / (2 * h)
        assert gC[i, j] == pytest.approx(numeric, abs=1e-6 * max(1.0, abs(gC[i, j])))
    assert d_s2 == pytest.approx((loglik(C0, s2 + h) - loglik(C0, s2 - h)) / (2 * h), rel=1e-6, abs=1e-6)


# ---------------------------------------------------------------------------
# EM against lme4


@pytest.fixture(scope="module")
def golden():
    return json.loads((GOLDEN / "crossed_fits.json").read_text())


@pytest.fixture(scope="module")
def scotssec():
    return bh.load_dataset("scotssec")


def _lme4(name):
    return "(Intercept)" if name == "Intercept" else name


def _assert_matches_lme4(fit, ref, sd_of, corr_of=None):
    """Log-likelihood to 1e-8 relative; estimates to 1e-5 relative unless our log-likelihood is higher."""
    assert fit.converged
    assert fit.loglik == pytest.approx(ref["logLik"], rel=1e-8)
    higher = fit.loglik > ref["logLik"] + 1e-9
    rel = 1e-3 if higher else 1e-5
    for name, value in fit.fixed.items():
        key = {"sex[T.M]": "sexM"}.get(name, _lme4(name))
        assert value == pytest.approx(ref["fixef"][key], rel=rel, abs=1e-6)
        assert fit.fixed_se[name] == pytest.approx(ref["se"][key], rel=1e-3)
    assert fit.sigma == pytest.approx(ref["sigma"], rel=rel)
    for name, value in fit.sd.items():
        assert value == pytest.approx(sd_of(name), rel=rel, abs=1e-6), name
    for name, value in (fit.corr or {}).items():
        assert value == pytest.approx(corr_of(name), abs=1e-4), name


@pytest.mark.parametrize("method", ["reml", "ml"])
def test_scotssec_fit_agrees_with_lme4(golden, scotssec, method):
    ref = golden["scotssec"]["fits"][method.upper()]
    model = bh.hlm(golden["scotssec"]["formula"], scotssec)
    assert model.crossed and model.factors == ("primary", "second")
    fit = bh.fit_em(model, method=method)
    _assert_matches_lme4(fit, ref, lambda name: ref["sd"][name.split("|")[1]])
    # the EB estimates of every school of both factors, matched by label (to 1e-4 of the factor's SD:
    # the REML optimum lies a little higher than lme4's, with the SD of 'second' 4e-5 relative above)
    b = fit.group_means
    labels = fit.labels["groups"]
    lp = model.structure.level_ptr
    for k, factor in enumerate(model.factors):
        ours = {lab.split("=", 1)[1]: b[i, lp[k]] for i, lab in enumerate(labels) if lab.startswith(f"{factor}=")}
        theirs = dict(zip(ref["ranef_labels"][factor], ref["ranef"][factor], strict=True))
        assert set(ours) == set(theirs)
        for lab, value in theirs.items():
            assert ours[lab] == pytest.approx(value, abs=1e-4 * ref["sd"][factor])


def _varcor(ref):
    """lme4's VarCorr rows by (factor, first, second) with '||' terms' '.1' suffixes removed."""
    return {(r["grp"].split(".")[0], r["var1"], r["var2"]): r["sdcor"] for r in ref["varcor"]}


@pytest.mark.parametrize("key", ["panel_slopes", "panel_nested"])
@pytest.mark.parametrize("method", ["reml", "ml"])
def test_panel_fits_agree_with_lme4(golden, key, method):
    """Correlated slopes on subjects, independent ones on items; and subjects nested in groups, crossed with items."""
    ref = golden[key]["fits"][method.upper()]
    vc = _varcor(ref)
    model = bh.hlm(golden[key]["formula"], pd.read_csv(GOLDEN / "crossed_panel.csv"))
    assert model.crossed
    fit = bh.fit_em(model, method=method)

    def sd_of(name):
        coef, factor = name.split("|")
        factor = {"group:subject": "subject:group"}.get(factor, factor)
        return vc[(factor, _lme4(coef), "")]

    def corr_of(name):
        pair, factor = name.split("|")
        first, second = pair.split(",")
        return vc[(factor, _lme4(first), _lme4(second))]

    _assert_matches_lme4(fit, ref, sd_of, corr_of)


def test_fit_does_not_depend_on_units_order_or_location(scotssec):
    """attain in thousandths around 1e6, verbal shifted to around 2015, the factors written the other way round."""
    model = bh.hlm("attain ~ verbal + sex + (1 | primary) + (1 | second)", scotssec)
    fit = bh.fit_em(model)
    moved = scotssec.assign(attain=1e6 + 1000.0 * scotssec["attain"], verbal=scotssec["verbal"] + 2015.0)
    other = bh.fit_em(bh.hlm("attain ~ sex + verbal + (1 | second) + (1 | primary)", moved))
    assert other.sd["Intercept|primary"] == pytest.approx(1000.0 * fit.sd["Intercept|primary"], rel=1e-6)
    assert other.sd["Intercept|second"] == pytest.approx(1000.0 * fit.sd["Intercept|second"], rel=1e-5)
    assert other.sigma == pytest.approx(1000.0 * fit.sigma, rel=1e-7)
    assert other.fixed["verbal"] == pytest.approx(1000.0 * fit.fixed["verbal"], rel=1e-7)
    assert other.fixed["sex[T.M]"] == pytest.approx(1000.0 * fit.fixed["sex[T.M]"], rel=1e-6)
    assert other.fixed["Intercept"] == pytest.approx(
        1e6 + 1000.0 * (fit.fixed["Intercept"] - 2015.0 * fit.fixed["verbal"]), rel=1e-10)
    # the REML log-likelihood changes by the Jacobian of the response's units only
    n, p = model.n_obs, len(model.fixed_names)
    assert other.loglik == pytest.approx(fit.loglik - (n - p) * np.log(1000.0), rel=1e-9)


def test_posterior_agrees_with_reml(scotssec):
    """Fixed effects within 0.2 posterior SD of REML (with 148 and 19 groups the weak priors barely act).

    Each has a bulk ESS above 1000 in this seeded run, so the Monte Carlo error of a
    posterior mean is under 0.032 posterior SD.
    """
    model = bh.hlm("attain ~ verbal + sex + (1 | primary) + (1 | second)", scotssec)
    fit = bh.fit_em(model)
    post = bh.sample(model, seed=5, progress=False, log_likelihood=False)
    summary = bh.summary(post)
    for name, value in fit.fixed.items():
        row = summary.loc[f"fixed[{name}]"]
        assert row["ess_bulk"] > 1000
        assert abs(row["mean"] - value) <= 0.2 * row["sd"], name


# ---------------------------------------------------------------------------
# the data layer


def test_crossed_design_has_cells(scotssec):
    model = bh.hlm("attain ~ verbal + (1 | second) + (1 | primary)", scotssec)
    design = model.design
    assert design.crossed and design.factors == ("primary", "second")  # most groups first
    pairs = scotssec[["primary", "second"]].astype(str).agg(":".join, axis=1)
    assert model.n_groups == pairs.nunique() == 303
    np.testing.assert_array_equal(design.group_labels[design.group_idx], pairs.to_numpy())
    for k, factor in enumerate(design.factors):
        np.testing.assert_array_equal(design.factor_labels[k][design.cell_codes[design.group_idx, k]],
                                      scotssec[factor].astype(str).to_numpy())
    assert "crossed grouping factors (303 cells occur)" in repr(model)


def test_recycled_labels_warn_and_suggest_nesting():
    """Casks a, b, c in every batch with two rows each: fitted as crossed, with the nested formula suggested."""
    pastes = bh.load_dataset("pastes")
    with pytest.warns(NestingWarning, match=r"write \(1 \| batch/cask\)") as record:
        model = bh.hlm("strength ~ (1 | batch) + (1 | cask)", pastes)
    assert model.crossed
    assert record[0].message.outer == "batch" and record[0].message.inner == "cask"
    with warnings.catch_warnings():
        warnings.simplefilter("error", NestingWarning)
        assert not bh.hlm("strength ~ (1 | batch/cask)", pastes).crossed


def test_crossed_with_one_row_per_cell_gets_no_warning():
    rng = np.random.default_rng(11)  # plates x samples, one measurement each (as lme4's Penicillin)
    data = pd.DataFrame({"y": rng.normal(size=144), "plate": np.repeat([f"p{i}" for i in range(24)], 6),
                         "sample": np.tile(list("ABCDEF"), 24)})
    with warnings.catch_warnings():
        warnings.simplefilter("error", NestingWarning)
        model = bh.hlm("y ~ (1 | plate) + (1 | sample)", data)
    assert model.crossed and model.n_groups == 144


def test_crossed_factors_defining_the_same_groups_are_refused(scotssec):
    df = scotssec.assign(p2="x" + scotssec["primary"].astype(str), third=scotssec["second"])
    with pytest.raises(DataError, match="'primary' and 'p2' define the same groups"):
        bh.hlm("attain ~ (1 | primary) + (1 | second) + (1 | p2)", df)


# ---------------------------------------------------------------------------
# downstream: predictions, leave-one-group-out, the level-by-level form, statistics by chunks


@pytest.fixture(scope="module")
def scots_fit(scotssec):
    model = bh.hlm("attain ~ verbal + sex + (1 | primary) + (1 | second)", scotssec)
    post = bh.sample(model, draws=400, warmup=400, chains=2, seed=3, progress=False)
    return model, post


def test_predictions_for_known_and_new_groups_of_either_factor(scots_fit, scotssec):
    model, post = scots_fit
    new = pd.DataFrame({"verbal": [0.0] * 4, "sex": ["M"] * 4, "primary": ["1", "999", "1", "998"],
                        "second": ["9", "9", "777", "776"]})
    mean = bh.predict(model, post, new, kind="mean", seed=1).values.reshape(-1, 4)
    a = post.posterior["fixed"].sel(fixed_term=["Intercept", "sex[T.M]"]).sum("fixed_term").values.reshape(-1)
    u = post.posterior["primary_effect"].sel(primary="1").values.reshape(-1)
    v = post.posterior["second_effect"].sel(second="9").values.reshape(-1)
    np.testing.assert_allclose(mean[:, 0], a + u + v, rtol=1e-12)  # both groups known: their own draws
    # a new primary school: its effect is drawn from N(0, tau_primary^2), the secondary's is its own
    spread = mean[:, 1] - a - v
    tau = post.posterior["primary_sd"].values.reshape(-1)
    z = spread / tau
    # 800 N(0, 1) draws: mean within 4.5 SE (1e-5 false alarms), SD within 4 SE of 1 (SE 0.025)
    assert abs(z.mean()) < 4.5 / np.sqrt(len(z)) and abs(z.std() - 1.0) < 0.1
    with pytest.raises(ValueError, match="'primary' group '99[89]' is not in the fitted data"):
        bh.predict(model, post, new, new_groups="raise")
    pop = bh.predict(model, post, new, kind="mean", new_groups="population").values.reshape(-1, 4)
    np.testing.assert_allclose(pop[:, 3], a, rtol=1e-12)  # both new: the population line
    np.testing.assert_allclose(pop[:, 2], a + u, rtol=1e-12)


def test_leave_one_group_out_of_either_factor(scots_fit, scotssec):
    """By primary and by secondary school; the group log-likelihood equals the dense marginal one."""
    from scipy.stats import multivariate_normal

    model, post = scots_fit
    for factor, n in (("primary", 148), ("second", 19)):
        ll = bh.marginal_group_log_likelihood(model, post, factor=factor)
        assert ll.shape[-1] == n
        res = bh.loo(model, post, by=factor)
        assert np.isfinite(float(res.elpd))
    # one draw, one secondary school, by dense algebra: its rows with the primaries' effects of the draw
    ll = bh.marginal_group_log_likelihood(model, post, factor="second")
    p = post.posterior
    second = str(p["second"].values[3])
    rows = scotssec["second"].astype(str).to_numpy() == second
    sub = scotssec[rows]
    a = p["fixed"].values[0, 0]
    u = p["primary_effect"].sel(primary=sub["primary"].astype(str).to_numpy()).values[0, 0, :, 0]
    mu = a[0] + a[1] * sub["verbal"].to_numpy() + a[2] * (sub["sex"] == "M").to_numpy() + u
    tau, sigma = p["second_sd"].values[0, 0, 0], p["sigma"].values[0, 0]
    cov = sigma**2 * np.eye(len(sub)) + tau**2
    assert ll[0, 0, 3] == pytest.approx(multivariate_normal(mu, cov).logpdf(sub["attain"].to_numpy()), rel=1e-9)


def test_cross_classified_level_is_the_mixed_model(scotssec):
    """HLM's HCM2 written level by level: each classification with its own predictors and random terms."""
    data = scotssec.assign(social_mean=scotssec.groupby("second")["social"].transform("mean"))
    h = bh.Hierarchy("attain", ["verbal", "sex"]).cross(
        {"primary": {"Intercept": bh.Equation()},
         "second": {"Intercept": bh.Equation("social_mean"), "verbal": bh.Equation()}}, covariance="diagonal")
    assert h.formula == "attain ~ 1 + social_mean + verbal + sex + (1 | primary) + (1 + verbal || second)"
    text = h.equations()
    assert "Level 2 (cross-classified: primary, second)" in text
    assert "b[Intercept] = g[Intercept] + g[social_mean]*social_mean + u[Intercept]_primary + v[Intercept]_second" \
        in text
    model = h.compile(data)
    mixed = bh.hlm(h.formula, data)
    assert model.crossed and model.fingerprint == mixed.fingerprint
    with pytest.raises(bh.FormulaError, match="top level"):
        h.level("region", {})
    with pytest.raises(bh.FormulaError, match="both the 'primary' and the 'second' classifications"):
        bh.Hierarchy("attain").cross({"primary": {"Intercept": bh.Equation("z")},
                                      "second": {"Intercept": bh.Equation("z")}})
    with pytest.warns(bh.GroupLevelWarning, match="'social'"):  # a pupil variable as a school predictor
        bh.Hierarchy("attain").cross({"primary": {"Intercept": bh.Equation()},
                                      "second": {"Intercept": bh.Equation("social")}}).compile(data)


def test_statistics_by_chunks_give_the_same_crossed_model(scotssec):
    formula = "attain ~ verbal + sex + (1 | primary) + (1 | second)"
    whole = bh.hlm(formula, scotssec)
    parts = bh.hlm_stats(formula, scotssec, chunk_rows=500)
    assert parts.crossed and parts.n_groups == whole.n_groups
    a, b = bh.fit_em(whole), bh.fit_em(parts)
    assert b.loglik == pytest.approx(a.loglik, rel=1e-12)
    for name in a.sd:
        assert b.sd[name] == pytest.approx(a.sd[name], rel=1e-7)


def test_saved_posterior_and_command_line(scots_fit, scotssec, tmp_path):
    model, post = scots_fit
    path = bh.save(post, tmp_path / "scots.nc")
    again = bh.load(path)
    assert again.attrs["grouping_factors"] == post.attrs["grouping_factors"]
    rebuilt = bh.model_from(again, scotssec)
    assert rebuilt.crossed and rebuilt.fingerprint == model.fingerprint
    csv = tmp_path / "scots.csv"
    scotssec.to_csv(csv, index=False)
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "bayeshlm", "em", str(csv),
                          "attain ~ verbal + (1 | primary) + (1 | second)"], capture_output=True, text=True,
                         check=True).stdout
    assert "sd[Intercept|primary]" in out and "sd[Intercept|second]" in out


# ---------------------------------------------------------------------------
# the factor-by-factor draw (method="blocked")


def test_draws_by_factor_leave_the_exact_conditional_invariant():
    """Many blocked sweeps at fixed variance components: mean and variances of (b, a) as the dense ones.

    12,000 sweeps in 40 batches of 300: batch means give Monte Carlo SEs that allow for the
    autocorrelation; |z| < 4.5 over the at most 40 means fails by chance with probability
    below 40 * 6.8e-6 (times the t(39) tail inflation, about 3): 1e-3. The variances get a
    10% band around the dense ones (their batch-means SE is about 3%).
    """
    P = _problem(2, n_levels=(6, 4), sizes=(2, 1), p=2)
    st, stats = P["structure"], P["stats"]
    work = gaussian.workspace(stats, st)
    work.C[:] = P["C"]
    s2 = 0.8
    p = P["F"].shape[1]
    fixed = FixedPrior(np.eye(p) * 0.01, np.zeros(p), float(-p * np.log(0.01)), 0)
    n_nodes, D = int(st.node_ptr[-1]), P["C"].shape[0]
    a, b = np.zeros(p), np.zeros((n_nodes, D))
    rng = np.random.default_rng(7)
    S = 12_000
    draws = np.empty((S, P["Z"].shape[1] + p))
    for i in range(S):
        assert gaussian.draw_by_factor(rng, work, stats, st, s2, fixed, a, b) >= 0.0
        draws[i] = np.concatenate([_flat_b(st, b), a])
    y, F, Z = P["y"], P["F"], P["Z"]
    M = np.block([[Z.T @ Z / s2 + np.linalg.inv(P["G"]), Z.T @ F / s2],
                  [F.T @ Z / s2, F.T @ F / s2 + 0.01 * np.eye(p)]])
    mean = np.linalg.solve(M, np.concatenate([Z.T @ y, F.T @ y]) / s2)
    var = np.diag(np.linalg.inv(M))
    batches = draws.reshape(40, 300, -1).mean(axis=1)
    z = (batches.mean(0) - mean) / (batches.std(0, ddof=1) / np.sqrt(40))
    assert np.abs(z).max() < 4.5
    np.testing.assert_allclose(draws.var(0), var, rtol=0.1)


def test_draw_by_factor_gives_the_residual_sum_of_squares():
    """The sum of squares the blocked draw returns (for the move on sigma) is that of its new (a, b)."""
    from samplers.gibbs import residual_ss

    for n_levels, sizes in (((6, 4), (2, 1)), ((5, 4, 3), (1, 2, 1))):
        P = _problem(5, n_levels=n_levels, sizes=sizes, p=2)
        st, stats = P["structure"], P["stats"]
        work = gaussian.workspace(stats, st)
        work.C[:] = P["C"]
        a, b = np.zeros(2), np.zeros((int(st.node_ptr[-1]), P["C"].shape[0]))
        rng = np.random.default_rng(1)
        for _ in range(3):
            rss = gaussian.draw_by_factor(rng, work, stats, st, 0.8, FixedPrior(np.eye(2), np.zeros(2), 0.0, 0), a, b)
            direct = residual_ss(stats, a, gaussian.finest_coefficients(work, st, b))
            assert rss == pytest.approx(direct, rel=1e-10)
            r = P["y"] - P["F"] @ a - P["Z"] @ _flat_b(st, b)
            assert rss == pytest.approx(r @ r, rel=1e-10)


def test_blocked_method_is_for_crossed_factors_and_agrees_with_the_exact_draw(scots_fit, scotssec):
    with pytest.raises(ValueError, match="method='blocked' draws crossed factors"):
        bh.sample(bh.hlm("attain ~ verbal + (1 | primary)", scotssec), method="blocked")
    model, exact = scots_fit
    post = bh.sample(model, method="blocked", draws=400, warmup=400, chains=2, seed=4, progress=False,
                     log_likelihood=False)
    for name in ("Intercept", "verbal", "sex[T.M]"):
        one, two = (p.posterior["fixed"].sel(fixed_term=name).values.ravel() for p in (exact, post))
        # 800 draws each with bulk ESS above 400: the means differ by < 5 SE of the difference (about 1e-6 by chance)
        se = np.sqrt(one.var() / 400 + two.var() / 400)
        assert abs(one.mean() - two.mean()) < 5 * se


def test_group_log_likelihood_of_crossed_factors_sums_the_rows(scotssec):
    """By group: each primary school's rows (the factor with most groups), the pointwise values summed."""
    model = bh.hlm("attain ~ verbal + sex + (1 | primary) + (1 | second)", scotssec)
    kwargs = {"draws": 30, "warmup": 30, "chains": 2, "seed": 9, "progress": False}
    by_obs = bh.sample(model, log_likelihood="pointwise", **kwargs).log_likelihood["attain"]
    by_group = bh.sample(model, log_likelihood="group", **kwargs).log_likelihood["attain"]
    assert by_group.dims == ("chain", "draw", "primary")
    summed = by_obs.groupby(xr.DataArray(scotssec["primary"].astype(str).to_numpy(), dims="obs",
                                         name="primary")).sum()
    expected = summed.sel(primary=by_group["primary"].values).transpose("chain", "draw", "primary")
    np.testing.assert_allclose(by_group.transpose("chain", "draw", "primary").values, expected.values, rtol=1e-10)


def test_pointwise_log_likelihood_of_crossed_factors_is_the_normal_density(scotssec):
    """Each row's value at each draw is log N(y | F a + u_primary + v_second, sigma^2), from the draws themselves;
    by group from the rows alone (statistics without the groups' F'WF) it is the same as from the statistics."""
    import dataclasses

    from scipy.stats import norm

    model = bh.hlm("attain ~ verbal + sex + (1 | primary) + (1 | second)", scotssec)
    kwargs = {"draws": 5, "warmup": 20, "chains": 2, "seed": 2, "progress": False}
    post = bh.sample(model, log_likelihood="pointwise", **kwargs)
    p = post.posterior
    F = np.column_stack([np.ones(len(scotssec)), scotssec["verbal"], (scotssec["sex"] == "M").astype(float)])
    a = p["fixed"].sel(fixed_term=["Intercept", "verbal", "sex[T.M]"]).values.reshape(-1, 3)
    u = p["primary_effect"].sel(primary=scotssec["primary"].astype(str).to_numpy()).values
    v = p["second_effect"].sel(second=scotssec["second"].astype(str).to_numpy()).values
    mu = a @ F.T + u.reshape(len(a), -1) + v.reshape(len(a), -1)
    sigma = p["sigma"].values.reshape(-1, 1)
    want = norm(mu, sigma).logpdf(scotssec["attain"].to_numpy())
    got = post.log_likelihood["attain"].values.reshape(len(a), -1)
    np.testing.assert_allclose(got, want, rtol=1e-10)
    from_stats = bh.sample(model, log_likelihood="group", **kwargs).log_likelihood["attain"].values
    rows_only = dataclasses.replace(model, stats=model.stats._replace(FtF_g=model.stats.FtF_g[:0]))
    from_rows = bh.sample(rows_only, log_likelihood="group", **kwargs).log_likelihood["attain"].values
    np.testing.assert_allclose(from_rows, from_stats, rtol=1e-10)


# ---------------------------------------------------------------------------
# moves on p(theta | y): the factors of the accepted proposal are the ones drawn from


@pytest.mark.parametrize("formula", ["attain ~ verbal + sex + (1 | primary) + (1 | second)",
                                     "attain ~ verbal + (1 | second/primary)"])
def test_marginal_moves_keep_the_factors_of_the_current_theta(scotssec, formula):
    """Sweep by sweep, the workspace the chain calls current holds the factors at its ``theta``.

    After every sweep of the moves on ``p(theta | y)`` (crossed factors by default; forced on
    a nested model here), ``state.scal[LP]`` must equal ``log p(y | theta) + log p(theta)``
    evaluated afresh, and a draw from the chain's current workspace must equal, to rounding,
    a draw with the same generator from a fresh factorisation at the chain's ``theta``. A
    slip in which workspace is current would draw the coefficients at a rejected proposal.
    """
    from bayeshlm.start import starting_theta
    from samplers.driver import init_state, run_chain
    from samplers.theta import decode_theta
    from samplers.types import CURRENT, LP, DrawStore, MHMoves, Schedule

    model = bh.hlm(formula, scotssec)
    st, S, pri = model.stats, model.structure, model.priors
    rng = np.random.default_rng(4)
    state = init_state(rng, starting_theta(model, rng, 0.5), st, S, pri)
    p, d, n_theta = st.Fty.shape[0], st.Xty.shape[1], model.n_theta
    warmup, total = 40, 70
    store = DrawStore(np.empty((total, n_theta)), np.empty((total, p)), np.zeros(0, dtype=np.int64),
                      np.empty((0, 0, d)), np.empty((0, 0, d)), np.empty(total), np.empty(total), np.eye(d))
    fresh = gaussian.workspace(st, S)
    n_moved = 0
    last = state.theta.copy()
    for it in range(total):
        run_chain(rng, state, st, S, pri, MHMoves(2, 1), Schedule(warmup, 1, it + 1), store)
        n_moved += not np.array_equal(last, state.theta)
        last = state.theta.copy()
        s2, log_prior = decode_theta(state.theta, S, pri, fresh.C)
        ll, ok = gaussian.integrate(fresh, st, S, s2, pri.fixed)
        assert ok
        assert state.scal[LP] == pytest.approx(ll + log_prior, rel=1e-12, abs=1e-9)
        current = state.work if state.ibuf[CURRENT] == 0 else state.scratch
        draws = []
        for work in (current, fresh):
            a, b = np.empty(p), np.zeros_like(state.b)
            gaussian.draw_coefficients(np.random.default_rng(it), work, st, S, s2, a, b, True)
            draws.append(np.concatenate([a, b.ravel()]))
        np.testing.assert_allclose(draws[0], draws[1], rtol=1e-9, atol=1e-12)
    assert n_moved > 20  # the moves were accepted often enough for the check to mean something
