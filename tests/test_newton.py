"""The Newton proposal of binomial and Poisson models (``glm_move="newton"``, samplers/newton.py).

Its exactness is shown by SBC (tests/statistical/test_sbc_glmm.py) and the Geweke test
(tests/statistical/test_geweke.py); here: its Gaussian densities, the choice of the move and
of the SD's interweaving move, the posterior against the Pólya–Gamma chain's, the
log-likelihood it stores, and shifted and scaled predictors. Posterior comparisons allow 4.5
combined Monte Carlo standard errors (false alarm about 7e-6 per quantity).
"""

import json
import warnings

import arviz as az
import numpy as np
import pandas as pd
import pytest
import scipy.stats as sps
from numba import njit

import bayeshlm as bh
from bayeshlm.sample import group_of_rows, nest_pairs, shift_pairs
from samplers.fastexp import exp_neg
from samplers.glm import BINOMIAL_LOGIT
from samplers.newton import (
    N_WARM_FIXED_ACC,
    N_WARM_FIXED_PROP,
    _density,
    _draw,
    _pass,
    nest_shift_move,
    settle,
    shift_move,
    split_move,
    start,
)
from samplers.types import FixedPrior, distinct_columns, newton_rows

PRIORS = {"fixed": bh.Normal(0, 5), "sd": bh.HalfNormal(2)}
Z_TOL = 4.5


def _binary(n_groups=20, rows=60, seed=0, x_shift=0.0, x_scale=1.0):
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(n_groups), rows)
    x = rng.normal(size=g.size)
    eta = -0.4 + 0.8 * x + 0.7 * rng.normal(size=n_groups)[g]
    y = rng.binomial(1, 1 / (1 + np.exp(-eta))).astype(float)
    return pd.DataFrame({"y": y, "x": x_shift + x_scale * x, "g": [f"g{j}" for j in g]})


def _settings(post):
    return json.loads(post.attrs["sampler"])


def _agree(p1, p2, name):
    """Means of one scalar quantity (chain and draw dimensions only) within Z_TOL combined MCSEs."""
    one, two = (p[name].squeeze(drop=True) for p in (p1, p2))
    assert set(one.dims) == set(two.dims) == {"chain", "draw"}, (name, one.dims)
    m1, m2 = float(one.mean()), float(two.mean())
    se = np.hypot(_mcse(one), _mcse(two))
    assert abs(m1 - m2) < Z_TOL * se, (name, m1, m2, se)


def _mcse(da):
    return float(az.mcse(da.to_dataset(name="v"), method="mean")["v"])


def test_proposal_densities_are_the_gaussian_ones():
    rng = np.random.default_rng(3)
    M = rng.normal(size=(3, 3))
    P = M @ M.T + 3 * np.eye(3)
    rhs = rng.normal(size=3)
    x = np.empty(3)
    mean, cov = np.linalg.solve(P, rhs), np.linalg.inv(P)
    work = rhs.copy()
    ok, log_q = _draw(P.copy(), work, np.random.default_rng(4), x, np.empty(3))
    assert work == pytest.approx(mean, rel=1e-12)  # the right-hand side becomes the mean
    exact = sps.multivariate_normal(mean, cov).logpdf(x) + 1.5 * np.log(2 * np.pi)
    assert ok and log_q == pytest.approx(exact, rel=1e-12)
    point = rng.normal(size=3)
    ok, value = _density(P.copy(), rhs.copy(), point)
    assert ok and value == pytest.approx(
        sps.multivariate_normal(mean, cov).logpdf(point) + 1.5 * np.log(2 * np.pi), rel=1e-12
    )
    ok, _ = _density(-np.eye(3), rhs.copy(), point)  # not positive definite: refused, not a wrong value
    assert not ok


@njit
def _exp_all(x, out):
    for i in range(x.shape[0]):
        out[i] = exp_neg(x[i])


