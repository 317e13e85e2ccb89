"""The Gaussian part of a two-level model: upward pass (integrate out), downward pass (draw or mean).

One implementation of the seam of :mod:`samplers.gaussian` (docs/design.md, "The single
seam"): one grouping factor with random coefficients. Given the variance components, all
coefficients are jointly Gaussian. The upward pass integrates the group coefficients out,
group by group, in information form (docs/design.md, "The Gaussian passes"), and then the
fixed effects; it returns the marginal log-likelihood of the variance components. The
downward pass draws the fixed effects from their conditional posterior and each group's
coefficients given them: an exact joint draw of every coefficient given ``theta``. Neither
pass touches the observations: the cost is ``O(n_groups * (n_coef^2 n_fixed + n_coef
n_fixed^2))``.

Two levels are written out here, with closed forms for one and two coefficients; the
message a group sends upward (its contribution to ``A``, ``c``, ``y'V^{-1}y`` and
``log|V|``) is the same object the nested passes of :mod:`samplers.nested` send from
children to parents.

References
----------
Lindley, D. V. & Smith, A. F. M. (1972). Bayes estimates for the linear model. JRSS B 34.
Bates, D. et al. (2015). Fitting linear mixed-effects models using lme4. JSS 67(1).
"""

import numpy as np
from numba import njit

from samplers.linalg import chol_inplace, logdet_chol, solve_lower, solve_lower_cols, solve_upper
from samplers.nested import add_score_terms
from samplers.types import N_OBS, SUM_LOG_W, YTY

LOG_2PI = np.log(2.0 * np.pi)


@njit(cache=True, nogil=True)
def _group_precision(XtX_j, C, inv_s2, K, XC):
    """Lower triangle of ``K_j = I + C'X_j'W_jX_jC / s2`` into ``K`` (``XC`` is work space)."""
    d = C.shape[0]
    for r in range(d):
        for s in range(d):
            t = 0.0
            for m in range(s, d):
                t += XtX_j[r, m] * C[m, s]
            XC[r, s] = t
    for r in range(d):
        for s in range(r + 1):
            t = 0.0
            for m in range(r, d):
                t += C[m, r] * XC[m, s]
            K[r, s] = t * inv_s2 + (1.0 if r == s else 0.0)


@njit(cache=True, nogil=True)
def _precision_2x2(XtX, j, c00, c10, c11, inv_s2):
    """``K_j = I + C'X_j'W_jX_jC / s2`` for two coefficients, ``C = [[c00, 0], [c10, c11]]``.

    Returns ``(k00, k10, k11)``; written out (and indexing ``XtX[j]`` without a view)
    because two coefficients are the common case and the generic loops cost several times
    more there.
    """
    x00 = XtX[j, 0, 0]
    x10 = XtX[j, 1, 0]
    x11 = XtX[j, 1, 1]
    k00 = 1.0 + (c00 * c00 * x00 + 2.0 * c00 * c10 * x10 + c10 * c10 * x11) * inv_s2
    k10 = (c11 * (c00 * x10 + c10 * x11)) * inv_s2
    k11 = 1.0 + c11 * c11 * x11 * inv_s2
    return k00, k10, k11


