"""Statistical defects found on review (issue 18, part 6), each case with its expected result.

* ``lrt`` recognises a model that adds a whole level, and a statistic that is zero up to
  rounding gives p = 1;
* ``Hierarchy`` refuses levels declared top-down or with labels repeated across the level
  above unless told so, and never pools them;
* a predictor meant at level 2 that varies within its groups is warned about, by the
  builder and by ``hlm``, and ordinary models get no such warning;
* the nesting trap (labels numbered within groups, read as crossed) warns with the right nesting, and
  crossed factors with one row per combination get no warning;
* ``shrinkage_table`` and ``plot_shrinkage`` compare whole group coefficients with whole
  group coefficients (level-2 predictors and cross-level terms included), or deviations
  with deviations.
"""

import dataclasses
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.stats import chi2

import bayeshlm as bh
from bayeshlm import Equation, Hierarchy
from bayeshlm.data import DataError, GroupLevelWarning


@pytest.fixture(scope="module")
def pastes():
    return bh.load_dataset("pastes")


# ---------------------------------------------------------------------------
# Likelihood-ratio tests


@pytest.mark.parametrize("method", ["ml", "reml"])
def test_lrt_of_a_whole_level_uses_the_boundary_mixture(pastes, method):
    small = bh.fit_em(bh.hlm("strength ~ 1 + (1 | batch)", pastes), method)
    large = bh.fit_em(bh.hlm("strength ~ 1 + (1 | batch/cask)", pastes), method)
    test = bh.lrt(small, large)
    assert test.df == 1 and test.mixture
    assert test.statistic == pytest.approx(2 * (large.loglik - small.loglik), rel=1e-12)
    # one variance on its boundary: 0.5 chi2(0) + 0.5 chi2(1), half the naive p-value
    assert test.p_value == pytest.approx(0.5 * chi2.sf(test.statistic, 1), rel=1e-12)
    assert test.p_value_naive == pytest.approx(2 * test.p_value, rel=1e-12)
    assert "adding the level 'batch:cask' (random Intercept)" in str(test)


def test_lrt_statistic_zero_up_to_rounding_gives_p_one(pastes):
    small = bh.fit_em(bh.hlm("strength ~ 1 + (1 | batch)", pastes), "ml")
    large = bh.fit_em(bh.hlm("strength ~ 1 + (1 | batch/cask)", pastes), "ml")
    on_boundary = dataclasses.replace(large, loglik=small.loglik + 5e-14)  # LR = 1e-13
    test = bh.lrt(small, on_boundary)
    assert test.statistic == 0.0 and test.p_value == 1.0 and test.p_value_naive == 1.0
    # a small statistic that is not rounding keeps the mixture's p-value (about 0.49, not 1)
    barely = bh.lrt(small, dataclasses.replace(large, loglik=small.loglik + 1e-4))
    assert barely.p_value == pytest.approx(0.5 * chi2.sf(2e-4, 1), rel=1e-12)


def test_lrt_on_data_with_no_variance_at_the_added_level():
    """Casks that do not differ within batches: the ML estimate of their SD is at the boundary."""
    rng = np.random.default_rng(4)  # a seed whose ML fit puts the cask SD on the boundary
    batch = np.repeat([f"B{i}" for i in range(10)], 6)
    cask = np.tile(np.repeat(list("abc"), 2), 10)
    y = 60 + rng.normal(0, 1.5, 10)[np.repeat(np.arange(10), 6)] + rng.normal(0, 1, 60)
    data = pd.DataFrame({"y": y, "batch": batch, "cask": cask})
    small = bh.fit_em(bh.hlm("y ~ 1 + (1 | batch)", data), "ml")
    large = bh.fit_em(bh.hlm("y ~ 1 + (1 | batch/cask)", data), "ml")
    assert "Intercept|batch:cask" in large.boundary
    assert abs(2 * (large.loglik - small.loglik)) < 1e-8  # zero up to the optimiser's rounding
    test = bh.lrt(small, large)
    assert test.statistic == 0.0 and test.p_value == 1.0


def test_lrt_refuses_models_that_are_not_nested(pastes):
    by_cask = bh.fit_em(bh.hlm("strength ~ 1 + (1 | cask)", pastes), "ml")
    nested = bh.fit_em(bh.hlm("strength ~ 1 + (1 | batch/cask)", pastes), "ml")
    with pytest.raises(ValueError, match="random Intercept .*is not in the second model: the models are not nested"):
        bh.lrt(by_cask, nested)


# ---------------------------------------------------------------------------
# Hierarchy: levels declared top-down, labels repeated across the level above


