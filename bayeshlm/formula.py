"""Parse lme4-style model formulas and evaluate their design matrices.

A formula such as ``"reaction ~ days + (days | subject)"`` has three parts:
the response on the left of ``~``, a fixed part made of ordinary terms, and
random-effect ("bar") terms ``( expr | factor )``. The bar terms are found by
a small parser in this module; the fixed part and the left side ``expr`` of
each bar term are ordinary one-sided formulas, which are handed to formulaic.

This is the only module of the package that imports formulaic.
"""

from __future__ import annotations

import functools
import re
from typing import NamedTuple

import formulaic
import numpy as np
from formulaic.transforms import TRANSFORMS
from formulaic.utils.variables import get_required_variables
from pandas.api.types import is_bool_dtype, is_complex_dtype, is_integer_dtype, is_numeric_dtype

__all__ = [
    "BarTerm",
    "ColumnsSpec",
    "FormulaError",
    "FormulaSpec",
    "as_float_columns",
    "categorical_columns",
    "level2_candidates",
    "model_matrix",
    "parse_formula",
    "plain_columns",
    "r_spellings",
    "required_variables",
]

_OPENING = {"(": ")", "[": "]", "{": "}"}
_CLOSING = {v: k for k, v in _OPENING.items()}
_QUOTES = ("'", '"', "`")
# Column names as they may be written without backticks; R-style dotted
# names ("my.factor") are common in data sets ported from R.
_NAME = re.compile(r"(?:[^\W\d]|\.)[\w.]*")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class FormulaError(ValueError):
    """A model formula that cannot be parsed.

    The message quotes the formula and, where one character is at fault,
    marks it with a caret on the line below.

    Parameters
    ----------
    reason : str
        What is wrong, in one sentence.
    formula : str, optional
        The formula as the user wrote it.
    position : int, optional
        Index into `formula` of the offending character.
    length : int, default 1
        Number of characters to underline, starting at `position`.

    Attributes
    ----------
    reason, formula, position : as above
    """

    def __init__(self, reason, formula=None, position=None, length=1):
        self.reason = reason
        self.formula = formula
        self.position = position
        if formula is None:
            message = reason
        else:
            # Tabs and newlines would misalign the caret line.
            shown = re.sub(r"\s", " ", formula)
            message = f"{reason}\n    {shown}"
            if position is not None:
                mark = "^" + "~" * max(length - 1, 0)
                message += "\n    " + " " * position + mark
        super().__init__(message)


class BarTerm(NamedTuple):
    """One random-effect term ``( expr | factor )`` of a formula.

    Attributes
    ----------
    expr : str
        The one-sided formula left of the bar, e.g. ``"1 + days"``,
        ``"0 + x"`` or ``"x"`` (the last includes an intercept, as in lme4).
    factor : str
        The grouping factor right of the bar: a column name, or names joined
        by ``":"`` for the interaction of several columns (``"a:b"``).
    correlated : bool
        False for ``||``: the coefficients get independent variances.
    """

    expr: str
    factor: str
    correlated: bool


class FormulaSpec(NamedTuple):
    """A parsed model formula.

    Attributes
    ----------
    formula : str
        The formula as written.
    response : str
        Name of the response column.
    fixed : str
        The fixed part, a one-sided formulaic formula such as ``"days"``;
        ``"1"`` when the formula has bar terms only.
    bars : tuple of BarTerm
        The random-effect terms in formula order, nested shorthand expanded.
    """

    formula: str
    response: str
    fixed: str
    bars: tuple[BarTerm, ...]


