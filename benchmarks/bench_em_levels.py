"""Time of the EB/ML fit of a three-level model against lme4, side by side on the same data.

A longitudinal study of children in schools: each child is measured on 3 to 6 occasions
(``time`` = 0, 1, ...), children are nested in schools, and both the intercept and the
slope of time vary at random, correlated, over children and over schools:

    score ~ time * (female + ses) + (time | school) + (time | school:child)

(``female`` a child-level and ``ses`` a school-level predictor, with their cross-level
interactions with time). The data are simulated here with known parameters, written to a
CSV file and fitted by bayeshlm (``hlm`` + ``fit_em``, in a process with loaded kernels)
and by lme4 (``lmer``, in R, after one warm-up fit), each the median of repeats, by REML and
by ML; the log-likelihoods are printed beside each other.

    python benchmarks/bench_em_levels.py          # writes em_levels_results.json and EM_LEVELS_RESULTS.md
    python benchmarks/bench_em_levels.py --quick  # small data, one repeat
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
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from rscript import run_r  # noqa: E402

FORMULA = "score ~ time * (female + ses) + (time | school) + (time | school:child)"

R_SCRIPT = r"""
suppressMessages(library(lme4))
args <- commandArgs(trailingOnly = TRUE)
df <- read.csv(args[1])
repeats <- as.integer(args[2])
df$school <- factor(df$school)
df$child <- factor(df$child)
f <- score ~ time * (female + ses) + (time | school) + (time | school:child)
m <- lmer(f, df, REML = TRUE)  # warm-up: loads and compiles what the first call needs
for (reml in c(TRUE, FALSE)) {
  ts <- numeric(repeats)
  for (i in seq_len(repeats)) ts[i] <- system.time(m <- lmer(f, df, REML = reml))[["elapsed"]]
  cat(sprintf("%s %.6f %.6f %d\n", if (reml) "REML" else "ML", median(ts), as.numeric(logLik(m)),
              length(m@optinfo$conv$lme4$messages)))
}
cat(sprintf("VERSION %s %s\n", R.version$version.string, packageVersion("lme4")))
"""


def longitudinal(n_schools=100, children=(15, 25), occasions=(3, 6), seed=0):
    """Scores of children measured repeatedly, children in schools (see the module docstring).

    Intercept and time slope vary over schools (SDs 2 and 0.5, correlation 0.3) and over
    children (SDs 3 and 1, correlation 0.2); level-1 SD 2.5. About
    ``n_schools * mean(children)`` children.
    """
    rng = np.random.default_rng(seed)
    school_cov = np.array([[4.0, 0.3], [0.3, 0.25]])
    child_cov = np.array([[9.0, 0.6], [0.6, 1.0]])
    u_school = rng.multivariate_normal([0.0, 0.0], school_cov, size=n_schools)
    ses = rng.normal(size=n_schools)
    parts = []
    for s in range(n_schools):
        n_c = int(rng.integers(children[0], children[1] + 1))
        u_child = rng.multivariate_normal([0.0, 0.0], child_cov, size=n_c)
        female = rng.integers(0, 2, size=n_c)
        k = rng.integers(occasions[0], occasions[1] + 1, size=n_c)
        child = np.repeat(np.arange(n_c), k)
        t = np.concatenate([np.arange(m) for m in k]).astype(float)
        y = (50.0 + 3.0 * t + 1.5 * female[child] + 2.0 * ses[s] + 0.4 * t * ses[s]
             + u_school[s, 0] + u_school[s, 1] * t + u_child[child, 0] + u_child[child, 1] * t
             + rng.normal(0.0, 2.5, size=t.size))
        parts.append(pd.DataFrame({"score": y, "time": t, "female": female[child], "ses": ses[s],
                                   "school": f"s{s}", "child": [f"c{c}" for c in child]}))
    return pd.concat(parts, ignore_index=True)


def time_bayeshlm(df, repeats):
    """Median seconds of ``hlm`` + ``fit_em`` by REML and ML, and the fits' log-likelihoods."""
    import bayeshlm as bh

    bh.fit_em(bh.hlm(FORMULA, df), "reml")  # compile (or load) the kernels
    bh.fit_em(bh.hlm(FORMULA, df), "ml")
    out = {}
    for method in ("reml", "ml"):
        seconds = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fit = bh.fit_em(bh.hlm(FORMULA, df), method)
            seconds.append(time.perf_counter() - t0)
        out[method.upper()] = {"seconds": float(np.median(seconds)), "loglik": fit.loglik,
                               "converged": fit.converged, "n_evaluations": fit.n_evaluations}
    return out