@njit(cache=True, nogil=True, inline="always")
def upward(stats, s2, C, fixed, L_out, LA_out, c_out):
    """Integrate out the group coefficients and the fixed effects.

    The group covariance is given by a factor ``T = C C'`` (``C`` may be singular: a zero
    variance is an ordinary value). Writing ``b_j = C beta_j`` with ``beta_j ~ N(0, I)``,
    ``K_j = I + C'X_j'W_jX_jC / s2 = L_j L_j'``, and ``U_j = L_j^{-1} C'X_j'W_jF_j / s2``,
    ``u_j = L_j^{-1} C'X_j'W_jy_j / s2``, the group's message is

        F_j'V_j^{-1}F_j = F_j'W_jF_j / s2 - U_j'U_j
        F_j'V_j^{-1}y_j = F_j'W_jy_j / s2 - U_j'u_j
        y_j'V_j^{-1}y_j = y_j'W_jy_j / s2 - u_j'u_j
        log|V_j|        = n_j log s2 - sum log w + log|K_j|

    (the Woodbury and determinant identities for ``V_j = s2 W_j^{-1} + X_j T X_j'``, never
    formed). The fixed effects, with their Gaussian prior in information form (precision
    ``P0``, linear term ``h``, flat where ``P0`` is singular), are integrated out with
    ``A+ = A + P0`` and ``c+ = c + h``.

    Parameters
    ----------
    stats : SuffStats
    s2 : float
        Level-1 variance.
    C : ndarray of shape (n_coef, n_coef)
        Lower-triangular factor of the group covariance ``T``.
    fixed : FixedPrior
        Prior of the fixed effects.
    L_out : ndarray of shape (n_groups, n_coef, n_coef)
        Output: Cholesky factors ``L_j`` of ``K_j``.
    LA_out : ndarray of shape (n_fixed, n_fixed)
        Output: Cholesky factor of ``A+``.
    c_out : ndarray of shape (n_fixed,)
        Output: ``c+``.

    Returns
    -------
    loglik : float
        ``log p(y | theta)`` with the fixed effects integrated out against their prior
        (with a flat prior, the restricted likelihood: lme4's REML criterion is ``-2`` times it).
    ok : bool
        False when a factorisation failed (``loglik`` is then ``-inf``).
    """
    if not s2 > 0.0:  # a level-1 variance that underflowed: no density (and no division by zero)
        return -np.inf, False
    n_groups = stats.n.shape[0]
    d = C.shape[0]
    p = fixed.lin.shape[0]
    inv_s2 = 1.0 / s2
    n_obs = stats.scal[N_OBS]
    A = LA_out
    for q in range(p):
        c_out[q] = stats.Fty[q] * inv_s2 + fixed.lin[q]
        for r in range(p):
            A[q, r] = stats.FtF[q, r] * inv_s2 + fixed.prec[q, r]
    yVy = stats.scal[YTY] * inv_s2
    logdet = n_obs * np.log(s2) - stats.scal[SUM_LOG_W]
    # Rows of U_j and u_j for all groups, stacked; the p x p and p x 1 reductions
    # sum_j U_j'U_j and sum_j U_j'u_j run over them after the loop.
    U_all = np.empty((n_groups * d, p))
    u_all = np.empty(n_groups * d)
    XC = np.empty((d, d))
    det_prod = 1.0
    c00 = C[0, 0]
    c10 = C[1, 0] if d > 1 else 0.0
    c11 = C[1, 1] if d > 1 else 0.0
    XtX, XtF, Xty = stats.XtX, stats.XtF, stats.Xty
    for j in range(n_groups):
        row = j * d
        # one and two coefficients are written out with plain indexing: array views per
        # group (L_out[j], U_all[row:row + d]) cost more than the arithmetic there
        if d == 1:
            # closed forms for one coefficient: K = 1 + c^2 x'x / s2
            k00 = 1.0 + c00 * c00 * XtX[j, 0, 0] * inv_s2
            l00 = np.sqrt(k00)
            L_out[j, 0, 0] = l00
            det = k00
            f = c00 * inv_s2 / l00
            u_all[row] = f * Xty[j, 0]
            for q in range(p):
                U_all[row, q] = f * XtF[j, 0, q]
        elif d == 2:
            k00, k10, k11 = _precision_2x2(XtX, j, c00, c10, c11, inv_s2)
            l00 = np.sqrt(k00)
            l10 = k10 / l00
            rem = k11 - l10 * l10
            if not rem > 0.0:
                return -np.inf, False
            l11 = np.sqrt(rem)
            L_out[j, 0, 0] = l00
            L_out[j, 1, 0] = l10
            L_out[j, 0, 1] = 0.0
            L_out[j, 1, 1] = l11
            det = k00 * rem
            # rows of L^{-1} C' / s2 applied to X'y and X'F
            a0 = c00 * inv_s2 / l00
            a1 = c10 * inv_s2 / l00
            b0 = -l10 / l11 * a0
            b1 = (c11 * inv_s2 - l10 * a1) / l11
            y0 = Xty[j, 0]
            y1 = Xty[j, 1]
            u_all[row] = a0 * y0 + a1 * y1
            u_all[row + 1] = b0 * y0 + b1 * y1
            for q in range(p):
                f0 = XtF[j, 0, q]
                f1 = XtF[j, 1, q]
                U_all[row, q] = a0 * f0 + a1 * f1
                U_all[row + 1, q] = b0 * f0 + b1 * f1
        else:
            L = L_out[j]
            U = U_all[row : row + d]
            u = u_all[row : row + d]
            _group_precision(stats.XtX[j], C, inv_s2, L, XC)
            if not chol_inplace(L):
                return -np.inf, False
            det = 1.0
            for r in range(d):
                det *= L[r, r] * L[r, r]
            for r in range(d):
                t = 0.0
                for m in range(r, d):
                    t += C[m, r] * stats.Xty[j, m]
                u[r] = t * inv_s2
                for q in range(p):
                    t = 0.0
                    for m in range(r, d):
                        t += C[m, r] * stats.XtF[j, m, q]
                    U[r, q] = t * inv_s2
            solve_lower(L, u)
            solve_lower_cols(L, U)
        if det > 1e100:  # logarithms in batches: one per group would dominate when d is small
            logdet += np.log(det)
        else:
            det_prod *= det
            if det_prod > 1e200:
                logdet += np.log(det_prod)
                det_prod = 1.0
    logdet += np.log(det_prod)
    for i in range(n_groups * d):
        yVy -= u_all[i] * u_all[i]
    # summed apart from A and c, then subtracted once: A and c are differences of nearly
    # equal quantities when the groups absorb most of the fixed effects' information
    UtU = np.zeros((p, p))
    Utu = np.zeros(p)
    for i in range(n_groups * d):
        ui = u_all[i]
        for q in range(p):
            uq = U_all[i, q]
            Utu[q] += uq * ui
            for q2 in range(q + 1):
                UtU[q, q2] += uq * U_all[i, q2]
    for q in range(p):
        c_out[q] -= Utu[q]
        for q2 in range(q + 1):
            A[q, q2] -= UtU[q, q2]
    if not chol_inplace(A):
        return -np.inf, False
    v = c_out.copy()
    solve_lower(A, v)
    quad = 0.0
    for q in range(p):
        quad += v[q] * v[q]
    loglik = -0.5 * (
        (n_obs - fixed.n_flat) * LOG_2PI + logdet + yVy + fixed.const - quad + logdet_chol(A)
    )
    return loglik, True


