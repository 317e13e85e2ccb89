"""Tests for bayeshlm.data: design arrays and input validation."""

import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bayeshlm.data import DataError, Design, build_design
from bayeshlm.datasets import load_dataset
from bayeshlm.formula import ColumnsSpec, parse_formula


@pytest.fixture
def df():
    """Twelve rows, three schools with numeric-looking labels, a categorical."""
    rng = np.random.default_rng(20261126)
    n = 12
    return pd.DataFrame(
        {
            "y": rng.normal(size=n),
            "x": rng.normal(size=n),
            "z": rng.normal(size=n),
            "c": ["a", "b", "c"] * 4,
            "school": ["1224", "1288", "1224", "0042"] * 3,
            "sector": [0, 1, 0, 1, 1, 0] * 2,
        }
    )


def design(formula, data, **kwargs):
    return build_design(parse_formula(formula), data, **kwargs)


# ---------------------------------------------------------------------------
# Shapes, names, blocks


def test_design_fields(df):
    d = design("y ~ x + (1 + x | school)", df)
    assert isinstance(d, Design)
    assert d.response == "y"
    np.testing.assert_array_equal(d.y, df["y"])
    assert d.fixed_names == ("Intercept", "x")
    assert d.coef_names == ("Intercept", "x")
    assert d.block_sizes == (2,)
    assert d.factor == "school"
    np.testing.assert_array_equal(d.X, np.column_stack([np.ones(12), df["x"]]))
    np.testing.assert_array_equal(d.F, d.X)
    for arr in (d.F, d.X):
        assert arr.dtype == np.float64 and arr.flags.c_contiguous
    assert d.y.dtype == np.float64
    assert d.group_idx.dtype == np.int64
    assert d.kept_rows.dtype == np.int64
    np.testing.assert_array_equal(d.kept_rows, np.arange(12))
    assert d.n_dropped == 0
    assert d.obs_var is None
    assert len(d.random_spec) == 1


@pytest.mark.parametrize(
    ("bars", "coef_names", "block_sizes"),
    [
        ("(1 | school)", ("Intercept",), (1,)),
        ("(x | school)", ("Intercept", "x"), (2,)),
        ("(1 + x | school)", ("Intercept", "x"), (2,)),
        ("(0 + x | school)", ("x",), (1,)),
        ("(x - 1 | school)", ("x",), (1,)),
        ("(x || school)", ("Intercept", "x"), (1, 1)),
        ("(1 + x + z || school)", ("Intercept", "x", "z"), (1, 1, 1)),
        ("(1 | school) + (0 + x | school)", ("Intercept", "x"), (1, 1)),
        ("(0 + x | school) + (1 | school)", ("x", "Intercept"), (1, 1)),
        ("(1 + x | school) + (0 + z | school)", ("Intercept", "x", "z"), (2, 1)),
        ("(0 + z | school) + (x | school)", ("z", "Intercept", "x"), (1, 2)),
        ("(c | school)", ("Intercept", "c[T.b]", "c[T.c]"), (3,)),
        ("(0 + c | school)", ("c[a]", "c[b]", "c[c]"), (3,)),
    ],
)
def test_random_forms(df, bars, coef_names, block_sizes):
    d = design(f"y ~ x + {bars}", df)
    assert d.coef_names == coef_names
    assert d.block_sizes == block_sizes
    assert sum(d.block_sizes) == d.X.shape[1] == len(coef_names)
    assert d.X.shape[0] == len(df)
    # Each X column is what its name says.
    columns = {"Intercept": np.ones(12), "x": df["x"], "z": df["z"]}
    for j, name in enumerate(coef_names):
        if name in columns:
            np.testing.assert_array_equal(d.X[:, j], columns[name])


def test_random_spec_evaluates_new_data(df):
    d = design("y ~ x + (1 | school) + (0 + x | school)", df)
    new = pd.DataFrame({"x": [2.0]})
    assert [np.asarray(s.get_model_matrix(new)).tolist() for s in d.random_spec] == [
        [[1.0]],
        [[2.0]],
    ]


