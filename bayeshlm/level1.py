"""The posterior of a level-1 variance other than ``sigma^2 / w_i``: the chains' inputs and the result's variables.

A model with ``sigma=`` (:mod:`bayeshlm.varfunc`) or a Student-t level 1
(``family="student"``) is sampled by :func:`samplers.driver.run_scaled_chain`, the Gaussian
sweep behind a level-1 step (:mod:`samplers.scale`; docs/design.md, "Heterogeneous level-1
variance" and "Student-t level 1"). This module builds each chain's
:class:`~samplers.types.Level1` and puts its draws into the posterior:

* ``sigma``: the level-1 SD of a reference row (weight 1, ``z = 0``; with a ``(1 | g)``
  term, of a typical group), the Student-t scale for ``family="student"``;
* ``sigma_delta`` (``sigma_term``): ``delta`` of each column of the sigma formula, in its
  units (row ``i``'s variance is ``sigma^2 exp(z_i' delta) / w_i``);
* ``sigma_group`` (``<g>_sigma``) and ``sigma_group_sd``: each group's level-1 SD at
  ``z = 0`` and the SD ``omega`` of their logs;
* ``nu``: the Student-t degrees of freedom (when estimated).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from bayeshlm.schema import SIGMA, dim_name
from samplers.scale import PAR_LOG_OMEGA, PAR_NU
from samplers.suffstats import compute_suffstats, row_products
from samplers.types import (
    L1_DELTA_ACC,
    L1_DELTA_N,
    L1_E_ACC,
    L1_E_N,
    L1_NU_ACC,
    L1_NU_N,
    N_L1_SCAL,
    NO_ROW_PRODUCTS,
    Level1,
)

__all__ = ["NU", "SIGMA_DELTA", "SIGMA_GROUP", "SIGMA_GROUP_SD", "fitted_row_sd", "has_level1_model",
           "level1_chains", "level1_posterior", "standard_noise"]

SIGMA_DELTA = "sigma_delta"
SIGMA_TERM = "sigma_term"
SIGMA_GROUP = "sigma_group"
SIGMA_GROUP_SD = "sigma_group_sd"
NU = "nu"
NU_START = 10.0  # the estimated nu's starting value
OMEGA_START = 0.3  # and the groups' log-SD spread's


def has_level1_model(model):
    """True when the model's level-1 variance is not ``sigma^2 / w_i``: ``sigma=`` or a Student-t level 1."""
    return getattr(model, "variance_design", None) is not None or getattr(model, "family", None) == "student"


def level1_chains(model, n_chains, n_keep, out_idx, n_out):
    """One :class:`~samplers.types.Level1` per chain.

    ``out_idx`` and ``n_out``: the column of the stored log-likelihood each row adds into,
    and their number (0 to store none).
    """
    design, basis = model.design, model.basis
    y, F, X = basis.rows(design.y, design.F, design.X)
    y, F, X = (np.ascontiguousarray(v, dtype=np.float64) for v in (y, F, X))
    n_obs = y.shape[0]
    base_w = basis.weights(None, design.weights)
    base_w = np.ones(n_obs) if base_w is None else np.ascontiguousarray(base_w, dtype=np.float64)
    gidx = np.ascontiguousarray(design.group_idx, dtype=np.int64)
    vd = model.variance_design
    if vd is not None and vd.k:
        Z = np.ascontiguousarray(vd.standardised(), dtype=np.float64)
    else:
        Z = np.zeros((n_obs, 0))
    if vd is not None and vd.group is not None:
        vgidx = np.ascontiguousarray(vd.group_idx, dtype=np.int64)
        n_vg = len(vd.group_labels)
        gn = np.bincount(vgidx, minlength=n_vg).astype(np.float64)
    else:
        vgidx, n_vg, gn = np.zeros(n_obs, dtype=np.int64), 0, np.zeros(0)
    student = int(model.family == "student")
    nu_fixed = model.options.get("nu") if student else None
    k = Z.shape[1]
    n_groups = model.stats.n.shape[0]
    keep = n_out > 0
    base = compute_suffstats(y, F, X, gidx, n_groups, base_w)
    gz, gv = _group_constants(Z, vgidx, gidx, n_groups)
    grouped = int(not student and gz is not None and base.FtF_g.shape[0] > 0)
    if not grouped:
        gz, gv = np.zeros((0, k)), np.zeros(0, dtype=np.int64)
    prod = NO_ROW_PRODUCTS if grouped else row_products(F, X, gidx, n_groups, y=y)
    chains = []
    for _ in range(n_chains):
        par = np.zeros(k + 2)
        par[k + PAR_LOG_OMEGA] = np.log(OMEGA_START)
        par[k + PAR_NU] = nu_fixed if nu_fixed is not None else NU_START
        chains.append(Level1(
            y=y, base_w=base_w, F=F, X=X, gidx=gidx, Z=Z, vgidx=vgidx, gn=gn, student=student,
            nu_fixed=float(nu_fixed or 0.0), log_y_scale=float(np.log(basis.y_scale)),
            out_idx=out_idx, stats=compute_suffstats(np.zeros(n_obs), F, X, gidx, n_groups),
            r=np.zeros(n_obs), u=np.zeros(n_obs), q=np.zeros(n_obs), lam=np.ones(n_obs), w=np.empty(n_obs),
            ll_row=np.empty(n_obs if keep else 0), par=par, e=np.zeros(n_vg), eps=np.zeros(n_vg),
            gq=np.zeros(n_vg), par_out=np.full((n_keep, k + 2), np.nan), e_out=np.full((n_keep, n_vg), np.nan),
            ll_out=np.full((n_keep if keep else 0, n_out), np.nan), scal=np.zeros(N_L1_SCAL),
            grouped=grouped, base=base, gz=gz, gv=gv, grss=np.zeros(n_groups if grouped else 0), prod=prod))
    return chains


