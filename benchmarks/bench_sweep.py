"""Seconds per sweep against rows and against groups: flat in rows, linear in groups.

Synthetic two-level data, ``y ~ x + (x | g)`` (bench_scale's generator). Rows grow from
1e4 to 1e7 over 1,000 groups; groups grow from 100 to 100,000 over 1e6 rows. Each model is
compiled with :func:`bayeshlm.hlm_stats`; one chain runs the default sampler (300 sweeps
after 100 warm-up sweeps, the best of three runs is kept). Writes ``sweep_results.json``,
``SWEEP_RESULTS.md`` and ``sweep_scaling.png``.

    python benchmarks/bench_sweep.py
    python benchmarks/bench_sweep.py --quick --out /tmp/sweep     # small sizes, to check it works
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_scale import FORMULA, synthetic  # noqa: E402


def sweep_ms(n_rows, n_groups, draws, warmup, repeats):
    """Best-of-``repeats`` milliseconds per sweep of one chain, and the model build seconds."""
    import bayeshlm as bh

    df = synthetic(n_rows, n_groups)
    t0 = time.perf_counter()
    model = bh.hlm_stats(FORMULA, df)
    build = time.perf_counter() - t0
    del df
    best = float("inf")
    for r in range(repeats):
        post = bh.sample(model, draws=draws, warmup=warmup, chains=1, seed=r, progress=False, keep_group_draws=False,
                         log_likelihood=False)
        best = min(best, float(post.attrs["sampling_time"]) / (draws + warmup))
    return {"rows": n_rows, "groups": model.n_groups, "sweep_ms": 1e3 * best, "model_seconds": build}


def plot(results, path):
    """Two log-log panels: ms per sweep against rows, and against groups."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), constrained_layout=True)
    for ax, key, other in ((axes[0], "by_rows", "rows"), (axes[1], "by_groups", "groups")):
        xs = [r[other] for r in results[key]]
        ys = [r["sweep_ms"] for r in results[key]]
        ax.loglog(xs, ys, "o-", label="bayeshlm")
        if other == "groups":
            ref = ys[-1] / xs[-1]
            ax.loglog(xs, [ref * x for x in xs], "--", color="grey", label="linear in groups")
        else:
            ax.axhline(ys[0], ls="--", color="grey", label="flat")
            ax.set_ylim(min(ys) / 10, max(ys) * 10)  # a decade each way: noise is not mistaken for a trend
        ax.set_xlabel(other)
        ax.set_ylabel("ms per sweep (one chain)")
        ax.legend(frameon=False)
    axes[0].set_title(f"{results['by_rows'][0]['groups']:,} groups")
    axes[1].set_title(f"{results['by_groups'][0]['rows']:,} rows")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    """Run both scans, write the JSON, the table and the plot."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args(argv)
    if args.quick:
        rows, groups, fixed_groups, fixed_rows, draws, warmup, repeats = [1e3, 1e4], [10, 100], 50, 1e4, 20, 10, 1
    else:
        rows, groups, fixed_groups, fixed_rows = [1e4, 1e5, 1e6, 1e7], [1e2, 1e3, 1e4, 1e5], 1000, 1e6
        draws, warmup, repeats = 300, 100, 3
    import bayeshlm as bh

    bh.sample(bh.hlm_stats(FORMULA, synthetic(500, 10)), draws=5, warmup=5, chains=1, progress=False,
              keep_group_draws=False, log_likelihood=False)  # kernels compiled or loaded
    results = {"by_rows": [], "by_groups": []}
    for n in rows:
        results["by_rows"].append(sweep_ms(int(n), fixed_groups, draws, warmup, repeats))
        print(results["by_rows"][-1], flush=True)
    for g in groups:
        results["by_groups"].append(sweep_ms(int(fixed_rows), int(g), draws, warmup, repeats))
        print(results["by_groups"][-1], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sweep_results.json").write_text(json.dumps(results, indent=2))
    plot(results, args.out / "sweep_scaling.png")
    lines = ["# Seconds per sweep against rows and groups", "",
             "`python benchmarks/bench_sweep.py`: one chain of the default sampler on `" + FORMULA + "`, "
             "best of three runs.", "", "![sweep scaling](sweep_scaling.png)", "",
             "| rows | groups | ms per sweep | model build (s) |", "|---|---|---|---|"]
    for r in results["by_rows"] + results["by_groups"]:
        lines.append(f"| {r['rows']:,} | {r['groups']:,} | {r['sweep_ms']:.3f} | {r['model_seconds']:.2f} |")
    (args.out / "SWEEP_RESULTS.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