@njit(cache=True, nogil=True, inline="always")
def draw(rng, stats, s2, C, L_all, LA, c_plus, a_out, b_out, draw):
    """Downward pass: the fixed effects, then every group's coefficients given them.

    ``a ~ N(A+^{-1} c+, A+^{-1})``, then ``b_j = C beta_j`` with
    ``beta_j | a ~ N(K_j^{-1} C'X_j'W_j(y_j - F_j a) / s2, K_j^{-1})``, using the factors
    left by :func:`upward`. With ``draw`` False the means are returned instead (the E-step
    of EM).

    Parameters
    ----------
    rng : numpy.random.Generator
    stats : SuffStats
    s2 : float
    C : ndarray of shape (n_coef, n_coef)
        Factor of the group covariance, as given to :func:`upward`.
    L_all : ndarray of shape (n_groups, n_coef, n_coef)
    LA : ndarray of shape (n_fixed, n_fixed)
    c_plus : ndarray of shape (n_fixed,)
    a_out : ndarray of shape (n_fixed,)
        Output: fixed effects.
    b_out : ndarray of shape (n_groups, n_coef)
        Output: group coefficients.
    draw : bool
    """
    p = c_plus.shape[0]
    n_groups = b_out.shape[0]
    d = b_out.shape[1]
    inv_s2 = 1.0 / s2
    for q in range(p):
        a_out[q] = c_plus[q]
    solve_lower(LA, a_out)
    if rng is not None:  # None: the means only, no generator (pruned when compiled)
        if draw:
            for q in range(p):
                a_out[q] += rng.standard_normal()
    solve_upper(LA, a_out)
    if d <= 2:
        _draw_small(rng, stats, inv_s2, C, L_all, a_out, b_out, draw)
        return
    r = np.empty(d)
    beta = np.empty(d)
    for j in range(n_groups):
        L = L_all[j]
        for k in range(d):
            t = stats.Xty[j, k]
            for q in range(p):
                t -= stats.XtF[j, k, q] * a_out[q]
            r[k] = t * inv_s2
        for k in range(d):
            t = 0.0
            for m in range(k, d):
                t += C[m, k] * r[m]
            beta[k] = t
        solve_lower(L, beta)
        if rng is not None:  # None: the means only, no generator (pruned when compiled)
            if draw:
                for k in range(d):
                    beta[k] += rng.standard_normal()
        solve_upper(L, beta)
        for k in range(d):
            t = 0.0
            for m in range(k + 1):
                t += C[k, m] * beta[m]
            b_out[j, k] = t


