"""The Newton proposal: a binomial or Poisson level 1 without data augmentation.

A model with nested grouping factors ``k = 0, 1, ...`` (finest first; one factor is the
common case), ``eta_i = offset_i + F_i a + sum_k X_i^(k) b_j(i,k)`` and ``b_j ~ N(0, T_k)``
for the groups of factor ``k``, moves in these exact steps per sweep (docs/design.md, "The
Newton proposal", whose numbering the functions' docstrings follow), after ``T | b`` by its
conditional (step 1):

2. **each factor's group coefficients** ``b_j | a, T, the other factors'``, factor by
   factor: a Metropolis-Hastings move whose proposal is the Gaussian working model of
   iteratively reweighted least squares at the current ``b_j`` (one Newton step of the log
   posterior, with its curvature as precision), accepted group by group. Given the rest the
   groups of one factor are independent, so each group's ratio reads only its own rows, and
   the acceptance does not fall as the groups grow in number (:func:`group_moves`);
3. **the fixed effects** ``a | b``: the same move for ``a``, over all the rows (:func:`fixed_move`);
4. **the shared directions**: a fixed column that is ``c_j`` times a group column in every
   row of group ``j`` (the intercept of ``(1 | g)`` or a slope of ``(x | g)``, ``c_j = 1``; a
   group-level predictor or a cross-level interaction, ``c_j = z_j``) lets ``a_q c_j + b_jc``
   stay put while ``a_q`` moves; the shift ``a_q + s``, ``b_jc - c_j s`` for every group
   leaves the likelihood unchanged and is drawn from its Gaussian conditional (the prior of
   ``a`` and of every ``b_j``), which costs nothing per row (:func:`shift_move`). Without it
   ``a | b`` would barely move when groups are large (``a_q c_j + b_jc`` is pinned by the data);
5. **between levels**: a group's intercept shifts against its subgroups' the same way
   (:func:`nest_shift_move`), and two nested factors with one coefficient each move their
   SDs with the split of each subgroup's total between them, the groups integrated out
   (:func:`split_move`; steps 5 and 6). Neither reads a row.

With one coefficient per group, :func:`scale_move` also moves a factor's SD given the
standardised effects ``b_j / SD`` (``NewtonRows.interweave``), which mixes where ``T | b``
does not: when the groups say little about their coefficients.

The rows are kept in finest-group order, each row's predictor in two buffers: a proposal
writes into the buffer its finest group does not use, and an accepted one flips the finest
group's buffer (``cur``), so nothing is copied. The sums are kept per finest group and
added up for a coarser group. A pass (:func:`_pass`) takes a group's rows in blocks of 64,
in loops the compiler vectorises: a Bernoulli row costs one exponential, and a block one
logarithm. The loops read the tuples' fields into local names first: a field read in a loop
costs an atomic reference count each time.
"""

import math

import numpy as np
from numba import njit

from samplers.fastexp import exp_neg
from samplers.glm import BINOMIAL_LOGIT, POISSON_LOG, working
from samplers.linalg import chol_inplace, gaussian_from_precision, solve_lower, solve_upper
from samplers.theta import decode_theta

_TINY_W = 1e-300  # the smallest working weight (as samplers.glm.working)
_SQRT2 = math.sqrt(2.0)

# slots of NewtonRows.cnt: moves made and accepted after warm-up, and the fixed effects' in warm-up
N_GROUP_PROP, N_GROUP_ACC, N_FIXED_PROP, N_FIXED_ACC, N_SCALE_PROP, N_SCALE_ACC = 0, 1, 2, 3, 4, 5
N_WARM_FIXED_PROP, N_WARM_FIXED_ACC = 6, 7
# the fixed effects' move is made once a sweep when warm-up accepted at least this share of its proposals,
# else twice (at least 80%) or three times: settle()
FIXED_ACCEPTANCE_ONE, FIXED_ACCEPTANCE_TWO = 0.9, 0.8

# the rows' pass: arithmetic that may be reordered (sums) and divisions without a check for zero, so that the
# Bernoulli rows' loop and the sums over a block's rows are vectorised
_FAST = {"contract", "reassoc", "arcp"}


@njit(cache=True, nogil=True, inline="always")
def _row(family, y, n, const, i, e):
    """``(log p(y_i | e), w, s)`` of row ``i`` at ``e``: its log-likelihood, working weight and score.

    ``w`` is the working weight (the Fisher information in ``e``) and ``s = d log p / d e`` the
    score, so that a group's working model needs ``sum w x x'`` and ``sum s x`` only.
    """
    yi, ni, ci = y[i], n[i], const[i]
    if family == BINOMIAL_LOGIT:  # softplus(+-e) share log(1 + exp(-|e|)); p = 1 / (1 + exp(-e))
        t = exp_neg(-abs(e))
        inv = 1.0 / (1.0 + t)
        pr = inv if e >= 0.0 else t * inv
        part = ci - yi * max(-e, 0.0) - (ni - yi) * max(e, 0.0) - ni * math.log1p(t)
        return part, max(ni * t * inv * inv, _TINY_W), yi - ni * pr
    if family == POISSON_LOG:  # w = mu, s = y - mu
        mu = math.exp(e)
        return ci + yi * e - mu, max(mu, _TINY_W), yi - mu
    w, r = working(family, yi, ni, e)
    p = 0.5 * math.erfc(-e / _SQRT2)
    q = 0.5 * math.erfc(e / _SQRT2)
    return ci + yi * math.log(max(p, 1e-300)) + (ni - yi) * math.log(max(q, 1e-300)), w, w * r


# rows per block of the pass; a Bernoulli block's factors 1 + exp(-|e|), each in (1, 2], multiply to at most 2^64
_BLOCK = 64
_SHORT = 16  # fewer rows than this: a block's predictors are moved row by row


