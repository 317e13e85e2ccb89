"""Simulation-based calibration of every model family, and proof that it catches a wrong kernel.

Each family runs :func:`bayeshlm.testing.sbc` with fixed seeds: parameters from the prior,
data from the model, posterior draws given the data (2 chains x 300 after 300 warm-up
sweeps, thinned to 99), ranks of the truths. Every quantity (fixed effects, sigma, SDs,
correlations, intraclass correlations) gets two tests of uniform ranks, chi-square on 10
bins and a z-test of the mean rank, combined by Bonferroni (``SBCResult.uniformity``), at
level ``1e-3 / (number of quantities)``: a family's test fails by chance with probability
below 1e-3, all of them together below 1e-2.

The larger run behind ``tests/statistical/REPORT.md`` (more simulations, plots) is
``python tests/statistical/sbc_report.py``.
"""

import numpy as np
import pytest

import bayeshlm as bh
from bayeshlm.testing import python_chain_draws, sbc

ALPHA = 1e-3


def _data(n_groups, rows, seed=0, slope=False):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(rows[0], rows[1] + 1, size=n_groups)
    g = np.repeat([f"g{j}" for j in range(n_groups)], sizes)
    out = {"y": rng.normal(size=g.size), "x": rng.normal(size=g.size), "g": g}  # y is replaced by SBC
    if slope:
        out["w"] = rng.normal(size=g.size)
    return out


def _crossed_data(n_subjects, n_items, fill, seed=0, groups=0):
    """Subjects x items, each cell present with probability ``fill`` with one or two rows; subjects in ``groups``."""
    rng = np.random.default_rng(seed)
    rows = [(f"s{i}", f"i{j}") for i in range(n_subjects) for j in range(n_items) if rng.random() < fill
            for _ in range(int(rng.integers(1, 3)))]
    subject, item = (np.array(col) for col in zip(*rows, strict=True))
    out = {"y": rng.normal(size=subject.size), "x": rng.normal(size=subject.size), "subject": subject, "item": item}
    if groups:
        out["group"] = np.array([f"g{int(s[1:]) % groups}" for s in subject])
    return out


def _check(model, n_sims=200, seed=1, **options):
    table = sbc(model, n_sims=n_sims, seed=seed, **options).uniformity()
    bad = table[table["p_value"] < ALPHA / len(table)]
    assert bad.empty, f"non-uniform SBC ranks:\n{bad}"
    return table


