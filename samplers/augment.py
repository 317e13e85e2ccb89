"""The level-1 steps of a non-Gaussian sweep: data augmentation, and an exact correction where none exists.

A sweep of a model with a binomial or Poisson level 1 is the Gaussian sweep on working
statistics that this module forms from the rows (docs/design.md, "Non-Gaussian level 1"):

* **logit link** (binomial, Bernoulli): Pólya–Gamma augmentation (Polson, Scott & Windle
  2013). Given the linear predictor ``eta_i``, ``omega_i ~ PG(n_i, eta_i)``; given
  ``omega``, the likelihood in ``(a, b)`` is Gaussian with precision weights ``omega_i`` and
  working response ``kappa_i / omega_i - offset_i``, ``kappa_i = y_i - n_i / 2``.
* **probit link**: the augmentation of Albert & Chib (1993). Each of the row's ``n_i``
  trials has a latent ``u ~ N(eta_i, 1)``, positive for a success and negative for a
  failure; given them the likelihood is Gaussian with weight ``n_i`` and working response
  ``mean(u) - offset_i``.

Everything here reads the rows once per sweep (the only ``O(n_obs)`` work of a non-Gaussian
sweep); :func:`samplers.suffstats.recompute` turns the working rows into the statistics the
Gaussian passes read.
"""

import math

import numpy as np
from numba import njit

from samplers.gaussian import draw_coefficients, finest_coefficients, forget_statistics, integrate
from samplers.glm import BINOMIAL_LOGIT, BINOMIAL_PROBIT, POISSON_LOG, working
from samplers.polyagamma import draw_pg
from samplers.suffstats import recompute
from samplers.theta import decode_theta
from samplers.types import AUG_LOGLIK, AUG_MEAN_OMEGA, AUG_STALE, FACTORED

_SQRT2 = math.sqrt(2.0)


@njit(cache=True, nogil=True)
def _softplus(x):
    """``log(1 + exp(x))`` without overflow."""
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


@njit(cache=True, nogil=True)
def row_loglik(family, y, n, const, eta):
    """``log p(y | eta)`` of one row; ``const`` its normalising constant (binomial coefficient, ``-log y!``)."""
    if family == POISSON_LOG:
        return const + y * eta - math.exp(eta)
    if family == BINOMIAL_LOGIT:
        return const - y * _softplus(-eta) - (n - y) * _softplus(eta)
    p = 0.5 * math.erfc(-eta / _SQRT2)
    q = 0.5 * math.erfc(eta / _SQRT2)
    return const + y * math.log(max(p, 1e-300)) + (n - y) * math.log(max(q, 1e-300))


@njit(cache=True, nogil=True)
def _lower_truncated_normal(rng, lo):
    """A draw of ``N(0, 1)`` truncated to ``(lo, inf)``, exact.

    Below 0 by rejection from the normal itself (acceptance above 1/2); above it from a
    shifted exponential with rate ``(lo + sqrt(lo^2 + 4)) / 2`` (Robert 1995), whose
    acceptance is above 0.76 for every ``lo >= 0``.
    """
    if lo <= 0.0:
        while True:
            x = rng.standard_normal()
            if x > lo:
                return x
    rate = 0.5 * (lo + math.sqrt(lo * lo + 4.0))
    while True:
        x = lo + rng.standard_exponential() / rate
        if rng.random() <= math.exp(-0.5 * (x - rate) * (x - rate)):
            return x


@njit(cache=True, nogil=True)
def linear_predictor(aug, structure, work, a, b, eta, with_loglik=True):
    """``eta_i = offset_i + F_i a + X_i b_g(i)`` for every row; returns ``sum_i log p(y_i | eta_i)``.

    With a log-likelihood store (``aug.ll_out`` has columns), the rows' values are also
    kept in ``aug.ll_row`` for :func:`keep_loglik`. Without ``with_loglik`` (a draw that is
    not kept) only ``eta`` is formed, and nan returned.
    """
    coef = finest_coefficients(work, structure, b)
    F, X, g = aug.F, aug.X, aug.gidx
    p, d = F.shape[1], X.shape[1]
    keep = aug.ll_row.shape[0] > 0
    total = 0.0
    for i in range(eta.shape[0]):
        e = aug.offset[i]
        for q in range(p):
            e += F[i, q] * a[q]
        j = g[i]
        for k in range(d):
            e += X[i, k] * coef[j, k]
        eta[i] = e
        if with_loglik:
            ll = row_loglik(aug.family, aug.y[i], aug.n[i], aug.const[i], e)
            if keep:
                aug.ll_row[i] = ll
            total += ll
    return total if with_loglik else np.nan


@njit(cache=True, nogil=True)
def keep_loglik(aug, k):
    """Add the rows' log-likelihoods at the current draw into kept draw ``k`` of ``aug.ll_out``."""
    if aug.ll_out.shape[1] == 0 or k >= aug.ll_out.shape[0]:
        return
    out = aug.ll_out[k]
    out[:] = 0.0
    for i in range(aug.ll_row.shape[0]):
        out[aug.out_idx[i]] += aug.ll_row[i]


