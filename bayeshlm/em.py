"""EM empirical-Bayes / maximum-likelihood fit (ML and REML) on the same tree passes as the sampler.

It gives the fixed effects with model-based and cluster-robust standard errors, sigma, the
group SDs and correlations with standard errors from the observed information, the
log-likelihood and information criteria, boundary status, the intraclass correlation,
reliabilities, each group's own least-squares coefficients, and the empirical-Bayes group
estimates with their conditional covariances (:class:`EMResult`). Likelihood-ratio tests are
in :mod:`bayeshlm.lrt`, the comparison with a posterior in :mod:`bayeshlm.compare`.

Method: EM iterations (Dempster, Rubin & Tsutakawa 1981; Laird & Ware 1982) from a rough
start, whose E-step is the downward pass without noise and whose M-step is closed form, both
compiled behind the core's seam (:func:`samplers.gaussian.em_iteration`, docs/design.md,
"EM"), then a finish on the exact ML or REML log-likelihood from the upward pass,
which EM approaches only linearly: Newton steps on the unconstrained variance components of
:mod:`samplers.theta` (Hessian from differences of the exact gradient) where they converge
quickly, else a quasi-Newton search (L-BFGS) followed by a few Newton steps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from bayeshlm.family import LATENT_VARIANCE
from bayeshlm.model import model_at_variance
from bayeshlm.robust import (
    bound_nu_gradient,
    bound_terms,
    expected_weights,
    model_at_weights,
    scaled_residuals,
    student_exact_ml,
)
from bayeshlm.start import starting_theta
from samplers.gaussian import workspace
from samplers.ml import eb_estimates, em_step, loglik_and_gradient
from samplers.theta import encode_theta


@dataclass(frozen=True)
class EMResult:
    """Estimates of an ML or REML fit (see :func:`fit_em`).

    ``model`` is the identity of the model fitted (:meth:`bayeshlm.model.Model.identity`),
    checked by every function that takes a model and a fit; ``model_record`` what
    :func:`bayeshlm.model_from` needs to compile it again. ``theta`` holds the variance
    components in the kernels' unconstrained coordinates (:mod:`bayeshlm.basis`).
    """

    method: str
    fixed: dict
    fixed_se: dict
    vcov_fixed: np.ndarray
    sigma: float
    sd: dict
    corr: dict
    loglik: float
    aic: float
    bic: float
    group_means: np.ndarray
    group_cov: np.ndarray
    theta: np.ndarray
    converged: bool
    n_em_iter: int
    n_evaluations: int
    seconds: float
    message: str = ""
    labels: dict = field(default_factory=dict)
    boundary: tuple = ()
    n_params: int = 0
    n_obs: int = 0
    icc: float | None = None
    robust_se: dict = field(default_factory=dict)
    group_ols: np.ndarray | None = None
    variance_se: dict = field(default_factory=dict)
    reliability: dict = field(default_factory=dict)
    reliability_by_group: np.ndarray | None = None
    model: dict = field(default_factory=dict)
    model_record: dict = field(default_factory=dict)
    n_groups: dict = field(default_factory=dict)
    icc_by_level: dict = field(default_factory=dict)
    variance_model: dict = field(default_factory=dict)
    student: dict = field(default_factory=dict)
    n_missing: int = 0

    @property
    def deviance(self) -> float:
        """``-2`` times the log-likelihood (the REML criterion for a REML fit)."""
        return -2.0 * self.loglik

    def fixed_table(self):
        """Fixed effects: estimate, model-based SE, z statistic, two-sided normal p-value, robust SE."""
        import pandas as pd
        from scipy.stats import norm

        est = pd.Series(self.fixed)
        se = pd.Series(self.fixed_se)
        z = est / se
        return pd.DataFrame({"estimate": est, "se": se, "z": z, "p_value": 2 * norm.sf(np.abs(z)),
                             "robust_se": pd.Series(self.robust_se)})

    def variance_table(self):
        """Variance components: SD and variance of each random coefficient and of the residual."""
        import pandas as pd

        rows = {f"sd[{k}]": (v, self.variance_se.get(f"sd[{k}]", np.nan), v * v, self.reliability.get(k, np.nan))
                for k, v in self.sd.items()}
        if np.isfinite(self.sigma):
            rows["sigma"] = (self.sigma, self.variance_se.get("sigma", np.nan), self.sigma**2, np.nan)
        return pd.DataFrame.from_dict(rows, orient="index", columns=["sd", "se", "variance", "reliability"])

    def __str__(self) -> str:
        return self.summary()

    def _repr_pretty_(self, printer, cycle):  # IPython and Jupyter show the report, not the arrays
        printer.text(self.summary())

    def summary(self) -> str:
        """A printed report in the layout of lme4 and HLM."""
        if self.student:
            how = (f"fit with a Student-t level 1 by {self.student['fit']} ({self.n_evaluations} likelihood "
                   f"evaluations, {self.seconds:.3f} s)")
        else:
            how = (f"fit by {'EM and ' if self.n_em_iter else ''}"
                   f"{'Newton' if self.message.startswith('Newton') else 'quasi-Newton'}"
                   f" ({self.n_em_iter} EM iterations, {self.n_evaluations} likelihood evaluations, "
                   f"{self.seconds:.3f} s)")
        lines = [
            f"{'REML' if self.method == 'reml' else 'Maximum likelihood'} {how}",
            f"{'REML criterion' if self.method == 'reml' else 'deviance'}: {self.deviance:.4f}   "
            f"logLik: {self.loglik:.4f}   AIC: {self.aic:.4f}   BIC: {self.bic:.4f}",
            "converged" if self.converged else f"NOT converged: {self.message}",
        ]
        if self.n_groups:
            lines.append(f"observations: {self.n_obs}; groups: "
                         + ", ".join(f"{factor} {count}" for factor, count in self.n_groups.items()))
        if self.n_missing:
            lines.append(f"missing responses: {self.n_missing} rows, ignored (the fit is to the observed rows, "
                         "the likelihood under missing at random; bayeshlm.impute draws them from a posterior)")
        if self.boundary:
            lines.append("estimate on the boundary (SD = 0): " + ", ".join(self.boundary))
        lines += ["", "Random effects:", self.variance_table().to_string()]
        if self.corr:
            lines.append("correlations: " + ", ".join(f"{k}: {v:.4f}" for k, v in self.corr.items()))
        if self.icc is not None:
            lines.append(f"intraclass correlation: {self.icc:.4f}")
        elif self.icc_by_level:
            lines.append("intraclass correlations (averaged over the rows' random slopes; by level: "
                         "bayeshlm.variance_partition): "
                         + ", ".join(f"{factor} {icc:.4f}" for factor, icc in self.icc_by_level.items()))
        if self.variance_model:
            lines += ["", *variance_model_lines(self.variance_model)]
        if self.student:
            lines += ["", *student_lines(self.student)]
        table = self.fixed_table()
        table["p_value"] = table["p_value"].map(format_p)
        lines += ["", "Fixed effects:", table.to_string()]
        return "\n".join(lines)


def variance_model_lines(vm):
    """The lines of a report on the level-1 variance model of ``EMResult.variance_model``."""
    import pandas as pd

    table = pd.DataFrame({"delta": pd.Series(vm["delta"]), "se": pd.Series(vm["delta_se"]),
                          "sd_ratio": pd.Series(vm.get("sd_ratio", {}), dtype=float),
                          "ratio_se": pd.Series(vm.get("sd_ratio_se", {}), dtype=float)})
    return [f"Level-1 variance: sigma^2 exp(z' delta), z from sigma='{vm['formula']}' (sigma: the SD at z = 0; "
            "sd_ratio = exp(delta / 2), the SD of a level relative to the reference):", table.to_string()]


def _with_partition(model, result):
    """The fit with each factor's intraclass correlation (:func:`bayeshlm.partition.variance_partition`).

    Averaged over the rows' random-slope values; empty where no level-1 variance is
    partitioned against (known variances, a count model) or the model has no groups.
    """
    from dataclasses import replace

    from bayeshlm.partition import variance_partition

    if (model.gaussian and model.sigma_known) or not model.coef_names or model.family == "poisson":
        return result
    table = variance_partition(model, result)
    return replace(result, icc_by_level={str(k): float(v) for k, v in table["icc"].drop("Residual").items()})


def group_counts(model):
    """``{factor: number of groups}`` of a model, finest factor first."""
    return {str(f): len(labels) for f, labels in zip(model.design.factors, model.design.factor_labels, strict=True)}


def format_p(p):
    """A p-value as a report prints it: three significant digits, ``< 1e-16`` below what doubles resolve."""
    if not np.isfinite(p):
        return "nan"
    return "< 1e-16" if p < 1e-16 else f"{p:.3g}"


class LoglikObjective:
    """The ML or REML log-likelihood of ``theta`` (one compiled call per evaluation).

    ``theta`` holds the variance components in the kernels' unconstrained coordinates
    (:mod:`samplers.theta`); the value is in the kernels' basis, so it differs from the
    log-likelihood :func:`fit_em` reports by the constant
    :meth:`bayeshlm.basis.Basis.loglik_offset`. Each call leaves the exact gradient in
    ``grad``. The fit maximises it; profile intervals (:mod:`bayeshlm.intervals`) maximise
    it with one coordinate held fixed.

    Parameters
    ----------
    model : Model
        A Gaussian model; only its ``stats``, ``structure`` and ``priors`` are read, so a model
        whose statistics were re-expressed in another basis (or computed for another response)
        serves as well.
    method : {"reml", "ml"}
    """

    def __init__(self, model, method):
        self.model = model
        self.reml = method == "reml"
        self.n_eval = 0
        self.grad = np.empty(model.n_theta)
        self.work = workspace(model.stats, model.structure)
        self._last = None  # (theta, value, gradient) of the last evaluation

    def __call__(self, theta):
        """The log-likelihood at ``theta``, its gradient left in ``self.grad``.

        The point evaluated last is not evaluated again (the polish and the fit ask for the
        value at the optimum they have just reached).
        """
        if self._last is not None and np.array_equal(theta, self._last[0]):
            self.grad[:] = self._last[2]
            return self._last[1]
        self.n_eval += 1
        m = self.model
        value = loglik_and_gradient(None, theta, self.work, m.stats, m.structure, m.priors, self.reml, self.grad)
        self._last = (np.array(theta, dtype=np.float64), value, self.grad.copy())
        return value

    def negative_with_gradient(self, theta):
        """``(-loglik, -gradient)`` for a minimiser; ``inf`` where the likelihood is not finite."""
        value = self(theta)
        if not np.isfinite(value) or not np.all(np.isfinite(self.grad)):
            return np.inf, np.zeros_like(theta)
        return -value, -self.grad.copy()


def observed_information(model, theta, method="reml"):
    """``-H``: minus the Hessian of the ML or REML log-likelihood in the unconstrained ``theta``.

    Central differences of the exact gradient (the same as the fit's standard errors use).
    """
    return -loglik_hessian(LoglikObjective(model, method), np.asarray(theta, dtype=np.float64))


def fixed_cov_at(model, theta):
    """The covariance of the fixed-effect estimates given the variance components ``theta``, in the user's units.

    ``(F' V(theta)^-1 F)^-1`` from one pass (:func:`samplers.ml.eb_estimates`): the fit's
    ``vcov_fixed`` at its own ``theta``; elsewhere what small-sample inference differentiates.
    """
    stats, structure = model.stats, model.structure
    work = workspace(stats, structure)
    n_nodes = int(structure.node_ptr[-1])
    p, d = stats.Fty.shape[0], stats.Xty.shape[1]
    a, b, V, vcov = np.empty(p), np.zeros((n_nodes, d)), np.zeros((n_nodes, d, d)), np.empty((p, p))
    eb_estimates(None, np.asarray(theta, dtype=np.float64), work, stats, structure, model.priors, a, b, V, vcov)
    return model.basis.fixed_cov(vcov)


def loglik_at(model, sigma, cov, method="reml"):
    """The ML or REML log-likelihood at given variance components, in the user's parametrisation.

    Parameters
    ----------
    model : Model
    sigma : float
        Level-1 SD (ignored when the level-1 variances are known).
    cov : ndarray of shape (n_coef, n_coef)
        Covariance of the group coefficients (block diagonal as the model's blocks), for the
        coefficients as the user wrote them.
    method : {"reml", "ml"}

    Returns
    -------
    float
        The log-likelihood as :func:`fit_em` reports it (lme4's ``logLik``; for REML the
        restricted log-likelihood), ``-inf`` where it is not defined.
    """
    basis = model.basis
    s2 = 1.0 if model.sigma_known else float(sigma) ** 2 / basis.sigma_scale**2
    T = basis.coef_cov_from_user(np.asarray(cov, dtype=np.float64))
    theta = np.empty(model.n_theta)
    if not encode_theta(s2, 0.5 * (T + T.T), model.structure, theta):
        return -np.inf
    value = float(LoglikObjective(model, method)(theta))
    return value + basis.loglik_offset(model.n_obs, restricted=method == "reml")


def em_iterations(model, theta, n_iter, method="reml", trace=None):
    """EM iterations from ``theta`` (unconstrained variance components); returns the new ``theta``.

    E-step: the moments of the group coefficients given ``theta`` from the downward pass; for
    REML they also carry the uncertainty of the fixed effects, which are integrated out
    (``Cov[b_j | y] = Cov[b_j | a, y] + G_j A^{-1} G_j'`` with ``G_j`` the derivative of
    ``E[b_j | a, y]`` in ``a``). M-step: ``T`` (per covariance block) the mean of
    ``E[b_j b_j']``, ``s2 = E[residual sum of squares] / N``; the fixed effects are at their
    GLS value, which maximises the likelihood given the variances. Each iteration does not
    decrease the ML (or REML) likelihood (Dempster, Rubin & Tsutakawa 1981; Laird, Lange &
    Stram 1987). With ``trace`` a list, the log-likelihood before each iteration is appended.
    """
    structure, stats = model.structure, model.stats
    n_groups, d = stats.Xty.shape
    p = stats.Fty.shape[0]
    objective = LoglikObjective(model, method) if trace is not None else None
    work = workspace(stats, structure)
    n_nodes = int(structure.node_ptr[-1])
    a = np.empty(p)
    b = np.empty((n_nodes, d))
    V = np.empty((n_nodes, d, d))
    A_inv = np.empty((p, p))
    T = np.empty((d, d))
    theta = theta.copy()
    for _ in range(n_iter):
        if objective is not None:
            trace.append(objective(theta))
        trial = theta.copy()
        if not em_step(None, trial, work, stats, structure, model.priors, method == "reml", a, b, V, A_inv, T):
            break
        theta = trial
    return theta


def fit_em(model, method=None, *, em_iter=5, tol=1e-6, max_eval=5000, n_agq=1):
    """Maximum-likelihood (``"ml"``) or restricted (``"reml"``) fit of the variance components.

    A model with a non-Gaussian level 1 (``family=`` of :func:`bayeshlm.hlm`) is fitted by
    maximum likelihood with the Laplace approximation, or adaptive Gauss-Hermite quadrature
    with ``n_agq`` nodes (:func:`bayeshlm.glmm.fit_glmm`), as lme4's ``glmer``.

    A Student-t level 1 (``family="student"``, one grouping factor or none) is fitted by a
    factorised EM on its scale mixture (docs/design.md, "The Student-t ML and REML fit"):
    the weighted Gaussian model's ML or REML fit alternated with each row's weight
    ``E[lambda_i]``, ``nu`` fixed or estimated by Brent's method on ``log(nu - 1)``. Its
    E-step is approximate (with independent ``t`` rows and Gaussian group coefficients the
    exact one is not closed form), so the fit maximises a lower bound on the log-likelihood,
    which is what ``loglik`` reports; on sleepstudy's random intercept its fixed effects are
    within 0.05 SE of the exact ML fit, sigma is 2% high at ``nu = 4``, and an estimated
    ``nu`` is biased upwards (7.0 against 4.5). With one random coefficient per group,
    ``n_agq > 1`` gives the exact ML fit instead, by adaptive quadrature of each group's
    integral (:func:`bayeshlm.robust.student_exact_ml`; 20 nodes are ample).
    ``result.student`` holds ``nu``, its SE and each row's weight ``E[lambda_i]`` (small for
    an outlying row).

    Parameters
    ----------
    model : Model
        From :func:`bayeshlm.hlm`; its priors are ignored.
    method : {"reml", "ml"}, optional
        Default ``"reml"`` for a Gaussian or Student-t level 1; a non-Gaussian one, or a
        Student-t one with ``n_agq > 1``, takes ``"ml"`` only.
    n_agq : int
        Nodes of the adaptive quadrature of a non-Gaussian model (1: the Laplace
        approximation; more: one grouping factor with one random coefficient only); for a
        Student-t level 1, more than 1 asks for its exact ML fit (one random coefficient).
    em_iter : int
        EM iterations before the Newton (or quasi-Newton) finish.
    tol : float
        Convergence tolerance of the finish (on the projected gradient).
    max_eval : int
        Cap on log-likelihood evaluations.

    Returns
    -------
    EMResult
    """
    if model.family == "student":
        if n_agq != 1:
            if method not in (None, "ml"):
                raise ValueError("n_agq > 1 gives the exact ML fit of a Student-t level 1 (method='ml'); REML is of "
                                 "its factorised EM (n_agq=1)")
            return _student_exact_result(model, n_agq)
        method = "reml" if method is None else method
        if method not in ("reml", "ml"):
            raise ValueError(f"method must be 'reml' or 'ml', got {method!r}")
        return _fit_student(model, method, em_iter=em_iter, tol=tol, max_eval=max_eval)
    if not model.gaussian:
        if method not in (None, "ml"):
            raise ValueError(f"a {model.family} model is fitted by maximum likelihood (method='ml'); REML is for "
                             "Gaussian models")
        from bayeshlm.glmm import fit_glmm

        return _glmm_result(model, fit_glmm(model, n_agq, max_eval=max(max_eval, 20000)), n_agq)
    if n_agq != 1:
        raise ValueError("n_agq is for non-Gaussian models (family= in bayeshlm.hlm); a Gaussian model's "
                         "likelihood is exact")
    method = "reml" if method is None else method
    if method not in ("reml", "ml"):
        raise ValueError(f"method must be 'reml' or 'ml', got {method!r}")
    if model.variance_design is not None:
        if model.variance_design.group is not None:
            raise NotImplementedError(
                f"sigma={model.variance_design.formula!r} gives each group of {model.variance_design.group!r} a "
                "level-1 SD drawn from a distribution: a random effect in the variance, which the ML/REML fit does not "
                "integrate; its posterior is bayeshlm.sample(model). For ML, give each group its own variance "
                f"parameter: sigma='~ {model.variance_design.group}' (categorical)")
        return _fit_variance_model(model, method, em_iter=em_iter, tol=tol, max_eval=max_eval)
    t0 = time.perf_counter()
    objective, theta, hessian, finish = maximise_theta(model, method, None, em_iter=em_iter, tol=tol,
                                                       max_eval=max_eval)
    return _gaussian_result(model, method, objective, theta, hessian, finish, em_iter, t0)


def maximise_theta(model, method, theta=None, *, em_iter=5, tol=1e-6, max_eval=5000):
    """The ML or REML optimum over the variance components of a Gaussian model: ``(objective, theta, H, finish)``.

    From ``theta`` (default: the rough start of :func:`bayeshlm.start.starting_theta`), ``em_iter``
    EM iterations, then Newton steps, or a quasi-Newton search (L-BFGS) and Newton steps where
    they do not reach ``tol`` (docs/design.md, "EM"). ``objective`` is the model's
    :class:`LoglikObjective` (its value at ``theta`` is in the kernels' basis), ``H`` the
    Hessian at ``theta`` when the last steps kept it valid, else None, ``finish`` how the
    search ended.
    """
    from scipy.optimize import minimize  # imported here: it adds 0.2 s to `import bayeshlm`

    if theta is None:
        theta = starting_theta(model, np.random.default_rng(0), jitter=0.0)
    theta = em_iterations(model, np.asarray(theta, dtype=np.float64), em_iter, method)
    objective = LoglikObjective(model, method)
    # Newton steps from the EM iterate: where they reach the tolerance (an interior optimum
    # with a well-conditioned Hessian, the usual case) no quasi-Newton iterations are needed.
    theta, hessian = _newton_polish(objective, theta, max_steps=8, rate=0.2)
    if theta.size and np.max(np.abs(objective.grad)) <= tol:
        finish = "Newton steps from the EM iterate"
    else:  # a variance near zero, a flat or curved-up direction: quasi-Newton, then polish
        opt = minimize(objective.negative_with_gradient, theta, jac=True, method="L-BFGS-B",
                       options={"gtol": tol, "ftol": 1e-13, "maxfun": max_eval, "maxiter": max_eval})
        theta, hessian = _newton_polish(objective, opt.x)
        finish = str(opt.message)
    return objective, theta, hessian, finish


def _gaussian_result(model, method, objective, theta, hessian, finish, em_iter, t0):
    """The :class:`EMResult` of a Gaussian model at the optimum ``theta`` of ``objective``."""
    loglik = objective(theta)
    # Converged when the log-likelihood is flat at the optimum: a step of 1e-3 in any
    # unconstrained coordinate changes it by less than about 1e-6. The optimiser's own flag
    # also reports line searches that stop on rounding at the optimum.
    grad_max = float(np.max(np.abs(objective.grad))) if theta.size else 0.0
    converged = bool(np.isfinite(loglik) and grad_max <= 1e-3)
    # estimates at the optimum, in the kernels' basis, then in the user's parametrisation
    stats = model.stats
    structure = model.structure
    basis = model.basis
    n_groups, d = stats.Xty.shape
    p = stats.Fty.shape[0]
    work = workspace(stats, structure)
    n_nodes = int(structure.node_ptr[-1])
    a = np.empty(p)
    b = np.zeros((n_nodes, d))
    V = np.zeros((n_nodes, d, d))
    vcov = np.empty((p, p))
    s2 = eb_estimates(None, theta, work, stats, structure, model.priors, a, b, V, vcov)
    C = work.C
    from bayeshlm.results import variance_components

    s2_user, sd_user, corr_user, T_user = variance_components(model, theta[None, :])
    names = model.coef_names
    corr = {}
    for k in range(len(structure.block_ptr) - 1):
        for i in range(structure.block_ptr[k], structure.block_ptr[k + 1]):
            for j in range(structure.block_ptr[k], i):
                corr[corr_key(names[j], names[i])] = float(corr_user[0, i, j])
    n_par = p + model.n_theta
    n_obs = model.n_obs
    # A variance component at its lower bound: the group covariance is singular. In the
    # kernels' basis the coefficients have unit scale, so an SD below 1e-4 is negligible.
    sd_kernel = np.sqrt(np.maximum(np.diag(C @ C.T), 0.0))
    boundary = tuple(name for name, sd in zip(names, sd_kernel, strict=True) if sd < 1e-4)
    icc = None
    if names == ("Intercept",) and not model.sigma_known:
        icc = float(sd_user[0, 0] ** 2 / (sd_user[0, 0] ** 2 + s2_user[0]))
    a_user = basis.fixed_values(a)
    vcov_user = basis.fixed_cov(vcov)
    b_user = basis.coef_values(b)
    V_user = basis.coef_cov(V)
    lp = structure.level_ptr
    rel = _reliability(model, s2, T_user[0], V_user)
    robust = _robust_vcov_clusters(model, a, b, s2, vcov) if model.rows_held else np.full_like(vcov, np.nan)
    group_ols = np.full(b.shape, np.nan)
    if not model.crossed:  # a group of crossed factors has no least-squares estimate of its own
        group_ols[:n_groups, :lp[1]] = _group_ols_user(model, lp[1])
    if len(lp) > 2:  # several factors: each group's label says its factor
        group_labels = [f"{f}={lab}" for f, labels in zip(model.design.factors, model.design.factor_labels,
                                                          strict=True) for lab in labels]
    else:
        group_labels = list(model.design.group_labels)
    robust = basis.fixed_cov(robust)
    variance_se = _variance_se(model, theta, method, boundary, hessian)
    loglik = float(loglik) + basis.loglik_offset(n_obs, restricted=method == "reml")
    return _with_partition(model, EMResult(
        method=method,
        fixed=dict(zip(model.fixed_names, a_user.tolist(), strict=True)),
        fixed_se=dict(zip(model.fixed_names, np.sqrt(np.diag(vcov_user)).tolist(), strict=True)),
        vcov_fixed=vcov_user,
        sigma=float(np.sqrt(s2_user[0])) if not model.sigma_known else float("nan"),
        sd=dict(zip(names, sd_user[0].tolist(), strict=True)),
        corr=corr,
        loglik=loglik,
        aic=float(-2 * loglik + 2 * n_par),
        bic=float(-2 * loglik + np.log(n_obs) * n_par),
        group_means=b_user,
        group_cov=V_user,
        theta=theta,
        converged=converged,
        n_em_iter=em_iter,
        n_evaluations=objective.n_eval,
        seconds=time.perf_counter() - t0,
        message=f"{finish}; largest gradient component {grad_max:.2e}",
        labels={"groups": group_labels, "coef": list(names)},
        n_groups=group_counts(model),
        boundary=boundary,
        n_params=n_par,
        n_obs=n_obs,
        icc=icc,
        robust_se=dict(zip(model.fixed_names, np.sqrt(np.diag(robust)).tolist(), strict=True)),
        group_ols=group_ols,
        variance_se=variance_se,
        reliability={k: float(np.nanmean(rel[:, i])) if np.any(np.isfinite(rel[:, i])) else float("nan")
                     for i, k in enumerate(names)},
        reliability_by_group=rel,
        model=model.identity(),
        model_record=model.record(),
        n_missing=0 if model.design.missing_responses is None else int(model.design.missing_responses.rows.size),
    ))


def _reliability(model, s2, T, V):
    """Reliability of each group's estimate of each of its random coefficients.

    For the finest groups, Raudenbush & Bryk's (2002) reliability of the group's own
    least-squares estimate: ``lambda_jk = T_kk / (T_kk + v_jk)`` with ``v_jk`` its sampling
    variance ``s2 [(X_j'W_jX_j)^{-1}]_kk`` on the finest factor's columns, in the user's
    parametrisation (``T`` is; ``s2`` is in the kernels' basis). Nan where ``X_j'W_jX_j`` is
    singular (fewer observations than coefficients, or a predictor constant in the group).
    For the groups of a coarser factor, which have no least-squares estimate of their own,
    ``1 - V_jk / T_kk`` with ``V`` the conditional covariances (user's parametrisation): the
    share of the coefficient's variance that the data explain. A row has values in its own
    factor's columns only. With crossed factors every factor's groups are as the coarser
    ones: the rows of a group are shared with the groups of the other factors, so it has no
    least-squares estimate of its own.
    """
    stats, st = model.stats, model.structure
    lp = st.level_ptr
    n_groups, D = stats.Xty.shape
    d1 = 0 if model.crossed else int(lp[1])
    rel = np.full((int(st.node_ptr[-1]), D), np.nan)
    T_diag = np.diag(T)
    M = stats.XtX[:, :d1, :d1]
    ok = np.linalg.cond(M) < 1e12 if d1 else np.zeros(n_groups, dtype=bool)
    if np.any(ok):
        full = np.zeros((int(ok.sum()), D, D))
        full[:, :d1, :d1] = s2 * np.linalg.inv(M[ok])
        v = np.diagonal(model.basis.coef_cov(full), axis1=1, axis2=2)[:, :d1]
        rel[np.flatnonzero(ok), :d1] = T_diag[:d1] / (T_diag[:d1] + v)
    for k in range(0 if model.crossed else 1, len(lp) - 1):
        rows = slice(int(st.node_ptr[k]), int(st.node_ptr[k + 1]))
        cols = slice(int(lp[k]), int(lp[k + 1]))
        with np.errstate(invalid="ignore", divide="ignore"):
            rel[rows, cols] = np.where(T_diag[cols] > 0, 1.0 - np.diagonal(V[rows, cols, cols], axis1=1, axis2=2)
                                       / T_diag[cols], np.nan)
    return rel


def _kernel_rows(model):
    """The model's rows ``(y, F, X, w)`` in the kernels' basis (copies; for the sandwich estimators)."""
    design, basis = model.design, model.basis
    y, F, X = basis.rows(design.y, design.F, design.X)
    w = basis.weights(design.obs_var, design.weights)
    return y, F, X, (np.ones(model.n_obs) if w is None else w)


def natural_variance_parameters(model, thetas):
    """``[sigma (unless known), SDs, correlations]`` of each row of ``thetas``, in the user's parametrisation."""
    from bayeshlm.results import variance_components

    s2, sd, corr, _ = variance_components(model, thetas)
    bp = model.structure.block_ptr
    pairs = [(i, j) for k in range(len(bp) - 1) for i in range(bp[k], bp[k + 1]) for j in range(bp[k], i)]
    rows, cols = [i for i, _ in pairs], [j for _, j in pairs]
    head = [] if model.sigma_known else [np.sqrt(s2)[:, None]]
    return np.concatenate([*head, sd, corr[:, rows, cols]], axis=1)


def _variance_se(model, theta, method, boundary, hessian=None):
    """Standard errors of sigma, the SDs and the correlations from the observed information.

    The Hessian of the log-likelihood in the unconstrained ``theta`` (central differences of
    its gradient; ``hessian`` when the caller has it at ``theta``), inverted and carried to
    the natural scale by the delta method. Not given (nan) when a variance is on the
    boundary, where the information is singular and the normal approximation does not hold.
    """
    names = ([] if model.sigma_known else ["sigma"]) + [f"sd[{c}]" for c in model.coef_names]
    bp = model.structure.block_ptr
    coefs = model.coef_names
    names += [f"corr[{corr_key(coefs[j], coefs[i])}]" for k in range(len(bp) - 1)
              for i in range(bp[k], bp[k + 1]) for j in range(bp[k], i)]
    if boundary:
        return dict.fromkeys(names, float("nan"))
    H = loglik_hessian(LoglikObjective(model, method), theta) if hessian is None else hessian
    # the delta method: derivatives of the natural parameters in theta, by central differences
    h = 1e-4 * np.maximum(1.0, np.abs(theta))
    steps = np.diag(h)
    both = natural_variance_parameters(model, np.concatenate([theta + steps, theta - steps]))
    J = ((both[: theta.size] - both[theta.size :]) / (2 * h)[:, None]).T
    try:
        cov = np.linalg.inv(-H)
    except np.linalg.LinAlgError:
        return dict.fromkeys(names, float("nan"))
    var = np.diag(J @ cov @ J.T)
    return {name: float(np.sqrt(v)) if v >= 0 else float("nan") for name, v in zip(names, var, strict=True)}


def _group_ols_user(model, d1):
    """Each group's own least-squares coefficients on the first ``d1`` random columns, in the user's units.

    ``(X_j'W_jX_j)^{-1} X_j'W_jy_j`` with the user's columns and response: the within-group
    estimates HLM reports beside the EB ones (the group's total coefficient, not a deviation
    from the fixed part). From the kernels' statistics: with ``X = X_N M^{-1}`` and
    ``y = c_y + s_y y_N``, the estimate is ``M (s_y beta_N + c_y gamma)``, ``beta_N`` the
    estimate of ``y_N`` and ``gamma`` that of the column of ones on ``X_N``. Nan for a group
    whose ``X_j'W_jX_j`` is singular (fewer rows than coefficients, or a predictor constant
    within the group).
    """
    stats, basis = model.stats, model.basis
    M = np.ascontiguousarray(stats.XtX[:, :d1, :d1])
    if d1 == 0:
        return np.zeros((M.shape[0], 0))
    ok = np.linalg.cond(M) < 1e12
    out = np.full((M.shape[0], d1), np.nan)
    if np.any(ok):
        q = basis.fixed_intercept
        rhs = basis.response_cross(stats.Xty[ok, :d1], stats.XtF[ok, :d1, q] if q >= 0 else None)
        beta = np.linalg.solve(M[ok], rhs[:, :, None])[:, :, 0]
        out[ok] = beta @ basis.coef_matrix()[:d1, :d1].T
    return out


def _newton_polish(objective, theta, max_steps=4, rate=None):
    """A few Newton steps on the log-likelihood, from the EM iterate or the quasi-Newton optimum; ``(theta, H)``.

    L-BFGS stops on a gradient tolerance; where the likelihood is flat in one direction that
    leaves the estimates a few 1e-5 from the optimum. Newton steps with the Hessian from
    central differences of the gradient converge quadratically from there. A step is kept
    only if it raises the log-likelihood, or keeps it within rounding while shrinking the
    gradient (halved up to 10 times). Directions in which the log-likelihood is flat or
    curves upwards (a correlation tending to +-1, an estimate on the boundary) are left
    out of the step: it is taken in the span of the eigenvectors of clearly negative
    curvature, and the polish ends when there are none.

    With ``rate``, the steps also end when one shrinks the largest gradient component by a
    factor of less than ``1 / rate``: the Hessian taken at the start no longer describes the
    curvature where the steps are, and more of them would be wasted.

    ``H`` is the Hessian at the returned ``theta`` when the steps moved it by less than
    1e-4 in every coordinate from where the Hessian was taken (its change over such a
    distance is far below the precision of the standard errors it serves), else None.
    """
    value = objective(theta)
    start = theta
    basis = hessian = None
    for _ in range(max_steps):
        grad = objective.grad.copy()
        if basis is None:  # one Hessian serves every step: the steps are tiny, it barely changes
            hessian = loglik_hessian(objective, theta)
            curvature, vectors = np.linalg.eigh(-hessian)
            keep = curvature > 1e-8 * max(float(np.max(np.abs(curvature))), 1e-300)
            if not keep.any():
                break
            basis, curvature = vectors[:, keep], curvature[keep]
        step = basis @ ((basis.T @ grad) / curvature)
        improved = False
        gnorm = np.max(np.abs(grad))
        for _ in range(10):
            trial = theta + step
            new = objective(trial)
            # near the optimum the values differ by rounding only: a smaller gradient also counts
            if np.isfinite(new) and (new > value or (new >= value - 1e-12 * abs(value)
                                                     and np.max(np.abs(objective.grad)) < gnorm)):
                theta, value, improved = trial, new, True
                break
            step = step / 2
        if not improved or np.max(np.abs(step)) < 1e-8:
            break
        if rate is not None and np.max(np.abs(objective.grad)) > rate * gnorm:
            break
    objective(theta)  # leave the gradient at the returned point
    if hessian is not None and np.max(np.abs(theta - start)) > 1e-4:
        hessian = None
    return theta, hessian


def hessian_from_gradient(gradient, x, rel_step=1e-4):
    """Symmetrised Hessian at ``x`` by central differences of ``gradient(point)``, steps ``rel_step max(1, |x_i|)``."""
    n = x.size
    H = np.empty((n, n))
    for i in range(n):
        h = rel_step * max(1.0, abs(x[i]))
        up, down = x.copy(), x.copy()
        up[i] += h
        down[i] -= h
        H[:, i] = (gradient(up) - gradient(down)) / (2 * h)
    return 0.5 * (H + H.T)


def delta_method_se(natural, x, H):
    """Standard errors of ``natural(x)`` from the Hessian ``H`` of a log-likelihood in ``x``; None if it is singular.

    The delta method: ``J (-H)^-1 J'`` with ``J`` the Jacobian of ``natural`` by central
    differences (steps ``1e-6 max(1, |x_i|)``); a negative variance gives nan.
    """
    try:
        cov = np.linalg.inv(-H)
    except np.linalg.LinAlgError:
        return None
    steps = 1e-6 * np.maximum(1.0, np.abs(x))
    J = np.column_stack([(natural(x + np.eye(x.size)[i] * steps[i]) - natural(x - np.eye(x.size)[i] * steps[i]))
                         / (2 * steps[i]) for i in range(x.size)])
    var = np.diag(J @ cov @ J.T)
    return np.where(var >= 0, np.sqrt(np.abs(var)), np.nan)


def loglik_hessian(objective, theta, rel_step=1e-4):
    """Hessian of the log-likelihood at ``theta`` from central differences of its gradient."""

    def gradient(point):
        objective(point)
        return objective.grad.copy()

    return hessian_from_gradient(gradient, theta, rel_step)


def corr_key(first, second):
    """Label of the correlation of two coefficients: ``"a,b"``, or ``"a,b|factor"`` for qualified names."""
    f1, _, g1 = first.partition("|")
    f2, _, g2 = second.partition("|")
    return f"{f1},{f2}|{g1}" if g1 and g1 == g2 else f"{first},{second}"


def _robust_vcov_clusters(model, a, b, s2, vcov):
    """Cluster-robust (CR0) covariance of the fixed effects, clusters = the coarsest factor's groups.

    Without grouping each row is a cluster (the HC0 sandwich). With crossed factors the
    clustering is multiway (Cameron, Gelbach & Miller 2011, JBES 29(2)): the sum over every
    non-empty set of factors of ``(-1)^(size + 1)`` times the sandwich clustered on the
    combinations of their groups (for two factors: by the first, plus by the second, minus
    by the cells), with negative eigenvalues set to zero.
    The score of cluster ``c`` is ``F_c'V_c^{-1}(y_c - F_c a) = F_c'W_c(y_c - F_c a - Z_c b)/s2``
    with ``b`` the conditional means (Henderson's identity): one pass over the rows. In the
    kernels' basis (the caller maps the result).
    """
    from bayeshlm.results import finest_coefficients

    design = model.design
    y, F, X, w = _kernel_rows(model)
    b_row = finest_coefficients(model, b)[design.group_idx]
    resid = y - F @ a - np.einsum("ik,ik->i", X, b_row)
    we = w * resid / s2
    if design.crossed:
        from itertools import combinations

        import pandas as pd

        out = np.zeros_like(vcov)
        K = len(design.factor_idx)
        for size in range(1, K + 1):
            for subset in combinations(range(K), size):
                key = np.zeros(model.n_obs, dtype=np.int64)
                for k in subset:
                    key = pd.factorize(key * len(design.factor_labels[k]) + design.factor_idx[k])[0].astype(np.int64)
                n_c = int(key.max()) + 1
                score = np.stack([np.bincount(key, F[:, q] * we, minlength=n_c) for q in range(F.shape[1])], 1)
                out += (-1) ** (size + 1) * (vcov @ (score.T @ score) @ vcov)
        # the inclusion-exclusion sum need not be positive semi-definite: negative
        # eigenvalues are set to zero (Cameron, Gelbach & Miller 2011, section 2.3)
        vals, vecs = np.linalg.eigh(0.5 * (out + out.T))
        return (vecs * np.maximum(vals, 0.0)) @ vecs.T
    if design.factor_idx:
        cluster, n_c = design.factor_idx[-1], len(design.factor_labels[-1])
    elif design.coef_names:
        cluster, n_c = design.group_idx, len(design.group_labels)
    else:  # no grouping: each row its own cluster (the HC0 sandwich)
        cluster, n_c = np.arange(model.n_obs), model.n_obs
    score = np.stack([np.bincount(cluster, F[:, q] * we, minlength=n_c) for q in range(F.shape[1])], 1)
    return vcov @ (score.T @ score) @ vcov


def _glmm_result(model, opt, n_agq):
    """The :class:`~bayeshlm.em.EMResult` of a GLMM fit (no level-1 variance; group estimates: conditional modes)."""
    basis, structure = model.basis, model.structure
    phi, value, H = opt.phi, opt.loglik, opt.hessian
    nth = model.n_theta
    theta, a = phi[:nth], phi[nth:]
    p = a.size
    # the inverse of the observed information; its fixed-effects block is their covariance
    try:
        cov = np.linalg.inv(-H)
    except np.linalg.LinAlgError:
        cov = np.full(H.shape, np.nan)
    vcov = basis.fixed_cov(cov[nth:, nth:])
    a_user = basis.fixed_values(a)
    b, V = opt.b, opt.V  # the conditional modes and their covariances
    from bayeshlm.results import variance_components

    _, sd_user, corr_user, T_user = variance_components(model, theta[None, :])
    # reliability of each group's estimate, 1 - Var(b | y) / T_kk as for the coarser factors of
    # a Gaussian model, with the conditional variance of the Laplace approximation
    V_user = basis.coef_cov(V)
    rel = np.full(b.shape, np.nan)
    lp_, npt_ = structure.level_ptr, structure.node_ptr
    T_diag = np.diag(T_user[0])
    for k in range(len(lp_) - 1):
        rows, cols = slice(int(npt_[k]), int(npt_[k + 1])), slice(int(lp_[k]), int(lp_[k + 1]))
        with np.errstate(invalid="ignore", divide="ignore"):
            rel[rows, cols] = np.where(T_diag[cols] > 0, 1.0 - np.diagonal(V_user[rows, cols, cols], axis1=1, axis2=2)
                                       / T_diag[cols], np.nan)
    names = model.coef_names
    corr = {}
    bp = structure.block_ptr
    for k in range(len(bp) - 1):
        for i in range(bp[k], bp[k + 1]):
            for j in range(bp[k], i):
                corr[corr_key(names[j], names[i])] = float(corr_user[0, i, j])
    boundary = tuple(n for n, s in zip(names, sd_user[0], strict=True) if s < 1e-4 * max(1.0, float(np.max(sd_user))))
    var_names = [f"sd[{c}]" for c in names] + [f"corr[{corr_key(names[j], names[i])}]" for k in range(len(bp) - 1)
                                                for i in range(bp[k], bp[k + 1]) for j in range(bp[k], i)]
    if boundary:
        variance_se = dict.fromkeys(var_names, float("nan"))
    else:  # the delta method from theta to the SDs and correlations
        h = 1e-5 * np.maximum(1.0, np.abs(theta))
        both = natural_variance_parameters(model, np.concatenate([theta + np.diag(h), theta - np.diag(h)]))
        J = ((both[:nth] - both[nth:]) / (2 * h)[:, None]).T
        var = np.diag(J @ cov[:nth, :nth] @ J.T)
        variance_se = {n: float(np.sqrt(v)) if v >= 0 else float("nan") for n, v in zip(var_names, var, strict=True)}
    lp = structure.level_ptr
    if len(lp) > 2:
        group_labels = [f"{f}={lab}" for f, labels in zip(model.design.factors, model.design.factor_labels,
                                                          strict=True) for lab in labels]
    else:
        group_labels = list(model.design.group_labels)
    n_par = p + nth
    n_obs = model.n_obs
    method = "laplace" if n_agq == 1 else f"agq{n_agq}"
    icc = None
    if names == ("Intercept",) and model.link in LATENT_VARIANCE:
        # on the latent scale: the logistic (pi^2 / 3) or standard normal (1) level-1 variance
        icc = float(sd_user[0, 0] ** 2 / (sd_user[0, 0] ** 2 + LATENT_VARIANCE[model.link]))
    return _with_partition(model, EMResult(
        method=method,
        fixed=dict(zip(model.fixed_names, a_user.tolist(), strict=True)),
        fixed_se=dict(zip(model.fixed_names, np.sqrt(np.diag(vcov)).tolist(), strict=True)),
        vcov_fixed=vcov,
        sigma=float("nan"),
        sd=dict(zip(names, sd_user[0].tolist(), strict=True)),
        corr=corr,
        loglik=float(value),
        aic=float(-2 * value + 2 * n_par),
        bic=float(-2 * value + np.log(n_obs) * n_par),
        group_means=basis.coef_values(b),
        group_cov=V_user,
        theta=theta.copy(),
        converged=opt.converged,
        n_em_iter=0,
        n_evaluations=opt.n_eval,
        seconds=opt.seconds,
        message=f"{model.family} ({model.link} link), "
                + ("Laplace approximation" if n_agq == 1 else f"adaptive Gauss-Hermite quadrature, {n_agq} nodes")
                + f"; L-BFGS: {opt.message}; largest gradient component {opt.grad_max:.2e}",
        labels={"groups": group_labels, "coef": list(names)},
        n_groups=group_counts(model),
        boundary=boundary,
        n_params=n_par,
        n_obs=n_obs,
        icc=icc,
        robust_se=dict.fromkeys(model.fixed_names, float("nan")),
        group_ols=np.full(b.shape, np.nan),
        variance_se=variance_se,
        reliability={k: float(np.nanmean(rel[:, i])) if np.any(np.isfinite(rel[:, i])) else float("nan")
                     for i, k in enumerate(names)},
        reliability_by_group=rel,
        model=model.identity(),
        model_record=model.record(),
    ))


# ---------------------------------------------------------------------------------------- sigma=
def _fit_variance_model(model, method, *, em_iter, tol, max_eval):
    """ML or REML fit of a model with ``sigma=`` by profiling (docs/design.md, "Heterogeneous level-1 variance").

    For fixed standardised variance parameters ``delta_N`` the model is a weighted model
    (:func:`bayeshlm.model.model_at_variance`) whose log-likelihood, maximised over ``theta``
    (:func:`maximise_theta`, warm-started from the last optimum), is the profile
    ``l_p(delta_N)``. Its gradient is, by the envelope theorem, the partial derivative of the
    log-likelihood in ``delta_N`` at the inner optimum, taken by central differences with
    ``theta`` held there (no inner optimisation in them). BFGS maximises ``l_p``; the result
    is the weighted model's fit at the optimum, with ``sigma`` carried to the reference row
    ``z = 0`` and the standard errors of the variance parameters, ``delta`` included, from the
    Hessian of the full log-likelihood in ``(theta, delta_N)``.
    """
    from dataclasses import replace

    from scipy.optimize import minimize

    t0 = time.perf_counter()
    vd = model.variance_design
    state = {"theta": None, "n_eval": 0}

    def inner(delta_n):
        m = model_at_variance(model, delta_n)
        start = state["theta"]
        objective, theta, hessian, finish = maximise_theta(m, method, start, em_iter=em_iter if start is None else 0,
                                                           tol=min(tol, 1e-8), max_eval=max_eval)
        state["n_eval"] += objective.n_eval
        state["theta"] = theta
        return m, objective, theta, hessian, finish

    def value_at(theta, delta_n):
        return float(LoglikObjective(model_at_variance(model, delta_n), method)(theta))

    def delta_gradient(theta, delta_n, h=1e-5):
        g = np.empty(vd.k)
        for j in range(vd.k):
            e = np.zeros(vd.k)
            e[j] = h
            g[j] = (value_at(theta, delta_n + e) - value_at(theta, delta_n - e)) / (2 * h)
        return g

    def negative_profile(delta_n):
        _, objective, theta, _, _ = inner(delta_n)
        value = float(objective(theta))
        if not np.isfinite(value):
            return np.inf, np.zeros(vd.k)
        return -value, -delta_gradient(theta, delta_n)

    opt = minimize(negative_profile, np.zeros(vd.k), jac=True, method="BFGS",
                   options={"gtol": 1e-6, "maxiter": 200})
    delta_n = np.asarray(opt.x, dtype=np.float64)
    state["theta"] = None if not np.all(np.isfinite(state["theta"])) else state["theta"]
    m, objective, theta, hessian, finish = inner(delta_n)
    outer_grad = delta_gradient(theta, delta_n)
    result = _gaussian_result(m, method, objective, theta, hessian, finish, em_iter, t0)

    delta = vd.delta_user(delta_n)
    sigma = result.sigma * float(np.exp(0.5 * vd.log_sigma2_shift(delta_n)))
    names = list(vd.names)
    # the full Hessian in (theta, delta_N): central differences of the gradient, exact in theta
    x = np.concatenate([theta, delta_n])
    n_t = theta.size

    def full_gradient(point):
        objective_at = LoglikObjective(model_at_variance(model, point[n_t:]), method)
        objective_at(point[:n_t])
        return np.concatenate([objective_at.grad, delta_gradient(point[:n_t], point[n_t:])])

    H = hessian_from_gradient(full_gradient, x)

    def natural(point):
        v = natural_variance_parameters(model, point[None, :n_t])[0].copy()
        v[0] *= float(np.exp(0.5 * vd.log_sigma2_shift(point[n_t:])))
        return np.concatenate([v, vd.delta_user(point[n_t:])])

    var_names = ["sigma", *list(result.variance_se)[1:]]
    se = np.full(len(var_names) + vd.k, np.nan)
    if not result.boundary:
        found = delta_method_se(natural, x, H)
        if found is not None:
            se = found
    delta_se = se[len(var_names):]
    ratio = {n: float(np.exp(d / 2)) for n, d, ind in zip(names, delta, vd.indicator, strict=True) if ind}
    ratio_se = {n: float(0.5 * np.exp(d / 2) * s) for n, d, s, ind in zip(names, delta, delta_se, vd.indicator,
                                                                          strict=True) if ind}
    outer_ok = bool(np.all(np.isfinite(outer_grad)) and np.max(np.abs(outer_grad), initial=0.0) <= 1e-3)
    variance_model = {
        "formula": vd.formula,
        "delta": dict(zip(names, delta.tolist(), strict=True)),
        "delta_se": dict(zip(names, delta_se.tolist(), strict=True)),
        "sd_ratio": ratio,
        "sd_ratio_se": ratio_se,
        "converged": outer_ok,
        "n_outer": int(opt.nit),
        "message": f"{opt.message}; largest profile gradient component {np.max(np.abs(outer_grad), initial=0.0):.2e}",
    }
    n_par = result.n_params + vd.k
    icc = result.icc
    if icc is not None:
        icc = float(result.sd["Intercept"] ** 2 / (result.sd["Intercept"] ** 2 + sigma**2))
    return replace(
        result,
        sigma=sigma,
        variance_se=dict(zip(var_names, se[:len(var_names)].tolist(), strict=True)),
        aic=float(-2 * result.loglik + 2 * n_par),
        bic=float(-2 * result.loglik + np.log(result.n_obs) * n_par),
        n_params=n_par,
        icc=icc,
        icc_by_level={},
        converged=bool(result.converged and outer_ok),
        n_evaluations=state["n_eval"] + objective.n_eval,
        seconds=time.perf_counter() - t0,
        variance_model=variance_model,
        model=model.identity(),
        model_record=model.record(),
        message=result.message + f"; profile over delta: {variance_model['message']}",
    )


# ----------------------------------------------------------------------------- Student-t level 1
NU_SEARCH = (1.0 + np.exp(-5.0), 1001.0)  # the interval the estimated nu is searched in (Brent on log(nu - 1))


def _refuse_student(model):
    """Raise for the Student-t models :func:`fit_em` does not fit, naming what it does instead."""
    if model.variance_design is not None:
        raise NotImplementedError(
            "fit_em fits a Student-t level 1 with one scale sigma / sqrt(w_i); "
            f"sigma={model.variance_design.formula!r} (a scale that varies with predictors) together with "
            "family='student' is not fitted by ML/REML: its posterior is bayeshlm.sample(model); for an ML fit, drop "
            "one of the two")
    if model.sigma_known:
        raise NotImplementedError("fit_em does not fit a Student-t level 1 with known scales (known_sd= or known_var=)")
    if not model.rows_held:
        raise NotImplementedError("the ML fit of a Student-t level 1 reweights the rows: a model compiled from "
                                  "statistics (hlm_stats) has none")
    if model.crossed or len(model.structure.level_ptr) > 2:
        raise NotImplementedError(
            "fit_em fits a Student-t level 1 with one grouping factor (or none); with nested or crossed factors its "
            "weights need the joint posterior covariance of a row's coefficients across factors, which the passes do "
            'not return: the posterior is bayeshlm.sample(model) (docs/design.md, "The Student-t ML and REML fit")')


class _StudentRows:
    """The rows of a Student-t model in the kernels' basis and the state of its fit.

    docs/design.md, "The Student-t ML and REML fit".

    ``lam`` holds each row's ``E[lambda_i]`` (the mean of its factorised posterior ``q``) and
    ``theta`` the variance components last fitted, the warm start of the next fit.
    """

    def __init__(self, model, method):
        self.model = model
        self.method = method
        self.reml = method == "reml"
        self.y, self.F, self.X, self.w = _kernel_rows(model)
        self.g = np.asarray(model.design.group_idx, dtype=np.int64)
        self.lam = np.ones(model.n_obs)
        self.theta = None
        self.theta_first = None  # the optimum of the first fit (all weights 1): a second start at each nu
        self.n_iter = 0
        self.n_eval = 0

    def moments(self, m, theta):
        """``(a, b, V, A_inv, s2)`` of the weighted model ``m`` at ``theta``, in the kernels' basis."""
        stats, structure = m.stats, m.structure
        work = workspace(stats, structure)
        n_nodes = int(structure.node_ptr[-1])
        p, d = stats.Fty.shape[0], stats.Xty.shape[1]
        a, b, V, A_inv = np.empty(p), np.zeros((n_nodes, d)), np.zeros((n_nodes, d, d)), np.empty((p, p))
        s2 = eb_estimates(None, theta, work, stats, structure, m.priors, a, b, V, A_inv)
        return a, b, V, A_inv, s2

    def update(self, m, theta, nu, a=None):
        """The weights ``E[lambda_i]`` after the weighted model ``m`` at ``theta`` (and ``a``, else its GLS value).

        With ``a`` given, the group means are those given it and the fixed effects are not
        integrated; for REML without ``a`` they are. Returns ``(weights, gradient in a)``,
        the gradient of the weighted log-likelihood in ``a`` (zero at the GLS value).
        """
        a_hat, b, V, A_inv, s2 = self.moments(m, theta)
        if a is None:
            u = scaled_residuals(self.y, self.F, self.X, self.w, self.g, a_hat, b, V, s2,
                                 A_inv if self.reml else None, m.stats.XtF if self.reml else None)
            return expected_weights(nu, u), np.zeros_like(a_hat)
        shift = a - a_hat
        if b.shape[1]:
            b = b - np.einsum("jkl,jlq,q->jk", V, m.stats.XtF, shift) / s2
        u = scaled_residuals(self.y, self.F, self.X, self.w, self.g, a, b, V, s2)
        return expected_weights(nu, u), -np.linalg.solve(A_inv, shift)

    def bound(self, theta, nu, lam=None):
        """The lower bound on the (restricted) log-likelihood at ``theta``, ``nu`` and the weights, in the user's units.

        Returns ``(value, objective)``, the objective the weighted model's at ``theta``.
        """
        lam = self.lam if lam is None else lam
        m = model_at_weights(self.model, lam)
        objective = LoglikObjective(m, self.method)
        value = objective(theta) + self.model.basis.loglik_offset(self.model.n_obs, restricted=self.reml)
        self.n_eval += objective.n_eval
        return float(value + np.sum(bound_terms(nu, lam))), objective

    def solve(self, nu, *, em_iter, tol, max_eval, wtol=1e-10, max_iter=2000):
        """The fit at fixed ``nu``: the weighted model's fit and the weights, alternated until the weights settle.

        Each half raises the bound (the weighted fit maximises it over ``theta``, the fixed
        effects and ``q(b)``; the weights over ``q(lambda)``). Returns whether the largest
        relative change of a weight fell below ``wtol``. SQUAREM (Varadhan & Roland 2008)
        extrapolates the weights' fixed-point map every third step, kept only when it raises
        the bound.
        """
        converged = False
        history = []
        for step in range(max_iter):
            m = model_at_weights(self.model, self.lam)
            # the first fit also from the first fit's optimum (of the unweighted model): a warm
            # start from another nu can hold a variance component in a flat corner (a correlation
            # at +-1) that the data at this nu leave
            starts = [self.theta] if step > 0 or self.theta is None else [self.theta, self.theta_first]
            best = None
            for start in starts:
                objective, theta, _, _ = maximise_theta(m, self.method, start,
                                                        em_iter=em_iter if start is None else 0,
                                                        tol=min(tol, 1e-8), max_eval=max_eval)
                self.n_eval += objective.n_eval
                value = objective(theta)
                if best is None or value > best[0]:
                    best = (value, theta)
            self.theta = best[1]
            if self.theta_first is None:
                self.theta_first = self.theta.copy()
            new, _ = self.update(m, self.theta, nu)
            self.n_iter += 1
            change = float(np.max(np.abs(np.log(new / self.lam)), initial=0.0))
            history.append(np.log(new))
            self.lam = new
            if change < wtol:
                converged = True
                break
            if len(history) == 3:  # SQUAREM on log lambda, from three successive iterates
                x0, x1, x2 = history
                r, v = x1 - x0, x2 - 2 * x1 + x0
                history = []
                if np.dot(v, v) > 0:
                    alpha = -min(np.sqrt(np.dot(r, r) / np.dot(v, v)), 50.0)
                    trial = np.exp(x0 - 2 * alpha * r + alpha * alpha * v)
                    trial = np.minimum(trial, (nu + 1.0) / nu)  # the largest weight a row can have
                    if self.bound(self.theta, nu, trial)[0] > self.bound(self.theta, nu)[0]:
                        self.lam = trial
        return converged

    def settle(self, theta, nu, a=None, wtol=1e-12, max_iter=5000):
        """The weights that maximise the bound at ``theta``, ``nu`` (and ``a``), from the current ones; not stored.

        Returns ``(weights, gradient of the bound in theta, in log(nu - 1), in a)`` there; the
        gradients are those at the weights held (the envelope theorem).
        """
        lam = self.lam.copy()
        for _ in range(max_iter):
            m = model_at_weights(self.model, lam)
            new, _ = self.update(m, theta, nu, a)
            done = float(np.max(np.abs(np.log(new / lam)), initial=0.0)) < wtol
            lam = new
            if done:
                break
        m = model_at_weights(self.model, lam)
        objective = LoglikObjective(m, self.method)
        objective(theta)
        _, grad_a = self.update(m, theta, nu, a) if a is not None else (None, None)
        return lam, objective.grad.copy(), (nu - 1.0) * bound_nu_gradient(nu, lam), grad_a


def _student_nu(state, *, em_iter, tol, max_eval):
    """Estimate ``nu``: Brent's method on ``log(nu - 1)`` over the bound maximised at each ``nu`` (its profile)."""
    from scipy.optimize import minimize_scalar

    def negative_profile(x):
        nu = 1.0 + float(np.exp(x))
        state.solve(nu, em_iter=em_iter, tol=tol, max_eval=max_eval)
        value = state.bound(state.theta, nu)[0]
        return -value if np.isfinite(value) else np.inf

    lo, hi = np.log(NU_SEARCH[0] - 1.0), np.log(NU_SEARCH[1] - 1.0)
    opt = minimize_scalar(negative_profile, bounds=(lo, hi), method="bounded", options={"xatol": 1e-5})
    x = float(opt.x)
    at_bound = min(x - lo, hi - x) < 1e-3
    return 1.0 + float(np.exp(x)), at_bound, int(opt.nfev)


def _fit_student(model, method, *, em_iter, tol, max_eval):
    """ML or REML fit of a Student-t level 1 (docs/design.md, "The Student-t ML and REML fit").

    The factorised (variational) EM of :mod:`bayeshlm.robust`: the weighted model's ML or
    REML fit (:func:`maximise_theta` on :func:`bayeshlm.robust.model_at_weights`) alternated
    with the update of the row weights ``E[lambda_i]``, at the fixed ``nu`` or, when it is
    estimated, at each ``nu`` of a Brent search on ``log(nu - 1)`` over the bound's profile.
    The standard errors are from the bound's curvature with the weights re-settled at each
    point: of the fixed effects at fixed variance components, of the variance components
    and ``nu`` with the fixed effects at their GLS value (ML) or integrated out (REML).
    """
    from dataclasses import replace

    t0 = time.perf_counter()
    _refuse_student(model)
    state = _StudentRows(model, method)
    nu_fixed = model.options.get("nu")
    if nu_fixed is None:
        nu, at_bound, n_profile = _student_nu(state, em_iter=em_iter, tol=tol, max_eval=max_eval)
    else:
        nu, at_bound, n_profile = float(nu_fixed), False, 0
    weights_ok = state.solve(nu, em_iter=em_iter, tol=tol, max_eval=max_eval)
    theta = state.theta
    m = model_at_weights(model, state.lam)
    objective, theta, hessian, finish = maximise_theta(m, method, theta, em_iter=0, tol=min(tol, 1e-8),
                                                       max_eval=max_eval)
    result = _gaussian_result(m, method, objective, theta, hessian, finish, em_iter, t0)
    value, _ = state.bound(theta, nu)
    a_hat, b, V, A_inv, s2 = state.moments(m, theta)
    basis = model.basis
    p, nth = a_hat.size, theta.size
    estimate_nu = nu_fixed is None and not at_bound

    # the fixed effects: the bound's Hessian in a at fixed (theta, nu), the weights re-settled
    H_a = np.empty((p, p))
    for q in range(p):
        h = 1e-3 * float(np.sqrt(A_inv[q, q]))
        e = np.zeros(p)
        e[q] = h
        up = state.settle(theta, nu, a_hat + e)[3]
        down = state.settle(theta, nu, a_hat - e)[3]
        H_a[:, q] = (up - down) / (2 * h)
    H_a = 0.5 * (H_a + H_a.T)
    try:
        vcov = np.linalg.inv(-H_a)
    except np.linalg.LinAlgError:
        vcov = np.full((p, p), np.nan)
    vcov_user = basis.fixed_cov(vcov)
    robust = basis.fixed_cov(_robust_vcov_clusters(m, a_hat, b, s2, vcov))

    # the variance components (and log(nu - 1)): the Hessian of the bound's profile
    x = np.append(theta, np.log(nu - 1.0)) if estimate_nu else theta.copy()

    def gradient(point):
        nu_at = 1.0 + float(np.exp(point[nth])) if estimate_nu else nu
        _, g_theta, g_x, _ = state.settle(point[:nth], nu_at)
        return np.append(g_theta, g_x) if estimate_nu else g_theta

    names = ["sigma", *list(result.variance_se)[1:]]
    se = np.full(len(names) + 1, np.nan)
    if not result.boundary and x.size:
        H = hessian_from_gradient(gradient, x)

        def natural(point):
            v = natural_variance_parameters(model, point[None, :nth])[0]
            return np.append(v, 1.0 + np.exp(point[nth])) if estimate_nu else v

        found = delta_method_se(natural, x, H)
        if found is not None:
            se[:found.size] = found
    nu_se = float(se[len(names)]) if estimate_nu else float("nan")

    n_par = p + nth + (1 if nu_fixed is None else 0)
    sigma = result.sigma
    icc = None
    if model.coef_names == ("Intercept",) and nu > 2:  # against the residual variance sigma^2 nu / (nu - 2)
        icc = float(result.sd["Intercept"] ** 2 / (result.sd["Intercept"] ** 2 + sigma**2 * nu / (nu - 2)))
    if nu_fixed is not None:
        how = f"nu = {nu:g} (fixed)"
    elif at_bound:
        how = (f"nu = {nu:.4g} at the end of its search interval [{NU_SEARCH[0]:.4g}, {NU_SEARCH[1]:g}]: "
               + ("tails no heavier than a Gaussian's" if nu > 100 else "tails as heavy as a Cauchy's or heavier"))
    else:
        how = f"nu = {nu:.4g} (estimated, {n_profile} profile points)"
    student = {
        "nu": nu,
        "nu_se": nu_se,
        "nu_estimated": nu_fixed is None,
        "nu_at_bound": bool(at_bound),
        "residual_sd": float(sigma * np.sqrt(nu / (nu - 2))) if nu > 2 else float("inf"),
        "weights": state.lam.tolist(),
        "n_iter": state.n_iter,
        "converged": bool(weights_ok),
        "fit": f"factorised EM, {state.n_iter} weight updates",
        "loglik": "a lower bound on the log-likelihood (factorised EM)",
        "message": f"{how}; factorised EM, {state.n_iter} weight updates"
                   + ("" if weights_ok else ", the weights NOT settled"),
    }
    return replace(
        result,
        fixed=dict(zip(model.fixed_names, basis.fixed_values(a_hat).tolist(), strict=True)),
        fixed_se=dict(zip(model.fixed_names, np.sqrt(np.diag(vcov_user)).tolist(), strict=True)),
        vcov_fixed=vcov_user,
        robust_se=dict(zip(model.fixed_names, np.sqrt(np.diag(robust)).tolist(), strict=True)),
        variance_se=dict(zip(names, se[:len(names)].tolist(), strict=True)),
        loglik=value,
        aic=float(-2 * value + 2 * n_par),
        bic=float(-2 * value + np.log(model.n_obs) * n_par),
        n_params=n_par,
        icc=icc,
        icc_by_level={},
        converged=bool(result.converged and weights_ok),
        n_evaluations=state.n_eval + objective.n_eval,
        seconds=time.perf_counter() - t0,
        message=f"Student-t level 1: {student['message']}; last weighted fit: {result.message}",
        student=student,
        model=model.identity(),
        model_record=model.record(),
    )


def student_lines(st):
    """The lines of a report on the Student-t level 1 of ``EMResult.student``."""
    w = np.asarray(st["weights"])
    nu = f"{st['nu']:.4g}" + (f" (SE {st['nu_se']:.3g})" if np.isfinite(st["nu_se"]) else "")
    head = (f"Level 1: Student-t, nu {nu}, {'estimated' if st['nu_estimated'] else 'fixed'}; sigma is the t scale "
            f"(residual SD sigma sqrt(nu / (nu - 2)) = {st['residual_sd']:.4g})")
    return [head,
            f"row weights E[lambda]: min {w.min():.3g}, median {np.median(w):.3g}; below 0.5: {int(np.sum(w < 0.5))} "
            "rows (result.student['weights'])",
            f"logLik, AIC and BIC: {st['loglik']}"]


def _student_exact_result(model, n_agq):
    """The :class:`EMResult` of the exact ML fit of a Student-t level 1 with one random coefficient per group.

    :func:`bayeshlm.robust.student_exact_ml` with ``n_agq`` quadrature nodes; group estimates
    are the posterior means and variances of ``b_j | y``, weights ``E[lambda_i | y]``.
    """
    t0 = time.perf_counter()
    if model.sigma_known or model.variance_design is not None:
        _refuse_student(model)
    fit = student_exact_ml(model, n_nodes=n_agq)
    basis, structure = model.basis, model.structure
    coef = model.coef_names[0]
    sigma, tau, nu = fit["sigma"], fit["sd"][coef], fit["nu"]
    theta = np.empty(model.n_theta)
    T = basis.coef_cov_from_user(np.array([[tau * tau]]))
    encode_theta(sigma**2 / basis.sigma_scale**2, T, structure, theta)
    nu_fixed = model.options.get("nu")
    p = len(model.fixed_names)
    n_par = p + 2 + (1 if nu_fixed is None else 0)
    value, n_obs = fit["loglik"], model.n_obs
    boundary = (coef,) if tau < 1e-4 * sigma else ()
    var = fit["group_vars"][:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = 1.0 - var / (tau * tau)
    icc = None
    if coef == "Intercept" and nu > 2:
        icc = float(tau**2 / (tau**2 + sigma**2 * nu / (nu - 2)))
    fitted = f"exact ML: adaptive Gauss-Hermite quadrature, {n_agq} nodes"
    how = f"nu = {nu:g} (fixed)" if nu_fixed is not None else f"nu = {nu:.4g} (estimated)"
    student = {
        "nu": nu,
        "nu_se": fit["nu_se"],
        "nu_estimated": nu_fixed is None,
        "nu_at_bound": False,
        "residual_sd": float(sigma * np.sqrt(nu / (nu - 2))) if nu > 2 else float("inf"),
        "weights": fit["weights"].tolist(),
        "n_iter": 0,
        "converged": fit["converged"],
        "fit": fitted,
        "loglik": "the log-likelihood (exact to the quadrature)",
        "message": f"{how}; {fitted}",
    }
    nan_fixed = dict.fromkeys(model.fixed_names, float("nan"))
    return EMResult(
        method="ml",
        fixed=fit["fixed"],
        fixed_se=fit["fixed_se"],
        vcov_fixed=fit["vcov_fixed"],
        sigma=sigma,
        sd={coef: tau},
        corr={},
        loglik=value,
        aic=float(-2 * value + 2 * n_par),
        bic=float(-2 * value + np.log(n_obs) * n_par),
        group_means=fit["group_means"][:, None],
        group_cov=var[:, :, None],
        theta=theta,
        converged=fit["converged"],
        n_em_iter=0,
        n_evaluations=fit["n_eval"],
        seconds=time.perf_counter() - t0,
        message=f"Student-t level 1: {student['message']}; BFGS and Newton steps, largest gradient component "
                f"{fit['gradient']:.2e}",
        labels={"groups": list(model.design.group_labels), "coef": [coef]},
        boundary=boundary,
        n_params=n_par,
        n_obs=n_obs,
        icc=icc,
        robust_se=nan_fixed,
        group_ols=np.full((len(model.design.group_labels), 1), np.nan),
        variance_se={"sigma": fit["sigma_se"], f"sd[{coef}]": fit["sd_se"][coef]},
        reliability={coef: float(np.nanmean(rel))},
        reliability_by_group=rel,
        model=model.identity(),
        model_record=model.record(),
        n_groups=group_counts(model),
        student=student,
    )
