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

A prior may also be given as the text of its call, ``{"sd": "HalfNormal(1)"}``, as on the
command line (:func:`prior_from_text`: read, never evaluated).

Standard-deviation priors: :class:`HalfNormal`, :class:`HalfStudentT`, :class:`HalfCauchy`,
:class:`Uniform` (on the SD), :class:`InverseGamma` (on the variance), :class:`Flat`
(improper uniform on the SD). Anything not given gets the default of :func:`default_priors`.

Every prior a user gives holds for the parameter as the user wrote it: the coefficient of
the column as it is in the data, in the data's units, whatever the kernels do inside. The
kernels work in a standardised basis (:mod:`bayeshlm.basis`); :func:`prior_arrays` carries
each prior there exactly. The defaults are set on centred coordinates (intercepts at the
predictors' means, :class:`PriorFrame`), which makes them, and the posterior, independent
of the location and units of every column.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from bayeshlm.basis import Basis
from samplers.sd_priors import (
    PRIOR_FLAT,
    PRIOR_HALF_NORMAL,
    PRIOR_HALF_T,
    PRIOR_INV_GAMMA,
    PRIOR_UNIFORM,
)
from samplers.types import FixedPrior, Priors


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


def sd_code(prior, role):
    """``(code, params)`` of a prior on a standard deviation, as the kernels know it (:mod:`samplers.sd_priors`)."""
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

    What the internal basis (:meth:`bayeshlm.basis.Basis.standardising`), and through it the
    default priors, read of the data; computed in one pass (:func:`column_moments`) or merged
    from chunks of rows (:func:`merge_moments`).

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
    inv_w_mean : float or None
        Mean of the inverse precision weights (``weights=``), None without them: the
        weights' scale is its inverse, their harmonic mean (:attr:`bayeshlm.basis.Basis.w_scale`).
    """

    n: float
    mean: np.ndarray
    m2: np.ndarray
    n_fixed: int
    obs_var_mean: float | None = None
    inv_w_mean: float | None = None

    def var(self):
        """Population variances of ``[y, F, X]``."""
        return self.m2 / self.n

    @property
    def y_mean(self):
        """Mean of the response."""
        return float(self.mean[0])


def column_moments(y, F, X, obs_var=None, weights=None):
    """:class:`ColumnMoments` of a response and its fixed and random designs (and known variances or weights)."""
    Z = np.column_stack([y, F, X]) if F.shape[1] + X.shape[1] else np.asarray(y, dtype=np.float64)[:, None]
    mean = Z.mean(axis=0)
    m2 = ((Z - mean) ** 2).sum(axis=0)
    return ColumnMoments(float(len(y)), mean, m2, F.shape[1],
                         None if obs_var is None else float(np.mean(obs_var)),
                         None if weights is None else float(np.mean(1.0 / np.asarray(weights, dtype=np.float64))))


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
    inv_w = None
    if first.inv_w_mean is not None:
        inv_w = (first.inv_w_mean * first.n + second.inv_w_mean * second.n) / n
    return ColumnMoments(n, mean, m2, first.n_fixed, obs, inv_w)


class PriorFrame(NamedTuple):
    """The coordinates each prior is set on.

    A prior the user gives holds for the coefficient as the user wrote it. The default priors
    of a covariance block whose slopes are centred, and of the intercept of a centred fixed
    part, hold instead on the *centred* coefficients: the intercepts at the predictors' means
    (``centred``, see :meth:`bayeshlm.basis.Basis.centred`), so that they do not depend on
    where the user's predictors happen to have their zero. A block's SDs and correlations
    share one frame: as soon as the user sets any of them (``sd``, ``sd[<coef>]``, ``corr``,
    ``cov``), the whole block's prior is on the user's coefficients.

    Attributes
    ----------
    centred : Basis
        The centred coordinates (shifts taken from the data the model was first compiled on).
    fixed_centred : bool
        The prior of the fixed intercept is on the intercept at the predictors' means.
    block_centred : tuple of bool
        Per covariance block: its SD and correlation priors are on the centred coefficients.
    """

    centred: object
    fixed_centred: bool
    block_centred: tuple

    def centred_roles(self, fixed_names, coef_names, block_sizes):
        """The roles whose prior differs from the user's coordinates: ``{role: [centred predictors]}``.

        The intercepts (``fixed[Intercept]``, ``sd[<intercept>]``) of the centred frame, at the
        means of the predictors listed, and ``corr`` when a block's correlations are those of
        centred coefficients. A slope's own prior is the same in both frames.
        """
        roles = {}
        c = self.centred
        p = c.n_fixed
        if self.fixed_centred:
            at = [fixed_names[q] for q in range(p) if c.shift[1 + q] != 0.0]
            roles[f"fixed[{fixed_names[c.fixed_intercept]}]"] = at
        corr = []
        for k, (lo, hi) in enumerate(_blocks(block_sizes)):
            if self.block_centred[k]:
                at = [coef_names[r] for r in range(lo, hi) if c.shift[1 + p + r] != 0.0]
                roles[f"sd[{coef_names[c.coef_intercept[lo]]}]"] = at
                if hi - lo > 1:
                    corr += at
        if corr:
            roles["corr"] = corr
        return roles


def _scaled(prior, factor):
    """The prior of ``x / factor`` when ``x`` has the SD prior ``prior`` (same family)."""
    if isinstance(prior, Flat):
        return prior
    if isinstance(prior, HalfNormal):
        return HalfNormal(prior.sigma / factor)
    if isinstance(prior, HalfStudentT):
        return HalfStudentT(prior.nu, prior.sigma / factor)
    if isinstance(prior, HalfCauchy):
        return HalfCauchy(prior.beta / factor)
    if isinstance(prior, Uniform):
        return Uniform(prior.upper / factor)
    if isinstance(prior, InverseGamma):  # on the variance x^2
        return InverseGamma(prior.alpha, prior.beta / factor**2)
    raise PriorError(f"cannot rescale the prior {prior!r}")


def _blocks(block_sizes):
    c0 = 0
    for size in block_sizes:
        yield c0, c0 + size
        c0 += size


def _default_sd_scales(basis, target):
    """The default scale of each random coefficient's SD in the coordinates ``target``.

    ``2.5 sqrt((G G')_ii)`` with ``G`` the map from the internal standardised coefficients
    to ``target``: the SD coefficient ``i`` has when every standardised coefficient has SD 1
    and none are correlated.
    """
    G = basis.coef_map_to(target)
    return 2.5 * np.sqrt(np.einsum("ij,ij->i", G, G))


def default_priors(basis, fixed_names, coef_names, block_sizes, sigma_known=False):
    """Weakly informative priors scaled to the data, with the frame they are set on.

    ``basis`` is the standardising :class:`~bayeshlm.basis.Basis` of the data (response
    scale ``s_y``; predictor ``x`` centred at its mean ``m_x`` with scale ``s_x``, its standard
    deviation, when it stands beside an intercept, else its root mean square). In the
    standardised coordinates every fixed effect gets ``Normal(0, 10)``, sigma and every
    group SD ``HalfStudentT(3, 2.5)``, correlations ``LKJ(1)``; expressed in the user's
    units, with intercepts at the predictors' means (:class:`PriorFrame`):

    * each slope: ``Normal(0, 10 s_y / s_x)``; the intercept: ``Normal(mean(y), 10 s_y)`` for
      the mean response at the predictors' means;
    * sigma: ``HalfStudentT(3, 2.5 s_y)``; with precision weights ``HalfStudentT(3, 2.5 s_y sqrt(c_w))``,
      ``c_w`` their harmonic mean (sigma is the SD of a row of weight 1);
    * SD of a random coefficient: ``HalfStudentT(3, 2.5 s_y / s_x)`` (``2.5 s_y`` for an
      intercept, the intercept at the means of its block's slopes);
    * correlations: ``LKJ(1)`` (uniform), of the centred coefficients.

    None of them changes when a predictor or the response is shifted or rescaled (they
    move with the data), so neither does the posterior.

    Returns
    -------
    defaults : dict
        Role -> prior, with one entry per fixed term (``"fixed[<term>]"``), ``"sigma"``
        (unless the level-1 variances are known), one per random coefficient
        (``"sd[<coef>]"``) and ``"corr"``.
    frame : PriorFrame
    """
    centred = basis.centred()
    p = len(fixed_names)
    G, g = basis.fixed_map_to(centred)
    out = {}
    for q, name in enumerate(fixed_names):
        out[f"fixed[{name}]"] = Normal(float(g[q]), 10.0 * abs(float(G[q, q])))
    if not sigma_known:
        out["sigma"] = HalfStudentT(3.0, 2.5 * basis.sigma_scale)
    for name, scale in zip(coef_names, _default_sd_scales(basis, centred), strict=True):
        out[f"sd[{name}]"] = HalfStudentT(3.0, float(scale))
    out["corr"] = LKJ(1.0)
    shifted = basis.shift != 0.0
    fixed_centred = basis.fixed_intercept >= 0 and bool(np.any(shifted[1:1 + p]))
    block_centred = tuple(bool(np.any(shifted[1 + p + lo:1 + p + hi])) for lo, hi in _blocks(block_sizes))
    return out, PriorFrame(centred, fixed_centred, block_centred)


def resolve_priors(user, defaults, frame, basis, fixed_names, coef_names, block_sizes, sigma_known,
                   keep_frame=False):
    """Merge the user's priors over the defaults and check them.

    A block (or the fixed intercept) that the user gives a prior for leaves the centred frame
    of the defaults; its other coefficients then get the default scale expressed on the
    user's coefficients (:func:`_default_sd_scales`). With ``keep_frame`` the frame is kept
    as given (the priors of a model compiled again on new data).

    Returns
    -------
    resolved : dict
        The complete role -> prior mapping actually used (``"sigma"`` absent when the
        level-1 variances are known; ``"cov"`` present when an inverse-Wishart is used).
    frame : PriorFrame
        The frame of each prior.
    """
    user = {key: prior_from_text(value, f"priors[{key!r}]") if isinstance(value, str) else value
            for key, value in (user or {}).items()}
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
    fixed_centred = frame.fixed_centred
    if fixed_centred and not keep_frame:
        name = fixed_names[frame.centred.fixed_intercept]
        fixed_centred = not ("fixed" in user or f"fixed[{name}]" in user)
    block_centred = list(frame.block_centred)
    own = Basis.identity(len(fixed_names), len(coef_names))
    user_scales = None
    for k, (lo, hi) in enumerate(_blocks(block_sizes)):
        touched = {"sd", "corr", "cov"} | {f"sd[{coef_names[r]}]" for r in range(lo, hi)}
        if block_centred[k] and touched & set(user) and not keep_frame:
            block_centred[k] = False
            if user_scales is None:
                user_scales = _default_sd_scales(basis, own)
            for r in range(lo, hi):
                resolved[f"sd[{coef_names[r]}]"] = HalfStudentT(3.0, float(user_scales[r]))
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
        sd_code(resolved["sigma"], "sigma")
    for n in coef_names:
        sd_code(resolved[f"sd[{n}]"], f"sd[{n}]")
    if not isinstance(resolved["corr"], LKJ):
        raise PriorError(f"prior for 'corr' must be LKJ, got {resolved['corr']!r}")
    if "cov" in resolved:
        if not isinstance(resolved["cov"], InverseWishart):
            raise PriorError(f"prior for 'cov' must be InverseWishart, got {resolved['cov']!r}")
        for size in block_sizes:
            resolved["cov"].matrix(size)
    return resolved, PriorFrame(frame.centred, fixed_centred, tuple(block_centred))


def _fixed_prior(resolved, frame, basis, fixed_names):
    """The fixed effects' prior in the kernels' basis, in information form (:class:`FixedPrior`).

    Each prior holds for one coordinate ``phi_k`` (the user's coefficient, or the intercept at
    the predictors' means): ``phi = Lam a + o`` with ``a`` in the kernels' basis, so
    ``P0 = Lam' D Lam``, ``h = Lam' D (m - o)`` and the constant makes the product of the
    normal densities of the ``phi_k``, times ``|det Lam|``, a normalised density of ``a``.
    """
    p = len(fixed_names)
    Lam, o = basis.fixed_to_user()  # a_user = Lam a + o
    if frame.fixed_centred:
        G_c, g_c = basis.fixed_map_to(frame.centred)
        q = frame.centred.fixed_intercept
        Lam[q], o[q] = G_c[q], g_c[q]
    D = np.zeros(p)
    m = np.zeros(p)
    for q, name in enumerate(fixed_names):
        prior = resolved[f"fixed[{name}]"]
        if isinstance(prior, Normal):
            D[q] = 1.0 / prior.sigma**2
            m[q] = prior.mu
    proper = D > 0
    r = m - o
    prec = Lam.T @ (D[:, None] * Lam)
    lin = Lam.T @ (D * r)
    const = float(np.sum(D[proper] * r[proper] ** 2) - np.sum(np.log(D[proper]))
                  - 2.0 * np.linalg.slogdet(Lam)[1]) if p else 0.0
    return FixedPrior(np.ascontiguousarray(0.5 * (prec + prec.T)), np.ascontiguousarray(lin), const,
                      int(p - np.count_nonzero(proper)))


def prior_arrays(resolved, frame, basis, fixed_names, coef_names, block_sizes):
    """Kernel arrays (:class:`samplers.types.Priors`) in the kernels' basis ``basis``.

    Each prior is carried from its frame (:class:`PriorFrame`) to ``basis``: a normal prior on
    the fixed effects becomes a Gaussian in information form; sigma's prior is rescaled by
    the response's scale (times the square root of the weights' scale,
    :attr:`bayeshlm.basis.Basis.sigma_scale`); a block whose map ``G`` from the kernels'
    coefficients to the prior's is diagonal gets its SD priors rescaled (same family), an inverse-Wishart its
    scale matrix ``G^{-1} Psi G^{-T}``, and any other block keeps its priors and the map
    ``G`` (``Priors.block_map``), applied in :func:`samplers.theta.decode_theta`.
    """
    d = len(coef_names)
    fixed = _fixed_prior(resolved, frame, basis, fixed_names)
    if "sigma" in resolved:
        sigma_kind, sigma_par = sd_code(_scaled(resolved["sigma"], basis.sigma_scale), "sigma")
    else:
        sigma_kind, sigma_par = PRIOR_FLAT, (0.0, 0.0)
    G_user = basis.coef_to_user()
    G_centred = basis.coef_map_to(frame.centred) if any(frame.block_centred) else None
    sd_kind = np.zeros(d, dtype=np.int64)
    sd_par = np.zeros((d, 2))
    n_blocks = len(block_sizes)
    block_iw = np.zeros(n_blocks, dtype=np.int64)
    block_eta = np.full(n_blocks, float(resolved["corr"].eta))
    block_map = np.zeros(n_blocks, dtype=np.int64)
    prior_map = np.eye(d)
    iw_scale = np.zeros((d, d))
    for k, (lo, hi) in enumerate(_blocks(block_sizes)):
        G = (G_centred if frame.block_centred[k] else G_user)[lo:hi, lo:hi]
        diag = np.abs(G.diagonal())
        diagonal = bool(np.all(np.abs(G - np.diag(G.diagonal())) <= 1e-12 * diag.max()))
        if "cov" in resolved:
            block_iw[k] = 1
            block_eta[k] = float(resolved["cov"].nu)
            Gi = np.linalg.inv(G)
            iw_scale[lo:hi, lo:hi] = Gi @ resolved["cov"].matrix(hi - lo) @ Gi.T
            continue
        for r in range(lo, hi):
            prior = resolved[f"sd[{coef_names[r]}]"]
            if diagonal:  # the prior of |G_rr| times the kernel's SD
                prior = _scaled(prior, abs(float(G[r - lo, r - lo])))
            sd_kind[r], sd_par[r] = sd_code(prior, f"sd[{coef_names[r]}]")
        if not diagonal:
            block_map[k] = 1
            prior_map[lo:hi, lo:hi] = G
    return Priors(
        fixed=fixed,
        sigma_kind=int(sigma_kind),
        sigma_par=np.asarray(sigma_par, dtype=np.float64),
        sd_kind=sd_kind,
        sd_par=sd_par,
        block_iw=block_iw,
        block_eta=block_eta,
        iw_scale=iw_scale,
        block_map=block_map,
        prior_map=np.ascontiguousarray(prior_map),
    )


def describe(resolved, centred=None):
    """One line per prior, for summaries and attributes.

    ``centred`` is :meth:`PriorFrame.centred_roles`: those priors are said to hold at the
    means of the predictors named.
    """
    return [f"{key}: {prior_text(key, prior, centred)}" for key, prior in resolved.items()]


def prior_text(key, prior, centred=None):
    """The prior of one role as text, with the centring it is set at."""
    at = (centred or {}).get(key)
    if not at:
        return str(prior)
    means = ", ".join(at)
    if key == "corr":
        return f"{prior} (of the coefficients with {means} centred at the mean)"
    return f"{prior} (the intercept at the mean of {means})"


_PRIOR_TYPES = {cls.__name__: cls for cls in (Flat, Normal, HalfNormal, HalfStudentT, HalfCauchy, Uniform,
                                              InverseGamma, LKJ, InverseWishart)}


def lkj_log_norm(d, eta):
    """Log of the LKJ normalising constant: ``f(R) = det(R)^(eta-1) / c_d(eta)``; returns ``-log c_d``.

    ``c_d = 2^(sum_k (2 eta - 2 + d - k)(d - k)) prod_k B(eta + (d-k-1)/2, eta + (d-k-1)/2)^(d-k)``,
    ``k = 1 .. d-1`` (Lewandowski, Kurowicka & Joe 2009).
    """
    from scipy.special import betaln

    log_c = 0.0
    for k in range(1, d):
        b = eta + (d - k - 1) / 2.0
        log_c += (2 * eta - 2 + d - k) * (d - k) * np.log(2.0) + (d - k) * betaln(b, b)
    return -log_c


def prior_from_text(text, where=None):
    """The prior a text names, ``"HalfNormal(10)"`` or ``"Normal(0, sigma=5)"``; parsed, never evaluated.

    Only the prior classes of this module with numeric arguments are read. ``where`` names
    the place the text came from in an error (``--prior sd=...``, ``priors['sd']``).
    """
    import ast

    where = where or repr(text)

    def number(arg):
        value = arg.operand if isinstance(arg, ast.UnaryOp) and isinstance(arg.op, ast.USub) else arg
        if not (isinstance(value, ast.Constant) and isinstance(value.value, (int, float))
                and not isinstance(value.value, bool)):
            raise PriorError(f"{where}: arguments must be numbers (the text is read, never evaluated)")
        return -value.value if value is not arg else value.value

    try:
        node = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as err:
        raise PriorError(f"{where}: cannot read {text!r} as a prior, e.g. 'HalfNormal(10)'") from err
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _PRIOR_TYPES):
        raise PriorError(f"{where}: the distribution must be one of {', '.join(_PRIOR_TYPES)}, e.g. 'HalfNormal(10)'")
    args = [number(a) for a in node.args]
    kwargs = {kw.arg: number(kw.value) for kw in node.keywords}
    try:
        return _PRIOR_TYPES[node.func.id](*args, **kwargs)
    except TypeError as err:
        raise PriorError(f"{where}: {err}") from err


def priors_to_json(resolved):
    """A resolved prior mapping as JSON-able data (:func:`priors_from_json` reads it back)."""
    out = {}
    for role, prior in resolved.items():
        fields = {k: (np.asarray(v).tolist() if isinstance(v, np.ndarray) else v) for k, v in vars(prior).items()}
        out[role] = {"type": type(prior).__name__, **fields}
    return out


def priors_from_json(data):
    """The prior mapping written by :func:`priors_to_json`."""
    out = {}
    for role, item in data.items():
        item = dict(item)
        kind = item.pop("type")
        if kind not in _PRIOR_TYPES:
            raise PriorError(f"unknown prior type {kind!r} for {role!r}")
        out[role] = _PRIOR_TYPES[kind](**item)
    return out


def frame_to_json(frame):
    """A :class:`PriorFrame` as JSON-able data."""
    c = frame.centred
    return {"shift": c.shift.tolist(), "scale": c.scale.tolist(), "n_fixed": c.n_fixed,
            "fixed_intercept": c.fixed_intercept, "coef_intercept": list(c.coef_intercept),
            "fixed_centred": frame.fixed_centred, "block_centred": list(frame.block_centred)}


def frame_from_json(data):
    """The :class:`PriorFrame` written by :func:`frame_to_json`."""
    centred = Basis(np.asarray(data["shift"], dtype=np.float64), np.asarray(data["scale"], dtype=np.float64),
                    int(data["n_fixed"]), int(data["fixed_intercept"]), tuple(int(i) for i in data["coef_intercept"]))
    return PriorFrame(centred, bool(data["fixed_centred"]), tuple(bool(b) for b in data["block_centred"]))

