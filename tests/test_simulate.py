"""The instructors-within-departments generator, and recovery of its parameters."""

import numpy as np
import pytest
from scipy.stats import norm

import bayeshlm as bh

FORMULA = "evaluation ~ experience * class_size + research + (experience | department)"


def test_layout_and_reproducibility():
    a = bh.simulate_instructors(n_departments=12, instructors=(3, 6), seed=5)
    b = bh.simulate_instructors(n_departments=12, instructors=(3, 6), seed=5)
    assert a.equals(b)
    counts = a.groupby("department").size()
    assert len(counts) == 12 and counts.between(3, 6).all()
    # level-2 variables are constant within a department
    assert (a.groupby("department")[["class_size", "research"]].nunique() == 1).all().all()
    assert a.attrs["truth"]["sigma"] == 0.4 and a.attrs["group_effects"].shape == (12, 2)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown parameters"):
        bh.simulate_instructors(params={"gamma": 1.0}, seed=1)
    with pytest.raises(ValueError, match="at least 2 departments"):
        bh.simulate_instructors(n_departments=1, seed=1)


def test_reml_recovers_the_parameters():
    """Each estimate within z standard errors of the truth, z for a 1e-3 false-alarm rate over 9 checks."""
    data = bh.simulate_instructors(n_departments=300, instructors=(5, 25), seed=11)
    truth = data.attrs["truth"]
    fit = bh.fit_em(bh.hlm(FORMULA, data), "reml")
    z = norm.isf(1e-3 / 9 / 2)
    pairs = {
        "Intercept": "g00", "class_size": "g01", "research": "g02", "experience": "g10",
        "experience:class_size": "g11",
    }
    for term, key in pairs.items():
        assert abs(fit.fixed[term] - truth[key]) <= z * fit.fixed_se[term], term
    for name, value in (("sigma", truth["sigma"]), ("sd[Intercept]", truth["sd_intercept"]),
                        ("sd[experience]", truth["sd_slope"]), ("corr[Intercept,experience]", truth["corr"])):
        estimate = fit.sigma if name == "sigma" else (
            fit.corr["Intercept,experience"] if name.startswith("corr") else fit.sd[name[3:-1]])
        assert abs(estimate - value) <= z * fit.variance_se[name], (name, estimate, value)


def test_simulate_nested_structure_and_formula():
    df = bh.simulate_nested(levels=(("district", 5), ("school", (2, 3)), ("class", 2)), rows=3, seed=4)
    assert list(df.columns) == ["y", "x", "z", "district", "school", "class"]
    # labels repeat across parents; the model written with ':' sees the nesting
    assert df.groupby("school")["district"].nunique().max() > 1
    model = bh.hlm(df.attrs["formula"], df)
    assert model.design.factors == ("district:school:class", "district:school", "district")
    n_class = df.groupby(["district", "school", "class"]).ngroups
    assert model.n_groups == n_class and len(df) == 3 * n_class
    # z is constant within each district (a context variable)
    assert df.groupby("district")["z"].nunique().max() == 1
    assert set(df.attrs["truth"]["sd"]) == {"Intercept|district", "Intercept|district:school",
                                            "Intercept|district:school:class", "x|district:school:class"}


def test_simulate_nested_recovers_parameters_by_reml():
    """REML on a large simulated three-level data set: every estimate within 4.4 SEs
    (a per-estimate two-sided rate of 1e-5, 1e-4 for the nine estimates together)."""
    df = bh.simulate_nested(levels=(("district", 60), ("school", 5), ("class", 4)), rows=6, seed=9)
    fit = bh.fit_em(bh.hlm(df.attrs["formula"], df))
    truth = df.attrs["truth"]
    for k, v in truth["fixed"].items():
        assert abs(fit.fixed[k] - v) <= 4.4 * fit.fixed_se[k], k
    for k, v in truth["sd"].items():
        assert abs(fit.sd[k] - v) <= 4.4 * fit.variance_se[f"sd[{k}]"], k
    assert abs(fit.sigma - truth["sigma"]) <= 4.4 * fit.variance_se["sigma"]


def test_simulate_nested_rejects_bad_arguments():
    with pytest.raises(ValueError, match="distinct"):
        bh.simulate_nested(levels=(("a", 3), ("a", 2)))
    with pytest.raises(ValueError, match="unknown fixed"):
        bh.simulate_nested(fixed={"w": 1.0})
    with pytest.raises(ValueError, match="sd must map"):
        bh.simulate_nested(sd={"nowhere": {"Intercept": 1.0}})


def test_simulate_crossed_design():
    """Partially crossed subjects x items: every level present, the fill as asked, the rows per cell."""
    df = bh.simulate_crossed(n_subjects=40, n_items=25, fill=0.3, reps=(1, 3), seed=1)
    assert df.attrs["formula"] == "y ~ x + (x || subject) + (1 | item)"
    assert df["subject"].nunique() == 40 and df["item"].nunique() == 25
    per_cell = df.groupby(["subject", "item"]).size()
    assert per_cell.between(1, 3).all()
    # observed cells ~ Binomial(1000, 0.3) (SD 14.5) plus at most 65 forced ones: 4.5 SDs
    # either side leave a false-alarm rate below 1e-5
    assert 300 - 65 <= per_cell.size <= 300 + 65 + 65
    # crossed, not nested: subjects meet several items and items several subjects
    assert df.groupby("subject")["item"].nunique().max() > 1
    assert df.groupby("item")["subject"].nunique().max() > 1
    full = bh.simulate_crossed(n_subjects=6, n_items=5, fill=1.0, reps=2, seed=2)
    assert len(full) == 6 * 5 * 2


def test_simulate_crossed_effects_reproduce_the_response():
    """y minus the fixed part and the drawn group effects is N(0, sigma^2) noise."""
    df = bh.simulate_crossed(n_subjects=50, n_items=40, fill=0.5, reps=2, sigma=1.5, seed=3)
    truth, fx = df.attrs["truth"], df.attrs["group_effects"]
    s = df["subject"].str[1:].astype(int).to_numpy() - 1
    i = df["item"].str[1:].astype(int).to_numpy() - 1
    x = df["x"].to_numpy()
    mean = (truth["fixed"]["Intercept"] + truth["fixed"]["x"] * x + fx["Intercept|subject"][s]
            + fx["x|subject"][s] * x + fx["Intercept|item"][i])
    e = df["y"].to_numpy() - mean
    n = e.size
    # the sample SD of n normal draws has relative SE 1/sqrt(2n); 5 SEs: false alarm < 1e-6
    assert abs(e.std() / 1.5 - 1.0) < 5.0 / np.sqrt(2 * n)
    assert abs(e.mean()) < 5.0 * 1.5 / np.sqrt(n)
    assert set(truth["sd"]) == {"Intercept|subject", "x|subject", "Intercept|item"}


@pytest.mark.parametrize(("kwargs", "match"), [({"fill": 0.0}, "fill"), ({"n_items": 0}, "n_items"),
                                               ({"fixed": {"z": 1.0}}, "unknown fixed"),
                                               ({"sd": {"rater": {"Intercept": 1.0}}}, "sd must map")])
def test_simulate_crossed_refuses_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bh.simulate_crossed(**kwargs)
