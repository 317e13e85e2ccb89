"""The Gaussian part of a model with crossed grouping factors (subjects x items, pupils in schools x schools).

One implementation of the seam of :mod:`samplers.gaussian` (docs/design.md, "Crossed
factors"). The factors ``0 .. K-1`` are ordered by their number of groups, largest first;
a row lies in one group of every factor, and the groups of the statistics are the *cells*,
the combinations of groups that occur (``Structure.cell_node``). A cell's random design
holds the columns of every factor, so the per-cell statistics carry ``Z'WZ``, ``Z'WF`` and
``Z'Wy`` of the whole model: a pass costs ``O(n_cells)`` and never reads the rows.

With ``b_g = C_k beta_g`` and ``beta_g ~ N(0, I)`` for a group ``g`` of factor ``k``, the
joint precision of the whitened coefficients of every group and the fixed effects is
``I + G'Z'WZG / s2`` (with ``F`` and the prior of ``a`` appended). It is factorised with
the structure it has (Bates et al. 2015, section 3; the blocked Cholesky of
MixedModels.jl):

* the groups of factor 0 are eliminated one by one: no two of them share a cell, so their
  block is block diagonal; group ``g`` sends the Schur complement ``-U_g'U_g`` over its
  *support* (the groups of the other factors it shares a cell with, and ``a``);
* what is left, ``S``, over the coefficients of the other factors and ``a`` (in that order),
  is dense and is factorised by LAPACK (``S = L_x L_x'``); the trailing ``p x p`` block of
  ``L_x`` is the factor of the fixed effects' precision ``A``.

The downward pass draws ``x = (beta of factors 1..K-1, a)`` from ``L_x`` and then each group
of factor 0 given its support. The cost of a pass is ``O(sum_g |support_g|^2 + W^3 / 3)``
with ``W`` the number of coefficients of all factors but the largest plus ``p``: fast when
one factor is much larger than the others (pupils' primary x secondary schools, students x
instructors), and dense linear algebra on ``W`` otherwise.

References
----------
Bates, D., Maechler, M., Bolker, B. & Walker, S. (2015). Fitting linear mixed-effects
models using lme4. Journal of Statistical Software 67(1).
"""

import numpy as np
from numba import njit

from samplers import two_level
from samplers.linalg import (
    chol_inplace,
    dense_cholesky,
    draw_canonical,
    inverse_from_cholesky,
    solve_lower,
    solve_upper,
)
from samplers.nested import add_score_terms, lower_inverse_gram, m_step
from samplers.types import N_OBS, SUM_LOG_W, YTY

LOG_2PI = np.log(2.0 * np.pi)
# the dense rest up to this size is factorised in place by hand: a LAPACK call allocates and
# copies, which costs more than the arithmetic there
SMALL_DENSE = 40


@njit(cache=True, nogil=True)
def workspace_arrays(stats, structure):
    """The arrays of a crossed workspace: the factors' storage and the supports of factor 0's groups.

    Returns ``(L, Ue, Ua, u, S, s, Lx, LA, cA, beta, xoff, cell_ptr, cell_order, supp_ptr,
    supp_node, supp_col, supp_fac, cell_supp, Esum, Cy, v)`` (the last two scratch
    space of :func:`upward`):

    * ``xoff[h]``: where group ``h`` of factor 1.. sits in ``x`` (-1 for factor 0);
    * ``cell_ptr``, ``cell_order``: the cells of each group of factor 0;
    * ``supp_ptr``, ``supp_node``: each group of factor 0's support (ascending groups),
      ``supp_col[e]`` where support entry ``e``'s columns start in the group's coupling row,
      ``supp_fac[e]`` the factor of its group;
    * ``cell_supp[c, m]``: the support entry of cell ``c``'s group of factor ``m >= 1``;
    * ``Esum[e]``: ``X_0'WX_m`` summed over the cells of support entry ``e``
      (:func:`block_constants` fills it).
    """
    lp = structure.level_ptr
    npt = structure.node_ptr
    cn = structure.cell_node
    K = lp.shape[0] - 1
    n_cells = cn.shape[0]
    n0 = npt[1]
    n_nodes = npt[K]
    d0 = lp[1] - lp[0]
    p = stats.Fty.shape[0]
    dm = 1
    dR = 1
    for k in range(K):
        dm = max(dm, lp[k + 1] - lp[k])
        if k > 0:
            dR = max(dR, lp[k + 1] - lp[k])
    xoff = np.full(n_nodes, -1, dtype=np.int64)
    off = 0
    for k in range(1, K):
        dk = lp[k + 1] - lp[k]
        for h in range(npt[k], npt[k + 1]):
            xoff[h] = off
            off += dk
    qR = off
    W = qR + p
    # cells of each group of factor 0 (a counting sort)
    cell_ptr = np.zeros(n0 + 1, dtype=np.int64)
    for c in range(n_cells):
        cell_ptr[cn[c, 0] + 1] += 1
    for g in range(n0):
        cell_ptr[g + 1] += cell_ptr[g]
    fill = cell_ptr[:-1].copy()
    cell_order = np.empty(n_cells, dtype=np.int64)
    for c in range(n_cells):
        g = cn[c, 0]
        cell_order[fill[g]] = c
        fill[g] += 1
    # supports: the distinct groups of the other factors met in each group's cells
    seen = np.full(n_nodes, -1, dtype=np.int64)
    supp_ptr = np.zeros(n0 + 1, dtype=np.int64)
    for g in range(n0):
        cnt = 0
        for i in range(cell_ptr[g], cell_ptr[g + 1]):
            c = cell_order[i]
            for m in range(1, K):
                h = cn[c, m]
                if seen[h] != g:
                    seen[h] = g
                    cnt += 1
        supp_ptr[g + 1] = supp_ptr[g] + cnt
    n_supp = supp_ptr[n0]
    supp_node = np.empty(n_supp, dtype=np.int64)
    seen[:] = -1
    for g in range(n0):
        e = supp_ptr[g]
        for i in range(cell_ptr[g], cell_ptr[g + 1]):
            c = cell_order[i]
            for m in range(1, K):
                h = cn[c, m]
                if seen[h] != g:
                    seen[h] = g
                    supp_node[e] = h
                    e += 1
        supp_node[supp_ptr[g]:supp_ptr[g + 1]] = np.sort(supp_node[supp_ptr[g]:supp_ptr[g + 1]])
    pos = np.full(n_nodes, -1, dtype=np.int64)
    supp_col = np.empty(n_supp, dtype=np.int64)
    supp_fac = np.empty(n_supp, dtype=np.int64)
    cell_supp = np.zeros((n_cells, max(K, 1)), dtype=np.int64)
    for g in range(n0):
        col = 0
        for e in range(supp_ptr[g], supp_ptr[g + 1]):
            h = supp_node[e]
            pos[h] = e
            supp_col[e] = col
            k = 1
            while npt[k + 1] <= h:
                k += 1
            supp_fac[e] = k
            col += lp[k + 1] - lp[k]
        for i in range(cell_ptr[g], cell_ptr[g + 1]):
            c = cell_order[i]
            cell_supp[c, 0] = g
            for m in range(1, K):
                cell_supp[c, m] = pos[cn[c, m]]
    D = lp[K]
    return (np.zeros((n0, d0, d0)), np.zeros((n_supp, d0, dR)), np.zeros((n0, d0, p)), np.zeros((n0, d0)),
            np.zeros((W, W)), np.zeros(W), np.zeros((W, W)), np.zeros((p, p)), np.zeros(p),
            np.zeros((n_nodes, dm)), xoff, cell_ptr, cell_order, supp_ptr, supp_node, supp_col, supp_fac, cell_supp,
            np.zeros((n_supp, d0, dR)), np.zeros(D), np.zeros(W))


