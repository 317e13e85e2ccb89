"""Turn a data frame and a parsed formula into design arrays.

All checks on user data happen here, once, with messages that name the
column at fault. What leaves this module is plain numpy: the response, the
fixed design, a per-row random design with one group code per row, and the
labels needed to name things later.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
import pandas as pd

from bayeshlm.formula import (
    FormulaError,
    FormulaSpec,
    as_float_columns,
    categorical_columns,
    level2_candidates,
    model_matrix,
    parse_formula,
    plain_columns,
    required_variables,
)

__all__ = ["DataError", "Design", "GroupLevelWarning", "MissingResponses", "NestingWarning", "build_design"]

# Relative eigenvalue below which the cross-product matrix of the centred, unit-length
# columns is treated as singular, and relative weight above which a column counts as
# part of a dependency.
_RANK_TOL = 1e-10
_INVOLVED_TOL = 1e-6
# A column whose centred values are this small against its largest value is constant
# up to rounding.
_CONSTANT_TOL = 1e-14
# Largest absolute values outside [_TINY, _HUGE] cannot be squared and summed in double
# precision (their squares underflow below 1e-300 or overflow above 1e300).
_TINY = 1e-150
_HUGE = 1e150
# How many offending row positions an error message lists.
_SHOW_ROWS = 5
# A column that takes one value per group in all but this fraction of the groups (of two
# rows or more), with at least _LEVEL_MIN_GROUPS such groups, looks like a group variable.
_LEVEL_STRAY = 0.05
_LEVEL_MIN_GROUPS = 10


class DataError(ValueError):
    """Data that cannot be used with the requested model."""


class IdentificationWarning(UserWarning):
    """A part of the model that the data can determine only weakly or only in combination."""


class GroupLevelWarning(UserWarning):
    """A predictor meant as a variable of the groups (level 2 or above) that varies within them.

    :class:`bayeshlm.Hierarchy` knows the level of every predictor: each predictor of a
    level's equations must take one value per group of that level. :func:`bayeshlm.hlm` reads
    a column as a variable of a factor's groups when it enters the fixed part only through
    interactions with columns whose slopes are random on that factor (``y ~ x + x:z + (x | g)``:
    ``z`` predicts the slope of ``x``), or when it takes one value per group in all but a few
    groups (at most 5% of at least 10 groups with two rows or more) while differing between
    groups, as a group variable with a few wrong rows does; other columns are level-1
    predictors, about which nothing is said.

    Attributes
    ----------
    column : str
        The predictor (a data column or formula term).
    factor : str
        The grouping factor whose groups it should be constant in.
    """

    def __init__(self, message, column="", factor=""):
        super().__init__(message)
        self.column = column
        self.factor = factor


class NestingWarning(UserWarning):
    """Two grouping factors fitted as crossed whose labels may be numbered within each other's groups.

    ``(1 | batch) + (1 | cask)`` with casks labelled ``a``, ``b``, ``c`` in every batch is
    read as crossed factors (as lme4 reads it): three casks shared by all batches. When cask
    ``a`` of one batch is not cask ``a`` of another, the model meant is
    ``(1 | batch/cask)``. The data cannot tell the two apart; the warning is given when every
    combination of the two factors' labels occurs with several rows each and neither
    column appears in an interaction factor of the formula.

    Attributes
    ----------
    outer, inner : str
        The factor with more groups and the one whose labels may be numbered within it.
    """

    def __init__(self, message, outer="", inner=""):
        super().__init__(message)
        self.outer = outer
        self.inner = inner


class ColumnRoles(dict):
    """The columns a formula uses, each with its role (for messages), response first.

    Attributes
    ----------
    categorical : frozenset of str
        Columns the formula reads inside ``C(...)``: categories by the user's choice.
    """

    categorical: frozenset = frozenset()


def identification_warnings(design):
    """Warn about variance components the design cannot separate.

    * Every group of a factor has a single row while the factor has a random intercept and
      the level-1 variance is estimated: only the sum of the group variance and sigma^2 is
      determined by the data (the prior, or the ML/REML boundary, decides the split).
    * A random slope on a column that is constant within every group of its factor, beside
      a random intercept: within a group the slope and the intercept act alike, so their
      variances are told apart only by how the column differs between groups.
    """
    factors = design.factors or ((design.factor,) if design.coef_names else ())
    if not factors:
        return
    sizes = design.factor_sizes or (len(design.coef_names),)
    idx = design.factor_idx or (design.group_idx,)
    names = design.factor_coef_names or (design.coef_names,)
    col = 0
    for factor, size, codes, coefs in zip(factors, sizes, idx, names, strict=True):
        X = design.X[:, col:col + size]
        col += size
        counts = np.bincount(codes)
        constant = []
        if "Intercept" in coefs:
            for j, coef in enumerate(coefs):
                if coef == "Intercept":
                    continue
                x = X[:, j]
                lo = np.full(counts.size, np.inf)
                hi = np.full(counts.size, -np.inf)
                np.minimum.at(lo, codes, x)
                np.maximum.at(hi, codes, x)
                if np.all(hi - lo <= 1e-12 * max(1.0, float(np.max(np.abs(x))))):
                    constant.append(coef)
        warn_identification(factor, coefs, counts.max() == 1, constant, design.obs_var is None)


def warn_identification(factor, coefs, single_rows, constant_slopes, sigma_estimated, stacklevel=4):
    """The warnings of :func:`identification_warnings` for one factor, from what was found.

    ``single_rows``: every group of the factor has one row; ``constant_slopes``: the random
    slopes whose column is constant within every group.
    """
    import warnings

    if "Intercept" not in coefs:
        return
    if single_rows and sigma_estimated:
        warnings.warn(
            f"every group of '{factor}' has a single row: the variance of its random intercept and "
            "the level-1 variance sigma^2 are not separately identified (only their sum is); the "
            "prior decides the split, and an ML/REML fit puts one of them on the boundary",
            IdentificationWarning, stacklevel=stacklevel)
        return
    for coef in constant_slopes:
        warnings.warn(
            f"the random slope of '{coef}' is constant within every group of '{factor}': within a "
            "group it acts like the random intercept, and the two variances are told apart only "
            f"by how '{coef}' differs between groups (weakly identified); a level-2 predictor "
            "usually belongs in the fixed part only",
            IdentificationWarning, stacklevel=stacklevel)


class MissingResponses(NamedTuple):
    """The rows whose response is missing, kept aside by ``missing="impute"``.

    They are in neither `Design.y` nor the statistics: the fits use the observed rows, which
    under missing at random is the likelihood of the data as observed, and
    :func:`bayeshlm.impute` draws the missing responses from each posterior draw
    (docs/design.md, "Missing outcomes").

    Attributes
    ----------
    rows : ndarray of int64, shape (n_missing,)
        Positions of the rows in the data as given.
    F : ndarray of shape (n_missing, n_fixed)
        Their fixed design (the columns of `Design.F`, evaluated with the observed rows'
        category levels and transforms).
    X : ndarray of shape (n_missing, n_coef)
        Their random design (the columns of `Design.X`).
    factor_labels : tuple of ndarray
        Each grouping factor's group label of every row, factors as `Design.factors`; a label
        the observed rows do not have is a group whose responses are all missing.
    obs_var : ndarray of shape (n_missing,) or None
        Their known level-1 variances (``known_sd`` / ``known_var``).
    weights : ndarray of shape (n_missing,) or None
        Their precision weights (``weights=``).
    offset : ndarray of shape (n_missing,) or None
        Their offsets (a Gaussian formula's ``offset(...)`` terms).
    """

    rows: np.ndarray
    F: np.ndarray
    X: np.ndarray
    factor_labels: tuple
    obs_var: np.ndarray | None = None
    weights: np.ndarray | None = None
    offset: np.ndarray | None = None

    @property
    def noise_variance(self):
        """Each row's level-1 variance: known (``obs_var``), or in units of ``sigma^2`` (``1 / w``); None for all 1."""
        if self.obs_var is not None:
            return self.obs_var
        return None if self.weights is None else 1.0 / self.weights


class Design(NamedTuple):
    """Numeric arrays describing a one-factor hierarchical linear model.

    Row ``i`` of the data has response ``y[i]``, fixed-effect covariates
    ``F[i]`` and random-effect covariates ``X[i]``, which multiply the
    coefficients of group ``group_idx[i]``.

    Attributes
    ----------
    response : str
        Name of the response column.
    y : ndarray of shape (n_obs,)
        Response, float64.
    F : ndarray of shape (n_obs, n_fixed)
        Fixed-effect design, C-contiguous float64.
    fixed_names : tuple of str
        Column names of `F`, e.g. ``("Intercept", "days")``.
    X : ndarray of shape (n_obs, n_coef)
        Per-row random-effect design, C-contiguous float64: the covariates
        of the row's own group only, never one column block per group.
    coef_names : tuple of str
        Names of the random coefficients, the columns of `X`.
    block_sizes : tuple of int
        Sizes of the diagonal blocks of the random-effect covariance, in
        column order; they sum to ``n_coef``. ``(days | g)`` gives ``(2,)``,
        ``(days || g)`` and ``(1 | g) + (0 + days | g)`` give ``(1, 1)``.
    factor : str
        The grouping factor as written, e.g. ``"school"`` or ``"a:b"``.
    group_idx : ndarray of shape (n_obs,)
        int64 group code of each row, ``0 .. n_groups - 1`` in order of first
        appearance.
    group_labels : ndarray of shape (n_groups,)
        Group labels as strings (object dtype); labels of an ``a:b`` factor
        are ``"<a>:<b>"``.
    obs_var : ndarray of shape (n_obs,) or None
        Known sampling variance of each observation, or None when the
        residual variance is to be estimated.
    n_dropped : int
        Rows dropped because of missing values (``missing="drop"``).
    kept_rows : ndarray of shape (n_obs,)
        int64 positions, in the input data, of the rows used.
    fixed_spec : formulaic.ModelSpec
        Re-evaluates the fixed design on new data.
    random_spec : tuple of formulaic.ModelSpec
        Re-evaluate each bar term's design on new data, in the column order of `X`.
    factors : tuple of str
        The grouping factors, finest first (``("batch:cask", "batch")``); `factor` is the
        first. Each group of a factor lies in exactly one group of the next.
    factor_sizes : tuple of int
        Number of random coefficients of each factor; the columns of `X` are the finest
        factor's, then the next factor's, and so on.
    factor_coef_names : tuple of tuple of str
        The coefficient names of each factor as written (``coef_names`` qualifies them as
        ``"<coef>|<factor>"`` when there are several factors).
    factor_labels : tuple of ndarray
        Group labels of each factor.
    factor_idx : tuple of ndarray
        Group code of each row for each factor (the first is `group_idx`).
    parents : tuple of ndarray
        ``parents[k][g]``: the group of factor ``k + 1`` containing group ``g`` of factor ``k``
        (empty when the factors are crossed).
    crossed : bool
        The grouping factors are crossed (not each nested in the next): then `factors` are
        ordered by their number of groups, largest first, and the groups of the statistics
        (`group_idx`, `group_labels`) are the *cells*, the combinations of one group of every
        factor that occur in the data, labelled ``"<group>:<group>"``.
    cell_codes : ndarray of int64, shape (n_cells, n_factors), or None
        With `crossed`, each cell's group code in every factor.
    weights : ndarray of shape (n_obs,) or None
        Precision weights of the rows (``weights=``): the level-1 variance of row ``i`` is
        ``sigma^2 / weights[i]``, sigma estimated; None without them.
    offset : ndarray of shape (n_obs,) or None
        The sum of a Gaussian formula's ``offset(...)`` terms in each row, a known part of
        its mean; `y` then holds the response minus the offset, which is what the model is
        fitted to (docs/design.md, "Weights and offsets"). None without an offset.
    missing_responses : MissingResponses or None
        The rows whose response is missing, kept aside by ``missing="impute"`` (not in `y`,
        `kept_rows` or any other field); None when there are none.
    """

    response: str
    y: np.ndarray
    F: np.ndarray
    fixed_names: tuple[str, ...]
    X: np.ndarray
    coef_names: tuple[str, ...]
    block_sizes: tuple[int, ...]
    factor: str
    group_idx: np.ndarray
    group_labels: np.ndarray
    obs_var: np.ndarray | None
    n_dropped: int
    kept_rows: np.ndarray
    fixed_spec: object
    random_spec: tuple
    factors: tuple = ()
    factor_sizes: tuple = ()
    factor_coef_names: tuple = ()
    factor_labels: tuple = ()
    factor_idx: tuple = ()
    parents: tuple = ()
    crossed: bool = False
    cell_codes: np.ndarray | None = None
    weights: np.ndarray | None = None
    offset: np.ndarray | None = None
    missing_responses: MissingResponses | None = None

    @property
    def row_weights(self):
        """Each row's weight ``w_i`` in the user's units, the level-1 variance being ``s2 / w_i``; None for all 1.

        The precision weights with ``s2`` estimated, or the inverse known variances (``s2 = 1``).
        """
        if self.obs_var is not None:
            return 1.0 / self.obs_var
        return self.weights

    @property
    def response_values(self):
        """The response as observed: `y`, plus the offset when `y` holds the response minus it."""
        if self.y is None or self.offset is None:
            return self.y
        return self.y + self.offset


def build_design(
    spec: FormulaSpec | str,
    data,
    *,
    missing: str = "raise",
    known_sd=None,
    known_var=None,
    weights=None,
    offset=None,
    offset_label="offset()",
) -> Design:
    """Evaluate a parsed formula on data and check the result.

    Parameters
    ----------
    spec : FormulaSpec or str
        The model formula, parsed by :func:`bayeshlm.formula.parse_formula`
        (a string is parsed here).
    data : pandas.DataFrame or mapping of str to array_like
        The data; a mapping must hold 1-D arrays of one common length.
    missing : {"raise", "drop", "impute"}, default "raise"
        What to do with rows that have a missing or non-finite value in a
        column the model uses: raise an error naming the columns, or drop
        those rows (columns the model does not use are never looked at).
        ``"impute"``: rows whose response is missing (NaN or None) are kept
        aside in `Design.missing_responses`, their designs and group labels
        evaluated; any other missing value raises as with ``"raise"``.
    known_sd, known_var : str or array_like of shape (n_rows,), optional
        Known sampling standard deviations or variances of the observations
        (as in meta-analysis), as a column name or an array aligned with the
        rows of `data`. At most one of the two may be given.
    weights : str or array_like of shape (n_rows,), optional
        Precision weights (a column name or an array aligned with the rows of `data`): the
        level-1 variance of row ``i`` is ``sigma^2 / w_i``, as ``weights=`` of lme4's
        ``lmer``. Missing values follow `missing`; the others must be finite and positive.
        Not together with known variances.
    offset : array_like of shape (n_rows,), optional
        A known part of each row's mean (a Gaussian formula's ``offset(...)`` terms, already
        evaluated on `data`): the design's response is the response minus it. Missing values
        follow `missing`, named ``offset_label``.
    offset_label : str
        How messages name the offset.

    Returns
    -------
    Design
        The arrays of the model; see :class:`Design`.

    Raises
    ------
    FormulaError
        If a bar term has no columns or the same random coefficient appears
        twice on a factor. (A formula without bar terms is a single-level
        regression; several grouping factors must be nested.)
    DataError
        If a column is unknown, holds missing or non-finite values (with
        ``missing="raise"``), or does not fit its role: a non-numeric or
        constant response, a grouping factor with one level, a
        rank-deficient fixed or random design, known variances or weights that
        are not positive. The message names the column.
    ValueError
        If `missing` is not "raise", "drop" or "impute", or both `known_sd` and
        `known_var` are given, or weights together with either.
    TypeError
        If `data` is neither a DataFrame nor a mapping.

    Examples
    --------
    >>> import pandas as pd
    >>> df = pd.DataFrame({"y": [1.0, 2.5, 0.5, 3.0], "x": [0, 1, 0, 1],
    ...                    "g": ["a", "a", "b", "b"]})
    >>> d = build_design("y ~ x + (1 | g)", df)
    >>> d.fixed_names, d.coef_names, d.block_sizes
    (('Intercept', 'x'), ('Intercept',), (1,))
    >>> d.group_idx
    array([0, 0, 1, 1])
    """
    if missing not in ("raise", "drop", "impute"):
        raise ValueError(f"missing must be 'raise' or 'drop', or 'impute' (responses only), got {missing!r}")
    if known_sd is not None and known_var is not None:
        raise ValueError("give known_sd or known_var, not both")
    check_weights_option(weights, known_sd, known_var)
    if isinstance(spec, str):
        spec = parse_formula(spec)
    factors = factors_of_spec(spec)

    frame = as_frame(data)
    n_input = len(frame)
    if n_input == 0:
        raise DataError("the data has no rows")

    known_name, known = ("known_sd", known_sd) if known_sd is not None else ("known_var", known_var)
    known_column = known if isinstance(known, str) else None

    roles = column_roles(spec)
    if known_column is not None:
        roles.setdefault(known_column, known_name)
    weights_column = weights if isinstance(weights, str) else None
    if weights_column is not None:
        roles.setdefault(weights_column, "weights")
    check_columns(frame, roles)

    check_numeric(frame[spec.response], spec.response, "the response")
    known_values = None
    if known_column is not None:
        check_numeric(frame[known_column], known_column, known_name)
    elif known is not None:
        known_values = known_array(known, known_name, n_input)
    weight_values = None
    if weights_column is not None:
        check_numeric(frame[weights_column], weights_column, "weights")
    elif weights is not None:
        weight_values = known_array(weights, "weights", n_input)
    offset_values = None
    if offset is not None:
        offset_values = known_array(offset, offset_label, n_input)

    bad = {name: bad_mask(frame[name]) for name in roles}
    if known_values is not None:
        bad[known_name] = ~np.isfinite(known_values)
    if weight_values is not None:
        bad["weights"] = ~np.isfinite(weight_values)
    if offset_values is not None:
        bad[offset_label] = ~np.isfinite(offset_values)
    absent = None  # missing="impute": the rows whose response is missing, kept aside
    if missing == "impute":
        absent = frame[spec.response].isna().to_numpy() & bad[spec.response]
        bad[spec.response] = bad[spec.response] & ~absent  # an infinite response is an error
    kept_rows, n_dropped = _handle_missing(bad, "raise" if missing == "impute" else missing, n_input,
                                           impute=missing == "impute")
    aside = None
    if absent is not None and absent.any():
        if absent.all():
            raise DataError(f"the response '{spec.response}' is missing in every row: there is nothing to fit")
        kept_rows, aside = np.flatnonzero(~absent).astype(np.int64), np.flatnonzero(absent).astype(np.int64)
        aside_values = {"known": known_values, "weights": weight_values, "offset": offset_values}

    if len(kept_rows) < n_input or not _plain_design(spec, frame):
        used = frame[list(roles)]
        if len(kept_rows) < n_input:
            used = used.iloc[kept_rows]
            if known_values is not None:
                known_values = known_values[kept_rows]
            if weight_values is not None:
                weight_values = weight_values[kept_rows]
            if offset_values is not None:
                offset_values = offset_values[kept_rows]
        # formulaic aligns on the index; a fresh range index avoids surprises
        # from duplicated or non-monotonic labels.
        used = used.reset_index(drop=True)
    else:  # every row kept and no formulaic: the columns are read where they are
        used = frame

    y = _response(used[spec.response], spec.response)
    if offset_values is not None:
        offset_values = np.ascontiguousarray(offset_values, dtype=np.float64)
        y = np.ascontiguousarray(y - offset_values)
        if y.min() == y.max():
            raise DataError(f"the response '{spec.response}' minus the offset is constant ({y[0]:g} in every "
                            "row): the offset leaves nothing to model")

    F, fixed_names, fixed_spec = evaluate_terms(spec.fixed, used, "the fixed part")
    _check_rank(F, fixed_names, "fixed-effects design")

    codes = {}
    for factor in factors:
        idx, labels = group_codes(used, factor.split(":"))
        if len(labels) < 2:
            raise DataError(
                f"the grouping factor '{factor}' has a single level "
                f"({labels[0]!r}); a variance between groups cannot be "
                "estimated from one group"
            )
        codes[factor] = (idx, labels)
    factors, parents, crossed = order_factors(factors, codes, per_row=True)
    blocks, coef_names, factor_coef_names, block_sizes, factor_sizes, random_spec = [], [], [], [], [], []
    for factor in factors:
        X_k, names_k, sizes_k, specs_k = random_design(spec, used, factor)
        _check_rank(X_k, names_k, f"random-effects design of '{factor}'")
        blocks.append(X_k)
        factor_coef_names.append(tuple(names_k))
        coef_names += [f"{n}|{factor}" for n in names_k] if len(factors) > 1 else names_k
        block_sizes += sizes_k
        factor_sizes.append(len(names_k))
        random_spec += specs_k
    cell_codes = None
    if crossed:
        X = np.ascontiguousarray(np.hstack(blocks), dtype=np.float64)
        factor = factors[0]
        group_idx, cell_codes, group_labels = cells_of([codes[f] for f in factors])
    elif factors:
        X = np.ascontiguousarray(np.hstack(blocks), dtype=np.float64)
        factor = factors[0]
        group_idx, group_labels = codes[factor]
    else:  # a single-level regression: every row in one group without random coefficients
        X = np.zeros((len(y), 0))
        factor = ""
        group_idx, group_labels = np.zeros(len(y), dtype=np.int64), np.array(["all rows"], dtype=object)

    obs_var = None
    if known is not None:
        if known_column is not None:
            known_values = used[known_column].to_numpy(dtype=np.float64, na_value=np.nan)
        obs_var = obs_var_from(known_values, known_name)
    row_weights = None
    if weights is not None:
        if weights_column is not None:
            weight_values = used[weights_column].to_numpy(dtype=np.float64, na_value=np.nan)
        row_weights = precision_weights_from(weight_values, weights_column or "weights", kept_rows)
    _group_level_warnings(spec, used, factors, codes)
    missing_responses = None
    if aside is not None:
        missing_responses = _kept_aside(frame[list(roles)].iloc[aside].reset_index(drop=True), aside, used,
                                        fixed_spec, random_spec, factors, codes, parents, crossed, aside_values,
                                        known_name, known_column, weights_column)

    return Design(
        response=spec.response,
        y=y,
        F=F,
        fixed_names=tuple(fixed_names),
        X=X,
        coef_names=tuple(coef_names),
        block_sizes=tuple(block_sizes),
        factor=factor,
        group_idx=group_idx,
        group_labels=group_labels,
        obs_var=obs_var,
        n_dropped=n_dropped,
        kept_rows=kept_rows,
        fixed_spec=fixed_spec,
        random_spec=tuple(random_spec),
        factors=tuple(factors),
        factor_sizes=tuple(factor_sizes),
        factor_coef_names=tuple(factor_coef_names),
        factor_labels=tuple(codes[f][1] for f in factors),
        factor_idx=tuple(codes[f][0] for f in factors),
        parents=tuple(parents),
        crossed=crossed,
        cell_codes=cell_codes,
        weights=row_weights,
        offset=offset_values,
        missing_responses=missing_responses,
    )


def _kept_aside(rows_frame, rows, used, fixed_spec, random_spec, factors, codes, parents, crossed, values,
                known_name, known_column, weights_column):
    """The :class:`MissingResponses` of the rows at positions ``rows`` (``rows_frame``: their used columns).

    Their designs are evaluated with the specs of the observed rows (``used``), and their group
    labels read as the observed rows' are (``1`` and ``"1"`` in one column are still refused).
    With nested factors a row must sit where the observed rows put its groups. ``values``: the
    known SDs or variances (``known_name``), weights and offsets given as arrays, over all the input rows.
    """
    where = "rows whose response is missing"
    F = evaluate_spec(fixed_spec, rows_frame, f"the fixed part in the {where}")
    X = np.zeros((len(rows), 0))
    if random_spec:
        X = np.ascontiguousarray(np.hstack([evaluate_spec(s, rows_frame, f"the random-effect terms in the {where}")
                                            for s in random_spec]))
    n_obs = len(used)
    labels = []
    for factor in factors:
        columns = factor.split(":")
        both = pd.concat([used[columns].reset_index(drop=True), rows_frame[columns]], ignore_index=True)
        idx, uniques = group_codes(both, columns)
        labels.append(np.asarray(uniques, dtype=object)[idx[n_obs:]])
    if not crossed:
        for k in range(len(factors) - 1):
            fitted = codes[factors[k]][1], codes[factors[k + 1]][1][parents[k]]
            pairs = pd.DataFrame({"fine": np.concatenate([fitted[0], labels[k]]).astype(str),
                                  "coarse": np.concatenate([fitted[1], labels[k + 1]]).astype(str)}).drop_duplicates()
            first = pairs.drop_duplicates("fine").set_index("fine")["coarse"]  # the observed rows' parent first
            stray = (first.reindex(labels[k].astype(str)).to_numpy() != labels[k + 1].astype(str))
            if stray.any():
                i = int(np.flatnonzero(stray)[0])
                label = str(labels[k][i])
                raise DataError(f"'{factors[k]}' group {label!r} lies in more than one '{factors[k + 1]}' group once "
                                f"the {where} are counted (e.g. row position {int(rows[i])}): the factors are nested "
                                "in the observed rows, and a row with a missing response must keep that nesting")
    obs_var = weights = offset = None
    if known_column is not None:
        obs_var = obs_var_from(rows_frame[known_column].to_numpy(dtype=np.float64, na_value=np.nan), known_name)
    elif values["known"] is not None:
        obs_var = obs_var_from(values["known"][rows], known_name)
    if weights_column is not None:
        weights = precision_weights_from(rows_frame[weights_column].to_numpy(dtype=np.float64, na_value=np.nan),
                                         weights_column, rows)
    elif values["weights"] is not None:
        weights = precision_weights_from(values["weights"][rows], "weights", rows)
    if values["offset"] is not None:
        offset = np.ascontiguousarray(values["offset"][rows], dtype=np.float64)
    return MissingResponses(rows=rows, F=F, X=X, factor_labels=tuple(labels), obs_var=obs_var, weights=weights,
                            offset=offset)


def check_weights_option(weights, known_sd, known_var):
    """Refuse precision weights together with known level-1 variances (they are two ways of giving them)."""
    if weights is not None and (known_sd is not None or known_var is not None):
        raise ValueError("weights= and known_sd/known_var are two ways of weighting the rows: precision weights "
                         "scale an estimated level-1 variance (sigma^2 / w), known variances replace it; give one")


def precision_weights_from(values, name, rows):
    """Precision weights checked: finite and positive, as float64; ``rows`` the input positions of the values.

    Raises :class:`DataError` naming the column (``name``) and the rows' positions in the data.
    """
    values = np.asarray(values, dtype=np.float64)
    where = f"column '{name}' (weights)" if name != "weights" else "weights"
    for mask, what, fix in (
        (values == 0.0, "zero", "a row of weight 0 carries no information: drop it from the data"),
        (values < 0.0, "negative", "precision weights are inverse variances and must be positive"),
        (~np.isfinite(values), "missing or not finite", "give every row a finite positive weight"),
    ):
        if mask.any():
            listed = ", ".join(str(int(i)) for i in np.asarray(rows)[np.flatnonzero(mask)[:_SHOW_ROWS]])
            more = ", ..." if mask.sum() > _SHOW_ROWS else ""
            raise DataError(f"{where} must be finite and > 0: {int(mask.sum())} "
                            f"value{'s are' if mask.sum() > 1 else ' is'} {what} (row positions {listed}{more}); "
                            f"{fix}")
    return np.ascontiguousarray(values)


def cells_of(factor_codes):
    """The cells of crossed factors: each row's cell, each cell's group in every factor, the cells' labels.

    ``factor_codes``: per factor ``(codes, labels)``, codes one per row (or per combination
    of labels). Cells are numbered by first appearance and labelled ``"<label>:<label>"``.
    """
    key = np.zeros(len(factor_codes[0][0]), dtype=np.int64)
    for codes, labels in factor_codes:
        key, _ = pd.factorize(key * len(labels) + codes, sort=False)
        key = key.astype(np.int64)
    n_cells = int(key.max()) + 1 if key.size else 0
    first = np.full(n_cells, -1, dtype=np.int64)
    first[key[::-1]] = np.arange(len(key) - 1, -1, -1)
    cell_codes = np.ascontiguousarray(np.column_stack([codes[first] for codes, _ in factor_codes]), dtype=np.int64)
    labels = np.asarray(factor_codes[0][1], dtype=object)[cell_codes[:, 0]].astype(str)
    for k in range(1, len(factor_codes)):
        labels = np.char.add(np.char.add(labels, ":"), np.asarray(factor_codes[k][1], dtype=str)[cell_codes[:, k]])
    return np.ascontiguousarray(key), cell_codes, labels.astype(object)


def _first_rows(codes, n_groups):
    """Row position of the first row of each group (codes numbered by first appearance, or not)."""
    if len(codes) and n_groups:
        running = np.maximum.accumulate(codes)
        starts = np.flatnonzero(np.r_[True, running[1:] != running[:-1]])
        if len(starts) == n_groups and np.array_equal(codes[starts], np.arange(n_groups)):
            return starts
    first = np.full(n_groups, -1, dtype=np.int64)
    uniq, pos = np.unique(codes, return_index=True)
    first[uniq] = pos
    return first


def within_group_variation(values, codes, n_groups, first=None):
    """Which groups a column takes more than one value in.

    Parameters
    ----------
    values : array_like of shape (n_rows,)
        The column (numbers, or labels of any kind).
    codes : ndarray of shape (n_rows,)
        Group code of each row, ``0 .. n_groups - 1``.
    n_groups : int
    first : ndarray of shape (n_groups,), optional
        The position of each group's first row, when already known.

    Returns
    -------
    varying : ndarray of bool, shape (n_groups,)
        The column is not constant within the group.
    example : tuple or None
        ``(group, value, other value)`` for the first varying group, else None.
    first_values : ndarray of shape (n_groups,)
        The column's value in the first row of each group.
    """
    values = np.asarray(values)
    v = values if values.dtype.kind in "biuf" else pd.factorize(values)[0]
    first = _first_rows(codes, n_groups) if first is None else first
    differs = np.flatnonzero(v != v[first][codes])
    if differs.size == 0:
        return np.zeros(n_groups, dtype=bool), None, values[first]
    varying = np.bincount(codes[differs], minlength=n_groups) > 0
    row = int(differs[0])
    g = int(codes[row])
    return varying, (g, values[first[g]], values[row]), values[first]


def show_value(value):
    """A data value as a message shows it: ``0.5``, ``3``, ``'a'`` (no NumPy type names)."""
    value = value.item() if isinstance(value, np.generic) else value
    return f"{value:.6g}" if isinstance(value, float) else repr(value)


def _group_level_warnings(spec, frame, factors, codes):
    """Warn about a predictor meant as a variable of the groups of a factor that varies within them.

    ``hlm`` reads a column as a variable of the groups of a factor in two cases:

    * it enters the fixed part only through interactions with columns whose slope is random
      on the factor (``y ~ x + x:z + (x | g)``: ``z`` predicts the slope of ``x``, a cross-level
      interaction), and it varies within the groups of the finest factor;
    * it takes one value per group in all but a few of the groups of a factor (at most 5% of
      those with two rows or more, of at least 10 such groups), while its group values differ
      between groups (no single value in 90% of them), and it is not a variable of a finer
      factor: the look of a group variable with a few wrong rows.

    Everything else is read as a level-1 predictor, and nothing is said.
    """
    import warnings

    grouping = {c for f in factors for c in f.split(":")}
    used = sorted(required_variables(spec.fixed) - {spec.response} - grouping)
    done = set()
    for k, factor in enumerate(factors):
        slopes = set().union(*(required_variables(b.expr) for b in spec.bars if b.factor == factor))
        columns = [c for c in used if c not in slopes and c not in done and c in frame]
        if not columns:
            continue
        idx, labels = codes[factor]
        n_groups = len(labels)
        through_slopes = level2_candidates(spec.fixed, slopes) if slopes else set()
        n_multi = int(np.count_nonzero(np.bincount(idx, minlength=n_groups) >= 2))
        first = _first_rows(idx, n_groups)
        for column in columns:
            values = frame[column].to_numpy()
            varying, example, first_values = within_group_variation(values, idx, n_groups, first)
            if example is None:
                continue
            n_vary = int(varying.sum())
            stray = (n_multi >= _LEVEL_MIN_GROUPS and n_vary <= _LEVEL_STRAY * n_multi
                     and pd.Series(first_values).value_counts().iloc[0] < 0.9 * n_groups)
            if column not in through_slopes and not stray:
                continue
            # a variable of a finer factor is not meant at this level
            if any(not within_group_variation(values, codes[f][0], len(codes[f][1]))[0].any() for f in factors[:k]):
                continue
            done.add(column)
            at = f"'{factor}' group {str(labels[example[0]])!r}: {show_value(example[1])} and {show_value(example[2])}"
            if column in through_slopes:
                message = (
                    f"'{column}' enters the fixed part only through interactions with slopes that vary over "
                    f"'{factor}', so it reads as a predictor of those slopes, a variable of the '{factor}' groups "
                    f"(a cross-level interaction), but it varies within {n_vary} of the {n_groups} groups (e.g. "
                    f"{at}); if '{column}' is a level-1 variable, add its main effect, otherwise give it one value "
                    "per group (e.g. its group mean)"
                )
            else:
                message = (
                    f"'{column}' looks like a variable of the '{factor}' groups (one value per group in "
                    f"{n_multi - n_vary} of the {n_multi} groups with several rows) but varies within {n_vary} of "
                    f"them (e.g. {at}); a level-2 predictor takes one value per group: check those rows"
                )
            warnings.warn(GroupLevelWarning(message, column=column, factor=factor), stacklevel=4)


def column_roles(spec):
    """Each column the formula uses, with the role it plays (for messages), response first.

    Returns a :class:`ColumnRoles` (a dict) whose ``categorical`` attribute holds the
    columns read inside ``C(...)``.
    """
    roles = ColumnRoles({spec.response: "the response"})
    parts = (spec.fixed, *(b.expr for b in spec.bars))
    roles.categorical = frozenset().union(*(categorical_columns(rhs) for rhs in parts))
    for name in sorted(required_variables(spec.fixed)):
        roles.setdefault(name, "the fixed part")
    for bar in spec.bars:
        for name in sorted(required_variables(bar.expr)):
            roles.setdefault(name, f"the random-effect term ({bar.expr} | {bar.factor})")
    for factor in factors_of_spec(spec):
        for name in factor.split(":"):
            roles.setdefault(name, "the grouping factor")
    return roles


def factors_of_spec(spec):
    return list(dict.fromkeys(bar.factor for bar in spec.bars))


def order_factors(factors, codes, per_row=False, weights=None):
    """Order the grouping factors and decide whether they are nested or crossed.

    Returns ``(factors, parents, crossed)``. Nested factors (each group of one in a single
    group of the next, by number of groups) are ordered finest first, with each one's
    parent groups (:func:`order_nested`); otherwise the factors are crossed, ordered by
    their number of groups, largest first, without parents. Two factors that define the
    same groups raise a DataError; a pair that looks like labels numbered within the groups
    of the other (every combination occurs, with several rows each, as casks ``a``, ``b``,
    ``c`` in every batch) gets a warning suggesting the nested formula.
    """
    try:
        order, parents = order_nested(factors, codes, per_row)
        return order, parents, False
    except _NotNested:
        pass
    order = sorted(factors, key=lambda f: -len(codes[f][1]))
    for i, f1 in enumerate(order):
        for f2 in order[i + 1:]:
            _check_distinct_factors(f1, f2, codes)
    if per_row or weights is not None:
        _warn_numbered_within(order, codes, weights)
    return order, [], True


class _NotNested(DataError):
    """Two grouping factors that are not nested (so crossed); the message says which."""


def _check_distinct_factors(f1, f2, codes):
    fi, fl = codes[f1]
    ci, cl = codes[f2]
    if len(fl) == len(cl) and len(np.unique(fi * len(cl) + ci)) == len(fl):
        raise DataError(
            f"the grouping factors '{f1}' and '{f2}' define the same groups; "
            "their variances cannot be told apart: keep one of them"
        )


def _warn_numbered_within(order, codes, weights=None):
    """Warn where two single-column crossed factors look like labels numbered within the other's groups."""
    import warnings

    # a column that also appears in an interaction factor (group in group/subject) is
    # known to the formula's author as a grouping of its own: no warning about it
    in_interactions = {col for f in order if ":" in f for col in f.split(":")}
    for i, big in enumerate(order):
        for small in order[i + 1:]:
            if ":" in big or ":" in small or big in in_interactions or small in in_interactions:
                continue
            bi, bl = codes[big]
            si, sl = codes[small]
            cell_rows = np.bincount(pd.factorize(bi * len(sl) + si)[0], weights=weights)
            if len(cell_rows) == len(bl) * len(sl) and np.median(cell_rows) > 1:
                lab = str(sl[0])
                warnings.warn(NestingWarning(
                    f"the grouping factors '{big}' and '{small}' are fitted as crossed: every '{small}' label "
                    f"occurs in every '{big}' group, with several rows in each combination. If the labels of "
                    f"'{small}' are numbered within each '{big}' group ('{small}' {lab!r} of one '{big}' group is "
                    f"not '{small}' {lab!r} of another), write (1 | {big}/{small}), that is (1 | {big}) + "
                    f"(1 | {big}:{small})", outer=big, inner=small), stacklevel=5)


def order_nested(factors, codes, per_row=False):
    """Order the grouping factors finest first and check that each is nested in the next.

    Returns the ordered factors and, for each but the last, the parent group of each of its
    groups. Factors that are not nested raise a DataError naming them and an offending
    group, and saying what the data look like (see :func:`_not_nested`). ``per_row``: the
    codes are one per row (not one per distinct combination of labels), so that the rows of
    each combination can be counted.
    """
    if len(factors) <= 1:
        return factors, []
    order = sorted(factors, key=lambda f: -len(codes[f][1]))
    parents = []
    for fine, coarse in zip(order[:-1], order[1:], strict=True):
        fi, fl = codes[fine]
        ci, cl = codes[coarse]
        if len(fl) == len(cl) and len(np.unique(fi * len(cl) + ci)) == len(fl):
            raise DataError(
                f"the grouping factors '{fine}' and '{coarse}' define the same groups; "
                "their variances cannot be told apart: keep one of them"
            )
        parent = np.full(len(fl), -1, dtype=np.int64)
        parent[fi] = ci
        clash = np.flatnonzero(parent[fi] != ci)
        if clash.size:
            raise _NotNested(_not_nested(fine, coarse, codes, int(fi[clash[0]]), per_row))
        parents.append(parent)
    return order, parents


def example_groups(codes, labels, mask):
    shown = [repr(str(labels[c])) for c in pd.unique(codes[mask])[:3]]
    return ", ".join(shown) + (", ..." if len(pd.unique(codes[mask])) > 3 else "")


def _not_nested(fine, coarse, codes, g, per_row):
    """The message for grouping factors that are not nested (``fine`` has a group ``g`` in two ``coarse`` groups).

    Two single-column factors whose labels cross are read in one of two ways:

    * every combination of their labels holds one row (with ``per_row``): the factors are
      crossed (raters and students, plates and samples), since nesting one in the other would
      leave groups of one row whose variance cannot be told from the residual's; no nesting
      is suggested, crossed factors are not supported yet;
    * otherwise, labels numbered within the groups of the other factor (cask "a" in every
      batch, as in pastes) are the common case: the factor with fewer labels is the one
      numbered within the other, and ``(1 | other/numbered)`` is suggested, with the
      crossed reading named as the alternative.
    """
    fi, fl = codes[fine]
    ci, cl = codes[coarse]
    found_in = example_groups(ci, cl, fi == g)
    head = f"the grouping factor '{fine}' is not nested in '{coarse}': its group {fl[g]!r} occurs in the " \
           f"'{coarse}' groups {found_in}"
    simple = ":" not in fine and ":" not in coarse
    if not simple:
        return (f"{head}. Only nested factors are supported (crossed factors are not yet); group the finer factor "
                "within the coarser one by joining their columns with ':'")
    cell_rows = np.bincount(pd.factorize(fi * len(cl) + ci)[0]) if per_row else None
    if cell_rows is not None and np.median(cell_rows) == 1:
        return (f"the grouping factors '{fine}' and '{coarse}' are crossed: each combination of their labels "
                f"holds {'a single row' if cell_rows.max() == 1 else 'mostly a single row'}, and "
                f"'{fine}' group {fl[g]!r} occurs in the '{coarse}' groups {found_in}, so neither is nested in "
                "the other. Crossed grouping factors are not supported yet")
    # the factor with fewer labels is taken as numbered within the other
    if len(cl) < len(fl):
        outer, inner = fine, coarse
    else:
        outer, inner = coarse, fine
    both = len(cl) == len(fl)
    lab = _first_label(codes, inner)
    hint = (f"If the labels of '{inner}' are numbered within each '{outer}' group ('{inner}' {lab!r} of one "
            f"'{outer}' group is not '{inner}' {lab!r} of another), write (1 | {outer}/{inner}), that is "
            f"(1 | {outer}) + (1 | {outer}:{inner}), or group by '{outer}:{inner}' in place of '{inner}'")
    if both:
        hint += f" (or (1 | {inner}/{outer}) if it is the other way round)"
    return (f"{head}. {hint}; if the same '{inner}' groups really occur in several '{outer}' groups, the factors "
            "are crossed, and crossed factors are not supported yet")


def _first_label(codes, factor):
    return str(codes[factor][1][0])


def _plain_design(spec, frame):
    """Whether every part of the formula is an intercept and numeric columns (no formulaic)."""
    return all(plain_columns(rhs, frame) is not None for rhs in (spec.fixed, *(bar.expr for bar in spec.bars)))


def as_frame(data):
    if isinstance(data, pd.DataFrame):
        return data
    if not isinstance(data, Mapping):
        raise TypeError(
            "data must be a pandas DataFrame or a mapping of column names to "
            f"1-D arrays, got {type(data).__name__}"
        )
    columns = {}
    for name, values in data.items():
        if isinstance(values, pd.Series):
            arr = values.array
        else:
            arr = np.asarray(values)
        if arr.ndim != 1:
            raise DataError(
                f"column '{name}' must be 1-D, got an array of shape {np.shape(arr)}"
            )
        columns[name] = arr
    lengths = {name: len(v) for name, v in columns.items()}
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"'{k}' ({n})" for k, n in lengths.items())
        raise DataError(f"the columns have different lengths: {listed}")
    return pd.DataFrame(columns)


