"""Side by side: the EB/ML (or REML) fit and the posterior of the same model."""

from __future__ import annotations

import numpy as np
import pandas as pd

from bayeshlm.model import check_result, check_same_model
from bayeshlm.results import flat_draws, grouping_factors
from bayeshlm.schema import FIXED, FIXED_DIM, coef_dim, corr_pair_dim, corr_var, dim_name, effect_var, sd_var


def _draws(post, name, dim=None, label=None):
    da = post[name]
    if dim is not None:
        da = da.sel({dim: label})
    return np.asarray(da).reshape(-1)


def _locate(name, g):
    """``(dimension prefix, label)`` of an EB/ML coefficient or pair name in the posterior.

    With several grouping factors the names are qualified, ``"x|school"`` or
    ``"Intercept,x|school"``; with one they are bare and belong to ``g``.
    """
    label, sep, factor = name.rpartition("|")
    return (dim_name(factor), label) if sep else (g, name)


def compare(posterior, eb, *, ci_prob=0.95):
    """One table of every fixed effect and variance component: EB/ML estimate beside the posterior.

    Parameters
    ----------
    posterior : xarray.DataTree
        From :func:`bayeshlm.sample`.
    eb : EMResult
        From :func:`bayeshlm.fit_em` on the same model.
    ci_prob : float
        Probability of the posterior's equal-tailed interval.

    Returns
    -------
    pandas.DataFrame
        Rows ``fixed[<term>]``, ``sigma``, ``sd[<coef>]``, ``corr[<a>,<b>]``; columns
        ``eb_estimate``, ``eb_se`` (model-based for fixed effects, observed information for
        the variance components; nan on the boundary), ``post_mean``,
        ``post_sd``, ``post_median``, the interval bounds ``ci_low`` and ``ci_high``,
        ``difference`` (posterior mean minus EB estimate) and ``difference_in_sd`` (the same
        in posterior SDs).

    Examples
    --------
    >>> import bayeshlm as bh
    >>> model = bh.hlm("reaction ~ days + (days | subject)", bh.load_dataset("sleepstudy"))
    >>> table = bh.compare(bh.sample(model, seed=1, progress=False), bh.fit_em(model))
    >>> list(table.index[:2])
    ['fixed[Intercept]', 'fixed[days]']
    """
    check_same_model(posterior, eb, "the posterior and the EM fit")
    post = posterior.posterior
    g = dim_name(posterior.attrs["grouping_factor"])
    rows = []
    for term, est in eb.fixed.items():
        rows.append((f"fixed[{term}]", est, eb.fixed_se[term], _draws(post, FIXED, FIXED_DIM, term)))
    se = eb.variance_se
    if "sigma" in post:
        rows.append(("sigma", eb.sigma, se.get("sigma", np.nan), _draws(post, "sigma")))
    for coef, est in eb.sd.items():
        gk, short = _locate(coef, g)
        rows.append((f"sd[{coef}]", est, se.get(f"sd[{coef}]", np.nan), _draws(post, sd_var(gk), coef_dim(gk), short)))
    for pair, est in eb.corr.items():
        gk, short = _locate(pair, g)
        rows.append((f"corr[{pair}]", est, se.get(f"corr[{pair}]", np.nan),
                     _draws(post, corr_var(gk), corr_pair_dim(gk), short)))
    tail = (1.0 - ci_prob) / 2.0
    records = {}
    for name, est, se, x in rows:
        mean, sd = float(np.mean(x)), float(np.std(x))
        records[name] = {
            "eb_estimate": est,
            "eb_se": se,
            "post_mean": mean,
            "post_sd": sd,
            "post_median": float(np.median(x)),
            "ci_low": float(np.quantile(x, tail)),
            "ci_high": float(np.quantile(x, 1.0 - tail)),
            "difference": mean - est,
            "difference_in_sd": (mean - est) / sd if sd > 0 else np.nan,
        }
    table = pd.DataFrame.from_dict(records, orient="index")
    table.attrs["eb_method"] = eb.method
    return table


def eb_rows(eb, factors, factor):
    """Rows (groups) and columns (coefficients) of the EB arrays for one factor, with their labels."""
    groups, coefs = list(eb.labels["groups"]), list(eb.labels["coef"])
    rows, cols = np.arange(len(groups)), np.arange(len(coefs))
    if len(factors) > 1:
        rows = np.array([i for i, lab in enumerate(groups) if lab.startswith(f"{factor}=")])
        cols = np.array([i for i, c in enumerate(coefs) if c.endswith(f"|{factor}")])
        groups = [groups[i][len(factor) + 1:] for i in rows]
        coefs = [coefs[i].rpartition("|")[0] for i in cols]
    return rows, cols, [str(x) for x in groups], coefs


