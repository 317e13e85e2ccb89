"""Predictions from a posterior: new rows, existing and new groups, predictive groups for ArviZ.

A prediction for row ``i`` is ``f_i' a + sum_k x_ik' b_k[g_k(i)]`` (fixed part plus each
grouping factor's coefficients of the row's group) plus the formula's offsets, plus level-1
noise for predictive draws (SD ``sigma / sqrt(w_i)`` with precision weights; with ``sigma=``
the row's SD from the sigma formula evaluated on it, Student-t noise for ``family="student"``);
for a non-Gaussian level 1 that is the linear predictor, whose inverse link is the probability
or rate, and predictive draws are binomial or Poisson.
A group the model was fitted on uses its own posterior draws; a group it has not seen draws
its coefficients from the hierarchy, ``b ~ N(0, T_k)`` with the ``T_k`` of the same posterior
draw, so its predictive spread includes the between-group variance (and likewise its level-1
SD, with a ``(1 | g)`` term in ``sigma=``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from bayeshlm.data import (
    DataError,
    as_frame,
    check_columns,
    check_new_values,
    column_roles,
    evaluate_spec,
    group_codes,
    known_array,
    obs_var_from,
    precision_weights_from,
)
from bayeshlm.level1 import fitted_row_sd, has_level1_model, new_row_sd, standard_noise
from bayeshlm.model import Model, check_result, model_first, refuse_non_gaussian
from bayeshlm.results import corr_pairs, covariance_draws, factor_parts, flat_draws, group_stats_held
from bayeshlm.schema import (
    FIXED,
    SIGMA,
    coef_dim,
    corr_pair_dim,
    corr_pair_label,
    corr_var,
    dim_name,
    effect_var,
    sd_var,
)
from samplers.theta import sd_corr

__all__ = ["group_log_likelihood", "loo", "marginal_group_log_likelihood", "posterior_predictive", "predict",
           "predictive_draws", "prior_predictive", "response_mean"]

_KINDS = ("predictive", "mean", "link")
_NEW_GROUPS = ("sample", "population", "raise")


_NO_GROUP = "\x00no group"  # the label of a row whose grouping columns are absent: new to every fit


def _new_rows(model, data, known_sd, known_var, population=False, weights=None):
    """Fixed and per-factor random designs, per-factor group labels and level-1 variances of new rows.

    The last are the known variances, or with ``weights`` (precision weights of a model whose
    sigma is estimated) ``1 / weights``, the variance of each row in units of ``sigma^2``;
    None for rows of weight 1.

    With ``population`` (``new_groups="population"``) the grouping columns may be left out:
    a factor whose columns are absent gives every row a group new to the fit.
    """
    spec = model.spec
    frame = as_frame(data)
    if len(frame) == 0:
        raise DataError("the new data has no rows")
    roles = column_roles(spec)
    roles.pop(spec.response)
    if population:
        roles = {name: role for name, role in roles.items() if role != "the grouping factor" or name in frame}
    check_columns(frame, roles)
    check_new_values(frame, roles, "predictions need every column the model uses")
    used = frame[list(roles)].reset_index(drop=True)
    design = model.design
    F = evaluate_spec(design.fixed_spec, used, "the fixed part")
    blocks, labels = [], []
    specs = iter(design.random_spec)
    for factor in design.factors:
        n_bars = sum(1 for bar in spec.bars if bar.factor == factor)
        mats = [evaluate_spec(next(specs), used, f"the random-effect terms of '{factor}'") for _ in range(n_bars)]
        blocks.append(np.hstack(mats))
        if not all(column in used for column in factor.split(":")):  # population: no group of this factor
            labels.append(np.full(len(used), _NO_GROUP, dtype=object))
            continue
        codes, uniques = group_codes(used, factor.split(":"))
        labels.append(np.asarray(uniques, dtype=object)[codes])
    _check_parents(model, labels)
    obs_var = None
    if not (model.gaussian or has_level1_model(model)):  # binomial or Poisson
        if known_sd is not None or known_var is not None:
            raise ValueError(f"known_sd / known_var are for Gaussian models; this one is {model.family}")
        if weights is not None:
            raise ValueError(f"weights= (precision weights of the level-1 variance) are for Gaussian models; this "
                             f"one is {model.family}: its new rows' trials are given with trials=")
        return F, blocks, labels, None, frame.index
    if weights is not None:
        if model.sigma_known:
            raise ValueError("weights= are for models whose level-1 variance is estimated; this model's variances "
                             "are known: give the new rows' known_sd or known_var")
        name = weights if isinstance(weights, str) else "weights"
        if isinstance(weights, str):
            check_columns(frame, {weights: "weights"})
        arr = frame[weights].to_numpy(dtype=np.float64) if isinstance(weights, str) else known_array(
            weights, "weights", len(frame))
        return F, blocks, labels, 1.0 / precision_weights_from(arr, name, np.arange(len(frame))), frame.index
    if (known_sd is not None or known_var is not None) and not model.sigma_known:
        raise ValueError("known_sd / known_var are for models with known level-1 variances; this model "
                         "estimates sigma")
    if known_sd is not None or known_var is not None:
        name, values = ("known_sd", known_sd) if known_sd is not None else ("known_var", known_var)
        arr = frame[values].to_numpy(dtype=np.float64) if isinstance(values, str) else known_array(
            values, name, len(frame))
        obs_var = obs_var_from(arr, name)
    return F, blocks, labels, obs_var, frame.index


def _check_parents(model, labels):
    """A known group of a finer factor must sit in the coarser group it sat in when fitted."""
    design = model.design
    if design.crossed:  # each factor's groups are found by their own labels
        return
    for k in range(len(design.factors) - 1):
        fine = pd.Index(np.asarray(design.factor_labels[k], dtype=str))
        coarse = np.asarray(design.factor_labels[k + 1], dtype=str)
        pos = fine.get_indexer(np.asarray(labels[k], dtype=str))
        known = pos >= 0
        expected = coarse[design.parents[k][pos[known]]]
        given = np.asarray(labels[k + 1], dtype=str)[known]
        bad = np.flatnonzero(expected != given)
        if bad.size:
            i = np.flatnonzero(known)[bad[0]]
            raise DataError(f"row {i} of the new data puts '{design.factors[k]}' group {str(labels[k][i])!r} "
                            f"in '{design.factors[k + 1]}' group {str(given[bad[0]])!r}, but in the fitted data "
                            f"it lies in {str(expected[bad[0]])!r}")


def _cov_chol(sd, corr, lo, hi):
    """Cholesky factors (S, d, d) of each draw's covariance of coefficients ``lo..hi-1`` (one factor)."""
    T = corr[:, lo:hi, lo:hi] * sd[:, lo:hi, None] * sd[:, None, lo:hi]
    scale = np.maximum(np.trace(T, axis1=1, axis2=2), np.finfo(float).tiny)  # SDs of exactly 0 included
    jitter = 1e-12 * scale[:, None, None] * np.eye(hi - lo)
    return np.linalg.cholesky(T + jitter)