@njit(cache=True, nogil=True)
def _factor_of(structure, h):
    """The factor of group ``h``."""
    npt = structure.node_ptr
    k = 0
    while npt[k + 1] <= h:
        k += 1
    return k


@njit(cache=True, nogil=True, inline="always")
def _eliminate_intercepts(n0, p, qR, sp, sn, xoff, L, Ue, Ua, u, S, s, logdet, yyv):
    """The elimination of :func:`upward` when every factor has one column: scalars throughout.

    Returns ``(ok, logdet, yyv)`` updated.
    """
    prod = 1.0  # the pivots' product, its logarithm taken now and then (each pivot is in [1, 1e154])
    for g in range(n0):
        l2 = L[g, 0, 0] + 1.0
        if not l2 > 0.0:
            return False, logdet, yyv
        lg = np.sqrt(l2)
        L[g, 0, 0] = lg
        prod *= lg
        if prod > 1e100:
            logdet += 2.0 * np.log(prod)
            prod = 1.0
        inv = 1.0 / lg
        ug = u[g, 0] * inv
        u[g, 0] = ug
        yyv -= ug * ug
        for q in range(p):
            Ua[g, 0, q] *= inv
        for e1 in range(sp[g], sp[g + 1]):
            v1 = Ue[e1, 0, 0] * inv
            Ue[e1, 0, 0] = v1
            x1 = xoff[sn[e1]]
            s[x1] -= v1 * ug
            for q in range(p):
                S[qR + q, x1] -= Ua[g, 0, q] * v1
            for e2 in range(sp[g], e1 + 1):
                S[x1, xoff[sn[e2]]] -= v1 * Ue[e2, 0, 0]
        for q in range(p):
            aq = Ua[g, 0, q]
            s[qR + q] -= aq * ug
            for r in range(q + 1):
                S[qR + q, qR + r] -= aq * Ua[g, 0, r]
    return True, logdet + 2.0 * np.log(prod), yyv



@njit(cache=True, nogil=True)
def _solve_lower_rows(L, g, A, r, m):
    """Overwrite the first ``m`` columns of ``A[r]`` (d0 x m) with ``L[g]^{-1} A[r]``, indexed, no views."""
    d0 = L.shape[1]
    for j in range(m):
        for i in range(d0):
            t = A[r, i, j]
            for k in range(i):
                t -= L[g, i, k] * A[r, k, j]
            A[r, i, j] = t / L[g, i, i]

