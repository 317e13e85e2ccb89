"""The layout of a result: every group, variable and dimension of the ArviZ DataTree by name.

:func:`bayeshlm.sample` writes a result with this layout (:mod:`bayeshlm.results`) and every
reader (:mod:`bayeshlm.predict`, :mod:`bayeshlm.report`, :mod:`bayeshlm.compare`,
:mod:`bayeshlm.plots`, :mod:`bayeshlm.evidence`, ...) finds things in it through the names
here, never by spelling them again.

Groups and variables (``<g>`` is a grouping factor's dimension name, :func:`dim_name`):

* ``posterior``: :data:`FIXED` (:data:`FIXED_DIM`), :data:`SIGMA` (unless the level-1
  variances are known), and per grouping factor :func:`sd_var` (:func:`coef_dim`),
  :func:`corr_var` (:func:`corr_pair_dim`, when the factor has correlated coefficients) and
  :func:`effect_var` (``<g>``, :func:`coef_dim`: each group's deviation from the fixed part).
* ``sample_stats``: :data:`LP`, :data:`ACCEPT_RATE` and :data:`THETA` (:data:`THETA_DIM`), the
  variance components on the sampler's own unconstrained scale (:mod:`samplers.theta`).
* ``log_likelihood``: the response, by :data:`OBS` or by the finest factor's ``<g>``.
* ``observed_data`` (the response, :data:`OBS`) and ``constant_data``
  (:func:`index_var` per factor, ``known_sd``, :data:`WEIGHTS`, :data:`OFFSET`).
* ``group_moments``: :func:`effect_mean_var`, :func:`effect_sd_var` and ``n_draws``.
"""

from __future__ import annotations

CHAIN, DRAW = "chain", "draw"
POSTERIOR = "posterior"
SAMPLE_STATS = "sample_stats"
LOG_LIKELIHOOD = "log_likelihood"
OBSERVED_DATA = "observed_data"
CONSTANT_DATA = "constant_data"
GROUP_MOMENTS = "group_moments"
POSTERIOR_PREDICTIVE = "posterior_predictive"
PRIOR = "prior"
LOG_PRIOR = "log_prior"
PRIOR_PREDICTIVE = "prior_predictive"

FIXED = "fixed"  # fixed effects
FIXED_DIM = "fixed_term"
SIGMA = "sigma"  # level-1 SD
OBS = "obs"  # observations (rows as given)
LP = "lp"  # log marginal posterior of the variance components, up to a constant
ACCEPT_RATE = "accept_rate"  # mean acceptance of the moves on the variance components
THETA = "theta"  # the variance components in the sampler's unconstrained coordinates
THETA_DIM = "theta_index"
KNOWN_SD = "known_sd"
WEIGHTS = "weights"  # precision weights of the rows (constant_data)
OFFSET = "offset"  # a Gaussian model's offset per row (constant_data)
N_DRAWS = "n_draws"


def dim_name(factor):
    """Dimension name of a grouping factor (``a:b`` becomes ``a_b``)."""
    return factor.replace(":", "_")


def coef_dim(g):
    """Dimension of a factor's random coefficients."""
    return f"{g}_coef"


def sd_var(g):
    """Variable of a factor's group SDs."""
    return f"{g}_sd"


def corr_var(g):
    """Variable of the correlations among a factor's coefficients."""
    return f"{g}_corr"


def corr_pair_dim(g):
    """Dimension of those correlations: one entry per pair."""
    return f"{g}_corr_pair"


def corr_pair_label(first, second):
    """Coordinate label of the correlation of two coefficients of one factor."""
    return f"{first},{second}"


def effect_var(g):
    """Variable of the group coefficients (deviations from the fixed part)."""
    return f"{g}_effect"


def effect_mean_var(g):
    """Running posterior mean of every group's coefficients (``group_moments``)."""
    return f"{g}_effect_mean"


def effect_sd_var(g):
    """Running posterior SD of every group's coefficients (``group_moments``)."""
    return f"{g}_effect_sd"


def index_var(g):
    """``constant_data`` variable of each row's group code (position in the coordinate ``<g>``)."""
    return f"{g}_index"


def is_effect_var(name):
    """Whether a posterior variable holds group coefficients."""
    return name.endswith("_effect")
