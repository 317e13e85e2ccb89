"""The internal basis: well-conditioned coordinates for the kernels, exact maps to the user's.

Users do not centre their data: calendar years, ages in months, incomes in cents and test
scores around 500 are the normal case. The kernels therefore never see the columns as
written. Each column of ``[y, F, X]`` is shifted and scaled,

    y_N = (y - c_y) / s_y,    F_N[:, q] = (F[:, q] - c_q) / s_q,    X_N[:, r] = (X[:, r] - c_r) / s_r,

where a shift is allowed only beside a column of ones, which makes it a linear map of the
design: the fixed part's columns (and the response) are centred when the fixed part has an
intercept, and a random slope is centred when its covariance block holds the random
intercept. With the intercept column ``e`` and the diagonal ``D`` of scales, ``F_N = F M_F``
with ``M_F = (I - e c') D^{-1}``, and likewise ``X_N = X M_X``; so the model

    y = F a + X b + e,     b ~ N(0, T),     e ~ N(0, s2 / w)

is, in the internal coordinates, the same model with

    a = s_y M_F a_N + c_y e,    b = s_y M_X b_N,    T = s_y^2 M_X T_N M_X',    s2 = s_y^2 s2_N

(``M_X`` is block diagonal by covariance block, so ``T_N`` keeps the block structure) and
weights ``w_N = s_y^2 w`` when the level-1 variances are known (``s2`` is then 1 in both).
Precision weights (``weights=`` of :func:`bayeshlm.hlm`, with ``s2`` estimated) are divided
by their scale ``c_w``, the harmonic mean of the weights, ``w_N = w / c_w``, and then
``s2 = s_y^2 c_w s2_N`` (:attr:`Basis.sigma_scale`), so that neither the kernels nor the
default prior of sigma depend on the units of the weights.
Every result is mapped back with these identities, exactly: fixed effects, group
coefficients, covariance matrices, standard errors. Log-likelihoods differ by the Jacobian
of the response, ``-N log s_y``, and the restricted (REML) likelihood also by
``log |det(s_y M_F)|``. See ``docs/design.md``, "The internal basis".

Several bases are in play: the kernels' (``Model.basis``), the user's (the identity), and
the centred coordinates on which the default priors are set (:meth:`Basis.centred`). All
are values of :class:`Basis`, and :meth:`Basis.coef_map_to` / :meth:`Basis.fixed_map_to`
give the map from one to another.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from samplers.types import SuffStats

__all__ = ["Basis", "response_shift_scale"]


def response_shift_scale(mean, var, obs_var_mean, centred):
    """Shift and scale of the response: ``(mean, sd)`` when centred, else ``(0, root mean square)``.

    With known level-1 variances their mean is added to the variance, so that the scale
    reflects the data.
    """
    v = float(var) if centred else float(var) + float(mean) ** 2
    if obs_var_mean is not None:
        v += float(obs_var_mean)
    return (float(mean) if centred else 0.0), (math.sqrt(v) if v > 0 else 1.0)


@dataclass(frozen=True, eq=False)
class Basis:
    """Shifts and scales of the columns of ``[y, F, X]`` defining a set of coordinates.

    Attributes
    ----------
    shift, scale : ndarray of shape (1 + n_fixed + n_coef,)
        Column ``k`` of ``[y, F, X]`` is read as ``(value - shift[k]) / scale[k]``.
    n_fixed : int
        Number of fixed-effect columns.
    fixed_intercept : int
        Position in ``F`` of the column of ones, -1 when there is none (then no column of
        ``F`` and not the response is shifted).
    coef_intercept : tuple of int
        For each random coefficient, the position in ``X`` of the intercept of its covariance
        block, -1 when the block has none (then the coefficient is not shifted).
    w_scale : float
        The scale ``c_w`` of the precision weights (their harmonic mean; 1 without them): the
        kernels read ``w / c_w`` (docs/design.md, "Weights and offsets").
    """

    shift: np.ndarray
    scale: np.ndarray
    n_fixed: int
    fixed_intercept: int
    coef_intercept: tuple
    w_scale: float = 1.0

    # ------------------------------------------------------------------ construction
    @classmethod
    def identity(cls, n_fixed, n_coef, fixed_intercept=-1, coef_intercept=None):
        """The user's own coordinates: no shift, no scale."""
        width = 1 + n_fixed + n_coef
        if coef_intercept is None:
            coef_intercept = (-1,) * n_coef
        return cls(np.zeros(width), np.ones(width), int(n_fixed), int(fixed_intercept), tuple(coef_intercept))

    @classmethod
    def standardising(cls, moments, fixed_names, coef_names, block_sizes, y_moments=None, inv_w_mean=None):
        """The kernels' basis for data with these :class:`~bayeshlm.priors.ColumnMoments`.

        The intercepts are the columns named ``Intercept`` (``Intercept|<factor>`` among the
        random coefficients of several factors), provided they hold ones. Centred columns
        (beside an intercept) are divided by their standard deviation, the others by their
        root mean square; the response by its standard deviation (with known level-1
        variances, ``sqrt(var(y) + mean known variance)``) when it is centred, by its root
        mean square otherwise. ``y_moments``, when given, is the response's
        ``(mean, variance, mean known variance or None)`` to use instead of the moments' own
        (the chunked path reads them in an earlier pass). With precision weights
        (``moments.inv_w_mean``, or ``inv_w_mean`` given for the chunked path) their scale
        ``c_w`` is the harmonic mean of the weights.
        """
        p = int(moments.n_fixed)
        mean = np.asarray(moments.mean, dtype=np.float64)
        var = np.maximum(np.asarray(moments.m2, dtype=np.float64) / moments.n, 0.0)
        d = mean.shape[0] - 1 - p
        # the intercepts: the generated column of ones (its name, checked against the data)
        named = np.array([False] + [n == "Intercept" for n in fixed_names]
                         + [n.split("|")[0] == "Intercept" for n in coef_names])
        ones = named & (mean == 1.0) & (var == 0.0)
        f_int = next((q for q in range(p) if ones[1 + q]), -1)
        coef_int = []
        c0 = 0
        for size in block_sizes:
            inside = [r for r in range(c0, c0 + size) if ones[1 + p + r]]
            coef_int += [inside[0] if inside else -1] * size
            c0 += size
        coef_int += [-1] * (d - len(coef_int))
        shift = np.zeros(1 + p + d)
        scale = np.ones(1 + p + d)

        def spread(k, centred):
            v = var[k] if centred else var[k] + mean[k] ** 2
            return math.sqrt(v) if v > 0 else 1.0

        for q in range(p):
            k = 1 + q
            if q == f_int:
                continue
            centred = f_int >= 0
            shift[k] = mean[k] if centred else 0.0
            scale[k] = spread(k, centred)
        for r in range(d):
            k = 1 + p + r
            if coef_int[r] == r:
                continue
            centred = coef_int[r] >= 0
            shift[k] = mean[k] if centred else 0.0
            scale[k] = spread(k, centred)
        if y_moments is None:
            y_moments = (mean[0], var[0], moments.obs_var_mean)
        shift[0], scale[0] = response_shift_scale(*y_moments, f_int >= 0)
        if inv_w_mean is None:
            inv_w_mean = getattr(moments, "inv_w_mean", None)
        w_scale = 1.0 if inv_w_mean is None else 1.0 / float(inv_w_mean)
        return cls(shift, scale, p, int(f_int), tuple(coef_int), w_scale)

    def centred(self):
        """The same shifts of the predictors without any scaling, and the response as it is.

        In these coordinates the intercepts are those at the predictors' means (of the data
        the shifts were taken from) and everything else is in the user's units: the default
        priors are set here (:func:`bayeshlm.priors.default_priors`).
        """
        shift = self.shift.copy()
        shift[0] = 0.0
        return Basis(shift, np.ones_like(self.scale), self.n_fixed, self.fixed_intercept, self.coef_intercept,
                     self.w_scale)

    # ------------------------------------------------------------------ parts
    @property
    def n_coef(self):
        """Number of random coefficients."""
        return self.shift.shape[0] - 1 - self.n_fixed

    @property
    def y_shift(self):
        """Shift of the response."""
        return float(self.shift[0])

    @property
    def y_scale(self):
        """Scale of the response."""
        return float(self.scale[0])

    @property
    def sigma_scale(self):
        """Scale of the level-1 SD: ``sigma = sigma_scale sigma_N``, ``s_y sqrt(c_w)`` (``s_y`` without weights)."""
        return float(self.scale[0]) * math.sqrt(self.w_scale)

    def _parts(self, lo, n, intercept):
        """``(D, N)`` of columns ``lo .. lo + n - 1`` of ``[y, F, X]``: ``Z_basis = Z_user (I - N) D^{-1}``.

        ``D`` holds the scales; ``N = sum_r c_r e_int(r) e_r'`` the shifts, each beside its
        intercept column. ``N^2 = 0`` (an intercept is never shifted), so
        ``(I - N)^{-1} = I + N`` and every map between bases has a closed form, exact in
        floating point where two bases share their shifts.
        """
        D = self.scale[lo:lo + n].copy()
        N = np.zeros((n, n))
        for i in range(n):
            if self.shift[lo + i] != 0.0:
                N[intercept[i], i] = self.shift[lo + i]
        return D, N

    @cached_property
    def _fixed(self):
        return self._parts(1, self.n_fixed, [self.fixed_intercept] * self.n_fixed)

    @cached_property
    def _coef(self):
        return self._parts(1 + self.n_fixed, self.n_coef, self.coef_intercept)

    def _fixed_parts(self):
        return self._fixed

    def _coef_parts(self):
        return self._coef

    def fixed_matrix(self):
        """``M_F``: ``F_basis = F M_F``."""
        D, N = self._fixed_parts()
        return (np.eye(D.size) - N) / D

    def coef_matrix(self):
        """``M_X``: ``X_basis = X M_X`` (block diagonal by covariance block)."""
        D, N = self._coef_parts()
        return (np.eye(D.size) - N) / D

    def fixed_matrix_inverse(self):
        """``M_F^{-1} = D (I + N)``, exactly."""
        D, N = self._fixed_parts()
        return D[:, None] * (np.eye(D.size) + N)

    def coef_matrix_inverse(self):
        """``M_X^{-1} = D (I + N)``, exactly."""
        D, N = self._coef_parts()
        return D[:, None] * (np.eye(D.size) + N)

    def fixed_to_user(self):
        """``(L, t)`` with ``a_user = L a + t`` for the fixed effects ``a`` in this basis."""
        L = self.y_scale * self.fixed_matrix()
        t = np.zeros(self.n_fixed)
        if self.y_shift != 0.0:
            t[self.fixed_intercept] = self.y_shift
        return L, t

    def coef_to_user(self):
        """``L`` with ``b_user = L b`` for group coefficients ``b`` in this basis."""
        return self.y_scale * self.coef_matrix()

    @staticmethod
    def _between(ys, Ds, Ns, yo, Do, No):
        """``(ys / yo) D_o (I + N_o - N_s) D_s^{-1}``: the map ``M_o^{-1} M_s`` of two bases' coefficients.

        ``N_o N_s = 0`` holds when the two bases shift beside the same intercepts, or one does
        not shift at all, which is the case for every pair of bases of one model.
        """
        return (ys / yo) * (Do[:, None] * (np.eye(Ds.size) + No - Ns)) / Ds[None, :]

    def fixed_map_to(self, other):
        """``(G, g)`` with ``a_other = G a_self + g``."""
        Ds, Ns = self._fixed_parts()
        Do, No = other._fixed_parts()
        G = self._between(self.y_scale, Ds, Ns, other.y_scale, Do, No)
        # t = c_y e_int, and (I + N_o) e_int = e_int (an intercept is never shifted)
        g = np.zeros(Do.size)
        shift = self.y_shift - other.y_shift
        if shift != 0.0:
            q = self.fixed_intercept if self.y_shift != 0.0 else other.fixed_intercept
            g[q] = Do[q] * shift / other.y_scale
        return G, g

    def coef_map_to(self, other):
        """``G`` with ``b_other = G b_self`` (block diagonal)."""
        Ds, Ns = self._coef_parts()
        Do, No = other._coef_parts()
        return self._between(self.y_scale, Ds, Ns, other.y_scale, Do, No)

    # ------------------------------------------------------------------ maps of results
    def fixed_values(self, a):
        """Fixed effects ``a`` (``(..., n_fixed)``) in the user's parametrisation."""
        L, t = self.fixed_to_user()
        return np.asarray(a) @ L.T + t

    def fixed_cov(self, V):
        """A covariance matrix of the fixed effects in the user's parametrisation."""
        L, _ = self.fixed_to_user()
        return L @ V @ L.T

    def coef_values(self, b):
        """Group coefficients ``b`` (``(..., n_coef)``) in the user's parametrisation."""
        return np.asarray(b) @ self.coef_to_user().T

    def coef_cov(self, T):
        """Covariance matrices ``(..., n_coef, n_coef)`` of group coefficients in the user's parametrisation."""
        L = self.coef_to_user()
        return L @ np.asarray(T) @ L.T

    def coef_cov_from_user(self, T_user):
        """Inverse of :meth:`coef_cov`: ``L^{-1} T L^{-T}`` with ``L^{-1} = D (I + N) / s_y``."""
        Li = self.coef_matrix_inverse() / self.y_scale
        return Li @ np.asarray(T_user) @ Li.T

    def residual_variance(self, s2, sigma_known):
        """The level-1 variance in the user's units (1 when the variances are known).

        With precision weights it is the variance of a row of weight 1, ``s_y^2 c_w s2_N``.
        """
        return np.ones_like(np.asarray(s2, dtype=np.float64)) if sigma_known else np.asarray(s2) * self.sigma_scale**2

    def weights(self, obs_var=None, precision=None):
        """Weights of the rows in this basis: ``s_y^2 / obs_var`` (known variances) or ``w / c_w`` (precision weights).

        None when the rows have neither (every weight 1).
        """
        if obs_var is not None:
            return self.y_scale**2 / np.asarray(obs_var, dtype=np.float64)
        if precision is not None:
            return np.asarray(precision, dtype=np.float64) / self.w_scale
        return None

    def log_weight_shift(self, sigma_known):
        """``log w_user - log w`` of every row: what turns the statistics' sums of ``log w`` into the user's.

        ``-2 log s_y`` for known variances (``w = s_y^2 w_user``), ``log c_w`` for precision
        weights (``w = w_user / c_w``), 0 otherwise.
        """
        return -2.0 * math.log(self.y_scale) if sigma_known else math.log(self.w_scale)

    def loglik_offset(self, n_obs, restricted=False):
        """What to add to a log-likelihood computed in this basis to have it in the user's units.

        ``-N log s_y`` (the Jacobian of the response), and for a restricted (REML) likelihood
        also ``log |det(s_y M_F)|``, the Jacobian of the fixed effects it integrates. Precision
        weights add nothing: ``N log c_w`` of ``s2 = s_y^2 c_w s2_N`` cancels against the
        same term of ``sum log w_N``, so the value keeps lme4's ``+ sum log w / 2``.
        """
        offset = -float(n_obs) * math.log(self.y_scale)
        if restricted and self.n_fixed:  # det(s_y (I - N) D^{-1}) = s_y^p / prod D, as det(I - N) = 1
            D, _ = self._fixed_parts()
            offset += self.n_fixed * math.log(self.y_scale) - float(np.sum(np.log(np.abs(D))))
        return offset

    def response_cross(self, Xty, Xt1):
        """``X_N'W y`` for the user's response, from the basis's ``X_N'W y_N`` and ``X_N'W 1``.

        ``y = c_y + s_y y_N``; ``Xt1`` (the cross-products with the fixed part's intercept
        column, None without one) is read only when the response is shifted, which it is
        only beside an intercept.
        """
        return self.y_scale * Xty + (self.y_shift * Xt1 if self.y_shift != 0.0 else 0.0)

    def rows(self, y, F, X):
        """The rows ``(y, F, X)`` in this basis (copies)."""
        p = self.n_fixed
        yN = (np.asarray(y, dtype=np.float64) - self.shift[0]) / self.scale[0]
        FN = (np.asarray(F, dtype=np.float64) - self.shift[1:1 + p]) / self.scale[1:1 + p]
        XN = (np.asarray(X, dtype=np.float64) - self.shift[1 + p:]) / self.scale[1 + p:]
        return yN, FN, XN

    # ------------------------------------------------------------------ statistics
    def transform_stats(self, stats, target):
        """Statistics computed in this basis re-expressed, exactly, in ``target``.

        Both bases must treat the response alike (the per-group ``y'Wy`` cannot be moved
        otherwise); the predictors' columns are mapped by ``Z_target = Z_self B``, a linear
        map because each shift acts beside its intercept column.
        """
        if (self.shift[0] != target.shift[0] or self.scale[0] != target.scale[0]
                or self.w_scale != target.w_scale):
            raise ValueError("the statistics' bases differ in the response or the weights' scale")
        p = self.n_fixed

        def part(lo, n, intercept):
            B = np.zeros((n, n))
            for i in range(n):
                k = lo + i
                B[i, i] = self.scale[k] / target.scale[k]
                delta = self.shift[k] - target.shift[k]
                if delta != 0.0:
                    B[intercept[i], i] += delta / target.scale[k]
            return B

        BF = part(1, p, [self.fixed_intercept] * p)
        BX = part(1 + p, self.n_coef, self.coef_intercept)
        return SuffStats(
            n=stats.n.copy(),
            XtX=np.einsum("ra,jrs,sb->jab", BX, stats.XtX, BX),
            XtF=np.einsum("ra,jrq,qb->jab", BX, stats.XtF, BF),
            Xty=stats.Xty @ BX,
            yty_g=stats.yty_g.copy(),
            FtF=BF.T @ stats.FtF @ BF,
            Fty=stats.Fty @ BF,
            scal=stats.scal.copy(),
            FtF_g=np.einsum("qa,jqr,rb->jab", BF, stats.FtF_g, BF),
            Fty_g=stats.Fty_g @ BF,
            logw_g=stats.logw_g.copy(),
        )