class _Scan:
    """Bracket structure of a formula, computed in one pass.

    Attributes
    ----------
    text : str
        The formula.
    depth : list of int or None
        Bracket depth of each character (an opening bracket has the depth
        outside it); None for characters inside quotes or backticks.
    match : dict of int to int
        Position of the matching bracket, in both directions.
    """

    def __init__(self, text):
        self.text = text
        self.depth = [None] * len(text)
        self.match = {}
        stack = []
        i = 0
        while i < len(text):
            ch = text[i]
            if ch in _QUOTES:
                end = self._quote_end(i)
                for j in range(i, end + 1):
                    self.depth[j] = None
                i = end + 1
                continue
            if ch in _CLOSING:
                if not stack:
                    raise FormulaError(
                        f"unbalanced parentheses: '{ch}' has no matching '{_CLOSING[ch]}'",
                        text,
                        i,
                    )
                start = stack.pop()
                if _OPENING[text[start]] != ch:
                    raise FormulaError(
                        f"mismatched brackets: '{text[start]}' is closed by '{ch}'",
                        text,
                        i,
                    )
                self.match[start] = i
                self.match[i] = start
            self.depth[i] = len(stack)
            if ch in _OPENING:
                stack.append(i)
            i += 1
        if stack:
            start = stack[-1]
            raise FormulaError(
                f"unbalanced parentheses: '{text[start]}' is never closed",
                text,
                start,
            )

    def _quote_end(self, start):
        quote = self.text[start]
        i = start + 1
        while i < len(self.text):
            if self.text[i] == "\\" and quote != "`":
                i += 2
                continue
            if self.text[i] == quote:
                return i
            i += 1
        raise FormulaError(f"unterminated quote {quote}", self.text, start)

    def find(self, chars, start, end, depth):
        """Return positions in ``[start, end)`` of `chars` at bracket `depth`."""
        return [
            i
            for i in range(start, end)
            if self.text[i] in chars and self.depth[i] == depth
        ]

    def strip(self, start, end):
        """Return ``(start, end)`` with surrounding whitespace removed."""
        while start < end and self.text[start].isspace():
            start += 1
        while end > start and self.text[end - 1].isspace():
            end -= 1
        return start, end

    def unwrap(self, start, end):
        """Strip redundant outer parentheses: ``((x))`` -> ``x``.

        Returns ``(start, end, depth)`` of the inner span, with `depth` the
        bracket depth of its top level, or None if the span is not one
        parenthesised group.
        """
        inner = None
        while (
            end - start >= 2
            and self.text[start] == "("
            and self.match.get(start) == end - 1
        ):
            depth = self.depth[start] + 1
            start, end = self.strip(start + 1, end - 1)
            inner = (start, end, depth)
        return inner


def parse_formula(formula: str) -> FormulaSpec:
    """Parse an lme4-style model formula.

    Parameters
    ----------
    formula : str
        A two-sided formula ``"response ~ terms"``. Random-effect terms are
        written ``(expr | factor)`` (correlated coefficients) or
        ``(expr || factor)`` (independent coefficients); ``(expr | a/b)`` is
        shorthand for ``(expr | a) + (expr | a:b)``. All other terms form the
        fixed part and follow formulaic's grammar (``x * z``, ``C(g)``,
        ``0 +``, ``- 1``, ...).

    Returns
    -------
    FormulaSpec
        Response name, fixed-part formula and the bar terms in formula order.

    Raises
    ------
    FormulaError
        If the formula is empty, has no ``~``, unbalanced parentheses, a bar
        outside parentheses, an empty side of a bar, ``|||``, or a response
        that is not a plain column name. The message points at the offending
        character.
    TypeError
        If `formula` is not a string.

    Notes
    -----
    As in lme4, a formula whose right side holds only bar terms keeps an
    intercept in the fixed part: ``"y ~ (1 | g)"`` has fixed part ``"1"``.

    Examples
    --------
    >>> spec = parse_formula("reaction ~ days + (days | subject)")
    >>> spec.response, spec.fixed
    ('reaction', 'days')
    >>> spec.bars
    (BarTerm(expr='days', factor='subject', correlated=True),)
    >>> [b.factor for b in parse_formula("y ~ (1 | a/b)").bars]
    ['a', 'a:b']
    """
    if not isinstance(formula, str):
        raise TypeError(f"formula must be a string, got {type(formula).__name__}")
    if not formula.strip():
        raise FormulaError("the formula is empty; write it as 'y ~ x + (1 | group)'")
    scan = _Scan(formula)
    tildes = scan.find("~", 0, len(formula), 0)
    if not tildes:
        raise FormulaError(
            "the formula has no '~'; write it as 'response ~ terms', "
            "e.g. 'y ~ x + (1 | group)'",
            formula,
            0,
            len(formula),
        )
    if len(tildes) > 1:
        raise FormulaError("the formula has more than one '~'", formula, tildes[1])
    tilde = tildes[0]
    response = _parse_response(scan, tilde)
    fixed_terms, bars = _split_rhs(scan, tilde + 1, len(formula))

    if fixed_terms:
        fixed = fixed_terms[0][1] if fixed_terms[0][0] == "+" else "-" + fixed_terms[0][1]
        for sign, text in fixed_terms[1:]:
            fixed += f" {sign} {text}"
    else:
        fixed = "1"
    _check_formulaic(fixed, "fixed part", formula)
    for bar in bars:
        _check_formulaic(bar.expr, f"random-effect term ({bar.expr} | {bar.factor})", formula)
    _check_response_not_predictor(response, fixed, bars, formula, tilde)
    return FormulaSpec(formula, response, fixed, tuple(bars))


