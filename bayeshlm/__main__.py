"""Command line: ``bayeshlm fit``, ``em``, ``summary`` and ``demo`` (also ``python -m bayeshlm``)."""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import bayeshlm as bh
from bayeshlm.family import GLM_MOVES, NEWTON_ROWS_PER_GROUP
from bayeshlm.formula import FormulaError
from bayeshlm.io import check_destination
from bayeshlm.memory import check_memory
from bayeshlm.safe_formula import check_formula
from bayeshlm.sample import METHODS

READERS = {".csv": ",", ".txt": ",", ".tsv": "\t", ".parquet": None, ".pq": None}


def demo(args):
    """Fit the Raudenbush & Bryk model to High School and Beyond and print a summary."""
    import pandas as pd

    from bayeshlm.summary import describe_run, diagnostics

    check_draws(args.draws)
    formula = "mathach ~ ses_centered * (sector + meanses) + (ses_centered | school)"
    data = bh.load_dataset("hsb")
    print("High School and Beyond: 7185 students in 160 schools (Raudenbush & Bryk 2002, Table 4.5)")
    print(f"model: {formula}\n")
    t0 = time.perf_counter()
    model = bh.hlm(formula, data)
    post = bh.sample(model, chains=args.chains, draws=args.draws, warmup=args.warmup, seed=args.seed,
                     progress=not args.quiet)
    total = time.perf_counter() - t0
    table = bh.summary(post, ci_prob=0.95)
    with pd.option_context("display.width", 140, "display.max_columns", 20):
        print(table.round(4).to_string())
    diag = diagnostics(post)
    print()
    print(describe_run(post))
    print()
    print(f"sampling time: {diag['sampling_seconds']:.3f} s; data frame to result: {total:.3f} s "
          "(includes compilation on a first run)")
    n_samples = post.posterior.sizes["chain"] * post.posterior.sizes["draw"]
    n_params = sum(v.size // n_samples for v in post.posterior.data_vars.values())
    print(f"min bulk ESS over all {n_params} parameters: {diag['min_ess_bulk']:.0f} ({diag['argmin_ess_bulk']}); "
          f"min tail ESS: {diag['min_ess_tail']:.0f}; max R-hat: {diag['max_rhat']:.4f}")
    print(f"min-ESS per second: {diag['min_ess_per_second']:.0f}")
    eb = bh.fit_em(model, "reml")
    print()
    print("The same model by REML (empirical Bayes), beside the posterior:")
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(bh.compare(post, eb).round(4).to_string())
    return 0


def read_data(path):
    """Read a data file into a data frame, choosing the reader by extension.

    Parameters
    ----------
    path : str
        A ``.csv``, ``.tsv`` or ``.txt`` file (delimited text; ``.tsv`` tab-separated) or a
        ``.parquet`` / ``.pq`` file.

    Returns
    -------
    pandas.DataFrame

    Raises
    ------
    FileNotFoundError
        When the file does not exist.
    ValueError
        When the extension is not one of the accepted ones.
    """
    import pandas as pd

    suffix = Path(path).suffix.lower()
    if suffix not in READERS:
        raise ValueError(f"cannot read data file {path!r}: unsupported extension {suffix or '(none)'!r}; "
                         f"use one of {', '.join(READERS)}")
    if not Path(path).is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    if READERS[suffix] is None:
        try:
            return pd.read_parquet(path)
        except ImportError as err:  # pandas needs pyarrow (or fastparquet) for Parquet
            raise ValueError(f"reading {path} needs a Parquet engine: pip install pyarrow ({err})") from err
    return pd.read_csv(path, sep=READERS[suffix])


def check_out(path):
    """Fail early, before any sampling, when the output file cannot be written where asked.

    The directory must exist and be writable, and ``path`` must not be a directory or file of
    another kind than the one written (:func:`bayeshlm.io.check_destination`).
    """
    check_destination(path)


MIN_DRAWS = 4  # the fewest draws per chain for which ArviZ defines an ESS, shown in every report

# the remedies of bayeshlm.memory.check_memory, as options of `bayeshlm fit`
CLI_SPELLING = {"draws": "--draws {n}", "keep": "--keep-group-draws {n} (with --group-moments for every group's "
                "posterior mean and SD)", "loglik_group": "--log-likelihood group",
                "loglik_none": "--log-likelihood none"}


def check_draws(draws):
    """Refuse fewer draws per chain than the report's convergence checks need."""
    if draws < MIN_DRAWS:
        raise ValueError(f"--draws {draws}: the report's convergence checks (R-hat, ESS) need at least "
                         f"{MIN_DRAWS} draws per chain; ask for more (bayeshlm.sample accepts fewer)")


def numerical_failure(what, model, err):
    """An arithmetic error of a fit (a division by zero on tiny data) as a user error naming the model's size."""
    return ValueError(
        f"{what} failed numerically ({type(err).__name__}: {err}) on {model.n_obs} observations with "
        f"{len(model.fixed_names)} fixed effects and {model.n_theta} variance parameters: the data are too few "
        "or too extreme for this model; simplify it (fewer random terms or predictors) or add data"
    )


def parse_prior(text):
    """``ROLE=Dist(args)`` from the command line (``sd=HalfNormal(10)``) as ``(role, prior)``.

    The distribution is read by :func:`bayeshlm.priors.prior_from_text` (parsed, never evaluated).
    """
    from bayeshlm.priors import prior_from_text

    role, sep, call = text.partition("=")
    role, call = role.strip(), call.strip()
    if not sep or not role or not call:
        raise ValueError(f"--prior {text!r}: write ROLE=DISTRIBUTION, e.g. sd=HalfNormal(10) or "
                         "'fixed[x]=Normal(0, 5)'")
    return role, prior_from_text(call, f"--prior {text!r}")


UNSAFE_HINT = ("; to evaluate the formula as Python code anyway (only a formula you trust: it can run any "
               "command), pass --unsafe-formula")


def build_model(args):
    """The model of ``args.formula`` on ``args.data`` with ``--missing``, ``--known-sd``, ``--weights``, ``--prior``.

    The formula is checked first, before the data are read, in the safe mode of
    :func:`bayeshlm.safe_formula.check_formula`, unless ``--unsafe-formula`` was given.
    """
    sigma = getattr(args, "sigma", None)
    if not args.unsafe_formula:
        check_formula(args.formula, hint=UNSAFE_HINT)
        if sigma is not None:  # checked as the right side of a formula
            check_formula("sigma " + sigma.strip() if sigma.strip().startswith("~") else sigma, hint=UNSAFE_HINT)
    data = read_data(args.data)
    priors = dict(parse_prior(text) for text in (args.prior or [])) or None
    return bh.hlm(args.formula, data, missing=args.missing, known_sd=args.known_sd, priors=priors,
                  family=args.family, link=args.link, trials=args.trials, weights=args.weights, sigma=sigma,
                  nu=getattr(args, "nu", None))


def report_text(tree, model=None):
    """Text summary of a posterior (:func:`bayeshlm.report`; with the model, the groups' reliabilities too)."""
    return str(bh.report(tree, model=model))


def fit(args):
    """Sample the posterior of a model, print its report, then save it."""
    check_draws(args.draws)
    check_out(args.out)
    model = build_model(args)
    options = {"draws": args.draws, "chains": args.chains, "keep_group_draws": args.keep_group_draws,
               "group_moments": args.group_moments, "log_likelihood": args.log_likelihood,
               "glm_move": args.glm_move}
    check_memory(model, **options, spelling=CLI_SPELLING)
    try:
        post = bh.sample(model, warmup=args.warmup, seed=args.seed, method=args.method, progress=not args.quiet,
                         **options)
    except ArithmeticError as err:
        raise numerical_failure("sampling", model, err) from err
    print(report_text(post, model), flush=True)  # first: a failed save must not lose what the run found
    saved = bh.save(post, args.out)
    if not args.quiet:
        print(f"posterior saved to {saved}", file=sys.stderr)
    if post.attrs.get("interrupted"):
        print("bayeshlm: sampling was interrupted; the saved draws are incomplete", file=sys.stderr)
        return 1
    return 0


def em(args):
    """Fit a model by REML or ML, print the estimates, and save them when asked."""
    if args.out is not None:
        check_out(args.out)
    model = build_model(args)
    try:
        result = bh.fit_em(model, args.method, n_agq=args.n_agq)
    except ArithmeticError as err:
        method = args.method or ("reml" if model.gaussian else "ml")
        raise numerical_failure(f"the {method.upper()} fit", model, err) from err
    print(result.summary(), flush=True)
    if args.out is not None:
        bh.save(result, args.out)
    return 0


def summary(args):
    """Print the summary of a saved posterior or REML/ML fit."""
    result = bh.load(args.file)  # its errors name the file: absent, foreign, damaged
    if isinstance(result, bh.EMResult):
        print(result.summary())
    elif result.attrs.get("inference_library") == "bayeshlm" and "sampler" in result.attrs:
        print(report_text(result))
    else:
        raise ValueError(f"{args.file} holds no result of bayeshlm fit or em (neither a posterior drawn by "
                         "bayeshlm nor a REML/ML fit); for other ArviZ files use arviz.summary")
    return 0


def non_negative(text):
    """An argparse type: an integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {value}")
    return value


def positive(text):
    """An argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def group_draws(text):
    """An argparse type for ``--keep-group-draws``: ``all``, ``none`` or a number of groups >= 1."""
    words = {"all": True, "none": False}
    if text.lower() in words:
        return words[text.lower()]
    try:
        return positive(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"must be all, none or a number of groups, got {text!r}") from err


def loglik_choice(text):
    """An argparse type for ``--log-likelihood``: auto, pointwise, group or none (False)."""
    choices = {"auto": "auto", "pointwise": "pointwise", "group": "group", "none": False}
    if text not in choices:
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(choices)}, got {text!r}")
    return choices[text]


