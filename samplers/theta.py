"""The variance components and their unconstrained parameterisation.

``theta`` holds ``log sigma`` (unless the level-1 variances are known) and, for each
covariance block of ``T``, the log standard deviations followed by the hyperbolic
arctangents of the canonical partial correlations. The Cholesky factor of a block's
correlation matrix is built from them as in Lewandowski, Kurowicka & Joe (2009), so every
real vector is a valid covariance and the LKJ density has a closed form.
"""

import numpy as np
from numba import njit

from samplers.linalg import chol_inplace, logdet_chol
from samplers.types import (
    PRIOR_FLAT,
    PRIOR_HALF_NORMAL,
    PRIOR_HALF_T,
    PRIOR_INV_GAMMA,
    PRIOR_UNIFORM,
)


@njit(cache=True, nogil=True)
def sd_log_prior(kind, par, x):
    """Log prior density (up to a constant) of a standard deviation ``x > 0``."""
    if kind == PRIOR_FLAT:
        return 0.0
    if kind == PRIOR_HALF_NORMAL:
        u = x / par[0]
        return -0.5 * u * u
    if kind == PRIOR_HALF_T:
        u = x / par[1]
        return -0.5 * (par[0] + 1.0) * np.log1p(u * u / par[0])
    if kind == PRIOR_UNIFORM:
        return 0.0 if x < par[0] else -np.inf
    if kind == PRIOR_INV_GAMMA:
        v = x * x
        return -(par[0] + 1.0) * np.log(v) - par[1] / v + np.log(x)
    return -np.inf


@njit(cache=True, nogil=True)
def _log_sech2(y):
    # log(1 - tanh(y)^2) without cancellation for large |y|.
    ay = abs(y)
    return 2.0 * (np.log(2.0) - ay - np.log1p(np.exp(-2.0 * ay)))


@njit(cache=True, nogil=True)
def decode_theta(theta, structure, priors, T_chol, Lam):
    """Variance components from ``theta``, with the log prior density of ``theta``.

    Parameters
    ----------
    theta : ndarray of shape (n_theta,)
    structure : Structure
    priors : Priors
    T_chol : ndarray of shape (n_coef, n_coef)
        Output: block-diagonal lower Cholesky factor of ``T``.
    Lam : ndarray of shape (n_coef, n_coef)
        Output: ``T^{-1}``.

    Returns
    -------
    s2 : float
        Level-1 variance (1 when known).
    logdet_T : float
        ``log |T|``.
    log_prior : float
        Log prior density of ``theta`` on the unconstrained scale (Jacobians included,
        additive constants dropped).
    """
    d = T_chol.shape[0]
    T_chol[:, :] = 0.0
    Lam[:, :] = 0.0
    lp = 0.0
    if structure.sigma_known == 1:
        s2 = 1.0
    else:
        sigma = np.exp(theta[0])
        s2 = sigma * sigma
        lp += sd_log_prior(priors.sigma_kind, priors.sigma_par, sigma) + theta[0]
    logdet_T = 0.0
    n_blocks = structure.block_ptr.shape[0] - 1
    for k in range(n_blocks):
        c0 = structure.block_ptr[k]
        dk = structure.block_ptr[k + 1] - c0
        t0 = structure.theta_ptr[k]
        # correlation Cholesky factor into T_chol's block, then scale rows by the SDs
        idx = t0 + dk
        log_jac = 0.0
        lkj = 0.0
        for i in range(dk):
            ss = 0.0
            for j in range(i):
                z = np.tanh(theta[idx])
                rem = 1.0 - ss
                v = z * np.sqrt(rem)
                T_chol[c0 + i, c0 + j] = v
                log_jac += _log_sech2(theta[idx]) + 0.5 * np.log(rem)
                ss += v * v
                idx += 1
            lii = np.sqrt(max(1.0 - ss, 1e-300))
            T_chol[c0 + i, c0 + i] = lii
            if i > 0:
                lkj += (dk - i - 1.0) * np.log(lii)  # Jacobian from R to its Cholesky factor
                if priors.block_iw[k] == 0:
                    lkj += (2.0 * priors.block_eta[k] - 2.0) * np.log(lii)
        sum_log_sd = 0.0
        for i in range(dk):
            log_sd = theta[t0 + i]
            sum_log_sd += log_sd
            sd = np.exp(log_sd)
            for j in range(i + 1):
                T_chol[c0 + i, c0 + j] *= sd
            if priors.block_iw[k] == 0:
                lp += sd_log_prior(priors.sd_kind[c0 + i], priors.sd_par[c0 + i], sd) + log_sd
        block_logdet = 0.0
        for i in range(dk):
            block_logdet += 2.0 * np.log(T_chol[c0 + i, c0 + i])
        logdet_T += block_logdet
        # Lam block = (C C')^{-1} = C^{-T} C^{-1}; C^{-1} by forward substitution
        Cinv = np.zeros((dk, dk))
        for col in range(dk):
            for i in range(col, dk):
                t = 1.0 if i == col else 0.0
                for m in range(col, i):
                    t -= T_chol[c0 + i, c0 + m] * Cinv[m, col]
                Cinv[i, col] = t / T_chol[c0 + i, c0 + i]
        for r in range(dk):
            for s in range(dk):
                t = 0.0
                for m in range(max(r, s), dk):
                    t += Cinv[m, r] * Cinv[m, s]
                Lam[c0 + r, c0 + s] = t
        lp += lkj + log_jac
        if priors.block_iw[k] == 1:
            nu = priors.block_eta[k]
            tr = 0.0
            for r in range(dk):
                for s in range(dk):
                    tr += priors.iw_scale[c0 + r, c0 + s] * Lam[c0 + s, c0 + r]
            # density of T, times the Jacobian of (log sd, canonical params) -> T
            lp += -0.5 * (nu + dk + 1.0) * block_logdet - 0.5 * tr
            lp += dk * np.log(2.0) + (dk + 1.0) * sum_log_sd
    return s2, logdet_T, lp


