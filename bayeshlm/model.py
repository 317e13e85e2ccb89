"""The compiled model: a frozen value holding the kernel inputs and the labels beside them.

And how a formula and data become one (:func:`hlm`, :func:`compile_formula`, :func:`assemble`):
the model can compile itself again on other data (:meth:`Model.with_data`,
:func:`model_from`), so both live here.
"""

from __future__ import annotations

import hashlib
import json
import numbers
from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np

from bayeshlm.basis import Basis
from bayeshlm.data import Design, build_design, check_weights_option, identification_warnings
from bayeshlm.formula import FormulaSpec, parse_formula, r_spellings
from bayeshlm.priors import (
    ColumnMoments,
    HalfNormal,
    Normal,
    PriorFrame,
    column_moments,
    default_priors,
    describe,
    frame_from_json,
    frame_to_json,
    prior_arrays,
    priors_from_json,
    priors_to_json,
    resolve_priors,
)
from bayeshlm.varfunc import VarianceDesign, build_variance_design
from samplers.scale import DELTA_PRIOR_SD, NU_PRIOR_RATE, NU_PRIOR_SHAPE, OMEGA_PRIOR_SCALE
from samplers.suffstats import compute_suffstats
from samplers.types import N_OBS, Priors, Structure, SuffStats


class ModelMismatchError(ValueError):
    """A result given together with a model it was not computed from."""