def group_draws(posterior, factor, labels, coefs):
    """Draws ``(n_draws, n_groups, n_coef)`` of one factor's group deviations, in the order of `labels`.

    Groups whose draws were not kept (``keep_group_draws=n``) are nan.
    """
    g = dim_name(factor)
    name = effect_var(g)
    if name not in posterior.posterior:
        raise ValueError(f"the posterior holds no draws of the '{factor}' group coefficients; sample with "
                         "keep_group_draws=True (or a number of groups) to compare them")
    da = posterior.posterior[name]
    draws = flat_draws(da.sel({coef_dim(g): list(coefs)}).transpose("chain", "draw", g, coef_dim(g)))
    pos = pd.Index([str(x) for x in da[g].values]).get_indexer(labels)
    out = np.full((draws.shape[0], len(labels), len(coefs)), np.nan)
    out[:, pos >= 0] = draws[:, pos[pos >= 0]]
    return out


def _implied(model, k):
    """What the model implies for the coefficients of factor ``k``'s groups, apart from their own deviation.

    For group ``j`` with rows ``R`` and random design ``X`` (factor ``k``'s columns), the
    group's coefficients as the model writes them are the fixed part and the deviations of
    the coarser groups containing it, projected on the group's own design:
    ``(X'WX)^-1 X'W (F a + sum_m Z_m u_m)``. For a level-2 predictor ``z`` this is the
    coefficient's equation ``g0 + g1 z_j`` (cross-level terms included); a level-1 predictor
    with a fixed slope enters at its group mean, as it does in the group's own least squares.
    From the statistics: nothing but the cross-products per finest group is needed.

    Returns
    -------
    ols : ndarray (n_groups, d)
        The group's own (weighted) least-squares coefficients; nan where ``X'WX`` is singular.
    K : ndarray (n_groups, d, n_fixed)
        The map from the fixed effects.
    L : list of (ndarray (n, d, d_m), ndarray (n,), int, ndarray (n,) or None)
        For each coarser factor ``m``: the map from its deviations, the group of ``m`` that
        contains each group, ``m``, and None. For crossed factors, for every other factor
        ``m``, per cell (``n`` cells): the map from the deviation of the cell's group of
        ``m``, that group, ``m``, and the cell's group of factor ``k``, over whose cells the
        terms are added up.
    """
    stats, design = model.stats, model.design
    sizes = list(design.factor_sizes or (len(model.coef_names),))
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    cols = slice(starts[k], starts[k + 1])
    n_k = len(design.factor_labels[k]) if design.factor_labels else len(design.group_labels)
    anc = np.arange(stats.n.shape[0])  # each finest group's (or cell's) group of factor k
    for par in design.parents[:k]:
        anc = par[anc]
    if design.crossed:
        anc = design.cell_codes[:, k]

    def gather(a):
        out = np.zeros((n_k, *a.shape[1:]))
        np.add.at(out, anc, a)
        return out

    # The statistics are in the kernels' basis (bayeshlm.basis: X_N = X M, F_N = F M_F,
    # y_N = (y - c_y) / s_y); the projections are carried to the user's columns exactly:
    # (X'WX)^-1 X'W F = M (X_N'W X_N)^-1 X_N'W F_N M_F^-1, and the own least squares of y is
    # M (s_y beta_N + c_y gamma) with gamma that of the column of ones.
    basis = model.basis
    M = basis.coef_matrix()
    M_inv = basis.coef_matrix_inverse()
    Mk = M[cols, cols]
    A = gather(stats.XtX[:, cols, cols])
    ok = np.linalg.cond(A) < 1e12
    A_inv = np.full_like(A, np.nan)
    A_inv[ok] = np.linalg.inv(A[ok])
    q = basis.fixed_intercept
    rhs = basis.response_cross(gather(stats.Xty[:, cols]), gather(stats.XtF[:, cols, q]) if q >= 0 else None)
    ols = np.einsum("gij,gj->gi", A_inv, rhs) @ Mk.T
    K = Mk @ (A_inv @ gather(stats.XtF[:, cols, :])) @ basis.fixed_matrix_inverse()
    L = []
    if design.crossed:
        for m in range(len(sizes)):
            if m != k:
                other = slice(starts[m], starts[m + 1])
                Lc = Mk @ (A_inv[anc] @ stats.XtX[:, cols, other]) @ M_inv[other, other]
                L.append((Lc, design.cell_codes[:, m], m, anc))
        return ols, K, L
    up = np.arange(n_k)
    for m in range(k + 1, len(sizes)):
        up = design.parents[m - 1][up]
        other = slice(starts[m], starts[m + 1])
        C = gather(stats.XtX[:, cols, other])
        L.append((Mk @ (A_inv @ C) @ M_inv[other, other], up.copy(), m, None))
    return ols, K, L


