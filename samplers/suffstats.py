"""One pass over the rows: per-group cross-products (docs/design.md, "The Gaussian passes").

This is the only step whose cost grows with the number of observations. The statistics
are additive over any partition of the rows, so partial results from chunks, files or
cluster workers are combined with :func:`merge_suffstats`.
"""

import numpy as np
from numba import njit

from samplers.types import N_OBS, NO_ROW_PRODUCTS, SUM_LOG_W, YTY, RowProducts, SuffStats

# Largest n_groups * n_fixed**2 for which the per-group F_j' W_j F_j are kept (160 MB); above
# it the per-group log-likelihood is computed from the rows (docs/design.md, "Per-group
# log-likelihood").
GROUP_FIXED_LIMIT = 20_000_000
# Largest number of values of the rows' cross-products kept for reweighted statistics (128 MB);
# above it each sweep forms the statistics from the rows (docs/design.md, "Statistics of
# reweighted rows").
ROW_PRODUCTS_LIMIT = 16_000_000


def keeps_group_fixed(n_groups, n_fixed):
    """True when the statistics of ``n_groups`` groups keep each group's ``F_j' W_j F_j``."""
    return n_groups * n_fixed * n_fixed <= GROUP_FIXED_LIMIT


@njit(cache=True, nogil=True)
def _accumulate(y, F, X, g, w, shift, scale, n, XtX, XtF, Xty, yty_g, FtF, Fty, scal, FtF_g, Fty_g, logw_g,
                log_weights=True):
    n_obs = y.shape[0]
    p = F.shape[1]
    d = X.shape[1]
    per_group = FtF_g.shape[0] > 0
    f = np.empty(p)
    x = np.empty(d)
    for i in range(n_obs):
        j = g[i]
        wi = w[i]
        # the row in the statistics' basis: each column shifted, then scaled
        yi = (y[i] - shift[0]) / scale[0]
        for q in range(p):
            f[q] = (F[i, q] - shift[1 + q]) / scale[1 + q]
        for r in range(d):
            x[r] = (X[i, r] - shift[1 + p + r]) / scale[1 + p + r]
        n[j] += 1.0
        yty_g[j] += wi * yi * yi
        scal[YTY] += wi * yi * yi
        if log_weights:
            log_wi = np.log(wi)
            scal[SUM_LOG_W] += log_wi
            logw_g[j] += log_wi
        for r in range(d):
            xr = wi * x[r]
            Xty[j, r] += xr * yi
            for s in range(d):
                XtX[j, r, s] += xr * x[s]
            for q in range(p):
                XtF[j, r, q] += xr * f[q]
        for q in range(p):
            fq = wi * f[q]
            Fty[q] += fq * yi
            Fty_g[j, q] += fq * yi
            for s in range(q + 1):
                FtF[q, s] += fq * f[s]
            if per_group:
                for s in range(q + 1):
                    FtF_g[j, q, s] += fq * f[s]
    scal[N_OBS] += n_obs
    for q in range(p):
        for s in range(q):
            FtF[s, q] = FtF[q, s]
            for j in range(FtF_g.shape[0]):
                FtF_g[j, s, q] = FtF_g[j, q, s]


def compute_suffstats(y, F, X, group_idx, n_groups, weights=None, shift=None, scale=None):
    """Per-group sufficient statistics of a two-level model.

    Parameters
    ----------
    y : ndarray of shape (n_obs,)
        Response.
    F : ndarray of shape (n_obs, n_fixed)
        Fixed design (level-1 and level-2 predictors, cross-level interactions).
    X : ndarray of shape (n_obs, n_coef)
        Random design: the per-row values multiplying the group coefficients.
    group_idx : ndarray of int64, shape (n_obs,)
        Group code of each row, ``0 <= group_idx < n_groups``.
    n_groups : int
        Number of groups.
    weights : ndarray of shape (n_obs,), optional
        Observation weights ``w`` (the residual variance of row ``i`` is ``s2 / w_i``);
        inverse known variances when the level-1 variances are known. Default 1.
    shift, scale : ndarray of shape (1 + n_fixed + n_coef,), optional
        The statistics are those of the columns of ``[y, F, X]`` each shifted by ``shift``
        and divided by ``scale`` (default 0 and 1), transformed row by row as they are
        read, so that a column whose mean is large against its spread loses no precision
        to cancellation. A shift is a linear map of the design only for a column beside a
        column of ones (the intercept), which the caller ensures.

    Returns
    -------
    SuffStats
    """
    n_obs = y.shape[0]
    p = F.shape[1]
    d = X.shape[1]
    if weights is None:
        weights = np.ones(n_obs)
    stats = SuffStats(
        n=np.zeros(n_groups),
        XtX=np.zeros((n_groups, d, d)),
        XtF=np.zeros((n_groups, d, p)),
        Xty=np.zeros((n_groups, d)),
        yty_g=np.zeros(n_groups),
        FtF=np.zeros((p, p)),
        Fty=np.zeros(p),
        scal=np.zeros(3),
        FtF_g=np.zeros((n_groups if keeps_group_fixed(n_groups, p) else 0, p, p)),
        Fty_g=np.zeros((n_groups, p)),
        logw_g=np.zeros(n_groups),
    )
    width = 1 + p + d
    _accumulate(
        np.ascontiguousarray(y, dtype=np.float64),
        np.ascontiguousarray(F, dtype=np.float64),
        np.ascontiguousarray(X, dtype=np.float64),
        np.ascontiguousarray(group_idx, dtype=np.int64),
        np.ascontiguousarray(weights, dtype=np.float64),
        np.zeros(width) if shift is None else np.ascontiguousarray(shift, dtype=np.float64),
        np.ones(width) if scale is None else np.ascontiguousarray(scale, dtype=np.float64),
        *stats,
    )
    return stats


