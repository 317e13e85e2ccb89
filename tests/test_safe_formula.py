"""The formula is code (issue 18, part 7): the safe mode of formulas, on by default for ``fit`` and ``em``.

formulaic evaluates the Python in a formula; :func:`bayeshlm.safe_formula.check_formula`
accepts only names, numbers, formula operators and known transforms. Each refused case
states the expected reason and where the caret points.
"""

from pathlib import Path

import pytest

import bayeshlm as bh
from bayeshlm.__main__ import main
from bayeshlm.formula import FormulaError
from bayeshlm.safe_formula import ALLOWED_CALLS, UnsafeFormulaError, check_formula

README = Path(__file__).resolve().parents[1] / "README.md"

ACCEPTED = [
    "y ~ x",
    "y ~ 1 + x + (x | g)",
    "y ~ x + (x || g)",
    "y ~ 0 + x + (1 | school/class)",  # 'class' is a Python keyword, and a column here
    "y ~ x + (1 | school/class/pupil)",
    "y ~ x + (1 | a:b)",
    "y ~ x + (1 + x | g) + (0 + z | h)",
    "y ~ x + (1 | `my class`)",
    "y ~ x * z + (x | g)",
    "y ~ x:z + a/b + a %in% b",
    "y ~ (a + b + c) ** 2",
    "y ~ -1 + x",
    "y ~ x - 1",
    "y ~ log(x) + exp(z) + log10(w) + exp2(v)",
    "y ~ np.sqrt(x) + np.log1p(z) + abs(w)",
    "y ~ I(x ** 2) + I((x - 2013.5) / 10) + I(2 ** x) + I(-x)",
    "y ~ I(x > 0) + I((x > 0) & (z < 1)) + I(~(x > 0)) + I(g == 'a')",
    "y ~ C(g) + C(h, Treatment('b')) + C(k, contr.sum) + C(m, contr.treatment('b'))",
    "y ~ C(g, levels=['a', 'b'])",
    "y ~ center(x) + scale(z, ddof=0) + standardize(w)",
    "y ~ poly(x, 2) + bs(z, df=4) + cr(w, df=3) + lag(v, 2)",
    "y ~ {x + 1}",
    "y ~ `a b` + x + Q('c d')",
    "`my y` ~ x",
    "y ~ my.var + (1 | my.group)",
    "y ~ über + (1 | schüle)",
    "score ~ ses\n + (ses | school)",
]


@pytest.mark.parametrize("formula", ACCEPTED)
def test_names_numbers_operators_and_known_transforms_are_accepted(formula):
    assert check_formula(formula) == formula


# (formula, reason, the text the caret underlines)
REFUSED = [
    ("y ~ I(__import__('os').system('ls'))", "the call of '__import__('os').system'", "__import__('os').system"),
    ("y ~ I(x + 0 * exec('import os'))", "the call of 'exec': it calls only abs, bs, C,", "exec"),
    ("y ~ open('f')", "the call of 'open'", "open"),
    ("y ~ I(getattr(x, 'y'))", "the call of 'getattr'", "getattr"),
    ("y ~ I(x.fillna(0))", "the call of 'x.fillna'", "x.fillna"),
    ("y ~ np.random.seed(1)", "the call of 'np.random.seed'", "np.random.seed"),
    ("y ~ sqrt(x)", "the call of 'sqrt' (write np.sqrt)", "sqrt"),
    ("y ~ I((lambda: 1)())", "the call of 'lambda: 1'", "lambda: 1"),
    ("y ~ I(x)(1)", "the call of 'I(x)'", "I(x)"),
    ("y ~ I(x.__class__)", "the name 'x.__class__' (names with underscores at the front", "x.__class__"),
    ("y ~ __builtins__", "the name '__builtins__'", "__builtins__"),
    ("y ~ I(np.log(x)._x)", "an attribute of a computed value: 'np.log(x)._x'", "np.log(x)._x"),
    ("y ~ I(x[0])", "indexing with [...]: 'x[0]'", "x[0]"),
    ("y ~ I([a for a in x])", "the Python keyword 'for'", "for"),
    ("y ~ I(x if z else w)", "the Python keyword 'if'", "if"),
    ("y ~ I(not x)", "the Python keyword 'not'", "not"),
    ("y ~ I(x and z)", "the Python keyword 'and'", "and"),
    ("y ~ I(f'{x}')", "an f-string: 'f'{x}''", "f'{x}'"),
    ("y ~ I(b'a')", "a bytes constant", "b'a'"),
    ("y ~ I({'a': 1})", "a set or braces inside a call", "{'a': 1}"),
    ("y ~ I(*x)", "unpacking with *: '*x'", "*x"),
    ("y ~ C(g, **k)", "unpacking with **", "k"),
    ("y ~ I(10 ** 10 ** 10)", "arithmetic on constants alone ('10 ** 10 ** 10'): write the number", "10 ** 10 ** 10"),
    ("y ~ I(x * 10 ** 10 ** 10)", "arithmetic on constants alone ('10 ** 10 ** 10')", "10 ** 10 ** 10"),
    ("y ~ I('a' * 1000000000)", "arithmetic on constants alone", "'a' * 1000000000"),
    ("y ~ I(x \\\n + 1)", "a backslash", "\\"),
    ("y ~ I('''a''')", "triple quotes", "'''"),
    ("y ~ {exec('1')}", "the call of 'exec'", "exec"),
    ("y ~ I(x @ z)", "the operator ':' inside a call: 'x @ z'", "x @ z"),
    # the random part: the expression inside the bars, and the grouping names
    ("y ~ x + (exec('1') | g)", "the call of 'exec'", "exec"),
    ("y ~ x + (1 + I(x.__class__) || g)", "the name 'x.__class__'", "x.__class__"),
    ("y ~ x + ({__import__('os')} | g)", "the call of '__import__'", "__import__"),
    ("y ~ x + (1 | school/__class__)", "the name '__class__'", "__class__"),
    ("y ~ x + (1 | a:__b__)", "the name '__b__'", "__b__"),
    ("y ~ x + (1 | exec('1'))", "a grouping factor that is not column names joined by ':' or '/'", "exec('1')"),
    ("y ~ x + (1 | g[0])", "a grouping factor that is not column names", "g[0]"),
    ("y ~ x ** z", "a power of terms that is not a whole number", "z"),
]