@njit(cache=True, nogil=True)
def upward(stats, structure, s2, C, full, fixed, yx, yy, work):
    """Integrate out every group's coefficients (and, with ``full``, the fixed effects).

    ``full``: the response statistics are ``stats.Xty`` and ``y'Wy`` (``yx``, ``yy`` are
    ignored), the fixed effects are integrated out against ``fixed`` and the factors are
    left in ``work`` for the downward pass. Otherwise the fixed effects are given through
    ``yx`` (n_cells, n_coef) ``= X_c'W_c(y_c - F_c a)`` and ``yy`` the residual sum of squares
    at ``a``. Returns ``(loglik, ok)`` as :func:`samplers.two_level.upward` does.

    The diagonal blocks come from each group's sums of its cells' statistics and the
    couplings of factor 0 from each support entry's (:func:`block_constants`, made once per
    workspace), so a pass costs ``O(groups + support entries)`` before the dense rest; the
    cells themselves are read only for the response given ``a`` and, with three factors or
    more, for the couplings between the other factors.
    """
    if not s2 > 0.0:
        return -np.inf, False
    lp = structure.level_ptr
    cn = structure.cell_node
    K = lp.shape[0] - 1
    d0 = lp[1]
    n_cells = cn.shape[0]
    n0 = structure.node_ptr[1]
    p = stats.Fty.shape[0] if full else 0
    qR = work.S.shape[0] - stats.Fty.shape[0]
    W = qR + p
    inv_s2 = 1.0 / s2
    L, Ue, Ua, u, S, s, xoff = work.L, work.Ue, work.Ua, work.u, work.S, work.s, work.xoff
    if work.block_ready[0] == 0:
        block_constants(structure, work, stats)
    npt = structure.node_ptr
    for i in range(W):
        s[i] = 0.0
        for j in range(W):
            S[i, j] = 0.0
    Cy = work.Cy
    # the response sums of each group: constant (full), or the cells' X'W(y - Fa) added up
    if not full:
        u[:] = 0.0
        for c in range(n_cells):
            g = cn[c, 0]
            for i in range(d0):
                u[g, i] += yx[c, i]
            for m in range(1, K):
                xo = xoff[cn[c, m]]
                c0 = lp[m]
                for j in range(lp[m + 1] - c0):
                    s[xo + j] += yx[c, c0 + j]
    # the groups of factor 0: C_0'(X'WX)_g C_0 / s2 (I is added below), C_0'(X'Wy)_g / s2, C_0'(X'WF)_g / s2
    B0X, B0F = work.blocks[0].XtX, work.blocks[0].XtF
    Y0 = work.Xty0[0]
    intercepts = d0 == 1 and Ue.shape[2] == 1  # every factor one column: scalars
    c00 = C[0, 0]
    for g in range(n0 if intercepts else 0):
        L[g, 0, 0] = c00 * c00 * B0X[g, 0, 0] * inv_s2
        u[g, 0] = c00 * (Y0[g, 0] if full else u[g, 0]) * inv_s2
        for q in range(p):
            Ua[g, 0, q] = c00 * B0F[g, 0, q] * inv_s2
    for g in range(0 if intercepts else n0):  # indexed, not sliced: a view per group costs more than its arithmetic
        for i in range(d0):
            for j in range(i + 1):
                t = 0.0
                for a in range(i, d0):
                    ca = C[a, i]
                    for b in range(j, d0):
                        t += ca * B0X[g, a, b] * C[b, j]
                L[g, i, j] = t * inv_s2
                L[g, j, i] = t * inv_s2
            t = 0.0
            for a in range(i, d0):
                t += C[a, i] * (Y0[g, a] if full else u[g, a])
            Cy[i] = t * inv_s2
            for q in range(p):
                t = 0.0
                for a in range(i, d0):
                    t += C[a, i] * B0F[g, a, q]
                Ua[g, i, q] = t * inv_s2
        for i in range(d0):
            u[g, i] = Cy[i]
    # the groups of the other factors: their diagonal blocks and responses in S and s
    for m in range(1, K):
        BmX, BmF = work.blocks[m].XtX, work.blocks[m].XtF
        Ym = work.Xty0[m]
        c0 = lp[m]
        dmk = lp[m + 1] - c0
        for h in range(npt[m], npt[m + 1]):
            gi = h - npt[m]
            xo = xoff[h]
            for i in range(dmk):
                for j in range(i + 1):
                    t = 0.0
                    for a in range(i, dmk):
                        ca = C[c0 + a, c0 + i]
                        for b in range(j, dmk):
                            t += ca * BmX[gi, a, b] * C[c0 + b, c0 + j]
                    S[xo + i, xo + j] = t * inv_s2
                S[xo + i, xo + i] += 1.0
                t = 0.0
                for a in range(i, dmk):
                    t += C[c0 + a, c0 + i] * (Ym[gi, a] if full else s[xo + a])
                Cy[i] = t * inv_s2
                for q in range(p):
                    t = 0.0
                    for a in range(i, dmk):
                        t += C[c0 + a, c0 + i] * BmF[gi, a, q]
                    S[qR + q, xo + i] = t * inv_s2
            for i in range(dmk):
                s[xo + i] = Cy[i]
    # each group of factor 0 with its support: C_0'(X_0'WX_m) C_m / s2, summed over the cells they share
    sn, sf, Es = work.supp_node, work.supp_fac, work.Esum
    dR = Ue.shape[2]
    if intercepts:
        for m in range(1, K):
            Cy[m] = c00 * C[lp[m], lp[m]] * inv_s2
        for e in range(sn.shape[0]):
            Ue[e, 0, 0] = Es[e, 0, 0] * Cy[sf[e]]
    for e in range(0 if intercepts else sn.shape[0]):
        m = sf[e]
        c0 = lp[m]
        dmk = lp[m + 1] - c0
        for i in range(d0):
            for j in range(dmk):
                t = 0.0
                for a in range(i, d0):
                    ca = C[a, i]
                    for b in range(j, dmk):
                        t += ca * Es[e, a, b] * C[c0 + b, c0 + j]
                Ue[e, i, j] = t * inv_s2
            for j in range(dmk, dR):
                Ue[e, i, j] = 0.0
    # three factors or more: the other factors' groups meet in cells, coupled cell by cell
    for c in range(n_cells if K > 2 else 0):
        for m in range(2, K):
            c0 = lp[m]
            dmk = lp[m + 1] - c0
            xo = xoff[cn[c, m]]
            for m2 in range(1, m):
                c2 = lp[m2]
                dm2 = lp[m2 + 1] - c2
                xo2 = xoff[cn[c, m2]]
                for j in range(dmk):
                    for j2 in range(dm2):
                        t = 0.0
                        for a in range(j, dmk):
                            ca = C[c0 + a, c0 + j]
                            for b in range(j2, dm2):
                                t += ca * stats.XtX[c, c0 + a, c2 + b] * C[c2 + b, c2 + j2]
                        S[xo + j, xo2 + j2] += t * inv_s2
    yyv = (stats.scal[YTY] if full else yy) * inv_s2
    if full:
        for q in range(p):
            s[qR + q] = stats.Fty[q] * inv_s2 + fixed.lin[q]
            for r in range(q + 1):
                S[qR + q, qR + r] = stats.FtF[q, r] * inv_s2 + fixed.prec[q, r]
    logdet = stats.scal[N_OBS] * np.log(s2) - stats.scal[SUM_LOG_W]
    # eliminate the groups of factor 0, each into the lower triangle of S over its support
    sp, sn = work.supp_ptr, work.supp_node
    if intercepts:
        ok, logdet, yyv = _eliminate_intercepts(n0, p, qR, sp, sn, xoff, L, Ue, Ua, u, S, s, logdet, yyv)
        if not ok:
            return -np.inf, False
    else:
        # (indexed, not sliced; the pivots multiplied and their logarithm taken now and then: each
        # is at least 1 and at most 1e154, so the product stays finite)
        prod = 1.0
        for g in range(n0):
            for i in range(d0):
                L[g, i, i] += 1.0
            if d0 == 1:  # a random intercept: no call
                if not L[g, 0, 0] > 0.0:
                    return -np.inf, False
                L[g, 0, 0] = np.sqrt(L[g, 0, 0])
            elif not chol_inplace(L[g]):
                return -np.inf, False
            for i in range(d0):
                prod *= L[g, i, i]
                if prod > 1e100:
                    logdet += 2.0 * np.log(prod)
                    prod = 1.0
            for e in range(sp[g], sp[g + 1]):
                _solve_lower_rows(L, g, Ue, e, dR)
            _solve_lower_rows(L, g, Ua, g, p)
            for i in range(d0):
                t = u[g, i]
                for m in range(i):
                    t -= L[g, i, m] * u[g, m]
                u[g, i] = t / L[g, i, i]
                yyv -= u[g, i] * u[g, i]
            for e1 in range(sp[g], sp[g + 1]):
                h1 = sn[e1]
                x1 = xoff[h1]
                k1 = sf[e1]
                w1 = lp[k1 + 1] - lp[k1]
                for j1 in range(w1):
                    t = 0.0
                    for i in range(d0):
                        t += Ue[e1, i, j1] * u[g, i]
                    s[x1 + j1] -= t
                    for q in range(p):
                        t = 0.0
                        for i in range(d0):
                            t += Ua[g, i, q] * Ue[e1, i, j1]
                        S[qR + q, x1 + j1] -= t
                    for e2 in range(sp[g], e1 + 1):
                        h2 = sn[e2]
                        x2 = xoff[h2]
                        w2 = w1 if e2 == e1 else lp[sf[e2] + 1] - lp[sf[e2]]
                        top = j1 + 1 if e2 == e1 else w2
                        for j2 in range(top):
                            t = 0.0
                            for i in range(d0):
                                t += Ue[e1, i, j1] * Ue[e2, i, j2]
                            S[x1 + j1, x2 + j2] -= t
            for q in range(p):
                t = 0.0
                for i in range(d0):
                    t += Ua[g, i, q] * u[g, i]
                s[qR + q] -= t
                for r in range(q + 1):
                    t = 0.0
                    for i in range(d0):
                        t += Ua[g, i, q] * Ua[g, i, r]
                    S[qR + q, qR + r] -= t
        logdet += 2.0 * np.log(prod)
    # the dense rest: factors 1.. then the fixed effects, into the lower triangle of work.Lx
    Lx = work.Lx
    if W <= SMALL_DENSE:
        for i in range(W):
            for j in range(i + 1):
                Lx[i, j] = S[i, j]
        if not chol_inplace(Lx[:W, :W]):
            return -np.inf, False
    else:
        for i in range(W):
            for j in range(i + 1):
                Lx[i, j] = S[i, j]
        if not dense_cholesky(Lx, W):
            return -np.inf, False
    v = work.v
    for i in range(W):
        t = s[i]
        for m in range(i):
            t -= Lx[i, m] * v[m]
        v[i] = t / Lx[i, i]
    for i in range(W):
        if i < qR:
            logdet += 2.0 * np.log(Lx[i, i])
        yyv -= v[i] * v[i]
    if not full:
        return -0.5 * (stats.scal[N_OBS] * LOG_2PI + logdet + yyv), True
    logdet_A = 0.0
    for q in range(p):
        logdet_A += 2.0 * np.log(Lx[qR + q, qR + q])
        t = 0.0
        for r in range(q + 1):
            work.LA[q, r] = Lx[qR + q, qR + r]
            t += Lx[qR + q, qR + r] * v[qR + r]
        work.cA[q] = t  # LA^{-1} cA is the fixed effects' part of v
    return -0.5 * ((stats.scal[N_OBS] - fixed.n_flat) * LOG_2PI + logdet + yyv + fixed.const + logdet_A), True


