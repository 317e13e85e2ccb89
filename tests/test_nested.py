"""The Gaussian tree for nested grouping factors (:mod:`samplers.nested`) against dense algebra.

Random small problems with two and three nested grouping factors, group sizes from one row
up, one or two coefficients per factor: the upward pass must equal the dense multivariate
normal log-density of the response (fixed effects flat, normal, or given), and the downward
pass must give the exact posterior mean and, by Monte Carlo, the exact posterior covariance.
"""

import numpy as np
import pytest
from scipy import stats as sps

from samplers.nested import draw as tree_draw
from samplers.nested import effective_coefficients
from samplers.nested import upward as tree_upward
from samplers.nested import workspace_arrays as tree_workspace
from samplers.suffstats import compute_suffstats
from samplers.types import FixedPrior, Structure, flat_fixed_prior


def random_tree(rng, n_top, fanout):
    """Parent codes per factor, finest first: factor k has groups whose parents are in factor k+1."""
    counts = [n_top]
    parents = []
    for f in fanout:  # from the coarsest down
        kids = rng.integers(1, f + 1, size=counts[-1])
        parents.append(np.repeat(np.arange(counts[-1]), kids))
        counts.append(int(kids.sum()))
    counts = counts[::-1]  # finest first
    parents = parents[::-1]
    return counts, parents


def make_problem(seed, dims=(1, 1), p=2, n_top=3, fanout=(3,), max_rows=4, weights=False):
    rng = np.random.default_rng(seed)
    counts, parents = random_tree(rng, n_top, fanout)
    K = len(dims)
    assert len(counts) == K
    n1 = counts[0]
    rows = rng.integers(1, max_rows + 1, size=n1)
    g = np.repeat(np.arange(n1), rows)
    n = g.size
    D = sum(dims)
    X = rng.normal(size=(n, D))
    col = 0
    for dk in dims:
        X[:, col] = 1.0  # an intercept at every level
        col += dk
    F = np.column_stack([np.ones(n), rng.normal(size=(n, p - 1))])
    y = rng.normal(size=n) * 2.0
    w = rng.uniform(0.5, 2.0, size=n) if weights else np.ones(n)
    level_ptr = np.concatenate([[0], np.cumsum(dims)]).astype(np.int64)
    node_ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    parent = np.full(node_ptr[-1], -1, dtype=np.int64)
    for k in range(K - 1):
        parent[node_ptr[k]:node_ptr[k + 1]] = node_ptr[k + 1] + parents[k]
    blocks = list(dims)
    block_ptr = np.concatenate([[0], np.cumsum(blocks)]).astype(np.int64)
    structure = Structure(block_ptr=block_ptr, theta_ptr=np.zeros(len(blocks) + 1, dtype=np.int64), sigma_known=0,
                          diag_scale=np.ones(D), flip_bits=np.zeros(0, dtype=np.int64),
                          sd_idx=np.zeros(D, dtype=np.int64), level_ptr=level_ptr, node_ptr=node_ptr, parent=parent)
    C = np.zeros((D, D))
    for k in range(K):
        lo, hi = level_ptr[k], level_ptr[k + 1]
        A = np.tril(rng.normal(size=(hi - lo, hi - lo)))
        A[np.diag_indices(hi - lo)] = np.abs(A[np.diag_indices(hi - lo)]) + 0.3
        C[lo:hi, lo:hi] = A
    s2 = float(rng.uniform(0.5, 2.0))
    stats = compute_suffstats(y, F, X, g, n1, w)
    # dense design of every group coefficient: row i uses its group's ancestors at every level
    anc = np.zeros((n, K), dtype=np.int64)
    anc[:, 0] = g
    for k in range(1, K):
        anc[:, k] = parent[anc[:, k - 1]]
    cols = []
    Tblocks = []
    for k in range(K):
        lo, hi = level_ptr[k], level_ptr[k + 1]
        for node in range(node_ptr[k], node_ptr[k + 1]):
            Z = X[:, lo:hi] * (anc[:, k] == node)[:, None]
            cols.append(Z)
            Tblocks.append(C[lo:hi, lo:hi] @ C[lo:hi, lo:hi].T)
    Z = np.hstack(cols)
    from scipy.linalg import block_diag

    T = block_diag(*Tblocks)
    return dict(stats=stats, structure=structure, C=C, s2=s2, X=X, F=F, y=y, w=w, g=g, Z=Z, T=T, n=n, p=p, D=D,
                anc=anc)