def _effects_for(post, model, k, factor, labels, chol, new_groups, rng):
    """Coefficients (n_draws, n_rows, n_coef_k) of factor ``k`` for rows with group ``labels``.

    ``chol`` holds the Cholesky factors of the factor's covariance per draw, for new groups.
    """
    g = dim_name(factor)
    name = effect_var(g)
    unique, inverse = np.unique(np.asarray(labels, dtype=str), return_inverse=True)
    fitted = pd.Index(np.asarray(model.design.factor_labels[k], dtype=str)).get_indexer(unique) >= 0
    if name not in post and fitted.any():
        raise ValueError(f"the posterior holds no draws of the '{factor}' group coefficients "
                         "(sample(keep_group_draws=False)); predictions for its groups need them: sample "
                         "again with keep_group_draws=True")
    d_k = chol.shape[1]
    effect = flat_draws(post[name]) if name in post else np.zeros((chol.shape[0], 0, d_k))  # (S, n_kept, d_k)
    known = pd.Index(post[g].values.astype(str)) if name in post else pd.Index([], dtype=str)
    pos = known.get_indexer(unique)
    missing = pos < 0
    not_kept = unique[missing & fitted]
    if not_kept.size:
        raise ValueError(f"the draws of '{factor}' group {str(not_kept[0])!r} were not kept "
                         "(sample(keep_group_draws=n) keeps the first n groups); sample again with "
                         "keep_group_draws=True to predict for it")
    if missing.any() and new_groups == "raise":
        raise ValueError(f"'{factor}' group {str(unique[missing][0])!r} is not in the fitted data "
                         f"({int(missing.sum())} new groups); pass new_groups='sample' to draw their "
                         "coefficients from the hierarchy or 'population' for the population-level prediction")
    S = effect.shape[0]
    per_unique = np.zeros((S, len(unique), d_k))
    per_unique[:, ~missing] = effect[:, pos[~missing]]
    n_new = int(missing.sum())
    if n_new and new_groups == "sample":
        z = rng.standard_normal((S, n_new, d_k))
        per_unique[:, missing] = np.einsum("sij,snj->sni", chol, z)
    return per_unique[:, inverse]


def _linear_draws(model, posterior, F, blocks, labels, new_groups, rng, group_idx=None):
    """Draws (S, n_rows) of the expected response."""
    post = posterior.posterior
    mean = flat_draws(post[FIXED]) @ F.T
    parts = factor_parts(model)
    if parts and group_idx is None:  # new rows may hold new groups, drawn with the covariances
        sd, corr = covariance_draws(posterior, model)
    for k, (factor, (lo, hi), _, _) in enumerate(parts):
        X_k = blocks[k]
        if group_idx is not None:  # the fitted rows: positions are the model's own group codes
            b = _every_group_draws(post, model, k, factor, "replicated data")[:, group_idx[k]]
        else:
            b = _effects_for(post, model, k, factor, labels[k], _cov_chol(sd, corr, lo, hi), new_groups, rng)
        mean += np.einsum("snj,nj->sn", b, X_k)
    return mean


def predictive_draws(model, posterior, F, blocks, labels, variance, offset, rng):
    """Predictive draws (S, n_rows) of a Gaussian response at rows given by their designs.

    What :func:`predict` draws with ``kind="predictive"`` and ``new_groups="sample"``, for rows
    already evaluated: ``F`` their fixed design, ``blocks`` and ``labels`` each grouping factor's
    random design and group labels (a label the model was not fitted on is a new group, its
    coefficients drawn from ``N(0, T)`` of each draw, shared by its rows), ``variance`` each
    row's level-1 variance, known or in units of ``sigma^2`` (None: ``sigma^2``), ``offset``
    their offsets (or None). Used by :func:`bayeshlm.impute.impute`.
    """
    mean = _linear_draws(model, posterior, F, blocks, labels, "sample", rng)
    if offset is not None:
        mean = mean + offset
    return mean + _noise_sd(model, posterior, variance, F.shape[0]) * rng.standard_normal(mean.shape)


