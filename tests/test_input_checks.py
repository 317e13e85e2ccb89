"""Every input checked before anything runs (issue 18, part 2).

Each case is run through both front doors, the formula (``bh.hlm``) and the level-by-level
builder (``bh.Hierarchy(...).compile``), and through ``bh.hlm_stats`` where the check applies
to statistics computed by chunks; each expects the message that says what is wrong.
"""

import io
import re

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bayeshlm as bh
from bayeshlm import Equation, Hierarchy
from bayeshlm.data import DataError, build_design, check_gram_rank
from bayeshlm.formula import FormulaError


@pytest.fixture
def df():
    """60 rows in 6 groups of 10, two numeric predictors."""
    rng = np.random.default_rng(18)
    n = 60
    return pd.DataFrame({"y": rng.normal(size=n), "x": rng.normal(size=n), "z": rng.normal(size=n),
                         "g": np.repeat([f"g{j}" for j in range(6)], 10)})


def _doors(formula, data, builder=None):
    """Call each front door that applies; return the errors they raise (None for success)."""
    calls = [lambda: bh.hlm(formula, data), lambda: bh.hlm_stats(formula, data, chunk_rows=17)]
    if builder is not None:
        calls.append(lambda: builder.compile(data))
    out = []
    for call in calls:
        try:
            call()
            out.append(None)
        except (DataError, FormulaError) as exc:
            out.append(exc)
    return out


def _all_raise(formula, data, pattern, builder=None):
    errors = _doors(formula, data, builder)
    for err in errors:
        assert err is not None, "a front door accepted the input"
        assert re.search(pattern, str(err)), str(err)
    return errors


# ---------------------------------------------------------------------------
# Group labels that read the same as text


def test_labels_equal_as_text_are_an_error_naming_both(df):
    data = df.assign(g=pd.Series(np.repeat([1, 2, 3, 4, 5, 6], 10), dtype=object))
    data.loc[:4, "g"] = "1"  # the string "1" beside the integer 1 in one column
    errors = _all_raise("y ~ x + (1 | g)", data, r"grouping column 'g' has two different groups with the same "
                        r"label '1'", Hierarchy("y", ["x"]).level("g", {"Intercept": Equation()}))
    for err in errors:
        assert "g='1' (str)" in str(err) and "g=1 (int)" in str(err)
        assert "astype(str)" in str(err)


def test_interaction_labels_joined_by_colon_are_an_error_naming_both(df):
    data = df.assign(a=["p:q", "p"] * 30, b=["z", "q:z"] * 30)
    errors = _all_raise("y ~ x + (1 | a:b)", data, r"grouping factor 'a:b' has two different groups with the "
                        r"same label 'p:q:z'", Hierarchy("y", ["x"]).level("a:b", {"Intercept": Equation()}))
    for err in errors:
        assert "a='p:q', b='z'" in str(err) and "a='p', b='q:z'" in str(err)


def test_distinct_labels_still_accepted(df):
    data = df.assign(a=["p:q", "p"] * 30, b=["z", "r"] * 30)
    assert bh.hlm("y ~ x + (1 | a:b)", data).n_groups == 2
    data = df.assign(g=np.repeat([1, 2, 3, 4, 5, 6], 10))
    assert bh.hlm("y ~ x + (1 | g)", data).design.group_labels.tolist() == ["1", "2", "3", "4", "5", "6"]


# ---------------------------------------------------------------------------
# Names that collide with generated terms; the response on the right


def test_predictor_named_intercept_is_an_error(df):
    data = df.assign(Intercept=df["z"])
    _all_raise("y ~ Intercept + x + (1 | g)", data, r"column 'Intercept' \(used in the fixed part\) has the name "
               r"bayeshlm gives the intercept.*rename the column")
    _all_raise("y ~ 0 + Intercept + (1 | g)", data, r"column 'Intercept'.*rename")
    _all_raise("y ~ x + (Intercept | g)", data, r"column 'Intercept' \(used in the random-effect term")
    with pytest.raises(FormulaError, match="not a predictor"):
        Equation("Intercept")


