"""Metropolis-Hastings on the variance components, with the group coefficients integrated out.

The target is ``p(theta | a, y)``: the group coefficients are integrated out
(:func:`samplers.gaussian.integrate_given_a`), so the moves do not depend on how well the data pin
down the group effects, while conditioning on the fixed effects makes each evaluation cost
``O(n_coef^3)`` per group whatever the number of fixed effects, so that many moves fit in a
sweep. The sweep then draws the fixed effects and the group coefficients jointly given
``theta``; together this is a partially collapsed Gibbs sampler on ``(theta, a, b)``.

With ``MHMoves.marginal`` the target is ``p(theta | y)``, the fixed effects integrated out as
well (:func:`samplers.gaussian.integrate`). Where that costs about as much per evaluation
(crossed factors, whose fixed effects sit in the dense part of the factorisation anyway) it
is the better choice: the moves no longer depend on the fixed effects, nothing is evaluated
again at the current point after the coefficients are drawn, and the factors of the last
accepted proposal are the ones the coefficients are drawn from (``ChainState.scratch``), so
a sweep factorises at its proposals only. The chain is then a blocked sampler: ``theta`` by
a kernel that leaves ``p(theta | y)`` invariant, then ``(a, b) | theta, y`` exactly.

Two proposals, each a valid Metropolis-Hastings kernel for the same target:

* a Gaussian random walk on the unconstrained ``theta``, whose covariance is learnt during
  warm-up in three windows (Haario, Saksman & Tamminen 2001) and whose scale is tuned by
  Robbins-Monro towards an acceptance rate suited to the dimension;
* from the end of the last window, a multivariate-t independence proposal fitted to that
  window's draws, each brought to its canonical mirror image (non-negative SDs, see
  :func:`samplers.theta.flip_columns`); a proposal applies a random sign pattern, so that
  it covers every mirror image of the mode. When the posterior of ``theta`` is close to
  Gaussian, as with many groups, these moves are accepted most of the time and give nearly
  independent draws; the random walk keeps the chain moving where the fit is poor. If they
  are accepted less than 15% of the time in the last tenth of warm-up, the chain keeps the
  random walk alone.

After warm-up both proposals are frozen, so the kept draws come from a fixed, valid kernel.
"""

import numpy as np
from numba import njit

from samplers.gaussian import integrate, integrate_given_a
from samplers.linalg import chol_inplace, copy_into
from samplers.theta import canonical_mask, decode_theta, flip_columns
from samplers.types import (
    CURRENT,
    FACTORED,
    IND_ACC,
    IND_LQ,
    IND_N,
    ITER,
    LAST_RESET,
    LOG_SCALE,
    LP,
    LP_COND,
    RTR,
    WIN_COUNT,
)

IND_MIN_ACCEPT = 0.15  # below this in the last tenth of warm-up, the independence proposal is dropped


@njit(cache=True, nogil=True, inline="always")
def log_target(theta, stats, structure, priors, state, work, marginal):
    """Log posterior of ``theta``, evaluated in ``work`` (the workspace not holding the current factors).

    ``marginal`` 0: given the fixed effects, ``log p(y | theta, a) + log p(theta)``, with
    ``state.r`` and ``state.scal[RTR]`` the residual statistics of the current ``a``.
    ``marginal`` 1: ``log p(y | theta) + log p(theta)``, every coefficient integrated out, the
    same value as :func:`samplers.sweep.draw_all_coefficients` stores in ``state.scal[LP]``.
    """
    s2, log_prior = decode_theta(theta, structure, priors, work.C)
    if not np.isfinite(log_prior):
        return -np.inf
    if marginal:
        ll, ok = integrate(work, stats, structure, s2, priors.fixed)
    else:
        ll, ok = integrate_given_a(work, stats, structure, s2, state.r, state.scal[RTR])
    if not ok:
        # A factorisation failed at this point: numerically it has no posterior mass.
        return -np.inf
    return ll + log_prior


@njit(cache=True, nogil=True, inline="always")
def target_accept(n_theta):
    """Acceptance rate aimed at: 0.44 in one dimension, tending to 0.234 in many."""
    return 0.234 + 0.206 * np.exp(-(n_theta - 1.0) / 2.0)


@njit(cache=True, nogil=True, inline="always")
def propose_walk(rng, state, prop, z):
    """Random-walk proposal from the current ``theta`` into ``prop`` (``z``: work space)."""
    n = state.theta.shape[0]
    for i in range(n):
        z[i] = rng.standard_normal()
    scale = np.exp(state.scal[LOG_SCALE])
    for i in range(n):
        t = 0.0
        for k in range(i + 1):
            t += state.prop_chol[i, k] * z[k]
        prop[i] = state.theta[i] + scale * t


