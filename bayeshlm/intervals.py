"""Profile-likelihood intervals of the variance components and the parametric bootstrap of an EM fit.

Wald intervals of a variance component (the estimate plus or minus ``z`` standard errors of
:attr:`EMResult.variance_se`) assume a symmetric, normal sampling distribution, which an SD
estimated from few groups does not have. Two alternatives that do not:

* :func:`profile_intervals`: for each natural variance parameter ``psi`` (sigma, each SD, each
  correlation), the profile log-likelihood ``l_p(psi)``, the ML or REML log-likelihood
  maximised over all the other variance components with ``psi`` held fixed, and its signed
  root ``zeta(psi) = sign(psi - psi_hat) sqrt(2 (l_hat - l_p(psi)))``; the interval is
  where ``|zeta| <= z_{(1+level)/2}``, as lme4's ``confint(fit, method = "profile")``
  (Bates, Maechler, Bolker & Walker 2015, J. Stat. Softw. 67(1), on profiling). The
  statistics are re-expressed in coordinates where each natural parameter is one
  coordinate of the kernels' ``theta``, so the inner maximisation has the exact gradient,
  and the limits are roots found by Brent's method rather than interpolated from a grid.
* :func:`bootstrap`: the parametric bootstrap (Davison & Hinkley 1997, chapter 2):
  responses simulated from the fitted model, each refitted by :func:`bayeshlm.fit_em`, the
  spread of the estimates read off the refits. A refit reuses the compiled model: a new
  response changes only the per-group statistics, which one pass over the rows recomputes.

docs/design.md, "Profile intervals and the parametric bootstrap".
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from bayeshlm.em import EMResult, LoglikObjective, corr_key, fit_em, loglik_hessian, natural_variance_parameters
from bayeshlm.model import check_result, model_first, refuse_non_gaussian, refuse_variance_model
from bayeshlm.results import finest_coefficients, variance_components
from samplers.suffstats import compute_suffstats

__all__ = ["BootstrapResult", "bootstrap", "profile_intervals", "variance_parameter_names"]

T_MAX = 20.0  # the atanh of a correlation of +-1 in double precision: tanh(20) == 1.0
KINDS = ("percentile", "basic", "normal")


# ---------------------------------------------------------------------------------------- inputs
def _check(model, fit, what):
    """``(model, fit)`` in the public order, refused unless ``fit`` is a Gaussian REML or ML fit of ``model``."""
    model, fit = model_first(model, fit, what)
    if not isinstance(fit, EMResult):
        raise TypeError(f"{what} takes an EM fit (bayeshlm.fit_em), got {type(fit).__name__}")
    check_result(model, fit, "the fit")
    refuse_non_gaussian(model, what)
    refuse_variance_model(model, what)
    if fit.method not in ("reml", "ml"):
        raise ValueError(f"{what} takes a REML or ML fit of a Gaussian model, got a {fit.method} fit")
    return model, fit


def _check_level(level):
    if isinstance(level, bool) or not isinstance(level, (int, float, np.floating)) or not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must be a probability strictly between 0 and 1, got {level!r}")
    return float(level)


def _positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def variance_parameter_names(model):
    """The natural variance parameters, named as :attr:`EMResult.variance_se` names them.

    Returns
    -------
    list of (str, str, object)
        ``(name, kind, index)``: ``("sigma", "sigma", None)`` unless the level-1 variances
        are known, then ``("sd[<coef>]", "sd", i)`` for each random coefficient ``i``, then
        ``("corr[<a>,<b>]", "corr", (i, j))`` for each pair ``j < i`` of one covariance
        block: the order of :func:`bayeshlm.em.natural_variance_parameters`.
    """
    coefs = model.coef_names
    bp = model.structure.block_ptr
    out = [] if model.sigma_known else [("sigma", "sigma", None)]
    out += [(f"sd[{c}]", "sd", i) for i, c in enumerate(coefs)]
    out += [(f"corr[{corr_key(coefs[j], coefs[i])}]", "corr", (i, j)) for k in range(len(bp) - 1)
            for i in range(bp[k], bp[k + 1]) for j in range(bp[k], i)]
    return out


# ---------------------------------------------------------------------------------------- profiles
class _Frame:
    """The model's statistics in coordinates where each natural variance parameter is one ``theta`` coordinate.

    The random coefficients are scaled but not shifted (``X_P = X D^{-1}``, ``D`` the columns'
    root mean squares), so the group covariance in these coordinates is
    ``T_P = D T D / s_y^2``: its SDs are the user's times constants, its correlations the
    user's. With ``perm``, the coefficients of one block are reordered so that the
    correlation to profile comes first, where it is the block's first canonical partial
    correlation, one coordinate of ``theta``. The log-likelihood differs from the user's
    by a constant.
    """

    def __init__(self, model, method, perm):
        basis = model.basis
        p = basis.n_fixed
        shift, scale = basis.shift.copy(), basis.scale.copy()
        cols = slice(1 + p, None)
        scale[cols] = np.sqrt(scale[cols] ** 2 + shift[cols] ** 2)
        shift[cols] = 0.0
        target = replace(basis, shift=shift, scale=scale)
        stats = basis.transform_stats(model.stats, target)
        stats = stats._replace(XtX=np.ascontiguousarray(stats.XtX[:, perm][:, :, perm]),
                               XtF=np.ascontiguousarray(stats.XtF[:, perm]),
                               Xty=np.ascontiguousarray(stats.Xty[:, perm]))
        self.structure = model.structure._replace(
            diag_scale=np.ascontiguousarray(model.structure.diag_scale[perm]))
        self.objective = LoglikObjective(replace(model, stats=stats, structure=self.structure), method)
        self.perm = perm
        self.y_scale = basis.y_scale
        self.sigma_scale = basis.sigma_scale
        self.D = scale[cols][perm]
        self.sigma_known = model.sigma_known

    def encode(self, sigma, sd, R):
        """``theta`` of the user's ``(sigma, sd, R)``, every SD coordinate >= 0 (zero SDs and singular R allowed)."""
        st = self.structure
        theta = np.zeros(int(st.theta_ptr[-1]))
        if not self.sigma_known:
            theta[0] = np.log(sigma / self.sigma_scale)
        sd, R = np.asarray(sd)[self.perm], np.asarray(R)[np.ix_(self.perm, self.perm)]
        for k in range(len(st.block_ptr) - 1):
            c0, c1, t0 = int(st.block_ptr[k]), int(st.block_ptr[k + 1]), int(st.theta_ptr[k])
            theta[t0:t0 + c1 - c0] = np.arcsinh(sd[c0:c1] * self.D[c0:c1] / self.y_scale / st.diag_scale[c0:c1])
            L = _cholesky_semidefinite(R[c0:c1, c0:c1])
            idx = t0 + c1 - c0
            for i in range(c1 - c0):
                ss = 0.0
                for j in range(i):
                    z = L[i, j] / np.sqrt(max(1.0 - ss, 1e-300))
                    theta[idx] = np.arctanh(min(max(z, -1.0 + 1e-15), 1.0 - 1e-15))
                    ss += L[i, j] ** 2
                    idx += 1
        return theta

    def natural(self, coordinate, t):
        """The natural parameter whose ``theta`` coordinate is ``t``: ``"sigma"``, ``"corr"`` or an SD's position."""
        if coordinate == "sigma":
            return self.sigma_scale * float(np.exp(t))
        if coordinate == "corr":
            return float(np.tanh(t))
        c = coordinate
        return self.y_scale * float(self.structure.diag_scale[c] * np.sinh(t)) / float(self.D[c])


