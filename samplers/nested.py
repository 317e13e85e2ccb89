"""The Gaussian part of a model with nested grouping factors: three levels and more (or none).

One implementation of the seam of :mod:`samplers.gaussian` (docs/design.md, "The single
seam" and "Nested factors").

The model has grouping factors ``1 .. K`` (finest first), each group of factor ``k`` lying in
exactly one group of factor ``k + 1``. The coefficient vector of a row is the concatenation
of the coefficients of its group at every level, so the per-group statistics of the finest
groups, built on the full random design ``X = [X^(1) | ... | X^(K)]``, are sufficient for
every level (:mod:`samplers.suffstats`).

With ``b^(k)_g = C_k beta^(k)_g``, ``beta ~ N(0, I)``, the log joint density of every
coefficient is a quadratic form in ``v = [beta's, a, -1]`` whose matrix is
``G'[X, F, y]'W[X, F, y]G / s2`` plus the priors (``G = diag(C, I, 1)``). The upward pass
eliminates the groups level by level, children before parents: a group adds the identity
(its prior) to the accumulated block of its own coefficients, factorises it (``K = L L'``),
and sends the Schur complement ``M_rr - U'U`` (``U = L^{-1} M_kr``) over its ancestors'
coefficients, the fixed effects and the response to its parent. The root eliminates the
fixed effects; what is left is ``y'V^{-1}y - c'A^{-1}c``. The downward pass draws the fixed
effects, then each group given its ancestors, ``beta = L'^{-1}(-U v_rest + e)``.

Work per pass is ``O(sum over groups of d_k W_k^2)`` with ``W_k`` the size of a message
(the coefficients of the ancestors, the fixed effects and one), whatever the number of rows.

The same pass with the fixed effects given (``R = y - F a`` in place of ``[F, y]``) is the
target of the Metropolis-Hastings moves.
"""

import numpy as np
from numba import njit

from samplers.linalg import chol_inplace, draw_canonical
from samplers.types import N_OBS, SUM_LOG_W, YTY

LOG_2PI = np.log(2.0 * np.pi)


@njit(cache=True, nogil=True)
def workspace_arrays(stats, structure):
    """Work arrays ``(Lt, Ut, Acc, LA, cA, beta)`` of the tree passes on ``stats``."""
    lp = structure.level_ptr
    n_nodes = structure.node_ptr[-1]
    n1 = structure.node_ptr[1]
    D = lp[-1]
    p = stats.Fty.shape[0]
    dm = 1
    for k in range(lp.shape[0] - 1):
        dm = max(dm, lp[k + 1] - lp[k])
    w2 = D - lp[1] + p + 1
    return (np.zeros((n_nodes, dm, dm)), np.zeros((n_nodes, dm, w2)), np.zeros((n_nodes - n1 + 1, w2, w2)),
            np.zeros((p, p)), np.zeros(p), np.zeros((n_nodes, dm)))


@njit(cache=True, nogil=True)
def _eliminate(M, dk, w, K, L_out, U_out, tgt):
    """Integrate one group out of its block ``M`` (lower triangle read) and send the rest up.

    The group's own ``dk`` coefficients come first, then ``w`` entries (its ancestors'
    coefficients, the fixed effects, the response). ``K = M[:dk, :dk] + I = L L'`` (the
    identity is the group's prior), ``U = L^{-1} M[:dk, dk:]``, and
    ``M[dk:, dk:] - U'U`` is added to the lower triangle of ``tgt``. ``L`` and ``U`` are
    kept for the downward pass. Returns ``log|K|``, or ``-inf`` when ``K`` is not positive
    definite.
    """
    for a in range(dk):
        for b in range(a + 1):
            K[a, b] = M[a, b] + (1.0 if a == b else 0.0)
    if not chol_inplace(K):
        return -np.inf
    logdet = 0.0
    for a in range(dk):
        logdet += 2.0 * np.log(K[a, a])
        for b in range(dk):
            L_out[a, b] = K[a, b]
        for c in range(w):
            t = M[dk + c, a]
            for b in range(a):
                t -= K[a, b] * U_out[b, c]
            U_out[a, c] = t / K[a, a]
    for a in range(w):
        for b in range(a + 1):
            t = M[dk + a, dk + b]
            for c in range(dk):
                t -= U_out[c, a] * U_out[c, b]
            tgt[a, b] += t
    return logdet


