"""Ten million rows on one machine: data frame or Parquet to results, wall time and peak memory.

Synthetic two-level data with a random intercept and slope, ``y ~ x + (x | g)``: 10,000,000
rows in 100,000 groups (100 rows each on average). Each path runs in its own fresh
interpreter whose kernels are compiled first (from the numba cache) and whose data are
loaded before the clock starts:

* ``frame``: a pandas data frame in memory -> :func:`bayeshlm.hlm_stats` (statistics by
  chunks of a million rows; the rows are not copied into a design) -> ``sample``;
* ``frame_hlm``: the same with :func:`bayeshlm.hlm`, which keeps the full design
  (needed for a pointwise log-likelihood; shown for its memory);
* ``parquet``: eight Parquet files -> ``hlm_stats`` through Dask (threads; the data are
  never in memory at once) -> ``sample``.

``sample`` draws 4 chains x 1000 draws after ``--warmup`` sweeps (by default 1000 sweeps
with ``mh_steps=6``, the sampler's own defaults), keeping every fixed
effect and variance component at full length, the full-length draws of the first 100
groups (``keep_group_draws=100``) and the running posterior mean and SD of all 200,000
group coefficients (``group_moments=True``). Memory: the kernel's peak resident size
(VmHWM, reset after the data are loaded) minus the resident size before the data, against
the size of the data frame in memory. Buffers that the Parquet reader has freed but kept in
its pool are handed back before the clock starts.

    python benchmarks/bench_scale.py                 # writes scale_results.json and SCALE_RESULTS.md
    python benchmarks/bench_scale.py --rows 1e6 --groups 1e4 --out /tmp/scale
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
FORMULA = "y ~ x + (x | g)"


def synthetic(n_rows, n_groups, seed=0):
    """The data frame: ``y``, ``x`` and an integer group code ``g``."""
    rng = np.random.default_rng(seed)
    g = rng.integers(0, n_groups, size=n_rows)
    x = rng.normal(size=n_rows)
    u = rng.multivariate_normal([0.0, 0.0], [[1.0, 0.3], [0.3, 0.25]], size=n_groups)
    y = 1.0 + 0.5 * x + u[g, 0] + u[g, 1] * x + rng.normal(size=n_rows)
    return pd.DataFrame({"y": y, "x": x, "g": g})


def _status(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024  # kB -> MB
    return float("nan")


def _reset_peak():
    """Reset the peak resident size (VmHWM) of this process (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def one_path(path, data_dir, draws, warmup, mh_steps):
    """Run one path in this process; returns its measurements."""
    import bayeshlm as bh
    from bayeshlm.summary import diagnostics

    small = synthetic(2000, 20, seed=1)
    bh.sample(bh.hlm_stats(FORMULA, small), draws=10, warmup=10, chains=1, progress=False, keep_group_draws=2,
              group_moments=True)  # compile (or load from the cache)
    bh.fit_em(bh.hlm(FORMULA, small))
    before_data = _status("VmRSS")
    files = sorted(Path(data_dir).glob("*.parquet"))
    df = None
    if path != "parquet":
        df = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    input_mb = pd.read_parquet(files[0]).memory_usage(deep=True).sum() / 2**20 * len(files)
    gc.collect()
    # the Parquet reader keeps the buffers it has freed in its own pool: hand them back, so
    # that they do not count against the model
    import pyarrow

    pyarrow.default_memory_pool().release_unused()
    with_data = _status("VmRSS")
    reset = _reset_peak()
    t0 = time.perf_counter()
    if path == "frame":
        model = bh.hlm_stats(FORMULA, df)
    elif path == "frame_hlm":
        model = bh.hlm(FORMULA, df)
    else:
        import dask

        with dask.config.set(scheduler="threads"):
            model = bh.hlm_stats(FORMULA, [str(f) for f in files])
    t1 = time.perf_counter()
    fit = bh.fit_em(model)
    t2 = time.perf_counter()
    post = bh.sample(model, draws=draws, warmup=warmup, chains=4, seed=1, progress=False, keep_group_draws=100,
                     group_moments=True, log_likelihood=False, mh_steps=mh_steps)
    t3 = time.perf_counter()
    diag = diagnostics(post)
    peak = _status("VmHWM") if reset else float("nan")
    n_sweeps = draws + warmup
    return {
        "path": path, "rows": model.n_obs, "groups": model.n_groups, "input_mb": input_mb,
        "rss_before_data_mb": before_data, "rss_with_data_mb": with_data, "peak_rss_mb": peak,
        "memory_over_baseline_mb": peak - before_data,
        "memory_ratio": (peak - before_data) / input_mb,
        "model_seconds": t1 - t0, "fit_em_seconds": t2 - t1, "sample_seconds": t3 - t2,
        "end_to_end_seconds": (t1 - t0) + (t3 - t2),
        "sweep_ms": 1e3 * float(post.attrs["sampling_time"]) / (n_sweeps * 2),  # two threads, four chains
        "min_ess_bulk": float(diag.get("min_ess_bulk", np.nan)),
        "min_ess_tail": float(diag.get("min_ess_tail", np.nan)),
        "max_rhat": float(diag.get("max_rhat", np.nan)),
        "reml_sd": fit.sd,
        "posterior_sd_means": {str(c): float(post.posterior["g_sd"].sel(g_coef=c).mean())
                               for c in post.posterior["g_coef"].values},
    }


def run(n_rows, n_groups, draws, warmup, mh_steps, paths):
    """Write the data to Parquet once, then run each path in a fresh interpreter."""
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        df = synthetic(n_rows, n_groups)
        bounds = np.linspace(0, n_rows, 9).astype(int)
        for k in range(8):
            df.iloc[bounds[k]:bounds[k + 1]].to_parquet(Path(tmp) / f"part-{k}.parquet")
        del df
        for path in paths:
            cmd = [sys.executable, __file__, "--one", path, "--data", tmp, "--draws", str(draws),
                   "--warmup", str(warmup), "--mh-steps", str(mh_steps)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if out.returncode:
                raise RuntimeError(f"path {path} failed:\n{out.stderr[-3000:]}")
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(results[-1]), flush=True)
    return results


def render(results, settings):
    """SCALE_RESULTS.md."""
    r0 = results[0]
    rows = [
        "| path | model (s) | `fit_em` (s) | `sample` (s) | end to end (s) | peak over baseline (MB) | x input "
        "| min bulk ESS | max R-hat |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    names = {"frame": "data frame -> `hlm_stats`", "frame_hlm": "data frame -> `hlm` (keeps the design)",
             "parquet": "Parquet (8 files) -> `hlm_stats` on Dask"}
    for r in results:
        rows.append(
            f"| {names[r['path']]} | {r['model_seconds']:.1f} | {r['fit_em_seconds']:.1f} | "
            f"{r['sample_seconds']:.1f} | "
            f"{r['end_to_end_seconds']:.1f} | {r['memory_over_baseline_mb']:.0f} | {r['memory_ratio']:.2f} | "
            f"{r['min_ess_bulk']:.0f} | {r['max_rhat']:.3f} |"
        )
    return (
        "# Ten million rows\n\n"
        f"`python benchmarks/bench_scale.py` ({r0['rows']:,} rows, {r0['groups']:,} groups, `{FORMULA}`, 4 chains x "
        f"{settings['draws']} draws after {settings['warmup']} warm-up sweeps, `mh_steps={settings['mh_steps']}`, "
        "on 2 cores; each path in a fresh interpreter with its kernels compiled). End to end = model + `sample` "
        "(the REML fit is timed on its own). Memory: peak resident size during the run minus the resident "
        f"size before the data were loaded ({r0['rss_before_data_mb']:.0f} MB of interpreter, libraries and "
        f"compiled kernels), against the {r0['input_mb']:.0f} MB of the data frame.\n\n"
        + "\n".join(rows) + "\n\n"
        f"Sweep: {r0['sweep_ms']:.1f} ms per chain. Kept: all fixed effects and variance components, the draws "
        "of 100 groups, the running mean and SD of all group coefficients. REML SDs "
        f"{', '.join(f'{k} {v:.3f}' for k, v in r0['reml_sd'].items())}; posterior means "
        f"{', '.join(f'{k} {v:.3f}' for k, v in r0['posterior_sd_means'].items())} (truth 1 and 0.5).\n"
    )


def main(argv=None):
    """Run and write the JSON and Markdown files."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=float, default=1e7)
    parser.add_argument("--groups", type=float, default=1e5)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=1000, help="warm-up sweeps (the sampler's default)")
    parser.add_argument("--mh-steps", type=int, default=6, help="MH steps per sweep (the sampler's default)")
    parser.add_argument("--paths", default="frame,parquet,frame_hlm")
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(one_path(args.one, args.data, args.draws, args.warmup, args.mh_steps)))
        return 0
    settings = {"draws": args.draws, "warmup": args.warmup, "mh_steps": args.mh_steps}
    results = run(int(args.rows), int(args.groups), args.draws, args.warmup, args.mh_steps, args.paths.split(","))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale_results.json").write_text(json.dumps({"settings": settings, "results": results,
                                                             "cpu_count": os.cpu_count()}, indent=2))
    (args.out / "SCALE_RESULTS.md").write_text(render(results, settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