@njit(cache=True, nogil=True, inline="always")
def _factor(P, rhs):
    """``(ok, log|L|)`` of ``N(P^{-1} rhs, P^{-1})``; ``P`` becomes its Cholesky factor ``L``, ``rhs`` the mean."""
    if not chol_inplace(P):
        return False, 0.0
    solve_lower(P, rhs)
    solve_upper(P, rhs)
    logdet = 0.0
    for i in range(rhs.shape[0]):
        logdet += math.log(P[i, i])
    return True, logdet


@njit(cache=True, nogil=True, inline="always")
def _draw(P, rhs, rng, x_new, z):
    """Draw ``x_new ~ N(P^{-1} rhs, P^{-1})``; ``P`` becomes its Cholesky factor, ``rhs`` the mean. ``(ok, log q)``.

    ``log q`` is the proposal's log density at the draw without ``-k/2 log(2 pi)``
    (which cancels from every ratio): ``sum log L_ii - z'z / 2``.
    """
    ok, logdet = _factor(P, rhs)
    if not ok:
        return False, 0.0
    qz = 0.0
    for i in range(rhs.shape[0]):
        z[i] = rng.standard_normal()
        qz += z[i] * z[i]
    gaussian_from_precision(P, rhs, z, x_new)
    return True, logdet - 0.5 * qz


@njit(cache=True, nogil=True, inline="always")
def _density(P, rhs, x):
    """``(ok, log N(x; P^{-1} rhs, P^{-1}))`` without ``-k/2 log(2 pi)``; ``P`` becomes its factor, ``rhs`` the mean."""
    ok, logdet = _factor(P, rhs)
    if not ok:
        return False, 0.0
    k = rhs.shape[0]
    quad = 0.0
    for i in range(k):  # |L'(x - mean)|^2
        t = 0.0
        for m in range(i, k):
            t += P[m, i] * (x[m] - rhs[m])
        quad += t * t
    return True, logdet - 0.5 * quad


@njit(cache=True, nogil=True)
def start(nw, offset, a, b):
    """The rows' predictor at ``(a, b)`` (and the rows' ``offset``), and every finest group's log-likelihood and sums.

    A row's group coefficients are those of its finest group and of each group above it
    (``nw.anc``), each factor's in its own columns of ``X``. The predictor is written into
    buffer 1 and a pass without a step takes it to buffer 0, with the sums, so that the
    sums at the start come from the same arithmetic as every proposal's.
    """
    cols, col_of, eta, starts, anc, lp = nw.cols, nw.col_of, nw.eta, nw.starts, nw.anc, nw.level_ptr
    p, d = nw.FF.shape[1], nw.A.shape[1]
    n_fin = starts.shape[0] - 1
    coef = np.empty(d)
    for g in range(n_fin):
        for k in range(lp.shape[0] - 1):
            for c in range(lp[k], lp[k + 1]):
                coef[c] = b[anc[g, k], c]
        for i in range(starts[g], starts[g + 1]):
            e = offset[i]
            for q in range(p):
                e += cols[col_of[q], i] * a[q]
            for k in range(d):
                e += cols[col_of[p + k], i] * coef[k]
            eta[1, i] = e
    nw.cur[:] = 1
    _pass(nw, False, np.zeros((n_fin, 0)), np.ones(n_fin, dtype=np.bool_))
    _take_all(nw.cur, nw.L, nw.A, nw.h, nw.FF, nw.Fr, nw.L2, nw.A2, nw.h2, nw.FF2, nw.Fr2)


@njit(cache=True, nogil=True, inline="always")
def _pair(u, v):
    """The slot of the pair of distinct columns ``(u, v)`` in a group's sums: the lower triangle, row by row."""
    return u * (u + 1) // 2 + v if u >= v else v * (v + 1) // 2 + u


@njit(cache=True, nogil=True, inline="always")
def _bernoulli_block(y, eta, nxt, lo, hi, ws):
    """Log-likelihood of the Bernoulli rows ``lo:hi`` (logit link, one trial) at ``eta[nxt]``.

    Their weights and scores go into ``ws[0]`` and ``ws[1]``.
    :func:`_row`'s arithmetic for one trial, in a loop without calls or branches, which the
    compiler vectorises: the block's factors ``1 + exp(-|e|)`` are multiplied and one
    logarithm is taken of their product.
    """
    part = 0.0
    product = 1.0
    for j in range(lo, hi):
        ej = eta[nxt, j]
        yj = y[j]
        t = exp_neg(-abs(ej))
        inv = 1.0 / (1.0 + t)
        pr = inv if ej >= 0.0 else t * inv
        part += -yj * max(-ej, 0.0) - (1.0 - yj) * max(ej, 0.0)
        product *= 1.0 + t
        ws[0, j - lo] = max(t * inv * inv, _TINY_W)
        ws[1, j - lo] = yj - pr
    return part - math.log(product)


@njit(cache=True, nogil=True, inline="always")
def _any_block(family, y, n, const, eta, nxt, lo, hi, ws):
    """:func:`_bernoulli_block` for rows of any family: :func:`_row` row by row."""
    total = 0.0
    for j in range(lo, hi):
        part, w, s = _row(family, y, n, const, j, eta[nxt, j])
        total += part
        ws[0, j - lo] = w
        ws[1, j - lo] = s
    return total


@njit(cache=True, nogil=True, inline="always")
def _block_sums(cols, lo, hi, ws, acc):
    """Add the rows ``lo:hi``'s ``sum w c_u c_v`` (``u >= v``) and then ``sum s c_u`` for the distinct columns ``c``.

    One loop over the block's rows per sum, which the compiler vectorises.
    """
    q = cols.shape[0]
    n_pairs = q * (q + 1) // 2
    slot = 0
    for u in range(q):
        t = 0.0
        for j in range(lo, hi):
            t += ws[1, j - lo] * cols[u, j]
        acc[n_pairs + u] += t
        for v in range(u + 1):
            t = 0.0
            for j in range(lo, hi):
                t += ws[0, j - lo] * cols[u, j] * cols[v, j]
            acc[slot] += t
            slot += 1