CASES = [
    dict(dims=(1, 1), fanout=(3,)),
    dict(dims=(2, 1), fanout=(4,)),
    dict(dims=(1, 2), fanout=(3,), weights=True),
    dict(dims=(1, 1, 1), fanout=(3, 3)),
    dict(dims=(2, 1, 2), fanout=(2, 3), p=3, weights=True),
]


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_tree_upward_matches_dense_density(case, seed):
    pr = make_problem(seed, **CASES[case])
    n, p = pr["n"], pr["p"]
    V = pr["s2"] * np.diag(1.0 / pr["w"]) + pr["Z"] @ pr["T"] @ pr["Z"].T
    F, y = pr["F"], pr["y"]
    Vi = np.linalg.inv(V)
    A = F.T @ Vi @ F
    c = F.T @ Vi @ y
    work = tree_workspace(pr["stats"], pr["structure"])
    Lt, Ut, Acc, LA, cA, _ = work
    flat = flat_fixed_prior(p)
    ll, ok = tree_upward(pr["stats"], pr["structure"], pr["s2"], pr["C"], True, flat,
                         pr["stats"].Xty, 0.0, Lt, Ut, Acc, LA, cA)
    assert ok
    # flat fixed effects: the restricted likelihood
    expect = -0.5 * ((n - p) * np.log(2 * np.pi) + np.linalg.slogdet(V)[1] + np.linalg.slogdet(A)[1]
                     + y @ Vi @ y - c @ np.linalg.solve(A, c))
    np.testing.assert_allclose(ll, expect, rtol=1e-10)
    # normal prior on the fixed effects: the marginal density of y
    m0 = np.arange(p) * 0.3
    prec = np.full(p, 0.7)
    ll, ok = tree_upward(pr["stats"], pr["structure"], pr["s2"], pr["C"], True, _normal_prior(m0, np.diag(prec)),
                         pr["stats"].Xty, 0.0, Lt, Ut, Acc, LA, cA)
    expect = sps.multivariate_normal(F @ m0, V + F @ np.diag(1 / prec) @ F.T).logpdf(y)
    np.testing.assert_allclose(ll, expect, rtol=1e-10)
    # a correlated normal prior (the information form the internal basis produces)
    Q = np.random.default_rng(seed).normal(size=(p, p))
    P0 = Q @ Q.T + 0.5 * np.eye(p)
    ll, ok = tree_upward(pr["stats"], pr["structure"], pr["s2"], pr["C"], True, _normal_prior(m0, P0),
                         pr["stats"].Xty, 0.0, Lt, Ut, Acc, LA, cA)
    expect = sps.multivariate_normal(F @ m0, V + F @ np.linalg.inv(P0) @ F.T).logpdf(y)
    np.testing.assert_allclose(ll, expect, rtol=1e-10)
    # fixed effects given
    a = np.linspace(-1, 1, p)
    e = y - F @ a
    r = compute_suffstats(e, np.zeros((n, 0)), pr["X"], pr["g"], pr["stats"].n.shape[0], pr["w"]).Xty
    rtr = float(np.sum(pr["w"] * e * e))
    ll, ok = tree_upward(pr["stats"], pr["structure"], pr["s2"], pr["C"], False, flat, r, rtr,
                         Lt, Ut, Acc, LA, cA)
    expect = sps.multivariate_normal(np.zeros(n), V).logpdf(e)
    np.testing.assert_allclose(ll, expect, rtol=1e-10)


def _normal_prior(m0, P0):
    """``a ~ N(m0, P0^{-1})`` as a FixedPrior (information form)."""
    return FixedPrior(P0, P0 @ m0, float(m0 @ P0 @ m0 - np.linalg.slogdet(P0)[1]), 0)


def _dense_posterior(pr, m0, prec):
    """Posterior mean and covariance of ``[a, all group coefficients]`` under a normal prior on a."""
    F, Z = pr["F"], pr["Z"]
    W = np.diag(pr["w"]) / pr["s2"]
    G = np.hstack([F, Z])
    prior_prec = np.zeros((G.shape[1], G.shape[1]))
    p = F.shape[1]
    prior_prec[:p, :p] = np.diag(prec)
    prior_prec[p:, p:] = np.linalg.inv(pr["T"])
    P = G.T @ W @ G + prior_prec
    rhs = G.T @ W @ pr["y"]
    rhs[:p] += prec * m0
    cov = np.linalg.inv(P)
    return cov @ rhs, cov


