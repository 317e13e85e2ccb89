"""Cost of a sweep of a three-level model: flat in the number of rows, linear in the number of groups.

Data from :func:`bayeshlm.simulate_nested`: districts > schools (5 each) > classes (4 each),
``y ~ x * z + (1 | district) + (1 | district:school) + (x || district:school:class)``.
One chain, one thread, default sampler; the time per sweep is the sampling time over the
number of sweeps (warm-up included), median of 5 repeats taken in turn over all the
configurations, in one process whose kernels are compiled first. Two series:

* rows: the same groups (50 districts, 1,000 classes) with 5, 50 and 500 rows per class
  (5,000 to 500,000 rows). Only the one pass that builds the statistics sees the rows, so
  the sweep time must stay flat; the time of that pass (``hlm``) is shown beside it.
* groups: 5 rows per class and 25 to 200 districts (500 to 4,000 classes): the sweep time
  per group must stay flat (cost linear in the number of groups).

    python benchmarks/bench_levels.py            # writes benchmarks/levels_results.json, LEVELS_RESULTS.md
    python benchmarks/bench_levels.py --quick    # tiny sizes, one repeat
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _data(n_districts, rows, seed):
    import bayeshlm as bh

    return bh.simulate_nested(levels=(("district", n_districts), ("school", 5), ("class", 4)), rows=rows, seed=seed)


def _prepare(df):
    import bayeshlm as bh

    t = time.perf_counter()
    model = bh.hlm(df.attrs["formula"], df)
    return model, time.perf_counter() - t


def _sweep_seconds(model, sweeps, seed):
    import bayeshlm as bh

    post = bh.sample(model, chains=1, n_threads=1, warmup=sweeps // 2, draws=sweeps - sweeps // 2, seed=seed,
                     progress=False, log_likelihood=False, keep_group_draws=False)
    return float(post.attrs["sampling_time"]) / sweeps


def run(quick):
    """Both series; returns the results dict.

    The repeats go round all the configurations in turn, so that a slow spell of a shared
    machine falls on all of them alike; each configuration reports its median.
    """
    sweeps = 200 if quick else 2000
    repeats = 1 if quick else 5
    base = 4 if quick else 50
    rows_series = [5, 50] if quick else [5, 50, 500]
    group_series = [2, 4] if quick else [25, 50, 100, 200]
    configs = [("rows", {"rows_per_class": r}, _data(base, r, 1)) for r in rows_series]
    configs += [("groups", {"districts": n}, _data(n, 5, 2)) for n in group_series]
    _prepare(_data(3, 3, 0))  # the first formula evaluation pays for imports
    prepared = [_prepare(df) for _, _, df in configs]
    _sweep_seconds(prepared[0][0], 50, 0)  # compile the kernels
    times = [[] for _ in configs]
    for r in range(repeats):
        for i, (model, _) in enumerate(prepared):
            times[i].append(_sweep_seconds(model, sweeps, r))
    out = {"rows": [], "groups": [], "sweeps": sweeps, "repeats": repeats}
    for (series, label, _), (model, build), t in zip(configs, prepared, times, strict=True):
        n_groups = int(model.structure.node_ptr[-1])
        sec = float(np.median(t))
        out[series].append({**label, "n_rows": model.n_obs, "n_groups": n_groups, "n_classes": model.n_groups,
                            "build_seconds": build, "sweep_ms": 1e3 * sec, "sweep_ms_fastest": 1e3 * min(t),
                            "sweep_us_per_group": 1e6 * min(t) / n_groups, "sweep_ms_all": [1e3 * x for x in t]})
    return out


def table(results):
    """The two series as Markdown tables.

    Ratios use the fastest run of each configuration: on a shared machine the runs of one
    configuration spread by tens of percent, and the fastest is the closest to its own cost.
    """
    lines = ["Rows (same groups):", "",
             "| rows per class | rows | groups (all levels) | statistics pass (s) | sweep, median (ms) "
             "| sweep, fastest (ms) | fastest vs first |",
             "|---|---|---|---|---|---|---|"]
    first = results["rows"][0]["sweep_ms_fastest"]
    for r in results["rows"]:
        lines.append(f"| {r['rows_per_class']} | {r['n_rows']:,} | {r['n_groups']:,} | {r['build_seconds']:.3f} "
                     f"| {r['sweep_ms']:.3f} | {r['sweep_ms_fastest']:.3f} | {r['sweep_ms_fastest'] / first:.2f} |")
    lines += ["", "Groups (5 rows per class):", "",
              "| districts | classes | groups (all levels) | sweep, median (ms) | sweep, fastest (ms) "
              "| fastest per group (us) | vs first |",
              "|---|---|---|---|---|---|---|"]
    first = results["groups"][0]["sweep_us_per_group"]
    for r in results["groups"]:
        lines.append(f"| {r['districts']} | {r['n_classes']:,} | {r['n_groups']:,} | {r['sweep_ms']:.3f} "
                     f"| {r['sweep_ms_fastest']:.3f} | {r['sweep_us_per_group']:.3f} "
                     f"| {r['sweep_us_per_group'] / first:.2f} |")
    return "\n".join(lines)


def main(argv=None):
    """Run, print the tables, write the JSON and Markdown files; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat")
    parser.add_argument("--out", type=Path, default=HERE, help="directory of the JSON and Markdown outputs")
    args = parser.parse_args(argv)
    results = run(args.quick)
    text = table(results)
    print(text)
    meta = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
            "quick": args.quick, "date": time.strftime("%Y-%m-%d")}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "levels_results.json").write_text(json.dumps({**meta, **results}, indent=2))
    (args.out / "LEVELS_RESULTS.md").write_text(
        "# Sweep cost of a three-level model\n\n"
        "`python benchmarks/bench_levels.py` (one chain, one thread; median of 5 runs of 2,000 sweeps, the runs\n"
        "going round the configurations in turn).\n\n"
        + text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
