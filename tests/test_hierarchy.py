"""The level-by-level builder: the same arrays as the mixed formula, the special cases, errors."""

import numpy as np
import pytest

import bayeshlm as bh
from bayeshlm import Equation, Hierarchy
from bayeshlm.formula import FormulaError


def _same_model(a, b):
    """Two compiled models hold the same arrays, up to the order of the fixed-effect columns."""
    da, db = a.design, b.design
    assert sorted(da.fixed_names) == sorted(db.fixed_names)
    order = [db.fixed_names.index(n) for n in da.fixed_names]
    np.testing.assert_array_equal(da.F, db.F[:, order])
    np.testing.assert_array_equal(da.y, db.y)
    np.testing.assert_array_equal(da.X, db.X)
    assert da.coef_names == db.coef_names and da.block_sizes == db.block_sizes
    assert da.factors == db.factors
    np.testing.assert_array_equal(da.group_idx, db.group_idx)
    for pa, pb in zip(da.parents, db.parents, strict=True):
        np.testing.assert_array_equal(pa, pb)
    for name in ("level_ptr", "node_ptr", "parent", "block_ptr", "theta_ptr"):
        np.testing.assert_array_equal(getattr(a.structure, name), getattr(b.structure, name))
    np.testing.assert_array_equal(a.stats.XtX, b.stats.XtX)
    np.testing.assert_array_equal(a.stats.XtF, b.stats.XtF[:, :, order])
    np.testing.assert_array_equal(a.stats.FtF, b.stats.FtF[np.ix_(order, order)])


def test_instructors_two_levels_equal_the_mixed_formula():
    df = bh.simulate_instructors(n_departments=25, seed=3)
    h = Hierarchy("evaluation", ["experience"]).level(
        "department", {"Intercept": Equation("class_size", "research"), "experience": Equation("class_size")})
    built = h.compile(df)
    written = bh.hlm("evaluation ~ experience * class_size + research + (experience | department)", df)
    _same_model(built, written)
    assert bh.fit_em(built).loglik == pytest.approx(bh.fit_em(written).loglik, rel=1e-12)


def test_three_levels_equal_the_mixed_formula():
    df = bh.simulate_nested(seed=2)
    h = (Hierarchy("y", ["x"])  # simulate_nested numbers classes within schools, schools within districts
         .level("class", {"Intercept": Equation(), "x": Equation()}, covariance="diagonal", labels="within")
         .level("school", {"Intercept": Equation()}, labels="within")
         .level("district", {"Intercept": Equation("z"), "x": Equation("z", random=False)}))
    built = h.compile(df)
    written = bh.hlm("y ~ x * z + (x || district:school:class) + (1 | district:school) + (1 | district)", df)
    _same_model(built, written)
    assert bh.fit_em(built, "ml").loglik == pytest.approx(bh.fit_em(written, "ml").loglik, rel=1e-12)


def test_a_random_slope_at_level_three_on_a_level_two_coefficient():
    """A level-2 coefficient (the slope of x on the class context w) varies over schools."""
    df = bh.simulate_nested(levels=(("school", 6), ("class", 4)), seed=5)
    classes = df["school"] + ":" + df["class"]  # w: one value per class
    df["w"] = classes.map(dict(zip(classes.unique(), np.random.default_rng(1).normal(size=classes.nunique()),
                                   strict=True)))
    h = (Hierarchy("y", ["x"])
         .level("class", {"Intercept": Equation(), "x": Equation("w")}, labels="within")
         .level("school", {"Intercept": Equation(), "x:w": Equation()}))
    assert h.coefficients(2) == ["Intercept", "x", "x:w"]
    assert h.formula == "y ~ 1 + x + x:w + (1 + x | school:class) + (1 + x:w | school)"
    _same_model(h.compile(df), bh.hlm("y ~ x + x:w + (x | school:class) + (1 + x:w | school)", df))


def _reml(model):
    return bh.fit_em(model, "reml").loglik


@pytest.mark.parametrize(
    ("key", "dataset", "hierarchy", "formula"),
    [
        ("dyestuff", "dyestuff", Hierarchy("yield").level("batch", {"Intercept": Equation()}),
         "yield ~ 1 + (1 | batch)"),
        ("sleepstudy_corr", "sleepstudy",
         Hierarchy("reaction", ["days"]).level("subject", {"Intercept": Equation(), "days": Equation()}),
         "reaction ~ 1 + days + (1 + days | subject)"),
        ("sleepstudy_uncorr", "sleepstudy",
         Hierarchy("reaction", ["days"]).level("subject", {"Intercept": Equation(), "days": Equation()},
                                               covariance="diagonal"),
         "reaction ~ 1 + days + (1 + days || subject)"),
        ("radon_vi", "radon", Hierarchy("log_radon", ["floor"]).level("county", {"Intercept": Equation()}),
         "log_radon ~ 1 + floor + (1 | county)"),
        ("radon_u_vi", "radon",
         Hierarchy("log_radon", ["floor"]).level("county", {"Intercept": Equation("log_uranium")}),
         "log_radon ~ 1 + log_uranium + floor + (1 | county)"),
        ("hsb_rb", "hsb",
         Hierarchy("mathach", ["ses_centered"]).level(
             "school", {"Intercept": Equation("sector", "meanses"), "ses_centered": Equation("sector", "meanses")}),
         "mathach ~ 1 + sector + meanses + ses_centered + ses_centered:sector + ses_centered:meanses"
         " + (1 + ses_centered | school)"),
        ("pastes", "pastes",
         Hierarchy("strength").level("cask", {"Intercept": Equation()}, labels="within")
         .level("batch", {"Intercept": Equation()}),
         "strength ~ 1 + (1 | batch:cask) + (1 | batch)"),
    ],
    ids=lambda v: v if isinstance(v, str) and " " not in v and "~" not in v else None,
)
def test_special_cases_reproduce_lme4(lme4_fits, key, dataset, hierarchy, formula):
    """Random-effects ANOVA, random-coefficients regression (correlated and not), random
    intercept with fixed slope, means as outcomes, intercepts and slopes as outcomes, and
    three levels: the builder's model has lme4's REML log-likelihood (1e-8 relative)."""
    assert hierarchy.formula == formula
    model = hierarchy.compile(bh.load_dataset(dataset))
    assert _reml(model) == pytest.approx(lme4_fits["models"][key]["fits"]["REML"]["logLik"], rel=1e-8)


