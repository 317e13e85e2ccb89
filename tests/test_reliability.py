"""Reliability and shrinkage: the EM fit's own values, the formulas, the empirical-Bayes identity, the draws.

All checks are exact arithmetic (1e-8 relative or better), no Monte Carlo tolerance.
"""

import warnings

import numpy as np
import pytest

import bayeshlm as bh


@pytest.fixture(scope="module")
def sleep():
    model = bh.hlm("reaction ~ days + (days | subject)", bh.load_dataset("sleepstudy"))
    return model, bh.fit_em(model)


def test_the_em_values_are_the_fit_s_reliabilities():
    model = bh.hlm("mathach ~ ses_centered * sector + (ses_centered | school)", bh.load_dataset("hsb"))
    fit = bh.fit_em(model)
    table = bh.reliability(model, fit)
    ours = table["reliability"].to_numpy().reshape(-1, 2)
    np.testing.assert_allclose(ours, fit.reliability_by_group[: ours.shape[0], :2], rtol=1e-8)
    average = bh.reliability(model, fit, average=True)
    assert average.loc["Intercept", "reliability"] == pytest.approx(fit.reliability["Intercept"], rel=1e-8)


def test_a_random_intercept_s_reliability_and_shrinkage():
    data = bh.load_dataset("hsb")
    model = bh.hlm("mathach ~ ses_centered + (1 | school)", data)
    fit = bh.fit_em(model)
    table = bh.reliability(model, fit).xs("Intercept", level="coef")
    n = data.groupby("school").size()
    n = n.loc[[type(n.index[0])(label) for label in table.index]].to_numpy()
    tau2, s2 = fit.sd["Intercept"] ** 2, fit.sigma**2
    np.testing.assert_allclose(table["n"], n)
    np.testing.assert_allclose(table["reliability"], tau2 / (tau2 + s2 / n), rtol=1e-10)
    np.testing.assert_allclose(table["shrinkage"], 1 - table["reliability"], rtol=1e-10)


def test_the_shrinkage_matrix_is_the_one_that_makes_the_eb_estimates(sleep):
    """eb_j = implied_j + Lambda_j (ols_j - implied_j), Lambda_j = T (T + sigma^2 A_j^-1)^-1; 1 - diag is reported."""
    model, fit = sleep
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bh.ConvergenceWarning)
        post = bh.sample(model, chains=2, draws=50, warmup=50, seed=1, progress=False)
    total = bh.shrinkage_table(post, fit, model=model, kind="total")
    design = model.design
    s0, s1, r = fit.sd["Intercept"], fit.sd["days"], fit.corr["Intercept,days"]
    T = np.array([[s0**2, r * s0 * s1], [r * s0 * s1, s1**2]])
    shrink = bh.reliability(model, fit)["shrinkage"]
    for j, label in enumerate(design.group_labels[:6]):
        X = design.X[design.group_idx == j]
        Lam = T @ np.linalg.inv(T + fit.sigma**2 * np.linalg.inv(X.T @ X))
        rows = total.xs(str(label), level=0)
        np.testing.assert_allclose(rows["eb"] - rows["eb_implied"], Lam @ (rows["ols"] - rows["eb_implied"]),
                                   rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(shrink.xs(str(label), level=0), 1 - np.diag(Lam), rtol=1e-10)


@pytest.fixture(scope="module")
def sleep_post(sleep):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bh.ConvergenceWarning)
        return bh.sample(sleep[0], chains=2, draws=200, warmup=200, seed=4, progress=False)