def _check_response_not_predictor(response, fixed, bars, formula, tilde):
    """Refuse a formula that uses its response on the right of ``~`` (``y ~ y``, ``(y | g)``, ``(1 | y)``)."""
    where = None
    if response in required_variables(fixed):
        where = "in the fixed part"
    for bar in bars:
        if where is None and response in required_variables(bar.expr):
            where = f"in the random-effect term ({bar.expr} | {bar.factor})"
        if where is None and response in bar.factor.split(":"):
            where = f"as the grouping factor of ({bar.expr} | {bar.factor})"
    if where is None:
        return
    # the first mention on the right, as a whole name (a backticked name included)
    name = re.escape(response)
    found = re.search(rf"`{name}`|(?<![\w.`]){name}(?![\w.`])", formula[tilde + 1:])
    position = tilde + 1 + found.start() if found else None
    length = found.end() - found.start() if found else 1
    raise FormulaError(
        f"the response '{response}' is also on the right of '~' ({where}): a column cannot predict "
        "itself; remove it from the right-hand side",
        formula, position, length,
    )


def _parse_response(scan, tilde):
    text = scan.text
    start, end = scan.strip(0, tilde)
    if start == end:
        raise FormulaError(
            "the formula has no response on the left of '~'", text, tilde
        )
    lhs = text[start:end]
    if lhs[0] == "`" and lhs[-1] == "`" and len(lhs) > 2 and "`" not in lhs[1:-1]:
        return lhs[1:-1]
    if _NAME.fullmatch(lhs):
        return lhs
    raise FormulaError(
        "the response must be a single column name; transform it in the "
        "data instead (quote names with spaces in backticks)",
        text,
        start,
        end - start,
    )


def _split_rhs(scan, start, end):
    """Split the right side into fixed terms and bar terms.

    Returns
    -------
    fixed : list of (sign, text)
    bars : list of BarTerm
    """
    text = scan.text
    if scan.strip(start, end)[0] == end:
        raise FormulaError("the formula has nothing on the right of '~'", text, start - 1)
    ops = scan.find("+-", start, end, 0)
    bounds = [start - 1] + ops + [end]
    fixed, bars = [], []
    sign = "+"
    for k in range(len(bounds) - 1):
        s, e = scan.strip(bounds[k] + 1, bounds[k + 1])
        if s == e:
            if k == 0 and ops:
                # A leading unary sign, as in "-1 + x".
                sign = text[ops[0]]
                continue
            at = bounds[k + 1] if bounds[k + 1] < end else bounds[k]
            raise FormulaError("empty term in the formula", text, at)
        inner = scan.unwrap(s, e)
        bar_pos = scan.find("|", *inner) if inner else []
        if bar_pos:
            if sign == "-":
                raise FormulaError(
                    "a random-effect term cannot be removed with '-'", text, s, e - s
                )
            bars.extend(_parse_bar(scan, inner, bar_pos))
        else:
            _check_no_hidden_bar(scan, s, e)
            fixed.append((sign, text[s:e]))
        sign = text[bounds[k + 1]] if bounds[k + 1] < end else "+"
    return fixed, bars