def _every_group_draws(post, model, k, factor, purpose):
    """Flat draws (S, n_groups, n_coef_k) of every group of factor ``k``; raises naming ``purpose`` if not kept."""
    g = dim_name(factor)
    name = effect_var(g)
    if name not in post or post.sizes[g] != len(model.design.factor_labels[k]):
        raise ValueError(f"the posterior does not hold the draws of every '{factor}' group, which {purpose} "
                         "need: sample with keep_group_draws=True")
    return flat_draws(post[name])


def _noise_sd(model, posterior, obs_var, n_rows):
    """Level-1 SDs (S, n_rows) or (S, 1).

    ``obs_var``: the known variances, or for a model whose sigma is estimated each row's
    variance in units of ``sigma^2`` (``1 / w``, precision weights; None for weight 1).
    """
    if model.sigma_known:
        if obs_var is None:
            raise ValueError("the model's level-1 variances are known per observation: give known_sd or "
                             "known_var for the new rows to draw predictions (or use kind='mean')")
        return np.sqrt(obs_var)[None, :]
    sigma = flat_draws(posterior.posterior[SIGMA])[:, None]
    return sigma if obs_var is None else sigma * np.sqrt(obs_var)[None, :]


def _new_offset(model, data, n_rows):
    """The ``offset(...)`` terms of the model's formula on new rows (zeros without any)."""
    from bayeshlm.family import split_offset

    _, offset = split_offset(model.spec.formula, as_frame(data).reset_index(drop=True))
    if offset is None:
        return np.zeros(n_rows)
    bad = ~np.isfinite(offset)
    if bad.any():
        raise DataError(f"the offset is missing or not finite in {int(bad.sum())} of the new rows, e.g. at row "
                        f"{int(np.flatnonzero(bad)[0])}")
    return offset


def _new_trials(model, data, trials, n_rows):
    """Trials of new rows for a binomial model's predictive draws: ``trials`` (a column or values), default 1."""
    if trials is None:
        return np.ones(n_rows, dtype=np.int64)
    if model.family == "poisson":
        raise ValueError("trials= is for the binomial families")
    values = as_frame(data)[trials].to_numpy() if isinstance(trials, str) else np.asarray(trials)
    values = np.broadcast_to(np.asarray(values, dtype=np.float64), (n_rows,))
    if not np.all(np.isfinite(values)) or np.any(values < 0) or np.any(values != np.round(values)):
        raise DataError("trials must be whole numbers >= 0 for every new row")
    return values.astype(np.int64)


def response_mean(model, eta):
    """The inverse link: probability (binomial families) or rate (Poisson) from the linear predictor."""
    if model.family == "poisson":
        return np.exp(eta)
    if model.link == "probit":
        from scipy.special import ndtr

        return ndtr(eta)
    return 0.5 * (1.0 + np.tanh(0.5 * eta))  # the logistic function, without overflow


def _family_draws(model, mean, trials, rng):
    """Predictive draws of a non-Gaussian response given its mean per trial (probability) or rate."""
    if model.family == "poisson":
        return rng.poisson(mean).astype(np.float64)
    n = np.broadcast_to(np.asarray(trials).astype(np.int64), mean.shape)
    return rng.binomial(n, np.clip(mean, 0.0, 1.0)).astype(np.float64)