@njit(cache=True, nogil=True, inline="always")
def upward(stats, structure, s2, C, full, fixed, r, rtr, Lt, Ut, Acc, LA, cA):
    """Integrate out every group (and, with ``full``, the fixed effects) of a nested model.

    Parameters
    ----------
    stats : SuffStats
        Statistics of the finest groups on the full random design.
    structure : Structure
        With the tree: ``level_ptr`` (coefficients of each factor), ``node_ptr`` (groups of
        each factor, numbered one after another, finest first) and ``parent``.
    s2 : float
    C : ndarray of shape (n_coef, n_coef)
        Block-diagonal lower-triangular factor of the covariance of all group coefficients.
    full : bool
        True: the fixed effects are integrated out against their prior ``fixed`` (a
        :class:`~samplers.types.FixedPrior`) and the result is ``log p(y | theta)``.
        False: they are given through ``r = X_j'W_j(y_j - F_j a)`` (per finest group) and
        ``rtr = (y - F a)'W(y - F a)``, and the result is ``log p(y | theta, a)``.
    Lt, Ut, Acc, LA, cA : ndarray
        Work arrays from :func:`workspace_arrays`, left holding the factors for
        :func:`draw` (``LA`` and ``cA``: the factor of ``A+`` and ``c+``).

    Returns
    -------
    loglik : float
    ok : bool
        False when a factorisation failed.
    """
    if not s2 > 0.0:  # a level-1 variance that underflowed: no density (and no division by zero)
        return -np.inf, False
    lp = structure.level_ptr
    npt = structure.node_ptr
    parent = structure.parent
    n_levels = lp.shape[0] - 1
    D = lp[n_levels]
    d1 = lp[1]
    p = stats.Fty.shape[0]
    m = p + 1 if full else 1
    n1 = npt[1]
    root = Acc.shape[0] - 1
    inv_s2 = 1.0 / s2
    for i in range(Acc.shape[0]):
        for a in range(Acc.shape[1]):
            for b in range(a + 1):
                Acc[i, a, b] = 0.0
    logdet = 0.0
    # finest groups: their block of the quadratic form comes from the data, [S, T'; T, 0] with
    # S = C'X'WXC / s2 over all levels' coefficients and T = (C'X'W[F, y] / s2)'
    M = np.zeros((D + m, D + m))
    PC = np.empty((D, D))
    K = np.empty((d1, d1))
    w = D - d1 + m
    for j in range(n1):
        P = stats.XtX[j]
        for a in range(D):
            for b in range(D):
                t = 0.0
                for c in range(b, D):
                    t += P[a, c] * C[c, b]
                PC[a, b] = t
        for a in range(D):
            for b in range(a + 1):
                t = 0.0
                for c in range(a, D):
                    t += C[c, a] * PC[c, b]
                M[a, b] = t * inv_s2
            for q in range(m):
                t = 0.0
                for c in range(a, D):
                    if full:
                        x = stats.XtF[j, c, q] if q < p else stats.Xty[j, c]
                    else:
                        x = r[j, c]
                    t += C[c, a] * x
                M[D + q, a] = t * inv_s2
        tgt = Acc[root] if parent[j] < 0 else Acc[parent[j] - n1]
        ld = _eliminate(M, d1, w, K, Lt[j], Ut[j], tgt)
        if not ld > -np.inf:
            return -np.inf, False
        logdet += ld
    # upper levels: the accumulated messages of the children
    for lev in range(1, n_levels):
        dk = lp[lev + 1] - lp[lev]
        w = D - lp[lev + 1] + m
        Kk = np.empty((dk, dk))
        for g in range(npt[lev], npt[lev + 1]):
            tgt = Acc[root] if parent[g] < 0 else Acc[parent[g] - n1]
            ld = _eliminate(Acc[g - n1], dk, w, Kk, Lt[g], Ut[g], tgt)
            if not ld > -np.inf:
                return -np.inf, False
            logdet += ld
    acc = Acc[root]
    if not full:
        final = acc[0, 0] + rtr * inv_s2
        n_obs = stats.scal[N_OBS]
        return -0.5 * (n_obs * LOG_2PI + n_obs * np.log(s2) - stats.scal[SUM_LOG_W] + logdet + final), True
    # the root: data cross-products of [F, y], the prior of the fixed effects
    for q in range(p):
        for q2 in range(q + 1):
            acc[q, q2] += stats.FtF[q, q2] * inv_s2 + fixed.prec[q, q2]
        acc[p, q] += stats.Fty[q] * inv_s2 + fixed.lin[q]
    acc[p, p] += stats.scal[YTY] * inv_s2
    for q in range(p):
        cA[q] = acc[p, q]
        for q2 in range(q + 1):
            LA[q, q2] = acc[q, q2]
    if not chol_inplace(LA):
        return -np.inf, False
    final = acc[p, p]
    v = np.empty(p)
    for q in range(p):
        t = cA[q]
        for q2 in range(q):
            t -= LA[q, q2] * v[q2]
        v[q] = t / LA[q, q]
        final -= v[q] * v[q]
        logdet += 2.0 * np.log(LA[q, q])
    n_obs = stats.scal[N_OBS]
    return -0.5 * ((n_obs - fixed.n_flat) * LOG_2PI + n_obs * np.log(s2) - stats.scal[SUM_LOG_W] + logdet
                   + fixed.const + final), True