@njit(cache=True, nogil=True, inline="always")
def _unpack(acc, n_pairs, col_of, c0, k, g, A, h):
    """Group ``g``'s ``A[g]`` (lower triangle) and ``h[g]`` from its sums ``acc`` (:func:`_block_sums`).

    ``A`` and ``h`` are over the ``k`` columns whose distinct columns are ``col_of[c0:c0 + k]``;
    ``acc`` holds ``n_pairs`` pairs, then the scores.
    """
    for u in range(k):
        cu = col_of[c0 + u]
        h[g, u] = acc[n_pairs + cu]
        for v in range(u + 1):
            A[g, u, v] = acc[_pair(cu, col_of[c0 + v])]


@njit(cache=True, nogil=True, inline="always")
def _rows_pass(family, bern, y, n, const, cols, col_of, eta, starts, cur_buf, z0, steps, moved, A, h, FF, Fr, L):
    """The body of :func:`_pass`, over the arrays it reads from ``nw`` once.

    A group's rows go in blocks of ``_BLOCK``: the predictors moved (the columns
    ``col_of[z0:z0 + m]`` times the group's steps), then every row's log-likelihood, weight
    and score (:func:`_bernoulli_block` or :func:`_any_block`), then the block's sums over
    the distinct columns (:func:`_block_sums`), from which the group's ``X'WX`` ... ``F's``
    are read at the end (:func:`_unpack`). The loops run over unsigned row numbers: a signed
    index may be negative, and Numba's wrap-around of negative indices keeps the compiler
    from vectorising them.
    """
    q, m, p, d = cols.shape[0], steps.shape[1], FF.shape[1], A.shape[1]
    n_pairs = q * (q + 1) // 2
    acc = np.empty(n_pairs + q)
    ws = np.empty((2, _BLOCK))  # the block's weights and scores
    for g in range(starts.shape[0] - 1):
        if not moved[g]:
            continue
        cur = np.uint64(cur_buf[g])  # unsigned, as the rows: views of the buffers would each count a reference
        nxt = np.uint64(1 - cur_buf[g])
        for t in range(n_pairs + q):
            acc[t] = 0.0
        total = 0.0
        for b0 in range(starts[g], starts[g + 1], _BLOCK):
            lo = np.uint64(b0)
            hi = np.uint64(min(b0 + _BLOCK, starts[g + 1]))
            if hi - lo < _SHORT:  # a few rows: row by row, without the vector loops' set-up
                for j in range(lo, hi):
                    e = eta[cur, j]
                    for k in range(m):
                        e += cols[col_of[z0 + k], j] * steps[g, k]
                    eta[nxt, j] = e
            else:
                for j in range(lo, hi):
                    eta[nxt, j] = eta[cur, j]
                for k in range(m):
                    sk = steps[g, k]
                    if sk != 0.0:
                        u = col_of[z0 + k]
                        for j in range(lo, hi):
                            eta[nxt, j] += cols[u, j] * sk
            if bern:
                total += _bernoulli_block(y, eta, nxt, lo, hi, ws)
            else:
                total += _any_block(family, y, n, const, eta, nxt, lo, hi, ws)
            _block_sums(cols, lo, hi, ws, acc)
        L[g] = total
        _unpack(acc, n_pairs, col_of, 0, p, g, FF, Fr)
        _unpack(acc, n_pairs, col_of, p, d, g, A, h)


@njit(cache=True, nogil=True, fastmath=_FAST, error_model="numpy")
def _pass(nw, fixed, steps, moved):
    """Every group ``g`` with ``moved[g]``: its rows moved by ``steps[g]``, into the buffer it does not use.

    The steps are of the fixed effects (``fixed``: each row moves by ``F_i steps[g]``) or of
    the group coefficients (``X_i steps[g]``). Sets the group's ``A2``, ``h2``, ``FF2``,
    ``Fr2`` to the rows' ``X'WX``, ``X's``, ``F'WF``, ``F's`` there (``W`` the working
    weights, ``s`` the scores, :func:`_row`) and ``L2`` to their log-likelihood. One call
    makes the whole pass, so that the arrays are read from ``nw`` once, not once per group.
    """
    _rows_pass(nw.family, nw.bernoulli, nw.y, nw.n, nw.const, nw.cols, nw.col_of, nw.eta, nw.starts, nw.cur,
               0 if fixed else nw.FF.shape[1], steps, moved, nw.A2, nw.h2, nw.FF2, nw.Fr2, nw.L2)


@njit(cache=True, nogil=True, inline="always")
def _node_sums(A, h, kids, lo, hi, c0, d, Ak, hk):
    """``Ak``, ``hk``: the sums of the finest groups ``kids[lo:hi]`` over columns ``c0:c0 + d`` (lower triangle)."""
    for u in range(d):
        hk[u] = 0.0
        for v in range(u + 1):
            Ak[u, v] = 0.0
    for t in range(lo, hi):
        f = kids[t]
        for u in range(d):
            hk[u] += h[f, c0 + u]
            for v in range(u + 1):
                Ak[u, v] += A[f, c0 + u, c0 + v]