@njit(cache=True, nogil=True, inline="always")
def _draw_small(rng, stats, inv_s2, C, L_all, a, b_out, draw):
    """The group loop of :func:`draw` for one or two coefficients, written out."""
    p = a.shape[0]
    d = b_out.shape[1]
    XtF, Xty = stats.XtF, stats.Xty
    c00 = C[0, 0]
    c10 = C[1, 0] if d > 1 else 0.0
    c11 = C[1, 1] if d > 1 else 0.0
    for j in range(b_out.shape[0]):
        r0 = Xty[j, 0]
        for q in range(p):
            r0 -= XtF[j, 0, q] * a[q]
        r0 *= inv_s2
        if d == 1:
            l00 = L_all[j, 0, 0]
            beta0 = c00 * r0 / l00
            if rng is not None:  # None: the means only, no generator (pruned when compiled)
                if draw:
                    beta0 += rng.standard_normal()
            b_out[j, 0] = c00 * beta0 / l00
            continue
        r1 = Xty[j, 1]
        for q in range(p):
            r1 -= XtF[j, 1, q] * a[q]
        r1 *= inv_s2
        l00 = L_all[j, 0, 0]
        l10 = L_all[j, 1, 0]
        l11 = L_all[j, 1, 1]
        # beta = L^{-T} (L^{-1} C'r + z)
        w0 = (c00 * r0 + c10 * r1) / l00
        w1 = (c11 * r1 - l10 * w0) / l11
        if rng is not None:  # None: the means only, no generator (pruned when compiled)
            if draw:
                w0 += rng.standard_normal()
                w1 += rng.standard_normal()
        beta1 = w1 / l11
        beta0 = (w0 - l10 * beta1) / l00
        b_out[j, 0] = c00 * beta0
        b_out[j, 1] = c10 * beta0 + c11 * beta1


@njit(cache=True, nogil=True, inline="always")
def loglik_given_a(stats, s2, C, r, rtr, L_scratch):
    """``log p(y | theta, a)``: the group coefficients integrated out, the fixed effects given.

    The same group factorisation as :func:`upward` without the fixed-effect messages, so
    the cost per group is ``O(n_coef^3)`` whatever the number of fixed effects: it is the
    target of the Metropolis-Hastings moves on ``theta``.

    Parameters
    ----------
    stats : SuffStats
    s2 : float
    C : ndarray of shape (n_coef, n_coef)
        Factor of the group covariance ``T = C C'``.
    r : ndarray of shape (n_groups, n_coef)
        ``X_j'W_j(y_j - F_j a)`` from :func:`samplers.suffstats.residual_stats`.
    rtr : float
        ``(y - F a)'W(y - F a)``.
    L_scratch : ndarray of shape (n_groups, n_coef, n_coef)
        Work space.

    Returns
    -------
    loglik : float
    ok : bool
    """
    if not s2 > 0.0:
        return -np.inf, False
    n_groups, d = r.shape
    inv_s2 = 1.0 / s2
    n_obs = stats.scal[N_OBS]
    quad = rtr * inv_s2
    logdet = n_obs * np.log(s2) - stats.scal[SUM_LOG_W]
    det_prod = 1.0  # product of det(K_j) >= 1 over groups, logged in batches: one log per many groups
    u = np.empty(d)
    XC = np.empty((d, d))
    c00 = C[0, 0]
    c10 = C[1, 0] if d > 1 else 0.0
    c11 = C[1, 1] if d > 1 else 0.0
    for j in range(n_groups):
        # u'K^{-1}u and det(K): closed forms for one and two coefficients (no square roots)
        if d == 1:
            det = 1.0 + c00 * c00 * stats.XtX[j, 0, 0] * inv_s2
            u0 = c00 * r[j, 0] * inv_s2
            quad -= u0 * u0 / det
        elif d == 2:
            k00, k10, k11 = _precision_2x2(stats.XtX, j, c00, c10, c11, inv_s2)
            det = k00 * k11 - k10 * k10
            if not det > 0.0:
                return -np.inf, False
            u0 = (c00 * r[j, 0] + c10 * r[j, 1]) * inv_s2
            u1 = c11 * r[j, 1] * inv_s2
            quad -= (k11 * u0 * u0 - 2.0 * k10 * u0 * u1 + k00 * u1 * u1) / det
        else:
            K = L_scratch[j]
            _group_precision(stats.XtX[j], C, inv_s2, K, XC)
            for k in range(d):
                t = 0.0
                for m in range(k, d):
                    t += C[m, k] * r[j, m]
                u[k] = t * inv_s2
            if not chol_inplace(K):
                return -np.inf, False
            det = 1.0
            for k in range(d):
                det *= K[k, k] * K[k, k]
            solve_lower(K, u)
            for k in range(d):
                quad -= u[k] * u[k]
        if det > 1e100:
            logdet += np.log(det)
        else:
            det_prod *= det  # stays below 1e200 * 1e100: no overflow
            if det_prod > 1e200:
                logdet += np.log(det_prod)
                det_prod = 1.0
    logdet += np.log(det_prod)
    return -0.5 * (n_obs * LOG_2PI + logdet + quad), True


