"""bayeshlm against other samplers and fitters: the same models, the same priors, one machine, one run.

Systems (each (model, system/form) runs in its own interpreter, with one time limit for all):

* ``bayeshlm``: ``bh.sample(model)`` as a user calls it (default collapsed Metropolis-Hastings,
  the default log-likelihood, the ArviZ result built), timed as a whole; the sampler's own
  seconds are kept beside it, and the seconds of the same call with ``log_likelihood=False``
  (the same draws; the outputs every peer returns, which compute no log-likelihood). On the
  large crossed design (``BH_METHOD``) the method is ``"blocked"``, its best form there, as a
  user of such data is told to choose;
* ``nutpie``, ``numpyro``, ``pymc``: the same PyMC model sampled by nutpie, by NumPyro's NUTS
  through JAX (``nuts_sampler="numpyro"``) and by PyMC's own NUTS, each in three forms (see
  ``FORMS``): ``centred`` group effects, ``noncentred`` ones (standard normals scaled by the
  covariance's Cholesky factor), and ``collapsed``, the finest factor's effects integrated
  out analytically with a ``pm.Potential`` on per-group cross-products (``_pymc_collapsed``;
  an evaluation costs a pass over the groups, not the rows), the group effects then drawn
  given each posterior draw, which is counted in the peer's time;
* ``stan`` (rstan) in the ``centred`` and ``noncentred`` forms, and ``jags`` (rjags) in the
  centred form, its Gibbs sampler's natural one, through ``Rscript``, the programs generated
  from the same design arrays (``_stan_code``, ``_jags_code``); JAGS runs its chains one after
  another in one process. Debian: ``apt install r-cran-rstan r-cran-bh jags r-cran-rjags``;
  Debian's BH package ships no ``include`` directory, which rstan looks for:
  ``ln -s /usr/include /usr/lib/R/site-library/BH/include``. Skipped with a note when R or the
  package is missing;
* ``bayeshlm_em``, ``statsmodels`` and ``lme4``: REML fits (time and estimates only); lme4
  runs through ``Rscript`` when R and lme4 are installed (Debian: ``apt install
  r-cran-lme4``), and is skipped with a note otherwise.

NumPyro runs on JAX's CPU backend with 4 chains in parallel (``chain_method="parallel"``,
which JAX needs told how many CPU devices to expose: done below before JAX is imported).
PyMC's own sampler compiles through PyTensor's C backend, which needs a BLAS it is told of:
with OpenBLAS installed (Debian: ``apt install libopenblas-dev``) the worker sets
``PYTENSOR_FLAGS=blas__ldflags=-lopenblas`` unless the flags are set already. The synthetic
models have 50 rows per group. Install the Python peers with ``pip install -e '.[bench]'``.

Priors (the same in every sampler; the last entry of each ``MODELS`` row): normal on the fixed effects,
half-normal on sigma and on every group SD, LKJ(2) on the correlations (in JAGS, which has
no LKJ, as ``(1 + rho) / 2 ~ Beta(2, 2)``, the same distribution for a 2 x 2 block). Every sampler draws
4 chains of 1000 draws after 1000 warm-up iterations. Reported per (model, system/form): setup
seconds (model building and compilation), sampling seconds, the minimum bulk and tail ESS
over every scalar (fixed effects, sigma, group SDs and correlations, and every group
coefficient), min-ESS per second of sampling, the largest R-hat, divergences, the peak
memory of the process, and the posterior means of the fixed effects and SDs. A run stopped
by the time limit is reported with the most it could have reached, draws / limit
(``limit_bound``): a bound, never a ratio.

    python benchmarks/bench_peers.py                  # writes peers_results.json, PEERS_RESULTS.md
    python benchmarks/bench_peers.py --quick          # small draws, two models, to check it works
"""

from __future__ import annotations

import argparse
import ctypes.util
import importlib.util
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from numba import njit, prange

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

# model: (data set or "synthetic:<rows>", formula, known_sd column,
#         priors as (fixed mean, fixed sd, sigma sd, group sd))
MODELS = {
    "sleepstudy": ("sleepstudy", "reaction ~ days + (days | subject)", None, (0.0, 500.0, 100.0, 100.0)),
    "hsb": ("hsb", "mathach ~ ses_centered * (sector + meanses) + (ses_centered | school)", None,
            (0.0, 50.0, 20.0, 10.0)),
    "radon": ("radon", "log_radon ~ floor + (1 | county)", None, (0.0, 10.0, 5.0, 5.0)),
    "eight_schools": ("eight_schools", "y ~ 1 + (1 | school)", "sigma", (0.0, 20.0, None, 10.0)),
    "pastes": ("pastes", "strength ~ 1 + (1 | batch/cask)", None, (60.0, 20.0, 5.0, 5.0)),
    "synthetic_1e5": ("synthetic:100000", "y ~ x + (x | g)", None, (0.0, 10.0, 5.0, 5.0)),
    "synthetic_1e6": ("synthetic:1000000", "y ~ x + (x | g)", None, (0.0, 10.0, 5.0, 5.0)),
    # crossed factors (pupils in primary x secondary schools; students x instructors)
    "scotssec": ("scotssec", "attain ~ verbal + sex + (1 | primary) + (1 | second)", None, (0.0, 20.0, 10.0, 5.0)),
    "crossed_73k": ("crossed:3000:1100:73000", "y ~ x + (1 | subject) + (1 | item)", None, (0.0, 20.0, 5.0, 5.0)),
}
SAMPLERS = ["bayeshlm", "nutpie", "numpyro", "pymc", "stan", "jags"]
# bayeshlm's method where the default is not its best form: the exact samplers factorise a dense
# 1,100 x 1,100 matrix per evaluation on the large crossed design, the blocked one passes over the cells
BH_METHOD = {"crossed_73k": "blocked"}
# models with crossed factors: the collapsed form of the PyMC models integrates out one factor's groups
# given the coarser ones, which must contain them; statsmodels' MixedLM takes crossed factors as
# variance components of one all-embracing group, a dense design with a column per group
CROSSED = {"scotssec", "crossed_73k"}
STATSMODELS_MAX_COLUMNS = 1000
# each peer in every form a skilled user would try: both parametrisations of the group
# effects and, where the language can express a likelihood of per-group statistics, the
# collapsed model (group effects integrated out, drawn afterwards given each draw)
FORMS = {"nutpie": ("centred", "noncentred", "collapsed"), "numpyro": ("centred", "noncentred", "collapsed"),
         "pymc": ("centred", "noncentred", "collapsed"), "stan": ("centred", "noncentred"), "jags": ("centred",)}
FITTERS = ["bayeshlm_em", "statsmodels", "lme4"]
NEEDS = {"pymc": ("pymc",), "nutpie": ("pymc", "nutpie"),
         "numpyro": ("pymc", "numpyro", "jax"), "statsmodels": ("statsmodels",)}
NOT_RUN = {}


