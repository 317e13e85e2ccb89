"""bayeshlm against other samplers and fitters: the same models, the same priors, one machine, one run.

Systems (each (model, system) runs in its own interpreter, with a time limit):

* ``bayeshlm``: :func:`bayeshlm.sample` with its default collapsed Metropolis-Hastings;
* ``pymc``: PyMC's own NUTS (``nuts_sampler="pymc"``), non-centred group effects;
* ``nutpie``: the same PyMC model compiled and sampled by nutpie;
* ``pymc_centered`` (eight schools only): the centred parameterisation with PyMC's NUTS;
* ``bayeshlm_em``, ``statsmodels`` and ``lme4``: REML fits (time and estimates only);
  lme4 runs through ``Rscript`` when R and lme4 are installed (Debian: ``apt install
  r-cran-lme4``), and is skipped with a note otherwise.

Stan, JAGS and numpyro are not run here: none is installed on this machine (they are
listed in the output as skipped). Install the Python peers with ``pip install -e '.[bench]'``.

Priors (the same in every sampler; ``PRIORS`` below): normal on the fixed effects,
half-normal on sigma and on every group SD, LKJ(2) on the correlations. Every sampler draws
4 chains of 1000 draws after 1000 warm-up iterations. Reported per (model, system): setup
seconds (model building and compilation), sampling seconds, the minimum bulk and tail ESS
over every scalar (fixed effects, sigma, group SDs and correlations, and every group
coefficient), min-ESS per second of sampling, the largest R-hat, divergences, the peak
memory of the process, and the posterior means of the fixed effects and SDs.

    python benchmarks/bench_peers.py                  # writes peers_results.json, PEERS_RESULTS.md
    python benchmarks/bench_peers.py --quick          # small draws, two models, to check it works
"""

from __future__ import annotations

import argparse
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
}
SAMPLERS = ["bayeshlm", "nutpie", "pymc"]
FITTERS = ["bayeshlm_em", "statsmodels", "lme4"]
NEEDS = {"pymc": ("pymc",), "pymc_centered": ("pymc",), "nutpie": ("pymc", "nutpie"), "statsmodels": ("statsmodels",)}
NOT_RUN = {"stan": "CmdStan/rstan not installed", "jags": "JAGS not installed",
           "numpyro": "JAX not installed"}


def load_data(source, seed=0):
    """A bundled data set, or synthetic two-level data with ``rows`` rows and 50 rows per group."""
    import pandas as pd

    import bayeshlm as bh

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


def _ess_summary(arrays):
    """``(min bulk ESS, min tail ESS, max R-hat)`` over every scalar of ``{name: (chain, draw, ...)}``."""
    from arviz_stats.base import array_stats

    bulk, tail, rhat = np.inf, np.inf, 0.0
    for x in arrays.values():
        x = np.asarray(x, dtype=float)
        x = x.reshape(x.shape[0], x.shape[1], -1)
        for k in range(x.shape[2]):
            s = x[:, :, k]
            if np.ptp(s) == 0:
                continue
            bulk = min(bulk, float(array_stats.ess(s, chain_axis=0, draw_axis=1, method="bulk")))
            tail = min(tail, float(array_stats.ess(s, chain_axis=0, draw_axis=1, method="tail", prob=(0.05, 0.95))))
            rhat = max(rhat, float(array_stats.rhat(s, chain_axis=0, draw_axis=1)))
    return bulk, tail, rhat


def run_bayeshlm(name, draws, warmup):
    """Bayeshlm's default sampler on a model; setup includes loading the compiled kernels."""
    import bayeshlm as bh

    source, formula, known, prior = MODELS[name]
    df = load_data(source)
    t0 = time.perf_counter()
    model = bh.hlm(formula, df, priors=bh_priors(prior), known_sd=known)
    bh.sample(model, draws=5, warmup=5, chains=1, seed=0, progress=False)  # load the compiled kernels
    setup = time.perf_counter() - t0
    post = bh.sample(model, draws=draws, warmup=warmup, chains=4, seed=1, progress=False, log_likelihood=False)
    p = post.posterior
    arrays = {v: p[v].values for v in p.data_vars}
    est = {f"fixed[{t}]": float(p["fixed"].sel(fixed_term=t).mean()) for t in model.fixed_names}
    for v in p.data_vars:
        if v.endswith("_sd"):
            for c in p[v].coords[p[v].dims[-1]].values:
                est[f"{v}[{c}]"] = float(p[v].sel({p[v].dims[-1]: c}).mean())
    return {"setup_seconds": setup, "sampling_seconds": float(post.attrs["sampling_time"]), "arrays": arrays,
            "divergences": 0, "estimates": est}