def test_column_named_like_a_generated_term_is_an_error(df):
    data = df.assign(**{"x:z": df["x"] * 2 + 1})
    _all_raise("y ~ x * z + `x:z` + (1 | g)", data, r"two columns of the fixed part .* are both named 'x:z'.*rename")


@pytest.mark.parametrize(("formula", "where"), [
    ("y ~ y + (1 | g)", r"\(in the fixed part\)"),
    ("y ~ x + log(abs(y)) + (1 | g)", r"\(in the fixed part\)"),
    ("y ~ x + (y | g)", r"\(in the random-effect term \(y \| g\)\)"),
    ("y ~ x + (1 | y)", r"\(as the grouping factor of \(1 \| y\)\)"),
])
def test_response_on_the_right_is_an_error(df, formula, where):
    with pytest.raises(FormulaError, match=r"the response 'y' is also on the right of '~' " + where) as info:
        bh.hlm(formula, df)
    # the caret points at the first mention on the right
    caret = str(info.value).splitlines()[-1]
    assert formula[caret.index("^") - 4:].startswith("y")
    with pytest.raises(FormulaError, match="response 'y'"):
        bh.hlm_stats(formula, df)


def test_response_as_a_builder_predictor_is_an_error():
    with pytest.raises(FormulaError, match="response 'y' cannot be a predictor of itself"):
        Hierarchy("y", ["x", "y"])
    with pytest.raises(FormulaError, match=r"equation of 'Intercept': 'log\(y\)'"):
        Hierarchy("y", ["x"]).level("g", {"Intercept": Equation("log(y)")})


# ---------------------------------------------------------------------------
# Types: integers in expressions, complex numbers, numbers as text, dates


def test_integer_overflow_in_a_formula_expression_is_prevented(df):
    rng = np.random.default_rng(3)
    k = rng.integers(2_200_000, 3_000_000, size=len(df))  # k**3 > 2**63: int64 arithmetic wraps
    data = df.assign(k=k)
    assert np.any(k.astype(np.int64) ** 3 < 0)  # what formulaic computed before: wrapped values
    exact = k.astype(np.float64) ** 3
    for model in (bh.hlm("y ~ I(k**3) + (1 | g)", data),
                  Hierarchy("y", ["I(k**3)"]).level("g", {"Intercept": Equation()}).compile(data)):
        np.testing.assert_allclose(model.design.F[:, 1], exact, rtol=1e-15)
    chunks = bh.hlm_stats("y ~ I(k**3) + (1 | g)", data, chunk_rows=17)
    # the statistics are of the standardised columns (bayeshlm.basis): those of the exact cubes
    y_std, F_std, _ = chunks.basis.rows(data["y"].to_numpy(), np.column_stack([np.ones(len(data)), exact]),
                                        np.ones((len(data), 1)))
    np.testing.assert_allclose(chunks.stats.Fty[1], F_std[:, 1] @ y_std, rtol=1e-9,
                               atol=1e-12 * np.linalg.norm(F_std[:, 1]) * np.linalg.norm(y_std))
    # categorical use of an integer column keeps its level names
    coded = bh.hlm("y ~ C(n) + (1 | g)", df.assign(n=np.tile([1, 2, 3], 20)))
    assert coded.fixed_names == ("Intercept", "C(n)[T.2]", "C(n)[T.3]")


def test_integer_overflow_in_predictions_is_prevented(df):
    data = df.assign(k=np.random.default_rng(4).integers(2_200_000, 3_000_000, size=len(df)))
    model = bh.hlm("y ~ I(k**3) + (1 | g)", data)
    from bayeshlm.data import evaluate_spec

    F = evaluate_spec(model.design.fixed_spec, data.iloc[:5], "the fixed part")
    np.testing.assert_allclose(F[:, 1], data["k"].to_numpy()[:5].astype(float) ** 3, rtol=1e-15)


