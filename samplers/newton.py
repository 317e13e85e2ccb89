"""The Newton proposal: a binomial or Poisson level 1 without data augmentation, for groups with many rows.

A model with one grouping factor, ``eta_i = offset_i + F_i a + X_i b_g(i)`` and
``b_g ~ N(0, T)``, moves in three exact steps per sweep (docs/design.md, "The Newton
proposal"), after ``T | b`` by its conditional:

1. **each group's coefficients** ``b_g | a, T``: a Metropolis-Hastings move whose proposal
   is the Gaussian working model of iteratively reweighted least squares at the current
   ``b_g`` (one Newton step of the log posterior, with its curvature as precision),
   accepted group by group. Given ``a`` the groups are independent, so each group's ratio
   reads only its own rows, and the acceptance does not fall as the groups grow in number;
2. **the fixed effects** ``a | b``: the same move for ``a``, over all the rows;
3. **the shared directions**: a fixed column that is also a group column (the intercept of
   ``(1 | g)``, a slope of ``(x | g)``) lets ``a_q + b_gk`` stay put while ``a_q`` moves;
   the shift ``a_q + s``, ``b_gk - s`` for every group leaves the likelihood unchanged and is
   drawn from its Gaussian conditional (the prior of ``a`` and of every ``b_g``), which
   costs nothing per row. Without it ``a | b`` would barely move when groups are large
   (``a_q + b_gk`` is pinned by the data).

The rows are kept in group order, each row's predictor, working weight, working residual
and working values in two buffers: a proposal writes into the buffer its group does not
use, and an accepted one flips the group's buffer (``cur``), so nothing is copied. A
Bernoulli row costs one exponential per step, and one logarithm per 32 rows (``_row``).
"""

import math

import numpy as np
from numba import njit

from samplers.glm import BINOMIAL_LOGIT, POISSON_LOG, working
from samplers.linalg import chol_inplace, gaussian_from_precision, solve_lower, solve_upper

_TINY_W = 1e-300  # the smallest working weight (as samplers.glm.working)
_SQRT2 = math.sqrt(2.0)

# slots of NewtonRows.cnt: moves made and accepted after warm-up
N_GROUP_PROP, N_GROUP_ACC, N_FIXED_PROP, N_FIXED_ACC = 0, 1, 2, 3


@njit(cache=True, nogil=True, inline="always")
def _row(family, y, n, const, e):
    """``(part, factor, w, r)``: a row's working weight and residual at ``e``, ``log p(y | e) = part - log(factor)``.

    A Bernoulli row (logit link, one trial) returns ``factor = 1 + exp(-|e|)``, so that a pass
    multiplies the factors of many rows and takes one logarithm for them all; any other row
    returns its whole log-likelihood in ``part`` and ``factor = 1``.
    """
    if family == BINOMIAL_LOGIT:  # softplus(+-e) share log(1 + exp(-|e|)); p = 1 / (1 + exp(-e))
        t = math.exp(-abs(e))
        part = const - y * max(-e, 0.0) - (n - y) * max(e, 0.0)
        inv = 1.0 / (1.0 + t)
        pr = inv if e >= 0.0 else t * inv
        w = max(n * t * inv * inv, _TINY_W)
        if n == 1.0:
            return part, 1.0 + t, w, (y - pr) / w
        return part - n * math.log1p(t), 1.0, w, (y - n * pr) / w
    w, r = working(family, y, n, e)
    if family == POISSON_LOG:
        return const + y * e - math.exp(e), 1.0, w, r
    p = 0.5 * math.erfc(-e / _SQRT2)
    q = 0.5 * math.erfc(e / _SQRT2)
    return const + y * math.log(max(p, 1e-300)) + (n - y) * math.log(max(q, 1e-300)), 1.0, w, r


_BATCH = 32  # factors in (1, 2] multiplied before one logarithm: at most 2^32


@njit(cache=True, nogil=True)
def row_loglik(family, y, n, const, e):
    """``log p(y | e)`` of one row."""
    part, factor, _, _ = _row(family, y, n, const, e)
    return part - math.log(factor)


@njit(cache=True, nogil=True)
def _factor(P, rhs):
    """``(ok, mean, log|L|)`` of ``N(P^{-1} rhs, P^{-1})``; ``P`` becomes its lower Cholesky factor ``L``."""
    if not chol_inplace(P):
        return False, rhs, 0.0
    mean = rhs.copy()
    solve_lower(P, mean)
    solve_upper(P, mean)
    logdet = 0.0
    for i in range(rhs.shape[0]):
        logdet += math.log(P[i, i])
    return True, mean, logdet


