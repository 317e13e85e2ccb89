"""Level-1 extensions (a modelled level-1 variance, Student-t residuals): bayeshlm's sampler against NUTS, one run.

Models, both on HSB (7,185 pupils in 160 schools), ``mathach ~ ses + sector + (1 + ses | school)``:

* ``hsb_sigma``: heterogeneous level-1 variance, ``hlm(..., sigma="~ sector")``: row ``i`` has
  ``log sigma_i^2 = log sigma^2 + delta z_i``; the peers write it on the standardised column
  ``z_std = (sector - mean) / sd`` with ``delta_std ~ Normal(0, 2.5)``, bayeshlm's prior, and
  report ``delta`` and ``sigma`` as bayeshlm does (``VARIANCE_FRAME``);
* ``hsb_student``: Student-t level 1, ``hlm(..., family="student")``, ``nu`` estimated with
  brms's prior ``nu ~ Gamma(2, 0.1)`` restricted to ``nu >= 1`` (``NU_PRIOR``).

Every other prior is bayeshlm's default, read from the compiled model (``model.prior_spec``
and the frame it is set on, ``model.prior_frame``) and written in PyMC as it is: the
fixed intercept's normal prior and the school block's SDs and LKJ correlation hold at the
predictors' means, so the peers use the centred columns (which is also their best form, as
brms centres its design), and their draws are carried back to the user's coefficients
before any ESS is computed.

Systems (each (model, system/form) in its own interpreter, one time limit for all, through
the harness of ``bench_peers.py``):

* ``bayeshlm``: ``bh.sample(model)`` as a user calls it, after a short run that loads the
  compiled kernels (setup), timed as a whole, the sampler's own seconds beside it. Should
  ``bh.sample`` refuse the model (``NotImplementedError``, ``ValueError``) the row says so and
  the peers still run;
* ``nutpie`` (the PyMC model compiled by nutpie) and ``pymc`` (``pm.sample``'s NUTS), each
  with ``centred`` group effects and ``noncentred`` ones (standard normals times the
  Cholesky factor of the covariance); the better form is the peer's. A short run first
  compiles (setup); the sampling seconds are those of the sampling itself (PyMC's own
  ``sampling_time``, the whole call beside it).

Reported per (model, system/form): setup and sampling seconds, the minimum bulk (and tail) ESS
over the fixed effects, sigma, the group SDs and ``delta`` or ``nu``, min-ESS/s (bulk ESS per
second of sampling, all 4 chains), the largest R-hat over the same, divergences and
posterior means; then bayeshlm over the best peer. A run stopped by the time limit is
reported with the most it could have reached (draws / limit): a bound.

    python benchmarks/bench_level1.py                     # writes level1_results.json, LEVEL1_RESULTS.md
    python benchmarks/bench_level1.py --quick             # 100 draws, to check it works
    python benchmarks/bench_level1.py --systems bayeshlm  # bayeshlm alone (no PyMC)
    python benchmarks/bench_level1.py --models hsb_student --merge   # one model again, the other kept
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

from samplers.scale import DELTA_PRIOR_SD, NU_PRIOR_RATE, NU_PRIOR_SHAPE

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_peers import ess_summary, limit_bound, run_worker  # noqa: E402

FORMULA = "mathach ~ ses + sector + (1 + ses | school)"
MODELS = {  # name: (data set, formula, hlm options, what is modelled at level 1)
    "hsb_sigma": ("hsb", FORMULA, {"sigma": "~ sector"}, "log sigma_i^2 = log sigma^2 + delta * sector"),
    "hsb_student": ("hsb", FORMULA, {"family": "student"}, "Student-t residuals, nu estimated"),
}
DELTA_SD = DELTA_PRIOR_SD  # Normal(0, 2.5) on delta of the standardised column
NU_PRIOR = (NU_PRIOR_SHAPE, NU_PRIOR_RATE, 1.0)  # nu ~ Gamma(shape 2, rate 0.1) restricted to nu >= 1 (brms)
# the frame bayeshlm reports the variance model in: sigma is the SD of a row with z = 0 and
# delta multiplies the user's column (docs/design.md, "Heterogeneous level-1 variance")
VARIANCE_FRAME = "user"
SAMPLERS = ["bayeshlm", "nutpie", "pymc"]
FORMS = {"nutpie": ("centred", "noncentred"), "pymc": ("centred", "noncentred")}
NEEDS = {"pymc": ("pymc",), "nutpie": ("pymc", "nutpie")}
DEFAULT_LIMIT = 600.0  # seconds per (model, system/form)


def _model(name):
    """Bayeshlm's model of ``name``, its default priors."""
    import bayeshlm as bh

    source, formula, options, _ = MODELS[name]
    return bh.hlm(formula, bh.load_dataset(source), **options)


