"""benchmarks/RESULTS.md: peers, crossed factors, GLMM fits, the user's wait, ten million rows, sweeps, cold start.

Reads the JSON written by ``bench_peers.py`` (also its crossed run in ``crossed_peers/``),
``bench_crossed.py``, ``bench_overhead.py``, ``bench_scale.py``, ``bench_sweep.py`` and
``bench_coldstart.py`` (each from one run on this machine; the page
says when) and states each target beside what was measured. ``--run`` runs the five scripts
first, in that order.

    python benchmarks/report.py            # render from the committed JSON
    python benchmarks/report.py --run      # run everything (about an hour and a half), then render
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGETS = {"hsb": 100, "synthetic_1e5": 50, "synthetic_1e6": 50, "sleepstudy": 30, "radon": 30}


def _load(folder, name):
    path = Path(folder) / name
    return json.loads(path.read_text()) if path.exists() else None


def _ratio(x):
    """A speed ratio: one decimal below 100, so that 19.8x does not read as 20x."""
    return f"{x:.1f}x" if x < 100 else f"{x:.0f}x"


def _met(ok):
    return "met" if ok else "**missed**"


def readme_rows(peers):
    """The peer table of ``README.md``: one line per model, from the run's JSON (the tests hold the README to it)."""
    sys.path.insert(0, str(HERE))
    from bench_peers import summarise

    n_draws = peers["chains"] * peers["draws"]
    lines = ["| model | bayeshlm min-ESS/s | best peer (form) | its min-ESS/s | ratio | target |",
             "|---|---|---|---|---|---|"]
    for model, recs in peers["models"].items():
        v = summarise(recs, n_draws)
        target = f"{TARGETS[model]}x" if model in TARGETS else ""
        if v["ours"] is None:
            why = recs.get("bayeshlm", {}).get("skipped", "not run")
            lines.append(f"| {model} | not measured ({why}) | | | | {target} |")
            continue
        if v["best"] is None and v["bound"] is not None:
            name, bound = v["bound"]
            lines.append(f"| {model} | {v['ours']:.0f} | none finished | at most {bound:.2f} ({name}, a bound) | "
                         f"at least {_ratio(v['ours'] / bound)} | {target} |")
        elif v["best"] is not None:
            name, best = v["best"]
            lines.append(f"| {model} | {v['ours']:.0f} | {name} | {best:.1f} | {_ratio(v['ours'] / best)} | "
                         f"{target} |")
    return lines


def peers_section(peers):
    """Ratios to the best peer in its best form per model, from one run, and the REML fits."""
    sys.path.insert(0, str(HERE))
    from bench_peers import summarise

    n_draws = peers["chains"] * peers["draws"]
    lines = [f"## Against the peers (one run started {peers.get('started', peers['date'])}, "
             "`python benchmarks/bench_peers.py`)", "",
             f"4 chains x {peers['draws']} draws after {peers['warmup']} warm-up iterations, the same priors in every "
             "system, each (model, system/form) in its own interpreter with a limit of "
             f"{peers['limit_seconds']:.0f} s. "
             "Every NUTS peer ran centred and non-centred group effects and, where its language can express a "
             "likelihood of per-group statistics (PyMC, and through it nutpie and NumPyro), the collapsed model; "
             "the best of all of them is the opponent. Min-ESS is the smallest bulk or tail ESS over every scalar, "
             "every group coefficient included. bayeshlm is timed as a user calls it, `bh.sample(model)` with its "
             "defaults and the result built; its min-ESS/s on the sampler's own time is in brackets. "
             "Details: `PEERS_RESULTS.md`.", "",
             "| model | bayeshlm min-ESS/s | best peer (form) | its min-ESS/s | ratio | target | "
             "best row-level peer (form) | stopped at the limit |",
             "|---|---|---|---|---|---|---|---|"]
    notes = []
    for model, recs in peers["models"].items():
        v = summarise(recs, n_draws)
        ours, target = v["ours"], TARGETS.get(model)
        if ours is None:
            why = recs.get("bayeshlm", {}).get("skipped", "not run")
            lines.append(f"| {model} | not measured ({why}) | | | | {f'{target}x: not shown' if target else ''} "
                         "| | |")
            continue
        stopped = ", ".join(f"{p}/{f}" for p, pv in v["peers"].items() for f in pv["stopped"])
        rows = [(f"{p}/{pv['row'][0]}", pv["row"][1]) for p, pv in v["peers"].items() if pv["row"]]
        best_row = max(rows, key=lambda t: t[1]) if rows else None
        row_text = f"{best_row[0]} ({best_row[1]:.1f})" if best_row else "none finished"
        ours_text = f"{ours:.0f} ({v['ours_sampler']:.0f})"
        if v["best"] is None:
            if v["bound"] is None:
                lines.append(f"| {model} | {ours_text} | none finished | | | {target or ''} | | {stopped} |")
                continue
            name, bound = v["bound"]
            shown = ("met, by the bound" if target and ours / bound >= target else
                     "not shown: the bound is below it")
            lines.append(f"| {model} | {ours_text} | none finished | at most {bound:.2f} ({name}, a bound) | "
                         f"at least {_ratio(ours / bound)} | {f'{target}x: {shown}' if target else ''} | "
                         f"{row_text} | {stopped} |")
            continue
        name, best = v["best"]
        ratio = ours / best
        verdict = ""
        if target:
            verdict = f"{target}x: {_met(ratio >= target)}"
            if ratio < target:
                verdict += f" (by {target / ratio:.1f}x)"
        if v["bound"] is not None and v["bound"][1] > best:
            notes.append(f"On {model}, {v['bound'][0]} was stopped at the limit; had it finished then, it could "
                         f"have reached at most {v['bound'][1]:.2f} min-ESS/s, above the best finished peer: the "
                         f"ratio there is not shown to hold against it.")
        lines.append(f"| {model} | {ours_text} | {name} | {best:.1f} | {_ratio(ratio)} | {verdict} | {row_text} | "
                     f"{stopped} |")
    lines += ["", "A peer stopped at its limit of L seconds is never given a ratio: had it finished at that moment "
              "with a minimum ESS equal to its number of draws, it would have reached draws / L min-ESS/s, a bound "
              "(`PEERS_RESULTS.md` lists each). " + " ".join(notes)]
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


