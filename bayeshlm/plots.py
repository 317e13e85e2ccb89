"""Plots of a fitted model: group caterpillars, posterior predictive checks, MCMC diagnostics, EB vs posterior.

Every function takes the ``DataTree`` of :func:`bayeshlm.sample` and returns a matplotlib
``Figure`` (:func:`plot_trace` and :func:`plot_rank`, thin wrappers over arviz-plots, return
its ``PlotCollection``). matplotlib and arviz-plots are imported inside the functions, so
that importing :mod:`bayeshlm` does not import them.
"""

from __future__ import annotations

import numpy as np

from bayeshlm.results import flat_draws, grouping_factors
from bayeshlm.schema import FIXED, FIXED_DIM, coef_dim, dim_name, effect_var

MAX_LABELLED_GROUPS = 60  # caterpillar: group labels on the y axis up to this many groups


def _check_prob(ci_prob):
    if not 0.0 < ci_prob < 1.0:
        raise ValueError(f"ci_prob must be strictly between 0 and 1, got {ci_prob!r}")


def _figure(ax, figsize):
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
        return fig, ax
    return ax.figure, ax


def plot_caterpillar(posterior, coef="Intercept", *, factor=None, ci_prob=0.95, total=False, sort=True,
                     max_groups=None, ax=None):
    """Caterpillar plot: each group's coefficient, posterior mean and equal-tailed interval, one row per group.

    Parameters
    ----------
    posterior : xarray.DataTree
        From :func:`bayeshlm.sample`, with the group draws kept (``keep_group_draws``).
    coef : str
        Random coefficient of ``factor`` to show (a name of its ``<g>_coef`` coordinate,
        e.g. ``"Intercept"`` or ``"days"``).
    factor : str, optional
        Grouping factor (as in the formula, e.g. ``"district:school"``); default the finest.
    ci_prob : float
        Probability of the equal-tailed interval drawn for each group.
    total : bool
        If False (default), show the group deviations from the fixed part, with a reference
        line at zero. If True, add the draws of the fixed effect of the same name to the
        deviations (the group's own coefficient) and draw the reference line at the fixed
        effect's posterior mean; the coefficient must then also be a fixed term. With nested
        factors only this factor's deviation is added (not those of the groups above it).
    sort : bool
        Order the groups by posterior mean (lowest at the bottom); otherwise keep the order
        of the result.
    max_groups : int, optional
        Show at most this many groups: ranks evenly spaced over the groups sorted by
        posterior mean (the lowest and the highest included), so that the shape of the
        caterpillar is kept. Default all groups.
    ax : matplotlib.axes.Axes, optional
        Axes to draw on; default a new figure sized to the number of groups.

    Returns
    -------
    matplotlib.figure.Figure
        Group labels are on the y axis when at most 60 groups are shown.

    Raises
    ------
    ValueError
        On an unknown ``factor`` or ``coef`` (the message lists the available ones), when the
        posterior holds no group draws for the factor, when ``total`` is asked for a
        coefficient without a matching fixed term, or on a bad ``ci_prob`` or ``max_groups``.

    Examples
    --------
    >>> import bayeshlm as bh
    >>> from bayeshlm.plots import plot_caterpillar
    >>> model = bh.hlm("reaction ~ days + (days | subject)", bh.load_dataset("sleepstudy"))
    >>> fig = plot_caterpillar(bh.sample(model, seed=1, progress=False), "days", total=True)
    """
    _check_prob(ci_prob)
    factors = grouping_factors(posterior)
    if not factors:
        raise ValueError("the model has no grouping factor: there are no group coefficients to plot")
    factor = factors[0] if factor is None else factor
    if factor not in factors:
        raise ValueError(f"unknown grouping factor {factor!r}; available: {factors}")
    post = posterior.posterior
    g = dim_name(factor)
    name = effect_var(g)
    if name not in post:
        raise ValueError(
            f"the posterior has no group draws for {factor!r} (no variable {name!r}): "
            "sample with keep_group_draws=True to plot group coefficients"
        )
    coefs = [str(c) for c in post[name].coords[coef_dim(g)].values]
    if coef not in coefs:
        raise ValueError(f"unknown coefficient {coef!r} for factor {factor!r}; available: {coefs}")
    draws = flat_draws(post[name].sel({coef_dim(g): coef}).transpose("chain", "draw", g))
    ref, ref_label = 0.0, "zero deviation"
    if total:
        terms = [str(t) for t in post[FIXED].coords[FIXED_DIM].values]
        if coef not in terms:
            raise ValueError(f"total=True needs a fixed term named {coef!r}; fixed terms: {terms}")
        fixed = flat_draws(post[FIXED].sel({FIXED_DIM: coef}))
        draws = draws + fixed[:, None]
        ref = float(fixed.mean())
        ref_label = f"fixed effect ({ref:.4g})"
    labels = np.array([str(x) for x in post[name].coords[g].values])
    tail = (1.0 - ci_prob) / 2.0
    mean = draws.mean(axis=0)
    low, high = np.quantile(draws, [tail, 1.0 - tail], axis=0)
    by_mean = np.argsort(mean, kind="stable")
    chosen = by_mean
    if max_groups is not None:
        if int(max_groups) < 1:
            raise ValueError(f"max_groups must be a positive integer, got {max_groups!r}")
        if int(max_groups) < len(mean):
            ranks = np.unique(np.round(np.linspace(0, len(mean) - 1, int(max_groups))).astype(np.int64))
            chosen = by_mean[ranks]
    order = chosen if sort else np.sort(chosen)
    n = len(order)
    y = np.arange(n)
    labelled = n <= MAX_LABELLED_GROUPS
    new = ax is None
    fig, ax = _figure(ax, (6.0, min(max(3.0, 0.2 * n + 1.5), 14.0) if labelled else 6.0))
    ax.hlines(y, low[order], high[order], color="C0", lw=1.2 if n <= 100 else 0.6, label=f"{ci_prob:.0%} interval")
    ax.plot(mean[order], y, "o", color="C0", ms=3.5 if n <= 200 else 1.5, label="posterior mean")
    ax.axvline(ref, color="0.5", lw=0.8, ls="--", label=ref_label)
    if labelled:
        ax.set_yticks(y, labels[order], fontsize="small" if n <= 30 else "x-small")
    else:
        ax.set_yticks([])
    ax.set_ylim(-0.5, n - 0.5)
    shown = f"{n} of {len(mean)}" if n < len(mean) else f"{n}"
    ax.set_ylabel(f"{factor} ({shown} groups{', by posterior mean' if sort else ''})")
    ax.set_xlabel(f"{coef}: {'group coefficient' if total else 'deviation from the fixed part'}")
    ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=3, fontsize="small", frameon=False)
    if new:
        fig.tight_layout()
    return fig


