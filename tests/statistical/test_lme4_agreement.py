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

The comparison is made on the coefficients the default priors are set on, intercepts at the
predictors' means (:class:`bayeshlm.priors.PriorFrame`), mapping REML's estimates and
covariance and the posterior draws alike: an intercept extrapolated to a predictor's zero
(sleepstudy's day 0) is a combination whose posterior also carries the uncertainty of the
slopes' variance, which REML's standard error does not, so with 18 groups the two differ
there by more than the margins below, for a reason that is no fault of the sampler.

Monte Carlo error: every parameter checked has a bulk ESS of at least 400 (asserted), so
the MCSE of a posterior mean is at most 0.05 posterior SD, a quarter of the 0.2 margin,
and the error of a posterior SD is about 3.5%, under a quarter of the 15% margin.
"""

import numpy as np
import pytest

import bayeshlm as bh
from bayeshlm.basis import Basis
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


def _to_centred(model):
    """Maps of the user's coefficients to those the default priors are set on (intercepts at the means)."""
    own = Basis.identity(len(model.fixed_names), len(model.coef_names))
    G, g = own.fixed_map_to(model.prior_frame.centred)
    return G, g, own.coef_map_to(model.prior_frame.centred)


@pytest.mark.parametrize(("key", "dataset", "formula"), CASES, ids=[c[0] for c in CASES])
def test_posterior_agrees_with_reml(lme4_fits, key, dataset, formula):
    ref = lme4_fits["models"][key]["fits"]["REML"]
    model = bh.hlm(formula, bh.load_dataset(dataset))
    post = bh.sample(model, draws=1000, warmup=1000, chains=4, seed=20261126, progress=False).posterior
    G, g, H = _to_centred(model)
    names = list(model.fixed_names)
    est = np.array([ref["fixef"][_lme4_name(n)]["estimate"] for n in names])
    order = [ref["vcov_fixef"]["names"].index(_lme4_name(n)) for n in names]
    V = np.asarray(ref["vcov_fixef"]["matrix"])[np.ix_(order, order)]
    est, se = G @ est + g, np.sqrt(np.diag(G @ V @ G.T))
    draws = post["fixed"].values @ G.T + g
    problems = []
    for q, name in enumerate(names):
        x = draws[..., q]
        assert ess(x) >= 400, f"{name}: ESS {ess(x):.0f}"
        shift = abs(x.mean() - est[q]) / x.std()
        ratio = x.std() / se[q]
        if shift > 0.2:
            problems.append(f"{name}: posterior mean {x.mean():.4f} is {shift:.3f} SD from REML {est[q]:.4f}")
        if abs(ratio - 1) > 0.15:
            problems.append(f"{name}: posterior SD {x.std():.4f} vs REML SE {se[q]:.4f} (ratio {ratio:.3f})")
    sigma = post["sigma"].values
    checks = [("sigma", sigma, ref["sigma"])]
    g_name = model.factor
    # lme4 lists the terms of one grouping factor under one or several names (subject, subject.1)
    coefs = list(model.coef_names)
    T = np.zeros((len(coefs), len(coefs)))
    for entry in ref["random"].values():
        idx = [coefs.index("Intercept" if t == "(Intercept)" else t) for t in entry["terms"]]
        cov = entry["cov_matrix"] or [[entry["variance"][entry["terms"][0]]]]
        T[np.ix_(idx, idx)] = np.asarray(cov)
    reml_sd = np.sqrt(np.diag(H @ T @ H.T))
    sd, corr = post[f"{g_name}_sd"].values, np.eye(len(coefs))
    T_draws = np.broadcast_to(corr, sd.shape + (len(coefs),)).copy()
    if f"{g_name}_corr" in post:
        for m, pair in enumerate(post[f"{g_name}_corr_pair"].values):
            a, b = (coefs.index(c) for c in str(pair).split(","))
            T_draws[..., a, b] = T_draws[..., b, a] = post[f"{g_name}_corr"].values[..., m]
    T_draws *= sd[..., :, None] * sd[..., None, :]
    sd_centred = np.sqrt(np.einsum("...ii->...i", H @ T_draws @ H.T))
    for i, coef in enumerate(coefs):
        checks.append((f"sd[{coef}]", sd_centred[..., i], reml_sd[i]))
    for label, x, target in checks:
        assert ess(x) >= 400, f"{label}: ESS {ess(x):.0f}"
        shift = abs(np.median(x) - target) / x.std()
        if shift > 0.5:
            problems.append(f"{label}: posterior median {np.median(x):.4f} is {shift:.3f} SD from REML {target:.4f}")
    assert not problems, "\n".join(problems)
