"""A log-linear model of the level-1 variance, ``hlm(..., sigma="~ z")``.

docs/design.md, "Heterogeneous level-1 variance".

Row ``i`` has level-1 variance ``sigma^2 exp(z_i' delta) / w_i`` (``w`` the precision
weights of ``weights=``, 1 without them); ``z_i`` the row's values of the one-sided formula's
columns without an intercept, so that ``sigma^2`` is the variance of a row with ``z = 0``
(the reference level of each categorical predictor). A categorical ``z`` is nlme's
``varIdent(form = ~ 1 | z)``: the SD ratio of level ``k`` to the reference is
``exp(delta_k / 2)``; a continuous ``z`` is nlme's ``varExp(form = ~ z)`` with
``delta = 2 t``.

For a given ``delta`` the model is the weighted model with weights
``w_i exp(-z_i' delta)``; this module builds the columns ``z`` and those weights, and
re-expresses a compiled model's statistics for them. The fit is in :mod:`bayeshlm.em`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from bayeshlm.formula import model_matrix

__all__ = ["VarianceDesign", "build_variance_design", "group_keys"]


def _removes_intercept(rhs):
    """True when the right side, as formulaic parses it, drops the intercept (``0 + z``, ``z - 1``)."""
    from formulaic import Formula

    try:
        terms = [str(term) for term in Formula(rhs)]
    except Exception:  # noqa: BLE001 - a formula formulaic cannot parse is reported when it is evaluated
        return False
    return "1" not in terms


@dataclass(frozen=True, eq=False)
class VarianceDesign:
    """The predictors of the log level-1 variance, one row per row of the model.

    Attributes
    ----------
    formula : str
        The one-sided formula as written (``"~ z"``).
    Z : ndarray of shape (n_obs, k)
        Its columns without the intercept, in the user's units.
    names : tuple of str
        The columns' names as formulaic writes them (``"C(sector)[T.1]"``, ``"days"``).
    shift, scale : ndarray of shape (k,)
        The columns' means and standard deviations: the fit works with the standardised
        columns ``(Z - shift) / scale`` (docs/design.md, "Heterogeneous level-1 variance"),
        so that shifting or rescaling a column changes only the reference ``sigma`` and the
        units of its ``delta``.
    indicator : tuple of bool
        Whether each column holds only 0 and 1 (a level of a categorical predictor, or a 0/1
        column): its ``exp(delta / 2)`` is the SD ratio of that level to the reference.
    group : str or None
        The grouping of a ``(1 | g)`` term: each group ``j`` of ``g`` has its own level-1 SD,
        ``log sigma_j = log sigma + e_j`` with ``e_j ~ Normal(0, omega^2)`` (docs/design.md,
        "Heterogeneous level-1 variance"); None without one.
    group_idx : ndarray of int64, shape (n_obs,), or None
        Each row's group of ``group``.
    group_labels : tuple of str
        The groups' labels, in order of first appearance.
    terms : str
        The right side without the ``(1 | g)`` term (``""`` when there is nothing else).
    spec : formulaic.ModelSpec or None
        Evaluates ``1 + terms`` on new rows with the fitted rows' category levels and
        transforms (:func:`bayeshlm.formula.model_matrix`); its columns other than the
        intercept are ``Z``'s. None without columns.
    """

    formula: str
    Z: np.ndarray
    names: tuple
    shift: np.ndarray
    scale: np.ndarray
    indicator: tuple
    group: str | None = None
    group_idx: np.ndarray | None = None
    group_labels: tuple = ()
    terms: str = ""
    spec: object = None

    @property
    def k(self) -> int:
        """The number of variance parameters ``delta``."""
        return len(self.names)

    def standardised(self):
        """``(Z - shift) / scale``: the columns the fit's ``delta_N`` multiplies."""
        return (self.Z - self.shift) / self.scale

    def delta_user(self, delta_n):
        """``delta`` of the user's columns from the standardised ``delta_N``: ``delta_N / scale``."""
        return np.asarray(delta_n, dtype=np.float64) / self.scale

    def log_sigma2_shift(self, delta_n):
        """``log sigma^2 - log sigma_N^2 = -shift' delta``, ``sigma_N`` the SD of a row at the columns' means."""
        return -float(self.shift @ self.delta_user(delta_n))

    def weights(self, delta_n, base=None):
        """Each row's precision weight at ``delta_N``: ``base_i exp(-z_N,i' delta_N)`` (``base`` 1 when None)."""
        w = np.exp(-(self.standardised() @ np.asarray(delta_n, dtype=np.float64)))
        return w if base is None else w * base