def test_fixed_intercept_random_slope_and_nonrandom_slope():
    h = Hierarchy("y", ["x"]).level("g", {"x": Equation()})
    assert h.formula == "y ~ 1 + x + (0 + x | g)"
    h = Hierarchy("y", ["x"]).level("g", {"Intercept": Equation(), "x": Equation("z", random=False)})
    assert h.formula == "y ~ 1 + x + x:z + (1 | g)"
    text = h.equations()
    assert "b[x] = g[x] + g[x:z]*z" in text and "u2[x]" not in text


def _ols_loglik(F, y):
    coef = np.linalg.lstsq(F, y, rcond=None)[0]
    rss = float(np.sum((y - F @ coef) ** 2))
    n = len(y)
    return coef, -0.5 * n * (np.log(2 * np.pi * rss / n) + 1)


def test_pooled_regression_and_ancova_are_least_squares():
    df = bh.simulate_instructors(n_departments=12, seed=8)
    pooled = Hierarchy("evaluation", ["experience"]).compile(df)
    assert pooled.formula == "evaluation ~ 1 + experience"
    fit = bh.fit_em(pooled, "ml")
    coef, ll = _ols_loglik(pooled.design.F, pooled.design.y)
    np.testing.assert_allclose(list(fit.fixed.values()), coef, rtol=1e-9)
    assert fit.loglik == pytest.approx(ll, rel=1e-10)
    ancova = Hierarchy("evaluation", ["experience"], intercept=False).level("department", fixed_groups=True)
    assert ancova.formula == "evaluation ~ 0 + experience + C(department)"
    model = ancova.compile(df)
    fit = bh.fit_em(model, "ml")
    coef, ll = _ols_loglik(model.design.F, model.design.y)
    np.testing.assert_allclose(list(fit.fixed.values()), coef, rtol=1e-9)
    assert fit.loglik == pytest.approx(ll, rel=1e-10)
    post = bh.sample(model, seed=1, draws=300, warmup=300, chains=2, progress=False)
    assert set(post.posterior.data_vars) == {"fixed", "sigma"}


def test_printing_shows_every_level():
    h = (Hierarchy("y", ["x"])
         .level("class", {"Intercept": Equation(), "x": Equation()})
         .level("school", {"Intercept": Equation("s")}))
    text = str(h)
    for line in ["Level 1 (within units)", "y = b[Intercept] + b[x]*x + e", "Level 2 (class)",
                 "u2 ~ N(0, T2), T2 unstructured 2 x 2",
                 "u3 ~ N(0, tau3^2)", "Level 3 (school)", "g[Intercept] = d[Intercept] + d[s]*s + u3",
                 "g[x] = d[x]", "Mixed form: y ~ 1 + s + x + (1 + x | school:class) + (1 | school)"]:
        assert line in text, line


def test_builder_errors_name_the_level_and_coefficient():
    h = Hierarchy("y", ["x"])
    with pytest.raises(FormulaError, match=r"level 2 \('g'\) has an equation for 'w'.*\['Intercept', 'x'\]"):
        h.level("g", {"w": Equation()})
    with pytest.raises(FormulaError, match="used by two levels"):
        h.level("g").level("g")
    with pytest.raises(ValueError, match="covariance must be"):
        h.level("g", covariance="ar1")
    with pytest.raises(FormulaError, match="must be an Equation"):
        h.level("g", {"x": True})
    with pytest.raises(FormulaError, match="listed twice"):
        Equation("z", "z")
    with pytest.raises(FormulaError, match="fixed_groups"):
        h.level("g", fixed_groups=True)
    with pytest.raises(ValueError, match="level must be between"):
        h.coefficients(3)


def test_the_builder_takes_a_level1_variance_model_and_student_residuals():
    """sigma= and family='student' pass through compile, and the equations say so."""
    hsb = bh.load_dataset("hsb")
    h = Hierarchy("mathach", ["ses"]).level("school", {"Intercept": Equation("sector")})
    model = h.compile(hsb, sigma="~ sector + (1 | school)", family="student", nu=4)
    assert model.variance_design.group == "school" and model.family == "student"
    assert "sigma_i t_nu" in model.equations and "log sigma_i^2" in model.equations
    assert "e ~ N(0, sigma^2)" in h.equations()