@njit(cache=True, nogil=True)
def group_moves(rng, nw, k, a, b, C, Ti, counting, unchecked=False):
    """Step 2: each group's ``b_j | a, T, the other factors' coefficients`` by its Newton proposal, factor ``k``.

    ``C`` is the lower Cholesky factor of the block-diagonal ``T`` over every factor's
    coefficients and ``Ti`` its inverse ``T^{-1}``; factor ``k``'s are columns
    ``c0 = level_ptr[k]`` to ``level_ptr[k + 1]``. Given the rest the groups of one factor are
    independent, so every group draws its proposal first (from the sums of its finest groups),
    one pass evaluates them all (:func:`_pass`, each finest group moved by its group's step),
    and then each group accepts or rejects its own. With one coefficient per group the
    Gaussian algebra is scalar.

    ``unchecked``: every proposal accepted, the ratio ignored (a wrong step, for the test
    that shows SBC rejects it).
    """
    starts, cur_buf, A, h, FF, Fr, L, cnt = nw.starts, nw.cur, nw.A, nw.h, nw.FF, nw.Fr, nw.L, nw.cnt
    A2, h2, FF2, Fr2, L2 = nw.A2, nw.h2, nw.FF2, nw.Fr2, nw.L2
    kid_ptr, kids = nw.kid_ptr, nw.kids
    c0, c1 = nw.level_ptr[k], nw.level_ptr[k + 1]
    j0, j1 = nw.node_ptr[k], nw.node_ptr[k + 1]
    n_nodes, d, D, p = j1 - j0, c1 - c0, b.shape[1], FF.shape[1]
    n_fin = starts.shape[0] - 1
    steps = np.zeros((n_fin, D))
    moved_fin = np.zeros(n_fin, dtype=np.bool_)
    node_steps = np.zeros((n_nodes, d))
    log_fwd = np.zeros(n_nodes)
    moved = np.zeros(n_nodes, dtype=np.bool_)
    P = np.empty((d, d))
    rhs = np.empty(d)
    b_new = np.empty(d)
    z = np.empty(d)
    Ak = np.empty((d, d))
    hk = np.empty(d)
    # forward: the working model at b_j (pseudo-responses X b_j + r), or the prior for a group without rows
    for jj in range(n_nodes):
        j = j0 + jj
        lo, hi = kid_ptr[j], kid_ptr[j + 1]
        rows = 0
        for t in range(lo, hi):
            rows += starts[kids[t] + 1] - starts[kids[t]]
        if rows == 0:
            for u in range(d):
                z[u] = rng.standard_normal()
            for u in range(d):
                t = 0.0
                for m in range(u + 1):
                    t += C[c0 + u, c0 + m] * z[m]
                b[j, c0 + u] = t
            continue
        _node_sums(A, h, kids, lo, hi, c0, d, Ak, hk)
        if d == 1:
            prec = Ti[c0, c0] + Ak[0, 0]
            if not prec > 0.0:
                continue
            e = rng.standard_normal()
            bj = b[j, c0]
            node_steps[jj, 0] = (hk[0] + Ak[0, 0] * bj) / prec + e / math.sqrt(prec) - bj
            log_fwd[jj] = 0.5 * math.log(prec) - 0.5 * e * e
        else:
            for u in range(d):
                t = hk[u]
                for v in range(d):
                    auv = Ak[u, v] if u >= v else Ak[v, u]
                    P[u, v] = Ti[c0 + u, c0 + v] + auv
                    t += auv * b[j, c0 + v]
                rhs[u] = t
            ok, log_fwd[jj] = _draw(P, rhs, rng, b_new, z)
            if not ok:
                continue
            for u in range(d):
                node_steps[jj, u] = b_new[u] - b[j, c0 + u]
        moved[jj] = True
        for t in range(lo, hi):
            f = kids[t]
            moved_fin[f] = True
            for u in range(d):
                steps[f, c0 + u] = node_steps[jj, u]
    _pass(nw, False, steps, moved_fin)
    # reverse: the working model at each proposal, evaluated at the current b_j; then accept or not
    b_cur = np.empty(d)
    for jj in range(n_nodes):
        if not moved[jj]:
            continue
        j = j0 + jj
        lo, hi = kid_ptr[j], kid_ptr[j + 1]
        _node_sums(A2, h2, kids, lo, hi, c0, d, Ak, hk)
        if d == 1:
            bc = b[j, c0]
            bn = bc + node_steps[jj, 0]
            prec = Ti[c0, c0] + Ak[0, 0]
            if not prec > 0.0:
                continue
            dev = bc - (hk[0] + Ak[0, 0] * bn) / prec
            log_rev = 0.5 * math.log(prec) - 0.5 * prec * dev * dev
            prior = Ti[c0, c0] * (bc * bc - bn * bn)
        else:
            for u in range(d):
                b_cur[u] = b[j, c0 + u]
                b_new[u] = b_cur[u] + node_steps[jj, u]
            for u in range(d):
                t = hk[u]
                for v in range(d):
                    auv = Ak[u, v] if u >= v else Ak[v, u]
                    P[u, v] = Ti[c0 + u, c0 + v] + auv
                    t += auv * b_new[v]
                rhs[u] = t
            ok, log_rev = _density(P, rhs, b_cur)
            if not ok:
                continue
            prior = 0.0
            for u in range(d):
                for v in range(d):
                    prior += Ti[c0 + u, c0 + v] * (b_cur[u] * b_cur[v] - b_new[u] * b_new[v])
        log_r = 0.5 * prior + log_rev - log_fwd[jj]
        for t in range(lo, hi):
            log_r += L2[kids[t]] - L[kids[t]]
        accept = unchecked or (np.isfinite(log_r) and math.log(rng.random()) < log_r)
        if counting:
            cnt[N_GROUP_PROP] += 1.0
            if accept:
                cnt[N_GROUP_ACC] += 1.0
        if not accept:
            continue
        for u in range(d):
            b[j, c0 + u] += node_steps[jj, u]
        for t in range(lo, hi):  # the finest groups' buffers flip and their sums become the proposal's
            f = kids[t]
            cur_buf[f] = 1 - cur_buf[f]
            L[f] = L2[f]
            for u in range(D):
                h[f, u] = h2[f, u]
                for v in range(D):
                    A[f, u, v] = A2[f, u, v]
            for u in range(p):
                Fr[f, u] = Fr2[f, u]
                for v in range(p):
                    FF[f, u, v] = FF2[f, u, v]


