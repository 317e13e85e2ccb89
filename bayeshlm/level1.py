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

import re

import numpy as np
import pandas as pd
import xarray as xr

from bayeshlm.data import DataError, as_frame, check_columns, check_new_values, evaluate_spec
from bayeshlm.formula import required_variables
from bayeshlm.schema import SIGMA, dim_name
from bayeshlm.varfunc import group_keys
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
           "level1_chains", "level1_posterior", "new_row_sd", "row_sd", "standard_noise"]

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


def row_sd(model, posterior, Z=None, group_idx=None, weights=None, new_e=None):
    """The level-1 SD (Student-t: scale) of rows at every draw, shape (S, n): fitted rows or new ones.

    ``sigma exp(z_i' delta / 2) exp(e_g(i)) / sqrt(w_i)`` with the draw's reference ``sigma``,
    ``delta`` and group deviation ``e`` (``sigma_group``, which holds ``sigma exp(e_j)``).

    Parameters
    ----------
    Z : ndarray of shape (n, k), optional
        The rows' columns of the sigma formula in the user's units (``VarianceDesign.Z`` for
        the fitted rows); none without such columns.
    group_idx : ndarray of int of shape (n,), optional
        With a ``(1 | g)`` term, each row's group: below the number of fitted groups, the
        position of a fitted group in ``VarianceDesign.group_labels``; ``n_fitted + j`` the
        group whose ``e`` is column ``j`` of ``new_e``.
    weights : ndarray of shape (n,), optional
        The rows' precision weights (None: 1).
    new_e : ndarray of shape (S, n_new), optional
        Groups new to the fit: their deviations ``e`` at each draw.
    """
    post = posterior.posterior
    vd = model.variance_design
    sigma = _flat(post, SIGMA)
    if vd is not None and vd.group is not None:
        group_sd = _flat(post, SIGMA_GROUP)
        if new_e is not None and new_e.shape[1]:
            group_sd = np.concatenate([group_sd, sigma[:, None] * np.exp(new_e)], axis=1)
        sd = group_sd[:, group_idx]
    else:
        n = Z.shape[0] if Z is not None else model.n_obs if weights is None else len(weights)
        sd = np.repeat(sigma[:, None], n, axis=1)
    if vd is not None and vd.k:
        sd = sd * np.exp(0.5 * _flat(post, SIGMA_DELTA) @ Z.T)
    if weights is not None:
        sd = sd / np.sqrt(weights)[None, :]
    return sd


def fitted_row_sd(model, posterior):
    """Each fitted row's level-1 SD (Student-t: scale) at every draw, shape (S, n_obs): :func:`row_sd` of its rows."""
    vd = model.variance_design
    if vd is None:
        return row_sd(model, posterior, weights=model.design.weights)
    return row_sd(model, posterior, vd.Z, vd.group_idx, model.design.weights)