@pytest.fixture(scope="module")
def classes():
    """20 schools, each with classes "c1", "c2", "c3" (labels repeated in every school), and a school variable."""
    rng = np.random.default_rng(7)
    school = np.repeat([f"s{i}" for i in range(20)], 30)
    local = np.tile(np.repeat(["c1", "c2", "c3"], 10), 20)
    school_effect = rng.normal(0, 1, 20)[np.repeat(np.arange(20), 30)]
    class_effect = rng.normal(0, 0.5, 60)[np.repeat(np.arange(60), 10)]
    return pd.DataFrame({
        "y": school_effect + class_effect + rng.normal(size=600), "school": school, "class": local,
        "class_id": np.char.add(np.char.add(school, "-"), local), "z": np.repeat(rng.normal(size=20), 30),
    })


I = {"Intercept": Equation()}  # noqa: E741 - a random intercept, as an equation


def test_top_down_declaration_with_repeated_labels_is_refused(classes):
    with pytest.raises(DataError) as info:
        Hierarchy("y").level("school", I).level("class", I).compile(classes)
    msg = str(info.value)
    assert "the groups of 'school' (level 2) are not nested in those of 'class' (level 3)" in msg
    assert "'school' group 's0' occurs in the groups 'c1', 'c2', 'c3' of 'class'" in msg
    assert "declare .level('class', ...) before .level('school', ...)" in msg


def test_repeated_labels_need_to_be_declared_and_then_nest(classes):
    with pytest.raises(DataError, match=r"pass labels='within' to \.level\('class', \.\.\.\), which groups it by "
                                        r"'school:class'"):
        Hierarchy("y").level("class", I).level("school", I).compile(classes)
    model = Hierarchy("y").level("class", I, labels="within").level("school", I).compile(classes)
    # classes are grouped within schools: 60 classes, not the 3 labels pooled over schools
    assert model.design.factors == ("school:class", "school")
    assert [len(lab) for lab in model.design.factor_labels] == [60, 20]
    written = bh.hlm("y ~ 1 + (1 | school/class)", classes)
    np.testing.assert_array_equal(model.design.group_idx, written.design.group_idx)
    assert bh.fit_em(model, "ml").loglik == pytest.approx(bh.fit_em(written, "ml").loglik, rel=1e-12)


def test_top_down_declaration_with_unique_labels_is_refused(classes):
    with pytest.raises(DataError, match=r"the groups of 'class_id' \(level 3\) lie within those of 'school' "
                                        r"\(level 2\), but levels are declared from the bottom up"):
        Hierarchy("y").level("school", I).level("class_id", I).compile(classes)
    # bottom-up with unique labels needs nothing more
    model = Hierarchy("y").level("class_id", I).level("school", I).compile(classes)
    assert [len(lab) for lab in model.design.factor_labels] == [60, 20]


# ---------------------------------------------------------------------------
# Level-2 predictors that vary within their groups


def test_builder_warns_about_a_level_two_predictor_that_varies(classes):
    h = Hierarchy("y").level("school", {"Intercept": Equation("z")})
    with warnings.catch_warnings():
        warnings.simplefilter("error", GroupLevelWarning)
        h.compile(classes)  # z is a school variable: no warning
    data = classes.copy()
    data.loc[[5, 35], "z"] += 1.0  # one row in each of schools s0 and s1
    with pytest.warns(GroupLevelWarning, match=r"the level-2 predictor 'z' \(in the equation of 'Intercept' at level "
                                               r"2, 'school'\) varies within 2 of the 20 groups of 'school' \(e\.g\. "
                                               r"group 's0'") as record:
        h.compile(data)
    assert len([w for w in record if issubclass(w.category, GroupLevelWarning)]) == 1  # said once, not twice


def test_hlm_warns_about_a_group_variable_with_stray_values():
    hsb = bh.load_dataset("hsb")
    data = hsb.copy()
    data.loc[[3, 100, 2000], "meanses"] += 0.1
    with pytest.warns(GroupLevelWarning, match=r"'meanses' looks like a variable of the 'school' groups \(one value "
                                               r"per group in 157 of the 160 groups with several rows\) but varies "
                                               r"within 3 of them \(e\.g\. 'school' group '1224'"):
        bh.hlm("mathach ~ ses_centered * (sector + meanses) + (ses_centered | school)", data)


def test_hlm_warns_about_a_slope_predictor_that_varies():
    hsb = bh.load_dataset("hsb")
    with pytest.warns(GroupLevelWarning, match=r"'female' enters the fixed part only through interactions with "
                                               r"slopes that vary over 'school'.*varies within 123 of the 160"):
        bh.hlm("mathach ~ ses_centered + ses_centered:female + (ses_centered | school)", hsb)


