"""The checking tools of :mod:`bayeshlm.testing`: prior draws, simulated responses, SBC plumbing."""

import numpy as np
import pytest
from scipy import stats as sps

import bayeshlm as bh
from bayeshlm.prior_draws import draw_from_prior, lkj_corr, simulate_response
from bayeshlm.testing import sbc, with_response


def test_lkj_marginal_is_a_scaled_beta():
    """Under LKJ(eta) in d dimensions each correlation is 2 Beta(b, b) - 1, b = eta - 1 + d/2.

    Kolmogorov-Smirnov on 4000 draws of two entries, each at level 1e-4 (false alarm 2e-4).
    """
    rng = np.random.default_rng(0)
    d, eta = 4, 1.5
    draws = np.array([lkj_corr(d, eta, rng) for _ in range(4000)])
    b = eta - 1 + d / 2
    for i, j in [(1, 0), (3, 2)]:
        u = (draws[:, i, j] + 1) / 2
        assert sps.kstest(u, sps.beta(b, b).cdf).pvalue > 1e-4
    assert np.all(np.linalg.eigvalsh(draws) > 0)


def test_prior_draws_and_simulated_response_have_the_right_moments():
    """Over many prior draws the simulated responses of one row have the prior predictive
    variance ``sd_fixed^2 + E[sigma^2] + sum of E[sd_k^2]`` (mean and variance each to 5 Monte
    Carlo SEs: a false-alarm rate near 1e-6)."""
    df = bh.simulate_nested(levels=(("a", 4), ("b", 2)), rows=2, seed=1)
    model = bh.hlm("y ~ 1 + (1 | a/b)", df, priors={"fixed": bh.Normal(1.0, 2.0), "sigma": bh.HalfNormal(1.0),
                                                      "sd": bh.HalfNormal(0.5)})
    rng = np.random.default_rng(5)
    ys = np.array([simulate_response(model, draw_from_prior(model, rng), rng)[0] for _ in range(20000)])
    var = 4.0 + 1.0 + 2 * 0.25  # E[HalfNormal(s)^2] = s^2
    assert abs(ys.mean() - 1.0) < 5 * np.sqrt(var / ys.size)
    se_var = np.std((ys - ys.mean()) ** 2) / np.sqrt(ys.size)  # holds for any finite fourth moment
    assert abs(ys.var() - var) < 5 * se_var


def test_with_response_keeps_design_and_priors():
    df = bh.simulate_nested(levels=(("a", 4), ("b", 2)), rows=2, seed=1)
    model = bh.hlm("y ~ x + (1 | a/b)", df)
    y = np.arange(model.n_obs, dtype=float)
    other = with_response(model, y)
    assert other.priors is model.priors and other.structure is model.structure
    # the statistics are those of the new response in the model's own (kernels') basis
    basis = model.basis
    assert other.basis is basis
    assert other.stats.scal[0] == pytest.approx(np.sum(((y - basis.y_shift) / basis.y_scale) ** 2))
    np.testing.assert_array_equal(other.design.F, model.design.F)


def test_sbc_refuses_flat_priors_and_returns_ranks():
    df = bh.simulate_nested(levels=(("a", 4), ("b", 2)), rows=2, seed=1)
    model = bh.hlm("y ~ 1 + (1 | a/b)", df, priors={"fixed": bh.Flat()})
    with pytest.raises(ValueError, match=r"fixed\[Intercept\].*proper"):
        sbc(model, n_sims=1)
    model = bh.hlm("y ~ 1 + (1 | a/b)", df, priors={"fixed": bh.Normal(0, 1)})
    res = sbc(model, n_sims=3, n_draws=9, warmup=50, draws_per_chain=20)
    assert list(res.ranks.columns) == ["fixed[Intercept]", "sigma", "sd[Intercept|a:b]", "sd[Intercept|a]",
                                       "icc[Intercept|a:b]", "icc[Intercept|a]"]
    assert res.ranks.to_numpy().min() >= 0 and res.ranks.to_numpy().max() <= 9
    assert len(res.uniformity(bins=5)) == 6


def _tree_draws(model, seed, **options):
    """What :func:`bayeshlm.testing.posterior_draws` returns, read from :func:`bayeshlm.sample`'s result."""
    from bayeshlm.results import covariance_draws

    tree = bh.sample(model, chains=2, warmup=30, draws=40, seed=seed, progress=False, log_likelihood=False,
                     keep_group_draws=False, **options)
    p = tree.posterior
    sigma = p["sigma"].values.reshape(-1) if "sigma" in p else None
    sd, corr = covariance_draws(tree, model)
    return p["fixed"].values.reshape(80, -1), sigma, sd, np.tril(corr, -1)


def _sbc_models():
    sleep = bh.load_dataset("sleepstudy")
    sleep["year"] = 2015.0 + sleep["days"]  # shifted: the fixed effects go back through the basis
    rng = np.random.default_rng(3)
    binary = {"y": rng.integers(0, 2, 240).astype(float), "x": rng.normal(1e3, 50.0, 240),
              "g": np.repeat([f"g{j}" for j in range(12)], 20)}
    return {
        "slopes": (bh.hlm("reaction ~ year + (year | subject)", sleep), {"method": "gibbs"}),
        "diagonal_slopes": (bh.hlm("reaction ~ year + (year || subject)", sleep), {"method": "mh"}),
        "nested": (bh.hlm("y ~ x + (1 | a/b)", bh.simulate_nested(levels=(("a", 5), ("b", 3)), rows=4, seed=2)),
                   {"method": "mh"}),
        "bernoulli": (bh.hlm("y ~ x + (1 | g)", binary, family="bernoulli"), {"glm_move": "augment"}),
        "bernoulli_newton": (bh.hlm("y ~ x + (1 | g)", binary, family="bernoulli"), {"glm_move": "newton"}),
    }


@pytest.mark.filterwarnings("ignore::bayeshlm.summary.ConvergenceWarning")
@pytest.mark.parametrize("case", ["slopes", "diagonal_slopes", "nested", "bernoulli", "bernoulli_newton"])
def test_posterior_draws_are_the_values_of_the_result(case):
    """SBC reads the chains' outputs without building the result: the values are the result's, draw for draw."""
    from bayeshlm.testing import parameter_vector, posterior_draws

    model, options = _sbc_models()[case]
    raw = posterior_draws(model, 7, warmup=30, draws_per_chain=40, **options)
    tree = _tree_draws(model, 7, **options)
    assert raw[0].shape == tree[0].shape and raw[2].shape == tree[2].shape
    for key, value in parameter_vector(model, raw[0].T, raw[1], raw[2], raw[3]).items():
        expected = parameter_vector(model, tree[0].T, tree[1], tree[2], tree[3])[key]
        np.testing.assert_allclose(value, expected, rtol=1e-12, atol=1e-12, err_msg=key)