@njit(cache=True, nogil=True)
def fixed_move(rng, nw, fixed, a, counting, unchecked=False):
    """Step 3: ``a | b`` by its Newton proposal over all the rows (``fixed`` the prior, information form).

    Its proposals and acceptances are counted after warm-up (``counting``) or in it (for :func:`settle`).
    """
    p = a.shape[0]
    if p == 0:
        return
    FF, Fr = nw.FF, nw.Fr
    n_groups = FF.shape[0]
    P = fixed.prec.copy()
    rhs = fixed.lin.copy()
    for g in range(n_groups):
        for u in range(p):
            t = Fr[g, u]
            for v in range(p):
                fuv = FF[g, u, v] if u >= v else FF[g, v, u]
                P[u, v] += fuv
                t += fuv * a[v]
            rhs[u] += t
    a_new = np.empty(p)
    z = np.empty(p)
    ok, log_fwd = _draw(P, rhs, rng, a_new, z)
    if not ok:
        return
    steps = np.empty((n_groups, p))
    for g in range(n_groups):
        for u in range(p):
            steps[g, u] = a_new[u] - a[u]
    _pass(nw, True, steps, np.ones(n_groups, dtype=np.bool_))
    FF2, Fr2, L, L2 = nw.FF2, nw.Fr2, nw.L, nw.L2
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
        log_r += L2[g] - L[g]
    for u in range(p):  # the prior: -(a' P0 a - 2 h' a) / 2
        log_r += fixed.lin[u] * (a_new[u] - a[u])
        for v in range(p):
            log_r -= 0.5 * fixed.prec[u, v] * (a_new[u] * a_new[v] - a[u] * a[v])
    accept = unchecked or (np.isfinite(log_r) and math.log(rng.random()) < log_r)
    slot = N_FIXED_PROP if counting else N_WARM_FIXED_PROP
    nw.cnt[slot] += 1.0
    if accept:
        nw.cnt[slot + 1] += 1.0
        _take_all(nw.cur, L, nw.A, nw.h, FF, Fr, L2, nw.A2, nw.h2, FF2, Fr2)
        a[:] = a_new


@njit(cache=True, nogil=True)
def _take_all(cur, L, A, h, FF, Fr, L2, A2, h2, FF2, Fr2):
    """Every group's proposal accepted (a move of ``a`` or of the SD): buffers flip, sums become the proposal's.

    The arrays are :class:`~samplers.types.NewtonRows`' own, passed one by one: passing the
    tuple would count a reference for each of its arrays.
    """
    for g in range(cur.shape[0]):
        cur[g] = 1 - cur[g]
        L[g] = L2[g]
        for u in range(h.shape[1]):
            h[g, u] = h2[g, u]
            for v in range(h.shape[1]):
                A[g, u, v] = A2[g, u, v]
        for u in range(Fr.shape[1]):
            Fr[g, u] = Fr2[g, u]
            for v in range(Fr.shape[1]):
                FF[g, u, v] = FF2[g, u, v]


@njit(cache=True, nogil=True)
def shift_move(rng, nw, fixed, a, b, Ti):
    """Step 4: the shared directions, ``a_q + s`` and ``b_jc - c_j s``, ``s`` drawn from its Gaussian conditional.

    ``nw.shared`` lists the pairs ``(q, c)`` and ``nw.shift_coef`` their ``c_j``: fixed column
    ``q`` equals ``c_j`` times column ``c`` of ``X`` in every row of group ``j`` of the factor
    that owns coefficient ``c`` (``c_j = 1`` for a fixed effect that is also a group
    coefficient, the group's value for a group-level predictor or a cross-level interaction;
    0 for a group without rows). The predictor does not change; the conditional of ``s`` is
    the prior of ``a`` at ``a + E s`` times ``prod_j N(b_j - D_j s; 0, T)`` (``D_j`` holds
    ``c_j`` in the pairs' rows ``c``): precision ``E'P0E + sum_j D_j'T^{-1}D_j``, linear term
    ``E'(h0 - P0 a) + sum_j D_j'T^{-1}b_j`` (``T`` is block diagonal by factor, so a group's
    term reads its own factor's coefficients only).
    """
    shared, coef, lp = nw.shared, nw.shift_coef, nw.level_ptr
    m = shared.shape[0]
    if m == 0:
        return
    n_nodes = b.shape[0]
    P = np.empty((m, m))
    rhs = np.empty(m)
    lo = np.empty(m, dtype=np.int64)  # each pair's factor's coefficients: lo[s]:hi[s]
    hi = np.empty(m, dtype=np.int64)
    p = a.shape[0]
    for s in range(m):
        q, c = shared[s, 0], shared[s, 1]
        for k in range(lp.shape[0] - 1):
            if lp[k] <= c < lp[k + 1]:
                lo[s], hi[s] = lp[k], lp[k + 1]
        t = fixed.lin[q]
        for v in range(p):
            t -= fixed.prec[q, v] * a[v]
        rhs[s] = t
        for s2 in range(m):
            P[s, s2] = fixed.prec[q, shared[s2, 0]]
    for j in range(n_nodes):
        for s in range(m):
            cj = coef[j, s]
            if cj == 0.0:
                continue
            c = shared[s, 1]
            t = 0.0
            for v in range(lo[s], hi[s]):
                t += Ti[c, v] * b[j, v]
            rhs[s] += cj * t
            for s2 in range(m):
                P[s, s2] += cj * coef[j, s2] * Ti[c, shared[s2, 1]]
    shift = np.empty(m)
    z = np.empty(m)
    ok, _ = _draw(P, rhs, rng, shift, z)
    if not ok:
        return
    for s in range(m):
        q, c = shared[s, 0], shared[s, 1]
        a[q] += shift[s]
        for j in range(n_nodes):
            b[j, c] -= coef[j, s] * shift[s]


