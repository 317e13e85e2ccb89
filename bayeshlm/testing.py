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
from bayeshlm.family import log_normalising_constants
from bayeshlm.prior_draws import draw_from_prior, require_rows, simulate_response
from bayeshlm.priors import column_moments
from bayeshlm.results import variance_components
from samplers.suffstats import compute_suffstats


def with_response(model, y):
    """The same model (design, priors, structure) with the response replaced by ``y``."""
    require_rows(model)
    design = model.design._replace(y=np.ascontiguousarray(y, dtype=np.float64))
    basis = model.basis  # the priors are in this basis: the statistics of the new response go there too
    stats = compute_suffstats(design.y, design.F, design.X, design.group_idx, model.stats.n.shape[0],
                              basis.weights(design.obs_var, design.weights), basis.shift, basis.scale)
    moments = column_moments(design.y, design.F, design.X, design.obs_var, design.weights)
    return dataclasses.replace(model, design=design, stats=stats, moments=moments)


def parameter_vector(model, fixed, sigma, sd, corr):
    """``{name: value}`` of the scalar parameters checked by SBC, in one fixed order.

    Fixed effects, sigma, every group SD and correlation, and, when sigma is estimated, the
    intraclass correlation of each random intercept, ``tau^2 / (sum of intercept variances
    + sigma^2)`` (``icc[<coef>]``).
    """
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
    intercepts = [i for i, n in enumerate(names) if n.partition("|")[0] == "Intercept"]
    if intercepts and not model.sigma_known:
        total = sigma**2 + sum(sd[..., i] ** 2 for i in intercepts)
        for i in intercepts:
            out[f"icc[{names[i]}]"] = sd[..., i] ** 2 / total
    return out