@njit(cache=True, nogil=True)
def _draw(P, rhs, rng, x_new, z):
    """Draw ``x_new ~ N(P^{-1} rhs, P^{-1})``; ``P`` becomes its Cholesky factor. Returns ``(ok, log q)``.

    ``log q`` is the proposal's log density at the draw without ``-k/2 log(2 pi)``
    (which cancels from every ratio): ``sum log L_ii - z'z / 2``.
    """
    ok, mean, logdet = _factor(P, rhs)
    if not ok:
        return False, 0.0
    qz = 0.0
    for i in range(rhs.shape[0]):
        z[i] = rng.standard_normal()
        qz += z[i] * z[i]
    gaussian_from_precision(P, mean, z, x_new)
    return True, logdet - 0.5 * qz


@njit(cache=True, nogil=True)
def _density(P, rhs, x):
    """``log N(x; P^{-1} rhs, P^{-1})`` without ``-k/2 log(2 pi)``; ``P`` becomes its factor. ``(ok, value)``."""
    ok, mean, logdet = _factor(P, rhs)
    if not ok:
        return False, 0.0
    k = rhs.shape[0]
    quad = 0.0
    for i in range(k):  # |L'(x - mean)|^2
        t = 0.0
        for m in range(i, k):
            t += P[m, i] * (x[m] - mean[m])
        quad += t * t
    return True, logdet - 0.5 * quad


@njit(cache=True, nogil=True, inline="always")
def _add_row(A, h, X, i, w, r):
    """``A += w x x'`` (lower triangle) and ``h += w r x`` for row ``i`` of ``X``."""
    k = A.shape[0]
    for u in range(k):
        xu = w * X[i, u]
        h[u] += xu * r
        for v in range(u + 1):
            A[u, v] += xu * X[i, v]


@njit(cache=True, nogil=True, inline="always")
def _mirror(A):
    for u in range(A.shape[0]):
        for v in range(u):
            A[v, u] = A[u, v]


@njit(cache=True, nogil=True)
def start(aug, nw, a, b):
    """The rows' predictor, log-likelihood and working values at ``(a, b)`` in buffer 0, and every group's sums."""
    F, X = aug.F, aug.X
    p, d = F.shape[1], X.shape[1]
    nw.cur[:] = 0
    for g in range(nw.starts.shape[0] - 1):
        nw.A[g] = 0.0
        nw.h[g] = 0.0
        nw.FF[g] = 0.0
        nw.Fr[g] = 0.0
        total = 0.0
        for i in range(nw.starts[g], nw.starts[g + 1]):
            e = aug.offset[i]
            for q in range(p):
                e += F[i, q] * a[q]
            for k in range(d):
                e += X[i, k] * b[g, k]
            part, factor, w, r = _row(aug.family, aug.y[i], aug.n[i], aug.const[i], e)
            nw.eta[0, i] = e
            nw.w[0, i] = w
            nw.r[0, i] = r
            total += part - math.log(factor)
            _add_row(nw.A[g], nw.h[g], X, i, w, r)
            _add_row(nw.FF[g], nw.Fr[g], F, i, w, r)
        nw.L[g] = total


@njit(cache=True, nogil=True)
def _rows(aug, nw, lo, hi, cur, Z, step, A, h, FF, Fr):
    """Rows ``lo:hi`` (one group) moved by ``Z step`` from buffer ``cur``: their working values in the other buffer.

    Sets ``A``, ``h``, ``FF``, ``Fr`` to the rows' ``X'WX``, ``X'Wr``, ``F'WF``, ``F'Wr`` there
    and returns their log-likelihood.
    """
    X, F = aug.X, aug.F
    nxt = 1 - cur
    A[:, :] = 0.0
    h[:] = 0.0
    FF[:, :] = 0.0
    Fr[:] = 0.0
    total = 0.0
    product = 1.0
    n_fac = 0
    m = step.shape[0]
    for i in range(lo, hi):
        e = nw.eta[cur, i]
        for k in range(m):
            e += Z[i, k] * step[k]
        part, factor, w, r = _row(aug.family, aug.y[i], aug.n[i], aug.const[i], e)
        nw.eta[nxt, i] = e
        nw.w[nxt, i] = w
        nw.r[nxt, i] = r
        total += part
        product *= factor
        n_fac += 1
        if n_fac == _BATCH:
            total -= math.log(product)
            product = 1.0
            n_fac = 0
        _add_row(A, h, X, i, w, r)
        _add_row(FF, Fr, F, i, w, r)
    return total - math.log(product)