def load_data(source, seed=0):
    """A bundled data set, synthetic two-level data with ``rows`` rows and 50 rows per group, or crossed data."""
    import pandas as pd

    import bayeshlm as bh

    if source.startswith("crossed:"):  # subjects x items, one row per observed cell (bench_crossed.py's designs)
        n_s, n_i, rows = (int(v) for v in source.split(":")[1:])
        return bh.simulate_crossed(n_subjects=n_s, n_items=n_i, fill=rows / (n_s * n_i), reps=1, seed=1,
                                   sd={"subject": {"Intercept": 1.0}, "item": {"Intercept": 0.8}})
    if not source.startswith("synthetic:"):
        return bh.load_dataset(source)
    n = int(source.split(":")[1])
    rng = np.random.default_rng(seed)
    n_groups = max(2, n // 50)
    g = rng.integers(0, n_groups, size=n)
    x = rng.normal(size=n)
    u = rng.multivariate_normal([0, 0], [[1.0, 0.3], [0.3, 0.25]], size=n_groups)
    y = 1.0 + 0.5 * x + u[g, 0] + u[g, 1] * x + rng.normal(size=n)
    return pd.DataFrame({"y": y, "x": x, "g": [f"g{j}" for j in g]})


def bh_priors(prior):
    """Bayeshlm's prior dict for a ``(fixed mean, fixed sd, sigma sd, group sd)`` tuple."""
    import bayeshlm as bh

    mean, fixed_sd, sigma_sd, sd_sd = prior
    out = {"fixed": bh.Normal(mean, fixed_sd), "sd": bh.HalfNormal(sd_sd), "corr": bh.LKJ(2.0)}
    if sigma_sd is not None:
        out["sigma"] = bh.HalfNormal(sigma_sd)
    return out


def ess_summary(arrays):
    """``(min bulk ESS, min tail ESS, max R-hat)`` over every scalar of ``{name: (chain, draw, ...)}``.

    Each array is reduced at once (not one scalar at a time: with tens of thousands of group
    coefficients a loop would take minutes); constant scalars are left out.
    """
    from arviz_stats.base import array_stats

    bulk, tail, rhat = np.inf, np.inf, 0.0
    for x in arrays.values():
        x = np.asarray(x, dtype=float)
        x = x.reshape(x.shape[0], x.shape[1], -1)
        x = x[:, :, np.ptp(x, axis=(0, 1)) > 0]
        if x.shape[2] == 0:
            continue
        bulk = min(bulk, float(np.min(array_stats.ess(x, chain_axis=0, draw_axis=1, method="bulk"))))
        tail = min(tail, float(np.min(array_stats.ess(x, chain_axis=0, draw_axis=1, method="tail",
                                                      prob=(0.05, 0.95)))))
        rhat = max(rhat, float(np.max(array_stats.rhat(x, chain_axis=0, draw_axis=1))))
    return bulk, tail, rhat


def run_bayeshlm(name, draws, warmup):
    """Bayeshlm's default sampler as a user calls it: ``bh.sample(model)``, the result built.

    The time charged (``sampling_seconds``) is the whole call, defaults included (the
    log-likelihood of ``log_likelihood="auto"``, the ArviZ result); the sampler's own time
    is kept beside it (``sampler_seconds``). Setup includes loading the compiled kernels.
    """
    import bayeshlm as bh

    source, formula, known, prior = MODELS[name]
    df = load_data(source)
    t0 = time.perf_counter()
    model = bh.hlm(formula, df, priors=bh_priors(prior), known_sd=known)
    method = BH_METHOD.get(name, "mh")
    bh.sample(model, method=method, draws=5, warmup=5, chains=1, seed=0, progress=False)  # load the compiled kernels
    setup = time.perf_counter() - t0
    t1 = time.perf_counter()
    post = bh.sample(model, method=method, draws=draws, warmup=warmup, chains=4, seed=1, progress=False)
    seconds = time.perf_counter() - t1
    # the same draws (same seed) with what every peer returns: no log-likelihood group
    t2 = time.perf_counter()
    same = bh.sample(model, method=method, draws=draws, warmup=warmup, chains=4, seed=1, progress=False,
                     log_likelihood=False)
    like_for_like = time.perf_counter() - t2
    if not np.array_equal(same.posterior["fixed"].values, post.posterior["fixed"].values):
        raise RuntimeError("bh.sample with log_likelihood=False drew other draws from the same seed")
    p = post.posterior
    arrays = {v: p[v].values for v in p.data_vars}
    est = {f"fixed[{t}]": float(p["fixed"].sel(fixed_term=t).mean()) for t in model.fixed_names}
    for v in p.data_vars:
        if v.endswith("_sd"):
            for c in p[v].coords[p[v].dims[-1]].values:
                est[f"{v}[{c}]"] = float(p[v].sel({p[v].dims[-1]: c}).mean())
    return {"setup_seconds": setup, "sampling_seconds": seconds, "sampler_seconds": float(post.attrs["sampling_time"]),
            "like_for_like_seconds": like_for_like,
            "log_likelihood": post.attrs["log_likelihood"], "arrays": arrays, "divergences": 0, "estimates": est,
            "method": method}


def _design(name):
    """The model's design and benchmark priors."""
    import bayeshlm as bh

    source, formula, known, prior = MODELS[name]
    return bh.hlm(formula, load_data(source), known_sd=known).design, prior


def _factors(design):
    """Per grouping factor, finest first: ``(name, size, row codes, labels, first column of X)``."""
    factors = design.factors or (design.factor,)
    sizes = design.factor_sizes or (len(design.coef_names),)
    idx = design.factor_idx or (design.group_idx,)
    labels = design.factor_labels or (design.group_labels,)
    out, col = [], 0
    for factor, d, codes, labs in zip(factors, sizes, idx, labels, strict=True):
        out.append((factor.replace(":", "_"), d, codes, labs, col))
        col += d
    return out


def _group_cov(pm, g, d, sd_sd):
    """The SDs (and for two coefficients the correlation) of a factor, with the benchmark's priors.

    Returns ``(sds, chol)``: ``chol`` is the Cholesky factor of the covariance (None for one
    coefficient).
    """
    if d == 1:
        return pm.HalfNormal(f"{g}_sd", sd_sd), None
    chol, corr, sds = pm.LKJCholeskyCov(f"{g}_chol", n=d, eta=2.0, sd_dist=pm.HalfNormal.dist(sd_sd, shape=d),
                                        compute_corr=True)
    pm.Deterministic(f"{g}_sd", sds)
    pm.Deterministic(f"{g}_corr", corr[np.tril_indices(d, -1)])
    return sds, chol


def _pymc_model(name, form="noncentred"):
    """The PyMC version of a model, built from bayeshlm's design arrays (the same columns).

    ``form``: ``"centred"`` (group effects drawn from their normal), ``"noncentred"``
    (standard normals scaled by the covariance's Cholesky factor) or ``"collapsed"`` (the
    finest factor's effects integrated out: :func:`_collapsed_loglik`).
    """
    import pymc as pm

    design, (mean, fixed_sd, sigma_sd, sd_sd) = _design(name)
    if form == "collapsed":
        return _pymc_collapsed(design, (mean, fixed_sd, sigma_sd, sd_sd)), design
    with pm.Model() as model:
        a = pm.Normal("fixed", mean, fixed_sd, shape=design.F.shape[1])
        mu = pm.math.dot(design.F, a)
        for g, d, codes, labs, col in _factors(design):
            X = design.X[:, col:col + d]
            n_g = len(labs)
            sds, chol = _group_cov(pm, g, d, sd_sd)
            if d == 1:
                if form == "centred":
                    b = pm.Normal(f"{g}_effect", 0.0, sds, shape=n_g)
                else:
                    z = pm.Normal(f"{g}_z", 0.0, 1.0, shape=n_g)
                    b = pm.Deterministic(f"{g}_effect", sds * z)
                mu = mu + X[:, 0] * b[codes]
            else:
                if form == "centred":
                    b = pm.MvNormal(f"{g}_effect", mu=np.zeros(d), chol=chol, shape=(n_g, d))
                else:
                    z = pm.Normal(f"{g}_z", 0.0, 1.0, shape=(n_g, d))
                    b = pm.Deterministic(f"{g}_effect", pm.math.dot(z, chol.T))
                mu = mu + (X * b[codes]).sum(axis=1)
        if design.obs_var is None:
            sigma = pm.HalfNormal("sigma", sigma_sd)
            pm.Normal("y", mu, sigma, observed=design.y)
        else:
            pm.Normal("y", mu, np.sqrt(design.obs_var), observed=design.y)
    return model, design


# --- the collapsed model ------------------------------------------------------------------------
#
# With the finest factor's coefficients b_j integrated out, group j's rows are
# y_j ~ N(F_j a + m_j, s2 W_j^-1 + X_j T X_j'), m_j the coarser factors' (intercept) effects.
# Woodbury's identity writes its log-density with M_j = T^-1 + X_j'W_j X_j / s2 and
# r_j = y_j - F_j a - m_j:
#   log|V_j| = n_j log s2 - sum log w + log|T| + log|M_j|,
#   r_j'V_j^-1 r_j = r_j'W r_j / s2 - c_j'M_j^-1 c_j,   c_j = X_j'W r_j / s2,
# every term a function of per-group cross-products: the cost of an evaluation grows with
# the groups, not the rows, as in bayeshlm's own collapsed sampler.


def collapsed_stats(design):
    """Per-group cross-products (weighted) of the finest factor, for :func:`_pymc_collapsed` and the draws of b."""
    if design.crossed:
        raise ValueError("the collapsed form integrates out the finest factor's groups given the coarser ones, "
                         "which must contain them: with crossed factors a group's rows meet many groups of the other")
    parts = _factors(design)
    _, d, codes, labs, col = parts[0]
    G = len(labs)
    w = np.ones(len(design.y)) if design.obs_var is None else 1.0 / design.obs_var
    X, F, y = design.X[:, col:col + d], design.F, design.y
    add = lambda v: np.stack([np.bincount(codes, weights=c, minlength=G) for c in v.reshape(len(y), -1).T],  # noqa: E731
                             axis=-1)
    XtX = add(np.einsum("ir,is->irs", X * w[:, None], X)).reshape(G, d, d)
    XtF = add(np.einsum("ir,iq->irq", X * w[:, None], F)).reshape(G, d, F.shape[1])
    first = np.full(G, -1)
    first[codes[::-1]] = np.arange(len(codes))[::-1]
    coarse = [(g, k_codes[first], len(k_labs)) for g, k_d, k_codes, k_labs, _ in parts[1:]]
    if any(k_d != 1 for _, k_d, _, _, _ in parts[1:]):
        raise ValueError("the collapsed form keeps coarser factors with one coefficient (an intercept)")
    return {
        "G": G, "d": d, "name": parts[0][0], "n_obs": len(y), "sum_log_w": float(np.log(w).sum()),
        "XtX": XtX, "XtF": XtF, "Xty": add(X * (w * y)[:, None]), "Xt1": add(X * w[:, None]),
        "yty": float(y @ (w * y)), "Fty": F.T @ (w * y), "FtF": (F * w[:, None]).T @ F,
        "sy": np.bincount(codes, weights=w * y, minlength=G), "sF": add(F * w[:, None]),
        "sw": np.bincount(codes, weights=w, minlength=G), "coarse": coarse,
    }


def _pymc_collapsed(design, prior):
    """The PyMC model with the finest factor's coefficients integrated out (a ``pm.Potential``)."""
    import pymc as pm
    import pytensor.tensor as pt

    mean, fixed_sd, sigma_sd, sd_sd = prior
    cs = collapsed_stats(design)
    d = cs["d"]
    with pm.Model() as model:
        a = pm.Normal("fixed", mean, fixed_sd, shape=design.F.shape[1])
        s2 = pm.HalfNormal("sigma", sigma_sd) ** 2 if design.obs_var is None else pt.constant(1.0)
        sds, chol = _group_cov(pm, cs["name"], d, sd_sd)
        m = pt.zeros(cs["G"])
        for g, parent, n_k in cs["coarse"]:
            tau = pm.HalfNormal(f"{g}_sd", sd_sd)
            z = pm.Normal(f"{g}_z", 0.0, 1.0, shape=n_k)
            u = pm.Deterministic(f"{g}_effect", tau * z)
            m = m + u[parent]
        Xr = (cs["Xty"] - pt.dot(cs["XtF"], a) - m[:, None] * cs["Xt1"]) / s2  # c_j, (G, d)
        rr = (cs["yty"] - 2 * pt.dot(a, cs["Fty"]) + pt.dot(a, pt.dot(cs["FtF"], a))
              - 2 * pt.sum(m * (cs["sy"] - pt.dot(cs["sF"], a))) + pt.sum(cs["sw"] * m**2))
        if d == 1:
            tau2 = sds**2
            M = 1.0 / tau2 + cs["XtX"][:, 0, 0] / s2
            logdet_T, logdet_M = cs["G"] * pt.log(tau2), pt.sum(pt.log(M))
            quad = pt.sum(Xr[:, 0] ** 2 / M)
        else:
            T = pt.dot(chol, chol.T)
            det_T = T[0, 0] * T[1, 1] - T[0, 1] ** 2
            Ti = pt.stack([T[1, 1], -T[0, 1], T[0, 0]]) / det_T
            m11 = Ti[0] + cs["XtX"][:, 0, 0] / s2
            m12 = Ti[1] + cs["XtX"][:, 0, 1] / s2
            m22 = Ti[2] + cs["XtX"][:, 1, 1] / s2
            det_M = m11 * m22 - m12**2
            logdet_T, logdet_M = cs["G"] * pt.log(det_T), pt.sum(pt.log(det_M))
            quad = pt.sum((m22 * Xr[:, 0] ** 2 - 2 * m12 * Xr[:, 0] * Xr[:, 1] + m11 * Xr[:, 1] ** 2) / det_M)
        n = cs["n_obs"]
        logdet_V = n * pt.log(s2) - cs["sum_log_w"] + logdet_T + logdet_M
        pm.Potential("y", -0.5 * (n * np.log(2 * np.pi) + logdet_V + rr / s2 - quad))
    return model


@njit(parallel=True)  # compiled in the peer's setup (warm_group_draws), not cached: loaded as a script
def _draw_given(Xty, XtF, Xt1, XtX, a, s2, T, m, out):
    """Compiled draws of ``b_j | a, s2, T, m, y`` for posterior draws (one or two coefficients), numba's generator."""
    S, G, d = out.shape
    p = a.shape[1]
    offsets = m.shape[1] > 0  # coarser factors' effects (else m is (S, 0))
    for s in prange(S):
        inv_s2 = 1.0 / s2[s]
        if d == 1:
            t00, t01, t11 = 1.0 / T[s, 0, 0], 0.0, 0.0
        else:
            det_t = T[s, 0, 0] * T[s, 1, 1] - T[s, 0, 1] ** 2
            t00, t01, t11 = T[s, 1, 1] / det_t, -T[s, 0, 1] / det_t, T[s, 0, 0] / det_t
        for j in range(G):
            mj = m[s, j] if offsets else 0.0
            c0 = Xty[j, 0] - mj * Xt1[j, 0]
            for q in range(p):
                c0 -= XtF[j, 0, q] * a[s, q]
            c0 *= inv_s2
            if d == 1:
                M = t00 + XtX[j, 0, 0] * inv_s2
                out[s, j, 0] = c0 / M + np.random.standard_normal() / np.sqrt(M)  # noqa: NPY002
                continue
            c1 = Xty[j, 1] - mj * Xt1[j, 1]
            for q in range(p):
                c1 -= XtF[j, 1, q] * a[s, q]
            c1 *= inv_s2
            m11 = t00 + XtX[j, 0, 0] * inv_s2
            m12 = t01 + XtX[j, 0, 1] * inv_s2
            m22 = t11 + XtX[j, 1, 1] * inv_s2
            det = m11 * m22 - m12 * m12
            l11 = np.sqrt(m11)  # M = L L'; L' x = z gives x ~ N(0, M^-1)
            l21 = m12 / l11
            l22 = np.sqrt(m22 - l21 * l21)
            x2 = np.random.standard_normal() / l22  # noqa: NPY002
            x1 = (np.random.standard_normal() - l21 * x2) / l11  # noqa: NPY002
            out[s, j, 0] = (m22 * c0 - m12 * c1) / det + x1
            out[s, j, 1] = (m11 * c1 - m12 * c0) / det + x2


@njit
def _seed(seed):
    np.random.seed(seed)  # noqa: NPY002 (numba's own generator, one stream per thread)


def collapsed_group_draws(cs, draws, seed):
    """Draws of the finest factor's coefficients given each posterior draw: ``b_j | a, s2, T, m, y``.

    ``b_j ~ N(M_j^-1 c_j, M_j^-1)``, ``c_j = X_j'W r_j / s2``: what a skilled user of the
    collapsed model computes after sampling to have the group coefficients, here in compiled
    code on both cores (``_draw_given``); its cost is counted in the peer's time.
    ``draws``: ``fixed`` (S, p), ``s2`` (S,), ``T`` (S, d, d), ``m`` (S, G), or (S, 0) without
    coarser factors. Returns (S, G, d).
    """
    f = lambda v: np.ascontiguousarray(v, dtype=np.float64)  # noqa: E731
    out = np.empty((draws["s2"].shape[0], cs["G"], cs["d"]))
    _seed(seed)
    _draw_given(f(cs["Xty"]), f(cs["XtF"]), f(cs["Xt1"]), f(cs["XtX"]), f(draws["fixed"]), f(draws["s2"]),
                f(draws["T"]), f(draws["m"]), out)
    return out


def warm_group_draws():
    """Compile (or load) :func:`_draw_given` before a peer's clock starts."""
    for d in (1, 2):
        cs = {"Xty": np.ones((1, d)), "XtF": np.ones((1, d, 1)), "Xt1": np.ones((1, d)), "XtX": np.eye(d)[None],
              "G": 1, "d": d}
        for m in (np.zeros((1, 1)), np.zeros((1, 0))):
            draws = {"fixed": np.zeros((1, 1)), "s2": np.ones(1), "T": np.eye(d)[None], "m": m}
            collapsed_group_draws(cs, draws, 0)


def _collapsed_effects(design, p, seed):
    """The finest factor's coefficient draws ``(chain, draw, G, d)`` of a collapsed run's posterior ``p``."""
    cs = collapsed_stats(design)
    n_chain, n_draw = p["fixed"].shape[:2]
    S = n_chain * n_draw
    flat = lambda v: np.asarray(v).reshape(S, *np.asarray(v).shape[2:])  # noqa: E731
    sd = flat(p[f"{cs['name']}_sd"]).reshape(S, -1)
    if cs["d"] == 1:
        T = (sd**2)[:, :, None]
    else:
        rho = flat(p[f"{cs['name']}_corr"]).reshape(S)
        T = np.stack([np.stack([sd[:, 0] ** 2, rho * sd[:, 0] * sd[:, 1]], -1),
                      np.stack([rho * sd[:, 0] * sd[:, 1], sd[:, 1] ** 2], -1)], axis=1)
    m = np.zeros((S, cs["G"] if cs["coarse"] else 0))
    for g, parent, _ in cs["coarse"]:
        m += flat(p[f"{g}_effect"])[:, parent]
    s2 = flat(p["sigma"]) ** 2 if "sigma" in p else np.ones(S)
    draws = {"fixed": flat(p["fixed"]), "s2": s2, "T": T, "m": m}
    out = collapsed_group_draws(cs, draws, seed)
    return f"{cs['name']}_effect", out.reshape(n_chain, n_draw, cs["G"], cs["d"])


def sample_pymc_model(model, t0, draws, warmup, sampler):
    """4 chains of a PyMC model by ``sampler`` (nutpie, or ``pm.sample``'s NUTS: pymc, numpyro).

    ``t0`` is when building the model began: the setup time runs from it to the first draw
    (nutpie's compilation included). Returns ``(setup, sampling seconds, posterior, sample_stats)``.
    """
    import pymc as pm

    if sampler == "nutpie":
        import nutpie

        compiled = nutpie.compile_pymc_model(model)
        setup = time.perf_counter() - t0
        t1 = time.perf_counter()
        post = nutpie.sample(compiled, draws=draws, tune=warmup, chains=4, cores=2, seed=1, progress_bar=False)
        seconds = time.perf_counter() - t1
    else:
        with model:
            setup = time.perf_counter() - t0
            t1 = time.perf_counter()
            post = pm.sample(draws, tune=warmup, chains=4, cores=2, random_seed=1, progressbar=False,
                             nuts_sampler=sampler, compute_convergence_checks=False)
            seconds = time.perf_counter() - t1
    posterior = post["posterior"] if not hasattr(post, "posterior") else post.posterior
    stats = post["sample_stats"] if not hasattr(post, "sample_stats") else post.sample_stats
    return setup, seconds, posterior, stats


def run_pymc(name, draws, warmup, sampler, form="noncentred"):
    """PyMC's NUTS, nutpie or NumPyro on the PyMC version of a model in one of its forms."""
    t0 = time.perf_counter()
    model, design = _pymc_model(name, form)
    if form == "collapsed":
        warm_group_draws()
    setup, seconds, p, stats = sample_pymc_model(model, t0, draws, warmup, sampler)
    keep = [v for v in p.data_vars if v == "fixed" or v == "sigma" or v.endswith(("_sd", "_corr", "_effect"))]
    arrays = {v: p[v].values for v in keep}
    extra = 0.0
    if form == "collapsed":  # the group coefficients, drawn given each draw: part of the peer's time
        t2 = time.perf_counter()
        key, values = _collapsed_effects(design, {v: p[v].values for v in p.data_vars}, seed=1)
        arrays[key] = values
        extra = time.perf_counter() - t2
    div = int(np.asarray(stats["diverging"]).sum()) if "diverging" in stats else -1
    est = {f"fixed[{t}]": float(v) for t, v in zip(design.fixed_names, p["fixed"].values.mean((0, 1)), strict=True)}
    for v in keep:
        if v.endswith("_sd"):
            vals = np.atleast_1d(p[v].values.mean((0, 1)))
            for i, val in enumerate(vals):
                est[f"{v}[{i}]"] = float(val)
    return {"setup_seconds": setup, "sampling_seconds": seconds + extra, "group_draw_seconds": extra,
            "arrays": arrays, "divergences": div, "estimates": est}


# --- Stan and JAGS through R -------------------------------------------------------------------

R_PACKAGES = {"stan": ("rstan", "r-cran-rstan r-cran-bh"), "jags": ("rjags", "jags r-cran-rjags")}


def _r_parts(name):
    """The design of a model as plain arrays for R, one entry per grouping factor."""
    import bayeshlm as bh

    source, formula, known, prior = MODELS[name]
    design = bh.hlm(formula, load_data(source), known_sd=known).design
    sizes = design.factor_sizes or (len(design.coef_names),)
    idx = design.factor_idx or (design.group_idx,)
    labels = design.factor_labels or (design.group_labels,)
    parts, col = [], 0
    for k, (d, codes, labs) in enumerate(zip(sizes, idx, labels, strict=True)):
        parts.append({"k": k + 1, "d": d, "codes": codes + 1, "n": len(labs), "X": design.X[:, col:col + d]})
        col += d
    return design, parts, prior


def _rdump(values):
    """An R dump file (``read_rdump`` / ``source``) of scalars, vectors and matrices."""
    lines = []
    for key, v in values.items():
        a = np.asarray(v)
        body = ", ".join(repr(int(x)) if a.dtype.kind in "iu" else f"{float(x):.17g}"
                         for x in a.reshape(-1, order="F"))
        if a.ndim == 0:
            lines.append(f"{key} <- {body}")
        elif a.ndim == 1:
            lines.append(f"{key} <- c({body})")
        else:
            lines.append(f"{key} <- structure(c({body}), .Dim = c({a.shape[0]}L, {a.shape[1]}L))")
    return "\n".join(lines) + "\n"


def _stan_code(design, parts, prior, form="noncentred"):
    """A Stan program (rstan 2.21 syntax) of the model, with the benchmark's priors, centred or not."""
    mean, fixed_sd, sigma_sd, sd_sd = prior
    data = ["int<lower=1> N;", "int<lower=1> P;", "matrix[N, P] F;", "vector[N] y;"]
    params = ["vector[P] fixed;"]
    tparams, model, gq = [], [f"fixed ~ normal({mean}, {fixed_sd});"], []
    mu = "F * fixed"
    if design.obs_var is None:
        params.append("real<lower=0> sigma;")
        model.append(f"sigma ~ normal(0, {sigma_sd});")
    else:
        data.append("vector<lower=0>[N] obs_sd;")
    for p in parts:
        k, d = p["k"], p["d"]
        data += [f"int<lower=1> G{k};", f"int<lower=1, upper=G{k}> g{k}[N];", f"matrix[N, {d}] X{k};"]
        params.append(f"vector<lower=0>[{d}] f{k}_sd;")
        model.append(f"f{k}_sd ~ normal(0, {sd_sd});")
        if d > 1:
            params.append(f"cholesky_factor_corr[{d}] f{k}_L;")
            model.append(f"f{k}_L ~ lkj_corr_cholesky(2);")
            gq.append(f"real f{k}_corr = multiply_lower_tri_self_transpose(f{k}_L)[2, 1];")
        if form == "centred":
            params.append(f"matrix[G{k}, {d}] f{k}_effect;")
            if d == 1:
                model.append(f"col(f{k}_effect, 1) ~ normal(0, f{k}_sd[1]);")
            else:
                model.append(f"for (j in 1:G{k}) f{k}_effect[j] ~ multi_normal_cholesky(rep_row_vector(0, {d}), "
                             f"diag_pre_multiply(f{k}_sd, f{k}_L));")
        else:
            params.append(f"matrix[{d}, G{k}] f{k}_z;")
            model.append(f"to_vector(f{k}_z) ~ std_normal();")
            if d == 1:
                tparams.append(f"matrix[G{k}, 1] f{k}_effect = (f{k}_sd[1] * f{k}_z)';")
            else:
                tparams.append(f"matrix[G{k}, {d}] f{k}_effect = (diag_pre_multiply(f{k}_sd, f{k}_L) * f{k}_z)';")
        mu += f" + rows_dot_product(X{k}, f{k}_effect[g{k}])"
    scale = "sigma" if design.obs_var is None else "obs_sd"
    model.append(f"y ~ normal({mu}, {scale});")
    block = lambda name, body: f"{name} {{\n  " + "\n  ".join(body) + "\n}\n"  # noqa: E731
    return (block("data", data) + block("parameters", params) + block("transformed parameters", tparams)
            + block("model", model) + (block("generated quantities", gq) if gq else ""))


def _jags_code(design, parts, prior):
    """A JAGS model with the same priors: LKJ(2) on a 2 x 2 correlation is (1 + rho) / 2 ~ Beta(2, 2)."""
    mean, fixed_sd, sigma_sd, sd_sd = prior
    body = [f"for (q in 1:P) {{ fixed[q] ~ dnorm({mean}, {1 / fixed_sd**2!r}) }}"]
    mu = "inprod(F[i, ], fixed)"
    for p in parts:
        k, d = p["k"], p["d"]
        if d == 1:
            body += [f"f{k}_sd ~ dnorm(0, {1 / sd_sd**2!r}) T(0,)",
                     f"for (j in 1:G{k}) {{ f{k}_effect[j] ~ dnorm(0, 1 / f{k}_sd^2) }}"]
            mu += f" + X{k}[i, 1] * f{k}_effect[g{k}[i]]"
        elif d == 2:
            body += [f"for (c in 1:2) {{ f{k}_sd[c] ~ dnorm(0, {1 / sd_sd**2!r}) T(0,) }}",
                     f"f{k}_B ~ dbeta(2, 2)", f"f{k}_corr <- 2 * f{k}_B - 1",
                     f"f{k}_S[1, 1] <- f{k}_sd[1]^2", f"f{k}_S[2, 2] <- f{k}_sd[2]^2",
                     f"f{k}_S[1, 2] <- f{k}_corr * f{k}_sd[1] * f{k}_sd[2]", f"f{k}_S[2, 1] <- f{k}_S[1, 2]",
                     f"f{k}_Omega <- inverse(f{k}_S)",
                     f"for (j in 1:G{k}) {{ f{k}_effect[j, 1:2] ~ dmnorm(zero2, f{k}_Omega) }}"]
            mu += f" + inprod(X{k}[i, ], f{k}_effect[g{k}[i], ])"
        else:
            raise ValueError("the JAGS version handles blocks of one or two coefficients")
    if design.obs_var is None:
        body.append(f"sigma ~ dnorm(0, {1 / sigma_sd**2!r}) T(0,)")
        body.append(f"for (i in 1:N) {{ y[i] ~ dnorm({mu}, 1 / sigma^2) }}")
    else:
        body.append(f"for (i in 1:N) {{ y[i] ~ dnorm({mu}, 1 / obs_sd[i]^2) }}")
    return "model {\n  " + "\n  ".join(body) + "\n}\n"


def run_r_sampler(name, draws, warmup, system, form="centred"):
    """Stan (rstan) or JAGS (rjags) through ``Rscript``: setup (compilation) and sampling seconds, and the draws."""
    import pandas as pd

    design, parts, prior = _r_parts(name)
    values = {"N": len(design.y), "P": design.F.shape[1], "F": design.F, "y": design.y}
    if design.obs_var is not None:
        values["obs_sd"] = np.sqrt(design.obs_var)
    for p in parts:
        k = p["k"]
        values.update({f"G{k}": p["n"], f"g{k}": p["codes"].astype(np.int64), f"X{k}": p["X"]})
    if any(p["d"] == 2 for p in parts):
        values["zero2"] = np.zeros(2)
    monitor = ["fixed"] + (["sigma"] if design.obs_var is None else [])
    for p in parts:
        monitor += [f"f{p['k']}_sd", f"f{p['k']}_effect"] + ([f"f{p['k']}_corr"] if p["d"] > 1 else [])
    pars = "c(" + ", ".join(f"'{m}'" for m in monitor) + ")"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "data.R").write_text(_rdump(values if system == "jags" else {k: v for k, v in values.items()
                                                                             if k != "zero2"}))
        out = tmp / "draws.csv"
        if system == "stan":
            (tmp / "model.stan").write_text(_stan_code(design, parts, prior, form))
            script = f"""
suppressPackageStartupMessages(library(rstan))
d <- new.env(); source('{tmp}/data.R', local = d); d <- as.list(d)
t0 <- Sys.time(); sm <- stan_model('{tmp}/model.stan'); setup <- as.numeric(Sys.time() - t0, units = 'secs')
t1 <- Sys.time()
fit <- sampling(sm, data = d, chains = 4, iter = {warmup + draws}, warmup = {warmup}, cores = 2, seed = 1,
                refresh = 0)
secs <- as.numeric(Sys.time() - t1, units = 'secs')
a <- as.array(fit, pars = {pars})
m <- do.call(rbind, lapply(seq_len(dim(a)[2]), function(c) cbind(chain = c, a[, c, , drop = FALSE][, 1, ])))
write.csv(m, '{out}', row.names = FALSE)
div <- sum(get_divergent_iterations(fit))
cat(setup, secs, div, '\\n')
"""
        else:
            (tmp / "model.jags").write_text(_jags_code(design, parts, prior))
            script = f"""
suppressPackageStartupMessages(library(rjags))
d <- new.env(); source('{tmp}/data.R', local = d); d <- as.list(d)
inits <- lapply(1:4, function(c) list(.RNG.name = 'base::Mersenne-Twister', .RNG.seed = c))
t0 <- Sys.time()
m <- jags.model('{tmp}/model.jags', data = d, inits = inits, n.chains = 4, n.adapt = 0, quiet = TRUE)
setup <- as.numeric(Sys.time() - t0, units = 'secs')
t1 <- Sys.time()
adapt(m, {warmup}, end.adaptation = TRUE)
s <- coda.samples(m, {pars}, n.iter = {draws})
secs <- as.numeric(Sys.time() - t1, units = 'secs')
mm <- do.call(rbind, lapply(seq_along(s), function(c) cbind(chain = c, as.matrix(s[[c]]))))
write.csv(mm, '{out}', row.names = FALSE)
cat(setup, secs, 0, '\\n')
"""
        res = subprocess.run(["Rscript", "-e", script], capture_output=True, text=True)
        if res.returncode:
            raise RuntimeError(f"{system} failed: {res.stderr.strip()[-500:]}")
        setup, seconds, div = (float(v) for v in res.stdout.split()[-3:])
        frame = pd.read_csv(out)
    chains = frame.pop("chain").to_numpy()
    n_chains = int(chains.max())
    arrays = {c: frame[c].to_numpy().reshape(n_chains, -1) for c in frame.columns}
    est = {}
    for c in frame.columns:
        if c.startswith(("fixed", "sigma")) or "_sd" in c:
            est[c] = float(frame[c].mean())
    return {"setup_seconds": setup, "sampling_seconds": seconds, "arrays": arrays, "divergences": int(div),
            "estimates": est}


