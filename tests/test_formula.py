"""Tests for bayeshlm.formula: the bar-term parser and the formulaic wrapper."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bayeshlm.formula import (
    BarTerm,
    ColumnsSpec,
    FormulaError,
    FormulaSpec,
    model_matrix,
    parse_formula,
    required_variables,
)

# ---------------------------------------------------------------------------
# Parsing of valid formulas


@pytest.mark.parametrize(
    ("formula", "fixed", "bars"),
    [
        ("y ~ x + (1 + x | g)", "x", [("1 + x", "g", True)]),
        ("y ~ x + (x || g)", "x", [("x", "g", False)]),
        ("y ~ x + (1 | g) + (0 + x | g)", "x", [("1", "g", True), ("0 + x", "g", True)]),
        ("y ~ (0 + x | g)", "1", [("0 + x", "g", True)]),
        ("y ~ x - 1 + (1 | g)", "x - 1", [("1", "g", True)]),
        ("y ~ -1 + x + (1 | g)", "-1 + x", [("1", "g", True)]),
        ("y ~ 0 + x + (1 | g)", "0 + x", [("1", "g", True)]),
        ("y ~ x + (1 | g) - 1", "x - 1", [("1", "g", True)]),
        (
            "y ~ x * (z1 + z2) + (1 + x | school)",
            "x * (z1 + z2)",
            [("1 + x", "school", True)],
        ),
        ("y ~ x * c + (c | g)", "x * c", [("c", "g", True)]),
        ("y ~ C(c, contr.sum):x + (1 | g)", "C(c, contr.sum):x", [("1", "g", True)]),
        ("y ~ (1|g)", "1", [("1", "g", True)]),
        ("y ~ 0 + (1 | g)", "0", [("1", "g", True)]),
        ("y ~ 1 + (1 | g)", "1", [("1", "g", True)]),
        ("y ~ (1 | a:b)", "1", [("1", "a:b", True)]),
        ("y ~ (1 | a / b)", "1", [("1", "a", True), ("1", "a:b", True)]),
        (
            "y ~ (x || a/b/c)",
            "1",
            [("x", "a", False), ("x", "a:b", False), ("x", "a:b:c", False)],
        ),
        ("y ~ (1 | a:b/c)", "1", [("1", "a:b", True), ("1", "a:b:c", True)]),
        ("y ~ (1 | a) + (1 | b)", "1", [("1", "a", True), ("1", "b", True)]),
        ("y ~ x + ((1 | g))", "x", [("1", "g", True)]),
        ("y~x+(1|g)", "x", [("1", "g", True)]),
        ("y ~ I(a | b) + (1 | g)", "I(a | b)", [("1", "g", True)]),
        ("y ~ I(x - 1) + (1 | g)", "I(x - 1)", [("1", "g", True)]),
        ("y ~ center(w) + (1 | my.group)", "center(w)", [("1", "my.group", True)]),
    ],
)
def test_parse_valid(formula, fixed, bars):
    spec = parse_formula(formula)
    assert isinstance(spec, FormulaSpec)
    assert spec.formula == formula
    assert spec.response == "y"
    assert spec.fixed == fixed
    assert spec.bars == tuple(BarTerm(*b) for b in bars)


def test_parse_sleepstudy_formula():
    spec = parse_formula("reaction ~ days + (days | subject)")
    assert spec == FormulaSpec(
        "reaction ~ days + (days | subject)",
        "reaction",
        "days",
        (BarTerm("days", "subject", True),),
    )


def test_parse_backticked_names():
    spec = parse_formula("`reaction time` ~ x + (1 | `sub ject`)")
    assert spec.response == "reaction time"
    assert spec.bars == (BarTerm("1", "sub ject", True),)


def test_parse_multiline_formula():
    spec = parse_formula("y ~ x +\n    (1 + x | g)")
    assert spec.fixed == "x"
    assert spec.bars == (BarTerm("1 + x", "g", True),)


@settings(derandomize=True, database=None, max_examples=60)
@given(
    fixed=st.lists(st.sampled_from(["x", "z", "x:z", "C(c)", "0", "1"]), max_size=3),
    bars=st.lists(
        st.tuples(
            st.sampled_from(["1", "x", "1 + x", "0 + z"]),
            st.sampled_from(["|", "||"]),
            st.sampled_from(["g", "h", "g:h"]),
        ),
        min_size=1,
        max_size=3,
    ),
    bars_first=st.booleans(),
)
def test_parse_round_trip(fixed, bars, bars_first):
    bar_text = [f"({e} {op} {f})" for e, op, f in bars]
    terms = bar_text + fixed if bars_first else fixed + bar_text
    spec = parse_formula("y ~ " + " + ".join(terms))
    assert spec.fixed == (" + ".join(fixed) if fixed else "1")
    assert spec.bars == tuple(BarTerm(e, f, op == "|") for e, op, f in bars)


# ---------------------------------------------------------------------------
# Syntax errors and their positions


@pytest.mark.parametrize(
    ("formula", "position", "words"),
    [
        ("y x + (1 | g)", 0, "no '~'"),
        ("y ~ (1 | g", 4, "never closed"),
        ("y ~ x + (1 | g))", 15, "no matching"),
        ("y ~ (x]", 6, "mismatched"),
        ("y ~ (| g)", 5, "left of the bar"),
        ("y ~ x + ( | g)", 10, "left of the bar"),
        ("y ~ (1 |)", 7, "right of the bar"),
        ("y ~ (1 ||  )", 7, "right of the bar"),
        ("y ~ (1 ||| g)", 9, "'|||'"),
        ("y ~ x + 1 | g", 10, "outside parentheses"),
        ("y ~ x + 1 || g", 10, "outside parentheses"),
        ("y ~ x:(1 | g)", 6, "separate term"),
        ("y ~ (1 | g):x", 4, "separate term"),
        ("y ~ (x + (1 | g))", 9, "separate term"),
        ("y ~ (1 | a | b)", 11, "more than one bar"),
        ("log(y) ~ x + (1 | g)", 0, "single column name"),
        ("y + z ~ x + (1 | g)", 0, "single column name"),
        (" ~ x + (1 | g)", 1, "no response"),
        ("y ~ ", 2, "nothing on the right"),
        ("y ~ x +", 6, "empty term"),
        ("y ~ x + + (1 | g)", 8, "empty term"),
        ("y ~ x - (1 | g)", 8, "cannot be removed"),
        ("y ~ (1 | a + b)", 11, "grouping factor"),
        ("y ~ (1 | log(g))", 12, "grouping factor"),
        ("y ~ (1 | a/)", 10, "ends with an operator"),
        ("y ~ x ~ z", 6, "more than one '~'"),
        ("y ~ I('abc) + (1 | g)", 6, "unterminated quote"),
    ],
)
def test_syntax_errors_point_at_position(formula, position, words):
    with pytest.raises(FormulaError) as info:
        parse_formula(formula)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.position == position
    assert err.formula == formula
    message = str(err)
    assert words in message
    # The formula is quoted on its own line, with a caret under the
    # offending character on the next.
    lines = message.splitlines()
    assert lines[-2] == "    " + formula
    assert lines[-1].index("^") == len("    ") + position


@pytest.mark.parametrize("formula", ["", "   ", "\n"])
def test_empty_formula(formula):
    with pytest.raises(FormulaError, match="empty"):
        parse_formula(formula)


def test_missing_tilde_underlines_formula():
    with pytest.raises(FormulaError) as info:
        parse_formula("y x")
    assert str(info.value).splitlines()[-1].strip() == "^~~"


def test_not_a_string():
    with pytest.raises(TypeError, match="string"):
        parse_formula(None)


def test_bad_fixed_part_reported_by_formulaic():
    with pytest.raises(FormulaError, match="fixed part") as info:
        parse_formula("y ~ x +* z + (1 | g)")
    assert "y ~ x +* z + (1 | g)" in str(info.value)
    assert "\x1b" not in str(info.value)  # no terminal colour codes


def test_formula_error_pickles():
    import pickle

    err = FormulaError("bad", "y ~ x", 2)
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err)


# ---------------------------------------------------------------------------
# required_variables


@pytest.mark.parametrize(
    ("rhs", "expected"),
    [
        ("1", set()),
        ("0 + x", {"x"}),
        ("x * c", {"x", "c"}),
        ("x * (z1 + z2)", {"x", "z1", "z2"}),
        ("C(g, contr.sum) + np.log(z)", {"g", "z"}),
        ("abs(q) + I(x ** 2)", {"q", "x"}),
        # formulaic alone loses the variables of stateful transforms.
        ("center(w) + x", {"w", "x"}),
        ("poly(p, 2) + scale(s)", {"p", "s"}),
        ("`my col` + a:b", {"my col", "a", "b"}),
    ],
)
def test_required_variables(rhs, expected):
    assert required_variables(rhs) == expected


# ---------------------------------------------------------------------------
# model_matrix


@pytest.fixture
def small():
    return pd.DataFrame(
        {
            "x": [0.5, 1.0, 2.0, 3.5, 4.0, 6.0],
            "c": ["a", "b", "c", "a", "b", "c"],
        }
    )


def test_model_matrix_names_and_layout(small):
    matrix, names, spec = model_matrix("x * c", small)
    assert names == ["Intercept", "x", "c[T.b]", "c[T.c]", "x:c[T.b]", "x:c[T.c]"]
    assert matrix.dtype == np.float64
    assert matrix.flags.c_contiguous
    assert matrix.shape == (6, 6)
    np.testing.assert_array_equal(matrix[:, 1], small["x"])
    np.testing.assert_array_equal(matrix[:, 4], small["x"] * (small["c"] == "b"))


@pytest.mark.parametrize(
    ("rhs", "names"),
    [("1", ["Intercept"]), ("0", []), ("-1 + x", ["x"]), ("0 + c", ["c[a]", "c[b]", "c[c]"])],
)
def test_model_matrix_intercept_handling(small, rhs, names):
    matrix, got, _ = model_matrix(rhs, small)
    assert got == names
    assert matrix.shape == (6, len(names))


def test_model_matrix_spec_evaluates_new_data(small):
    _, _, spec = model_matrix("center(x) + c", small)
    new = pd.DataFrame({"x": [small["x"].mean()], "c": ["c"]})
    again = np.asarray(spec.get_model_matrix(new))
    # Centring uses the training mean; category coding uses training levels.
    np.testing.assert_allclose(again, [[1.0, 0.0, 0.0, 1.0]])


def test_model_matrix_never_drops_missing(small):
    small.loc[2, "x"] = np.nan
    with pytest.raises(Exception, match="null"):
        model_matrix("x", small)


def test_model_matrix_context(small):
    matrix, names, _ = model_matrix("I(x * k)", small, context={"k": 2.0})
    np.testing.assert_array_equal(matrix[:, 1], 2.0 * small["x"])


def _formulaic_matrix(rhs, frame):
    import formulaic

    mm = formulaic.model_matrix(rhs, frame, na_action="raise", ensure_full_rank=True, output="numpy")
    return np.asarray(mm, dtype=np.float64).reshape(len(frame), -1), [str(c) for c in mm.model_spec.column_names]


@pytest.fixture
def numeric():
    rng = np.random.default_rng(1)
    return pd.DataFrame({
        "x": rng.normal(size=7), "n": rng.integers(-5, 5, size=7), "u": np.arange(7, dtype=np.uint8),
        "my x": rng.normal(size=7), "Intercept": rng.normal(size=7), "b": [True, False] * 3 + [True],
        "c": list("abcabca"), "i": pd.array([1, 2, 3, 4, 5, 6, 7], dtype="Int64"),
    })


@pytest.mark.parametrize("rhs", ["x", "1", "0 + x", "x - 1", "n + x", "x + n", "1 + u + x", "0 + x + n + x",
                                 "`my x` + x", "x + Intercept", "0 + Intercept", "b", "c + x", "x:n", "I(x)",
                                 "i", "center(x)", "x + 1 + n"])
def test_plain_numeric_columns_give_formulaic_design(numeric, rhs):
    """The fast path for plain numeric columns builds exactly the design formulaic builds."""
    matrix, names, spec = model_matrix(rhs, numeric)
    expected, expected_names = _formulaic_matrix(rhs, numeric)
    assert names == expected_names
    np.testing.assert_array_equal(matrix, expected)
    assert matrix.flags.c_contiguous and matrix.dtype == np.float64
    again = np.asarray(spec.get_model_matrix(numeric.iloc[2:5]), dtype=np.float64).reshape(3, -1)
    np.testing.assert_array_equal(again, expected[2:5])
    fast = rhs in ("x", "1", "0 + x", "x - 1", "n + x", "x + n", "1 + u + x", "0 + x + n + x", "`my x` + x",
                   "x + Intercept", "0 + Intercept", "x + 1 + n")
    assert isinstance(spec, ColumnsSpec) == fast


def test_columns_spec_on_new_data_names_the_column(numeric):
    _, _, spec = model_matrix("x + n", numeric)
    with pytest.raises(TypeError, match="column 'n' was numeric"):
        spec.get_model_matrix(numeric.assign(n=numeric["c"]))
    with pytest.raises(KeyError, match="no column 'x'"):
        spec.get_model_matrix(numeric.drop(columns="x"))
    # new rows may hold the column in a nullable or boolean dtype: read as numbers
    again = spec.get_model_matrix(numeric.assign(n=numeric["n"].astype("Int64"), x=numeric["b"]))
    np.testing.assert_array_equal(again[:, 1:], np.column_stack([numeric["b"], numeric["n"]]).astype(float))


def test_columns_spec_leaves_missing_values_to_formulaic(numeric):
    numeric.loc[3, "x"] = np.nan
    with pytest.raises(Exception, match="null"):
        model_matrix("x", numeric)