@njit(cache=True, nogil=True)
def moments(rng, stats, s2, C, L_all, LA, c_plus, a_out, b_mean, b_cov):
    """E-step: the fixed effects' GLS estimate and each group's conditional mean and covariance.

    With the factors left by :func:`upward` (flat prior on ``a``): ``a = A^{-1} c``,
    ``E[b_j | a, y] = C K_j^{-1} C'X_j'W_j(y_j - F_j a) / s2`` and
    ``Cov[b_j | a, y] = C K_j^{-1} C'`` (Dempster, Rubin & Tsutakawa 1981; Laird & Ware 1982).

    Parameters
    ----------
    rng : numpy.random.Generator
        Not drawn from (it lets this share :func:`draw`, compiled for a generator).
    stats : SuffStats
    s2 : float
    C : ndarray of shape (n_coef, n_coef)
    L_all : ndarray of shape (n_groups, n_coef, n_coef)
    LA : ndarray of shape (n_fixed, n_fixed)
    c_plus : ndarray of shape (n_fixed,)
    a_out : ndarray of shape (n_fixed,)
        Output: fixed effects.
    b_mean : ndarray of shape (n_groups, n_coef)
        Output: conditional means.
    b_cov : ndarray of shape (n_groups, n_coef, n_coef)
        Output: conditional covariances.
    """
    draw(rng, stats, s2, C, L_all, LA, c_plus, a_out, b_mean, False)
    n_groups, d = b_mean.shape
    M = np.empty((d, d))
    for j in range(n_groups):
        # M = L_j^{-1} C', then Cov = M'M
        for r in range(d):
            for s in range(d):
                M[r, s] = C[s, r]
        solve_lower_cols(L_all[j], M)
        for r in range(d):
            for s in range(d):
                t = 0.0
                for m in range(d):
                    t += M[m, r] * M[m, s]
                b_cov[j, r, s] = t