def _sum_by(values, member, n, axis):
    """Sums of ``values`` along ``axis`` over the entries of each of ``n`` groups (``member`` their codes)."""
    values = np.moveaxis(values, axis, 0)
    out = np.zeros((n, *values.shape[1:]))
    np.add.at(out, member, values)
    return np.moveaxis(out, 0, axis)


def shrinkage_table(posterior, eb, factor=None, *, model=None, kind="deviation"):
    """Each group's coefficients: its own least squares, the EB estimate and the posterior, all alike.

    Parameters
    ----------
    posterior : xarray.DataTree
        From :func:`bayeshlm.sample`, with the group draws kept.
    eb : EMResult
        From :func:`bayeshlm.fit_em` on the same model.
    factor : str, optional
        With several grouping factors, the one whose groups to show (default: the finest).
    model : Model, optional
        The model both were fitted to. Needed when the fixed part holds anything but the random
        coefficients themselves (level-2 predictors, cross-level interactions, level-1
        predictors with fixed slopes) or there are several grouping factors: a group's
        coefficients then depend on its own predictor values and on the groups above it.
        For a non-Gaussian level 1 the ``ols`` column is nan: a group's least squares on a 0/1
        or count response estimates nothing on the link scale.
    kind : {"deviation", "total"}
        ``"deviation"``: every column is a deviation from what the model implies for the group
        without its own deviation (the fixed part at the group's predictor values, plus the
        deviations of the groups above it), the quantity the model's group effects are:
        ``eb``, ``eb_sd`` (conditional SD), ``post_mean``, ``post_sd``, and ``ols``, the group's
        own least-squares coefficients minus the EB fit's implied part.
        ``"total"``: every column is a whole group coefficient: ``ols`` (the group's own least
        squares), ``eb_implied`` (what the EB fit implies without the group's deviation: what
        the group is shrunk towards), ``eb`` (that plus the EB deviation), and ``post_mean``,
        ``post_sd`` (the posterior of the implied part plus the deviation, draw by draw).

    Returns
    -------
    pandas.DataFrame
        Index (group label, coefficient). A group whose own design cannot determine its
        coefficients (fewer rows than coefficients, a predictor constant within it) has nan
        for its least-squares values and, when the model is needed, for what the model implies.

    Raises
    ------
    ValueError
        If the model is needed and not given, or does not match the fits.
    """
    if kind not in ("deviation", "total"):
        raise ValueError(f"kind must be 'deviation' or 'total', got {kind!r}")
    check_same_model(posterior, eb, "the posterior and the EM fit")
    if model is not None:
        check_result(model, posterior, "the posterior")
        check_result(model, eb, "the EM fit")
    factors = grouping_factors(posterior)
    if not factors:
        raise ValueError("the model has no grouping factor: there is nothing to shrink")
    factor = factors[0] if factor is None else factor
    if factor not in factors:
        raise ValueError(f"factor must be one of {factors}, got {factor!r}")
    k = factors.index(factor)
    rows, cols, groups, coefs = eb_rows(eb, factors, factor)
    g = dim_name(factor)
    dev_draws = group_draws(posterior, factor, groups, coefs)
    eb_dev = eb.group_means[np.ix_(rows, cols)]
    eb_sd = np.sqrt(np.diagonal(eb.group_cov[np.ix_(rows, cols, cols)], axis1=1, axis2=2))
    fixed_names = list(eb.fixed)
    a_eb = np.array([eb.fixed[n] for n in fixed_names])
    a_draws = flat_draws(posterior.posterior[FIXED].sel({FIXED_DIM: fixed_names}).transpose("chain", "draw", ...))
    simple = len(factors) == 1 and set(fixed_names) == set(coefs)
    if model is None and not simple:
        others = [n for n in fixed_names if n not in coefs]
        why = (f"the fixed part has terms that are not random coefficients of '{factor}' ({', '.join(others)})"
               if others else "there are several grouping factors")
        raise ValueError(f"{why}: each group's coefficients depend on its own predictor values and the groups "
                         "above it, so pass model= (the model both were fitted to) to compare like with like")
    if model is None:  # fixed part = the random coefficients: the implied part is the fixed effect itself
        pick = [fixed_names.index(c) for c in coefs]
        ols = eb.group_ols[np.ix_(rows, cols)]
        eb_implied = np.broadcast_to(a_eb[pick], eb_dev.shape)
        post_implied = a_draws[:, None, pick]
    else:
        if list(model.fixed_names) != fixed_names or list(model.factors) != factors:
            raise ValueError("the model does not match the fits: its fixed effects or grouping factors differ")
        labels_k = [str(x) for x in (model.design.factor_labels[k] if model.design.factor_labels
                                     else model.design.group_labels)]
        if labels_k != groups:
            raise ValueError(f"the model does not match the fits: its '{factor}' groups differ")
        ols, K, L = _implied(model, k)
        if not model.gaussian:  # least squares of a 0/1 or count response is no estimate on the link scale
            ols = np.full_like(ols, np.nan)
        eb_implied = np.einsum("gip,p->gi", K, a_eb)
        post_implied = np.einsum("gip,sp->sgi", K, a_draws)
        for Lm, up, m, cell_group in L:
            rows_m, cols_m, groups_m, coefs_m = eb_rows(eb, factors, factors[m])
            eb_part = np.einsum("gij,gj->gi", Lm, eb.group_means[np.ix_(rows_m, cols_m)][up])
            post_part = np.einsum("gij,sgj->sgi", Lm, group_draws(posterior, factors[m], groups_m, coefs_m)[:, up])
            if cell_group is not None:  # crossed: from the cells to the groups of factor k
                eb_part = _sum_by(eb_part, cell_group, len(groups), axis=0)
                post_part = _sum_by(post_part, cell_group, len(groups), axis=1)
            eb_implied = eb_implied + eb_part
            post_implied = post_implied + post_part
    index = pd.MultiIndex.from_product([groups, coefs], names=[g, "coef"])
    if kind == "deviation":
        data = {"eb": eb_dev, "eb_sd": eb_sd, "post_mean": dev_draws.mean(axis=0), "post_sd": dev_draws.std(axis=0),
                "ols": ols - eb_implied}
    else:
        total = post_implied + dev_draws
        data = {"ols": ols, "eb_implied": eb_implied, "eb": eb_implied + eb_dev, "post_mean": total.mean(axis=0),
                "post_sd": total.std(axis=0)}
    table = pd.DataFrame({name: np.asarray(v, dtype=float).reshape(-1) for name, v in data.items()}, index=index)
    table.attrs["kind"] = kind
    return table