@njit(cache=True, nogil=True, inline="always")
def draw(rng, structure, C, Lt, Ut, LA, cA, beta, a_out, b_out, draw):
    """Downward pass after a ``full`` :func:`upward`: fixed effects, then each level's groups.

    ``a ~ N(A+^{-1} c+, A+^{-1})``; then, from the coarsest factor to the finest, each group's
    whitened coefficients given its ancestors' and ``a``, ``beta = L'^{-1}(U_y - U_r v_r + e)``,
    and ``b = C_k beta``. With ``draw`` False, the means (the conditional means at the
    ancestors' means are the marginal means). ``b_out`` has one row per group of every
    factor (``node_ptr``); a row holds its own factor's columns, the others are left alone.
    """
    lp = structure.level_ptr
    npt = structure.node_ptr
    parent = structure.parent
    n_levels = lp.shape[0] - 1
    D = lp[n_levels]
    p = a_out.shape[0]
    draw_canonical(LA, cA, rng, draw, a_out)  # rng None: the means only
    dm = Lt.shape[1]
    rhs = np.empty(dm)
    for lev in range(n_levels - 1, -1, -1):
        dk = lp[lev + 1] - lp[lev]
        dr = D - lp[lev + 1]
        for g in range(npt[lev], npt[lev + 1]):
            U = Ut[g]
            L = Lt[g]
            for i in range(dk):
                t = U[i, dr + p]
                for q in range(p):
                    t -= U[i, dr + q] * a_out[q]
                rhs[i] = t
            # ancestors' whitened coefficients, in the order of the columns of U
            anc = parent[g]
            alev = lev + 1
            while anc >= 0:
                off = lp[alev] - lp[lev + 1]
                da = lp[alev + 1] - lp[alev]
                for i in range(dk):
                    t = 0.0
                    for c in range(da):
                        t += U[i, off + c] * beta[anc, c]
                    rhs[i] -= t
                anc = parent[anc]
                alev += 1
            if rng is not None:  # None: the means only, no generator (pruned when compiled)
                if draw:
                    for i in range(dk):
                        rhs[i] += rng.standard_normal()
            for i in range(dk - 1, -1, -1):
                t = rhs[i]
                for c in range(i + 1, dk):
                    t -= L[c, i] * beta[g, c]
                beta[g, i] = t / L[i, i]
            c0 = lp[lev]
            for i in range(dk):
                t = 0.0
                for c in range(i + 1):
                    t += C[c0 + i, c0 + c] * beta[g, c]
                b_out[g, c0 + i] = t


@njit(cache=True, nogil=True)
def effective_coefficients(structure, b, out):
    """Each finest group's full coefficient vector: its own and its ancestors' (``out[j]``)."""
    lp = structure.level_ptr
    parent = structure.parent
    n_levels = lp.shape[0] - 1
    for j in range(structure.node_ptr[1]):
        g = j
        for lev in range(n_levels):
            for c in range(lp[lev], lp[lev + 1]):
                out[j, c] = b[g, c]
            g = parent[g]


