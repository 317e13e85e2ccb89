"""Command line: ``python -m bayeshlm demo``."""

from __future__ import annotations

import argparse
import sys
import time


def demo(args):
    """Fit the Raudenbush & Bryk model to High School and Beyond and print a summary."""
    import pandas as pd

    import bayeshlm as bh
    from bayeshlm.summary import describe_run, diagnostics

    formula = "mathach ~ ses_centered * (sector + meanses) + (ses_centered | school)"
    data = bh.load_dataset("hsb")
    print("High School and Beyond: 7185 students in 160 schools (Raudenbush & Bryk 2002, Table 4.5)")
    print(f"model: {formula}\n")
    t0 = time.perf_counter()
    model = bh.hlm(formula, data)
    post = bh.sample(model, chains=args.chains, draws=args.draws, warmup=args.warmup, seed=args.seed,
                     progress=not args.quiet)
    total = time.perf_counter() - t0
    table = bh.summary(post, ci_prob=0.95)
    with pd.option_context("display.width", 140, "display.max_columns", 20):
        print(table.round(4).to_string())
    diag = diagnostics(post)
    print()
    print(describe_run(post))
    print()
    print(f"sampling time: {diag['sampling_seconds']:.3f} s; data frame to result: {total:.3f} s "
          "(includes compilation on a first run)")
    n_samples = post.posterior.sizes["chain"] * post.posterior.sizes["draw"]
    n_params = sum(v.size // n_samples for v in post.posterior.data_vars.values())
    print(f"min bulk ESS over all {n_params} parameters: {diag['min_ess_bulk']:.0f} ({diag['argmin_ess_bulk']}); "
          f"min tail ESS: {diag['min_ess_tail']:.0f}; max R-hat: {diag['max_rhat']:.4f}")
    print(f"min-ESS per second: {diag['min_ess_per_second']:.0f}")
    eb = bh.fit_em(model, "reml")
    print()
    print("The same model by REML (empirical Bayes), beside the posterior:")
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(bh.compare(post, eb).round(4).to_string())
    return 0


def main(argv=None):
    """Entry point of the ``bayeshlm`` command."""
    parser = argparse.ArgumentParser(prog="bayeshlm", description="Bayesian hierarchical linear models")
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="fit the classic High School and Beyond model and print a summary")
    p_demo.add_argument("--chains", type=int, default=4)
    p_demo.add_argument("--draws", type=int, default=1000)
    p_demo.add_argument("--warmup", type=int, default=1000)
    p_demo.add_argument("--seed", type=int, default=2026)
    p_demo.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