def _check_no_hidden_bar(scan, start, end, depth=0):
    """Reject bars outside parentheses and bar terms inside larger terms."""
    text = scan.text
    top = scan.find("|", start, end, depth)
    if top:
        raise FormulaError(
            "'|' outside parentheses; random-effect terms are written "
            "'(expr | group)'",
            text,
            top[0],
        )
    for i in scan.find("(", start, end, depth):
        before = text[start:i].rstrip()
        if before and (before[-1].isalnum() or before[-1] in "_.)]`"):
            continue  # a function call: '|' inside it is Python code
        close = scan.match[i]
        if scan.find("|", i + 1, close, depth + 1):
            raise FormulaError(
                "a random-effect term must be a separate term joined with '+', "
                "not combined with other terms",
                text,
                i,
                close + 1 - i,
            )
        _check_no_hidden_bar(scan, i + 1, close, depth + 1)


def _parse_bar(scan, inner, bar_pos):
    text = scan.text
    first = bar_pos[0]
    run = 1
    while run < len(bar_pos) and bar_pos[run] == first + run:
        run += 1
    if run > 2:
        raise FormulaError("'|||' is not an operator; use '|' or '||'", text, first + 2)
    if len(bar_pos) > run:
        raise FormulaError(
            "a random-effect term has more than one bar", text, bar_pos[run]
        )
    ls, le = scan.strip(inner[0], first)
    if ls == le:
        raise FormulaError(
            "nothing on the left of the bar; write e.g. '(1 | group)'", text, first, run
        )
    rs, re_ = scan.strip(first + run, inner[1])
    if rs == re_:
        raise FormulaError(
            "nothing on the right of the bar; name the grouping factor, "
            "e.g. '(1 | group)'",
            text,
            first,
            run,
        )
    expr = text[ls:le]
    correlated = run == 1
    return [BarTerm(expr, f, correlated) for f in _parse_factor(scan, rs, re_)]


def _parse_factor(scan, start, end):
    """Parse ``a``, ``a:b`` or ``a/b`` into the factor names, nesting expanded."""
    text = scan.text
    pieces = [[]]  # pieces separated by "/", each a list of names joined by ":"
    expect_name = True
    i = start
    while i < end:
        ch = text[i]
        if ch.isspace():
            i += 1
            continue
        if expect_name:
            if ch == "`":
                close = text.index("`", i + 1)
                name = text[i + 1 : close]
                i = close + 1
            else:
                m = _NAME.match(text, i, end)
                if m is None:
                    raise FormulaError(
                        "the grouping factor must be a column name, "
                        "'a:b' (interaction) or 'a/b' (nested)",
                        text,
                        i,
                    )
                name = m.group()
                i = m.end()
            pieces[-1].append(name)
            expect_name = False
        elif ch in ":/":
            if ch == "/":
                pieces.append([])
            expect_name = True
            i += 1
        else:
            raise FormulaError(
                "the grouping factor must be a column name, "
                "'a:b' (interaction) or 'a/b' (nested)",
                text,
                i,
            )
    if expect_name:
        last = text[start:end].rstrip()
        raise FormulaError(
            "the grouping factor ends with an operator", text, start + len(last) - 1
        )
    names = []
    factors = []
    for piece in pieces:
        names.extend(piece)
        factors.append(":".join(names))
    return factors


@functools.lru_cache(maxsize=256)
def _parsed(rhs):
    # Parsing is the slow part of formulaic for small data; the same few strings are
    # parsed again and again (checks, variables, evaluation, refits), so keep them.
    return formulaic.Formula(rhs)


def _check_formulaic(rhs, what, formula):
    try:
        parsed = _parsed(rhs)
    except Exception as exc:
        # formulaic's first line says what is wrong; the rest redraws the
        # formula with terminal colour codes.
        detail = _ANSI.sub("", str(exc)).strip().splitlines()[0]
        raise FormulaError(f"cannot parse the {what} '{rhs}': {detail}", formula) from exc
    if not isinstance(parsed, formulaic.formula.SimpleFormula):
        raise FormulaError(f"the {what} '{rhs}' is not a one-sided formula", formula)