def _quantities(post):
    """The posterior arrays the ESS is taken over: fixed effects, sigma, group SDs, delta or nu."""
    return {v: np.asarray(post[v]) for v in post
            if v in ("fixed", "sigma", "sigma_delta", "nu") or v.endswith("_sd")}


def _estimates(arrays, fixed_names, coef_names):
    """Posterior means, one per scalar, named as bayeshlm names them."""
    est = {}
    for v, x in arrays.items():
        x = np.asarray(x, dtype=float)
        mean = x.reshape(x.shape[0] * x.shape[1], -1).mean(axis=0)
        labels = fixed_names if v == "fixed" else coef_names if v.endswith("_sd") else None
        if labels is not None and len(labels) == len(mean):
            est.update({f"{v}[{t}]": float(m) for t, m in zip(labels, mean, strict=True)})
        elif len(mean) == 1:
            est[v] = float(mean[0])
        else:
            est.update({f"{v}[{i}]": float(m) for i, m in enumerate(mean)})
    return est


def run_bayeshlm(name, draws, warmup):
    """``bh.sample(model)`` with its defaults, the result built; setup includes loading the compiled kernels.

    A model ``bh.sample`` does not take (``NotImplementedError`` or ``ValueError``) gives a
    record with ``skipped`` saying so, and no time.
    """
    import bayeshlm as bh

    t0 = time.perf_counter()
    model = _model(name)
    try:
        bh.sample(model, draws=5, warmup=5, chains=1, seed=0, progress=False)
    except (NotImplementedError, ValueError) as err:
        return {"skipped": f"bh.sample does not take this model: {type(err).__name__}: {err}"}
    setup = time.perf_counter() - t0
    t1 = time.perf_counter()
    post = bh.sample(model, draws=draws, warmup=warmup, chains=4, seed=1, progress=False)
    seconds = time.perf_counter() - t1
    p = post.posterior
    arrays = _quantities({v: p[v].values for v in p.data_vars})
    return {"setup_seconds": setup, "sampling_seconds": seconds, "sampler_seconds": float(post.attrs["sampling_time"]),
            "arrays": arrays, "divergences": 0, "estimates": _estimates(arrays, model.fixed_names, model.coef_names)}


# --- the PyMC model ------------------------------------------------------------------------------


def peer_frame(model):
    """The frame the default priors hold on, as maps between the peers' centred coefficients and the user's.

    Returns ``(F_c, X_c, a_shift, G)``: the centred designs (the columns of an intercept's
    covariates minus their means, when that prior is centred), ``a_shift`` with
    ``a_user[0] = a_c[0] - a_shift @ a_c`` for the fixed intercept, and ``G`` mapping a
    centred group coefficient vector to the user's (``b_user = G b_c``).
    """
    design, frame = model.design, model.prior_frame
    F = np.asarray(design.F, dtype=float)
    X = np.asarray(design.X, dtype=float)
    p, d = F.shape[1], X.shape[1]
    c = frame.centred
    if not np.allclose(c.scale, 1.0):
        raise NotImplementedError("a prior frame with rescaled columns")
    f_shift = np.asarray(c.shift[1:1 + p]) if frame.fixed_centred else np.zeros(p)
    x_shift = np.zeros(d)
    lo = 0
    for k, size in enumerate(design.block_sizes):
        if frame.block_centred[k]:
            x_shift[lo:lo + size] = c.shift[1 + p + lo:1 + p + lo + size]
        lo += size
    G = np.eye(d)
    lo = 0
    for size in design.block_sizes:
        i0 = c.coef_intercept[lo]
        for r in range(lo, lo + size):
            if r != i0:
                G[i0, r] = -x_shift[r]
        lo += size
    return F - f_shift, X - x_shift, f_shift, G


