"""The text and HTML report of a posterior fit (bayeshlm.report)."""

import numpy as np
import pytest

import bayeshlm as bh


@pytest.fixture(scope="module")
def sleep_fit():
    model = bh.hlm("reaction ~ days + (days | subject)", bh.load_dataset("sleepstudy"))
    return model, bh.sample(model, chains=2, draws=400, warmup=300, seed=21, progress=False)


def test_report_tables_are_the_posterior_summaries(sleep_fit):
    _, post = sleep_fit
    rep = bh.report(post)
    p = post.posterior
    np.testing.assert_allclose(rep.fixed["estimate"].values, p["fixed"].mean(("chain", "draw")).values)
    np.testing.assert_allclose(rep.fixed["est_error"].values, p["fixed"].std(("chain", "draw"), ddof=1).values,
                               rtol=1e-6)
    sd = p["subject_sd"].values.reshape(-1, 2)
    random = rep.random.set_index(["group", "name"])
    np.testing.assert_allclose(random.loc[("subject", "days"), "variance"], np.mean(sd[:, 1] ** 2))
    sigma = p["sigma"].values.ravel()
    np.testing.assert_allclose(random.loc[("Residual", ""), "sd"], sigma.mean())
    np.testing.assert_allclose(random.loc[("subject", "Intercept"), ["sd_lower", "sd_upper"]].astype(float),
                               np.quantile(sd[:, 0], [0.025, 0.975]))
    icc = sd[:, 0] ** 2 / (sd[:, 0] ** 2 + sigma ** 2)
    np.testing.assert_allclose(rep.icc["icc"].iloc[0], icc.mean())
    assert list(rep.correlations["pair"]) == ["Intercept,days"]
    assert rep.header["n_obs"] == 180 and rep.header["n_groups"] == {"subject": 18}


def test_report_text_layout(sleep_fit):
    _, post = sleep_fit
    rep = bh.report(post)
    text = str(rep)
    order = ["Formula: reaction ~ days + (days | subject)", "Data: 180 observations; subject: 18 groups",
             "Random effects", "Residual", "Correlations", "Intraclass correlation", "Fixed effects",
             "Convergence", "Priors:", "corr: LKJ"]
    positions = [text.index(part) for part in order]
    assert positions == sorted(positions)
    assert f"{rep.fixed.loc['days', 'estimate']:.4g}" in text
    html = rep._repr_html_()
    assert html.count("<table") == 4 and "Fixed effects" in html and "&lt;" not in html.split("<table")[0][:5]
    # few draws: the report says so
    model, _ = sleep_fit
    short = bh.sample(model, chains=2, draws=30, warmup=30, seed=1, progress=False)
    assert "WARNING: an ESS below 400" in str(bh.report(short))


def test_report_with_known_variances_has_no_residual_or_icc():
    model = bh.hlm("y ~ 1 + (1 | school)", bh.load_dataset("eight_schools"), known_sd="sigma")
    rep = bh.report(bh.sample(model, chains=2, draws=200, warmup=200, seed=3, progress=False))
    assert list(rep.random["group"]) == ["school"] and len(rep.icc) == 0
    assert "Residual" not in str(rep) and "Intraclass" not in str(rep)


def test_report_survives_save_and_load(sleep_fit, tmp_path):
    _, post = sleep_fit
    path = tmp_path / "fit.nc"
    bh.save(post, path)
    again = bh.report(bh.load(path))
    np.testing.assert_allclose(again.fixed["estimate"], bh.report(post).fixed["estimate"])
    assert again.header["n_groups"] == {"subject": 18}


def test_report_icc_of_nested_groups_adds_the_coarser_variances():
    df = bh.simulate_nested(levels=(("district", 6), ("school", 3)), rows=(4, 8), seed=5)
    model = bh.hlm("y ~ x + (1 | district) + (1 | district:school)", df)
    post = bh.sample(model, chains=2, draws=200, warmup=200, seed=5, progress=False)
    icc = bh.report(post).icc.set_index("group")["icc"]
    p = post.posterior
    v_school = p["district_school_sd"].values.reshape(-1) ** 2
    v_district = p["district_sd"].values.reshape(-1) ** 2
    total = v_school + v_district + p["sigma"].values.reshape(-1) ** 2
    np.testing.assert_allclose(icc["district:school"], np.mean((v_school + v_district) / total))
    np.testing.assert_allclose(icc["district"], np.mean(v_district / total))


def test_report_of_a_pooled_regression_and_of_a_foreign_tree():
    import xarray as xr

    pooled = bh.hlm("reaction ~ days", bh.load_dataset("sleepstudy"))
    rep = bh.report(bh.sample(pooled, chains=2, draws=100, warmup=100, seed=1, progress=False))
    assert list(rep.random["group"]) == ["Residual"] and len(rep.icc) == 0 and "Data: 180 observations" in str(rep)
    foreign = xr.DataTree.from_dict({"posterior": xr.Dataset({"mu": (("chain", "draw"), np.zeros((1, 5)))})})
    with pytest.raises(ValueError, match="not a posterior drawn by bayeshlm.sample"):
        bh.report(foreign)
