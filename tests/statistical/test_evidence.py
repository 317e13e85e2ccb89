"""Marginal likelihood by bridge sampling against an exact value, and its ingredients."""

import numpy as np
import pytest
from scipy import integrate, stats

import bayeshlm as bh
from bayeshlm.evidence import bayes_factor, lkj_log_norm, marginal_likelihood


def _eight_schools_exact(y, s, mu_sd, tau_scale):
    """log p(y) by quadrature over tau, mu integrated analytically (y ~ N(0, diag(s^2 + tau^2) + mu_sd^2))."""
    def integrand(tau):
        cov = np.diag(s**2 + tau**2) + mu_sd**2
        prior = 2 * stats.norm(0, tau_scale).pdf(tau)
        return np.exp(stats.multivariate_normal(np.zeros(y.size), cov).logpdf(y)) * prior

    value, _ = integrate.quad(integrand, 0, np.inf, epsabs=0, epsrel=1e-10)
    return np.log(value)


def test_eight_schools_marginal_likelihood_matches_quadrature():
    data = bh.load_dataset("eight_schools")
    model = bh.hlm("y ~ 1 + (1 | school)", data, known_sd="sigma",
                   priors={"fixed": bh.Normal(0, 20), "sd": bh.HalfNormal(15)})
    post = bh.sample(model, draws=2000, seed=1, progress=False)
    ev = marginal_likelihood(model, post)
    exact = _eight_schools_exact(data["y"].to_numpy(float), data["sigma"].to_numpy(float), 20.0, 15.0)
    # within 4 estimated standard errors (about 6e-5 two-sided false-alarm rate if the error
    # estimate is right), plus 1e-3 for the approximation in that estimate
    assert abs(ev.log_marginal_likelihood - exact) <= 4 * ev.se + 1e-3, (ev, exact)
    assert ev.se < 0.02


def test_bayes_factor_of_prior_scales():
    data = bh.load_dataset("eight_schools")
    evs = []
    for tau_scale in (5.0, 50.0):
        model = bh.hlm("y ~ 1 + (1 | school)", data, known_sd="sigma",
                       priors={"fixed": bh.Normal(0, 20), "sd": bh.HalfNormal(tau_scale)})
        evs.append(marginal_likelihood(model, bh.sample(model, draws=2000, seed=2, progress=False)))
    log_bf, se = bayes_factor(*evs)
    y, s = data["y"].to_numpy(float), data["sigma"].to_numpy(float)
    exact = _eight_schools_exact(y, s, 20.0, 5.0) - _eight_schools_exact(y, s, 20.0, 50.0)
    assert abs(log_bf - exact) <= 4 * se + 2e-3


@pytest.mark.parametrize("eta", [0.7, 1.0, 2.5])
def test_lkj_normalising_constant_two_by_two(eta):
    total, _ = integrate.quad(lambda r: (1 - r * r) ** (eta - 1), -1, 1)
    assert lkj_log_norm(2, eta) == pytest.approx(-np.log(total), rel=1e-8)


def test_lkj_normalising_constant_three_by_three():
    # eta = 1: the volume of the 3 x 3 correlation matrices is pi^2 / 2
    assert lkj_log_norm(3, 1.0) == pytest.approx(-np.log(np.pi**2 / 2), rel=1e-12)


def test_improper_priors_are_refused():
    data = bh.load_dataset("eight_schools")
    model = bh.hlm("y ~ 1 + (1 | school)", data, known_sd="sigma", priors={"fixed": bh.Flat()})
    post = bh.sample(model, draws=50, warmup=50, chains=1, seed=1, progress=False)
    with pytest.raises(ValueError, match="proper"):
        marginal_likelihood(model, post)


def test_pooled_marginal_likelihood_known_variances():
    data = bh.load_dataset("eight_schools")
    model = bh.hlm("y ~ 1 + (1 | school)", data, known_sd="sigma",
                   priors={"fixed": bh.Normal(0, 20), "sd": bh.HalfNormal(15)})
    y, s = data["y"].to_numpy(float), data["sigma"].to_numpy(float)
    exact = stats.multivariate_normal(np.zeros(8), np.diag(s**2) + 400.0).logpdf(y)
    assert bh.marginal_likelihood_pooled(model).log_marginal_likelihood == pytest.approx(exact, abs=1e-9)