def _pymc_model(name, form):
    """The PyMC model of ``name`` with bayeshlm's priors, group effects in the form ``form``.

    Returns ``(pm_model, info)``; ``info`` carries what :func:`to_user` needs to express its
    draws as bayeshlm reports them.
    """
    import pymc as pm
    import pytensor.tensor as pt

    from bayeshlm import priors as bp

    model = _model(name)
    design, spec = model.design, model.prior_spec
    if len(model.factors) != 1 or len(design.block_sizes) != 1:
        raise NotImplementedError("one grouping factor with one covariance block")
    F_c, X_c, f_shift, G = peer_frame(model)
    p, d = F_c.shape[1], X_c.shape[1]
    codes = np.asarray(design.group_idx)
    n_groups = len(design.group_labels)
    tag = model.factors[0].replace(":", "_")
    fixed = [spec[f"fixed[{t}]"] for t in model.fixed_names]
    if not all(isinstance(q, bp.Normal) for q in fixed):
        raise NotImplementedError("flat priors on fixed effects")
    if "cov" in spec:
        raise NotImplementedError("an inverse-Wishart prior")
    sd_priors = [spec[f"sd[{c}]"] for c in model.coef_names]
    y = np.asarray(design.y, dtype=float)
    info = {"fixed_names": list(model.fixed_names), "coef_names": list(model.coef_names), "tag": tag,
            "f_shift": f_shift.tolist(), "G": G.tolist(), "variance": None}
    with pm.Model() as pm_model:
        a = pm.Normal("fixed_c", mu=np.array([q.mu for q in fixed]), sigma=np.array([q.sigma for q in fixed]),
                      shape=p)
        mu = pt.dot(F_c, a)
        if d == 1:
            sd = pm.Deterministic(f"{tag}_sd_c", _sd_rv(pm, f"{tag}_sd_raw", sd_priors))
            if form == "centred":
                b = pm.Normal(f"{tag}_effect_c", 0.0, sd, shape=n_groups)
            else:
                b = sd * pm.Normal(f"{tag}_z", 0.0, 1.0, shape=n_groups)
            mu = mu + X_c[:, 0] * b[codes]
            pm.Deterministic(f"{tag}_cov_c", pt.reshape(sd**2, (1, 1)))
        else:
            chol, _, _ = pm.LKJCholeskyCov(f"{tag}_chol", n=d, eta=float(spec["corr"].eta),
                                           sd_dist=_sd_block_dist(pm, sd_priors), compute_corr=True)
            pm.Deterministic(f"{tag}_cov_c", pt.dot(chol, chol.T))
            if form == "centred":
                b = pm.MvNormal(f"{tag}_effect_c", mu=np.zeros(d), chol=chol, shape=(n_groups, d))
            else:
                b = pt.dot(pm.Normal(f"{tag}_z", 0.0, 1.0, shape=(n_groups, d)), chol.T)
            mu = mu + (X_c * b[codes]).sum(axis=1)
        sigma = _sd_rv(pm, "sigma_c", [spec["sigma"]])
        vd = model.variance_design
        if vd is not None:  # log sigma_i^2 = log sigma_c^2 + z_std' delta_std
            z = np.asarray(vd.standardised(), dtype=float)
            delta = pm.Normal("delta_std", 0.0, DELTA_SD, shape=z.shape[1])
            scale = sigma * pt.exp(0.5 * pt.dot(z, delta))
            info["variance"] = {"shift": np.asarray(vd.shift).tolist(), "scale": np.asarray(vd.scale).tolist()}
        else:
            scale = sigma
        if model.family == "student":
            shape, rate, lower = NU_PRIOR
            nu = pm.Truncated("nu", pm.Gamma.dist(alpha=shape, beta=rate), lower=lower)
            pm.StudentT("y", nu=nu, mu=mu, sigma=scale, observed=y)
        else:
            pm.Normal("y", mu=mu, sigma=scale, observed=y)
    return pm_model, info