@dataclass(frozen=True, eq=False)
class Model:
    """A hierarchical linear model compiled against one data set.

    Build it with :func:`bayeshlm.hlm`; it is immutable, and :meth:`with_data` gives a new
    model of the same structure on other data.

    Attributes
    ----------
    spec : FormulaSpec
        The parsed formula.
    design : Design
        Response, fixed and random designs, group codes and labels (numpy arrays).
    stats : SuffStats
        Per-group sufficient statistics: all the samplers and EM ever read of the data.
    structure : Structure
        Covariance blocks and the layout of the variance components.
    priors : Priors
        Numeric hyperparameters for the kernels.
    prior_spec : dict
        The priors in use, by role (see :mod:`bayeshlm.priors`), defaults included.
    options : dict
        The keyword arguments of :func:`bayeshlm.hlm` (``priors``, ``known_sd``,
        ``known_var``, ``weights``, ``missing``, ...), reused by :meth:`with_data`.
    equations : str or None
        The level-by-level equations when the model was declared with
        :class:`bayeshlm.Hierarchy` (printed with the model).
    moments : ColumnMoments
        Means and variances of the response and design columns, in the user's units.
    basis : Basis
        The kernels' coordinates: ``stats``, ``priors`` and every draw or estimate the
        kernels return are in this basis, and :mod:`bayeshlm.basis` maps them back to the
        user's parametrisation exactly.
    prior_frame : PriorFrame
        The coordinates each prior is set on (the user's, or the centred ones of the defaults).
    family, link : str
        The level-1 family and its link (:mod:`bayeshlm.family`): ``"gaussian"`` and
        ``"identity"``, or a hierarchical generalised linear model.
    trials : ndarray of shape (n_obs,) or None
        The number of trials of each row of a binomial response (ones for Bernoulli).
    offset : ndarray of shape (n_obs,) or None
        The known part of each row's linear predictor (the formula's ``offset(...)`` terms). A
        Gaussian model is fitted to the response minus it: its ``design.y`` holds ``y -
        offset`` and ``design.response_values`` the response itself (docs/design.md, "Weights
        and offsets").
    """

    spec: FormulaSpec
    design: Design
    stats: SuffStats
    structure: Structure
    priors: Priors
    prior_spec: dict
    options: dict = field(default_factory=dict)
    equations: str | None = None
    moments: ColumnMoments | None = None
    basis: Basis | None = None
    prior_frame: PriorFrame | None = None
    family: str = "gaussian"
    link: str = "identity"
    trials: np.ndarray | None = None
    offset: np.ndarray | None = None
    variance_design: VarianceDesign | None = None

    @property
    def formula(self) -> str:
        """The formula as written."""
        return self.spec.formula

    @property
    def factor(self) -> str:
        """Name of the grouping factor."""
        return self.design.factor

    @property
    def fixed_names(self) -> tuple[str, ...]:
        """Names of the fixed-effect terms."""
        return self.design.fixed_names

    @property
    def coef_names(self) -> tuple[str, ...]:
        """Names of the random coefficients."""
        return self.design.coef_names

    @property
    def n_obs(self) -> int:
        """Number of observations used."""
        return int(self.stats.scal[N_OBS])

    @property
    def rows_held(self) -> bool:
        """True when the model keeps its rows (False when compiled from statistics by chunks).

        Without the rows a model samples and fits exactly as with them, but has no pointwise
        log-likelihood, observed data or cluster-robust standard errors.
        """
        return self.design.y is not None

    @property
    def n_groups(self) -> int:
        """Number of groups of the statistics: the finest factor's, or, for crossed factors, the cells."""
        return int(self.design.group_labels.shape[0])

    @property
    def crossed(self) -> bool:
        """True when the grouping factors are crossed rather than nested."""
        return bool(self.design.crossed)

    @property
    def sigma_known(self) -> bool:
        """True when the level-1 variances are known (given per observation, or none: a non-Gaussian level 1)."""
        return bool(self.structure.sigma_known)

    @property
    def gaussian(self) -> bool:
        """True for a Gaussian level 1 (a hierarchical linear model)."""
        return self.family == "gaussian"

    @property
    def weighted(self) -> bool:
        """True when the rows have precision weights (``weights=``): row ``i``'s level-1 variance is ``sigma^2 / w_i``.

        Also for a model from :func:`bayeshlm.hlm_stats`, which keeps the weights' scale only.
        """
        return self.design.weights is not None or getattr(self.moments, "inv_w_mean", None) is not None

    @property
    def n_theta(self) -> int:
        """Number of free variance-component parameters."""
        return int(self.structure.theta_ptr[-1])

    def with_data(self, data, **overrides) -> Model:
        """The same model (formula, priors, options) compiled on new data.

        The priors in use are kept as they are (defaults are not rescaled to the new data, and
        those set at the predictors' means stay at the means of the first data). Keyword
        arguments override the stored options of :func:`bayeshlm.hlm`, e.g. a new
        ``known_sd`` array.
        """
        options = {**self.options, "priors": dict(self.prior_spec), **overrides}
        frame = self.prior_frame if "priors" not in overrides else None
        sigma = options.pop("sigma", None)
        model = replace(compile_formula(self.formula, data, prior_frame=frame, **options), equations=self.equations)
        return model if sigma is None else with_variance_model(model, sigma, data)

    def prior_descriptions(self) -> list[str]:
        """One line per prior in use, with the centring of those set at the predictors' means.

        The correlation prior is listed only for a model with correlated group coefficients
        (a block of two or more). A model with ``sigma=`` or a Student-t level 1 also lists
        the level-1 model's priors (docs/design.md, "Heterogeneous level-1 variance" and
        "Student-t level 1"): ``sigma_delta`` of each column of the sigma formula,
        ``sigma_group_sd`` of a ``(1 | g)`` term, and ``nu``.
        """
        spec = self.prior_spec
        if not any(size > 1 for size in self.design.block_sizes):
            spec = {role: prior for role, prior in spec.items() if role != "corr"}
        lines = describe(spec, self.centred_priors())
        vd = self.variance_design
        if vd is not None and vd.k:  # sigma's prior is set at the columns' means, not at the reported z = 0
            at = f" (the level-1 SD at the means of the sigma formula's columns {', '.join(vd.names)})"
            lines = [line + at if line.startswith("sigma: ") else line for line in lines]
        return lines + self._level1_prior_descriptions()

    def _level1_prior_descriptions(self) -> list[str]:
        """The lines of the level-1 model's priors (none for one variance ``sigma^2 / w_i``)."""
        lines = []
        vd = self.variance_design
        if vd is not None:
            delta = Normal(0.0, DELTA_PRIOR_SD)
            lines += [f"sigma_delta[{name}]: {delta} on the standardised column's delta (delta x {scale:.4g}, the "
                      "column's SD)" for name, scale in zip(vd.names, vd.scale, strict=True)]
            if vd.group is not None:
                lines.append(f"sigma_group_sd: {HalfNormal(OMEGA_PRIOR_SCALE)} (the SD of the log level-1 SDs of the "
                             f"groups of '{vd.group}')")
        if self.family == "student":
            nu = self.options.get("nu")
            lines.append(f"nu: Gamma(shape={NU_PRIOR_SHAPE:g}, rate={NU_PRIOR_RATE:g}) restricted to nu >= 1"
                         if nu is None else f"nu: fixed at {nu:g}")
        return lines

    def centred_priors(self) -> dict:
        """The priors set at the predictors' means: ``{role: [centred predictors]}``."""
        if self.prior_frame is None:
            return {}
        return self.prior_frame.centred_roles(self.fixed_names, self.coef_names, self.design.block_sizes)

    @property
    def factors(self) -> tuple[str, ...]:
        """The grouping factors, finest first (one per level above level 1)."""
        return self.design.factors or ((self.design.factor,) if self.design.coef_names else ())

    def __repr__(self) -> str:
        design = self.design
        lines = [
            f"<bayeshlm.Model {self.formula!r}>",
            f"  observations: {self.n_obs}",
            f"  fixed effects: {', '.join(self.fixed_names)}",
        ]
        if design.crossed:
            lines.append(f"  crossed grouping factors ({self.n_groups} cells occur):")
            for k, (factor, names) in enumerate(zip(design.factors, design.factor_coef_names, strict=True)):
                lines.append(f"  level 2: {factor} ({len(design.factor_labels[k])} groups), "
                             f"random {', '.join(names)}")
        elif len(design.factors) > 1:
            for k, (factor, names) in enumerate(zip(design.factors, design.factor_coef_names, strict=True)):
                lines.append(f"  level {k + 2}: {factor} ({len(design.factor_labels[k])} groups), "
                             f"random {', '.join(names)}")
        elif design.coef_names:
            blocks = ", ".join(str(s) for s in design.block_sizes)
            lines.append(f"  level 2: {self.factor} ({self.n_groups} groups), random "
                         f"{', '.join(self.coef_names)} (covariance blocks of size {blocks})")
        else:
            lines.append("  no grouping: a single-level regression")
        if self.gaussian or self.family == "student":
            known = "known (given per observation)" if self.sigma_known else "estimated"
            if self.weighted:
                known += " (sigma^2 / w, precision weights w)"
            if self.variance_design is not None:
                known += f", log sigma^2 linear in {self.variance_design.formula!r}"
            if self.family == "student":
                nu = self.options.get("nu")
                lines.append("  level 1: Student-t residuals, nu " + ("estimated" if nu is None else f"= {nu:g}"))
            lines.append("  level-1 variance: " + known)
            if self.offset is not None:
                lines.append("  offset: the formula's offset() terms, a known part of the mean")
        else:
            lines.append(f"  level 1: {self.family}, {self.link} link")
        if self.equations:
            lines += ["", self.equations]
        return "\n".join(lines)

    # ------------------------------------------------------------------ identity
    def identity(self) -> dict:
        """What a result records of the model it was computed from (a copy).

        The formula, response, fixed terms and random coefficients, grouping factors, a digest
        of every factor's group labels and their counts, the number of observations, whether
        the level-1 variances are known, and the priors in use. Two models with the same
        identity give the same posterior; :func:`check_result` compares it with a result's.
        """
        return json.loads(self._identity_json)

    @cached_property
    def _identity_json(self) -> str:
        design = self.design
        labels = design.factor_labels or ((design.group_labels,) if design.coef_names else ())
        digest = hashlib.sha256("\x1e".join("\x1f".join(str(x) for x in lab) for lab in labels).encode())
        identity = {
            "formula": self.formula,
            "response": design.response,
            "fixed": list(self.fixed_names),
            "coef": list(self.coef_names),
            "factors": list(self.factors),
            "n_groups": [len(lab) for lab in labels],
            "groups": digest.hexdigest()[:16],
            "n_obs": self.n_obs,
            "sigma_known": self.sigma_known,
            # every prior resolved, the correlation's included where there is none to describe:
            # identities recorded in saved results stay comparable
            "priors": describe(self.prior_spec, self.centred_priors()),
        }
        if design.crossed:  # only then: the identities of nested models stay as they were
            identity["crossed"] = True
        if not self.gaussian:
            identity["family"] = f"{self.family}({self.link})"
        if self.family == "student":
            identity["nu"] = self.options.get("nu")
        if self.weighted:  # only then: the identities of unweighted models stay as they were
            weights = self.options.get("weights")
            identity["weights"] = weights if isinstance(weights, str) else "given as an array"
        if self.variance_design is not None:  # only then: other models' identities stay as they were
            identity["sigma"] = self.variance_design.formula
        return json.dumps(identity, sort_keys=True)

    @property
    def fingerprint(self) -> str:
        """A short digest of :meth:`identity`."""
        return hashlib.sha256(self._identity_json.encode()).hexdigest()[:16]

    def record(self) -> dict:
        """How to compile this model again (:func:`model_from`): formula, options and the priors in full (a copy)."""
        return json.loads(self._record_json)

    @cached_property
    def _record_json(self) -> str:
        known = {k: self.options.get(k) for k in ("known_sd", "known_var")}
        # sigma= only when given: the records of other models stay as they were
        extra = {} if self.variance_design is None else {"sigma": self.variance_design.formula}
        if self.family == "student":
            extra["nu"] = self.options.get("nu")
        return json.dumps(extra | {
            "formula": self.formula,
            "priors": priors_to_json(self.prior_spec),
            "prior_frame": None if self.prior_frame is None else frame_to_json(self.prior_frame),
            "known_sd": known["known_sd"] if isinstance(known["known_sd"], str) else None,
            "known_var": known["known_var"] if isinstance(known["known_var"], str) else None,
            "known_as_array": any(v is not None and not isinstance(v, str) for v in known.values()),
            "missing": self.options.get("missing", "raise"),
            "equations": self.equations,
            "family": self.family,
            "link": self.link,
            "trials": self.options.get("trials") if isinstance(self.options.get("trials"), str) else None,
            "weights": self.options.get("weights") if isinstance(self.options.get("weights"), str) else None,
            "weights_as_array": self.options.get("weights") is not None
            and not isinstance(self.options.get("weights"), str),
        }, sort_keys=False)