def new_row_sd(model, posterior, data, weights, new_groups, rng):
    """The level-1 SD (Student-t: scale) of new rows at every draw, shape (S, n), for a model with ``sigma=``.

    The sigma formula is evaluated on ``data`` with the fitted rows' category levels and
    transforms (``VarianceDesign.spec``), and :func:`row_sd` gives the SDs as for the fitted
    rows. A group of the ``(1 | g)`` term the model was fitted on has its drawn deviation; one
    it was not fitted on follows ``new_groups`` as the coefficients of a new group do in
    :func:`bayeshlm.predict`: ``"sample"`` draws ``e ~ Normal(0, omega^2)`` at each draw
    (``omega`` the draw's ``sigma_group_sd``; one ``e`` per new group and draw, shared by its
    rows), ``"population"`` takes ``e = 0`` (the SD of a typical group; the grouping column
    may then be absent), ``"raise"`` raises. ``weights``: the rows' precision weights or None.
    """
    vd = model.variance_design
    frame = as_frame(data).reset_index(drop=True)
    where = f"sigma={vd.formula!r}"
    Z = _new_columns(vd, frame, where) if vd.k else np.zeros((len(frame), 0))
    if vd.group is None:
        return row_sd(model, posterior, Z, None, weights)
    columns = [c.strip() for c in vd.group.split(":")]
    if new_groups == "population" and not all(c in frame.columns for c in columns):
        labels = np.full(len(frame), None, dtype=object)  # no group: new to the fit
    else:
        absent = [c for c in columns if c not in frame.columns]
        if absent:
            raise DataError(f"column '{absent[0]}' (used in the grouping term of {where}) is not in the new data; "
                            "predictive draws need each row's group, or pass new_groups='population' for the "
                            "level-1 SD of a typical group")
        _check_values(frame, columns, where)
        labels = group_keys(frame, columns)
    pos = pd.Index(vd.group_labels).get_indexer(labels)
    new = pos < 0
    n_fitted = len(vd.group_labels)
    if new.any() and new_groups == "raise":
        raise ValueError(f"'{vd.group}' group {str(labels[new][0])!r} of {where} is not in the fitted data "
                         f"({len(pd.unique(labels[new]))} new groups); pass new_groups='sample' to draw their "
                         "level-1 SDs from the groups' spread or 'population' for that of a typical group")
    inverse, unique = pd.factorize(pd.Series(labels[new], dtype=object).fillna(""), sort=False)
    pos[new] = n_fitted + inverse
    S = _flat(posterior.posterior, SIGMA).shape[0]
    if new_groups == "sample":
        new_e = rng.standard_normal((S, len(unique))) * _flat(posterior.posterior, SIGMA_GROUP_SD)[:, None]
    else:
        new_e = np.zeros((S, len(unique)))
    return row_sd(model, posterior, Z, pos, weights, new_e)


def _check_values(frame, columns, where):
    """Raise naming the first of ``columns`` with missing or non-finite values in new rows."""
    check_new_values(frame, dict.fromkeys(columns, where), "predictive draws need every column the sigma formula uses")


def _new_columns(vd, frame, where):
    """The sigma formula's columns ``Z`` (user's units) on new rows; raises naming a column missing, bad or unknown."""
    columns = sorted(required_variables(vd.terms))
    check_columns(frame, {c: where for c in columns})
    _check_values(frame, columns, where)
    _check_levels(vd, frame, where)
    M = evaluate_spec(vd.spec, frame[columns], where)
    keep = [i for i, name in enumerate(vd.spec.column_names) if name != "Intercept"]
    return np.ascontiguousarray(M[:, keep])


def _shown(value):
    """A level as written in an error: ``2``, ``'public'`` (a numpy scalar as the Python one)."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def _check_levels(vd, frame, where):
    """Raise naming the column when a categorical predictor of the sigma formula has a level the fit did not see."""
    from formulaic.parser.types import Factor

    state = getattr(vd.spec, "encoder_state", None) or {}
    for expr, (kind, values) in state.items():
        if kind != Factor.Kind.CATEGORICAL or "categories" not in values:
            continue
        match = re.fullmatch(r"\s*(?:C\(\s*)?([A-Za-z_][A-Za-z_0-9]*)\s*(?:,[^()]*)?\)?\s*", expr)
        if match is None or match.group(1) not in frame.columns:
            continue  # an expression of a column: formulaic's own check names the formula
        name = match.group(1)
        known = pd.Index(values["categories"])
        column = frame[name]
        unseen = pd.unique(column[~column.isin(known)])
        if len(unseen):
            raise DataError(f"column '{name}' (used in {where}) has the level(s) "
                            f"{', '.join(_shown(v) for v in unseen[:5])} in the new data, which the model was not "
                            f"fitted on (its levels: {', '.join(_shown(v) for v in known[:10])}"
                            f"{', ...' if len(known) > 10 else ''}); a level-1 variance is estimated for the "
                            "levels of the fitted rows only")


def standard_noise(model, posterior, shape, rng):
    """Level-1 errors of unit scale, shape (S, n): normal, or Student-t with each draw's ``nu``."""
    if model.family != "student":
        return rng.standard_normal(shape)
    nu = model.options.get("nu")
    nu = np.full(shape[0], nu) if nu is not None else _flat(posterior.posterior, NU)
    return rng.standard_t(nu[:, None], size=shape)