@njit(cache=True, nogil=True)
def draw(rng, structure, C, work, a_out, b_out, draw):
    """Downward pass after a ``full`` :func:`upward`: an exact joint draw of ``(a, b)`` (or the means).

    ``x = L_x'^{-1}(v + z)`` for the coefficients of factors 1.. and ``a``, then each group
    of factor 0 given its support, ``beta_g = L_g'^{-1}(u_g - U_g x_g + z_g)``; ``b = C beta``.
    The whitened values are kept in ``work.beta``.
    """
    lp = structure.level_ptr
    npt = structure.node_ptr
    K = lp.shape[0] - 1
    d0 = lp[1]
    p = a_out.shape[0]
    Lx = work.Lx
    W = Lx.shape[0]
    qR = W - p
    x = np.empty(W)
    draw_canonical(Lx, work.s, rng, draw, x)  # rng None: the means only
    for q in range(p):
        a_out[q] = x[qR + q]
    b_out[:] = 0.0
    beta = work.beta
    for k in range(1, K):
        c0 = lp[k]
        dk = lp[k + 1] - c0
        for h in range(npt[k], npt[k + 1]):
            xo = work.xoff[h]
            for i in range(dk):
                beta[h, i] = x[xo + i]
            for i in range(dk):
                t = 0.0
                for m in range(i + 1):
                    t += C[c0 + i, c0 + m] * beta[h, m]
                b_out[h, c0 + i] = t
    sp, sn, sf = work.supp_ptr, work.supp_node, work.supp_fac
    z = np.empty(d0)
    for g in range(npt[1]):
        for i in range(d0):
            t = work.u[g, i]
            for q in range(p):
                t -= work.Ua[g, i, q] * a_out[q]
            for e in range(sp[g], sp[g + 1]):
                h = sn[e]
                xo = work.xoff[h]
                k = sf[e]
                for j in range(lp[k + 1] - lp[k]):
                    t -= work.Ue[e, i, j] * x[xo + j]
            z[i] = t
        if rng is not None:  # None: the means only, no generator (pruned when compiled)
            if draw:
                for i in range(d0):
                    z[i] += rng.standard_normal()
        if d0 == 1:  # no view of the group's factor
            z[0] /= work.L[g, 0, 0]
        else:
            solve_upper(work.L[g], z)
        for i in range(d0):
            beta[g, i] = z[i]
        for i in range(d0):
            t = 0.0
            for m in range(i + 1):
                t += C[i, m] * z[m]
            b_out[g, i] = t