@pytest.mark.parametrize(
    ("fixed", "names"),
    [
        ("x", ("Intercept", "x")),
        ("0 + x", ("x",)),
        ("x - 1", ("x",)),
        ("-1 + x", ("x",)),
        ("1", ("Intercept",)),
        ("0", ()),
        ("x * c", ("Intercept", "x", "c[T.b]", "c[T.c]", "x:c[T.b]", "x:c[T.c]")),
        ("x:c", ("Intercept", "x:c[a]", "x:c[b]", "x:c[c]")),
        (
            "x * (z + sector)",
            ("Intercept", "x", "z", "sector", "x:z", "x:sector"),
        ),
    ],
)
def test_fixed_forms(df, fixed, names):
    d = design(f"y ~ {fixed} + (1 | school)", df)
    assert d.fixed_names == names
    assert d.F.shape == (12, len(names))


def test_fixed_intercept_from_bars_only(df):
    d = design("y ~ (1 | school)", df)
    assert d.fixed_names == ("Intercept",)
    d = design("y ~ 0 + (1 | school)", df)
    assert d.fixed_names == ()
    assert d.F.shape == (12, 0)


def test_fixed_categorical_interaction_values(df):
    d = design("y ~ x * c + (1 | school)", df)
    j = d.fixed_names.index("x:c[T.c]")
    np.testing.assert_array_equal(d.F[:, j], df["x"] * (df["c"] == "c"))


def test_sleepstudy():
    data = load_dataset("sleepstudy")
    d = build_design(parse_formula("reaction ~ days + (days | subject)"), data)
    assert len(d.y) == 180
    assert d.fixed_names == ("Intercept", "days")
    assert d.coef_names == ("Intercept", "days")
    assert d.block_sizes == (2,)
    assert len(d.group_labels) == 18
    assert d.group_labels[0] == "308"
    assert np.bincount(d.group_idx).tolist() == [10] * 18
    np.testing.assert_array_equal(d.X[:, 1], data["days"])


def test_string_formula_accepted(df):
    assert design("y ~ x + (1 | school)", df).coef_names == build_design(
        "y ~ x + (1 | school)", df
    ).coef_names


# ---------------------------------------------------------------------------
# Group codes and labels


def test_group_codes_first_appearance(df):
    d = design("y ~ x + (1 | school)", df)
    assert d.group_labels.tolist() == ["1224", "1288", "0042"]
    assert d.group_idx[:4].tolist() == [0, 1, 0, 2]
    assert all(isinstance(s, str) for s in d.group_labels)


def test_numeric_group_column_labels():
    data = pd.DataFrame({"y": [1.0, 2, 3, 4], "g": [1224, 7, 1224, 7]})
    d = design("y ~ (1 | g)", data)
    assert d.group_labels.tolist() == ["1224", "7"]
    data["g"] = data["g"].astype(float)
    assert design("y ~ (1 | g)", data).group_labels.tolist() == ["1224", "7"]


def test_categorical_group_column_ignores_category_order():
    g = pd.Categorical(["b", "a", "b", "a"], categories=["a", "b", "unused"])
    data = pd.DataFrame({"y": [1.0, 2, 3, 4], "g": g})
    d = design("y ~ (1 | g)", data)
    assert d.group_labels.tolist() == ["b", "a"]
    assert d.group_idx.tolist() == [0, 1, 0, 1]


def test_interaction_factor_labels():
    data = pd.DataFrame(
        {
            "y": [1.0, 2, 3, 4, 5, 6],
            "a": ["p", "p", "q", "q", "p", "q"],
            "b": [1, 2, 1, 2, 1, 1],
        }
    )
    d = design("y ~ (1 | a:b)", data)
    assert d.factor == "a:b"
    assert d.group_labels.tolist() == ["p:1", "p:2", "q:1", "q:2"]
    assert d.group_idx.tolist() == [0, 1, 2, 3, 0, 2]


