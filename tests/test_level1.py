"""The posterior of a level-1 variance other than ``sigma^2 / w_i``: ``sigma=`` and ``family="student"``.

docs/design.md, "Heterogeneous level-1 variance" and "Student-t level 1".

References: nlme's REML fits of ``varIdent`` and ``varExp`` models in
tests/golden/variance_model.json (tests/golden/variance_model.R), which the posterior's fixed
effects must match within 0.2 posterior SD. The Monte Carlo error of a posterior mean here
(4 chains x 1000 draws, effective sizes above 1000) is below 0.035 posterior SD, so a
discrepancy of 0.2 SD is not reached by chance (z > 5); the measured largest is given in
each test. The rest are identities (large ``nu`` against the Gaussian model, shifted and
scaled data, the stored log-likelihood against scipy) and the robustness the Student-t
level 1 is for.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

import bayeshlm as bh

GOLDEN = json.loads((Path(__file__).parent / "golden" / "variance_model.json").read_text())
HSB = "mathach ~ ses_centered * sector + meanses + (ses_centered | school)"
SLEEP = "reaction ~ days + (days | subject)"


def _data(name):
    d = bh.load_dataset(name)
    if name == "sleepstudy":
        d["late"] = (d["days"] >= 5).astype(int)
    return d


def _draws(post, name):
    x = post.posterior[name]
    return x.values.reshape(-1, *x.shape[2:])


@pytest.mark.slow
@pytest.mark.parametrize("key,name,formula,sigma", [
    ("hsb_ident", "hsb", HSB, "~ C(sector)"),
    ("sleepstudy_exp", "sleepstudy", SLEEP, "~ days"),
])
def test_posterior_agrees_with_nlme(key, name, formula, sigma):
    """Posterior means of the fixed effects within 0.2 posterior SD of nlme's REML estimates.

    Measured (seed 11): largest |mean - nlme| / sd 0.034 (HSB) and 0.020 (sleepstudy); delta
    0.014 and 0.005 posterior SD from nlme's, the median sigma 0.09 and 0.04; smallest bulk
    effective size 2750 and 1300.
    """
    model = bh.hlm(formula, _data(name), sigma=sigma)
    post = bh.sample(model, draws=1000, warmup=500, chains=4, seed=11, progress=False, log_likelihood=False)
    ref = GOLDEN["models"][key]["fits"]["REML"]
    fixed = _draws(post, "fixed")
    for q, term in enumerate(model.fixed_names):
        r = ref["fixef"][term.replace("Intercept", "(Intercept)")]
        gap = abs(fixed[:, q].mean() - r) / fixed[:, q].std()
        assert gap < 0.2, (term, gap)
    (value,) = ref["varfunc"].values()
    nlme_delta = 2 * np.log(value) if key.endswith("ident") else 2 * value
    delta = _draws(post, "sigma_delta")[:, 0]
    assert abs(delta.mean() - nlme_delta) < 0.3 * delta.std()
    sigma_draws = _draws(post, "sigma")
    assert abs(np.median(sigma_draws) - ref["sigma"]) < 0.5 * sigma_draws.std()


@pytest.mark.slow
def test_student_with_large_nu_is_the_gaussian_model():
    """nu = 1e5 fixed: the posterior of the Gaussian model, within Monte Carlo error (4 SE, two-sided 6e-5 each)."""
    d = _data("sleepstudy")
    runs = {}
    for fam, extra in (("gaussian", {}), ("student", {"nu": 1e5})):
        model = bh.hlm(SLEEP, d, family=fam, **extra)
        runs[fam] = bh.sample(model, draws=1000, warmup=500, chains=4, seed=5, progress=False)
    for name in ("fixed", "sigma", "subject_sd"):
        a, b = _draws(runs["gaussian"], name), _draws(runs["student"], name)
        a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
        se = np.sqrt(a.var(0) / 800 + b.var(0) / 800)  # effective sizes above 800 each
        assert np.all(np.abs(a.mean(0) - b.mean(0)) < 4 * se), name


def _contaminated(seed=3, n_groups=30, rows=20, share=0.05):
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(n_groups), rows)
    x = rng.normal(size=g.size)
    y = 2.0 + 1.0 * x + rng.normal(0, 0.7, n_groups)[g] + rng.normal(0, 1.0, g.size)
    clean = {"y": y.copy(), "x": x, "g": g.astype(str)}
    bad = rng.choice(g.size, int(share * g.size), replace=False)
    y[bad] += 12.0  # gross outliers, all on one side: they pull the mean
    return clean, {"y": y, "x": x, "g": g.astype(str)}


@pytest.mark.slow
def test_student_resists_gross_outliers():
    """5% of rows shifted by 12 residual SDs: Student-t fixed effects stay within 1 SE of the clean-data fit.

    The Gaussian fit of the contaminated data moves its intercept by more than 1 SE; the
    Student-t posterior means stay within 1 SE of the clean fit.
    """
    clean, dirty = _contaminated()
    formula = "y ~ x + (1 | g)"
    ref = bh.fit_em(bh.hlm(formula, clean))
    se = np.array([ref.fixed_se[k] for k in ref.fixed])
    ref_fixed = np.array(list(ref.fixed.values()))
    gauss = bh.fit_em(bh.hlm(formula, dirty))
    assert np.any(np.abs(np.array(list(gauss.fixed.values())) - ref_fixed) > se)
    post = bh.sample(bh.hlm(formula, dirty, family="student"), draws=1000, warmup=500, chains=2, seed=3,
                     progress=False)
    mean = _draws(post, "fixed").mean(0)
    assert np.all(np.abs(mean - ref_fixed) < se), (mean, ref_fixed, se)
    assert _draws(post, "nu").mean() < 5  # the outliers are seen as heavy tails


@pytest.mark.parametrize("kind", ["student", "hetero", "group"])
def test_shifted_and_scaled_data_give_the_same_draws(kind):
    """Response x1000 + 1e6 and the variance predictor x100 + 2015: the draws transform exactly (same seed)."""
    d = _data("sleepstudy")
    d["w"] = 1.0 + (d["days"] % 3)
    options = {"student": {"family": "student"}, "hetero": {"sigma": "~ days", "weights": "w"},
               "group": {"sigma": "~ late + (1 | subject)", "family": "student", "nu": 5.0}}[kind]
    e = d.copy()
    e["reaction"] = d["reaction"] * 1000 + 1e6
    e["days"] = d["days"] * 100 + 2015
    e["late"] = d["late"]
    f = "reaction ~ days + (days | subject)"
    runs = [bh.sample(bh.hlm(f, data, **options), draws=100, warmup=100, chains=1, seed=4, progress=False)
            for data in (d, e)]
    a, b = (r.posterior for r in runs)
    if kind == "hetero":  # sigma is a row's at days = 0, which the shift moves: compare at the mean day
        at_mean = [p["sigma"] * np.exp(0.5 * p["sigma_delta"].isel(sigma_term=0) * data["days"].mean())
                   for p, data in ((a, d), (b, e))]
        np.testing.assert_allclose(at_mean[1] / 1000, at_mean[0], rtol=1e-6)
    else:
        np.testing.assert_allclose(b["sigma"] / 1000, a["sigma"], rtol=1e-6)
    np.testing.assert_allclose(b["fixed"].sel(fixed_term="days") / 10, a["fixed"].sel(fixed_term="days"), rtol=1e-6)
    if "sigma_delta" in a:
        scale = 100.0 if kind == "hetero" else 1.0
        np.testing.assert_allclose(b["sigma_delta"] * scale, a["sigma_delta"], rtol=1e-6, atol=1e-9)
    if "nu" in a:
        np.testing.assert_allclose(b["nu"], a["nu"], rtol=1e-6)
    if "sigma_group" in a:
        np.testing.assert_allclose(b["sigma_group"] / 1000, a["sigma_group"], rtol=1e-6)
    ll_a, ll_b = runs[0].log_likelihood["reaction"], runs[1].log_likelihood["reaction"]
    np.testing.assert_allclose(ll_b + np.log(1000.0), ll_a, rtol=1e-6, atol=1e-8)


def test_stored_log_likelihood_is_each_rows_density():
    """The pointwise log-likelihood at a draw equals scipy's t density at that draw's parameters."""
    d = _data("sleepstudy")
    d["w"] = 1.0 + (d["days"] % 3)
    model = bh.hlm("reaction ~ days + (days | subject)", d, family="student", sigma="~ late + (1 | subject)",
                   weights="w")
    post = bh.sample(model, draws=20, warmup=50, chains=1, seed=8, progress=False)
    p = post.posterior.isel(chain=0, draw=7)
    fixed = p["fixed"].values
    eff = p["subject_effect"].sel(subject=[str(s) for s in d["subject"]]).values
    mean = fixed[0] + fixed[1] * d["days"] + eff[:, 0] + eff[:, 1] * d["days"]
    sd = (p["sigma_group"].sel(subject_sigma=[str(s) for s in d["subject"]]).values
          * np.exp(0.5 * p["sigma_delta"].values[0] * d["late"]) / np.sqrt(d["w"]))
    expected = sps.t.logpdf(d["reaction"], df=float(p["nu"]), loc=mean, scale=sd)
    np.testing.assert_allclose(post.log_likelihood["reaction"].isel(chain=0, draw=7).values, expected, rtol=1e-9)


@pytest.mark.slow
def test_grouped_statistics_give_the_posterior_of_the_rows(monkeypatch):
    """A variance constant within the groups (HSB's sector, a school variable): group-scaled statistics, no row pass.

    The same posterior as the path that reads the rows every sweep, within Monte Carlo
    error (4.5 SE; with 15 comparisons a false alarm has probability below 1e-4).
    """
    import bayeshlm.level1 as level1

    d = _data("hsb")
    model = bh.hlm("mathach ~ ses + sector + (1 + ses | school)", d, sigma="~ sector + (1 | school)")
    assert level1.level1_chains(model, 1, 1, np.zeros(0, dtype=np.int64), 0)[0].grouped == 1
    fast = bh.sample(model, draws=1000, warmup=500, chains=2, seed=1, progress=False)
    monkeypatch.setattr(level1, "_group_constants", lambda *args: (None, None))
    assert level1.level1_chains(model, 1, 1, np.zeros(0, dtype=np.int64), 0)[0].grouped == 0
    rows = bh.sample(model, draws=1000, warmup=500, chains=2, seed=2, progress=False)
    summaries = [bh.summary(p) for p in (fast, rows)]
    names = [n for n in summaries[0].index if "effect" not in n and "sigma_group[" not in n]
    a, b = (s.loc[names] for s in summaries)
    se = np.sqrt(a["mcse_mean"] ** 2 + b["mcse_mean"] ** 2)
    assert np.all(np.abs(a["mean"] - b["mean"]) < 4.5 * se), (a["mean"] - b["mean"]) / se

    # without the rows' log-likelihoods lp is the groups' quadratic forms: the sum of the rows' (same draws)
    monkeypatch.undo()
    lean = bh.sample(model, draws=20, warmup=10, chains=1, seed=1, progress=False, log_likelihood=False)
    full = bh.sample(model, draws=20, warmup=10, chains=1, seed=1, progress=False)
    np.testing.assert_allclose(lean.sample_stats["lp"], full.log_likelihood["mathach"].sum("obs"), rtol=1e-10)


def test_group_sds_are_recovered():
    """Groups with level-1 SDs from 0.3 to 3: the posterior medians follow them and omega covers its truth."""
    rng = np.random.default_rng(2)
    n_groups, rows = 25, 30
    g = np.repeat(np.arange(n_groups), rows)
    true_sd = np.exp(rng.normal(0.0, 0.6, n_groups))
    y = 1.0 + rng.normal(0, 0.5, n_groups)[g] + rng.normal(size=g.size) * true_sd[g]
    model = bh.hlm("y ~ 1 + (1 | g)", {"y": y, "g": g.astype(str)}, sigma="~ (1 | g)")
    post = bh.sample(model, draws=500, warmup=500, chains=2, seed=1, progress=False)
    med = np.median(_draws(post, "sigma_group"), axis=0)
    order = [int(x) for x in post.posterior["g_sigma"].values]
    assert np.corrcoef(np.log(med), np.log(true_sd[order]))[0, 1] > 0.95
    omega = _draws(post, "sigma_group_sd")
    lo, hi = np.quantile(omega, [0.005, 0.995])
    assert lo < 0.6 < hi


def test_refusals():
    d = _data("sleepstudy")
    student = bh.hlm(SLEEP, d, family="student")
    with pytest.raises(ValueError, match="blocked"):
        bh.sample(student, method="blocked", draws=10, warmup=10, chains=1, progress=False)
    with pytest.raises(NotImplementedError, match="Student-t"):
        bh.reliability(student, bh.sample(student, draws=10, warmup=10, chains=1, seed=1, progress=False))
    with pytest.raises(ValueError, match="nu"):
        bh.hlm(SLEEP, d, nu=4)
    with pytest.raises(ValueError, match="positive"):
        bh.hlm(SLEEP, d, family="student", nu=-1)
    with pytest.raises(ValueError, match="not in the data"):
        bh.hlm(SLEEP, d, sigma="~ (1 | nowhere)")
    with pytest.raises(ValueError, match="intercept only"):
        bh.hlm(SLEEP, d, sigma="~ (days | subject)")
    with pytest.raises(NotImplementedError, match="sample"):
        bh.fit_em(bh.hlm(SLEEP, d, sigma="~ (1 | subject)"))


def test_replicated_data_carry_each_rows_variance_and_t_errors():
    """posterior_predictive: the replicated errors' SD ratio of late to early days is exp(delta / 2) (5%), and
    predict draws Student-t errors (new rows of a sigma= model: tests/test_level1_predict.py)."""
    d = _data("sleepstudy")
    model = bh.hlm(SLEEP, d, sigma="~ late", family="student", nu=5.0)
    post = bh.sample(model, draws=500, warmup=300, chains=2, seed=3, progress=False)
    rep = bh.posterior_predictive(model, post, seed=1).posterior_predictive["reaction"].values.reshape(1000, -1)
    mean = bh.predict(model, post, d, kind="mean").values.reshape(1000, -1)
    err = rep - mean
    late = d["late"].to_numpy() == 1
    sd_scale = np.sqrt(5.0 / 3.0)  # a t_5 error's SD per unit scale
    expected = np.exp(0.5 * _draws(post, "sigma_delta")[:, 0])
    ratio = err[:, late].std() / err[:, ~late].std()
    assert abs(ratio / np.sqrt(np.mean(expected**2)) - 1) < 0.05
    early_sd = _draws(post, "sigma")
    assert abs(err[:, ~late].std() / (sd_scale * np.sqrt(np.mean(early_sd**2))) - 1) < 0.05
    student = bh.hlm(SLEEP, d, family="student", nu=3.0)
    post = bh.sample(student, draws=300, warmup=300, chains=2, seed=3, progress=False)
    new = d.head(2).copy()
    new["subject"] = "new"
    draws = bh.predict(student, post, new, seed=2, new_groups="population").values.reshape(-1, 2)
    kurt = ((draws - draws.mean(0)) ** 4).mean(0) / draws.var(0) ** 2
    assert np.all(kurt > 4)  # heavier tails than a normal's 3
