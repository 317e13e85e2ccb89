"""bayeshlm.plots: every plot renders, has the expected elements, and fails clearly on bad input."""

import io
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import xarray as xr  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402

import bayeshlm as bh  # noqa: E402
from bayeshlm.plots import plot_caterpillar, plot_compare, plot_ppc, plot_rank, plot_trace  # noqa: E402

N_SUBJECTS = 18


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def sleep_model():
    return bh.hlm("reaction ~ days + (days | subject)", bh.load_dataset("sleepstudy"))


@pytest.fixture(scope="module")
def sleep_post(sleep_model):
    return bh.sample(sleep_model, chains=2, draws=100, warmup=100, seed=1, progress=False)


@pytest.fixture(scope="module")
def sleep_eb(sleep_model):
    return bh.fit_em(sleep_model, "reml")


@pytest.fixture(scope="module")
def sleep_ppc(sleep_model, sleep_post):
    """A copy of the result with a posterior_predictive group simulated from the posterior draws.

    y_rep = F fixed + X effect[group] + sigma * noise, laid out like observed_data.
    """
    design = sleep_model.design
    post = sleep_post.posterior
    fixed = post["fixed"].transpose("chain", "draw", "fixed_term").values
    effect = post["subject_effect"].transpose("chain", "draw", "subject", "subject_coef").values
    sigma = post["sigma"].transpose("chain", "draw").values
    mu = np.einsum("cdp,np->cdn", fixed, design.F)
    mu += np.einsum("cdnk,nk->cdn", effect[:, :, design.group_idx, :], design.X)
    rng = np.random.default_rng(7)
    y_rep = mu + sigma[:, :, None] * rng.standard_normal(mu.shape)
    observed = sleep_post["observed_data"]
    name = next(iter(observed.data_vars))
    ds = xr.Dataset(
        {name: (("chain", "draw", "obs"), y_rep)},
        coords={"chain": post["chain"].values, "draw": post["draw"].values, "obs": observed["obs"].values},
    )
    tree = sleep_post.copy()
    tree["posterior_predictive"] = xr.DataTree(ds)
    return tree


def _renders(fig):
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    assert buf.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"


def _intervals(ax):
    (coll,) = [c for c in ax.collections if isinstance(c, LineCollection)]
    return coll.get_segments()


def _tick_texts(ax):
    return [t.get_text() for t in ax.get_yticklabels()]


# -- caterpillar --------------------------------------------------------------------------


def test_importing_bayeshlm_does_not_import_matplotlib():
    code = "import sys, bayeshlm, bayeshlm.plots; print(any(m.startswith('matplotlib') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_caterpillar_one_interval_per_group(sleep_post):
    fig = plot_caterpillar(sleep_post)
    _renders(fig)
    (ax,) = fig.axes
    segments = _intervals(ax)
    assert len(segments) == N_SUBJECTS
    labels = _tick_texts(ax)
    assert len(labels) == N_SUBJECTS
    assert set(labels) == set(sleep_post.posterior["subject"].values.astype(str))
    # sorted by posterior mean, lowest at the bottom
    effect = sleep_post.posterior["subject_effect"].sel(subject_coef="Intercept").mean(("chain", "draw"))
    means = effect.sel(subject=labels).values
    assert np.all(np.diff(means) >= 0)
    # the interval contains the posterior mean; the zero line is drawn
    mean_line = ax.lines[0]
    for seg, m in zip(segments, mean_line.get_xdata(), strict=True):
        assert seg[0][0] <= m <= seg[1][0]
    assert any(np.allclose(line.get_xdata(), 0.0) for line in ax.lines[1:])


def test_caterpillar_total_adds_fixed_effect(sleep_post):
    fig = plot_caterpillar(sleep_post, "days", total=True, sort=False, ci_prob=0.5)
    _renders(fig)
    ax = fig.axes[0]
    post = sleep_post.posterior
    labels = _tick_texts(ax)
    assert labels == list(post["subject"].values.astype(str))  # stored order
    total = (post["subject_effect"].sel(subject_coef="days") + post["fixed"].sel(fixed_term="days"))
    np.testing.assert_allclose(ax.lines[0].get_xdata(), total.mean(("chain", "draw")).values)
    fixed_mean = float(post["fixed"].sel(fixed_term="days").mean())
    assert any(np.allclose(line.get_xdata(), fixed_mean) for line in ax.lines[1:])


