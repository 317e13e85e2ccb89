"""Time of the EB/ML fit: bayeshlm's fit_em against statsmodels MixedLM and lme4's recorded times.

For every two-level reference model (tests/golden/lme4_fits.json), in one process whose
kernels are loaded: the seconds of ``hlm`` (formula to statistics) plus ``fit_em``, median
of repeats, by REML and ML; statsmodels ``MixedLM.from_formula(...).fit(reml=...)`` on the
same data when statsmodels is installed (``pip install -e '.[bench]'``); and lme4's time of
the ``lmer()`` call as recorded with the reference fits (R 4.2.2, lme4 1.1-31, the machine
described in tests/golden/README.md). The log-likelihoods are printed beside each other.

    python benchmarks/bench_em.py            # writes benchmarks/em_results.json and EM_RESULTS.md
    python benchmarks/bench_em.py --quick    # one repeat, two models
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
GOLDEN = HERE.parent / "tests" / "golden" / "lme4_fits.json"

MODELS = {
    "sleepstudy_corr": ("sleepstudy", "reaction ~ days + (days | subject)", "reaction ~ days", "~days"),
    "sleepstudy_uncorr": ("sleepstudy", "reaction ~ days + (1 | subject) + (0 + days | subject)", None, None),
    "dyestuff": ("dyestuff", "yield ~ 1 + (1 | batch)", 'Q("yield") ~ 1', "1"),
    "hsb_null": ("hsb", "mathach ~ 1 + (1 | school)", "mathach ~ 1", "1"),
    "hsb_rb": ("hsb", "mathach ~ ses_centered * (sector + meanses) + (ses_centered | school)",
               "mathach ~ ses_centered * (sector + meanses)", "~ses_centered"),
    "radon_vi": ("radon", "log_radon ~ floor + (1 | county)", "log_radon ~ floor", "1"),
    "radon_u_vi": ("radon", "log_radon ~ floor + log_uranium + (1 | county)", "log_radon ~ floor + log_uranium", "1"),
    "radon_u_vs": ("radon", "log_radon ~ floor + log_uranium + (1 + floor | county)",
                   "log_radon ~ floor + log_uranium", "~floor"),
}
GROUP = {"sleepstudy": "subject", "dyestuff": "batch", "hsb": "school", "radon": "county"}


def _median_time(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times)), out


def run(names, repeats):
    """Time every model; return the results dict."""
    import bayeshlm as bh

    golden = json.loads(GOLDEN.read_text())["models"]
    try:
        import statsmodels.formula.api as smf
    except ImportError:
        smf = None
    # load the kernels once, outside the timings
    bh.fit_em(bh.hlm("yield ~ 1 + (1 | batch)", bh.load_dataset("dyestuff")))
    results = {}
    for name in names:
        dataset, formula, sm_fixed, sm_re = MODELS[name]
        data = bh.load_dataset(dataset)
        row = {"formula": formula}
        for method in ("REML", "ML"):
            secs, fit = _median_time(
                lambda formula=formula, data=data, method=method: bh.fit_em(bh.hlm(formula, data), method.lower()),
                repeats,
            )
            entry = {"bayeshlm_seconds": secs, "bayeshlm_loglik": fit.loglik,
                     "lme4_seconds": golden[name]["fits"][method]["time_s"]["elapsed"],
                     "lme4_loglik": golden[name]["fits"][method]["logLik"]}
            if smf is not None and sm_fixed is not None:
                def fit_sm(sm_fixed=sm_fixed, data=data, dataset=dataset, sm_re=sm_re, method=method):
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        md = smf.mixedlm(sm_fixed, data, groups=data[GROUP[dataset]], re_formula=sm_re)
                        return md.fit(reml=method == "REML")
                s_secs, s_fit = _median_time(fit_sm, repeats)
                entry["statsmodels_seconds"] = s_secs
                entry["statsmodels_loglik"] = float(s_fit.llf)
            row[method] = entry
        results[name] = row
        print(f"{name:18s} " + "  ".join(
            f"{m}: {row[m]['bayeshlm_seconds'] * 1e3:.1f} ms (lme4 {row[m]['lme4_seconds'] * 1e3:.0f} ms"
            + (f", statsmodels {row[m]['statsmodels_seconds'] * 1e3:.0f} ms)"
               if "statsmodels_seconds" in row[m] else ")")
            for m in ("REML", "ML")), flush=True)
    return results


def render(results, meta):
    """Markdown table."""
    lines = ["# EB/ML fit times", "", meta, "",
             "| model | method | bayeshlm s | lme4 s (recorded) | statsmodels s | speed-up vs lme4 "
             "| speed-up vs statsmodels | logLik bayeshlm | logLik lme4 |", "|---|---|---|---|---|---|---|---|---|"]
    for name, row in results.items():
        for method in ("REML", "ML"):
            e = row[method]
            sm = e.get("statsmodels_seconds")
            lines.append(
                f"| {name} | {method} | {e['bayeshlm_seconds']:.4f} | {e['lme4_seconds']:.3f} | "
                f"{'-' if sm is None else f'{sm:.3f}'} | {e['lme4_seconds'] / e['bayeshlm_seconds']:.1f} | "
                f"{'-' if sm is None else f'{sm / e['bayeshlm_seconds']:.0f}'} | {e['bayeshlm_loglik']:.4f} | "
                f"{e['lme4_loglik']:.4f} |")
    lines.append("")
    return "\n".join(lines)


def main(argv=None):
    """Run and write the outputs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.models = 1, ["dyestuff", "radon_vi"]
    results = run(args.models, args.repeats)
    meta = (f"Run {time.strftime('%Y-%m-%d %H:%M:%S')}; seconds are medians of {args.repeats} repeats of formula "
            "to fit (`hlm` + `fit_em`) in a process with loaded kernels; lme4's are the recorded `lmer()` times.")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "em_results.json").write_text(json.dumps({"meta": meta, "models": results}, indent=2))
    text = render(results, meta)
    (args.out / "EM_RESULTS.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