@njit(cache=True, nogil=True)
def lower_inverse_gram(LA, out):
    """``out = (LA LA')^{-1}`` for a lower-triangular ``LA``."""
    p = LA.shape[0]
    inv = np.zeros((p, p))
    for c in range(p):  # columns of LA^{-1}, by forward substitution
        for i in range(c, p):
            t = 1.0 if i == c else 0.0
            for m in range(c, i):
                t -= LA[i, m] * inv[m, c]
            inv[i, c] = t / LA[i, i]
    for q in range(p):
        for r in range(p):
            t = 0.0
            for m in range(max(q, r), p):
                t += inv[m, q] * inv[m, r]
            out[q, r] = t


@njit(cache=True, nogil=True, inline="always")
def add_score_terms(stats, g, C, a, mean, cov, cov_a, a_off, CE, gC, inv_s2):
    """Add group ``g``'s part of ``d loglik / dC`` by Fisher's identity into ``gC``.

    ``E[X_g'W_g(y_g - F_g a - X_g C beta) beta'] / s2`` over the conditional distribution of
    the group's whitened coefficients ``beta`` (its own and its ancestors', or a cell's of
    every factor: mean ``mean``, covariance ``cov[:D, :D]``) and of the fixed effects (mean
    ``a``, ``Cov(a_q, beta_m) = cov_a[a_off + q, m]``); see
    :func:`samplers.two_level.score_terms`. ``CE`` (D x D) is work space.
    """
    D = mean.shape[0]
    p = a.shape[0]
    for k in range(D):
        for m in range(D):
            t = 0.0
            for n in range(k + 1):
                t += C[k, n] * (cov[n, m] + mean[n] * mean[m])
            CE[k, m] = t
    for k in range(D):
        rk = stats.Xty[g, k]
        for q in range(p):
            rk -= stats.XtF[g, k, q] * a[q]
        for m in range(D):
            t = rk * mean[m]
            for q in range(p):
                t -= stats.XtF[g, k, q] * cov_a[a_off + q, m]
            for n in range(D):
                t -= stats.XtX[g, k, n] * CE[n, m]
            gC[k, m] += t * inv_s2