@njit(cache=True, nogil=True)
def nest_shift_move(rng, nw, b, Ti):
    """Step 5: the directions a group shares with the groups in it, ``b_Hv + s_H`` and ``b_jv' - s_H``.

    ``nw.nest_pairs`` lists the pairs ``(u, v)``: coefficient ``u`` of factor ``k`` and ``v``
    of factor ``k + 1`` are the same column of ``X`` (the intercepts of ``(1 | h/g)``). For
    each group ``H`` of factor ``k + 1``, moving its ``v`` coefficients by ``s_H`` and those
    of each group ``j`` in it (``parent[j] = H``) by ``-s_H`` leaves every predictor as it was;
    ``s_H`` is drawn from its Gaussian conditional, ``N(b_H + E s; 0, T_(k+1))`` times
    ``prod_j N(b_j - D s; 0, T_k)``: precision ``E'T^{-1}E + n_H D'T^{-1}D``, linear term
    ``-E'T^{-1}b_H + D'T^{-1} sum_j b_j``. Factors are taken finest first, the pairs of one
    factor with its parent together. Reads no rows.
    """
    pairs, lp, node_ptr, parent = nw.nest_pairs, nw.level_ptr, nw.node_ptr, nw.parent
    if pairs.shape[0] == 0:
        return
    for k in range(lp.shape[0] - 2):
        m = 0
        for s in range(pairs.shape[0]):
            if lp[k] <= pairs[s, 0] < lp[k + 1]:
                m += 1
        if m == 0:
            continue
        us = np.empty(m, dtype=np.int64)
        vs = np.empty(m, dtype=np.int64)
        m = 0
        for s in range(pairs.shape[0]):
            if lp[k] <= pairs[s, 0] < lp[k + 1]:
                us[m], vs[m] = pairs[s, 0], pairs[s, 1]
                m += 1
        H0, H1 = node_ptr[k + 1], node_ptr[k + 2]
        c0, c1, e0, e1 = lp[k], lp[k + 1], lp[k + 1], lp[k + 2]
        bsum = np.zeros((H1 - H0, c1 - c0))
        count = np.zeros(H1 - H0)
        for j in range(node_ptr[k], node_ptr[k + 1]):
            H = parent[j] - H0
            count[H] += 1.0
            for w in range(c0, c1):
                bsum[H, w - c0] += b[j, w]
        shifts = np.zeros((H1 - H0, m))
        P = np.empty((m, m))
        rhs = np.empty(m)
        x = np.empty(m)
        z = np.empty(m)
        for H in range(H1 - H0):
            for s in range(m):
                t = 0.0
                for w in range(e0, e1):
                    t -= Ti[vs[s], w] * b[H0 + H, w]
                for w in range(c0, c1):
                    t += Ti[us[s], w] * bsum[H, w - c0]
                rhs[s] = t
                for s2 in range(m):
                    P[s, s2] = Ti[vs[s], vs[s2]] + count[H] * Ti[us[s], us[s2]]
            ok, _ = _draw(P, rhs, rng, x, z)
            if ok:
                for s in range(m):
                    shifts[H, s] = x[s]
                    b[H0 + H, vs[s]] += x[s]
        for j in range(node_ptr[k], node_ptr[k + 1]):
            H = parent[j] - H0
            for s in range(m):
                b[j, us[s]] -= shifts[H, s]


_SPLIT_STEPS = 60  # the slice's stepping out: at most this many steps of 1 in log SD, split at random between sides


@njit(cache=True, nogil=True)
def _split_log_density(xc, xp, n, S, Q, cols, theta, structure, priors, C):
    """``log p(tau_c, tau_p | u)`` on ``(log tau_c, log tau_p)``, up to a constant: :func:`split_move`.

    Per parent ``H`` with ``n_H`` children whose totals ``u_j`` sum to ``S_H`` with squares
    ``Q_H``: ``u_H ~ N(0, tau_c^2 I + tau_p^2 11')``, whose log density is, with
    ``D = tau_c^2 + n_H tau_p^2``, ``-(n_H - 1) log tau_c - log(D) / 2 - (Q_H - tau_p^2 S_H^2 / D) / (2 tau_c^2)``;
    the SDs' prior is ``decode_theta``'s at ``theta`` with both set (``theta`` and ``C`` are scratch),
    over ``d tau / d eta`` for each, times ``tau_c tau_p`` for the log coordinates. Nothing
    is truncated; where the arithmetic overflows the value is not finite and lies outside
    every slice, as a density of 0 would.
    """
    total = 0.0
    for r in range(2):
        tau = math.exp(xc if r == 0 else xp)
        scale = structure.diag_scale[cols[r]]
        eta = math.asinh(tau / scale)
        theta[structure.sd_idx[cols[r]]] = eta
        total += math.log(tau) - math.log(scale * math.cosh(eta))
    _, lp = decode_theta(theta, structure, priors, C)
    total += lp
    vc = math.exp(2.0 * xc)
    vp = math.exp(2.0 * xp)
    for H in range(n.shape[0]):
        nh = n[H]
        if nh == 0.0:
            continue
        den = vc + nh * vp
        total -= (nh - 1.0) * xc + 0.5 * math.log(den) + 0.5 * (Q[H] - vp * S[H] * S[H] / den) / vc
    return total


