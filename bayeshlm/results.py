"""Raw draws + labels -> ArviZ ``DataTree`` (the only module of the sampler path importing ArviZ).

Only ``arviz_base`` is needed to build the result; the heavier ArviZ modules (statistics,
plots) are imported where summaries and diagnostics are made.
"""

from __future__ import annotations

import json
import platform
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import xarray as xr
from xarray.indexes import PandasIndex

from bayeshlm.schema import (
    ACCEPT_RATE,
    FIXED,
    FIXED_DIM,
    KNOWN_SD,
    LP,
    OBS,
    OFFSET,
    SIGMA,
    THETA,
    THETA_DIM,
    WEIGHTS,
    coef_dim,
    corr_pair_dim,
    corr_pair_label,
    corr_var,
    dim_name,
    effect_mean_var,
    effect_sd_var,
    effect_var,
    index_var,
    sd_var,
)
from samplers.loglik import group_loglik_stats, loglik_draws
from samplers.theta import covariances, sd_corr

POINTWISE_LIMIT = 20_000_000  # chains x draws x observations above which "auto" stores group sums



def _versions():
    from importlib.metadata import version

    import numba
    import scipy

    from bayeshlm.version import __version__

    return {
        "bayeshlm": __version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "numba": numba.__version__,
        "xarray": xr.__version__,
        "arviz": version("arviz"),
        "arviz_base": version("arviz-base"),
        "python": platform.python_version(),
    }


def variance_components(model, theta):
    """``(s2, sd, corr, T)`` of draws ``(n, n_theta)`` of the kernels' ``theta``, in the user's parametrisation.

    The level-1 variance (1 when known), the group SDs and correlations, and the group
    covariance, mapped from the kernels' basis (:meth:`bayeshlm.basis.Basis.coef_cov`).
    """
    s2, T_kernel = covariances(np.ascontiguousarray(theta, dtype=np.float64), model.structure)
    T = model.basis.coef_cov(T_kernel)
    sd, corr = sd_corr(T)
    return model.basis.residual_variance(s2, model.sigma_known), sd, corr, T


def group_stats_held(model):
    """True when the model's statistics hold every group's ``F_j'W F_j``: group log-likelihoods need no rows."""
    return model.stats.FtF_g.shape[0] == model.stats.n.shape[0]


def loglik_mode(model, chains, draws, keep_group_draws, log_likelihood):
    """The log-likelihood a run stores: ``"pointwise"``, ``"group"`` or False.

    ``"auto"`` is pointwise when the rows are held and chains x draws x observations is at
    most :data:`POINTWISE_LIMIT`, else by group, from the statistics (a cost per draw in
    the groups, not the rows) or, when they do not hold every group's ``F_j'W F_j``, from
    the rows; none when not every group's draws are kept.
    """
    if log_likelihood != "auto":
        return log_likelihood
    if keep_group_draws is not True:
        return False
    if model.rows_held and chains * draws * model.n_obs <= POINTWISE_LIMIT:
        return "pointwise"
    return "group" if model.rows_held or group_stats_held(model) else False


def _in_parts(n_draws, fill):
    """Call ``fill(lo, hi)`` on two halves of the draws in two threads (the kernels release the GIL)."""
    n_parts = 2
    bounds = np.linspace(0, n_draws, n_parts + 1).astype(int)
    with ThreadPoolExecutor(max_workers=n_parts) as pool:
        list(pool.map(lambda i: fill(bounds[i], bounds[i + 1]), range(n_parts)))


def cell_groups(model):
    """Each cell's group of the largest factor (crossed factors; the groups of the group log-likelihood), else None."""
    if not model.crossed:
        return None
    return np.ascontiguousarray(model.design.cell_codes[:, 0], dtype=np.int64)


def _cell_gather(model):
    """``(cell_node, col_factor, cell_group)`` of crossed factors for the log-likelihood kernels.

    ``cell_group``: each cell's group of the largest factor (the groups of the group mode).
    Not crossed: empty index arrays (``b`` is read by the rows' groups) and ``None``.
    """
    st = model.structure
    if not model.crossed:
        return np.zeros((0, 0), dtype=np.int64), np.zeros(0, dtype=np.int64), None
    lp = st.level_ptr
    col_factor = np.repeat(np.arange(len(lp) - 1, dtype=np.int64), np.diff(lp))
    return np.ascontiguousarray(st.cell_node, dtype=np.int64), col_factor, cell_groups(model)