def _sd_rv(pm, name, priors):
    """A scalar SD with bayeshlm's prior ``priors[0]``."""
    prior = priors[0]
    from bayeshlm import priors as bp

    if isinstance(prior, bp.HalfNormal):
        return pm.HalfNormal(name, sigma=prior.sigma)
    if isinstance(prior, bp.HalfStudentT):
        return pm.HalfStudentT(name, nu=prior.nu, sigma=prior.sigma)
    if isinstance(prior, bp.HalfCauchy):
        return pm.HalfCauchy(name, beta=prior.beta)
    if isinstance(prior, bp.Uniform):
        return pm.Uniform(name, 0.0, prior.upper)
    raise NotImplementedError(f"no PyMC translation here of the SD prior {prior}")


def _sd_block_dist(pm, priors):
    """``sd_dist`` of ``LKJCholeskyCov``: one SD prior per coefficient, all of one family."""
    from bayeshlm import priors as bp

    kinds = {type(q) for q in priors}
    if len(kinds) != 1:
        raise NotImplementedError("SD priors of different families in one block")
    d = len(priors)
    kind = kinds.pop()
    if kind is bp.HalfNormal:
        return pm.HalfNormal.dist(sigma=np.array([q.sigma for q in priors]), shape=d)
    if kind is bp.HalfStudentT:
        return pm.HalfStudentT.dist(nu=np.array([q.nu for q in priors]), sigma=np.array([q.sigma for q in priors]),
                                    shape=d)
    if kind is bp.HalfCauchy:
        return pm.HalfCauchy.dist(beta=np.array([q.beta for q in priors]), shape=d)
    raise NotImplementedError(f"no PyMC translation here of the SD prior {priors[0]}")


def to_user(p, info):
    """The peer's draws as bayeshlm reports them: ``{"fixed", "sigma", "<tag>_sd", "sigma_delta" | "nu"}``.

    The fixed intercept and the group covariance go from the centred coefficients to the
    user's; with a variance model, ``delta`` to the user's columns and ``sigma`` to the row
    with ``z = 0`` when ``VARIANCE_FRAME`` is ``"user"``.
    """
    tag = info["tag"]
    a = np.array(p["fixed_c"], dtype=float)
    fixed = a.copy()
    fixed[..., 0] = a[..., 0] - a @ np.asarray(info["f_shift"])
    G = np.asarray(info["G"])
    cov = np.einsum("ij,cdjk,lk->cdil", G, np.asarray(p[f"{tag}_cov_c"], dtype=float), G)
    out = {"fixed": fixed, f"{tag}_sd": np.sqrt(np.einsum("cdii->cdi", cov))}
    sigma = np.asarray(p["sigma_c"], dtype=float)
    if info["variance"] is not None:
        delta = np.asarray(p["delta_std"], dtype=float)
        if VARIANCE_FRAME == "user":
            delta = delta / np.asarray(info["variance"]["scale"])
            sigma = sigma * np.exp(-0.5 * delta @ np.asarray(info["variance"]["shift"]))
        out["sigma_delta"] = delta
    out["sigma"] = sigma
    if "nu" in p:
        out["nu"] = np.asarray(p["nu"], dtype=float)
    return out


