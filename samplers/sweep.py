"""One sweep of the sampler: the variance components, then all coefficients given them."""

import numpy as np
from numba import njit

from samplers.gibbs import update_s2, update_T
from samplers.mh import FAILED, LP, RTR, mh_moves
from samplers.nested import effective_coefficients, tree_draw, tree_upward, tree_workspace
from samplers.theta import decode_theta, encode_theta
from samplers.tree import draw_coefficients, residual_stats, upward

# The method is a variant flag like ``tree`` (see samplers.nested): None or True, tested with
# ``method is None``, so that a chain compiles only the moves of its own method.
METHOD_MH = None
METHOD_GIBBS = True
CURRENT = 0  # buffer slot of the factors at the current theta


@njit(cache=True, nogil=True, inline="always")
def draw_all_coefficients(rng, state, stats, structure, priors, tree):
    """Upward pass at the current ``theta``, then an exact joint draw of ``(a, b) | theta, y``.

    Stores ``log p(theta | y)`` (up to a constant; ``a`` and ``b`` integrated out) in
    ``state.scal[LP]``. Returns False when a factorisation failed. ``tree``: the variant
    flag of :mod:`samplers.nested`.
    """
    C = state.C_buf[CURRENT]
    s2, log_prior = decode_theta(state.theta, structure, priors, C)
    if tree is not None:
        # nested factors, or no factors: the general tree passes
        Lt, Ut, Acc, LA, cA, beta = tree_workspace(stats, structure)
        ll, ok = tree_upward(stats, structure, s2, C, True, priors.fixed, state.r_buf, 0.0,
                             Lt, Ut, Acc, LA, cA)
        if not ok or not np.isfinite(log_prior):
            state.scal[FAILED] = 1.0
            return False
        state.scal[LP] = ll + log_prior
        tree_draw(rng, structure, C, Lt, Ut, LA, cA, beta, state.a, state.b, True)
        return True
    ll, ok = upward(
        stats, s2, C, priors.fixed,
        state.L_buf[CURRENT], state.LA_buf[CURRENT], state.c_buf[CURRENT],
    )
    if not ok or not np.isfinite(log_prior):
        state.scal[FAILED] = 1.0
        return False
    state.scal[LP] = ll + log_prior
    draw_coefficients(
        rng, stats, s2, C, state.L_buf[CURRENT], state.LA_buf[CURRENT], state.c_buf[CURRENT],
        state.a, state.b, True,
    )
    return True


@njit(cache=True, nogil=True, inline="always")
def sweep(rng, state, stats, structure, priors, tree, method, mh_steps, warmup, move_theta=True):
    """Advance the chain by one sweep, in place.

    ``method`` METHOD_GIBBS: ``s2 | a, b, y`` and ``T | b`` by their conditionals.
    ``method`` METHOD_MH: ``mh_steps`` Metropolis-Hastings moves on ``p(theta | a, y)`` with the
    group coefficients integrated out: random walk only until the independence proposal has
    been fitted, then two independence moves for every random-walk move. Both then
    draw ``(a, b) | theta, y`` exactly and jointly. With ``move_theta`` False only the
    coefficients are drawn, at the current ``theta`` (the first draw of a fresh chain).

    Returns
    -------
    float
        Mean acceptance probability of the variance-component moves in this sweep
        (``nan`` when the sweep failed; the failure flag ``state.scal[3]`` is then set).
    """
    acc = np.nan  # without a move only the coefficients are drawn
    if move_theta:
        if method is None:  # METHOD_MH
            state.scal[RTR] = residual_stats(stats, state.a, state.r_buf)
            acc = mh_moves(rng, state, stats, structure, priors, tree, mh_steps, warmup)
        else:
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
                if tree is not None:
                    b_eff = np.zeros((stats.n.shape[0], d))
                    effective_coefficients(structure, state.b, b_eff)
                else:
                    b_eff = state.b
                s2, acc_s2 = update_s2(rng, stats, state.a, b_eff, s2, priors)
            acc_T, ok = update_T(rng, state.b, T, structure, priors)
            if not ok or not encode_theta(s2, T, structure, state.theta):
                state.scal[FAILED] = 1.0
                return np.nan
            acc = 0.5 * (acc_s2 + acc_T) if structure.sigma_known == 0 else acc_T
    if not draw_all_coefficients(rng, state, stats, structure, priors, tree):
        return np.nan
    return acc