def test_the_posterior_s_are_the_formulas_draw_by_draw(sleep, sleep_post):
    model, _ = sleep
    post = sleep_post
    p = post.posterior
    sd = p["subject_sd"].transpose("chain", "draw", "subject_coef").values.reshape(-1, 2)
    s2 = p["sigma"].values.reshape(-1) ** 2
    X = model.design.X[model.design.group_idx == 0]
    a_inv = np.linalg.inv(X.T @ X)
    lam = sd[:, 1] ** 2 / (sd[:, 1] ** 2 + s2 * a_inv[1, 1])
    table = bh.reliability(model, post, ci_prob=0.9)
    label = str(model.design.group_labels[0])
    assert table.loc[(label, "days"), "reliability"] == pytest.approx(lam.mean(), rel=1e-10)
    assert table.loc[(label, "days"), "reliability_upper"] == pytest.approx(np.quantile(lam, 0.95), rel=1e-10)
    assert bh.reliability(model, post, average=True).shape == (2, 6)


def test_the_report_gives_the_reliabilities_beside_the_em_values(sleep, sleep_post):
    model, fit = sleep
    rep = bh.report(sleep_post, model=model, em=fit)
    average = bh.reliability(model, sleep_post, average=True)
    np.testing.assert_allclose(rep.reliability["posterior"], average["reliability"], rtol=1e-12)
    np.testing.assert_allclose(rep.reliability["em"], [fit.reliability[c] for c in model.coef_names], rtol=1e-8)
    text = str(rep)
    assert "Reliability of the groups' own estimates" in text and "EM plug-in" in text
    assert "Reliability" in rep._repr_html_()
    assert len(bh.report(sleep_post).reliability) == 0  # without the model there are no rows to read
    with pytest.raises(ValueError, match="need the model"):
        bh.report(sleep_post, em=fit)


def test_reliability_and_coef_do_not_depend_on_units_or_location():
    """HSB with the response in thousandths around 1e6, SES in cents and the school's mean SES
    counted from 2015: reliabilities are unchanged, the schools' coefficients transform exactly.
    """
    data = bh.load_dataset("hsb")
    formula = "mathach ~ ses_centered * (sector + meanses) + (ses_centered | school)"
    base = bh.hlm(formula, data)
    moved = bh.hlm(formula, data.assign(mathach=1e6 + 1000 * data["mathach"], ses_centered=100 * data["ses_centered"],
                                        meanses=2015 + data["meanses"]))
    fit_base, fit_moved = bh.fit_em(base), bh.fit_em(moved)
    first = bh.reliability(base, fit_base)
    second = bh.reliability(moved, fit_moved)
    np.testing.assert_allclose(second["reliability"], first["reliability"], rtol=1e-5)
    np.testing.assert_allclose(second["shrinkage"], first["shrinkage"], rtol=1e-4, atol=1e-7)
    c1 = bh.coef(base, fit_base, wide=True)
    c2 = bh.coef(moved, fit_moved, wide=True)
    np.testing.assert_allclose(c2["Intercept"], 1e6 + 1000 * c1["Intercept"], rtol=1e-9)
    np.testing.assert_allclose(c2["ses_centered"], 10 * c1["ses_centered"], rtol=1e-5)


def test_what_has_no_reliability():
    scots = bh.hlm("attain ~ verbal + (1 | primary) + (1 | second)", bh.load_dataset("scotssec"))
    with pytest.raises(ValueError, match="crossed"):
        bh.reliability(scots, bh.fit_em(scots))
    binary = bh.hlm("use ~ age + (1 | district)", bh.load_dataset("contraception"), family="bernoulli")
    with pytest.raises(ValueError, match="no least-squares estimate on the link scale"):
        bh.reliability(binary, bh.fit_em(binary))


def test_the_reliability_plot_shows_every_group(sleep):
    import matplotlib

    matplotlib.use("Agg")
    model, fit = sleep
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bh.ConvergenceWarning)
        post = bh.sample(model, chains=2, draws=50, warmup=50, seed=1, progress=False)
    fig = bh.plot_reliability(model, post, "days", eb=fit)
    ax = fig.axes[0]
    points = ax.lines[0].get_ydata()
    assert len(points) == 18 and np.all((points > 0) & (points < 1))
    np.testing.assert_allclose(ax.lines[-1].get_ydata(), bh.reliability(model, fit).xs("days", level="coef")
                               ["reliability"])
    fig.canvas.draw()