def add_model_arguments(parser):
    """DATA, FORMULA and the options of :func:`bayeshlm.hlm` shared by ``fit`` and ``em``."""
    parser.add_argument("data", metavar="DATA", help="data file: .csv, .tsv, .txt, .parquet or .pq")
    parser.add_argument("formula", metavar="FORMULA",
                        help='model formula, e.g. "y ~ x + (x | group)"; checked in safe mode: column names, numbers, '
                             "formula operators and known transforms (log, exp, np.sqrt, I(...) of arithmetic, "
                             "C(...), center, scale, poly, bs, ...) only")
    parser.add_argument("--unsafe-formula", action="store_true",
                        help="evaluate the formula without the safe-mode check, as formulaic does: its Python "
                             "(I(...), {...}) can then run any code with your rights; only for formulas you trust")
    parser.add_argument("--missing", choices=["raise", "drop"], default="raise",
                        help="rows with missing values in a used column: refuse them (default) or drop them")
    parser.add_argument("--known-sd", metavar="COLUMN", help="column of known level-1 standard deviations")
    parser.add_argument("--weights", metavar="COLUMN",
                        help="column of precision weights of a Gaussian model, as lme4's lmer(weights=): row i's "
                             "level-1 variance is sigma^2 / w_i (not frequency weights: a row of weight k is not k "
                             "rows)")
    parser.add_argument("--family", choices=["gaussian", "student", "bernoulli", "binomial", "poisson"],
                        default="gaussian",
                        help="the level-1 family (default gaussian; student: Student-t residuals); binomial responses "
                             "as cbind(successes, failures) in the formula or with --trials")
    parser.add_argument("--nu", type=float, default=None,
                        help="degrees of freedom of --family student, held fixed (default: estimated)")
    parser.add_argument("--sigma", metavar="FORMULA",
                        help="predictors of the log level-1 variance, e.g. '~ sector' or '~ (1 | school)' (a variance "
                             "per group): row i's variance is sigma^2 exp(z_i' delta)")
    parser.add_argument("--link", choices=["logit", "probit", "log"], default=None,
                        help="link of a non-Gaussian family (default logit for the binomial families, log for poisson)")
    parser.add_argument("--trials", metavar="COLUMN", help="column of the numbers of trials of a binomial response")
    parser.add_argument("--prior", action="append", metavar="ROLE=DIST",
                        help="a prior, repeatable: sd=HalfNormal(10), 'fixed[x]=Normal(0, 5)', sigma=HalfCauchy(5), "
                             "corr=LKJ(2) (roles as in bayeshlm.hlm's priors)")