def test_the_exponential_of_the_bernoulli_rows_is_numpys_within_two_units_in_the_last_place():
    rng = np.random.default_rng(3)
    x = np.concatenate([-rng.exponential(3.0, 200_000), -rng.uniform(0.0, 708.0, 20_000),
                        [0.0, -0.0, -1e-300, -np.log(2.0) / 128, -np.log(2.0) / 64, -1.0, -708.0]])
    out = np.empty_like(x)
    _exp_all(x, out)
    ref = np.exp(x)
    assert np.max(np.abs(out - ref) / np.spacing(ref)) <= 2.0
    assert out[-7] == 1.0 and out[-6] == 1.0
    edge = np.array([-745.0, -800.0, -np.inf, np.nan])  # subnormal, 0; NaN stays NaN, reading no table out of range
    out = np.empty_like(edge)
    _exp_all(edge, out)
    assert 0.0 < out[0] < 1e-320 and out[1] < 1e-320 and out[2] < 1e-320 and np.isnan(out[3])


@pytest.mark.parametrize("slopes", [False, True, "own"])
def test_the_pass_gives_each_groups_sums_and_log_likelihood(slopes):
    """The pass's sums and log-likelihoods, Bernoulli rows by the vectorised block and by ``_row``, against numpy.

    ``slopes="own"``: a group column that is no fixed column (the distinct columns differ from ``F``'s).
    """
    rng = np.random.default_rng(4)
    sizes = np.array([0, 1, 63, 64, 65, 100, 257])  # empty, partial and whole blocks of 64 rows
    starts = np.concatenate([[0], np.cumsum(sizes)])
    n = starts[-1]
    x = rng.normal(2015.0, 3.0, n)  # a shifted column: large predictors, |eta| up to about 40
    F = np.column_stack([np.ones(n), x - 2015.0, x / 100.0])
    X = {False: np.ones((n, 1)), True: F[:, :2].copy(), "own": np.column_stack([np.ones(n), rng.normal(0, 1e3, n)])}
    X = X[slopes]
    y = rng.binomial(1, 0.3, n).astype(float)
    a = np.array([-1.0, 0.8, 0.5])
    b = rng.normal(0.0, 2.0, (sizes.size, X.shape[1])) / np.r_[1.0, 1e3][: X.shape[1]]
    steps = rng.normal(0.0, 0.5, (sizes.size, X.shape[1])) / np.r_[1.0, 1e3][: X.shape[1]]
    moved = np.array([True, True, True, False, True, True, True])
    group = np.repeat(np.arange(sizes.size), sizes)

    def rows(bernoulli):
        nw = newton_rows(BINOMIAL_LOGIT, y, np.ones(n), np.zeros(n), F, X, starts, np.zeros((0, 2)),
                         np.zeros((sizes.size, 0)), bernoulli=bernoulli)
        start(nw, np.zeros(n), a, b)
        nw.cur[::2] = 1  # groups read either buffer
        nw.eta[1] = nw.eta[0]
        nw.L2[:] = np.nan
        _pass(nw, False, steps, moved)
        return nw

    eta = F @ a + np.einsum("ik,ik->i", X, b[group] + steps[group])
    prob = 1.0 / (1.0 + np.exp(-eta))
    w, s = prob * (1.0 - prob), y - prob
    ll = y * eta - np.logaddexp(0.0, eta)
    for nw in (rows(True), rows(False)):
        assert nw.cols.shape[0] == (4 if slopes == "own" else 3)  # the intercept and F's columns kept once
        for g in np.flatnonzero(moved):
            r = group == g
            want = {"L2": ll[r].sum(), "A2": np.tril(X[r].T @ (w[r, None] * X[r])), "h2": X[r].T @ s[r],
                    "FF2": np.tril(F[r].T @ (w[r, None] * F[r])), "Fr2": F[r].T @ s[r]}
            for name, value in want.items():
                got = getattr(nw, name)[g]
                got = np.tril(got) if got.ndim == 2 else got
                assert np.allclose(got, value, rtol=1e-11, atol=1e-11 * (1.0 + np.abs(value).max())), (name, g)
            assert np.allclose(nw.eta[1 - nw.cur[g], r], eta[r], rtol=1e-14, atol=1e-12)
        assert np.isnan(nw.L2[3])  # a group not moved is left alone


def _group_level_rows(seed=0):
    """Rows of 5 groups (one empty) with a random intercept and slope of ``x``, and fixed columns of every kind."""
    rng = np.random.default_rng(seed)
    sizes = np.array([3, 0, 4, 1, 5])
    starts = np.concatenate([[0], np.cumsum(sizes)])
    g = np.repeat(np.arange(sizes.size), sizes)
    x = rng.normal(2015.0, 2.0, g.size)  # a shifted slope
    z = rng.normal(0.0, 1e3, sizes.size)[g]  # a group-level predictor in large units
    w = rng.normal(size=g.size)  # varies within groups: no pair
    F = np.column_stack([np.ones(g.size), x, z, w, x * z / 7.0, 2015.0 + 0.0 * z])
    X = np.column_stack([np.ones(g.size), x])
    return F, X, starts, g, z