def test_complex_predictor_is_refused(df):
    data = df.assign(c=df["x"] + 1j * df["z"])
    _all_raise("y ~ c + (1 | g)", data, r"column 'c' \(used in the fixed part\) holds complex numbers "
               r"\(complex128\); a predictor must be real",
               Hierarchy("y", ["c"]).level("g", {"Intercept": Equation()}))


def _csv_with_a_dot(df):
    """The data written to CSV with one "." among the numbers of column x, read back by pandas."""
    text = df.to_csv(index=False)
    lines = text.splitlines()
    cells = lines[7].split(",")  # line 0 is the header: row position 6
    cells[1] = "."  # column x
    lines[7] = ",".join(cells)
    return pd.read_csv(io.StringIO("\n".join(lines)))


def test_numeric_column_read_as_text_is_reported(df):
    data = _csv_with_a_dot(df)
    assert not pd.api.types.is_numeric_dtype(data["x"])  # one "." made the column text
    errors = _all_raise("y ~ x + (1 | g)", data, r"column 'x' \(used in the fixed part\) looks numeric but is "
                        r"read as text .*59 of its 60 values are numbers, and these are not: '\.' in 1 row "
                        r"\(row position 6\)", Hierarchy("y", ["x"]).level("g", {"Intercept": Equation()}))
    for err in errors:
        assert "one column per distinct value (60 of them)" in str(err)
        assert "pd.to_numeric(df['x'], errors='coerce')" in str(err)
    # as the response: the same diagnosis
    with pytest.raises(DataError, match=r"'x' \(the response\) must be numeric.*looks numeric but is read as text"):
        bh.hlm("x ~ y + (1 | g)", data)


def test_numbers_written_as_text_and_real_categories(df):
    as_text = df.assign(s=df["x"].round(4).astype(str))
    with pytest.raises(DataError, match=r"column 's' .* holds numbers written as text"):
        bh.hlm("y ~ s + (1 | g)", as_text)
    # said to be a category: accepted, one dummy per level as asked
    codes = df.assign(s=np.tile(["1", "2", "3"], 20))
    assert bh.hlm("y ~ C(s) + (1 | g)", codes).fixed_names == ("Intercept", "C(s)[T.2]", "C(s)[T.3]")
    # ordinary text, a few labels of which are numbers: a category
    mostly_text = df.assign(s=np.tile(["low", "high", "mid", "10"], 15))
    assert len(bh.hlm("y ~ s + (1 | g)", mostly_text).fixed_names) == 4


@pytest.mark.parametrize(("values", "advice"), [
    (pd.date_range("2020-01-01", periods=60, freq="D"), r"dates or times .*\.dt\.days / 365\.25.*\.dt\.year"),
    (pd.to_timedelta(np.arange(60), unit="h"), r"durations .*\.dt\.total_seconds\(\)"),
])
def test_dates_and_durations_get_conversion_advice(df, values, advice):
    data = df.assign(t=values)
    _all_raise("y ~ t + (1 | g)", data, r"column 't' \(used in the fixed part\) holds " + advice,
               Hierarchy("y", ["t"]).level("g", {"Intercept": Equation()}))


# ---------------------------------------------------------------------------
# Ill-scaled columns: the rank check judges centred, scaled columns


def test_large_mean_next_to_an_intercept_is_not_collinear(df):
    for shift in (1e5, 1e8, 1e12):
        data = df.assign(x=df["x"] + shift)
        assert build_design("y ~ x + z + (x | g)", data).fixed_names == ("Intercept", "x", "z")
    for shift in (1e5, 1e6):  # from summed statistics, which keep fewer digits of the spread
        F = np.column_stack([np.ones(60), df["x"] + shift, df["z"]])
        check_gram_rank(F.T @ F, ["Intercept", "x", "z"], "fixed-effects design")
    model = bh.hlm_stats("y ~ x + z + (1 | g)", df.assign(x=df["x"] + 1e5), chunk_rows=17)
    assert model.fixed_names == ("Intercept", "x", "z")
    # a spread lost in the sums entirely is said to be lost, not "collinear"
    F = np.column_stack([np.ones(60), df["x"] + 1e12, df["z"]])
    with pytest.raises(DataError, match="varies too little against its mean for its spread to survive"):
        check_gram_rank(F.T @ F, ["Intercept", "x", "z"], "fixed-effects design")


