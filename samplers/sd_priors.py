"""The priors on a standard deviation: each one's code, kernel density, normaliser and random draw.

Every prior on sigma or on a group SD is known by an integer code (``PRIOR_*``) and two
parameters, the form in which it crosses into the kernels (:class:`samplers.types.Priors`).
For each code this module holds, side by side (docs/design.md, "Priors on standard
deviations"):

* :func:`sd_log_prior` -- its log density up to a constant, compiled (the samplers' and the
  likelihood's);
* :func:`sd_log_norm` -- the constant that normalises it (the marginal likelihood's);
* :func:`draw_sd` -- a random draw (prior predictive draws, SBC and Geweke tests).

Adding a prior is adding a code and its three branches here, and the class that names it
for users in :mod:`bayeshlm.priors` (its ``sd_code``).
"""

import numpy as np
from numba import njit
from scipy.special import gammaln

PRIOR_FLAT = 0  # improper uniform on (0, inf)
PRIOR_HALF_NORMAL = 1  # params (scale, -)
PRIOR_HALF_T = 2  # params (nu, scale); half-Cauchy is nu = 1
PRIOR_UNIFORM = 3  # params (upper, -): uniform on (0, upper)
PRIOR_INV_GAMMA = 4  # params (alpha, beta): inverse-gamma on the variance


@njit(cache=True, nogil=True)
def sd_log_prior(kind, par, x):
    """Log prior density (up to :func:`sd_log_norm`) of a standard deviation ``x > 0``."""
    if kind == PRIOR_FLAT:
        return 0.0
    if kind == PRIOR_HALF_NORMAL:
        u = x / par[0]
        return -0.5 * u * u
    if kind == PRIOR_HALF_T:
        u = x / par[1]
        return -0.5 * (par[0] + 1.0) * np.log1p(u * u / par[0])
    if kind == PRIOR_UNIFORM:
        return 0.0 if x < par[0] else -np.inf
    if kind == PRIOR_INV_GAMMA:
        v = x * x
        return -(par[0] + 1.0) * np.log(v) - par[1] / v + np.log(x)
    return -np.inf


def sd_log_norm(kind, par, role="the SD"):
    """Log normalising constant of :func:`sd_log_prior`: ``log p(x) = sd_log_prior(x) + sd_log_norm``.

    Raises ValueError for the flat prior, which has none (``role`` names the parameter).
    """
    if kind == PRIOR_FLAT:
        raise ValueError(f"the prior of {role} is flat (improper): the marginal likelihood is not defined")
    if kind == PRIOR_HALF_NORMAL:
        return -0.5 * np.log(np.pi / 2.0) - np.log(par[0])
    if kind == PRIOR_HALF_T:
        nu, s = par[0], par[1]
        return np.log(2.0) + gammaln((nu + 1) / 2) - gammaln(nu / 2) - 0.5 * np.log(nu * np.pi) - np.log(s)
    if kind == PRIOR_UNIFORM:
        return -np.log(par[0])
    if kind == PRIOR_INV_GAMMA:  # density of the SD x: IG(v = x^2) * 2x; the kernel keeps log x only
        return par[0] * np.log(par[1]) - gammaln(par[0]) + np.log(2.0)
    raise ValueError(f"unknown prior code {kind} for {role}")


def draw_sd(kind, par, rng, role="the SD"):
    """One draw of a standard deviation from the prior ``(kind, par)``.

    Raises ValueError for the flat prior, which is improper (``role`` names the parameter).
    """
    if kind == PRIOR_HALF_NORMAL:
        return abs(rng.normal(0.0, par[0]))
    if kind == PRIOR_HALF_T:
        t = rng.standard_cauchy() if par[0] == 1.0 else rng.standard_t(par[0])
        return abs(t) * par[1]
    if kind == PRIOR_UNIFORM:
        return rng.uniform(0.0, par[0])
    if kind == PRIOR_INV_GAMMA:
        return float(np.sqrt(1.0 / rng.gamma(par[0], 1.0 / par[1])))
    if kind == PRIOR_FLAT:
        raise ValueError(f"the prior of {role} is flat, which is improper: draws from the prior need proper priors")
    raise ValueError(f"unknown prior code {kind} for {role}")