def build_variance_design(formula, data, kept_rows):
    """The :class:`VarianceDesign` of ``sigma=`` on the model's rows.

    Parameters
    ----------
    formula : str
        A one-sided formula, ``"~ z"`` or ``"~ a + b"``; evaluated by formulaic with an
        intercept, which is then dropped (``sigma^2`` is the reference variance), so a
        categorical predictor is coded by its levels other than the first. An explicit
        ``0`` or ``- 1`` is refused: there is no intercept to remove.
    data : pandas.DataFrame or mapping
        The data the model was compiled on.
    kept_rows : ndarray of int
        The rows of `data` the model kept (``Design.kept_rows``).
    """
    if not isinstance(formula, str) or not formula.strip().startswith("~"):
        raise ValueError(f"sigma= takes a one-sided formula of predictors of log sigma^2, such as '~ z', "
                         f"got {formula!r}")
    rhs = formula.strip()[1:].strip()
    if not rhs:
        raise ValueError("sigma= has no predictors: write '~ z'")
    frame = data if isinstance(data, pd.DataFrame) else pd.DataFrame(dict(data))
    frame = frame.iloc[np.asarray(kept_rows)].reset_index(drop=True)
    rhs, group, group_idx, group_labels = _group_term(rhs, frame, formula)
    if not rhs:  # only the group term
        empty = np.zeros(0)
        return VarianceDesign(formula=formula.strip(), Z=np.zeros((len(frame), 0)), names=(), shift=empty,
                              scale=empty.copy(), indicator=(), group=group, group_idx=group_idx,
                              group_labels=group_labels)
    if _removes_intercept(rhs):
        raise ValueError(f"sigma={formula!r} removes an intercept, but the sigma formula has none to remove: "
                         "sigma^2 is the variance of the reference row (z = 0, the first level of a categorical z); "
                         "write '~ z'")
    try:
        M, names, spec = model_matrix(f"1 + {rhs}", frame)
    except Exception as exc:
        raise ValueError(f"cannot evaluate sigma={formula!r} on the model's rows (its columns must be present and "
                         f"free of missing values in every row the model keeps): {exc}") from exc
    keep = [i for i, n in enumerate(names) if n != "Intercept"]
    if not keep:
        raise ValueError(f"sigma={formula!r} has only an intercept: that is the model with one level-1 variance; "
                         "leave sigma= out")
    Z = np.ascontiguousarray(M[:, keep], dtype=np.float64)
    names = tuple(names[i] for i in keep)
    bad = ~np.all(np.isfinite(Z), axis=0)
    if bad.any():
        raise ValueError(f"the sigma formula's column(s) {', '.join(n for n, b in zip(names, bad, strict=True) if b)} "
                         "have missing or non-finite values; they must be finite in every row the model keeps")
    shift = Z.mean(axis=0)
    scale = Z.std(axis=0)
    if np.any(scale <= 1e-12 * np.maximum(1.0, np.abs(shift))):
        const = [n for n, s, c in zip(names, scale, shift, strict=True) if s <= 1e-12 * max(1.0, abs(c))]
        raise ValueError(f"the sigma formula's column(s) {', '.join(const)} are constant: a constant predictor of "
                         "log sigma^2 is sigma itself")
    Zs = (Z - shift) / scale
    if np.linalg.matrix_rank(Zs) < Zs.shape[1]:
        raise ValueError(f"the columns of sigma={formula!r} ({', '.join(names)}) are linearly dependent (with the "
                         "intercept): their delta are not identified")
    indicator = tuple(bool(np.all((col == 0.0) | (col == 1.0))) for col in Z.T)
    return VarianceDesign(formula=formula.strip(), Z=Z, names=names, shift=shift, scale=scale, indicator=indicator,
                          group=group, group_idx=group_idx, group_labels=group_labels, terms=rhs, spec=spec)


_GROUP_TERM = re.compile(r"\(\s*(?P<lhs>[^|()]*)\|\s*(?P<g>[^|()]+?)\s*\)")


def _group_term(rhs, frame, formula):
    """``(rhs without its (1 | g) term, g, each row's group, the labels)``; ``g`` None without such a term."""
    found = list(_GROUP_TERM.finditer(rhs))
    if not found:
        if "|" in rhs:
            raise ValueError(f"sigma={formula!r}: the only grouping term sigma= takes is '(1 | g)'")
        return rhs, None, None, ()
    if len(found) > 1:
        raise ValueError(f"sigma={formula!r} has {len(found)} grouping terms; it takes one, '(1 | g)'")
    term = found[0]
    if term.group("lhs").strip() != "1":
        raise ValueError(f"sigma={formula!r}: a group's level-1 SD varies by its intercept only; write '(1 | "
                         f"{term.group('g').strip()})'")
    group = term.group("g").strip()
    columns = [c.strip() for c in group.split(":")]
    for c in columns:
        if c not in frame.columns:
            raise ValueError(f"sigma={formula!r}: the grouping column {c!r} is not in the data")
    keys = group_keys(frame, columns)
    if keys is None:
        raise ValueError(f"sigma={formula!r}: the grouping column(s) {group!r} have missing values in rows the "
                         "model keeps")
    codes, labels = pd.factorize(keys, sort=False)
    if len(labels) < 2:
        raise ValueError(f"sigma={formula!r}: {group!r} has one group; a per-group level-1 SD needs several")
    rest = (rhs[:term.start()] + rhs[term.end():]).strip()
    rest = re.sub(r"^\+|\+$", "", re.sub(r"\+\s*\+", "+", rest)).strip()
    return rest, group, np.ascontiguousarray(codes, dtype=np.int64), tuple(str(x) for x in labels)


def group_keys(frame, columns):
    """Each row's label of the group of the columns ``columns`` (``a:b`` joined by ``:``); None if one is missing.

    The labels of the fitted rows' groups (``VarianceDesign.group_labels``) and of new rows
    are made here alike.
    """
    values = frame[columns].astype(str)
    if values.isin(["nan", "None", "<NA>"]).any().any() or frame[columns].isna().any().any():
        return None
    keys = values.agg(":".join, axis=1) if len(columns) > 1 else values[columns[0]]
    return keys.to_numpy(dtype=object)