def required_variables(rhs: str) -> set[str]:
    """Return the data columns that a one-sided formula reads.

    Parameters
    ----------
    rhs : str
        A one-sided formulaic formula, e.g. ``"x * C(g) + center(w)"``.

    Returns
    -------
    set of str
        Column names, without functions and constants that formulaic
        provides itself (``np``, ``log``, ``contr``, ...).

    Notes
    -----
    formulaic 1.2 reports no variables at all for a term that calls a
    stateful transform (``center(w)``, ``poly(x, 2)``, ``bs(x, df=3)``), so
    such terms are read again here with the transforms hidden; without this,
    missing values in ``w`` would escape the checks in :mod:`bayeshlm.data`.

    Examples
    --------
    >>> sorted(required_variables("x * C(g) + center(w)"))
    ['g', 'w', 'x']
    """
    return set(_required_variables(rhs))


@functools.lru_cache(maxsize=256)
def _required_variables(rhs):
    parsed = _parsed(rhs)
    found = set(parsed.required_variables)
    for term in parsed:
        for factor in term.factors:
            if factor.eval_method == factor.EvalMethod.PYTHON:
                try:
                    found.update(get_required_variables(factor.expr, None))
                except Exception:  # noqa: BLE001, S112 - formulaic reports bad code later
                    continue
    names = set()
    for var in found:
        # formulaic also lists the functions a term calls (``abs`` in
        # ``abs(x)``); a column is a value, or the object of a method call
        # (``a`` in ``a.fillna(0)``).
        if var.roles == {var.Role.CALLABLE} and "." not in var:
            continue
        root = var.split(".", 1)[0]
        if root not in TRANSFORMS:
            names.add(str(root))
    return frozenset(names)


