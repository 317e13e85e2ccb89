"""Posterior sampling of binary, binomial and count outcomes: bayeshlm against NUTS samplers, one machine, one run.

Systems (each (model, system/form) runs in its own interpreter, with one time limit for all,
through the harness of ``bench_peers.py``):

* ``bayeshlm``: ``bh.sample(model)`` as a user calls it, timed as a whole with the ArviZ
  result built (the pointwise or group log-likelihood included), the sampler's own seconds
  beside it. Its default ``glm_move="auto"`` picks the move, shown in brackets: the Newton
  proposal for nested factors with counts (grouseticks) or with at least 50 trials per
  finest group (cbpp, the synthetic Bernoulli models; Gibbs moves on the SDs), else the
  Pólya–Gamma augmentation (contraception; collapsed Metropolis–Hastings moves on the SD);
* ``nutpie``, ``numpyro``, ``pymc``: the same PyMC model (``pm.Binomial`` with ``logit_p``)
  (``pm.Poisson`` with ``mu = exp(eta)`` for counts) sampled by nutpie, by NumPyro's NUTS
  through JAX and by PyMC's own NUTS, each with
  ``centred`` group effects and ``noncentred`` ones (standard normals scaled by the SD). No
  collapsed form exists: a binomial likelihood does not integrate the group effects out.
  Every peer evaluates the likelihood from the rows, as bayeshlm does (a
  Bernoulli model's rows cannot be pooled into binomial cells when a predictor is continuous).

Models: ``cbpp`` (binomial, 56 rows in 15 herds), ``contraception`` (Bernoulli, 1,934 women
in 60 districts), ``grouseticks`` (Poisson, 403 chicks in 118 broods in 63 locations, two
group SDs; bayeshlm's correction for its mixture of normals included), and synthetic
Bernoulli data with a continuous predictor and 1,000 groups (``bernoulli:<rows>``;
``bernoulli_1m`` is the 1,000,000-row model). Priors, the same in every sampler: ``Normal(0,
5)`` on every fixed effect, ``HalfNormal(2)`` on each group SD. 4 chains of 1000 draws after
1000 warm-up iterations. Reported: setup and sampling seconds, the minimum bulk and tail ESS
over every scalar (fixed effects, the SD and every group coefficient), min-ESS per second,
the largest R-hat and the divergences. A run stopped by the time limit is reported with the
most it could have reached (draws / limit): a bound.

    python benchmarks/bench_glmm_peers.py                     # writes glmm_peers_results.json, GLMM_PEERS_RESULTS.md
    python benchmarks/bench_glmm_peers.py --quick             # 100 draws, cbpp only, to check it works
    python benchmarks/bench_glmm_peers.py --models grouseticks --merge   # one model again, the others kept
"""

from __future__ import annotations

import argparse
import ctypes.util
import importlib.util
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_peers import ess_summary, limit_bound, run_worker, sample_pymc_model  # noqa: E402

MODELS = {  # name: (data source, formula, family)
    "cbpp": ("cbpp", "cbind(incidence, size - incidence) ~ C(period) + (1 | herd)", "binomial"),
    "contraception": ("contraception", "use ~ age + I(age**2) + urban + livch + (1 | district)", "bernoulli"),
    "grouseticks": ("grouseticks", "ticks ~ C(year) + cheight + (1 | location/brood)", "poisson"),
    "bernoulli_100k": ("bernoulli:100000", "y ~ x + (1 | g)", "bernoulli"),
    "bernoulli_1m": ("bernoulli:1000000", "y ~ x + (1 | g)", "bernoulli"),
}
FIXED_SD, GROUP_SD = 5.0, 2.0  # Normal(0, 5) on every fixed effect, HalfNormal(2) on each group SD
SAMPLERS = ["bayeshlm", "nutpie", "numpyro", "pymc"]
FORMS = {"nutpie": ("centred", "noncentred"), "numpyro": ("centred", "noncentred"), "pymc": ("centred", "noncentred")}
NEEDS = {"pymc": ("pymc",), "nutpie": ("pymc", "nutpie"), "numpyro": ("pymc", "numpyro", "jax")}