def check_new_values(frame, roles, needed_for):
    """Raise naming the first column of ``roles`` (name to role) with missing or non-finite values in new rows.

    ``needed_for`` ends the message: what needs every column (e.g. "predictions need every
    column the model uses").
    """
    for name, role in roles.items():
        bad = bad_mask(frame[name])
        if bad.any():
            raise DataError(f"column '{name}' (used in {role}) has {int(bad.sum())} missing or non-finite values "
                            f"in the new data, e.g. at row {int(np.flatnonzero(bad)[0])}; {needed_for}")


def check_columns(frame, roles):
    available = [str(c) for c in frame.columns]
    problems = []
    for name, role in roles.items():
        if name in frame.columns:
            continue
        # Case slips ("Days" for "days") first, then near spellings; the
        # cutoff is below difflib's default so short names ("sd" for "se")
        # still get a suggestion.
        close = [c for c in available if c.lower() == name.lower()]
        close += difflib.get_close_matches(name, available, n=3, cutoff=0.5)
        close = list(dict.fromkeys(close))[:3]
        hint = (
            "; did you mean " + " or ".join(f"'{c}'" for c in close) + "?"
            if close
            else ""
        )
        problems.append(f"column '{name}' (used in {role}) is not in the data{hint}")
    if problems:
        raise DataError("\n".join(problems))
    if not frame.columns.is_unique:
        duplicated = frame.columns[frame.columns.duplicated()]
        twice = [name for name in roles if name in duplicated]
        if twice:
            raise DataError(f"the data has several columns named '{twice[0]}'")
    _check_column_types(frame, roles)