@njit(cache=True, nogil=True)
def recompute(stats, y, F, X, group_idx, weights, log_weights=True):
    """Overwrite ``stats`` in place with the statistics of new rows ``y`` and weights ``w``.

    For a sampler that changes the working response and the weights every sweep (a data
    augmentation for a non-Gaussian level 1): the rows are in the statistics' basis already
    (no shift, no scale), ``stats`` keeps its arrays, and the Gaussian passes of
    :mod:`samplers.gaussian` are then called on it as on any other statistics. Without
    ``log_weights`` the sums of ``log w`` are left at zero (a constant of the likelihood that
    a sampler's moves within one sweep do not need), saving a logarithm per row.
    """
    for field in (stats.n, stats.yty_g, stats.Fty, stats.scal, stats.logw_g):
        field[:] = 0.0
    for field3 in (stats.XtX, stats.XtF, stats.FtF_g):
        field3[:] = 0.0
    stats.Xty[:] = 0.0
    stats.FtF[:] = 0.0
    stats.Fty_g[:] = 0.0
    width = 1 + F.shape[1] + X.shape[1]
    _accumulate(y, F, X, group_idx, weights, np.zeros(width), np.ones(width), stats.n, stats.XtX, stats.XtF,
                stats.Xty, stats.yty_g, stats.FtF, stats.Fty, stats.scal, stats.FtF_g, stats.Fty_g, stats.logw_g,
                log_weights)


