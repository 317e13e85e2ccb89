"""Each group's log-likelihood from its statistics: equal to the rows' sum, at any scale, without the rows.

The default result of :func:`bayeshlm.sample` holds, for large data, the log-likelihood of
each finest group at each draw, computed as a quadratic form in per-group statistics kept
when the model is compiled (docs/design.md, "Per-group log-likelihood"). Here it is checked
against an independent row-by-row computation (``scipy.stats.norm.logpdf`` summed by group)
to a relative 1e-10, on the bundled data and on data whose columns are shifted far from
zero and scaled.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

import bayeshlm as bh
import samplers.suffstats as suffstats
from bayeshlm import results

GOLDEN = Path(__file__).parent / "golden"
OPTS = {"draws": 60, "warmup": 60, "chains": 2, "seed": 5, "progress": False}


def _rows_loglik(model, post, rounding=False):
    """``(chain, draw, group)`` log-likelihood of a two-level model, row by row with scipy, from the result alone.

    With ``rounding``, also the size of the rounding error that the user's units themselves
    carry: a mean ``mu`` near a large ``|y|`` is known to about ``eps (|y| + |mu|)``, which
    moves row ``i``'s log-likelihood by ``|y_i - mu_i| / sd^2`` times as much.
    """
    design = model.design
    p = post.posterior
    a = p["fixed"].values  # (chain, draw, n_fixed)
    g = results.dim_name(design.factor)
    b = p[f"{g}_effect"].values  # (chain, draw, group, coef)
    mu = np.einsum("iq,cdq->cdi", design.F, a) + np.einsum("ir,cdir->cdi", design.X, b[:, :, design.group_idx])
    sd = np.sqrt(design.obs_var) if design.obs_var is not None else p["sigma"].values[..., None]
    ll = st.norm.logpdf(design.y, loc=mu, scale=sd)
    if rounding:
        eps = np.finfo(np.float64).eps
        ll = np.abs(design.y - mu) / sd**2 * eps * (np.abs(design.y) + np.abs(mu))
    out = np.zeros(ll.shape[:2] + (model.n_groups,))
    for j in range(model.n_groups):
        out[..., j] = ll[..., design.group_idx == j].sum(axis=-1)
    return out


CASES = {
    "sleepstudy": ("sleepstudy", "reaction ~ days + (days | subject)", None),
    "hsb": ("hsb", "mathach ~ ses * sector + meanses + (ses | school)", None),
    "radon": ("radon", "log_radon ~ floor + (1 | county)", None),
    "eight_schools": ("eight_schools", "y ~ 1 + (1 | school)", "sigma"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_group_loglik_from_statistics_equals_the_rows(case):
    name, formula, known = CASES[case]
    model = bh.hlm(formula, bh.load_dataset(name), known_sd=known)
    assert results.group_stats_held(model)
    post = bh.sample(model, log_likelihood="group", **OPTS)
    assert post.attrs["log_likelihood"] == "group"
    got = post.log_likelihood[model.design.response].values
    np.testing.assert_allclose(got, _rows_loglik(model, post), rtol=1e-10, atol=0)


@pytest.mark.parametrize(("shift", "scale"), [(0.0, 1.0), (1e6, 1.0), (2015.0, 1e3), (-3e5, 1e-4)])
def test_shifted_and_scaled_columns(shift, scale):
    """Calendar years as the slope's column, the response moved far from zero or scaled: 1e-10 of the rows.

    Beyond that, only the rounding that the user's units carry (a response at -3e5 with a
    spread of 1e-4 is known to about 1e-7 of its spread): the statistics, in the kernels'
    centred basis, are the more exact of the two.
    """
    df = pd.read_csv(GOLDEN / "year_panel.csv")
    df["y"] = shift + scale * df["y"]
    model = bh.hlm("y ~ year + (year | unit)", df)
    post = bh.sample(model, log_likelihood="group", **OPTS)
    got, rows = post.log_likelihood["y"].values, _rows_loglik(model, post)
    bound = 1e-10 * np.abs(rows) + 4 * _rows_loglik(model, post, rounding=True)
    assert np.all(np.abs(got - rows) <= bound), np.max(np.abs(got - rows) / bound)
    if shift == 0.0 or scale == 1.0:  # a spread that the user's units hold to full precision
        np.testing.assert_allclose(got, rows, rtol=1e-10, atol=0)


def test_nested_groups_agree_with_the_row_kernel():
    """Three levels: each cask's log-likelihood, its batch's coefficient included, from statistics and from rows."""
    model = bh.hlm("strength ~ 1 + (1 | batch/cask)", bh.load_dataset("pastes"))
    post = bh.sample(model, log_likelihood="group", **OPTS)
    from_stats = post.log_likelihood["strength"].values
    rows_only = dataclasses.replace(model, stats=model.stats._replace(FtF_g=model.stats.FtF_g[:0]))
    assert not results.group_stats_held(rows_only)
    from_rows = bh.sample(rows_only, log_likelihood="group", **OPTS).log_likelihood["strength"].values
    np.testing.assert_allclose(from_stats, from_rows, rtol=1e-10, atol=0)
    assert from_stats.shape[-1] == len(model.design.factor_labels[0])  # one value per cask


def test_models_from_chunks_have_it_by_default():
    hsb = bh.load_dataset("hsb")
    formula = "mathach ~ ses + (ses | school)"
    part = bh.hlm_stats(formula, hsb, chunk_rows=1001)
    assert not part.rows_held
    post = bh.sample(part, **OPTS)
    assert post.attrs["log_likelihood"] == "group"
    full = bh.hlm(formula, hsb)
    rows = _rows_loglik(full, post)  # the draws of the chunked model, scored on the rows
    np.testing.assert_allclose(post.log_likelihood["mathach"].values, rows, rtol=1e-9, atol=0)


def test_auto_is_pointwise_when_small_and_by_group_from_statistics_when_large(monkeypatch):
    model = bh.hlm("reaction ~ days + (days | subject)", bh.load_dataset("sleepstudy"))
    assert bh.sample(model, **OPTS).attrs["log_likelihood"] == "pointwise"
    monkeypatch.setattr(results, "POINTWISE_LIMIT", 100)
    calls = []
    monkeypatch.setattr(results, "loglik_draws", lambda *a: calls.append(a))  # the rows must not be read
    post = bh.sample(model, **OPTS)
    assert post.attrs["log_likelihood"] == "group" and not calls
    assert post.log_likelihood["reaction"].dims == ("chain", "draw", "subject")


def test_without_per_group_fixed_statistics(monkeypatch):
    """Over the size limit the statistics keep no F_j'WF_j: the rows serve, or, with none, a clear refusal."""
    monkeypatch.setattr(suffstats, "GROUP_FIXED_LIMIT", 10)
    sleep = bh.load_dataset("sleepstudy")
    formula = "reaction ~ days + (days | subject)"
    model = bh.hlm(formula, sleep)
    assert model.stats.FtF_g.shape == (0, 2, 2) and not results.group_stats_held(model)
    post = bh.sample(model, log_likelihood="group", **OPTS)
    np.testing.assert_allclose(post.log_likelihood["reaction"].values, _rows_loglik(model, post), rtol=1e-10)
    part = bh.hlm_stats(formula, sleep, chunk_rows=50)
    assert "log_likelihood" not in bh.sample(part, **OPTS).children  # auto: nothing to compute it from
    with pytest.raises(ValueError, match="fixed-part statistics"):
        bh.sample(part, log_likelihood="group", **OPTS)


