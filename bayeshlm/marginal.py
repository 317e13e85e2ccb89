"""Estimated marginal means, trends and their contrasts, as emmeans computes them.

The *reference grid* (Searle, Speed & Milliken 1980; Lenth's emmeans) crosses every level of
each categorical predictor of the fixed part with each numeric predictor at its mean, or at
the values given in ``at``. Each grid row ``r`` has a fixed-effect design row ``f_r``, built
by formulaic from the model's stored specification exactly as the fit built its rows (so
interactions, contrasts and transforms are formulaic's business, not this module's), and a
prediction ``f_r' a`` on the link scale. The marginal mean of a level (or combination of
levels) of the ``by`` variables averages the predictions of its grid rows with equal
weights over the levels of the other factors: ``l'a`` with ``l`` the average of their
``f_r``. Its standard error is ``sqrt(l'Vl)``; from an EM fit its degrees of freedom are
those of the contrast ``l`` (Satterthwaite's, or Kenward and Roger's with their adjusted
``V``, from :mod:`bayeshlm.inference`), and from a posterior the draws of ``l'a`` are the
answer. A *trend* (emmeans' ``emtrends``) replaces ``f_r`` by its derivative in a numeric
predictor, a central difference of design rows built the same way. Contrasts of means are
``C L a`` for a matrix ``C`` of weights on the means (all pairwise differences, or each
level against the first).

For a non-Gaussian model the means are formed on the link scale; ``scale="response"``
back-transforms them as emmeans' ``type = "response"`` does: the inverse link of the mean,
its standard error by the delta method, the interval's ends back-transformed; contrasts of a
logit or log link become odds ratios or ratios, tested on the link scale. From a posterior
the transform is applied to each draw. docs/design.md, "Marginal means".
"""

from __future__ import annotations

import ast
import itertools

import numpy as np
import pandas as pd

from bayeshlm.data import evaluate_spec
from bayeshlm.em import EMResult
from bayeshlm.formula import ColumnsSpec
from bayeshlm.inference import contrast_df, kenward_roger
from bayeshlm.model import check_result, model_first
from bayeshlm.predict import response_mean
from bayeshlm.results import flat_draws
from bayeshlm.schema import FIXED, FIXED_DIM

__all__ = ["marginal_means", "marginal_slopes", "reference_grid"]

CONTRASTS = ("pairwise", "trt.vs.ctrl")
ADJUST = (None, "bonferroni", "holm")
SCALES = ("response", "link")
GRID_LIMIT = 100_000  # rows of a reference grid


# --------------------------------------------------------------------------------------------
# the reference grid


def _names_in(expr):
    """The names an expression of the fixed part reads (its variables, and the functions it calls)."""
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError:
        return None
    return {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)} | {
        node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)}


def _predictors(model):
    """The data columns of the fixed part: ``{column: levels}``, ``levels`` None for a numeric column.

    A column is categorical when formulaic encoded it as categories (a string or categorical
    column, or one read inside ``C(...)``); its levels are those of the data the model was
    built on, in formulaic's order (the order of the fixed effects' contrasts).

    Returns
    -------
    dict
        In the order of the columns' names.
    """
    spec = model.design.fixed_spec
    if isinstance(spec, ColumnsSpec):  # an intercept and numeric columns, evaluated without formulaic
        return {c: None for c in sorted(c for c in spec.columns if c is not None)}
    variables = sorted(spec.variables_by_source.get("data", set()))
    levels = {}
    for expr, (kind, state) in spec.encoder_state.items():
        if getattr(kind, "value", kind) != "categorical":
            continue
        names = _names_in(expr)
        used = [v for v in variables if (v in names if names is not None else v in expr)]
        if len(used) != 1:
            raise ValueError(f"the categorical term {expr!r} of the fixed part reads {len(used)} data columns "
                             f"({used}); a reference grid needs each factor to be one column")
        found = list(state["categories"])
        if used[0] in levels and levels[used[0]] != found:
            raise ValueError(f"column {used[0]!r} is coded with two sets of levels in the fixed part")
        levels[used[0]] = found
    return {v: levels.get(v) for v in variables}


def _factor_names(model):
    """``{factor expression: column}`` of the categorical terms (``"C(period)"`` -> ``"period"``)."""
    out = {}
    spec = model.design.fixed_spec
    if isinstance(spec, ColumnsSpec):
        return out
    variables = set(spec.variables_by_source.get("data", set()))
    for expr, (kind, _) in spec.encoder_state.items():
        names = _names_in(expr) or set()
        used = sorted(names & variables)
        if getattr(kind, "value", kind) == "categorical" and len(used) == 1:
            out[expr] = used[0]
    return out