@njit(cache=True, nogil=True)
def group_moves(rng, aug, nw, a, b, C, Ti, counting, unchecked=False):
    """Step 1: each group's ``b_g | a, T`` by its Newton proposal, accepted group by group.

    ``C`` is the lower Cholesky factor of ``T`` and ``Ti`` its inverse ``T^{-1}``.

    ``unchecked``: every proposal accepted, the ratio ignored (a wrong step, for the test
    that shows SBC rejects it).
    """
    X, F = aug.X, aug.F
    p, d = F.shape[1], X.shape[1]
    P = np.empty((d, d))
    rhs = np.empty(d)
    b_new = np.empty(d)
    z = np.empty(d)
    A2 = np.empty((d, d))
    h2 = np.empty(d)
    FF2 = np.empty((p, p))
    Fr2 = np.empty(p)
    step = np.empty(d)
    for g in range(nw.starts.shape[0] - 1):
        lo, hi = nw.starts[g], nw.starts[g + 1]
        if hi == lo:  # no rows: the prior, exactly
            for u in range(d):
                z[u] = rng.standard_normal()
            for u in range(d):
                t = 0.0
                for m in range(u + 1):
                    t += C[u, m] * z[m]
                b[g, u] = t
            continue
        # forward: the working model at b_g, pseudo-responses X b_g + r
        Ag = nw.A[g]
        for u in range(d):
            t = nw.h[g, u]
            for v in range(d):
                auv = Ag[u, v] if u >= v else Ag[v, u]
                P[u, v] = Ti[u, v] + auv
                t += auv * b[g, v]
            rhs[u] = t
        ok, log_fwd = _draw(P, rhs, rng, b_new, z)
        if not ok:
            continue
        cur = nw.cur[g]
        nxt = 1 - cur
        A2[:, :] = 0.0
        h2[:] = 0.0
        FF2[:, :] = 0.0
        Fr2[:] = 0.0
        for k in range(d):
            step[k] = b_new[k] - b[g, k]
        total = _rows(aug, nw, lo, hi, cur, X, step, A2, h2, FF2, Fr2)
        # reverse: the working model at the proposal, evaluated at the current b_g
        for u in range(d):
            t = h2[u]
            for v in range(d):
                auv = A2[u, v] if u >= v else A2[v, u]
                P[u, v] = Ti[u, v] + auv
                t += auv * b_new[v]
            rhs[u] = t
        ok, log_rev = _density(P, rhs, b[g])
        if not ok:
            continue
        prior = 0.0
        for u in range(d):
            for v in range(d):
                prior += Ti[u, v] * (b[g, u] * b[g, v] - b_new[u] * b_new[v])
        log_r = total - nw.L[g] + 0.5 * prior + log_rev - log_fwd
        accept = unchecked or (np.isfinite(log_r) and math.log(rng.random()) < log_r)
        if counting:
            nw.cnt[N_GROUP_PROP] += 1.0
            if accept:
                nw.cnt[N_GROUP_ACC] += 1.0
        if accept:
            nw.cur[g] = nxt
            nw.L[g] = total
            nw.A[g, :, :] = A2
            nw.h[g, :] = h2
            nw.FF[g, :, :] = FF2
            nw.Fr[g, :] = Fr2
            b[g, :] = b_new


@njit(cache=True, nogil=True)
def fixed_move(rng, aug, nw, fixed, a, counting, unchecked=False):
    """Step 2: ``a | b`` by its Newton proposal over all the rows (``fixed`` the prior, information form)."""
    F = aug.F
    p = F.shape[1]
    if p == 0:
        return
    n_groups = nw.starts.shape[0] - 1
    P = fixed.prec.copy()
    rhs = fixed.lin.copy()
    for g in range(n_groups):
        for u in range(p):
            t = nw.Fr[g, u]
            for v in range(p):
                fuv = nw.FF[g, u, v] if u >= v else nw.FF[g, v, u]
                P[u, v] += fuv
                t += fuv * a[v]
            rhs[u] += t
    a_new = np.empty(p)
    z = np.empty(p)
    ok, log_fwd = _draw(P, rhs, rng, a_new, z)
    if not ok:
        return
    delta = a_new - a
    A2, h2, FF2, Fr2, L2 = nw.A2, nw.h2, nw.FF2, nw.Fr2, nw.L2
    for g in range(n_groups):
        L2[g] = _rows(aug, nw, nw.starts[g], nw.starts[g + 1], nw.cur[g], F, delta, A2[g], h2[g], FF2[g], Fr2[g])
    P = fixed.prec.copy()
    rhs = fixed.lin.copy()
    for g in range(n_groups):
        for u in range(p):
            t = Fr2[g, u]
            for v in range(p):
                fuv = FF2[g, u, v] if u >= v else FF2[g, v, u]
                P[u, v] += fuv
                t += fuv * a_new[v]
            rhs[u] += t
    ok, log_rev = _density(P, rhs, a)
    if not ok:
        return
    log_r = log_rev - log_fwd
    for g in range(n_groups):
        log_r += L2[g] - nw.L[g]
    for u in range(p):  # the prior: -(a' P0 a - 2 h' a) / 2
        log_r += fixed.lin[u] * (a_new[u] - a[u])
        for v in range(p):
            log_r -= 0.5 * fixed.prec[u, v] * (a_new[u] * a_new[v] - a[u] * a[v])
    accept = unchecked or (np.isfinite(log_r) and math.log(rng.random()) < log_r)
    if counting:
        nw.cnt[N_FIXED_PROP] += 1.0
        if accept:
            nw.cnt[N_FIXED_ACC] += 1.0
    if accept:
        for g in range(n_groups):
            nw.cur[g] = 1 - nw.cur[g]
        nw.L[:] = L2
        nw.A[:] = A2
        nw.h[:] = h2
        nw.FF[:] = FF2
        nw.Fr[:] = Fr2
        a[:] = a_new


