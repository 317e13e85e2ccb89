"""Geweke joint-distribution tests of one sweep of each sampler (``bayeshlm.testing.geweke``).

For each model the successive-conditional chain (a sweep, then new data given the
parameters; 20,000 iterations) and 20,000 independent prior draws must give the same means
of every parameter and its square. Each z statistic uses the prior draws' standard error
and a batch-means standard error for the chain; each is tested at level
``1e-3 / (number of test functions)``, so a model's test fails by chance with probability
below 1e-3 (slightly more if batch means understate the chain's error).
"""

import numpy as np
import pytest

import bayeshlm as bh
from bayeshlm.testing import geweke

PRIORS = {"fixed": bh.Normal(0, 1), "sigma": bh.HalfNormal(1), "sd": bh.HalfNormal(1), "corr": bh.LKJ(2)}


def _data(seed=0):
    rng = np.random.default_rng(seed)
    g = np.repeat([f"g{j}" for j in range(6)], 3)
    y = rng.normal(size=g.size)
    x = rng.normal(size=g.size)
    return {"y": y, "x": x, "g": g, "h": np.repeat([f"h{j}" for j in range(3)], 6), "x_far": x + 5.0,
            "k": np.tile([f"k{j}" for j in range(3)], 6),  # crossed with g: every g sees every k
            "z": np.repeat([-1.2, -0.5, 0.0, 0.4, 0.9, 1.5], 3)}  # a predictor of g's groups


CASES = {
    "intercept_mh": ("y ~ x + (1 | g)", PRIORS, "mh"),
    "intercept_gibbs": ("y ~ x + (1 | g)", PRIORS, "gibbs"),
    "slopes_mh": ("y ~ x + (x | g)", PRIORS, "mh"),
    "slopes_iw_gibbs": ("y ~ x + (x | g)", {**PRIORS, "cov": bh.InverseWishart(4, np.eye(2))}, "gibbs"),
    "three_levels_mh": ("y ~ x + (1 | h) + (1 | h:g)", PRIORS, "mh"),
    "three_levels_gibbs": ("y ~ x + (1 | h) + (1 | h:g)", PRIORS, "gibbs"),
    # priors on the user's coefficients of a slope the kernels centre (Priors.block_map):
    # the prior is evaluated at G T G' in the MH target and the Gibbs acceptance ratio
    "mapped_prior_mh": ("y ~ x_far + (x_far | g)", PRIORS, "mh"),
    "mapped_prior_gibbs": ("y ~ x_far + (x_far | g)", PRIORS, "gibbs"),
    # crossed factors: the moves target p(theta | y) and keep the factors of what they accept
    "crossed_mh": ("y ~ x + (1 | g) + (1 | k)", PRIORS, "mh"),
    "crossed_slopes_mh": ("y ~ x + (x | g) + (1 | k)", PRIORS, "mh"),
    "crossed_gibbs": ("y ~ x + (1 | g) + (1 | k)", PRIORS, "gibbs"),
}
# the other target of the MH moves than the one the structure gets by default
MARGINAL = {
    "intercept_mh_marginal": ("y ~ x + (1 | g)", 1),
    "three_levels_mh_marginal": ("y ~ x + (1 | h) + (1 | h:g)", 1),
    "crossed_mh_conditional": ("y ~ x + (1 | g) + (1 | k)", 0),
}


@pytest.mark.parametrize("case", list(CASES))
def test_geweke(case):
    formula, priors, method = CASES[case]
    model = bh.hlm(formula, _data(), priors=priors)
    if case.startswith("mapped"):
        assert model.priors.block_map.tolist() == [1]
    table = geweke(model, 20000, method=method, seed=11)
    bad = table[table["p_value"] < 1e-3 / len(table)]
    assert bad.empty, f"Geweke test fails:\n{bad}"


@pytest.mark.parametrize("case", list(MARGINAL))
def test_geweke_of_the_other_mh_target(case):
    formula, marginal = MARGINAL[case]
    model = bh.hlm(formula, _data(), priors=PRIORS)
    table = geweke(model, 20000, method="mh", seed=11, marginal=marginal)
    bad = table[table["p_value"] < 1e-3 / len(table)]
    assert bad.empty, f"Geweke test fails:\n{bad}"


def _binary_data(seed=0):
    data = _data(seed)
    rng = np.random.default_rng(seed + 1)
    data["y"] = rng.integers(0, 2, size=data["x"].size).astype(float)
    data["n"] = rng.integers(1, 4, size=data["x"].size).astype(float)
    return data


