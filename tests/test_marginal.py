"""Estimated marginal means, trends and contrasts against emmeans (tests/golden/marginal_means.json).

Tolerances. On the Gaussian models (REML fits; lme4 run to tight tolerances, so both fits sit
at the same optimum) estimates, standard errors, Satterthwaite's degrees of freedom and the
interval ends are held to 1e-4 relative, as asked; the largest differences found are 3e-7
(the degrees of freedom of the random-slope models, from the finite differences both sides
take), most are below 1e-8. Kenward and Roger's, from :mod:`bayeshlm.inference`, agree as
closely (1.3e-7) and are held to the same 1e-4. The GLMM (cbpp) is held to the tolerance the
EM fit itself meets against glmer (tests/test_glmm.py): with 25-point adaptive quadrature
estimates within 1e-3 (link-scale) standard errors and standard errors within 2e-3 relative
(found: 5e-5 SEs, 2e-5); with the Laplace approximation, where lme4's value is itself
inexact, 1e-2 SEs and 2e-2 (found: 2.5e-3 SEs, 1.3e-2); interval ends, which move with the
SE, within the first plus twice the second (found: 6e-5 and 2.6e-2 SEs). The posterior check is the only
random one: its tolerance and false-alarm rate are written beside it. Everything else is
deterministic.
"""

import json
from pathlib import Path

import numpy as np
import pytest

import bayeshlm as bh
from bayeshlm.marginal import _averaging
from bayeshlm.predict import response_mean

GOLDEN = json.loads((Path(__file__).parent / "golden" / "marginal_means.json").read_text())["models"]
GAUSSIAN = sorted(k for k, v in GOLDEN.items() if v["family"] == "gaussian")
CBPP = "cbind(incidence, size - incidence) ~ C(period) + (1 | herd)"
COLUMNS = ("estimate", "se", "df", "lower", "upper")


def _data(name):
    """The data with the factors tests/golden/marginal_means.R makes, made the same way."""
    d = bh.load_dataset(name)
    if name == "hsb":
        d["sector_f"] = np.where(d["sector"] == 1, "catholic", "public")
    if name == "sleepstudy":
        d["day_f"] = "d" + d["days"].astype(str)
    if name == "radon":
        d["floor_f"] = np.where(d["floor"] == 1, "first", "basement")
    return d


_FITS = {}


def _fit(key):
    if key not in _FITS:
        ref = GOLDEN[key]
        model = bh.hlm(ref["formula"], _data(ref["dataset"]))
        _FITS[key] = (model, bh.fit_em(model))
    return _FITS[key]


def _number(x):
    return np.inf if x == "Inf" else float(x)


def _worst(table, rows, columns, rename=None):
    """Largest relative difference per column between a table and emmeans' rows (in order)."""
    assert len(table) == len(rows)
    out = {}
    for column in columns:
        theirs = np.array([_number(r[(rename or {}).get(column, column)]) for r in rows])
        mine = table[column].to_numpy(dtype=float)
        if np.all(np.isinf(theirs)):
            assert np.all(np.isinf(mine)), column
            continue
        out[column] = float(np.max(np.abs(mine - theirs) / np.abs(theirs)))
    return out


def _by_values(table, rows, by):
    for column in by:
        mine = [str(v) if isinstance(v, str) else float(v) for v in table[column]]
        theirs = [r[column] if isinstance(r[column], str) else float(r[column]) for r in rows]
        assert mine == theirs, column


@pytest.mark.parametrize("ddf", ["satterthwaite", "kenward-roger"])
@pytest.mark.parametrize("key", GAUSSIAN)
def test_means_agree_with_emmeans(key, ddf):
    model, fit = _fit(key)
    for name, spec in GOLDEN[key]["means"].items():
        rows = spec[ddf.replace("-", "_")]
        table = bh.marginal_means(model, fit, spec["by"] or None, at=spec["at"], ddf=ddf)
        assert list(table.columns) == list(spec["by"]) + list(COLUMNS)
        _by_values(table, rows, spec["by"])
        worst = _worst(table, rows, COLUMNS)
        assert max(worst.values()) < 1e-4, (name, worst)


