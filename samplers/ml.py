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

from samplers.gaussian import em_iteration, group_moments, integrate, score
from samplers.theta import decode_theta, encode_theta
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


VALUE_AND_GRADIENT, EM_STEP, EB_ESTIMATES = 0, 1, 2  # what evaluate() computes


@njit(cache=True, nogil=True)
def evaluate(mode, rng, theta, work, stats, structure, priors, reml, grad, a, b, V, A_inv, T):
    """Everything the EB/ML fit asks of the compiled passes, in one kernel (one compilation).

    ``mode`` :data:`VALUE_AND_GRADIENT`: the ML or REML log-likelihood at ``theta``, its exact
    gradient written into ``grad`` (see :func:`loglik_and_gradient`). :data:`EM_STEP`: one EM
    iteration from ``theta``, written back into ``theta``; returns 1.0, or 0.0 when it cannot
    be taken. :data:`EB_ESTIMATES`: the EB estimates at ``theta`` into ``a``, ``b``, ``V``,
    ``A_inv``; returns ``s2``. Arrays a mode does not use may have length 0. ``work`` is left
    holding the factors at ``theta``; ``rng`` is not drawn from (None will do).
    """
    p = stats.Fty.shape[0]
    d = work.C.shape[0]
    flat = FixedPrior(np.zeros((p, p)), np.zeros(p), 0.0, p)
    if mode == EM_STEP:
        s2, _ = decode_theta(theta, structure, priors, work.C)
        _, ok = integrate(work, stats, structure, s2, flat)
        if not ok:
            return 0.0
        new_s2 = em_iteration(rng, work, stats, structure, s2, reml, a, b, V, A_inv, T)
        if not np.isfinite(new_s2):
            return 0.0
        for i in range(T.shape[0]):
            for j in range(T.shape[1]):
                if not np.isfinite(T[i, j]):
                    return 0.0
        if structure.sigma_known == 0:
            s2 = new_s2
        return 1.0 if encode_theta(s2, T, structure, theta) else 0.0
    if mode == EB_ESTIMATES:
        s2, _ = decode_theta(theta, structure, priors, work.C)
        integrate(work, stats, structure, s2, flat)
        group_moments(rng, work, stats, structure, s2, a, b, V, A_inv)
        return s2
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


def _none(*shape):
    return np.empty(shape)


def loglik_and_gradient(rng, theta, work, stats, structure, priors, reml, grad):
    """Value of :func:`profile_loglik` at ``theta``, with its exact gradient written into ``grad``.

    The gradient is the score of :func:`samplers.gaussian.score` (Fisher's identity) carried
    to ``theta`` by the chain rule. ``work`` is left holding the factors at ``theta``;
    ``rng`` is not drawn from (None will do). Where the log-likelihood is not finite the
    gradient is set to nan.
    """
    return evaluate(VALUE_AND_GRADIENT, rng, theta, work, stats, structure, priors, reml, grad, _none(0),
                    _none(0, 0), _none(0, 0, 0), _none(0, 0), _none(0, 0))


def em_step(rng, theta, work, stats, structure, priors, reml, a, b, V, A_inv, T):
    """One EM iteration from ``theta``, written back into ``theta``; False when it cannot be taken.

    The E-step's moments and the closed-form M-step of :func:`samplers.gaussian.em_iteration`
    at ``theta`` (for REML with the fixed effects integrated out); ``a``, ``b``, ``V``,
    ``A_inv`` and ``T`` are work arrays.
    """
    return evaluate(EM_STEP, rng, theta, work, stats, structure, priors, reml, _none(0), a, b, V, A_inv, T) == 1.0


def eb_estimates(rng, theta, work, stats, structure, priors, a, b, V, A_inv):
    """The EB estimates at ``theta`` (:func:`samplers.gaussian.group_moments`); returns ``s2``."""
    return evaluate(EB_ESTIMATES, rng, theta, work, stats, structure, priors, False, _none(0), a, b, V, A_inv,
                    _none(0, 0))


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