def test_shift_pairs_find_the_fixed_columns_that_are_group_columns_times_a_group_value():
    F, X, starts, g, z = _group_level_rows()
    pairs, coef = shift_pairs(F, X, g[:, None], [0, 2], 5)
    assert pairs.tolist() == [[0, 0], [1, 1], [2, 0], [4, 1], [5, 0]]  # not w, which varies within groups
    zg = np.zeros(5)
    zg[g] = z
    want = np.column_stack([np.ones(5), np.ones(5), zg, zg / 7.0, np.full(5, 2015.0)])
    want[1] = 0.0  # the group without rows
    np.testing.assert_allclose(coef, want, rtol=1e-12)
    assert shift_pairs(F[:, [3]], X, g[:, None], [0, 2], 5)[0].shape == (0, 2)
    # every row must fit, the small ones too: z in thousands, but one group's values tiny and varying
    near = z.copy()
    near[g == 0] = 1e-10 * np.arange(1.0, 4.0)
    assert shift_pairs(near[:, None], X, g[:, None], [0, 2], 5)[0].shape == (0, 2)


def test_the_shift_leaves_every_predictor_as_it_was_and_draws_from_the_priors():
    """The move changes ``a`` and ``b`` but no ``eta_i``; with one pair, ``s`` is Gaussian with the stated moments."""
    F, X, starts, g, _ = _group_level_rows(1)
    pairs, coef = shift_pairs(F, X, g[:, None], [0, 2], 5)
    n = F.shape[0]
    nw = newton_rows(BINOMIAL_LOGIT, np.zeros(n), np.ones(n), np.zeros(n), F, X, starts, pairs, coef)
    rng = np.random.default_rng(2)
    p, d = F.shape[1], X.shape[1]
    prec = np.diag(rng.uniform(0.5, 2.0, p))
    fixed = FixedPrior(prec, prec @ rng.normal(size=p), 0.0, 0)
    Ti = np.array([[2.0, 0.3], [0.3, 0.5]])
    a, b = rng.normal(size=p), rng.normal(size=(5, d))
    eta = F @ a + np.sum(X * b[g], axis=1)
    a1, b1 = a.copy(), b.copy()
    shift_move(np.random.default_rng(3), nw, fixed, a1, b1, Ti)
    assert not np.allclose(a1, a)
    np.testing.assert_allclose(F @ a1 + np.sum(X * b1[g], axis=1), eta, rtol=1e-10, atol=1e-9 * np.abs(eta).max())
    # one pair (the intercept's, c_g = 1 for groups with rows): s ~ N(m, 1/P) with the prior moments
    one = newton_rows(BINOMIAL_LOGIT, np.zeros(n), np.ones(n), np.zeros(n), F, X, starts, pairs[:1],
                      coef[:, :1])
    shifts = []
    for seed in range(4000):
        a1, b1 = a.copy(), b.copy()
        shift_move(np.random.default_rng(seed), one, fixed, a1, b1, Ti)
        shifts.append(a1[0] - a[0])
    c = coef[:, 0]
    P = prec[0, 0] + Ti[0, 0] * np.sum(c * c)
    m = (fixed.lin[0] - prec[0] @ a + np.sum(c * (b @ Ti[0]))) / P
    assert abs(np.mean(shifts) - m) < 4.5 / np.sqrt(P * 4000)  # false alarm about 7e-6
    assert abs(np.var(shifts) * P - 1.0) < 4.5 * np.sqrt(2.0 / 4000)


def _nested_rows(seed=0):
    """Rows of 4 groups ``H`` holding 1 to 3 groups ``j`` each (7 in all), with intercepts at both levels."""
    rng = np.random.default_rng(seed)
    parent = np.array([7, 7, 8, 9, 9, 9, 10, -1, -1, -1, -1])  # finest 0..6, then the 4 coarser groups
    sizes = np.array([2, 3, 1, 4, 2, 2, 3])
    starts = np.concatenate([[0], np.cumsum(sizes)])
    g = np.repeat(np.arange(7), sizes)
    x = rng.normal(size=g.size)
    X = np.column_stack([np.ones(g.size), np.ones(g.size)])  # columns: j's intercept, then H's
    F = np.column_stack([np.ones(g.size), x])
    return F, X, starts, g, parent