@dataclass(frozen=True)
class SBCResult:
    """Ranks of the true parameters among posterior draws, one row per simulation."""

    ranks: pd.DataFrame
    n_draws: int

    def uniformity(self, bins=10):
        """Tests of uniform ranks for each parameter.

        Two tests per parameter: Pearson's chi-square on ``bins`` equal bins of the ranks
        ``0 .. n_draws`` (``n_draws + 1`` must be a multiple of ``bins``), sensitive to any
        shape (a posterior too wide or too narrow gives a hump or a U), and a z-test of the
        mean rank against ``n_draws / 2``, the most sensitive to a shift (a biased
        posterior). ``p_value`` is twice the smaller of the two p-values (Bonferroni over the
        two tests).

        Returns
        -------
        pandas.DataFrame
            Columns ``chi2``, ``p_chi2``, ``z_mean``, ``p_mean``, ``p_value``.
        """
        if (self.n_draws + 1) % bins:
            raise ValueError(f"n_draws + 1 = {self.n_draws + 1} is not a multiple of bins = {bins}")
        width = (self.n_draws + 1) // bins
        L = self.n_draws
        rows = {}
        for name, r in self.ranks.items():
            r = np.asarray(r)
            counts = np.bincount(r // width, minlength=bins)
            stat, p_chi = sps.chisquare(counts)
            sd_mean = np.sqrt(((L + 1) ** 2 - 1) / 12.0 / r.size)
            z = (r.mean() - L / 2.0) / sd_mean
            p_mean = 2 * sps.norm.sf(abs(z))
            rows[name] = {"chi2": stat, "p_chi2": p_chi, "z_mean": z, "p_mean": p_mean,
                          "p_value": min(1.0, 2 * min(p_chi, p_mean))}
        return pd.DataFrame.from_dict(rows, orient="index")

    def plot(self, path=None, bins=10):
        """Rank histograms and ECDF differences, one column per parameter; saved to ``path`` if given.

        The ECDF difference is the empirical CDF of the scaled ranks minus the uniform CDF,
        with a pointwise 99% band of a binomial proportion.

        Returns
        -------
        matplotlib.figure.Figure
        """
        import matplotlib

        if path is not None:
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        names = list(self.ranks.columns)
        fig, axes = plt.subplots(2, len(names), figsize=(2.4 * len(names), 4.2), squeeze=False)
        n = len(self.ranks)
        width = (self.n_draws + 1) // bins
        grid = np.linspace(0, 1, 101)
        band = 2.576 * np.sqrt(grid * (1 - grid) / n)
        for c, name in enumerate(names):
            r = np.asarray(self.ranks[name])
            ax = axes[0, c]
            ax.hist(r // width, bins=np.arange(bins + 1) - 0.5, color="0.6")
            ax.axhline(n / bins, color="k", lw=0.8)
            ax.set_title(name, fontsize=8)
            ax.set_xticks([])
            u = (r + 0.5) / (self.n_draws + 1)
            ecdf = np.searchsorted(np.sort(u), grid, side="right") / n
            ax = axes[1, c]
            ax.fill_between(grid, -band, band, color="0.85")
            ax.plot(grid, ecdf - grid, color="C0")
            ax.axhline(0, color="k", lw=0.5)
        axes[0, 0].set_ylabel("rank counts")
        axes[1, 0].set_ylabel("ECDF - uniform")
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=80)
        return fig


def posterior_draws(model, seed, *, chains=2, warmup=300, draws_per_chain=300, **sample_options):
    """``(fixed, sigma, sd, corr)`` draws of :func:`bayeshlm.sample`: the default fit of :func:`sbc`.

    Arrays over all draws (chains concatenated): ``fixed`` (S, n_fixed), ``sigma`` (S,) or
    None, ``sd`` (S, n_coef) and ``corr`` (S, n_coef, n_coef). The chains are
    :func:`bayeshlm.sample`'s (:func:`bayeshlm.sample.run_sampler`) and the values those its
    result holds, read from the chains' outputs without building the result (which would
    cost more than the chains of a small model); a model whose result holds more than the
    chains' variance components (a level-1 variance model, imputed responses) is read
    from the result.
    """
    from bayeshlm.level1 import has_level1_model
    from bayeshlm.results import covariance_draws
    from bayeshlm.sample import run_sampler, sample

    options = dict(chains=chains, warmup=warmup, draws=draws_per_chain, seed=seed, progress=False,
                   log_likelihood=False, keep_group_draws=False, **sample_options)
    if has_level1_model(model) or getattr(model.design, "missing_responses", None) is not None:
        tree = sample(model, **options)
        p = tree.posterior
        fixed = p["fixed"].values.reshape(chains * draws_per_chain, -1)
        sigma = p["sigma"].values.reshape(-1) if "sigma" in p else None
        sd, corr = covariance_draws(tree, model)
        return fixed, sigma, sd, np.tril(corr, -1)
    run = run_sampler(model, **options)
    theta = np.concatenate([out.theta[:run.n_keep] for out in run.outputs])
    fixed = model.basis.fixed_values(np.concatenate([out.a[:run.n_keep] for out in run.outputs]))
    s2, sd, corr, _ = variance_components(model, theta)
    return fixed, None if model.sigma_known else np.sqrt(s2), sd, np.tril(corr, -1)


def python_chain_draws(model, seed, *, method="gibbs", warmup=300, draws=600, mh_steps=6, marginal=None):
    """One chain run sweep by sweep from Python, through the pure-Python ``sweep`` function.

    The inner kernels stay compiled, but the Gibbs moves run as Python
    (``samplers.sweep.gibbs_moves``), whose calls are looked up in its module at every
    sweep, so a test can replace one (a deliberately broken full conditional) and check
    that :func:`sbc` catches it. Returns what :func:`posterior_draws`
    returns. Slower than :func:`bayeshlm.sample`; for tests only. ``marginal``: whether
    the MH moves target ``p(theta | y)`` (default: as :func:`bayeshlm.sample` chooses).
    """
    from bayeshlm.start import starting_theta
    from samplers import sweep as sweep_module
    from samplers.driver import init_state
    from samplers.gaussian import marginal_moves_pay
    from samplers.mh import end_of_iteration, mh_moves
    from samplers.suffstats import residual_stats
    from samplers.types import FAILED, ITER, RTR

    rng = np.random.Generator(np.random.PCG64(seed))
    stats, structure, priors = model.stats, model.structure, model.priors
    state = init_state(rng, starting_theta(model, rng, 0.5), stats, structure, priors)
    theta = np.empty((draws, model.n_theta))
    fixed = np.empty((draws, len(model.fixed_names)))
    marginal = int(marginal_moves_pay(structure) if marginal is None else marginal) if method != "gibbs" else 0
    for it in range(warmup + draws):
        if method == "gibbs":
            sweep_module.gibbs_moves.py_func(rng, state, stats, structure, priors)
        else:
            if not marginal:
                state.scal[RTR] = residual_stats(stats, state.a, state.r)
            mh_moves(rng, state, stats, structure, priors, mh_steps, warmup, marginal)
        if state.scal[FAILED] != 0.0 or not sweep_module.draw_all_coefficients(rng, state, stats, structure, priors,
                                                                               marginal):
            raise RuntimeError(f"sweep {it} failed")
        if method != "gibbs" and it < warmup:
            end_of_iteration(state, warmup)
        state.ibuf[ITER] = it + 1
        if it >= warmup:
            theta[it - warmup] = state.theta
            fixed[it - warmup] = state.a
    s2, sd, corr, _ = variance_components(model, theta)
    return model.basis.fixed_values(fixed), (None if model.sigma_known else np.sqrt(s2)), sd, corr


def sbc(model, n_sims=100, *, n_draws=99, seed=0, fit=None, **options):
    """Simulation-based calibration of the sampler on a model's design and priors.

    Each simulation draws parameters from the prior, a response given them, and posterior
    draws given that response, thinned evenly to ``n_draws`` (which also reduces their
    autocorrelation); the rank of each true parameter (:func:`parameter_vector`) is the
    number of thinned draws below it.

    Parameters
    ----------
    model : Model
        Its priors must be proper (no Flat prior).
    n_sims : int
    n_draws : int
        Posterior draws per rank; the ranks run over ``0 .. n_draws``.
    seed : int
    fit : callable, optional
        ``fit(model, seed, **options)`` returning ``(fixed, sigma, sd, corr)`` draws;
        default :func:`posterior_draws` (:func:`bayeshlm.sample`, two chains of 300 draws
        after 300 warm-up sweeps unless ``options`` say otherwise).
    **options
        Passed to ``fit`` (for the default: ``method``, ``chains``, ``warmup``,
        ``draws_per_chain``, ...).

    Returns
    -------
    SBCResult
    """
    fit = posterior_draws if fit is None else fit
    rng = np.random.default_rng(seed)
    records = []
    for _ in range(n_sims):
        params = draw_from_prior(model, rng)
        sim = with_response(model, simulate_response(model, params, rng))
        fixed, sigma, sd, corr = fit(sim, int(rng.integers(2**31)), **options)
        total = fixed.shape[0]
        if total < n_draws:
            raise ValueError(f"the fit gave {total} draws, fewer than n_draws = {n_draws}")
        keep = np.linspace(0, total - 1, n_draws).round().astype(int)
        draws = parameter_vector(model, fixed[keep].T, None if sigma is None else sigma[keep], sd[keep], corr[keep])
        true = parameter_vector(model, params["fixed"], params["sigma"], params["sd"], params["corr"])
        records.append({k: int(np.sum(np.asarray(draws[k]) < true[k])) for k in true})
    return SBCResult(ranks=pd.DataFrame.from_records(records), n_draws=n_draws)


def _batch_se(x, n_batches=50):
    """Standard error of the mean of an autocorrelated series by batch means."""
    m = x.shape[0] // n_batches
    means = x[: m * n_batches].reshape(n_batches, m, *x.shape[1:]).mean(axis=1)
    return means.std(axis=0, ddof=1) / np.sqrt(n_batches)


def _test_functions(model, fixed, sigma, sd):
    """Geweke's test functions: every parameter and its square (means and second moments)."""
    out = {}
    for q, n in enumerate(model.fixed_names):
        out[f"fixed[{n}]"] = fixed[..., q]
        out[f"fixed[{n}]^2"] = fixed[..., q] ** 2
    if sigma is not None:
        out["sigma"] = sigma
        out["sigma^2"] = sigma**2
    for i, n in enumerate(model.coef_names):
        out[f"sd[{n}]"] = sd[..., i]
        out[f"sd[{n}]^2"] = sd[..., i] ** 2
    return out


def geweke(
    model,
    n_iter=20000,
    *,
    method="mh",
    seed=0,
    mh_steps=6,
    n_prior=None,
    marginal=None,
    glm_move="augment",
    unchecked=False,
    interweave=None,
):
    """Geweke's joint-distribution test of one sweep of the sampler.

    Two simulators of the joint distribution of parameters and data: the
    *marginal-conditional* one draws parameters from the prior (independently), the
    *successive-conditional* one alternates a sweep of the sampler (parameters given data)
    with a new response given the parameters. Both leave the joint distribution invariant
    exactly when the sweep does, so the means of test functions of the parameters must
    agree (Geweke 2004, JASA 99). The sweep runs without adaptation (the warm-up is zero), as
    a fixed Markov kernel. For a non-Gaussian level 1 the sweep includes its augmentation
    step (drawn anew from the new response at the start of the next sweep), which the test
    thereby checks too. ``glm_move="newton"`` tests the Newton proposal instead (with
    ``method="gibbs"``), with its interweaving move of the group SD as ``interweave`` asks
    (as :func:`bayeshlm.sample`'s argument); ``unchecked`` accepts its every proposal
    (``"interweave"``: leaves the proposal's densities out of the SD move's ratio), a wrong
    step for the test that shows this one catches it.

    Returns
    -------
    pandas.DataFrame
        For each test function (each parameter and its square): the two means, their
        standard errors (the successive-conditional one by batch means), the z statistic
        and its two-sided p-value.
    """
    from bayeshlm.sample import augmentations, chain_moves
    from samplers.augment import latent_capacity
    from samplers.driver import init_state, run_augmented_chain, run_chain, statistics_replaced
    from samplers.gaussian import marginal_moves_pay
    from samplers.newton import start as newton_start
    from samplers.theta import encode_theta
    from samplers.types import AUG_NO_CORRECTION, AUG_STALE, FAILED, DrawStore, Schedule

    rng = np.random.default_rng(seed)
    n_prior = n_iter if n_prior is None else n_prior
    d = len(model.coef_names)
    # marginal-conditional: independent prior draws
    prior = [draw_from_prior(model, rng) for _ in range(n_prior)]
    mc = _test_functions(model, np.array([p["fixed"] for p in prior]),
                         None if model.sigma_known else np.array([p["sigma"] for p in prior]),
                         np.array([p["sd"] for p in prior]))
    # successive-conditional
    params = draw_from_prior(model, rng)
    sim = with_response(model, simulate_response(model, params, rng))
    theta0 = np.empty(model.n_theta)
    basis = model.basis
    s2_0 = 1.0 if model.sigma_known else params["sigma"] ** 2 / basis.sigma_scale**2
    T0 = basis.coef_cov_from_user(params["cov"])
    if not encode_theta(s2_0, T0 + 1e-12 * max(np.trace(T0), 1e-300) * np.eye(d), model.structure, theta0):
        raise ValueError("the prior draw has a singular group covariance")
    kernel_rng = np.random.Generator(np.random.PCG64(int(rng.integers(2**31))))
    if marginal is None:
        marginal = marginal_moves_pay(model.structure)
    moves = chain_moves(model, method, mh_steps, marginal)
    # a non-Gaussian level 1: the chain's augmentation holds the response, replaced in place below
    newton = glm_move == "newton"
    aug = None if getattr(model, "gaussian", True) else augmentations(sim, 1, 0, False, newton, interweave)[0]
    # the Newton proposal keeps the rows in group order (bayeshlm.sample._Rows.sort_for_newton)
    order = np.argsort(np.asarray(model.design.group_idx), kind="stable") if newton else None
    if unchecked:
        aug.scal[AUG_NO_CORRECTION] = 2.0 if unchecked == "interweave" else 1.0
    state = init_state(kernel_rng, theta0, sim.stats if aug is None else aug.stats, model.structure, model.priors,
                       moves=moves, aug=aug)
    # The sweeps run in the chain's own compiled loop (the one `sample` runs, so no other
    # variant is compiled), one sweep per call, without warm-up: a fixed Markov kernel. Each
    # call keeps its sweep as kept draw `it` of a store with room for all of them.
    n_fixed = len(model.fixed_names)
    store = DrawStore.keeping_nothing(model.n_theta, n_fixed, d)._replace(
        theta=np.empty((n_iter, model.n_theta)), a=np.empty((n_iter, n_fixed)), lp=np.empty(n_iter),
        accept=np.empty(n_iter))
    theta = store.theta
    fixed = np.empty((n_iter, n_fixed))
    for it in range(n_iter):
        if aug is None:
            run_chain(kernel_rng, state, sim.stats, model.structure, model.priors, moves, Schedule(0, 1, it + 1),
                      store)
        else:
            run_augmented_chain(kernel_rng, state, aug, model.structure, model.priors, moves, Schedule(0, 1, it + 1),
                                store)
        if state.scal[FAILED] != 0.0:
            raise RuntimeError("a sweep failed during the Geweke test")
        fixed[it] = basis.fixed_values(state.a)
        s2, _, _, _ = variance_components(model, state.theta[None, :])
        current = {"fixed": fixed[it], "sigma": float(np.sqrt(s2[0])), "b": basis.coef_values(state.b)}
        y_new = simulate_response(model, current, rng)
        if aug is None:
            sim = with_response(model, y_new)
            statistics_replaced(state)  # what the chain keeps of the old data goes
        else:  # the next sweep's augmentation reads the new response; its log-likelihood is stale
            aug.y[:] = y_new if order is None else y_new[order]
            aug.const[:] = log_normalising_constants(model.family, aug.n, aug.y)
            aug.scal[AUG_STALE] = 1.0
            if newton:  # the rows' working values and log-likelihoods read the response
                newton_start(aug.newton, aug.offset, state.a, state.b)
            if aug.lat.shape[0] and latent_capacity(y_new) > aug.lat.shape[0]:  # more events: more room
                aug = aug._replace(lat=np.empty(2 * latent_capacity(y_new)))
    s2_all, sd_all, _, _ = variance_components(model, theta)
    sc = _test_functions(model, fixed, None if model.sigma_known else np.sqrt(s2_all), sd_all)
    rows = {}
    for name in mc:
        m1, m2 = float(np.mean(mc[name])), float(np.mean(sc[name]))
        se1 = float(np.std(mc[name], ddof=1) / np.sqrt(len(mc[name])))
        se2 = float(_batch_se(np.asarray(sc[name])))
        z = (m2 - m1) / np.sqrt(se1**2 + se2**2)
        rows[name] = {"prior_mean": m1, "prior_se": se1, "chain_mean": m2, "chain_se": se2, "z": z,
                      "p_value": 2 * sps.norm.sf(abs(z))}
    return pd.DataFrame.from_dict(rows, orient="index")
