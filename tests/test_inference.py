"""t and F tests with Satterthwaite's and Kenward-Roger's degrees of freedom against lmerTest and
pbkrtest (tests/golden/analyst_fits.json), and HLM's degrees of freedom.

Tolerances. Where every random coefficient is an intercept the degrees of freedom agree with
lmerTest's to 1e-6 relative and are held to 1e-4. With a random slope the likelihood is flat
along the slope's variance and the degrees of freedom are sensitive to where exactly the
optimum is: evaluated at lme4's optimum instead of the EM fit's (their REML log-likelihoods
equal to 1e-11) ours move by 2e-4 relative on HSB, and agree with lmerTest's to 1.2e-4 at
our own optimum; these models are held to 5e-4. t and F statistics depend on the estimates
alone, which agree with lme4's to 1e-6 on intercept models and 2e-5 with a slope (its
optimiser's tolerance): held to 1e-5 and 5e-5. Kenward and Roger's covariance and degrees of
freedom, which involve no numerical derivatives, agree with pbkrtest's to 1.2e-5 and 8.4e-6
relative on every model (largest on the slope models): held to 1e-4. The tests are
deterministic: no Monte Carlo error, no false alarms.
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import bayeshlm as bh

GOLDEN = json.loads((Path(__file__).parent / "golden" / "analyst_fits.json").read_text())["models"]
SLOPES = {"sleepstudy_corr": True, "pastes": False, "radon_u_vi": False, "hsb_rb": True, "radon_u_vs": True}


@pytest.fixture(scope="module")
def fits():
    out = {}
    for key, ref in GOLDEN.items():
        model = bh.hlm(ref["formula"], bh.load_dataset(ref["dataset"]))
        out[key] = (model, bh.fit_em(model))
    return out


@pytest.mark.parametrize("key", sorted(GOLDEN))
def test_t_tests_agree_with_lmertest(fits, key):
    ref = GOLDEN[key]
    model, fit = fits[key]
    table = bh.t_tests(model, fit)
    assert list(table.columns) == ["estimate", "se", "df", "t", "p_value"]
    rtol = 5e-4 if SLOPES[key] else 1e-4
    for term, theirs in ref["satterthwaite"].items():
        row = table.iloc[ref["fixed_names"].index(term)]
        assert row["df"] == pytest.approx(theirs["df"], rel=rtol), term
        assert row["t"] == pytest.approx(theirs["t"], rel=5e-5 if SLOPES[key] else 1e-5), term
        # p: relative error of df times d log p / d log df, which is small unless p is tiny
        assert row["p_value"] == pytest.approx(theirs["p"], rel=max(rtol, 1e-5) * 10), term


@pytest.mark.parametrize("key", sorted(GOLDEN))
def test_contrast_tests_agree_with_lmertest(fits, key):
    model, fit = fits[key]
    rtol = 5e-4 if SLOPES[key] else 1e-4
    for name, contrast in GOLDEN[key]["contrasts"].items():
        theirs = contrast["satterthwaite"]
        result = bh.contrast_test(model, fit, contrast["L"])
        assert result.num_df == theirs["num_df"], name
        assert result.F == pytest.approx(theirs["F"], rel=5e-5 if SLOPES[key] else 1e-5), name
        assert result.den_df == pytest.approx(theirs["den_df"], rel=rtol), name
        assert result.p_value == pytest.approx(theirs["p"], rel=10 * rtol), name


@pytest.mark.parametrize("key", sorted(GOLDEN))
def test_kenward_roger_agrees_with_pbkrtest(fits, key):
    ref = GOLDEN[key]
    model, fit = fits[key]
    kr = bh.kenward_roger(model, fit)
    theirs = np.array(ref["kenward_roger_vcov"])
    scale = np.sqrt(np.outer(np.diag(theirs), np.diag(theirs)))
    assert np.max(np.abs(kr.vcov - theirs) / scale) < 1e-4
    table = bh.t_tests(model, fit, ddf="kenward-roger")
    for term, row in ref["kenward_roger"].items():
        ours = table.iloc[ref["fixed_names"].index(term)]
        assert ours["se"] == pytest.approx(row["se"], rel=1e-4), term
        assert ours["df"] == pytest.approx(row["df"], rel=1e-4), term
        assert ours["t"] == pytest.approx(row["t"], rel=1e-4), term
        # p moves by |t| times the relative change in t: up to 5e-4 on HSB's large t
        assert ours["p_value"] == pytest.approx(row["p"], rel=2e-3), term
    for name, contrast in ref["contrasts"].items():
        row = contrast["kenward_roger"]
        result = bh.contrast_test(model, fit, contrast["L"], ddf="kenward-roger")
        assert result.num_df == row["num_df"], name
        assert result.F == pytest.approx(row["F"], rel=1e-4), name
        assert result.den_df == pytest.approx(row["den_df"], rel=1e-4), name
        assert result.p_value == pytest.approx(row["p"], rel=2e-3), name
        assert "Kenward-Roger" in str(result)


def test_hlm_degrees_of_freedom(fits):
    """J - S - 1 for the terms of a random coefficient's equation, N - p for level-1 terms alone.

    HSB's intercepts- and slopes-as-outcomes model: 160 schools, three terms in each equation,
    157 df for every fixed effect (Raudenbush & Bryk 2002, Table 4.5). Radon: 85 counties, the
    intercept's equation has the county's uranium (83 df); the floor effect is a level-1 term
    (919 rows less 3) unless it varies by county (84). Pastes: the intercept varies at the
    coarsest level, 10 batches (9).
    """
    expected = {"hsb_rb": [157] * 6, "radon_u_vi": [83, 916, 83], "radon_u_vs": [83, 84, 83], "pastes": [9],
                "sleepstudy_corr": [17, 17]}
    for key, df in expected.items():
        model, fit = fits[key]
        table = bh.t_tests(model, fit, ddf="hlm")
        np.testing.assert_array_equal(table["df"], df, err_msg=key)
    model, fit = fits["radon_u_vi"]
    both = bh.contrast_test(model, fit, GOLDEN["radon_u_vi"]["contrasts"]["both"]["L"], ddf="hlm")
    assert both.den_df == 83 and "HLM" in str(both)
    np.testing.assert_array_equal(bh.contrast_df(model, fit, {"floor": 1, "log_uranium": -1}, ddf="hlm"), [83])


def test_a_contrast_by_name_equals_its_row(fits):
    model, fit = fits["hsb_rb"]
    by_name = bh.contrast_test(model, fit, {"ses_centered": 1, "ses_centered:sector": 1})
    by_row = bh.contrast_test(model, fit, [0, 1, 0, 0, 1, 0])
    assert by_name.F == by_row.F and by_name.den_df == by_row.den_df
    # one contrast: F is t squared, on the contrast's own degrees of freedom
    table = bh.t_tests(model, fit)
    single = bh.contrast_test(model, fit, {"sector": 1})
    assert single.F == pytest.approx(table.loc["sector", "t"] ** 2, rel=1e-12)
    assert single.den_df == pytest.approx(table.loc["sector", "df"], rel=1e-9)
    assert "Satterthwaite" in str(single)
    normal = bh.t_tests(model, fit, ddf="normal")
    assert np.all(np.isinf(normal["df"]))
    np.testing.assert_allclose(normal["p_value"], fit.fixed_table()["p_value"], rtol=1e-12)


def test_degrees_of_freedom_do_not_depend_on_units_or_location():
    """A response in thousandths shifted by 1e6, and days counted in hours: the slope's test is unchanged."""
    data = bh.load_dataset("sleepstudy")
    base = bh.hlm("reaction ~ days + (days | subject)", data)
    moved = data.assign(reaction=1e6 + 1000 * data["reaction"], hours=24 * data["days"])
    other = bh.hlm("reaction ~ hours + (hours | subject)", moved)
    base_fit, other_fit = bh.fit_em(base), bh.fit_em(other)
    for ddf in ("satterthwaite", "kenward-roger"):
        first = bh.t_tests(base, base_fit, ddf=ddf).loc["days"]
        second = bh.t_tests(other, other_fit, ddf=ddf).loc["hours"]
        assert second["df"] == pytest.approx(first["df"], rel=1e-6), ddf
        assert second["t"] == pytest.approx(first["t"], rel=1e-6), ddf
        assert second["se"] == pytest.approx(first["se"] * 1000 / 24, rel=1e-6), ddf


