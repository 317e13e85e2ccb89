"""Checking a sampler statistically: prior draws, simulated responses, simulation-based calibration.

SBC (Talts, Betancourt, Simpson, Vehtari & Gelman 2018): draw the parameters from the prior,
the response from the model given them, and the posterior given that response; the rank of
the true value among ``L`` posterior draws is then uniform on ``0 .. L`` for every
parameter, exactly when the sampler draws from the right posterior. Any error in the
likelihood, the priors or the sampler shows up as non-uniform ranks.

The model's design (predictors, groups, known variances) is kept; only the response is
replaced, and the priors must be proper.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

from bayeshlm.em import corr_key
from bayeshlm.priors import (
    HalfCauchy,
    HalfNormal,
    HalfStudentT,
    InverseGamma,
    InverseWishart,
    Normal,
    Uniform,
)
from samplers.nested import two_level
from samplers.suffstats import compute_suffstats


def _draw_sd(prior, rng, role):
    if isinstance(prior, HalfNormal):
        return abs(rng.normal(0.0, prior.sigma))
    if isinstance(prior, HalfStudentT):
        return abs(rng.standard_t(prior.nu)) * prior.sigma
    if isinstance(prior, HalfCauchy):
        return abs(rng.standard_cauchy()) * prior.beta
    if isinstance(prior, Uniform):
        return rng.uniform(0.0, prior.upper)
    if isinstance(prior, InverseGamma):
        return float(np.sqrt(1.0 / rng.gamma(prior.alpha, 1.0 / prior.beta)))
    raise ValueError(f"the prior of {role} is {prior}, which is improper: draws from the prior need proper priors")


def lkj_corr(d, eta, rng):
    """A ``d x d`` correlation matrix from the LKJ(eta) distribution, by the vine method.

    Partial correlations on a C-vine are independent, ``2 Beta(b_k, b_k) - 1`` with
    ``b_k = eta + (d - 2 - k) / 2`` at tree level ``k`` (Lewandowski, Kurowicka & Joe 2009,
    section 2.4), and are turned into correlations by the recursion of partial correlations.
    """
    P = np.zeros((d, d))
    R = np.eye(d)
    b = eta + (d - 1) / 2.0
    for k in range(d - 1):
        b -= 0.5
        for i in range(k + 1, d):
            P[k, i] = 2.0 * rng.beta(b, b) - 1.0
            r = P[k, i]
            for m in range(k - 1, -1, -1):
                r = r * np.sqrt((1.0 - P[m, i] ** 2) * (1.0 - P[m, k] ** 2)) + P[m, i] * P[m, k]
            R[k, i] = R[i, k] = r
    return R


def draw_from_prior(model, rng):
    """Parameters and group coefficients drawn from the model's priors.

    Returns
    -------
    dict
        ``fixed`` (n_fixed,), ``sigma`` (float, nan when the level-1 variances are known),
        ``cov`` (n_coef, n_coef) block-diagonal covariance of the group coefficients,
        ``sd`` and ``corr`` (its SDs and correlation matrix), ``b`` (n_groups of every
        factor, n_coef) group coefficients in the layout of the sampler's state.
    """
    spec = model.prior_spec
    fixed = np.empty(len(model.fixed_names))
    for q, name in enumerate(model.fixed_names):
        prior = spec[f"fixed[{name}]"]
        if not isinstance(prior, Normal):
            raise ValueError(f"the prior of fixed[{name}] is {prior}: draws from the prior need proper priors")
        fixed[q] = rng.normal(prior.mu, prior.sigma)
    sigma = np.nan if model.sigma_known else _draw_sd(spec["sigma"], rng, "sigma")
    names = model.coef_names
    D = len(names)
    cov = np.zeros((D, D))
    bp = model.structure.block_ptr
    for k in range(len(bp) - 1):
        lo, hi = bp[k], bp[k + 1]
        if isinstance(spec.get("cov"), InverseWishart) and hi - lo > 1:
            scale = spec["cov"].matrix(hi - lo)
            cov[lo:hi, lo:hi] = sps.invwishart(df=spec["cov"].nu, scale=scale).rvs(random_state=rng)
            continue
        sd = np.array([_draw_sd(spec[f"sd[{names[i]}]"], rng, f"sd[{names[i]}]") for i in range(lo, hi)])
        R = lkj_corr(hi - lo, spec["corr"].eta, rng) if hi - lo > 1 else np.eye(1)
        cov[lo:hi, lo:hi] = R * np.outer(sd, sd)
    sd = np.sqrt(np.diag(cov))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = cov / np.outer(sd, sd)
    st = model.structure
    n_nodes = model.n_groups if two_level(st) else int(st.node_ptr[-1])
    b = np.zeros((n_nodes, D))
    for k in range(len(st.level_ptr) - 1):
        lo, hi = st.level_ptr[k], st.level_ptr[k + 1]
        rows = slice(0, n_nodes) if two_level(st) else slice(st.node_ptr[k], st.node_ptr[k + 1])
        n_k = rows.stop - rows.start
        b[rows, lo:hi] = rng.multivariate_normal(np.zeros(hi - lo), cov[lo:hi, lo:hi], size=n_k, method="eigh")
    return {"fixed": fixed, "sigma": sigma, "cov": cov, "sd": sd, "corr": corr, "b": b}


def simulate_response(model, params, rng):
    """A response drawn from the model given parameters from :func:`draw_from_prior`."""
    from bayeshlm.results import finest_coefficients

    design = model.design
    b_row = finest_coefficients(model, params["b"])[design.group_idx]
    mean = design.F @ params["fixed"] + np.einsum("ik,ik->i", design.X, b_row)
    var = design.obs_var if model.sigma_known else np.full(model.n_obs, params["sigma"] ** 2)
    return mean + rng.normal(size=model.n_obs) * np.sqrt(var)


def with_response(model, y):
    """The same model (design, priors, structure) with the response replaced by ``y``."""
    design = model.design._replace(y=np.ascontiguousarray(y, dtype=np.float64))
    weights = None if design.obs_var is None else 1.0 / design.obs_var
    stats = compute_suffstats(design.y, design.F, design.X, design.group_idx, model.stats.n.shape[0], weights)
    return dataclasses.replace(model, design=design, stats=stats)


def parameter_vector(model, fixed, sigma, sd, corr):
    """``{name: value}`` of the scalar parameters checked by SBC, in one fixed order."""
    out = {f"fixed[{n}]": fixed[q] for q, n in enumerate(model.fixed_names)}
    if not model.sigma_known:
        out["sigma"] = sigma
    names = model.coef_names
    for i, n in enumerate(names):
        out[f"sd[{n}]"] = sd[..., i]
    bp = model.structure.block_ptr
    for k in range(len(bp) - 1):
        for i in range(bp[k], bp[k + 1]):
            for j in range(bp[k], i):
                out[f"corr[{corr_key(names[j], names[i])}]"] = corr[..., i, j]
    return out


@dataclass(frozen=True)
class SBCResult:
    """Ranks of the true parameters among posterior draws, one row per simulation."""

    ranks: pd.DataFrame
    n_draws: int

    def uniformity(self, bins=10):
        """Chi-square test of uniform ranks for each parameter: a DataFrame of statistic and p-value.

        Ranks ``0 .. n_draws`` are grouped into ``bins`` equal bins (``n_draws + 1`` must be a
        multiple of ``bins``).
        """
        if (self.n_draws + 1) % bins:
            raise ValueError(f"n_draws + 1 = {self.n_draws + 1} is not a multiple of bins = {bins}")
        width = (self.n_draws + 1) // bins
        rows = {}
        for name, r in self.ranks.items():
            counts = np.bincount(np.asarray(r) // width, minlength=bins)
            stat, p = sps.chisquare(counts)
            rows[name] = {"chi2": stat, "p_value": p}
        return pd.DataFrame.from_dict(rows, orient="index")


def sbc(model, n_sims=100, *, n_draws=99, chains=2, warmup=300, draws_per_chain=300, seed=0, **sample_options):
    """Simulation-based calibration of :func:`bayeshlm.sample` on a model's design and priors.

    Each simulation draws parameters from the prior, a response given them, and a posterior
    sample of ``chains x draws_per_chain`` draws, thinned evenly to ``n_draws`` (which also
    reduces their autocorrelation); the rank of each true parameter is the number of
    thinned draws below it.

    Parameters
    ----------
    model : Model
        Its priors must be proper (no Flat prior).
    n_sims : int
    n_draws : int
        Posterior draws per rank; the ranks run over ``0 .. n_draws``.
    seed : int
    **sample_options
        Passed to :func:`bayeshlm.sample` (e.g. ``method``).

    Returns
    -------
    SBCResult
    """
    from bayeshlm.sample import sample

    rng = np.random.default_rng(seed)
    total = chains * draws_per_chain
    if total < n_draws:
        raise ValueError(f"chains * draws_per_chain = {total} is fewer than n_draws = {n_draws}")
    keep = np.linspace(0, total - 1, n_draws).round().astype(int)
    records = []
    for _ in range(n_sims):
        params = draw_from_prior(model, rng)
        sim = with_response(model, simulate_response(model, params, rng))
        post = sample(sim, chains=chains, warmup=warmup, draws=draws_per_chain, seed=int(rng.integers(2**31)),
                      progress=False, log_likelihood=False, keep_group_draws=False, **sample_options)
        p = post.posterior
        fixed = p["fixed"].values.reshape(total, -1)[keep]
        sigma = p["sigma"].values.reshape(-1)[keep] if "sigma" in p else None
        sd = np.concatenate([p[v].values.reshape(total, -1)[keep] for v in p.data_vars if v.endswith("_sd")], axis=1)
        corr = np.zeros((n_draws, sd.shape[1], sd.shape[1]))
        bp = model.structure.block_ptr
        pairs = [(i, j) for k in range(len(bp) - 1) for i in range(bp[k], bp[k + 1]) for j in range(bp[k], i)]
        corr_draws = [p[v].values.reshape(total, -1)[keep] for v in p.data_vars if v.endswith("_corr")]
        if pairs:
            flat = np.concatenate(corr_draws, axis=1)
            for c, (i, j) in enumerate(pairs):
                corr[:, i, j] = flat[:, c]
        draws = parameter_vector(model, fixed.T, sigma, sd, corr)
        true = parameter_vector(model, params["fixed"], params["sigma"], params["sd"], params["corr"])
        records.append({k: int(np.sum(np.asarray(draws[k]) < true[k])) for k in true})
    return SBCResult(ranks=pd.DataFrame.from_records(records), n_draws=n_draws)