def test_pooled_marginal_likelihood_with_sigma_and_the_bayes_factor_of_the_hierarchy():
    sleep = bh.load_dataset("sleepstudy")
    model = bh.hlm("reaction ~ days + (1 | subject)", sleep,
                   priors={"fixed": bh.Normal(250, 100), "sigma": bh.HalfNormal(100), "sd": bh.HalfNormal(50)})
    y, F = model.design.y, model.design.F
    prior_cov = np.diag([100.0**2, 100.0**2])
    mean = F @ np.array([250.0, 250.0])

    def integrand(sigma):  # a integrated analytically: y ~ N(F m0, sigma^2 I + F S0 F')
        cov = sigma**2 * np.eye(y.size) + F @ prior_cov @ F.T
        return np.exp(stats.multivariate_normal(mean, cov).logpdf(y) + 900.0) * 2 * stats.norm(0, 100).pdf(sigma)

    value, _ = integrate.quad(integrand, 20, 80, epsabs=0, epsrel=1e-10, limit=200)
    pooled = bh.marginal_likelihood_pooled(model)
    assert pooled.log_marginal_likelihood == pytest.approx(np.log(value) - 900.0, abs=1e-6)
    hier = marginal_likelihood(model, bh.sample(model, draws=2000, seed=3, progress=False))
    log_bf, se = bayes_factor(hier, pooled)
    assert log_bf > 20 and se < 0.05  # subjects differ: the hierarchy is overwhelmingly supported
    assert bayes_factor(hier, pooled).note == ""  # the tested SD's prior is proper and chosen


def test_eight_schools_marginal_likelihood_inverse_wishart_prior():
    """A one-dimensional inverse-Wishart IW(nu, psi) is an inverse-gamma(nu/2, psi/2) on tau^2:
    bridge sampling against quadrature, with the tolerance of the test above."""
    data = bh.load_dataset("eight_schools")
    nu, psi = 3.0, 100.0
    model = bh.hlm("y ~ 1 + (1 | school)", data, known_sd="sigma",
                   priors={"fixed": bh.Normal(0, 20), "cov": bh.InverseWishart(nu, psi)})
    ev = marginal_likelihood(model, bh.sample(model, draws=2000, seed=3, progress=False))
    y, s = data["y"].to_numpy(float), data["sigma"].to_numpy(float)

    def integrand(tau):  # density of tau: IG(tau^2; nu/2, psi/2) * 2 tau
        cov = np.diag(s**2 + tau**2) + 20.0**2
        prior = stats.invgamma(nu / 2, scale=psi / 2).pdf(tau**2) * 2 * tau
        return np.exp(stats.multivariate_normal(np.zeros(y.size), cov).logpdf(y)) * prior

    exact = np.log(integrate.quad(integrand, 0, np.inf, epsabs=0, epsrel=1e-10)[0])
    assert abs(ev.log_marginal_likelihood - exact) <= 4 * ev.se + 1e-3, (ev, exact)


def test_marginal_likelihood_of_three_levels_matches_quadrature():
    """pastes with known sigma (the REML value) and two group SDs: bridge sampling against a
    two-dimensional quadrature of p(y | tau_cask, tau_batch) p(tau), the intercept integrated
    exactly; tolerance as above."""
    data = bh.load_dataset("pastes")
    sigma = 0.8234
    priors = {"fixed": bh.Normal(60, 10), "sd": bh.HalfNormal(3.0)}
    model = bh.hlm("strength ~ 1 + (1 | batch/cask)", data, known_sd=np.full(len(data), sigma), priors=priors)
    ev = marginal_likelihood(model, bh.sample(model, draws=2000, seed=4, progress=False))
    y = data["strength"].to_numpy(float)
    fine, coarse = model.design.factor_idx
    same_cask = (fine[:, None] == fine[None, :]).astype(float)
    same_batch = (coarse[:, None] == coarse[None, :]).astype(float)

    e = y - 60.0

    def integrand(t_batch, t_cask):
        cov = sigma**2 * np.eye(y.size) + t_cask**2 * same_cask + t_batch**2 * same_batch + 10.0**2
        L = np.linalg.cholesky(cov)
        z = np.linalg.solve(L, e)
        log_lik = -0.5 * (y.size * np.log(2 * np.pi) + z @ z) - np.sum(np.log(np.diag(L)))
        prior = 4 * stats.norm.pdf(t_cask, 0, 3) * stats.norm.pdf(t_batch, 0, 3)
        return np.exp(log_lik + 60.0) * prior  # scaled by e^60 against underflow

    value, _ = integrate.dblquad(integrand, 0, 15, 0, 15, epsabs=0, epsrel=1e-7)
    value = np.log(value) - 60.0
    exact = value
    assert abs(ev.log_marginal_likelihood - exact) <= 4 * ev.se + 1e-3, (ev, exact)
