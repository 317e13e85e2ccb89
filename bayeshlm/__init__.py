"""bayeshlm: Bayesian hierarchical linear models, fast and exact.

Declare a model with an lme4-style formula (:func:`hlm`), draw its posterior with a
Gibbs / Metropolis-Hastings sampler built on per-group sufficient statistics
(:func:`sample`), and get an ArviZ ``DataTree`` back.
"""

from bayeshlm.version import __version__


def _check_arviz():
    # ArviZ 0.x installs silently on old setups, and some of its calls then misbehave quietly.
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("arviz")
    except PackageNotFoundError as err:  # pragma: no cover - a declared dependency
        raise ImportError("bayeshlm needs arviz >= 1.3: pip install 'arviz[matplotlib]>=1.3,<2'") from err
    major, minor = (int(x) for x in found.split(".")[:2])
    if (major, minor) < (1, 3) or major >= 2:
        raise ImportError(f"bayeshlm needs arviz >= 1.3 and < 2, found {found}")


_check_arviz()

from bayeshlm.accessors import coef, fixef, ranef, varcorr  # noqa: E402
from bayeshlm.chunked import hlm_stats  # noqa: E402
from bayeshlm.compare import compare, plot_shrinkage, shrinkage_table  # noqa: E402
from bayeshlm.data import DataError, Design, GroupLevelWarning, IdentificationWarning, NestingWarning  # noqa: E402
from bayeshlm.datasets import list_datasets, load_dataset  # noqa: E402
from bayeshlm.em import EMResult, fit_em  # noqa: E402
from bayeshlm.evidence import (  # noqa: E402
    BayesFactor,
    Evidence,
    bayes_factor,
    marginal_likelihood,
    marginal_likelihood_pooled,
)
from bayeshlm.family import FamilyWarning  # noqa: E402
from bayeshlm.formula import FormulaError, parse_formula  # noqa: E402
from bayeshlm.hierarchy import Equation, Hierarchy  # noqa: E402
from bayeshlm.impute import impute  # noqa: E402
from bayeshlm.inference import ContrastTest, KenwardRoger, contrast_df, contrast_test, kenward_roger, t_tests  # noqa: E402
from bayeshlm.intervals import BootstrapResult, bootstrap, profile_intervals  # noqa: E402
from bayeshlm.io import load, save  # noqa: E402
from bayeshlm.lrt import LRTResult, lrt, lrt_hierarchy  # noqa: E402
from bayeshlm.marginal import marginal_means, marginal_slopes, reference_grid  # noqa: E402
from bayeshlm.model import (  # noqa: E402
    Model,
    ModelMismatchError,
    hlm,  # noqa: E402
    model_from,
)
from bayeshlm.partition import variance_partition  # noqa: E402
from bayeshlm.plots import (  # noqa: E402
    plot_caterpillar,
    plot_compare,
    plot_ppc,
    plot_rank,
    plot_reliability,
    plot_trace,
)
from bayeshlm.predict import (  # noqa: E402
    group_log_likelihood,
    loo,
    marginal_group_log_likelihood,
    posterior_predictive,
    predict,
    prior_predictive,
)
from bayeshlm.priors import (  # noqa: E402
    LKJ,
    Flat,
    HalfCauchy,
    HalfNormal,
    HalfStudentT,
    InverseGamma,
    InverseWishart,
    Normal,
    PriorError,
    Uniform,
)
from bayeshlm.reliability import reliability  # noqa: E402
from bayeshlm.report import Report, report  # noqa: E402
from bayeshlm.safe_formula import check_formula  # noqa: E402
from bayeshlm.sample import SamplingError, sample  # noqa: E402
from bayeshlm.simulate import simulate_crossed, simulate_instructors, simulate_nested  # noqa: E402
from bayeshlm.summary import ConvergenceWarning, prior_sensitivity, summary  # noqa: E402

__all__ = [
    "GroupLevelWarning",
    "NestingWarning",
    "FamilyWarning",
    "ConvergenceWarning",
    "Hierarchy",
    "IdentificationWarning",
    "LKJ",
    "DataError",
    "Design",
    "EMResult",
    "Equation",
    "Evidence",
    "BayesFactor",
    "coef",
    "ContrastTest",
    "contrast_test",
    "contrast_df",
    "kenward_roger",
    "KenwardRoger",
    "t_tests",
    "profile_intervals",
    "bootstrap",
    "BootstrapResult",
    "prior_sensitivity",
    "variance_partition",
    "reliability",
    "plot_reliability",
    "fixef",
    "ranef",
    "varcorr",
    "Flat",
    "FormulaError",
    "HalfCauchy",
    "HalfNormal",
    "HalfStudentT",
    "InverseGamma",
    "InverseWishart",
    "LRTResult",
    "Model",
    "ModelMismatchError",
    "Normal",
    "PriorError",
    "Report",
    "SamplingError",
    "Uniform",
    "__version__",
    "bayes_factor",
    "check_formula",
    "compare",
    "fit_em",
    "group_log_likelihood",
    "hlm",
    "hlm_stats",
    "impute",
    "list_datasets",
    "load",
    "load_dataset",
    "loo",
    "lrt",
    "lrt_hierarchy",
    "marginal_group_log_likelihood",
    "marginal_means",
    "marginal_slopes",
    "marginal_likelihood",
    "marginal_likelihood_pooled",
    "model_from",
    "parse_formula",
    "plot_caterpillar",
    "plot_compare",
    "plot_ppc",
    "plot_rank",
    "plot_shrinkage",
    "plot_trace",
    "posterior_predictive",
    "predict",
    "prior_predictive",
    "reference_grid",
    "report",
    "sample",
    "save",
    "shrinkage_table",
    "simulate_instructors",
    "simulate_crossed",
    "simulate_nested",
    "summary",
]