def _cholesky_semidefinite(R):
    """Lower Cholesky factor of a correlation matrix that may be singular (a column of a zero pivot left zero)."""
    d = R.shape[0]
    L = np.zeros((d, d))
    for j in range(d):
        v = R[j, j] - float(L[j, :j] @ L[j, :j])
        if v <= 1e-14:
            continue
        L[j, j] = np.sqrt(v)
        L[j + 1:, j] = (R[j + 1:, j] - L[j + 1:, :j] @ L[j, :j]) / L[j, j]
    return L


def _maximise(objective, theta, fixed, lower):
    """``(l, theta)``: the log-likelihood maximised over every coordinate but ``fixed`` (None: all), from ``theta``.

    L-BFGS-B on the exact gradient, with ``lower`` bounds (``-inf`` where none), to a relative
    tolerance of 1e-15 in the value: the profile's roots need its maximum to about 1e-10
    (Newton steps after it were tried and moved the limits by less than 1e-13).
    """
    from scipy.optimize import minimize

    free = np.array([i for i in range(theta.size) if i != fixed], dtype=np.int64)
    if free.size == 0:
        return float(objective(theta)), theta.copy()
    point = theta.copy()
    lo = lower[free]

    def negative(x):
        point[free] = x
        value = objective(point)
        if not np.isfinite(value) or not np.all(np.isfinite(objective.grad)):
            return np.inf, np.zeros_like(x)
        return -value, -objective.grad[free]

    opt = minimize(negative, np.maximum(theta[free], lo), jac=True, method="L-BFGS-B",
                   bounds=[(b if np.isfinite(b) else None, None) for b in lo],
                   options={"ftol": 1e-15, "gtol": 1e-11, "maxiter": 5000, "maxfun": 20000})
    out = theta.copy()
    out[free] = np.maximum(opt.x, lo)
    return float(objective(out)), out


