"""The ML and REML log-likelihood of the variance components, and its gradient, in one compiled call.

Used by the EB/ML fit (:func:`bayeshlm.fit_em`): the optimiser asks for the value and the
gradient together. The value is one upward pass; the gradient is exact, by Fisher's
identity (:func:`samplers.gaussian.score`: the derivatives in the factor ``C`` of the group
covariance and in ``s2``), carried to the unconstrained ``theta`` of :mod:`samplers.theta`
by the chain rule, with the derivatives of ``(s2, C)`` in ``theta`` from central
differences of :func:`samplers.theta.decode_theta`, which reads no data (docs/design.md,
"EM").
"""

import numpy as np
from numba import njit

from samplers.gaussian import integrate, score
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
def loglik_and_gradient(rng, theta, work, stats, structure, priors, reml, grad):
    """Value of :func:`profile_loglik` at ``theta``, with its exact gradient written into ``grad``.

    ``work`` is left holding the factors at ``theta``; ``rng`` is not drawn from. Where the
    log-likelihood is not finite the gradient is set to nan.
    """
    p = stats.Fty.shape[0]
    d = work.C.shape[0]
    flat = FixedPrior(np.zeros((p, p)), np.zeros(p), 0.0, p)
    value = profile_loglik(theta, work, stats, structure, priors, reml, flat)
    if not np.isfinite(value):
        for i in range(grad.shape[0]):
            grad[i] = np.nan
        return value
    Cp = np.empty((d, d))
    Cm = np.empty((d, d))
    s2, _ = decode_theta(theta, structure, priors, Cp)
    gC = np.zeros((d, d))
    g_s2 = score(rng, work, stats, structure, s2, reml, gC)
    # chain rule: (s2, C) as functions of theta, differentiated by central differences of
    # the decoding, which is exact to about 1e-10 at this step and reads no data
    shifted = theta.copy()
    for i in range(theta.shape[0]):
        h = 1e-5 * max(1.0, abs(theta[i]))
        shifted[i] = theta[i] + h
        s2p, _ = decode_theta(shifted, structure, priors, Cp)
        shifted[i] = theta[i] - h
        s2m, _ = decode_theta(shifted, structure, priors, Cm)
        shifted[i] = theta[i]
        g = g_s2 * (s2p - s2m)
        for k in range(d):
            for m in range(k + 1):
                g += gC[k, m] * (Cp[k, m] - Cm[k, m])
        grad[i] = g / (2.0 * h)
    return value


@njit(cache=True, nogil=True)
def loglik_and_difference_gradient(theta, work, stats, structure, priors, reml, grad):
    """:func:`loglik_and_gradient` with the gradient from central differences of the value.

    ``2 n_theta + 1`` upward passes with step ``1e-4`` (relative beyond 1); kept to check the
    exact gradient against.
    """
    p = stats.Fty.shape[0]
    flat = FixedPrior(np.zeros((p, p)), np.zeros(p), 0.0, p)
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
