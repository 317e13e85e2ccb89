"""The variance components and their unconstrained parameterisation.

``theta`` holds ``log sigma`` (unless the level-1 variances are known) and, for each
covariance block ``T_k`` of the group coefficients, the entries of a lower-triangular
factor ``C_k`` with ``T_k = C_k C_k'``, row by row (``C[0,0], C[1,0], C[1,1], C[2,0], ...``).
Off the diagonal ``theta`` is the entry itself; on the diagonal ``C_ii = s_i sinh(theta)``
with a fixed scale ``s_i`` (``Structure.diag_scale``, a tenth of the data's scale for that
coefficient). Every real ``theta`` is valid, and flipping the sign of a column of ``C``
leaves ``T`` unchanged, so the map is ``2^d``-to-one and the prior density of ``theta``
carries a factor ``2^{-d}``.

Why this form: near zero, ``sinh`` is linear, so a standard deviation that shrinks to zero
is an ordinary interior point (the non-centred view of a variance) and the sampler moves
through the boundary region as freely as anywhere else, where a log scale would stretch
it into a funnel; far from zero, ``sinh`` is exponential, so a well-determined but skewed
standard deviation is sampled on an almost logarithmic scale, where its posterior is close
to symmetric.

The prior is set on the natural scale (standard deviations ``tau_i`` and correlations
``R``, or an inverse-Wishart on ``T``); its density on ``theta`` uses the Jacobians
``|dT / d(tau, R)| = 2^d prod tau_i^d``, ``|dT / dC| = 2^d prod |C_ii|^(d-i)``
(``i = 0 .. d-1``) and ``dC_ii / dtheta = s_i cosh(theta)``.
"""

import numpy as np
from numba import njit

from samplers.linalg import chol_inplace, logdet_chol, solve_lower_cols
from samplers.types import (
    PRIOR_FLAT,
    PRIOR_HALF_NORMAL,
    PRIOR_HALF_T,
    PRIOR_INV_GAMMA,
    PRIOR_UNIFORM,
)

LOG2 = np.log(2.0)


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
def decode_theta(theta, structure, priors, C):
    """Variance components from ``theta``, with the log prior density of ``theta``.

    Parameters
    ----------
    theta : ndarray of shape (n_theta,)
    structure : Structure
    priors : Priors
    C : ndarray of shape (n_coef, n_coef)
        Output: block-diagonal lower-triangular factor with ``T = C C'``.

    Returns
    -------
    s2 : float
        Level-1 variance (1 when known).
    log_prior : float
        Log prior density of ``theta`` (Jacobians included, additive constants dropped);
        ``-inf`` where a covariance block is singular and the prior gives it no density.
    """
    C[:, :] = 0.0
    lp = 0.0
    if structure.sigma_known == 1:
        s2 = 1.0
    else:
        sigma = np.exp(theta[0])
        s2 = sigma * sigma
        lp += sd_log_prior(priors.sigma_kind, priors.sigma_par, sigma) + theta[0]
    n_blocks = structure.block_ptr.shape[0] - 1
    for k in range(n_blocks):
        c0 = structure.block_ptr[k]
        dk = structure.block_ptr[k + 1] - c0
        idx = structure.theta_ptr[k]
        for i in range(dk):
            for j in range(i):
                C[c0 + i, c0 + j] = theta[idx]
                idx += 1
            eta = theta[idx]
            scale = structure.diag_scale[c0 + i]
            C[c0 + i, c0 + i] = scale * np.sinh(eta)
            lp += np.log(scale * np.cosh(eta))
            idx += 1
        sum_log_cii = 0.0  # sum (d - i) log|C_ii|: the Jacobian of C -> T, over 2^d
        log_det_T = 0.0
        for i in range(dk):
            cii = abs(C[c0 + i, c0 + i])
            if cii == 0.0:
                return s2, -np.inf
            sum_log_cii += (dk - i) * np.log(cii)
            log_det_T += 2.0 * np.log(cii)
        lp += sum_log_cii
        if priors.block_iw[k] == 1:
            nu = priors.block_eta[k]
            # tr(Psi T^{-1}) = ||C^{-1} P||_F^2 with Psi = P P'
            P = priors.iw_scale[c0 : c0 + dk, c0 : c0 + dk].copy()
            chol_inplace(P)
            solve_lower_cols(C[c0 : c0 + dk, c0 : c0 + dk].copy(), P)
            tr = 0.0
            for i in range(dk):
                for j in range(dk):
                    tr += P[i, j] * P[i, j]
            lp += -0.5 * (nu + dk + 1.0) * log_det_T - 0.5 * tr
        else:
            sum_log_tau = 0.0
            for i in range(dk):
                t = 0.0
                for j in range(i + 1):
                    t += C[c0 + i, c0 + j] * C[c0 + i, c0 + j]
                tau = np.sqrt(t)
                sum_log_tau += np.log(tau)
                lp += sd_log_prior(priors.sd_kind[c0 + i], priors.sd_par[c0 + i], tau)
            lp -= dk * LOG2 + dk * sum_log_tau
            if dk > 1:
                log_det_R = log_det_T - 2.0 * sum_log_tau
                lp += (priors.block_eta[k] - 1.0) * log_det_R
    return s2, lp


@njit(cache=True, nogil=True)
def encode_theta(s2, T, structure, theta):
    """Inverse of :func:`decode_theta` (with positive diagonals): ``theta`` of ``(s2, T)``.

    Returns False when a block of ``T`` is not positive definite.
    """
    if structure.sigma_known == 0:
        theta[0] = 0.5 * np.log(s2)
    n_blocks = structure.block_ptr.shape[0] - 1
    for k in range(n_blocks):
        c0 = structure.block_ptr[k]
        dk = structure.block_ptr[k + 1] - c0
        Cb = T[c0 : c0 + dk, c0 : c0 + dk].copy()
        if not chol_inplace(Cb):
            return False
        idx = structure.theta_ptr[k]
        for i in range(dk):
            for j in range(i):
                theta[idx] = Cb[i, j]
                idx += 1
            theta[idx] = np.arcsinh(Cb[i, i] / structure.diag_scale[c0 + i])
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
    for s in range(theta_draws.shape[0]):
        s2, _ = decode_theta(theta_draws[s], structure, priors, T_chol)
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


@njit(cache=True, nogil=True)
def canonical_mask(theta, structure):
    """Bit mask of the columns of ``C`` whose diagonal entry is negative."""
    mask = 0
    for col in range(structure.diag_idx.shape[0]):
        if theta[structure.diag_idx[col]] < 0.0:
            mask |= 1 << col
    return mask


@njit(cache=True, nogil=True)
def flip_columns(theta, structure, mask, out):
    """``theta`` of ``C`` with the columns in bit mask ``mask`` negated (same ``T``, same density).

    Negating column ``i`` of ``C`` negates ``C_ii`` (so its ``arcsinh`` entry) and the entries
    below it in its block. The map is an involution; ``canonical_mask(theta)`` gives the
    canonical representative, with a non-negative diagonal.
    """
    for i in range(theta.shape[0]):
        col = structure.theta_col[i]
        if col >= 0 and (mask >> col) & 1 == 1:
            out[i] = -theta[i]
        else:
            out[i] = theta[i]