def test_nested_groups_find_their_rows_and_shared_columns():
    F, X, starts, g, parent = _nested_rows()
    node = group_of_rows(g, parent, 2)
    assert node[:, 1].tolist() == [7] * 5 + [8] + [9] * 8 + [10] * 3
    assert nest_pairs(distinct_columns(F, X)[1][F.shape[1]:], [0, 1, 2]).tolist() == [[0, 1]]
    pairs, coef = shift_pairs(F, X, node, [0, 1, 2], 11)
    assert pairs.tolist() == [[0, 0], [0, 1]]  # the fixed intercept with either factor's
    np.testing.assert_array_equal(coef[:, 0], [1.0] * 7 + [0.0] * 4)
    np.testing.assert_array_equal(coef[:, 1], [0.0] * 7 + [1.0] * 4)
    n = g.size
    nw = newton_rows(BINOMIAL_LOGIT, np.zeros(n), np.ones(n), np.zeros(n), F, X, starts, pairs, coef,
                     level_ptr=[0, 1, 2], node_ptr=[0, 7, 11], parent=parent,
                     nest_pairs=nest_pairs(distinct_columns(F, X)[1][F.shape[1]:], [0, 1, 2]))
    assert nw.anc[:, 1].tolist() == [7, 7, 8, 9, 9, 9, 10]
    assert [nw.kids[nw.kid_ptr[j]:nw.kid_ptr[j + 1]].tolist() for j in (3, 7, 9)] == [[3], [0, 1], [3, 4, 5]]


def test_the_nested_moves_keep_every_total_and_move_the_split():
    """``nest_shift_move`` and ``split_move`` change ``b_H`` and ``b_j`` (and the SDs) but no ``b_j + b_H``."""
    F, X, starts, g, parent = _nested_rows(1)
    model = bh.hlm("y ~ x + (1 | h/j)", pd.DataFrame({"y": np.arange(g.size) % 3, "x": F[:, 1], "j": g,
                                                      "h": parent[g]}), family="poisson", priors=PRIORS)
    structure, priors = model.structure, model.priors
    assert structure.level_ptr.tolist() == [0, 1, 2] and structure.node_ptr.tolist() == [0, 7, 11]
    j_parent = structure.parent[:7]
    n = g.size
    nw = newton_rows(BINOMIAL_LOGIT, np.zeros(n), np.ones(n), np.zeros(n), F, X, starts,
                     np.zeros((0, 2)), np.zeros((11, 0)), level_ptr=structure.level_ptr,
                     node_ptr=structure.node_ptr, parent=structure.parent, nest_pairs=[[0, 1]])
    rng = np.random.default_rng(2)
    b = np.zeros((11, 2))
    b[:7, 0] = rng.normal(size=7)
    b[7:, 1] = rng.normal(size=4)
    totals = b[:7, 0] + b[j_parent, 1]
    Ti = np.diag([1.0 / 0.7**2, 1.0 / 0.4**2])
    theta = np.zeros(model.n_theta)
    theta[structure.sd_idx] = np.arcsinh(np.array([0.7, 0.4]) / structure.diag_scale)
    for move in ("shift", "split"):
        b1, theta1 = b.copy(), theta.copy()
        if move == "shift":
            nest_shift_move(np.random.default_rng(3), nw, b1, Ti)
        else:
            split_move(np.random.default_rng(3), nw, theta1, structure, priors, b1)
            assert not np.allclose(theta1, theta)
        assert not np.allclose(b1[7:, 1], b[7:, 1]), move
        np.testing.assert_allclose(b1[:7, 0] + b1[j_parent, 1], totals, rtol=1e-12, atol=1e-12, err_msg=move)
        assert np.all(b1[:7, 1] == 0.0) and np.all(b1[7:, 0] == 0.0)  # each factor's own column only


