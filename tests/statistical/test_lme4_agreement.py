"""Posterior under the default weak priors against lme4's REML fits of the same models.

With many groups (HSB: 160, radon: 85) or moderately many (sleepstudy: 18), weak priors
leave the posterior of the fixed effects centred where REML puts them, with a spread close
to REML's standard error, slightly wider because the posterior also carries the
uncertainty of the variance components, which REML's standard errors ignore. Criteria:

* fixed effects: ``|posterior mean - REML estimate| <= 0.2 posterior SD`` and
  ``|posterior SD / REML SE - 1| <= 0.15``;
* sigma and the group SDs: ``|posterior median - REML estimate| <= 0.5 posterior SD``.
  REML estimates a mode of the restricted likelihood; the posterior median of a standard
  deviation lies above that mode by a fraction of the posterior SD when the marginal
  posterior is right-skewed (few groups), or below it when mass piles up near zero (the
  HSB slope SD, whose posterior reaches down to 0); half a posterior SD covers both.

Monte Carlo error: every parameter checked has a bulk ESS of at least 400 (asserted), so
the MCSE of a posterior mean is at most 0.05 posterior SD, a quarter of the 0.2 margin,
and the error of a posterior SD is about 3.5%, under a quarter of the 15% margin.
"""

import numpy as np
import pytest

import bayeshlm as bh
from tests.statistical.mc import ess

CASES = [
    ("sleepstudy_corr", "sleepstudy", "reaction ~ days + (days | subject)"),
    ("sleepstudy_uncorr", "sleepstudy", "reaction ~ days + (1 | subject) + (0 + days | subject)"),
    ("hsb_rb", "hsb", "mathach ~ ses_centered * (sector + meanses) + (ses_centered | school)"),
    ("radon_vi", "radon", "log_radon ~ floor + (1 | county)"),
    ("radon_u_vs", "radon", "log_radon ~ floor + log_uranium + (1 + floor | county)"),
]


def _lme4_name(name):
    return "(Intercept)" if name == "Intercept" else name


@pytest.mark.parametrize(("key", "dataset", "formula"), CASES, ids=[c[0] for c in CASES])
def test_posterior_agrees_with_reml(lme4_fits, key, dataset, formula):
    ref = lme4_fits["models"][key]["fits"]["REML"]
    model = bh.hlm(formula, bh.load_dataset(dataset))
    post = bh.sample(model, draws=1000, warmup=1000, chains=4, seed=20261126, progress=False).posterior
    problems = []
    for name in model.fixed_names:
        x = post["fixed"].sel(fixed_term=name).values
        target = ref["fixef"][_lme4_name(name)]
        assert ess(x) >= 400, f"{name}: ESS {ess(x):.0f}"
        shift = abs(x.mean() - target["estimate"]) / x.std()
        ratio = x.std() / target["se"]
        if shift > 0.2:
            problems.append(
                f"{name}: posterior mean {x.mean():.4f} is {shift:.3f} SD from REML {target['estimate']:.4f}"
            )
        if abs(ratio - 1) > 0.15:
            problems.append(f"{name}: posterior SD {x.std():.4f} vs REML SE {target['se']:.4f} (ratio {ratio:.3f})")
    sigma = post["sigma"].values
    checks = [("sigma", sigma, ref["sigma"])]
    g = model.factor
    # lme4 lists the terms of one grouping factor under one or several names (subject, subject.1)
    reml_sds = {}
    for entry in ref["random"].values():
        for term, sd in entry["sd"].items():
            reml_sds["Intercept" if term == "(Intercept)" else term] = sd
    for coef in model.coef_names:
        checks.append((f"sd[{coef}]", post[f"{g}_sd"].sel({f"{g}_coef": coef}).values, reml_sds[coef]))
    for label, x, target in checks:
        assert ess(x) >= 400, f"{label}: ESS {ess(x):.0f}"
        shift = abs(np.median(x) - target) / x.std()
        if shift > 0.5:
            problems.append(f"{label}: posterior median {np.median(x):.4f} is {shift:.3f} SD from REML {target:.4f}")
    assert not problems, "\n".join(problems)