@pytest.mark.parametrize("formula, reason, marked", REFUSED)
def test_code_is_refused_with_a_caret_under_it(formula, reason, marked):
    with pytest.raises(UnsafeFormulaError) as info:
        check_formula(formula)
    err = info.value
    assert err.reason.startswith("the safe mode of formulas refuses " + reason), err.reason
    assert err.formula == formula
    assert formula[err.position:err.position + len(marked)] == marked
    lines = str(err).splitlines()
    assert lines[2].index("^") - 4 == err.position  # the caret line, under the fault


@pytest.mark.parametrize("formula, message, position", [
    ("", "the formula is empty", None),
    ("reaction days", "the formula has no '~'", 0),
    ("y ~ x ~ z", "the formula has more than one '~'", 6),
    ("y ~ x + (1 | g", "unbalanced parentheses: '(' is never closed", 8),
    ("y ~ x + 1 | g)", "unbalanced parentheses: ')' has no matching opening bracket", 13),
    ("y ~ x + (1 | )", "cannot read the formula as names, numbers, operators and calls, as the safe mode", 13),
    # read by the formula parser once the check has passed
    ("y ~ y + (1 | g)", "the response 'y' is also on the right of '~'", 4),
    ("y ~ x | g", "'|' outside parentheses", 6),
])
def test_syntax_errors_are_formula_errors(formula, message, position):
    with pytest.raises(FormulaError) as info:
        check_formula(formula)
    assert not isinstance(info.value, UnsafeFormulaError)
    assert info.value.reason.startswith(message)
    assert info.value.position == position


def test_the_check_evaluates_nothing(tmp_path):
    """Reading these with the formula parser runs them (formulaic evaluates the function part of
    each call, ``open(...).close``, to find stateful transforms); the check comes first."""
    marker = tmp_path / "ran"
    for formula in (f"y ~ I(x + 0 * exec('open(\"{marker}\", \"w\").close()'))",
                    f"y ~ {{open(\"{marker}\", 'w').close()}}",
                    f"y ~ x + I(open(\"{marker}\", 'w').close())",
                    f"y ~ x + (I(open(\"{marker}\", 'w').close()) | g)"):
        with pytest.raises(UnsafeFormulaError, match="the safe mode of formulas refuses the call of '(open|exec)"):
            check_formula(formula)
        assert not marker.exists(), formula


def test_every_allowed_transform_is_known_to_formulaic():
    import numpy as np
    from formulaic.transforms import TRANSFORMS

    for name in ALLOWED_CALLS - {"factor"}:  # lme4's factor(x), which hlm reads as C(x)
        root, _, rest = name.partition(".")
        obj = TRANSFORMS.get(root, {"abs": abs}.get(root))
        assert obj is not None, name
        for part in filter(None, rest.split(".")):
            obj = getattr(obj, part)
        assert callable(obj), name
    assert TRANSFORMS["np"] is np