def predict(model, posterior, data, *, kind="predictive", new_groups="sample", seed=None,
            known_sd=None, known_var=None, trials=None, weights=None):
    """Posterior predictions for new rows.

    Parameters
    ----------
    model : Model
        The model the posterior was drawn from.
    posterior : xarray.DataTree
        From :func:`bayeshlm.sample`, with the group coefficients kept.
    data : pandas.DataFrame or mapping
        New rows with every column the model uses except the response. Group labels the
        model was fitted on use their own coefficients; new labels are new groups.
    kind : {"predictive", "mean", "link"}
        ``"predictive"``: draws of a new observation (expected value plus level-1 noise; for a
        binomial model the number of successes in ``trials``, for a Poisson model a count);
        ``"mean"``: draws of the expected value (for a binomial model the probability of a
        success, for a Poisson model the rate); ``"link"``: draws of the linear predictor
        (the same as ``"mean"`` for a Gaussian model). ``offset(...)`` terms of the formula
        are evaluated on the new rows and added (for every family and kind).
    new_groups : {"sample", "population", "raise"}
        For groups not in the fitted data: draw their coefficients from the hierarchy
        (``N(0, T)`` per posterior draw; the default), set them to zero (the
        population-average prediction, without the between-group spread), or raise. With
        ``"population"`` the grouping columns may be left out of ``data``: rows without them
        belong to no fitted group. A ``(1 | g)`` term of ``sigma=`` is treated alike for
        ``kind="predictive"``: a group of ``g`` the model was fitted on has its drawn level-1
        SD, a new one ``sigma exp(e)`` with ``e ~ Normal(0, omega^2)`` drawn per posterior draw
        (``omega`` the draw's ``sigma_group_sd``; ``"sample"``), ``e = 0`` (the SD of a typical
        group; ``"population"``), or an error (``"raise"``).
    seed : int or numpy.random.Generator, optional
        For the noise and the new groups' coefficients.
    known_sd, known_var : str or array_like, optional
        The new rows' known level-1 SDs or variances (models with known variances and
        ``kind="predictive"`` only).
    trials : str or array_like, optional
        A binomial model's trials for the new rows' predictive draws (a column of ``data``
        or values; default 1: a success or a failure).
    weights : str or array_like, optional
        Precision weights of the new rows (a column of ``data`` or values) for the noise of
        ``kind="predictive"``: a new row's level-1 SD is ``sigma / sqrt(w)``. Default: weight
        1 for every new row (the level-1 SD is sigma), whether or not the model was fitted
        with ``weights=``; the means do not depend on it. Gaussian and Student-t models whose
        sigma is estimated only. With ``sigma="~ z"`` a new row's SD is
        ``sigma exp(z' delta / 2) / sqrt(w)``, its ``z`` the sigma formula evaluated on it as on
        the fitted rows (their category levels: a level the fit did not see raises, naming
        the column, and so does a missing value).

    Returns
    -------
    xarray.DataArray
        Named like the response, dimensions ``(chain, draw, obs)``; ``obs`` holds the index of
        ``data``.

    Examples
    --------
    >>> new = pd.DataFrame({"days": [0, 9], "subject": ["308", "a new subject"]})
    >>> pred = predict(model, post, new)  # doctest: +SKIP
    >>> pred.mean(("chain", "draw"))  # doctest: +SKIP
    """
    check_result(model, posterior, "the posterior")
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
    if new_groups not in _NEW_GROUPS:
        raise ValueError(f"new_groups must be one of {_NEW_GROUPS}, got {new_groups!r}")
    rng = np.random.default_rng(seed)
    F, blocks, labels, obs_var, index = _new_rows(model, data, known_sd, known_var, new_groups == "population",
                                                  weights)
    mean = _linear_draws(model, posterior, F, blocks, labels, new_groups, rng)
    scaled = has_level1_model(model)
    if (model.gaussian or scaled) and model.offset is not None:  # the response's scale: the offset added back
        mean = mean + _new_offset(model, data, len(index))
    if scaled:
        if trials is not None:
            raise ValueError("trials= is for the binomial families")
        if kind == "predictive" and model.variance_design is not None:  # each row's SD from the sigma formula
            row_weights = None if obs_var is None else 1.0 / obs_var
            sd = new_row_sd(model, posterior, data, row_weights, new_groups, rng)
            mean = mean + sd * standard_noise(model, posterior, mean.shape, rng)
        elif kind == "predictive":
            mean = mean + (_noise_sd(model, posterior, obs_var, len(index))
                           * standard_noise(model, posterior, mean.shape, rng))
    elif not model.gaussian:
        n_trials = _new_trials(model, data, trials, len(index)) if kind == "predictive" else None
        mean = mean + _new_offset(model, data, len(index))
        if kind != "link":
            mean = response_mean(model, mean)
        if kind == "predictive":
            mean = _family_draws(model, mean, n_trials, rng)
    elif trials is not None:
        raise ValueError("trials= is for the binomial families")
    elif kind == "predictive":
        mean = mean + _noise_sd(model, posterior, obs_var, len(index)) * rng.standard_normal(mean.shape)
    return _as_array(posterior, mean, model.spec.response, np.asarray(index))


def _as_array(posterior, flat, name, obs):
    post = posterior.posterior
    shape = (post.sizes["chain"], post.sizes["draw"], flat.shape[1])
    return xr.DataArray(flat.reshape(shape), dims=("chain", "draw", "obs"), name=name,
                        coords={"chain": post["chain"].values, "draw": post["draw"].values, "obs": obs})


def _with_group(tree, name, dataset):
    out = tree.copy()
    out[name] = xr.DataTree(dataset)
    return out


def posterior_predictive(model, posterior, *, seed=None):
    """The posterior with a ``posterior_predictive`` group: replicated data for the fitted rows.

    Each draw replicates the response of every row from that draw's fixed effects, its
    groups' coefficients and level-1 SD (the known SDs when they are known, ``sigma /
    sqrt(w_i)`` with precision weights; for a binomial model the successes in the row's
    trials, for a Poisson model a count), with the formula's offset added, the layout of
    ``observed_data`` (dimension ``obs``). Used by posterior predictive checks
    (:func:`bayeshlm.plots.plot_ppc`, ``arviz_plots.plot_ppc_dist``).

    Returns
    -------
    xarray.DataTree
        A copy of ``posterior`` with the group added (replacing one already there).
    """
    check_result(model, posterior, "the posterior")
    if not model.rows_held:
        raise ValueError("replicated data need the model's rows; a model from hlm_stats does not keep "
                         "them: compile it with bayeshlm.hlm")
    design = model.design
    rng = np.random.default_rng(seed)
    blocks = [design.X[:, lo:hi] for _, (lo, hi), _, _ in factor_parts(model)]
    idx = list(design.factor_idx) if design.factors else []
    mean = _linear_draws(model, posterior, design.F, blocks, None, "raise", rng, group_idx=idx)
    if has_level1_model(model):  # each row's own SD at each draw; Student-t errors
        if design.offset is not None:
            mean = mean + design.offset
        y_rep = mean + fitted_row_sd(model, posterior) * standard_noise(model, posterior, mean.shape, rng)
    elif model.gaussian:
        variance = design.obs_var if model.sigma_known else (None if design.weights is None else 1.0 / design.weights)
        if design.offset is not None:
            mean = mean + design.offset
        y_rep = mean + _noise_sd(model, posterior, variance, model.n_obs) * rng.standard_normal(mean.shape)
    else:  # successes in each row's trials, or a count
        offset = model.offset if model.offset is not None else 0.0
        y_rep = _family_draws(model, response_mean(model, mean + offset), model.trials, rng)
    arr = _as_array(posterior, y_rep, model.spec.response, np.arange(model.n_obs))
    return _with_group(posterior, "posterior_predictive", arr.to_dataset())


