"""Eight schools with known sampling variances and a flat prior on (mu, tau): exact posterior.

The reference (tests/golden/lme4_fits.json, ``eight_schools.bda_rounded.posterior_flat_prior``)
was computed by one-dimensional quadrature over tau with mu and the theta_j integrated
analytically, accurate to about 8 significant digits; the Monte Carlo error of the sampler
is the only error that matters here.

Tolerances: each check is ``|estimate - exact| <= z * MCSE`` with the MCSE of that
estimate (mean, SD or quantile) from ArviZ; the false-alarm budget is 1e-3 per test,
split evenly over its checks (tests/statistical/mc.py).
"""

import numpy as np
import pytest

import bayeshlm as bh
from tests.statistical.mc import mcse, z_for

PROBS = [0.025, 0.25, 0.5, 0.75, 0.975]


def _check(draws, exact, name, z, failures):
    est = float(np.mean(draws))
    tol = z * mcse(draws, "mean")
    if abs(est - exact["mean"]) > tol:
        failures.append(f"{name} mean {est:.4f} vs exact {exact['mean']:.4f} (tol {tol:.4f})")
    est = float(np.std(draws))
    tol = z * mcse(draws, "sd")
    if abs(est - exact["sd"]) > tol:
        failures.append(f"{name} sd {est:.4f} vs exact {exact['sd']:.4f} (tol {tol:.4f})")
    for prob, q in zip(PROBS, exact["quantiles"], strict=True):
        est = float(np.quantile(draws, prob))
        tol = z * mcse(draws, "quantile", prob=prob)
        if abs(est - q) > tol:
            failures.append(f"{name} q{prob} {est:.4f} vs exact {q:.4f} (tol {tol:.4f})")


@pytest.mark.parametrize(("method", "draws", "seed"), [("mh", 5000, 101), ("gibbs", 25000, 102)])
def test_eight_schools_exact_posterior(lme4_fits, method, draws, seed):
    exact = lme4_fits["eight_schools"]["bda_rounded"]["posterior_flat_prior"]
    data = bh.load_dataset("eight_schools")
    model = bh.hlm("y ~ 1 + (1 | school)", data, known_sd="sigma",
                   priors={"fixed": bh.Flat(), "sd": bh.Flat()})
    post = bh.sample(model, draws=draws, warmup=1000, chains=4, seed=seed, method=method, progress=False)
    mu = post.posterior["fixed"].sel(fixed_term="Intercept").values
    tau = post.posterior["school_sd"].sel(school_coef="Intercept").values
    effects = post.posterior["school_effect"].sel(school_coef="Intercept")
    n_checks = 10 * (2 + len(PROBS))  # tau, mu and 8 thetas; mean, sd, 5 quantiles each
    z = z_for(1e-3, n_checks)
    failures = []
    _check(tau, exact["tau"], "tau", z, failures)
    _check(mu, exact["mu"], "mu", z, failures)
    for school in data["school"]:
        theta = mu + effects.sel(school=school).values
        _check(theta, exact["theta"][school], f"theta[{school}]", z, failures)
    assert not failures, "\n".join(failures)
