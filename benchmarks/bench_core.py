"""Speed and mixing of bayeshlm on the bundled reference data.

For each model: 4 chains x 1000 kept draws after 1000 warm-up sweeps (settable), repeated
with different seeds; reports per run the sampling seconds, the minimum bulk and tail ESS
over every scalar in the posterior (fixed effects, sigma, group SDs and correlations and
every group coefficient), min-ESS per second and the maximum R-hat, and the median over
the repeats. Also measures, in fresh interpreters, the time from start-up to the first
HSB result with an empty kernel cache (cold: compilation included) and with a warm one,
and the time from data frame to DataTree inside a process whose kernels are loaded.

Writes ``benchmarks/results.json`` and ``benchmarks/CORE_RESULTS.md`` (or ``--out``).

    python benchmarks/bench_core.py            # full run
    python benchmarks/bench_core.py --quick    # tiny sizes, to check that it works
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

MODELS = {
    "sleepstudy": ("sleepstudy", "reaction ~ days + (days | subject)", {}),
    "hsb": ("hsb", "mathach ~ ses_centered * (sector + meanses) + (ses_centered | school)", {}),
    "radon": ("radon", "log_radon ~ floor + (1 | county)", {}),
    "eight_schools": ("eight_schools", "y ~ 1 + (1 | school)", {"known_sd": "sigma"}),
}

TARGETS = {"hsb": 5000.0, "sleepstudy": 20000.0, "radon": 20000.0}

FIRST_FIT = """
import time
t0 = time.perf_counter()
import bayeshlm as bh
t1 = time.perf_counter()
data = bh.load_dataset("hsb")
t2 = time.perf_counter()
model = bh.hlm("mathach ~ ses_centered * (sector + meanses) + (ses_centered | school)", data)
post = bh.sample(model, draws={draws}, warmup={warmup}, chains=4, seed=1, progress=False)
t3 = time.perf_counter()
print(t1 - t0, t3 - t2)
"""


def machine():
    """A description of this machine."""
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["processor"] = line.split(":", 1)[1].strip()
                break
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
        info["memory_gib"] = round(int(mem) / 2**20, 1)
    except OSError:
        pass
    import numba
    import numpy

    import bayeshlm

    info["versions"] = {"bayeshlm": bayeshlm.__version__, "numpy": numpy.__version__, "numba": numba.__version__}
    return info


def first_fit_times(draws, warmup):
    """Seconds to import and to fit HSB in a fresh interpreter, with a cold then a warm cache."""
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        for label in ("cold", "cached"):
            t = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-c", FIRST_FIT.format(draws=draws, warmup=warmup)],
                env=env, capture_output=True, text=True, check=True,
            )
            wall = time.perf_counter() - t
            import_s, fit_s = (float(x) for x in proc.stdout.split())
            out[label] = {"process_seconds": wall, "import_seconds": import_s, "fit_seconds": fit_s}
    return out


def run_model(name, draws, warmup, chains, seeds):
    """Fit one model once per seed; return the per-run records."""
    import bayeshlm as bh
    from bayeshlm.summary import diagnostics

    dataset, formula, kwargs = MODELS[name]
    data = bh.load_dataset(dataset)
    # one untimed short fit first: loads the cached kernels and starts the thread pool, so the
    # timed runs measure sampling, not start-up (reported separately by first_fit_times)
    bh.sample(bh.hlm(formula, data, **kwargs), draws=20, warmup=20, chains=chains, seed=0, progress=False)
    runs = []
    for seed in seeds:
        t = time.perf_counter()
        model = bh.hlm(formula, data, **kwargs)
        post = bh.sample(model, draws=draws, warmup=warmup, chains=chains, seed=seed, progress=False)
        total = time.perf_counter() - t
        diag = diagnostics(post)
        n_params = sum(
            int(np.prod([post.posterior[v].sizes[d] for d in post.posterior[v].dims if d not in ("chain", "draw")]))
            for v in post.posterior.data_vars
        )
        runs.append({
            "seed": seed,
            "sampling_seconds": diag["sampling_seconds"],
            "frame_to_datatree_seconds": total,
            "min_ess_bulk": diag["min_ess_bulk"],
            "min_ess_bulk_parameter": diag["argmin_ess_bulk"],
            "min_ess_tail": diag["min_ess_tail"],
            "max_rhat": diag["max_rhat"],
            "min_ess_per_second": diag["min_ess_per_second"],
            "n_parameters": n_params,
        })
    med = {k: float(np.median([r[k] for r in runs])) for k in
           ("sampling_seconds", "frame_to_datatree_seconds", "min_ess_bulk", "min_ess_tail", "max_rhat",
            "min_ess_per_second")}
    med["worst_max_rhat"] = float(max(r["max_rhat"] for r in runs))
    return {"formula": formula, "dataset": dataset, "options": {k: str(v) for k, v in kwargs.items()},
            "runs": runs, "median": med, "target_min_ess_per_second": TARGETS.get(name)}


def render(results):
    """Markdown table of a results dict."""
    lines = [
        "# bayeshlm core benchmark",
        "",
        f"Run {results['date']}; {results['settings']['chains']} chains x {results['settings']['draws']} draws "
        f"after {results['settings']['warmup']} warm-up sweeps, default sampler (`method=\"mh\"`), "
        f"{len(results['settings']['seeds'])} seeds per model (medians shown).",
        "",
        "Machine: {processor}, {cpus} CPUs, {mem} GiB; {platform}; Python {python}; "
        "numpy {np_v}, numba {nb_v}.".format(
            processor=results["machine"].get("processor"), cpus=results["machine"].get("cpus"),
            mem=results["machine"].get("memory_gib"), platform=results["machine"].get("platform"),
            python=results["machine"].get("python"), np_v=results["machine"]["versions"]["numpy"],
            nb_v=results["machine"]["versions"]["numba"],
        ),
        "",
        "min ESS is the minimum over every scalar of the posterior (fixed effects, sigma, group SDs "
        "and correlations, every group coefficient); min-ESS/s divides the bulk one by the sampling "
        "seconds (warm-up included).",
        "",
        "| model | parameters | sampling s | data frame to DataTree s | min bulk ESS | min tail ESS "
        "| max R-hat (worst run) | min-ESS/s | target min-ESS/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, res in results["models"].items():
        m = res["median"]
        target = res["target_min_ess_per_second"]
        lines.append(
            f"| {name} | {res['runs'][0]['n_parameters']} | {m['sampling_seconds']:.3f} | "
            f"{m['frame_to_datatree_seconds']:.3f} | {m['min_ess_bulk']:.0f} | {m['min_ess_tail']:.0f} | "
            f"{m['max_rhat']:.4f} ({m['worst_max_rhat']:.4f}) | {m['min_ess_per_second']:.0f} | "
            f"{'-' if target is None else f'{target:.0f}'} |"
        )
    ff = results.get("first_fit")
    if ff:
        lines += [
            "",
            "Time to a first HSB result in a fresh interpreter (import, then data frame to DataTree):",
            "",
            "| kernel cache | import s | first fit s | whole process s |",
            "|---|---|---|---|",
        ]
        for label, r in ff.items():
            lines.append(
                f"| {label} | {r['import_seconds']:.2f} | {r['fit_seconds']:.2f} | {r['process_seconds']:.2f} |"
            )
    lines.append("")
    return "\n".join(lines)


def main(argv=None):
    """Run the benchmark and write the JSON and markdown outputs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--quick", action="store_true", help="tiny run to check the script works")
    parser.add_argument("--no-first-fit", action="store_true", help="skip the fresh-interpreter timings")
    parser.add_argument("--out", type=Path, default=HERE, help="folder for results.json and CORE_RESULTS.md")
    args = parser.parse_args(argv)
    if args.quick:
        args.draws, args.warmup, args.chains, args.seeds = 50, 50, 2, [1]
    results = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": machine(),
        "settings": {"draws": args.draws, "warmup": args.warmup, "chains": args.chains, "seeds": args.seeds},
        "models": {},
    }
    for name in args.models:
        results["models"][name] = run_model(name, args.draws, args.warmup, args.chains, args.seeds)
        m = results["models"][name]["median"]
        print(f"{name:14s} sampling {m['sampling_seconds']:.3f}s  min ESS {m['min_ess_bulk']:.0f}  "
              f"max R-hat {m['max_rhat']:.4f}  min-ESS/s {m['min_ess_per_second']:.0f}", flush=True)
    if not args.no_first_fit:
        results["first_fit"] = first_fit_times(args.draws, args.warmup)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    text = render(results)
    (args.out / "CORE_RESULTS.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
