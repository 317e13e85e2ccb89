"""The variance components and their unconstrained parameterisation.

``theta`` holds ``log sigma`` (unless the level-1 variances are known) and, for each
covariance block ``T_k = D R D`` of the group coefficients, first one entry per standard
deviation, ``tau_i = s_i sinh(theta)`` with a fixed scale ``s_i`` (``Structure.diag_scale``,
a tenth of the data's scale for that coefficient), then the hyperbolic arctangents of the
canonical partial correlations of ``R`` (Lewandowski, Kurowicka & Joe 2009), row by row.
The kernels receive the factor ``C = D L`` (``L`` the Cholesky factor of ``R``), so that
``T = C C'``.

Why this form:

* ``tau_i`` carries a sign: ``tau_i = 0`` is an ordinary interior point, so a standard
  deviation that shrinks to zero is no harder to sample than any other value (where a log
  scale would stretch the boundary region into a funnel). ``sinh`` is linear near zero and
  exponential far from it, so a well-determined but skewed SD is sampled on an almost
  logarithmic scale, where its posterior is close to symmetric.
* Standard deviations and correlations are separate coordinates: a prior with a finite
  density at ``tau = 0`` keeps a finite density in ``theta`` (Cartesian entries of ``C``
  would turn it into an infinite spike at the origin of each row, a trap for the sampler).
* Negating ``tau_i`` together with every correlation of coefficient ``i`` leaves ``T``
  unchanged: the map is ``2^d``-to-one, a symmetry the independence proposal uses
  (:func:`flip_columns`).

The prior is set on the natural scale (SDs and ``R``, or an inverse-Wishart on ``T``); its
density on ``theta`` uses ``d tau_i / d theta = s_i cosh(theta)``, the Jacobian of the
canonical partial correlations to the Cholesky factor of ``R`` and of that factor to
``R``, and, for the inverse-Wishart, ``|dT / d(tau, R)| = 2^d prod |tau_i|^d``.
"""

import numpy as np
from numba import njit

from samplers.linalg import chol_inplace, logdet_chol, solve_lower_cols
from samplers.sd_priors import sd_log_prior

LOG2 = np.log(2.0)


@njit(cache=True, nogil=True, inline="always")
def _log_sech2(y):
    # log(1 - tanh(y)^2) without cancellation for large |y|
    ay = abs(y)
    return 2.0 * (np.log(2.0) - ay - np.log1p(np.exp(-2.0 * ay)))


@njit(cache=True, nogil=True)
def _mapped_block_log_prior(C, priors, c0, dk, eta, sum_log_tau, log_det_R):
    """Log prior of a block whose SD and LKJ priors hold for ``G b`` rather than ``b`` (``T_G = G T G'``).

    With ``(s, R)`` the SDs and correlations of ``T`` in the kernels' coordinates and
    ``(s_G, R_G)`` those of ``T_G``, the density of ``(s, R)`` induced by the prior on
    ``(s_G, R_G)`` is ``p(s_G) p(R_G) |dT_G/d(s_G, R_G)|^{-1} |dT_G/dT| |dT/d(s, R)|``; with
    ``|dT/d(s, R)| = 2^d prod s_i^d`` and ``|dT_G/dT| = |det G|^{d+1}`` this is, up to a
    constant, ``p(s_G) det(R_G)^(eta - 1) prod (s_i / s_G,i)^d``, and
    ``det R_G = det(G)^2 det(T) / prod s_G,i^2``. The constant
    ``(2 eta - 2 + d + 1) log|det G|`` is left out (the marginal likelihood adds it).
    """
    T = np.zeros((dk, dk))
    for i in range(dk):
        for j in range(i + 1):
            t = 0.0
            for m in range(j + 1):
                t += C[c0 + i, c0 + m] * C[c0 + j, c0 + m]
            T[i, j] = t
            T[j, i] = t
    G = priors.prior_map[c0 : c0 + dk, c0 : c0 + dk]
    lp = 0.0
    sum_log_sd = 0.0
    for i in range(dk):
        v = 0.0  # (G T G')_ii
        for a in range(dk):
            ga = G[i, a]
            if ga == 0.0:
                continue
            for b in range(dk):
                v += ga * T[a, b] * G[i, b]
        sd = np.sqrt(max(v, 0.0))
        if sd == 0.0:
            return -np.inf
        sum_log_sd += np.log(sd)
        lp += sd_log_prior(priors.sd_kind[c0 + i], priors.sd_par[c0 + i], sd)
    log_det_T = 2.0 * sum_log_tau + log_det_R
    lp += (eta - 1.0) * (log_det_T - 2.0 * sum_log_sd) + dk * (sum_log_tau - sum_log_sd)
    return lp


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
        ``-inf`` where the prior gives no density (a singular block under an inverse-Wishart).
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
        t0 = structure.theta_ptr[k]
        # Cholesky factor of the correlation matrix into C's block (rows scaled below)
        idx = t0 + dk
        log_jac = 0.0  # canonical partial correlations -> Cholesky factor of R
        log_jac_R = 0.0  # Cholesky factor of R -> R
        log_det_R = 0.0
        for i in range(dk):
            ss = 0.0
            for j in range(i):
                z = np.tanh(theta[idx])
                rem = 1.0 - ss
                v = z * np.sqrt(rem)
                C[c0 + i, c0 + j] = v
                log_jac += _log_sech2(theta[idx]) + 0.5 * np.log(rem)
                ss += v * v
                idx += 1
            lii = np.sqrt(max(1.0 - ss, 1e-300))
            C[c0 + i, c0 + i] = lii
            log_det_R += 2.0 * np.log(lii)
            log_jac_R += (dk - i - 1.0) * np.log(lii)
        lp += log_jac + log_jac_R
        sum_log_tau = 0.0
        mapped = priors.block_iw[k] == 0 and priors.block_map[k] == 1
        for i in range(dk):
            eta = theta[t0 + i]
            scale = structure.diag_scale[c0 + i]
            tau = scale * np.sinh(eta)
            lp += np.log(scale * np.cosh(eta))
            for j in range(i + 1):
                C[c0 + i, c0 + j] *= tau
            abs_tau = abs(tau)
            if priors.block_iw[k] == 0 and not mapped:
                lp += sd_log_prior(priors.sd_kind[c0 + i], priors.sd_par[c0 + i], abs_tau)
            elif abs_tau == 0.0:
                return s2, -np.inf
            else:
                sum_log_tau += np.log(abs_tau)
        if mapped:
            lp += _mapped_block_log_prior(C, priors, c0, dk, priors.block_eta[k], sum_log_tau, log_det_R)
        elif priors.block_iw[k] == 0:
            lp += (priors.block_eta[k] - 1.0) * log_det_R
        else:
            nu = priors.block_eta[k]
            # tr(Psi T^{-1}) = ||C^{-1} P||_F^2 with Psi = P P'
            P = priors.iw_scale[c0 : c0 + dk, c0 : c0 + dk].copy()
            chol_inplace(P)
            solve_lower_cols(C[c0 : c0 + dk, c0 : c0 + dk].copy(), P)
            tr = 0.0
            for i in range(dk):
                for j in range(dk):
                    tr += P[i, j] * P[i, j]
            log_det_T = 2.0 * sum_log_tau + log_det_R
            lp += -0.5 * (nu + dk + 1.0) * log_det_T - 0.5 * tr + dk * sum_log_tau
    return s2, lp