def _repeats(first_seconds, budget=2.0):
    """Timed repeats after a first fit: enough for about ``budget`` seconds, from 3 to 25."""
    return int(min(25, max(3, budget // max(first_seconds, 1e-9))))


def run_fitter(name, system):
    """A REML fit: seconds (median of repeats, data frame to estimates) and estimates.

    Each system first fits once untimed (modules and compiled code loaded), as the lme4 script
    does, then times one fit to choose the number of repeats. Fits of a few milliseconds are
    timed 25 times, slow ones 3 times (see ``_repeats``): the median of a few runs of a
    millisecond-long fit moves by tens of percent on a shared machine.
    """
    source, formula, known, _ = MODELS[name]
    df = load_data(source)
    if system == "bayeshlm_em":
        import bayeshlm as bh

        bh.fit_em(bh.hlm(formula, df, known_sd=known))  # kernels loaded from the cache
        t0 = time.perf_counter()
        bh.fit_em(bh.hlm(formula, df, known_sd=known))
        repeats = _repeats(time.perf_counter() - t0)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fit = bh.fit_em(bh.hlm(formula, df, known_sd=known))
            times.append(time.perf_counter() - t0)
        return {"fit_seconds": float(np.median(times)), "loglik": fit.loglik,
                "estimates": {**{f"fixed[{k}]": v for k, v in fit.fixed.items()},
                              **{f"sd[{k}]": v for k, v in fit.sd.items()}}}
    if system == "statsmodels" and name in CROSSED:
        return _statsmodels_crossed(df, formula)
    if system == "statsmodels":
        if known is not None or "/" in formula:
            return {"skipped": "model not expressible in MixedLM here (known variances or nested factors)"}
        import warnings

        import statsmodels.formula.api as smf

        fixed = formula.split("+ (")[0].replace(" ~ ", " ~ ")
        bar = formula.split("(")[-1].rstrip(")")
        re_part, group = [s.strip() for s in bar.split("|")]
        re_formula = "1" if re_part == "1" else f"~{re_part}"
        times = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            smf.mixedlm(fixed, df, groups=df[group], re_formula=re_formula).fit(reml=True)  # modules loaded
            t0 = time.perf_counter()
            smf.mixedlm(fixed, df, groups=df[group], re_formula=re_formula).fit(reml=True)
            repeats = _repeats(time.perf_counter() - t0)
            for _ in range(repeats):
                t0 = time.perf_counter()
                res = smf.mixedlm(fixed, df, groups=df[group], re_formula=re_formula).fit(reml=True)
                times.append(time.perf_counter() - t0)
        return {"fit_seconds": float(np.median(times)), "loglik": float(res.llf),
                "estimates": {f"fixed[{k}]": float(v) for k, v in res.fe_params.items()}}
    if system == "lme4":
        if shutil.which("Rscript") is None:
            return {"skipped": "Rscript not found (Debian: apt install r-cran-lme4)"}
        with tempfile.TemporaryDirectory() as tmp:
            csv = Path(tmp) / "data.csv"
            df.to_csv(csv, index=False)
            weights = f", weights = 1 / d${known}^2" if known else ""
            control = ", control = lmerControl(check.nobs.vs.nlev = 'ignore', check.nobs.vs.nRE = 'ignore')"
            if known:
                script = "cat('skipped')"
            else:
                script = (f"suppressPackageStartupMessages(library(lme4)); d <- read.csv('{csv}'); "
                          f"f <- {formula}; invisible(lmer(f, d{weights}{control})); "
                          f"t1 <- system.time(lmer(f, d{weights}{control}))[['elapsed']]; "
                          "r <- as.integer(min(25, max(3, 2 %/% max(t1, 1e-9)))); "
                          f"t <- replicate(r, system.time(lmer(f, d{weights}{control}))[['elapsed']]); "
                          f"m <- lmer(f, d{control}); cat(median(t), as.numeric(logLik(m)))")
            out = subprocess.run(["Rscript", "-e", script], capture_output=True, text=True, timeout=600)
        if known:
            return {"skipped": "lme4 cannot fix the residual variances (known level-1 variances)"}
        if out.returncode:
            return {"skipped": f"lme4 failed: {out.stderr.strip()[-200:]}"}
        seconds, loglik = (float(v) for v in out.stdout.split())
        return {"fit_seconds": seconds, "loglik": loglik}
    raise ValueError(system)


def worker(model, system, draws, warmup, out_path):
    """Run one (model, system[/form]) in this process and write its JSON record."""
    t0 = time.perf_counter()
    system, _, form = system.partition("/")
    if system == "bayeshlm":
        rec = run_bayeshlm(model, draws, warmup)
    elif system in ("pymc", "nutpie", "numpyro"):
        if "PYTENSOR_FLAGS" not in os.environ and ctypes.util.find_library("openblas"):
            # PyTensor's C backend (PyMC's own sampler) links a BLAS only when told where one is
            os.environ["PYTENSOR_FLAGS"] = "blas__ldflags=-lopenblas"
        if system == "numpyro":  # before JAX is imported: one CPU device per chain
            os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
        rec = run_pymc(model, draws, warmup, system, form)
    elif system in ("stan", "jags"):
        rec = run_r_sampler(model, draws, warmup, system, form)
    else:
        rec = run_fitter(model, system)
    if "arrays" in rec:
        # the sampling is done: the time limit stops here (the parent waits for the ESS on its own)
        Path(str(out_path) + ".sampled").write_text(str(time.perf_counter() - t0))
        bulk, tail, rhat = ess_summary(rec.pop("arrays"))
        rec.update(min_ess_bulk=bulk, min_ess_tail=tail, max_rhat=rhat,
                   min_ess_per_second=min(bulk, tail) / rec["sampling_seconds"])
        if "sampler_seconds" in rec:
            rec["min_ess_per_sampler_second"] = min(bulk, tail) / rec["sampler_seconds"]
            rec["min_ess_per_like_for_like_second"] = min(bulk, tail) / rec["like_for_like_seconds"]
    rec["wall_seconds"] = time.perf_counter() - t0
    rec["peak_memory_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    Path(out_path).write_text(json.dumps(rec))


def _r_has(package):
    """True when ``Rscript`` runs and can load ``package``."""
    if shutil.which("Rscript") is None:
        return False
    res = subprocess.run(["Rscript", "-e", f"suppressPackageStartupMessages(library({package}))"],
                         capture_output=True, text=True)
    return res.returncode == 0


POST_LIMIT = 1800.0  # seconds allowed, after the sampling, for the ESS of tens of thousands of scalars


def run_worker(cmd, out, err_path, limit):
    """One worker process: ``limit`` seconds for its setup and sampling, then up to ``POST_LIMIT`` for the ESS.

    The limit is the peer's: data, model, compilation and sampling. The worker marks the end
    of its sampling (``<out>.sampled``); the diagnostics computed after it (bulk and tail ESS
    and R-hat over every group coefficient, a minute at 40,000 of them) are not the peer's
    time and are not counted against the limit.
    """
    marker = Path(str(out) + ".sampled")
    with open(err_path, "w") as err:
        # its own session, so that a time limit also stops the peer's worker processes
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True, start_new_session=True)
        start = time.perf_counter()
        while proc.poll() is None:
            elapsed = time.perf_counter() - start
            if elapsed > limit + POST_LIMIT or (elapsed > limit and not marker.exists()):
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                if marker.exists():
                    return {"skipped": f"the ESS took longer than {POST_LIMIT:.0f} s"}
                return {"skipped": f"time limit of {limit} s reached", "limit_seconds": limit}
            time.sleep(0.2)
    if proc.returncode:
        text = Path(err_path).read_text()
        if proc.returncode < 0:  # killed by a signal not ours: SIGKILL is the kernel's when memory runs out
            how = "killed by SIGKILL (out of memory?)" if proc.returncode == -signal.SIGKILL else \
                f"killed by signal {-proc.returncode}"
            return {"skipped": f"{how}; last output: " + " ".join(text.strip()[-200:].split())}
        return {"skipped": "failed: " + " ".join(text.strip()[-300:].split())}
    return json.loads(out.read_text())


def _statsmodels_crossed(df, formula):
    """MixedLM's REML fit of crossed random intercepts: one group, a variance component per factor."""
    import warnings

    import statsmodels.formula.api as smf

    fixed = formula.split("+ (")[0]
    import re

    factors = re.findall(r"\|\s*([\w:]+)\s*\)", formula)
    n_cols = sum(df[f].nunique() for f in factors)
    if n_cols > STATSMODELS_MAX_COLUMNS:
        return {"skipped": f"MixedLM takes crossed factors as variance components of one group: a dense design of "
                           f"{len(df):,} rows x {n_cols:,} columns, not run"}
    vc = {f: f"0 + C({f})" for f in factors}
    one = np.ones(len(df))

    def fit():
        return smf.mixedlm(fixed, df, groups=one, re_formula="0", vc_formula=vc).fit(reml=True)

    times = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit()  # modules loaded
        for _ in range(3):
            t0 = time.perf_counter()
            res = fit()
            times.append(time.perf_counter() - t0)
    return {"fit_seconds": float(np.median(times)), "loglik": float(res.llf),
            "estimates": {f"fixed[{k}]": float(v) for k, v in res.fe_params.items()}}


def run(models, systems, draws, warmup, limit):
    """Every (model, system) in its own interpreter; returns ``{model: {system: record}}``."""
    results = {}
    for model in models:
        results[model] = {}
        names = [f"{system}/{form}" if form else system for system in systems for form in FORMS.get(system, ("",))]
        for name in names:
            system = name.partition("/")[0]
            missing = [m for m in NEEDS.get(system, ()) if importlib.util.find_spec(m) is None]
            if system in R_PACKAGES and not _r_has(R_PACKAGES[system][0]):
                results[model][name] = {"skipped": f"R package {R_PACKAGES[system][0]} not found "
                                                   f"(Debian: apt install {R_PACKAGES[system][1]})"}
                print(model, name, results[model][name], flush=True)
                continue
            if missing:
                results[model][name] = {"skipped": f"{', '.join(missing)} not installed (pip install -e '.[bench]')"}
                continue
            if model in CROSSED and name.endswith("/collapsed"):
                results[model][name] = {"skipped": "not expressible: the collapsed form integrates out one factor's "
                                                   "groups given the others', which must contain them"}
                print(model, name, results[model][name], flush=True)
                continue
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "r.json"
                cmd = [sys.executable, __file__, "--worker", model, name, str(draws), str(warmup), str(out)]
                rec = run_worker(cmd, out, Path(tmp) / "stderr.txt", limit)
            results[model][name] = rec
            brief = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in rec.items() if k != "estimates"}
            print(model, name, brief, flush=True)
    return results


def limit_bound(rec, n_draws):
    """The most a run stopped by its time limit could have reached: ``n_draws / limit`` min-ESS/s, else None.

    A run stopped at ``L`` seconds would, had it finished at that moment with a minimum ESS
    equal to its number of draws (the most NUTS gives on the worst of many parameters),
    have reached ``n_draws / L``: a bound, not a measurement.
    """
    limit = rec.get("limit_seconds")
    return n_draws / limit if limit else None


def summarise(recs, n_draws):
    """One model's peer comparison: each peer's best form, the best peer overall, and bounds.

    Returns a dict with ``ours`` (bayeshlm's min-ESS/s on the time of ``bh.sample`` as a user
    calls it), ``ours_sampler`` (on the sampler's own time), ``peers``: per peer
    ``{"row": (form, min-ESS/s) of its best row-level form or None, "collapsed": ...,
    "stopped": [forms stopped by the limit], "failed": [...]}``, ``best``: ``(peer/form,
    min-ESS/s)`` over every finished peer form, and ``bound``: ``(peer/form, n_draws /
    limit)``, the largest bound of a stopped form, or None.
    """
    ours = recs.get("bayeshlm", {})
    out = {"ours": ours.get("min_ess_per_second"), "ours_sampler": ours.get("min_ess_per_sampler_second"),
           "ours_like_for_like": ours.get("min_ess_per_like_for_like_second"),
           "peers": {}, "best": None, "bound": None}
    for name, rec in recs.items():
        system, _, form = name.partition("/")
        if system not in FORMS:
            continue
        peer = out["peers"].setdefault(system, {"row": None, "collapsed": None, "stopped": [], "failed": []})
        if "min_ess_per_second" in rec:
            value = rec["min_ess_per_second"]
            slot = "collapsed" if form == "collapsed" else "row"
            if peer[slot] is None or value > peer[slot][1]:
                peer[slot] = (form, value)
            if out["best"] is None or value > out["best"][1]:
                out["best"] = (name, value)
        elif (bound := limit_bound(rec, n_draws)) is not None:
            peer["stopped"].append(form)
            if out["bound"] is None or bound > out["bound"][1]:
                out["bound"] = (name, bound)
        elif "skipped" in rec:
            peer["failed"].append(f"{form}: {rec['skipped']}")
    return out


def table(results, n_draws=4000):
    """Markdown tables: every (peer, form) with its ratio, each peer's best forms, then the REML fitters."""
    lines = ["## Samplers", "",
             "bayeshlm's time is that of `bh.sample(model)` as a user calls it (defaults, result built); the sampler's "
             "own seconds are in brackets. Ratios are bayeshlm's min-ESS/s over the peer's.", "",
             "| model | system/form | setup (s) | sampling (s) | min bulk ESS | min tail ESS | min-ESS/s | max R-hat "
             "| divergences | peak MB | bayeshlm / this |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for model, recs in results.items():
        ours = recs.get("bayeshlm", {}).get("min_ess_per_second")
        for system, r in recs.items():
            if system in FITTERS:
                continue
            if "skipped" in r:
                bound = limit_bound(r, n_draws)
                note = f" (at most {bound:.2f} min-ESS/s: a bound)" if bound else ""
                lines.append(f"| {model} | {system} | {r['skipped']}{note} |||||||||")
                continue
            ratio = "" if system == "bayeshlm" or not ours else f"{ours / r['min_ess_per_second']:.1f}x"
            secs = f"{r['sampling_seconds']:.2f}"
            if "sampler_seconds" in r:
                secs += f" ({r['sampler_seconds']:.2f}; {r['like_for_like_seconds']:.2f} without log-likelihood)"
            elif r.get("group_draw_seconds"):
                secs += f" (of which {r['group_draw_seconds']:.2f} drawing the group effects)"
            lines.append(f"| {model} | {system} | {r['setup_seconds']:.1f} | {secs} | "
                         f"{r['min_ess_bulk']:.0f} | {r['min_ess_tail']:.0f} | {r['min_ess_per_second']:.1f} | "
                         f"{r['max_rhat']:.3f} | {r['divergences']} | {r['peak_memory_mb']:.0f} | {ratio} |")
    lines += ["", "## bayeshlm over the best peer", "",
              "Three times for bayeshlm: the default call (which also stores a log-likelihood, pointwise or by group, "
              "which no peer computes), the same call with `log_likelihood=False` (the same draws, the "
              "outputs every peer gives: posterior and sampler statistics), and the sampler alone.", "",
              "| model | best peer (min-ESS/s) | default call | like for like | sampler alone |",
              "|---|---|---|---|---|"]
    for model, recs in results.items():
        summary = summarise(recs, n_draws)
        if summary["best"] is None or summary["ours"] is None:
            continue
        name, best = summary["best"]
        cells = [f"{v / best:.1f}x" if v else "" for v in
                 (summary["ours"], summary["ours_like_for_like"], summary["ours_sampler"])]
        lines.append(f"| {model} | {name} ({best:.1f}) | " + " | ".join(cells) + " |")
    lines += ["", "## Each peer in its best form", "",
              "| model | peer | best row-level form (min-ESS/s) | collapsed (min-ESS/s) | stopped at the limit |",
              "|---|---|---|---|---|"]
    for model, recs in results.items():
        summary = summarise(recs, n_draws)
        for peer, v in summary["peers"].items():
            row = f"{v['row'][0]} ({v['row'][1]:.1f})" if v["row"] else "none finished"
            col = f"{v['collapsed'][0]} ({v['collapsed'][1]:.1f})" if v["collapsed"] else (
                "not expressible" if peer not in ("nutpie", "numpyro", "pymc") else "did not finish")
            lines.append(f"| {model} | {peer} | {row} | {col} | {', '.join(v['stopped']) or ''} |")
    lines += ["", "## REML fits", "", "| model | system | seconds | log-likelihood | bayeshlm faster by |",
              "|---|---|---|---|---|"]
    for model, recs in results.items():
        ours = recs.get("bayeshlm_em", {}).get("fit_seconds")
        for system in FITTERS:
            r = recs.get(system)
            if r is None:
                continue
            if "skipped" in r:
                lines.append(f"| {model} | {system} | {r['skipped']} |||")
                continue
            ratio = "" if system == "bayeshlm_em" or not ours else f"{r['fit_seconds'] / ours:.1f}x"
            lines.append(f"| {model} | {system} | {r['fit_seconds']:.4f} | {r['loglik']:.4f} | {ratio} |")
    if NOT_RUN:
        lines += ["", "Not run: " + "; ".join(f"{k} ({v})" for k, v in NOT_RUN.items()) + "."]
    return "\n".join(lines)


DEFAULT_LIMIT = 100.0  # seconds per (model, system/form), the same for every run of a table


def main(argv=None):
    """Run the harness, print the tables, write the JSON and Markdown files (always one whole run)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 draws, two small models")
    parser.add_argument("--models", nargs="*", default=None)
    parser.add_argument("--systems", nargs="*", default=None)
    parser.add_argument("--limit", type=float, default=DEFAULT_LIMIT, help="seconds allowed per (model, system/form)")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args(argv)
    draws = warmup = 100 if args.quick else 1000
    models = args.models or (["eight_schools", "radon"] if args.quick else list(MODELS))
    systems = args.systems or SAMPLERS + FITTERS
    started = time.strftime("%Y-%m-%d %H:%M")
    t0 = time.perf_counter()
    results = run(models, systems, draws, warmup, args.limit)
    text = table(results, 4 * draws)
    print(text)
    sys.path.insert(0, str(HERE))
    from bench_core import machine

    meta = {"machine": machine(), "draws": draws, "warmup": warmup, "chains": 4, "date": time.strftime("%Y-%m-%d"),
            "started": started, "run_minutes": (time.perf_counter() - t0) / 60, "limit_seconds": args.limit,
            "not_run": NOT_RUN, "forms": FORMS}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "peers_results.json").write_text(json.dumps({**meta, "models": results}, indent=2))
    header = (f"# bayeshlm against its peers\n\n`python benchmarks/bench_peers.py`, one run started {started} "
              f"({meta['run_minutes']:.0f} minutes): {meta['machine'].get('platform', '')}, {os.cpu_count()} CPUs. "
              f"4 chains x {draws} draws after {warmup} warm-up iterations, the same priors everywhere; each "
              f"(model, system/form) in its own interpreter, limited to {args.limit:.0f} s.\n\n")
    (args.out / "PEERS_RESULTS.md").write_text(header + text + "\n")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
    else:
        sys.exit(main())
