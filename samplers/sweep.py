"""One sweep of the sampler: the variance components, then all coefficients given them."""

import numpy as np
from numba import njit

from samplers.gibbs import update_s2, update_T
from samplers.mh import CUR, FAILED, LL, LP, adapt, independence_step, log_target, mh_step
from samplers.theta import decode_theta, encode_theta
from samplers.tree import draw_coefficients

METHOD_GIBBS = 0
METHOD_MH = 1


@njit(cache=True, nogil=True)
def sweep(rng, state, stats, structure, priors, method, mh_steps, warmup):
    """Advance the chain by one sweep, in place.

    ``method`` 0 (Gibbs): ``s2 | a, b, y`` and ``T | b`` by their conditionals, then an
    upward pass at the new values. ``method`` 1 (collapsed MH): ``mh_steps`` moves on
    ``p(theta | y)``, alternating independence and random-walk proposals once the
    independence proposal has been fitted (random walk only before). Both then draw ``(a, b) | theta, y`` exactly.

    Returns
    -------
    float
        Mean acceptance probability of the variance-component moves in this sweep
        (``nan`` when the sweep failed; ``state.scal[3]`` is then set).
    """
    adapting = state.ibuf[1] < warmup
    if method == METHOD_MH:
        acc = 0.0
        use_ind = state.ind_chol[0, 0] > 0.0
        for s in range(mh_steps):
            if use_ind and s % 2 == 0:
                alpha = independence_step(rng, state, stats, structure, priors)
            else:
                alpha = mh_step(rng, state, stats, structure, priors)
                if adapting:
                    adapt(state, alpha, warmup)
            acc += alpha
        acc /= mh_steps
    else:
        d = state.b.shape[1]
        T_chol = np.empty((d, d))
        Lam = np.empty((d, d))
        s2, _, _ = decode_theta(state.theta, structure, priors, T_chol, Lam)
        T = T_chol @ T_chol.T
        acc_s2 = 1.0
        if structure.sigma_known == 0:
            s2, acc_s2 = update_s2(rng, stats, state.a, state.b, s2, priors)
        acc_T, ok = update_T(rng, state.b, T, structure, priors)
        if not ok or not encode_theta(s2, T, structure, state.theta):
            state.scal[FAILED] = 1.0
            return np.nan
        acc = 0.5 * (acc_s2 + acc_T) if structure.sigma_known == 0 else acc_T
        lp, ll, ok = log_target(state.theta, stats, structure, priors, state, state.ibuf[CUR])
        if not ok:
            state.scal[FAILED] = 1.0
            return np.nan
        state.scal[LP] = lp
        state.scal[LL] = ll
    cur = state.ibuf[CUR]
    if structure.sigma_known == 1:
        s2 = 1.0
    else:
        s2 = np.exp(2.0 * state.theta[0])
    draw_coefficients(
        rng, stats, s2, state.L_buf[cur], state.LA_buf[cur], state.c_buf[cur], state.a, state.b, True
    )
    return acc