def _log_likelihood(model, s2, a, b, mode, a_kernel=None):
    """Array (chain, draw, n_out) of log-likelihoods, by observation or by finest group.

    ``s2``, ``a`` and ``b`` (each finest group's full coefficient vector; with crossed
    factors, one row per group of every factor, as drawn, and the groups are those of the
    largest factor) are in the user's units. By group, when the statistics hold every
    group's ``F_j'W F_j``, the values are quadratic forms in them
    (:func:`samplers.loglik.group_loglik_stats`, a cost per draw in the groups); otherwise,
    and pointwise, each row is read once per draw
    (:func:`samplers.loglik.loglik_draws`). ``a_kernel``: the fixed effects in the
    kernels' basis, when at hand (else mapped from ``a``).
    """
    n_chains, n_draws = s2.shape
    flat_s2 = s2.reshape(-1)
    if mode == "group" and group_stats_held(model):
        return _group_loglik(model, flat_s2, a, b, a_kernel).reshape(n_chains, n_draws, -1)
    design = model.design
    w = np.ones(model.n_obs) if design.row_weights is None else design.row_weights  # variance s2 / w_i
    log_w = np.log(w)
    cell_node, col_factor, cell_group = _cell_gather(model)
    if mode == "pointwise":
        out_idx = np.arange(model.n_obs, dtype=np.int64)
        n_out = model.n_obs
    elif cell_group is not None:
        out_idx = cell_group[design.group_idx]
        n_out = len(design.factor_labels[0])
    else:
        out_idx = design.group_idx
        n_out = model.n_groups
    out = np.empty((n_chains * n_draws, n_out))
    flat_a = a.reshape(-1, a.shape[-1])
    flat_b = b.reshape(n_chains * n_draws, *b.shape[2:])

    def fill(lo, hi):
        out[lo:hi] = 0.0  # the kernel adds into it; zeroed here, in the two threads
        loglik_draws(design.y, design.F, design.X, design.group_idx, log_w, w, flat_s2[lo:hi], flat_a[lo:hi],
                     flat_b[lo:hi], out_idx, out[lo:hi], cell_node, col_factor)

    _in_parts(flat_s2.shape[0], fill)
    return out.reshape(n_chains, n_draws, n_out)


def _group_loglik(model, s2, a, b, a_kernel=None):
    """``(n_draws, n_groups)`` log-likelihoods from the statistics, draws given in the user's units.

    The draws are carried to the statistics' basis (``a = L a_N + t``, ``b = L_X b_N``;
    docs/design.md, "The internal basis"; the group coefficients inside the kernel), where
    the quadratic forms lose no precision to large or shifted columns.
    """
    basis, st = model.basis, model.stats
    n = s2.shape[0]
    if a_kernel is None:
        L, t = basis.fixed_to_user()
        a_kernel = np.linalg.solve(L, (a.reshape(n, -1) - t).T).T
    a_kernel = np.ascontiguousarray(np.asarray(a_kernel, dtype=np.float64).reshape(n, -1))
    n_groups = st.n.shape[0]
    cell_node, col_factor, cell_group = _cell_gather(model)
    n_rows_b = n_groups if cell_group is None else int(model.structure.node_ptr[-1])
    if b is None or b.shape[-1] == 0:
        b = np.zeros((n, n_rows_b, 0))
    b = np.ascontiguousarray(b.reshape(n, n_rows_b, -1), dtype=np.float64)
    b_map = np.ascontiguousarray(basis.coef_matrix_inverse() / basis.y_scale)
    log_w_shift = basis.log_weight_shift(model.sigma_known)
    if model.sigma_known:  # s2 = 1 in both units; w = s_y^2 w_user
        s2N = np.ones(n)
        log_s2_user = np.zeros(n)
    else:  # s2 = s_y^2 c_w s2_N, w = w_user / c_w (c_w = 1 without precision weights)
        s2N = np.ascontiguousarray(s2 / basis.sigma_scale**2)
        log_s2_user = np.log(s2)
    if cell_group is None:
        out_col, n_out = np.arange(n_groups, dtype=np.int64), n_groups
    else:
        out_col, n_out = cell_group, len(model.design.factor_labels[0])
    out = np.empty((n, n_out))

    def fill(lo, hi):
        out[lo:hi] = 0.0  # the kernel adds into it
        group_loglik_stats(st.n, st.yty_g, st.Fty_g, st.FtF_g, st.Xty, st.XtF, st.XtX, st.logw_g, log_w_shift,
                           s2N[lo:hi], log_s2_user[lo:hi], a_kernel[lo:hi], b[lo:hi], b_map, out[lo:hi], out_col,
                           cell_node, col_factor)

    _in_parts(n, fill)
    return out