def _covariate_mean(model, name):
    """The mean of a numeric predictor over the model's rows, from the fixed design's column of that name."""
    names = list(model.fixed_names)
    if name not in names:
        return None
    j = names.index(name)
    if model.moments is not None:
        return float(model.moments.mean[1 + j])
    return float(np.mean(model.design.F[:, j]))


def _covariate_sd(model, name):
    names = list(model.fixed_names)
    if name not in names or model.moments is None:
        return None
    return float(np.sqrt(model.moments.var()[1 + names.index(name)]))


def _level_of(value, levels, column):
    """``value`` as one of ``levels``, also when given as text (``"2"`` for the level ``2``)."""
    for level in levels:
        if value == level and type(value) is not bool:
            return level
    text = {str(level): level for level in levels}
    if str(value) in text:
        return text[str(value)]
    raise ValueError(f"{value!r} is not a level of column {column!r}; its levels are {levels}")


def _grid_values(model, at):
    """``{column: values}`` of the reference grid and the predictors' ``{column: levels}``."""
    preds = _predictors(model)
    at = dict(at or {})
    aliases = _factor_names(model)
    for key in list(at):
        if key not in preds and key in aliases:
            at[aliases[key]] = at.pop(key)
    unknown = [k for k in at if k not in preds]
    if unknown:
        raise ValueError(f"at: column {unknown[0]!r} is not a predictor of the fixed part; its predictors are "
                         f"{list(preds)}")
    values = {}
    for column, levels in preds.items():
        given = at.get(column)
        if given is not None:
            given = list(given) if isinstance(given, (list, tuple, np.ndarray, pd.Series, pd.Index)) else [given]
            if not given:
                raise ValueError(f"at: no values given for column {column!r}")
        if levels is not None:
            values[column] = levels if given is None else list(dict.fromkeys(_level_of(v, levels, column)
                                                                               for v in given))
            continue
        if given is not None:
            try:
                numbers = [float(v) for v in given]
            except (TypeError, ValueError):
                raise ValueError(f"at: column {column!r} is numeric; got {given!r}") from None
            if not np.all(np.isfinite(numbers)):
                raise ValueError(f"at: the values of column {column!r} must be finite, got {given!r}")
            values[column] = list(dict.fromkeys(numbers))
            continue
        mean = _covariate_mean(model, column)
        if mean is None:
            raise ValueError(f"the numeric predictor {column!r} enters the fixed part only through other terms "
                             f"(transforms or interactions), so its mean cannot be read off the model: give its "
                             f"value, at={{{column!r}: value}}")
        values[column] = [mean]
    return values, preds


def reference_grid(model, *, at=None):
    """The reference grid: every level of each categorical predictor crossed with each numeric one.

    Parameters
    ----------
    model : Model
    at : dict, optional
        ``{column: value or values}``: the levels of a categorical predictor to keep, the
        values of a numeric one (default its mean over the model's rows). A 0/1 or boolean
        column that formulaic codes as a number is numeric (at its mean, the proportion of
        ones) unless it is read inside ``C(...)``.

    Returns
    -------
    pandas.DataFrame
        One row per combination (the first column varying fastest, as emmeans orders them),
        one column per predictor of the fixed part.
    """
    values, _ = _grid_values(model, at)
    return _product(values, list(values))


def _product(values, columns):
    """Rows of every combination of ``values[c]`` for ``c`` in ``columns``, the first varying fastest."""
    combos = [tuple(reversed(c)) for c in itertools.product(*[values[c] for c in reversed(columns)])]
    frame = pd.DataFrame(combos, columns=columns) if columns else pd.DataFrame(index=range(1))
    for column in columns:
        if all(isinstance(v, float) for v in values[column]):
            frame[column] = frame[column].astype(np.float64)
    return frame


def _by_list(by):
    if by is None:
        return []
    out = [by] if isinstance(by, str) else list(by)
    if not all(isinstance(b, str) for b in out):
        raise TypeError(f"by must be a column name or a list of them, got {by!r}")
    if len(set(out)) < len(out):
        raise ValueError(f"by names a column twice: {out}")
    return out