def prior_predictive(model, draws=500, *, seed=None):
    """Draws from the prior and data sets simulated from them, for prior predictive checks.

    Every parameter is drawn from the prior the model uses (:attr:`Model.prior_spec`;
    improper priors, such as a flat prior on a fixed effect, cannot be drawn from and raise),
    the group coefficients from the hierarchy, and a response for every fitted row.

    Returns
    -------
    xarray.DataTree
        Groups ``prior`` (the parameters, named as in the posterior, one chain),
        ``prior_predictive`` (the response, dimension ``obs``) and ``observed_data``.
    """
    from bayeshlm.prior_draws import draw_from_prior, simulate_response

    if not model.rows_held:
        raise ValueError("prior predictive data need the model's rows; a model from hlm_stats does not "
                         "keep them: compile it with bayeshlm.hlm")
    rng = np.random.default_rng(seed)
    params = [draw_from_prior(model, rng) for _ in range(draws)]
    y = np.stack([simulate_response(model, p, rng) for p in params])
    if model.gaussian and model.design.offset is not None:  # simulated as y - offset, as the design holds it
        y = y + model.design.offset
    prior = {"fixed": (("chain", "draw", "fixed_term"), np.stack([p["fixed"] for p in params])[None])}
    coords = {"chain": [0], "draw": np.arange(draws), "fixed_term": list(model.fixed_names),
              "obs": np.arange(model.n_obs)}
    if not model.sigma_known:
        prior["sigma"] = (("chain", "draw"), np.array([p["sigma"] for p in params])[None])
    st = model.structure
    for k, (factor, (lo, hi), group_labels, names) in enumerate(factor_parts(model)):
        g = dim_name(factor)
        coords[coef_dim(g)] = list(names)
        coords[g] = np.asarray(group_labels, dtype=str)
        prior[sd_var(g)] = (("chain", "draw", coef_dim(g)), np.stack([p["sd"][lo:hi] for p in params])[None])
        pairs = corr_pairs(model, lo, hi)
        if pairs:
            coords[corr_pair_dim(g)] = [corr_pair_label(names[j - lo], names[i - lo]) for i, j in pairs]
            prior[corr_var(g)] = (("chain", "draw", corr_pair_dim(g)),
                                  np.array([[p["corr"][i, j] for i, j in pairs] for p in params])[None])
        rows = slice(0, model.n_groups) if len(factor_parts(model)) == 1 else slice(
            int(st.node_ptr[k]), int(st.node_ptr[k + 1]))
        prior[effect_var(g)] = ((("chain", "draw", g, coef_dim(g))),
                                np.stack([p["b"][rows, lo:hi] for p in params])[None])
    ds_prior = xr.Dataset(prior, coords={k: v for k, v in coords.items() if k != "obs"})
    y_name = model.spec.response
    ds_pp = xr.Dataset({y_name: (("chain", "draw", "obs"), y[None])},
                       coords={"chain": [0], "draw": np.arange(draws), "obs": coords["obs"]})
    ds_obs = xr.Dataset({y_name: (("obs",), model.design.response_values)}, coords={"obs": coords["obs"]})
    return xr.DataTree.from_dict({"prior": ds_prior, "prior_predictive": ds_pp, "observed_data": ds_obs})



def _residual_sums(model, posterior, lo, hi, draws, w, member, own=0):
    """Per draw and group of factor ``own``: ``r'Wr`` and ``X'Wr`` of the residual without the group's own coefficients.

    The residual removes the fixed part and every other factor's coefficients of that draw
    (the coarser ones for nested factors, where ``own`` is the finest);
    ``w`` are the row weights and ``member`` the (rows x groups) indicator matrix.
    """
    design = model.design
    post = posterior.posterior
    a = flat_draws(post[FIXED])[draws]
    R = design.y[None, :] - a @ design.F.T
    for k, (factor, (klo, khi), _, _) in enumerate(factor_parts(model)):
        if k == own:
            continue
        b = _every_group_draws(post, model, k, factor, "the likelihood of the finer groups")[draws]
        R -= np.einsum("snj,nj->sn", b[:, design.factor_idx[k]], design.X[:, klo:khi])
    Rw = R * w
    rwr = np.asarray((Rw * R) @ member)
    xwr = np.stack([np.asarray((Rw * design.X[:, c]) @ member) for c in range(lo, hi)], axis=-1)
    return rwr, xwr


def _residual_sums_from_stats(model, posterior, lo, hi, draws, own=0):
    """:func:`_residual_sums` from each group's statistics, in the kernels' basis: no row is read.

    With ``a`` the fixed effects and ``v_j`` finest group ``j``'s coefficient vector holding its
    ancestors' coefficients and zeros for its own (all in the statistics' basis), the residual
    ``r_j = y_j - F_j a - X_j v_j`` has ``r'Wr`` the quadratic form of
    :func:`samplers.loglik.group_loglik_stats` and ``X_own'W r = X_own'Wy - X_own'WF a -
    X_own'WX v`` (docs/design.md, "Per-group log-likelihood"). For crossed factors the same
    holds per cell, ``v_c`` holding the other factors' coefficients, and the sums are then
    added up over the cells of each group of factor ``own``.
    """
    design, basis, st = model.design, model.basis, model.stats
    post = posterior.posterior
    L, t = basis.fixed_to_user()
    a = np.linalg.solve(L, (flat_draws(post[FIXED])[draws] - t).T).T  # (S, p), the kernels' basis
    rwr = (st.yty_g[None, :] - 2.0 * a @ st.Fty_g.T
           + np.einsum("sp,gpq,sq->sg", a, st.FtF_g, a, optimize=True))
    xwr = st.Xty[None, :, lo:hi] - np.einsum("gkq,sq->sgk", st.XtF[:, lo:hi], a, optimize=True)
    parts = factor_parts(model)
    if len(parts) > 1:
        v = np.zeros((len(draws), st.n.shape[0], st.Xty.shape[1]))
        anc = np.arange(st.n.shape[0])
        for k, (factor, (klo, khi), _, _) in enumerate(parts):
            if design.crossed:
                anc = design.cell_codes[:, k]
            elif k:
                anc = design.parents[k - 1][anc]
            if k == own:
                continue
            b = _every_group_draws(post, model, k, factor, "the likelihood of the groups left out")[draws]
            v[:, :, klo:khi] = b[:, anc]
        v = v @ (basis.coef_matrix_inverse() / basis.y_scale).T
        rwr += (-2.0 * np.einsum("sgk,gk->sg", v, st.Xty) + 2.0 * np.einsum("sgk,gkq,sq->sg", v, st.XtF, a,
                                                                             optimize=True)
                + np.einsum("sgk,gkm,sgm->sg", v, st.XtX, v, optimize=True))
        xwr -= np.einsum("gkm,sgm->sgk", st.XtX[:, lo:hi], v, optimize=True)
    if design.crossed:  # from the cells to the groups of the factor left out
        rwr, xwr = _by_group(rwr, design.cell_codes[:, own], axis=1), _by_group(xwr, design.cell_codes[:, own], axis=1)
    return np.maximum(rwr, 0.0), xwr