AUGMENTED = {
    # the Polya-Gamma step (logit) and the latent normals (probit), Bernoulli and binomial rows
    "logit_mh": ("y ~ x + (1 | g)", {}, "mh"),
    "logit_gibbs_binomial": ("y ~ x + (x | g)", {"trials": "n"}, "gibbs"),
    "probit_mh_binomial": ("y ~ x + (1 | h) + (1 | h:g)", {"link": "probit", "trials": "n"}, "mh"),
    "logit_crossed_mh": ("y ~ x + (1 | g) + (1 | k)", {}, "mh"),
    # counts: the arrival times, the mixture components and the correction (with MH moves, of
    # theta and the coefficients together; with Gibbs moves, of the coefficients alone). The
    # joint chain sticks for a while where the prior gives counts in the thousands, so the MH
    # case runs longer than the others: at 20,000 sweeps batch means understate its error
    "poisson_mh": ("y ~ x + (1 | g)", {"family": "poisson", "n_iter": 60000}, "mh"),
    "poisson_gibbs_slopes": ("y ~ x + (x | g)", {"family": "poisson"}, "gibbs"),
}


@pytest.mark.parametrize("case", list(AUGMENTED))
def test_geweke_of_the_augmentation(case):
    formula, options, method = AUGMENTED[case]
    options = dict(options)
    family = options.pop("family", "binomial" if "trials" in options else "bernoulli")
    n_iter = options.pop("n_iter", 20000)
    data = _binary_data()
    if "trials" in options:
        data["y"] = np.minimum(data["y"], data["n"])
    model = bh.hlm(formula, data, family=family, priors={k: v for k, v in PRIORS.items() if k != "sigma"}, **options)
    table = geweke(model, n_iter, method=method, seed=11)
    bad = table[table["p_value"] < 1e-3 / len(table)]
    assert bad.empty, f"Geweke test fails:\n{bad}"


NEWTON = {
    # the Newton proposal: each group, then the fixed effects, by Metropolis-Hastings from the
    # working model, then the shift along the shared columns (intercept; intercept and slope);
    # with one coefficient per group, the SD's move given the standardised effects (interweave)
    "logit_newton": ("y ~ x + (1 | g)", {"interweave": True}),
    "logit_centred_newton": ("y ~ x + (1 | g)", {"interweave": False}),
    "logit_slopes_binomial_newton": ("y ~ x + (x | g)", {"trials": "n"}),
    "probit_newton": ("y ~ x + (1 | g)", {"link": "probit", "interweave": True}),
    "poisson_newton": ("y ~ x + (1 | g)", {"family": "poisson", "interweave": True}),
    # a slope on a shifted predictor (x + 5), which the kernels centre
    "logit_far_slopes_newton": ("y ~ x_far + (x_far | g)", {}),
    # a group-level predictor and a cross-level interaction: shifts with the groups' values z_g
    "logit_group_level_newton": ("y ~ x * z + (x | g)", {}),
    # nested factors: each factor's groups, the shifts between levels, and split_move (the two
    # SDs given the groups' totals), which the Geweke chain checks: it reads no data
    "logit_three_levels_newton": ("y ~ x + (1 | h) + (1 | h:g)", {"interweave": False}),
    # counts under tighter priors: with Normal(0, 1) and HalfNormal(1) the joint chain makes long
    # excursions to large SDs (large counts pin the groups), and 20,000 to 60,000 sweeps
    # understate sd[h] by 3 to 6 batch-means errors; at 300,000 sweeps its z is -0.08
    "poisson_three_levels_newton": ("y ~ x + (1 | h) + (1 | h:g)", {
        "family": "poisson", "interweave": True, "priors": {"fixed": bh.Normal(0, 0.5), "sd": bh.HalfNormal(0.5)}}),
}


def _newton_model(case):
    formula, options = NEWTON[case]
    options = dict(options)
    options.pop("interweave", None)
    family = options.pop("family", "binomial" if "trials" in options else "bernoulli")
    priors = options.pop("priors", {k: v for k, v in PRIORS.items() if k != "sigma"})
    data = _binary_data()
    if "trials" in options:
        data["y"] = np.minimum(data["y"], data["n"])
    return bh.hlm(formula, data, family=family, priors=priors, **options)


@pytest.mark.parametrize("case", list(NEWTON))
def test_geweke_of_the_newton_proposal(case):
    table = geweke(_newton_model(case), 20000, method="gibbs", seed=11, glm_move="newton",
                   interweave=NEWTON[case][1].get("interweave"))
    bad = table[table["p_value"] < 1e-3 / len(table)]
    assert bad.empty, f"Geweke test fails:\n{bad}"


def test_geweke_catches_an_unchecked_newton_proposal():
    """Every Newton proposal accepted, its ratio ignored: the chain targets the working model, and the test fails."""
    table = geweke(_newton_model("logit_newton"), 5000, method="gibbs", seed=11, glm_move="newton",
                   interweave=False, unchecked=True)
    assert table["p_value"].min() < 1e-3 / len(table), table


def test_geweke_catches_an_unchecked_move_of_the_sd():
    """The SD's move given the standardised effects without its proposal densities in the ratio: the test fails."""
    table = geweke(_newton_model("logit_newton"), 5000, method="gibbs", seed=11, glm_move="newton",
                   interweave=True, unchecked="interweave")
    assert table["p_value"].min() < 1e-3 / len(table), table