def _averaging(model, by, at, slope=None):
    """The by-combinations (a frame), the averaging matrix ``L`` (one row ``l'`` per combination).

    With ``slope = (column, step)`` each grid row's design row is replaced by its central
    difference in that column.
    """
    by = _by_list(by)
    values, preds = _grid_values(model, at)
    aliases = _factor_names(model)
    by = [aliases.get(b, b) if b not in preds else b for b in by]
    for b in by:
        if b not in preds:
            raise ValueError(f"by: column {b!r} is not a predictor of the fixed part; its predictors are "
                             f"{list(preds)}")
        if preds[b] is None and (at is None or b not in at):
            raise ValueError(f"by: column {b!r} is numeric; give the values to compute the means at, "
                             f"at={{{b!r}: [...]}}")
    others = [c for c in values if c not in by]
    outer, inner = _product(values, by), _product(values, others)
    n_rows = len(outer) * len(inner)
    if n_rows > GRID_LIMIT:
        raise ValueError(f"the reference grid would have {n_rows} rows (limit {GRID_LIMIT}); restrict it with at=")
    grid = pd.concat([outer.loc[outer.index.repeat(len(inner))].reset_index(drop=True),
                      pd.concat([inner] * len(outer), ignore_index=True)], axis=1)
    grid = grid[list(values)] if values else grid
    spec = model.design.fixed_spec
    if slope is None:
        G = evaluate_spec(spec, grid, "the fixed part on the reference grid")
    else:
        column, step = slope
        up, down = grid.copy(), grid.copy()
        up[column] = grid[column] + step
        down[column] = grid[column] - step
        width = (up[column] - down[column]).to_numpy()[:, None]  # the difference of the rounded values
        G = (evaluate_spec(spec, up, "the fixed part on the reference grid")
             - evaluate_spec(spec, down, "the fixed part on the reference grid")) / width
    L = G.reshape(len(outer), len(inner), -1).mean(axis=1)
    return outer, L, preds


def _slope_step(model, column, values):
    """``h`` of the central difference in ``column``: 1e-3 of its SD, or of its size when it has no own column."""
    sd = _covariate_sd(model, column)
    if sd is not None and sd > 0:
        return 1e-3 * sd
    scale = max((abs(v) for v in values), default=0.0)
    return 1e-3 * (scale if scale > 0 else 1.0)


# --------------------------------------------------------------------------------------------
# labels and contrast matrices


def _text(value):
    return f"{value:g}" if isinstance(value, float) else str(value)


def _labels(outer, preds):
    """One label per by-combination: the levels, numeric columns as ``name=value``, joined by ``", "``."""
    if outer.shape[1] == 0:
        return ["overall"]
    return [", ".join(_text(v) if preds[c] is not None else f"{c}={_text(v)}" for c, v in row.items())
            for _, row in outer.iterrows()]


def _side(label, outer):
    wrap = outer.shape[1] > 1 or "=" in label
    return f"({label})" if wrap else label


def _contrast_matrix(contrasts, labels, outer):
    """``(C, names)``: weights on the means, one row per contrast, and the contrasts' labels."""
    m = len(labels)
    if isinstance(contrasts, str):
        if contrasts not in CONTRASTS:
            raise ValueError(f"contrasts must be one of {CONTRASTS} or a mapping {{label: weights}}, got {contrasts!r}")
        if m < 2:
            raise ValueError("contrasts need two or more means; this by gives one")
        pairs = (list(itertools.combinations(range(m), 2)) if contrasts == "pairwise"
                 else [(i, 0) for i in range(1, m)])
        C = np.zeros((len(pairs), m))
        for r, (i, j) in enumerate(pairs):
            C[r, i], C[r, j] = 1.0, -1.0
        return C, [(_side(labels[i], outer), _side(labels[j], outer)) for i, j in pairs]
    if isinstance(contrasts, dict):
        names, rows = [], []
        for name, weights in contrasts.items():
            w = np.asarray(weights, dtype=np.float64).ravel()
            if w.shape != (m,) or not np.all(np.isfinite(w)):
                raise ValueError(f"contrast {name!r} needs {m} finite weights, one per mean ({labels}), "
                                 f"got {weights!r}")
            names.append(str(name))
            rows.append(w)
        if not rows:
            raise ValueError("contrasts: the mapping is empty")
        return np.array(rows), names
    raise TypeError(f"contrasts must be one of {CONTRASTS} or a mapping {{label: weights}}, got {contrasts!r}")


