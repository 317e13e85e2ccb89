"""t and F tests of the fixed effects of an EM fit with Satterthwaite's degrees of freedom.

A Wald test of the fixed effects treats ``Cov(a_hat) = V(theta)`` as known; with few groups
it is not, and the t statistic of a contrast ``l'a`` is closer to a t distribution whose
degrees of freedom match the variance of ``l'V(theta_hat)l`` to that of a scaled chi-square
(Satterthwaite 1946; Giesbrecht & Burns 1985): ``nu = 2 (l'Vl)^2 / (g' A g)``, ``g`` the
gradient of ``l'V(theta)l`` in the variance components and ``A`` their covariance, the
inverse observed information of the fit's (ML or REML) log-likelihood. Both are taken in the
kernels' unconstrained ``theta``: at an interior optimum the result does not depend on how
the variance components are parametrised, so it equals lmerTest's, which works with lme4's
``(theta, sigma)``. An F test of ``q`` contrasts rotates them to the eigenvectors of
``L V L'``, takes each one's ``nu_i``, and gives the denominator ``2 E / (E - q)`` with
``E = sum nu_i / (nu_i - 2)`` (Fai & Cornelius 1996), 2 when some ``nu_i <= 2``.
docs/design.md, "Small-sample inference".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from bayeshlm.em import EMResult, fixed_cov_at, observed_information
from bayeshlm.model import check_result, model_first

__all__ = ["ContrastTest", "contrast_test", "t_tests"]

DDF = ("satterthwaite", "normal")


def _check(model, fit, ddf):
    model, fit = model_first(model, fit, "t_tests")
    if not isinstance(fit, EMResult):
        raise TypeError(f"small-sample tests are of an EM fit (bayeshlm.fit_em), got {type(fit).__name__}")
    check_result(model, fit, "the fit")
    if ddf not in DDF:
        raise ValueError(f"ddf must be one of {DDF}, got {ddf!r}")
    if ddf == "satterthwaite":
        if not model.gaussian:
            raise ValueError(f"Satterthwaite's degrees of freedom are for Gaussian models; a {model.family} model's "
                             "fixed effects are tested by z (ddf='normal'), as glmer does")
        if fit.boundary:
            raise ValueError(f"Satterthwaite's degrees of freedom need the variance components inside their range; "
                             f"{', '.join(fit.boundary)} is at zero: refit without it")
    return model, fit


def _contrasts(model, L):
    """``L`` as a 2-D array of contrasts (rows) on the fixed effects in the model's order."""
    names = list(model.fixed_names)
    if isinstance(L, dict):
        unknown = [k for k in L if k not in names]
        if unknown:
            raise ValueError(f"unknown fixed effect {unknown[0]!r} in the contrast; the fixed effects are {names}")
        L = [[float(L.get(n, 0.0)) for n in names]]
    L = np.atleast_2d(np.asarray(L, dtype=np.float64))
    if L.shape[1] != len(names):
        raise ValueError(f"a contrast has one coefficient per fixed effect ({len(names)}: {names}), got {L.shape[1]}")
    if not np.all(np.isfinite(L)) or np.linalg.matrix_rank(L) < L.shape[0]:
        raise ValueError("the contrasts must be finite and linearly independent")
    return L


def _satterthwaite(model, fit, L):
    """Each row's ``nu = 2 (l'Vl)^2 / (g'Ag)`` at the fit's variance components."""
    theta = np.asarray(fit.theta, dtype=np.float64)
    A = np.linalg.inv(observed_information(model, theta, fit.method))
    G = np.empty((L.shape[0], theta.size))
    for i in range(theta.size):
        h = 1e-4 * max(1.0, abs(theta[i]))
        up, down = theta.copy(), theta.copy()
        up[i] += h
        down[i] -= h
        G[:, i] = (np.einsum("rp,pq,rq->r", L, fixed_cov_at(model, up), L)
                   - np.einsum("rp,pq,rq->r", L, fixed_cov_at(model, down), L)) / (2 * h)
    var = np.einsum("rp,pq,rq->r", L, fit.vcov_fixed, L)
    return 2.0 * var**2 / np.einsum("ri,ij,rj->r", G, A, G)


