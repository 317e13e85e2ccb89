"""fixef, ranef, coef and varcorr against lme4's numbers and against the posterior's own draws.

lme4's conditional modes agree with the EM fit's to the optimiser's tolerance (1e-4 relative,
as in tests/test_em.py). ``coef`` goes beyond lme4's: for a coefficient with level-2
predictors and cross-level terms it adds them in at each group's values, checked here by
adding lme4's fixed effects and modes by hand.
"""

import numpy as np
import pandas as pd
import pytest

import bayeshlm as bh


@pytest.fixture(scope="module")
def sleep():
    model = bh.hlm("reaction ~ days + (days | subject)", bh.load_dataset("sleepstudy"))
    post = bh.sample(model, chains=2, draws=300, warmup=200, seed=4, progress=False)
    return model, bh.fit_em(model), post


@pytest.fixture(scope="module")
def hsb():
    data = bh.load_dataset("hsb")
    model = bh.hlm("mathach ~ ses_centered * (sector + meanses) + (ses_centered | school)", data)
    return data, model, bh.fit_em(model)


def _lme4(lme4_fits, key, method="REML"):
    return lme4_fits["models"][key]["fits"][method]


def test_fixef_and_varcorr_of_the_em_fit_are_lme4_s(sleep, lme4_fits):
    model, eb, _ = sleep
    ref = _lme4(lme4_fits, "sleepstudy_corr")
    table = bh.fixef(eb)
    assert list(table.index) == ["Intercept", "days"] and table.index.name == "term"
    assert table.loc["days", "estimate"] == pytest.approx(ref["fixef"]["days"]["estimate"], rel=1e-6)
    assert table.loc["days", "se"] == pytest.approx(ref["fixef"]["days"]["se"], rel=1e-4)
    half = table.loc["days", "upper"] - table.loc["days", "estimate"]
    assert half == pytest.approx(1.959964 * table.loc["days", "se"], rel=1e-6)
    vc = bh.varcorr(eb)
    assert list(vc.columns) == ["grp", "var1", "var2", "vcov", "sdcor"]
    block = ref["random"]["subject"]
    sd_days = vc[(vc.grp == "subject") & (vc.var1 == "days") & vc.var2.isna()]
    assert sd_days["sdcor"].item() == pytest.approx(block["sd"]["days"], rel=1e-4)
    pair = vc[(vc.grp == "subject") & (vc.var2 == "days")]
    assert pair["sdcor"].item() == pytest.approx(block["cor"]["(Intercept)|days"], rel=1e-3, abs=1e-4)
    assert pair["vcov"].item() == pytest.approx(block["cov_matrix"][0][1], rel=1e-3)
    resid = vc[vc.grp == "Residual"]
    assert resid["sdcor"].item() == pytest.approx(ref["sigma"], rel=1e-5)
    assert resid["vcov"].item() == pytest.approx(ref["sigma"] ** 2, rel=1e-5)