def test_the_move_is_chosen_by_the_rows_per_group_and_refused_where_it_does_not_apply():
    many = bh.hlm("y ~ x + (1 | g)", _binary(10, 60), family="bernoulli", priors=PRIORS)
    few = bh.hlm("y ~ x + (1 | g)", _binary(10, 20), family="bernoulli", priors=PRIORS)
    run = {"draws": 20, "warmup": 20, "chains": 1, "seed": 1, "progress": False}
    post = bh.sample(many, **run)
    assert _settings(post)["glm_move"] == "newton" and _settings(post)["method"] == "gibbs"
    assert _settings(bh.sample(few, **run))["glm_move"] == "augment"
    assert _settings(bh.sample(few, glm_move="newton", **run))["glm_move"] == "newton"
    assert _settings(bh.sample(many, glm_move="augment", **run))["method"] == "mh"
    with pytest.raises(ValueError, match="glm_move must be one of"):
        bh.sample(many, glm_move="laplace", **run)
    with pytest.raises(ValueError, match="use method='gibbs'"):
        bh.sample(many, glm_move="newton", method="mh", **run)
    data = _binary(12, 10)
    data["h"] = [f"h{int(s[1:]) % 3}" for s in data["g"]]
    data["k"] = [f"k{i % 4}" for i in range(len(data))]
    nested = bh.hlm("y ~ x + (1 | h/g)", data, family="bernoulli", priors=PRIORS)
    assert _settings(bh.sample(nested, **run))["glm_move"] == "augment"  # auto: 10 rows a finest group
    with warnings.catch_warnings():  # a short run: its R-hat is not the point
        warnings.simplefilter("ignore", bh.ConvergenceWarning)
        chosen = _settings(bh.sample(nested, glm_move="newton", **run))
    assert chosen["glm_move"] == "newton" and set(chosen["interweave_by_factor"]) == {"h:g", "h"}
    with warnings.catch_warnings():  # k's labels are the same in every g: fitted as crossed, as meant here
        warnings.simplefilter("ignore", bh.NestingWarning)
        crossed = bh.hlm("y ~ x + (1 | g) + (1 | k)", data, family="bernoulli", priors=PRIORS)
    with pytest.raises(ValueError, match="nested grouping factors.*g, k.*crossed.*glm_move='augment'"):
        bh.sample(crossed, glm_move="newton", **run)
    assert _settings(bh.sample(crossed, **run))["glm_move"] == "augment"
    counts = data.assign(y=np.arange(len(data)) % 3)
    poisson = bh.hlm("y ~ x + (1 | g)", counts, family="poisson", priors=PRIORS)
    assert _settings(bh.sample(poisson, **run))["glm_move"] == "newton"  # auto: counts always
    assert _settings(bh.sample(poisson, method="mh", **run))["glm_move"] == "augment"  # MH moves: the augmentation


@pytest.mark.parametrize("accepted, moves", [(None, 1), (0.95, 1), (0.9, 1), (0.85, 2), (0.8, 2), (0.7, 3), (0.3, 3)])
def test_warm_up_sets_the_fixed_effects_moves_a_sweep(accepted, moves):
    y = np.array([0.0, 1.0, 1.0])
    nw = newton_rows(BINOMIAL_LOGIT, y, np.ones(3), np.zeros(3), np.ones((3, 2)), np.ones((3, 1)),
                     np.array([0, 3]), np.zeros((0, 2)), np.zeros((1, 0)))
    if accepted is not None:
        nw.cnt[N_WARM_FIXED_PROP], nw.cnt[N_WARM_FIXED_ACC] = 200.0, 200.0 * accepted
    settle(nw)
    assert nw.fixed_moves[0] == moves