CROSSED_TARGETS = {"scotssec": 20, "crossed_73k": 20}
CROSSED_NAMES = {"scotssec": "ScotsSec (3,435 pupils, 148 x 19 schools)", "crossed_73k": "73k rows, 3,000 x 1,100"}


def crossed_section(peers, crossed):
    """Crossed factors against their targets: the peers, REML and the million rows.

    ``peers`` is ``crossed_peers/peers_results.json``, ``crossed`` is ``crossed_results.json``.
    """
    sys.path.insert(0, str(HERE))
    from bench_peers import summarise

    lines = ["## Crossed factors"]
    if peers:
        n_draws = peers["chains"] * peers["draws"]
        lines += ["", f"Against the peers: one run started {peers['started']}, `python benchmarks/bench_peers.py "
                  "--models scotssec crossed_73k --out benchmarks/crossed_peers` (details in "
                  f"`crossed_peers/PEERS_RESULTS.md`); 4 chains x {peers['draws']} draws after {peers['warmup']} "
                  f"warm-up, the same priors, {peers['limit_seconds']:.0f} s per (design, system/form). No peer can "
                  "write a collapsed form of a crossed model: one factor's groups do not contain the other's. "
                  "bayeshlm's min-ESS/s is given three ways: the default `bh.sample` call, which also stores the "
                  "log-likelihood (no peer computes one); the same call with `log_likelihood=False`, the same "
                  "draws with the outputs every peer returns (like for like); and the sampler alone. Its method "
                  "is the default `mh` on ScotsSec and `blocked` on the 73k design.", "",
                  "| design | bayeshlm min-ESS/s: default (like for like; sampler) | best peer (form) | its min-ESS/s "
                  "| ratio: default | like for like | target | stopped at the limit |",
                  "|---|---|---|---|---|---|---|---|"]
        for model, recs in peers["models"].items():
            v = summarise(recs, n_draws)
            target = CROSSED_TARGETS.get(model)
            name = CROSSED_NAMES.get(model, model)
            if v["ours"] is None or v["best"] is None:
                why = recs.get("bayeshlm", {}).get("skipped", "no peer finished")
                lines.append(f"| {name} | not compared ({why}) | | | | | {target}x: not shown | |")
                continue
            peer, best = v["best"]
            stopped = ", ".join(f"{p}/{f}" for p, pv in v["peers"].items() for f in pv["stopped"])
            default, like = v["ours"] / best, v["ours_like_for_like"] / best
            verdict = (f"{target}x: {_met(like >= target)} like for like, {_met(default >= target)} on the default "
                       "call")
            lines.append(f"| {name} | {v['ours']:.0f} ({v['ours_like_for_like']:.0f}; {v['ours_sampler']:.0f}) | "
                         f"{peer} | {best:.1f} | {_ratio(default)} | {_ratio(like)} | {verdict} | {stopped} |")
    if crossed:
        designs = crossed["designs"]
        lines += ["", f"REML and the largest design: `python benchmarks/bench_crossed.py --large` "
                  f"(`CROSSED_RESULTS.md`; {crossed['meta']})", "",
                  "| design | rows | REML, bayeshlm (s) | lme4 (s) | logLik bayeshlm - lme4 | posterior, `blocked`, "
                  "end to end (s) | target |",
                  "|---|---|---|---|---|---|---|"]
        for model, d in designs.items():
            em, lme4 = d["em"], d.get("lme4")
            blocked = next((r for r in d["samplers"] if r["method"] == "blocked" and r["run"]), None)
            target = ""
            if model == "crossed_73k":
                target = f"REML under 2 s: {_met(em['seconds'] < 2)}"
            elif model == "crossed_1m":
                target = (f"posterior under 60 s: {_met(blocked['end_to_end_seconds'] < 60)}" if blocked
                          else "posterior under 60 s: not run")
            lme4_s = f"{lme4['seconds']:.3f}" if lme4 else "not run"
            diff = f"{em['loglik'] - lme4['loglik']:.1e}" if lme4 else ""
            post = f"{blocked['end_to_end_seconds']:.1f}" if blocked else "not run"
            lines.append(f"| {model} | {d['rows']:,} | {em['seconds']:.3f} | {lme4_s} | {diff} | {post} | {target} |")
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