def _adjusted(p, adjust):
    """Bonferroni's or Holm's adjustment of a family of p-values."""
    m = p.size
    if adjust is None or m == 0:
        return p
    if adjust == "bonferroni":
        return np.minimum(1.0, m * p)
    order = np.argsort(p, kind="stable")
    steps = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = steps
    return out


# --------------------------------------------------------------------------------------------
# the link and its inverse


def _response_kind(model):
    """How a contrast of a non-Gaussian model reads on the response scale: a ratio of odds or rates, or not."""
    return {"logit": "odds ratio", "log": "ratio"}.get(model.link)


def _inverse_link_derivative(model, eta):
    mu = response_mean(model, eta)
    if model.link == "log":
        return mu
    if model.link == "probit":
        return np.exp(-0.5 * eta * eta) / np.sqrt(2.0 * np.pi)
    return mu * (1.0 - mu)


# --------------------------------------------------------------------------------------------
# the two kinds of fit


def _kind(model, fit, name):
    model, fit = model_first(model, fit, name)
    if isinstance(fit, EMResult):
        em = True
    elif hasattr(fit, "posterior"):
        em = False
    else:
        raise TypeError(f"expected an EM fit (bayeshlm.fit_em) or a posterior (bayeshlm.sample), got "
                        f"{type(fit).__name__}")
    check_result(model, fit, "the fit")
    if not model.fixed_names:
        raise ValueError("the model has no fixed effects: it has no marginal means")
    return model, fit, em


def _check_options(level, scale, adjust, contrasts):
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be between 0 and 1, got {level!r}")
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    if adjust not in ADJUST:
        raise ValueError(f"adjust must be one of {ADJUST}, got {adjust!r}")
    if adjust is not None and contrasts is None:
        raise ValueError("adjust is for the p-values of contrasts: give contrasts= too")


def _offset_value(model, offset):
    if model.offset is None:
        if offset is not None:
            raise ValueError("offset= is for models with an offset() term; this model has none")
        return 0.0
    if offset is None:
        raise ValueError("the model has an offset(): give the offset the means are for, e.g. offset=0 for rates "
                         "per unit of exposure, or offset=np.log(100) for rates per 100")
    value = float(offset)
    if not np.isfinite(value):
        raise ValueError(f"offset must be finite, got {offset!r}")
    return value


def _em_moments(model, fit, L, ddf, kr_cache):
    """Estimates, standard errors and degrees of freedom of the rows of ``L`` from an EM fit."""
    a = np.array([fit.fixed[n] for n in model.fixed_names])
    if ddf == "kenward-roger":
        if "kr" not in kr_cache:
            kr_cache["kr"] = kenward_roger(model, fit)
        kr = kr_cache["kr"]
        V = kr.vcov
        df = np.array([kr.moments(row)[1] for row in L])
    else:
        V = fit.vcov_fixed
        df = np.asarray(contrast_df(model, fit, L, ddf), dtype=np.float64)
    se = np.sqrt(np.maximum(np.einsum("rp,pq,rq->r", L, V, L), 0.0))
    return L @ a, se, df


def _quantile(level, df):
    from scipy.stats import norm
    from scipy.stats import t as student

    tail = 0.5 + level / 2.0
    df = np.asarray(df, dtype=np.float64)
    return np.where(np.isinf(df), norm.ppf(tail), student.ppf(tail, np.where(np.isinf(df), 1.0, df)))


def _em_means_table(model, est, se, df, level, transform):
    q = _quantile(level, df)
    lower, upper = est - q * se, est + q * se
    if transform:
        lower, upper = response_mean(model, lower), response_mean(model, upper)
        se = se * _inverse_link_derivative(model, est)
        est = response_mean(model, est)
    return {"estimate": est, "se": se, "df": df, "lower": lower, "upper": upper}


def _em_contrast_table(model, est, se, df, level, adjust, ratio):
    from scipy.stats import norm
    from scipy.stats import t as student

    stat = est / se
    p = np.where(np.isinf(df), 2 * norm.sf(np.abs(stat)), 2 * student.sf(np.abs(stat), np.where(np.isinf(df), 1, df)))
    p = _adjusted(p, adjust)
    # the intervals of an adjusted family are Bonferroni's (emmeans does the same for Holm's)
    level = level if adjust is None else 1.0 - (1.0 - level) / est.size
    q = _quantile(level, df)
    lower, upper = est - q * se, est + q * se
    if ratio:
        est, se, lower, upper = np.exp(est), np.exp(est) * se, np.exp(lower), np.exp(upper)
    return {"estimate": est, "se": se, "df": df, "lower": lower, "upper": upper, "t": stat, "p_value": p}