@njit(cache=True, nogil=True)
def moments(rng, stats, structure, s2, C, Lt, Ut, LA, cA, beta, with_fixed, a, b, V, A_inv, gC):
    """E-step after a ``full`` :func:`upward` with a flat prior: means, covariances, expected RSS.

    Writes the GLS fixed effects ``a``, ``A_inv = A^{-1}`` (their covariance), each group's
    conditional mean ``b`` and the covariance ``V`` of its own coefficients (rows: groups of
    every factor), given ``a`` or, with ``with_fixed``, with ``a`` integrated out (REML).
    Returns ``E[(y - F a - X b)'W(y - F a - X b) | y]`` over the same distribution.

    The covariances come from the downward recursion on the joint covariance of a group's
    whitened coefficients and everything above it (its ancestors' and ``a``), ``z``:
    ``beta = L'^{-1}(u - U z) + L'^{-1} e`` gives ``Cov(beta) = K^{-1} + B Cov(z) B'`` and
    ``Cov(beta, z) = -B Cov(z)`` with ``B = L'^{-1} U`` (docs/design.md, "EM"). ``Cov(a)`` is
    ``A^{-1}`` or 0. ``rng`` is not drawn from (None will do).

    With ``gC`` of shape (n_coef, n_coef) (not (0, 0)), also the derivative of the
    log-likelihood in ``C``, by Fisher's identity: the posterior mean of the complete-data
    score ``sum_j X_j'W_j(y_j - F_j a - X_jC beta_j) beta_j' / s2`` over the finest groups, with
    ``beta_j`` a finest group's whitened coefficients and its ancestors' (see
    :func:`samplers.two_level.score_terms`).
    """
    lp = structure.level_ptr
    npt = structure.node_ptr
    parent = structure.parent
    n_levels = lp.shape[0] - 1
    D = lp[n_levels]
    p = a.shape[0]
    n1 = npt[1]
    for g in range(b.shape[0]):
        for c in range(D):
            b[g, c] = 0.0
            for c2 in range(D):
                V[g, c, c2] = 0.0
    draw(rng, structure, C, Lt, Ut, LA, cA, beta, a, b, False)
    lower_inverse_gram(LA, A_inv)
    Sa = np.zeros((p, p))
    if with_fixed:
        for q in range(p):
            for r in range(p):
                Sa[q, r] = A_inv[q, r]
    # residual sum of squares at the means, from the statistics
    rss = stats.scal[YTY]
    for q in range(p):
        rss -= 2.0 * a[q] * stats.Fty[q]
        for r in range(p):
            rss += a[q] * stats.FtF[q, r] * a[r]
            rss += stats.FtF[q, r] * Sa[q, r]
    be = np.zeros(D)
    for j in range(n1):
        g = j
        for lev in range(n_levels):
            for c in range(lp[lev], lp[lev + 1]):
                be[c] = b[g, c]
            g = parent[g]
        for k in range(D):
            t = stats.Xty[j, k]
            for q in range(p):
                t -= stats.XtF[j, k, q] * a[q]
            rss -= 2.0 * be[k] * t
            for m in range(D):
                rss += be[k] * stats.XtX[j, k, m] * be[m]
    if D == 0:
        return max(rss, 1e-300)
    Wc = D - lp[1] + p  # size of the joint covariance kept for a group above the finest
    upper = np.zeros((max(npt[-1] - n1, 1), Wc, Wc))
    W1 = D + p
    score = gC.shape[0] > 0
    if score:
        for k in range(D):
            for m in range(D):
                gC[k, m] = 0.0
    m_eff = np.empty(D)
    CE = np.empty((D, D))
    inv_s2 = 1.0 / s2
    chain = np.empty((W1, W1))
    B = np.empty((D, W1))
    BS = np.empty((D, W1))
    GC = np.empty((W1, W1))
    for lev in range(n_levels - 1, -1, -1):
        dk = lp[lev + 1] - lp[lev]
        dz = D - lp[lev + 1] + p
        c0 = lp[lev]
        for g in range(npt[lev], npt[lev + 1]):
            L = Lt[g]
            U = Ut[g]
            if lev == n_levels - 1:
                Sz = Sa
            else:
                Sz = upper[parent[g] - n1]
            # B = L'^{-1} U[:, :dz], column by column (back substitution)
            for c in range(dz):
                for i in range(dk - 1, -1, -1):
                    t = U[i, c]
                    for m in range(i + 1, dk):
                        t -= L[m, i] * B[m, c]
                    B[i, c] = t / L[i, i]
            for i in range(dk):
                for c in range(dz):
                    t = 0.0
                    for m in range(dz):
                        t += B[i, m] * Sz[m, c]
                    BS[i, c] = t
            # the joint covariance [[Cov(beta), -B Sz], [-(B Sz)', Sz]] into chain
            for i in range(dk):  # B Cov(z) B', then K^{-1} = L'^{-1} L^{-1} added
                for i2 in range(dk):
                    t = 0.0
                    for c in range(dz):
                        t += BS[i, c] * B[i2, c]
                    chain[i, i2] = t
            Linv = np.zeros((dk, dk))
            for c in range(dk):
                for i in range(c, dk):
                    t = 1.0 if i == c else 0.0
                    for m in range(c, i):
                        t -= L[i, m] * Linv[m, c]
                    Linv[i, c] = t / L[i, i]
            for i in range(dk):
                for i2 in range(dk):
                    t = 0.0
                    for m in range(max(i, i2), dk):
                        t += Linv[m, i] * Linv[m, i2]
                    chain[i, i2] += t
            for i in range(dk):
                for c in range(dz):
                    chain[i, dk + c] = -BS[i, c]
                    chain[dk + c, i] = -BS[i, c]
            for c in range(dz):
                for c2 in range(dz):
                    chain[dk + c, dk + c2] = Sz[c, c2]
            # the group's own covariance, C_k Cov(beta) C_k'
            for i in range(dk):
                for i2 in range(dk):
                    t = 0.0
                    for m in range(i + 1):
                        for m2 in range(i2 + 1):
                            t += C[c0 + i, c0 + m] * chain[m, m2] * C[c0 + i2, c0 + m2]
                    V[g, c0 + i, c0 + i2] = t
            if lev > 0:
                up = upper[g - n1]
                for i in range(dk + dz):
                    for i2 in range(dk + dz):
                        up[i, i2] = chain[i, i2]
                continue
            # a finest group: the trace terms of E[RSS] from the covariance of [b_eff, a],
            # G chain G' with G = diag(C, I); GC = G chain (rows), then the traces
            for i in range(W1):
                for c in range(W1):
                    if i < D:
                        t = 0.0
                        for m in range(i + 1):
                            t += C[i, m] * chain[m, c]
                        GC[i, c] = t
                    else:
                        GC[i, c] = chain[i, c]
            for k in range(D):
                for k2 in range(D):
                    # Cov(b_eff)[k2, k] = sum_m GC[k2, m] C[k, m]
                    t = 0.0
                    for m in range(k + 1):
                        t += GC[k2, m] * C[k, m]
                    rss += stats.XtX[g, k, k2] * t
                for q in range(p):
                    t = 0.0
                    for m in range(k + 1):
                        t += GC[D + q, m] * C[k, m]
                    rss += 2.0 * stats.XtF[g, k, q] * t
            if not score:
                continue
            anc = g
            for lev2 in range(n_levels):
                for c in range(lp[lev2], lp[lev2 + 1]):
                    m_eff[c] = beta[anc, c - lp[lev2]]
                anc = parent[anc]
            add_score_terms(stats, g, C, a, m_eff, chain, chain, D, CE, gC, inv_s2)
    return max(rss, 1e-300)