def result_identity(result):
    """The model identity a posterior (``attrs["model"]``) or an EM fit records, None if it records none."""
    if hasattr(result, "attrs") and "model" in getattr(result, "attrs", {}):
        return json.loads(result.attrs["model"])
    identity = getattr(result, "model", None)
    return identity if isinstance(identity, dict) and identity else None


def _record_of(result):
    if hasattr(result, "attrs") and "model_record" in getattr(result, "attrs", {}):
        return json.loads(result.attrs["model_record"])
    record = getattr(result, "model_record", None)
    if isinstance(record, dict) and record:
        return record
    raise ValueError("this result does not record its model (it was made by an older version of bayeshlm): "
                     "compile the model with bayeshlm.hlm")


def _differences(mine, theirs):
    names = {"formula": "formula", "response": "response", "fixed": "fixed effects", "coef": "random coefficients",
             "factors": "grouping factors", "n_groups": "numbers of groups", "groups": "group labels",
             "n_obs": "number of observations", "sigma_known": "known level-1 variances", "priors": "priors",
             "weights": "weights"}
    out = []
    for key, label in names.items():
        a, b = mine.get(key), theirs.get(key)
        if a == b:
            continue
        if key in ("formula", "response", "n_obs", "n_groups", "factors"):
            out.append(f"{label} {b!r} in the result, {a!r} in the model")
        elif key == "priors":
            changed = [x for x in a if x not in b] if isinstance(a, list) and isinstance(b, list) else a
            out.append(f"priors ({'; '.join(changed[:3])} in the model)")
        else:
            out.append(label)
    return out


