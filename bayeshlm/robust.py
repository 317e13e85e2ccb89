"""Student-t level 1: the pieces of its ML and REML fit, and its exact ML fit for one random coefficient.

docs/design.md, "Student-t level 1" and "The Student-t ML and REML fit". Row ``i`` has
``e_i = (sigma / sqrt(w_i)) t_nu``, the scale mixture
``e_i | lambda_i ~ Normal(0, sigma^2 / (w_i lambda_i))`` with
``lambda_i ~ Gamma(nu / 2, rate nu / 2)``. Given the ``lambda_i`` the model is a weighted
Gaussian one (:func:`model_at_weights`). The default fit of :func:`bayeshlm.fit_em`
alternates the weighted model's ML or REML fit with the update of the weights
(:func:`expected_weights`, :func:`scaled_residuals`); both steps raise one objective, a
lower bound on the log-likelihood (variational, with a factorised posterior), whose
``lambda`` part is :func:`bound_terms`. With independent ``t`` rows and Gaussian group
coefficients the exact E-step is not closed form, so the bound lies below the
log-likelihood. :func:`student_exact_ml` (``fit_em(model, n_agq=...)``) is the exact ML fit
of a model with one random coefficient per group, by adaptive Gauss-Hermite quadrature of
each group's integral.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from scipy.special import digamma, gammaln

from samplers.suffstats import compute_suffstats

__all__ = ["bound_nu_gradient", "bound_terms", "expected_weights", "model_at_weights", "scaled_residuals",
           "student_exact_loglik", "student_exact_ml"]

_LOG_2PI = float(np.log(2.0 * np.pi))


def model_at_weights(model, lam):
    """The weighted Gaussian model of a Student-t model given the mixing weights ``lam``: not recompiled.

    Row ``i`` gets the precision weight ``w_i lam_i`` (``w`` the weights of ``weights=``, 1
    without them); the per-group statistics are recomputed with them in the model's own
    basis (one pass over the rows), the rest is shared, as
    :func:`bayeshlm.model.model_at_variance` does for ``sigma=``. Its ``sigma`` is the ``t``
    scale of a row of weight 1; its ML and REML log-likelihoods hold ``+ sum log(w lam) / 2``.
    """
    design, basis = model.design, model.basis
    lam = np.asarray(lam, dtype=np.float64)
    w = lam if design.weights is None else design.weights * lam
    stats = compute_suffstats(design.y, design.F, design.X, design.group_idx, design.group_labels.shape[0],
                              basis.weights(None, w), basis.shift, basis.scale)
    return replace(model, design=design._replace(weights=w), stats=stats, family="gaussian", variance_design=None)


def expected_weights(nu, u):
    """``E[lambda_i] = (nu + 1) / (nu + u_i)``: the mean of each row's mixing weight given its scaled residual.

    ``u_i = w_i E[r_i^2] / sigma^2``; exact when the residual is known (a regression without
    groups), the factorised approximation's update otherwise.
    """
    return (nu + 1.0) / (nu + np.asarray(u, dtype=np.float64))


def bound_terms(nu, lam):
    """Each row's ``lambda`` part of the lower bound, for the weights ``lam`` (``q(lambda_i)`` of mean ``lam_i``).

    ``q(lambda_i) = Gamma((nu + 1) / 2, rate beta_i)`` with ``beta_i = (nu + 1) / (2 lam_i)``
    (the form the update gives). The expected complete-data log-likelihood of a row is the
    weighted Gaussian one with weight ``w_i lam_i`` plus ``(E log lambda_i - log lam_i) / 2``;
    with minus ``KL(q(lambda_i) || Gamma(nu / 2, nu / 2))`` that is the row's term here, so
    the bound is the weighted model's log-likelihood plus the sum of these. For a row whose
    residual is known and ``lam_i`` its :func:`expected_weights`, the row's bound is its
    ``t`` log density exactly.
    """
    lam = np.asarray(lam, dtype=np.float64)
    alpha, half = 0.5 * (nu + 1.0), 0.5 * nu
    beta = alpha / lam
    psi = digamma(alpha)
    kl = ((alpha - half) * psi - gammaln(alpha) + gammaln(half) + half * (np.log(beta) - np.log(half))
          + alpha * (half - beta) / beta)
    return 0.5 * (psi - np.log(alpha)) - kl


def bound_nu_gradient(nu, lam):
    """``d/d nu`` of the sum of :func:`bound_terms` with ``q(lambda)`` held (its shape and rate fixed).

    ``sum_i [log(nu / 2) + 1 - psi(nu / 2) + E log lambda_i - E lambda_i] / 2``: what the
    bound's gradient in ``nu`` is at the optimal ``q`` (the envelope theorem).
    """
    lam = np.asarray(lam, dtype=np.float64)
    alpha = 0.5 * (nu + 1.0)
    beta = alpha / lam
    e_log = digamma(alpha) - np.log(beta)
    return 0.5 * float(np.sum(np.log(0.5 * nu) + 1.0 - digamma(0.5 * nu) + e_log - lam))


def scaled_residuals(y, F, X, w, group_idx, a, b, V, s2, a_cov=None, XtF=None):
    """``u_i = w_i E[r_i^2] / s2`` under the weighted model's posterior of the group coefficients (one factor).

    ``r_i = y_i - F_i a - X_i b_g(i)``; ``b`` and ``V`` are each group's conditional mean and
    covariance given ``a`` (:func:`samplers.ml.eb_estimates`), so
    ``E[r_i^2] = (y_i - F_i a - X_i b_g)^2 + X_i V_g X_i'``. With ``a_cov`` (the covariance of
    the fixed effects, ``A^-1``) and ``XtF`` (the weighted statistics ``X_j'W_jF_j``) the fixed
    effects are integrated out as well, as REML does: ``E[b_j | a] = b_j - V_j X_j'W_jF_j (a -
    a_hat) / s2``, so ``F_i a + X_i b_j`` has the extra variance ``h_i A^-1 h_i'`` with
    ``h_i = F_i - X_i V_j X_j'W_jF_j / s2``. Everything in the kernels' basis.
    """
    mean = y - F @ a
    var = np.zeros_like(mean)
    if X.shape[1]:
        Vg = V[group_idx]
        mean -= np.einsum("ik,ik->i", X, b[group_idx])
        var += np.einsum("ik,ikl,il->i", X, Vg, X)
        if a_cov is not None:
            G = np.einsum("jkl,jlq->jkq", V, XtF) / s2  # d E[b_j | a] / d a, up to the sign
            h = F - np.einsum("ik,ikq->iq", X, G[group_idx])
            var += np.einsum("iq,qs,is->i", h, a_cov, h)
    elif a_cov is not None:
        var += np.einsum("iq,qs,is->i", F, a_cov, F)
    return w * (mean * mean + var) / s2


# ------------------------------------------------------------------------------ the exact reference
def _log_t(z, nu):
    """Log density of the standard ``t_nu`` at ``z``."""
    return (gammaln(0.5 * (nu + 1.0)) - gammaln(0.5 * nu) - 0.5 * np.log(nu * np.pi)
            - 0.5 * (nu + 1.0) * np.log1p(z * z / nu))


def _group_modes(r0, x, sd, g, n_groups, tau, nu, n_iter=200):
    """Each group's mode of ``b -> sum_i log t_nu((r0_i - x_i b) / sd_i) + log Normal(b; 0, tau^2)`` and its curvature.

    Iteratively reweighted steps (each raises the target: the ``t`` log density is minorised
    by a quadratic at the current residual), then Newton steps where the curvature is
    negative. Returns ``(mode, -second derivative)``; the curvature is at least the prior's.
    """
    b = np.zeros(n_groups)
    prec0 = 1.0 / (tau * tau)
    for _ in range(n_iter):
        r = r0 - x * b[g]
        wt = (nu + 1.0) / (nu * sd * sd + r * r)
        num = np.bincount(g, wt * x * r0, n_groups)
        den = np.bincount(g, wt * x * x, n_groups) + prec0
        new = num / den
        done = np.max(np.abs(new - b) * np.sqrt(den), initial=0.0) < 1e-13
        b = new
        if done:
            break
    for _ in range(20):
        r = r0 - x * b[g]
        q = nu * sd * sd + r * r
        grad = np.bincount(g, (nu + 1.0) * x * r / q, n_groups) - prec0 * b
        curv = np.bincount(g, (nu + 1.0) * x * x * (nu * sd * sd - r * r) / (q * q), n_groups) + prec0
        step = np.where(curv > 0, grad / np.where(curv > 0, curv, 1.0), 0.0)
        b = b + step
        if np.max(np.abs(step) * np.sqrt(np.abs(curv)), initial=0.0) < 1e-13:
            break
    r = r0 - x * b[g]
    q = nu * sd * sd + r * r
    curv = np.bincount(g, (nu + 1.0) * x * x * (nu * sd * sd - r * r) / (q * q), n_groups) + prec0
    return b, np.maximum(curv, prec0)


def student_exact_loglik(y, eta, x, w, group_idx, n_groups, sigma, tau, nu, n_nodes=40, *, F=None, posterior=False):
    """The exact log-likelihood of ``t`` rows with one Gaussian random coefficient per group.

    ``y_i = eta_i + x_i b_g(i) + (sigma / sqrt(w_i)) t_nu``, ``b_j ~ Normal(0, tau^2)``: each
    group's integral over ``b_j`` by adaptive Gauss-Hermite quadrature with ``n_nodes`` nodes
    centred at the integrand's mode and scaled by its curvature there (Liu & Pierce 1994),
    in the user's units.

    With ``F`` (the fixed design, ``eta = F a``) also the gradient in
    ``(a, log sigma, log tau, nu)``, each component the posterior expectation of the
    complete-data score (Fisher's identity) by the same quadrature. With ``posterior`` also
    each group's posterior mean and variance of ``b_j`` and each row's ``E[lambda_i | y]``.
    Returns the value, then the gradient, then ``(mean, var, weights)``, as asked.
    """
    sd = sigma / np.sqrt(w)
    g = np.asarray(group_idx, dtype=np.int64)
    r0 = y - eta
    mode, curv = _group_modes(r0, x, sd, g, n_groups, tau, nu)
    z, wz = np.polynomial.hermite.hermgauss(n_nodes)
    scale = np.sqrt(2.0 / curv)  # b = mode + scale z
    nodes = mode[:, None] + scale[:, None] * z[None, :]  # (groups, nodes)
    r = r0[:, None] - x[:, None] * nodes[g]  # (rows, nodes)
    zr = r / sd[:, None]
    row_log = _log_t(zr, nu) - np.log(sd)[:, None]
    log_f = np.zeros((n_groups, n_nodes))
    np.add.at(log_f, g, row_log)
    log_f += -0.5 * (nodes / tau) ** 2 - 0.5 * _LOG_2PI - np.log(tau)
    # integral = scale * sum_k wz_k exp(z_k^2) f(node_k)
    terms = log_f + z[None, :] ** 2 + np.log(wz)[None, :]
    top = terms.max(axis=1, keepdims=True)
    group_ll = top[:, 0] + np.log(np.exp(terms - top).sum(axis=1)) + np.log(scale)
    out = [float(group_ll.sum())]
    if F is None and not posterior:
        return out[0]
    p = np.exp(terms - top)
    p /= p.sum(axis=1, keepdims=True)  # the posterior of b_j on the nodes
    pr = p[g]  # (rows, nodes)
    if F is not None:
        q = nu + zr * zr
        score_eta = ((nu + 1.0) * zr / q / sd[:, None] * pr).sum(axis=1)  # d/d eta_i, averaged over b
        g_sigma = float((((nu + 1.0) * zr * zr / q - 1.0) * pr).sum())
        g_tau = float((((nodes / tau) ** 2 - 1.0) * p).sum())
        d_nu = 0.5 * (digamma(0.5 * (nu + 1.0)) - digamma(0.5 * nu) - 1.0 / nu - np.log1p(zr * zr / nu)
                      + (nu + 1.0) * zr * zr / (nu * q))
        g_nu = float((d_nu * pr).sum())
        out.append(np.concatenate([F.T @ score_eta, [g_sigma, g_tau, g_nu]]))
    if posterior:
        mean = (p * nodes).sum(axis=1)
        var = (p * (nodes - mean[:, None]) ** 2).sum(axis=1)
        lam = ((nu + 1.0) / q if F is not None else (nu + 1.0) / (nu + zr * zr)) * pr
        out.append((mean, var, lam.sum(axis=1)))
    return tuple(out) if len(out) > 1 else out[0]


def student_exact_ml(model, nu=None, *, n_nodes=40, start=None):
    """Exact ML fit of a Student-t model with one random coefficient per group; a dict in the user's units.

    The log-likelihood :func:`student_exact_loglik` (adaptive Gauss-Hermite quadrature of each
    group's integral, ``n_nodes`` nodes) maximised over the fixed effects, ``log sigma``,
    ``log tau`` and, unless ``nu`` is fixed (by ``nu`` or the model's), ``log(nu - 1)``
    (``nu >= 1``): BFGS with the exact gradient from least squares, then Newton steps; the
    standard errors from the inverse of the Hessian (central differences of the gradient).
    For a model with one grouping factor and one random coefficient (``(1 | g)`` or
    ``(0 + x | g)``), its rows held and no ``sigma=``. ``start``: ``(fixed effects, sigma,
    tau, nu)`` to start from (default: least squares, the spread of the groups' mean
    residuals, and ``nu = 10``).

    Returns a dict: ``fixed``, ``fixed_se``, ``vcov_fixed``, ``sigma``, ``sigma_se``, ``sd``
    and ``sd_se`` (``{coef: ...}``), ``nu``, ``nu_se`` (nan when fixed), ``loglik``,
    ``weights`` (each row's ``E[lambda_i | y]``), ``group_means`` and ``group_vars`` (of
    ``b_j | y``), ``cov`` (of the optimised parameters), ``n_eval``, ``converged`` and
    ``gradient`` (its largest component at the end).
    """
    from scipy.optimize import minimize

    design = model.design
    if model.family != "student":
        raise ValueError("student_exact_ml fits a model of family='student'")
    if len(model.coef_names) != 1 or len(model.structure.level_ptr) != 2 or model.crossed:
        raise NotImplementedError("the exact Student-t likelihood is integrated for one random coefficient of one "
                                  f"grouping factor; the model has {list(model.coef_names)} of {list(model.factors)}")
    if model.variance_design is not None or design.y is None or model.sigma_known:
        raise NotImplementedError("the exact Student-t fit needs the model's rows, one scale sigma / sqrt(w_i) to "
                                  "estimate and no sigma=")
    nu_fixed = model.options.get("nu") if nu is None else float(nu)
    y, F, x = design.y, design.F, design.X[:, 0]
    w = np.ones(y.shape[0]) if design.weights is None else design.weights
    g, n_groups = design.group_idx, int(design.group_labels.shape[0])
    sw = np.sqrt(w)
    a_ls, *_ = np.linalg.lstsq(F * sw[:, None], y * sw, rcond=None)
    resid = y - F @ a_ls
    s_ls = float(np.sqrt(np.sum(w * resid**2) / max(y.shape[0] - F.shape[1], 1)))
    # the fixed effects are optimised in units of their least-squares standard errors
    scale = s_ls * np.sqrt(np.diag(np.linalg.pinv((F * w[:, None]).T @ F)))
    if start is None:
        seen = np.bincount(g, np.abs(x) > 0, n_groups) > 0
        means = np.bincount(g, resid * x, n_groups) / np.maximum(np.bincount(g, x * x, n_groups), 1e-300)
        tau0 = float(np.std(means[seen])) if np.any(seen) else s_ls
        start = (a_ls, s_ls, max(tau0, 1e-2 * s_ls), 10.0)
    a0 = np.asarray(start[0], dtype=np.float64)
    names = list(model.fixed_names)
    k = len(names)
    coef = model.coef_names[0]
    v0 = np.array([0.0] * k + [np.log(start[1]), np.log(start[2])])
    if nu_fixed is None:
        v0 = np.append(v0, np.log(max(float(start[3]) - 1.0, 1e-3)))
    counter = [0]

    def unpack(v):
        nu_v = nu_fixed if nu_fixed is not None else 1.0 + float(np.exp(v[k + 2]))
        return a0 + scale * v[:k], float(np.exp(v[k])), float(np.exp(v[k + 1])), nu_v

    def value_and_gradient(v):
        counter[0] += 1
        a, sigma, tau, nu_v = unpack(v)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            value, grad = student_exact_loglik(y, F @ a, x, w, g, n_groups, sigma, tau, nu_v, n_nodes, F=F)
        grad = np.concatenate([scale * grad[:k], grad[k:k + 2]] + ([] if nu_fixed is not None else
                                                                   [[(nu_v - 1.0) * grad[k + 2]]]))
        return value, grad

    def negative(v):
        value, grad = value_and_gradient(v)
        if not np.isfinite(value) or not np.all(np.isfinite(grad)):
            return np.inf, np.zeros_like(v)
        return -value, -grad

    def hessian(v, h=1e-5):
        H = np.empty((v.size, v.size))
        for i in range(v.size):
            e = np.zeros(v.size)
            e[i] = h
            H[:, i] = (value_and_gradient(v + e)[1] - value_and_gradient(v - e)[1]) / (2 * h)
        return 0.5 * (H + H.T)

    opt = minimize(negative, v0, jac=True, method="BFGS", options={"gtol": 1e-8, "maxiter": 1000})
    v = opt.x
    value, grad = value_and_gradient(v)
    for _ in range(5):  # Newton steps: BFGS stops on its gradient tolerance a little short
        step = np.linalg.solve(hessian(v), -grad)
        new, new_grad = value_and_gradient(v + step) if np.all(np.isfinite(step)) else (-np.inf, None)
        if not new >= value - 1e-9 * abs(value):
            break
        v, value, grad = v + step, new, new_grad
        if np.max(np.abs(step)) < 1e-10:
            break
    try:
        cov = np.linalg.inv(-hessian(v))
    except np.linalg.LinAlgError:
        cov = np.full((v.size, v.size), np.nan)
    a, sigma, tau, nu_v = unpack(v)
    value, _, (mean, var, lam) = student_exact_loglik(y, F @ a, x, w, g, n_groups, sigma, tau, nu_v, n_nodes, F=F,
                                                      posterior=True)
    vcov = cov[:k, :k] * np.outer(scale, scale)
    gmax = float(np.max(np.abs(grad)))
    return {
        "fixed": dict(zip(names, a.tolist(), strict=True)),
        "fixed_se": dict(zip(names, np.sqrt(np.diag(vcov)).tolist(), strict=True)),
        "vcov_fixed": vcov,
        "sigma": sigma,
        "sigma_se": sigma * float(np.sqrt(cov[k, k])),
        "sd": {coef: tau},
        "sd_se": {coef: tau * float(np.sqrt(cov[k + 1, k + 1]))},
        "nu": nu_v,
        "nu_se": float("nan") if nu_fixed is not None else (nu_v - 1.0) * float(np.sqrt(cov[k + 2, k + 2])),
        "loglik": value,
        "weights": lam,
        "group_means": mean,
        "group_vars": var,
        "cov": cov,
        "n_eval": counter[0],
        "converged": bool(np.isfinite(value) and gmax < 1e-5),
        "gradient": gmax,
    }
