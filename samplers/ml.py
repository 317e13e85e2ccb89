"""The ML and REML log-likelihood of the variance components, and its gradient, in one compiled call.

Used by the EB/ML fit (:func:`bayeshlm.fit_em`): the optimiser asks for the value and the
gradient together, and computing both here (central differences over the unconstrained
``theta`` of :mod:`samplers.theta`, ``2 n_theta + 1`` upward passes) costs one call from
Python instead of one per pass.
"""

import numpy as np
from numba import njit

from samplers.gaussian import integrate
from samplers.theta import decode_theta
from samplers.types import FixedPrior

LOG_2PI = np.log(2.0 * np.pi)


@njit(cache=True, nogil=True, inline="always")
def profile_loglik(theta, work, stats, structure, priors, reml, flat):
    """ML (fixed effects at their GLS value) or REML (integrated out) log-likelihood of ``theta``.

    ``work`` (:func:`samplers.gaussian.workspace`) is left holding the factors at ``theta``;
    ``flat`` is the flat prior of the fixed effects. Returns ``-inf`` where a factorisation
    fails.
    """
    s2, _ = decode_theta(theta, structure, priors, work.C)
    ll, ok = integrate(work, stats, structure, s2, flat)
    if not ok:
        return -np.inf
    if not reml:
        # from the restricted to the profiled likelihood: drop log|A|, count all N rows
        LA = work.LA
        for q in range(LA.shape[0]):
            ll += np.log(LA[q, q])
        ll -= 0.5 * LA.shape[0] * LOG_2PI
    return ll


@njit(cache=True, nogil=True)
def loglik_and_gradient(theta, work, stats, structure, priors, reml, grad):
    """Value of :func:`profile_loglik` at ``theta``, with its gradient written into ``grad``.

    Central differences with step ``1e-4`` (relative beyond 1): the log-likelihood carries a
    rounding error of about ``1e-16 |loglik|``, so a step ``h`` adds about
    ``1e-16 |loglik| / h`` to the gradient and the truncation adds ``h^2 f3 / 6`` (``f3`` the
    third derivative); ``1e-4`` balances the two near ``1e-7`` for likelihoods of the size
    met here, where ``1e-6`` would leave errors near ``1e-5``. ``work`` is left holding the
    factors of the last evaluation (not of ``theta``).
    """
    p = stats.Fty.shape[0]
    flat = FixedPrior(np.zeros((p, p)), np.zeros(p), 0.0, p)
    # one call site, so that profile_loglik is compiled inline here only: evaluation k = 0
    # is theta itself, then theta + h e_i and theta - h e_i for each i
    work_theta = theta.copy()
    value = up = 0.0
    for k in range(2 * theta.shape[0] + 1):
        i = (k - 1) // 2
        if k > 0:
            h = 1e-4 * max(1.0, abs(theta[i]))
            work_theta[i] = theta[i] + h if k % 2 == 1 else theta[i] - h
        ll = profile_loglik(work_theta, work, stats, structure, priors, reml, flat)
        if k == 0:
            value = ll
        elif k % 2 == 1:
            up = ll
        else:
            grad[i] = (up - ll) / (2.0 * h)
            work_theta[i] = theta[i]
    return value