def _stacked_group_draws(outputs, n_keep):
    """The chains' group draws as one ``(chain, draw, group, coef)`` array, their common block when it is one."""
    base = outputs[0].b.base
    if (base is not None and base.ndim == 4 and base.shape[0] == len(outputs) and base.shape[1] == n_keep
            and all(o.b.base is base for o in outputs)
            and all(o.b.ctypes.data == base[c].ctypes.data and o.b.shape == base[c].shape
                    for c, o in enumerate(outputs))):
        return base
    return np.stack([o.b[:n_keep] for o in outputs])


def factor_parts(model):
    """Per grouping factor, finest first: ``(name, (first, last + 1) coefficient, labels, coef names)``."""
    design = model.design
    lp = model.structure.level_ptr
    if lp[-1] == 0:
        return []
    factors = design.factors or (design.factor,)
    labels = design.factor_labels or (design.group_labels,)
    coef_names = design.factor_coef_names or (design.coef_names,)
    return [(f, (int(lp[k]), int(lp[k + 1])), labels[k], coef_names[k]) for k, f in enumerate(factors)]


def flat_draws(da):
    """``(chain * draw, ...)`` array of a variable with the sample dimensions first."""
    da = da.transpose("chain", "draw", ...)
    return np.asarray(da).reshape(-1, *da.shape[2:])


def grouping_factors(tree):
    """The grouping factors recorded in a result's attributes, finest first (none for a pooled model)."""
    attrs = tree.attrs
    if "grouping_factors" in attrs:
        return [f for f in json.loads(attrs["grouping_factors"]) if f]
    return [attrs["grouping_factor"]] if attrs.get("grouping_factor") else []


def theta_labels(model):
    """Labels of the entries of ``theta`` (:mod:`samplers.theta`): ``log_sigma``, ``tau[c]``, ``z[c1,c2]``."""
    st, names = model.structure, model.coef_names
    labels = [] if model.sigma_known else ["log_sigma"]
    for k in range(len(st.block_ptr) - 1):
        lo, hi = int(st.block_ptr[k]), int(st.block_ptr[k + 1])
        labels += [f"tau[{names[i]}]" for i in range(lo, hi)]
        labels += [f"z[{names[j]},{names[i]}]" for i in range(lo, hi) for j in range(lo, i)]
    return labels


def corr_pairs(model, lo, hi):
    """The free correlations among coefficients ``lo..hi-1`` (one factor): ``(i, j)`` with ``j < i`` in a block."""
    bp = model.structure.block_ptr
    return [(i, j) for k in range(len(bp) - 1) if lo <= bp[k] < hi
            for i in range(bp[k], bp[k + 1]) for j in range(bp[k], i)]


def covariance_draws(posterior, model):
    """Group SDs and correlations of every draw as arrays over the model's coefficients.

    Returns ``sd`` (n_draws, n_coef) and ``corr`` (n_draws, n_coef, n_coef) with chains
    concatenated; correlations between coefficients of different blocks or factors are 0.
    """
    post = posterior.posterior
    d = len(model.coef_names)
    n = post.sizes["chain"] * post.sizes["draw"]
    sd = np.zeros((n, d))
    corr = np.zeros((n, d, d))
    for factor, (lo, hi), _, names in factor_parts(model):
        g = dim_name(factor)
        sd[:, lo:hi] = post[sd_var(g)].values.reshape(n, hi - lo)
        if corr_var(g) in post:
            values = post[corr_var(g)].values.reshape(n, -1)
            for m, pair in enumerate(post[corr_pair_dim(g)].values):
                a, b = str(pair).split(",")
                i, j = lo + list(names).index(a), lo + list(names).index(b)
                corr[:, i, j] = corr[:, j, i] = values[:, m]
    corr[:, np.arange(d), np.arange(d)] = 1.0
    return sd, corr