class _Profile:
    """``zeta`` along coordinate ``k`` of ``theta`` in a frame, and where it crosses a cutoff."""

    def __init__(self, objective, theta_hat, l_hat, k, lower, step):
        self.objective, self.l_hat, self.k, self.lower, self.step = objective, l_hat, k, lower, step
        self.t_hat = float(theta_hat[k])
        self.cache = {self.t_hat: (0.0, theta_hat)}

    def zeta(self, t):
        """The signed root of the likelihood ratio at coordinate value ``t``.

        The maximum over the other coordinates can have several local maxima (one with a
        correlation at +-1 or an SD at zero beside an interior one), and which is the
        highest can change as ``t`` moves (radon's random floor slope has such a profile):
        the search starts both from the optimum at the nearest value already profiled and
        from the estimates, and keeps the higher.
        """
        t = float(t)
        if t in self.cache:
            return self.cache[t][0]
        nearest = min(self.cache, key=lambda s: abs(s - t))
        value, theta = -np.inf, None
        for origin in dict.fromkeys((nearest, self.t_hat)):
            start = self.cache[origin][1].copy()
            start[self.k] = t
            found, at = _maximise(self.objective, start, self.k, self.lower)
            if found > value:
                value, theta = found, at
        zeta = float(np.sign(t - self.t_hat) * np.sqrt(2.0 * max(self.l_hat - value, 0.0)))
        self.cache[t] = (zeta, theta)
        return zeta

    def limit(self, sign, cutoff, bound):
        """The coordinate where ``zeta = sign * cutoff`` (Brent's method), or ``bound`` if the profile stays inside.

        The bracket grows from the estimate in steps of ``step`` times 1.5 per step.
        """
        from scipy.optimize import brentq

        t, step = self.t_hat, self.step
        for _ in range(100):
            t_new = t + sign * step
            if bound is not None and sign * (t_new - bound) >= 0:
                t_new = bound
            if sign * self.zeta(t_new) >= cutoff:
                return brentq(lambda s: self.zeta(s) - sign * cutoff, min(t, t_new), max(t, t_new),
                              xtol=1e-13, rtol=4 * np.finfo(float).eps, maxiter=200)
            if t_new == bound:
                return bound
            t, step = t_new, 1.5 * step
        return np.nan


def _steps(objective, theta):
    """A first bracketing step per coordinate: its standard error from the observed information, within [0.05, 2]."""
    n = theta.size
    H = loglik_hessian(objective, theta)
    try:
        var = np.diag(np.linalg.inv(-H))
    except np.linalg.LinAlgError:
        var = np.full(n, np.nan)
    se = np.sqrt(np.where(np.isfinite(var) & (var > 0), var, np.nan))
    return np.clip(np.nan_to_num(se, nan=0.5), 0.05, 2.0)