@njit(cache=True, nogil=True)
def _split_slice(rng, which, x, n, S, Q, cols, theta, structure, priors, C):
    """One slice-sampling update of ``x[which]``, ``x = (log tau_c, log tau_p)`` (Neal 2003: stepping out, shrinkage).

    The stepping out is Neal's with a limit: at most ``_SPLIT_STEPS`` steps of width 1, split
    at random between the two sides (``J`` to the left, ``_SPLIT_STEPS - 1 - J`` to the right),
    which keeps the update exact whether or not the limit binds.
    """
    x0 = x[which]
    other = x[1 - which]
    xc, xp = (x0, other) if which == 0 else (other, x0)
    level = _split_log_density(xc, xp, n, S, Q, cols, theta, structure, priors, C) - rng.standard_exponential()
    lo = x0 - rng.random()
    hi = lo + 1.0
    left = int(_SPLIT_STEPS * rng.random())
    for _ in range(left):
        xc, xp = (lo, other) if which == 0 else (other, lo)
        if not _split_log_density(xc, xp, n, S, Q, cols, theta, structure, priors, C) > level:
            break
        lo -= 1.0
    for _ in range(_SPLIT_STEPS - 1 - left):
        xc, xp = (hi, other) if which == 0 else (other, hi)
        if not _split_log_density(xc, xp, n, S, Q, cols, theta, structure, priors, C) > level:
            break
        hi += 1.0
    while hi - lo > 1e-12:
        t = lo + (hi - lo) * rng.random()
        xc, xp = (t, other) if which == 0 else (other, t)
        if _split_log_density(xc, xp, n, S, Q, cols, theta, structure, priors, C) > level:
            x[which] = t
            return
        if t < x0:
            lo = t
        else:
            hi = t


@njit(cache=True, nogil=True)
def split_move(rng, nw, theta, structure, priors, b):
    """Step 6: two nested factors' SDs and the split of each group's total between them, given the totals.

    For a pair ``(u, v)`` of ``nw.nest_pairs`` whose factors ``k`` and ``k + 1`` have one
    coefficient each (the intercepts of ``(1 | h/g)``), each group ``j`` of factor ``k`` enters
    the predictor only through its total ``u_j = b_ju + b_Hv`` with its parent ``H``. Given the
    totals, ``b_H`` is Gaussian and integrates out: ``tau_c`` (factor ``k``'s SD) and ``tau_p``
    (factor ``k + 1``'s) move by slice sampling on their logarithms from
    ``p(tau_c, tau_p | u)`` (:func:`_split_log_density`), then each ``b_H`` is drawn from
    ``N(tau_p^2 S_H / (tau_c^2 + n_H tau_p^2), tau_c^2 tau_p^2 / (tau_c^2 + n_H tau_p^2))`` and
    each ``b_j = u_j - b_H``. No predictor changes, so no row is read. It mixes the split
    of the variance between the two factors, which ``T | b`` moves slowly when many parents
    hold one child or few: docs/design.md, "The Newton proposal".
    """
    pairs, lp, node_ptr, parent = nw.nest_pairs, nw.level_ptr, nw.node_ptr, nw.parent
    cols = np.empty(2, dtype=np.int64)
    x = np.empty(2)
    scratch = theta.copy()
    C = np.zeros((b.shape[1], b.shape[1]))
    for s in range(pairs.shape[0]):
        u, v = pairs[s, 0], pairs[s, 1]
        k = 0
        while not lp[k] <= u < lp[k + 1]:
            k += 1
        if lp[k + 1] - lp[k] != 1 or lp[k + 2] - lp[k + 1] != 1:
            continue
        cols[0], cols[1] = u, v
        tau_c = structure.diag_scale[u] * math.sinh(theta[structure.sd_idx[u]])
        tau_p = structure.diag_scale[v] * math.sinh(theta[structure.sd_idx[v]])
        if not (tau_c > 0.0 and tau_p > 0.0):
            continue
        H0, H1 = node_ptr[k + 1], node_ptr[k + 2]
        n = np.zeros(H1 - H0)
        S = np.zeros(H1 - H0)
        Q = np.zeros(H1 - H0)
        for j in range(node_ptr[k], node_ptr[k + 1]):
            H = parent[j]
            t = b[j, u] + b[H, v]
            n[H - H0] += 1.0
            S[H - H0] += t
            Q[H - H0] += t * t
        for q in range(theta.shape[0]):
            scratch[q] = theta[q]
        x[0], x[1] = math.log(tau_c), math.log(tau_p)
        _split_slice(rng, 0, x, n, S, Q, cols, scratch, structure, priors, C)
        _split_slice(rng, 1, x, n, S, Q, cols, scratch, structure, priors, C)
        vc, vp = math.exp(2.0 * x[0]), math.exp(2.0 * x[1])
        for j in range(node_ptr[k], node_ptr[k + 1]):  # the totals, kept in b_ju while b_H is drawn
            b[j, u] += b[parent[j], v]
        for H in range(H1 - H0):
            den = vc + n[H] * vp
            b[H0 + H, v] = vp * S[H] / den + math.sqrt(vc * vp / den) * rng.standard_normal()
        for j in range(node_ptr[k], node_ptr[k + 1]):
            b[j, u] -= b[parent[j], v]
        theta[structure.sd_idx[u]] = math.asinh(math.exp(x[0]) / structure.diag_scale[u])
        theta[structure.sd_idx[v]] = math.asinh(math.exp(x[1]) / structure.diag_scale[v])


@njit(cache=True, nogil=True)
def _sd_log_prior(tau, col, theta, structure, priors, C):
    """Log prior density of the SD ``tau > 0`` of coefficient ``col`` (its factor's only one); ``theta``, ``C`` scratch.

    :func:`samplers.theta.decode_theta` gives the density of ``eta = asinh(tau / scale)``;
    dividing by ``d tau / d eta = scale cosh(eta)`` makes it the density of ``tau``.
    """
    scale = structure.diag_scale[col]
    eta = math.asinh(tau / scale)
    theta[structure.sd_idx[col]] = eta
    _, lp = decode_theta(theta, structure, priors, C)
    return lp - math.log(scale * math.cosh(eta))