def refuse_non_gaussian(model, what):
    """Raise NotImplementedError for ``what`` on a model with a non-Gaussian level 1."""
    if not model.gaussian:
        raise NotImplementedError(
            f"{what} of a {model.family} model ({model.link} link) is not available: it integrates the group "
            "coefficients out exactly, which only a Gaussian level 1 allows")


def refuse_variance_model(model, what):
    """Raise NotImplementedError for ``what`` on a model whose level-1 variance is not one sigma^2 / w_i.

    That is a model with ``sigma=`` of :func:`hlm` or a Student-t level 1.
    """
    if getattr(model, "family", None) == "student":
        raise NotImplementedError(
            f"{what} of a model with Student-t level-1 residuals is not available: its formulas assume a Gaussian "
            "level 1 with one variance; the posterior is bayeshlm.sample(model) "
            '(docs/design.md, "Student-t level 1")')
    if getattr(model, "variance_design", None) is not None:
        raise NotImplementedError(
            f"{what} of a model with sigma= (a level-1 variance that varies with {model.variance_design.formula!r}) is "
            "not implemented yet; its ML and REML fit is: bayeshlm.fit_em(model) "
            '(docs/design.md, "Heterogeneous level-1 variance")')


def check_result(model, result, what="the result"):
    """Refuse a result computed from another model than ``model``, naming what differs.

    Results that record no model (files written by older versions) are let through.
    """
    theirs = result_identity(result)
    if theirs is None:
        return
    mine = model.identity()
    if mine == theirs:
        return
    diffs = _differences(mine, theirs) or ["their identities"]
    raise ModelMismatchError(
        f"{what} was not computed from this model: they differ in {', '.join(diffs)}. Pass the model it was "
        "computed from (bayeshlm.model_from(result, data) compiles it again from the data)"
    )


def model_first(first, second, name):
    """``(model, result)`` of a function called ``name(model, result, ...)``, the public order.

    Every function that takes a model and a result takes the model first. The order of
    earlier versions, ``name(result, model)``, is still accepted for now, with a
    ``DeprecationWarning``; anything else is left for the function's own checks.
    """
    if not isinstance(first, Model) and isinstance(second, Model):
        import warnings

        warnings.warn(f"{name}(result, model) is deprecated: the model comes first, {name}(model, result)",
                      DeprecationWarning, stacklevel=3)
        return second, first
    return first, second


def check_same_model(first, second, what):
    """Refuse two results of different models (both recording one)."""
    a, b = result_identity(first), result_identity(second)
    if a is None or b is None or a == b:
        return
    raise ModelMismatchError(f"{what} are of different models: they differ in {', '.join(_differences(a, b))}")


