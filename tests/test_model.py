"""The compiled Model value: repr, with_data, dropped rows carried into the result."""

import json

import numpy as np
import pytest

import bayeshlm as bh


@pytest.fixture(scope="module")
def sleep():
    return bh.load_dataset("sleepstudy")


def test_repr_describes_the_model(sleep):
    text = repr(bh.hlm("reaction ~ days + (days | subject)", sleep))
    assert "observations: 180" in text
    assert "level 2: subject (18 groups), random Intercept, days" in text
    assert "fixed effects: Intercept, days" in text
    assert "covariance blocks of size 2" in text
    assert "estimated" in text


def test_with_data_keeps_formula_and_priors(sleep):
    model = bh.hlm("reaction ~ days + (days || subject)", sleep, priors={"sd": bh.HalfNormal(40)})
    half = sleep[sleep["subject"].isin(sleep["subject"].unique()[:9])]
    smaller = model.with_data(half)
    assert smaller.formula == model.formula
    assert smaller.n_groups == 9 and smaller.n_obs == 90
    assert smaller.prior_spec == model.prior_spec  # priors kept, not rescaled to the new data
    assert smaller.design.block_sizes == (1, 1)


def test_dropped_rows_are_counted_in_the_result(sleep):
    holed = sleep.copy()
    holed.loc[[3, 50, 51], "reaction"] = np.nan
    with pytest.raises(bh.DataError, match="reaction"):
        bh.hlm("reaction ~ days + (days | subject)", holed)
    model = bh.hlm("reaction ~ days + (days | subject)", holed, missing="drop")
    assert model.n_obs == 177 and model.design.n_dropped == 3
    post = bh.sample(model, draws=30, warmup=30, chains=1, seed=1, progress=False)
    assert post.attrs["n_dropped_rows"] == 3
    assert 3 not in post.observed_data["obs"].values  # observations keep their row labels
    assert json.loads(post.attrs["sampler"])["draws"] == 30


def test_repr_of_nested_and_builder_models():
    df = bh.load_dataset("pastes")
    text = repr(bh.hlm("strength ~ 1 + (1 | batch/cask)", df))
    assert "level 2: batch:cask (30 groups), random Intercept" in text
    assert "level 3: batch (10 groups), random Intercept" in text
    model = bh.Hierarchy("strength").level("cask", {"Intercept": bh.Equation()}, labels="within").level(
        "batch", {"Intercept": bh.Equation()}).compile(df)
    text = repr(model)
    assert "Level 2 (cask)" in text and "Level 3 (batch)" in text
    # the equations survive with_data
    assert "Level 3 (batch)" in repr(model.with_data(df.iloc[:30]))