_NOT_PREDICTORS = ("the response", "the grouping factor", "known_sd", "known_var", "weights")


def _check_column_types(frame, roles):
    """Refuse predictors that would be read as something other than what they hold.

    A column named ``Intercept`` (the name of the generated intercept), complex numbers,
    dates and durations, and numbers stored as text (which formulaic would turn into one
    dummy column per distinct value) are refused with a message saying what to do.
    """
    categorical = getattr(roles, "categorical", frozenset())
    for name, role in roles.items():
        if role in _NOT_PREDICTORS:
            continue
        where = f"column '{name}' (used in {role})"
        if name == "Intercept":
            raise DataError(
                f"{where} has the name bayeshlm gives the intercept, so the two could not be told apart "
                "in the results; rename the column, e.g. df.rename(columns={'Intercept': 'intercept_value'})"
            )
        series = frame[name]
        dtype = series.dtype
        if isinstance(dtype, np.dtype) and dtype.kind in "biuf":
            continue  # plain numbers: nothing to say
        kind = _value_kind(series)
        if kind == "complex":
            raise DataError(
                f"{where} holds complex numbers ({dtype}); a predictor must be real: put the real and "
                "imaginary parts (or the modulus and angle) in separate columns"
            )
        if kind == "datetime":
            raise DataError(
                f"{where} holds dates or times ({dtype}); a predictor must be a number: convert it, e.g. to "
                f"years since the first date with (df['{name}'] - df['{name}'].min()).dt.days / 365.25, or to "
                f"the calendar year with df['{name}'].dt.year"
            )
        if kind == "timedelta":
            raise DataError(
                f"{where} holds durations ({dtype}); a predictor must be a number: convert it, e.g. to hours "
                f"with df['{name}'].dt.total_seconds() / 3600"
            )
        if kind == "text" and name not in categorical:
            problem = _numeric_text(series)
            if problem:
                raise DataError(
                    f"{where} {problem[0]}, so it would be read as a category with one column per distinct value "
                    f"({problem[1]} of them); convert it with pd.to_numeric(df['{name}'], errors='coerce') (the "
                    "values that are not numbers become missing: fix them, or pass missing='drop'), or read the "
                    "file with na_values=[...] for the marker; if it is a category, write C("
                    f"{name}) in the formula or make the column categorical (df['{name}'].astype('category'))"
                )