def test_caterpillar_max_groups_and_given_axes(sleep_post):
    fig, ax = plt.subplots()
    out = plot_caterpillar(sleep_post, max_groups=5, ax=ax)
    assert out is fig
    _renders(fig)
    assert len(_intervals(ax)) == 5
    labels = _tick_texts(ax)
    effect = sleep_post.posterior["subject_effect"].sel(subject_coef="Intercept").mean(("chain", "draw"))
    ranked = list(effect.to_series().sort_values().index)
    assert labels[0] == ranked[0] and labels[-1] == ranked[-1]  # the extremes are kept


def test_caterpillar_errors(sleep_post):
    with pytest.raises(ValueError, match=r"available: \['Intercept', 'days'\]"):
        plot_caterpillar(sleep_post, "slope")
    with pytest.raises(ValueError, match=r"available: \['subject'\]"):
        plot_caterpillar(sleep_post, factor="school")
    with pytest.raises(ValueError, match="ci_prob"):
        plot_caterpillar(sleep_post, ci_prob=1.5)
    with pytest.raises(ValueError, match="max_groups"):
        plot_caterpillar(sleep_post, max_groups=0)


def test_caterpillar_total_needs_fixed_term():
    data = bh.load_dataset("sleepstudy")
    model = bh.hlm("reaction ~ 1 + (days | subject)", data)
    post = bh.sample(model, chains=1, draws=20, warmup=20, seed=2, progress=False)
    with pytest.raises(ValueError, match="fixed term named 'days'"):
        plot_caterpillar(post, "days", total=True)
    _renders(plot_caterpillar(post, "days"))


def test_caterpillar_without_group_draws(sleep_model):
    post = bh.sample(sleep_model, chains=1, draws=20, warmup=20, seed=3, progress=False, keep_group_draws=False)
    with pytest.raises(ValueError, match="keep_group_draws=True"):
        plot_caterpillar(post)


def test_caterpillar_coarser_factor_of_nested_model():
    data = bh.simulate_nested(seed=1)
    model = bh.hlm(data.attrs["formula"], data)
    post = bh.sample(model, chains=2, draws=50, warmup=50, seed=1, progress=False)
    n_districts = data["district"].nunique()
    n_schools = data.groupby(["district", "school"]).ngroups
    fig = plot_caterpillar(post, factor="district")
    _renders(fig)
    ax = fig.axes[0]
    assert len(_intervals(ax)) == n_districts
    assert set(_tick_texts(ax)) == set(data["district"].astype(str))
    fig = plot_caterpillar(post, factor="district:school", total=True)
    _renders(fig)
    assert len(_intervals(fig.axes[0])) == n_schools
    # the finest factor has more than 60 groups: no labels, but every interval
    n_classes = data.groupby(["district", "school", "class"]).ngroups
    assert n_classes > 60
    fig = plot_caterpillar(post, "x")
    _renders(fig)
    assert len(_intervals(fig.axes[0])) == n_classes
    assert _tick_texts(fig.axes[0]) == []
    with pytest.raises(ValueError, match="'Intercept'"):
        plot_caterpillar(post, "x", factor="district")


# -- posterior predictive check -----------------------------------------------------------


def test_ppc_density_lines(sleep_ppc):
    fig = plot_ppc(sleep_ppc, n_draws=30, seed=4)
    _renders(fig)
    (ax,) = fig.axes
    assert len(ax.lines) == 31
    observed = ax.lines[-1]
    x, dens = observed.get_xdata(), observed.get_ydata()
    assert np.all(dens >= 0)
    assert np.trapezoid(dens, x) == pytest.approx(1.0, abs=0.02)
    for line in ax.lines[:-1]:
        np.testing.assert_array_equal(line.get_xdata(), x)


def test_ppc_density_more_draws_than_available(sleep_ppc):
    fig, ax = plt.subplots()
    assert plot_ppc(sleep_ppc, n_draws=10_000, ax=ax) is fig
    assert len(ax.lines) == 2 * 100 + 1


def test_ppc_density_default_and_seed(sleep_ppc):
    first = plot_ppc(sleep_ppc).axes[0]
    assert len(first.lines) == 50 + 1
    again = plot_ppc(sleep_ppc).axes[0]
    np.testing.assert_array_equal(first.lines[0].get_ydata(), again.lines[0].get_ydata())


def test_ppc_stat(sleep_ppc):
    fig = plot_ppc(sleep_ppc, kind="stat")
    _renders(fig)
    assert len(fig.axes) == 2
    y = sleep_ppc["observed_data"]["reaction"].values
    for ax, observed in zip(fig.axes, (y.mean(), y.std(ddof=1)), strict=True):
        assert len(ax.patches) > 0  # histogram bars
        (line,) = ax.lines
        assert line.get_xdata()[0] == pytest.approx(observed)


