"""Leaving out a group of a coarser factor: its log-likelihood against the dense multivariate normal.

A batch of pastes (with its three casks), a district of a simulated three-level model with
random slopes in the schools: for every draw checked, the group's rows are
``N(F a + coarser draws, s2 I + Z_fine T_fine Z_fine' + Z_own T_own Z_own')``, computed densely
here; the recursion agrees to 1e-9 (rounding only, no Monte Carlo tolerance).
"""

import warnings

import numpy as np
import pytest
from scipy import stats

import bayeshlm as bh


def _sample(model, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bh.ConvergenceWarning)
        return bh.sample(model, progress=False, **kwargs)


def _flat(da):
    return da.transpose("chain", "draw", ...).values.reshape(-1, *da.shape[2:])


def test_a_batch_with_its_casks_is_the_dense_normal():
    model = bh.hlm("strength ~ 1 + (1 | batch/cask)", bh.load_dataset("pastes"))
    post = _sample(model, chains=2, draws=10, warmup=50, seed=1)
    ours = bh.marginal_group_log_likelihood(model, post, factor="batch").reshape(20, -1)
    p, design = post.posterior, model.design
    a, s, sc, sb = (_flat(p[v]).reshape(20, -1)[:, 0] for v in ("fixed", "sigma", "batch_cask_sd", "batch_sd"))
    for k in range(20):
        for g in range(10):
            rows = design.factor_idx[1] == g
            cask = design.factor_idx[0][rows]
            V = s[k] ** 2 * np.eye(rows.sum()) + sc[k] ** 2 * (cask[:, None] == cask[None, :]) + sb[k] ** 2
            dense = stats.multivariate_normal(np.full(rows.sum(), a[k]), V).logpdf(design.y[rows])
            assert ours[k, g] == pytest.approx(dense, rel=1e-9)


def test_a_district_with_its_schools_slopes_and_the_units():
    data = bh.simulate_nested(levels=(("district", 5), ("school", 3)), rows=(3, 6), seed=3)
    model = bh.hlm("y ~ x + (1 | district) + (x | district:school)", data)
    post = _sample(model, chains=1, draws=6, warmup=100, seed=2)
    ours = bh.marginal_group_log_likelihood(model, post, factor="district").reshape(6, -1)
    p, design = post.posterior, model.design
    a, sigma = _flat(p["fixed"]), _flat(p["sigma"])
    sd_s, corr_s = _flat(p["district_school_sd"]), _flat(p["district_school_corr"])[:, 0]
    sd_d = _flat(p["district_sd"])[:, 0]
    k_school, k_district = design.factors.index("district:school"), design.factors.index("district")
    X = design.X[:, :2] if k_school == 0 else design.X[:, 1:3]
    for k in range(6):
        T = np.array([[sd_s[k, 0] ** 2, corr_s[k] * sd_s[k, 0] * sd_s[k, 1]],
                      [corr_s[k] * sd_s[k, 0] * sd_s[k, 1], sd_s[k, 1] ** 2]])
        for g in range(5):
            rows = design.factor_idx[k_district] == g
            school = design.factor_idx[k_school][rows]
            Xg = X[rows]
            same = school[:, None] == school[None, :]
            V = sigma[k] ** 2 * np.eye(rows.sum()) + same * (Xg @ T @ Xg.T) + sd_d[k] ** 2
            mean = design.F[rows] @ a[k]
            assert ours[k, g] == pytest.approx(stats.multivariate_normal(mean, V).logpdf(design.y[rows]), rel=1e-9)
    # a response in other units: the same model, each group's log-likelihood moved by -n_g log(scale)
    moved = bh.hlm("y ~ x + (1 | district) + (x | district:school)", data.assign(y=5e5 + 1000 * data["y"]))
    other = _sample(moved, chains=1, draws=6, warmup=100, seed=2)
    n_g = np.bincount(design.factor_idx[k_district])
    np.testing.assert_allclose(bh.marginal_group_log_likelihood(moved, other, factor="district").reshape(6, -1),
                               ours - n_g * np.log(1000), rtol=1e-6)


def test_loo_leaves_out_groups_of_every_level():
    model = bh.hlm("strength ~ 1 + (1 | batch/cask)", bh.load_dataset("pastes"))
    post = _sample(model, chains=2, draws=200, warmup=200, seed=5)
    by_batch = bh.loo(model, post, by="batch")
    by_cask = bh.loo(model, post, by="batch:cask")
    assert np.isfinite(by_batch.elpd) and np.isfinite(by_cask.elpd)
    assert by_batch.n_data_points == 10 and by_cask.n_data_points == 30
    with pytest.raises(ValueError, match="one of the model's grouping factors"):
        bh.loo(model, post, by="sample")