@settings(derandomize=True, database=None, max_examples=40)
@given(st.lists(st.sampled_from(["7", "07", "x", "1224", "a b"]), min_size=2, max_size=30))
def test_group_codes_property(labels):
    if len(set(labels)) < 2:
        labels = labels + ["other"]
    y = np.arange(len(labels), dtype=float)
    d = design("y ~ (1 | g)", {"y": y, "g": labels})
    # Labels decode the codes, and are numbered by first appearance.
    assert d.group_labels[d.group_idx].tolist() == labels
    assert d.group_labels.tolist() == list(dict.fromkeys(labels))


# ---------------------------------------------------------------------------
# Input forms


def test_dict_input(df):
    data = {name: df[name].to_numpy() for name in df.columns}
    d = design("y ~ x + (1 + x | school)", data)
    ref = design("y ~ x + (1 + x | school)", df)
    np.testing.assert_array_equal(d.F, ref.F)
    np.testing.assert_array_equal(d.group_idx, ref.group_idx)
    d = design("y ~ x + (1 | g)", {"y": [1.0, 2, 3], "x": [0, 1, 2], "g": ["a", "b", "a"]})
    assert d.group_labels.tolist() == ["a", "b"]


def test_dict_mismatched_lengths():
    with pytest.raises(DataError, match=r"'y' \(3\).*'g' \(2\)"):
        design("y ~ (1 | g)", {"y": [1.0, 2, 3], "g": ["a", "b"]})


def test_dict_not_one_dimensional():
    with pytest.raises(DataError, match="'x' must be 1-D"):
        design("y ~ x + (1 | g)", {"y": [1.0, 2], "x": [[1, 2], [3, 4]], "g": ["a", "b"]})


def test_wrong_data_type():
    with pytest.raises(TypeError, match="DataFrame"):
        design("y ~ (1 | g)", [[1, 2]])


def test_non_default_index(df):
    shuffled = df.set_index(pd.Index([5, 3, 3, 9, 1, 0, 2, 2, 8, 7, 6, 4]))
    d = design("y ~ x + (1 | school)", shuffled)
    np.testing.assert_array_equal(d.F[:, 1], df["x"])


@pytest.mark.parametrize("index", [None, [5, 3, 3, 9, 1, 0, 2, 2, 8, 7, 6, 4], list("abcdefghijkl")])
def test_plain_columns_give_the_formulaic_design(df, index):
    """Numeric columns named as they are skip formulaic; the arrays are those formulaic gives."""
    frame = df if index is None else df.set_index(pd.Index(index))
    plain = design("y ~ x + sector + (1 + z | school)", frame)
    through = design("y ~ I(x) + I(sector) + (1 + I(z) | school)", frame)
    assert isinstance(plain.fixed_spec, ColumnsSpec)
    assert not isinstance(through.fixed_spec, ColumnsSpec)
    for field in ("y", "F", "X", "group_idx", "group_labels", "kept_rows"):
        np.testing.assert_array_equal(getattr(plain, field), getattr(through, field))
    assert plain.fixed_names == ("Intercept", "x", "sector")
    assert plain.coef_names == ("Intercept", "z")


# ---------------------------------------------------------------------------
# Model structure errors


def test_no_bar_term_is_a_single_level_regression(df):
    d = design("y ~ x", df)
    assert d.X.shape == (12, 0) and d.coef_names == () and d.factors == ()
    np.testing.assert_array_equal(d.group_idx, np.zeros(12))


def test_crossed_factors_are_read_as_crossed_without_a_nesting_hint(df):
    # school and c cross with (mostly) one row per combination: crossed, not labels numbered within
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d = design("y ~ (1 | school) + (1 | c)", df)
    assert d.crossed and d.parents == ()
    assert set(d.factors) == {"school", "c"}
    assert len(d.group_labels) == len(set(zip(df["school"], df["c"], strict=True)))


def test_nested_factors_ordered_finest_first(df):
    d = design("y ~ x + (1 | school/c) + (0 + x | school)", df)
    assert d.factors == ("school:c", "school")
    assert d.factor == "school:c"
    assert d.factor_sizes == (1, 2)
    assert d.coef_names == ("Intercept|school:c", "Intercept|school", "x|school")
    assert d.X.shape == (12, 3)
    fine, coarse = d.factor_idx
    np.testing.assert_array_equal(d.parents[0][fine], coarse)
    labels = d.factor_labels[0][fine]
    np.testing.assert_array_equal([lab.split(":")[0] for lab in labels], df["school"])


