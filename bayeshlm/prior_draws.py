"""Draws from a model's priors, and responses simulated from the model given them.

For prior predictive checks (:func:`bayeshlm.prior_predictive`) and for the statistical
tests of the sampler (:mod:`bayeshlm.testing`). Each SD is drawn by its prior's own code
(:func:`samplers.sd_priors.draw_sd`).
"""

from __future__ import annotations

import numpy as np
from scipy import stats as sps

from bayeshlm.basis import Basis
from bayeshlm.priors import InverseWishart, Normal, sd_code
from samplers.sd_priors import draw_sd


def _draw_prior_sd(prior, rng, role):
    kind, par = sd_code(prior, role)
    return draw_sd(kind, np.asarray(par, dtype=np.float64), rng, role)


def lkj_corr(d, eta, rng):
    """A ``d x d`` correlation matrix from the LKJ(eta) distribution, by the vine method.

    Partial correlations on a C-vine are independent, ``2 Beta(b_k, b_k) - 1`` with
    ``b_k = eta + (d - 2 - k) / 2`` at tree level ``k`` (Lewandowski, Kurowicka & Joe 2009,
    section 2.4), and are turned into correlations by the recursion of partial correlations.
    """
    P = np.zeros((d, d))
    R = np.eye(d)
    b = eta + (d - 1) / 2.0
    for k in range(d - 1):
        b -= 0.5
        for i in range(k + 1, d):
            P[k, i] = 2.0 * rng.beta(b, b) - 1.0
            r = P[k, i]
            for m in range(k - 1, -1, -1):
                r = r * np.sqrt((1.0 - P[m, i] ** 2) * (1.0 - P[m, k] ** 2)) + P[m, i] * P[m, k]
            R[k, i] = R[i, k] = r
    return R


def draw_from_prior(model, rng):
    """Parameters and group coefficients drawn from the model's priors.

    Returns
    -------
    dict
        ``fixed`` (n_fixed,), ``sigma`` (float, nan when the level-1 variances are known),
        ``cov`` (n_coef, n_coef) block-diagonal covariance of the group coefficients,
        ``sd`` and ``corr`` (its SDs and correlation matrix), ``b`` (n_groups of every
        factor, n_coef) group coefficients in the layout of the sampler's state.
    """
    spec = model.prior_spec
    frame = model.prior_frame
    own = Basis.identity(len(model.fixed_names), len(model.coef_names))
    phi = np.empty(len(model.fixed_names))
    for q, name in enumerate(model.fixed_names):
        prior = spec[f"fixed[{name}]"]
        if not isinstance(prior, Normal):
            raise ValueError(f"the prior of fixed[{name}] is {prior}: draws from the prior need proper priors")
        phi[q] = rng.normal(prior.mu, prior.sigma)
    # each prior holds for a coordinate phi = Lam a + o (the user's coefficient, or the
    # intercept at the predictors' means): solve for the user's coefficients
    Lam, o = np.eye(phi.size), np.zeros(phi.size)
    if frame.fixed_centred:
        G, g = own.fixed_map_to(frame.centred)
        q = frame.centred.fixed_intercept
        Lam[q], o[q] = G[q], g[q]
    fixed = np.linalg.solve(Lam, phi - o)
    sigma = np.nan if model.sigma_known else _draw_prior_sd(spec["sigma"], rng, "sigma")
    G_centred = own.coef_map_to(frame.centred)
    names = model.coef_names
    D = len(names)
    cov = np.zeros((D, D))
    bp = model.structure.block_ptr
    for k in range(len(bp) - 1):
        lo, hi = bp[k], bp[k + 1]
        if isinstance(spec.get("cov"), InverseWishart):  # every block, one-dimensional ones included
            scale = spec["cov"].matrix(hi - lo)
            cov[lo:hi, lo:hi] = np.atleast_2d(sps.invwishart(df=spec["cov"].nu, scale=scale).rvs(random_state=rng))
            continue
        sd = np.array([_draw_prior_sd(spec[f"sd[{names[i]}]"], rng, f"sd[{names[i]}]") for i in range(lo, hi)])
        R = lkj_corr(hi - lo, spec["corr"].eta, rng) if hi - lo > 1 else np.eye(1)
        block = R * np.outer(sd, sd)
        if frame.block_centred[k]:  # drawn for the centred coefficients G b: T = G^{-1} T_G G^{-T}
            Gi = np.linalg.inv(G_centred[lo:hi, lo:hi])
            block = Gi @ block @ Gi.T
        cov[lo:hi, lo:hi] = block
    sd = np.sqrt(np.diag(cov))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = cov / np.outer(sd, sd)
    st = model.structure
    n_nodes = int(st.node_ptr[-1])
    b = np.zeros((n_nodes, D))
    for k in range(len(st.level_ptr) - 1):
        lo, hi = st.level_ptr[k], st.level_ptr[k + 1]
        rows = slice(st.node_ptr[k], st.node_ptr[k + 1])
        n_k = rows.stop - rows.start
        b[rows, lo:hi] = rng.multivariate_normal(np.zeros(hi - lo), cov[lo:hi, lo:hi], size=n_k, method="eigh")
    return {"fixed": fixed, "sigma": sigma, "cov": cov, "sd": sd, "corr": corr, "b": b}


def require_rows(model):
    """Raise when ``model`` does not hold its rows (a model from ``hlm_stats``)."""
    if not model.rows_held:
        raise ValueError("simulating responses needs the model's rows; a model from hlm_stats does not keep "
                         "them: compile it with bayeshlm.hlm")


def simulate_response(model, params, rng):
    """A response drawn from the model given parameters from :func:`draw_from_prior`.

    For a Gaussian model with an offset, the response minus the offset, as the design holds it
    (:attr:`bayeshlm.data.Design.response_values` adds it back).
    """
    from bayeshlm.results import finest_coefficients

    require_rows(model)
    design = model.design
    b_row = finest_coefficients(model, params["b"])[design.group_idx]
    mean = design.F @ params["fixed"] + np.einsum("ik,ik->i", design.X, b_row)
    family = getattr(model, "family", "gaussian")
    if family != "gaussian":  # the linear predictor, then the family's draw on the response scale
        eta = mean + (model.offset if model.offset is not None else 0.0)
        if family == "poisson":
            return rng.poisson(np.exp(eta)).astype(np.float64)
        prob = 1.0 / (1.0 + np.exp(-eta)) if model.link == "logit" else sps.norm.cdf(eta)
        return rng.binomial(model.trials.astype(np.int64), prob).astype(np.float64)
    if model.sigma_known:
        var = design.obs_var
    elif design.weights is not None:  # precision weights: row i's variance is sigma^2 / w_i
        var = params["sigma"] ** 2 / design.weights
    else:
        var = np.full(model.n_obs, params["sigma"] ** 2)
    return mean + rng.normal(size=model.n_obs) * np.sqrt(var)