def _silverman(x):
    """Silverman's rule-of-thumb bandwidth of a Gaussian kernel (a fallback when the spread is zero)."""
    x = np.asarray(x, dtype=np.float64)
    sd = np.std(x, ddof=1) if x.size > 1 else 0.0
    iqr = np.subtract(*np.quantile(x, [0.75, 0.25])) if x.size > 1 else 0.0
    spread = min(sd, iqr / 1.349) if iqr > 0 else sd
    if not spread > 0:
        spread = max(abs(float(x.mean())) if x.size else 0.0, 1.0) * 0.1
    return 0.9 * spread * max(x.size, 1) ** -0.2


def _binned_kde(x, grid, bw):
    """Gaussian kernel density of ``x`` on the equally spaced ``grid``.

    The values are binned to the nearest grid point, then convolved with the kernel: linear
    cost in the size of ``x``, however large.
    """
    dx = grid[1] - grid[0]
    idx = np.clip(np.rint((x - grid[0]) / dx).astype(np.int64), 0, grid.size - 1)
    counts = np.bincount(idx, minlength=grid.size).astype(np.float64)
    m = int(np.ceil(4.0 * bw / dx))
    offsets = np.arange(-m, m + 1) * dx
    kernel = np.exp(-0.5 * (offsets / bw) ** 2) / (bw * np.sqrt(2.0 * np.pi))
    return np.convolve(counts, kernel)[m:m + grid.size] / x.size


def _ppc_arrays(posterior):
    """``(name, observed (n,), replicated (chain * draw, n))`` of a result with a posterior predictive group."""
    if "posterior_predictive" not in posterior.children:
        raise ValueError(
            "the result has no posterior_predictive group: add one with "
            "bayeshlm.posterior_predictive(model, posterior) (bayeshlm.predict.posterior_predictive) first"
        )
    pp = posterior["posterior_predictive"]
    if "observed_data" not in posterior.children:
        raise ValueError("the result has no observed_data group to compare the replicated data with")
    observed = posterior["observed_data"]
    names = [v for v in observed.data_vars if v in pp.data_vars]
    if not names:
        raise ValueError(
            f"no variable of posterior_predictive {list(pp.data_vars)} matches the observed response "
            f"{list(observed.data_vars)}"
        )
    name = names[0]
    y = np.asarray(observed[name], dtype=np.float64).reshape(-1)
    rep = flat_draws(pp[name])
    rep = rep.reshape(rep.shape[0], -1)
    if rep.shape[1] != y.size:
        raise ValueError(f"posterior_predictive {name!r} has {rep.shape[1]} values per draw, observed {y.size}")
    return name, y, rep


