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
