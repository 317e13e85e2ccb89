"""The larger simulation-based calibration run: every model family, written to REPORT.md with plots.

    python tests/statistical/sbc_report.py                 # 1000 simulations per family
    python tests/statistical/sbc_report.py --n-sims 200    # quicker
    pytest -m statistical tests/statistical/test_sbc_large.py   # the same run as a test

For each family of ``tests/statistical/test_sbc.py`` (and three levels with both samplers)
it runs :func:`bayeshlm.testing.sbc`, writes the rank histograms and ECDF differences to
``tests/statistical/report/<family>.png``, and the table of p-values to ``REPORT.md``.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

ALPHA = 1e-3


def families():
    """``{name: (model, sample options)}`` of every family checked."""
    import bayeshlm as bh
    from tests.statistical.test_sbc import FAMILIES

    out = {}
    for name, (formula, data, priors, method) in FAMILIES.items():
        out[name] = (bh.hlm(formula, data, priors=priors), {"method": method})
    import numpy as np

    rng = np.random.default_rng(4)
    meta = {"y": rng.normal(size=10), "g": [f"s{j}" for j in range(10)], "se": rng.uniform(0.5, 3.0, size=10)}
    known = bh.hlm("y ~ 1 + (1 | g)", meta, known_sd="se", priors={"fixed": bh.Normal(0, 5), "sd": bh.HalfNormal(2)})
    out["known_variances_mh"] = (known, {"method": "mh"})
    out["known_variances_gibbs"] = (known, {"method": "gibbs"})
    df = bh.simulate_nested(levels=(("a", 8), ("b", 3)), rows=(2, 5), seed=3)
    three = bh.hlm("y ~ x + (1 | a) + (x | a:b)", df, priors={"fixed": bh.Normal(0, 3), "sigma": bh.HalfNormal(1),
                                                               "sd": bh.HalfNormal(1), "corr": bh.LKJ(2)})
    out["three_levels_mh"] = (three, {"method": "mh"})
    out["three_levels_gibbs"] = (three, {"method": "gibbs"})
    return out


def run(n_sims, out_dir, names=None, seed=2026):
    """Run the families; returns ``{family: (uniformity table, seconds)}`` and writes the plots."""
    from bayeshlm.testing import sbc

    out_dir.mkdir(parents=True, exist_ok=True)
    results = {}
    for name, (model, options) in families().items():
        if names and name not in names:
            continue
        t0 = time.perf_counter()
        res = sbc(model, n_sims=n_sims, seed=seed, **options)
        table = res.uniformity()
        res.plot(out_dir / f"{name}.png")
        results[name] = (table, time.perf_counter() - t0)
        worst = table["p_value"].min()
        print(f"{name:32s} {len(table):2d} quantities  smallest p {worst:.3g}  {results[name][1]:.0f} s", flush=True)
    return results


def write_report(results, n_sims, path):
    """REPORT.md: settings, one table per family, the plots."""
    import matplotlib

    lines = [
        "# Simulation-based calibration report",
        "",
        f"`python tests/statistical/sbc_report.py --n-sims {n_sims}` on {time.strftime('%Y-%m-%d')}, "
        f"Python {platform.python_version()}, {platform.machine()}; matplotlib {matplotlib.__version__}.",
        "",
        f"Each family: {n_sims} simulations; parameters drawn from the prior, data from the model, 2 chains "
        "x 300 draws after 300 warm-up sweeps, thinned to 99; ranks of the truths among them. For each "
        "quantity, `p_chi2` is the chi-square test of 10 equal rank bins, `p_mean` the z-test of the mean "
        "rank, `p_value` twice the smaller (Bonferroni). A family passes when every `p_value` is at least "
        f"{ALPHA:g} / (number of quantities), a false-alarm rate below {ALPHA:g} per family.",
        "",
    ]
    for name, (table, seconds) in results.items():
        limit = ALPHA / len(table)
        verdict = "pass" if (table["p_value"] >= limit).all() else "FAIL"
        lines += [f"## {name}: {verdict} ({seconds:.0f} s)", "",
                  "| quantity | chi2 | p_chi2 | z_mean | p_mean | p_value |", "|---|---|---|---|---|---|"]
        for q, row in table.iterrows():
            lines.append(f"| {q} | {row['chi2']:.1f} | {row['p_chi2']:.3g} | {row['z_mean']:.2f} | "
                         f"{row['p_mean']:.3g} | {row['p_value']:.3g} |")
        lines += ["", f"![{name}](report/{name}.png)", ""]
    path.write_text("\n".join(lines))


def main(argv=None):
    """Run and write the report; returns 0 when every family passes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-sims", type=int, default=1000)
    parser.add_argument("--families", nargs="*", help="only these families")
    parser.add_argument("--out", type=Path, default=HERE, help="folder of REPORT.md and report/")
    args = parser.parse_args(argv)
    results = run(args.n_sims, args.out / "report", args.families)
    write_report(results, args.n_sims, args.out / "REPORT.md")
    ok = all((t["p_value"] >= ALPHA / len(t)).all() for t, _ in results.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
