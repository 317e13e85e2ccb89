"""Log-likelihood of each observation (or each group) at each draw.

This is an ``O(n_obs)`` pass per draw, done once after sampling, never inside a sweep.

With crossed factors the groups of the rows and of the statistics are the cells, and ``b``
has one row per group of every factor (its own factor's columns): each cell's coefficient
vector is gathered on the fly, column ``k`` from the cell's group of factor
``col_factor[k]`` (``cell_node``), so that no array of every cell at every draw is made.
"""

import numpy as np
from numba import njit

LOG_2PI = np.log(2.0 * np.pi)


@njit(cache=True, nogil=True, inline="always")
def _row_of_b(j, k, cell_node, col_factor):
    """The row of ``b`` that holds column ``k`` of group (or cell) ``j``."""
    return j if cell_node.shape[0] == 0 else cell_node[j, col_factor[k]]


@njit(cache=True, nogil=True)
def loglik_draws(y, F, X, group_idx, log_w, w, s2, a, b, out_idx, out, cell_node, col_factor):
    """Add ``log N(y_i | F_i a + X_i b_j, s2 / w_i)`` of every row into ``out[s, out_idx[i]]``.

    Parameters
    ----------
    y : ndarray of shape (n_obs,)
    F : ndarray of shape (n_obs, n_fixed)
    X : ndarray of shape (n_obs, n_coef)
    group_idx : ndarray of int64, shape (n_obs,)
    log_w, w : ndarray of shape (n_obs,)
        Observation weights and their logarithms.
    s2 : ndarray of shape (n_draws,)
    a : ndarray of shape (n_draws, n_fixed)
    b : ndarray of shape (n_draws, n_groups, n_coef)
    out_idx : ndarray of int64, shape (n_obs,)
        Column of ``out`` receiving each row: the row itself (pointwise) or its group.
    out : ndarray of shape (n_draws, n_out)
        Accumulated in place (start from zeros).
    cell_node : ndarray of int64, shape (n_cells, n_factors)
        Crossed factors: each cell's group of every factor (``b`` one row per group); empty
        (0 rows) otherwise (``b`` one row per group of ``group_idx``).
    col_factor : ndarray of int64, shape (n_coef,)
        The factor of each coefficient (read with ``cell_node`` only).
    """
    n_obs = y.shape[0]
    p = F.shape[1]
    d = X.shape[1]
    for s in range(s2.shape[0]):
        log_s2 = np.log(s2[s])
        inv_s2 = 1.0 / s2[s]
        for i in range(n_obs):
            j = group_idx[i]
            mu = 0.0
            for q in range(p):
                mu += F[i, q] * a[s, q]
            for k in range(d):
                mu += X[i, k] * b[s, _row_of_b(j, k, cell_node, col_factor), k]
            r = y[i] - mu
            out[s, out_idx[i]] += -0.5 * (LOG_2PI + log_s2 - log_w[i] + w[i] * r * r * inv_s2)


@njit(cache=True, nogil=True)
def group_loglik_stats(n, yty_g, Fty_g, FtF_g, Xty, XtF, XtX, logw_g, log_w_shift, s2, log_s2_user, a, b, b_map,
                       out, out_col, cell_node, col_factor):
    """Each group's log-likelihood at each draw from per-group statistics, never the rows.

    The residual sum of squares of group ``j`` at ``(a, b_j)`` is the quadratic form

        ``RSS_j = y'Wy - 2 a'F'Wy - 2 b_j'X'Wy + a'F'WF a + 2 b_j'X'WF a + b_j'X'WX b_j``

    of its statistics (docs/design.md, "Per-group log-likelihood"), and

        ``out[s, out_col[j]] += -0.5 (n_j log(2 pi) + n_j log s2_user[s] - sum_j log w_user + RSS_j / s2[s])``.

    Parameters
    ----------
    n, yty_g, Fty_g, FtF_g, Xty, XtF, XtX, logw_g
        The :class:`~samplers.types.SuffStats` fields, in the statistics' basis.
    log_w_shift : float
        ``log w_user - log w`` for every row (the weights' change of units).
    s2 : ndarray of shape (n_draws,)
        Level-1 variance in the statistics' basis.
    log_s2_user : ndarray of shape (n_draws,)
        Its logarithm in the user's units.
    a : ndarray of shape (n_draws, n_fixed)
    b : ndarray of shape (n_draws, n_groups, n_coef)
        Fixed effects in the statistics' basis, and each group's coefficients in any
        coordinates ``b_user`` with ``b = b_map b_user`` in the statistics' basis (mapped here,
        group by group, rather than copied in advance).
    b_map : ndarray of shape (n_coef, n_coef)
    out : ndarray of shape (n_draws, n_out)
        Accumulated in place (start from zeros).
    out_col : ndarray of int64, shape (n_groups,)
        The column of ``out`` each group adds to (a cell's group of the largest factor).
    cell_node, col_factor
        As in :func:`loglik_draws`: crossed factors' cells gather ``b`` from each factor's rows.
    """
    n_groups = n.shape[0]
    p = a.shape[1]
    d = b.shape[2]
    bj = np.empty(d)
    for s in range(s2.shape[0]):
        inv_s2 = 1.0 / s2[s]
        for j in range(n_groups):
            for k in range(d):
                acc = 0.0
                for m in range(d):
                    acc += b_map[k, m] * b[s, _row_of_b(j, m, cell_node, col_factor), m]
                bj[k] = acc
            rss = yty_g[j]
            for q in range(p):
                acc = 0.0
                for r in range(p):
                    acc += FtF_g[j, q, r] * a[s, r]
                rss += a[s, q] * (acc - 2.0 * Fty_g[j, q])
            for k in range(d):
                acc = -2.0 * Xty[j, k]
                for q in range(p):
                    acc += 2.0 * XtF[j, k, q] * a[s, q]
                for m in range(d):
                    acc += XtX[j, k, m] * bj[m]
                rss += bj[k] * acc
            if rss < 0.0:  # rounding, when the fit is all but exact
                rss = 0.0
            nj = n[j]
            log_norm = nj * LOG_2PI + nj * log_s2_user[s] - (logw_g[j] + nj * log_w_shift)
            out[s, out_col[j]] += -0.5 * (log_norm + rss * inv_s2)
