"""Likelihood-ratio tests between nested fits, with the boundary correction for variances.

When the smaller model sets a variance to zero, the null value lies on the boundary of the
parameter space and the statistic is not chi-square with the difference in parameters as
degrees of freedom. For one added random coefficient (its variance and its covariances with
``k`` coefficients already random) the null distribution is the equal mixture of
chi-square(k) and chi-square(k + 1) (Self & Liang 1987; Stram & Lee 1994); with k = 0, the
test of a single variance, the first component is a point mass at zero. Adding several
random coefficients at once is reported with the plain chi-square p-value, which is then
conservative, and marked as such.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import chdtrc  # chi-square survival function (lighter to import than scipy.stats)

from bayeshlm.model import check_result, model_first, refuse_variance_model
from samplers.gaussian import integrate, workspace
from samplers.types import N_OBS, YTY, flat_fixed_prior


@dataclass(frozen=True)
class LRTResult:
    """Outcome of a likelihood-ratio test."""

    statistic: float
    df: int
    p_value: float
    p_value_naive: float
    mixture: bool
    method: str
    description: str

    def __str__(self):
        kind = "chi-square mixture (boundary)" if self.mixture else "chi-square"
        return (f"{self.description}: LR = {self.statistic:.4f} on {self.df} df, p = {self.p_value:.4g} "
                f"({kind}; {self.method.upper()})")


# A statistic this small against the log-likelihoods is zero up to rounding: the larger model
# found nothing the smaller one did not (typically an added variance estimated at zero).
_ZERO_TOL = 1e-9


def _mixture_p(stat, k):
    """p-value under 0.5 chi2(k) + 0.5 chi2(k + 1) (chi2(0) = point mass at 0); 1 for a statistic of 0."""
    if stat <= 0:
        return 1.0
    upper = chdtrc(k + 1, stat)
    lower = chdtrc(k, stat) if k > 0 else 0.0
    return 0.5 * lower + 0.5 * upper


def _statistic(smaller, larger):
    """``2 (loglik_larger - loglik_smaller)``, set to 0 when it is zero up to rounding."""
    stat = 2.0 * (larger.loglik - smaller.loglik)
    scale = max(1.0, abs(larger.loglik), abs(smaller.loglik))
    return 0.0 if stat <= _ZERO_TOL * scale else float(stat)


def _factor_groups(fit):
    """The group labels of each grouping factor of a fit: ``{factor: set of labels}``.

    Fits with several factors name their groups ``"<factor>=<label>"``; a one-factor fit
    names them by label alone, and its factor (unnamed in the fit) is keyed by None.
    """
    groups = list(fit.labels.get("groups", []))
    coefs = list(fit.labels.get("coef", []))
    if not coefs:
        return {}
    if any("|" in c for c in coefs):
        out = {}
        for g in groups:
            factor, _, label = str(g).partition("=")
            out.setdefault(factor, set()).add(label)
        return out
    return {None: {str(g) for g in groups}}


def _random_terms(fit, other):
    """The random coefficients of `fit` as ``(factor, coefficient)`` pairs, factors named where `other` allows.

    A one-factor fit does not record its factor's name; it is taken from `other` when one of
    its factors has the same groups (``(1 | batch)`` against ``(1 | batch/cask)``).
    """
    coefs = list(fit.labels.get("coef", []))
    if any("|" in c for c in coefs):
        return [tuple(reversed(c.rsplit("|", 1))) for c in coefs]
    mine = _factor_groups(fit).get(None, set())
    theirs = _factor_groups(other)
    factor = None  # the other fit has no random part: nothing to match
    if theirs:
        same = [name for name, labels in theirs.items() if labels == mine]
        factor = same[0] if same else _UNMATCHED
    return [(factor, c) for c in coefs]


_UNMATCHED = "\x00"  # the factor of a one-factor fit whose groups are those of no factor of the other fit


def _name(term):
    factor, coef = term
    if factor is None:
        return coef
    if factor == _UNMATCHED:
        return f"{coef} (on a grouping factor the other model does not have)"
    return f"{coef}|{factor}"


def lrt(smaller, larger):
    """Likelihood-ratio test of two nested fits from :func:`bayeshlm.fit_em`.

    Random coefficients are matched by factor and coefficient, so that a fit with one
    grouping factor is recognised inside a fit with more (``(1 | batch)`` in
    ``(1 | batch/cask)``: the larger model adds the level ``batch:cask``). When the larger
    model adds one random coefficient (with its covariances with the ``k`` coefficients it
    joins, ``k = df - 1``; a whole new level with a random intercept is ``k = 0``), the
    null distribution is the boundary mixture ``0.5 chi2(k) + 0.5 chi2(k + 1)``. A statistic
    that is zero up to rounding (below 1e-9 of the log-likelihoods) is 0, with p = 1.

    Parameters
    ----------
    smaller, larger : EMResult
        Fits of nested models to the same observations, by the same method. REML fits are
        comparable only when the fixed parts are the same (the restricted likelihood
        depends on the fixed design); compare different fixed parts with ML fits.

    Returns
    -------
    LRTResult

    Raises
    ------
    ValueError
        For fits by different methods, of different observations, REML fits with different
        fixed parts, a second model without more parameters, or random coefficients of the
        first model that the second does not have (the models are not nested).
    """
    if smaller.method != larger.method:
        raise ValueError(f"fits by different methods ({smaller.method}, {larger.method}) are not comparable")
    if smaller.n_obs != larger.n_obs:
        raise ValueError(f"the fits use different observations ({smaller.n_obs} and {larger.n_obs} rows)")
    if smaller.method == "reml" and list(smaller.fixed) != list(larger.fixed):
        raise ValueError("REML fits with different fixed effects are not comparable; refit with method='ml'")
    df = larger.n_params - smaller.n_params
    if df <= 0:
        raise ValueError(f"the second model must have more parameters than the first ({larger.n_params} vs "
                         f"{smaller.n_params})")
    small_terms, large_terms = _random_terms(smaller, larger), _random_terms(larger, smaller)
    missing = [t for t in small_terms if t not in large_terms]
    if missing:
        raise ValueError(f"the first model's random {', '.join(_name(t) for t in missing)} is not in the second "
                         "model: the models are not nested")
    stat = _statistic(smaller, larger)
    naive = float(chdtrc(df, stat))
    added = [t for t in large_terms if t not in small_terms]
    same_fixed = list(smaller.fixed) == list(larger.fixed)
    mixture = same_fixed and len(added) == 1
    p = float(_mixture_p(stat, df - 1)) if mixture else naive
    new_levels = {t[0] for t in added} - {t[0] for t in small_terms}
    if len(added) == 1 and new_levels and small_terms:
        what = f"adding the level '{added[0][0]}' (random {added[0][1]})"
    elif added:
        what = f"adding random {', '.join(_name(t) for t in added)}"
    else:
        what = "the larger model"
    return LRTResult(stat, df, p, naive, mixture, smaller.method, f"test of {what}")


def lrt_hierarchy(model, fit):
    """Test the hierarchical model against the pooled regression nested in it (all ``T = 0``).

    The pooled model has the same fixed effects and no group coefficients; its likelihood is
    the tree likelihood at ``T = 0``, maximised over sigma in closed form.

    Parameters
    ----------
    model : Model
        The model that was fitted (level-1 variance estimated).
    fit : EMResult
        ML or REML fit of ``model``.

    Returns
    -------
    LRTResult
        The boundary mixture applies when the model has a single random coefficient.
    """
    model, fit = model_first(model, fit, "lrt_hierarchy")
    check_result(model, fit, "the fit")
    refuse_variance_model(model, "the test against the pooled regression (lrt_hierarchy)")
    if model.sigma_known:
        raise ValueError("with known level-1 variances the pooled model has no free parameter; "
                         "compare the log-likelihood at T = 0 directly")
    stats = model.stats
    d = stats.Xty.shape[1]
    p = stats.Fty.shape[0]
    flat = flat_fixed_prior(p)
    st = model.structure
    work = workspace(stats, st)  # C = 0: the pooled model
    n_obs = stats.scal[N_OBS]
    # at T = 0 the fit is OLS: RSS from the statistics, sigma^2 = RSS / N (ML) or / (N - p) (REML)
    integrate(work, stats, st, 1.0, flat)
    v = np.linalg.solve(np.tril(work.LA), work.cA)
    rss = stats.scal[YTY] - v @ v
    denom = n_obs if fit.method == "ml" else n_obs - p
    s2 = rss / denom
    ll, _ = integrate(work, stats, st, s2, flat)
    if fit.method == "ml":
        ll += np.sum(np.log(np.diag(work.LA))) - 0.5 * p * np.log(2.0 * np.pi)
    # from the kernels' basis to the user's units, as the fit's log-likelihood
    ll += model.basis.loglik_offset(n_obs, restricted=fit.method == "reml")
    stat = max(0.0, 2.0 * (fit.loglik - ll))
    df = model.n_theta - 1
    naive = float(chdtrc(df, stat))
    mixture = d == 1
    p_value = float(_mixture_p(stat, df - 1)) if mixture else naive
    return LRTResult(stat, df, p_value, naive, mixture, fit.method,
                     f"test of the hierarchy (random {random_terms_text(model)}) against the pooled regression")


def _and(words):
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def random_terms_text(model):
    """The random coefficients of a model by factor, as a sentence reads them.

    ``"Intercept and days by subject"``; ``"Intercept by batch:cask, Intercept by batch"``
    (the kernels name a coefficient of a model with several factors ``coef|factor``).
    """
    by_factor = {}
    for name in model.coef_names:
        coef, _, factor = name.rpartition("|") if "|" in name else (name, "", model.factor)
        by_factor.setdefault(factor, []).append(coef)
    return ", ".join(f"{_and(coefs)} by {factor}" for factor, coefs in by_factor.items())
