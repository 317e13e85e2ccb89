"""A safe mode for model formulas: only names, numbers, formula operators and known transforms.

A formula is code. formulaic evaluates every term that is not a plain column name as Python,
with Python's built-in functions in reach: ``y ~ I(x + 0 * exec("..."))`` runs whatever the
string says, with the rights of the process. Whoever can write the formula can run code, so a
formula from an untrusted source (a web form, a shared configuration file) must be checked
before it is evaluated. :func:`check_formula` does that, on Python's own syntax tree of the
formula, without evaluating anything; the command line (``bayeshlm fit`` and ``bayeshlm em``)
calls it unless given ``--unsafe-formula``.

What the safe mode accepts:

* the response: a column name, or ``cbind(successes, failures)`` of column names joined by
  ``+`` and ``-`` (a binomial response);
* names of columns (``x``, ``my.var``, ```a name with spaces```) and numbers;
* the formula operators ``+ - * / : ** ^ %in%``, parentheses, ``0``/``1``/``-1`` for the
  intercept, and random-effect terms ``(expr | g)``, ``(expr || g)`` with a grouping factor
  made of column names joined by ``:`` or ``/`` (``(1 | school/class)``);
* ``offset(...)`` terms (a known part of the mean, or of a non-Gaussian model's linear
  predictor), whose argument is checked as the rest;
* calls of the functions in :data:`ALLOWED_CALLS` (formulaic's transforms and contrasts, a few
  NumPy functions), whose arguments may be column names, numbers, strings, ``True``,
  ``False``, ``None``, lists and tuples of these, keyword arguments, other allowed calls, and
  arithmetic (``+ - * / // % **``), comparisons (``== != < <= > >=``) and ``& | ~`` between
  them; the same inside braces, ``{x + 1}``, which formulaic evaluates like ``I(x + 1)``.

It refuses everything else: calls of any other function (``exec``, ``eval``, ``open``,
``__import__``, methods such as ``x.fillna(0)``), attributes beginning with an underscore,
names beginning with two, indexing, lambdas, comprehensions, f-strings, ``*`` unpacking,
walrus assignments, conditional expressions, ``and``/``or``, backslashes and triple quotes
(whose reading could differ between this check and formulaic), and arithmetic on constants
alone (``10 ** 10 ** 10``; write the number). The check stops code from running; it does not
bound the work a formula asks for (``poly(x, 100000)``): run formulas from strangers under
time and memory limits as well.
"""

from __future__ import annotations

import ast
import keyword
import re

from bayeshlm.formula import FormulaError, offset_terms, parse_formula, r_spellings

__all__ = ["ALLOWED_CALLS", "UnsafeFormulaError", "check_formula"]

_NUMPY = ("abs", "arcsinh", "arctan", "ceil", "clip", "cos", "exp", "expm1", "floor", "log", "log10", "log1p",
          "log2", "maximum", "minimum", "round", "sign", "sin", "sqrt", "square", "tan", "tanh", "where")

#: Functions a formula may call in safe mode: formulaic's transforms (``I``, ``C`` and lme4's
#: spelling of it, ``factor`` or ``as.factor`` (:func:`bayeshlm.formula.r_spellings`), ``Q``, the
#: stateful ``center``, ``scale``, ``standardize``, ``poly``, the splines ``bs``, ``cr``, ``cs``,
#: ``cc``, ``lag``, ``hashed``, the logarithms and exponentials), its contrasts (``Treatment``,
#: ``contr.sum``, ...), Python's ``abs`` and a few NumPy functions (``np.sqrt``, ``np.log1p``, ...).
ALLOWED_CALLS = frozenset(
    ("I", "C", "factor", "Q", "center", "scale", "standardize", "poly", "bs", "cr", "cs", "cc", "lag", "hashed",
     "log", "log2", "log10", "exp", "exp2", "exp10", "abs",
     "Treatment", "Sum", "Helmert", "Diff", "Poly",
     "contr.treatment", "contr.sum", "contr.helmert", "contr.diff", "contr.poly", "contr.SAS", "contr.custom")
    + tuple(f"np.{name}" for name in _NUMPY)
)

_FORMULA_OPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.MatMult, ast.Mod, ast.Pow, ast.BitXor)
_ARITHMETIC_OPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.BitAnd, ast.BitOr,
                   ast.BitXor)
