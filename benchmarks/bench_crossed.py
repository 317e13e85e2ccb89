"""Crossed random effects: the EB/ML fit against lme4, and bayeshlm's three samplers, on the same data in one run.

Designs (``DESIGNS``):

* ``scotssec``: 3,435 pupils in 148 primary x 19 secondary schools (bundled),
  ``attain ~ verbal + sex + (1 | primary) + (1 | second)``;
* ``crossed_73k``: a teaching-evaluation-sized synthetic design, about 73,000 ratings of
  3,000 students x 1,100 instructors (each student rates about 24 instructors, chosen at
  random), ``y ~ x + (1 | subject) + (1 | item)`` from ``bh.simulate_crossed``;
* ``crossed_1m`` (with ``--large``): 1,000,000 rows, 10,000 x 1,000 levels (10% of the
  cells).

Per design:

* REML by ``bh.hlm`` + ``bh.fit_em`` (kernels loaded, median of ``--repeats``) and by lme4's
  ``lmer`` through ``Rscript`` (after one warm-up fit, median of the same repeats; skipped
  with a note when R or lme4 is missing), with both log-likelihoods;
* the posterior by ``bh.sample`` with each method (``mh``, ``gibbs``: the exact joint draw of
  every coefficient; ``blocked``: each factor with the fixed effects given the others), 4
  chains x 1000 draws after 1000 warm-up sweeps, the same priors for all: min bulk ESS over
  every scalar, every group coefficient counted, per second of sampling, and the time end
  to end (``hlm`` + ``sample``, the ArviZ result built). A method whose time for 40 warm-up
  sweeps predicts more than ``--limit`` seconds for the run is not run and reported with
  that prediction (a bound, not a measurement).

The Bayesian peers (PyMC, nutpie, NumPyro, Stan, JAGS) on these designs are run by
``benchmarks/bench_peers.py`` (models ``scotssec`` and ``crossed_73k``).

    python benchmarks/bench_crossed.py            # writes crossed_results.json and CROSSED_RESULTS.md
    python benchmarks/bench_crossed.py --large    # also the 1,000,000-row design
    python benchmarks/bench_crossed.py --quick    # a small synthetic design, no R, to check it works
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from rscript import run_r  # noqa: E402

sys.path.insert(0, str(HERE.parent))

DESIGNS = {
    "scotssec": ("scotssec", "attain ~ verbal + sex + (1 | primary) + (1 | second)"),
    "crossed_73k": ("crossed:3000:1100:73000", "y ~ x + (1 | subject) + (1 | item)"),
    "crossed_1m": ("crossed:10000:1000:1000000", "y ~ x + (1 | subject) + (1 | item)"),
    "crossed_small": ("crossed:200:80:4000", "y ~ x + (1 | subject) + (1 | item)"),
}
METHODS = ("mh", "gibbs", "blocked")

R_SCRIPT = r"""
suppressMessages(library(lme4))
args <- commandArgs(trailingOnly = TRUE)
df <- read.csv(args[1], stringsAsFactors = TRUE)
repeats <- as.integer(args[2])
f <- as.formula(args[3])
m <- lmer(f, df, REML = TRUE)  # warm-up
ts <- numeric(repeats)
for (i in seq_len(repeats)) ts[i] <- system.time(m <- lmer(f, df, REML = TRUE))[["elapsed"]]
cat(sprintf("REML %.6f %.8f\n", median(ts), as.numeric(logLik(m))))
cat(sprintf("VERSION %s %s\n", R.version$version.string, packageVersion("lme4")))
"""


def load(source, seed=1):
    """A bundled data set, or ``crossed:<subjects>:<items>:<rows>``: one row per observed cell."""
    import bayeshlm as bh

    if not source.startswith("crossed:"):
        return bh.load_dataset(source)
    n_s, n_i, rows = (int(v) for v in source.split(":")[1:])
    return bh.simulate_crossed(n_subjects=n_s, n_items=n_i, fill=rows / (n_s * n_i), reps=1, seed=seed,
                               sd={"subject": {"Intercept": 1.0}, "item": {"Intercept": 0.8}})


def priors():
    """The priors of every run: weak, the same for every method."""
    import bayeshlm as bh

    return {"fixed": bh.Normal(0.0, 100.0), "sigma": bh.HalfNormal(10.0), "sd": bh.HalfNormal(10.0)}


def time_em(df, formula, repeats):
    """Median seconds of ``hlm`` + ``fit_em`` (REML), and the fit."""
    import bayeshlm as bh

    bh.fit_em(bh.hlm(formula, df))  # load the kernels
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fit = bh.fit_em(bh.hlm(formula, df))
        seconds.append(time.perf_counter() - t0)
    return {"seconds": float(np.median(seconds)), "loglik": fit.loglik, "converged": fit.converged,
            "sd": fit.sd, "sigma": fit.sigma}


def time_lme4(csv, formula, repeats):
    """Median seconds of ``lmer`` (REML) and its log-likelihood; None when R or lme4 is missing."""
    lines = run_r(R_SCRIPT, csv, repeats, formula)
    if lines is None:
        return None
    out = {}
    for parts in lines:
        if parts and parts[0] == "REML":
            out.update(seconds=float(parts[1]), loglik=float(parts[2]))
        elif parts and parts[0] == "VERSION":
            out["version"] = " ".join(parts[1:])
    return out


def min_ess(post):
    """Min bulk ESS over every scalar of the posterior, group coefficients included."""
    import arviz as az

    ess = az.ess(post.posterior, method="bulk")
    return float(min(float(np.nanmin(ess[v].values)) for v in ess.data_vars))


def time_sampler(df, formula, method, draws, warmup, limit):
    """One run of ``bh.sample`` (4 chains), or the predicted time when it would exceed ``limit``."""
    import bayeshlm as bh

    model = bh.hlm(formula, df, priors=priors())
    bh.sample(model, method=method, draws=5, warmup=5, chains=1, seed=0, progress=False, log_likelihood=False)
    t0 = time.perf_counter()
    bh.sample(model, method=method, draws=20, warmup=20, chains=4, seed=0, progress=False, log_likelihood=False,
              keep_group_draws=False)
    per_sweep = (time.perf_counter() - t0) / 40
    predicted = per_sweep * (draws + warmup)
    if predicted > limit:
        return {"method": method, "run": False, "predicted_seconds": predicted}
    t0 = time.perf_counter()
    model = bh.hlm(formula, df, priors=priors())
    post = bh.sample(model, method=method, draws=draws, warmup=warmup, chains=4, seed=1, progress=False,
                     log_likelihood=False)
    end_to_end = time.perf_counter() - t0
    sampling = float(post.attrs["sampling_time"])
    ess = min_ess(post)
    n_par = int(sum(post.posterior[v].size // (4 * draws) for v in post.posterior.data_vars))
    return {"method": method, "run": True, "sampling_seconds": sampling, "end_to_end_seconds": end_to_end,
            "min_ess_bulk": ess, "min_ess_per_second": ess / sampling, "n_scalars": n_par}


def render(results, meta):
    """The Markdown tables of a run."""
    lines = ["# Crossed random effects: bayeshlm against lme4, and bayeshlm's samplers", "", meta, "",
             "## REML", "",
             "| design | rows | levels | bayeshlm s | lme4 s | lme4 / bayeshlm | logLik bayeshlm | logLik lme4 |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        lme4 = r["lme4"]
        ratio = f"{lme4['seconds'] / r['em']['seconds']:.1f}" if lme4 else "-"
        lines.append(f"| {name} | {r['rows']:,} | {r['levels']} | {r['em']['seconds']:.3f} | "
                     f"{lme4['seconds']:.3f} | {ratio} | {r['em']['loglik']:.4f} | {lme4['loglik']:.4f} |"
                     if lme4 else
                     f"| {name} | {r['rows']:,} | {r['levels']} | {r['em']['seconds']:.3f} | - | - | "
                     f"{r['em']['loglik']:.4f} | - |")
    lines += ["", "## Posterior (4 chains x draws after warm-up, every group coefficient counted)", "",
              "| design | method | sampling s | end to end s | min bulk ESS | min-ESS/s | scalars |",
              "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        for s in r["samplers"]:
            if s["run"]:
                lines.append(f"| {name} | {s['method']} | {s['sampling_seconds']:.2f} | "
                             f"{s['end_to_end_seconds']:.2f} | {s['min_ess_bulk']:.0f} | "
                             f"{s['min_ess_per_second']:.1f} | {s['n_scalars']:,} |")
            else:
                lines.append(f"| {name} | {s['method']} | not run: about {s['predicted_seconds']:.0f} s predicted "
                             "(a bound from 40 sweeps) | - | - | - | - |")
    lines.append("")
    return "\n".join(lines)


def rerun_reml(args):
    """Time the REML fits (bayeshlm and lme4) of ``args.designs`` again, keeping the rest of the results file."""
    path = args.out / "crossed_results.json"
    saved = json.loads(path.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.designs:
            source, formula = DESIGNS[name]
            df = load(source)
            row = saved["designs"][name]
            row["em"] = time_em(df, formula, args.repeats)
            if not args.no_lme4:
                csv = Path(tmp) / f"{name}.csv"
                df.to_csv(csv, index=False)
                lme4 = time_lme4(csv, formula, args.repeats)
                if lme4:
                    lme4.pop("version", None)
                row["lme4"] = lme4
            print(f"{name}: bayeshlm {row['em']['seconds']:.3f} s, lme4 "
                  f"{row['lme4']['seconds'] if row['lme4'] else float('nan'):.3f} s", flush=True)
    saved["meta"] += (f" The REML rows of {', '.join(args.designs)} were timed again on "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')} (`--reml-only`, {args.repeats} repeats).")
    path.write_text(json.dumps(saved, indent=2))
    text = render(saved["designs"], saved["meta"])
    (args.out / "CROSSED_RESULTS.md").write_text(text)
    print(text)
    return 0


def main(argv=None):
    """Run and write the outputs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--designs", nargs="+", default=["scotssec", "crossed_73k"], choices=sorted(DESIGNS))
    parser.add_argument("--large", action="store_true", help="also the 1,000,000-row design")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--limit", type=float, default=600.0, help="seconds a sampler run may be predicted to take")
    parser.add_argument("--no-lme4", action="store_true")
    parser.add_argument("--quick", action="store_true", help="a small synthetic design, short runs, no R")
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--reml-only", action="store_true",
                        help="time only the REML fits of --designs and update them in the existing results")
    args = parser.parse_args(argv)
    if args.reml_only:
        return rerun_reml(args)
    if args.quick:
        args.designs, args.repeats, args.draws, args.warmup, args.no_lme4 = ["crossed_small"], 1, 50, 50, True
    designs = list(args.designs) + (["crossed_1m"] if args.large else [])
    results = {}
    lme4_version = "not run"
    with tempfile.TemporaryDirectory() as tmp:
        for name in designs:
            source, formula = DESIGNS[name]
            df = load(source)
            import bayeshlm as bh

            model = bh.hlm(formula, df)
            levels = " x ".join(str(len(lab)) for lab in model.design.factor_labels)
            csv = Path(tmp) / f"{name}.csv"
            lme4 = None
            if not args.no_lme4:
                df.to_csv(csv, index=False)
                lme4 = time_lme4(csv, formula, args.repeats)
                lme4_version = lme4.pop("version", lme4_version) if lme4 else lme4_version
            row = {"rows": len(df), "levels": levels, "cells": model.n_groups, "formula": formula,
                   "em": time_em(df, formula, args.repeats), "lme4": lme4,
                   "samplers": [time_sampler(df, formula, m, args.draws, args.warmup, args.limit) for m in METHODS]}
            results[name] = row
            print(render({name: row}, ""), flush=True)
    meta = (f"Run {time.strftime('%Y-%m-%d %H:%M:%S')} on {platform.machine()} ({platform.processor() or 'cpu'}), "
            f"Python {platform.python_version()}; {lme4_version}. REML seconds are medians of {args.repeats} "
            "repeats in one session (bayeshlm's `hlm` + `fit_em` with loaded kernels, lme4's `lmer()` after a "
            f"warm-up fit). Samplers: 4 chains x {args.draws} draws after {args.warmup} warm-up sweeps, priors "
            "Normal(0, 100) on the fixed effects, HalfNormal(10) on sigma and the SDs.")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "crossed_results.json").write_text(json.dumps({"meta": meta, "designs": results}, indent=2))
    text = render(results, meta)
    (args.out / "CROSSED_RESULTS.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
