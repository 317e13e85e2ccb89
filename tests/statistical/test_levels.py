"""Three and four levels: the posterior against REML (pastes), frequentist coverage on
simulated data, and simulation-based calibration.

False-alarm rates are written beside each test; every run uses fixed seeds, so a failure
reproduces.
"""

import numpy as np
import pytest
from scipy import stats as sps

import bayeshlm as bh
from bayeshlm.testing import sbc
from tests.statistical.mc import ess


@pytest.mark.parametrize("method", ["mh", "gibbs"])
def test_pastes_posterior_close_to_reml(lme4_fits, method):
    """pastes, ``strength ~ 1 + (1 | batch/cask)``: 10 batches, 30 casks, 60 rows.

    Criteria as in ``test_lme4_agreement`` for the SDs (posterior median within half a
    posterior SD of REML) and the fixed effect's mean (within 0.2 posterior SD). With only
    10 batches the posterior SD of the intercept carries the uncertainty of the batch
    variance, which REML's standard error ignores: it must lie between 1 and 1.35 times the
    REML SE. Every checked quantity has a bulk ESS of at least 400 (asserted): MCSE at most
    0.05 posterior SD, a quarter of the tightest margin. The Gibbs sampler mixes slowly on
    the batch SD (the funnel of docs/design.md, "The samplers") and runs 10 times longer.
    """
    ref = lme4_fits["models"]["pastes"]["fits"]["REML"]
    model = bh.hlm("strength ~ 1 + (1 | batch/cask)", bh.load_dataset("pastes"))
    draws = 1000 if method == "mh" else 10000
    post = bh.sample(model, draws=draws, warmup=1000, chains=4, seed=20261126, method=method, progress=False,
                     log_likelihood=False).posterior
    x = post["fixed"].sel(fixed_term="Intercept").values
    assert ess(x) >= 400
    assert abs(x.mean() - ref["fixef"]["(Intercept)"]["estimate"]) <= 0.2 * x.std()
    assert 1.0 <= x.std() / ref["fixef"]["(Intercept)"]["se"] <= 1.35
    checks = [
        ("sigma", post["sigma"].values, ref["sigma"]),
        ("cask", post["batch_cask_sd"].values[..., 0], ref["random"]["cask:batch"]["sd"]["(Intercept)"]),
        ("batch", post["batch_sd"].values[..., 0], ref["random"]["batch"]["sd"]["(Intercept)"]),
    ]
    for label, v, target in checks:
        assert ess(v) >= 400, f"{label}: ESS {ess(v):.0f}"
        assert abs(np.median(v) - target) <= 0.5 * v.std(), f"{label}: median {np.median(v):.4f} vs {target:.4f}"


def _coverage(levels, n_rep, seed0):
    hits = {}
    for r in range(n_rep):
        df = bh.simulate_nested(levels=levels, seed=seed0 + r)
        model = bh.hlm(df.attrs["formula"], df)
        post = bh.sample(model, chains=2, warmup=500, draws=500, seed=r, progress=False, log_likelihood=False,
                         keep_group_draws=False).posterior
        truth = df.attrs["truth"]
        values = {f"fixed[{k}]": (post["fixed"].sel(fixed_term=k).values, v) for k, v in truth["fixed"].items()}
        values["sigma"] = (post["sigma"].values, truth["sigma"])
        for k, v in truth["sd"].items():
            coef, factor = k.split("|")
            g = factor.replace(":", "_")
            values[f"sd[{k}]"] = (post[f"{g}_sd"].sel({f"{g}_coef": coef}).values, v)
        for k, (x, v) in values.items():
            lo, hi = np.quantile(x, [0.05, 0.95])
            hits.setdefault(k, []).append(bool(lo <= v <= hi))
    return {k: int(np.sum(h)) for k, h in hits.items()}


@pytest.mark.parametrize(
    ("levels", "n_rep"),
    [
        ((("district", 10), ("school", (2, 5)), ("class", (2, 4))), 60),
        ((("a", 8), ("b", (2, 3)), ("c", (2, 3)), ("d", (2, 3))), 50),
    ],
    ids=["three_levels", "four_levels"],
)
def test_posterior_intervals_cover_true_parameters(levels, n_rep):
    """90% central intervals cover every fixed effect, sigma and group SD about 90% of the time.

    Data from :func:`bayeshlm.simulate_nested` (random intercepts at every level, a random
    slope at the finest, a cross-level interaction), default weak priors. The number of
    replicates covering a parameter is Binomial(n_rep, 0.9) when the intervals are
    calibrated at the true values; each parameter's count is tested with an exact two-sided
    binomial test at level 1e-3 / (number of parameters), so the test as a whole fails by
    chance with probability below 1e-3. (Bayesian intervals under weak priors are close to,
    not exactly, calibrated at a fixed truth: a gross error, such as a wrong level, gives
    coverages far below 0.9.) Power, from the exact binomial distribution at the Bonferroni
    level of 9 (10) parameters: with 60 (50) replicates a true coverage of 0.6 is flagged with
    probability 0.98 (0.95), one of 0.7 with 0.66 (0.55). Calibration itself is tested more
    finely by the SBC tests below.
    """
    counts = _coverage(levels, n_rep, seed0=1000 * len(levels))
    alpha = 1e-3 / len(counts)
    bad = {k: c / n_rep for k, c in counts.items() if sps.binomtest(c, n_rep, 0.9).pvalue < alpha}
    assert not bad, f"coverage of 90% intervals out of range: {bad}"


@pytest.mark.parametrize("method", ["mh", "gibbs"])
def test_sbc_three_levels(method):
    """Simulation-based calibration of ``y ~ x + (1 | a) + (x | a:b)`` (three levels, a
    correlated intercept and slope at the middle level, LKJ(2) on their correlation).

    300 simulations; ranks among 99 posterior draws (thinned from 2 x 300). Each of the 9
    quantities (fixed effects, sigma, SDs, correlation, the two intraclass correlations) is
    tested at level 1e-3 / 9 (chi-square on 10 bins and mean rank, Bonferroni over both),
    so the test fails by chance with probability below 1e-3.
    """
    df = bh.simulate_nested(levels=(("a", 8), ("b", 3)), rows=(2, 5), seed=3)
    priors = {"fixed": bh.Normal(0, 3), "sigma": bh.HalfNormal(1), "sd": bh.HalfNormal(1), "corr": bh.LKJ(2)}
    model = bh.hlm("y ~ x + (1 | a) + (x | a:b)", df, priors=priors)
    result = sbc(model, n_sims=300, seed=11, method=method)
    table = result.uniformity(bins=10)
    assert len(table) == 9
    bad = table[table["p_value"] < 1e-3 / len(table)]
    assert bad.empty, f"non-uniform SBC ranks:\n{bad}"