def t_tests(model, fit, *, ddf="satterthwaite"):
    """Each fixed effect's t test, as lmerTest's ``summary(fit)`` prints it.

    Parameters
    ----------
    model : Model
        The model of the fit.
    fit : EMResult
        Its REML (or ML) fit.
    ddf : {"satterthwaite", "normal"}
        Satterthwaite's degrees of freedom, or none (the z test of :meth:`EMResult.fixed_table`).

    Returns
    -------
    pandas.DataFrame
        Index ``term``; columns ``estimate, se, df, t, p_value`` (two-sided).
    """
    from scipy.stats import norm
    from scipy.stats import t as student

    model, fit = _check(model, fit, ddf)
    names = list(model.fixed_names)
    est = np.array([fit.fixed[n] for n in names])
    se = np.sqrt(np.diag(fit.vcov_fixed))
    stat = est / se
    if ddf == "normal":
        df = np.full(len(names), np.inf)
        p = 2 * norm.sf(np.abs(stat))
    else:
        df = _satterthwaite(model, fit, np.eye(len(names)))
        p = 2 * student.sf(np.abs(stat), df)
    table = pd.DataFrame({"estimate": est, "se": se, "df": df, "t": stat, "p_value": p}, index=names)
    table.index.name = "term"
    return table


@dataclass(frozen=True)
class ContrastTest:
    """An F test of ``q`` linear contrasts ``L a = 0`` of the fixed effects (a t test when ``q = 1``)."""

    L: np.ndarray
    estimate: np.ndarray
    se: np.ndarray
    F: float
    num_df: int
    den_df: float
    p_value: float
    ddf: str

    def __str__(self) -> str:
        return (f"F = {self.F:.4f} on {self.num_df} and {self.den_df:.2f} df, p = {self.p_value:.4g} "
                f"({'Satterthwaite' if self.ddf == 'satterthwaite' else 'no small-sample correction'})")


def contrast_test(model, fit, L, *, ddf="satterthwaite"):
    """F test of the linear contrasts ``L a = 0`` (lmerTest's ``contest(fit, L, joint = TRUE)``).

    Parameters
    ----------
    model : Model
    fit : EMResult
    L : array_like (q, p) or (p,), or dict
        Contrasts on the fixed effects in the model's order, or ``{term: coefficient}`` for one.
    ddf : {"satterthwaite", "normal"}

    Returns
    -------
    ContrastTest
        ``F = (La)'(L V L')^-1 (La) / q`` with ``q`` and the denominator degrees of freedom
        (infinite with ``ddf="normal"``: a chi-square test divided by ``q``).
    """
    from scipy.stats import chi2
    from scipy.stats import f as fisher

    model, fit = _check(model, fit, ddf)
    L = _contrasts(model, L)
    a = np.array([fit.fixed[n] for n in model.fixed_names])
    q = L.shape[0]
    M = L @ fit.vcov_fixed @ L.T
    est = L @ a
    F = float(est @ np.linalg.solve(M, est) / q)
    if ddf == "normal":
        den = np.inf
        p = float(chi2.sf(q * F, q))
    else:
        values, vectors = np.linalg.eigh(M)
        nu = _satterthwaite(model, fit, vectors.T @ L)
        if q == 1 or np.all(np.abs(nu - nu[0]) < 1e-8):
            den = float(nu[0])
        elif np.any(nu <= 2):
            den = 2.0
        else:
            E = float(np.sum(nu / (nu - 2)))
            den = 2 * E / (E - q)
        p = float(fisher.sf(F, q, den))
    return ContrastTest(L, est, np.sqrt(np.diag(M)), F, q, float(den), p, ddf)
