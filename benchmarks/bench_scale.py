"""Ten million rows on one machine: data frame to results, wall time and peak memory.

Synthetic two-level data with a random intercept and slope, ``y ~ x + (x | g)``: 10,000,000
rows in 100,000 groups (100 rows each on average). Steps timed in one process whose kernels
are compiled first: ``hlm`` (formula, checks, the one pass that builds the statistics), the
REML fit, and ``sample`` with 4 chains x 1000 draws after 1000 warm-up sweeps keeping every
fixed effect and variance component at full length but not the 200,000 group coefficients
per draw (``keep_group_draws=False``; their EB estimates come from the REML fit). Peak memory
is the process's maximum resident size, against the size of the input data frame.

    python benchmarks/bench_scale.py                 # writes scale_results.json and SCALE_RESULTS.md
    python benchmarks/bench_scale.py --rows 1e6 --groups 1e4
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent


def synthetic(n_rows, n_groups, seed=0):
    """The data frame: ``y``, ``x`` and an integer group code ``g``."""
    rng = np.random.default_rng(seed)
    g = rng.integers(0, n_groups, size=n_rows)
    x = rng.normal(size=n_rows)
    u = rng.multivariate_normal([0.0, 0.0], [[1.0, 0.3], [0.3, 0.25]], size=n_groups)
    y = 1.0 + 0.5 * x + u[g, 0] + u[g, 1] * x + rng.normal(size=n_rows)
    return pd.DataFrame({"y": y, "x": x, "g": g})


def run(n_rows, n_groups, draws, warmup):
    """Time each step; returns the results dict."""
    import bayeshlm as bh

    small = synthetic(2000, 20, seed=1)
    bh.sample(bh.hlm("y ~ x + (x | g)", small), draws=10, warmup=10, chains=1, progress=False)  # compile
    bh.fit_em(bh.hlm("y ~ x + (x | g)", small))
    df = synthetic(n_rows, n_groups)
    input_mb = df.memory_usage(deep=True).sum() / 2**20
    base_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    model = bh.hlm("y ~ x + (x | g)", df)
    t1 = time.perf_counter()
    fit = bh.fit_em(model)
    t2 = time.perf_counter()
    post = bh.sample(model, draws=draws, warmup=warmup, chains=4, seed=1, progress=False, keep_group_draws=False,
                     log_likelihood=False)
    t3 = time.perf_counter()
    from bayeshlm.summary import diagnostics

    diag = diagnostics(post)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "rows": n_rows, "groups": model.n_groups, "draws": draws, "warmup": warmup, "chains": 4,
        "input_mb": input_mb, "peak_memory_mb": peak_mb, "memory_before_data_mb": base_mb,
        "hlm_seconds": t1 - t0, "fit_em_seconds": t2 - t1, "sample_seconds": t3 - t2,
        "frame_to_posterior_seconds": (t1 - t0) + (t3 - t2), "sweep_ms": 1e3 * float(post.attrs["sampling_time"])
        / ((draws + warmup) * 2),  # two threads run the four chains
        "min_ess_bulk": float(diag.get("min_ess_bulk", np.nan)), "max_rhat": float(diag.get("max_rhat", np.nan)),
        "reml_sd": fit.sd, "posterior_sd_means": {
            str(c): float(post.posterior["g_sd"].sel(g_coef=c).mean()) for c in post.posterior["g_coef"].values},
    }


def main(argv=None):
    """Run and write the JSON and Markdown files."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=float, default=1e7)
    parser.add_argument("--groups", type=float, default=1e5)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args(argv)
    r = run(int(args.rows), int(args.groups), args.draws, args.warmup)
    print(json.dumps(r, indent=2))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale_results.json").write_text(json.dumps(r, indent=2))
    text = (
        "# Ten million rows\n\n`python benchmarks/bench_scale.py` "
        f"({r['rows']:,} rows, {r['groups']:,} groups, `y ~ x + (x | g)`, 4 chains x {r['draws']} draws after "
        f"{r['warmup']} warm-up sweeps on 2 cores, group draws not kept):\n\n"
        "| step | seconds |\n|---|---|\n"
        f"| `hlm` (formula, checks, statistics) | {r['hlm_seconds']:.1f} |\n"
        f"| `fit_em` (REML) | {r['fit_em_seconds']:.1f} |\n"
        f"| `sample` | {r['sample_seconds']:.1f} |\n"
        f"| data frame to posterior (`hlm` + `sample`) | {r['frame_to_posterior_seconds']:.1f} |\n\n"
        f"Sweep: {r['sweep_ms']:.1f} ms per chain. Input data frame {r['input_mb']:.0f} MB; peak resident memory "
        f"{r['peak_memory_mb']:.0f} MB ({r['peak_memory_mb'] / r['input_mb']:.1f}x the input; the process held "
        f"{r['memory_before_data_mb']:.0f} MB before the data). Min bulk ESS {r['min_ess_bulk']:.0f}, max R-hat "
        f"{r['max_rhat']:.3f}.\n"
    )
    (args.out / "SCALE_RESULTS.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