def _group_constants(Z, vgidx, gidx, n_groups):
    """``(z_j, v_j)`` of each group of the statistics; ``(None, None)`` unless both are constant within it.

    When they are, the row precisions are constant within the groups and a sweep reads no row.
    """
    first = np.full(n_groups, -1, dtype=np.int64)
    order = np.arange(gidx.shape[0])[::-1]
    first[gidx[order]] = order  # the first row of each group
    rows = first[gidx]
    if not (np.array_equal(Z, Z[rows]) and np.array_equal(vgidx, vgidx[rows])):
        return None, None
    return np.ascontiguousarray(Z[first]), np.ascontiguousarray(vgidx[first])


def level1_posterior(model, tree, chains, n_keep):
    """Put the level-1 draws into ``tree`` (in place): reference ``sigma``, ``sigma_delta``, groups' SDs, ``nu``.

    Also ``attrs["delta_acceptance"]``, ``attrs["group_sd_acceptance"]`` and
    ``attrs["nu_acceptance"]``, the shares of those Metropolis-Hastings moves accepted after warm-up.
    """
    vd = model.variance_design
    par = np.stack([c.par_out[:n_keep] for c in chains])  # (chain, draw, k + 2)
    post = tree["posterior"].to_dataset()
    k = 0 if vd is None else vd.k
    sigma = post[SIGMA].values
    new = {}
    coords = {}
    if k:
        delta_n = par[:, :, :k]
        delta = delta_n / vd.scale
        sigma = sigma * np.exp(-0.5 * (delta @ vd.shift))  # the reference row's (z = 0)
        coords[SIGMA_TERM] = list(vd.names)
        new[SIGMA_DELTA] = ((("chain", "draw", SIGMA_TERM)), delta)
    new[SIGMA] = (("chain", "draw"), sigma)
    if vd is not None and vd.group is not None:
        e = np.stack([c.e_out[:n_keep] for c in chains])
        gdim = f"{dim_name(vd.group)}_sigma"
        coords[gdim] = list(vd.group_labels)
        new[SIGMA_GROUP] = (("chain", "draw", gdim), sigma[:, :, None] * np.exp(e))
        new[SIGMA_GROUP_SD] = (("chain", "draw"), np.exp(par[:, :, k + PAR_LOG_OMEGA]))
    if model.family == "student" and model.options.get("nu") is None:
        new[NU] = (("chain", "draw"), par[:, :, k + PAR_NU])
    post = post.drop_vars(SIGMA).assign_coords(coords).assign(new)
    tree["posterior"] = xr.DataTree(post)
    for name, acc, made in (("delta_acceptance", L1_DELTA_ACC, L1_DELTA_N), ("group_sd_acceptance", L1_E_ACC, L1_E_N),
                            ("nu_acceptance", L1_NU_ACC, L1_NU_N)):
        n_moves = sum(c.scal[made] for c in chains)
        if n_moves:
            tree.attrs[name] = float(sum(c.scal[acc] for c in chains) / n_moves)
    return tree


def _flat(post, name):
    x = post[name].values
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def fitted_row_sd(model, posterior):
    """Each fitted row's level-1 SD (Student-t: scale) at every draw, shape (S, n_obs).

    ``sigma exp(z_i' delta / 2) exp(e_g(i)) / sqrt(w_i)`` with the draw's reference
    ``sigma``, ``delta`` and group SD (``sigma_group``, which already holds ``sigma exp(e_j)``).
    """
    post = posterior.posterior
    vd = model.variance_design
    if vd is not None and vd.group is not None:
        sd = _flat(post, SIGMA_GROUP)[:, vd.group_idx]
    else:
        sd = np.repeat(_flat(post, SIGMA)[:, None], model.n_obs, axis=1)
    if vd is not None and vd.k:
        sd = sd * np.exp(0.5 * _flat(post, SIGMA_DELTA) @ vd.Z.T)
    if model.design.weights is not None:
        sd = sd / np.sqrt(model.design.weights)[None, :]
    return sd


def standard_noise(model, posterior, shape, rng):
    """Level-1 errors of unit scale, shape (S, n): normal, or Student-t with each draw's ``nu``."""
    if model.family != "student":
        return rng.standard_normal(shape)
    nu = model.options.get("nu")
    nu = np.full(shape[0], nu) if nu is not None else _flat(posterior.posterior, NU)
    return rng.standard_t(nu[:, None], size=shape)