def make_parser():
    """The argument parser of the ``bayeshlm`` command."""
    parser = argparse.ArgumentParser(
        prog="bayeshlm", description="Bayesian hierarchical linear models",
        epilog="A formula is code: formulaic evaluates the Python in it (I(...), {...}), and Python can run any "
               "command. fit and em therefore check the formula first (safe mode: names, numbers, operators and "
               "the transforms listed in bayeshlm.safe_formula.ALLOWED_CALLS) and refuse anything else, unless "
               "given --unsafe-formula.")
    parser.add_argument("--version", action="version", version=f"bayeshlm {bh.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p_fit = sub.add_parser("fit", help="sample the posterior of a model, save it and print a summary")
    add_model_arguments(p_fit)
    p_fit.add_argument("--chains", type=positive, default=4)
    p_fit.add_argument("--draws", type=positive, default=1000, help="kept draws per chain")
    p_fit.add_argument("--warmup", type=non_negative, default=1000, help="warm-up sweeps per chain")
    p_fit.add_argument("--seed", type=non_negative, default=None, help="seed (default: a fresh one, recorded)")
    p_fit.add_argument("--method", choices=sorted(METHODS), default=None,
                       help="variance-component moves (default: gibbs with --glm-move newton, else mh)")
    p_fit.add_argument("--glm-move", choices=list(GLM_MOVES), default="auto",
                       help="how a binomial or Poisson model's coefficients move: by data augmentation, or by the "
                            "Newton proposal (nested grouping factors); default auto: newton for counts, and for "
                            f"binomial rows when the finest groups hold at least {NEWTON_ROWS_PER_GROUP} trials on "
                            "average, else augment")
    p_fit.add_argument("--keep-group-draws", type=group_draws, default=True, metavar="all|none|N",
                       help="keep the draws of all groups' coefficients (default), none, or the first N groups of "
                            "each factor (many groups need much memory)")
    p_fit.add_argument("--group-moments", action="store_true",
                       help="also keep every group's running posterior mean and SD (by chain)")
    p_fit.add_argument("--log-likelihood", type=loglik_choice, default="auto", metavar="auto|pointwise|group|none",
                       help="store the log-likelihood per observation, per group or not at all (default auto: "
                            "per observation unless chains x draws x rows exceeds 2e7, else per group, from the "
                            "groups' statistics)")
    p_fit.add_argument("--out", default="fit.nc", help="output file: .zarr for Zarr, else netCDF (default fit.nc)")
    p_fit.add_argument("--quiet", action="store_true", help="no progress bar")
    p_fit.set_defaults(run=fit)

    p_em = sub.add_parser("em", help="fit a model by REML or ML and print the estimates")
    add_model_arguments(p_em)
    p_em.add_argument("--method", choices=["reml", "ml"], default=None,
                      help="reml (default for a Gaussian level 1) or ml (the only one for the other families)")
    p_em.add_argument("--n-agq", type=positive, default=1,
                      help="nodes of adaptive Gauss-Hermite quadrature for a non-Gaussian family (default 1: the "
                           "Laplace approximation)")
    p_em.add_argument("--out", help="also save the fit: .zarr for Zarr, else netCDF")
    p_em.set_defaults(run=em)

    p_summary = sub.add_parser("summary", help="print the summary of a result saved by fit or em")
    p_summary.add_argument("file", metavar="FILE")
    p_summary.set_defaults(run=summary)

    p_demo = sub.add_parser("demo", help="fit the classic High School and Beyond model and print a summary")
    p_demo.add_argument("--chains", type=positive, default=4)
    p_demo.add_argument("--draws", type=positive, default=1000)
    p_demo.add_argument("--warmup", type=non_negative, default=1000)
    p_demo.add_argument("--seed", type=non_negative, default=2026)
    p_demo.add_argument("--quiet", action="store_true", help="no progress bar")
    p_demo.set_defaults(run=demo)
    return parser


def main(argv=None):
    """Entry point of the ``bayeshlm`` command.

    Errors in the user's input (data, formula, priors, files, a run too large for the memory,
    data too few for the model) are reported on standard error as one line,
    ``bayeshlm: error: <message>``, with exit code 2 and no traceback (a formula error keeps
    the library's second and third lines, the formula with a caret under the fault); a
    sampler failure likewise, with exit code 1. Warnings are one line each,
    ``bayeshlm: warning: <message>``. Anything else is a bug: it is reported in one line too,
    with exit code 1 (``BAYESHLM_TRACEBACK=1`` in the environment shows the traceback).

    Returns
    -------
    int
        The exit code.
    """
    args = make_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = show_warning
        # ArviZ's guess that the dimensions were swapped, when there are more chains than draws
        warnings.filterwarnings("ignore", message="Found chain dimension to be longer than draw dimension")
        try:
            return args.run(args)
        except BrokenPipeError:  # output piped into e.g. `head`, which exited
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1
        except (ValueError, OSError) as err:  # includes DataError, FormulaError, PriorError, load and save errors
            return fail(err, 2)
        except MemoryError as err:  # an allocation failed after all (the check is an estimate)
            return fail(f"out of memory ({err or 'an allocation failed'}); ask for fewer draws, "
                        "--keep-group-draws N or --log-likelihood group", 2)
        except bh.SamplingError as err:
            return fail(err, 1)
        except NotImplementedError as err:  # a model the command cannot do yet (it says which command can)
            return fail(err, 2)
        except KeyboardInterrupt:  # before the first kept draw; later, sample() returns the draws so far
            return fail("interrupted", 130)
        except Exception as err:
            if os.environ.get("BAYESHLM_TRACEBACK"):
                raise
            return fail(f"unexpected {type(err).__name__}: {err} (a bug in bayeshlm: please report it with the "
                        "command; BAYESHLM_TRACEBACK=1 shows where it happened)", 1)


def show_warning(message, category, filename, lineno, file=None, line=None):
    """Print a warning as one line, ``bayeshlm: warning: ...``, without the source line."""
    print(f"bayeshlm: warning: {' '.join(str(message).split())}", file=sys.stderr)


def fail(err, code):
    """Report an error the argparse way, on one line (a formula error with its caret lines), and return the code."""
    text = str(err) if isinstance(err, FormulaError) else " ".join(str(err).split())
    print(f"bayeshlm: error: {text}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