def plot_ppc(posterior, *, kind="density", n_draws=50, seed=0, ax=None):
    """Posterior predictive check: the observed response against data sets replicated from the posterior.

    Parameters
    ----------
    posterior : xarray.DataTree
        From :func:`bayeshlm.sample`, with a ``posterior_predictive`` group added by
        ``bayeshlm.posterior_predictive`` (a variable named like the response, dimensions
        ``(chain, draw, obs)``).
    kind : {"density", "stat"}
        ``"density"``: the density of the observed response (thick line) over the densities
        of ``n_draws`` replicated data sets (thin lines), Gaussian kernel estimates sharing
        one bandwidth (Silverman's rule on the observed values) and one grid.
        ``"stat"``: two histograms, the mean and the SD of every replicated data set (all
        draws), each with the observed value marked and its posterior predictive p-value
        (share of replicated values at or above the observed one) in the title.
    n_draws : int
        Replicated data sets drawn (without replacement, all if there are fewer) for
        ``kind="density"``; not used by ``"stat"``.
    seed : int, optional
        Seed of the choice of the replicated data sets.
    ax : matplotlib.axes.Axes or sequence of two Axes, optional
        One axes for ``"density"``, two for ``"stat"``; default a new figure.

    Returns
    -------
    matplotlib.figure.Figure
        For ``"density"`` the axes holds ``min(n_draws, chains * draws) + 1`` lines.

    Raises
    ------
    ValueError
        When the result has no ``posterior_predictive`` group, on an unknown ``kind``, on
        ``n_draws < 1``, or when ``ax`` does not fit ``kind``.
    """
    if kind not in ("density", "stat"):
        raise ValueError(f"kind must be 'density' or 'stat', got {kind!r}")
    name, y, rep = _ppc_arrays(posterior)
    if kind == "stat":
        return _plot_ppc_stat(name, y, rep, ax)
    if int(n_draws) < 1:
        raise ValueError(f"n_draws must be at least 1, got {n_draws!r}")
    if ax is not None and not hasattr(ax, "plot"):
        raise ValueError("kind='density' draws on one matplotlib Axes")
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(rep.shape[0], size=min(int(n_draws), rep.shape[0]), replace=False))
    rep = rep[pick]
    bw = _silverman(y)
    lo = min(float(y.min()), float(rep.min())) - 3.0 * bw
    hi = max(float(y.max()), float(rep.max())) + 3.0 * bw
    grid = np.linspace(lo, hi, 512)
    new = ax is None
    fig, ax = _figure(ax, (6.0, 4.0))
    for i, r in enumerate(rep):
        ax.plot(grid, _binned_kde(r, grid, bw), color="C0", alpha=0.25, lw=0.7,
                label=f"replicated ({len(rep)} draws)" if i == 0 else "_nolegend_")
    ax.plot(grid, _binned_kde(y, grid, bw), color="k", lw=2.0, label="observed")
    ax.set_xlabel(name)
    ax.set_ylabel("density")
    ax.set_ylim(bottom=0.0)
    ax.legend(loc="best", fontsize="small")
    if new:
        fig.tight_layout()
    return fig


def _plot_ppc_stat(name, y, rep, ax):
    import matplotlib.pyplot as plt

    if ax is None:
        fig, axes = plt.subplots(1, 2, figsize=(8.0, 3.5))
    else:
        axes = list(np.ravel(np.asarray(ax, dtype=object)))
        if len(axes) != 2:
            raise ValueError("kind='stat' draws on two matplotlib Axes (mean and SD); pass a pair")
        fig = axes[0].figure
    ddof = 1 if y.size > 1 else 0
    for a, label, observed, replicated in zip(
        axes, ("mean", "SD"), (y.mean(), y.std(ddof=ddof)), (rep.mean(axis=1), rep.std(axis=1, ddof=ddof)),
        strict=True,
    ):
        a.hist(replicated, bins="auto", color="C0", alpha=0.6, label="replicated")
        a.axvline(observed, color="k", lw=2.0, label=f"observed ({observed:.4g})")
        p = float(np.mean(replicated >= observed))
        a.set_title(f"{label}: P(replicated >= observed) = {p:.2f}", fontsize="medium")
        a.set_xlabel(f"{label} of {name}")
        a.legend(loc="best", fontsize="x-small", framealpha=0.6)
    axes[0].set_ylabel("replicated data sets")
    if ax is None:
        fig.tight_layout()
    return fig


