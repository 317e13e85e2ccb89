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
cross-classified (HLM's HCM2)              ``Hierarchy("y", ["x"]).cross({"primary": {"Intercept":
                                           Equation("w")}, "second": {"Intercept": Equation()}})``
                                           = ``y ~ x + w + (1 | primary) + (1 | second)``
=========================================  ====================================================

A cross-classified level (:meth:`Hierarchy.cross`) has two or more classifications of the
level-1 units that are not nested in each other (pupils by primary and by secondary
school): each coefficient of level 1 gets an equation in every classification, with that
classification's predictors and its own random term, and the terms of the classifications
add up::

    level 2:  b0 = g00 + g01 w_primary + u0_primary + v0_second
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

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
    labels: str = "unique"
    classifications: tuple = ()  # a cross-classified level: one _Level per classification


def _check_equations(equations, below, where, response):
    """Raise unless every key is a coefficient of the level below and every value an Equation without the response."""
    for name, eq in equations.items():
        if name not in below:
            raise FormulaError(f"{where} has an equation for '{name}', which is not a coefficient of the level "
                               f"below; those are {below}")
        if not isinstance(eq, Equation):
            raise FormulaError(f"the equation of '{name}' must be an Equation, got {eq!r}")
        for p in eq.predictors:
            if _uses(p, response):
                raise FormulaError(f"the response '{response}' cannot be a predictor of itself ({where}, "
                                   f"equation of '{name}': {p!r})")


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
                out.append(c)
                for part in lev.classifications or (lev,):
                    eq = part.equations.get(c)
                    if eq is not None:
                        out += [_product(c, z) for z in eq.predictors]
            names = out
        return names

    def level(self, factor, equations=None, *, covariance="unstructured", fixed_groups=False, labels="unique"):
        """A new hierarchy with one more level on top.

        Levels are declared from the bottom up: level 2 first (classes), then the level
        above it (schools).

        Parameters
        ----------
        factor : str
            The grouping column of the level (``"department"``); ``"a:b"`` for groups defined
            by two columns. Its groups must be nested in those of the next level up (each
            class in one school): :meth:`compile` checks this on the data.
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
        labels : {"unique", "within"}
            ``"unique"``: a label names one group of the level across the whole data (each
            class label in one school); the groups must then lie within those of the level
            above. ``"within"``: labels are numbered within each group of the level above
            (class "c1" in every school, cask "a" in every batch), and a group is a label
            within its group above. The model groups each level within all the levels above
            it in both cases; the choice says what the data must look like, so that levels
            declared in the wrong order (top-down) are refused rather than fitted with groups
            pooled across the level above.

        Returns
        -------
        Hierarchy
        """
        if not isinstance(factor, str) or not factor.strip():
            raise FormulaError(f"the grouping factor must be a column name, got {factor!r}")
        factor = factor.strip()
        self._check_new_level([factor])
        if covariance not in ("unstructured", "diagonal"):
            raise ValueError(f"covariance must be 'unstructured' or 'diagonal', got {covariance!r}")
        equations = dict(equations or {})
        _check_equations(equations, self.coefficients(), f"level {len(self.levels) + 2} ('{factor}')", self.response)
        if labels not in ("unique", "within"):
            raise ValueError(f"labels must be 'unique' or 'within', got {labels!r}")
        if fixed_groups and (self.levels or self.intercept or equations):
            raise FormulaError("fixed_groups (ANCOVA) needs a level-2 factor, no level-1 intercept and no equations")
        new = _Level(factor, equations, covariance, bool(fixed_groups), labels)
        return dataclasses.replace(self, levels=self.levels + (new,))

    def cross(self, classifications, *, covariance="unstructured"):
        """A new hierarchy with a cross-classified level on top (HLM's HCM2).

        The level-1 units are classified two (or more) ways at once, neither nested in the
        other: pupils by primary and by secondary school, ratings by student and by rater.
        Each classification gives the coefficients of level 1 their equations, with its own
        predictors (variables of its groups) and random terms; a coefficient's equations in
        the classifications add up, with one intercept::

            b0 = g00 + g01 w[primary] + g02 x[second] + u0[primary] + v0[second]

        A cross-classified level is level 2 and the top level.

        Parameters
        ----------
        classifications : dict of str to dict of str to Equation
            For each grouping column (``"primary"``, or ``"a:b"``), the equations of the
            coefficients of level 1 in that classification (keys from :meth:`coefficients`).
            A predictor may appear in one classification's equation of a coefficient only.
        covariance : {"unstructured", "diagonal"} or dict of str to either
            Covariance of each classification's random terms (one value for all, or one per
            classification).

        Returns
        -------
        Hierarchy
        """
        if self.levels:
            raise FormulaError("a cross-classified level is level 2: declare it on a hierarchy without levels")
        if not isinstance(classifications, dict) or len(classifications) < 2:
            raise FormulaError("a cross-classified level needs at least two classifications, as "
                               "{factor: {coefficient: Equation, ...}, ...}")
        parts = []
        below = self.coefficients()
        predicted = {}
        for factor, equations in classifications.items():
            if not isinstance(factor, str) or not factor.strip():
                raise FormulaError(f"a classification must be a column name, got {factor!r}")
            factor = factor.strip()
            cov = covariance.get(factor, "unstructured") if isinstance(covariance, dict) else covariance
            if cov not in ("unstructured", "diagonal"):
                raise ValueError(f"covariance must be 'unstructured' or 'diagonal', got {cov!r}")
            equations = dict(equations or {})
            _check_equations(equations, below, f"level 2 ('{factor}' classification)", self.response)
            for coef, eq in equations.items():
                for z in eq.predictors:
                    if (coef, z) in predicted:
                        raise FormulaError(f"'{z}' predicts '{coef}' in both the '{predicted[coef, z]}' and the "
                                           f"'{factor}' classifications: one coefficient, one equation per predictor")
                    predicted[coef, z] = factor
            parts.append(_Level(factor, equations, cov, False))
        names = [part.factor for part in parts]
        if len(set(names)) != len(names):
            raise FormulaError(f"a classification is listed twice: {names}")
        new = _Level(" x ".join(names), {}, "unstructured", False, "unique", tuple(parts))
        return dataclasses.replace(self, levels=(new,))

    def _check_new_level(self, factors):
        if self.levels and self.levels[-1].classifications:
            raise FormulaError("a cross-classified level is the top level: no level can be declared above it")
        used = {c.factor for lev in self.levels for c in (lev.classifications or (lev,))}
        for factor in factors:
            if factor in used:
                raise FormulaError(f"the grouping factor '{factor}' is used by two levels")

    # -- the mixed form ---------------------------------------------------------------
    def _nested_factor(self, k):
        """The formula factor of level ``k + 2``: its column within every level above it."""
        names = [c for lev in reversed(self.levels[k:]) if not lev.fixed_groups for c in lev.factor.split(":")]
        return ":".join(dict.fromkeys(names))

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
            for part in lev.classifications or (lev,):
                random = [c for c in below if c in part.equations and part.equations[c].random]
                if not random:
                    continue
                cols = [_column(c) for c in random]
                if "1" not in cols:
                    cols.insert(0, "0")
                bar = "||" if part.covariance == "diagonal" and len(random) > 1 else "|"
                factor = part.factor if lev.classifications else self._nested_factor(k)
                bars.append(f"({' + '.join(cols)} {bar} {factor})")
        return f"{self.response} ~ " + " + ".join(terms + bars)

    def equations(self, family="gaussian", link="identity", sigma=None) -> str:
        """The model written level by level, as in a textbook (level 1 as its ``family`` and ``link`` say).

        ``sigma``: the one-sided formula of a level-1 variance model (``hlm(sigma=)``).
        """
        sym = [_SYMBOLS[min(k, len(_SYMBOLS) - 1)] + ("" if k < len(_SYMBOLS) else str(k)) for k in range(99)]
        lines = ["Level 1 (within units)"]
        names = self.coefficients(1)
        rhs = " + ".join(f"{sym[0]}[{c}]" + ("" if c == "Intercept" else f"*{c}") for c in names)
        rhs = rhs or "0"
        if family in ("gaussian", "student"):
            sd = "sigma" if sigma is None else "sigma_i"
            dist = f"N(0, {sd}^2)" if family == "gaussian" else f"{sd} t_nu (Student-t)"
            lines.append(f"  {self.response} = {rhs} + e,   e ~ {dist}")
            if sigma is not None:
                lines.append(f"  log sigma_i^2 = log sigma^2 + z_i' delta,   z_i: the columns of sigma={sigma!r}")
        else:  # a generalised linear model at level 1: the distribution, then the link of its mean
            dist = {"bernoulli": "Bernoulli(p)", "binomial": "Binomial(n, p), n the trials", "poisson": "Poisson(mu)"}
            mean = {"logit": "logit(p)", "probit": "Phi^-1(p)", "log": "log(mu)"}
            lines.append(f"  {self.response} ~ {dist[family]},   {mean[link]} = {rhs}")
        for k, lev in enumerate(self.levels):
            s_in, s_out = sym[k], sym[k + 1]
            if lev.fixed_groups:
                lines.append(f"Level {k + 2} ({lev.factor}): each group has its own fixed intercept (ANCOVA)")
                continue
            if lev.classifications:
                lines += self._crossed_equations(k, lev, s_in, s_out)
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

    def _crossed_equations(self, k, lev, s_in, s_out):
        """The lines of a cross-classified level: each coefficient's equation, the terms of every classification."""
        lines = [f"Level {k + 2} (cross-classified: {', '.join(p.factor for p in lev.classifications)})"]
        letters = "uvwrstpq"
        for c in self.coefficients(k + 1):
            parts = [f"{s_out}[{c}]"]
            for part in lev.classifications:
                eq = part.equations.get(c)
                if eq is not None:
                    parts += [f"{s_out}[{_product(c, z)}]*{z}" for z in eq.predictors]
            for i, part in enumerate(lev.classifications):
                eq = part.equations.get(c)
                if eq is not None and eq.random:
                    parts.append(f"{letters[i % len(letters)]}[{c}]_{part.factor}")
            lines.append(f"  {s_in}[{c}] = " + " + ".join(parts))
        for i, part in enumerate(lev.classifications):
            random = [c for c in self.coefficients(k + 1) if c in part.equations and part.equations[c].random]
            name = letters[i % len(letters)]
            where = f"independent over the groups of {part.factor}"
            if len(random) == 1:
                lines.append(f"  {name}_{part.factor} ~ N(0, tau_{part.factor}^2), {where}")
            elif random:
                lines.append(f"  {name}_{part.factor} ~ N(0, T_{part.factor}), {part.covariance} {len(random)} x "
                             f"{len(random)}, {where}")
        return lines

    def __str__(self):
        return self.equations()

    def compile(self, data, **options):
        """The model (:func:`bayeshlm.hlm` on :attr:`formula`), which prints these equations.

        Keyword arguments are passed to :func:`bayeshlm.hlm` (``priors``, ``known_sd``, ``family``,
        ``trials``, ...).

        Before the model is built, the levels are checked against the data: each level's
        groups must lie within those of the level above (``labels="unique"``), or its labels
        are numbered within them (``labels="within"``); a level whose groups contain those of
        the level above was declared top-down and is refused. A predictor in a level's
        equations is a variable of that level's groups: one that varies within them gets a
        :class:`bayeshlm.data.GroupLevelWarning`.

        Raises
        ------
        bayeshlm.DataError
            Levels that are not nested as declared, with what to write instead.
        """
        import warnings

        from bayeshlm.data import GroupLevelWarning, as_frame
        from bayeshlm.model import hlm

        frame = as_frame(data)
        self._check_nesting(frame)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = hlm(self.formula, data, **options)
        declared = {p for lev in self.levels for eq in lev.equations.values() for p in eq.predictors}
        for w in caught:  # the builder says itself which of its level predictors vary
            if not (issubclass(w.category, GroupLevelWarning) and w.message.column in declared):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        self._warn_varying_predictors(frame.iloc[model.design.kept_rows].reset_index(drop=True))
        sigma = None if model.variance_design is None else model.variance_design.formula
        return dataclasses.replace(model, equations=self.equations(model.family, model.link, sigma))

    def _check_nesting(self, frame):
        """Refuse levels whose groups are not nested as declared (see :meth:`level`)."""
        from bayeshlm.data import DataError, bad_mask, example_groups, group_codes

        levels = [(k, lev) for k, lev in enumerate(self.levels) if not lev.fixed_groups and not lev.classifications]
        columns = list(dict.fromkeys(c for _, lev in levels for c in lev.factor.split(":")))
        if len(levels) < 2 or any(c not in frame.columns for c in columns):
            return  # one level, or an unknown column that hlm reports
        complete = ~np.logical_or.reduce([bad_mask(frame[c]) for c in columns])
        sub = frame.loc[complete, columns].reset_index(drop=True)
        for (k, lower), (k_up, upper) in zip(levels[:-1], levels[1:], strict=True):
            a, a_labels = group_codes(sub, lower.factor.split(":"))
            above, above_labels = group_codes(sub, self._nested_factor(k_up).split(":"))
            if _is_nested(a, above):
                continue
            up, _ = group_codes(sub, upper.factor.split(":"))
            where_low, where_up = f"'{lower.factor}' (level {k + 2})", f"'{upper.factor}' (level {k_up + 2})"
            order = f"declare .level('{upper.factor}', ...) before .level('{lower.factor}', ...)"
            if _is_nested(up, a):
                raise DataError(f"the groups of {where_up} lie within those of {where_low}, but levels are declared "
                                f"from the bottom up, the finest first: {order}")
            if lower.labels == "within":
                continue
            g = _straddling(a, above)
            label = str(a_labels[g])
            raise DataError(
                f"the groups of {where_low} are not nested in those of {where_up}: '{lower.factor}' group "
                f"{label!r} occurs in the groups {example_groups(above, above_labels, a == g)} of "
                f"'{self._nested_factor(k_up)}'. Levels are declared from the bottom up, the finest first. If "
                f"'{lower.factor}' is the finer level and its labels are numbered within each '{upper.factor}' "
                f"group ({label!r} of one is not {label!r} of another), pass labels='within' to "
                f".level('{lower.factor}', ...), which groups it by '{self._nested_factor(k)}'; if "
                f"'{upper.factor}' is the finer level, {order}"
            )

    def _warn_varying_predictors(self, frame):
        """Warn about a predictor of a level's equations that varies within the level's groups."""
        import warnings

        from bayeshlm.data import GroupLevelWarning, group_codes, show_value, within_group_variation
        from bayeshlm.formula import model_matrix

        units = [(k, part, part.factor if lev.classifications else self._nested_factor(k))
                 for k, lev in enumerate(self.levels) for part in (lev.classifications or (lev,))]
        for k, lev, factor in units:
            if lev.fixed_groups or not lev.equations:
                continue
            idx, labels = group_codes(frame, factor.split(":"))
            seen = set()
            for coef, eq in lev.equations.items():
                for term in eq.predictors:
                    if term in seen:
                        continue
                    seen.add(term)
                    if term in frame.columns:
                        columns = {term: frame[term].to_numpy()}
                    else:
                        matrix, names, _ = model_matrix(f"0 + {term}", frame)
                        columns = dict(zip(names, matrix.T, strict=True))
                    for values in columns.values():
                        varying, example, _ = within_group_variation(values, idx, len(labels))
                        if example is None:
                            continue
                        warnings.warn(GroupLevelWarning(
                            f"the level-{k + 2} predictor '{term}' (in the equation of '{coef}' at level {k + 2}, "
                            f"'{lev.factor}') varies within {int(varying.sum())} of the {len(labels)} groups of "
                            f"'{factor}' (e.g. group {str(labels[example[0]])!r}: {show_value(example[1])} and "
                            f"{show_value(example[2])}); a predictor at level {k + 2} takes one value per group: "
                            "use its group mean, or make it a level-1 predictor",
                            column=term, factor=factor), stacklevel=3)
                        break


def _is_nested(fine, coarse):
    """Whether each group of the codes `fine` lies within one group of the codes `coarse`."""
    parent = np.full(int(fine.max()) + 1, -1, dtype=np.int64)
    parent[fine] = coarse
    return bool(np.array_equal(parent[fine], coarse))


def _straddling(fine, coarse):
    """A group of `fine` that occurs in two groups of `coarse`."""
    parent = np.full(int(fine.max()) + 1, -1, dtype=np.int64)
    parent[fine] = coarse
    return int(fine[np.flatnonzero(parent[fine] != coarse)[0]])