def group_selection(model, keep):
    """The group coefficients kept: ``(rows, per_factor)``.

    ``keep`` is True (all groups), False (none) or ``n`` (the first ``n`` groups of each
    factor). ``rows`` are the rows of the sampler's group-coefficient array, in the order
    stored; ``per_factor`` lists, per grouping factor finest first, the positions of its
    kept groups among its own groups.
    """
    st = model.structure
    per_factor = []
    rows = []
    for k, (_, _, labels, _) in enumerate(factor_parts(model)):
        n_k = len(labels)
        count = n_k if keep is True else 0 if keep is False else min(int(keep), n_k)
        pos = np.arange(count, dtype=np.int64)
        per_factor.append(pos)
        rows.append(pos + int(st.node_ptr[k]))
    rows = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    return rows, per_factor


def finest_coefficients(model, b):
    """Group coefficients ``b[..., node, coef]`` as each finest group's full vector (own and ancestors').

    For one grouping factor (or none) this is ``b`` itself; for crossed factors, each cell's
    (its group of every factor).
    """
    st = model.structure
    if len(st.level_ptr) <= 2:
        return b
    design = model.design
    if design.crossed:
        parts = [b[..., st.cell_node[:, k], st.level_ptr[k]:st.level_ptr[k + 1]] for k in range(len(st.level_ptr) - 1)]
        return np.ascontiguousarray(np.concatenate(parts, axis=-1))
    anc = np.arange(len(design.factor_labels[0]))
    parts = []
    for k in range(len(st.level_ptr) - 1):
        if k:
            anc = design.parents[k - 1][anc]
        parts.append(b[..., st.node_ptr[k] + anc, st.level_ptr[k]:st.level_ptr[k + 1]])
    return np.ascontiguousarray(np.concatenate(parts, axis=-1))


