"""The ML and REML log-likelihood of the variance components, and its gradient, in one compiled call.

Used by the EB/ML fit (:func:`bayeshlm.fit_em`): the optimiser asks for the value and the
gradient together, and computing both here (central differences over the unconstrained
``theta`` of :mod:`samplers.theta`, ``2 n_theta + 1`` upward passes) costs one call from
Python instead of one per pass.
"""

import numpy as np
from numba import njit

from samplers.nested import tree_upward, tree_workspace
from samplers.theta import decode_theta
from samplers.tree import upward
from samplers.types import FixedPrior

LOG_2PI = np.log(2.0 * np.pi)


@njit(cache=True, nogil=True, inline="always")
def profile_loglik(theta, stats, structure, priors, reml, tree, C, L, LA, c, flat):
    """ML (fixed effects at their GLS value) or REML (integrated out) log-likelihood of ``theta``.

    ``C``, ``L``, ``LA``, ``c`` are work arrays, left holding the factors at ``theta``; ``flat``
    is the flat prior of the fixed effects. Returns ``-inf`` where a factorisation fails.
    """
    p = c.shape[0]
    s2, _ = decode_theta(theta, structure, priors, C)
    if tree is None:
        ll, ok = upward(stats, s2, C, flat, L, LA, c)
    else:
        Lt, Ut, Acc, _, _, _ = tree_workspace(stats, structure)
        ll, ok = tree_upward(stats, structure, s2, C, True, flat, stats.Xty, 0.0, Lt, Ut, Acc, LA, c)
    if not ok:
        return -np.inf
    if not reml:
        # from the restricted to the profiled likelihood: drop log|A|, count all N rows
        for q in range(p):
            ll += np.log(LA[q, q])
        ll -= 0.5 * p * LOG_2PI
    return ll


@njit(cache=True, nogil=True)
def loglik_and_gradient(theta, stats, structure, priors, reml, tree, grad):
    """Value of :func:`profile_loglik` at ``theta``, with its gradient written into ``grad``.

    Central differences with step ``1e-4`` (relative beyond 1): the log-likelihood carries a
    rounding error of about ``1e-16 |loglik|``, so a step ``h`` adds about
    ``1e-16 |loglik| / h`` to the gradient and the truncation adds ``h^2 f3 / 6`` (``f3`` the
    third derivative); ``1e-4`` balances the two near ``1e-7`` for likelihoods of the size
    met here, where ``1e-6`` would leave errors near ``1e-5``. ``tree``: the variant flag of
    :mod:`samplers.nested`.
    """
    n_groups, d = stats.Xty.shape
    p = stats.Fty.shape[0]
    C = np.empty((d, d))
    L = np.empty((n_groups if tree is None else 1, d, d))
    LA = np.empty((p, p))
    c = np.empty(p)
    flat = FixedPrior(np.zeros((p, p)), np.zeros(p), 0.0, p)
    # one call site, so that profile_loglik is compiled inline here only: evaluation k = 0
    # is theta itself, then theta + h e_i and theta - h e_i for each i
    work = theta.copy()
    value = up = 0.0
    for k in range(2 * theta.shape[0] + 1):
        i = (k - 1) // 2
        if k > 0:
            h = 1e-4 * max(1.0, abs(theta[i]))
            work[i] = theta[i] + h if k % 2 == 1 else theta[i] - h
        ll = profile_loglik(work, stats, structure, priors, reml, tree, C, L, LA, c, flat)
        if k == 0:
            value = ll
        elif k % 2 == 1:
            up = ll
        else:
            grad[i] = (up - ll) / (2.0 * h)
            work[i] = theta[i]
    return value
