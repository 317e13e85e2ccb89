"""One sweep of the sampler: the variance components, then all coefficients given them."""

import numpy as np
from numba import njit
from numba.extending import overload

from samplers.gaussian import draw_by_factor, draw_coefficients, finest_coefficients, integrate
from samplers.gibbs import residual_ss, update_s2, update_s2_given_rss, update_T
from samplers.mh import mh_moves
from samplers.suffstats import residual_stats
from samplers.theta import decode_theta, encode_theta
from samplers.types import CURRENT, FACTORED, FAILED, LP, N_OBS, RSS, RTR, BlockedGibbsMoves, GibbsMoves, MHMoves


@njit(cache=True, nogil=True, inline="always")
def draw_all_coefficients(rng, state, stats, structure, priors, reuse=0):
    """Upward pass at the current ``theta``, then an exact joint draw of ``(a, b) | theta, y``.

    Stores ``log p(theta | y)`` (up to a constant; ``a`` and ``b`` integrated out) in
    ``state.scal[LP]``. With ``reuse`` (moves on ``p(theta | y)``, which leave the factors
    at the current ``theta`` in the current workspace) the upward pass is skipped once it
    has been done. Returns False when a factorisation failed.
    """
    work = state.work if state.ibuf[CURRENT] == 0 else state.scratch
    s2, log_prior = decode_theta(state.theta, structure, priors, work.C)
    if not (reuse and state.ibuf[FACTORED] != 0):
        ll, ok = integrate(work, stats, structure, s2, priors.fixed)
        if not ok or not np.isfinite(log_prior):
            state.scal[FAILED] = 1.0
            return False
        state.scal[LP] = ll + log_prior
    # other moves change theta without factorising: only these moves may trust the factors
    state.ibuf[FACTORED] = 1 if reuse else 0
    draw_coefficients(rng, work, stats, structure, s2, state.a, state.b, True)
    return True


@njit(cache=True, nogil=True, inline="always")
def gibbs_moves(rng, state, stats, structure, priors, rss_known=False):
    """``s2 | a, b, y`` and each ``T_k | b`` by their conditionals; returns the mean acceptance.

    With ``rss_known`` the residual sum of squares at ``(a, b)`` is ``state.scal[RSS]``, left
    by the factor-by-factor draw of the coefficients.
    """
    d = state.b.shape[1]
    C = np.empty((d, d))
    s2, _ = decode_theta(state.theta, structure, priors, C)
    T = np.zeros((d, d))  # C C'
    for i in range(d):
        for j in range(d):
            for m in range(min(i, j) + 1):
                T[i, j] += C[i, m] * C[j, m]
    acc_s2 = 1.0
    if structure.sigma_known == 0:
        if rss_known:
            s2, acc_s2 = update_s2_given_rss(rng, state.scal[RSS], stats.scal[N_OBS], s2, priors)
        else:
            b_eff = finest_coefficients(state.work, structure, state.b)
            s2, acc_s2 = update_s2(rng, stats, state.a, b_eff, s2, priors)
    acc_T, ok = update_T(rng, state.b, T, structure, priors)
    if not ok or not encode_theta(s2, T, structure, state.theta):
        state.scal[FAILED] = 1.0
        return np.nan
    return 0.5 * (acc_s2 + acc_T) if structure.sigma_known == 0 else acc_T


@njit(cache=True, nogil=True, inline="always")
def draw_coefficients_by_factor(rng, state, stats, structure, priors):
    """The coefficients factor by factor (:func:`samplers.gaussian.draw_by_factor`), at the current ``theta``.

    ``log p(theta | y)`` is not computed (it would need the exact factorisation this move
    avoids): ``state.scal[LP]`` holds nan. Returns False when a factorisation failed.
    """
    work = state.work
    s2, log_prior = decode_theta(state.theta, structure, priors, work.C)
    rss = draw_by_factor(rng, work, stats, structure, s2, priors.fixed, state.a, state.b) if np.isfinite(
        log_prior) else -1.0
    if rss < 0.0:
        state.scal[FAILED] = 1.0
        return False
    if np.isnan(rss):  # an exact draw: the residual sum of squares from the statistics
        rss = residual_ss(stats, state.a, finest_coefficients(work, structure, state.b))
    state.scal[LP] = np.nan
    state.scal[RSS] = rss
    return True


def draw_all(rng, state, stats, structure, priors, moves):
    """The coefficients of one sweep, as the moves ask (compiled code only)."""
    raise NotImplementedError("compiled code only")


@overload(draw_all)
def _draw_all_impl(rng, state, stats, structure, priors, moves):
    if moves.instance_class is BlockedGibbsMoves:
        return lambda rng, state, stats, structure, priors, moves: draw_coefficients_by_factor(
            rng, state, stats, structure, priors)
    if moves.instance_class is MHMoves:
        return lambda rng, state, stats, structure, priors, moves: draw_all_coefficients(
            rng, state, stats, structure, priors, moves.marginal)
    return lambda rng, state, stats, structure, priors, moves: draw_all_coefficients(
        rng, state, stats, structure, priors)


def move_theta(rng, state, stats, structure, priors, moves, warmup):
    """The moves on the variance components of one sweep (compiled code only)."""
    raise NotImplementedError("compiled code only")


@overload(move_theta)
def _move_theta_impl(rng, state, stats, structure, priors, moves, warmup):
    if moves.instance_class is GibbsMoves:
        return lambda rng, state, stats, structure, priors, moves, warmup: gibbs_moves(
            rng, state, stats, structure, priors)
    if moves.instance_class is BlockedGibbsMoves:
        return lambda rng, state, stats, structure, priors, moves, warmup: gibbs_moves(
            rng, state, stats, structure, priors, True)

    def impl(rng, state, stats, structure, priors, moves, warmup):
        if not moves.marginal:
            state.scal[RTR] = residual_stats(stats, state.a, state.r)
        return mh_moves(rng, state, stats, structure, priors, moves.steps, warmup, moves.marginal, moves.shuffled)

    return impl


@njit(cache=True, nogil=True, inline="always")
def sweep(rng, state, stats, structure, priors, moves, warmup, move=True):
    """Advance the chain by one sweep, in place.

    ``moves`` :class:`~samplers.types.GibbsMoves`: ``s2 | a, b, y`` and ``T | b`` by their
    conditionals. :class:`~samplers.types.MHMoves`: ``moves.steps`` Metropolis-Hastings moves
    on ``p(theta | a, y)`` with the group coefficients integrated out (or on ``p(theta | y)``
    with ``moves.marginal``): random walk only until the independence proposal has been
    fitted, then two independence moves for every random-walk move. Both then draw
    ``(a, b) | theta, y`` exactly and jointly.
    :class:`~samplers.types.BlockedGibbsMoves`: the Gibbs moves, then the coefficients
    factor by factor (crossed factors: :func:`samplers.gaussian.draw_by_factor`). With
    ``move`` False only the coefficients are drawn, at the current ``theta`` (the first draw
    of a fresh chain).

    Returns
    -------
    float
        Mean acceptance probability of the variance-component moves in this sweep
        (``nan`` when the sweep failed; ``state.scal[FAILED]`` is then set).
    """
    acc = np.nan  # without a move only the coefficients are drawn
    if move:
        acc = move_theta(rng, state, stats, structure, priors, moves, warmup)
        if state.scal[FAILED] != 0.0:
            return np.nan
    if not draw_all(rng, state, stats, structure, priors, moves):
        return np.nan
    return acc
