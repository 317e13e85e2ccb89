"""Geweke's joint-distribution test of the level-1 steps (docs/design.md, "Heterogeneous level-1 variance").

Two simulators of the joint distribution of parameters and data: independent prior draws
(marginal-conditional), and a chain that alternates one sweep of the sampler (the level-1
step, then the Gaussian sweep) with a new response drawn given the sweep's parameters
(successive-conditional). Both leave the joint distribution invariant exactly when the sweep
does, so the means of every parameter and its square must agree (Geweke 2004). The sweeps
run in the compiled chain of :func:`bayeshlm.sample`, one per call, without warm-up (a fixed
kernel). Each test function's z statistic (the chain's standard error by batch means) is
held to ``|z| < 4.4``: with up to 22 test functions per case a false alarm has probability
below 2.4e-4. The test has power: drawing the prior side with omega's half-normal scale 1.3
instead of the sampler's 1 gives ``|z| = 7.4`` on ``omega^2`` (the grouped case, same seed).
"""

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

import bayeshlm as bh
from bayeshlm.level1 import level1_chains
from bayeshlm.prior_draws import draw_from_prior
from bayeshlm.results import finest_coefficients, variance_components
from bayeshlm.sample import chain_moves
from bayeshlm.testing import with_response
from samplers.driver import init_state, run_scaled_chain
from samplers.scale import (
    DELTA_PRIOR_SD,
    NU_PRIOR_RATE,
    NU_PRIOR_SHAPE,
    OMEGA_PRIOR_SCALE,
    PAR_LOG_OMEGA,
    PAR_NU,
    after_sweep,
)
from samplers.suffstats import compute_suffstats, row_products
from samplers.theta import decode_theta, encode_theta
from samplers.types import FAILED, DrawStore, Schedule

PRIORS = {"fixed": bh.Normal(0, 1), "sd": bh.HalfNormal(1), "sigma": bh.HalfNormal(1)}
Z_LIMIT = 4.4
N_ITER = 20000


def _data(seed=0, n_groups=8, rows=(3, 6)):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(rows[0], rows[1] + 1, size=n_groups)
    g = np.repeat(np.arange(n_groups), sizes)
    return pd.DataFrame({"y": rng.normal(size=g.size), "x": rng.normal(size=g.size),
                         "z": rng.normal(0.5, 1.0, size=g.size), "h": (np.arange(n_groups) % 2)[g],
                         "w": rng.uniform(0.5, 2.0, size=g.size), "g": [f"g{j}" for j in g]})


def _prior_level1(model, rng):
    """``(delta_N, omega, e, nu)`` from the level-1 priors (None where the model has none)."""
    vd = model.variance_design
    k = 0 if vd is None else vd.k
    delta = rng.normal(0.0, DELTA_PRIOR_SD, k)
    omega = e = nu = None
    if vd is not None and vd.group is not None:
        omega = abs(rng.normal(0.0, OMEGA_PRIOR_SCALE))
        e = rng.normal(0.0, omega, len(vd.group_labels))
    if model.family == "student":
        nu = model.options.get("nu")
        while nu is None or nu < 1.0:
            nu = rng.gamma(NU_PRIOR_SHAPE, 1.0 / NU_PRIOR_RATE)
    return delta, omega, e, nu


def _functions(model, fixed, sigma, sd, delta, omega, nu):
    out = {f"fixed[{n}]": fixed[:, q] for q, n in enumerate(model.fixed_names)}
    out["sigma"] = sigma
    out |= {f"sd[{n}]": sd[:, i] for i, n in enumerate(model.coef_names)}
    out |= {f"delta[{m}]": delta[:, m] for m in range(delta.shape[1])}
    if omega is not None:
        out["omega"] = omega
    if nu is not None:
        out["log_nu"] = np.log(nu)
    return out | {f"{k}^2": v**2 for k, v in out.items()}


def _response(model, fixed, b, sigma, delta, e, nu, rng):
    """A response (in the user's units) given the parameters; ``sigma`` a row's SD at the columns' means."""
    design, vd = model.design, model.variance_design
    mean = design.F @ fixed + np.einsum("ik,ik->i", design.X, finest_coefficients(model, b)[design.group_idx])
    log_sd = np.full(model.n_obs, np.log(sigma))
    if vd is not None and vd.k:
        log_sd += 0.5 * vd.standardised() @ delta
    if e is not None:
        log_sd += e[vd.group_idx]
    if design.weights is not None:
        log_sd -= 0.5 * np.log(design.weights)
    noise = rng.standard_t(nu, size=model.n_obs) if nu is not None else rng.normal(size=model.n_obs)
    return mean + np.exp(log_sd) * noise