def _value_kind(series):
    """``"complex"``, ``"datetime"``, ``"timedelta"``, ``"text"`` (strings or Python objects) or ``"other"``."""
    dtype = series.dtype
    if pd.api.types.is_complex_dtype(dtype):
        return "complex"
    if pd.api.types.is_datetime64_any_dtype(dtype) or isinstance(dtype, pd.PeriodDtype):
        return "datetime"
    if pd.api.types.is_timedelta64_dtype(dtype):
        return "timedelta"
    if isinstance(dtype, pd.CategoricalDtype) or pd.api.types.is_bool_dtype(dtype):
        return "other"
    if pd.api.types.is_object_dtype(dtype) or pd.api.types.is_string_dtype(dtype):
        inferred = pd.api.types.infer_dtype(series, skipna=True)
        if inferred in ("datetime", "datetime64", "date", "period"):
            return "datetime"
        if inferred == "timedelta":
            return "timedelta"
        if inferred == "complex":
            return "complex"
        return "text"
    return "other"


def _numeric_text(series):
    """How a text column looks numeric, or None when it is ordinary text.

    Returns ``(phrase, n_distinct)``: a phrase for a message (naming the values that are not
    numbers and their rows), and the number of distinct values.

    A column counts as numbers read as text when at least half of its non-missing rows parse
    as numbers: typically a CSV column of numbers with a missing-value marker (``"."``) that
    made the whole column text.
    """
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    present = codes >= 0
    n_rows = int(present.sum())
    if n_rows == 0:
        return None
    parsed = pd.to_numeric(pd.Series(np.asarray(uniques, dtype=object), dtype=object), errors="coerce")
    is_number = parsed.notna().to_numpy()
    numeric_rows = int(is_number[codes[present]].sum())
    if 2 * numeric_rows < n_rows:
        return None
    if numeric_rows == n_rows:
        shown = ", ".join(repr(str(u)) for u in uniques[:3])
        return f"holds numbers written as text (dtype {series.dtype}: {shown}, ...)", len(uniques)
    bad = np.flatnonzero(~is_number)
    parts = []
    for u in bad[:3]:
        rows = np.flatnonzero(codes == u)
        listed = ", ".join(map(str, rows[:_SHOW_ROWS])) + (", ..." if rows.size > _SHOW_ROWS else "")
        parts.append(f"{str(uniques[u])!r} in {rows.size} row{'s' if rows.size > 1 else ''} "
                     f"(row position{'s' if rows.size > 1 else ''} {listed})")
    more = f" and {bad.size - 3} other values" if bad.size > 3 else ""
    return (f"looks numeric but is read as text (dtype {series.dtype}; a missing-value marker in a CSV file "
            f"makes the whole column text): {numeric_rows} of its {n_rows} values are numbers, and these are "
            f"not: {'; '.join(parts)}{more}"), len(uniques)