def _pymc_model(name, centered=False):
    """The PyMC version of a model, built from bayeshlm's design arrays (the same columns)."""
    import pymc as pm

    import bayeshlm as bh

    source, formula, known, prior = MODELS[name]
    df = load_data(source)
    design = bh.hlm(formula, df, known_sd=known).design
    mean, fixed_sd, sigma_sd, sd_sd = prior
    factors = design.factors or (design.factor,)
    sizes = design.factor_sizes or (len(design.coef_names),)
    idx = design.factor_idx or (design.group_idx,)
    labels = design.factor_labels or (design.group_labels,)
    with pm.Model() as model:
        a = pm.Normal("fixed", mean, fixed_sd, shape=design.F.shape[1])
        mu = pm.math.dot(design.F, a)
        col = 0
        for factor, d, codes, labs in zip(factors, sizes, idx, labels, strict=True):
            g = factor.replace(":", "_")
            X = design.X[:, col:col + d]
            col += d
            n_g = len(labs)
            if d == 1:
                tau = pm.HalfNormal(f"{g}_sd", sd_sd)
                if centered:
                    b = pm.Normal(f"{g}_effect", 0.0, tau, shape=n_g)
                else:
                    z = pm.Normal(f"{g}_z", 0.0, 1.0, shape=n_g)
                    b = pm.Deterministic(f"{g}_effect", tau * z)
                mu = mu + X[:, 0] * b[codes]
            else:
                chol, corr, sds = pm.LKJCholeskyCov(f"{g}_chol", n=d, eta=2.0,
                                                    sd_dist=pm.HalfNormal.dist(sd_sd, shape=d), compute_corr=True)
                pm.Deterministic(f"{g}_sd", sds)
                pm.Deterministic(f"{g}_corr", corr[np.tril_indices(d, -1)])
                z = pm.Normal(f"{g}_z", 0.0, 1.0, shape=(n_g, d))
                b = pm.Deterministic(f"{g}_effect", pm.math.dot(z, chol.T))
                mu = mu + (X * b[codes]).sum(axis=1)
        if design.obs_var is None:
            sigma = pm.HalfNormal("sigma", sigma_sd)
            pm.Normal("y", mu, sigma, observed=design.y)
        else:
            pm.Normal("y", mu, np.sqrt(design.obs_var), observed=design.y)
    return model, design


def run_pymc(name, draws, warmup, sampler, centered=False):
    """PyMC's NUTS or nutpie on the PyMC version of a model."""
    import pymc as pm

    t0 = time.perf_counter()
    model, design = _pymc_model(name, centered)
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
                             nuts_sampler="pymc", compute_convergence_checks=False)
            seconds = time.perf_counter() - t1
    p = post["posterior"] if not hasattr(post, "posterior") else post.posterior
    keep = [v for v in p.data_vars if v == "fixed" or v == "sigma" or v.endswith(("_sd", "_corr", "_effect"))]
    arrays = {v: p[v].values for v in keep}
    stats = post["sample_stats"] if not hasattr(post, "sample_stats") else post.sample_stats
    div = int(np.asarray(stats["diverging"]).sum()) if "diverging" in stats else -1
    est = {f"fixed[{t}]": float(v) for t, v in zip(design.fixed_names, p["fixed"].values.mean((0, 1)), strict=True)}
    for v in keep:
        if v.endswith("_sd"):
            vals = np.atleast_1d(p[v].values.mean((0, 1)))
            for i, val in enumerate(vals):
                est[f"{v}[{i}]"] = float(val)
    return {"setup_seconds": setup, "sampling_seconds": seconds, "arrays": arrays, "divergences": div,
            "estimates": est}


