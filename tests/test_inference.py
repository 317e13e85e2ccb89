"""t and F tests with Satterthwaite's degrees of freedom against lmerTest (tests/golden/analyst_fits.json).

Tolerances. Where every random coefficient is an intercept the degrees of freedom agree with
lmerTest's to 1e-6 relative and are held to 1e-4. With a random slope the likelihood is flat
along the slope's variance and the degrees of freedom are sensitive to where exactly the
optimum is: evaluated at lme4's optimum instead of the EM fit's (their REML log-likelihoods
equal to 1e-11) ours move by 2e-4 relative on HSB, and agree with lmerTest's to 1.2e-4 at
our own optimum; these models are held to 5e-4. t and F statistics depend on the estimates
alone, which agree with lme4's to 1e-6 on intercept models and 2e-5 with a slope (its
optimiser's tolerance): held to 1e-5 and 5e-5. The tests are deterministic: no Monte Carlo
error, no false alarms.
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
    first = bh.t_tests(base, bh.fit_em(base)).loc["days"]
    second = bh.t_tests(other, bh.fit_em(other)).loc["hours"]
    assert second["df"] == pytest.approx(first["df"], rel=1e-6)
    assert second["t"] == pytest.approx(first["t"], rel=1e-6)


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