def check_numeric(series, name, role):
    dtype = series.dtype
    numeric = pd.api.types.is_bool_dtype(dtype) or (
        pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_complex_dtype(dtype)
    )
    if not numeric:
        problem = _numeric_text(series) if _value_kind(series) == "text" else None
        if problem:
            raise DataError(
                f"column '{name}' ({role}) must be numeric (float, int or bool): it {problem[0]}; convert it with "
                f"pd.to_numeric(df['{name}'], errors='coerce') and fix or drop the values that are not numbers"
            )
        raise DataError(
            f"column '{name}' ({role}) must be numeric (float, int or bool), "
            f"got dtype {dtype}"
        )


def known_array(values, name, n_rows):
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{name} must be a column name or an array of numbers") from exc
    if arr.ndim != 1:
        raise DataError(
            f"{name} must be a column name or a 1-D array, got shape {arr.shape}"
        )
    if len(arr) != n_rows:
        raise DataError(f"{name} has {len(arr)} values but the data has {n_rows} rows")
    return arr


def bad_mask(series):
    """Rows of a column that are missing or, for numbers, not finite."""
    dtype = series.dtype
    if isinstance(dtype, np.dtype) and dtype.kind in "biu":  # cannot hold a missing value
        return np.zeros(len(series), dtype=bool)
    if pd.api.types.is_bool_dtype(dtype) or (
        pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_complex_dtype(dtype)
    ):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
        return ~np.isfinite(values)
    return series.isna().to_numpy()