def to_datatree(model, outputs, n_keep, settings, timings, log_likelihood, keep_group_draws,
                kept_per_chain=None, log_lik=None):
    """Assemble the ArviZ result of a run.

    Groups and variables (``<g>`` is the grouping factor, e.g. ``school``):

    * ``posterior``: ``fixed`` (``fixed_term``); ``sigma`` unless the level-1 variances are
      known; ``<g>_sd`` (``<g>_coef``); ``<g>_corr`` (``<g>_corr_pair``, one entry per free
      correlation, labelled ``"a,b"``) when a block has more than one coefficient;
      ``<g>_effect`` (``<g>``, ``<g>_coef``), the group deviations from the fixed part,
      for the groups whose draws are kept (``keep_group_draws``).
    * ``sample_stats``: ``lp`` (log marginal posterior of the variance components, up to a
      constant), ``accept_rate`` (mean acceptance probability of the variance-component
      moves of the sweep) and ``theta`` (``theta_index``: the variance components on the
      sampler's own unconstrained scale, :func:`theta_labels`).
    * ``log_likelihood``: the response's log-likelihood by observation (``obs``) or by
      group (``<g>``), as recorded in ``attrs["log_likelihood"]``.
    * ``observed_data``: the response (``obs``, each row's position in the data as given);
      ``constant_data``: each observation's group code ``<g>_index`` (the position of its
      group's label in the coordinate ``<g>``) and, when given, known standard deviation,
      precision weight (``weights``) and offset (``offset``; the observed response includes
      it).
    * ``group_moments`` (when ``kept_per_chain``, the kept draws of each chain, is given):
      ``<g>_effect_mean`` and ``<g>_effect_sd`` (``chain``, ``<g>``, ``<g>_coef``), the
      running posterior mean and SD of every group's coefficients in each chain, and
      ``n_draws`` (``chain``).

    ``log_lik``: the log-likelihood (chain, draw, observation or group) when the sampler
    computed it (a non-Gaussian level 1, whose chains evaluate every row at every draw);
    ``sample_stats.lp`` is then the log-likelihood of the whole response at the draw.
    """
    t0 = time.perf_counter()
    design = model.design
    chains = len(outputs)
    theta = np.stack([o.theta[:n_keep] for o in outputs])
    a_kernel = np.stack([o.a[:n_keep] for o in outputs])
    a = model.basis.fixed_values(a_kernel)
    n_theta = theta.shape[-1]
    d = len(design.coef_names)
    s2, sd, corr, _ = variance_components(model, theta.reshape(-1, n_theta))
    s2 = s2.reshape(chains, n_keep)
    sd = sd.reshape(chains, n_keep, d)
    corr = corr.reshape(chains, n_keep, d, d)
    g = dim_name(design.factor)
    posterior = {FIXED: a}
    coords = {FIXED_DIM: list(design.fixed_names), THETA_DIM: theta_labels(model)}
    if model.rows_held:
        coords[OBS] = np.asarray(design.kept_rows)
    dims = {FIXED: [FIXED_DIM]}
    if not model.sigma_known:
        posterior[SIGMA] = np.sqrt(s2)
    b = _stacked_group_draws(outputs, n_keep) if keep_group_draws is not False else None
    _, kept_pos = group_selection(model, keep_group_draws)
    offset = 0
    moments = {}
    for lev, (factor, (lo, hi), labels, names) in enumerate(factor_parts(model)):
        gk = dim_name(factor)
        cdim = coef_dim(gk)
        coords[cdim] = list(names)
        coords[gk] = [str(x) for x in labels]
        posterior[sd_var(gk)] = sd[:, :, lo:hi]
        dims[sd_var(gk)] = [cdim]
        pairs = corr_pairs(model, lo, hi)
        if pairs:
            posterior[corr_var(gk)] = np.stack([corr[:, :, i, j] for i, j in pairs], axis=-1)
            coords[corr_pair_dim(gk)] = [corr_pair_label(names[j - lo], names[i - lo]) for i, j in pairs]
            dims[corr_var(gk)] = [corr_pair_dim(gk)]
        if b is not None and len(kept_pos[lev]):
            n_k = len(kept_pos[lev])
            coords[gk] = [str(x) for x in labels[kept_pos[lev]]]
            posterior[effect_var(gk)] = b[:, :, offset:offset + n_k, lo:hi]
            dims[effect_var(gk)] = [gk, cdim]
            offset += n_k
        if kept_per_chain is not None:
            first = int(model.structure.node_ptr[lev])
            rows = slice(first, first + len(labels))
            count = np.array(kept_per_chain, dtype=np.float64)[:, None, None]
            mean = np.stack([o.b_moments[0, rows, lo:hi] for o in outputs])
            m2 = np.stack([o.b_moments[1, rows, lo:hi] for o in outputs])
            mom_sd = np.sqrt(m2 / np.maximum(count - 1.0, 1.0))
            moments[effect_mean_var(gk)] = xr.DataArray(
                mean, dims=("chain", gk, cdim),
                coords={gk: [str(x) for x in labels], cdim: list(names)})
            moments[effect_sd_var(gk)] = moments[effect_mean_var(gk)].copy(data=mom_sd)
    groups = {
        "posterior": (posterior, dims),
        "sample_stats": (
            {
                LP: np.stack([o.lp[:n_keep] for o in outputs]),
                ACCEPT_RATE: np.stack([o.accept[:n_keep] for o in outputs]),
                THETA: theta,
            },
            {THETA: [THETA_DIM]},
        ),
    }
    mode = loglik_mode(model, chains, n_keep, keep_group_draws, log_likelihood)
    response = design.response
    if mode:
        if b is not None and not model.crossed:  # crossed: the kernels gather each cell's coefficients
            b = finest_coefficients(model, b)
        ll = log_lik if log_lik is not None else _log_likelihood(model, s2, a, b, mode, a_kernel=a_kernel)
        groups["log_likelihood"] = ({response: ll}, {response: [OBS] if mode == "pointwise" else [g]})
    row_groups = _row_data(model) if model.rows_held else {}
    timings = {**timings, "results_seconds": time.perf_counter() - t0}
    attrs = {
        "formula": model.formula,
        "grouping_factor": design.factor,
        "grouping_factors": json.dumps(list(design.factors or ((design.factor,) if design.factor else ()))),
        "priors": json.dumps(dict(line.split(": ", 1) for line in model.prior_descriptions())),
        "sampler": json.dumps(settings),
        "seed": settings["seed"] if settings["seed"] < 2**63 else str(settings["seed"]),  # netCDF: int64
        "interrupted": settings["interrupted"],
        "log_likelihood": mode or "none",
        "n_dropped_rows": int(design.n_dropped),
        "n_obs": model.n_obs,
        "n_groups": json.dumps({f: int(len(lab)) for f, _, lab, _ in factor_parts(model)}),
        "versions": json.dumps(_versions()),
        "timings": json.dumps(timings),
        "sampling_time": timings["sampling_seconds"],
        "inference_library": "bayeshlm",
        "model": model._identity_json,
        "model_record": model._record_json,
    }
    tree = _build(groups, coords, attrs)
    for name, ds in row_groups.items():
        tree[name] = xr.DataTree(ds)
    timings["results_seconds"] = time.perf_counter() - t0  # the whole result, built
    tree.attrs["timings"] = json.dumps(timings)
    if kept_per_chain is not None:
        moments["n_draws"] = xr.DataArray(np.array(kept_per_chain, dtype=np.int64), dims=("chain",))
        tree["group_moments"] = xr.DataTree(xr.Dataset(moments, coords={"chain": np.arange(chains)}))
    return tree


