"""Side by side: the EB/ML (or REML) fit and the posterior of the same model."""

from __future__ import annotations

import numpy as np
import pandas as pd

from bayeshlm.results import dim_name, grouping_factors


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
    post = posterior.posterior
    g = dim_name(posterior.attrs["grouping_factor"])
    rows = []
    for term, est in eb.fixed.items():
        rows.append((f"fixed[{term}]", est, eb.fixed_se[term], _draws(post, "fixed", "fixed_term", term)))
    se = eb.variance_se
    if "sigma" in post:
        rows.append(("sigma", eb.sigma, se.get("sigma", np.nan), _draws(post, "sigma")))
    for coef, est in eb.sd.items():
        gk, short = _locate(coef, g)
        rows.append((f"sd[{coef}]", est, se.get(f"sd[{coef}]", np.nan), _draws(post, f"{gk}_sd", f"{gk}_coef", short)))
    for pair, est in eb.corr.items():
        gk, short = _locate(pair, g)
        rows.append((f"corr[{pair}]", est, se.get(f"corr[{pair}]", np.nan),
                     _draws(post, f"{gk}_corr", f"{gk}_corr_pair", short)))
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


def shrinkage_table(posterior, eb, factor=None):
    """Each group's coefficient deviations: EB estimate and SD beside the posterior mean and SD.

    Parameters
    ----------
    posterior : xarray.DataTree
        From :func:`bayeshlm.sample`, with the group draws kept.
    eb : EMResult
        From :func:`bayeshlm.fit_em` on the same model.
    factor : str, optional
        With several grouping factors, the one whose groups to show (default: the finest).

    Returns
    -------
    pandas.DataFrame
        Index (group label, coefficient); columns ``eb``, ``eb_sd``, ``post_mean``, ``post_sd``
        (deviations from the fixed part), and ``ols``, the group's own least-squares
        coefficient (total, not a deviation; nan where the group cannot estimate it, and
        for all but the finest factor).
    """
    factors = grouping_factors(posterior)
    if not factors:
        raise ValueError("the model has no grouping factor: there is nothing to shrink")
    factor = factors[0] if factor is None else factor
    if factor not in factors:
        raise ValueError(f"factor must be one of {factors}, got {factor!r}")
    g = dim_name(factor)
    effect = posterior.posterior[f"{g}_effect"]
    mean = effect.mean(("chain", "draw")).values
    sd = effect.std(("chain", "draw")).values
    groups, coefs = list(eb.labels["groups"]), list(eb.labels["coef"])
    rows, cols = np.arange(len(groups)), np.arange(len(coefs))
    if len(factors) > 1:
        rows = np.array([i for i, lab in enumerate(groups) if lab.startswith(f"{factor}=")])
        cols = np.array([i for i, c in enumerate(coefs) if c.endswith(f"|{factor}")])
        groups = [groups[i][len(factor) + 1:] for i in rows]
        coefs = [coefs[i].rpartition("|")[0] for i in cols]
    index = pd.MultiIndex.from_product([[str(x) for x in groups], coefs], names=[g, "coef"])
    cov = eb.group_cov[np.ix_(rows, cols, cols)]
    eb_sd = np.sqrt(np.diagonal(cov, axis1=1, axis2=2))
    return pd.DataFrame(
        {"eb": eb.group_means[np.ix_(rows, cols)].reshape(-1), "eb_sd": eb_sd.reshape(-1),
         "post_mean": mean.reshape(-1), "post_sd": sd.reshape(-1),
         "ols": eb.group_ols[np.ix_(rows, cols)].reshape(-1)},
        index=index,
    )


def plot_shrinkage(posterior, eb, coef="Intercept", *, factor=None, ax=None):
    """Shrinkage plot: each group's OLS, EB and posterior-mean coefficient on one axis.

    For an intercept-only random part (or a coefficient whose fixed part is the matching
    fixed term), the EB and posterior group coefficients are the fixed effect plus the
    group's deviation; groups are sorted by their OLS estimate, and the lines show how far
    each is pulled towards the overall value.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    table = shrinkage_table(posterior, eb, factor).xs(coef, level="coef")
    base = eb.fixed.get(coef, 0.0)
    post_base = float(posterior.posterior["fixed"].sel(fixed_term=coef).mean()) if coef in eb.fixed else 0.0
    order = np.argsort(table["ols"].to_numpy())
    y = np.arange(len(order))
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, max(3.0, 0.06 * len(order) + 2)))
    else:
        fig = ax.figure
    ols = table["ols"].to_numpy()[order]
    ebv = base + table["eb"].to_numpy()[order]
    post = post_base + table["post_mean"].to_numpy()[order]
    ax.hlines(y, np.minimum(ols, ebv), np.maximum(ols, ebv), color="0.8", lw=0.8)
    ax.plot(ols, y, "o", ms=3, mfc="none", label="OLS (group alone)")
    ax.plot(ebv, y, "o", ms=3, label=f"EB ({eb.method.upper()})")
    ax.plot(post, y, "x", ms=3, label="posterior mean")
    ax.axvline(base, color="0.5", lw=0.8, ls="--")
    ax.set_yticks([])
    ax.set_xlabel(coef)
    ax.set_ylabel("groups, by OLS estimate")
    ax.legend(loc="best", fontsize="small")
    return fig