IND_NU = 5.0  # degrees of freedom of the independence proposal (a whole number): tails heavier than the target's
MAX_FLIP_COEFS = 8  # up to 2^8 sign patterns are summed in the proposal density


@njit(cache=True, nogil=True, inline="always")
def _n_patterns(structure):
    d = structure.block_ptr[-1]
    return 1 << d if d <= MAX_FLIP_COEFS else 1


@njit(cache=True, nogil=True)
def _ind_log_density(state, structure, x, r):
    """Log density (up to a constant) of the proposal: the fitted t under a random sign pattern.

    The target is symmetric under sign flips of the columns of ``C``; the t is fitted to
    draws brought to the canonical representative (non-negative diagonal), and a proposal
    applies a uniformly chosen flip pattern, so it reaches every mirror image of the mode.
    Its density is the average of the t density over the patterns (each flip is its own
    inverse). ``r`` is work space of the size of ``x``.
    """
    n = x.shape[0]
    top = -np.inf
    total = 0.0
    for mask in range(_n_patterns(structure)):
        flip_columns(x, structure, mask, r)
        for i in range(n):
            r[i] -= state.ind_mean[i]
        q = 0.0
        for i in range(n):  # r <- L^{-1} r, accumulating r'r
            t = r[i]
            for k in range(i):
                t -= state.ind_chol[i, k] * r[k]
            t /= state.ind_chol[i, i]
            r[i] = t
            q += t * t
        v = -0.5 * (IND_NU + n) * np.log1p(q / IND_NU)
        if v > top:  # running log-sum-exp
            total = total * np.exp(top - v) + 1.0
            top = v
        else:
            total += np.exp(v - top)
    return top + np.log(total)


@njit(cache=True, nogil=True, inline="always")
def propose_independent(rng, state, structure, prop, z):
    """Independence proposal from the fitted multivariate t into ``prop`` (``z``: work space)."""
    n = state.theta.shape[0]
    # chi-square with IND_NU degrees of freedom as a sum of squared normals: numba's gamma
    # sampler would add seconds of compilation for this one draw
    chi2 = 0.0
    for _ in range(int(IND_NU)):
        e = rng.standard_normal()
        chi2 += e * e
    w = np.sqrt(IND_NU / chi2)
    draw = state.ind_mean.copy()
    for i in range(n):
        z[i] = rng.standard_normal()
    for i in range(n):
        t = 0.0
        for k in range(i + 1):
            t += state.ind_chol[i, k] * z[k]
        draw[i] += w * t
    n_pat = _n_patterns(structure)
    mask = min(int(rng.random() * n_pat), n_pat - 1) if n_pat > 1 else 0  # uniform on 0 .. n_pat - 1
    flip_columns(draw, structure, mask, prop)


@njit(cache=True, nogil=True, inline="always")
def mh_moves(rng, state, stats, structure, priors, mh_steps, warmup, marginal, shuffled=0):
    """``mh_steps`` moves on ``theta``; returns their mean acceptance probability.

    Random-walk moves only until the independence proposal has been fitted, then two
    independence moves for every random-walk move. ``marginal`` 0: the target is
    ``p(theta | a, y)``; ``state.r`` and ``state.scal[RTR]`` must hold the residual
    statistics of the current fixed effects, and the target is evaluated at one call site,
    first at the current point and then at each proposal. ``marginal`` 1: the target is
    ``p(theta | y)``, known at the current point (``state.scal[LP]``) unless
    ``state.ibuf[FACTORED]`` is 0 (the data changed under the chain); an accepted proposal's
    workspace becomes the current one (``state.ibuf[CURRENT]``). ``shuffled``: each move's
    proposal is drawn (independence with probability 2/3) instead of cycled
    (:class:`~samplers.types.MHMoves`).
    """
    n = state.theta.shape[0]
    adapting = state.ibuf[ITER] < warmup
    use_ind = state.ind_chol[0, 0] > 0.0
    prop = np.empty(n)
    z = np.empty(n)
    acc = 0.0
    for s in range(-1, mh_steps):
        if s < 0 and marginal and state.ibuf[FACTORED] != 0:
            state.scal[LP_COND] = state.scal[LP]
            continue
        if shuffled:
            independent = s >= 0 and use_ind and rng.random() < 2.0 / 3.0
        else:
            independent = s >= 0 and use_ind and s % 3 != 2
        if s < 0:
            copy_into(prop, state.theta)
        elif independent:
            propose_independent(rng, state, structure, prop, z)
        else:
            propose_walk(rng, state, prop, z)
        # the workspace not holding the current factors (always scratch when not marginal)
        other = state.scratch if state.ibuf[CURRENT] == 0 else state.work
        lp_new = log_target(prop, stats, structure, priors, state, other, marginal)
        if s < 0:
            state.scal[LP_COND] = lp_new
            if marginal:  # the factors at the current point, computed afresh (new data)
                state.scal[LP] = lp_new
                state.ibuf[CURRENT] = 1 - state.ibuf[CURRENT]
                state.ibuf[FACTORED] = 1
            continue
        if independent:
            lq_new = _ind_log_density(state, structure, prop, z)
            if np.isnan(state.scal[IND_LQ]):
                state.scal[IND_LQ] = _ind_log_density(state, structure, state.theta, z)
            log_alpha = (lp_new - lq_new) - (state.scal[LP_COND] - state.scal[IND_LQ])
        else:
            lq_new = np.nan
            log_alpha = lp_new - state.scal[LP_COND]
        alpha = 1.0 if log_alpha >= 0.0 else np.exp(log_alpha)
        if np.log(rng.random()) < log_alpha:
            copy_into(state.theta, prop)
            state.scal[LP_COND] = lp_new
            state.scal[IND_LQ] = lq_new
            if marginal:  # its factors are the current ones now
                state.scal[LP] = lp_new
                state.ibuf[CURRENT] = 1 - state.ibuf[CURRENT]
        if adapting:
            if independent:
                state.scal[IND_ACC] += alpha
                state.scal[IND_N] += 1.0
            else:
                adapt(state, structure, alpha, warmup)
        acc += alpha
    return acc / mh_steps


