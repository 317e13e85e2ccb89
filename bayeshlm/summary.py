"""Tables and convergence diagnostics of a posterior fit."""

from __future__ import annotations

import json

import numpy as np

from bayeshlm.schema import is_effect_var

RHAT_LIMIT = 1.01  # above it the chains are said to disagree (Vehtari et al. 2021)


class ConvergenceWarning(UserWarning):
    """The chains of a run disagree: R-hat of a parameter above :data:`RHAT_LIMIT`."""


def parameter_vars(posterior, include_groups):
    """The posterior's variables to summarise: all, or all but the group coefficients."""
    names = list(posterior.data_vars)
    if not include_groups:
        names = [n for n in names if not is_effect_var(n)]
    return names


def summary(result, *, ci_prob=0.95, include_groups=False, round_to="none"):
    """Posterior summary: mean, SD, equal-tailed interval, R-hat, bulk and tail ESS, MCSE.

    Parameters
    ----------
    result : xarray.DataTree
        From :func:`bayeshlm.sample`.
    ci_prob : float
        Probability of the equal-tailed credible interval.
    include_groups : bool
        Include every group's coefficients (one row per group and coefficient).
    round_to : int or "none"
        Passed to :func:`arviz.summary`.

    Returns
    -------
    pandas.DataFrame
    """
    import arviz as az

    names = parameter_vars(result.posterior, include_groups)
    return az.summary(result, var_names=names, ci_prob=ci_prob, ci_kind="eti", round_to=round_to)


def _scalar_label(name, da, i):
    """``name[coord,...]`` of the ``i``-th scalar of ``da`` (flattened), or ``name`` for a scalar variable."""
    if not da.dims:
        return name
    labels = da.stack(_flat=da.dims)["_flat"].values[i]
    labels = labels if isinstance(labels, tuple) else (labels,)
    return f"{name}[{','.join(str(x) for x in labels)}]"


def diagnostics(result):
    """Worst-case convergence diagnostics over every scalar in the posterior.

    Returns
    -------
    dict
        ``min_ess_bulk``, ``min_ess_tail``, ``max_rhat`` over all parameters (fixed effects,
        variance components, correlations and every group coefficient), the parameter
        attaining each, the sampling seconds, and ``min_ess_per_second``
        (``min_ess_bulk`` over the sampling seconds). A diagnostic that is defined for no
        parameter (an ESS with fewer than four draws per chain, R-hat with one chain) is
        None, and its parameter too; ``min_ess_per_second`` is then NaN.
    """
    import arviz as az

    post = result.posterior
    ess_bulk = az.ess(result, method="bulk")
    ess_tail = az.ess(result, method="tail")
    rhat = az.rhat(result)
    out = {}
    for key, ds, pick in (
        ("min_ess_bulk", ess_bulk, np.nanargmin),
        ("min_ess_tail", ess_tail, np.nanargmin),
        ("max_rhat", rhat, np.nanargmax),
    ):
        best_val, best_name = None, None
        for name in post.data_vars:
            values = np.asarray(ds[name]).reshape(-1)
            if values.size == 0 or np.all(np.isnan(values)):
                continue
            i = pick(values)
            v = float(values[i])
            better = best_val is None or (v < best_val if pick is np.nanargmin else v > best_val)
            if better:
                best_val = v
                best_name = _scalar_label(name, ds[name], i)
        out[key] = best_val
        out[key.replace("min_", "argmin_").replace("max_", "argmax_")] = best_name
    seconds = float(result.attrs.get("sampling_time", np.nan))
    out["sampling_seconds"] = seconds
    # with fewer than four draws per chain ArviZ defines no ESS (None here), and none per second
    ess = out["min_ess_bulk"]
    out["min_ess_per_second"] = ess / seconds if ess is not None and seconds > 0 else float("nan")
    return out


def worst_rhat(result):
    """``(R-hat, parameter)`` of the parameter whose chains disagree most, group coefficients left out.

    ``(None, None)`` when R-hat is not defined (one chain, or fewer than four draws a chain).
    The fixed effects, SDs, correlations and sigma are few, so this costs little after every run.
    """
    import arviz as az

    post = result.posterior
    if post.sizes.get("chain", 0) < 2 or post.sizes.get("draw", 0) < 4:
        return None, None
    names = parameter_vars(post, False)
    if not names:
        return None, None
    rhat = az.rhat(result, var_names=names)
    worst, where = None, None
    for name in names:
        da = rhat[name]
        values = np.asarray(da).reshape(-1)
        if values.size == 0 or np.all(np.isnan(values)):
            continue
        i = int(np.nanargmax(values))
        if worst is None or values[i] > worst:
            worst = float(values[i])
            where = _scalar_label(name, da, i)
    return worst, where


def warn_if_unconverged(result):
    """Warn (:class:`ConvergenceWarning`) when a parameter's R-hat is above :data:`RHAT_LIMIT`."""
    import warnings

    worst, where = worst_rhat(result)
    if worst is not None and worst > RHAT_LIMIT:
        warnings.warn(f"R-hat {worst:.3f} for {where} (above {RHAT_LIMIT}): the chains disagree and the "
                      "posterior summaries are not yet reliable; draw more (draws=, warmup=), or look at "
                      "bh.plot_trace and bh.report", ConvergenceWarning, stacklevel=3)


def prior_sensitivity(result, var_names=None, *, threshold=0.05):
    """Power-scaling sensitivity of the posterior to its prior and to its likelihood (Kallioinen et al. 2024).

    Each parameter's posterior is reweighted, by Pareto-smoothed importance sampling, as if
    the prior (or the likelihood) were raised to a power near 1; the sensitivity is how far
    the posterior moves (a cumulative Jensen-Shannon distance per unit of log power).
    ArviZ's ``psense_summary`` on the ``log_prior`` and ``log_likelihood`` groups that
    :func:`bayeshlm.sample` writes (docs/design.md, "Log prior").

    Parameters
    ----------
    result : xarray.DataTree
        From :func:`bayeshlm.sample` (with its log-likelihood, the default).
    var_names : list of str, optional
        Posterior variables to check; default the fixed effects, sigma, the group SDs and
        correlations.
    threshold : float
        Sensitivity above which a parameter is flagged (0.05, the authors' choice).

    Returns
    -------
    pandas.DataFrame
        One row per parameter: ``prior`` and ``likelihood`` sensitivities and a diagnosis
        (``"potential prior-data conflict"`` when both are above the threshold, ``"potential
        strong prior / weak likelihood"`` when the prior's alone is, else a tick).
    """
    from arviz_stats import psense_summary

    missing = [group for group in ("log_prior", "log_likelihood") if group not in result.children]
    if missing:
        raise ValueError(f"the posterior has no {' or '.join(missing)} group: sample it again with this version of "
                         "bayeshlm (and log_likelihood left on)")
    names = parameter_vars(result.posterior, False) if var_names is None else list(var_names)
    return psense_summary(result, var_names=names, threshold=threshold)


def describe_run(result):
    """A few lines on how the run was made: sampler settings, priors, timings."""
    settings = json.loads(result.attrs["sampler"])
    priors = json.loads(result.attrs["priors"])
    lines = [
        f"formula: {result.attrs['formula']}",
        "sampler: {method} ({chains} chains x {draws} draws after {warmup} warm-up, thin {thin}, seed {seed})".format(
            **settings
        ),
        "priors:",
    ]
    lines += [f"  {k}: {v}" for k, v in priors.items()]
    return "\n".join(lines)