def _by_group(values, member, axis=0):
    """Sums of ``values`` along ``axis`` over the entries of each group (``member`` their group codes)."""
    values = np.moveaxis(values, axis, 0)
    out = np.zeros((int(member.max()) + 1, *values.shape[1:]))
    np.add.at(out, member, values)
    return np.moveaxis(out, 0, axis)


def _nested_group_log_likelihood(model, posterior, own, chunk=None):
    """Log-likelihood of each group of nested factor ``own``, its and its finer groups' coefficients integrated out.

    The finer levels are integrated one at a time, finest first (docs/design.md, "Leaving
    out groups at any level"): each finest group's rows give the precision-weighted sums
    ``P = X'WX / s2``, ``p = X'Wr / s2``, ``q = r'Wr / s2`` and ``log|V| = n log s2 - sum log w``
    over the random columns of the factors up to ``own``, ``r`` the residual of the fixed
    part and of the coarser factors' draws; integrating a block with ``T = LL'`` is the
    update ``M = I + L'P_cc L``, ``G = L M^-1 L'``, ``P -= P_.c G P_c.``, ``p -= P_.c G p_c``,
    ``q -= p_c' G p_c``, ``log|V| += log|M|``, after which the sums of a group's children are
    added into it. The result is ``-(n log 2 pi + log|V| + q) / 2``, in the user's units.

    Returns
    -------
    ndarray of shape (chain, draw, n_groups of factor ``own``)
    """
    design = model.design
    if not model.rows_held:
        raise ValueError("leaving out groups of a coarser factor needs the model's rows, which a model from "
                         "hlm_stats does not keep: compile it with bayeshlm.hlm")
    parts = factor_parts(model)
    post = posterior.posterior
    C, D = post.sizes["chain"], post.sizes["draw"]
    S = C * D
    hi_own = parts[own][1][1]
    cols = slice(0, hi_own)  # the random columns of the factors up to own, finest first
    X = design.X[:, cols]
    n = design.y.shape[0]
    w = np.ones(n) if design.row_weights is None else design.row_weights
    finest = design.factor_idx[0]
    n_fine = len(design.factor_labels[0])
    member = _member(finest, n_fine)
    A = np.zeros((n_fine, hi_own, hi_own))
    np.add.at(A, finest, w[:, None, None] * X[:, :, None] * X[:, None, :])
    n_rows = np.bincount(finest, minlength=n_fine).astype(float)
    sum_log_w = np.bincount(finest, np.log(w), minlength=n_fine)
    sd, corr = covariance_draws(posterior, model)
    T_all = corr * sd[:, :, None] * sd[:, None, :]
    s2_all = np.ones(S) if model.sigma_known else flat_draws(post[SIGMA]) ** 2
    bp = model.structure.block_ptr
    blocks = [(int(bp[k]), int(bp[k + 1])) for k in range(len(bp) - 1)]
    a_all = flat_draws(post[FIXED])
    coarser = [(k, part) for k, part in enumerate(parts) if k > own]
    coarse_draws = {k: _every_group_draws(post, model, k, part[0], "the likelihood of the coarser groups")
                    for k, part in coarser}
    n_groups = len(design.factor_labels[own])
    out = np.empty((S, n_groups))
    if chunk is None:
        chunk = int(max(1, min(256, 20_000_000 // max(n, 1))))
    for start in range(0, S, chunk):
        draws = np.arange(start, min(start + chunk, S))
        R = design.y[None, :] - a_all[draws] @ design.F.T
        for k, (_, (klo, khi), _, _) in coarser:
            R -= np.einsum("snj,nj->sn", coarse_draws[k][draws][:, design.factor_idx[k]], design.X[:, klo:khi])
        Rw = R * w
        s2 = s2_all[draws]
        T = T_all[draws]
        P = np.broadcast_to(A, (len(draws), *A.shape)) / s2[:, None, None, None]
        p = np.stack([np.asarray((Rw * X[:, c]) @ member) for c in range(hi_own)], axis=-1) / s2[:, None, None]
        q = np.asarray((Rw * R) @ member) / s2[:, None]
        logdet = n_rows[None, :] * np.log(s2)[:, None] - sum_log_w[None, :]
        count = n_rows.copy()
        for k in range(own + 1):
            lo, hi = parts[k][1]
            for b_lo, b_hi in blocks:
                if not lo <= b_lo < hi:
                    continue
                c = slice(b_lo, b_hi)
                Tc = T[:, c, c]  # a tiny jitter, relative to the block's scale, for an SD of exactly zero
                jitter = 1e-12 * np.maximum(np.trace(Tc, axis1=1, axis2=2), 1e-300)[:, None, None]
                L = np.linalg.cholesky(Tc + jitter * np.eye(b_hi - b_lo))
                M = np.eye(b_hi - b_lo) + np.einsum("sji,sgjk,skl->sgil", L, P[:, :, c, c], L)
                G = np.einsum("sij,sgjk,slk->sgil", L, np.linalg.inv(M), L)
                Pc = P[:, :, :, c]  # (s, g, all, block)
                pc = p[:, :, c]
                P = P - np.einsum("sgia,sgab,sgjb->sgij", Pc, G, Pc)
                p = p - np.einsum("sgia,sgab,sgb->sgi", Pc, G, pc)
                q = q - np.einsum("sga,sgab,sgb->sg", pc, G, pc)
                logdet = logdet + np.linalg.slogdet(M)[1]
            if k < own:  # add each group's sums into its parent's
                parent = design.parents[k]
                n_up = len(design.factor_labels[k + 1])
                P = _sum_into(P, parent, n_up)
                p = _sum_into(p, parent, n_up)
                q = _sum_into(q, parent, n_up)
                logdet = _sum_into(logdet, parent, n_up)
                count = np.bincount(parent, count, minlength=n_up)
        out[draws] = -0.5 * (count[None, :] * np.log(2.0 * np.pi) + logdet + q)
    return out.reshape(C, D, n_groups)


def _sum_into(values, parent, n_up):
    """Sums over axis 1 (groups) into the ``n_up`` parents: ``out[:, parent[g]] += values[:, g]``."""
    out = np.zeros((values.shape[0], n_up, *values.shape[2:]))
    np.add.at(out, (slice(None), parent), values)
    return out


def _member(idx, n_groups):
    """The (rows x groups) indicator matrix of group codes ``idx``, sparse."""
    import scipy.sparse as sp

    n = idx.shape[0]
    return sp.csr_matrix((np.ones(n), (np.arange(n), idx)), shape=(n, n_groups))


def marginal_group_log_likelihood(model, posterior, *, factor=None, chunk=None):
    """Log-likelihood of each finest group's rows with its own coefficients integrated out.

    For draw ``s`` and group ``j``: ``log N(y_j | mu_j, V_j + X_j T X_j')`` where ``mu_j`` is the
    fixed part plus the coarser factors' coefficients of that draw, ``V_j`` the level-1
    variances and ``T`` the group covariance of the draw. This is the likelihood of a group
    as a new group would be predicted, the one that makes importance-sampling
    leave-one-group-out stable (the group's own coefficients are not held at values the
    group itself informed).

    With crossed factors, ``factor`` (default the one with most groups) names the factor
    whose groups are left out: ``mu_j`` then holds the other factors' coefficients of the
    draw (a subject's rows, with the items' effects as drawn). With nested factors,
    ``factor`` may be a coarser one: a group's rows then have its own coefficients and those
    of every finer group within it integrated out, and ``mu_j`` holds the fixed part and the
    still coarser factors' draws (:func:`_nested_group_log_likelihood`).

    Returns
    -------
    ndarray of shape (chain, draw, n_groups of the factor)
    """
    check_result(model, posterior, "the posterior")
    refuse_non_gaussian(model, "group log-likelihoods with the coefficients integrated out")
    from_stats = group_stats_held(model)
    if not (from_stats or model.rows_held):
        raise ValueError("group log-likelihoods need the model's rows or every group's fixed-part statistics, "
                         "which this model from hlm_stats does not keep (too many groups x fixed effects): "
                         "compile it with bayeshlm.hlm")
    parts = factor_parts(model)
    if not parts:
        raise ValueError("the model has no grouping factor to leave groups out of")
    names = [part[0] for part in parts]
    own = 0 if factor is None else names.index(factor) if factor in names else -1
    if own < 0:
        raise ValueError(f"factor must be one of the model's grouping factors {names}, got {factor!r}")
    if own > 0 and not model.crossed:
        return _nested_group_log_likelihood(model, posterior, own, chunk)
    factor, (lo, hi), _, _ = parts[own]
    post = posterior.posterior
    C, D = post.sizes["chain"], post.sizes["draw"]
    S, d = C * D, hi - lo
    # In the kernels' basis, where the statistics are: T_N = L^{-1} T L^{-T}, the rows'
    # residuals r_N = r / s_y (the shift of the response cancels against the intercept's),
    # X_N = X M, weights W_N; the log-likelihood of the user's rows is that of the kernels'
    # minus n_j log s_y.
    basis = model.basis
    sd, corr = covariance_draws(posterior, model)
    T_kernel = basis.coef_cov_from_user(corr * sd[:, :, None] * sd[:, None, :])
    L = _cov_chol(*sd_corr(T_kernel), lo, hi)
    s2 = np.ones(S) if model.sigma_known else flat_draws(post[SIGMA]) ** 2 / basis.sigma_scale**2
    M = basis.coef_matrix()[lo:hi, lo:hi]
    stats = model.stats
    A = stats.XtX[:, lo:hi, lo:hi]  # X_j' W_j X_j, W the weights without sigma
    n_j = stats.n
    sum_log_w = stats.logw_g
    n_groups, group_idx = model.n_groups, model.design.group_idx
    if model.crossed:  # from the cells to the groups of the factor left out
        cells = model.design.cell_codes[:, own]
        A, n_j, sum_log_w = _by_group(A, cells), _by_group(n_j, cells), _by_group(sum_log_w, cells)
        n_groups = len(model.design.factor_labels[own])
        group_idx = None if group_idx is None else model.design.factor_idx[own]
    if not from_stats:
        n = model.n_obs
        w = basis.weights(model.design.obs_var, model.design.weights)
        w = np.ones(n) if w is None else w
        member = _member(group_idx, n_groups)
    out = np.empty((S, n_groups))
    eye = np.eye(d)
    if chunk is None:  # draws per block: at most ~2e7 values at a time (residuals of the rows, or per group)
        width = stats.n.shape[0] * stats.Xty.shape[1] if from_stats else model.n_obs
        chunk = int(max(1, min(256, 20_000_000 // max(width, 1))))
    for start in range(0, S, chunk):
        draws = np.arange(start, min(start + chunk, S))
        if from_stats:  # already in the kernels' basis
            rwr, xwr = _residual_sums_from_stats(model, posterior, lo, hi, draws, own)
        else:
            rwr, xwr = _residual_sums(model, posterior, lo, hi, draws, w, member, own)
            rwr = rwr / basis.y_scale**2
            xwr = (xwr @ M) / basis.y_scale
        s2_c = s2[draws][:, None]
        Lc = L[draws]
        B = eye + np.einsum("sji,gjk,skl->sgil", Lc, A, Lc) / s2_c[..., None, None]
        v = np.einsum("sji,sgj->sgi", Lc, xwr) / s2_c[..., None]
        chol_B = np.linalg.cholesky(B)
        z = np.linalg.solve(chol_B, v[..., None])[..., 0]
        logdet_B = 2.0 * np.log(np.diagonal(chol_B, axis1=-2, axis2=-1)).sum(-1)
        quad = rwr / s2_c - np.sum(z * z, axis=-1)
        log_V = n_j[None, :] * np.log(s2_c) - sum_log_w[None, :]
        out[draws] = -0.5 * (n_j[None, :] * np.log(2.0 * np.pi) + log_V + logdet_B + quad)
    out -= n_j[None, :] * np.log(basis.y_scale)
    return out.reshape(C, D, n_groups)


def group_log_likelihood(model, posterior, *, factor=None):
    """The posterior with a ``log_likelihood`` group of whole groups of ``factor`` (the finest by default).

    ``arviz.loo`` on the result estimates leave-one-group-out predictive accuracy: how well
    the model predicts a new group (a new school) rather than a new row of a known group.
    See :func:`marginal_group_log_likelihood` (and its ``factor``, for crossed factors).

    Returns
    -------
    xarray.DataTree
        A copy of ``posterior`` whose ``log_likelihood`` has the factor's dimension.
    """
    ll = marginal_group_log_likelihood(model, posterior, factor=factor)
    parts = factor_parts(model)
    factor, _, labels, _ = next(part for part in parts if part[0] == factor) if factor is not None else parts[0]
    g = dim_name(factor)
    post = posterior.posterior
    ds = xr.Dataset({model.spec.response: (("chain", "draw", g), ll)},
                    coords={"chain": post["chain"].values, "draw": post["draw"].values,
                            g: np.asarray(labels, dtype=str)})
    return _with_group(posterior, "log_likelihood", ds)


def loo(model, posterior=None, *, by="obs", **kwargs):
    """PSIS leave-one-out cross-validation through ``arviz.loo``: of observations or of groups.

    ``loo(model, posterior, by=...)``; leaving out observations needs no model, so
    ``loo(posterior)`` alone is the same as ``loo(model, posterior)`` with ``by="obs"``.

    Parameters
    ----------
    model : Model
        The model of the posterior; needed with ``by`` a grouping factor.
    posterior : xarray.DataTree
        From :func:`bayeshlm.sample`; with ``by="obs"`` it needs its pointwise log-likelihood.
    by : str
        ``"obs"`` leaves out one observation at a time; the name of a grouping factor leaves
        out one of its groups at a time, with the group's coefficients integrated out, and
        for a coarser factor of nested ones those of every finer group in it too (a school
        with its classes: how well the model predicts a new school), see
        :func:`group_log_likelihood`.
    **kwargs
        Passed to ``arviz.loo`` (e.g. ``pointwise=True``).

    Returns
    -------
    The ``arviz.loo`` result (``elpd``, its SE, ``p``, Pareto ``k`` diagnostics); results of
    several models go to ``arviz.compare``.
    """
    import arviz as az

    if posterior is None and not isinstance(model, Model):  # loo(posterior)
        model, posterior = None, model
    else:
        model, posterior = model_first(model, posterior, "loo")
    if by == "obs":
        if "log_likelihood" not in posterior.children or "obs" not in posterior.log_likelihood.dims:
            raise ValueError("leave-one-observation-out needs the pointwise log-likelihood, which this posterior "
                             f"does not hold (log_likelihood={posterior.attrs.get('log_likelihood', 'none')!r}): "
                             "sample with log_likelihood='pointwise', or leave out groups with loo(model, "
                             "posterior, by=<factor>)")
        return az.loo(posterior, **kwargs)
    if model is None:
        raise ValueError("leaving groups out needs the model: loo(model, posterior, by=...)")
    check_result(model, posterior, "the posterior")
    names = [part[0] for part in factor_parts(model)]
    if by not in names:
        raise ValueError(f"by must be 'obs' or one of the model's grouping factors {names}, got {by!r}")
    return az.loo(group_log_likelihood(model, posterior, factor=by), **kwargs)
