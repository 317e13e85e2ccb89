"""Models compiled from per-group statistics computed chunk by chunk: data beyond memory.

The samplers and the EM fit read nothing of the data but the per-group cross-products
(:mod:`samplers.suffstats`) and the column moments behind the default priors; both are sums
over rows, so they can be computed on pieces of the data and added. :func:`hlm_stats` does
this in two passes over the rows, never holding more than one piece:

1. a scan: the group labels (each combination of the grouping columns once), the levels of
   categorical predictors, and the count of missing values per column;
2. the statistics: each piece's fixed and random designs, evaluated with the formula's
   specification fixed by the scan, reduced to per-group cross-products, then summed.

The pieces are row chunks of a pandas DataFrame, or the partitions of a Dask DataFrame
(Parquet files included), where both passes are a map-reduce run by Dask: per-partition
results and a tree of sums, no shuffle. The per-piece functions are the same plain numpy
code in both cases, and the result is the in-memory :func:`bayeshlm.hlm` model up to the
order of floating-point additions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from bayeshlm.basis import Basis
from bayeshlm.data import (
    DataError,
    Design,
    as_frame,
    bad_mask,
    cells_of,
    check_columns,
    check_gram_rank,
    check_magnitudes,
    check_numeric,
    check_weights_option,
    column_roles,
    evaluate_spec,
    evaluate_terms,
    factors_of_spec,
    group_codes,
    obs_var_from,
    order_factors,
    random_design,
    warn_identification,
)
from bayeshlm.formula import offset_terms, parse_formula
from bayeshlm.model import assemble
from bayeshlm.priors import column_moments, merge_moments
from samplers.suffstats import compute_suffstats, merge_suffstats

__all__ = ["hlm_stats"]

_SHOW_ROWS = 5
_ROWS = "\x00rows"  # the column of row counts beside the grouping columns' combinations


@dataclass(frozen=True)
class _Plan:
    """What every piece needs to compute its statistics (sent once to the workers)."""

    response: str
    columns: tuple          # all used columns
    categorical: dict       # column -> its levels, for the formula's columns that are not numeric
    factor_columns: tuple   # the columns of the grouping factors
    combos: pd.Index        # one entry per combination of the grouping columns
    combo_group: np.ndarray  # finest group of each combination
    n_groups: int
    fixed_spec: object
    random_spec: tuple
    drop: bool
    chunk_rows: int = 250_000
    known: tuple = ()       # (column, "known_sd" or "known_var") of known level-1 variances
    basis: object = None    # the Basis the statistics are computed in
    weights: str | None = None  # the column of precision weights


def _is_numeric(dtype):
    return pd.api.types.is_bool_dtype(dtype) or (
        pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_complex_dtype(dtype)
    )


def _scan(frame, columns, factor_columns, categorical, drop, response, known, weights=None):
    """Pass 1 on one piece: rows, missing values per column, grouping combinations, levels.

    Also the moments of the response (and the sum of the known level-1 variances, or of the
    inverse precision weights) over the rows kept, so that pass 2 can compute the statistics
    with the response and the weights already in their final shift and scale. Precision
    weights that are zero or negative are counted, with the first rows' positions.
    """
    bad = {name: bad_mask(frame[name]) for name in columns}
    counts = {name: int(mask.sum()) for name, mask in bad.items()}
    first = {name: np.flatnonzero(mask)[:_SHOW_ROWS].tolist() for name, mask in bad.items() if counts[name]}
    if drop and any(counts.values()):
        frame = frame[~np.logical_or.reduce(list(bad.values()))]
    # each combination of the grouping columns once, in order of appearance, with its rows
    combos = (frame[list(factor_columns)].value_counts(sort=False, dropna=False).rename(_ROWS).reset_index()
              if factor_columns else None)
    levels = {name: pd.unique(frame[name].dropna()) for name in categorical}
    y_moments = None
    obs_sum = 0.0
    inv_w_sum = 0.0
    not_positive = []  # (positions in the piece, of weights 0, of negative weights)
    if not any(counts.values()) or drop:  # with missing values and "raise" the fit stops after the scan
        y = frame[response].to_numpy(dtype=np.float64)
        if y.size:
            y_moments = (float(y.size), float(y.mean()), float(((y - y.mean()) ** 2).sum()))
        if known:
            v = frame[known[0]].to_numpy(dtype=np.float64)
            obs_sum = float(np.sum(v * v if known[1] == "known_sd" else v))
        if weights is not None:
            w = frame[weights].to_numpy(dtype=np.float64)
            where = np.arange(len(bad[columns[0]]))[~np.logical_or.reduce(list(bad.values()))] if drop else None
            for mask in (w == 0.0, w < 0.0):
                rows = np.flatnonzero(mask) if where is None else where[np.flatnonzero(mask)]
                not_positive.append((int(mask.sum()), rows[:_SHOW_ROWS].tolist()))
            with np.errstate(divide="ignore"):
                inv_w_sum = float(np.sum(1.0 / w))
    return {"n": len(bad[columns[0]]), "bad": counts, "first_bad": first, "kept": len(frame),
            "combos": combos, "levels": levels, "y": y_moments, "obs_sum": obs_sum, "inv_w_sum": inv_w_sum,
            "not_positive": not_positive}


def _merge_y(scans):
    """Mean and variance of the response over all pieces (Chan, Golub & LeVeque's update)."""
    n, mean, m2 = 0.0, 0.0, 0.0
    for s in scans:
        if s["y"] is None:
            continue
        n2, mean2, m2_2 = s["y"]
        total = n + n2
        delta = mean2 - mean
        mean += delta * (n2 / total)
        m2 += m2_2 + delta * delta * (n * n2 / total)
        n = total
    return mean, m2 / n


def _prepare(frame, plan):
    """Drop rows with missing values (``missing="drop"``) and fix the categorical levels."""
    if plan.drop:
        bad = np.logical_or.reduce([bad_mask(frame[name]) for name in plan.columns])
        if bad.any():
            frame = frame[~bad]
    if plan.categorical:
        frame = frame.copy()
        for name, levels in plan.categorical.items():
            frame[name] = pd.Categorical(frame[name], categories=levels)
    return frame


def _group_of_rows(frame, plan):
    if not plan.factor_columns:
        return np.zeros(len(frame), dtype=np.int64)
    if len(plan.factor_columns) == 1:
        pos = plan.combos.get_indexer(frame[plan.factor_columns[0]])
    else:
        pos = plan.combos.get_indexer(pd.MultiIndex.from_frame(frame[list(plan.factor_columns)]))
    if (pos < 0).any():  # the scan saw every combination: this is a bug, not bad data
        raise RuntimeError("a group was not seen by the scan of the data")
    return plan.combo_group[pos]


def _piece_stats(frame, plan):
    """Pass 2 on one piece, in slices of ``plan.chunk_rows`` rows: statistics and moments (None for no rows).

    Slicing bounds the memory of the designs evaluated at once, whatever the size of a
    Dask partition.
    """
    total = None
    for start in range(0, len(frame), plan.chunk_rows):
        total = _merge(total, _slice_stats(frame.iloc[start:start + plan.chunk_rows], plan))
    return total


def _slice_stats(frame, plan):
    frame = _prepare(frame, plan)
    if len(frame) == 0:
        return None
    y = frame[plan.response].to_numpy(dtype=np.float64)
    F = evaluate_spec(plan.fixed_spec, frame, "the fixed part")
    blocks = [evaluate_spec(s, frame, "a random-effect term") for s in plan.random_spec]
    X = np.ascontiguousarray(np.hstack(blocks)) if blocks else np.zeros((len(y), 0))
    g = _group_of_rows(frame, plan)
    obs_var = None
    if plan.known:
        column, kind = plan.known
        obs_var = obs_var_from(frame[column].to_numpy(dtype=np.float64), kind)
    weights = None if plan.weights is None else frame[plan.weights].to_numpy(dtype=np.float64)
    basis = plan.basis
    stats = compute_suffstats(y, F, X, g, plan.n_groups, basis.weights(obs_var, weights), basis.shift, basis.scale)
    peaks = np.concatenate([np.max(np.abs(F), axis=0, initial=0.0), np.max(np.abs(X), axis=0, initial=0.0)])
    return stats, column_moments(y, F, X, obs_var, weights), peaks


def _merge(first, second):
    if first is None:
        return second
    if second is None:
        return first
    return (merge_suffstats(first[0], second[0]), merge_moments(first[1], second[1]),
            np.maximum(first[2], second[2]))


class _Pieces:
    """The pieces of the data and how to run a function on each (serially or by Dask)."""

    def __init__(self, source, chunk_rows, columns):
        self.dask = None
        if isinstance(source, (str, os.PathLike)) or (
            isinstance(source, (list, tuple)) and source and isinstance(source[0], (str, os.PathLike))
        ):
            dd = _dask_dataframe()
            source = dd.read_parquet(source, columns=list(columns))
        if hasattr(source, "to_delayed") and hasattr(source, "npartitions"):
            check_columns(source._meta, columns)
            self.dask = source[list(columns)]
            self.meta = self.dask._meta
            return
        frame = as_frame(source)
        check_columns(frame, columns)
        frame = frame[list(columns)]
        frame.attrs = {}  # a user's attrs (arrays, dicts) would be compared by every pandas.concat
        self.meta = frame.iloc[:0]
        step = max(int(chunk_rows), 1)
        self.frames = [frame.iloc[i:i + step] for i in range(0, len(frame), step)] or [frame]

    def map(self, fn, *args):
        """``[fn(piece, *args) for piece in pieces]``, in order."""
        if self.dask is None:
            return [fn(piece, *args) for piece in self.frames]
        import dask

        return list(dask.compute(*self._tasks(fn, args)))

    def _tasks(self, fn, args):
        """One delayed ``fn(partition, *args)`` per partition; a plan enters the graph once."""
        import dask

        shared = [dask.delayed(a) if isinstance(a, _Plan) else a for a in args]
        return [dask.delayed(fn, pure=True)(part, *shared) for part in self.dask.to_delayed()]

    def reduce(self, fn, merge, *args):
        """The sum (by ``merge``) of ``fn(piece, *args)`` over the pieces: a tree on Dask."""
        if self.dask is None:
            total = None
            for piece in self.frames:
                total = merge(total, fn(piece, *args))
            return total
        import dask

        level = self._tasks(fn, args)
        while len(level) > 1:
            level = [dask.delayed(merge, pure=True)(level[i], level[i + 1]) if i + 1 < len(level) else level[i]
                     for i in range(0, len(level), 2)]
        return dask.compute(level[0])[0]


def _dask_dataframe():
    try:
        import dask.dataframe as dd
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ImportError(
            "reading Parquet or Dask DataFrames needs the 'dask' extra: pip install 'bayeshlm[dask]'"
        ) from exc
    return dd


def hlm_stats(formula, data, *, priors=None, missing="raise", known_sd=None, known_var=None, weights=None,
              chunk_rows=250_000):
    """Compile a model from per-group statistics computed piece by piece, without keeping the rows.

    The model samples and fits exactly as :func:`bayeshlm.hlm` on the same data (to rounding:
    the sums are added in another order), while memory holds one piece of rows at a time
    plus the per-group statistics. Its posterior has each group's log-likelihood, computed
    from the statistics; without the rows it has no pointwise log-likelihood, observed data
    or cluster-robust standard errors (``model.rows_held`` is False).

    Parameters
    ----------
    formula : str
        As for :func:`bayeshlm.hlm`. Stateful transforms (``center(x)``, ``scale(x)``) are
        refused: they would be learnt from one piece; transform such columns beforehand.
    data : pandas.DataFrame, mapping, Dask DataFrame, or path(s) to Parquet
        A pandas frame is processed in chunks of ``chunk_rows`` rows in this process; a Dask
        DataFrame, or Parquet files (a path, a glob or a list, read with
        ``dask.dataframe.read_parquet`` and only the used columns), partition by partition
        on Dask's scheduler: the active ``distributed.Client`` when there is one, so the
        statistics are computed where the data lie. Dask needs ``pip install 'bayeshlm[dask]'``.
    priors : dict, optional
        As for :func:`bayeshlm.hlm`.
    missing : {"raise", "drop"}
        As for :func:`bayeshlm.hlm`; the count of dropped rows is kept in
        ``model.design.n_dropped``.
    known_sd, known_var : str, optional
        The column holding each row's known level-1 SD or variance (as in meta-analysis);
        at most one. Arrays are not accepted here: the rows are never all in memory.
    weights : str, optional
        The column of precision weights, as ``weights=`` of :func:`bayeshlm.hlm` (the level-1
        variance of row ``i`` is ``sigma^2 / w_i``; see there how they differ from frequency
        weights). A column name only, for the same reason.
    chunk_rows : int
        Rows per chunk of a pandas frame, and at most as many rows of a Dask partition
        evaluated at once: this bounds the memory of the designs (about 100 bytes per row
        and design column).

    Returns
    -------
    Model
        With ``model.design`` holding labels and formula specifications but no rows.

    Raises
    ------
    DataError
        As :func:`bayeshlm.hlm` for unknown or missing columns, non-numeric responses,
        single-level or non-nested factors, rank-deficient designs and known variances or
        weights that are not positive; also for stateful transforms.
    ValueError
        For ``offset(...)`` terms, which this path does not evaluate: subtract the offset
        from the response in the data beforehand.

    Examples
    --------
    >>> import bayeshlm as bh
    >>> hsb = bh.load_dataset("hsb")
    >>> model = bh.hlm_stats("mathach ~ ses + (1 | school)", hsb, chunk_rows=2000)
    >>> model.n_obs, model.n_groups, model.rows_held
    (7185, 160, False)
    """
    if missing not in ("raise", "drop"):
        raise ValueError(f"missing must be 'raise' or 'drop', got {missing!r}")
    if known_sd is not None and known_var is not None:
        raise ValueError("give known_sd or known_var, not both")
    check_weights_option(weights, known_sd, known_var)
    known = ()
    for kind, column in (("known_sd", known_sd), ("known_var", known_var), ("weights", weights)):
        if column is not None and not isinstance(column, str):
            raise TypeError(f"{kind} must name a column of the data for hlm_stats, got {type(column).__name__}")
        if column is not None and kind != "weights":
            known = (column, kind)
    if "~" in formula and offset_terms(formula.split("~", 1)[1]):
        raise ValueError("hlm_stats does not evaluate offset() terms piece by piece: subtract the offset from the "
                         "response in the data beforehand (a Gaussian offset is a known part of the mean), or use "
                         "bayeshlm.hlm")
    spec = parse_formula(formula)
    factors = factors_of_spec(spec)
    roles = column_roles(spec)
    if known:
        roles.setdefault(known[0], known[1])
    if weights is not None:
        roles.setdefault(weights, "weights")
    factor_columns = tuple(dict.fromkeys(c for f in factors for c in f.split(":")))
    pieces = _Pieces(data, chunk_rows, roles)
    meta = pieces.meta
    check_numeric(meta[spec.response], spec.response, "the response")
    if known:
        check_numeric(meta[known[0]], known[0], known[1])
    if weights is not None:
        check_numeric(meta[weights], weights, "weights")
    categorical = tuple(name for name in roles
                        if name not in factor_columns and name != spec.response and name not in known
                        and name != weights and not _is_numeric(meta[name].dtype))
    columns = tuple(roles)

    # pass 1: the scan
    scans = pieces.map(_scan, columns, factor_columns, categorical, missing == "drop", spec.response, known,
                       weights)
    n_input = sum(s["n"] for s in scans)
    if n_input == 0:
        raise DataError("the data has no rows")
    bad = {name: sum(s["bad"][name] for s in scans) for name in columns}
    if missing == "raise" and any(bad.values()):
        lines = []
        for name, count in bad.items():
            if not count:
                continue
            rows, offset = [], 0
            for s in scans:
                rows += [offset + r for r in s["first_bad"].get(name, [])]
                offset += s["n"]
            more = ", ..." if count > len(rows[:_SHOW_ROWS]) else ""
            lines.append(f"column '{name}' has {count} missing or non-finite value{'s' if count > 1 else ''} "
                         f"(row positions {', '.join(map(str, rows[:_SHOW_ROWS]))}{more})")
        raise DataError("\n".join(lines) + "\npass missing='drop' to drop these rows, or fix the data")
    n_kept = sum(s["kept"] for s in scans)
    if n_kept == 0:
        raise DataError("every row has a missing or non-finite value in a used column")
    if weights is not None:
        _check_weights(scans, weights)

    levels = {}
    for name in categorical:
        values = pd.unique(np.concatenate([np.asarray(s["levels"][name], dtype=object) for s in scans]))
        levels[name] = sorted(values.tolist())

    codes, combo_group, crossed, cell_codes, cell_labels = {}, None, False, None, None
    if factor_columns:
        combos = pd.concat([s["combos"] for s in scans], ignore_index=True)
        combos = combos.groupby(list(factor_columns), sort=False, dropna=False)[_ROWS].sum().reset_index()
        for factor in factors:
            idx, labels = group_codes(combos, factor.split(":"))
            if len(labels) < 2:
                raise DataError(
                    f"the grouping factor '{factor}' has a single level ({labels[0]!r}); a variance "
                    "between groups cannot be estimated from one group"
                )
            codes[factor] = (idx, labels)
        factors, parents, crossed = order_factors(factors, codes, weights=combos[_ROWS].to_numpy(dtype=np.float64))
        combo_group = codes[factors[0]][0]
        if crossed:  # each combination of the grouping columns is a cell
            combo_group, cell_codes, cell_labels = cells_of([codes[f] for f in factors])
        combo_index = (pd.Index(combos[factor_columns[0]]) if len(factor_columns) == 1
                       else pd.MultiIndex.from_frame(combos[list(factor_columns)]))
        n_groups = len(cell_labels) if crossed else len(codes[factors[0]][1])
    else:
        parents, combo_index, n_groups = [], None, 1

    # the formula's specifications, fixed on the first piece that has rows
    proto = next(f for f in _proto_frames(pieces, scans))
    proto = _prepare(proto, _Plan(spec.response, columns, levels, (), None, None, 0, None, (), missing == "drop"))
    F_proto, fixed_names, fixed_spec = evaluate_terms(spec.fixed, proto, "the fixed part")
    coef_names, factor_coef_names, block_sizes, factor_sizes, random_spec = [], [], [], [], []
    for factor in factors:
        _, names_k, sizes_k, specs_k = random_design(spec, proto, factor)
        factor_coef_names.append(tuple(names_k))
        coef_names += [f"{n}|{factor}" for n in names_k] if len(factors) > 1 else names_k
        block_sizes += sizes_k
        factor_sizes.append(len(names_k))
        random_spec += specs_k
    stateful = sorted({name for s in (fixed_spec, *random_spec) for name in (s.transform_state or {})})
    if stateful:
        raise DataError(
            f"the formula uses stateful transforms ({', '.join(stateful)}): computed piece by piece they "
            "would differ between pieces; transform these columns in the data beforehand"
        )

    # The statistics are computed in a basis standardised on the first piece (and on the
    # response's moments over all rows, from the scan), which keeps the sums free of
    # cancellation; they are then carried exactly to the basis of all the rows' moments.
    y_mean, y_var = _merge_y(scans)
    obs_mean = sum(s["obs_sum"] for s in scans) / n_kept if known else None
    inv_w_mean = sum(s["inv_w_sum"] for s in scans) / n_kept if weights is not None else None
    X_proto = [evaluate_spec(s, proto, "a random-effect term") for s in random_spec]
    X_proto = np.hstack(X_proto) if X_proto else np.zeros((len(proto), 0))
    y_proto = proto[spec.response].to_numpy(dtype=np.float64)
    provisional = Basis.standardising(column_moments(y_proto, F_proto, X_proto), fixed_names, coef_names,
                                      block_sizes, y_moments=(y_mean, y_var, obs_mean), inv_w_mean=inv_w_mean)

    # pass 2: the statistics
    plan = _Plan(spec.response, columns, levels, factor_columns, combo_index, combo_group, n_groups,
                 fixed_spec, tuple(random_spec), missing == "drop", max(int(chunk_rows), 1), known, provisional,
                 weights)
    stats, moments, peaks = pieces.reduce(_piece_stats, _merge, plan)
    if moments.var()[0] == 0:
        raise DataError(f"the response '{spec.response}' is constant ({moments.y_mean:g} in every row); "
                        "there is nothing to model")
    # columns too small or too large for double precision: judged on the values as given (the
    # statistics are already standardised), before anything reads the statistics
    p = len(fixed_names)
    check_magnitudes(peaks[:p], fixed_names, "fixed-effects design")
    col = p
    for factor, names_k in zip(factors, factor_coef_names, strict=True):
        check_magnitudes(peaks[col:col + len(names_k)], names_k, f"random-effects design of '{factor}'")
        col += len(names_k)
    check_gram_rank(stats.FtF, fixed_names, "fixed-effects design")
    XtX = stats.XtX.sum(axis=0)
    col = 0
    for factor, names_k in zip(factors, factor_coef_names, strict=True):
        block = slice(col, col + len(names_k))
        check_gram_rank(XtX[block, block], names_k, f"random-effects design of '{factor}'")
        col += len(names_k)
    if crossed:
        members = [cell_codes[:, k] for k in range(len(factors))]
    else:  # each finest group's group of every factor, up the tree
        members = [np.arange(stats.n.shape[0])]
        for par in parents:
            members.append(par[members[-1]])
    _identification(stats, factors, factor_coef_names, members, not known)

    labels = [codes[f][1] for f in factors]
    design = Design(
        response=spec.response, y=None, F=None, fixed_names=tuple(fixed_names), X=None,
        coef_names=tuple(coef_names), block_sizes=tuple(block_sizes),
        factor=factors[0] if factors else "", group_idx=None,
        group_labels=(cell_labels if crossed else labels[0]) if factors else np.array(["all rows"], dtype=object),
        obs_var=None, n_dropped=n_input - n_kept, kept_rows=None, fixed_spec=fixed_spec,
        random_spec=tuple(random_spec), factors=tuple(factors), factor_sizes=tuple(factor_sizes),
        factor_coef_names=tuple(factor_coef_names), factor_labels=tuple(labels), factor_idx=(),
        parents=tuple(parents), crossed=crossed, cell_codes=cell_codes,
    )
    basis = Basis.standardising(moments, fixed_names, coef_names, block_sizes, y_moments=(y_mean, y_var, obs_mean),
                                inv_w_mean=inv_w_mean)
    stats = provisional.transform_stats(stats, basis)
    options = {"priors": priors, "known_sd": known_sd, "known_var": known_var, "missing": missing}
    if weights is not None:
        options["weights"] = weights
    return assemble(spec, design, stats, moments, basis, priors, options)


def _check_weights(scans, column):
    """Refuse precision weights that are zero or negative, naming the column and the first rows' positions."""
    for k, (what, fix) in enumerate((("zero", "a row of weight 0 carries no information: drop it from the data"),
                                     ("negative", "precision weights are inverse variances and must be positive"))):
        count, rows, offset = 0, [], 0
        for s in scans:
            if s["not_positive"]:
                n_bad, first = s["not_positive"][k]
                count += n_bad
                rows += [offset + r for r in first]
            offset += s["n"]
        if count:
            more = ", ..." if count > _SHOW_ROWS else ""
            raise DataError(f"column '{column}' (weights) must be finite and > 0: {count} "
                            f"value{'s are' if count > 1 else ' is'} {what} (row positions "
                            f"{', '.join(map(str, rows[:_SHOW_ROWS]))}{more}); {fix}")


def _proto_frames(pieces, scans):
    """The first piece with rows (as pandas)."""
    if pieces.dask is None:
        for piece, s in zip(pieces.frames, scans, strict=True):
            if s["kept"]:
                yield piece
        return
    for k, s in enumerate(scans):
        if s["kept"]:
            yield pieces.dask.get_partition(k).compute()


def _identification(stats, factors, factor_coef_names, members, sigma_estimated):
    """:func:`bayeshlm.data.identification_warnings` from the statistics.

    Rows per group, and a slope column's weighted sums ``1'w``, ``x'w`` and ``x'wx`` per
    group, add up from the groups of the statistics (``members[k]``: each one's group of
    factor ``k``); a slope is constant within every group of its factor when the
    within-group sum of squares ``x'wx - (x'w)^2 / 1'w`` vanishes.
    """
    col = 0
    for k, (factor, coefs) in enumerate(zip(factors, factor_coef_names, strict=True)):
        ancestor = members[k]
        counts = np.bincount(ancestor, weights=stats.n)
        constant = []
        if "Intercept" in coefs:
            i0 = col + coefs.index("Intercept")
            n_k = counts.shape[0]
            w_sum = np.maximum(np.bincount(ancestor, weights=stats.XtX[:, i0, i0], minlength=n_k), 1e-300)
            for j, coef in enumerate(coefs):
                c = col + j
                if c == i0:
                    continue
                xx = np.bincount(ancestor, weights=stats.XtX[:, c, c], minlength=n_k)
                x1 = np.bincount(ancestor, weights=stats.XtX[:, i0, c], minlength=n_k)
                ss = xx - x1 ** 2 / w_sum
                scale = max(1.0, float(np.max(xx / w_sum)))
                if np.all(ss <= 1e-10 * scale * w_sum):
                    constant.append(coef)
        col += len(coefs)
        warn_identification(factor, coefs, counts.max() == 1, constant, sigma_estimated, stacklevel=4)