@njit(cache=True, nogil=True)
def cell_coefficients(structure, b, out):
    """Each cell's full coefficient vector (every factor's group's columns) into ``out``."""
    lp = structure.level_ptr
    cn = structure.cell_node
    for c in range(cn.shape[0]):
        for k in range(lp.shape[0] - 1):
            h = cn[c, k]
            for i in range(lp[k], lp[k + 1]):
                out[c, i] = b[h, i]


@njit(cache=True, nogil=True)
def moments(rng, stats, structure, s2, C, work, with_fixed, a, b, V, A_inv, gC):
    """E-step after a ``full`` :func:`upward` with a flat prior: means, covariances, expected RSS.

    Writes the GLS fixed effects ``a``, ``A_inv = A^{-1}``, each group's conditional mean
    ``b`` and the covariance ``V`` of its own coefficients, given ``a`` or, with
    ``with_fixed``, with ``a`` integrated out (REML). Returns
    ``E[(y - F a - X b)'W(y - F a - X b) | y]`` over the same distribution. With ``gC`` of
    shape (n_coef, n_coef), also ``d loglik / dC`` by Fisher's identity (see
    :func:`samplers.two_level.score_terms`), summed over the cells.

    The joint covariance of ``x`` (factors 1.. and ``a``) is ``Sigma = S^{-1}``, or, given ``a``,
    the inverse of the leading block of ``S`` (zero for ``a``). A group of factor 0 has
    ``beta_g = L_g'^{-1}(u_g - U_g x_g + e)``, so
    ``Cov(beta_g) = K_g^{-1} + B_g Sigma_gg B_g'`` and ``Cov(beta_g, x_g) = -B_g Sigma_gg`` with
    ``B_g = L_g'^{-1} U_g`` over its support ``x_g`` (docs/design.md, "Crossed factors").
    """
    lp = structure.level_ptr
    npt = structure.node_ptr
    cn = structure.cell_node
    K = lp.shape[0] - 1
    D = lp[K]
    d0 = lp[1]
    p = a.shape[0]
    Lx = work.Lx
    W = Lx.shape[0]
    qR = W - p
    inv_s2 = 1.0 / s2
    draw(rng, structure, C, work, a, b, False)
    lower_inverse_gram(work.LA, A_inv)
    V[:] = 0.0
    # Sigma: the inverse of S (REML), or of its leading block (given a), from the factor
    # L_x of the upward pass (the leading block of L_x is the factor of S's leading block)
    lim = W if with_fixed else qR
    Sig = np.zeros((W, W))
    if lim > 0:
        Sd = np.empty((lim, lim))
        inverse_from_cholesky(Lx, lim, Sd)
        for i in range(lim):
            for j in range(lim):
                Sig[i, j] = Sd[i, j]
    beta = work.beta
    # groups of factors 1..: their own covariance
    for k in range(1, K):
        c0 = lp[k]
        dk = lp[k + 1] - c0
        for h in range(npt[k], npt[k + 1]):
            xo = work.xoff[h]
            for i in range(dk):
                for j in range(dk):
                    t = 0.0
                    for m in range(i + 1):
                        for m2 in range(j + 1):
                            t += C[c0 + i, c0 + m] * Sig[xo + m, xo + m2] * C[c0 + j, c0 + m2]
                    V[h, c0 + i, c0 + j] = t
    # the residual sum of squares at the means
    rss = stats.scal[YTY]
    for q in range(p):
        rss -= 2.0 * a[q] * stats.Fty[q]
        for r in range(p):
            rss += a[q] * stats.FtF[q, r] * a[r]
            rss += stats.FtF[q, r] * Sig[qR + q, qR + r]
    n_cells = cn.shape[0]
    be = np.zeros((n_cells, D))
    cell_coefficients(structure, b, be)
    for c in range(n_cells):
        for k in range(D):
            t = stats.Xty[c, k]
            for q in range(p):
                t -= stats.XtF[c, k, q] * a[q]
            rss -= 2.0 * be[c, k] * t
            for m in range(D):
                rss += be[c, k] * stats.XtX[c, k, m] * be[c, m]
    score = gC.shape[0] > 0
    if score:
        gC[:] = 0.0
    sp, sn, sc = work.supp_ptr, work.supp_node, work.supp_col
    cov_cell = np.empty((D, D))  # Cov(beta_cell)
    cov_ac = np.empty((p, D))  # Cov(a, beta_cell)
    CC = np.empty((D, D))
    CA = np.empty((D, p))
    m_c = np.empty(D)
    CE = np.empty((D, D))
    for g in range(npt[1]):
        Lg = work.L[g]
        # the support's columns in x: each entry's group's, then a
        nsup = sp[g + 1] - sp[g]
        wg = 0
        if nsup > 0:
            e_last = sp[g + 1] - 1
            k_last = _factor_of(structure, sn[e_last])
            wg = sc[e_last] + lp[k_last + 1] - lp[k_last]
        wt = wg + p
        cols = np.empty(wt, dtype=np.int64)
        B = np.empty((d0, wt))
        for e in range(sp[g], sp[g + 1]):
            h = sn[e]
            k = _factor_of(structure, h)
            for j in range(lp[k + 1] - lp[k]):
                cols[sc[e] + j] = work.xoff[h] + j
                for i in range(d0):
                    B[i, sc[e] + j] = work.Ue[e, i, j]
        for q in range(p):
            cols[wg + q] = qR + q
            for i in range(d0):
                B[i, wg + q] = work.Ua[g, i, q]
        for j in range(wt):  # B = L_g'^{-1} U_g
            for i in range(d0 - 1, -1, -1):
                t = B[i, j]
                for m in range(i + 1, d0):
                    t -= Lg[m, i] * B[m, j]
                B[i, j] = t / Lg[i, i]
        BS = np.zeros((d0, wt))  # B Sigma_gg
        for i in range(d0):
            for j in range(wt):
                t = 0.0
                cj = cols[j]
                for m in range(wt):
                    t += B[i, m] * Sig[cols[m], cj]
                BS[i, j] = t
        covg = np.zeros((d0, d0))
        for i in range(d0):  # K_g^{-1} = L_g'^{-1} L_g^{-1}
            col = np.zeros(d0)
            col[i] = 1.0
            solve_lower(Lg, col)
            solve_upper(Lg, col)
            for j in range(d0):
                covg[j, i] = col[j]
        for i in range(d0):
            for j in range(d0):
                t = 0.0
                for m in range(wt):
                    t += BS[i, m] * B[j, m]
                covg[i, j] += t
        for i in range(d0):
            for j in range(d0):
                t = 0.0
                for m in range(i + 1):
                    for m2 in range(j + 1):
                        t += C[i, m] * covg[m, m2] * C[j, m2]
                V[g, i, j] = t
        for ic in range(work.cell_ptr[g], work.cell_ptr[g + 1]):
            c = work.cell_order[ic]
            # Cov(beta_cell) and Cov(beta_cell, a), block by block
            for i in range(d0):
                for j in range(d0):
                    cov_cell[i, j] = covg[i, j]
                for q in range(p):
                    cov_ac[q, i] = -BS[i, wg + q]
            for m in range(1, K):
                h = cn[c, m]
                c0 = lp[m]
                dmk = lp[m + 1] - c0
                xo = work.xoff[h]
                col0 = sc[work.cell_supp[c, m]]
                for j in range(dmk):
                    for i in range(d0):
                        cov_cell[i, c0 + j] = -BS[i, col0 + j]
                        cov_cell[c0 + j, i] = -BS[i, col0 + j]
                    for q in range(p):
                        cov_ac[q, c0 + j] = Sig[xo + j, qR + q]
                    for m2 in range(1, K):
                        h2 = cn[c, m2]
                        c2 = lp[m2]
                        for j2 in range(lp[m2 + 1] - c2):
                            cov_cell[c0 + j, c2 + j2] = Sig[xo + j, work.xoff[h2] + j2]
            # the trace terms of E[RSS]: X'WX with C Cov C', X'WF with C Cov(beta, a)
            for i in range(D):
                for j in range(D):
                    t = 0.0
                    for m in range(i + 1):
                        t += C[i, m] * cov_cell[m, j]
                    CC[i, j] = t
                for q in range(p):
                    t = 0.0
                    for m in range(i + 1):
                        t += C[i, m] * cov_ac[q, m]
                    CA[i, q] = t
            for i in range(D):
                for j in range(D):
                    t = 0.0
                    for m in range(j + 1):
                        t += CC[i, m] * C[j, m]
                    rss += stats.XtX[c, i, j] * t
                for q in range(p):
                    rss += 2.0 * stats.XtF[c, i, q] * CA[i, q]
            if not score:
                continue
            for k in range(K):
                h = cn[c, k]
                for i in range(lp[k], lp[k + 1]):
                    m_c[i] = beta[h, i - lp[k]]
            add_score_terms(stats, c, C, a, m_c, cov_cell, cov_ac, 0, CE, gC, inv_s2)
    return max(rss, 1e-300)