@njit(cache=True, nogil=True, inline="always")
def window_ends(warmup):
    """Iterations at which the adaptation windows end (accumulation starts at the first)."""
    return (int(0.1 * warmup), int(0.3 * warmup), int(0.6 * warmup), int(0.9 * warmup))


@njit(cache=True, nogil=True, inline="always")
def adapt(state, structure, alpha, warmup):
    """Warm-up adaptation after one MH move at the current iteration.

    The window statistics are taken on the canonical representative of ``theta``
    (non-negative diagonal of ``C``), so a chain that visits several mirror images of the
    mode still learns the shape of one.
    """
    n = state.theta.shape[0]
    it = state.ibuf[ITER]
    t = it - state.ibuf[LAST_RESET] + 1.0
    state.scal[LOG_SCALE] += (alpha - target_accept(n)) / t**0.6
    w0, w1, w2, w3 = window_ends(warmup)
    if it < w0 or it >= w3:
        return
    # Welford update of the window's mean and scatter
    x = np.empty(n)
    flip_columns(state.theta, structure, canonical_mask(state.theta, structure), x)
    state.ibuf[WIN_COUNT] += 1
    m = state.ibuf[WIN_COUNT]
    delta = x - state.ad_mean
    for i in range(n):
        state.ad_mean[i] += delta[i] / m
    for i in range(n):
        for k in range(n):
            state.ad_cov[i, k] += delta[i] * (x[k] - state.ad_mean[k])


@njit(cache=True, nogil=True, inline="always")
def end_of_iteration(state, warmup):
    """At the end of an adaptation window, adopt its covariance for the proposal."""
    n = state.theta.shape[0]
    it = state.ibuf[ITER]
    w0, w1, w2, w3 = window_ends(warmup)
    if it + 1 == warmup and state.scal[IND_N] > 0:
        # a fit that is rarely accepted (a chain that was still settling in the last window)
        # would only slow the chain down: keep the random walk alone
        if state.scal[IND_ACC] / state.scal[IND_N] < IND_MIN_ACCEPT:
            state.ind_chol.fill(0.0)
            state.scal[IND_LQ] = np.nan
    if it + 1 != w1 and it + 1 != w2 and it + 1 != w3:
        return
    m = state.ibuf[WIN_COUNT]
    if m >= n + 3:
        C = state.ad_cov / (m - 1.0) * (2.38 * 2.38 / n)
        for i in range(n):
            C[i, i] += 1e-10
        if chol_inplace(C):
            copy_into(state.prop_chol.ravel(), C.ravel())
            state.scal[LOG_SCALE] = 0.0
            state.ibuf[LAST_RESET] = it
        if it + 1 == w3:
            C = state.ad_cov / (m - 1.0)
            for i in range(n):
                C[i, i] += 1e-10
            if chol_inplace(C):
                copy_into(state.ind_chol.ravel(), C.ravel())
                copy_into(state.ind_mean, state.ad_mean)
                state.scal[IND_LQ] = np.nan
    state.ibuf[WIN_COUNT] = 0
    state.ad_mean.fill(0.0)
    state.ad_cov.fill(0.0)