def test_identical_groupings_are_refused(df):
    df = df.assign(s2=df["school"] + "x")
    with pytest.raises(ValueError, match="define the same groups"):
        design("y ~ (1 | school) + (1 | s2)", df)


@pytest.mark.parametrize(
    "bars", ["(1 | school) + (1 | school)", "(x | school) + (0 + x | school)"]
)
def test_duplicate_coefficient(df, bars):
    with pytest.raises(ValueError, match="appears twice.*'school'"):
        design(f"y ~ {bars}", df)


def test_bar_without_columns(df):
    with pytest.raises(ValueError, match="no columns"):
        design("y ~ (0 | school)", df)


# ---------------------------------------------------------------------------
# Data validation


def test_unknown_column_suggests(df):
    with pytest.raises(DataError, match=r"column 'scool'.*did you mean 'school'"):
        design("y ~ x + (1 | scool)", df)
    with pytest.raises(DataError, match=r"'xx' \(used in the fixed part\).*'x'"):
        design("y ~ xx + (1 | school)", df)
    with pytest.raises(DataError, match=r"'w' \(used in the random-effect term"):
        design("y ~ x + (w | school)", df)
    with pytest.raises(DataError, match=r"'Y' \(used in the response\).*did you mean 'y'"):
        design("Y ~ x + (1 | school)", df)
    with pytest.raises(DataError, match=r"'yy' \(used in the response\)"):
        design("yy ~ x + (1 | school)", df)
    with pytest.raises(DataError, match=r"'q' \(used in the fixed part\) is not in the data$"):
        design("y ~ center(q) + (1 | school)", df)


@pytest.mark.parametrize(
    ("column", "value", "formula"),
    [
        ("y", np.nan, "y ~ x + (1 | school)"),
        ("y", np.inf, "y ~ x + (1 | school)"),
        ("x", -np.inf, "y ~ x + (1 | school)"),
        ("x", np.nan, "y ~ center(x) + (1 | school)"),
        ("z", np.nan, "y ~ x + (1 + z | school)"),
        ("c", None, "y ~ c + (1 | school)"),
        ("school", None, "y ~ x + (1 | school)"),
    ],
)
def test_missing_values_raise(df, column, value, formula):
    df[column] = df[column].astype(object) if value is None else df[column]
    df.loc[[2, 7], column] = value
    with pytest.raises(DataError, match=rf"column '{column}' has 2 missing or non-finite") as info:
        design(formula, df)
    assert "row positions 2, 7" in str(info.value)
    assert "missing='drop'" in str(info.value)


def test_missing_values_several_columns_reported(df):
    df.loc[1, "x"] = np.nan
    df.loc[[3, 4, 5], "y"] = np.nan
    with pytest.raises(DataError) as info:
        design("y ~ x + (1 | school)", df)
    assert "'y' has 3" in str(info.value)
    assert "'x' has 1 missing or non-finite value " in str(info.value)


def test_nan_group_labels_count_as_missing():
    data = pd.DataFrame({"y": [1.0, 2, 3, 4], "g": [1.0, np.nan, 2.0, 1.0]})
    with pytest.raises(DataError, match="'g' has 1"):
        design("y ~ (1 | g)", data)
    d = design("y ~ (1 | g)", data, missing="drop")
    assert d.group_labels.tolist() == ["1", "2"]


def test_missing_drop(df):
    df.loc[1, "x"] = np.nan
    df.loc[[1, 4], "y"] = np.inf
    df.loc[6, "school"] = None
    df.loc[:, "unused"] = np.nan  # columns the model does not use are ignored
    d = design("y ~ x + (1 | school)", df, missing="drop")
    assert d.n_dropped == 3
    np.testing.assert_array_equal(d.kept_rows, [0, 2, 3, 5, 7, 8, 9, 10, 11])
    np.testing.assert_array_equal(d.y, df["y"].to_numpy()[d.kept_rows])
    np.testing.assert_array_equal(d.F[:, 1], df["x"].to_numpy()[d.kept_rows])
    assert len(d.group_idx) == 9