def model_from(result, data, **overrides):
    """The model a saved posterior or EM fit was computed from, compiled again on ``data``.

    With the data the result was fitted to, this is the same model (same formula, options and
    priors, the defaults included, set where they were), so that :func:`bayeshlm.predict` and
    the other functions taking a model and a result accept the pair. With other data it is
    the same specification on those data (as :meth:`Model.with_data`).

    Parameters
    ----------
    result : xarray.DataTree or EMResult
        From :func:`bayeshlm.sample` or :func:`bayeshlm.fit_em`, or loaded by :func:`bayeshlm.load`.
    data : pandas.DataFrame or mapping
        The data.
    **overrides
        Options of :func:`bayeshlm.hlm` to set anew, e.g. ``known_sd`` or ``weights`` when the
        model was compiled with an array of them (an array is not stored with the result).

    Returns
    -------
    Model

    Examples
    --------
    >>> import bayeshlm as bh
    >>> sleep = bh.load_dataset("sleepstudy")
    >>> fit = bh.fit_em(bh.hlm("reaction ~ days + (days | subject)", sleep))
    >>> bh.model_from(fit, sleep).formula
    'reaction ~ days + (days | subject)'
    """
    record = _record_of(result)
    if record["known_as_array"] and not ({"known_sd", "known_var"} & set(overrides)):
        raise ValueError("the model was compiled with known level-1 SDs or variances given as an array, which the "
                         "result does not store: pass them again, model_from(result, data, known_sd=...)")
    if record.get("weights_as_array") and "weights" not in overrides:
        raise ValueError("the model was compiled with precision weights given as an array, which the result does "
                         "not store: pass them again, model_from(result, data, weights=...)")
    options = {"known_sd": record["known_sd"], "known_var": record["known_var"], "missing": record["missing"],
               "priors": priors_from_json(record["priors"]), "family": record.get("family", "gaussian"),
               "link": record.get("link"), "trials": record.get("trials"), "weights": record.get("weights")}
    if record.get("sigma") is not None:
        options["sigma"] = record["sigma"]
    if options["family"] == "student":
        options["nu"] = record.get("nu")
    frame = None if record["prior_frame"] is None else frame_from_json(record["prior_frame"])
    if "priors" in overrides:
        frame = None
    options.update(overrides)
    sigma = options.pop("sigma", None)
    model = compile_formula(record["formula"], data, prior_frame=frame, **options)
    model = replace(model, equations=record["equations"])
    return model if sigma is None else with_variance_model(model, sigma, data)


def tree_of(design):
    """``(level_ptr, node_ptr, parent, cell_node)``: the grouping factors of a design as kernel arrays.

    ``cell_node`` is empty for nested factors; for crossed ones it holds each cell's group of
    every factor, numbered as the kernels number the groups (``node_ptr``).
    """
    sizes = design.factor_sizes or (len(design.coef_names),)
    counts = [len(lab) for lab in design.factor_labels] or [len(design.group_labels)]
    level_ptr = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    node_ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    parent = np.full(node_ptr[-1], -1, dtype=np.int64)
    for k, par in enumerate(design.parents):
        parent[node_ptr[k]:node_ptr[k + 1]] = node_ptr[k + 1] + par
    cell_node = np.zeros((0, 0), dtype=np.int64)
    if design.crossed:
        cell_node = np.ascontiguousarray(design.cell_codes + node_ptr[:-1], dtype=np.int64)
    return level_ptr, node_ptr, parent, cell_node


def structure_of(block_sizes, sigma_known, diag_scale, tree):
    """Kernel description of the covariance blocks, the layout of ``theta`` and the grouping factors.

    ``tree`` is ``(level_ptr, node_ptr, parent, cell_node)`` from :func:`tree_of`.
    """
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
        cell_node=tree[3],
    )