NORMAL = bh.Normal(0, 2)
FAMILIES = {
    # random intercept, weakly informative half-normal SD, collapsed MH
    "intercept_halfnormal_mh": ("y ~ x + (1 | g)", _data(10, (2, 6)),
                                {"fixed": NORMAL, "sigma": bh.HalfNormal(1), "sd": bh.HalfNormal(1)}, "mh"),
    # the same with the conjugate inverse-gamma on the variance, conjugate Gibbs
    "intercept_invgamma_gibbs": ("y ~ x + (1 | g)", _data(10, (2, 6)),
                                 {"fixed": NORMAL, "sigma": bh.InverseGamma(3, 2), "sd": bh.InverseGamma(3, 2)},
                                 "gibbs"),
    # correlated random slopes with an LKJ prior (MH) and an inverse-Wishart block (Gibbs)
    "slopes_lkj_mh": ("y ~ x + (x | g)", _data(12, (3, 8)),
                      {"fixed": NORMAL, "sigma": bh.HalfNormal(1), "sd": bh.HalfNormal(1), "corr": bh.LKJ(2)}, "mh"),
    "slopes_iw_gibbs": ("y ~ x + (x | g)", _data(12, (3, 8)),
                        {"fixed": NORMAL, "sigma": bh.HalfNormal(1), "cov": bh.InverseWishart(4, np.eye(2))}, "gibbs"),
    # uncorrelated slopes, half-t SDs
    "slopes_uncorrelated_halft_mh": ("y ~ x + (x || g)", _data(12, (3, 8)),
                                     {"fixed": NORMAL, "sigma": bh.HalfNormal(1), "sd": bh.HalfStudentT(4, 1)}, "mh"),
    # uniform prior on the SDs, Gibbs (with the Metropolis-Hastings correction of non-conjugate priors)
    "intercept_uniform_gibbs": ("y ~ x + (1 | g)", _data(10, (2, 6)),
                                {"fixed": NORMAL, "sigma": bh.Uniform(3), "sd": bh.Uniform(3)}, "gibbs"),
    # weak data: one or two rows per group, a small group variance, half-Cauchy
    "weak_data_halfcauchy_mh": ("y ~ 1 + (1 | g)", _data(8, (1, 2)),
                                {"fixed": NORMAL, "sigma": bh.HalfNormal(1), "sd": bh.HalfCauchy(0.2)}, "mh"),
    # strong data: 40 to 60 rows per group
    "strong_data_mh": ("y ~ x + (x | g)", _data(8, (40, 60)),
                       {"fixed": NORMAL, "sigma": bh.HalfNormal(1), "sd": bh.HalfNormal(1), "corr": bh.LKJ(2)}, "mh"),
    # crossed factors (samplers/crossed.py): partially crossed subjects x items, intercepts
    "crossed_intercepts_mh": ("y ~ x + (1 | subject) + (1 | item)", _crossed_data(10, 6, 0.5),
                              {"fixed": NORMAL, "sigma": bh.HalfNormal(1), "sd": bh.HalfNormal(1)}, "mh"),
    # correlated slopes on subjects, crossed with items
    "crossed_slopes_mh": ("y ~ x + (x | subject) + (1 | item)", _crossed_data(10, 6, 0.6, seed=1),
                          {"fixed": NORMAL, "sigma": bh.HalfNormal(1), "sd": bh.HalfNormal(1), "corr": bh.LKJ(2)},
                          "mh"),
    # the same intercepts, coefficients drawn factor by factor (the collapsed Gibbs sampler)
    "crossed_intercepts_blocked": ("y ~ x + (1 | subject) + (1 | item)", _crossed_data(10, 6, 0.5, seed=3),
                                   {"fixed": NORMAL, "sigma": bh.InverseGamma(3, 2), "sd": bh.InverseGamma(3, 2)},
                                   "blocked"),
    "crossed_slopes_blocked": ("y ~ x + (x | subject) + (1 | item)", _crossed_data(10, 6, 0.6, seed=4),
                               {"fixed": NORMAL, "sigma": bh.HalfNormal(1), "sd": bh.HalfNormal(1), "corr": bh.LKJ(2)},
                               "blocked"),
    # subjects nested in groups, crossed with items, conjugate Gibbs
    "crossed_nested_gibbs": ("y ~ x + (1 | item) + (1 | group/subject)", _crossed_data(12, 6, 0.5, seed=2, groups=4),
                             {"fixed": NORMAL, "sigma": bh.InverseGamma(3, 2), "sd": bh.InverseGamma(3, 2)}, "gibbs"),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_sbc_model_family(family):
    formula, data, priors, method = FAMILIES[family]
    model = bh.hlm(formula, data, priors=priors)
    _check(model, method=method)


@pytest.mark.parametrize("method", ["mh", "gibbs"])
def test_sbc_known_level1_variances(method):
    """Meta-analysis form (eight-schools-like): known sampling SDs between 0.5 and 3."""
    rng = np.random.default_rng(4)
    data = {"y": rng.normal(size=10), "g": [f"s{j}" for j in range(10)], "se": rng.uniform(0.5, 3.0, size=10)}
    model = bh.hlm("y ~ 1 + (1 | g)", data, known_sd="se", priors={"fixed": bh.Normal(0, 5), "sd": bh.HalfNormal(2)})
    _check(model, method=method)


def _broken_update_T(rng, b, T, structure, priors):
    """The conjugate inverse-Wishart update of a one-block model with one degree of freedom too few."""
    from samplers.gibbs import draw_inv_wishart

    d = b.shape[1]
    prop = np.empty((d, d))
    ok = draw_inv_wishart(rng, priors.block_eta[0] + b.shape[0] - 1, b.T @ b + priors.iw_scale, prop)
    T[:, :] = prop
    return 1.0, ok


def test_sbc_catches_a_wrong_full_conditional(monkeypatch):
    """The same SBC run passes with the real Gibbs kernel and fails with a broken one.

    Random intercepts on 5 groups of 3 rows, conjugate priors, the chains run sweep by sweep
    through the Python ``sweep`` (``python_chain_draws``) so that its call of ``update_T`` can
    be replaced. With one degree of freedom missing the group SD is drawn too large, and 300
    simulations push the p-value of its ranks far below the threshold (about 1e-7 in this
    seeded run against 2.5e-4 required); with the real kernel every p-value stays above it.
    """
    import samplers.sweep as sweep_module

    data = _data(5, (3, 3), seed=2)
    priors = {"fixed": bh.Normal(0, 2), "sigma": bh.InverseGamma(3, 2), "cov": bh.InverseWishart(3.0, 1.0)}
    model = bh.hlm("y ~ 1 + (1 | g)", data, priors=priors)
    options = {"fit": python_chain_draws, "method": "gibbs", "warmup": 100, "draws": 400}
    good = sbc(model, n_sims=300, seed=5, **options).uniformity()
    assert (good["p_value"] >= ALPHA / len(good)).all(), good
    monkeypatch.setattr(sweep_module, "update_T", _broken_update_T)
    bad = sbc(model, n_sims=300, seed=5, **options).uniformity()
    assert bad.loc["sd[Intercept]", "p_value"] < ALPHA / len(bad), bad
    assert bad.loc["sd[Intercept]", "z_mean"] < 0  # the truth ranks low: the draws are too large