@njit(cache=True, nogil=True, inline="always")
def em_update(rng, stats, s2, C, L_all, LA, c_plus, block_ptr, reml, a, b, V, T):
    """One EM iteration's E- and M-steps after :func:`upward`; returns the new level-1 variance.

    E-step: :func:`moments`; for REML the covariances also carry the uncertainty of
    the fixed effects, which are integrated out: ``Cov[b_j | y] = V_j + G_j A^{-1} G_j'``
    with ``G_j = -V_j X_j'W_jF_j / s2`` (the derivative of ``E[b_j | a, y]`` in ``a``) and
    ``Cov[b_j, a | y] = G_j A^{-1}``. M-step: ``T`` (per diagonal block) the mean of
    ``E[b_j b_j']`` over the groups, the level-1 variance ``E[residual sum of squares] / N``.

    Parameters
    ----------
    rng, stats, s2, C, L_all, LA, c_plus : as for :func:`moments`, after :func:`upward`
    block_ptr : ndarray of int64
        Column ranges of the diagonal blocks of ``T``.
    reml : bool
    a, b, V : ndarray
        Output: the fixed effects' GLS value, the groups' conditional means and their
        (for REML, fixed-effect-integrated) covariances.
    T : ndarray of shape (n_coef, n_coef)
        Output: the new group covariance.

    Returns
    -------
    float
        The new level-1 variance (meaningless when it is known).
    """
    moments(rng, stats, s2, C, L_all, LA, c_plus, a, b, V)
    n_groups, d = b.shape
    p = a.shape[0]
    A_inv = np.zeros((p, p))
    extra = 0.0
    if reml:
        # A^{-1} = LA^{-T} LA^{-1}: invert the lower-triangular factor column by column
        LA_inv = np.zeros((p, p))
        for i in range(p):
            LA_inv[i, i] = 1.0
        solve_lower_cols(LA, LA_inv)
        for q in range(p):
            for r in range(p):
                t = 0.0
                for m in range(p):
                    t += LA_inv[m, q] * LA_inv[m, r]
                A_inv[q, r] = t
        for q in range(p):
            for r in range(p):
                extra += stats.FtF[q, r] * A_inv[q, r]
    G = np.empty((d, p))
    GA = np.empty((d, p))
    second = np.zeros((d, d))
    quad_b = 0.0
    cross = 0.0
    for j in range(n_groups):
        if reml:
            for k in range(d):
                for q in range(p):
                    t = 0.0
                    for m in range(d):
                        t += V[j, k, m] * stats.XtF[j, m, q]
                    G[k, q] = -t / s2
            for k in range(d):
                for q in range(p):
                    t = 0.0
                    for r in range(p):
                        t += G[k, r] * A_inv[r, q]
                    GA[k, q] = t
                    extra += 2.0 * t * stats.XtF[j, k, q]
            for k in range(d):
                for m in range(d):
                    t = 0.0
                    for q in range(p):
                        t += GA[k, q] * G[m, q]
                    V[j, k, m] += t
        for k in range(d):
            resid = stats.Xty[j, k]
            for q in range(p):
                resid -= stats.XtF[j, k, q] * a[q]
            cross += b[j, k] * resid
            for m in range(d):
                extra += stats.XtX[j, k, m] * V[j, k, m]
                quad_b += b[j, k] * stats.XtX[j, k, m] * b[j, m]
                second[k, m] += b[j, k] * b[j, m] + V[j, k, m]
    for k in range(d):
        for m in range(d):
            T[k, m] = 0.0
    trace = 0.0
    for blk in range(block_ptr.shape[0] - 1):
        for k in range(block_ptr[blk], block_ptr[blk + 1]):
            for m in range(block_ptr[blk], block_ptr[blk + 1]):
                T[k, m] = second[k, m] / n_groups
            trace += T[k, k]
    for k in range(d):
        T[k, k] += 1e-12 * trace
    rss = stats.scal[YTY] - 2.0 * cross + quad_b + extra
    for q in range(p):
        rss -= 2.0 * a[q] * stats.Fty[q]
        for r in range(p):
            rss += a[q] * stats.FtF[q, r] * a[r]
    return max(rss, 1e-300) / stats.scal[N_OBS]