def plot_shrinkage(posterior, eb, coef="Intercept", *, model=None, factor=None, ax=None):
    """Shrinkage plot: each group's own least-squares coefficient beside its EB and posterior coefficient.

    All three are whole group coefficients (:func:`shrinkage_table` with ``kind="total"``): the
    EB and posterior values are what the model implies for the group (the fixed part at the
    group's level-2 predictor values, cross-level interactions included, plus the deviations
    of the groups above it) plus the group's own deviation. Groups are sorted by their
    least-squares estimate; the grey lines show how far each is pulled, towards the overall
    value (a dashed line) when the model implies the same value for every group, and towards
    the group's own implied value (a short bar) when level-2 predictors make it differ.

    Parameters
    ----------
    posterior, eb : as for :func:`shrinkage_table`
    coef : str
        The coefficient to show.
    model : Model, optional
        The model both were fitted to; needed with level-2 predictors or several factors.
    factor : str, optional
        With several grouping factors, the one whose groups to show (default: the finest).
    ax : matplotlib.axes.Axes, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    table = shrinkage_table(posterior, eb, factor, model=model, kind="total")
    if coef not in table.index.get_level_values("coef"):
        raise ValueError(f"coef must be one of {list(dict.fromkeys(table.index.get_level_values('coef')))}, "
                         f"got {coef!r}")
    table = table.xs(coef, level="coef")
    table = table[np.isfinite(table["ols"].to_numpy())]
    order = np.argsort(table["ols"].to_numpy())
    y = np.arange(len(order))
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, max(3.0, 0.06 * len(order) + 2)))
    else:
        fig = ax.figure
    ols = table["ols"].to_numpy()[order]
    ebv = table["eb"].to_numpy()[order]
    post = table["post_mean"].to_numpy()[order]
    target = table["eb_implied"].to_numpy()[order]
    ax.hlines(y, np.minimum(ols, ebv), np.maximum(ols, ebv), color="0.8", lw=0.8)
    ax.plot(ols, y, "o", ms=3, mfc="none", label="OLS (group alone)")
    ax.plot(ebv, y, "o", ms=3, label=f"EB ({eb.method.upper()})")
    ax.plot(post, y, "x", ms=3, label="posterior mean")
    spread = np.ptp(target) if len(target) else 0.0
    if spread <= 1e-9 * max(1.0, float(np.max(np.abs(target), initial=0.0))):
        ax.axvline(target[0] if len(target) else 0.0, color="0.5", lw=0.8, ls="--")
    else:
        ax.plot(target, y, "|", ms=6, color="0.4", label="implied by the model, without the group's deviation")
    ax.set_yticks([])
    ax.set_xlabel(coef)
    ax.set_ylabel("groups, by OLS estimate")
    ax.legend(loc="best", fontsize="small")
    return fig