def _draws_of(model, fit, L, offset):
    """Draws ``(chain * draw, rows of L)`` of ``L a + offset`` and the posterior's chain and draw coordinates."""
    da = fit.posterior[FIXED].sel({FIXED_DIM: list(model.fixed_names)}).transpose("chain", "draw", FIXED_DIM)
    return flat_draws(da) @ L.T + offset, da


def _summary(draws, level):
    tail = (1.0 - level) / 2.0
    lower, upper = np.quantile(draws, [tail, 1.0 - tail], axis=0)
    return {"mean": draws.mean(axis=0), "sd": draws.std(axis=0, ddof=1), "lower": lower, "upper": upper}


def _as_data_array(values, da, dim, labels, outer, name):
    import xarray as xr

    n_chain, n_draw = da.sizes["chain"], da.sizes["draw"]
    coords = {"chain": da["chain"].values, "draw": da["draw"].values, dim: labels}
    if outer is not None:
        for column in outer.columns:
            coords[column] = (dim, outer[column].to_numpy())
    return xr.DataArray(values.reshape(n_chain, n_draw, len(labels)), dims=("chain", "draw", dim), coords=coords,
                        name=name)


def _result(model, fit, em, outer, L, preds, *, contrasts, adjust, level, ddf, scale, draws, offset, name,
            transformable):
    """The table (or the draws) of the means ``L a`` or, with ``contrasts``, of their contrasts."""
    if draws and em:
        raise ValueError("draws=True needs a posterior; an EM fit has estimates and standard errors")
    if not em and adjust is not None:
        raise ValueError("adjust is for the p-values of an EM fit's contrasts; a posterior has none")
    labels = _labels(outer, preds)
    transform = transformable and scale == "response" and not model.gaussian
    C, names = (None, None) if contrasts is None else _contrast_matrix(contrasts, labels, outer)
    ratio = C is not None and transform and _response_kind(model) is not None
    if C is not None and isinstance(contrasts, str):
        names = [f"{a} {'/' if ratio else '-'} {b}" for a, b in names]
    if em:
        if C is None:
            est, se, df = _em_moments(model, fit, L, ddf, {})
            table = pd.DataFrame(_em_means_table(model, est + offset, se, df, level, transform))
            table = pd.concat([outer.reset_index(drop=True), table], axis=1)
        else:
            est, se, df = _em_moments(model, fit, C @ L, ddf, {})
            table = pd.DataFrame({"contrast": names, **_em_contrast_table(model, est, se, df, level, adjust, ratio)})
    else:
        values, da = _draws_of(model, fit, L, offset)
        if C is None:
            if transform:
                values = response_mean(model, values)
            if draws:
                return _as_data_array(values, da, "level", labels, outer, name)
            table = pd.concat([outer.reset_index(drop=True), pd.DataFrame(_summary(values, level))], axis=1)
        else:
            values = values @ C.T
            if ratio:
                values = np.exp(values)
            if draws:
                return _as_data_array(values, da, "contrast", names, None, name)
            table = pd.DataFrame({"contrast": names, **_summary(values, level)})
    if ratio:
        shown = _response_kind(model)
    else:
        shown = "link" if not model.gaussian and not transform else "response"
    table.attrs.update({"scale": shown, "level": level, "ddf": ddf if em else None, "adjust": adjust})
    return table


# --------------------------------------------------------------------------------------------
# the public functions