@pytest.mark.parametrize("ddf", ["satterthwaite", "kenward-roger"])
@pytest.mark.parametrize("key", GAUSSIAN)
def test_contrasts_agree_with_emmeans(key, ddf):
    model, fit = _fit(key)
    for name, spec in GOLDEN[key]["contrasts"].items():
        of = GOLDEN[key]["means"][spec["of"]]
        adjust = None if spec["adjust"] == "none" else spec["adjust"]
        rows = spec[ddf.replace("-", "_")]
        table = bh.marginal_means(model, fit, of["by"] or None, at=of["at"], ddf=ddf, contrasts=spec["method"],
                                  adjust=adjust)
        assert list(table.columns) == ["contrast", *COLUMNS, "t", "p_value"]
        worst = _worst(table, rows, (*COLUMNS, "t", "p_value"), {"p_value": "p"})
        assert max(worst.values()) < 1e-4, (name, worst)
        if len(of["by"]) == 1 and isinstance(rows[0]["contrast"], str) and "=" not in table["contrast"][0]:
            assert list(table["contrast"]) == [r["contrast"] for r in rows]  # one factor: emmeans' labels


@pytest.mark.parametrize("ddf", ["satterthwaite", "kenward-roger"])
@pytest.mark.parametrize("key", [k for k in GAUSSIAN if GOLDEN[k]["trends"]])
def test_slopes_agree_with_emtrends(key, ddf):
    model, fit = _fit(key)
    gk = ddf.replace("-", "_")
    for name, spec in GOLDEN[key]["trends"].items():
        table = bh.marginal_slopes(model, fit, spec["var"], spec["by"] or None, ddf=ddf)
        _by_values(table, spec[gk], spec["by"])
        worst = _worst(table, spec[gk], COLUMNS)
        assert max(worst.values()) < 1e-4, (name, worst)
        if f"{gk}_pairs" in spec:
            table = bh.marginal_slopes(model, fit, spec["var"], spec["by"], ddf=ddf, contrasts="pairwise")
            worst = _worst(table, spec[f"{gk}_pairs"], (*COLUMNS, "t", "p_value"), {"p_value": "p"})
            assert max(worst.values()) < 1e-4, (name, worst)


@pytest.mark.parametrize("key", GAUSSIAN)
def test_averaging_vectors_are_emmeans_linfct(key):
    """Each mean's ``l`` (the average of its grid rows' design rows) is emmeans' ``linfct`` row."""
    model, _ = _fit(key)
    for spec in GOLDEN[key]["means"].values():
        _, L, _ = _averaging(model, spec["by"] or None, spec["at"])
        np.testing.assert_allclose(L, np.array(spec["linfct"], dtype=float).reshape(L.shape), rtol=1e-12,
                                   atol=1e-12)


def test_reference_grid():
    model, _ = _fit("hsb")
    grid = bh.reference_grid(model)
    assert list(grid.columns) == ["meanses", "sector_f", "ses_centered"]
    assert list(grid["sector_f"]) == ["catholic", "public"]
    d = _data("hsb")
    assert grid["meanses"].iloc[0] == pytest.approx(d["meanses"].mean(), rel=1e-12)
    grid = bh.reference_grid(model, at={"meanses": [-1, 0, 1], "sector_f": "public"})
    assert len(grid) == 3 and set(grid["sector_f"]) == {"public"}
    assert list(grid["meanses"]) == [-1.0, 0.0, 1.0]  # the first column varies fastest, as emmeans orders


def _glmm(agq):
    key = ("cbpp", agq)
    if key not in _FITS:
        model = bh.hlm(CBPP, bh.load_dataset("cbpp"), family="binomial")
        _FITS[key] = (model, bh.fit_em(model, n_agq=agq))
    return _FITS[key]


def _glmm_distance(table, rows, link_rows, link):
    """Differences from emmeans' rows on the link scale, in units of the link-scale SE, and the SEs' ratio.

    ``link`` maps a value to the link scale (the identity, the logit of a probability, the log
    of an odds ratio).
    """
    se = np.array([r["se"] for r in link_rows])
    out = {c: float(np.max(np.abs(link(table[c].to_numpy()) - link(np.array([r[c] for r in rows]))) / se))
           for c in ("estimate", "lower", "upper")}
    out["se"] = float(np.max(np.abs(table["se"].to_numpy() / np.array([r["se"] for r in rows]) - 1)))
    return out