@pytest.mark.parametrize(("dataset", "formula"), [
    ("hsb", "mathach ~ ses_centered * (sector + meanses) + (ses_centered | school)"),
    ("hsb", "mathach ~ ses_centered * female + minority + sector + (ses_centered | school)"),
    ("radon", "log_radon ~ floor + log_uranium + (1 | county)"),
    ("radon", "log_radon ~ floor * log_uranium + (floor | county)"),
    ("sleepstudy", "reaction ~ days + (days | subject)"),
    ("pastes", "strength ~ 1 + (1 | batch/cask)"),
])
def test_ordinary_models_get_no_level_warning(dataset, formula):
    with warnings.catch_warnings():
        warnings.simplefilter("error", GroupLevelWarning)
        bh.hlm(formula, bh.load_dataset(dataset))


# ---------------------------------------------------------------------------
# The nesting trap


@pytest.mark.parametrize("formula", ["strength ~ (1 | batch) + (1 | cask)", "strength ~ (1 | cask) + (1 | batch)"])
def test_nesting_trap_suggests_batch_over_cask(pastes, formula):
    """Fitted as crossed (as lme4 would), but never silently: the nested formula is suggested."""
    for fit in (bh.hlm, bh.hlm_stats):
        with pytest.warns(bh.NestingWarning) as record:
            model = fit(formula, pastes)
        assert model.crossed
        msg = str(record[0].message)
        assert "write (1 | batch/cask)" in msg and "(1 | batch) + (1 | batch:cask)" in msg
        assert "cask/batch" not in msg


def test_crossed_factors_get_no_nesting_suggestion():
    rng = np.random.default_rng(11)  # plates x samples, one measurement each (as lme4's Penicillin)
    data = pd.DataFrame({"y": rng.normal(size=144), "plate": np.repeat([f"p{i}" for i in range(24)], 6),
                         "sample": np.tile(list("ABCDEF"), 24)})
    with warnings.catch_warnings():
        warnings.simplefilter("error", bh.NestingWarning)
        assert bh.hlm("y ~ (1 | plate) + (1 | sample)", data).crossed


# ---------------------------------------------------------------------------
# Shrinkage: like with like


@pytest.fixture(scope="module")
def instructors():
    """Departments with many instructors each (strong data): EB barely moves a group's own estimate."""
    data = bh.simulate_instructors(n_departments=30, instructors=(200, 200), params={"sigma": 0.05}, seed=12)
    model = bh.hlm("evaluation ~ experience * class_size + research + (experience | department)", data)
    eb = bh.fit_em(model, "reml")
    post = bh.sample(model, draws=200, warmup=200, chains=2, seed=5, progress=False)
    return data, model, eb, post


def _by_department(data, model, column):
    return data.groupby("department")[column].first().loc[list(model.design.group_labels)].to_numpy()


def test_shrinkage_totals_include_level_two_predictors(instructors):
    data, model, eb, post = instructors
    with pytest.raises(ValueError, match=r"fixed part has terms that are not random coefficients of 'department' "
                                         r"\(class_size, research, experience:class_size\).*pass model="):
        bh.shrinkage_table(post, eb)
    table = bh.shrinkage_table(post, eb, model=model, kind="total")
    assert list(table.columns) == ["ols", "eb_implied", "eb", "post_mean", "post_sd"]
    f = eb.fixed
    size, research = _by_department(data, model, "class_size"), _by_department(data, model, "research")
    intercept = table.xs("Intercept", level="coef")
    slope = table.xs("experience", level="coef")
    # the coefficient equations of level 2, cross-level interaction included
    np.testing.assert_allclose(intercept["eb_implied"], f["Intercept"] + f["class_size"] * size
                               + f["research"] * research, rtol=1e-9)
    np.testing.assert_allclose(slope["eb_implied"], f["experience"] + f["experience:class_size"] * size, rtol=1e-9)
    np.testing.assert_allclose(intercept["eb"], intercept["eb_implied"] + eb.group_means[:, 0], rtol=1e-12)
    # each department's own least squares, from its rows
    for j, label in enumerate(model.design.group_labels[:5]):
        rows = data[data["department"] == label]
        own = np.linalg.lstsq(np.column_stack([np.ones(len(rows)), rows["experience"]]), rows["evaluation"],
                              rcond=None)[0]
        np.testing.assert_allclose([intercept["ols"].iloc[j], slope["ols"].iloc[j]], own, rtol=1e-9)
    # with strong data EB hardly shrinks: the totals sit on the groups' own estimates (reliability
    # above 0.999, so within 0.01), while the fixed intercept plus the deviation misses the
    # level-2 part g01 class_size + g02 research (median about 0.1)
    assert np.max(np.abs(intercept["eb"] - intercept["ols"])) < 0.01
    assert np.max(np.abs(slope["eb"] - slope["ols"])) < 1e-3
    old = f["Intercept"] + eb.group_means[:, 0]
    assert np.median(np.abs(old - intercept["ols"].to_numpy())) > 0.05


