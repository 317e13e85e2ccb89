"""The instructors-within-departments generator, and recovery of its parameters."""

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