@njit(cache=True, nogil=True, inline="always")
def em_update(rng, stats, structure, s2, C, Lt, Ut, LA, cA, beta, reml, a, b, V, A_inv, T):
    """One EM iteration's E- and M-steps after a ``full`` :func:`upward`; returns the new level-1 variance.

    E-step: :func:`moments`. M-step: :func:`m_step`, and the level-1 variance ``E[RSS] / N``.
    """
    rss = moments(rng, stats, structure, s2, C, Lt, Ut, LA, cA, beta, reml, a, b, V, A_inv, np.zeros((0, 0)))
    m_step(structure, b, V, T)
    return rss / stats.scal[N_OBS]


@njit(cache=True, nogil=True)
def m_step(structure, b, V, T):
    """The M-step of ``T``: each covariance block the mean of ``E[b b']`` over the groups of its factor.

    ``b`` and ``V`` hold every group's conditional mean and covariance (rows: the groups of
    every factor, ``Structure.node_ptr``); a ridge of ``1e-12`` times the trace keeps ``T``
    positive definite.
    """
    lp = structure.level_ptr
    D = T.shape[0]
    for k in range(D):
        for m in range(D):
            T[k, m] = 0.0
    trace = 0.0
    for blk in range(structure.block_ptr.shape[0] - 1):
        lo = structure.block_ptr[blk]
        hi = structure.block_ptr[blk + 1]
        lev = 0
        while lp[lev + 1] <= lo:
            lev += 1
        g0 = structure.node_ptr[lev]
        g1 = structure.node_ptr[lev + 1]
        for k in range(lo, hi):
            for m in range(lo, hi):
                t = 0.0
                for g in range(g0, g1):
                    t += b[g, k] * b[g, m] + V[g, k, m]
                T[k, m] = t / (g1 - g0)
            trace += T[k, k]
    for k in range(D):
        T[k, k] += 1e-12 * max(trace, 1e-300)


@njit(cache=True, nogil=True, inline="always")
def score_terms(rng, stats, structure, s2, C, Lt, Ut, LA, cA, beta, reml, gC):
    """After a ``full`` :func:`upward` with a flat prior: ``d loglik / dC`` into ``gC``; returns ``d loglik / ds2``.

    The nested counterpart of :func:`samplers.two_level.score_terms`, from :func:`moments`
    (``rng`` is not drawn from (None will do)).
    """
    D = stats.Xty.shape[1]
    p = stats.Fty.shape[0]
    n_nodes = structure.node_ptr[-1]
    a = np.empty(p)
    b = np.zeros((n_nodes, D))
    V = np.zeros((n_nodes, D, D))
    A_inv = np.empty((p, p))
    rss = moments(rng, stats, structure, s2, C, Lt, Ut, LA, cA, beta, reml, a, b, V, A_inv,
                  gC)
    return -0.5 * stats.scal[N_OBS] / s2 + 0.5 * rss / (s2 * s2)
