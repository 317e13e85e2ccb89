"""The level-by-level form of a hierarchical linear model: the equations of an HLM textbook.

A model is declared from the bottom up. Level 1 is a regression of the response on
within-unit predictors; each level above names a grouping factor and gives, for each
coefficient of the level below, its own equation: its predictors at that level (which may
differ from coefficient to coefficient) and whether it has a random error term. The
classic example, teaching evaluations of instructors within departments::

    level 1:  evaluation = b0 + b1 experience + e
    level 2:  b0 = g00 + g01 class_size + g02 research + u0
              b1 = g10 + g11 class_size + u1

is::

    h = (bh.Hierarchy("evaluation", ["experience"])
           .level("department", {"Intercept": bh.Equation("class_size", "research"),
                                 "experience": bh.Equation("class_size")}))
    model = h.compile(data)

Substituting each level into the one below gives the mixed form that the engine uses
(:attr:`Hierarchy.formula`): every path from a level-1 coefficient through the predictors of
the levels above is a fixed-effect column (``experience:class_size`` is a cross-level
interaction), and every random error term at level ``k`` multiplies the product of the
predictors along its path, grouped by the level-``k`` factor. :meth:`Hierarchy.compile`
builds exactly the model of that formula.

Coefficients are named by their paths: at level 1 by the predictor (``"Intercept"``,
``"experience"``); the coefficient of predictor ``z`` in the equation of coefficient ``c``
is ``"c:z"`` (``"z"`` when ``c`` is the intercept), its intercept keeps the name ``c``. A
coefficient without an equation at a level passes up unchanged, neither random nor
predicted there.

Special cases, each one line (``y`` response, ``x`` level-1 and ``z`` level-2 predictor,
``g`` the groups):

=========================================  ====================================================
random-effects ANOVA                       ``Hierarchy("y").level("g", {"Intercept": Equation()})``
                                           = ``y ~ 1 + (1 | g)``
random-coefficients regression             ``Hierarchy("y", ["x"]).level("g", {"Intercept": Equation(),
                                           "x": Equation()})`` = ``y ~ x + (x | g)``
varying intercept (means as outcomes)      ``{"Intercept": Equation("z")}`` = ``y ~ x + z + (1 | g)``
random intercept, fixed slope              ``{"Intercept": Equation()}`` with ``["x"]`` at level 1
fixed intercept, random slope              ``{"x": Equation()}`` = ``y ~ x + (0 + x | g)``
non-randomly varying slope                 ``{"Intercept": Equation(), "x": Equation("z", random=False)}``
                                           = ``y ~ x + x:z + (1 | g)``
uncorrelated random effects                ``.level("g", {...}, covariance="diagonal")`` = ``(x || g)``
additive variance components               ``y ~ x + (1 | g) + (0 + x | g)`` (two independent terms)
ANCOVA, fixed group intercepts             ``Hierarchy("y", ["x"], intercept=False).level("g",
                                           {}, fixed_groups=True)`` = ``y ~ 0 + C(g) + x``
pooled regression (no hierarchy)           ``Hierarchy("y", ["x"])`` with no level: ``y ~ x``
=========================================  ====================================================
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from bayeshlm.formula import FormulaError

_SYMBOLS = ["b", "g", "d", "h", "k", "m", "q"]  # coefficient letters, level 1 up


@dataclass(frozen=True)
class Equation:
    """The equation of one coefficient at one level: its predictors, and whether it has an error term.

    ``Equation("class_size", "research")`` regresses the coefficient on two variables of the
    level with a random error term; ``Equation(random=False)`` makes it constant across the
    groups of the level (a fixed effect), ``Equation("z", random=False)`` lets it vary only
    through ``z``.
    """

    predictors: tuple = ()
    random: bool = True

    def __init__(self, *predictors, random=True):
        names = []
        for p in predictors:
            if not isinstance(p, str) or not p.strip():
                raise FormulaError(f"a predictor must be a column name or formula term, got {p!r}")
            if p.strip() in ("Intercept", "1", "0"):
                raise FormulaError(f"{p.strip()!r} is not a predictor: every equation has its intercept already")
            names.append(p.strip())
        if len(set(names)) != len(names):
            raise FormulaError(f"a predictor is listed twice in Equation{tuple(names)}")
        object.__setattr__(self, "predictors", tuple(names))
        object.__setattr__(self, "random", bool(random))


def _product(path, predictor):
    return predictor if path == "Intercept" else f"{path}:{predictor}"


def _column(path):
    """The formula term of a coefficient path: ``"1"`` for the intercept."""
    return "1" if path == "Intercept" else path


@dataclass(frozen=True)
class _Level:
    factor: str
    equations: dict
    covariance: str
    fixed_groups: bool


def _uses(term, column):
    """Whether a predictor (column name or formula term) reads `column`."""
    from bayeshlm.formula import required_variables

    try:
        return column == term or column in required_variables(term)
    except Exception:  # noqa: BLE001 - a term formulaic cannot read is reported when compiled
        return False


@dataclass(frozen=True)
class Hierarchy:
    """A hierarchical linear model declared level by level (see the module documentation).

    Parameters
    ----------
    response : str
        The response column.
    predictors : sequence of str
        Level-1 (within-unit) predictors: column names or formula terms (``"log(x)"``).
    intercept : bool
        Whether level 1 has an intercept.
    """

    response: str
    predictors: tuple = ()
    intercept: bool = True
    levels: tuple = field(default=())

    def __init__(self, response, predictors=(), *, intercept=True, levels=()):
        if not isinstance(response, str) or not response.strip():
            raise FormulaError(f"the response must be a column name, got {response!r}")
        if isinstance(predictors, str):
            predictors = [predictors]
        preds = tuple(p.strip() for p in predictors)
        if len(set(preds)) != len(preds) or "Intercept" in preds or "1" in preds:
            raise FormulaError(f"level-1 predictors must be distinct and not the intercept, got {list(predictors)}")
        for p in preds:
            if _uses(p, response.strip()):
                raise FormulaError(f"the response '{response.strip()}' cannot be a predictor of itself "
                                   f"(level 1: {p!r})")
        object.__setattr__(self, "response", response.strip())
        object.__setattr__(self, "predictors", preds)
        object.__setattr__(self, "intercept", bool(intercept))
        object.__setattr__(self, "levels", tuple(levels))

    # -- the coefficients -------------------------------------------------------------
    def coefficients(self, level=None):
        """Names of the coefficients coming out of ``level`` (1 = level 1; default: the top so far).

        These are the keys the equations of the next level use.
        """
        level = len(self.levels) + 1 if level is None else level
        if not 1 <= level <= len(self.levels) + 1:
            raise ValueError(f"level must be between 1 and {len(self.levels) + 1}, got {level}")
        names = (["Intercept"] if self.intercept else []) + list(self.predictors)
        for lev in self.levels[: level - 1]:
            out = []
            for c in names:
                eq = lev.equations.get(c)
                out.append(c)
                if eq is not None:
                    out += [_product(c, z) for z in eq.predictors]
            names = out
        return names

    def level(self, factor, equations=None, *, covariance="unstructured", fixed_groups=False):
        """A new hierarchy with one more level on top.

        Parameters
        ----------
        factor : str
            The grouping column of the level (``"department"``); ``"a:b"`` for groups defined
            by two columns. Its groups must be nested in those of the next level up: the
            compiled model groups each level within all the levels above it.
        equations : dict of str to Equation, optional
            The equation of each coefficient of the level below (keys from
            :meth:`coefficients`). A coefficient without an equation passes up unchanged.
        covariance : {"unstructured", "diagonal"}
            Covariance of the random error terms of the level: one full matrix, or
            independent terms.
        fixed_groups : bool
            ANCOVA: the groups get their own fixed intercepts (``C(factor)`` in the fixed
            part) instead of random ones; allowed only at level 2 of a model without a
            level-1 intercept, and with no equations.

        Returns
        -------
        Hierarchy
        """
        if not isinstance(factor, str) or not factor.strip():
            raise FormulaError(f"the grouping factor must be a column name, got {factor!r}")
        factor = factor.strip()
        if any(lev.factor == factor for lev in self.levels):
            raise FormulaError(f"the grouping factor '{factor}' is used by two levels")
        if covariance not in ("unstructured", "diagonal"):
            raise ValueError(f"covariance must be 'unstructured' or 'diagonal', got {covariance!r}")
        equations = dict(equations or {})
        below = self.coefficients()
        for name, eq in equations.items():
            if name not in below:
                raise FormulaError(
                    f"level {len(self.levels) + 2} ('{factor}') has an equation for '{name}', which is not a "
                    f"coefficient of the level below; those are {below}"
                )
            if not isinstance(eq, Equation):
                raise FormulaError(f"the equation of '{name}' must be an Equation, got {eq!r}")
            for p in eq.predictors:
                if _uses(p, self.response):
                    raise FormulaError(f"the response '{self.response}' cannot be a predictor of itself (level "
                                       f"{len(self.levels) + 2}, equation of '{name}': {p!r})")
        if fixed_groups and (self.levels or self.intercept or equations):
            raise FormulaError("fixed_groups (ANCOVA) needs a level-2 factor, no level-1 intercept and no equations")
        new = _Level(factor, equations, covariance, bool(fixed_groups))
        return dataclasses.replace(self, levels=self.levels + (new,))

    # -- the mixed form ---------------------------------------------------------------
    def _nested_factor(self, k):
        """The formula factor of level ``k + 2``: its column within every level above it."""
        names = [lev.factor for lev in self.levels[k:] if not lev.fixed_groups]
        return ":".join(reversed(names))

    @property
    def formula(self) -> str:
        """The equivalent mixed (lme4-style) formula."""
        fixed = self.coefficients()
        terms = ["1" if "Intercept" in fixed else "0"] + [c for c in fixed if c != "Intercept"]
        bars = []
        for k, lev in enumerate(self.levels):
            if lev.fixed_groups:
                terms.append(f"C({lev.factor})")
                continue
            below = self.coefficients(k + 1)
            random = [c for c in below if c in lev.equations and lev.equations[c].random]
            if not random:
                continue
            cols = [_column(c) for c in random]
            if "1" not in cols:
                cols.insert(0, "0")
            bar = "||" if lev.covariance == "diagonal" and len(random) > 1 else "|"
            bars.append(f"({' + '.join(cols)} {bar} {self._nested_factor(k)})")
        return f"{self.response} ~ " + " + ".join(terms + bars)

    def equations(self) -> str:
        """The model written level by level, as in a textbook."""
        sym = [_SYMBOLS[min(k, len(_SYMBOLS) - 1)] + ("" if k < len(_SYMBOLS) else str(k)) for k in range(99)]
        lines = ["Level 1 (within units)"]
        names = self.coefficients(1)
        rhs = " + ".join(f"{sym[0]}[{c}]" + ("" if c == "Intercept" else f"*{c}") for c in names)
        lines.append(f"  {self.response} = {rhs or '0'} + e,   e ~ N(0, sigma^2)")
        for k, lev in enumerate(self.levels):
            s_in, s_out = sym[k], sym[k + 1]
            if lev.fixed_groups:
                lines.append(f"Level {k + 2} ({lev.factor}): each group has its own fixed intercept (ANCOVA)")
                continue
            lines.append(f"Level {k + 2} ({lev.factor})")
            random = []
            for c in self.coefficients(k + 1):
                eq = lev.equations.get(c)
                parts = [f"{s_out}[{c}]"]
                if eq is not None:
                    parts += [f"{s_out}[{_product(c, z)}]*{z}" for z in eq.predictors]
                    if eq.random:
                        parts.append(f"u{k + 2}[{c}]")
                        random.append(c)
                lines.append(f"  {s_in}[{c}] = " + " + ".join(parts))
            where = f"independent over the groups of {self._nested_factor(k)}"
            if len(random) == 1:
                lines.append(f"  u{k + 2} ~ N(0, tau{k + 2}^2), {where}")
            elif random:
                cov = "diagonal" if lev.covariance == "diagonal" else "unstructured"
                lines.append(f"  u{k + 2} ~ N(0, T{k + 2}), T{k + 2} {cov} {len(random)} x {len(random)}, {where}")
        top = sym[len(self.levels)]
        lines.append(f"Top: the {top}[.] are fixed effects with a hyperprior")
        lines.append(f"Mixed form: {self.formula}")
        return "\n".join(lines)

    def __str__(self):
        return self.equations()

    def compile(self, data, **options):
        """The model (:func:`bayeshlm.hlm` on :attr:`formula`), which prints these equations.

        Keyword arguments are passed to :func:`bayeshlm.hlm` (``priors``, ``known_sd``, ...).
        """
        from bayeshlm.compile import hlm

        model = hlm(self.formula, data, **options)
        return dataclasses.replace(model, equations=self.equations())
