"""Simulation-based calibration of the level-1 steps: variances by predictor and by group, Student-t, weights.

docs/design.md, "Heterogeneous level-1 variance" and "Student-t level 1". Each simulation
draws every parameter from the prior the sampler uses (the fixed effects, sigma and the
group SDs from the model's priors; ``delta_N ~ Normal(0, 2.5)`` on each standardised column
of ``sigma=``; ``omega ~ HalfNormal(1)`` and ``e_j ~ Normal(0, omega^2)`` for a ``(1 | g)``
term; ``nu ~ Gamma(2, 0.1)`` restricted to ``nu >= 1``), a response from the model, and
2 chains x 200 draws after 200 warm-up sweeps thinned to 99; the truth's rank among them is
uniform exactly when the sampler draws from the posterior. Each quantity gets the
chi-square and mean-rank tests combined by Bonferroni (``SBCResult.uniformity``) at level
``1e-3 / (number of quantities)``: a case fails by chance with probability below 1e-3.
"""

import warnings

import numpy as np
import pandas as pd
import pytest

import bayeshlm as bh
from bayeshlm.prior_draws import draw_from_prior
from bayeshlm.results import finest_coefficients
from bayeshlm.testing import SBCResult, sbc, with_response
from samplers.scale import DELTA_PRIOR_SD, NU_PRIOR_RATE, NU_PRIOR_SHAPE, OMEGA_PRIOR_SCALE

ALPHA = 1e-3
PRIORS = {"fixed": bh.Normal(0, 1), "sd": bh.HalfNormal(1), "sigma": bh.HalfNormal(1)}
N_SIMS, N_DRAWS = 100, 99
WARMUP, DRAWS = 200, 200


def _data(seed, n_groups=12, rows=(5, 10)):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(rows[0], rows[1] + 1, size=n_groups)
    g = np.repeat(np.arange(n_groups), sizes)
    return pd.DataFrame({
        "y": rng.normal(size=g.size), "x": rng.normal(size=g.size),
        # a row predictor of the variance; off 0, but not so far that the prior's delta puts the reported
        # sigma (a row's at z = 0) beyond floating point (tests/test_level1.py shifts z by 2015)
        "z": rng.normal(0.5, 1.0, size=g.size),
        "h": (np.arange(n_groups) % 2)[g],  # a group predictor of the variance
        "w": rng.uniform(0.5, 2.0, size=g.size),  # precision weights
        "g": [f"g{j}" for j in g],
    })


CASES = {  # formula options, sample options
    "by_row_predictor": ({"sigma": "~ z"}, {}),
    "by_group_predictor_grouped": ({"sigma": "~ h"}, {}),
    "by_group": ({"sigma": "~ (1 | g)"}, {}),
    "by_row_predictor_and_group_weighted": ({"sigma": "~ z + (1 | g)", "weights": "w"}, {}),
    "student_fixed_nu": ({"family": "student", "nu": 4.0}, {}),
    "student_estimated_nu": ({"family": "student"}, {}),
    "student_estimated_nu_gibbs_by_predictor": ({"family": "student", "sigma": "~ z"}, {"method": "gibbs"}),
}


def _nu_from_prior(rng):
    while True:
        nu = rng.gamma(NU_PRIOR_SHAPE, 1.0 / NU_PRIOR_RATE)
        if nu >= 1.0:
            return nu


def _simulate(model, rng):
    """Parameters from the prior, a response given them, and the truths by the posterior's names."""
    params = draw_from_prior(model, rng)
    design = model.design
    b_row = finest_coefficients(model, params["b"])[design.group_idx]
    mean = design.F @ params["fixed"] + np.einsum("ik,ik->i", design.X, b_row)
    vd = model.variance_design
    log_sd = np.full(model.n_obs, np.log(params["sigma"]))  # sigma: a row at the columns' means
    truth = {f"fixed[{n}]": v for n, v in zip(model.fixed_names, params["fixed"], strict=True)}
    truth |= {f"g_sd[{n}]": v for n, v in zip(model.coef_names, params["sd"], strict=True)}
    sigma_ref = params["sigma"]
    if vd is not None and vd.k:
        delta_n = rng.normal(0.0, DELTA_PRIOR_SD, vd.k)
        log_sd += 0.5 * vd.standardised() @ delta_n
        delta = vd.delta_user(delta_n)
        sigma_ref *= np.exp(-0.5 * vd.shift @ delta)
        truth |= {f"sigma_delta[{n}]": v for n, v in zip(vd.names, delta, strict=True)}
    truth["sigma"] = sigma_ref
    if vd is not None and vd.group is not None:
        omega = abs(rng.normal(0.0, OMEGA_PRIOR_SCALE))
        e = rng.normal(0.0, omega, len(vd.group_labels))
        log_sd += e[vd.group_idx]
        truth["sigma_group_sd"] = omega
        truth["sigma_group[0]"] = sigma_ref * np.exp(e[0])
    if design.weights is not None:
        log_sd -= 0.5 * np.log(design.weights)
    noise = rng.normal(size=model.n_obs)
    if model.family == "student":
        nu = model.options.get("nu") or _nu_from_prior(rng)
        noise = rng.standard_t(nu, size=model.n_obs)
        if model.options.get("nu") is None:
            truth["nu"] = nu
    return mean + np.exp(log_sd) * noise, truth


def _posterior_draws(post, names):
    p = post.posterior
    out = {}
    for name in names:
        var, _, idx = name.partition("[")
        x = p[var]
        if idx:
            x = x.isel({x.dims[2]: 0}) if var == "sigma_group" else x.sel({x.dims[2]: idx[:-1]})
        out[name] = x.values.reshape(-1)
    return out


def _sbc(model, seed, **options):
    rng = np.random.default_rng(seed)
    records = []
    for _ in range(N_SIMS):
        y, truth = _simulate(model, rng)
        with warnings.catch_warnings():  # short chains: R-hat warnings are expected, the ranks are the test
            warnings.simplefilter("ignore", bh.ConvergenceWarning)
            post = bh.sample(with_response(model, y), draws=DRAWS, warmup=WARMUP, chains=2,
                             seed=int(rng.integers(2**31)), progress=False, log_likelihood=False,
                             keep_group_draws=False, **options)
        draws = _posterior_draws(post, truth)
        keep = np.linspace(0, 2 * DRAWS - 1, N_DRAWS).round().astype(int)
        records.append({k: int(np.sum(draws[k][keep] < v)) for k, v in truth.items()})
    return SBCResult(ranks=pd.DataFrame.from_records(records), n_draws=N_DRAWS)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_sbc_of_level1_models(case):
    options, sample_options = CASES[case]
    model = bh.hlm("y ~ x + (1 | g)", _data(len(case)), priors=PRIORS, **options)
    table = _sbc(model, seed=1, **sample_options).uniformity()
    bad = table[table["p_value"] < ALPHA / len(table)]
    assert bad.empty, f"non-uniform SBC ranks:\n{table}"


@pytest.mark.slow
def test_sbc_of_precision_weights():
    """The Gaussian sampler with weights= (row i's variance sigma^2 / w_i), by the package's own SBC."""
    model = bh.hlm("y ~ x + (x | g)", _data(5), priors=PRIORS | {"corr": bh.LKJ(2)}, weights="w")
    table = sbc(model, n_sims=N_SIMS, seed=1, warmup=WARMUP, draws_per_chain=DRAWS).uniformity()
    bad = table[table["p_value"] < ALPHA / len(table)]
    assert bad.empty, f"non-uniform SBC ranks:\n{table}"