def geweke_level1(model, n_iter, seed, method="mh"):
    rng = np.random.default_rng(seed)
    prior = [draw_from_prior(model, rng) | dict(zip(("delta", "omega", "e", "nu"), _prior_level1(model, rng),
                                                    strict=True)) for _ in range(n_iter)]
    has_omega, has_nu = prior[0]["omega"] is not None, model.family == "student" and model.options.get("nu") is None
    mc = _functions(model, np.array([p["fixed"] for p in prior]), np.array([p["sigma"] for p in prior]),
                    np.array([p["sd"] for p in prior]), np.array([p["delta"] for p in prior]),
                    np.array([p["omega"] for p in prior]) if has_omega else None,
                    np.array([p["nu"] for p in prior]) if has_nu else None)
    # successive-conditional: start at a prior draw and its response
    start = draw_from_prior(model, rng)
    delta, omega, e, nu = _prior_level1(model, rng)
    sim = with_response(model, _response(model, start["fixed"], start["b"], start["sigma"], delta, e, nu, rng))
    basis, structure = model.basis, model.structure
    l1 = level1_chains(sim, 1, 0, np.zeros(0, dtype=np.int64), 0)[0]
    k = delta.shape[0]
    l1.par[:k] = delta
    if omega is not None:
        l1.par[k + PAR_LOG_OMEGA] = np.log(omega)
        l1.e[:] = e
    if nu is not None:
        l1.par[k + PAR_NU] = nu
    theta0 = np.empty(model.n_theta)
    d = len(model.coef_names)
    T0 = basis.coef_cov_from_user(start["cov"])
    assert encode_theta(start["sigma"] ** 2 / basis.sigma_scale**2, T0 + 1e-12 * np.trace(T0) * np.eye(d),
                        structure, theta0)
    kernel_rng = np.random.Generator(np.random.PCG64(int(rng.integers(2**31))))
    moves = chain_moves(model, method, 6, 0)
    state = init_state(kernel_rng, theta0, l1.stats, structure, model.priors, moves=moves, level1=l1)
    n_fixed = len(model.fixed_names)
    store = DrawStore.keeping_nothing(model.n_theta, n_fixed, d)._replace(
        theta=np.empty((n_iter, model.n_theta)), a=np.empty((n_iter, n_fixed)), lp=np.empty(n_iter),
        accept=np.empty(n_iter))
    l1 = l1._replace(par_out=np.empty((n_iter, l1.par.shape[0])), e_out=np.empty((n_iter, l1.e.shape[0])))
    fixed = np.empty((n_iter, n_fixed))
    C = np.empty((d, d))
    for it in range(n_iter):
        run_scaled_chain(kernel_rng, state, l1, structure, model.priors, moves, Schedule(0, 1, it + 1), store)
        assert state.scal[FAILED] == 0.0
        fixed[it] = basis.fixed_values(state.a)
        s2, _ = decode_theta(state.theta, structure, model.priors, C)  # the kernels' units
        sigma = float(np.sqrt(variance_components(model, state.theta[None, :])[0][0]))
        par = l1.par
        y = _response(model, fixed[it], basis.coef_values(state.b), sigma, par[:k],
                      l1.e if l1.e.shape[0] else None, par[k + PAR_NU] if model.family == "student" else None, rng)
        yN = (y - basis.y_shift) / basis.y_scale
        l1.y[:] = yN  # the chain's rows are the response's: replaced in place
        if l1.grouped:
            fresh = compute_suffstats(yN, l1.F, l1.X, l1.gidx, l1.base.n.shape[0], l1.base_w)
            for old, new in zip(l1.base, fresh, strict=True):
                old[...] = new
        elif l1.prod.P.shape[0]:  # the rows' cross-products hold the response
            l1.prod.P[...] = row_products(l1.F, l1.X, l1.gidx, l1.stats.n.shape[0], y=yN).P
        after_sweep(l1, structure, state.work, state.a, state.b, s2, False)  # residuals of the new response
    s2_all, sd, _, _ = variance_components(model, store.theta)
    sc = _functions(model, fixed, np.sqrt(s2_all), sd, l1.par_out[:, :k],
                    np.exp(l1.par_out[:, k + PAR_LOG_OMEGA]) if has_omega else None,
                    l1.par_out[:, k + PAR_NU] if has_nu else None)
    rows = {}
    for name in mc:
        m1, m2 = float(np.mean(mc[name])), float(np.mean(sc[name]))
        se1 = float(np.std(mc[name], ddof=1) / np.sqrt(n_iter))
        batches = np.asarray(sc[name])[: n_iter // 50 * 50].reshape(50, -1).mean(1)
        se2 = float(batches.std(ddof=1) / np.sqrt(50))
        z = (m2 - m1) / np.hypot(se1, se2)
        rows[name] = {"prior": m1, "chain": m2, "z": z, "p_value": 2 * sps.norm.sf(abs(z))}
    return pd.DataFrame.from_dict(rows, orient="index")


CASES = {
    "rows_student_by_predictor_and_group": ({"family": "student", "sigma": "~ z + (1 | g)", "weights": "w"}, "mh"),
    "grouped_by_group_predictor_and_group": ({"sigma": "~ h + (1 | g)"}, "gibbs"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_geweke_of_the_level1_steps(case):
    options, method = CASES[case]
    model = bh.hlm("y ~ x + (1 | g)", _data(), priors=PRIORS, **options)
    table = geweke_level1(model, N_ITER, seed=3, method=method)
    assert np.all(np.abs(table["z"]) < Z_LIMIT), table