@njit(cache=True, nogil=True)
def forget(state):
    """The statistics were replaced: nothing the chain computed from the old ones may be reused."""
    state.ibuf[FACTORED] = 0
    forget_statistics(state.work)
    forget_statistics(state.scratch)


@njit(cache=True, nogil=True)
def augment(rng, aug):
    """Draw the augmentation given ``aug.eta`` (logit, probit) and recompute ``aug.stats`` from it.

    Logit: ``omega_i ~ PG(n_i, eta_i)``, or, with ``aug.scal[AUG_MEAN_OMEGA]`` set, its
    conditional mean ``n_i tanh(eta_i / 2) / (2 eta_i)`` instead of a draw: a deliberately
    wrong step, for the test that shows SBC rejects it. Probit: the trials' latent normals.
    """
    family = aug.family
    mean_omega = aug.scal[AUG_MEAN_OMEGA] != 0.0
    for i in range(aug.y.shape[0]):
        e = aug.eta[i]
        n = aug.n[i]
        y = aug.y[i]
        if family == BINOMIAL_LOGIT:
            if mean_omega:
                w = 0.25 * n if abs(e) < 1e-8 else n * math.tanh(0.5 * e) / (2.0 * e)
            else:
                w = draw_pg(rng, int(n), e)
            aug.w[i] = w
            aug.z[i] = (y - 0.5 * n) / w - aug.offset[i]
        else:  # probit: y successes (u > 0) and n - y failures (u < 0)
            total = 0.0
            for _ in range(int(y)):
                total += e + _lower_truncated_normal(rng, -e)
            for _ in range(int(n - y)):
                total += e - _lower_truncated_normal(rng, e)
            aug.w[i] = n
            aug.z[i] = total / n - aug.offset[i]
    # the sums of log w are a constant of the working likelihood within the sweep: not formed
    recompute(aug.stats, aug.z, aug.F, aug.X, aug.gidx, aug.w, False)


@njit(cache=True, nogil=True)
def working_rows(aug, eta, w, z):
    """IRLS working weights and responses at ``eta``: ``w_i`` the information, ``z_i = eta_i + r_i - offset_i``."""
    for i in range(eta.shape[0]):
        wi, ri = working(aug.family, aug.y[i], aug.n[i], eta[i])
        w[i] = wi
        z[i] = eta[i] + ri - aug.offset[i]


@njit(cache=True, nogil=True)
def seek_mode(rng, aug, state, structure, priors, n_iter):
    """Start a chain near the conditional mode of ``(a, b)`` given its ``theta``.

    ``n_iter`` iterations of iteratively reweighted least squares from ``aug.eta``: the
    working statistics at the current predictor, then the posterior mean of ``(a, b)`` in
    that Gaussian model (the Newton step of the penalised log-likelihood), stopping when the
    predictor moves less than 1e-8. ``aug.stats`` is left as the working statistics at the
    last predictor, from which the chain draws its first coefficients. A start far from the
    mode would cost the chain warm-up sweeps.
    """
    work = state.work
    decode_theta(state.theta, structure, priors, work.C)
    eta_new = np.empty(aug.eta.shape[0])
    for _ in range(n_iter):
        working_rows(aug, aug.eta, aug.w, aug.z)
        recompute(aug.stats, aug.z, aug.F, aug.X, aug.gidx, aug.w)
        forget(state)
        _, ok = integrate(work, aug.stats, structure, 1.0, priors.fixed)
        if not ok:
            return
        draw_coefficients(rng, work, aug.stats, structure, 1.0, state.a, state.b, False)
        linear_predictor(aug, structure, work, state.a, state.b, eta_new)
        moved = 0.0
        for i in range(eta_new.shape[0]):
            moved = max(moved, abs(eta_new[i] - aug.eta[i]))
        if not np.isfinite(moved):  # a step that overflowed: start from the last finite predictor
            break
        aug.eta[:] = eta_new
        if moved < 1e-8:
            break
    working_rows(aug, aug.eta, aug.w, aug.z)
    recompute(aug.stats, aug.z, aug.F, aug.X, aug.gidx, aug.w)
    forget(state)


@njit(cache=True, nogil=True)
def refresh(aug, state, structure, with_loglik=True):
    """Bring ``aug.eta`` (and, with ``with_loglik``, the log-likelihood) up to the current ``(a, b)`` if stale."""
    if aug.scal[AUG_STALE] != 0.0:
        aug.scal[AUG_LOGLIK] = linear_predictor(aug, structure, state.work, state.a, state.b, aug.eta, with_loglik)
        aug.scal[AUG_STALE] = 0.0


__all__ = ["BINOMIAL_LOGIT", "BINOMIAL_PROBIT", "POISSON_LOG", "augment", "forget", "keep_loglik",
           "linear_predictor", "refresh", "row_loglik", "seek_mode", "working_rows"]
