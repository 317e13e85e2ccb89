"""Level-1 families: which responses a model takes, and how a binomial response is written.

``family="gaussian"`` (the default) is the hierarchical linear model; ``"student"`` the same
model with Student-t level-1 residuals (a scale mixture of normals, docs/design.md,
"Student-t level 1"). ``"bernoulli"`` (0/1),
``"binomial"`` (successes out of a number of trials) and ``"poisson"`` (counts) are the
hierarchical generalised linear models: the same hierarchy above level 1, with a logit or
probit link for the binomial families and a log link for counts (docs/design.md,
"Non-Gaussian level 1"). The number of trials of a binomial response is given as lme4 writes
it, ``cbind(successes, failures) ~ ...``, or with ``trials=`` (a column name or an array).
"""

from __future__ import annotations

import re
import warnings

import numpy as np

from bayeshlm.formula import offset_terms
from samplers.glm import BINOMIAL_LOGIT, BINOMIAL_PROBIT, POISSON_LOG

__all__ = [
    "FAMILIES", "GLM_MOVES", "LATENT_VARIANCE", "NEWTON_INTERWEAVE_INFORMATION", "NEWTON_ROWS_PER_GROUP",
    "FamilyWarning", "family_code", "log_normalising_constants", "newton_interweave", "newton_move",
    "resolve_family",
]

# family: (its links, the default link)
FAMILIES = {
    "gaussian": (("identity",), "identity"),
    "student": (("identity",), "identity"),
    "bernoulli": (("logit", "probit"), "logit"),
    "binomial": (("logit", "probit"), "logit"),
    "poisson": (("log",), "log"),
}
_CODES = {("bernoulli", "logit"): BINOMIAL_LOGIT, ("binomial", "logit"): BINOMIAL_LOGIT,
          ("bernoulli", "probit"): BINOMIAL_PROBIT, ("binomial", "probit"): BINOMIAL_PROBIT,
          ("poisson", "log"): POISSON_LOG}


class FamilyWarning(UserWarning):
    """A response that looks as if it needed another family than the one it is fitted with."""


def resolve_family(family, link=None):
    """``(family, link)`` checked and completed with the family's default link."""
    if not isinstance(family, str) or family.lower() not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(repr(f) for f in FAMILIES)}, got {family!r}")
    family = family.lower()
    links, default = FAMILIES[family]
    if link is None:
        return family, default
    if not isinstance(link, str) or link.lower() not in links:
        raise ValueError(f"family={family!r} takes the link {' or '.join(repr(x) for x in links)}, got {link!r}")
    return family, link.lower()


# the variance of the latent level-1 error of a binary or binomial model, by link (logistic,
# standard normal): the level-1 variance of an intraclass correlation on the latent scale
LATENT_VARIANCE = {"logit": float(np.pi**2 / 3), "probit": 1.0}


def binomial_log_coefficients(n, y):
    """``log C(n, y)`` of each row: the normalising constant of its binomial log-likelihood."""
    from scipy.special import gammaln

    n, y = np.asarray(n, dtype=np.float64), np.asarray(y, dtype=np.float64)
    return gammaln(n + 1.0) - gammaln(y + 1.0) - gammaln(n - y + 1.0)


def log_normalising_constants(family, n, y):
    """Each row's constant of its log-likelihood: ``log C(n, y)`` (binomial) or ``-log y!`` (Poisson)."""
    if family == "poisson":
        from scipy.special import gammaln

        return -gammaln(np.asarray(y, dtype=np.float64) + 1.0)
    return binomial_log_coefficients(n, y)


def family_code(family, link):
    """The kernels' code of a non-Gaussian family and link (:mod:`samplers.glm`)."""
    return _CODES[(family, link)]


_CBIND = re.compile(r"^\s*cbind\s*\((?P<args>[^()]*)\)\s*~(?P<rhs>.*)$", re.S)
_TERM = re.compile(r"\s*(?P<sign>[+-]?)\s*(?P<name>`[^`]+`|[A-Za-z_.][\w.]*)\s*")


def _column_sum(expr, data, formula):
    """The value of ``a``, ``a - b``, ``a + b - c`` ... (column names and signs only) on ``data``."""
    pos, total, names = 0, None, []
    while pos < len(expr):
        m = _TERM.match(expr, pos)
        if m is None or (pos > 0 and not m.group("sign")):
            raise ValueError(
                f"cbind() in {formula!r} takes column names joined by + and -, such as "
                f"cbind(incidence, size - incidence); cannot read {expr.strip()!r}: compute the column first")
        name = m.group("name").strip("`")
        try:
            col = np.asarray(data[name], dtype=np.float64)
        except KeyError:
            raise ValueError(f"cbind() in {formula!r} names the column {name!r}, which is not in the data") from None
        except (TypeError, ValueError):
            raise ValueError(f"column {name!r} in cbind() of {formula!r} is not numeric") from None
        col = -col if m.group("sign") == "-" else col
        total = col if total is None else total + col
        names.append(name)
        pos = m.end()
    if total is None:
        raise ValueError(f"cbind() in {formula!r} has an empty argument")
    return total, names