def _flatten_b(pr, b):
    """The group coefficients of the kernel's (node, coef) layout in the dense column order."""
    st = pr["structure"]
    out = []
    for k in range(len(st.level_ptr) - 1):
        lo, hi = st.level_ptr[k], st.level_ptr[k + 1]
        out.append(b[st.node_ptr[k]:st.node_ptr[k + 1], lo:hi].ravel())
    return np.concatenate(out)


@pytest.mark.parametrize("case", range(len(CASES)))
def test_tree_draw_mean_is_posterior_mean(case):
    pr = make_problem(10 + case, **CASES[case])
    p = pr["p"]
    m0 = np.full(p, 0.2)
    prec = np.full(p, 0.5)
    Lt, Ut, Acc, LA, cA, beta = tree_workspace(pr["stats"], pr["structure"])
    tree_upward(pr["stats"], pr["structure"], pr["s2"], pr["C"], True, _normal_prior(m0, np.diag(prec)),
                pr["stats"].Xty, 0.0,
                Lt, Ut, Acc, LA, cA)
    a = np.empty(p)
    b = np.zeros((pr["structure"].node_ptr[-1], pr["D"]))
    tree_draw(np.random.default_rng(0), pr["structure"], pr["C"], Lt, Ut, LA, cA, beta, a, b, False)
    mean, _ = _dense_posterior(pr, m0, prec)
    np.testing.assert_allclose(np.concatenate([a, _flatten_b(pr, b)]), mean, rtol=1e-9, atol=1e-10)


def test_tree_draw_monte_carlo_matches_posterior_covariance():
    """Draws have the exact posterior covariance.

    For each coordinate the sample variance of ``n`` normal draws has relative standard error
    ``sqrt(2 / n)``; the test allows 5 standard errors on each of the coordinates (a false
    alarm rate below 1e-5 for the whole test, by the union bound) and checks the means
    within 5 standard errors too.
    """
    pr = make_problem(7, dims=(1, 1, 1), fanout=(2, 2), p=2, n_top=2)
    p = pr["p"]
    m0 = np.zeros(p)
    prec = np.full(p, 1.0)
    Lt, Ut, Acc, LA, cA, beta = tree_workspace(pr["stats"], pr["structure"])
    tree_upward(pr["stats"], pr["structure"], pr["s2"], pr["C"], True, _normal_prior(m0, np.diag(prec)),
                pr["stats"].Xty, 0.0,
                Lt, Ut, Acc, LA, cA)
    mean, cov = _dense_posterior(pr, m0, prec)
    rng = np.random.default_rng(3)
    n_draws = 20000
    out = np.empty((n_draws, mean.size))
    a = np.empty(p)
    b = np.zeros((pr["structure"].node_ptr[-1], pr["D"]))
    for s in range(n_draws):
        tree_draw(rng, pr["structure"], pr["C"], Lt, Ut, LA, cA, beta, a, b, True)
        out[s] = np.concatenate([a, _flatten_b(pr, b)])
    sd = np.sqrt(np.diag(cov))
    assert np.all(np.abs(out.mean(0) - mean) < 5 * sd / np.sqrt(n_draws))
    assert np.all(np.abs(out.var(0) / np.diag(cov) - 1) < 5 * np.sqrt(2 / n_draws))
    # one cross-level covariance: the finest group's coefficient with its parent's
    i, j = p, p + pr["structure"].node_ptr[1] + (pr["structure"].parent[0] - pr["structure"].node_ptr[1])
    rho = cov[i, j] / np.sqrt(cov[i, i] * cov[j, j])
    r_hat = np.corrcoef(out[:, i], out[:, j])[0, 1]
    assert abs(np.arctanh(r_hat) - np.arctanh(rho)) < 5 / np.sqrt(n_draws - 3)


def test_effective_coefficients_gather_ancestors():
    pr = make_problem(4, dims=(1, 2, 1), fanout=(2, 2))
    st = pr["structure"]
    b = np.random.default_rng(0).normal(size=(st.node_ptr[-1], pr["D"]))
    out = np.zeros((st.node_ptr[1], pr["D"]))
    effective_coefficients(st, b, out)
    for j in range(st.node_ptr[1]):
        node = j
        for k in range(3):
            lo, hi = st.level_ptr[k], st.level_ptr[k + 1]
            np.testing.assert_array_equal(out[j, lo:hi], b[node, lo:hi])
            node = st.parent[node]