def test_the_sd_move_is_chosen_by_the_groups_information_and_refused_where_it_does_not_apply():
    """cbpp's herds hold about 5.5 units of information each (56 trials, 11% incidence): interweaved."""
    run = {"draws": 20, "warmup": 20, "chains": 1, "seed": 1, "progress": False}
    cbpp = bh.hlm("cbind(incidence, size - incidence) ~ C(period) + (1 | herd)", bh.load_dataset("cbpp"),
                  family="binomial", priors=PRIORS)
    big = bh.hlm("y ~ x + (1 | g)", _binary(10, 200), family="bernoulli", priors=PRIORS)  # 200 x 0.23 each
    slopes = bh.hlm("y ~ x + (x | g)", _binary(10, 60), family="bernoulli", priors=PRIORS)
    with warnings.catch_warnings():  # short runs: their R-hat is not the point
        warnings.simplefilter("ignore", bh.ConvergenceWarning)
        chosen = _settings(bh.sample(cbpp, **run))
        assert chosen["interweave"] and 0.0 < chosen["sd_acceptance"] <= 1.0
        assert not _settings(bh.sample(big, **run))["interweave"]
        assert _settings(bh.sample(big, interweave=True, **run))["interweave"]
        assert not _settings(bh.sample(cbpp, interweave=False, **run))["interweave"]
        assert not _settings(bh.sample(slopes, **run))["interweave"]
        with pytest.raises(ValueError, match="2 coefficients per group"):
            bh.sample(slopes, interweave=True, **run)
        with pytest.raises(ValueError, match="interweave=True is a move of the Newton proposal"):
            bh.sample(cbpp, glm_move="augment", interweave=True, **run)
        with pytest.raises(ValueError, match="interweave must be True, False or None"):
            bh.sample(cbpp, interweave="yes", **run)


def test_posterior_agrees_with_the_polya_gamma_chain():
    model = bh.hlm(
        "cbind(incidence, size - incidence) ~ C(period) + (1 | herd)",
        bh.load_dataset("cbpp"),
        family="binomial",
        priors=PRIORS,
    )
    run = {"draws": 2000, "warmup": 500, "chains": 4, "seed": 5, "progress": False}
    newton = bh.sample(model, glm_move="newton", **run)
    augment = bh.sample(model, glm_move="augment", **run)
    settings = _settings(newton)
    assert settings["coefficient_acceptance"] > 0.8 and settings["fixed_acceptance"] > 0.5
    assert settings["interweave"] and settings["sd_acceptance"] > 0.5
    assert settings["fixed_moves"] == [3] * 4  # warm-up accepted about 72% of the fixed effects' proposals
    for t in newton.posterior["fixed_term"].values:
        _agree(newton.posterior.sel(fixed_term=t), augment.posterior.sel(fixed_term=t), "fixed")
    _agree(newton.posterior, augment.posterior, "herd_sd")
    first = newton.posterior["herd_effect"].isel(herd_coef=0)
    second = augment.posterior["herd_effect"].isel(herd_coef=0)
    for h in first["herd"].values[:5]:
        _agree(first.sel(herd=h).to_dataset(name="e"), second.sel(herd=h).to_dataset(name="e"), "e")


def test_a_group_level_predictor_agrees_with_the_polya_gamma_chain():
    """The shift along ``a_z + s``, ``b_g - z_g s`` (``shift_move``): the posterior is the augmentation's.

    SBC and the Geweke test are blind to a shift that breaks the predictor (``c_g = 1`` for
    every group): that chain's posterior is close to the prior, whose ranks are uniform. Here
    it gives the mean of the intercept at -0.04 against the augmentation's -1.16 (4.5 combined MCSEs
    are 0.38). The group-level predictor is in shifted units (a year around 2015).
    """
    data = pd.DataFrame(_binary(10, 25, seed=6))
    data["z"] = 2015.0 + 3.0 * data["g"].str[1:].astype(int)
    model = bh.hlm("y ~ x + z + (1 | g)", data, family="bernoulli", priors=PRIORS)
    run = {"draws": 2000, "warmup": 500, "chains": 4, "seed": 3, "progress": False}
    newton = bh.sample(model, glm_move="newton", **run)
    with warnings.catch_warnings():  # the augmentation's SD mixes slowly (R-hat 1.014); its MCSE says so
        warnings.simplefilter("ignore", bh.ConvergenceWarning)
        augment = bh.sample(model, glm_move="augment", method="gibbs", **run)
    assert _settings(newton)["glm_move"] == "newton"
    for t in newton.posterior["fixed_term"].values:
        _agree(newton.posterior.sel(fixed_term=t), augment.posterior.sel(fixed_term=t), "fixed")
    _agree(newton.posterior, augment.posterior, "g_sd")