@pytest.mark.parametrize("agq, tol_est, tol_se", [(25, 1e-3, 2e-3), (1, 1e-2, 2e-2)])
def test_glmm_agrees_with_emmeans(agq, tol_est, tol_se):
    """cbpp against glmer + emmeans, on the response scale (probabilities, odds ratios) and the link scale.

    Estimates within ``tol_est`` link-scale SEs and SEs within ``tol_se`` relative, the fit's own
    agreement with glmer; an interval end moves with its SE too (1.96 of them), so the ends are
    held to ``tol_est + 2 tol_se`` SEs.
    """
    model, fit = _glmm(agq)
    ref = GOLDEN["cbpp"]["fits"][f"nAGQ{agq}"]
    logit = {"response": lambda p: np.log(p / (1 - p)), "link": lambda x: x}
    log = {"response": np.log, "link": lambda x: x}
    for scale in ("response", "link"):
        for name, spec in ref["means"].items():
            by = ["period"] if spec["by"] else None
            table = bh.marginal_means(model, fit, by, ddf="normal", scale=scale)
            rows = spec[scale]
            assert np.all(np.isinf(table["df"]))
            if by:
                assert [str(v) for v in table["period"]] == [r["period_f"] for r in rows]
            d = _glmm_distance(table, rows, spec["link"], logit[scale])
            assert d["estimate"] < tol_est and d["se"] < tol_se, (scale, name, d)
            assert max(d["lower"], d["upper"]) < tol_est + 2 * tol_se, (scale, name, d)
        for name, spec in ref["contrasts"].items():
            table = bh.marginal_means(model, fit, "C(period)", ddf="normal", scale=scale, contrasts=spec["method"])
            rows = spec[scale]
            # on the response scale a logit model's contrasts are odds ratios, as emmeans gives them
            assert table.attrs["scale"] == ("odds ratio" if scale == "response" else "link")
            assert list(table["contrast"]) == [r["contrast"].replace("period_f", "") for r in rows]
            d = _glmm_distance(table, rows, spec["link"], log[scale])
            assert d["estimate"] < tol_est and d["se"] < tol_se, (scale, name, d)
            assert max(d["lower"], d["upper"]) < tol_est + 2 * tol_se, (scale, name, d)
            np.testing.assert_allclose(table["t"], [r["t"] for r in rows], rtol=tol_se, atol=tol_est)


def test_glmm_response_scale_is_the_back_transformed_link_scale():
    model, fit = _glmm(1)
    link = bh.marginal_means(model, fit, "period", ddf="normal", scale="link")
    resp = bh.marginal_means(model, fit, "period", ddf="normal")
    p = 1 / (1 + np.exp(-link["estimate"]))
    np.testing.assert_allclose(resp["estimate"], p, rtol=1e-12)
    np.testing.assert_allclose(resp["se"], link["se"] * p * (1 - p), rtol=1e-12)
    np.testing.assert_allclose(resp["lower"], 1 / (1 + np.exp(-link["lower"])), rtol=1e-12)
    assert resp.attrs["scale"] == "response" and link.attrs["scale"] == "link"


@pytest.fixture(scope="module")
def hsb_posterior():
    model, _ = _fit("hsb")
    return bh.sample(model, draws=500, warmup=300, chains=2, seed=20240523, progress=False)


def test_posterior_means_agree_with_the_em_fit(hsb_posterior):
    """Means of the draws of ``l'a`` against the REML estimates, SDs against the SEs.

    Tolerance: |posterior mean - EM estimate| < 0.2 posterior SD. The posterior mean and the
    REML estimate themselves differ by up to 0.035 SD here (measured with 10000 draws); with
    1000 draws of nearly independent fixed effects (ESS 900 or more) the Monte Carlo SE is
    0.033 SD, so the remaining margin is 5 Monte Carlo SEs: a false alarm has probability
    below 6e-7 per comparison, 4e-6 over the six. The SD ratio is held to [0.85, 1.15]: its
    Monte Carlo SE is 2.4% and the two differ by 2% at most, a margin of 5.4 of its SEs (false
    alarm below 1e-7 each). The seed is fixed, so the test is deterministic.
    """
    model, fit = _fit("hsb")
    pairs = [(bh.marginal_means(model, hsb_posterior, "sector_f"), bh.marginal_means(model, fit, "sector_f")),
             (bh.marginal_means(model, hsb_posterior, "sector_f", contrasts="pairwise"),
              bh.marginal_means(model, fit, "sector_f", contrasts="pairwise")),
             (bh.marginal_slopes(model, hsb_posterior, "ses_centered", "sector_f"),
              bh.marginal_slopes(model, fit, "ses_centered", "sector_f"))]
    for post, em in pairs:
        assert list(post.columns[-4:]) == ["mean", "sd", "lower", "upper"]
        assert np.all(np.abs(post["mean"] - em["estimate"]) < 0.2 * post["sd"]), (post, em)
        assert np.all(np.abs(post["sd"] / em["se"] - 1) < 0.15), (post, em)


