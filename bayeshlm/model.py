"""The compiled model: a frozen value holding the kernel inputs and the labels beside them."""

from __future__ import annotations

from dataclasses import dataclass, field

from bayeshlm.data import Design
from bayeshlm.formula import FormulaSpec
from samplers.types import Priors, Structure, SuffStats


@dataclass(frozen=True, eq=False)
class Model:
    """A two-level hierarchical linear model compiled against one data set.

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
    """

    spec: FormulaSpec
    design: Design
    stats: SuffStats
    structure: Structure
    priors: Priors
    prior_spec: dict
    options: dict = field(default_factory=dict)

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
        return int(self.design.y.shape[0])

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

        The priors in use are kept as they are (defaults are not rescaled to the new data).
        Keyword arguments override the stored options of :func:`bayeshlm.hlm`, e.g. a new
        ``known_sd`` array.
        """
        from bayeshlm.compile import hlm

        options = {**self.options, "priors": dict(self.prior_spec), **overrides}
        return hlm(self.formula, data, **options)

    def __repr__(self) -> str:
        blocks = ", ".join(str(s) for s in self.design.block_sizes)
        lines = [
            f"<bayeshlm.Model {self.formula!r}>",
            f"  observations: {self.n_obs}; groups ({self.factor}): {self.n_groups}",
            f"  fixed effects: {', '.join(self.fixed_names)}",
            f"  random coefficients by {self.factor}: {', '.join(self.coef_names)} "
            f"(covariance blocks of size {blocks})",
            "  level-1 variance: " + ("known (given per observation)" if self.sigma_known else "estimated"),
        ]
        return "\n".join(lines)