def marginal_means(model, fit, by=None, *, at=None, contrasts=None, adjust=None, level=0.95, ddf="satterthwaite",
                   scale="response", draws=False, offset=None):
    """Estimated marginal means (emmeans' ``emmeans``), or their contrasts (``pairs``, ``contrast``).

    Parameters
    ----------
    model : Model
        The model of the fit.
    fit : EMResult or xarray.DataTree
        An EM fit or a posterior.
    by : str or list of str, optional
        The predictors whose levels (or combinations of levels) get a mean each; the other
        factors are averaged over with equal weights. A numeric predictor needs its values in
        ``at``. A categorical term may be named by its column (``"period"``) or as written
        (``"C(period)"``). Default: one overall mean.
    at : dict, optional
        ``{column: value or values}``: the levels of a categorical predictor to keep, the
        values of a numeric one (default its mean over the model's rows).
    contrasts : {"pairwise", "trt.vs.ctrl"} or dict, optional
        Return contrasts of the means instead: every pairwise difference (row ``i`` minus row
        ``j`` for ``i < j``, as emmeans' ``pairs``), each mean minus the first, or
        ``{label: weights}`` with one weight per mean.
    adjust : {None, "bonferroni", "holm"}
        Adjustment of the contrasts' p-values for their number (an EM fit); the intervals of
        an adjusted family are Bonferroni's, as emmeans makes them.
    level : float
        Probability of the intervals (t or z intervals of the EM fit; equal-tailed posterior
        intervals).
    ddf : {"satterthwaite", "kenward-roger", "normal", ...}
        Degrees of freedom of an EM fit's intervals and tests, any method of
        :func:`bayeshlm.inference.contrast_df` (``"kenward-roger"`` also takes Kenward and
        Roger's adjusted covariance); ``"normal"`` gives z intervals, and is the only one
        for a non-Gaussian model. Ignored for a posterior.
    scale : {"response", "link"}
        For a non-Gaussian model: back-transform the means (inverse link, delta-method SE,
        back-transformed interval ends), and report contrasts of a logit or log link as odds
        ratios or ratios, tested on the link scale; or stay on the link scale.
    draws : bool
        A posterior's draws (``DataArray`` ``chain, draw, level`` or ``chain, draw, contrast``)
        instead of their summary.
    offset : float, optional
        For a model with an ``offset()``: the offset the means are for.

    Returns
    -------
    pandas.DataFrame
        Means: the ``by`` columns, then ``estimate, se, df, lower, upper`` (EM fit) or ``mean,
        sd, lower, upper`` (posterior). Contrasts: ``contrast`` (labels ``"a - b"``, or
        ``"a / b"`` for a ratio), then the same columns and, for an EM fit, ``t`` and
        ``p_value`` (two-sided). ``attrs`` records the scale, level, ddf and adjustment.
    """
    model, fit, em = _kind(model, fit, "marginal_means")
    _check_options(level, scale, adjust, contrasts)
    offset = _offset_value(model, offset)
    outer, L, preds = _averaging(model, by, at)
    return _result(model, fit, em, outer, L, preds, contrasts=contrasts, adjust=adjust, level=level, ddf=ddf,
                   scale=scale, draws=draws, offset=offset, name="marginal_mean", transformable=True)


def marginal_slopes(model, fit, var, by=None, *, at=None, contrasts=None, adjust=None, level=0.95,
                    ddf="satterthwaite", draws=False):
    """Estimated marginal trends of a numeric predictor (emmeans' ``emtrends``), or their contrasts.

    The derivative of the prediction in ``var`` at each grid row (a central difference of
    design rows built by formulaic, so a transform or polynomial of ``var`` is
    differentiated too), averaged over the other factors as :func:`marginal_means` averages
    the predictions. For a non-Gaussian model on the link scale, as ``emtrends`` gives them.

    Parameters
    ----------
    model : Model
    fit : EMResult or xarray.DataTree
    var : str
        A numeric predictor of the fixed part.
    by, at, contrasts, adjust, level, ddf, draws
        As for :func:`marginal_means`; ``at`` may set where in ``var`` the derivative is
        taken (default its mean).

    Returns
    -------
    pandas.DataFrame
        As :func:`marginal_means` returns, each estimate a slope (or a difference of slopes).
    """
    model, fit, em = _kind(model, fit, "marginal_slopes")
    _check_options(level, "link", adjust, contrasts)
    values, preds = _grid_values(model, at)
    if var not in preds:
        raise ValueError(f"var: column {var!r} is not a predictor of the fixed part; its predictors are {list(preds)}")
    if preds[var] is not None:
        raise ValueError(f"var: column {var!r} is categorical; a slope is of a numeric predictor")
    if var in _by_list(by):
        raise ValueError(f"var: column {var!r} cannot be in by as well")
    step = _slope_step(model, var, values[var])
    outer, L, preds = _averaging(model, by, at, slope=(var, step))
    return _result(model, fit, em, outer, L, preds, contrasts=contrasts, adjust=adjust, level=level, ddf=ddf,
                   scale="link", draws=draws, offset=0.0, name="marginal_slope", transformable=False)