def _arviz_plot(name, posterior, var_names, kwargs):
    """``arviz_plots.<name>`` on the model parameters (not the group coefficients) by default, with matplotlib.

    Returns the matplotlib figure, like every plotting function of the package, with the
    ``arviz_plots.PlotCollection`` that drew it as its attribute ``plot_collection``.
    """
    import arviz_plots

    from bayeshlm.summary import parameter_vars

    if kwargs.setdefault("backend", "matplotlib") != "matplotlib":
        raise ValueError("the plots of bayeshlm are drawn with matplotlib; call arviz_plots directly for other "
                         "backends")
    if var_names is None:
        var_names = parameter_vars(posterior.posterior, include_groups=False)
    pc = getattr(arviz_plots, name)(posterior, var_names=var_names, **kwargs)
    fig = pc.viz["figure"].item()
    fig.plot_collection = pc
    return fig


def plot_reliability(model, posterior, coef="Intercept", *, eb=None, ci_prob=0.9, ax=None):
    """Each group's reliability of one random coefficient against its number of rows: posterior and EM.

    The posterior mean and equal-tailed interval of ``lambda_j`` per group
    (:func:`bayeshlm.reliability`), with the EM fit's plug-in value beside it when ``eb`` is
    given: small groups are the unreliable ones, and the interval shows how uncertain that is.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    from bayeshlm.reliability import reliability

    table = reliability(model, posterior, ci_prob=ci_prob).xs(coef, level="coef")
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    jitter = np.linspace(-0.15, 0.15, len(table)) if len(table) > 1 else np.zeros(1)
    x = table["n"].to_numpy(float) + jitter
    mean = table["reliability"].to_numpy()
    ax.errorbar(x, mean, yerr=[mean - table["reliability_lower"], table["reliability_upper"] - mean], fmt="o",
                ms=3, lw=0.8, alpha=0.7, label=f"posterior mean, {ci_prob:.0%} interval")
    if eb is not None:
        plug_in = reliability(model, eb).xs(coef, level="coef")
        ax.plot(x, plug_in["reliability"], "x", color="k", ms=4, label="EM plug-in value")
    ax.set_xlabel("rows in the group")
    ax.set_ylabel(f"reliability of {coef}")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8, loc="lower right")
    return ax.figure


def plot_trace(posterior, var_names=None, **kwargs):
    """Trace plot (marginal density and draws by iteration, per chain) of the model parameters.

    A thin wrapper over :func:`arviz_plots.plot_trace_dist` with the matplotlib backend. Each
    scalar gets its own row, labelled with its variable and term (``fixed`` / ``days``), and
    the chains their own colours: the terms of a vector such as ``fixed`` differ in scale and
    could not be told apart in one panel (``compact=True`` overlays them).

    Parameters
    ----------
    posterior : xarray.DataTree
        From :func:`bayeshlm.sample`.
    var_names : str or list of str, optional
        Posterior variables to show; default the non-group parameters, ``fixed``, ``sigma``,
        every ``<g>_sd`` and ``<g>_corr`` (not the group coefficients ``<g>_effect``).
    **kwargs
        Passed to :func:`arviz_plots.plot_trace_dist` (e.g. ``coords``, ``compact``,
        ``combined``, ``kind``; ``backend`` defaults to ``"matplotlib"``, ``compact`` to False).

    Returns
    -------
    matplotlib.figure.Figure
        One row per scalar parameter, columns ``dist`` and ``trace``;
        ``fig.plot_collection`` is the ``arviz_plots.PlotCollection`` that drew it.
    """
    kwargs.setdefault("compact", False)
    return _arviz_plot("plot_trace_dist", posterior, var_names, kwargs)


def plot_rank(posterior, var_names=None, **kwargs):
    """Rank plot (fractional-rank ECDF of each chain against the uniform one) of the model parameters.

    A thin wrapper over :func:`arviz_plots.plot_rank` with the matplotlib backend. Each curve
    is a chain's rank ECDF minus the uniform ECDF: chains that sample the same distribution
    stay near zero. With arviz_plots' default test (``method="mtc_c"``) no band is drawn:
    the stretches where a chain departs further than chance allows, by a test of all chains
    corrected for the many ranks it looks at, are drawn in black, and the test's p-value is
    printed on the panel. ``method="envelope"`` draws a simultaneous band instead.

    Parameters
    ----------
    posterior : xarray.DataTree
        From :func:`bayeshlm.sample`.
    var_names : str or list of str, optional
        Posterior variables to show; default the non-group parameters, ``fixed``, ``sigma``,
        every ``<g>_sd`` and ``<g>_corr`` (not the group coefficients ``<g>_effect``).
    **kwargs
        Passed to :func:`arviz_plots.plot_rank` (e.g. ``coords``, ``envelope_prob``;
        ``backend`` defaults to ``"matplotlib"``).

    Returns
    -------
    matplotlib.figure.Figure
        One panel per scalar parameter (per coordinate value of a vector variable);
        ``fig.plot_collection`` is the ``arviz_plots.PlotCollection`` that drew it.
    """
    return _arviz_plot("plot_rank", posterior, var_names, kwargs)


def plot_compare(posterior, eb, *, ci_prob=0.95, ax=None):
    """EB/ML point estimates and Wald intervals beside the posterior, one row per parameter, standardised.

    Each row is one parameter of :func:`bayeshlm.compare` (fixed effects, ``sigma``, group
    SDs, correlations). To keep parameters of very different scales readable on one axis,
    every row is standardised by its own posterior: the x axis is
    ``(value - posterior mean) / posterior SD``, so the posterior interval sits around 0
    and the EB estimate lands at the table's ``difference_in_sd`` (sign flipped). The values
    on the natural scale (posterior mean and EB estimate) are written at the right of each
    row.

    Parameters
    ----------
    posterior : xarray.DataTree
        From :func:`bayeshlm.sample`.
    eb : EMResult
        From :func:`bayeshlm.fit_em` on the same model.
    ci_prob : float
        Probability of both intervals: the posterior's equal-tailed interval, and the EB
        estimate ``+/- z * SE`` with ``z`` the normal quantile (1.96 at the default 0.95), drawn
        where the EMResult has a standard error (model-based for the fixed effects, observed
        information for the variance components; none on the boundary, where only the point
        is drawn). The Wald interval of an SD is symmetric and may cross zero.
    ax : matplotlib.axes.Axes, optional
        Axes to draw on; default a new figure.

    Returns
    -------
    matplotlib.figure.Figure
        The parameters are the y tick labels, top to bottom in the order of
        :func:`bayeshlm.compare`.
    """
    from scipy.stats import norm

    from bayeshlm.compare import compare

    _check_prob(ci_prob)
    table = compare(posterior, eb, ci_prob=ci_prob)
    n = len(table)
    z = float(norm.ppf(0.5 + ci_prob / 2.0))
    scale = table["post_sd"].to_numpy(dtype=np.float64)
    scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
    centre = table["post_mean"].to_numpy(dtype=np.float64)

    def std(col):
        return (np.asarray(col, dtype=np.float64) - centre) / scale

    est = table["eb_estimate"].to_numpy(dtype=np.float64)
    se = table["eb_se"].to_numpy(dtype=np.float64)
    y = np.arange(n)[::-1].astype(np.float64)  # first row at the top
    new = ax is None
    height = max(2.5, 0.45 * n + 1.5)
    fig, ax = _figure(ax, (7.0, height))
    if new:
        fig.subplots_adjust(left=0.3, right=0.82, top=1.0 - 0.75 / height, bottom=0.6 / height)
    ax.hlines(y + 0.12, std(table["ci_low"]), std(table["ci_high"]), color="C0", lw=1.5,
              label=f"posterior: mean, {ci_prob:.0%} interval")
    ax.plot(np.zeros(n), y + 0.12, "o", color="C0", ms=4)
    has_se = np.isfinite(se)
    method = str(getattr(eb, "method", "eb")).upper()
    ax.hlines(y[has_se] - 0.12, std(est - z * se)[has_se], std(est + z * se)[has_se], color="C1", lw=1.5,
              label=f"{method}: estimate +/- {z:.2f} SE")
    ax.plot(std(est), y - 0.12, "s", color="C1", ms=4)
    ax.axvline(0.0, color="0.8", lw=0.8, zorder=0)
    for yi, m, e in zip(y, centre, est, strict=True):
        ax.annotate(f"{m:.4g} | {e:.4g}", (1.01, yi), xycoords=("axes fraction", "data"), va="center",
                    fontsize="x-small", annotation_clip=False)
    ax.set_yticks(y, list(table.index), fontsize="small")
    ax.set_ylim(-0.6, n - 0.4)
    ax.set_xlabel("(value - posterior mean) / posterior SD")
    ax.annotate(f"posterior mean |\n{method} estimate", (1.01, 1.0), xycoords="axes fraction", va="bottom",
                fontsize="x-small")
    ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), fontsize="small", frameon=False)
    return fig