def run_pymc(name, draws, warmup, sampler, form):
    """PyMC's NUTS or nutpie on the PyMC model: a short run compiles it (setup), then 4 chains are timed."""
    import pymc as pm

    t0 = time.perf_counter()
    model, info = _pymc_model(name, form)
    call = None
    if sampler == "nutpie":
        import nutpie

        compiled = nutpie.compile_pymc_model(model)
        nutpie.sample(compiled, draws=10, tune=10, chains=1, cores=1, seed=0, progress_bar=False)
        setup = time.perf_counter() - t0
        t1 = time.perf_counter()
        post = nutpie.sample(compiled, draws=draws, tune=warmup, chains=4, cores=2, seed=1, progress_bar=False)
        seconds = time.perf_counter() - t1
    else:
        with model:
            pm.sample(10, tune=10, chains=1, cores=1, random_seed=0, progressbar=False, nuts_sampler="pymc",
                      compute_convergence_checks=False)
            setup = time.perf_counter() - t0
            t1 = time.perf_counter()
            post = pm.sample(draws, tune=warmup, chains=4, cores=2, random_seed=1, progressbar=False,
                             nuts_sampler="pymc", compute_convergence_checks=False)
            call = time.perf_counter() - t1
        seconds = float(post.sample_stats.attrs.get("sampling_time", call))
    posterior = post.posterior
    stats = post.sample_stats
    p = {v: posterior[v].values for v in posterior.data_vars}
    arrays = to_user(p, info)
    div = int(np.asarray(stats["diverging"]).sum()) if "diverging" in stats else -1
    rec = {"setup_seconds": setup, "sampling_seconds": seconds, "arrays": arrays, "divergences": div,
           "estimates": _estimates(arrays, info["fixed_names"], info["coef_names"])}
    if call is not None:
        rec["call_seconds"] = call
    return rec