@njit(cache=True, nogil=True)
def encode_theta(s2, T, structure, theta):
    """Inverse of :func:`decode_theta` (with positive SDs): write the ``theta`` of ``(s2, T)``.

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
            tau = np.sqrt(T[c0 + i, c0 + i])
            theta[t0 + i] = np.arcsinh(tau / structure.diag_scale[c0 + i])
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


def covariances(theta_draws, structure):
    """Level-1 variance and group covariance ``T = C C'`` of many draws of ``theta``.

    The factor ``C`` of :func:`decode_theta` (without its prior density), for all draws at
    once with NumPy: this runs once per fit, on a few thousand draws, and so is not worth
    compiling.

    Parameters
    ----------
    theta_draws : ndarray of shape (n_draws, n_theta)
    structure : Structure

    Returns
    -------
    s2 : ndarray of shape (n_draws,)
        Level-1 variance (1 when known).
    T : ndarray of shape (n_draws, n_coef, n_coef)
        Block-diagonal covariance of the group coefficients.
    """
    theta_draws = np.asarray(theta_draws, dtype=np.float64)
    n_draws = theta_draws.shape[0]
    d = int(structure.block_ptr[-1])
    s2 = np.ones(n_draws) if structure.sigma_known == 1 else np.exp(2.0 * theta_draws[:, 0])
    C = np.zeros((n_draws, d, d))
    for k in range(structure.block_ptr.shape[0] - 1):
        c0 = int(structure.block_ptr[k])
        dk = int(structure.block_ptr[k + 1]) - c0
        t0 = int(structure.theta_ptr[k])
        idx = t0 + dk
        for i in range(dk):  # row i of the Cholesky factor of the correlation matrix
            ss = np.zeros(n_draws)
            for j in range(i):
                v = np.tanh(theta_draws[:, idx]) * np.sqrt(1.0 - ss)
                C[:, c0 + i, c0 + j] = v
                ss += v * v
                idx += 1
            C[:, c0 + i, c0 + i] = np.sqrt(np.maximum(1.0 - ss, 1e-300))
            C[:, c0 + i, c0 : c0 + i + 1] *= (structure.diag_scale[c0 + i] * np.sinh(theta_draws[:, t0 + i]))[:, None]
    return s2, C @ np.transpose(C, (0, 2, 1))


def sd_corr(T):
    """Standard deviations ``(..., n)`` and correlation matrices ``(..., n, n)`` of covariance matrices."""
    sd = np.sqrt(np.maximum(np.einsum("...ii->...i", T), 0.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = T / (sd[..., :, None] * sd[..., None, :])
    return sd, corr


@njit(cache=True, nogil=True, inline="always")
def _odd(x):
    parity = 0
    while x:
        parity ^= 1
        x &= x - 1
    return parity == 1


@njit(cache=True, nogil=True, inline="always")
def canonical_mask(theta, structure):
    """Bit mask of the coefficients whose signed SD is negative."""
    mask = 0
    for col in range(structure.sd_idx.shape[0]):
        if theta[structure.sd_idx[col]] < 0.0:
            mask |= 1 << col
    return mask


@njit(cache=True, nogil=True)
def flip_columns(theta, structure, mask, out):
    """``theta`` with the coefficients in bit mask ``mask`` reflected (same ``T``, same density).

    Reflecting coefficient ``i`` negates its signed SD and every correlation between it and
    another coefficient (entry ``k`` is negated when an odd number of the coefficients in
    ``Structure.flip_bits[k]`` are in the mask). The map is an involution;
    ``canonical_mask(theta)`` gives the canonical representative, with non-negative SDs.
    """
    for i in range(theta.shape[0]):
        if _odd(mask & structure.flip_bits[i]):
            out[i] = -theta[i]
        else:
            out[i] = theta[i]