def load_data(source):
    """A bundled data set, or synthetic Bernoulli data: ``rows`` rows in 1,000 groups, a continuous predictor."""
    import pandas as pd

    import bayeshlm as bh

    if source == "grouseticks":  # lme4's example: the height centred
        data = bh.load_dataset(source)
        data["cheight"] = data["height"] - data["height"].mean()
        return data
    if not source.startswith("bernoulli:"):
        return bh.load_dataset(source)
    n = int(source.split(":")[1])
    rng = np.random.default_rng(0)
    g = rng.integers(0, 1000, size=n)
    x = rng.normal(size=n)
    eta = -0.5 + 0.7 * x + 0.8 * rng.normal(size=1000)[g]
    return pd.DataFrame({"y": rng.binomial(1, 1 / (1 + np.exp(-eta))).astype(float), "x": x,
                         "g": [f"g{j}" for j in g]})


def _model(name):
    import bayeshlm as bh

    source, formula, family = MODELS[name]
    return bh.hlm(formula, load_data(source), family=family,
                  priors={"fixed": bh.Normal(0, FIXED_SD), "sd": bh.HalfNormal(GROUP_SD)})


def run_bayeshlm(name, draws, warmup):
    """``bh.sample(model)`` with its defaults, the result built; setup includes loading the compiled kernels."""
    import bayeshlm as bh

    t0 = time.perf_counter()
    model = _model(name)
    bh.sample(model, draws=5, warmup=5, chains=1, seed=0, progress=False)
    setup = time.perf_counter() - t0
    t1 = time.perf_counter()
    post = bh.sample(model, draws=draws, warmup=warmup, chains=4, seed=1, progress=False)
    seconds = time.perf_counter() - t1
    p = post.posterior
    est = {f"fixed[{t}]": float(p["fixed"].sel(fixed_term=t).mean()) for t in model.fixed_names}
    for v in p.data_vars:
        if v.endswith("_sd"):
            est[v] = float(p[v].mean())
    return {"setup_seconds": setup, "sampling_seconds": seconds, "sampler_seconds": float(post.attrs["sampling_time"]),
            "log_likelihood": post.attrs["log_likelihood"], "arrays": {v: p[v].values for v in p.data_vars},
            "divergences": 0, "estimates": est, "glm_move": json.loads(post.attrs["sampler"])["glm_move"]}


def _pymc_model(name, form):
    """The PyMC model of ``name``: the same design, priors and likelihood, group effects in the form ``form``."""
    import pymc as pm

    model = _model(name)
    design = model.design
    F = np.asarray(design.F, dtype=float)
    g = np.asarray(design.group_idx)
    st = model.structure
    n_factors = len(st.node_ptr) - 1
    # each row's group of every factor, finest first (nested: each group's parent in turn)
    idx = [g]
    for k in range(1, n_factors):
        idx.append(np.asarray(st.parent)[idx[-1] + st.node_ptr[k - 1]] - st.node_ptr[k])
    with pm.Model() as pm_model:
        a = pm.Normal("fixed", 0.0, FIXED_SD, shape=F.shape[1])
        eta = pm.math.dot(F, a)
        for k, factor in enumerate(model.factors):
            tag = factor.replace(":", "_")
            n_groups = int(st.node_ptr[k + 1] - st.node_ptr[k])
            sd = pm.HalfNormal(f"{tag}_sd", GROUP_SD)
            if form == "centred":
                b = pm.Normal(f"{tag}_effect", 0.0, sd, shape=n_groups)
            else:
                z = pm.Normal(f"{tag}_z", 0.0, 1.0, shape=n_groups)
                b = pm.Deterministic(f"{tag}_effect", sd * z)
            eta = eta + b[idx[k]]
        if model.family == "poisson":
            pm.Poisson("y", mu=pm.math.exp(eta), observed=np.asarray(design.y, dtype=np.int64))
        else:
            pm.Binomial("y", n=np.asarray(model.trials, dtype=np.int64), logit_p=eta,
                        observed=np.asarray(design.y, dtype=np.int64))
    return pm_model, list(model.fixed_names)