def test_posterior_draws_are_l_times_the_fixed_draws(hsb_posterior):
    model, _ = _fit("hsb")
    da = bh.marginal_means(model, hsb_posterior, "sector_f", draws=True)
    assert da.dims == ("chain", "draw", "level") and list(da["level"].values) == ["catholic", "public"]
    assert list(da["sector_f"].values) == ["catholic", "public"]
    fixed = bh.fixef(hsb_posterior, draws=True).sel(fixed_term=list(model.fixed_names))
    _, L, _ = _averaging(model, "sector_f", None)
    np.testing.assert_allclose(da.values, np.einsum("cdp,lp->cdl", fixed.values, L), rtol=1e-12)
    table = bh.marginal_means(model, hsb_posterior, "sector_f", level=0.9)
    flat = da.values.reshape(-1, 2)
    np.testing.assert_allclose(table["sd"], flat.std(axis=0, ddof=1), rtol=1e-12)
    np.testing.assert_allclose(table["mean"], flat.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(table["upper"], np.quantile(flat, 0.95, axis=0), rtol=1e-12)
    diff = bh.marginal_means(model, hsb_posterior, "sector_f", contrasts="pairwise", draws=True)
    assert diff.dims == ("chain", "draw", "contrast")
    np.testing.assert_allclose(diff.values[..., 0], da.values[..., 0] - da.values[..., 1], rtol=1e-12)


@pytest.mark.filterwarnings("ignore::bayeshlm.ConvergenceWarning")  # a few draws: what is checked is exact
def test_posterior_of_a_glmm_transforms_each_draw():
    model, fit = _glmm(1)
    post = bh.sample(model, draws=100, warmup=100, chains=2, seed=7, progress=False)
    link = bh.marginal_means(model, post, "period", scale="link", draws=True)
    resp = bh.marginal_means(model, post, "period", draws=True)
    np.testing.assert_allclose(resp.values, response_mean(model, link.values), rtol=1e-12)
    table = bh.marginal_means(model, post, "period")
    np.testing.assert_allclose(table["mean"], resp.values.reshape(-1, 4).mean(axis=0), rtol=1e-12)
    ratio = bh.marginal_means(model, post, "period", contrasts="trt.vs.ctrl", draws=True)
    np.testing.assert_allclose(ratio.values[..., 0], np.exp(link.values[..., 1] - link.values[..., 0]), rtol=1e-12)


def _shifted(name):
    d = _data(name)
    if name == "sleepstudy":
        return d, d.assign(reaction=d["reaction"] * 1000 + 1e6, days=d["days"] + 2015)
    return d, d.assign(mathach=d["mathach"] * 1000 + 1e6, meanses=d["meanses"] + 2015)


@pytest.mark.parametrize("name, formula, by, at, moved_at, var", [
    ("sleepstudy", "reaction ~ days + (days | subject)", "days", [0, 4.5, 9], [2015, 2019.5, 2024], "days"),
    ("hsb", GOLDEN["hsb"]["formula"], ["sector_f", "meanses"], [-0.5, 0.5], [2014.5, 2015.5], "meanses"),
])
def test_units_and_location_change_the_results_as_they_should(name, formula, by, at, moved_at, var):
    """Response x 1000 + 1e6 and a predictor + 2015: means move and scale, contrasts and slopes scale.

    Estimates to 1e-10, standard errors and interval ends to 1e-8 (found: 1e-12, 2e-9, 4e-9);
    degrees of freedom to 1e-4: they come from finite differences of ``l'V(theta)l``, in which
    a mean at ``meanses = 2015`` cancels large terms (found: 2e-5).
    """
    d, moved = _shifted(name)
    base_model, moved_model = bh.hlm(formula, d), bh.hlm(formula, moved)
    base_fit, moved_fit = bh.fit_em(base_model), bh.fit_em(moved_model)
    key = by if isinstance(by, str) else by[-1]
    cases = [(bh.marginal_means(base_model, base_fit, by, at={key: at}),
              bh.marginal_means(moved_model, moved_fit, by, at={key: moved_at}), 1e6),
             (bh.marginal_means(base_model, base_fit, by, at={key: at}, contrasts="pairwise"),
              bh.marginal_means(moved_model, moved_fit, by, at={key: moved_at}, contrasts="pairwise"), 0.0),
             (bh.marginal_means(base_model, base_fit), bh.marginal_means(moved_model, moved_fit), 1e6),
             (bh.marginal_slopes(base_model, base_fit, var), bh.marginal_slopes(moved_model, moved_fit, var), 0.0)]
    for base, other, shift in cases:
        np.testing.assert_allclose((other["estimate"] - shift) / 1000, base["estimate"], rtol=1e-10)
        np.testing.assert_allclose(other["se"] / 1000, base["se"], rtol=1e-8)
        for end in ("lower", "upper"):
            np.testing.assert_allclose((other[end] - shift) / 1000, base[end], rtol=1e-8)
        np.testing.assert_allclose(other["df"], base["df"], rtol=1e-4)


def test_levels_can_be_named_as_written_and_as_text():
    model, fit = _glmm(1)
    by_column = bh.marginal_means(model, fit, "period", ddf="normal")
    by_term = bh.marginal_means(model, fit, "C(period)", ddf="normal")
    np.testing.assert_array_equal(by_column["estimate"], by_term["estimate"])
    some = bh.marginal_means(model, fit, "period", at={"period": ["2", 4]}, ddf="normal")
    assert list(some["period"]) == [2, 4]
    np.testing.assert_array_equal(some["estimate"], by_column["estimate"].iloc[[1, 3]])


def test_adjustments_and_custom_contrasts():
    model, fit = _fit("sleepstudy_days_f")
    plain = bh.marginal_means(model, fit, "day_f", contrasts="pairwise")
    bonf = bh.marginal_means(model, fit, "day_f", contrasts="pairwise", adjust="bonferroni")
    holm = bh.marginal_means(model, fit, "day_f", contrasts="pairwise", adjust="holm")
    assert len(plain) == 45
    np.testing.assert_allclose(bonf["p_value"], np.minimum(1, 45 * plain["p_value"]), rtol=1e-12)
    assert np.all(holm["p_value"] <= bonf["p_value"]) and np.all(holm["p_value"] >= plain["p_value"])
    assert np.all(bonf["upper"] - bonf["lower"] > plain["upper"] - plain["lower"])
    means = bh.marginal_means(model, fit, "day_f")
    weights = np.r_[-1, np.zeros(8), 1]
    own = bh.marginal_means(model, fit, "day_f", contrasts={"d9 vs d0": weights})
    assert own["contrast"].iloc[0] == "d9 vs d0"
    assert own["estimate"].iloc[0] == pytest.approx(means["estimate"].iloc[9] - means["estimate"].iloc[0], rel=1e-12)
    assert own["estimate"].iloc[0] == pytest.approx(-plain.set_index("contrast").loc["d0 - d9", "estimate"],
                                                    rel=1e-12)


def test_errors_name_what_is_wrong():
    model, fit = _fit("hsb")
    with pytest.raises(ValueError, match="'sector'.*not a predictor"):
        bh.marginal_means(model, fit, "sector")
    with pytest.raises(ValueError, match="'school'.*not a predictor"):
        bh.marginal_means(model, fit, "school")
    with pytest.raises(ValueError, match=r"'meanses' is numeric.*at="):
        bh.marginal_means(model, fit, "meanses")
    with pytest.raises(ValueError, match="at: column 'ses'"):
        bh.marginal_means(model, fit, "sector_f", at={"ses": 0})
    with pytest.raises(ValueError, match="'private' is not a level of column 'sector_f'"):
        bh.marginal_means(model, fit, "sector_f", at={"sector_f": ["public", "private"]})
    with pytest.raises(ValueError, match="at: column 'meanses' is numeric"):
        bh.marginal_means(model, fit, "sector_f", at={"meanses": "high"})
    with pytest.raises(ValueError, match="'sector_f' is categorical"):
        bh.marginal_slopes(model, fit, "sector_f")
    with pytest.raises(ValueError, match="var: column 'ses'"):
        bh.marginal_slopes(model, fit, "ses")
    with pytest.raises(ValueError, match="contrasts must be one of"):
        bh.marginal_means(model, fit, "sector_f", contrasts="all")
    with pytest.raises(ValueError, match="two or more means"):
        bh.marginal_means(model, fit, None, contrasts="pairwise")
    with pytest.raises(ValueError, match="needs 2 finite weights"):
        bh.marginal_means(model, fit, "sector_f", contrasts={"x": [1, 0, -1]})
    with pytest.raises(ValueError, match="adjust is for the p-values of contrasts"):
        bh.marginal_means(model, fit, "sector_f", adjust="holm")
    with pytest.raises(ValueError, match="draws=True needs a posterior"):
        bh.marginal_means(model, fit, "sector_f", draws=True)
    with pytest.raises(ValueError, match="scale must be one of"):
        bh.marginal_means(model, fit, "sector_f", scale="probability")
    with pytest.raises(ValueError, match="ddf must be one of"):
        bh.marginal_means(model, fit, "sector_f", ddf="containment")
    with pytest.raises(TypeError, match="EM fit .* or a posterior"):
        bh.marginal_means(model, {"fixed": 1}, "sector_f")
    other, _ = _fit("sleepstudy_corr")
    with pytest.raises(bh.ModelMismatchError):
        bh.marginal_means(other, fit, "sector_f")
    glmm, glmm_fit = _glmm(1)
    with pytest.raises(ValueError, match="ddf='normal'"):
        bh.marginal_means(glmm, glmm_fit, "period")
    transformed = bh.hlm("mathach ~ np.log(size) + sector_f + (1 | school)", _data("hsb"))
    with pytest.raises(ValueError, match=r"'size' enters the fixed part only through.*at=\{'size': value\}"):
        bh.marginal_means(transformed, bh.fit_em(transformed), "sector_f")


def test_an_offset_must_be_named_and_scales_the_rates():
    model = bh.hlm("incidence ~ C(period) + offset(np.log(size)) + (1 | herd)", bh.load_dataset("cbpp"),
                   family="poisson")
    fit = bh.fit_em(model)
    with pytest.raises(ValueError, match="offset="):
        bh.marginal_means(model, fit, "period", ddf="normal")
    per_one = bh.marginal_means(model, fit, "period", ddf="normal", offset=0.0)
    per_ten = bh.marginal_means(model, fit, "period", ddf="normal", offset=np.log(10.0))
    for column in ("estimate", "se", "lower", "upper"):
        np.testing.assert_allclose(per_ten[column], 10 * per_one[column], rtol=1e-12)
    ratios = bh.marginal_means(model, fit, "period", ddf="normal", offset=0.0, contrasts="pairwise")
    assert ratios.attrs["scale"] == "ratio"
    assert ratios["estimate"].iloc[0] == pytest.approx(per_one["estimate"].iloc[0] / per_one["estimate"].iloc[1],
                                                       rel=1e-12)
    plain, plain_fit = _glmm(1)
    with pytest.raises(ValueError, match="this model has none"):
        bh.marginal_means(plain, plain_fit, "period", ddf="normal", offset=0.0)


def test_a_model_without_predictors_has_one_mean_the_intercept():
    model = bh.hlm("yield ~ 1 + (1 | batch)", bh.load_dataset("dyestuff"))
    fit = bh.fit_em(model)
    table = bh.marginal_means(model, fit)
    assert list(table.columns) == list(COLUMNS)
    assert table["estimate"].iloc[0] == pytest.approx(fit.fixed["Intercept"], rel=1e-14)
    assert table["se"].iloc[0] == pytest.approx(fit.fixed_se["Intercept"], rel=1e-12)
