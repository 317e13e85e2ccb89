"""Tests for the numerical core (``samplers``): linear algebra, statistics, the Gaussian tree.

Every kernel is checked against an independent dense NumPy / SciPy computation on small
random problems (docs/design.md, "The Gaussian passes"), the Monte Carlo checks use tolerances derived from
the exact Monte Carlo error with a stated false-alarm rate (STYLE.md section 8), and the
random inputs come from fixed seeds or from derandomised hypothesis examples.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from samplers.gibbs import draw_inv_wishart, residual_ss
from samplers.linalg import (
    chol_inplace,
    gaussian_from_precision,
    logdet_chol,
    solve_lower,
    solve_lower_cols,
    solve_upper,
)
from samplers.loglik import loglik_draws
from samplers.sd_priors import (
    PRIOR_FLAT,
    PRIOR_HALF_NORMAL,
    PRIOR_HALF_T,
    PRIOR_INV_GAMMA,
    PRIOR_UNIFORM,
)
from samplers.suffstats import compute_suffstats, merge_suffstats, residual_stats
from samplers.theta import covariances, decode_theta, encode_theta, sd_corr
from samplers.two_level import draw as draw_coefficients
from samplers.two_level import loglik_given_a, upward
from samplers.types import (
    FixedPrior,
    Priors,
    Structure,
)

LOG_2PI = np.log(2.0 * np.pi)
LOG2 = np.log(2.0)
REPO = Path(__file__).resolve().parents[1]

# Block structures of the group covariance, as tuples of block sizes.
BLOCKS = [(1,), (2,), (1, 1), (3,), (2, 1)]


# ---------------------------------------------------------------------------
# Builders of small problems (independent of the code under test)


def spd(rng, d, eps):
    """A random symmetric positive-definite matrix ``A A' + eps I``."""
    A = rng.normal(size=(d, d))
    return A @ A.T + eps * np.eye(d)


DIAG_SCALE = 0.7  # scale s of the signed SDs: tau = s sinh(theta)