def test_ppc_errors(sleep_post, sleep_ppc):
    with pytest.raises(ValueError, match="posterior_predictive"):
        plot_ppc(sleep_post)
    assert "posterior_predictive" not in sleep_post.children  # the fixture did not change it
    with pytest.raises(ValueError, match="kind"):
        plot_ppc(sleep_ppc, kind="violin")
    with pytest.raises(ValueError, match="n_draws"):
        plot_ppc(sleep_ppc, n_draws=0)
    _, ax = plt.subplots()
    with pytest.raises(ValueError, match="two"):
        plot_ppc(sleep_ppc, kind="stat", ax=[ax])


# -- trace and rank -----------------------------------------------------------------------

DEFAULT_VARS = ["fixed", "sigma", "subject_sd", "subject_corr"]


def test_trace_defaults_to_non_group_parameters(sleep_post):
    pc = plot_trace(sleep_post).plot_collection
    plots = pc.viz["plot"]
    assert sorted(plots.data_vars) == sorted(DEFAULT_VARS)
    assert list(plots["column"].values) == ["dist", "trace"]
    axes = {id(a) for v in plots.data_vars for a in np.ravel(plots[v].values)}
    # a row per scalar (2 fixed + 1 sigma + 2 sd + 1 corr), each with its dist and trace panels
    assert len(axes) == 2 * 6
    # one trace line per chain and coordinate, 2 chains
    assert sum(pc.viz["trace"][v].size for v in DEFAULT_VARS) == 2 * 6
    fig = pc.viz["figure"].item()
    # the terms of `fixed` are told apart: each row is labelled with its term, not overlaid unlabelled
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert "fixed\nIntercept" in labels and "fixed\ndays" in labels
    _renders(fig)


def test_trace_var_names(sleep_post):
    pc = plot_trace(sleep_post, var_names=["sigma"]).plot_collection
    assert list(pc.viz["plot"].data_vars) == ["sigma"]
    _renders(pc.viz["figure"].item())


def test_rank_panel_per_scalar_parameter(sleep_post):
    pc = plot_rank(sleep_post).plot_collection
    plots = pc.viz["plot"]
    assert sorted(plots.data_vars) == sorted(DEFAULT_VARS)
    # one panel per scalar: 2 fixed + sigma + 2 sd + 1 corr
    assert sum(plots[v].size for v in plots.data_vars) == 6
    _renders(pc.viz["figure"].item())


def test_rank_var_names(sleep_post):
    pc = plot_rank(sleep_post, var_names=["fixed"]).plot_collection
    assert list(pc.viz["plot"].data_vars) == ["fixed"]
    assert pc.viz["plot"]["fixed"].size == 2


def test_every_plot_returns_a_figure(sleep_post, sleep_eb):
    """One return type: each plotting function gives a matplotlib figure."""
    from matplotlib.figure import Figure

    figures = [plot_trace(sleep_post), plot_rank(sleep_post), bh.plot_caterpillar(sleep_post),
               bh.plot_compare(sleep_post, sleep_eb), bh.plot_shrinkage(sleep_post, sleep_eb)]
    assert all(isinstance(f, Figure) for f in figures)


# -- EB vs posterior ----------------------------------------------------------------------


def test_compare_one_row_per_parameter(sleep_post, sleep_eb):
    fig = plot_compare(sleep_post, sleep_eb)
    _renders(fig)
    (ax,) = fig.axes
    table = bh.compare(sleep_post, sleep_eb)
    labels = _tick_texts(ax)
    assert labels == list(table.index)
    assert len(labels) == 2 + 1 + 2 + 1  # fixed, sigma, SDs, correlation
    post_iv, eb_iv = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert len(post_iv.get_segments()) == len(labels)
    assert len(eb_iv.get_segments()) == int(np.isfinite(table["eb_se"]).sum())
    # standardised: the EB estimate sits at -difference_in_sd, the posterior mean at 0
    eb_points = ax.lines[1].get_xdata()
    np.testing.assert_allclose(eb_points, -table["difference_in_sd"].to_numpy(), rtol=1e-6)
    np.testing.assert_array_equal(ax.lines[0].get_xdata(), 0.0)


def test_compare_given_axes_and_prob(sleep_post, sleep_eb):
    fig, ax = plt.subplots()
    assert plot_compare(sleep_post, sleep_eb, ci_prob=0.8, ax=ax) is fig
    _renders(fig)
    with pytest.raises(ValueError, match="ci_prob"):
        plot_compare(sleep_post, sleep_eb, ci_prob=0.0)
