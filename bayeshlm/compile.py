"""Formula + data -> :class:`~bayeshlm.model.Model` (the last place pandas is seen)."""

from __future__ import annotations

import numpy as np

from bayeshlm.basis import Basis
from bayeshlm.data import build_design, identification_warnings
from bayeshlm.formula import parse_formula
from bayeshlm.model import Model
from bayeshlm.priors import column_moments, default_priors, prior_arrays, resolve_priors
from samplers.suffstats import compute_suffstats
from samplers.types import Structure


def tree_of(design):
    """``(level_ptr, node_ptr, parent)``: the nested grouping factors of a design as kernel arrays."""
    sizes = design.factor_sizes or (len(design.coef_names),)
    counts = [len(lab) for lab in design.factor_labels] or [len(design.group_labels)]
    level_ptr = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    node_ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    parent = np.full(node_ptr[-1], -1, dtype=np.int64)
    for k, par in enumerate(design.parents):
        parent[node_ptr[k]:node_ptr[k + 1]] = node_ptr[k + 1] + par
    return level_ptr, node_ptr, parent


def structure_of(block_sizes, sigma_known, diag_scale, tree=None):
    """Kernel description of the covariance blocks, the layout of ``theta`` and the tree of factors.

    ``tree`` is ``(level_ptr, node_ptr, parent)`` from :func:`tree_of`; without it, one
    grouping factor whose groups are counted by the statistics.
    """
    if tree is None:
        d = int(np.sum(block_sizes))
        tree = (np.array([0, d], dtype=np.int64), np.array([0, 0], dtype=np.int64), np.zeros(0, dtype=np.int64))
    block_ptr = np.zeros(len(block_sizes) + 1, dtype=np.int64)
    theta_ptr = np.zeros(len(block_sizes) + 1, dtype=np.int64)
    block_ptr[1:] = np.cumsum(block_sizes)
    theta_ptr[0] = 0 if sigma_known else 1
    for k, size in enumerate(block_sizes):
        theta_ptr[k + 1] = theta_ptr[k] + size + size * (size - 1) // 2
    flip_bits = np.zeros(theta_ptr[-1], dtype=np.int64)
    sd_idx = np.zeros(block_ptr[-1], dtype=np.int64)
    for k, size in enumerate(block_sizes):
        c0, t0 = block_ptr[k], theta_ptr[k]
        for i in range(size):
            sd_idx[c0 + i] = t0 + i
            flip_bits[t0 + i] = 1 << (c0 + i)
        idx = t0 + size
        for i in range(size):
            for j in range(i):
                flip_bits[idx] = (1 << (c0 + i)) | (1 << (c0 + j))
                idx += 1
    return Structure(
        block_ptr=block_ptr,
        theta_ptr=theta_ptr,
        sigma_known=int(sigma_known),
        diag_scale=np.ascontiguousarray(diag_scale, dtype=np.float64),
        flip_bits=flip_bits,
        sd_idx=sd_idx,
        level_ptr=tree[0],
        node_ptr=tree[1],
        parent=tree[2],
    )


def hlm(formula, data, *, priors=None, known_sd=None, known_var=None, missing="raise"):
    """Compile a hierarchical linear model from an lme4-style formula.

    Parameters
    ----------
    formula : str
        ``response ~ fixed part + (random part | group)``. The fixed part is evaluated by
        formulaic (interactions ``*`` and ``:``, categorical predictors, ``0``/``-1`` to drop
        the intercept); level-2 predictors and cross-level interactions are ordinary fixed
        terms. Random parts: ``(1 + x | g)`` or ``(x | g)`` correlated intercept and slope,
        ``(x || g)`` uncorrelated, ``(1 | g) + (0 + x | g)`` the same written out,
        ``(0 + x | g)`` slope only, ``(1 | g)`` intercept only. Several nested grouping
        factors give three levels and more: ``(1 | school/class)`` is
        ``(1 | school) + (1 | school:class)``, and each factor may have its own random part,
        ``(x | school) + (1 | school:class)``. The factors must be nested (each class in one
        school); a factor whose labels repeat across the groups of a coarser one (class
        "a" in every school) is refused with a message suggesting ``school/class``, where
        lme4 would silently treat the two as crossed.
    data : pandas.DataFrame or dict of array_like
        The observations, one row each.
    priors : dict, optional
        Priors by role, see :mod:`bayeshlm.priors`, each on the coefficient as written;
        defaults are weakly informative, scaled to the data and set at the predictors' means
        (:func:`bayeshlm.priors.default_priors`), so that no result depends on the location
        or units of a column.
    known_sd, known_var : str or array_like, optional
        Known level-1 standard deviations or variances, one per observation (a column name
        or an array), as in meta-analysis; then no level-1 variance is estimated.
    missing : {"raise", "drop"}
        What to do with rows that have missing or non-finite values in a used column:
        raise an error naming the columns (default), or drop them (the count is kept in
        ``model.design.n_dropped`` and in the results' attributes).

    Returns
    -------
    Model

    Examples
    --------
    >>> import bayeshlm as bh
    >>> sleep = bh.load_dataset("sleepstudy")
    >>> model = bh.hlm("reaction ~ days + (days | subject)", sleep)
    >>> model.n_groups
    18
    """
    return compile_formula(formula, data, priors=priors, known_sd=known_sd, known_var=known_var, missing=missing)


def compile_formula(formula, data, *, priors=None, known_sd=None, known_var=None, missing="raise",
                    prior_frame=None):
    """:func:`hlm`, and with ``prior_frame`` the priors kept on a frame of earlier data (:meth:`Model.with_data`)."""
    spec = parse_formula(formula)
    design = build_design(spec, data, missing=missing, known_sd=known_sd, known_var=known_var)
    identification_warnings(design)
    moments = column_moments(design.y, design.F, design.X, design.obs_var)
    basis = Basis.standardising(moments, design.fixed_names, design.coef_names, design.block_sizes)
    stats = compute_suffstats(design.y, design.F, design.X, design.group_idx, design.group_labels.shape[0],
                              basis.weights(design.obs_var), basis.shift, basis.scale)
    options = {"priors": priors, "known_sd": known_sd, "known_var": known_var, "missing": missing}
    return assemble(spec, design, stats, moments, basis, priors, options, prior_frame)


def assemble(spec, design, stats, moments, basis, priors, options, prior_frame=None):
    """The :class:`Model` of a design whose statistics (in ``basis``) and column moments are computed.

    ``prior_frame``: keep the priors on this :class:`~bayeshlm.priors.PriorFrame` (the
    ``priors`` are then a complete resolved mapping) instead of the defaults' frame.
    """
    sigma_known = design.obs_var is not None or moments.obs_var_mean is not None  # rows or statistics
    structure = structure_of(
        design.block_sizes, sigma_known, np.full(len(design.coef_names), 0.1), tree_of(design),
    )
    defaults, frame = default_priors(basis, design.fixed_names, design.coef_names, design.block_sizes, sigma_known)
    resolved, frame = resolve_priors(
        priors, defaults, frame if prior_frame is None else prior_frame, basis, design.fixed_names,
        design.coef_names, design.block_sizes, sigma_known, keep_frame=prior_frame is not None,
    )
    arrays = prior_arrays(resolved, frame, basis, design.fixed_names, design.coef_names, design.block_sizes)
    return Model(
        spec=spec,
        design=design,
        stats=stats,
        structure=structure,
        priors=arrays,
        prior_spec=resolved,
        options=options,
        moments=moments,
        basis=basis,
        prior_frame=frame,
    )
