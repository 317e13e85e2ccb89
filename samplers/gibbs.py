"""Conditional updates of the variance components given the coefficients.

``s2 | a, b, y`` and each covariance block ``T_k | b``. With the conjugate priors
(inverse-gamma on ``s2``, inverse-Wishart on a block) the draw is exact. With any other
prior the conjugate draw under a reference prior (``1/s2``, ``|T|^{-(d+1)/2}``) is used as
an independence Metropolis-Hastings proposal and accepted with the ratio of prior to
reference, which is close to 1 whenever the data dominate the prior.
"""

import numpy as np
from numba import njit

from samplers.linalg import chol_inplace
from samplers.sd_priors import PRIOR_INV_GAMMA, sd_log_prior
from samplers.theta import block_log_ratio_weight
from samplers.types import N_OBS, YTY


@njit(cache=True, nogil=True)
def residual_ss(stats, a, b):
    """Weighted residual sum of squares ``sum_i w_i (y_i - F_i a - X_i b_j)^2`` from the statistics."""
    p = a.shape[0]
    n_groups = b.shape[0]
    d = b.shape[1]
    rss = stats.scal[YTY]
    for q in range(p):
        rss -= 2.0 * a[q] * stats.Fty[q]
        for r in range(p):
            rss += a[q] * stats.FtF[q, r] * a[r]
    for j in range(n_groups):
        for k in range(d):
            t = stats.Xty[j, k]
            for q in range(p):
                t -= stats.XtF[j, k, q] * a[q]
            rss -= 2.0 * b[j, k] * t
            for m in range(d):
                rss += b[j, k] * stats.XtX[j, k, m] * b[j, m]
    return max(rss, 0.0)


@njit(cache=True, nogil=True, inline="always")
def update_s2(rng, stats, a, b, s2, priors):
    """Draw ``s2 | a, b, y``.

    Returns
    -------
    s2 : float
        The new value.
    accepted : float
        1.0 if the move was accepted (always for the conjugate inverse-gamma prior).
    """
    return update_s2_given_rss(rng, residual_ss(stats, a, b), stats.scal[N_OBS], s2, priors)


@njit(cache=True, nogil=True, inline="always")
def update_s2_given_rss(rng, rss, n_obs, s2, priors):
    """Draw ``s2 | a, b, y`` given the weighted residual sum of squares at ``(a, b)``; as :func:`update_s2`."""
    if priors.sigma_kind == PRIOR_INV_GAMMA:
        shape = priors.sigma_par[0] + 0.5 * n_obs
        rate = priors.sigma_par[1] + 0.5 * rss
        return rate / rng.standard_gamma(shape), 1.0
    prop = 0.5 * rss / rng.standard_gamma(0.5 * n_obs)
    sd_new = np.sqrt(prop)
    sd_old = np.sqrt(s2)
    log_ratio = (sd_log_prior(priors.sigma_kind, priors.sigma_par, sd_new) + np.log(sd_new)) - (
        sd_log_prior(priors.sigma_kind, priors.sigma_par, sd_old) + np.log(sd_old)
    )
    if np.log(rng.random()) < log_ratio:
        return prop, 1.0
    return s2, 0.0


@njit(cache=True, nogil=True)
def draw_inv_wishart(rng, nu, Psi, out):
    """Draw ``out ~ inverse-Wishart(nu, Psi)`` (density proportional to ``|T|^{-(nu+d+1)/2} exp(-tr(Psi T^{-1})/2)``).

    Bartlett decomposition: with ``Psi = C C'`` and ``A`` lower triangular,
    ``A_ii^2 ~ chi2(nu - i)``, ``A_ij ~ N(0, 1)`` below the diagonal, ``T = C A'^{-1} A^{-1} C'``.
    Returns False when ``Psi`` is not positive definite.
    """
    d = Psi.shape[0]
    C = Psi.copy()
    if not chol_inplace(C):
        return False
    A = np.zeros((d, d))
    for i in range(d):
        A[i, i] = np.sqrt(2.0 * rng.standard_gamma(0.5 * (nu - i)))
        for j in range(i):
            A[i, j] = rng.standard_normal()
    # Ainv = A^{-1} (lower triangular)
    Ainv = np.zeros((d, d))
    for col in range(d):
        for i in range(col, d):
            t = 1.0 if i == col else 0.0
            for m in range(col, i):
                t -= A[i, m] * Ainv[m, col]
            Ainv[i, col] = t / A[i, i]
    # B = C Ainv', T = B B'
    B = np.zeros((d, d))
    for i in range(d):
        for j in range(d):
            t = 0.0
            for m in range(min(i, j) + 1):  # both factors are lower triangular
                t += C[i, m] * Ainv[j, m]
            B[i, j] = t
    for i in range(d):
        for j in range(d):
            t = 0.0
            for m in range(d):
                t += B[i, m] * B[j, m]
            out[i, j] = t
    return True


@njit(cache=True, nogil=True, inline="always")
def update_T(rng, b, T, structure, priors):
    """Draw each covariance block ``T_k | b`` in place.

    Returns
    -------
    accepted : float
        Fraction of blocks whose move was accepted.
    ok : bool
        False when a proposal could not be formed (fewer groups than coefficients in a block,
        or group coefficients that are exactly collinear).
    """
    n_blocks = structure.block_ptr.shape[0] - 1
    n_acc = 0.0
    lp = structure.level_ptr
    for k in range(n_blocks):
        c0 = structure.block_ptr[k]
        dk = structure.block_ptr[k + 1] - c0
        # the rows of b holding the groups of this block's factor
        lev = 0
        while lp[lev + 1] <= c0:
            lev += 1
        g0, g1 = structure.node_ptr[lev], structure.node_ptr[lev + 1]
        n_groups = g1 - g0
        S = np.zeros((dk, dk))
        for j in range(g0, g1):
            for r in range(dk):
                for s in range(dk):
                    S[r, s] += b[j, c0 + r] * b[j, c0 + s]
        prop = np.empty((dk, dk))
        if priors.block_iw[k] == 1:
            for r in range(dk):
                for s in range(dk):
                    S[r, s] += priors.iw_scale[c0 + r, c0 + s]
            if not draw_inv_wishart(rng, priors.block_eta[k] + n_groups, S, prop):
                return 0.0, False
            accept = True
        else:
            if not draw_inv_wishart(rng, float(n_groups), S, prop):
                return 0.0, False
            kind = priors.sd_kind[c0 : c0 + dk]
            par = priors.sd_par[c0 : c0 + dk]
            eta = priors.block_eta[k]
            current = np.ascontiguousarray(T[c0 : c0 + dk, c0 : c0 + dk])
            if priors.block_map[k] == 1:
                # the prior holds for G b: the reference |T|^{-(d+1)/2} is invariant under
                # T -> G T G' up to a constant, so the ratio is the prior's at G T G'
                G = np.ascontiguousarray(priors.prior_map[c0 : c0 + dk, c0 : c0 + dk])
                log_ratio = block_log_ratio_weight(G @ prop @ G.T, kind, par, eta) - block_log_ratio_weight(
                    G @ current @ G.T, kind, par, eta)
            else:
                log_ratio = block_log_ratio_weight(prop, kind, par, eta) - block_log_ratio_weight(
                    current, kind, par, eta)
            accept = np.log(rng.random()) < log_ratio
        if accept:
            n_acc += 1.0
            for r in range(dk):
                for s in range(dk):
                    T[c0 + r, c0 + s] = prop[r, s]
    return (n_acc / n_blocks if n_blocks else 1.0), True
