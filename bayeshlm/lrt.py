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

from samplers.tree import upward, workspace
from samplers.types import flat_fixed_prior


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


def _mixture_p(stat, k):
    """p-value under 0.5 chi2(k) + 0.5 chi2(k + 1) (chi2(0) = point mass at 0)."""
    upper = chdtrc(k + 1, stat)
    lower = chdtrc(k, stat) if k > 0 else (0.0 if stat > 0 else 1.0)
    return 0.5 * lower + 0.5 * upper


def lrt(smaller, larger):
    """Likelihood-ratio test of two nested fits from :func:`bayeshlm.fit_em`.

    Parameters
    ----------
    smaller, larger : EMResult
        Fits of nested models to the same observations, by the same method. REML fits are
        comparable only when the fixed parts are the same (the restricted likelihood
        depends on the fixed design); compare different fixed parts with ML fits.

    Returns
    -------
    LRTResult
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
    stat = max(0.0, 2.0 * (larger.loglik - smaller.loglik))
    naive = float(chdtrc(df, stat))
    added = [c for c in larger.labels["coef"] if c not in smaller.labels["coef"]]
    same_fixed = list(smaller.fixed) == list(larger.fixed)
    mixture = same_fixed and len(added) == 1
    p = float(_mixture_p(stat, df - 1)) if mixture else naive
    what = f"adding random {', '.join(added)}" if added else "the larger model"
    return LRTResult(stat, df, p, naive, mixture, smaller.method, f"test of {what}")


def lrt_hierarchy(fit, model):
    """Test the hierarchical model against the pooled regression nested in it (all ``T = 0``).

    The pooled model has the same fixed effects and no group coefficients; its likelihood is
    the tree likelihood at ``T = 0``, maximised over sigma in closed form.

    Parameters
    ----------
    fit : EMResult
        ML or REML fit of ``model``.
    model : Model
        The model that was fitted (level-1 variance estimated).

    Returns
    -------
    LRTResult
        The boundary mixture applies when the model has a single random coefficient.
    """
    if model.sigma_known:
        raise ValueError("with known level-1 variances the pooled model has no free parameter; "
                         "compare the log-likelihood at T = 0 directly")
    stats = model.stats
    d = stats.Xty.shape[1]
    p = stats.Fty.shape[0]
    flat = flat_fixed_prior(p)
    C, L, LA, c = workspace(stats)  # C = 0: the pooled model
    n_obs = stats.scal[1]
    # at T = 0 the fit is OLS: RSS from the statistics, sigma^2 = RSS / N (ML) or / (N - p) (REML)
    upward(stats, 1.0, C, flat, L, LA, c)
    v = np.linalg.solve(np.tril(LA), c)
    rss = stats.scal[0] - v @ v
    denom = n_obs if fit.method == "ml" else n_obs - p
    s2 = rss / denom
    ll, _ = upward(stats, s2, C, flat, L, LA, c)
    if fit.method == "ml":
        ll += np.sum(np.log(np.diag(LA))) - 0.5 * p * np.log(2.0 * np.pi)
    # from the kernels' basis to the user's units, as the fit's log-likelihood
    ll += model.basis.loglik_offset(n_obs, restricted=fit.method == "reml")
    stat = max(0.0, 2.0 * (fit.loglik - ll))
    df = model.n_theta - 1
    naive = float(chdtrc(df, stat))
    mixture = d == 1
    p_value = float(_mixture_p(stat, df - 1)) if mixture else naive
    return LRTResult(stat, df, p_value, naive, mixture, fit.method,
                     f"test of the hierarchy (random {', '.join(model.coef_names)} by {model.factor}) "
                     "against the pooled regression")
