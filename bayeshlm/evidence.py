"""Marginal likelihood of a posterior fit by bridge sampling, and Bayes factors.

Given the variance components ``theta``, the likelihood with all coefficients integrated
out, ``p(y | theta)``, is exact from one upward pass (with a proper normal prior on every
fixed effect, whose normalising constant it includes). Only the few variance components
are left to integrate: ``p(y) = integral p(y | theta) p(theta) d theta``, estimated by bridge
sampling between the posterior draws of ``theta`` and a normal approximation to them
(Meng & Wong 1996, the iterative optimal bridge; error estimate as in Fruhwirth-Schnatter
2004, treating the posterior draws as independent, which their effective sample sizes
near the number of draws justify for this sampler).

The integral runs over the canonical half of each sign symmetry (non-negative SDs, see
:mod:`samplers.theta`), where ``theta`` maps one to one onto the variance components.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.special import multigammaln

from bayeshlm.model import check_result, model_first, refuse_non_gaussian, refuse_variance_model
from bayeshlm.priors import lkj_log_norm
from bayeshlm.results import flat_draws
from bayeshlm.schema import SAMPLE_STATS, SIGMA, THETA
from samplers.gaussian import integrate, workspace
from samplers.sd_priors import sd_log_norm, sd_log_prior
from samplers.theta import canonical_mask, decode_theta, encode_theta, flip_columns
from samplers.types import N_OBS, YTY


@dataclass(frozen=True)
class Evidence:
    """A log marginal likelihood with its estimated standard error.

    ``sd_priors`` records the prior of each group SD of the model, ``{role: (prior, chosen)}``
    with ``chosen`` False for a default (set from the data's scale): :func:`bayes_factor`
    reads it to say when a Bayes factor rests on the prior of a tested variance component.
    """

    log_marginal_likelihood: float
    se: float
    n_iterations: int
    sd_priors: dict = field(default_factory=dict)


@dataclass(frozen=True)
class BayesFactor:
    """``log B_12`` of model 1 against model 2, its standard error, and what it depends on.

    ``note`` is empty unless a variance component in one model and not the other (the
    component the Bayes factor tests) has a default or a vague prior: the Bayes factor of a
    variance component moves with the scale of its prior (a wider prior spreads the prior
    mass over SDs the data rule out, and favours the model without it), so such a number is
    reported with the prior it used, and is worth checking under another. Unpacks as
    ``log_bf, se = bayes_factor(...)``.
    """

    log_bf: float
    se: float
    note: str = ""

    @property
    def bf(self) -> float:
        """``B_12`` itself (``inf`` past the range of doubles)."""
        return float(np.exp(self.log_bf)) if self.log_bf < 709 else float("inf")

    def __iter__(self):
        return iter((self.log_bf, self.se))

    def __str__(self) -> str:
        text = f"log Bayes factor {self.log_bf:.3f} (se {self.se:.3f}; B_12 = {self.bf:.4g})"
        return f"{text}\n{self.note}" if self.note else text


VAGUE_SD_PRIORS = ("HalfCauchy", "Uniform", "Flat")


def model_sd_priors(model):
    """``{sd role: (prior text, chosen by the user)}`` of a model's group SDs (:class:`Evidence`)."""
    user = set(model.options.get("priors") or {})
    out = {}
    for name in model.coef_names:
        role = f"sd[{name}]"
        prior = model.prior_spec.get(role)
        if prior is None:
            continue
        chosen = bool({"sd", role, "cov"} & user)
        out[role] = (str(prior), chosen)
    return out


def _log_prior_norm(model):
    priors, structure = model.priors, model.structure
    if priors.fixed.n_flat:
        raise ValueError("the marginal likelihood needs a proper (Normal) prior on every fixed effect")
    total = 0.0 if model.sigma_known else sd_log_norm(priors.sigma_kind, priors.sigma_par, "sigma")
    for k in range(len(structure.block_ptr) - 1):
        c0, c1 = int(structure.block_ptr[k]), int(structure.block_ptr[k + 1])
        dk = c1 - c0
        if priors.block_iw[k] == 1:
            total += iw_log_norm(float(priors.block_eta[k]), priors.iw_scale[c0:c1, c0:c1])
            continue
        for i in range(c0, c1):
            total += sd_log_norm(priors.sd_kind[i], priors.sd_par[i], f"sd[{model.coef_names[i]}]")
        if dk > 1:
            total += lkj_log_norm(dk, float(priors.block_eta[k]))
        if priors.block_map[k] == 1:  # the constant samplers.theta leaves out for a mapped block
            log_det_G = np.linalg.slogdet(priors.prior_map[c0:c1, c0:c1])[1]
            total += (2.0 * float(priors.block_eta[k]) + dk - 1.0) * log_det_G
    return total


def iw_log_norm(nu, Psi):
    """Log normalising constant of an inverse-Wishart block as :func:`samplers.theta.decode_theta` writes it.

    The kernel keeps ``-(nu + d + 1)/2 log|T| - tr(Psi T^{-1})/2 + d sum log tau``, the
    density of ``(tau, R)`` (SDs and correlations) up to a constant; the full density is the
    inverse-Wishart one, ``|Psi|^{nu/2} / (2^{nu d/2} Gamma_d(nu/2))``, times the Jacobian of
    ``T = diag(tau) R diag(tau)``, ``2^d prod tau^d``.
    """
    d = Psi.shape[0]
    log_iw = 0.5 * nu * np.linalg.slogdet(Psi)[1] - 0.5 * nu * d * np.log(2.0) - multigammaln(0.5 * nu, d)
    return log_iw + d * np.log(2.0)


def _theta_draws(posterior, model):
    """The draws of ``theta`` on the canonical half (non-negative SDs).

    As the sampler stored them (``sample_stats.theta``), each brought to its canonical mirror
    image (the same variance components); results written before ``theta`` was stored are
    rebuilt from the posterior's SDs and correlations.
    """
    from bayeshlm.results import covariance_draws

    stats = posterior.children.get(SAMPLE_STATS)
    if stats is not None and THETA in stats:
        stored = np.ascontiguousarray(flat_draws(stats[THETA]), dtype=np.float64)
        if stored.shape[1] == model.n_theta:
            theta = np.empty_like(stored)
            for s in range(stored.shape[0]):
                flip_columns(stored[s], model.structure, canonical_mask(stored[s], model.structure), theta[s])
            return theta
    post = posterior.posterior
    sd, corr = covariance_draws(posterior, model)
    n = sd.shape[0]
    basis = model.basis
    s2 = np.ones(n) if model.sigma_known else post[SIGMA].values.reshape(-1) ** 2 / basis.sigma_scale**2
    theta = np.empty((n, model.n_theta))
    T_all = basis.coef_cov_from_user(corr * sd[:, :, None] * sd[:, None, :])
    for s in range(n):
        T = T_all[s]
        if not encode_theta(s2[s], T, model.structure, theta[s]):
            raise ValueError("a posterior draw has a singular group covariance")
    return theta


def _log_q(model, theta, norm):
    """Log p(y | theta) + log p(theta) on the canonical half (SDs >= 0); -inf elsewhere."""
    stats, priors, structure = model.stats, model.priors, model.structure
    work = workspace(stats, structure)
    out = np.empty(theta.shape[0])
    for s in range(theta.shape[0]):
        if np.any(theta[s, structure.sd_idx] < 0):
            out[s] = -np.inf
            continue
        s2, lp = decode_theta(theta[s], structure, priors, work.C)
        ll, ok = integrate(work, stats, structure, s2, priors.fixed)
        out[s] = ll + lp + norm if ok else -np.inf
    return out


def marginal_likelihood(model, posterior, *, seed=0, max_iter=1000, tol=1e-10):
    """Log marginal likelihood ``log p(y)`` of a model from its posterior draws.

    Parameters
    ----------
    model : Model
        With proper priors on everything (Normal fixed effects; no Flat SD prior).
    posterior : xarray.DataTree
        From :func:`bayeshlm.sample` on ``model``.
    seed : int
        Seed of the draws from the normal approximation.

    Returns
    -------
    Evidence
    """
    model, posterior = model_first(model, posterior, "marginal_likelihood")
    check_result(model, posterior, "the posterior")
    refuse_variance_model(model, "the marginal likelihood")
    refuse_non_gaussian(model, "the marginal likelihood")
    norm = _log_prior_norm(model)
    theta = _theta_draws(posterior, model)
    rng = np.random.default_rng(seed)
    rng.shuffle(theta)
    half = theta.shape[0] // 2
    fit, post = theta[:half], theta[half:]
    mean = fit.mean(axis=0)
    cov = np.atleast_2d(np.cov(fit, rowvar=False)) + 1e-12 * np.eye(theta.shape[1])
    chol = np.linalg.cholesky(cov)
    n1, n2 = post.shape[0], post.shape[0]
    prop = mean + rng.standard_normal((n2, theta.shape[1])) @ chol.T

    def log_g(x):
        z = np.linalg.solve(chol, (x - mean).T)
        return -0.5 * np.sum(z * z, axis=0) - np.sum(np.log(np.diag(chol))) - 0.5 * x.shape[1] * np.log(2 * np.pi)

    l1 = _log_q(model, post, norm) - log_g(post)  # posterior draws
    l2 = _log_q(model, prop, norm) - log_g(prop)  # proposal draws
    s1, s2 = n1 / (n1 + n2), n2 / (n1 + n2)
    shift = np.median(l1[np.isfinite(l1)])
    e1, e2 = np.exp(l1 - shift), np.exp(l2 - shift)
    r = 1.0
    n_iter = 0
    while n_iter < max_iter:
        n_iter += 1
        r_new = np.mean(e2 / (s1 * e2 + s2 * r)) / np.mean(1.0 / (s1 * e1 + s2 * r))
        done = abs(r_new - r) <= tol * r_new
        r = r_new
        if done:
            break
    f1 = e2 / (s1 * e2 + s2 * r)
    f2 = 1.0 / (s1 * e1 + s2 * r)
    rel2 = np.var(f1) / np.mean(f1) ** 2 / n2 + np.var(f2) / np.mean(f2) ** 2 / n1
    # the kernels' response is y / s_y (shifted): p(y) = p(y_N) s_y^{-N}
    offset = model.basis.loglik_offset(model.n_obs)
    return Evidence(float(np.log(r) + shift + offset), float(np.sqrt(rel2)), n_iter, model_sd_priors(model))


def bayes_factor(evidence_1, evidence_2):
    """``log B_12 = log p(y | model 1) - log p(y | model 2)`` with its standard error.

    Returns
    -------
    BayesFactor
        With a ``note`` when a tested variance component (the SD of a group coefficient in
        one model and not the other) has a default prior, set from the data's scale, or a
        vague one (HalfCauchy, Uniform): then the number depends on that choice, and the note
        names the prior and says so.
    """
    log_bf = evidence_1.log_marginal_likelihood - evidence_2.log_marginal_likelihood
    se = float(np.hypot(evidence_1.se, evidence_2.se))
    one, two = evidence_1.sd_priors, evidence_2.sd_priors
    tested = {role: one[role] for role in one if role not in two} | {role: two[role] for role in two if role not in one}
    loose = {role: text for role, (text, chosen) in tested.items()
             if not chosen or text.split("(")[0] in VAGUE_SD_PRIORS}
    note = ""
    if loose:
        said = "; ".join(f"{role} ~ {text}" for role, text in loose.items())
        note = ("This Bayes factor tests a variance component whose prior is a default or a vague one "
                f"({said}); it moves with that prior's scale (a wider prior favours the model without the "
                "component). Report it with the prior, and check it under another (the same models with, "
                "e.g., priors={'sd': 'HalfNormal(s)'} for a scale s you can defend).")
    return BayesFactor(float(log_bf), se, note)


def marginal_likelihood_pooled(model):
    """Log marginal likelihood of the pooled regression nested in ``model`` (all group variances 0).

    Same fixed effects and priors, no group coefficients: the likelihood given sigma is the
    tree likelihood at ``T = 0``, and sigma (when estimated) is integrated by adaptive
    quadrature on ``log sigma``. With :func:`marginal_likelihood` of the hierarchical fit it
    gives the Bayes factor of the hierarchy (:func:`bayes_factor`).

    Returns
    -------
    Evidence
        ``se`` is the quadrature's error bound on the log scale.
    """
    from scipy.integrate import quad

    priors = model.priors
    if priors.fixed.n_flat:
        raise ValueError("the marginal likelihood needs a proper (Normal) prior on every fixed effect")
    stats = model.stats
    work = workspace(stats, model.structure)  # C = 0: the pooled model

    def loglik(s2):
        ll, _ = integrate(work, stats, model.structure, s2, priors.fixed)
        return ll + offset

    offset = model.basis.loglik_offset(model.n_obs)

    if model.sigma_known:
        return Evidence(float(loglik(1.0)), 0.0, 0, model_sd_priors(model))
    norm = sd_log_norm(priors.sigma_kind, priors.sigma_par, "sigma")

    def log_integrand(log_sigma):  # density of log sigma: p(sigma) * sigma
        sigma = np.exp(log_sigma)
        return loglik(sigma * sigma) + sd_log_prior(priors.sigma_kind, priors.sigma_par, sigma) + norm + log_sigma

    # centre and scale from the maximum, then integrate the rescaled integrand
    grid = np.log(np.sqrt(stats.scal[YTY] / stats.scal[N_OBS])) + np.linspace(-12, 6, 721)
    values = np.array([log_integrand(x) for x in grid])
    peak = grid[np.argmax(values)]
    top = values.max()
    value, err = quad(lambda x: np.exp(log_integrand(x) - top), peak - 8, peak + 8, points=[peak],
                      epsabs=0, epsrel=1e-10, limit=200)
    return Evidence(float(np.log(value) + top), float(err / value), 0, model_sd_priors(model))