@njit(cache=True, nogil=True, inline="always")
def score_terms(stats, s2, C, L_all, LA, c_plus, reml, gC):
    """After :func:`upward` with a flat prior: the derivatives of the log-likelihood in ``C`` and ``s2``.

    By Fisher's identity the score is the posterior mean of the complete-data score. With
    ``b_j = C beta_j``, ``beta_j ~ N(0, I)`` (whose density does not involve ``C``), the
    complete-data log-likelihood depends on ``C`` through the residuals only, and

        ``d/dC = sum_j X_j'W_j(y_j - F_j a - X_jC beta_j) beta_j' / s2``,
        ``d/ds2 = -n_obs / (2 s2) + RSS / (2 s2^2)``,

    whose means over ``(beta, a) | y`` (REML: ``a`` integrated out; ML: ``a`` at its GLS value,
    the maximiser of the profile, so the envelope theorem applies) need each group's
    whitened mean ``m_j``, ``Cov(beta_j)`` and ``Cov(a, beta_j)``: ``m_j = K_j^{-1} C'r_j / s2``
    with ``r_j = X_j'W_j(y_j - F_j a)``, ``Cov(beta_j | a) = K_j^{-1}``, and for REML, with
    ``B_j = K_j^{-1} C'X_j'W_jF_j / s2``, ``Cov(beta_j) = K_j^{-1} + B_j A^{-1} B_j'`` and
    ``Cov(a, beta_j) = -A^{-1} B_j'`` (docs/design.md, "EM").

    Writes ``d loglik / dC`` into ``gC`` (n_coef x n_coef; every entry, of which the caller
    uses those that ``C`` has) and returns ``d loglik / ds2``.
    """
    n_groups, d = stats.Xty.shape
    p = c_plus.shape[0]
    inv_s2 = 1.0 / s2
    a = c_plus.copy()
    solve_lower(LA, a)
    solve_upper(LA, a)
    A_inv = np.zeros((p, p))
    LA_inv = np.zeros((p, p))
    for i in range(p):
        LA_inv[i, i] = 1.0
    solve_lower_cols(LA, LA_inv)
    for q in range(p):
        for r in range(p):
            t = 0.0
            for m in range(p):
                t += LA_inv[m, q] * LA_inv[m, r]
            A_inv[q, r] = t
    for k in range(d):
        for m in range(d):
            gC[k, m] = 0.0
    rss = stats.scal[YTY]
    for q in range(p):
        rss -= 2.0 * a[q] * stats.Fty[q]
        for r in range(p):
            rss += a[q] * stats.FtF[q, r] * a[r]
            if reml:
                rss += stats.FtF[q, r] * A_inv[q, r]
    rj = np.empty(d)
    mean = np.empty(d)
    Kinv = np.empty((d, d))
    B = np.zeros((d, p))
    cov = np.empty((d, d))  # Cov(beta_j)
    cov_ab = np.zeros((p, d))  # Cov(a, beta_j)
    CE = np.empty((d, d))  # C E[beta beta']
    bj = np.empty(d)
    for j in range(n_groups):
        L = L_all[j]
        for k in range(d):
            t = stats.Xty[j, k]
            for q in range(p):
                t -= stats.XtF[j, k, q] * a[q]
            rj[k] = t
        for k in range(d):  # m = K^{-1} C'r / s2
            t = 0.0
            for m in range(k, d):
                t += C[m, k] * rj[m]
            mean[k] = t * inv_s2
        solve_lower(L, mean)
        solve_upper(L, mean)
        for k in range(d):  # K^{-1} column by column
            for m in range(d):
                Kinv[m, k] = 1.0 if m == k else 0.0
        for k in range(d):
            col = Kinv[:, k].copy()
            solve_lower(L, col)
            solve_upper(L, col)
            for m in range(d):
                cov[m, k] = col[m]
        if reml:
            for q in range(p):  # B[:, q] = K^{-1} C' XtF[:, q] / s2
                col = np.empty(d)
                for k in range(d):
                    t = 0.0
                    for m in range(k, d):
                        t += C[m, k] * stats.XtF[j, m, q]
                    col[k] = t * inv_s2
                solve_lower(L, col)
                solve_upper(L, col)
                for k in range(d):
                    B[k, q] = col[k]
            for q in range(p):  # Cov(a, beta) = -A^{-1} B'
                for k in range(d):
                    t = 0.0
                    for r in range(p):
                        t += A_inv[q, r] * B[k, r]
                    cov_ab[q, k] = -t
            for k in range(d):  # Cov(beta) += B A^{-1} B' = -B Cov(a, beta)
                for m in range(d):
                    t = 0.0
                    for q in range(p):
                        t -= B[k, q] * cov_ab[q, m]
                    cov[k, m] += t
        add_score_terms(stats, j, C, a, mean, cov, cov_ab, 0, CE, gC, inv_s2)
        for k in range(d):  # the means of the group's coefficients b = C m
            t = 0.0
            for m in range(k + 1):
                t += C[k, m] * mean[m]
            bj[k] = t
        # E[RSS]: the residuals at the means, then the traces of the covariances
        for k in range(d):
            rss -= 2.0 * bj[k] * rj[k]
            for m in range(d):
                rss += bj[k] * stats.XtX[j, k, m] * bj[m]
        for k in range(d):
            for m in range(d):
                # Cov(b)[m, k] = (C cov C')[m, k]; Cov(a, b)[q, k] = (cov_ab C')[q, k]
                t = 0.0
                for n in range(m + 1):
                    for n2 in range(k + 1):
                        t += C[m, n] * cov[n, n2] * C[k, n2]
                rss += stats.XtX[j, k, m] * t
            if reml:
                for q in range(p):
                    t = 0.0
                    for n in range(k + 1):
                        t += cov_ab[q, n] * C[k, n]
                    rss += 2.0 * stats.XtF[j, k, q] * t
    n_obs = stats.scal[N_OBS]
    return -0.5 * n_obs * inv_s2 + 0.5 * max(rss, 0.0) * inv_s2 * inv_s2
