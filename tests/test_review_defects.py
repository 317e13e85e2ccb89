"""Statistical defects found on review (issue 18, part 6), each case with its expected result.

* ``lrt`` recognises a model that adds a whole level, and a statistic that is zero up to
  rounding gives p = 1;
* ``Hierarchy`` refuses levels declared top-down or with labels repeated across the level
  above unless told so, and never pools them;
* a predictor meant at level 2 that varies within its groups is warned about, by the
  builder and by ``hlm``, and ordinary models get no such warning;
* the nesting-trap message suggests the right nesting, and none for crossed factors;
* ``shrinkage_table`` and ``plot_shrinkage`` compare whole group coefficients with whole
  group coefficients (level-2 predictors and cross-level terms included), or deviations
  with deviations.
"""

import dataclasses

import numpy as np
import pandas as pd
import pytest
from scipy.stats import chi2

import bayeshlm as bh


@pytest.fixture(scope="module")
def pastes():
    return bh.load_dataset("pastes")


# ---------------------------------------------------------------------------
# Likelihood-ratio tests


@pytest.mark.parametrize("method", ["ml", "reml"])
def test_lrt_of_a_whole_level_uses_the_boundary_mixture(pastes, method):
    small = bh.fit_em(bh.hlm("strength ~ 1 + (1 | batch)", pastes), method)
    large = bh.fit_em(bh.hlm("strength ~ 1 + (1 | batch/cask)", pastes), method)
    test = bh.lrt(small, large)
    assert test.df == 1 and test.mixture
    assert test.statistic == pytest.approx(2 * (large.loglik - small.loglik), rel=1e-12)
    # one variance on its boundary: 0.5 chi2(0) + 0.5 chi2(1), half the naive p-value
    assert test.p_value == pytest.approx(0.5 * chi2.sf(test.statistic, 1), rel=1e-12)
    assert test.p_value_naive == pytest.approx(2 * test.p_value, rel=1e-12)
    assert "adding the level 'batch:cask' (random Intercept)" in str(test)


def test_lrt_statistic_zero_up_to_rounding_gives_p_one(pastes):
    small = bh.fit_em(bh.hlm("strength ~ 1 + (1 | batch)", pastes), "ml")
    large = bh.fit_em(bh.hlm("strength ~ 1 + (1 | batch/cask)", pastes), "ml")
    on_boundary = dataclasses.replace(large, loglik=small.loglik + 5e-14)  # LR = 1e-13
    test = bh.lrt(small, on_boundary)
    assert test.statistic == 0.0 and test.p_value == 1.0 and test.p_value_naive == 1.0
    # a small statistic that is not rounding keeps the mixture's p-value (about 0.49, not 1)
    barely = bh.lrt(small, dataclasses.replace(large, loglik=small.loglik + 1e-4))
    assert barely.p_value == pytest.approx(0.5 * chi2.sf(2e-4, 1), rel=1e-12)


def test_lrt_on_data_with_no_variance_at_the_added_level():
    """Casks that do not differ within batches: the ML estimate of their SD is at the boundary."""
    rng = np.random.default_rng(4)  # a seed whose ML fit puts the cask SD on the boundary
    batch = np.repeat([f"B{i}" for i in range(10)], 6)
    cask = np.tile(np.repeat(list("abc"), 2), 10)
    y = 60 + rng.normal(0, 1.5, 10)[np.repeat(np.arange(10), 6)] + rng.normal(0, 1, 60)
    data = pd.DataFrame({"y": y, "batch": batch, "cask": cask})
    small = bh.fit_em(bh.hlm("y ~ 1 + (1 | batch)", data), "ml")
    large = bh.fit_em(bh.hlm("y ~ 1 + (1 | batch/cask)", data), "ml")
    assert "Intercept|batch:cask" in large.boundary
    assert abs(2 * (large.loglik - small.loglik)) < 1e-8  # zero up to the optimiser's rounding
    test = bh.lrt(small, large)
    assert test.statistic == 0.0 and test.p_value == 1.0


def test_lrt_refuses_models_that_are_not_nested(pastes):
    by_cask = bh.fit_em(bh.hlm("strength ~ 1 + (1 | cask)", pastes), "ml")
    nested = bh.fit_em(bh.hlm("strength ~ 1 + (1 | batch/cask)", pastes), "ml")
    with pytest.raises(ValueError, match="random Intercept .*is not in the second model: the models are not nested"):
        bh.lrt(by_cask, nested)