@njit(cache=True, nogil=True)
def scale_move(rng, nw, k, theta, structure, priors, b, counting, unchecked=False):
    """Step 1b, the interweaving step: factor ``k``'s SD ``tau`` given the standardised effects ``z_j = b_j / tau``.

    For a factor with one coefficient (``T_k = tau^2``). Moving ``tau`` with every ``z_j`` held
    moves every ``b_j = tau z_j``: the target is ``p(tau) prod_i p(y_i | eta_i)`` (``z``'s prior
    does not involve ``tau``), and the proposal is the Newton construction in ``tau``, whose
    score ``sum_j z_j h_j`` and curvature ``sum_j z_j^2 A_j`` come from the groups' sums
    without a pass; one pass evaluates the proposal. It complements ``T | b`` (which mixes
    slowly when the groups are weakly informed, the one-pass step when they are strongly
    informed): docs/design.md, "The Newton proposal".

    ``unchecked``: the proposal's densities left out of the ratio, as if it were symmetric (a
    wrong step, for the test that shows the Geweke test rejects it).
    """
    starts, anc, kid_ptr, kids = nw.starts, nw.anc, nw.kid_ptr, nw.kids
    col = nw.level_ptr[k]
    j0, j1 = nw.node_ptr[k], nw.node_ptr[k + 1]
    n_fin = starts.shape[0] - 1
    scratch = theta.copy()
    C = np.zeros((b.shape[1], b.shape[1]))
    scale = structure.diag_scale[col]
    tau = scale * math.sinh(theta[structure.sd_idx[col]])
    if not tau > 0.0:
        return
    L, A, h = nw.L, nw.A, nw.h
    Ak = np.empty((1, 1))
    hk = np.empty(1)
    score = 0.0
    curv = 0.0
    for j in range(j0, j1):
        z = b[j, col] / tau
        _node_sums(A, h, kids, kid_ptr[j], kid_ptr[j + 1], col, 1, Ak, hk)
        score += z * hk[0]
        curv += z * z * Ak[0, 0]
    if not curv > 0.0:
        return
    mean = tau + score / curv
    e = rng.standard_normal()
    tau_new = mean + e / math.sqrt(curv)
    log_fwd = 0.5 * math.log(curv) - 0.5 * e * e
    if counting:
        nw.cnt[N_SCALE_PROP] += 1.0
    if not tau_new > 0.0:
        return
    ratio = tau_new / tau
    steps = np.zeros((n_fin, b.shape[1]))
    for f in range(n_fin):
        steps[f, col] = (tau_new - tau) * b[anc[f, k], col] / tau
    _pass(nw, False, steps, np.ones(n_fin, dtype=np.bool_))
    A2, h2, L2 = nw.A2, nw.h2, nw.L2
    score = 0.0
    curv = 0.0
    for j in range(j0, j1):
        z = b[j, col] / tau
        _node_sums(A2, h2, kids, kid_ptr[j], kid_ptr[j + 1], col, 1, Ak, hk)
        score += z * hk[0]
        curv += z * z * Ak[0, 0]
    if not curv > 0.0:
        return
    dev = tau - (tau_new + score / curv)
    log_r = 0.0 if unchecked else 0.5 * math.log(curv) - 0.5 * curv * dev * dev - log_fwd
    log_r += (_sd_log_prior(tau_new, col, scratch, structure, priors, C)
              - _sd_log_prior(tau, col, scratch, structure, priors, C))
    for f in range(n_fin):
        log_r += L2[f] - L[f]
    accept = np.isfinite(log_r) and math.log(rng.random()) < log_r
    if not accept:
        return
    if counting:
        nw.cnt[N_SCALE_ACC] += 1.0
    _take_all(nw.cur, L, A, h, nw.FF, nw.Fr, L2, A2, h2, nw.FF2, nw.Fr2)
    for j in range(j0, j1):
        b[j, col] *= ratio
    theta[structure.sd_idx[col]] = math.asinh(tau_new / scale)


@njit(cache=True, nogil=True)
def settle(nw):
    """At the end of warm-up: how many fixed-effect moves a sweep makes from now on, by warm-up's acceptance.

    One move when at least ``FIXED_ACCEPTANCE_ONE`` of warm-up's proposals were accepted, two
    when at least ``FIXED_ACCEPTANCE_TWO``, else three: with few rows the fixed effects'
    likelihood is far from Gaussian and one Newton proposal mixes them slowly, while with
    many the second pass would cost without gain (cbpp accepts 72%: with three moves the
    chance that none is accepted is 2%). Fixed from then on, so the kernel after warm-up
    does not change.
    """
    n = nw.cnt[N_WARM_FIXED_PROP]
    if n == 0.0:
        return
    share = nw.cnt[N_WARM_FIXED_ACC] / n
    nw.fixed_moves[0] = 1 if share >= FIXED_ACCEPTANCE_ONE else 2 if share >= FIXED_ACCEPTANCE_TWO else 3


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
    out_idx, starts, cur_buf, L, eta = aug.out_idx, nw.starts, nw.cur, nw.L, nw.eta
    family, y, n, const = nw.family, nw.y, nw.n, nw.const
    for g in range(starts.shape[0] - 1):
        lo, hi = starts[g], starts[g + 1]
        if hi == lo:
            continue
        col = out_idx[lo]
        one = True
        for i in range(lo + 1, hi):
            if out_idx[i] != col:
                one = False
                break
        if one:
            out[col] += L[g]
            continue
        c = cur_buf[g]
        for i in range(lo, hi):
            out[out_idx[i]] += _row(family, y, n, const, i, eta[c, i])[0]


__all__ = ["fixed_move", "group_moves", "keep_loglik", "loglik", "nest_shift_move", "scale_move", "settle",
           "shift_move", "split_move", "start"]
