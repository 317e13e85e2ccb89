"""Simulation-based calibration of the non-Gaussian samplers, and proof that it catches a wrong augmentation.

Each case runs :func:`bayeshlm.testing.sbc` as ``test_sbc.py`` does (parameters from the
prior, a 0/1, binomial or count response given them, 2 chains x 300 draws after 300 warm-up
sweeps thinned to 99, ranks of the truths), with fixed seeds. Every quantity gets the chi-square
and mean-rank tests combined by Bonferroni (``SBCResult.uniformity``) at level
``1e-3 / (number of quantities)``: a case fails by chance with probability below 1e-3.
"""

import sys

import numpy as np
import pytest

import bayeshlm as bh
from bayeshlm.testing import sbc
from samplers.augment import mixture_table
from samplers.types import AUG_MEAN_OMEGA, AUG_NO_CORRECTION

ALPHA = 1e-3
PRIORS = {"fixed": bh.Normal(0, 1), "sd": bh.HalfNormal(1), "corr": bh.LKJ(2)}


def _data(n_groups, rows, seed=0, trials=None, nest=0, crossed=0):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(rows[0], rows[1] + 1, size=n_groups)
    g = np.repeat([f"g{j}" for j in range(n_groups)], sizes)
    out = {"y": rng.integers(0, 2, size=g.size).astype(float), "x": rng.normal(size=g.size), "g": g,
           "z": np.repeat(np.linspace(-1.0, 1.0, n_groups), sizes)}  # a predictor of the groups
    if trials is not None:
        out["n"] = rng.integers(trials[0], trials[1] + 1, size=g.size).astype(float)
        out["y"] = np.floor(out["n"] / 2)  # replaced by SBC
    if nest:
        out["h"] = np.array([f"h{int(s[1:]) % nest}" for s in g])
    if crossed:
        out["k"] = rng.choice([f"k{j}" for j in range(crossed)], size=g.size)
    return out


CASES = {
    # Bernoulli random intercepts, logit (Polya-Gamma), collapsed MH and conjugate-free Gibbs
    "logit_intercept_mh": ("y ~ x + (1 | g)", _data(10, (4, 8)), {}, "mh"),
    "logit_intercept_gibbs": ("y ~ x + (1 | g)", _data(10, (4, 8)), {}, "gibbs"),
    # binomial rows with 1 to 6 trials (PG(n, c) as a sum of n draws)
    "binomial_trials_mh": ("y ~ x + (1 | g)", _data(10, (2, 5), seed=1, trials=(1, 6)), {"trials": "n"}, "mh"),
    # correlated random slopes with an LKJ prior
    "logit_slopes_mh": ("y ~ x + (x | g)", _data(12, (6, 12), seed=2), {}, "mh"),
    # three levels: groups g within h
    "logit_three_levels_mh": ("y ~ x + (1 | h/g)", _data(12, (3, 7), seed=3, nest=4), {}, "mh"),
    # crossed factors
    "logit_crossed_mh": ("y ~ x + (1 | g) + (1 | k)", _data(10, (4, 8), seed=4, crossed=5), {}, "mh"),
    # the probit link (Albert-Chib), intercepts and slopes, binomial trials
    "probit_intercept_mh": ("y ~ x + (1 | g)", _data(10, (4, 8), seed=5), {"link": "probit"}, "mh"),
    "probit_slopes_gibbs": ("y ~ x + (x | g)", _data(12, (6, 12), seed=6), {"link": "probit"}, "gibbs"),
    "probit_trials_mh": ("y ~ x + (1 | g)", _data(10, (2, 5), seed=7, trials=(1, 4)),
                         {"link": "probit", "trials": "n"}, "mh"),
}


def _counts(n_groups, rows, seed=0, **kw):
    out = _data(n_groups, rows, seed=seed, **kw)
    out["t"] = np.random.default_rng(seed + 100).uniform(0.5, 3.0, size=out["g"].size)  # exposures
    return out


POISSON_CASES = {
    # counts with a log link: arrival times, a mixture of normals, and the correction
    "poisson_intercept_mh": ("y ~ x + (1 | g)", _counts(10, (4, 8), seed=8), "mh"),
    "poisson_intercept_gibbs": ("y ~ x + (1 | g)", _counts(10, (4, 8), seed=8), "gibbs"),
    "poisson_slopes_mh": ("y ~ x + (x | g)", _counts(12, (6, 12), seed=9), "mh"),
    "poisson_three_levels_mh": ("y ~ x + (1 | h/g)", _counts(12, (3, 7), seed=10, nest=4), "mh"),
    "poisson_crossed_mh": ("y ~ x + (1 | g) + (1 | k)", _counts(10, (4, 8), seed=11, crossed=5), "mh"),
    "poisson_exposure_mh": ("y ~ x + offset(log(t)) + (1 | g)", _counts(10, (4, 8), seed=12), "mh"),
}