def _read_only(x):
    """A read-only view of ``x``: a result shares the model's arrays, and must not change them."""
    v = np.asarray(x).view()
    v.flags.writeable = False
    return v


def _row_data(model):
    """``{"observed_data", "constant_data"}`` Datasets of a model holding its rows, sharing its arrays.

    Nothing is copied per row: the response and each row's group codes are read-only views
    of the design, and the ``obs`` coordinate (each row's position in the data, as given)
    is a range when no row was dropped, else an index built once per model. The group
    codes index the group labels, given beside them as a coordinate (``<g>``).
    """
    design = model.design
    coords = xr.Coordinates.from_xindex(PandasIndex(_obs_index(model), OBS))
    observed = xr.Dataset({design.response: (OBS, _read_only(design.response_values))}, coords=coords)
    constant = {}
    label_coords = {}
    for factor, _, labels, _ in factor_parts(model):
        g = dim_name(factor)
        idx = design.factor_idx[design.factors.index(factor)] if design.factors else design.group_idx
        constant[index_var(g)] = (OBS, _read_only(idx))
        label_coords[g] = [str(x) for x in labels]
    if design.obs_var is not None:
        constant[KNOWN_SD] = (OBS, np.sqrt(design.obs_var))
    if design.weights is not None:
        constant[WEIGHTS] = (OBS, _read_only(design.weights))
    if design.offset is not None:
        constant[OFFSET] = (OBS, _read_only(design.offset))
    ds = xr.Dataset(constant, coords=coords).assign_coords(label_coords)
    return {"observed_data": observed, "constant_data": ds}


def _obs_index(model):
    """The ``obs`` coordinate's index: a range when every row was kept, else the kept rows' positions (cached)."""
    rows = model.design.kept_rows
    n = rows.shape[0]
    if n == 0 or (rows[0] == 0 and rows[-1] == n - 1):  # increasing, distinct: the range 0 .. n-1
        return pd.RangeIndex(n)
    cache = model.__dict__.setdefault("_result_cache", {})
    if "obs_index" not in cache:
        cache["obs_index"] = pd.Index(np.asarray(rows))
    return cache["obs_index"]


def _build(groups, coords, attrs):
    """One ``DataTree`` from ``{group: (variables, dims)}``; each group gets only its coords."""
    from arviz_base import from_dict  # imported when a result is built, not with the package

    nodes = {}
    for group, (variables, dims) in groups.items():
        used = {dim for names in dims.values() for dim in names}
        extra = {} if group in ("posterior", "sample_stats", "log_likelihood") else {"sample_dims": []}
        tree = from_dict(
            {group: variables},
            coords={k: v for k, v in coords.items() if k in used},
            dims=dims,
            **extra,
        )
        nodes[group] = tree[group].to_dataset()
    dt = xr.DataTree.from_dict(nodes)
    dt.attrs.update(attrs)
    return dt
