"""Maximum-likelihood fits of non-Gaussian models: bayeshlm's ``fit_em`` against lme4's ``glmer``, in one run.

For each bundled data set with a non-Gaussian response, the classic model is fitted by
the Laplace approximation (``nAGQ = 1``) and, where there is one grouping factor with one
random coefficient, by 25-point adaptive Gauss-Hermite quadrature:

* ``cbpp``: ``cbind(incidence, size - incidence) ~ period + (1 | herd)``, binomial;
* ``contraception``: ``use ~ age + I(age^2) + urban + livch + (1 | district)``, Bernoulli;
* ``grouseticks``: ``ticks ~ year + cheight + (1 | location/brood)``, Poisson.

Seconds are medians of ``--repeats`` fits after one warm-up fit, for bayeshlm
``bh.hlm`` + ``bh.fit_em`` (compiled kernels loaded), for lme4 the ``glmer`` call. The
log-likelihoods are compared on one basis: lme4's ``nAGQ > 1`` value leaves out the
saturated model's log-likelihood, which the R script adds back. Writes
``glmm_results.json`` and ``GLMM_RESULTS.md``.

Run: ``python benchmarks/bench_glmm.py`` (``--no-lme4`` without R).
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

MODELS = {
    "cbpp": ("cbind(incidence, size - incidence) ~ C(period) + (1 | herd)", "binomial",
             "cbind(incidence, size - incidence) ~ factor(period) + (1 | herd)", (1, 25)),
    "contraception": ("use ~ age + I(age**2) + urban + livch + (1 | district)", "bernoulli",
                      "use ~ age + I(age^2) + urban + livch + (1 | district)", (1, 25)),
    "grouseticks": ("ticks ~ C(year) + cheight + (1 | location/brood)", "poisson",
                    "ticks ~ factor(year) + cheight + (1 | location/brood)", (1,)),
}
R_FAMILY = {"binomial": "binomial", "bernoulli": "binomial", "poisson": "poisson"}

R_SCRIPT = r"""
suppressMessages(library(lme4))
args <- commandArgs(trailingOnly = TRUE)
df <- read.csv(args[1], stringsAsFactors = TRUE)
repeats <- as.integer(args[2])
f <- as.formula(args[3])
fam <- get(args[4])()
q <- as.integer(args[5])
if ("livch" %in% names(df)) df$livch <- factor(df$livch, levels = c("0", "1", "2", "3+"))
for (v in c("district", "herd", "location", "brood")) if (v %in% names(df)) df[[v]] <- factor(df[[v]])
m <- suppressWarnings(glmer(f, df, family = fam, nAGQ = q))  # warm-up
ts <- numeric(repeats)
for (i in seq_len(repeats)) {
  ts[i] <- system.time(m <- suppressWarnings(glmer(f, df, family = fam, nAGQ = q)))[["elapsed"]]
}
ll <- as.numeric(logLik(m))
if (q > 1) {  # lme4 leaves the saturated log-likelihood out of its nAGQ > 1 value
  y <- model.response(model.frame(m)); w <- weights(m)
  if (is.matrix(y)) {
    n <- rowSums(y); s <- y[, 1]
  } else if (fam$family == "binomial") {
    n <- w; s <- y * w
  } else {
    n <- NULL; s <- y
  }
  if (fam$family == "binomial") {
    ll <- ll + sum(dbinom(s, n, s / n, log = TRUE))
  } else {
    ll <- ll + sum(dpois(s, s, log = TRUE))
  }
}
cat(sprintf("FIT %.6f %.10f\n", median(ts), ll))
cat(sprintf("VERSION %s %s\n", R.version$version.string, packageVersion("lme4")))
"""


def data(name):
    """A bundled data set, with grouseticks' centred height."""
    import bayeshlm as bh

    df = bh.load_dataset(name)
    if name == "grouseticks":
        df["cheight"] = df["height"] - df["height"].mean()
    return df


def time_bayeshlm(df, formula, family, n_agq, repeats):
    """Median seconds of ``hlm`` + ``fit_em`` and the fit."""
    import bayeshlm as bh

    bh.fit_em(bh.hlm(formula, df, family=family), n_agq=n_agq)  # load the kernels
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fit = bh.fit_em(bh.hlm(formula, df, family=family), n_agq=n_agq)
        seconds.append(time.perf_counter() - t0)
    return {"seconds": float(np.median(seconds)), "loglik": fit.loglik, "converged": fit.converged,
            "evaluations": fit.n_evaluations, "fixed": fit.fixed, "sd": fit.sd}


def time_lme4(csv, formula, family, n_agq, repeats):
    """Median seconds of ``glmer`` and its log-likelihood (saturated part added for nAGQ > 1); None without R."""
    lines = run_r(R_SCRIPT, csv, repeats, formula, R_FAMILY[family], n_agq)
    if lines is None:
        return None
    out = {}
    for parts in lines:
        if parts and parts[0] == "FIT":
            out.update(seconds=float(parts[1]), loglik=float(parts[2]))
        elif parts and parts[0] == "VERSION":
            out["version"] = " ".join(parts[1:])
    return out or None


def render(rows, meta):
    """The results table in Markdown."""
    lines = ["# Non-Gaussian models: maximum-likelihood fits against glmer", "", meta, "",
             "| data set | method | bayeshlm s | glmer s | glmer / bayeshlm | logLik bayeshlm | logLik glmer | "
             "evaluations |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lme4 = r["lme4"]
        ratio = f"{lme4['seconds'] / r['bayeshlm']['seconds']:.1f}" if lme4 else "-"
        lines.append(f"| {r['data']} | {r['method']} | {r['bayeshlm']['seconds']:.3f} | "
                     f"{lme4['seconds'] if lme4 else float('nan'):.3f} | {ratio} | {r['bayeshlm']['loglik']:.6f} | "
                     f"{lme4['loglik'] if lme4 else float('nan'):.6f} | {r['bayeshlm']['evaluations']} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    """Run and write the outputs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-lme4", action="store_true")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args(argv)
    rows, version = [], "lme4 not run"
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.data:
            formula, family, r_formula, agqs = MODELS[name]
            df = data(name)
            csv = Path(tmp) / f"{name}.csv"
            df.to_csv(csv, index=False)
            for q in agqs:
                row = {"data": name, "method": "Laplace" if q == 1 else f"{q}-point quadrature", "n_agq": q,
                       "bayeshlm": time_bayeshlm(df, formula, family, q, args.repeats), "lme4": None}
                if not args.no_lme4:
                    row["lme4"] = time_lme4(csv, r_formula, family, q, args.repeats)
                    if row["lme4"]:
                        version = row["lme4"].pop("version", version)
                rows.append(row)
                print(render([row], "").splitlines()[-1], flush=True)
    meta = (f"Run {time.strftime('%Y-%m-%d %H:%M:%S')} on {platform.machine()}, Python {platform.python_version()}; "
            f"{version}. Seconds are medians of {args.repeats} fits after a warm-up fit, in one run "
            "(`python benchmarks/bench_glmm.py`); the log-likelihoods include every normalising constant.")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "glmm_results.json").write_text(json.dumps({"meta": meta, "fits": rows}, indent=2))
    text = render(rows, meta)
    (args.out / "GLMM_RESULTS.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