_UNARY_OPS = (ast.UAdd, ast.USub, ast.Invert, ast.Not)
_COMPARE_OPS = (ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE)
_WHAT = {
    "Subscript": "indexing with [...]", "Slice": "a slice", "Lambda": "a lambda", "ListComp": "a comprehension",
    "SetComp": "a comprehension", "DictComp": "a comprehension", "GeneratorExp": "a generator expression",
    "JoinedStr": "an f-string", "FormattedValue": "an f-string", "Dict": "a dictionary",
    "Set": "a set or braces inside a call", "Starred": "unpacking with *", "IfExp": "a conditional expression",
    "NamedExpr": "an assignment expression (:=)", "BoolOp": "'and' / 'or'", "Await": "await",
    "Yield": "yield", "YieldFrom": "yield", "Compare": "a comparison outside a call",
    "MatMult": "the operator ':' inside a call", "TemplateStr": "a template string",
    "Attribute": "an attribute of a computed value", "LShift": "a shift operator", "RShift": "a shift operator",
}


class UnsafeFormulaError(FormulaError):
    """A formula that the safe mode refuses; the message marks the part at fault with a caret."""


def _dotted(node):
    """``"np.log"`` for the attribute chain ``np.log``, None for anything else."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([node.id, *reversed(parts)])


class _Checker:
    """The walk over the syntax tree of a formula rewritten as a Python expression.

    The rewrite keeps every character at its place (``:`` becomes ``@``, ``||`` becomes
    ``| ``, ``%in%`` becomes ``%   ``, ``~`` at the top becomes ``>``, a backticked name or a
    Python keyword becomes an identifier of the same length), so positions in the tree are
    positions in the formula.
    """

    def __init__(self, formula, hint):
        self.formula = formula
        self.hint = hint
        self.quoted = {}  # position of a backticked name (or a keyword read as a name) -> the name
        self.keywords = {}  # position of a Python keyword -> the keyword
        self.source = "(" + self._rewrite() + ")"

    # -- errors and positions --

    def _char(self, col):
        """Index in the formula of the UTF-8 byte offset ``col`` of the parsed source."""
        return len(self.source.encode()[:col].decode("utf-8", "ignore")) - 1

    def fail(self, reason, node=None, position=None, length=1):
        if node is not None:
            position = self._char(node.col_offset)
            length = max(self._char(node.end_col_offset) - position, 1)
        raise UnsafeFormulaError(
            f"the safe mode of formulas refuses {reason}{self.hint}", self.formula, position, length
        )

    def syntax(self, reason, position=None, length=1):
        """A formula the safe mode cannot read: a syntax error (no evaluation is tried to read it otherwise)."""
        raise FormulaError(reason, self.formula, position, length)

    def text(self, node):
        start, end = self._char(node.col_offset), self._char(node.end_col_offset)
        return self.formula[start:end]

    # -- the rewrite --

    def _rewrite(self):
        f = self.formula
        if not f.strip():
            self.syntax("the formula is empty; write it as 'y ~ x + (1 | group)'")
        out = list(f)
        depth = []  # positions of the open brackets
        tildes = []
        i = 0
        while i < len(f):
            ch = f[i]
            if ch == "\\":
                self.fail("a backslash (write names and strings without escapes)", position=i)
            if ch in "'\"":
                if f.startswith(ch * 3, i):
                    self.fail("triple quotes", position=i, length=3)
                end = f.find(ch, i + 1)
                if end < 0:
                    self.fail("an unterminated string", position=i)
                i = end + 1
                continue
            if ch == "`":
                end = f.find("`", i + 1)
                if end < 0 or end == i + 1:
                    self.fail("an unterminated or empty backticked name", position=i)
                self.quoted[i] = f[i + 1:end]
                out[i:end + 1] = "Q" * (end + 1 - i)
                i = end + 1
                continue
            if ch.isalpha() or ch == "_":
                end = i + 1
                while end < len(f) and (f[end].isalnum() or f[end] == "_"):
                    end += 1
                word = f[i:end]
                if keyword.iskeyword(word) and word not in ("True", "False", "None"):
                    # a column named like a Python keyword (school/class): a name here; Python
                    # syntax made with keywords (lambda, if/else, for, not) cannot parse with names
                    # in their place, so nothing that uses them passes as a name
                    self.quoted[i] = self.keywords[i] = word
                    out[i:end] = "Q" * (end - i)
                i = end
                continue
            if f.startswith("%in%", i):
                out[i:i + 4] = "%   "
                i += 4
                continue
            if f.startswith("||", i):
                out[i:i + 2] = "| "
                i += 2
                continue
            if ch in "([{":
                depth.append(i)
            elif ch in ")]}":
                if not depth:
                    self.syntax(f"unbalanced parentheses: '{ch}' has no matching opening bracket", i)
                depth.pop()
            elif ch == ":":
                out[i] = "@"
            elif ch == "~" and not depth:
                tildes.append(i)
                out[i] = ">"
            elif ch in "\t\r\n\f\v":
                out[i] = " "
            i += 1
        if depth:
            self.syntax(f"unbalanced parentheses: '{f[depth[-1]]}' is never closed", depth[-1])
        if not tildes:
            self.syntax("the formula has no '~'; write it as 'response ~ terms', e.g. 'y ~ x + (1 | group)'",
                        0, len(f))
        if len(tildes) > 1:
            self.syntax("the formula has more than one '~'", tildes[1])
        return "".join(out)

    # -- the walk --

    def check(self):
        try:
            tree = ast.parse(self.source, mode="eval").body
        except SyntaxError as err:
            if self.keywords:  # a keyword where only a name can stand in safe mode
                at = min(self.keywords)
                word = self.keywords[at]
                self.fail(f"the Python keyword '{word}' (keywords make conditions, loops and functions; quote a "
                          "column of that name in backticks)", position=at, length=len(word))
            at = None if err.offset is None else max(min(err.offset - 2, len(self.formula) - 1), 0)
            self.syntax(f"cannot read the formula as names, numbers, operators and calls, as the safe mode of "
                        f"formulas must ({err.msg}); quote unusual column names in backticks", at)
        if not (isinstance(tree, ast.Compare) and len(tree.ops) == 1 and isinstance(tree.ops[0], ast.Gt)):
            self.fail("a formula that is not 'response ~ terms'", tree)
        if not (self.is_name(tree.left) or self.is_cbind(tree.left)):
            self.fail("a response that is not a column name (or cbind(successes, failures) of column names "
                      "joined by + and -)", tree.left)
        self.terms(tree.comparators[0])

    def is_cbind(self, node):
        """lme4's binomial response ``cbind(s, f)``, each argument column names joined by ``+`` and ``-``."""
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "cbind"
                and len(node.args) == 2 and not node.keywords):
            return False

        def names_only(arg):
            if isinstance(arg, ast.BinOp) and isinstance(arg.op, (ast.Add, ast.Sub)):
                return names_only(arg.left) and names_only(arg.right)
            return self.is_name(arg)

        return all(names_only(arg) for arg in node.args)

    def is_name(self, node):
        """A column: a name, a dotted name (``my.var``) or a backticked name."""
        if isinstance(node, ast.Name) and self._char(node.col_offset) in self.quoted:
            return True
        dotted = _dotted(node)
        if dotted is None:
            return False
        parts = dotted.split(".")
        if parts[0].startswith("__") or any(part.startswith("_") for part in parts[1:]):
            self.fail(f"the name '{dotted}' (names with underscores at the front reach Python's internals; "
                      "quote a column of such a name in backticks)", node)
        return True

    def terms(self, node):
        """The right of ``~``: terms joined by formula operators."""
        if self.is_name(node):
            return
        if isinstance(node, ast.Constant):
            if isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
                return
            self.fail(f"the constant {self.text(node)} as a term", node)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            return self.terms(node.operand)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            self.terms(node.left)  # the random part's expression (the bar itself is checked by parse_formula)
            return self.grouping(node.right)
        if isinstance(node, ast.BinOp) and isinstance(node.op, _FORMULA_OPS):
            self.terms(node.left)
            if isinstance(node.op, (ast.Pow, ast.BitXor)):  # the degree of the interactions
                if not (isinstance(node.right, ast.Constant) and type(node.right.value) is int):
                    self.fail("a power of terms that is not a whole number", node.right)
                return None
            return self.terms(node.right)
        if isinstance(node, ast.Call):
            return self.code(node)
        if isinstance(node, ast.Set) and len(node.elts) == 1:  # {python}: evaluated like I(python)
            return self.code(node.elts[0])
        return self.refuse(node)

    def grouping(self, node):
        """The right of a bar: column names joined by ``:`` or ``/``."""
        if self.is_name(node):
            return
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.MatMult, ast.Div)):
            self.grouping(node.left)
            return self.grouping(node.right)
        self.fail("a grouping factor that is not column names joined by ':' or '/'", node)

    def code(self, node):
        """Python that formulaic evaluates: allowed calls of values, arithmetic and comparisons."""
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bytes):
                self.fail("a bytes constant", node)
            return
        if isinstance(node, (ast.Name, ast.Attribute)) and self.is_name(node):
            return
        if isinstance(node, ast.Call):
            name = _dotted(node.func)
            if name not in ALLOWED_CALLS and name != "offset":  # offset(...): bayeshlm's, evaluated as I(...)
                shown = name if name is not None else self.text(node.func)
                maybe = f" (write np.{name})" if name in _NUMPY else ""
                self.fail(f"the call of '{shown}'{maybe}: it calls only "
                          f"{', '.join(sorted(ALLOWED_CALLS, key=lambda n: (n.lower(), n)))}", node.func)
            for arg in node.args:
                self.code(arg)
            for kw in node.keywords:
                if kw.arg is None:
                    self.fail("unpacking with **", kw.value)
                self.code(kw.value)
            return
        if isinstance(node, ast.BinOp) and isinstance(node.op, _ARITHMETIC_OPS):
            if not (self.has_value(node.left) or self.has_value(node.right)):
                self.fail(f"arithmetic on constants alone ('{self.text(node)}'): write the number", node)
            self.code(node.left)
            return self.code(node.right)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, _UNARY_OPS):
            return self.code(node.operand)
        if isinstance(node, ast.Compare) and all(isinstance(op, _COMPARE_OPS) for op in node.ops):
            for part in (node.left, *node.comparators):
                self.code(part)
            return
        if isinstance(node, (ast.List, ast.Tuple)):
            for elt in node.elts:
                self.code(elt)
            return
        return self.refuse(node)

    def has_value(self, node):
        """True when ``node`` reads a column (or a named value), not only constants."""
        for sub in ast.walk(node):
            if isinstance(sub, (ast.Name, ast.Attribute)):
                return True
        return False

    def refuse(self, node):
        kind = type(node.op if isinstance(node, ast.BinOp) else node).__name__
        what = _WHAT.get(kind, f"this expression ({kind})")
        self.fail(f"{what}: '{self.text(node)}'", node)