def profile_intervals(model, fit, *, level=0.95, method=None):
    """Profile-likelihood confidence intervals of sigma, the group SDs and their correlations.

    For each natural parameter ``psi``, the log-likelihood maximised over all the other
    variance components with ``psi`` held fixed, ``l_p(psi)``; the interval is where
    ``2 (l_hat - l_p(psi)) <= z^2``, ``z = z_{(1+level)/2}``. An SD whose profile stays
    within ``z`` down to zero has lower limit 0, a correlation whose profile stays within
    ``z`` up to -1 or +1 that limit, as lme4 reports them. The fixed effects are not
    profiled (their t intervals: :func:`bayeshlm.t_tests`).

    Parameters
    ----------
    model : Model
        The (Gaussian) model of the fit.
    fit : EMResult
        Its REML or ML fit (:func:`bayeshlm.fit_em`).
    level : float
        Confidence level.
    method : {"reml", "ml"}, optional
        The likelihood to profile; default the fit's. lme4's ``confint(fit, method =
        "profile")`` profiles the ML likelihood also for a REML fit (its ``devfun2`` refits
        by ML): ``method="ml"`` gives its intervals. The estimates are then those of that
        likelihood, not the fit's.

    Returns
    -------
    pandas.DataFrame
        Index ``parameter``: ``sigma`` (unless the level-1 variances are known),
        ``sd[<coef>]``, ``corr[<a>,<b>]``, named as :attr:`EMResult.variance_se`; columns
        ``estimate, lower, upper``.

    Notes
    -----
    The profile is computed on the statistics re-expressed in coordinates in which each
    parameter is one coordinate of the kernels' ``theta`` (its SDs kept >= 0), maximised over
    the others by L-BFGS-B on the exact gradient, from two starts (the neighbouring
    profiled point's optimum and the estimates). The limits are roots found by Brent's
    method: exact to about 1e-9 where lme4 interpolates a spline through a grid of its
    profile. docs/design.md, "Profile intervals and the parametric bootstrap".

    Examples
    --------
    >>> import bayeshlm as bh
    >>> sleep = bh.load_dataset("sleepstudy")
    >>> model = bh.hlm("reaction ~ days + (days | subject)", sleep)
    >>> table = bh.profile_intervals(model, bh.fit_em(model), method="ml")
    >>> table.loc["sigma", ["lower", "upper"]].round(3).tolist()
    [22.898, 28.858]
    """
    from scipy.stats import norm

    model, fit = _check(model, fit, "profile_intervals")
    level = _check_level(level)
    method = fit.method if method is None else method
    if method not in ("reml", "ml"):
        raise ValueError(f"method must be 'reml' or 'ml' (None: the fit's, {fit.method!r}), got {method!r}")
    cutoff = float(norm.ppf(0.5 + level / 2))
    s2, sd, corr, _ = variance_components(model, np.asarray(fit.theta, dtype=np.float64)[None, :])
    sigma, sd, R = float(np.sqrt(s2[0])), sd[0], np.nan_to_num(corr[0], nan=0.0)
    np.fill_diagonal(R, 1.0)
    st = model.structure
    lower = np.full(model.n_theta, -np.inf)
    lower[st.sd_idx] = 0.0  # SDs >= 0: a negative one would flip the signs of its correlations
    frames = {}

    def frame_of(perm):
        if perm not in frames:
            frame = _Frame(model, method, np.asarray(perm, dtype=np.int64))
            l_hat, theta = _maximise(frame.objective, frame.encode(sigma, sd, R), None, lower)
            frames[perm] = (frame, theta, l_hat, _steps(frame.objective, theta))
        return frames[perm]

    rows = {}
    for name, kind, index in variance_parameter_names(model):
        perm = list(range(len(model.coef_names)))
        if kind == "corr":
            i, j = index
            block = int(np.searchsorted(st.block_ptr, i, side="right")) - 1
            c0, c1 = int(st.block_ptr[block]), int(st.block_ptr[block + 1])
            perm[c0:c1] = [j, i] + [c for c in range(c0, c1) if c not in (i, j)]
        frame, theta, l_hat, steps = frame_of(tuple(perm))
        if kind == "sigma":
            k, coordinate, bounds, estimate = 0, "sigma", (None, None), fit.sigma
        elif kind == "sd":
            k, coordinate, bounds, estimate = int(st.sd_idx[index]), index, (0.0, None), fit.sd[model.coef_names[index]]
        else:
            k, coordinate, bounds = int(st.theta_ptr[block]) + (c1 - c0), "corr", (-T_MAX, T_MAX)
            estimate = fit.corr[name[len("corr["):-1]]
        if method != fit.method:  # the estimate of the likelihood profiled
            estimate = frame.natural(coordinate, theta[k])
        profile = _Profile(frame.objective, theta, l_hat, k, lower, steps[k])
        limits = [frame.natural(coordinate, profile.limit(sign, cutoff, bound)) for sign, bound in zip((-1, 1), bounds,
                                                                                                       strict=True)]
        rows[name] = (float(estimate), *limits)
    table = pd.DataFrame.from_dict(rows, orient="index", columns=["estimate", "lower", "upper"])
    table.index.name = "parameter"
    return table