def run_fitter(name, system, repeats=3):
    """A REML fit: seconds (median of repeats, data frame to estimates) and estimates."""
    source, formula, known, _ = MODELS[name]
    df = load_data(source)
    if system == "bayeshlm_em":
        import bayeshlm as bh

        bh.fit_em(bh.hlm(formula, df, known_sd=known))  # kernels loaded
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fit = bh.fit_em(bh.hlm(formula, df, known_sd=known))
            times.append(time.perf_counter() - t0)
        return {"fit_seconds": float(np.median(times)), "loglik": fit.loglik,
                "estimates": {**{f"fixed[{k}]": v for k, v in fit.fixed.items()},
                              **{f"sd[{k}]": v for k, v in fit.sd.items()}}}
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
                          f"t <- replicate({repeats}, system.time(lmer(f, d{weights}{control}))[['elapsed']]); "
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
    """Run one (model, system) in this process and write its JSON record."""
    t0 = time.perf_counter()
    if system == "bayeshlm":
        rec = run_bayeshlm(model, draws, warmup)
    elif system in ("pymc", "nutpie"):
        rec = run_pymc(model, draws, warmup, system)
    elif system == "pymc_centered":
        rec = run_pymc(model, draws, warmup, "pymc", centered=True)
    else:
        rec = run_fitter(model, system)
    if "arrays" in rec:
        bulk, tail, rhat = _ess_summary(rec.pop("arrays"))
        rec.update(min_ess_bulk=bulk, min_ess_tail=tail, max_rhat=rhat,
                   min_ess_per_second=min(bulk, tail) / rec["sampling_seconds"])
    rec["wall_seconds"] = time.perf_counter() - t0
    rec["peak_memory_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    Path(out_path).write_text(json.dumps(rec))


def run(models, systems, draws, warmup, limit):
    """Every (model, system) in its own interpreter; returns ``{model: {system: record}}``."""
    results = {}
    for model in models:
        results[model] = {}
        names = list(systems) + (["pymc_centered"] if model == "eight_schools" and "pymc" in systems else [])
        for system in names:
            missing = [m for m in NEEDS.get(system, ()) if importlib.util.find_spec(m) is None]
            if missing:
                results[model][system] = {"skipped": f"{', '.join(missing)} not installed (pip install -e '.[bench]')"}
                continue
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "r.json"
                cmd = [sys.executable, __file__, "--worker", model, system, str(draws), str(warmup), str(out)]
                # its own session, so that a time limit also stops the peer's worker processes
                proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        start_new_session=True)
                try:
                    _, err = proc.communicate(timeout=limit)
                    if proc.returncode:
                        rec = {"skipped": f"failed: {err.strip()[-300:]}"}
                    else:
                        rec = json.loads(out.read_text())
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.communicate()
                    rec = {"skipped": f"time limit of {limit} s reached"}
            results[model][system] = rec
            brief = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in rec.items() if k != "estimates"}
            print(model, system, brief, flush=True)
    return results


def table(results):
    """Markdown tables: samplers with ratios to the best peer, then the REML fitters."""
    lines = ["## Samplers", "",
             "| model | system | setup (s) | sampling (s) | min bulk ESS | min tail ESS | min-ESS/s | max R-hat "
             "| divergences | peak MB | bayeshlm / this |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for model, recs in results.items():
        ours = recs.get("bayeshlm", {}).get("min_ess_per_second")
        for system, r in recs.items():
            if system in FITTERS:
                continue
            if "skipped" in r:
                lines.append(f"| {model} | {system} | {r['skipped']} |||||||||")
                continue
            ratio = "" if system == "bayeshlm" or not ours else f"{ours / r['min_ess_per_second']:.0f}x"
            lines.append(f"| {model} | {system} | {r['setup_seconds']:.1f} | {r['sampling_seconds']:.2f} | "
                         f"{r['min_ess_bulk']:.0f} | {r['min_ess_tail']:.0f} | {r['min_ess_per_second']:.0f} | "
                         f"{r['max_rhat']:.3f} | {r['divergences']} | {r['peak_memory_mb']:.0f} | {ratio} |")
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
    lines += ["", "Not run: " + "; ".join(f"{k} ({v})" for k, v in NOT_RUN.items()) + "."]
    return "\n".join(lines)


def main(argv=None):
    """Run the harness, print the tables, write the JSON and Markdown files."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 draws, two small models")
    parser.add_argument("--models", nargs="*", default=None)
    parser.add_argument("--systems", nargs="*", default=None)
    parser.add_argument("--limit", type=float, default=600.0, help="seconds allowed per (model, system)")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args(argv)
    draws = warmup = 100 if args.quick else 1000
    models = args.models or (["eight_schools", "radon"] if args.quick else list(MODELS))
    systems = args.systems or SAMPLERS + FITTERS
    results = run(models, systems, draws, warmup, args.limit)
    text = table(results)
    print(text)
    sys.path.insert(0, str(HERE))
    from bench_core import machine

    meta = {"machine": machine(), "draws": draws, "warmup": warmup, "chains": 4, "date": time.strftime("%Y-%m-%d"),
            "limit_seconds": args.limit, "not_run": NOT_RUN}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "peers_results.json").write_text(json.dumps({**meta, "models": results}, indent=2))
    header = (f"# bayeshlm against its peers\n\n`python benchmarks/bench_peers.py` on {meta['date']}: "
              f"{meta['machine'].get('platform', '')}, {os.cpu_count()} CPUs. 4 chains x {draws} draws after "
              f"{warmup} warm-up iterations, the same priors everywhere; each run in its own interpreter, "
              f"limited to {args.limit:.0f} s.\n\n")
    (args.out / "PEERS_RESULTS.md").write_text(header + text + "\n")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
    else:
        sys.exit(main())
