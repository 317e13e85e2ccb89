"""The pieces of a fit as lme4 names them, tidy: ``fixef``, ``ranef``, ``coef``, ``varcorr``.

Each takes an EM fit (:func:`bayeshlm.fit_em`) or a posterior (:func:`bayeshlm.sample`) and
returns a DataFrame: for the EM fit the estimates (with their standard errors where they
exist), for the posterior the mean, SD and equal-tailed interval of the draws; with
``draws=True`` a posterior gives the draws themselves as an ``xarray.DataArray``
(dimensions ``chain, draw, ...``). Group tables are long (one row per group and
coefficient); ``wide=True`` pivots them to one row per group, one column per coefficient,
as lme4 prints them.

``coef`` adds up what the model says a group's coefficients are (docs/design.md,
"Group coefficients"): for the coefficient of the level-1 column ``x_k`` in group ``j``,
every fixed effect whose column is ``x_k`` times a variable constant within the group
(the intercept's level-2 predictors, the cross-level interactions of a slope), times that
variable's value in the group, plus the group's own deviation, plus the deviations of the
groups above it whose columns are ``x_k`` too. A fixed effect of a level-1 column that has
no random coefficient is a column of its own, the same for every group, as in lme4.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bayeshlm.compare import eb_rows, group_draws
from bayeshlm.em import EMResult
from bayeshlm.model import check_result, coef_parts, model_first
from bayeshlm.results import flat_draws, grouping_factors
from bayeshlm.schema import FIXED, FIXED_DIM, SIGMA, coef_dim, corr_pair_dim, corr_var, dim_name, effect_var, sd_var

__all__ = ["coef", "fixef", "ranef", "varcorr"]

_SUMMARY = ("mean", "sd", "lower", "upper")


def _is_em(fit):
    if isinstance(fit, EMResult):
        return True
    if hasattr(fit, "posterior"):
        return False
    raise TypeError(f"expected an EM fit (bayeshlm.fit_em) or a posterior (bayeshlm.sample), got {type(fit).__name__}")


def _summary(draws, ci_prob):
    """Mean, SD and equal-tailed ``ci_prob`` interval over the first axis (the draws)."""
    tail = (1.0 - ci_prob) / 2.0
    lower, upper = np.quantile(draws, [tail, 1.0 - tail], axis=0)
    return {"mean": draws.mean(axis=0), "sd": draws.std(axis=0, ddof=1), "lower": lower, "upper": upper}


def _check_prob(ci_prob):
    if not 0.0 < ci_prob < 1.0:
        raise ValueError(f"ci_prob must be between 0 and 1, got {ci_prob!r}")


def fixef(fit, *, draws=False, ci_prob=0.95):
    """The fixed effects.

    Parameters
    ----------
    fit : EMResult or xarray.DataTree
        An EM fit or a posterior.
    draws : bool
        A posterior's draws (``DataArray`` ``chain, draw, fixed_term``) instead of their summary.
    ci_prob : float
        The probability of the intervals: Wald intervals of the EM fit, equal-tailed
        posterior intervals.

    Returns
    -------
    pandas.DataFrame
        Index ``term``; columns ``estimate, se, lower, upper`` (EM) or ``mean, sd, lower, upper``.
    """
    from scipy.stats import norm

    _check_prob(ci_prob)
    if _is_em(fit):
        if draws:
            raise ValueError("draws=True needs a posterior; an EM fit has estimates and standard errors")
        est = pd.Series(fit.fixed, dtype=float)
        se = pd.Series(fit.fixed_se, dtype=float)
        z = norm.ppf(0.5 + ci_prob / 2.0)
        table = pd.DataFrame({"estimate": est, "se": se, "lower": est - z * se, "upper": est + z * se})
    else:
        da = fit.posterior[FIXED].transpose("chain", "draw", FIXED_DIM)
        if draws:
            return da
        table = pd.DataFrame(_summary(flat_draws(da), ci_prob), index=[str(t) for t in da[FIXED_DIM].values])
    table.index.name = "term"
    return table


def _factors(fit):
    if _is_em(fit):
        return [f for f in (fit.model or {}).get("factors", []) if f]
    return grouping_factors(fit)


def _factor(fit, factor):
    factors = _factors(fit)
    if not factors:
        raise ValueError("the model has no grouping factor: it has no group coefficients")
    if factor is None:
        return factors, factors[0]
    if factor not in factors:
        raise ValueError(f"factor must be one of {factors}, got {factor!r}")
    return factors, factor


def _long(values, groups, coefs, factor, columns):
    """A table with index ``(group, coef)`` from arrays ``(n_groups, n_coef)``, one per column."""
    index = pd.MultiIndex.from_product([list(groups), list(coefs)], names=[factor, "coef"])
    return pd.DataFrame({c: np.asarray(v, dtype=float).reshape(-1) for c, v in zip(columns, values, strict=True)},
                        index=index)


def _shape(table, wide):
    if not wide:
        return table
    column = "estimate" if "estimate" in table.columns else "mean"
    out = table[column].unstack("coef")
    return out[list(dict.fromkeys(table.index.get_level_values("coef")))]  # the model's order, not sorted


def ranef(fit, factor=None, *, draws=False, wide=False, ci_prob=0.95):
    """The group deviations of one grouping factor (the empirical-Bayes estimates, or their posterior).

    Parameters
    ----------
    fit : EMResult or xarray.DataTree
        An EM fit or a posterior (with its group draws kept).
    factor : str, optional
        The grouping factor; default the finest.
    draws : bool
        A posterior's draws (``DataArray`` ``chain, draw, <group>, <group>_coef``).
    wide : bool
        One row per group, one column per coefficient (the estimates or posterior means).
    ci_prob : float
        Probability of the posterior intervals.

    Returns
    -------
    pandas.DataFrame
        Index ``(<factor>, coef)``; columns ``estimate, se`` (EM: the conditional mode and the
        conditional SD) or ``mean, sd, lower, upper``.
    """
    _check_prob(ci_prob)
    factors, factor = _factor(fit, factor)
    if _is_em(fit):
        if draws:
            raise ValueError("draws=True needs a posterior; an EM fit has estimates and standard errors")
        rows, cols, groups, coefs = eb_rows(fit, factors, factor)
        est = fit.group_means[np.ix_(rows, cols)]
        se = np.sqrt(np.diagonal(fit.group_cov[np.ix_(rows, cols, cols)], axis1=1, axis2=2))
        return _shape(_long([est, se], groups, coefs, factor, ["estimate", "se"]), wide)
    g = dim_name(factor)
    name = effect_var(g)
    if name not in fit.posterior:
        raise ValueError(f"the posterior holds no draws of the '{factor}' group coefficients; sample with "
                         "keep_group_draws=True")
    da = fit.posterior[name].transpose("chain", "draw", g, coef_dim(g))
    if draws:
        return da
    summary = _summary(flat_draws(da), ci_prob)
    groups = [str(x) for x in da[g].values]
    coefs = [str(x) for x in da[coef_dim(g)].values]
    return _shape(_long([summary[c] for c in _SUMMARY], groups, coefs, factor, _SUMMARY), wide)


def coef(model, fit, factor=None, *, draws=False, wide=False, ci_prob=0.95):
    """Each group's coefficients, everything the model adds into them included.

    For the coefficient of the level-1 column ``x`` in group ``j``: the fixed effects of
    ``x`` and of its interactions with variables constant within the groups (level-2
    predictors, cross-level terms), at the group's values, plus the group's deviation, plus
    the deviations in ``x`` of the groups above ``j`` (a class's intercept includes its
    school's). Fixed effects of level-1 columns without a random coefficient are columns of
    their own, the same in every group, as lme4's ``coef`` shows them.

    Parameters
    ----------
    model : Model
        The model the fit is of (its rows tell which fixed effects enter which coefficient).
    fit : EMResult or xarray.DataTree
        An EM fit or a posterior (with its group draws kept).
    factor : str, optional
        The grouping factor; default the finest.
    draws : bool
        A posterior's draws, ``DataArray`` ``chain, draw, <group>, coef``.
    wide : bool
        One row per group, one column per coefficient (the estimates or posterior means).
    ci_prob : float
        Probability of the posterior intervals.

    Returns
    -------
    pandas.DataFrame
        Index ``(<factor>, coef)``; column ``estimate`` (EM) or ``mean, sd, lower, upper``. A
        group in which a slope's column is zero on every row cannot show the level-2 values
        its slope depends on: nan there.
    """
    model, fit = model_first(model, fit, "coef")
    check_result(model, fit, "the fit")
    _check_prob(ci_prob)
    factors, factor = _factor(fit, factor)
    k = factors.index(factor)
    names, fixed_maps, fixed_only, parent_maps = coef_parts(model, k)
    fixed_names = list(model.fixed_names)
    labels = [str(x) for x in (model.design.factor_labels or (model.design.group_labels,))[k]]
    columns = names + [fixed_names[f] for f in fixed_only]
    em = _is_em(fit)
    if em:
        if draws:
            raise ValueError("draws=True needs a posterior; an EM fit has estimates")
        a = np.array([fit.fixed[n] for n in fixed_names])[None]
        rows, cols, groups, coefs = eb_rows(fit, factors, factor)
        pos = pd.Index(groups).get_indexer(labels)
        own = fit.group_means[np.ix_(rows, cols)][pos][None]

        def parent(m):
            rows_m, cols_m, groups_m, _ = eb_rows(fit, factors, factors[m])
            labels_m = [str(x) for x in model.design.factor_labels[m]]
            return fit.group_means[np.ix_(rows_m, cols_m)][pd.Index(groups_m).get_indexer(labels_m)][None]
    else:
        a = flat_draws(fit.posterior[FIXED].sel({FIXED_DIM: fixed_names}).transpose("chain", "draw", FIXED_DIM))
        own = group_draws(fit, factor, labels, names)

        def parent(m):
            design = model.design
            return group_draws(fit, factors[m], [str(x) for x in design.factor_labels[m]], design.factor_coef_names[m])
    total = np.zeros((a.shape[0], len(labels), len(columns)))
    total[:, :, :len(names)] = own
    for f, kk, w in fixed_maps:
        total[:, :, kk] += a[:, f, None] * w[None, :]
    for j, f in enumerate(fixed_only):
        total[:, :, len(names) + j] = a[:, f, None]
    parents = {}
    for m, c, kk, w, up in parent_maps:
        if m not in parents:
            parents[m] = parent(m)
        total[:, :, kk] += parents[m][:, up, c] * w[None, :]
    if em:
        return _shape(_long([total[0]], labels, columns, factor, ["estimate"]), wide)
    if draws:
        import xarray as xr

        post = fit.posterior
        n_chain, n_draw = post.sizes["chain"], post.sizes["draw"]
        return xr.DataArray(total.reshape(n_chain, n_draw, len(labels), len(columns)),
                            dims=("chain", "draw", dim_name(factor), "coef"),
                            coords={"chain": post["chain"].values, "draw": post["draw"].values,
                                    dim_name(factor): labels, "coef": columns}, name="coef")
    summary = _summary(total, ci_prob)
    return _shape(_long([summary[c] for c in _SUMMARY], labels, columns, factor, _SUMMARY), wide)


def varcorr(fit, *, ci_prob=0.95):
    """The variance components as lme4's ``as.data.frame(VarCorr(fit))`` lays them out.

    One row per group SD (``var2`` empty), per correlation (``var1``, ``var2`` the pair) and
    for the residual (``grp`` ``"Residual"``; absent with known level-1 variances).

    Returns
    -------
    pandas.DataFrame
        Columns ``grp, var1, var2, vcov, sdcor``: the variance or covariance and the SD or
        correlation (EM estimates, or posterior means, with ``sdcor_lower``, ``sdcor_upper``,
        the equal-tailed posterior interval of the SD or correlation).
    """
    _check_prob(ci_prob)
    factors = _factors(fit)
    rows = []
    if _is_em(fit):
        single = factors[0] if len(factors) == 1 else None
        for name, sd in fit.sd.items():
            coef_name, _, grp = name.rpartition("|") if "|" in name else (name, "", single)
            rows.append({"grp": grp, "var1": coef_name, "var2": None, "vcov": sd * sd, "sdcor": sd})
        for key, r in fit.corr.items():
            pair, _, grp = key.rpartition("|") if "|" in key else (key, "", single)
            first, second = pair.split(",", 1)
            sd1 = fit.sd[first if single else f"{first}|{grp}"]
            sd2 = fit.sd[second if single else f"{second}|{grp}"]
            rows.append({"grp": grp, "var1": first, "var2": second, "vcov": r * sd1 * sd2, "sdcor": r})
        if np.isfinite(fit.sigma):
            rows.append({"grp": "Residual", "var1": None, "var2": None, "vcov": fit.sigma**2, "sdcor": fit.sigma})
        return pd.DataFrame(rows, columns=["grp", "var1", "var2", "vcov", "sdcor"])
    post = fit.posterior
    tail = (1.0 - ci_prob) / 2.0

    def row(grp, var1, var2, cov, sdcor):
        lower, upper = np.quantile(sdcor, [tail, 1.0 - tail])
        return {"grp": grp, "var1": var1, "var2": var2, "vcov": float(cov.mean()), "sdcor": float(sdcor.mean()),
                "sdcor_lower": float(lower), "sdcor_upper": float(upper)}

    for factor in factors:
        g = dim_name(factor)
        sd = post[sd_var(g)].transpose("chain", "draw", coef_dim(g))
        coefs = [str(x) for x in sd[coef_dim(g)].values]
        sd_draws = flat_draws(sd)
        for i, c in enumerate(coefs):
            rows.append(row(factor, c, None, sd_draws[:, i] ** 2, sd_draws[:, i]))
        if corr_var(g) in post:
            corr = post[corr_var(g)].transpose("chain", "draw", corr_pair_dim(g))
            for p, pair in enumerate(corr[corr_pair_dim(g)].values):
                first, second = str(pair).split(",", 1)
                r = flat_draws(corr)[:, p]
                cov = r * sd_draws[:, coefs.index(first)] * sd_draws[:, coefs.index(second)]
                rows.append(row(factor, first, second, cov, r))
    if SIGMA in post:
        s = flat_draws(post[SIGMA])
        rows.append(row("Residual", None, None, s**2, s))
    return pd.DataFrame(rows, columns=["grp", "var1", "var2", "vcov", "sdcor", "sdcor_lower", "sdcor_upper"])