@njit(cache=True, nogil=True)
def shift_move(rng, nw, fixed, a, b, Ti):
    """Step 3: the shared directions, ``a_q + s`` and ``b_gk - s``, ``s`` drawn from its Gaussian conditional.

    ``nw.shared`` lists the pairs ``(q, k)``, fixed column ``q`` equal to group column ``k``
    in every row. The predictor does not change; the conditional of ``s`` is the prior of
    ``a`` at ``a + E s`` times ``prod_g N(b_g - D s; 0, T)``: precision
    ``E'P0E + G D'T^{-1}D``, linear term ``E'(h0 - P0 a) + D'T^{-1} sum_g b_g``.
    """
    m = nw.shared.shape[0]
    if m == 0:
        return
    n_groups = b.shape[0]
    d = b.shape[1]
    bsum = np.zeros(d)
    for g in range(n_groups):
        for k in range(d):
            bsum[k] += b[g, k]
    P = np.empty((m, m))
    rhs = np.empty(m)
    p = a.shape[0]
    for s in range(m):
        q, k = nw.shared[s, 0], nw.shared[s, 1]
        t = fixed.lin[q]
        for v in range(p):
            t -= fixed.prec[q, v] * a[v]
        for v in range(d):
            t += Ti[k, v] * bsum[v]
        rhs[s] = t
        for s2 in range(m):
            q2, k2 = nw.shared[s2, 0], nw.shared[s2, 1]
            P[s, s2] = fixed.prec[q, q2] + n_groups * Ti[k, k2]
    shift = np.empty(m)
    z = np.empty(m)
    ok, _ = _draw(P, rhs, rng, shift, z)
    if not ok:
        return
    for s in range(m):
        q, k = nw.shared[s, 0], nw.shared[s, 1]
        a[q] += shift[s]
        for g in range(n_groups):
            b[g, k] -= shift[s]


@njit(cache=True, nogil=True)
def loglik(nw):
    """``sum_i log p(y_i | eta_i)`` at the current draw (the groups' sums)."""
    total = 0.0
    for g in range(nw.L.shape[0]):
        total += nw.L[g]
    return total


@njit(cache=True, nogil=True)
def keep_loglik(aug, nw, k):
    """Add the rows' log-likelihoods at the current draw into kept draw ``k`` of ``aug.ll_out``.

    A group whose rows all go to one column adds its sum, kept by the moves; the rows of any
    other group are evaluated.
    """
    if aug.ll_out.shape[1] == 0 or k >= aug.ll_out.shape[0]:
        return
    out = aug.ll_out[k]
    out[:] = 0.0
    for g in range(nw.starts.shape[0] - 1):
        lo, hi = nw.starts[g], nw.starts[g + 1]
        if hi == lo:
            continue
        col = aug.out_idx[lo]
        one = True
        for i in range(lo + 1, hi):
            if aug.out_idx[i] != col:
                one = False
                break
        if one:
            out[col] += nw.L[g]
            continue
        c = nw.cur[g]
        for i in range(lo, hi):
            out[aug.out_idx[i]] += row_loglik(aug.family, aug.y[i], aug.n[i], aug.const[i], nw.eta[c, i])


__all__ = ["fixed_move", "group_moves", "keep_loglik", "loglik", "row_loglik", "shift_move", "start"]