MARGINAL = {
    "sleepstudy": ("sleepstudy", "reaction ~ days + (days | subject)", None),
    "pastes": ("pastes", "strength ~ 1 + (1 | batch/cask)", None),
    "eight_schools": ("eight_schools", "y ~ 1 + (1 | school)", "sigma"),
}


@pytest.mark.parametrize("case", sorted(MARGINAL))
def test_marginal_group_loglik_from_statistics_equals_the_rows(case):
    """Leave-one-group-out's likelihood (each group's own coefficients integrated out) needs no rows either."""
    name, formula, known = MARGINAL[case]
    model = bh.hlm(formula, bh.load_dataset(name), known_sd=known)
    post = bh.sample(model, **OPTS)
    from_stats = bh.marginal_group_log_likelihood(model, post)
    rows_only = dataclasses.replace(model, stats=model.stats._replace(FtF_g=model.stats.FtF_g[:0]))
    from_rows = bh.marginal_group_log_likelihood(rows_only, post)
    np.testing.assert_allclose(from_stats, from_rows, rtol=1e-10, atol=0)


def test_marginal_group_loglik_of_a_chunked_model_on_calendar_years():
    df = pd.read_csv(GOLDEN / "year_panel.csv")
    full = bh.hlm("y ~ year + (year | unit)", df)
    part = bh.hlm_stats("y ~ year + (year | unit)", df, chunk_rows=100)
    assert full.identity() == part.identity()  # the same model: a result of one is a result of the other
    post = bh.sample(part, **OPTS)
    from_rows = bh.marginal_group_log_likelihood(dataclasses.replace(
        full, stats=full.stats._replace(FtF_g=full.stats.FtF_g[:0])), post)
    np.testing.assert_allclose(bh.marginal_group_log_likelihood(part, post), from_rows, rtol=1e-9, atol=0)
    loo = bh.loo(part, post, by="unit")  # leave-one-unit-out on a model that never held its rows
    assert np.isfinite(loo.elpd) and loo.n_data_points == part.n_groups