def _handle_missing(bad, missing, n_rows, impute=False):
    """Return the positions of the rows to keep and the number dropped.

    ``impute``: the missing values left in ``bad`` are those ``missing="impute"`` does not impute.
    """
    counts = {name: int(mask.sum()) for name, mask in bad.items()}
    if not any(counts.values()):
        return np.arange(n_rows, dtype=np.int64), 0
    if missing == "raise":
        lines = []
        for name, count in counts.items():
            if count:
                rows = np.flatnonzero(bad[name])[:_SHOW_ROWS].tolist()
                more = ", ..." if count > _SHOW_ROWS else ""
                listed = ", ".join(map(str, rows))
                lines.append(
                    f"column '{name}' has {count} missing or non-finite "
                    f"value{'s' if count > 1 else ''} (row positions {listed}{more})"
                )
        hint = ("missing='impute' imputes missing responses only, not missing predictors, groups, weights or "
                "offsets; pass missing='drop' to drop these rows, or fix the data") if impute else (
                "pass missing='drop' to drop these rows, or fix the data")
        raise DataError("\n".join(lines) + "\n" + hint)
    any_bad = np.logical_or.reduce(list(bad.values()))
    kept = np.flatnonzero(~any_bad).astype(np.int64)
    if len(kept) == 0:
        raise DataError("every row has a missing or non-finite value in a used column")
    return kept, n_rows - len(kept)


def _response(series, name):
    y = np.ascontiguousarray(series.to_numpy(dtype=np.float64))
    if y.min() == y.max():
        raise DataError(
            f"the response '{name}' is constant ({y[0]:g} in every row); "
            "there is nothing to model"
        )
    return y


def evaluate_terms(rhs, frame, role):
    try:
        matrix, names, spec = model_matrix(rhs, frame)
    except Exception as exc:
        raise DataError(f"cannot evaluate {role} '{rhs}': {exc}") from exc
    twice = [name for name in dict.fromkeys(names) if names.count(name) > 1]
    if twice:
        raise DataError(
            f"two columns of {role} '{rhs}' are both named '{twice[0]}': a data column has the name of a term "
            f"the formula generates (a column named 'x:z' beside x * z, or 'c[T.b]' beside a categorical c); "
            "rename that column"
        )
    check_finite(matrix, names, role)
    return matrix, names, spec