def test_missing_drop_everything():
    data = pd.DataFrame({"y": [np.nan, np.nan], "g": ["a", "b"]})
    with pytest.raises(DataError, match="every row"):
        design("y ~ (1 | g)", data, missing="drop")


def test_unused_columns_with_missing_values_ignored(df):
    df["other"] = np.nan
    assert design("y ~ x + (1 | school)", df).n_dropped == 0


def test_missing_argument(df):
    with pytest.raises(ValueError, match="missing must be 'raise' or 'drop'"):
        design("y ~ x + (1 | school)", df, missing="omit")


@pytest.mark.parametrize(
    "values",
    [["a", "b", "c", "d"], pd.Categorical([1, 2, 1, 2])],
)
def test_non_numeric_response(values):
    data = pd.DataFrame({"y": values, "g": ["a", "a", "b", "b"]})
    with pytest.raises(DataError, match="'y' \\(the response\\) must be numeric"):
        design("y ~ (1 | g)", data)


def test_bool_and_int_response_accepted():
    data = pd.DataFrame({"y": [True, False, True, True], "g": ["a", "a", "b", "b"]})
    np.testing.assert_array_equal(design("y ~ (1 | g)", data).y, [1.0, 0.0, 1.0, 1.0])
    data["y"] = [3, 1, 2, 2]
    assert design("y ~ (1 | g)", data).y.dtype == np.float64


def test_constant_response():
    data = pd.DataFrame({"y": [2.0, 2.0, 2.0, 2.0], "g": ["a", "a", "b", "b"]})
    with pytest.raises(DataError, match="response 'y' is constant"):
        design("y ~ (1 | g)", data)


def test_single_level_factor():
    data = pd.DataFrame({"y": [1.0, 2.0, 3.0], "g": ["only"] * 3})
    with pytest.raises(DataError, match="'g' has a single level"):
        design("y ~ (1 | g)", data)


def test_single_level_after_drop():
    data = pd.DataFrame({"y": [1.0, 2.0, np.nan], "g": ["a", "a", "b"]})
    with pytest.raises(DataError, match="single level"):
        design("y ~ (1 | g)", data, missing="drop")


def test_empty_data():
    data = pd.DataFrame({"y": pd.Series([], dtype=float), "g": pd.Series([], dtype=str)})
    with pytest.raises(DataError, match="no rows"):
        design("y ~ (1 | g)", data)


@pytest.mark.parametrize(
    ("make", "formula", "columns"),
    [
        (lambda d: d.assign(x2=2 * d["x"]), "y ~ x + x2", ["'x'", "'x2'"]),
        (lambda d: d.assign(x2=d["x"]), "y ~ x + x2", ["'x'", "'x2'"]),
        (lambda d: d.assign(k=3.0), "y ~ x + k", ["'Intercept'", "'k'"]),
        (
            lambda d: d.assign(s=d["x"] + d["z"]),
            "y ~ x + z + s",
            ["'x'", "'z'", "'s'"],
        ),
        (lambda d: d.assign(x2=1e6 * d["x"] - 5), "y ~ x + x2", ["'Intercept'", "'x'", "'x2'"]),
    ],
)
def test_rank_deficient_fixed(df, make, formula, columns):
    with pytest.raises(DataError, match="fixed-effects design is rank deficient") as info:
        design(formula + " + (1 | school)", make(df))
    for name in columns:
        assert name in str(info.value)
    if "'Intercept'" not in columns:
        assert "'Intercept'" not in str(info.value)


def test_rank_deficient_random(df):
    with pytest.raises(DataError, match="random-effects design of 'school'.*'x', 'x2'"):
        design("y ~ x + (x + x2 | school)", df.assign(x2=2 * df["x"]))


def test_unused_category_after_drop_detected(df):
    df["c"] = pd.Categorical(df["c"])
    df.loc[df["c"] == "c", "y"] = np.nan
    with pytest.raises(DataError, match=r"'c\[T\.c\]'.*zero in every row"):
        design("y ~ c + (1 | school)", df, missing="drop")