def test_ranef_of_the_em_fit_are_lme4_s_conditional_modes(sleep, lme4_fits):
    _, eb, _ = sleep
    ref = _lme4(lme4_fits, "sleepstudy_corr")["ranef"]["subject"]
    table = bh.ranef(eb)
    assert table.index.names == ["subject", "coef"]
    for ours, theirs in (("Intercept", "(Intercept)"), ("days", "days")):
        got = table.xs(ours, level="coef").loc[[str(level) for level in ref["levels"]]]
        np.testing.assert_allclose(got["estimate"], ref["mode"][theirs], rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(got["se"], ref["cond_sd"][theirs], rtol=1e-4)
    wide = bh.ranef(eb, wide=True)
    assert list(wide.columns) == ["Intercept", "days"] and len(wide) == 18


def test_ranef_of_both_factors_of_a_three_level_model(lme4_fits):
    ref = _lme4(lme4_fits, "pastes")["ranef"]
    model = bh.hlm("strength ~ 1 + (1 | batch/cask)", bh.load_dataset("pastes"))
    eb = bh.fit_em(model)
    casks = bh.ranef(eb, "batch:cask").xs("Intercept", level="coef")
    ours = [":".join(reversed(level.split(":"))) for level in ref["cask:batch"]["levels"]]  # lme4: "a:A"
    np.testing.assert_allclose(casks.loc[ours, "estimate"], ref["cask:batch"]["mode"]["(Intercept)"], rtol=1e-4,
                               atol=1e-5)
    batches = bh.ranef(eb, "batch").xs("Intercept", level="coef")
    np.testing.assert_allclose(batches.loc[ref["batch"]["levels"], "se"], ref["batch"]["cond_sd"]["(Intercept)"],
                               rtol=1e-4)
    with pytest.raises(ValueError, match="factor must be one of"):
        bh.ranef(eb, "sample")
    # a cask's coefficient adds its batch's deviation to the fixed intercept: 30 casks, all three parts
    total = bh.coef(model, eb, "batch:cask", wide=True)["Intercept"]
    batch_of = {f"{b}:{c}": b for b, c in (label.split(":") for label in total.index)}
    expected = [eb.fixed["Intercept"] + casks.loc[label, "estimate"] + batches.loc[batch_of[label], "estimate"]
                for label in total.index]
    np.testing.assert_allclose(total.to_numpy(), expected, rtol=1e-12)


def test_coef_adds_the_level_2_predictors_and_cross_level_terms(hsb, lme4_fits):
    data, model, eb = hsb
    ref = _lme4(lme4_fits, "hsb_rb")
    fe = {k: v["estimate"] for k, v in ref["fixef"].items()}
    modes = ref["ranef"]["school"]
    school = data.groupby("school").first()
    got = bh.coef(model, eb, wide=True)
    assert list(got.columns) == ["Intercept", "ses_centered"]  # every fixed term enters a coefficient
    labels = [str(level) for level in modes["levels"]]
    w = school.loc[[type(school.index[0])(lab) for lab in labels]]
    intercept = (fe["(Intercept)"] + fe["sector"] * w["sector"].to_numpy() + fe["meanses"] * w["meanses"].to_numpy()
                 + np.asarray(modes["mode"]["(Intercept)"]))
    slope = (fe["ses_centered"] + fe["ses_centered:sector"] * w["sector"].to_numpy()
             + fe["ses_centered:meanses"] * w["meanses"].to_numpy() + np.asarray(modes["mode"]["ses_centered"]))
    np.testing.assert_allclose(got.loc[labels, "Intercept"], intercept, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(got.loc[labels, "ses_centered"], slope, rtol=1e-4, atol=1e-3)


def test_a_level_1_predictor_without_a_random_slope_is_a_column_of_its_own(hsb):
    data, _, _ = hsb
    model = bh.hlm("mathach ~ ses_centered + female + sector + (1 | school)", data)
    eb = bh.fit_em(model)
    got = bh.coef(model, eb, wide=True)
    assert list(got.columns) == ["Intercept", "ses_centered", "female"]
    assert np.all(got["female"] == eb.fixed["female"]) and np.all(got["ses_centered"] == eb.fixed["ses_centered"])
    sector = data.groupby("school")["sector"].first()
    dev = bh.ranef(eb, wide=True)["Intercept"]
    expected = eb.fixed["Intercept"] + eb.fixed["sector"] * sector.loc[got.index.astype(sector.index.dtype)].to_numpy()
    np.testing.assert_allclose(got["Intercept"], expected + dev.loc[got.index].to_numpy(), rtol=1e-12)


def test_posterior_accessors_summarise_the_draws(sleep):
    model, _, post = sleep
    p = post.posterior
    fx = bh.fixef(post, ci_prob=0.9)
    days = p["fixed"].sel(fixed_term="days").values.reshape(-1)
    assert fx.loc["days", "mean"] == pytest.approx(days.mean(), rel=1e-12)
    assert fx.loc["days", "upper"] == pytest.approx(np.quantile(days, 0.95), rel=1e-12)
    assert bh.fixef(post, draws=True).dims == ("chain", "draw", "fixed_term")
    re = bh.ranef(post)
    dev = p["subject_effect"].sel(subject="308", subject_coef="days").values.reshape(-1)
    assert re.loc[("308", "days"), "sd"] == pytest.approx(dev.std(ddof=1), rel=1e-12)
    # coef: the fixed effect plus the deviation, draw by draw
    draws = bh.coef(model, post, draws=True)
    assert draws.dims == ("chain", "draw", "subject", "coef")
    total = p["fixed"].sel(fixed_term="days") + p["subject_effect"].sel(subject_coef="days")
    np.testing.assert_allclose(draws.sel(coef="days").values, total.transpose("chain", "draw", "subject").values,
                               rtol=1e-12)
    summary = bh.coef(model, post)
    assert summary.loc[("308", "days"), "mean"] == pytest.approx(float(total.sel(subject="308").mean()), rel=1e-12)
    vc = bh.varcorr(post)
    sd = p["subject_sd"].sel(subject_coef="Intercept").values.reshape(-1)
    row = vc[(vc.grp == "subject") & (vc.var1 == "Intercept") & vc.var2.isna()]
    assert row["vcov"].item() == pytest.approx(np.mean(sd**2), rel=1e-12)
    assert row["sdcor_lower"].item() == pytest.approx(np.quantile(sd, 0.025), rel=1e-12)


def test_accessors_refuse_what_they_cannot_give(sleep):
    model, eb, post = sleep
    with pytest.raises(ValueError, match="draws=True needs a posterior"):
        bh.fixef(eb, draws=True)
    with pytest.raises(TypeError, match="an EM fit .* or a posterior"):
        bh.ranef(pd.DataFrame())
    other = bh.hlm("reaction ~ days + (1 | subject)", bh.load_dataset("sleepstudy"))
    with pytest.raises(bh.ModelMismatchError):
        bh.coef(other, eb)
    with pytest.raises(ValueError, match="ci_prob"):
        bh.fixef(post, ci_prob=95)
    chunked = bh.hlm_stats("reaction ~ days + (days | subject)", bh.load_dataset("sleepstudy"))
    with pytest.raises(ValueError, match="statistics alone"):
        bh.coef(chunked, bh.fit_em(chunked))
    with pytest.raises(ValueError, match="statistics alone"):
        bh.reliability(chunked, bh.fit_em(chunked))