def evaluate_spec(model_spec, frame, role):
    """A design evaluated on new rows with a formulaic ``ModelSpec`` kept from the fit.

    Category levels and the state of transforms (``center``, ``scale``) are those of the
    data the spec was made on; errors name ``role``.
    """
    import warnings

    from formulaic.errors import DataMismatchWarning

    formula = getattr(model_spec, "formula", None)
    try:
        if formula is not None:  # integer columns evaluated as float64, as when the spec was made
            frame = as_float_columns(str(formula), frame)
        with warnings.catch_warnings():
            # a category level the spec has not seen would be coded as the reference level
            warnings.simplefilter("error", DataMismatchWarning)
            M = np.asarray(model_spec.get_model_matrix(frame), dtype=np.float64)
    except Exception as exc:
        raise DataError(f"cannot evaluate {role}: {exc}") from exc
    if M.ndim == 1:
        M = M[:, None]
    check_finite(M, list(model_spec.column_names), role)
    return np.ascontiguousarray(M)


def check_finite(matrix, names, role):
    """Raise naming the first column of an evaluated design with non-finite values."""
    finite = np.isfinite(matrix)
    if not finite.all():
        counts = (~finite).sum(axis=0)
        j = int(np.flatnonzero(counts)[0])
        raise DataError(
            f"column '{names[j]}' of {role} has {int(counts[j])} non-finite "
            "values after evaluation (e.g. log of zero)"
        )


def random_design(spec, frame, factor):
    blocks, names, sizes, specs = [], [], [], []
    for bar in spec.bars:
        if bar.factor != factor:
            continue
        where = f"the random-effect term ({bar.expr} | {bar.factor})"
        matrix, cols, model_spec = evaluate_terms(bar.expr, frame, where)
        if not cols:
            raise FormulaError(f"{where} has no columns", spec.formula)
        for col in cols:
            if col in names:
                raise FormulaError(
                    f"the random coefficient '{col}' appears twice on the "
                    f"grouping factor '{factor}'",
                    spec.formula,
                )
            names.append(col)
        # lme4 expands (x || g) into independent terms, one per column.
        sizes.extend([len(cols)] if bar.correlated else [1] * len(cols))
        blocks.append(matrix)
        specs.append(model_spec)
    X = np.ascontiguousarray(np.hstack(blocks), dtype=np.float64)
    return X, names, sizes, specs


def _check_rank(M, names, what):
    """Raise if the columns of `M` are linearly dependent, or cannot be computed with.

    The rank is judged on the columns centred and scaled to unit length, so that the verdict
    does not depend on the location or the units of any column: ``x + 1e5`` beside an
    intercept is as good a column as ``x``, and ``x * 1e-300`` is not zero. Each column is
    first divided by its largest absolute value (no overflow or underflow in the squares);
    when the design holds a constant column (the intercept), or indicator columns that add up
    to one in every row (``0 + C(g)``), the ones vector lies in its span, and every other
    column is centred (two passes, so without cancellation), which changes the columns but
    not their span. Without either, the columns are only scaled.

    Raises
    ------
    DataError
        Naming a column that is zero in every row, a column whose values are too small or too
        large for double precision (with the factor to rescale it by), a column that is
        constant up to rounding beside the intercept, or the columns of a dependency.
    """
    if M.shape[1] == 0:
        return
    M = np.asarray(M, dtype=np.float64)
    if not _rank_from_gram(M, names, what):
        _rank_two_pass(M, names, what)


def _rank_from_gram(M, names, what):
    """:func:`_check_rank` from ``M'M`` and the column sums, when they are accurate enough; else False.

    The usual design (an intercept, columns of moderate magnitude whose means are within a
    few tens of their spreads) is judged from one cross-product, as fast as the check ever
    was: centring ``M'M - s s' / n`` then loses about ``eps (1 + mean^2 / var)`` of each
    correlation, and the verdict is taken only when that is far below the rank tolerance.
    Anything else (no or several constant columns, a column nearly constant, tiny or huge
    values, large means) goes to the two-pass computation.
    """
    n, p = M.shape
    if p == 1 and names[0] == "Intercept":
        return True
    G = M.T @ M
    if "Intercept" in names:  # the generated column of ones (a data column cannot take its name)
        i = list(names).index("Intercept")
        s = G[i]
    else:
        s = np.ones(n) @ M
        i = -1
    diag = G.diagonal()
    eps = np.finfo(float).eps
    if not (np.isfinite(G.sum()) and diag.min() >= n * _TINY**2 and diag.max() <= _HUGE**2):
        return False
    var = diag - s * s / n
    suspect = np.flatnonzero(var <= 64 * eps * diag)
    if len(suspect) != 1 or (i < 0 and M[:, suspect[0]].max() != M[:, suspect[0]].min()) or (0 <= i != suspect[0]):
        return False
    i = int(suspect[0])
    rest = np.arange(p)
    rest = rest[rest != i]
    if len(rest) <= 1:  # one column beside the intercept, and not constant: nothing can depend
        return True
    C = G[rest][:, rest] - np.outer(s[rest], s[rest]) / n
    v = C.diagonal()
    if 100.0 * len(rest) * eps * float((diag[rest] / v).max()) > _RANK_TOL:
        return False
    d = 1.0 / np.sqrt(v)
    intercept = (names[i], s[rest] / np.sqrt(n) * d, np.sqrt(diag[rest]) * d)
    _judge(C * d[:, None] * d[None, :], [names[j] for j in rest], what, intercept=intercept)
    return True


def _rank_two_pass(M, names, what):
    """:func:`_check_rank` on the columns scaled by their largest values and centred in two passes."""
    n, p = M.shape
    # column by column: NumPy reduces a tall, narrow array along its rows slowly
    hi = np.array([M[:, j].max() for j in range(p)])
    lo = np.array([M[:, j].min() for j in range(p)])
    peak = np.maximum(np.abs(hi), np.abs(lo))
    check_magnitudes(peak, names, what)
    constant = np.flatnonzero(hi == lo)
    if len(constant) > 1:
        _raise_dependent([[names[j] for j in constant]], what)
    if len(constant):  # the intercept: orthogonal to the centred columns, left out
        cover = []
    else:
        cover = _indicator_cover(M, lo, hi, names)
        if not cover:  # the ones vector is not known to be in the span: scale only
            G, _, _ = _scaled_gram(M, np.arange(p), peak, np.zeros(p))
            d = 1.0 / np.sqrt(np.diag(G))
            _judge(G * d[:, None] * d[None, :], names, what)
            return
    centred = [j for j in range(p) if j not in cover and j not in constant]
    cols = np.array(cover + centred, dtype=np.int64)
    if len(cols) == 0:
        return
    # a first estimate of the means; the second pass below removes what is left of them
    mean = np.where(np.arange(len(cols)) >= len(cover), (np.ones(n) @ M)[cols] / peak[cols] / n, 0.0)
    G, t, squares = _scaled_gram(M, cols, peak[cols], mean)
    # the second pass: remove what rounding left of the means of the centred columns
    e = np.where(np.arange(len(cols)) >= len(cover), t, 0.0)
    G -= (np.outer(t, e) + np.outer(e, t) - np.outer(e, e)) / n
    var = np.diag(G).copy()
    flat = [k for k in range(len(cover), len(cols)) if var[k] <= (_CONSTANT_TOL ** 2) * n]
    if flat:
        j = cols[flat[0]]
        base = f"'{names[constant[0]]}'" if len(constant) else "the indicator columns, which add up to one,"
        raise DataError(
            f"column '{names[j]}' of the {what} is constant up to rounding (it varies by less than "
            f"{_CONSTANT_TOL:g} of its largest value), so it duplicates {base}; remove it"
        )
    d = 1.0 / np.sqrt(var)
    intercept = None
    if len(constant):
        intercept = (names[constant[0]], mean * np.sqrt(n) * d, np.sqrt(squares) * d)
    _judge(G * d[:, None] * d[None, :], [names[j] for j in cols], what, intercept=intercept)


def _scaled_gram(M, cols, peak, shift, rows=1 << 16):
    """Cross-products of ``Z = M[:, cols] / peak - shift`` by chunks of rows: ``(Z'Z, Z'1, sum of (M / peak)^2)``.

    Chunks keep the memory at a few MB whatever the number of rows.
    """
    p = len(cols)
    if p and np.array_equal(cols, np.arange(cols[0], cols[0] + p)):
        cols = slice(int(cols[0]), int(cols[0]) + p)  # a view, not a copy, of each chunk
    G, t = np.zeros((p, p)), np.zeros(p)
    for start in range(0, M.shape[0], rows):
        scaled = M[start:start + rows, cols] / peak
        scaled -= shift
        G += scaled.T @ scaled
        t += np.ones(scaled.shape[0]) @ scaled
    # the squares of the unshifted columns, only used to weigh the terms of a dependency
    squares = np.diag(G) + 2.0 * shift * t + M.shape[0] * shift**2
    return G, t, squares


def check_magnitudes(peak, names, what):
    """Raise for a zero column, or one whose values cannot be squared in double precision."""
    zero = np.flatnonzero(peak == 0)
    if len(zero):
        raise DataError(
            f"column '{names[zero[0]]}' of the {what} is zero in every row "
            "(an unused level of a categorical variable?)"
        )
    for j, p in enumerate(peak):
        if not _TINY <= p <= _HUGE:
            size = "small" if p < _TINY else "large"
            raise DataError(
                f"column '{names[j]}' of the {what} is too {size} to compute with: its largest absolute value is "
                f"{p:.3g}, and squares of such numbers {'underflow to zero' if p < _TINY else 'overflow'} in "
                f"double precision; rescale it, e.g. multiply it by {10.0 ** -np.round(np.log10(p)):.0e} "
                "(a change of units)"
            )