@njit(cache=True, nogil=True, inline="always")
def em_update(rng, stats, structure, s2, C, work, reml, a, b, V, A_inv, T):
    """One EM iteration's E- and M-steps after a ``full`` :func:`upward`; returns the new level-1 variance."""
    rss = moments(rng, stats, structure, s2, C, work, reml, a, b, V, A_inv, np.zeros((0, 0)))
    m_step(structure, b, V, T)
    return rss / stats.scal[N_OBS]


@njit(cache=True, nogil=True, inline="always")
def score_terms(rng, stats, structure, s2, C, work, reml, gC):
    """After a ``full`` :func:`upward` with a flat prior: ``d loglik / dC`` into ``gC``; returns ``d loglik / ds2``."""
    D = stats.Xty.shape[1]
    p = stats.Fty.shape[0]
    n_nodes = structure.node_ptr[-1]
    a = np.empty(p)
    b = np.zeros((n_nodes, D))
    V = np.zeros((n_nodes, D, D))
    A_inv = np.empty((p, p))
    rss = moments(rng, stats, structure, s2, C, work, reml, a, b, V, A_inv, gC)
    return -0.5 * stats.scal[N_OBS] / s2 + 0.5 * rss / (s2 * s2)


@njit(cache=True, nogil=True)
def block_constants(structure, work, stats):
    """The per-group sums of the cells' statistics that the factor-by-factor draw reuses every sweep.

    For each factor ``k`` and group ``g``: rows, ``sum log w``, ``X_k'WX_k``, ``X_k'WF`` and
    ``X_k'Wy`` (the response part before the other factors are taken off), into
    ``work.blocks[k]``; each cell's ``X_c,k'W_cX_c,-k`` into ``work.cross[k]`` and its groups in
    32 bits into ``work.cell_node32`` (what the draw reads per cell, packed);
    ``Esum`` of the passes of :func:`upward`; ``work.block_ready[0]`` is set. Computed on
    the first pass or draw of a workspace: whatever replaces the statistics (a new response,
    :func:`samplers.suffstats.recompute`) must clear ``work.block_ready[0]``
    (:func:`samplers.gaussian.forget_statistics`).
    """
    lp = structure.level_ptr
    npt = structure.node_ptr
    cn = structure.cell_node
    K = lp.shape[0] - 1
    p = stats.Fty.shape[0]
    for k in range(K):
        st = work.blocks[k]
        c0 = lp[k]
        dk = lp[k + 1] - c0
        st.n[:] = 0.0
        st.logw_g[:] = 0.0
        st.XtX[:] = 0.0
        st.XtF[:] = 0.0
        work.Xty0[k][:] = 0.0
        cross = work.cross[k]
        for c in range(cn.shape[0]):
            g = cn[c, k] - npt[k]
            work.cell_node32[c, k] = cn[c, k]
            st.n[g] += stats.n[c]
            st.logw_g[g] += stats.logw_g[c]
            for i in range(dk):
                jj = 0
                for j in range(lp[K]):
                    if j < c0 or j >= c0 + dk:
                        cross[c, i, jj] = stats.XtX[c, c0 + i, j]
                        jj += 1
                work.Xty0[k][g, i] += stats.Xty[c, c0 + i]
                for j in range(dk):
                    st.XtX[g, i, j] += stats.XtX[c, c0 + i, c0 + j]
                for q in range(p):
                    st.XtF[g, i, q] += stats.XtF[c, c0 + i, q]
        for q in range(p):
            for r in range(p):
                st.FtF[q, r] = stats.FtF[q, r]
        st.scal[YTY] = 0.0  # the log-likelihood of a factor's update is not used
        st.scal[N_OBS] = stats.scal[N_OBS]
        st.scal[SUM_LOG_W] = stats.scal[SUM_LOG_W]
    # each group of factor 0 with each group of its support: X_0'WX_m summed over the cells they share
    Es = work.Esum
    Es[:] = 0.0
    d0 = lp[1]
    for c in range(cn.shape[0]):
        for m in range(1, K):
            e = work.cell_supp[c, m]
            c0 = lp[m]
            for i in range(d0):
                for j in range(lp[m + 1] - c0):
                    Es[e, i, j] += stats.XtX[c, i, c0 + j]
    work.block_ready[0] = 1


