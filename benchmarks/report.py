"""benchmarks/RESULTS.md: the peer comparison, ten million rows, sweep scaling and cold start in one page.

Reads the JSON written by ``bench_peers.py``, ``bench_scale.py``, ``bench_sweep.py`` and
``bench_coldstart.py`` (each from one run on this machine; the page says when) and states
each target beside what was measured. ``--run`` runs the four scripts first, in that order.

    python benchmarks/report.py            # render from the committed JSON
    python benchmarks/report.py --run      # run everything (about an hour and a half), then render
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SAMPLER_PEERS = ("nutpie", "numpyro", "pymc", "pymc_centered", "stan", "jags")
TARGETS = {"hsb": 100, "synthetic_1e6": 100, "sleepstudy": 20, "radon": 20}


def _load(folder, name):
    path = Path(folder) / name
    return json.loads(path.read_text()) if path.exists() else None


def _ratio(x):
    """A speed ratio: one decimal below 100, so that 19.8x does not read as 20x."""
    return f"{x:.1f}x" if x < 100 else f"{x:.0f}x"


def _met(ok):
    return "met" if ok else "**missed**"


def _unfinished_bound(recs, n_draws):
    """``(system, min-ESS/s)``: the most any peer stopped by its time limit could have reached.

    A peer stopped at ``L`` seconds would, had it finished at that moment with a minimum ESS
    equal to its number of draws (the most NUTS gives on the worst of thousands of
    parameters), have reached ``n_draws / L``. The largest such value over the stopped
    peers bounds the best peer's min-ESS/s from above; None when no peer was stopped.
    """
    bounds = {}
    for system, rec in recs.items():
        if system not in SAMPLER_PEERS:
            continue
        limit = rec.get("limit_seconds")
        if limit is None:
            found = re.fullmatch(r"time limit of ([0-9.]+) s reached", rec.get("skipped", ""))
            limit = float(found.group(1)) if found else None
        if limit:
            bounds[system] = n_draws / limit
    if not bounds:
        return None
    system = max(bounds, key=bounds.get)
    return system, bounds[system]


def peers_section(peers):
    """Ratios to the best peer per model, and the REML fits."""
    lines = [f"## Against the peers ({peers['date']}, `python benchmarks/bench_peers.py`)", "",
             f"4 chains x {peers['draws']} draws after {peers['warmup']} warm-up iterations, the same priors in every "
             f"system, each (model, system) in its own interpreter with a limit of {peers['limit_seconds']:.0f} s. "
             "Min-ESS is the smallest bulk or tail ESS over every scalar, group coefficients included. "
             + (peers.get("update_note", "") + " " if peers.get("update_note") else "")
             + "Details: `PEERS_RESULTS.md`.", "",
             "| model | bayeshlm min-ESS/s | best peer | its min-ESS/s | ratio | target | peers that did not finish |",
             "|---|---|---|---|---|---|---|"]
    for model, recs in peers["models"].items():
        ours = recs.get("bayeshlm", {}).get("min_ess_per_second")
        done = {s: r for s, r in recs.items() if s in SAMPLER_PEERS and "min_ess_per_second" in r}
        missing = ", ".join(f"{s} ({r['skipped']})" for s, r in recs.items() if s in SAMPLER_PEERS and "skipped" in r)
        target = TARGETS.get(model)
        if not done or ours is None:
            bound = _unfinished_bound(recs, peers["chains"] * peers["draws"])
            if bound and ours is not None:
                system, ess_s = bound
                shown = "met, by the bound" if ours / ess_s >= target else "not shown: the bound is below it"
                verdict = f"{target}x: {shown}" if target else ""
                lines.append(f"| {model} | {ours:.0f} | none finished | at most {ess_s:.2f} ({system}) | "
                             f"at least {ours / ess_s:.0f}x | {verdict} | {missing} |")
            else:
                lines.append(f"| {model} | {ours or float('nan'):.0f} | none finished | | | "
                             f"{f'{target}x' if target else ''} | {missing} |")
            continue
        best = max(done, key=lambda s: done[s]["min_ess_per_second"])
        ratio = ours / done[best]["min_ess_per_second"]
        verdict = f"{target}x: {_met(ratio >= target)}" if target else ""
        lines.append(f"| {model} | {ours:.0f} | {best} | {done[best]['min_ess_per_second']:.1f} | {ratio:.0f}x | "
                     f"{verdict} | {missing} |")
    if any("none finished | at most" in line for line in lines):
        lines += ["", "Where no peer finished, the best peer's min-ESS/s is bounded from above: a peer stopped at "
                  "its limit of L seconds could at best have finished at that moment with a minimum ESS equal to "
                  "its number of draws, that is draws / L. The largest such bound over the stopped peers is shown; "
                  "it is a bound, not a measurement."]
    lines += ["", "REML fits, data frame to estimates (median of 3 to 25 timed fits, as many as fit in about 2 s):", "",
              "| model | bayeshlm (s) | lme4 (s) | statsmodels (s) | vs lme4 | vs statsmodels (target 20x) |",
              "|---|---|---|---|---|---|"]
    for model, recs in peers["models"].items():
        ours = recs.get("bayeshlm_em", {}).get("fit_seconds")
        if ours is None:
            continue
        lme4 = recs.get("lme4", {}).get("fit_seconds")
        sm = recs.get("statsmodels", {}).get("fit_seconds")
        f_lme4 = f"{lme4 / ours:.1f}x ({_met(lme4 > ours)})" if lme4 else recs.get("lme4", {}).get("skipped", "not run")
        f_sm = (f"{_ratio(sm / ours)} ({_met(sm / ours >= 20)})" if sm
                else recs.get("statsmodels", {}).get("skipped", "not run"))
        lines.append(f"| {model} | {ours:.4f} | {lme4 or float('nan'):.4f} | {sm or float('nan'):.4f} | "
                     f"{f_lme4} | {f_sm} |")
    return lines


def scale_section(scale):
    """The ten-million-row runs."""
    s = scale["settings"]
    lines = ["## Ten million rows (`python benchmarks/bench_scale.py`)", "",
             f"`y ~ x + (x | g)`, 4 chains x {s['draws']} draws after {s['warmup']} warm-up sweeps, "
             f"`mh_steps={s['mh_steps']}`, 2 cores; targets: at most 60 s end to end, peak memory under 3x the "
             "input. Details: `SCALE_RESULTS.md`.", "",
             "| path | rows | groups | end to end (s) | 60 s | memory over baseline / input | 3x | min ESS "
             "| max R-hat |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in scale["results"]:
        memory = _met(r["memory_ratio"] < 3)
        if r["path"] == "frame_hlm":  # the full-design path, shown for comparison
            memory = "not the target's path: `hlm` keeps the whole design"
        lines.append(f"| {r['path']} | {r['rows']:,} | {r['groups']:,} | {r['end_to_end_seconds']:.1f} | "
                     f"{_met(r['end_to_end_seconds'] <= 60)} | {r['memory_ratio']:.2f} | {memory} "
                     f"| {min(r['min_ess_bulk'], r['min_ess_tail']):.0f} | {r['max_rhat']:.3f} |")
    return lines


def sweep_section(sweep):
    """Seconds per sweep against rows and groups, with the plot."""
    rows = sweep["by_rows"]
    groups = sweep["by_groups"]
    flat = rows[-1]["sweep_ms"] / rows[0]["sweep_ms"]
    per_group = [1e3 * r["sweep_ms"] / r["groups"] for r in groups]
    return ["## Sweep cost (`python benchmarks/bench_sweep.py`)", "",
            "![seconds per sweep against rows and groups](sweep_scaling.png)", "",
            f"From {rows[0]['rows']:,} to {rows[-1]['rows']:,} rows over {rows[0]['groups']:,} groups a sweep "
            f"goes from {rows[0]['sweep_ms']:.3f} to {rows[-1]['sweep_ms']:.3f} ms (x{flat:.2f}); from "
            f"{groups[0]['groups']:,} to {groups[-1]['groups']:,} groups it costs "
            + ", ".join(f"{v:.2f}" for v in per_group) + " microseconds per group. Details: `SWEEP_RESULTS.md`."]


def cold_section(cold):
    """Cold start against its targets."""
    lines = ["## Cold start (`python benchmarks/bench_coldstart.py`)", "",
             "Targets: under 30 s without the numba cache, a cached first fit under 2 s. Median of "
             f"{cold[0].get('runs', 1)} runs (fastest and slowest beside it).", "",
             "| case | seconds | fastest | slowest | of which import | target |", "|---|---|---|---|---|---|"]
    for r in cold:
        target = 30 if r["case"].startswith("no cache") else 2
        lines.append(f"| {r['case']} | {r['seconds']:.1f} | {r.get('min_seconds', r['seconds']):.1f} | "
                     f"{r.get('max_seconds', r['seconds']):.1f} | {r['import_seconds']:.1f} | {target} s: "
                     f"{_met(r['seconds'] < target)} |")
    return lines


def render(folder=HERE):
    """Write ``folder/RESULTS.md`` from the JSON files present in ``folder``."""
    peers, scale, sweep, cold = (_load(folder, n) for n in ("peers_results.json", "scale_results.json",
                                                    "sweep_results.json", "coldstart_results.json"))
    lines = ["# Benchmark results", "",
             "Rendered by `python benchmarks/report.py` from the JSON of the scripts named in each section, "
             "all run on the same 2-core machine (shared: timings vary by tens of percent between runs, so "
             "ratios are measured within one run). Each section says whether its target was met.", ""]
    if peers:
        machine = peers.get("machine", {})
        lines += [f"Machine: {machine.get('platform', '')}, {machine.get('cpus', '')} CPUs, "
                  f"Python {machine.get('python', '')}.", ""]
        lines += peers_section(peers) + [""]
    if scale:
        lines += scale_section(scale) + [""]
    if sweep:
        lines += sweep_section(sweep) + [""]
    if cold:
        lines += cold_section(cold) + [""]
    (Path(folder) / "RESULTS.md").write_text("\n".join(lines))


def main(argv=None):
    """Optionally run the benchmarks, then render."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="store_true")
    args = parser.parse_args(argv)
    if args.run:
        for script in ("bench_peers.py", "bench_scale.py", "bench_sweep.py", "bench_coldstart.py"):
            subprocess.run([sys.executable, str(HERE / script)], check=True)
    render()
    return 0


if __name__ == "__main__":
    sys.exit(main())
