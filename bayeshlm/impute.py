"""Draws of missing responses from a posterior (``hlm(..., missing="impute")``).

A model compiled with ``missing="impute"`` keeps the rows whose response is missing aside
(:class:`bayeshlm.data.MissingResponses`) and is fitted to the observed rows: under missing
at random, with parameters distinct from those of the missingness, that is the likelihood of
the data as observed (the missingness is ignorable, Rubin 1976). :func:`impute` then draws
each missing response from its conditional given each posterior draw (docs/design.md,
"Missing outcomes").
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from bayeshlm.model import check_result, refuse_variance_model
from bayeshlm.predict import predictive_draws
from bayeshlm.results import factor_parts

__all__ = ["IMPUTED", "MISSING_OBS", "impute"]

IMPUTED = "imputed"  # the result's group of imputed responses
MISSING_OBS = "missing_obs"  # its row dimension: each row's position in the data as given


def impute(model, posterior, seed=None):
    """The posterior with a group ``imputed``: draws of the responses that are missing.

    For posterior draw ``s`` and a row ``i`` whose response is missing,

        y_i = f_i' a_s + sum_k x_ik' b_k,s[g_k(i)] + offset_i + sigma_s / sqrt(w_i) z,    z ~ N(0, 1)

    with the draw's fixed effects, its coefficients of the row's groups and its sigma (the
    known SD for known level-1 variances, ``sigma / sqrt(w_i)`` with precision weights). A
    group whose responses are all missing is not in the posterior: its coefficients are drawn
    from ``N(0, T_k)`` with the draw's covariance, once per draw and shared by its rows, as
    :func:`bayeshlm.predict` draws a new group.

    Drawing them after the chain, draw by draw, gives exactly what drawing them in each sweep
    of the sampler would. Under ignorable missingness (missing at random, the missingness's
    parameters distinct from the model's) the joint posterior factorises as
    ``p(params, y_mis | y_obs) = p(params | y_obs) p(y_mis | params)``: with a Gaussian level 1
    a row's response, given the fixed effects, its groups' coefficients and sigma, is
    independent of every other row, and integrating a missing row's density over its response
    gives 1. So the missing responses enter none of the other conditionals (the chain's target
    is ``p(params | y_obs)``, the posterior of the observed rows), and the conditional of
    ``y_mis`` needs nothing but the parameters of the same draw: the chain's draws, each with
    ``y_mis`` drawn from them, are draws of the joint posterior (docs/design.md, "Missing
    outcomes").

    Parameters
    ----------
    model : Model
        Compiled with ``missing="impute"`` on data whose response is missing in some rows.
    posterior : xarray.DataTree
        From :func:`bayeshlm.sample` on ``model``, with the group coefficients kept.
    seed : int or numpy.random.Generator, optional
        For the noise and the coefficients of groups with no observed response.

    Returns
    -------
    xarray.DataTree
        A copy of ``posterior`` with the group ``imputed`` (replacing one already there): the
        response's draws, dimensions ``(chain, draw, missing_obs)``, ``missing_obs`` holding
        each row's position in the data as given (``observed_data``'s ``obs`` holds those of
        the observed rows).

    Examples
    --------
    >>> post = bh.sample(model, seed=1)  # doctest: +SKIP
    >>> post = bh.impute(model, post, seed=2)  # doctest: +SKIP
    >>> post.imputed["reaction"].mean(("chain", "draw"))  # doctest: +SKIP
    """
    check_result(model, posterior, "the posterior")
    missing = model.design.missing_responses
    if missing is None:
        how = model.options.get("missing", "raise")
        raise ValueError("the model has no missing responses to impute" + (
            ": its data has a response in every row" if how == "impute" else
            f" (compiled with missing={how!r}): compile it with bayeshlm.hlm(..., missing='impute')"))
    refuse_variance_model(model, "imputing missing responses")
    rng = np.random.default_rng(seed)
    parts = factor_parts(model)
    blocks = [missing.X[:, lo:hi] for _, (lo, hi), _, _ in parts]
    draws = predictive_draws(model, posterior, missing.F, blocks, list(missing.factor_labels),
                             missing.noise_variance, missing.offset, rng)  # the offset added back: y's scale
    post = posterior.posterior
    chains, n_draws = post.sizes["chain"], post.sizes["draw"]
    ds = xr.Dataset({model.spec.response: (("chain", "draw", MISSING_OBS),
                                           draws.reshape(chains, n_draws, missing.rows.shape[0]))},
                    coords={"chain": post["chain"].values, "draw": post["draw"].values,
                            MISSING_OBS: np.asarray(missing.rows)})
    ds.attrs["n_missing"] = int(missing.rows.shape[0])
    out = posterior.copy()
    out[IMPUTED] = xr.DataTree(ds)
    return out