def hlm(formula, data, *, priors=None, known_sd=None, known_var=None, missing="raise", family="gaussian", link=None,
        trials=None, weights=None, sigma=None, nu=None):
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
        ``(x | school) + (1 | school:class)``. Factors that are not nested are crossed
        (``(1 | primary) + (1 | second)``, subjects and items), each with its own random
        part, and may be mixed with nested ones (``(1 | item) + (1 | group/subject)``);
        the data decide. A factor whose labels repeat in every group of another with
        several rows each (cask "a" in every batch) is fitted as crossed, as lme4 does,
        with a :class:`~bayeshlm.data.NestingWarning` suggesting ``batch/cask``.
        ``offset(expr)`` terms are a known part of the mean (of the linear predictor, for the
        non-Gaussian families), with coefficient 1: a Gaussian model is fitted to the response
        minus their sum, and the observed data, replicated data and predictions
        (:func:`bayeshlm.predict` evaluates ``expr`` on the new rows) are on the scale of the
        response, the offset added back.
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
    missing : {"raise", "drop", "impute"}
        What to do with rows that have missing or non-finite values in a used column:
        raise an error naming the columns (default), or drop them (the count is kept in
        ``model.design.n_dropped`` and in the results' attributes). ``"impute"`` (Gaussian
        family only): rows whose response is missing (NaN or None) are kept aside
        (``model.design.missing_responses``) and the model is fitted to the observed rows,
        which is the likelihood under missing at random; :func:`bayeshlm.impute` adds draws
        of the missing responses to a posterior (docs/design.md, "Missing outcomes"). A
        missing predictor, group, weight or offset still raises: only responses are imputed.
    family : {"gaussian", "student", "bernoulli", "binomial", "poisson"}
        The level-1 distribution (:mod:`bayeshlm.family`). ``"student"``: the residuals are
        Student-t with scale sigma and ``nu`` degrees of freedom (robust to outlying rows),
        sampled by :func:`bayeshlm.sample` as a scale mixture of normals (docs/design.md,
        "Student-t level 1"); everything else as for ``"gaussian"`` (weights, offsets and
        ``sigma=`` included). A binomial response is written
        ``cbind(successes, failures) ~ ...`` as in lme4, or as the successes with
        ``trials=``; a binomial response of 0/1 without trials is Bernoulli.
    link : {"logit", "probit", "log"}, optional
        The link of a non-Gaussian family (default logit for the binomial families, log for
        Poisson).
    trials : str or array_like, optional
        The number of trials of each row of a binomial response (a column name or an array).
    weights : str or array_like, optional
        Precision weights, one per row (a column name or an array), as ``weights=`` of lme4's
        ``lmer``: the level-1 variance of row ``i`` is ``sigma^2 / w_i``, and sigma (the SD of
        a row of weight 1) is estimated. A row whose mean is of ``k`` measurements has weight
        ``k``. Missing values follow `missing`; the others must be finite and positive (a row
        of weight 0 carries no information: drop it). Gaussian family only (a binomial
        model's weights are its trials) and not together with `known_sd` / `known_var`. The
        log-likelihood includes ``+ sum(log w_i) / 2``, as lme4's ``logLik`` does.

        These are not *frequency* weights. A row of frequency weight ``k`` stands for ``k``
        identical rows, and only repeating the row ``k`` times fits that model. Given the
        variance components, integer precision weights ``k`` give the same generalised
        least-squares fixed effects as the repeated rows; but precision weights do not change
        the number of observations: it stays the number of rows in the ML and REML
        log-likelihood (its ``log 2 pi`` and ``log sigma^2`` terms) and in any degrees of
        freedom, as in lme4. So sigma and the variance components, and through them the
        fixed effects and every standard error, differ from those of the repeated rows (for
        REML and ML alike).
    sigma : str, optional
        A one-sided formula of predictors of the log level-1 variance, ``"~ z"``: row ``i``'s
        level-1 variance is ``sigma^2 exp(z_i' delta)`` (divided by its precision weight when
        `weights` are given too: the two multiply), ``z_i`` the formula's columns without an
        intercept (evaluated by formulaic as the fixed part; a categorical ``z`` is coded by
        its levels other than the first, the reference). A categorical ``z`` is nlme's
        ``varIdent(form = ~ 1 | z)``, the SD ratio of a level to the reference being
        ``exp(delta / 2)``; a continuous one nlme's ``varExp(form = ~ z)`` with
        ``delta = 2 t``. Gaussian or Student-t family only, not with `known_sd` / `known_var`, and
        its columns must be finite in every row. A term ``(1 | g)`` gives each group of ``g``
        its own level-1 SD, ``log sigma_j = log sigma + e_j`` with ``e_j ~ Normal(0, omega^2)``
        (``"~ (1 | school)"``, ``"~ sector + (1 | school)"``). Fitted by ML or REML with
        :func:`bayeshlm.fit_em` (``EMResult.variance_model``; not with a ``(1 | g)`` term) and
        sampled by :func:`bayeshlm.sample` (``sigma`` of the reference row, ``sigma_delta``,
        ``sigma_group``, ``sigma_group_sd``; docs/design.md, "Heterogeneous level-1 variance").

    nu : float, optional
        ``family="student"`` only: the degrees of freedom, held fixed at this value (> 0).
        When None (default) they are estimated, with brms's prior ``nu ~ Gamma(2, 0.1)``
        restricted to ``nu >= 1``.

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
    model = compile_formula(formula, data, priors=priors, known_sd=known_sd, known_var=known_var, missing=missing,
                            family=family, link=link, trials=trials, weights=weights, nu=nu)
    if sigma is None:
        return model
    return with_variance_model(model, sigma, data)


def with_variance_model(model, sigma, data):
    """``model`` with the level-1 variance model of ``sigma=`` (:func:`hlm`), checked; ``data`` the model's data."""
    if not model.gaussian and model.family != "student":
        raise ValueError(f"sigma= models the level-1 variance of a Gaussian or Student-t model; family="
                         f"{model.family!r} has no level-1 variance")
    if model.options.get("known_sd") is not None or model.options.get("known_var") is not None:
        raise ValueError("sigma= models an estimated level-1 variance; with known_sd/known_var the level-1 "
                         "variances are given, not estimated")
    if not model.rows_held:
        raise ValueError("sigma= needs the model's rows (the statistics are recomputed for each delta)")
    vd = build_variance_design(sigma, data, model.design.kept_rows)
    return replace(model, options=model.options | {"sigma": vd.formula}, variance_design=vd)


def check_nu(nu, family):
    """The fixed degrees of freedom of a Student-t level 1 (None: estimated), checked."""
    if nu is None:
        return None
    if family != "student":
        raise ValueError(f"nu= is the degrees of freedom of family='student', not of family={family!r}")
    if isinstance(nu, bool) or not isinstance(nu, numbers.Real) or not np.isfinite(nu) or nu <= 0:
        raise ValueError(f"nu must be a positive finite number (or None to estimate it), got {nu!r}")
    return float(nu)


def compile_formula(formula, data, *, priors=None, known_sd=None, known_var=None, missing="raise",
                    prior_frame=None, family="gaussian", link=None, trials=None, weights=None, nu=None):
    """:func:`hlm`, and with ``prior_frame`` the priors kept on a frame of earlier data (:meth:`Model.with_data`)."""
    from bayeshlm.family import (
        check_response,
        gaussian_response_warning,
        offset_label,
        resolve_family,
        split_cbind,
        split_offset,
        trials_array,
    )

    family, link = resolve_family(family, link)
    nu = check_nu(nu, family)
    if missing == "impute" and family != "gaussian":
        raise ValueError(f"missing='impute' draws the missing responses of a Gaussian model; family={family!r} is not "
                         "Gaussian: pass missing='drop' to leave the rows whose response is missing out")
    formula = r_spellings(formula)  # lme4's factor(x): C(x)
    written = formula
    options = {"priors": priors, "known_sd": known_sd, "known_var": known_var, "missing": missing,
               "family": family, "link": link, "trials": trials}
    if weights is not None:  # only then: the options of unweighted models stay as they were
        options["weights"] = weights
    if family == "student":
        options["nu"] = nu
    offset = None
    if family in ("gaussian", "student"):
        if trials is not None or formula.lstrip().startswith("cbind"):
            raise ValueError("trials and cbind(successes, failures) are for family='binomial'")
        check_weights_option(weights, known_sd, known_var)
        # offset() terms: a known part of the mean; the model is fitted to y - offset
        fitted_formula, offset = split_offset(formula, data)
        spec = parse_formula(fitted_formula)
        design = build_design(spec, data, missing=missing, known_sd=known_sd, known_var=known_var,
                              weights=weights, offset=offset, offset_label=offset_label(formula))
        if design.y is not None:
            gaussian_response_warning(design.response_values, design.response)
        offset = design.offset
        if offset is not None:
            spec = spec._replace(formula=written)
        n_trials = None
    else:
        if known_sd is not None or known_var is not None:
            raise ValueError(f"family={family!r} has no level-1 variance to give: known_sd and known_var are for "
                             "the Gaussian family")
        if weights is not None:
            raise ValueError(f"weights= (precision weights of the level-1 variance) are for the Gaussian family; "
                             f"family={family!r} has no level-1 variance to weight. The weights of a binomial model "
                             "are its numbers of trials: write cbind(successes, failures) ~ ... or pass trials=")
        formula, data, n_trials = split_cbind(formula, data)
        formula, offset = split_offset(formula, data)
        if n_trials is not None and trials is not None:
            raise ValueError("give the number of trials once: cbind(successes, failures) or trials=, not both")
        if n_trials is not None and family == "bernoulli":
            raise ValueError("cbind(successes, failures) is a binomial response: pass family='binomial'")
        spec = parse_formula(formula)
        n_rows = len(next(iter(data.values()))) if isinstance(data, dict) else len(data)
        if trials is not None:
            if family != "binomial":
                raise ValueError(f"trials= is for family='binomial', not {family!r}")
            n_trials = trials_array(trials, data, n_rows)
        # the Gaussian machinery runs with known unit level-1 variances: a non-Gaussian level 1
        # has no variance of its own, and its samplers and fits set per-row weights
        design = build_design(spec, data, missing=missing, known_var=np.ones(n_rows))
        if n_trials is not None:
            n_trials = np.ascontiguousarray(np.asarray(n_trials, dtype=np.float64)[design.kept_rows])
        elif family in ("bernoulli", "binomial"):
            if family == "binomial" and not np.all(np.isin(design.y, (0.0, 1.0))):
                raise ValueError(f"family='binomial' needs the number of trials of each row: write "
                                 f"cbind(successes, failures) ~ ... or pass trials=; the response {design.response!r} "
                                 "is not 0/1")
            family = "bernoulli" if family == "binomial" else family
            n_trials = np.ones(design.y.shape[0])
        check_response(design.y, n_trials, family, design.response)
        if offset is not None:
            offset = np.ascontiguousarray(offset[design.kept_rows])
            bad = ~np.isfinite(offset)
            if bad.any():
                raise ValueError(f"the offset is missing or not finite in {int(bad.sum())} rows (rows "
                                 f"{', '.join(str(int(i)) for i in np.flatnonzero(bad)[:5])}"
                                 f"{', ...' if bad.sum() > 5 else ''}); an offset of log(0) is -inf")
        options["family"] = family
        spec = spec._replace(formula=written) if hasattr(spec, "_replace") else spec
    identification_warnings(design)
    moments = column_moments(design.y, design.F, design.X, design.obs_var, design.weights)
    basis = Basis.standardising(moments, design.fixed_names, design.coef_names, design.block_sizes)
    if family not in ("gaussian", "student"):  # the response is not rescaled: the link acts on its own scale
        shift, scale = basis.shift.copy(), basis.scale.copy()
        shift[0], scale[0] = 0.0, 1.0
        basis = replace(basis, shift=shift, scale=scale)
    stats = compute_suffstats(design.y, design.F, design.X, design.group_idx, design.group_labels.shape[0],
                              basis.weights(design.obs_var, design.weights), basis.shift, basis.scale)
    model = assemble(spec, design, stats, moments, basis, priors, options, prior_frame)
    if family == "gaussian":
        return model if offset is None else replace(model, offset=offset)
    if family == "student":
        return replace(model, family=family, link=link, offset=offset)
    return replace(model, family=family, link=link, trials=n_trials, offset=offset)


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


def group_multiplier(column, own, idx, n_groups):
    """``(k, w)`` such that ``column = w[idx] * own[:, k]`` on every row, or None.

    ``w`` is the per-group value of a variable constant within each group (nan for a group
    whose ``own[:, k]`` is zero on every row, where the variable cannot be read off).
    """
    scale = max(float(np.max(np.abs(column))), np.finfo(float).tiny)
    for k in range(own.shape[1]):
        x = own[:, k]
        num = np.bincount(idx, column * x, n_groups)
        den = np.bincount(idx, x * x, n_groups)
        seen = den > 0
        w = np.where(seen, num / np.where(seen, den, 1.0), 0.0)
        if np.all(np.abs(column - w[idx] * x) <= 1e-9 * scale):
            return k, np.where(seen, w, np.nan)
    return None


def coef_parts(model, k):
    """How the coefficients of factor ``k``'s groups are put together (docs/design.md, "Group coefficients").

    Returns ``(own_names, fixed_maps, fixed_only, parent_maps)``: the factor's coefficient
    names; ``[(fixed column, own coefficient, w)]`` for the fixed effects that enter a
    coefficient, ``w`` their variable's value per group; the fixed columns that are columns of
    their own; ``[(m, parent column, own coefficient, w, parent group of each group)]`` for
    the deviations of coarser factors.
    """
    design = model.design
    if design.F is None or design.F.shape[0] == 0:
        raise ValueError("coef needs the model's rows; a model built from statistics alone (hlm_stats) has none")
    sizes = list(design.factor_sizes or (len(model.coef_names),))
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    idx_all = design.factor_idx or (design.group_idx,)
    labels_all = design.factor_labels or (design.group_labels,)
    idx = np.asarray(idx_all[k], dtype=np.int64)
    n_groups = len(labels_all[k])
    own = design.X[:, starts[k]:starts[k + 1]]
    fixed_maps, fixed_only = [], []
    for f in range(design.F.shape[1]):
        found = group_multiplier(design.F[:, f], own, idx, n_groups)
        if found is None:
            fixed_only.append(f)
        else:
            fixed_maps.append((f, found[0], found[1]))
    parent_maps = []
    if not design.crossed:
        up = np.arange(n_groups)
        for m in range(k + 1, len(sizes)):
            up = design.parents[m - 1][up]
            for c in range(starts[m], starts[m + 1]):
                found = group_multiplier(design.X[:, c], own, idx, n_groups)
                if found is not None:
                    parent_maps.append((m, c - starts[m], found[0], found[1], up.copy()))
    names = (design.factor_coef_names or (design.coef_names,))[k]
    return list(names), fixed_maps, fixed_only, parent_maps


def model_at_variance(model, delta_n):
    """The model of ``sigma=`` with its variance parameters held at ``delta_N``: a weighted model, not recompiled.

    Row ``i`` gets the precision weight ``w_i exp(-z_N,i' delta_N)`` (``w`` the weights of
    ``weights=``, 1 without them; ``z_N`` the standardised columns of
    :class:`bayeshlm.varfunc.VarianceDesign`); the per-group statistics are recomputed with
    them in the model's own basis (one pass over the rows), the rest is shared. Its ML and
    REML log-likelihoods are those of the model of ``sigma=`` at ``delta`` (docs/design.md,
    "Heterogeneous level-1 variance"); its ``sigma`` is the level-1 SD of a row of weight 1 at
    the columns' means. The returned model has no ``variance_design``.
    """
    vd = model.variance_design
    design, basis = model.design, model.basis
    w = vd.weights(delta_n, design.weights)
    stats = compute_suffstats(design.y, design.F, design.X, design.group_idx, design.group_labels.shape[0],
                              basis.weights(None, w), basis.shift, basis.scale)
    return replace(model, design=design._replace(weights=w), stats=stats, variance_design=None)