def split_cbind(formula, data):
    """A formula ``cbind(s, f) ~ rhs`` as ``(formula with s as the response, data, trials s + f)``.

    Other formulas come back unchanged with ``trials`` None. When the successes are not a
    single column, they are added to a copy of the data as the column ``successes``.
    """
    m = _CBIND.match(formula)
    if m is None:
        return formula, data, None
    parts = m.group("args").split(",")
    if len(parts) != 2:
        raise ValueError(f"cbind() in {formula!r} takes two arguments, the successes and the failures")
    successes, s_names = _column_sum(parts[0], data, formula)
    failures, _ = _column_sum(parts[1], data, formula)
    single = len(s_names) == 1 and not parts[0].strip().startswith("-")
    name = s_names[0] if single else "successes"
    if not single:
        if hasattr(data, "assign"):
            data = data.assign(successes=successes)
        else:
            data = {**dict(data), "successes": successes}
    quoted = name if re.fullmatch(r"[A-Za-z_.][\w.]*", name) else f"`{name}`"
    return f"{quoted} ~{m.group('rhs')}", data, successes + failures


def split_offset(formula, data):
    """The formula without its ``offset(expr)`` terms, and their sum on ``data`` (None without any).

    Each ``expr`` is evaluated as a term of the formula's fixed part (``log(exposure)``), with
    missing values kept as NaN (the model's missing-value rule then applies to them).
    """
    if "~" not in formula or "offset" not in formula:
        return formula, None
    lhs, rhs = formula.split("~", 1)
    spans = offset_terms(rhs)
    if not spans:
        return formula, None
    from formulaic import model_matrix

    if isinstance(data, dict):  # a mapping of columns, as hlm accepts
        import pandas as pd

        data = pd.DataFrame(data)
    total = None
    for _, _, expr in spans:
        if not expr:
            raise ValueError(f"offset() in {formula!r} is empty: write offset(log(exposure)), say")
        try:
            with np.errstate(divide="ignore", invalid="ignore"):  # log(0): said below, by the row
                values = np.asarray(model_matrix(f"0 + I({expr})", data, na_action="ignore"), dtype=np.float64)
        except Exception as err:  # noqa: BLE001 - formulaic raises many kinds; the message says which term
            raise ValueError(f"cannot evaluate offset({expr}) in {formula!r}: {err}") from None
        if values.ndim != 2 or values.shape[1] != 1:
            raise ValueError(f"offset({expr}) in {formula!r} must give one number per row")
        total = values[:, 0] if total is None else total + values[:, 0]
    kept, pos = [], 0
    for start, end, _ in spans:
        kept.append(rhs[pos:start])
        pos = end
    kept.append(rhs[pos:])
    terms = [t.strip() for t in "".join(kept).split("+")]
    rest = " + ".join(t for t in terms if t) or "1"
    return f"{lhs.rstrip()} ~ {rest}", total


def offset_label(formula):
    """How messages name a formula's offset: its ``offset(...)`` terms as written, joined by ``+``."""
    rhs = formula.split("~", 1)[1] if "~" in formula else formula
    return " + ".join(f"offset({expr})" for _, _, expr in offset_terms(rhs)) or "offset()"


def trials_array(trials, data, n_rows):
    """``trials=`` as an array of the data's rows: a column name or an array of length ``n_rows``."""
    if isinstance(trials, str):
        try:
            values = np.asarray(data[trials], dtype=np.float64)
        except KeyError:
            raise ValueError(f"trials={trials!r} is not a column of the data") from None
        except (TypeError, ValueError):
            raise ValueError(f"the trials column {trials!r} is not numeric") from None
    else:
        values = np.asarray(trials, dtype=np.float64).ravel()
    if values.shape[0] != n_rows:
        raise ValueError(f"trials has {values.shape[0]} values for {n_rows} rows of data")
    return values


def _rows_listed(mask, limit=5):
    where = np.flatnonzero(mask)
    shown = ", ".join(str(int(i)) for i in where[:limit])
    return shown + (", ..." if where.size > limit else "")


