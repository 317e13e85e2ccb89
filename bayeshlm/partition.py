"""How the variance of the response splits over the levels, and the intraclass correlations, for any model.

For the rows' random design ``z_f`` of factor ``f`` (its columns of ``X``), the group-level
variance at those values is ``v_f(z) = z_f' T_f z_f``: the intercept's variance where the
model has only intercepts, a quadratic in a random slope's predictor where it has one. The
level-1 variance is ``sigma^2`` (on the latent scale of a binary or binomial model, the
variance of the logistic or standard normal error). A factor's share is ``v_f / total``;
its intraclass correlation, the correlation of two rows in the same group of ``f``, adds
the variances of ``f`` and of every coarser factor its groups sit in (nested), or is its
own share (crossed). With random slopes the variances depend on where they are taken:
``at`` gives predictor values; by default each ``v_f`` is averaged over the model's rows
(Johnson 2014, as Nakagawa, Johnson & Schielzeth 2017 define the random-slope variance of
an R^2 and ICC). docs/design.md, "Variance partition".
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bayeshlm.data import as_frame, evaluate_spec
from bayeshlm.family import LATENT_VARIANCE
from bayeshlm.model import refuse_variance_model
from bayeshlm.schema import SIGMA, coef_dim, corr_pair_dim, corr_var, dim_name, sd_var

__all__ = ["group_covariance", "variance_partition"]


def _factor_columns(model):
    """``[(factor, lo, hi, coefficient names)]`` of every grouping factor, finest first."""
    design = model.design
    factors = design.factors or ((design.factor,) if design.coef_names else ())
    sizes = design.factor_sizes or ((len(design.coef_names),) if design.coef_names else ())
    names = design.factor_coef_names or ((tuple(design.coef_names),) if design.coef_names else ())
    out, lo = [], 0
    for factor, size, coef_names in zip(factors, sizes, names, strict=True):
        out.append((factor, lo, lo + size, list(coef_names)))
        lo += size
    return out


def _design_at(model, at):
    """The random design ``(n_points, n_coef)`` at the predictor values of ``at`` (a dict or a data frame)."""
    design, spec = model.design, model.spec
    frame = pd.DataFrame({k: np.atleast_1d(v) for k, v in at.items()}) if isinstance(at, dict) else as_frame(at)
    blocks = []
    specs = iter(design.random_spec)
    for factor in design.factors or (design.factor,):
        n_bars = sum(1 for bar in spec.bars if bar.factor == factor)
        blocks += [evaluate_spec(next(specs), frame, f"the random-effect terms of '{factor}'") for _ in range(n_bars)]
    return np.hstack(blocks)


def _second_moments(model):
    """``E[z z']`` over the rows of the random design, in the user's units (from the rows, or the statistics)."""
    X = model.design.X
    if X is not None and X.shape[0]:
        return X.T @ X / X.shape[0]
    # a model from statistics alone: X_N = X M in the kernels' basis, so X'X = M^-T (X_N'X_N) M^-1
    stats, basis = model.stats, model.basis
    M_inv = basis.coef_matrix_inverse()
    return M_inv.T @ stats.XtX.sum(axis=0) @ M_inv / float(stats.n.sum())


def _level1_variance(model):
    if model.gaussian:
        return None  # sigma^2, from the fit
    link = model.link
    if link in LATENT_VARIANCE:
        return LATENT_VARIANCE[link]
    raise ValueError(f"a {model.family} model has no level-1 variance on its link scale to partition against; "
                     "its group variances are in varcorr(fit)")


def _partition(model, T, s2, Z):
    """Variances ``(n_draws, n_points, n_factors + 1)`` for covariances ``T`` (n_draws, d, d) and ``s2``."""
    parts = _factor_columns(model)
    out = np.empty((T.shape[0], Z.shape[0], len(parts) + 1))
    for f, (_, lo, hi, _) in enumerate(parts):
        z = Z[:, lo:hi]
        out[:, :, f] = np.einsum("pi,sij,pj->sp", z, T[:, lo:hi, lo:hi], z)
    out[:, :, -1] = s2[:, None]
    return out


def _table(model, variances):
    """Shares and ICCs from variances ``(..., n_factors + 1)``, as a frame per evaluation point."""
    parts = _factor_columns(model)
    total = variances.sum(axis=-1, keepdims=True)
    share = variances / total
    icc = np.empty_like(share)
    for f in range(len(parts)):
        icc[..., f] = share[..., f] if model.crossed else share[..., f:len(parts)].sum(axis=-1)
    icc[..., -1] = np.nan
    return share, icc


def group_covariance(model, fit):
    """``(T, s2)``: the group covariance ``(n_draws, d, d)`` over all the model's coefficients and ``sigma^2``.

    One "draw" for an EM fit (its estimates), every draw of a posterior (chains
    concatenated); coefficients of different factors or blocks are uncorrelated. ``s2`` is
    nan where the model has no sigma (known variances, a non-Gaussian level 1).
    """
    posterior = hasattr(fit, "posterior")
    parts = _factor_columns(model)
    d = len(model.coef_names)
    if not posterior:
        T = np.zeros((1, d, d))
        for factor, lo, _, names in parts:
            qualified = [n if len(parts) == 1 else f"{n}|{factor}" for n in names]
            for i, name in enumerate(qualified):
                T[0, lo + i, lo + i] = fit.sd[name] ** 2
            for key, r in fit.corr.items():
                pair, _, owner = key.rpartition("|") if "|" in key and len(parts) > 1 else (key, "", factor)
                if owner != factor:
                    continue
                first, second = pair.split(",", 1)
                i, j = lo + names.index(first), lo + names.index(second)
                T[0, i, j] = T[0, j, i] = r * np.sqrt(T[0, i, i] * T[0, j, j])
        s2 = np.array([fit.sigma**2])
    else:
        post = fit.posterior
        n = post.sizes["chain"] * post.sizes["draw"]
        T = np.zeros((n, d, d))
        for factor, lo, hi, names in parts:
            g = dim_name(factor)
            sd = post[sd_var(g)].transpose("chain", "draw", coef_dim(g)).values.reshape(n, hi - lo)
            T[:, np.arange(lo, hi), np.arange(lo, hi)] = sd * sd
            if corr_var(g) in post:
                corr = post[corr_var(g)].transpose("chain", "draw", corr_pair_dim(g)).values.reshape(n, -1)
                for m, pair in enumerate(post[corr_pair_dim(g)].values):
                    first, second = str(pair).split(",", 1)
                    i, j = lo + names.index(first), lo + names.index(second)
                    T[:, i, j] = T[:, j, i] = corr[:, m] * sd[:, i - lo] * sd[:, j - lo]
        s2 = post[SIGMA].values.reshape(n) ** 2 if SIGMA in post else np.full(n, np.nan)
    return T, s2


def variance_partition(model, fit, *, at=None, ci_prob=0.95):
    """The variance of each level, its share of the total, and each factor's intraclass correlation.

    Parameters
    ----------
    model : Model
        The model of the fit.
    fit : EMResult or xarray.DataTree
        An EM fit or a posterior.
    at : dict or pandas.DataFrame, optional
        Values of the random slopes' predictors (``{"days": [0, 4.5, 9]}``): one table per
        point. Default: each factor's variance averaged over the model's rows.
    ci_prob : float
        Probability of the posterior intervals of the ICC.

    Returns
    -------
    pandas.DataFrame
        Index ``level`` (the factors, finest first, then ``"Residual"``; with ``at``, the
        point's position first); columns ``variance``, ``share``, ``icc`` (EM), or the
        posterior means of those with ``icc_lower``, ``icc_upper``.
    """
    refuse_variance_model(model, "the variance partition")
    posterior = hasattr(fit, "posterior")
    fixed_s2 = _level1_variance(model)
    if model.gaussian and model.sigma_known:
        raise ValueError("with known level-1 variances the residual variance differs from row to row; the group "
                         "variances are in varcorr(fit)")
    parts = _factor_columns(model)
    if not parts:
        raise ValueError("the model has no grouping factor: all its variance is at level 1")
    T, s2 = group_covariance(model, fit)
    if fixed_s2 is not None:
        s2 = np.full(T.shape[0], fixed_s2)
    if at is None:  # the mean of z'Tz over the rows: tr(T E[zz'])
        S = _second_moments(model)
        variances = np.empty((T.shape[0], 1, len(parts) + 1))
        for f, (_, lo, hi, _) in enumerate(parts):
            variances[:, 0, f] = np.einsum("sij,ij->s", T[:, lo:hi, lo:hi], S[lo:hi, lo:hi])
        variances[:, 0, -1] = s2
        points = [None]
    else:
        Z = _design_at(model, at)
        variances = _partition(model, T, s2, Z)
        points = list(range(Z.shape[0]))
    share, icc = _table(model, variances)
    levels = [factor for factor, _, _, _ in parts] + ["Residual"]
    frames = []
    for k, point in enumerate(points):
        if not posterior:
            data = {"variance": variances[0, k], "share": share[0, k], "icc": icc[0, k]}
        else:
            tail = (1.0 - ci_prob) / 2.0
            lower, upper = np.quantile(icc[:, k], [tail, 1.0 - tail], axis=0)
            data = {"variance": variances[:, k].mean(axis=0), "share": share[:, k].mean(axis=0),
                    "icc": icc[:, k].mean(axis=0), "icc_lower": lower, "icc_upper": upper}
        frame = pd.DataFrame(data, index=pd.Index(levels, name="level"))
        frames.append(frame if point is None else pd.concat({point: frame}, names=["point"]))
    return frames[0] if at is None else pd.concat(frames)