def test_kenward_roger_on_shifted_and_scaled_predictors():
    """HSB with the year of testing (2015 + ...) and SES in cents: df and t as on the original columns."""
    data = bh.load_dataset("hsb")
    formula = "mathach ~ ses_centered * (sector + meanses) + (ses_centered | school)"
    base = bh.hlm(formula, data)
    moved = data.assign(mathach=1e6 + 1000 * data["mathach"], ses_centered=100 * data["ses_centered"],
                        meanses=2015 + data["meanses"])
    other = bh.hlm(formula, moved)
    first = bh.t_tests(base, bh.fit_em(base), ddf="kenward-roger")
    second = bh.t_tests(other, bh.fit_em(other), ddf="kenward-roger")
    for term in ("sector", "ses_centered:sector", "ses_centered:meanses", "meanses"):
        assert second.loc[term, "df"] == pytest.approx(first.loc[term, "df"], rel=1e-4), term
        assert second.loc[term, "t"] == pytest.approx(first.loc[term, "t"], rel=1e-4), term


def test_what_the_tests_refuse(fits):
    model, fit = fits["sleepstudy_corr"]
    with pytest.raises(ValueError, match="ddf must be one of"):
        bh.t_tests(model, fit, ddf="kenward-roger-ish")
    with pytest.raises(ValueError, match="one coefficient per fixed effect"):
        bh.contrast_test(model, fit, [1, 0, 0])
    with pytest.raises(ValueError, match="unknown fixed effect 'day'"):
        bh.contrast_test(model, fit, {"day": 1})
    with pytest.raises(ValueError, match="linearly independent"):
        bh.contrast_test(model, fit, [[0, 1], [0, 2]])
    with pytest.raises(TypeError, match="an EM fit"):
        bh.t_tests(model, object())
    # groups whose means are equal: the between-group SD is estimated at zero
    rng = np.random.default_rng(1)
    noise = rng.normal(size=(10, 5))
    noise -= noise.mean(axis=1, keepdims=True)
    flat = pd.DataFrame({"y": noise.ravel(), "g": np.repeat([f"g{j}" for j in range(10)], 5)})
    boundary = bh.hlm("y ~ 1 + (1 | g)", flat)
    eb = bh.fit_em(boundary)
    assert eb.boundary == ("Intercept",)
    with pytest.raises(ValueError, match="Intercept is at zero"):
        bh.t_tests(boundary, eb)
    with pytest.raises(ValueError, match="Intercept is at zero"):
        bh.t_tests(boundary, eb, ddf="kenward-roger")
    with pytest.raises(ValueError, match="for REML fits"):
        bh.t_tests(model, bh.fit_em(model, "ml"), ddf="kenward-roger")
    stats_only = bh.hlm_stats("reaction ~ days + (days | subject)", bh.load_dataset("sleepstudy"))
    with pytest.raises(ValueError, match="need the model's rows"):
        bh.t_tests(stats_only, bh.fit_em(stats_only), ddf="hlm")