@njit(cache=True, nogil=True)
def encode_theta(s2, T, structure, theta):
    """Inverse of :func:`decode_theta`: write the unconstrained ``theta`` of ``(s2, T)``.

    Returns False when a block of ``T`` is not positive definite.
    """
    if structure.sigma_known == 0:
        theta[0] = 0.5 * np.log(s2)
    n_blocks = structure.block_ptr.shape[0] - 1
    for k in range(n_blocks):
        c0 = structure.block_ptr[k]
        dk = structure.block_ptr[k + 1] - c0
        t0 = structure.theta_ptr[k]
        R = np.empty((dk, dk))
        for i in range(dk):
            theta[t0 + i] = 0.5 * np.log(T[c0 + i, c0 + i])
        for i in range(dk):
            for j in range(dk):
                R[i, j] = T[c0 + i, c0 + j] / np.sqrt(T[c0 + i, c0 + i] * T[c0 + j, c0 + j])
        if not chol_inplace(R):
            return False
        idx = t0 + dk
        for i in range(dk):
            ss = 0.0
            for j in range(i):
                z = R[i, j] / np.sqrt(max(1.0 - ss, 1e-300))
                z = min(max(z, -1.0 + 1e-15), 1.0 - 1e-15)
                theta[idx] = np.arctanh(z)
                ss += R[i, j] * R[i, j]
                idx += 1
    return True


@njit(cache=True, nogil=True)
def block_log_ratio_weight(T_block, kind, par, eta):
    """Log of ``p(T) |T|^{(d+1)/2}`` for a block with independent SD priors and LKJ(eta).

    This is the factor by which the prior differs from the reference ``|T|^{-(d+1)/2}``
    used to propose in the conditional (Gibbs) update of ``T``.
    """
    dk = T_block.shape[0]
    h = 0.0
    sum_log_sd = 0.0
    for i in range(dk):
        sd = np.sqrt(T_block[i, i])
        sum_log_sd += np.log(sd)
        h += sd_log_prior(kind[i], par[i], sd) + np.log(sd)
    C = T_block.copy()
    if not chol_inplace(C):
        return -np.inf
    log_det_R = logdet_chol(C) - 2.0 * sum_log_sd
    h += (eta - 1.0 + 0.5 * (dk + 1.0)) * log_det_R
    return h


@njit(cache=True, nogil=True)
def components(theta_draws, structure, priors, out_s2, out_sd, out_corr):
    """Natural-scale variance components of many draws of ``theta``.

    Parameters
    ----------
    theta_draws : ndarray of shape (n_draws, n_theta)
    structure : Structure
    priors : Priors
    out_s2 : ndarray of shape (n_draws,)
        Output: level-1 variance (1 when known).
    out_sd : ndarray of shape (n_draws, n_coef)
        Output: standard deviations of the group coefficients.
    out_corr : ndarray of shape (n_draws, n_coef, n_coef)
        Output: their correlation matrix (zero across blocks).
    """
    d = out_sd.shape[1]
    T_chol = np.empty((d, d))
    Lam = np.empty((d, d))
    for s in range(theta_draws.shape[0]):
        s2, _, _ = decode_theta(theta_draws[s], structure, priors, T_chol, Lam)
        out_s2[s] = s2
        for i in range(d):
            t = 0.0
            for m in range(i + 1):
                t += T_chol[i, m] * T_chol[i, m]
            out_sd[s, i] = np.sqrt(t)
        for i in range(d):
            for j in range(d):
                t = 0.0
                for m in range(min(i, j) + 1):
                    t += T_chol[i, m] * T_chol[j, m]
                out_corr[s, i, j] = t / (out_sd[s, i] * out_sd[s, j])