def time_lme4(csv, repeats):
    """Median seconds of ``lmer`` by REML and ML, from Rscript; None when R or lme4 is missing."""
    lines = run_r(R_SCRIPT, csv, repeats)
    if lines is None:
        return None
    out = {}
    for parts in lines:
        if parts and parts[0] in ("REML", "ML"):
            out[parts[0]] = {"seconds": float(parts[1]), "loglik": float(parts[2]), "warnings": int(parts[3])}
        elif parts and parts[0] == "VERSION":
            out["version"] = " ".join(parts[1:])
    return out


def render(results, meta):
    """The Markdown table of a run."""
    lines = ["# EB/ML fit of a three-level model: bayeshlm against lme4", "", meta, "",
             "| data | method | bayeshlm s | lme4 s | lme4 / bayeshlm | logLik bayeshlm | logLik lme4 |",
             "|---|---|---|---|---|---|---|"]
    for row in results:
        label = f"{row['children']:,} children in {row['schools']} schools, {row['rows']:,} rows"
        for method in ("REML", "ML"):
            ours = row["bayeshlm"][method]
            theirs = (row["lme4"] or {}).get(method)
            lme4_s = f"{theirs['seconds']:.3f}" if theirs else "-"
            ratio = f"{theirs['seconds'] / ours['seconds']:.1f}" if theirs else "-"
            ll = f"{theirs['loglik']:.4f}" if theirs else "-"
            lines.append(f"| {label} | {method} | {ours['seconds']:.3f} | {lme4_s} | {ratio} | "
                         f"{ours['loglik']:.4f} | {ll} |")
    lines.append("")
    return "\n".join(lines)


def main(argv=None):
    """Run and write the outputs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--schools", type=int, nargs="+", default=[100, 200],
                        help="numbers of schools (about 20 children each)")
    parser.add_argument("--no-lme4", action="store_true", help="time bayeshlm only")
    parser.add_argument("--quick", action="store_true", help="small data, one repeat")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.schools = 1, [10]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n_schools in args.schools:
            df = longitudinal(n_schools=n_schools, seed=n_schools)
            csv = Path(tmp) / f"long_{n_schools}.csv"
            df.to_csv(csv, index=False)
            row = {"schools": n_schools, "children": int(df.groupby(["school", "child"]).ngroups),
                   "rows": len(df), "bayeshlm": time_bayeshlm(df, args.repeats),
                   "lme4": None if args.no_lme4 else time_lme4(csv, args.repeats)}
            results.append(row)
            print(render([row], ""), flush=True)
    lme4_version = next((r["lme4"]["version"] for r in results if r["lme4"]), "not run")
    meta = (f"Run {time.strftime('%Y-%m-%d %H:%M:%S')} on {platform.machine()}, Python "
            f"{platform.python_version()}; {lme4_version}. Seconds are medians of {args.repeats} repeats, both in "
            "one session on one machine: bayeshlm's `hlm` + `fit_em` in a process with loaded kernels, lme4's "
            "`lmer()` after one warm-up fit. Formula: `" + FORMULA + "`.")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "em_levels_results.json").write_text(json.dumps({"meta": meta, "runs": results}, indent=2))
    text = render(results, meta)
    (args.out / "EM_LEVELS_RESULTS.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