def _indicator_cover(M, lo, hi, names):
    """Indices of 0/1 columns that add up to one in every row (``0 + C(g)``), or an empty list.

    Candidates are the indicator columns of one categorical term (``g[a]``, ``g[b]``, ...,
    grouped by the name before ``[``), then all indicator columns together; the sum is
    checked exactly.
    """
    indicator = [j for j in np.flatnonzero((lo >= 0) & (hi <= 1)) if np.all((M[:, j] == 0) | (M[:, j] == 1))]
    if len(indicator) < 2:
        return []
    groups = {}
    for j in indicator:
        if "[" in names[j]:
            groups.setdefault(names[j].rsplit("[", 1)[0], []).append(j)
    for cols in [*groups.values(), indicator]:
        if len(cols) > 1 and np.all(M[:, cols].sum(axis=1) == 1):
            return [int(j) for j in cols]
    return []


def _judge(G, names, what, tol=_RANK_TOL, intercept=None):
    """Raise if unit-length columns with cross-product matrix `G` are linearly dependent.

    ``intercept = (name, a, b)`` when the columns were centred: a dependency ``v`` of the
    centred columns is, in the columns as given, the terms ``v_j x_j`` (of length
    ``|v_j| b_j``) and a multiple of the ones vector of length ``|a'v|``; the intercept is
    part of the dependency when that multiple is not negligible beside the terms.
    """
    eigval, eigvec = np.linalg.eigh(G)
    null = eigval < tol * max(eigval[-1], 1.0)
    if not null.any():
        return
    groups = []
    for v in eigvec[:, null].T:
        size = np.abs(v) if intercept is None else np.abs(v) * intercept[2]
        involved = [names[j] for j in np.flatnonzero(size > _INVOLVED_TOL * size.max())]
        if intercept is not None and abs(float(v @ intercept[1])) > _INVOLVED_TOL * size.max():
            involved.insert(0, intercept[0])
        groups.append(involved)
    _raise_dependent(groups, what)


def _raise_dependent(groups, what):
    listed = "; ".join(", ".join(f"'{n}'" for n in g) for g in groups)
    raise DataError(
        f"the {what} is rank deficient: the columns {listed} are linearly "
        "dependent (one is a multiple of another, a combination of others, or "
        "a constant that duplicates the intercept); remove one of them"
    )


def check_gram_rank(G, names, what):
    """:func:`_check_rank` given the cross-product matrix ``G = M'M`` (from statistics by chunks).

    Without the rows, a column is centred through the intercept's row of `G` (``n`` and the
    column sums), ``G - s s' / n``. That difference loses the digits the column's mean has
    beyond its spread, so the tolerance grows with that loss, and a column whose spread is
    lost entirely is reported as such. A zero diagonal entry beside a non-zero sum is a
    column whose squares underflowed, not a zero column.
    """
    G = np.asarray(G, dtype=np.float64)
    if G.shape[0] == 0:
        return
    norm2 = np.diag(G).copy()
    if not np.all(np.isfinite(G)):
        j = int(np.flatnonzero(~np.isfinite(G).all(axis=0))[0])
        raise DataError(
            f"column '{names[j]}' of the {what} is too large to compute with: its squares overflow in double "
            "precision; rescale it (a change of units)"
        )
    for j in np.flatnonzero(norm2 == 0):
        if np.any(G[j] != 0):
            raise DataError(
                f"column '{names[j]}' of the {what} is too small to compute with: its squares underflow to zero "
                "in double precision; rescale it (a change of units)"
            )
        raise DataError(
            f"column '{names[j]}' of the {what} is zero in every row "
            "(an unused level of a categorical variable?)"
        )
    if "Intercept" not in names:
        scale = 1.0 / np.sqrt(norm2)
        _judge(G * scale[:, None] * scale[None, :], names, what)
        return
    i = list(names).index("Intercept")
    rest = np.array([j for j in range(len(names)) if j != i], dtype=np.int64)
    if len(rest) == 0:
        return
    n, s = G[i, i], G[i, rest]
    C = G[np.ix_(rest, rest)] - np.outer(s, s) / n
    var = np.diag(C)
    flat = np.flatnonzero(var <= 64 * np.finfo(float).eps * norm2[rest])
    if len(flat):
        j = rest[flat[0]]
        raise DataError(
            f"column '{names[j]}' of the {what} is constant, or varies too little against its mean for its "
            "spread to survive in the statistics, so it duplicates 'Intercept'; if it does vary, subtract a "
            "value near its mean first"
        )
    # digits lost to the means: each centred sum of squares against the uncentred one; the
    # correlations are good to about eps times that ratio, summed over the columns
    loss = np.finfo(float).eps * norm2[rest] / var
    d = 1.0 / np.sqrt(var)
    intercept = ("Intercept", s / np.sqrt(n) * d, np.sqrt(norm2[rest]) * d)
    _judge(C * d[:, None] * d[None, :], [names[j] for j in rest], what,
           tol=max(_RANK_TOL, 100.0 * len(rest) * float(loss.max())), intercept=intercept)


def _labels_as_str(uniques):
    values = np.asarray(uniques)
    if values.dtype.kind == "f":
        # Integer codes stored as floats (common after reading a CSV with gaps) print as
        # "12", not "12.0": value by value, so that a label reads the same in any subset of
        # the rows (new data for predictions included).
        integral = (values == np.round(values)) & (np.abs(values) < 2**62)
        as_int = np.where(integral, values, 0).astype(np.int64).astype(str)
        return np.where(integral, as_int, values.astype(str)).astype(object)
    return values.astype(str).astype(object)


def group_codes(frame, columns):
    """Group codes in order of first appearance, and their string labels.

    Groups are told apart by their values; their labels are text. Two different groups
    whose labels read the same (``1`` and ``"1"`` in one column; ``a="p:q", b="z"`` and
    ``a="p", b="q:z"`` in ``a:b``, both ``"p:q:z"``) raise a DataError naming both, since
    results, predictions and saved files find groups by their labels.
    """
    codes, labels = None, None
    parts = []  # per column: (codes of the current groups into its uniques, its uniques)
    for name in columns:
        col_codes, uniques = pd.factorize(frame[name], sort=False)
        col_labels = _labels_as_str(uniques)
        _check_distinct_labels(col_labels, lambda i, u=uniques, n=name: f"{n}={u[i]!r} ({type(u[i]).__name__})",
                               f"the grouping column '{name}'",
                               f"convert the column to one type, e.g. df['{name}'] = df['{name}'].astype(str)")
        if codes is None:
            codes, labels = col_codes, col_labels
            parts = [(np.arange(len(uniques)), uniques)]
            continue
        # Interaction a:b: one code per observed pair, numbered by first
        # appearance of the pair.
        pair = codes.astype(np.int64) * len(col_labels) + col_codes
        codes, pairs = pd.factorize(pair, sort=False)
        parts = [(p[pairs // len(col_labels)], u) for p, u in parts] + [(pairs % len(col_labels), uniques)]
        left = labels[pairs // len(col_labels)].astype(str)
        right = col_labels[pairs % len(col_labels)].astype(str)
        labels = np.char.add(np.char.add(left, ":"), right).astype(object)
    if len(columns) > 1:
        def describe(i):
            return ", ".join(f"{n}={u[p[i]]!r}" for n, (p, u) in zip(columns, parts, strict=True))

        _check_distinct_labels(labels, describe, f"the grouping factor '{':'.join(columns)}'",
                               f"remove ':' from the labels of {' or '.join(repr(c) for c in columns)}")
    return np.ascontiguousarray(codes, dtype=np.int64), labels


def _check_distinct_labels(labels, describe, what, fix):
    """Raise if two groups (by value) share a label; ``describe(i)`` names group ``i``'s values."""
    if len(labels) < 2 or len(set(labels.tolist())) == len(labels):
        return
    _, first, counts = np.unique(np.asarray(labels, dtype=str), return_index=True, return_counts=True)
    if counts.max() == 1:
        return
    clash = first[np.argmax(counts > 1)]
    other = next(i for i in range(len(labels)) if i != clash and labels[i] == labels[clash])
    i, j = sorted((int(clash), int(other)))
    raise DataError(
        f"{what} has two different groups with the same label {str(labels[i])!r}: {describe(i)} and "
        f"{describe(j)}; labels are how results and predictions find groups, so {fix}"
    )


def obs_var_from(values, name):
    var = values**2 if name == "known_sd" else values
    bad = ~(np.isfinite(values) & (values > 0))
    if bad.any():
        raise DataError(
            f"{name} must be positive and finite; {int(bad.sum())} "
            f"value{'s are' if bad.sum() > 1 else ' is'} not"
        )
    return np.ascontiguousarray(var, dtype=np.float64)