def run_pymc(name, draws, warmup, sampler, form):
    """PyMC's NUTS, nutpie or NumPyro on the PyMC model."""
    t0 = time.perf_counter()
    model, fixed_names = _pymc_model(name, form)
    setup, seconds, p, stats = sample_pymc_model(model, t0, draws, warmup, sampler)
    arrays = {v: p[v].values for v in p.data_vars if v == "fixed" or v.endswith(("_sd", "_effect"))}
    div = int(np.asarray(stats["diverging"]).sum()) if "diverging" in stats else -1
    est = {f"fixed[{t}]": float(v) for t, v in zip(fixed_names, p["fixed"].values.mean((0, 1)), strict=True)}
    for v in arrays:
        if v.endswith("_sd"):
            est[v] = float(p[v].values.mean())
    return {"setup_seconds": setup, "sampling_seconds": seconds, "arrays": arrays, "divergences": div,
            "estimates": est}


def worker(model, system, draws, warmup, out_path):
    """Run one (model, system[/form]) in this process and write its JSON record."""
    t0 = time.perf_counter()
    system, _, form = system.partition("/")
    if system == "bayeshlm":
        rec = run_bayeshlm(model, draws, warmup)
    else:
        if "PYTENSOR_FLAGS" not in os.environ and ctypes.util.find_library("openblas"):
            os.environ["PYTENSOR_FLAGS"] = "blas__ldflags=-lopenblas"
        if system == "numpyro":  # before JAX is imported: one CPU device per chain
            os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
        rec = run_pymc(model, draws, warmup, system, form)
    Path(str(out_path) + ".sampled").write_text(str(time.perf_counter() - t0))
    bulk, tail, rhat = ess_summary(rec.pop("arrays"))
    rec.update(min_ess_bulk=bulk, min_ess_tail=tail, max_rhat=rhat,
               min_ess_per_second=min(bulk, tail) / rec["sampling_seconds"])
    if "sampler_seconds" in rec:
        rec["min_ess_per_sampler_second"] = min(bulk, tail) / rec["sampler_seconds"]
    rec["wall_seconds"] = time.perf_counter() - t0
    rec["peak_memory_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    Path(out_path).write_text(json.dumps(rec))


def run(models, systems, draws, warmup, limit):
    """Every (model, system/form) in its own interpreter; returns ``{model: {name: record}}``."""
    results = {}
    for model in models:
        results[model] = {}
        for name in [f"{s}/{f}" if f else s for s in systems for f in FORMS.get(s, ("",))]:
            system = name.partition("/")[0]
            missing = [m for m in NEEDS.get(system, ()) if importlib.util.find_spec(m) is None]
            if missing:
                results[model][name] = {"skipped": f"{', '.join(missing)} not installed (pip install -e '.[bench]')"}
                continue
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "r.json"
                cmd = [sys.executable, __file__, "--worker", model, name, str(draws), str(warmup), str(out)]
                rec = run_worker(cmd, out, Path(tmp) / "stderr.txt", limit)
            results[model][name] = rec
            print(model, name, {k: (round(v, 3) if isinstance(v, float) else v) for k, v in rec.items()
                                if k != "estimates"}, flush=True)
    return results


def table(results, n_draws):
    """Markdown: every (system, form) with bayeshlm's ratio over it, then bayeshlm over the best peer."""
    lines = ["| model | system/form | setup (s) | sampling (s) | min bulk ESS | min tail ESS | min-ESS/s | max R-hat "
             "| divergences | bayeshlm / this |", "|---|---|---|---|---|---|---|---|---|---|"]
    best = {}
    for model, recs in results.items():
        ours = recs.get("bayeshlm", {}).get("min_ess_per_second")
        for name, r in recs.items():
            if "skipped" in r:
                bound = limit_bound(r, n_draws)
                note = f" (at most {bound:.2f} min-ESS/s: a bound)" if bound else ""
                lines.append(f"| {model} | {name} | {r['skipped']}{note} ||||||||")
                if bound is not None and name != "bayeshlm":
                    best.setdefault(model, []).append((name, bound, True))
                continue
            if name != "bayeshlm":
                best.setdefault(model, []).append((name, r["min_ess_per_second"], False))
            ratio = "" if name == "bayeshlm" or not ours else f"{ours / r['min_ess_per_second']:.1f}x"
            secs = f"{r['sampling_seconds']:.2f}" + (f" ({r['sampler_seconds']:.2f})" if "sampler_seconds" in r else "")
            shown = f"{name} ({r['glm_move']})" if "glm_move" in r else name
            lines.append(f"| {model} | {shown} | {r['setup_seconds']:.1f} | {secs} | {r['min_ess_bulk']:.0f} | "
                         f"{r['min_ess_tail']:.0f} | {r['min_ess_per_second']:.2f} | {r['max_rhat']:.3f} | "
                         f"{r['divergences']} | {ratio} |")
    lines += ["", "| model | best peer (min-ESS/s) | bayeshlm (min-ESS/s) | bayeshlm / best peer |",
              "|---|---|---|---|"]
    for model, recs in results.items():
        ours = recs.get("bayeshlm", {}).get("min_ess_per_second")
        if not ours or model not in best:
            continue
        name, value, bound = max(best[model], key=lambda t: t[1])
        kind = "at most, a bound" if bound else "measured"
        lines.append(f"| {model} | {name} ({value:.2f}, {kind}) | {ours:.2f} | "
                     f"{'at least ' if bound else ''}{ours / value:.1f}x |")
    return "\n".join(lines)


def main(argv=None):
    """Run the harness, print the tables, write the JSON and Markdown files (always one whole run)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 draws, cbpp only")
    parser.add_argument("--models", nargs="*", default=None)
    parser.add_argument("--systems", nargs="*", default=None)
    parser.add_argument("--limit", type=float, default=300.0, help="seconds allowed per (model, system/form)")
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--merge", action="store_true",
                        help="keep the other models of an existing glmm_peers_results.json (each model's systems "
                             "still run together, in one run; the table says when each model ran)")
    args = parser.parse_args(argv)
    draws = warmup = 100 if args.quick else 1000
    models = args.models or (["cbpp"] if args.quick else list(MODELS))
    started = time.strftime("%Y-%m-%d %H:%M")
    t0 = time.perf_counter()
    results = run(models, args.systems or SAMPLERS, draws, warmup, args.limit)
    from bench_core import machine

    meta = {"machine": machine(), "draws": draws, "warmup": warmup, "chains": 4, "started": started,
            "run_minutes": (time.perf_counter() - t0) / 60, "limit_seconds": args.limit,
            "priors": {"fixed": f"Normal(0, {FIXED_SD})", "sd": f"HalfNormal({GROUP_SD})"}}
    runs = {m: {"started": started, "run_minutes": meta["run_minutes"]} for m in models}
    path = args.out / "glmm_peers_results.json"
    if args.merge and path.exists():
        old = json.loads(path.read_text())
        if (old["draws"], old["warmup"], old["limit_seconds"]) != (draws, warmup, args.limit):
            raise SystemExit(f"{path} holds runs of other settings: run every model again instead of --merge")
        old_runs = old.get("runs") or {m: {"started": old["started"], "run_minutes": old["run_minutes"]}
                                       for m in old["models"]}
        results = {**{m: r for m, r in old["models"].items() if m not in results}, **results}
        runs = {**{m: r for m, r in old_runs.items() if m not in runs}, **runs}
    text = table(results, 4 * draws)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**meta, "runs": runs, "models": results}, indent=2))
    when = "; ".join(f"{m} {r['started']} ({r['run_minutes']:.0f} min)" for m, r in runs.items())
    header = (f"# Binary, binomial and count outcomes: bayeshlm's sampler against NUTS\n\n"
              f"`python benchmarks/bench_glmm_peers.py`; each model's systems in one run, started: {when}. "
              f"{meta['machine'].get('platform', '')}, {os.cpu_count()} CPUs. 4 chains x {draws} draws after "
              f"{warmup} warm-up iterations; Normal(0, {FIXED_SD:g}) on every fixed effect, HalfNormal({GROUP_SD:g}) "
              f"on each group SD, everywhere; each (model, system/form) in its own interpreter, limited to "
              f"{args.limit:.0f} s. bayeshlm's seconds are those of `bh.sample` as a user calls it (the sampler's "
              "own in brackets); its ESS counts every group coefficient, as the peers' does.\n\n")
    (args.out / "GLMM_PEERS_RESULTS.md").write_text(header + text + "\n")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
    else:
        sys.exit(main())
