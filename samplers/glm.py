"""Non-Gaussian level 1 for the EB/ML fit: the Laplace approximation and adaptive quadrature.

For a binomial (logit or probit link) or Poisson (log link) response, the marginal likelihood
``p(y | theta, a) = integral p(y | a, b) p(b | theta) db`` has no closed form. Given
``(theta, a)``, penalised iteratively reweighted least squares (PIRLS) finds the conditional
mode ``b_hat`` of the group coefficients: each iteration forms per-row working weights
``w_i`` and working responses from the current linear predictor, recomputes the statistics
with them (:func:`samplers.suffstats.recompute`) and takes the mean of ``b`` under the
Gaussian working model through the seam (:func:`samplers.gaussian.integrate`,
:func:`samplers.gaussian.draw_coefficients`), so every structure (nested, crossed) is
covered by the same passes. Steps are halved until the penalised log-likelihood rises.

At the mode, the Laplace approximation (lme4's ``nAGQ = 1``) is

    log p(y | theta, a) ~ sum_i log p(y_i | eta_i) - b'T^{-1}b / 2 - log|I + C'Z'WZC| / 2,

and the Gaussian pass's own value ``ll_G = log N(z | 0, Z T Z' + W^{-1})`` at the same weights
carries the determinant, which gives it without forming it:
``sum_i log p(y_i | eta_i) + ll_G + N log(2 pi) / 2 - sum_i log w_i / 2 + sum_i w_i r_i^2 / 2``
with ``r_i`` the working residual (docs/design.md, "Non-Gaussian level 1").

With one grouping factor and one random coefficient (lme4's condition for ``nAGQ > 1``), the
integral factorises over the groups, and each one-dimensional integral is taken by
adaptive Gauss-Hermite quadrature centred at the group's mode with the scale of its
curvature (Liu & Pierce 1994; Pinheiro & Bates 1995). One node is the Laplace approximation.
"""

import math

import numpy as np
from numba import njit

from samplers.gaussian import draw_coefficients, finest_coefficients, forget_statistics, integrate
from samplers.suffstats import recompute
from samplers.theta import decode_theta
from samplers.types import FixedPrior

BINOMIAL_LOGIT, BINOMIAL_PROBIT, POISSON_LOG = 0, 1, 2  # family codes of the kernels
LOG_2PI = math.log(2.0 * math.pi)
_SQRT2 = math.sqrt(2.0)
_TINY_W = 1e-300


@njit(cache=True, nogil=True)
def _softplus(x):
    """``log(1 + exp(x))`` without overflow."""
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


@njit(cache=True, nogil=True)
def log_density(family, y, n, eta):
    """``log p(y | eta)`` of one row, normalising constants included (as lme4's ``logLik``)."""
    if family == POISSON_LOG:
        return y * eta - math.exp(eta) - math.lgamma(y + 1.0)
    const = math.lgamma(n + 1.0) - math.lgamma(y + 1.0) - math.lgamma(n - y + 1.0)
    if family == BINOMIAL_LOGIT:
        return const - y * _softplus(-eta) - (n - y) * _softplus(eta)
    p = 0.5 * math.erfc(-eta / _SQRT2)
    q = 0.5 * math.erfc(eta / _SQRT2)
    return const + y * math.log(max(p, 1e-300)) + (n - y) * math.log(max(q, 1e-300))


@njit(cache=True, nogil=True)
def working(family, y, n, eta):
    """``(w, r)``: the working weight (Fisher information in ``eta``) and residual ``(y - mu) / (dmu / deta)``."""
    if family == POISSON_LOG:
        mu = math.exp(eta)
        w = max(mu, _TINY_W)
        return w, (y - mu) / w
    if family == BINOMIAL_LOGIT:
        p = 1.0 / (1.0 + math.exp(-eta))
        w = max(n * p * (1.0 - p), _TINY_W)
        return w, (y - n * p) / w
    p = 0.5 * math.erfc(-eta / _SQRT2)
    q = 0.5 * math.erfc(eta / _SQRT2)
    dens = math.exp(-0.5 * eta * eta) / math.sqrt(2.0 * math.pi)
    w = max(n * dens * dens / max(p * q, 1e-300), _TINY_W)
    return w, (y - n * p) / max(n * dens, 1e-300)


@njit(cache=True, nogil=True)
def _penalty(structure, C, b):
    """``b' T^{-1} b`` summed over every group: ``|C_k^{-1} b_g|^2`` with ``C`` the factor of ``T``."""
    lp = structure.level_ptr
    npt = structure.node_ptr
    total = 0.0
    for k in range(lp.shape[0] - 1):
        c0 = lp[k]
        dk = lp[k + 1] - c0
        v = np.empty(dk)
        for g in range(npt[k], npt[k + 1]):
            for i in range(dk):
                t = b[g, c0 + i]
                for m in range(i):
                    t -= C[c0 + i, c0 + m] * v[m]
                # a zero SD (on the boundary) pins its coefficients at zero: no penalty
                v[i] = t / C[c0 + i, c0 + i] if C[c0 + i, c0 + i] != 0.0 else 0.0
                total += v[i] * v[i]
    return total


@njit(cache=True, nogil=True)
def row_terms(family, y, n, eta_fix, X, gidx, coef, eta, w, r):
    """Linear predictor, working weights and residuals of every row at the groups' ``coef``; returns ``sum log p``."""
    ll = 0.0
    d = X.shape[1]
    for i in range(y.shape[0]):
        e = eta_fix[i]
        g = gidx[i]
        for k in range(d):
            e += X[i, k] * coef[g, k]
        eta[i] = e
        w[i], r[i] = working(family, y[i], n[i], e)
        ll += log_density(family, y[i], n[i], e)
    return ll