def test_full_rank_design_passes(df):
    # Large but legitimate differences in scale must not trip the check.
    d = design("y ~ x + big + (1 | school)", df.assign(big=1e8 * df["z"]))
    assert d.fixed_names == ("Intercept", "x", "big")


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")
def test_non_finite_after_transform():
    data = pd.DataFrame({"y": [1.0, 2, 3, 4], "x": [0.0, 1, 2, 3], "g": ["a", "a", "b", "b"]})
    with pytest.raises(DataError, match=r"'np.log\(x\)'.*1 non-finite"):
        design("y ~ np.log(x) + (1 | g)", data)


# ---------------------------------------------------------------------------
# Known sampling variances


@pytest.fixture
def meta():
    return pd.DataFrame(
        {
            "effect": [0.1, 0.3, -0.2, 0.5, 0.0, 0.2],
            "se": [0.1, 0.2, 0.1, 0.3, 0.2, 0.1],
            "study": ["s1", "s2", "s3", "s4", "s5", "s6"],
        }
    )


def test_known_sd_column(meta):
    d = design("effect ~ (1 | study)", meta, known_sd="se")
    np.testing.assert_allclose(d.obs_var, meta["se"] ** 2)
    assert d.obs_var.dtype == np.float64 and d.obs_var.flags.c_contiguous


def test_known_var_array(meta):
    d = design("effect ~ (1 | study)", meta, known_var=meta["se"].to_numpy() ** 2)
    np.testing.assert_allclose(d.obs_var, meta["se"] ** 2)
    d = design("effect ~ (1 | study)", meta, known_var=list(meta["se"]))
    np.testing.assert_allclose(d.obs_var, meta["se"])


def test_known_both_given(meta):
    with pytest.raises(ValueError, match="not both"):
        design("effect ~ (1 | study)", meta, known_sd="se", known_var="se")


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_known_sd_not_positive(meta, bad):
    meta.loc[[1, 3], "se"] = bad
    with pytest.raises(DataError, match="known_sd must be positive and finite; 2 values are not"):
        design("effect ~ (1 | study)", meta, known_sd="se")
    with pytest.raises(DataError, match="known_var must be positive.*2 values"):
        design("effect ~ (1 | study)", meta, known_var=meta["se"].to_numpy())


def test_known_sd_missing_values(meta):
    meta.loc[2, "se"] = np.nan
    with pytest.raises(DataError, match="column 'se' has 1 missing"):
        design("effect ~ (1 | study)", meta, known_sd="se")
    d = design("effect ~ (1 | study)", meta, known_sd="se", missing="drop")
    assert d.n_dropped == 1
    np.testing.assert_allclose(d.obs_var, meta["se"].drop(index=2).to_numpy() ** 2)


def test_known_array_missing_and_drop(meta):
    var = np.array([0.01, np.inf, 0.04, 0.01, 0.02, 0.03])
    with pytest.raises(DataError, match="'known_var' has 1 missing or non-finite"):
        design("effect ~ (1 | study)", meta, known_var=var)
    meta.loc[4, "effect"] = np.nan
    d = design("effect ~ (1 | study)", meta, known_var=var, missing="drop")
    assert d.n_dropped == 2
    np.testing.assert_allclose(d.obs_var, var[[0, 2, 3, 5]])
    assert d.group_labels.tolist() == ["s1", "s3", "s4", "s6"]


def test_known_array_wrong_length(meta):
    with pytest.raises(DataError, match="known_sd has 2 values but the data has 6 rows"):
        design("effect ~ (1 | study)", meta, known_sd=[0.1, 0.2])


def test_known_column_unknown_or_not_numeric(meta):
    with pytest.raises(DataError, match=r"'sd' \(used in known_sd\).*did you mean.*'se'"):
        design("effect ~ (1 | study)", meta, known_sd="sd")
    with pytest.raises(DataError, match="'study' \\(known_var\\) must be numeric"):
        design("effect ~ (1 | study)", meta, known_var="study")