@njit(cache=True, nogil=True)
def draw_blocks(rng, structure, C, work, stats, s2, fixed, a, b):
    """One sweep of the collapsed Gibbs sampler over the factors: each factor's coefficients with ``a``, given the rest.

    For factor ``k``, given the other factors' coefficients ``b`` (rows of the other
    factors), the model is a two-level one with the groups of ``k``: its statistics are the
    cells' added up over each group, with the response less the other factors' part,
    ``X_c,k'W_c(y_c - X_c,-k b_-k)`` and ``F'W(y - X_-k b_-k)`` (``work.blocks[k]``; the
    parts that do not depend on ``b`` are summed once, :func:`block_constants`, and
    ``F'WX_-k b_-k`` is a sum over the other factors' groups). The fixed effects and the
    factor's coefficients are drawn jointly by the two-level passes
    (:func:`samplers.two_level.upward`, :func:`samplers.two_level.draw`), so the fixed
    effects are integrated out of each factor's update (Papaspiliopoulos, Roberts & Zanella
    2020, Biometrika 107(1), "Scalable inference for crossed random effects models"). Each
    factor costs a pass over the cells reading their groups and ``X_c'W_cX_c``; ``b`` and
    ``a`` are overwritten.

    Returns the weighted residual sum of squares at the new ``(a, b)`` (for the move on
    ``s2``), from the groups' sums and the last factor's pass; -1 when a factorisation
    failed.
    """
    if work.block_ready[0] == 0:
        block_constants(structure, work, stats)
    lp = structure.level_ptr
    npt = structure.node_ptr
    cn = structure.cell_node
    K = lp.shape[0] - 1
    D = lp[K]
    p = a.shape[0]
    n_cells = cn.shape[0]
    pairs = 0.0  # sum over cells of the other factors' cross terms, in the last factor's pass (K > 2)
    for k in range(K):
        st = work.blocks[k]
        Ck = work.Cb[k]
        c0 = lp[k]
        dk = lp[k + 1] - c0
        for i in range(dk):
            for j in range(dk):
                Ck[i, j] = C[c0 + i, c0 + j]
        Xty0 = work.Xty0[k]
        for g in range(npt[k + 1] - npt[k]):
            for i in range(dk):
                st.Xty[g, i] = Xty0[g, i]
        # F'W(y - X_-k b_-k): the other factors' groups' X_m'WF
        for q in range(p):
            t = stats.Fty[q]
            for m in range(K):
                if m == k:
                    continue
                stm = work.blocks[m]
                for h in range(npt[m + 1] - npt[m]):
                    for j in range(lp[m + 1] - lp[m]):
                        t -= stm.XtF[h, j, q] * b[npt[m] + h, lp[m] + j]
            st.Fty[q] = t
        last = k == K - 1
        cross = work.cross[k]
        cn32 = work.cell_node32
        if K == 2 and D == 2:  # two crossed intercepts (or slopes), the common case: the loop written out
            other = 1 - k
            col = lp[other]
            Xty = st.Xty
            for c in range(n_cells):
                Xty[cn32[c, k] - npt[k], 0] -= cross[c, 0, 0] * b[cn32[c, other], col]
            n_loop = 0
        else:
            n_loop = n_cells
        for c in range(n_loop):
            g = cn32[c, k] - npt[k]
            jj = 0
            for m in range(K):
                if m == k:
                    continue
                h = cn32[c, m]
                for j in range(lp[m], lp[m + 1]):
                    bj = b[h, j]
                    for i in range(dk):
                        st.Xty[g, i] -= cross[c, i, jj] * bj
                    jj += 1
                if last:
                    for m2 in range(m + 1, K - 1):
                        h2 = cn[c, m2]
                        for i in range(lp[m], lp[m + 1]):
                            for j in range(lp[m2], lp[m2 + 1]):
                                pairs += b[h, i] * stats.XtX[c, i, j] * b[h2, j]
        _, ok = two_level.upward(st, s2, Ck, fixed, work.Lb[k], work.LA, work.cA)
        if not ok:
            return -1.0
        bk = work.bb[k]
        two_level.draw(rng, st, s2, Ck, work.Lb[k], work.LA, work.cA, a, bk, True)
        for h in range(npt[k], npt[k + 1]):
            for j in range(D):
                b[h, j] = 0.0
            for i in range(dk):
                b[h, c0 + i] = bk[h - npt[k], i]
    # the residual sum of squares at the new (a, b): every term but the cells' cross terms
    # between factors is a sum over groups; those with the last factor are b'(X'Wy - adjusted)
    rss = stats.scal[YTY]
    for q in range(p):
        rss -= 2.0 * a[q] * stats.Fty[q]
        for r in range(p):
            rss += a[q] * stats.FtF[q, r] * a[r]
    for k in range(K):
        st = work.blocks[k]
        c0 = lp[k]
        dk = lp[k + 1] - c0
        Xty0 = work.Xty0[k]
        for g in range(npt[k + 1] - npt[k]):
            h = npt[k] + g
            for i in range(dk):
                bi = b[h, c0 + i]
                t = -2.0 * Xty0[g, i]
                for q in range(p):
                    t += 2.0 * st.XtF[g, i, q] * a[q]
                for j in range(dk):
                    t += st.XtX[g, i, j] * b[h, c0 + j]
                if k == K - 1:
                    t += 2.0 * (Xty0[g, i] - st.Xty[g, i])
                rss += bi * t
    rss += 2.0 * pairs
    return max(rss, 0.0)
