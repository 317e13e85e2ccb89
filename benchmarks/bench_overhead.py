"""What a user waits for beyond the sampler: ``bh.sample(model)`` with its defaults against the sampler's own time.

``y ~ x + (x | g)`` with 1,000 groups at 1e6 and 1e7 rows, 4 chains x 1000 draws after 1000
warm-up sweeps, every default kept (``log_likelihood="auto"``, which is by group here, all
group draws kept, the ArviZ result built). For each size: the whole call's seconds, the
sampler's own (``attrs["sampling_time"]``), the result's (``timings["results_seconds"]``),
and their ratio; the median of ``--repeats`` calls after one untimed call (compiled code
loaded). Target: the whole call at most 1.5x the sampler at both sizes.

    python benchmarks/bench_overhead.py                 # writes overhead_results.json, OVERHEAD_RESULTS.md
    python benchmarks/bench_overhead.py --quick         # 1e4 and 1e5 rows, to check it works
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

TARGET = 1.5


def measure(n_rows, n_groups, draws, warmup, repeats):
    """Seconds of the whole call and of its parts, median over ``repeats`` calls."""
    from bench_scale import FORMULA, synthetic  # the same data as the ten-million-row run

    import bayeshlm as bh

    model = bh.hlm(FORMULA, synthetic(n_rows, n_groups))
    bh.sample(model, draws=5, warmup=5, chains=1, seed=0, progress=False)  # compiled code loaded
    calls = []
    for r in range(repeats):
        t0 = time.perf_counter()
        post = bh.sample(model, draws=draws, warmup=warmup, chains=4, seed=r + 1, progress=False)
        total = time.perf_counter() - t0
        timings = json.loads(post.attrs["timings"])
        calls.append({"total": total, "sampler": float(post.attrs["sampling_time"]),
                      "results": timings["results_seconds"], "log_likelihood": post.attrs["log_likelihood"]})
        del post
    med = lambda k: float(np.median([c[k] for c in calls]))  # noqa: E731
    return {"rows": n_rows, "groups": n_groups, "total_seconds": med("total"), "sampler_seconds": med("sampler"),
            "results_seconds": med("results"), "ratio": float(np.median([c["total"] / c["sampler"] for c in calls])),
            "log_likelihood": calls[0]["log_likelihood"], "calls": calls}


def table(rows):
    """The Markdown table of the measured sizes."""
    lines = ["| rows | groups | bh.sample (s) | sampler (s) | result (s) | ratio | log-likelihood | "
             f"target {TARGET}x |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['rows']:,} | {r['groups']:,} | {r['total_seconds']:.2f} | {r['sampler_seconds']:.2f} | "
                     f"{r['results_seconds']:.2f} | {r['ratio']:.2f}x | {r['log_likelihood']} | "
                     f"{'met' if r['ratio'] <= TARGET else '**missed**'} |")
    return "\n".join(lines)


def main(argv=None):
    """Measure each size, print the table, write the JSON and Markdown files."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1e4 and 1e5 rows, 100 draws")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args(argv)
    sizes = [10_000, 100_000] if args.quick else [1_000_000, 10_000_000]
    draws = 100 if args.quick else 1000
    rows = []
    for n in sizes:
        rows.append(measure(n, 1000, draws, draws, args.repeats))
        print(rows[-1]["rows"], {k: v for k, v in rows[-1].items() if k != "calls"}, flush=True)
    text = table(rows)
    print(text)
    from bench_core import machine

    meta = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "draws": draws, "warmup": draws, "chains": 4,
            "repeats": args.repeats, "target_ratio": TARGET}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "overhead_results.json").write_text(json.dumps({**meta, "results": rows}, indent=2))
    header = (f"# bh.sample against its sampler\n\n`python benchmarks/bench_overhead.py` on {meta['date']}: "
              f"`y ~ x + (x | g)`, 4 chains x {draws} draws after {draws} warm-up sweeps, every default kept; "
              f"median of {args.repeats} calls.\n\n")
    (args.out / "OVERHEAD_RESULTS.md").write_text(header + text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