@njit(cache=True, nogil=True)
def laplace(family, theta, a, y, n, offset, F, X, gidx, stats, work, structure, priors, b, nodes, weights,
            max_iter, tol):
    """The Laplace (one node) or adaptive Gauss-Hermite approximation of ``log p(y | theta, a)``.

    ``stats`` and ``work`` belong to a model without fixed columns (the fixed part
    ``F a + offset`` is the working model's offset); ``b`` holds the starting coefficients
    and receives the conditional modes; ``nodes`` and ``weights`` are the Gauss-Hermite rule
    (one node: the Laplace approximation; several: one grouping factor with one random
    coefficient only). Returns ``(value, n_iterations)``; the value is ``-inf`` when PIRLS
    fails.
    """
    n_obs = y.shape[0]
    d = X.shape[1]
    decode_theta(theta, structure, priors, work.C)
    C = work.C
    eta_fix = np.empty(n_obs)
    for i in range(n_obs):
        t = offset[i]
        for q in range(a.shape[0]):
            t += F[i, q] * a[q]
        eta_fix[i] = t
    eta = np.empty(n_obs)
    w = np.empty(n_obs)
    r = np.empty(n_obs)
    z = np.empty(n_obs)
    F0 = np.empty((n_obs, 0))
    a0 = np.empty(0)
    flat0 = FixedPrior(np.zeros((0, 0)), np.zeros(0), 0.0, 0)
    b_new = np.empty_like(b)
    b_try = np.empty_like(b)
    coef = finest_coefficients(work, structure, b)
    pl = row_terms(family, y, n, eta_fix, X, gidx, coef, eta, w, r) - 0.5 * _penalty(structure, C, b)
    it = 0
    while it < max_iter:
        it += 1
        coef = finest_coefficients(work, structure, b)
        for i in range(n_obs):
            t = r[i]
            g = gidx[i]
            for k in range(d):
                t += X[i, k] * coef[g, k]
            z[i] = t
        recompute(stats, z, F0, X, gidx, w)
        forget_statistics(work)
        _, ok = integrate(work, stats, structure, 1.0, flat0)
        if not ok:
            return -np.inf, it
        draw_coefficients(None, work, stats, structure, 1.0, a0, b_new, False)
        step = 1.0
        pl_try = -np.inf
        for _ in range(40):  # halve the step until the penalised log-likelihood does not fall
            for g in range(b.shape[0]):
                for k in range(d):
                    b_try[g, k] = b[g, k] + step * (b_new[g, k] - b[g, k])
            coef = finest_coefficients(work, structure, b_try)
            pl_try = row_terms(family, y, n, eta_fix, X, gidx, coef, eta, w, r) - 0.5 * _penalty(structure, C, b_try)
            if pl_try >= pl - 1e-13 * abs(pl):
                break
            step *= 0.5
        moved = 0.0
        for g in range(b.shape[0]):
            for k in range(d):
                moved = max(moved, abs(b_try[g, k] - b[g, k]))
                b[g, k] = b_try[g, k]
        done = abs(pl_try - pl) <= tol * (1.0 + abs(pl)) and moved <= 1e-7
        pl = pl_try
        if done:
            break
    # the weights and residuals are at b: one more weighted pass for the determinant
    coef = finest_coefficients(work, structure, b)
    ll_rows = row_terms(family, y, n, eta_fix, X, gidx, coef, eta, w, r)
    for i in range(n_obs):
        t = r[i]
        g = gidx[i]
        for k in range(d):
            t += X[i, k] * coef[g, k]
        z[i] = t
    recompute(stats, z, F0, X, gidx, w)
    forget_statistics(work)
    ll_g, ok = integrate(work, stats, structure, 1.0, flat0)
    if not ok or not np.isfinite(ll_rows):
        return -np.inf, it
    if nodes.shape[0] == 1:
        value = ll_rows + ll_g + 0.5 * n_obs * LOG_2PI
        for i in range(n_obs):
            value += -0.5 * math.log(w[i]) + 0.5 * w[i] * r[i] * r[i]
        return value, it
    # adaptive quadrature: one factor, one coefficient; each group's integral about its mode
    n_groups = b.shape[0]
    tau = abs(C[0, 0])
    if tau == 0.0:  # no group variation: the integrand is the rows' likelihood at b = 0
        return ll_rows, it
    curv = np.zeros(n_groups)
    for i in range(n_obs):
        curv[gidx[i]] += w[i] * X[i, 0] * X[i, 0]
    scale = np.empty(n_groups)
    for g in range(n_groups):
        scale[g] = 1.0 / math.sqrt(curv[g] + 1.0 / (tau * tau))
    K = nodes.shape[0]
    acc = np.zeros((n_groups, K))
    for g in range(n_groups):
        for k in range(K):
            u = b[g, 0] + _SQRT2 * scale[g] * nodes[k]
            acc[g, k] = -0.5 * (LOG_2PI + 2.0 * math.log(tau) + (u / tau) ** 2) + nodes[k] * nodes[k] \
                + math.log(weights[k])
    for i in range(n_obs):
        g = gidx[i]
        for k in range(K):
            acc[g, k] += log_density(family, y[i], n[i], eta[i] + X[i, 0] * _SQRT2 * scale[g] * nodes[k])
    value = 0.0
    for g in range(n_groups):
        top = acc[g, 0]
        for k in range(1, K):
            top = max(top, acc[g, k])
        s = 0.0
        for k in range(K):
            s += math.exp(acc[g, k] - top)
        value += top + math.log(s) + math.log(_SQRT2 * scale[g])
    return value, it
