"""The log prior density of each posterior draw: the ``log_prior`` group, for prior-sensitivity checks.

Each prior is evaluated where it is set (:class:`bayeshlm.priors.PriorFrame`): the fixed
effects as the user wrote them, except a default intercept prior, which holds at the
predictors' means; a block's SDs and correlations on the user's coefficients, or on the
centred ones (``T_c = G T G'``, ``G`` the map from the user's coefficients to the centred
ones) for a block with default priors. The densities are normalised and on the parameters
themselves (no Jacobian of the sampler's coordinates): a group SD's prior at the SD, the
LKJ prior at the block's correlation matrix, an inverse-Wishart at its covariance. The
group coefficients' own distribution, ``N(0, T)``, is part of the model, not of the prior,
and is not included (as brms leaves it out of ``lprior``).

Variables (dimensions ``chain, draw`` and): ``fixed`` (``fixed_term``), ``sigma`` (when
estimated), ``<g>_sd`` (``<g>_coef``) and ``<g>_corr`` (each factor's LKJ densities, summed
over its blocks) or ``<g>_cov`` (its inverse-Wishart densities). ArviZ's power-scaling
sensitivity check (``arviz_stats.psense_summary``) sums them. docs/design.md, "Log prior".
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from bayeshlm.basis import Basis
from bayeshlm.priors import LKJ, Flat, InverseWishart, Normal, lkj_log_norm, sd_code
from bayeshlm.results import factor_parts, flat_draws
from bayeshlm.schema import FIXED, FIXED_DIM, SIGMA, coef_dim, corr_pair_dim, corr_var, dim_name, sd_var
from samplers.sd_priors import PRIOR_FLAT, sd_log_norm, sd_log_prior

__all__ = ["log_prior_dataset"]


def _sd_density(prior, role, values):
    kind, par = sd_code(prior, role)
    par = np.asarray(par, dtype=np.float64)
    norm = 0.0 if kind == PRIOR_FLAT else sd_log_norm(kind, par, role)
    return np.array([sd_log_prior(kind, par, float(v)) for v in values]) + norm


def _blocks(model):
    """``(factor index, lo, hi)`` of every covariance block."""
    bp = model.structure.block_ptr
    parts = factor_parts(model)
    out = []
    for k in range(len(bp) - 1):
        lo, hi = int(bp[k]), int(bp[k + 1])
        factor = next(i for i, (_, (f_lo, f_hi), _, _) in enumerate(parts) if f_lo <= lo < f_hi)
        out.append((factor, lo, hi))
    return out


CHUNK = 4096  # draws evaluated at a time: the working arrays stay small whatever the run's size


def _corr_values(post, model):
    """Flat views of each factor's correlation draws: ``[(i, j, values)]`` over the model's coefficients."""
    out = []
    for factor, (lo, _), _, names in factor_parts(model):
        g = dim_name(factor)
        if corr_var(g) in post:
            values = flat_draws(post[corr_var(g)].transpose("chain", "draw", corr_pair_dim(g)))
            for m, pair in enumerate(post[corr_pair_dim(g)].values):
                first, second = str(pair).split(",")
                out.append((lo + list(names).index(first), lo + list(names).index(second), values[:, m]))
    return out


def log_prior_dataset(model, posterior):
    """The ``log_prior`` group of a posterior of ``model`` (see the module's text)."""
    from scipy.stats import invwishart

    post = posterior.posterior if hasattr(posterior, "posterior") else posterior
    n_chain, n_draw = post.sizes["chain"], post.sizes["draw"]
    shape = (n_chain, n_draw)
    n = n_chain * n_draw
    spec, frame = model.prior_spec, model.prior_frame
    names = list(model.fixed_names)
    p, d = len(names), len(model.coef_names)
    own = Basis.identity(p, d)
    coords = {"chain": post["chain"].values, "draw": post["draw"].values}
    parts = factor_parts(model)
    blocks = _blocks(model)
    iw = "cov" in spec and isinstance(spec["cov"], InverseWishart)
    eta = float(spec["corr"].eta) if isinstance(spec.get("corr"), LKJ) else 1.0
    G_c = own.coef_map_to(frame.centred) if d and frame is not None and any(frame.block_centred) else None
    if p:
        a = flat_draws(post[FIXED].sel({FIXED_DIM: names}).transpose("chain", "draw", FIXED_DIM))
        lp_fixed = np.zeros((n, p))
        centred = frame is not None and frame.fixed_centred
        if centred:  # the default intercept prior holds at the means
            G, g = own.fixed_map_to(frame.centred)
            q = frame.centred.fixed_intercept
    sds_all = [flat_draws(post[sd_var(dim_name(f))].transpose("chain", "draw", coef_dim(dim_name(f))))
               for f, _, _, _ in parts]
    pairs = _corr_values(post, model) if d else []
    lp_sd = np.zeros((n, d))
    lp_factor = np.zeros((n, len(parts)))
    for start in range(0, n, CHUNK):
        rows = slice(start, min(start + CHUNK, n))
        if p:
            at = a[rows].copy()
            if centred:
                at[:, q] = a[rows] @ G[q] + g[q]
            for j, name in enumerate(names):
                prior = spec[f"fixed[{name}]"]
                if isinstance(prior, Normal):
                    z = (at[:, j] - prior.mu) / prior.sigma
                    lp_fixed[rows, j] = -0.5 * z * z - np.log(prior.sigma) - 0.5 * np.log(2 * np.pi)
                elif not isinstance(prior, Flat):  # pragma: no cover - resolve_priors allows no other
                    raise ValueError(f"no density for the prior {prior!r} of fixed[{name}]")
        if not d:
            continue
        sd = np.concatenate([values[rows] for values in sds_all], axis=1)
        T = np.zeros((sd.shape[0], d, d))
        T[:, np.arange(d), np.arange(d)] = sd * sd
        for i, j, values in pairs:
            T[:, i, j] = T[:, j, i] = values[rows] * sd[:, i] * sd[:, j]
        for b, (f, lo, hi) in enumerate(blocks):
            Tb = T[:, lo:hi, lo:hi]
            if G_c is not None and frame.block_centred[b]:
                Gb = G_c[lo:hi, lo:hi]
                Tb = np.einsum("ij,sjk,lk->sil", Gb, Tb, Gb)
            if iw:
                dist = invwishart(df=spec["cov"].nu, scale=spec["cov"].matrix(hi - lo))
                lp_factor[rows, f] += (np.array([dist.logpdf(t) for t in Tb]) if hi - lo > 1
                                       else dist.logpdf(Tb[:, 0, 0]))
                continue
            sds = np.sqrt(np.maximum(np.diagonal(Tb, axis1=1, axis2=2), 0.0))
            for r in range(lo, hi):
                role = f"sd[{model.coef_names[r]}]"
                lp_sd[rows, r] = _sd_density(spec[role], role, sds[:, r - lo])
            if hi - lo > 1:
                R = Tb / (sds[:, :, None] * sds[:, None, :])
                lp_factor[rows, f] += (eta - 1.0) * np.linalg.slogdet(R)[1] + lkj_log_norm(hi - lo, eta)
    out = {}
    if p:
        out[FIXED] = xr.DataArray(lp_fixed.reshape(*shape, p), dims=("chain", "draw", FIXED_DIM),
                                  coords={**coords, FIXED_DIM: names})
    if SIGMA in post and "sigma" in spec:
        sigma = flat_draws(post[SIGMA])
        out[SIGMA] = xr.DataArray(_sd_density(spec["sigma"], "sigma", sigma).reshape(shape), dims=("chain", "draw"),
                                  coords=coords)
    for f, (factor, (lo, hi), _, coef_names) in enumerate(parts):
        g = dim_name(factor)
        if iw:
            out[f"{g}_cov"] = xr.DataArray(lp_factor[:, f].reshape(shape), dims=("chain", "draw"), coords=coords)
            continue
        out[sd_var(g)] = xr.DataArray(lp_sd[:, lo:hi].reshape(*shape, hi - lo), dims=("chain", "draw", coef_dim(g)),
                                      coords={**coords, coef_dim(g): list(coef_names)})
        if any(b_hi - b_lo > 1 for ff, b_lo, b_hi in blocks if ff == f):
            out[f"{g}_corr"] = xr.DataArray(lp_factor[:, f].reshape(shape), dims=("chain", "draw"), coords=coords)
    return xr.Dataset(out)