def make_structure(blocks, sigma_known=0, n_groups=0):
    block_ptr = np.concatenate([[0], np.cumsum(blocks)]).astype(np.int64)
    sizes = [dk * (dk + 1) // 2 for dk in blocks]
    theta_ptr = (1 - sigma_known + np.concatenate([[0], np.cumsum(sizes)])).astype(np.int64)
    flip_bits = np.zeros(theta_ptr[-1], dtype=np.int64)
    sd_idx = np.zeros(block_ptr[-1], dtype=np.int64)
    for k, dk in enumerate(blocks):
        c0, t0 = block_ptr[k], theta_ptr[k]
        sd_idx[c0:c0 + dk] = t0 + np.arange(dk)
        flip_bits[t0:t0 + dk] = 1 << (c0 + np.arange(dk))
        rows, cols = np.tril_indices(dk, -1)  # row-major order of the correlations
        flip_bits[t0 + dk:t0 + dk + rows.size] = (1 << (c0 + rows)) | (1 << (c0 + cols))
    return Structure(block_ptr=block_ptr, theta_ptr=theta_ptr, sigma_known=int(sigma_known),
                     diag_scale=np.full(int(sum(blocks)), DIAG_SCALE), flip_bits=flip_bits,
                     sd_idx=sd_idx, level_ptr=np.array([0, sum(blocks)], dtype=np.int64),
                     node_ptr=np.array([0, n_groups], dtype=np.int64),
                     parent=np.full(n_groups, -1, dtype=np.int64))


def diag_fixed_prior(a_mean, a_prec):
    """Independent ``N(a_mean, 1 / a_prec)`` priors (flat where ``a_prec`` is 0) as a FixedPrior."""
    a_mean = np.asarray(a_mean, dtype=np.float64)
    a_prec = np.asarray(a_prec, dtype=np.float64)
    normal = a_prec > 0
    const = float(np.sum(a_prec[normal] * a_mean[normal] ** 2 - np.log(a_prec[normal])))
    return FixedPrior(np.diag(a_prec), a_prec * a_mean, const, int(np.sum(~normal)))


def make_priors(d, p=1, n_blocks=1, *, a_mean=None, a_prec=None, sigma_kind=PRIOR_FLAT,
                sigma_par=(1.0, 1.0), sd_kind=None, sd_par=None, block_iw=None, block_eta=None,
                iw_scale=None, block_map=None, prior_map=None):
    return Priors(
        fixed=diag_fixed_prior(np.zeros(p) if a_mean is None else a_mean, np.zeros(p) if a_prec is None else a_prec),
        sigma_kind=int(sigma_kind),
        sigma_par=np.array(sigma_par, dtype=np.float64),
        sd_kind=(np.zeros(d, dtype=np.int64) if sd_kind is None
                 else np.array(sd_kind, dtype=np.int64)),
        sd_par=np.ones((d, 2)) if sd_par is None else np.array(sd_par, dtype=np.float64),
        block_iw=(np.zeros(n_blocks, dtype=np.int64) if block_iw is None
                  else np.array(block_iw, dtype=np.int64)),
        block_eta=(np.ones(n_blocks) if block_eta is None
                   else np.array(block_eta, dtype=np.float64)),
        iw_scale=np.eye(d) if iw_scale is None else np.array(iw_scale, dtype=np.float64),
        block_map=(np.zeros(n_blocks, dtype=np.int64) if block_map is None
                   else np.array(block_map, dtype=np.int64)),
        prior_map=np.eye(d) if prior_map is None else np.array(prior_map, dtype=np.float64),
    )


def random_factor(rng, blocks, zero_diag=None):
    """Block-diagonal lower-triangular ``C`` with random entries (diagonal of either sign).

    ``zero_diag``, when given, is the index of a diagonal entry set to zero (singular ``T``).
    """
    d = sum(blocks)
    C = np.zeros((d, d))
    c0 = 0
    for dk in blocks:
        B = np.tril(rng.normal(size=(dk, dk)))
        B[np.diag_indices(dk)] = rng.choice([-1.0, 1.0], size=dk) * rng.uniform(0.3, 1.5, size=dk)
        C[c0:c0 + dk, c0:c0 + dk] = B
        c0 += dk
    if zero_diag is not None:
        C[zero_diag, zero_diag] = 0.0
    return C


def corr_chol_from_cpc(y, dk):
    """Cholesky factor of a correlation matrix from canonical partial correlations ``tanh(y)``
    (row by row), as documented in samplers/theta.py."""
    L = np.zeros((dk, dk))
    pos = 0
    for i in range(dk):
        for j in range(i):
            L[i, j] = np.tanh(y[pos]) * np.sqrt(1.0 - np.sum(L[i, :j] ** 2))
            pos += 1
        L[i, i] = np.sqrt(1.0 - np.sum(L[i, :i] ** 2))
    return L


def cpc_from_corr_chol(L):
    dk = L.shape[0]
    return np.array([np.arctanh(L[i, j] / np.sqrt(1.0 - np.sum(L[i, :j] ** 2)))
                     for i in range(dk) for j in range(i)])


def theta_from_factor(C, structure, log_sigma=None):
    """``theta`` of ``T = C C'`` (positive SDs) written in numpy from the documented map."""
    entries = [] if structure.sigma_known == 1 else [log_sigma]
    bp = structure.block_ptr
    for k in range(bp.shape[0] - 1):
        B = C[bp[k]:bp[k + 1], bp[k]:bp[k + 1]]
        T = B @ B.T
        tau = np.sqrt(np.diag(T))
        L = np.linalg.cholesky(T / np.outer(tau, tau))
        entries.extend(np.arcsinh(tau / structure.diag_scale[bp[k]:bp[k + 1]]))
        entries.extend(cpc_from_corr_chol(L))
    return np.array(entries, dtype=np.float64)


def reference_decode(theta, blocks, sigma_known):
    """Numpy version of the documented map: sigma, then per block signed SDs, R, T."""
    pos = 0 if sigma_known else 1
    out = []
    for dk in blocks:
        eta = theta[pos:pos + dk]
        y = theta[pos + dk:pos + dk * (dk + 1) // 2]
        pos += dk * (dk + 1) // 2
        tau = DIAG_SCALE * np.sinh(eta)
        L = corr_chol_from_cpc(y, dk)
        R = L @ L.T
        out.append((eta, y, tau, R, np.outer(tau, tau) * R))
    return out


def log_jac_cpc_to_corr(y, dk):
    """log |d offdiag(R) / d y| by central finite differences."""
    if dk == 1:
        return 0.0
    rows, cols = np.tril_indices(dk, -1)

    def f(v):
        L = corr_chol_from_cpc(v, dk)
        return (L @ L.T)[rows, cols]

    h = 1e-6
    J = np.empty((y.size, y.size))
    for k in range(y.size):
        e = np.zeros(y.size)
        e[k] = h
        J[:, k] = (f(y + e) - f(y - e)) / (2 * h)
    return np.linalg.slogdet(J)[1]


class Problem:
    """Rows of a two-level model: ``y = F a + X b_j + e``, with weights."""

    def __init__(self, rng, sizes, d, p, weighted):
        self.sizes = list(sizes)
        self.n_groups = len(sizes)
        self.g = np.repeat(np.arange(self.n_groups), sizes).astype(np.int64)
        rng.shuffle(self.g)  # rows of a group need not be adjacent
        n = self.g.shape[0]
        self.F = rng.normal(size=(n, p))
        self.F[:, 0] = 1.0
        self.X = rng.normal(size=(n, d))
        self.X[:, 0] = 1.0
        self.y = rng.normal(size=n) * 2.0 + 0.5
        self.w = rng.uniform(0.3, 3.0, size=n) if weighted else np.ones(n)
        self.stats = compute_suffstats(self.y, self.F, self.X, self.g, self.n_groups, self.w)

    @property
    def n(self):
        return self.y.shape[0]

    def Z(self):
        """Dense random design: row ``i`` holds ``X_i`` in the columns of its group."""
        d = self.X.shape[1]
        Z = np.zeros((self.n, self.n_groups * d))
        for i, j in enumerate(self.g):
            Z[i, j * d:(j + 1) * d] = self.X[i]
        return Z

    def V(self, s2, T):
        """Dense marginal covariance ``diag(s2 / w) + Z (I kron T) Z'`` of all rows."""
        Z = self.Z()
        return np.diag(s2 / self.w) + Z @ np.kron(np.eye(self.n_groups), T) @ Z.T


def dense_loglik(prob, s2, T, a_mean, a_prec):
    """``log p(y | theta)`` with ``a`` integrated out, from the dense ``N x N`` covariance."""
    V = prob.V(s2, T)
    Vi_F = np.linalg.solve(V, prob.F)
    Vi_y = np.linalg.solve(V, prob.y)
    A = prob.F.T @ Vi_F + np.diag(a_prec)
    c = prob.F.T @ Vi_y + a_prec * a_mean
    normal = a_prec > 0
    prior = np.sum(a_prec[normal] * a_mean[normal] ** 2 - np.log(a_prec[normal]))
    q_flat = int(np.sum(~normal))
    _, logdet_V = np.linalg.slogdet(V)
    _, logdet_A = np.linalg.slogdet(A)
    quad = prob.y @ Vi_y - c @ np.linalg.solve(A, c)
    return -0.5 * ((prob.n - q_flat) * LOG_2PI + logdet_V + logdet_A + quad + prior)


def dense_posterior(prob, s2, T, a_mean, a_prec):
    """Exact mean and covariance of ``(a, b_1, ..., b_J) | theta, y`` (GLS, two stages).

    ``a | y ~ N(A+^{-1} c+, A+^{-1})``; ``b | a, y ~ N(G (y - F a), Tb - G Z Tb)`` with
    ``Tb = I kron T`` and ``G = Tb Z' V^{-1}``. Valid for flat priors and singular ``T``.
    """
    V = prob.V(s2, T)
    Z = prob.Z()
    Tb = np.kron(np.eye(prob.n_groups), T)
    A = prob.F.T @ np.linalg.solve(V, prob.F) + np.diag(a_prec)
    c = prob.F.T @ np.linalg.solve(V, prob.y) + a_prec * a_mean
    cov_a = np.linalg.inv(A)
    mean_a = cov_a @ c
    G = np.linalg.solve(V, Z @ Tb).T
    B = -G @ prob.F
    mean_b = G @ (prob.y - prob.F @ mean_a)
    cov_b = Tb - G @ Z @ Tb + B @ cov_a @ B.T
    cov_ab = cov_a @ B.T
    mean = np.concatenate([mean_a, mean_b])
    cov = np.block([[cov_a, cov_ab], [cov_ab.T, cov_b]])
    return mean, 0.5 * (cov + cov.T)


def run_upward(prob, s2, C, a_mean, a_prec):
    n_groups, d = prob.stats.Xty.shape
    p = prob.F.shape[1]
    L = np.zeros((n_groups, d, d))
    LA = np.zeros((p, p))
    c = np.zeros(p)
    ll, ok = upward(prob.stats, float(s2), C, diag_fixed_prior(a_mean, a_prec), L, LA, c)
    return ll, ok, L, LA, c


def close(x, ref, rtol):
    return abs(x - ref) <= rtol * max(1.0, abs(ref))


@st.composite
def problems(draw):
    """Small random models: structure from hypothesis, numbers from a seeded generator."""
    n_groups = draw(st.integers(1, 6))
    sizes = draw(st.lists(st.integers(1, 5), min_size=n_groups, max_size=n_groups))
    blocks = draw(st.sampled_from(BLOCKS))
    d = sum(blocks)
    p = draw(st.integers(1, 3))
    weighted = draw(st.booleans())
    prec_kind = draw(st.sampled_from(["flat", "normal", "mixed"]))
    singular = draw(st.booleans())
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    prob = Problem(rng, sizes, d, p, weighted)
    if prec_kind == "flat":
        a_prec = np.zeros(p)
    elif prec_kind == "normal":
        a_prec = rng.uniform(0.05, 5.0, size=p)
    else:
        a_prec = np.where(rng.random(p) < 0.5, 0.0, rng.uniform(0.05, 5.0, size=p))
    a_mean = rng.normal(size=p)
    C = random_factor(rng, blocks, zero_diag=int(rng.integers(d)) if singular else None)
    s2 = float(rng.uniform(0.3, 3.0))
    return prob, s2, C, a_mean, a_prec


# ---------------------------------------------------------------------------
# 1. Linear algebra


@given(d=st.integers(1, 6), eps=st.floats(1e-2, 1.0), seed=st.integers(0, 2**32 - 1))
def test_chol_and_solves_match_numpy(d, eps, seed):
    rng = np.random.default_rng(seed)
    M = spd(rng, d, eps)
    L = M.copy()
    assert chol_inplace(L)
    np.testing.assert_allclose(L, np.linalg.cholesky(M), rtol=1e-9, atol=1e-12)
    assert np.all(np.triu(L, 1) == 0.0)  # upper triangle cleared
    assert close(logdet_chol(L), np.linalg.slogdet(M)[1], 1e-9)

    x = rng.normal(size=d)
    u = x.copy()
    solve_lower(L, u)
    np.testing.assert_allclose(L @ u, x, rtol=1e-9, atol=1e-10)
    v = x.copy()
    solve_upper(L, v)
    np.testing.assert_allclose(L.T @ v, x, rtol=1e-9, atol=1e-10)
    both = x.copy()
    solve_lower(L, both)
    solve_upper(L, both)
    np.testing.assert_allclose(both, np.linalg.solve(M, x), rtol=1e-8, atol=1e-10)

    m = int(rng.integers(1, 4))
    B = rng.normal(size=(d, m))
    W = B.copy()
    solve_lower_cols(L, W)
    np.testing.assert_allclose(W, np.linalg.solve(np.linalg.cholesky(M), B), rtol=1e-8, atol=1e-10)


@given(d=st.integers(1, 6), eps=st.floats(1e-2, 1.0), seed=st.integers(0, 2**32 - 1))
def test_gaussian_from_precision_transform(d, eps, seed):
    rng = np.random.default_rng(seed)
    Q = spd(rng, d, eps)
    L = Q.copy()
    assert chol_inplace(L)
    mean = rng.normal(size=d)
    z = rng.normal(size=d)
    out = np.empty(d)
    gaussian_from_precision(L, mean, z, out)
    r = out - mean
    assert abs(r @ Q @ r - z @ z) <= 1e-8 * max(1.0, z @ z)
    np.testing.assert_allclose(L.T @ r, z, rtol=1e-9, atol=1e-10)


def test_chol_inplace_rejects_non_positive_definite():
    assert not chol_inplace(np.array([[1.0, 0.0], [0.0, -1.0]]))
    assert not chol_inplace(np.array([[1.0, 2.0], [2.0, 1.0]]))  # eigenvalues 3, -1
    assert not chol_inplace(np.array([[1.0, 1.0], [1.0, 1.0]]))  # singular: zero pivot
    assert not chol_inplace(np.array([[-1.0]]))
    M = spd(np.random.default_rng(11), 3, 0.1)
    M[2, 2] = -1.0  # positive leading minors, indefinite last pivot
    assert not chol_inplace(M)


# ---------------------------------------------------------------------------
# 2. Sufficient statistics


@settings(max_examples=25)
@given(prob_args=st.tuples(st.integers(1, 5), st.integers(1, 3), st.integers(1, 3),
                           st.booleans(), st.integers(0, 2**32 - 1)))
def test_suffstats_match_dense_cross_products(prob_args):
    n_groups, d, p, weighted, seed = prob_args
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 6, size=n_groups)
    prob = Problem(rng, sizes, d, p, weighted)
    s = prob.stats
    for j in range(n_groups):
        rows = prob.g == j
        Xj, Fj, yj, wj = prob.X[rows], prob.F[rows], prob.y[rows], prob.w[rows]
        assert s.n[j] == rows.sum()
        np.testing.assert_allclose(s.XtX[j], Xj.T @ (wj[:, None] * Xj), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(s.XtF[j], Xj.T @ (wj[:, None] * Fj), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(s.Xty[j], Xj.T @ (wj * yj), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(s.yty_g[j], yj @ (wj * yj), rtol=1e-12)
    np.testing.assert_allclose(s.FtF, prob.F.T @ (prob.w[:, None] * prob.F),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(s.Fty, prob.F.T @ (prob.w * prob.y), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        s.scal, [prob.y @ (prob.w * prob.y), prob.n, np.log(prob.w).sum()], rtol=1e-12, atol=1e-12
    )


@settings(max_examples=25)
@given(n_groups=st.integers(1, 5), d=st.integers(1, 3), p=st.integers(1, 3),
       seed=st.integers(0, 2**32 - 1))
def test_suffstats_additive_over_row_partitions(n_groups, d, p, seed):
    rng = np.random.default_rng(seed)
    prob = Problem(rng, rng.integers(1, 6, size=n_groups), d, p, weighted=True)
    part = rng.random(prob.n) < 0.5
    halves = [
        compute_suffstats(prob.y[m], prob.F[m], prob.X[m], prob.g[m], n_groups, prob.w[m])
        for m in (part, ~part)
    ]
    merged = merge_suffstats(*halves)
    for name, got, want in zip(prob.stats._fields, merged, prob.stats, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, err_msg=name)


def test_suffstats_default_weights_are_one():
    rng = np.random.default_rng(5)
    prob = Problem(rng, [2, 3, 1], 2, 2, weighted=False)
    plain = compute_suffstats(prob.y, prob.F, prob.X, prob.g, 3)
    for got, want in zip(plain, prob.stats, strict=True):
        np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------------
# 3. Upward pass and the likelihood given the fixed effects, against dense formulas


def test_dense_reference_agrees_with_textbook_forms():
    """The dense helper itself: marginal normal (proper prior) and REML (flat prior)."""
    rng = np.random.default_rng(2024)
    prob = Problem(rng, [3, 1, 4, 2], 2, 2, weighted=True)
    T = spd(rng, 2, 0.2)
    s2 = 0.7
    V = prob.V(s2, T)
    # all priors proper: y ~ N(F m, V + F S0 F')
    a_mean, a_prec = np.array([0.3, -1.0]), np.array([2.0, 0.5])
    marginal_cov = V + prob.F @ np.diag(1 / a_prec) @ prob.F.T
    want = sps.multivariate_normal(prob.F @ a_mean, marginal_cov).logpdf(prob.y)
    assert close(dense_loglik(prob, s2, T, a_mean, a_prec), want, 1e-10)
    # all flat: restricted likelihood at the GLS estimate
    Vi = np.linalg.inv(V)
    A = prob.F.T @ Vi @ prob.F
    a_hat = np.linalg.solve(A, prob.F.T @ Vi @ prob.y)
    r = prob.y - prob.F @ a_hat
    want = -0.5 * ((prob.n - 2) * LOG_2PI + np.linalg.slogdet(V)[1] + np.linalg.slogdet(A)[1]
                   + r @ Vi @ r)
    assert close(dense_loglik(prob, s2, T, a_mean, np.zeros(2)), want, 1e-10)


@settings(max_examples=25)
@given(problems())
def test_upward_matches_dense_loglik(args):
    prob, s2, C, a_mean, a_prec = args
    # with a flat direction the fixed effects need at least as many rows as columns
    assume(prob.n >= prob.F.shape[1] or np.all(a_prec > 0))
    ll, ok, L, LA, c = run_upward(prob, s2, C, a_mean, a_prec)
    assert ok
    want = dense_loglik(prob, s2, C @ C.T, a_mean, a_prec)
    assert close(ll, want, 1e-8), (ll, want)
    # the outputs the downward pass relies on: K_j = L_j L_j' and A+ = LA LA'
    V = prob.V(s2, C @ C.T)
    A = prob.F.T @ np.linalg.solve(V, prob.F) + np.diag(a_prec)
    np.testing.assert_allclose(LA @ LA.T, A, rtol=1e-8, atol=1e-8 * np.abs(A).max())
    np.testing.assert_allclose(
        c, prob.F.T @ np.linalg.solve(V, prob.y) + a_prec * a_mean,
        rtol=1e-8, atol=1e-8 * np.abs(c).max(),
    )
    for j in range(prob.n_groups):
        K = np.eye(C.shape[0]) + C.T @ prob.stats.XtX[j] @ C / s2
        np.testing.assert_allclose(L[j] @ L[j].T, K, rtol=1e-10, atol=1e-12)


@settings(max_examples=25)
@given(problems())
def test_loglik_given_a_matches_dense_normal(args):
    prob, s2, C, a_mean, _ = args
    a = a_mean  # any value of the fixed effects
    n_groups, d = prob.stats.Xty.shape
    r = np.zeros((n_groups, d))
    rtr = residual_stats(prob.stats, a, r)
    res = prob.y - prob.F @ a
    assert close(rtr, res @ (prob.w * res), 1e-10)
    ll, ok = loglik_given_a(prob.stats, s2, C, r, rtr, np.zeros((n_groups, d, d)))
    assert ok
    want = sps.multivariate_normal(prob.F @ a, prob.V(s2, C @ C.T)).logpdf(prob.y)
    assert close(ll, want, 1e-8), (ll, want)


def test_loglik_given_a_large_group_determinants():
    """Six coefficients and a small ``s2``: every ``det(K_j)`` is about 1e105, finite.

    ``loglik_given_a`` batches the determinants into one logarithm per many groups; the
    batching must not overflow when single determinants are huge (1.6e211 * 8.5e105 would).
    The reference takes one log per group (as :func:`upward` does); the dense ``N x N``
    covariance is too ill-conditioned here to serve.
    """
    rng = np.random.default_rng(0)
    d, n_groups, n_per, s2 = 6, 3, 8, 1e-17
    g = np.repeat(np.arange(n_groups), n_per).astype(np.int64)
    X = rng.normal(size=(g.size, d))
    y = rng.normal(size=g.size)
    stats = compute_suffstats(y, np.ones((g.size, 1)), X, g, n_groups, np.ones(g.size))
    C = np.eye(d)
    r = np.zeros((n_groups, d))
    rtr = residual_stats(stats, np.zeros(1), r)
    logdet, quad = g.size * np.log(s2), rtr / s2
    for j in range(n_groups):
        K = np.eye(d) + C.T @ stats.XtX[j] @ C / s2
        logdet += np.linalg.slogdet(K)[1]
        u = C.T @ r[j] / s2
        quad -= u @ np.linalg.solve(K, u)
    want = -0.5 * (g.size * LOG_2PI + logdet + quad)
    ll, ok = loglik_given_a(stats, s2, C, r, rtr, np.zeros((n_groups, d, d)))
    assert ok
    assert close(ll, want, 1e-6), (ll, want)


# ---------------------------------------------------------------------------
# 4. Downward pass: exact conditional posterior of the coefficients


def test_dense_posterior_matches_joint_conditioning():
    """The two-stage GLS helper against plain Gaussian conditioning of the joint prior."""
    rng = np.random.default_rng(77)
    prob = Problem(rng, [2, 4, 1], 2, 2, weighted=True)
    T = spd(rng, 2, 0.3)
    s2, a_mean, a_prec = 1.3, np.array([0.5, -0.2]), np.array([0.8, 3.0])
    H = np.hstack([prob.F, prob.Z()])
    P0 = np.zeros((H.shape[1], H.shape[1]))
    P0[:2, :2] = np.diag(1.0 / a_prec)
    P0[2:, 2:] = np.kron(np.eye(3), T)
    mu0 = np.concatenate([a_mean, np.zeros(6)])
    S = H @ P0 @ H.T + np.diag(s2 / prob.w)
    gain = np.linalg.solve(S, H @ P0).T
    mean, cov = dense_posterior(prob, s2, T, a_mean, a_prec)
    np.testing.assert_allclose(mean, mu0 + gain @ (prob.y - H @ mu0), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(cov, P0 - gain @ H @ P0, rtol=1e-9, atol=1e-11)


@settings(max_examples=25)
@given(problems())
def test_draw_coefficients_mean_is_posterior_mean(args):
    prob, s2, C, a_mean, a_prec = args
    assume(prob.n >= prob.F.shape[1] or np.all(a_prec > 0))
    _, ok, L, LA, c = run_upward(prob, s2, C, a_mean, a_prec)
    assert ok
    n_groups, d = prob.stats.Xty.shape
    a_out = np.empty(prob.F.shape[1])
    b_out = np.empty((n_groups, d))
    draw_coefficients(np.random.default_rng(0), prob.stats, s2, C, L, LA, c, a_out, b_out, False)
    mean, cov = dense_posterior(prob, s2, C @ C.T, a_mean, a_prec)
    got = np.concatenate([a_out, b_out.ravel()])
    scale = np.sqrt(np.diag(cov)) + 1e-8 * np.abs(mean).max()
    np.testing.assert_array_less(np.abs(got - mean), 1e-7 * scale + 1e-12)


def coefficient_problem():
    """Fixed problem for the Monte Carlo checks: a group with fewer rows than coefficients,
    one flat and one proper fixed-effect prior, weights."""
    rng = np.random.default_rng(31415)
    prob = Problem(rng, [1, 3, 4], 2, 2, weighted=True)
    C = np.array([[0.9, 0.0], [-0.4, 0.6]])
    return prob, 0.8, C, np.array([0.0, 0.5]), np.array([0.0, 2.0])


def test_draw_coefficients_monte_carlo_matches_exact_posterior():
    prob, s2, C, a_mean, a_prec = coefficient_problem()
    _, ok, L, LA, c = run_upward(prob, s2, C, a_mean, a_prec)
    assert ok
    mean, cov = dense_posterior(prob, s2, C @ C.T, a_mean, a_prec)
    n_draws = 20_000
    rng = np.random.default_rng(20240611)
    a_out = np.empty(2)
    b_out = np.empty((3, 2))
    draws = np.empty((n_draws, 8))
    for s in range(n_draws):
        draw_coefficients(rng, prob.stats, s2, C, L, LA, c, a_out, b_out, True)
        draws[s, :2] = a_out
        draws[s, 2:] = b_out.ravel()
    k = mean.shape[0]
    n_checks = k + k * (k + 1) // 2
    # False-alarm budget 1e-4 for this test, split evenly over the 8 means and 36
    # covariance entries, two-sided. The draws are independent and exactly Gaussian, so the
    # Monte Carlo standard errors below are exact (sd / sqrt(n); for a sample covariance
    # Var(S_ij) = (Sigma_ii Sigma_jj + Sigma_ij^2) / n).
    z = sps.norm.isf(1e-4 / n_checks / 2)
    mcse_mean = np.sqrt(np.diag(cov) / n_draws)
    np.testing.assert_array_less(np.abs(draws.mean(axis=0) - mean), z * mcse_mean)
    sd2 = np.diag(cov)
    mcse_cov = np.sqrt((np.outer(sd2, sd2) + cov**2) / n_draws)
    np.testing.assert_array_less(np.abs(np.cov(draws.T) - cov), z * mcse_cov)


# ---------------------------------------------------------------------------
# 5. Variance components: parameterisation and prior density


def log_jac_C(Cb):
    """``log |dT/dC| = d log 2 + sum (d - i) log |C_ii|`` (the formula under test)."""
    dk = Cb.shape[0]
    return dk * LOG2 + sum((dk - i) * np.log(abs(Cb[i, i])) for i in range(dk))


def vech(M):
    return np.concatenate([M[i, :i + 1] for i in range(M.shape[0])])


def numerical_log_jacobian(f, x, h=1e-5):
    """``log |det df/dx|`` by central differences.

    Exact up to rounding for the maps here, which are quadratic or multilinear.
    """
    J = np.empty((f(x).shape[0], x.shape[0]))
    for k in range(x.shape[0]):
        e = np.zeros_like(x)
        e[k] = h
        J[:, k] = (f(x + e) - f(x - e)) / (2 * h)
    return np.linalg.slogdet(J)[1]


@pytest.mark.parametrize("d", [1, 2, 3])
def test_jacobian_of_factor_to_covariance(d):
    rng = np.random.default_rng(100 + d)
    for _ in range(5):
        Cb = random_factor(rng, (d,))

        def to_T(x):
            M = np.zeros((d, d))
            M[np.tril_indices(d)] = x  # row-major lower triangle, as in theta
            return vech(M @ M.T)

        got = numerical_log_jacobian(to_T, vech(Cb))
        assert abs(got - log_jac_C(Cb)) <= 1e-7


@pytest.mark.parametrize("d", [2, 3])
def test_jacobian_of_sd_corr_to_covariance(d):
    """``|dT / d(tau, R)| = 2^d prod tau_i^d`` as stated in theta.py."""
    rng = np.random.default_rng(200 + d)
    T = spd(rng, d, 0.5)
    tau = np.sqrt(np.diag(T))
    R = T / np.outer(tau, tau)
    lower = np.tril_indices(d, -1)

    def to_T(x):
        t = x[:d]
        Rm = np.eye(d)
        Rm[lower] = x[d:]
        Rm = np.tril(Rm) + np.tril(Rm, -1).T
        return vech(np.outer(t, t) * Rm)

    got = numerical_log_jacobian(to_T, np.concatenate([tau, R[lower]]))
    assert abs(got - (d * LOG2 + d * np.log(tau).sum())) <= 1e-7


@settings(max_examples=25)
@given(blocks=st.sampled_from(BLOCKS), sigma_known=st.integers(0, 1),
       seed=st.integers(0, 2**32 - 1))
def test_encode_decode_round_trip(blocks, sigma_known, seed):
    rng = np.random.default_rng(seed)
    d = sum(blocks)
    structure = make_structure(blocks, sigma_known)
    priors = make_priors(d, n_blocks=len(blocks))
    T = np.zeros((d, d))
    c0 = 0
    for dk in blocks:
        T[c0:c0 + dk, c0:c0 + dk] = spd(rng, dk, 0.1)
        c0 += dk
    s2 = float(np.exp(rng.normal()))
    theta = np.empty(structure.theta_ptr[-1])
    assert encode_theta(s2, T.copy(), structure, theta)  # a copy: see the in-place test below
    C = np.empty((d, d))
    s2_back, lp = decode_theta(theta, structure, priors, C)
    assert np.isfinite(lp)
    assert np.allclose(C, np.tril(C))
    np.testing.assert_allclose(C @ C.T, T, rtol=1e-10, atol=1e-12)
    assert np.all(np.diag(C) > 0)
    if sigma_known:
        assert s2_back == 1.0
    else:
        assert close(s2_back, s2, 1e-12)
    bad = T.copy()
    bad[0, 0] = -1.0
    assert not encode_theta(s2, bad, structure, theta)


def log_sd_prior(kind, par, x):
    """Normalised log density of a standard deviation, from scipy.stats."""
    if kind == PRIOR_FLAT:
        return 0.0
    if kind == PRIOR_HALF_NORMAL:
        return sps.halfnorm(scale=par[0]).logpdf(x)
    if kind == PRIOR_HALF_T:
        return LOG2 + sps.t(df=par[0], scale=par[1]).logpdf(x)
    if kind == PRIOR_UNIFORM:
        return sps.uniform(0.0, par[0]).logpdf(x)
    if kind == PRIOR_INV_GAMMA:  # inverse-gamma on the variance x^2, then dv/dx = 2x
        return sps.invgamma(par[0], scale=par[1]).logpdf(x * x) + np.log(2 * x)
    raise ValueError(kind)


def reference_log_prior(theta, blocks, sigma_known, priors):
    """Log prior of ``theta`` written from theta.py's docstring, with scipy densities and a
    numerical Jacobian for the correlations."""
    lp = 0.0
    if not sigma_known:
        sigma = np.exp(theta[0])
        # density of sigma times d sigma / d log sigma
        lp += log_sd_prior(priors.sigma_kind, priors.sigma_par, sigma) + theta[0]
    c0 = 0
    for k, (eta, y, tau, R, T) in enumerate(reference_decode(theta, blocks, sigma_known)):
        dk = eta.size
        lp += np.sum(np.log(DIAG_SCALE * np.cosh(eta)))  # d tau / d theta
        lp += log_jac_cpc_to_corr(y, dk)  # d R / d (canonical partial correlations)
        if priors.block_iw[k] == 1:
            Psi = priors.iw_scale[c0:c0 + dk, c0:c0 + dk]
            nu = priors.block_eta[k]
            if dk > 1:
                lp_T = sps.invwishart(df=nu, scale=Psi).logpdf(T)
            else:  # a 1 x 1 inverse-Wishart is an inverse-gamma
                lp_T = sps.invgamma(nu / 2, scale=Psi[0, 0] / 2).logpdf(T[0, 0])
            # density of (tau, R): p(T) |dT / d(tau, R)|, the Jacobian checked separately below
            lp += lp_T + dk * LOG2 + dk * np.sum(np.log(np.abs(tau)))
        else:
            lp += sum(log_sd_prior(priors.sd_kind[c0 + i], priors.sd_par[c0 + i], abs(tau[i]))
                      for i in range(dk))
            lp += (priors.block_eta[k] - 1.0) * np.linalg.slogdet(R)[1]  # LKJ(eta), unnormalised
        c0 += dk
    return lp


SD_PRIORS = [
    (PRIOR_FLAT, (1.0, 1.0)),
    (PRIOR_HALF_NORMAL, (1.5, 0.0)),
    (PRIOR_HALF_T, (3.0, 0.7)),
    (PRIOR_UNIFORM, (50.0, 0.0)),
    (PRIOR_INV_GAMMA, (2.0, 1.5)),
]


@settings(max_examples=25)
@given(blocks=st.sampled_from(BLOCKS + [(3, 2)]), sigma_known=st.integers(0, 1),
       kinds=st.lists(st.integers(0, 4), min_size=6, max_size=6), seed=st.integers(0, 2**32 - 1))
def test_decode_log_prior_sd_lkj_matches_reference(blocks, sigma_known, kinds, seed):
    rng = np.random.default_rng(seed)
    d = sum(blocks)
    structure = make_structure(blocks, sigma_known)
    priors = make_priors(
        d, n_blocks=len(blocks),
        sigma_kind=SD_PRIORS[kinds[5]][0], sigma_par=SD_PRIORS[kinds[5]][1],
        sd_kind=[SD_PRIORS[kinds[i]][0] for i in range(d)],
        sd_par=[SD_PRIORS[kinds[i]][1] for i in range(d)],
        block_eta=rng.uniform(0.5, 4.0, size=len(blocks)),
    )
    C = np.empty((d, d))
    values = []
    for _ in range(2):
        theta = theta_from_factor(random_factor(rng, blocks), structure, log_sigma=rng.normal())
        _, lp = decode_theta(theta, structure, priors, C)
        values.append((lp, reference_log_prior(theta, blocks, sigma_known, priors)))
    (lp1, ref1), (lp2, ref2) = values
    # the reference's numerical Jacobian limits the precision
    assert abs((lp1 - lp2) - (ref1 - ref2)) <= 1e-6 * max(1.0, abs(ref1 - ref2))


def fresh_iw_priors(blocks, nu, Psi):
    """IW priors on every block (a new copy per call: decode_theta may write into them)."""
    d = sum(blocks)
    return make_priors(d, n_blocks=len(blocks), block_iw=np.ones(len(blocks)), block_eta=nu,
                       iw_scale=Psi.copy())


def block_diag_spd(rng, blocks, eps):
    d = sum(blocks)
    M = np.zeros((d, d))
    c0 = 0
    for dk in blocks:
        M[c0:c0 + dk, c0:c0 + dk] = spd(rng, dk, eps)
        c0 += dk
    return M


@pytest.mark.parametrize("blocks", [(1,), (2,), (3,), (2, 1), (1, 2)])
def test_decode_log_prior_inverse_wishart_matches_scipy(blocks):
    rng = np.random.default_rng(sum(blocks) * 10 + len(blocks))
    d = sum(blocks)
    structure = make_structure(blocks)
    Psi = block_diag_spd(rng, blocks, 0.5)
    nu = np.array([dk + 2.5 for dk in blocks])
    C = np.empty((d, d))
    values = []
    for _ in range(3):
        theta = theta_from_factor(random_factor(rng, blocks), structure, log_sigma=rng.normal())
        priors = fresh_iw_priors(blocks, nu, Psi)
        _, lp = decode_theta(theta, structure, priors, C)
        values.append(lp - reference_log_prior(theta, blocks, 0, priors))
    # equal up to one additive constant (the numerical Jacobian limits the precision)
    assert np.ptp(values) <= 1e-6 * max(1.0, np.abs(values).max())


def test_decode_zero_sd_is_an_interior_point():
    """A zero SD has a finite prior density under SD priors (the boundary is an ordinary
    point), and none under an inverse-Wishart (a singular T has density zero there)."""
    structure = make_structure((2,))
    theta = np.array([0.0, 1.0, 0.0, 0.5])
    C = np.empty((2, 2))
    _, lp = decode_theta(theta, structure, make_priors(2, sd_kind=[PRIOR_HALF_T] * 2,
                                                        sd_par=[(3.0, 1.0)] * 2), C)
    assert np.isfinite(lp)
    np.testing.assert_array_equal(C[1], [0.0, 0.0])
    _, lp = decode_theta(theta, structure, fresh_iw_priors((2,), np.array([5.0]), np.eye(2)), C)
    assert lp == -np.inf


def test_decode_theta_does_not_modify_inverse_wishart_scale():
    """decode_theta must treat ``priors`` as read-only and give the same value twice."""
    structure = make_structure((2,))
    Psi = np.array([[2.0, 0.3], [0.3, 1.0]])
    priors = fresh_iw_priors((2,), np.array([5.0]), Psi)
    theta = np.array([0.1, 1.0, 0.2, 0.7])
    C = np.empty((2, 2))
    _, lp1 = decode_theta(theta, structure, priors, C)
    _, lp2 = decode_theta(theta, structure, priors, C)
    np.testing.assert_array_equal(priors.iw_scale, Psi)
    assert lp1 == lp2


def test_encode_theta_does_not_modify_covariance():
    structure = make_structure((2,))
    T = np.array([[2.0, 0.3], [0.3, 1.0]])
    T_in = T.copy()
    theta = np.empty(4)
    assert encode_theta(1.5, T_in, structure, theta)
    np.testing.assert_array_equal(T_in, T)


def test_components_are_sds_and_correlations():
    rng = np.random.default_rng(12)
    blocks = (2, 1)
    structure = make_structure(blocks)
    thetas = np.array([theta_from_factor(random_factor(rng, blocks), structure, rng.normal())
                       for _ in range(4)])
    out_s2, T_all = covariances(thetas, structure)
    out_sd, out_corr = sd_corr(T_all)
    for s, theta in enumerate(thetas):
        T = np.zeros((3, 3))
        (_, _, _, _, T0), (_, _, _, _, T1) = reference_decode(theta, blocks, 0)
        T[:2, :2] = T0
        T[2:, 2:] = T1
        sd = np.sqrt(np.diag(T))
        assert close(out_s2[s], np.exp(2 * theta[0]), 1e-12)
        np.testing.assert_allclose(out_sd[s], sd, rtol=1e-12)
        np.testing.assert_allclose(out_corr[s], T / np.outer(sd, sd), rtol=1e-12, atol=1e-15)
        assert out_corr[s, 0, 2] == 0.0 and out_corr[s, 2, 1] == 0.0


@pytest.mark.parametrize("sigma_known", [0, 1])
def test_components_agree_with_decode_theta(sigma_known):
    """The NumPy components of many draws are those of the compiled decoder, draw by draw."""
    rng = np.random.default_rng(31)
    blocks = (3, 1, 2)
    structure = make_structure(blocks, sigma_known=sigma_known)
    priors = make_priors(6, n_blocks=3)
    thetas = rng.normal(scale=1.5, size=(50, int(structure.theta_ptr[-1])))  # signed SDs included
    out_s2, T_all = covariances(thetas, structure)
    out_sd, out_corr = sd_corr(T_all)
    C = np.empty((6, 6))
    for s, theta in enumerate(thetas):
        s2, _ = decode_theta(theta, structure, priors, C)
        T = C @ C.T
        sd = np.sqrt(np.diag(T))
        assert close(out_s2[s], s2, 1e-14)
        np.testing.assert_allclose(out_sd[s], sd, rtol=1e-13)
        np.testing.assert_allclose(out_corr[s], T / np.outer(sd, sd), rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------------------
# 6. Inverse-Wishart draws


def iw_variance(Psi, nu):
    """Exact variance of each entry of an inverse-Wishart(nu, Psi) matrix (needs nu > d + 3)."""
    d = Psi.shape[0]
    diag = np.diag(Psi)
    num = (nu - d + 1) * Psi**2 + (nu - d - 1) * np.outer(diag, diag)
    return num / ((nu - d) * (nu - d - 1) ** 2 * (nu - d - 3))


@pytest.mark.parametrize("d", [2, 3])
def test_draw_inv_wishart_monte_carlo(d):
    rng = np.random.default_rng(300 + d)
    Psi = spd(rng, d, 0.5)
    nu = 8.0
    n_draws = 20_000
    out = np.empty((d, d))
    draws = np.empty((n_draws, d, d))
    for s in range(n_draws):
        assert draw_inv_wishart(rng, nu, Psi, out)
        draws[s] = out
    np.testing.assert_allclose(draws, np.transpose(draws, (0, 2, 1)), rtol=1e-12, atol=1e-14)
    # False-alarm budget 1e-4 for this test, over d(d+1)/2 distinct means plus d
    # Kolmogorov-Smirnov tests, two-sided; the draws are independent, so the MCSE is the
    # exact sd of an entry over sqrt(n).
    n_checks = d * (d + 1) // 2 + d
    z = sps.norm.isf(1e-4 / n_checks / 2)
    mcse = np.sqrt(iw_variance(Psi, nu) / n_draws)
    np.testing.assert_array_less(np.abs(draws.mean(axis=0) - Psi / (nu - d - 1)), z * mcse)
    # each diagonal entry is inverse-gamma((nu - d + 1) / 2, Psi_ii / 2)
    for i in range(d):
        marginal = sps.invgamma((nu - d + 1) / 2, scale=Psi[i, i] / 2)
        assert sps.kstest(draws[:, i, i], marginal.cdf).pvalue > 1e-4 / n_checks


def test_draw_inv_wishart_rejects_indefinite_scale():
    out = np.empty((2, 2))
    indefinite = np.array([[1.0, 2.0], [2.0, 1.0]])
    assert not draw_inv_wishart(np.random.default_rng(1), 6.0, indefinite, out)


# ---------------------------------------------------------------------------
# 7. Residual sums of squares and pointwise log-likelihood


@settings(max_examples=25)
@given(n_groups=st.integers(1, 5), d=st.integers(1, 3), p=st.integers(1, 3),
       seed=st.integers(0, 2**32 - 1))
def test_residual_ss_matches_dense(n_groups, d, p, seed):
    rng = np.random.default_rng(seed)
    prob = Problem(rng, rng.integers(1, 6, size=n_groups), d, p, weighted=True)
    a = rng.normal(size=p)
    b = rng.normal(size=(n_groups, d))
    res = prob.y - prob.F @ a - np.einsum("ik,ik->i", prob.X, b[prob.g])
    want = res @ (prob.w * res)
    assert close(residual_ss(prob.stats, a, b), want, 1e-10)


NOT_CROSSED = (np.zeros((0, 0), dtype=np.int64), np.zeros(0, dtype=np.int64))  # b read by the rows' groups


def test_loglik_draws_pointwise_and_by_group():
    rng = np.random.default_rng(44)
    prob = Problem(rng, [3, 1, 2], 2, 2, weighted=True)
    n_draws = 3
    s2 = rng.uniform(0.5, 2.0, size=n_draws)
    a = rng.normal(size=(n_draws, 2))
    b = rng.normal(size=(n_draws, 3, 2))
    want = np.empty((n_draws, prob.n))
    for s in range(n_draws):
        mu = prob.F @ a[s] + np.einsum("ik,ik->i", prob.X, b[s][prob.g])
        want[s] = sps.norm(mu, np.sqrt(s2[s] / prob.w)).logpdf(prob.y)
    log_w = np.log(prob.w)
    out = np.zeros((n_draws, prob.n))
    loglik_draws(prob.y, prob.F, prob.X, prob.g, log_w, prob.w, s2, a, b, np.arange(prob.n), out, *NOT_CROSSED)
    np.testing.assert_allclose(out, want, rtol=1e-12)
    out_g = np.zeros((n_draws, 3))
    loglik_draws(prob.y, prob.F, prob.X, prob.g, log_w, prob.w, s2, a, b, prob.g, out_g, *NOT_CROSSED)
    by_group = [[want[s, prob.g == j].sum() for j in range(3)] for s in range(n_draws)]
    np.testing.assert_allclose(out_g, by_group, rtol=1e-12)


# ---------------------------------------------------------------------------
# 8. Reproducibility: compiled kernels and their Python versions


def test_njit_and_py_func_give_identical_draws():
    prob, s2, C, a_mean, a_prec = coefficient_problem()
    _, _, L, LA, c = run_upward(prob, s2, C, a_mean, a_prec)
    results = []
    for fn in (draw_coefficients, draw_coefficients.py_func):
        rng = np.random.default_rng(123)
        a_out, b_out = np.empty(2), np.empty((3, 2))
        seq = []
        for _ in range(5):
            fn(rng, prob.stats, s2, C, L, LA, c, a_out, b_out, True)
            seq.append(np.concatenate([a_out, b_out.ravel()]))
        results.append(np.array(seq))
    np.testing.assert_array_equal(results[0], results[1])

    Psi = np.array([[2.0, 0.3], [0.3, 1.0]])
    iw = []
    for fn in (draw_inv_wishart, draw_inv_wishart.py_func):
        rng = np.random.default_rng(321)
        out = np.empty((2, 2))
        seq = []
        for _ in range(5):
            fn(rng, 7.0, Psi, out)
            seq.append(out.copy())
        iw.append(np.array(seq))
    np.testing.assert_allclose(iw[0], iw[1], rtol=1e-14, atol=0)


def test_same_seed_same_draws():
    prob, s2, C, a_mean, a_prec = coefficient_problem()
    _, _, L, LA, c = run_upward(prob, s2, C, a_mean, a_prec)
    outs = []
    for _ in range(2):
        a_out, b_out = np.empty(2), np.empty((3, 2))
        rng = np.random.default_rng(99)
        draw_coefficients(rng, prob.stats, s2, C, L, LA, c, a_out, b_out, True)
        outs.append(np.concatenate([a_out, b_out.ravel()]))
    np.testing.assert_array_equal(outs[0], outs[1])


# ---------------------------------------------------------------------------
# 9. Import boundary (docs/design.md, "Data flow": the engine knows no data frames or ArviZ)


def test_import_samplers_pulls_in_no_frontend_modules():
    code = (
        "import sys, samplers\n"
        "banned = ('pandas', 'xarray', 'arviz', 'arviz_base', 'bayeshlm')\n"
        "bad = [m for m in banned if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         timeout=300, check=True)
    assert res.stdout.strip() == "", res.stdout


@pytest.mark.parametrize("iw", [False, True])
def test_flip_columns_is_a_symmetry_and_an_involution(iw):
    """Every sign pattern leaves T and the prior density unchanged; flipping twice is the identity;
    the canonical representative has non-negative SDs and the same T."""
    from samplers.theta import canonical_mask, flip_columns

    rng = np.random.default_rng(31)
    blocks = (2, 1, 3)
    d = sum(blocks)
    structure = make_structure(blocks)
    if iw:
        priors = fresh_iw_priors(blocks, np.array([4.0, 3.0, 6.0]), block_diag_spd(rng, blocks, 0.5))
    else:
        priors = make_priors(d, n_blocks=len(blocks), sd_kind=[PRIOR_HALF_T] * d,
                             sd_par=[(3.0, 1.0)] * d, block_eta=np.array([2.0, 1.0, 1.5]))
    theta = theta_from_factor(random_factor(rng, blocks), structure, log_sigma=0.2)
    theta[structure.sd_idx[[0, 4]]] *= -1.0  # start from a non-canonical point
    C0 = np.empty((d, d))
    _, lp0 = decode_theta(theta, structure, priors, C0)
    flipped, back, C = np.empty_like(theta), np.empty_like(theta), np.empty((d, d))
    for mask in list(range(1 << d)) + [-1]:
        flip_columns(theta, structure, canonical_mask(theta, structure) if mask < 0 else mask, flipped)
        _, lp = decode_theta(flipped, structure, priors, C)
        assert abs(lp - lp0) <= 1e-12 * max(1.0, abs(lp0))
        np.testing.assert_allclose(C @ C.T, C0 @ C0.T, rtol=1e-13, atol=1e-14)
        if mask >= 0:
            flip_columns(flipped, structure, mask, back)
            np.testing.assert_array_equal(back, theta)
        else:
            assert np.all(flipped[structure.sd_idx] >= 0)


@pytest.mark.parametrize("blocks", [(1,), (2,), (3,), (2, 1)])
def test_inverse_wishart_normalising_constant_of_the_marginal_likelihood(blocks):
    """decode_theta's inverse-Wishart log prior plus ``iw_log_norm`` is the normalised density in theta.

    The reference is scipy's normalised inverse-Wishart density with the Jacobians of the
    map to ``theta`` (numerical for the correlations, whence the 1e-6 tolerance).
    """
    from bayeshlm.evidence import iw_log_norm

    rng = np.random.default_rng(7 + sum(blocks))
    d = sum(blocks)
    structure = make_structure(blocks)
    Psi = block_diag_spd(rng, blocks, 0.5)
    nu = np.array([dk + 1.5 for dk in blocks])
    C = np.empty((d, d))
    norm = 0.0
    c0 = 0
    for k, dk in enumerate(blocks):
        norm += iw_log_norm(nu[k], Psi[c0:c0 + dk, c0:c0 + dk])
        c0 += dk
    for _ in range(3):
        theta = theta_from_factor(random_factor(rng, blocks), structure, log_sigma=rng.normal())
        priors = fresh_iw_priors(blocks, nu, Psi)
        _, lp = decode_theta(theta, structure, priors, C)
        ref = reference_log_prior(theta, blocks, 0, priors)
        assert lp + norm == pytest.approx(ref, abs=1e-6 * max(1.0, abs(ref)))


# ---------------------------------------------------------------------------
# 10. Compilation: one kernel per variant, never one per model


def test_chains_compile_once_per_variant_not_per_model():
    """Two-level models of different sizes share one compiled chain; nesting is its own variant.

    The structure is chosen by the type of the chain's workspace and the moves by the type
    of ``moves`` (:mod:`samplers.gaussian`, :mod:`samplers.types`), so the compiled
    signatures show one kernel per pair of types, whatever the model's size.
    """
    import pandas as pd

    import bayeshlm as bh
    from samplers.driver import run_chain
    from samplers.types import ChainState

    rng = np.random.default_rng(0)
    n = 240
    df = pd.DataFrame({"g": np.repeat(np.arange(24), 10), "h": np.repeat(np.arange(6), 40),
                       "x": rng.normal(size=n), "z": rng.normal(size=n), "y": rng.normal(size=n)})
    formulas = ("y ~ x + (x | g)", "y ~ x + z + (1 | g)", "y ~ x + (1 | h/g)")
    for formula in formulas:
        bh.sample(bh.hlm(formula, df), draws=20, warmup=20, chains=1, seed=1, progress=False)
    variants = {}
    for sig in run_chain.signatures:
        work = sig[1].types[ChainState._fields.index("work")]
        key = (work.instance_class.__name__, sig[5].instance_class.__name__)
        variants.setdefault(key, []).append(sig)
    # the two two-level models (2 and 1 random coefficients, 2 and 3 fixed effects) share one
    assert len(variants[("TwoLevelWork", "MHMoves")]) == 1, variants
    assert len(variants[("NestedWork", "MHMoves")]) == 1, variants


def test_recompute_overwrites_statistics_with_new_weights_and_response():
    """``recompute`` (the hook of a data-augmentation step) gives the statistics of the new rows, in place."""
    from samplers.suffstats import recompute

    rng = np.random.default_rng(3)
    n, p, d, n_groups = 200, 3, 2, 7
    F, X = rng.normal(size=(n, p)), rng.normal(size=(n, d))
    g = rng.integers(0, n_groups, size=n)
    stats = compute_suffstats(rng.normal(size=n), F, X, g, n_groups)
    y2, w2 = rng.normal(size=n), rng.uniform(0.2, 3.0, size=n)
    fields = [id(x) for x in stats]
    recompute(stats, y2, F, X, g, w2)
    expected = compute_suffstats(y2, F, X, g, n_groups, weights=w2)
    assert [id(x) for x in stats] == fields  # the same arrays
    for name, got, want in zip(stats._fields, stats, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("p, fixed_response, group_fixed", [(3, True, True), (3, False, True), (0, True, True),
                                                             (2, False, False)])
def test_recompute_products_gives_the_statistics_of_the_reweighted_rows(p, fixed_response, group_fixed):
    """The statistics from the rows' kept cross-products equal those formed from the rows.

    Rows in no group order, a group with no row, no fixed column, and statistics without
    the per-group fixed parts; the response fixed (in the products) or new (a working response).
    """
    from samplers.suffstats import recompute_products, row_products

    rng = np.random.default_rng(11)
    n, d, n_groups = 300, 2, 9
    F, X = rng.normal(size=(n, p)), rng.normal(size=(n, d))
    g = rng.choice([0, 1, 2, 4, 5, 6, 7, 8], size=n)  # group 3 has no row
    y, w = rng.normal(size=n), rng.uniform(0.2, 3.0, size=n)
    stats = compute_suffstats(rng.normal(size=n), F, X, g, n_groups)
    if not group_fixed:
        stats = stats._replace(FtF_g=np.zeros((0, p, p)))
    prod = row_products(F, X, g, n_groups, y=y if fixed_response else None)
    assert prod.P.shape == (n, (d + p + fixed_response) * (d + p + fixed_response + 1) // 2)
    recompute_products(stats, prod, w, y)
    expected = compute_suffstats(y, F, X, g, n_groups, weights=w)
    for name, got, want in zip(stats._fields, stats, expected, strict=True):
        if name == "FtF_g" and not group_fixed:
            assert got.shape == (0, p, p)
        elif name in ("logw_g", "scal"):  # the sums of log w are not formed
            np.testing.assert_allclose(got[:2] if name == "scal" else 0.0 * got, want[:2] if name == "scal" else 0.0,
                                       rtol=1e-12, atol=1e-12, err_msg=name)
        else:
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, err_msg=name)


def test_row_products_are_not_kept_above_their_limit():
    """Above the limit on their size no products are kept, and the statistics come from the rows."""
    from samplers.suffstats import reweight, row_products
    from samplers.types import NO_ROW_PRODUCTS

    rng = np.random.default_rng(12)
    n, n_groups = 50, 4
    F, X, g, y, w = rng.normal(size=(n, 2)), rng.normal(size=(n, 1)), rng.integers(0, n_groups, n), \
        rng.normal(size=n), rng.uniform(0.5, 2.0, n)
    assert row_products(F, X, g, n_groups, y=y, limit=n * 10 - 1) is NO_ROW_PRODUCTS
    assert row_products(F, X, g, n_groups, y=y, limit=n * 10).P.shape == (n, 10)
    stats = compute_suffstats(y, F, X, g, n_groups)
    reweight(stats, NO_ROW_PRODUCTS, y, F, X, g, w)
    np.testing.assert_allclose(stats.XtX, compute_suffstats(y, F, X, g, n_groups, weights=w).XtX, rtol=1e-12)