def model_matrix(rhs: str, data, *, context=None):
    """Evaluate a one-sided formula on data with formulaic.

    Parameters
    ----------
    rhs : str
        A one-sided formula, e.g. ``"1 + days"``.
    data : pandas.DataFrame
        The data; every column the formula reads must be free of missing
        values, or formulaic raises.
    context : mapping, optional
        Extra names (functions, constants) visible to the formula.

    Returns
    -------
    matrix : ndarray of shape (n_obs, n_columns)
        C-contiguous float64 design matrix.
    names : list of str
        Column names as formulaic writes them: ``"Intercept"``, ``"x"``,
        ``"c[T.b]"``, ``"x:c[T.b]"``.
    spec : formulaic.ModelSpec
        Evaluates the same columns on new data with
        ``spec.get_model_matrix(new_data)``, keeping category levels and the
        state of transforms such as ``center``.

    Notes
    -----
    formulaic drops rows with missing values by default; here
    ``na_action="raise"`` so that rows can never disappear silently, and
    ``ensure_full_rank=True`` so that categorical predictors are coded with
    reference levels.

    Integer (and float32) columns are evaluated as float64
    (:func:`as_float_columns`), so that an expression such as ``I(x ** 3)``
    cannot wrap around silently in 64-bit integer arithmetic.

    A formula made only of an intercept and numeric columns named as they are
    (``"days"``, ``"1 + x + z"``, ``"0 + x"``) is evaluated here without
    formulaic, which takes milliseconds to build a design however small; its
    spec is a :class:`ColumnsSpec`. The matrix and names are those formulaic
    gives.
    """
    parsed = _parsed(rhs)
    fast = _plain_columns(parsed, data)
    if fast is not None:
        spec = ColumnsSpec(fast)
        return spec.get_model_matrix(data), list(spec.column_names), spec
    mm = formulaic.model_matrix(
        parsed,
        as_float_columns(rhs, data),
        context=dict(context) if context is not None else {},
        na_action="raise",
        ensure_full_rank=True,
        output="numpy",
    )
    spec = mm.model_spec
    matrix = np.ascontiguousarray(np.asarray(mm), dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != len(data):
        raise RuntimeError(
            f"formulaic returned a matrix of shape {matrix.shape} for {len(data)} rows"
        )
    return matrix, [str(c) for c in spec.column_names], spec


def as_float_columns(rhs: str, data):
    """The data with the integer and float32 columns a formula computes with turned into float64.

    formulaic evaluates ``I(x ** 3)`` or ``I(a * b)`` in the dtype of the columns, and
    int64 arithmetic wraps around without a warning (``I(x ** 3)`` for ``x`` near 3e6).
    Evaluating on float64 gives the design the formula means. Columns read inside ``C(...)``
    keep their dtype, so that category levels keep their names (``C(g)[T.2]``, not
    ``C(g)[T.2.0]``); booleans stay categorical, as formulaic codes them.

    Parameters
    ----------
    rhs : str
        A one-sided formula, e.g. ``"I(x ** 3) + C(g)"``.
    data : pandas.DataFrame

    Returns
    -------
    pandas.DataFrame
        `data` itself when there is nothing to convert, otherwise a copy with the
        converted columns.
    """
    cast = {}
    for name in required_variables(rhs) - categorical_columns(rhs):
        if name not in data:
            continue
        dtype = getattr(data[name], "dtype", None)
        if dtype is None or is_bool_dtype(dtype):
            continue
        if is_integer_dtype(dtype) or (isinstance(dtype, np.dtype) and dtype.kind == "f" and dtype.itemsize < 8):
            values = data[name].to_numpy()
            if dtype.kind in "iu" and len(values) and max(abs(int(values.min())), abs(int(values.max()))) <= 1:
                continue  # 0, 1 (and -1): no product, power or sum of a few such values overflows
            cast[name] = data[name].astype(np.float64)
    if not cast:
        return data
    return data.assign(**cast)


@functools.lru_cache(maxsize=256)
def categorical_columns(rhs: str) -> frozenset[str]:
    """The columns a one-sided formula reads inside ``C(...)`` (categories by the user's choice).

    Examples
    --------
    >>> sorted(categorical_columns("x + C(g) + C(h, contr.sum):x"))
    ['g', 'h']
    """
    found = set()
    for term in _parsed(rhs):
        for factor in term.factors:
            if factor.eval_method == factor.EvalMethod.PYTHON and re.search(r"(?<![\w.])C\(", factor.expr):
                try:
                    found.update(str(v).split(".", 1)[0] for v in get_required_variables(factor.expr, None))
                except Exception:  # noqa: BLE001, S112 - formulaic reports bad code itself
                    continue
    return frozenset(found - set(TRANSFORMS) - {"contr", "C"})


def level2_candidates(rhs: str, slopes):
    """Columns a fixed part uses only in interactions with the given random-slope columns.

    In ``y ~ x + x:z + (x | g)`` the column ``z`` enters only through ``x:z``: it predicts the
    slope of ``x`` between groups (a cross-level interaction), so it is meant as a variable of
    the groups of ``g``.

    Parameters
    ----------
    rhs : str
        The fixed part, a one-sided formula.
    slopes : collection of str
        Columns that have a random slope on the grouping factor.

    Returns
    -------
    set of str
        Columns named as they are (no expression) that appear in at least one term, and in
        every term they appear in beside one of `slopes`; never a column of `slopes`.
    """
    return set(_level2_candidates(rhs, frozenset(slopes)))


@functools.lru_cache(maxsize=256)
def _level2_candidates(rhs, slopes):
    seen, alone = set(), set()
    for term in _parsed(rhs):
        names = [f.expr for f in term.factors if f.eval_method == f.EvalMethod.LOOKUP]
        with_slope = any(n in slopes for n in names)
        for name in names:
            if name in slopes:
                continue
            seen.add(name)
            if not with_slope:
                alone.add(name)
    return frozenset(seen - alone)


def plain_columns(rhs: str, data):
    """The columns of a one-sided formula made only of an intercept and numeric columns.

    Parameters
    ----------
    rhs : str
        A one-sided formula, e.g. ``"1 + days"``.
    data : pandas.DataFrame

    Returns
    -------
    tuple or None
        One entry per design column, None for the intercept and a column name
        otherwise; None when :func:`model_matrix` needs formulaic for `rhs`.
    """
    return _plain_columns(_parsed(rhs), data)


def _plain_columns(parsed, data):
    """The columns of a formula made of an intercept and numeric columns, else None.

    The intercept is None in the tuple returned, a data column its name.

    None sends the formula to formulaic: any term that is an expression, an
    interaction or a column that is not of a NumPy integer or float dtype (formulaic
    codes booleans and strings as categories), or a column with missing values
    (formulaic raises on those with its own message).
    """
    names = []
    for term in parsed:
        factors = term.factors
        if len(factors) != 1:
            return None
        factor = factors[0]
        if factor.eval_method == factor.EvalMethod.LITERAL and factor.expr == "1":
            names.append(None)
            continue
        if factor.eval_method != factor.EvalMethod.LOOKUP or factor.expr not in data:
            return None
        column = data[factor.expr]
        dtype = getattr(column, "dtype", None)
        if not isinstance(dtype, np.dtype) or dtype.kind not in "iuf" or getattr(column, "ndim", 1) != 1:
            return None
        if dtype.kind == "f" and not np.isfinite(np.asarray(column)).all():
            return None
        names.append(factor.expr)
    return tuple(names) if names else None


class ColumnsSpec:
    """The spec of a design whose columns are an intercept and numeric data columns.

    It plays the part of a formulaic ``ModelSpec`` for :func:`model_matrix`'s fast
    path: ``get_model_matrix(data)`` evaluates the same columns on new data, and
    there are no transforms, so ``transform_state`` is empty.

    Parameters
    ----------
    columns : tuple of str or None
        None for the intercept (a column of ones), otherwise a data column's name.

    Attributes
    ----------
    column_names : tuple of str
        The design's column names as formulaic writes them (``"Intercept"`` for None).
    """

    transform_state: dict = {}

    def __init__(self, columns):
        self.columns = tuple(columns)
        self.column_names = tuple("Intercept" if c is None else c for c in self.columns)

    def __repr__(self):
        return f"ColumnsSpec({self.columns!r})"

    def get_model_matrix(self, data):
        """The design on `data`: a C-contiguous float64 array, one column per name."""
        n = len(data)
        matrix = np.empty((n, len(self.columns)), dtype=np.float64)
        for j, name in enumerate(self.columns):
            if name is None:
                matrix[:, j] = 1.0
                continue
            if name not in data:
                raise KeyError(f"the data has no column '{name}'")
            column = data[name]
            dtype = getattr(column, "dtype", None)
            if dtype is None or not is_numeric_dtype(dtype) or is_complex_dtype(dtype):
                raise TypeError(f"column '{name}' was numeric in the data the model was built on; "
                                f"here its dtype is {dtype}")
            # nullable dtypes ("Int64") give nan for a missing value, which the caller reports
            matrix[:, j] = (column.to_numpy(dtype=np.float64, na_value=np.nan) if hasattr(column, "to_numpy")
                            else np.asarray(column, dtype=np.float64))
        return matrix


_R_FACTOR = re.compile(r"(?<![\w.])(?:as\.)?factor\s*\(")


def r_spellings(formula):
    """lme4's ``factor(x)`` and ``as.factor(x)`` read as formulaic's ``C(x)``: ``x`` as a categorical predictor.

    Examples
    --------
    >>> r_spellings("ticks ~ factor(year) + as.factor(site) + (1 | brood)")
    'ticks ~ C(year) + C(site) + (1 | brood)'
    """
    if not isinstance(formula, str) or "factor" not in formula:
        return formula
    return _R_FACTOR.sub("C(", formula)


def offset_terms(rhs):
    """``(start, end, expression)`` of each top-level ``offset(...)`` term of a formula's right side.

    An offset is a known part of the linear predictor (Poisson exposure,
    ``offset(log(expected))``; for a Gaussian model a known part of the mean, which the model
    is fitted around); :func:`bayeshlm.family.split_offset` takes it out of the formula and
    evaluates it.
    """
    spans, depth, i = [], 0, 0
    while i < len(rhs):
        c = rhs[i]
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif depth == 0 and rhs.startswith("offset", i) and (i == 0 or not (rhs[i - 1].isalnum()
                                                                              or rhs[i - 1] in "_.")):
            m = re.match(r"offset\s*\(", rhs[i:])
            if m:
                level, j = 1, i + m.end()
                while j < len(rhs) and level:
                    level += {"(": 1, ")": -1}.get(rhs[j], 0)
                    j += 1
                if level:
                    raise ValueError(f"unbalanced parentheses in the offset term of {rhs.strip()!r}")
                spans.append((i, j, rhs[i + m.end():j - 1].strip()))
                i = j
                continue
        i += 1
    return spans
