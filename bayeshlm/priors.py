"""Prior distributions a user can choose, and their translation into kernel arrays.

Priors are given to :func:`bayeshlm.hlm` as a dict keyed by the role of the parameter:

``"fixed"``, ``"fixed[<term>]"``
    :class:`Normal` or :class:`Flat` on the fixed effects (all, or one term).
``"sigma"``
    Prior on the level-1 standard deviation.
``"sd"``, ``"sd[<coef>]"``
    Prior on the standard deviation of the group coefficients (all, or one).
``"corr"``
    :class:`LKJ` on the correlations within each covariance block.
``"cov"``
    :class:`InverseWishart` on each correlated block as a whole (replaces ``sd`` and
    ``corr`` for that block).

Standard-deviation priors: :class:`HalfNormal`, :class:`HalfStudentT`, :class:`HalfCauchy`,
:class:`Uniform` (on the SD), :class:`InverseGamma` (on the variance), :class:`Flat`
(improper uniform on the SD). Anything not given gets the default of :func:`default_priors`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from samplers.types import (
    PRIOR_FLAT,
    PRIOR_HALF_NORMAL,
    PRIOR_HALF_T,
    PRIOR_INV_GAMMA,
    PRIOR_UNIFORM,
    Priors,
)


class PriorError(ValueError):
    """A prior specification that cannot be used."""


def _positive(name, **values):
    for key, value in values.items():
        if not (isinstance(value, (int, float, np.floating, np.integer)) and math.isfinite(value) and value > 0):
            raise PriorError(f"{name}: parameter {key} must be a finite number > 0, got {value!r}")


@dataclass(frozen=True)
class Flat:
    """Improper uniform prior (on the real line for fixed effects, on (0, inf) for an SD)."""

    def __str__(self):
        return "Flat()"


@dataclass(frozen=True)
class Normal:
    """Normal prior ``N(mu, sigma^2)`` on a fixed effect."""

    mu: float = 0.0
    sigma: float = 1.0

    def __post_init__(self):
        _positive("Normal", sigma=self.sigma)
        if not math.isfinite(self.mu):
            raise PriorError(f"Normal: mu must be finite, got {self.mu!r}")

    def __str__(self):
        return f"Normal(mu={self.mu:.4g}, sigma={self.sigma:.4g})"


@dataclass(frozen=True)
class HalfNormal:
    """Half-normal prior on a standard deviation, density proportional to ``exp(-x^2 / (2 sigma^2))``."""

    sigma: float = 1.0

    def __post_init__(self):
        _positive("HalfNormal", sigma=self.sigma)

    def __str__(self):
        return f"HalfNormal(sigma={self.sigma:.4g})"


@dataclass(frozen=True)
class HalfStudentT:
    """Half Student-t prior on a standard deviation (Gelman 2006)."""

    nu: float = 3.0
    sigma: float = 1.0

    def __post_init__(self):
        _positive("HalfStudentT", nu=self.nu, sigma=self.sigma)

    def __str__(self):
        return f"HalfStudentT(nu={self.nu:.4g}, sigma={self.sigma:.4g})"


@dataclass(frozen=True)
class HalfCauchy:
    """Half-Cauchy prior on a standard deviation (a half Student-t with one degree of freedom)."""

    beta: float = 1.0

    def __post_init__(self):
        _positive("HalfCauchy", beta=self.beta)

    def __str__(self):
        return f"HalfCauchy(beta={self.beta:.4g})"


@dataclass(frozen=True)
class Uniform:
    """Uniform prior on a standard deviation over ``(0, upper)``."""

    upper: float = 1.0

    def __post_init__(self):
        _positive("Uniform", upper=self.upper)

    def __str__(self):
        return f"Uniform(0, {self.upper:.4g})"


@dataclass(frozen=True)
class InverseGamma:
    """Inverse-gamma prior on a variance, density proportional to ``v^{-alpha-1} exp(-beta / v)``."""

    alpha: float = 1.0
    beta: float = 1.0

    def __post_init__(self):
        _positive("InverseGamma", alpha=self.alpha, beta=self.beta)

    def __str__(self):
        return f"InverseGamma(alpha={self.alpha:.4g}, beta={self.beta:.4g})"


@dataclass(frozen=True)
class LKJ:
    """LKJ prior on a correlation matrix, density proportional to ``det(R)^(eta - 1)``.

    ``eta = 1`` is uniform over correlation matrices; larger values favour weaker
    correlations (Lewandowski, Kurowicka & Joe 2009).
    """

    eta: float = 1.0

    def __post_init__(self):
        _positive("LKJ", eta=self.eta)

    def __str__(self):
        return f"LKJ(eta={self.eta:.4g})"


@dataclass(frozen=True)
class InverseWishart:
    """Inverse-Wishart prior on a whole covariance block.

    Parameters
    ----------
    nu : float
        Degrees of freedom, greater than the block dimension minus one.
    scale : float or array_like
        Scale matrix (a number means that number times the identity).
    """

    nu: float
    scale: object = 1.0

    def __post_init__(self):
        _positive("InverseWishart", nu=self.nu)

    def matrix(self, dim):
        """The scale matrix for a block of dimension ``dim``."""
        s = np.asarray(self.scale, dtype=np.float64)
        if s.ndim == 0:
            s = np.eye(dim) * float(s)
        if s.shape != (dim, dim):
            raise PriorError(f"InverseWishart: scale must be {dim} x {dim} for this block, got shape {s.shape}")
        if not np.allclose(s, s.T) or np.any(np.linalg.eigvalsh(s) <= 0):
            raise PriorError("InverseWishart: scale must be symmetric positive definite")
        if self.nu <= dim - 1:
            raise PriorError(f"InverseWishart: nu must exceed {dim - 1} for a {dim} x {dim} block, got {self.nu}")
        return s

    def __str__(self):
        s = np.asarray(self.scale)
        scale = f"{float(s):.4g}*I" if s.ndim == 0 else "matrix"
        return f"InverseWishart(nu={self.nu:.4g}, scale={scale})"


SD_PRIORS = (Flat, HalfNormal, HalfStudentT, HalfCauchy, Uniform, InverseGamma)


def _sd_code(prior, role):
    if isinstance(prior, Flat):
        return PRIOR_FLAT, (0.0, 0.0)
    if isinstance(prior, HalfNormal):
        return PRIOR_HALF_NORMAL, (prior.sigma, 0.0)
    if isinstance(prior, HalfStudentT):
        return PRIOR_HALF_T, (prior.nu, prior.sigma)
    if isinstance(prior, HalfCauchy):
        return PRIOR_HALF_T, (1.0, prior.beta)
    if isinstance(prior, Uniform):
        return PRIOR_UNIFORM, (prior.upper, 0.0)
    if isinstance(prior, InverseGamma):
        return PRIOR_INV_GAMMA, (prior.alpha, prior.beta)
    allowed = ", ".join(c.__name__ for c in SD_PRIORS)
    raise PriorError(f"prior for {role!r} must be one of {allowed}; got {prior!r}")


class ColumnMoments(NamedTuple):
    """Means and (population) variances of the response and of the design columns.

    All the default priors and the starting points read of the data; computed in one pass
    (:func:`column_moments`) or merged from chunks of rows (:func:`merge_moments`).

    Attributes
    ----------
    n : float
        Number of rows.
    mean, m2 : ndarray of shape (1 + n_fixed + n_coef,)
        Column means and sums of squared deviations of ``[y, F, X]``.
    n_fixed : int
        Number of fixed-effect columns.
    obs_var_mean : float or None
        Mean known level-1 variance, None when sigma is estimated.
    """

    n: float
    mean: np.ndarray
    m2: np.ndarray
    n_fixed: int
    obs_var_mean: float | None = None

    def var(self):
        """Population variances of ``[y, F, X]``."""
        return self.m2 / self.n

    @property
    def y_mean(self):
        """Mean of the response."""
        return float(self.mean[0])

    def response_scale(self):
        """``sd(y)``, or ``sqrt(var(y) + mean(known variance))`` with known level-1 variances; 1 if 0."""
        y_var = float(self.var()[0])
        if self.obs_var_mean is not None:
            y_var += self.obs_var_mean
        y_sd = math.sqrt(max(y_var, 0.0))
        return y_sd if y_sd > 0 else 1.0

    def fixed_sd(self):
        """Standard deviation of each fixed-effect column."""
        return np.sqrt(np.maximum(self.var()[1:1 + self.n_fixed], 0.0))

    def fixed_mean(self):
        """Mean of each fixed-effect column."""
        return self.mean[1:1 + self.n_fixed]

    def coef_sd(self):
        """Standard deviation of each random-effect column."""
        return np.sqrt(np.maximum(self.var()[1 + self.n_fixed:], 0.0))


def column_moments(y, F, X, obs_var=None):
    """:class:`ColumnMoments` of a response and its fixed and random designs."""
    Z = np.column_stack([y, F, X]) if F.shape[1] + X.shape[1] else np.asarray(y, dtype=np.float64)[:, None]
    mean = Z.mean(axis=0)
    m2 = ((Z - mean) ** 2).sum(axis=0)
    return ColumnMoments(float(len(y)), mean, m2, F.shape[1],
                         None if obs_var is None else float(np.mean(obs_var)))


def merge_moments(first, second):
    """Moments of the union of two disjoint sets of rows (Chan, Golub & LeVeque's update)."""
    if first is None:
        return second
    n = first.n + second.n
    delta = second.mean - first.mean
    mean = first.mean + delta * (second.n / n)
    m2 = first.m2 + second.m2 + delta**2 * (first.n * second.n / n)
    obs = None
    if first.obs_var_mean is not None:
        obs = (first.obs_var_mean * first.n + second.obs_var_mean * second.n) / n
    return ColumnMoments(n, mean, m2, first.n_fixed, obs)


def coefficient_scales(moments):
    """A scale for each random coefficient's SD: ``response_scale / sd(x)`` (``/ 1`` for a constant column)."""
    col_sd = moments.coef_sd()
    return moments.response_scale() / np.where(col_sd > 0, col_sd, 1.0)


def default_priors(moments, fixed_names, coef_names):
    """Weakly informative priors scaled to the data (its :class:`ColumnMoments`).

    * each slope: ``Normal(0, 10 * sd(y) / sd(x))``; an intercept (constant column):
      ``Normal(0, s)`` with ``s = 10 * (|mean(y)| + sd(y))`` plus ``|mean(x)|`` times the
      scale of each slope, so the intercept of uncentred predictors is covered too;
    * sigma: ``HalfStudentT(3, 2.5 * sd(y))``;
    * SD of a random coefficient: ``HalfStudentT(3, 2.5 * sd(y) / sd(x))`` (``sd(y)`` for
      an intercept);
    * correlations: ``LKJ(1)`` (uniform).

    With known level-1 variances, ``sd(y)`` is replaced by
    ``sqrt(var(y) + mean(known variance))`` so that the scale reflects the data.

    Returns
    -------
    dict
        Role -> prior, with one entry per fixed term (``"fixed[<term>]"``), ``"sigma"``,
        one per random coefficient (``"sd[<coef>]"``) and ``"corr"``.
    """
    y_sd = moments.response_scale()
    y_abs_mean = abs(moments.y_mean)
    out = {}
    slope_scale = {}
    f_sd, f_mean = moments.fixed_sd(), moments.fixed_mean()
    for k in range(len(fixed_names)):
        if f_sd[k] > 0:
            slope_scale[k] = 10.0 * y_sd / float(f_sd[k])
    intercept_scale = 10.0 * (y_abs_mean + y_sd) + sum(
        s * abs(float(f_mean[k])) for k, s in slope_scale.items()
    )
    for k, name in enumerate(fixed_names):
        out[f"fixed[{name}]"] = Normal(0.0, slope_scale.get(k, intercept_scale))
    out["sigma"] = HalfStudentT(3.0, 2.5 * y_sd)
    for name, scale in zip(coef_names, coefficient_scales(moments), strict=True):
        out[f"sd[{name}]"] = HalfStudentT(3.0, 2.5 * float(scale))
    out["corr"] = LKJ(1.0)
    return out


def resolve_priors(user, defaults, fixed_names, coef_names, block_sizes, sigma_known):
    """Merge the user's priors over the defaults and check them.

    Returns
    -------
    dict
        The complete role -> prior mapping actually used (``"sigma"`` absent when the
        level-1 variances are known; ``"cov"`` present when an inverse-Wishart is used).
    """
    user = dict(user or {})
    resolved = dict(defaults)
    if sigma_known:
        resolved.pop("sigma", None)
    valid = {"fixed", "sigma", "sd", "corr", "cov"}
    valid |= {f"fixed[{n}]" for n in fixed_names} | {f"sd[{n}]" for n in coef_names}
    for key in user:
        if key not in valid:
            raise PriorError(
                f"unknown prior key {key!r}; valid keys are 'fixed', 'sigma', 'sd', 'corr', 'cov', "
                f"'fixed[<term>]' with a term in {list(fixed_names)}, "
                f"'sd[<coef>]' with a coefficient in {list(coef_names)}"
            )
    if "sigma" in user and sigma_known:
        raise PriorError("a prior for 'sigma' was given but the level-1 variances are known")
    # general keys first, then the specific ones override them
    for key in ("fixed", "sd"):
        if key in user:
            names = fixed_names if key == "fixed" else coef_names
            for n in names:
                resolved[f"{key}[{n}]"] = user[key]
    for key, prior in user.items():
        if key not in ("fixed", "sd"):
            resolved[key] = prior
    for n in fixed_names:
        if not isinstance(resolved[f"fixed[{n}]"], (Normal, Flat)):
            raise PriorError(f"prior for fixed effect {n!r} must be Normal or Flat, got {resolved[f'fixed[{n}]']!r}")
    if "sigma" in resolved:
        _sd_code(resolved["sigma"], "sigma")
    for n in coef_names:
        _sd_code(resolved[f"sd[{n}]"], f"sd[{n}]")
    if not isinstance(resolved["corr"], LKJ):
        raise PriorError(f"prior for 'corr' must be LKJ, got {resolved['corr']!r}")
    if "cov" in resolved:
        if not isinstance(resolved["cov"], InverseWishart):
            raise PriorError(f"prior for 'cov' must be InverseWishart, got {resolved['cov']!r}")
        for size in block_sizes:
            resolved["cov"].matrix(size)
    return resolved


def prior_arrays(resolved, fixed_names, coef_names, block_sizes):
    """Kernel arrays (:class:`samplers.types.Priors`) from a resolved prior mapping."""
    p = len(fixed_names)
    d = len(coef_names)
    a_mean = np.zeros(p)
    a_prec = np.zeros(p)
    for k, n in enumerate(fixed_names):
        prior = resolved[f"fixed[{n}]"]
        if isinstance(prior, Normal):
            a_mean[k] = prior.mu
            a_prec[k] = 1.0 / prior.sigma**2
    if "sigma" in resolved:
        sigma_kind, sigma_par = _sd_code(resolved["sigma"], "sigma")
    else:
        sigma_kind, sigma_par = PRIOR_FLAT, (0.0, 0.0)
    sd_kind = np.zeros(d, dtype=np.int64)
    sd_par = np.zeros((d, 2))
    for k, n in enumerate(coef_names):
        sd_kind[k], sd_par[k] = _sd_code(resolved[f"sd[{n}]"], f"sd[{n}]")
    n_blocks = len(block_sizes)
    block_iw = np.zeros(n_blocks, dtype=np.int64)
    block_eta = np.full(n_blocks, float(resolved["corr"].eta))
    iw_scale = np.zeros((d, d))
    if "cov" in resolved:
        c0 = 0
        for k, size in enumerate(block_sizes):
            block_iw[k] = 1
            block_eta[k] = float(resolved["cov"].nu)
            iw_scale[c0 : c0 + size, c0 : c0 + size] = resolved["cov"].matrix(size)
            c0 += size
    return Priors(
        a_mean=a_mean,
        a_prec=a_prec,
        sigma_kind=int(sigma_kind),
        sigma_par=np.asarray(sigma_par, dtype=np.float64),
        sd_kind=sd_kind,
        sd_par=sd_par,
        block_iw=block_iw,
        block_eta=block_eta,
        iw_scale=iw_scale,
    )


def describe(resolved):
    """One line per prior, for summaries and attributes."""
    return [f"{key}: {prior}" for key, prior in resolved.items()]
