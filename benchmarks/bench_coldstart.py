"""Cold start: a fresh interpreter to a first result, with an empty and with a warm numba cache.

Each measurement is a new ``python`` process, timed from its start to the end of the job:
``import bayeshlm``, compile sleepstudy's ``reaction ~ days + (days | subject)``, then
either ``sample`` (4 chains x 1000 draws after 1000 warm-up sweeps) or ``fit_em``. The
numba cache lives in a fresh directory (``NUMBA_CACHE_DIR``) for each sequence (sample, then
fit_em): the first job of a sequence compiles the kernels and writes them there, later jobs
load them. A second model (HSB, one random
coefficient, four fixed effects) then runs on the same cache to show that the kernels are
compiled once for all models. On a shared machine one run moves by several seconds, so the
sequences are repeated (``--repeats``, 3 by default) and each case reports its median, with
the fastest and slowest run. Writes ``coldstart_results.json`` and ``COLDSTART_RESULTS.md``.

    python benchmarks/bench_coldstart.py
    python benchmarks/bench_coldstart.py --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

JOBS = {
    "sample": ("sleepstudy", "reaction ~ days + (days | subject)",
               "bh.sample(model, draws=1000, warmup=1000, chains=4, seed=1, progress=False)"),
    "fit_em": ("sleepstudy", "reaction ~ days + (days | subject)", "bh.fit_em(model)"),
    "sample_other_model": ("hsb", "mathach ~ ses * sector + meanses + (1 | school)",
                           "bh.sample(model, draws=1000, warmup=1000, chains=4, seed=1, progress=False)"),
}


def timed(job, cache_dir):
    """Seconds from launching a fresh interpreter to the end of ``job``, and its import seconds."""
    data, formula, call = JOBS[job]
    code = ("import time; t0 = time.perf_counter(); import bayeshlm as bh; t1 = time.perf_counter(); "
            f"model = bh.hlm({formula!r}, bh.load_dataset({data!r})); {call}; "
            "print(t1 - t0)")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir)}
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return time.perf_counter() - start, float(out.stdout.split()[-1])


def main(argv=None):
    """Run the sequence on a fresh cache; write JSON and markdown."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each sequence (median reported)")
    args = parser.parse_args(argv)
    runs = {}
    sequences = ((("no cache: sample", "sample"), ("cached: sample", "sample"),
                  ("cached: sample, another model", "sample_other_model")),
                 (("no cache: fit_em", "fit_em"), ("cached: fit_em", "fit_em")))
    for _ in range(args.repeats):
        for sequence in sequences:
            with tempfile.TemporaryDirectory() as cache:  # each sequence starts from an empty cache
                for label, job in sequence:
                    seconds, import_seconds = timed(job, cache)
                    runs.setdefault((label, job), []).append((seconds, import_seconds))
                    print({"case": label, "seconds": seconds, "import_seconds": import_seconds}, flush=True)
    rows = []
    for (label, job), times in runs.items():
        seconds = [t for t, _ in times]
        rows.append({"case": label, "job": job, "seconds": statistics.median(seconds),
                     "import_seconds": statistics.median(i for _, i in times),
                     "min_seconds": min(seconds), "max_seconds": max(seconds), "runs": len(times)})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "coldstart_results.json").write_text(json.dumps(rows, indent=2))
    lines = ["# Cold start", "", "`python benchmarks/bench_coldstart.py`: a new interpreter per line, timed from "
             "its launch to the end of the job; `sample` and `fit_em` each start from an empty numba cache. "
             f"Median of {args.repeats} runs, with the fastest and slowest.", "",
             "| case | seconds (median) | fastest | slowest | of which `import bayeshlm` |", "|---|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['seconds']:.1f} | {r['min_seconds']:.1f} | {r['max_seconds']:.1f} | "
              f"{r['import_seconds']:.1f} |" for r in rows]
    (args.out / "COLDSTART_RESULTS.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