def worker(model, system, draws, warmup, out_path):
    """Run one (model, system[/form]) in this process and write its JSON record."""
    t0 = time.perf_counter()
    system, _, form = system.partition("/")
    if system == "bayeshlm":
        rec = run_bayeshlm(model, draws, warmup)
    else:
        if "PYTENSOR_FLAGS" not in os.environ:  # PyTensor's C backend links to a BLAS only when told of one
            lib = next((n for n in ("openblas", "blas") if ctypes.util.find_library(n)), None)
            if lib:
                os.environ["PYTENSOR_FLAGS"] = f"blas__ldflags=-l{lib}"
        rec = run_pymc(model, draws, warmup, system, form)
    Path(str(out_path) + ".sampled").write_text(str(time.perf_counter() - t0))
    if "arrays" in rec:
        arrays = rec.pop("arrays")
        bulk, tail, rhat = ess_summary(arrays)
        rec["ess_bulk"] = {v: ess_summary({v: x})[0] for v, x in arrays.items()}
        rec.update(min_ess_bulk=bulk, min_ess_tail=tail, max_rhat=rhat,
                   min_ess_per_second=bulk / rec["sampling_seconds"])
        if "sampler_seconds" in rec:
            rec["min_ess_per_sampler_second"] = bulk / rec["sampler_seconds"]
    rec["wall_seconds"] = time.perf_counter() - t0
    rec["peak_memory_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    Path(out_path).write_text(json.dumps(rec))


def _cpu_clock():
    """``(busy CPU seconds of the whole machine, CPU seconds of this process's finished children, wall clock)``.

    None where ``/proc/stat`` is not to be read. The difference of the first two over a
    worker's run is what other work on the machine took meanwhile.
    """
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    ticks = [int(v) for v in fields]
    busy = (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return busy, children.ru_utime + children.ru_stime, time.perf_counter()


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
            before = _cpu_clock()
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "r.json"
                cmd = [sys.executable, __file__, "--worker", model, name, str(draws), str(warmup), str(out)]
                rec = run_worker(cmd, out, Path(tmp) / "stderr.txt", limit)
            if before is not None:  # what the rest of the machine used meanwhile: other work skews the timings
                after = _cpu_clock()
                busy = (after[0] - before[0]) - (after[1] - before[1])
                rec["other_cpu_share"] = round(max(0.0, busy) / ((after[2] - before[2]) * os.cpu_count()), 3)
            results[model][name] = rec
            if name == "bayeshlm" and "skipped" in rec:
                print(f"*** {model}: bayeshlm not run, {rec['skipped']}; the peers only ***", flush=True)
            print(model, name, {k: (round(v, 3) if isinstance(v, float) else v) for k, v in rec.items()
                                if k not in ("estimates", "ess_bulk")}, flush=True)
    return results


def best_peer(recs, n_draws):
    """``(peer/form, min-ESS/s, is a bound)`` of the best peer form, or None: measured, or a stopped run's bound."""
    best = None
    for name, r in recs.items():
        if name == "bayeshlm":
            continue
        if "min_ess_per_second" in r:
            cand = (name, r["min_ess_per_second"], False)
        elif (bound := limit_bound(r, n_draws)) is not None:
            cand = (name, bound, True)
        else:
            continue
        if best is None or cand[1] > best[1]:
            best = cand
    return best


def table(results, n_draws):
    """Markdown: every (system, form), then bayeshlm over each peer's better form and over the best peer."""
    lines = ["| model | system/form | setup (s) | sampling (s) | min bulk ESS | min tail ESS | min-ESS/s "
             "| max R-hat | divergences | other work's CPU | bayeshlm / this |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for model, recs in results.items():
        ours = recs.get("bayeshlm", {}).get("min_ess_per_second")
        for name, r in recs.items():
            if "skipped" in r:
                bound = limit_bound(r, n_draws)
                note = f" (at most {bound:.2f} min-ESS/s: a bound)" if bound else ""
                lines.append(f"| {model} | {name} | {r['skipped']}{note} |||||||||")
                continue
            ratio = "" if name == "bayeshlm" or not ours else f"{ours / r['min_ess_per_second']:.1f}x"
            secs = f"{r['sampling_seconds']:.2f}"
            if "sampler_seconds" in r:
                secs += f" ({r['sampler_seconds']:.2f})"
            elif "call_seconds" in r:
                secs += f" (call {r['call_seconds']:.2f})"
            other = f"{100 * r['other_cpu_share']:.0f}%" if "other_cpu_share" in r else ""
            lines.append(f"| {model} | {name} | {r['setup_seconds']:.1f} | {secs} | {r['min_ess_bulk']:.0f} | "
                         f"{r['min_ess_tail']:.0f} | {r['min_ess_per_second']:.2f} | {r['max_rhat']:.3f} | "
                         f"{r['divergences']} | {other} | {ratio} |")
    lines += ["", "| model | peer | better form (min-ESS/s) | other form (min-ESS/s) |", "|---|---|---|---|"]
    for model, recs in results.items():
        for peer in FORMS:
            forms = [(f, recs[f"{peer}/{f}"]) for f in FORMS[peer] if f"{peer}/{f}" in recs]
            if not forms:
                continue
            cells = sorted(((r.get("min_ess_per_second", -1.0), f) for f, r in forms), reverse=True)
            text = [f"{f} ({v:.2f})" if v >= 0 else f"{f} (not finished)" for v, f in cells]
            lines.append(f"| {model} | {peer} | {' | '.join(text)} |")
    lines += ["", "| model | best peer (min-ESS/s) | bayeshlm (min-ESS/s) | bayeshlm / best peer |",
              "|---|---|---|---|"]
    for model, recs in results.items():
        ours = recs.get("bayeshlm", {}).get("min_ess_per_second")
        best = best_peer(recs, n_draws)
        if best is None:
            continue
        name, value, bound = best
        kind = "at most, a bound" if bound else "measured"
        if ours:
            ratio = f"{'at least ' if bound else ''}{ours / value:.1f}x"
            mine = f"{ours:.2f}"
        else:
            ratio, mine = "", recs.get("bayeshlm", {}).get("skipped", "not run")
        lines.append(f"| {model} | {name} ({value:.2f}, {kind}) | {mine} | {ratio} |")
    return "\n".join(lines)


def prior_notes(models):
    """Per model, the priors every sampler uses (bayeshlm's defaults, those of delta and nu among them)."""
    out = {}
    for name in models:
        model = _model(name)
        out[name] = list(model.prior_descriptions())  # delta's and nu's among them
    return out


def main(argv=None):
    """Run the harness, print the tables, write the JSON and Markdown files."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 draws and 100 warm-up iterations")
    parser.add_argument("--draws", type=int, default=None, help="draws per chain (default 1000; 100 with --quick)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up iterations per chain (default: --draws)")
    parser.add_argument("--models", nargs="*", default=None, choices=list(MODELS))
    parser.add_argument("--systems", nargs="*", default=None, choices=SAMPLERS,
                        help="systems to run (default all); 'bayeshlm' alone runs no peer")
    parser.add_argument("--limit", type=float, default=DEFAULT_LIMIT, help="seconds allowed per (model, system/form)")
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--merge", action="store_true",
                        help="keep the other models of an existing level1_results.json (each model's systems "
                             "still run together, in one run; the table says when each model ran)")
    args = parser.parse_args(argv)
    draws = args.draws or (100 if args.quick else 1000)
    warmup = args.warmup or draws
    models = args.models or list(MODELS)
    started = time.strftime("%Y-%m-%d %H:%M")
    t0 = time.perf_counter()
    results = run(models, args.systems or SAMPLERS, draws, warmup, args.limit)
    from bench_core import machine

    meta = {"machine": machine(), "draws": draws, "warmup": warmup, "chains": 4, "started": started,
            "run_minutes": (time.perf_counter() - t0) / 60, "limit_seconds": args.limit,
            "ess_over": "fixed effects, sigma, group SDs, delta (hsb_sigma) or nu (hsb_student): min bulk ESS",
            "priors": prior_notes(models),
            "models_run": {m: {"formula": MODELS[m][1], "options": MODELS[m][2], "level1": MODELS[m][3]}
                           for m in models}}
    runs = {m: {"started": started, "run_minutes": meta["run_minutes"]} for m in models}
    path = args.out / "level1_results.json"
    if args.merge and path.exists():
        old = json.loads(path.read_text())
        if (old["draws"], old["warmup"], old["limit_seconds"]) != (draws, warmup, args.limit):
            raise SystemExit(f"{path} holds runs of other settings: run every model again instead of --merge")
        results = {**{m: r for m, r in old["models"].items() if m not in results}, **results}
        runs = {**{m: r for m, r in old["runs"].items() if m not in runs}, **runs}
        meta["priors"] = {**old["priors"], **meta["priors"]}
        meta["models_run"] = {**old["models_run"], **meta["models_run"]}
    text = table(results, 4 * draws)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**meta, "runs": runs, "models": results}, indent=2))
    when = "; ".join(f"{m} {r['started']} ({r['run_minutes']:.0f} min)" for m, r in runs.items())
    described = "\n".join(f"* `{m}`: `{v['formula']}`, {v['level1']} (`hlm(..., "
                          + ", ".join(f"{k}={o!r}" for k, o in v["options"].items()) + ")`); priors: "
                          + "; ".join(meta["priors"][m]) + "."
                          for m, v in meta["models_run"].items())
    header = (f"# Level-1 variance models and Student-t residuals: bayeshlm's sampler against NUTS\n\n"
              f"`python benchmarks/bench_level1.py`; each model's systems in one run, started: {when}. "
              f"{meta['machine'].get('platform', '')}, {os.cpu_count()} CPUs. 4 chains x {draws} draws after "
              f"{warmup} warm-up iterations, each (model, system/form) in its own interpreter, limited to "
              f"{args.limit:.0f} s. min-ESS/s is the minimum bulk ESS over the fixed effects, sigma, the group SDs "
              "and delta or nu, over the seconds of sampling (compilation and a first short run are the setup). "
              "bayeshlm's seconds are those of `bh.sample` as a user calls it (the sampler's own in brackets); "
              "PyMC's are its own sampling time (the whole call in brackets). \"Other work's CPU\" is the share of "
              "the machine's CPU time that other processes took while the row ran. The peers use bayeshlm's priors, "
              "on the centred columns the default priors are set on, their draws carried back to the user's "
              "coefficients.\n\n" + described + "\n\n")
    (args.out / "LEVEL1_RESULTS.md").write_text(header + text + "\n")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
    else:
        sys.exit(main())