# ---------------------------------------------------------------------------------------- bootstrap
class _Replicator:
    """Simulates responses from a fit and refits them: one replicate per call, from its own seed.

    ``y* = F a_hat + X b* + e*``: the fixed effects at their estimates, every group's
    coefficients at every level drawn from ``N(0, T_hat)`` (the block of its factor), the
    level-1 noise from ``N(0, sigma_hat^2)`` or the known variances. The refit replaces the
    response and the per-group statistics of the compiled model (the statistics of the new
    response in the model's own basis, one pass over the rows); nothing else changes.
    """

    def __init__(self, model, fit):
        design, st = model.design, model.structure
        self.model, self.method = model, fit.method
        self.mean = design.F @ np.array([fit.fixed[n] for n in model.fixed_names])
        _, _, _, T = variance_components(model, np.asarray(fit.theta, dtype=np.float64)[None, :])
        self.roots = []  # (nodes, columns, square root of T's block of the factor's coefficients)
        for k in range(len(st.level_ptr) - 1):
            cols = slice(int(st.level_ptr[k]), int(st.level_ptr[k + 1]))
            values, vectors = np.linalg.eigh(T[0][cols, cols])
            self.roots.append((slice(int(st.node_ptr[k]), int(st.node_ptr[k + 1])), cols,
                               vectors * np.sqrt(np.maximum(values, 0.0))))
        w = design.row_weights
        self.noise_sd = (np.sqrt(design.obs_var) if model.sigma_known
                         else fit.sigma / np.sqrt(w) if w is not None else np.full(model.n_obs, fit.sigma))

    def simulate(self, rng):
        """One response vector drawn from the fitted model."""
        design, st = self.model.design, self.model.structure
        b = np.zeros((int(st.node_ptr[-1]), len(self.model.coef_names)))
        for nodes, cols, root in self.roots:
            b[nodes, cols] = rng.standard_normal((nodes.stop - nodes.start, cols.stop - cols.start)) @ root.T
        y = self.mean + self.noise_sd * rng.standard_normal(self.model.n_obs)
        if b.shape[1]:
            y += np.einsum("ik,ik->i", design.X, finest_coefficients(self.model, b)[design.group_idx])
        return y

    def refit_model(self, y):
        """The compiled model with response ``y``: new statistics in the model's basis, the rest shared."""
        model = self.model
        design, basis = model.design, model.basis
        stats = compute_suffstats(y, design.F, design.X, design.group_idx, design.group_labels.shape[0],
                                  basis.weights(design.obs_var, design.weights), basis.shift, basis.scale)
        return replace(model, design=design._replace(y=y), stats=stats)

    def __call__(self, seed):
        """``(estimates, converged)`` of the replicate of ``seed`` (a :class:`numpy.random.SeedSequence`)."""
        refit = fit_em(self.refit_model(self.simulate(np.random.default_rng(seed))), self.method)
        return _estimates(self.model, refit), bool(refit.converged)


def _estimates(model, fit):
    """The fixed effects, then ``[sigma, SDs, correlations]``, of a fit, as one vector."""
    variance = natural_variance_parameters(model, np.asarray(fit.theta, dtype=np.float64)[None, :])[0]
    return np.concatenate([[fit.fixed[n] for n in model.fixed_names], variance])


_WORKER = None  # the replicator of a worker process of bootstrap(n_jobs > 1)


def _start_worker(replicator):
    """Set up a worker process: its replicator, and one BLAS thread.

    With two workers on two cores, the BLAS threads of each (OpenBLAS keeps them spinning
    between calls) take the cores from the other: measured, two workers were then twice as
    slow as one process. threadpoolctl, where installed, limits them; without it the
    workers run with the BLAS's own threads.
    """
    global _WORKER
    _WORKER = replicator
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - an optional package
        return
    threadpool_limits(1)


def _run_chunk(seeds):
    return [_WORKER(seed) for seed in seeds]


