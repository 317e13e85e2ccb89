"""The compiled model: a frozen value holding the kernel inputs and the labels beside them."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from bayeshlm.basis import Basis
from bayeshlm.data import Design
from bayeshlm.formula import FormulaSpec
from bayeshlm.priors import ColumnMoments, PriorFrame, describe
from samplers.types import Priors, Structure, SuffStats


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
        ``known_var``, ``missing``), reused by :meth:`with_data`.
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
        return int(self.stats.scal[1])

    @property
    def rows_held(self) -> bool:
        """True when the model keeps its rows (False when compiled from statistics by chunks).

        Without the rows a model samples and fits exactly as with them, but has no pointwise
        log-likelihood, observed data or cluster-robust standard errors.
        """
        return self.design.y is not None

    @property
    def n_groups(self) -> int:
        """Number of groups."""
        return int(self.design.group_labels.shape[0])

    @property
    def sigma_known(self) -> bool:
        """True when the level-1 variances are known (given per observation)."""
        return bool(self.structure.sigma_known)

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
        from bayeshlm.compile import compile_formula

        options = {**self.options, "priors": dict(self.prior_spec), **overrides}
        frame = self.prior_frame if "priors" not in overrides else None
        return replace(compile_formula(self.formula, data, prior_frame=frame, **options), equations=self.equations)

    def prior_descriptions(self) -> list[str]:
        """One line per prior in use, with the centring of those set at the predictors' means."""
        return describe(self.prior_spec, self.centred_priors())

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
        if len(design.factors) > 1:
            for k, (factor, names) in enumerate(zip(design.factors, design.factor_coef_names, strict=True)):
                lines.append(f"  level {k + 2}: {factor} ({len(design.factor_labels[k])} groups), "
                             f"random {', '.join(names)}")
        elif design.coef_names:
            blocks = ", ".join(str(s) for s in design.block_sizes)
            lines.append(f"  level 2: {self.factor} ({self.n_groups} groups), random "
                         f"{', '.join(self.coef_names)} (covariance blocks of size {blocks})")
        else:
            lines.append("  no grouping: a single-level regression")
        lines.append("  level-1 variance: " + ("known (given per observation)" if self.sigma_known else "estimated"))
        if self.equations:
            lines += ["", self.equations]
        return "\n".join(lines)