def check_formula(formula, *, hint=""):
    """Refuse a formula that could run code when evaluated: allow names, numbers, operators, known transforms.

    Nothing in the formula is evaluated. Every part of it is checked against the rules of the
    module description, the random-effect terms included (their expressions and grouping
    factors), on Python's syntax tree of the formula; only a formula that passes is then read
    by :func:`bayeshlm.formula.parse_formula`, for its other syntax errors. That order matters:
    reading a formula already evaluates Python in it, since formulaic, to find its stateful
    transforms, evaluates the function part of every call (``open(...).close`` in
    ``I(open(...).close())``).

    Parameters
    ----------
    formula : str
        A model formula, as for :func:`bayeshlm.hlm`.
    hint : str
        Text added to the reason of a refusal (the command line names its ``--unsafe-formula``).

    Returns
    -------
    str
        The formula, unchanged.

    Raises
    ------
    UnsafeFormulaError
        A :class:`bayeshlm.formula.FormulaError` naming what is refused, with a caret under it.
    FormulaError
        When the formula cannot be read (a syntax error).

    Examples
    --------
    >>> check_formula("y ~ log(x) + C(g) + I(z ** 2) + (1 + x | school/class)")
    'y ~ log(x) + C(g) + I(z ** 2) + (1 + x | school/class)'
    >>> try:
    ...     check_formula("y ~ I(x + 0 * exec('...'))")
    ... except UnsafeFormulaError as err:
    ...     print(err.reason.split(":")[0])
    the safe mode of formulas refuses the call of 'exec'
    """
    if not isinstance(formula, str):
        raise TypeError(f"formula must be a string, got {type(formula).__name__}")
    written = formula
    # lme4's as.factor(x), not Python (``as`` is a keyword): read as factor(x), the columns kept in place
    formula = re.sub(r"(?<![\w.])as\.factor(\s*\()", r"   factor\1", formula)
    _Checker(formula, hint).check()
    # now harmless: it calls nothing but the allowed functions' names (a binomial response
    # cbind(s, f), which hlm reads itself, stands aside for a name,
    # and the offset terms, which hlm evaluates itself, stand aside)
    readable = re.sub(r"^\s*cbind\s*\([^()]*\)\s*~", "cbind_response ~", formula)
    if "~" in readable:
        lhs, rhs = readable.split("~", 1)
        for start, end, _ in reversed(offset_terms(rhs)):
            rhs = rhs[:start] + "1" + rhs[end:]
        readable = f"{lhs}~{rhs}"
    parse_formula(r_spellings(readable))
    return written
