"""Maximum-likelihood fit of a hierarchical generalised linear model (a non-Gaussian level 1).

The log-likelihood of the variance components and fixed effects ``(theta, a)`` is the
Laplace approximation (lme4's ``nAGQ = 1``) or, for one grouping factor with one random
coefficient, adaptive Gauss-Hermite quadrature with ``n_agq`` nodes; both are computed by
:func:`samplers.glm.laplace` from the conditional modes that penalised iteratively
reweighted least squares finds through the Gaussian passes (docs/design.md, "Non-Gaussian
level 1"). The maximiser is L-BFGS on ``(theta, a)`` from a GLM fit without group effects,
finished by Newton steps whose Hessian, from central differences of the log-likelihood, also
gives the standard errors (the inverse of the observed information, as lme4's default
``vcov`` for ``glmer``). Everything is computed in the kernels' basis (:mod:`bayeshlm.basis`;
the response is not rescaled, the predictors are) and mapped back exactly.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import numpy as np

from bayeshlm.family import family_code
from samplers.gaussian import group_moments, integrate, workspace
from samplers.glm import laplace, row_terms
from samplers.suffstats import compute_suffstats
from samplers.theta import encode_theta
from samplers.types import flat_fixed_prior

__all__ = ["fit_glmm"]


class _Laplace:
    """``log p(y | theta, a)`` of a model, by the Laplace approximation or adaptive quadrature.

    Each evaluation starts PIRLS from the conditional modes at the point last accepted as the
    centre (:meth:`recentre`), so that the value is a function of ``(theta, a)`` alone (the
    modes are found to a relative tolerance of 1e-12 whatever the start), smooth enough for
    differences.
    """

    def __init__(self, model, n_agq):
        design, basis = model.design, model.basis
        _, self.F, self.X = basis.rows(design.y, design.F, design.X)
        self.y = np.ascontiguousarray(design.y, dtype=np.float64)
        self.n = np.ascontiguousarray(model.trials if model.trials is not None else np.ones(self.y.shape[0]))
        self.offset = np.ascontiguousarray(model.offset if model.offset is not None else np.zeros(self.y.shape[0]))
        self.g = np.ascontiguousarray(design.group_idx, dtype=np.int64)
        self.code = family_code(model.family, model.link)
        self.model = model
        self.n_theta = model.n_theta
        n_obs, d = self.X.shape
        self.stats = compute_suffstats(np.zeros(n_obs), np.empty((n_obs, 0)), self.X, self.g, model.n_groups)
        self.work = workspace(self.stats, model.structure)
        self.nodes, self.weights = np.polynomial.hermite.hermgauss(n_agq)
        self.centre_b = np.zeros((int(model.structure.node_ptr[-1]), d))
        self.b = self.centre_b.copy()
        self.n_eval = 0

    def __call__(self, phi):
        self.n_eval += 1
        self.b[:] = self.centre_b
        m = self.model
        theta, a = np.ascontiguousarray(phi[: self.n_theta]), np.ascontiguousarray(phi[self.n_theta:])
        value, _ = laplace(self.code, theta, a,
                           self.y, self.n, self.offset, self.F, self.X, self.g, self.stats, self.work, m.structure,
                           m.priors, self.b, self.nodes, self.weights, 200, 1e-13)
        return value

    def recentre(self, phi):
        """Evaluate at ``phi`` and start later evaluations from its modes."""
        value = self(phi)
        if np.isfinite(value):
            self.centre_b[:] = self.b
        return value

    def glm_start(self):
        """Fixed effects of the GLM without group effects (iteratively reweighted least squares)."""
        F, n_obs = self.F, self.y.shape[0]
        a = np.zeros(F.shape[1])
        eta, w, r = np.empty(n_obs), np.empty(n_obs), np.empty(n_obs)
        X0, coef0 = np.empty((n_obs, 0)), np.empty((self.model.n_groups, 0))
        for _ in range(50):
            row_terms(self.code, self.y, self.n, F @ a + self.offset, X0, self.g, coef0, eta, w, r)
            step = np.linalg.lstsq(F.T @ (w[:, None] * F), F.T @ (w * r), rcond=None)[0]
            a = a + step
            if np.max(np.abs(step)) < 1e-10:
                break
        return a


def _gradient(f, x, rel_step=1e-4):
    """Gradient of ``f`` at ``x`` from central differences of its values."""
    h = rel_step * np.maximum(1.0, np.abs(x))
    grad = np.empty(x.size)
    for i in range(x.size):
        e = np.zeros(x.size)
        e[i] = h[i]
        grad[i] = (f(x + e) - f(x - e)) / (2.0 * h[i])
    return grad


def _hessian(f, x, f0, rel_step=1e-4):
    """Hessian of ``f`` at ``x`` from central differences of its values (``f0 = f(x)``)."""
    m = x.size
    h = rel_step * np.maximum(1.0, np.abs(x))
    H = np.empty((m, m))
    plus, minus = np.empty(m), np.empty(m)
    for i in range(m):
        e = np.zeros(m)
        e[i] = h[i]
        plus[i], minus[i] = f(x + e), f(x - e)
        H[i, i] = (plus[i] - 2.0 * f0 + minus[i]) / h[i] ** 2
    for i in range(m):
        for j in range(i):
            e_i, e_j = np.zeros(m), np.zeros(m)
            e_i[i], e_j[j] = h[i], h[j]
            H[i, j] = H[j, i] = (f(x + e_i + e_j) - f(x + e_i - e_j) - f(x - e_i + e_j) + f(x - e_i - e_j)) \
                / (4.0 * h[i] * h[j])
    grad = (plus - minus) / (2.0 * h)
    return H, grad


class Optimum(NamedTuple):
    """The maximum of the approximate log-likelihood over ``(theta, a)`` (kernels' basis), and what it gives.

    ``hessian`` is that of the log-likelihood at ``phi = (theta, a)`` (central differences);
    ``b`` the conditional modes and ``V`` their conditional covariances there.
    """

    phi: np.ndarray
    loglik: float
    hessian: np.ndarray
    converged: bool
    grad_max: float
    message: str
    b: np.ndarray
    V: np.ndarray
    n_eval: int
    seconds: float


def fit_glmm(model, n_agq=1, *, tol=1e-7, max_eval=20000):
    """Maximise the Laplace (``n_agq = 1``) or adaptive-quadrature log-likelihood; an :class:`Optimum`.

    :func:`bayeshlm.fit_em` calls it for a model with a non-Gaussian level 1 and reports the
    optimum as an :class:`~bayeshlm.em.EMResult`.
    """
    from scipy.optimize import minimize

    n_agq = int(n_agq)
    if n_agq < 1:
        raise ValueError(f"n_agq must be a whole number >= 1, got {n_agq}")
    d = len(model.coef_names)
    if n_agq > 1 and (len(model.structure.level_ptr) != 2 or d != 1):
        raise ValueError(f"n_agq={n_agq} (adaptive quadrature) needs one grouping factor with one random coefficient "
                         f"(the model has {len(model.factors)} factors and {d} random coefficients); use n_agq=1, "
                         "the Laplace approximation")
    if not model.rows_held:
        raise ValueError("a non-Gaussian model is fitted from its rows; this one was compiled from statistics")
    t0 = time.perf_counter()
    lap = _Laplace(model, n_agq)
    nth = model.n_theta
    theta0 = np.empty(nth)
    encode_theta(1.0, 0.25 * np.eye(d), model.structure, theta0)
    phi = np.concatenate([theta0, lap.glm_start()])
    lap.recentre(phi)

    def objective(x):
        value = lap(x)
        return -value if np.isfinite(value) else 1e300

    def negative_gradient(x):
        # central differences: the values carry PIRLS's rounding (about 1e-13 relative), which
        # a one-sided difference with SciPy's default step would amplify into the gradient
        grad = _gradient(lap, x, 1e-5)
        return -np.where(np.isfinite(grad), grad, 0.0)

    opt = minimize(objective, phi, jac=negative_gradient, method="L-BFGS-B",
                   options={"ftol": 1e-13, "gtol": 1e-6, "maxfun": max_eval, "maxiter": max_eval})
    phi = opt.x
    value = lap.recentre(phi)
    finish = str(opt.message)
    # Newton steps on the values' differences: L-BFGS with differenced gradients stops a little
    # short of the optimum. One Hessian serves every step (the steps are small); each step is
    # kept only if it raises the log-likelihood, and the gradient is differenced anew after it
    H, grad = _hessian(lap, phi, value)
    at = phi.copy()  # where H was taken
    curvature, vectors = np.linalg.eigh(-H)
    keep = curvature > 1e-8 * max(float(np.max(np.abs(curvature))), 1e-300)
    for _ in range(8):
        if not keep.any():
            break
        step = vectors[:, keep] @ ((vectors[:, keep].T @ grad) / curvature[keep])
        improved = False
        for _ in range(10):
            new = lap(phi + step)
            if np.isfinite(new) and new > value:
                phi, value, improved = phi + step, new, True
                break
            step = step / 2
        if not improved:
            break
        lap.recentre(phi)
        grad = _gradient(lap, phi)
        if np.max(np.abs(step)) < 1e-7:
            break
    if np.max(np.abs(phi - at)) > 1e-4:  # the standard errors need the Hessian where the steps ended
        H, grad = _hessian(lap, phi, value)
    grad_max = float(np.max(np.abs(grad))) if grad.size else 0.0
    converged = bool(np.isfinite(value) and grad_max <= max(tol, 1e-4))
    lap.recentre(phi)
    V = group_covariances(lap)
    return Optimum(phi, float(value), H, converged, grad_max, finish, lap.b.copy(), V, lap.n_eval,
                   time.perf_counter() - t0)


def group_covariances(lap):
    """The conditional covariances of the group coefficients at the modes (the weighted pass of the last evaluation)."""
    structure = lap.model.structure
    b = lap.b
    V = np.zeros((b.shape[0], b.shape[1], b.shape[1]))
    integrate(lap.work, lap.stats, structure, 1.0, flat_fixed_prior(0))
    group_moments(None, lap.work, lap.stats, structure, 1.0, np.empty(0), np.empty_like(b), V, np.empty((0, 0)))
    return V