def overhead_section(overhead):
    """``bh.sample(model)`` as a user calls it against the sampler's own time."""
    lines = [f"## What the user waits for ({overhead['date']}, `python benchmarks/bench_overhead.py`)", "",
             "`y ~ x + (x | g)` with 1,000 groups, 4 chains x 1000 draws, every default of `bh.sample` kept "
             f"(log-likelihood, all group draws, the ArviZ result); median of {overhead['repeats']} calls. "
             f"Target: the whole call at most {overhead['target_ratio']}x the sampler. Details: "
             "`OVERHEAD_RESULTS.md`.", "",
             "| rows | bh.sample (s) | sampler (s) | result (s) | ratio | log-likelihood | target |",
             "|---|---|---|---|---|---|---|"]
    for r in overhead["results"]:
        lines.append(f"| {r['rows']:,} | {r['total_seconds']:.2f} | {r['sampler_seconds']:.2f} | "
                     f"{r['results_seconds']:.2f} | {r['ratio']:.2f}x | {r['log_likelihood']} | "
                     f"{_met(r['ratio'] <= overhead['target_ratio'])} |")
    return lines


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


def glmm_section(glmm):
    """The maximum-likelihood fits of non-Gaussian models against glmer, in one run."""
    lines = ["## Non-Gaussian models: ML fits against glmer (`python benchmarks/bench_glmm.py`)", "",
             glmm["meta"] + " Target: `fit_em`'s Laplace fit faster than `glmer` on every reference model. "
             "Details: `GLMM_RESULTS.md`.", "",
             "| data set | method | bayeshlm s | glmer s | glmer / bayeshlm | logLik bayeshlm | logLik glmer "
             "| target |",
             "|---|---|---|---|---|---|---|---|"]
    for r in glmm["fits"]:
        lme4, mine = r["lme4"], r["bayeshlm"]
        faster = _met(lme4["seconds"] > mine["seconds"]) if lme4 else "not measured (no R)"
        lines.append(f"| {r['data']} | {r['method']} | {mine['seconds']:.3f} | "
                     f"{lme4['seconds'] if lme4 else float('nan'):.3f} | "
                     f"{_ratio(lme4['seconds'] / mine['seconds']) if lme4 else '-'} | {mine['loglik']:.6f} | "
                     f"{lme4['loglik'] if lme4 else float('nan'):.6f} | "
                     f"{'faster than glmer: ' + faster if r['n_agq'] == 1 else '-'} |")
    return lines


def render(folder=HERE):
    """Write ``folder/RESULTS.md`` from the JSON files present in ``folder``."""
    peers, overhead, scale, sweep, cold = (
        _load(folder, n) for n in ("peers_results.json", "overhead_results.json", "scale_results.json",
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
    crossed_peers = _load(Path(folder) / "crossed_peers", "peers_results.json")
    crossed = _load(folder, "crossed_results.json")
    if crossed_peers or crossed:
        lines += crossed_section(crossed_peers, crossed) + [""]
    glmm = _load(folder, "glmm_results.json")
    if glmm:
        lines += glmm_section(glmm) + [""]
    if overhead:
        lines += overhead_section(overhead) + [""]
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
    parser.add_argument("--readme", action="store_true", help="print README.md's peer table from the JSON")
    args = parser.parse_args(argv)
    if args.readme:
        print("\n".join(readme_rows(_load(HERE, "peers_results.json"))))
        return 0
    if args.run:
        for script in ("bench_peers.py", "bench_overhead.py", "bench_scale.py", "bench_sweep.py",
                       "bench_coldstart.py"):
            subprocess.run([sys.executable, str(HERE / script)], check=True)
    render()
    return 0


if __name__ == "__main__":
    sys.exit(main())