def _in_processes(replicator, seeds, n_jobs):
    """The replicates of ``seeds``, in order, by ``n_jobs`` worker processes (forked where the platform can)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # forked workers share the compiled kernels and the model; elsewhere each imports bayeshlm
    # and receives the replicator pickled
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    size = max(1, -(-len(seeds) // (4 * n_jobs)))  # four chunks per worker: balance without much traffic
    chunks = [seeds[i:i + size] for i in range(0, len(seeds), size)]
    with ProcessPoolExecutor(n_jobs, mp_context=context, initializer=_start_worker, initargs=(replicator,)) as pool:
        return [row for part in pool.map(_run_chunk, chunks) for row in part]


@dataclass(frozen=True, eq=False)
class BootstrapResult:
    """Replicate estimates of a parametric bootstrap (:func:`bootstrap`).

    Attributes
    ----------
    replicates : pandas.DataFrame
        One row per replicate whose refit converged (index ``replicate``, its number
        ``0 .. n - 1``), one column per parameter: the fixed effects by name, ``sigma``
        (unless the level-1 variances are known), ``sd[<coef>]``, ``corr[<a>,<b>]``.
    estimate : pandas.Series
        The fit's own estimates of the same parameters.
    n : int
        Replicates simulated.
    failed : tuple of int
        The replicates whose refit did not converge: left out of ``replicates``, counted
        here, and reported by :meth:`summary`.
    method : str
        ``"reml"`` or ``"ml"``, the fit's and the refits'.
    seed : int or sequence of int
        The entropy of the run's :class:`numpy.random.SeedSequence`: ``bootstrap(...,
        seed=result.seed)`` repeats the run exactly.
    seconds : float
        Wall time of the run.
    """

    replicates: pd.DataFrame
    estimate: pd.Series
    n: int
    failed: tuple
    method: str
    seed: int
    seconds: float

    @property
    def n_failed(self) -> int:
        """Number of replicates whose refit did not converge (left out)."""
        return len(self.failed)

    def intervals(self, level=0.95, kind="percentile"):
        """Bootstrap standard errors and confidence intervals of every parameter.

        Parameters
        ----------
        level : float
            Confidence level.
        kind : {"percentile", "basic", "normal"}
            ``"percentile"``: the ``(1 -+ level) / 2`` quantiles of the replicates
            (linear interpolation between order statistics); ``"basic"``: those quantiles
            reflected about the estimate, ``2 est - q``; ``"normal"``: ``est -+ z se``.
            The last two are cut at the parameters' ranges (SDs >= 0, correlations within
            [-1, 1]).

        Returns
        -------
        pandas.DataFrame
            Index ``parameter``; columns ``estimate`` (the fit's), ``se`` (the SD of the
            replicates), ``lower``, ``upper``. Nan with fewer than two converged replicates.
        """
        from scipy.stats import norm

        level = _check_level(level)
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        reps, est = self.replicates, self.estimate
        enough = len(reps) >= 2
        alpha = (1.0 - level) / 2
        se = reps.std(ddof=1) if enough else pd.Series(np.nan, index=est.index)
        q_lo = reps.quantile(alpha) if enough else se
        q_hi = reps.quantile(1.0 - alpha) if enough else se
        if kind == "percentile":
            lower, upper = q_lo, q_hi
        elif kind == "basic":
            lower, upper = 2 * est - q_hi, 2 * est - q_lo
        else:
            z = float(norm.ppf(1.0 - alpha))
            lower, upper = est - z * se, est + z * se
        if kind != "percentile":
            lo_bound = pd.Series([0.0 if n == "sigma" or n.startswith("sd[") else -1.0 if n.startswith("corr[")
                                  else -np.inf for n in est.index], index=est.index)
            lower = lower.clip(lower=lo_bound)
            upper = upper.clip(upper=pd.Series([1.0 if n.startswith("corr[") else np.inf for n in est.index],
                                               index=est.index))
        table = pd.DataFrame({"estimate": est, "se": se, "lower": lower, "upper": upper})
        table.index.name = "parameter"
        return table

    def summary(self, level=0.95, kind="percentile") -> str:
        """The run and its intervals, printed."""
        head = (f"parametric bootstrap of a {self.method.upper()} fit: {self.n} replicates, "
                f"{self.n - self.n_failed} refitted"
                + (f"; {self.n_failed} did not converge and are left out (replicates "
                   f"{', '.join(str(i) for i in self.failed[:10])}{', ...' if self.n_failed > 10 else ''})"
                   if self.failed else "")
                + f"; seed {self.seed}; {self.seconds:.2f} s")
        return head + f"\n{kind} intervals at level {level}:\n" + self.intervals(level, kind).to_string()

    def __str__(self) -> str:
        return self.summary()


def bootstrap(model, fit, n, *, seed=None, n_jobs=1):
    """Parametric bootstrap of a REML or ML fit: ``n`` responses simulated from it, each refitted.

    Each replicate draws a response from the fitted model (the fixed effects at their
    estimates, every group's coefficients at every level from ``N(0, T_hat)``, the level-1
    noise from ``N(0, sigma_hat^2)`` or the known variances) and refits it by
    :func:`bayeshlm.fit_em` with the fit's method, on the compiled model with only the
    response and its per-group statistics replaced.

    Parameters
    ----------
    model : Model
        The (Gaussian) model of the fit; it must hold its rows (not compiled from statistics).
    fit : EMResult
        Its REML or ML fit.
    n : int
        Number of replicates.
    seed : int or sequence of int, optional
        Seeds the run: replicate ``i`` draws from the ``i``-th child of
        ``numpy.random.SeedSequence(seed).spawn(n)``, so the replicates do not depend on
        ``n_jobs`` or on the order they are computed in, and the first ``m`` replicates of a
        run of ``n > m`` are those of a run of ``m``. Default: fresh entropy, recorded in the
        result (``BootstrapResult.seed``).
    n_jobs : int
        Worker processes (forked where the platform allows, each with one BLAS thread). The
        compiled kernels release the GIL, but a refit of a small model spends most of its
        time in Python (the optimiser's iterations, the result's tables), so threads do not
        run refits side by side; processes do. Measured on a 2-core machine, 200 replicates:
        sleepstudy's random-slope model 0.65-0.85 s with ``n_jobs=1``, 0.46-0.48 s with
        ``n_jobs=2`` (two threads: 0.76-1.1 s); HSB's random-slope model (7185 rows, 160
        schools) 2.5-2.9 s and 1.3-1.45 s (two threads: 2.8-3.0 s). Starting the workers
        costs about 0.1 s. Python 3.12 and later warn (``DeprecationWarning``, shown by
        test runners) that forking a process with threads, here the BLAS's idle ones, may
        deadlock the child; the workers run only numpy, scipy and the compiled kernels.

    Returns
    -------
    BootstrapResult
        The replicates' estimates (fixed effects, sigma, SDs, correlations), the
        replicates that did not converge (left out, counted), and
        :meth:`BootstrapResult.intervals`.

    Examples
    --------
    >>> import bayeshlm as bh
    >>> sleep = bh.load_dataset("sleepstudy")
    >>> model = bh.hlm("reaction ~ days + (days | subject)", sleep)
    >>> boot = bh.bootstrap(model, bh.fit_em(model), 20, seed=1)
    >>> boot.replicates.shape
    (20, 6)
    """
    model, fit = _check(model, fit, "bootstrap")
    n = _positive_int(n, "n")
    n_jobs = _positive_int(n_jobs, "n_jobs")
    if not model.rows_held:
        raise ValueError("the parametric bootstrap simulates responses row by row: the model must hold its rows "
                         "(it was compiled from statistics, bayeshlm.hlm_stats); compile it with bayeshlm.hlm")
    t0 = time.perf_counter()
    sequence = np.random.SeedSequence(seed)
    seeds = sequence.spawn(n)
    replicator = _Replicator(model, fit)
    if n_jobs == 1 or n == 1:
        rows = [replicator(s) for s in seeds]
    else:
        rows = _in_processes(replicator, seeds, min(n_jobs, n))
    names = list(model.fixed_names) + [name for name, _, _ in variance_parameter_names(model)]
    ok = [i for i, (values, converged) in enumerate(rows) if converged and np.all(np.isfinite(values))]
    kept = set(ok)
    replicates = pd.DataFrame(np.array([rows[i][0] for i in ok]).reshape(len(ok), len(names)),
                              index=pd.Index(ok, name="replicate"), columns=names)
    return BootstrapResult(
        replicates=replicates,
        estimate=pd.Series(_estimates(model, fit), index=names),
        n=n,
        failed=tuple(i for i in range(n) if i not in kept),
        method=fit.method,
        seed=sequence.entropy,
        seconds=time.perf_counter() - t0,
    )