# hlm_stats sums the column moments of x * 1e300 (priors.py) before the check reports the column
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_tiny_and_huge_columns_are_not_called_zero(df):
    for factor, size, by in ((1e-300, "small", "multiply it by 1e\\+300"), (1e300, "large", "by 1e-300")):
        data = df.assign(x=df["x"] * factor)
        errors = _all_raise("y ~ x + (1 | g)", data, f"column 'x' of the fixed-effects design is too {size} to "
                            "compute with", Hierarchy("y", ["x"]).level("g", {"Intercept": Equation()}))
        for err in errors:
            assert "zero in every row" not in str(err)
        assert re.search(by, str(errors[0]))
    with pytest.raises(DataError, match="too small to compute with: its squares underflow"):
        G = np.array([[60.0, 3e-299], [3e-299, 0.0]])  # statistics of x * 1e-300: x'x underflowed
        check_gram_rank(G, ["Intercept", "x"], "fixed-effects design")
    # a column of zeros is still called zero
    with pytest.raises(DataError, match="'x' of the fixed-effects design is zero in every row"):
        build_design("y ~ x + (1 | g)", df.assign(x=0.0))


def test_dependencies_found_whatever_the_location(df):
    data = df.assign(x=df["x"] + 1e6)
    with pytest.raises(DataError, match=r"rank deficient: the columns 'Intercept', 'x', 'x2'"):
        build_design("y ~ x + x2 + (1 | g)", data.assign(x2=3 * data["x"] + 7))
    with pytest.raises(DataError, match=r"rank deficient: the columns 'x', 'x2' are"):
        build_design("y ~ x + x2 + (1 | g)", data.assign(x2=1e-3 * data["x"]))
    with pytest.raises(DataError, match="column 'w' of the fixed-effects design is constant up to rounding"):
        build_design("y ~ x + w + (1 | g)", data.assign(w=1e6 + 1e-9 * df["z"]))  # spread 1e-15 of its size
    # indicator columns adding up to one play the intercept: a shifted column stays fine ...
    assert len(build_design("y ~ 0 + C(g) + x + (1 | g)", data).fixed_names) == 7
    # ... and a column constant within the groups is a combination of them
    with pytest.raises(DataError, match=r"rank deficient: the columns .*'C\(g\)\[g0\]'.*'w'"):
        build_design("y ~ 0 + C(g) + w + (1 | g)", data.assign(w=np.repeat(np.arange(6.0), 10) + 1e5))


@settings(max_examples=30)
@given(shift=st.sampled_from([0.0, 1e2, 1e4, 1e6, 1e9, -1e7]), scale=st.sampled_from([1e-100, 1e-6, 1.0, 1e6, 1e100]),
       seed=st.integers(0, 2**32 - 1))
def test_rank_verdict_is_shift_and_scale_invariant(shift, scale, seed):
    """A predictor ``scale * (x + shift)`` (shift in units of its spread) next to an intercept."""
    rng = np.random.default_rng(seed)
    n = 40
    x, z = rng.normal(size=n), rng.normal(size=n)
    F = np.column_stack([np.ones(n), scale * (x + shift), z])
    from bayeshlm.data import _check_rank, _rank_two_pass

    # the quick verdict from one cross-product (taken when it is accurate) and the two-pass one agree
    for check in (_check_rank, _rank_two_pass):
        check(F, ["Intercept", "x", "z"], "fixed-effects design")  # full rank: accepted
        dependent = np.column_stack([F, 2.5 * F[:, 1] - 3.0 * z])
        with pytest.raises(DataError, match="rank deficient"):
            check(dependent, ["Intercept", "x", "z", "w"], "fixed-effects design")