def check_response(y, trials, family, response):
    """Refuse a response the family cannot take, naming the column and the rows (positions in the data used)."""
    y = np.asarray(y, dtype=np.float64)
    whole = y == np.round(y)
    if family == "bernoulli":
        bad = (y != 0) & (y != 1)
        if bad.any():
            raise ValueError(f"family='bernoulli' needs a 0/1 response; column {response!r} has other values "
                             f"in {int(bad.sum())} rows (rows {_rows_listed(bad)}); for successes out of several "
                             "trials use family='binomial' with cbind(successes, failures) or trials=")
        return
    if family == "poisson":
        bad = (y < 0) | ~whole
        if bad.any():
            raise ValueError(f"family='poisson' needs counts (whole numbers >= 0); column {response!r} has other "
                             f"values in {int(bad.sum())} rows (rows {_rows_listed(bad)})")
        return
    if family == "binomial":
        n = np.asarray(trials, dtype=np.float64)
        bad_n = ~np.isfinite(n) | (n < 1) | (n != np.round(n))
        if bad_n.any():
            raise ValueError(f"the numbers of trials must be whole numbers >= 1; {int(bad_n.sum())} rows are not "
                             f"(rows {_rows_listed(bad_n)})")
        bad = (y < 0) | (y > n) | ~whole
        if bad.any():
            raise ValueError(f"family='binomial' needs whole numbers of successes between 0 and the number of "
                             f"trials; column {response!r} is not in {int(bad.sum())} rows (rows {_rows_listed(bad)})")


def gaussian_response_warning(y, response):
    """Warn when a response fitted as Gaussian is 0/1 or looks like counts, naming ``family=``."""
    y = np.asarray(y, dtype=np.float64)
    if y.size == 0:
        return
    values = np.unique(y)
    if values.size <= 2 and np.all(np.isin(values, (0.0, 1.0))):
        warnings.warn(f"the response {response!r} holds only 0 and 1 and is fitted as Gaussian: for a binary "
                      "outcome pass family='bernoulli' (logit link; link='probit' for probit)",
                      FamilyWarning, stacklevel=3)
    elif np.all(y >= 0) and np.all(y == np.round(y)) and np.mean(y == 0) >= 0.1 and values.size > 2:
        warnings.warn(f"the response {response!r} holds counts (whole numbers >= 0, {np.mean(y == 0):.0%} zeros) "
                      "and is fitted as Gaussian: for counts pass family='poisson'", FamilyWarning, stacklevel=3)


GLM_MOVES = ("auto", "augment", "newton")
# bayeshlm.sample's glm_move="auto" takes the Newton proposal for binomial rows when the groups hold on
# average at least this many rows (trials): there its acceptance is high; for a Poisson level 1 always
# (docs/design.md, "The Newton proposal")
NEWTON_ROWS_PER_GROUP = 50


def newton_move(model, glm_move, method=None):
    """Whether a non-Gaussian model's coefficients move by the Newton proposal (``glm_move`` of ``bayeshlm.sample``).

    ``"auto"`` takes it for nested factors when ``method`` is ``"gibbs"`` or unset (the
    proposal's variance components move by their conditionals): always for a Poisson level 1,
    and for binomial rows when the finest groups hold on average at least
    :data:`NEWTON_ROWS_PER_GROUP` trials.
    """
    # nested grouping factors with random coefficients: the chains' two-level and nested variants, the only
    # ones compiled with the proposal (samplers.driver.newton_sweep)
    nested = not model.crossed and len(model.factors) >= 1 and int(model.structure.level_ptr[-1]) > 0
    if glm_move == "newton" and not nested:
        what = (f"its factors ({', '.join(model.factors)}) are crossed" if model.crossed
                else "it has no grouping factor with random coefficients")
        raise ValueError(f"glm_move='newton' is for nested grouping factors, and {what}: use glm_move='augment'")
    if glm_move != "auto":
        return glm_move == "newton"
    if not nested or method not in (None, "gibbs"):
        return False
    if model.family == "poisson":
        return True
    trials = model.trials if model.trials is not None else np.ones(model.n_obs)
    return float(np.sum(trials)) >= NEWTON_ROWS_PER_GROUP * model.stats.n.shape[0]


# with the Newton proposal, bayeshlm.sample's interweave=None adds the move of the group SD given the
# standardised effects when the median group's information about its coefficient (sum_i w_i x_i^2 at the
# starting predictor) is below this: there T | b alone mixes slowly (docs/design.md, "The Newton proposal")
NEWTON_INTERWEAVE_INFORMATION = 10.0


def newton_interweave(information, n_coef, interweave=None, factor=None):
    """Whether the Newton proposal also moves a factor's SD given the standardised effects.

    ``information``: each of the factor's groups' ``sum_i w_i x_i^2`` at the starting
    predictor (groups with rows); ``n_coef``: the coefficients per group; ``interweave``:
    ``bayeshlm.sample``'s argument (None chooses by ``information``); ``factor``: its name, for
    the message. The move is defined for one coefficient per group; asking for it with more
    raises ValueError.
    """
    if interweave is None:
        return n_coef == 1 and len(information) > 0 and float(np.median(information)) < NEWTON_INTERWEAVE_INFORMATION
    if interweave and n_coef != 1:
        where = f"factor {factor!r}" if factor is not None else "this model"
        raise ValueError(
            f"interweave=True moves one group SD given the standardised effects; {where} has {n_coef} "
            "coefficients per group: leave interweave unset"
        )
    return bool(interweave)