def row_products_size(n_obs, n_columns, fixed_response, limit=ROW_PRODUCTS_LIMIT):
    """The values :func:`row_products` keeps for ``n_obs`` rows of ``n_columns`` design columns (0 above ``limit``).

    The products (with the response when ``fixed_response``), the columns themselves when
    the response changes, and the rows' order.
    """
    m = n_columns + int(fixed_response)
    values = n_obs * (m * (m + 1) // 2 + (0 if fixed_response else m))
    return 0 if values > limit else values + n_obs


def row_products(F, X, group_idx, n_groups, y=None, limit=ROW_PRODUCTS_LIMIT):
    """The rows' cross-products in group order (:class:`~samplers.types.RowProducts`), for reweighted statistics.

    ``y``: the response when it stays the same every sweep (it then joins the products);
    ``None`` for one that changes (a working response). Returns
    :data:`~samplers.types.NO_ROW_PRODUCTS` when the products would hold more than ``limit`` values.
    """
    n_obs = F.shape[0]
    if not row_products_size(n_obs, X.shape[1] + F.shape[1], y is not None, limit):
        return NO_ROW_PRODUCTS
    cols = [X, F] if y is None else [X, F, np.asarray(y, dtype=np.float64)[:, None]]
    V = np.ascontiguousarray(np.concatenate(cols, axis=1), dtype=np.float64)
    m = V.shape[1]
    group_idx = np.asarray(group_idx, dtype=np.int64)
    order = np.argsort(group_idx, kind="stable").astype(np.int64)
    V = V[order]
    upper, lower = np.triu_indices(m)
    P = np.ascontiguousarray(V[:, upper] * V[:, lower])
    starts = np.searchsorted(group_idx[order], np.arange(n_groups + 1)).astype(np.int64)
    return RowProducts(P, V if y is None else np.zeros((0, 0)), order, starts)


@njit(cache=True, nogil=True)
def recompute_products(stats, prod, w, z):
    """:func:`recompute` from the rows' cross-products ``prod``: weights ``w``, and the response ``z`` if it changes.

    Each group's statistics are the weighted sum of its rows' products, contiguous in
    ``prod.P`` (one multiply-add per product and row); with ``prod.V`` non-empty the response
    is ``z`` and its terms are formed from ``(x_i, f_i)``. The sums of ``log w`` are left at
    zero, as :func:`recompute` without ``log_weights`` leaves them.
    """
    P, V, order, starts = prod.P, prod.V, prod.order, prod.starts
    d, p = stats.XtX.shape[1], stats.Fty.shape[0]
    fixed = V.shape[1] == 0  # the response is the last column of the products
    m = d + p + (1 if fixed else 0)
    n_k = P.shape[1]
    per_group = stats.FtF_g.shape[0] > 0
    acc = np.empty(n_k)
    accz = np.empty(d + p)
    stats.FtF[:, :] = 0.0
    stats.Fty[:] = 0.0
    stats.logw_g[:] = 0.0
    yty = 0.0
    for j in range(starts.shape[0] - 1):
        acc[:] = 0.0
        accz[:] = 0.0
        zz = 0.0
        for i in range(starts[j], starts[j + 1]):
            o = order[i]
            wi = w[o]
            for k in range(n_k):
                acc[k] += wi * P[i, k]
            if not fixed:
                wz = wi * z[o]
                for c in range(d + p):
                    accz[c] += wz * V[i, c]
                zz += wz * z[o]
        stats.n[j] = starts[j + 1] - starts[j]
        k = 0
        for a in range(m):  # the upper triangle, by rows, into the statistics
            for b in range(a, m):
                v = acc[k]
                k += 1
                if b < d:
                    stats.XtX[j, a, b] = v
                    stats.XtX[j, b, a] = v
                elif a < d and b < d + p:
                    stats.XtF[j, a, b - d] = v
                elif a < d:
                    stats.Xty[j, a] = v
                elif b < d + p:
                    stats.FtF[a - d, b - d] += v
                    if a != b:
                        stats.FtF[b - d, a - d] += v
                    if per_group:
                        stats.FtF_g[j, a - d, b - d] = v
                        stats.FtF_g[j, b - d, a - d] = v
                elif a < d + p:
                    stats.Fty_g[j, a - d] = v
                    stats.Fty[a - d] += v
                else:
                    stats.yty_g[j] = v
                    yty += v
        if not fixed:
            for c in range(d):
                stats.Xty[j, c] = accz[c]
            for q in range(p):
                stats.Fty_g[j, q] = accz[d + q]
                stats.Fty[q] += accz[d + q]
            stats.yty_g[j] = zz
            yty += zz
    stats.scal[YTY] = yty
    stats.scal[N_OBS] = order.shape[0]
    stats.scal[SUM_LOG_W] = 0.0


@njit(cache=True, nogil=True)
def reweight(stats, prod, y, F, X, group_idx, w):
    """The statistics at new row weights ``w`` (and response ``y``): from ``prod`` when kept, else from the rows."""
    if prod.P.shape[0] > 0:
        recompute_products(stats, prod, w, y)
    else:
        recompute(stats, y, F, X, group_idx, w, False)


def merge_suffstats(first, second):
    """Add two sets of statistics computed on disjoint rows of the same model."""
    return SuffStats(*(np.add(u, v) for u, v in zip(first, second, strict=True)))


@njit(cache=True, nogil=True, inline="always")
def residual_stats(stats, a, r_out):
    """Statistics of the residuals ``y - F a`` needed by :func:`samplers.gaussian.integrate_given_a`.

    Writes ``r_j = X_j'W_j(y_j - F_j a)`` into ``r_out`` (shape (n_groups, n_coef)) and
    returns ``(y - F a)'W(y - F a)``.
    """
    p = a.shape[0]
    n_groups, d = r_out.shape
    for j in range(n_groups):
        for k in range(d):
            t = stats.Xty[j, k]
            for q in range(p):
                t -= stats.XtF[j, k, q] * a[q]
            r_out[j, k] = t
    rtr = stats.scal[YTY]
    for q in range(p):
        rtr -= 2.0 * a[q] * stats.Fty[q]
        for s in range(p):
            rtr += a[q] * stats.FtF[q, s] * a[s]
    return max(rtr, 0.0)
