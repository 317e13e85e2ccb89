"""Log-likelihood of each observation (or each group) at each draw.

This is an ``O(n_obs)`` pass per draw, done once after sampling, never inside a sweep.
"""

import numpy as np
from numba import njit

LOG_2PI = np.log(2.0 * np.pi)


@njit(cache=True, nogil=True)
def loglik_draws(y, F, X, group_idx, log_w, w, s2, a, b, out_idx, out):
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
                mu += X[i, k] * b[s, j, k]
            r = y[i] - mu
            out[s, out_idx[i]] += -0.5 * (LOG_2PI + log_s2 - log_w[i] + w[i] * r * r * inv_s2)