def test_nested_counts_agree_with_the_augmented_chain():
    """grouseticks, ``(1 | location/brood)``: every step of the nested Newton sweep against the latent times' chain.

    Fixed effects, both SDs and the first location's and brood's effects within Z_TOL combined MCSEs.
    """
    data = bh.load_dataset("grouseticks")
    data["cheight"] = data["height"] - data["height"].mean()
    model = bh.hlm("ticks ~ C(year) + cheight + (1 | location/brood)", data, family="poisson", priors=PRIORS)
    run = {"draws": 2000, "warmup": 500, "chains": 4, "seed": 4, "progress": False}
    newton = bh.sample(model, **run)
    augment = bh.sample(model, glm_move="augment", method="mh", **run)
    settings = _settings(newton)
    assert settings["glm_move"] == "newton" and settings["coefficient_acceptance"] > 0.8
    for t in newton.posterior["fixed_term"].values:
        _agree(newton.posterior.sel(fixed_term=t), augment.posterior.sel(fixed_term=t), "fixed")
    for name in ("location_sd", "location_brood_sd"):
        _agree(newton.posterior, augment.posterior, name)
    for name in ("location_effect", "location_brood_effect"):
        one, two = (p[name].isel({p[name].dims[2]: 0, p[name].dims[3]: 0}) for p in (newton.posterior,
                                                                                 augment.posterior))
        _agree(one.to_dataset(name="e"), two.to_dataset(name="e"), "e")


def test_stored_log_likelihood_is_the_draws():
    data = _binary(8, 60, seed=2)
    model = bh.hlm("y ~ x + (1 | g)", data, family="bernoulli", priors=PRIORS)
    for mode in ("pointwise", "group"):
        with warnings.catch_warnings():  # a short run: its R-hat is not the point
            warnings.simplefilter("ignore", bh.ConvergenceWarning)
            post = bh.sample(model, draws=30, warmup=30, chains=2, seed=3, progress=False, log_likelihood=mode)
        assert _settings(post)["glm_move"] == "newton"
        p = post.posterior
        a0 = p["fixed"].sel(fixed_term="Intercept").values
        a1 = p["fixed"].sel(fixed_term="x").values
        effect = p["g_effect"].isel(g_coef=0)
        groups = list(effect["g"].values)
        gi = np.array([groups.index(s) for s in data["g"]])
        eta = a0[..., None] + a1[..., None] * data["x"].to_numpy() + effect.values[..., gi]
        rows = sps.bernoulli.logpmf(data["y"].to_numpy(), 1 / (1 + np.exp(-eta)))
        ll = post.log_likelihood["y"].values
        if mode == "group":
            rows = np.stack([rows[..., gi == j].sum(-1) for j in range(len(groups))], axis=-1)
        np.testing.assert_allclose(ll, rows, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("shift, scale, interweave", [(2015.0, 1.0, None), (0.0, 1e-3, None), (1e6, 1e4, None),
                                                      (1e6, 1e4, True)])
def test_shifted_and_scaled_predictors_give_the_same_posterior(shift, scale, interweave):
    """A flat prior on the fixed effects, so that the posterior moves with the predictor exactly."""
    run = {"draws": 1000, "warmup": 300, "chains": 4, "seed": 7, "progress": False, "glm_move": "newton",
           "interweave": interweave}
    priors = {"fixed": bh.Flat(), "sd": bh.HalfNormal(2)}
    base = bh.sample(bh.hlm("y ~ x + (1 | g)", _binary(12, 60, seed=4), family="bernoulli", priors=priors), **run)
    moved = bh.sample(
        bh.hlm(
            "y ~ x + (1 | g)", _binary(12, 60, seed=4, x_shift=shift, x_scale=scale), family="bernoulli", priors=priors
        ),
        **run,
    )
    # the slope in the moved units is that of x divided by scale; the intercept moves with the shift
    fixed = base.posterior["fixed"]
    moved_fixed = moved.posterior["fixed"]
    pairs = {
        "slope": (fixed.sel(fixed_term="x"), moved_fixed.sel(fixed_term="x") * scale),
        "intercept": (
            fixed.sel(fixed_term="Intercept"),
            moved_fixed.sel(fixed_term="Intercept") + moved_fixed.sel(fixed_term="x") * shift,
        ),
        "sd": (base.posterior["g_sd"], moved.posterior["g_sd"]),
    }
    for name, (one, two) in pairs.items():
        _agree(one.to_dataset(name=name), two.to_dataset(name=name), name)
    assert _settings(moved)["coefficient_acceptance"] > 0.8
    assert _settings(moved)["interweave"] == bool(interweave)
    assert _settings(moved)["fixed_moves"] == [1] * 4  # 720 rows: nearly every fixed-effect proposal accepted