@pytest.fixture(scope="module")
def sleep_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "sleepstudy.csv"
    bh.load_dataset("sleepstudy").to_csv(path, index=False)
    return path


@pytest.mark.parametrize("formula, terms", [
    ("reaction ~ center(days) + I(days ** 2) + np.log1p(days) + (days | subject)",
     ["center(days)", "I(days ** 2)", "np.log1p(days)"]),
    ("reaction ~ poly(days, 2) + (1 | subject)", ["poly(days, 2)[1]", "poly(days, 2)[2]"]),
    ("reaction ~ C(days > 4, contr.sum) + {days * 2} + (1 + days || subject)", ["C(days > 4, contr.sum)"]),
])
def test_allowed_transforms_fit_from_the_command_line(sleep_csv, capsys, formula, terms):
    assert main(["em", str(sleep_csv), formula]) == 0
    out = capsys.readouterr().out
    for term in terms:
        assert term in out, term


@pytest.mark.parametrize("command", [["em"], ["fit", "--quiet", "--draws", "10", "--warmup", "10"]])
def test_the_command_line_refuses_code_by_default(tmp_path, capsys, command):
    marker = tmp_path / "ran"
    formula = f"y ~ I(x + 0 * exec('open(\"{marker}\", \"w\").close()')) + (1 | g)"
    # the data file does not exist: the formula is checked before the data are read
    code = main([command[0], str(tmp_path / "absent.csv"), formula, *command[1:], "--out", str(tmp_path / "o.nc")])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.splitlines()
    assert lines[0].startswith("bayeshlm: error: the safe mode of formulas refuses the call of 'exec': it calls only ")
    assert lines[0].endswith("; to evaluate the formula as Python code anyway (only a formula you trust: it can run "
                             "any command), pass --unsafe-formula")
    assert lines[1] == "    " + formula and lines[2] == "    " + " " * formula.index("exec") + "^~~~"
    assert not marker.exists()


def test_unsafe_formula_evaluates_the_python_in_it(tmp_path, capsys):
    """With --unsafe-formula the formula's Python runs, as formulaic always does: here it creates a file."""
    data = tmp_path / "d.csv"
    data.write_text("y,x,g\n1.0,0.5,a\n2.0,1.5,a\n1.5,0.2,b\n3.0,0.9,b\n")
    marker = tmp_path / "ran"
    formula = f"y ~ I(x + 0 * len(str(exec('open(\"{marker}\", \"w\").close()')))) + (1 | g)"
    code = main(["em", str(data), formula, "--unsafe-formula"])
    capsys.readouterr()
    assert marker.exists()
    assert code == 0


def test_the_help_says_a_formula_is_code(capsys):
    for argv in (["--help"], ["fit", "--help"], ["em", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        text = " ".join(capsys.readouterr().out.split())
        if argv == ["--help"]:
            assert "A formula is code: formulaic evaluates the Python in it" in text
            assert "unless given --unsafe-formula" in text
        else:
            assert "checked in safe mode: column names, numbers, formula operators and known transforms" in text
            assert "--unsafe-formula evaluate the formula without the safe-mode check" in text
            assert "can then run any code with your rights; only for formulas you trust" in text


def test_the_readme_lists_the_allowed_transforms():
    text = README.read_text(encoding="utf-8")
    section = text.split("### The formula is code", 1)[1].split("\n## ", 1)[0]
    assert "--unsafe-formula" in section and "I(__import__('os').system(...))" in section
    for name in ALLOWED_CALLS:
        assert f"`{name}`" in section, name


def test_cbind_of_column_names_is_a_safe_response():
    """lme4's binomial response, ``cbind(successes, failures)``, with names joined by + and - only."""
    from bayeshlm.safe_formula import UnsafeFormulaError, check_formula

    ok = "cbind(incidence, size - incidence) ~ C(period) + (1 | herd)"
    assert check_formula(ok) == ok
    for bad in ("cbind(incidence, size * 2) ~ 1", "cbind(incidence, exec('x')) ~ 1", "cbind(a, b, c) ~ 1",
                "cbind(a, b=c) ~ 1", "cbind(a, __import__) ~ 1"):
        with pytest.raises(UnsafeFormulaError):
            check_formula(bad)


def test_offset_terms_are_checked_like_the_others():
    from bayeshlm.safe_formula import UnsafeFormulaError, check_formula

    ok = "ticks ~ year + offset(log(exposure)) + (1 | location)"
    assert check_formula(ok) == ok
    with pytest.raises(UnsafeFormulaError):
        check_formula("ticks ~ year + offset(exec('x')) + (1 | location)")
