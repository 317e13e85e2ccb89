"""Bundled data sets, and their agreement with the golden reference file."""

import numpy as np
import pandas as pd
import pytest

from bayeshlm.datasets import list_datasets, load_dataset

N_ROWS = {
    "sleepstudy": 180,
    "dyestuff": 30,
    "pastes": 60,
    "hsb": 7185,
    "radon": 919,
    "eight_schools": 8,
    "scotssec": 3435,
    "cbpp": 56,
    "contraception": 1934,
    "grouseticks": 403,
}

ID_COLUMNS = {
    "sleepstudy": ["subject"],
    "dyestuff": ["batch"],
    "pastes": ["batch", "cask", "sample"],
    "hsb": ["school"],
    "radon": ["county"],
    "eight_schools": ["school"],
    "scotssec": ["primary", "second"],
    "cbpp": ["herd"],
    "contraception": ["woman", "district"],
    "grouseticks": ["index", "brood", "location"],
}

# Text columns that are predictors, not group labels (categorical).
TEXT_COLUMNS = {"scotssec": ["sex"], "contraception": ["livch"]}

# Keys of tests/golden/lme4_fits.json, as listed in tests/golden/README.md.
MODEL_KEYS = {
    "sleepstudy_corr": "sleepstudy",
    "sleepstudy_uncorr": "sleepstudy",
    "dyestuff": "dyestuff",
    "pastes": "pastes",
    "hsb_null": "hsb",
    "hsb_rb": "hsb",
    "hsb_rb_samplemean": "hsb",
    "radon_vi": "radon",
    "radon_u_vi": "radon",
    "radon_u_vs": "radon",
}

# Fields every fit entry carries (tests/golden/README.md, "Layout").
FIT_FIELDS = {"fixef", "vcov_fixef", "random", "sigma", "logLik", "AIC", "BIC", "theta", "ranef"}


def test_list_datasets_names_every_bundled_file():
    assert list_datasets() == sorted(N_ROWS)


@pytest.mark.parametrize(("name", "n_rows"), N_ROWS.items())
def test_row_count(name, n_rows):
    assert len(load_dataset(name)) == n_rows


@pytest.mark.parametrize("name", sorted(N_ROWS))
def test_id_columns_are_strings_and_the_rest_numeric(name):
    df = load_dataset(name)
    ids = ID_COLUMNS[name]
    assert not df.isna().any().any()
    for column in df.columns:
        if column in ids or column in TEXT_COLUMNS.get(name, []):
            assert pd.api.types.is_string_dtype(df[column]), column
            assert all(isinstance(v, str) for v in df[column]), column
        else:
            assert pd.api.types.is_numeric_dtype(df[column]), column


def test_numeric_looking_labels_stay_strings():
    hsb = load_dataset("hsb")
    assert "1224" in set(hsb["school"])
    assert hsb["school"].nunique() == 160
    sleep = load_dataset("sleepstudy")
    assert sleep["subject"].iloc[0] == "308"


def test_group_structure():
    pastes = load_dataset("pastes")
    assert (pastes["sample"] == pastes["batch"] + ":" + pastes["cask"]).all()
    assert pastes["sample"].nunique() == 30
    assert pastes.groupby("sample").size().eq(2).all()

    radon = load_dataset("radon")
    assert radon["county"].nunique() == 85
    assert radon["county_index"].min() == 1 and radon["county_index"].max() == 85
    assert pd.api.types.is_integer_dtype(radon["idnum"])
    per_county = radon.groupby("county").size()
    assert per_county.min() == 1 and per_county.max() == 116

    assert load_dataset("sleepstudy").groupby("subject").size().eq(10).all()
    assert load_dataset("dyestuff").groupby("batch").size().eq(5).all()


def test_scotssec_is_crossed_and_matches_its_golden_fits():
    """148 primary x 19 secondary schools, not nested; the golden lme4 fits were computed on this file."""
    import json
    from pathlib import Path

    df = load_dataset("scotssec")
    assert df["primary"].nunique() == 148 and df["second"].nunique() == 19
    assert (df.groupby("primary")["second"].nunique() > 1).sum() == 91  # primaries feeding several secondaries
    golden = json.loads((Path(__file__).parent / "golden" / "crossed_fits.json").read_text())["scotssec"]
    for fit in golden["fits"].values():
        assert sorted(fit["ranef_labels"]["primary"], key=int) == sorted(set(df["primary"]), key=int)
        assert sorted(fit["ranef_labels"]["second"], key=int) == sorted(set(df["second"]), key=int)


def test_each_call_returns_a_fresh_frame():
    first = load_dataset("dyestuff")
    first.loc[0, "yield"] = -1.0
    assert load_dataset("dyestuff").loc[0, "yield"] == 1545


def test_unknown_name_lists_the_available_ones():
    with pytest.raises(ValueError, match="unknown data set 'sleep'") as excinfo:
        load_dataset("sleep")
    for name in N_ROWS:
        assert name in str(excinfo.value)


def test_golden_file_has_the_documented_keys(lme4_fits):
    assert set(lme4_fits) == {"meta", "models", "eight_schools"}
    assert lme4_fits["meta"]["lme4"] == "1.1.31"
    assert set(lme4_fits["models"]) == set(MODEL_KEYS)
    for key, dataset in MODEL_KEYS.items():
        entry = lme4_fits["models"][key]
        assert entry["dataset"] == dataset
        assert set(entry["fits"]) == {"REML", "ML"}
        for kind, fit in entry["fits"].items():
            assert fit["REML"] is (kind == "REML")
            assert FIT_FIELDS <= set(fit)
            assert ("REML_criterion" if kind == "REML" else "deviance") in fit
    schools = lme4_fits["eight_schools"]
    for version in ("bda_rounded", "rubin1981"):
        assert set(schools[version]) == {
            "pooled",
            "marginal_ML",
            "marginal_REML",
            "posterior_flat_prior",
        }
        posterior = schools[version]["posterior_flat_prior"]
        assert sorted(posterior["theta"]) == list("ABCDEFGH")


def _group_labels(df, factor):
    """Labels of an lme4 grouping factor, computed from the bundled data."""
    if factor == "cask:batch":
        return set(df["cask"] + ":" + df["batch"])
    return set(df[factor])


@pytest.mark.parametrize("key", sorted(MODEL_KEYS))
def test_golden_fits_match_the_bundled_data(lme4_fits, key):
    df = load_dataset(MODEL_KEYS[key])
    for fit in lme4_fits["models"][key]["fits"].values():
        assert fit["nobs"] == len(df)
        for factor, n_levels in fit["ngrps"].items():
            labels = _group_labels(df, factor)
            assert len(labels) == n_levels
            assert set(fit["ranef"][factor]["levels"]) == labels


@pytest.mark.parametrize(
    ("version", "y", "sigma"),
    [("bda_rounded", "y", "sigma"), ("rubin1981", "y_rubin1981", "sigma_rubin1981")],
)
def test_golden_pooled_estimate_matches_the_bundled_data(lme4_fits, version, y, sigma):
    df = load_dataset("eight_schools")
    weights = 1.0 / df[sigma].to_numpy() ** 2
    mu = np.sum(weights * df[y].to_numpy()) / np.sum(weights)
    pooled = lme4_fits["eight_schools"][version]["pooled"]
    np.testing.assert_allclose(pooled["mu"], mu, rtol=1e-12)
    np.testing.assert_allclose(pooled["se"], np.sum(weights) ** -0.5, rtol=1e-12)