def test_posterior_totals_are_computed_draw_by_draw(instructors):
    data, model, eb, post = instructors
    table = bh.shrinkage_table(post, eb, model=model, kind="total")
    a = post.posterior["fixed"].stack(s=("chain", "draw"))
    u = post.posterior["department_effect"].stack(s=("chain", "draw")).sel(department_coef="Intercept")
    size, research = _by_department(data, model, "class_size"), _by_department(data, model, "research")
    draws = (a.sel(fixed_term="Intercept").values[None, :] + size[:, None] * a.sel(fixed_term="class_size").values
             + research[:, None] * a.sel(fixed_term="research").values + u.values)
    intercept = table.xs("Intercept", level="coef")
    np.testing.assert_allclose(intercept["post_mean"], draws.mean(axis=1), rtol=1e-9)
    np.testing.assert_allclose(intercept["post_sd"], draws.std(axis=1), rtol=1e-6)


def test_deviation_table_holds_only_deviations(instructors):
    data, model, eb, post = instructors
    dev = bh.shrinkage_table(post, eb, model=model)
    total = bh.shrinkage_table(post, eb, model=model, kind="total")
    assert list(dev.columns) == ["eb", "eb_sd", "post_mean", "post_sd", "ols"]
    np.testing.assert_array_equal(dev["eb"].to_numpy().reshape(-1, 2), eb.group_means)
    np.testing.assert_allclose(dev["ols"], total["ols"] - total["eb_implied"], rtol=1e-12, atol=1e-12)
    effect = post.posterior["department_effect"].mean(("chain", "draw")).values
    np.testing.assert_allclose(dev["post_mean"].to_numpy().reshape(-1, 2), effect, rtol=1e-12)
    with pytest.raises(ValueError, match="kind must be"):
        bh.shrinkage_table(post, eb, model=model, kind="both")


def test_shrinkage_plot_draws_totals_towards_each_groups_implied_value(instructors):
    data, model, eb, post = instructors
    fig = bh.plot_shrinkage(post, eb, "Intercept", model=model)
    ax = fig.axes[0]
    table = bh.shrinkage_table(post, eb, model=model, kind="total").xs("Intercept", level="coef")
    order = np.argsort(table["ols"].to_numpy())
    by_label = {line.get_label(): line.get_xdata() for line in ax.lines}
    np.testing.assert_allclose(by_label["OLS (group alone)"], table["ols"].to_numpy()[order])
    np.testing.assert_allclose(by_label["EB (REML)"], table["eb"].to_numpy()[order])
    np.testing.assert_allclose(by_label["implied by the model, without the group's deviation"],
                               table["eb_implied"].to_numpy()[order])
    assert len(ax.get_legend().get_texts()) == 4
    import matplotlib.pyplot as plt

    plt.close(fig)
    with pytest.raises(ValueError, match="pass model="):
        bh.plot_shrinkage(post, eb)


def test_shrinkage_of_nested_factors_adds_the_groups_above(pastes):
    model = bh.hlm("strength ~ 1 + (1 | batch/cask)", pastes)
    eb = bh.fit_em(model, "reml")
    post = bh.sample(model, draws=100, warmup=100, chains=2, seed=2, progress=False)
    with pytest.raises(ValueError, match="several grouping factors: .*pass model="):
        bh.shrinkage_table(post, eb)
    casks = bh.shrinkage_table(post, eb, model=model, kind="total")
    batch_of = {lab: lab.split(":")[0] for lab in casks.index.get_level_values(0)}
    batch_eb = {lab[len("batch="):]: eb.group_means[i, 1] for i, lab in enumerate(eb.labels["groups"])
                if lab.startswith("batch=")}
    implied = np.array([eb.fixed["Intercept"] + batch_eb[batch_of[lab]] for lab in casks.index.get_level_values(0)])
    np.testing.assert_allclose(casks["eb_implied"], implied, rtol=1e-12)
    means = pastes.groupby(["batch", "cask"])["strength"].mean()
    ols = [means.loc[tuple(lab.split(":"))] for lab in casks.index.get_level_values(0)]
    np.testing.assert_allclose(casks["ols"], ols, rtol=1e-12)
    batches = bh.shrinkage_table(post, eb, model=model, factor="batch", kind="total")
    np.testing.assert_allclose(batches["ols"], pastes.groupby("batch")["strength"].mean().loc[
        list(batches.index.get_level_values(0))], rtol=1e-12)
