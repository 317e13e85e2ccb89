"""Reliabilities and shrinkage of the groups' own estimates, as distributions over the posterior.

For a group ``j`` of the finest factor with random design ``X_j`` (weights ``W_j``: the
inverse known variances, or 1), ``A_j = X_j'W_jX_j``, and the group's least-squares estimate
has sampling covariance ``sigma^2 A_j^-1``. Raudenbush & Bryk's reliability of coefficient
``k`` is ``lambda_jk = T_kk / (T_kk + sigma^2 [A_j^-1]_kk)`` (``tau^2 / (tau^2 + sigma^2 / n_j)``
for a random intercept; nan where ``A_j`` is singular). The empirical-Bayes estimate of the
group's coefficients is ``Lambda_j ols_j + (I - Lambda_j) implied_j`` with the matrix
``Lambda_j = T (T + sigma^2 A_j^-1)^-1 = T (A_j T + sigma^2 I)^-1 A_j`` (the second form
holds for a singular ``A_j`` too); its diagonal complement ``1 - [Lambda_j]_kk`` is the
shrinkage of coefficient ``k`` towards what the model implies. Both are computed at the EM
estimates, or at every posterior draw, which gives their distributions, not the plug-in
values. docs/design.md, "Reliability".
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bayeshlm.partition import group_covariance

__all__ = ["reliability"]


def _finest(model):
    design = model.design
    if not design.coef_names:
        raise ValueError("the model has no grouping factor: there are no group estimates to be reliable")
    if design.crossed:
        raise ValueError("with crossed factors a group's rows are shared with the groups of the other factors: "
                         "no group has a least-squares estimate of its own")
    d1 = design.factor_sizes[0] if design.factor_sizes else len(design.coef_names)
    names = list(design.factor_coef_names[0] if design.factor_coef_names else design.coef_names)
    factor = design.factors[0] if design.factors else design.factor
    return factor, d1, names


def _cross_products(model, d1):
    """``A_j = X_j'W_jX_j`` ``(n_groups, d1, d1)`` and each group's rows, from the design in the user's units."""
    design = model.design
    if design.X is None or design.X.shape[0] == 0:
        raise ValueError("reliability needs the model's rows; a model built from statistics alone (hlm_stats) has "
                         "none")
    X = design.X[:, :d1]
    w = np.ones(X.shape[0]) if design.row_weights is None else design.row_weights
    n_groups = len(design.group_labels)
    A = np.zeros((n_groups, d1, d1))
    np.add.at(A, design.group_idx, w[:, None, None] * X[:, :, None] * X[:, None, :])
    return A, np.bincount(design.group_idx, minlength=n_groups)


def _both(T, s2, A):
    """``(lambda, shrinkage)`` ``(n_draws, n_groups, d1)`` for covariances ``T`` and level-1 variances ``s2``."""
    n_draws, d1 = T.shape[0], T.shape[1]
    eye = np.eye(d1)
    ok = np.linalg.cond(A) < 1e12
    A_inv = np.full_like(A, np.nan)
    A_inv[ok] = np.linalg.inv(A[ok])
    T_diag = np.diagonal(T, axis1=1, axis2=2)  # (S, d1)
    v = s2[:, None, None] * np.diagonal(A_inv, axis1=1, axis2=2)[None]  # (S, J, d1)
    with np.errstate(invalid="ignore", divide="ignore"):
        lam = T_diag[:, None, :] / (T_diag[:, None, :] + v)
    # Lambda = T (A T + s2 I)^-1 A, every draw and group
    M = np.einsum("jab,sbc->sjac", A, T) + s2[:, None, None, None] * eye
    Lam = np.einsum("sab,sjbc->sjac", T, np.linalg.solve(M, np.broadcast_to(A, (n_draws, *A.shape))))
    return lam, 1.0 - np.diagonal(Lam, axis1=2, axis2=3)


def reliability(model, fit, *, average=False, ci_prob=0.95):
    """Each finest group's reliability and shrinkage of each random coefficient (see the module's text).

    Parameters
    ----------
    model : Model
        The model of the fit (its rows give each group's ``X_j'W_jX_j``).
    fit : EMResult or xarray.DataTree
        An EM fit (the plug-in values HLM prints) or a posterior (their distributions).
    average : bool
        Average over the groups, per coefficient (HLM's summary line), instead of per group.
    ci_prob : float
        Probability of the posterior intervals.

    Returns
    -------
    pandas.DataFrame
        Index ``(<factor>, coef)`` (or ``coef`` with ``average``); columns ``n`` (rows; not
        with ``average``), ``reliability``, ``shrinkage`` (EM), or for the posterior
        ``reliability``, ``reliability_lower``, ``reliability_upper``, ``shrinkage``,
        ``shrinkage_lower``, ``shrinkage_upper`` (means and equal-tailed intervals).
    """
    from bayeshlm.model import check_result, model_first, refuse_variance_model

    model, fit = model_first(model, fit, "reliability")
    check_result(model, fit, "the fit")
    refuse_variance_model(model, "reliability")
    factor, d1, names = _finest(model)
    if not model.gaussian:
        raise ValueError(f"a {model.family} model's groups have no least-squares estimate on the link scale to be "
                         "reliable")
    T, s2 = group_covariance(model, fit)
    if model.sigma_known:
        s2 = np.ones(T.shape[0])
    A, n_rows = _cross_products(model, d1)
    lam, shrink = _both(T[:, :d1, :d1], s2, A)
    if average:
        lam, shrink = np.nanmean(lam, axis=1, keepdims=True), np.nanmean(shrink, axis=1, keepdims=True)
        index = pd.Index(names, name="coef")
    else:
        labels = [str(x) for x in model.design.group_labels]
        index = pd.MultiIndex.from_product([labels, names], names=[factor, "coef"])
    if not hasattr(fit, "posterior"):
        data = {"reliability": lam[0].reshape(-1), "shrinkage": shrink[0].reshape(-1)}
    else:
        tail = (1.0 - ci_prob) / 2.0
        data = {}
        for name, values in (("reliability", lam), ("shrinkage", shrink)):
            flat = values.reshape(values.shape[0], -1)
            lower, upper = np.nanquantile(flat, [tail, 1.0 - tail], axis=0)
            data.update({name: np.nanmean(flat, axis=0), f"{name}_lower": lower, f"{name}_upper": upper})
    table = pd.DataFrame(data, index=index)
    if not average:
        table.insert(0, "n", np.repeat(n_rows, d1))
    return table