# the Newton proposal (glm_move="newton"): no augmentation, each group and the fixed effects by
# Metropolis-Hastings from the working model; small groups, where its ratio matters most
# (interweave: the SD's move given the standardised effects, with one coefficient per group)
NEWTON_CASES = {
    "logit_intercept_newton": ("y ~ x + (1 | g)", _data(10, (4, 8)), {}, True),
    "binomial_trials_newton": ("y ~ x + (1 | g)", _data(10, (2, 5), seed=1, trials=(1, 6)), {"trials": "n"}, False),
    "logit_slopes_newton": ("y ~ x + (x | g)", _data(12, (6, 12), seed=2), {}, None),
    "probit_intercept_newton": ("y ~ x + (1 | g)", _data(10, (4, 8), seed=5), {"link": "probit"}, True),
    "poisson_exposure_newton": ("y ~ x + offset(log(t)) + (1 | g)", _counts(10, (4, 8), seed=12), {}, True),
    # a group-level predictor: its coefficient and the intercepts move together (shift_move's c_g = z_g)
    "logit_group_level_newton": ("y ~ x + z + (1 | g)", _data(10, (4, 8), seed=13), {}, True),
    # three levels: each factor's groups in turn, the shifts between the levels, and the two SDs
    # with the split of each total between them (split_move)
    "logit_three_levels_newton": ("y ~ x + (1 | h/g)", _data(12, (3, 7), seed=3, nest=4), {}, None),
    "poisson_three_levels_newton": ("y ~ x + (1 | h/g)", _counts(12, (3, 7), seed=10, nest=4), {}, True),
}


def _model(case):
    if case in NEWTON_CASES:
        formula, data, options, _ = NEWTON_CASES[case]
        family = "poisson" if "t" in data else "binomial" if "trials" in options else "bernoulli"
        return bh.hlm(formula, data, family=family, priors=PRIORS, **options)
    if case in POISSON_CASES:
        formula, data, _ = POISSON_CASES[case]
        return bh.hlm(formula, data, family="poisson", priors=PRIORS)
    formula, data, options, _ = CASES[case]
    family = "binomial" if "trials" in options else "bernoulli"
    return bh.hlm(formula, data, family=family, priors=PRIORS, **options)


def _assert_uniform(table):
    """Every quantity's ranks pass at level ALPHA / (number of quantities)."""
    bad = table[table["p_value"] < ALPHA / len(table)]
    assert bad.empty, f"non-uniform SBC ranks:\n{bad}"


@pytest.mark.parametrize("case", list(CASES))
def test_sbc_of_binary_and_binomial_models(case):
    model = _model(case)
    _assert_uniform(sbc(model, n_sims=200, seed=1, method=CASES[case][3]).uniformity())


@pytest.mark.parametrize("case", list(POISSON_CASES))
def test_sbc_of_count_models(case):
    model = _model(case)
    _assert_uniform(sbc(model, n_sims=200, seed=1, method=POISSON_CASES[case][2], glm_move="augment").uniformity())


@pytest.mark.parametrize("case", list(NEWTON_CASES))
def test_sbc_of_the_newton_proposal(case):
    """Exact whatever its acceptance: with 2 to 12 rows a group the working model is far from the posterior.

    (Accepting every proposal without the ratio is caught by the Geweke test,
    ``test_geweke.py``; these SBC runs are not sensitive enough to see it.)
    """
    _assert_uniform(sbc(_model(case), n_sims=200, seed=1, glm_move="newton",
                        interweave=NEWTON_CASES[case][3]).uniformity())


def _one_normal(monkeypatch, corrected):
    """Replace the mixture of ten normals by one normal with the mean of ``-log Exp(1)`` and half its variance."""
    module = sys.modules["bayeshlm.sample"]
    original = module.augmentations
    table = mixture_table([1.0], [np.euler_gamma], [np.pi**2 / 12])

    def crude(*args, **kwargs):
        augs = [aug._replace(mix=table) for aug in original(*args, **kwargs)]
        for aug in augs:
            aug.scal[AUG_NO_CORRECTION] = 0.0 if corrected else 1.0
        return augs

    monkeypatch.setattr(module, "augmentations", crude)


def test_correction_makes_a_crude_mixture_exact(monkeypatch):
    """One normal in place of the mixture: a working model far from the truth, which the correction makes exact.

    In this seeded run the smallest p-value is about 0.017 (0.00033 required); without the
    correction (below) the SD's is about 1e-42.
    """
    _one_normal(monkeypatch, corrected=True)
    _assert_uniform(sbc(_model("poisson_intercept_mh"), n_sims=200, seed=1, method="mh").uniformity())


def test_sbc_catches_a_missing_correction(monkeypatch):
    """The same crude mixture without the correction: SBC rejects it."""
    _one_normal(monkeypatch, corrected=False)
    table = sbc(_model("poisson_intercept_mh"), n_sims=300, seed=1, method="mh").uniformity()
    assert table["p_value"].min() < ALPHA / len(table), table


def test_sbc_catches_omega_at_its_mean(monkeypatch):
    """The same SBC run fails when each Polya-Gamma variable is set to its conditional mean instead of drawn.

    That is the plug-in shortcut an augmentation could be tempted by; it understates the
    spread of the linear predictor, and the group SD's ranks pile up. In this seeded run
    with 300 simulations its p-value is about 1e-16 against 3.3e-4 required, while the real
    step passes (``logit_intercept_mh`` above, on the same design).
    """
    module = sys.modules["bayeshlm.sample"]
    original = module.augmentations

    def broken(*args, **kwargs):
        augs = original(*args, **kwargs)
        for aug in augs:
            aug.scal[AUG_MEAN_OMEGA] = 1.0
        return augs

    monkeypatch.setattr(module, "augmentations", broken)
    table = sbc(_model("logit_intercept_mh"), n_sims=300, seed=1, method="mh").uniformity()
    assert table.loc["sd[Intercept]", "p_value"] < ALPHA / len(table), table
